/* SPDX-License-Identifier: MIT */
/* Mailbox: a locked queue drained by the loop; one eventfd write per wake-up, not per item. */
#include "mailbox.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

int km_mailbox_init(struct km_mailbox *mb)
{
        *mb = (struct km_mailbox){ 0 };
        mb->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (mb->fd < 0)
                return -errno;
        pthread_mutex_init(&mb->mu, NULL);
        return 0;
}

void km_mailbox_deinit(struct km_mailbox *mb)
{
        if (mb->fd >= 0)
                close(mb->fd);
        free(mb->q);
        free(mb->spare);
        pthread_mutex_destroy(&mb->mu);
        mb->fd = -1;
}

static void wake(struct km_mailbox *mb)
{
        uint64_t one = 1;
        (void)!write(mb->fd, &one, sizeof(one));
}

int km_mailbox_post(struct km_mailbox *mb, km_mail_fn fn, void *ud, uint64_t arg)
{
        bool kick;

        pthread_mutex_lock(&mb->mu);
        if (mb->n == mb->cap) {
                size_t cap = mb->cap ? mb->cap * 2 : 256;
                struct km_mail *q = realloc(mb->q, cap * sizeof(*q));
                if (!q) {
                        pthread_mutex_unlock(&mb->mu);
                        return -ENOMEM;
                }
                mb->q = q;
                mb->cap = cap;
        }
        mb->q[mb->n++] = (struct km_mail){ fn, ud, arg };
        kick = !mb->armed;
        mb->armed = true;
        pthread_mutex_unlock(&mb->mu);
        if (kick)
                wake(mb);
        return 0;
}

void km_mailbox_kick(struct km_mailbox *mb)
{
        pthread_mutex_lock(&mb->mu);
        bool kick = !mb->armed;
        mb->armed = true;
        pthread_mutex_unlock(&mb->mu);
        if (kick)
                wake(mb);
}

void km_mailbox_clear(struct km_mailbox *mb)
{
        uint64_t v;
        (void)!read(mb->fd, &v, sizeof(v));
}

size_t km_mailbox_run(struct km_mailbox *mb)
{
        struct km_mail *q;
        size_t n;

        /* The eventfd is read only by its own handler (km_mailbox_clear), which runs
         * whenever a poster wrote it: a turn costs no system call here, and a count
         * left behind is cleared there (one idle turn, never a lost item, never a busy
         * loop). Swap the queue out so posters never wait for the work itself. */
        pthread_mutex_lock(&mb->mu);
        mb->armed = false;
        q = mb->q;
        n = mb->n;
        size_t qcap = mb->cap;
        mb->q = mb->spare;
        mb->cap = mb->spare_cap;
        mb->n = 0;
        mb->spare = q;
        mb->spare_cap = qcap;
        pthread_mutex_unlock(&mb->mu);
        for (size_t i = 0; i < n; i++)
                q[i].fn(q[i].ud, q[i].arg);
        return n;
}
