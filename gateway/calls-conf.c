/* SPDX-License-Identifier: MIT */
/* Calls: the [calls], [calls level NAME] and [calls group NAME] sections, parsed, checked and documented from one table each. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "calls-internal.h"
#include "config.h"

/* Built-in per level: respond_within, repeat_every (escalate_after = respond_within). */
static const struct {
        const char *respond, *repeat;
} level_defaults[KM_CALL_LEVELS] = {
        { "30m", "10m" }, { "10m", "5m" }, { "5m", "2m" }, { "2m", "30s" },
};

struct top_conf {
        int64_t keep_closed_ms, tick_ms;
};
struct level_raw {
        int64_t respond_within_ms, repeat_every_ms, escalate_after_ms;
        char *escalate_to;
};
struct group_raw {
        struct km_strv units;
};

#define TOFF(f) offsetof(struct top_conf, f)
static const struct km_conf_key top_keys[] = {
        { "keep_closed", KM_CONF_DURATION, "7d", TOFF(keep_closed_ms), "closed calls stay this long for kuimenctl call show", 0, 0, NULL },
        { "tick", KM_CONF_DURATION, "200ms", TOFF(tick_ms), "how often repeats, deadlines and escalations are looked at", 10, 10000, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};
#define LOFF(f) offsetof(struct level_raw, f)
static const struct km_conf_key level_keys[] = {
        { "respond_within", KM_CONF_DURATION, NULL, LOFF(respond_within_ms), "a recipient not answered by then is overdue (0: never; default blue 30m, yellow 10m, orange 5m, red 2m)", 0, 0, NULL },
        { "repeat_every", KM_CONF_DURATION, NULL, LOFF(repeat_every_ms), "an unanswered recipient is called again this often (0: never; default blue 10m, yellow 5m, orange 2m, red 30s)", 0, 0, NULL },
        { "escalate_after", KM_CONF_DURATION, NULL, LOFF(escalate_after_ms), "each escalation step this long after the last, while someone has not answered or cannot (default: respond_within)", 0, 0, NULL },
        { "escalate_to", KM_CONF_STRING, NULL, LOFF(escalate_to), "the escalation chain: recipients (units or groups) a step, steps separated by '>' (\"leads > county-duty\")", 0, 0, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};
#define GOFF(f) offsetof(struct group_raw, f)
static const struct km_conf_key group_keys[] = {
        { "units", KM_CONF_LIST, NULL, GOFF(units), "the units of the group (unit ids, comma-separated)", 0, 0, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

/* "a, b > c": steps of names; 0 or -EINVAL with why. */
int km_calls_split_steps(const char *s, struct km_strv *steps, size_t *nsteps, const char **why)
{
        char buf[1024];
        *nsteps = 0;
        if (strlen(s) >= sizeof(buf)) {
                *why = "too long";
                return -EINVAL;
        }
        snprintf(buf, sizeof(buf), "%s", s);
        char *save = NULL;
        for (char *tok = strtok_r(buf, ">", &save); tok; tok = strtok_r(NULL, ">", &save)) {
                if (*nsteps == KM_CALLS_STEPS) {
                        *why = "more than 4 steps";
                        return -EINVAL;
                }
                struct km_strv *v = &steps[*nsteps];
                memset(v, 0, sizeof(*v));
                if (km_strv_split(v, tok) < 0)
                        return -ENOMEM;
                (*nsteps)++;
                if (!v->n) {
                        *why = "an empty step";
                        return -EINVAL;
                }
                for (size_t i = 0; i < v->n; i++)
                        if (!km_calls_name_ok(v->v[i], KM_CALLS_UNIT_MAX)) {
                                *why = "a name that is not a unit or group id (1 to 31 printable bytes, no blank, '/', '+', '#', '\"' or '\\')";
                                return -EINVAL;
                        }
        }
        if (!*nsteps) {
                *why = "no recipient";
                return -EINVAL;
        }
        return 0;
}

void km_calls_steps_free(struct km_strv *steps, size_t n)
{
        for (size_t i = 0; i < n; i++)
                km_strv_free(&steps[i]);
}

void km_calls_conf_release(struct km_calls_conf *conf)
{
        for (int l = 0; l < KM_CALL_LEVELS; l++)
                km_calls_steps_free(conf->level[l].steps, conf->level[l].nsteps);
        for (size_t i = 0; i < conf->ngroups; i++) {
                free(conf->groups[i].name);
                km_strv_free(&conf->groups[i].units);
        }
        free(conf->groups);
        memset(conf, 0, sizeof(*conf));
}

const struct km_calls_group *km_calls_find_group(const struct km_calls_conf *conf, const char *name)
{
        for (size_t i = 0; i < conf->ngroups; i++)
                if (strcmp(conf->groups[i].name, name) == 0)
                        return &conf->groups[i];
        return NULL;
}

int km_calls_conf_load(struct km_calls_conf *conf, struct km_conf *c)
{
        int bad = 0;
        struct top_conf top = { 0 };

        memset(conf, 0, sizeof(*conf));
        bad += km_conf_apply(c, "calls", top_keys, &top);
        conf->keep_closed_ms = top.keep_closed_ms;
        conf->tick_ms = top.tick_ms;
        for (int l = 0; l < KM_CALL_LEVELS; l++) {
                km_conf_parse_duration(level_defaults[l].respond, &conf->level[l].respond_within_ms);
                km_conf_parse_duration(level_defaults[l].repeat, &conf->level[l].repeat_every_ms);
                conf->level[l].escalate_after_ms = -1;
        }
        /* Groups first: a level's chain names them. */
        for (size_t i = 0; i < c->nsections; i++) {
                const char *s = c->sections[i];
                if (strncmp(s, "calls group ", 12) != 0)
                        continue;
                const char *name = s + 12;
                struct group_raw g = { 0 };
                bad += km_conf_apply(c, s, group_keys, &g);
                if (!km_calls_name_ok(name, KM_CALLS_UNIT_MAX)) {
                        km_conf_error(c, s, NULL, "'%s' is not a group name (1 to 31 printable bytes, no blank, '/', '+', '#', '\"' or '\\')", name);
                        bad++;
                } else if (!g.units.n) {
                        km_conf_error(c, s, "units", "a group needs units");
                        bad++;
                }
                for (size_t k = 0; k < g.units.n; k++)
                        if (!km_calls_name_ok(g.units.v[k], KM_CALLS_UNIT_MAX)) {
                                km_conf_error(c, s, "units", "'%s' is not a unit id (1 to 31 printable bytes, no blank, '/', '+', '#', '\"' or '\\')", g.units.v[k]);
                                bad++;
                        }
                struct km_calls_group *ng = realloc(conf->groups, (conf->ngroups + 1) * sizeof(*ng));
                if (!ng || !(name = strdup(name))) {
                        km_conf_release(group_keys, &g);
                        if (ng)
                                conf->groups = ng;
                        return -ENOMEM;
                }
                conf->groups = ng;
                ng[conf->ngroups++] = (struct km_calls_group){ .name = (char *)name, .units = g.units };
        }
        for (size_t i = 0; i < c->nsections; i++) {
                const char *s = c->sections[i];
                if (strcmp(s, "calls") == 0 || strncmp(s, "calls group ", 12) == 0)
                        continue;
                if (strncmp(s, "calls level ", 12) != 0) {
                        if (strncmp(s, "calls ", 6) == 0) {
                                km_conf_error(c, s, NULL, "unknown section [%s] (calls sections: [calls], [calls level blue|yellow|orange|red], [calls group NAME])", s);
                                bad++;
                        }
                        continue;
                }
                struct level_raw r = { 0 };
                bad += km_conf_apply(c, s, level_keys, &r);
                int l = level_of(s + 12);
                if (l < 0) {
                        km_conf_error(c, s, NULL, "'%s' is not a level (blue, yellow, orange or red)", s + 12);
                        km_conf_release(level_keys, &r);
                        bad++;
                        continue;
                }
                struct km_calls_level_conf *lc = &conf->level[l];
                if (km_conf_get(c, s, "respond_within"))
                        lc->respond_within_ms = r.respond_within_ms;
                if (km_conf_get(c, s, "repeat_every"))
                        lc->repeat_every_ms = r.repeat_every_ms;
                if (km_conf_get(c, s, "escalate_after"))
                        lc->escalate_after_ms = r.escalate_after_ms;
                if (r.escalate_to) {
                        const char *why = NULL;
                        int rc = km_calls_split_steps(r.escalate_to, lc->steps, &lc->nsteps, &why);
                        if (rc == -ENOMEM) {
                                km_conf_release(level_keys, &r);
                                return rc;
                        }
                        if (rc < 0) {
                                km_conf_error(c, s, "escalate_to", "'%s': %s", r.escalate_to, why);
                                bad++;
                        }
                }
                if (lc->nsteps && lc->escalate_after_ms == 0 && lc->respond_within_ms == 0) {
                        km_conf_error(c, s, "escalate_after", "an escalation chain needs escalate_after or respond_within above 0");
                        bad++;
                }
                km_conf_release(level_keys, &r);
        }
        for (int l = 0; l < KM_CALL_LEVELS; l++)
                if (conf->level[l].escalate_after_ms < 0)
                        conf->level[l].escalate_after_ms = conf->level[l].respond_within_ms;
        return bad ? -EINVAL : 0;
}

int km_calls_check(struct km_conf *c)
{
        struct km_calls_conf conf;
        int rc = km_calls_conf_load(&conf, c);
        km_calls_conf_release(&conf);
        return rc;
}

void km_calls_print_help(FILE *out)
{
        km_conf_print_help(out, "calls", top_keys);
        km_conf_print_help(out, "calls level blue|yellow|orange|red", level_keys);
        km_conf_print_help(out, "calls group NAME", group_keys);
}
