#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Checks the built man pages against the built programs, so that they cannot drift.

kuimen(8) must describe every long option `kuimen --help` lists, kuimenctl(1) every
long option and command `kuimenctl --help` lists, and kuimen.conf(5) every key
`kuimen --help-config` lists (it is generated from it: this catches a line the
formatter no longer recognises as a key). Each page must render with no groff warning.

usage: check-pages.py KUIMEN KUIMENCTL KUIMEN_8 KUIMENCTL_1 KUIMEN_CONF_5
"""
import re
import shutil
import subprocess
import sys

failures = []


def fail(msg):
    failures.append(msg)
    print('not ok: ' + msg)


def run(*argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        fail('%s exited %d: %s' % (' '.join(argv), p.returncode, p.stderr.strip()))
    return p.stdout


def plain(page):
    """The page's source with roff's escapes for '-' and font changes undone."""
    with open(page, encoding='utf-8') as f:
        s = f.read()
    return re.sub(r'\\f[BIRP]', '', s.replace('\\-', '-').replace('\\&', ''))


def long_options(help_text):
    return sorted(set(re.findall(r'(?<![\w-])--[a-z][a-z-]*', help_text)))


def check_options(prog_help, page, name):
    text = plain(page)
    opts = long_options(prog_help)
    if not opts:
        fail('%s --help lists no long option: has its format changed?' % name)
    for o in opts:
        if o not in text:
            fail('%s: %s is in `%s --help` but not in the page' % (page, o, name))
    return text


def check_commands(prog_help, text, page):
    # "  status   node, links ..." and "  spool retry ID|all ...": a command is the
    # indented lowercase words before the argument or the two-space gap.
    cmds = re.findall(r'^  ([a-z]+(?: [a-z]+)?)(?= {2,}| [A-Z])', prog_help, re.M)
    if len(cmds) < 5:
        fail('kuimenctl --help lists %d commands: has its format changed?' % len(cmds))
    for c in cmds:
        if not re.search(r'^\.(?:B|BR|TP)?\s*"?%s\b' % re.escape(c), text, re.M):
            fail('%s: command "%s" is in `kuimenctl --help` but has no entry in the page' % (page, c))


def check_keys(help_config, page):
    text = plain(page)
    # Looser than config/man-conf.py on purpose: any indented name followed by its
    # column gap, whatever its type is called.
    keys = re.findall(r'^  ([a-z_][a-z0-9_]*)(?: {2,}|(?<=.{18}) )\S', help_config, re.M)
    sections = re.findall(r'^\[(.+)\]$', help_config, re.M)
    if len(keys) < 20 or not sections:
        fail('kuimen --help-config: %d keys, %d sections: has its format changed?' % (len(keys), len(sections)))
    entries = set(re.findall(r'^\.TP\n(\S+) ', text, re.M))
    for k in keys:
        if k not in entries:
            fail('%s: key %s is in `kuimen --help-config` but has no entry in the page' % (page, k))
    for s in sections:
        if '.SS "[%s]"' % s not in text:
            fail('%s: section [%s] is missing' % (page, s))
    print('ok: %s has the %d keys of %d sections' % (page, len(keys), len(sections)))


def check_renders(page):
    groff = shutil.which('groff')
    if not groff:
        fail('groff is not installed (Debian package groff-base)')
        return
    p = subprocess.run([groff, '-man', '-ww', '-z', '-K', 'utf8', page], capture_output=True, text=True)
    if p.returncode != 0 or p.stderr:
        fail('%s: groff: rc %d: %s' % (page, p.returncode, p.stderr.strip()))
    else:
        print('ok: %s renders with no warning' % page)


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__.strip().splitlines()[-1])
    kuimen, kuimenctl, page8, page1, page5 = sys.argv[1:]
    check_options(run(kuimen, '--help'), page8, 'kuimen')
    text1 = check_options(run(kuimenctl, '--help'), page1, 'kuimenctl')
    check_commands(run(kuimenctl, '--help'), text1, page1)
    check_keys(run(kuimen, '--help-config'), page5)
    for page in (page8, page1, page5):
        check_renders(page)
    if failures:
        sys.exit('%d problem(s) in the man pages' % len(failures))
    print('ok: the man pages match kuimen and kuimenctl')


if __name__ == '__main__':
    main()
