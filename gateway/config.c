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
#include <stdint.h>
#include <sys/stat.h>

#include "log.h"

/*
 * Lines of any length (issue 13): Debian's inih reads into a fixed 200-byte buffer by
 * default and hands the rest of a longer line back as a line of its own, so a long
 * comment ending in `name = sneaky` renamed the node. Its build has the options as
 * variables: a heap buffer that grows (doubling) up to ini_max_line. The reader below
 * holds each physical line whole (getline) and feeds it to inih in the pieces inih asks
 * for, so it knows where every line starts: inih's handler gets no line number in
 * Debian's build (INI_HANDLER_LINENO is 0), and errors must name the real line. A line
 * longer than KM_CONF_MAX_LINE (far beyond any config), or holding a NUL, is refused
 * with its line, never split.
 */
#define KM_CONF_MAX_LINE (16 << 20)

struct reader {
        FILE *f;
        char *buf;      /* the current physical line (getline's) */
        size_t cap;
        ssize_t len, off; /* its length and how much of it inih has */
        int line;       /* of the line being handed to inih */
        int err;        /* a read error (errno), reported by km_conf_load */
        struct km_conf *c;
};

static void errorf(struct km_conf *c, int line, const char *key, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static char *read_line(char *str, int num, void *stream)
{
        struct reader *r = stream;

        if (r->off >= r->len) {
                errno = 0;
                r->len = getline(&r->buf, &r->cap, r->f);
                r->off = 0;
                if (r->len < 0) {
                        r->err = errno;
                        return NULL;
                }
                r->line++;
                /* inih sees a line up to its first NUL and would take what follows as a
                 * line of its own: such a line is refused whole, as an overlong one. */
                if (r->len > KM_CONF_MAX_LINE - 3 || memchr(r->buf, '\0', (size_t)r->len)) {
                        if (r->len > KM_CONF_MAX_LINE - 3)
                                errorf(r->c, r->line, NULL, "line of %zd bytes, longer than %d: not read", r->len,
                                       KM_CONF_MAX_LINE - 3);
                        else
                                errorf(r->c, r->line, NULL, "a NUL byte in the line: not read");
                        r->buf[0] = '\n';
                        r->len = 1;
                }
        }
        size_t n = (size_t)(r->len - r->off);
        if (n > (size_t)num - 1)
                n = (size_t)num - 1;
        memcpy(str, r->buf + r->off, n);
        str[n] = '\0';
        r->off += (ssize_t)n;
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

/* Well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF) without
 * control characters. Names and topics become MQTT topics and status JSON, which a
 * broker refuses (closing the connection) when they are not UTF-8; the same test as
 * gateway/inbound.c's for relayed topics. */
static bool utf8_ok(const unsigned char *s)
{
        while (*s) {
                unsigned char b = *s;
                uint32_t cp;
                int n;
                if (b < 0x80) {
                        if (b < 0x20 && b != '\t')
                                return false;
                        s++;
                        continue;
                }
                if (b >= 0xc2 && b <= 0xdf)
                        n = 1, cp = b & 0x1f;
                else if (b >= 0xe0 && b <= 0xef)
                        n = 2, cp = b & 0x0f;
                else if (b >= 0xf0 && b <= 0xf4)
                        n = 3, cp = b & 0x07;
                else
                        return false;
                for (int i = 1; i <= n; i++) {
                        if ((s[i] & 0xc0) != 0x80)
                                return false;
                        cp = cp << 6 | (s[i] & 0x3f);
                }
                if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
                        return false;
                s += n + 1;
        }
        return true;
}

static int on_entry(void *user, const char *section, const char *key, const char *value)
{
        struct reader *r = user;
        struct km_conf *c = r->c;

        if (!*section) {
                errorf(c, r->line, key, "key outside any [section]");
                return 1;
        }
        /* A password is bytes to MQTT; everything else ends up in topics, JSON, logs
         * or file names, where bytes that are not UTF-8 break the reader. */
        if (!utf8_ok((const unsigned char *)section) || !utf8_ok((const unsigned char *)key) ||
            (strcmp(key, "password") != 0 && !utf8_ok((const unsigned char *)value))) {
                bool sec_ok = utf8_ok((const unsigned char *)section);
                errorf(c, r->line, sec_ok && utf8_ok((const unsigned char *)key) ? key : NULL,
                       "not valid UTF-8, or holds a control character%s%s%s", sec_ok ? " (in [" : " (a section name)",
                       sec_ok ? section : "", sec_ok ? "])" : "");
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
static void password_check(struct km_conf *c, const char *text)
{
        struct stat st;
        if (text || !c->file || stat(c->file, &st) < 0 || !(st.st_mode & 077))
                return;
        for (size_t i = 0; i < c->n; i++)
                if (strcmp(c->e[i].key, "password") == 0) {
                        /* A warning --check-config prints too; a group may be meant. */
                        if (st.st_mode & 004)
                                km_conf_warn(c, c->e[i].section, "password",
                                             "[%s] password in a file of mode %04o that every user can read: chmod 600 (or 640 with group kuimen only)",
                                             c->e[i].section, (unsigned)(st.st_mode & 07777));
                        else
                                KM_LOG(KM_LOG_NOTICE, "config",
                                       "%s:%d: [%s] password in a file of mode %04o that its group can read: chmod 600 (or 640 with group kuimen only)",
                                       c->file, c->e[i].line, c->e[i].section, (unsigned)(st.st_mode & 07777));
                        return;
                }
}

int km_conf_load(struct km_conf *c, const char *path, const char *text)
{
        struct reader r = { .c = c };
        struct stat st;
        int rc;

        memset(c, 0, sizeof(*c));
        if (!(c->file = strdup(path)))
                return -ENOMEM;
        if (text)
                r.f = *text ? fmemopen((void *)text, strlen(text), "r") : NULL;
        else
                r.f = fopen(path, "re");
        if (!r.f && (!text || *text))
                return -errno;
        /* A directory opens for reading and then reads nothing: it was taken for an
         * empty config. */
        if (!text && fstat(fileno(r.f), &st) == 0 && !S_ISREG(st.st_mode)) {
                fclose(r.f);
                return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
        }
        ini_use_stack = false;
        ini_allow_realloc = true;
        ini_max_line = KM_CONF_MAX_LINE;
        rc = r.f ? ini_parse_stream(read_line, &r, on_entry, &r) : 0;
        if (r.f)
                fclose(r.f);
        free(r.buf);
        if (r.err)
                return -r.err;
        if (rc > 0)
                errorf(c, rc, NULL, "syntax error (expected [section], key = value or comment)");
        else if (rc < 0)
                return -ENOMEM;
        /* An empty file ran as node "base" with no link, taking the demo's broker
         * session, while messages piled up with no way out (issue 13). */
        if (c->n == 0 && c->nerrors == 0) {
                char *msg;
                if (asprintf(&msg, "%s: empty: no key in any [section] (kuimen --print-default-config shows a config)",
                             c->file) >= 0)
                        push_error(c, msg);
        }
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
        for (size_t i = 0; i < c->nwarnings; i++)
                free(c->warnings[i]);
        free(c->warnings);
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

void km_conf_warn(struct km_conf *c, const char *section, const char *key, const char *fmt, ...)
{
        int line = 0;
        char why[512], *msg;
        va_list ap;

        for (size_t i = 0; i < c->n; i++)
                if (strcmp(c->e[i].section, section) == 0 && (!key || strcmp(c->e[i].key, key) == 0)) {
                        line = c->e[i].line;
                        break;
                }
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        if (asprintf(&msg, "%s:%d: %s: warning: %s", c->file, line, key ? key : "-", why) < 0)
                return;
        char **n = realloc(c->warnings, (c->nwarnings + 1) * sizeof(*n));
        if (!n) {
                free(msg);
                return;
        }
        c->warnings = n;
        c->warnings[c->nwarnings++] = msg;
}

int km_conf_copy(struct km_conf *dst, const struct km_conf *src)
{
        memset(dst, 0, sizeof(*dst));
        if (!(dst->file = strdup(src->file)) || (src->n && !(dst->e = calloc(src->n, sizeof(*dst->e)))) ||
            (src->nsections && !(dst->sections = calloc(src->nsections, sizeof(*dst->sections)))))
                goto oom;
        dst->cap = src->n;
        for (; dst->n < src->n; dst->n++) {
                struct km_conf_entry *d = &dst->e[dst->n];
                const struct km_conf_entry *e = &src->e[dst->n];
                *d = (struct km_conf_entry){ strdup(e->section), strdup(e->key), strdup(e->value), e->line, e->used };
                if (!d->section || !d->key || !d->value) {
                        dst->n++;
                        goto oom;
                }
        }
        for (; dst->nsections < src->nsections; dst->nsections++)
                if (!(dst->sections[dst->nsections] = strdup(src->sections[dst->nsections])))
                        goto oom;
        return 0;
oom:
        km_conf_deinit(dst);
        return -ENOMEM;
}

static const char *value_of(const struct km_conf *c, const char *section, const char *key)
{
        for (size_t i = 0; i < c->n; i++)
                if (strcmp(c->e[i].section, section) == 0 && strcmp(c->e[i].key, key) == 0)
                        return c->e[i].value;
        return NULL;
}

/* Adds key to the line of section in out ("[section] k1, k2"); each (section, key) comes
 * once, as a config holds a key once per section. */
static int note_change(struct km_strv *out, const char *section, const char *key)
{
        size_t sl = strlen(section);
        for (size_t i = 0; i < out->n; i++) {
                char *l = out->v[i];
                if (l[0] != '[' || strncmp(l + 1, section, sl) != 0 || strncmp(l + 1 + sl, "] ", 2) != 0)
                        continue;
                char *n;
                if (asprintf(&n, "%s, %s", l, key) < 0)
                        return -ENOMEM;
                free(l);
                out->v[i] = n;
                return 0;
        }
        char **v = realloc(out->v, (out->n + 2) * sizeof(*v));
        if (!v)
                return -ENOMEM;
        out->v = v;
        if (asprintf(&v[out->n], "[%s] %s", section, key) < 0)
                return -ENOMEM;
        v[++out->n] = NULL;
        return 0;
}

int km_conf_changes(const struct km_conf *was, const struct km_conf *now,
                    bool (*applied)(const char *section, const char *key), struct km_strv *out)
{
        const struct km_conf *side[2] = { was, now };
        out->v = NULL;
        out->n = 0;
        for (int s = 0; s < 2; s++)
                for (size_t i = 0; i < side[s]->n; i++) {
                        const struct km_conf_entry *e = &side[s]->e[i];
                        const char *other = value_of(side[!s], e->section, e->key);
                        if ((other && strcmp(other, e->value) == 0) || (s == 1 && other) ||
                            (applied && applied(e->section, e->key)))
                                continue;
                        if (note_change(out, e->section, e->key) < 0) {
                                km_strv_free(out);
                                return -ENOMEM;
                        }
                }
        return (int)out->n;
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
