/* Shared helpers for the cmocka tests. */
#ifndef RBUS_TEST_UTIL_H
#define RBUS_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "ringbus.h"

/* Fails with both codes named, so a wrong errno reads as text. */
#define assert_rbus_rc(expr, want)                                                  \
    do {                                                                            \
        int rbus_got_ = (expr);                                                     \
        int rbus_want_ = (want);                                                    \
        if (rbus_got_ != rbus_want_) {                                              \
            print_error("%s: got %d (%s), want %d (%s)\n", #expr, rbus_got_,        \
                        rbus_strerror(rbus_got_), rbus_want_,                       \
                        rbus_strerror(rbus_want_));                                 \
            fail();                                                                 \
        }                                                                           \
    } while (0)
#define assert_rbus_ok(expr) assert_rbus_rc((expr), 0)

/* RBUS_STRESS_SCALE scales every stress size (default 1.0); the tests print
 * the sizes they actually used. */
static inline double rbus_test_stress_scale(void)
{
    const char *s = getenv("RBUS_STRESS_SCALE");
    double v = s ? strtod(s, NULL) : 1.0;
    return v > 0 ? v : 1.0;
}

static inline uint64_t rbus_test_scaled(uint64_t base, uint64_t minimum)
{
    double v = (double)base * rbus_test_stress_scale();
    uint64_t n = (uint64_t)v;
    return n < minimum ? minimum : n;
}

static inline void rbus_test_check_accounting(const rbus_sub_stats *st)
{
    assert_int_equal(st->offered, st->received + st->depth + st->dropped_newest +
                                      st->dropped_oldest + st->dropped_timeout +
                                      st->dropped_closed);
}

#endif
