/* SPDX-License-Identifier: MIT */
/* Narrow-link frame authentication: per-peer keys, sealing (encrypt-then-MAC) and opening of frames, counters that make a replay fail. */
#ifndef KM_AUTH_H
#define KM_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Wire version of a sealed frame (hdr bits 7-5); see the comment atop auth.c. */
#define KM_AUTH_WIRE_VERSION 3
#define KM_AUTH_KEY_BYTES 32
#define KM_AUTH_TAG_MIN 4
#define KM_AUTH_TAG_MAX 16
#define KM_AUTH_TAG_DEFAULT 8
/* Bytes a sealed frame adds to the plain one it carries at most: hdr, counter and
 * tag, less the plain frame's CRC (2 bytes at least), which the MAC replaces. */
#define KM_AUTH_OVERHEAD(tag) (1 + 4 + (tag) - 2)
/* Counters reserved on disk ahead of use: a restart skips at most this many. */
#define KM_AUTH_RESERVE 1024
/* Replay window: counters up to this far below the highest seen are still taken once. */
#define KM_AUTH_WINDOW 64
#define KM_AUTH_PEERS_MAX 64

/* Which way a frame goes: part of the nonce and the MAC, so that a frame cannot be
 * reflected back to its sender under the same key. */
enum km_auth_dir { KM_AUTH_UP = 0 /* base -> center */, KM_AUTH_DOWN = 1 /* center -> base */ };

/* One secret, as the two subkeys it is used as. */
struct km_auth_key {
        bool set;
        uint8_t enc[32], mac[32];
        char id[9]; /* hex of 4 bytes of a hash of the key: names it in logs and status */
};

/* What a receiver keeps per peer (in memory; its highest counter on disk). */
struct km_auth_peer {
        uint32_t origin;
        char name[64];
        struct km_auth_key key, next; /* key_file's and key_file_next's */
        uint64_t max;                 /* highest counter taken, 0 = none */
        uint64_t bits;                /* bit i: counter max - i taken */
        uint64_t saved;               /* max as the state file has it */
        int last_key;                 /* 0 none yet, 1 key_file, 2 key_file_next */
};

/* A link's authentication state. Caller-embedded: km_auth_init/_deinit. */
struct km_auth {
        unsigned tag;                 /* tag bytes, KM_AUTH_TAG_MIN..MAX */
        enum km_auth_dir tx_dir;      /* the direction this end sends */
        uint32_t self;                /* this node's origin */
        struct km_auth_peer peer[KM_AUTH_PEERS_MAX];
        size_t npeers;
        bool any_peer;                /* a base without peers: peer[0] holds the key, any origin */
        uint64_t tx_next;             /* next counter to send */
        uint64_t tx_reserved;         /* counters below this may have been used (on disk) */
        char *state_path;             /* owned; NULL = counters not persisted (tests) */
        bool dirty;                   /* a receive counter moved past what is on disk */
        /* rx lines of the state file read at init, for the peers added after it */
        uint32_t saved_origin[KM_AUTH_PEERS_MAX];
        uint64_t saved_max[KM_AUTH_PEERS_MAX];
        size_t nsaved;
        /* counters */
        uint64_t sealed, opened, auth_failures, replays, unknown_key;
};

/*
 * Reads a key file (mode 0600 or stricter, a regular file): lines of `KEY` or
 * `NAME = KEY`, KEY 32 bytes in base64, '#' comments and blank lines ignored. With
 * name NULL the file must hold exactly one key (a base's); else the key of `name`
 * (a center's line per peer). Returns 0, -EPERM (mode), -ENOENT (no such key), -EINVAL
 * (syntax), or another negative errno; err (may be NULL) says why, naming the file.
 */
int km_auth_key_load(const char *path, const char *name, struct km_auth_key *key, char *err, size_t errlen);

/* Derives key's subkeys and id from a 32-byte secret. */
void km_auth_key_from_secret(struct km_auth_key *key, const uint8_t secret[KM_AUTH_KEY_BYTES]);

/* A fresh random key in base64 (44 characters and a NUL) into out (cap >= 45). */
int km_auth_key_new(char *out, size_t cap);

/* Initialises a (zeroed on entry or not); tag bytes (0 = default), direction sent,
 * this node's origin; state_path (copied, may be NULL) holds the counters across
 * restarts: read here, a missing file is a first start. Peers are added after with
 * km_auth_peer_add. Returns 0, -EINVAL (tag), -ENOMEM, or the state file's error. */
int km_auth_init(struct km_auth *a, unsigned tag, enum km_auth_dir tx_dir, uint32_t self, const char *state_path);
/* Saves the counters (if dirty) and releases what a owns; keys are wiped. */
void km_auth_deinit(struct km_auth *a);

/* Adds a peer by name (origin = its FNV-1a hash) with its keys (next may be unset).
 * Returns the peer or NULL (full). A name "*" takes any origin (a base that does not
 * name its center). */
struct km_auth_peer *km_auth_peer_add(struct km_auth *a, const char *name, const struct km_auth_key *key,
                                      const struct km_auth_key *next);

/*
 * Seals the plain frame plain[0..len) (a frame gateway/frame.c wrote, its CRC last)
 * for peer p into out (capacity >= len + KM_AUTH_OVERHEAD(tag) + 2) under p's key_file
 * key, with the next counter (reserving a block on disk first when due). Returns the
 * sealed length, -EINVAL (not a frame), -ENOSPC (counter space used up: a new key is
 * due), or the state file's error (nothing sent: the counter must be durable first).
 */
int km_auth_seal(struct km_auth *a, struct km_auth_peer *p, const uint8_t *plain, size_t len, uint8_t *out,
                 size_t cap);

/*
 * Opens a sealed frame in[0..len) received: finds its peer by origin, checks the tag
 * under key_file's key then key_file_next's, then the counter against the window, and
 * only then takes the counter and decrypts into out (capacity >= len), a plain frame
 * with its CRC, for km_frame_rx_input. Nothing changes on failure. *peer (may be
 * NULL) gets the peer, *origin the claimed origin (for the log). Returns the plain
 * length; -EPROTONOSUPPORT (not a sealed frame), -EBADMSG (runt), -ENOKEY (no key for
 * that origin), -EBADE (tag), -EALREADY (replay or older than the window). Every
 * failure but -ENOKEY (unknown_key) and -EALREADY (replays) counts in auth_failures.
 */
int km_auth_open(struct km_auth *a, const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                 struct km_auth_peer **peer, uint32_t *origin);

/* Writes the state file now (write .new, fsync, rename, fsync the directory) if any
 * counter moved. Returns 0 or a negative errno. */
int km_auth_save(struct km_auth *a);

#endif /* KM_AUTH_H */
