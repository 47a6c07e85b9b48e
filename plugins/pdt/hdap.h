/* SPDX-License-Identifier: MIT */
/* Hytera HDAP PDUs as a PDT/DMR radio takes them over its USB network: TMP text messages, RRS registration, and frames as text. */
#ifndef KM_PDT_HDAP_H
#define KM_PDT_HDAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * An HDAP PDU (shared/protocols/equipment.md §3.1):
 *   [service | 0x80 reliable][opcode u16 BE][length u16 BE][payload][checksum][0x03]
 * checksum = ((sum of opcode .. payload) mod 256 XOR 0xFF) + 0x33, mod 256; the test
 * vector of dmr-kaitai ("OLIVER TEST", checksum 0x7A) is in the fuzz seeds.
 *
 * TMP (service 0x09): opcode = [flags][type], flags bit 7 = no ack wanted, type 0xA1
 * private message, 0xA2 its ack; payload = request id u32, destination radio IP u32,
 * source radio IP u32, then UTF-16LE text (a message) or a result byte (an ack).
 * RRS (service 0x11): opcode = [0x00][type], 0x03 registration, 0x80 its ack (result
 * u8, valid time u32 s), 0x02 online check, 0x82 its ack (result u8); payload starts
 * with the radio IP. A radio IP is the subnet byte then the 24-bit radio id.
 */

#define HDAP_RCP 0x02
#define HDAP_TMP 0x09
#define HDAP_RRS 0x11

#define TMP_PRIVATE 0xA1
#define TMP_PRIVATE_ACK 0xA2
#define TMP_NO_ACK 0x80 /* flags bit 7 */

#define RRS_REGISTER 0x03
#define RRS_REGISTER_ACK 0x80
#define RRS_DEREGISTER 0x01
#define RRS_CHECK 0x02
#define RRS_CHECK_ACK 0x82

#define HDAP_MAX 1500u
#define HDAP_OVERHEAD 7u /* service, opcode, length, checksum, end */

struct hdap {
        uint8_t service; /* without the reliable bit */
        bool reliable;
        uint8_t op_hi, op_lo; /* TMP: flags, type; RRS: 0, type */
        const uint8_t *payload;
        size_t len;
};

uint8_t hdap_checksum(const uint8_t *opcode_to_payload_end, size_t n);
/* Writes a PDU into out (cap bytes); returns its length or -EMSGSIZE. */
int hdap_encode(uint8_t *out, size_t cap, uint8_t service, bool reliable, uint8_t op_hi, uint8_t op_lo,
                const uint8_t *payload, size_t len);
/* Parses one datagram. Returns 0, or -EBADMSG with *why: short, length, checksum, end. */
int hdap_decode(const uint8_t *p, size_t n, struct hdap *out, const char **why);

static inline uint32_t radio_ip(uint8_t subnet, uint32_t id)
{
        return (uint32_t)subnet << 24 | (id & 0xFFFFFF);
}

/* TMP private message. A text of units UTF-16 code units (2*units bytes). */
struct tmp_msg {
        bool ack_wanted;
        uint8_t type;
        uint32_t req, dst, src;
        uint8_t result;        /* an ack's */
        const uint8_t *text;   /* UTF-16LE, a message's */
        size_t text_len;       /* bytes */
};
int tmp_decode(const struct hdap *h, struct tmp_msg *m, const char **why);
int tmp_encode(uint8_t *out, size_t cap, const struct tmp_msg *m);
const char *tmp_result_text(int result);

/*
 * A frame as text. A radio carries text, not bytes, so each UTF-16 code unit carries
 * 14 bits of the frame as a CJK ideograph (U+4E00 + v, v < 16384: printable on a
 * Chinese radio's screen, no control characters, no surrogates), after one unit that
 * gives the frame's length (U+4E00 + len). n bytes take 1 + ceil(8n/14) units.
 */
size_t text_units_for(size_t n);
/* The largest frame that fits text_max bytes of UTF-16LE text. */
size_t text_frame_max(size_t text_max);
/* Encodes frame into out (UTF-16LE); returns bytes written or -EMSGSIZE. */
int text_encode(const uint8_t *frame, size_t n, uint8_t *out, size_t cap);
/* Decodes; returns the frame length or -EBADMSG (not our text: an operator's message). */
int text_decode(const uint8_t *text, size_t len, uint8_t *frame, size_t cap);

#endif
