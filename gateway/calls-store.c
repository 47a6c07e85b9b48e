/* SPDX-License-Identifier: MIT */
/* Calls: their two tables (calls, call_rcpt) in the spool's SQLite file: written, read back at start, the engine made and freed. */
#include <errno.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>

#include "calls-internal.h"
#include "log.h"
#include "spool.h"

static const char schema[] =
        "CREATE TABLE IF NOT EXISTS calls(id TEXT PRIMARY KEY, level INTEGER NOT NULL, state INTEGER NOT NULL,"
        " esc_done INTEGER NOT NULL, local INTEGER NOT NULL, text TEXT NOT NULL, created INTEGER NOT NULL,"
        " closed INTEGER NOT NULL, respond INTEGER NOT NULL, rep INTEGER NOT NULL, esc_after INTEGER NOT NULL,"
        " steps TEXT NOT NULL);"
        "CREATE TABLE IF NOT EXISTS call_rcpt(call TEXT NOT NULL, ord INTEGER NOT NULL, unit TEXT NOT NULL,"
        " state INTEGER NOT NULL, step INTEGER NOT NULL, sends INTEGER NOT NULL, first INTEGER NOT NULL,"
        " sent INTEGER NOT NULL, delivered INTEGER NOT NULL, answered INTEGER NOT NULL, spool_id INTEGER NOT NULL,"
        " answer TEXT, PRIMARY KEY(call, ord));";

/* steps as text: "a,b>c". */
static char *steps_text(const struct call *c)
{
        size_t len = 1;
        for (size_t s = 0; s < c->nsteps; s++)
                for (size_t i = 0; i < c->steps[s].n; i++)
                        len += strlen(c->steps[s].v[i]) + 1;
        char *t = malloc(len), *p = t;
        if (!t)
                return NULL;
        *p = '\0';
        for (size_t s = 0; s < c->nsteps; s++) {
                if (s)
                        *p++ = '>';
                for (size_t i = 0; i < c->steps[s].n; i++)
                        p += sprintf(p, "%s%s", i ? "," : "", c->steps[s].v[i]);
        }
        return t;
}

static int write_call(struct km_calls *cs, struct call *c)
{
        sqlite3_stmt *s = cs->put_call;
        char *st = steps_text(c);
        if (!st)
                return -ENOMEM;
        sqlite3_bind_text(s, 1, c->id, -1, SQLITE_STATIC);
        sqlite3_bind_int(s, 2, c->level);
        sqlite3_bind_int(s, 3, c->state);
        sqlite3_bind_int(s, 4, c->esc_done);
        sqlite3_bind_int(s, 5, c->local);
        sqlite3_bind_text(s, 6, c->text, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 7, c->created_ms);
        sqlite3_bind_int64(s, 8, c->closed_ms);
        sqlite3_bind_int64(s, 9, c->respond_ms);
        sqlite3_bind_int64(s, 10, c->repeat_ms);
        sqlite3_bind_int64(s, 11, c->esc_after_ms);
        sqlite3_bind_text(s, 12, st, -1, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        free(st);
        if (rc != SQLITE_DONE)
                return -EIO;
        for (size_t i = 0; i < c->nr; i++) {
                const struct rcpt *r = &c->r[i];
                s = cs->put_rcpt;
                sqlite3_bind_text(s, 1, c->id, -1, SQLITE_STATIC);
                sqlite3_bind_int64(s, 2, (int64_t)i);
                sqlite3_bind_text(s, 3, r->unit, -1, SQLITE_STATIC);
                sqlite3_bind_int(s, 4, r->state);
                sqlite3_bind_int(s, 5, r->step);
                sqlite3_bind_int64(s, 6, r->sends);
                sqlite3_bind_int64(s, 7, r->first_ms);
                sqlite3_bind_int64(s, 8, r->sent_ms);
                sqlite3_bind_int64(s, 9, r->delivered_ms);
                sqlite3_bind_int64(s, 10, r->answered_ms);
                sqlite3_bind_int64(s, 11, (int64_t)r->spool_id);
                if (r->answer)
                        sqlite3_bind_text(s, 12, r->answer, -1, SQLITE_STATIC);
                else
                        sqlite3_bind_null(s, 12);
                rc = sqlite3_step(s);
                sqlite3_reset(s);
                sqlite3_clear_bindings(s);
                if (rc != SQLITE_DONE)
                        return -EIO;
        }
        return 0;
}

int km_calls_delete(struct km_calls *cs, const char *id)
{
        int ok = 1;
        sqlite3_stmt *d[2] = { cs->del_rcpt, cs->del_call };
        for (int i = 0; i < 2; i++) {
                sqlite3_bind_text(d[i], 1, id, -1, SQLITE_STATIC);
                ok &= sqlite3_step(d[i]) == SQLITE_DONE;
                sqlite3_reset(d[i]);
        }
        return ok ? 0 : -EIO;
}

int km_calls_flush(struct km_calls *cs, bool full)
{
        bool any = false;
        for (size_t i = 0; i < cs->n && !any; i++)
                any = cs->c[i]->dirty;
        if (!any)
                return 0;
        /* A FULL commit vouches for an acknowledgement: the changes it says were sent
         * upstream must be on the device first, or a power cut in sync = batch keeps
         * the answer and loses its change (the power-cut drill's call). */
        int rc = full ? km_spool_sync(cs->sp) : 0;
        if (rc == 0)
                rc = km_spool_tx_begin(cs->sp, full);
        if (rc < 0)
                return rc;
        for (size_t i = 0; i < cs->n && rc == 0; i++)
                if (cs->c[i]->dirty)
                        rc = write_call(cs, cs->c[i]);
        if (rc < 0)
                KM_LOG(KM_LOG_ERR, "calls", "writing calls: %s", sqlite3_errmsg(cs->db));
        rc = km_spool_tx_end(cs->sp, full, rc == 0, "writing calls");
        if (rc == 0)
                for (size_t i = 0; i < cs->n; i++)
                        cs->c[i]->dirty = false;
        return rc;
}

static int load(struct km_calls *cs)
{
        sqlite3_stmt *s = NULL, *r = NULL;
        int rc = -EIO;
        if (sqlite3_prepare_v2(cs->db,
                               "SELECT id,level,state,esc_done,local,text,created,closed,respond,rep,esc_after,steps"
                               " FROM calls ORDER BY created, id", -1, &s, NULL) != SQLITE_OK ||
            sqlite3_prepare_v2(cs->db,
                               "SELECT unit,state,step,sends,first,sent,delivered,answered,spool_id,answer"
                               " FROM call_rcpt WHERE call=? ORDER BY ord", -1, &r, NULL) != SQLITE_OK)
                goto out;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
                struct call *c = calloc(1, sizeof(*c));
                const char *steps = (const char *)sqlite3_column_text(s, 11);
                if (!c)
                        goto nomem;
                snprintf(c->id, sizeof(c->id), "%s", (const char *)sqlite3_column_text(s, 0));
                c->level = (uint8_t)sqlite3_column_int(s, 1);
                c->state = (uint8_t)sqlite3_column_int(s, 2);
                c->esc_done = (uint8_t)sqlite3_column_int(s, 3);
                c->local = sqlite3_column_int(s, 4) != 0;
                c->text = strdup((const char *)sqlite3_column_text(s, 5));
                c->created_ms = sqlite3_column_int64(s, 6);
                c->closed_ms = sqlite3_column_int64(s, 7);
                c->respond_ms = sqlite3_column_int64(s, 8);
                c->repeat_ms = sqlite3_column_int64(s, 9);
                c->esc_after_ms = sqlite3_column_int64(s, 10);
                const char *why;
                if (steps && *steps && km_calls_split_steps(steps, c->steps, &c->nsteps, &why) < 0)
                        c->nsteps = 0;
                if (c->level >= KM_CALL_LEVELS || c->state >= C_N || !c->text) {
                        km_calls_call_free(c);
                        continue;
                }
                sqlite3_bind_text(r, 1, c->id, -1, SQLITE_STATIC);
                while (sqlite3_step(r) == SQLITE_ROW) {
                        struct rcpt *nr = realloc(c->r, (c->nr + 1) * sizeof(*nr));
                        if (!nr) {
                                km_calls_call_free(c);
                                goto nomem;
                        }
                        c->r = nr;
                        struct rcpt *x = &nr[c->nr++];
                        memset(x, 0, sizeof(*x));
                        snprintf(x->unit, sizeof(x->unit), "%s", (const char *)sqlite3_column_text(r, 0));
                        x->state = (uint8_t)sqlite3_column_int(r, 1);
                        if (x->state >= R_N)
                                x->state = R_PENDING;
                        x->step = (uint8_t)sqlite3_column_int(r, 2);
                        x->sends = (uint32_t)sqlite3_column_int64(r, 3);
                        x->first_ms = sqlite3_column_int64(r, 4);
                        x->sent_ms = sqlite3_column_int64(r, 5);
                        x->delivered_ms = sqlite3_column_int64(r, 6);
                        x->answered_ms = sqlite3_column_int64(r, 7);
                        x->spool_id = (uint64_t)sqlite3_column_int64(r, 8);
                        if (sqlite3_column_type(r, 9) != SQLITE_NULL)
                                x->answer = strdup((const char *)sqlite3_column_text(r, 9));
                        /* Acknowledged before the kill, its write lost: no copy is on
                         * its way any more, and repeats may go on. */
                        if (x->spool_id && !km_spool_holds(cs->sp, x->spool_id))
                                x->spool_id = 0;
                }
                sqlite3_reset(r);
                if (cs->n == cs->cap) {
                        size_t cap = cs->cap ? cs->cap * 2 : 16;
                        struct call **nc = realloc(cs->c, cap * sizeof(*nc));
                        if (!nc) {
                                km_calls_call_free(c);
                                goto nomem;
                        }
                        cs->c = nc;
                        cs->cap = cap;
                }
                cs->c[cs->n++] = c;
        }
        rc = rc == SQLITE_DONE ? 0 : -EIO;
        goto out;
nomem:
        rc = -ENOMEM;
out:
        sqlite3_finalize(s);
        sqlite3_finalize(r);
        return rc;
}

int km_calls_new(struct km_calls **out, struct km_spool *sp, struct km_calls_conf *conf, const struct km_calls_io *io)
{
        struct km_calls *cs = calloc(1, sizeof(*cs));
        int rc = -EIO;
        if (!cs)
                return -ENOMEM;
        cs->conf = *conf;
        memset(conf, 0, sizeof(*conf));
        cs->io = *io;
        cs->sp = sp;
        cs->db = km_spool_sqlite(sp);
        if (sqlite3_exec(cs->db, schema, NULL, NULL, NULL) != SQLITE_OK) {
                KM_LOG(KM_LOG_ERR, "calls", "creating the call tables: %s", sqlite3_errmsg(cs->db));
                goto fail;
        }
        if (sqlite3_prepare_v3(cs->db,
                               "INSERT OR REPLACE INTO calls(id,level,state,esc_done,local,text,created,closed,respond,rep,"
                               "esc_after,steps) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)", -1, SQLITE_PREPARE_PERSISTENT,
                               &cs->put_call, NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(cs->db,
                               "INSERT OR REPLACE INTO call_rcpt(call,ord,unit,state,step,sends,first,sent,delivered,"
                               "answered,spool_id,answer) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)", -1,
                               SQLITE_PREPARE_PERSISTENT, &cs->put_rcpt, NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(cs->db, "DELETE FROM calls WHERE id=?", -1, SQLITE_PREPARE_PERSISTENT, &cs->del_call,
                               NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(cs->db, "DELETE FROM call_rcpt WHERE call=?", -1, SQLITE_PREPARE_PERSISTENT,
                               &cs->del_rcpt, NULL) != SQLITE_OK) {
                KM_LOG(KM_LOG_ERR, "calls", "preparing statements: %s", sqlite3_errmsg(cs->db));
                goto fail;
        }
        if ((rc = load(cs)) < 0) {
                KM_LOG(KM_LOG_ERR, "calls", "reading the calls: %s", rc == -ENOMEM ? "out of memory" : sqlite3_errmsg(cs->db));
                goto fail;
        }
        cs->st.calls = cs->n;
        cs->st.open = km_calls_open_n(cs);
        if (cs->st.open)
                KM_LOG(KM_LOG_NOTICE, "calls", "%zu open calls resumed (kuimenctl call show)", (size_t)cs->st.open);
        *out = cs;
        return 0;
fail:
        km_calls_free(cs);
        return rc;
}

void km_calls_free(struct km_calls *cs)
{
        if (!cs)
                return;
        if (cs->db)
                km_calls_flush(cs, true);
        sd_event_source_disable_unref(cs->tick);
        sd_event_source_disable_unref(cs->flush);
        sqlite3_finalize(cs->put_call);
        sqlite3_finalize(cs->put_rcpt);
        sqlite3_finalize(cs->del_call);
        sqlite3_finalize(cs->del_rcpt);
        for (size_t i = 0; i < cs->n; i++)
                km_calls_call_free(cs->c[i]);
        if (cs->nheld)
                KM_LOG(KM_LOG_ERR, "calls", "%zu state changes held back (the spool refused them) not sent", cs->nheld);
        for (size_t i = 0; i < cs->nheld; i++) {
                free(cs->held[i].topic);
                free(cs->held[i].payload);
        }
        free(cs->held);
        free(cs->c);
        km_calls_conf_release(&cs->conf);
        free(cs);
}
