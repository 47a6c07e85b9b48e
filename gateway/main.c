/* SPDX-License-Identifier: MIT */
/* kuimen: parses arguments, loads and checks the config, starts the bridges and runs the loop. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calls.h"
#include "incidents.h"
#include "control.h"
#include "daemon.h"
#include "log.h"
#include "http.h"
#include "metrics.h"
#include "plugin.h"
#include "bridges/gnss.h"
#include "bridges/mqtt.h"
#include "bridges/position.h"

static void usage(FILE *out)
{
        fputs("usage: kuimen [--config FILE] [--live] [--log-level LEVEL]\n"
              "       kuimen --check-config FILE\n"
              "       kuimen --help-config | --print-default-config | --version | --help\n"
              "  -c, --config FILE         run with FILE (else the embedded default)\n"
              "      --live                print the counters that moved, the links and the spool on\n"
              "                            stdout every second\n"
              "      --log-level LEVEL     err, warning, notice, info or debug (over [node] log_level)\n"
              "      --check-config FILE   run every check the start runs on FILE, print FILE: ok or\n"
              "                            each error as FILE:LINE: key: why; exit 0 ok, 1 errors\n"
              "      --help-config         every config key, its type, default and meaning\n"
              "      --print-default-config  the embedded default config\n"
              "  -V, --version             print the version\n"
              "  -h, --help                this text\n"
              "With no --config, kuimen runs its embedded default (kuimen --print-default-config).\n",
              out);
}

static bool is_section(const char *s, const char *prefix)
{
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

/*
 * What the spool needs, tried the way the start would use it but leaving nothing
 * behind: the file opened read-write if it exists, else a file made and removed in the
 * nearest directory of its path that exists (the start makes the missing ones below
 * it). access() is not enough: root passes it for /proc, where nothing can be made.
 */
static void check_spool(struct km_conf *c, const char *path)
{
        char dir[4096], probe[4200], why[4200];
        struct stat st;
        int fd;

        if (stat(path, &st) == 0) {
                if (km_spool_foreign(path, why, sizeof(why)) < 0)
                        km_conf_error(c, "node", "spool", "%s: %s", path, why);
                else if ((fd = open(path, O_RDWR | O_CLOEXEC)) < 0)
                        km_conf_error(c, "node", "spool", "%s: %s", path, strerror(errno));
                else
                        close(fd);
                return;
        }
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (!slash)
                snprintf(dir, sizeof(dir), ".");
        else if (slash == dir)
                slash[1] = '\0';
        else
                *slash = '\0';
        /* Up to the nearest directory that exists ("." or "/" at the top). */
        while (stat(dir, &st) < 0) {
                if (errno != ENOENT) {
                        km_conf_error(c, "node", "spool", "%s: %s", dir, strerror(errno));
                        return;
                }
                if (!(slash = strrchr(dir, '/')))
                        snprintf(dir, sizeof(dir), ".");
                else if (slash == dir)
                        slash[1] = '\0';
                else
                        *slash = '\0';
        }
        if (!S_ISDIR(st.st_mode)) {
                km_conf_error(c, "node", "spool", "%s: not a directory", dir);
                return;
        }
        snprintf(probe, sizeof(probe), "%s/.kuimen-check-XXXXXX", dir);
        if ((fd = mkstemp(probe)) >= 0) {
                close(fd);
                unlink(probe);
        } else {
                km_conf_error(c, "node", "spool", "%s: cannot write in %s: %s", path, dir, strerror(errno));
        }
}

/* The links as the start would run them, on a base: at least one (else messages pile up
 * with no way out), every name in a link's classes a class of the route, and each class
 * carried by some link (a warning: a class may be meant to stay at the base). */
static void check_links(struct km_conf *c, const struct km_node_conf *n, const struct km_route *r)
{
        const char *first_restricted = NULL;
        bool carried[256] = { false }, any = false;

        for (size_t i = 0; i < c->nsections; i++) {
                const char *s = c->sections[i];
                if (!is_section(s, "link ") || !s[5])
                        continue;
                any = true;
                const char *v = km_conf_get(c, s, "classes");
                struct km_strv cl = { 0 };
                if (v && km_strv_split(&cl, v) < 0)
                        continue;
                if (!cl.n) {
                        memset(carried, 1, sizeof(carried));
                        continue;
                }
                if (!first_restricted)
                        first_restricted = s;
                for (size_t k = 0; k < cl.n; k++) {
                        size_t j;
                        for (j = 0; j < r->n && strcmp(r->cls[j].name, cl.v[k]) != 0; j++)
                                ;
                        if (j < r->n) {
                                carried[j < 256 ? j : 255] = true;
                                continue;
                        }
                        char known[512] = "";
                        for (size_t q = 0, o = 0; q < r->n && o < sizeof(known); q++)
                                o += (size_t)snprintf(known + o, sizeof(known) - o, "%s%s", q ? ", " : "", r->cls[q].name);
                        km_conf_error(c, s, "classes", "'%s' is not a class (the classes: %s)", cl.v[k], known);
                }
                km_strv_free(&cl);
        }
        if (!n->role || strcmp(n->role, "base") != 0)
                return;
        if (!any) {
                km_conf_error(c, "node", NULL, "a base needs a [link NAME]: without one its messages are spooled with no way out");
                return;
        }
        char none[512] = "";
        size_t o = 0, nn = 0;
        for (size_t j = 0; j < r->n && j < 256 && o < sizeof(none); j++)
                if (!carried[j])
                        o += (size_t)snprintf(none + o, sizeof(none) - o, "%s%s", nn++ ? ", " : "", r->cls[j].name);
        if (nn)
                km_conf_warn(c, first_restricted, "classes",
                             "no link may carry class%s %s (no link's classes name %s): %s messages stay in the spool until their ttl",
                             nn > 1 ? "es" : "", none, nn > 1 ? "them" : "it", nn > 1 ? "their" : "its");
}

/* Validates everything the start uses; errors land in c->errors, warnings in
 * c->warnings. On success n is filled. */
static int check_all(struct km_conf *c, struct km_node_conf *n)
{
        struct km_route r;
        int rrc;

        km_node_conf_load(n, c);
        if ((rrc = km_route_load(&r, c)) != -ENOMEM) {
                check_links(c, n, &r);
                km_route_deinit(&r);
        }
        if (n->spool)
                check_spool(c, n->spool);
        km_mqtt_local_check(c);
        for (size_t i = 0; i < c->nsections; i++) {
                const char *s = c->sections[i];
                if (strcmp(s, "node") == 0 || strcmp(s, "local") == 0 || strcmp(s, "gnss") == 0 || strcmp(s, "positions") == 0 ||
                    strcmp(s, "control") == 0 || strcmp(s, "metrics") == 0 || strcmp(s, "http") == 0 || strcmp(s, "calls") == 0 ||
                    strcmp(s, "incidents") == 0 || is_section(s, "calls ") || is_section(s, "class "))
                        continue;
                if (is_section(s, "link ") && s[5]) {
                        const char *type = km_conf_get(c, s, "type");
                        if (!type || strcmp(type, "mqtt") == 0)
                                km_mqtt_link_check(c, s);
                        else if (!*type || strchr(type, '/') || strchr(type, '.'))
                                km_conf_error(c, s, "type", "'%s' is not a link type", type);
                        else
                                km_plugin_check(c, s, n->plugin_dir);
                        continue;
                }
                km_conf_error(c, s, NULL, "unknown section [%s]", s);
        }
        km_gnss_check(c);
        km_positions_check(c);
        km_control_check(c);
        km_metrics_check(c);
        km_http_check(c);
        km_calls_check(c);
        km_incidents_check(c);
        km_conf_check_unused(c);
        return c->nerrors ? -EINVAL : 0;
}

/* The daemon's reload runs the same checks (gateway/ cannot call the bridges). */
static int check_config(struct km_conf *c)
{
        struct km_node_conf n = { 0 };
        int rc = check_all(c, &n);
        km_node_conf_release(&n);
        return rc;
}

/* Loads and checks path (NULL: the embedded default), printing errors and warnings:
 * plain for --check-config (check), with their priority for the journal at the start. */
static int load(struct km_conf *c, struct km_node_conf *n, const char *path, bool check)
{
        int rc = km_conf_load(c, path ? path : "<embedded default>", path ? NULL : km_default_config);
        if (rc < 0) {
                fprintf(stderr, "%s: %s%s\n", path, strerror(-rc), rc == -EISDIR ? ": a config is a file" : "");
                return rc;
        }
        if (c->nerrors == 0)
                check_all(c, n);
        for (size_t i = 0; i < c->nerrors; i++)
                fprintf(stderr, "%s\n", c->errors[i]);
        for (size_t i = 0; i < c->nwarnings; i++) {
                if (check)
                        fprintf(stderr, "%s\n", c->warnings[i]);
                else
                        KM_LOG(KM_LOG_WARNING, "config", "%s", c->warnings[i]);
        }
        return c->nerrors ? -EINVAL : 0;
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "config", required_argument, NULL, 'c' },
                { "check-config", required_argument, NULL, 'k' },
                { "help-config", no_argument, NULL, 'H' },
                { "print-default-config", no_argument, NULL, 'P' },
                { "live", no_argument, NULL, 'l' },
                { "log-level", required_argument, NULL, 'L' },
                { "version", no_argument, NULL, 'V' },
                { "help", no_argument, NULL, 'h' },
                { NULL, 0, NULL, 0 },
        };
        const char *path = NULL, *check = NULL, *level = NULL;
        bool live = false;
        int o;

        while ((o = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
                switch (o) {
                case 'c': path = optarg; break;
                case 'k': check = optarg; break;
                case 'l': live = true; break;
                case 'L': level = optarg; break;
                case 'H':
                        km_node_print_help(stdout);
                        km_mqtt_print_help(stdout);
                        km_plugin_print_help(stdout);
                        km_gnss_print_help(stdout);
                        km_positions_print_help(stdout);
                        km_control_print_help(stdout);
                        km_metrics_print_help(stdout);
                        km_http_print_help(stdout);
                        km_calls_print_help(stdout);
                        km_incidents_print_help(stdout);
                        km_route_print_help(stdout);
                        return 0;
                case 'P': fputs(km_default_config, stdout); return 0;
                case 'V': puts("kuimen " KM_VERSION); return 0;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        }
        if (optind < argc) {
                usage(stderr);
                return 2;
        }

        struct km_conf c;
        struct km_node_conf n = { 0 };
        if (check) {
                int rc = load(&c, &n, check, true);
                if (rc == 0)
                        printf("%s: ok\n", check);
                km_node_conf_release(&n);
                km_conf_deinit(&c);
                return rc == 0 ? 0 : 1;
        }
        if (load(&c, &n, path, false) < 0) {
                km_node_conf_release(&n);
                km_conf_deinit(&c);
                return 1;
        }
        if (level || n.log_level)
                km_log_max_level = km_log_parse_level(level ? level : n.log_level);
        if (km_log_max_level < 0) {
                fprintf(stderr, "--log-level: '%s' is not err, warning, notice, info or debug\n", level);
                return 2;
        }

        struct km_daemon d;
        int rc = km_daemon_init(&d, &n, &c, path);
        d.live = live;
        d.check_config = check_config;
        d.clock = km_gnss_clock;
        if (rc == 0 && strcmp(d.node.role, "base") == 0)
                rc = km_calls_start(&d, &c);
        if (rc == 0)
                rc = km_incidents_start(&d, &c);
        if (rc == 0)
                rc = km_mqtt_local_start(&d, &c);
        /* mqtt links first: a narrow link on a center takes their topic prefix. */
        for (size_t i = 0; rc == 0 && i < c.nsections; i++) {
                const char *type = is_section(c.sections[i], "link ") ? km_conf_get(&c, c.sections[i], "type") : NULL;
                if (is_section(c.sections[i], "link ") && (!type || strcmp(type, "mqtt") == 0))
                        rc = km_mqtt_link_start(&d, &c, c.sections[i]);
        }
        for (size_t i = 0; rc == 0 && i < c.nsections; i++) {
                const char *type = is_section(c.sections[i], "link ") ? km_conf_get(&c, c.sections[i], "type") : NULL;
                if (type && strcmp(type, "mqtt") != 0)
                        rc = km_plugin_link_start(&d, &c, c.sections[i]);
        }
        if (rc == 0)
                rc = km_gnss_start(&d, &c);
        if (rc == 0)
                rc = km_control_start(&d, &c);
        if (rc == 0)
                rc = km_metrics_start(&d, &c);
        if (rc == 0)
                rc = km_http_start(&d, &c);
        km_conf_deinit(&c);
        if (rc < 0) {
                KM_LOG(KM_LOG_ERR, "main", "cannot start: %s", strerror(-rc));
                km_daemon_deinit(&d);
                return 1;
        }
        rc = km_daemon_run(&d);
        km_daemon_deinit(&d);
        return rc;
}
