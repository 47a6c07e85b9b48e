/* SPDX-License-Identifier: MIT */
/* Mailbox: hands work from other threads to the loop thread through an eventfd. */
#ifndef KM_MAILBOX_H
#define KM_MAILBOX_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef void (*km_mail_fn)(void *ud, uint64_t arg);

struct km_mail {
        km_mail_fn fn;
        void *ud;
        uint64_t arg;
};

struct km_mailbox {
        pthread_mutex_t mu;
        struct km_mail *q, *spare;
        size_t n, cap, spare_cap;
        bool armed; /* an eventfd write is outstanding: later posts need none */
        int fd;     /* eventfd the loop polls */
};

int km_mailbox_init(struct km_mailbox *mb);
void km_mailbox_deinit(struct km_mailbox *mb);

/* Any thread: queue fn(ud, arg) to run on the loop thread. Returns 0 or -ENOMEM. */
int km_mailbox_post(struct km_mailbox *mb, km_mail_fn fn, void *ud, uint64_t arg);

/* Any thread: make the loop wake up (for work that lives elsewhere, e.g. the spool). */
void km_mailbox_kick(struct km_mailbox *mb);

/* Reads the eventfd's count: the fd's own event handler calls it before a run, so a
 * level-triggered fd never fires again for a count nobody reads. */
void km_mailbox_clear(struct km_mailbox *mb);

/* Loop thread: runs everything queued so far, in order; returns how many ran. */
size_t km_mailbox_run(struct km_mailbox *mb);

#endif
