/* Overflow policies, message by message, with exact counters. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

/* Most tests run on one bus, one topic and one subscription to it, made
 * by the group's setup from these parameters (the test's prestate) and
 * taken down by its teardown. */
struct fixture_params {
    uint32_t cap;
    rbus_overflow policy;
    int64_t block_timeout_ns;
};

struct fixture {
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    uint32_t cap;             /* effective capacity */
    uint64_t published;       /* what this test published */
    int64_t block_timeout_ns; /* the subscription's */
};

static void fixture_open(struct fixture *f, uint32_t cap, rbus_overflow policy,
                         int64_t block_timeout_ns)
{
    memset(f, 0, sizeof *f);
    f->block_timeout_ns = block_timeout_ns;
    f->topic = rbus_test_bus_and_topic(&f->bus, "pol.t");
    f->sub = rbus_test_subscribe_checked(f->bus, "pol.t", cap, policy, block_timeout_ns, &f->cap);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.high_water, 0);
    assert_int_equal(st.offered, 0);
}

static void fixture_close(struct fixture *f)
{
    assert_rbus_ok(rbus_unsubscribe(f->sub));
    rbus_destroy(f->bus);
}

static int fixture_setup(void **state)
{
    const struct fixture_params *params = *state;
    struct fixture *f = malloc(sizeof *f);
    if (!f)
        return -1;
    fixture_open(f, params->cap, params->policy, params->block_timeout_ns);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture_close(*state);
    free(*state);
    return 0;
}

static const struct fixture_params newest4 = {4, RBUS_DROP_NEWEST, 0};
static const struct fixture_params newest8 = {8, RBUS_DROP_NEWEST, 0};
static const struct fixture_params oldest4 = {4, RBUS_DROP_OLDEST, 0};
static const struct fixture_params block4 = {4, RBUS_BLOCK, 0};
static const struct fixture_params block4_timed = {4, RBUS_BLOCK, INT64_C(20000000)}; /* 20 ms */

/* Publishes one message whose payload is its expected sequence number. */
static int publish_seq(struct fixture *f, const rbus_pub_opts *po, rbus_pub_result *r)
{
    uint64_t seq = f->published + 1;
    memset(r, 0xEE, sizeof *r);
    int rc = rbus_publish_ex(f->topic, &seq, sizeof seq, po, r);
    if (rc == 0 || rc == -ESHUTDOWN)
        f->published++;
    return rc;
}

static void expect_result(const rbus_pub_result *r, uint32_t matched, uint32_t queued,
                          uint32_t dropped, uint32_t evicted)
{
    assert_int_equal(r->matched, matched);
    assert_int_equal(r->queued, queued);
    assert_int_equal(r->dropped, dropped);
    assert_int_equal(r->evicted, evicted);
    assert_false(r->duplicate);
    assert_int_equal(r->matched, r->queued + r->dropped);
}

static void expect_recv_seq(rbus_sub *sub, uint64_t seq)
{
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(sub, &m, 0));
    assert_int_equal(rbus_msg_seq(m), seq);
    assert_int_equal(rbus_msg_size(m), sizeof(uint64_t));
    uint64_t payload;
    memcpy(&payload, rbus_msg_data(m), sizeof payload);
    assert_int_equal(payload, seq);
    rbus_msg_release(m);
}

static void expect_empty(rbus_sub *sub)
{
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(sub, &m, 0), -EAGAIN);
}

/* Every publish took a sequence number, refused ones too, and the queue
 * holds exactly the first cap messages, in order. */
static void expect_first_cap_queued(struct fixture *f)
{
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(f->topic, &ts));
    assert_int_equal(ts.published, f->published);
    for (uint64_t seq = 1; seq <= f->cap; seq++)
        expect_recv_seq(f->sub, seq);
    expect_empty(f->sub);
}

/* Publishes cap + extra messages into the empty subscription of a
 * DROP_NEWEST or DROP_OLDEST fixture, checking result and counters after
 * each: up to cap all are queued; after that DROP_NEWEST drops the new one,
 * DROP_OLDEST queues it and evicts exactly one older message. */
static void overflow_one_by_one(struct fixture *f, rbus_overflow policy, uint32_t extra)
{
    const bool newest = policy == RBUS_DROP_NEWEST;
    rbus_pub_result r;
    for (uint32_t i = 1; i <= f->cap + extra; i++) {
        assert_rbus_ok(publish_seq(f, NULL, &r));
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
        const uint32_t over = i <= f->cap ? 0 : i - f->cap;
        if (over == 0)
            expect_result(&r, 1, 1, 0, 0);
        else if (newest)
            expect_result(&r, 1, 0, 1, 0);
        else
            expect_result(&r, 1, 1, 0, 1);
        assert_int_equal(st.depth, i <= f->cap ? i : f->cap);
        assert_int_equal(st.high_water, i <= f->cap ? i : f->cap);
        assert_int_equal(st.dropped_newest, newest ? over : 0);
        assert_int_equal(st.dropped_oldest, newest ? 0 : over);
        assert_int_equal(st.offered, i);
        assert_int_equal(st.dropped_timeout, 0);
        assert_int_equal(st.publisher_waits, 0);
        rbus_test_check_accounting(&st);
    }
}

/* The end of a DROP_NEWEST or DROP_OLDEST test, the queue drained: every
 * publish offered, `received` taken, `dropped` lost to the policy. */
static void expect_drained(struct fixture *f, rbus_overflow policy, uint64_t received,
                           uint64_t dropped)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.offered, f->published);
    assert_int_equal(st.received, received);
    if (policy == RBUS_DROP_NEWEST)
        assert_int_equal(st.dropped_newest, dropped);
    else
        assert_int_equal(st.dropped_oldest, dropped);
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.high_water, f->cap);
    assert_int_equal(st.capacity, f->cap);
    rbus_test_check_accounting(&st);
}

static void capacity_is_at_least_requested(void **state)
{
    (void)state;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.default_capacity = 8;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    static const uint32_t asks[] = {1, 2, 3, 4, 5, 7, 8, 9, 100, 1000};
    for (size_t i = 0; i < sizeof asks / sizeof asks[0]; i++) {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = asks[i];
        rbus_sub *s = NULL;
        assert_rbus_ok(rbus_subscribe(bus, "cap", &o, &s));
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(s, &st));
        if (st.capacity < asks[i]) {
            print_error("asked %u, effective %u\n", asks[i], st.capacity);
            fail();
        }
        assert_rbus_ok(rbus_unsubscribe(s));
    }
    /* capacity 0 = the bus default */
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, "cap", NULL, &s));
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_true(st.capacity >= 8);
    assert_true(st.capacity < 1024);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);

    /* and the library's default default is 1024 */
    assert_rbus_ok(rbus_create(&bus, NULL));
    assert_rbus_ok(rbus_subscribe(bus, "cap", NULL, &s));
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_true(st.capacity >= 1024);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void drop_newest_keeps_first_messages(void **state)
{
    struct fixture *f = *state;
    const uint32_t extra = 5;

    rbus_pub_result r;
    overflow_one_by_one(f, RBUS_DROP_NEWEST, extra);
    assert_int_equal(f->published, f->cap + extra);
    expect_first_cap_queued(f);

    /* room again: the next publish is queued */
    assert_rbus_ok(publish_seq(f, NULL, &r));
    expect_result(&r, 1, 1, 0, 0);
    expect_recv_seq(f->sub, f->published);

    expect_drained(f, RBUS_DROP_NEWEST, f->cap + 1, extra);
}

static void drop_oldest_keeps_newest_messages(void **state)
{
    struct fixture *f = *state;
    const uint32_t extra = 6;

    rbus_pub_result r;
    overflow_one_by_one(f, RBUS_DROP_OLDEST, extra);

    /* the newest cap messages, in order */
    for (uint64_t seq = extra + 1; seq <= f->published; seq++)
        expect_recv_seq(f->sub, seq);
    expect_empty(f->sub);

    /* after a partial drain only the missing room is refilled without
     * evicting */
    for (uint32_t i = 0; i < f->cap; i++) {
        assert_rbus_ok(publish_seq(f, NULL, &r));
        expect_result(&r, 1, 1, 0, 0);
    }
    expect_recv_seq(f->sub, f->published - f->cap + 1);
    assert_rbus_ok(publish_seq(f, NULL, &r));
    expect_result(&r, 1, 1, 0, 0);
    assert_rbus_ok(publish_seq(f, NULL, &r));
    expect_result(&r, 1, 1, 0, 1);
    /* queue now holds the last cap messages */
    for (uint64_t seq = f->published - f->cap + 1; seq <= f->published; seq++)
        expect_recv_seq(f->sub, seq);
    expect_empty(f->sub);

    expect_drained(f, RBUS_DROP_OLDEST, f->published - extra - 1, extra + 1);
}

static void block_with_negative_publish_timeout_does_not_wait(void **state)
{
    struct fixture *f = *state;
    /* the subscription itself would wait forever */
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.timeout_ns = -1;
    rbus_pub_result r;

    /* with room, a no-wait publish is queued as usual */
    for (uint32_t i = 1; i <= f->cap; i++) {
        assert_rbus_ok(publish_seq(f, &po, &r));
        expect_result(&r, 1, 1, 0, 0);
    }
    const uint32_t extra = 3;
    for (uint32_t i = 1; i <= extra; i++) {
        assert_rbus_ok(publish_seq(f, &po, &r));
        expect_result(&r, 1, 0, 1, 0);
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
        assert_int_equal(st.dropped_timeout, i);
        assert_int_equal(st.publisher_waits, 0);
        assert_int_equal(st.depth, f->cap);
        rbus_test_check_accounting(&st);
    }
    /* INT64_MIN is "do not wait" too */
    po.timeout_ns = INT64_MIN;
    assert_rbus_ok(publish_seq(f, &po, &r));
    expect_result(&r, 1, 0, 1, 0);

    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.offered, f->published);
    assert_int_equal(st.offered, f->cap + extra + 1);
    assert_int_equal(st.dropped_timeout, extra + 1);
    assert_int_equal(st.publisher_waits, 0);
    assert_int_equal(st.dropped_newest + st.dropped_oldest + st.dropped_closed, 0);
    assert_int_equal(st.high_water, f->cap);
    rbus_test_check_accounting(&st);

    expect_first_cap_queued(f);
}

static void block_with_sub_timeout_waits_then_drops(void **state)
{
    struct fixture *f = *state;
    const int64_t timeout = f->block_timeout_ns;
    rbus_pub_result r;

    for (uint32_t i = 1; i <= f->cap; i++) {
        assert_rbus_ok(publish_seq(f, NULL, &r));
        expect_result(&r, 1, 1, 0, 0);
    }
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.publisher_waits, 0);

    for (uint32_t i = 1; i <= 2; i++) {
        uint64_t t0 = rbus_test_now_ns();
        assert_rbus_ok(publish_seq(f, NULL, &r));
        uint64_t waited = rbus_test_now_ns() - t0;
        expect_result(&r, 1, 0, 1, 0);
        /* it did wait for its timeout (lower bound only) */
        if (waited < (uint64_t)timeout) {
            print_error("publisher waited only %llu ns\n", (unsigned long long)waited);
            fail();
        }
        assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
        assert_int_equal(st.dropped_timeout, i);
        assert_int_equal(st.publisher_waits, i);
        assert_int_equal(st.depth, f->cap);
        rbus_test_check_accounting(&st);
    }

    /* once there is room the publish is queued without waiting */
    expect_recv_seq(f->sub, 1);
    assert_rbus_ok(publish_seq(f, NULL, &r));
    expect_result(&r, 1, 1, 0, 0);

    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.offered, f->published);
    assert_int_equal(st.offered, f->cap + 3);
    assert_int_equal(st.received, 1);
    assert_int_equal(st.dropped_timeout, 2);
    assert_int_equal(st.publisher_waits, 2);
    assert_int_equal(st.depth, f->cap);
    assert_int_equal(st.high_water, f->cap);
    rbus_test_check_accounting(&st);

    for (uint64_t seq = 2; seq <= f->cap; seq++)
        expect_recv_seq(f->sub, seq);
    expect_recv_seq(f->sub, f->published);
    expect_empty(f->sub);
}

static void block_with_room_never_waits(void **state)
{
    struct fixture *f = *state;
    rbus_pub_result r;
    /* publish and receive alternately many times: never full */
    for (int i = 0; i < 100; i++) {
        assert_rbus_ok(publish_seq(f, NULL, &r));
        expect_result(&r, 1, 1, 0, 0);
        expect_recv_seq(f->sub, f->published);
    }
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.offered, 100);
    assert_int_equal(st.received, 100);
    assert_int_equal(st.publisher_waits, 0);
    assert_int_equal(st.high_water, 1);
    assert_int_equal(st.depth, 0);
    rbus_test_check_accounting(&st);
}

/*
 * When every subscription is drop-newest and full, a publish is still an
 * accepted publish that every subscription refused (the library may skip
 * building the message): it takes a sequence number, records its key, and
 * counts one offer and one drop-newest per subscription. Once a receiver
 * makes room, the next publish is queued again with the gap visible.
 */
static void refused_everywhere_is_still_accepted(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "full.t");
    rbus_sub *subs[2];
    uint32_t cap[2];
    for (int i = 0; i < 2; i++)
        subs[i] = rbus_test_subscribe_checked(bus, "full.*", 2, RBUS_DROP_NEWEST, 0, &cap[i]);
    assert_int_equal(cap[0], cap[1]);
    uint64_t seq = 0;
    rbus_pub_result r;
    for (uint32_t i = 0; i < cap[0]; i++) {
        seq++;
        assert_rbus_ok(rbus_publish_ex(t, &seq, sizeof seq, NULL, &r));
        expect_result(&r, 2, 2, 0, 0);
    }
    /* Both full: refused everywhere, unkeyed then keyed. */
    seq++;
    memset(&r, 0xEE, sizeof r);
    assert_rbus_ok(rbus_publish_ex(t, &seq, sizeof seq, NULL, &r));
    expect_result(&r, 2, 0, 2, 0);
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.key = "order-7";
    po.key_len = 7;
    seq++;
    memset(&r, 0xEE, sizeof r);
    assert_rbus_ok(rbus_publish_ex(t, &seq, sizeof seq, &po, &r));
    expect_result(&r, 2, 0, 2, 0);
    /* The refused keyed publish recorded its key. */
    memset(&r, 0xEE, sizeof r);
    assert_rbus_rc(rbus_publish_ex(t, &seq, sizeof seq, &po, &r), RBUS_DUPLICATE);
    assert_true(r.duplicate);
    assert_int_equal(r.matched, 0);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, seq);
    assert_int_equal(ts.duplicates, 1);
    for (int i = 0; i < 2; i++) {
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(subs[i], &st));
        assert_int_equal(st.offered, seq);
        assert_int_equal(st.dropped_newest, 2);
        assert_int_equal(st.depth, cap[i]);
        rbus_test_check_accounting(&st);
    }
    /* Room in one subscription only: that one queues, the other refuses. */
    expect_recv_seq(subs[0], 1);
    seq++;
    assert_rbus_ok(rbus_publish_ex(t, &seq, sizeof seq, NULL, &r));
    expect_result(&r, 2, 1, 1, 0);
    for (uint64_t want = 2; want <= cap[0]; want++)
        expect_recv_seq(subs[0], want);
    expect_recv_seq(subs[0], seq); /* seq - 1 and seq - 2 were refused */
    expect_empty(subs[0]);
    for (int i = 0; i < 2; i++) {
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(subs[i], &st));
        assert_int_equal(st.offered, seq);
        assert_int_equal(st.dropped_newest, i == 0 ? 2 : 3);
        rbus_test_check_accounting(&st);
        assert_rbus_ok(rbus_unsubscribe(subs[i]));
    }
    rbus_destroy(bus);
}

static void mixed_policies_on_one_topic(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "mix.t");

    rbus_sub *subs[3];
    static const rbus_overflow pol[3] = {RBUS_DROP_NEWEST, RBUS_DROP_OLDEST, RBUS_BLOCK};
    uint32_t cap[3];
    for (int i = 0; i < 3; i++)
        subs[i] = rbus_test_subscribe_checked(bus, "mix.>", 2, pol[i], 0, &cap[i]);
    uint32_t maxcap = cap[0];
    for (int i = 1; i < 3; i++)
        if (cap[i] > maxcap)
            maxcap = cap[i];

    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.timeout_ns = -1; /* the block sub must not hold us */
    const uint32_t n = maxcap + 3;
    for (uint32_t i = 1; i <= n; i++) {
        rbus_pub_result r;
        memset(&r, 0xEE, sizeof r);
        assert_rbus_ok(rbus_publish_ex(t, &i, sizeof i, &po, &r));
        uint32_t queued = 0, dropped = 0, evicted = 0;
        for (int s = 0; s < 3; s++) {
            bool full = i > cap[s];
            if (pol[s] == RBUS_DROP_OLDEST) {
                queued++;
                evicted += full;
            } else if (full) {
                dropped++;
            } else {
                queued++;
            }
        }
        expect_result(&r, 3, queued, dropped, evicted);
    }
    for (int s = 0; s < 3; s++) {
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(subs[s], &st));
        assert_int_equal(st.offered, n);
        assert_int_equal(st.depth, cap[s]);
        assert_int_equal(st.high_water, cap[s]);
        assert_int_equal(st.dropped_newest, pol[s] == RBUS_DROP_NEWEST ? n - cap[s] : 0);
        assert_int_equal(st.dropped_oldest, pol[s] == RBUS_DROP_OLDEST ? n - cap[s] : 0);
        assert_int_equal(st.dropped_timeout, pol[s] == RBUS_BLOCK ? n - cap[s] : 0);
        assert_int_equal(st.publisher_waits, 0);
        rbus_test_check_accounting(&st);
        uint64_t first = pol[s] == RBUS_DROP_OLDEST ? n - cap[s] + 1 : 1;
        for (uint64_t seq = first; seq < first + cap[s]; seq++) {
            rbus_msg *m = NULL;
            assert_rbus_ok(rbus_recv(subs[s], &m, 0));
            assert_int_equal(rbus_msg_seq(m), seq);
            rbus_msg_release(m);
        }
        expect_empty(subs[s]);
    }
    for (int s = 0; s < 3; s++)
        assert_rbus_ok(rbus_unsubscribe(subs[s]));
    rbus_destroy(bus);
}

static void high_water_tracks_largest_depth(void **state)
{
    struct fixture *f = *state;
    rbus_pub_result r;
    for (int i = 0; i < 3; i++)
        assert_rbus_ok(publish_seq(f, NULL, &r));
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.high_water, 3);
    assert_int_equal(st.depth, 3);
    expect_recv_seq(f->sub, 1);
    expect_recv_seq(f->sub, 2);
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.high_water, 3);
    assert_int_equal(st.depth, 1);
    assert_rbus_ok(publish_seq(f, NULL, &r));
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.high_water, 3);
    assert_int_equal(st.depth, 2);
    for (int i = 0; i < 3; i++)
        assert_rbus_ok(publish_seq(f, NULL, &r));
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.high_water, 5);
    assert_int_equal(st.depth, 5);
    assert_int_equal(st.offered, 7);
    assert_int_equal(st.received, 2);
    rbus_test_check_accounting(&st);
    for (uint64_t seq = 3; seq <= 7; seq++)
        expect_recv_seq(f->sub, seq);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(capacity_is_at_least_requested),
        cmocka_unit_test_prestate_setup_teardown(drop_newest_keeps_first_messages, fixture_setup,
                                                 fixture_teardown, (void *)&newest4),
        cmocka_unit_test_prestate_setup_teardown(drop_oldest_keeps_newest_messages, fixture_setup,
                                                 fixture_teardown, (void *)&oldest4),
        cmocka_unit_test_prestate_setup_teardown(block_with_negative_publish_timeout_does_not_wait,
                                                 fixture_setup, fixture_teardown, (void *)&block4),
        cmocka_unit_test_prestate_setup_teardown(block_with_sub_timeout_waits_then_drops,
                                                 fixture_setup, fixture_teardown,
                                                 (void *)&block4_timed),
        cmocka_unit_test_prestate_setup_teardown(block_with_room_never_waits, fixture_setup,
                                                 fixture_teardown, (void *)&block4),
        cmocka_unit_test(refused_everywhere_is_still_accepted),
        cmocka_unit_test(mixed_policies_on_one_topic),
        cmocka_unit_test_prestate_setup_teardown(high_water_tracks_largest_depth, fixture_setup,
                                                 fixture_teardown, (void *)&newest8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
