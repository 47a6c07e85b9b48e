/* SPDX-License-Identifier: MIT */
/* Status board: what the bridges last saw, kept for kuimenctl status and /metrics. */
#include "status.h"

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
                memcpy(u->unit, unit, strlen(unit) + 1);
                copy_json(u->json, json, len);
                u->at_ms = now_ms;
        }
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
