/* SPDX-License-Identifier: MIT */
/* Narrow-link frame authentication: per-peer keys, sealing (encrypt-then-MAC) and opening of frames, counters that make a replay fail. */
#include "auth.h"

#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "frame.h"

/*
 * SEALED FRAME, wire version 3. The plain frame of version 1 or 2 (gateway/frame.c)
 * goes inside; a receiver opens it and hands the plain frame, CRC recomputed, to the
 * frame receiver, which never sees a frame that did not authenticate.
 *
 *   sealed = ahdr:u8  origin:varint  ctr:u32  E(plain hdr, body)  tag:T bytes
 *   ahdr   = version:3 (bits 7-5, = 3) | 0:5 (reserved)
 *   origin = the plain frame's, in clear: the receiver picks the key by it
 *   ctr    = the sender's counter, big-endian, never 0, never used twice under a key
 *   E      = XChaCha20 (libsodium crypto_stream_xchacha20_xor) under the encryption
 *            subkey, nonce = "KMA3" | dir:u8 | origin:u32 | ctr:u32 | 0 (11 bytes)
 *   tag    = HMAC-SHA-256 under the MAC subkey over dir:u8 | ahdr .. E (everything
 *            before the tag, and the direction, which is not on the wire), its first
 *            T bytes (tag_bytes, 4..16, default 8; both ends configure the same)
 *
 * The plain frame's CRC is not sent: the MAC checks more than it did. A sealed frame
 * is 1 + 4 + T - 2 bytes longer than its plain frame (11 at T = 8 on a 77-byte
 * BeiDou frame; KM_AUTH_OVERHEAD). The subkeys come from the 32-byte secret of the
 * key file by BLAKE2b (crypto_kdf_derive_from_key, context "kuimenA3", ids 1 and 2),
 * so one secret is never used by two algorithms.
 *
 * WHY encrypt-then-MAC with a truncated HMAC rather than an AEAD. libsodium's AEADs
 * (ChaCha20-Poly1305, XChaCha20-Poly1305, AES-GCM) have a fixed 16-byte tag, and
 * Poly1305 must not be truncated as freely as HMAC (its forgery bound is per key and
 * message length, and a one-time key per frame is what makes it safe). On a 77-byte
 * frame 16 bytes are a fifth of the air; a truncated HMAC tag of T bytes leaves a
 * forger a chance of 2^-8T per frame tried (8 bytes: 2^-64; 4 bytes: 2^-32, which a
 * BeiDou card sending one frame a minute would need about 4 000 years of air time to
 * reach at even odds), and HMAC-SHA-256 truncated keeps that bound (RFC 2104 sec 5,
 * NIST SP 800-107). Encryption first, MAC over the ciphertext: a frame that fails is
 * never decrypted, and nothing of it reaches the frame codec.
 *
 * WHY a counter and not a timestamp. Cards have no trustworthy clock, and a frame may
 * wait in a satellite network for minutes. The counter is per sender and key: a
 * receiver keeps the highest it took per peer and a 64-bit bitmap below it, so frames
 * reordered by up to 64 places are still taken once; anything at or below a taken one
 * is a replay. The sender persists a high-water mark KM_AUTH_RESERVE ahead of use
 * (written before a counter beyond the mark leaves), so a restart starts above
 * anything sent and a nonce is never used twice; the receiver persists its highest
 * counters (gateway/narrow.c: before acting on a frame when the last save is a second
 * old, else within the second, and at stop), so a session recorded and replayed after
 * the receiver restarts is refused as well. Each link has its own counter and so
 * must have its own key (two links of one node with one key are refused at start).
 */

#define NONCE_LABEL "KMA3"
static const char kdf_ctx[crypto_kdf_CONTEXTBYTES] = { 'k', 'u', 'i', 'm', 'e', 'n', 'A', '3' };

static void fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;
        if (!err || !errlen)
                return;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
}

void km_auth_key_from_secret(struct km_auth_key *key, const uint8_t secret[KM_AUTH_KEY_BYTES])
{
        uint8_t h[4];
        crypto_kdf_derive_from_key(key->enc, sizeof(key->enc), 1, kdf_ctx, secret);
        crypto_kdf_derive_from_key(key->mac, sizeof(key->mac), 2, kdf_ctx, secret);
        crypto_generichash(h, sizeof(h), secret, KM_AUTH_KEY_BYTES, (const uint8_t *)"kuimen key id", 13);
        snprintf(key->id, sizeof(key->id), "%02x%02x%02x%02x", h[0], h[1], h[2], h[3]);
        key->set = true;
}

int km_auth_key_new(char *out, size_t cap)
{
        uint8_t k[KM_AUTH_KEY_BYTES];
        if (sodium_init() < 0)
                return -EIO;
        if (cap < sodium_base64_ENCODED_LEN(KM_AUTH_KEY_BYTES, sodium_base64_VARIANT_ORIGINAL))
                return -ENOSPC;
        randombytes_buf(k, sizeof(k));
        sodium_bin2base64(out, cap, k, sizeof(k), sodium_base64_VARIANT_ORIGINAL);
        sodium_memzero(k, sizeof(k));
        return 0;
}

static char *trim(char *s)
{
        while (*s == ' ' || *s == '\t')
                s++;
        size_t n = strlen(s);
        while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
                s[--n] = '\0';
        return s;
}

int km_auth_key_load(const char *path, const char *name, struct km_auth_key *key, char *err, size_t errlen)
{
        struct stat st;
        char line[512];
        uint8_t secret[KM_AUTH_KEY_BYTES];
        int found = 0, lineno = 0, rc = 0;

        if (sodium_init() < 0)
                return -EIO;
        memset(key, 0, sizeof(*key));
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
                rc = -errno;
                fail(err, errlen, "%s: %s", path, strerror(-rc));
                return rc;
        }
        /* Checked on the descriptor read, not the name: no window between the two. */
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(fd);
                fail(err, errlen, "%s: not a regular file", path);
                return -EINVAL;
        }
        if (st.st_mode & 077) {
                close(fd);
                fail(err, errlen, "%s: mode %04o lets others read or write the key: chmod 600 it", path,
                     (unsigned)(st.st_mode & 07777));
                return -EPERM;
        }
        FILE *f = fdopen(fd, "r");
        if (!f) {
                close(fd);
                return -ENOMEM;
        }
        while (fgets(line, sizeof(line), f)) {
                lineno++;
                char *s = trim(line), *k = s, *n = NULL;
                if (!*s || *s == '#')
                        continue;
                char *eq = strchr(s, '=');
                /* base64 ends in '=': a name is before an '=' followed by more text */
                if (eq && eq[1] && trim(eq + 1)[0]) {
                        *eq = '\0';
                        n = trim(s);
                        k = trim(eq + 1);
                }
                if (name && (!n || strcmp(n, name) != 0))
                        continue;
                size_t bl = 0;
                if (sodium_base642bin(secret, sizeof(secret), k, strlen(k), NULL, &bl, NULL,
                                      sodium_base64_VARIANT_ORIGINAL) != 0 || bl != sizeof(secret)) {
                        fail(err, errlen, "%s:%d: not a 32-byte key in base64 (kuimenctl key new makes one)", path, lineno);
                        rc = -EINVAL;
                        break;
                }
                if (found++) {
                        fail(err, errlen, "%s:%d: a second key%s%s", path, lineno, name ? " for " : "", name ? name : "");
                        rc = -EINVAL;
                        break;
                }
                km_auth_key_from_secret(key, secret);
        }
        fclose(f);
        sodium_memzero(secret, sizeof(secret));
        sodium_memzero(line, sizeof(line));
        if (rc == 0 && !found) {
                fail(err, errlen, "%s: no key%s%s", path, name ? " for " : "", name ? name : "");
                rc = -ENOENT;
        }
        if (rc < 0)
                sodium_memzero(key, sizeof(*key));
        return rc;
}

/* ---- the state file ------------------------------------------------------------------ */

static int state_read(struct km_auth *a)
{
        FILE *f = fopen(a->state_path, "re");
        char line[128];
        if (!f)
                return errno == ENOENT ? 0 : -errno;
        while (fgets(line, sizeof(line), f)) {
                uint64_t v;
                unsigned o;
                if (sscanf(line, "tx %" SCNu64, &v) == 1)
                        a->tx_next = a->tx_reserved = v;
                else if (sscanf(line, "rx %x %" SCNu64, &o, &v) == 2) {
                        /* peers are added after init: kept for km_auth_peer_add */
                        if (a->nsaved < KM_AUTH_PEERS_MAX) {
                                a->saved_origin[a->nsaved] = o;
                                a->saved_max[a->nsaved++] = v;
                        }
                }
        }
        fclose(f);
        return 0;
}

/* Writes tx_reserved (to be) = reserve and every peer's max: .new, fsync, rename,
 * fsync the directory (STYLE.md, durable state). */
static int state_write(struct km_auth *a, uint64_t reserve)
{
        char tmp[4200];
        if (!a->state_path)
                return 0;
        snprintf(tmp, sizeof(tmp), "%s.new", a->state_path);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        FILE *f = fdopen(fd, "w");
        if (!f) {
                close(fd);
                return -ENOMEM;
        }
        fprintf(f, "# kuimen narrow-link counters: never edit or copy (a counter used twice breaks the encryption)\n");
        fprintf(f, "tx %" PRIu64 "\n", reserve);
        for (size_t i = 0; i < a->npeers; i++)
                if (a->peer[i].max)
                        fprintf(f, "rx %08" PRIx32 " %" PRIu64 "\n", a->peer[i].origin, a->peer[i].max);
        int rc = fflush(f) != 0 || fsync(fd) < 0 ? -errno : 0;
        if (fclose(f) != 0 && !rc)
                rc = -errno;
        if (!rc && rename(tmp, a->state_path) < 0)
                rc = -errno;
        if (!rc)
                rc = km_fsync_dir(a->state_path);
        if (rc < 0) {
                unlink(tmp);
                return rc;
        }
        a->tx_reserved = reserve;
        for (size_t i = 0; i < a->npeers; i++)
                a->peer[i].saved = a->peer[i].max;
        a->dirty = false;
        return 0;
}

int km_auth_save(struct km_auth *a)
{
        return a->dirty ? state_write(a, a->tx_reserved) : 0;
}

int km_auth_init(struct km_auth *a, unsigned tag, enum km_auth_dir tx_dir, uint32_t self, const char *state_path)
{
        memset(a, 0, sizeof(*a));
        if (sodium_init() < 0)
                return -EIO;
        if (!tag)
                tag = KM_AUTH_TAG_DEFAULT;
        if (tag < KM_AUTH_TAG_MIN || tag > KM_AUTH_TAG_MAX)
                return -EINVAL;
        a->tag = tag;
        a->tx_dir = tx_dir;
        a->self = self;
        a->tx_next = 1;
        if (state_path && !(a->state_path = strdup(state_path)))
                return -ENOMEM;
        int rc = a->state_path ? state_read(a) : 0;
        if (rc < 0) {
                free(a->state_path);
                a->state_path = NULL;
        }
        if (a->tx_next == 0)
                a->tx_next = 1;
        return rc;
}

void km_auth_deinit(struct km_auth *a)
{
        if (a->state_path && a->dirty)
                (void)km_auth_save(a);
        free(a->state_path);
        sodium_memzero(a, sizeof(*a));
}

struct km_auth_peer *km_auth_peer_add(struct km_auth *a, const char *name, const struct km_auth_key *key,
                                      const struct km_auth_key *next)
{
        if (a->npeers == KM_AUTH_PEERS_MAX)
                return NULL;
        struct km_auth_peer *p = &a->peer[a->npeers++];
        memset(p, 0, sizeof(*p));
        snprintf(p->name, sizeof(p->name), "%s", name);
        if (strcmp(name, "*") == 0)
                a->any_peer = true;
        else
                p->origin = km_frame_node_id(name);
        if (key)
                p->key = *key;
        if (next)
                p->next = *next;
        for (size_t i = 0; i < a->nsaved; i++)
                if (a->saved_origin[i] == p->origin && !a->any_peer) {
                        p->max = p->saved = a->saved_max[i];
                        p->bits = ~0ULL; /* everything at or below the saved mark counts as taken */
                }
        return p;
}

/* ---- sealing and opening ----------------------------------------------------------- */

static void nonce_of(uint8_t n[crypto_stream_xchacha20_NONCEBYTES], enum km_auth_dir dir, uint32_t origin,
                     uint32_t ctr)
{
        memset(n, 0, crypto_stream_xchacha20_NONCEBYTES);
        memcpy(n, NONCE_LABEL, 4);
        n[4] = (uint8_t)dir;
        for (int i = 0; i < 4; i++) {
                n[5 + i] = (uint8_t)(origin >> (24 - 8 * i));
                n[9 + i] = (uint8_t)(ctr >> (24 - 8 * i));
        }
}

static void tag_of(const struct km_auth_key *k, enum km_auth_dir dir, const uint8_t *p, size_t n,
                   uint8_t out[crypto_auth_hmacsha256_BYTES])
{
        crypto_auth_hmacsha256_state st;
        uint8_t d = (uint8_t)dir;
        crypto_auth_hmacsha256_init(&st, k->mac, sizeof(k->mac));
        crypto_auth_hmacsha256_update(&st, &d, 1);
        crypto_auth_hmacsha256_update(&st, p, n);
        crypto_auth_hmacsha256_final(&st, out);
}

/* Reads the varint origin at p[0..len); returns its length or 0. */
static size_t origin_at(const uint8_t *p, size_t len, uint32_t *origin)
{
        uint64_t v = 0;
        for (size_t i = 0; i < len && i < 5; i++) {
                v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
                if (!(p[i] & 0x80)) {
                        if (v > UINT32_MAX)
                                return 0;
                        *origin = (uint32_t)v;
                        return i + 1;
                }
        }
        return 0;
}

static size_t crc_len_of(size_t plain_len)
{
        return plain_len <= KM_FRAME_CRC16_MAX ? 2 : 4;
}

int km_auth_seal(struct km_auth *a, struct km_auth_peer *p, const uint8_t *plain, size_t len, uint8_t *out,
                 size_t cap)
{
        uint32_t origin;
        uint8_t nonce[crypto_stream_xchacha20_NONCEBYTES], mac[crypto_auth_hmacsha256_BYTES];
        if (!p || !p->key.set || len < 4)
                return -EINVAL;
        size_t ol = origin_at(plain + 1, len - 1, &origin);
        size_t crc = crc_len_of(len);
        if (!ol || len < 1 + ol + crc)
                return -EINVAL;
        size_t body = len - crc - 1 - ol; /* after the origin, before the CRC */
        size_t n = 1 + ol + 4 + 1 + body + a->tag;
        if (n > cap)
                return -ENOSPC;
        if (a->tx_next > UINT32_MAX)
                return -ENOSPC;
        /* The counter is durable before it leaves: a restart starts above it. */
        if (a->tx_next >= a->tx_reserved) {
                int rc = state_write(a, a->tx_next + KM_AUTH_RESERVE);
                if (rc < 0)
                        return rc;
                if (!a->state_path)
                        a->tx_reserved = a->tx_next + KM_AUTH_RESERVE;
        }
        uint32_t ctr = (uint32_t)a->tx_next++;
        out[0] = KM_AUTH_WIRE_VERSION << 5;
        memcpy(out + 1, plain + 1, ol);
        for (int i = 0; i < 4; i++)
                out[1 + ol + i] = (uint8_t)(ctr >> (24 - 8 * i));
        size_t e = 1 + ol + 4;
        out[e] = plain[0];
        memcpy(out + e + 1, plain + 1 + ol, body);
        nonce_of(nonce, a->tx_dir, origin, ctr);
        crypto_stream_xchacha20_xor(out + e, out + e, 1 + body, nonce, p->key.enc);
        tag_of(&p->key, a->tx_dir, out, e + 1 + body, mac);
        memcpy(out + e + 1 + body, mac, a->tag);
        a->sealed++;
        return (int)n;
}

static struct km_auth_peer *peer_of(struct km_auth *a, uint32_t origin)
{
        for (size_t i = 0; i < a->npeers; i++)
                if (a->peer[i].origin == origin || (a->any_peer && strcmp(a->peer[i].name, "*") == 0))
                        return &a->peer[i];
        return NULL;
}

/* Whether ctr was taken or is older than the window. */
static bool replayed(const struct km_auth_peer *p, uint64_t ctr)
{
        if (ctr == 0)
                return true;
        if (ctr > p->max)
                return false;
        uint64_t d = p->max - ctr;
        return d >= KM_AUTH_WINDOW || (p->bits >> d) & 1;
}

static void take(struct km_auth_peer *p, uint64_t ctr)
{
        if (ctr > p->max) {
                uint64_t s = ctr - p->max;
                p->bits = s >= 64 ? 0 : p->bits << s;
                p->bits |= 1;
                p->max = ctr;
        } else {
                p->bits |= 1ULL << (p->max - ctr);
        }
}

int km_auth_open(struct km_auth *a, const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                 struct km_auth_peer **peer, uint32_t *origin)
{
        uint32_t org = 0;
        uint8_t nonce[crypto_stream_xchacha20_NONCEBYTES], mac[crypto_auth_hmacsha256_BYTES];
        if (peer)
                *peer = NULL;
        if (origin)
                *origin = 0;
        if (!in || len < 1) {
                a->auth_failures++;
                return -EBADMSG;
        }
        /* Plain frames carry the origin at the same place: named in the log too. */
        size_t ol = origin_at(in + 1, len - 1, &org);
        if (origin)
                *origin = org;
        if ((in[0] >> 5) != KM_AUTH_WIRE_VERSION) {
                a->auth_failures++;
                return -EPROTONOSUPPORT;
        }
        if (!ol || (in[0] & 0x1f) || len < 1 + ol + 4 + 1 + a->tag) {
                a->auth_failures++;
                return -EBADMSG;
        }
        struct km_auth_peer *p = peer_of(a, org);
        if (!p || !p->key.set) {
                a->unknown_key++;
                return -ENOKEY;
        }
        size_t e = 1 + ol + 4, clen = len - e - a->tag;
        enum km_auth_dir rx_dir = a->tx_dir == KM_AUTH_UP ? KM_AUTH_DOWN : KM_AUTH_UP;
        int which = 0;
        const struct km_auth_key *k[2] = { &p->key, &p->next };
        for (int i = 0; i < 2 && !which; i++) {
                if (!k[i]->set)
                        continue;
                tag_of(k[i], rx_dir, in, e + clen, mac);
                if (sodium_memcmp(mac, in + e + clen, a->tag) == 0)
                        which = i + 1;
        }
        if (!which) {
                a->auth_failures++;
                return -EBADE;
        }
        uint32_t ctr = (uint32_t)in[1 + ol] << 24 | (uint32_t)in[2 + ol] << 16 | (uint32_t)in[3 + ol] << 8 | in[4 + ol];
        if (replayed(p, ctr)) {
                a->replays++;
                return -EALREADY;
        }
        /* plain = hdr origin body crc */
        size_t body = clen - 1, plen = 1 + ol + body;
        size_t crc = plen + 2 <= KM_FRAME_CRC16_MAX ? 2 : 4;
        if (plen + crc > cap)
                return -ENOSPC;
        nonce_of(nonce, rx_dir, org, ctr);
        /* hdr and body decrypted in one pass to out + ol, then hdr and origin before them */
        crypto_stream_xchacha20_xor(out + ol, in + e, clen, nonce, k[which - 1]->enc);
        uint8_t hdr = out[ol];
        memcpy(out + 1, in + 1, ol);
        out[0] = hdr;
        km_frame_crc_append(out, plen);
        take(p, ctr);
        p->last_key = which;
        if (p->max > p->saved)
                a->dirty = true;
        a->opened++;
        if (peer)
                *peer = p;
        return (int)(plen + crc);
}
