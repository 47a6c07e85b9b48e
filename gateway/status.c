/* SPDX-License-Identifier: MIT */
/* Status board: what the bridges last saw, and how a backlog drains, kept for kuimenctl status, /metrics and --live. */
#include "status.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void km_status_init(struct km_status *s)
{
        memset(s, 0, sizeof(*s));
        pthread_mutex_init(&s->mu, NULL);
}

void km_status_deinit(struct km_status *s)
{
        free(s->units);
        s->units = NULL;
        for (size_t i = 0; i < s->nbases; i++)
                free(s->bases[i]);
        free(s->bases);
        s->bases = NULL;
        s->nbases = 0;
        s->nunits = s->capunits = 0;
        pthread_mutex_destroy(&s->mu);
}

void km_status_bad_input(struct km_status *s, const char *reason)
{
        pthread_mutex_lock(&s->mu);
        size_t i = 0;
        while (i < s->nbad && strcmp(s->bad[i].name, reason) != 0)
                i++;
        if (i == s->nbad) {
                /* The last slot is kept for "other", so a bridge with many reasons
                 * cannot make the table lie about the first ones. */
                if (s->nbad < KM_STATUS_REASONS - 1)
                        s->bad[s->nbad++].name = reason;
                else {
                        i = KM_STATUS_REASONS - 1;
                        s->bad[i].name = "other";
                        s->nbad = KM_STATUS_REASONS;
                }
        }
        s->bad[i].n++;
        pthread_mutex_unlock(&s->mu);
}

/* Copies a JSON text of len bytes into out (KM_STATUS_JSON_MAX); 0 when too long. */
static int copy_json(char *out, const char *json, size_t len)
{
        if (len >= KM_STATUS_JSON_MAX)
                return 0;
        memcpy(out, json, len);
        out[len] = '\0';
        return 1;
}

/* The number after "key": in our own canonical JSON (gateway/posrec.c writes it). */
static bool json_number(const char *json, const char *key, double *out)
{
        const char *p = strstr(json, key);
        char *end;
        if (!p)
                return false;
        *out = strtod(p + strlen(key), &end);
        return end != p + strlen(key);
}

/* A unit publishing at 10 Hz would fill the track in seconds: fixes closer together
 * than KM_STATUS_TRACK_GAP_MS replace the newest instead, so the track covers minutes. */
static void track_add(struct km_status_unit *u, const char *json, int64_t now_ms)
{
        struct km_status_fix f = { .at_ms = now_ms };
        if (!json_number(json, "\"lat\":", &f.lat) || !json_number(json, "\"lon\":", &f.lon))
                return;
        if (u->ntrack) {
                struct km_status_fix *last = &u->track[(u->track_first + u->ntrack - 1) % KM_STATUS_TRACK];
                if (now_ms - last->at_ms < KM_STATUS_TRACK_GAP_MS) {
                        *last = f;
                        return;
                }
        }
        if (u->ntrack < KM_STATUS_TRACK)
                u->track[(u->track_first + u->ntrack++) % KM_STATUS_TRACK] = f;
        else
                u->track[u->track_first] = f, u->track_first = (u->track_first + 1) % KM_STATUS_TRACK;
}

void km_status_position(struct km_status *s, const char *unit, const char *json, size_t len, int64_t now_ms)
{
        if (strlen(unit) >= KM_STATUS_UNIT_MAX || len >= KM_STATUS_JSON_MAX)
                return;
        pthread_mutex_lock(&s->mu);
        struct km_status_unit *u = NULL;
        for (size_t i = 0; i < s->nunits && !u; i++)
                if (strcmp(s->units[i].unit, unit) == 0)
                        u = &s->units[i];
        if (!u && s->nunits < s->capunits)
                u = &s->units[s->nunits++];
        if (!u && s->capunits < KM_STATUS_UNITS) {
                size_t cap = s->capunits ? s->capunits * 2 : 16;
                struct km_status_unit *v = realloc(s->units, cap * sizeof(*v));
                if (v) {
                        s->units = v;
                        s->capunits = cap;
                        u = &s->units[s->nunits++];
                }
        }
        if (!u && s->nunits) {
                /* Full: a unit not heard for the longest gives way. */
                u = &s->units[0];
                for (size_t i = 1; i < s->nunits; i++)
                        if (s->units[i].at_ms < u->at_ms)
                                u = &s->units[i];
        }
        if (u) {
                if (strcmp(u->unit, unit) != 0)
                        u->ntrack = u->track_first = 0; /* a new unit, or one that gave way */
                memcpy(u->unit, unit, strlen(unit) + 1);
                copy_json(u->json, json, len);
                u->at_ms = now_ms;
                track_add(u, json, now_ms);
        }
        pthread_mutex_unlock(&s->mu);
}

/* The slot for name in v[0..*n) (max): the same name, a free one, else the stalest. */
static struct km_status_heard *heard_slot(struct km_status_heard *v, size_t *n, size_t max, const char *name)
{
        struct km_status_heard *h = NULL;
        for (size_t i = 0; i < *n && !h; i++)
                if (strcmp(v[i].name, name) == 0)
                        h = &v[i];
        if (!h && *n < max)
                h = &v[(*n)++];
        if (h || !*n)
                return h;
        h = &v[0];
        for (size_t i = 1; i < *n; i++)
                if (v[i].at_ms < h->at_ms)
                        h = &v[i];
        return h;
}

void km_status_heard(struct km_status *s, const char *base, const char *what, const char *json, size_t len,
                     bool narrow, int64_t now_ms)
{
        const char *name = "";
        bool is_link = strncmp(what, "link/", 5) == 0, is_pos = strncmp(what, "pos/", 4) == 0;
        if (is_link || is_pos)
                name = what + (is_link ? 5 : 4);
        else if (strcmp(what, "status") != 0)
                return;
        if (!*base || strlen(base) >= KM_STATUS_UNIT_MAX || strlen(name) >= KM_STATUS_UNIT_MAX ||
            ((is_link || is_pos) && (!*name || strchr(name, '/'))))
                return;
        /* Anyone who may publish on the center's broker reaches here: only a JSON
         * object is embedded in what the control socket and the web page serve. */
        cJSON *o = cJSON_ParseWithLength(json, len);
        char *text = cJSON_IsObject(o) ? cJSON_PrintUnformatted(o) : NULL;
        cJSON_Delete(o);
        if (!text || strlen(text) >= KM_STATUS_JSON_MAX) {
                free(text);
                return;
        }
        pthread_mutex_lock(&s->mu);
        struct km_status_base *b = NULL;
        for (size_t i = 0; i < s->nbases && !b; i++)
                if (strcmp(s->bases[i]->name, base) == 0)
                        b = s->bases[i];
        if (!b && s->nbases < KM_STATUS_BASES) {
                struct km_status_base **v = realloc(s->bases, (s->nbases + 1) * sizeof(*v));
                if (v)
                        s->bases = v;
                if (v && (b = calloc(1, sizeof(*b)))) {
                        snprintf(b->name, sizeof(b->name), "%s", base);
                        s->bases[s->nbases++] = b;
                }
        }
        struct km_status_heard *h = !b ? NULL
                                    : is_link ? heard_slot(b->links, &b->nlinks, KM_STATUS_BASE_LINKS, name)
                                    : is_pos  ? heard_slot(b->units, &b->nunits, KM_STATUS_BASE_UNITS, name)
                                              : &b->status;
        if (h) {
                snprintf(h->name, sizeof(h->name), "%s", name);
                snprintf(h->json, sizeof(h->json), "%s", text);
                h->at_ms = now_ms;
                h->narrow = narrow;
        }
        pthread_mutex_unlock(&s->mu);
        free(text);
}

void km_status_each_base(struct km_status *s, void (*fn)(void *ud, const struct km_status_base *b), void *ud)
{
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < s->nbases; i++)
                fn(ud, s->bases[i]);
        pthread_mutex_unlock(&s->mu);
}

void km_status_gnss_state(struct km_status *s, const char *json, size_t len, int64_t now_ms)
{
        pthread_mutex_lock(&s->mu);
        if (copy_json(s->gnss_state, json, len))
                s->gnss_state_ms = now_ms;
        pthread_mutex_unlock(&s->mu);
}

void km_status_gnss_fix(struct km_status *s, const char *json, size_t len, int64_t now_ms)
{
        pthread_mutex_lock(&s->mu);
        if (copy_json(s->gnss_fix, json, len))
                s->gnss_fix_ms = now_ms;
        pthread_mutex_unlock(&s->mu);
}

void km_status_each_bad(struct km_status *s, void (*fn)(void *ud, const char *reason, uint64_t n), void *ud)
{
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < s->nbad; i++)
                fn(ud, s->bad[i].name, s->bad[i].n);
        pthread_mutex_unlock(&s->mu);
}

void km_status_each_position(struct km_status *s, void (*fn)(void *ud, const struct km_status_unit *u), void *ud)
{
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < s->nunits; i++)
                fn(ud, &s->units[i]);
        pthread_mutex_unlock(&s->mu);
}

void km_status_gnss(struct km_status *s,
                    void (*fn)(void *ud, const char *state, int64_t state_ms, const char *fix, int64_t fix_ms), void *ud)
{
        pthread_mutex_lock(&s->mu);
        fn(ud, s->gnss_state_ms ? s->gnss_state : NULL, s->gnss_state_ms, s->gnss_fix_ms ? s->gnss_fix : NULL,
           s->gnss_fix_ms);
        pthread_mutex_unlock(&s->mu);
}

/* ---- the drain ------------------------------------------------------------------- */

#define DRAIN_WINDOW_MS 5000  /* "the last seconds" */
#define DRAIN_LONGEST_MS 60000
#define DRAIN_MIN_ACKS 5      /* fewer in the window: look further back */

void km_status_drain_add(struct km_drain *dr, const struct km_drain_sample *s)
{
        dr->s[dr->next] = *s;
        dr->next = (dr->next + 1) % KM_DRAIN_SAMPLES;
        if (dr->n < KM_DRAIN_SAMPLES)
                dr->n++;
}

/* The k-th newest sample (0: the newest); k < dr->n. */
static const struct km_drain_sample *back(const struct km_drain *dr, unsigned k)
{
        return &dr->s[(dr->next + KM_DRAIN_SAMPLES - 1 - k) % KM_DRAIN_SAMPLES];
}

void km_status_drain_estimate(const struct km_drain *dr, struct km_drain_est *out)
{
        memset(out, 0, sizeof(*out));
        out->eta_s = -1;
        if (dr->n < 2)
                return;
        const struct km_drain_sample *now = back(dr, 0), *start = NULL;
        out->depth = now->depth;
        if (!now->carrying)
                return;
        for (unsigned k = 1; k < dr->n; k++) {
                start = back(dr, k);
                int64_t span = now->mono_ms - start->mono_ms;
                /* No ack could come while nothing carried: the window begins there. */
                if (!start->carrying || span >= DRAIN_LONGEST_MS)
                        break;
                if (span >= DRAIN_WINDOW_MS && now->acked - start->acked >= DRAIN_MIN_ACKS)
                        break;
        }
        int64_t dt = now->mono_ms - start->mono_ms;
        if (dt <= 0)
                return;
        double acked = now->acked > start->acked ? (double)(now->acked - start->acked) : 0;
        out->window_s = (double)dt / 1000.0;
        out->backlog_rate = ((double)now->depth - (double)start->depth) * 1000.0 / (double)dt;
        /* Everything queued being in flight is a link keeping up, not a backlog: a
         * reading a second with one in flight at the sample is no drain. */
        out->draining = acked > 0 && now->depth > now->inflight;
        if (!out->draining)
                return;
        out->rate = acked * 1000.0 / (double)dt;
        /* The depth's own trend, not the ack rate alone: what still comes in, expires
         * or coalesces meanwhile moves the end as much as what leaves. */
        if (out->backlog_rate < 0)
                out->eta_s = (double)now->depth / -out->backlog_rate;
}

void km_status_drain_sum(const struct km_drain_est *e, size_t n, struct km_drain_est *out)
{
        memset(out, 0, sizeof(*out));
        out->eta_s = -1;
        for (size_t i = 0; i < n; i++) {
                out->depth += e[i].depth;
                if (e[i].window_s > out->window_s)
                        out->window_s = e[i].window_s;
                if (!e[i].draining)
                        continue;
                out->rate += e[i].rate;
                out->backlog_rate += e[i].backlog_rate;
                if (!out->draining)
                        out->eta_s = e[i].eta_s;
                else if (out->eta_s >= 0 && (e[i].eta_s < 0 || e[i].eta_s > out->eta_s))
                        out->eta_s = e[i].eta_s;
                out->draining = true;
        }
}

/* 12 s, 3m05s, 2h07m, 3d04h. */
static void span_text(double s, char *buf, size_t n)
{
        long t = (long)(s + 0.5);
        if (t < 100)
                snprintf(buf, n, "%ld s", t);
        else if (t < 3600)
                snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
        else if (t < 86400)
                snprintf(buf, n, "%ldh%02ldm", t / 3600, t % 3600 / 60);
        else
                snprintf(buf, n, "%ldd%02ldh", t / 86400, t % 86400 / 3600);
}

/* A rate as an operator reads it: whole messages, tenths below 10 (a narrow link). */
static void rate_text(double r, char *buf, size_t n)
{
        snprintf(buf, n, r < 10 ? "%.1f" : "%.0f", r);
}

void km_status_drain_text(const struct km_drain_est *e, char *buf, size_t n)
{
        char rate[32], more[32];

        if (!n)
                return;
        buf[0] = '\0';
        if (!e->draining)
                return;
        rate_text(e->rate, rate, sizeof(rate));
        if (e->eta_s >= 0) {
                span_text(e->eta_s, more, sizeof(more));
                snprintf(buf, n, "draining %s msg/s, ~%s left", rate, more);
        } else if (e->backlog_rate > 0) {
                rate_text(e->backlog_rate, more, sizeof(more));
                snprintf(buf, n, "draining %s msg/s, backlog growing by %s msg/s", rate, more);
        } else {
                snprintf(buf, n, "draining %s msg/s, backlog steady", rate);
        }
}
