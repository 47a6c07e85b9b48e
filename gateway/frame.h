/* SPDX-License-Identifier: MIT */
/* Narrow-link frame codec: packs spooled messages into CRC-protected frames no larger than a link MTU, with fragmentation, acks and selective retransmission. */
#ifndef KM_FRAME_H
#define KM_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zlib.h>

/* Newest wire format version (see the comment atop frame.c). Receivers take
 * every version up to this one; a sender writes the one its config asks for. */
#define KM_FRAME_VERSION 2
/* Version 2: per-origin slots holding the last message of a topic, so that
 * the next one on that topic names the slot instead of its topic and id,
 * and deflates against it. Bounds of what a slot holds: */
#define KM_FRAME_SLOTS 64
#define KM_FRAME_SLOT_PAYLOAD_MAX 256
#define KM_FRAME_SLOT_TOPIC_MAX 128
/* Smallest MTU the encoder accepts: header, CRC and a first fragment with a
 * dictionary topic still fit, with room for a few payload bytes. */
#define KM_FRAME_MTU_MIN 32
/* Largest MTU: BeiDou-3 regional 1750 B with headroom; bounds window memory. */
#define KM_FRAME_MTU_MAX 4096
/* Frames of at most this many bytes carry CRC-16/CCITT, larger ones CRC-32. */
#define KM_FRAME_CRC16_MAX 256
/* Largest send window; the ack bitmap covers window - 1 frames. */
#define KM_FRAME_WINDOW_MAX 64
/* Most message records in one frame (bounds per-frame bookkeeping). */
#define KM_FRAME_RECS_MAX 128
/* Longest literal topic on the wire. */
#define KM_FRAME_TOPIC_MAX 512
/* Most restart requests in one ack. */
#define KM_FRAME_RESTART_MAX 4
/* Longest ack frame: hdr, two 5-byte varints, cum, restart count and ids,
 * 8 bitmap bytes, CRC-16. */
#define KM_FRAME_ACK_MAX (1 + 5 + 5 + 2 + 1 + 10 * KM_FRAME_RESTART_MAX + 8 + 2)
/* Longest position JSON a receiver with cfg.pos_json hands over: a full
 * record takes about 200 bytes and a 31-byte unit escaped 6 times that. */
#define KM_FRAME_POS_JSON_MAX 512
/* Split messages the receiver remembers having lost the start of. */
#define KM_FRAME_ORPHANS_MAX 8

/* Payload encodings. AUTO is for the encoder only: compact JSON, then raw
 * deflate when smaller (and, with cfg.pos_batch, a position batch when
 * smaller still). On decode the payload is always handed over inflated,
 * and enc says RAW or POSBATCH (RAW for a batch a receiver with
 * cfg.pos_json hands over as JSON). */
enum km_frame_enc {
	KM_FRAME_ENC_AUTO = 0,     /* encoder picks RAW or DEFLATE */
	KM_FRAME_ENC_RAW = 1,      /* bytes as given (compacted JSON is RAW) */
	KM_FRAME_ENC_DEFLATE = 2,  /* raw deflate, RFC 1951; on encode same as AUTO */
	KM_FRAME_ENC_POSBATCH = 3, /* compact position batch (posrec module), sent verbatim */
};

/*
 * One message. On encode every pointer is borrowed for the duration of the
 * call. On decode the struct and everything it points to belong to the
 * receiver and are valid only during the delivery callback: copy what you keep.
 */
struct km_frame_msg {
	uint64_t id;          /* unique per origin, monotonic */
	const char *topic;    /* NUL-terminated; on decode NULL when topic_idx is unknown here */
	const uint8_t *payload;
	size_t len;
	int64_t created_ms;   /* unix ms, <= 0 = unknown; the wire keeps whole seconds */
	uint32_t origin;      /* decode: numeric node id of the origin */
	uint32_t topic_idx;   /* decode: dictionary index, or UINT32_MAX when sent literally */
	uint8_t cls;          /* 0..7, class as numbered by config */
	uint8_t qos;          /* 0..2 */
	uint8_t enc;          /* enum km_frame_enc */
	size_t frag_off;      /* encode: encoded bytes already sent (km_frame_put.next_off) */
};

/* Topic dictionary agreed by config on both ends: index = position. Borrowed.
 * Append only: reordering it breaks decoding of frames in flight. */
struct km_frame_dict {
	const char *const *topics;
	size_t n;
};

/* An acknowledgement of the frames of one origin: everything up to cum is
 * delivered; bit i of bitmap says frame cum + 2 + i is held by the receiver
 * (cum + 1 is missing by definition). */
struct km_frame_ack {
	uint32_t origin;  /* whose frames are acknowledged */
	uint16_t cum;
	uint64_t bitmap;
	/* Split messages whose start the receiver lost (restart, eviction):
	 * the sender must send them again from frag_off 0. */
	uint8_t n_restart;
	uint64_t restart[KM_FRAME_RESTART_MAX];
	/* Version 2: the receiver lost its slots for this origin (it restarted,
	 * or a frame stopped half way): the sender must abandon the frames in
	 * flight and send their messages again without slot references. */
	bool slots_lost;
	/* Wire version an ack frame is written in: that of the origin's frames
	 * (km_frame_rx_ack fills it), so an older sender understands it; 0 = 1. */
	uint8_t version;
};

/* What km_frame_tx_encode() put in a frame. */
struct km_frame_put {
	uint16_t seq;       /* the frame's sequence number */
	size_t n_full;      /* msgs[0..n_full) went in completely */
	size_t next_off;    /* encoded bytes of msgs[n_full] sent so far (0 = untouched) */
	bool acked_piggy;   /* the ack passed in went in too */
};

struct km_frame_tx_cfg {
	uint32_t origin;                    /* this node's numeric id */
	uint16_t first_seq;                 /* pick at random per start (see frame.c) */
	unsigned window;                    /* 1..KM_FRAME_WINDOW_MAX, 0 = max */
	size_t mtu_max;                     /* largest MTU this sender will be given */
	const struct km_frame_dict *dict;   /* borrowed, may be NULL */
	bool no_compact_json;               /* leave JSON whitespace alone */
	size_t deflate_min;                 /* try deflate from this size, 0 = 24 */
	unsigned version;                   /* wire version written: 0 or 1 = 1, 2 = with slots */
	bool ack_room;                      /* an ack given to km_frame_tx_encode always rides: the
					       messages leave its bytes free (unless that is over
					       half the frame); false: only when they left room */
	/* Version 2: a message whose payload is canonical position JSON goes
	 * as a compact position batch when that is smaller on the wire; the
	 * receiver delivers the batch (enc POSBATCH), whose record is the
	 * JSON's quantised to the codec's resolution (gateway/posrec.h). */
	bool pos_batch;
};

struct km_frame_ref;

struct km_frame_slot {
	bool used;
	bool sacked;          /* receiver holds it: do not resend */
	bool lost;            /* a later frame got through: resend now */
	uint16_t seq;
	size_t len;
	size_t body;          /* header and records: the bytes before an ack tail */
	uint8_t *buf;         /* owned, cfg.mtu_max bytes */
	int64_t sent_ms;
	uint64_t stamp;       /* send order, for loss detection */
	unsigned tries;
	size_t n_done;
	uint64_t *done;       /* ids whose last byte is in this frame; owned */
	bool has_part;
	uint64_t part_id;     /* a split message with a fragment here, not its last */
};

/* Sender: frame numbering, the window of unacked frames, deflate state.
 * Caller-embedded; km_frame_tx_init/_deinit. */
struct km_frame_tx {
	struct km_frame_tx_cfg cfg;
	uint16_t next_seq;
	unsigned inflight;    /* frames [next_seq - inflight, next_seq) unacked */
	bool synced;          /* a receiver acked this session: stop SYN */
	uint64_t stamp;
	struct km_frame_slot slot[KM_FRAME_WINDOW_MAX];
	z_stream zs;
	bool zs_ok;
	struct {
		bool used;
		uint64_t id;
		uint16_t seq;  /* next_seq when the restart was reported */
	} rs[KM_FRAME_ORPHANS_MAX];
	unsigned rs_next;
	uint8_t *cbuf;        /* compacted JSON */
	size_t cbuf_cap;
	uint8_t *enc_buf;     /* encoded payload of the message being framed */
	size_t enc_cap;
	size_t enc_len;
	uint8_t enc_code;     /* wire encoding of enc_buf */
	bool cache_ok;        /* enc_buf holds cache_id's encoding */
	uint64_t cache_id;
	size_t cache_len;
	const uint8_t *cache_src;
	/* Version 2: what this sender believes the receiver's slots hold
	 * (KM_FRAME_SLOTS entries, owned; NULL for version 1). */
	struct km_frame_ref *ref;
	uint64_t ref_clock;   /* LRU stamps of ref */
	bool lost_answered;
	uint16_t lost_seq;    /* next_seq when a slots_lost ack was last answered */
	/* counters */
	uint64_t frames_sent;
	uint64_t frames_resent;
	uint64_t slot_refs;   /* messages sent against a slot */
	uint64_t slot_resets; /* slots_lost acks answered by abandoning the window */
	uint64_t frames_sacked; /* frames an ack newly said the receiver holds out of order */
	uint64_t pos_batches; /* position messages sent as a compact batch (cfg.pos_batch) */
};

/* Receiver limits. Zero fields take the defaults documented in frame.c. */
struct km_frame_rx_cfg {
	const struct km_frame_dict *dict;   /* borrowed, may be NULL */
	unsigned max_origins;               /* peers tracked at once (16) */
	size_t max_buffer_bytes;            /* out-of-order frames held, all origins (64 KiB) */
	unsigned max_partials;              /* messages being reassembled (8) */
	size_t max_partial_bytes;           /* their bytes, all together (256 KiB) */
	size_t max_msg;                     /* largest message, after inflate (128 KiB) */
	/* Hand a compact position batch (enc POSBATCH) of one position over
	 * as its canonical JSON (enc RAW, km_posrec_batch_json): what a
	 * sender with cfg.pos_batch made of position JSON. A batch that is
	 * not one good position is counted (bad_posbatch) and dropped, its
	 * frame acknowledged (sent again it would fail again). */
	bool pos_json;
	/* Which origins this receiver takes (NULL: any). Asked before anything of
	 * the frame is acted on (no origin state made or evicted, no ack taken): a
	 * frame whose origin it refuses is counted (foreign) and dropped with
	 * -EPERM. ctx is origin_ctx, borrowed. */
	bool (*origin_ok)(void *ctx, uint32_t origin);
	void *origin_ctx;
	/* Version 2 slots take about 28 KiB per origin that uses them, made on
	 * first use: at most max_origins of them. */
};

struct km_frame_rx_origin;
struct km_frame_partial;

/* Receiver: CRC check, per-origin reorder buffer, reassembly, ack state.
 * Caller-embedded; km_frame_rx_init/_deinit. */
struct km_frame_rx {
	struct km_frame_rx_cfg cfg;
	struct km_frame_rx_origin *org;      /* cfg.max_origins entries, owned */
	struct km_frame_partial *part;       /* cfg.max_partials entries, owned */
	size_t buffered_bytes;
	size_t partial_bytes;
	uint64_t tick;                       /* ages for LRU eviction */
	z_stream zs;
	bool zs_ok;
	uint8_t *scratch;                    /* inflate output, cfg.max_msg bytes */
	char topic[KM_FRAME_TOPIC_MAX + 1];  /* literal topic handed to the callback */
	struct km_frame_orphan {
		bool used;
		uint32_t origin;
		uint64_t id;
		uint64_t age;
		uint16_t seq;   /* frame being processed when the loss was seen */
	} orphan[KM_FRAME_ORPHANS_MAX];      /* restart requests to put in acks */
	/* counters: every frame or message refused lands in exactly one */
	uint64_t frames_ok;          /* accepted data frames (first copy) */
	uint64_t acks_in;            /* ack frames received */
	uint64_t crc_errors;         /* CRC mismatch or runt: -EBADMSG */
	uint64_t bad_version;        /* good CRC, unknown version: -EPROTONOSUPPORT */
	uint64_t malformed;          /* good CRC, bad structure: -EPROTO */
	uint64_t duplicates;         /* frame already delivered or buffered */
	uint64_t out_of_window;      /* frame beyond the reorder window */
	uint64_t dropped_nomem;      /* ahead frame not buffered: byte cap */
	uint64_t skipped_frames;     /* frames the sender abandoned */
	uint64_t resyncs;            /* sender restarted (SYN with a new base) */
	uint64_t origin_evictions;   /* least recently heard origin forgotten */
	uint64_t partial_evictions;  /* oldest partial message dropped for space */
	uint64_t orphan_frags;       /* fragment whose message start is unknown */
	uint64_t oversize;           /* message above max_msg, dropped */
	uint64_t bad_payload;        /* deflate stream that does not inflate */
	uint64_t bad_posbatch;       /* cfg.pos_json: batch that is not one good position, dropped */
	uint64_t unknown_topics;     /* dictionary index beyond our dictionary */
	uint64_t restarts_lost;      /* restart request dropped: list full (message lost) */
	uint64_t slot_misses;        /* frame naming a slot we do not hold: asked to resend */
	uint64_t delivered;          /* messages handed to the callback */
	uint64_t foreign;            /* good CRC, origin refused by cfg.origin_ok: -EPERM */
};

/* What km_frame_rx_input() learnt from a frame besides the messages. */
struct km_frame_rx_info {
	uint8_t type;          /* KM_FRAME_T_DATA or KM_FRAME_T_ACK */
	uint32_t origin;       /* node that sent the frame */
	uint16_t seq;          /* data frames */
	bool ack_due;          /* send km_frame_rx_ack(origin) back */
	bool has_ack;          /* ack (ack frame or piggybacked) for km_frame_tx_ack() */
	struct km_frame_ack ack;
};

enum { KM_FRAME_T_DATA = 0, KM_FRAME_T_ACK = 1 };

/* Delivery callback: m and all it points to are valid during the call only.
 * Return 0 to accept; a negative errno stops the frame, which is then not
 * acknowledged and will be delivered again (messages before m may repeat). */
typedef int (*km_frame_deliver_fn)(void *ctx, const struct km_frame_msg *m);
/* Sender report: message id is delivered (release it from the spool). */
typedef void (*km_frame_done_fn)(void *ctx, uint64_t id);

/* Initialise tx from cfg (copied; cfg->dict stays borrowed). Returns 0,
 * -EINVAL for a bad window or mtu_max, -ENOMEM. */
int km_frame_tx_init(struct km_frame_tx *tx, const struct km_frame_tx_cfg *cfg);
/* Release everything tx owns; safe on a zeroed or deinitialised tx. */
void km_frame_tx_deinit(struct km_frame_tx *tx);

/*
 * Fill ONE data frame of at most mtu bytes into out (capacity >= mtu) with
 * msgs[0..n) in that order, continuing msgs[i].frag_off where a message was
 * split. Messages go whole when they fit; one that would fit a fresh frame
 * waits for the next frame rather than being split; larger ones are split,
 * continuing the next frame from put->next_off. ack (may be NULL) is
 * piggybacked when room is left (with cfg.ack_room, room is kept for it). The frame is kept in the window until
 * acknowledged. now_ms stamps it for retransmission.
 * Returns the frame length (> 0); -EAGAIN when the window is full; -EMSGSIZE
 * when msgs[0] cannot go even in an empty frame (topic too long for mtu);
 * -EINVAL for bad arguments (mtu out of range or above cfg.mtu_max, n == 0,
 * cls > 7, qos > 2); -ENOMEM.
 */
int km_frame_tx_encode(struct km_frame_tx *tx, const struct km_frame_msg *msgs,
		       size_t n, size_t mtu, const struct km_frame_ack *ack,
		       int64_t now_ms, uint8_t *out, struct km_frame_put *put);

/*
 * Fill a PROBE into out (capacity >= mtu): a data frame without messages that
 * the peer acknowledges like any other, so an idle link learns whether its
 * peer still hears it. It takes a sequence number and a window place until
 * acknowledged, and is retransmitted after rto like any frame. Returns its
 * length, -EAGAIN when the window is full, -EINVAL, -ENOMEM.
 */
int km_frame_tx_probe(struct km_frame_tx *tx, size_t mtu, int64_t now_ms, uint8_t *out);

/* The type (KM_FRAME_T_*) and, for a data frame, the sequence number of the
 * frame buf[0..len) (one this end encoded: no CRC check). 0 or -EBADMSG. */
int km_frame_peek(const uint8_t *buf, size_t len, uint8_t *type, uint16_t *seq);

/*
 * Apply an ack for our frames. First, for each restart request not yet
 * answered, call restart(ctx, id): the caller must send that message again
 * from frag_off 0 (ids it no longer holds can be ignored); its earlier
 * frames will not report it done. Then release every frame up to ack->cum,
 * calling done(ctx, id) for each message whose last byte they carried, in
 * send order; mark frames the bitmap holds as not to be resent and earlier
 * unacked ones as lost. Acks for another origin or outside the window are
 * ignored. Either callback may be NULL. Returns the frames released.
 * Last, an ack that says slots_lost (version 2) not yet answered abandons
 * every frame still in flight, calling restart(ctx, id) for each message
 * they carried (all of it or a fragment), and forgets the slots: those
 * messages must be handed over again from frag_off 0.
 */
int km_frame_tx_ack(struct km_frame_tx *tx, const struct km_frame_ack *ack,
		    km_frame_done_fn done, km_frame_done_fn restart, void *ctx);

/*
 * Pick the frame to resend now: a frame marked lost, else the oldest one
 * not held by the receiver and sent more than rto_ms ago. Copies it into out
 * (capacity >= its length) and stamps it. Returns its length, 0 when nothing
 * is due, -ENOSPC when cap is too small.
 */
int km_frame_tx_due(struct km_frame_tx *tx, int64_t now_ms, int64_t rto_ms,
		    uint8_t *out, size_t cap);

/* km_frame_tx_due, with ack (may be NULL) in place of the tail the frame was
 * framed with, when it fits in cap; *acked says whether it went in. On a card
 * that sends one frame a slot, a frame sent again must carry the owed ack, or
 * the two wait for each other's slot until ack_timeout. */
int km_frame_tx_due_ack(struct km_frame_tx *tx, int64_t now_ms, int64_t rto_ms,
			const struct km_frame_ack *ack, uint8_t *out, size_t cap,
			bool *acked);

/* The length of the frame km_frame_tx_due would return now, or 0. */
size_t km_frame_tx_pending(const struct km_frame_tx *tx, int64_t now_ms, int64_t rto_ms);

/* Abandon every unacked frame (link switched, messages go elsewhere): their
 * messages stay undelivered in the caller's spool and split messages must be
 * restarted with frag_off = 0. The receiver skips the gap. */
void km_frame_tx_reset(struct km_frame_tx *tx);

/* Frames in flight. */
unsigned km_frame_tx_inflight(const struct km_frame_tx *tx);

/* Initialise rx from cfg (copied; dict stays borrowed). Returns 0 or -ENOMEM. */
int km_frame_rx_init(struct km_frame_rx *rx, const struct km_frame_rx_cfg *cfg);
/* Release everything rx owns; safe on a zeroed or deinitialised rx. */
void km_frame_rx_deinit(struct km_frame_rx *rx);

/*
 * Take one received datagram buf[0..len) (borrowed). Data frames deliver
 * their complete messages through deliver(ctx, m) in send order per origin;
 * both frame types fill *info (may be NULL). now_ms (unix ms) resolves the
 * 24-bit wire time. Returns 0; -EBADMSG for a CRC mismatch or runt;
 * -EPROTONOSUPPORT for another version; -EPERM for an origin cfg.origin_ok
 * refuses; -EPROTO for a malformed frame with a good CRC; or the callback's
 * error. Counters in rx say which.
 */
int km_frame_rx_input(struct km_frame_rx *rx, const uint8_t *buf, size_t len,
		      int64_t now_ms, km_frame_deliver_fn deliver, void *ctx,
		      struct km_frame_rx_info *info);

/* Fill *ack with what we hold of origin's frames and the restart requests
 * pending for it. Returns 0 or -ENOENT when that origin is unknown. */
int km_frame_rx_ack(const struct km_frame_rx *rx, uint32_t origin,
		    struct km_frame_ack *ack);

/* Encode a stand-alone ack frame sent by node `from` into out[0..cap).
 * Returns its length (7 to KM_FRAME_ACK_MAX bytes) or -ENOSPC. */
int km_frame_ack_encode(const struct km_frame_ack *ack, uint32_t from,
			uint8_t *out, size_t cap);

/* JSON compaction used by the encoder: copy in[0..len) to out (capacity >=
 * len) without insignificant whitespace. Returns the new length, or -EINVAL
 * when in does not look like a JSON object or array (out is then garbage). */
int km_frame_json_compact(const uint8_t *in, size_t len, uint8_t *out);

/* The origin a node's frames carry: the 32-bit FNV-1a hash of its name. */
uint32_t km_frame_node_id(const char *name);

/* Appends the CRC the wire format gives a frame of n + CRC bytes to p[0..n) (room
 * for 4 more bytes); returns the frame's length. For gateway/auth.c, which hands the
 * frame receiver the plain frame of a sealed one. */
size_t km_frame_crc_append(uint8_t *p, size_t n);

/* CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) as used on the wire. */
uint16_t km_frame_crc16(const uint8_t *p, size_t n);

#endif /* KM_FRAME_H */
