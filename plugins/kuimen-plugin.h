/* SPDX-License-Identifier: MIT */
/* The link-driver plugin ABI: the one header a plugin (<type>.so) is built against. */
#ifndef KUIMEN_PLUGIN_H
#define KUIMEN_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

/*
 * A plugin drives one kind of link equipment (a BeiDou short-message module on a
 * serial port, an Iridium SBD modem, a DMR/PDT data radio over UDP, or the "sim"
 * loopback link). To the host it is a datagram transport: the host packs spooled
 * messages into frames of at most the link's MTU (gateway/frame), acknowledges and
 * retransmits them end to end, and hands the plugin one frame at a time; the plugin
 * turns a frame into whatever the device wants ($CCTXA hex, AT+SBDWB, an HDAP PDU) and
 * hands up what the device received.
 *
 * Rules of the ABI:
 * - The plugin exports exactly one symbol, kuimen_plugin(), and links no daemon
 *   symbol: everything it needs from the host is in struct km_host_api. Build with
 *   -fvisibility=hidden and mark the entry point KM_PLUGIN_EXPORT.
 * - Versioning: the host rejects a descriptor whose abi_major differs from its own,
 *   or whose struct_size is smaller than the host knows. Minor versions only add
 *   fields at the end (taken from reserved[]), so a newer host runs an older plugin.
 * - Threads: the host calls the plugin on its one event-loop thread, and the plugin
 *   calls the host API only from inside such calls or its fd/timer callbacks. A
 *   plugin never blocks: device I/O goes through watch_fd and timers.
 * - Errors: 0 or a negative errno; -EAGAIN from send() means "not now, call ready()
 *   when you can take a frame" (the card's service interval, a busy channel).
 * - Ownership: pointers passed in are borrowed for the duration of the call unless a
 *   comment says otherwise.
 * - Re-entrancy: the plugin never calls sent/ready/received from inside send()
 *   (report is allowed); the host may call send() from inside sent(), ready() and
 *   report(); the host never calls close() from inside a callback the plugin is making.
 * - Receipts: sent() comes exactly once for every token send() accepted, possibly with
 *   a negative status after send() returned 0 (the beam was lost during the send).
 * - open() fails only for bad config or no memory; a missing or unplugged device is a
 *   DOWN report, and the plugin retries on its own timer.
 * - Frames may arrive twice or out of order (SBD redelivers): the frame layer above
 *   drops duplicates. One .so may serve several links at once: no global mutable state.
 */

#define KM_PLUGIN_ABI_MAJOR 1
#define KM_PLUGIN_ABI_MINOR 2

#define KM_PLUGIN_EXPORT __attribute__((visibility("default")))

/* The host's handle for one link instance; opaque to the plugin. */
typedef struct km_plugin_link km_plugin_link;

enum km_plugin_state {
        KM_PLUGIN_DOWN = 0,     /* cannot send (no device, no card, no beam) */
        KM_PLUGIN_DEGRADED = 1, /* can send, but badly (weak beam, errors) */
        KM_PLUGIN_UP = 2,
};

/* What the driver knows of its link's health (§4.4 of the equipment notes). */
struct km_plugin_report {
        size_t struct_size;          /* sizeof(struct km_plugin_report) of the plugin */
        enum km_plugin_state state;
        const char *reason;          /* short, for logs and the status topic */
        int signal;                  /* 0..100, -1 unknown (beam power, CSQ, RSSI) */
        uint32_t mtu;                /* current largest frame, 0 = unchanged */
        uint32_t next_send_ms;       /* time until the device takes a frame, 0 = now */
        void *reserved[4];
};

enum km_plugin_log { KM_PLUGIN_LOG_ERR = 3, KM_PLUGIN_LOG_WARNING = 4, KM_PLUGIN_LOG_INFO = 6, KM_PLUGIN_LOG_DEBUG = 7 };

typedef void (*km_plugin_fd_cb)(void *ud, int fd, uint32_t revents);
typedef void (*km_plugin_timer_cb)(void *ud);

struct km_host_api {
        uint32_t abi_major, abi_minor;
        size_t struct_size;
        /* Logs a line tagged with the link's name. Rate-limit what a peer can trigger. */
        void (*log)(km_plugin_link *h, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
        /* The value of key in this link's [link NAME] section, or NULL. */
        const char *(*config)(km_plugin_link *h, const char *key);
        /* Watches fd (EPOLLIN/EPOLLOUT bits) until unwatch_fd; the plugin keeps the fd. */
        int (*watch_fd)(km_plugin_link *h, int fd, uint32_t events, km_plugin_fd_cb cb, void *ud);
        int (*unwatch_fd)(km_plugin_link *h, int fd);
        /* One-shot timer after usec (CLOCK_MONOTONIC, relative; 0 runs on the next loop
         * turn, never inside the call); returns an id > 0 for cancel_timer or a negative
         * errno. Cancelling a fired or unknown id is a no-op. Watching an fd already
         * watched changes its events. */
        int (*timer)(km_plugin_link *h, uint64_t usec, km_plugin_timer_cb cb, void *ud);
        void (*cancel_timer)(km_plugin_link *h, int id);
        /* The driver's view of the link's health; call on every change. */
        void (*report)(km_plugin_link *h, const struct km_plugin_report *r);
        /* A frame arrived from the peer (borrowed). */
        void (*received)(km_plugin_link *h, const void *frame, size_t len);
        /* The device took (status 0) or refused (negative errno) the frame of token:
         * a link receipt, not the peer's acknowledgement. */
        void (*sent)(km_plugin_link *h, uint32_t token, int status);
        /* After send() said -EAGAIN: the device can take a frame now. */
        void (*ready)(km_plugin_link *h);
        void *reserved[8];
};

struct km_plugin_ops {
        /* Reads its keys through api->config, opens the device. On success *state is
         * the plugin's, handed back to every other call. */
        int (*open)(km_plugin_link *h, const struct km_host_api *api, void **state);
        /* Closes the device, cancels its timers and fds, frees state. */
        void (*close)(void *state);
        /* Sends one frame of at most the MTU (borrowed). 0: taken (sent() follows),
         * -EAGAIN: not now (ready() follows), -EMSGSIZE: larger than the MTU. */
        int (*send)(void *state, const void *frame, size_t len, uint32_t token);
        /* The largest frame the device takes now. */
        uint32_t (*mtu)(void *state);
        /* ABI 1.1, optional (NULL: the host checks only the key names). Checks this
         * link's keys as open() would read them, through api->config, opening and
         * starting nothing: kuimen --check-config and the start run it, so a bad value
         * names its FILE:LINE before anything runs. In api only log and config are set.
         * Returns 0, or -EINVAL with *key the key at fault (NULL: the section) and why
         * (len bytes) filled. */
        int (*check)(km_plugin_link *h, const struct km_host_api *api, const char **key, char *why, size_t len);
        /* ABI 1.2, optional (NULL: every frame goes through send() to the one peer the
         * plugin's keys name). send() with a destination: peer is the name of one of
         * the link's peers (the [link] key peers: a center's bases), or NULL for the
         * plugin's own default peer. A center link whose one device terminates several
         * bases (a BeiDou card, a radio) addresses each base's acknowledgements to that
         * base this way. The plugin maps the name to a device address from its own
         * keys, and sends a name it cannot map to its default peer. Same returns and
         * receipts as send(). */
        int (*send_to)(void *state, const char *peer, const void *frame, size_t len, uint32_t token);
        void *reserved[6];
};

struct km_plugin_desc {
        uint32_t abi_major, abi_minor;
        size_t struct_size; /* sizeof(struct km_plugin_desc) of the plugin */
        const char *name;   /* the link type: "sim", "bds3", "sbd" ... */
        const char *version;
        const struct km_plugin_ops *ops;
        /* The keys this plugin reads in [link NAME], NULL-terminated; the host refuses
         * any other key there (beside its own: type, order, classes, budget ...). */
        const char *const *keys;
        void *reserved[8];
};

/* The one exported symbol. Returns the descriptor (static storage), or NULL when the
 * plugin cannot work with this host's ABI. */
typedef const struct km_plugin_desc *(*km_plugin_entry)(uint32_t host_abi_major, uint32_t host_abi_minor);
#define KM_PLUGIN_ENTRY "kuimen_plugin"
KM_PLUGIN_EXPORT const struct km_plugin_desc *kuimen_plugin(uint32_t host_abi_major, uint32_t host_abi_minor);

#endif
