/* SPDX-License-Identifier: MIT */
/* Spool: order, acks, recovery after a kill, coalescing, TTL, space policy, damage. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gateway/spool.h"

static char dir[64], path[128];

static void nowake(void *ud) { (void)ud; }

static void setup(void)
{
        snprintf(dir, sizeof(dir), "/tmp/km-spool-XXXXXX");
        cr_assert_not_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/sub/spool.db", dir);
}

static void teardown(void)
{
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        cr_assert_eq(system(cmd), 0);
}

static struct km_spool *open_spool(int64_t max_bytes)
{
        struct km_spool_opts o = { .path = path, .max_bytes = max_bytes, .sync_interval_ms = 20, .wake = nowake };
        struct km_spool *sp = NULL;
        cr_assert_eq(km_spool_open(&sp, &o), 0);
        return sp;
}

static uint64_t push(struct km_spool *sp, int prio, const char *topic, const char *payload, const char *ckey,
                     int64_t expires, bool droppable)
{
        struct km_msg m = { .created_ms = km_now_ms(), .expires_ms = expires, .dir = KM_DIR_UP, .prio = (uint8_t)prio,
                            .qos = 1, .flags = droppable ? KM_MSG_DROPPABLE : 0, .cls = prio == 0 ? "alert" : "telemetry",
                            .topic = topic, .ckey = ckey, .payload = payload, .len = strlen(payload) };
        cr_assert_eq(km_spool_push(sp, &m), 0);
        return m.id;
}

/* Reads every queued message of prio in order; writes payloads into out. */
static int drain(struct km_spool *sp, int prio, char out[][32], int max, bool ack)
{
        struct km_msg m;
        uint64_t after = 0;
        int n = 0;
        while (n < max && km_spool_next(sp, KM_DIR_UP, prio, after, &m) == 1) {
                snprintf(out[n++], 32, "%.*s", (int)m.len, (const char *)m.payload);
                after = m.id;
                if (ack)
                        cr_assert_eq(km_spool_ack(sp, m.id), 0);
        }
        cr_assert_eq(km_spool_commit(sp), 0);
        return n;
}

TestSuite(spool, .init = setup, .fini = teardown);

Test(spool, order_and_ack_in_memory_and_from_sqlite)
{
        struct km_spool *sp = open_spool(1 << 20);
        char got[10][32];
        uint64_t prev = 0;
        for (int i = 0; i < 5; i++) {
                char p[16];
                snprintf(p, sizeof(p), "m%d", i);
                uint64_t id = push(sp, 4, "sensors/a", p, NULL, 0, true);
                cr_assert_gt(id, prev, "ids increase");
                prev = id;
        }
        cr_assert_eq(km_spool_checkpoint(sp), 0); /* m0..m4 now in SQLite */
        for (int i = 5; i < 8; i++) {
                char p[16];
                snprintf(p, sizeof(p), "m%d", i);
                push(sp, 4, "sensors/a", p, NULL, 0, true);
        }
        cr_assert_eq(drain(sp, 4, got, 10, false), 8);
        for (int i = 0; i < 8; i++) {
                char want[16];
                snprintf(want, sizeof(want), "m%d", i);
                cr_assert_str_eq(got[i], want);
        }
        cr_assert_eq(drain(sp, 4, got, 10, true), 8);
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.depth[KM_DIR_UP], 0);
        cr_assert_eq(st.acked, 8);
        cr_assert_eq(st.bytes, 0);
        km_spool_close(sp);
        sp = open_spool(1 << 20);
        cr_assert_eq(drain(sp, 4, got, 10, false), 0, "acked messages stay gone after a restart");
        km_spool_close(sp);
}

Test(spool, priority_is_separate_queue)
{
        struct km_spool *sp = open_spool(1 << 20);
        char got[4][32];
        push(sp, 4, "sensors/a", "t1", NULL, 0, true);
        push(sp, 0, "alert/a", "a1", NULL, 0, false);
        cr_assert_eq(drain(sp, 0, got, 4, false), 1);
        cr_assert_str_eq(got[0], "a1");
        cr_assert_eq(drain(sp, 4, got, 4, false), 1);
        cr_assert_str_eq(got[0], "t1");
        km_spool_close(sp);
}

/* A child pushes and dies without closing: what push returned for must come back. */
Test(spool, recovery_after_kill)
{
        pid_t pid = fork();
        if (pid == 0) {
                struct km_spool_opts o = { .path = path, .max_bytes = 1 << 20, .wake = nowake };
                struct km_spool *sp = NULL;
                if (km_spool_open(&sp, &o) < 0)
                        _exit(2);
                for (int i = 0; i < 100; i++) {
                        char p[16];
                        snprintf(p, sizeof(p), "k%d", i);
                        struct km_msg m = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = "s/x",
                                            .payload = p, .len = strlen(p) };
                        if (km_spool_push(sp, &m) < 0)
                                _exit(3);
                        if (i == 49) /* half of them in SQLite, half only in the log */
                                km_spool_checkpoint(sp);
                        if (i >= 90) { /* delivered while pending: an ACK record */
                                km_spool_ack(sp, m.id);
                        }
                }
                km_spool_commit(sp);
                _exit(0); /* no close: as SIGKILL leaves it */
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        struct km_spool *sp = open_spool(1 << 20);
        char got[128][32];
        cr_assert_eq(drain(sp, 4, got, 128, false), 90);
        for (int i = 0; i < 90; i++) {
                char want[16];
                snprintf(want, sizeof(want), "k%d", i);
                cr_assert_str_eq(got[i], want);
        }
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.recovered, 40, "recovered %llu", (unsigned long long)st.recovered);
        km_spool_close(sp);
}

/* Another thread's push while the loop stages a read: it waits for the settle. */
struct side_push {
        struct km_spool *sp;
        uint64_t id;
        int done;
};

static void *side_push_main(void *arg)
{
        struct side_push *x = arg;
        struct km_msg m = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = "s/side",
                            .payload = "side", .len = 4 };
        if (km_spool_push(x->sp, &m) == 0)
                x->id = m.id;
        __atomic_store_n(&x->done, 1, __ATOMIC_RELEASE);
        return NULL;
}

/* The loop stages a read's messages and writes them in one go at the settle; another
 * thread pushing meanwhile waits, so the log stays in id order, and a kill after the
 * settle loses nothing: all come back, in order. Before the settle nothing of the
 * staged ones is in the log (their sender has no acknowledgement either). */
Test(spool, staged_pushes_settle_in_id_order)
{
        pid_t pid = fork();
        if (pid == 0) {
                struct km_spool_opts o = { .path = path, .max_bytes = 1 << 20, .wake = nowake };
                struct km_spool *sp = NULL;
                char logp[160];
                struct stat st0, st1;
                if (km_spool_open(&sp, &o) < 0)
                        _exit(2);
                km_spool_set_loop_thread(sp);
                snprintf(logp, sizeof(logp), "%s-ingest.0", path);
                if (stat(logp, &st0) < 0)
                        _exit(3);
                km_spool_defer_sync(sp);
                struct km_msg a = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = "s/x",
                                    .payload = "a", .len = 1 };
                if (km_spool_push(sp, &a) < 0)
                        _exit(4);
                struct side_push x = { .sp = sp };
                pthread_t th;
                pthread_create(&th, NULL, side_push_main, &x);
                usleep(100000);
                if (__atomic_load_n(&x.done, __ATOMIC_ACQUIRE))
                        _exit(5); /* it did not wait for the settle */
                struct km_msg b = a;
                b.payload = "b";
                if (km_spool_push(sp, &b) < 0 || stat(logp, &st1) < 0 || st1.st_size != st0.st_size)
                        _exit(6); /* staged records reached the log before the settle */
                if (km_spool_settle(sp) != 0)
                        _exit(7);
                pthread_join(th, NULL);
                if (!x.id || x.id <= b.id || b.id <= a.id)
                        _exit(8);
                _exit(0); /* no close: as SIGKILL leaves it */
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child step %d failed", WEXITSTATUS(status));
        struct km_spool *sp = open_spool(1 << 20);
        char got[8][32];
        cr_assert_eq(drain(sp, 4, got, 8, false), 3);
        cr_assert_str_eq(got[0], "a");
        cr_assert_str_eq(got[1], "b");
        cr_assert_str_eq(got[2], "side");
        km_spool_close(sp);
}

/* A settle whose write fails (a full disk: here the file size limit) withholds the
 * read's PUBACKs, so the broker sends those messages again: their in-memory copies
 * must go too, or each retry would forward them once more. */
Test(spool, failed_settle_forgets_the_staged)
{
        pid_t pid = fork();
        if (pid == 0) {
                struct km_spool_opts o = { .path = path, .max_bytes = 1 << 20, .wake = nowake };
                struct km_spool *sp = NULL;
                char logp[160], got[8][32];
                struct stat st;
                struct rlimit was, lim;
                if (km_spool_open(&sp, &o) < 0)
                        _exit(2);
                km_spool_set_loop_thread(sp);
                struct km_msg m = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = "s/x",
                                    .payload = "before", .len = 6 };
                if (km_spool_push(sp, &m) < 0)
                        _exit(3);
                snprintf(logp, sizeof(logp), "%s-ingest.0", path);
                signal(SIGXFSZ, SIG_IGN);
                if (stat(logp, &st) < 0 || getrlimit(RLIMIT_FSIZE, &was) < 0)
                        _exit(4);
                lim = was;
                lim.rlim_cur = (rlim_t)st.st_size;
                if (setrlimit(RLIMIT_FSIZE, &lim) < 0)
                        _exit(5);
                km_spool_defer_sync(sp);
                m.payload = "lost-a", m.len = 6;
                if (km_spool_push(sp, &m) < 0)
                        _exit(6);
                m.payload = "lost-b";
                if (km_spool_push(sp, &m) < 0)
                        _exit(7);
                if (km_spool_settle(sp) >= 0)
                        _exit(8); /* the write had to fail */
                if (setrlimit(RLIMIT_FSIZE, &was) < 0)
                        _exit(9);
                /* The storage fault refuses pushes until its probe (once a second, from
                 * the loop's commit) finds the log writable again. */
                struct km_spool_stats ss;
                km_spool_stats(sp, &ss);
                if (ss.storage_err != -EFBIG || !strstr(ss.storage_why, "ingest.0") || ss.storage_faults != 1)
                        _exit(12);
                m.payload = "refused", m.len = 7;
                if (km_spool_push(sp, &m) != -EFBIG)
                        _exit(13);
                usleep(1100 * 1000);
                km_spool_commit(sp);
                km_spool_stats(sp, &ss);
                if (ss.storage_err != 0 || ss.storage_why[0] || ss.refused_storage != 1)
                        _exit(14);
                m.payload = "after", m.len = 5;
                if (km_spool_push(sp, &m) < 0)
                        _exit(10);
                struct km_msg q;
                int n = 0;
                for (uint64_t after = 0; n < 8 && km_spool_next(sp, KM_DIR_UP, 4, after, &q) == 1; after = q.id)
                        snprintf(got[n++], 32, "%.*s", (int)q.len, (const char *)q.payload);
                if (n != 2 || strcmp(got[0], "before") != 0 || strcmp(got[1], "after") != 0)
                        _exit(11); /* the staged ones would be forwarded, and again on resend */
                _exit(0);
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child step %d failed", WEXITSTATUS(status));
        struct km_spool *sp = open_spool(1 << 20);
        char got[8][32];
        cr_assert_eq(drain(sp, 4, got, 8, false), 2);
        cr_assert_str_eq(got[0], "before");
        cr_assert_str_eq(got[1], "after");
        km_spool_close(sp);
}

Test(spool, ids_survive_restart)
{
        struct km_spool *sp = open_spool(1 << 20);
        uint64_t a = push(sp, 4, "s/x", "1", NULL, 0, true);
        km_spool_close(sp);
        sp = open_spool(1 << 20);
        uint64_t b = push(sp, 4, "s/x", "2", NULL, 0, true);
        cr_assert_gt(b, a);
        km_spool_close(sp);
}

Test(spool, coalesce_in_memory_and_in_sqlite)
{
        struct km_spool *sp = open_spool(1 << 20);
        char got[8][32];
        push(sp, 2, "pos/u1", "p1", "position|pos/u1", 0, true);
        push(sp, 2, "pos/u2", "q1", "position|pos/u2", 0, true);
        cr_assert_eq(km_spool_checkpoint(sp), 0);
        push(sp, 2, "pos/u1", "p2", "position|pos/u1", 0, true);
        push(sp, 2, "pos/u1", "p3", "position|pos/u1", 0, true);
        cr_assert_eq(km_spool_checkpoint(sp), 0);
        cr_assert_eq(drain(sp, 2, got, 8, false), 2);
        cr_assert_str_eq(got[0], "q1");
        cr_assert_str_eq(got[1], "p3");
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.coalesced, 2);
        km_spool_close(sp);
}

Test(spool, ttl_expiry)
{
        struct km_spool *sp = open_spool(1 << 20);
        char got[8][32];
        push(sp, 4, "s/x", "old", NULL, km_now_ms() - 1, true);
        push(sp, 4, "s/x", "fresh", NULL, km_now_ms() + 60000, true);
        push(sp, 4, "s/x", "old2", NULL, km_now_ms() - 1, true);
        cr_assert_eq(km_spool_checkpoint(sp), 0);
        push(sp, 4, "s/x", "old3", NULL, km_now_ms() - 1, true);
        cr_assert_eq(km_spool_expire(sp, km_now_ms()), 0);
        cr_assert_eq(drain(sp, 4, got, 8, false), 1);
        cr_assert_str_eq(got[0], "fresh");
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.expired, 3);
        cr_assert_eq(st.depth[KM_DIR_UP], 1);
        km_spool_close(sp);
}

/* Expiry is decided on the clock that stamped the messages (GNSS time while the
 * system clock is unsynchronised), not on the system clock: stamped in 2019 with a
 * day to live, they live a day of that clock, in memory and in SQLite alike. */
static int64_t clock_2019 = 1555029624000LL; /* 2019-04-12T00:40:24Z */
static int64_t fixed_clock(void *ud)
{
        return *(int64_t *)ud;
}

Test(spool, ttl_on_the_stamping_clock)
{
        struct km_spool_opts o = { .path = path, .max_bytes = 1 << 20, .sync_interval_ms = 20, .wake = nowake,
                                   .now = fixed_clock, .now_ud = &clock_2019 };
        struct km_spool *sp = NULL;
        char got[8][32];
        cr_assert_eq(km_spool_open(&sp, &o), 0);
        push(sp, 4, "s/x", "in-sqlite", NULL, clock_2019 + 86400000, true);
        cr_assert_eq(km_spool_checkpoint(sp), 0);
        push(sp, 4, "s/x", "in-memory", NULL, clock_2019 + 86400000, true);
        cr_assert_eq(drain(sp, 4, got, 8, false), 2, "nothing expired a day after 2019 by the system clock");
        clock_2019 += 86400000; /* the stamping clock reaches the expiry */
        cr_assert_eq(drain(sp, 4, got, 8, false), 0);
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.expired, 2);
        km_spool_close(sp);
}

/* Full: the lowest droppable priority goes first, oldest first; alerts never. */
Test(spool, space_policy)
{
        char big[201];
        memset(big, 'x', 200);
        big[200] = 0;
        /* 200 payload + 3 topic + 48 overhead = 251 bytes a message; room for 20. */
        struct km_spool *sp = open_spool(20 * 251);
        for (int i = 0; i < 10; i++)
                push(sp, 0, "a/x", big, NULL, 0, false);
        for (int i = 0; i < 10; i++)
                push(sp, 3, "s/x", big, NULL, 0, true);
        for (int i = 0; i < 10; i++)
                push(sp, 4, "t/x", big, NULL, 0, true);
        cr_assert_eq(km_spool_checkpoint(sp), 0);
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.dropped, 10);
        cr_assert_eq(st.depth_prio[KM_DIR_UP][0], 10);
        cr_assert_eq(st.depth_prio[KM_DIR_UP][3], 10);
        cr_assert_eq(st.depth_prio[KM_DIR_UP][4], 0);
        cr_assert_leq(st.bytes, 20 * 251);
        /* More alerts: status goes next, the alerts all stay. */
        for (int i = 0; i < 5; i++)
                push(sp, 0, "a/x", big, NULL, 0, false);
        cr_assert_eq(km_spool_checkpoint(sp), 0);
        km_spool_stats(sp, &st);
        cr_assert_eq(st.dropped, 15);
        cr_assert_eq(st.depth_prio[KM_DIR_UP][0], 15);
        cr_assert_eq(st.depth_prio[KM_DIR_UP][3], 5);
        km_spool_close(sp);
}

Test(spool, damaged_file_moved_aside)
{
        struct km_spool *sp = open_spool(1 << 20);
        push(sp, 4, "s/x", "before", NULL, 0, true);
        km_spool_close(sp);
        FILE *f = fopen(path, "r+");
        cr_assert_not_null(f);
        fseek(f, 100, SEEK_SET);
        for (int i = 0; i < 4000; i++)
                fputc(0xA5, f);
        fclose(f);
        sp = open_spool(1 << 20);
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.moved_aside, 1);
        uint64_t id = push(sp, 4, "s/x", "after", NULL, 0, true);
        cr_assert_gt(id, 0);
        char got[4][32];
        cr_assert_eq(drain(sp, 4, got, 4, false), 1);
        cr_assert_str_eq(got[0], "after");
        km_spool_close(sp);
        char sub[160];
        snprintf(sub, sizeof(sub), "%s/sub", dir);
        DIR *d = opendir(sub);
        struct dirent *e;
        int aside = 0;
        while ((e = readdir(d)))
                aside += strstr(e->d_name, "spool.db.damaged-") != NULL && !strchr(e->d_name + 17, '-');
        closedir(d);
        cr_assert_eq(aside, 1, "the damaged file is kept for inspection");
}

/* One kuimen per spool: a second open is refused before it touches anything, and the
 * first goes on with its backlog. */
Test(spool, second_open_refused)
{
        struct km_spool *sp = open_spool(1 << 20);
        push(sp, 4, "s/x", "mine", NULL, 0, true);
        struct km_spool_opts o = { .path = path, .max_bytes = 1 << 20, .wake = nowake };
        struct km_spool *two = NULL;
        cr_assert_eq(km_spool_open(&two, &o), -EBUSY);
        cr_assert_null(two);
        char got[4][32];
        cr_assert_eq(drain(sp, 4, got, 4, false), 1);
        cr_assert_str_eq(got[0], "mine");
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.moved_aside, 0);
        km_spool_close(sp);
        /* The lock went with the first: the spool opens again, message and all. */
        sp = open_spool(1 << 20);
        cr_assert_eq(drain(sp, 4, got, 4, false), 1);
        km_spool_close(sp);
}

/* A damaged file is moved aside and what can still be read of it is imported: rows on
 * both sides of a zeroed page come back. */
Test(spool, damaged_rows_imported)
{
        struct km_spool *sp = open_spool(1 << 24);
        char pl[256];
        for (int i = 0; i < 300; i++) {
                snprintf(pl, sizeof(pl), "%03d-%0200d", i, 0);
                push(sp, 4, "s/x", pl, NULL, 0, true);
        }
        cr_assert_eq(km_spool_checkpoint(sp), 0);
        km_spool_close(sp);
        FILE *f = fopen(path, "r+");
        cr_assert_not_null(f);
        cr_assert_eq(fseek(f, 9 * 4096, SEEK_SET), 0);
        for (int i = 0; i < 4096; i++)
                fputc(0, f);
        fclose(f);
        sp = open_spool(1 << 24);
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.moved_aside, 1);
        static char got[300][32];
        int n = drain(sp, 4, got, 300, false);
        cr_assert(n > 250 && n < 300, "imported %d of 300 (one page of about 15 lost)", n);
        cr_assert_str_eq(got[0], "000-000000000000000000000000000");
        cr_assert(strncmp(got[n - 1], "299-", 4) == 0, "the last row, behind the bad page, is back: %s", got[n - 1]);
        km_spool_close(sp);
}

/* A flush whose SQLite commit fails (the disk full under the WAL) keeps its batch:
 * still handed out, nothing applied, the fault shown, and once the disk has room the
 * fault's probe stores it; a restart finds every message. */
Test(spool, failed_flush_keeps_the_batch)
{
        pid_t pid = fork();
        if (pid == 0) {
                struct km_spool_opts o = { .path = path, .max_bytes = 1 << 20, .wake = nowake };
                struct km_spool *sp = NULL;
                char walp[160];
                struct stat st;
                struct rlimit was, lim;
                if (km_spool_open(&sp, &o) < 0)
                        _exit(2);
                km_spool_set_loop_thread(sp);
                for (int i = 0; i < 50; i++) {
                        char p[16];
                        snprintf(p, sizeof(p), "m%02d", i);
                        struct km_msg m = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = "s/x",
                                            .payload = p, .len = strlen(p) };
                        if (km_spool_push(sp, &m) < 0)
                                _exit(3);
                }
                snprintf(walp, sizeof(walp), "%s-wal", path);
                signal(SIGXFSZ, SIG_IGN);
                if (stat(walp, &st) < 0 || getrlimit(RLIMIT_FSIZE, &was) < 0)
                        _exit(4);
                lim = was;
                lim.rlim_cur = (rlim_t)st.st_size;
                if (setrlimit(RLIMIT_FSIZE, &lim) < 0)
                        _exit(5);
                if (km_spool_checkpoint(sp) >= 0)
                        _exit(6); /* the commit had to fail */
                struct km_spool_stats ss;
                km_spool_stats(sp, &ss);
                if (ss.storage_err == 0 || ss.depth[KM_DIR_UP] != 50)
                        _exit(7);
                struct km_msg q;
                int n = 0;
                for (uint64_t after = 0; km_spool_next(sp, KM_DIR_UP, 4, after, &q) == 1; after = q.id)
                        n++;
                if (n != 50)
                        _exit(8);
                if (setrlimit(RLIMIT_FSIZE, &was) < 0)
                        _exit(9);
                usleep(1100 * 1000);
                km_spool_commit(sp);
                km_spool_stats(sp, &ss);
                if (ss.storage_err != 0 || ss.storage_faults != 1)
                        _exit(10);
                _exit(0); /* as a kill would: the logs were emptied only after the FULL commit */
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child step %d failed", WEXITSTATUS(status));
        struct km_spool *sp = open_spool(1 << 20);
        char got[64][32];
        cr_assert_eq(drain(sp, 4, got, 64, false), 50);
        cr_assert_str_eq(got[0], "m00");
        cr_assert_str_eq(got[49], "m49");
        km_spool_close(sp);
}

/* Dead letters: a message set aside from memory or from SQLite leaves the queue (not
 * handed out, not in depth or bytes), is held across a restart, listed with why, sent
 * back at the tail under a new id that keeps its origin id, or dropped; all counted. */
Test(spool, set_aside_retry_and_drop)
{
        struct km_spool *sp = open_spool(1 << 20);
        struct km_spool_stats st0, st;
        uint64_t a = push(sp, 4, "s/a", "a", NULL, 0, true);
        uint64_t b = push(sp, 4, "s/b", "b-in-sqlite", NULL, 0, true);
        cr_assert_eq(km_spool_checkpoint(sp), 0);
        uint64_t c = push(sp, 4, "s/c", "c-pending", NULL, 0, true);
        km_spool_stats(sp, &st0);
        cr_assert_eq(km_spool_set_aside(sp, b, "too large for link up"), 0);
        cr_assert_eq(km_spool_set_aside(sp, c, "not authorized"), 0);
        cr_assert_eq(km_spool_set_aside(sp, c, "again"), -ENOENT, "a message is set aside once");
        km_spool_stats(sp, &st);
        cr_assert_eq(st.depth[KM_DIR_UP], 1);
        cr_assert_eq(st.set_aside, 2);
        cr_assert_eq(st.dead, 2);
        cr_assert_eq(st.bytes, st0.bytes - (48 + 3 + 11) - (48 + 3 + 9), "held bytes are not the queue's");
        char got[8][32];
        cr_assert_eq(drain(sp, 4, got, 8, false), 1);
        cr_assert_str_eq(got[0], "a");
        (void)a;
        /* Held across a restart, not replayed from the ingest log into the queue. */
        km_spool_close(sp);
        sp = open_spool(1 << 20);
        km_spool_stats(sp, &st);
        cr_assert_eq(st.dead, 2);
        cr_assert_eq(st.depth[KM_DIR_UP], 1);
        struct km_spool_dead d[4];
        cr_assert_eq(km_spool_dead_list(sp, d, 4), 2);
        cr_assert_eq(d[0].id, b);
        cr_assert_str_eq(d[0].topic, "s/b");
        cr_assert_eq(d[0].len, 11);
        cr_assert_str_eq(d[0].why, "too large for link up");
        cr_assert_eq(d[1].id, c);
        cr_assert_str_eq(d[1].why, "not authorized");
        cr_assert_gt(d[1].at_ms, 0);
        /* Back at the tail, under a new id; its origin id is the old one. */
        cr_assert_eq(km_spool_dead_retry(sp, b, NULL), 1);
        cr_assert_eq(km_spool_dead_retry(sp, b, NULL), 0, "gone from the dead letters");
        struct km_msg m;
        cr_assert_eq(km_spool_next(sp, KM_DIR_UP, 4, 0, &m), 1);
        cr_assert_str_eq(m.topic, "s/a");
        cr_assert_eq(km_spool_next(sp, KM_DIR_UP, 4, m.id, &m), 1);
        cr_assert_str_eq(m.topic, "s/b");
        cr_assert_gt(m.id, c);
        cr_assert_eq(m.oid, b);
        cr_assert_eq(m.len, 11);
        cr_assert_eq(km_spool_dead_drop(sp, 0), 1);
        km_spool_stats(sp, &st);
        cr_assert_eq(st.dead, 0);
        cr_assert_eq(st.dead_retried, 1);
        cr_assert_eq(st.dead_dropped, 1);
        cr_assert_eq(st.depth[KM_DIR_UP], 2);
        cr_assert_eq(km_spool_dead_list(sp, d, 4), 0);
        km_spool_close(sp);
}

/* A set-aside message with a coalesce key sent back goes to the tail, where it would
 * replace a newer value on its key (latest wins by order): when one is queued, in
 * SQLite or still in memory, it is dropped instead, counted as coalesced. */
Test(spool, a_set_aside_value_does_not_replace_a_newer_one)
{
        struct km_spool *sp = open_spool(1 << 20);
        struct km_spool_stats st0, st;
        uint64_t a = push(sp, 4, "pos/a", "a-old", "pos/a", 0, true);
        uint64_t b = push(sp, 4, "pos/b", "b-old", "pos/b", 0, true);
        uint64_t c = push(sp, 4, "pos/c", "c-only", "pos/c", 0, true);
        cr_assert_eq(km_spool_set_aside(sp, a, "too large"), 0);
        cr_assert_eq(km_spool_set_aside(sp, b, "too large"), 0);
        cr_assert_eq(km_spool_set_aside(sp, c, "too large"), 0);
        usleep(3000); /* created a later millisecond */
        push(sp, 4, "pos/a", "a-new", "pos/a", 0, true);
        cr_assert_eq(km_spool_checkpoint(sp), 0); /* a-new in SQLite */
        push(sp, 4, "pos/b", "b-new", "pos/b", 0, true); /* b-new in memory */
        km_spool_stats(sp, &st0);
        int sup = -1;
        cr_assert_eq(km_spool_dead_retry(sp, a, &sup), 0);
        cr_assert_eq(sup, 1, "a newer value in SQLite");
        cr_assert_eq(km_spool_dead_retry(sp, b, &sup), 0);
        cr_assert_eq(sup, 1, "a newer value in memory");
        cr_assert_eq(km_spool_dead_retry(sp, 0, &sup), 1, "nothing newer on pos/c: sent back");
        cr_assert_eq(sup, 0);
        km_spool_stats(sp, &st);
        cr_assert_eq(st.dead, 0);
        cr_assert_eq(st.dead_retried, st0.dead_retried + 1);
        cr_assert_eq(st.coalesced, st0.coalesced + 2);
        char got[8][32];
        cr_assert_eq(drain(sp, 4, got, 8, false), 3);
        cr_assert_str_eq(got[0], "a-new");
        cr_assert_str_eq(got[1], "b-new");
        cr_assert_str_eq(got[2], "c-only");
        km_spool_close(sp);
}

/* A message refused on arrival goes straight to the dead letters, never to the queue:
 * held across a restart, listed, never sent back (retry of it: -EPERM; retry all leaves
 * it), dropped on request. */
Test(spool, put_aside_is_held_never_queued)
{
        struct km_spool *sp = open_spool(1 << 20);
        struct km_spool_stats st;
        uint64_t a = push(sp, 4, "s/a", "a", NULL, 0, true);
        struct km_msg r = { .created_ms = 1, .dir = KM_DIR_DOWN, .prio = 1, .qos = 1, .cls = "command",
                            .topic = "cmd/\\xc0", .payload = "evacuate", .len = 8, .origin = "county", .oid = 77 };
        cr_assert_eq(km_spool_put_aside(sp, &r, "refused on arrival over sat from county: not UTF-8"), 0);
        cr_assert_gt(r.id, a, "an id of the spool's sequence");
        cr_assert(r.flags & KM_MSG_REFUSED);
        km_spool_close(sp);
        sp = open_spool(1 << 20);
        km_spool_stats(sp, &st);
        cr_assert_eq(st.dead, 1);
        cr_assert_eq(st.set_aside, 0, "set_aside counts this run's");
        cr_assert_eq(st.depth[KM_DIR_DOWN], 0, "never queued");
        struct km_spool_dead d[2];
        cr_assert_eq(km_spool_dead_list(sp, d, 2), 1);
        cr_assert_eq(d[0].id, r.id);
        cr_assert_eq(d[0].dir, KM_DIR_DOWN);
        cr_assert_str_eq(d[0].topic, "cmd/\\xc0");
        cr_assert_str_eq(d[0].cls, "command");
        cr_assert_eq(d[0].len, 8);
        cr_assert_str_eq(d[0].why, "refused on arrival over sat from county: not UTF-8");
        cr_assert_eq(km_spool_dead_retry(sp, r.id, NULL), -EPERM);
        cr_assert_eq(km_spool_dead_retry(sp, 0, NULL), 0);
        km_spool_stats(sp, &st);
        cr_assert_eq(st.dead, 1);
        cr_assert_eq(st.depth[KM_DIR_DOWN], 0);
        uint64_t b = push(sp, 4, "s/b", "b", NULL, 0, true);
        cr_assert_gt(b, r.id, "the sequence goes on past it");
        cr_assert_eq(km_spool_dead_drop(sp, r.id), 1);
        km_spool_stats(sp, &st);
        cr_assert_eq(st.dead, 0);
        km_spool_close(sp);
}

/* A kill right after a set-aside from memory: the message is held or queued again,
 * never lost. */
Test(spool, set_aside_survives_a_kill)
{
        pid_t pid = fork();
        if (pid == 0) {
                struct km_spool_opts o = { .path = path, .max_bytes = 1 << 20, .wake = nowake };
                struct km_spool *sp = NULL;
                if (km_spool_open(&sp, &o) < 0)
                        _exit(2);
                struct km_msg m = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = "s/x",
                                    .payload = "big", .len = 3 };
                if (km_spool_push(sp, &m) < 0 || km_spool_set_aside(sp, m.id, "too large") < 0)
                        _exit(3);
                km_spool_commit(sp);
                _exit(0);
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        struct km_spool *sp = open_spool(1 << 20);
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        /* Uncommitted at the kill: the ingest log brings it back to the queue. */
        cr_assert(st.dead + st.depth[KM_DIR_UP] >= 1 && st.dead + st.depth[KM_DIR_UP] <= 2, "held %llu queued %llu",
                  (unsigned long long)st.dead, (unsigned long long)st.depth[KM_DIR_UP]);
        km_spool_close(sp);
}

/* A set-aside whose commit fails (the disk full under the WAL) changes nothing: the
 * message stays queued and counted, nothing is held; once the disk has room it is set
 * aside. */
Test(spool, set_aside_that_cannot_commit_changes_nothing)
{
        pid_t pid = fork();
        if (pid == 0) {
                struct km_spool_opts o = { .path = path, .max_bytes = 1 << 20, .wake = nowake };
                struct km_spool *sp = NULL;
                char walp[160];
                struct stat st;
                struct rlimit was, lim;
                uint64_t ids[20];
                if (km_spool_open(&sp, &o) < 0)
                        _exit(2);
                km_spool_set_loop_thread(sp);
                for (int i = 0; i < 20; i++) {
                        char p[16];
                        snprintf(p, sizeof(p), "m%02d", i);
                        struct km_msg m = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = "s/x",
                                            .payload = p, .len = strlen(p) };
                        if (km_spool_push(sp, &m) < 0)
                                _exit(3);
                        ids[i] = m.id;
                }
                if (km_spool_checkpoint(sp) < 0) /* m00..m19 in SQLite */
                        _exit(4);
                struct km_msg m = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = "s/x",
                                    .payload = "pending", .len = 7 };
                if (km_spool_push(sp, &m) < 0)
                        _exit(5);
                snprintf(walp, sizeof(walp), "%s-wal", path);
                signal(SIGXFSZ, SIG_IGN);
                if (stat(walp, &st) < 0 || getrlimit(RLIMIT_FSIZE, &was) < 0)
                        _exit(6);
                lim = was;
                lim.rlim_cur = (rlim_t)st.st_size;
                if (setrlimit(RLIMIT_FSIZE, &lim) < 0)
                        _exit(7);
                struct km_spool_stats ss;
                km_spool_stats(sp, &ss);
                uint64_t bytes = ss.bytes;
                if (km_spool_set_aside(sp, m.id, "x") >= 0 || km_spool_set_aside(sp, ids[3], "x") >= 0)
                        _exit(8); /* both commits had to fail */
                km_spool_stats(sp, &ss);
                if (ss.dead || ss.set_aside || ss.depth[KM_DIR_UP] != 21 || ss.bytes != bytes)
                        _exit(9);
                struct km_msg q;
                int n = 0;
                for (uint64_t after = 0; km_spool_next(sp, KM_DIR_UP, 4, after, &q) == 1; after = q.id)
                        n++;
                if (n != 21)
                        _exit(10);
                if (setrlimit(RLIMIT_FSIZE, &was) < 0)
                        _exit(11);
                if (km_spool_set_aside(sp, m.id, "x") < 0 || km_spool_set_aside(sp, ids[3], "x") < 0)
                        _exit(12);
                km_spool_stats(sp, &ss);
                if (ss.dead != 2 || ss.set_aside != 2 || ss.depth[KM_DIR_UP] != 19)
                        _exit(13);
                km_spool_close(sp);
                _exit(0);
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child step %d failed", WEXITSTATUS(status));
        struct km_spool *sp = open_spool(1 << 20);
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.dead, 2);
        cr_assert_eq(st.depth[KM_DIR_UP], 19);
        km_spool_close(sp);
}
