/* SPDX-License-Identifier: MIT */
/* Narrow-link frame codec: packs spooled messages into CRC-protected frames no larger than a link MTU, with fragmentation, acks and selective retransmission. */

/*
 * WIRE FORMAT, version 1. The command center must decode these for years:
 * never change the meaning of a field of version 1; add a version instead.
 * The CRC rule below is common to ALL versions so that a receiver always
 * checks the CRC before it looks at the version.
 *
 * Integers are big-endian. varint = unsigned LEB128 (7 bits per byte, low
 * group first, at most 10 bytes). zz = varint of a zigzag-coded signed value
 * ((v << 1) ^ (v >> 63)).
 *
 *   frame  = hdr:u8  origin:varint  body  crc
 *   hdr    = version:3 (bits 7-5, = 1) | type:2 (bits 4-3) | flags:3 (bits 2-0)
 *            type 0 DATA, 1 ACK, 2-3 reserved.
 *   crc    = CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection,
 *            check "123456789" = 0x29B1) when the whole frame is at most 256
 *            bytes, else CRC-32/ISO-HDLC (zlib crc32, check 0xCBF43926),
 *            over every byte before it. The length comes from the link
 *            (all three links deliver datagrams with their exact length).
 *
 *   DATA flags: bit 2 SYN (the sender has had no ack since it started: the
 *            receiver restarts the origin's state when the base differs from
 *            the SYN base it knows), bit 1 ACK (an ack tail is present),
 *            bit 0 reserved = 0.
 *   DATA body = seq:u16  back:u8  rec*  [acktail]
 *            A data frame without records is a PROBE: it takes a sequence
 *            number and is acknowledged, retransmitted and skipped like any
 *            other, so that an idle link can tell that its peer still hears
 *            it. Receivers built before probes refuse it as malformed, as
 *            version 1 receivers refuse version 2: upgrade centers first.
 *            back = seq - base, where base is the oldest frame the sender has
 *            not seen cumulatively acked (its window start); back < 64.
 *            A receiver waiting for a frame below base skips it: the sender
 *            abandoned it. A retransmitted frame carries the base (and
 *            SYN) of the moment it is sent again, records unchanged.
 *   acktail = acked_origin:varint  cum:u16  [ids  rlen:u8]  bitmap:nbm bytes  desc:u8
 *            desc = nbm:4 (bits 7-4, 0..8) | R:1 (bit 3) | olen:3 (1..5,
 *            bytes of acked_origin). With R, ids = 1..4 varint message ids
 *            taking rlen bytes (restart requests, see ACK).
 *            At the END so that a sender adds it only when the messages left
 *            room; the receiver finds it from the last byte.
 *
 *   ACK flags: bit 0 R (restart list present), bits 2-1 reserved = 0.
 *   ACK body = acked_origin:varint  cum:u16  [R: n:u8 (1..4)  n x id:varint]
 *            bitmap:0..8 bytes (to the crc)
 *            Frames up to cum are delivered; bit j of bitmap byte k (LSB
 *            first) says frame cum + 2 + 8k + j is held out of order.
 *            Restart ids name split messages whose start the receiver lost
 *            (it restarted or evicted the partial): the sender sends them
 *            again from the first fragment, and does not count them
 *            delivered when the frames of the lost attempt are acked.
 *
 *   rec    = rh:u8 ...
 *   rh     = frag:2 (bits 7-6: 0 whole, 1 first, 2 middle, 3 last fragment)
 *            | L:1 (bit 5, explicit length) | T:1 (bit 4, literal topic)
 *            | enc:2 (bits 3-2: 0 raw, 1 raw deflate RFC 1951,
 *                     2 compact position batch, 3 reserved) | 0:2
 *            Middle and last fragments have T = enc = 0.
 *   whole, first:
 *            meta:u8 = cls:3 (bits 7-5) | qos:2 (bits 4-3) | time:1 (bit 2) | 0:2
 *            id      (see below)
 *            [time]  first timed record of the frame: u24 = unix seconds
 *                    mod 2^24, resolved by the receiver against its clock
 *                    (up to 18 h ahead, 194 days back); later timed records:
 *                    zz seconds from the previous timed record.
 *            topic   T = 0: varint index into the dictionary agreed by config;
 *                    T = 1: varint n (1..512) + n bytes, no NUL.
 *            first only: total:varint = encoded payload bytes over all fragments
 *   middle, last: id
 *   id     = first record of the frame: varint; later ones: zz delta from the
 *            previous record's id.
 *   then   [L = 1: len:varint] data: len bytes, or, when L = 0, every byte
 *            up to the ack tail or crc (the frame's last record).
 *
 * Fragments of one message travel in increasing frame sequence and the
 * receiver processes frames in sequence order, so fragments need no offset:
 * the last fragment checks that exactly `total` bytes arrived.
 *
 * Fixed cost of a data frame: hdr 1 + origin 1 (ids < 128) + seq 2 + back 1
 * + crc 2 = 7 bytes at MTU <= 256 (9 above). A whole message adds rh 1 +
 * meta 1 + id (3 bytes up to 2M) + time 3 + topic index 1.
 *
 * WHY CRC-16 up to 256 bytes and CRC-32 above. All three links have their
 * own link CRC, so ours guards the end-to-end path (serial lines, hex and
 * UTF-16 conversions, modem buffers) where errors are rare. CRC-16/CCITT
 * keeps Hamming distance 4 up to 32751 bits, so every 1-3 bit error and
 * every burst up to 16 bits in a 256-byte frame is caught; a random error
 * slips through with p = 2^-16. At 77 bytes the 2 bytes saved are 2.6 % of
 * the frame. Above 256 bytes a frame carries more data that a bad frame
 * would corrupt, and two more bytes are under 0.8 %, so CRC-32 (p = 2^-32)
 * is worth it, and zlib, already linked, computes it.
 *
 * WHY a SYN flag and not a session byte: the sequence restarts at a random
 * value when the sender restarts; the receiver tells a new session from a
 * retransmission by the base carried in SYN frames (a clash needs the same
 * random 16-bit start) at the cost of one bit instead of one byte a frame.
 *
 * ACK SEMANTICS. cum releases frames at the sender and reports their
 * messages delivered. The bitmap only stops retransmission of frames the
 * receiver holds out of order: the sender keeps them until cum passes, so a
 * receiver may drop its out-of-order frames (memory, restart) without loss.
 * A split message is different: its first fragments are cum-acked long
 * before its last. When the receiver loses the partial (restart, eviction
 * for space) it lists the id as a restart request in every ack until the
 * first fragment comes again, or until the sender's base shows that the
 * sender has seen the request; the sender then neither reports the lost
 * attempt done nor forgets the message. So a message is lost only when
 * more than KM_FRAME_RESTART_MAX requests per origin pile up
 * (restarts_lost) or it is larger than the receiver's max_msg (oversize).
 *
 * PER-ORIGIN ORDER. Frames are delivered in sequence order; messages in a
 * frame in record order. A frame the sender abandons (km_frame_tx_reset)
 * is skipped when a later frame's base passes it.
 *
 * WIRE FORMAT, version 2 = version 1 (hdr version bits = 2) plus SLOTS.
 * Everything above holds, with these additions (bits reserved in 1):
 *
 *   rh bit 1 S: the record uses a slot. Whole records and last fragments
 *            only; on a last fragment R = Tr = 0 (the completed message
 *            defines slot k, and slot k is unknown if it does not complete).
 *   with S, after meta (last fragments: after rh):
 *            slot:u8 = R:1 (bit 7) | Tr:1 (bit 6) | k:6 (bits 5-0)
 *            R = 0: the record is as in version 1 and defines slot k.
 *            R = 1: the record refers to slot k's message and replaces it:
 *              its topic is that message's (no topic field, T = 0), its id
 *              is zz(id - slot id) even as the frame's first record, and
 *              enc 1 deflates against the slot's payload as the preset
 *              dictionary (zlib's deflateSetDictionary on the raw stream;
 *              no dictionary id on the wire: the slot names it).
 *            Tr = 1 (only with R and a timed record): time is zz seconds
 *              from the slot message's time instead of the frame's chain
 *              (it then continues the chain).
 *            After the record is delivered, slot k holds its id, time,
 *            topic and payload as delivered. A slot's topic is at most
 *            KM_FRAME_SLOT_TOPIC_MAX bytes, its payload at most
 *            KM_FRAME_SLOT_PAYLOAD_MAX; records with S stay within both.
 *   rh enc 3 (reserved in version 1, and refused as malformed by version 2
 *            receivers built before it had a meaning): a compact position
 *            batch (gateway/posrec.c) in raw deflate, as enc 1, so against
 *            the slot's payload when the record refers to a slot. It is
 *            delivered as the batch, like enc 2.
 *            A slot defined by a record of enc 2 or 3 holds the BATCH (for
 *            enc 3 inflated), whatever the receiver then hands its user
 *            (the center hands over the batch's position as JSON): the
 *            sender's view of the slot is the batch it sent, and the JSON
 *            is a function of the batch, so both ends agree without the
 *            sender having to predict the receiver's use of it.
 *   DATA flags bit 0 L (only with an ack tail), ACK flags bit 1 L: the ack
 *            says the receiver lost its slots for the acked origin.
 *
 * WHY slots. On a 77-byte frame a 64-byte reading cannot go whole in
 * version 1: the header, the 5-byte origin hash, an 8-byte id (spool ids
 * start from the clock in microseconds), 3 bytes of time and a topic take
 * more than the frame has left, and a reading deflated alone barely
 * shrinks. Readings on one topic repeat their keys and most digits, so
 * naming the previous one (1 byte) and deflating against it brings a
 * reading to a third or half of its size, and id and time deltas to a byte
 * or two. Stateless alternatives (a fixed JSON dictionary) only help
 * payloads that use the keys we guessed.
 *
 * WHY positions as batches (enc 2 and 3 from a sender with pos_batch). A
 * position message is canonical JSON of about 180 bytes (posrec's
 * km_posrec_to_json); deflated against the unit's previous one it still
 * takes about 36, because every digit after the fourth decimal moves. The
 * codec's one-position batch takes 32 (16 of them the absolute record,
 * the rest version, base time and the unit's name), and deflated against
 * the unit's previous batch about 18: unit entry, record byte and the high
 * bits of every field repeat (tests/bench/bench_frame: 25 bytes of frame a
 * position against 45 as JSON, 39 as the batch not deflated). The sender takes the smallest of the JSON
 * and the two batch forms, and a batch only when the payload is exactly
 * canonical position JSON whose values the codec keeps to its resolution
 * (km_posrec_json_batch); the receiver publishes km_posrec_to_json of the
 * decoded record, i.e. the JSON's record quantised (lat/lon 1e-5 deg, alt
 * 1 m, time 0.1 s, speed 0.1 m/s, heading 1 deg, battery 1 %). A batch
 * record never splits (it goes whole or waits for the next frame); a
 * position too large for any frame as a batch goes split, as JSON.
 *
 * WHY this is safe on a lossy link. Slots change only when a frame is
 * processed, and the receiver processes each origin's frames once, in
 * sequence order; so whatever frame refers to a slot sees the same
 * definition the sender saw when it wrote the frame, whether or not that
 * definition was acknowledged yet. Three things break that chain, and
 * each makes both ends forget their slots:
 *   - the sender abandons frames (km_frame_tx_reset): it forgets its
 *     slots; the receiver forgets its own when it skips a frame, and drops
 *     frames below the new base that name a slot it no longer holds;
 *   - the receiver loses its state (restart, origin eviction) or stops a
 *     frame half way (callback refusal, a payload that does not decode): it
 *     forgets its slots, leaves the frame naming an unknown slot
 *     undelivered and says L in its acks until a frame's base passes that
 *     frame; the sender answers the first L ack that covers no frame sent
 *     after its last answer by abandoning its window and forgetting its
 *     slots, and hands the abandoned messages back (restart callback);
 *   - a sender restart: SYN, the receiver forgets the origin.
 * A version 1 receiver refuses version 2 frames (bad_version): upgrade the
 * center first. The center answers each origin in the version it speaks.
 */

#include "frame.h"
#include "posrec.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Defaults for zero fields of the configs (see frame.h). */
#define DEF_MAX_ORIGINS 16
#define DEF_MAX_BUFFER (64u * 1024)
#define DEF_MAX_PARTIALS 8
#define DEF_MAX_PARTIAL_BYTES (256u * 1024)
#define DEF_MAX_MSG (128u * 1024)
#define DEF_DEFLATE_MIN 24

#define HDR_VER_SHIFT 5
#define HDR_TYPE_SHIFT 3
#define HDR_SYN 0x04
#define HDR_ACK 0x02

#define RH_FRAG_SHIFT 6
#define RH_L 0x20
#define RH_T 0x10
#define RH_ENC_SHIFT 2
#define RH_S 0x02          /* version 2 */

#define SLOT_R 0x80
#define SLOT_TR 0x40
#define SLOT_K 0x3f

#define HDR_DATA_LOST 0x01 /* version 2: the ack tail says slots lost */
#define HDR_ACK_LOST 0x02  /* version 2, ack frames */

#define META_TIME 0x04

enum { FRAG_WHOLE = 0, FRAG_FIRST = 1, FRAG_MIDDLE = 2, FRAG_LAST = 3 };
enum { CODE_RAW = 0, CODE_DEFLATE = 1, CODE_POSBATCH = 2, CODE_ZPOSBATCH = 3 };

/* The receiver indexes out-of-order frames by seq mod this (it does not
 * know the sender's window, only its upper bound). */
#define RX_SLOTS KM_FRAME_WINDOW_MAX
#define PREFIX_MAX (2 + 10 + 10 + 5 + KM_FRAME_TOPIC_MAX + 10 + 10)
#define TIME_MOD (1 << 24)
#define TIME_AHEAD 65536 /* seconds of sender clock lead we accept */
/* Times above NOW_MAX ms (year 37648) are sent as unknown, so a delta
 * between two sent times stays within TIME_DELTA_MAX seconds, and with at
 * most KM_FRAME_RECS_MAX records t * 1000 stays far from overflow. */
#define NOW_MAX (1LL << 50)
#define TIME_DELTA_MAX (1LL << 41)
/* A slot carries its message's time into later frames (Tr), so deltas can
 * add up across frames without the bound above: a decoded time (seconds)
 * beyond this is no sender's (they stay within NOW_MAX, plus one 2^24 s
 * epoch of the first record's resolution), and stopping there keeps t and
 * t * 1000 far from overflow. */
#define TIME_LIMIT (4 * (NOW_MAX / 1000))
/* Encoded size of a slot message: deflate of at most a slot's payload,
 * with zlib's worst case for stored blocks. */
#define SLOT_ENC_MAX (KM_FRAME_SLOT_PAYLOAD_MAX + 64)
/* Internal: a record names a slot the receiver does not hold. */
#define E_SLOT ESTALE

/* One slot (version 2): the last message of a topic, as the receiver
 * delivered it. The sender keeps its view of the receiver's slots. */
struct km_frame_ref {
	bool used, timed;
	uint64_t id;
	int64_t t;             /* unix seconds when timed */
	uint64_t stamp;        /* tx: last use, for LRU */
	uint32_t topic_idx;    /* rx: dictionary index, UINT32_MAX = literal */
	size_t len;
	uint8_t data[KM_FRAME_SLOT_PAYLOAD_MAX];
	char topic[KM_FRAME_SLOT_TOPIC_MAX + 1];
};

struct km_frame_rx_origin {
	bool used;
	uint32_t id;
	bool syn_known;
	uint16_t syn_base;
	uint16_t next;       /* first frame not yet delivered */
	uint64_t seen;       /* rx tick when last heard */
	uint8_t version;     /* of its last data frame: we ack in it */
	bool slots_lost;     /* say L in acks until a base passes lost_seq */
	uint16_t lost_seq;
	struct km_frame_ref *slots;   /* KM_FRAME_SLOTS, owned, made on first use */
	struct {
		bool used;
		uint16_t seq;
		uint8_t version;
		size_t len;
		uint8_t *buf;    /* records region only, owned */
	} ahead[RX_SLOTS];
};

struct km_frame_partial {
	bool used;
	uint32_t origin;
	uint64_t id;
	uint64_t age;
	uint8_t cls, qos, code;
	int64_t created_ms;
	uint32_t topic_idx;
	char *topic;         /* owned copy of a literal topic, else NULL */
	size_t total, got;
	uint8_t *buf;        /* owned, total bytes */
};

/* ---- CRC ---- */

uint16_t km_frame_crc16(const uint8_t *p, size_t n)
{
	/* Nibble table: 32 bytes of rodata instead of 512, fast enough for
	 * frames of at most 256 bytes (larger ones use zlib's CRC-32). */
	static const uint16_t t[16] = {
		0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7,
		0x8108, 0x9129, 0xa14a, 0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef,
	};
	uint16_t crc = 0xffff;

	for (size_t i = 0; i < n; i++) {
		crc = (uint16_t)((crc << 4) ^ t[(crc >> 12) ^ (p[i] >> 4)]);
		crc = (uint16_t)((crc << 4) ^ t[(crc >> 12) ^ (p[i] & 0x0f)]);
	}
	return crc;
}

static size_t crc_size(size_t frame_len)
{
	return frame_len <= KM_FRAME_CRC16_MAX ? 2 : 4;
}

/* Append the CRC to body[0..n); returns the frame length. The CRC kind
 * follows the final length, which the caller's budget already allowed. */
static size_t crc_append(uint8_t *p, size_t n)
{
	if (n + 2 <= KM_FRAME_CRC16_MAX) {
		uint16_t c = km_frame_crc16(p, n);
		p[n] = (uint8_t)(c >> 8);
		p[n + 1] = (uint8_t)c;
		return n + 2;
	}
	uLong c = crc32(0L, p, (uInt)n);
	p[n] = (uint8_t)(c >> 24);
	p[n + 1] = (uint8_t)(c >> 16);
	p[n + 2] = (uint8_t)(c >> 8);
	p[n + 3] = (uint8_t)c;
	return n + 4;
}

size_t km_frame_crc_append(uint8_t *p, size_t n)
{
	return crc_append(p, n);
}

static bool crc_ok(const uint8_t *p, size_t len)
{
	size_t k = crc_size(len);

	if (len < k + 1)
		return false;
	size_t n = len - k;
	if (k == 2)
		return km_frame_crc16(p, n) == (uint16_t)((p[n] << 8) | p[n + 1]);
	uint32_t want = ((uint32_t)p[n] << 24) | ((uint32_t)p[n + 1] << 16) |
			((uint32_t)p[n + 2] << 8) | p[n + 3];
	return (uint32_t)crc32(0L, p, (uInt)n) == want;
}

/* ---- byte writer and reader ---- */

struct wbuf {
	uint8_t *p;
	size_t pos, cap;
	bool err;            /* sticky: a put past cap */
};

static void put_u8(struct wbuf *w, uint8_t v)
{
	if (w->pos >= w->cap) {
		w->err = true;
		return;
	}
	w->p[w->pos++] = v;
}

static void put_u16(struct wbuf *w, uint16_t v)
{
	put_u8(w, (uint8_t)(v >> 8));
	put_u8(w, (uint8_t)v);
}

static void put_varint(struct wbuf *w, uint64_t v)
{
	while (v >= 0x80) {
		put_u8(w, (uint8_t)(v | 0x80));
		v >>= 7;
	}
	put_u8(w, (uint8_t)v);
}

static void put_bytes(struct wbuf *w, const void *src, size_t n)
{
	if (n > w->cap - w->pos) {
		w->err = true;
		return;
	}
	if (n)
		memcpy(w->p + w->pos, src, n);
	w->pos += n;
}

static size_t varint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static uint64_t zz_enc(int64_t v)
{
	return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static int64_t zz_dec(uint64_t v)
{
	/* Through unsigned: no signed overflow whatever the wire says. */
	return (int64_t)((v >> 1) ^ (~(v & 1) + 1));
}

struct rbuf {
	const uint8_t *p;
	size_t pos, len;
	bool err;            /* sticky: a read past len or a bad varint */
};

static uint8_t get_u8(struct rbuf *r)
{
	if (r->pos >= r->len) {
		r->err = true;
		return 0;
	}
	return r->p[r->pos++];
}

static uint16_t get_u16(struct rbuf *r)
{
	uint16_t hi = get_u8(r);
	return (uint16_t)((hi << 8) | get_u8(r));
}

static uint32_t get_u24(struct rbuf *r)
{
	uint32_t v = (uint32_t)get_u8(r) << 16;
	v |= (uint32_t)get_u8(r) << 8;
	return v | get_u8(r);
}

static uint64_t get_varint(struct rbuf *r)
{
	uint64_t v = 0;

	for (unsigned shift = 0; shift < 64; shift += 7) {
		uint8_t b = get_u8(r);
		if (shift == 63 && b > 1)
			break;   /* more than 64 bits */
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return v;
		if (r->err)
			return 0;
	}
	r->err = true;
	return 0;
}

static const uint8_t *get_bytes(struct rbuf *r, size_t n)
{
	if (n > r->len - r->pos) {
		r->err = true;
		return NULL;
	}
	const uint8_t *p = r->p + r->pos;
	r->pos += n;
	return p;
}

/* ---- JSON compaction ---- */

static bool json_ws(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Characters of JSON literals (numbers, true, false, null). Whitespace
 * between two of them is never insignificant JSON, so we refuse it. */
static bool json_word(uint8_t c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z') || c == '.' || c == '-' || c == '+';
}

int km_frame_json_compact(const uint8_t *in, size_t len, uint8_t *out)
{
	size_t o = 0, i = 0;
	long depth = 0;
	bool str = false, esc = false, gap = false;

	while (i < len && json_ws(in[i]))
		i++;
	if (i == len || (in[i] != '{' && in[i] != '['))
		return -EINVAL;
	for (; i < len; i++) {
		uint8_t c = in[i];
		if (str) {
			out[o++] = c;
			if (esc)
				esc = false;
			else if (c == '\\')
				esc = true;
			else if (c == '"')
				str = false;
			continue;
		}
		if (json_ws(c)) {
			gap = true;
			continue;
		}
		if (depth == 0 && o > 0)
			return -EINVAL;   /* something after the top value */
		if (gap && o > 0 && json_word(out[o - 1]) && json_word(c))
			return -EINVAL;
		gap = false;
		if (c == '"')
			str = true;
		else if (c == '{' || c == '[')
			depth++;
		else if (c == '}' || c == ']')
			depth--;
		if (depth < 0)
			return -EINVAL;
		out[o++] = c;
	}
	if (str || depth != 0)
		return -EINVAL;
	return (int)o;
}

/* ---- sender ---- */

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
	if (need <= *cap)
		return 0;
	uint8_t *p = realloc(*buf, need);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = need;
	return 0;
}

int km_frame_tx_init(struct km_frame_tx *tx, const struct km_frame_tx_cfg *cfg)
{
	memset(tx, 0, sizeof(*tx));
	tx->cfg = *cfg;
	if (!tx->cfg.window)
		tx->cfg.window = KM_FRAME_WINDOW_MAX;
	if (!tx->cfg.deflate_min)
		tx->cfg.deflate_min = DEF_DEFLATE_MIN;
	if (!tx->cfg.version)
		tx->cfg.version = 1;
	if (tx->cfg.window > KM_FRAME_WINDOW_MAX || tx->cfg.version > KM_FRAME_VERSION ||
	    tx->cfg.mtu_max < KM_FRAME_MTU_MIN || tx->cfg.mtu_max > KM_FRAME_MTU_MAX)
		return -EINVAL;
	if (tx->cfg.version >= 2 && !(tx->ref = calloc(KM_FRAME_SLOTS, sizeof(*tx->ref))))
		return -ENOMEM;
	tx->next_seq = cfg->first_seq;
	/* Level 9: CPU is cheap next to a 1 kbit/s link. Raw deflate: no zlib
	 * header or Adler-32, our CRC covers the bytes. */
	if (deflateInit2(&tx->zs, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
		free(tx->ref);
		tx->ref = NULL;
		return -ENOMEM;
	}
	tx->zs_ok = true;
	return 0;
}

void km_frame_tx_deinit(struct km_frame_tx *tx)
{
	for (unsigned i = 0; i < KM_FRAME_WINDOW_MAX; i++) {
		free(tx->slot[i].buf);
		free(tx->slot[i].done);
		tx->slot[i].buf = NULL;
		tx->slot[i].done = NULL;
	}
	if (tx->zs_ok)
		deflateEnd(&tx->zs);
	tx->zs_ok = false;
	free(tx->enc_buf);
	free(tx->cbuf);
	free(tx->ref);
	tx->ref = NULL;
	tx->enc_buf = tx->cbuf = NULL;
	tx->enc_cap = tx->cbuf_cap = 0;
}

/* Deflate src into enc_buf; returns the compressed size or 0 when zlib
 * fails (then the caller sends the bytes as they are). */
static size_t deflate_into(struct km_frame_tx *tx, const uint8_t *src, size_t n)
{
	if (deflateReset(&tx->zs) != Z_OK)
		return 0;
	tx->zs.next_in = (Bytef *)(uintptr_t)src;
	tx->zs.avail_in = (uInt)n;
	tx->zs.next_out = tx->enc_buf;
	tx->zs.avail_out = (uInt)tx->enc_cap;
	if (deflate(&tx->zs, Z_FINISH) != Z_STREAM_END)
		return 0;
	return tx->enc_cap - tx->zs.avail_out;
}

/*
 * Work out the bytes that represent m's payload on the wire and their
 * encoding. The result must be the same on every call for one message,
 * because a split message is continued at frag_off of this form: zlib is
 * deterministic for the same input and settings, and the last result is
 * cached so that continuing a 10 KB message does not deflate it again.
 */
static int prepare(struct km_frame_tx *tx, const struct km_frame_msg *m,
		   const uint8_t **data, size_t *len, uint8_t *code)
{
	if (m->enc == KM_FRAME_ENC_RAW || m->enc == KM_FRAME_ENC_POSBATCH) {
		*data = m->payload;
		*len = m->len;
		*code = m->enc == KM_FRAME_ENC_RAW ? CODE_RAW : CODE_POSBATCH;
		return 0;
	}
	if (tx->cache_ok && tx->cache_id == m->id && tx->cache_len == m->len &&
	    tx->cache_src == m->payload)
		goto done;
	tx->cache_ok = false;
	const uint8_t *src = m->payload;
	size_t n = m->len;
	if (grow(&tx->cbuf, &tx->cbuf_cap, n + 1) ||
	    grow(&tx->enc_buf, &tx->enc_cap, deflateBound(&tx->zs, n) + n + 16))
		return -ENOMEM;
	if (!tx->cfg.no_compact_json && n) {
		int c = km_frame_json_compact(src, n, tx->cbuf);
		if (c >= 0) {
			src = tx->cbuf;
			n = (size_t)c;
		}
	}
	size_t z = n >= tx->cfg.deflate_min ? deflate_into(tx, src, n) : 0;
	if (z && z < n) {
		tx->enc_len = z;
		tx->enc_code = CODE_DEFLATE;
	} else {
		if (n)
			memcpy(tx->enc_buf, src, n);
		tx->enc_len = n;
		tx->enc_code = CODE_RAW;
	}
	tx->cache_ok = true;
	tx->cache_id = m->id;
	tx->cache_len = m->len;
	tx->cache_src = m->payload;
done:
	*data = tx->enc_buf;
	*len = tx->enc_len;
	*code = tx->enc_code;
	return 0;
}

/* Frame-wide state of the record writer: ids and times chain from one
 * record to the next. */
struct enc {
	struct wbuf w;
	size_t head_len;      /* bytes before the first record */
	unsigned nrec;
	uint64_t prev_id;
	bool have_t;
	int64_t prev_t;
	size_t last_rh;       /* position of the last record's rh */
	size_t last_lpos;     /* position of its len varint, 0 = none */
	size_t last_llen;
	uint64_t touched;     /* slots (re)defined in this frame */
};

static bool msg_ok(const struct km_frame_msg *m)
{
	return m->cls <= 7 && m->qos <= 2 && m->enc <= KM_FRAME_ENC_POSBATCH &&
	       (!m->len || m->payload);
}

static bool msg_timed(const struct km_frame_msg *m)
{
	return m->created_ms > 0 && m->created_ms <= NOW_MAX;
}

/* How m's topic goes on the wire: dictionary index or literal bytes. */
struct topic_ref {
	bool lit;
	uint64_t idx;
	const char *s;
	size_t n;
};

static int topic_ref(const struct km_frame_tx *tx, const char *topic,
		     struct topic_ref *t)
{
	const struct km_frame_dict *d = tx->cfg.dict;

	if (!topic)
		return -EINVAL;
	for (size_t i = 0; d && i < d->n; i++) {
		if (d->topics[i] && !strcmp(d->topics[i], topic)) {
			*t = (struct topic_ref){ .lit = false, .idx = i };
			return 0;
		}
	}
	size_t n = strlen(topic);
	if (n == 0 || n > KM_FRAME_TOPIC_MAX)
		return -EINVAL;
	*t = (struct topic_ref){ .lit = true, .s = topic, .n = n };
	return 0;
}

/* How a whole record uses a slot (version 2); NULL for none. */
struct slot_use {
	unsigned k;
	const struct km_frame_ref *ref;   /* R: the slot's message, else NULL */
	bool trel;                        /* Tr */
};

/*
 * Build the record prefix (rh up to, not including, the len varint) into
 * tmp for a record of kind frag; returns its size. Ids and times are coded
 * against e's chain (or slot su) but e is not changed: the caller may still
 * decide the record does not fit.
 */
static size_t build_prefix(const struct enc *e, const struct km_frame_msg *m,
			   const struct topic_ref *t, int frag, uint8_t code,
			   size_t total, const struct slot_use *su, uint8_t *tmp)
{
	struct wbuf w = { .p = tmp, .cap = PREFIX_MAX };
	bool head = frag == FRAG_WHOLE || frag == FRAG_FIRST;
	uint8_t rh = (uint8_t)(frag << RH_FRAG_SHIFT);
	const struct km_frame_ref *ref = su ? su->ref : NULL;

	if (head)
		rh |= (uint8_t)((t->lit && !ref ? RH_T : 0) | (code << RH_ENC_SHIFT));
	if (su)
		rh |= RH_S;
	put_u8(&w, rh);
	bool timed = head && msg_timed(m);
	if (head)
		put_u8(&w, (uint8_t)((m->cls << 5) | (m->qos << 3) |
				     (timed ? META_TIME : 0)));
	if (su)
		put_u8(&w, (uint8_t)((ref ? SLOT_R : 0) | (su->trel ? SLOT_TR : 0) | su->k));
	if (ref)
		put_varint(&w, zz_enc((int64_t)(m->id - ref->id)));
	else if (e->nrec == 0)
		put_varint(&w, m->id);
	else
		put_varint(&w, zz_enc((int64_t)(m->id - e->prev_id)));
	if (timed) {
		int64_t s = m->created_ms / 1000;
		if (su && su->trel) {
			put_varint(&w, zz_enc(s - ref->t));
		} else if (!e->have_t) {
			uint32_t v = (uint32_t)(s % TIME_MOD);
			put_u8(&w, (uint8_t)(v >> 16));
			put_u16(&w, (uint16_t)v);
		} else {
			put_varint(&w, zz_enc(s - e->prev_t));
		}
	}
	if (head && ref) {
		/* the slot's topic */
	} else if (head && t->lit) {
		put_varint(&w, t->n);
		put_bytes(&w, t->s, t->n);
	} else if (head) {
		put_varint(&w, t->idx);
	}
	if (frag == FRAG_FIRST)
		put_varint(&w, total);
	return w.pos;
}

/* Append one record: prefix, optional len, data. Advances e's chains. */
static void put_record(struct enc *e, const struct km_frame_msg *m, int frag,
		       const uint8_t *tmp, size_t plen, bool with_len,
		       const uint8_t *data, size_t n)
{
	size_t rh = e->w.pos;

	put_bytes(&e->w, tmp, plen);
	e->last_rh = rh;
	e->last_lpos = 0;
	if (with_len) {
		e->w.p[rh] |= RH_L;
		e->last_lpos = e->w.pos;
		e->last_llen = varint_len(n);
		put_varint(&e->w, n);
	}
	put_bytes(&e->w, data, n);
	e->nrec++;
	e->prev_id = m->id;
	if ((frag == FRAG_WHOLE || frag == FRAG_FIRST) && msg_timed(m)) {
		e->have_t = true;
		e->prev_t = m->created_ms / 1000;
	}
}

/* The last record of a frame runs to the end: drop its length varint. */
static void strip_last_len(struct enc *e)
{
	if (!e->nrec || !e->last_lpos)
		return;
	size_t from = e->last_lpos + e->last_llen;
	memmove(e->w.p + e->last_lpos, e->w.p + from, e->w.pos - from);
	e->w.pos -= e->last_llen;
	e->w.p[e->last_rh] &= (uint8_t)~RH_L;
}

/* Outcome of placing one message in the frame being built. */
enum place { PLACED = 0, PLACED_STOP = 1, NO_ROOM = 2, NEED_SPLIT = 3 };

/* ---- slots (version 2) ---- */

/* The payload as the receiver will deliver it (compacted JSON under AUTO),
 * into out (KM_FRAME_SLOT_PAYLOAD_MAX bytes); the caller checked m->len. */
static size_t plain_form(const struct km_frame_tx *tx, const struct km_frame_msg *m,
			 uint8_t *out)
{
	bool auto_enc = m->enc == KM_FRAME_ENC_AUTO || m->enc == KM_FRAME_ENC_DEFLATE;
	int c = auto_enc && !tx->cfg.no_compact_json && m->len ?
		km_frame_json_compact(m->payload, m->len, out) : -EINVAL;

	if (c >= 0)
		return (size_t)c;
	if (m->len)
		memcpy(out, m->payload, m->len);
	return m->len;
}

/* Deflate src against dict (may be NULL) into out (SLOT_ENC_MAX); returns
 * the size, or 0 when zlib fails or it would not be smaller. */
static size_t deflate_slot(struct km_frame_tx *tx, const uint8_t *dict, size_t dlen,
			   const uint8_t *src, size_t n, uint8_t *out)
{
	if (deflateReset(&tx->zs) != Z_OK)
		return 0;
	if (dict && dlen && deflateSetDictionary(&tx->zs, dict, (uInt)dlen) != Z_OK)
		return 0;
	tx->zs.next_in = (Bytef *)(uintptr_t)src;
	tx->zs.avail_in = (uInt)n;
	tx->zs.next_out = out;
	tx->zs.avail_out = SLOT_ENC_MAX;
	if (deflate(&tx->zs, Z_FINISH) != Z_STREAM_END)
		return 0;
	size_t z = SLOT_ENC_MAX - tx->zs.avail_out;
	return z < n ? z : 0;
}

/* The receiver's slot k now holds m as it will deliver it (plain). */
static void slot_define(struct km_frame_tx *tx, struct enc *e, unsigned k,
			const struct km_frame_msg *m, const uint8_t *plain, size_t plen)
{
	struct km_frame_ref *r = &tx->ref[k];

	r->used = true;
	r->timed = msg_timed(m);
	r->t = m->created_ms / 1000;
	r->id = m->id;
	r->stamp = ++tx->ref_clock;
	r->len = plen;
	memcpy(r->data, plain, plen);
	memcpy(r->topic, m->topic, strlen(m->topic) + 1);
	e->touched |= 1ULL << k;
}

/* Whether m may live in a slot (version 2): bounded topic and payload. */
static bool slot_fits(const struct km_frame_tx *tx, const struct km_frame_msg *m)
{
	return tx->ref && m->topic && m->topic[0] && m->len <= KM_FRAME_SLOT_PAYLOAD_MAX &&
	       strlen(m->topic) <= KM_FRAME_SLOT_TOPIC_MAX;
}

/* The slot for topic: the one holding it (hit), else a free or the least
 * recently used one. */
static unsigned slot_for(const struct km_frame_tx *tx, const char *topic, bool *hit)
{
	unsigned pick = 0;

	*hit = false;
	for (unsigned k = 0; k < KM_FRAME_SLOTS; k++) {
		const struct km_frame_ref *r = &tx->ref[k];
		if (r->used && !strcmp(r->topic, topic)) {
			*hit = true;
			return k;
		}
		if (tx->ref[pick].used && (!r->used || r->stamp < tx->ref[pick].stamp))
			pick = k;
	}
	return pick;
}

/* A position message's batch form (version 2, cfg.pos_batch): its bytes as
 * the receiver delivers them and its slot holds, and the smaller of the
 * batch as it is and deflated (against the slot's payload on a hit). */
struct pos_form {
	uint8_t batch[KM_FRAME_SLOT_PAYLOAD_MAX];
	size_t blen;
	uint8_t z[SLOT_ENC_MAX];
	const uint8_t *data;
	size_t len;
	uint8_t code;
};

/* Whether m's payload, compacted (plain), is canonical position JSON the
 * codec keeps to its resolution (km_posrec_json_batch), filling *f; false
 * leaves m as JSON. */
static bool pos_form(struct km_frame_tx *tx, const struct km_frame_msg *m,
		     const uint8_t *plain, size_t plen, const struct km_frame_ref *ref,
		     struct pos_form *f)
{
	if (!tx->cfg.pos_batch || (m->enc != KM_FRAME_ENC_AUTO && m->enc != KM_FRAME_ENC_DEFLATE) ||
	    plen < 2 || plain[0] != '{')
		return false;
	int n = km_posrec_json_batch(plain, plen, f->batch, sizeof(f->batch));
	if (n <= 0)
		return false;
	f->blen = (size_t)n;
	f->data = f->batch;
	f->len = f->blen;
	f->code = CODE_POSBATCH;
	size_t z = deflate_slot(tx, ref ? ref->data : NULL, ref ? ref->len : 0, f->batch, f->blen, f->z);
	if (z) {
		f->data = f->z;
		f->len = z;
		f->code = CODE_ZPOSBATCH;
	}
	return true;
}

/*
 * Version 2: put m whole as a slot record, naming the slot of its topic when
 * there is one. Returns PLACED, PLACED_STOP, NO_ROOM (fits the next frame),
 * NEED_SPLIT (too large for any frame as a whole record: the caller sends it
 * as in version 1, because continuing fragments must re-encode to the same
 * bytes and a slot may change in between) or a negative errno.
 */
static int place_slot(struct km_frame_tx *tx, struct enc *e, const struct km_frame_msg *m)
{
	uint8_t plain[KM_FRAME_SLOT_PAYLOAD_MAX], zbuf[SLOT_ENC_MAX], tmp[PREFIX_MAX];
	struct pos_form pf;
	struct topic_ref t = { 0 };
	bool hit;
	unsigned k = slot_for(tx, m->topic, &hit);
	struct km_frame_ref *r = &tx->ref[k];
	struct slot_use su = { .k = k, .ref = hit ? r : NULL,
			       .trel = hit && r->timed && msg_timed(m) };
	size_t plen = plain_form(tx, m, plain);
	const uint8_t *data = plain, *held = plain;
	size_t len = plen;
	uint8_t code = m->enc == KM_FRAME_ENC_POSBATCH ? CODE_POSBATCH : CODE_RAW;
	int rc;

	if (!hit && (rc = topic_ref(tx, m->topic, &t)))
		return rc;
	if (m->enc == KM_FRAME_ENC_AUTO || m->enc == KM_FRAME_ENC_DEFLATE) {
		/* Against a slot even a short reading shrinks; alone, only
		 * from deflate_min. */
		size_t z = hit || plen >= tx->cfg.deflate_min ?
			   deflate_slot(tx, hit ? r->data : NULL, hit ? r->len : 0, plain, plen, zbuf) : 0;
		if (z) {
			data = zbuf;
			len = z;
			code = CODE_DEFLATE;
		}
	}
	/* A position goes as a batch only when that is smaller than its JSON
	 * as the slots make it: the batch is quantised, JSON is not. */
	bool as_batch = pos_form(tx, m, plain, plen, hit ? r : NULL, &pf) && pf.len < len;
	if (as_batch) {
		data = pf.data;
		len = pf.len;
		code = pf.code;
		held = pf.batch;
		plen = pf.blen;
	}
	size_t pl = build_prefix(e, m, &t, FRAG_WHOLE, code, len, &su, tmp);
	size_t room = e->w.cap - e->w.pos;
	bool wl = pl + varint_len(len) + len <= room;

	if (!wl && pl + len > room)
		return pl + len <= e->w.cap - e->head_len ? NO_ROOM : NEED_SPLIT;
	put_record(e, m, FRAG_WHOLE, tmp, pl, wl, data, len);
	slot_define(tx, e, k, m, held, plen);
	if (hit)
		tx->slot_refs++;
	if (as_batch)
		tx->pos_batches++;
	return wl ? PLACED : PLACED_STOP;
}

/*
 * Put as much of m as the rules allow: the rest of a split message, a whole
 * message, or the first part of a message too large for any frame of this
 * MTU. A message that would fit a fresh frame is never split, so loss of
 * one frame never costs two frames' worth of a small message.
 */
static int place_msg(struct km_frame_tx *tx, struct enc *e,
		     const struct km_frame_msg *m, size_t *sent_to, size_t *full)
{
	uint8_t tmp[PREFIX_MAX];
	struct topic_ref t = { 0 };
	const uint8_t *data;
	size_t len;
	uint8_t code;
	int rc;

	if (!msg_ok(m))
		return -EINVAL;
	if (m->frag_off == 0 && slot_fits(tx, m)) {
		rc = place_slot(tx, e, m);
		if (rc < 0 || rc == NO_ROOM)
			return rc;
		if (rc != NEED_SPLIT) {
			*sent_to = *full = 1;
			return rc;
		}
	}
	if ((rc = prepare(tx, m, &data, &len, &code)))
		return rc;
	if (m->frag_off == 0 && (rc = topic_ref(tx, m->topic, &t)))
		return rc;
	if (m->frag_off && m->frag_off >= len)
		return -EINVAL;
	*full = len;
	size_t room = e->w.cap - e->w.pos;
	size_t off = m->frag_off, rest = len - off;
	int frag = off ? FRAG_LAST : FRAG_WHOLE;
	/* Version 2: a split message small enough for a slot defines one with
	 * its last fragment (it was encoded without one, so every fragment
	 * re-encodes to the same bytes). */
	bool hit;
	struct slot_use su = { 0 };
	bool def = frag == FRAG_LAST && slot_fits(tx, m);
	if (def)
		su.k = slot_for(tx, m->topic, &hit);
	size_t pl = build_prefix(e, m, &t, frag, code, len, def ? &su : NULL, tmp);

	if (def && pl + rest > room) {
		/* The slot byte is what does not fit: end the message here without
		 * defining a slot rather than send a middle fragment that holds all
		 * the rest (its receiver would wait for a last one forever). */
		def = false;
		pl = build_prefix(e, m, &t, frag, code, len, NULL, tmp);
	}
	if (pl + varint_len(rest) + rest <= room || pl + rest <= room) {
		bool wl = pl + varint_len(rest) + rest <= room;
		put_record(e, m, frag, tmp, pl, wl, data + off, rest);
		if (def) {
			uint8_t plain[KM_FRAME_SLOT_PAYLOAD_MAX];
			slot_define(tx, e, su.k, m, plain, plain_form(tx, m, plain));
		}
		*sent_to = len;
		return wl ? PLACED : PLACED_STOP;
	}
	if (frag == FRAG_WHOLE) {
		size_t fresh = e->w.cap - e->head_len;
		if (pl + rest <= fresh)
			return NO_ROOM;   /* fits the next frame whole */
		frag = FRAG_FIRST;
	} else {
		frag = FRAG_MIDDLE;
	}
	pl = build_prefix(e, m, &t, frag, code, len, NULL, tmp);
	if (pl + 1 > room)
		return NO_ROOM;
	/* A first or middle fragment is never a message's last byte. */
	assert(room - pl < rest);
	put_record(e, m, frag, tmp, pl, false, data + off, room - pl);
	*sent_to = off + room - pl;
	return PLACED_STOP;
}

static size_t bitmap_len(uint64_t bm)
{
	size_t nbm = 0;

	while (nbm < 8 && (bm >> (8 * nbm)))
		nbm++;
	return nbm;
}

static size_t restart_count(const struct km_frame_ack *a)
{
	return a->n_restart > KM_FRAME_RESTART_MAX ? KM_FRAME_RESTART_MAX : a->n_restart;
}

/* The ack tail goes last and only where the messages left room. */
/* Bytes the ack tail of a takes. */
static size_t ack_tail_len(const struct km_frame_ack *a)
{
	size_t nr = restart_count(a), rlen = 0;

	for (size_t i = 0; i < nr; i++)
		rlen += varint_len(a->restart[i]);
	return varint_len(a->origin) + 2 + (nr ? rlen + 1 : 0) + bitmap_len(a->bitmap) + 1;
}

static bool put_ack_tail(struct wbuf *w, const struct km_frame_ack *a)
{
	size_t nbm = bitmap_len(a->bitmap), ol = varint_len(a->origin);
	size_t nr = restart_count(a), rlen = 0;

	for (size_t i = 0; i < nr; i++)
		rlen += varint_len(a->restart[i]);
	if (w->cap - w->pos < ack_tail_len(a))
		return false;
	put_varint(w, a->origin);
	put_u16(w, a->cum);
	for (size_t i = 0; i < nr; i++)
		put_varint(w, a->restart[i]);
	if (nr)
		put_u8(w, (uint8_t)rlen);
	for (size_t k = 0; k < nbm; k++)
		put_u8(w, (uint8_t)(a->bitmap >> (8 * k)));
	put_u8(w, (uint8_t)((nbm << 4) | (nr ? 0x08 : 0) | ol));
	return true;
}


static int slot_ready(struct km_frame_slot *s, size_t mtu_max)
{
	if (!s->buf && !(s->buf = malloc(mtu_max)))
		return -ENOMEM;
	if (!s->done && !(s->done = malloc(KM_FRAME_RECS_MAX * sizeof(uint64_t))))
		return -ENOMEM;
	return 0;
}

/* Write hdr, origin, seq and back; returns nothing, w->err tells. */
static void put_head(struct km_frame_tx *tx, struct wbuf *w, bool ack)
{
	uint8_t hdr = (uint8_t)((tx->cfg.version << HDR_VER_SHIFT) |
				(KM_FRAME_T_DATA << HDR_TYPE_SHIFT));

	if (!tx->synced)
		hdr |= HDR_SYN;
	if (ack)
		hdr |= HDR_ACK;
	put_u8(w, hdr);
	put_varint(w, tx->cfg.origin);
	put_u16(w, tx->next_seq);
	put_u8(w, (uint8_t)tx->inflight);
}

/* Fill the records of one frame; records the ids finished in slot. */
static int fill_records(struct km_frame_tx *tx, struct enc *e,
			struct km_frame_slot *s, const struct km_frame_msg *msgs,
			size_t n, struct km_frame_put *put)
{
	for (size_t i = 0; i < n && e->nrec < KM_FRAME_RECS_MAX; i++) {
		size_t sent_to = 0, full = 0;
		int rc = place_msg(tx, e, &msgs[i], &sent_to, &full);
		if (rc < 0)
			return rc;
		if (rc == NO_ROOM)
			return i == 0 ? -EMSGSIZE : 0;
		if (sent_to < full) {
			put->next_off = sent_to;
			s->has_part = true;
			s->part_id = msgs[i].id;
			return 0;
		}
		s->done[s->n_done++] = msgs[i].id;
		put->n_full = i + 1;
		if (rc == PLACED_STOP)
			return 0;
	}
	return 0;
}

/* The frame out[0..len) is written: CRC it, keep it in the window. */
static int commit_frame(struct km_frame_tx *tx, struct km_frame_slot *s, uint8_t *out,
			size_t body, size_t len, int64_t now_ms)
{
	s->body = body;
	len = crc_append(out, len);
	memcpy(s->buf, out, len);
	s->len = len;
	s->used = true;
	s->sacked = s->lost = false;
	s->seq = tx->next_seq;
	s->sent_ms = now_ms;
	s->stamp = ++tx->stamp;
	s->tries = 1;
	tx->next_seq++;
	tx->inflight++;
	tx->frames_sent++;
	return (int)len;
}

/* The window place of the next frame, emptied; 0, -EINVAL, -EAGAIN or -ENOMEM. */
static int frame_begin(struct km_frame_tx *tx, size_t mtu, const uint8_t *out,
		       struct km_frame_slot **sp)
{
	if (!out || mtu < KM_FRAME_MTU_MIN || mtu > tx->cfg.mtu_max)
		return -EINVAL;
	if (tx->inflight >= tx->cfg.window)
		return -EAGAIN;
	struct km_frame_slot *s = &tx->slot[tx->next_seq % KM_FRAME_WINDOW_MAX];
	int rc = slot_ready(s, tx->cfg.mtu_max);
	if (rc)
		return rc;
	s->n_done = 0;
	s->has_part = false;
	*sp = s;
	return 0;
}

int km_frame_tx_encode(struct km_frame_tx *tx, const struct km_frame_msg *msgs,
		       size_t n, size_t mtu, const struct km_frame_ack *ack,
		       int64_t now_ms, uint8_t *out, struct km_frame_put *put)
{
	struct km_frame_slot *s;
	if (!n || !msgs || !put)
		return -EINVAL;
	int rc = frame_begin(tx, mtu, out, &s);
	if (rc)
		return rc;
	*put = (struct km_frame_put){ .seq = tx->next_seq };
	/* Budget for the larger CRC when the frame may exceed 256 bytes; with ack_room,
	 * the messages leave the ack's bytes free (while half the frame stays theirs). */
	size_t cap = mtu - crc_size(mtu), tail = ack && tx->cfg.ack_room ? ack_tail_len(ack) : 0;
	if (tail > cap / 2)
		tail = 0;
	struct enc e = { .w = { .p = out, .cap = cap - tail } };
	put_head(tx, &e.w, false);
	e.head_len = e.w.pos;
	if ((rc = fill_records(tx, &e, s, msgs, n, put))) {
		/* The frame is not sent: slots it (re)defined are unknown. */
		for (unsigned k = 0; k < KM_FRAME_SLOTS && tx->ref; k++)
			if (e.touched & (1ULL << k))
				tx->ref[k].used = false;
		return rc;
	}
	if (!e.nrec)
		return -EMSGSIZE;
	strip_last_len(&e);
	e.w.cap = cap;
	size_t body = e.w.pos;
	if (ack && put_ack_tail(&e.w, ack)) {
		out[0] |= HDR_ACK;
		if (ack->slots_lost && tx->cfg.version >= 2)
			out[0] |= HDR_DATA_LOST;
		put->acked_piggy = true;
	}
	return commit_frame(tx, s, out, body, e.w.pos, now_ms);
}

int km_frame_tx_probe(struct km_frame_tx *tx, size_t mtu, int64_t now_ms, uint8_t *out)
{
	struct km_frame_slot *s;
	int rc = frame_begin(tx, mtu, out, &s);
	if (rc)
		return rc;
	struct wbuf w = { .p = out, .cap = mtu - crc_size(mtu) };
	put_head(tx, &w, false);
	return commit_frame(tx, s, out, w.pos, w.pos, now_ms);
}

int km_frame_peek(const uint8_t *buf, size_t len, uint8_t *type, uint16_t *seq)
{
	if (!buf || len < 2)
		return -EBADMSG;
	struct rbuf r = { .p = buf, .len = len - crc_size(len) };
	uint8_t hdr = get_u8(&r);
	(void)get_varint(&r);
	*type = (hdr >> HDR_TYPE_SHIFT) & 3;
	*seq = *type == KM_FRAME_T_DATA ? get_u16(&r) : 0;
	return r.err ? -EBADMSG : 0;
}

static uint16_t tx_base(const struct km_frame_tx *tx)
{
	return (uint16_t)(tx->next_seq - tx->inflight);
}

/* Selective part of an ack: what the receiver holds is not resent, and
 * anything sent before a frame it holds is presumed lost. */
static void tx_sack(struct km_frame_tx *tx, const struct km_frame_ack *a)
{
	uint64_t newest = 0;
	uint16_t base = tx_base(tx);

	for (unsigned i = 0; i < tx->inflight; i++) {
		struct km_frame_slot *s = &tx->slot[(uint16_t)(base + i) % KM_FRAME_WINDOW_MAX];
		uint16_t off = (uint16_t)(s->seq - (uint16_t)(a->cum + 2));
		bool was = s->sacked;
		s->sacked = off < 64 && ((a->bitmap >> off) & 1);
		tx->frames_sacked += s->sacked && !was;
		if (s->sacked && s->stamp > newest)
			newest = s->stamp;
	}
	for (unsigned i = 0; i < tx->inflight; i++) {
		struct km_frame_slot *s = &tx->slot[(uint16_t)(base + i) % KM_FRAME_WINDOW_MAX];
		if (!s->sacked && s->stamp < newest)
			s->lost = true;
	}
}

/* Forget that id is finished in any frame in flight: that attempt at it
 * is lost at the receiver, and only the new attempt may report it done. */
static void undone(struct km_frame_tx *tx, uint64_t id)
{
	uint16_t base = tx_base(tx);

	for (unsigned i = 0; i < tx->inflight; i++) {
		struct km_frame_slot *s = &tx->slot[(uint16_t)(base + i) % KM_FRAME_WINDOW_MAX];
		size_t k = 0;
		for (size_t j = 0; j < s->n_done; j++) {
			if (s->done[j] != id)
				s->done[k++] = s->done[j];
		}
		s->n_done = k;
	}
}

/*
 * A restart request. The receiver repeats it in every ack until it sees the
 * message start again, so answer it once per attempt: ignore it while the
 * ack does not yet cover frames sent after our last answer.
 */
static void tx_restart(struct km_frame_tx *tx, const struct km_frame_ack *a,
		       uint64_t id, km_frame_done_fn restart, void *ctx)
{
	unsigned pick = tx->rs_next;

	for (unsigned i = 0; i < KM_FRAME_ORPHANS_MAX; i++) {
		if (!tx->rs[i].used || tx->rs[i].id != id)
			continue;
		if ((uint16_t)(tx->rs[i].seq - (uint16_t)(a->cum + 1)) < 0x8000)
			return;   /* answered; the new attempt is not acked yet */
		pick = i;
		break;
	}
	if (pick == tx->rs_next)
		tx->rs_next = (tx->rs_next + 1) % KM_FRAME_ORPHANS_MAX;
	tx->rs[pick].used = true;
	tx->rs[pick].id = id;
	tx->rs[pick].seq = tx->next_seq;
	undone(tx, id);
	if (tx->cache_ok && tx->cache_id == id)
		tx->cache_ok = false;
	if (restart)
		restart(ctx, id);
}

static void slots_forget(struct km_frame_tx *tx)
{
	if (tx->ref)
		memset(tx->ref, 0, KM_FRAME_SLOTS * sizeof(*tx->ref));
}

/*
 * The receiver lost its slots: frames in flight may name slots it no longer
 * holds, and it will not deliver them. Abandon them all (the receiver skips
 * them when our next frame's base passes) and hand their messages back.
 * Answer once: the receiver repeats the flag until our base passes the frame
 * it is stuck on, so ignore acks that cover nothing sent after the answer.
 */
static void tx_slots_lost(struct km_frame_tx *tx, const struct km_frame_ack *a,
			  km_frame_done_fn restart, void *ctx)
{
	if (tx->lost_answered &&
	    (uint16_t)(tx->lost_seq - (uint16_t)(a->cum + 1)) < 0x8000)
		return;
	uint16_t base = tx_base(tx);
	for (unsigned i = 0; i < tx->inflight; i++) {
		struct km_frame_slot *s = &tx->slot[(uint16_t)(base + i) % KM_FRAME_WINDOW_MAX];
		for (size_t k = 0; restart && k < s->n_done; k++)
			restart(ctx, s->done[k]);
		if (restart && s->has_part)
			restart(ctx, s->part_id);
		s->used = false;
	}
	tx->inflight = 0;
	tx->cache_ok = false;
	slots_forget(tx);
	tx->lost_answered = true;
	tx->lost_seq = tx->next_seq;
	tx->slot_resets++;
}

int km_frame_tx_ack(struct km_frame_tx *tx, const struct km_frame_ack *ack,
		    km_frame_done_fn done, km_frame_done_fn restart, void *ctx)
{
	if (!ack || ack->origin != tx->cfg.origin)
		return 0;
	uint16_t base = tx_base(tx);
	uint16_t c = (uint16_t)(ack->cum + 1 - base);
	if (c > tx->inflight)
		return 0;   /* before our window or beyond what we sent: stale */
	tx->synced = true;
	for (size_t i = 0; i < restart_count(ack); i++)
		tx_restart(tx, ack, ack->restart[i], restart, ctx);
	for (uint16_t i = 0; i < c; i++) {
		struct km_frame_slot *s = &tx->slot[(uint16_t)(base + i) % KM_FRAME_WINDOW_MAX];
		for (size_t k = 0; done && k < s->n_done; k++)
			done(ctx, s->done[k]);
		s->used = false;
	}
	tx->inflight -= c;
	tx_sack(tx, ack);
	/* Once the receiver holds a frame sent after our last answer, that
	 * answer is spent; forgetting it keeps the 16-bit comparison in
	 * tx_slots_lost from wrapping hours later. */
	uint16_t past = (uint16_t)((uint16_t)(ack->cum + 1) - tx->lost_seq);
	if (tx->lost_answered && past != 0 && past < 0x8000)
		tx->lost_answered = false;
	if (ack->slots_lost && tx->ref)
		tx_slots_lost(tx, ack, restart, ctx);
	return c;
}

/*
 * Bring a frame's SYN flag and base up to date before sending it again. A
 * receiver that lost its state (restart, eviction) syncs to the base of the
 * first frame it hears; a stale base would make it wait for frames we
 * released long ago while we wait for its ack: deadlock. Only the header
 * byte, the back byte and the CRC change; records stay byte for byte.
 */
static void restamp(const struct km_frame_tx *tx, struct km_frame_slot *s)
{
	size_t at = 1 + varint_len(tx->cfg.origin) + 2;
	size_t body = s->len - crc_size(s->len);

	s->buf[0] = (uint8_t)((s->buf[0] & ~HDR_SYN) | (tx->synced ? 0 : HDR_SYN));
	s->buf[at] = (uint8_t)(s->seq - tx_base(tx));
	crc_append(s->buf, body);
}

/* The frame to send again now: a lost one first, then the oldest past rto. */
static struct km_frame_slot *due_slot(const struct km_frame_tx *tx, int64_t now_ms, int64_t rto_ms)
{
	uint16_t base = tx_base(tx);

	for (unsigned i = 0; i < tx->inflight; i++) {
		struct km_frame_slot *s = (struct km_frame_slot *)&tx->slot[(uint16_t)(base + i) % KM_FRAME_WINDOW_MAX];
		if (!s->sacked && s->lost)
			return s;
	}
	for (unsigned i = 0; i < tx->inflight; i++) {
		struct km_frame_slot *s = (struct km_frame_slot *)&tx->slot[(uint16_t)(base + i) % KM_FRAME_WINDOW_MAX];
		if (!s->sacked && now_ms - s->sent_ms >= rto_ms)
			return s;
	}
	return NULL;
}

size_t km_frame_tx_pending(const struct km_frame_tx *tx, int64_t now_ms, int64_t rto_ms)
{
	const struct km_frame_slot *s = due_slot(tx, now_ms, rto_ms);
	return s ? s->len : 0;
}

int km_frame_tx_due(struct km_frame_tx *tx, int64_t now_ms, int64_t rto_ms,
		    uint8_t *out, size_t cap)
{
	return km_frame_tx_due_ack(tx, now_ms, rto_ms, NULL, out, cap, NULL);
}

int km_frame_tx_due_ack(struct km_frame_tx *tx, int64_t now_ms, int64_t rto_ms,
			const struct km_frame_ack *ack, uint8_t *out, size_t cap,
			bool *acked)
{
	struct km_frame_slot *pick = due_slot(tx, now_ms, rto_ms);

	if (acked)
		*acked = false;
	if (!pick)
		return 0;
	if (cap < pick->len)
		return -ENOSPC;
	/* Same seq, same records, so the receiver needs no per-fragment
	 * offsets. A stale piggybacked ack inside is harmless: acks only ever
	 * release, and old ones are ignored. */
	restamp(tx, pick);
	memcpy(out, pick->buf, pick->len);
	size_t len = pick->len;
	if (ack) {
		/* The records stay byte for byte; only the tail and the CRC change. The
		 * CRC is budgeted at its larger size when the frame may cross to it. */
		size_t lim = cap > tx->cfg.mtu_max ? tx->cfg.mtu_max : cap;
		struct wbuf w = { .p = out, .pos = pick->body, .cap = lim - crc_size(lim) };
		if (w.cap >= w.pos + ack_tail_len(ack) && put_ack_tail(&w, ack) && !w.err) {
			out[0] = (uint8_t)((out[0] & ~(HDR_ACK | HDR_DATA_LOST)) | HDR_ACK);
			if (ack->slots_lost && tx->cfg.version >= 2)
				out[0] |= HDR_DATA_LOST;
			len = crc_append(out, w.pos);
			if (acked)
				*acked = true;
		}
	}
	pick->sent_ms = now_ms;
	pick->stamp = ++tx->stamp;
	pick->lost = false;
	pick->tries++;
	tx->frames_resent++;
	return (int)len;
}

void km_frame_tx_reset(struct km_frame_tx *tx)
{
	for (unsigned i = 0; i < KM_FRAME_WINDOW_MAX; i++)
		tx->slot[i].used = false;
	tx->inflight = 0;
	tx->cache_ok = false;
	/* Abandoned frames may have redefined slots, and the receiver may or may
	 * not process them (it delivers those it holds when it skips): start
	 * the slots afresh. */
	slots_forget(tx);
}

unsigned km_frame_tx_inflight(const struct km_frame_tx *tx)
{
	return tx->inflight;
}

/* ---- ack frame ---- */

int km_frame_ack_encode(const struct km_frame_ack *ack, uint32_t from,
			uint8_t *out, size_t cap)
{
	uint8_t tmp[KM_FRAME_ACK_MAX];
	struct wbuf w = { .p = tmp, .cap = sizeof(tmp) };
	size_t nbm = bitmap_len(ack->bitmap), nr = restart_count(ack);

	unsigned ver = ack->version ? ack->version : 1;

	if (ver > KM_FRAME_VERSION)
		ver = KM_FRAME_VERSION;
	put_u8(&w, (uint8_t)((ver << HDR_VER_SHIFT) | (KM_FRAME_T_ACK << HDR_TYPE_SHIFT) |
			     (ack->slots_lost && ver >= 2 ? HDR_ACK_LOST : 0) | (nr ? 1 : 0)));
	put_varint(&w, from);
	put_varint(&w, ack->origin);
	put_u16(&w, ack->cum);
	if (nr)
		put_u8(&w, (uint8_t)nr);
	for (size_t i = 0; i < nr; i++)
		put_varint(&w, ack->restart[i]);
	for (size_t k = 0; k < nbm; k++)
		put_u8(&w, (uint8_t)(ack->bitmap >> (8 * k)));
	if (w.pos + 2 > cap)
		return -ENOSPC;
	memcpy(out, tmp, w.pos);
	return (int)crc_append(out, w.pos);
}

/* ---- receiver ---- */

int km_frame_rx_init(struct km_frame_rx *rx, const struct km_frame_rx_cfg *cfg)
{
	memset(rx, 0, sizeof(*rx));
	rx->cfg = *cfg;
	if (!rx->cfg.max_origins)
		rx->cfg.max_origins = DEF_MAX_ORIGINS;
	if (!rx->cfg.max_buffer_bytes)
		rx->cfg.max_buffer_bytes = DEF_MAX_BUFFER;
	if (!rx->cfg.max_partials)
		rx->cfg.max_partials = DEF_MAX_PARTIALS;
	if (!rx->cfg.max_partial_bytes)
		rx->cfg.max_partial_bytes = DEF_MAX_PARTIAL_BYTES;
	if (!rx->cfg.max_msg)
		rx->cfg.max_msg = DEF_MAX_MSG;
	rx->org = calloc(rx->cfg.max_origins, sizeof(*rx->org));
	rx->part = calloc(rx->cfg.max_partials, sizeof(*rx->part));
	rx->scratch = malloc(rx->cfg.max_msg);
	if (!rx->org || !rx->part || !rx->scratch)
		goto fail;
	if (inflateInit2(&rx->zs, -15) != Z_OK)
		goto fail;
	rx->zs_ok = true;
	return 0;
fail:
	km_frame_rx_deinit(rx);
	return -ENOMEM;
}

static void partial_drop(struct km_frame_rx *rx, struct km_frame_partial *p)
{
	rx->partial_bytes -= p->total;
	free(p->buf);
	free(p->topic);
	memset(p, 0, sizeof(*p));
}

static void ahead_drop(struct km_frame_rx *rx, struct km_frame_rx_origin *o,
		       unsigned i)
{
	if (!o->ahead[i].used)
		return;
	rx->buffered_bytes -= o->ahead[i].len;
	free(o->ahead[i].buf);
	o->ahead[i].buf = NULL;
	o->ahead[i].used = false;
}

/* Forget what an origin was sending: out-of-order frames and partials. */
static void origin_clear(struct km_frame_rx *rx, struct km_frame_rx_origin *o)
{
	for (unsigned i = 0; i < RX_SLOTS; i++)
		ahead_drop(rx, o, i);
	if (o->slots)
		memset(o->slots, 0, KM_FRAME_SLOTS * sizeof(*o->slots));
	o->slots_lost = false;
	for (unsigned i = 0; rx->part && i < rx->cfg.max_partials; i++) {
		if (rx->part[i].used && rx->part[i].origin == o->id)
			partial_drop(rx, &rx->part[i]);
	}
}

void km_frame_rx_deinit(struct km_frame_rx *rx)
{
	for (unsigned i = 0; rx->org && i < rx->cfg.max_origins; i++) {
		origin_clear(rx, &rx->org[i]);
		free(rx->org[i].slots);
		rx->org[i].slots = NULL;
	}
	for (unsigned i = 0; rx->part && i < rx->cfg.max_partials; i++) {
		if (rx->part[i].used)
			partial_drop(rx, &rx->part[i]);
	}
	free(rx->org);
	free(rx->part);
	free(rx->scratch);
	rx->org = NULL;
	rx->part = NULL;
	rx->scratch = NULL;
	if (rx->zs_ok)
		inflateEnd(&rx->zs);
	rx->zs_ok = false;
}

static struct km_frame_rx_origin *origin_find(const struct km_frame_rx *rx,
					      uint32_t id)
{
	for (unsigned i = 0; i < rx->cfg.max_origins; i++) {
		if (rx->org[i].used && rx->org[i].id == id)
			return &rx->org[i];
	}
	return NULL;
}

/* Find or make the state of origin id, evicting the least recently heard
 * origin when the table is full: a base that went silent for long is the
 * one whose state is least likely to matter. */
static struct km_frame_rx_origin *origin_get(struct km_frame_rx *rx,
					     uint32_t id, bool *fresh)
{
	struct km_frame_rx_origin *o = origin_find(rx, id), *old = NULL;

	*fresh = false;
	if (o)
		return o;
	for (unsigned i = 0; i < rx->cfg.max_origins && !o; i++) {
		if (!rx->org[i].used)
			o = &rx->org[i];
		else if (!old || rx->org[i].seen < old->seen)
			old = &rx->org[i];
	}
	if (!o) {
		o = old;
		origin_clear(rx, o);
		rx->origin_evictions++;
	}
	free(o->slots);
	memset(o, 0, sizeof(*o));
	o->used = true;
	o->id = id;
	*fresh = true;
	return o;
}

int km_frame_rx_ack(const struct km_frame_rx *rx, uint32_t origin,
		    struct km_frame_ack *ack)
{
	const struct km_frame_rx_origin *o = origin_find(rx, origin);

	if (!o)
		return -ENOENT;
	*ack = (struct km_frame_ack){ .origin = origin, .cum = (uint16_t)(o->next - 1),
				      .version = o->version,
				      .slots_lost = o->slots_lost && o->version >= 2 };
	for (unsigned i = 0; i < RX_SLOTS - 1; i++) {
		uint16_t seq = (uint16_t)(o->next + 1 + i);
		unsigned k = seq % RX_SLOTS;
		if (o->ahead[k].used && o->ahead[k].seq == seq)
			ack->bitmap |= 1ULL << i;
	}
	for (unsigned i = 0; i < KM_FRAME_ORPHANS_MAX &&
	     ack->n_restart < KM_FRAME_RESTART_MAX; i++) {
		if (rx->orphan[i].used && rx->orphan[i].origin == origin)
			ack->restart[ack->n_restart++] = rx->orphan[i].id;
	}
	return 0;
}

/* One parsed record; pointers into the frame. */
struct rec {
	int frag;
	uint8_t code, cls, qos;
	bool lit, timed;
	uint64_t id;
	int64_t t;            /* unix seconds when timed */
	uint64_t topic_idx;
	const uint8_t *topic;
	size_t topic_len;
	uint64_t total;
	const uint8_t *data;
	size_t len;
	bool slot;            /* S */
	unsigned k;
	struct km_frame_ref *ref;   /* R, resolved: slot k */
};

struct rcur {
	struct rbuf r;
	unsigned nrec;
	uint64_t prev_id;
	bool have_t;
	int64_t prev_t;
	int64_t now_ms;
	unsigned version;
	bool resolve;                 /* delivering: resolve slot references */
	struct km_frame_ref *slots;   /* the origin's, may be NULL */
};

/* Pick the t = v (mod 2^24) nearest below now + TIME_AHEAD. */
static int64_t time_resolve(uint32_t v, int64_t now_ms)
{
	if (now_ms < 0)
		now_ms = 0;
	if (now_ms > NOW_MAX)
		now_ms = NOW_MAX;
	int64_t ref = now_ms / 1000 + TIME_AHEAD;
	int64_t back = ((ref - (int64_t)v) % TIME_MOD + TIME_MOD) % TIME_MOD;
	return ref - back;
}

static int rec_time(struct rcur *c, struct rec *x, bool trel)
{
	if (trel) {
		int64_t d = zz_dec(get_varint(&c->r));
		if (d > TIME_DELTA_MAX || d < -TIME_DELTA_MAX)
			return -EPROTO;
		x->t = x->ref ? x->ref->t + d : 0;
	} else if (!c->have_t) {
		x->t = time_resolve(get_u24(&c->r), c->now_ms);
	} else {
		int64_t d = zz_dec(get_varint(&c->r));
		if (d > TIME_DELTA_MAX || d < -TIME_DELTA_MAX)
			return -EPROTO;
		x->t = c->prev_t + d;
	}
	if (x->t > TIME_LIMIT || x->t < -TIME_LIMIT)
		return -ERANGE;
	c->have_t = true;
	c->prev_t = x->t;
	return 0;
}

static int rec_head(struct rcur *c, struct rec *x)
{
	uint8_t meta = get_u8(&c->r);

	if (meta & 0x03)
		return -EPROTO;
	x->cls = meta >> 5;
	x->qos = (meta >> 3) & 3;
	x->timed = meta & META_TIME;
	if (x->qos > 2)
		return -EPROTO;
	return 0;
}

static int rec_topic(struct rcur *c, struct rec *x)
{
	if (!x->lit) {
		x->topic_idx = get_varint(&c->r);
		return 0;
	}
	uint64_t n = get_varint(&c->r);
	if (n == 0 || n > (x->slot ? KM_FRAME_SLOT_TOPIC_MAX : KM_FRAME_TOPIC_MAX))
		return -EPROTO;
	x->topic_len = (size_t)n;
	x->topic = get_bytes(&c->r, x->topic_len);
	if (x->topic && memchr(x->topic, 0, x->topic_len))
		return -EPROTO;   /* MQTT topics hold no NUL */
	return 0;
}

/* Parse the next record. Returns 1 with *x filled, 0 at the end, -EPROTO,
 * or (resolving) -E_SLOT for a slot we do not hold. */
static int rec_next(struct rcur *c, struct rec *x)
{
	if (c->r.pos == c->r.len)
		return 0; /* no record at all: a probe */
	if (c->nrec >= KM_FRAME_RECS_MAX)
		return -EPROTO;
	memset(x, 0, sizeof(*x));
	uint8_t rh = get_u8(&c->r);
	x->frag = rh >> RH_FRAG_SHIFT;
	x->lit = rh & RH_T;
	x->code = (rh >> RH_ENC_SHIFT) & 3;
	bool head = x->frag == FRAG_WHOLE || x->frag == FRAG_FIRST;
	x->slot = rh & RH_S;
	uint8_t reserved = c->version >= 2 ? 1 : 3;
	if ((rh & reserved) || (x->code == CODE_ZPOSBATCH && c->version < 2) || (!head && (rh & (RH_T | (3 << RH_ENC_SHIFT)))) ||
	    (x->slot && x->frag != FRAG_WHOLE && x->frag != FRAG_LAST))
		return -EPROTO;
	if (head && rec_head(c, x))
		return -EPROTO;
	bool refers = false, trel = false;
	if (x->slot) {
		uint8_t sb = get_u8(&c->r);
		x->k = sb & SLOT_K;
		refers = sb & SLOT_R;
		trel = sb & SLOT_TR;
		if ((refers && (x->lit || !head)) || (trel && (!refers || !x->timed)))
			return -EPROTO;
	}
	uint64_t id = get_varint(&c->r);
	if (refers && c->resolve) {
		if (c->r.err)
			return -EPROTO;
		if (!c->slots || !c->slots[x->k].used)
			return -E_SLOT;
		x->ref = &c->slots[x->k];
		x->id = x->ref->id + (uint64_t)zz_dec(id);
	} else {
		x->id = c->nrec && !refers ? c->prev_id + (uint64_t)zz_dec(id) : id;
	}
	/* Out of range while resolving, when the check without slots passed: the
	 * time came from a slot (Tr, or the chain after one), which the sender
	 * cannot have meant; as for a slot we do not hold, the frame waits and
	 * the sender is asked to send it again without slots. */
	int trc = x->timed ? rec_time(c, x, trel) : 0;
	if (trc)
		return trc == -ERANGE && c->resolve ? -E_SLOT : -EPROTO;
	if (head && !refers && rec_topic(c, x))
		return -EPROTO;
	if (x->frag == FRAG_FIRST)
		x->total = get_varint(&c->r);
	uint64_t n = (rh & RH_L) ? get_varint(&c->r) : c->r.len - c->r.pos;
	if (c->r.err || n > c->r.len - c->r.pos)
		return -EPROTO;
	x->len = (size_t)n;
	x->data = get_bytes(&c->r, x->len);
	if (x->frag == FRAG_FIRST && (x->total <= x->len))
		return -EPROTO;
	if (!head && x->len == 0)
		return -EPROTO;
	c->nrec++;
	c->prev_id = x->id;
	return c->r.err ? -EPROTO : 1;
}

/* Parse a whole records region without acting on it. */
static int recs_check(const uint8_t *p, size_t n, unsigned version)
{
	struct rcur c = { .r = { .p = p, .len = n }, .version = version };
	struct rec x;
	int rc;

	while ((rc = rec_next(&c, &x)) == 1)
		;
	return rc;
}

/* Inflate into rx->scratch, against dict when given; returns the size or a
 * negative errno. */
static long inflate_msg(struct km_frame_rx *rx, const uint8_t *p, size_t n,
			const uint8_t *dict, size_t dlen)
{
	if (inflateReset(&rx->zs) != Z_OK)
		return -EIO;
	/* A raw stream takes its dictionary before the first inflate(). */
	if (dict && dlen && inflateSetDictionary(&rx->zs, dict, (uInt)dlen) != Z_OK)
		return -EIO;
	rx->zs.next_in = (Bytef *)(uintptr_t)p;
	rx->zs.avail_in = (uInt)n;
	rx->zs.next_out = rx->scratch;
	rx->zs.avail_out = (uInt)rx->cfg.max_msg;
	int z = inflate(&rx->zs, Z_FINISH);
	if (z == Z_STREAM_END && rx->zs.avail_in == 0)
		return (long)(rx->cfg.max_msg - rx->zs.avail_out);
	if (rx->zs.avail_out == 0 && z != Z_STREAM_END)
		return -E2BIG;
	return -EBADMSG;
}

/* Fields of a message head, shared by whole records and partials. */
struct head {
	uint32_t origin;
	uint64_t id;
	uint8_t cls, qos, code;
	int64_t created_ms;
	uint32_t topic_idx;
	const char *topic;
};

/*
 * cfg.pos_json: hand a position batch over as its canonical JSON, in js
 * (KM_FRAME_POS_JSON_MAX bytes). Returns 0 with *m converted or left alone
 * (not a batch), or -EBADMSG for a batch that is not one good position
 * (counted): the caller drops it, its frame still acknowledged, because
 * the same bytes would fail again.
 */
static int pos_json(struct km_frame_rx *rx, struct km_frame_msg *m, char *js)
{
	if (!rx->cfg.pos_json || m->enc != KM_FRAME_ENC_POSBATCH)
		return 0;
	int n = km_posrec_batch_json(m->payload, m->len, js, KM_FRAME_POS_JSON_MAX);
	if (n < 0) {
		rx->bad_posbatch++;
		return -EBADMSG;
	}
	m->payload = (const uint8_t *)js;
	m->len = (size_t)n;
	m->enc = KM_FRAME_ENC_RAW;
	return 0;
}

/* Decode the payload if needed and hand the message over. Payload faults
 * are counted and the message is dropped: re-sending the frame would not
 * cure them, so the frame is still acknowledged. */
static int deliver(struct km_frame_rx *rx, const struct head *h,
		   const uint8_t *p, size_t n, km_frame_deliver_fn fn, void *ctx)
{
	if (h->code == CODE_DEFLATE || h->code == CODE_ZPOSBATCH) {
		long z = inflate_msg(rx, p, n, NULL, 0);
		if (z == -E2BIG)
			rx->oversize++;
		else if (z < 0)
			rx->bad_payload++;
		if (z < 0)
			return 0;
		p = rx->scratch;
		n = (size_t)z;
	}
	struct km_frame_msg m = {
		.id = h->id, .topic = h->topic, .payload = p, .len = n,
		.created_ms = h->created_ms, .origin = h->origin,
		.topic_idx = h->topic_idx, .cls = h->cls, .qos = h->qos,
		.enc = h->code >= CODE_POSBATCH ? KM_FRAME_ENC_POSBATCH : KM_FRAME_ENC_RAW,
	};
	char js[KM_FRAME_POS_JSON_MAX];
	if (pos_json(rx, &m, js))
		return 0;
	int rc = fn ? fn(ctx, &m) : 0;
	if (!rc)
		rx->delivered++;
	return rc;
}

/* Fill h from a whole or first record; literal topics land in rx->topic. */
static void head_of(struct km_frame_rx *rx, uint32_t origin,
		    const struct rec *x, struct head *h)
{
	*h = (struct head){
		.origin = origin, .id = x->id, .cls = x->cls, .qos = x->qos,
		.code = x->code, .created_ms = x->timed ? x->t * 1000 : 0,
		.topic_idx = UINT32_MAX,
	};
	if (x->lit) {
		memcpy(rx->topic, x->topic, x->topic_len);
		rx->topic[x->topic_len] = '\0';
		h->topic = rx->topic;
		return;
	}
	const struct km_frame_dict *d = rx->cfg.dict;
	h->topic_idx = x->topic_idx > UINT32_MAX - 1 ? UINT32_MAX - 1 : (uint32_t)x->topic_idx;
	if (d && x->topic_idx < d->n && d->topics[x->topic_idx])
		h->topic = d->topics[x->topic_idx];
	else
		rx->unknown_topics++;   /* delivered with topic NULL: never lose it */
}

/* Which orphan entry a new request for origin takes: a free one, else the
 * oldest, but never more than one ack's worth per origin, because a request
 * left out of an ack would let the sender count that message delivered. */
static unsigned orphan_pick(const struct km_frame_rx *rx, uint32_t origin)
{
	unsigned pick = 0, mine = 0, n_mine = 0;
	bool have_free = false;

	for (unsigned i = 0; i < KM_FRAME_ORPHANS_MAX; i++) {
		const struct km_frame_orphan *o = &rx->orphan[i];
		if (o->used && o->origin == origin &&
		    (!n_mine++ || o->age < rx->orphan[mine].age))
			mine = i;
		if (!o->used && !have_free) {
			pick = i;
			have_free = true;
		} else if (!have_free && o->age < rx->orphan[pick].age) {
			pick = i;
		}
	}
	return n_mine >= KM_FRAME_RESTART_MAX ? mine : pick;
}

/* Remember that the start of split message (origin, id) is lost, so that
 * our acks ask the sender to send it again. When the list is full the
 * oldest request goes: that message is lost, and counted. */
static void orphan_add(struct km_frame_rx *rx, uint32_t origin, uint64_t id,
		       uint16_t seq)
{
	for (unsigned i = 0; i < KM_FRAME_ORPHANS_MAX; i++) {
		if (rx->orphan[i].used && rx->orphan[i].origin == origin &&
		    rx->orphan[i].id == id)
			return;
	}
	unsigned pick = orphan_pick(rx, origin);
	if (rx->orphan[pick].used)
		rx->restarts_lost++;
	rx->orphan[pick].used = true;
	rx->orphan[pick].origin = origin;
	rx->orphan[pick].id = id;
	rx->orphan[pick].age = ++rx->tick;
	rx->orphan[pick].seq = seq;
}

/*
 * Withdraw requests the sender has certainly seen. Every ack covering the
 * frame where a loss was seen carries the request, and the sender's base
 * passes that frame only after such an ack; by then it has restarted the
 * message and will not count the lost attempt delivered. This bounds the
 * list even when the sender no longer holds the message (a stale frame
 * heard after our restart).
 */
static void orphan_expire(struct km_frame_rx *rx, uint32_t origin, uint16_t base)
{
	for (unsigned i = 0; i < KM_FRAME_ORPHANS_MAX; i++) {
		uint16_t d = (uint16_t)(base - rx->orphan[i].seq);
		if (rx->orphan[i].used && rx->orphan[i].origin == origin &&
		    d != 0 && d < 0x8000)
			rx->orphan[i].used = false;
	}
}

/* The sender started message (origin, id) again: stop asking. */
static void orphan_del(struct km_frame_rx *rx, uint32_t origin, uint64_t id)
{
	for (unsigned i = 0; i < KM_FRAME_ORPHANS_MAX; i++) {
		if (rx->orphan[i].used && rx->orphan[i].origin == origin &&
		    rx->orphan[i].id == id)
			rx->orphan[i].used = false;
	}
}

static struct km_frame_partial *partial_find(struct km_frame_rx *rx,
					     uint32_t origin, uint64_t id)
{
	for (unsigned i = 0; i < rx->cfg.max_partials; i++) {
		struct km_frame_partial *p = &rx->part[i];
		if (p->used && p->origin == origin && p->id == id)
			return p;
	}
	return NULL;
}

/* Make room for `total` more bytes of partials by evicting the oldest. */
static struct km_frame_partial *partial_slot(struct km_frame_rx *rx, size_t total,
					     uint16_t seq)
{
	for (;;) {
		struct km_frame_partial *free_p = NULL, *old = NULL;
		for (unsigned i = 0; i < rx->cfg.max_partials; i++) {
			struct km_frame_partial *p = &rx->part[i];
			if (!p->used && !free_p)
				free_p = p;
			else if (p->used && (!old || p->age < old->age))
				old = p;
		}
		if (free_p && rx->partial_bytes + total <= rx->cfg.max_partial_bytes)
			return free_p;
		if (!old)
			return NULL;
		orphan_add(rx, old->origin, old->id, seq);
		partial_drop(rx, old);
		rx->partial_evictions++;
	}
}

static void frag_first(struct km_frame_rx *rx, uint32_t origin, uint16_t seq,
		       const struct rec *x)
{
	struct km_frame_partial *p = partial_find(rx, origin, x->id);
	struct head h;

	orphan_del(rx, origin, x->id);
	if (p)
		partial_drop(rx, p);   /* the sender restarted this message */
	if (x->total > rx->cfg.max_msg || x->total > rx->cfg.max_partial_bytes) {
		rx->oversize++;
		return;
	}
	if (!(p = partial_slot(rx, (size_t)x->total, seq))) {
		rx->dropped_nomem++;
		return;
	}
	head_of(rx, origin, x, &h);
	p->buf = malloc((size_t)x->total);
	p->topic = x->lit ? strdup(rx->topic) : NULL;
	if (!p->buf || (x->lit && !p->topic)) {
		free(p->buf);
		free(p->topic);
		p->buf = NULL;
		p->topic = NULL;
		rx->dropped_nomem++;
		return;
	}
	p->used = true;
	p->origin = origin;
	p->id = x->id;
	p->age = ++rx->tick;
	p->cls = h.cls;
	p->qos = h.qos;
	p->code = h.code;
	p->created_ms = h.created_ms;
	p->topic_idx = h.topic_idx;
	p->total = (size_t)x->total;
	rx->partial_bytes += p->total;
	memcpy(p->buf, x->data, x->len);
	p->got = x->len;
}

/*
 * A message that (re)defines slot k, whole (x) or completed from fragments:
 * decode it (against ref, the slot it names, if any), hand it over, then
 * make it the slot's message. h carries the head, with h->topic already
 * resolved; lit says the topic is literal. A payload that does not decode
 * here is not one we may drop quietly: the sender's slot k would no longer
 * match ours. Returns the callback's error or -E_SLOT.
 */
static int slot_deliver(struct km_frame_rx *rx, struct km_frame_rx_origin *o, unsigned k,
			const struct head *h, bool lit, const uint8_t *p, size_t n,
			const struct km_frame_ref *ref, km_frame_deliver_fn fn, void *ctx)
{
	char topic[KM_FRAME_SLOT_TOPIC_MAX + 1];

	if (lit) {
		/* Copied: the slot that holds the topic is rewritten below. */
		size_t tl = strlen(h->topic);
		if (tl > KM_FRAME_SLOT_TOPIC_MAX) {
			rx->malformed++;
			return -E_SLOT;
		}
		memcpy(topic, h->topic, tl + 1);
	}
	if (h->code == CODE_DEFLATE || h->code == CODE_ZPOSBATCH) {
		long z = inflate_msg(rx, p, n, ref ? ref->data : NULL, ref ? ref->len : 0);
		if (z < 0 || (size_t)z > KM_FRAME_SLOT_PAYLOAD_MAX) {
			rx->bad_payload++;
			return -E_SLOT;
		}
		p = rx->scratch;
		n = (size_t)z;
	} else if (n > KM_FRAME_SLOT_PAYLOAD_MAX) {
		rx->malformed++;
		return -E_SLOT;
	}
	if (!o->slots && !(o->slots = calloc(KM_FRAME_SLOTS, sizeof(*o->slots))))
		return -E_SLOT;
	struct km_frame_msg m = {
		.id = h->id, .topic = lit ? topic : h->topic, .payload = p, .len = n,
		.created_ms = h->created_ms, .origin = h->origin,
		.topic_idx = h->topic_idx, .cls = h->cls, .qos = h->qos,
		.enc = h->code >= CODE_POSBATCH ? KM_FRAME_ENC_POSBATCH : KM_FRAME_ENC_RAW,
	};
	/* The slot takes the batch, not the JSON the user gets: the sender's
	 * view of it is the batch it sent. A bad batch still defines it. */
	char js[KM_FRAME_POS_JSON_MAX];
	int bad = pos_json(rx, &m, js);
	int rc = !bad && fn ? fn(ctx, &m) : 0;
	if (rc)
		return rc;
	if (!bad)
		rx->delivered++;
	struct km_frame_ref *s = &o->slots[k];
	s->used = true;
	s->id = h->id;
	s->timed = h->created_ms > 0;
	s->t = h->created_ms / 1000;
	if (lit) {
		memcpy(s->topic, topic, strlen(topic) + 1);
		s->topic_idx = UINT32_MAX;
	} else {
		s->topic[0] = '\0';
		s->topic_idx = h->topic_idx;
	}
	s->len = n;
	memcpy(s->data, p, n);
	return 0;
}

/* A whole record with S: its head comes from the record, or from the slot
 * it names. */
static int deliver_slot(struct km_frame_rx *rx, struct km_frame_rx_origin *o,
			const struct rec *x, km_frame_deliver_fn fn, void *ctx)
{
	const struct km_frame_ref *r = x->ref;
	struct head h;

	if (!r) {
		head_of(rx, o->id, x, &h);
		return slot_deliver(rx, o, x->k, &h, x->lit, x->data, x->len, NULL, fn, ctx);
	}
	const struct km_frame_dict *d = rx->cfg.dict;
	bool lit = r->topic_idx == UINT32_MAX;
	h = (struct head){
		.origin = o->id, .id = x->id, .cls = x->cls, .qos = x->qos,
		.code = x->code, .created_ms = x->timed ? x->t * 1000 : 0,
		.topic_idx = r->topic_idx, .topic = lit ? r->topic : NULL,
	};
	if (!lit && d && r->topic_idx < d->n && d->topics[r->topic_idx])
		h.topic = d->topics[r->topic_idx];
	else if (!lit)
		rx->unknown_topics++;
	return slot_deliver(rx, o, x->k, &h, lit, x->data, x->len, r, fn, ctx);
}

/* Middle or last fragment. A callback error keeps the partial as it was
 * before this fragment so that the frame can be processed again. */
static int frag_more(struct km_frame_rx *rx, struct km_frame_rx_origin *o, uint16_t seq,
		     const struct rec *x, km_frame_deliver_fn fn, void *ctx)
{
	uint32_t origin = o->id;
	struct km_frame_partial *p = partial_find(rx, origin, x->id);

	/* A last fragment with S defines slot k only if the message completes:
	 * until then slot k is unknown here (the sender believes otherwise, so
	 * naming it must miss, not decode against the old message). */
	if (x->slot && o->slots)
		o->slots[x->k].used = false;
	if (!p) {
		rx->orphan_frags++;
		orphan_add(rx, origin, x->id, seq);
		return 0;
	}
	bool last = x->frag == FRAG_LAST;
	if (p->got + x->len > p->total || (last && p->got + x->len != p->total)) {
		rx->orphan_frags++;   /* a fragment went missing: cannot rebuild */
		orphan_add(rx, origin, x->id, seq);
		partial_drop(rx, p);
		return 0;
	}
	memcpy(p->buf + p->got, x->data, x->len);
	p->got += x->len;
	if (!last)
		return 0;
	struct head h = {
		.origin = origin, .id = p->id, .cls = p->cls, .qos = p->qos,
		.code = p->code, .created_ms = p->created_ms,
		.topic_idx = p->topic_idx, .topic = p->topic,
	};
	const struct km_frame_dict *d = rx->cfg.dict;
	if (!p->topic && d && p->topic_idx < d->n)
		h.topic = d->topics[p->topic_idx];
	int rc = x->slot ? slot_deliver(rx, o, x->k, &h, p->topic != NULL, p->buf, p->total,
					NULL, fn, ctx)
			 : deliver(rx, &h, p->buf, p->total, fn, ctx);
	if (rc)
		p->got -= x->len;
	else
		partial_drop(rx, p);
	return rc;
}

static void slots_clear(struct km_frame_rx_origin *o)
{
	if (o->slots)
		memset(o->slots, 0, KM_FRAME_SLOTS * sizeof(*o->slots));
}

/* Act on every record of in-order frame seq. A frame that stops half way
 * (a slot we do not hold: -E_SLOT; a callback error) leaves our slots out
 * of step with the sender's, and the frame may be processed again: forget
 * the slots so that every reference to them misses rather than decodes
 * against the wrong message. */
static int recs_deliver(struct km_frame_rx *rx, struct km_frame_rx_origin *o,
			uint16_t seq, const uint8_t *p, size_t n, unsigned version,
			int64_t now_ms, km_frame_deliver_fn fn, void *ctx)
{
	struct rcur c = { .r = { .p = p, .len = n }, .now_ms = now_ms,
			  .version = version, .resolve = true, .slots = o->slots };
	struct rec x;
	struct head h;
	int rc = 0, more = 0;
	bool touched = false;

	while (!rc && (more = rec_next(&c, &x)) == 1) {
		if (x.slot && x.frag == FRAG_WHOLE) {
			rc = deliver_slot(rx, o, &x, fn, ctx);
			c.slots = o->slots;
			touched = true;
		} else if (x.frag == FRAG_WHOLE) {
			head_of(rx, o->id, &x, &h);
			rc = deliver(rx, &h, x.data, x.len, fn, ctx);
		} else if (x.frag == FRAG_FIRST) {
			frag_first(rx, o->id, seq, &x);
		} else {
			rc = frag_more(rx, o, seq, &x, fn, ctx);
			c.slots = o->slots;
			touched |= x.slot;
		}
	}
	if (!rc && more == -E_SLOT) {
		rc = -E_SLOT;
		rx->slot_misses++;
	}
	if (rc == -E_SLOT || (rc && touched))
		slots_clear(o);
	return rc;
}

/* Deliver buffered frames that have become in order. */
static int drain(struct km_frame_rx *rx, struct km_frame_rx_origin *o,
		 int64_t now_ms, km_frame_deliver_fn fn, void *ctx)
{
	for (;;) {
		unsigned k = o->next % RX_SLOTS;
		if (!o->ahead[k].used || o->ahead[k].seq != o->next)
			return 0;
		int rc = recs_deliver(rx, o, o->next, o->ahead[k].buf, o->ahead[k].len,
				      o->ahead[k].version, now_ms, fn, ctx);
		if (rc)
			return rc;
		ahead_drop(rx, o, k);
		o->next++;
	}
}

/* The sender abandoned frames below base: deliver what we hold of them,
 * skip the rest. A skipped frame may have held a fragment, so this
 * origin's partial messages cannot complete any more. */
static int skip_to(struct km_frame_rx *rx, struct km_frame_rx_origin *o,
		   uint16_t base, int64_t now_ms, km_frame_deliver_fn fn, void *ctx)
{
	for (;;) {
		int rc = drain(rx, o, now_ms, fn, ctx);
		uint16_t d = (uint16_t)(base - o->next);
		if (rc == -E_SLOT && d != 0 && d < 0x8000) {
			/* An abandoned frame naming a slot we forgot: the sender
			 * hands its messages over again. */
			ahead_drop(rx, o, o->next % RX_SLOTS);
			o->next++;
			continue;
		}
		if (rc)
			return rc;
		if (d == 0 || d >= 0x8000)
			return 0;   /* drained up to or past base */
		rx->skipped_frames++;
		for (unsigned i = 0; i < rx->cfg.max_partials; i++) {
			if (rx->part[i].used && rx->part[i].origin == o->id) {
				partial_drop(rx, &rx->part[i]);
				rx->partial_evictions++;
			}
		}
		/* The skipped frame may have redefined slots that later frames
		 * name: forget them all (the sender did when it abandoned). */
		slots_clear(o);
		o->next++;
	}
}

/* Keep a frame that arrived ahead of a gap, within the byte cap. */
static void buffer_ahead(struct km_frame_rx *rx, struct km_frame_rx_origin *o,
			 uint16_t seq, const uint8_t *p, size_t n, uint8_t version)
{
	unsigned k = seq % RX_SLOTS;

	if (o->ahead[k].used && o->ahead[k].seq == seq) {
		rx->duplicates++;
		return;
	}
	ahead_drop(rx, o, k);
	if (rx->buffered_bytes + n > rx->cfg.max_buffer_bytes ||
	    !(o->ahead[k].buf = malloc(n ? n : 1))) {
		rx->dropped_nomem++;   /* not in our ack bitmap: it will come again */
		return;
	}
	memcpy(o->ahead[k].buf, p, n);
	o->ahead[k].len = n;
	o->ahead[k].version = version;
	o->ahead[k].seq = seq;
	o->ahead[k].used = true;
	rx->buffered_bytes += n;
	rx->frames_ok++;
}

/* A data frame after CRC and structure checks. */
struct dframe {
	uint32_t origin;
	uint16_t seq, base;
	bool syn;
	uint8_t version;
	const uint8_t *recs;
	size_t nrecs;
};

/* Bring the origin's window in line with the frame's SYN and base. */
static int sync_origin(struct km_frame_rx *rx, struct km_frame_rx_origin *o,
		       bool fresh, const struct dframe *f, int64_t now_ms,
		       km_frame_deliver_fn fn, void *ctx)
{
	if (fresh || (f->syn && (!o->syn_known || o->syn_base != f->base))) {
		if (!fresh) {
			origin_clear(rx, o);
			rx->resyncs++;
		}
		o->next = f->base;
		o->syn_known = f->syn;
		o->syn_base = f->base;
		return 0;
	}
	uint16_t d = (uint16_t)(f->base - o->next);
	if (d != 0 && d < 0x8000)
		return skip_to(rx, o, f->base, now_ms, fn, ctx);
	return 0;
}

/* The frame at o->next names a slot we do not hold: it stays undelivered
 * and our acks say L until the sender abandons it (its base passes it). */
static int stuck(struct km_frame_rx_origin *o, int rc)
{
	if (rc != -E_SLOT)
		return rc;
	o->slots_lost = true;
	o->lost_seq = o->next;
	return 0;
}

static int data_in(struct km_frame_rx *rx, const struct dframe *f,
		   int64_t now_ms, km_frame_deliver_fn fn, void *ctx)
{
	bool fresh;
	struct km_frame_rx_origin *o = origin_get(rx, f->origin, &fresh);
	int rc;

	o->seen = ++rx->tick;
	o->version = f->version;
	orphan_expire(rx, f->origin, f->base);
	if ((rc = stuck(o, sync_origin(rx, o, fresh, f, now_ms, fn, ctx))))
		return rc;
	uint16_t past = (uint16_t)(f->base - o->lost_seq);
	if (o->slots_lost && past != 0 && past < 0x8000)
		o->slots_lost = false;   /* the sender answered: it abandoned that frame */
	uint16_t d = (uint16_t)(f->seq - o->next);
	if (d >= 0x8000) {
		rx->duplicates++;   /* delivered already: the ack went missing */
	} else if (d >= RX_SLOTS) {
		rx->out_of_window++;
	} else if (d > 0) {
		buffer_ahead(rx, o, f->seq, f->recs, f->nrecs, f->version);
	} else {
		if ((rc = recs_deliver(rx, o, f->seq, f->recs, f->nrecs, f->version, now_ms,
				       fn, ctx)))
			return stuck(o, rc);
		rx->frames_ok++;
		o->next++;
		ahead_drop(rx, o, f->seq % RX_SLOTS);
	}
	return stuck(o, drain(rx, o, now_ms, fn, ctx));
}

/* Read restart ids from r until `end`; 1..KM_FRAME_RESTART_MAX of them. */
static int get_restarts(struct rbuf *r, size_t end, struct km_frame_ack *a)
{
	while (r->pos < end && !r->err && a->n_restart < KM_FRAME_RESTART_MAX)
		a->restart[a->n_restart++] = get_varint(r);
	return r->err || r->pos != end || !a->n_restart ? -EPROTO : 0;
}

/* Parse the ack tail at the end of a data frame's body r[pos..len),
 * backwards from its last byte. */
static int ack_tail(struct rbuf *r, struct km_frame_ack *a)
{
	size_t avail = r->len - r->pos;
	if (avail < 4)
		return -EPROTO;
	uint8_t desc = r->p[r->len - 1];
	size_t nbm = desc >> 4, ol = desc & 0x07, rlen = 0;
	bool rs = desc & 0x08;
	if (nbm > 8 || ol < 1 || ol > 5 || avail < nbm + 2)
		return -EPROTO;
	if (rs)
		rlen = r->p[r->len - 2 - nbm];
	size_t need = ol + 2 + (rs ? rlen + 1 : 0) + nbm + 1;
	if (avail < need)
		return -EPROTO;
	struct rbuf t = { .p = r->p, .pos = r->len - need, .len = r->len - 1 };
	size_t start = t.pos;
	memset(a, 0, sizeof(*a));
	uint64_t org = get_varint(&t);
	if (t.err || t.pos - start != ol || org > UINT32_MAX)
		return -EPROTO;
	a->origin = (uint32_t)org;
	a->cum = get_u16(&t);
	if (rs && (get_restarts(&t, t.pos + rlen, a) || (get_u8(&t), t.err)))
		return -EPROTO;
	for (size_t k = 0; k < nbm; k++)
		a->bitmap |= (uint64_t)get_u8(&t) << (8 * k);
	r->len = start;   /* records end where the tail begins */
	return 0;
}

static int ack_body(struct rbuf *r, bool rs, bool lost, struct km_frame_ack *a)
{
	memset(a, 0, sizeof(*a));
	a->slots_lost = lost;
	uint64_t org = get_varint(r);

	a->cum = get_u16(r);
	if (rs) {
		size_t n = get_u8(r);
		if (n < 1 || n > KM_FRAME_RESTART_MAX)
			return -EPROTO;
		for (size_t i = 0; i < n; i++)
			a->restart[i] = get_varint(r);
		a->n_restart = (uint8_t)n;
	}
	if (r->err || org > UINT32_MAX || r->len - r->pos > 8)
		return -EPROTO;
	a->origin = (uint32_t)org;
	for (size_t k = 0; r->pos < r->len; k++)
		a->bitmap |= (uint64_t)get_u8(r) << (8 * k);
	return 0;
}

static int parse_data(struct rbuf *r, uint8_t flags, struct dframe *f,
		      struct km_frame_rx_info *info)
{
	f->seq = get_u16(r);
	uint8_t back = get_u8(r);
	bool lost = flags & HDR_DATA_LOST;
	if (r->err || back >= KM_FRAME_WINDOW_MAX ||
	    (lost && (f->version < 2 || !(flags & HDR_ACK))))
		return -EPROTO;
	f->base = (uint16_t)(f->seq - back);
	f->syn = flags & HDR_SYN;
	if ((flags & HDR_ACK) && ack_tail(r, &info->ack))
		return -EPROTO;
	info->has_ack = flags & HDR_ACK;
	info->ack.slots_lost = lost;
	f->recs = r->p + r->pos;
	f->nrecs = r->len - r->pos;
	return recs_check(f->recs, f->nrecs, f->version);
}

int km_frame_rx_input(struct km_frame_rx *rx, const uint8_t *buf, size_t len,
		      int64_t now_ms, km_frame_deliver_fn deliver_fn, void *ctx,
		      struct km_frame_rx_info *info)
{
	struct km_frame_rx_info dummy;

	if (!info)
		info = &dummy;
	memset(info, 0, sizeof(*info));
	if (!buf || !crc_ok(buf, len)) {
		rx->crc_errors++;
		return -EBADMSG;
	}
	struct rbuf r = { .p = buf, .len = len - crc_size(len) };
	uint8_t hdr = get_u8(&r);
	unsigned ver = hdr >> HDR_VER_SHIFT;
	if (ver < 1 || ver > KM_FRAME_VERSION) {
		rx->bad_version++;
		return -EPROTONOSUPPORT;
	}
	uint64_t org = get_varint(&r);
	info->type = (hdr >> HDR_TYPE_SHIFT) & 3;
	info->origin = (uint32_t)org;
	int rc = -EPROTO;
	struct dframe f = { .origin = (uint32_t)org, .version = (uint8_t)ver };
	if (r.err || org > UINT32_MAX)
		goto bad;
	if (rx->cfg.origin_ok && !rx->cfg.origin_ok(rx->cfg.origin_ctx, (uint32_t)org)) {
		rx->foreign++;
		return -EPERM;
	}
	if (info->type == KM_FRAME_T_ACK) {
		if ((hdr & (ver >= 2 ? 4 : 6)) ||
		    ack_body(&r, hdr & 1, ver >= 2 && (hdr & HDR_ACK_LOST), &info->ack))
			goto bad;
		info->has_ack = true;
		rx->acks_in++;
		return 0;
	}
	if (info->type != KM_FRAME_T_DATA || parse_data(&r, hdr & 7, &f, info))
		goto bad;
	info->seq = f.seq;
	info->ack_due = true;
	return data_in(rx, &f, now_ms, deliver_fn, ctx);
bad:
	memset(info, 0, sizeof(*info));
	rx->malformed++;
	return rc;
}

uint32_t km_frame_node_id(const char *name)
{
	uint32_t h = 2166136261u;
	while (*name)
		h = (h ^ (uint8_t)*name++) * 16777619u;
	return h;
}
