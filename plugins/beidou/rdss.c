/* SPDX-License-Identifier: MIT */
/* The BeiDou RDSS ASCII sentence codec: checksums, splitting, and the sentences a messaging driver needs. */
#include "plugins/beidou/rdss.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint8_t rdss_xor(const char *p, size_t n)
{
        uint8_t x = 0;
        for (size_t i = 0; i < n; i++)
                x ^= (uint8_t)p[i];
        return x;
}

static int hexval(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

static bool is_upper(char c)
{
        return c >= 'A' && c <= 'Z';
}

int rdss_parse(const char *line, size_t len, struct rdss_sentence *s)
{
        while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
                len--;
        if (len > RDSS_LINE_MAX)
                return RDSS_E_LONG;
        /* "$" + 5 letters + "*hh" at the least. */
        if (len < 9 || line[0] != '$' || line[len - 3] != '*')
                return RDSS_E_FORMAT;
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e)
                        return RDSS_E_BYTE;
        int hi = hexval(line[len - 2]), lo = hexval(line[len - 1]);
        if (hi < 0 || lo < 0)
                return RDSS_E_FORMAT;
        size_t body = len - 4; /* between "$" and "*" */
        if (rdss_xor(line + 1, body) != (uint8_t)(hi << 4 | lo))
                return RDSS_E_CHECKSUM;
        for (int i = 1; i <= 5; i++)
                if (!is_upper(line[i]))
                        return RDSS_E_FORMAT;
        if (body > 5 && line[6] != ',')
                return RDSS_E_FORMAT;
        memcpy(s->talker, line + 1, 2);
        s->talker[2] = '\0';
        memcpy(s->id, line + 3, 3);
        s->id[3] = '\0';
        s->nf = 0;
        if (body <= 5)
                return 0;
        size_t n = body - 6; /* the fields, after "$XXYYY," */
        memcpy(s->buf, line + 7, n);
        s->buf[n] = '\0';
        char *p = s->buf;
        for (;;) {
                if (s->nf == RDSS_FIELDS_MAX)
                        return RDSS_E_FIELDS;
                s->f[s->nf++] = p;
                char *c = strchr(p, ',');
                if (!c)
                        break;
                *c = '\0';
                p = c + 1;
        }
        return 0;
}

const char *rdss_strerror(int e)
{
        switch (e) {
        case 0:
                return "ok";
        case RDSS_E_FORMAT:
                return "not a $XXYYY,...*hh sentence";
        case RDSS_E_CHECKSUM:
                return "checksum mismatch";
        case RDSS_E_LONG:
                return "line too long";
        case RDSS_E_FIELDS:
                return "too many fields";
        case RDSS_E_BYTE:
                return "byte outside printable ASCII";
        case RDSS_E_VALUE:
                return "field out of form";
        }
        return "unknown error";
}

int rdss_vformat(char *out, size_t cap, const char *fmt, va_list ap)
{
        if (cap < 8)
                return -1;
        out[0] = '$';
        int n = vsnprintf(out + 1, cap - 1, fmt, ap);
        if (n < 0 || (size_t)n + 1 + 5 + 1 > cap)
                return -1;
        size_t len = 1 + (size_t)n;
        uint8_t x = rdss_xor(out + 1, (size_t)n);
        snprintf(out + len, cap - len, "*%02X\r\n", x);
        return (int)(len + 5);
}

int rdss_format(char *out, size_t cap, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        int n = rdss_vformat(out, cap, fmt, ap);
        va_end(ap);
        return n;
}

size_t rdss_hex_encode(char *out, const uint8_t *in, size_t n)
{
        static const char digits[] = "0123456789ABCDEF";
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[in[i] >> 4];
                out[2 * i + 1] = digits[in[i] & 15];
        }
        out[2 * n] = '\0';
        return 2 * n;
}

ssize_t rdss_hex_decode(uint8_t *out, size_t cap, const char *hex)
{
        size_t n = strlen(hex);
        if (n % 2 || n / 2 > cap)
                return -1;
        for (size_t i = 0; i < n / 2; i++) {
                int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -1;
                out[i] = (uint8_t)(hi << 4 | lo);
        }
        return (ssize_t)(n / 2);
}

/* A whole unsigned decimal field of at most max_digits; empty is an error. */
static int num(const char *f, unsigned max_digits, unsigned *out)
{
        size_t n = strlen(f);
        if (n == 0 || n > max_digits || strspn(f, "0123456789") != n)
                return -1;
        unsigned long v = strtoul(f, NULL, 10);
        *out = (unsigned)v;
        return 0;
}

int rdss_parse_card(const char *f, uint32_t *out)
{
        unsigned v;
        if (num(f, 8, &v) < 0)
                return -1;
        *out = v;
        return 0;
}

static bool is(const struct rdss_sentence *s, const char *id)
{
        return strcmp(s->id, id) == 0;
}

int rdss_parse_icp(const struct rdss_sentence *s, struct rdss_card *c)
{
        /* 23 fields; some firmware leaves trailing ones off, so 15 is the least that
         * still names the interval and level. */
        if (!is(s, "ICP") || s->nf < 15)
                return RDSS_E_VALUE;
        memset(c, 0, sizeof(*c));
        unsigned lvl;
        if (rdss_parse_card(s->f[0], &c->id) < 0)
                return RDSS_E_VALUE;
        if (c->id == 0)
                return 0; /* no card: the rest is whatever the module left there */
        if (num(s->f[3], 3, &c->cls) < 0 || num(s->f[11], 3, &c->priority) < 0 ||
            num(s->f[13], 5, &c->interval_s) < 0 || num(s->f[14], 2, &lvl) < 0 || lvl > 5)
                return RDSS_E_VALUE;
        c->level = lvl == 0 ? 5 : lvl; /* "0 means level 5" */
        return 0;
}

int rdss_parse_ici(const struct rdss_sentence *s, struct rdss_card *c)
{
        if (!is(s, "ICI") || s->nf < 7)
                return RDSS_E_VALUE;
        memset(c, 0, sizeof(*c));
        if (rdss_parse_card(s->f[0], &c->id) < 0)
                return RDSS_E_VALUE;
        if (c->id == 0)
                return 0;
        if (num(s->f[3], 1, &c->cls) < 0 || num(s->f[4], 5, &c->interval_s) < 0 || num(s->f[5], 1, &c->level) < 0 ||
            (strcmp(s->f[6], "E") != 0 && strcmp(s->f[6], "N") != 0))
                return RDSS_E_VALUE;
        c->encrypted = s->f[6][0] == 'E';
        return 0;
}

/* $BDPWI,<time>,<n2>,[n2 BDS-2 groups],<n3>,[n3 x (beam, S2C_d, S2C_p[, x])]. The size
 * of a BDS-2 group and whether a BDS-3 group has the 4th value differ by firmware
 * [U]: take the first layout whose counts add up. */
int rdss_parse_pwi(const struct rdss_sentence *s, unsigned min_s2c, struct rdss_beams *b)
{
        unsigned n2, n3;
        if (!is(s, "PWI") || s->nf < 3)
                return RDSS_E_VALUE;
        memset(b, 0, sizeof(*b));
        const char *t = s->f[0];
        if (strlen(t) < 6 || strspn(t, "0123456789.") != strlen(t))
                return RDSS_E_VALUE;
        b->has_time = strspn(t, "0.") != strlen(t);
        if (num(s->f[1], 2, &n2) < 0)
                return RDSS_E_VALUE;
        static const unsigned g2s[] = { 3, 2, 4 };
        for (unsigned i = 0; i < 3; i++) {
                size_t at = 2 + (size_t)n2 * g2s[i];
                if (at >= s->nf || num(s->f[at], 2, &n3) < 0)
                        continue;
                size_t rest = s->nf - at - 1, g3;
                if (rest == (size_t)n3 * 4)
                        g3 = 4;
                else if (rest == (size_t)n3 * 3)
                        g3 = 3;
                else
                        continue;
                for (unsigned k = 0; k < n3; k++) {
                        unsigned beam, d, p;
                        const char *const *g = (const char *const *)&s->f[at + 1 + k * g3];
                        if (num(g[0], 3, &beam) < 0 || num(g[1], 3, &d) < 0 || num(g[2], 3, &p) < 0)
                                return RDSS_E_VALUE;
                        if (d > b->best)
                                b->best = d;
                        if (d >= min_s2c)
                                b->above++;
                }
                b->n = n3;
                return 0;
        }
        return RDSS_E_VALUE;
}

int rdss_parse_bsi(const struct rdss_sentence *s, unsigned min_power, struct rdss_beams *b)
{
        unsigned v;
        if (!is(s, "BSI") || s->nf < 3 || s->nf > 12)
                return RDSS_E_VALUE;
        memset(b, 0, sizeof(*b));
        b->has_time = true;
        if (num(s->f[0], 2, &v) < 0 || num(s->f[1], 2, &v) < 0)
                return RDSS_E_VALUE;
        for (unsigned i = 2; i < s->nf; i++) {
                if (num(s->f[i], 1, &v) < 0 || v > 4)
                        return RDSS_E_VALUE;
                b->n++;
                if (v > b->best)
                        b->best = v;
                if (v >= min_power)
                        b->above++;
        }
        return 0;
}

static int yn(const char *f, bool *out)
{
        if (strcmp(f, "Y") == 0)
                *out = true;
        else if (strcmp(f, "N") == 0)
                *out = false;
        else
                return -1;
        return 0;
}

int rdss_parse_fki(const struct rdss_sentence *s, struct rdss_fki *k)
{
        if (!is(s, "FKI") || s->nf < 5)
                return RDSS_E_VALUE;
        memset(k, 0, sizeof(*k));
        const char *f0 = s->f[0];
        size_t l0 = strlen(f0);
        if (l0 >= 2 && l0 <= 4 && is_upper(f0[0]) && is_upper(f0[1])) {
                /* 2.1: the first field is the command. */
                unsigned w;
                k->v21 = true;
                memcpy(k->cmd, f0, l0 + 1);
                if (yn(s->f[1], &k->exec) < 0 || yn(s->f[2], &k->freq_ok) < 0 || num(s->f[3], 1, &k->code) < 0 ||
                    strlen(s->f[4]) != 4 || num(s->f[4], 4, &w) < 0 || w % 100 > 59)
                        return RDSS_E_VALUE;
                k->wait_s = w / 100 * 60 + w % 100;
                return 0;
        }
        if (l0 < 6 || strspn(f0, "0123456789.") != l0 || strlen(s->f[1]) < 2 || strlen(s->f[1]) > 4 ||
            !is_upper(s->f[1][0]))
                return RDSS_E_VALUE;
        memcpy(k->cmd, s->f[1], strlen(s->f[1]) + 1);
        k->freq_ok = true;
        if (yn(s->f[2], &k->exec) < 0 || num(s->f[3], 3, &k->code) < 0)
                return RDSS_E_VALUE;
        /* remaining: seconds [U]; empty reads as 0. */
        if (s->f[4][0] && num(s->f[4], 6, &k->wait_s) < 0)
                return RDSS_E_VALUE;
        return 0;
}

static int hex_field(const char *f)
{
        size_t n = strlen(f);
        for (size_t i = 0; i < n; i++)
                if (hexval(f[i]) < 0)
                        return -1;
        return 0;
}

int rdss_parse_tci(const struct rdss_sentence *s, struct rdss_msg *m)
{
        unsigned v;
        if (!is(s, "TCI") || s->nf != 7)
                return RDSS_E_VALUE;
        memset(m, 0, sizeof(*m));
        if (rdss_parse_card(s->f[0], &m->from) < 0 || rdss_parse_card(s->f[1], &m->to) < 0 || num(s->f[2], 1, &v) < 0 ||
            num(s->f[4], 1, &m->coding) < 0 || hex_field(s->f[6]) < 0)
                return RDSS_E_VALUE;
        m->hex = s->f[6];
        return 0;
}

int rdss_parse_txr(const struct rdss_sentence *s, struct rdss_msg *m)
{
        unsigned v;
        if (!is(s, "TXR") || s->nf != 5)
                return RDSS_E_VALUE;
        memset(m, 0, sizeof(*m));
        if (num(s->f[0], 1, &v) < 0 || rdss_parse_card(s->f[1], &m->from) < 0 || num(s->f[2], 1, &m->coding) < 0 ||
            hex_field(s->f[4]) < 0)
                return RDSS_E_VALUE;
        m->hex = s->f[4];
        return 0;
}

unsigned rdss_bytes_for_bits(unsigned max_bits, bool mixed)
{
        if (mixed)
                return max_bits > 8 ? (max_bits - 8) / 8 : 0;
        return max_bits / 8;
}

unsigned rdss_v21_bits(unsigned level, bool encrypted)
{
        /* [C B10] g_CommCapacity: bits per message by communication level 1..4. */
        static const unsigned plain[] = { 110, 408, 628, 848 }, enc[] = { 140, 360, 580, 1680 };
        if (level < 1 || level > 4)
                return 0;
        return encrypted ? enc[level - 1] : plain[level - 1];
}

unsigned rdss_bds3_bits(unsigned level)
{
        /* [U] No source gives BDS-3 per-level limits. Level 5 is the regional maximum
         * (14 000 bits [B17]); 2..4 follow one vendor app's voice-length table [B2];
         * level 1 takes the global-message size (560 bits [B17]) as the floor. */
        static const unsigned bits[] = { 560, 1000, 3600, 7000, 14000 };
        if (level < 1 || level > 5)
                return 0;
        return bits[level - 1];
}

ssize_t rdss40_parse(const uint8_t *buf, size_t n, struct rdss40 *f)
{
        if (n == 0 || buf[0] != '$')
                return RDSS_E_FORMAT;
        for (size_t i = 1; i < 5 && i < n; i++)
                if (!is_upper((char)buf[i]))
                        return RDSS_E_FORMAT;
        if (n < 7)
                return 0;
        size_t len = (size_t)buf[5] << 8 | buf[6];
        if (len < RDSS40_HDR + 1 || len > RDSS40_MAX)
                return RDSS_E_FORMAT;
        if (n < len)
                return 0;
        uint8_t x = 0;
        for (size_t i = 0; i < len - 1; i++)
                x ^= buf[i];
        if (x != buf[len - 1])
                return RDSS_E_CHECKSUM;
        memcpy(f->id, buf + 1, 4);
        f->id[4] = '\0';
        f->addr = (uint32_t)buf[7] << 16 | (uint32_t)buf[8] << 8 | buf[9];
        f->body = buf + RDSS40_HDR;
        f->blen = len - RDSS40_HDR - 1;
        return (ssize_t)len;
}

ssize_t rdss40_build(uint8_t *out, size_t cap, const char *id, uint32_t addr, const uint8_t *body, size_t blen)
{
        size_t len = RDSS40_HDR + blen + 1;
        if (strlen(id) != 4 || len > cap || len > RDSS40_MAX || addr > 0xFFFFFF)
                return -1;
        out[0] = '$';
        memcpy(out + 1, id, 4);
        out[5] = (uint8_t)(len >> 8);
        out[6] = (uint8_t)len;
        out[7] = (uint8_t)(addr >> 16);
        out[8] = (uint8_t)(addr >> 8);
        out[9] = (uint8_t)addr;
        if (blen)
                memcpy(out + RDSS40_HDR, body, blen);
        uint8_t x = 0;
        for (size_t i = 0; i < len - 1; i++)
                x ^= out[i];
        out[len - 1] = x;
        return (ssize_t)len;
}
