/* SPDX-License-Identifier: MIT */
/* Calls: kuimenctl's requests on the control socket (call JSON, call close ID, call show [ID]) and their JSON replies. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "calls-internal.h"
#include "control.h"

static void reply_err(struct km_control_buf *b, const char *why)
{
        km_control_printf(b, "{\"error\":");
        km_control_json_str(b, why);
        km_control_printf(b, "}\n");
}

static void time_str(int64_t ms, char *out, size_t n)
{
        if (!ms) {
                snprintf(out, n, "null");
                return;
        }
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        size_t k = strftime(out, n, "\"%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(out + k, n - k, ".%03dZ\"", (int)(ms % 1000));
}

static void call_json(struct km_control_buf *b, const struct call *c, bool full)
{
        char t1[40], t2[40], t3[40];
        size_t ans = 0, pend = 0;
        for (size_t i = 0; i < c->nr; i++) {
                ans += answered(c->r[i].state);
                pend += !answered(c->r[i].state);
        }
        time_str(c->created_ms, t1, sizeof(t1));
        time_str(c->closed_ms, t2, sizeof(t2));
        km_control_printf(b, "{\"id\":");
        km_control_json_str(b, c->id);
        km_control_printf(b, ",\"level\":\"%s\",\"state\":\"%s\",\"from\":\"%s\",\"created\":%s,\"closed\":%s,"
                             "\"respond_within\":%lld,\"repeat_every\":%lld,\"escalate_after\":%lld,\"escalations\":%d,"
                             "\"recipients_n\":%zu,\"answered_n\":%zu,\"unanswered_n\":%zu,\"text\":",
                          level_names[c->level], cstate_names[c->state], c->local ? "local" : "center", t1, t2,
                          (long long)(c->respond_ms / 1000), (long long)(c->repeat_ms / 1000),
                          (long long)(c->esc_after_ms / 1000), c->esc_done, c->nr, ans, pend);
        km_control_json_str(b, c->text);
        if (full) {
                km_control_printf(b, ",\"recipients\":[");
                for (size_t i = 0; i < c->nr; i++) {
                        const struct rcpt *r = &c->r[i];
                        time_str(r->sent_ms, t1, sizeof(t1));
                        time_str(r->delivered_ms, t2, sizeof(t2));
                        time_str(r->answered_ms, t3, sizeof(t3));
                        km_control_printf(b, "%s{\"unit\":", i ? "," : "");
                        km_control_json_str(b, r->unit);
                        km_control_printf(b, ",\"state\":\"%s\",\"step\":%d,\"sends\":%u,\"last_sent\":%s,\"delivered\":%s,"
                                             "\"answered\":%s,\"answer\":",
                                          rstate_names[r->state], r->step, r->sends, t1, t2, t3);
                        if (r->answer)
                                km_control_json_str(b, r->answer);
                        else
                                km_control_printf(b, "null");
                        km_control_printf(b, "}");
                }
                km_control_printf(b, "]");
        }
        km_control_printf(b, "}");
}

void km_calls_control(struct km_calls *cs, const char *args, struct km_control_buf *out)
{
        char err[256] = "";
        args += strspn(args, " \t");
        size_t n = strcspn(args, "\r\n");
        if (!cs) {
                reply_err(out, "calls run on a base only");
                return;
        }
        if (*args == '{') {
                int rc = km_calls_do_command(cs, args, n, true, err, sizeof(err));
                if (rc == -EINVAL)
                        km_calls_bad(cs, &cs->st.bad_commands, "call refused: %s", err);
                if (rc < 0)
                        reply_err(out, rc == -EINVAL ? err : strerror(-rc));
                else
                        km_control_printf(out, "{\"call\":\"raised\"}\n");
                return;
        }
        size_t vl = strcspn(args, " \t\r\n");
        const char *arg = args + vl + strspn(args + vl, " \t");
        char id[KM_CALLS_ID_MAX + 2] = "";
        size_t il = strcspn(arg, " \t\r\n");
        if (il < sizeof(id))
                memcpy(id, arg, il), id[il] = '\0';
        if (vl == 5 && strncmp(args, "close", 5) == 0) {
                struct call *c = *id ? km_calls_find(cs, id) : NULL;
                if (!c) {
                        reply_err(out, "no such call (kuimenctl call show)");
                        return;
                }
                if (c->state != C_CLOSED)
                        km_calls_close(cs, c, cs->io.now(cs->io.ud));
                int rc = km_calls_flush(cs, true);
                if (rc < 0)
                        reply_err(out, strerror(-rc));
                else
                        km_control_printf(out, "{\"call\":\"closed\"}\n");
                return;
        }
        if (vl == 4 && strncmp(args, "show", 4) == 0) {
                if (*id) {
                        struct call *c = km_calls_find(cs, id);
                        if (!c) {
                                reply_err(out, "no such call (kuimenctl call show)");
                                return;
                        }
                        km_control_printf(out, "{\"call\":");
                        call_json(out, c, true);
                        km_control_printf(out, "}\n");
                        return;
                }
                km_control_printf(out, "{\"calls\":[");
                for (size_t i = 0; i < cs->n; i++) {
                        if (i)
                                km_control_printf(out, ",");
                        call_json(out, cs->c[i], false);
                }
                km_control_printf(out, "],\"open\":%zu,\"changes\":%llu,\"answers\":%llu,\"repeats\":%llu,"
                                       "\"escalations\":%llu,\"bad_commands\":%llu,\"bad_answers\":%llu}\n",
                                  km_calls_open_n(cs), (unsigned long long)cs->st.changes, (unsigned long long)cs->st.answers,
                                  (unsigned long long)cs->st.repeats, (unsigned long long)cs->st.escalations,
                                  (unsigned long long)cs->st.bad_commands, (unsigned long long)cs->st.bad_answers);
                return;
        }
        reply_err(out, "unknown call request (call JSON, call show [ID], call close ID)");
}
