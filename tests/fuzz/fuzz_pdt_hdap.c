/* SPDX-License-Identifier: MIT */
/* Fuzz target: Hytera HDAP PDUs as the pdt link reads them from its radio (plugins/pdt/hdap.c: hdap_decode, tmp_decode, text_decode). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/pdt/hdap.h"
#include "tests/fuzz/fuzz.h"

/*
 * Input: one UDP datagram from the radio. Checks: a PDU that decodes re-encodes to the
 * same bytes (TMP messages and acks, through tmp_encode); the text of a message that
 * decodes as a frame encodes back to the same text; and any bytes, taken as a frame,
 * survive the text codec unchanged (the way every frame crosses the air).
 */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct hdap h;
        struct tmp_msg m;
        const char *why;
        static uint8_t out[HDAP_MAX * 2], frame[HDAP_MAX], text[HDAP_MAX * 2];

        if (size <= HDAP_MAX && hdap_decode(data, size, &h, &why) == 0) {
                fuzz_touch(h.payload, h.len);
                if (tmp_decode(&h, &m, &why) == 0) {
                        int n = tmp_encode(out, sizeof(out), &m);
                        /* Our encoder never sets the reliable bit nor option flags. */
                        if (!h.reliable && (h.op_hi & 0x3F) == 0)
                                REQUIRE(n == (int)size && memcmp(out, data, size) == 0);
                        if (m.text_len) {
                                int fl = text_decode(m.text, m.text_len, frame, sizeof(frame));
                                if (fl >= 0) {
                                        int tl = text_encode(frame, (size_t)fl, text, sizeof(text));
                                        REQUIRE(tl == (int)m.text_len && memcmp(text, m.text, m.text_len) == 0);
                                }
                        }
                }
        }
        if (size <= 1024) {
                int tl = text_encode(data, size, text, sizeof(text));
                REQUIRE(tl == (int)(text_units_for(size) * 2));
                int fl = text_decode(text, (size_t)tl, frame, sizeof(frame));
                REQUIRE(fl == (int)size && memcmp(frame, data, size) == 0);
        }
        return 0;
}
