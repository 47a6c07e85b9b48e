/* SPDX-License-Identifier: MIT */
/* Config engine: types, ranges, unknown keys, duplicates, syntax errors with lines. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway/config.h"

struct t {
        char *name;
        long n;
        bool b;
        int64_t d;
        double x;
        struct km_strv l;
        char *mode;
};

static const char *const modes[] = { "always", "batch", NULL };
static const struct km_conf_key keys[] = {
        { "name", KM_CONF_STRING, "base", offsetof(struct t, name), "node name", 0, 0, NULL },
        { "n", KM_CONF_INT, "7", offsetof(struct t, n), "a number", 1, 100, NULL },
        { "b", KM_CONF_BOOL, "no", offsetof(struct t, b), "a flag", 0, 0, NULL },
        { "d", KM_CONF_DURATION, "50ms", offsetof(struct t, d), "a duration", 0, 0, NULL },
        { "x", KM_CONF_DOUBLE, "0.5", offsetof(struct t, x), "a share", 0, 1, NULL },
        { "l", KM_CONF_LIST, NULL, offsetof(struct t, l), "a list", 0, 0, NULL },
        { "mode", KM_CONF_STRING, "batch", offsetof(struct t, mode), "sync", 0, 0, modes },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

Test(config, defaults_and_values)
{
        struct km_conf c;
        struct t v = { 0 };
        cr_assert_eq(km_conf_load(&c, "a.ini", "[s]\nname = north ; inline comment\nb = yes\nd = 7d\nl = a/#, b/+ ,, c\n"), 0);
        cr_assert_eq(km_conf_apply(&c, "s", keys, &v), 0);
        km_conf_check_unused(&c);
        cr_assert_eq(c.nerrors, 0);
        cr_assert_str_eq(v.name, "north");
        cr_assert_eq(v.n, 7);
        cr_assert(v.b);
        cr_assert_eq(v.d, 7LL * 86400000);
        cr_assert_float_eq(v.x, 0.5, 1e-9);
        cr_assert_eq(v.l.n, 3);
        cr_assert_str_eq(v.l.v[1], "b/+");
        cr_assert_str_eq(v.l.v[2], "c");
        cr_assert_str_eq(v.mode, "batch");
        km_conf_release(keys, &v);
        km_conf_deinit(&c);
}

Test(config, errors)
{
        struct km_conf c;
        struct t v = { 0 };
        cr_assert_eq(km_conf_load(&c, "b.ini", "[s]\nn = 0\nb = maybe\nd = 5 parsecs\nx = 2\nmode = sometimes\nbogus = 1\nn = 3\n"), 0);
        km_conf_apply(&c, "s", keys, &v);
        km_conf_check_unused(&c);
        cr_assert_eq(c.nerrors, 7);
        cr_assert_str_eq(c.errors[0], "b.ini:8: n: given twice in [s] (first at line 2)");
        cr_assert_str_eq(c.errors[1], "b.ini:2: n: 0 is out of range 1..100");
        cr_assert_str_eq(c.errors[2], "b.ini:3: b: not a boolean (yes/no)");
        cr_assert_str_eq(c.errors[3], "b.ini:4: d: not a duration (e.g. 50ms, 10s, 5m, 2h, 7d)");
        cr_assert_str_eq(c.errors[4], "b.ini:5: x: 2 is out of range 0..1");
        cr_assert_str_eq(c.errors[5], "b.ini:6: mode: 'sometimes' is not one of: always batch");
        cr_assert_str_eq(c.errors[6], "b.ini:7: bogus: unknown key in [s]");
        km_conf_release(keys, &v);
        km_conf_deinit(&c);
}

Test(config, syntax_error_line)
{
        struct km_conf c;
        cr_assert_eq(km_conf_load(&c, "c.ini", "[s]\nname = x\nthis line has no equals\n"), 0);
        cr_assert_eq(c.nerrors, 1);
        cr_assert_str_eq(c.errors[0], "c.ini:3: -: syntax error (expected [section], key = value or comment)");
        km_conf_deinit(&c);
        cr_assert_eq(km_conf_load(&c, "/nonexistent/k.ini", NULL), -ENOENT);
        km_conf_deinit(&c);
}

Test(config, durations)
{
        int64_t ms;
        cr_assert_eq(km_conf_parse_duration("10", &ms), 0);
        cr_assert_eq(ms, 10000);
        cr_assert_eq(km_conf_parse_duration("1.5s", &ms), 0);
        cr_assert_eq(ms, 1500);
        cr_assert_eq(km_conf_parse_duration("2h", &ms), 0);
        cr_assert_eq(ms, 7200000);
        cr_assert_eq(km_conf_parse_duration("-1s", &ms), -EINVAL);
        cr_assert_eq(km_conf_parse_duration("s", &ms), -EINVAL);
}

/* Writes text to dir/name with mode; returns the path in out. */
static void put(char *out, size_t n, const char *dir, const char *name, const char *text, mode_t mode)
{
        snprintf(out, n, "%s/%s", dir, name);
        FILE *f = fopen(out, "w");
        cr_assert(f);
        fputs(text, f);
        fclose(f);
        cr_assert_eq(chmod(out, mode), 0);
}

/* password_file and password_credential stand for password (issue 12): the secret is
 * read from its own file, which must not be readable by others. */
Test(config, password_from_a_file_or_credential)
{
        char dir[] = "/tmp/km-conf-XXXXXX", conf[128], pw[128], cred[128];
        struct km_conf c;
        cr_assert(mkdtemp(dir));
        put(pw, sizeof(pw), dir, "center.pw", "s3cret\n", 0600);
        put(conf, sizeof(conf), dir, "k.conf", "[link center]\nusername = north\npassword_file = center.pw\n", 0644);
        cr_assert_eq(km_conf_load(&c, conf, NULL), 0);
        cr_assert_eq(c.nerrors, 0, "%s", c.nerrors ? c.errors[0] : "");
        cr_assert_str_eq(km_conf_get(&c, "link center", "password"), "s3cret");
        cr_assert_null(km_conf_get(&c, "link center", "password_file"));
        km_conf_deinit(&c);

        chmod(pw, 0644);
        cr_assert_eq(km_conf_load(&c, conf, NULL), 0);
        cr_assert_eq(c.nerrors, 1);
        cr_assert(strstr(c.errors[0], "center.pw: mode 0644"), "%s", c.errors[0]);
        km_conf_deinit(&c);

        put(conf, sizeof(conf), dir, "k.conf", "[local]\npassword_credential = mqtt-local\n[x]\npassword = a\npassword_file = center.pw\n", 0644);
        put(cred, sizeof(cred), dir, "mqtt-local", "from-systemd", 0400);
        setenv("CREDENTIALS_DIRECTORY", dir, 1);
        cr_assert_eq(km_conf_load(&c, conf, NULL), 0);
        cr_assert_str_eq(km_conf_get(&c, "local", "password"), "from-systemd");
        cr_assert_eq(c.nerrors, 1, "password and password_file in [x]");
        cr_assert(strstr(c.errors[0], "give one"), "%s", c.errors[0]);
        km_conf_deinit(&c);
        unsetenv("CREDENTIALS_DIRECTORY");
        cr_assert_eq(km_conf_load(&c, conf, NULL), 0);
        cr_assert_geq(c.nerrors, 1);
        cr_assert(strstr(c.errors[0], "CREDENTIALS_DIRECTORY"), "%s", c.errors[0]);
        km_conf_deinit(&c);
        unlink(pw), unlink(cred), unlink(conf), rmdir(dir);
}

/* Writes n bytes of c into f. */
static void fill(FILE *f, int ch, size_t n)
{
        for (size_t i = 0; i < n; i++)
                fputc(ch, f);
}

/* Lines of any length (issue 13): Debian's inih split lines at 199 bytes and read the
 * rest as a line of its own, so a long comment ending in "name = sneaky" set the name,
 * and errors named lines that did not exist. */
Test(config, long_lines_stay_whole)
{
        char dir[] = "/tmp/km-conf-XXXXXX", path[128];
        struct km_conf c;
        struct t v = { 0 };
        cr_assert(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/len.conf", dir);
        FILE *f = fopen(path, "w");
        cr_assert(f);
        fputs("[s]\n; ", f);
        fill(f, 'x', 300);
        fputs(" name = sneaky\nmode = always\nl = ", f);
        for (int i = 0; i < 2000; i++) /* ~14 kB on one line */
                fprintf(f, "%st%d/#", i ? ", " : "", i);
        fputs("\nname = ", f);
        fill(f, 'n', 5000);
        fputs("\nthis line has no equals\n", f);
        fclose(f);

        cr_assert_eq(km_conf_load(&c, path, NULL), 0);
        cr_assert_eq(c.nerrors, 1, "%s", c.nerrors ? c.errors[0] : "");
        /* The syntax error is on line 6, the file's sixth line. */
        char want[400];
        snprintf(want, sizeof(want), "%s:6: -: syntax error (expected [section], key = value or comment)", path);
        cr_assert_str_eq(c.errors[0], want);
        km_conf_deinit(&c);

        /* Without the bad line: every value whole, nothing from the comment. */
        f = fopen(path, "r+");
        cr_assert(f);
        fseek(f, -(long)strlen("this line has no equals\n"), SEEK_END);
        fputs("; the end ; of the file  \n", f);
        fclose(f);
        cr_assert_eq(km_conf_load(&c, path, NULL), 0);
        cr_assert_eq(km_conf_apply(&c, "s", keys, &v), 0, "%s", c.nerrors ? c.errors[0] : "");
        km_conf_check_unused(&c);
        cr_assert_eq(c.nerrors, 0, "%s", c.errors[0]);
        cr_assert_eq(strlen(v.name), 5000);
        cr_assert_eq(strspn(v.name, "n"), 5000);
        cr_assert_eq(v.l.n, 2000);
        cr_assert_str_eq(v.l.v[1999], "t1999/#");
        cr_assert_str_eq(v.mode, "always");
        cr_assert_eq(c.e[0].line, 3); /* mode */
        cr_assert_eq(c.e[2].line, 5); /* name */
        km_conf_release(keys, &v);
        km_conf_deinit(&c);

        /* The same from text. */
        char *text = malloc(4096);
        cr_assert(text);
        strcpy(text, "[s]\n;");
        memset(text + 5, 'y', 3000);
        strcpy(text + 3005, " name = sneaky\nn = 3\n");
        cr_assert_eq(km_conf_load(&c, "t.ini", text), 0);
        cr_assert_eq(c.nerrors, 0);
        cr_assert_eq(c.n, 1);
        cr_assert_str_eq(c.e[0].key, "n");
        cr_assert_eq(c.e[0].line, 3);
        km_conf_deinit(&c);
        free(text);

        /* A NUL ends the line for inih: what follows it must not become a line. */
        f = fopen(path, "w");
        cr_assert(f);
        fwrite("[s]\n; x\0name = sneaky\nn = 3\n", 1, 28, f);
        fclose(f);
        cr_assert_eq(km_conf_load(&c, path, NULL), 0);
        cr_assert_eq(c.nerrors, 1);
        snprintf(want, sizeof(want), "%s:2: -: a NUL byte in the line: not read", path);
        cr_assert_str_eq(c.errors[0], want);
        cr_assert_null(km_conf_get(&c, "s", "name"));
        cr_assert_str_eq(km_conf_get(&c, "s", "n"), "3");
        cr_assert_eq(c.e[0].line, 3);
        km_conf_deinit(&c);
        unlink(path), rmdir(dir);
}

/* An empty file, a file of comments, or a directory is no config (issue 13): each ran
 * as node "base" with no link. */
Test(config, empty_or_directory_is_an_error)
{
        char dir[] = "/tmp/km-conf-XXXXXX", path[128];
        struct km_conf c;
        cr_assert(mkdtemp(dir));
        cr_assert_eq(km_conf_load(&c, dir, NULL), -EISDIR);
        km_conf_deinit(&c);

        put(path, sizeof(path), dir, "empty.conf", "", 0644);
        cr_assert_eq(km_conf_load(&c, path, NULL), 0);
        cr_assert_eq(c.nerrors, 1);
        char want[400];
        snprintf(want, sizeof(want), "%s: empty: no key in any [section] (kuimen --print-default-config shows a config)", path);
        cr_assert_str_eq(c.errors[0], want);
        km_conf_deinit(&c);

        put(path, sizeof(path), dir, "empty.conf", "; nothing\n\n[node]\n# still nothing\n", 0644);
        cr_assert_eq(km_conf_load(&c, path, NULL), 0);
        cr_assert_eq(c.nerrors, 1);
        cr_assert(strstr(c.errors[0], ": empty: "), "%s", c.errors[0]);
        km_conf_deinit(&c);
        cr_assert_eq(km_conf_load(&c, "text", ""), 0);
        cr_assert_eq(c.nerrors, 1);
        km_conf_deinit(&c);
        unlink(path), rmdir(dir);
}

/* Names and topics end up in MQTT topics and JSON: bytes that are not UTF-8 are an
 * error at their line; a password is bytes to MQTT and may hold any. */
Test(config, values_must_be_utf8)
{
        struct km_conf c;
        cr_assert_eq(km_conf_load(&c, "u.ini", "[s]\nname = n\xc3\xa9ord\nn = 1\nl = a/\xff\n[x]\npassword = \xff\xfe\nk = \xed\xa0\x80\n"), 0);
        cr_assert_eq(c.nerrors, 2);
        cr_assert_str_eq(c.errors[0], "u.ini:4: l: not valid UTF-8, or holds a control character (in [s])");
        cr_assert_str_eq(c.errors[1], "u.ini:7: k: not valid UTF-8, or holds a control character (in [x])");
        cr_assert_str_eq(km_conf_get(&c, "s", "name"), "n\xc3\xa9ord");
        km_conf_deinit(&c);
}

/* What a reload reports as needing a restart: every key added, removed or changed,
 * grouped by section, minus those the reload applies. */
static bool classes_apply(const char *section, const char *key)
{
        (void)key;
        return strncmp(section, "class ", 6) == 0;
}

Test(config, changes_between_two_loads)
{
        struct km_conf a, b, copy;
        struct km_strv out;
        cr_assert_eq(km_conf_load(&a, "a.ini", "[node]\nname = n\n[link center]\nuri = tcp://a:1\nwindow = 5\n[class x]\nmatch = x/#\n"), 0);
        cr_assert_eq(km_conf_copy(&copy, &a), 0);
        km_conf_deinit(&a);
        cr_assert_eq(km_conf_load(&b, "a.ini", "[node]\nname = n\n[link center]\nuri = tcp://b:1\nkeepalive = 5s\n[class x]\nmatch = y/#\n[link sat]\ntype = sim\n"), 0);
        cr_assert_eq(km_conf_changes(&copy, &b, classes_apply, &out), 2);
        cr_assert_str_eq(out.v[0], "[link center] uri, window, keepalive");
        cr_assert_str_eq(out.v[1], "[link sat] type");
        km_strv_free(&out);
        cr_assert_eq(km_conf_changes(&copy, &copy, NULL, &out), 0);
        cr_assert_eq(km_conf_changes(&copy, &b, NULL, &out), 3);
        cr_assert_str_eq(out.v[1], "[class x] match");
        km_strv_free(&out);
        km_conf_deinit(&b);
        km_conf_deinit(&copy);
}

/* A password in clear in a config every user can read is a warning with its line
 * (--check-config prints it); readable by the group only, it is not. */
Test(config, password_in_a_readable_config_is_a_warning)
{
        char dir[] = "/tmp/km-conf-XXXXXX", conf[128], want[300];
        struct km_conf c;
        cr_assert(mkdtemp(dir));
        put(conf, sizeof(conf), dir, "k.conf", "[local]\nuri = tcp://a:1\n[link center]\npassword = s3cret\n", 0644);
        cr_assert_eq(km_conf_load(&c, conf, NULL), 0);
        cr_assert_eq(c.nerrors, 0);
        cr_assert_eq(c.nwarnings, 1);
        snprintf(want, sizeof(want), "%s:4: password: warning: [link center] password in a file of mode 0644 that every user "
                                     "can read: chmod 600 (or 640 with group kuimen only)", conf);
        cr_assert_str_eq(c.warnings[0], want);
        km_conf_deinit(&c);
        chmod(conf, 0640);
        cr_assert_eq(km_conf_load(&c, conf, NULL), 0);
        cr_assert_eq(c.nwarnings, 0);
        km_conf_deinit(&c);
        unlink(conf), rmdir(dir);
}
