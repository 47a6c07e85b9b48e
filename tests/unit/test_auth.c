/* SPDX-License-Identifier: MIT */
/* Sealed frames (gateway/auth.c): round trip, tampering, replays, keys, rotation, counters across restarts. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway/auth.h"
#include "gateway/frame.h"

#define NOW_MS 1763880000123LL

static const uint8_t secret_a[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                      17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32 };
static const uint8_t secret_b[32] = { 99 };

/* A base "north" and a center "county" sharing key a (and, with rotate, key b as next
 * on the center). */
struct ends {
        struct km_auth base, ctr;
        struct km_auth_peer *bp, *cp;
};

static void ends_init(struct ends *e, unsigned tag, const char *bstate, const char *cstate)
{
        struct km_auth_key ka;
        km_auth_key_from_secret(&ka, secret_a);
        cr_assert_eq(km_auth_init(&e->base, tag, KM_AUTH_UP, km_frame_node_id("north"), bstate), 0);
        cr_assert_eq(km_auth_init(&e->ctr, tag, KM_AUTH_DOWN, km_frame_node_id("county"), cstate), 0);
        e->bp = km_auth_peer_add(&e->base, "county", &ka, NULL);
        e->cp = km_auth_peer_add(&e->ctr, "north", &ka, NULL);
        cr_assert(e->bp && e->cp);
}

/* A data frame from north with one message, plain (CRC last). */
static size_t plain_frame(uint8_t *out, const char *topic, const char *payload)
{
        struct km_frame_tx tx;
        struct km_frame_tx_cfg cfg = { .origin = km_frame_node_id("north"), .first_seq = 100, .window = 8,
                                       .mtu_max = 256, .version = 2 };
        cr_assert_eq(km_frame_tx_init(&tx, &cfg), 0);
        struct km_frame_msg m = { .id = 7, .topic = topic, .payload = (const uint8_t *)payload, .len = strlen(payload),
                                  .created_ms = NOW_MS, .cls = 0, .qos = 1 };
        struct km_frame_put put;
        int n = km_frame_tx_encode(&tx, &m, 1, 256, NULL, NOW_MS, out, &put);
        cr_assert_gt(n, 0);
        km_frame_tx_deinit(&tx);
        return (size_t)n;
}

Test(auth, round_trip_and_overhead)
{
        struct ends e;
        uint8_t plain[256], sealed[300], back[300];
        for (unsigned tag = 4; tag <= 16; tag += 4) {
                ends_init(&e, tag, NULL, NULL);
                size_t n = plain_frame(plain, "cmd/u1/evacuate", "{\"order\":\"EVACUATE\"}");
                int s = km_auth_seal(&e.base, e.bp, plain, n, sealed, sizeof(sealed));
                cr_assert_eq(s, (int)n + KM_AUTH_OVERHEAD((int)tag), "tag %u: %d for %zu", tag, s, n);
                cr_assert_eq(sealed[0] >> 5, KM_AUTH_WIRE_VERSION);
                cr_assert_null(memmem(sealed, (size_t)s, "EVACUATE", 8), "the payload is not in clear");
                struct km_auth_peer *p;
                uint32_t org;
                int o = km_auth_open(&e.ctr, sealed, (size_t)s, back, sizeof(back), &p, &org);
                cr_assert_eq(o, (int)n);
                cr_assert_arr_eq(back, plain, n, "the plain frame, CRC and all");
                cr_assert_eq(p, e.cp);
                cr_assert_eq(org, km_frame_node_id("north"));
                cr_assert_eq(p->last_key, 1);
                km_auth_deinit(&e.base);
                km_auth_deinit(&e.ctr);
        }
}

Test(auth, every_bit_flipped_fails)
{
        struct ends e;
        uint8_t plain[256], sealed[300], bad[300], back[300];
        ends_init(&e, 8, NULL, NULL);
        size_t n = plain_frame(plain, "alert/gas", "{\"ppm\":12}");
        int s = km_auth_seal(&e.base, e.bp, plain, n, sealed, sizeof(sealed));
        for (int i = 0; i < s * 8; i++) {
                memcpy(bad, sealed, (size_t)s);
                bad[i / 8] ^= (uint8_t)(1 << (i % 8));
                int o = km_auth_open(&e.ctr, bad, (size_t)s, back, sizeof(back), NULL, NULL);
                cr_assert_lt(o, 0, "bit %d flipped was taken", i);
        }
        cr_assert_eq(e.ctr.opened, 0);
        cr_assert_eq(km_auth_open(&e.ctr, sealed, (size_t)s, back, sizeof(back), NULL, NULL), (int)n,
                     "the genuine frame still opens after every failed one");
        /* cut short, or a byte more */
        cr_assert_lt(km_auth_open(&e.ctr, sealed, (size_t)s - 1, back, sizeof(back), NULL, NULL), 0);
        cr_assert_lt(km_auth_open(&e.ctr, sealed, 3, back, sizeof(back), NULL, NULL), 0);
        km_auth_deinit(&e.base);
        km_auth_deinit(&e.ctr);
}

Test(auth, replay_and_window)
{
        struct ends e;
        uint8_t plain[256], sealed[80][300], back[300];
        int len[80];
        ends_init(&e, 8, NULL, NULL);
        size_t n = plain_frame(plain, "alert/gas", "x");
        for (int i = 0; i < 80; i++)
                len[i] = km_auth_seal(&e.base, e.bp, plain, n, sealed[i], sizeof(sealed[i]));
        /* 10 first, then 79 (ahead), then the ones in between out of order */
        for (int i = 0; i < 10; i++)
                cr_assert_eq(km_auth_open(&e.ctr, sealed[i], (size_t)len[i], back, sizeof(back), NULL, NULL), (int)n);
        cr_assert_eq(km_auth_open(&e.ctr, sealed[3], (size_t)len[3], back, sizeof(back), NULL, NULL), -EALREADY);
        cr_assert_eq(km_auth_open(&e.ctr, sealed[79], (size_t)len[79], back, sizeof(back), NULL, NULL), (int)n);
        cr_assert_eq(km_auth_open(&e.ctr, sealed[79], (size_t)len[79], back, sizeof(back), NULL, NULL), -EALREADY);
        cr_assert_eq(km_auth_open(&e.ctr, sealed[16], (size_t)len[16], back, sizeof(back), NULL, NULL), (int)n,
                     "counter 17 is 63 below 80: the window's last place");
        cr_assert_eq(km_auth_open(&e.ctr, sealed[15], (size_t)len[15], back, sizeof(back), NULL, NULL), -EALREADY,
                     "counter 16 is older than the window");
        cr_assert_eq(km_auth_open(&e.ctr, sealed[50], (size_t)len[50], back, sizeof(back), NULL, NULL), (int)n);
        cr_assert_eq(km_auth_open(&e.ctr, sealed[50], (size_t)len[50], back, sizeof(back), NULL, NULL), -EALREADY);
        cr_assert_eq(e.ctr.replays, 4);
        km_auth_deinit(&e.base);
        km_auth_deinit(&e.ctr);
}

Test(auth, wrong_key_direction_and_origin)
{
        struct ends e;
        uint8_t plain[256], sealed[300], back[300];
        ends_init(&e, 8, NULL, NULL);
        size_t n = plain_frame(plain, "alert/gas", "x");
        /* a forger with another key */
        struct km_auth forger;
        struct km_auth_key kb;
        km_auth_key_from_secret(&kb, secret_b);
        cr_assert_eq(km_auth_init(&forger, 8, KM_AUTH_UP, km_frame_node_id("north"), NULL), 0);
        struct km_auth_peer *fp = km_auth_peer_add(&forger, "county", &kb, NULL);
        int s = km_auth_seal(&forger, fp, plain, n, sealed, sizeof(sealed));
        cr_assert_eq(km_auth_open(&e.ctr, sealed, (size_t)s, back, sizeof(back), NULL, NULL), -EBADE);
        cr_assert_eq(e.ctr.auth_failures, 1);
        /* the base's own frame reflected back to it */
        s = km_auth_seal(&e.base, e.bp, plain, n, sealed, sizeof(sealed));
        cr_assert_eq(km_auth_open(&e.base, sealed, (size_t)s, back, sizeof(back), NULL, NULL), -ENOKEY,
                     "origin north is no peer of north");
        e.base.any_peer = true; /* even a base that takes any origin: the direction is in the MAC */
        strcpy(e.bp->name, "*");
        cr_assert_eq(km_auth_open(&e.base, sealed, (size_t)s, back, sizeof(back), NULL, NULL), -EBADE);
        /* a plain (version 2) frame on an authenticated link */
        cr_assert_eq(km_auth_open(&e.ctr, plain, n, back, sizeof(back), NULL, NULL), -EPROTONOSUPPORT);
        km_auth_deinit(&forger);
        km_auth_deinit(&e.base);
        km_auth_deinit(&e.ctr);
}

Test(auth, rotation_both_keys_live)
{
        struct km_auth base_old, base_new, ctr;
        struct km_auth_key ka, kb;
        uint8_t plain[256], sealed[300], back[300];
        km_auth_key_from_secret(&ka, secret_a);
        km_auth_key_from_secret(&kb, secret_b);
        cr_assert_str_neq(ka.id, kb.id);
        cr_assert_eq(km_auth_init(&ctr, 8, KM_AUTH_DOWN, 1, NULL), 0);
        struct km_auth_peer *cp = km_auth_peer_add(&ctr, "north", &ka, &kb);
        cr_assert_eq(km_auth_init(&base_old, 8, KM_AUTH_UP, 2, NULL), 0);
        cr_assert_eq(km_auth_init(&base_new, 8, KM_AUTH_UP, 2, NULL), 0);
        struct km_auth_peer *po = km_auth_peer_add(&base_old, "county", &ka, NULL);
        struct km_auth_peer *pn = km_auth_peer_add(&base_new, "county", &kb, NULL);
        base_new.tx_next = 500; /* the same base after the swap: its counter went on */
        size_t n = plain_frame(plain, "alert/gas", "x");
        int s = km_auth_seal(&base_old, po, plain, n, sealed, sizeof(sealed));
        cr_assert_eq(km_auth_open(&ctr, sealed, (size_t)s, back, sizeof(back), NULL, NULL), (int)n);
        cr_assert_eq(cp->last_key, 1);
        s = km_auth_seal(&base_new, pn, plain, n, sealed, sizeof(sealed));
        cr_assert_eq(km_auth_open(&ctr, sealed, (size_t)s, back, sizeof(back), NULL, NULL), (int)n);
        cr_assert_eq(cp->last_key, 2, "key_file_next verified");
        km_auth_deinit(&base_old);
        km_auth_deinit(&base_new);
        km_auth_deinit(&ctr);
}

Test(auth, counters_survive_restarts)
{
        char dir[] = "/tmp/km-auth-XXXXXX", bs[64], cs[64];
        cr_assert(mkdtemp(dir));
        snprintf(bs, sizeof(bs), "%s/base.auth", dir);
        snprintf(cs, sizeof(cs), "%s/center.auth", dir);
        struct ends e;
        uint8_t plain[256], rec[5][300], back[300];
        int len[5];
        ends_init(&e, 8, bs, cs);
        size_t n = plain_frame(plain, "alert/gas", "x");
        for (int i = 0; i < 5; i++) {
                len[i] = km_auth_seal(&e.base, e.bp, plain, n, rec[i], sizeof(rec[i]));
                cr_assert_eq(km_auth_open(&e.ctr, rec[i], (size_t)len[i], back, sizeof(back), NULL, NULL), (int)n);
        }
        cr_assert_eq(e.base.tx_reserved, 1 + KM_AUTH_RESERVE);
        struct stat st;
        cr_assert_eq(stat(bs, &st), 0);
        cr_assert_eq(st.st_mode & 0777, 0600);
        km_auth_deinit(&e.base); /* a stop: the center saves its marks */
        km_auth_deinit(&e.ctr);

        /* "an hour later": both restarted; the recorded session is refused, new frames
         * start above the reserved block and are taken */
        ends_init(&e, 8, bs, cs);
        for (int i = 0; i < 5; i++)
                cr_assert_eq(km_auth_open(&e.ctr, rec[i], (size_t)len[i], back, sizeof(back), NULL, NULL), -EALREADY,
                             "recorded frame %d replayed after a restart", i);
        cr_assert_eq(e.base.tx_next, 1 + KM_AUTH_RESERVE);
        int s = km_auth_seal(&e.base, e.bp, plain, n, rec[0], sizeof(rec[0]));
        cr_assert_eq(km_auth_open(&e.ctr, rec[0], (size_t)s, back, sizeof(back), NULL, NULL), (int)n);
        cr_assert_eq(e.base.tx_reserved, 1 + 2 * KM_AUTH_RESERVE);
        km_auth_deinit(&e.base);
        km_auth_deinit(&e.ctr);
        unlink(bs);
        unlink(cs);
        rmdir(dir);
}

Test(auth, key_files)
{
        char dir[] = "/tmp/km-auth-XXXXXX", path[80], b64[64], text[300];
        struct km_auth_key k, k2;
        char err[300];
        cr_assert(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/key", dir);
        cr_assert_eq(km_auth_key_new(b64, sizeof(b64)), 0);
        cr_assert_eq(strlen(b64), 44);

        FILE *f = fopen(path, "w");
        fprintf(f, "# the base's key\n%s\n", b64);
        fclose(f);
        chmod(path, 0644);
        cr_assert_eq(km_auth_key_load(path, NULL, &k, err, sizeof(err)), -EPERM);
        cr_assert(strstr(err, path) && strstr(err, "0644"), "%s", err);
        chmod(path, 0600);
        cr_assert_eq(km_auth_key_load(path, NULL, &k, err, sizeof(err)), 0, "%s", err);
        cr_assert(k.set);

        snprintf(text, sizeof(text), "north = %s\n  south=%s  \n", b64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        f = fopen(path, "w");
        fputs(text, f);
        fclose(f);
        cr_assert_eq(km_auth_key_load(path, "north", &k2, err, sizeof(err)), 0, "%s", err);
        cr_assert_str_eq(k2.id, k.id);
        cr_assert_eq(km_auth_key_load(path, "south", &k2, err, sizeof(err)), 0, "%s", err);
        cr_assert_str_neq(k2.id, k.id);
        cr_assert_eq(km_auth_key_load(path, "west", &k2, err, sizeof(err)), -ENOENT);
        cr_assert(strstr(err, "west"), "%s", err);
        cr_assert_eq(km_auth_key_load(path, NULL, &k2, err, sizeof(err)), -EINVAL, "two keys for a base");

        f = fopen(path, "w");
        fputs("north = c2hvcnQ=\n", f);
        fclose(f);
        cr_assert_eq(km_auth_key_load(path, "north", &k2, err, sizeof(err)), -EINVAL);
        cr_assert(strstr(err, ":1:"), "%s", err);
        unlink(path);
        cr_assert_eq(km_auth_key_load(path, NULL, &k2, err, sizeof(err)), -ENOENT);
        rmdir(dir);
}
