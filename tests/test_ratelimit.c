/*
 * Per-topic rate limits: a burst passes, the next is refused with -EAGAIN
 * and a retry time, counted, queueing nothing, taking no sequence number
 * and recording no key; many publishers at once are never let through
 * more than burst + window x rate; a limit is set once; bad limits are
 * refused and create nothing.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "test_util.h"

static rbus_topic *limited_topic(rbus *bus, const char *name, double rate, uint32_t burst)
{
    rbus_topic_opts o;
    rbus_topic_opts_init(&o);
    o.rate_per_s = rate;
    o.rate_burst = burst;
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open_ex(bus, name, &o, &t));
    return t;
}

static void burst_then_refused(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_sub *s = rbus_test_subscribe(bus, ">", 64, RBUS_BLOCK, 0);
    /* 10 a second, 5 at once: five pass, the sixth waits ~100 ms. */
    rbus_topic *t = limited_topic(bus, "api.calls", 10, 5);
    rbus_pub_result res;
    for (int i = 0; i < 5; i++)
        assert_rbus_ok(rbus_publish_ex(t, &i, sizeof i, NULL, &res));
    assert_int_equal(res.retry_after_ns, 0);
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.key = "k-6";
    po.key_len = 3;
    assert_rbus_rc(rbus_publish_ex(t, "x", 1, &po, &res), -EAGAIN);
    assert_true(res.retry_after_ns > 0);
    assert_true(res.retry_after_ns <= UINT64_C(100000000));
    assert_int_equal(res.matched, 0);
    assert_non_null(strstr(rbus_last_error_detail(), "rate limit"));
    /* Refused: counted, and nothing else happened. */
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 5);
    assert_int_equal(ts.rate_limited, 1);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.offered, 5);
    /* After the wait it passes, and its key was not recorded before. */
    rbus_test_sleep_us((unsigned)(res.retry_after_ns / 1000) + 1000);
    assert_rbus_ok(rbus_publish_ex(t, "x", 1, &po, &res));
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 6); /* sequence numbers 1..6, none skipped */
    rbus_msg *m;
    for (uint64_t seq = 1; seq <= 6; seq++) {
        assert_rbus_ok(rbus_recv(s, &m, 0));
        assert_int_equal(rbus_msg_seq(m), seq);
        rbus_msg_release(m);
    }
    /* A topic without a limit is not limited, and counts nothing. */
    rbus_topic *free_topic;
    assert_rbus_ok(rbus_topic_open(bus, "api.free", &free_topic));
    for (int i = 0; i < 50; i++)
        assert_rbus_ok(rbus_publish(free_topic, &i, sizeof i));
    assert_rbus_ok(rbus_topic_stats_get(free_topic, &ts));
    assert_int_equal(ts.rate_limited, 0);

    /* Prometheus: the family exists for limited topics and agrees. */
    char text[8192];
    assert_true(rbus_stats_prometheus(bus, text, sizeof text) > 0);
    assert_non_null(strstr(text, "ringbus_topic_rate_limited_total{topic=\"api.calls\"} 1\n"));
    assert_null(strstr(text, "ringbus_topic_rate_limited_total{topic=\"api.free\"}"));
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

struct racer {
    rbus_topic *t;
    uint64_t until_ns;
    uint64_t admitted, refused, first_ns, last_ns;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    uint64_t now;
    while ((now = rbus_test_now_ns()) < r->until_ns) {
        int rc = rbus_publish(r->t, "x", 1);
        if (rc == 0) {
            if (!r->first_ns)
                r->first_ns = now;
            r->last_ns = rbus_test_now_ns();
            r->admitted++;
        } else {
            assert_int_equal(rc, -EAGAIN);
            r->refused++;
        }
    }
    return NULL;
}

/* Four publishers hammer one limited topic: what passes never exceeds the
 * bucket's bound over the window, and every attempt is either admitted
 * or counted. */
static void exact_under_racing_publishers(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    const double rate = 2000;
    const uint32_t burst = 50;
    rbus_topic *t = limited_topic(bus, "race.t", rate, burst);
    enum { N = 4 };
    struct racer r[N];
    pthread_t th[N];
    uint64_t start = rbus_test_now_ns();
    for (int i = 0; i < N; i++) {
        r[i] = (struct racer){.t = t, .until_ns = start + 300000000u};
        assert_int_equal(pthread_create(&th[i], NULL, race, &r[i]), 0);
    }
    uint64_t admitted = 0, refused = 0, last = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        admitted += r[i].admitted;
        refused += r[i].refused;
        if (r[i].last_ns > last)
            last = r[i].last_ns;
    }
    /* Every admission took a token: at most the burst plus one interval's
     * worth per interval between the first possible and the last. */
    double window_s = (double)(last - start) / 1e9;
    double bound = burst + ceil(window_s * rate) + 1;
    print_message("rate limit: %llu admitted in %.3f s (bound %.0f), %llu refused\n",
                  (unsigned long long)admitted, window_s, bound, (unsigned long long)refused);
    assert_true((double)admitted <= bound);
    /* And the bucket was not stingy (valgrind, one thread at a time, still
     * got three quarters of it). */
    assert_true((double)admitted >= 0.3 * (burst + window_s * rate));
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, admitted);
    assert_int_equal(ts.rate_limited, refused);
    rbus_destroy(bus);
}

static void set_once_and_bad_limits(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic_opts o;
    rbus_topic_opts_init(&o);
    rbus_topic *t = NULL;
    const struct {
        double rate;
        uint32_t burst;
    } bad[] = {
        {-1, 1},
        {0, 1},
        {1, 0},
        {NAN, 1},
        {INFINITY, 1},
        {RBUS_MIN_RATE / 2, 1},
        {RBUS_MAX_RATE * 2, 1},
        {10, RBUS_MAX_RATE_BURST + 1},
    };
    rbus_bus_stats bs;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.rate_per_s = bad[i].rate;
        o.rate_burst = bad[i].burst;
        assert_rbus_rc(rbus_topic_open_ex(bus, "lim.bad", &o, &t), -EINVAL);
        assert_null(t);
    }
    assert_rbus_ok(rbus_bus_stats_get(bus, &bs));
    assert_int_equal(bs.topics, 0); /* nothing created */

    /* An existing topic without a limit gets one; the same again is fine;
     * another is refused and changes nothing. */
    rbus_topic *plain;
    assert_rbus_ok(rbus_topic_open(bus, "lim.t", &plain));
    rbus_topic *a = limited_topic(bus, "lim.t", 100, 2);
    assert_ptr_equal(a, plain);
    rbus_topic *b = limited_topic(bus, "lim.t", 100, 2);
    assert_ptr_equal(b, plain);
    o.rate_per_s = 200;
    o.rate_burst = 2;
    assert_rbus_rc(rbus_topic_open_ex(bus, "lim.t", &o, &t), -EINVAL);
    assert_null(t);
    assert_rbus_ok(rbus_publish(plain, "x", 1));
    assert_rbus_ok(rbus_publish(plain, "x", 1));
    assert_rbus_rc(rbus_publish(plain, "x", 1), -EAGAIN); /* still burst 2 */

    /* A duplicate uses a token: the check comes before the key's. */
    rbus_topic *k = limited_topic(bus, "lim.k", RBUS_MIN_RATE, 2);
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.key = "a";
    po.key_len = 1;
    assert_rbus_ok(rbus_publish_ex(k, "x", 1, &po, NULL));
    assert_int_equal(rbus_publish_ex(k, "x", 1, &po, NULL), RBUS_DUPLICATE);
    po.key = "b";
    assert_rbus_rc(rbus_publish_ex(k, "x", 1, &po, NULL), -EAGAIN);
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(burst_then_refused),
        cmocka_unit_test(exact_under_racing_publishers),
        cmocka_unit_test(set_once_and_bad_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
