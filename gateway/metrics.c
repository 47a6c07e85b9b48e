/* SPDX-License-Identifier: MIT */
/* Metrics: GET /metrics in Prometheus text format 0.0.4, served by libmicrohttpd on the loop (gateway/http.c). */
#include "metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "calls.h"
#include "incidents.h"
#include "control.h"
#include "daemon.h"
#include "http.h"
#include "log.h"
#include "plugin.h"


struct metrics_conf {
        char *listen;
};

#define OFF(f) offsetof(struct metrics_conf, f)
static const struct km_conf_key metrics_keys[] = {
        { "listen", KM_CONF_STRING, NULL, OFF(listen),
          "HOST:PORT to serve GET /metrics on (IPv4, [IPv6] or localhost); metrics are off unless set", 0, 0,
          NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

/* ---- config ---------------------------------------------------------------------- */

int km_metrics_check(struct km_conf *c)
{
        struct metrics_conf mc = { 0 };
        struct sockaddr_storage sa;
        socklen_t salen;
        int bad = km_conf_apply(c, "metrics", metrics_keys, &mc);
        const char *why;

        if (mc.listen && (why = km_http_parse_listen(mc.listen, &sa, &salen))) {
                km_conf_error(c, "metrics", "listen", "'%s': %s", mc.listen, why);
                bad++;
        }
        km_conf_release(metrics_keys, &mc);
        return bad ? -EINVAL : 0;
}

void km_metrics_print_help(FILE *out)
{
        km_conf_print_help(out, "metrics", metrics_keys);
}

/* ---- exposition ------------------------------------------------------------------ */

static void family(struct km_control_buf *b, const char *name, const char *type, const char *help)
{
        km_control_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(struct km_control_buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
        family(b, name, type, help);
        km_control_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

/* A label value escaped as the format asks (\\, \" and \n). */
static void escaped(struct km_control_buf *b, const char *value)
{
        for (const char *p = value; *p; p++) {
                if (*p == '\\' || *p == '"')
                        km_control_printf(b, "\\%c", *p);
                else if (*p == '\n')
                        km_control_printf(b, "\\n");
                else
                        km_control_printf(b, "%c", *p);
        }
}

/* A sample with one label. */
static void labelled(struct km_control_buf *b, const char *name, const char *label, const char *value,
                     const char *num)
{
        km_control_printf(b, "%s{%s=\"", name, label);
        escaped(b, value);
        km_control_printf(b, "\"} %s\n", num);
}

static void put_messages(struct km_control_buf *b, struct km_daemon *d, const struct km_spool_stats *st)
{
        uint64_t up = 0, down = 0;

        for (size_t i = 0; i < d->nlinks; i++)
                *(d->links[i]->dir == KM_DIR_UP ? &up : &down) += d->links[i]->acked;
        one(b, "kuimen_messages_in_total", "counter", "Messages accepted into the spool (both directions).",
            st->pushed);
        one(b, "kuimen_messages_forwarded_total", "counter", "Messages the center acknowledged (all up links).", up);
        one(b, "kuimen_messages_delivered_local_total", "counter",
            "Commands the local broker acknowledged (down links).", down);
        one(b, "kuimen_messages_dropped_total", "counter", "Messages dropped for space (spool full).", st->dropped);
        one(b, "kuimen_messages_expired_total", "counter", "Messages removed undelivered when their TTL ran out.",
            st->expired);
        one(b, "kuimen_messages_coalesced_total", "counter",
            "Messages replaced by a newer one with the same coalesce key.", st->coalesced);
        one(b, "kuimen_messages_unrouted_total", "counter", "Messages no class matched (not forwarded).",
            __atomic_load_n(&d->unrouted, __ATOMIC_RELAXED));
        one(b, "kuimen_messages_refused_total", "counter",
            "Messages a broker refused for good (not authorised, bad topic): set aside.", d->refused);
        one(b, "kuimen_bad_input_total", "counter", "Payloads a bridge refused as malformed.",
            __atomic_load_n(&d->bad_input, __ATOMIC_RELAXED));
        one(b, "kuimen_commands_in_mqtt_total", "counter", "Base: commands its MQTT downlink took.",
            __atomic_load_n(&d->cmd_in[KM_CMD_MQTT], __ATOMIC_RELAXED));
        one(b, "kuimen_commands_in_narrow_total", "counter", "Base: commands its narrow links took.",
            __atomic_load_n(&d->cmd_in[KM_CMD_NARROW], __ATOMIC_RELAXED));
        one(b, "kuimen_commands_duplicates_total", "counter",
            "Base: command copies dropped because the other path brought them first.",
            __atomic_load_n(&d->cmd_duplicates, __ATOMIC_RELAXED));
        one(b, "kuimen_commands_sent_narrow_total", "counter",
            "Center: commands a base acknowledged over a narrow link.", d->cmd_sent_narrow);
        one(b, "kuimen_commands_settled_mqtt_total", "counter",
            "Center: commands left to a base's MQTT session (the base was online).", d->cmd_settled_mqtt);
}

/* The drain of both directions together (kuimenctl's "draining N msg/s, ~M s left"):
 * the time left only while it is known, a missing series being Prometheus' "no value". */
static void put_drain(struct km_control_buf *b, struct km_daemon *d)
{
        struct km_drain_est e;

        km_control_drain(d, -1, &e);
        family(b, "kuimen_spool_drain_rate", "gauge",
               "Messages acknowledged a second over the last seconds while a backlog drains, else 0.");
        km_control_printf(b, "kuimen_spool_drain_rate %.1f\n", e.rate);
        family(b, "kuimen_spool_drain_eta_seconds", "gauge",
               "Seconds until the backlog is gone at its recent pace (only while it drains and shrinks).");
        if (e.eta_s >= 0)
                km_control_printf(b, "kuimen_spool_drain_eta_seconds %.1f\n", e.eta_s);
}

static void put_spool(struct km_control_buf *b, struct km_daemon *d, const struct km_spool_stats *st, int64_t now)
{
        struct km_control_class *k = calloc(KM_PRIO_COUNT, sizeof(*k));
        int n = k ? km_control_classes(d, st, k, KM_PRIO_COUNT) : 0;
        int64_t oldest = 0;
        char num[32];

        if (!k)
                b->failed = true;
        family(b, "kuimen_spool_messages", "gauge", "Messages queued in the spool, by class (both directions).");
        for (int i = 0; i < n; i++) {
                snprintf(num, sizeof(num), "%llu", (unsigned long long)k[i].depth);
                labelled(b, "kuimen_spool_messages", "class", k[i].name, num);
                if (k[i].oldest_ms && (!oldest || k[i].oldest_ms < oldest))
                        oldest = k[i].oldest_ms;
        }
        free(k);
        one(b, "kuimen_spool_bytes", "gauge", "Bytes the spool holds as counted against its limit.", st->bytes);
        one(b, "kuimen_spool_limit_bytes", "gauge", "The spool's configured bound (spool_max_mb).",
            (uint64_t)d->node.spool_max_mb << 20);
        family(b, "kuimen_spool_oldest_age_seconds", "gauge", "Age of the oldest queued message (0 when empty).");
        km_control_printf(b, "kuimen_spool_oldest_age_seconds %.3f\n",
                          oldest && now > oldest ? (double)(now - oldest) / 1000.0 : 0.0);
        one(b, "kuimen_spool_over_limit_total", "counter",
            "Commits that left the spool over its bound with only never-dropped classes.", st->over_limit);
        one(b, "kuimen_spool_store_retries_total", "counter", "Messages the spool did not store (not acknowledged: their sender retries).",
            __atomic_load_n(&d->rejected, __ATOMIC_RELAXED));
        one(b, "kuimen_spool_recovered_messages_total", "counter",
            "Messages recovered from the ingest log at start.", st->recovered);
        one(b, "kuimen_spool_moved_aside_total", "counter", "Damaged spool files moved aside at start.",
            st->moved_aside);
        one(b, "kuimen_spool_set_aside_total", "counter",
            "Messages a peer can never take (over its maximum packet size, refused for good): set aside.",
            st->set_aside);
        one(b, "kuimen_spool_set_aside_messages", "gauge", "Messages held set aside now (kuimenctl spool dead).",
            st->dead);
        one(b, "kuimen_spool_set_aside_retried_total", "counter", "Set-aside messages an operator sent back.",
            st->dead_retried);
        one(b, "kuimen_spool_set_aside_dropped_total", "counter",
            "Set-aside messages dropped (by an operator, or the oldest past 10 000 held).", st->dead_dropped);
        one(b, "kuimen_fsyncs_total", "counter", "fdatasync calls on the ingest log.", st->fsyncs);
        one(b, "kuimen_storage_ok", "gauge", "1 while the spool can store; 0 during a storage fault (ENOSPC, EIO).",
            st->storage_err ? 0 : 1);
        one(b, "kuimen_storage_faults_total", "counter", "Storage faults begun.", st->storage_faults);
        one(b, "kuimen_spool_refused_storage_total", "counter",
            "Messages refused (not acknowledged) during a storage fault.", st->refused_storage);
        put_drain(b, d);
}

/* One family over every link. */
static void per_link(struct km_control_buf *b, struct km_daemon *d, const char *name, const char *type,
                     const char *help, int what)
{
        char num[32];

        family(b, name, type, help);
        for (size_t i = 0; i < d->nlinks; i++) {
                const struct km_link *l = d->links[i];
                uint64_t v = what == 0 ? l->state == KM_LINK_UP : what == 1 ? l->sent : what == 2 ? l->acked
                             : what == 3 ? l->failed : l->inflight;
                snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
                labelled(b, name, "link", l->name, num);
        }
}

static void put_links(struct km_control_buf *b, struct km_daemon *d, const struct km_spool_stats *st)
{
        char num[32];
        per_link(b, d, "kuimen_link_up", "gauge", "1 when the link is up, else 0.", 0);
        per_link(b, d, "kuimen_link_messages_sent_total", "counter",
                 "Messages handed to the link's transport (replays after a reconnect included).", 1);
        per_link(b, d, "kuimen_link_messages_acked_total", "counter", "Messages the link's peer acknowledged.", 2);
        per_link(b, d, "kuimen_link_messages_failed_total", "counter", "Sends the transport reported failed.", 3);
        per_link(b, d, "kuimen_link_inflight_messages", "gauge", "Messages sent and not yet acknowledged.", 4);
        family(b, "kuimen_link_backlog_messages", "gauge",
               "Messages queued in the link's direction of the classes it may carry (in flight included).");
        for (size_t i = 0; i < d->nlinks; i++) {
                snprintf(num, sizeof(num), "%llu", (unsigned long long)km_control_link_backlog(d, d->links[i], st));
                labelled(b, "kuimen_link_backlog_messages", "link", d->links[i]->name, num);
        }
        /* The level a CONNECT carries, so that a 3.1.1 connection is a number: 5 or 4. */
        family(b, "kuimen_link_mqtt_protocol", "gauge",
               "MQTT protocol level of an MQTT link's connection (connection: up, the uplink or the local broker's "
               "client; down, the downlink): 5 for MQTT 5, 4 for 3.1.1.");
        for (size_t i = 0; i < d->nlinks; i++) {
                const struct km_link *l = d->links[i];
                for (int k = 0; k < 2; k++) {
                        uint8_t v = k ? l->mqtt_version_down : l->mqtt_version;
                        if (!v)
                                continue;
                        km_control_printf(b, "kuimen_link_mqtt_protocol{link=\"");
                        escaped(b, l->name);
                        km_control_printf(b, "\",connection=\"%s\"} %u\n", k ? "down" : "up", v);
                }
        }
}

/* Narrow links' frame counters (struct km_narrow_stats, named as there): one family
 * each, a series per narrow link; MQTT links have no frames and no series. */
static const struct {
        const char *name, *help;
        size_t off;
} frame_families[] = {
#define F(n, f, h) { n, h, offsetof(struct km_narrow_stats, f) }
        F("kuimen_link_frames_in_total", frames_in, "Datagrams the narrow link's device handed up (any frame, good or not)."),
        F("kuimen_link_frames_bad_total", frames_bad,
          "Datagrams refused (CRC, version, structure) and frames the device reported it could not send."),
        F("kuimen_link_frames_sent_total", frames_sent, "Data frames sent for the first time."),
        F("kuimen_link_frames_resent_total", frames_resent, "Data frames sent again (not acknowledged within rto, or lost)."),
        F("kuimen_link_frames_ok_total", frames_ok, "Data frames accepted from the peer (first copy)."),
        F("kuimen_link_frame_acks_in_total", acks_in, "Ack frames received from the peer."),
        F("kuimen_link_frame_crc_errors_total", crc_errors, "Datagrams whose CRC did not match, or too short to hold one."),
        F("kuimen_link_frame_bad_version_total", bad_version, "Frames with a good CRC in a wire version this kuimen does not know."),
        F("kuimen_link_frame_malformed_total", malformed, "Frames with a good CRC and a bad structure."),
        F("kuimen_link_frame_duplicates_total", duplicates, "Data frames received again (already delivered or held)."),
        F("kuimen_link_frame_slot_refs_total", slot_refs, "Messages sent against a slot (the topic's previous message)."),
        F("kuimen_link_frame_slot_misses_total", slot_misses, "Frames naming a slot this end does not hold (asked to resend)."),
        F("kuimen_link_frame_slot_resets_total", slot_resets, "Times the peer lost its slots and the window was sent again."),
        F("kuimen_link_frame_unknown_topics_total", unknown_topics,
          "Messages naming a dictionary index beyond this end's dictionary (delivered on unknown-topic/<index>)."),
        F("kuimen_link_frame_delivered_total", delivered, "Messages delivered from the peer's frames."),
        F("kuimen_link_probes_total", probes, "Probes (empty frames) sent on an idle link or before a retried link carries."),
        F("kuimen_link_probes_lost_total", probes_lost, "Probes not acknowledged within ack_timeout."),
        F("kuimen_link_frames_sacked_total", frames_sacked, "Frames an ack newly said the peer holds out of order."),
        F("kuimen_link_frame_pos_batches_total", pos_batches, "Position messages sent as a compact batch."),
        F("kuimen_link_frame_bad_posbatch_total", bad_posbatch,
          "Position batches received that were not one good position (dropped, acknowledged)."),
        F("kuimen_link_frame_out_of_window_total", out_of_window, "Data frames beyond the reorder window (the peer sends them again)."),
        F("kuimen_link_frame_dropped_nomem_total", dropped_nomem,
          "Out-of-order frames not held for want of buffer space (the peer sends them again)."),
        F("kuimen_link_frame_oversize_total", oversize, "Messages larger than the receiver takes: dropped."),
        F("kuimen_link_frame_bad_payload_total", bad_payload, "Messages whose deflated payload does not inflate: dropped."),
        F("kuimen_link_frame_restarts_lost_total", restarts_lost,
          "Split messages whose restart could not be asked for (more than 8 pending): lost."),
        F("kuimen_link_auth_failures_total", auth_failures,
          "Frames dropped before the frame receiver: tag did not verify, not sealed on an authenticated link, or no key for the origin."),
        F("kuimen_link_auth_replays_total", replays, "Sealed frames dropped as replays (counter taken, or older than the window)."),
        F("kuimen_link_frames_authenticated_total", frames_authenticated, "Sealed frames that verified and were opened."),
#undef F
};

static void put_frames(struct km_control_buf *b, struct km_daemon *d)
{
        struct km_narrow_stats ns;
        char num[32];

        for (size_t k = 0; k < sizeof(frame_families) / sizeof(frame_families[0]); k++) {
                family(b, frame_families[k].name, "counter", frame_families[k].help);
                for (size_t i = 0; i < d->nlinks; i++) {
                        if (km_plugin_link_frames(d->links[i], &ns) < 0)
                                continue;
                        uint64_t v;
                        memcpy(&v, (const char *)&ns + frame_families[k].off, sizeof(v));
                        snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
                        labelled(b, frame_families[k].name, "link", d->links[i]->name, num);
                }
        }
        family(b, "kuimen_link_auth", "gauge",
               "1 for each narrow link, with its frame authentication: mode on, off (auth = off) or none (no key), and tag_bytes.");
        for (size_t i = 0; i < d->nlinks; i++) {
                if (km_plugin_link_frames(d->links[i], &ns) < 0)
                        continue;
                km_control_printf(b, "kuimen_link_auth{link=\"");
                escaped(b, d->links[i]->name);
                km_control_printf(b, "\",mode=\"%s\",tag_bytes=\"%u\"} 1\n",
                                  ns.auth == 1 ? "on" : ns.auth == 2 ? "off" : "none", ns.tag_bytes);
        }
        family(b, "kuimen_link_refused_total", "counter",
               "Messages from a narrow link's peer that can never be published (refused, acknowledged), by reason:"
               " origin (frames from outside peers), topic, wildcard, direction, size.");
        for (size_t i = 0; i < d->nlinks; i++) {
                if (km_plugin_link_frames(d->links[i], &ns) < 0)
                        continue;
                for (int r = 1; r < KM_REFUSE_N; r++) {
                        km_control_printf(b, "kuimen_link_refused_total{link=\"");
                        escaped(b, d->links[i]->name);
                        km_control_printf(b, "\",reason=\"%s\"} %llu\n", km_inbound_reason_name(r),
                                          (unsigned long long)ns.refused[r]);
                }
        }
        family(b, "kuimen_link_dictionary_topics", "gauge",
               "Topics in a narrow link's dictionary; fingerprint (CRC-32) is equal at two ends with one list.");
        for (size_t i = 0; i < d->nlinks; i++) {
                if (km_plugin_link_frames(d->links[i], &ns) < 0 || !ns.dict_topics)
                        continue;
                km_control_printf(b, "kuimen_link_dictionary_topics{link=\"");
                escaped(b, d->links[i]->name);
                km_control_printf(b, "\",fingerprint=\"%08x\"} %zu\n", (unsigned)ns.dict_fingerprint, ns.dict_topics);
        }
}

struct board_ctx {
        struct km_control_buf *b;
        int64_t now;
};

static void put_reason(void *ud, const char *reason, uint64_t n)
{
        struct board_ctx *x = ud;
        char num[32];
        snprintf(num, sizeof(num), "%llu", (unsigned long long)n);
        labelled(x->b, "kuimen_bad_input_reason_total", "reason", reason, num);
}

static void put_position_age(void *ud, const struct km_status_unit *u)
{
        struct board_ctx *x = ud;
        char num[32];
        snprintf(num, sizeof(num), "%.3f", x->now > u->at_ms ? (double)(x->now - u->at_ms) / 1000.0 : 0.0);
        labelled(x->b, "kuimen_position_age_seconds", "unit", u->unit, num);
}

/* What the bridges last saw: refusals by reason, how fresh each unit's position is. */
static void put_board(struct km_control_buf *b, struct km_daemon *d, int64_t now)
{
        struct board_ctx x = { b, now };
        family(b, "kuimen_bad_input_reason_total", "counter",
               "Payloads a bridge refused, by reason (bad_checksum, out_of_range, ...).");
        km_status_each_bad(&d->status, put_reason, &x);
        family(b, "kuimen_position_age_seconds", "gauge", "Seconds since each unit's last good position.");
        km_status_each_position(&d->status, put_position_age, &x);
}

static void put_all(struct km_control_buf *b, struct km_daemon *d)
{
        struct km_spool_stats st;
        int64_t now = km_now_ms();

        km_spool_stats(d->spool, &st);
        family(b, "kuimen_build_info", "gauge", "Always 1; the version and node in labels.");
        km_control_printf(b, "kuimen_build_info{version=\"%s\",node=\"", KM_VERSION);
        escaped(b, d->node.name);
        km_control_printf(b, "\"} 1\n");
        family(b, "kuimen_uptime_seconds", "gauge", "Seconds since kuimen started.");
        km_control_printf(b, "kuimen_uptime_seconds %.3f\n", (double)(now - d->started_ms) / 1000.0);
        put_messages(b, d, &st);
        put_spool(b, d, &st, km_daemon_now(d)); /* the clock messages are stamped by */
        put_links(b, d, &st);
        put_frames(b, d);
        put_board(b, d, now);
        one(b, "kuimen_config_reload_failures_total", "counter", "Reloads refused because the config had errors.",
            d->bad_config_reloads);
        if (d->calls) { /* a base */
                struct km_calls_stats cs;
                km_calls_stats(d->calls, &cs);
                one(b, "kuimen_calls_open", "gauge", "Calls open (not closed).", cs.open);
                one(b, "kuimen_calls_answers_total", "counter", "Answers taken from terminals (changes only).", cs.answers);
                one(b, "kuimen_calls_repeats_total", "counter", "Copies of calls sent again to unanswered recipients.",
                    cs.repeats);
                one(b, "kuimen_calls_escalations_total", "counter", "Escalation steps taken.", cs.escalations);
                one(b, "kuimen_calls_changes_total", "counter", "Changes of calls spooled upstream.", cs.changes);
                one(b, "kuimen_calls_refused_total", "counter", "Call commands and answers refused as bad input.",
                    cs.bad_commands + cs.bad_answers);
                one(b, "kuimen_calls_unanswered", "gauge", "Recipients of open calls that have not answered yet.",
                    cs.unanswered);
                one(b, "kuimen_calls_overdue", "gauge", "Recipients of open calls past respond_within without an answer.",
                    cs.overdue);
                one(b, "kuimen_calls_escalated", "gauge", "Open calls that took an escalation step.", cs.escalated);
        }
        if (d->incidents) {
                struct km_incidents_stats is;
                km_incidents_stats(d->incidents, &is);
                one(b, "kuimen_incidents_open", "gauge", "Incidents open on this base.", is.open);
                one(b, "kuimen_incidents_units_not_arrived", "gauge",
                    "Units assigned to open incidents that have neither arrived nor withdrawn yet.", is.not_arrived);
                one(b, "kuimen_incidents_heard", "gauge", "Bases' incident timelines a center keeps.", is.heard);
                one(b, "kuimen_incidents_refused_total", "counter", "Incident commands refused as bad input.", is.bad);
        }
}

static void exposition(struct km_daemon *d, struct km_control_buf *b)
{
        put_all(b, d);
}

/* ---- serving -------------------------------------------------------------------- */

int km_metrics_start(struct km_daemon *d, struct km_conf *c)
{
        struct metrics_conf mc = { 0 };
        int rc = 0;

        km_conf_apply(c, "metrics", metrics_keys, &mc);
        /* libmicrohttpd on the loop, as the page (gateway/http.c): like the control
         * socket, a busy port costs the operator's view, not forwarding. */
        if (mc.listen)
                rc = km_http_metrics_start(d, mc.listen, exposition);
        km_conf_release(metrics_keys, &mc);
        return rc;
}
