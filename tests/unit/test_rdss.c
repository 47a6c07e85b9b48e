/* SPDX-License-Identifier: MIT */
/* Unit suite rdss: the BeiDou sentence codec against sentences captured from real modules and quoted in their vendors' notes. */
#include <criterion/criterion.h>
#include <string.h>

#include "plugins/beidou/rdss.h"

/*
 * Every line here is quoted byte for byte from a source of
 * /work/shared/protocols/equipment.md (tag in the comment): device logs and SDK
 * samples, not our simulator. The ones marked "constructed" are the notes' own
 * examples with checksums computed by the rule.
 */

static struct rdss_sentence s;

static void parse(const char *line)
{
        int r = rdss_parse(line, strlen(line), &s);
        cr_assert_eq(r, 0, "%s: %s", line, rdss_strerror(r));
}

/* The host's sentences, as the driver writes them, are the captured bytes. */
Test(rdss, host_sentences_byte_exact)
{
        char out[256];
        cr_assert_str_eq((rdss_format(out, sizeof(out), "CCICA,0,00"), out), "$CCICA,0,00*7B\r\n");   /* B15 */
        cr_assert_str_eq((rdss_format(out, sizeof(out), "CCICR,0,00"), out), "$CCICR,0,00*68\r\n");   /* B2, B4 */
        cr_assert_str_eq((rdss_format(out, sizeof(out), "CCRMO,BSI,2,1"), out), "$CCRMO,BSI,2,1*27\r\n"); /* B7, B18 */
        cr_assert_str_eq((rdss_format(out, sizeof(out), "CCTXA,%07u,1,1,%s", 166166u, "3132333433333335"), out),
                         "$CCTXA,0166166,1,1,3132333433333335*7F\r\n"); /* B18 */
        /* constructed: "HELLO" in code mode */
        cr_assert_str_eq((rdss_format(out, sizeof(out), "CCTCQ,%07u,2,1,2,48454C4C4F,0", 4238473u), out),
                         "$CCTCQ,4238473,2,1,2,48454C4C4F,0*05\r\n");
        cr_assert_eq(rdss_format(out, 12, "CCTCQ,4238473"), -1, "too small a buffer is refused");
}

Test(rdss, bds3_card_info)
{
        struct rdss_card c;
        parse("$BDICP,4238473,0,0,3,0,N,2,N,1,0,0,3,1,60,2,0,0,0,0,21,0,0,0*48"); /* B2, B19 */
        cr_assert_str_eq(s.id, "ICP");
        cr_assert_eq(s.nf, 23);
        cr_assert_eq(rdss_parse_icp(&s, &c), 0);
        cr_assert_eq(c.id, 4238473);
        cr_assert_eq(c.cls, 3);
        cr_assert_eq(c.interval_s, 60);
        cr_assert_eq(c.level, 2);
}

Test(rdss, v21_exchange)
{
        struct rdss_card c;
        struct rdss_fki k;
        struct rdss_msg m;
        uint8_t b[32];

        parse("$BDICI,0166166,02097151,0000011,6,40,3,N,000*33"); /* B18 */
        cr_assert_eq(rdss_parse_ici(&s, &c), 0);
        cr_assert_eq(c.id, 166166);
        cr_assert_eq(c.cls, 6);
        cr_assert_eq(c.interval_s, 40);
        cr_assert_eq(c.level, 3);
        cr_assert(!c.encrypted);
        parse("$BDICI,0000000,00000000,0000000,0,0,0,N,0*0B"); /* B15: no card */
        cr_assert_eq(rdss_parse_ici(&s, &c), 0);
        cr_assert_eq(c.id, 0);

        parse("$BDFKI,TXA,Y,Y,0,0040*17"); /* B18: accepted, 40 s */
        cr_assert_eq(rdss_parse_fki(&s, &k), 0);
        cr_assert(k.v21 && k.exec && k.freq_ok);
        cr_assert_str_eq(k.cmd, "TXA");
        cr_assert_eq(k.wait_s, 40);
        parse("$BDFKI,TXA,N,Y,0,0000*04"); /* B18: refused */
        cr_assert_eq(rdss_parse_fki(&s, &k), 0);
        cr_assert(!k.exec);
        cr_assert_eq(k.code, 0);

        parse("$BDTXR,1,0166166,1,,3132333433333335*46"); /* B18: the loopback */
        cr_assert_eq(rdss_parse_txr(&s, &m), 0);
        cr_assert_eq(m.from, 166166);
        cr_assert_eq(m.coding, 1);
        cr_assert_eq(rdss_hex_decode(b, sizeof(b), m.hex), 8);
        cr_assert_eq(memcmp(b, "12343335", 8), 0);
}

Test(rdss, bds3_beams_feedback)
{
        struct rdss_beams b;
        struct rdss_fki k;
        /* B2: firmware with a 4th value per beam (checksum computed: the capture in
         * the notes is quoted without its own) */
        char line[128];
        rdss_format(line, sizeof(line), "BDPWI,023628.00,00,04,2,51,44,0,4,50,43,0,11,43,36,0,16,51,44,0");
        parse(line);
        cr_assert_eq(rdss_parse_pwi(&s, 45, &b), 0);
        cr_assert(b.has_time);
        cr_assert_eq(b.n, 4);
        cr_assert_eq(b.best, 51);
        cr_assert_eq(b.above, 3);
        rdss_format(line, sizeof(line), "BDPWI,000000.00,00,00");
        parse(line);
        cr_assert_eq(rdss_parse_pwi(&s, 40, &b), 0);
        cr_assert(!b.has_time);
        cr_assert_eq(b.n, 0);

        parse("$BDFKI,101530,TCQ,N,1,45*50"); /* constructed: interval, 45 s left */
        cr_assert_eq(rdss_parse_fki(&s, &k), 0);
        cr_assert(!k.v21 && !k.exec);
        cr_assert_str_eq(k.cmd, "TCQ");
        cr_assert_eq(k.code, 1);
        cr_assert_eq(k.wait_s, 45);
        parse("$BDFKI,101530,TCQ,Y,0,0*77");
        cr_assert_eq(rdss_parse_fki(&s, &k), 0);
        cr_assert(k.exec);
}

Test(rdss, garbled_lines_are_refused)
{
        cr_assert_eq(rdss_parse("$BDFKI,TXA,Y,Y,0,0040*16", 24, &s), RDSS_E_CHECKSUM);
        cr_assert_eq(rdss_parse("$BDFKI,TXA,Y,Y,0,0040", 21, &s), RDSS_E_FORMAT);
        cr_assert_eq(rdss_parse("BDFKI,TXA,Y,Y,0,0040*17", 23, &s), RDSS_E_FORMAT);
        cr_assert_eq(rdss_parse("$BDFKI,TXA,Y\xff,0,0040*17", 23, &s), RDSS_E_BYTE);
        cr_assert_eq(rdss_parse("$BDF", 4, &s), RDSS_E_FORMAT);
        /* lowercase checksum digits are taken (the rule is the XOR) */
        cr_assert_eq(rdss_parse("$CCICA,0,00*7b", 14, &s), 0);
}

/* The frame sizes of README.md: [D] from the bit budgets of [B10]. */
Test(rdss, frame_bytes_per_card_level)
{
        cr_assert_eq(rdss_bytes_for_bits(rdss_v21_bits(3, false), true), 77); /* the notes' 77 B mixed */
        cr_assert_eq(rdss_bytes_for_bits(rdss_v21_bits(3, false), false), 78);
        cr_assert_eq(rdss_bytes_for_bits(rdss_v21_bits(2, false), true), 50);
        cr_assert_eq(rdss_bytes_for_bits(rdss_v21_bits(4, false), true), 105);
        cr_assert_eq(rdss_bytes_for_bits(rdss_v21_bits(1, false), true), 12);
        cr_assert_eq(rdss_bytes_for_bits(rdss_v21_bits(4, true), true), 209);
        cr_assert_eq(rdss_bytes_for_bits(rdss_bds3_bits(2), true), 124);
        cr_assert_eq(rdss_bytes_for_bits(rdss_bds3_bits(5), true), 1749);
        cr_assert_eq(rdss_v21_bits(5, false), 0);
}

/* The binary 4.0 set: [B12]'s test vector ($TXSQ, code "123abc") parses, and building
 * the same frame gives the same 21 bytes. */
Test(rdss, v40_txsq_vector)
{
        static const uint8_t v[] = { 0x24, 0x54, 0x58, 0x53, 0x51, 0x00, 0x15, 0x00, 0x00, 0x00, 0x46,
                                     0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x12, 0x3A, 0xBC, 0xF5 };
        struct rdss40 f;
        uint8_t out[64];
        cr_assert_eq(rdss40_parse(v, sizeof(v), &f), 21);
        cr_assert_str_eq(f.id, "TXSQ");
        cr_assert_eq(f.addr, 0);
        cr_assert_eq(f.blen, 10);
        cr_assert_eq(f.body[0], 0x46, "normal, code/mixed");
        cr_assert_eq(f.body[4] << 8 | f.body[5], 24, "bit length");
        cr_assert_eq(rdss40_build(out, sizeof(out), "TXSQ", 0, f.body, f.blen), 21);
        cr_assert_eq(memcmp(out, v, 21), 0);
        /* short: more bytes needed; a flipped byte: the XOR fails; not a frame */
        cr_assert_eq(rdss40_parse(v, 20, &f), 0);
        uint8_t bad[sizeof(v)];
        memcpy(bad, v, sizeof(v));
        bad[12] ^= 0x10;
        cr_assert_eq(rdss40_parse(bad, sizeof(bad), &f), RDSS_E_CHECKSUM);
        cr_assert_eq(rdss40_parse((const uint8_t *)"$txsq", 5, &f), RDSS_E_FORMAT);
        cr_assert_eq(rdss40_parse((const uint8_t *)"$TXSQ\x00\x05", 7, &f), RDSS_E_FORMAT, "a length below the header");
}
