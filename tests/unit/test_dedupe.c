/* SPDX-License-Identifier: MIT */
/* Dedupe: a copy on one path cancels exactly one earlier copy from the other path. */
#include <criterion/criterion.h>

#include "gateway/dedupe.h"

static struct km_dedupe dd;

static void setup(void)
{
        cr_assert_eq(km_dedupe_init(&dd, 64), 0);
}

static void teardown(void)
{
        km_dedupe_deinit(&dd);
}

TestSuite(dedupe, .init = setup, .fini = teardown);

Test(dedupe, second_copy_from_the_other_path_is_dropped)
{
        uint64_t h = km_dedupe_hash("cmd/door", "open", 4);
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_NARROW, h, 1000, 60000), "the first copy is published");
        cr_assert(km_dedupe_take(&dd, KM_CMD_MQTT, h, 1001, 60000), "its twin from MQTT is dropped");
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_MQTT, h, 1002, 60000), "a third copy is a new command");
}

Test(dedupe, a_command_sent_twice_is_published_twice)
{
        uint64_t h = km_dedupe_hash("cmd/door", "open", 4);
        /* The operator sends it twice; MQTT brings both first, then the narrow link. */
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_MQTT, h, 1000, 60000));
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_MQTT, h, 1001, 60000), "the same path never cancels itself");
        cr_assert(km_dedupe_take(&dd, KM_CMD_NARROW, h, 1002, 60000));
        cr_assert(km_dedupe_take(&dd, KM_CMD_NARROW, h, 1003, 60000));
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_NARROW, h, 1004, 60000), "two pairs cancelled, nothing left");
}

Test(dedupe, entries_expire_with_the_ttl)
{
        uint64_t h = km_dedupe_hash("cmd/door", "open", 4);
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_MQTT, h, 1000, 500));
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_NARROW, h, 1500, 500), "its twin came after the TTL");
        cr_assert(km_dedupe_take(&dd, KM_CMD_MQTT, h, 1600, 500), "the late copy is remembered in turn");
}

Test(dedupe, other_commands_do_not_cancel)
{
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_MQTT, km_dedupe_hash("cmd/door", "open", 4), 1000, 60000));
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_NARROW, km_dedupe_hash("cmd/door", "shut", 4), 1001, 60000));
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_NARROW, km_dedupe_hash("cmd/gate", "open", 4), 1002, 60000));
        cr_assert_neq(km_dedupe_hash("cmd/a", "bc", 2), km_dedupe_hash("cmd/ab", "c", 1), "topic and payload stay apart");
        cr_assert_neq(km_dedupe_hash("cmd/a", "\0x", 2), km_dedupe_hash("cmd/a", "\0y", 2), "bytes after a NUL count");
}

Test(dedupe, full_forgets_the_oldest)
{
        struct km_dedupe small;
        cr_assert_eq(km_dedupe_init(&small, 2), 0);
        uint64_t h1 = km_dedupe_hash("cmd/1", "", 0), h2 = km_dedupe_hash("cmd/2", "", 0), h3 = km_dedupe_hash("cmd/3", "", 0);
        cr_assert_not(km_dedupe_take(&small, KM_CMD_MQTT, h1, 1000, 60000));
        cr_assert_not(km_dedupe_take(&small, KM_CMD_MQTT, h2, 1001, 60000));
        cr_assert_not(km_dedupe_take(&small, KM_CMD_MQTT, h3, 1002, 60000));
        cr_assert_eq(small.evicted, 1);
        cr_assert_not(km_dedupe_take(&small, KM_CMD_NARROW, h1, 1003, 60000), "h1 was forgotten: published again");
        cr_assert(km_dedupe_take(&small, KM_CMD_NARROW, h3, 1004, 60000));
        km_dedupe_deinit(&small);
}

/* A copy whose push the spool refused (a full disk) is forgotten: the other path's copy
 * must still be published, and the refused one comes again as a copy of its own. */
Test(dedupe, a_copy_not_stored_cancels_nothing)
{
        uint64_t h = km_dedupe_hash("cmd/door", "open", 4);
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_MQTT, h, 1000, 60000));
        km_dedupe_untake(&dd, KM_CMD_MQTT, h);
        cr_assert_not(km_dedupe_take(&dd, KM_CMD_NARROW, h, 1001, 60000), "published: its MQTT twin never was");
        cr_assert(km_dedupe_take(&dd, KM_CMD_MQTT, h, 1002, 60000), "MQTT's copy, sent again, is the twin now");
}
