/* SPDX-License-Identifier: MIT */
/* Spool benchmark in-process: km_spool_push rate (batch and always sync, 1 and 4 threads), and the drain of a backlog held in SQLite. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "gateway/spool.h"

#define PAYLOAD_LEN 200
#define TOPICS 10

/* One pusher configuration and what it measured. */
struct run {
        bool always;
        int threads;
        double secs, rate, fsyncs_per_msg, us_per_push;
        uint64_t pushed, fsyncs;
};

/* The loop thread of the daemon, reduced to what the spool needs: commit when woken,
 * and at least every 100 ms (the daemon's housekeeping tick), so that pending messages
 * move into SQLite exactly as they do in kuimen. Without it, pushers would stall at the
 * spool's hard cap on pending messages and we would measure the back-pressure. */
struct loop {
        struct km_spool *sp;
        pthread_mutex_t mu;
        pthread_cond_t cv;
        bool woken, stop;
        int errors;
};

struct pusher {
        struct km_spool *sp;
        atomic_bool *stop;
        int index;
        uint64_t pushed;
        int64_t busy_ns;
        uint64_t refused; /* -EAGAIN: pending full until the loop's flush */
        int errors;
};

static int64_t mono_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void wake(void *ud)
{
        struct loop *l = ud;
        pthread_mutex_lock(&l->mu);
        l->woken = true;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
}

static void *loop_main(void *arg)
{
        struct loop *l = arg;
        pthread_mutex_lock(&l->mu);
        while (!l->stop) {
                if (!l->woken) {
                        struct timespec until;
                        clock_gettime(CLOCK_REALTIME, &until);
                        until.tv_nsec += 100 * 1000000L;
                        if (until.tv_nsec >= 1000000000L) {
                                until.tv_sec++;
                                until.tv_nsec -= 1000000000L;
                        }
                        pthread_cond_timedwait(&l->cv, &l->mu, &until);
                }
                l->woken = false;
                pthread_mutex_unlock(&l->mu);
                if (km_spool_commit(l->sp) < 0)
                        l->errors++;
                pthread_mutex_lock(&l->mu);
        }
        pthread_mutex_unlock(&l->mu);
        return NULL;
}

/* Pushes 200-byte telemetry messages as kuimen's ingest does, until told to stop. */
static void *pusher_main(void *arg)
{
        struct pusher *p = arg;
        char payload[PAYLOAD_LEN], topic[32];
        memset(payload, 'x', sizeof(payload));
        while (!atomic_load_explicit(p->stop, memory_order_relaxed)) {
                snprintf(topic, sizeof(topic), "sensors/t%d", (int)(p->pushed % TOPICS));
                snprintf(payload, 32, "%02d:%012llu", p->index, (unsigned long long)p->pushed);
                int64_t now = km_now_ms();
                struct km_msg m = { .created_ms = now, .expires_ms = now + 86400000, .dir = KM_DIR_UP, .prio = 4,
                                    .qos = 1, .flags = KM_MSG_DROPPABLE, .cls = "telemetry", .topic = topic,
                                    .ckey = "", .payload = payload, .len = sizeof(payload) };
                int64_t t0 = mono_ns();
                int rc = km_spool_push(p->sp, &m);
                p->busy_ns += mono_ns() - t0;
                if (rc == -EAGAIN) {
                        /* Pending is full until the loop's next flush: a pusher that is
                         * not the loop is refused, as Paho's callback is, and comes again. */
                        p->refused++;
                        sched_yield();
                        continue;
                }
                if (rc < 0) {
                        if (p->errors++ == 0)
                                fprintf(stderr, "bench_spool: push: %s\n", strerror(-rc));
                        return NULL;
                }
                p->pushed++;
        }
        return NULL;
}

static const char *fs_name(const char *dir)
{
        struct statfs s;
        if (statfs(dir, &s) < 0)
                return "?";
        switch ((unsigned long)s.f_type) {
        case 0xEF53UL:
                return "ext4";
        case 0x58465342UL:
                return "xfs";
        case 0x9123683EUL:
                return "btrfs";
        case 0x01021994UL:
                return "tmpfs (fsync is free here: sync=always figures mean little)";
        default:
                return "other";
        }
}

/* One configuration on a fresh spool in dir; returns 0 or -1 on a broken setup. */
static int run_one(struct run *r, const char *dir, double secs)
{
        char path[512];
        struct km_spool *sp = NULL;
        struct loop l = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
        struct pusher ps[8];
        pthread_t lt, pt[8];
        atomic_bool stop = false;
        struct km_spool_stats st;
        int rc;

        snprintf(path, sizeof(path), "%s/%s-%d/spool.db", dir, r->always ? "always" : "batch", r->threads);
        /* max_bytes far above what a run writes: the space policy is not what we measure. */
        struct km_spool_opts o = { .path = path, .max_bytes = (int64_t)16 << 30, .sync_always = r->always,
                                   .sync_interval_ms = 50, .wake = wake, .wake_ud = &l };
        if ((rc = km_spool_open(&sp, &o)) < 0) {
                fprintf(stderr, "bench_spool: open %s: %s\n", path, strerror(-rc));
                return -1;
        }
        l.sp = sp;
        pthread_create(&lt, NULL, loop_main, &l);
        int64_t t0 = mono_ns();
        for (int i = 0; i < r->threads; i++) {
                ps[i] = (struct pusher){ .sp = sp, .stop = &stop, .index = i };
                pthread_create(&pt[i], NULL, pusher_main, &ps[i]);
        }
        struct timespec d = { (time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9) };
        while (nanosleep(&d, &d) < 0 && errno == EINTR)
                ;
        atomic_store(&stop, true);
        int errors = 0;
        int64_t busy = 0;
        for (int i = 0; i < r->threads; i++) {
                pthread_join(pt[i], NULL);
                r->pushed += ps[i].pushed;
                busy += ps[i].busy_ns;
                errors += ps[i].errors;
        }
        r->secs = (double)(mono_ns() - t0) / 1e9;
        /* The counters before close: close's own checkpoint fsyncs are not ingest's. */
        pthread_mutex_lock(&l.mu);
        l.stop = true;
        pthread_cond_signal(&l.cv);
        pthread_mutex_unlock(&l.mu);
        pthread_join(lt, NULL);
        km_spool_stats(sp, &st);
        km_spool_close(sp);
        r->fsyncs = st.fsyncs;
        r->rate = (double)r->pushed / r->secs;
        r->fsyncs_per_msg = r->pushed ? (double)st.fsyncs / (double)r->pushed : 0;
        r->us_per_push = r->pushed ? (double)busy / 1e3 / (double)r->pushed : 0;
        if (st.pushed != r->pushed || errors || l.errors) {
                fprintf(stderr, "bench_spool: %llu pushed by the threads, %llu counted by the spool, %d errors\n",
                        (unsigned long long)r->pushed, (unsigned long long)st.pushed, errors + l.errors);
                return -1;
        }
        return 0;
}

static void nowake(void *ud)
{
        (void)ud;
}

static double cpu_s(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The spool's side of draining a backlog that lives in SQLite, as the daemon's loop
 * does it: each turn acknowledges a window's worth of what it handed out, hands out as
 * many next ones and commits. CPU time, so a busy machine does not move the figure. */
static int run_drain(const char *dir, long n, double *us_per_msg, double *rate)
{
        char path[512];
        struct km_spool *sp = NULL;
        uint8_t payload[PAYLOAD_LEN];
        int rc;

        snprintf(path, sizeof(path), "%s/drain/spool.db", dir);
        struct km_spool_opts o = { .path = path, .max_bytes = (int64_t)16 << 30, .sync_interval_ms = 50,
                                   .wake = nowake };
        if ((rc = km_spool_open(&sp, &o)) < 0) {
                fprintf(stderr, "bench_spool: open %s: %s\n", path, strerror(-rc));
                return -1;
        }
        km_spool_set_loop_thread(sp);
        memset(payload, 'x', sizeof(payload));
        for (long i = 0; i < n; i++) {
                char topic[32];
                snprintf(topic, sizeof(topic), "sensors/t%ld", i % TOPICS);
                struct km_msg m = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = topic,
                                    .payload = payload, .len = sizeof(payload), .created_ms = km_now_ms() };
                if ((rc = km_spool_push(sp, &m)) < 0 || (i % 4096 == 4095 && (rc = km_spool_commit(sp)) < 0))
                        break;
        }
        if (rc >= 0)
                rc = km_spool_checkpoint(sp); /* the whole backlog in SQLite, as after an outage */
        enum { WINDOW = 32 };
        uint64_t ids[WINDOW], after = 0;
        long done = 0;
        int held = 0;
        double c0 = cpu_s();
        int64_t t0 = mono_ns();
        while (rc >= 0) {
                for (int i = 0; i < held && rc >= 0; i++)
                        rc = km_spool_ack(sp, ids[i]);
                done += held;
                held = 0;
                struct km_msg m;
                while (held < WINDOW && rc >= 0 && (rc = km_spool_next(sp, KM_DIR_UP, 4, after, &m)) > 0)
                        after = ids[held++] = m.id;
                if (rc >= 0)
                        rc = km_spool_commit(sp);
                if (!held)
                        break;
        }
        double secs = (double)(mono_ns() - t0) / 1e9, cpu = cpu_s() - c0;
        km_spool_close(sp);
        if (rc < 0 || done != n) {
                fprintf(stderr, "bench_spool: drain handed out %ld of %ld (%s)\n", done, n, rc < 0 ? strerror(-rc) : "ok");
                return -1;
        }
        *us_per_msg = cpu * 1e6 / (double)n;
        *rate = (double)n / secs;
        return 0;
}

static void usage(void)
{
        fprintf(stderr, "usage: bench_spool [--short] [--seconds S]\n"
                        "  spool files go to a fresh directory under $KM_BENCH_DIR (default /var/tmp)\n");
}

int main(int argc, char **argv)
{
        double secs = 5;
        char dir[300];
        const char *base = getenv("KM_BENCH_DIR") ? getenv("KM_BENCH_DIR") : "/var/tmp";
        struct run runs[] = { { .always = false, .threads = 1 }, { .always = false, .threads = 4 },
                              { .always = true, .threads = 1 }, { .always = true, .threads = 4 } };
        int failed = 0;
        long drain_n = 200000;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--short") == 0) {
                        secs = 1.5;
                        drain_n = 20000;
                } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
                        secs = atof(argv[++i]);
                } else {
                        usage();
                        return 2;
                }
        }
        snprintf(dir, sizeof(dir), "%s/km-bench-spool-XXXXXX", base);
        if (!mkdtemp(dir)) {
                fprintf(stderr, "bench_spool: mkdtemp %s: %s\n", dir, strerror(errno));
                return 1;
        }
        printf("spool ingest: %d-byte payloads, %.1f s per configuration, spool in %s (%s)\n", PAYLOAD_LEN, secs, dir,
               fs_name(dir));
        fflush(stdout);
        for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]) && !failed; i++)
                failed = run_one(&runs[i], dir, secs) < 0;
        double drain_us = 0, drain_rate = 0;
        if (!failed)
                failed = run_drain(dir, drain_n, &drain_us, &drain_rate) < 0;
        if (!getenv("KM_KEEP")) {
                char cmd[400];
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
                (void)!system(cmd);
        }
        if (failed)
                return 1;
        printf("\n%-22s %8s %12s %12s %10s %14s\n", "spool ingest", "threads", "messages", "msgs/s", "us/push",
               "fsyncs/msg");
        for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
                struct run *r = &runs[i];
                printf("%-22s %8d %12llu %12.0f %10.2f %14.5f\n",
                       r->always ? "sync=always" : "sync=batch (50 ms)", r->threads, (unsigned long long)r->pushed,
                       r->rate, r->us_per_push, r->fsyncs_per_msg);
        }
        printf("spool drain from SQLite: %ld messages, %.0f msgs/s, %.2f us CPU a message (next, ack, commit)\n",
               drain_n, drain_rate, drain_us);
        return 0;
}
