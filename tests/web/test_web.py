#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# The command post page in a real browser (issue 17): Debian's chromium, headless, driven
# by selenium, against a real kuimen (a base, and a center that hears it) between two
# real Mosquitto brokers, with a real receiver capture replayed through gpsfake and gpsd
# and as the terminals' positions. Prints TAP; a screenshot per test lands in
# $KM_WEB_SHOTS (the build directory: CI keeps it).
#
# Environment (meson sets it): KM_KUIMEN, KM_KUIMENCTL, KM_MOSQUITTO, KM_SOURCE_ROOT,
# KM_WEB_SHOTS; KM_CHROMIUM, KM_CHROMEDRIVER (Debian's by default).
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ENV = os.environ
KUIMEN = ENV['KM_KUIMEN']
KUIMENCTL = ENV['KM_KUIMENCTL']
MOSQUITTO = ENV.get('KM_MOSQUITTO', '/usr/sbin/mosquitto')
SOURCE = ENV.get('KM_SOURCE_ROOT', os.path.join(os.path.dirname(__file__), '..', '..'))
SHOTS = ENV.get('KM_WEB_SHOTS', os.path.join(tempfile.gettempdir(), 'kuimen-web-shots'))
CAPTURE = os.path.join(SOURCE, 'tests', 'data', 'nmea', 'quectel-l76k-nmea.log')
N_UNITS = 6
BACKLOG = 800
BUDGET = 200  # messages a second the center link may send once back: a drain of ~5 s

procs = []


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start(args, log, **kw):
    f = open(log, 'ab')
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, **kw)
    procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class Broker:
    def __init__(self, d, name):
        self.port = free_port()
        self.dir = d
        self.name = name
        self.conf = os.path.join(d, 'mosquitto-%s.conf' % name)
        with open(self.conf, 'w') as f:
            f.write('listener %d 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n' % self.port)
        self.start()

    def start(self):
        self.p = start([MOSQUITTO, '-c', self.conf], os.path.join(self.dir, 'mosquitto-%s.log' % self.name))
        assert wait_port(self.port), 'mosquitto %s did not listen' % self.name


def get_json(port, path):
    with urllib.request.urlopen('http://127.0.0.1:%d%s' % (port, path), timeout=5) as r:
        return json.load(r)


def wait_until(fn, timeout, step=0.05):
    end = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > end:
            return v
        time.sleep(step)


def nmea_epochs(path):
    """The capture's position sentences grouped by time of day, CRLF-joined, each with the
    fix its GGA says (lat, lon), as a terminal would publish them."""
    epochs, cur, tod, fix = [], [], None, None
    pos_types = ('GGA', 'RMC', 'GLL', 'GNS')
    for line in open(path, encoding='ascii', errors='replace'):
        line = line.strip()
        if not line.startswith('$') or line[3:6] not in pos_types:
            continue
        f = line.split('*')[0].split(',')
        t = f[1] if line[3:6] != 'GLL' else f[5]
        if t != tod and cur:
            if fix:
                epochs.append(('\r\n'.join(cur), fix))
            cur, fix = [], None
        tod = t
        cur.append(line)
        if line[3:6] == 'GGA' and f[2] and f[4] and f[6] != '0':
            lat = int(f[2][:2]) + float(f[2][2:]) / 60
            lon = int(f[4][:3]) + float(f[4][3:]) / 60
            fix = (-lat if f[3] == 'S' else lat, -lon if f[5] == 'W' else lon)
    if cur and fix:
        epochs.append(('\r\n'.join(cur), fix))
    return epochs


LATLON = {'GGA': 2, 'RMC': 3, 'GLL': 1, 'GNS': 2}  # index of the latitude field


def shifted(payload, dlat, dlon):
    """The epoch's sentences with every fix moved by dlat, dlon degrees (fields rewritten
    with their own precision, checksums recomputed), and the GGA's fix after the move."""
    out, fix = [], None
    for s in payload.split('\r\n'):
        body = s[1:].split('*')[0]
        f = body.split(',')
        i = LATLON[body[2:5]]
        if f[i] and f[i + 2]:
            lat = (int(f[i][:2]) + float(f[i][2:]) / 60) * (-1 if f[i + 1] == 'S' else 1) + dlat
            lon = (int(f[i + 2][:3]) + float(f[i + 2][3:]) / 60) * (-1 if f[i + 3] == 'W' else 1) + dlon
            dec = len(f[i].split('.')[1])
            alat, alon = abs(lat), abs(lon)
            f[i] = '%02d%0*.*f' % (int(alat), dec + 3, dec, (alat - int(alat)) * 60)
            f[i + 1] = 'S' if lat < 0 else 'N'
            f[i + 2] = '%03d%0*.*f' % (int(alon), dec + 3, dec, (alon - int(alon)) * 60)
            f[i + 3] = 'W' if lon < 0 else 'E'
            if body[2:5] == 'GGA':
                fix = ((int(f[i][:2]) + float(f[i][2:]) / 60) * (-1 if lat < 0 else 1),
                       (int(f[i + 2][:3]) + float(f[i + 2][3:]) / 60) * (-1 if lon < 0 else 1))
        body = ','.join(f)
        ck = 0
        for c in body.encode():
            ck ^= c
        out.append('$%s*%02X' % (body, ck))
    return '\r\n'.join(out), fix


def pub(port, topic, payload=None, lines=None):
    args = ['mosquitto_pub', '-p', str(port), '-q', '1', '-t', topic]
    if lines is not None:
        subprocess.run(args + ['-l'], input='\n'.join(lines).encode() + b'\n', check=True, timeout=30)
    else:
        subprocess.run(args + ['-m', payload], check=True, timeout=10)


# ---- the world -------------------------------------------------------------------------

class World:
    def __init__(self):
        self.browser = None
        try:
            self.start()
        except BaseException:
            self.close()  # nothing of a half-started world is left running
            raise

    def start(self):
        t0 = time.time()
        self.dir = tempfile.mkdtemp(prefix='kuimen-web-')
        os.makedirs(SHOTS, exist_ok=True)
        for old in os.listdir(SHOTS):  # this run's pictures only
            if old.endswith('.png'):
                os.unlink(os.path.join(SHOTS, old))
        # The browser starts while the rest comes up: its start is the longest part.
        self.browser, browser_err = None, []

        def browser_start():
            try:
                self.browser = self.open_browser()
            except Exception as e:
                browser_err.append(e)
        bt = threading.Thread(target=browser_start)
        bt.start()
        self._bt = bt
        self.local = Broker(self.dir, 'local')
        self.center = Broker(self.dir, 'center')
        self.gpsd_port = free_port()
        self.gpsfake = start(['/usr/bin/python3', '/usr/bin/gpsfake', '-q', '-P', str(self.gpsd_port), '-c', '0.2',
                              CAPTURE], os.path.join(self.dir, 'gpsfake.log'))
        self.http = free_port()
        self.chttp = free_port()
        self.sock = os.path.join(self.dir, 'kuimen.sock')
        conf = os.path.join(self.dir, 'kuimen.conf')
        with open(conf, 'w') as f:
            f.write('[node]\nname = north\nspool = %s/state/spool.db\nstats_interval = 0\n'
                    '[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#, pos/#, status/#\n'
                    '[link center]\ntype = mqtt\nuri = tcp://127.0.0.1:%d\ntopic_prefix = kuimen\nkeepalive = 2s\n'
                    'hold = 500ms\nbudget_messages = %d\nbudget_interval = 1s\n'
                    '[gnss]\ngpsd = 127.0.0.1:%d\ninterval = 1s\n'
                    '[control]\nsocket = %s\n[http]\nlisten = 127.0.0.1:%d\n'
                    % (self.dir, self.local.port, self.center.port, BUDGET, self.gpsd_port, self.sock, self.http))
        cconf = os.path.join(self.dir, 'center.conf')
        with open(cconf, 'w') as f:
            f.write('[node]\nname = county\nrole = center\nspool = %s/center/spool.db\nstats_interval = 0\n'
                    '[local]\nuri = tcp://127.0.0.1:%d\n[control]\nsocket = %s/center.sock\n'
                    '[http]\nlisten = 127.0.0.1:%d\n' % (self.dir, self.center.port, self.dir, self.chttp))
        self.klog = os.path.join(self.dir, 'kuimen.log')
        # The center first, on its broker before the base says anything: a base's link
        # status goes out on each change and then once a minute.
        clog = os.path.join(self.dir, 'center.log')
        self.ck = start([KUIMEN, '--config', cconf], clog)
        assert wait_until(lambda: 'ingest: connected' in open(clog, errors='replace').read(), 10), \
            'the center kuimen did not connect to its broker (%s)' % clog
        self.k = start([KUIMEN, '--config', conf], self.klog)
        assert wait_port(self.http), 'kuimen did not serve [http] listen (%s)' % self.klog
        assert wait_port(self.chttp), 'the center kuimen did not serve its page'
        assert wait_until(lambda: self.link('center') == 'up', 10), 'the center link did not come up'
        bt.join(60)
        if browser_err or not self.browser:
            raise browser_err[0] if browser_err else RuntimeError('chromium did not start in 60 s')
        print('# up in %.1f s' % (time.time() - t0))

    def link(self, name, port=None):
        st = get_json(port or self.http, '/api/status')
        for l in st['links']:
            if l['name'] == name:
                return l['state']
        return None

    def open_browser(self):
        o = webdriver.ChromeOptions()
        o.binary_location = ENV.get('KM_CHROMIUM', '/usr/bin/chromium')
        for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                  '--window-size=1366,768', '--no-first-run', '--disable-extensions',
                  '--user-data-dir=' + os.path.join(self.dir, 'chromium')):
            o.add_argument(a)
        o.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
        svc = Service(ENV.get('KM_CHROMEDRIVER', '/usr/bin/chromedriver'),
                      log_path=os.path.join(self.dir, 'chromedriver.log'))
        b = webdriver.Chrome(service=svc, options=o)
        b.set_page_load_timeout(15)
        return b

    def console_errors(self):
        return [e for e in self.browser.get_log('browser') if e['level'] == 'SEVERE']

    def shot(self, name):
        self.browser.save_screenshot(os.path.join(SHOTS, name + '.png'))

    def close(self):
        # Everything is told to stop at once: each kuimen waits up to 3 s for acks.
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        if getattr(self, '_bt', None):
            self._bt.join(60)  # a browser still starting is quit too
        try:
            if self.browser:
                self.browser.quit()
        except Exception:
            pass
        for p in reversed(procs):
            stop(p)


def js(w, script, *args):
    return w.browser.execute_script(script, *args)


def row_state(w, link):
    return js(w, "const r = document.querySelector('#links tr[data-link=\"' + arguments[0] + '\"]');"
                 "return r ? r.getAttribute('data-state') : null;", link)


# ---- the tests -------------------------------------------------------------------------

def t_loads_without_console_error(w):
    w.browser.get('http://127.0.0.1:%d/' % w.http)
    assert wait_until(lambda: js(w, "return document.getElementById('live').textContent") == 'live', 10), \
        'the event stream did not open'
    assert wait_until(lambda: js(w, "return document.querySelectorAll('#links tbody tr').length") == 2, 5)
    assert js(w, "return document.getElementById('node').textContent") == 'north'
    errs = w.console_errors()
    assert not errs, 'console errors: %s' % errs


def t_links_states(w):
    assert wait_until(lambda: row_state(w, 'center') == 'up' and row_state(w, 'local') == 'up', 5), \
        'links shown: %s %s' % (row_state(w, 'center'), row_state(w, 'local'))
    txt = js(w, "return document.querySelector('#links tr[data-link=\"center\"] .link-state').textContent")
    assert txt == 'up', txt
    reason = js(w, "return document.querySelector('#links tr[data-link=\"center\"] .reason').textContent")
    api = [l for l in get_json(w.http, '/api/status')['links'] if l['name'] == 'center'][0]
    assert reason == api['reason'], (reason, api['reason'])


def t_units_at_their_coordinates(w):
    epochs = nmea_epochs(CAPTURE)
    assert len(epochs) >= 40, 'capture epochs: %d' % len(epochs)
    # Each unit a fix of the capture moved i x (90 m north, 60 m east), then a later fix
    # (past the track's 2 s) moved 30 m further north: a track of two.
    want = {}
    for rnd in range(2):
        if rnd:
            time.sleep(2.2)
        pubs = []
        for i in range(N_UNITS):
            payload, fix = shifted(epochs[i * 7 + rnd][0], (i * 90 + rnd * 30) / 111320.0,
                                   i * 60 / (111320.0 * 0.6728))
            assert fix, 'no GGA in epoch %d' % (i * 7 + rnd)
            unit = 'u%d' % (i + 1)
            # the terminals publish side by side, as they would
            pubs.append(subprocess.Popen(['mosquitto_pub', '-p', str(w.local.port), '-q', '1', '-i', 'terminal-' + unit,
                                          '-t', 'pos/' + unit, '-m', payload]))
            want[unit] = fix
        for p in pubs:
            assert p.wait(10) == 0, 'mosquitto_pub failed'

    def drawn():
        return js(w, """return Array.from(document.querySelectorAll('#map-units circle.unit')).map(c =>
            [c.getAttribute('data-unit'), +c.getAttribute('data-lat'), +c.getAttribute('data-lon'),
             +c.getAttribute('cx'), +c.getAttribute('cy')]);""")
    def at_last_fix():
        d = drawn()
        ok = len(d) == N_UNITS and all(abs(lat - want[u][0]) < 1e-6 and abs(lon - want[u][1]) < 1e-6
                                       for u, lat, lon, _, _ in d)
        return ok and d
    got = wait_until(at_last_fix, 10)
    assert got, 'units drawn: %s, want %s' % (drawn(), want)
    m = js(w, """const m = document.getElementById('map'); return ['lat0','lon0','k','kx','cx','cy']
        .map(a => +m.getAttribute('data-' + a));""")
    lat0, lon0, k, kx, cx, cy = m
    vb = [float(v) for v in js(w, "return document.getElementById('map').getAttribute('viewBox')").split()]
    for unit, lat, lon, x, y in got:
        wl, wn = want[unit]
        # the canonical record keeps 7 decimals
        assert abs(lat - wl) < 1e-6 and abs(lon - wn) < 1e-6, (unit, lat, lon, wl, wn)
        # and the point is where the projection puts that coordinate (to 0.01 px)
        ex, ey = cx + (wn - lon0) * k * kx, cy - (wl - lat0) * k
        assert abs(x - ex) < 0.02 and abs(y - ey) < 0.02, (unit, x, y, ex, ey)
        assert 0 <= x <= vb[2] and 0 <= y <= vb[3], (unit, x, y, vb)
    # The API says the same, and a scale bar is drawn in whole metres.
    api = {u['unit']: u for u in get_json(w.http, '/api/units')['units']}
    for unit, (wl, wn) in want.items():
        assert abs(api[unit]['position']['lat'] - wl) < 1e-6, unit
        assert len(api[unit]['track']) == 2, api[unit]['track']
    tracks = js(w, "return document.querySelectorAll('#map-tracks polyline.track').length")
    assert tracks == N_UNITS, 'tracks drawn: %d' % tracks
    metres = float(js(w, "return document.getElementById('scalebar').getAttribute('data-metres')"))
    px = float(js(w, "return document.getElementById('scalebar').getAttribute('data-px')"))
    assert abs(px - metres / (111320 / k)) < 0.05, (metres, px, k)
    # The box's own fix, from gpsd, as a square with its satellites in the table.
    assert wait_until(lambda: js(w, "return document.querySelectorAll('#map-units rect.unit').length") == 1, 15), \
        'no GNSS fix of the box on the map'
    rows = js(w, "return document.querySelectorAll('#units tbody tr').length")
    assert rows == N_UNITS + 1, rows
    w.browser.set_window_size(1366, 1500)  # the whole map in the picture
    time.sleep(0.3)
    w.browser.find_element(By.ID, 'map-section').screenshot(os.path.join(SHOTS, 'map.png'))
    w.browser.set_window_size(1366, 768)


def t_center_hears_the_base(w):
    w.browser.get('http://127.0.0.1:%d/' % w.chttp)
    try:
        center_page(w)
    finally:
        w.browser.get('http://127.0.0.1:%d/' % w.http)
    assert wait_until(lambda: row_state(w, 'center') == 'up', 10)


def center_page(w):
    card = "#bases .base[data-base=\"north\"]"
    ok = wait_until(lambda: js(w, "const c = document.querySelector(arguments[0]);"
                                  "return c && c.querySelector('tr[data-link=\"center\"] .state') && "
                                  "c.querySelector('tr[data-link=\"center\"] .state').textContent;", card) == 'up', 15)
    assert ok, 'the center page does not show north\'s center link up'
    # north's units, drawn under its name
    n = wait_until(lambda: js(w, "return document.querySelectorAll('#map-units circle[data-base=\"north\"]').length")
                   == N_UNITS, 10)
    assert n, 'units of north on the center map: %s' % js(
        w, "return document.querySelectorAll('#map-units circle[data-base=\"north\"]').length")
    api = get_json(w.chttp, '/api/bases')
    north = [b for b in api['bases'] if b['base'] == 'north'][0]
    assert north['status']['state'] == 'online' and north['status_via'] == 'mqtt', north['status']
    assert not w.console_errors()
    w.shot('center')


def t_calls_and_incidents(w):
    out = subprocess.run([KUIMENCTL, '--socket', w.sock, 'call', 'c1', 'orange', 'Rockfall at K7: go', 'u1,u2'],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stdout + out.stderr
    pub(w.local.port, 'call/u1/answer', '{"id":"c1","status":"received"}')

    def shown():
        return js(w, "const c = document.querySelector('#calls .call[data-call=\"c1\"]');"
                     "return c ? c.textContent : '';")
    ok = wait_until(lambda: '1/2 answered' in shown() and 'not answered: u2' in shown(), 10)
    assert ok, 'the call shows: %r' % shown()
    assert 'orange' in shown() and 'Rockfall at K7: go' in shown()
    # An incident at u1's place: its card with each unit's timeline, its radius on the map.
    lat, lon = [float(v) for v in js(w, "const c = document.querySelector('#map-units circle[data-unit=\"u1\"]');"
                                         "return [c.getAttribute('data-lat'), c.getAttribute('data-lon')];")]
    out = subprocess.run([KUIMENCTL, '--socket', w.sock, 'incident', 'open', '--call', 'c1', '--', 'i1', '%.7f' % lat,
                          '%.7f' % lon, '150', 'u1,u2'], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stdout + out.stderr
    card = wait_until(lambda: js(w, "const c = document.querySelector('#incidents .incident-card[data-incident=\"i1\"]');"
                                    "return c && c.querySelectorAll('tr').length === 3 && c.textContent;"), 10)
    assert card and 'call c1' in card, 'the incident shows: %r' % card
    r = js(w, "const c = document.querySelector('#map-incidents circle[data-incident=\"i1\"]');"
              "return c && [+c.getAttribute('r'), +document.getElementById('map').getAttribute('data-k')];")
    assert r and abs(r[0] - 150 / 111320 * r[1]) < 0.1, 'the incident\'s radius on the map: %s' % r


def t_cut_shows_within_2s(w):
    t0 = time.time()
    stop(w.center.p, signal.SIGKILL)
    assert wait_until(lambda: row_state(w, 'center') == 'down', 2.0, 0.02), \
        'the page still shows %s 2 s after the cut' % row_state(w, 'center')
    took = time.time() - t0
    print('# cut to page: %.2f s' % took)
    reason = js(w, "return document.querySelector('#links tr[data-link=\"center\"] .reason').textContent")
    assert reason in ('connection lost', 'cannot connect'), reason


def t_backlog_drains_with_time_left(w):
    pub(w.local.port, 'sensors/d', lines=['{"v":%d}' % i for i in range(BACKLOG)])

    def depth():
        t = js(w, "return document.getElementById('spool-depth').textContent")
        return int(t.split()[0]) if t and t[0].isdigit() else -1
    assert wait_until(lambda: depth() >= BACKLOG, 10), 'backlog shown: %d' % depth()
    assert js(w, "return document.getElementById('drain-eta').textContent") == '–'
    w.center.start()
    seen = None
    end = time.time() + 20
    while time.time() < end:
        # one reading of the three (a push may land between two calls)
        rate, eta, dtext = js(w, "return ['drain-rate', 'drain-eta', 'spool-depth']"
                                 ".map(i => document.getElementById(i).textContent);")
        d = int(dtext.split()[0]) if dtext[0].isdigit() else -1
        if eta.startswith('~') and d > 200:
            seen = (rate, eta, d)
            w.shot('backlog-drain')
            break
        time.sleep(0.1)
    assert seen, 'no drain rate and time left shown while draining'
    rate, eta, d = seen
    r = float(rate.split()[0])
    left = float(eta[1:].split()[0])
    print('# draining: %s, %s, backlog %d' % (rate, eta, d))
    assert BUDGET * 0.5 <= r <= BUDGET * 1.6, rate
    assert 0 <= left <= d / (BUDGET * 0.5), (eta, d)
    assert wait_until(lambda: depth() == 0, 20), 'the backlog did not drain: %d' % depth()
    assert wait_until(lambda: js(w, "return document.getElementById('drain-eta').textContent") == '–', 8)


def overflow(w):
    return js(w, "return [document.documentElement.scrollWidth, window.innerWidth]")


def t_laptop_and_phone_widths(w):
    for name, (wd, ht) in (('laptop', (1366, 768)), ('phone', (390, 844))):
        w.browser.set_window_size(wd, ht)
        time.sleep(0.5)
        sw, iw = overflow(w)
        assert sw <= iw, '%s: page %d px wide in a %d px window' % (name, sw, iw)
        box = js(w, "const r = document.getElementById('map').getBoundingClientRect(); return [r.width, r.height];")
        assert box[0] >= iw * 0.8 and box[1] > 100, (name, box, iw)
        shown = js(w, "const r = document.querySelector('#links tr[data-link=\"center\"] .link-state')"
                      ".getBoundingClientRect(); return r.right <= window.innerWidth && r.width > 0;")
        assert shown, '%s: the center link\'s state is off screen' % name
        w.shot('layout-' + name)
    w.browser.set_window_size(1366, 768)
    errs = w.console_errors()
    assert not errs, 'console errors: %s' % errs


TESTS = [t_loads_without_console_error, t_links_states, t_units_at_their_coordinates, t_center_hears_the_base,
         t_calls_and_incidents, t_cut_shows_within_2s, t_backlog_drains_with_time_left, t_laptop_and_phone_widths]


def main():
    t_start = time.time()
    print('1..%d' % len(TESTS))
    w = None
    passed = failed = 0
    try:
        w = World()
    except Exception:
        for line in traceback.format_exc().splitlines():
            print('# ' + line)
    for i, t in enumerate(TESTS, 1):
        name = t.__name__[2:]
        if w is None:
            print('not ok %d - %s # the world did not start' % (i, name))
            failed += 1
            continue
        t0 = time.time()
        try:
            t(w)
            print('ok %d - %s (%.1f s)' % (i, name, time.time() - t0))
            passed += 1
        except Exception:
            print('not ok %d - %s' % (i, name))
            for line in traceback.format_exc().splitlines():
                print('# ' + line)
            failed += 1
        try:
            w.shot('%02d-%s' % (i, name))
        except Exception:
            pass
        sys.stdout.flush()
    if w:
        if failed:
            print('# logs in %s' % w.dir)
        w.close()
        if not failed:
            shutil.rmtree(w.dir, ignore_errors=True)
    print('# %.1f s' % (time.time() - t_start))
    print('# %d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
