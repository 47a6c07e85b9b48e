/* SPDX-License-Identifier: MIT */
/* The Iridium 9602/9603 AT response parser: bytes from the modem to lines, SBDRB blocks and parsed answers. */
#ifndef KM_SBD_AT_H
#define KM_SBD_AT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SBD_MO_MAX 340u   /* AT+SBDWB takes 1..340 bytes */
#define SBD_MT_MAX 270u   /* the largest MT message the 9602/9603 holds */
#define SBD_LINE_MAX 128u /* the longest answer is "-MSSTM: no network service" */

/*
 * The modem frames its answers "\r\n<text>\r\n" and echoes commands (until ATE0)
 * ending in "\r". Lines are cut at either byte and empty ones skipped, so echoes,
 * answers and unsolicited codes (SBDRING, +CIEV) all come out as one line each.
 *
 * AT+SBDRB answers with no framing at all: [len u16 BE][len bytes][sum u16 BE], then
 * "\r\nOK\r\n". The caller arms that with sbd_rx_expect_block() when it sends the
 * command. Until the first byte of the length arrives, a byte that cannot start a
 * length (anything but 0x00 or 0x01: len <= 270) is read as text, so an unsolicited
 * line the modem sent just before the command does not become a length.
 */

enum sbd_rx_event {
        SBD_RX_LINE,     /* a line (data, len): never contains \r or \n */
        SBD_RX_OVERLONG, /* a line longer than SBD_LINE_MAX, dropped whole */
        SBD_RX_BLOCK,    /* an SBDRB block (data, len) whose checksum matched */
        SBD_RX_BADBLOCK, /* an SBDRB block with a wrong checksum or a length over 270 */
};

typedef void (*sbd_rx_cb)(void *ud, enum sbd_rx_event ev, const uint8_t *data, size_t len);

struct sbd_rx {
        char line[SBD_LINE_MAX + 1];
        size_t llen;
        bool overlong;
        bool aborted;   /* sbd_rx_reset from inside cb: the feed stops */
        bool block;     /* an SBDRB block is expected or being read */
        size_t bhave;   /* bytes of the block so far, length and sum included */
        size_t bwant;   /* 2 + len + 2 once the length is known, else 0 */
        uint8_t buf[2 + SBD_MT_MAX + 2];
};

void sbd_rx_init(struct sbd_rx *rx);
/* The next bytes after any text are an SBDRB block. */
void sbd_rx_expect_block(struct sbd_rx *rx);
/* No block after all (the command ended without one). */
void sbd_rx_cancel_block(struct sbd_rx *rx);
/* Forget a partial line or block (the modem was reset, the port reopened); called
 * from cb, it also drops the rest of the bytes being fed. */
void sbd_rx_reset(struct sbd_rx *rx);
/* Feeds n bytes; cb is called once per event, in order. cb may call
 * sbd_rx_expect_block and sbd_rx_reset (a reset ends this feed). */
void sbd_rx_feed(struct sbd_rx *rx, const uint8_t *p, size_t n, sbd_rx_cb cb, void *ud);

enum sbd_kind {
        SBD_K_OK,
        SBD_K_ERROR,
        SBD_K_READY,   /* AT+SBDWB: send the bytes now */
        SBD_K_RESULT,  /* a bare number 0..99 (SBDWB, SBDD): v[0] */
        SBD_K_SBDIX,   /* v[0..5]: MO status, MOMSN, MT status, MTMSN, MT length, MT queued */
        SBD_K_CSQ,     /* v[0]: 0..5 */
        SBD_K_CIEV,    /* v[0]: 0 signal / 1 service, v[1]: its value */
        SBD_K_RING,    /* SBDRING */
        SBD_K_MSSTM,   /* v[0]: 1 and time set, 0 "no network service" */
        SBD_K_HWFAIL,  /* "HARDWARE FAILURE: <subsystem>, <error>": v[0], v[1] */
        SBD_K_ECHO,    /* a line starting "AT": the modem echoes (it was reset, or before ATE0) */
        SBD_K_INFO,    /* digits only longer than a result (IMEI) or a known informational text */
        SBD_K_BAD,     /* nothing a 9602/9603 says */
};

struct sbd_resp {
        enum sbd_kind kind;
        long v[6];
        uint32_t msstm; /* Iridium system time: 90 ms ticks since the Iridium epoch */
};

/* Parses one line (as SBD_RX_LINE hands it, no terminator). Returns r->kind. */
enum sbd_kind sbd_at_parse(const char *line, size_t len, struct sbd_resp *r);

/* The 2-byte checksum of AT+SBDWB and AT+SBDRB: the sum of the bytes mod 65536. */
uint16_t sbd_checksum(const uint8_t *p, size_t n);

/* What an SBDIX MO status means: its text, and the class the driver acts on. */
enum sbd_mo_class {
        SBD_MO_OK,        /* 0..4: the message went */
        SBD_MO_RETRY,     /* transient: the same MO again after a back-off */
        SBD_MO_DOWN,      /* the modem cannot reach the network until something changes */
        SBD_MO_FATAL,     /* this message can never go (12, 14): refuse it */
};
const char *sbd_mo_text(long status, enum sbd_mo_class *cls);

#endif
