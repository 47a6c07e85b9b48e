/* SPDX-License-Identifier: MIT */
/* Logging to stderr in the journald priority-prefix format. */
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int km_log_max_level = KM_LOG_INFO;

void km_log_write(int level, const char *tag, const char *fmt, ...)
{
        char line[1024];
        int n = snprintf(line, sizeof(line), "<%d>%s: ", level, tag);
        va_list ap;

        va_start(ap, fmt);
        n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
        va_end(ap);
        if (n > (int)sizeof(line) - 2)
                n = (int)sizeof(line) - 2;
        line[n++] = '\n';
        /* One write: a partial line from another thread must never split ours. */
        (void)!write(STDERR_FILENO, line, (size_t)n);
}

bool km_log_limit_pass(struct km_log_limit *l, int64_t now_ms, int64_t every_ms, uint64_t *quiet)
{
        if (l->last_ms && now_ms >= l->last_ms && now_ms - l->last_ms < every_ms) {
                l->quiet++;
                return false;
        }
        *quiet = l->quiet;
        l->quiet = 0;
        l->last_ms = now_ms ? now_ms : 1;
        return true;
}

void km_log_vlimited(struct km_log_limit *l, int64_t now_ms, int64_t every_ms, int level, const char *tag,
                     const char *fmt, va_list ap)
{
        char msg[800];
        uint64_t quiet;
        if (!km_log_limit_pass(l, now_ms, every_ms, &quiet) || level > km_log_max_level)
                return;
        vsnprintf(msg, sizeof(msg), fmt, ap);
        km_log_write(level, tag, "%s (%llu more not logged)", msg, (unsigned long long)quiet);
}

int km_log_parse_level(const char *name)
{
        static const char *const names[] = { [KM_LOG_ERR] = "err", [KM_LOG_WARNING] = "warning",
                                             [KM_LOG_NOTICE] = "notice", [KM_LOG_INFO] = "info",
                                             [KM_LOG_DEBUG] = "debug" };
        for (int i = KM_LOG_ERR; i <= KM_LOG_DEBUG; i++)
                if (strcmp(name, names[i]) == 0)
                        return i;
        return -EINVAL;
}
