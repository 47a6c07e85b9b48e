/* SPDX-License-Identifier: MIT */
/* Config engine: types, ranges, unknown keys, duplicates, syntax errors with lines. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>

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
