/* SPDX-License-Identifier: MIT */
/* Plugin host: loads link drivers (<plugin_dir>/<type>.so) and runs them as narrow links over frames. */
#ifndef KM_PLUGIN_H
#define KM_PLUGIN_H

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "inbound.h"

struct km_daemon;
struct km_link;

/* Validates [link NAME] of a plugin type: the plugin must load and accept the keys. */
int km_plugin_check(struct km_conf *c, const char *section, const char *plugin_dir);

/* Adds the narrow link of section "link NAME" (type = a plugin's name) to d. On a
 * base it carries the upward queue in frames; on a center it receives frames,
 * acknowledges them and republishes each message on the center broker with the
 * origin's node and id. */
int km_plugin_link_start(struct km_daemon *d, struct km_conf *c, const char *section);

/* Center: calls fn(ud, prefix, base) for each base of each narrow link of c that
 * sends commands down (peers, commands = yes), prefix being that link's topic_prefix
 * or default_prefix; the same pair may come more than once. Stops at and returns fn's
 * first negative return; else 0. */
int km_plugin_command_bases(struct km_conf *c, const char *default_prefix,
                            int (*fn)(void *ud, const char *prefix, const char *base), void *ud);

void km_plugin_print_help(FILE *out);

/* What a narrow link's frames did, for kuimenctl, /metrics and the link's status. The
 * names are those of the counters they come from (struct km_frame_tx, km_frame_rx). */
struct km_narrow_stats {
        /* the host: datagrams the device handed up; those refused (crc_errors,
         * bad_version, malformed) plus frames the device reported it could not send */
        uint64_t frames_in, frames_bad;
        /* sending */
        uint64_t frames_sent, frames_resent, slot_refs, slot_resets;
        /* receiving */
        uint64_t frames_ok, acks_in, crc_errors, bad_version, malformed, duplicates, slot_misses, unknown_topics,
                delivered;
        /* health and payloads: probes sent and left unanswered, frames an ack newly said
         * the peer holds, positions sent as a compact batch, batches received that were
         * not one good position */
        uint64_t probes, probes_lost, frames_sacked, pos_batches, bad_posbatch;
        /* what the receiver let go: frames beyond its window or its buffer, messages too
         * large or that do not inflate, restarts it could not ask for */
        uint64_t out_of_window, dropped_nomem, oversize, bad_payload, restarts_lost;
        /* messages (and frames, for origin) from the peer that can never be published,
         * by enum km_refuse (gateway/inbound.h); [KM_REFUSE_NONE] stays 0 */
        uint64_t refused[KM_REFUSE_N];
        /* frame authentication: auth 0 none configured, 1 on, 2 off (auth = off); frames
         * dropped before the receiver: tag or not sealed or no key (auth_failures),
         * counter already taken (replays); frames that opened */
        int auth;
        unsigned tag_bytes;
        uint64_t auth_failures, replays, frames_authenticated;
        /* the dictionary (dict_topics = 0: none) */
        size_t dict_topics;
        uint32_t dict_fingerprint;
};

/* Fills *out for l. Returns 0, or -ENOENT when l is not a narrow link (MQTT links
 * have no frames). */
int km_plugin_link_frames(const struct km_link *l, struct km_narrow_stats *out);

/* Peer i of an authenticated narrow link: its name ("center" on a base that names
 * none), the key it last authenticated under ("key_file", "key_file_next", "none" =
 * nothing heard yet) and that key's id. Borrowed strings. 0, or -ENOENT past the end
 * or without authentication. */
int km_plugin_link_auth_peer(const struct km_link *l, size_t i, const char **name, const char **key,
                             const char **key_id);

/* SIGHUP: every authenticated narrow link reads its key files again (keeping the
 * keys in use when one fails, logged); counters and windows stay. */
void km_plugin_reload_keys(struct km_daemon *d);

#endif
