/* SPDX-License-Identifier: MIT */
/* The command post page's files, compiled in (gateway/web/embed.py generates the table). */
#ifndef KM_WEB_H
#define KM_WEB_H

#include <stddef.h>

struct km_web_asset {
        const char *path; /* "/index.html" */
        const char *type; /* Content-Type */
        const unsigned char *data;
        size_t len;
};

/* Ends with a row whose path is NULL. */
extern const struct km_web_asset km_web_assets[];

#endif
