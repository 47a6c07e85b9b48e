/* SPDX-License-Identifier: MIT */
/* faulty: a test-only link plugin that breaks the way real link equipment breaks (never installed). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plugins/common/plugin-util.h"
#include "plugins/kuimen-plugin.h"

/*
 * tests/integration/test_links.c loads it as `type = faulty` from the build
 * directory (KM_TEST_PLUGIN_DIR) to check that one broken link leaves the rest of
 * the gateway running. It reports UP at open, then, by `fault`:
 *
 *   send_error  send() returns -errno (`errno`, default EIO): a device that answers
 *               every frame with an error (a card that lost its SIM, a dead UART)
 *   stall       send() takes the frame and nothing ever comes back: no sent()
 *               receipt, nothing on the air (a modem hung mid-session)
 *   block       send() sleeps `block` (default 1500ms) on the loop thread, then
 *               behaves as stall: a driver that breaks the ABI's "never block" rule
 *   open_error  open() fails with -errno
 *
 * Every frame it takes goes nowhere: there is no peer. Each send() is logged, so a
 * test can count how often the host tried.
 */

struct faulty {
        km_plugin_link *h;
        const struct km_host_api *api;
        enum { F_SEND_ERROR, F_STALL, F_BLOCK, F_OPEN_ERROR } fault;
        int err;
        long block_ms;
        uint32_t mtu;
        unsigned long sends;
};

static const char *const keys[] = { "fault", "errno", "block", "mtu", NULL };

static int errno_of(const char *v)
{
        static const struct {
                const char *name;
                int e;
        } t[] = { { "EIO", EIO }, { "ENODEV", ENODEV }, { "ETIMEDOUT", ETIMEDOUT }, { "EPIPE", EPIPE } };
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
                if (strcmp(v, t[i].name) == 0)
                        return t[i].e;
        return 0;
}

static int faulty_open(km_plugin_link *h, const struct km_host_api *api, void **state)
{
        const char *f = api->config(h, "fault"), *v;
        struct faulty *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->h = h, s->api = api, s->err = EIO, s->block_ms = 1500, s->mtu = 200;
        if (!f || strcmp(f, "send_error") == 0)
                s->fault = F_SEND_ERROR;
        else if (strcmp(f, "stall") == 0)
                s->fault = F_STALL;
        else if (strcmp(f, "block") == 0)
                s->fault = F_BLOCK;
        else if (strcmp(f, "open_error") == 0)
                s->fault = F_OPEN_ERROR;
        else {
                api->log(h, KM_PLUGIN_LOG_ERR, "faulty: fault = '%s': unknown", f);
                free(s);
                return -EINVAL;
        }
        if ((v = api->config(h, "errno")) && !(s->err = errno_of(v))) {
                api->log(h, KM_PLUGIN_LOG_ERR, "faulty: errno = '%s': unknown", v);
                free(s);
                return -EINVAL;
        }
        if ((v = api->config(h, "block")))
                s->block_ms = atol(v);
        if ((v = api->config(h, "mtu")))
                s->mtu = (uint32_t)atol(v);
        if (s->fault == F_OPEN_ERROR) {
                int e = s->err;
                api->log(h, KM_PLUGIN_LOG_ERR, "faulty: open fails: %s", strerror(e));
                free(s);
                return -e;
        }
        struct km_plugin_report r = { .struct_size = sizeof(r), .state = KM_PLUGIN_UP, .reason = "up", .signal = -1 };
        api->report(h, &r);
        *state = s;
        return 0;
}

static void faulty_close(void *state)
{
        struct faulty *s = state;
        if (s)
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "faulty: closed after %lu sends", s->sends);
        free(s);
}

static int faulty_send(void *state, const void *frame, size_t len, uint32_t token)
{
        struct faulty *s = state;
        (void)frame, (void)token;
        s->sends++;
        s->api->log(s->h, KM_PLUGIN_LOG_INFO, "faulty: send #%lu (%zu B)", s->sends, len);
        switch (s->fault) {
        case F_SEND_ERROR:
                return -s->err;
        case F_BLOCK: {
                struct timespec ts = { s->block_ms / 1000, (s->block_ms % 1000) * 1000000L };
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
                return 0;
        }
        default:
                return 0;
        }
}

static uint32_t faulty_mtu(void *state)
{
        return ((struct faulty *)state)->mtu;
}

static const struct km_plugin_ops ops = { .open = faulty_open, .close = faulty_close, .send = faulty_send, .mtu = faulty_mtu };

/* The macro alone (no plugin-util.c): a test plugin links nothing of ours. */
KMP_PLUGIN_ENTRY("faulty", "test", ops, keys)
