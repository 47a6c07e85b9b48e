/* SPDX-License-Identifier: MIT */
/* Test harness: processes, ports, logs and Paho test clients. */
#include "harness.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void (*h_fail_hook)(const char *msg);

/* A broken setup (no port, no broker, no client) ends the caller: under Criterion by
 * failing the running test, which longjmps out of it; elsewhere through h_fail_hook,
 * because Criterion's assertions outside a test have no test to end. */
#define H_REQUIRE(cond, ...)                                                                 \
        do {                                                                                 \
                if (!(cond))                                                                 \
                        h_fail(__FILE__, __LINE__, __VA_ARGS__);                             \
        } while (0)

__attribute__((format(printf, 3, 4))) static void h_fail(const char *file, int line, const char *fmt, ...)
{
        char msg[512];
        int n = snprintf(msg, sizeof(msg), "%s:%d: ", file, line);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
        va_end(ap);
        if (h_fail_hook) {
                h_fail_hook(msg);
                abort(); /* the hook must not return; never go on with a broken setup */
        }
        cr_assert_fail("%s", msg);
}

void h_sleep_ms(int ms)
{
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

int64_t h_now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void h_tmpdir(char *out, size_t n, const char *tag)
{
        snprintf(out, n, "/tmp/km-%s-XXXXXX", tag);
        H_REQUIRE(mkdtemp(out), "mkdtemp %s: %s", out, strerror(errno));
}

void h_cleanup(const char *dir)
{
        char cmd[300];
        if (getenv("KM_KEEP"))
                return;
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void)!system(cmd);
}

/* Ports below the ephemeral range: a client reconnecting to a stopped broker's port in
 * that range can get the same port as its source and connect to itself (TCP
 * simultaneous open), which looks like a broker that answers. */
int h_free_port(void)
{
        static unsigned seed;
        if (!seed)
                seed = (unsigned)getpid() * 2654435761u;
        for (int tries = 0; tries < 1000; tries++) {
                int port = 20000 + (int)(rand_r(&seed) % 12000);
                int fd = socket(AF_INET, SOCK_STREAM, 0);
                struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                int ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
                close(fd);
                if (ok)
                        return port;
        }
        H_REQUIRE(false, "no free port");
        return -1;
}

bool h_wait_port(int port, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        while (h_now_ms() < until) {
                int fd = socket(AF_INET, SOCK_STREAM, 0);
                struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
                close(fd);
                if (rc == 0)
                        return true;
                h_sleep_ms(20);
        }
        return false;
}

/* Where this run's lines of log begin. */
static long log_size(const char *log)
{
        struct stat st;
        return stat(log, &st) == 0 ? (long)st.st_size : 0;
}

static pid_t spawn(const char *log, char *const argv[])
{
        pid_t pid = fork();
        H_REQUIRE(pid >= 0, "fork: %s", strerror(errno));
        if (pid == 0) {
                /* Nothing outlives the test process. */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                /* The test's own sockets (its MQTT clients) must not live on in the
                 * child: a connection the test closes would stay open in kuimen. */
                close_range(3, ~0U, 0);
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                execvp(argv[0], argv);
                _exit(127);
        }
        return pid;
}

void h_broker_start(struct h_broker *b, const char *dir, int port, const char *extra)
{
        h_broker_start_ex(b, dir, port, NULL, extra);
}

void h_broker_start_ex(struct h_broker *b, const char *dir, int port, const char *head, const char *extra)
{
        memset(b, 0, sizeof(*b));
        b->port = port ? port : h_free_port();
        snprintf(b->dir, sizeof(b->dir), "%s", dir);
        snprintf(b->conf, sizeof(b->conf), "%s/mosquitto-%d.conf", dir, b->port);
        snprintf(b->p.log, sizeof(b->p.log), "%s/mosquitto-%d.log", dir, b->port);
        FILE *f = fopen(b->conf, "w");
        H_REQUIRE(f, "%s: %s", b->conf, strerror(errno));
        /* user root: as root mosquitto would drop to the mosquitto user and could not
         * write its persistence file in our directory. */
        fprintf(f, "%s\n", head ? head : "");
        fprintf(f,
                "listener %d 127.0.0.1\nallow_anonymous true\nuser root\n"
                "persistence true\npersistence_location %s/\npersistence_file mosquitto-%d.db\n"
                "max_queued_messages 0\nmax_inflight_messages 100\nlog_dest stderr\nlog_type all\nlog_timestamp_format %%H:%%M:%%S.%%N\n%s\n",
                b->port, dir, b->port, extra ? extra : "");
        fclose(f);
        h_broker_restart(b);
}

void h_broker_restart(struct h_broker *b)
{
        const char *bin = getenv("KM_MOSQUITTO") ? getenv("KM_MOSQUITTO") : "mosquitto";
        char *argv[] = { (char *)bin, "-c", b->conf, NULL };
        b->p.from = log_size(b->p.log);
        b->p.pid = spawn(b->p.log, argv);
        H_REQUIRE(h_wait_port(b->port, 10000), "mosquitto on port %d did not answer", b->port);
}

void h_kuimen_start(struct h_proc *p, const char *log, const char *const *args)
{
        char *argv[16];
        int n = 0;
        argv[n++] = getenv("KM_KUIMEN") ? getenv("KM_KUIMEN") : "kuimen";
        for (; args && *args && n < 15; args++)
                argv[n++] = (char *)*args;
        argv[n] = NULL;
        snprintf(p->log, sizeof(p->log), "%s", log);
        p->from = log_size(log);
        p->pid = spawn(log, argv);
}

int h_kuimen_run(const char *const *args, char *out, size_t len)
{
        int fds[2];
        char *argv[16];
        size_t n = 0;
        while (args[n])
                n++;
        H_REQUIRE(n + 2 <= sizeof(argv) / sizeof(argv[0]), "h_kuimen_run: %zu arguments, at most 14", n);
        H_REQUIRE(pipe(fds) == 0, "pipe: %s", strerror(errno));
        pid_t pid = fork();
        if (pid == 0) {
                dup2(fds[1], 1);
                dup2(fds[1], 2);
                n = 0;
                argv[n++] = getenv("KM_KUIMEN") ? getenv("KM_KUIMEN") : "kuimen";
                for (; *args; args++)
                        argv[n++] = (char *)*args;
                argv[n] = NULL;
                execv(argv[0], argv);
                _exit(127);
        }
        close(fds[1]);
        size_t got = 0;
        ssize_t r;
        while ((r = read(fds[0], out + got, len - 1 - got)) > 0)
                got += (size_t)r;
        out[got] = 0;
        close(fds[0]);
        int st;
        waitpid(pid, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int h_stop(struct h_proc *p, int sig)
{
        int status = -1;
        if (p->pid <= 0)
                return -1;
        kill(p->pid, sig);
        int64_t until = h_now_ms() + 15000;
        while (waitpid(p->pid, &status, WNOHANG) == 0) {
                if (h_now_ms() > until) {
                        kill(p->pid, SIGKILL);
                        waitpid(p->pid, &status, 0);
                        break;
                }
                h_sleep_ms(10);
        }
        p->pid = 0;
        return status;
}

int h_log_count(const struct h_proc *p, const char *needle)
{
        FILE *f = fopen(p->log, "r");
        char line[2048];
        int n = 0;
        if (!f)
                return 0;
        while (fgets(line, sizeof(line), f))
                n += strstr(line, needle) != NULL;
        fclose(f);
        return n;
}

static bool log_has_since(const struct h_proc *p, const char *needle)
{
        FILE *f = fopen(p->log, "r");
        char line[2048];
        bool found = false;
        if (!f)
                return false;
        if (p->from > 0 && fseek(f, p->from, SEEK_SET) != 0)
                rewind(f);
        while (!found && fgets(line, sizeof(line), f))
                found = strstr(line, needle) != NULL;
        fclose(f);
        return found;
}

bool h_log_wait(const struct h_proc *p, const char *needle, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        while (h_now_ms() < until) {
                if (log_has_since(p, needle))
                        return true;
                h_sleep_ms(20);
        }
        return false;
}

/* h_write_conf with the link's uri and TLS keys (tls: NULL for none) given. */
static void write_conf(const char *path, const char *node, const char *dir, int local_port, const char *uri,
                       const char *tls, const char *extra)
{
        FILE *f = fopen(path, "w");
        H_REQUIRE(f, "%s: %s", path, strerror(errno));
        fprintf(f,
                "[node]\nname = %s\nspool = %s/state/spool.db\nstats_interval = 0\n"
                "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#, pos/#, alert/#, status/#\n"
                "[link center]\ntype = mqtt\nuri = %s\ntopic_prefix = kuimen\nkeepalive = 2s\n%s%s\n",
                node, dir, local_port, uri, tls ? tls : "", extra ? extra : "");
        fclose(f);
}

void h_write_conf(const char *path, const char *node, const char *dir, int local_port, int center_port,
                  const char *extra)
{
        char uri[64];
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", center_port);
        write_conf(path, node, dir, local_port, uri, NULL, extra);
}

void h_write_conf_tls(const char *path, const char *node, const char *dir, int local_port, int tls_port,
                      const char *client, const char *extra)
{
        char uri[64], tls[800];
        snprintf(uri, sizeof(uri), "ssl://127.0.0.1:%d", tls_port);
        snprintf(tls, sizeof(tls), "ca = %s/ca.crt\ncert = %s/%s.crt\nkey = %s/%s.key\n", dir, dir, client, dir, client);
        write_conf(path, node, dir, local_port, uri, tls, extra);
}

/* ---- a center broker over TLS ------------------------------------------------------- */

void h_make_certs(const char *dir)
{
        char cmd[4096];
        snprintf(cmd, sizeof(cmd),
                 "cd '%s' && set -e; exec 2>certs.log;"
                 "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1.key; };"
                 "ca() { key $1; openssl req -x509 -new -key $1.key -out $1.crt -days 2 -subj /CN=$2"
                 "  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; };"
                 "leaf() { key $1; openssl req -new -key $1.key -out $1.csr -subj /CN=$3;"
                 "  printf '%%s\\n' \"$4\" 'basicConstraints=CA:FALSE' > $1.ext;"
                 "  openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -days 2 -out $1.crt"
                 "  -extfile $1.ext; };"
                 "ca ca kuimen-test-ca; ca rogue-ca kuimen-rogue-ca;"
                 "leaf server ca localhost 'subjectAltName=IP:127.0.0.1,DNS:localhost';"
                 "leaf other ca other.example 'subjectAltName=DNS:other.example';"
                 "leaf client ca north 'extendedKeyUsage=clientAuth';"
                 "leaf south ca south 'extendedKeyUsage=clientAuth';"
                 "leaf rogue rogue-ca north 'extendedKeyUsage=clientAuth';"
                 "openssl verify -CAfile ca.crt server.crt other.crt client.crt >/dev/null;"
                 "! openssl verify -CAfile ca.crt rogue.crt >/dev/null 2>&1",
                 dir);
        int rc = system(cmd);
        H_REQUIRE(rc == 0, "making the test certificates failed (%d): see %s/certs.log", rc, dir);
}

void h_broker_start_tls(struct h_broker *b, const char *dir, int port, const char *server, const char *tls_extra,
                        int *tls_port)
{
        char extra[1400];
        if (!port)
                do
                        port = h_free_port();
                while (port == *tls_port);
        while (!*tls_port || *tls_port == port)
                *tls_port = h_free_port();
        /* use_identity_as_username: the certificate's CN is the client's user name, so
         * the broker log shows who the certificate says the client is. */
        snprintf(extra, sizeof(extra),
                 "listener %d 127.0.0.1\ncafile %s/ca.crt\ncertfile %s/%s.crt\nkeyfile %s/%s.key\n"
                 "require_certificate true\nuse_identity_as_username true\n%s\n",
                 *tls_port, dir, dir, server, dir, server, tls_extra ? tls_extra : "");
        h_broker_start_ex(b, dir, port, "per_listener_settings true", extra);
        H_REQUIRE(h_wait_port(*tls_port, 5000), "the center's TLS listener on port %d did not open", *tls_port);
}

void h_write_text(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");
        H_REQUIRE(f, "%s: %s", path, strerror(errno));
        fputs(text, f);
        fclose(f);
}

/* ---- subscriber ------------------------------------------------------------------ */

static bool seen_insert(struct h_sub *s, uint64_t id)
{
        size_t lo = 0, hi = s->nseen;
        while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (s->seen[mid] < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo < s->nseen && s->seen[lo] == id)
                return false;
        s->seen = realloc(s->seen, (s->nseen + 1) * sizeof(*s->seen));
        memmove(s->seen + lo + 1, s->seen + lo, (s->nseen - lo) * sizeof(*s->seen));
        s->seen[lo] = id;
        s->nseen++;
        return true;
}

static uint32_t fnv(const char *p)
{
        uint32_t h = 2166136261u;
        while (*p)
                h = (h ^ (uint8_t)*p++) * 16777619u;
        return h;
}

/* Appends rx unless its payload is there already; returns whether it was new. */
static bool payload_insert(struct h_sub *s, const struct h_rx *rx)
{
        if (2 * (s->n + 1) > s->setcap) {
                size_t cap = s->setcap ? s->setcap * 2 : 4096;
                uint32_t *set = calloc(cap, sizeof(*set));
                for (size_t i = 0; i < s->n; i++) {
                        size_t h = fnv(s->rx[i].payload) & (cap - 1);
                        while (set[h])
                                h = (h + 1) & (cap - 1);
                        set[h] = (uint32_t)i + 1;
                }
                free(s->set);
                s->set = set;
                s->setcap = cap;
        }
        size_t h = fnv(rx->payload) & (s->setcap - 1);
        while (s->set[h]) {
                if (strcmp(s->rx[s->set[h] - 1].payload, rx->payload) == 0)
                        return false;
                h = (h + 1) & (s->setcap - 1);
        }
        if (s->n == s->cap) {
                s->cap = s->cap ? s->cap * 2 : 1024;
                s->rx = realloc(s->rx, s->cap * sizeof(*s->rx));
        }
        s->rx[s->n] = *rx;
        s->set[h] = (uint32_t)++s->n;
        return true;
}

/* The user properties kuimen adds (kuimen-id, -origin, -relay); relay may be NULL.
 * origin and relay hold 32 bytes. */
static void kuimen_props(const MQTTProperties *props, uint64_t *id, char *origin, char *relay)
{
        for (int i = 0; i < props->count; i++) {
                const MQTTProperty *p = &props->array[i];
                if (p->identifier != MQTTPROPERTY_CODE_USER_PROPERTY)
                        continue;
                char k[64], v[64];
                snprintf(k, sizeof(k), "%.*s", p->value.data.len, p->value.data.data);
                snprintf(v, sizeof(v), "%.*s", p->value.value.len, p->value.value.data);
                if (strcmp(k, "kuimen-id") == 0)
                        *id = strtoull(v, NULL, 10);
                else if (strcmp(k, "kuimen-origin") == 0)
                        snprintf(origin, 32, "%.31s", v);
                else if (relay && strcmp(k, "kuimen-relay") == 0)
                        snprintf(relay, 32, "%.31s", v);
        }
}

int h_mqtt_version = 5;

/* Over MQTT 3.1.1 kuimen puts origin and id in an envelope: a JSON object on the first
 * line of the payload (docs/topics.md). Read as any subscriber would, with a JSON
 * parser: when the payload has one (and no user property said the id), its fields go
 * to id, origin, relay and *skip is the envelope's length. */
static void kuimen_envelope(const char *payload, int len, uint64_t *id, char *origin, char *relay, int *skip)
{
        const char *nl = len > 0 ? memchr(payload, '\n', (size_t)len) : NULL;
        *skip = 0;
        if (*id || !nl || payload[0] != '{')
                return;
        cJSON *j = cJSON_ParseWithLength(payload, (size_t)(nl - payload));
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, "kuimen-origin"),
                    *i = cJSON_GetObjectItemCaseSensitive(j, "kuimen-id"),
                    *r = cJSON_GetObjectItemCaseSensitive(j, "kuimen-relay");
        if (cJSON_IsString(o) && cJSON_IsString(i)) {
                *id = strtoull(i->valuestring, NULL, 10);
                snprintf(origin, 32, "%.31s", o->valuestring);
                if (relay && cJSON_IsString(r))
                        snprintf(relay, 32, "%.31s", r->valuestring);
                *skip = (int)(nl - payload) + 1;
        }
        cJSON_Delete(j);
}

static int sub_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        struct h_sub *s = ctx;
        struct h_rx rx = { 0 };
        int skip;
        (void)tlen;
        snprintf(rx.topic, sizeof(rx.topic), "%s", topic);
        kuimen_props(&m->properties, &rx.id, rx.origin, NULL);
        kuimen_envelope(m->payload, m->payloadlen, &rx.id, rx.origin, NULL, &skip);
        int pl = m->payloadlen - skip;
        snprintf(rx.payload, sizeof(rx.payload), "%.*s", pl < 63 ? pl : 63, (char *)m->payload + skip);
        pthread_mutex_lock(&s->mu);
        s->total++;
        /* A kuimen-id is unique per origin only: two bases' first messages may share
         * one (a center relaying both). */
        if (rx.id && !seen_insert(s, (uint64_t)fnv(rx.origin) << 32 ^ rx.id))
                s->dups++;
        else if (!payload_insert(s, &rx))
                s->redelivered++;
        pthread_mutex_unlock(&s->mu);
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

static void sub_connected(void *ctx, char *cause)
{
        struct h_sub *s = ctx;
        (void)cause;
        s->connected = true;
}

static void sub_lost(void *ctx, char *cause)
{
        struct h_sub *s = ctx;
        (void)cause;
        s->connected = false;
}

static int connect_v5(MQTTAsync c, bool clean, int expiry_s)
{
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        if (h_mqtt_version == 4) {
                MQTTAsync_connectOptions co3 = MQTTAsync_connectOptions_initializer;
                co3.MQTTVersion = MQTTVERSION_3_1_1;
                co3.cleansession = clean;
                co3.automaticReconnect = 1;
                co3.minRetryInterval = 1;
                co3.maxRetryInterval = 1;
                co3.keepAliveInterval = 5;
                return MQTTAsync_connect(c, &co3);
        }
        MQTTProperties props = MQTTProperties_initializer;
        MQTTProperty p = { .identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL };
        co.cleanstart = clean;
        co.automaticReconnect = 1;
        co.minRetryInterval = 1;
        co.maxRetryInterval = 1;
        co.keepAliveInterval = 5;
        if (!clean) {
                p.value.integer4 = (unsigned)expiry_s;
                MQTTProperties_add(&props, &p);
                co.connectProperties = &props;
        }
        int rc = MQTTAsync_connect(c, &co);
        MQTTProperties_free(&props);
        return rc;
}

/*
 * Paho's async client (1.3.12, Debian 12) connects the first client of a process at
 * once and every later one in about 2 s: its receive thread sleeps up to 1 s in
 * select() on the sockets it had, twice, before it looks at a new one (Paho issue
 * #1430, fixed after 1.3.12). The tests connect a subscriber and a publisher or more
 * in each test, so that was seconds per test. The waker, the first client of the
 * process, publishes to itself on a '$' topic (which no '#' subscription, kuimen's
 * included, matches) while a later client connects: each delivery ends that select()
 * at once. Where it cannot (its broker gone, or an ACL refuses the topic) a connect
 * takes its 2 s as before.
 */
static MQTTAsync waker;
static char waker_topic[64];

static int waker_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        (void)ctx;
        (void)tlen;
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

static void waker_start(const char *uri, MQTTAsync_createOptions *cro)
{
        char id[48];
        snprintf(id, sizeof(id), "h-waker-%ld", (long)getpid());
        snprintf(waker_topic, sizeof(waker_topic), "$kuimen-test/waker/%ld", (long)getpid());
        if (MQTTAsync_createWithOptions(&waker, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, cro) != 0) {
                waker = NULL;
                return;
        }
        MQTTAsync_setCallbacks(waker, NULL, NULL, waker_arrived, NULL);
        if (connect_v5(waker, true, 0) != 0)
                return;
        for (int64_t until = h_now_ms() + 2000; !MQTTAsync_isConnected(waker) && h_now_ms() < until;)
                h_sleep_ms(5);
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        if (MQTTAsync_isConnected(waker))
                MQTTAsync_subscribe(waker, waker_topic, 0, &ro);
}

static void waker_poke(void)
{
        if (!waker || !MQTTAsync_isConnected(waker))
                return;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        MQTTAsync_send(waker, waker_topic, 1, "w", 0, 0, &ro);
}

/* A Paho v5 client of the broker on port; what names it in failures ("subscriber"). */
static void client_create(MQTTAsync *c, int port, const char *id, const char *what)
{
        char uri[64];
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        if (h_mqtt_version == 4)
                cro.MQTTVersion = MQTTVERSION_3_1_1;
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        if (!waker)
                waker_start(uri, &cro);
        H_REQUIRE(MQTTAsync_createWithOptions(c, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro) == 0,
                  "%s %s: cannot create the client", what, id);
}

/* Connects c (its callbacks set) and waits up to 10 s for the CONNACK. */
static void client_connect(MQTTAsync c, bool clean, int expiry_s, const char *id, const char *what)
{
        H_REQUIRE(connect_v5(c, clean, expiry_s) == 0, "%s %s: connect refused", what, id);
        int64_t until = h_now_ms() + 10000;
        while (!MQTTAsync_isConnected(c) && h_now_ms() < until) {
                waker_poke();
                h_sleep_ms(5);
        }
        H_REQUIRE(MQTTAsync_isConnected(c), "%s %s did not connect", what, id);
}

void h_sub_start(struct h_sub *s, int port, const char *id, const char *filter, bool persistent)
{
        memset(s, 0, sizeof(*s));
        pthread_mutex_init(&s->mu, NULL);
        client_create(&s->c, port, id, "subscriber");
        MQTTAsync_setCallbacks(s->c, s, sub_lost, sub_arrived, NULL);
        MQTTAsync_setConnected(s->c, s, sub_connected);
        client_connect(s->c, !persistent, 3600, id, "subscriber");
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        H_REQUIRE(MQTTAsync_subscribe(s->c, filter, 1, &ro) == 0, "subscriber %s: subscribe refused", id);
        h_sleep_ms(200); /* the SUBACK */
}

size_t h_sub_count(struct h_sub *s)
{
        pthread_mutex_lock(&s->mu);
        size_t n = s->n;
        pthread_mutex_unlock(&s->mu);
        return n;
}

size_t h_sub_wait(struct h_sub *s, size_t want, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        size_t n;
        for (;;) {
                pthread_mutex_lock(&s->mu);
                n = s->n;
                pthread_mutex_unlock(&s->mu);
                if (n >= want || h_now_ms() > until)
                        return n;
                h_sleep_ms(20);
        }
}

void h_sub_stop(struct h_sub *s)
{
        MQTTAsync_disconnectOptions o = MQTTAsync_disconnectOptions_initializer5;
        if (h_mqtt_version == 4)
                o = (MQTTAsync_disconnectOptions)MQTTAsync_disconnectOptions_initializer;
        o.timeout = 500;
        MQTTAsync_disconnect(s->c, &o);
        h_sleep_ms(50);
        MQTTAsync_destroy(&s->c);
        free(s->rx);
        free(s->seen);
        free(s->set);
        pthread_mutex_destroy(&s->mu);
}

size_t h_order_violations(struct h_sub *s)
{
        /* topic index -> last seq; topics are "<t>:<seq>" payloads, t < 1024 */
        long last[1024];
        size_t bad = 0;
        for (int i = 0; i < 1024; i++)
                last[i] = -1;
        for (size_t i = 0; i < s->n; i++) {
                int t;
                long seq;
                if (sscanf(s->rx[i].payload, "%d:%ld", &t, &seq) != 2 || t < 0 || t >= 1024)
                        continue;
                if (seq <= last[t])
                        bad++;
                last[t] = seq;
        }
        return bad;
}

/* ---- whole-message recorder ----------------------------------------------------- */

static int rec_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        struct h_rec *r = ctx;
        struct h_msg x = { .len = m->payloadlen, .at = h_now_ms() };
        (void)tlen;
        int skip;
        kuimen_props(&m->properties, &x.id, x.origin, x.relay);
        kuimen_envelope(m->payload, m->payloadlen, &x.id, x.origin, x.relay, &skip);
        x.len -= skip;
        x.topic = strdup(topic);
        x.payload = malloc((size_t)x.len + 1);
        if (x.topic && x.payload) {
                memcpy(x.payload, (char *)m->payload + skip, (size_t)x.len);
                x.payload[x.len] = '\0';
        }
        pthread_mutex_lock(&r->mu);
        if (r->n == r->cap) {
                r->cap = r->cap ? r->cap * 2 : 256;
                r->m = realloc(r->m, r->cap * sizeof(*r->m));
        }
        if (r->m && x.topic && x.payload)
                r->m[r->n++] = x;
        else /* no memory: a test that counts sees one missing */
                free(x.topic), free(x.payload);
        pthread_mutex_unlock(&r->mu);
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

void h_rec_start(struct h_rec *r, int port, const char *id, const char *filter)
{
        memset(r, 0, sizeof(*r));
        pthread_mutex_init(&r->mu, NULL);
        client_create(&r->c, port, id, "recorder");
        MQTTAsync_setCallbacks(r->c, r, NULL, rec_arrived, NULL);
        client_connect(r->c, true, 0, id, "recorder");
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        H_REQUIRE(MQTTAsync_subscribe(r->c, filter, 1, &ro) == 0, "recorder %s: subscribe refused", id);
        H_REQUIRE(MQTTAsync_waitForCompletion(r->c, ro.token, 5000) == 0, "recorder %s: no SUBACK", id);
}

size_t h_rec_count(struct h_rec *r)
{
        pthread_mutex_lock(&r->mu);
        size_t n = r->n;
        pthread_mutex_unlock(&r->mu);
        return n;
}

size_t h_rec_wait(struct h_rec *r, size_t want, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        while (h_rec_count(r) < want && h_now_ms() < until)
                h_sleep_ms(20);
        return h_rec_count(r);
}

void h_rec_stop(struct h_rec *r)
{
        MQTTAsync_disconnectOptions o = MQTTAsync_disconnectOptions_initializer5;
        if (h_mqtt_version == 4)
                o = (MQTTAsync_disconnectOptions)MQTTAsync_disconnectOptions_initializer;
        o.timeout = 500;
        MQTTAsync_disconnect(r->c, &o);
        h_sleep_ms(50);
        MQTTAsync_destroy(&r->c);
}

void h_rec_free(struct h_rec *r)
{
        for (size_t i = 0; i < r->n; i++)
                free(r->m[i].topic), free(r->m[i].payload);
        free(r->m);
        pthread_mutex_destroy(&r->mu);
}

int h_rec_send(struct h_rec *r, const char *topic, const char *payload)
{
        MQTTAsync_message m = MQTTAsync_message_initializer;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        m.payload = (void *)payload;
        m.payloadlen = (int)strlen(payload);
        m.qos = 1;
        int rc = MQTTAsync_sendMessage(r->c, topic, &m, &ro);
        return rc ? rc : MQTTAsync_waitForCompletion(r->c, ro.token, 5000);
}

/* ---- publisher ------------------------------------------------------------------- */

struct pub_ctx {
        struct h_pub *p;
        char payload[64];
};

static void pub_ok(void *ctx, MQTTAsync_successData5 *r)
{
        struct pub_ctx *x = ctx;
        struct h_pub *p = x->p;
        (void)r;
        pthread_mutex_lock(&p->mu);
        if (p->acked == p->cap) {
                p->cap = p->cap ? p->cap * 2 : 1024;
                p->acked_payloads = realloc(p->acked_payloads, p->cap * sizeof(*p->acked_payloads));
        }
        memcpy(p->acked_payloads[p->acked++], x->payload, 64);
        pthread_mutex_unlock(&p->mu);
        free(x);
}

static void pub_fail(void *ctx, MQTTAsync_failureData5 *r)
{
        struct pub_ctx *x = ctx;
        if (x->p->failed < 3)
                fprintf(stderr, "harness: publish of '%s' failed: %d %s\n", x->payload, r ? r->code : 0,
                        r && r->message ? r->message : "");
        pthread_mutex_lock(&x->p->mu);
        x->p->failed++;
        pthread_mutex_unlock(&x->p->mu);
        free(x);
}

/* A 3.1.1 client takes the callbacks without 5. */
static void pub_ok3(void *ctx, MQTTAsync_successData *r)
{
        (void)r;
        pub_ok(ctx, NULL);
}

static void pub_fail3(void *ctx, MQTTAsync_failureData *r)
{
        MQTTAsync_failureData5 r5 = MQTTAsync_failureData5_initializer;
        if (r)
                r5.code = r->code, r5.message = r->message;
        pub_fail(ctx, &r5);
}

void h_pub_start(struct h_pub *p, int port, const char *id)
{
        memset(p, 0, sizeof(*p));
        pthread_mutex_init(&p->mu, NULL);
        p->version = h_mqtt_version;
        client_create(&p->c, port, id, "publisher");
        client_connect(p->c, true, 0, id, "publisher");
}

int h_pub_send(struct h_pub *p, const char *topic, const char *payload)
{
        /* A bounded window: past the broker's receive maximum Paho fails sends
         * asynchronously instead of queueing them. */
        for (;;) {
                pthread_mutex_lock(&p->mu);
                bool room = p->sent - p->acked - p->failed < 64;
                pthread_mutex_unlock(&p->mu);
                if (room)
                        break;
                h_sleep_ms(1);
        }
        MQTTAsync_message m = MQTTAsync_message_initializer;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        struct pub_ctx *x = calloc(1, sizeof(*x));
        x->p = p;
        snprintf(x->payload, sizeof(x->payload), "%s", payload);
        m.payload = (void *)payload;
        m.payloadlen = (int)strlen(payload);
        m.qos = 1;
        if (p->version == 4) {
                ro.onSuccess = pub_ok3;
                ro.onFailure = pub_fail3;
        } else {
                ro.onSuccess5 = pub_ok;
                ro.onFailure5 = pub_fail;
        }
        ro.context = x;
        int rc = MQTTAsync_sendMessage(p->c, topic, &m, &ro);
        if (rc != MQTTASYNC_SUCCESS) {
                free(x);
                return rc;
        }
        pthread_mutex_lock(&p->mu);
        p->sent++;
        pthread_mutex_unlock(&p->mu);
        return 0;
}

bool h_pub_flush(struct h_pub *p, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        for (;;) {
                pthread_mutex_lock(&p->mu);
                bool done = p->acked + p->failed >= p->sent;
                pthread_mutex_unlock(&p->mu);
                if (done)
                        return true;
                if (h_now_ms() > until)
                        return false;
                h_sleep_ms(10);
        }
}

void h_pub_stop(struct h_pub *p)
{
        MQTTAsync_disconnectOptions o = MQTTAsync_disconnectOptions_initializer5;
        if (p->version == 4)
                o = (MQTTAsync_disconnectOptions)MQTTAsync_disconnectOptions_initializer;
        o.timeout = 500;
        MQTTAsync_disconnect(p->c, &o);
        h_sleep_ms(50);
        MQTTAsync_destroy(&p->c);
        free(p->acked_payloads);
        pthread_mutex_destroy(&p->mu);
}

/* ---- TCP proxy ------------------------------------------------------------------- */

/* A socket of type bound to a free loopback port, into *port: h_free_port's port can be
 * taken by someone else before the bind, so try again. */
static int bound_socket(int type, int *port)
{
        int fd = socket(AF_INET, type, 0);
        H_REQUIRE(fd >= 0, "socket: %s", strerror(errno));
        if (type == SOCK_STREAM) {
                int one = 1;
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        }
        for (int tries = 0; tries < 50; tries++) {
                *port = h_free_port();
                struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)*port),
                                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
                        return fd;
        }
        H_REQUIRE(false, "no port to bind: %s", strerror(errno));
        return -1;
}

static int dial(int port)
{
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                close(fd);
                return -1;
        }
        return fd;
}

static bool pump(int from, int to)
{
        char buf[65536];
        ssize_t r = read(from, buf, sizeof(buf));
        if (r <= 0)
                return false;
        for (ssize_t off = 0; off < r;) {
                ssize_t w = write(to, buf + off, (size_t)(r - off));
                if (w <= 0)
                        return false;
                off += w;
        }
        return true;
}

static void proxy_drop(struct h_proxy *p, int i)
{
        close(p->a[i]);
        close(p->b[i]);
        p->a[i] = p->a[p->n - 1];
        p->b[i] = p->b[p->n - 1];
        p->checked[i] = p->checked[p->n - 1];
        p->n--;
}

/* The gate (v311_only): looks at the client's CONNECT before a byte of it reaches the
 * broker. Its protocol level is the byte after the fixed header, the variable-length
 * remaining length and the protocol name ("MQTT", length-prefixed). 1: pass (3.1.1 or
 * 3.1), 0: not all there yet, -1: an MQTT 5 CONNECT, refused as v311_only says. */
static int gate_check(struct h_proxy *p, int i)
{
        uint8_t h[16];
        ssize_t n = recv(p->a[i], h, sizeof(h), MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (n <= 0)
                return 1; /* EOF or error: pump() sees it */
        size_t k = 1;
        while (k < (size_t)n && k < 5 && (h[k] & 0x80))
                k++;
        k++; /* past the remaining length */
        if ((size_t)n < k + 2 + 4 + 1)
                return 0;
        if (h[k + 6] < 5)
                return 1;
        atomic_fetch_add(&p->refused_v5, 1);
        /* Read the CONNECT, as a broker does before it answers: the close is then a FIN,
         * not a reset for unread bytes. */
        while (recv(p->a[i], h, sizeof(h), MSG_DONTWAIT) > 0)
                ;
        if (atomic_load(&p->v311_only) == 2) {
                /* The 3.1.1 spec: CONNACK return code 1 (unacceptable protocol level),
                 * then the close. */
                static const uint8_t connack[] = { 0x20, 0x02, 0x00, 0x01 };
                (void)!write(p->a[i], connack, sizeof(connack));
        }
        return -1; /* RabbitMQ 3.10: the close alone */
}

/* Cut: nothing polled, so nothing read, written, accepted or closed. Down: connections
 * closed at once, and new ones as they come. A full table leaves new connections in the
 * listen backlog. */
static void *proxy_main(void *arg)
{
        struct h_proxy *p = arg;
        while (!atomic_load(&p->stop)) {
                struct pollfd pf[1 + 2 * H_PROXY_MAXC];
                bool cut = atomic_load(&p->cut), down = atomic_load(&p->down);
                int n = 0;
                while (down && p->n)
                        proxy_drop(p, p->n - 1);
                pf[n++] = (struct pollfd){ .fd = p->lfd, .events = cut || p->n == H_PROXY_MAXC ? 0 : POLLIN };
                for (int i = 0; i < p->n; i++) {
                        pf[n++] = (struct pollfd){ .fd = p->a[i], .events = cut ? 0 : POLLIN };
                        pf[n++] = (struct pollfd){ .fd = p->b[i], .events = cut ? 0 : POLLIN };
                }
                if (poll(pf, (nfds_t)n, 20) <= 0)
                        continue;
                if (pf[0].revents & POLLIN) {
                        int c = accept(p->lfd, NULL, NULL);
                        int s = c >= 0 && !atomic_load(&p->down) ? dial(p->target) : -1;
                        if (s < 0) {
                                if (c >= 0)
                                        close(c);
                        } else {
                                p->a[p->n] = c;
                                p->checked[p->n] = !atomic_load(&p->v311_only);
                                p->b[p->n++] = s;
                                /* Its pollfds are not in pf yet: the others' events
                                 * wait for the next poll (level-triggered). */
                                continue;
                        }
                }
                for (int i = 0; i < p->n; i++) {
                        bool ok = true;
                        if (!p->checked[i] && (pf[1 + 2 * i].revents & (POLLIN | POLLHUP))) {
                                int g = gate_check(p, i);
                                if (g == 0)
                                        continue; /* the rest of the CONNECT is on its way */
                                ok = g > 0;
                                p->checked[i] = ok;
                        }
                        if (ok && (pf[1 + 2 * i].revents & (POLLIN | POLLHUP)))
                                ok = pump(p->a[i], p->b[i]);
                        if (ok && (pf[2 + 2 * i].revents & (POLLIN | POLLHUP)))
                                ok = pump(p->b[i], p->a[i]);
                        if (!ok) {
                                proxy_drop(p, i);
                                break; /* the pollfd indexes moved */
                        }
                }
        }
        return NULL;
}

void h_proxy_start(struct h_proxy *p, int target)
{
        memset(p, 0, sizeof(*p));
        p->target = target;
        p->lfd = bound_socket(SOCK_STREAM, &p->port);
        H_REQUIRE(listen(p->lfd, 16) == 0, "proxy: listen: %s", strerror(errno));
        H_REQUIRE(pthread_create(&p->t, NULL, proxy_main, p) == 0, "proxy: no thread");
}

void h_proxy_stop(struct h_proxy *p)
{
        atomic_store(&p->stop, true);
        pthread_join(p->t, NULL);
        for (int i = 0; i < p->n; i++)
                close(p->a[i]), close(p->b[i]);
        close(p->lfd);
}

/* ---- UDP relay ------------------------------------------------------------------- */

static struct sockaddr_in loopback(int port)
{
        return (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
}

static void *relay_main(void *arg)
{
        struct h_relay *r = arg;
        uint8_t buf[65536];
        while (!atomic_load(&r->stop)) {
                struct pollfd pf = { .fd = r->fd, .events = POLLIN };
                if (poll(&pf, 1, 20) <= 0)
                        continue;
                struct sockaddr_in from;
                socklen_t fl = sizeof(from);
                ssize_t n = recvfrom(r->fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
                if (n <= 0)
                        continue;
                int src = ntohs(from.sin_port);
                int dst = src == r->base_port ? r->center_port : src == r->center_port ? r->base_port : 0;
                if (!dst)
                        continue;
                pthread_mutex_lock(&r->mu);
                if (src == r->base_port && r->n < H_RELAY_MAXDG) {
                        r->at[r->n] = h_now_ms();
                        r->hdr[r->n] = buf[0];
                        r->len[r->n++] = (size_t)n;
                }
                if (src == r->center_port)
                        r->n_back++;
                if (src == r->base_port && r->n_kept_up < H_RELAY_KEEP && n <= H_RELAY_KEEP_BYTES) {
                        memcpy(r->kept_up[r->n_kept_up], buf, (size_t)n);
                        r->kept_up_len[r->n_kept_up++] = (size_t)n;
                }
                if (src == r->center_port && r->n_kept_down < H_RELAY_KEEP && n <= H_RELAY_KEEP_BYTES) {
                        memcpy(r->kept_down[r->n_kept_down], buf, (size_t)n);
                        r->kept_down_len[r->n_kept_down++] = (size_t)n;
                }
                pthread_mutex_unlock(&r->mu);
                if (atomic_load(&r->cut))
                        continue;
                struct sockaddr_in to = loopback(dst);
                if (sendto(r->fd, buf, (size_t)n, 0, (struct sockaddr *)&to, sizeof(to)) == n)
                        atomic_fetch_add(dst == r->center_port ? &r->up : &r->down, 1);
        }
        return NULL;
}

void h_relay_start(struct h_relay *r, int base_port, int center_port)
{
        memset(r, 0, sizeof(*r));
        pthread_mutex_init(&r->mu, NULL);
        r->base_port = base_port, r->center_port = center_port;
        r->kept_up = calloc(H_RELAY_KEEP, H_RELAY_KEEP_BYTES);
        r->kept_down = calloc(H_RELAY_KEEP, H_RELAY_KEEP_BYTES);
        H_REQUIRE(r->kept_up && r->kept_down, "relay: no memory");
        r->fd = bound_socket(SOCK_DGRAM, &r->port);
        H_REQUIRE(pthread_create(&r->t, NULL, relay_main, r) == 0, "relay: no thread");
}

size_t h_relay_count(struct h_relay *r, size_t *bytes, size_t *back)
{
        pthread_mutex_lock(&r->mu);
        size_t n = r->n, b = 0;
        for (size_t i = 0; i < r->n; i++)
                b += r->len[i];
        if (bytes)
                *bytes = b;
        if (back)
                *back = r->n_back;
        pthread_mutex_unlock(&r->mu);
        return n;
}

ssize_t h_relay_to_center(struct h_relay *r, const void *buf, size_t len)
{
        struct sockaddr_in to = loopback(r->center_port);
        return sendto(r->fd, buf, len, 0, (struct sockaddr *)&to, sizeof(to));
}

ssize_t h_relay_to_base(struct h_relay *r, const void *buf, size_t len)
{
        struct sockaddr_in to = loopback(r->base_port);
        return sendto(r->fd, buf, len, 0, (struct sockaddr *)&to, sizeof(to));
}

void h_relay_stop(struct h_relay *r)
{
        atomic_store(&r->stop, true);
        pthread_join(r->t, NULL);
        close(r->fd);
        free(r->kept_up);
        free(r->kept_down);
        r->kept_up = r->kept_down = NULL;
        pthread_mutex_destroy(&r->mu);
}

/* ---- base and center pair -------------------------------------------------------- */

static const char *or_empty(const char *s)
{
        return s ? s : "";
}

void h_pair_init(struct h_pair *p, const char *tag)
{
        memset(p, 0, sizeof(*p));
        h_tmpdir(p->dir, sizeof(p->dir), tag);
        h_broker_start(&p->local, p->dir, 0, NULL);
        h_broker_start(&p->center, p->dir, 0, NULL);
        snprintf(p->bconf, sizeof(p->bconf), "%s/base.conf", p->dir);
        snprintf(p->cconf, sizeof(p->cconf), "%s/center.conf", p->dir);
        snprintf(p->blog, sizeof(p->blog), "%s/base.log", p->dir);
        snprintf(p->clog, sizeof(p->clog), "%s/center.log", p->dir);
}

static void pair_write(struct h_pair *p, const struct h_pair_conf *conf)
{
        const char *plugins = getenv("KM_SIM_PLUGIN_DIR");
        H_REQUIRE(plugins, "KM_SIM_PLUGIN_DIR is not set (the directory of sim.so: meson and tests/bench/run set it)");
        int a = h_free_port(), b = h_free_port();
        int base_peer = b, center_peer = a;
        if (conf->relay) {
                h_relay_start(&p->relay, a, b);
                p->relayed = true;
                base_peer = center_peer = p->relay.port;
        }
        FILE *f = fopen(p->bconf, "w");
        H_REQUIRE(f, "%s: %s", p->bconf, strerror(errno));
        fprintf(f,
                "[node]\nname = north\nspool = %s/base/spool.db\nplugin_dir = %s\nstats_interval = 0\n%s\n"
                "[local]\nuri = tcp://127.0.0.1:%d\n%s\n"
                "[link %s]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\n%s\n%s\n",
                p->dir, plugins, or_empty(conf->base_node), p->local.port, or_empty(conf->base_local), p->link, a,
                base_peer, or_empty(conf->link_keys), or_empty(conf->base_extra));
        fclose(f);
        f = fopen(p->cconf, "w");
        H_REQUIRE(f, "%s: %s", p->cconf, strerror(errno));
        fprintf(f,
                "[node]\nname = county\nrole = center\nspool = %s/center/spool.db\nplugin_dir = %s\nstats_interval = 0\n%s\n"
                "[local]\nuri = tcp://127.0.0.1:%d\n%s\n"
                "[link %s]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\npeers = %s\n%s\n%s\n",
                p->dir, plugins, or_empty(conf->center_node),
                conf->center_local_port ? conf->center_local_port : p->center.port, or_empty(conf->center_local),
                p->link, b, center_peer,
                conf->peers ? conf->peers : "north", or_empty(conf->link_keys), or_empty(conf->center_extra));
        fclose(f);
}

void h_pair_start(struct h_pair *p, const struct h_pair_conf *conf)
{
        const char *cargs[] = { "--config", p->cconf, "--log-level", "debug", NULL };
        const char *bargs[] = { "--config", p->bconf, "--log-level", "debug", NULL };
        char opened[64];
        snprintf(p->link, sizeof(p->link), "%s", conf->link ? conf->link : "sat");
        pair_write(p, conf);
        if (!conf->debug)
                cargs[2] = bargs[2] = NULL;
        h_kuimen_start(&p->ctr, p->clog, cargs);
        h_kuimen_start(&p->base, p->blog, bargs);
        H_REQUIRE(h_log_wait(&p->ctr, "ingest: connected", 10000), "the center is not on its broker (%s)", p->clog);
        H_REQUIRE(h_log_wait(&p->base, "ingest: connected", 10000), "the base is not on its broker (%s)", p->blog);
        snprintf(opened, sizeof(opened), "link: %s: sim: mtu ", p->link);
        H_REQUIRE(h_log_wait(&p->ctr, opened, 10000), "the center's sim link did not open (%s)", p->clog);
        H_REQUIRE(h_log_wait(&p->base, opened, 10000), "the base's sim link did not open (%s)", p->blog);
}

void h_pair_stop(struct h_pair *p)
{
        p->base_exit = h_stop(&p->base, SIGTERM);
        p->ctr_exit = h_stop(&p->ctr, SIGTERM);
        if (p->relayed)
                h_relay_stop(&p->relay);
        p->relayed = false;
        h_stop(&p->local.p, SIGTERM);
        h_stop(&p->center.p, SIGTERM);
}

/* ---- any program, as kuimen is started --------------------------------------------- */

void h_spawn(struct h_proc *p, const char *log, char *const argv[], const char *const *env)
{
        snprintf(p->log, sizeof(p->log), "%s", log);
        p->from = log_size(log);
        p->pid = fork();
        H_REQUIRE(p->pid >= 0, "fork: %s", strerror(errno));
        if (p->pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                close_range(3, ~0U, 0);
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                for (; env && *env; env++)
                        putenv((char *)*env);
                execvp(argv[0], argv);
                _exit(127);
        }
}

int h_mosquitto_pub(int port, const char *topic, const char *payload)
{
        char ps[16];
        snprintf(ps, sizeof(ps), "%d", port);
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
                execlp("mosquitto_pub", "mosquitto_pub", "-h", "127.0.0.1", "-p", ps, "-q", "1", "-i", "terminal", "-t",
                       topic, "-m", payload, (char *)NULL);
                _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void h_sim_ctl(int fd, int port, const char *sim, const char *log, const char *cmd, char *ans, size_t n)
{
        struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        char tmp[2048];
        if (!ans) {
                ans = tmp;
                n = sizeof(tmp);
        }
        for (int tries = 0; tries < 20; tries++) {
                cr_assert(sendto(fd, cmd, strlen(cmd), 0, (struct sockaddr *)&to, sizeof(to)) > 0);
                ssize_t k = recv(fd, ans, n - 1, 0);
                if (k > 0) {
                        ans[k] = '\0';
                        cr_assert(strncmp(ans, "error", 5) != 0, "%s: %s: %s", sim, cmd, ans);
                        return;
                }
        }
        cr_assert_fail("%s does not answer %s (%s)", sim, cmd, log);
}

long h_sim_stat(int fd, int port, const char *sim, const char *log, const char *name, const char *key)
{
        char ans[2048], want[64];
        h_sim_ctl(fd, port, sim, log, "stats", ans, sizeof(ans));
        for (char *save, *l = strtok_r(ans, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
                if (strncmp(l, name, strlen(name)) != 0 || l[strlen(name)] != ' ')
                        continue;
                snprintf(want, sizeof(want), " %s=", key);
                char *v = strstr(l, want);
                cr_assert(v, "no %s in %s", key, l);
                return strtol(v + strlen(want), NULL, 10);
        }
        cr_assert_fail("no device %s in the %s stats", name, sim);
        return -1;
}

int h_kuimenctl(const char *sock, const char *args, char *out, size_t n)
{
        char cmd[1024];
        size_t len = 0;
        snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' %s 2>&1", h_ctl_path(), sock, args);
        FILE *f = popen(cmd, "r");
        H_REQUIRE(f, "popen %s: %s", cmd, strerror(errno));
        while (len + 1 < n && !feof(f) && !ferror(f))
                len += fread(out + len, 1, n - 1 - len, f);
        out[len] = '\0';
        int st = pclose(f);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- RabbitMQ ---------------------------------------------------------------------- */

#define RABBIT_BIN "/usr/lib/rabbitmq/bin/"

int h_rabbitmqctl(const struct h_rabbit_cluster *c, int i, const char *args, char *out, size_t len)
{
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "HOME='%s' ERL_EPMD_PORT=%d " RABBIT_BIN "rabbitmqctl -n '%s' %s 2>&1", c->dir,
                 c->epmd_port, c->node[i].name, args);
        FILE *f = popen(cmd, "r");
        H_REQUIRE(f, "popen %s", cmd);
        size_t n = 0;
        char sink[4096];
        if (!out)
                out = sink, len = sizeof(sink);
        while (n + 1 < len && !feof(f)) {
                size_t r = fread(out + n, 1, len - 1 - n, f);
                if (!r)
                        break;
                n += r;
        }
        out[n] = '\0';
        while (fread(sink, 1, sizeof(sink), f) > 0)
                ;
        int st = pclose(f);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void rabbit_node(struct h_rabbit_cluster *c, int i, bool tls)
{
        struct h_rabbit *r = &c->node[i];
        char conf[300], plugins[300], log[300], text[2048];
        r->mqtt_port = h_free_port();
        r->tls_port = tls ? h_free_port() : 0;
        r->amqp_port = h_free_port();
        r->dist_port = h_free_port();
        snprintf(r->name, sizeof(r->name), "km%d-%d@localhost", i + 1, r->mqtt_port);
        snprintf(r->dir, sizeof(r->dir), "%s/node%d%s", c->dir, i + 1, c->tries > 1 ? "-again" : "");
        H_REQUIRE(mkdir(r->dir, 0700) == 0, "mkdir %s: %s", r->dir, strerror(errno));
        snprintf(conf, sizeof(conf), "%s/rabbitmq.conf", r->dir);
        snprintf(plugins, sizeof(plugins), "%s/enabled_plugins", r->dir);
        int k = snprintf(text, sizeof(text), "listeners.tcp = none\nmqtt.listeners.tcp.default = 127.0.0.1:%d\n"
                         "mqtt.allow_anonymous = true\nloopback_users = none\n", r->mqtt_port);
        /* Nodes 2..n join node 1 as they boot (RabbitMQ's classic config peer
         * discovery): a join with rabbitmqctl afterwards restarts the app, 15 to 20 s
         * more here; it remains the fallback (h_rabbit_start). Known flake: the MQTT
         * plugin's client-id registry is a Raft group (mqtt_node), and once in about
         * eight runs here two nodes started it each seeing one peer and no leader was
         * ever elected ("mqtt_node: leader call - leader not known", no MQTT listener:
         * the test fails on the 90 s wait, naming the node's log). Enabling the plugin
         * on nodes 2..n only after they joined, at once or one at a time, was worse
         * (three of four runs stalled 100 s or for good), so it was not kept. */
        if (i > 0)
                k += snprintf(text + k, sizeof(text) - (size_t)k,
                              "cluster_formation.peer_discovery_backend = classic_config\n"
                              "cluster_formation.classic_config.nodes.1 = %s\n", c->node[0].name);
        if (tls)
                snprintf(text + k, sizeof(text) - (size_t)k,
                         "mqtt.listeners.ssl.default = 127.0.0.1:%d\nssl_options.cacertfile = %s/ca.crt\n"
                         "ssl_options.certfile = %s/server.crt\nssl_options.keyfile = %s/server.key\n"
                         "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                         r->tls_port, c->dir, c->dir, c->dir);
        h_write_text(conf, text);
        h_write_text(plugins, "[rabbitmq_mqtt].\n");
        static char env[H_RABBIT_MAX][13][600];
        char (*e)[600] = env[i];
        snprintf(e[0], sizeof(e[0]), "HOME=%s", c->dir); /* the cluster's one .erlang.cookie */
        snprintf(e[1], sizeof(e[1]), "RABBITMQ_NODENAME=%s", r->name);
        snprintf(e[2], sizeof(e[2]), "RABBITMQ_NODE_PORT=%d", r->amqp_port);
        snprintf(e[3], sizeof(e[3]), "RABBITMQ_DIST_PORT=%d", r->dist_port);
        snprintf(e[4], sizeof(e[4]), "ERL_EPMD_PORT=%d", c->epmd_port);
        snprintf(e[5], sizeof(e[5]), "RABBITMQ_MNESIA_BASE=%s/mnesia", r->dir);
        snprintf(e[6], sizeof(e[6]), "RABBITMQ_LOG_BASE=%s/log", r->dir);
        snprintf(e[7], sizeof(e[7]), "RABBITMQ_ENABLED_PLUGINS_FILE=%s", plugins);
        snprintf(e[8], sizeof(e[8]), "RABBITMQ_CONFIG_FILE=%s", conf);
        snprintf(e[9], sizeof(e[9]), "RABBITMQ_PLUGINS_EXPAND_DIR=%s/plugins-expand", r->dir);
        /* exec the VM itself (no shell in between): the test's kill reaches it */
        snprintf(e[10], sizeof(e[10]), "RUNNING_UNDER_SYSTEMD=1");
        snprintf(e[11], sizeof(e[11]), "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1");
        /* Three VMs boot at once on a CI machine of 2 cores: one scheduler each, and no
         * busy waiting (it burns what the others need), took a boot from 37 to 26 s. */
        snprintf(e[12], sizeof(e[12]), "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none");
        const char *envp[14];
        for (int j = 0; j < 13; j++)
                envp[j] = e[j];
        envp[13] = NULL;
        char *argv[] = { RABBIT_BIN "rabbitmq-server", NULL };
        snprintf(log, sizeof(log), "%s/rabbitmq.log", r->dir);
        h_spawn(&r->node, log, argv, envp);
}

static void rabbit_wait(struct h_rabbit_cluster *c, int i, int timeout_ms)
{
        struct h_rabbit *r = &c->node[i];
        H_REQUIRE(h_wait_port(r->mqtt_port, timeout_ms), "RabbitMQ %s: no MQTT listener on %d (%s)", r->name,
                  r->mqtt_port, r->node.log);
        H_REQUIRE(!r->tls_port || h_wait_port(r->tls_port, 5000), "RabbitMQ %s: no MQTT TLS listener on %d (%s)",
                  r->name, r->tls_port, r->node.log);
}

void h_rabbit_start(struct h_rabbit_cluster *c, const char *dir, int n, bool tls, const char *policy)
{
        struct stat st;
        char log[300], eport[16], cookie[300], out[4096];
        memset(c, 0, sizeof(*c));
        H_REQUIRE(n >= 1 && n <= H_RABBIT_MAX, "h_rabbit_start: %d nodes", n);
        H_REQUIRE(stat(RABBIT_BIN "rabbitmq-server", &st) == 0,
                  RABBIT_BIN "rabbitmq-server is missing: config/deps.sh installs rabbitmq-server for the tests");
        snprintf(c->dir, sizeof(c->dir), "%s", dir);
        c->n = n;
        snprintf(cookie, sizeof(cookie), "%s/.erlang.cookie", dir);
        h_write_text(cookie, "KUIMENTESTCLUSTERCOOKIE");
        chmod(cookie, 0400);
        int64_t t0 = h_now_ms();
        /* The known flake (rabbit_node): a node whose Raft group elects no leader never
         * opens its MQTT port. That is RabbitMQ's start, not what the test is about:
         * the whole cluster starts again once, afresh, on new ports. */
        int stalled = -1;
        for (c->tries = 1; c->tries <= 2; c->tries++) {
                c->epmd_port = h_free_port();
                snprintf(eport, sizeof(eport), "%d", c->epmd_port);
                char *eargv[] = { "epmd", "-port", eport, NULL };
                snprintf(log, sizeof(log), "%s/epmd.log", dir);
                h_spawn(&c->epmd, log, eargv, NULL);
                H_REQUIRE(h_wait_port(c->epmd_port, 5000), "epmd on %d", c->epmd_port);
                for (int i = 0; i < n; i++)
                        rabbit_node(c, i, tls);
                int64_t until = h_now_ms() + (c->tries == 1 ? 60000 : 90000);
                stalled = -1;
                for (int i = 0; i < n && stalled < 0; i++)
                        if (!h_wait_port(c->node[i].mqtt_port, (int)(until > h_now_ms() ? until - h_now_ms() : 1)))
                                stalled = i;
                if (stalled < 0)
                        break;
                fprintf(stderr, "h_rabbit_start: RabbitMQ %s has no MQTT listener after %lld s (%s)%s\n",
                        c->node[stalled].name, (long long)(h_now_ms() - t0) / 1000, c->node[stalled].node.log,
                        c->tries == 1 ? ": the cluster starts again, once" : "");
                if (c->tries == 1)
                        h_rabbit_stop(c);
        }
        H_REQUIRE(stalled < 0, "RabbitMQ %s: no MQTT listener on %d, twice (%s)", c->node[stalled].name,
                  c->node[stalled].mqtt_port, c->node[stalled].node.log);
        for (int i = 0; i < n; i++)
                rabbit_wait(c, i, 5000); /* and its TLS listener */
        c->boot_ms = h_now_ms() - t0;
        t0 = h_now_ms();
        /* Who runs in node 1's cluster; a node that booted alone (it found node 1 not
         * yet up) joins with rabbitmqctl: three calls of a second or two of Elixir
         * each, the nodes side by side, from a shell each. */
        H_REQUIRE(h_rabbitmqctl(c, 0, "cluster_status --formatter json", out, sizeof(out)) == 0,
                  "rabbitmqctl cluster_status: %s", out);
        const char *running = strstr(out, "\"running_nodes\"");
        pid_t pids[H_RABBIT_MAX] = { 0 };
        for (int i = 1; i < n; i++) {
                char q[80];
                snprintf(q, sizeof(q), "\"%s\"", c->node[i].name);
                if (running && strstr(running, q) && (!strchr(running, ']') || strstr(running, q) < strchr(running, ']')))
                        continue;
                char cmd[2048];
                const char *ctl = RABBIT_BIN "rabbitmqctl";
                snprintf(cmd, sizeof(cmd),
                         "export HOME='%s' ERL_EPMD_PORT=%d; exec >>'%s/join.log' 2>&1; %s -n '%s' stop_app && "
                         "%s -n '%s' join_cluster '%s' && %s -n '%s' start_app",
                         dir, c->epmd_port, c->node[i].dir, ctl, c->node[i].name, ctl, c->node[i].name, c->node[0].name,
                         ctl, c->node[i].name);
                pids[i] = fork();
                H_REQUIRE(pids[i] >= 0, "fork: %s", strerror(errno));
                if (pids[i] == 0) {
                        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
                        _exit(127);
                }
        }
        for (int i = 1; i < n; i++) {
                int ws;
                if (!pids[i])
                        continue;
                c->joined_by_ctl++;
                waitpid(pids[i], &ws, 0);
                H_REQUIRE(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "RabbitMQ %s did not join %s (%s/join.log)",
                          c->node[i].name, c->node[0].name, c->node[i].dir);
        }
        if (policy)
                H_REQUIRE(h_rabbitmqctl(c, 0, policy, out, sizeof(out)) == 0, "rabbitmqctl %s: %s", policy, out);
        for (int i = 0; i < n; i++)
                rabbit_wait(c, i, 30000);
        c->join_ms = h_now_ms() - t0;
}

void h_rabbit_kill(struct h_rabbit_cluster *c, int i)
{
        if (c->node[i].node.pid)
                h_stop(&c->node[i].node, SIGKILL);
        c->node[i].node.pid = 0;
}

void h_rabbit_stop(struct h_rabbit_cluster *c)
{
        for (int i = 0; i < c->n; i++)
                h_rabbit_kill(c, i);
        if (c->epmd.pid)
                h_stop(&c->epmd, SIGTERM);
        c->epmd.pid = 0;
}

/* ---- kuimenctl ---------------------------------------------------------------------- */

const char *h_ctl_path(void)
{
        static char path[512];
        if (getenv("KM_KUIMENCTL"))
                return getenv("KM_KUIMENCTL");
        char k[480];
        snprintf(k, sizeof(k), "%s", getenv("KM_KUIMEN") ? getenv("KM_KUIMEN") : "./kuimen");
        snprintf(path, sizeof(path), "%s/kuimenctl", dirname(k));
        return path;
}

cJSON *h_ctl_json(const char *sock, const char *args)
{
        static char out[1 << 16];
        int rc = h_kuimenctl(sock, args, out, sizeof(out));
        H_REQUIRE(rc == 0, "kuimenctl %s exited %d: %s", args, rc, out);
        cJSON *r = cJSON_Parse(out);
        H_REQUIRE(r, "kuimenctl %s: not JSON: %s", args, out);
        return r;
}

cJSON *h_status_json(const char *sock)
{
        return h_ctl_json(sock, "status --json");
}

void h_assert_command_down(int local_port, int center_port, int op_version, const char *payload, const char *log)
{
        struct h_rec rec;
        struct h_pub op;
        int v = h_mqtt_version;
        h_mqtt_version = 5;
        h_rec_start(&rec, local_port, "terminal", "cmd/#");
        h_mqtt_version = op_version;
        h_pub_start(&op, center_port, "operator");
        h_mqtt_version = v;
        cr_assert_eq(h_pub_send(&op, "kuimen/north/cmd/valve", payload), 0);
        cr_assert(h_pub_flush(&op, 5000));
        cr_assert_eq(h_rec_wait(&rec, 1, 15000), 1, "the command reached the base's local broker (%s)", log);
        cr_assert_str_eq(rec.m[0].topic, "cmd/valve");
        cr_assert_str_eq(rec.m[0].payload, payload, "the command's payload exactly");
        h_pub_stop(&op);
        h_rec_stop(&rec);
        h_rec_free(&rec);
}

const cJSON *h_status_link(const cJSON *r, const char *name)
{
        const cJSON *l;
        cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(r, "links")) {
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(l, "name");
                if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
                        return l;
        }
        H_REQUIRE(false, "no link %s in the status", name);
        return NULL;
}

const char *h_json_str(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsString(v) ? v->valuestring : "(none)";
}

double h_json_num(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsNumber(v) ? v->valuedouble : -1;
}
