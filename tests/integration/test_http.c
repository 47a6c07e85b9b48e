/* SPDX-License-Identifier: MIT */
/* The command post page's server (gateway/http.c) against the real kuimen: /api/ JSON field by field, the event stream, basic auth, HTTPS with client certificates, and the config checks. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <libgen.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

struct env {
        char dir[200], conf[300], klog[300], sock[300];
        int hport;
        struct h_broker local, center;
        struct h_proc k;
};

/* One request over HTTP/1.0 (the server closes after the answer); the whole answer,
 * headers and body, in out. Returns the status code, -1 when nothing came. */
static int http(int port, const char *method, const char *path, const char *headers, char *out, size_t n)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct timeval tv = { 5, 0 };
        char req[1024];
        size_t len = 0;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        cr_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect to the page's port %d", port);
        int k = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s\r\n", method, path,
                         headers ? headers : "");
        cr_assert_eq(send(fd, req, (size_t)k, 0), k);
        for (ssize_t r; len + 1 < n && (r = recv(fd, out + len, n - 1 - len, 0)) > 0;)
                len += (size_t)r;
        close(fd);
        out[len] = '\0';
        int status = -1;
        if (sscanf(out, "HTTP/1.%*d %d", &status) != 1)
                return -1;
        return status;
}

static const char *body_of(const char *resp)
{
        const char *p = strstr(resp, "\r\n\r\n");
        cr_assert(p, "no end of headers: %.200s", resp);
        return p + 4;
}

static bool has_header(const char *resp, const char *line)
{
        const char *end = strstr(resp, "\r\n\r\n");
        const char *p = strcasestr(resp, line);
        return p && end && p < end;
}

/* GET path as JSON (asserting 200 and the type); the caller deletes it. */
static cJSON *get_json(int port, const char *path)
{
        static char out[1 << 20];
        int st = http(port, "GET", path, NULL, out, sizeof(out));
        cr_assert_eq(st, 200, "GET %s: %d: %.300s", path, st, out);
        cr_assert(has_header(out, "\r\nContent-Type: application/json"), "%.300s", out);
        cJSON *j = cJSON_Parse(body_of(out));
        cr_assert(j, "GET %s: not JSON: %.300s", path, body_of(out));
        return j;
}

/* Asserts o's keys are exactly the comma-separated list, in that order. */
static void keys_are(const cJSON *o, const char *want, const char *what)
{
        char got[2048] = "";
        const cJSON *it;
        cr_assert(cJSON_IsObject(o), "%s is not an object", what);
        cJSON_ArrayForEach(it, o)
        {
                if (*got)
                        strcat(got, ",");
                strncat(got, it->string, sizeof(got) - strlen(got) - 2);
        }
        cr_assert_str_eq(got, want, "%s's fields", what);
}

static void up(struct env *e, const char *tag, const char *http_extra)
{
        char extra[1200];
        memset(e, 0, sizeof(*e));
        h_tmpdir(e->dir, sizeof(e->dir), tag);
        snprintf(e->conf, sizeof(e->conf), "%s/kuimen.conf", e->dir);
        snprintf(e->klog, sizeof(e->klog), "%s/kuimen.log", e->dir);
        snprintf(e->sock, sizeof(e->sock), "%s/kuimen.sock", e->dir);
        h_broker_start(&e->local, e->dir, 0, NULL);
        h_broker_start(&e->center, e->dir, 0, NULL);
        e->hport = h_free_port();
        snprintf(extra, sizeof(extra), "[control]\nsocket = %s\n[http]\nlisten = 127.0.0.1:%d\n%s", e->sock, e->hport,
                 http_extra ? http_extra : "");
        h_write_conf(e->conf, "north", e->dir, e->local.port, e->center.port, extra);
        const char *args[] = { "--config", e->conf, NULL };
        h_kuimen_start(&e->k, e->klog, args);
        cr_assert(h_log_wait(&e->k, "http: serving ", 10000), "no page served (%s)", e->klog);
        cr_assert(h_log_wait(&e->k, "up: connected", 10000), "the center link did not come up");
}

static void down(struct env *e)
{
        int st = h_stop(&e->k, SIGTERM);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exit %d (%s)", st, e->klog);
        h_stop(&e->local.p, SIGTERM);
        h_stop(&e->center.p, SIGTERM);
        h_cleanup(e->dir);
}

/* kuimenctl --json ARGS, parsed. */
static cJSON *ctl_json(struct env *e, const char *args)
{
        static char out[1 << 18];
        char a[256];
        snprintf(a, sizeof(a), "%s --json", args);
        cr_assert_eq(h_kuimenctl(e->sock, a, out, sizeof(out)), 0, "kuimenctl %s: %s", args, out);
        cJSON *j = cJSON_Parse(out);
        cr_assert(j, "kuimenctl %s: %s", args, out);
        return j;
}

TestSuite(http, .timeout = 60);

#define NODE_FIELDS "node,role,version,pid,now_ms,uptime_s"

/* Every endpoint's fields, exactly; /api/status is kuimenctl status --json (one
 * producer); a unit's position and track are what the terminal sent. */
Test(http, api_fields)
{
        struct env e;
        char out[1 << 16];
        up(&e, "http-api", NULL);
        cr_assert_eq(h_mosquitto_pub(e.local.port, "pos/u7",
                                     "{\"lat\":30.5,\"lon\":109.4,\"alt\":820,\"ts\":\"2026-11-23T03:04:05Z\",\"fix\":3,\"kind\":\"drone\"}"),
                     0);

        cJSON *j = get_json(e.hport, "/api/config");
        keys_are(j, "node,role,version,tiles,history_interval_s,calls,incidents", "/api/config");
        cr_assert_str_eq(cJSON_GetObjectItem(j, "node")->valuestring, "north");
        cr_assert_str_eq(cJSON_GetObjectItem(j, "role")->valuestring, "base");
        cr_assert(cJSON_IsNull(cJSON_GetObjectItem(j, "tiles")));
        cr_assert_eq(cJSON_GetObjectItem(j, "history_interval_s")->valueint, 10);
        cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "calls")));
        cJSON_Delete(j);

        /* once the downlink is connected too (its protocol_down appears then) */
        j = NULL;
        for (int i = 0; i < 200; i++, h_sleep_ms(50)) {
                cJSON_Delete(j);
                j = get_json(e.hport, "/api/status");
                if (cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "links"), 0), "protocol_down"))
                        break;
        }
        cJSON *c = ctl_json(&e, "status");
        keys_are(j, NODE_FIELDS ",links,storage,spool,counters,bad_input_reasons,positions,gnss", "/api/status");
        /* the same producer as the control socket: the same fields all the way down */
        char *a = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "links")), *b = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "links"));
        cJSON *la = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "links"), 0), *lb = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "links"), 0);
        char ka[1024] = "", kb[1024] = "";
        const cJSON *it;
        cJSON_ArrayForEach(it, la) strcat(ka, it->string), strcat(ka, ",");
        cJSON_ArrayForEach(it, lb) strcat(kb, it->string), strcat(kb, ",");
        cr_assert_str_eq(ka, kb);
        cr_assert_str_eq(cJSON_GetObjectItem(la, "name")->valuestring, "center");
        cr_assert_str_eq(cJSON_GetObjectItem(la, "state")->valuestring, "up");
        free(a);
        free(b);
        keys_are(cJSON_GetObjectItem(j, "spool"), "depth,bytes,oldest_age_s,up,down,draining,drain_rate,drain_eta_s,backlog_rate,classes",
                 "/api/status spool");
        cJSON_Delete(c);
        cJSON_Delete(j);

        /* the unit: its position, and a track of one fix */
        cJSON *u = NULL;
        for (int i = 0; i < 100 && !u; i++) {
                j = get_json(e.hport, "/api/units");
                if (cJSON_GetArraySize(cJSON_GetObjectItem(j, "units")) == 1)
                        u = j;
                else
                        cJSON_Delete(j), usleep(50000);
        }
        cr_assert(u, "the unit never showed in /api/units");
        keys_are(u, NODE_FIELDS ",units,gnss", "/api/units");
        cJSON *u7 = cJSON_GetArrayItem(cJSON_GetObjectItem(u, "units"), 0);
        keys_are(u7, "unit,age_s,position,track", "a unit");
        cr_assert_str_eq(cJSON_GetObjectItem(u7, "unit")->valuestring, "u7");
        cJSON *pos = cJSON_GetObjectItem(u7, "position");
        cr_assert_float_eq(cJSON_GetObjectItem(pos, "lat")->valuedouble, 30.5, 1e-9);
        cr_assert_float_eq(cJSON_GetObjectItem(pos, "lon")->valuedouble, 109.4, 1e-9);
        cr_assert_str_eq(cJSON_GetObjectItem(pos, "kind")->valuestring, "drone");
        cJSON *tr = cJSON_GetObjectItem(u7, "track");
        cr_assert_eq(cJSON_GetArraySize(tr), 1);
        cJSON *f0 = cJSON_GetArrayItem(tr, 0);
        cr_assert_eq(cJSON_GetArraySize(f0), 3);
        cr_assert_float_eq(cJSON_GetArrayItem(f0, 0)->valuedouble, 30.5, 1e-9);
        cr_assert_float_eq(cJSON_GetArrayItem(f0, 1)->valuedouble, 109.4, 1e-9);
        cr_assert(cJSON_IsNull(cJSON_GetObjectItem(u, "gnss")));
        cJSON *cu = ctl_json(&e, "units");
        keys_are(cu, NODE_FIELDS ",units,gnss", "kuimenctl units");
        cJSON_Delete(cu);
        cJSON_Delete(u);

        j = get_json(e.hport, "/api/bases");
        keys_are(j, NODE_FIELDS ",bases", "/api/bases");
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "bases")), 0, "a base hears no bases");
        cJSON_Delete(j);

        j = get_json(e.hport, "/api/history");
        keys_are(j, "interval_s,samples,links,spool", "/api/history");
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "links")), 2);
        keys_are(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "links"), 0), "link,points", "a link's history");
        cr_assert_geq(cJSON_GetObjectItem(j, "samples")->valueint, 1);
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "spool"), 0)), 3);
        cJSON_Delete(j);

        j = get_json(e.hport, "/api/calls");
        keys_are(j, "calls,open,changes,answers,repeats,escalations,bad_commands,bad_answers", "/api/calls");
        cJSON_Delete(j);
        j = get_json(e.hport, "/api/incidents");
        keys_are(j, "incidents", "/api/incidents");
        cJSON_Delete(j);

        /* What is not there, what is not GET, and HEAD. */
        int st = http(e.hport, "GET", "/api/nothing", NULL, out, sizeof(out));
        cr_assert_eq(st, 404, "%.300s", out);
        cr_assert(strncmp(body_of(out), "{\"error\":\"not found: the API is /api/status", 43) == 0, "%s", body_of(out));
        st = http(e.hport, "GET", "/api/calls/nosuch", NULL, out, sizeof(out));
        cr_assert_eq(st, 404, "%.300s", out);
        cr_assert_str_eq(body_of(out), "{\"error\":\"no such call (kuimenctl call show)\"}\n");
        st = http(e.hport, "POST", "/api/status", "Content-Length: 0\r\n", out, sizeof(out));
        cr_assert_eq(st, 405, "%.300s", out);
        cr_assert(has_header(out, "\r\nAllow: GET, HEAD\r\n"), "%.300s", out);
        st = http(e.hport, "HEAD", "/api/status", NULL, out, sizeof(out));
        cr_assert_eq(st, 200);
        cr_assert_str_eq(body_of(out), "");

        /* The page: HTML, with the policy that keeps it from loading anything foreign. */
        st = http(e.hport, "GET", "/", NULL, out, sizeof(out));
        cr_assert_eq(st, 200);
        cr_assert(has_header(out, "\r\nContent-Type: text/html; charset=utf-8\r\n"), "%.300s", out);
        cr_assert(has_header(out, "\r\nContent-Security-Policy: default-src 'self'; img-src 'self' data:;"), "%.500s", out);
        cr_assert(strstr(body_of(out), "<script src=\"app.js\" defer></script>"));
        st = http(e.hport, "GET", "/app.js", NULL, out, sizeof(out));
        cr_assert_eq(st, 200);
        cr_assert(has_header(out, "\r\nContent-Type: text/javascript; charset=utf-8\r\n"), "%.300s", out);
        down(&e);
}

/* /api/events: the stream opens with every view, then a status a second. */
Test(http, event_stream)
{
        struct env e;
        up(&e, "http-sse", NULL);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)e.hport),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct timeval tv = { 5, 0 };
        static char buf[1 << 20];
        size_t len = 0;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        cr_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
        const char req[] = "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
        cr_assert_eq(send(fd, req, sizeof(req) - 1, 0), (ssize_t)sizeof(req) - 1);
        int64_t t0 = h_now_ms();
        int statuses = 0;
        while (h_now_ms() - t0 < 2500 && len + 1 < sizeof(buf)) {
                ssize_t r = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
                if (r <= 0)
                        break;
                len += (size_t)r;
                buf[len] = '\0';
        }
        close(fd);
        cr_assert(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0, "%.300s", buf);
        cr_assert(has_header(buf, "\r\nContent-Type: text/event-stream\r\n"), "%.300s", buf);
        cr_assert(strstr(buf, "retry: 1000\n\n"), "%.300s", buf);
        cr_assert(strstr(buf, "event: units\ndata: {\"node\":\"north\""), "%.600s", buf);
        cr_assert(strstr(buf, "event: calls\ndata: {\"calls\":["), "%.600s", buf);
        cr_assert(strstr(buf, "event: incidents\ndata: {\"incidents\":["), "%.600s", buf);
        cr_assert(!strstr(buf, "event: bases"), "a base has no bases view");
        for (const char *p = buf; (p = strstr(p, "event: status\ndata: {\"node\":\"north\"")); p++)
                statuses++;
        /* the one it opened with, then one a second for 2.5 s (nothing changes state
         * meanwhile, so nothing is pushed early) */
        cr_assert(statuses >= 3 && statuses <= 5, "%d status events in 2.5 s", statuses);
        down(&e);
}

/* password_file (the config's way to a password, docs/config.md): nothing without
 * the right user and password. */
Test(http, basic_auth)
{
        struct env e;
        char out[1 << 16], extra[400], pw[300];
        h_tmpdir(pw, sizeof(pw) - 20, "http-pw");
        strcat(pw, "/passwords");
        h_write_text(pw, "s3cret-Pass\n");
        chmod(pw, 0600);
        snprintf(extra, sizeof(extra), "user = duty\npassword_file = %s\n", pw);
        up(&e, "http-auth", extra);
        int st = http(e.hport, "GET", "/api/status", NULL, out, sizeof(out));
        cr_assert_eq(st, 401, "%.300s", out);
        cr_assert(has_header(out, "\r\nWWW-Authenticate: Basic realm=\"kuimen\""), "%.300s", out);
        /* duty:wrong, then duty:s3cret-Pass */
        st = http(e.hport, "GET", "/api/status", "Authorization: Basic ZHV0eTp3cm9uZw==\r\n", out, sizeof(out));
        cr_assert_eq(st, 401);
        st = http(e.hport, "GET", "/", "Authorization: Basic ZHV0eTpzM2NyZXQtUGFzcw==\r\n", out, sizeof(out));
        cr_assert_eq(st, 200, "%.300s", out);
        st = http(e.hport, "GET", "/api/events", NULL, out, sizeof(out));
        cr_assert_eq(st, 401, "the stream is closed too");
        down(&e);
        char dir[200];
        snprintf(dir, sizeof(dir), "%s", pw);
        h_cleanup(dirname(dir));
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
        char cmd[2048];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        int rc = system(cmd);
        cr_assert_eq(rc, 0, "%s: %d", cmd, rc);
}

/* HTTPS with client certificates (openssl makes a CA, the server's and a client's
 * certificates; curl is the browser): in with the CA's client certificate, refused
 * without one and with one another CA signed. */
Test(http, tls_client_certificates)
{
        struct env e;
        char d[200], extra[1200], cmd[1500];
        h_tmpdir(d, sizeof(d), "http-tls");
        const char *q = ">/dev/null 2>&1";
        sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem "
           "-days 2 -subj /CN=kuimen-test-ca %s",
           d, q);
        sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key -out other.pem "
           "-days 2 -subj /CN=other-ca %s",
           d, q);
        sh("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr "
           "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 %s && "
           "printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && "
           "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out server.pem -extfile san.ext %s",
           d, q, q);
        sh("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr "
           "-subj /CN=duty %s && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
           "-out client.pem %s",
           d, q, q);
        sh("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout stranger.key -out stranger.csr "
           "-subj /CN=stranger %s && openssl x509 -req -in stranger.csr -CA other.pem -CAkey other.key -CAcreateserial "
           "-days 2 -out stranger.pem %s",
           d, q, q);
        snprintf(extra, sizeof(extra), "cert = %s/server.pem\nkey = %s/server.key\nclient_ca = %s/ca.pem\n", d, d, d);
        up(&e, "http-tls-k", extra);
        cr_assert(h_log_wait(&e.k, "http: serving https://127.0.0.1:", 1000), "%s", e.klog);
        snprintf(cmd, sizeof(cmd),
                 "curl -s -o /dev/null -w '%%{http_code}' --max-time 5 --cacert %s/ca.pem --cert %s/client.pem --key %s/client.key "
                 "https://127.0.0.1:%d/api/status",
                 d, d, d, e.hport);
        char out[64] = "";
        FILE *f = popen(cmd, "r");
        cr_assert(f);
        cr_assert(fgets(out, sizeof(out), f));
        pclose(f);
        cr_assert_str_eq(out, "200", "with the CA's client certificate: %s", out);
        /* without a certificate, and with another CA's: no 200 (refused in the
         * handshake or with 403) */
        for (int i = 0; i < 2; i++) {
                snprintf(cmd, sizeof(cmd),
                         "curl -s -o /dev/null -w '%%{http_code}' --max-time 5 --cacert %s/ca.pem %s%s%s%s%s "
                         "https://127.0.0.1:%d/api/status",
                         d, i ? "--cert " : "", i ? d : "", i ? "/stranger.pem --key " : "", i ? d : "",
                         i ? "/stranger.key" : "", e.hport);
                f = popen(cmd, "r");
                cr_assert(f);
                out[0] = '\0';
                (void)!fgets(out, sizeof(out), f);
                pclose(f);
                cr_assert(strcmp(out, "000") == 0 || strcmp(out, "403") == 0, "%s: %s", i ? "another CA's" : "none", out);
        }
        down(&e);
        h_cleanup(d);
}

/* --check-config: an address off loopback needs HTTPS and a password or client
 * certificates; the files named must be readable; tiles must be a tile URL. */
Test(http, check_config)
{
        char dir[200], conf[300], out[4096], text[1500];
        h_tmpdir(dir, sizeof(dir), "http-check");
        snprintf(conf, sizeof(conf), "%s/k.conf", dir);
        const char *base = "[node]\nname = north\nspool = %s/spool.db\n[local]\nuri = tcp://127.0.0.1:1883\n"
                           "[link center]\nuri = tcp://127.0.0.1:1884\n[http]\n%s";
        const char *args[] = { "--check-config", conf, NULL };

        snprintf(text, sizeof(text), base, dir, "listen = 0.0.0.0:8080\n");
        h_write_text(conf, text);
        cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 1, "%s", out);
        char want[2048];
        snprintf(want, sizeof(want),
                 "%s:9: listen: '0.0.0.0:8080' is not loopback: set cert and key (HTTPS)\n"
                 "%s:9: listen: '0.0.0.0:8080' is not loopback: set password_file or client_ca (who may look)\n",
                 conf, conf);
        cr_assert_str_eq(out, want);

        char more[600];
        snprintf(more, sizeof(more), "listen = 192.0.2.1:8443\ncert = %s/none.pem\nkey = %s/none.key\n", dir, dir);
        snprintf(text, sizeof(text), base, dir, more);
        h_write_text(conf, text);
        cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 1, "%s", out);
        snprintf(want, sizeof(want),
                 "%s:10: cert: '%s/none.pem': cannot read: No such file or directory\n"
                 "%s:11: key: '%s/none.key': cannot read: No such file or directory\n"
                 "%s:9: listen: '192.0.2.1:8443' is not loopback: set password_file or client_ca (who may look)\n",
                 conf, dir, conf, dir, conf);
        cr_assert_str_eq(out, want);

        snprintf(text, sizeof(text), base, dir, "listen = [::1]:8080\nuser = a:b\ntiles = http://tiles/{z}/{x}.png\n");
        h_write_text(conf, text);
        cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 1, "%s", out);
        snprintf(want, sizeof(want),
                 "%s:10: user: 'a:b': must be a name without ':'\n"
                 "%s:11: tiles: 'http://tiles/{z}/{x}.png': expected an http(s):// or /path URL with {z}, {x} and {y}\n",
                 conf, conf);
        cr_assert_str_eq(out, want);

        /* loopback needs neither */
        snprintf(text, sizeof(text), base, dir, "listen = 127.0.0.1:8080\ntiles = /tiles/{z}/{x}/{y}.png\n");
        h_write_text(conf, text);
        cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 0, "%s", out);
        h_cleanup(dir);
}

/* A center hears a base over a narrow link only (no MQTT path between them): the base's
 * unit and node status reach its board of bases marked "narrow", as /api/bases and
 * kuimenctl bases show them. */
Test(http, center_hears_a_base_over_a_narrow_link)
{
        struct h_pair p;
        char extra[600], sock[300], out[1 << 16];
        int hport = h_free_port();
        h_pair_init(&p, "http-narrow");
        snprintf(sock, sizeof(sock), "%s/center.sock", p.dir);
        snprintf(extra, sizeof(extra), "[control]\nsocket = %s\n[http]\nlisten = 127.0.0.1:%d\n", sock, hport);
        struct h_pair_conf conf = { .center_extra = extra };
        h_pair_start(&p, &conf);
        cr_assert_eq(h_mosquitto_pub(p.local.port, "pos/u9", "{\"lat\":30.61,\"lon\":109.47,\"kind\":\"radio\"}"), 0);
        cJSON *north = NULL, *j = NULL;
        int64_t until = h_now_ms() + 20000;
        while (!north && h_now_ms() < until) {
                cJSON_Delete(j);
                j = get_json(hport, "/api/bases");
                cJSON *b = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "bases"), 0);
                if (b && cJSON_GetArraySize(cJSON_GetObjectItem(b, "units")) == 1 &&
                    cJSON_IsObject(cJSON_GetObjectItem(b, "status")))
                        north = b;
                else
                        h_sleep_ms(100);
        }
        cr_assert(north, "the center's board: %s", cJSON_PrintUnformatted(j));
        keys_are(north, "base,mqtt,status,status_age_s,status_via,links,units", "a base");
        cr_assert_str_eq(cJSON_GetObjectItem(north, "base")->valuestring, "north");
        cr_assert_str_eq(cJSON_GetObjectItem(north, "mqtt")->valuestring, "unknown", "no MQTT status from north");
        cr_assert_str_eq(cJSON_GetObjectItem(north, "status_via")->valuestring, "narrow");
        cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(north, "status"), "state")->valuestring, "online");
        cJSON *u = cJSON_GetArrayItem(cJSON_GetObjectItem(north, "units"), 0);
        keys_are(u, "unit,age_s,via,position", "a base's unit");
        cr_assert_str_eq(cJSON_GetObjectItem(u, "unit")->valuestring, "u9");
        cr_assert_str_eq(cJSON_GetObjectItem(u, "via")->valuestring, "narrow");
        cJSON *pos = cJSON_GetObjectItem(u, "position");
        /* quantised on the narrow link (docs/narrow-links.md): within a metre */
        cr_assert(fabs(cJSON_GetObjectItem(pos, "lat")->valuedouble - 30.61) < 1e-5, "%s", cJSON_PrintUnformatted(pos));
        cr_assert(fabs(cJSON_GetObjectItem(pos, "lon")->valuedouble - 109.47) < 1e-5, "%s", cJSON_PrintUnformatted(pos));
        cJSON_Delete(j);
        /* kuimenctl bases says the same in words */
        cr_assert_eq(h_kuimenctl(sock, "bases", out, sizeof(out)), 0, "%s", out);
        cr_assert(strncmp(out, "north  online (", 15) == 0 && strstr(out, " over narrow)  mqtt unknown  1 unit(s)\n"),
                  "%s", out);
        h_pair_stop(&p);
        cr_assert(WIFEXITED(p.ctr_exit) && WEXITSTATUS(p.ctr_exit) == 0, "the center's exit %d", p.ctr_exit);
        h_cleanup(p.dir);
}
