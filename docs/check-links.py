#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Checks the relative links of the README and docs/*.md: the file exists and, for
`page.md#anchor`, the page has a heading with that anchor (GitHub's form: lower case,
punctuation dropped, spaces to hyphens). The README sends readers to docs/ for nearly
everything, so a page renamed or a heading reworded must not leave a dead link.

usage: check-links.py SOURCE_ROOT
"""
import glob
import os
import re
import sys


def anchor(heading):
    h = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return h.replace(' ', '-')


def anchors(path):
    with open(path, encoding='utf-8') as f:
        text = re.sub(r'^```.*?^```', '', f.read(), flags=re.S | re.M)
    return {anchor(m.group(1)) for m in re.finditer(r'^#+ (.*)$', text, re.M)}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    root = sys.argv[1]
    pages = [os.path.join(root, 'README.md')] + sorted(glob.glob(os.path.join(root, 'docs', '*.md')))
    bad = links = 0
    for page in pages:
        with open(page, encoding='utf-8') as f:
            text = f.read()
        # Code blocks hold commands and output, not links.
        text = re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)
        for m in re.finditer(r'\]\(([^)\s]+)\)', text):
            target = m.group(1)
            if re.match(r'[a-z]+:', target):
                continue
            links += 1
            path, _, frag = target.partition('#')
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            where = '%s: (%s)' % (os.path.relpath(page, root), target)
            if not os.path.exists(dest):
                print('not ok: %s: no such file' % where)
                bad += 1
            elif frag and dest.endswith('.md') and frag not in anchors(dest):
                print('not ok: %s: no heading with that anchor' % where)
                bad += 1
    print('%d links in %d pages, %d broken' % (links, len(pages), bad))
    if bad or links < 20:
        sys.exit(1)


if __name__ == '__main__':
    main()
