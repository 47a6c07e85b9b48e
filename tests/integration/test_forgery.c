/* SPDX-License-Identifier: MIT */
/* Forged and invalid frames on a narrow link (issue 12): refused with a counter, nothing published, genuine traffic flowing. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

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

static const char *ctl_path(void)
{
        static char path[512];
        if (getenv("KM_KUIMENCTL"))
                return getenv("KM_KUIMENCTL");
        char k[480];
        snprintf(k, sizeof(k), "%s", getenv("KM_KUIMEN") ? getenv("KM_KUIMEN") : "./kuimen");
        snprintf(path, sizeof(path), "%s/kuimenctl", dirname(k));
        return path;
}

/* kuimenctl's reply to args on sock, parsed. */
static cJSON *ctl_json(const char *sock, const char *args)
{
        char cmd[800], out[1 << 15];
        snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' %s 2>&1", ctl_path(), sock, args);
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

static void fpair_start(struct fpair *p, const char *tag, const char *base_extra)
{
        char bl[400], ce[400];
        memset(p, 0, sizeof(*p));
        h_pair_init(&p->k, tag);
        snprintf(p->bsock, sizeof(p->bsock), "%s/base.sock", p->k.dir);
        snprintf(p->csock, sizeof(p->csock), "%s/center.sock", p->k.dir);
        snprintf(bl, sizeof(bl), "[control]\nsocket = %s", p->bsock);
        snprintf(ce, sizeof(ce), "[control]\nsocket = %s", p->csock);
        struct h_pair_conf conf = { .link_keys = "mtu = 400\nrto = 1s", .base_node = "link_status = no",
                                    .base_local = bl, .base_extra = base_extra, .center_extra = ce,
                                    .peers = "north, south", .relay = true };
        h_pair_start(&p->k, &conf);
        cr_assert(h_log_wait(&p->k.ctr, "control: listening on", 10000));
        cr_assert(h_log_wait(&p->k.base, "control: listening on", 10000));
        h_pub_start(&p->pub, p->k.local.port, "terminals");
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

        h_rec_stop(&local);
        h_rec_free(&local);
        h_rec_stop(&ctr);
        h_rec_free(&ctr);
        fpair_stop(&p);
}
