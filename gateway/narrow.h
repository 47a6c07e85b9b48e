/* SPDX-License-Identifier: MIT */
/* Between the plugin host (gateway/plugin.c) and the narrow-link protocol on top of its device (gateway/narrow.c): the link's state and what each asks of the other. */
#ifndef KM_NARROW_H
#define KM_NARROW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <systemd/sd-event.h>

#include "auth.h"
#include "config.h"
#include "dict.h"
#include "frame.h"
#include "inbound.h"
#include "log.h"
#include "plugins/kuimen-plugin.h"

struct km_daemon;
struct km_link;

#define QMAX 64        /* messages handed over and not yet acknowledged */
#define FRAME_WINDOW 8 /* frames in flight */
#define MAXFD 8
#define MAXTIMER 16

struct narrow_conf {
        bool commands;
        int64_t command_grace_ms;
        char *positions; /* "compact" or "json" */
        /* frame authentication (gateway/auth.c) */
        char *key_file, *key_file_next;
        char *auth;      /* "on", "off", NULL = on when key_file is set */
        long tag_bytes;
};

struct qmsg {
        bool used, framed;
        uint64_t id;
        uint32_t cookie;
        char *topic;
        uint8_t *payload;
        size_t len, frag_off;
        int64_t created;
        uint8_t cls;
        int peer; /* center: the base it is for (index into peers) */
};

struct watch {
        struct km_plugin_link *h;
        int fd;
        sd_event_source *src;
        km_plugin_fd_cb cb;
        void *ud;
};

struct ptimer {
        int id;
        sd_event_source *src;
        km_plugin_timer_cb cb;
        void *ud;
        struct km_plugin_link *h;
};

struct kv {
        char *key, *value;
};

/* The sending side toward one peer. A center's link to several bases (ABI 1.2
 * send_to) keeps one per base: each base's receiver follows one sequence space, the
 * center's origin's, so frames for two bases in one space would show each gaps it
 * waits on for ever. Every other link has one, for its default peer. */
struct narrow_peer {
        int idx;             /* into peers; -1: the plugin's default peer (frames go with NULL) */
        uint32_t origin;     /* that peer's node id (idx >= 0) */
        struct km_frame_tx tx;
        /* ack = receipt: the device's receipt (sent()) for a token stands for the
         * peer's ack of the data frame that token carried. */
        struct {
                uint32_t token;
                uint16_t seq;
                bool used, receipted;
        } rcpt[KM_FRAME_WINDOW_MAX];
        int64_t probe_at;    /* CLOCK_MONOTONIC ms the outstanding probe left, 0 = none */
        uint16_t probe_seq;  /* its frame */
        int64_t heard_mono;  /* the peer last acknowledged a frame of ours */
        bool ack_owed;       /* an ack for the peer's frames waits for the device */
        bool ack_tried;      /* ... and a data frame was offered to carry it */
        uint32_t ack_to;     /* whose frames it acknowledges */
};

/* The handle the plugin sees: one per link. */
struct km_plugin_link {
        struct km_daemon *d;
        struct km_link *link;
        void *dl;
        const struct km_plugin_desc *desc;
        void *state;
        bool open;
        struct kv *kv;
        size_t nkv;
        bool center;
        uint32_t origin;
        struct km_strv peers;
        char *prefix;
        int64_t rto_ms;
        int64_t probe_ms;    /* probe an idle link this often; 0 = never */
        bool probing;        /* the link stays down until a probe is acknowledged */
        int64_t heard_mono;  /* a peer last acknowledged a frame of ours */
        struct narrow_peer *pp; /* the sending side per peer (see struct narrow_peer) */
        size_t npp;
        size_t rr;           /* the peer that had the last new frame (round robin) */
        struct km_frame_rx rx;
        struct km_dict dict;          /* dictionary = FILE, else zeroed */
        struct km_dict_fallback fb;   /* between rx and on_deliver: indexes beyond dict */
        bool busy;           /* the device said -EAGAIN: wait for ready() */
        int64_t free_at;     /* CLOCK_MONOTONIC ms the device said it takes the next frame */
        struct qmsg q[QMAX];
        struct watch w[MAXFD];
        struct ptimer t[MAXTIMER];
        int next_timer;
        sd_event_source *rto_src;
        uint8_t *buf;
        size_t bufcap;
        uint32_t mtu;
        uint64_t frames_in, frames_bad;
        uint64_t probes, probes_lost;
        uint64_t acks_foreign;        /* acks in frames from the peer for another node's frames */
        int64_t acks_foreign_log_ms;
        /* The host's view beside the plugin's (see the top of gateway/plugin.c). */
        enum km_link_state dev_state; /* the plugin's last report (degraded as up) */
        bool dev_degraded;            /* ... which said degraded */
        bool faulted;                 /* a fault waits for on_fault */
        bool held;                    /* the host keeps the link down until on_retry */
        char fault[160];              /* the last fault, for the state's reason */
        int64_t retry_ms;             /* the next back-off */
        sd_event_source *fault_src, *retry_src;
        /* The budget, spent frame by frame at the device. */
        uint64_t bud_bytes, bud_frames, bud_bytes_used, bud_frames_used;
        int64_t bud_ms, bud_start;
        sd_event_source *bud_src;
        /* Commands (see the top of gateway/narrow.c). */
        struct narrow_conf nc;
        char **cmd_pfx;  /* center: "<prefix>/<peer>/" per peer */
        char *group;     /* center: its peers, so that links to other bases do not compete */
        /* What came from the peer and can never be published (gateway/inbound.c), by
         * reason; logged at most every REFUSED_LOG_MS (gateway/narrow.c), saying how many went unlogged. */
        uint64_t refused[KM_REFUSE_N];
        struct km_log_limit refused_log[KM_REFUSE_N];
        /* Frame authentication (gateway/auth.c; "authentication" in gateway/narrow.c). */
        bool auth_on;                 /* frames sealed and only sealed ones taken */
        bool auth_off;                /* auth = off said by the operator (status says so) */
        struct km_auth auth;
        struct km_auth_peer *rx_peer; /* the peer the frame being received came from */
        size_t ovh;                   /* bytes sealing adds (0 without auth) */
        uint8_t *sbuf, *obuf;         /* a frame sealed, a frame opened: bufcap + 32 bytes each */
        char *conf_file;              /* key files are relative to it */
        struct km_log_limit auth_log;
        int64_t auth_saved_ms;
};

/* ---- gateway/plugin.c: the device, for the protocol ----------------------------- */

/* The value of key in the link's section (the plugin's and the narrow link's keys), or NULL. */
const char *km_plugin_config(km_plugin_link *h, const char *key);
/* Takes the link down for a fault seen inside a call, on a loop turn of its own; the
 * first fault names the failure. */
__attribute__((format(printf, 2, 3))) void km_plugin_fault(km_plugin_link *h, const char *fmt, ...);
/* A call into the plugin that began at t0 (km_mono_ms) and held the loop too long is a fault. */
void km_plugin_check_block(km_plugin_link *h, const char *what, int64_t t0);
/* The host keeps the link down and tries it again after the back-off. */
void km_plugin_hold_down(km_plugin_link *h);
/* The bytes the budget lets the next frame have (SIZE_MAX: no budget; 0: spent). */
size_t km_plugin_budget_room(km_plugin_link *h);
/* The budget is spent: kick again when its window rolls over. */
void km_plugin_budget_wait(km_plugin_link *h);
/* Hands wire[0..len) to the device (send_to(peer) where the plugin has it), spending
 * the budget; *token is the one it went with. true when the device took it; false
 * when busy (h->busy), in an outage or broken (a fault). */
bool km_plugin_dev_send(km_plugin_link *h, const char *peer, const uint8_t *wire, size_t len, uint32_t *token);
/* Closes the plugin and everything the host keeps for it (watches, timers, keys, the
 * library); the protocol's own state is the caller's. */
void km_plugin_close(km_plugin_link *h);

/* ---- gateway/narrow.c: the protocol, for the host --------------------------------- */

/* The narrow link's own keys beside the plugin's (NULL-terminated). */
extern const char *const km_narrow_keys[];
/* Feeds the device while it takes frames: an owed ack, retransmissions, new frames. */
void km_narrow_kick(km_plugin_link *h);
/* Forgets what was handed over (the spool replays it on another link) and the window. */
void km_narrow_forget(km_plugin_link *h);
/* Sends a probe (a frame the peer acknowledges) if the window is empty. */
void km_narrow_send_probe(km_plugin_link *h);
/* A datagram the device received, and the device's receipt for a frame (the host API). */
void km_narrow_received(km_plugin_link *h, const void *frame, size_t len);
void km_narrow_sent(km_plugin_link *h, uint32_t token, int status);
/* Makes l a narrow link run by h (its link ops; l owns h from then). */
void km_narrow_attach(struct km_link *l, km_plugin_link *h);
/* Whether l is a narrow link (then l->impl is its km_plugin_link). */
bool km_narrow_is(const struct km_link *l);
/* The protocol's part of [link NAME] in section of c, once the plugin is loaded and
 * its keys taken: peers, commands, timing, authentication, the frame codec. 0 or a
 * negative errno (logged). */
int km_narrow_setup(km_plugin_link *h, struct km_conf *c, const char *section);
/* The plugin opened: the protocol's timer runs. */
void km_narrow_opened(km_plugin_link *h);
/* --check-config for the narrow link's keys (commands, keys files, timing; addressed:
 * the plugin has send_to, ABI 1.2), then for its dictionary: the number of errors,
 * landed in c. */
int km_narrow_check(struct km_conf *c, const char *section, bool addressed);
int km_narrow_check_dictionary(struct km_conf *c, const char *section);

#endif
