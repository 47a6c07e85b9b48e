/* SPDX-License-Identifier: MIT */
/* Incidents: arrival and withdrawal through jitter at the edge, reactions from answers, bad commands, the table across a reopen. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gateway/control.h"
#include "gateway/incidents.h"
#include "gateway/spool.h"

#define M_PER_DEG (6371008.8 * M_PI / 180)
#define LAT0 30.5
#define LON0 109.4

static char dir[64], path[128];
static char last[2048]; /* the last timeline sent upstream */
static int nemit;
static int64_t now_ms = 1765000000000LL;
static struct km_spool *sp;

static int t_emit(void *ud, const char *topic, const char *payload, size_t len)
{
        (void)ud;
        cr_assert_str_eq(topic, "incident/i1");
        snprintf(last, sizeof(last), "%.*s", (int)len, payload);
        nemit++;
        return 0;
}

static int64_t t_now(void *ud)
{
        (void)ud;
        return now_ms;
}

static void nowake(void *ud) { (void)ud; }

static void setup(void)
{
        snprintf(dir, sizeof(dir), "/tmp/km-incidents-XXXXXX");
        cr_assert_not_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/spool.db", dir);
        nemit = 0;
        last[0] = '\0';
}

static void teardown(void)
{
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        cr_assert_eq(system(cmd), 0);
}

static struct km_incidents *open_in(void)
{
        struct km_spool_opts o = { .path = path, .max_bytes = 1 << 24, .sync_interval_ms = 20, .wake = nowake };
        struct km_incidents_conf conf = { .dwell_ms = 5000, .hysteresis_m = 20, .base_m = 200 };
        struct km_incidents_io io = { .emit = t_emit, .now = t_now };
        struct km_incidents *in = NULL;
        cr_assert_eq(km_spool_open(&sp, &o), 0);
        km_spool_set_loop_thread(sp);
        cr_assert_eq(km_incidents_new(&in, sp, &conf, &io), 0);
        return in;
}

/* A fix metres north of the centre at second s. */
static void fix(struct km_incidents *in, const char *unit, double north, int s)
{
        km_incidents_position(in, unit, LAT0 + north / M_PER_DEG, LON0, 1765000000000LL + s * 1000LL);
}

static long long field(const char *unit, const char *key)
{
        char needle[64];
        snprintf(needle, sizeof(needle), "\"unit\":\"%s\"", unit);
        const char *u = strstr(last, needle);
        cr_assert_not_null(u, "%s in %s", unit, last);
        snprintf(needle, sizeof(needle), "\"%s\":", key);
        const char *v = strstr(u, needle);
        cr_assert_not_null(v, "%s of %s in %s", key, unit, last);
        v += strlen(needle);
        return strncmp(v, "null", 4) == 0 ? 0 : atoll(v);
}

TestSuite(incidents, .init = setup, .fini = teardown);

static void open_i1(struct km_incidents *in)
{
        char err[200] = "";
        const char *c = "{\"id\":\"i1\",\"lat\":30.5,\"lon\":109.4,\"radius\":100,\"units\":[\"u1\",\"u2\"],\"call\":\"c1\"}";
        cr_assert_eq(km_incidents_command(in, c, strlen(c), err, sizeof(err)), 0);
        cr_assert_str_empty(err, "%s", err);
        cr_assert_gt(nemit, 0, "the opening goes upstream");
}

/* u1's track, seconds and metres north of the centre: its base, on the way, waiting at
 * the edge (in and out of the 100 m radius, never beyond 120), inside, leaving with a
 * jump back in, out, and in again later. */
static const struct {
        int s;
        double north;
} track[] = {
        { 0, 600 }, { 1, 500 }, { 2, 420 }, { 3, 300 }, { 4, 200 },                  /* turned out at 3 */
        { 5, 95 },  { 6, 110 }, { 7, 99 },  { 8, 118 }, { 9, 90 },  { 10, 105 },       /* arrived at 5 */
        { 11, 100 }, { 12, 119 }, { 13, 50 }, { 14, 20 }, { 15, 10 }, { 16, 30 },
        { 21, 125 }, { 22, 110 }, { 23, 95 },                                        /* out, and back in */
        { 24, 130 }, { 25, 125 }, { 26, 115 }, { 27, 140 }, { 28, 200 }, { 29, 300 }, /* withdrew at 24 */
        { 40, 90 },  { 41, 80 },  { 50, 80 },  { 60, 300 }, { 70, 400 },              /* no second of either */
        { 35, 50 },                                                                  /* older: skipped */
};

Test(incidents, edge_jitter_makes_one_arrival_and_one_withdrawal)
{
        struct km_incidents *in = open_in();
        struct km_incidents_stats st;
        open_i1(in);
        km_incidents_stats(in, &st);
        cr_assert_eq(st.open, 1);
        cr_assert_eq(st.not_arrived, 2, "u1 and u2 on their way");
        int crossings = 0;
        for (size_t i = 0; i < sizeof(track) / sizeof(track[0]); i++) {
                fix(in, "u1", track[i].north, track[i].s);
                if (track[i].s == 10) { /* arrived at 5, dwell 5 s */
                        km_incidents_stats(in, &st);
                        cr_assert_eq(st.not_arrived, 1, "u1 arrived: u2 still on its way");
                }
                if (i && (track[i].north <= 100) != (track[i - 1].north <= 100))
                        crossings++;
                cr_assert_eq(km_incidents_flush(in, false), 0);
        }
        cr_assert_geq(crossings, 10, "the track crosses the radius %d times", crossings);
        cr_assert_eq(field("u1", "turned_out"), 1765000003LL, "left its base area (200 m) at 3 s");
        cr_assert_eq(field("u1", "arrived"), 1765000005LL, "one arrival, at the first fix of the dwell");
        cr_assert_eq(field("u1", "withdrew"), 1765000024LL, "one withdrawal, at the first fix of staying out");
        cr_assert_eq(field("u1", "reacted"), 0);
        cr_assert_eq(field("u2", "arrived"), 0);
        /* u2 answers the incident's call: reacted, turned out (acting), withdrew (done,
         * reported). An answer to another call changes nothing. */
        km_incidents_answer(in, "c2", "u2", "acting");
        cr_assert_eq(km_incidents_flush(in, false), 0);
        cr_assert_eq(field("u2", "reacted"), 0);
        now_ms = 1765000100000LL;
        km_incidents_answer(in, "c1", "u2", "received");
        now_ms += 10000;
        km_incidents_answer(in, "c1", "u2", "acting");
        now_ms += 10000;
        km_incidents_answer(in, "c1", "u2", "done");
        cr_assert_eq(km_incidents_flush(in, false), 0);
        cr_assert_eq(field("u2", "reacted"), 1765000100LL);
        cr_assert_eq(field("u2", "turned_out"), 1765000110LL);
        cr_assert_eq(field("u2", "withdrew"), 1765000120LL);
        km_incidents_stats(in, &st);
        cr_assert_eq(st.not_arrived, 0, "u2 reported done: nobody on the way any more");
        cr_assert_eq(st.open, 1);
        cr_assert_eq(st.bad, 0);
        now_ms = 1765000000000LL;
        km_incidents_free(in);
        km_spool_close(sp);
}

Test(incidents, bad_commands_refused)
{
        struct km_incidents *in = open_in();
        static const char *const bad[][2] = {
                { "[1]", "not a JSON object" },
                { "{\"id\":\"a b\",\"lat\":1,\"lon\":1,\"radius\":5,\"units\":[\"u\"]}", "id:" },
                { "{\"id\":\"i\",\"lat\":91,\"lon\":1,\"radius\":5,\"units\":[\"u\"]}", "lat, lon" },
                { "{\"id\":\"i\",\"lat\":1,\"lon\":1,\"radius\":0,\"units\":[\"u\"]}", "radius" },
                { "{\"id\":\"i\",\"lat\":1,\"lon\":1,\"radius\":5,\"units\":[]}", "units" },
                { "{\"id\":\"i\",\"lat\":1,\"lon\":1,\"radius\":5,\"units\":[\"a/b\"]}", "units: an item" },
                { "{\"id\":\"i\",\"close\":true}", "no such incident" },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char err[200] = "";
                cr_assert_eq(km_incidents_command(in, bad[i][0], strlen(bad[i][0]), err, sizeof(err)), 0);
                cr_assert(strstr(err, bad[i][1]), "%s: '%s', want '%s'", bad[i][0], err, bad[i][1]);
        }
        cr_assert_eq(nemit, 0);
        struct km_incidents_stats st;
        km_incidents_stats(in, &st);
        cr_assert_eq(st.bad, sizeof(bad) / sizeof(bad[0]), "each refused command counted");
        km_incidents_free(in);
        km_spool_close(sp);
}

/* A peer can send refused commands as fast as its link goes: every one is counted, one
 * line per 10 s is logged, and that line says how many were not. */
Test(incidents, a_flood_of_bad_commands_logs_one_line_per_10_s)
{
        struct km_incidents *in = open_in();
        char logf[300], line[512], err[200];
        snprintf(logf, sizeof(logf), "%s/stderr", dir);
        fflush(stderr);
        int saved = dup(STDERR_FILENO), fd = open(logf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        cr_assert(saved >= 0 && fd >= 0);
        dup2(fd, STDERR_FILENO);
        for (int i = 0; i < 500; i++)
                km_incidents_command(in, "[1]", 3, err, sizeof(err));
        now_ms += 10000;
        km_incidents_command(in, "{\"id\":\"i\",\"close\":true}", 26, err, sizeof(err));
        dup2(saved, STDERR_FILENO);
        close(saved);
        close(fd);
        struct km_incidents_stats st;
        km_incidents_stats(in, &st);
        cr_assert_eq(st.bad, 501);
        FILE *f = fopen(logf, "r");
        cr_assert_not_null(f);
        int lines = 0, first = 0, second = 0;
        while (fgets(line, sizeof(line), f)) {
                lines += strstr(line, "incidents: ") != NULL;
                first += strstr(line, "incident command refused: not a JSON object (0 more not logged)") != NULL;
                second += strstr(line, "incident command refused: no such incident (499 more not logged)") != NULL;
        }
        fclose(f);
        cr_assert_eq(lines, 2, "%d lines", lines);
        cr_assert_eq(first, 1);
        cr_assert_eq(second, 1);
        km_incidents_free(in);
        km_spool_close(sp);
}

/* Written as it goes: a process that ends without closing anything (as a kill) leaves
 * the timeline to the next. */
Test(incidents, timeline_survives_a_reopen)
{
        pid_t pid = fork();
        if (pid == 0) {
                struct km_incidents *in = open_in();
                open_i1(in);
                for (size_t i = 0; i < 20; i++)
                        fix(in, "u1", track[i].north, track[i].s);
                km_incidents_answer(in, "c1", "u2", "acting");
                _exit(km_incidents_flush(in, false) == 0 ? 0 : 2);
        }
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        struct km_incidents *in = open_in();
        struct km_control_buf b = { 0 };
        km_incidents_control(in, "show i1", &b);
        snprintf(last, sizeof(last), "%s", b.p);
        km_control_buf_free(&b);
        cr_assert_eq(field("u1", "arrived"), 1765000005LL, "%s", last);
        cr_assert_eq(field("u1", "turned_out"), 1765000003LL);
        cr_assert_eq(field("u2", "turned_out"), now_ms / 1000);
        km_incidents_control(in, "close i1", &b);
        cr_assert_str_eq(b.p, "{\"incident\":\"closed\"}\n");
        km_control_buf_free(&b);
        /* Closed: fixes change nothing any more. */
        fix(in, "u2", 50, 100);
        fix(in, "u2", 50, 200);
        km_incidents_control(in, "show i1", &b);
        snprintf(last, sizeof(last), "%s", b.p);
        km_control_buf_free(&b);
        cr_assert(strstr(last, "\"state\":\"closed\""), "%s", last);
        cr_assert_eq(field("u2", "arrived"), 0);
        km_incidents_free(in);
        km_spool_close(sp);
}

/* A center keeps what it hears; a copy that knows less (an older one, late by the other
 * path) does not replace it; bad ones are dropped. */
Test(incidents, a_center_keeps_the_timeline_that_knows_more)
{
        struct km_incidents *in = open_in();
        const char *older = "{\"id\":\"i1\",\"state\":\"open\",\"units\":[{\"unit\":\"u1\",\"reacted\":5,\"turned_out\":null,"
                            "\"arrived\":null,\"withdrew\":null}]}";
        const char *newer = "{\"id\":\"i1\",\"state\":\"open\",\"units\":[{\"unit\":\"u1\",\"reacted\":5,\"turned_out\":6,"
                            "\"arrived\":9,\"withdrew\":null}]}";
        km_incidents_heard(in, "north", "i1", newer, strlen(newer));
        km_incidents_heard(in, "north", "i1", older, strlen(older));
        km_incidents_heard(in, "north", "i2", "garbage", 7);
        km_incidents_heard(in, "no/rth", "i3", newer, strlen(newer));
        cr_assert_eq(km_incidents_flush(in, true), 0);
        struct km_control_buf b = { 0 };
        km_incidents_control(in, "show north/i1", &b);
        cr_assert(strstr(b.p, "{\"incident\":{\"id\":\"north/i1\""), "%s", b.p);
        cr_assert(strstr(b.p, "\"arrived\":9"), "the newer copy stays: %s", b.p);
        km_control_buf_free(&b);
        km_incidents_control(in, "show north/i2", &b);
        cr_assert(strstr(b.p, "\"error\""), "%s", b.p);
        km_control_buf_free(&b);
        km_incidents_control(in, "show", &b);
        cr_assert(strstr(b.p, "\"id\":\"north/i1\""), "%s", b.p);
        cr_assert_null(strstr(b.p, "i3"), "%s", b.p);
        km_control_buf_free(&b);
        km_incidents_free(in);
        km_spool_close(sp);
        /* And after a restart. */
        in = open_in();
        km_incidents_control(in, "show north/i1", &b);
        cr_assert(strstr(b.p, "\"arrived\":9"), "%s", b.p);
        km_control_buf_free(&b);
        km_incidents_heard(in, "north", "i1", older, strlen(older));
        km_incidents_control(in, "show north/i1", &b);
        cr_assert(strstr(b.p, "\"arrived\":9"), "what it knew is reloaded with it: %s", b.p);
        km_control_buf_free(&b);
        km_incidents_free(in);
        km_spool_close(sp);
}
