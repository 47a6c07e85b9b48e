/* SPDX-License-Identifier: MIT */
/* What a narrow link may publish: the checks every relayed message passes, authenticated or not, before it reaches a broker. */
#include "inbound.h"

#include <stdint.h>
#include <string.h>

/*
 * Why here, before the spool and not at the broker. A topic a broker refuses does not
 * come back as an error on one message: Mosquitto answers an invalid PUBLISH (a
 * wildcard, bad UTF-8, a NUL) by closing the connection, and the message, still in the
 * spool, is sent again after the reconnect and closes it again, so everything behind
 * it waits for good (measured on main: 'cmd/#' at a base dropped the local connection
 * every second; one 'alert/+' at a center, 40 disconnects and 0 of 20 genuine messages
 * after it). So a message that can never be published is refused before it is stored,
 * counted by reason, and its frame acknowledged (sent again, it would be refused again).
 *
 * Directions. A center republishes what a base sends as <topic_prefix>/<base>/<topic>,
 * and it watches <topic_prefix>/<base>/cmd/# on the same broker to send commands down:
 * a base (or anyone speaking for it) that sent cmd/... up would command itself through
 * the center. Bases never send it: their upward subscriptions are their own sensors,
 * positions, alerts and status, and kuimen's status, link and gnss topics. Down, a
 * center sends a base only commands (gateway/narrow.c deliver_command).
 *
 * A topic cannot escape <topic_prefix>/<origin>/: MQTT topics have no '..', and with no
 * wildcard the levels are literal. Empty levels ('a//b', a leading '/') are valid MQTT
 * and stay under the prefix, so they pass; '$' matters only as the first character
 * of a whole topic, which the prefix is.
 */

static const char *const names[KM_REFUSE_N] = {
        [KM_REFUSE_NONE] = "none",         [KM_REFUSE_ORIGIN] = "origin",
        [KM_REFUSE_TOPIC] = "topic",       [KM_REFUSE_WILDCARD] = "wildcard",
        [KM_REFUSE_DIRECTION] = "direction", [KM_REFUSE_SIZE] = "size",
};

const char *km_inbound_reason_name(enum km_refuse r)
{
        return r >= 0 && r < KM_REFUSE_N ? names[r] : "?";
}

/* Well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF) without
 * U+0000-U+001F or U+007F-U+009F, which MQTT 5 (4.7.3) says a topic should not hold. */
static bool utf8_ok(const unsigned char *s, size_t n)
{
        for (size_t i = 0; i < n;) {
                unsigned c = s[i];
                if (c < 0x80) {
                        if (c < 0x20 || c == 0x7f)
                                return false;
                        i++;
                        continue;
                }
                size_t k;
                uint32_t cp, min;
                if ((c & 0xe0) == 0xc0)
                        k = 1, cp = c & 0x1f, min = 0x80;
                else if ((c & 0xf0) == 0xe0)
                        k = 2, cp = c & 0x0f, min = 0x800;
                else if ((c & 0xf8) == 0xf0)
                        k = 3, cp = c & 0x07, min = 0x10000;
                else
                        return false;
                if (n - i <= k)
                        return false;
                for (size_t j = 1; j <= k; j++) {
                        if ((s[i + j] & 0xc0) != 0x80)
                                return false;
                        cp = cp << 6 | (s[i + j] & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
                        return false;
                i += k + 1;
        }
        return true;
}

enum km_refuse km_inbound_check(const char *topic, size_t len, bool to_center, const char **why)
{
        const char *w = NULL;
        enum km_refuse r = KM_REFUSE_NONE;
        size_t n = topic ? strnlen(topic, KM_INBOUND_TOPIC_MAX + 1) : 0;
        if (!topic || n == 0)
                r = KM_REFUSE_TOPIC, w = "empty topic";
        else if (n > KM_INBOUND_TOPIC_MAX)
                r = KM_REFUSE_TOPIC, w = "topic longer than 512 bytes";
        else if (!utf8_ok((const unsigned char *)topic, n))
                r = KM_REFUSE_TOPIC, w = "topic not valid UTF-8, or with a control character";
        else if (strpbrk(topic, "+#"))
                r = KM_REFUSE_WILDCARD, w = "wildcard ('+' or '#') in the topic";
        else if (to_center && (strcmp(topic, "cmd") == 0 || strncmp(topic, "cmd/", 4) == 0))
                r = KM_REFUSE_DIRECTION, w = "cmd/... sent up: a base sends no commands";
        else if (!to_center && (strncmp(topic, "cmd/", 4) != 0 || !topic[4]))
                r = KM_REFUSE_DIRECTION, w = "no command (cmd/...): a center sends a base only commands";
        else if (len > KM_INBOUND_PAYLOAD_MAX)
                r = KM_REFUSE_SIZE, w = "payload larger than 128 KiB";
        if (why)
                *why = w;
        return r;
}
