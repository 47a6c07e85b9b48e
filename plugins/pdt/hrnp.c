/* SPDX-License-Identifier: MIT */
/* Hytera HRNP: the packet framing that carries HDAP PDUs over a radio's serial (accessory or programming) port. */
#include "plugins/pdt/hrnp.h"

#include <errno.h>
#include <string.h>

uint16_t hrnp_checksum(const uint8_t *p, size_t n)
{
        uint32_t s = 0;
        for (size_t i = 0; i < n; i += 2) {
                /* bytes 10 and 11 are the checksum itself: zero */
                unsigned hi = i == 10 ? 0 : p[i];
                unsigned lo = i + 1 >= n || i == 10 ? 0 : p[i + 1];
                s += hi << 8 | lo;
        }
        while (s >> 16)
                s = (s & 0xFFFF) + (s >> 16);
        return (uint16_t)~s;
}

int hrnp_encode(uint8_t *out, size_t cap, uint8_t opcode, uint8_t src, uint8_t dst, uint16_t pn, const uint8_t *data,
                size_t len)
{
        size_t n = HRNP_HDR + len;
        if (n > HRNP_MAX || n > cap)
                return -EMSGSIZE;
        out[0] = 0x7E;
        out[1] = HRNP_VERSION;
        out[2] = 0; /* block: we never split a PDU */
        out[3] = opcode;
        out[4] = src;
        out[5] = dst;
        out[6] = (uint8_t)(pn >> 8);
        out[7] = (uint8_t)pn;
        out[8] = (uint8_t)(n >> 8);
        out[9] = (uint8_t)n;
        if (len)
                memcpy(out + HRNP_HDR, data, len);
        uint16_t c = hrnp_checksum(out, n);
        out[10] = (uint8_t)(c >> 8);
        out[11] = (uint8_t)c;
        return (int)n;
}

void hrnp_rx_reset(struct hrnp_rx *rx)
{
        rx->n = rx->taken = 0;
        rx->last_us = 0;
        rx->resync = rx->cut = false;
}

static void drop(struct hrnp_rx *rx, size_t k)
{
        memmove(rx->buf, rx->buf + k, rx->n - k);
        rx->n -= k;
}

size_t hrnp_rx_feed(struct hrnp_rx *rx, const uint8_t *p, size_t n, uint64_t now_us)
{
        if (rx->taken) {
                drop(rx, rx->taken);
                rx->taken = 0;
        }
        /* A serial line has no packet boundaries: a packet whose rest never came would
         * hold up every packet behind it, so a silence inside one ends it. */
        if (rx->n && now_us - rx->last_us > HRNP_GAP_US) {
                rx->n = 0;
                rx->cut = !rx->resync;
                rx->resync = false;
        }
        rx->last_us = now_us;
        size_t k = n < sizeof(rx->buf) - rx->n ? n : sizeof(rx->buf) - rx->n;
        memcpy(rx->buf + rx->n, p, k);
        rx->n += k;
        return k;
}

static int bad(struct hrnp_rx *rx, const char *what, const char **why)
{
        drop(rx, 1); /* the 0x7E: the next one may start a good packet */
        rx->resync = true;
        *why = what;
        return -EBADMSG;
}

int hrnp_rx_next(struct hrnp_rx *rx, struct hrnp_pkt *pkt, const char **why)
{
        if (rx->taken) {
                drop(rx, rx->taken);
                rx->taken = 0;
        }
        if (rx->cut) {
                rx->cut = false;
                *why = "packet cut short";
                return -EBADMSG;
        }
        const uint8_t *m = memchr(rx->buf, 0x7E, rx->n);
        size_t skip = m ? (size_t)(m - rx->buf) : rx->n;
        if (skip) {
                drop(rx, skip);
                bool quiet = rx->resync;
                rx->resync = !m;
                if (!quiet) {
                        *why = "bytes outside a packet";
                        return -EBADMSG;
                }
        }
        if (!m)
                return 0;
        rx->resync = false;
        if (rx->n >= 2 && rx->buf[1] != 0x04 && rx->buf[1] != 0x03)
                return bad(rx, "unknown HRNP version", why);
        if (rx->n < HRNP_HDR)
                return 0;
        size_t len = (size_t)rx->buf[8] << 8 | rx->buf[9];
        if (len < HRNP_HDR || len > HRNP_MAX)
                return bad(rx, "impossible length", why);
        if (rx->n < len)
                return 0;
        if (hrnp_checksum(rx->buf, len) != ((uint16_t)rx->buf[10] << 8 | rx->buf[11]))
                return bad(rx, "bad checksum", why);
        const uint8_t *b = rx->buf;
        *pkt = (struct hrnp_pkt){ .version = b[1], .block = b[2], .opcode = b[3], .src = b[4], .dst = b[5],
                                  .pn = (uint16_t)(b[6] << 8 | b[7]), .data = b + HRNP_HDR, .len = len - HRNP_HDR };
        rx->taken = len;
        return 1;
}
