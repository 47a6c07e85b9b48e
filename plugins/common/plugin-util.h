/* SPDX-License-Identifier: MIT */
/* What every link plugin needs besides its device: the key table reader behind open()
 * and check(), the parsers of numbers, durations and probabilities, the rate limit of
 * log lines a peer can trigger, and the monotonic clock. Compiled into each plugin .so
 * (hidden symbols, no daemon code), so a plugin still exports kuimen_plugin alone. */
#ifndef KUIMEN_PLUGIN_UTIL_H
#define KUIMEN_PLUGIN_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plugins/kuimen-plugin.h"

/* Microseconds on CLOCK_MONOTONIC: the host's timers and every deadline use it. */
uint64_t kmp_now_us(void);

/* A bad peer can make a log line fire per datagram: one line per 10 s, with the count
 * of what was swallowed since. kmp_ratelimit returns that count, or -1 to stay quiet. */
#define KMP_LOG_EVERY_US 10000000ull

struct kmp_ratelimit {
        uint64_t last_us;
        unsigned long suppressed;
};

long kmp_ratelimit(struct kmp_ratelimit *rl, uint64_t now);

/* Each parser returns NULL or why the value is wrong (into why when it needs numbers). */
const char *kmp_parse_uint(const char *v, uint64_t *out, uint64_t min, uint64_t max, char *why, size_t n);
/* "200ms", "1.5s", "2m", or a bare number of seconds; min and max in microseconds. */
const char *kmp_parse_duration(const char *v, uint64_t *out, uint64_t min, uint64_t max, char *why, size_t n);
const char *kmp_parse_prob(const char *v, double *out);

/* A serial port: the line speeds a termios port takes, and the port opened raw 8N1,
 * non-blocking, without flow control, VMIN 1 (so an idle port reads EAGAIN and a
 * hang-up reads 0), its queues flushed. kmp_serial_open returns the fd or -errno with
 * why ("open: ...", "not a serial port: ...", "tcsetattr: ..."). */
#define KMP_BAUDS "1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600"
bool kmp_baud_known(uint64_t baud);
int kmp_serial_open(const char *path, uint64_t baud, char *why, size_t n);

/* A center's bases on its one device (ABI 1.2 send_to): each base's name, as in the
 * link's peers, and its address on the device (a card number, a radio id). */
#define KMP_PEERS_MAX 16
struct kmp_peer_map {
        unsigned n;
        struct {
                char name[64];
                uint32_t addr;
        } v[KMP_PEERS_MAX];
};
/* Reads "NAME:ADDR, NAME:ADDR ..." into m (zeroed by the key reader); addr parses one
 * address (NULL or why). Returns NULL, malformed for a pair that is not NAME:ADDR or
 * too long, addr's why, or "more than 16". */
const char *kmp_peer_map_parse(const char *v, struct kmp_peer_map *m, const char *malformed,
                               const char *(*addr)(const char *v, uint32_t *out));
/* The address of peer in m, or dflt when peer is NULL or not in m (*found says). */
uint32_t kmp_peer_map_get(const struct kmp_peer_map *m, const char *peer, uint32_t dflt, bool *found);
/* peers (the link's `peers`, "NAME, NAME ..."): when it names more than one base, each
 * must be in m, else what goes to a base left out (its acks, its commands: a sequence
 * space per base, docs/DESIGN.md "Addressed sends") would reach the default address,
 * another base. 0, or -EINVAL with why naming the first missing (key is m's key, unit
 * what an address is: "card", "radio"). */
int kmp_peer_map_covers(const struct kmp_peer_map *m, const char *peers, const char *key, const char *unit, char *why,
                        size_t n);

/* The types the reader parses itself; a plugin numbers its own from KMP_OPT_CUSTOM and
 * parses them in its kmp_opt_parse_fn. KMP_OPT_OPTIONAL or'ed in: a key without a
 * default that may be left out (the reader then leaves the field zero). */
enum {
        KMP_OPT_UINT = 1,     /* uint64_t in min..max */
        KMP_OPT_DURATION,     /* uint64_t microseconds in min..max */
        KMP_OPT_PROB,         /* double 0..1 */
        KMP_OPT_CUSTOM = 16,
        KMP_OPT_OPTIONAL = 0x1000,
};

/* One key: the table parses, validates and documents it (STYLE.md rule 6). */
struct kmp_opt {
        const char *key;
        int type;
        const char *def; /* NULL: required (unless KMP_OPT_OPTIONAL) */
        size_t off;      /* of the field in the plugin's configuration struct */
        uint64_t min, max;
        const char *help;
};

/* Parses a plugin's own type of key into conf + o->off; NULL or why (as above). */
typedef const char *(*kmp_opt_parse_fn)(const struct kmp_opt *o, const char *v, void *conf, char *why, size_t n);

struct kmp_opt_table {
        const char *name; /* the plugin's, before every error: "sim: loss = '2': ..." */
        const struct kmp_opt *opts;
        size_t n;
        kmp_opt_parse_fn parse; /* the KMP_OPT_CUSTOM types; NULL when there are none */
        /* BeiDou's older form, kept for the configs and tests that know it:
         * "key: required (help)" and "key = value: why", without the name. */
        bool terse;
        /* The checks across keys, once every key has parsed: 0, or -EINVAL with *key
         * and the whole of why (the plugin's own texts). NULL: none. */
        int (*check_keys)(void *conf, const char **key, char *why, size_t wn);
};

/* Zeroes conf (of conf_size bytes) and reads every key of t through api->config. On
 * the first bad one returns -EINVAL with *key the key and why "name: key = 'value':
 * reason (help)" or "name: key: missing (help)", for open() to log and check() to
 * hand back; then t->check_keys. */
int kmp_read_opts(const struct kmp_opt_table *t, km_plugin_link *h, const struct km_host_api *api, void *conf,
                  size_t conf_size, const char **key, char *why, size_t wn);

/* open()'s start: refuses a host of another ABI (-EPROTO), then reads conf as above and
 * logs why at KM_PLUGIN_LOG_ERR (-EINVAL). */
int kmp_open_conf(const struct kmp_opt_table *t, km_plugin_link *h, const struct km_host_api *api, void *conf,
                  size_t conf_size);

/* The plugin's descriptor (ops and the keys it reads) and the one exported symbol,
 * which hands it to a host of this major ABI and NULL to any other. */
#define KMP_PLUGIN_ENTRY(plugin_name, plugin_version, plugin_ops, plugin_keys)                                  \
        static const struct km_plugin_desc kmp_desc = {                                                         \
                .abi_major = KM_PLUGIN_ABI_MAJOR,                                                               \
                .abi_minor = KM_PLUGIN_ABI_MINOR,                                                               \
                .struct_size = sizeof(struct km_plugin_desc),                                                   \
                .name = (plugin_name),                                                                          \
                .version = (plugin_version),                                                                    \
                .ops = &(plugin_ops),                                                                           \
                .keys = (plugin_keys),                                                                          \
        };                                                                                                      \
        KM_PLUGIN_EXPORT const struct km_plugin_desc *kuimen_plugin(uint32_t host_abi_major, uint32_t host_abi_minor) \
        {                                                                                                       \
                (void)host_abi_minor;                                                                           \
                return host_abi_major == KM_PLUGIN_ABI_MAJOR ? &kmp_desc : NULL;                                \
        }

#endif
