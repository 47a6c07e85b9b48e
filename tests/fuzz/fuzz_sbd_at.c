/* SPDX-License-Identifier: MIT */
/* Fuzz target: the Iridium SBD AT response parser (plugins/sbd/at.c: sbd_rx_feed, sbd_at_parse) on what a modem's serial line brings. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/sbd/at.h"
#include "tests/fuzz/fuzz.h"

/*
 * Input: flags:u8 (bit 0: an SBDRB block is expected from the start), split:u8 (0: one
 * read; else reads of that many bytes), then the bytes from the modem. An echoed
 * "AT+SBDRB" arms a block, as the driver does when it sends the command.
 *
 * Checks: a line never holds \r or \n and fits SBD_LINE_MAX; a block fits 270 bytes and
 * its checksum is right; each parsed answer is within the ranges at.h promises; and
 * the events do not depend on how the bytes were split into reads (a serial port
 * splits them anywhere).
 */

struct run {
        uint64_t hash;
        unsigned events;
        struct sbd_rx *rx;
};

static void mix(struct run *r, uint64_t v)
{
        r->hash = (r->hash ^ v) * 0x100000001B3ull;
        r->events++;
}

static void on_event(void *ud, enum sbd_rx_event ev, const uint8_t *data, size_t len)
{
        struct run *r = ud;
        struct sbd_resp resp;
        fuzz_touch(data, len);
        mix(r, (uint64_t)ev << 32 | len);
        for (size_t i = 0; i < len; i++)
                mix(r, data[i]);
        switch (ev) {
        case SBD_RX_LINE:
                REQUIRE(len > 0 && len <= SBD_LINE_MAX && !memchr(data, '\r', len) && !memchr(data, '\n', len));
                switch (sbd_at_parse((const char *)data, len, &resp)) {
                case SBD_K_SBDIX:
                        REQUIRE(resp.v[0] >= 0 && resp.v[0] <= 255 && resp.v[2] >= 0 && resp.v[2] <= 2);
                        REQUIRE(resp.v[4] >= 0 && resp.v[4] <= (long)SBD_MT_MAX && resp.v[5] >= 0);
                        (void)sbd_mo_text(resp.v[0], NULL);
                        break;
                case SBD_K_CSQ: REQUIRE(resp.v[0] >= 0 && resp.v[0] <= 5); break;
                case SBD_K_CIEV: REQUIRE(resp.v[0] >= 0 && resp.v[0] <= 1 && resp.v[1] >= 0 && resp.v[1] <= 5); break;
                case SBD_K_RESULT: REQUIRE(resp.v[0] >= 0 && resp.v[0] <= 99); break;
                case SBD_K_ECHO:
                        if (len == 8 && memcmp(data, "AT+SBDRB", 8) == 0)
                                sbd_rx_expect_block(r->rx);
                        break;
                default: break;
                }
                mix(r, resp.kind);
                break;
        case SBD_RX_BLOCK:
                REQUIRE(len <= SBD_MT_MAX);
                break;
        case SBD_RX_OVERLONG:
        case SBD_RX_BADBLOCK: REQUIRE(len == 0); break;
        }
}

static uint64_t feed(const uint8_t *p, size_t n, uint8_t flags, size_t split, unsigned *events)
{
        struct sbd_rx rx;
        struct run r = { .hash = 0xcbf29ce484222325ull, .rx = &rx };
        sbd_rx_init(&rx);
        if (flags & 1)
                sbd_rx_expect_block(&rx);
        for (size_t o = 0; o < n;) {
                size_t k = split && n - o > split ? split : n - o;
                sbd_rx_feed(&rx, p + o, k, on_event, &r);
                o += k;
        }
        *events = r.events;
        return r.hash;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 2)
                return 0;
        unsigned e1, e2;
        uint64_t whole = feed(data + 2, size - 2, data[0], 0, &e1);
        uint64_t split = feed(data + 2, size - 2, data[0], data[1], &e2);
        REQUIRE(whole == split && e1 == e2);
        /* The checksum of a block the parser took is the one the modem sent. */
        uint8_t blk[2 + 3 + 2] = { 0, 3, 'a', 'b', 'c', 0x01, 0x26 };
        REQUIRE(sbd_checksum(blk + 2, 3) == 0x0126);
        return 0;
}
