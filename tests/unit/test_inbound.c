/* SPDX-License-Identifier: MIT */
/* What a narrow link may publish (gateway/inbound.c): topics, directions, sizes. */
#include <criterion/criterion.h>
#include <string.h>

#include "gateway/inbound.h"

#define UP(t) km_inbound_check((t), 10, true, NULL)
#define DOWN(t) km_inbound_check((t), 10, false, NULL)

Test(inbound, genuine_topics_pass)
{
        cr_assert_eq(UP("alert/gas/zone3"), KM_REFUSE_NONE);
        cr_assert_eq(UP("pos/u1"), KM_REFUSE_NONE);
        cr_assert_eq(UP("status"), KM_REFUSE_NONE);
        cr_assert_eq(UP("link/sat"), KM_REFUSE_NONE);
        cr_assert_eq(UP("unknown-topic/7"), KM_REFUSE_NONE, "the dictionary fallback");
        cr_assert_eq(UP("sensors/température/ü"), KM_REFUSE_NONE, "UTF-8");
        cr_assert_eq(UP("a//b"), KM_REFUSE_NONE, "empty levels stay under the prefix");
        cr_assert_eq(UP("command/x"), KM_REFUSE_NONE, "only cmd/ is a command");
        cr_assert_eq(DOWN("cmd/u1/evacuate"), KM_REFUSE_NONE);
}

Test(inbound, wildcards_refused_both_ways)
{
        cr_assert_eq(UP("alert/+"), KM_REFUSE_WILDCARD);
        cr_assert_eq(UP("alert/#"), KM_REFUSE_WILDCARD);
        cr_assert_eq(UP("a+b"), KM_REFUSE_WILDCARD);
        cr_assert_eq(DOWN("cmd/#"), KM_REFUSE_WILDCARD);
        cr_assert_eq(DOWN("cmd/+/evacuate"), KM_REFUSE_WILDCARD);
}

Test(inbound, invalid_topics_refused)
{
        char big[600];
        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        cr_assert_eq(UP(NULL), KM_REFUSE_TOPIC);
        cr_assert_eq(UP(""), KM_REFUSE_TOPIC);
        cr_assert_eq(UP(big), KM_REFUSE_TOPIC);
        big[KM_INBOUND_TOPIC_MAX] = '\0';
        cr_assert_eq(UP(big), KM_REFUSE_NONE, "512 bytes is the bound");
        cr_assert_eq(UP("a\x01" "b"), KM_REFUSE_TOPIC, "control character");
        cr_assert_eq(UP("a\x7f"), KM_REFUSE_TOPIC, "DEL");
        cr_assert_eq(UP("a\xc2\x85"), KM_REFUSE_TOPIC, "C1 control (NEL)");
        cr_assert_eq(UP("a\xff"), KM_REFUSE_TOPIC, "not UTF-8");
        cr_assert_eq(UP("a\xc0\xaf"), KM_REFUSE_TOPIC, "overlong '/'");
        cr_assert_eq(UP("a\xed\xa0\x80"), KM_REFUSE_TOPIC, "surrogate");
        cr_assert_eq(UP("a\xf4\x90\x80\x80"), KM_REFUSE_TOPIC, "above U+10FFFF");
        cr_assert_eq(UP("a\xe2\x82"), KM_REFUSE_TOPIC, "cut short");
        cr_assert_eq(DOWN("cmd/\xff"), KM_REFUSE_TOPIC);
}

Test(inbound, directions)
{
        cr_assert_eq(UP("cmd/u1/evacuate"), KM_REFUSE_DIRECTION, "a base sends no commands");
        cr_assert_eq(UP("cmd"), KM_REFUSE_DIRECTION);
        cr_assert_eq(DOWN("alert/gas"), KM_REFUSE_DIRECTION, "a center sends only commands");
        cr_assert_eq(DOWN("cmd/"), KM_REFUSE_DIRECTION);
        cr_assert_eq(DOWN("cmd"), KM_REFUSE_DIRECTION);
        cr_assert_eq(DOWN("unknown-topic/3"), KM_REFUSE_DIRECTION);
}

Test(inbound, payload_size_bounded)
{
        cr_assert_eq(km_inbound_check("alert/gas", KM_INBOUND_PAYLOAD_MAX, true, NULL), KM_REFUSE_NONE);
        cr_assert_eq(km_inbound_check("alert/gas", KM_INBOUND_PAYLOAD_MAX + 1, true, NULL), KM_REFUSE_SIZE);
        cr_assert_eq(km_inbound_check("cmd/x", KM_INBOUND_PAYLOAD_MAX + 1, false, NULL), KM_REFUSE_SIZE);
        const char *why = NULL;
        cr_assert_eq(km_inbound_check("cmd/x", 0, false, &why), KM_REFUSE_NONE);
        cr_assert_null(why);
        cr_assert_eq(km_inbound_check("x/#", 0, true, &why), KM_REFUSE_WILDCARD);
        cr_assert_not_null(why);
        cr_assert_str_eq(km_inbound_reason_name(KM_REFUSE_DIRECTION), "direction");
}
