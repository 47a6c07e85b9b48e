/* SPDX-License-Identifier: MIT */
/* The strict config path (issue 13): what --check-config refuses, what the start refuses alike, what a reload cannot apply, and both binaries' --version and --help. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define OUT_MAX 16384

/* A base that passes every check: the tests below change one thing in it. The spool
 * is under the test's directory, the center's port is never listened on (no check
 * connects). */
static void base_conf(char *out, size_t n, const char *dir, const char *node_extra, const char *link_extra,
                      const char *more)
{
        snprintf(out, n,
                 "[node]\nname = north\nspool = %s/state/spool.db\n%s"
                 "[local]\nuri = tcp://127.0.0.1:1883\n"
                 "[link center]\nuri = tcp://127.0.0.1:1884\n%s%s",
                 dir, node_extra ? node_extra : "", link_extra ? link_extra : "", more ? more : "");
}

/* Replaces the first from in text (of size n) with to. */
static void replace(char *text, size_t n, const char *from, const char *to)
{
        char *p = strstr(text, from);
        cr_assert(p, "no '%s' in %s", from, text);
        size_t fl = strlen(from), tl = strlen(to), rest = strlen(p + fl);
        cr_assert(strlen(text) - fl + tl < n);
        memmove(p + tl, p + fl, rest + 1);
        memcpy(p, to, tl);
}

/* Writes text to dir/k.conf and runs kuimen with opt (--check-config or --config) on
 * it; returns the exit code, stdout and stderr in out. */
static int run_conf(const char *dir, const char *opt, const char *text, char *out, size_t n, char *path, size_t pn)
{
        snprintf(path, pn, "%s/k.conf", dir);
        h_write_text(path, text);
        const char *args[] = { opt, path, NULL };
        return h_kuimen_run(args, out, n);
}

static int check(const char *dir, const char *text, char *out, char *path)
{
        return run_conf(dir, "--check-config", text, out, OUT_MAX, path, 300);
}

/* out has a line that is exactly "<path>:<rest>". */
static bool has_line(const char *out, const char *path, const char *rest)
{
        char want[1600];
        snprintf(want, sizeof(want), "%s:%s\n", path, rest);
        for (const char *p = out; (p = strstr(p, want)); p++)
                if (p == out || p[-1] == '\n')
                        return true;
        return false;
}

Test(config_cli, a_good_base_is_ok)
{
        char dir[200], text[2048], out[OUT_MAX], path[300], want[400];
        h_tmpdir(dir, sizeof(dir), "cfg-ok");
        base_conf(text, sizeof(text), dir, NULL, NULL, NULL);
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);
        snprintf(want, sizeof(want), "%s: ok\n", path);
        cr_assert_str_eq(out, want);
        /* --check-config made nothing: the spool's directory is the start's business. */
        snprintf(want, sizeof(want), "%s/state", dir);
        cr_assert_neq(access(want, F_OK), 0);
        h_cleanup(dir);
}

/* Each of these passed --check-config on main and then failed or misbehaved at the
 * start (issue 13, "What was measured", 3). */
Test(config_cli, check_config_runs_the_start_checks)
{
        char dir[200], text[2048], out[OUT_MAX], path[300], line[1200];
        h_tmpdir(dir, sizeof(dir), "cfg-check");

        /* A port out of range: FILE:LINE, from --check-config and from the start alike. */
        base_conf(text, sizeof(text), dir, NULL, NULL, NULL);
        replace(text, sizeof(text), "1884", "99999");
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(has_line(out, path, "7: uri: 'tcp://127.0.0.1:99999': not scheme://host[:port] with a port from 1 to 65535"),
                  "%s", out);
        cr_assert_eq(run_conf(dir, "--config", text, out, sizeof(out), path, sizeof(path)), 1, "%s", out);
        cr_assert(has_line(out, path, "7: uri: 'tcp://127.0.0.1:99999': not scheme://host[:port] with a port from 1 to 65535"),
                  "%s", out);
        base_conf(text, sizeof(text), dir, NULL, NULL, NULL);
        replace(text, sizeof(text), "1883", "1883x");
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(has_line(out, path, "5: uri: 'tcp://127.0.0.1:1883x': not scheme://host[:port] with a port from 1 to 65535"),
                  "%s", out);

        /* A node name that is not UTF-8. */
        base_conf(text, sizeof(text), dir, NULL, NULL, NULL);
        replace(text, sizeof(text), "north", "n\xffrth");
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(has_line(out, path, "2: name: not valid UTF-8, or holds a control character (in [node])"), "%s", out);

        /* TLS files that do not exist, and a key without its certificate. */
        char link[600];
        snprintf(link, sizeof(link), "ca = %s/nope-ca.pem\nkey = %s/nope.key\n", dir, dir);
        base_conf(text, sizeof(text), dir, NULL, link, NULL);
        replace(text, sizeof(text), "tcp://127.0.0.1:1884", "ssl://127.0.0.1:8883");
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        snprintf(line, sizeof(line), "8: ca: %s/nope-ca.pem: No such file or directory", dir);
        cr_assert(has_line(out, path, line), "%s", out);
        snprintf(line, sizeof(line), "9: key: %s/nope.key: No such file or directory", dir);
        cr_assert(has_line(out, path, line), "%s", out);
        cr_assert(has_line(out, path, "9: key: cert and key go together: give both or neither"), "%s", out);

        /* A spool nobody can make: under /proc. */
        base_conf(text, sizeof(text), dir, NULL, NULL, NULL);
        replace(text, sizeof(text), "spool = ", "spool = /proc/kuimen/spool.db\n; ");
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(strstr(out, ":3: spool: /proc/kuimen/spool.db: cannot write in /proc: "), "%s", out);

        /* A file that is no spool (spool = /etc/passwd): damage recovery would have
         * renamed it aside, as root. Refused by the check and by the start, untouched. */
        char foreign[300], lock[320], buf[64];
        snprintf(foreign, sizeof(foreign), "%s/passwd", dir);
        h_write_text(foreign, "root:x:0:0:root:/root:/bin/bash\n");
        snprintf(line, sizeof(line), "spool = %s\n; ", foreign);
        base_conf(text, sizeof(text), dir, NULL, NULL, NULL);
        replace(text, sizeof(text), "spool = ", line);
        snprintf(line, sizeof(line),
                 "3: spool: %s: not a Kuimen spool (no SQLite header, no %s.lock beside it); kuimen will not touch it",
                 foreign, foreign);
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(has_line(out, path, line), "%s", out);
        cr_assert_eq(run_conf(dir, "--config", text, out, sizeof(out), path, sizeof(path)), 1, "%s", out);
        cr_assert(has_line(out, path, line), "%s", out);
        snprintf(lock, sizeof(lock), "%s.lock", foreign);
        cr_assert_neq(access(lock, F_OK), 0, "kuimen made %s", lock);
        FILE *f = fopen(foreign, "r");
        cr_assert(f && fgets(buf, sizeof(buf), f));
        fclose(f);
        cr_assert_str_eq(buf, "root:x:0:0:root:/root:/bin/bash\n");

        /* A plugin's own key with a value its open() refuses (the plugin's check op). */
        char node[400], sat[200];
        snprintf(node, sizeof(node), "plugin_dir = %s\n", getenv("KM_SIM_PLUGIN_DIR"));
        snprintf(sat, sizeof(sat), "[link sat]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\nloss = 2\nauth = off\n",
                 h_free_port(), h_free_port());
        base_conf(text, sizeof(text), dir, node, NULL, sat);
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(has_line(out, path, "13: loss: sim: loss = '2': not a probability 0..1 (probability 0..1 that a frame is lost)"),
                  "%s", out);
        replace(text, sizeof(text), "loss = 2", "loss = 0.5");
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);

        /* A center link to two bases that would send commands through a plugin that cannot
         * address frames (sim has no send_to): a command frame names no base, so south's
         * would be published by north. Refused by the check and the start. */
        snprintf(node, sizeof(node), "plugin_dir = %s\nrole = center\n", getenv("KM_SIM_PLUGIN_DIR"));
        snprintf(sat, sizeof(sat), "[link sat]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\npeers = north, south\n",
                 h_free_port(), h_free_port());
        base_conf(text, sizeof(text), dir, node, NULL, sat);
        const char *shared = "14: peers: a center link that sends commands to several bases needs a plugin that "
                             "addresses frames (send_to, ABI 1.2: beidou, pdt); through this one a command for one "
                             "base would reach whichever base hears the link; set commands = no here (and a link per "
                             "base for commands), or one peer";
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(has_line(out, path, shared), "%s", out);
        cr_assert_eq(run_conf(dir, "--config", text, out, sizeof(out), path, sizeof(path)), 1, "%s", out);
        cr_assert(has_line(out, path, shared), "%s", out);
        replace(text, sizeof(text), "peers = north, south", "peers = north, south\ncommands = no");
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);
        replace(text, sizeof(text), "peers = north, south\ncommands = no", "peers = north");
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);

        /* An MQTT version, and a 3.1.1 meta form, that do not exist (issue 15). */
        base_conf(text, sizeof(text), dir, NULL, "protocol = 4\nv311_meta = suffix\n", NULL);
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(has_line(out, path, "8: protocol: '4' is not one of: auto 5 3.1.1"), "%s", out);
        cr_assert(has_line(out, path, "9: v311_meta: 'suffix' is not one of: envelope none"), "%s", out);
        base_conf(text, sizeof(text), dir, NULL, "protocol = 3.1.1\nv311_meta = none\n", NULL);
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);

        /* A link's classes name a class that does not exist. */
        base_conf(text, sizeof(text), dir, NULL, "classes = alert, nonsense\n", NULL);
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(has_line(out, path, "8: classes: 'nonsense' is not a class (the classes: alert, command, position, status, "
                                      "telemetry, bulk)"),
                  "%s", out);
        h_cleanup(dir);
}

/* An empty file, a directory and a base with no link ran as node "base" with messages
 * piling up with no way out; now each is an error that says so. */
Test(config_cli, nothing_to_run_is_an_error)
{
        char dir[200], text[2048], out[OUT_MAX], path[300], want[600];
        h_tmpdir(dir, sizeof(dir), "cfg-empty");
        cr_assert_eq(check(dir, "", out, path), 1, "%s", out);
        snprintf(want, sizeof(want), "%s: empty: no key in any [section] (kuimen --print-default-config shows a config)\n", path);
        cr_assert_str_eq(out, want);
        cr_assert_eq(run_conf(dir, "--config", "; only a comment\n", out, sizeof(out), path, sizeof(path)), 1, "%s", out);
        cr_assert_str_eq(out, want);

        const char *args[] = { "--check-config", dir, NULL };
        cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 1, "%s", out);
        snprintf(want, sizeof(want), "%s: Is a directory: a config is a file\n", dir);
        cr_assert_str_eq(out, want);

        snprintf(text, sizeof(text), "[node]\nname = north\nspool = %s/state/spool.db\n[local]\nuri = tcp://127.0.0.1:1883\n", dir);
        cr_assert_eq(check(dir, text, out, path), 1, "%s", out);
        cr_assert(has_line(out, path, "3: -: a base needs a [link NAME]: without one its messages are spooled with no way out"),
                  "%s", out);
        h_cleanup(dir);
}

/* Warnings: said, and the config still passes. */
Test(config_cli, warnings_do_not_refuse)
{
        char dir[200], text[2048], out[OUT_MAX], path[300], files[900], pem[300];
        h_tmpdir(dir, sizeof(dir), "cfg-warn");
        /* Only alerts may leave: the other classes have no link. */
        base_conf(text, sizeof(text), dir, NULL, "classes = alert\n", NULL);
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);
        cr_assert(has_line(out, path, "8: classes: warning: no link may carry classes command, position, status, telemetry, "
                                      "bulk (no link's classes name them): their messages stay in the spool until their ttl"),
                  "%s", out);

        /* A control socket where none can be made: the start runs on without it. */
        base_conf(text, sizeof(text), dir, NULL, NULL, "[control]\nsocket = /proc/nope/kuimen.sock\n");
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);
        cr_assert(has_line(out, path, "9: socket: warning: /proc/nope: No such file or directory: kuimen would run without "
                                      "its control socket"),
                  "%s", out);

        /* A TLS private key others can read. */
        const char *names[] = { "ca.pem", "cert.pem", "key.pem" };
        for (int i = 0; i < 3; i++) {
                snprintf(pem, sizeof(pem), "%s/%s", dir, names[i]);
                h_write_text(pem, "-----BEGIN PLACEHOLDER-----\n");
                chmod(pem, 0644);
        }
        snprintf(files, sizeof(files), "ca = %s/ca.pem\ncert = %s/cert.pem\nkey = %s/key.pem\n", dir, dir, dir);
        base_conf(text, sizeof(text), dir, NULL, files, NULL);
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);
        char line[600];
        snprintf(line, sizeof(line), "10: key: warning: %s/key.pem: mode 0644: a private key every user can read: chmod 600 (or 640 for group kuimen)", dir);
        cr_assert(has_line(out, path, line), "%s", out);
        snprintf(pem, sizeof(pem), "%s/key.pem", dir);
        chmod(pem, 0600);
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);
        cr_assert_null(strstr(out, "warning"), "%s", out);
        h_cleanup(dir);
}

/* Lines longer than 199 bytes were split, and the rest read as a line of its own: a
 * long comment ending in a key set that key. */
Test(config_cli, a_long_comment_sets_nothing)
{
        char dir[200], text[4096], out[OUT_MAX], path[300], comment[400];
        h_tmpdir(dir, sizeof(dir), "cfg-long");
        memset(comment, 'x', 300);
        comment[0] = ';';
        strcpy(comment + 300, " name = a/b\n");
        base_conf(text, sizeof(text), dir, comment, NULL, NULL);
        cr_assert_eq(check(dir, text, out, path), 0, "%s", out);
        h_cleanup(dir);
}

/* ---- reload ---------------------------------------------------------------------- */

/* Runs kuimenctl with args; stdout into out, stderr into err; returns its exit code. */
static int ctl(const char *sock, const char *args, char *out, char *err, size_t n)
{
        char cmd[1024], errpath[300];
        snprintf(errpath, sizeof(errpath), "%s.err", sock);
        snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' %s 2>'%s'", h_ctl_path(), sock, args, errpath);
        FILE *f = popen(cmd, "r");
        cr_assert(f, "popen %s", cmd);
        size_t len = fread(out, 1, n - 1, f);
        out[len] = '\0';
        int st = pclose(f);
        f = fopen(errpath, "r");
        cr_assert(f);
        len = fread(err, 1, n - 1, f);
        err[len] = '\0';
        fclose(f);
        cr_assert(WIFEXITED(st), "kuimenctl died (%d)", st);
        return WEXITSTATUS(st);
}

/* A reload that changed keys it cannot apply said "reloaded" and exited 0: the change
 * was silently ignored. Now each such key is named, in the log and to kuimenctl,
 * which exits 4; a config that fails a start check is refused whole. */
Test(config_cli, reload_names_what_needs_a_restart, .timeout = 60)
{
        char dir[200], out[OUT_MAX], err[OUT_MAX], conf[300], log[300], sock[300], want[800], ctlx[400];
        struct h_broker local;
        struct h_proc k;
        h_tmpdir(dir, sizeof(dir), "cfg-reload");
        h_broker_start(&local, dir, 0, NULL);
        snprintf(conf, sizeof(conf), "%s/k.conf", dir);
        snprintf(log, sizeof(log), "%s/kuimen.log", dir);
        snprintf(sock, sizeof(sock), "%s/kuimen.sock", dir);
        snprintf(ctlx, sizeof(ctlx), "[control]\nsocket = %s\n", sock);
        int cport = h_free_port();
        h_write_conf(conf, "north", dir, local.port, cport, ctlx);
        const char *args[] = { "--config", conf, NULL };
        h_kuimen_start(&k, log, args);
        cr_assert(h_log_wait(&k, "control: listening on", 10000), "no control socket");

        /* Nothing changed: as before. */
        cr_assert_eq(ctl(sock, "reload", out, err, sizeof(out)), 0, "%s%s", out, err);
        cr_assert_str_empty(err);

        /* The link's uri and window changed, and a class came: the class is applied,
         * the rest named. (h_write_conf's extra lines go into [link center] first.) */
        char extra[600];
        snprintf(extra, sizeof(extra), "window = 9\n%s[class drill]\nmatch = drill/#\npriority = 6\n", ctlx);
        h_write_conf(conf, "north", dir, local.port, cport == 1884 ? 1885 : 1884, extra);
        cr_assert_eq(ctl(sock, "reload", out, err, sizeof(out)), 4, "%s%s", out, err);
        snprintf(want, sizeof(want), "reloaded routes and classes from %s (7 classes)\n", conf);
        cr_assert_str_eq(out, want);
        cr_assert_str_eq(err, "restart needed: [link center] uri, window\n");
        cr_assert(h_log_wait(&k, "reload: restart needed: [link center] uri, window (changed, not applied)", 5000));
        cr_assert_eq(ctl(sock, "reload --json", out, err, sizeof(out)), 4, "%s%s", out, err);
        cr_assert(strstr(out, "\"classes\":7,\"restart_needed\":[\"[link center] uri, window\"]"), "%s", out);

        /* A config the start would refuse is refused by the reload, with FILE:LINE. */
        h_write_conf(conf, "north", dir, local.port, 99999, extra);
        cr_assert_eq(ctl(sock, "reload", out, err, sizeof(out)), 1, "%s%s", out, err);
        cr_assert(strstr(err, "reload refused, the running routes stay:\n"), "%s", err);
        snprintf(want, sizeof(want), "  %s:10: uri: 'tcp://127.0.0.1:99999': not scheme://host[:port] with a port from 1 to 65535\n", conf);
        cr_assert(strstr(err, want), "%s", err);

        int st = h_stop(&k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 on SIGTERM (status %d)", st);
        h_stop(&local.p, SIGTERM);
        h_cleanup(dir);
}

/* ---- the command lines ----------------------------------------------------------- */

/* Runs a shell command; its output (stdout and stderr) into out, its exit code back. */
static int sh(const char *cmd, char *out, size_t n)
{
        FILE *f = popen(cmd, "r");
        cr_assert(f);
        size_t len = fread(out, 1, n - 1, f);
        out[len] = '\0';
        int st = pclose(f);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(config_cli, version_and_help_on_both)
{
        char cmd[700], out[OUT_MAX];
        const char *kuimen = getenv("KM_KUIMEN"), *kuimenctl = getenv("KM_KUIMENCTL");
        const char *kopts[] = { "--config", "--check-config", "--help-config", "--print-default-config", "--live",
                                "--log-level", "--version", "--help", NULL };
        const char *copts[] = { "--socket", "--json", "--version", "--help", NULL };
        const struct {
                const char *bin, *name;
                const char *const *opts;
        } b[] = { { kuimen, "kuimen", kopts }, { kuimenctl, "kuimenctl", copts } };

        for (int i = 0; i < 2; i++) {
                snprintf(cmd, sizeof(cmd), "'%s' --version 2>&1", b[i].bin);
                cr_assert_eq(sh(cmd, out, sizeof(out)), 0, "%s: %s", cmd, out);
                char want[64];
                snprintf(want, sizeof(want), "%s ", b[i].name);
                cr_assert(strncmp(out, want, strlen(want)) == 0 && strchr("0123456789", out[strlen(want)]) &&
                                  strchr(out, '\n') == out + strlen(out) - 1,
                          "%s: %s", cmd, out);
                snprintf(cmd, sizeof(cmd), "'%s' -V 2>&1", b[i].bin);
                char again[128];
                cr_assert_eq(sh(cmd, again, sizeof(again)), 0);
                cr_assert_str_eq(again, out);

                snprintf(cmd, sizeof(cmd), "'%s' --help 2>&1", b[i].bin);
                cr_assert_eq(sh(cmd, out, sizeof(out)), 0, "%s: %s", cmd, out);
                for (const char *const *o = b[i].opts; *o; o++) {
                        char word[64];
                        snprintf(word, sizeof(word), "%s ", *o);
                        char *p = strstr(out, word);
                        if (!p) {
                                snprintf(word, sizeof(word), "%s\n", *o);
                                p = strstr(out, word);
                        }
                        cr_expect(p, "%s --help does not list %s:\n%s", b[i].name, *o, out);
                }
                snprintf(cmd, sizeof(cmd), "'%s' --no-such-option 2>&1", b[i].bin);
                cr_assert_eq(sh(cmd, out, sizeof(out)), 2, "%s: %s", cmd, out);
                cr_assert(strstr(out, "usage: "), "%s", out);
        }
}

/* ---- install ----------------------------------------------------------------------- */

/* meson install wrote the config 0644 and a reinstall overwrote an operator's config
 * (issue 13): now an existing config stays and the default goes beside it as
 * kuimen.conf.example; a config holding a password in clear is never world-readable. */
Test(config_cli, install_keeps_the_operators_config)
{
        char dir[200], cmd[2400], out[OUT_MAX], conf[600], example[640], src[400];
        struct stat st;
        h_tmpdir(dir, sizeof(dir), "cfg-install");
        snprintf(cmd, sizeof(cmd), "meson install -C '%s' --no-rebuild --destdir '%s/root' --quiet 2>&1",
                 getenv("KM_BUILD_ROOT"), dir);
        snprintf(conf, sizeof(conf), "%s/root%s/kuimen/kuimen.conf", dir, getenv("KM_SYSCONFDIR"));
        snprintf(example, sizeof(example), "%s.example", conf);
        cr_assert_eq(sh(cmd, out, sizeof(out)), 0, "%s", out);
        cr_assert(stat(conf, &st) == 0 && S_ISREG(st.st_mode), "%s", conf);
        cr_assert_eq(st.st_mode & 07777, 0644, "the default holds no secret: %o", st.st_mode & 07777);
        cr_assert_neq(access(example, F_OK), 0);

        /* The operator's own config, with a password: a reinstall leaves it be. */
        FILE *f = fopen(conf, "a");
        cr_assert(f);
        fputs("; the operator's\n", f);
        fclose(f);
        chmod(conf, 0600);
        cr_assert_eq(sh(cmd, out, sizeof(out)), 0, "%s", out);
        cr_assert(stat(conf, &st) == 0);
        cr_assert_eq(st.st_mode & 07777, 0600);
        snprintf(cmd, sizeof(cmd), "tail -n 1 '%s'", conf);
        cr_assert_eq(sh(cmd, out, sizeof(out)), 0);
        cr_assert_str_eq(out, "; the operator's\n");
        cr_assert(stat(example, &st) == 0 && S_ISREG(st.st_mode), "no %s", example);
        snprintf(cmd, sizeof(cmd), "cmp '%s' '%s/config/kuimen.conf'", example, getenv("KM_SOURCE_ROOT"));
        cr_assert_eq(sh(cmd, out, sizeof(out)), 0, "%s", out);

        /* A config with a password in clear goes in 0640, the default and the example alike. */
        snprintf(src, sizeof(src), "%s/kuimen.conf", dir);
        h_write_text(src, "[link center]\nuri = tcp://c:1883\npassword = s3cret\n");
        snprintf(cmd, sizeof(cmd), "DESTDIR='%s/two' sh '%s/config/install-config.sh' '%s' /etc/kuimen 2>&1; "
                                   "DESTDIR='%s/two' sh '%s/config/install-config.sh' '%s' /etc/kuimen 2>&1",
                 dir, getenv("KM_SOURCE_ROOT"), src, dir, getenv("KM_SOURCE_ROOT"), src);
        cr_assert_eq(sh(cmd, out, sizeof(out)), 0, "%s", out);
        snprintf(conf, sizeof(conf), "%s/two/etc/kuimen/kuimen.conf", dir);
        cr_assert(stat(conf, &st) == 0);
        cr_assert_eq(st.st_mode & 07777, 0640, "%o", st.st_mode & 07777);
        snprintf(example, sizeof(example), "%s.example", conf);
        cr_assert(stat(example, &st) == 0);
        cr_assert_eq(st.st_mode & 07777, 0640, "%o", st.st_mode & 07777);
        h_cleanup(dir);
}
