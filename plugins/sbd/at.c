/* SPDX-License-Identifier: MIT */
/* The Iridium 9602/9603 AT response parser: bytes from the modem to lines, SBDRB blocks and parsed answers. */
#include "plugins/sbd/at.h"

#include <string.h>

void sbd_rx_init(struct sbd_rx *rx)
{
        memset(rx, 0, sizeof(*rx));
}

void sbd_rx_reset(struct sbd_rx *rx)
{
        rx->llen = 0;
        rx->overlong = false;
        rx->block = false;
        rx->bhave = rx->bwant = 0;
        rx->aborted = true;
}

void sbd_rx_cancel_block(struct sbd_rx *rx)
{
        rx->block = false;
        rx->bhave = rx->bwant = 0;
}

void sbd_rx_expect_block(struct sbd_rx *rx)
{
        rx->block = true;
        rx->bhave = rx->bwant = 0;
}

uint16_t sbd_checksum(const uint8_t *p, size_t n)
{
        uint32_t s = 0;
        for (size_t i = 0; i < n; i++)
                s += p[i];
        return (uint16_t)s;
}

/* The end of a line: hand it up unless it is empty (the \r\n framing) or overlong. */
static void end_line(struct sbd_rx *rx, sbd_rx_cb cb, void *ud)
{
        bool over = rx->overlong;
        size_t n = rx->llen;
        rx->llen = 0;
        rx->overlong = false;
        if (over)
                cb(ud, SBD_RX_OVERLONG, NULL, 0);
        else if (n) {
                rx->line[n] = '\0';
                cb(ud, SBD_RX_LINE, (const uint8_t *)rx->line, n);
        }
}

void sbd_rx_feed(struct sbd_rx *rx, const uint8_t *p, size_t n, sbd_rx_cb cb, void *ud)
{
        rx->aborted = false;
        for (size_t i = 0; i < n && !rx->aborted; i++) {
                uint8_t c = p[i];
                /* A block starts only where no text is pending: 0x00/0x01 inside a
                 * line are garbage of that line, not a length. */
                if (rx->block && (rx->bhave > 0 || (rx->llen == 0 && !rx->overlong && c <= 0x01))) {
                        rx->buf[rx->bhave++] = c;
                        if (rx->bhave == 2) {
                                size_t len = (size_t)rx->buf[0] << 8 | rx->buf[1];
                                if (len > SBD_MT_MAX) {
                                        rx->block = false;
                                        rx->bhave = 0;
                                        cb(ud, SBD_RX_BADBLOCK, NULL, 0);
                                        continue;
                                }
                                rx->bwant = 2 + len + 2;
                        }
                        if (rx->bwant && rx->bhave == rx->bwant) {
                                size_t len = rx->bwant - 4;
                                uint16_t sum = (uint16_t)(rx->buf[2 + len] << 8 | rx->buf[3 + len]);
                                bool good = sbd_checksum(rx->buf + 2, len) == sum;
                                rx->block = false;
                                rx->bhave = rx->bwant = 0;
                                if (good)
                                        cb(ud, SBD_RX_BLOCK, rx->buf + 2, len);
                                else
                                        cb(ud, SBD_RX_BADBLOCK, NULL, 0);
                        }
                        continue;
                }
                if (c == '\r' || c == '\n') {
                        end_line(rx, cb, ud);
                        continue;
                }
                if (rx->overlong)
                        continue;
                if (rx->llen == SBD_LINE_MAX) {
                        rx->overlong = true;
                        rx->llen = 0;
                        continue;
                }
                rx->line[rx->llen++] = (char)c;
        }
}

/* ---- one line ---------------------------------------------------------------------- */

static bool is_digit(char c)
{
        return c >= '0' && c <= '9';
}

/* Reads a decimal of at most 9 digits at *p (after optional spaces); false if none. */
static bool num(const char **p, const char *end, long *out)
{
        const char *s = *p;
        long v = 0;
        int k = 0;
        while (s < end && *s == ' ')
                s++;
        while (s < end && is_digit(*s) && k < 9) {
                v = v * 10 + (*s - '0');
                s++;
                k++;
        }
        if (k == 0 || (s < end && is_digit(*s)))
                return false;
        *p = s;
        *out = v;
        return true;
}

/* n comma-separated numbers after prefix and nothing else but spaces; real 9603s
 * print ", " and the isbd-emu emulator "," between them. */
static bool numbers(const char *s, const char *end, long *v, int n)
{
        for (int i = 0; i < n; i++) {
                if (i > 0) {
                        while (s < end && *s == ' ')
                                s++;
                        if (s == end || *s != ',')
                                return false;
                        s++;
                }
                if (!num(&s, end, &v[i]))
                        return false;
        }
        while (s < end && *s == ' ')
                s++;
        return s == end;
}

static bool starts(const char *s, size_t len, const char *prefix, const char **rest)
{
        size_t k = strlen(prefix);
        if (len < k || memcmp(s, prefix, k) != 0)
                return false;
        *rest = s + k;
        return true;
}

static bool equals(const char *s, size_t len, const char *what)
{
        return len == strlen(what) && memcmp(s, what, len) == 0;
}

enum sbd_kind sbd_at_parse(const char *s, size_t len, struct sbd_resp *r)
{
        const char *end = s + len, *rest;
        memset(r, 0, sizeof(*r));
        r->kind = SBD_K_BAD;
        while (len && s[len - 1] == ' ') /* some firmware pads "OK " */
                len--, end--;
        if (equals(s, len, "OK"))
                r->kind = SBD_K_OK;
        else if (equals(s, len, "ERROR"))
                r->kind = SBD_K_ERROR;
        else if (equals(s, len, "READY"))
                r->kind = SBD_K_READY;
        else if (equals(s, len, "SBDRING"))
                r->kind = SBD_K_RING;
        else if (starts(s, len, "+SBDIX:", &rest)) {
                if (numbers(rest, end, r->v, 6) && r->v[0] <= 255 && r->v[1] <= 65535 && r->v[2] <= 2 &&
                    r->v[3] <= 65535 && r->v[4] <= (long)SBD_MT_MAX && r->v[5] <= 65535)
                        r->kind = SBD_K_SBDIX;
        } else if (starts(s, len, "+CSQ:", &rest) || starts(s, len, "+CSQF:", &rest)) {
                if (numbers(rest, end, r->v, 1) && r->v[0] <= 5)
                        r->kind = SBD_K_CSQ;
        } else if (starts(s, len, "+CIEV:", &rest)) {
                if (numbers(rest, end, r->v, 2) && r->v[0] <= 1 && r->v[1] <= (r->v[0] == 0 ? 5 : 1))
                        r->kind = SBD_K_CIEV;
        } else if (starts(s, len, "-MSSTM:", &rest)) {
                while (rest < end && *rest == ' ')
                        rest++;
                if (equals(rest, (size_t)(end - rest), "no network service")) {
                        r->kind = SBD_K_MSSTM;
                } else if (end - rest == 8) {
                        uint32_t t = 0;
                        bool ok = true;
                        for (const char *q = rest; q < end && ok; q++) {
                                int d = is_digit(*q) ? *q - '0' : (*q >= 'a' && *q <= 'f') ? *q - 'a' + 10
                                                                : (*q >= 'A' && *q <= 'F') ? *q - 'A' + 10 : -1;
                                ok = d >= 0;
                                t = t << 4 | (uint32_t)(d & 15);
                        }
                        if (ok) {
                                r->kind = SBD_K_MSSTM;
                                r->v[0] = 1;
                                r->msstm = t;
                        }
                }
        } else if (starts(s, len, "HARDWARE FAILURE:", &rest)) {
                /* An unsolicited code of the 9602 (seen parsed in an open driver as
                 * "HARDWARE FAILURE: %d, %d"). */
                if (numbers(rest, end, r->v, 2))
                        r->kind = SBD_K_HWFAIL;
        } else if (len >= 2 && (s[0] == 'A' || s[0] == 'a') && (s[1] == 'T' || s[1] == 't')) {
                r->kind = SBD_K_ECHO;
        } else if (len > 0 && len <= 2 && numbers(s, end, r->v, 1)) {
                r->kind = SBD_K_RESULT;
        } else if (len >= 10 && len <= 20) {
                size_t k = 0;
                while (k < len && is_digit(s[k]))
                        k++;
                if (k == len)
                        r->kind = SBD_K_INFO; /* +CGSN: the IMEI, 15 digits */
        }
        return r->kind;
}

const char *sbd_mo_text(long st, enum sbd_mo_class *cls)
{
        enum sbd_mo_class c = SBD_MO_RETRY;
        const char *t = NULL;
        if (st >= 0 && st <= 4) {
                c = SBD_MO_OK;
                t = st == 0 ? "sent" : st == 1 ? "sent, MT too big for the buffer" : st == 2 ? "sent, no location update" : "sent";
        } else {
                switch (st) {
                case 10: t = "gateway call timeout"; break;
                case 11: t = "MO queue at the gateway full"; break;
                case 12: t = "too many segments for the gateway"; c = SBD_MO_FATAL; break;
                case 13: t = "session did not complete"; break;
                case 14: t = "invalid segment size"; c = SBD_MO_FATAL; break;
                case 15: t = "access denied by the gateway"; break;
                case 16: t = "modem locked"; c = SBD_MO_DOWN; break;
                case 17: t = "gateway not responding"; break;
                case 18: t = "connection lost (RF drop)"; break;
                case 19: t = "link failure"; break;
                case 32: t = "no network service"; c = SBD_MO_DOWN; break;
                case 33: t = "antenna fault"; c = SBD_MO_DOWN; break;
                case 34: t = "radio disabled"; c = SBD_MO_DOWN; break;
                case 35: t = "busy (attempting auto-registration)"; break;
                case 36: t = "registration too recent (wait 3 minutes)"; break;
                case 37: t = "SBD service disabled"; c = SBD_MO_DOWN; break;
                case 38: t = "traffic management period"; break;
                case 64: t = "band violation"; break;
                case 65: t = "PLL lock failure"; break;
                default: t = "failed (reserved status)"; break;
                }
        }
        if (cls)
                *cls = c;
        return t;
}
