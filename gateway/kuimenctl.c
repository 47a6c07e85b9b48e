/* SPDX-License-Identifier: MIT */
/* kuimenctl: asks a running kuimen over its control socket and prints tables (or the raw JSON). */
#include <cjson/cJSON.h>
#include <sodium.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EXIT_FAILED 1      /* the daemon answered with an error, or a reload was refused */
#define EXIT_USAGE 2
#define EXIT_NOT_RUNNING 3 /* as LSB's "program is not running" */
#define EXIT_RESTART 4     /* reloaded, but changed keys only a restart applies */
#define REPLY_MAX (16u << 20)
#define TIMEOUT_S 10       /* a reload reads the config; everything else answers at once */

static void usage(FILE *out)
{
        fputs("usage: kuimenctl [--socket PATH] status|links|spool|units|bases|reload [--json]\n"
              "       kuimenctl --version | --help\n"
              "       kuimenctl key new\n"
              "       kuimenctl [--socket PATH] spool dead|retry ID|all|drop ID|all [--json]\n"
              "       kuimenctl [--socket PATH] call ID LEVEL TEXT RECIPIENT[,RECIPIENT...] [--respond-within S]\n"
              "                 [--repeat-every S] [--escalate-to R[,R...]] [--escalate-after S]\n"
              "       kuimenctl [--socket PATH] call show [ID] [--json] | call close ID\n"
              "       kuimenctl [--socket PATH] incident open ID LAT LON RADIUS UNIT[,UNIT...] [--call CALLID]\n"
              "       kuimenctl [--socket PATH] incident show [ID] [--json|--csv] | incident close ID\n"
              "  status   node, links, spool by class, counters\n"
              "  links    the links with state, reason and counts\n"
              "  spool    depth, bytes and oldest by class, and the next messages to leave\n"
              "  units    each unit's last position, its age and fix (the web page's map)\n"
              "  bases    on a center: every base it hears, with its links and units\n"
              "  spool dead          messages set aside because a peer can never take them\n"
              "  spool retry ID|all  send set-aside messages back to the queue (at its tail)\n"
              "  spool drop ID|all   delete set-aside messages\n"
              "  call ID LEVEL TEXT RECIPIENTS  raise a call (docs/calls.md): LEVEL blue|yellow|orange|red,\n"
              "           RECIPIENTS units or [calls group] names, comma-separated; unset deadlines take\n"
              "           the level's from [calls level LEVEL]\n"
              "  call show [ID]  the calls (open and recently closed), or one with each recipient\n"
              "  call close ID   close a call: its retained copies are taken off the terminals' topics\n"
              "  incident open ID LAT LON RADIUS UNITS  open an incident: its place (RADIUS in m) and\n"
              "           assigned units; --call names the call that dispatched them\n"
              "  incident show [ID]  the incidents, or one's timeline per unit: reacted, turned out,\n"
              "           arrived, withdrew (--csv: one line a unit)\n"
              "  incident close ID   close an incident: its timeline stops\n"
              "  reload   reload routes and classes, and read narrow links' key files again (as SIGHUP);\n"
              "           lists each changed key that needs a restart (\"restart needed: [link center] uri\")\n"
              "  key new  print a fresh random narrow-link key (32 bytes, base64) for key_file;\n"
              "           the daemon is not asked\n"
              "  -s, --socket PATH  the daemon's control socket (see below)\n"
              "  -j, --json         print the daemon's JSON reply as it is\n"
              "      --csv          incident show ID: the timeline as CSV\n"
              "  -V, --version      print the version\n"
              "  -h, --help         this text\n"
              "The socket is --socket, else the first that exists of $RUNTIME_DIRECTORY/kuimen.sock,\n"
              "/run/kuimen/kuimen.sock, $STATE_DIRECTORY/kuimen.sock, ./kuimen-state/kuimen.sock.\n"
              "Exit: 0 ok, 1 the request failed, 2 usage, 3 kuimen is not running,\n"
              "4 reloaded, but changed keys need a restart.\n",
              out);
}

/* ---- talking to the daemon ------------------------------------------------------- */

/* Where kuimen puts its socket when [control] socket is not set: $RUNTIME_DIRECTORY
 * (systemd's RuntimeDirectory=kuimen is /run/kuimen), else beside the spool, whose
 * default is $STATE_DIRECTORY or ./kuimen-state. The first that exists wins. */
static void default_socket(char *out, size_t n)
{
        const char *rd = getenv("RUNTIME_DIRECTORY"), *sd = getenv("STATE_DIRECTORY");
        char cand[4][512];
        int nc = 0;
        struct stat st;

        if (rd && *rd)
                snprintf(cand[nc++], sizeof(cand[0]), "%.*s/kuimen.sock", (int)strcspn(rd, ":"), rd);
        snprintf(cand[nc++], sizeof(cand[0]), "/run/kuimen/kuimen.sock");
        if (sd && *sd)
                snprintf(cand[nc++], sizeof(cand[0]), "%.*s/kuimen.sock", (int)strcspn(sd, ":"), sd);
        snprintf(cand[nc++], sizeof(cand[0]), "./kuimen-state/kuimen.sock");
        for (int i = 0; i < nc; i++)
                if (lstat(cand[i], &st) == 0) {
                        snprintf(out, n, "%s", cand[i]);
                        return;
                }
        snprintf(out, n, "%s", cand[0]);
}

/* Connects to path; on failure says why and returns a negative exit code. */
static int dial(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct timeval tv = { TIMEOUT_S, 0 };
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path)) {
                fprintf(stderr, "kuimenctl: socket path too long: %s\n", path);
                return -EXIT_USAGE;
        }
        memcpy(sa.sun_path, path, strlen(path) + 1);
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
                perror("kuimenctl: socket");
                return -EXIT_FAILED;
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
                return fd;
        int err = errno;
        close(fd);
        if (err == ENOENT || err == ENOTDIR)
                fprintf(stderr, "kuimen is not running (no socket at %s)\n", path);
        else if (err == ECONNREFUSED)
                fprintf(stderr, "kuimen is not running (nothing answers on %s)\n", path);
        else
                fprintf(stderr, "kuimenctl: %s: %s%s\n", path, strerror(err),
                        err == EACCES ? " (run as root or in kuimen's group)" : "");
        return err == ENOENT || err == ENOTDIR || err == ECONNREFUSED ? -EXIT_NOT_RUNNING : -EXIT_FAILED;
}

/* Sends "cmd\n" and reads the reply until the daemon closes. Returns the reply
 * (caller frees) or NULL, having said why. */
static char *ask(int fd, const char *cmd)
{
        char line[8200];
        size_t len = 0, cap = 0;
        char *buf = NULL;
        int n = snprintf(line, sizeof(line), "%s\n", cmd);

        if (n >= (int)sizeof(line)) {
                fputs("kuimenctl: request too long\n", stderr);
                return NULL;
        }
        if (send(fd, line, (size_t)n, MSG_NOSIGNAL) != n) {
                perror("kuimenctl: send");
                return NULL;
        }
        for (;;) {
                if (len + 4096 + 1 > cap) {
                        char *p = cap < REPLY_MAX ? realloc(buf, cap = cap ? cap * 2 : 8192) : NULL;
                        if (!p) {
                                fputs("kuimenctl: reply too large\n", stderr);
                                free(buf);
                                return NULL;
                        }
                        buf = p;
                }
                ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
                if (r == 0)
                        break;
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0) {
                        fprintf(stderr, "kuimenctl: no reply from kuimen: %s\n",
                                errno == EAGAIN ? "timed out" : strerror(errno));
                        free(buf);
                        return NULL;
                }
                len += (size_t)r;
        }
        buf[len] = '\0';
        return buf;
}

/* ---- formatting ------------------------------------------------------------------ */

static double num(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *str(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsString(v) ? v->valuestring : "";
}

/* 0.4s, 12s, 3m05s, 2h07m, 3d04h: as precise as an operator reads at a glance. */
static const char *age(double s, char *buf, size_t n)
{
        long t = (long)s;
        if (s < 10)
                snprintf(buf, n, "%.1fs", s);
        else if (t < 60)
                snprintf(buf, n, "%lds", t);
        else if (t < 3600)
                snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
        else if (t < 86400)
                snprintf(buf, n, "%ldh%02ldm", t / 3600, t % 3600 / 60);
        else
                snprintf(buf, n, "%ldd%02ldh", t / 86400, t % 86400 / 3600);
        return buf;
}

static const char *size(double b, char *buf, size_t n)
{
        if (b < 1024)
                snprintf(buf, n, "%.0f B", b);
        else if (b < 1024 * 1024)
                snprintf(buf, n, "%.1f KiB", b / 1024);
        else if (b < 1024.0 * 1024 * 1024)
                snprintf(buf, n, "%.1f MiB", b / (1024 * 1024));
        else
                snprintf(buf, n, "%.1f GiB", b / (1024.0 * 1024 * 1024));
        return buf;
}

/* Width of the widest string key of the array's objects, at least min. */
static int width(const cJSON *arr, const char *key, int min)
{
        const cJSON *it;
        int w = min;
        cJSON_ArrayForEach(it, arr) {
                int l = (int)strlen(str(it, key));
                if (l > w)
                        w = l;
        }
        return w;
}

static void print_node(const cJSON *r)
{
        char a[32];
        printf("node %s (%s), up %s, pid %.0f, kuimen %s\n", str(r, "node"), str(r, "role"), age(num(r, "uptime_s"), a, sizeof(a)),
               num(r, "pid"), str(r, "version"));
}

/* The width to keep to: a terminal's, else $COLUMNS, else none (a pipe, a script). */
static int out_width(void)
{
        struct winsize ws;
        const char *cols = getenv("COLUMNS");
        if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
                return ws.ws_col;
        if (cols && atoi(cols) >= 20)
                return atoi(cols);
        return 0;
}

/* One row per link, to read at a glance in 80 columns: a reason too long for the row
 * goes on a line of its own below it. detail (kuimenctl links) adds each link's
 * counters on a line of their own. */
static void print_links(const cJSON *r, bool detail)
{
        const cJSON *links = cJSON_GetObjectItemCaseSensitive(r, "links"), *l;
        int w = width(links, "name", 4), cols = out_width();
        char a[32];

        printf("\n%-*s  %-4s  %-8s  %6s  %7s  %9s  %6s  %s\n", w, "LINK", "DIR", "STATE", "SINCE", "BACKLOG",
               "IN-FLIGHT", "MSG/S", "REASON");
        cJSON_ArrayForEach(l, links) {
                char backlog[24] = "-"; /* a kuimen older than the field */
                if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(l, "backlog")))
                        snprintf(backlog, sizeof(backlog), "%.0f", num(l, "backlog"));
                int n = printf("%-*s  %-4s  %-8s  %6s  %7s  %9.0f  %6.1f", w, str(l, "name"), str(l, "direction"),
                               str(l, "state"), age(num(l, "since_s"), a, sizeof(a)), backlog, num(l, "inflight"),
                               num(l, "rate"));
                const char *why = str(l, "reason");
                printf("%s%s\n", cols && n + 2 + (int)strlen(why) > cols ? "\n    " : "  ", why);
        }
        if (detail)
                cJSON_ArrayForEach(l, links) {
                        char sig[8] = "-";
                        if (num(l, "signal") >= 0)
                                snprintf(sig, sizeof(sig), "%.0f", num(l, "signal"));
                        printf("%s: sent=%.0f acked=%.0f failed=%.0f bytes_sent=%.0f signal=%s transitions=%.0f"
                               " set_aside=%.0f\n",
                               str(l, "name"), num(l, "sent"), num(l, "acked"), num(l, "failed"), num(l, "bytes_sent"),
                               sig, num(l, "transitions"), num(l, "set_aside"));
                }
        /* MQTT links: the version each connection speaks (protocol = auto decides it). */
        const char *sep = "MQTT: ";
        cJSON_ArrayForEach(l, links) {
                const char *pr = str(l, "protocol"), *pd = str(l, "protocol_down");
                if (!*pr)
                        continue;
                printf("%s%s %s", sep, str(l, "name"), pr);
                if (*pd && strcmp(pd, pr) != 0)
                        printf(" (downlink %s)", pd);
                sep = ", ";
        }
        if (*sep == ',')
                printf("\n");
        /* An MQTT link with a list of brokers (the nodes of a cluster): which it is on. */
        cJSON_ArrayForEach(l, links) {
                if (num(l, "uris") > 1)
                        printf("%s: broker %s (%.0f of %.0f)\n", str(l, "name"), str(l, "uri"), num(l, "uri_index") + 1,
                               num(l, "uris"));
        }
        /* Narrow links: what their frames carry and how they fared. */
        cJSON_ArrayForEach(l, links) {
                const cJSON *dict = cJSON_GetObjectItemCaseSensitive(l, "dictionary");
                if (!dict)
                        continue;
                printf("%s: dictionary %s\n", str(l, "name"), cJSON_IsString(dict) ? dict->valuestring : "none");
                const cJSON *fr = cJSON_GetObjectItemCaseSensitive(l, "frames"), *c;
                if (!cJSON_IsObject(fr))
                        continue;
                printf("%s: frames", str(l, "name"));
                cJSON_ArrayForEach(c, fr)
                        printf(" %s=%.0f", c->string, cJSON_IsNumber(c) ? c->valuedouble : 0);
                printf("\n");
                const cJSON *rf = cJSON_GetObjectItemCaseSensitive(l, "refused");
                if (!cJSON_IsObject(rf))
                        continue;
                printf("%s: refused", str(l, "name"));
                cJSON_ArrayForEach(c, rf)
                        printf(" %s=%.0f", c->string, cJSON_IsNumber(c) ? c->valuedouble : 0);
                printf("\n");
                const cJSON *au = cJSON_GetObjectItemCaseSensitive(l, "auth"), *pe;
                if (!cJSON_IsObject(au))
                        continue;
                printf("%s: auth %s tag_bytes=%.0f auth_failures=%.0f replays=%.0f frames_authenticated=%.0f",
                       str(l, "name"), str(au, "mode"), num(au, "tag_bytes"), num(au, "auth_failures"),
                       num(au, "replays"), num(au, "frames_authenticated"));
                cJSON_ArrayForEach(pe, cJSON_GetObjectItemCaseSensitive(au, "peers"))
                        printf(" %s=%s(%s)", str(pe, "name"), str(pe, "key"), str(pe, "key_id"));
                printf("%s\n", strcmp(str(au, "mode"), "off") == 0 ? "  WARNING: auth = off, frames can be forged" : "");
        }
}

/* 12 s, 3m05s, 2h07m, 3d04h: a time left (gateway/status.c says it the same way). */
static const char *left(double s, char *buf, size_t n)
{
        long t = (long)(s + 0.5);
        if (t < 100)
                snprintf(buf, n, "%ld s", t);
        else if (t < 3600)
                snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
        else if (t < 86400)
                snprintf(buf, n, "%ldh%02ldm", t / 3600, t % 3600 / 60);
        else
                snprintf(buf, n, "%ldd%02ldh", t / 86400, t % 86400 / 3600);
        return buf;
}

/* "draining 498 msg/s, ~6 s left" while the backlog drains (--live says the same);
 * nothing otherwise. */
static void print_drain(const cJSON *sp)
{
        const cJSON *eta = cJSON_GetObjectItemCaseSensitive(sp, "drain_eta_s");
        double rate = num(sp, "drain_rate"), grow = num(sp, "backlog_rate");
        char a[32];

        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sp, "draining")))
                return;
        printf(rate < 10 ? "draining %.1f msg/s, " : "draining %.0f msg/s, ", rate);
        if (cJSON_IsNumber(eta))
                printf("~%s left\n", left(eta->valuedouble, a, sizeof(a)));
        else if (grow > 0)
                printf(grow < 10 ? "backlog growing by %.1f msg/s\n" : "backlog growing by %.0f msg/s\n", grow);
        else
                printf("backlog steady\n");
}

static void print_spool(const cJSON *sp)
{
        const cJSON *classes = cJSON_GetObjectItemCaseSensitive(sp, "classes"), *k;
        int w = width(classes, "name", 5);
        char a[32], b[32];

        printf("\nspool: %.0f messages, %s, oldest %s\n", num(sp, "depth"), size(num(sp, "bytes"), b, sizeof(b)),
               num(sp, "depth") ? age(num(sp, "oldest_age_s"), a, sizeof(a)) : "-");
        print_drain(sp);
        printf("%-*s  %4s  %8s  %s\n", w, "CLASS", "PRIO", "QUEUED", "OLDEST");
        cJSON_ArrayForEach(k, classes) {
                printf("%-*s  %4.0f  %8.0f  %s\n", w, str(k, "name"), num(k, "priority"), num(k, "depth"),
                       num(k, "depth") ? age(num(k, "oldest_age_s"), a, sizeof(a)) : "-");
        }
}

static void print_head(const cJSON *sp)
{
        const cJSON *head = cJSON_GetObjectItemCaseSensitive(sp, "head"), *m;
        int w = width(head, "class", 5);
        char a[32];

        if (!cJSON_GetArraySize(head)) {
                printf("\nnext to leave: nothing queued\n");
                return;
        }
        m = cJSON_GetArrayItem(head, 0);
        printf("\nnext to leave (%s, priority %.0f):\n", str(m, "direction"), num(m, "priority"));
        printf("%-17s  %-*s  %-7s  %8s  %s\n", "ID", w, "CLASS", "AGE", "BYTES", "TOPIC");
        cJSON_ArrayForEach(m, head) {
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(m, "in_flight");
                printf("%-17.0f  %-*s  %-7s  %8.0f  %s%s\n", num(m, "id"), w, str(m, "class"),
                       age(num(m, "age_s"), a, sizeof(a)), num(m, "bytes"), str(m, "topic"),
                       cJSON_IsTrue(f) ? "  (in flight)" : "");
        }
}

static void print_counters(const cJSON *r)
{
        static const char *const keys[] = { "in", "forwarded", "delivered_local", "dropped", "expired", "coalesced",
                                            "bad_input", "refused", "unrouted", "fsyncs", "set_aside", NULL };
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(r, "counters");

        int cols = out_width(), col = 9;
        printf("\ncounters:");
        for (int i = 0; keys[i]; i++) {
                char word[64];
                int n = snprintf(word, sizeof(word), " %s=%.0f", keys[i], num(c, keys[i]));
                if (cols && col + n > cols) {
                        printf("\n   ");
                        col = 3;
                }
                fputs(word, stdout);
                col += n;
        }
        printf("\n");
        /* Commands down to a base, once there are any (see docs/DESIGN.md). */
        static const char *const cmd[] = { "cmd_in_mqtt", "cmd_in_narrow", "cmd_duplicates", "cmd_sent_narrow",
                                           "cmd_settled_mqtt", NULL };
        double any = 0;
        for (int i = 0; cmd[i]; i++)
                any += num(c, cmd[i]);
        const cJSON *peers = cJSON_GetObjectItemCaseSensitive(r, "peers"), *p;
        if (any || cJSON_GetArraySize(peers)) {
                printf("commands:");
                for (int i = 0; cmd[i]; i++)
                        printf(" %s=%.0f", cmd[i] + 4, num(c, cmd[i]));
                cJSON_ArrayForEach(p, peers)
                        printf("  %s:%s", str(p, "node"), str(p, "mqtt"));
                printf("\n");
        }
}

/* Refusals by reason, each unit's last position and the box's own fix. */
static void print_board(const cJSON *r)
{
        const cJSON *reasons = cJSON_GetObjectItemCaseSensitive(r, "bad_input_reasons"), *e;
        const cJSON *pos = cJSON_GetObjectItemCaseSensitive(r, "positions");
        const cJSON *gnss = cJSON_GetObjectItemCaseSensitive(r, "gnss");
        char a[32];

        if (cJSON_GetArraySize(reasons)) {
                printf("bad input by reason:");
                cJSON_ArrayForEach(e, reasons)
                        printf(" %s=%.0f", e->string, cJSON_IsNumber(e) ? e->valuedouble : 0);
                printf("\n");
        }
        if (cJSON_GetArraySize(pos)) {
                printf("\n%-16s  %12s  %13s  %8s  %s\n", "UNIT", "LAT", "LON", "ALT", "HEARD");
                cJSON_ArrayForEach(e, pos) {
                        const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "position");
                        const cJSON *alt = cJSON_GetObjectItemCaseSensitive(p, "alt");
                        char alts[24] = "-";
                        if (cJSON_IsNumber(alt))
                                snprintf(alts, sizeof(alts), "%.1f", alt->valuedouble);
                        printf("%-16s  %12.7f  %13.7f  %8s  %s ago\n", str(e, "unit"), num(p, "lat"), num(p, "lon"), alts,
                               age(num(e, "age_s"), a, sizeof(a)));
                }
        }
        if (cJSON_IsObject(gnss)) {
                const cJSON *st = cJSON_GetObjectItemCaseSensitive(gnss, "status");
                const cJSON *fix = cJSON_GetObjectItemCaseSensitive(gnss, "fix");
                printf("\ngnss: %s (%s)", *str(st, "state") ? str(st, "state") : "unknown", str(st, "reason"));
                if (cJSON_IsObject(fix))
                        printf("; last fix %.7f %.7f, mode %.0f, %.0f used (BeiDou %.0f) of %.0f seen, %s ago",
                               num(fix, "lat"), num(fix, "lon"), num(fix, "mode"), num(fix, "sats_used"),
                               num(fix, "sats_beidou"), num(fix, "sats_seen"), age(num(gnss, "fix_age_s"), a, sizeof(a)));
                printf("\n");
        }
}

/* spool dead: what is set aside, oldest first. */
static void print_dead(const cJSON *r)
{
        const cJSON *dead = cJSON_GetObjectItemCaseSensitive(r, "dead"), *m;
        char a[32];

        printf("set aside: %.0f held, %.0f so far\n", num(r, "held"), num(r, "set_aside"));
        if (!cJSON_GetArraySize(dead))
                return;
        printf("%-17s  %-4s  %8s  %-7s  %-32s  %s\n", "ID", "DIR", "BYTES", "WHEN", "TOPIC", "WHY");
        cJSON_ArrayForEach(m, dead) {
                printf("%-17.0f  %-4s  %8.0f  %-7s  %-32s  %s\n", num(m, "id"), str(m, "direction"), num(m, "bytes"),
                       age(num(m, "age_s"), a, sizeof(a)), str(m, "topic"), str(m, "why"));
        }
        if (num(r, "held") > cJSON_GetArraySize(dead))
                printf("(the oldest %d shown)\n", cJSON_GetArraySize(dead));
}

static void print_calls(const cJSON *r);
static void print_incidents(const cJSON *r, bool csv);

/* units: one line a unit (the box's own fix last). */
static void print_units(const cJSON *r)
{
        const cJSON *u, *g = cJSON_GetObjectItemCaseSensitive(r, "gnss");
        char a[32];
        printf("%-16s  %-12s  %-13s  %7s  %-4s  %s\n", "UNIT", "LAT", "LON", "AGE", "FIX", "KIND");
        cJSON_ArrayForEach(u, cJSON_GetObjectItemCaseSensitive(r, "units")) {
                const cJSON *p = cJSON_GetObjectItemCaseSensitive(u, "position");
                printf("%-16s  %-12.7f  %-13.7f  %7s  %-4.0f  %s\n", str(u, "unit"), num(p, "lat"), num(p, "lon"),
                       age(num(u, "age_s"), a, sizeof(a)), num(p, "mode"), *str(p, "kind") ? str(p, "kind") : "-");
        }
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(g, "fix");
        if (cJSON_IsObject(f))
                printf("%-16s  %-12.7f  %-13.7f  %7s  %-4.0f  sats %.0f/%.0f\n", "(this box)", num(f, "lat"), num(f, "lon"),
                       age(num(g, "fix_age_s"), a, sizeof(a)), num(f, "mode"), num(f, "sats_used"), num(f, "sats_seen"));
}

/* bases: a center's view of every base it hears. */
static void print_bases(const cJSON *r)
{
        const cJSON *b, *l;
        char a[32];
        if (!cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "bases")))
                printf("no base heard\n");
        cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(r, "bases")) {
                const cJSON *st = cJSON_GetObjectItemCaseSensitive(b, "status");
                printf("%s  %s", str(b, "base"), cJSON_IsObject(st) ? str(st, "state") : "not heard");
                if (cJSON_IsObject(st))
                        printf(" (%s ago over %s)", age(num(b, "status_age_s"), a, sizeof(a)), str(b, "status_via"));
                if (*str(b, "mqtt"))
                        printf("  mqtt %s", str(b, "mqtt"));
                printf("  %d unit(s)\n", cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(b, "units")));
                cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(b, "links")) {
                        const cJSON *ls = cJSON_GetObjectItemCaseSensitive(l, "status");
                        printf("  %-10s  %-8s  %s\n", str(l, "link"), str(ls, "state"), str(ls, "reason"));
                }
        }
}

static bool csv_out;

/* Prints the reply of cmd; returns the exit code. */
static int print_reply(const char *cmd, const cJSON *r)
{
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(r, "error"), *e;

        if (cJSON_IsString(err)) {
                fprintf(stderr, "kuimen: %s\n", err->valuestring);
                return EXIT_FAILED;
        }
        if (strcmp(cmd, "call") == 0) {
                print_calls(r);
                return 0;
        }
        if (strcmp(cmd, "incident") == 0) {
                print_incidents(r, csv_out);
                return 0;
        }
        if (strcmp(cmd, "units") == 0 || strcmp(cmd, "bases") == 0) {
                (cmd[0] == 'u' ? print_units : print_bases)(r);
                return 0;
        }
        if (cJSON_GetObjectItemCaseSensitive(r, "dead")) {
                print_dead(r);
                return 0;
        }
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(r, "retried");
        if (cJSON_IsNumber(n) || cJSON_IsNumber(n = cJSON_GetObjectItemCaseSensitive(r, "dropped"))) {
                printf("%s %.0f set-aside message%s\n", strcmp(n->string, "retried") == 0 ? "sent back" : "dropped",
                       n->valuedouble, n->valuedouble == 1 ? "" : "s");
                if (num(r, "superseded") > 0)
                        printf("dropped %.0f that a newer value on the same coalesce key replaced\n", num(r, "superseded"));
                return 0;
        }
        if (strcmp(cmd, "reload") == 0) {
                if (strcmp(str(r, "reload"), "ok") == 0) {
                        const cJSON *rn = cJSON_GetObjectItemCaseSensitive(r, "restart_needed");
                        printf("reloaded routes and classes from %s (%.0f classes)\n",
                               *str(r, "config") ? str(r, "config") : "the embedded default", num(r, "classes"));
                        cJSON_ArrayForEach(e, rn)
                                fprintf(stderr, "restart needed: %s\n", cJSON_IsString(e) ? e->valuestring : "?");
                        return cJSON_GetArraySize(rn) > 0 ? EXIT_RESTART : 0;
                }
                fprintf(stderr, "reload refused, the running routes stay:\n");
                cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "errors"))
                        fprintf(stderr, "  %s\n", cJSON_IsString(e) ? e->valuestring : "?");
                return EXIT_FAILED;
        }
        print_node(r);
        print_links(r, strcmp(cmd, "links") == 0);
        if (strcmp(cmd, "links") == 0)
                return 0;
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(r, "spool");
        print_spool(sp);
        if (strcmp(cmd, "spool") == 0)
                print_head(sp);
        else {
                print_counters(r);
                print_board(r);
        }
        return 0;
}

/* A failed request shows in the exit code also with --json. */
static int json_exit(const cJSON *r)
{
        if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r, "error")))
                return EXIT_FAILED;
        const cJSON *rl = cJSON_GetObjectItemCaseSensitive(r, "reload");
        if (cJSON_IsString(rl) && strcmp(rl->valuestring, "ok") != 0)
                return EXIT_FAILED;
        return cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "restart_needed")) > 0 ? EXIT_RESTART : 0;
}

/* ---- calls ------------------------------------------------------------------------- */

static const char *shown_time(const cJSON *o, const char *key)
{
        const char *s = str(o, key);
        return *s ? s : "-";
}

static void print_calls(const cJSON *r)
{
        const cJSON *c, *one = cJSON_GetObjectItemCaseSensitive(r, "call"), *x;
        if (cJSON_IsString(one)) {
                printf("call %s\n", one->valuestring);
                return;
        }
        if (cJSON_IsObject(one)) {
                printf("call %s  %s  %s (from %s)  raised %s%s%s\n", str(one, "id"), str(one, "level"), str(one, "state"),
                       str(one, "from"), shown_time(one, "created"), *str(one, "closed") ? "  closed " : "",
                       str(one, "closed"));
                printf("  respond within %.0f s, repeat every %.0f s, escalate after %.0f s (%.0f escalations)\n",
                       num(one, "respond_within"), num(one, "repeat_every"), num(one, "escalate_after"),
                       num(one, "escalations"));
                printf("  text: %s\n", str(one, "text"));
                printf("%-12s  %-9s  %4s  %5s  %-24s  %-24s  %s\n", "UNIT", "STATE", "STEP", "SENDS", "DELIVERED",
                       "ANSWERED", "ANSWER");
                cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(one, "recipients"))
                        printf("%-12s  %-9s  %4.0f  %5.0f  %-24s  %-24s  %s\n", str(x, "unit"), str(x, "state"), num(x, "step"),
                               num(x, "sends"), shown_time(x, "delivered"), shown_time(x, "answered"), str(x, "answer"));
                return;
        }
        printf("%.0f open call%s; %.0f answers, %.0f repeats, %.0f escalations; refused: %.0f commands, %.0f answers\n",
               num(r, "open"), num(r, "open") == 1 ? "" : "s", num(r, "answers"), num(r, "repeats"), num(r, "escalations"), num(r, "bad_commands"),
               num(r, "bad_answers"));
        const cJSON *all = cJSON_GetObjectItemCaseSensitive(r, "calls");
        if (!cJSON_GetArraySize(all))
                return;
        printf("%-20s  %-6s  %-9s  %-6s  %-24s  %8s  %s\n", "ID", "LEVEL", "STATE", "FROM", "RAISED", "ANSWERED", "TEXT");
        cJSON_ArrayForEach(c, all) {
                char ans[32];
                snprintf(ans, sizeof(ans), "%.0f/%.0f", num(c, "answered_n"), num(c, "recipients_n"));
                printf("%-20s  %-6s  %-9s  %-6s  %-24s  %8s  %.60s\n", str(c, "id"), str(c, "level"), str(c, "state"),
                       str(c, "from"), shown_time(c, "created"), ans, str(c, "text"));
        }
}

/* ---- incidents ------------------------------------------------------------------------ */

static const char *iso(const cJSON *o, const char *key, char *buf, size_t n)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!cJSON_IsNumber(v))
                return "";
        time_t t = (time_t)v->valuedouble;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
        return buf;
}

static void print_incidents(const cJSON *r, bool csv)
{
        char a[4][32];
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(r, "incident"), *u;
        if (cJSON_IsString(x)) {
                printf("incident %s\n", x->valuestring);
                return;
        }
        if (cJSON_IsObject(x)) {
                if (csv)
                        printf("incident,unit,reacted,turned_out,arrived,withdrew\n");
                else
                        printf("incident %s  %s  %.6f, %.6f  radius %.0f m  opened %s%s%s\n%-12s  %-20s  %-20s  %-20s  %s\n",
                               str(x, "id"), str(x, "state"), num(x, "lat"), num(x, "lon"), num(x, "radius"),
                               iso(x, "opened", a[0], sizeof(a[0])), *str(x, "call") ? "  call " : "", str(x, "call"),
                               "UNIT", "REACTED", "TURNED OUT", "ARRIVED", "WITHDREW");
                cJSON_ArrayForEach(u, cJSON_GetObjectItemCaseSensitive(x, "units")) {
                        iso(u, "reacted", a[0], sizeof(a[0]));
                        iso(u, "turned_out", a[1], sizeof(a[1]));
                        iso(u, "arrived", a[2], sizeof(a[2]));
                        iso(u, "withdrew", a[3], sizeof(a[3]));
                        const char *r0 = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(u, "reacted")) ? a[0] : "";
                        const char *r1 = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(u, "turned_out")) ? a[1] : "";
                        const char *r2 = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(u, "arrived")) ? a[2] : "";
                        const char *r3 = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(u, "withdrew")) ? a[3] : "";
                        if (csv)
                                printf("%s,%s,%s,%s,%s,%s\n", str(x, "id"), str(u, "unit"), r0, r1, r2, r3);
                        else
                                printf("%-12s  %-20s  %-20s  %-20s  %s\n", str(u, "unit"), *r0 ? r0 : "-", *r1 ? r1 : "-",
                                       *r2 ? r2 : "-", *r3 ? r3 : "-");
                }
                return;
        }
        printf("%-16s  %-6s  %-24s  %8s  %s\n", "ID", "STATE", "OPENED", "UNITS", "PLACE");
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(r, "incidents"))
                printf("%-16s  %-6s  %-24s  %8d  %.6f, %.6f, %.0f m\n", str(x, "id"), str(x, "state"),
                       iso(x, "opened", a[0], sizeof(a[0])), cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(x, "units")),
                       num(x, "lat"), num(x, "lon"), num(x, "radius"));
}

/* "u1,u2 u3" as the JSON array key of o. */
static void add_list(cJSON *o, const char *key, const char *list)
{
        cJSON *a = cJSON_AddArrayToObject(o, key);
        char buf[2048], *save = NULL;
        snprintf(buf, sizeof(buf), "%s", list);
        for (char *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
                cJSON_AddItemToArray(a, cJSON_CreateString(t));
}

/* The request line "verb <o as JSON>" into req (n bytes); takes o. */
static int finish_request(char *req, size_t n, const char *verb, cJSON *o)
{
        char *j = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!j || snprintf(req, n, "%s %s", verb, j) >= (int)n) {
                fprintf(stderr, "kuimenctl: %s too long\n", verb);
                free(j);
                return EXIT_USAGE;
        }
        free(j);
        return 0;
}

/* kuimenctl incident open ID LAT LON RADIUS UNITS [--call ID]. */
static int incident_request(char *req, size_t n, char **pos, int npos, const char *call)
{
        cJSON *o = cJSON_CreateObject();
        char *end;
        double v[3];
        if (npos != 5 || !o)
                goto usage;
        for (int k = 0; k < 3; k++) {
                v[k] = strtod(pos[1 + k], &end);
                if (end == pos[1 + k] || *end) {
                        fprintf(stderr, "kuimenctl: '%s' is not a number\n", pos[1 + k]);
                        cJSON_Delete(o);
                        return EXIT_USAGE;
                }
        }
        cJSON_AddStringToObject(o, "id", pos[0]);
        cJSON_AddNumberToObject(o, "lat", v[0]);
        cJSON_AddNumberToObject(o, "lon", v[1]);
        cJSON_AddNumberToObject(o, "radius", v[2]);
        add_list(o, "units", pos[4]);
        if (call)
                cJSON_AddStringToObject(o, "call", call);
        return finish_request(req, n, "incident", o);
usage:
        cJSON_Delete(o);
        usage(stderr);
        return EXIT_USAGE;
}

/* kuimenctl call ID LEVEL TEXT RECIPIENTS [options]: the call as one line of JSON. */
static int call_request(char *req, size_t n, char **pos, int npos, const char *respond, const char *repeat,
                        const char *esc_to, const char *esc_after)
{
        cJSON *o = cJSON_CreateObject();
        const char *nums[3][2] = { { "respond_within", respond }, { "repeat_every", repeat }, { "escalate_after", esc_after } };
        if (npos != 4 || !o)
                goto usage;
        cJSON_AddStringToObject(o, "id", pos[0]);
        cJSON_AddStringToObject(o, "level", pos[1]);
        cJSON_AddStringToObject(o, "text", pos[2]);
        for (int k = 0; k < 2; k++) {
                const char *list = k ? esc_to : pos[3];
                if (!list)
                        continue;
                add_list(o, k ? "escalate_to" : "recipients", list);
        }
        for (int k = 0; k < 3; k++) {
                if (!nums[k][1])
                        continue;
                char *end;
                double v = strtod(nums[k][1], &end);
                if (end == nums[k][1] || *end || v < 0) {
                        fprintf(stderr, "kuimenctl: --%s: '%s' is not a number of seconds\n", nums[k][0], nums[k][1]);
                        cJSON_Delete(o);
                        return EXIT_USAGE;
                }
                cJSON_AddNumberToObject(o, nums[k][0], v);
        }
        return finish_request(req, n, "call", o);
usage:
        cJSON_Delete(o);
        usage(stderr);
        return EXIT_USAGE;
}

static bool is_command(const char *cmd)
{
        static const char *const cmds[] = { "status", "links", "spool", "units", "bases", "reload", "call", "incident", NULL };
        for (int i = 0; cmd && cmds[i]; i++)
                if (strcmp(cmd, cmds[i]) == 0)
                        return true;
        return false;
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' },
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { "respond-within", required_argument, NULL, 'r' },
                { "repeat-every", required_argument, NULL, 'e' },
                { "escalate-to", required_argument, NULL, 't' },
                { "escalate-after", required_argument, NULL, 'a' },
                { "call", required_argument, NULL, 'C' },
                { "csv", no_argument, NULL, 'v' },
                { NULL, 0, NULL, 0 },
        };
        const char *respond = NULL, *repeat = NULL, *esc_to = NULL, *esc_after = NULL, *inc_call = NULL;
        char path[512] = "";
        bool json = false;
        int o, rc;

        while ((o = getopt_long(argc, argv, "s:jhV", opts, NULL)) != -1) {
                switch (o) {
                case 's': snprintf(path, sizeof(path), "%s", optarg); break;
                case 'j': json = true; break;
                case 'h': usage(stdout); return 0;
                case 'V': puts("kuimenctl " KM_VERSION); return 0;
                case 'r': respond = optarg; break;
                case 'e': repeat = optarg; break;
                case 't': esc_to = optarg; break;
                case 'a': esc_after = optarg; break;
                case 'C': inc_call = optarg; break;
                case 'v': csv_out = true; break;
                default: usage(stderr); return EXIT_USAGE;
                }
        }
        const char *cmd = optind < argc ? argv[optind] : NULL;
        char req[8192];
        /* key new: a key for key_file (gateway/auth.c), from the kernel's generator. */
        if (cmd && strcmp(cmd, "key") == 0) {
                unsigned char k[32];
                char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
                if (argc - optind != 2 || strcmp(argv[optind + 1], "new") != 0) {
                        usage(stderr);
                        return EXIT_USAGE;
                }
                if (sodium_init() < 0)
                        return EXIT_FAILED;
                randombytes_buf(k, sizeof(k));
                sodium_bin2base64(b64, sizeof(b64), k, sizeof(k), sodium_base64_VARIANT_ORIGINAL);
                sodium_memzero(k, sizeof(k));
                printf("%s\n", b64);
                return 0;
        }
        /* spool dead, spool retry ID|all, spool drop ID|all: one request line. */
        int more = argc - optind - 1;
        bool dead = cmd && strcmp(cmd, "spool") == 0 && more >= 1 &&
                    ((strcmp(argv[optind + 1], "dead") == 0 && more == 1) ||
                     ((strcmp(argv[optind + 1], "retry") == 0 || strcmp(argv[optind + 1], "drop") == 0) && more == 2 &&
                      strlen(argv[optind + 2]) < 24));
        bool call = cmd && strcmp(cmd, "call") == 0;
        bool call_op = call && more >= 1 &&
                       ((strcmp(argv[optind + 1], "show") == 0 && more <= 2) ||
                        (strcmp(argv[optind + 1], "close") == 0 && more == 2));
        if ((respond || repeat || esc_to || esc_after) && (!call || call_op)) {
                usage(stderr);
                return EXIT_USAGE;
        }
        bool inc = cmd && strcmp(cmd, "incident") == 0;
        bool inc_open = inc && more >= 1 && strcmp(argv[optind + 1], "open") == 0;
        bool inc_op = inc && more >= 1 &&
                      ((strcmp(argv[optind + 1], "show") == 0 && more <= 2) ||
                       (strcmp(argv[optind + 1], "close") == 0 && more == 2));
        if ((inc_call && !inc_open) || (csv_out && !(inc_op && more == 2 && argv[optind + 1][0] == 's'))) {
                usage(stderr);
                return EXIT_USAGE;
        }
        if (inc_open) {
                if ((rc = incident_request(req, sizeof(req), argv + optind + 2, more - 1, inc_call)))
                        return rc;
        } else if (inc && !inc_op) {
                usage(stderr);
                return EXIT_USAGE;
        } else if (inc) {
                snprintf(req, sizeof(req), "incident %s%s%.100s", argv[optind + 1], more == 2 ? " " : "",
                         more == 2 ? argv[optind + 2] : "");
        } else if (call && !call_op) {
                if ((rc = call_request(req, sizeof(req), argv + optind + 1, more, respond, repeat, esc_to, esc_after)))
                        return rc;
        } else if (!is_command(cmd) || (more && !dead && !call_op) || (call && !more)) {
                usage(stderr);
                return EXIT_USAGE;
        } else {
                snprintf(req, sizeof(req), "%s%s%s%s%.100s", cmd, more ? " " : "", more ? argv[optind + 1] : "",
                         more == 2 ? " " : "", more == 2 ? argv[optind + 2] : "");
        }
        if (!*path)
                default_socket(path, sizeof(path));
        int fd = dial(path);
        if (fd < 0)
                return -fd;
        char *reply = ask(fd, req);
        close(fd);
        if (!reply)
                return EXIT_FAILED;
        cJSON *r = cJSON_Parse(reply);
        if (!r) {
                fprintf(stderr, "kuimenctl: kuimen's reply is not JSON: %.200s\n", reply);
                free(reply);
                return EXIT_FAILED;
        }
        if (json)
                fputs(reply, stdout);
        rc = json ? json_exit(r) : print_reply(cmd, r);
        cJSON_Delete(r);
        free(reply);
        return rc;
}
