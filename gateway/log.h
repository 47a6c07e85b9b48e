/* SPDX-License-Identifier: MIT */
/* Logging: one line per event on stderr with the <N> priority prefix journald reads. */
#ifndef KM_LOG_H
#define KM_LOG_H

#include <stdarg.h>

enum km_log_level {
        KM_LOG_ERR = 3,
        KM_LOG_WARNING = 4,
        KM_LOG_NOTICE = 5,
        KM_LOG_INFO = 6,
        KM_LOG_DEBUG = 7,
};

extern int km_log_max_level;

/* Writes "<N>tag: message\n" to stderr in one write(2) so lines from other threads
 * and the loop never interleave. */
void km_log_write(int level, const char *tag, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

#define KM_LOG(level, tag, ...)                                                    \
        do {                                                                       \
                if ((level) <= km_log_max_level)                                   \
                        km_log_write((level), (tag), __VA_ARGS__);                 \
        } while (0)

/* Parses "err", "warning", "notice", "info", "debug"; returns the level or -EINVAL. */
int km_log_parse_level(const char *name);

#endif
