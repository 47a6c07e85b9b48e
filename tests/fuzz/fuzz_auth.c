/* SPDX-License-Identifier: MIT */
/* Fuzz target: the authenticated narrow-link receiver (gateway/auth.c km_auth_open, then the frame receiver), as gateway/plugin.c api_received runs it. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "gateway/auth.h"
#include "gateway/frame.h"
#include "tests/fuzz/fuzz.h"

/*
 * Input: flags:u8, then datagrams, each len:u16 (big-endian) and len bytes, as the
 * frame target takes them (its seeds serve here too). Per datagram, by flag bits:
 *   bit 0 clear: the datagram is taken as a plain frame (its CRC set right) and sealed
 *          by the genuine sender under the shared key, so mutations reach the window
 *          and, through it, the frame receiver; bit 0 set: the bytes go in as they
 *          are (a forger's datagram).
 *   bit 1: every sealed datagram is also fed a second time (a replay).
 *   bit 2: the datagram's byte at (len % its length) gets bit (len % 8) flipped after
 *          sealing (a bit flipped on the air).
 * Contracts checked (trap when broken): a datagram that does not open leaves the
 * receiver's window as it was; a replay never opens; an opened frame passes the frame
 * receiver's CRC check and is no longer than the datagram.
 */

#define MAX_DATAGRAM KM_FRAME_MTU_MAX

static const uint8_t secret[KM_AUTH_KEY_BYTES] = { 7, 1, 7, 1, 7, 1, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                    9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6 };

static int deliver(void *ctx, const struct km_frame_msg *m)
{
        uint8_t *x = ctx;
        *x ^= fuzz_touch(m->payload, m->len);
        if (m->topic)
                *x ^= fuzz_touch(m->topic, strlen(m->topic) + 1);
        return 0;
}

static void reseal(uint8_t *f, size_t len)
{
        if (len < 3)
                return;
        if (len <= KM_FRAME_CRC16_MAX) {
                uint16_t c = km_frame_crc16(f, len - 2);
                f[len - 2] = (uint8_t)(c >> 8);
                f[len - 1] = (uint8_t)c;
        } else {
                uLong c = crc32(0L, f, (uInt)(len - 4));
                for (int i = 0; i < 4; i++)
                        f[len - 4 + i] = (uint8_t)(c >> (24 - 8 * i));
        }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        (void)argc, (void)argv;
        fuzz_quiet();
        return 0;
}

/* Opens d[0..len) at rx and hands what opened to the frame receiver. */
static int feed(struct km_auth *rx, struct km_frame_rx *frx, const uint8_t *d, size_t len, uint8_t *x)
{
        static uint8_t out[MAX_DATAGRAM + 64];
        struct km_auth_peer *p = &rx->peer[0];
        uint64_t max = p->max, bits = p->bits;
        int n = km_auth_open(rx, d, len, out, sizeof(out), NULL, NULL);
        if (n < 0) {
                if (p->max != max || p->bits != bits)
                        __builtin_trap(); /* a failed frame moved the window */
                return n;
        }
        if ((size_t)n > len)
                __builtin_trap();
        int rc = km_frame_rx_input(frx, out, (size_t)n, FUZZ_NOW_MS, deliver, x, NULL);
        if (rc == -EBADMSG)
                __builtin_trap(); /* an opened frame always carries a right CRC */
        return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct km_auth tx, rx;
        struct km_auth_key k;
        struct km_frame_rx frx;
        struct km_frame_rx_cfg rcfg = { .pos_json = true };
        uint8_t x = 0;

        if (size < 1)
                return 0;
        km_auth_key_from_secret(&k, secret);
        if (km_auth_init(&tx, 8, KM_AUTH_UP, km_frame_node_id(FUZZ_SENDER), NULL) < 0 ||
            km_auth_init(&rx, 8, KM_AUTH_DOWN, km_frame_node_id(FUZZ_RECEIVER), NULL) < 0)
                return 0;
        struct km_auth_peer *tp = km_auth_peer_add(&tx, FUZZ_RECEIVER, &k, NULL);
        km_auth_peer_add(&rx, FUZZ_SENDER, &k, NULL);
        if (km_frame_rx_init(&frx, &rcfg) < 0)
                return 0;
        uint8_t flags = data[0];
        uint8_t *sealed = malloc(MAX_DATAGRAM + 64);
        size_t i = 1;
        while (sealed && i + 2 <= size) {
                size_t len = (size_t)data[i] << 8 | data[i + 1];
                i += 2;
                if (len > size - i)
                        len = size - i;
                if (len > MAX_DATAGRAM)
                        len = MAX_DATAGRAM;
                /* A datagram of exactly its length: ASan sees a read past its end. */
                uint8_t *d = malloc(len ? len : 1);
                if (!d)
                        break;
                memcpy(d, data + i, len);
                i += len;
                if (flags & 1) {
                        feed(&rx, &frx, d, len, &x);
                        free(d);
                        continue;
                }
                reseal(d, len);
                int n = km_auth_seal(&tx, tp, d, len, sealed, MAX_DATAGRAM + 64);
                free(d);
                if (n < 0)
                        continue;
                if (flags & 4)
                        sealed[len % (size_t)n] ^= (uint8_t)(1 << (len % 8));
                uint8_t *s = malloc((size_t)n);
                if (!s)
                        break;
                memcpy(s, sealed, (size_t)n);
                int first = feed(&rx, &frx, s, (size_t)n, &x);
                if ((flags & 4) && first >= 0)
                        __builtin_trap(); /* a flipped bit went through */
                if ((flags & 2) && feed(&rx, &frx, s, (size_t)n, &x) >= 0)
                        __builtin_trap(); /* a replay went through */
                free(s);
        }
        free(sealed);
        km_frame_rx_deinit(&frx);
        km_auth_deinit(&tx);
        km_auth_deinit(&rx);
        return x == 0x5a ? 0 : 0;
}
