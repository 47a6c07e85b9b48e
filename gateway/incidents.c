/* SPDX-License-Identifier: MIT */
/* Incidents: per assigned unit, when it reacted, turned out, arrived and withdrew; published upstream as class status. */
#include "incidents.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>
#include <time.h>

#include "calls.h"
#include "control.h"
#include "daemon.h"
#include "log.h"
#include "spool.h"

/*
 * The response timeline (docs/calls.md#incidents). An incident has a place (lat, lon,
 * radius in m), assigned units and optionally the call that dispatched them. Per unit:
 *
 * - reacted: its first answer to the incident's call;
 * - turned out: its answer "acting" to that call, or its first fix farther than
 *   base_radius from its first fix after the opening (it left its base area);
 * - arrived: the first fix of the first run of fixes inside the radius that lasts
 *   dwell (by the fixes' own times);
 * - withdrew: after arriving, the first fix of the first run of fixes beyond radius +
 *   hysteresis that lasts dwell, or its answer "done" (it reported).
 *
 * Between radius and radius + hysteresis a fix neither starts nor breaks a run: GPS
 * jitter at the edge (a few metres either way) does not make a second arrival, nor a
 * withdrawal and an arrival again; and only the first arrival and withdrawal count.
 * Fix times are the receiver's (GNSS); the other times are the daemon's clock, which
 * is GNSS time while the system clock is unsynchronised.
 *
 * Durability as calls (gateway/calls.c): the incidents table in the spool's SQLite
 * file, written at the end of the loop's turn (and fsynced before a command that
 * brought an incident is acknowledged). A run of fixes under way at a kill starts
 * again after the restart: an arrival is then stamped at the first fix after it.
 */

struct unit_tl {
        char unit[32];
        int64_t reacted, turned_out, arrived, withdrew; /* unix ms, 0: not yet */
        bool has_base;
        double base_lat, base_lon;
        int64_t run_ms, last_fix_ms; /* fix times */
};

struct incident {
        char id[33];
        char call[33];
        double lat, lon, radius;
        int64_t opened_ms, closed_ms;
        bool dirty, changed; /* changed: the timeline changed, publish it */
        struct unit_tl *u;
        size_t nu;
};

/* A base's timeline as a center heard it. */
struct heard {
        char key[72]; /* base/id */
        char *json;   /* the base's JSON, id replaced by key */
        int known;    /* times set, and closed: a copy that knows less is older */
        bool dirty;
};

struct km_incidents {
        struct heard *h;
        size_t nh;
        sqlite3_stmt *put_heard;
        struct km_incidents_conf conf;
        struct km_incidents_io io;
        struct km_spool *sp;
        sqlite3 *db;
        sqlite3_stmt *put, *del;
        struct incident **v;
        size_t n;
        uint64_t bad;
        struct km_log_limit bad_log;
        struct km_daemon *d;
        sd_event_source *flush_src;
};

/* ---- config ---------------------------------------------------------------------- */

#define OFF(f) offsetof(struct km_incidents_conf, f)
static const struct km_conf_key keys[] = {
        { "dwell", KM_CONF_DURATION, "30s", OFF(dwell_ms), "a unit counts as arrived (withdrawn) once its fixes stayed inside (out) this long", 0, 86400000, NULL },
        { "hysteresis", KM_CONF_DOUBLE, "25", OFF(hysteresis_m), "metres beyond the radius a fix must be to count as out: jitter at the edge makes no second arrival", 0, 100000, NULL },
        { "base_radius", KM_CONF_DOUBLE, "300", OFF(base_m), "metres from its first fix after the opening a unit must move to count as turned out", 1, 1000000, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

int km_incidents_conf_load(struct km_incidents_conf *conf, struct km_conf *c)
{
        memset(conf, 0, sizeof(*conf));
        return km_conf_apply(c, "incidents", keys, conf) ? -EINVAL : 0;
}

int km_incidents_check(struct km_conf *c)
{
        struct km_incidents_conf conf;
        return km_incidents_conf_load(&conf, c);
}

void km_incidents_print_help(FILE *out)
{
        km_conf_print_help(out, "incidents", keys);
}

/* ---- state ------------------------------------------------------------------------ */

static struct incident *find(const struct km_incidents *in, const char *id)
{
        for (size_t i = 0; i < in->n; i++)
                if (strcmp(in->v[i]->id, id) == 0)
                        return in->v[i];
        return NULL;
}

static struct unit_tl *find_unit(struct incident *x, const char *unit)
{
        for (size_t i = 0; i < x->nu; i++)
                if (strcmp(x->u[i].unit, unit) == 0)
                        return &x->u[i];
        return NULL;
}

static void incident_free(struct incident *x)
{
        if (x)
                free(x->u);
        free(x);
}

static int known(const cJSON *o);

static void touch(struct km_incidents *in, struct incident *x, bool changed)
{
        x->dirty = true;
        x->changed |= changed;
        if (in->io.dirty)
                in->io.dirty(in->io.ud);
}

/* Metres between two points (equirectangular: areas are a few km at most). */
static double metres(double lat1, double lon1, double lat2, double lon2)
{
        const double r = 6371008.8, rad = M_PI / 180;
        double x = (lon2 - lon1) * rad * cos((lat1 + lat2) / 2 * rad), y = (lat2 - lat1) * rad;
        return r * sqrt(x * x + y * y);
}

/* ---- JSON: what goes upstream, what the table holds --------------------------------- */

static void add_time(cJSON *o, const char *k, int64_t ms)
{
        if (ms)
                cJSON_AddNumberToObject(o, k, (double)(ms / 1000));
        else
                cJSON_AddNullToObject(o, k);
}

/* full: with the tracking state, for the table. */
static cJSON *to_json(const struct incident *x, bool full)
{
        cJSON *o = cJSON_CreateObject(), *us;
        if (!o)
                return NULL;
        cJSON_AddStringToObject(o, "id", x->id);
        cJSON_AddStringToObject(o, "state", x->closed_ms ? "closed" : "open");
        cJSON_AddNumberToObject(o, "lat", x->lat);
        cJSON_AddNumberToObject(o, "lon", x->lon);
        cJSON_AddNumberToObject(o, "radius", x->radius);
        if (x->call[0])
                cJSON_AddStringToObject(o, "call", x->call);
        if (full) {
                cJSON_AddNumberToObject(o, "opened_ms", (double)x->opened_ms);
                cJSON_AddNumberToObject(o, "closed_ms", (double)x->closed_ms);
        } else {
                add_time(o, "opened", x->opened_ms);
                if (x->closed_ms)
                        add_time(o, "closed", x->closed_ms);
        }
        us = cJSON_AddArrayToObject(o, "units");
        for (size_t i = 0; us && i < x->nu; i++) {
                const struct unit_tl *u = &x->u[i];
                cJSON *e = cJSON_CreateObject();
                if (!e)
                        break;
                cJSON_AddStringToObject(e, "unit", u->unit);
                if (full) {
                        cJSON_AddNumberToObject(e, "reacted", (double)u->reacted);
                        cJSON_AddNumberToObject(e, "turned_out", (double)u->turned_out);
                        cJSON_AddNumberToObject(e, "arrived", (double)u->arrived);
                        cJSON_AddNumberToObject(e, "withdrew", (double)u->withdrew);
                        cJSON_AddBoolToObject(e, "has_base", u->has_base);
                        cJSON_AddNumberToObject(e, "base_lat", u->base_lat);
                        cJSON_AddNumberToObject(e, "base_lon", u->base_lon);
                        cJSON_AddNumberToObject(e, "last_fix", (double)u->last_fix_ms);
                } else {
                        add_time(e, "reacted", u->reacted);
                        add_time(e, "turned_out", u->turned_out);
                        add_time(e, "arrived", u->arrived);
                        add_time(e, "withdrew", u->withdrew);
                }
                cJSON_AddItemToArray(us, e);
        }
        return o;
}

static int64_t jnum(const cJSON *o, const char *k)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
        return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

static struct incident *from_json(const char *s)
{
        cJSON *o = cJSON_Parse(s), *e;
        struct incident *x = o ? calloc(1, sizeof(*x)) : NULL;
        if (!x) {
                cJSON_Delete(o);
                return NULL;
        }
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id"), *call = cJSON_GetObjectItemCaseSensitive(o, "call");
        snprintf(x->id, sizeof(x->id), "%s", cJSON_IsString(id) ? id->valuestring : "?");
        if (cJSON_IsString(call))
                snprintf(x->call, sizeof(x->call), "%s", call->valuestring);
        x->lat = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "lat"));
        x->lon = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "lon"));
        x->radius = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, "radius"));
        x->opened_ms = jnum(o, "opened_ms");
        x->closed_ms = jnum(o, "closed_ms");
        const cJSON *us = cJSON_GetObjectItemCaseSensitive(o, "units");
        int n = cJSON_GetArraySize(us);
        x->u = calloc(n ? (size_t)n : 1, sizeof(*x->u));
        if (!x->u) {
                incident_free(x);
                cJSON_Delete(o);
                return NULL;
        }
        cJSON_ArrayForEach(e, us) {
                struct unit_tl *u = &x->u[x->nu++];
                const cJSON *un = cJSON_GetObjectItemCaseSensitive(e, "unit");
                snprintf(u->unit, sizeof(u->unit), "%s", cJSON_IsString(un) ? un->valuestring : "?");
                u->reacted = jnum(e, "reacted");
                u->turned_out = jnum(e, "turned_out");
                u->arrived = jnum(e, "arrived");
                u->withdrew = jnum(e, "withdrew");
                u->has_base = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "has_base"));
                u->base_lat = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(e, "base_lat"));
                u->base_lon = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(e, "base_lon"));
                u->last_fix_ms = jnum(e, "last_fix");
        }
        cJSON_Delete(o);
        return x;
}

static void publish(struct km_incidents *in, struct incident *x)
{
        char topic[48];
        cJSON *o = to_json(x, false);
        char *s = o ? cJSON_PrintUnformatted(o) : NULL;
        cJSON_Delete(o);
        if (!s)
                return;
        snprintf(topic, sizeof(topic), "incident/%s", x->id);
        int rc = in->io.emit(in->io.ud, topic, s, strlen(s));
        if (rc < 0)
                KM_LOG(KM_LOG_ERR, "incidents", "incident %s: timeline not spooled upstream (%s): sent again at the next flush",
                       x->id, strerror(-rc));
        free(s);
        /* Refused (a storage fault): still changed, the next flush tries again (the
         * newest timeline is all the center needs). */
        x->changed = rc < 0;
}

int km_incidents_flush(struct km_incidents *in, bool full)
{
        bool any = false;
        for (size_t i = 0; i < in->n; i++) {
                if (in->v[i]->changed)
                        publish(in, in->v[i]);
                any |= in->v[i]->dirty;
        }
        for (size_t i = 0; i < in->nh; i++)
                any |= in->h[i].dirty;
        if (!any)
                return 0;
        /* As km_calls_flush: the timeline published above is on the device before a
         * FULL commit vouches for what changed it. */
        int rc = full ? km_spool_sync(in->sp) : 0;
        if (rc == 0)
                rc = km_spool_tx_begin(in->sp, full);
        if (rc < 0)
                return rc;
        for (size_t i = 0; i < in->n && rc == 0; i++) {
                struct incident *x = in->v[i];
                if (!x->dirty)
                        continue;
                cJSON *o = to_json(x, true);
                char *s = o ? cJSON_PrintUnformatted(o) : NULL;
                cJSON_Delete(o);
                if (!s) {
                        rc = -ENOMEM;
                        break;
                }
                sqlite3_bind_text(in->put, 1, x->id, -1, SQLITE_STATIC);
                sqlite3_bind_text(in->put, 2, s, -1, SQLITE_TRANSIENT);
                rc = sqlite3_step(in->put) == SQLITE_DONE ? 0 : -EIO;
                sqlite3_reset(in->put);
                free(s);
        }
        for (size_t i = 0; i < in->nh && rc == 0; i++) {
                if (!in->h[i].dirty)
                        continue;
                sqlite3_bind_text(in->put_heard, 1, in->h[i].key, -1, SQLITE_STATIC);
                sqlite3_bind_text(in->put_heard, 2, in->h[i].json, -1, SQLITE_STATIC);
                rc = sqlite3_step(in->put_heard) == SQLITE_DONE ? 0 : -EIO;
                sqlite3_reset(in->put_heard);
        }
        rc = km_spool_tx_end(in->sp, full, rc == 0, "writing incidents");
        if (rc == 0) {
                for (size_t i = 0; i < in->n; i++)
                        in->v[i]->dirty = false;
                for (size_t i = 0; i < in->nh; i++)
                        in->h[i].dirty = false;
        }
        return rc;
}

void km_incidents_stats(const struct km_incidents *in, struct km_incidents_stats *st)
{
        memset(st, 0, sizeof(*st));
        st->heard = in->nh;
        st->bad = in->bad;
        for (size_t i = 0; i < in->n; i++) {
                const struct incident *x = in->v[i];
                if (x->closed_ms)
                        continue;
                st->open++;
                for (size_t k = 0; k < x->nu; k++)
                        st->not_arrived += !x->u[k].arrived && !x->u[k].withdrew; /* withdrew: reported done */
        }
}

int km_incidents_new(struct km_incidents **out, struct km_spool *sp, const struct km_incidents_conf *conf,
                     const struct km_incidents_io *io)
{
        struct km_incidents *in = calloc(1, sizeof(*in));
        sqlite3_stmt *s = NULL;
        if (!in)
                return -ENOMEM;
        in->conf = *conf;
        in->io = *io;
        in->sp = sp;
        in->db = km_spool_sqlite(sp);
        if (sqlite3_exec(in->db, "CREATE TABLE IF NOT EXISTS incidents(id TEXT PRIMARY KEY, state TEXT NOT NULL)", NULL,
                         NULL, NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(in->db, "INSERT OR REPLACE INTO incidents(id,state) VALUES(?,?)", -1,
                               SQLITE_PREPARE_PERSISTENT, &in->put, NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(in->db, "DELETE FROM incidents WHERE id=?", -1, SQLITE_PREPARE_PERSISTENT, &in->del,
                               NULL) != SQLITE_OK ||
            sqlite3_exec(in->db, "CREATE TABLE IF NOT EXISTS incidents_heard(key TEXT PRIMARY KEY, state TEXT NOT NULL)",
                         NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(in->db, "INSERT OR REPLACE INTO incidents_heard(key,state) VALUES(?,?)", -1,
                               SQLITE_PREPARE_PERSISTENT, &in->put_heard, NULL) != SQLITE_OK ||
            sqlite3_prepare_v2(in->db, "SELECT state FROM incidents ORDER BY rowid", -1, &s, NULL) != SQLITE_OK) {
                KM_LOG(KM_LOG_ERR, "incidents", "the incidents table: %s", sqlite3_errmsg(in->db));
                km_incidents_free(in);
                return -EIO;
        }
        while (sqlite3_step(s) == SQLITE_ROW) {
                struct incident *x = from_json((const char *)sqlite3_column_text(s, 0));
                struct incident **nv = x ? realloc(in->v, (in->n + 1) * sizeof(*nv)) : NULL;
                if (!nv) {
                        incident_free(x);
                        continue;
                }
                in->v = nv;
                in->v[in->n++] = x;
        }
        sqlite3_finalize(s);
        if (sqlite3_prepare_v2(in->db, "SELECT key, state FROM incidents_heard ORDER BY rowid", -1, &s, NULL) == SQLITE_OK) {
                while (sqlite3_step(s) == SQLITE_ROW) {
                        struct heard *nh = realloc(in->h, (in->nh + 1) * sizeof(*nh));
                        if (!nh)
                                break;
                        in->h = nh;
                        struct heard *h = &in->h[in->nh];
                        memset(h, 0, sizeof(*h));
                        snprintf(h->key, sizeof(h->key), "%s", (const char *)sqlite3_column_text(s, 0));
                        if (!(h->json = strdup((const char *)sqlite3_column_text(s, 1))))
                                break;
                        in->nh++;
                }
                sqlite3_finalize(s);
        }
        for (size_t i = 0; i < in->nh; i++) {
                cJSON *o = cJSON_Parse(in->h[i].json);
                in->h[i].known = o ? known(o) : -1;
                cJSON_Delete(o);
        }
        *out = in;
        return 0;
}

void km_incidents_free(struct km_incidents *in)
{
        if (!in)
                return;
        if (in->db)
                km_incidents_flush(in, true);
        sd_event_source_disable_unref(in->flush_src);
        sqlite3_finalize(in->put);
        sqlite3_finalize(in->del);
        sqlite3_finalize(in->put_heard);
        for (size_t i = 0; i < in->nh; i++)
                free(in->h[i].json);
        free(in->h);
        for (size_t i = 0; i < in->n; i++)
                incident_free(in->v[i]);
        free(in->v);
        free(in);
}

/* ---- inputs ---------------------------------------------------------------------------- */

static int fail(char *err, size_t errlen, const char *why)
{
        if (err && errlen)
                snprintf(err, errlen, "%s", why);
        return -EINVAL;
}

/* Bad input from outside: counted, logged at most every 10 s. */
static void refused(struct km_incidents *in, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refused(struct km_incidents *in, const char *fmt, ...)
{
        va_list ap;
        in->bad++;
        va_start(ap, fmt);
        km_log_vlimited(&in->bad_log, in->io.now(in->io.ud), 10000, KM_LOG_WARNING, "incidents", fmt, ap);
        va_end(ap);
}

static int command(struct km_incidents *in, const char *buf, size_t len, char *err, size_t errlen)
{
        cJSON *o = cJSON_ParseWithLength(buf, len), *e;
        int rc;
        if (!cJSON_IsObject(o)) {
                cJSON_Delete(o);
                refused(in, "incident command refused: not a JSON object");
                return fail(err, errlen, "not a JSON object");
        }
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        const cJSON *lat = cJSON_GetObjectItemCaseSensitive(o, "lat"), *lon = cJSON_GetObjectItemCaseSensitive(o, "lon");
        const cJSON *radius = cJSON_GetObjectItemCaseSensitive(o, "radius"), *units = cJSON_GetObjectItemCaseSensitive(o, "units");
        const cJSON *call = cJSON_GetObjectItemCaseSensitive(o, "call");
        int64_t now = in->io.now(in->io.ud);
        struct incident *x = NULL;
        if (!cJSON_IsString(id) || !km_calls_name_ok(id->valuestring, 32)) {
                rc = fail(err, errlen, "id: missing, or not 1 to 32 printable bytes without blank, '/', '+', '#', '\"' or '\\'");
                goto out;
        }
        struct incident *old = find(in, id->valuestring);
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "close"))) {
                if (!old) {
                        rc = fail(err, errlen, "no such incident");
                } else {
                        if (!old->closed_ms) {
                                old->closed_ms = now;
                                touch(in, old, true);
                        }
                        rc = km_incidents_flush(in, true);
                }
                goto out;
        }
        if (old) { /* taken once */
                rc = km_incidents_flush(in, true);
                goto out;
        }
        if (!cJSON_IsNumber(lat) || fabs(lat->valuedouble) > 90 || !cJSON_IsNumber(lon) || fabs(lon->valuedouble) > 180) {
                rc = fail(err, errlen, "lat, lon: missing or out of range");
                goto out;
        }
        if (!cJSON_IsNumber(radius) || radius->valuedouble <= 0 || radius->valuedouble > 100000) {
                rc = fail(err, errlen, "radius: missing, or not 0 to 100000 m");
                goto out;
        }
        int nu = cJSON_GetArraySize(units);
        if (!cJSON_IsArray(units) || nu < 1 || nu > KM_INCIDENTS_UNITS_MAX) {
                rc = fail(err, errlen, "units: not an array of 1 to 64 unit ids");
                goto out;
        }
        if (call && !cJSON_IsNull(call) && (!cJSON_IsString(call) || !km_calls_name_ok(call->valuestring, 32))) {
                rc = fail(err, errlen, "call: not a call id");
                goto out;
        }
        size_t open = 0;
        for (size_t i = 0; i < in->n; i++)
                open += !in->v[i]->closed_ms;
        if (open >= KM_INCIDENTS_OPEN_MAX) {
                rc = fail(err, errlen, "64 incidents are open already: close some first");
                goto out;
        }
        if (!(x = calloc(1, sizeof(*x))) || !(x->u = calloc((size_t)nu, sizeof(*x->u)))) {
                rc = -ENOMEM;
                goto out;
        }
        cJSON_ArrayForEach(e, units) {
                if (!cJSON_IsString(e) || !km_calls_name_ok(e->valuestring, 31)) {
                        rc = fail(err, errlen, "units: an item that is not a unit id");
                        goto out;
                }
                if (!find_unit(x, e->valuestring))
                        snprintf(x->u[x->nu++].unit, sizeof(x->u[0].unit), "%s", e->valuestring);
        }
        snprintf(x->id, sizeof(x->id), "%s", id->valuestring);
        if (cJSON_IsString(call))
                snprintf(x->call, sizeof(x->call), "%s", call->valuestring);
        x->lat = lat->valuedouble;
        x->lon = lon->valuedouble;
        x->radius = radius->valuedouble;
        x->opened_ms = now;
        struct incident **nv = realloc(in->v, (in->n + 1) * sizeof(*nv));
        if (!nv) {
                rc = -ENOMEM;
                goto out;
        }
        in->v = nv;
        in->v[in->n++] = x;
        KM_LOG(KM_LOG_NOTICE, "incidents", "incident %s opened: %.6f, %.6f, %.0f m, %zu units", x->id, x->lat, x->lon,
               x->radius, x->nu);
        x->dirty = x->changed = true;
        x = NULL;
        rc = km_incidents_flush(in, true);
out:
        if (rc == -EINVAL)
                refused(in, "incident command refused: %s", err ? err : "");
        incident_free(x);
        cJSON_Delete(o);
        return rc;
}

int km_incidents_command(struct km_incidents *in, const void *payload, size_t len, char *err, size_t errlen)
{
        char e[200] = "";
        int rc = command(in, payload, len, e, sizeof(e));
        if (err && errlen)
                snprintf(err, errlen, "%s", e);
        return rc == -EINVAL ? 0 : rc;
}

void km_incidents_position(struct km_incidents *in, const char *unit, double lat, double lon, int64_t t)
{
        for (size_t i = 0; i < in->n; i++) {
                struct incident *x = in->v[i];
                struct unit_tl *u;
                if (x->closed_ms || !(u = find_unit(x, unit)))
                        continue;
                if (t < u->last_fix_ms) /* older than one already taken: a replay */
                        continue;
                u->last_fix_ms = t;
                bool changed = false, based = false;
                if (!u->has_base) {
                        u->has_base = based = true;
                        u->base_lat = lat;
                        u->base_lon = lon;
                } else if (!u->turned_out && metres(u->base_lat, u->base_lon, lat, lon) > in->conf.base_m) {
                        u->turned_out = t;
                        changed = true;
                }
                double d = metres(x->lat, x->lon, lat, lon);
                bool in_area = d <= x->radius, out_area = d > x->radius + in->conf.hysteresis_m;
                if (!u->arrived) {
                        if (out_area)
                                u->run_ms = 0;
                        else if (in_area && !u->run_ms)
                                u->run_ms = t;
                        if (u->run_ms && t - u->run_ms >= in->conf.dwell_ms) {
                                u->arrived = u->run_ms;
                                u->run_ms = 0;
                                changed = true;
                                KM_LOG(KM_LOG_NOTICE, "incidents", "incident %s: %s arrived", x->id, unit);
                        }
                } else if (!u->withdrew) {
                        if (in_area)
                                u->run_ms = 0;
                        else if (out_area && !u->run_ms)
                                u->run_ms = t;
                        if (u->run_ms && t - u->run_ms >= in->conf.dwell_ms) {
                                u->withdrew = u->run_ms;
                                u->run_ms = 0;
                                changed = true;
                                KM_LOG(KM_LOG_NOTICE, "incidents", "incident %s: %s withdrew", x->id, unit);
                        }
                }
                if (changed || based)
                        touch(in, x, changed);
        }
}

void km_incidents_answer(struct km_incidents *in, const char *call_id, const char *unit, const char *status)
{
        int64_t now = in->io.now(in->io.ud);
        for (size_t i = 0; i < in->n; i++) {
                struct incident *x = in->v[i];
                struct unit_tl *u;
                if (x->closed_ms || strcmp(x->call, call_id) != 0 || !(u = find_unit(x, unit)))
                        continue;
                bool changed = false;
                if (!u->reacted)
                        u->reacted = now, changed = true;
                if (!u->turned_out && strcmp(status, "acting") == 0)
                        u->turned_out = now, changed = true;
                if (!u->withdrew && strcmp(status, "done") == 0)
                        u->withdrew = now, changed = true;
                if (changed)
                        touch(in, x, true);
        }
}

/* What a timeline knows: its times set, and whether it is closed. */
static int known(const cJSON *o)
{
        const cJSON *u;
        int k = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(o, "state")) &&
                strcmp(cJSON_GetObjectItemCaseSensitive(o, "state")->valuestring, "closed") == 0;
        static const char *const times[] = { "reacted", "turned_out", "arrived", "withdrew" };
        cJSON_ArrayForEach(u, cJSON_GetObjectItemCaseSensitive(o, "units"))
                for (int i = 0; i < 4; i++)
                        k += cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(u, times[i]));
        return k;
}

void km_incidents_heard(struct km_incidents *in, const char *base, const char *id, const void *payload, size_t len)
{
        char key[72];
        if (!km_calls_name_ok(base, 31) || !km_calls_name_ok(id, 32)) {
                in->bad++;
                return;
        }
        snprintf(key, sizeof(key), "%s/%s", base, id);
        cJSON *o = cJSON_ParseWithLength(payload, len);
        if (!cJSON_IsObject(o) || !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(o, "units"))) {
                refused(in, "timeline of %s: not an incident's JSON: dropped", key);
                cJSON_Delete(o);
                return;
        }
        cJSON_ReplaceItemInObjectCaseSensitive(o, "id", cJSON_CreateString(key));
        int k = known(o);
        struct heard *h = NULL;
        for (size_t i = 0; i < in->nh && !h; i++)
                if (strcmp(in->h[i].key, key) == 0)
                        h = &in->h[i];
        if (h && h->known > k) { /* an older copy, late */
                cJSON_Delete(o);
                return;
        }
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!s)
                return;
        if (!h) {
                struct heard *nh = realloc(in->h, (in->nh + 1) * sizeof(*nh));
                if (!nh) {
                        free(s);
                        return;
                }
                in->h = nh;
                h = &in->h[in->nh++];
                memset(h, 0, sizeof(*h));
                snprintf(h->key, sizeof(h->key), "%s", key);
        }
        free(h->json);
        h->json = s;
        h->known = k;
        h->dirty = true;
        if (in->io.dirty)
                in->io.dirty(in->io.ud);
}

/* ---- control ------------------------------------------------------------------------------ */

static void reply_err(struct km_control_buf *b, const char *why)
{
        km_control_printf(b, "{\"error\":");
        km_control_json_str(b, why);
        km_control_printf(b, "}\n");
}

static void reply_json(struct km_control_buf *b, const char *key, cJSON *o)
{
        char *s = o ? cJSON_PrintUnformatted(o) : NULL;
        if (!s) {
                reply_err(b, "out of memory");
                return;
        }
        km_control_printf(b, "{\"%s\":%s}\n", key, s);
        free(s);
}

void km_incidents_control(struct km_incidents *in, const char *args, struct km_control_buf *out)
{
        char err[200] = "", id[72] = "";
        if (!in) {
                reply_err(out, "incidents run on a base only");
                return;
        }
        args += strspn(args, " \t");
        size_t n = strcspn(args, "\r\n");
        if (*args == '{') {
                int rc = command(in, args, n, err, sizeof(err));
                if (rc < 0)
                        reply_err(out, rc == -EINVAL ? err : strerror(-rc));
                else
                        km_control_printf(out, "{\"incident\":\"opened\"}\n");
                return;
        }
        size_t vl = strcspn(args, " \t\r\n");
        const char *arg = args + vl + strspn(args + vl, " \t");
        size_t il = strcspn(arg, " \t\r\n");
        if (il < sizeof(id))
                memcpy(id, arg, il), id[il] = '\0';
        struct incident *x = *id ? find(in, id) : NULL;
        if (vl == 5 && strncmp(args, "close", 5) == 0) {
                if (!x) {
                        reply_err(out, "no such incident (kuimenctl incident show)");
                        return;
                }
                if (!x->closed_ms) {
                        x->closed_ms = in->io.now(in->io.ud);
                        touch(in, x, true);
                }
                int rc = km_incidents_flush(in, true);
                if (rc < 0)
                        reply_err(out, strerror(-rc));
                else
                        km_control_printf(out, "{\"incident\":\"closed\"}\n");
                return;
        }
        if (vl == 4 && strncmp(args, "show", 4) == 0) {
                for (size_t i = 0; *id && !x && i < in->nh; i++)
                        if (strcmp(in->h[i].key, id) == 0) {
                                km_control_printf(out, "{\"incident\":%s}\n", in->h[i].json);
                                return;
                        }
                if (*id) {
                        if (!x) {
                                reply_err(out, "no such incident (kuimenctl incident show)");
                                return;
                        }
                        cJSON *o = to_json(x, false);
                        reply_json(out, "incident", o);
                        cJSON_Delete(o);
                        return;
                }
                cJSON *a = cJSON_CreateArray();
                for (size_t i = 0; a && i < in->n; i++)
                        cJSON_AddItemToArray(a, to_json(in->v[i], false));
                for (size_t i = 0; a && i < in->nh; i++) /* a center: the bases' */
                        cJSON_AddItemToArray(a, cJSON_Parse(in->h[i].json));
                reply_json(out, "incidents", a);
                cJSON_Delete(a);
                return;
        }
        reply_err(out, "unknown incident request (incident JSON, incident show [ID], incident close ID)");
}

/* ---- daemon glue ---------------------------------------------------------------------------- */

static int d_emit(void *ud, const char *topic, const char *payload, size_t len)
{
        struct km_incidents *in = ud;
        return km_daemon_ingest_class(in->d, KM_DIR_UP, topic, "status", payload, len, true, NULL);
}

static int64_t d_now(void *ud)
{
        struct km_incidents *in = ud;
        return km_daemon_now(in->d);
}

static int on_flush(sd_event_source *s, void *ud)
{
        (void)s;
        km_incidents_flush(ud, false);
        return 0;
}

static void d_dirty(void *ud)
{
        struct km_incidents *in = ud;
        if (in->flush_src)
                sd_event_source_set_enabled(in->flush_src, SD_EVENT_ONESHOT);
}

int km_incidents_start(struct km_daemon *d, struct km_conf *c)
{
        struct km_incidents_conf conf;
        struct km_incidents *in;
        int rc = km_incidents_conf_load(&conf, c);
        if (rc < 0)
                return rc;
        struct km_incidents_io io = { .emit = d_emit, .now = d_now, .dirty = d_dirty };
        if ((rc = km_incidents_new(&in, d->spool, &conf, &io)) < 0)
                return rc;
        in->io.ud = in;
        in->d = d;
        if ((rc = sd_event_add_defer(d->ev, &in->flush_src, on_flush, in)) < 0 ||
            (rc = sd_event_source_set_enabled(in->flush_src, SD_EVENT_OFF)) < 0) {
                km_incidents_free(in);
                return rc;
        }
        d->incidents = in;
        return 0;
}
