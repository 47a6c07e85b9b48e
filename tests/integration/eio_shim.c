/* SPDX-License-Identifier: MIT */
/* An LD_PRELOAD shim for fault drills: write, pwrite, fdatasync and fsync on files under
 * one directory fail with EIO while a flag file exists. */
/* pwrite and pwrite64 are both defined here: no redirection of one to the other. */
#undef _FILE_OFFSET_BITS
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/*
 * KM_EIO_FLAG names the flag file, KM_EIO_PATH the directory whose files fail (a prefix
 * of the path /proc/self/fd shows). Without both the shim passes everything through.
 *
 * kuimen writes to sockets with write(2) thousands of times a second, so the flag is
 * looked at (one stat) at most every 20 ms, and an fd's path is read only while the flag
 * is up. KM_EIO_COUNT, if set, names a file that gets one line per failed call, so the
 * test can tell the fault was really hit.
 */

static atomic_llong checked_ms = -1000000;
static atomic_bool flag_up;

static long long mono_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool fault_on(void)
{
        const char *flag = getenv("KM_EIO_FLAG");
        if (!flag)
                return false;
        long long now = mono_ms();
        if (now - atomic_load(&checked_ms) >= 20) {
                struct stat st;
                atomic_store(&flag_up, stat(flag, &st) == 0);
                atomic_store(&checked_ms, now);
        }
        return atomic_load(&flag_up);
}

static void note(const char *call, const char *path)
{
        const char *count = getenv("KM_EIO_COUNT");
        if (!count)
                return;
        int fd = open(count, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0)
                return;
        char line[PATH_MAX + 32];
        int n = snprintf(line, sizeof(line), "%s %s\n", call, path);
        if (n > 0) {
                __typeof__(&write) real_write = (__typeof__(&write))dlsym(RTLD_NEXT, "write");
                (void)!real_write(fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
        }
        close(fd);
}

/* Whether a call on fd fails now; errno is left alone otherwise. */
static bool fails(int fd, const char *call)
{
        int saved = errno;
        if (!fault_on())
                return false;
        const char *dir = getenv("KM_EIO_PATH");
        char link[64], path[PATH_MAX];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof(path) - 1);
        errno = saved;
        if (n <= 0 || !dir)
                return false;
        path[n] = 0;
        if (strncmp(path, dir, strlen(dir)) != 0)
                return false;
        note(call, path);
        errno = EIO;
        return true;
}

/* The next definition of name (libc's), looked up once. */
/* Built with -fvisibility=hidden: what the shim replaces must be seen. */
#define SHIM __attribute__((visibility("default")))

#define REAL(name)                                                                          \
        static __typeof__(&name) real_##name;                                               \
        if (!real_##name)                                                                   \
        real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

SHIM ssize_t write(int fd, const void *buf, size_t n)
{
        REAL(write);
        return fails(fd, "write") ? -1 : real_write(fd, buf, n);
}

SHIM ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
        REAL(writev);
        return fails(fd, "writev") ? -1 : real_writev(fd, iov, cnt);
}

SHIM ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
        REAL(pwrite);
        return fails(fd, "pwrite") ? -1 : real_pwrite(fd, buf, n, off);
}

SHIM ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
        REAL(pwrite64);
        return fails(fd, "pwrite64") ? -1 : real_pwrite64(fd, buf, n, off);
}

SHIM int fdatasync(int fd)
{
        REAL(fdatasync);
        return fails(fd, "fdatasync") ? -1 : real_fdatasync(fd);
}

SHIM int fsync(int fd)
{
        REAL(fsync);
        return fails(fd, "fsync") ? -1 : real_fsync(fd);
}
