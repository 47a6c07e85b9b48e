/* SPDX-License-Identifier: MIT */
/* The equipment parsers of the sbd and pdt plugins against published examples: AT lines of Iridium 9602/9603 modems, HDAP PDUs of Hytera radios. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "plugins/pdt/hdap.h"
#include "plugins/pdt/hrnp.h"
#include "plugins/sbd/at.h"

static enum sbd_kind parse(const char *line, struct sbd_resp *r)
{
        return sbd_at_parse(line, strlen(line), r);
}

/* Real 9603s print ", " between the +SBDIX fields, the isbd-emu emulator ","
 * (equipment.md §2.1, [I11] and [I5]); both parse the same. */
Test(sbd_at, sbdix_both_spacings)
{
        struct sbd_resp r;
        cr_assert_eq(parse("+SBDIX: 0, 12, 1, 7, 5, 2", &r), SBD_K_SBDIX);
        long want[6] = { 0, 12, 1, 7, 5, 2 };
        cr_assert_arr_eq(r.v, want, sizeof(want));
        cr_assert_eq(parse("+SBDIX:32,12,2,0,0,0", &r), SBD_K_SBDIX);
        cr_assert_eq(r.v[0], 32);
        cr_assert_eq(r.v[2], 2);
        cr_assert_eq(parse("+SBDIX: 0, 12, 3, 7, 5, 2", &r), SBD_K_BAD, "MT status 3 does not exist");
        cr_assert_eq(parse("+SBDIX: 0, 12, 1, 7, 271, 2", &r), SBD_K_BAD, "an MT message is at most 270 bytes");
        cr_assert_eq(parse("+SBDIX: 0, 12, 1, 7, 5", &r), SBD_K_BAD);
        cr_assert_eq(parse("+SBDIX: 0, 12, 1, 7, 5, 2, 9", &r), SBD_K_BAD);
        cr_assert_eq(parse("+SBDIX: 0,,1,7,5,2", &r), SBD_K_BAD);
}

Test(sbd_at, indications_and_answers)
{
        struct sbd_resp r;
        cr_assert_eq(parse("+CSQ:4", &r), SBD_K_CSQ);
        cr_assert_eq(r.v[0], 4);
        cr_assert_eq(parse("+CSQF:0", &r), SBD_K_CSQ);
        cr_assert_eq(parse("+CSQ:6", &r), SBD_K_BAD);
        cr_assert_eq(parse("+CIEV:0,3", &r), SBD_K_CIEV);
        cr_assert(r.v[0] == 0 && r.v[1] == 3);
        /* "+CIEV: %d, %d" is how one open 9602 driver reads it. */
        cr_assert_eq(parse("+CIEV: 1, 0", &r), SBD_K_CIEV);
        cr_assert(r.v[0] == 1 && r.v[1] == 0);
        cr_assert_eq(parse("+CIEV:1,2", &r), SBD_K_BAD, "service is 0 or 1");
        cr_assert_eq(parse("-MSSTM: 06cf3479", &r), SBD_K_MSSTM);
        cr_assert(r.v[0] == 1 && r.msstm == 0x06cf3479);
        cr_assert_eq(parse("-MSSTM: no network service", &r), SBD_K_MSSTM);
        cr_assert_eq(r.v[0], 0);
        cr_assert_eq(parse("HARDWARE FAILURE: 4, 2", &r), SBD_K_HWFAIL);
        cr_assert_eq(parse("SBDRING", &r), SBD_K_RING);
        cr_assert_eq(parse("READY", &r), SBD_K_READY);
        cr_assert_eq(parse("OK", &r), SBD_K_OK);
        cr_assert_eq(parse("ERROR", &r), SBD_K_ERROR);
        cr_assert_eq(parse("0", &r), SBD_K_RESULT);
        cr_assert_eq(parse("AT+SBDIX", &r), SBD_K_ECHO);
        cr_assert_eq(parse("300234010753370", &r), SBD_K_INFO);
        cr_assert_eq(parse("+SB\xff" "DIX: 1", &r), SBD_K_BAD);
        cr_assert_eq(parse("OKAY", &r), SBD_K_BAD);
}

/* The RockBLOCK documentation's example: "hello" goes as 68 65 6C 6C 6F 02 14. */
Test(sbd_at, checksum_of_hello)
{
        cr_assert_eq(sbd_checksum((const uint8_t *)"hello", 5), 0x0214);
}

struct events {
        int lines, blocks, bad, overlong;
        char last[SBD_LINE_MAX + 1];
        uint8_t block[SBD_MT_MAX];
        size_t blen;
};

static void on_ev(void *ud, enum sbd_rx_event ev, const uint8_t *d, size_t n)
{
        struct events *e = ud;
        switch (ev) {
        case SBD_RX_LINE:
                e->lines++;
                memcpy(e->last, d, n);
                e->last[n] = '\0';
                break;
        case SBD_RX_BLOCK:
                e->blocks++;
                memcpy(e->block, d, n);
                e->blen = n;
                break;
        case SBD_RX_BADBLOCK: e->bad++; break;
        case SBD_RX_OVERLONG: e->overlong++; break;
        }
}

/* An SBDRING that the modem sent just before the answer to AT+SBDRB stays a line, and
 * the block after it is read byte by byte as a serial port may deliver it. */
Test(sbd_at, sbdrb_block_after_a_ring)
{
        static const uint8_t in[] = "\r\nSBDRING\r\n\x00\x05hello\x02\x14\r\nOK\r\n";
        struct sbd_rx rx;
        struct events e = { 0 };
        sbd_rx_init(&rx);
        sbd_rx_expect_block(&rx);
        for (size_t i = 0; i < sizeof(in) - 1; i++)
                sbd_rx_feed(&rx, in + i, 1, on_ev, &e);
        cr_assert_eq(e.blocks, 1);
        cr_assert_eq(e.blen, 5);
        cr_assert_arr_eq(e.block, "hello", 5);
        cr_assert_eq(e.lines, 2, "SBDRING and OK");
        cr_assert_str_eq(e.last, "OK");
}

Test(sbd_at, bad_block_and_overlong_line)
{
        static const uint8_t in[] = "\x00\x05hello\x02\x15\r\nOK\r\n";
        struct sbd_rx rx;
        struct events e = { 0 };
        sbd_rx_init(&rx);
        sbd_rx_expect_block(&rx);
        sbd_rx_feed(&rx, in, sizeof(in) - 1, on_ev, &e);
        cr_assert_eq(e.bad, 1);
        cr_assert_eq(e.blocks, 0);
        uint8_t junk[300];
        memset(junk, 'Z', sizeof(junk));
        sbd_rx_feed(&rx, junk, sizeof(junk), on_ev, &e);
        sbd_rx_feed(&rx, (const uint8_t *)"\r\nOK\r\n", 6, on_ev, &e);
        cr_assert_eq(e.overlong, 1);
        cr_assert_str_eq(e.last, "OK", "the line after an overlong one is whole");
}

Test(sbd_at, mo_status_classes)
{
        enum sbd_mo_class c;
        for (long st = 0; st <= 4; st++) {
                sbd_mo_text(st, &c);
                cr_assert_eq(c, SBD_MO_OK, "%ld", st);
        }
        static const long fatal[] = { 12, 14 }, down[] = { 16, 32, 33, 34, 37 },
                          retry[] = { 5, 10, 11, 13, 15, 17, 18, 19, 20, 31, 35, 36, 38, 64, 65 };
        for (size_t i = 0; i < 2; i++)
                cr_assert(sbd_mo_text(fatal[i], &c) && c == SBD_MO_FATAL, "%ld", fatal[i]);
        for (size_t i = 0; i < 5; i++)
                cr_assert(sbd_mo_text(down[i], &c) && c == SBD_MO_DOWN, "%ld", down[i]);
        for (size_t i = 0; i < sizeof(retry) / sizeof(retry[0]); i++)
                cr_assert(sbd_mo_text(retry[i], &c) && c == SBD_MO_RETRY, "%ld", retry[i]);
        cr_assert_str_eq(sbd_mo_text(32, NULL), "no network service");
}

/* dmr-kaitai's TMP test vector (equipment.md §3.1 [D1]): checksum 0x7A. */
static const uint8_t oliver[] = { 0x09, 0x80, 0xA1, 0x00, 0x22, 0x00, 0x00, 0x00, 0x01, 0x0A, 0x01, 0xB2, 0x07,
                                  0x0A, 0x03, 0x64, 0x0E, 'O',  0,    'L',  0,    'I',  0,    'V',  0,    'E',
                                  0,    'R',  0,    ' ',  0,    'T',  0,    'E',  0,    'S',  0,    'T',  0,
                                  0x7A, 0x03 };

Test(hdap, kaitai_test_vector)
{
        struct hdap h;
        struct tmp_msg m;
        const char *why = NULL;
        cr_assert_eq(hdap_decode(oliver, sizeof(oliver), &h, &why), 0, "%s", why);
        cr_assert_eq(h.service, HDAP_TMP);
        cr_assert_eq(tmp_decode(&h, &m, &why), 0, "%s", why);
        cr_assert_not(m.ack_wanted, "flags bit 7 set: no ack wanted");
        cr_assert_eq(m.type, TMP_PRIVATE);
        cr_assert_eq(m.req, 1);
        cr_assert_eq(m.dst, radio_ip(10, 111111));
        cr_assert_eq(m.src, 0x0A03640E);
        cr_assert_eq(m.text_len, 22);
        uint8_t out[64];
        cr_assert_eq(tmp_encode(out, sizeof(out), &m), (int)sizeof(oliver));
        cr_assert_arr_eq(out, oliver, sizeof(oliver), "encoding the fields gives the vector back, checksum included");

        uint8_t bad[sizeof(oliver)];
        memcpy(bad, oliver, sizeof(bad));
        bad[sizeof(bad) - 2] ^= 1;
        cr_assert_eq(hdap_decode(bad, sizeof(bad), &h, &why), -EBADMSG);
        cr_assert_str_eq(why, "bad checksum");
        memcpy(bad, oliver, sizeof(bad));
        bad[sizeof(bad) - 1] = 0x04;
        cr_assert_eq(hdap_decode(bad, sizeof(bad), &h, &why), -EBADMSG);
        cr_assert_str_eq(why, "no 0x03 at the end");
        cr_assert_eq(hdap_decode(oliver, sizeof(oliver) - 1, &h, &why), -EBADMSG);
}

Test(hdap, frame_text_round_trip)
{
        uint8_t f[400], t[1000], back[400];
        for (size_t i = 0; i < sizeof(f); i++)
                f[i] = (uint8_t)(i * 37 + 11);
        for (size_t n = 0; n <= 300; n++) {
                int tl = text_encode(f, n, t, sizeof(t));
                cr_assert_eq(tl, (int)(text_units_for(n) * 2), "n %zu", n);
                for (int k = 0; k < tl; k += 2) {
                        unsigned u = t[k] | (unsigned)t[k + 1] << 8;
                        cr_assert(u >= 0x4E00 && u < 0x4E00 + 16384, "a CJK ideograph, n %zu", n);
                }
                cr_assert_eq(text_decode(t, (size_t)tl, back, sizeof(back)), (int)n);
                cr_assert_arr_eq(back, f, n);
        }
        cr_assert_eq(text_frame_max(67), 56, "67 text bytes, 33 characters: a 56-byte frame");
        cr_assert_eq(text_units_for(56) * 2, 66);
        /* A person's text is not a frame. */
        cr_assert_eq(text_decode((const uint8_t *)"h\0i\0", 4, back, sizeof(back)), -EBADMSG);
}

static size_t unhex(const char *h, uint8_t *out)
{
        size_t n = 0;
        for (; h[0] && h[1]; h += 2) {
                unsigned v;
                sscanf(h, "%2x", &v);
                out[n++] = (uint8_t)v;
        }
        return n;
}

/* The seven HRNP packets of OK-DMR ok-dmrlib's test_hrnp.py (connect v4 and v3,
 * accept, RCP and LP data both ways): each checksum is the RFC 1071 sum, and each
 * comes out of the deframer whole, with its fields. */
Test(hrnp, okdmr_test_vectors)
{
        static const struct {
                const char *hex;
                uint8_t opcode, src, dst;
                uint16_t pn;
        } v[] = {
                { "7e0400fe20100000000c60e1", HRNP_CONNECT, 0x20, 0x10, 0 },
                { "7e0300fe20100000000c60e2", HRNP_CONNECT, 0x20, 0x10, 0 },
                { "7e0400002010000100189b6002040005006400000001c403", HRNP_DATA, 0x20, 0x10, 1 },
                { "7e040000102000010019d6240204800600000f690600012903", HRNP_DATA, 0x10, 0x20, 1 },
                { "7e0400fd10200000000c70d2", HRNP_ACCEPT, 0x10, 0x20, 0 },
                { "7e030000201000000018fefe02c910050002000101014f03", HRNP_DATA, 0x20, 0x10, 0 },
                { "7E04000020100000001873890241080500006F0000007503", HRNP_DATA, 0x20, 0x10, 0 },
        };
        static struct hrnp_rx rx;
        hrnp_rx_reset(&rx);
        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                uint8_t b[64];
                size_t n = unhex(v[i].hex, b);
                cr_assert_eq(hrnp_checksum(b, n), (uint16_t)(b[10] << 8 | b[11]), "vector %zu", i);
                cr_assert_eq(hrnp_rx_feed(&rx, b, n, 1000), n);
                struct hrnp_pkt k;
                const char *why = NULL;
                cr_assert_eq(hrnp_rx_next(&rx, &k, &why), 1, "vector %zu: %s", i, why ? why : "");
                cr_assert_eq(k.opcode, v[i].opcode);
                cr_assert_eq(k.src, v[i].src);
                cr_assert_eq(k.dst, v[i].dst);
                cr_assert_eq(k.pn, v[i].pn);
                cr_assert_eq(k.len, n - HRNP_HDR);
                /* RCP and LP inside (little-endian RCP lengths: not hdap_decode's), each
                 * ending in the HDAP end byte. */
                if (k.opcode == HRNP_DATA)
                        cr_assert_eq(k.data[k.len - 1], 0x03, "vector %zu", i);
                if (b[1] == HRNP_VERSION) {
                        uint8_t again[64];
                        int m = hrnp_encode(again, sizeof(again), k.opcode, k.src, k.dst, k.pn, k.data, k.len);
                        cr_assert_eq(m, (int)n);
                        cr_assert_arr_eq(again, b, n, "vector %zu encodes to itself", i);
                }
                cr_assert_eq(hrnp_rx_next(&rx, &k, &why), 0);
        }
}

/* Noise, a bad checksum, an unknown version and a cut packet are one error each; the
 * packets between them still come out. */
Test(hrnp, resync_after_garbage)
{
        uint8_t line[256], acc[16], bad[32];
        size_t n = 0, an = unhex("7e0400fd10200000000c70d2", acc), bn = unhex("7e0400002010000100189b6002040005006400000001c403", bad);
        bad[11] ^= 0x5A;
        memcpy(line + n, "\x01\x02noise", 7), n += 7;
        memcpy(line + n, acc, an), n += an;
        memcpy(line + n, bad, bn), n += bn;
        memcpy(line + n, acc, an), n += an;
        memcpy(line + n, "\x7e\x09xx", 4), n += 4;
        memcpy(line + n, acc, an), n += an;
        static struct hrnp_rx rx;
        hrnp_rx_reset(&rx);
        cr_assert_eq(hrnp_rx_feed(&rx, line, n, 1000), n);
        const char *whys[8];
        unsigned got = 0, errs = 0;
        struct hrnp_pkt k;
        const char *why;
        int r;
        while ((r = hrnp_rx_next(&rx, &k, &why)) != 0)
                if (r > 0)
                        got++;
                else
                        whys[errs++] = why;
        cr_assert_eq(got, 3);
        cr_assert_eq(errs, 3);
        cr_assert_str_eq(whys[0], "bytes outside a packet");
        cr_assert_str_eq(whys[1], "bad checksum");
        cr_assert_str_eq(whys[2], "unknown HRNP version");
        /* Half a packet, then a silence longer than HRNP_GAP_US, then a whole one. */
        cr_assert_eq(hrnp_rx_feed(&rx, acc, 5, 2000000), 5);
        cr_assert_eq(hrnp_rx_next(&rx, &k, &why), 0);
        cr_assert_eq(hrnp_rx_feed(&rx, acc, an, 2000000 + HRNP_GAP_US + 1), an);
        cr_assert_eq(hrnp_rx_next(&rx, &k, &why), -EBADMSG);
        cr_assert_str_eq(why, "packet cut short");
        cr_assert_eq(hrnp_rx_next(&rx, &k, &why), 1);
        cr_assert_eq(k.opcode, HRNP_ACCEPT);
}
