/* SPDX-License-Identifier: MIT */
/* Pins down what the durability contract assumes of the installed Paho: PUBACK only after messageArrived returns. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/*
 * A child process (this binary re-executed, so Paho never crosses a fork) holds a
 * persistent session subscribed to paho/# and reports each arrival on stdout. Its
 * callback either blocks forever ("block"), returns 0 ("false"), or returns 1. The
 * parent kills it with SIGKILL and starts a new one with the same client id: a message
 * the broker redelivers was never PUBACKed.
 */

static int child_fd = -1;

static int child_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        char line[128];
        (void)ctx, (void)tlen;
        int n = snprintf(line, sizeof(line), "IN %.*s\n", m->payloadlen, (char *)m->payload);
        (void)!write(child_fd, line, (size_t)n);
        bool block = m->payloadlen == 5 && memcmp(m->payload, "block", 5) == 0;
        bool refuse = m->payloadlen == 5 && memcmp(m->payload, "false", 5) == 0;
        if (block)
                for (;;)
                        pause();
        if (refuse) {
                usleep(100000); /* Paho calls again and again: keep the log short */
                return 0;
        }
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

__attribute__((constructor)) static void maybe_child(void)
{
        const char *port = getenv("KM_PAHO_CHILD");
        if (!port)
                return;
        char uri[64];
        MQTTAsync c;
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        MQTTProperties props = MQTTProperties_initializer;
        MQTTProperty p = { .identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL, .value.integer4 = 600 };
        child_fd = 1;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%s", port);
        MQTTAsync_createWithOptions(&c, uri, "paho-probe", MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro);
        MQTTAsync_setCallbacks(c, NULL, NULL, child_arrived, NULL);
        MQTTProperties_add(&props, &p);
        co.cleanstart = 0;
        co.connectProperties = &props;
        MQTTAsync_connect(c, &co);
        for (int i = 0; i < 500 && !MQTTAsync_isConnected(c); i++)
                usleep(10000);
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        MQTTAsync_subscribe(c, "paho/#", 1, &ro);
        usleep(300000);
        (void)!write(child_fd, "READY\n", 6);
        for (;;)
                pause();
}

struct child {
        pid_t pid;
        int fd;
        char buf[4096];
        size_t len;
};

static void child_start(struct child *ch, int port)
{
        int fds[2];
        char p[16];
        cr_assert_eq(pipe(fds), 0);
        snprintf(p, sizeof(p), "%d", port);
        ch->len = 0;
        ch->pid = fork();
        if (ch->pid == 0) {
                dup2(fds[1], 1);
                setenv("KM_PAHO_CHILD", p, 1);
                execl("/proc/self/exe", "test_paho", NULL);
                _exit(127);
        }
        close(fds[1]);
        ch->fd = fds[0];
        fcntl(ch->fd, F_SETFL, O_NONBLOCK);
}

/* Waits until the child's output holds needle; returns whether it did. */
static bool child_says(struct child *ch, const char *needle, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        do {
                ssize_t r = read(ch->fd, ch->buf + ch->len, sizeof(ch->buf) - 1 - ch->len);
                if (r > 0)
                        ch->len += (size_t)r;
                ch->buf[ch->len] = 0;
                if (strstr(ch->buf, needle))
                        return true;
                h_sleep_ms(10);
        } while (h_now_ms() < until);
        return false;
}

static void child_kill(struct child *ch)
{
        kill(ch->pid, SIGKILL);
        waitpid(ch->pid, NULL, 0);
        close(ch->fd);
}

static void probe(const char *payload, bool want_redelivery)
{
        char dir[200];
        struct h_broker b;
        struct h_pub pub;
        struct child ch;

        h_tmpdir(dir, sizeof(dir), "paho");
        h_broker_start(&b, dir, 0, NULL);
        child_start(&ch, b.port);
        cr_assert(child_says(&ch, "READY", 10000));
        h_pub_start(&pub, b.port, "probe-pub");
        cr_assert_eq(h_pub_send(&pub, "paho/x", payload), 0);
        cr_assert(h_pub_flush(&pub, 5000));
        char in[64];
        snprintf(in, sizeof(in), "IN %s", payload);
        cr_assert(child_says(&ch, in, 5000), "the callback ran");
        h_sleep_ms(500); /* time for a PUBACK to leave, if Paho sends one */
        child_kill(&ch);
        child_start(&ch, b.port);
        /* A redelivery may come before READY: its callback holds Paho's thread. */
        bool again = child_says(&ch, in, 4000);
        cr_assert(again || strstr(ch.buf, "READY"), "the second client came up");
        child_kill(&ch);
        h_pub_stop(&pub);
        h_stop(&b.p, SIGTERM);
        h_cleanup(dir);
        cr_assert_eq(again, want_redelivery, "'%s': redelivered after SIGKILL: %s, expected %s", payload,
                     again ? "yes" : "no", want_redelivery ? "yes" : "no");
}

/* The contract kuimen relies on: while messageArrived has not returned, no PUBACK. */
Test(paho, no_puback_before_callback_returns) { probe("block", true); }

/* Why kuimen's callback never returns 0: Paho keeps the message in memory only and
 * acknowledges it anyway, so a kill loses it. */
Test(paho, returning_false_still_acks) { probe("false", false); }

/* And after a normal return the broker considers it delivered. */
Test(paho, puback_after_return) { probe("plain", false); }
