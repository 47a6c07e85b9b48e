#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# config/grafana-kuimen.json names only what kuimen exports: every metric named in a
# panel's expr or a variable's query is a family (# TYPE) of the real /metrics of a
# running base, which prints every family it has, a series or not. Prints TAP.
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SOURCE = os.environ.get('KM_SOURCE_ROOT', os.path.join(os.path.dirname(__file__), '..', '..'))
DASH = os.path.join(SOURCE, 'config', 'grafana-kuimen.json')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def exported():
    d = tempfile.mkdtemp(prefix='kuimen-grafana-')
    port = free_port()
    conf = os.path.join(d, 'kuimen.conf')
    with open(conf, 'w') as f:
        # brokers nobody runs: the links are down, every family is still there
        f.write('[node]\nname = north\nspool = %s/spool.db\nstats_interval = 0\n[local]\nuri = tcp://127.0.0.1:%d\n'
                '[link center]\nuri = tcp://127.0.0.1:%d\n[control]\nsocket = %s/k.sock\n[metrics]\nlisten = 127.0.0.1:%d\n'
                % (d, free_port(), free_port(), d, port))
    k = subprocess.Popen([os.environ['KM_KUIMEN'], '--config', conf], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(d, 'kuimen.log'), 'w'))
    try:
        text = None
        for _ in range(200):
            try:
                with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=2) as r:
                    text = r.read().decode()
                break
            except OSError:
                time.sleep(0.05)
        assert text, 'no /metrics from kuimen (%s)' % d
        return set(re.findall(r'^# TYPE (\S+) ', text, re.M))
    finally:
        k.send_signal(signal.SIGTERM)
        k.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def exprs(dash):
    out = []
    def walk(o, where):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ('expr', 'definition') and isinstance(v, str):
                    out.append((where, v))
                elif k == 'query' and isinstance(v, str) and where.startswith('variable'):
                    out.append((where, v))
                else:
                    walk(v, where if k not in ('title', 'name') else where)
        elif isinstance(o, list):
            for i in o:
                walk(i, where)
    for p in dash['panels']:
        walk(p, 'panel %r' % p.get('title'))
    for v in dash['templating']['list']:
        if v.get('type') == 'query':
            walk(v, 'variable %r' % v.get('name'))
    return out


def main():
    print('1..2')
    dash = json.load(open(DASH))
    have = exported()
    bad, n = [], 0
    for where, e in exprs(dash):
        names = re.findall(r'\bkuimen_[a-z0-9_]+', e)
        if not names:
            bad.append('%s: %s names no kuimen metric' % (where, e))
        for name in names:
            n += 1
            if name not in have:
                bad.append('%s: %s is not exported' % (where, name))
    print('%s 1 - every metric the dashboard names is exported (%d names)' % ('not ok' if bad else 'ok', n))
    for b in bad:
        print('# ' + b)
    ids = [p['id'] for p in dash['panels']]
    fails = []
    if len(ids) != len(set(ids)):
        fails.append('panel ids repeat')
    for p in dash['panels']:
        g = p.get('gridPos', {})
        if g.get('x', -1) < 0 or g.get('x', 0) + g.get('w', 0) > 24:
            fails.append('panel %r outside the 24 columns' % p['title'])
    print('%s 2 - panels have unique ids and fit the grid' % ('not ok' if fails else 'ok'))
    for f in fails:
        print('# ' + f)
    ok = not bad and not fails
    print('# %d passed, %d failed' % (int(not bad) + int(not fails), int(bool(bad)) + int(bool(fails))))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
