/* SPDX-License-Identifier: MIT */
/* Unit tests of the topic dictionary: parsing and its exact errors, the fingerprint, frames with it, the fallback. */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/dict.h"
#include "gateway/frame.h"

#define NOW_MS 1763880000123LL
/* What the daemon puts on the wire: the FNV-1a hash of "north" (a 5-byte varint
 * origin) and spool ids that are microsecond clock values. */
#define ORIGIN 0xdaef9304u
#define FIRST_ID 1795931460729039ULL

static char err[600];

static int parse(struct km_dict *d, const char *text)
{
        err[0] = '\0';
        return km_dict_parse(d, "dict.txt", text, strlen(text), err, sizeof(err));
}

/* Parsing fails with exactly this message. */
static void refused(const char *text, size_t len, const char *want)
{
        struct km_dict d;
        err[0] = '\0';
        cr_assert_eq(km_dict_parse(&d, "dict.txt", text, len, err, sizeof(err)), -EINVAL, "accepted: %s", want);
        cr_assert_str_eq(err, want);
        cr_assert_null(d.topics);
        cr_assert_eq(d.n, 0);
        km_dict_deinit(&d);
}

Test(dict, lines_comments_and_indexes)
{
        struct km_dict d;
        cr_assert_eq(parse(&d, "# north base, append only\n"
                               "alert/gas/zone3\n"
                               "\n"
                               "   \t\n"
                               "  # indented comment\n"
                               "cmd/evacuate\r\n"
                               "sensors/water/level"),
                     0, "%s", err);
        cr_assert_eq(d.n, 3);
        cr_assert_str_eq(d.topics[0], "alert/gas/zone3");
        cr_assert_str_eq(d.topics[1], "cmd/evacuate");
        cr_assert_str_eq(d.topics[2], "sensors/water/level");
        cr_assert_str_eq(d.path, "dict.txt");
        cr_assert_eq(d.frame.n, 3);
        cr_assert_eq(d.frame.topics[1], d.topics[1]);
        /* MQTT allows blanks and empty levels inside a topic */
        km_dict_deinit(&d);
        cr_assert_eq(parse(&d, "a b/c\n/lead\ntrail/\nx//y\n"), 0, "%s", err);
        cr_assert_eq(d.n, 4);
        cr_assert_str_eq(d.topics[0], "a b/c");
        km_dict_deinit(&d);
        km_dict_deinit(&d); /* twice is fine */
}

Test(dict, errors_name_file_and_line)
{
        refused("a\n+/b\n", 6, "dict.txt:2: wildcard '+' in topic '+/b': a dictionary lists topics, not filters");
        refused("a\n\nalert/#\n", 10,
                "dict.txt:3: wildcard '#' in topic 'alert/#': a dictionary lists topics, not filters");
        refused("alert/gas\n# c\ncmd/x\nalert/gas\n", 30,
                "dict.txt:4: 'alert/gas' again (first on line 1): an index names one topic");
        refused("a\nb\0c\n", 6, "dict.txt:2: NUL byte in topic");
        refused("a\tb\n", 4, "dict.txt:1: control character 0x09 in topic");
        refused("a\x7f\n", 3, "dict.txt:1: control character 0x7f in topic");
        refused("ok\nbad \n", 8, "dict.txt:2: blank at the start or end of the topic");
        refused(" bad\n", 5, "dict.txt:1: blank at the start or end of the topic");
        refused("a\r\r\n", 4, "dict.txt:1: control character 0x0d in topic");
        refused("", 0, "dict.txt: no topics (only blank lines and comments)");
        refused("# only\n\n  \n", 11, "dict.txt: no topics (only blank lines and comments)");

        /* KM_FRAME_TOPIC_MAX bytes is the longest a frame carries literally */
        static char big[KM_FRAME_TOPIC_MAX + 8];
        memset(big, 'x', sizeof(big));
        big[0] = 'a', big[1] = '\n';
        struct km_dict d;
        cr_assert_eq(km_dict_parse(&d, "dict.txt", big, 2 + KM_FRAME_TOPIC_MAX, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(strlen(d.topics[1]), KM_FRAME_TOPIC_MAX);
        km_dict_deinit(&d);
        refused(big, 2 + KM_FRAME_TOPIC_MAX + 1, "dict.txt:2: topic of 513 bytes, longer than 512");
}

Test(dict, at_most_KM_DICT_MAX_topics)
{
        size_t cap = (KM_DICT_MAX + 1) * 8, len = 0;
        char *text = malloc(cap);
        for (int i = 0; i < KM_DICT_MAX; i++)
                len += (size_t)snprintf(text + len, cap - len, "t/%d\n", i);
        struct km_dict d;
        cr_assert_eq(km_dict_parse(&d, "dict.txt", text, len, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(d.n, KM_DICT_MAX);
        km_dict_deinit(&d);
        len += (size_t)snprintf(text + len, cap - len, "# a comment\nt/last\n");
        refused(text, len, "dict.txt:4098: more than 4096 topics");
        free(text);
}

/* The fingerprint is the contract operators compare between two ends: fixed values. */
Test(dict, fingerprint_stable)
{
        static const char *const three[] = { "alert/gas/zone3", "cmd/evacuate", "sensors/water/level" };
        cr_assert_eq(km_dict_fingerprint(three, 3), 0xdaddc5c4);
        cr_assert_eq(km_dict_fingerprint(three, 2), 0x2e3e3030);
        cr_assert_eq(km_dict_fingerprint(three, 0), 0);

        /* comments, blank lines and CRLF do not change it; order and content do */
        struct km_dict a, b;
        cr_assert_eq(parse(&a, "alert/gas/zone3\ncmd/evacuate\nsensors/water/level\n"), 0);
        cr_assert_eq(parse(&b, "# v2\r\nalert/gas/zone3\r\n\r\ncmd/evacuate\r\n# x\nsensors/water/level"), 0);
        cr_assert_eq(a.fingerprint, 0xdaddc5c4);
        cr_assert_eq(b.fingerprint, a.fingerprint);
        km_dict_deinit(&b);
        cr_assert_eq(parse(&b, "cmd/evacuate\nalert/gas/zone3\nsensors/water/level\n"), 0);
        cr_assert_neq(b.fingerprint, a.fingerprint);
        km_dict_deinit(&b);
        /* not a concatenation: "a/b" + "c" differs from "a" + "b/c" */
        static const char *const x[] = { "a/b", "c" }, *const y[] = { "a", "b/c" };
        cr_assert_neq(km_dict_fingerprint(x, 2), km_dict_fingerprint(y, 2));
        km_dict_deinit(&a);
}

static char tmpdir[64];

static void write_file(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f, "%s", path);
        fputs(text, f);
        fclose(f);
}

static void mk_tmpdir(void)
{
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/km-dict-XXXXXX");
        cr_assert_not_null(mkdtemp(tmpdir));
}

Test(dict, load_relative_to_the_config)
{
        char path[128], conf[128], want[300];
        struct km_dict d;
        mk_tmpdir();
        snprintf(path, sizeof(path), "%s/topics.txt", tmpdir);
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", tmpdir);
        write_file(path, "alert/gas/zone3\ncmd/evacuate\nsensors/water/level\n");
        cr_assert_eq(km_dict_load(&d, path, NULL, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(d.n, 3);
        cr_assert_eq(d.fingerprint, 0xdaddc5c4);
        km_dict_deinit(&d);
        /* a relative name is taken from the config's directory */
        cr_assert_eq(km_dict_load(&d, "topics.txt", conf, err, sizeof(err)), 0, "%s", err);
        cr_assert_str_eq(d.path, path);
        km_dict_deinit(&d);
        /* errors name the file as opened */
        cr_assert_eq(km_dict_load(&d, "missing.txt", conf, err, sizeof(err)), -ENOENT);
        snprintf(want, sizeof(want), "%s/missing.txt: No such file or directory", tmpdir);
        cr_assert_str_eq(err, want);
        write_file(path, "a\na\n");
        cr_assert_eq(km_dict_load(&d, "topics.txt", conf, err, sizeof(err)), -EINVAL);
        snprintf(want, sizeof(want), "%s:2: 'a' again (first on line 1): an index names one topic", path);
        cr_assert_str_eq(err, want);
        cr_assert_eq(km_dict_load(&d, "", conf, err, sizeof(err)), -EINVAL);
        cr_assert_str_eq(err, "no file named");
        unlink(path);
        rmdir(tmpdir);
}

/* ---- frames with a dictionary ---- */

struct sink {
        char topic[8][KM_FRAME_TOPIC_MAX + 1];
        uint32_t idx[8];
        char payload[8][64];
        int n;
};

static int sink_fn(void *ctx, const struct km_frame_msg *m)
{
        struct sink *s = ctx;
        cr_assert_lt(s->n, 8);
        snprintf(s->topic[s->n], sizeof(s->topic[0]), "%s", m->topic ? m->topic : "(null)");
        s->idx[s->n] = m->topic_idx;
        snprintf(s->payload[s->n], sizeof(s->payload[0]), "%.*s", (int)m->len, (const char *)m->payload);
        s->n++;
        return 0;
}

/* One message alone in a frame of at most mtu bytes, as the daemon frames it (version 2,
 * its origin and ids); returns the frame's length. */
static int first_frame(const struct km_frame_dict *dict, const char *topic, const char *payload, size_t mtu,
                       uint8_t *out)
{
        struct km_frame_tx tx;
        struct km_frame_tx_cfg c = { .origin = ORIGIN, .first_seq = 7, .mtu_max = KM_FRAME_MTU_MAX, .dict = dict,
                                     .version = 2 };
        struct km_frame_put put;
        struct km_frame_msg m = { .id = FIRST_ID, .topic = topic, .payload = (const uint8_t *)payload,
                                  .len = strlen(payload), .created_ms = NOW_MS, .cls = 0, .qos = 1 };
        cr_assert_eq(km_frame_tx_init(&tx, &c), 0);
        int n = km_frame_tx_encode(&tx, &m, 1, mtu, NULL, NOW_MS, out, &put);
        cr_assert_gt(n, 0);
        cr_assert_eq(put.n_full, 1, "the message fits one frame");
        km_frame_tx_deinit(&tx);
        return n;
}

static void decode(const struct km_frame_dict *dict, const uint8_t *f, int n, km_frame_deliver_fn fn, void *ctx,
                   struct km_frame_rx *rx)
{
        struct km_frame_rx_cfg rc = { .dict = dict };
        cr_assert_eq(km_frame_rx_init(rx, &rc), 0);
        cr_assert_eq(km_frame_rx_input(rx, f, (size_t)n, NOW_MS, fn, ctx, NULL), 0);
}

Test(dict, frames_by_index_and_literal_fallback)
{
        struct km_dict d;
        struct km_frame_rx rx;
        uint8_t f[KM_FRAME_MTU_MAX];
        cr_assert_eq(parse(&d, "alert/gas/zone3\ncmd/evacuate\nsensors/water/level\n"), 0);

        /* in the dictionary: goes as index 2, arrives as the topic */
        struct sink s = { 0 };
        int n = first_frame(&d.frame, "sensors/water/level", "{\"m\":3.2}", 77, f);
        decode(&d.frame, f, n, sink_fn, &s, &rx);
        cr_assert_eq(s.n, 1);
        cr_assert_str_eq(s.topic[0], "sensors/water/level");
        cr_assert_eq(s.idx[0], 2);
        cr_assert_str_eq(s.payload[0], "{\"m\":3.2}");
        km_frame_rx_deinit(&rx);

        /* not in it: the encoder writes the topic literally, any receiver takes it */
        memset(&s, 0, sizeof(s));
        n = first_frame(&d.frame, "sensors/water/flow", "{\"q\":1}", 77, f);
        decode(&d.frame, f, n, sink_fn, &s, &rx);
        cr_assert_str_eq(s.topic[0], "sensors/water/flow");
        cr_assert_eq(s.idx[0], UINT32_MAX);
        cr_assert_eq(rx.unknown_topics, 0);
        km_frame_rx_deinit(&rx);
        memset(&s, 0, sizeof(s));
        decode(NULL, f, n, sink_fn, &s, &rx);
        cr_assert_str_eq(s.topic[0], "sensors/water/flow");
        km_frame_rx_deinit(&rx);
        km_dict_deinit(&d);
}

struct inner {
        struct sink s;
        int refuse;
};

static int inner_fn(void *ctx, const struct km_frame_msg *m)
{
        struct inner *x = ctx;
        if (x->refuse)
                return -ENOSPC;
        return sink_fn(&x->s, m);
}

/* The sender's list is longer (appended there first): the message is not lost. */
Test(dict, fallback_topic_for_an_index_beyond_ours)
{
        struct km_dict longer, shorter;
        struct km_frame_rx rx;
        uint8_t f[KM_FRAME_MTU_MAX];
        cr_assert_eq(parse(&longer, "alert/gas/zone3\ncmd/evacuate\nsensors/water/level\n"), 0);
        cr_assert_eq(parse(&shorter, "alert/gas/zone3\ncmd/evacuate\n"), 0);
        struct km_strv peers = { (char *[]){ "south", "north" }, 2 };
        struct inner x = { 0 };
        struct km_dict_fallback fb = { .next = inner_fn, .ctx = &x, .link = "sat", .dict = &shorter, .peers = &peers };

        int n = first_frame(&longer.frame, "sensors/water/level", "L1", 77, f);
        /* a refusal is passed back and not counted: the frame comes again */
        x.refuse = 1;
        struct km_frame_rx_cfg rc = { .dict = &shorter.frame };
        cr_assert_eq(km_frame_rx_init(&rx, &rc), 0);
        cr_assert_eq(km_frame_rx_input(&rx, f, (size_t)n, NOW_MS, km_dict_fallback_deliver, &fb, NULL), -ENOSPC);
        cr_assert_eq(fb.unknown, 0);
        cr_assert_eq(x.s.n, 0);
        x.refuse = 0;
        cr_assert_eq(km_frame_rx_input(&rx, f, (size_t)n, NOW_MS, km_dict_fallback_deliver, &fb, NULL), 0);
        cr_assert_eq(x.s.n, 1);
        cr_assert_str_eq(x.s.topic[0], "unknown-topic/2");
        cr_assert_eq(x.s.idx[0], 2);
        cr_assert_str_eq(x.s.payload[0], "L1");
        cr_assert_eq(fb.unknown, 1);
        cr_assert_geq(rx.unknown_topics, 1);
        km_frame_rx_deinit(&rx);

        /* known topics pass through unchanged, with or without a dictionary here */
        memset(&x, 0, sizeof(x));
        n = first_frame(&longer.frame, "cmd/evacuate", "go", 77, f);
        decode(&shorter.frame, f, n, km_dict_fallback_deliver, &fb, &rx);
        cr_assert_str_eq(x.s.topic[0], "cmd/evacuate");
        cr_assert_eq(fb.unknown, 1);
        km_frame_rx_deinit(&rx);
        memset(&x, 0, sizeof(x));
        fb.dict = NULL;
        decode(NULL, f, n, km_dict_fallback_deliver, &fb, &rx);
        cr_assert_str_eq(x.s.topic[0], "unknown-topic/1");
        cr_assert_eq(fb.unknown, 2);
        km_frame_rx_deinit(&rx);
        km_dict_deinit(&longer);
        km_dict_deinit(&shorter);
}

/* What a dictionary saves: the first message of a topic on a 77-byte BeiDou frame
 * (later ones name their topic's slot, version 2, with or without a dictionary). */
Test(dict, bytes_of_a_first_message_at_mtu_77)
{
        static const char *const topics[] = { "alert/gas/zone3", "sensors/water/level", "pos/uav-07",
                                              "cmd/evacuate/zone3" };
        static const char *const payloads[] = { "{\"ch4\":1.2}", "{\"m\":3.2}", "{\"lat\":30.123,\"lon\":109.5}",
                                                "{\"go\":1}" };
        struct km_frame_dict d = { topics, 4 };
        uint8_t f[KM_FRAME_MTU_MAX];
        for (int i = 0; i < 4; i++) {
                int lit = first_frame(NULL, topics[i], payloads[i], 77, f);
                int idx = first_frame(&d, topics[i], payloads[i], 77, f);
                /* an index below 128 is one byte; a literal topic a length byte and its text */
                cr_assert_eq(lit - idx, (int)strlen(topics[i]));
                fprintf(stderr, "# first message on %-20s %2zu B payload: %2d B frame literal, %2d B with a dictionary (-%d B)\n",
                        topics[i], strlen(payloads[i]), lit, idx, lit - idx);
                cr_log_info("first message on %s: %d B literal, %d B with a dictionary", topics[i], lit, idx);
        }
}
