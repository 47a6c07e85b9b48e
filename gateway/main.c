/* SPDX-License-Identifier: MIT */
/* kuimen: parses arguments, loads and checks the config, starts the bridges and runs the loop. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control.h"
#include "daemon.h"
#include "log.h"
#include "metrics.h"
#include "plugin.h"
#include "bridges/gnss.h"
#include "bridges/mqtt.h"
#include "bridges/position.h"

static void usage(FILE *out)
{
        fputs("usage: kuimen [--config FILE] [--live] [--log-level LEVEL]\n"
              "       kuimen --check-config FILE\n"
              "       kuimen --help-config\n"
              "With no --config, kuimen runs its embedded default (kuimen --print-default-config).\n",
              out);
}

static bool is_section(const char *s, const char *prefix)
{
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Validates everything; errors land in c->errors. On success n is filled. */
static int check_all(struct km_conf *c, struct km_node_conf *n)
{
        struct km_route r;

        km_node_conf_load(n, c);
        if (km_route_load(&r, c) != -ENOMEM)
                km_route_deinit(&r);
        km_mqtt_local_check(c);
        for (size_t i = 0; i < c->nsections; i++) {
                const char *s = c->sections[i];
                if (strcmp(s, "node") == 0 || strcmp(s, "local") == 0 || strcmp(s, "gnss") == 0 || strcmp(s, "positions") == 0 ||
                    strcmp(s, "control") == 0 || strcmp(s, "metrics") == 0 ||
                    is_section(s, "class "))
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
        km_conf_check_unused(c);
        return c->nerrors ? -EINVAL : 0;
}

static int load(struct km_conf *c, struct km_node_conf *n, const char *path)
{
        int rc = km_conf_load(c, path ? path : "<embedded default>", path ? NULL : km_default_config);
        if (rc < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(-rc));
                return rc;
        }
        if (c->nerrors == 0)
                check_all(c, n);
        for (size_t i = 0; i < c->nerrors; i++)
                fprintf(stderr, "%s\n", c->errors[i]);
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
                int rc = load(&c, &n, check);
                if (rc == 0)
                        printf("%s: ok\n", check);
                km_node_conf_release(&n);
                km_conf_deinit(&c);
                return rc == 0 ? 0 : 1;
        }
        if (load(&c, &n, path) < 0) {
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
        d.clock = km_gnss_clock;
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
