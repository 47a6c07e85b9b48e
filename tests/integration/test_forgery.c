/* SPDX-License-Identifier: MIT */
/* Forged and invalid frames on a narrow link (issue 12): refused with a counter, nothing published, genuine traffic flowing. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "gateway/auth.h"
#include "gateway/frame.h"
#include "harness.h"

/*
 * The adversary of issue 12: someone who knows the documented wire format and can put
 * datagrams on the air with the peer's address (the sim link's only filter; on a
 * BeiDou or satellite link, anyone with a terminal). Frames are built here with the
 * core's own encoder, as that adversary would build them from gateway/frame.c's
 * comment, and injected through the UDP relay between the two kuimen while the genuine
 * base sends its own traffic through the same relay.
 */

/* ---- helpers ----------------------------------------------------------------------- */

/* kuimenctl's reply to args on sock, parsed. */
static cJSON *ctl_json(const char *sock, const char *args)
{
        char cmd[800], out[1 << 15];
        snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' %s 2>&1", h_ctl_path(), sock, args);
        FILE *f = popen(cmd, "r");
        cr_assert(f);
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        pclose(f);
        cJSON *j = cJSON_Parse(out);
        cr_assert(j, "kuimenctl %s: %s", args, out);
        return j;
}

/* links.0.refused.<reason> of a `links --json` reply. */
static double refused(const cJSON *j, const char *reason)
{
        const cJSON *l = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "links"), 0);
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(l, "refused");
        cr_assert(cJSON_IsObject(r), "links.0.refused missing");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, reason);
        cr_assert(cJSON_IsNumber(v), "links.0.refused.%s missing", reason);
        return v->valuedouble;
}

/* One data frame from node `from` (its first, with SYN) holding msgs[0..n) whole, as
 * the documented format has it. Returns its length. */
static size_t forge(uint8_t *out, size_t mtu, const char *from, const char *const *topics,
                    const char *const *payloads, size_t n)
{
        struct km_frame_tx tx;
        struct km_frame_tx_cfg cfg = { .origin = km_frame_node_id(from), .first_seq = (uint16_t)(h_now_ms() & 0xffff),
                                       .window = 8, .mtu_max = mtu, .version = 2, .no_compact_json = true };
        cr_assert_eq(km_frame_tx_init(&tx, &cfg), 0);
        struct km_frame_msg m[16];
        cr_assert(n <= 16);
        for (size_t i = 0; i < n; i++)
                m[i] = (struct km_frame_msg){ .id = 1000 + i, .topic = topics[i], .payload = (const uint8_t *)payloads[i],
                                              .len = strlen(payloads[i]), .created_ms = h_now_ms(), .cls = 0, .qos = 1 };
        struct km_frame_put put;
        int len = km_frame_tx_encode(&tx, m, n, mtu, NULL, h_now_ms(), out, &put);
        cr_assert_gt(len, 0, "encode: %d", len);
        cr_assert_eq(put.n_full, n, "every forged message fits one frame");
        km_frame_tx_deinit(&tx);
        return (size_t)len;
}

/* Messages r recorded whose topic starts with pfx and (when payload is set) whose
 * payload is that. */
static size_t rec_count(struct h_rec *r, const char *pfx, const char *payload)
{
        size_t k = 0;
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n; i++)
                k += strncmp(r->m[i].topic, pfx, strlen(pfx)) == 0 && (!payload || strcmp(r->m[i].payload, payload) == 0);
        pthread_mutex_unlock(&r->mu);
        return k;
}

static size_t rec_wait(struct h_rec *r, const char *pfx, const char *payload, size_t want, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        size_t k;
        while ((k = rec_count(r, pfx, payload)) < want && h_now_ms() < until)
                h_sleep_ms(50);
        return k;
}

struct fpair {
        struct h_pair k;
        char bsock[300], csock[300];
        struct h_pub pub; /* the base's terminals */
};

static void fpair_start_ex(struct fpair *p, const char *tag, const char *base_extra, const char *center_extra,
                           const char *peers, void (*before)(struct fpair *))
{
        char bl[400], ce[800];
        memset(p, 0, sizeof(*p));
        h_pair_init(&p->k, tag);
        snprintf(p->bsock, sizeof(p->bsock), "%s/base.sock", p->k.dir);
        snprintf(p->csock, sizeof(p->csock), "%s/center.sock", p->k.dir);
        snprintf(bl, sizeof(bl), "[control]\nsocket = %s", p->bsock);
        snprintf(ce, sizeof(ce), "%s\n[control]\nsocket = %s", center_extra ? center_extra : "", p->csock);
        struct h_pair_conf conf = { .link_keys = "mtu = 400\nrto = 1s", .base_node = "link_status = no",
                                    .base_local = bl, .base_extra = base_extra, .center_extra = ce,
                                    .peers = peers, .relay = true };
        if (before)
                before(p);
        h_pair_start(&p->k, &conf);
        cr_assert(h_log_wait(&p->k.ctr, "control: listening on", 10000));
        cr_assert(h_log_wait(&p->k.base, "control: listening on", 10000));
        h_pub_start(&p->pub, p->k.local.port, "terminals");
}

static void fpair_start(struct fpair *p, const char *tag, const char *base_extra)
{
        /* Two peers: south's frames are forged. A link with two peers sends no commands
         * (a command frame names no base). */
        fpair_start_ex(p, tag, base_extra, "[link sat]\ncommands = no", "north, south", NULL);
}

static void fpair_stop(struct fpair *p)
{
        h_pub_stop(&p->pub);
        h_pair_stop(&p->k);
        cr_expect(WIFEXITED(p->k.base_exit) && WEXITSTATUS(p->k.base_exit) == 0, "base exits 0");
        cr_expect(WIFEXITED(p->k.ctr_exit) && WEXITSTATUS(p->k.ctr_exit) == 0, "center exits 0");
        h_cleanup(p->k.dir);
}

/* The genuine base's alerts A0..A<n-1>, published at its local broker. */
static void genuine_alerts(struct fpair *p, int n)
{
        for (int i = 0; i < n; i++) {
                char pl[16];
                snprintf(pl, sizeof(pl), "A%d", i);
                h_pub_send(&p->pub, "alert/gas", pl);
        }
        cr_assert(h_pub_flush(&p->pub, 5000));
}

/* Messages refused on arrival are held in the spool's dead letters (kuimenctl spool
 * dead), each saying where it came from and why, and stay held: they can be dropped,
 * never queued again. want_topic is one held topic as stored (escaped). */
static void held_refused(const char *sock, double want, const char *from, const char *want_topic)
{
        cJSON *j = ctl_json(sock, "spool dead --json");
        const cJSON *held = cJSON_GetObjectItemCaseSensitive(j, "held");
        cr_assert(cJSON_IsNumber(held) && held->valuedouble == want, "held %g, want %g",
                  cJSON_IsNumber(held) ? held->valuedouble : -1, want);
        const cJSON *m;
        char tag[64];
        snprintf(tag, sizeof(tag), " from %s: ", from);
        int seen = 0;
        cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(j, "dead")) {
                const char *why = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "why"));
                const char *topic = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "topic"));
                cr_assert(why && strncmp(why, "refused on arrival over ", 24) == 0 && strstr(why, tag), "why: %s", why);
                seen += topic && strcmp(topic, want_topic) == 0;
        }
        cr_assert_eq(seen, 1, "'%s' held once", want_topic);
        cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "dead"), 0);
        char args[64];
        snprintf(args, sizeof(args), "spool retry %.0f --json",
                 cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(first, "id")));
        cJSON_Delete(j);
        j = ctl_json(sock, "spool retry all --json");
        cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "retried")), 0, "none goes back");
        cJSON_Delete(j);
        j = ctl_json(sock, args);
        const char *err = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "error"));
        cr_assert(err && strstr(err, "refused on arrival"), "retry of one: %s", err ? err : "(no error)");
        cJSON_Delete(j);
        j = ctl_json(sock, "spool drop all --json");
        cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "dropped")), want);
        cJSON_Delete(j);
}

/* ---- the center end ----------------------------------------------------------------- */

/* Frames in a peer's name (south, which runs nowhere) whose topics no broker takes or
 * that would command a base through the center, and a frame from an origin outside
 * peers: each refused by reason, the good message behind them published, the genuine
 * base's ten alerts all published, and nothing else. */
Test(forgery, invalid_topics_at_the_center, .timeout = 120)
{
        struct fpair p;
        struct h_rec rec;
        uint8_t f[400];
        fpair_start(&p, "forge-center", NULL);
        h_rec_start(&rec, p.k.center.port, "center-rec", "kuimen/#");

        genuine_alerts(&p, 5);
        const char *t1[] = { "alert/+", "alert/#", "cmd/u1/evacuate", "sensors/\x01x", "sensors/\xff", "sensors/ok" };
        const char *p1[] = { "{\"ppm\":1}", "{\"ppm\":2}", "{\"order\":\"EVACUATE NOW\"}", "x", "y", "S-OK" };
        size_t n = forge(f, 400, "south", t1, p1, 6);
        cr_assert_eq(h_relay_to_center(&p.k.relay, f, n), (ssize_t)n);
        const char *t2[] = { "alert/gas" };
        const char *p2[] = { "GHOST" };
        n = forge(f, 400, "ghost", t2, p2, 1);
        cr_assert_eq(h_relay_to_center(&p.k.relay, f, n), (ssize_t)n);
        genuine_alerts(&p, 5); /* A0..A4 again: new ids, published again */

        cr_assert_eq(rec_wait(&rec, "kuimen/north/alert/gas", NULL, 10, 30000), 10, "the genuine alerts flow");
        cr_assert_eq(rec_wait(&rec, "kuimen/south/sensors/ok", "S-OK", 1, 5000), 1, "the good message behind the bad ones");
        h_sleep_ms(1000);
        cr_assert_eq(rec_count(&rec, "kuimen/north/alert/gas", NULL), 10);
        cr_assert_eq(rec_count(&rec, "kuimen/south/", NULL), 1, "only sensors/ok from the forged frame");
        cr_assert_eq(rec_count(&rec, "kuimen/ghost/", NULL) + rec_count(&rec, "kuimen/node-", NULL), 0);
        cr_assert_eq(rec_count(&rec, "kuimen/north/cmd/", NULL) + rec_count(&rec, "kuimen/south/cmd/", NULL), 0);

        cJSON *j = ctl_json(p.csock, "links --json");
        cr_assert_eq(refused(j, "wildcard"), 2);
        cr_assert_eq(refused(j, "direction"), 1);
        cr_assert_eq(refused(j, "topic"), 2);
        cr_assert_eq(refused(j, "origin"), 1);
        cr_assert_eq(refused(j, "size"), 0);
        cJSON_Delete(j);
        cr_assert_eq(h_log_count(&p.k.ctr, "not one of peers: dropped"), 1);
        cr_assert_eq(h_log_count(&p.k.ctr, "refused: wildcard"), 1, "the first of a reason logged, then quiet for 10 s");
        held_refused(p.csock, 5, "south", "sensors/\\x01x");

        h_rec_stop(&rec);
        h_rec_free(&rec);
        fpair_stop(&p);
}

/* ---- the base end -------------------------------------------------------------------- */

/* Frames in the center's name whose topics would close the base's local connection
 * (cmd/#) or are no command, and a frame from an origin that is not the base's center
 * (peers = county on the base): refused by reason; the one valid command behind them is
 * published once, and the base's own alerts keep reaching the center. */
Test(forgery, invalid_commands_at_the_base, .timeout = 120)
{
        struct fpair p;
        struct h_rec local, ctr;
        uint8_t f[400];
        fpair_start(&p, "forge-base", "peers = county");
        h_rec_start(&local, p.k.local.port, "terminal-rec", "cmd/#");
        h_rec_start(&ctr, p.k.center.port, "center-rec", "kuimen/north/alert/#");

        genuine_alerts(&p, 5);
        const char *t1[] = { "cmd/#", "cmd/+/evacuate", "alert/gas", "cmd/\xc0\xaf", "cmd/u1/ok" };
        const char *p1[] = { "{\"order\":\"EVACUATE NOW\"}", "{\"order\":\"EVACUATE NOW\"}", "x", "y", "C-OK" };
        size_t n = forge(f, 400, "county", t1, p1, 5);
        cr_assert_eq(h_relay_to_base(&p.k.relay, f, n), (ssize_t)n);
        const char *t2[] = { "cmd/u1/ghost" };
        const char *p2[] = { "GHOST" };
        n = forge(f, 400, "ghost", t2, p2, 1);
        cr_assert_eq(h_relay_to_base(&p.k.relay, f, n), (ssize_t)n);
        genuine_alerts(&p, 5);

        cr_assert_eq(rec_wait(&ctr, "kuimen/north/alert/gas", NULL, 10, 30000), 10, "the base's alerts flow");
        cr_assert_eq(rec_wait(&local, "cmd/u1/ok", "C-OK", 1, 5000), 1);
        h_sleep_ms(1000);
        cr_assert_eq(rec_count(&local, "", NULL), 1, "cmd/u1/ok only");
        cr_assert_eq(h_log_count(&p.k.base, "ingest: connected"), 1, "the local connection never dropped");

        cJSON *j = ctl_json(p.bsock, "links --json");
        cr_assert_eq(refused(j, "wildcard"), 2);
        cr_assert_eq(refused(j, "direction"), 1);
        cr_assert_eq(refused(j, "topic"), 1);
        cr_assert_eq(refused(j, "origin"), 1);
        cJSON_Delete(j);
        held_refused(p.bsock, 4, "county", "cmd/+/evacuate");

        h_rec_stop(&local);
        h_rec_free(&local);
        h_rec_stop(&ctr);
        h_rec_free(&ctr);
        fpair_stop(&p);
}

/* ---- authenticated links ------------------------------------------------------------- */

#define KEY_A "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
#define KEY_B "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4A="

static void write_key(const struct fpair *p, const char *name, const char *text, mode_t mode)
{
        char path[400];
        snprintf(path, sizeof(path), "%s/%s", p->k.dir, name);
        h_write_text(path, text);
        cr_assert_eq(chmod(path, mode), 0);
}

static void keys_same(struct fpair *p)
{
        write_key(p, "base.key", "# north's key for the county center\n" KEY_A "\n", 0600);
        write_key(p, "center.key", "north = " KEY_A "\n", 0600);
}

/* The center's link: one peer (it sends commands) and the key file. */
#define CENTER_AUTH "key_file = center.key"
#define BASE_AUTH "key_file = base.key"

/* links.0.auth.<field> of a `links --json` reply. */
static double auth_num(const cJSON *j, const char *field)
{
        const cJSON *l = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "links"), 0);
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(l, "auth");
        cr_assert(cJSON_IsObject(a), "links.0.auth missing");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(a, field);
        cr_assert(cJSON_IsNumber(v), "links.0.auth.%s missing", field);
        return v->valuedouble;
}

/* links.0.auth.peers.0.<field>. */
static const char *auth_peer(const cJSON *j, const char *field)
{
        const cJSON *l = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "links"), 0);
        const cJSON *pe = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(l, "auth"), "peers"), 0);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(pe, field);
        cr_assert(cJSON_IsString(v), "links.0.auth.peers.0.%s missing", field);
        return v->valuestring;
}

static double ctl_num(const char *sock, double (*f)(const cJSON *, const char *), const char *field)
{
        cJSON *j = ctl_json(sock, "links --json");
        double v = f(j, field);
        cJSON_Delete(j);
        return v;
}

static double link_num(const char *sock, const char *field)
{
        cJSON *j = ctl_json(sock, "links --json");
        const cJSON *l = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "links"), 0);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(l, field);
        cr_assert(cJSON_IsNumber(v), "links.0.%s missing", field);
        double d = v->valuedouble;
        cJSON_Delete(j);
        return d;
}

/* Waits until f(sock, field) reaches want; returns the last value. */
static double auth_wait(const char *sock, const char *field, double want, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        double v;
        while ((v = ctl_num(sock, auth_num, field)) < want && h_now_ms() < until)
                h_sleep_ms(100);
        return v;
}

/* A frame from `from` sealed under a key the forger made up. */
static size_t forge_sealed(uint8_t *out, const char *from, enum km_auth_dir dir, const char *topic, const char *payload)
{
        uint8_t plain[400], secret[32];
        struct km_auth a;
        struct km_auth_key k;
        for (int i = 0; i < 32; i++)
                secret[i] = (uint8_t)(0xa5 ^ i);
        km_auth_key_from_secret(&k, secret);
        const char *t[] = { topic }, *pl[] = { payload };
        size_t n = forge(plain, 380, from, t, pl, 1);
        cr_assert_eq(km_auth_init(&a, 8, dir, km_frame_node_id(from), NULL), 0);
        struct km_auth_peer *pe = km_auth_peer_add(&a, "*", &k, NULL);
        int s = km_auth_seal(&a, pe, plain, n, out, 400);
        cr_assert_gt(s, 0);
        km_auth_deinit(&a);
        return (size_t)s;
}

/* A plain ack frame from the center saying it holds everything of north's up to cum
 * and the 64 frames after it: what released 203 spooled messages on main. */
static size_t forge_ack(uint8_t *out, uint16_t cum)
{
        struct km_frame_ack a = { .origin = km_frame_node_id("north"), .cum = cum, .bitmap = ~0ULL, .version = 2 };
        int n = km_frame_ack_encode(&a, km_frame_node_id("county"), out, KM_FRAME_ACK_MAX);
        cr_assert_gt(n, 0);
        return (size_t)n;
}

/* An authenticated pair under attack: unauthenticated data, SYN, ack and command
 * frames, frames sealed under a made-up key, recorded genuine frames replayed both
 * ways, a recorded frame with one bit flipped in its tag and one in its body. Each is
 * refused with its counter, nothing forged is published, the forged acks release
 * nothing from the base's spool while the path is cut, and the genuine alerts and a
 * genuine command flow, each exactly once. */
Test(forgery, authenticated_link_refuses_forgeries, .timeout = 180)
{
        struct fpair p;
        struct h_rec rec, local;
        struct h_pub cpub;
        uint8_t f[400];
        size_t n;
        fpair_start_ex(&p, "forge-auth", BASE_AUTH, CENTER_AUTH, "north", keys_same);
        struct h_relay *r = &p.k.relay;
        h_rec_start(&rec, p.k.center.port, "center-rec", "kuimen/#");
        h_rec_start(&local, p.k.local.port, "terminal-rec", "cmd/#");
        h_pub_start(&cpub, p.k.center.port, "operator");

        genuine_alerts(&p, 5);
        cr_assert_eq(rec_wait(&rec, "kuimen/north/alert/gas", NULL, 5, 30000), 5);
        h_pub_send(&cpub, "kuimen/north/cmd/u1/go", "GO");
        cr_assert(h_pub_flush(&cpub, 5000));
        cr_assert_eq(rec_wait(&local, "cmd/u1/go", "GO", 1, 30000), 1, "a genuine command crosses");
        cr_assert(h_log_wait(&p.k.base, "'cmd/u1/go' (2 bytes) from narrow link sat, authenticated, key id ", 5000));
        h_sleep_ms(1500); /* the last acks settle */

        /* unauthenticated: a data frame with SYN under north's name, a command and an
         * ack in the center's name */
        const char *t1[] = { "alert/gas" }, *p1[] = { "FORGED-DATA" };
        n = forge(f, 380, "north", t1, p1, 1);
        cr_assert_eq(h_relay_to_center(r, f, n), (ssize_t)n);
        const char *t2[] = { "cmd/u1/evacuate" }, *p2[] = { "FORGED-CMD" };
        n = forge(f, 380, "county", t2, p2, 1);
        cr_assert_eq(h_relay_to_base(r, f, n), (ssize_t)n);
        n = forge_ack(f, 1);
        cr_assert_eq(h_relay_to_base(r, f, n), (ssize_t)n);
        /* sealed under a made-up key */
        n = forge_sealed(f, "north", KM_AUTH_UP, "alert/gas", "FORGED-SEALED");
        cr_assert_eq(h_relay_to_center(r, f, n), (ssize_t)n);
        n = forge_sealed(f, "county", KM_AUTH_DOWN, "cmd/u1/evacuate", "FORGED-SEALED-CMD");
        cr_assert_eq(h_relay_to_base(r, f, n), (ssize_t)n);

        /* the recorded session replayed both ways; one bit flipped in a tag, one in a body */
        pthread_mutex_lock(&r->mu);
        size_t nup = r->n_kept_up, ndown = r->n_kept_down;
        pthread_mutex_unlock(&r->mu);
        cr_assert_geq(nup, 2);
        cr_assert_geq(ndown, 2);
        for (size_t i = 0; i < nup; i++)
                cr_assert_eq(h_relay_to_center(r, r->kept_up[i], r->kept_up_len[i]), (ssize_t)r->kept_up_len[i]);
        for (size_t i = 0; i < ndown; i++)
                cr_assert_eq(h_relay_to_base(r, r->kept_down[i], r->kept_down_len[i]), (ssize_t)r->kept_down_len[i]);
        memcpy(f, r->kept_up[0], r->kept_up_len[0]);
        f[r->kept_up_len[0] - 1] ^= 0x01;
        cr_assert_eq(h_relay_to_center(r, f, r->kept_up_len[0]), (ssize_t)r->kept_up_len[0]);
        memcpy(f, r->kept_up[0], r->kept_up_len[0]);
        f[8] ^= 0x10;
        cr_assert_eq(h_relay_to_center(r, f, r->kept_up_len[0]), (ssize_t)r->kept_up_len[0]);

        cr_assert_eq(auth_wait(p.csock, "auth_failures", 4, 5000), 4, "center: plain, made-up key, 2 bit flips");
        cr_assert_eq(auth_wait(p.csock, "replays", (double)nup, 5000), (double)nup);
        cr_assert_eq(auth_wait(p.bsock, "auth_failures", 3, 5000), 3, "base: plain command, plain ack, made-up key");
        cr_assert_eq(auth_wait(p.bsock, "replays", (double)ndown, 5000), (double)ndown);

        /* forged acks while the path is cut release nothing */
        double acked = link_num(p.bsock, "acked");
        atomic_store(&r->cut, true);
        genuine_alerts(&p, 5);
        h_sleep_ms(500);
        for (int c = 0; c < 8; c++) {
                n = forge_ack(f, (uint16_t)(c * 8192));
                cr_assert_eq(h_relay_to_base(r, f, n), (ssize_t)n);
        }
        cr_assert_eq(auth_wait(p.bsock, "auth_failures", 11, 5000), 11);
        h_sleep_ms(500);
        cr_assert_eq(link_num(p.bsock, "acked"), acked, "no forged ack released a message");
        atomic_store(&r->cut, false);
        cr_assert_eq(rec_wait(&rec, "kuimen/north/alert/gas", NULL, 10, 30000), 10, "all of them once the path is back");

        h_sleep_ms(1000);
        cr_assert_eq(rec_count(&rec, "kuimen/north/alert/gas", NULL), 10, "each genuine alert once");
        cr_assert_eq(rec_count(&rec, "kuimen/north/alert/gas", "FORGED-DATA") + rec_count(&rec, "kuimen/north/alert/gas", "FORGED-SEALED"), 0);
        cr_assert_eq(rec_count(&local, "", NULL), 1, "only the genuine command, once");
        cJSON *j = ctl_json(p.csock, "links --json");
        cr_assert_str_eq(auth_peer(j, "name"), "north");
        cr_assert_str_eq(auth_peer(j, "key"), "key_file");
        cJSON_Delete(j);
        cr_assert_eq(h_log_count(&p.k.ctr, "frame claiming origin north dropped: not sealed"), 1,
                     "the first failure logged with its claimed origin, the rest within 10 s counted only");

        h_pub_stop(&cpub);
        h_rec_stop(&rec);
        h_rec_free(&rec);
        h_rec_stop(&local);
        h_rec_free(&local);
        fpair_stop(&p);
}

/* "An hour later": a session recorded on the air and replayed after the center
 * restarted is refused (the center saved its counters: at its stop, or, killed, within
 * a second of taking them), and genuine traffic still flows afterwards. */
static void replay_after_restart(int sig)
{
        struct fpair p;
        struct h_rec rec;
        fpair_start_ex(&p, "forge-restart", BASE_AUTH, CENTER_AUTH, "north", keys_same);
        struct h_relay *r = &p.k.relay;
        h_rec_start(&rec, p.k.center.port, "center-rec", "kuimen/north/alert/#");
        genuine_alerts(&p, 5);
        cr_assert_eq(rec_wait(&rec, "kuimen/north/alert/gas", NULL, 5, 30000), 5);
        h_sleep_ms(1500);
        pthread_mutex_lock(&r->mu);
        size_t nup = r->n_kept_up;
        pthread_mutex_unlock(&r->mu);

        int st = h_stop(&p.k.ctr, sig);
        if (sig == SIGTERM)
                cr_assert_eq(st & 0xffff, 0, "the center stops cleanly");
        const char *cargs[] = { "--config", p.k.cconf, NULL };
        int opened = h_log_count(&p.k.ctr, "link: sat: sim: mtu ");
        h_kuimen_start(&p.k.ctr, p.k.clog, cargs);
        int64_t until = h_now_ms() + 10000;
        while (h_log_count(&p.k.ctr, "link: sat: sim: mtu ") <= opened && h_now_ms() < until)
                h_sleep_ms(50);
        h_sleep_ms(500);
        for (size_t i = 0; i < nup; i++)
                cr_assert_eq(h_relay_to_center(r, r->kept_up[i], r->kept_up_len[i]), (ssize_t)r->kept_up_len[i]);
        cr_assert_eq(auth_wait(p.csock, "replays", (double)nup, 10000), (double)nup, "every recorded frame refused");
        cr_assert_eq(ctl_num(p.csock, auth_num, "frames_authenticated"), 0, "none taken");
        genuine_alerts(&p, 5);
        cr_assert_eq(rec_wait(&rec, "kuimen/north/alert/gas", NULL, 10, 30000), 10);
        h_sleep_ms(1000);
        cr_assert_eq(rec_count(&rec, "kuimen/north/alert/gas", NULL), 10, "nothing published twice");
        h_rec_stop(&rec);
        h_rec_free(&rec);
        fpair_stop(&p);
}

Test(forgery, replay_after_center_restart, .timeout = 180) { replay_after_restart(SIGTERM); }
Test(forgery, replay_after_center_crash, .timeout = 180) { replay_after_restart(SIGKILL); }

static void keys_rotating(struct fpair *p)
{
        /* step 2 of a rotation: the center still sends under A and takes B; the base
         * already sends under B and takes A */
        write_key(p, "center.key", "north = " KEY_A "\n", 0600);
        write_key(p, "center.next", "north = " KEY_B "\n", 0600);
        write_key(p, "base.key", KEY_B "\n", 0600);
        write_key(p, "base.next", KEY_A "\n", 0600);
}

/* A rotation with both keys live: each end sends under its key_file and takes either;
 * the status says which key each peer uses. */
Test(forgery, rotation_both_keys_live, .timeout = 120)
{
        struct fpair p;
        struct h_rec rec;
        fpair_start_ex(&p, "forge-rotate", BASE_AUTH "\nkey_file_next = base.next",
                       CENTER_AUTH "\nkey_file_next = center.next", "north", keys_rotating);
        h_rec_start(&rec, p.k.center.port, "center-rec", "kuimen/north/alert/#");
        genuine_alerts(&p, 5);
        cr_assert_eq(rec_wait(&rec, "kuimen/north/alert/gas", NULL, 5, 30000), 5);
        h_sleep_ms(1500);
        cJSON *j = ctl_json(p.csock, "links --json");
        cr_assert_str_eq(auth_peer(j, "key"), "key_file_next", "north sends under the center's next key");
        cr_assert_eq(auth_num(j, "auth_failures"), 0);
        cJSON_Delete(j);
        j = ctl_json(p.bsock, "links --json");
        cr_assert_str_eq(auth_peer(j, "name"), "center");
        cr_assert_str_eq(auth_peer(j, "key"), "key_file_next", "the center's acks under the base's next key");
        cr_assert_eq(auth_num(j, "auth_failures"), 0);
        cr_assert_eq(link_num(p.bsock, "acked"), 5);
        cJSON_Delete(j);
        h_rec_stop(&rec);
        h_rec_free(&rec);
        fpair_stop(&p);
}

/* A key file others may read stops the start, naming the file. */
Test(forgery, key_file_mode_refused, .timeout = 60)
{
        char dir[200], conf[300], out[8192], text[1200];
        h_tmpdir(dir, sizeof(dir), "forge-mode");
        const char *plugins = getenv("KM_SIM_PLUGIN_DIR");
        cr_assert(plugins);
        snprintf(text, sizeof(text), "%s/base.key", dir);
        h_write_text(text, KEY_A "\n");
        chmod(text, 0644);
        snprintf(conf, sizeof(conf), "%s/base.conf", dir);
        snprintf(text, sizeof(text),
                 "[node]\nname = north\nspool = %s/spool.db\nplugin_dir = %s\n[local]\nuri = tcp://127.0.0.1:%d\n"
                 "[link sat]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\nkey_file = base.key\n",
                 dir, plugins, h_free_port(), h_free_port(), h_free_port());
        h_write_text(conf, text);
        const char *args[] = { "--config", conf, NULL };
        int rc = h_kuimen_run(args, out, sizeof(out));
        cr_assert_neq(rc, 0, "started with a world-readable key: %s", out);
        cr_assert(strstr(out, "base.key: mode 0644"), "%s", out);
        h_cleanup(dir);
}

/* auth = off at both ends: traffic flows as before, and the log, kuimenctl and the
 * status say loudly that frames can be forged. */
Test(forgery, auth_off_is_said, .timeout = 120)
{
        struct fpair p;
        struct h_rec rec;
        fpair_start_ex(&p, "forge-off", "auth = off", "auth = off", "north", NULL);
        h_rec_start(&rec, p.k.center.port, "center-rec", "kuimen/north/alert/#");
        cr_assert_eq(h_log_count(&p.k.base, "auth = off: frames are NEITHER AUTHENTICATED NOR ENCRYPTED"), 1);
        cr_assert_eq(h_log_count(&p.k.ctr, "auth = off: frames are NEITHER AUTHENTICATED NOR ENCRYPTED"), 1);
        genuine_alerts(&p, 3);
        cr_assert_eq(rec_wait(&rec, "kuimen/north/alert/gas", NULL, 3, 30000), 3);
        cJSON *j = ctl_json(p.csock, "links --json");
        const cJSON *l = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "links"), 0);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(l, "auth"), "mode");
        cr_assert(cJSON_IsString(m) && strcmp(m->valuestring, "off") == 0);
        cJSON_Delete(j);
        char cmd[600], out[8192];
        snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' links 2>&1", h_ctl_path(), p.csock);
        FILE *f = popen(cmd, "r");
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        pclose(f);
        cr_assert(strstr(out, "sat: auth off tag_bytes=0") && strstr(out, "WARNING: auth = off, frames can be forged"), "%s",
                  out);
        h_rec_stop(&rec);
        h_rec_free(&rec);
        fpair_stop(&p);
}

/* SIGHUP reads the key files again: a file that became readable by others is refused
 * (the keys in use stay, traffic flows); a new key in its place is taken, and the
 * base's frames, still under the old key, then fail. */
Test(forgery, reload_reads_keys_again, .timeout = 120)
{
        struct fpair p;
        struct h_rec rec;
        char path[400];
        fpair_start_ex(&p, "forge-reload", BASE_AUTH, CENTER_AUTH, "north", keys_same);
        h_rec_start(&rec, p.k.center.port, "center-rec", "kuimen/north/alert/#");
        snprintf(path, sizeof(path), "%s/center.key", p.k.dir);
        cr_assert_eq(chmod(path, 0644), 0);
        kill(p.k.ctr.pid, SIGHUP);
        cr_assert(h_log_wait(&p.k.ctr, "reload: ", 5000));
        cr_assert(h_log_wait(&p.k.ctr, "center.key: mode 0644 lets others read or write the key: chmod 600 it: keeping the keys in use", 5000));
        genuine_alerts(&p, 3);
        cr_assert_eq(rec_wait(&rec, "kuimen/north/alert/gas", NULL, 3, 30000), 3, "the keys in use stayed");
        h_sleep_ms(1500);
        write_key(&p, "center.key", "north = " KEY_B "\n", 0600);
        kill(p.k.ctr.pid, SIGHUP);
        cr_assert(h_log_wait(&p.k.ctr, "reload: keys read again", 5000));
        genuine_alerts(&p, 1);
        cr_assert_geq(auth_wait(p.csock, "auth_failures", 1, 10000), 1, "the base's old key no longer verifies");
        cr_assert_eq(rec_count(&rec, "kuimen/north/alert/gas", NULL), 3);
        h_rec_stop(&rec);
        h_rec_free(&rec);
        fpair_stop(&p);
}
