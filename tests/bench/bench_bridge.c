/* SPDX-License-Identifier: MIT */
/* Bridge benchmark on real brokers: end-to-end rate against Mosquitto's own bridge, CPU per message, backlog memory and drain, latency. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include "harness.h"

#define PAYLOAD_LEN 200
#define STAMP_LEN 31 /* "<seq:10> <monotonic ns:19> " at the head of each payload */
#define TOPICS 10
/* In-flight QoS 1 publishes: below the brokers' receive maximum (max_inflight_messages
 * 100), past which Paho fails sends instead of queueing them. */
#define WINDOW 64
#define STALL_MS 60000 /* no progress this long: the setup is broken */

/* ---- small helpers ----------------------------------------------------------------- */

static char g_dir[256]; /* the current rig's directory, removed on a fatal error too */

static void die(const char *msg)
{
        fprintf(stderr, "bench_bridge: %s\n", msg);
        if (g_dir[0])
                h_cleanup(g_dir);
        /* Our children (brokers, kuimen, publisher) die with us: PR_SET_PDEATHSIG. */
        exit(1);
}

__attribute__((format(printf, 1, 2))) static void dief(const char *fmt, ...)
{
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        die(msg);
}

static int64_t mono_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* utime and stime of all threads of pid, in seconds (clock ticks: 10 ms resolution, so
 * runs are long enough to make that small). */
static void cpu_split(pid_t pid, double *user, double *sys)
{
        char path[64], buf[1024];
        unsigned long ut = 0, st = 0;
        *user = *sys = 0;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (!f)
                return;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        /* The command name may hold spaces and parentheses: count fields after the last ')'. */
        char *p = strrchr(buf, ')');
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
                return;
        *user = (double)ut / (double)sysconf(_SC_CLK_TCK);
        *sys = (double)st / (double)sysconf(_SC_CLK_TCK);
}

static double cpu_s(pid_t pid)
{
        double u, s;
        cpu_split(pid, &u, &s);
        return u + s;
}

/* VmRSS and VmHWM of pid in KiB. */
static void mem_kib(pid_t pid, long *rss, long *hwm)
{
        char path[64], line[256];
        *rss = *hwm = -1;
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof(line), f)) {
                sscanf(line, "VmRSS: %ld", rss);
                sscanf(line, "VmHWM: %ld", hwm);
        }
        if (f)
                fclose(f);
}

/* Bytes of the files in dir (the spool: SQLite file, its WAL, the ingest logs). */
static long long dir_bytes(const char *dir)
{
        long long sum = 0;
        DIR *d = opendir(dir);
        struct dirent *e;
        while (d && (e = readdir(d))) {
                char p[600];
                struct stat st;
                snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
                if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
                        sum += st.st_size;
        }
        if (d)
                closedir(d);
        return sum;
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
                return "tmpfs: fsync is free, sync=always means little";
        default:
                return "other";
        }
}

/* "12 345 678": figures a reader takes in at a glance. */
static const char *grp(double v, char *buf)
{
        char raw[32];
        snprintf(raw, sizeof(raw), "%.0f", v);
        size_t n = strlen(raw), o = 0;
        for (size_t i = 0; i < n; i++) {
                if (i && raw[i - 1] != '-' && (n - i) % 3 == 0)
                        buf[o++] = ' ';
                buf[o++] = raw[i];
        }
        buf[o] = 0;
        return buf;
}

/* ---- publisher (a child process) --------------------------------------------------- */

/* The publisher runs in its own process, re-executed from this binary: Paho runs all
 * clients of a process on one send and one receive thread, and a publisher sharing
 * them with the subscriber would throttle both paths alike and flatten the ratio. */
struct pub {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        long inflight, acked, failed;
};

static void pub_ok(void *ctx, MQTTAsync_successData5 *r)
{
        struct pub *p = ctx;
        (void)r;
        pthread_mutex_lock(&p->mu);
        p->inflight--;
        p->acked++;
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
}

static void pub_fail(void *ctx, MQTTAsync_failureData5 *r)
{
        struct pub *p = ctx;
        pthread_mutex_lock(&p->mu);
        if (p->failed++ < 3)
                fprintf(stderr, "publisher: send failed: %d %s\n", r ? r->code : 0, r && r->message ? r->message : "");
        p->inflight--;
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
}

static void stamp(char *buf, long seq)
{
        char head[64];
        snprintf(head, sizeof(head), "%010ld %019" PRId64 " ", seq, mono_ns());
        memcpy(buf, head, STAMP_LEN);
}

/* Sends sequence numbers first..first+count-1, rate per second (0: as fast as the
 * window allows). Prints "ok <first send ns> <all acked ns> <acked> <failed> <CPU s>". */
static int publisher_main(int port, long first, long count, long rate)
{
        struct pub p = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
        MQTTAsync c;
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        char uri[64], topics[TOPICS][32], payload[PAYLOAD_LEN];

        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        if (MQTTAsync_createWithOptions(&c, uri, "bench-pub", MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro) != 0)
                return 1;
        co.cleanstart = 1;
        co.keepAliveInterval = 30;
        if (MQTTAsync_connect(c, &co) != 0)
                return 1;
        int64_t until = mono_ns() + 10000000000LL;
        while (!MQTTAsync_isConnected(c) && mono_ns() < until)
                h_sleep_ms(5);
        if (!MQTTAsync_isConnected(c)) {
                fprintf(stderr, "publisher: no connection to %s\n", uri);
                return 1;
        }
        for (int t = 0; t < TOPICS; t++)
                snprintf(topics[t], sizeof(topics[t]), "sensors/t%d", t);
        memset(payload, 'x', sizeof(payload));
        int64_t t0 = mono_ns();
        for (long i = 0; i < count; i++) {
                if (rate) {
                        int64_t due = t0 + (int64_t)((double)i * 1e9 / (double)rate);
                        struct timespec ts = { (time_t)(due / 1000000000), (long)(due % 1000000000) };
                        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                                ;
                }
                pthread_mutex_lock(&p.mu);
                while (p.inflight >= WINDOW)
                        pthread_cond_wait(&p.cv, &p.mu);
                p.inflight++;
                pthread_mutex_unlock(&p.mu);
                MQTTAsync_message m = MQTTAsync_message_initializer;
                MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
                stamp(payload, first + i);
                m.payload = payload;
                m.payloadlen = PAYLOAD_LEN;
                m.qos = 1;
                ro.onSuccess5 = pub_ok;
                ro.onFailure5 = pub_fail;
                ro.context = &p;
                int rc = MQTTAsync_sendMessage(c, topics[i % TOPICS], &m, &ro);
                if (rc != MQTTASYNC_SUCCESS) {
                        pthread_mutex_lock(&p.mu);
                        if (p.failed++ < 3)
                                fprintf(stderr, "publisher: send refused: %d\n", rc);
                        p.inflight--;
                        pthread_mutex_unlock(&p.mu);
                }
        }
        pthread_mutex_lock(&p.mu);
        while (p.inflight > 0)
                pthread_cond_wait(&p.cv, &p.mu);
        pthread_mutex_unlock(&p.mu);
        int64_t t1 = mono_ns();
        printf("ok %" PRId64 " %" PRId64 " %ld %ld %.3f\n", t0, t1, p.acked, p.failed, cpu_s(getpid()));
        fflush(stdout);
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;
        d.timeout = 500;
        MQTTAsync_disconnect(c, &d);
        h_sleep_ms(50);
        MQTTAsync_destroy(&c);
        return 0;
}

struct child {
        pid_t pid;
        int fd;
};

static void pub_spawn(struct child *ch, int port, long first, long count, long rate)
{
        int fds[2];
        char a1[16], a2[24], a3[24], a4[24];
        if (pipe(fds) < 0)
                dief("pipe: %s", strerror(errno));
        snprintf(a1, sizeof(a1), "%d", port);
        snprintf(a2, sizeof(a2), "%ld", count);
        snprintf(a3, sizeof(a3), "%ld", rate);
        snprintf(a4, sizeof(a4), "%ld", first);
        ch->pid = fork();
        if (ch->pid < 0)
                dief("fork: %s", strerror(errno));
        if (ch->pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                dup2(fds[1], 1);
                close(fds[0]);
                close(fds[1]);
                execl("/proc/self/exe", "bench_bridge", "--publish", a1, a4, a2, a3, (char *)NULL);
                _exit(127);
        }
        close(fds[1]);
        ch->fd = fds[0];
}

struct pub_result {
        int64_t first_ns, acked_ns;
        long acked, failed;
        double cpu_s;
};

/* Waits for the publisher's report; a publisher that could not send is a broken setup. */
static void pub_collect(struct child *ch, struct pub_result *r)
{
        char buf[256];
        size_t got = 0;
        ssize_t n;
        while ((n = read(ch->fd, buf + got, sizeof(buf) - 1 - got)) > 0)
                got += (size_t)n;
        buf[got] = 0;
        close(ch->fd);
        int st;
        waitpid(ch->pid, &st, 0);
        ch->pid = 0;
        if (sscanf(buf, "ok %" SCNd64 " %" SCNd64 " %ld %ld %lf", &r->first_ns, &r->acked_ns, &r->acked, &r->failed,
                   &r->cpu_s) != 5)
                dief("the publisher failed (status %d)", st);
        if (r->failed)
                dief("the publisher lost %ld sends", r->failed);
}

/* ---- subscriber at the center ------------------------------------------------------- */

/* Counts unique payloads by sequence number (a bitmap), and when asked keeps each
 * message's publish->receive latency. Paho calls arrived() from one thread; the main
 * thread only reads the atomics. */
struct sub {
        MQTTAsync c;
        long cap;
        uint8_t *bits;
        int64_t *lat_ns; /* per sequence number, or NULL */
        atomic_long unique, total;
        _Atomic int64_t first_ns, last_ns;
        atomic_bool subscribed;
};

static int sub_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        struct sub *s = ctx;
        int64_t now = mono_ns();
        const char *p = m->payload;
        (void)tlen;
        /* Only our own payloads count: kuimen may publish other things under kuimen/#. */
        bool ours = m->payloadlen == PAYLOAD_LEN && strncmp(topic, "kuimen/north/sensors/", 21) == 0;
        for (int i = 0; ours && i < STAMP_LEN - 1; i++)
                ours = i == 10 ? p[i] == ' ' : p[i] >= '0' && p[i] <= '9';
        if (ours) {
                atomic_fetch_add(&s->total, 1);
                long seq = 0;
                int64_t sent = 0;
                for (int i = 0; i < 10; i++)
                        seq = seq * 10 + (p[i] - '0');
                for (int i = 11; i < 30; i++)
                        sent = sent * 10 + (p[i] - '0');
                if (seq < s->cap && !(s->bits[seq >> 3] & (1u << (seq & 7)))) {
                        s->bits[seq >> 3] |= (uint8_t)(1u << (seq & 7));
                        if (s->lat_ns)
                                s->lat_ns[seq] = now - sent;
                        if (!atomic_load(&s->first_ns))
                                atomic_store(&s->first_ns, now);
                        atomic_store(&s->last_ns, now);
                        atomic_fetch_add(&s->unique, 1);
                }
        }
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

static void sub_subscribed(void *ctx, MQTTAsync_successData5 *r)
{
        (void)r;
        atomic_store(&((struct sub *)ctx)->subscribed, true);
}

/* persistent: a session the center keeps (and restores from its persistence file)
 * while the subscriber or the broker is away, as for a real center's consumer. */
static void sub_start(struct sub *s, int port, long cap, bool latency, bool persistent)
{
        char uri[64];
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        MQTTProperties props = MQTTProperties_initializer;
        MQTTProperty ex = { .identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL, .value.integer4 = 3600 };

        memset(s, 0, sizeof(*s));
        s->cap = cap;
        s->bits = calloc((size_t)cap / 8 + 1, 1);
        s->lat_ns = latency ? calloc((size_t)cap, sizeof(*s->lat_ns)) : NULL;
        if (!s->bits || (latency && !s->lat_ns))
                die("out of memory");
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        if (MQTTAsync_createWithOptions(&s->c, uri, "bench-sub", MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro) != 0)
                die("cannot create the subscriber");
        MQTTAsync_setCallbacks(s->c, s, NULL, sub_arrived, NULL);
        co.cleanstart = !persistent;
        co.keepAliveInterval = 5;
        co.automaticReconnect = 1;
        co.minRetryInterval = 1;
        co.maxRetryInterval = 1;
        if (persistent) {
                MQTTProperties_add(&props, &ex);
                co.connectProperties = &props;
        }
        if (MQTTAsync_connect(s->c, &co) != 0)
                die("subscriber: connect refused");
        MQTTProperties_free(&props);
        int64_t until = h_now_ms() + 10000;
        while (!MQTTAsync_isConnected(s->c) && h_now_ms() < until)
                h_sleep_ms(5);
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        ro.onSuccess5 = sub_subscribed;
        ro.context = s;
        if (!MQTTAsync_isConnected(s->c) || MQTTAsync_subscribe(s->c, "kuimen/#", 1, &ro) != 0)
                dief("subscriber: no connection or subscription at port %d", port);
        while (!atomic_load(&s->subscribed) && h_now_ms() < until)
                h_sleep_ms(5);
        if (!atomic_load(&s->subscribed))
                die("subscriber: no SUBACK");
}

/* Waits until want unique messages arrived; no progress for STALL_MS is fatal. */
static void sub_wait(struct sub *s, long want, const char *what)
{
        long last = -1;
        int64_t progress = h_now_ms();
        for (;;) {
                long n = atomic_load(&s->unique);
                if (n >= want)
                        return;
                if (n != last) {
                        last = n;
                        progress = h_now_ms();
                } else if (h_now_ms() - progress > STALL_MS) {
                        dief("%s: stalled at %ld of %ld unique messages", what, n, want);
                }
                h_sleep_ms(2);
        }
}

static void sub_stop(struct sub *s)
{
        MQTTAsync_disconnectOptions o = MQTTAsync_disconnectOptions_initializer5;
        o.timeout = 500;
        MQTTAsync_disconnect(s->c, &o);
        h_sleep_ms(50);
        MQTTAsync_destroy(&s->c);
        free(s->bits);
        free(s->lat_ns);
}

/* ---- rigs: brokers, the bridge under test, the subscriber --------------------------- */

enum path { P_MOSQ, P_KM_BATCH, P_KM_ALWAYS, P_COUNT };
static const char *const path_name[P_COUNT] = { "mosquitto-bridge", "kuimen(batch)", "kuimen(always)" };

struct rig {
        enum path path;
        char dir[200], conf[300], klog[300], state[300];
        struct h_broker local, center; /* local: the edge broker the publisher talks to */
        struct h_proc k;
        struct sub sub;
        double ready_ms; /* until a first message went through (center up only) */
};

/* The harness's broker settings, but logging no more than connections: "log_type all"
 * writes several lines per message and we would be timing the broker's log writer. */
static void broker_start(struct h_broker *b, const char *dir, int port, const char *extra)
{
        memset(b, 0, sizeof(*b));
        b->port = port ? port : h_free_port();
        snprintf(b->dir, sizeof(b->dir), "%s", dir);
        snprintf(b->conf, sizeof(b->conf), "%s/mosquitto-%d.conf", dir, b->port);
        snprintf(b->p.log, sizeof(b->p.log), "%s/mosquitto-%d.log", dir, b->port);
        FILE *f = fopen(b->conf, "w");
        if (!f)
                dief("%s: %s", b->conf, strerror(errno));
        fprintf(f,
                "listener %d 127.0.0.1\nallow_anonymous true\nuser root\n"
                "persistence true\npersistence_location %s/\npersistence_file mosquitto-%d.db\n"
                "max_queued_messages 0\nmax_inflight_messages 100\nlog_dest stderr\n"
                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n%s\n",
                b->port, dir, b->port, extra ? extra : "");
        fclose(f);
        h_broker_restart(b);
}

static void kuimen_conf(struct rig *r, bool always)
{
        FILE *f = fopen(r->conf, "w");
        if (!f)
                dief("%s: %s", r->conf, strerror(errno));
        /* spool_max_mb: a 1M backlog of 200-byte messages is ~300 MB with its metadata,
         * over the 256 MB default; the backlog run must not drop for space. */
        fprintf(f,
                "[node]\nname = north\nspool = %s/spool.db\nsync = %s\nstats_interval = 1s\nspool_max_mb = 2048\n"
                "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#\n"
                "[link center]\ntype = mqtt\nuri = tcp://127.0.0.1:%d\ntopic_prefix = kuimen\nkeepalive = 2s\n",
                r->state, always ? "always" : "batch", r->local.port, r->center.port);
        /* For experiments (e.g. "[link center]\nwindow = 64"): the figures are only
         * comparable without it. */
        if (getenv("KM_BENCH_KUIMEN_CONF"))
                fprintf(f, "%s\n", getenv("KM_BENCH_KUIMEN_CONF"));
        fclose(f);
}

static void pub_collect(struct child *ch, struct pub_result *r);

/* Everything but the publisher; the subscriber counts sequence numbers 0..cap-1. With
 * the center up, one probe message (sequence cap) goes through first, so the runs
 * measure a working path and not its start (how long that took is kept in ready_ms).
 * center_up false: the subscriber's session is made, then the center stops (it comes
 * back with h_broker_restart). */
static void rig_up(struct rig *r, enum path path, long cap, bool latency, bool center_up)
{
        const char *base = getenv("KM_BENCH_DIR") ? getenv("KM_BENCH_DIR") : "/var/tmp";
        memset(r, 0, sizeof(*r));
        r->path = path;
        snprintf(r->dir, sizeof(r->dir), "%s/km-bench-XXXXXX", base);
        if (!mkdtemp(r->dir))
                dief("mkdtemp %s: %s", r->dir, strerror(errno));
        snprintf(g_dir, sizeof(g_dir), "%s", r->dir);
        snprintf(r->conf, sizeof(r->conf), "%s/kuimen.conf", r->dir);
        snprintf(r->klog, sizeof(r->klog), "%s/kuimen.log", r->dir);
        snprintf(r->state, sizeof(r->state), "%s/state", r->dir);
        broker_start(&r->center, r->dir, 0, NULL);
        sub_start(&r->sub, r->center.port, cap + 1, latency, !center_up);
        if (!center_up)
                h_stop(&r->center.p, SIGTERM);
        if (path == P_MOSQ) {
                char bridge[512];
                snprintf(bridge, sizeof(bridge),
                         "connection north\naddress 127.0.0.1:%d\nremote_clientid north-bridge\n"
                         "cleansession true\ntopic sensors/# out 1 \"\" kuimen/north/\n",
                         r->center.port);
                broker_start(&r->local, r->dir, 0, bridge);
                if (center_up && !h_log_wait(&r->center.p, "as north-bridge", 10000))
                        die("the mosquitto bridge did not connect to the center");
        } else {
                broker_start(&r->local, r->dir, 0, NULL);
                kuimen_conf(r, path == P_KM_ALWAYS);
                const char *args[] = { "--config", r->conf, NULL };
                h_kuimen_start(&r->k, r->klog, args);
                if (!h_log_wait(&r->k, "ingest: connected", 10000))
                        dief("kuimen did not connect to the local broker (see %s)", r->klog);
                if (center_up && !h_log_wait(&r->k, "center: down -> up", 10000))
                        dief("kuimen's center link did not come up (see %s)", r->klog);
        }
        if (center_up) {
                struct child ch;
                struct pub_result pr;
                int64_t t0 = mono_ns();
                pub_spawn(&ch, r->local.port, cap, 1, 0);
                sub_wait(&r->sub, 1, "probe");
                r->ready_ms = (double)(mono_ns() - t0) / 1e6;
                pub_collect(&ch, &pr);
        }
}

/* The process that does the bridging: kuimen, or the edge mosquitto for its bridge. */
static pid_t rig_bridge_pid(const struct rig *r)
{
        return r->path == P_MOSQ ? r->local.p.pid : r->k.pid;
}

static void rig_down(struct rig *r)
{
        if (r->k.pid) {
                int st = h_stop(&r->k, SIGTERM);
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                        fprintf(stderr, "bench_bridge: kuimen exited with status %d (log %s)\n", st, r->klog);
        }
        sub_stop(&r->sub);
        h_stop(&r->local.p, SIGTERM);
        h_stop(&r->center.p, SIGTERM);
        h_cleanup(r->dir);
        g_dir[0] = 0;
}

/* kuimen's "in=" from its last stats line: how many messages it has made durable. */
static long kuimen_in(const struct rig *r)
{
        FILE *f = fopen(r->klog, "r");
        char line[2048];
        long in = -1;
        while (f && fgets(line, sizeof(line), f)) {
                const char *p = strstr(line, "stats: in=");
                if (p)
                        in = strtol(p + 10, NULL, 10);
        }
        if (f)
                fclose(f);
        return in;
}

/* ---- the measurements --------------------------------------------------------------- */

struct e2e {
        double rate, bridge_us, bridge_sys_us, local_us, center_us, pub_us, sub_us, ready_ms;
        long dups;
};

/* CPU of this process (the subscriber: the main thread only sleeps and polls). */
static double self_cpu_s(void)
{
        return cpu_s(getpid());
}

/* Sends count messages as fast as the window allows, publisher -> local -> bridge -> center ->
 * subscriber; the rate runs from the first send to the last unique arrival. */
static void run_e2e(enum path path, long count, struct e2e *out)
{
        struct rig r;
        struct child ch;
        struct pub_result pr;
        rig_up(&r, path, count, false, true);
        pid_t bp = rig_bridge_pid(&r);
        double u0, k0, u1, k1;
        cpu_split(bp, &u0, &k0);
        double l0 = cpu_s(r.local.p.pid), z0 = cpu_s(r.center.p.pid), s0 = self_cpu_s();
        pub_spawn(&ch, r.local.port, 0, count, 0);
        sub_wait(&r.sub, count + 1, path_name[path]);
        cpu_split(bp, &u1, &k1);
        double l1 = cpu_s(r.local.p.pid), z1 = cpu_s(r.center.p.pid), s1 = self_cpu_s();
        pub_collect(&ch, &pr);
        int64_t last = atomic_load(&r.sub.last_ns);
        out->rate = (double)count / ((double)(last - pr.first_ns) / 1e9);
        out->bridge_us = (u1 + k1 - u0 - k0) * 1e6 / (double)count;
        out->bridge_sys_us = (k1 - k0) * 1e6 / (double)count;
        out->pub_us = pr.cpu_s * 1e6 / (double)count;
        out->sub_us = (s1 - s0) * 1e6 / (double)count;
        out->local_us = (l1 - l0) * 1e6 / (double)count;
        out->center_us = (z1 - z0) * 1e6 / (double)count;
        h_sleep_ms(200); /* late duplicates, if any */
        out->dups = atomic_load(&r.sub.total) - atomic_load(&r.sub.unique);
        out->ready_ms = r.ready_ms;
        rig_down(&r);
        /* Every process's CPU per message: on a small box the sum is what bounds the rate. */
        if (path == P_MOSQ)
                printf("  %-16s %8.0f msgs/s  CPU us/msg: edge mosquitto+bridge %.1f (sys %.1f), center %.1f, "
                       "publisher %.1f, subscriber %.1f; %ld duplicates; first message through after %.0f ms\n",
                       path_name[path], out->rate, out->bridge_us, out->bridge_sys_us, out->center_us, out->pub_us,
                       out->sub_us, out->dups, out->ready_ms);
        else
                printf("  %-16s %8.0f msgs/s  CPU us/msg: kuimen %.1f (sys %.1f), local mosquitto %.1f, center %.1f, "
                       "publisher %.1f, subscriber %.1f; %ld duplicates; first message through after %.0f ms\n",
                       path_name[path], out->rate, out->bridge_us, out->bridge_sys_us, out->local_us, out->center_us,
                       out->pub_us, out->sub_us, out->dups, out->ready_ms);
        fflush(stdout);
}

struct backlog {
        long n;
        double ingest_rate, ingest_us, drain_rate, drain_steady_rate, drain_us, reconnect_s;
        long rss_kib, hwm_kib, rss_after_kib, hwm_after_kib;
        long long spool_bytes;
};

/* Center down: n messages into kuimen's spool; memory and spool size while it holds
 * them; then the center comes back and the subscriber gets all n. */
static void run_backlog(long n, struct backlog *b)
{
        struct rig r;
        struct child ch;
        struct pub_result pr;
        memset(b, 0, sizeof(*b));
        b->n = n;
        rig_up(&r, P_KM_BATCH, n, false, false);
        double c0 = cpu_s(r.k.pid);
        pub_spawn(&ch, r.local.port, 0, n, 0);
        pub_collect(&ch, &pr);
        /* The local broker has acknowledged everything; kuimen may still be behind. The
         * stats line comes each second, so the ingest time is good to about a second. */
        long in = 0, last_in = -1;
        int64_t progress = h_now_ms();
        while ((in = kuimen_in(&r)) < n) {
                if (in != last_in) {
                        last_in = in;
                        progress = h_now_ms();
                } else if (h_now_ms() - progress > STALL_MS) {
                        dief("backlog: kuimen stalled at in=%ld of %ld", in, n);
                }
                h_sleep_ms(100);
        }
        int64_t ingested = mono_ns();
        double c1 = cpu_s(r.k.pid);
        b->ingest_rate = (double)n / ((double)(ingested - pr.first_ns) / 1e9);
        b->ingest_us = (c1 - c0) * 1e6 / (double)n;
        /* Past the spool's flush age (500 ms), the backlog lives in SQLite, not in memory. */
        h_sleep_ms(2000);
        mem_kib(r.k.pid, &b->rss_kib, &b->hwm_kib);
        b->spool_bytes = dir_bytes(r.state);
        printf("  backlog of %ld held: kuimen VmRSS %.1f MB, VmHWM %.1f MB, spool files %.1f MB\n", n,
               (double)b->rss_kib / 1024, (double)b->hwm_kib / 1024, (double)b->spool_bytes / 1e6);
        fflush(stdout);
        double d0 = cpu_s(r.k.pid);
        int64_t t0 = mono_ns();
        h_broker_restart(&r.center);
        sub_wait(&r.sub, n, "backlog drain");
        double d1 = cpu_s(r.k.pid);
        int64_t first = atomic_load(&r.sub.first_ns), last = atomic_load(&r.sub.last_ns);
        b->drain_rate = (double)n / ((double)(last - t0) / 1e9);
        b->drain_steady_rate = (double)(n - 1) / ((double)(last - first) / 1e9);
        b->reconnect_s = (double)(first - t0) / 1e9;
        b->drain_us = (d1 - d0) * 1e6 / (double)n;
        mem_kib(r.k.pid, &b->rss_after_kib, &b->hwm_after_kib);
        rig_down(&r);
}

struct latency {
        enum path path;
        long n;
        double p50, p90, p99, max; /* ms */
        double ready_ms;
};

static int cmp_i64(const void *a, const void *b)
{
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
        return (x > y) - (x < y);
}

static void run_latency(enum path path, long rate, int secs, struct latency *l)
{
        struct rig r;
        struct child ch;
        struct pub_result pr;
        long n = rate * secs;
        rig_up(&r, path, n, true, true);
        pub_spawn(&ch, r.local.port, 0, n, rate);
        sub_wait(&r.sub, n + 1, "latency");
        pub_collect(&ch, &pr);
        qsort(r.sub.lat_ns, (size_t)n, sizeof(int64_t), cmp_i64);
        l->path = path;
        l->n = n;
        l->p50 = (double)r.sub.lat_ns[n / 2] / 1e6;
        l->p90 = (double)r.sub.lat_ns[n * 9 / 10] / 1e6;
        l->p99 = (double)r.sub.lat_ns[n * 99 / 100] / 1e6;
        l->max = (double)r.sub.lat_ns[n - 1] / 1e6;
        l->ready_ms = r.ready_ms;
        rig_down(&r);
        printf("  %-18s p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms  (first message through after %.0f ms)\n",
               path_name[path], l->p50, l->p90, l->p99, l->max, l->ready_ms);
        fflush(stdout);
}

static int cmp_e2e(const void *a, const void *b)
{
        double x = ((const struct e2e *)a)->rate, y = ((const struct e2e *)b)->rate;
        return (x > y) - (x < y);
}

static void usage(void)
{
        fprintf(stderr,
                "usage: bench_bridge [--short] [--e2e N] [--rounds R] [--backlog N] [--latency-s S] [--only e2e|backlog|latency]\n"
                "  KM_KUIMEN, KM_MOSQUITTO: the binaries; KM_BENCH_DIR: where rigs live (default /var/tmp);\n"
                "  KM_BENCH_KUIMEN_CONF: lines appended to kuimen's config (experiments only)\n");
}

int main(int argc, char **argv)
{
        long e2e_n = 100000, backlog_n = 1000000, lat_rate = 1000;
        int rounds = 3, lat_s = 30;
        const char *only = NULL;

        if (argc == 6 && strcmp(argv[1], "--publish") == 0)
                return publisher_main(atoi(argv[2]), atol(argv[3]), atol(argv[4]), atol(argv[5]));
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (strcmp(a, "--short") == 0) {
                        e2e_n = 20000, rounds = 1, backlog_n = 50000, lat_s = 5;
                } else if (v && strcmp(a, "--e2e") == 0) {
                        e2e_n = atol(v), i++;
                } else if (v && strcmp(a, "--rounds") == 0) {
                        rounds = atoi(v), i++;
                } else if (v && strcmp(a, "--backlog") == 0) {
                        backlog_n = atol(v), i++;
                } else if (v && strcmp(a, "--latency-s") == 0) {
                        lat_s = atoi(v), i++;
                } else if (v && strcmp(a, "--only") == 0) {
                        only = v, i++;
                } else {
                        usage();
                        return 2;
                }
        }
        if (e2e_n < 100 || rounds < 1 || rounds > 9 || backlog_n < 100 || lat_s < 1) {
                usage();
                return 2;
        }
        h_fail_hook = die;
        signal(SIGPIPE, SIG_IGN);
        const char *base = getenv("KM_BENCH_DIR") ? getenv("KM_BENCH_DIR") : "/var/tmp";
        printf("bridge benchmark: %d-byte payloads, QoS 1, %d topics, window %d; kuimen %s; rigs in %s (%s); %ld cores\n",
               PAYLOAD_LEN, TOPICS, WINDOW, getenv("KM_KUIMEN") ? getenv("KM_KUIMEN") : "kuimen (PATH)", base,
               fs_name(base), sysconf(_SC_NPROCESSORS_ONLN));

        struct e2e e[P_COUNT][9];
        struct e2e med[P_COUNT];
        bool do_e2e = !only || !strcmp(only, "e2e"), do_backlog = !only || !strcmp(only, "backlog"),
             do_lat = !only || !strcmp(only, "latency");
        if (do_e2e) {
                printf("\nend to end, %ld messages per run, %d round(s):\n", e2e_n, rounds);
                /* Rounds interleave the paths, so drift of the machine hits all alike. */
                for (int k = 0; k < rounds; k++)
                        for (int p = 0; p < P_COUNT; p++)
                                run_e2e((enum path)p, e2e_n, &e[p][k]);
                for (int p = 0; p < P_COUNT; p++) {
                        qsort(e[p], (size_t)rounds, sizeof(e[p][0]), cmp_e2e);
                        med[p] = e[p][rounds / 2];
                }
        }
        struct backlog b;
        if (do_backlog) {
                printf("\nbacklog of %ld, center down, sync=batch:\n", backlog_n);
                fflush(stdout);
                run_backlog(backlog_n, &b);
        }
        struct latency lat[P_COUNT];
        if (do_lat) {
                printf("\nlatency at %ld msg/s for %d s:\n", lat_rate, lat_s);
                for (int p = 0; p < P_COUNT; p++)
                        run_latency((enum path)p, lat_rate, lat_s, &lat[p]);
        }

        char g1[32], g2[32], g3[32];
        printf("\n==== summary (%s) ====\n", rounds > 1 ? "end to end: median of the rounds" : "one round");
        if (do_e2e) {
                printf("end-to-end msgs/s: mosquitto-bridge %s, kuimen(batch) %s, ratio %.2f\n",
                       grp(med[P_MOSQ].rate, g1), grp(med[P_KM_BATCH].rate, g2),
                       med[P_KM_BATCH].rate / med[P_MOSQ].rate);
                printf("end-to-end msgs/s: mosquitto-bridge %s, kuimen(always) %s, ratio %.2f\n",
                       grp(med[P_MOSQ].rate, g1), grp(med[P_KM_ALWAYS].rate, g3),
                       med[P_KM_ALWAYS].rate / med[P_MOSQ].rate);
                printf("kuimen CPU per message: batch %.1f us, always %.1f us (edge mosquitto with its bridge: %.1f us)\n",
                       med[P_KM_BATCH].bridge_us, med[P_KM_ALWAYS].bridge_us, med[P_MOSQ].bridge_us);
        }
        if (do_backlog) {
                printf("backlog %s: kuimen VmRSS %.1f MB, VmHWM %.1f MB, spool files %.1f MB; ingest %s msgs/s "
                       "(%.1f us CPU/msg)\n",
                       grp((double)b.n, g1), (double)b.rss_kib / 1024, (double)b.hwm_kib / 1024,
                       (double)b.spool_bytes / 1e6, grp(b.ingest_rate, g2), b.ingest_us);
                printf("drain: %s msgs/s from the first delivery (%s msgs/s counting %.1f s of reconnect), "
                       "%.1f us CPU/msg, VmHWM after %.1f MB\n",
                       grp(b.drain_steady_rate, g1), grp(b.drain_rate, g2), b.reconnect_s, b.drain_us,
                       (double)b.hwm_after_kib / 1024);
        }
        if (do_lat)
                for (int p = 0; p < P_COUNT; p++)
                        printf("latency at %ld msg/s, %-16s p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n",
                               lat_rate, path_name[p], lat[p].p50, lat[p].p90, lat[p].p99, lat[p].max);
        printf("floors (the issue's): ");
        if (do_e2e)
                printf("ratio(batch) >= 0.80: %s; CPU <= 25 us/msg: %s; ",
                       med[P_KM_BATCH].rate >= 0.8 * med[P_MOSQ].rate ? "met" : "MISSED",
                       med[P_KM_BATCH].bridge_us <= 25 ? "met" : "MISSED");
        if (do_backlog)
                printf("RSS <= 32 MB: %s; drain >= 20 000 msgs/s: %s",
                       b.hwm_after_kib <= 32 * 1024 ? "met" : "MISSED",
                       b.drain_steady_rate >= 20000 ? "met" : "MISSED");
        printf("\n");
        return 0;
}
