/* SPDX-License-Identifier: MIT */
/* Fault drills: a full disk, I/O errors, a damaged spool, a second instance and files kuimen cannot write, with exact counts. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/*
 * What every scenario counts, from the two ends kuimen sits between:
 *   published  sends the test publisher made to the local broker,
 *   acked      of those, what the local broker acknowledged (it holds them for kuimen's
 *              persistent session, so each one must reach the center),
 *   received   distinct readings the center's subscriber got,
 *   lost       acknowledged readings never received: must be 0,
 *   duplicated copies seen twice (same kuimen-id, or a new id): reported, bounded.
 * Readings are "r<N>" on sensors/t<N % 8>, so a bitmap of N tells what arrived.
 *
 * KM_FAULTS_SCALE (tests/drills/faults --scale N) multiplies the message counts and the
 * time a fault lasts. The expected behaviour is the one of DESIGN.md and issue 11: on
 * ENOSPC or EIO kuimen takes no more messages (no PUBACK for what it could not store),
 * keeps forwarding what it holds, answers kuimenctl and SIGTERM, logs "spool: storage:
 * <why>" rate-limited, shows "storage":"<why>" in status ("ok" when healthy) and
 * kuimen_storage_ok 0 (1) in /metrics, and resumes by itself once the fault clears.
 * Facts that are not loss are checked with cr_expect, so one run reports all that fails.
 */

#define TOPICS 8

static int scale(void)
{
        const char *s = getenv("KM_FAULTS_SCALE");
        int n = s ? atoi(s) : 1;
        return n > 0 ? n : 1;
}

struct env {
        char dir[200], state[300], logs[300], conf[300], klog[300], sock[320], spool[320], flag[300];
        const char *small; /* the tmpfs that fills: state or logs */
        int mport, cport;
        int tls_port; /* with opts tls: the center's TLS listener, kuimen's link */
        struct h_broker local, center;
        struct h_proc k;
        struct h_sub sub;
        struct h_pub pub;
        const char *const *kenv; /* more environment for kuimen */
        bool as_nobody;          /* kuimen runs as nobody:nogroup */
        bool ns;                 /* the test runs in a mount namespace of its own */
        bool state_mounted, logs_mounted;
        int next;                /* the next reading's number */
};

struct opts {
        int state_kib;       /* the spool directory on a tmpfs of this size (0: no tmpfs) */
        int logs_kib;        /* the ingest logs on a tmpfs of their own, bound into the spool directory */
        bool center_up;
        bool as_nobody;
        bool no_start;
        bool tls; /* the link to the center over TLS (h_broker_start_tls; certificates in dir) */
        const char *const *kenv;
        const char *conf; /* more config */
};

static const char *kuimen_path(void)
{
        return getenv("KM_KUIMEN") ? getenv("KM_KUIMEN") : "kuimen";
}

static void kuimen_start(struct env *e)
{
        char *argv[12];
        int n = 0;
        if (e->as_nobody) {
                argv[n++] = "setpriv";
                argv[n++] = "--reuid=nobody";
                argv[n++] = "--regid=nogroup";
                argv[n++] = "--clear-groups";
        }
        argv[n++] = (char *)kuimen_path();
        argv[n++] = "--config";
        argv[n++] = e->conf;
        argv[n] = NULL;
        h_spawn(&e->k, e->klog, argv, e->kenv);
}

static int log_lines(const char *path)
{
        FILE *f = fopen(path, "r");
        int n = 0, c, last = '\n';
        if (!f)
                return 0;
        while ((c = getc(f)) != EOF) {
                n += c == '\n';
                last = c;
        }
        fclose(f);
        return n + (last != '\n');
}

/* A private copy of the mount table, so that the tmpfs the test mounts is seen by it and
 * its children only, and goes when the test process ends. */
static void own_namespace(struct env *e)
{
        cr_assert_eq(unshare(CLONE_NEWNS), 0, "unshare(CLONE_NEWNS): %s", strerror(errno));
        cr_assert_eq(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0, "make / private: %s", strerror(errno));
        e->ns = true;
}

static void tmpfs(const char *at, int kib)
{
        char o[64];
        snprintf(o, sizeof(o), "size=%dk,mode=0755", kib);
        cr_assert_eq(mount("tmpfs", at, "tmpfs", MS_NOSUID | MS_NODEV, o), 0, "mount tmpfs at %s: %s", at, strerror(errno));
}

/* The running test's setup, for fini when an assertion ended the test early. */
static struct env *current;

static void up(struct env *e, const char *tag, const struct opts *o)
{
        char extra[1024], path[400], ctl[300];
        /* tmpfs mounts, chown and setpriv: only root can stage these faults. */
        if (geteuid() != 0)
                cr_skip_test("the fault drills need root (tmpfs mounts in a mount namespace, setpriv)");
        memset(e, 0, sizeof(*e));
        current = e;
        e->kenv = o->kenv;
        e->as_nobody = o->as_nobody;
        h_tmpdir(e->dir, sizeof(e->dir), tag);
        chmod(e->dir, 0755); /* kuimen may run as nobody */
        snprintf(e->state, sizeof(e->state), "%s/state", e->dir);
        snprintf(e->spool, sizeof(e->spool), "%s/spool.db", e->state);
        snprintf(e->logs, sizeof(e->logs), "%s/logs", e->dir);
        snprintf(e->conf, sizeof(e->conf), "%s/kuimen.conf", e->dir);
        snprintf(e->klog, sizeof(e->klog), "%s/kuimen.log", e->dir);
        snprintf(e->flag, sizeof(e->flag), "%s/eio.flag", e->dir);
        snprintf(ctl, sizeof(ctl), "%s/ctl", e->dir);
        snprintf(e->sock, sizeof(e->sock), "%s/kuimen.sock", ctl);
        cr_assert_eq(mkdir(e->state, 0755), 0);
        cr_assert_eq(mkdir(ctl, 0777), 0);
        chmod(ctl, 0777);
        if (o->as_nobody)
                cr_assert_eq(chown(e->state, 65534, 65534), 0);
        if (o->state_kib || o->logs_kib)
                own_namespace(e);
        if (o->state_kib) {
                tmpfs(e->state, o->state_kib);
                e->state_mounted = true;
                e->small = e->state;
        }
        if (o->logs_kib) {
                cr_assert_eq(mkdir(e->logs, 0755), 0);
                tmpfs(e->logs, o->logs_kib);
                if (!e->small || o->logs_kib < o->state_kib)
                        e->small = e->logs;
                e->logs_mounted = true;
                for (int i = 0; i < 2; i++) {
                        char to[400];
                        snprintf(path, sizeof(path), "%s/spool.db-ingest.%d", e->logs, i);
                        snprintf(to, sizeof(to), "%s-ingest.%d", e->spool, i);
                        h_write_text(path, "");
                        h_write_text(to, "");
                        cr_assert_eq(mount(path, to, NULL, MS_BIND, NULL), 0, "bind %s: %s", to, strerror(errno));
                }
        }
        h_broker_start(&e->local, e->dir, 0, NULL);
        e->cport = h_free_port();
        e->mport = h_free_port();
        snprintf(extra, sizeof(extra), "[node]\nlink_status = no\n[control]\nsocket = %s\n[metrics]\nlisten = 127.0.0.1:%d\n%s",
                 e->sock, e->mport, o->conf ? o->conf : "");
        if (o->tls) {
                h_make_certs(e->dir);
                while (!e->tls_port || e->tls_port == e->cport || e->tls_port == e->mport)
                        e->tls_port = h_free_port();
                h_write_conf_tls(e->conf, "north", e->dir, e->local.port, e->tls_port, "client", extra);
        } else {
                h_write_conf(e->conf, "north", e->dir, e->local.port, e->cport, extra);
        }
        chmod(e->conf, 0644);
        /* The center subscriber's session exists before any outage, as at a real center. */
        if (o->tls)
                h_broker_start_tls(&e->center, e->dir, e->cport, "server", NULL, &e->tls_port);
        else
                h_broker_start(&e->center, e->dir, e->cport, NULL);
        h_sub_start(&e->sub, e->cport, "center-sub", "kuimen/north/sensors/#", true);
        h_sleep_ms(200);
        if (!o->center_up)
                h_stop(&e->center.p, SIGTERM);
        if (!o->no_start) {
                kuimen_start(e);
                cr_assert(h_log_wait(&e->k, "ingest: connected", 10000), "kuimen did not connect to the local broker (%s)",
                          e->klog);
        }
        h_pub_start(&e->pub, e->local.port, "sensor-pub");
}

static void unmount_all(struct env *e)
{
        char path[400];
        if (e->logs_mounted) {
                for (int i = 0; i < 2; i++) {
                        snprintf(path, sizeof(path), "%s-ingest.%d", e->spool, i);
                        umount2(path, MNT_DETACH);
                }
                umount2(e->logs, MNT_DETACH);
        }
        if (e->state_mounted)
                umount2(e->state, MNT_DETACH);
        e->logs_mounted = e->state_mounted = false;
}

static void down(struct env *e)
{
        h_pub_stop(&e->pub);
        if (e->k.pid)
                h_stop(&e->k, SIGTERM);
        h_sub_stop(&e->sub);
        h_stop(&e->local.p, SIGTERM);
        if (e->center.p.pid)
                h_stop(&e->center.p, SIGTERM);
        unmount_all(e);
        h_cleanup(e->dir);
        current = NULL;
}

/* A failed assertion leaves the test before down(): the processes would die with the
 * test process anyway, but the directory would stay. */
static void fini(void)
{
        struct env *e = current;
        if (!e)
                return;
        h_stop(&e->k, SIGKILL);
        h_stop(&e->local.p, SIGKILL);
        h_stop(&e->center.p, SIGKILL);
        unmount_all(e);
        h_cleanup(e->dir);
        current = NULL;
}

/* ---- publishing and counting ------------------------------------------------------- */

static void publish(struct env *e, int count, int per_sec)
{
        int64_t start = h_now_ms();
        for (int j = 0; j < count; j++) {
                int i = e->next++;
                char topic[32], payload[32];
                snprintf(topic, sizeof(topic), "sensors/t%d", i % TOPICS);
                snprintf(payload, sizeof(payload), "r%d", i);
                while (h_pub_send(&e->pub, topic, payload) != 0)
                        h_sleep_ms(5);
                if (per_sec) {
                        int64_t wait = start + (int64_t)(j + 1) * 1000 / per_sec - h_now_ms();
                        if (wait > 0)
                                h_sleep_ms((int)wait);
                }
        }
}

struct stream {
        struct env *e;
        int count, rate;
        atomic_bool done;
        pthread_t t;
};

static void *stream_main(void *arg)
{
        struct stream *s = arg;
        publish(s->e, s->count, s->rate);
        atomic_store(&s->done, true);
        return NULL;
}

static void stream_start(struct stream *s, struct env *e, int count, int rate)
{
        s->e = e, s->count = count, s->rate = rate;
        atomic_store(&s->done, false);
        cr_assert_eq(pthread_create(&s->t, NULL, stream_main, s), 0);
}

struct tally {
        size_t published, acked, failed, received, lost, dups;
};

static struct tally tally(struct env *e)
{
        struct tally t = { 0 };
        size_t n = (size_t)e->next + 1;
        uint8_t *got = calloc(n, 1);
        pthread_mutex_lock(&e->sub.mu);
        for (size_t i = 0; i < e->sub.n; i++) {
                unsigned long r;
                if (sscanf(e->sub.rx[i].payload, "r%lu", &r) == 1 && r < n && !got[r]) {
                        got[r] = 1;
                        t.received++;
                }
        }
        t.dups = e->sub.dups + e->sub.redelivered;
        pthread_mutex_unlock(&e->sub.mu);
        pthread_mutex_lock(&e->pub.mu);
        t.published = e->pub.sent;
        t.acked = e->pub.acked;
        t.failed = e->pub.failed;
        for (size_t i = 0; i < e->pub.acked; i++) {
                unsigned long r;
                if (sscanf(e->pub.acked_payloads[i], "r%lu", &r) == 1 && r < n && !got[r])
                        t.lost++;
        }
        pthread_mutex_unlock(&e->pub.mu);
        free(got);
        return t;
}

/* Waits until every acknowledged reading arrived, or nothing new came for quiet_ms. */
static struct tally wait_all(struct env *e, int quiet_ms, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms, since = h_now_ms();
        size_t last = (size_t)-1;
        struct tally t;
        for (;;) {
                t = tally(e);
                if (t.lost == 0 && t.acked == t.published)
                        break;
                if (t.received != last)
                        last = t.received, since = h_now_ms();
                if (h_now_ms() > until || h_now_ms() - since > quiet_ms)
                        break;
                h_sleep_ms(200);
        }
        h_sleep_ms(500); /* late duplicates */
        return tally(e);
}

static void report(const char *name, const struct tally *t)
{
        cr_log_info("faults: %s: published %zu, acknowledged by the local broker %zu, received at the center %zu, "
                    "lost %zu, duplicated %zu",
                    name, t->published, t->acked, t->received, t->lost, t->dups);
        fprintf(stderr,
                "faults: %s: published %zu, acknowledged by the local broker %zu, received at the center %zu, lost %zu, "
                "duplicated %zu\n",
                name, t->published, t->acked, t->received, t->lost, t->dups);
}

/* ---- kuimenctl and /metrics -------------------------------------------------------- */

/* kuimenctl --socket S args, bounded by 10 s; its output in out, its time in *ms. */
static int ctl(struct env *e, const char *args, char *out, size_t n, int64_t *ms)
{
        char cmd[1024];
        size_t len = 0;
        snprintf(cmd, sizeof(cmd), "timeout 10 '%s' --socket '%s' %s 2>&1", h_ctl_path(), e->sock, args);
        int64_t t0 = h_now_ms();
        FILE *f = popen(cmd, "r");
        cr_assert(f, "popen %s", cmd);
        while (len + 1 < n && !feof(f) && !ferror(f))
                len += fread(out + len, 1, n - 1 - len, f);
        out[len] = '\0';
        int st = pclose(f);
        if (ms)
                *ms = h_now_ms() - t0;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const cJSON *jfind(const cJSON *j, const char *key)
{
        for (const cJSON *c = j ? j->child : NULL; c; c = c->next) {
                if (c->string && strcmp(c->string, key) == 0)
                        return c;
                const cJSON *r = jfind(c, key);
                if (r)
                        return r;
        }
        return NULL;
}

struct status {
        int rc;
        int64_t ms;
        char storage[160]; /* "" when status has no "storage" */
        long pid;
        double depth, moved_aside, dropped;
};

static struct status status(struct env *e)
{
        static char out[1 << 17];
        struct status s = { .pid = -1, .depth = -1, .moved_aside = -1, .dropped = -1 };
        s.rc = ctl(e, "status --json", out, sizeof(out), &s.ms);
        cJSON *r = s.rc == 0 ? cJSON_Parse(out) : NULL;
        if (!r) {
                snprintf(s.storage, sizeof(s.storage), "(no answer: exit %d: %.100s)", s.rc, out);
                return s;
        }
        const cJSON *v = jfind(r, "storage");
        if (v && cJSON_IsString(v))
                snprintf(s.storage, sizeof(s.storage), "%s", v->valuestring);
        else if (v)
                snprintf(s.storage, sizeof(s.storage), "(not a string)");
        if ((v = cJSON_GetObjectItemCaseSensitive(r, "pid")) && cJSON_IsNumber(v))
                s.pid = (long)v->valuedouble;
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(r, "spool");
        if ((v = cJSON_GetObjectItemCaseSensitive(sp, "depth")) && cJSON_IsNumber(v))
                s.depth = v->valuedouble;
        if ((v = jfind(r, "moved_aside")) && cJSON_IsNumber(v))
                s.moved_aside = v->valuedouble;
        if ((v = jfind(r, "dropped")) && cJSON_IsNumber(v))
                s.dropped = v->valuedouble;
        cJSON_Delete(r);
        return s;
}

/* kuimen_storage_ok from /metrics: 0 or 1, -1 when the series is absent, -2 when
 * /metrics does not answer within 3 s. */
static double storage_ok_metric(struct env *e)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)e->mport),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct timeval tv = { 3, 0 };
        static char buf[1 << 18];
        size_t len = 0;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
                close(fd);
                return -2;
        }
        const char req[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        (void)!send(fd, req, sizeof(req) - 1, 0);
        for (ssize_t r; len + 1 < sizeof(buf) && (r = recv(fd, buf + len, sizeof(buf) - 1 - len, 0)) > 0;)
                len += (size_t)r;
        close(fd);
        buf[len] = 0;
        if (!len)
                return -2;
        const char *p = strstr(buf, "\nkuimen_storage_ok ");
        return p ? strtod(p + strlen("\nkuimen_storage_ok "), NULL) : -1;
}

/* Waits until status says storage is ok; returns how long that took, -1 if it did not. */
static int64_t wait_storage_ok(struct env *e, int timeout_ms)
{
        int64_t t0 = h_now_ms();
        while (h_now_ms() - t0 < timeout_ms) {
                struct status s = status(e);
                if (strcmp(s.storage, "ok") == 0)
                        return h_now_ms() - t0;
                h_sleep_ms(200);
        }
        return -1;
}

/* ---- a fault held for a while ------------------------------------------------------ */

struct under {
        int64_t max_ctl_ms;
        int ctl_fail, samples, fault_samples, metric_zero;
        char storage[160]; /* the first reason status gave, or its last answer */
        double metric;     /* the last kuimen_storage_ok */
        int lines_before, center_lines; /* log lines when the fault began, and of those "cannot connect" */
        int storage_before;             /* and of those "storage:" */
};

static void fill(struct env *e);

static bool is_fault(const char *storage)
{
        return storage[0] && storage[0] != '(' && strcmp(storage, "ok") != 0;
}

/* Samples kuimenctl and /metrics every 250 ms for ms while a fault holds: the slowest
 * answer, how many said there is a storage fault, and its first reason. A full disk is
 * kept full (what kuimen frees goes to the filler). */
static void sample_fault(struct env *e, int ms, struct under *u)
{
        int64_t until = h_now_ms() + ms;
        while (h_now_ms() < until) {
                if (e->small)
                        fill(e);
                struct status s = status(e);
                u->samples++;
                if (s.rc != 0)
                        u->ctl_fail++;
                if (s.ms > u->max_ctl_ms)
                        u->max_ctl_ms = s.ms;
                if (is_fault(s.storage) && !u->fault_samples++)
                        snprintf(u->storage, sizeof(u->storage), "%s", s.storage);
                else if (!u->fault_samples)
                        snprintf(u->storage, sizeof(u->storage), "%s", s.storage);
                u->metric = storage_ok_metric(e);
                u->metric_zero += u->metric == 0;
                h_sleep_ms(250);
        }
}

/* The checks that hold while the fault lasts (secs: how long it lasted so far). */
static void expect_fault_seen(struct env *e, const char *name, const struct under *u, double secs)
{
        /* The center's absence is the setup, not the fault: its reconnects do not count. */
        int lines = log_lines(e->klog) - u->lines_before - (h_log_count(&e->k, "cannot connect") - u->center_lines);
        int storage = h_log_count(&e->k, "storage:"), storage_now = storage - u->storage_before;
        int bound = 20 + (int)(2 * secs), storage_bound = 2 + (int)(secs / 5);
        fprintf(stderr,
                "faults: %s: under the fault (%.1f s): slowest kuimenctl %lld ms (%d of %d failed), status storage "
                "\"%s\" (a fault in %d of %d), kuimen_storage_ok 0 in %d of %d (last %g), %d log lines (%d with "
                "\"storage:\")\n",
                name, secs, (long long)u->max_ctl_ms, u->ctl_fail, u->samples, u->storage, u->fault_samples, u->samples,
                u->metric_zero, u->samples, u->metric, lines, storage_now);
        cr_expect_eq(u->ctl_fail, 0, "%s: kuimenctl status failed %d times under the fault", name, u->ctl_fail);
        cr_expect_lt(u->max_ctl_ms, 1000, "%s: kuimenctl took %lld ms under the fault", name, (long long)u->max_ctl_ms);
        cr_expect_gt(u->fault_samples, 0, "%s: status shows no storage fault (storage: \"%s\")", name, u->storage);
        cr_expect_gt(u->metric_zero, 0, "%s: kuimen_storage_ok is never 0 under the fault (last %g; -1: absent)", name,
                     u->metric);
        cr_expect_geq(storage, 1, "%s: no \"storage:\" line in the log", name);
        cr_expect_leq(lines, bound, "%s: %d log lines in %.1f s of fault (bound %d)", name, lines, secs, bound);
        /* Rate-limited: one line when the fault begins, then at most one every few
         * seconds while it lasts (kuimen says every 10 s; the bound allows 5). */
        cr_expect_leq(storage_now, storage_bound, "%s: %d \"storage:\" lines in %.1f s of fault (bound %d)", name,
                      storage_now, secs, storage_bound);
}

/* Kuimen gets SIGTERM while the fault holds (set_fault has set it, with the center down
 * and readings published): it must be gone within 5 s. Then the fault clears, kuimen
 * starts again and everything acknowledged arrives. */
static void sigterm_under_fault(struct env *e, const char *name, void (*set_fault)(struct env *),
                                void (*clear_fault)(struct env *))
{
        h_stop(&e->center.p, SIGTERM);
        set_fault(e);
        publish(e, 300, 300);
        cr_assert(h_pub_flush(&e->pub, 10000));
        h_sleep_ms(1500); /* a flush to SQLite and a few retries under the fault */
        pid_t pid = e->k.pid;
        int64_t t0 = h_now_ms();
        kill(pid, SIGTERM);
        int st = -1;
        while (waitpid(pid, &st, WNOHANG) == 0 && h_now_ms() - t0 < 15000)
                h_sleep_ms(10);
        int64_t took = h_now_ms() - t0;
        if (took >= 15000) {
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
        }
        e->k.pid = 0;
        fprintf(stderr, "faults: %s: SIGTERM under the fault: gone after %lld ms, status %s %d\n", name,
                (long long)took, WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        cr_expect_lt(took, 5000, "%s: SIGTERM under the fault took %lld ms", name, (long long)took);
        clear_fault(e);
        kuimen_start(e);
        cr_assert(h_log_wait(&e->k, "ingest: connected", 10000), "%s: kuimen did not start again", name);
        h_broker_restart(&e->center);
}

/* ---- 1. a full disk ---------------------------------------------------------------- */

static int64_t free_bytes(const char *dir)
{
        struct statvfs v;
        return statvfs(dir, &v) == 0 ? (int64_t)v.f_bavail * (int64_t)v.f_frsize : -1;
}

static void grow(struct env *e)
{
        char o[64];
        snprintf(o, sizeof(o), "size=%dk", (48 + 16 * scale()) * 1024);
        cr_assert_eq(mount(NULL, e->small, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV, o), 0, "remount %s: %s", e->small,
                     strerror(errno));
}

/* Fills what is left of the small tmpfs with a filler file. */
static void fill(struct env *e)
{
        char path[400], buf[4096];
        snprintf(path, sizeof(path), "%s/filler", e->small);
        memset(buf, 0xa5, sizeof(buf));
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        cr_assert(fd >= 0);
        while (write(fd, buf, sizeof(buf)) > 0)
                ;
        while (write(fd, buf, 1) > 0)
                ;
        close(fd);
}

static void unfill(struct env *e)
{
        char path[400];
        snprintf(path, sizeof(path), "%s/filler", e->small);
        unlink(path);
}

/* 20 000 readings at 1 000/s with the center down, into a spool whose disk fills. Which
 * write meets the full disk is set by where the files live: the ingest logs on a 600 KiB
 * tmpfs of their own (SQLite on /tmp), so the log's write fails (sqlite_only false); or
 * the spool directory on a 256 KiB tmpfs and the logs on a big one, so only SQLite's
 * commit fails. The logs are bound into the spool directory, file by file: kuimen sees
 * one directory. (Both on one small file system, the logs rotate at a sixteenth of it
 * and SQLite's commit meets the full disk first.) The local broker
 * (harness: max_queued_messages 0, persistence) holds what kuimen does not acknowledge
 * in kuimen's persistent ingest session, so each reading it acknowledged must arrive. */
static void disk_full_drill(const char *name, bool sqlite_only)
{
        static struct env e; /* static: fini may read it after an assertion left the test */
        static struct stream s; /* its thread may outlive a failed assertion */
        struct under u = { 0 };
        const int n = (sqlite_only ? 6000 : 20000) * scale(), rate = 1000;
        /* The readings may not be dropped for space: on a file system this small the
         * space policy (a reserve for both logs and the WAL) would drop telemetry before
         * the disk is full, and the drill is about what happens when it is full. */
        up(&e, sqlite_only ? "full-db" : "full-log",
           &(struct opts){ .state_kib = sqlite_only ? 256 : 0, .logs_kib = sqlite_only ? 512 * 1024 : 600,
                           .conf = "[class telemetry]\ndroppable = no\n" });
        struct status s0 = status(&e);
        cr_expect_str_eq(s0.storage, "ok", "%s: status says storage \"%s\" before the fault", name, s0.storage);
        cr_expect_eq(storage_ok_metric(&e), 1, "%s: kuimen_storage_ok is not 1 before the fault", name);

        stream_start(&s, &e, n, rate);
        int64_t t0 = h_now_ms();
        while (!atomic_load(&s.done) && free_bytes(e.small) > 64 * 1024)
                h_sleep_ms(50);
        /* Full it stays: what kuimen frees there (a log it empties once its records are
         * in SQLite) goes to the filler before the next write, until the disk grows. */
        int64_t full_at = h_now_ms();
        fill(&e);
        u.lines_before = log_lines(e.klog);
        u.center_lines = h_log_count(&e.k, "cannot connect");
        u.storage_before = h_log_count(&e.k, "storage:");
        fprintf(stderr, "faults: %s: the disk was full after %lld ms (%lld bytes free)\n", name,
                (long long)(full_at - t0), (long long)free_bytes(e.small));
        cr_assert(!atomic_load(&s.done), "%s: the disk never filled (%lld bytes free)", name,
                  (long long)free_bytes(e.small));
        h_sleep_ms(1000); /* kuimen meets the full disk */
        sample_fault(&e, 3000 * scale(), &u);
        pthread_join(s.t, NULL);
        cr_assert(h_pub_flush(&e.pub, 30000));
        expect_fault_seen(&e, name, &u, (double)(h_now_ms() - full_at) / 1000);
        /* Where the fault was met: the reason names the file (the ingest logs are
         * <spool>-ingest.N). */
        bool at_log = strstr(u.storage, "-ingest.") != NULL;
        cr_expect(at_log != sqlite_only, "%s: the fault was met elsewhere: \"%s\"", name, u.storage);

        grow(&e);
        int64_t resumed = wait_storage_ok(&e, 15000);
        fprintf(stderr, "faults: %s: storage ok again %lld ms after the disk grew\n", name, (long long)resumed);
        cr_expect(resumed >= 0 && resumed <= 10000, "%s: status storage not ok within 10 s of the disk growing (%lld)",
                  name, (long long)resumed);
        cr_expect_eq(storage_ok_metric(&e), 1, "%s: kuimen_storage_ok is not 1 after the fault", name);
        h_broker_restart(&e.center);
        struct tally t = wait_all(&e, 20000, 60000 * scale());
        report(name, &t);
        double dropped = status(&e).dropped;
        fprintf(stderr, "faults: %s: kuimen dropped %g for space\n", name, dropped);
        cr_expect_eq(dropped, 0, "%s: kuimen dropped %g readings of a class that is never dropped", name, dropped);
        cr_assert_eq(t.failed, 0, "%s: the local broker refused %zu sends", name, t.failed);
        cr_assert_eq(t.lost, 0, "%s: %zu of %zu acknowledged readings lost (%zu received)", name, t.lost, t.acked,
                     t.received);
        cr_expect_leq(t.dups, (size_t)n / 10, "%s: %zu duplicates", name, t.dups);

        sigterm_under_fault(&e, name, fill, unfill);
        t = wait_all(&e, 20000, 60000);
        char tail[128];
        snprintf(tail, sizeof(tail), "%s, after SIGTERM under the fault", name);
        report(tail, &t);
        cr_assert_eq(t.lost, 0, "%s: %zu of %zu acknowledged readings lost (%zu received)", tail, t.lost, t.acked,
                     t.received);
        down(&e);
}

/* No timeout of its own: meson gives --timeout=300, tests/drills/faults a longer one. */
TestSuite(faults, .fini = fini);

Test(faults, disk_full_at_ingest_log_write)
{
        disk_full_drill("disk full at the ingest log", false);
}

Test(faults, disk_full_at_sqlite_commit)
{
        disk_full_drill("disk full at the SQLite commit", true);
}

/* ---- 2. I/O errors ----------------------------------------------------------------- */

static void eio_on(struct env *e)
{
        h_write_text(e->flag, "1");
}

static void eio_off(struct env *e)
{
        unlink(e->flag);
}

Test(faults, io_errors_mid_stream)
{
        static char shim[300], preload[340], flag[340], where[340], count[340];
        const char *root = getenv("KM_BUILD_ROOT");
        cr_assert(root, "KM_BUILD_ROOT is not set (meson sets it)");
        snprintf(shim, sizeof(shim), "%s/tests/integration/eio_shim.so", root);
        cr_assert_eq(access(shim, R_OK), 0, "no %s", shim);
        const char *name = "I/O errors";
        static struct env e; /* static: fini may read it after an assertion left the test */
        static struct stream s; /* its thread may outlive a failed assertion */
        struct under u = { 0 };
        const int n = 8000 * scale(), rate = 1000; /* the fault from second 3 to 7 */
        char countp[300];
        /* The directory is known only once up() made it: the environment points at
         * strings filled in below, before kuimen starts. */
        static const char *kenv[5];
        kenv[0] = preload, kenv[1] = flag, kenv[2] = where, kenv[3] = count, kenv[4] = NULL;
        up(&e, "eio", &(struct opts){ .center_up = true, .no_start = true, .kenv = kenv });
        snprintf(countp, sizeof(countp), "%s/eio.count", e.dir);
        snprintf(preload, sizeof(preload), "LD_PRELOAD=%s", shim);
        snprintf(flag, sizeof(flag), "KM_EIO_FLAG=%s", e.flag);
        snprintf(where, sizeof(where), "KM_EIO_PATH=%s/", e.state);
        snprintf(count, sizeof(count), "KM_EIO_COUNT=%s", countp);
        kuimen_start(&e);
        cr_assert(h_log_wait(&e.k, "ingest: connected", 10000), "kuimen did not start with the shim (%s)", e.klog);
        struct status s0 = status(&e);
        cr_expect_str_eq(s0.storage, "ok", "%s: status says storage \"%s\" before the fault", name, s0.storage);

        stream_start(&s, &e, n, rate);
        h_sleep_ms(3000);
        eio_on(&e);
        int64_t on_at = h_now_ms();
        u.lines_before = log_lines(e.klog);
        u.center_lines = h_log_count(&e.k, "cannot connect");
        u.storage_before = h_log_count(&e.k, "storage:");
        h_sleep_ms(1000);
        sample_fault(&e, 3000 * scale(), &u);
        int hits = log_lines(countp);
        fprintf(stderr, "faults: %s: %d calls failed with EIO\n", name, hits);
        cr_assert_gt(hits, 0, "%s: the shim failed no call: the fault was not hit", name);
        expect_fault_seen(&e, name, &u, (double)(h_now_ms() - on_at) / 1000);
        eio_off(&e);
        int64_t resumed = wait_storage_ok(&e, 15000);
        fprintf(stderr, "faults: %s: storage ok again %lld ms after the fault cleared\n", name, (long long)resumed);
        cr_expect(resumed >= 0 && resumed <= 10000, "%s: status storage not ok within 10 s of the fault clearing (%lld)",
                  name, (long long)resumed);
        cr_expect_eq(storage_ok_metric(&e), 1, "%s: kuimen_storage_ok is not 1 after the fault", name);
        pthread_join(s.t, NULL);
        cr_assert(h_pub_flush(&e.pub, 30000));
        struct tally t = wait_all(&e, 20000, 60000 * scale());
        report(name, &t);
        cr_assert_eq(t.failed, 0);
        cr_assert_eq(t.lost, 0, "%s: %zu of %zu acknowledged readings lost (%zu received)", name, t.lost, t.acked,
                     t.received);
        cr_expect_leq(t.dups, (size_t)n / 10, "%s: %zu duplicates", name, t.dups);

        sigterm_under_fault(&e, name, eio_on, eio_off);
        t = wait_all(&e, 20000, 60000);
        report("I/O errors, after SIGTERM under the fault", &t);
        cr_assert_eq(t.lost, 0, "%s: %zu of %zu acknowledged readings lost after SIGTERM under the fault", name, t.lost,
                     t.acked);
        down(&e);
}

/* A command from the center while the spool cannot store, then kill -9 before the fault
 * clears: the downlink must not have acknowledged it (the center's broker keeps it in the
 * base's session), so it reaches the base's terminals once kuimen is back. tls: the link
 * to the center is ssl://. */
static void command_survives(const char *tag, bool tls)
{
        static char shim[300], preload[340], flag[340], where[340], count[340];
        const char *root = getenv("KM_BUILD_ROOT");
        cr_assert(root, "KM_BUILD_ROOT is not set (meson sets it)");
        snprintf(shim, sizeof(shim), "%s/tests/integration/eio_shim.so", root);
        static struct env e;
        static struct h_rec term;
        static const char *kenv[5];
        kenv[0] = preload, kenv[1] = flag, kenv[2] = where, kenv[3] = count, kenv[4] = NULL;
        up(&e, tag, &(struct opts){ .center_up = true, .no_start = true, .kenv = kenv, .tls = tls });
        snprintf(preload, sizeof(preload), "LD_PRELOAD=%s", shim);
        snprintf(flag, sizeof(flag), "KM_EIO_FLAG=%s", e.flag);
        snprintf(where, sizeof(where), "KM_EIO_PATH=%s/", e.state);
        snprintf(count, sizeof(count), "KM_EIO_COUNT=%s/eio.count", e.dir);
        kuimen_start(&e);
        cr_assert(h_log_wait(&e.k, tls ? "down: connected to ssl://" : "down: connected", 10000),
                  "the downlink did not connect (%s)", e.klog);
        h_rec_start(&term, e.local.port, "base-terminal", "cmd/#");

        eio_on(&e);
        int faults = h_log_count(&e.k, "storage:");
        cr_assert_eq(h_mosquitto_pub(e.cport, "kuimen/north/cmd/siren", "evacuate-zone-3"), 0);
        int64_t t0 = h_now_ms();
        while (h_log_count(&e.k, "storage:") == faults && h_now_ms() - t0 < 10000)
                h_sleep_ms(50);
        cr_assert_gt(h_log_count(&e.k, "storage:"), faults, "the command met no storage fault (%s)", e.klog);
        h_sleep_ms(1000);
        h_stop(&e.k, SIGKILL);
        eio_off(&e);
        kuimen_start(&e);
        cr_assert(h_log_wait(&e.k, "ingest: connected", 10000), "kuimen did not start again (%s)", e.klog);
        /* Delivered from memory during the fault and again from the session after the
         * kill is allowed (at least once); none is the loss this test is about. */
        size_t got = h_rec_wait(&term, 1, 15000);
        h_sleep_ms(500);
        got = h_rec_count(&term);
        cr_assert(got >= 1 && got <= 2, "the command arrived %zu times (%s)", got, e.klog);
        pthread_mutex_lock(&term.mu);
        for (size_t i = 0; i < term.n; i++) {
                cr_assert_str_eq(term.m[i].topic, "cmd/siren");
                cr_assert_str_eq(term.m[i].payload, "evacuate-zone-3");
        }
        pthread_mutex_unlock(&term.mu);
        h_rec_stop(&term);
        h_rec_free(&term);
        down(&e);
}

Test(faults, command_under_storage_fault_survives_kill)
{
        command_survives("cmd-eio", false);
}

/* The same over ssl://, the realistic deployment: the downlink over TLS ran on Paho,
 * which acknowledged the command whatever its callback said, and the kill lost it. */
Test(faults, command_under_storage_fault_survives_kill_over_tls)
{
        command_survives("cmd-eio-tls", true);
}

/* ---- 3. a damaged spool ------------------------------------------------------------ */

/* Runs a shell command; its stdout into out. Returns the exit code. */
static int sh(const char *cmd, char *out, size_t n)
{
        size_t len = 0;
        FILE *f = popen(cmd, "r");
        cr_assert(f, "popen %s", cmd);
        while (out && len + 1 < n && !feof(f) && !ferror(f))
                len += fread(out + len, 1, n - 1 - len, f);
        if (out)
                out[len] = 0;
        else
                while (getc(f) != EOF)
                        ;
        int st = pclose(f);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The readings a plain scan of the msg table reads from a copy of the spool (and of its
 * WAL), into got[] (n entries); returns how many. writable_schema: SQLite since 3.30
 * calls a file shorter than its header says corrupt before reading a row; with the
 * pragma the scan reads every row up to the first missing page. */
static size_t readable_rows(struct env *e, uint8_t *got, size_t n)
{
        char cmd[2400], copy[320];
        static char out[1 << 22];
        snprintf(copy, sizeof(copy), "%s/copy", e->dir);
        mkdir(copy, 0755);
        snprintf(cmd, sizeof(cmd),
                 "cp '%s' '%s/spool.db' && { [ ! -e '%s-wal' ] || cp '%s-wal' '%s/spool.db-wal'; } && "
                 "sqlite3 '%s/spool.db' 'PRAGMA writable_schema=ON' \"SELECT CAST(payload AS TEXT) FROM msg ORDER BY id\" 2>&1",
                 e->spool, copy, e->spool, e->spool, copy, copy);
        int rc = sh(cmd, out, sizeof(out));
        size_t k = 0;
        char *save = NULL;
        for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
                unsigned long r;
                if (sscanf(l, "r%lu", &r) == 1 && r < n && !got[r])
                        got[r] = 1, k++;
                else if (!strncmp(l, "Error", 5) || !strncmp(l, "Parse error", 11) || !strncmp(l, "Runtime error", 13))
                        fprintf(stderr, "faults: sqlite3 on the copy: %s\n", l);
        }
        fprintf(stderr, "faults: sqlite3 reads %zu rows from the copy (exit %d)\n", k, rc);
        return k;
}

/* Files in the spool directory whose name has needle. */
static int files_with(const char *dir, const char *needle)
{
        DIR *d = opendir(dir);
        int n = 0;
        for (struct dirent *de; d && (de = readdir(d));)
                n += strstr(de->d_name, needle) != NULL;
        if (d)
                closedir(d);
        return n;
}

enum damage { TRUNCATED_HALF, PAGE_ZEROED, GARBAGE_WAL };

static void damage(struct env *e, enum damage how)
{
        char path[340];
        struct stat st;
        uint8_t page[65536];
        cr_assert_eq(stat(e->spool, &st), 0);
        int fd = open(e->spool, O_RDWR);
        cr_assert(fd >= 0);
        uint8_t hdr[100];
        cr_assert_eq(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
        size_t psize = (size_t)hdr[16] << 8 | hdr[17];
        if (psize == 1)
                psize = 65536;
        size_t pages = (size_t)st.st_size / psize;
        if (how == TRUNCATED_HALF) {
                /* At a page boundary, as a file system that lost its tail leaves it. */
                off_t half = (off_t)(pages / 2 * psize);
                cr_assert_eq(ftruncate(fd, half), 0);
                fprintf(stderr, "faults: spool.db truncated from %lld to %lld bytes\n", (long long)st.st_size,
                        (long long)half);
        } else if (how == PAGE_ZEROED) {
                /* A leaf of the msg table in the middle of the file, found with dbstat. */
                char cmd[600], out[64];
                snprintf(cmd, sizeof(cmd),
                         "sqlite3 '%s' \"SELECT pageno FROM dbstat WHERE name='msg' AND pagetype='leaf' ORDER BY pageno\" "
                         "| awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'",
                         e->spool);
                close(fd);
                sh(cmd, out, sizeof(out));
                fd = open(e->spool, O_RDWR);
                long pg = atol(out);
                if (pg <= 1)
                        pg = (long)pages / 2;
                memset(page, 0, psize);
                cr_assert_eq(pwrite(fd, page, psize, (off_t)(pg - 1) * (off_t)psize), (ssize_t)psize);
                fprintf(stderr, "faults: page %ld of %zu zeroed (%zu bytes)\n", pg, pages, psize);
        } else {
                snprintf(path, sizeof(path), "%s-wal", e->spool);
                int w = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
                cr_assert(w >= 0);
                unsigned seed = 7;
                for (size_t i = 0; i < sizeof(page); i++)
                        page[i] = (uint8_t)rand_r(&seed);
                cr_assert_eq(write(w, page, 3 * 4096 + 100), 3 * 4096 + 100);
                close(w);
                fprintf(stderr, "faults: %zu bytes of garbage appended to spool.db-wal\n", (size_t)(3 * 4096 + 100));
        }
        close(fd);
}

/* Whether a log line mentions the spool's damage and has the number n as a word. */
static bool damage_line_counts(struct env *e, size_t n)
{
        FILE *f = fopen(e->klog, "r");
        char line[2048], num[32];
        bool found = false;
        snprintf(num, sizeof(num), "%zu", n);
        while (f && !found && fgets(line, sizeof(line), f)) {
                if (!strstr(line, "damaged") && !strstr(line, "moved aside"))
                        continue;
                for (char *p = strstr(line, num); p && !found; p = strstr(p + 1, num))
                        found = (p == line || !(p[-1] >= '0' && p[-1] <= '9')) &&
                                !(p[strlen(num)] >= '0' && p[strlen(num)] <= '9');
        }
        if (f)
                fclose(f);
        return found;
}

static void damaged_drill(const char *name, enum damage how)
{
        static struct env e; /* static: fini may read it after an assertion left the test */
        const int m = 3000 * scale();
        up(&e, "damaged", &(struct opts){ 0 });
        publish(&e, m, 0);
        cr_assert(h_pub_flush(&e.pub, 30000));
        int64_t until = h_now_ms() + 20000;
        while (status(&e).depth < m && h_now_ms() < until)
                h_sleep_ms(100);
        int st = h_stop(&e.k, SIGTERM);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen did not stop cleanly (%d)", st);
        char cmd[600], out[64];
        snprintf(cmd, sizeof(cmd), "sqlite3 '%s' 'SELECT count(*) FROM msg'", e.spool);
        sh(cmd, out, sizeof(out));
        cr_assert_eq(atoi(out), m, "%s: the spool holds %s rows, not %d, before the damage", name, out, m);

        damage(&e, how);
        uint8_t *readable = calloc((size_t)m + 1, 1);
        size_t nread = readable_rows(&e, readable, (size_t)m + 1);
        int64_t t0 = h_now_ms();
        kuimen_start(&e);
        bool started = h_log_wait(&e.k, "ingest: connected", 15000);
        fprintf(stderr, "faults: %s: kuimen %s after %lld ms\n", name, started ? "started" : "did not start",
                (long long)(h_now_ms() - t0));
        cr_assert(started, "%s: kuimen did not start on the damaged spool (%s)", name, e.klog);
        struct status s = status(&e);
        h_broker_restart(&e.center);
        /* Wait for the readable ones (or until nothing new came for 5 s), then for
         * whatever more comes. */
        until = h_now_ms() + 30000 * scale();
        int64_t since = h_now_ms();
        size_t missing, last = 0;
        for (;;) {
                missing = 0;
                pthread_mutex_lock(&e.sub.mu);
                uint8_t *got = calloc((size_t)m + 1, 1);
                for (size_t i = 0; i < e.sub.n; i++) {
                        unsigned long r;
                        if (sscanf(e.sub.rx[i].payload, "r%lu", &r) == 1 && r <= (unsigned long)m)
                                got[r] = 1;
                }
                pthread_mutex_unlock(&e.sub.mu);
                size_t arrived = 0;
                for (int i = 0; i < m; i++) {
                        missing += readable[i] && !got[i];
                        arrived += got[i];
                }
                free(got);
                if (arrived != last)
                        last = arrived, since = h_now_ms();
                if (!missing || h_now_ms() > until || h_now_ms() - since > 5000)
                        break;
                h_sleep_ms(200);
        }
        h_sleep_ms(1000);
        struct tally t = tally(&e);
        int aside_files = files_with(e.state, "damaged-");
        int aside_lines = h_log_count(&e.k, "moved aside");
        s = status(&e);
        fprintf(stderr,
                "faults: %s: %d rows before, %zu readable by sqlite3, %zu arrived, %zu readable ones missing, "
                "%zu duplicated; moved_aside %g, %d log lines say \"moved aside\", %d files named damaged-*\n",
                name, m, nread, t.received, missing, t.dups, s.moved_aside, aside_lines, aside_files);
        FILE *f = fopen(e.klog, "r");
        char line[2048];
        while (f && fgets(line, sizeof(line), f))
                if (strstr(line, "spool"))
                        fprintf(stderr, "faults: %s: kuimen: %s", name, line);
        if (f)
                fclose(f);
        cr_assert_eq(missing, 0, "%s: %zu of the %zu rows sqlite3 reads never arrived (%zu arrived)", name, missing, nread,
                     t.received);
        cr_expect_eq(s.moved_aside, aside_lines ? 1 : 0, "%s: moved_aside %g, but %d log lines say moved aside", name,
                     s.moved_aside, aside_lines);
        cr_expect_eq(s.moved_aside > 0, aside_files > 0, "%s: moved_aside %g, %d files moved aside", name, s.moved_aside,
                     aside_files);
        if (how == GARBAGE_WAL)
                cr_expect_eq(s.moved_aside, 0, "%s: a WAL SQLite ignores is no damage", name);
        else
                cr_expect_eq(s.moved_aside, 1, "%s: the damaged file was not moved aside", name);
        if (s.moved_aside > 0)
                cr_expect(damage_line_counts(&e, t.received), "%s: no log line about the damage gives the %zu messages taken over",
                          name, t.received);
        free(readable);
        down(&e);
}

Test(faults, damaged_spool_truncated_to_half)
{
        damaged_drill("spool.db truncated to half", TRUNCATED_HALF);
}

Test(faults, damaged_spool_page_zeroed)
{
        damaged_drill("a page of spool.db zeroed", PAGE_ZEROED);
}

Test(faults, damaged_spool_garbage_wal)
{
        damaged_drill("garbage appended to the WAL", GARBAGE_WAL);
}

/* ---- 4. a second instance ---------------------------------------------------------- */

/* Waits up to timeout_ms for p to exit; returns the wait status, -1 if it still runs. */
static int wait_exit(struct h_proc *p, int timeout_ms, int64_t *took)
{
        int64_t t0 = h_now_ms();
        int st;
        for (;;) {
                pid_t r = waitpid(p->pid, &st, WNOHANG);
                if (r == p->pid) {
                        p->pid = 0;
                        *took = h_now_ms() - t0;
                        return st;
                }
                if (h_now_ms() - t0 > timeout_ms) {
                        *took = h_now_ms() - t0;
                        return -1;
                }
                h_sleep_ms(10);
        }
}

Test(faults, second_instance_refused)
{
        static struct env e; /* static: fini may read it after an assertion left the test */
        const int b = 2000 * scale();
        up(&e, "second", &(struct opts){ 0 });
        publish(&e, b, 0);
        cr_assert(h_pub_flush(&e.pub, 30000));
        int64_t until = h_now_ms() + 20000;
        while (status(&e).depth < b && h_now_ms() < until)
                h_sleep_ms(100);
        h_sleep_ms(800); /* part of the backlog into SQLite */
        pid_t first = e.k.pid;
        struct status s = status(&e);
        cr_assert_eq(s.pid, first);
        cr_assert_geq(s.depth, b);

        struct h_proc second;
        char slog[300], want[600];
        snprintf(slog, sizeof(slog), "%s/second.log", e.dir);
        char *argv[] = { (char *)kuimen_path(), "--config", e.conf, NULL };
        h_spawn(&second, slog, argv, NULL);
        int64_t took;
        int st = wait_exit(&second, 10000, &took);
        if (st == -1)
                h_stop(&second, SIGKILL);
        snprintf(want, sizeof(want), "spool %s is in use by pid %d", e.spool, (int)first);
        bool said = h_log_count(&second, want) > 0;
        fprintf(stderr, "faults: second instance: %s after %lld ms, status %d, says \"%s\": %s\n",
                st == -1 ? "still running (killed)" : "exited", (long long)took,
                st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1, want, said ? "yes" : "no");
        FILE *f = fopen(slog, "r");
        char line[2048];
        while (f && fgets(line, sizeof(line), f))
                fprintf(stderr, "faults: second instance: %s", line);
        if (f)
                fclose(f);
        cr_expect_neq(st, -1, "the second instance still ran after 10 s");
        cr_expect_leq(took, 2000, "the second instance took %lld ms to exit", (long long)took);
        cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "the second instance's exit status is %d, not exit 1",
                  st);
        cr_expect(said, "the second instance did not say \"%s\" (%s)", want, slog);

        /* The first one is untouched: alive, its control socket its own, its backlog whole,
         * no file moved aside. */
        cr_expect_eq(kill(first, 0), 0, "the first instance is gone");
        s = status(&e);
        cr_expect_eq(s.pid, first, "the control socket answers with pid %ld, not the first's %d", s.pid, (int)first);
        cr_expect_geq(s.depth, b, "the first's backlog is %g, not %d", s.depth, b);
        int aside = files_with(e.state, "damaged");
        cr_expect_eq(aside, 0, "%d files moved aside", aside);
        h_broker_restart(&e.center);
        publish(&e, b, 0);
        cr_assert(h_pub_flush(&e.pub, 30000));
        struct tally t = wait_all(&e, 20000, 60000 * scale());
        report("second instance", &t);
        cr_assert_eq(e.k.pid, first);
        cr_assert_eq(t.lost, 0, "%zu of %zu acknowledged readings lost (%zu received)", t.lost, t.acked, t.received);
        cr_expect_eq(kill(first, 0), 0, "the first instance is gone");
        down(&e);
}

/* ---- 5. files kuimen cannot write -------------------------------------------------- */

struct snap {
        char name[64];
        off_t size;
};

/* The spool directory's files and sizes (up to 16). */
static int snapshot(const char *dir, struct snap *s)
{
        DIR *d = opendir(dir);
        int n = 0;
        for (struct dirent *de; d && (de = readdir(d)) && n < 16;) {
                char p[600];
                struct stat st;
                if (de->d_name[0] == '.')
                        continue;
                snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
                if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
                        snprintf(s[n].name, sizeof(s[n].name), "%.63s", de->d_name);
                        s[n++].size = st.st_size;
                }
        }
        if (d)
                closedir(d);
        return n;
}

/* Every file of the spool owned by uid, with mode. */
static void spool_files(struct env *e, uid_t uid, mode_t mode)
{
        struct snap s[16];
        int n = snapshot(e->state, s);
        for (int i = 0; i < n; i++) {
                char p[400];
                snprintf(p, sizeof(p), "%.300s/%.63s", e->state, s[i].name);
                cr_assert_eq(chown(p, uid, uid), 0);
                cr_assert_eq(chmod(p, mode), 0);
        }
}

/* A spool with acknowledged readings (kuimen killed, so the log, the WAL and the
 * database all hold some) whose files kuimen, run as nobody, cannot write: owned by
 * root (unreadable too) or by nobody but read-only. */
static void unwritable_drill(const char *name, bool root_owned)
{
        static struct env e; /* static: fini may read it after an assertion left the test */
        const int m = 1000 * scale();
        up(&e, "perm", &(struct opts){ .as_nobody = true });
        publish(&e, m / 2, 0);
        cr_assert(h_pub_flush(&e.pub, 30000));
        h_sleep_ms(1200); /* these into SQLite */
        publish(&e, m - m / 2, 0);
        cr_assert(h_pub_flush(&e.pub, 30000));
        int64_t until = h_now_ms() + 20000;
        while (status(&e).depth < m && h_now_ms() < until)
                h_sleep_ms(100);
        cr_assert_geq(status(&e).depth, m);
        h_stop(&e.k, SIGKILL);

        spool_files(&e, root_owned ? 0 : 65534, 0400);
        struct snap before[16], after[16];
        int nb = snapshot(e.state, before);
        int lines0 = log_lines(e.klog);
        kuimen_start(&e);
        int64_t took;
        int st = wait_exit(&e.k, 15000, &took);
        if (st == -1)
                h_stop(&e.k, SIGKILL);
        int na = snapshot(e.state, after);
        FILE *f = fopen(e.klog, "r");
        char line[2048];
        bool named = false, reason = false;
        for (int i = 0; f && fgets(line, sizeof(line), f); i++) {
                if (i < lines0)
                        continue;
                fprintf(stderr, "faults: %s: kuimen: %s", name, line);
                named |= strstr(line, e.state) != NULL;
                reason |= strstr(line, "ermission denied") || strstr(line, "read-only") || strstr(line, "readonly");
        }
        if (f)
                fclose(f);
        fprintf(stderr, "faults: %s: kuimen %s after %lld ms (status %d); %d files before, %d after\n", name,
                st == -1 ? "still ran (killed)" : "exited", (long long)took, st, nb, na);
        cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0, "%s: kuimen did not refuse to start (status %d)", name,
                  st);
        cr_expect(named, "%s: the error names no file of %s", name, e.state);
        cr_expect(reason, "%s: the error gives no reason (permission denied, read-only)", name);
        cr_expect_eq(files_with(e.state, "damaged"), 0, "%s: something was moved aside", name);
        /* Each file still there, at its size (a new lock file may come). */
        bool same = true;
        for (int i = 0; i < nb; i++) {
                bool found = false;
                for (int j = 0; j < na; j++)
                        found |= strcmp(before[i].name, after[j].name) == 0 && before[i].size == after[j].size;
                if (!found)
                        fprintf(stderr, "faults: %s: %s (%lld bytes) is gone or changed\n", name, before[i].name,
                                (long long)before[i].size);
                same &= found;
        }
        cr_expect(same, "%s: the spool's files changed (%d files before, %d after)", name, nb, na);

        /* Mended: everything arrives. */
        spool_files(&e, 65534, 0600);
        kuimen_start(&e);
        cr_assert(h_log_wait(&e.k, "ingest: connected", 10000), "%s: kuimen did not start after mending (%s)", name,
                  e.klog);
        h_broker_restart(&e.center);
        struct tally t = wait_all(&e, 20000, 60000 * scale());
        report(name, &t);
        cr_assert_eq(t.lost, 0, "%s: %zu of %zu acknowledged readings lost (%zu received)", name, t.lost, t.acked,
                     t.received);
        down(&e);
}

Test(faults, unreadable_spool_files_refuse_start)
{
        unwritable_drill("spool files root's, 0400", true);
}

Test(faults, readonly_spool_files_refuse_start)
{
        unwritable_drill("spool files read-only, 0400", false);
}

/* ---- 6. a storage fault during a call ---------------------------------------------- */

/* Changes the center got on kuimen/north/call/f1 holding needle. */
static int center_changes(struct h_rec *r, const char *needle)
{
        int n = 0;
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n; i++)
                n += strstr(r->m[i].payload, needle) != NULL;
        pthread_mutex_unlock(&r->mu);
        return n;
}

static bool wait_change(struct h_rec *r, const char *needle, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        while (center_changes(r, needle) == 0 && h_now_ms() < until)
                h_sleep_ms(50);
        return center_changes(r, needle) > 0;
}

/* A call under way when the spool's disk fails (EIO from the shim from 0.8 to about 3.5
 * s of the call): u2's overdue (2 s) and the escalation to chief (3 s) happen during the
 * fault, when the spool refuses their changes. The engine holds them, and once the fault
 * clears the center gets them, after what came before and before what comes after, and
 * chief is called. */
Test(faults, call_change_after_storage_fault)
{
        static char shim[300], preload[340], flag[340], where[340];
        const char *root = getenv("KM_BUILD_ROOT");
        cr_assert(root, "KM_BUILD_ROOT is not set (meson sets it)");
        snprintf(shim, sizeof(shim), "%s/tests/integration/eio_shim.so", root);
        cr_assert_eq(access(shim, R_OK), 0, "no %s", shim);
        static struct env e;
        static const char *kenv[4];
        char out[8192];
        kenv[0] = preload, kenv[1] = flag, kenv[2] = where, kenv[3] = NULL;
        up(&e, "call-fault",
           &(struct opts){ .center_up = true, .no_start = true, .kenv = kenv,
                           .conf = "[calls]\ntick = 50ms\n[calls level red]\nrespond_within = 2s\nrepeat_every = 1s\n"
                                   "escalate_after = 3s\nescalate_to = chief\n" });
        snprintf(preload, sizeof(preload), "LD_PRELOAD=%s", shim);
        snprintf(flag, sizeof(flag), "KM_EIO_FLAG=%s", e.flag);
        snprintf(where, sizeof(where), "KM_EIO_PATH=%s/", e.state);
        struct h_rec term, ctr;
        h_rec_start(&term, e.local.port, "terminals", "call/+");
        h_rec_start(&ctr, e.cport, "center-app", "kuimen/north/call/#");
        kuimen_start(&e);
        cr_assert(h_log_wait(&e.k, "ingest: connected", 10000), "kuimen did not start with the shim (%s)", e.klog);
        cr_assert(h_log_wait(&e.k, "up: connected", 10000), "kuimen did not reach the center");

        cr_assert_eq(ctl(&e, "call f1 red 'Flood at the weir' u1,u2", out, sizeof(out), NULL), 0, "%s", out);
        int64_t t0 = h_now_ms();
        cr_assert(wait_change(&ctr, "{\"unit\":\"u2\",\"state\":\"delivered\"", 5000), "u2's delivery at the center");
        cr_assert_eq(h_rec_send(&term, "call/u1/answer", "{\"id\":\"f1\",\"status\":\"acting\"}"), 0);
        cr_assert(wait_change(&ctr, "{\"unit\":\"u1\",\"state\":\"acting\"", 5000), "u1's answer at the center");
        int64_t now = h_now_ms();
        cr_assert_lt(now - t0, 1500, "the call's start took %lld ms: the fault would miss the deadlines",
                     (long long)(now - t0));
        eio_on(&e);
        h_sleep_ms((int)(t0 + 3600 - h_now_ms()));
        /* During the fault: overdue and escalated happened at the base, not at the center. */
        cr_expect_eq(center_changes(&ctr, "\"state\":\"overdue\""), 0, "nothing gets past a failed spool");
        cr_expect_eq(center_changes(&ctr, "\"state\":\"escalated\""), 0);
        cr_assert(h_log_wait(&e.k, "state change not spooled upstream", 1000), "the engine met the fault (%s)", e.klog);
        cr_assert_eq(ctl(&e, "call show f1 --json", out, sizeof(out), NULL), 0, "%s", out);
        cr_expect(strstr(out, "\"unit\":\"u2\",\"state\":\"overdue\""), "u2 overdue at the base: %s", out);
        cr_expect(strstr(out, "\"state\":\"escalated\""), "escalated at the base: %s", out);
        eio_off(&e);
        int64_t cleared = h_now_ms();
        cr_assert(wait_change(&ctr, "\"state\":\"escalated\"", 15000), "the escalation reaches the center after the fault");
        cr_assert(wait_change(&ctr, "{\"unit\":\"u2\",\"state\":\"overdue\"", 5000), "u2's overdue reaches the center");
        cr_assert(wait_change(&ctr, "{\"unit\":\"chief\",\"state\":\"delivered\"", 10000), "chief called after the fault");
        cr_assert(h_log_wait(&e.k, "held state changes spooled upstream", 1000), "%s", e.klog);
        fprintf(stderr, "faults: call under a storage fault: held changes at the center %lld ms after it cleared\n",
                (long long)(h_now_ms() - cleared));
        /* In order: each change's t never goes back, the open first. */
        pthread_mutex_lock(&ctr.mu);
        int last_t = -1, esc = 0;
        cr_expect(strstr(ctr.m[0].payload, "\"state\":\"open\""), "first: %s", ctr.m[0].payload);
        for (size_t i = 0; i < ctr.n; i++) {
                cJSON *j = cJSON_Parse(ctr.m[i].payload);
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "t");
                const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "state");
                if (cJSON_IsNumber(t)) {
                        cr_expect_geq(t->valueint, last_t, "change %zu out of order: %s", i, ctr.m[i].payload);
                        last_t = t->valueint;
                }
                esc += cJSON_IsString(st) && strcmp(st->valuestring, "escalated") == 0;
                cJSON_Delete(j);
        }
        pthread_mutex_unlock(&ctr.mu);
        cr_expect_eq(esc, 1, "one escalation at the center");
        h_rec_stop(&term);
        h_rec_stop(&ctr);
        h_rec_free(&term);
        h_rec_free(&ctr);
        down(&e);
}
