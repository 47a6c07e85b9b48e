/* SPDX-License-Identifier: MIT */
/* Spool: the one durable store-and-forward queue (ingest log + SQLite backlog). */
#ifndef KM_SPOOL_H
#define KM_SPOOL_H

#include <stdbool.h>
#include <stdint.h>

#include "msg.h"

struct km_spool;

struct km_spool_opts {
        const char *path;          /* the SQLite file; the ingest logs sit beside it */
        int64_t max_bytes;         /* bound on what the spool holds */
        bool sync_always;          /* push returns only after the fsync holding it */
        int64_t sync_interval_ms;  /* batch mode: fsync at least this often */
        /* Called from the pushing thread when the loop should look at the spool
         * (new messages, or the pending buffer wants a flush). */
        void (*wake)(void *ud);
        void *wake_ud;
        /* The wall clock messages are stamped with (created, expires), so that expiry
         * compares like with like; NULL: the system clock. Any thread. */
        int64_t (*now)(void *ud);
        void *now_ud;
};

struct km_spool_stats {
        uint64_t depth[KM_DIR_COUNT];
        uint64_t bytes;
        uint64_t pushed, acked;
        uint64_t dropped, expired, coalesced, over_limit;
        uint64_t recovered, moved_aside;
        uint64_t fsyncs;
        uint64_t storage_faults;  /* storage faults begun (ENOSPC, EIO, failed commits) */
        uint64_t refused_storage; /* pushes refused during one */
        int storage_err;          /* the fault in force: 0, or a negative errno */
        char storage_why[192];    /* what it is, "" when none */
        int64_t storage_since_ms; /* how long it has lasted, ms */
        /* Dead letters (messages a peer can never take): set aside so far, held now
         * (a gauge), sent back to the queue by an operator, dropped (by an operator, or
         * the oldest past KM_SPOOL_DEAD_MAX). */
        uint64_t set_aside, dead, dead_retried, dead_dropped;
        uint64_t depth_prio[KM_DIR_COUNT][KM_PRIO_COUNT];
        int64_t oldest_ms[KM_DIR_COUNT]; /* created time of the oldest queued, 0 if none */
};

/* Opens (creating) the spool and recovers what the last run left: a damaged SQLite
 * file is moved aside (logged, counted) and a fresh one started; ingest-log records
 * not yet in SQLite are replayed. On success *out owns the spool. */
int km_spool_open(struct km_spool **out, const struct km_spool_opts *o);

/* Names the loop thread: a push from it never waits for the loop (it would wait for
 * itself). */
void km_spool_set_loop_thread(struct km_spool *sp);

/* Flushes, syncs and closes; NULL is a no-op. */
void km_spool_close(struct km_spool *sp);

/* Any thread. Assigns m->id and appends m to the ingest log with one write(2); returns
 * 0 once the message survives a kill of the process (and, with sync_always, a power
 * cut), or, while the loop thread stages (km_spool_defer_sync), once it is staged. m's
 * pointers are only read during the call. Negative errno on failure: the message is then
 * NOT accepted and must not be acknowledged: -EMSGSIZE (never fits), -ENOMEM, the
 * storage fault's errno (-ENOSPC, -EIO...: refused at once while it lasts), or, from
 * another thread than the loop, -EAGAIN when pending is full until the loop's next
 * flush (such a push never waits for the loop). */
int km_spool_push(struct km_spool *sp, struct km_msg *m);

/* Loop thread. The next queued message of dir and prio with id > after, expired ones
 * removed on the way. Returns 1 and fills out (its pointers valid until the next spool
 * call), 0 when there is none, or negative errno. */
int km_spool_next(struct km_spool *sp, int dir, int prio, uint64_t after, struct km_msg *out);

/* Loop thread. The message was delivered: it leaves the spool at the next commit. */
int km_spool_ack(struct km_spool *sp, uint64_t id);

/* Loop thread. Until km_spool_settle, a push from the loop thread only stages its
 * record: a client that reads many messages at once pushes them all, settles once
 * (one write(2) of all the records and, with sync_always, one fsync), and only then
 * acknowledges them. Other threads' pushes wait for the settle meanwhile, so that the
 * log stays in id order. A message pushed this way is safe once settle returned 0. */
void km_spool_defer_sync(struct km_spool *sp);

/* Loop thread. Writes what was staged since km_spool_defer_sync (and waits for its
 * fsync with sync_always), and ends the staging. 0, or a negative errno: the staged
 * messages are then NOT in the log (they are still delivered from memory), and must
 * not be acknowledged to their sender. */
int km_spool_settle(struct km_spool *sp);

/* Loop thread. Waits until everything pushed so far is on the device (an fdatasync of
 * the ingest log unless the sync thread already did it): for state written with a
 * "FULL" commit that says an upstream change was sent, so that a power cut cannot
 * keep the state and lose the change (sync = batch). 0 or a negative errno. */
int km_spool_sync(struct km_spool *sp);

/* Loop thread. Moves pending messages into SQLite, applies coalescing, expiry and the
 * space policy, writes acks, and commits. Cheap when there is nothing to do. */
int km_spool_commit(struct km_spool *sp);

/* Loop thread. Moves everything pending into SQLite and commits with fsync (on drain,
 * and for tests that need the backlog path). */
int km_spool_checkpoint(struct km_spool *sp);

/* Loop thread. Removes expired messages at the head of each queue. */
int km_spool_expire(struct km_spool *sp, int64_t now_ms);

/* Whether there is something for km_spool_commit to do (pending, acks). */
bool km_spool_dirty(struct km_spool *sp);

/* Loop thread. Fills prios with the priorities that have messages queued for dir,
 * highest first (lowest value); returns how many. */
int km_spool_prios(struct km_spool *sp, int dir, uint8_t prios[KM_PRIO_COUNT]);

/* Loop thread. Counters and depths (a consistent snapshot). */
void km_spool_stats(struct km_spool *sp, struct km_spool_stats *st);

/* Any thread. False while a storage fault is in force (pushes are refused). */
bool km_spool_storage_ok(struct km_spool *sp);

/* fsync of the directory that holds path: a created or renamed file's name is durable
 * only then (STYLE: write .new, fsync, rename, fsync the directory). 0 or -errno. */
int km_fsync_dir(const char *path);
/* 0 when path may be a spool: missing, empty, an SQLite file, or a file beside the
 * <path>.lock an earlier kuimen left (a spool damaged past its header). Else -ENOTSUP
 * (or the stat/open errno) with why filled: kuimen touches no such file, since damage
 * recovery would rename it aside (spool = /etc/passwd must not move that file). */
int km_spool_foreign(const char *path, char *why, size_t len);

/* Unix time in ms (CLOCK_REALTIME). */
int64_t km_now_ms(void);

/* What km_spool_peek shows of one queued message (no payload; the topic is cut to fit). */
struct km_spool_peek {
        uint64_t id;
        int64_t created_ms, expires_ms; /* unix ms; expires 0 = never */
        uint8_t dir, prio;
        uint32_t len;    /* payload bytes */
        char cls[64];
        char topic[256]; /* truncated when longer */
};

/* Loop thread; read-only. Copies the head of the queue of dir and prio: up to max
 * messages, oldest first, in the order km_spool_next hands them out (those a link has
 * in flight included, expired ones left out). For operators (kuimenctl spool), not for
 * the send path: it prepares its statement on each call. Returns how many, or a
 * negative errno. */
int km_spool_peek(struct km_spool *sp, int dir, int prio, struct km_spool_peek *out, int max);

/* ---- dead letters ----
 * A message a peer can never take (its packet is over the peer's maximum packet size,
 * or the peer refused it for good: not authorised, invalid topic or payload, too large)
 * is set aside rather than retried at the head of its queue forever: it moves to a
 * table of its own in the same SQLite file, counted and logged, and stays there until
 * an operator sends it back (kuimenctl spool retry) or drops it. Held messages are not
 * in the depths or bytes, and are never handed out by km_spool_next. */

#define KM_SPOOL_DEAD_MAX 10000 /* held at most; past it the oldest is dropped (counted) */

/* What km_spool_dead_list shows of one held message (no payload). */
struct km_spool_dead {
        uint64_t id;
        int64_t created_ms, at_ms; /* unix ms: created, and set aside */
        uint8_t dir, prio;
        uint32_t len;    /* payload bytes */
        char cls[64];
        char topic[256]; /* truncated when longer */
        char why[160];
};

/* Loop thread. Moves message id out of the queue (from memory or SQLite) into the dead
 * letters, with why (copied); logs it (rate-limited). 0, -ENOENT when the spool does
 * not hold it (acknowledged or expired meanwhile), or a negative errno. */
int km_spool_set_aside(struct km_spool *sp, uint64_t id, const char *why);

/* Loop thread. Holds m, which arrived (a narrow link's message) but can never be
 * published, straight in the dead letters with why (copied), flagged KM_MSG_REFUSED
 * (m->flags gets it; m->id gets an id of the spool's sequence): an operator can look
 * at it and drop it, not queue it again. Counted in set_aside and logged as
 * km_spool_set_aside. 0 or a negative errno. */
int km_spool_put_aside(struct km_spool *sp, struct km_msg *m, const char *why);

/* Loop thread; read-only. Copies up to max held messages, oldest set aside first.
 * Returns how many, or a negative errno. */
int km_spool_dead_list(struct km_spool *sp, struct km_spool_dead *out, int max);

/* Loop thread. Puts held message id (0: all; those refused on arrival stay) back at
 * the tail of its queue under a NEW id: the links' cursors are past the old one, so it would wait for the next
 * reconnect. kuimen-id (the origin id subscribers drop duplicates by) stays the old
 * one. One with a coalesce key on which a newer message is queued is dropped instead
 * (at the tail it would replace the newer value), counted in coalesced and in
 * *superseded (may be NULL). Returns how many went back, -EPERM when id names one
 * refused on arrival, or a negative errno. */
int km_spool_dead_retry(struct km_spool *sp, uint64_t id, int *superseded);

/* Loop thread. Deletes held message id (0: all), counted in dead_dropped. Returns how
 * many, or a negative errno. */
int km_spool_dead_drop(struct km_spool *sp, uint64_t id);

/* ---- tables of other modules (gateway/calls.c) ----
 * Loop thread only. A module keeps its own tables in the spool's SQLite file and
 * writes them between km_spool_tx_begin and km_spool_tx_end, never across another
 * spool call. */
struct sqlite3;

/* The spool's connection (borrowed; valid until km_spool_close). */
struct sqlite3 *km_spool_sqlite(struct km_spool *sp);

/* Opens a write transaction (joining the spool's open one, which then commits with
 * it). full: its commit fsyncs the WAL (synchronous=FULL) before it returns, for state
 * an acknowledgement is about to vouch for. 0 or a negative errno. */
int km_spool_tx_begin(struct km_spool *sp, bool full);

/* Ends it: commit (true) or roll back; what (static text) names the work in the log
 * when it failed. A failure starts the spool's storage fault as a failed commit of its
 * own does. Pass the full given to km_spool_tx_begin. 0 or a negative errno. */
int km_spool_tx_end(struct km_spool *sp, bool full, bool commit, const char *what);

/* Loop thread. Whether message id is still queued (pending or in SQLite): not yet
 * acknowledged, expired or set aside. */
bool km_spool_holds(struct km_spool *sp, uint64_t id);

#endif
