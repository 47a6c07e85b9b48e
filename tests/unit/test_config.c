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
