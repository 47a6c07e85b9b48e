/* SPDX-License-Identifier: MIT */
/* Hytera HRNP: the packet framing that carries HDAP PDUs over a radio's serial (accessory or programming) port. */
#ifndef KM_PDT_HRNP_H
#define KM_PDT_HRNP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plugins/pdt/hdap.h"

/*
 * A packet (shared/protocols/equipment.md §3.1; OK-DMR ok-dmrlib hrnp.py):
 *   7E | version (4; 3 seen too) | block | opcode | src | dst | pkt# u16 BE |
 *   length u16 BE (the whole packet, header included) | checksum u16 BE | data
 * The checksum is the RFC 1071 one's-complement sum of 16-bit big-endian words over
 * the whole packet with the checksum field zeroed (an odd byte padded with zero),
 * complemented; checked on the seven public vectors of ok-dmrlib's test_hrnp.py
 * (tests/fuzz/corpus/pdt_hrnp). The PC is 0x20 and the radio 0x10. The PC connects
 * (FE), the radio accepts (FD) or rejects (FC); data (00, an HDAP PDU) is answered by a
 * data ack (10) with the same packet number; either end may close (FB -> FA).
 */

#define HRNP_HDR 12u
#define HRNP_MAX (HRNP_HDR + HDAP_MAX)
#define HRNP_VERSION 0x04

#define HRNP_DATA 0x00
#define HRNP_DATA_ACK 0x10
#define HRNP_CLOSE_ACK 0xFA
#define HRNP_CLOSE 0xFB
#define HRNP_REJECT 0xFC
#define HRNP_ACCEPT 0xFD
#define HRNP_CONNECT 0xFE

#define HRNP_PC 0x20
#define HRNP_RADIO 0x10

struct hrnp_pkt {
        uint8_t version, block, opcode, src, dst;
        uint16_t pn;
        const uint8_t *data; /* into the deframer's buffer: valid until the next call */
        size_t len;
};

/* The checksum of a whole packet of n bytes, its checksum field taken as zero. */
uint16_t hrnp_checksum(const uint8_t *pkt, size_t n);
/* Writes a version-4 packet with data (len bytes, may be 0) into out; returns its
 * length or -EMSGSIZE. */
int hrnp_encode(uint8_t *out, size_t cap, uint8_t opcode, uint8_t src, uint8_t dst, uint16_t pn, const uint8_t *data,
                size_t len);

/*
 * The byte stream from the port as packets. Bytes before a 0x7E, a header that cannot
 * be one (version, length), a bad checksum, and a packet cut short (a gap of more than
 * HRNP_GAP_US inside one) are each one error; after an error the deframer resyncs on
 * the next 0x7E, and the junk up to it is part of the same error.
 */
#define HRNP_GAP_US 500000ull

struct hrnp_rx {
        uint8_t buf[HRNP_MAX];
        size_t n;
        uint64_t last_us;
        size_t taken; /* the packet handed out last, dropped at the next call */
        bool resync;  /* dropping bytes after an error: no new error until a 0x7E */
        bool cut;     /* a partial packet was dropped at a gap: say so once */
};

void hrnp_rx_reset(struct hrnp_rx *rx);
/* Takes up to n bytes read at now_us; returns how many it took (the rest: call
 * hrnp_rx_next until it says 0, then feed again). A gap before them drops a partial
 * packet (reported by the next hrnp_rx_next as "cut short"). */
size_t hrnp_rx_feed(struct hrnp_rx *rx, const uint8_t *p, size_t n, uint64_t now_us);
/* 1 and *pkt: a packet. 0: wants more bytes. -EBADMSG and *why: bytes dropped. */
int hrnp_rx_next(struct hrnp_rx *rx, struct hrnp_pkt *pkt, const char **why);

#endif
