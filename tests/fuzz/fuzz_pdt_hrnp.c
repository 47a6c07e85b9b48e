/* SPDX-License-Identifier: MIT */
/* Fuzz target: a Hytera radio's serial line as the pdt link reads it with transport = hrnp (plugins/pdt/hrnp.c: hrnp_rx_feed, hrnp_rx_next). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/pdt/hrnp.h"
#include "tests/fuzz/fuzz.h"

/*
 * Input: split:u8, then the bytes of the line. Checks: every packet the deframer hands
 * out has a right checksum and length and, written again by hrnp_encode (version 4,
 * block 0), is its own bytes; the packets and the count of errors are the same whether
 * the bytes come in one read or in reads of split bytes (0: one byte a read); and the
 * data of each packet, framed again, comes back out alone and unchanged.
 */

struct seen {
        uint8_t bytes[1 << 16];
        size_t n;
        unsigned packets, errors;
};

static void run(const uint8_t *p, size_t n, size_t split, struct seen *out)
{
        static struct hrnp_rx rx;
        hrnp_rx_reset(&rx);
        out->n = 0;
        out->packets = out->errors = 0;
        for (size_t off = 0; off < n;) {
                size_t chunk = split && split < n - off ? split : n - off;
                if (!split)
                        chunk = 1;
                size_t took = hrnp_rx_feed(&rx, p + off, chunk, 1000);
                off += took;
                struct hrnp_pkt k;
                const char *why;
                int r;
                while ((r = hrnp_rx_next(&rx, &k, &why)) != 0) {
                        if (r < 0) {
                                REQUIRE(why && *why);
                                out->errors++;
                                continue;
                        }
                        const uint8_t *whole = k.data - HRNP_HDR;
                        size_t len = k.len + HRNP_HDR;
                        REQUIRE(whole[0] == 0x7E && ((size_t)whole[8] << 8 | whole[9]) == len);
                        REQUIRE(hrnp_checksum(whole, len) == ((uint16_t)whole[10] << 8 | whole[11]));
                        if (k.version == HRNP_VERSION && k.block == 0) {
                                static uint8_t again[HRNP_MAX];
                                int m = hrnp_encode(again, sizeof(again), k.opcode, k.src, k.dst, k.pn, k.data, k.len);
                                REQUIRE(m == (int)len && memcmp(again, whole, len) == 0);
                        }
                        out->packets++;
                        if (out->n + len <= sizeof(out->bytes)) {
                                memcpy(out->bytes + out->n, whole, len);
                                out->n += len;
                        }
                }
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static struct seen a, b;
        if (size < 1)
                return 0;
        size_t split = data[0];
        data++, size--;
        run(data, size, size ? size : 1, &a);
        run(data, size, split, &b);
        REQUIRE(a.packets == b.packets && a.errors == b.errors && a.n == b.n && memcmp(a.bytes, b.bytes, a.n) == 0);

        if (size <= HDAP_MAX) {
                static uint8_t pkt[HRNP_MAX];
                static struct hrnp_rx rx;
                int m = hrnp_encode(pkt, sizeof(pkt), HRNP_DATA, HRNP_RADIO, HRNP_PC, (uint16_t)size, data, size);
                REQUIRE(m == (int)(size + HRNP_HDR));
                hrnp_rx_reset(&rx);
                REQUIRE(hrnp_rx_feed(&rx, pkt, (size_t)m, 1000) == (size_t)m);
                struct hrnp_pkt k;
                const char *why;
                REQUIRE(hrnp_rx_next(&rx, &k, &why) == 1);
                REQUIRE(k.opcode == HRNP_DATA && k.len == size && memcmp(k.data, data, size) == 0);
                REQUIRE(hrnp_rx_next(&rx, &k, &why) == 0);
        }
        return 0;
}
