/* SPDX-License-Identifier: MIT */
/* Config engine: INI read with inih into raw entries, then applied through per-module key tables. */
#ifndef KM_CONFIG_H
#define KM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum km_conf_type {
        KM_CONF_STRING,   /* char *, owned by the target struct */
        KM_CONF_INT,      /* long, within [min, max] */
        KM_CONF_BOOL,     /* bool: yes/no/true/false/on/off/1/0 */
        KM_CONF_DOUBLE,   /* double, within [min, max] */
        KM_CONF_DURATION, /* int64_t milliseconds: 50ms, 10s, 5m, 2h, 7d; bare number = seconds */
        KM_CONF_LIST,     /* struct km_strv: comma-separated, blanks trimmed */
};

struct km_strv {
        char **v;
        size_t n;
};

/* One key of a section: the same row parses, validates and documents it. */
struct km_conf_key {
        const char *name;
        enum km_conf_type type;
        const char *def; /* NULL: no default (string NULL, number 0) */
        size_t offset;   /* where the value goes in the target struct */
        const char *help;
        double min, max; /* for INT, DOUBLE, DURATION (ms); min == max means unbounded */
        const char *const *choices; /* STRING: NULL-terminated set of allowed values */
};

struct km_conf_entry {
        char *section;
        char *key;
        char *value;
        int line;
        bool used;
};

struct km_conf {
        char *file; /* shown in error messages */
        struct km_conf_entry *e;
        size_t n, cap;
        char **sections; /* in order of first appearance */
        size_t nsections;
        char **errors; /* "FILE:LINE: key: why" */
        size_t nerrors;
        char **warnings; /* "FILE:LINE: key: warning: why": said, not refused */
        size_t nwarnings;
        /* Set by the daemon's reload before its checks: what the reload handles on its
         * own (the narrow links' key files, read again with the keys in use kept when
         * one is bad) is left out of them. */
        bool reloading;
};

/* Reads an INI file (path) or, when text is non-NULL, a string named path in messages.
 * Lines may be of any length. Returns 0, or a negative errno when the file cannot be
 * read (-EISDIR for a directory); syntax errors, values that are not UTF-8 and a config
 * with no key at all land in c->errors. The caller km_conf_deinit()s c in every case. */
int km_conf_load(struct km_conf *c, const char *path, const char *text);
void km_conf_deinit(struct km_conf *c);

/* Fills dst from the entries of section through table (defaults first). Errors are
 * appended to c->errors; returns the number of new errors. */
int km_conf_apply(struct km_conf *c, const char *section, const struct km_conf_key *table,
                  void *dst);

/* Frees what km_conf_apply allocated in dst (strings and lists). */
void km_conf_release(const struct km_conf_key *table, void *dst);

/* Appends an error for an entry not claimed by any table ("unknown key"). */
void km_conf_check_unused(struct km_conf *c);

/* Adds a formatted error, tied to section/key's line when found. */
void km_conf_error(struct km_conf *c, const char *section, const char *key, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Adds a formatted warning (c->warnings), tied to section/key's line when found: a
 * config that works but probably not as meant. */
void km_conf_warn(struct km_conf *c, const char *section, const char *key, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Copies src's entries and sections into dst (not its errors or warnings), for a later
 * km_conf_changes. 0 or -ENOMEM (dst then empty). km_conf_deinit(dst) after. */
int km_conf_copy(struct km_conf *dst, const struct km_conf *src);

/* What differs between was and now (a key added, removed or given another value),
 * leaving out the keys applied() says a reload applies (NULL: none). out gets one line
 * per section, "[link center] uri, window", in the order the keys first appear (was's,
 * then now's new ones); the caller km_strv_free()s it. Returns out->n or -ENOMEM. */
int km_conf_changes(const struct km_conf *was, const struct km_conf *now,
                    bool (*applied)(const char *section, const char *key), struct km_strv *out);

/* Whether the config has the section (exact name). */
bool km_conf_has_section(const struct km_conf *c, const char *section);

/* Value of section/key or NULL; marks it used (for plugins reading their own keys). */
const char *km_conf_get(struct km_conf *c, const char *section, const char *key);

/* Prints the table as documentation for --help-config. */
void km_conf_print_help(FILE *out, const char *section, const struct km_conf_key *table);

/* Parses a duration ("50ms", "10s", "5m", "2h", "7d", bare = seconds) to ms. */
int km_conf_parse_duration(const char *s, int64_t *ms);

/* Splits a comma-separated list into v (trimmed, empty items dropped). */
int km_strv_split(struct km_strv *v, const char *s);
void km_strv_free(struct km_strv *v);

#endif
