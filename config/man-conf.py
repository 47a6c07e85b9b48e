#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Writes kuimen.conf(5) from `kuimen --help-config` and `--print-default-config`.

The keys come from the tables the daemon parses and validates with, so the page cannot
drift from the code (STYLE.md, Config). The prose around them is TEMPLATE, where the
lines @KEYS@ and @EXAMPLE@ are replaced by the formatted key list and default config.

usage: man-conf.py HELP_CONFIG_TXT DEFAULT_CONF TEMPLATE OUTPUT
"""
import re
import sys

# A key line: two spaces, the key, its type, the help; "%-16s %-8s" in
# gateway/config.c, so a long key or type is followed by one space only.
KEY = re.compile(r'^  ([a-z_][a-z0-9_]*)\s+(string|integer|boolean|number|duration|list|path)\s+(.*)$')
DEFAULT = re.compile(r'\s*\[default: (.*)\]$')


def esc(s):
    """Roff-safe text: backslashes, and hyphens that must stay ASCII for copy and paste."""
    return s.replace('\\', '\\e').replace('-', '\\-')


def line(s):
    """A text line that roff must not read as a request."""
    s = esc(s)
    return '\\&' + s if s[:1] in ('.', "'") else s


def keys(text):
    out = []
    key = None  # [name, type, help] until its lines end
    verbatim = False

    def flush():
        nonlocal key
        if key is None:
            return
        name, typ, help_ = key
        m = DEFAULT.search(help_)
        default = m.group(1) if m else None
        if m:
            help_ = help_[:m.start()]
        head = '\\fB%s\\fR \\fI%s\\fR' % (esc(name), typ)
        if default and default != 'none':
            head += ' (default: %s)' % esc(default)
        out.extend(['.TP', head, line(help_)])
        key = None

    for raw in text.splitlines():
        if key is not None and raw.startswith(' ' * 20):
            key[2] += ' ' + raw.strip()
            continue
        flush()
        if raw.startswith('[') and raw.endswith(']'):
            if verbatim:
                out.append('.fi')
                verbatim = False
            out.extend(['.SS "%s"' % esc(raw), ''])
            continue
        if not raw.strip():
            continue
        m = KEY.match(raw)
        if m:
            key = [m.group(1), m.group(2), m.group(3)]
            continue
        if raw.startswith('    '):
            if not verbatim:
                out.extend(['.PP', '.nf', '.RS 4'])
                verbatim = True
            out.append(line(raw[4:]))
            continue
        if verbatim:
            out.extend(['.RE', '.fi'])
            verbatim = False
        out.extend(['.PP', line(raw.strip())])
    flush()
    if verbatim:
        out.extend(['.RE', '.fi'])
    # Drop the blank left after each .SS heading: roff prints blank lines.
    return [x for x in out if x != '']


def example(conf):
    out = ['.PP', '.nf', '.RS 4']
    out.extend(line(x) if x else '' for x in conf.splitlines())
    out.extend(['.RE', '.fi'])
    return [x if x else '.sp' for x in out]


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__.strip().splitlines()[-1])
    help_txt, default_conf, template, output = sys.argv[1:]
    with open(help_txt, encoding='utf-8') as f:
        key_lines = keys(f.read())
    if not any(x == '.TP' for x in key_lines):
        sys.exit('man-conf.py: %s: no key found: has the --help-config format changed?' % help_txt)
    with open(default_conf, encoding='utf-8') as f:
        example_lines = example(f.read())
    page = []
    with open(template, encoding='utf-8') as f:
        for t in f.read().splitlines():
            if t == '@KEYS@':
                page.extend(key_lines)
            elif t == '@EXAMPLE@':
                page.extend(example_lines)
            else:
                page.append(t)
    with open(output, 'w', encoding='utf-8') as f:
        f.write('\n'.join(page) + '\n')


if __name__ == '__main__':
    main()
