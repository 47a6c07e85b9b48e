/* SPDX-License-Identifier: MIT */
/* The helpers every link plugin compiles in (plugin-util.h). */
#include "plugins/common/plugin-util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

uint64_t kmp_now_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

long kmp_ratelimit(struct kmp_ratelimit *rl, uint64_t now)
{
        if (rl->last_us && now - rl->last_us < KMP_LOG_EVERY_US) {
                rl->suppressed++;
                return -1;
        }
        long n = (long)rl->suppressed;
        rl->last_us = now ? now : 1; /* 0 means "never logged" */
        rl->suppressed = 0;
        return n;
}

const char *kmp_parse_uint(const char *v, uint64_t *out, uint64_t min, uint64_t max, char *why, size_t n)
{
        char *end;
        /* strtoull would take " 5", "+5" and "-5" (as a huge number) */
        if (*v < '0' || *v > '9')
                return "not a whole number";
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (*end != '\0')
                return "not a whole number";
        if (errno == ERANGE || x < min || x > max) {
                snprintf(why, n, "out of range %llu..%llu", (unsigned long long)min, (unsigned long long)max);
                return why;
        }
        *out = x;
        return NULL;
}

const char *kmp_parse_duration(const char *v, uint64_t *out, uint64_t min, uint64_t max, char *why, size_t n)
{
        char *end;
        /* a leading digit or dot: no sign, no "inf" or "nan", so x is never negative */
        if (!((*v >= '0' && *v <= '9') || *v == '.'))
                return "not a duration (e.g. 200ms, 1.5s, 2m)";
        double x = strtod(v, &end);
        if (end == v)
                return "not a duration (e.g. 200ms, 1.5s, 2m)";
        if (strcmp(end, "ms") == 0)
                x /= 1000.0;
        else if (strcmp(end, "m") == 0)
                x *= 60.0;
        else if (strcmp(end, "s") != 0 && *end != '\0')
                return "unknown unit (use ms, s or m)";
        /* the upper bound first: llround of a huge x is undefined */
        if (!isfinite(x) || x * 1e6 > (double)max + 0.5 || llround(x * 1e6) < (long long)min) {
                snprintf(why, n, "out of range %gs..%gs", (double)min / 1e6, (double)max / 1e6);
                return why;
        }
        *out = (uint64_t)llround(x * 1e6);
        return NULL;
}

const char *kmp_parse_prob(const char *v, double *out)
{
        char *end;
        if (!((*v >= '0' && *v <= '9') || *v == '.'))
                return "not a probability 0..1";
        double x = strtod(v, &end);
        if (end == v || *end != '\0' || !isfinite(x) || x < 0.0 || x > 1.0)
                return "not a probability 0..1";
        *out = x;
        return NULL;
}

int kmp_read_opts(const struct kmp_opt_table *t, km_plugin_link *h, const struct km_host_api *api, void *conf,
                  size_t conf_size, const char **key, char *why, size_t wn)
{
        char buf[160];
        memset(conf, 0, conf_size);
        for (size_t i = 0; i < t->n; i++) {
                const struct kmp_opt *o = &t->opts[i];
                int type = o->type & ~KMP_OPT_OPTIONAL;
                const char *v = api->config(h, o->key), *bad = NULL;
                void *dst = (char *)conf + o->off;
                if (!v)
                        v = o->def;
                if (!v) {
                        if (o->type & KMP_OPT_OPTIONAL)
                                continue;
                        *key = o->key;
                        if (t->terse)
                                snprintf(why, wn, "%s: required (%s)", o->key, o->help);
                        else
                                snprintf(why, wn, "%s: %s: missing (%s)", t->name, o->key, o->help);
                        return -EINVAL;
                }
                switch (type) {
                case KMP_OPT_UINT: bad = kmp_parse_uint(v, dst, o->min, o->max, buf, sizeof(buf)); break;
                case KMP_OPT_DURATION: bad = kmp_parse_duration(v, dst, o->min, o->max, buf, sizeof(buf)); break;
                case KMP_OPT_PROB: bad = kmp_parse_prob(v, dst); break;
                default: bad = t->parse ? t->parse(o, v, conf, buf, sizeof(buf)) : "unknown option type"; break;
                }
                if (bad) {
                        *key = o->key;
                        if (t->terse)
                                snprintf(why, wn, "%s = %s: %s", o->key, v, bad);
                        else
                                snprintf(why, wn, "%s: %s = '%s': %s (%s)", t->name, o->key, v, bad, o->help);
                        return -EINVAL;
                }
        }
        return t->check_keys ? t->check_keys(conf, key, why, wn) : 0;
}

int kmp_open_conf(const struct kmp_opt_table *t, km_plugin_link *h, const struct km_host_api *api, void *conf,
                  size_t conf_size)
{
        const char *key = NULL;
        char why[512];
        if (!api || api->abi_major != KM_PLUGIN_ABI_MAJOR || api->struct_size < offsetof(struct km_host_api, reserved))
                return -EPROTO;
        int r = kmp_read_opts(t, h, api, conf, conf_size, &key, why, sizeof(why));
        if (r < 0)
                api->log(h, KM_PLUGIN_LOG_ERR, "%s%s%s", t->terse ? t->name : "", t->terse ? ": " : "", why);
        return r;
}

static const struct {
        unsigned baud;
        speed_t speed;
} bauds[] = { { 1200, B1200 },     { 2400, B2400 },     { 4800, B4800 },     { 9600, B9600 },
              { 19200, B19200 },   { 38400, B38400 },   { 57600, B57600 },   { 115200, B115200 },
              { 230400, B230400 }, { 460800, B460800 }, { 921600, B921600 } };

static int speed_of(uint64_t baud, speed_t *sp)
{
        for (size_t i = 0; i < sizeof(bauds) / sizeof(bauds[0]); i++)
                if (bauds[i].baud == baud) {
                        *sp = bauds[i].speed;
                        return 0;
                }
        return -EINVAL;
}

bool kmp_baud_known(uint64_t baud)
{
        speed_t sp;
        return speed_of(baud, &sp) == 0;
}

int kmp_serial_open(const char *path, uint64_t baud, char *why, size_t n)
{
        struct termios t;
        speed_t sp;
        if (speed_of(baud, &sp) < 0) {
                snprintf(why, n, "not a line speed: %llu", (unsigned long long)baud);
                return -EINVAL;
        }
        int fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
                int e = errno;
                snprintf(why, n, "open: %s", strerror(e));
                return -e;
        }
        if (tcgetattr(fd, &t) < 0) {
                int e = errno;
                close(fd);
                snprintf(why, n, "not a serial port: %s", strerror(e));
                return -e;
        }
        cfmakeraw(&t);
        t.c_cflag |= CLOCAL | CREAD;
        t.c_cflag &= ~(tcflag_t)(CRTSCTS | CSTOPB | PARENB);
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        cfsetispeed(&t, sp);
        cfsetospeed(&t, sp);
        if (tcsetattr(fd, TCSANOW, &t) < 0) {
                int e = errno;
                close(fd);
                snprintf(why, n, "tcsetattr: %s", strerror(e));
                return -e;
        }
        tcflush(fd, TCIOFLUSH);
        return fd;
}

/* The next NAME:VALUE of a list: 1 and *pp past it, 0 at the end, -1 malformed. */
static int next_pair(const char **pp, char *name, size_t nn, char *val, size_t vn)
{
        const char *p = *pp;
        while (*p == ' ' || *p == ',')
                p++;
        if (!*p)
                return 0;
        const char *colon = strchr(p, ':'), *end = p + strcspn(p, ", ");
        if (!colon || colon > end || colon == p || colon + 1 == end || (size_t)(colon - p) >= nn ||
            (size_t)(end - colon - 1) >= vn)
                return -1;
        snprintf(name, nn, "%.*s", (int)(colon - p), p);
        snprintf(val, vn, "%.*s", (int)(end - colon - 1), colon + 1);
        *pp = end;
        return 1;
}

const char *kmp_peer_map_parse(const char *v, struct kmp_peer_map *m, const char *malformed,
                               const char *(*addr)(const char *v, uint32_t *out))
{
        char name[sizeof(m->v[0].name)], val[32];
        for (int r; (r = next_pair(&v, name, sizeof(name), val, sizeof(val))) != 0;) {
                if (r < 0)
                        return malformed;
                if (m->n == KMP_PEERS_MAX)
                        return "more than 16";
                const char *bad = addr(val, &m->v[m->n].addr);
                if (bad)
                        return bad;
                memcpy(m->v[m->n++].name, name, sizeof(name));
        }
        return NULL;
}

uint32_t kmp_peer_map_get(const struct kmp_peer_map *m, const char *peer, uint32_t dflt, bool *found)
{
        *found = false;
        for (unsigned i = 0; peer && i < m->n; i++)
                if (strcmp(m->v[i].name, peer) == 0) {
                        *found = true;
                        return m->v[i].addr;
                }
        return dflt;
}

int kmp_peer_map_covers(const struct kmp_peer_map *m, const char *peers, const char *key, const char *unit, char *why,
                        size_t n)
{
        if (!peers || !strchr(peers, ','))
                return 0; /* one base: the default address is its */
        for (const char *p = peers; *p;) {
                size_t len = strcspn(p, ",");
                const char *b = p, *e = p + len;
                while (b < e && isspace((unsigned char)*b))
                        b++;
                while (e > b && isspace((unsigned char)e[-1]))
                        e--;
                bool found = false;
                for (unsigned i = 0; e > b && i < m->n && !found; i++)
                        found = strlen(m->v[i].name) == (size_t)(e - b) && strncmp(m->v[i].name, b, (size_t)(e - b)) == 0;
                if (e > b && !found) {
                        snprintf(why, n, "no %s for %.*s (one of peers) in %s: a %s serving several bases sends each base its own acks and commands",
                                 unit, (int)(e - b), b, key, unit);
                        return -EINVAL;
                }
                p += len + (p[len] == ',');
        }
        return 0;
}
