#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Turns a text file into a C string definition: the default config is compiled in.
import sys

src, dst, name = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, encoding='utf-8').read()
with open(dst, 'w', encoding='utf-8') as out:
    out.write('/* Generated from %s: do not edit. */\n' % src.split('/')[-1])
    out.write('const char %s[] =\n' % name)
    for line in data.splitlines(True):
        esc = line.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')
        out.write('    "%s"\n' % esc)
    out.write('    ;\n')
