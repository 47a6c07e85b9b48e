/* SPDX-License-Identifier: MIT */
/* Spool: an append-only ingest log for per-message durability, SQLite for the backlog. */
#include "spool.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"

/*
 * The durability contract (what is synced when, and why no acknowledged message is lost)
 *
 * The MQTT client acknowledges a QoS 1 PUBLISH once km_spool_push (or, for a read's
 * worth, km_spool_settle) returned 0, so by then the message must survive a kill of the
 * process. A SQLite commit per message costs ~36 us of CPU here (measured), more than the
 * whole per-message budget, so push does one write(2) of a CRC-framed record to an
 * append-only ingest log instead: once write() returns, the bytes are in the kernel's
 * page cache and survive SIGKILL of kuimen.
 *
 * Power loss is the fsync's business. sync = always: push waits until an fdatasync that
 * started after its write has finished; concurrent pushers share one fsync (group commit,
 * leader/follower below). sync = batch: a sync thread fdatasyncs the log every
 * sync_interval, so a power cut loses at most the messages acknowledged in the last
 * interval. A failed write or fdatasync means "not durable": the push fails (no PUBACK;
 * the broker keeps the message), and the storage fault below starts.
 *
 * Pushed messages also sit in memory ("pending") until the loop either sees them
 * delivered (then only an ACK record goes to the log) or moves them into SQLite in one
 * transaction (synchronous=NORMAL: the commit costs no fsync, so after a power cut the
 * WAL may end before it; rows and the meta row applied_id, which says which log records
 * SQLite holds, are in the same transaction and vanish together). A flush whose insert or
 * commit fails is rolled back and its batch goes back to pending: nothing counts as
 * moved until its commit succeeded.
 *
 * A log is emptied only after a "FULL" commit (synchronous=FULL: the WAL is fsynced
 * before the commit returns) that made everything the log holds durable in SQLite. Such
 * a commit always writes the meta row, so it is never empty (SQLite skips the sync of a
 * transaction that changed nothing). After a successful FULL flush of everything pending,
 * the inactive log holds nothing that SQLite does not hold durably: only then is it
 * truncated. Rotation (at ROTATE_BYTES) needs an empty inactive log: it fsyncs the active
 * one, switches, flushes all pending with FULL and then empties the old one.
 *
 * Recovery: every log record with id > applied_id, minus those an ACK record names, is
 * put back into pending. A torn record at a log's tail (CRC or length wrong) ends that
 * log: it was never acknowledged, because push had not returned; the tail is cut off
 * before anything is appended behind it. The recovered records then go to SQLite in a
 * FULL commit before either log is emptied.
 *
 * Storage faults (ENOSPC, EIO, a failed commit): the spool refuses pushes (callers do
 * not acknowledge; the local broker keeps the messages), keeps handing out and
 * deleting what it holds, and every second tries a FULL flush and a synced write to the
 * log; when both succeed the fault is over. The loop never waits for the disk to mend.
 *
 * One process per spool: an exclusive flock on <spool>.lock, taken before anything else
 * is opened. SQLite runs in exclusive locking mode as well.
 *
 * Ids: next id = max(ids seen in SQLite, applied_id, the logs, now in us) + 1; the time
 * floor keeps ids growing even when a damaged spool had to be moved aside.
 */

#define LOG_MAGIC "KMLOG2\0"
#define LOG_HDR 16
#define REC_HDR 8
#define REC_MSG 1
#define REC_ACK 2
#define MSG_FIXED 48          /* fixed part of a MSG record body */
#define ROW_OVERHEAD 48       /* counted per message on top of its strings and payload */
#define ROTATE_BYTES (16u << 20) /* at most; less on a small file system (open) */
#define FLUSH_LIVE 4096       /* pending messages not yet delivered before a flush */
#define FLUSH_AGE_MS 500      /* oldest undelivered pending before a flush */
#define PEND_HARD_CAP 65536   /* past this many, another thread's push is refused (-EAGAIN) */
#define COMMIT_EVERY_MS 50    /* a SQLite write transaction stays open this long at most */
#define SCHEMA_VERSION 2
#define FAULT_PROBE_MS 1000   /* a storage fault is retried this often */
#define FAULT_LOG_MS 10000    /* and repeated in the log at most this often */

struct pend {
        uint64_t id;
        int64_t created, expires;
        int64_t queued; /* CLOCK_MONOTONIC ms: flush age must not follow wall-clock jumps */
        uint8_t dir, prio, qos, flags;
        bool gone;
        uint32_t size;
        char *cls, *topic, *ckey, *origin; /* one allocation, owned; payload follows */
        void *payload;
        size_t len;
        uint64_t oid;
};

enum stmt {
        S_BEGIN, S_COMMIT, S_INSERT, S_DEL_ID, S_DEL_CKEY, S_NEXT, S_HEAD, S_DROP_SEL,
        S_META_GET, S_META_SET, S_OLDEST, S_ROLLBACK, S_COUNT,
};

static const char *const stmt_sql[S_COUNT] = {
        [S_BEGIN] = "BEGIN",
        [S_COMMIT] = "COMMIT",
        [S_INSERT] = "INSERT INTO msg(id,dir,prio,flags,qos,created,expires,size,cls,topic,ckey,payload,origin,oid)"
                     " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [S_DEL_ID] = "DELETE FROM msg WHERE id=? RETURNING dir,prio,size",
        [S_DEL_CKEY] = "DELETE FROM msg WHERE ckey=? AND dir=? AND id<? RETURNING dir,prio,size",
        [S_NEXT] = "SELECT id,created,expires,dir,prio,qos,flags,cls,topic,ckey,payload,origin,oid FROM msg"
                   " WHERE dir=? AND prio=? AND id>? ORDER BY id LIMIT 1",
        [S_HEAD] = "SELECT id,expires FROM msg WHERE dir=? AND prio=? ORDER BY id LIMIT 256",
        [S_DROP_SEL] = "SELECT id FROM msg WHERE dir=? AND prio=? AND flags&1 ORDER BY id LIMIT 256",
        [S_META_GET] = "SELECT v FROM meta WHERE k=?",
        [S_META_SET] = "INSERT INTO meta(k,v) VALUES(?,?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
        [S_OLDEST] = "SELECT created FROM msg WHERE dir=? AND prio=? ORDER BY id LIMIT 1",
        [S_ROLLBACK] = "ROLLBACK",
};

struct km_spool {
        struct km_spool_opts o;
        char *path;
        int lock_fd;
        uint64_t rotate_bytes; /* a log this large rotates */
        uint64_t fs_bytes;     /* the size of the spool's file system */
        int64_t space_logged, limit_logged, drop_logged; /* CLOCK_MONOTONIC ms */
        uint64_t drop_unlogged;
        sqlite3 *db;
        sqlite3_stmt *st[S_COUNT];
        bool in_tx;
        int64_t tx_since; /* CLOCK_MONOTONIC ms the open transaction began */
        uint64_t applied_id;

        /* Everything below up to "loop only" is guarded by mu. */
        pthread_mutex_t mu;
        pthread_cond_t cond;
        pthread_cond_t stage_cond; /* the loop's stage was written (not cond: that one
                                      wakes the sync thread, which would fsync) */
        int log_fd[2];
        char *log_path[2];
        uint64_t log_gen[2];
        int active;
        uint64_t log_bytes;
        uint64_t next_id;
        struct pend *pend;
        size_t npend, cappend, live;
        bool wake_armed;
        uint64_t written_seq, synced_seq;
        bool syncing, stopping;
        uint64_t sync_err_seq; /* the newest record a failed fdatasync covered */
        uint64_t other_bytes;  /* the inactive log's size: it must be empty to rotate */
        /* The storage fault in force: 0, or the negative errno that started it. */
        int fault;
        char fault_why[192];
        int64_t fault_since, fault_logged, fault_probed; /* CLOCK_MONOTONIC ms */
        uint64_t depth_pend[KM_DIR_COUNT][KM_PRIO_COUNT];
        uint64_t bytes;
        struct km_spool_stats c; /* counters; depths are filled in on demand */

        /* Loop only. */
        uint64_t depth_db[KM_DIR_COUNT][KM_PRIO_COUNT];
        uint64_t *dels, *acklog;
        size_t ndels, capdels, nacklog, capacklog;
        struct pend cur; /* what km_spool_next handed out */
        size_t curcap;
        pthread_t sync_thread;
        bool sync_thread_started;
        pthread_t loop_thread;
        bool has_loop_thread;
        /* km_spool_defer_sync: the loop's records wait in stage for km_spool_settle.
         * staging is read by other pushers under mu; stage is the loop's. */
        bool staging;
        uint8_t *stage;
        size_t stage_len, stage_cap;
        uint64_t stage_first; /* id of the first staged record */
};
static int dead_open(struct km_spool *sp); /* dead letters: the section at the end */

void km_spool_set_loop_thread(struct km_spool *sp)
{
        sp->loop_thread = pthread_self();
        sp->has_loop_thread = true;
}

int64_t km_now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Expiry is decided on the clock that stamped the message (see km_spool_opts.now). */
static int64_t spool_now(const struct km_spool *sp)
{
        return sp->o.now ? sp->o.now(sp->o.now_ud) : km_now_ms();
}

/* SQLite's primary result code as an errno: a full disk and an I/O error are storage
 * faults, damage is damage, a lock held elsewhere or a file we may not write is neither. */
static int sql_errno(int code)
{
        switch (code & 0xff) {
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                return -EBADMSG;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_READONLY:
                return -EROFS;
        case SQLITE_PERM:
        case SQLITE_AUTH:
        case SQLITE_CANTOPEN:
                return -EACCES;
        case SQLITE_NOMEM:
                return -ENOMEM;
        default:
                return -EIO;
        }
}

static int sql_fail(struct km_spool *sp, const char *what)
{
        if (!__atomic_load_n(&sp->fault, __ATOMIC_RELAXED))
                KM_LOG(KM_LOG_ERR, "spool", "%s: %s: %s", sp->path, what, sqlite3_errmsg(sp->db));
        return sql_errno(sqlite3_errcode(sp->db));
}

static int grow(void **v, size_t *cap, size_t need, size_t elem)
{
        if (need <= *cap)
                return 0;
        size_t n = *cap ? *cap * 2 : 64;
        while (n < need)
                n *= 2;
        void *p = realloc(*v, n * elem);
        if (!p)
                return -ENOMEM;
        *v = p;
        *cap = n;
        return 0;
}

/* ---- ingest log ------------------------------------------------------------------ */

static int64_t mono_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Starts (or, rate-limited, repeats) the storage fault. Call with mu held. */
static void fault_set_locked(struct km_spool *sp, int err, const char *fmt, ...)
{
        char why[sizeof(sp->fault_why)];
        va_list ap;
        int64_t now = mono_ms();

        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        if (!sp->fault) {
                sp->fault = err < 0 ? err : -EIO;
                snprintf(sp->fault_why, sizeof(sp->fault_why), "%s", why);
                sp->fault_since = sp->fault_probed = now;
                sp->c.storage_faults++;
                /* A disk that another program keeps filling can make faults come and
                 * go: the rate limit holds across them. */
                if (!sp->fault_logged || now - sp->fault_logged >= FAULT_LOG_MS) {
                        sp->fault_logged = now;
                        KM_LOG(KM_LOG_ERR, "spool", "storage: %s: not taking messages until it clears (retried every %d s)",
                               why, FAULT_PROBE_MS / 1000);
                }
        } else if (now - sp->fault_logged >= FAULT_LOG_MS) {
                sp->fault_logged = now;
                KM_LOG(KM_LOG_ERR, "spool", "storage: %s: still not taking messages (for %lld s)", why,
                       (long long)((now - sp->fault_since) / 1000));
        }
}

static void fault_set(struct km_spool *sp, int err, const char *what)
{
        pthread_mutex_lock(&sp->mu);
        fault_set_locked(sp, err, "%s: %s", what, strerror(-err));
        pthread_mutex_unlock(&sp->mu);
}

static uint32_t msg_size(const struct km_msg *m)
{
        return (uint32_t)(strlen(m->topic) + (m->ckey ? strlen(m->ckey) : 0) + (m->origin ? strlen(m->origin) : 0) +
                          m->len + ROW_OVERHEAD);
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Record: u32 body length, u32 crc32(body), body. MSG body: type, dir, prio, qos, flags,
 * cls_len (u8), topic_len (u16), ckey_len (u16), origin_len (u16), payload_len (u32),
 * id, created, expires, oid (u64 each), then cls, topic, ckey, origin, payload. Host
 * byte order: a log never leaves the box that wrote it. */
static size_t encode_msg(uint8_t *b, const struct km_msg *m, size_t cl, size_t tl, size_t kl, size_t ol)
{
        uint8_t *p = b + REC_HDR;
        p[0] = REC_MSG;
        p[1] = m->dir;
        p[2] = m->prio;
        p[3] = m->qos;
        p[4] = m->flags;
        p[5] = (uint8_t)cl;
        put16(p + 6, (uint16_t)tl);
        put16(p + 8, (uint16_t)kl);
        put16(p + 10, (uint16_t)ol);
        put32(p + 12, (uint32_t)m->len);
        put64(p + 16, m->id);
        put64(p + 24, (uint64_t)m->created_ms);
        put64(p + 32, (uint64_t)m->expires_ms);
        put64(p + 40, m->oid);
        p += MSG_FIXED;
        memcpy(p, m->cls, cl), p += cl;
        memcpy(p, m->topic, tl), p += tl;
        if (kl)
                memcpy(p, m->ckey, kl), p += kl;
        if (ol)
                memcpy(p, m->origin, ol), p += ol;
        if (m->len)
                memcpy(p, m->payload, m->len), p += m->len;
        size_t body = (size_t)(p - b) - REC_HDR;
        put32(b, (uint32_t)body);
        put32(b + 4, (uint32_t)crc32(0, b + REC_HDR, (uInt)body));
        return (size_t)(p - b);
}

static int write_all(int fd, const void *buf, size_t n)
{
        const uint8_t *p = buf;
        while (n) {
                ssize_t w = write(fd, p, n);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += w;
                n -= (size_t)w;
        }
        return 0;
}

/* Empties log i and gives it a header of generation gen (mu held, or before any other
 * thread runs). If the power goes after the ftruncate and before the header is on disk,
 * the log reads as empty (generation 0): the caller empties a log only when SQLite holds
 * everything it held durably, so nothing is lost either way. */
static int log_reset(struct km_spool *sp, int i, uint64_t gen)
{
        uint8_t hdr[LOG_HDR];

        memcpy(hdr, LOG_MAGIC, 8);
        put64(hdr + 8, gen);
        if (ftruncate(sp->log_fd[i], 0) < 0)
                return -errno;
        sp->log_gen[i] = gen;
        if (i == sp->active)
                sp->log_bytes = 0;
        int rc = write_all(sp->log_fd[i], hdr, sizeof(hdr));
        if (rc == 0 && i == sp->active)
                sp->log_bytes = LOG_HDR;
        return rc;
}

/* Reserves the blocks log i will grow into up to its rotation size, without changing
 * its size (so appends and recovery see no difference): a full disk then shows at the
 * reservation, not in the middle of a read being settled. -EOPNOTSUPP where the file
 * system cannot. */
static int log_reserve(struct km_spool *sp, int i)
{
        if (fallocate(sp->log_fd[i], FALLOC_FL_KEEP_SIZE, 0, (off_t)sp->rotate_bytes) == 0)
                return 0;
        return errno == ENOSYS ? -EOPNOTSUPP : -errno;
}

/* Appends n bytes to the active log with one write(2) (mu held). A log emptied earlier
 * gets its header first. A short write is cut off again, so that recovery does not stop
 * at a torn record in front of later, acknowledged ones; if even that fails, the log
 * may not be appended to any more: a storage fault, mended by emptying it once SQLite
 * holds everything. */
static int log_append_locked(struct km_spool *sp, const void *buf, size_t n)
{
        int fd = sp->log_fd[sp->active];
        int rc = 0;

        if (sp->fault)
                return sp->fault;
        if (sp->log_bytes < LOG_HDR) {
                rc = log_reset(sp, sp->active, sp->log_gen[sp->active] ? sp->log_gen[sp->active] : 1);
                if (rc < 0) {
                        fault_set_locked(sp, rc, "writing the header of %s: %s", sp->log_path[sp->active], strerror(-rc));
                        return rc;
                }
        }
        rc = write_all(fd, buf, n);
        if (rc < 0) {
                /* O_APPEND: the next write goes to the end, wherever the cut left it. */
                if (ftruncate(fd, (off_t)sp->log_bytes) < 0)
                        fault_set_locked(sp, -errno, "cutting a torn record off %s: %s", sp->log_path[sp->active],
                                         strerror(errno));
                fault_set_locked(sp, rc, "writing %zu bytes to %s: %s", n, sp->log_path[sp->active], strerror(-rc));
                return rc;
        }
        sp->log_bytes += n;
        return 0;
}

/* Group commit: waits until an fdatasync that began after record seq was written has
 * finished. The first waiter syncs for everyone queued behind it. Call with mu held.
 * Returns 0, or -EIO when the fdatasync that covered seq failed: after a failed
 * fdatasync Linux may have dropped the dirty pages, so those records are not durable
 * (a second fdatasync would succeed and prove nothing). */
static int wait_synced_locked(struct km_spool *sp, uint64_t seq)
{
        while (sp->synced_seq < seq) {
                if (sp->sync_err_seq >= seq)
                        return -EIO;
                if (sp->syncing) {
                        pthread_cond_wait(&sp->cond, &sp->mu);
                        continue;
                }
                sp->syncing = true;
                uint64_t target = sp->written_seq;
                int fd = sp->log_fd[sp->active];
                pthread_mutex_unlock(&sp->mu);
                int rc = fdatasync(fd), e = errno;
                pthread_mutex_lock(&sp->mu);
                if (rc < 0) {
                        if (target > sp->sync_err_seq)
                                sp->sync_err_seq = target;
                        fault_set_locked(sp, -e, "fdatasync of the ingest log: %s", strerror(e));
                } else if (target > sp->synced_seq) {
                        sp->synced_seq = target;
                }
                sp->syncing = false;
                sp->c.fsyncs++;
                pthread_cond_broadcast(&sp->cond);
        }
        return 0;
}

static void *sync_main(void *arg)
{
        struct km_spool *sp = arg;
        struct timespec until;

        pthread_mutex_lock(&sp->mu);
        while (!sp->stopping) {
                clock_gettime(CLOCK_REALTIME, &until);
                int64_t ns = until.tv_nsec + sp->o.sync_interval_ms * 1000000;
                until.tv_sec += ns / 1000000000;
                until.tv_nsec = ns % 1000000000;
                pthread_cond_timedwait(&sp->cond, &sp->mu, &until);
                if (sp->written_seq > sp->synced_seq && sp->written_seq > sp->sync_err_seq)
                        (void)wait_synced_locked(sp, sp->written_seq); /* a failure is the fault's */
        }
        pthread_mutex_unlock(&sp->mu);
        return NULL;
}

/* ---- pending --------------------------------------------------------------------- */

/* Index of the first pending entry with id > after. Ids are increasing. */
static size_t pend_after(const struct km_spool *sp, uint64_t after)
{
        size_t lo = 0, hi = sp->npend;
        while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (sp->pend[mid].id <= after)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

static void pend_forget(struct km_spool *sp, struct pend *p)
{
        p->gone = true;
        sp->live--;
        sp->depth_pend[p->dir][p->prio]--;
        sp->bytes -= p->size;
}

static size_t pend_need(const struct km_msg *m, size_t cl, size_t tl, size_t kl, size_t ol)
{
        return cl + tl + kl + ol + 4 + m->len + 1;
}

/* Fills the next pending entry from m into b (pend_need bytes, taken over). The caller
 * grew sp->pend first (mu held throughout), so this cannot fail: memory is found before
 * the record is written, never after. */
static void pend_add(struct km_spool *sp, const struct km_msg *m, char *b, size_t cl, size_t tl, size_t kl, size_t ol)
{
        struct pend *p = &sp->pend[sp->npend];
        p->id = m->id;
        p->created = m->created_ms;
        p->expires = m->expires_ms;
        p->queued = mono_ms();
        p->dir = m->dir;
        p->prio = m->prio;
        p->qos = m->qos;
        p->flags = m->flags;
        p->gone = false;
        p->size = msg_size(m);
        p->cls = b;
        memcpy(b, m->cls, cl), b[cl] = 0, b += cl + 1;
        p->topic = b;
        memcpy(b, m->topic, tl), b[tl] = 0, b += tl + 1;
        p->ckey = b;
        if (kl)
                memcpy(b, m->ckey, kl);
        b[kl] = 0, b += kl + 1;
        p->origin = b;
        if (ol)
                memcpy(b, m->origin, ol);
        b[ol] = 0, b += ol + 1;
        p->oid = m->oid;
        p->payload = b;
        if (m->len)
                memcpy(b, m->payload, m->len);
        p->len = m->len;
        sp->npend++;
        sp->live++;
        sp->depth_pend[p->dir][p->prio]++;
        sp->bytes += p->size;
}

/* Forgets the pending messages with ids first..last (mu held): their records did not
 * become durable, so their senders get no acknowledgement and send them again; the
 * copies in memory must not be forwarded as well. */
static void pend_forget_range(struct km_spool *sp, uint64_t first, uint64_t last)
{
        for (size_t i = pend_after(sp, first - 1); i < sp->npend && sp->pend[i].id <= last; i++)
                if (!sp->pend[i].gone)
                        pend_forget(sp, &sp->pend[i]);
}

/* A newer message with the same key replaces undelivered older ones in memory; older
 * ones already in SQLite are replaced when this one is flushed there. */
static void pend_coalesce(struct km_spool *sp, const struct km_msg *m)
{
        for (size_t i = sp->npend; i-- > 0;) {
                struct pend *p = &sp->pend[i];
                if (!p->gone && p->dir == m->dir && strcmp(p->ckey, m->ckey) == 0) {
                        pend_forget(sp, p);
                        sp->c.coalesced++;
                }
        }
}

/* Writes what the loop staged (mu held), with one write(2). On failure the staged
 * messages are forgotten: they are not durable, their PUBACKs are withheld and the
 * broker sends them again, so the in-memory copies must not be forwarded as well (they
 * would arrive twice for every retry). Nothing hands them out between push and settle:
 * the scheduler does not run inside the read. */
static int stage_write_locked(struct km_spool *sp, uint64_t *seq)
{
        if (!sp->stage_len)
                return 0;
        int rc = log_append_locked(sp, sp->stage, sp->stage_len);
        if (rc < 0) {
                pend_forget_range(sp, sp->stage_first, UINT64_MAX);
        } else {
                uint64_t s = ++sp->written_seq;
                if (seq)
                        *seq = s;
        }
        sp->stage_len = 0;
        return rc;
}

int km_spool_push(struct km_spool *sp, struct km_msg *m)
{
        size_t cl = strlen(m->cls), tl = strlen(m->topic), kl = m->ckey ? strlen(m->ckey) : 0;
        size_t ol = m->origin ? strlen(m->origin) : 0;
        size_t need = REC_HDR + MSG_FIXED + cl + tl + kl + ol + m->len;
        uint8_t stackbuf[1024], *rec = stackbuf;
        char *pb = NULL;
        bool wake = false;
        int rc;

        if (cl > 255 || tl > 65535 || kl > 65535 || ol > 255 || m->len > UINT32_MAX / 2)
                return -EMSGSIZE;
        if (need > sizeof(stackbuf) && !(rec = malloc(need)))
                return -ENOMEM;
        if (!(pb = malloc(pend_need(m, cl, tl, kl, ol)))) {
                rc = -ENOMEM;
                goto out;
        }
        pthread_mutex_lock(&sp->mu);
        /* Back-pressure: past the cap another thread is refused rather than made to
         * wait for the loop's flush, which could be waiting for a lock that thread
         * holds (it was Paho's, inside its callback, before the downlink moved to
         * mqttc on the loop; kuimen's own modules push from the loop now); its message
         * is not acknowledged and comes again. The loop itself never waits: the flush
         * it would wait for is its own. */
        bool is_loop = sp->has_loop_thread && pthread_equal(pthread_self(), sp->loop_thread);
        if (sp->npend >= PEND_HARD_CAP && !is_loop) {
                if (!sp->wake_armed) {
                        sp->wake_armed = true;
                        wake = true;
                }
                pthread_mutex_unlock(&sp->mu);
                rc = -EAGAIN;
                goto out;
        }
        /* The log stays in id order (recovery relies on it): while the loop stages a
         * read's records, another thread's push waits for the settle (a read's worth,
         * well under a millisecond). */
        while (sp->staging && !is_loop && !sp->stopping && !sp->fault)
                pthread_cond_wait(&sp->stage_cond, &sp->mu);
        /* A storage fault refuses at once: the caller withholds the acknowledgement and
         * its broker keeps the message until the fault clears. */
        if (sp->fault) {
                rc = sp->fault;
                sp->c.refused_storage++;
                pthread_mutex_unlock(&sp->mu);
                goto out;
        }
        if (grow((void **)&sp->pend, &sp->cappend, sp->npend + 1, sizeof(*sp->pend)) < 0) {
                rc = -ENOMEM;
                pthread_mutex_unlock(&sp->mu);
                goto out;
        }
        m->id = sp->next_id++;
        size_t n = encode_msg(rec, m, cl, tl, kl, ol);
        bool staged = false;
        rc = 0;
        if (is_loop && sp->staging &&
            grow((void **)&sp->stage, &sp->stage_cap, sp->stage_len + n, 1) == 0) {
                if (!sp->stage_len)
                        sp->stage_first = m->id;
                memcpy(sp->stage + sp->stage_len, rec, n);
                sp->stage_len += n;
                staged = true;
        } else if (is_loop && sp->staging) {
                /* No memory to stage: what is staged goes first, so ids stay in order. */
                rc = stage_write_locked(sp, NULL);
        }
        if (!staged && rc == 0)
                rc = log_append_locked(sp, rec, n);
        if (rc < 0) {
                pthread_mutex_unlock(&sp->mu);
                goto out;
        }
        uint64_t seq = 0;
        if (!staged)
                seq = ++sp->written_seq;
        if (kl)
                pend_coalesce(sp, m);
        pend_add(sp, m, pb, cl, tl, kl, ol);
        pb = NULL;
        sp->c.pushed++;
        if (!sp->wake_armed) {
                sp->wake_armed = true;
                wake = true;
        }
        if (sp->o.sync_always && !staged && (rc = wait_synced_locked(sp, seq)) < 0) {
                /* Not durable: not accepted. If it replaced older messages of its
                 * key in memory, those stay replaced: their newer value comes again
                 * from the broker. */
                pend_forget_range(sp, m->id, m->id);
                sp->c.pushed--;
        }
        pthread_mutex_unlock(&sp->mu);
        if (wake)
                sp->o.wake(sp->o.wake_ud);
out:
        if (rc == -EAGAIN && wake)
                sp->o.wake(sp->o.wake_ud);
        free(pb);
        if (rec != stackbuf)
                free(rec);
        return rc;
}

void km_spool_defer_sync(struct km_spool *sp)
{
        if (sp->staging)
                return;
        pthread_mutex_lock(&sp->mu);
        sp->staging = true;
        pthread_mutex_unlock(&sp->mu);
}

int km_spool_settle(struct km_spool *sp)
{
        int rc = 0;
        uint64_t seq = 0;

        if (!sp->staging)
                return 0;
        pthread_mutex_lock(&sp->mu);
        uint64_t first = sp->stage_first, last = sp->next_id - 1; /* others wait: ours are the newest */
        bool any = sp->stage_len > 0;
        rc = stage_write_locked(sp, &seq);
        sp->staging = false;
        pthread_cond_broadcast(&sp->stage_cond);
        if (seq && sp->o.sync_always && (rc = wait_synced_locked(sp, seq)) < 0 && any)
                pend_forget_range(sp, first, last);
        pthread_mutex_unlock(&sp->mu);
        return rc;
}

int km_spool_sync(struct km_spool *sp)
{
        pthread_mutex_lock(&sp->mu);
        int rc = wait_synced_locked(sp, sp->written_seq);
        pthread_mutex_unlock(&sp->mu);
        return rc;
}

/* ---- SQLite ---------------------------------------------------------------------- */

static int exec(struct km_spool *sp, enum stmt s)
{
        int rc = sqlite3_step(sp->st[s]);
        sqlite3_reset(sp->st[s]);
        return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : sql_fail(sp, stmt_sql[s]);
}

static int tx_begin(struct km_spool *sp)
{
        if (sp->in_tx)
                return 0;
        int rc = exec(sp, S_BEGIN);
        sp->in_tx = rc == 0;
        sp->tx_since = mono_ms();
        return rc;
}

/* Ends a transaction that failed: SQLite rolls some back by itself (a full disk, an
 * I/O error), others stay open until told. */
static void tx_abort(struct km_spool *sp)
{
        if (!sqlite3_get_autocommit(sp->db)) {
                sqlite3_step(sp->st[S_ROLLBACK]);
                sqlite3_reset(sp->st[S_ROLLBACK]);
        }
        sp->in_tx = false;
}

static int tx_commit(struct km_spool *sp)
{
        if (!sp->in_tx)
                return 0;
        sp->in_tx = false;
        int rc = exec(sp, S_COMMIT);
        if (rc < 0)
                tx_abort(sp);
        return rc;
}

/* PRAGMA synchronous takes effect when the statement is compiled, not when it is
 * stepped: a prepared copy stepped again changes nothing (the connection stayed at the
 * level prepared last, NORMAL, and no "FULL" commit synced the WAL: the power-cut drill
 * lost thousands of acknowledged messages to it). So it is compiled each time. */
static int set_sync(struct km_spool *sp, const char *level)
{
        char sql[40];
        snprintf(sql, sizeof(sql), "PRAGMA synchronous=%s", level);
        return sqlite3_exec(sp->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : sql_fail(sp, sql);
}

/* Starts a transaction whose commit fsyncs (synchronous=FULL): SQLite takes the level
 * only outside a transaction, so what is open commits first. End with tx_end_full. */
static int tx_begin_full(struct km_spool *sp)
{
        int rc = tx_commit(sp);
        if (rc == 0)
                rc = set_sync(sp, "FULL");
        return rc < 0 ? rc : tx_begin(sp);
}

static int tx_end_full(struct km_spool *sp)
{
        int rc = tx_commit(sp);
        if (set_sync(sp, "NORMAL") < 0)
                KM_LOG(KM_LOG_WARNING, "spool", "%s: back to synchronous=NORMAL failed: commits stay FULL", sp->path);
        return rc;
}

static int64_t meta_get(struct km_spool *sp, const char *k)
{
        sqlite3_stmt *s = sp->st[S_META_GET];
        int64_t v = 0;

        sqlite3_bind_text(s, 1, k, -1, SQLITE_STATIC);
        if (sqlite3_step(s) == SQLITE_ROW)
                v = sqlite3_column_int64(s, 0);
        sqlite3_reset(s);
        return v;
}

static int meta_set(struct km_spool *sp, const char *k, int64_t v)
{
        sqlite3_bind_text(sp->st[S_META_SET], 1, k, -1, SQLITE_STATIC);
        sqlite3_bind_int64(sp->st[S_META_SET], 2, v);
        return exec(sp, S_META_SET);
}

/* Runs a DELETE ... RETURNING dir,prio,size and keeps the accounting; returns rows. */
static int64_t delete_rows(struct km_spool *sp, sqlite3_stmt *s, uint64_t *counter)
{
        int64_t n = 0;
        int rc;

        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
                int dir = sqlite3_column_int(s, 0), prio = sqlite3_column_int(s, 1);
                uint32_t size = (uint32_t)sqlite3_column_int(s, 2);
                sp->depth_db[dir][prio]--;
                pthread_mutex_lock(&sp->mu);
                sp->bytes -= size;
                if (counter)
                        (*counter)++;
                pthread_mutex_unlock(&sp->mu);
                n++;
        }
        sqlite3_reset(s);
        return rc == SQLITE_DONE ? n : sql_fail(sp, "delete");
}

static int delete_id(struct km_spool *sp, uint64_t id, uint64_t *counter)
{
        sqlite3_bind_int64(sp->st[S_DEL_ID], 1, (int64_t)id);
        int64_t n = delete_rows(sp, sp->st[S_DEL_ID], counter);
        return n < 0 ? (int)n : 0;
}

/* Binds a message's 14 columns, msg's order (id .. oid), to parameters 1..14 of s. */
static void bind_pend(sqlite3_stmt *s, const struct pend *p)
{
        sqlite3_bind_int64(s, 1, (int64_t)p->id);
        sqlite3_bind_int(s, 2, p->dir);
        sqlite3_bind_int(s, 3, p->prio);
        sqlite3_bind_int(s, 4, p->flags);
        sqlite3_bind_int(s, 5, p->qos);
        sqlite3_bind_int64(s, 6, p->created);
        sqlite3_bind_int64(s, 7, p->expires);
        sqlite3_bind_int(s, 8, (int)p->size);
        sqlite3_bind_text(s, 9, p->cls, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 10, p->topic, -1, SQLITE_STATIC);
        if (*p->ckey)
                sqlite3_bind_text(s, 11, p->ckey, -1, SQLITE_STATIC);
        else
                sqlite3_bind_null(s, 11);
        sqlite3_bind_blob(s, 12, p->payload, (int)p->len, SQLITE_STATIC);
        if (*p->origin)
                sqlite3_bind_text(s, 13, p->origin, -1, SQLITE_STATIC);
        else
                sqlite3_bind_null(s, 13);
        sqlite3_bind_int64(s, 14, (int64_t)p->oid);
}

static int insert_pend(struct km_spool *sp, const struct pend *p)
{
        sqlite3_stmt *s = sp->st[S_INSERT];

        if (*p->ckey) {
                sqlite3_stmt *d = sp->st[S_DEL_CKEY];
                sqlite3_bind_text(d, 1, p->ckey, -1, SQLITE_STATIC);
                sqlite3_bind_int(d, 2, p->dir);
                sqlite3_bind_int64(d, 3, (int64_t)p->id);
                if (delete_rows(sp, d, &sp->c.coalesced) < 0)
                        return -EIO;
        }
        bind_pend(s, p);
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc == SQLITE_CONSTRAINT) { /* already there: a replay of a record SQLite holds */
                pthread_mutex_lock(&sp->mu);
                sp->bytes -= p->size;
                pthread_mutex_unlock(&sp->mu);
                return 0;
        }
        if (rc != SQLITE_DONE)
                return sql_fail(sp, "insert");
        sp->depth_db[p->dir][p->prio]++;
        return 0;
}

/* What the file system leaves kuimen, SQLite's free pages included (they are reused
 * before the file grows). */
static uint64_t space_free(struct km_spool *sp)
{
        struct statvfs v;
        sqlite3_stmt *s;
        uint64_t n = 0;

        if (statvfs(sp->path, &v) < 0)
                return UINT64_MAX;
        n = (uint64_t)v.f_bavail * v.f_frsize;
        if (sqlite3_prepare_v2(sp->db, "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
                               -1, &s, NULL) == SQLITE_OK) {
                if (sqlite3_step(s) == SQLITE_ROW)
                        n += (uint64_t)sqlite3_column_int64(s, 0);
                sqlite3_finalize(s);
        }
        return n;
}

/* The bound the space policy keeps to: spool_max_mb, or less when the file system is
 * nearly full, so that drops (oldest of the lowest droppable class first) make room
 * before the disk is full rather than a storage fault after. The reserve is what the
 * spool needs to go on working: both ingest logs at their rotation size and room for
 * the WAL. */
static uint64_t space_limit(struct km_spool *sp)
{
        uint64_t limit = (uint64_t)sp->o.max_bytes;
        uint64_t wal = sp->fs_bytes / 16 < (4u << 20) ? sp->fs_bytes / 16 : (4u << 20);
        uint64_t reserve = 2 * sp->rotate_bytes + wal, avail = space_free(sp);

        if (avail >= reserve)
                return limit;
        uint64_t deficit = reserve - avail, cap = sp->bytes > deficit ? sp->bytes - deficit : 0;
        if (cap >= limit)
                return limit;
        int64_t now = mono_ms();
        if (!sp->space_logged || now - sp->space_logged >= 60000) {
                sp->space_logged = now;
                KM_LOG(KM_LOG_WARNING, "spool",
                       "the file system of %s is nearly full (%llu bytes free, %llu kept in reserve): the spool keeps to %llu bytes",
                       sp->path, (unsigned long long)avail, (unsigned long long)reserve, (unsigned long long)cap);
        }
        return cap;
}

/* Drops the oldest droppable messages of the lowest class until the spool fits. */
static int enforce_limit(struct km_spool *sp)
{
        uint64_t limit = space_limit(sp);
        int rc;

        for (int prio = KM_PRIO_COUNT - 1; prio >= 0 && sp->bytes > limit; prio--) {
                for (int dir = 0; dir < KM_DIR_COUNT && sp->bytes > limit; dir++) {
                        while (sp->depth_db[dir][prio] && sp->bytes > limit) {
                                sqlite3_stmt *s = sp->st[S_DROP_SEL];
                                uint64_t ids[256];
                                size_t n = 0;
                                sqlite3_bind_int(s, 1, dir);
                                sqlite3_bind_int(s, 2, prio);
                                while (n < 256 && sqlite3_step(s) == SQLITE_ROW)
                                        ids[n++] = (uint64_t)sqlite3_column_int64(s, 0);
                                sqlite3_reset(s);
                                if (!n)
                                        break;
                                uint64_t before = sp->c.dropped;
                                for (size_t i = 0; i < n && sp->bytes > limit; i++)
                                        if ((rc = delete_id(sp, ids[i], &sp->c.dropped)) < 0)
                                                return rc;
                                /* Said at most every 10 s, with what went since. */
                                sp->drop_unlogged += sp->c.dropped - before;
                                int64_t now = mono_ms();
                                if (!sp->drop_logged || now - sp->drop_logged >= 10000) {
                                        sp->drop_logged = now;
                                        KM_LOG(KM_LOG_WARNING, "spool",
                                               "spool full (%llu of %llu bytes): dropped %llu oldest messages, down to priority %d",
                                               (unsigned long long)sp->bytes, (unsigned long long)limit,
                                               (unsigned long long)sp->drop_unlogged, prio);
                                        sp->drop_unlogged = 0;
                                }
                        }
                }
        }
        if (sp->bytes > limit) {
                /* Only never-drop classes (alert, command) are left: keep them. */
                sp->c.over_limit++;
                int64_t now = mono_ms();
                if (!sp->limit_logged || now - sp->limit_logged >= 10000) {
                        sp->limit_logged = now;
                        KM_LOG(KM_LOG_ERR, "spool",
                               "spool over its limit with messages that are never dropped (%llu of %llu bytes)",
                               (unsigned long long)sp->bytes, (unsigned long long)limit);
                }
        }
        return 0;
}

/* Depths and bytes from what SQLite holds and what is pending, after a rollback undid
 * inserts and deletes whose accounting had already moved. */
static void recount(struct km_spool *sp)
{
        uint64_t depth[KM_DIR_COUNT][KM_PRIO_COUNT] = { { 0 } }, bytes = 0;
        sqlite3_stmt *s;

        if (sqlite3_prepare_v2(sp->db, "SELECT dir, prio, count(*), sum(size) FROM msg GROUP BY dir, prio", -1, &s,
                               NULL) != SQLITE_OK)
                return;
        while (sqlite3_step(s) == SQLITE_ROW) {
                int d = sqlite3_column_int(s, 0), p = sqlite3_column_int(s, 1);
                if (d >= 0 && d < KM_DIR_COUNT && p >= 0 && p < KM_PRIO_COUNT) {
                        depth[d][p] = (uint64_t)sqlite3_column_int64(s, 2);
                        bytes += (uint64_t)sqlite3_column_int64(s, 3);
                }
        }
        sqlite3_finalize(s);
        memcpy(sp->depth_db, depth, sizeof(depth));
        pthread_mutex_lock(&sp->mu);
        for (size_t i = 0; i < sp->npend; i++)
                if (!sp->pend[i].gone)
                        bytes += sp->pend[i].size;
        sp->bytes = bytes;
        pthread_mutex_unlock(&sp->mu);
}

/* Puts a batch whose flush was rolled back in front of what was pushed meanwhile (its
 * ids are all lower). */
static void pend_restore(struct km_spool *sp, struct pend *batch, size_t n)
{
        size_t keep = 0;

        for (size_t i = 0; i < n; i++) {
                if (batch[i].gone)
                        free(batch[i].cls);
                else
                        batch[keep++] = batch[i];
        }
        pthread_mutex_lock(&sp->mu);
        struct pend *v = realloc(batch, (keep + sp->npend + 1) * sizeof(*v));
        if (!v) {
                /* The only copy in this process is gone; the logs still hold every
                 * record (no log is emptied after a failed flush), and a restart
                 * replays them. Going on would forward nothing of them until then. */
                KM_LOG(KM_LOG_ERR, "spool", "out of memory putting %zu messages back after a failed flush: "
                       "stopping so that recovery replays them from the ingest log", keep);
                abort();
        }
        if (sp->npend)
                memcpy(v + keep, sp->pend, sp->npend * sizeof(*v));
        free(sp->pend);
        for (size_t i = 0; i < keep; i++) {
                sp->live++;
                sp->depth_pend[v[i].dir][v[i].prio]++;
        }
        sp->pend = v;
        sp->npend += keep;
        sp->cappend = sp->npend + 1;
        pthread_mutex_unlock(&sp->mu);
}

/* Moves every pending message into SQLite in one transaction. full: the commit fsyncs
 * the WAL and is never empty; then the inactive log holds nothing that SQLite does not
 * hold durably, and it is emptied. rotate: the active log is fsynced and the other,
 * empty one takes over first, so this very flush empties the old one. On failure the
 * transaction is rolled back, the batch goes back to pending, applied_id stays, no log is
 * emptied, and the storage fault begins: nothing is lost. */
static int flush(struct km_spool *sp, bool rotate, bool full)
{
        struct pend *batch;
        size_t n;
        uint64_t applied = sp->applied_id;
        int rc = 0;

        if (rotate && sp->other_bytes) {
                /* The other log still holds records SQLite may lack: empty it first. */
                if ((rc = flush(sp, false, true)) < 0)
                        return rc;
                if (sp->other_bytes)
                        return -EIO;
        }
        pthread_mutex_lock(&sp->mu);
        if (rotate) {
                /* Everything written so far becomes durable now, so the group-commit
                 * bookkeeping stays true across the switch. */
                int old = sp->active;
                uint64_t old_bytes = sp->log_bytes;
                if (fdatasync(sp->log_fd[old]) < 0) {
                        rc = -errno;
                        sp->sync_err_seq = sp->written_seq;
                        fault_set_locked(sp, rc, "fdatasync of %s: %s", sp->log_path[old], strerror(-rc));
                        pthread_mutex_unlock(&sp->mu);
                        return rc;
                }
                sp->synced_seq = sp->written_seq;
                sp->active ^= 1;
                if ((rc = log_reset(sp, sp->active, sp->log_gen[old] + 1)) < 0) {
                        sp->active = old;
                        sp->log_bytes = old_bytes;
                        fault_set_locked(sp, rc, "starting %s: %s", sp->log_path[old ^ 1], strerror(-rc));
                        pthread_mutex_unlock(&sp->mu);
                        return rc;
                }
                sp->other_bytes = old_bytes;
                (void)log_reserve(sp, sp->active); /* best effort: a full disk shows at the next write */
        }
        batch = sp->pend;
        n = sp->npend;
        sp->pend = NULL;
        sp->npend = sp->cappend = sp->live = 0;
        memset(sp->depth_pend, 0, sizeof(sp->depth_pend));
        pthread_cond_broadcast(&sp->cond);
        pthread_mutex_unlock(&sp->mu);

        /* The pending bytes move with their rows: insert adds nothing to sp->bytes. */
        rc = full ? tx_begin_full(sp) : tx_begin(sp);
        for (size_t i = 0; i < n && rc == 0; i++) {
                if (!batch[i].gone)
                        rc = insert_pend(sp, &batch[i]);
                if (batch[i].id > sp->applied_id)
                        sp->applied_id = batch[i].id;
        }
        if (rc == 0 && (n || full))
                rc = meta_set(sp, "applied_id", (int64_t)sp->applied_id);
        if (rc == 0)
                rc = enforce_limit(sp);
        if (rc == 0)
                rc = full ? tx_end_full(sp) : tx_commit(sp);
        if (rc < 0) {
                tx_abort(sp);
                if (full)
                        (void)set_sync(sp, "NORMAL");
                sp->applied_id = applied;
                pend_restore(sp, batch, n);
                recount(sp);
                fault_set(sp, rc, "moving messages into SQLite");
                return rc;
        }
        for (size_t i = 0; i < n; i++)
                free(batch[i].cls);
        free(batch);
        if (full && sp->other_bytes) {
                /* What if the power goes now: the truncation is not on disk yet and the
                 * old log replays records whose ids are at most applied_id (skipped), or
                 * it is, and SQLite holds them: either way nothing is lost. */
                pthread_mutex_lock(&sp->mu);
                if (ftruncate(sp->log_fd[sp->active ^ 1], 0) == 0) {
                        sp->other_bytes = 0;
                } else {
                        rc = -errno;
                        fault_set_locked(sp, rc, "emptying %s: %s", sp->log_path[sp->active ^ 1], strerror(-rc));
                }
                pthread_mutex_unlock(&sp->mu);
        }
        return rc;
}

/* Drops delivered entries from the pending array so scans stay short. Call with mu. */
static void pend_compact(struct km_spool *sp)
{
        size_t w = 0;
        for (size_t r = 0; r < sp->npend; r++) {
                if (sp->pend[r].gone)
                        free(sp->pend[r].cls);
                else
                        sp->pend[w++] = sp->pend[r];
        }
        sp->npend = w;
}

static int write_acks(struct km_spool *sp)
{
        size_t body = 8 + sp->nacklog * 8;
        uint8_t *b = malloc(REC_HDR + body);
        int rc;

        if (!b)
                return -ENOMEM;
        b[REC_HDR] = REC_ACK;
        memset(b + REC_HDR + 1, 0, 3);
        put32(b + REC_HDR + 4, (uint32_t)sp->nacklog);
        memcpy(b + REC_HDR + 8, sp->acklog, sp->nacklog * 8);
        put32(b, (uint32_t)body);
        put32(b + 4, (uint32_t)crc32(0, b + REC_HDR, (uInt)body));
        pthread_mutex_lock(&sp->mu);
        /* Lost (a storage fault) it costs nothing but a second copy after a crash. */
        rc = log_append_locked(sp, b, REC_HDR + body);
        pthread_mutex_unlock(&sp->mu);
        free(b);
        sp->nacklog = 0;
        return rc;
}

/* A storage fault ends when a FULL flush of everything pending and a synced write to a
 * fresh log both succeed. Pushes are refused while it lasts, so after that flush SQLite
 * holds every record of both logs and both may be emptied. Tried every FAULT_PROBE_MS,
 * from the loop, never waiting for anything but this one attempt. */
static void fault_probe(struct km_spool *sp)
{
        int64_t now = mono_ms();

        pthread_mutex_lock(&sp->mu);
        bool due = sp->fault && now - sp->fault_probed >= FAULT_PROBE_MS;
        if (due)
                sp->fault_probed = now;
        pthread_mutex_unlock(&sp->mu);
        if (!due || flush(sp, false, true) < 0)
                return;
        pthread_mutex_lock(&sp->mu);
        int i = sp->active;
        int rc = log_reset(sp, i, sp->log_gen[i] + 1);
        /* Recovered only with room for a whole log: a header fits in the space the
         * reset just freed, and without the reservation the fault would be back with the
         * next read (another program filling the disk takes the rest). */
        if (rc == 0 && (rc = log_reserve(sp, i)) < 0)
                rc = rc == -EOPNOTSUPP ? 0 : rc;
        if (rc == 0 && fdatasync(sp->log_fd[i]) < 0)
                rc = -errno;
        if (rc == 0) {
                sp->synced_seq = sp->written_seq;
                if (now - sp->fault_logged >= FAULT_LOG_MS || now - sp->fault_since >= FAULT_LOG_MS)
                        KM_LOG(KM_LOG_NOTICE, "spool", "storage: recovered after %lld s (%s): taking messages again",
                               (long long)((now - sp->fault_since) / 1000), sp->fault_why);
                sp->fault = 0;
                sp->fault_why[0] = 0;
                pthread_cond_broadcast(&sp->cond);
                pthread_cond_broadcast(&sp->stage_cond);
        } else {
                fault_set_locked(sp, rc, "starting %s afresh: %s", sp->log_path[i], strerror(-rc));
        }
        pthread_mutex_unlock(&sp->mu);
}

/* A statement or commit of the loop's open transaction failed: undo, recount, fault. */
static int tx_failed(struct km_spool *sp, int rc, const char *what)
{
        tx_abort(sp);
        recount(sp);
        fault_set(sp, rc, what);
        return rc;
}

int km_spool_commit(struct km_spool *sp)
{
        bool do_flush, rotate;
        int rc = 0;

        pthread_mutex_lock(&sp->mu);
        sp->wake_armed = false;
        if (sp->npend > 2 * sp->live + 64)
                pend_compact(sp);
        int64_t oldest = 0;
        for (size_t i = 0; i < sp->npend; i++)
                if (!sp->pend[i].gone) {
                        oldest = sp->pend[i].queued;
                        break;
                }
        rotate = sp->log_bytes > sp->rotate_bytes;
        do_flush = rotate || sp->live >= FLUSH_LIVE || sp->npend >= PEND_HARD_CAP / 2 ||
                   (sp->live && mono_ms() - oldest > FLUSH_AGE_MS);
        /* During a storage fault only its probe flushes (once a second), not every turn. */
        bool fault = sp->fault != 0;
        if (fault)
                do_flush = rotate = false;
        pthread_mutex_unlock(&sp->mu);

        if (sp->ndels) {
                rc = tx_begin(sp);
                for (size_t i = 0; i < sp->ndels && rc == 0; i++)
                        rc = delete_id(sp, sp->dels[i], &sp->c.acked);
                sp->ndels = 0;
                if (rc < 0)
                        tx_failed(sp, rc, "deleting delivered messages");
        }
        if (sp->nacklog && !do_flush && rc == 0 && !fault)
                rc = write_acks(sp);
        sp->nacklog = 0;
        if (do_flush && rc == 0)
                rc = flush(sp, rotate, false);
        /* A commit writes every page the transaction touched to the WAL; while a
         * backlog drains, each turn deletes a few dozen acknowledged rows from the same
         * pages, and committing per turn cost more than the deletes (a quarter of the
         * drain's CPU). Nothing depends on these commits being prompt: the ingest log
         * keeps every record until a synchronous=FULL commit at rotation, and a delete
         * lost to a crash only sends its message again (at least once). */
        if (rc == 0 && sp->in_tx && mono_ms() - sp->tx_since >= COMMIT_EVERY_MS && (rc = tx_commit(sp)) < 0)
                tx_failed(sp, rc, "committing deletes");
        if (fault)
                fault_probe(sp);
        return rc;
}

int km_spool_checkpoint(struct km_spool *sp)
{
        int rc = km_spool_commit(sp);
        return rc < 0 ? rc : flush(sp, false, true);
}

bool km_spool_storage_ok(struct km_spool *sp)
{
        pthread_mutex_lock(&sp->mu);
        bool ok = !sp->fault;
        pthread_mutex_unlock(&sp->mu);
        return ok;
}

bool km_spool_dirty(struct km_spool *sp)
{
        pthread_mutex_lock(&sp->mu);
        bool d = sp->live || sp->npend;
        pthread_mutex_unlock(&sp->mu);
        return d || sp->ndels || sp->nacklog || sp->in_tx;
}

int km_spool_ack(struct km_spool *sp, uint64_t id)
{
        pthread_mutex_lock(&sp->mu);
        size_t i = pend_after(sp, id - 1);
        if (i < sp->npend && sp->pend[i].id == id) {
                if (!sp->pend[i].gone) {
                        pend_forget(sp, &sp->pend[i]);
                        sp->c.acked++;
                        pthread_mutex_unlock(&sp->mu);
                        if (grow((void **)&sp->acklog, &sp->capacklog, sp->nacklog + 1, 8) == 0)
                                sp->acklog[sp->nacklog++] = id;
                        return 0;
                }
                pthread_mutex_unlock(&sp->mu);
                return 0;
        }
        pthread_mutex_unlock(&sp->mu);
        if (grow((void **)&sp->dels, &sp->capdels, sp->ndels + 1, 8) < 0)
                return -ENOMEM;
        sp->dels[sp->ndels++] = id;
        return 0;
}

/* Copies a message into sp->cur so it outlives statement resets and pending changes. */
static int set_cur(struct km_spool *sp, const struct pend *p)
{
        size_t cl = strlen(p->cls), tl = strlen(p->topic), kl = strlen(p->ckey), ol = strlen(p->origin);
        size_t need = cl + tl + kl + ol + 4 + p->len + 1;

        if (need > sp->curcap) {
                char *b = realloc(sp->cur.cls, need);
                if (!b)
                        return -ENOMEM;
                sp->cur.cls = b;
                sp->curcap = need;
        }
        char *b = sp->cur.cls;
        struct pend c = *p;
        c.cls = b;
        memcpy(b, p->cls, cl + 1), b += cl + 1;
        c.topic = b;
        memcpy(b, p->topic, tl + 1), b += tl + 1;
        c.ckey = b;
        memcpy(b, p->ckey, kl + 1), b += kl + 1;
        c.origin = b;
        memcpy(b, p->origin, ol + 1), b += ol + 1;
        c.payload = b;
        if (p->len)
                memcpy(b, p->payload, p->len);
        sp->cur = c;
        return 0;
}

static void cur_to_msg(const struct pend *p, struct km_msg *m)
{
        m->id = p->id;
        m->created_ms = p->created;
        m->expires_ms = p->expires;
        m->dir = p->dir;
        m->prio = p->prio;
        m->qos = p->qos;
        m->flags = p->flags;
        m->cls = p->cls;
        m->topic = p->topic;
        m->ckey = p->ckey;
        m->payload = p->payload;
        m->len = p->len;
        m->origin = *p->origin ? p->origin : NULL;
        m->oid = p->oid;
}

static int next_db(struct km_spool *sp, int dir, int prio, uint64_t after, int64_t now)
{
        sqlite3_stmt *s = sp->st[S_NEXT];

        for (;;) {
                sqlite3_bind_int(s, 1, dir);
                sqlite3_bind_int(s, 2, prio);
                sqlite3_bind_int64(s, 3, (int64_t)after);
                int rc = sqlite3_step(s);
                if (rc != SQLITE_ROW) {
                        sqlite3_reset(s);
                        return rc == SQLITE_DONE ? 0 : sql_fail(sp, "next");
                }
                struct pend p = {
                        .id = (uint64_t)sqlite3_column_int64(s, 0),
                        .created = sqlite3_column_int64(s, 1),
                        .expires = sqlite3_column_int64(s, 2),
                        .dir = (uint8_t)sqlite3_column_int(s, 3),
                        .prio = (uint8_t)sqlite3_column_int(s, 4),
                        .qos = (uint8_t)sqlite3_column_int(s, 5),
                        .flags = (uint8_t)sqlite3_column_int(s, 6),
                        .cls = (char *)sqlite3_column_text(s, 7),
                        .topic = (char *)sqlite3_column_text(s, 8),
                        .ckey = (char *)(sqlite3_column_text(s, 9) ? sqlite3_column_text(s, 9) : (const unsigned char *)""),
                        .payload = (void *)sqlite3_column_blob(s, 10),
                        .len = (size_t)sqlite3_column_bytes(s, 10),
                        .origin = (char *)(sqlite3_column_text(s, 11) ? sqlite3_column_text(s, 11) : (const unsigned char *)""),
                        .oid = (uint64_t)sqlite3_column_int64(s, 12),
                };
                if (p.expires && p.expires <= now) {
                        sqlite3_reset(s);
                        int drc = tx_begin(sp);
                        if (drc == 0)
                                drc = delete_id(sp, p.id, &sp->c.expired);
                        if (drc < 0)
                                return tx_failed(sp, drc, "deleting an expired message");
                        after = p.id;
                        continue;
                }
                rc = set_cur(sp, &p);
                sqlite3_reset(s);
                return rc < 0 ? rc : 1;
        }
}

int km_spool_next(struct km_spool *sp, int dir, int prio, uint64_t after, struct km_msg *out)
{
        int64_t now = spool_now(sp);
        int rc;

        if (sp->depth_db[dir][prio]) {
                rc = next_db(sp, dir, prio, after, now);
                if (rc != 0) {
                        if (rc > 0)
                                cur_to_msg(&sp->cur, out);
                        return rc;
                }
        }
        pthread_mutex_lock(&sp->mu);
        rc = 0;
        if (sp->depth_pend[dir][prio]) {
                for (size_t i = pend_after(sp, after); i < sp->npend; i++) {
                        struct pend *p = &sp->pend[i];
                        if (p->gone || p->dir != dir || p->prio != prio)
                                continue;
                        if (p->expires && p->expires <= now) {
                                pend_forget(sp, p);
                                sp->c.expired++;
                                continue;
                        }
                        rc = set_cur(sp, p);
                        rc = rc < 0 ? rc : 1;
                        break;
                }
        }
        pthread_mutex_unlock(&sp->mu);
        if (rc > 0)
                cur_to_msg(&sp->cur, out);
        return rc;
}

int km_spool_expire(struct km_spool *sp, int64_t now)
{
        for (int dir = 0; dir < KM_DIR_COUNT; dir++)
                for (int prio = 0; prio < KM_PRIO_COUNT; prio++) {
                        if (!sp->depth_db[dir][prio])
                                continue;
                        sqlite3_stmt *s = sp->st[S_HEAD];
                        uint64_t ids[256];
                        size_t n = 0;
                        sqlite3_bind_int(s, 1, dir);
                        sqlite3_bind_int(s, 2, prio);
                        while (n < 256 && sqlite3_step(s) == SQLITE_ROW) {
                                int64_t exp = sqlite3_column_int64(s, 1);
                                if (!exp || exp > now)
                                        break;
                                ids[n++] = (uint64_t)sqlite3_column_int64(s, 0);
                        }
                        sqlite3_reset(s);
                        int rc = n ? tx_begin(sp) : 0;
                        for (size_t i = 0; i < n && rc == 0; i++)
                                rc = delete_id(sp, ids[i], &sp->c.expired);
                        if (rc < 0)
                                return tx_failed(sp, rc, "deleting expired messages");
                }
        pthread_mutex_lock(&sp->mu);
        for (size_t i = 0; i < sp->npend; i++) {
                struct pend *p = &sp->pend[i];
                if (!p->gone && p->expires && p->expires <= now) {
                        pend_forget(sp, p);
                        sp->c.expired++;
                }
        }
        pthread_mutex_unlock(&sp->mu);
        int rc = tx_commit(sp);
        return rc < 0 ? tx_failed(sp, rc, "committing expiry") : 0;
}

int km_spool_prios(struct km_spool *sp, int dir, uint8_t prios[KM_PRIO_COUNT])
{
        int n = 0;
        pthread_mutex_lock(&sp->mu);
        for (int p = 0; p < KM_PRIO_COUNT; p++)
                if (sp->depth_db[dir][p] || sp->depth_pend[dir][p])
                        prios[n++] = (uint8_t)p;
        pthread_mutex_unlock(&sp->mu);
        return n;
}

void km_spool_stats(struct km_spool *sp, struct km_spool_stats *st)
{
        pthread_mutex_lock(&sp->mu);
        *st = sp->c;
        st->bytes = sp->bytes;
        st->storage_err = sp->fault;
        snprintf(st->storage_why, sizeof(st->storage_why), "%s", sp->fault_why);
        st->storage_since_ms = sp->fault ? mono_ms() - sp->fault_since : 0;
        for (int d = 0; d < KM_DIR_COUNT; d++) {
                st->depth[d] = 0;
                st->oldest_ms[d] = 0;
                for (int p = 0; p < KM_PRIO_COUNT; p++) {
                        st->depth_prio[d][p] = sp->depth_db[d][p] + sp->depth_pend[d][p];
                        st->depth[d] += st->depth_prio[d][p];
                }
                for (size_t i = 0; i < sp->npend; i++)
                        if (!sp->pend[i].gone && sp->pend[i].dir == d) {
                                st->oldest_ms[d] = sp->pend[i].created;
                                break;
                        }
        }
        pthread_mutex_unlock(&sp->mu);
        /* The oldest in SQLite is older than any pending one; the queue index finds
         * each priority's head without a scan. */
        for (int d = 0; d < KM_DIR_COUNT; d++)
                for (int p = 0; p < KM_PRIO_COUNT; p++) {
                        if (!sp->depth_db[d][p])
                                continue;
                        sqlite3_stmt *s = sp->st[S_OLDEST];
                        sqlite3_bind_int(s, 1, d);
                        sqlite3_bind_int(s, 2, p);
                        if (sqlite3_step(s) == SQLITE_ROW) {
                                int64_t c = sqlite3_column_int64(s, 0);
                                if (!st->oldest_ms[d] || c < st->oldest_ms[d])
                                        st->oldest_ms[d] = c;
                        }
                        sqlite3_reset(s);
                }
}

/* ---- open, recover, close -------------------------------------------------------- */

static const char schema[] =
        "CREATE TABLE IF NOT EXISTS msg(id INTEGER PRIMARY KEY, dir INTEGER NOT NULL,"
        " prio INTEGER NOT NULL, flags INTEGER NOT NULL, qos INTEGER NOT NULL,"
        " created INTEGER NOT NULL, expires INTEGER NOT NULL, size INTEGER NOT NULL,"
        " cls TEXT NOT NULL, topic TEXT NOT NULL, ckey TEXT, payload BLOB NOT NULL,"
        " origin TEXT, oid INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX IF NOT EXISTS msg_queue ON msg(dir, prio, id);"
        "CREATE INDEX IF NOT EXISTS msg_ckey ON msg(ckey) WHERE ckey IS NOT NULL;"
        "CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);";

static void db_close(struct km_spool *sp)
{
        for (int i = 0; i < S_COUNT; i++) {
                sqlite3_finalize(sp->st[i]);
                sp->st[i] = NULL;
        }
        sqlite3_close(sp->db);
        sp->db = NULL;
}

/* Opens and checks the SQLite file; returns 0, -EBADMSG when it is damaged (fails
 * quick_check, is no database, or has an unknown schema), or another negative errno: a
 * file kuimen may not write, an I/O error or a lock held elsewhere is not damage, and
 * moving it aside would hide its messages from the next start. */
static int db_open(struct km_spool *sp)
{
        sqlite3_stmt *s = NULL;
        int rc, ver = -1;
        char *ck = NULL;

        rc = sqlite3_open_v2(sp->path, &sp->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc != SQLITE_OK)
                return sql_fail(sp, "open");
        sqlite3_extended_result_codes(sp->db, 0);
        sqlite3_busy_timeout(sp->db, 1000);
        /* Exclusive before WAL: the WAL index lives in our heap instead of a shared
         * -shm file, and no transaction takes or drops file locks (two fcntl calls per
         * statement outside a transaction, which the drain runs per message). Only this
         * process uses the spool: the flock in km_spool_open says so. */
        if (sqlite3_exec(sp->db, "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                         " PRAGMA journal_size_limit=4194304;",
                         NULL, NULL, NULL) != SQLITE_OK)
                return sql_fail(sp, "setting WAL mode");
        if (sqlite3_prepare_v2(sp->db, "PRAGMA quick_check", -1, &s, NULL) != SQLITE_OK)
                return sql_fail(sp, "quick_check");
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW)
                ck = strdup((const char *)sqlite3_column_text(s, 0));
        else
                rc = sql_fail(sp, "quick_check");
        sqlite3_finalize(s);
        if (rc < 0)
                return rc;
        if (!ck || strcmp(ck, "ok") != 0) {
                KM_LOG(KM_LOG_ERR, "spool", "%s: quick_check: %s", sp->path, ck ? ck : "no answer");
                free(ck);
                return -EBADMSG;
        }
        free(ck);
        if (sqlite3_prepare_v2(sp->db, "PRAGMA user_version", -1, &s, NULL) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW)
                ver = sqlite3_column_int(s, 0);
        sqlite3_finalize(s);
        if (ver != 0 && ver != 1 && ver != SCHEMA_VERSION) {
                KM_LOG(KM_LOG_ERR, "spool", "%s: unknown schema version %d", sp->path, ver);
                return -EBADMSG;
        }
        /* 1 -> 2: relayed messages keep their origin node and id. */
        if (ver == 1 && sqlite3_exec(sp->db, "ALTER TABLE msg ADD COLUMN origin TEXT;"
                                             "ALTER TABLE msg ADD COLUMN oid INTEGER NOT NULL DEFAULT 0;",
                                     NULL, NULL, NULL) != SQLITE_OK)
                return sql_fail(sp, "schema 1 to 2");
        if (sqlite3_exec(sp->db, schema, NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(sp->db, "PRAGMA user_version=2", NULL, NULL, NULL) != SQLITE_OK)
                return sql_fail(sp, "schema");
        for (int i = 0; i < S_COUNT; i++)
                if (sqlite3_prepare_v3(sp->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &sp->st[i], NULL) != SQLITE_OK)
                        return sql_fail(sp, stmt_sql[i]);
        return 0;
}

int km_fsync_dir(const char *path)
{
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
                slash[1] = 0;
        else if (slash)
                *slash = 0;
        else
                snprintf(dir, sizeof(dir), ".");
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        int rc = fsync(fd) < 0 ? -errno : 0;
        close(fd);
        return rc;
}

/* Renames the damaged file (and its WAL) to <spool>.damaged-<UTC time>; the name it
 * got goes to aside. Fails, and nothing starts over it, when the rename fails. */
static int move_aside(struct km_spool *sp, char *aside, size_t len)
{
        static const char *const sfx[] = { "", "-wal", "-shm" };
        time_t t = time(NULL);
        struct tm tm;

        gmtime_r(&t, &tm);
        snprintf(aside, len, "%s.damaged-%04d%02d%02dT%02d%02d%02d", sp->path, tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        for (int i = 0; i < 3; i++) {
                char from[PATH_MAX], to[PATH_MAX + 8];
                snprintf(from, sizeof(from), "%s%s", sp->path, sfx[i]);
                snprintf(to, sizeof(to), "%s%s", aside, sfx[i]);
                if (rename(from, to) < 0 && (errno != ENOENT || i == 0)) {
                        int e = errno;
                        KM_LOG(KM_LOG_ERR, "spool", "%s is damaged and cannot be moved aside to %s: %s; not starting over it",
                               from, to, strerror(e));
                        return -e;
                }
        }
        /* What if the power goes now: the rename is lost and the damaged file is found
         * again at the next start; the fsync makes the new name stick before a fresh
         * spool.db takes the old one. */
        (void)km_fsync_dir(sp->path);
        sp->c.moved_aside++;
        return 0;
}

/* Copies one table of a damaged file (not msg or meta: calls, call_rcpt, incidents, set-
 * aside messages: whatever other modules keep here) into the fresh one, made from the old
 * file's own CREATE statement: forward by rowid, then backward to get past a bad page,
 * as the messages are. Inside the caller's transaction. Returns the rows imported. */
static long import_table(struct km_spool *sp, sqlite3 *old, const char *name, const char *create)
{
        char q[2][200], *ins_sql = NULL;
        sqlite3_stmt *s = NULL, *ins = NULL;
        long n = 0;
        int64_t last = 0;
        int ncol = 0;

        if (sqlite3_exec(sp->db, create, NULL, NULL, NULL) != SQLITE_OK) {
                /* made already (a module's CREATE ran first): the rows go in all the same */
                if (!strstr(sqlite3_errmsg(sp->db), "already exists"))
                        return 0;
        }
        snprintf(q[0], sizeof(q[0]), "SELECT rowid,* FROM \"%s\" WHERE rowid>? ORDER BY rowid", name);
        snprintf(q[1], sizeof(q[1]), "SELECT rowid,* FROM \"%s\" WHERE rowid>? ORDER BY rowid DESC", name);
        for (int pass = 0; pass < 2; pass++) {
                if (sqlite3_prepare_v2(old, q[pass], -1, &s, NULL) != SQLITE_OK)
                        break;
                sqlite3_bind_int64(s, 1, pass ? last : 0);
                if (!ins) {
                        ncol = sqlite3_column_count(s) - 1;
                        size_t len = strlen(name) + 64 + 2 * (size_t)ncol;
                        if (ncol < 1 || !(ins_sql = malloc(len))) {
                                sqlite3_finalize(s);
                                break;
                        }
                        int k = snprintf(ins_sql, len, "INSERT OR IGNORE INTO \"%s\" VALUES(?", name);
                        for (int c = 1; c < ncol; c++)
                                k += snprintf(ins_sql + k, len - (size_t)k, ",?");
                        snprintf(ins_sql + k, len - (size_t)k, ")");
                        if (sqlite3_prepare_v2(sp->db, ins_sql, -1, &ins, NULL) != SQLITE_OK) {
                                sqlite3_finalize(s);
                                break;
                        }
                }
                while (sqlite3_step(s) == SQLITE_ROW) {
                        if (!pass)
                                last = sqlite3_column_int64(s, 0);
                        for (int c = 0; c < ncol; c++)
                                sqlite3_bind_value(ins, c + 1, sqlite3_column_value(s, c + 1));
                        if (sqlite3_step(ins) == SQLITE_DONE && sqlite3_changes(sp->db) > 0)
                                n++;
                        sqlite3_reset(ins);
                }
                sqlite3_finalize(s);
        }
        sqlite3_finalize(ins);
        free(ins_sql);
        return n;
}

/* The other modules' tables of a damaged file (import_table); their names into names
 * (comma-separated, for the log). Returns the rows imported. */
static long import_tables(struct km_spool *sp, sqlite3 *old, char *names, size_t len)
{
        sqlite3_stmt *s = NULL;
        long n = 0;
        size_t k = 0;
        names[0] = '\0';
        if (sqlite3_prepare_v2(old, "SELECT name,sql FROM sqlite_master WHERE type='table' AND sql IS NOT NULL"
                                    " AND name NOT IN ('msg','meta') AND name NOT LIKE 'sqlite_%'", -1, &s, NULL) != SQLITE_OK)
                return 0;
        while (sqlite3_step(s) == SQLITE_ROW) {
                const char *name = (const char *)sqlite3_column_text(s, 0), *create = (const char *)sqlite3_column_text(s, 1);
                if (!name || !create || strchr(name, '"'))
                        continue;
                long r = import_table(sp, old, name, create);
                n += r;
                if (k < len)
                        k += (size_t)snprintf(names + k, len - k, "%s%s %ld", k ? ", " : "", name, r);
        }
        sqlite3_finalize(s);
        return n;
}

/* Reads the rows still readable in a damaged spool file into the fresh one (same ids):
 * forward from the start, and backward from the end, to get past one bad page. Returns
 * how many were imported; *readable says how many rows the file claims (-1: unknown). */
static long import_aside(struct km_spool *sp, const char *aside, long *readable, long *others, char *names,
                         size_t nlen)
{
        static const char *const q[2] = {
                "SELECT id,dir,prio,flags,qos,created,expires,size,cls,topic,ckey,payload,origin,oid FROM msg"
                " WHERE id>? ORDER BY id",
                "SELECT id,dir,prio,flags,qos,created,expires,size,cls,topic,ckey,payload,origin,oid FROM msg"
                " WHERE id>? ORDER BY id DESC",
        };
        sqlite3 *old = NULL;
        sqlite3_stmt *s = NULL;
        long n = 0;
        int64_t last = 0;

        *readable = -1;
        *others = 0;
        names[0] = '\0';
        if (sqlite3_open_v2(aside, &old, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
                sqlite3_close(old);
                return 0;
        }
        /* A file cut short is refused whole unless the schema is taken as it is (the
         * connection is read-only: nothing is written through it). */
        (void)sqlite3_exec(old, "PRAGMA writable_schema=ON", NULL, NULL, NULL);
        if (sqlite3_prepare_v2(old, "SELECT count(*) FROM msg", -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
                *readable = (long)sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
        if (tx_begin(sp) < 0) {
                sqlite3_close(old);
                return 0;
        }
        for (int pass = 0; pass < 2; pass++) {
                if (sqlite3_prepare_v2(old, q[pass], -1, &s, NULL) != SQLITE_OK)
                        break;
                sqlite3_bind_int64(s, 1, pass ? last : 0);
                while (sqlite3_step(s) == SQLITE_ROW) {
                        int64_t id = sqlite3_column_int64(s, 0);
                        if (!pass)
                                last = id;
                        sqlite3_stmt *ins = sp->st[S_INSERT];
                        for (int c = 0; c < 14; c++)
                                sqlite3_bind_value(ins, c + 1, sqlite3_column_value(s, c));
                        if (sqlite3_step(ins) == SQLITE_DONE)
                                n++;
                        sqlite3_reset(ins);
                }
                sqlite3_finalize(s);
        }
        if (sqlite3_prepare_v2(old, "SELECT v FROM meta WHERE k='applied_id'", -1, &s, NULL) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW)
                meta_set(sp, "applied_id", sqlite3_column_int64(s, 0));
        sqlite3_finalize(s);
        *others = import_tables(sp, old, names, nlen);
        sqlite3_close(old);
        if (tx_commit(sp) < 0)
                *others = 0, n = 0;
        return n;
}

/* Refuses a spool file or directory kuimen may not write, naming it, before SQLite
 * opens it read-only behind our back or a log cannot be created. */
static int check_writable(const char *path)
{
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir)
                *slash = 0;
        else
                snprintf(dir, sizeof(dir), "%s", slash ? "/" : ".");
        const char *bad = NULL;
        if (access(dir, W_OK | X_OK) < 0)
                bad = dir;
        else if (access(path, R_OK | W_OK) < 0 && errno != ENOENT)
                bad = path;
        if (!bad)
                return 0;
        int e = errno;
        KM_LOG(KM_LOG_ERR, "spool", "%s is not writable by uid %u: %s", bad, (unsigned)geteuid(), strerror(e));
        return -e;
}

int km_spool_foreign(const char *path, char *why, size_t len)
{
        static const char magic[16] = "SQLite format 3";
        char head[sizeof(magic)], lp[PATH_MAX];
        struct stat st;

        if (stat(path, &st) < 0)
                return errno == ENOENT ? 0 : (snprintf(why, len, "%s", strerror(errno)), -errno);
        if (!S_ISREG(st.st_mode)) {
                snprintf(why, len, "not a regular file");
                return -ENOTSUP;
        }
        if (st.st_size == 0)
                return 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                int e = errno;
                snprintf(why, len, "%s", strerror(e));
                return -e;
        }
        ssize_t n = pread(fd, head, sizeof(head), 0);
        close(fd);
        if (n == (ssize_t)sizeof(head) && memcmp(head, magic, sizeof(magic)) == 0)
                return 0;
        snprintf(lp, sizeof(lp), "%s.lock", path);
        if (access(lp, F_OK) == 0)
                return 0;
        snprintf(why, len, "not a Kuimen spool (no SQLite header, no %s beside it); kuimen will not touch it", lp);
        return -ENOTSUP;
}

/* One kuimen per spool: an exclusive flock on <spool>.lock holding the owner's pid. The
 * lock goes with the process (a kill -9 too); the file stays. */
static int lock_spool(struct km_spool *sp)
{
        char lp[PATH_MAX], buf[32];

        snprintf(lp, sizeof(lp), "%s.lock", sp->path);
        sp->lock_fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (sp->lock_fd < 0) {
                int e = errno;
                KM_LOG(KM_LOG_ERR, "spool", "cannot open %s: %s", lp, strerror(e));
                return -e;
        }
        if (flock(sp->lock_fd, LOCK_EX | LOCK_NB) < 0) {
                int e = errno;
                ssize_t n = pread(sp->lock_fd, buf, sizeof(buf) - 1, 0);
                buf[n > 0 ? n : 0] = 0;
                if (e == EWOULDBLOCK)
                        KM_LOG(KM_LOG_ERR, "spool", "spool %s is in use by pid %ld", sp->path, strtol(buf, NULL, 10));
                else
                        KM_LOG(KM_LOG_ERR, "spool", "cannot lock %s: %s", lp, strerror(e));
                return e == EWOULDBLOCK ? -EBUSY : -e;
        }
        int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
        if (ftruncate(sp->lock_fd, 0) < 0 || pwrite(sp->lock_fd, buf, (size_t)n, 0) != n)
                KM_LOG(KM_LOG_WARNING, "spool", "cannot write the pid into %s: %s", lp, strerror(errno));
        return 0;
}

/* Reads one log into pending (records with id > applied_id); ACK records cancel.
 * Returns 0, or -ENOMEM (nothing may be emptied then). */
static int replay_log(struct km_spool *sp, int i, uint64_t *max_id)
{
        struct stat stt;
        uint8_t *buf = NULL;
        size_t off = LOG_HDR, good = LOG_HDR;

        if (fstat(sp->log_fd[i], &stt) < 0 || stt.st_size <= LOG_HDR)
                return 0;
        buf = malloc((size_t)stt.st_size);
        if (!buf || pread(sp->log_fd[i], buf, (size_t)stt.st_size, 0) != stt.st_size) {
                int e = buf ? errno ? -errno : -EIO : -ENOMEM;
                KM_LOG(KM_LOG_ERR, "spool", "cannot read %s: %s", sp->log_path[i], strerror(-e));
                free(buf);
                return e;
        }
        size_t size = (size_t)stt.st_size;
        while (off + REC_HDR <= size) {
                uint32_t len = get32(buf + off), crc = get32(buf + off + 4);
                const uint8_t *b = buf + off + REC_HDR;
                if (len < 8 || len > size - off - REC_HDR || crc32(0, b, len) != crc)
                        break;
                if (b[0] == REC_MSG && len >= MSG_FIXED) {
                        size_t cl = b[5], tl = get16(b + 6), kl = get16(b + 8), ol = get16(b + 10),
                               pl = get32(b + 12);
                        if (MSG_FIXED + cl + tl + kl + ol + pl != len || ol > 255)
                                break;
                        char cls[256], origin[256], *topic = strndup((const char *)b + MSG_FIXED + cl, tl),
                                                    *ckey = strndup((const char *)b + MSG_FIXED + cl + tl, kl);
                        memcpy(cls, b + MSG_FIXED, cl);
                        cls[cl] = 0;
                        memcpy(origin, b + MSG_FIXED + cl + tl + kl, ol);
                        origin[ol] = 0;
                        struct km_msg m = { .id = get64(b + 16), .created_ms = (int64_t)get64(b + 24),
                                            .expires_ms = (int64_t)get64(b + 32), .dir = b[1], .prio = b[2],
                                            .qos = b[3], .flags = b[4], .cls = cls, .topic = topic, .ckey = ckey,
                                            .origin = origin, .oid = get64(b + 40),
                                            .payload = b + MSG_FIXED + cl + tl + kl + ol, .len = pl };
                        if (m.id > *max_id)
                                *max_id = m.id;
                        char *pb = NULL;
                        if (m.id > sp->applied_id && m.dir < KM_DIR_COUNT &&
                            (sp->npend == 0 || m.id > sp->pend[sp->npend - 1].id)) {
                                /* Without memory for it, the logs must not be emptied:
                                 * opening fails and the next start tries again. */
                                if (!topic || !ckey || !(pb = malloc(pend_need(&m, cl, tl, kl, ol))) ||
                                    grow((void **)&sp->pend, &sp->cappend, sp->npend + 1, sizeof(*sp->pend)) < 0) {
                                        free(pb);
                                        free(topic);
                                        free(ckey);
                                        free(buf);
                                        KM_LOG(KM_LOG_ERR, "spool", "out of memory replaying %s", sp->log_path[i]);
                                        return -ENOMEM;
                                }
                                if (kl)
                                        pend_coalesce(sp, &m);
                                pend_add(sp, &m, pb, cl, tl, kl, ol);
                                sp->c.recovered++;
                        }
                        free(topic);
                        free(ckey);
                } else if (b[0] == REC_ACK && len >= 8 && get32(b + 4) <= (len - 8) / 8) {
                        uint32_t n = get32(b + 4);
                        for (uint32_t k = 0; k < n; k++) {
                                uint64_t id = get64(b + 8 + 8 * k);
                                size_t j = pend_after(sp, id - 1);
                                if (j < sp->npend && sp->pend[j].id == id && !sp->pend[j].gone) {
                                        pend_forget(sp, &sp->pend[j]);
                                        sp->c.recovered--;
                                }
                        }
                } else {
                        break;
                }
                off += REC_HDR + len;
                good = off;
        }
        if (good < size)
                KM_LOG(KM_LOG_NOTICE, "spool", "%s: torn tail of %zu bytes after offset %zu ignored (never acknowledged)",
                       sp->log_path[i], size - good, good);
        free(buf);
        return 0;
}

static int logs_open(struct km_spool *sp, uint64_t *max_id)
{
        int order[2] = { 0, 1 };

        for (int i = 0; i < 2; i++) {
                if (asprintf(&sp->log_path[i], "%s-ingest.%d", sp->path, i) < 0)
                        return -ENOMEM;
                sp->log_fd[i] = open(sp->log_path[i], O_RDWR | O_CREAT | O_CLOEXEC | O_APPEND, 0600);
                if (sp->log_fd[i] < 0) {
                        int e = errno;
                        KM_LOG(KM_LOG_ERR, "spool", "cannot open %s: %s", sp->log_path[i], strerror(e));
                        return -e;
                }
                uint8_t hdr[LOG_HDR];
                if (pread(sp->log_fd[i], hdr, LOG_HDR, 0) == LOG_HDR && memcmp(hdr, LOG_MAGIC, 8) == 0)
                        sp->log_gen[i] = get64(hdr + 8);
        }
        /* Older generation first, so ids come in increasing order. */
        if (sp->log_gen[1] < sp->log_gen[0])
                order[0] = 1, order[1] = 0;
        for (int k = 0; k < 2; k++) {
                int rc = replay_log(sp, order[k], max_id);
                if (rc < 0)
                        return rc;
        }
        return 0;
}

static void count_depths(struct km_spool *sp)
{
        sqlite3_stmt *s;

        if (sqlite3_prepare_v2(sp->db, "SELECT dir, prio, count(*), sum(size), max(id) FROM msg GROUP BY dir, prio", -1,
                               &s, NULL) != SQLITE_OK)
                return;
        while (sqlite3_step(s) == SQLITE_ROW) {
                int d = sqlite3_column_int(s, 0), p = sqlite3_column_int(s, 1);
                if (d < 0 || d >= KM_DIR_COUNT || p < 0 || p >= KM_PRIO_COUNT)
                        continue;
                sp->depth_db[d][p] = (uint64_t)sqlite3_column_int64(s, 2);
                sp->bytes += (uint64_t)sqlite3_column_int64(s, 3);
                if ((uint64_t)sqlite3_column_int64(s, 4) >= sp->next_id)
                        sp->next_id = (uint64_t)sqlite3_column_int64(s, 4) + 1;
        }
        sqlite3_finalize(s);
}

static int mkdir_parent(const char *path)
{
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir)
                return 0;
        *slash = 0;
        for (char *p = dir + 1; *p; p++)
                if (*p == '/') {
                        *p = 0;
                        mkdir(dir, 0750);
                        *p = '/';
                }
        return mkdir(dir, 0750) < 0 && errno != EEXIST ? -errno : 0;
}

int km_spool_open(struct km_spool **out, const struct km_spool_opts *o)
{
        struct km_spool *sp = calloc(1, sizeof(*sp));
        uint64_t max_id = 0;
        int rc;

        if (!sp)
                return -ENOMEM;
        sp->o = *o;
        sp->log_fd[0] = sp->log_fd[1] = -1;
        sp->lock_fd = -1;
        pthread_mutex_init(&sp->mu, NULL);
        pthread_cond_init(&sp->cond, NULL);
        pthread_cond_init(&sp->stage_cond, NULL);
        if (!(sp->path = strdup(o->path))) {
                rc = -ENOMEM;
                goto fail;
        }
        if ((rc = mkdir_parent(sp->path)) < 0) {
                KM_LOG(KM_LOG_ERR, "spool", "cannot create the directory of %s: %s", sp->path, strerror(-rc));
                goto fail;
        }
        /* The lock before anything is opened: nothing of a spool another kuimen runs on
         * may be touched (the writability check before it only asks access(2)). */
        char why[PATH_MAX + 96];
        if ((rc = km_spool_foreign(sp->path, why, sizeof(why))) < 0) {
                KM_LOG(KM_LOG_ERR, "spool", "%s: %s", sp->path, why);
                goto fail;
        }
        if ((rc = check_writable(sp->path)) < 0 || (rc = lock_spool(sp)) < 0)
                goto fail;
        rc = db_open(sp);
        if (rc == -EBADMSG) {
                char aside[PATH_MAX];
                char names[256];
                long readable = -1, imported, others;
                db_close(sp);
                if ((rc = move_aside(sp, aside, sizeof(aside))) < 0 || (rc = db_open(sp)) < 0)
                        goto fail;
                imported = import_aside(sp, aside, &readable, &others, names, sizeof(names));
                KM_LOG(KM_LOG_ERR, "spool",
                       "%s is damaged: moved aside to %s, starting a fresh spool; %ld of its messages imported (it counted %ld%s); "
                       "other tables: %s",
                       sp->path, aside, imported, readable,
                       readable < 0 || imported < readable ? "; the rest could not be read" : "", *names ? names : "none");
        }
        if (rc < 0) {
                KM_LOG(KM_LOG_ERR, "spool", "cannot open %s: %s", sp->path, strerror(-rc));
                goto fail;
        }
        sp->applied_id = (uint64_t)meta_get(sp, "applied_id");
        count_depths(sp);
        if ((rc = dead_open(sp)) < 0)
                goto fail;
        if ((rc = logs_open(sp, &max_id)) < 0)
                goto fail;
        (void)km_fsync_dir(sp->path); /* spool.db and the logs may be new */
        /* A log may take a sixteenth of the file system, between 64 KiB and 16 MiB:
         * on a small card the logs must not fill it before they rotate. */
        struct statvfs fsv;
        sp->fs_bytes = statvfs(sp->path, &fsv) == 0 ? (uint64_t)fsv.f_blocks * fsv.f_frsize : (uint64_t)1 << 40;
        sp->rotate_bytes = sp->fs_bytes / 16;
        if (sp->rotate_bytes > ROTATE_BYTES)
                sp->rotate_bytes = ROTATE_BYTES;
        if (sp->rotate_bytes < (64u << 10))
                sp->rotate_bytes = 64u << 10;
        if (sp->c.recovered)
                KM_LOG(KM_LOG_NOTICE, "spool", "recovered %llu messages from the ingest log",
                       (unsigned long long)sp->c.recovered);
        uint64_t floor_id = (uint64_t)km_now_ms() * 1000;
        if (max_id + 1 > sp->next_id)
                sp->next_id = max_id + 1;
        if (sp->applied_id + 1 > sp->next_id)
                sp->next_id = sp->applied_id + 1;
        if (floor_id > sp->next_id)
                sp->next_id = floor_id;
        /* Recovered records go to SQLite in a FULL commit before either log is emptied:
         * a restart after kill -9 must not empty a log whose records sit only in a WAL
         * that was never synced. If that fails (a full disk at start), kuimen still runs:
         * it forwards what it holds, takes nothing, and the fault's probe retries. */
        sp->active = sp->log_gen[0] <= sp->log_gen[1] ? 0 : 1;
        uint64_t gen = (sp->log_gen[0] > sp->log_gen[1] ? sp->log_gen[0] : sp->log_gen[1]) + 1;
        struct stat stt;
        sp->other_bytes = fstat(sp->log_fd[sp->active ^ 1], &stt) == 0 ? (uint64_t)stt.st_size : 1;
        sp->log_bytes = fstat(sp->log_fd[sp->active], &stt) == 0 ? (uint64_t)stt.st_size : 0;
        sp->log_gen[sp->active] = gen - 1; /* the fault's probe starts it with gen */
        if (flush(sp, false, true) == 0) {
                /* Both logs' records are durable in SQLite now (nothing was pushed yet):
                 * the inactive one was emptied by the flush, the active one starts over. */
                pthread_mutex_lock(&sp->mu);
                if ((rc = log_reset(sp, sp->active, gen)) < 0)
                        fault_set_locked(sp, rc, "starting %s: %s", sp->log_path[sp->active], strerror(-rc));
                else
                        (void)log_reserve(sp, sp->active);
                pthread_mutex_unlock(&sp->mu);
        }
        if (!o->sync_always && o->sync_interval_ms > 0) {
                if ((rc = -pthread_create(&sp->sync_thread, NULL, sync_main, sp)) < 0)
                        goto fail;
                sp->sync_thread_started = true;
        }
        *out = sp;
        return 0;
fail:
        km_spool_close(sp);
        return rc;
}

void km_spool_close(struct km_spool *sp)
{
        if (!sp)
                return;
        km_spool_settle(sp); /* nothing staged is left behind */
        pthread_mutex_lock(&sp->mu);
        sp->stopping = true;
        pthread_cond_broadcast(&sp->cond);
        pthread_cond_broadcast(&sp->stage_cond);
        pthread_mutex_unlock(&sp->mu);
        if (sp->sync_thread_started)
                pthread_join(sp->sync_thread, NULL);
        if (sp->db && sp->log_fd[0] >= 0 && sp->log_fd[1] >= 0) {
                /* Leave nothing in memory: pending goes to SQLite and both logs empty. */
                for (size_t i = 0; i < sp->ndels; i++)
                        if (tx_begin(sp) == 0)
                                delete_id(sp, sp->dels[i], &sp->c.acked);
                sp->ndels = 0;
                /* After a FULL flush of everything pending, neither log holds a record
                 * SQLite lacks (nothing is pushed any more). A failed flush empties
                 * nothing: the next start replays the logs. */
                if (flush(sp, false, true) == 0 && ftruncate(sp->log_fd[sp->active], 0) < 0)
                        KM_LOG(KM_LOG_ERR, "spool", "truncate %s: %s", sp->log_path[sp->active], strerror(errno));
        }
        if (sp->db) {
                tx_commit(sp);
                db_close(sp);
        }
        for (int i = 0; i < 2; i++) {
                if (sp->log_fd[i] >= 0)
                        close(sp->log_fd[i]);
                free(sp->log_path[i]);
        }
        for (size_t i = 0; i < sp->npend; i++)
                free(sp->pend[i].cls);
        free(sp->pend);
        free(sp->dels);
        free(sp->acklog);
        free(sp->stage);
        free(sp->cur.cls);
        free(sp->path);
        if (sp->lock_fd >= 0)
                close(sp->lock_fd); /* last: the spool is someone else's only now */
        pthread_mutex_destroy(&sp->mu);
        pthread_cond_destroy(&sp->cond);
        pthread_cond_destroy(&sp->stage_cond);
        free(sp);
}

/* ---- peek (operators) ------------------------------------------------------------ */

static void peek_fill(struct km_spool_peek *o, uint64_t id, int64_t created, int64_t expires, int dir, int prio,
                      size_t len, const char *cls, const char *topic)
{
        o->id = id;
        o->created_ms = created;
        o->expires_ms = expires;
        o->dir = (uint8_t)dir;
        o->prio = (uint8_t)prio;
        o->len = (uint32_t)len;
        snprintf(o->cls, sizeof(o->cls), "%s", cls ? cls : "");
        snprintf(o->topic, sizeof(o->topic), "%s", topic ? topic : "");
}

/* The SQLite part of the head. Expired rows are skipped rather than deleted, so that
 * looking changes nothing; the expiry sweep removes them. */
static int peek_db(struct km_spool *sp, int dir, int prio, int64_t now, struct km_spool_peek *out, int max)
{
        sqlite3_stmt *s;
        int n = 0, rc = SQLITE_DONE;

        if (!sp->depth_db[dir][prio] || max <= 0)
                return 0;
        if (sqlite3_prepare_v2(sp->db,
                               "SELECT id,created,expires,cls,topic,length(payload) FROM msg"
                               " WHERE dir=? AND prio=? AND (expires=0 OR expires>?) ORDER BY id LIMIT ?",
                               -1, &s, NULL) != SQLITE_OK)
                return sql_fail(sp, "peek");
        sqlite3_bind_int(s, 1, dir);
        sqlite3_bind_int(s, 2, prio);
        sqlite3_bind_int64(s, 3, now);
        sqlite3_bind_int(s, 4, max);
        while (n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
                peek_fill(&out[n++], (uint64_t)sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1),
                          sqlite3_column_int64(s, 2), dir, prio, (size_t)sqlite3_column_int64(s, 5),
                          (const char *)sqlite3_column_text(s, 3), (const char *)sqlite3_column_text(s, 4));
        }
        sqlite3_finalize(s);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                return sql_fail(sp, "peek");
        return n;
}

/* The pending (not yet in SQLite) part of the head; ids are increasing in sp->pend. */
static int peek_pend(struct km_spool *sp, int dir, int prio, int64_t now, struct km_spool_peek *out, int max)
{
        int n = 0;

        pthread_mutex_lock(&sp->mu);
        for (size_t i = 0; i < sp->npend && n < max && sp->depth_pend[dir][prio]; i++) {
                const struct pend *p = &sp->pend[i];
                if (p->gone || p->dir != dir || p->prio != prio || (p->expires && p->expires <= now))
                        continue;
                peek_fill(&out[n++], p->id, p->created, p->expires, dir, prio, p->len, p->cls, p->topic);
        }
        pthread_mutex_unlock(&sp->mu);
        return n;
}

int km_spool_peek(struct km_spool *sp, int dir, int prio, struct km_spool_peek *out, int max)
{
        int64_t now = spool_now(sp);
        struct km_spool_peek *tmp;
        int a, b, i = 0, j = 0, n = 0;

        if (dir < 0 || dir >= KM_DIR_COUNT || prio < 0 || prio >= KM_PRIO_COUNT || max <= 0)
                return max == 0 ? 0 : -EINVAL;
        if (!(tmp = calloc(2 * (size_t)max, sizeof(*tmp))))
                return -ENOMEM;
        if ((a = peek_db(sp, dir, prio, now, tmp, max)) < 0) {
                free(tmp);
                return a;
        }
        b = peek_pend(sp, dir, prio, now, tmp + max, max);
        /* Both runs are in id order; the head is the smallest ids of the two. */
        while (n < max && (i < a || j < b))
                out[n++] = j >= b || (i < a && tmp[i].id < tmp[max + j].id) ? tmp[i++] : tmp[max + j++];
        free(tmp);
        return n;
}

/* ---- dead letters ---------------------------------------------------------------- */

/*
 * A message a peer can never take would otherwise be retried at the head of its queue
 * for ever, and everything behind it with it. It is set aside instead: moved into the
 * table dead (msg's columns, plus why and when) in the same SQLite file, so it survives
 * restarts and an operator can look at it, send it back or drop it (kuimenctl spool
 * dead|retry|drop).
 *
 * Why nothing is lost on the way. From SQLite: the INSERT into dead and the DELETE from
 * msg are one transaction, committed at once (a rollback restores both and the
 * accounting is recounted). From pending (memory and the ingest log): the row goes into
 * dead and is committed, and only then is the pending entry forgotten, WITHOUT an ACK
 * record: until a later commit of this same database advances applied_id past it, a
 * power cut that loses the dead row (a NORMAL commit) replays the log record back into
 * the queue (sent again, set aside again: at least once); a commit that advances
 * applied_id comes after the dead row's in the same WAL. Back: a retry pushes a copy
 * through km_spool_push (the ingest log, a new id) before the dead row is deleted; a
 * failure in between leaves both (a duplicate, not a loss).
 *
 * The schema version stays 2: an older kuimen never reads dead and leaves it alone.
 * Statements are prepared per call, as km_spool_peek's: this is the rare path (a peer's
 * refusal, an operator's command), and it keeps the section out of the spool's open
 * and close.
 */

#define DEAD_COLS "id,dir,prio,flags,qos,created,expires,size,cls,topic,ckey,payload,origin,oid"

static int dead_sql(struct km_spool *sp, const char *sql, sqlite3_stmt **s)
{
        return sqlite3_prepare_v2(sp->db, sql, -1, s, NULL) == SQLITE_OK ? 0 : sql_fail(sp, sql);
}

/* Creates the table and counts what the last run left in it (from km_spool_open). */
static int dead_open(struct km_spool *sp)
{
        sqlite3_stmt *s;
        if (sqlite3_exec(sp->db,
                         "CREATE TABLE IF NOT EXISTS dead(id INTEGER PRIMARY KEY, dir INTEGER NOT NULL,"
                         " prio INTEGER NOT NULL, flags INTEGER NOT NULL, qos INTEGER NOT NULL,"
                         " created INTEGER NOT NULL, expires INTEGER NOT NULL, size INTEGER NOT NULL,"
                         " cls TEXT NOT NULL, topic TEXT NOT NULL, ckey TEXT, payload BLOB NOT NULL,"
                         " origin TEXT, oid INTEGER NOT NULL DEFAULT 0, why TEXT, at INTEGER)",
                         NULL, NULL, NULL) != SQLITE_OK)
                return sql_fail(sp, "create the dead letters");
        if (dead_sql(sp, "SELECT count(*) FROM dead", &s) < 0)
                return -EIO;
        if (sqlite3_step(s) == SQLITE_ROW)
                sp->c.dead = (uint64_t)sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
        /* A message refused on arrival took an id from the sequence and lives only
         * here: the sequence must go on past it after a restart. */
        if (dead_sql(sp, "SELECT max(id) FROM dead", &s) < 0)
                return -EIO;
        if (sqlite3_step(s) == SQLITE_ROW && (uint64_t)sqlite3_column_int64(s, 0) >= sp->next_id)
                sp->next_id = (uint64_t)sqlite3_column_int64(s, 0) + 1;
        sqlite3_finalize(s);
        if (sp->c.dead)
                KM_LOG(KM_LOG_WARNING, "spool", "%llu messages are set aside (kuimenctl spool dead)",
                       (unsigned long long)sp->c.dead);
        return 0;
}

static void dead_count(struct km_spool *sp, uint64_t *counter, int64_t delta)
{
        pthread_mutex_lock(&sp->mu);
        sp->c.dead = (uint64_t)((int64_t)sp->c.dead + delta);
        if (counter)
                *counter += (uint64_t)(delta < 0 ? -delta : delta);
        pthread_mutex_unlock(&sp->mu);
}

/* Past KM_SPOOL_DEAD_MAX the oldest held go: a peer refusing a whole topic must not
 * fill the disk behind the spool's bound. */
static int dead_bound(struct km_spool *sp)
{
        sqlite3_stmt *s;
        if (sp->c.dead <= KM_SPOOL_DEAD_MAX)
                return 0;
        int64_t over = (int64_t)(sp->c.dead - KM_SPOOL_DEAD_MAX);
        if (dead_sql(sp, "DELETE FROM dead WHERE id IN (SELECT id FROM dead ORDER BY at, id LIMIT ?)", &s) < 0)
                return -EIO;
        sqlite3_bind_int64(s, 1, over);
        if (tx_begin(sp) < 0) {
                sqlite3_finalize(s);
                return -EIO;
        }
        int rc = sqlite3_step(s);
        int64_t n = sqlite3_changes(sp->db);
        sqlite3_finalize(s);
        if (rc != SQLITE_DONE || tx_commit(sp) < 0) {
                tx_abort(sp);
                return sql_fail(sp, "bound the dead letters");
        }
        dead_count(sp, &sp->c.dead_dropped, -n);
        KM_LOG(KM_LOG_ERR, "spool", "more than %d messages set aside: dropped the %lld oldest", KM_SPOOL_DEAD_MAX,
               (long long)n);
        return 0;
}

/* A pending entry into dead (the open transaction). */
static int dead_insert_pend(struct km_spool *sp, const struct pend *p, const char *why, int64_t at)
{
        sqlite3_stmt *s;
        if (dead_sql(sp, "INSERT OR REPLACE INTO dead(" DEAD_COLS ",why,at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     &s) < 0)
                return -EIO;
        bind_pend(s, p);
        sqlite3_bind_text(s, 15, why, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 16, at);
        int rc = sqlite3_step(s);
        sqlite3_finalize(s);
        return rc == SQLITE_DONE ? 0 : sql_fail(sp, "set aside");
}

/* A row of msg into dead; 1 when there was one. */
static int dead_move_row(struct km_spool *sp, uint64_t id, const char *why, int64_t at)
{
        sqlite3_stmt *s;
        if (dead_sql(sp, "INSERT OR REPLACE INTO dead(" DEAD_COLS ",why,at) SELECT " DEAD_COLS ",?,? FROM msg WHERE id=?",
                     &s) < 0)
                return -EIO;
        sqlite3_bind_text(s, 1, why, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, at);
        sqlite3_bind_int64(s, 3, (int64_t)id);
        int rc = sqlite3_step(s);
        int moved = sqlite3_changes(sp->db) > 0;
        sqlite3_finalize(s);
        if (rc != SQLITE_DONE)
                return sql_fail(sp, "set aside");
        if (moved && delete_id(sp, id, NULL) < 0)
                return -EIO;
        return moved;
}

/* A message is held now: counted, logged (the first ten, then every hundredth) and
 * the table kept within its bound. */
static int dead_held(struct km_spool *sp, uint64_t id, const char *why)
{
        static uint64_t logged;
        dead_count(sp, &sp->c.set_aside, 1);
        uint64_t n = ++logged;
        if (n <= 10 || n % 100 == 0)
                KM_LOG(KM_LOG_WARNING, "spool", "message %llu set aside: %s (%llu so far; kuimenctl spool dead)",
                       (unsigned long long)id, why, (unsigned long long)n);
        return dead_bound(sp);
}

int km_spool_set_aside(struct km_spool *sp, uint64_t id, const char *why)
{
        int64_t at = km_now_ms();
        int rc;

        if (!why)
                why = "refused";
        if ((rc = tx_begin(sp)) < 0)
                return rc;
        /* Pending: copied under mu (another thread's push may grow the array), written
         * to SQLite outside it, and forgotten only once that commit holds. */
        pthread_mutex_lock(&sp->mu);
        size_t i = pend_after(sp, id - 1);
        bool pend = i < sp->npend && sp->pend[i].id == id && !sp->pend[i].gone;
        if (pend)
                rc = set_cur(sp, &sp->pend[i]);
        pthread_mutex_unlock(&sp->mu);
        if (rc < 0)
                return rc;
        if (pend)
                rc = dead_insert_pend(sp, &sp->cur, why, at);
        else if ((rc = dead_move_row(sp, id, why, at)) == 0)
                return -ENOENT;
        /* Committed now, not with the next batch: a flush that fails rolls its whole
         * transaction back, and the row must not go while the message is gone from
         * memory (a later flush would move applied_id past its log record). */
        if (rc >= 0)
                rc = tx_commit(sp);
        if (rc < 0) {
                tx_abort(sp);
                recount(sp); /* a rolled-back delete from msg had moved the accounting */
                return rc;
        }
        if (pend) {
                pthread_mutex_lock(&sp->mu);
                i = pend_after(sp, id - 1);
                if (i < sp->npend && sp->pend[i].id == id && !sp->pend[i].gone)
                        pend_forget(sp, &sp->pend[i]); /* no ACK record: see above */
                pthread_mutex_unlock(&sp->mu);
        }
        return dead_held(sp, id, why);
}

int km_spool_put_aside(struct km_spool *sp, struct km_msg *m, const char *why)
{
        int rc;

        if (!why)
                why = "refused";
        pthread_mutex_lock(&sp->mu);
        m->id = sp->next_id++;
        pthread_mutex_unlock(&sp->mu);
        m->flags |= KM_MSG_REFUSED;
        /* Borrowed for the insert only: a pend's strings are plain char *. */
        struct pend p = {
                .id = m->id, .created = m->created_ms, .expires = m->expires_ms, .dir = m->dir, .prio = m->prio,
                .qos = m->qos, .flags = m->flags, .size = (uint32_t)m->len, .cls = (char *)(m->cls ? m->cls : ""),
                .topic = (char *)(m->topic ? m->topic : ""), .ckey = (char *)"", .origin = (char *)(m->origin ? m->origin : ""),
                .payload = (void *)m->payload, .len = m->len, .oid = m->oid,
        };
        if ((rc = tx_begin(sp)) < 0)
                return rc;
        if ((rc = dead_insert_pend(sp, &p, why, km_now_ms())) >= 0)
                rc = tx_commit(sp);
        if (rc < 0) {
                tx_abort(sp);
                return rc;
        }
        return dead_held(sp, m->id, why);
}

int km_spool_dead_list(struct km_spool *sp, struct km_spool_dead *out, int max)
{
        sqlite3_stmt *s;
        int n = 0, rc = SQLITE_DONE;

        if (max <= 0)
                return 0;
        if (dead_sql(sp, "SELECT id,created,at,dir,prio,length(payload),cls,topic,why FROM dead ORDER BY at, id LIMIT ?",
                     &s) < 0)
                return -EIO;
        sqlite3_bind_int(s, 1, max);
        while (n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
                struct km_spool_dead *d = &out[n++];
                const char *cls = (const char *)sqlite3_column_text(s, 6);
                const char *topic = (const char *)sqlite3_column_text(s, 7);
                const char *why = (const char *)sqlite3_column_text(s, 8);
                d->id = (uint64_t)sqlite3_column_int64(s, 0);
                d->created_ms = sqlite3_column_int64(s, 1);
                d->at_ms = sqlite3_column_int64(s, 2);
                d->dir = (uint8_t)sqlite3_column_int(s, 3);
                d->prio = (uint8_t)sqlite3_column_int(s, 4);
                d->len = (uint32_t)sqlite3_column_int64(s, 5);
                snprintf(d->cls, sizeof(d->cls), "%s", cls ? cls : "");
                snprintf(d->topic, sizeof(d->topic), "%s", topic ? topic : "");
                snprintf(d->why, sizeof(d->why), "%s", why ? why : "");
        }
        sqlite3_finalize(s);
        return rc == SQLITE_ROW || rc == SQLITE_DONE ? n : sql_fail(sp, "list the dead letters");
}

/* Deletes dead row id (0: all); the count of rows. */
static int64_t dead_delete(struct km_spool *sp, uint64_t id)
{
        sqlite3_stmt *s;
        if (dead_sql(sp, id ? "DELETE FROM dead WHERE id=?" : "DELETE FROM dead", &s) < 0)
                return -EIO;
        if (id)
                sqlite3_bind_int64(s, 1, (int64_t)id);
        int rc = sqlite3_step(s);
        int64_t n = sqlite3_changes(sp->db);
        sqlite3_finalize(s);
        return rc == SQLITE_DONE ? n : sql_fail(sp, "delete a dead letter");
}

/* Whether the queue holds a message on key ckey created after created_ms: one that a
 * set-aside message sent back would wrongly replace (the latest value per key wins by
 * order, and the one sent back goes to the tail). */
static bool newer_on_key(struct km_spool *sp, sqlite3_stmt *q, uint8_t dir, const char *ckey, int64_t created_ms)
{
        bool newer = false;
        pthread_mutex_lock(&sp->mu);
        for (size_t i = 0; i < sp->npend && !newer; i++)
                newer = !sp->pend[i].gone && sp->pend[i].dir == dir && sp->pend[i].created > created_ms &&
                        strcmp(sp->pend[i].ckey, ckey) == 0;
        pthread_mutex_unlock(&sp->mu);
        if (newer || !q)
                return newer;
        sqlite3_bind_text(q, 1, ckey, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, dir);
        sqlite3_bind_int64(q, 3, created_ms);
        newer = sqlite3_step(q) == SQLITE_ROW;
        sqlite3_reset(q);
        return newer;
}

int km_spool_dead_retry(struct km_spool *sp, uint64_t id, int *superseded)
{
        sqlite3_stmt *s;
        uint64_t *ids = NULL;
        size_t nids = 0, cap = 0;
        int n = 0, rc, nsup = 0;
        bool refused = false;

        if (dead_sql(sp, id ? "SELECT " DEAD_COLS " FROM dead WHERE id=?" : "SELECT " DEAD_COLS " FROM dead ORDER BY id",
                     &s) < 0)
                return -EIO;
        if (id)
                sqlite3_bind_int64(s, 1, (int64_t)id);
        /* Unprepared (SQLite out of memory): only what is in memory is looked at. */
        sqlite3_stmt *newer = NULL;
        sqlite3_prepare_v2(sp->db, "SELECT 1 FROM msg WHERE ckey=? AND dir=? AND created>? LIMIT 1", -1, &newer, NULL);
        /* Each goes back through the ingest log, as if it had just arrived (a new id,
         * at the tail: in order among what follows, and durable before its dead row
         * goes); it keeps its created and expires, and its origin id. */
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
                uint64_t old = (uint64_t)sqlite3_column_int64(s, 0), oid = (uint64_t)sqlite3_column_int64(s, 13);
                const char *ckey = (const char *)sqlite3_column_text(s, 10);
                const char *origin = (const char *)sqlite3_column_text(s, 12);
                struct km_msg m = {
                        .dir = (uint8_t)sqlite3_column_int(s, 1), .prio = (uint8_t)sqlite3_column_int(s, 2),
                        .flags = (uint8_t)sqlite3_column_int(s, 3), .qos = (uint8_t)sqlite3_column_int(s, 4),
                        .created_ms = sqlite3_column_int64(s, 5), .expires_ms = sqlite3_column_int64(s, 6),
                        .cls = (const char *)sqlite3_column_text(s, 8), .topic = (const char *)sqlite3_column_text(s, 9),
                        .ckey = ckey && *ckey ? ckey : NULL, .payload = sqlite3_column_blob(s, 11),
                        .len = (size_t)sqlite3_column_bytes(s, 11), .origin = origin && *origin ? origin : NULL,
                        .oid = oid ? oid : old,
                };
                if (m.flags & KM_MSG_REFUSED) {
                        KM_LOG(KM_LOG_WARNING, "spool", "set-aside message %llu was refused on arrival (%s): it stays held, to be dropped",
                               (unsigned long long)old, m.topic ? m.topic : "?");
                        refused = true;
                        continue;
                }
                if (m.ckey && m.dir < KM_DIR_COUNT && newer_on_key(sp, newer, m.dir, m.ckey, m.created_ms)) {
                        if (grow((void **)&ids, &cap, nids + 1, sizeof(*ids)) == 0) {
                                ids[nids++] = old;
                                nsup++;
                        }
                        KM_LOG(KM_LOG_NOTICE, "spool", "set-aside message %llu (%s) is not sent back: a newer one on its coalesce key is queued; dropped",
                               (unsigned long long)old, m.topic ? m.topic : "?");
                        continue;
                }
                if (!m.cls || !m.topic || m.dir >= KM_DIR_COUNT || (rc = km_spool_push(sp, &m)) < 0) {
                        KM_LOG(KM_LOG_ERR, "spool", "cannot send set-aside message %llu back: %s", (unsigned long long)old,
                               strerror(m.cls && m.topic && m.dir < KM_DIR_COUNT ? -rc : EINVAL));
                        continue;
                }
                if (grow((void **)&ids, &cap, nids + 1, sizeof(*ids)) == 0)
                        ids[nids++] = old;
                KM_LOG(KM_LOG_NOTICE, "spool", "set-aside message %llu is queued again as %llu", (unsigned long long)old,
                       (unsigned long long)m.id);
        }
        sqlite3_finalize(s);
        sqlite3_finalize(newer);
        if (rc != SQLITE_DONE && rc != SQLITE_ROW)
                KM_LOG(KM_LOG_ERR, "spool", "%s: list the dead letters: %s", sp->path, sqlite3_errmsg(sp->db));
        /* A failure here leaves a row that was queued again: held and queued both, a
         * duplicate at worst. */
        rc = tx_begin(sp);
        for (size_t i = 0; i < nids && rc == 0; i++) {
                int64_t k = dead_delete(sp, ids[i]);
                if (k < 0)
                        rc = (int)k;
                else
                        n += (int)k;
        }
        if (rc == 0)
                rc = tx_commit(sp);
        else
                tx_abort(sp);
        free(ids);
        if (rc < 0)
                return rc;
        /* What left the dead letters superseded was replaced by a newer value, as the
         * queue would have replaced it (counted so, not as retried). */
        if (nsup > n)
                nsup = n;
        dead_count(sp, &sp->c.dead_retried, -(n - nsup));
        if (nsup)
                dead_count(sp, &sp->c.coalesced, -nsup);
        if (superseded)
                *superseded = nsup;
        return id && refused ? -EPERM : n - nsup;
}

int km_spool_dead_drop(struct km_spool *sp, uint64_t id)
{
        int rc = tx_begin(sp);
        if (rc < 0)
                return rc;
        int64_t n = dead_delete(sp, id);
        if (n >= 0 && (rc = tx_commit(sp)) < 0)
                n = rc;
        if (n < 0) {
                tx_abort(sp);
                return (int)n;
        }
        dead_count(sp, &sp->c.dead_dropped, -n);
        if (n)
                KM_LOG(KM_LOG_NOTICE, "spool", "dropped %lld set-aside message%s", (long long)n, n == 1 ? "" : "s");
        return (int)n;
}

/* ---- tables of other modules ------------------------------------------------------
 *
 * Other modules keep small tables in the spool's SQLite file (gateway/calls.c: calls
 * and their recipients), so that one file holds everything a kill or a power cut must
 * not take, under the one connection and its exclusive lock. They write between the
 * spool's own calls, on the loop thread, inside km_spool_tx_begin/km_spool_tx_end: the
 * spool's open transaction (its deletes, at most COMMIT_EVERY_MS old) commits first or
 * with theirs, which is what its own commit would have done a little later. A failed
 * write rolls back theirs and the spool's deletes alike (a delete lost only sends its
 * message again) and starts the storage fault as any failed commit does.
 */

struct sqlite3 *km_spool_sqlite(struct km_spool *sp)
{
        return sp->db;
}

int km_spool_tx_begin(struct km_spool *sp, bool full)
{
        return full ? tx_begin_full(sp) : tx_begin(sp);
}

int km_spool_tx_end(struct km_spool *sp, bool full, bool commit, const char *what)
{
        int rc = 0;
        if (commit)
                rc = full ? tx_end_full(sp) : tx_commit(sp);
        else
                rc = -EIO;
        if (rc < 0) {
                tx_failed(sp, rc, what);
                if (full && set_sync(sp, "NORMAL") < 0)
                        KM_LOG(KM_LOG_WARNING, "spool", "%s: back to synchronous=NORMAL failed", sp->path);
        }
        return rc;
}

bool km_spool_holds(struct km_spool *sp, uint64_t id)
{
        bool held = false;
        sqlite3_stmt *s;
        pthread_mutex_lock(&sp->mu);
        for (size_t i = 0; i < sp->npend && !held; i++)
                held = sp->pend[i].id == id && !sp->pend[i].gone;
        pthread_mutex_unlock(&sp->mu);
        if (held || sqlite3_prepare_v2(sp->db, "SELECT 1 FROM msg WHERE id=?", -1, &s, NULL) != SQLITE_OK)
                return held;
        sqlite3_bind_int64(s, 1, (int64_t)id);
        held = sqlite3_step(s) == SQLITE_ROW;
        sqlite3_finalize(s);
        return held;
}
