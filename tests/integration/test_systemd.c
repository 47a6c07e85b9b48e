/* SPDX-License-Identifier: MIT */
/* The systemd side: meson install, the two units (verify, hardening, clock access), READY and the watchdog. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define OUT_MAX 65536

/* ---- helpers --------------------------------------------------------------------- */

static const char *env(const char *name)
{
        const char *v = getenv(name);
        cr_assert(v && *v, "%s is not set (tests/integration/meson.build sets it)", name);
        return v;
}

/* Runs cmd through sh with stderr folded into stdout; returns the exit code (or -1)
 * and leaves the output in out. */
static int run(const char *cmd, char *out, size_t n)
{
        char full[4096];
        snprintf(full, sizeof(full), "%s 2>&1", cmd);
        FILE *p = popen(full, "r");
        cr_assert(p, "popen %s: %s", cmd, strerror(errno));
        size_t len = 0, got;
        while (len + 1 < n && (got = fread(out + len, 1, n - 1 - len, p)) > 0)
                len += got;
        out[len] = 0;
        int st = pclose(p);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *slurp(const char *path)
{
        FILE *f = fopen(path, "r");
        cr_assert(f, "%s: %s", path, strerror(errno));
        char *buf = malloc(OUT_MAX);
        size_t len = fread(buf, 1, OUT_MAX - 1, f);
        buf[len] = 0;
        fclose(f);
        return buf;
}

static void spit(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");
        cr_assert(f, "%s: %s", path, strerror(errno));
        fputs(text, f);
        fclose(f);
}

/* text with the first occurrence of from replaced by to (malloc'd). */
static char *replace(const char *text, const char *from, const char *to)
{
        const char *at = strstr(text, from);
        cr_assert(at, "'%s' not found", from);
        char *out = malloc(strlen(text) + strlen(to) + 1);
        sprintf(out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
        return out;
}

/* Installs the build into dir with meson install --destdir; returns nothing, asserts. */
static void install_into(const char *dir)
{
        char cmd[1024], out[OUT_MAX];
        snprintf(cmd, sizeof(cmd), "meson install -C '%s' --no-rebuild --destdir '%s' --quiet", env("KM_BUILD_ROOT"), dir);
        int rc = run(cmd, out, sizeof(out));
        cr_assert_eq(rc, 0, "%s: exit %d\n%s", cmd, rc, out);
}

static void destpath(char *out, size_t n, const char *dest, const char *dirvar, const char *name)
{
        snprintf(out, n, "%s%s/%s", dest, env(dirvar), name);
}

/* One [section]'s "key=value" lines, comments and blank lines left out. */
struct kv {
        char key[64];
        char val[512];
};

static size_t unit_section(const char *path, const char *section, struct kv *kv, size_t max)
{
        char *text = slurp(path), *save = NULL, head[80];
        size_t n = 0;
        bool in = false;
        snprintf(head, sizeof(head), "[%s]", section);
        for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
                if (*l == '[') {
                        in = strcmp(l, head) == 0;
                        continue;
                }
                char *eq = strchr(l, '=');
                if (!in || *l == '#' || *l == ';' || !eq)
                        continue;
                cr_assert(n < max, "%s: too many lines in [%s]", path, section);
                snprintf(kv[n].key, sizeof(kv[n].key), "%.*s", (int)(eq - l), l);
                snprintf(kv[n].val, sizeof(kv[n].val), "%s", eq + 1);
                n++;
        }
        free(text);
        return n;
}

static void source_unit(char *out, size_t n, const char *name)
{
        snprintf(out, n, "%s/systemd/%s", env("KM_SOURCE_ROOT"), name);
}

static const char *const units[] = { "kuimen.service", "kuimen-center.service" };

/* ---- meson install --------------------------------------------------------------- */

/* Every file lands where the FHS and systemd look, and what landed works together:
 * the installed units start the installed binary on the installed config, and the
 * binary looks for plugins where they were installed. */
Test(install, files_in_place)
{
        char dir[128], p[512], cmd[1200], out[OUT_MAX];
        struct stat st;
        h_tmpdir(dir, sizeof(dir), "install");
        install_into(dir);

        static const struct {
                const char *var, *name;
                bool exec;
        } want[] = {
                { "KM_SBINDIR", "kuimen", true },
                { "KM_BINDIR", "kuimenctl", true },
                { "KM_LIBDIR", "kuimen/sim.so", false },
                { "KM_UNITDIR", "kuimen.service", false },
                { "KM_UNITDIR", "kuimen-center.service", false },
                { "KM_SYSCONFDIR", "kuimen/kuimen.conf", false },
                { "KM_DOCDIR", "docs/operations.md", false },
                { "KM_DOCDIR", "README.md", false },
        };
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
                destpath(p, sizeof(p), dir, want[i].var, want[i].name);
                cr_assert(stat(p, &st) == 0 && S_ISREG(st.st_mode), "not installed: %s", p);
                if (want[i].exec)
                        cr_assert(st.st_mode & S_IXOTH, "not executable: %s", p);
        }

        /* The installed units name the installed binary and config (by prefix). */
        char exec[600];
        const char *conf[] = { "kuimen.conf", "center.conf" };
        for (size_t u = 0; u < 2; u++) {
                struct kv kv[64];
                destpath(p, sizeof(p), dir, "KM_UNITDIR", units[u]);
                size_t n = unit_section(p, "Service", kv, 64);
                snprintf(exec, sizeof(exec), "%s/kuimen --config %s/kuimen/%s", env("KM_SBINDIR"), env("KM_SYSCONFDIR"),
                         conf[u]);
                bool found = false;
                for (size_t i = 0; i < n; i++)
                        if (strcmp(kv[i].key, "ExecStart") == 0) {
                                cr_expect_str_eq(kv[i].val, exec, "%s", p);
                                found = true;
                        }
                cr_assert(found, "%s: no ExecStart", p);
        }

        /* The installed binary runs, accepts the installed config, and its default
         * plugin_dir is where sim.so went. */
        char bin[512], cfg[512];
        destpath(bin, sizeof(bin), dir, "KM_SBINDIR", "kuimen");
        destpath(cfg, sizeof(cfg), dir, "KM_SYSCONFDIR", "kuimen/kuimen.conf");
        snprintf(cmd, sizeof(cmd), "'%s' --check-config '%s'", bin, cfg);
        cr_assert_eq(run(cmd, out, sizeof(out)), 0, "%s:\n%s", cmd, out);
        snprintf(cmd, sizeof(cmd), "'%s' --help-config", bin);
        cr_assert_eq(run(cmd, out, sizeof(out)), 0, "%s:\n%s", cmd, out);
        snprintf(p, sizeof(p), "%s/kuimen", env("KM_LIBDIR"));
        cr_assert(strstr(out, p), "--help-config does not name the installed plugin dir %s:\n%s", p, out);

        /* The installed README and pages link to each other where they were installed
         * (the same check as test doc-links, on the installed tree). */
        destpath(p, sizeof(p), dir, "KM_DOCDIR", "");
        snprintf(cmd, sizeof(cmd), "/usr/bin/python3 '%s/docs/check-links.py' '%s'", env("KM_SOURCE_ROOT"), p);
        cr_assert_eq(run(cmd, out, sizeof(out)), 0, "%s:\n%s", cmd, out);
        cr_assert(strstr(out, ", 0 broken"), "%s:\n%s", cmd, out);
        h_cleanup(dir);
}

/* ---- the units ------------------------------------------------------------------- */

/* systemd-analyze verify on the installed units, with ExecStart pointing into the
 * DESTDIR copy (the real path exists only after a real install). Warnings (an unknown
 * key, a bad value) leave its exit code 0, so the output must be empty too; a broken
 * copy shows that this check sees them. */
Test(units, verify)
{
        char dir[128], vdir[200], p[512], cmd[1200], out[OUT_MAX];
        h_tmpdir(dir, sizeof(dir), "verify");
        install_into(dir);
        snprintf(vdir, sizeof(vdir), "%s/verify", dir);
        cr_assert(mkdir(vdir, 0755) == 0);
        char from[600], to[700];
        snprintf(from, sizeof(from), "ExecStart=%s/kuimen ", env("KM_SBINDIR"));
        snprintf(to, sizeof(to), "ExecStart=%s%s/kuimen ", dir, env("KM_SBINDIR"));
        char *text = NULL;
        for (size_t u = 0; u < 2; u++) {
                destpath(p, sizeof(p), dir, "KM_UNITDIR", units[u]);
                char *orig = slurp(p);
                free(text);
                text = replace(orig, from, to);
                free(orig);
                snprintf(p, sizeof(p), "%s/%s", vdir, units[u]);
                spit(p, text);
        }
        snprintf(cmd, sizeof(cmd), "cd '%s' && systemd-analyze verify --man=no ./kuimen.service ./kuimen-center.service", vdir);
        int rc = run(cmd, out, sizeof(out));
        cr_expect_eq(rc, 0, "%s: exit %d\n%s", cmd, rc, out);
        cr_expect_str_empty(out, "%s:\n%s", cmd, out);

        /* A misspelt key in the last unit written (the center's): must be reported. */
        char *bad = replace(text, "ProtectSystem=strict", "ProtectSytem=strict");
        spit(p, bad);
        snprintf(cmd, sizeof(cmd), "cd '%s' && systemd-analyze verify --man=no ./kuimen-center.service", vdir);
        run(cmd, out, sizeof(out));
        cr_expect(strstr(out, "ProtectSytem"), "verify did not report a misspelt key:\n%s", out);
        free(bad);
        free(text);
        h_cleanup(dir);
}

/* The base and center units differ only in the role lines. */
Test(units, same_hardening)
{
        char p0[512], p1[512];
        struct kv a[96], b[96];
        source_unit(p0, sizeof(p0), units[0]);
        source_unit(p1, sizeof(p1), units[1]);
        size_t na = unit_section(p0, "Service", a, 96), nb = unit_section(p1, "Service", b, 96);
        cr_assert_eq(na, nb, "[Service] of %s has %zu lines, of %s %zu", units[0], na, units[1], nb);
        cr_assert_gt(na, 30, "too few [Service] lines: %zu", na);
        for (size_t i = 0; i < na; i++) {
                cr_expect_str_eq(a[i].key, b[i].key, "[Service] line %zu", i + 1);
                if (strcmp(a[i].key, "ExecStart") != 0 && strcmp(a[i].key, "StateDirectory") != 0)
                        cr_expect_str_eq(a[i].val, b[i].val, "%s= differs", a[i].key);
                else
                        cr_expect_str_neq(a[i].val, b[i].val, "%s= must differ: two nodes, one spool?", a[i].key);
        }
}

/* Offline exposure score of each unit: 2.0 or lower. */
Test(units, security_exposure)
{
        char p[512], cmd[800], out[OUT_MAX], needle[128];
        for (size_t u = 0; u < 2; u++) {
                source_unit(p, sizeof(p), units[u]);
                snprintf(cmd, sizeof(cmd), "systemd-analyze security --offline=yes --no-pager '%s'", p);
                int rc = run(cmd, out, sizeof(out));
                cr_assert_eq(rc, 0, "%s: exit %d\n%s", cmd, rc, out);
                snprintf(needle, sizeof(needle), "Overall exposure level for %s: ", units[u]);
                const char *at = strstr(out, needle);
                cr_assert(at, "%s: no overall exposure level:\n%s", cmd, out);
                double score = strtod(at + strlen(needle), NULL);
                cr_log_info("%s: exposure %.1f", units[u], score);
                cr_expect_leq(score, 2.0, "%s: exposure %.1f:\n%s", units[u], score, out);
        }
}

/* ---- the clock ------------------------------------------------------------------- */

/* systemd's syscall groups as systemd-analyze knows them: group -> members (names or
 * nested @groups). */
struct groups {
        char name[64][40];
        char *members[64];
        size_t n;
};

static void groups_load(struct groups *g)
{
        char *out = malloc(OUT_MAX * 2), *save = NULL;
        char *cur = NULL;
        cr_assert_eq(run("systemd-analyze syscall-filter --no-pager 2>/dev/null", out, OUT_MAX * 2), 0);
        memset(g, 0, sizeof(*g));
        for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
                if (*l == '@') {
                        cr_assert(g->n < 64);
                        snprintf(g->name[g->n], sizeof(g->name[0]), "%s", l);
                        cur = g->members[g->n++] = calloc(1, 8192);
                        continue;
                }
                if (*l != ' ') {
                        cur = NULL;
                        continue;
                }
                l += strspn(l, " ");
                if (cur && *l && *l != '#') {
                        cr_assert(strlen(cur) + strlen(l) + 2 < 8192);
                        strcat(strcat(cur, l), " ");
                }
        }
        free(out);
        cr_assert_gt(g->n, 20, "systemd-analyze syscall-filter listed %zu groups", g->n);
}

static const char *group_members(const struct groups *g, const char *name)
{
        for (size_t i = 0; i < g->n; i++)
                if (strcmp(g->name[i], name) == 0)
                        return g->members[i];
        cr_assert_fail("unknown syscall group %s", name);
        return NULL;
}

/* A set of syscall names as " a b c " for strstr. */
struct names {
        char s[OUT_MAX];
};

static bool names_has(const struct names *n, const char *name)
{
        char k[80];
        snprintf(k, sizeof(k), " %s ", name);
        return strstr(n->s, k) != NULL;
}

static void names_apply(struct names *set, const struct groups *g, const char *item, bool add)
{
        if (*item == '@') {
                char list[8192], *save = NULL;
                snprintf(list, sizeof(list), "%s", group_members(g, item));
                for (char *t = strtok_r(list, " ", &save); t; t = strtok_r(NULL, " ", &save))
                        names_apply(set, g, t, add);
                return;
        }
        char k[80];
        snprintf(k, sizeof(k), " %s ", item);
        char *at;
        if (add && !names_has(set, item)) {
                if (!*set->s)
                        strcpy(set->s, " ");
                cr_assert(strlen(set->s) + strlen(item) + 2 < sizeof(set->s));
                strcat(strcat(set->s, item), " ");
        } else if (!add && (at = strstr(set->s, k)))
                memmove(at, at + strlen(k) - 1, strlen(at + strlen(k) - 1) + 1);
}

/* The syscalls a unit's SystemCallFilter= lines allow, with systemd's rules: the first
 * line makes it an allow list (we use no deny-list mode), later lines add or (with ~)
 * take away, an empty line resets. */
static void unit_allowed(const struct kv *kv, size_t n, const struct groups *g, struct names *allowed)
{
        memset(allowed->s, 0, sizeof(allowed->s));
        bool any = false;
        for (size_t i = 0; i < n; i++) {
                if (strcmp(kv[i].key, "SystemCallFilter") != 0)
                        continue;
                char list[512], *save = NULL;
                bool deny = kv[i].val[0] == '~';
                snprintf(list, sizeof(list), "%s", kv[i].val + deny);
                if (!*list) {
                        memset(allowed->s, 0, sizeof(allowed->s));
                        any = false;
                        continue;
                }
                cr_assert(any || !deny, "the test models allow lists only; first SystemCallFilter= is a deny list");
                any = true;
                for (char *t = strtok_r(list, " ", &save); t; t = strtok_r(NULL, " ", &save))
                        names_apply(allowed, g, t, !deny);
        }
        cr_assert(any, "no SystemCallFilter=");
}

static const char *kv_get(const struct kv *kv, size_t n, const char *key)
{
        const char *v = NULL;
        for (size_t i = 0; i < n; i++)
                if (strcmp(kv[i].key, key) == 0)
                        v = kv[i].val; /* the last one wins */
        return v;
}

/* @clock's syscalls on this architecture. */
static const struct {
        const char *name;
        long nr;
} clock_calls[] = {
        { "adjtimex", SYS_adjtimex },
        { "clock_adjtime", SYS_clock_adjtime },
        { "clock_settime", SYS_clock_settime },
        { "settimeofday", SYS_settimeofday },
};
#define NCLOCK (sizeof(clock_calls) / sizeof(clock_calls[0]))

/* In a child: a seccomp filter failing the given syscalls with EPERM, as systemd's
 * does, then the calls kuimen makes and the ones the unit must refuse. Returns the
 * child's exit code: bit 0 adjtimex(modes 0) worked (bridges/gnss.c's read), bit 1
 * settimeofday was refused with EPERM, bit 2 clock_settime was. Neither setter can
 * change the clock even if let through: settimeofday(NULL, NULL) sets nothing, and
 * CLOCK_MONOTONIC cannot be set. */
static int probe_clock(const bool deny[NCLOCK])
{
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
                struct sock_filter f[2 + 2 * NCLOCK];
                unsigned short k = 0;
                f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
                for (size_t i = 0; i < NCLOCK; i++)
                        if (deny[i]) {
                                f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)clock_calls[i].nr, 0, 1);
                                f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
                        }
                f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
                struct sock_fprog prog = { .len = k, .filter = f };
                if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
                        _exit(100);
                int code = 0;
                struct timex tx = { 0 };
                if (adjtimex(&tx) >= 0)
                        code |= 1;
                /* Raw: glibc's settimeofday() would dereference the NULL. */
                if (syscall(SYS_settimeofday, NULL, NULL) < 0 && errno == EPERM)
                        code |= 2;
                struct timespec ts = { 0, 0 };
                if (syscall(SYS_clock_settime, CLOCK_MONOTONIC, &ts) < 0 && errno == EPERM)
                        code |= 4;
                _exit(code);
        }
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 100, "seccomp could not be set up (status %d)", st);
        return WEXITSTATUS(st);
}

/* bridges/gnss.c reads the clock's sync state with adjtimex(modes 0). Under the units
 * that read must work while setting the clock stays impossible. The unit's filter is
 * worked out from its lines and systemd's groups, then its @clock part is applied to
 * a child that makes the same calls; ProtectClock=yes (which denies all of @clock) is
 * the control that shows the probe sees a denied read. */
Test(units, clock_readable_not_settable)
{
        struct groups g;
        groups_load(&g);
        const char *clock_group = group_members(&g, "@clock");
        for (size_t i = 0; i < NCLOCK; i++) {
                char k[64];
                snprintf(k, sizeof(k), "%s ", clock_calls[i].name);
                cr_assert(strstr(clock_group, k), "%s not in systemd's @clock: %s", clock_calls[i].name, clock_group);
        }
        static struct names allowed;
        for (size_t u = 0; u < 2; u++) {
                char p[512];
                struct kv kv[96];
                source_unit(p, sizeof(p), units[u]);
                size_t n = unit_section(p, "Service", kv, 96);
                unit_allowed(kv, n, &g, &allowed);
                const char *pc = kv_get(kv, n, "ProtectClock");
                bool protect_clock = pc && (strcmp(pc, "yes") == 0 || strcmp(pc, "true") == 0 || strcmp(pc, "1") == 0);
                const char *cbs = kv_get(kv, n, "CapabilityBoundingSet");
                cr_expect(cbs && !*cbs, "%s: CapabilityBoundingSet= must be empty (no CAP_SYS_TIME), is '%s'", units[u],
                          cbs ? cbs : "(unset)");
                const char *amb = kv_get(kv, n, "AmbientCapabilities");
                cr_expect(!amb || !*amb, "%s: AmbientCapabilities=%s", units[u], amb);

                bool deny[NCLOCK];
                for (size_t i = 0; i < NCLOCK; i++)
                        deny[i] = protect_clock || !names_has(&allowed, clock_calls[i].name);
                int code = probe_clock(deny);
                cr_expect(code & 1, "%s: adjtimex(modes 0) fails under the unit's filter (ProtectClock=%s)", units[u],
                          pc ? pc : "unset");
                cr_expect(code & 2, "%s: settimeofday is not refused", units[u]);
                cr_expect(code & 4, "%s: clock_settime is not refused", units[u]);
        }

        bool all[NCLOCK];
        for (size_t i = 0; i < NCLOCK; i++)
                all[i] = true;
        cr_expect_eq(probe_clock(all) & 1, 0, "with all of @clock denied (ProtectClock=yes) adjtimex still worked");
        for (size_t i = 0; i < g.n; i++)
                free(g.members[i]);
}

/* ---- sd_notify and the watchdog -------------------------------------------------- */

struct note {
        int64_t t;
        char text[256];
};

struct notes {
        int fd;
        struct note v[512];
        size_t n;
};

static void notes_open(struct notes *ns, const char *path)
{
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        cr_assert_lt(strlen(path), sizeof(a.sun_path), "socket path too long: %s", path);
        memcpy(a.sun_path, path, strlen(path) + 1);
        ns->n = 0;
        ns->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert(ns->fd >= 0);
        cr_assert(bind(ns->fd, (struct sockaddr *)&a, sizeof(a)) == 0, "bind %s: %s", path, strerror(errno));
}

/* Collects datagrams until the deadline, or until one contains stop (if given). */
static bool notes_collect(struct notes *ns, int64_t until, const char *stop)
{
        for (;;) {
                int64_t left = until - h_now_ms();
                if (left <= 0)
                        return false;
                struct pollfd pfd = { .fd = ns->fd, .events = POLLIN };
                if (poll(&pfd, 1, (int)left) <= 0)
                        continue;
                char buf[256];
                ssize_t r = recv(ns->fd, buf, sizeof(buf) - 1, 0);
                if (r < 0)
                        continue;
                buf[r] = 0;
                cr_assert_lt(ns->n, 512, "too many notifications");
                ns->v[ns->n].t = h_now_ms();
                snprintf(ns->v[ns->n].text, sizeof(ns->v[0].text), "%s", buf);
                if (stop && strstr(buf, stop))
                        return ns->n++, true;
                ns->n++;
        }
}

/* The WATCHDOG=1 times in [from, to). */
static size_t pings(const struct notes *ns, int64_t from, int64_t to, int64_t *t, size_t max)
{
        size_t k = 0;
        for (size_t i = 0; i < ns->n; i++)
                if (ns->v[i].t >= from && ns->v[i].t < to && strstr(ns->v[i].text, "WATCHDOG=1") && k < max)
                        t[k++] = ns->v[i].t;
        return k;
}

static pid_t spawn_notified(const char *log, const char *notify, const char *conf)
{
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
                char me[32];
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                /* As systemd does for a Type=notify service with WatchdogSec=; the pid is
                 * this process's own, which exec keeps. */
                snprintf(me, sizeof(me), "%d", (int)getpid());
                setenv("NOTIFY_SOCKET", notify, 1);
                setenv("WATCHDOG_USEC", "400000", 1);
                setenv("WATCHDOG_PID", me, 1);
                setenv("KUIMEN_TEST_HOOKS", "1", 1);
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                execl(getenv("KM_KUIMEN"), "kuimen", "--config", conf, (char *)NULL);
                _exit(127);
        }
        return pid;
}

/* READY=1 once running; WATCHDOG=1 about every 100 to 300 ms for a 400 ms watchdog
 * (sd-event pings at most every quarter and at the latest after three quarters of the
 * interval); none while the loop is stalled (test hook), so systemd would restart it;
 * the pings resume after the stall; STOPPING=1 and exit 0 on SIGTERM. */
Test(watchdog, pings_then_stall)
{
        char dir[128], conf[256], sock[256], log[256];
        struct h_broker local, center;
        static struct notes ns;
        h_tmpdir(dir, sizeof(dir), "wd");
        h_broker_start(&local, dir, 0, NULL);
        h_broker_start(&center, dir, 0, NULL);
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", dir);
        snprintf(sock, sizeof(sock), "%s/notify", dir);
        snprintf(log, sizeof(log), "%s/kuimen.log", dir);
        h_write_conf(conf, "wd", dir, local.port, center.port, NULL);
        notes_open(&ns, sock);
        struct h_proc k = { .pid = spawn_notified(log, sock, conf) };
        snprintf(k.log, sizeof(k.log), "%s", log);

        cr_assert(notes_collect(&ns, h_now_ms() + 10000, "READY=1"), "no READY=1 within 10 s; log %s", log);
        cr_expect(strstr(ns.v[ns.n - 1].text, "STATUS=forwarding"), "READY without status: %s", ns.v[ns.n - 1].text);
        int64_t t0 = h_now_ms();
        notes_collect(&ns, t0 + 2000, NULL);
        int64_t t[256];
        size_t np = pings(&ns, t0, t0 + 2000, t, 256);
        int64_t gmin = 1000000, gmax = 0;
        for (size_t i = 1; i < np; i++) {
                int64_t gap = t[i] - t[i - 1];
                gmin = gap < gmin ? gap : gmin;
                gmax = gap > gmax ? gap : gmax;
        }
        cr_log_info("WATCHDOG_USEC=400000: %zu pings in 2 s, gaps %lld to %lld ms", np, (long long)gmin,
                (long long)gmax);
        cr_expect(np >= 5 && np <= 21, "%zu pings in 2 s with a 400 ms watchdog", np);
        cr_expect_lt(gmax, 400, "a gap of %lld ms between pings: systemd would have killed it", (long long)gmax);
        cr_expect_geq(gmin, 50, "pings %lld ms apart: more often than sd-event's quarter interval", (long long)gmin);

        /* Stall the loop for 1.5 s. */
        union sigval v = { .sival_int = 1500 };
        int64_t ts = h_now_ms();
        cr_assert(sigqueue(k.pid, SIGUSR2, v) == 0, "sigqueue: %s", strerror(errno));
        notes_collect(&ns, ts + 2600, NULL);
        cr_expect(h_log_count(&k, "test hook: stalling the loop for 1500 ms") == 1, "the hook did not run; log %s", log);
        size_t during = pings(&ns, ts + 100, ts + 1400, t, 256);
        cr_expect_eq(during, 0, "%zu pings while the loop was stalled", during);
        size_t after = pings(&ns, ts + 1400, ts + 2600, t, 256);
        cr_log_info("stall 1500 ms: %zu pings during it, %zu in the 1.2 s after, first %lld ms after the signal",
                during, after, after ? (long long)(t[0] - ts) : -1LL);
        cr_expect(after >= 3, "pings did not resume after the stall (%zu)", after);
        cr_expect(after && t[0] - ts < 1500 + 400, "first ping after the stall came %lld ms after the signal",
                  after ? (long long)(t[0] - ts) : -1LL);
        int wst;
        cr_expect(waitpid(k.pid, &wst, WNOHANG) == 0, "kuimen died in the stall (status %d)", wst);

        int64_t tterm = h_now_ms();
        kill(k.pid, SIGTERM);
        bool stopping = notes_collect(&ns, tterm + 10000, "STOPPING=1");
        int st = h_stop(&k, SIGTERM);
        cr_expect(stopping, "no STOPPING=1 after SIGTERM");
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen ended with status %d; log %s", st, log);
        close(ns.fd);
        h_stop(&local.p, SIGTERM);
        h_stop(&center.p, SIGTERM);
        h_cleanup(dir);
}
