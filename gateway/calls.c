/* SPDX-License-Identifier: MIT */
/* Calls (一叫四应): the engine: a warning to named units, answered, repeated, escalated; every state change upstream. */
#include "calls.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>
#include <time.h>

#include "calls-internal.h"
#include "daemon.h"
#include "incidents.h"
#include "log.h"
#include "spool.h"

/*
 * What a call is (docs/calls.md has the topics and JSON for terminal and center
 * developers). The center (cmd/call) or an operator (kuimenctl call) raises a call:
 * an id, a level, a text and recipients (units, or groups from [calls group NAME]).
 * Each recipient gets it retained on call/<unit> at QoS 1 and answers on
 * call/<unit>/answer with received, acting, done or cannot. A recipient not answered
 * gets it again every repeat_every (only once the last copy reached the broker: a
 * broker that is away gets one copy, not a pile); past respond_within it is overdue;
 * from escalate_after on, while someone has not answered or answered cannot, each step
 * of the escalation chain (escalate_to) is called in turn, one step every
 * escalate_after. Every change goes upstream on call/<id> as class alert, so it takes
 * whatever link is up, narrow ones included, in the order it happened.
 *
 * Durability. State lives in memory and in two tables of the spool's SQLite file,
 * written by km_calls_flush. What an acknowledgement vouches for is written first: a
 * command is stored (a synchronous=FULL commit) before the spool lets go of cmd/call;
 * an answer is stored before its PUBACK (the MQTT bridge flushes in its settle, after
 * the spool's, so the upstream change is in the ingest log first; a FULL flush syncs
 * that log before its commit, so with sync = batch a power cut cannot keep the answer
 * and lose its change: the power-cut drill's call). Everything else (a
 * delivery, a repeat, an escalation) is flushed at the end of the loop's turn: lost to
 * a kill, it is done again after the restart (a repeat or an escalation sent twice, a
 * delivery seen again), never left undone. Upstream changes are pushed before the
 * state that caused them is written, so a crash in between repeats a change, never
 * loses one (the center sees it twice: at least once, as everything upstream).
 *
 * Time: the daemon's wall clock (GNSS time while the system clock is not synchronised),
 * so that deadlines stored before a restart mean the same after it. "t" upstream is
 * whole seconds since the call was raised.
 *
 * The files: this one is the engine (commands, answers, acknowledgements, deadlines)
 * and the daemon's glue; calls-store.c the two tables, calls-conf.c the [calls ...]
 * sections, calls-control.c kuimenctl's requests.
 */

const char *km_call_level_name(int level)
{
        return level >= 0 && level < KM_CALL_LEVELS ? level_names[level] : NULL;
}

/* ---- the engine's state ------------------------------------------------------------ */

void km_calls_call_free(struct call *c)
{
        if (!c)
                return;
        for (size_t i = 0; i < c->nr; i++)
                free(c->r[i].answer);
        free(c->r);
        free(c->text);
        km_calls_steps_free(c->steps, c->nsteps);
        free(c);
}

struct call *km_calls_find(const struct km_calls *cs, const char *id)
{
        for (size_t i = 0; i < cs->n; i++)
                if (strcmp(cs->c[i]->id, id) == 0)
                        return cs->c[i];
        return NULL;
}

static struct rcpt *find_rcpt(struct call *c, const char *unit)
{
        for (size_t i = 0; i < c->nr; i++)
                if (strcmp(c->r[i].unit, unit) == 0)
                        return &c->r[i];
        return NULL;
}

static void mark(struct km_calls *cs, struct call *c)
{
        c->dirty = true;
        if (cs->io.dirty)
                cs->io.dirty(cs->io.ud);
}

size_t km_calls_open_n(const struct km_calls *cs)
{
        size_t n = 0;
        for (size_t i = 0; i < cs->n; i++)
                n += cs->c[i]->state != C_CLOSED;
        return n;
}

/* Whole seconds since the call was raised: "t" upstream. */
static long long since(const struct call *c, int64_t now)
{
        return now > c->created_ms ? (long long)((now - c->created_ms) / 1000) : 0;
}

/* ---- upstream: call/<id>, class alert ------------------------------------------------ */

/* Keeps a change the spool refused (takes payload) for send_held. */
static void hold(struct km_calls *cs, const char *topic, char *payload)
{
        if (cs->nheld == KM_CALLS_HELD_MAX) {
                KM_LOG(KM_LOG_ERR, "calls", "more than %d state changes held: the oldest dropped (%s %s)", KM_CALLS_HELD_MAX,
                       cs->held[0].topic, cs->held[0].payload);
                free(cs->held[0].topic);
                free(cs->held[0].payload);
                memmove(cs->held, cs->held + 1, (cs->nheld - 1) * sizeof(*cs->held));
                cs->nheld--;
        }
        if (cs->nheld == cs->held_cap) {
                size_t cap = cs->held_cap ? cs->held_cap * 2 : 16;
                struct held *h = realloc(cs->held, cap * sizeof(*h));
                if (!h)
                        goto nomem;
                cs->held = h;
                cs->held_cap = cap;
        }
        char *t = strdup(topic);
        if (!t)
                goto nomem;
        cs->held[cs->nheld++] = (struct held){ t, payload };
        return;
nomem:
        KM_LOG(KM_LOG_ERR, "calls", "out of memory: a state change dropped (%s %s)", topic, payload);
        free(payload);
}

static void emit_json(struct km_calls *cs, const struct call *c, cJSON *o)
{
        char topic[8 + KM_CALLS_ID_MAX];
        char *s = o ? cJSON_PrintUnformatted(o) : NULL;
        cJSON_Delete(o);
        if (!s) {
                KM_LOG(KM_LOG_ERR, "calls", "call %s: out of memory: a state change not sent upstream", c->id);
                return;
        }
        snprintf(topic, sizeof(topic), "call/%s", c->id);
        /* Behind changes held back, a change waits its turn: the center gets them in order. */
        int rc = cs->nheld ? -EAGAIN : cs->io.emit(cs->io.ud, topic, s, strlen(s));
        if (rc == 0) {
                cs->st.changes++;
                free(s);
                return;
        }
        if (!cs->nheld)
                KM_LOG(KM_LOG_ERR, "calls", "call %s: state change not spooled upstream (%s): held, sent once the spool takes it",
                       c->id, strerror(-rc));
        hold(cs, topic, s);
}

/* Sends the changes held back, oldest first, until the spool refuses one. */
static void send_held(struct km_calls *cs)
{
        size_t k = 0;
        while (k < cs->nheld && cs->io.emit(cs->io.ud, cs->held[k].topic, cs->held[k].payload,
                                            strlen(cs->held[k].payload)) == 0) {
                free(cs->held[k].topic);
                free(cs->held[k].payload);
                cs->st.changes++;
                k++;
        }
        if (!k)
                return;
        memmove(cs->held, cs->held + k, (cs->nheld - k) * sizeof(*cs->held));
        cs->nheld -= k;
        if (!cs->nheld)
                KM_LOG(KM_LOG_NOTICE, "calls", "%zu held state changes spooled upstream", k);
}

/* One recipient's change, as compact as the narrow links need it: unit, state, t, and
 * n (copies sent) when above 1, answer when it has a text. */
static void emit_rcpt(struct km_calls *cs, const struct call *c, const struct rcpt *r, int64_t now)
{
        cJSON *o = cJSON_CreateObject();
        if (o) {
                cJSON_AddStringToObject(o, "unit", r->unit);
                cJSON_AddStringToObject(o, "state", rstate_names[r->state]);
                cJSON_AddNumberToObject(o, "t", (double)since(c, now));
                if (r->sends > 1)
                        cJSON_AddNumberToObject(o, "n", r->sends);
                if (r->answer && answered(r->state))
                        cJSON_AddStringToObject(o, "answer", r->answer);
        }
        emit_json(cs, c, o);
}

static cJSON *strv_json(const char *const *v, size_t n)
{
        cJSON *a = cJSON_CreateArray();
        for (size_t i = 0; a && i < n; i++)
                cJSON_AddItemToArray(a, cJSON_CreateString(v[i]));
        return a;
}

static void emit_call(struct km_calls *cs, const struct call *c, int64_t now, const char *const *to, size_t nto)
{
        cJSON *o = cJSON_CreateObject();
        if (o) {
                cJSON_AddStringToObject(o, "state", cstate_names[c->state]);
                if (c->state == C_OPEN && !c->esc_done) {
                        cJSON_AddStringToObject(o, "level", level_names[c->level]);
                        cJSON_AddNumberToObject(o, "at", (double)(c->created_ms / 1000));
                        cJSON_AddItemToObject(o, "recipients", strv_json(to, nto));
                        cJSON_AddStringToObject(o, "text", c->text);
                } else {
                        cJSON_AddNumberToObject(o, "t", (double)since(c, now));
                        if (c->state == C_ESCALATED && to) { /* an escalation step (not its close) */
                                cJSON_AddNumberToObject(o, "step", c->esc_done);
                                if (nto)
                                        cJSON_AddItemToObject(o, "to", strv_json(to, nto));
                        }
                }
        }
        emit_json(cs, c, o);
}

/* ---- down: call/<unit>, retained until answered ---------------------------------------- */

static int publish_call(struct km_calls *cs, const struct call *c, const struct rcpt *r, uint64_t *id)
{
        char topic[8 + KM_CALLS_UNIT_MAX];
        cJSON *o = cJSON_CreateObject();
        if (!o)
                return -ENOMEM;
        cJSON_AddStringToObject(o, "id", c->id);
        cJSON_AddStringToObject(o, "level", level_names[c->level]);
        cJSON_AddStringToObject(o, "text", c->text);
        cJSON_AddNumberToObject(o, "at", (double)(c->created_ms / 1000));
        cJSON_AddNumberToObject(o, "respond_within", (double)(c->respond_ms / 1000));
        cJSON_AddNumberToObject(o, "n", r->sends);
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!s)
                return -ENOMEM;
        snprintf(topic, sizeof(topic), "call/%s", r->unit);
        int rc = cs->io.publish(cs->io.ud, topic, s, strlen(s), true, id);
        free(s);
        return rc;
}

/* Sends r its call (again): a new copy, counted. */
static int send_rcpt(struct km_calls *cs, struct call *c, struct rcpt *r, int64_t now)
{
        uint64_t id = 0;
        r->sends++;
        int rc = publish_call(cs, c, r, &id);
        if (rc < 0) {
                r->sends--;
                /* Every tick meets it again while the spool refuses: once every 10 s. */
                uint64_t quiet;
                if (km_log_limit_pass(&cs->send_fail_log, now, 10000, &quiet))
                        KM_LOG(KM_LOG_ERR, "calls", "call %s to %s not spooled (%s): tried again every tick (%llu more like it)",
                               c->id, r->unit, strerror(-rc), (unsigned long long)quiet);
                return rc;
        }
        r->spool_id = id;
        r->sent_ms = now;
        return 0;
}

/* What call/<unit> holds once r no longer needs its call: the newest other call that
 * still waits for the unit's answer, else nothing (an empty retained message deletes
 * the broker's retained copy). */
static void refresh_unit(struct km_calls *cs, const char *unit)
{
        struct call *best = NULL;
        struct rcpt *br = NULL;
        for (size_t i = 0; i < cs->n; i++) {
                struct call *c = cs->c[i];
                struct rcpt *r;
                if (c->state == C_CLOSED || !(r = find_rcpt(c, unit)) || answered(r->state))
                        continue;
                if (!best || c->created_ms >= best->created_ms)
                        best = c, br = r;
        }
        if (best) {
                uint64_t id;
                publish_call(cs, best, br, &id);
                return;
        }
        char topic[8 + KM_CALLS_UNIT_MAX];
        uint64_t id;
        snprintf(topic, sizeof(topic), "call/%s", unit);
        int rc = cs->io.publish(cs->io.ud, topic, "", 0, true, &id);
        if (rc < 0)
                KM_LOG(KM_LOG_ERR, "calls", "retained call on %s not cleared (%s)", topic, strerror(-rc));
}

/* Units of names (groups expanded, duplicates and units already in c left out),
 * appended to c as recipients of step. Returns how many were added, or -ENOMEM/-E2BIG. */
static int add_rcpts(struct km_calls *cs, struct call *c, const char *const *names, size_t n, int step, int64_t now,
                     struct km_strv *added)
{
        int k = 0;
        for (size_t i = 0; i < n; i++) {
                const struct km_calls_group *g = km_calls_find_group(&cs->conf, names[i]);
                size_t nu = g ? g->units.n : 1;
                for (size_t j = 0; j < nu; j++) {
                        const char *u = g ? g->units.v[j] : names[i];
                        if (find_rcpt(c, u))
                                continue;
                        if (c->nr == KM_CALLS_RCPT_MAX)
                                return -E2BIG;
                        struct rcpt *nr = realloc(c->r, (c->nr + 1) * sizeof(*nr));
                        if (!nr)
                                return -ENOMEM;
                        c->r = nr;
                        nr[c->nr] = (struct rcpt){ .step = (uint8_t)step, .first_ms = now };
                        snprintf(nr[c->nr].unit, sizeof(nr[c->nr].unit), "%s", u);
                        c->nr++;
                        if (added) {
                                char **v = realloc(added->v, (added->n + 2) * sizeof(*v));
                                if (!v)
                                        return -ENOMEM;
                                added->v = v;
                                if (!(v[added->n] = strdup(u)))
                                        return -ENOMEM;
                                v[++added->n] = NULL;
                        }
                        k++;
                }
        }
        return k;
}

void km_calls_stats(const struct km_calls *cs, struct km_calls_stats *st)
{
        *st = cs->st;
        st->open = km_calls_open_n(cs);
        st->unanswered = st->overdue = st->escalated = 0;
        for (size_t i = 0; i < cs->n; i++) {
                const struct call *c = cs->c[i];
                if (c->state == C_CLOSED)
                        continue;
                st->escalated += c->state == C_ESCALATED;
                for (size_t k = 0; k < c->nr; k++) {
                        st->unanswered += !answered(c->r[k].state);
                        st->overdue += c->r[k].state == R_OVERDUE;
                }
        }
}

/* ---- the state machine --------------------------------------------------------------- */

void km_calls_close(struct km_calls *cs, struct call *c, int64_t now)
{
        c->state = C_CLOSED;
        c->closed_ms = now;
        emit_call(cs, c, now, NULL, 0);
        for (size_t i = 0; i < c->nr; i++)
                if (!answered(c->r[i].state))
                        refresh_unit(cs, c->r[i].unit);
        mark(cs, c);
        KM_LOG(KM_LOG_NOTICE, "calls", "call %s closed after %lld s", c->id, since(c, now));
}

/* Bad input from outside: logged at most every 10 s, counted. */
void km_calls_bad(struct km_calls *cs, uint64_t *counter, const char *fmt, ...)
{
        va_list ap;
        (*counter)++;
        va_start(ap, fmt);
        km_log_vlimited(&cs->bad_log, cs->io.now(cs->io.ud), 10000, KM_LOG_WARNING, "calls", fmt, ap);
        va_end(ap);
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;
        if (err && errlen) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* Seconds (a JSON number, 0 to 30 days) into *ms; absent leaves *ms. */
static int seconds(const cJSON *o, const char *key, int64_t *ms, char *err, size_t errlen)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!v || cJSON_IsNull(v))
                return 0;
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 30 * 86400.0)
                return fail(err, errlen, "%s: not a number of seconds from 0 to 2592000", key);
        *ms = (int64_t)(v->valuedouble * 1000);
        return 0;
}

/* A JSON array of names (or one name) into v. */
static int names(const cJSON *o, const char *key, struct km_strv *v, bool required, char *err, size_t errlen)
{
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key), *e;
        if (!a || cJSON_IsNull(a))
                return required ? fail(err, errlen, "%s: missing", key) : 0;
        if (cJSON_IsString(a))
                return km_strv_split(v, a->valuestring) < 0 ? -ENOMEM : 0;
        if (!cJSON_IsArray(a))
                return fail(err, errlen, "%s: not an array of unit or group ids", key);
        cJSON_ArrayForEach(e, a) {
                if (!cJSON_IsString(e) || !km_calls_name_ok(e->valuestring, KM_CALLS_UNIT_MAX))
                        return fail(err, errlen, "%s: an item that is not a unit or group id (1 to 31 printable bytes, no blank, '/', '+', '#', '\"' or '\\')", key);
                char **nv = realloc(v->v, (v->n + 2) * sizeof(*nv));
                if (!nv)
                        return -ENOMEM;
                v->v = nv;
                if (!(nv[v->n] = strdup(e->valuestring)))
                        return -ENOMEM;
                nv[++v->n] = NULL;
        }
        if (required && !v->n)
                return fail(err, errlen, "%s: empty", key);
        return 0;
}

static bool utf8_valid(const char *s)
{
        const unsigned char *p = (const unsigned char *)s;
        while (*p) {
                int n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2 : (*p & 0xf8) == 0xf0 ? 3 : -1;
                if (n < 0)
                        return false;
                for (int i = 1; i <= n; i++)
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                p += n + 1;
        }
        return true;
}

/* Raises call c (new, filled): stored, then sent, then said upstream. */
static int raise_call(struct km_calls *cs, struct call *c, struct km_strv *to, int64_t now, char *err, size_t errlen)
{
        int rc = add_rcpts(cs, c, (const char *const *)to->v, to->n, 0, now, NULL);
        if (rc == -E2BIG)
                return fail(err, errlen, "recipients: more than %d units", KM_CALLS_RCPT_MAX);
        if (rc < 0)
                return rc;
        if (cs->n == cs->cap) {
                size_t cap = cs->cap ? cs->cap * 2 : 16;
                struct call **nc = realloc(cs->c, cap * sizeof(*nc));
                if (!nc)
                        return -ENOMEM;
                cs->c = nc;
                cs->cap = cap;
        }
        cs->c[cs->n++] = c;
        /* Upstream first (see the durability note): the center learns of the call
         * before any recipient's change. */
        char **units = calloc(c->nr + 1, sizeof(*units));
        if (units)
                for (size_t i = 0; i < c->nr; i++)
                        units[i] = c->r[i].unit;
        emit_call(cs, c, now, (const char *const *)units, units ? c->nr : 0);
        free(units);
        for (size_t i = 0; i < c->nr; i++)
                send_rcpt(cs, c, &c->r[i], now);
        c->dirty = true;
        cs->st.calls++;
        KM_LOG(KM_LOG_NOTICE, "calls", "call %s (%s, %zu recipient%s) raised by %s", c->id, level_names[c->level], c->nr,
               c->nr == 1 ? "" : "s", c->local ? "kuimenctl" : "the center");
        return 0;
}

int km_calls_do_command(struct km_calls *cs, const void *payload, size_t len, bool local, char *err, size_t errlen)
{
        char buf[8192];
        int rc;
        if (len >= sizeof(buf))
                return fail(err, errlen, "larger than %zu bytes", sizeof(buf) - 1);
        memcpy(buf, payload, len);
        buf[len] = '\0';
        cJSON *o = cJSON_ParseWithLength(buf, len);
        if (!o || !cJSON_IsObject(o)) {
                cJSON_Delete(o);
                return fail(err, errlen, "not a JSON object");
        }
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        const cJSON *level = cJSON_GetObjectItemCaseSensitive(o, "level");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "text");
        const cJSON *close = cJSON_GetObjectItemCaseSensitive(o, "close");
        struct km_strv to = { 0 }, esc = { 0 };
        struct call *c = NULL;
        int64_t now = cs->io.now(cs->io.ud);

        if (!cJSON_IsString(id) || !km_calls_name_ok(id->valuestring, KM_CALLS_ID_MAX)) {
                rc = fail(err, errlen, "id: missing, or not 1 to 32 printable bytes without blank, '/', '+', '#', '\"' or '\\'");
                goto out;
        }
        struct call *old = km_calls_find(cs, id->valuestring);
        if (cJSON_IsTrue(close)) {
                if (!old)
                        rc = fail(err, errlen, "no call %s", id->valuestring);
                else if (old->state != C_CLOSED)
                        km_calls_close(cs, old, now), rc = 0;
                else
                        rc = 0;
                goto out;
        }
        if (old) { /* the same command again (a redelivery, the other path): taken once */
                KM_LOG(KM_LOG_DEBUG, "calls", "call %s is known already: not raised again", old->id);
                rc = km_calls_flush(cs, true); /* it may be the store that failed last time */
                goto out;
        }
        int lv = cJSON_IsString(level) ? level_of(level->valuestring) : -1;
        if (lv < 0) {
                rc = fail(err, errlen, "level: missing, or not blue, yellow, orange or red");
                goto out;
        }
        if (!cJSON_IsString(text) || !*text->valuestring || strlen(text->valuestring) > KM_CALLS_TEXT_MAX ||
            !utf8_valid(text->valuestring)) {
                rc = fail(err, errlen, "text: missing, empty, not UTF-8 or over %d bytes", KM_CALLS_TEXT_MAX);
                goto out;
        }
        if (km_calls_open_n(cs) >= KM_CALLS_OPEN_MAX) {
                rc = fail(err, errlen, "%d calls are open already: close some first", KM_CALLS_OPEN_MAX);
                goto out;
        }
        if (!(c = calloc(1, sizeof(*c))) || !(c->text = strdup(text->valuestring))) {
                rc = -ENOMEM;
                goto out;
        }
        snprintf(c->id, sizeof(c->id), "%s", id->valuestring);
        c->level = (uint8_t)lv;
        c->local = local;
        c->created_ms = now;
        const struct km_calls_level_conf *lc = &cs->conf.level[lv];
        c->respond_ms = lc->respond_within_ms;
        c->repeat_ms = lc->repeat_every_ms;
        c->esc_after_ms = -1;
        if ((rc = seconds(o, "respond_within", &c->respond_ms, err, errlen)) < 0 ||
            (rc = seconds(o, "repeat_every", &c->repeat_ms, err, errlen)) < 0 ||
            (rc = seconds(o, "escalate_after", &c->esc_after_ms, err, errlen)) < 0 ||
            (rc = names(o, "recipients", &to, true, err, errlen)) < 0 ||
            (rc = names(o, "escalate_to", &esc, false, err, errlen)) < 0)
                goto out;
        if (c->esc_after_ms < 0)
                c->esc_after_ms = cJSON_GetObjectItemCaseSensitive(o, "respond_within") ? c->respond_ms
                                                                                         : lc->escalate_after_ms;
        if (esc.n) { /* the command's escalate_to is one step */
                c->steps[0] = esc;
                memset(&esc, 0, sizeof(esc));
                c->nsteps = 1;
        } else {
                for (size_t s = 0; s < lc->nsteps; s++) {
                        for (size_t i = 0; i < lc->steps[s].n; i++) {
                                char **nv = realloc(c->steps[s].v, (c->steps[s].n + 2) * sizeof(*nv));
                                if (!nv || !(nv[c->steps[s].n] = strdup(lc->steps[s].v[i]))) {
                                        if (nv)
                                                c->steps[s].v = nv;
                                        rc = -ENOMEM;
                                        goto out;
                                }
                                c->steps[s].v = nv;
                                nv[++c->steps[s].n] = NULL;
                        }
                        c->nsteps = s + 1;
                }
        }
        if ((rc = raise_call(cs, c, &to, now, err, errlen)) < 0)
                goto out;
        c = NULL; /* cs has it */
        /* Stored before the command is let go of (the caller acknowledges after). */
        rc = km_calls_flush(cs, true);
out:
        if (c && c->r && km_calls_find(cs, c->id) == c)
                c = NULL;
        km_calls_call_free(c);
        km_strv_free(&to);
        km_strv_free(&esc);
        cJSON_Delete(o);
        return rc;
}

int km_calls_command(struct km_calls *cs, const void *payload, size_t len, char *err, size_t errlen)
{
        char e[256] = "";
        int rc = km_calls_do_command(cs, payload, len, false, e, sizeof(e));
        if (rc == -EINVAL)
                km_calls_bad(cs, &cs->st.bad_commands, "call command refused: %s", e);
        if (err && errlen)
                snprintf(err, errlen, "%s", e);
        /* Refused for good: acknowledged, it would be refused again. */
        return rc == -EINVAL ? 0 : rc;
}

/* The answer's text cut to KM_CALLS_ANSWER_MAX at a character boundary. */
static char *answer_text(const char *s)
{
        size_t n = strlen(s);
        if (n > KM_CALLS_ANSWER_MAX) {
                n = KM_CALLS_ANSWER_MAX;
                while (n && ((unsigned char)s[n] & 0xc0) == 0x80)
                        n--;
        }
        return strndup(s, n);
}

bool km_calls_name_ok(const char *s, size_t max)
{
        size_t n = strlen(s);
        if (!n || n > max)
                return false;
        for (const unsigned char *p = (const unsigned char *)s; *p; p++)
                if (*p <= ' ' || *p >= 0x7f || strchr("/+#\"\\", *p))
                        return false;
        return true;
}

int km_calls_answer(struct km_calls *cs, const char *topic, const void *payload, size_t len)
{
        char unit[KM_CALLS_UNIT_MAX + 1], buf[2048];
        size_t tl = strlen(topic);
        if (strncmp(topic, "call/", 5) != 0 || tl < 5 + 7 || strcmp(topic + tl - 7, "/answer") != 0)
                return 0;
        size_t ul = tl - 5 - 7;
        if (ul > KM_CALLS_UNIT_MAX || memchr(topic + 5, '/', ul)) {
                km_calls_bad(cs, &cs->st.bad_answers, "answer on '%s': not call/<unit>/answer", topic);
                return 1;
        }
        memcpy(unit, topic + 5, ul);
        unit[ul] = '\0';
        if (len >= sizeof(buf)) {
                km_calls_bad(cs, &cs->st.bad_answers, "answer from %s: larger than %zu bytes", unit, sizeof(buf) - 1);
                return 1;
        }
        memcpy(buf, payload, len);
        buf[len] = '\0';
        cJSON *o = cJSON_ParseWithLength(buf, len);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(o, "status");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "text");
        int st = -1;
        for (int s = R_RECEIVED; cJSON_IsString(status) && s < R_N; s++)
                if (strcmp(status->valuestring, rstate_names[s]) == 0)
                        st = s;
        struct call *c = cJSON_IsString(id) ? km_calls_find(cs, id->valuestring) : NULL;
        struct rcpt *r = c ? find_rcpt(c, unit) : NULL;
        if (!cJSON_IsObject(o))
                km_calls_bad(cs, &cs->st.bad_answers, "answer from %s: not a JSON object", unit);
        else if (!cJSON_IsString(id))
                km_calls_bad(cs, &cs->st.bad_answers, "answer from %s: no call id", unit);
        else if (st < 0)
                km_calls_bad(cs, &cs->st.bad_answers, "answer from %s to call %.40s: status not received, acting, done or cannot", unit,
                    id->valuestring);
        else if (text && !cJSON_IsNull(text) && (!cJSON_IsString(text) || !utf8_valid(text->valuestring)))
                km_calls_bad(cs, &cs->st.bad_answers, "answer from %s to call %.40s: text not a UTF-8 string", unit, id->valuestring);
        else if (!c)
                km_calls_bad(cs, &cs->st.bad_answers, "answer from %s to call %.40s: no such call", unit, id->valuestring);
        else if (!r)
                km_calls_bad(cs, &cs->st.bad_answers, "answer from %s to call %s: not one of its recipients", unit, c->id);
        else if (c->state == C_CLOSED)
                km_calls_bad(cs, &cs->st.bad_answers, "answer from %s to call %s: the call is closed", unit, c->id);
        else {
                const char *t = cJSON_IsString(text) && *text->valuestring ? text->valuestring : NULL;
                char *cut = t ? answer_text(t) : NULL;
                bool same = r->state == st && ((!cut && !r->answer) || (cut && r->answer && strcmp(cut, r->answer) == 0));
                /* Answers come at least once and may come out of order (a terminal's
                 * retry after a cut, a copy that waited at its broker): an older step
                 * does not undo a newer one. "received" follows no answer, and "done"
                 * is final; acting and cannot may follow each other (plans change). */
                bool stale = (st == R_RECEIVED && answered(r->state)) || (r->state == R_DONE && st != R_DONE);
                if (same) { /* the same answer again (a terminal's retry): one change */
                        free(cut);
                } else if (stale) {
                        KM_LOG(KM_LOG_INFO, "calls", "answer %s from %s to call %s after %s: older, not taken",
                               rstate_names[st], unit, c->id, rstate_names[r->state]);
                        free(cut);
                } else {
                        int64_t now = cs->io.now(cs->io.ud);
                        bool was = answered(r->state);
                        free(r->answer);
                        r->answer = cut;
                        r->state = (uint8_t)st;
                        r->answered_ms = now;
                        if (!r->delivered_ms)
                                r->delivered_ms = now;
                        r->spool_id = 0;
                        cs->st.answers++;
                        emit_rcpt(cs, c, r, now);
                        if (cs->io.answered)
                                cs->io.answered(cs->io.ud, c->id, unit, rstate_names[st]);
                        if (!was)
                                refresh_unit(cs, unit);
                        mark(cs, c);
                        bool all_done = true;
                        for (size_t i = 0; i < c->nr && all_done; i++)
                                all_done = c->r[i].state == R_DONE;
                        if (all_done)
                                km_calls_close(cs, c, now);
                }
        }
        cJSON_Delete(o);
        return 1;
}

void km_calls_acked(struct km_calls *cs, uint64_t id)
{
        if (!id)
                return;
        for (size_t i = 0; i < cs->n; i++) {
                struct call *c = cs->c[i];
                if (c->state == C_CLOSED)
                        continue;
                for (size_t k = 0; k < c->nr; k++) {
                        struct rcpt *r = &c->r[k];
                        if (r->spool_id != id)
                                continue;
                        r->spool_id = 0;
                        int64_t now = cs->io.now(cs->io.ud);
                        if (!r->delivered_ms) /* also when it was overdue first (its broker was away) */
                                r->delivered_ms = now;
                        if (r->state == R_PENDING) {
                                r->state = R_DELIVERED;
                                emit_rcpt(cs, c, r, now);
                        }
                        mark(cs, c);
                        return;
                }
        }
}

/* A repeat is due on the grid of the first copy (first + k x repeat_every), so the tick
 * does not add up into drift; a copy held back (its broker away) is followed by the
 * next one no sooner than half an interval after it, not by a burst. */
static bool repeat_due(const struct call *c, const struct rcpt *r, int64_t now)
{
        if (c->repeat_ms <= 0 || r->spool_id || !r->sends)
                return false;
        return now >= r->first_ms + (int64_t)r->sends * c->repeat_ms && now >= r->sent_ms + c->repeat_ms / 2;
}

static void tick_call(struct km_calls *cs, struct call *c, int64_t now)
{
        for (size_t i = 0; i < c->nr; i++) {
                struct rcpt *r = &c->r[i];
                bool changed = false;
                if (answered(r->state))
                        continue;
                if (!r->sends) { /* its first send failed: again */
                        if (send_rcpt(cs, c, r, now) == 0)
                                mark(cs, c);
                        continue;
                }
                if (r->state != R_OVERDUE && c->respond_ms > 0 && now >= r->first_ms + c->respond_ms) {
                        r->state = R_OVERDUE;
                        changed = true;
                }
                if (repeat_due(c, r, now) && send_rcpt(cs, c, r, now) == 0) {
                        cs->st.repeats++;
                        changed = true;
                }
                /* One change upstream for both when they fall in one tick. */
                if (changed) {
                        emit_rcpt(cs, c, r, now);
                        mark(cs, c);
                }
        }
        int64_t every = c->esc_after_ms;
        while (c->esc_done < c->nsteps && every > 0 && now >= c->created_ms + every * (c->esc_done + 1)) {
                bool help = false;
                for (size_t i = 0; i < c->nr && !help; i++)
                        help = needs_help(c->r[i].state);
                if (!help)
                        break;
                struct km_strv added = { 0 };
                size_t first = c->nr;
                int k = add_rcpts(cs, c, (const char *const *)c->steps[c->esc_done].v, c->steps[c->esc_done].n,
                                  c->esc_done + 1, now, &added);
                if (k < 0) {
                        km_strv_free(&added);
                        KM_LOG(KM_LOG_ERR, "calls", "call %s: escalation step %d: %s", c->id, c->esc_done + 1,
                               k == -E2BIG ? "too many recipients" : "out of memory");
                        break;
                }
                c->esc_done++;
                c->state = C_ESCALATED;
                cs->st.escalations++;
                static const char *const none[] = { NULL };
                emit_call(cs, c, now, added.v ? (const char *const *)added.v : none, added.n);
                KM_LOG(KM_LOG_NOTICE, "calls", "call %s escalated (step %d) to %zu more units", c->id, c->esc_done, added.n);
                km_strv_free(&added);
                for (size_t i = first; i < c->nr; i++)
                        send_rcpt(cs, c, &c->r[i], now);
                mark(cs, c);
        }
}

void km_calls_tick(struct km_calls *cs)
{
        int64_t now = cs->io.now(cs->io.ud);
        if (cs->nheld)
                send_held(cs);
        for (size_t i = 0; i < cs->n; i++)
                if (cs->c[i]->state != C_CLOSED)
                        tick_call(cs, cs->c[i], now);
        /* Closed calls past keep_closed leave memory and the file. */
        for (size_t i = 0; i < cs->n;) {
                struct call *c = cs->c[i];
                if (c->state != C_CLOSED || now < c->closed_ms + cs->conf.keep_closed_ms || c->dirty) {
                        i++;
                        continue;
                }
                if (km_spool_tx_begin(cs->sp, false) < 0)
                        break;
                int rc = km_calls_delete(cs, c->id);
                if (km_spool_tx_end(cs->sp, false, rc == 0, "deleting an old call") < 0)
                        break;
                km_calls_call_free(c);
                memmove(&cs->c[i], &cs->c[i + 1], (cs->n - i - 1) * sizeof(*cs->c));
                cs->n--;
        }
}

/* ---- daemon glue ---------------------------------------------------------------------- */

static int d_publish(void *ud, const char *topic, const char *payload, size_t len, bool retain, uint64_t *id)
{
        struct km_calls *cs = ud;
        return km_daemon_ingest_class(cs->d, KM_DIR_DOWN, topic, "alert", payload, len, retain, id);
}

static int d_emit(void *ud, const char *topic, const char *payload, size_t len)
{
        struct km_calls *cs = ud;
        return km_daemon_ingest_class(cs->d, KM_DIR_UP, topic, "alert", payload, len, false, NULL);
}

static int64_t d_now(void *ud)
{
        struct km_calls *cs = ud;
        return km_daemon_now(cs->d);
}

static void d_answered(void *ud, const char *call_id, const char *unit, const char *status)
{
        struct km_calls *cs = ud;
        if (cs->d->incidents)
                km_incidents_answer(cs->d->incidents, call_id, unit, status);
}

static int on_flush(sd_event_source *s, void *ud)
{
        struct km_calls *cs = ud;
        (void)s;
        km_calls_flush(cs, false); /* a failure is the spool's storage fault: the next change tries again */
        return 0;
}

static void d_dirty(void *ud)
{
        struct km_calls *cs = ud;
        if (cs->flush)
                sd_event_source_set_enabled(cs->flush, SD_EVENT_ONESHOT);
}

static int on_tick(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_calls *cs = ud;
        (void)usec;
        km_calls_tick(cs);
        sd_event_source_set_time_relative(s, (uint64_t)cs->conf.tick_ms * 1000);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

int km_calls_start(struct km_daemon *d, struct km_conf *c)
{
        struct km_calls_conf conf;
        struct km_calls *cs;
        int rc = km_calls_conf_load(&conf, c);
        if (rc < 0) {
                km_calls_conf_release(&conf);
                return rc;
        }
        struct km_calls_io io = { .publish = d_publish, .emit = d_emit, .now = d_now, .dirty = d_dirty,
                                  .answered = d_answered };
        if ((rc = km_calls_new(&cs, d->spool, &conf, &io)) < 0) {
                km_calls_conf_release(&conf);
                return rc;
        }
        cs->io.ud = cs;
        cs->d = d;
        if ((rc = sd_event_add_defer(d->ev, &cs->flush, on_flush, cs)) < 0 ||
            (rc = sd_event_source_set_enabled(cs->flush, SD_EVENT_OFF)) < 0 ||
            (rc = sd_event_add_time_relative(d->ev, &cs->tick, CLOCK_MONOTONIC, (uint64_t)cs->conf.tick_ms * 1000,
                                             (uint64_t)cs->conf.tick_ms * 100, on_tick, cs)) < 0) {
                km_calls_free(cs);
                return rc;
        }
        d->calls = cs;
        return 0;
}
