/* SPDX-License-Identifier: MIT */
/* Calls: the state machine on a clock of the test's, its tables across a reopen, bad input, and what a change costs on a 77-byte frame. */
#include <criterion/criterion.h>
#include <sqlite3.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gateway/calls.h"
#include "gateway/control.h"
#include "gateway/frame.h"
#include "gateway/incidents.h"
#include "gateway/spool.h"

static char dir[64], path[128];

struct out {
        char topic[64];
        char payload[512];
        bool retain;
        uint64_t id;
};

/* What the engine did: down (call/<unit>) and up (call/<id>), and the clock. */
static struct out down[512], up[512];
static size_t ndown, nup;
static uint64_t next_id = 100;
static int64_t now_ms = 1765000000000LL;

static int t_publish(void *ud, const char *topic, const char *payload, size_t len, bool retain, uint64_t *id)
{
        (void)ud;
        cr_assert_lt(ndown, 512);
        struct out *o = &down[ndown++];
        snprintf(o->topic, sizeof(o->topic), "%s", topic);
        snprintf(o->payload, sizeof(o->payload), "%.*s", (int)len, payload);
        o->retain = retain;
        o->id = *id = next_id++;
        return 0;
}

static int t_emit(void *ud, const char *topic, const char *payload, size_t len)
{
        (void)ud;
        cr_assert_lt(nup, 512);
        struct out *o = &up[nup++];
        snprintf(o->topic, sizeof(o->topic), "%s", topic);
        snprintf(o->payload, sizeof(o->payload), "%.*s", (int)len, payload);
        return 0;
}

static int64_t t_now(void *ud)
{
        (void)ud;
        return now_ms;
}

static void nowake(void *ud) { (void)ud; }

static struct km_spool *sp;

static void setup(void)
{
        snprintf(dir, sizeof(dir), "/tmp/km-calls-XXXXXX");
        cr_assert_not_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/spool.db", dir);
        ndown = nup = 0;
}

static void teardown(void)
{
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        cr_assert_eq(system(cmd), 0);
}

/* A config as text, through the same loader the daemon uses. */
static struct km_calls *open_calls(const char *conf_text)
{
        struct km_spool_opts o = { .path = path, .max_bytes = 1 << 24, .sync_interval_ms = 20, .wake = nowake };
        struct km_conf c;
        struct km_calls_conf cc;
        struct km_calls *cs = NULL;
        cr_assert_eq(km_spool_open(&sp, &o), 0);
        km_spool_set_loop_thread(sp);
        cr_assert_eq(km_conf_load(&c, "test.conf", conf_text), 0);
        cr_assert_eq(km_calls_conf_load(&cc, &c), 0, "%s", c.nerrors ? c.errors[0] : "");
        km_conf_deinit(&c);
        struct km_calls_io io = { .publish = t_publish, .emit = t_emit, .now = t_now };
        cr_assert_eq(km_calls_new(&cs, sp, &cc, &io), 0);
        return cs;
}

static void close_calls(struct km_calls *cs)
{
        km_calls_free(cs);
        km_spool_close(sp);
        sp = NULL;
}

static int count_up(const char *needle)
{
        int n = 0;
        for (size_t i = 0; i < nup; i++)
                n += strstr(up[i].payload, needle) != NULL;
        return n;
}

static int count_down(const char *topic, bool empty)
{
        int n = 0;
        for (size_t i = 0; i < ndown; i++)
                n += strcmp(down[i].topic, topic) == 0 && (empty == !down[i].payload[0]);
        return n;
}

static void cmd(struct km_calls *cs, const char *json)
{
        char err[256] = "";
        cr_assert_eq(km_calls_command(cs, json, strlen(json), err, sizeof(err)), 0);
        cr_assert_str_empty(err, "%s: %s", json, err);
}

static void ans(struct km_calls *cs, const char *unit, const char *json)
{
        char topic[64];
        snprintf(topic, sizeof(topic), "call/%s/answer", unit);
        cr_assert_eq(km_calls_answer(cs, topic, json, strlen(json)), 1);
}

static const char conf[] = "[calls level red]\nrespond_within = 10s\nrepeat_every = 3s\nescalate_to = leads > duty\n"
                           "[calls group leads]\nunits = l1, l2\n";

TestSuite(calls, .init = setup, .fini = teardown);

Test(calls, deliver_answer_repeat_overdue_escalate_close)
{
        struct km_calls *cs = open_calls(conf);
        cmd(cs, "{\"id\":\"c1\",\"level\":\"red\",\"text\":\"Flood\",\"recipients\":[\"u1\",\"u2\",\"leads\"]}");
        cr_assert_eq(ndown, 4, "u1, u2, l1, l2 called");
        cr_assert(down[0].retain && strcmp(down[0].topic, "call/u1") == 0);
        cr_assert_str_eq(down[0].payload, "{\"id\":\"c1\",\"level\":\"red\",\"text\":\"Flood\",\"at\":1765000000,"
                                          "\"respond_within\":10,\"n\":1}");
        cr_assert_eq(nup, 1);
        cr_assert_str_eq(up[0].topic, "call/c1");
        cr_assert_str_eq(up[0].payload, "{\"state\":\"open\",\"level\":\"red\",\"at\":1765000000,"
                                        "\"recipients\":[\"u1\",\"u2\",\"l1\",\"l2\"],\"text\":\"Flood\"}");
        /* The local broker's acks: delivered, once each. */
        now_ms += 100;
        for (size_t i = 0; i < 4; i++)
                km_calls_acked(cs, down[i].id);
        km_calls_acked(cs, down[0].id);
        cr_assert_eq(count_up("\"state\":\"delivered\""), 4);
        cr_assert_str_eq(up[1].payload, "{\"unit\":\"u1\",\"state\":\"delivered\",\"t\":0}");
        /* u1 acts: its retained copy goes, nothing repeats for it. */
        now_ms += 1900;
        ans(cs, "u1", "{\"id\":\"c1\",\"status\":\"acting\",\"text\":\"on my way\"}");
        ans(cs, "u1", "{\"id\":\"c1\",\"status\":\"acting\",\"text\":\"on my way\"}"); /* a retry: one change */
        cr_assert_eq(count_up("\"unit\":\"u1\",\"state\":\"acting\",\"t\":2,\"answer\":\"on my way\""), 1);
        cr_assert_eq(count_down("call/u1", true), 1, "u1's retained call taken off");
        cr_assert_eq(km_calls_flush(cs, true), 0);
        /* At 3 s the three others are called again. */
        now_ms += 1000;
        km_calls_tick(cs);
        cr_assert_eq(count_down("call/u2", false), 2);
        cr_assert_eq(count_down("call/u1", false), 1);
        cr_assert_eq(count_up("\"n\":2"), 3);
        /* Not acknowledged yet: no third copy at 6 s, however late. */
        now_ms += 3000;
        km_calls_tick(cs);
        cr_assert_eq(count_down("call/u2", false), 2, "a copy on its way is not followed by another");
        for (size_t i = 0; i < ndown; i++)
                km_calls_acked(cs, down[i].id);
        km_calls_tick(cs);
        cr_assert_eq(count_down("call/u2", false), 3);
        /* 10 s: overdue, and the first step of the chain (l1, l2 are recipients already:
         * the step adds duty only when it comes). */
        now_ms = 1765000000000LL + 10000;
        km_calls_tick(cs);
        cr_assert_eq(count_up("\"state\":\"overdue\""), 3, "u2, l1, l2 overdue");
        cr_assert_eq(count_up("{\"state\":\"escalated\",\"t\":10,\"step\":1}"), 1, "step 1: no one new");
        now_ms += 10000;
        km_calls_tick(cs);
        cr_assert_eq(count_up("\"state\":\"escalated\",\"t\":20,\"step\":2,\"to\":[\"duty\"]"), 1);
        cr_assert_eq(count_down("call/duty", false), 1);
        /* Everyone done: the call closes by itself. */
        ans(cs, "u1", "{\"id\":\"c1\",\"status\":\"done\"}");
        const char *rest[] = { "u2", "l1", "l2", "duty" };
        for (int i = 0; i < 4; i++)
                ans(cs, rest[i], "{\"id\":\"c1\",\"status\":\"done\"}");
        cr_assert_eq(count_up("{\"state\":\"closed\",\"t\":20}"), 1);
        struct km_calls_stats st;
        km_calls_stats(cs, &st);
        cr_assert_eq(st.open, 0);
        cr_assert_eq(st.escalations, 2);
        cr_assert_eq(st.answers, 6);
        close_calls(cs);
}

/* An answer older than the one held (a terminal's "received" retried after its
 * "acting" got through, anything after "done") changes nothing. */
Test(calls, an_older_answer_does_not_undo_a_newer_one)
{
        struct km_calls *cs = open_calls(conf);
        cmd(cs, "{\"id\":\"c2\",\"level\":\"red\",\"text\":\"Slide\",\"recipients\":[\"u1\",\"u2\"]}");
        ans(cs, "u1", "{\"id\":\"c2\",\"status\":\"acting\"}");
        ans(cs, "u1", "{\"id\":\"c2\",\"status\":\"received\"}");
        cr_assert_eq(count_up("\"unit\":\"u1\",\"state\":\"acting\""), 1);
        cr_assert_eq(count_up("\"unit\":\"u1\",\"state\":\"received\""), 0, "received after acting was taken");
        /* Plans change: cannot after acting, and acting again after cannot, are news. */
        ans(cs, "u1", "{\"id\":\"c2\",\"status\":\"cannot\",\"text\":\"road cut\"}");
        ans(cs, "u1", "{\"id\":\"c2\",\"status\":\"acting\",\"text\":\"by the river\"}");
        cr_assert_eq(count_up("\"unit\":\"u1\",\"state\":\"cannot\""), 1);
        cr_assert_eq(count_up("\"unit\":\"u1\",\"state\":\"acting\""), 2);
        ans(cs, "u1", "{\"id\":\"c2\",\"status\":\"done\"}");
        ans(cs, "u1", "{\"id\":\"c2\",\"status\":\"acting\"}");
        ans(cs, "u1", "{\"id\":\"c2\",\"status\":\"cannot\"}");
        cr_assert_eq(count_up("\"unit\":\"u1\",\"state\":\"done\""), 1);
        cr_assert_eq(count_up("\"unit\":\"u1\",\"state\":\"acting\""), 2, "acting after done was taken");
        cr_assert_eq(count_up("\"unit\":\"u1\",\"state\":\"cannot\""), 1, "cannot after done was taken");
        struct km_calls_stats st;
        km_calls_stats(cs, &st);
        cr_assert_eq(st.answers, 4);
        cr_assert_eq(st.open, 1, "u2 has not answered");
        close_calls(cs);
}

/* Bad input is refused with why, counted, and changes nothing. */
Test(calls, bad_commands_and_answers)
{
        struct km_calls *cs = open_calls(conf);
        static const char *const bad[][2] = {
                { "not json", "not a JSON object" },
                { "{\"level\":\"red\",\"text\":\"x\",\"recipients\":[\"u1\"]}", "id: missing" },
                { "{\"id\":\"a/b\",\"level\":\"red\",\"text\":\"x\",\"recipients\":[\"u1\"]}", "id: missing, or not" },
                { "{\"id\":\"c\",\"level\":\"purple\",\"text\":\"x\",\"recipients\":[\"u1\"]}", "level:" },
                { "{\"id\":\"c\",\"level\":\"red\",\"text\":\"\",\"recipients\":[\"u1\"]}", "text:" },
                { "{\"id\":\"c\",\"level\":\"red\",\"text\":\"x\"}", "recipients: missing" },
                { "{\"id\":\"c\",\"level\":\"red\",\"text\":\"x\",\"recipients\":[\"u 1\"]}", "recipients: an item" },
                { "{\"id\":\"c\",\"level\":\"red\",\"text\":\"x\",\"recipients\":[\"u1\"],\"repeat_every\":-1}",
                  "repeat_every: not a number" },
                { "{\"id\":\"nope\",\"close\":true}", "no call nope" },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char err[256] = "";
                cr_assert_eq(km_calls_command(cs, bad[i][0], strlen(bad[i][0]), err, sizeof(err)), 0,
                             "refused for good: acknowledged");
                cr_assert(strstr(err, bad[i][1]), "%s: '%s' says '%s'", bad[i][0], err, bad[i][1]);
        }
        cr_assert_eq(ndown + nup, 0);
        cmd(cs, "{\"id\":\"c\",\"level\":\"red\",\"text\":\"x\",\"recipients\":[\"u1\"]}");
        cr_assert_eq(km_calls_answer(cs, "sensors/x", "{}", 2), 0, "not an answer topic");
        ans(cs, "u1", "garbage");
        ans(cs, "u1", "{\"id\":\"c\",\"status\":\"maybe\"}");
        ans(cs, "u9", "{\"id\":\"c\",\"status\":\"done\"}");
        ans(cs, "u1", "{\"id\":\"zz\",\"status\":\"done\"}");
        cr_assert_eq(km_calls_answer(cs, "call/a/b/answer", "{}", 2), 1);
        struct km_calls_stats st;
        km_calls_stats(cs, &st);
        cr_assert_eq(st.bad_commands, 9, "%llu", (unsigned long long)st.bad_commands);
        cr_assert_eq(st.bad_answers, 5);
        cr_assert_eq(st.answers, 0);
        /* The same call again (a redelivery) is taken once. */
        size_t was = ndown;
        cmd(cs, "{\"id\":\"c\",\"level\":\"red\",\"text\":\"x\",\"recipients\":[\"u1\"]}");
        cr_assert_eq(ndown, was);
        close_calls(cs);
}

/* What was written survives a reopen (as after a kill): answers, copies sent, deadlines. */
Test(calls, state_survives_a_reopen)
{
        /* In a child that ends with _exit and closes nothing, as a kill would leave it. */
        pid_t pid = fork();
        if (pid == 0) {
                struct km_calls *cs = open_calls(conf);
                const char *c = "{\"id\":\"k\",\"level\":\"red\",\"text\":\"Dam\",\"recipients\":[\"u1\",\"u2\"],"
                                "\"escalate_to\":[\"boss\"]}";
                const char *a = "{\"id\":\"k\",\"status\":\"cannot\",\"text\":\"road cut\"}";
                if (km_calls_command(cs, c, strlen(c), NULL, 0) < 0 || ndown != 2)
                        _exit(2);
                km_calls_acked(cs, down[0].id);
                if (km_calls_answer(cs, "call/u1/answer", a, strlen(a)) != 1 || km_calls_flush(cs, true) < 0)
                        _exit(3);
                _exit(0);
        }
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: %d", st);
        ndown = nup = 0;
        struct km_spool_opts o = { .path = path, .max_bytes = 1 << 24, .sync_interval_ms = 20, .wake = nowake };
        cr_assert_eq(km_spool_open(&sp, &o), 0);
        struct km_calls_conf cc = { .tick_ms = 200, .keep_closed_ms = 1000 };
        struct km_calls_io io = { .publish = t_publish, .emit = t_emit, .now = t_now };
        struct km_calls *again = NULL;
        cr_assert_eq(km_calls_new(&again, sp, &cc, &io), 0);
        struct km_control_buf b = { 0 };
        km_calls_control(again, "show k", &b);
        cr_assert(strstr(b.p, "\"unit\":\"u1\",\"state\":\"cannot\",\"step\":0,\"sends\":1"), "%s", b.p);
        cr_assert(strstr(b.p, "\"answer\":\"road cut\""), "%s", b.p);
        cr_assert(strstr(b.p, "\"unit\":\"u2\",\"state\":\"pending\",\"step\":0,\"sends\":1"), "%s", b.p);
        km_control_buf_free(&b);
        /* u2's copy was never acknowledged and the spool does not hold it (the test's
         * publish spools nothing): after 3 s it is called again, n=2; at 10 s boss. */
        size_t was = ndown;
        now_ms += 3000;
        km_calls_tick(again);
        cr_assert_eq(ndown, was + 1);
        cr_assert_str_eq(down[ndown - 1].topic, "call/u2");
        cr_assert(strstr(down[ndown - 1].payload, "\"n\":2"), "%s", down[ndown - 1].payload);
        now_ms += 7000;
        km_calls_tick(again);
        cr_assert_eq(count_down("call/boss", false), 1, "escalation resumed from the stored start");
        km_calls_control(again, "close k", &b);
        cr_assert_str_eq(b.p, "{\"call\":\"closed\"}\n");
        km_control_buf_free(&b);
        cr_assert_eq(count_down("call/u2", true), 1);
        cr_assert_eq(count_down("call/boss", true), 1);
        /* Closed past keep_closed: gone from memory and file. */
        now_ms += 2000;
        km_calls_tick(again);
        km_calls_control(again, "show", &b);
        cr_assert(strstr(b.p, "{\"calls\":[],\"open\":0"), "%s", b.p);
        km_control_buf_free(&b);
        km_calls_free(again);
        km_spool_close(sp);
        sp = NULL;
        now_ms = 1765000000000LL;
}

/* sync = batch: the commit that vouches for a call (or an answer) first syncs the
 * ingest log, where its upstream change is, so a power cut cannot keep the call and
 * lose the change (the power-cut drill's call). No sync thread (sync_interval 0): every
 * fsync of the log counted here is the commit's. */
Test(calls, full_flush_syncs_the_ingest_log)
{
        struct km_spool_opts o = { .path = path, .max_bytes = 1 << 24, .sync_interval_ms = 0, .wake = nowake };
        struct km_calls_conf cc = { .tick_ms = 200, .keep_closed_ms = 1000 };
        struct km_calls_io io = { .publish = t_publish, .emit = t_emit, .now = t_now };
        struct km_calls *cs = NULL;
        struct km_spool_stats st;
        cr_assert_eq(km_spool_open(&sp, &o), 0);
        km_spool_set_loop_thread(sp);
        cr_assert_eq(km_calls_new(&cs, sp, &cc, &io), 0);
        km_spool_stats(sp, &st);
        uint64_t before = st.fsyncs;
        struct km_msg m = { .dir = KM_DIR_UP, .prio = 0, .qos = 1, .cls = "alert", .topic = "call/s",
                            .payload = "{\"state\":\"open\"}", .len = 16 };
        cr_assert_eq(km_spool_push(sp, &m), 0); /* the change, as the daemon's emit spools it */
        km_spool_stats(sp, &st);
        cr_assert_eq(st.fsyncs, before, "batch: the push alone is not synced yet");
        cmd(cs, "{\"id\":\"s\",\"level\":\"red\",\"text\":\"Dam\",\"recipients\":[\"u1\"]}");
        km_spool_stats(sp, &st);
        cr_assert_gt(st.fsyncs, before, "the call's FULL commit synced the ingest log first");
        close_calls(cs);
}

/* A spool file found damaged is moved aside and what can be read of it imported into a
 * fresh one: the calls and their recipients too, not only the messages (here the
 * messages' table is the damaged part: its root page zeroed). */
Test(calls, damaged_spool_keeps_its_calls)
{
        struct km_calls *cs = open_calls(conf);
        char pl[256];
        for (int i = 0; i < 300; i++) { /* the msg table over many pages */
                snprintf(pl, sizeof(pl), "%03d-%0200d", i, 0);
                struct km_msg m = { .dir = KM_DIR_UP, .prio = 4, .qos = 1, .cls = "telemetry", .topic = "s/x",
                                    .payload = pl, .len = strlen(pl) };
                cr_assert_eq(km_spool_push(sp, &m), 0);
        }
        cmd(cs, "{\"id\":\"d\",\"level\":\"red\",\"text\":\"Dam\",\"recipients\":[\"u1\",\"u2\",\"u3\"]}");
        km_calls_acked(cs, down[0].id);
        km_calls_acked(cs, down[1].id);
        ans(cs, "u1", "{\"id\":\"d\",\"status\":\"acting\",\"text\":\"on my way\"}");
        cr_assert_eq(km_calls_flush(cs, true), 0);
        /* An incident's timeline lives beside them. */
        struct km_incidents_conf ic = { .dwell_ms = 5000, .hysteresis_m = 20, .base_m = 200 };
        struct km_incidents_io iio = { .emit = t_emit, .now = t_now };
        struct km_incidents *in = NULL;
        const char *inc = "{\"id\":\"i1\",\"lat\":30.5,\"lon\":109.4,\"radius\":100,\"units\":[\"u1\",\"u2\"],\"call\":\"d\"}";
        cr_assert_eq(km_incidents_new(&in, sp, &ic, &iio), 0);
        cr_assert_eq(km_incidents_command(in, inc, strlen(inc), NULL, 0), 0);
        km_incidents_answer(in, "d", "u1", "acting");
        cr_assert_eq(km_incidents_flush(in, true), 0);
        km_incidents_free(in);
        cr_assert_eq(km_spool_checkpoint(sp), 0);
        close_calls(cs);

        sqlite3 *db;
        sqlite3_stmt *s;
        int root = 0;
        cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
        cr_assert_eq(sqlite3_prepare_v2(db, "SELECT rootpage FROM sqlite_master WHERE name='msg'", -1, &s, NULL), SQLITE_OK);
        cr_assert_eq(sqlite3_step(s), SQLITE_ROW);
        root = sqlite3_column_int(s, 0);
        sqlite3_finalize(s);
        sqlite3_close(db);
        cr_assert_gt(root, 1);
        FILE *f = fopen(path, "r+");
        cr_assert_not_null(f);
        cr_assert_eq(fseek(f, (long)(root - 1) * 4096, SEEK_SET), 0);
        for (int i = 0; i < 4096; i++)
                fputc(0, f);
        fclose(f);

        ndown = nup = 0;
        cs = open_calls(conf);
        struct km_spool_stats st;
        km_spool_stats(sp, &st);
        cr_assert_eq(st.moved_aside, 1, "the damaged file was moved aside");
        struct km_control_buf b = { 0 };
        km_calls_control(cs, "show d", &b);
        cr_assert(strstr(b.p, "\"state\":\"open\""), "the call is back: %s", b.p);
        cr_assert(strstr(b.p, "\"unit\":\"u1\",\"state\":\"acting\",\"step\":0,\"sends\":1"), "%s", b.p);
        cr_assert(strstr(b.p, "\"answer\":\"on my way\""), "%s", b.p);
        cr_assert(strstr(b.p, "\"unit\":\"u2\",\"state\":\"delivered\",\"step\":0,\"sends\":1"), "%s", b.p);
        cr_assert(strstr(b.p, "\"unit\":\"u3\",\"state\":\"pending\",\"step\":0,\"sends\":1"), "%s", b.p);
        km_control_buf_free(&b);
        cr_assert_eq(km_incidents_new(&in, sp, &ic, &iio), 0);
        km_incidents_control(in, "show i1", &b);
        cr_assert(strstr(b.p, "\"unit\":\"u1\",\"reacted\":1765000000"), "the timeline is back: %s", b.p);
        km_control_buf_free(&b);
        km_incidents_free(in);
        /* And it goes on: u2 and u3 are called again on the grid, u1 is not. */
        now_ms += 3000;
        km_calls_tick(cs);
        cr_assert_eq(count_down("call/u2", false), 1);
        cr_assert_eq(count_down("call/u3", false), 1);
        cr_assert_eq(count_down("call/u1", false), 0);
        close_calls(cs);
        now_ms = 1765000000000LL;
}

/* One recipient's change on a BeiDou-sized frame (77 bytes), as the narrow link frames
 * it (wire version 2): alone and first on its topic (the call's topic named in full), and
 * after the call's previous change (its slot named, deflated against it). */
static int frame_len(struct km_frame_tx *tx, uint64_t id, const char *topic, const char *payload, size_t mtu)
{
        uint8_t out[KM_FRAME_MTU_MAX];
        struct km_frame_put put;
        struct km_frame_msg m = { .id = id, .topic = topic, .payload = (const uint8_t *)payload, .len = strlen(payload),
                                  .created_ms = 1765000000000LL, .cls = 0, .qos = 1 };
        int n = km_frame_tx_encode(tx, &m, 1, mtu, NULL, 1765000000000LL, out, &put);
        cr_assert_gt(n, 0);
        cr_assert_eq(put.n_full, 1, "'%s' on %s fits one %zu-byte frame", payload, topic, mtu);
        return n;
}

Test(calls, a_change_fits_a_77_byte_frame)
{
        static const char *const changes[] = {
                "{\"unit\":\"team-07\",\"state\":\"delivered\",\"t\":3}",
                "{\"unit\":\"team-07\",\"state\":\"acting\",\"t\":1234}",
                "{\"unit\":\"u7\",\"state\":\"overdue\",\"t\":120,\"n\":5}",
                "{\"unit\":\"team-07\",\"state\":\"overdue\",\"t\":120,\"n\":5}",
                "{\"unit\":\"team-07\",\"state\":\"acting\",\"t\":1234,\"n\":12,\"answer\":\"on my way\"}",
                "{\"state\":\"escalated\",\"t\":300,\"step\":1,\"to\":[\"county-duty\"]}",
        };
        const char *topic = "call/f20261207-01"; /* a 12-byte call id */
        for (size_t mtu = 77; mtu >= 66; mtu -= 11) { /* 66: sealed, tag_bytes = 8 (11 bytes) */
                for (size_t i = 0; i < 6; i++) {
                        struct km_frame_tx tx;
                        struct km_frame_tx_cfg c = { .origin = 7, .first_seq = 1, .mtu_max = KM_FRAME_MTU_MAX, .version = 2 };
                        cr_assert_eq(km_frame_tx_init(&tx, &c), 0);
                        int first = frame_len(&tx, 1, topic, changes[i], KM_FRAME_MTU_MAX);
                        km_frame_tx_deinit(&tx);
                        cr_assert_eq(km_frame_tx_init(&tx, &c), 0);
                        /* In a running call the change follows another on the call's
                         * topic: it names that slot and deflates against it. */
                        frame_len(&tx, 1, topic, "{\"unit\":\"team-06\",\"state\":\"delivered\",\"t\":2}", KM_FRAME_MTU_MAX);
                        int next = frame_len(&tx, 2, topic, changes[i], mtu);
                        /* Alone and first on its topic (after a restart of the link's
                         * slots): the topic goes in full. The common changes fit 77 B. */
                        if (mtu == 77 && i < 3)
                                cr_assert_leq(first, 77, "%s first on its topic: %d B", changes[i], first);
                        fprintf(stderr, "# mtu %zu: %2zu-byte change: %2d B alone and first on call/<12-byte id>, %2d B "
                                        "after the call's previous change\n", mtu, strlen(changes[i]), first, next);
                        cr_log_info("mtu %zu: %zu B change: %d B first, %d B next", mtu, strlen(changes[i]), first, next);
                        km_frame_tx_deinit(&tx);
                }
        }
}
