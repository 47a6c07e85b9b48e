/* SPDX-License-Identifier: MIT */
/* The BeiDou RDSS ASCII sentence codec (BDS-3 and BDS-2 "2.1"), shared by beidou.so, its simulator and its fuzz target. */
#ifndef KM_RDSS_H
#define KM_RDSS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Pure functions, no state, no I/O: what arrives on the serial line is a peer's word
 * and every parser here takes any bytes (tests/fuzz/fuzz_rdss.c). The sentence rules
 * are those of /work/shared/protocols/equipment.md §1.1: "$" + talker + id + ","
 * fields + "*" + two hex digits (XOR of the bytes strictly between "$" and "*") +
 * CR LF.
 */

#define RDSS_LINE_MAX 4096 /* a BDS-3 level-5 message (1 750 B) is about 3 530 characters */
#define RDSS_FIELDS_MAX 128 /* a $BDPWI with 30 beams of 4 values */

enum rdss_err {
        RDSS_E_FORMAT = -1,   /* no "$", no "*hh", or a talker/id that is not letters */
        RDSS_E_CHECKSUM = -2, /* "*hh" does not match the bytes */
        RDSS_E_LONG = -3,     /* longer than RDSS_LINE_MAX */
        RDSS_E_FIELDS = -4,   /* more than RDSS_FIELDS_MAX fields */
        RDSS_E_BYTE = -5,     /* a byte that is not printable ASCII */
        RDSS_E_VALUE = -6,    /* a sentence of a known id whose fields do not parse */
};

/* One sentence split in place: f[i] points into buf. */
struct rdss_sentence {
        char talker[3]; /* "BD" (module to host) or "CC" (host to module) */
        char id[4];     /* "ICP", "PWI", "FKI" ... */
        char *f[RDSS_FIELDS_MAX];
        unsigned nf;
        char buf[RDSS_LINE_MAX + 1];
};

/* The XOR of n bytes: the sentence checksum. */
uint8_t rdss_xor(const char *p, size_t n);

/* Checks and splits one line (without or with its CR LF) of len bytes into s.
 * Returns 0 or an rdss_err. */
int rdss_parse(const char *line, size_t len, struct rdss_sentence *s);

/* What an rdss_err means, for logs. */
const char *rdss_strerror(int e);

/* Writes "$" + the printf-formatted body + "*hh\r\n" into out (NUL-terminated).
 * Returns the length without the NUL, or -1 when it does not fit in cap. */
int rdss_format(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int rdss_vformat(char *out, size_t cap, const char *fmt, va_list ap);

/* Bytes to uppercase hex (out needs 2n + 1); returns 2n. */
size_t rdss_hex_encode(char *out, const uint8_t *in, size_t n);
/* Hex (either case, even length) to bytes; returns the byte count or -1. */
ssize_t rdss_hex_decode(uint8_t *out, size_t cap, const char *hex);

/* What a card said about itself ($BDICP for BDS-3, $BDICI for 2.1). */
struct rdss_card {
        uint32_t id;         /* 0 = no card */
        unsigned cls;        /* 2.1: user class 0..7; BDS-3: field 4, user identity */
        unsigned interval_s; /* service interval (服务频度) */
        unsigned level;      /* communication level: 2.1 1..4, BDS-3 1..5 (0 on the wire = 5) */
        bool encrypted;      /* 2.1 field 7 */
        unsigned priority;   /* BDS-3 field 12 */
};

int rdss_parse_icp(const struct rdss_sentence *s, struct rdss_card *c);
int rdss_parse_ici(const struct rdss_sentence *s, struct rdss_card *c);

/* Beams: $BDPWI (BDS-3, S2C_d in dB-Hz) or $BDBSI (2.1, powers 0..4). */
struct rdss_beams {
        bool has_time;  /* BDS-3: PWI time is not 000000.00 (2.1: always true) */
        unsigned n;     /* beams listed */
        unsigned best;  /* largest S2C_d (BDS-3) or power (2.1) */
        unsigned above; /* beams at or above the threshold given */
};

int rdss_parse_pwi(const struct rdss_sentence *s, unsigned min_s2c, struct rdss_beams *b);
int rdss_parse_bsi(const struct rdss_sentence *s, unsigned min_power, struct rdss_beams *b);

/* $BDFKI in either dialect. BDS-3: $BDFKI,<time>,TCQ,<Y/N>,<reason>,<remaining>;
 * 2.1: $BDFKI,<cmd>,<exec Y/N>,<freq Y/N>,<suppress 0..3>,<wait mmss>. */
struct rdss_fki {
        bool v21;
        bool v40;        /* made by beidou.so from a 4.0 $FKXX: code is its flag */
        char cmd[8];     /* "TCQ", "TXA" ... */
        bool exec;       /* Y */
        bool freq_ok;    /* 2.1 field 3; true on BDS-3 */
        unsigned code;   /* BDS-3 reason 0..; 2.1 suppression 0..3 */
        unsigned wait_s; /* BDS-3 remaining; 2.1 mm*60+ss */
};

int rdss_parse_fki(const struct rdss_sentence *s, struct rdss_fki *k);

/* A received message: $BDTCI (BDS-3) or $BDTXR (2.1). hex points into s. */
struct rdss_msg {
        uint32_t from, to; /* to = 0 when the sentence does not say (TXR) */
        unsigned coding;   /* as on the wire: BDS-3 1..5, 2.1 0..2 */
        const char *hex;
};

int rdss_parse_tci(const struct rdss_sentence *s, struct rdss_msg *m);
int rdss_parse_txr(const struct rdss_sentence *s, struct rdss_msg *m);

/* A card number field: 1..8 decimal digits. Returns 0 or -1. */
int rdss_parse_card(const char *f, uint32_t *out);

/* Largest frame in bytes that a message of max_bits carries: mixed coding ("A4" + hex
 * of bytes) spends 8 bits on the marker, code coding none. */
unsigned rdss_bytes_for_bits(unsigned max_bits, bool mixed);

/* Bits a message may carry: 2.1 by level 1..4 (and encryption), BDS-3 by level 1..5.
 * 0 for a level outside the table. See README.md for where each number comes from. */
unsigned rdss_v21_bits(unsigned level, bool encrypted);
unsigned rdss_bds3_bits(unsigned level);

#endif

/* ---- the binary "4.0" set ($TXSQ/$FKXX/$TXXX/$ICJC/$GLJC) ------------------------
 * A frame: "$" + 4 ASCII letters + length u16 BE (the whole frame, "$" and checksum
 * included) + user address u24 BE + body + XOR of every byte before it (§1.4). */

#define RDSS40_HDR 10    /* "$", id, length, address */
#define RDSS40_MAX 1024  /* longest frame taken: a 1 680-bit TXSQ is 229 bytes */

struct rdss40 {
        char id[5];
        uint32_t addr;
        const uint8_t *body; /* into the buffer parsed */
        size_t blen;
};

/* One frame at buf[0] ("$"). Returns its length when it is whole and valid (*f set),
 * 0 when more bytes are needed, RDSS_E_CHECKSUM on a bad XOR, RDSS_E_FORMAT when buf
 * does not start a frame (the caller skips a byte and looks for the next "$"). */
ssize_t rdss40_parse(const uint8_t *buf, size_t n, struct rdss40 *f);

/* Builds a frame of id (4 letters) for addr around body; returns its length or -1. */
ssize_t rdss40_build(uint8_t *out, size_t cap, const char *id, uint32_t addr, const uint8_t *body, size_t blen);
