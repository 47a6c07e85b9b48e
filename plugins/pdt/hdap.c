/* SPDX-License-Identifier: MIT */
/* Hytera HDAP PDUs as a PDT/DMR radio takes them over its USB network: TMP text messages, RRS registration, and frames as text. */
#include "plugins/pdt/hdap.h"

#include <errno.h>
#include <string.h>

uint8_t hdap_checksum(const uint8_t *p, size_t n)
{
        unsigned s = 0;
        for (size_t i = 0; i < n; i++)
                s += p[i];
        return (uint8_t)(((s & 0xFF) ^ 0xFF) + 0x33);
}

int hdap_encode(uint8_t *out, size_t cap, uint8_t service, bool reliable, uint8_t op_hi, uint8_t op_lo,
                const uint8_t *payload, size_t len)
{
        if (len > 0xFFFF || len + HDAP_OVERHEAD > cap)
                return -EMSGSIZE;
        out[0] = (uint8_t)(service | (reliable ? 0x80 : 0));
        out[1] = op_hi;
        out[2] = op_lo;
        out[3] = (uint8_t)(len >> 8);
        out[4] = (uint8_t)len;
        if (len)
                memcpy(out + 5, payload, len);
        out[5 + len] = hdap_checksum(out + 1, 4 + len);
        out[6 + len] = 0x03;
        return (int)(len + HDAP_OVERHEAD);
}

int hdap_decode(const uint8_t *p, size_t n, struct hdap *h, const char **why)
{
        if (n < HDAP_OVERHEAD) {
                *why = "shorter than an HDAP header";
                return -EBADMSG;
        }
        size_t len = (size_t)p[3] << 8 | p[4];
        if (len + HDAP_OVERHEAD != n) {
                *why = "length field does not match the datagram";
                return -EBADMSG;
        }
        if (p[n - 1] != 0x03) {
                *why = "no 0x03 at the end";
                return -EBADMSG;
        }
        if (hdap_checksum(p + 1, 4 + len) != p[n - 2]) {
                *why = "bad checksum";
                return -EBADMSG;
        }
        h->service = p[0] & 0x7F;
        h->reliable = p[0] & 0x80;
        h->op_hi = p[1];
        h->op_lo = p[2];
        h->payload = p + 5;
        h->len = len;
        return 0;
}

static uint32_t be32(const uint8_t *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t)(v >> 24);
        p[1] = (uint8_t)(v >> 16);
        p[2] = (uint8_t)(v >> 8);
        p[3] = (uint8_t)v;
}

int tmp_decode(const struct hdap *h, struct tmp_msg *m, const char **why)
{
        memset(m, 0, sizeof(*m));
        if (h->service != HDAP_TMP) {
                *why = "not TMP";
                return -EBADMSG;
        }
        if (h->op_hi & 0x40) {
                *why = "TMP option fields (not supported)";
                return -EBADMSG;
        }
        m->ack_wanted = !(h->op_hi & TMP_NO_ACK);
        m->type = h->op_lo;
        const uint8_t *p = h->payload;
        if (m->type == TMP_PRIVATE || m->type == 0xB1) {
                if (h->len < 12 || (h->len - 12) % 2) {
                        *why = "TMP message: bad length";
                        return -EBADMSG;
                }
                m->text = p + 12;
                m->text_len = h->len - 12;
        } else if (m->type == TMP_PRIVATE_ACK) {
                if (h->len != 13) {
                        *why = "TMP ack: bad length";
                        return -EBADMSG;
                }
                m->result = p[12];
        } else {
                *why = "TMP type not handled";
                return -EBADMSG;
        }
        m->req = be32(p);
        m->dst = be32(p + 4);
        m->src = be32(p + 8);
        return 0;
}

int tmp_encode(uint8_t *out, size_t cap, const struct tmp_msg *m)
{
        uint8_t pl[HDAP_MAX];
        size_t len = 12;
        put32(pl, m->req);
        put32(pl + 4, m->dst);
        put32(pl + 8, m->src);
        if (m->type == TMP_PRIVATE_ACK) {
                pl[len++] = m->result;
        } else {
                if (m->text_len + 12 > sizeof(pl))
                        return -EMSGSIZE;
                if (m->text_len)
                        memcpy(pl + 12, m->text, m->text_len);
                len += m->text_len;
        }
        return hdap_encode(out, cap, HDAP_TMP, false, m->ack_wanted ? 0x00 : TMP_NO_ACK, m->type, pl, len);
}

const char *tmp_result_text(int r)
{
        switch (r) {
        case 0: return "ok";
        case 1: return "failed";
        case 3: return "invalid parameters";
        case 4: return "channel busy";
        case 5: return "radio is receive-only";
        case 6: return "low battery";
        case 7: return "PLL unlocked";
        case 8: return "no ack from the target radio";
        case 9: return "repeater wake-up failed";
        case 10: return "no contact";
        case 11: return "tx denied";
        case 12: return "tx interrupted";
        default: return "unknown result";
        }
}

#define CJK0 0x4E00u

size_t text_units_for(size_t n)
{
        return 1 + (n * 8 + 13) / 14;
}

size_t text_frame_max(size_t text_max)
{
        size_t units = text_max / 2;
        if (units < 2)
                return 0;
        size_t n = (units - 1) * 14 / 8;
        return n > 16383 ? 16383 : n;
}

static void put_unit(uint8_t *out, unsigned v)
{
        unsigned u = CJK0 + v;
        out[0] = (uint8_t)u;
        out[1] = (uint8_t)(u >> 8);
}

int text_encode(const uint8_t *f, size_t n, uint8_t *out, size_t cap)
{
        size_t units = text_units_for(n);
        if (n > 16383 || units * 2 > cap)
                return -EMSGSIZE;
        put_unit(out, (unsigned)n);
        uint32_t acc = 0;
        unsigned bits = 0;
        size_t o = 2;
        for (size_t i = 0; i < n; i++) {
                acc = acc << 8 | f[i];
                bits += 8;
                if (bits >= 14) {
                        bits -= 14;
                        put_unit(out + o, (acc >> bits) & 0x3FFF);
                        o += 2;
                }
        }
        if (bits) {
                put_unit(out + o, (acc << (14 - bits)) & 0x3FFF);
                o += 2;
        }
        return (int)o;
}

static int get_unit(const uint8_t *p)
{
        unsigned u = p[0] | (unsigned)p[1] << 8;
        return u >= CJK0 && u < CJK0 + 16384 ? (int)(u - CJK0) : -1;
}

int text_decode(const uint8_t *t, size_t len, uint8_t *f, size_t cap)
{
        if (len < 2 || len % 2)
                return -EBADMSG;
        int n = get_unit(t);
        if (n < 0 || (size_t)n > cap || text_units_for((size_t)n) * 2 != len)
                return -EBADMSG;
        uint32_t acc = 0;
        unsigned bits = 0;
        size_t o = 0;
        for (size_t i = 2; i < len; i += 2) {
                int v = get_unit(t + i);
                if (v < 0)
                        return -EBADMSG;
                acc = acc << 14 | (uint32_t)v;
                bits += 14;
                while (bits >= 8 && o < (size_t)n) {
                        bits -= 8;
                        f[o++] = (uint8_t)(acc >> bits);
                }
                acc &= (1u << bits) - 1;
        }
        /* The padding is zero, as text_encode writes it: one frame, one text. */
        return o == (size_t)n && acc == 0 ? n : -EBADMSG;
}
