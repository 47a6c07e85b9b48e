/* SPDX-License-Identifier: MIT */
/* Logging: one line per event on stderr with the <N> priority prefix journald reads. */
#ifndef KM_LOG_H
#define KM_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

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

/* Bad input from outside comes as fast as a peer sends it: a limiter lets one line
 * through per interval and counts the ones it held back, which the next line says. */
struct km_log_limit {
        int64_t last_ms; /* when a line last went through; 0: never */
        uint64_t quiet;  /* held back since */
};

/* true: write the line now; *quiet is then how many were held back before it (and the
 * count starts again). false: held back and counted. A clock that went back lets the
 * line through. */
bool km_log_limit_pass(struct km_log_limit *l, int64_t now_ms, int64_t every_ms, uint64_t *quiet);

/* Writes the line if the limiter lets it through, ending it with "(N more not logged)". */
void km_log_vlimited(struct km_log_limit *l, int64_t now_ms, int64_t every_ms, int level, const char *tag,
                     const char *fmt, va_list ap) __attribute__((format(printf, 6, 0)));

/* Parses "err", "warning", "notice", "info", "debug"; returns the level or -EINVAL. */
int km_log_parse_level(const char *name);

#endif
