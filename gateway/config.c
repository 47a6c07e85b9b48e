/* SPDX-License-Identifier: MIT */
/* Config engine: inih reads lines, key tables parse, validate and document them. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

/* inih's handler gets no line number in Debian's build (INI_HANDLER_LINENO is 0), so the
 * reader counts the lines it hands to inih: inih calls it once per physical line. */
struct reader {
        FILE *f;
        const char *text;
        int line;
        struct km_conf *c;
};

static char *read_line(char *str, int num, void *stream)
{
        struct reader *r = stream;

        if (r->f) {
                if (!fgets(str, num, r->f))
                        return NULL;
        } else {
                if (!*r->text)
                        return NULL;
                size_t n = strcspn(r->text, "\n");
                if (n + 1 < (size_t)num && r->text[n] == '\n')
                        n++;
                if (n > (size_t)num - 1)
                        n = (size_t)num - 1;
                memcpy(str, r->text, n);
                str[n] = '\0';
                r->text += n;
        }
        r->line++;
        return str;
}

static int push_error(struct km_conf *c, char *msg)
{
        char **n = realloc(c->errors, (c->nerrors + 1) * sizeof(*n));
        if (!n) {
                free(msg);
                return -ENOMEM;
        }
        c->errors = n;
        c->errors[c->nerrors++] = msg;
        return 0;
}

static void add_error(struct km_conf *c, int line, const char *key, const char *fmt, va_list ap)
{
        char why[512], *msg;

        vsnprintf(why, sizeof(why), fmt, ap);
        if (asprintf(&msg, "%s:%d: %s: %s", c->file, line, key ? key : "-", why) >= 0)
                push_error(c, msg);
}

static void errorf(struct km_conf *c, int line, const char *key, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        add_error(c, line, key, fmt, ap);
        va_end(ap);
}

static int note_section(struct km_conf *c, const char *section)
{
        for (size_t i = 0; i < c->nsections; i++)
                if (strcmp(c->sections[i], section) == 0)
                        return 0;
        char **n = realloc(c->sections, (c->nsections + 1) * sizeof(*n));
        if (!n)
                return -ENOMEM;
        c->sections = n;
        if (!(c->sections[c->nsections] = strdup(section)))
                return -ENOMEM;
        c->nsections++;
        return 0;
}

static int on_entry(void *user, const char *section, const char *key, const char *value)
{
        struct reader *r = user;
        struct km_conf *c = r->c;

        if (!*section) {
                errorf(c, r->line, key, "key outside any [section]");
                return 1;
        }
        for (size_t i = 0; i < c->n; i++)
                if (strcmp(c->e[i].section, section) == 0 && strcmp(c->e[i].key, key) == 0) {
                        errorf(c, r->line, key, "given twice in [%s] (first at line %d)", section,
                               c->e[i].line);
                        return 1;
                }
        if (c->n == c->cap) {
                size_t cap = c->cap ? c->cap * 2 : 32;
                struct km_conf_entry *e = realloc(c->e, cap * sizeof(*e));
                if (!e)
                        return 0;
                c->e = e;
                c->cap = cap;
        }
        struct km_conf_entry *e = &c->e[c->n];
        e->section = strdup(section);
        e->key = strdup(key);
        e->value = strdup(value);
        e->line = r->line;
        e->used = false;
        if (!e->section || !e->key || !e->value || note_section(c, section) < 0) {
                free(e->section);
                free(e->key);
                free(e->value);
                return 0;
        }
        c->n++;
        return 1;
}

/*
 * Secrets out of the config file (issue 12): in any section, `password_file = PATH`
 * (relative to the config's directory; a regular file of mode 0640 or stricter, not
 * writable by others) or `password_credential = NAME` (systemd's LoadCredential=
 * or SetCredentialEncrypted=: $CREDENTIALS_DIRECTORY/NAME) stands for `password =`
 * the file's first line. The loader resolves it here, so every section's table sees a
 * plain `password` and nothing else changes; the secret never sits in a file that
 * must be readable by whoever reads the config. Both, or either with `password`, in
 * one section is an error.
 */
static void password_indirect(struct km_conf *c)
{
        for (size_t i = 0; i < c->n; i++) {
                struct km_conf_entry *e = &c->e[i];
                bool file = strcmp(e->key, "password_file") == 0, cred = strcmp(e->key, "password_credential") == 0;
                if (!file && !cred)
                        continue;
                for (size_t j = 0; j < c->n; j++)
                        if (j != i && strcmp(c->e[j].section, e->section) == 0 &&
                            (strcmp(c->e[j].key, "password") == 0 || strcmp(c->e[j].key, "password_file") == 0 ||
                             strcmp(c->e[j].key, "password_credential") == 0)) {
                                if (j > i || strcmp(c->e[j].key, "password") == 0)
                                        errorf(c, c->e[j].line, c->e[j].key, "[%s] has %s too (line %d): give one",
                                               e->section, e->key, e->line);
                                goto next;
                        }
                char *path = NULL;
                const char *slash = strrchr(c->file, '/'), *creds = getenv("CREDENTIALS_DIRECTORY");
                int n;
                if (cred && (!creds || !*creds || strchr(e->value, '/'))) {
                        errorf(c, e->line, e->key, "%s", !creds || !*creds ? "no $CREDENTIALS_DIRECTORY (not started by systemd with LoadCredential=?)"
                                                                          : "a credential name has no '/'");
                        continue;
                }
                if (cred)
                        n = asprintf(&path, "%s/%s", creds, e->value);
                else if (e->value[0] != '/' && slash)
                        n = asprintf(&path, "%.*s/%s", (int)(slash - c->file), c->file, e->value);
                else
                        n = asprintf(&path, "%s", e->value);
                if (n < 0)
                        continue;
                struct stat st;
                FILE *f = fopen(path, "re");
                char line[1024];
                if (!f || fstat(fileno(f), &st) < 0) {
                        errorf(c, e->line, e->key, "%s: %s", path, strerror(errno));
                } else if (!S_ISREG(st.st_mode)) {
                        errorf(c, e->line, e->key, "%s: not a regular file", path);
                } else if (file && (st.st_mode & 027)) {
                        errorf(c, e->line, e->key, "%s: mode %04o: others may read or anyone but the owner may write it: chmod 600 (or 640 for group kuimen)",
                               path, (unsigned)(st.st_mode & 07777));
                } else if (!fgets(line, sizeof(line), f)) {
                        errorf(c, e->line, e->key, "%s: empty", path);
                } else {
                        line[strcspn(line, "\r\n")] = '\0';
                        char *v = strdup(line), *k = strdup("password");
                        if (v && k) {
                                free(e->key);
                                explicit_bzero(e->value, strlen(e->value));
                                free(e->value);
                                e->key = k;
                                e->value = v;
                        } else {
                                free(v);
                                free(k);
                        }
                        explicit_bzero(line, sizeof(line));
                }
                if (f)
                        fclose(f);
                free(path);
        next:;
        }
}

/* A broker password in a file others can read is a password anyone on the box has
 * (issue 12): said at every load, naming the file and its mode. Not refused: a
 * config installed root:kuimen 0640 is common, and refusing would stop a gateway that
 * ran yesterday; the narrow links' key files, new, are refused (gateway/auth.c). */
static void password_check(const struct km_conf *c, const char *text)
{
        struct stat st;
        if (text || !c->file || stat(c->file, &st) < 0 || !(st.st_mode & 077))
                return;
        for (size_t i = 0; i < c->n; i++)
                if (strcmp(c->e[i].key, "password") == 0) {
                        KM_LOG(st.st_mode & 004 ? KM_LOG_WARNING : KM_LOG_NOTICE, "config",
                               "%s:%d: [%s] password in a file of mode %04o that %s can read: chmod 600 (or 640 with group kuimen only)",
                               c->file, c->e[i].line, c->e[i].section, (unsigned)(st.st_mode & 07777),
                               st.st_mode & 004 ? "every user" : "its group");
                        return;
                }
}

int km_conf_load(struct km_conf *c, const char *path, const char *text)
{
        struct reader r = { .text = text, .c = c };
        int rc;

        memset(c, 0, sizeof(*c));
        if (!(c->file = strdup(path)))
                return -ENOMEM;
        if (!text && !(r.f = fopen(path, "re")))
                return -errno;
        rc = ini_parse_stream(read_line, &r, on_entry, &r);
        if (r.f)
                fclose(r.f);
        if (rc > 0)
                errorf(c, rc, NULL, "syntax error (expected [section], key = value or comment)");
        else if (rc < 0)
                return -ENOMEM;
        password_check(c, text);
        if (!text)
                password_indirect(c);
        return 0;
}

void km_conf_deinit(struct km_conf *c)
{
        for (size_t i = 0; i < c->n; i++) {
                free(c->e[i].section);
                free(c->e[i].key);
                free(c->e[i].value);
        }
        for (size_t i = 0; i < c->nsections; i++)
                free(c->sections[i]);
        for (size_t i = 0; i < c->nerrors; i++)
                free(c->errors[i]);
        free(c->e);
        free(c->sections);
        free(c->errors);
        free(c->file);
        memset(c, 0, sizeof(*c));
}

int km_conf_parse_duration(const char *s, int64_t *ms)
{
        static const struct {
                const char *unit;
                double ms;
        } units[] = { { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 }, { "", 1000 } };
        char *end;

        errno = 0;
        double v = strtod(s, &end);
        if (end == s || errno || !isfinite(v) || v < 0)
                return -EINVAL;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
                if (strcmp(end, units[i].unit) == 0) {
                        double r = v * units[i].ms;
                        if (r > 9.2e15)
                                return -ERANGE;
                        *ms = (int64_t)llround(r);
                        return 0;
                }
        return -EINVAL;
}

int km_strv_split(struct km_strv *v, const char *s)
{
        const char *p = s;

        v->v = NULL;
        v->n = 0;
        while (*p) {
                size_t len = strcspn(p, ",");
                const char *b = p, *e = p + len;
                while (b < e && isspace((unsigned char)*b))
                        b++;
                while (e > b && isspace((unsigned char)e[-1]))
                        e--;
                if (e > b) {
                        char **n = realloc(v->v, (v->n + 2) * sizeof(*n));
                        if (!n || !(n[v->n] = strndup(b, (size_t)(e - b)))) {
                                v->v = n ? n : v->v;
                                km_strv_free(v);
                                return -ENOMEM;
                        }
                        v->v = n;
                        v->v[++v->n] = NULL;
                }
                p += len;
                if (*p == ',')
                        p++;
        }
        return 0;
}

void km_strv_free(struct km_strv *v)
{
        for (size_t i = 0; i < v->n; i++)
                free(v->v[i]);
        free(v->v);
        v->v = NULL;
        v->n = 0;
}

static bool in_range(const struct km_conf_key *k, double v)
{
        return k->min == k->max || (v >= k->min && v <= k->max);
}

/* Parses one value into its slot; returns NULL or a static reason. */
static const char *parse_value(const struct km_conf_key *k, const char *val, void *slot, char *buf,
                               size_t blen)
{
        char *end;

        switch (k->type) {
        case KM_CONF_STRING: {
                if (k->choices) {
                        size_t i;
                        for (i = 0; k->choices[i]; i++)
                                if (strcmp(k->choices[i], val) == 0)
                                        break;
                        if (!k->choices[i]) {
                                size_t o = (size_t)snprintf(buf, blen, "'%s' is not one of:", val);
                                for (i = 0; k->choices[i] && o < blen; i++)
                                        o += (size_t)snprintf(buf + o, blen - o, " %s", k->choices[i]);
                                return buf;
                        }
                }
                char **p = slot;
                free(*p);
                *p = strdup(val);
                return *p ? NULL : "out of memory";
        }
        case KM_CONF_INT: {
                errno = 0;
                long v = strtol(val, &end, 10);
                if (end == val || *end || errno)
                        return "not a whole number";
                if (!in_range(k, (double)v)) {
                        snprintf(buf, blen, "%ld is out of range %.0f..%.0f", v, k->min, k->max);
                        return buf;
                }
                *(long *)slot = v;
                return NULL;
        }
        case KM_CONF_DOUBLE: {
                errno = 0;
                double v = strtod(val, &end);
                if (end == val || *end || errno || !isfinite(v))
                        return "not a number";
                if (!in_range(k, v)) {
                        snprintf(buf, blen, "%g is out of range %g..%g", v, k->min, k->max);
                        return buf;
                }
                *(double *)slot = v;
                return NULL;
        }
        case KM_CONF_BOOL: {
                static const char *const yes[] = { "yes", "true", "on", "1" }, *const no[] = { "no", "false", "off", "0" };
                for (int i = 0; i < 4; i++) {
                        if (strcasecmp(val, yes[i]) == 0)
                                return *(bool *)slot = true, NULL;
                        if (strcasecmp(val, no[i]) == 0)
                                return *(bool *)slot = false, NULL;
                }
                return "not a boolean (yes/no)";
        }
        case KM_CONF_DURATION: {
                int64_t ms;
                if (km_conf_parse_duration(val, &ms) < 0)
                        return "not a duration (e.g. 50ms, 10s, 5m, 2h, 7d)";
                if (!in_range(k, (double)ms)) {
                        snprintf(buf, blen, "%s is out of range %.0fms..%.0fms", val, k->min, k->max);
                        return buf;
                }
                *(int64_t *)slot = ms;
                return NULL;
        }
        case KM_CONF_LIST: {
                struct km_strv *v = slot;
                km_strv_free(v);
                return km_strv_split(v, val) < 0 ? "out of memory" : NULL;
        }
        }
        return "unknown type";
}

int km_conf_apply(struct km_conf *c, const char *section, const struct km_conf_key *table, void *dst)
{
        size_t before = c->nerrors;
        char buf[256];

        for (const struct km_conf_key *k = table; k->name; k++) {
                void *slot = (char *)dst + k->offset;
                if (k->def) {
                        const char *why = parse_value(k, k->def, slot, buf, sizeof(buf));
                        if (why)
                                errorf(c, 0, k->name, "built-in default: %s", why);
                }
        }
        for (size_t i = 0; i < c->n; i++) {
                struct km_conf_entry *e = &c->e[i];
                if (strcmp(e->section, section) != 0)
                        continue;
                for (const struct km_conf_key *k = table; k->name; k++) {
                        if (strcmp(k->name, e->key) != 0)
                                continue;
                        e->used = true;
                        const char *why = parse_value(k, e->value, (char *)dst + k->offset, buf, sizeof(buf));
                        if (why)
                                errorf(c, e->line, e->key, "%s", why);
                        break;
                }
        }
        return (int)(c->nerrors - before);
}

void km_conf_release(const struct km_conf_key *table, void *dst)
{
        for (const struct km_conf_key *k = table; k->name; k++) {
                void *slot = (char *)dst + k->offset;
                if (k->type == KM_CONF_STRING) {
                        free(*(char **)slot);
                        *(char **)slot = NULL;
                } else if (k->type == KM_CONF_LIST) {
                        km_strv_free(slot);
                }
        }
}

void km_conf_check_unused(struct km_conf *c)
{
        for (size_t i = 0; i < c->n; i++)
                if (!c->e[i].used)
                        errorf(c, c->e[i].line, c->e[i].key, "unknown key in [%s]", c->e[i].section);
}

void km_conf_error(struct km_conf *c, const char *section, const char *key, const char *fmt, ...)
{
        int line = 0;
        va_list ap;

        for (size_t i = 0; i < c->n; i++)
                if (strcmp(c->e[i].section, section) == 0 && (!key || strcmp(c->e[i].key, key) == 0)) {
                        line = c->e[i].line;
                        if (key)
                                break;
                }
        va_start(ap, fmt);
        add_error(c, line, key, fmt, ap);
        va_end(ap);
}

bool km_conf_has_section(const struct km_conf *c, const char *section)
{
        for (size_t i = 0; i < c->nsections; i++)
                if (strcmp(c->sections[i], section) == 0)
                        return true;
        return false;
}

const char *km_conf_get(struct km_conf *c, const char *section, const char *key)
{
        for (size_t i = 0; i < c->n; i++)
                if (strcmp(c->e[i].section, section) == 0 && strcmp(c->e[i].key, key) == 0) {
                        c->e[i].used = true;
                        return c->e[i].value;
                }
        return NULL;
}

void km_conf_print_help(FILE *out, const char *section, const struct km_conf_key *table)
{
        static const char *const tn[] = { "string", "integer", "boolean", "number", "duration", "list" };

        fprintf(out, "[%s]\n", section);
        for (const struct km_conf_key *k = table; k->name; k++) {
                fprintf(out, "  %-16s %-8s %s", k->name, tn[k->type], k->help);
                if (k->choices) {
                        fputs(" (one of:", out);
                        for (size_t i = 0; k->choices[i]; i++)
                                fprintf(out, " %s", k->choices[i]);
                        fputc(')', out);
                }
                fprintf(out, " [default: %s]\n", k->def ? k->def : "none");
        }
        fputc('\n', out);
}
