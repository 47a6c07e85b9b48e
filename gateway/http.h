/* SPDX-License-Identifier: MIT */
/* The command post view: the web page, its JSON API and its live events over libmicrohttpd, on the daemon's loop. */
#ifndef KM_HTTP_H
#define KM_HTTP_H

#include <stdbool.h>
#include <stdio.h>
#include <sys/socket.h>

#include "config.h"

struct km_daemon;

/* Parses "127.0.0.1:8080", "[::1]:8080" or "localhost:8080" into sa. Numeric only (and
 * localhost): a check of the config must not wait for DNS. Returns NULL or why not. */
const char *km_http_parse_listen(const char *s, struct sockaddr_storage *sa, socklen_t *salen);

/* Whether sa is a loopback address (127.0.0.0/8, ::1). */
bool km_http_is_loopback(const struct sockaddr_storage *sa);

/* Validates [http] into errors of c: the address, the files it names (readable), and
 * off loopback TLS (cert, key) and a password_file or client_ca. 0 or -EINVAL. */
int km_http_check(struct km_conf *c);

/* Serves the page on [http] listen when it is set, on d's loop (no thread). A port that
 * cannot be bound, or TLS files that cannot be loaded, are logged and kuimen runs
 * without the page. Returns 0 or -ENOMEM. */
int km_http_start(struct km_daemon *d, struct km_conf *c);

struct km_control_buf;

/* Serves GET /metrics on listen (already checked) with the text produce writes, on the
 * same loop integration as the page, no TLS and no authentication ([metrics] is for a
 * local scraper). A port that cannot be bound is logged and kuimen runs without
 * metrics. Returns 0 or -ENOMEM. */
int km_http_metrics_start(struct km_daemon *d, const char *listen,
                          void (*produce)(struct km_daemon *d, struct km_control_buf *b));

/* Prints the [http] keys for --help-config. */
void km_http_print_help(FILE *out);

#endif
