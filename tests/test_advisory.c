/*
 * Drop advisories: under drop-newest and drop-oldest overload the counts
 * they carry add up to each subscription's stats, exactly; at most one a
 * subscription per interval; the thread runs only when they are on; a
 * full RBUS_BLOCK subscriber of the advisory topic does not hold the
 * thread; bad intervals are refused.
 */
#include <dirent.h>
#include <stdatomic.h>
#include <string.h>

#include "test_util.h"

#define INTERVAL_NS INT64_C(20000000) /* 20 ms */

static rbus *advising_bus(uint64_t interval_ns)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.drop_advisories = true;
    cfg.advisory_interval_ns = interval_ns;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    return bus;
}

/* Threads of this process now. */
static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* A joined thread's task may linger in /proc for a moment after the join
 * returns (the kernel wakes the joiner before it reaps the task). */
static bool threads_back_to(int n)
{
    for (int i = 0; i < 1000; i++) {
        if (thread_count() == n)
            return true;
        rbus_test_sleep_us(1000);
    }
    return false;
}

struct told {
    uint64_t newest, oldest, timeout, closed;
    unsigned advisories;
    uint64_t last_time;
    uint64_t min_gap;
};

/* Takes every advisory queued on adv, waiting up to wait_us for the
 * first, adding them up per subscription (index by sub id, < 16). */
static void take_advisories(rbus_sub *adv, struct told *t, unsigned wait_us)
{
    rbus_msg *m;
    int64_t timeout = (int64_t)wait_us * 1000;
    while (rbus_recv(adv, &m, timeout) == 0) {
        timeout = 0;
        assert_int_equal(rbus_msg_size(m), sizeof(rbus_drop_advisory));
        rbus_drop_advisory a;
        memcpy(&a, rbus_msg_data(m), sizeof a);
        rbus_msg_release(m);
        assert_true(a.sub_id < 16);
        assert_true(a.since_ns < a.time_ns);
        assert_int_equal(a.pattern[sizeof a.pattern - 1], '\0');
        assert_int_equal(a.name[sizeof a.name - 1], '\0');
        struct told *x = &t[a.sub_id];
        x->newest += a.dropped_newest;
        x->oldest += a.dropped_oldest;
        x->timeout += a.dropped_timeout;
        x->closed += a.dropped_closed;
        if (x->advisories && a.time_ns - x->last_time < x->min_gap)
            x->min_gap = a.time_ns - x->last_time;
        if (!x->advisories)
            x->min_gap = UINT64_MAX;
        x->advisories++;
        x->last_time = a.time_ns;
    }
}

/* Waits (bounded) until what the advisories told about s equals its stats. */
static void expect_told(rbus_sub *adv, struct told *t, rbus_sub *s)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    struct told *x = &t[rbus_sub_id(s)];
    for (int i = 0; i < 500; i++) {
        if (x->newest == st.dropped_newest && x->oldest == st.dropped_oldest &&
            x->timeout == st.dropped_timeout && x->closed == st.dropped_closed)
            return;
        take_advisories(adv, t, 10000);
    }
    fail_msg("sub %llu: told newest %llu oldest %llu, stats %llu %llu",
             (unsigned long long)rbus_sub_id(s), (unsigned long long)x->newest,
             (unsigned long long)x->oldest, (unsigned long long)st.dropped_newest,
             (unsigned long long)st.dropped_oldest);
}

static void advisories_equal_the_stats(void **state)
{
    (void)state;
    rbus *bus = advising_bus((uint64_t)INTERVAL_NS);
    rbus_sub *adv = rbus_test_subscribe(bus, RBUS_ADVISORY_DROPS, 1024, RBUS_BLOCK, 0);
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 4;
    o.overflow = RBUS_DROP_NEWEST;
    o.name = "newest-name";
    rbus_sub *newest, *oldest;
    assert_rbus_ok(rbus_subscribe(bus, "orders.*", &o, &newest));
    o.overflow = RBUS_DROP_OLDEST;
    o.name = NULL;
    assert_rbus_ok(rbus_subscribe(bus, "orders.>", &o, &oldest));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "orders.created", &t));
    assert_true(rbus_sub_id(oldest) < 16);

    struct told told[16];
    memset(told, 0, sizeof told);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 50; i++)
            assert_rbus_ok(rbus_publish(t, &i, sizeof i));
        expect_told(adv, told, newest);
        expect_told(adv, told, oldest);
    }
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(newest, &st));
    assert_true(st.dropped_newest >= 3 * 46);
    /* The advisory subscriber dropped nothing and was told nothing. */
    take_advisories(adv, told, 3 * (unsigned)(INTERVAL_NS / 1000));
    assert_int_equal(told[rbus_sub_id(adv)].advisories, 0);
    /* Nothing new dropped: no advisory in three intervals. */
    assert_int_equal(rbus_recv(adv, &(rbus_msg *){NULL}, 3 * INTERVAL_NS), -ETIMEDOUT);

    assert_rbus_ok(rbus_unsubscribe(newest));
    assert_rbus_ok(rbus_unsubscribe(oldest));
    assert_rbus_ok(rbus_unsubscribe(adv));
    rbus_destroy(bus);
}

static void once_per_interval(void **state)
{
    (void)state;
    rbus *bus = advising_bus((uint64_t)INTERVAL_NS);
    rbus_sub *adv = rbus_test_subscribe(bus, RBUS_ADVISORY_DROPS, 1024, RBUS_BLOCK, 0);
    rbus_sub *s = rbus_test_subscribe(bus, "x.>", 4, RBUS_DROP_NEWEST, 0);
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "x.y", &t));
    struct told told[16];
    memset(told, 0, sizeof told);
    /* Dropping all the time for ten intervals. */
    uint64_t end = rbus_test_now_ns() + 10 * (uint64_t)INTERVAL_NS;
    while (rbus_test_now_ns() < end) {
        int v = 0;
        assert_rbus_ok(rbus_publish(t, &v, sizeof v));
        rbus_test_sleep_us(100);
    }
    expect_told(adv, told, s);
    struct told *x = &told[rbus_sub_id(s)];
    assert_true(x->advisories >= 2);
    assert_true(x->advisories <= 12);
    assert_true(x->min_gap >= (uint64_t)INTERVAL_NS);
    assert_rbus_ok(rbus_unsubscribe(s));
    assert_rbus_ok(rbus_unsubscribe(adv));
    rbus_destroy(bus);
}

static void thread_only_when_on(void **state)
{
    (void)state;
    int before = thread_count();
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    assert_int_equal(thread_count(), before);
    rbus_destroy(bus);
    bus = advising_bus(0); /* 0: the default interval */
    assert_int_equal(thread_count(), before + 1);
    rbus_close(bus); /* stops it */
    assert_true(threads_back_to(before));
    rbus_destroy(bus);
    assert_int_equal(thread_count(), before);
}

/* An advisory subscriber that is full and never read, RBUS_BLOCK without
 * a timeout: the advisories to it count as timeouts, and the thread goes
 * on (close returns). */
static void full_advisory_subscriber_does_not_hold_the_thread(void **state)
{
    (void)state;
    rbus *bus = advising_bus((uint64_t)INTERVAL_NS);
    rbus_sub *adv = rbus_test_subscribe(bus, RBUS_ADVISORY_DROPS, 1, RBUS_BLOCK, 0);
    rbus_sub *subs[4];
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "z.z", &t));
    for (int i = 0; i < 4; i++)
        subs[i] = rbus_test_subscribe(bus, "z.*", 1, RBUS_DROP_NEWEST, 0);
    rbus_sub_stats st;
    for (int i = 0; i < 500; i++) {
        int v = i;
        assert_rbus_ok(rbus_publish(t, &v, sizeof v));
        assert_rbus_ok(rbus_sub_stats_get(adv, &st));
        if (st.dropped_timeout > 0)
            break;
        rbus_test_sleep_us(2000);
    }
    assert_true(st.dropped_timeout > 0);
    rbus_close(bus);
    for (int i = 0; i < 4; i++)
        assert_rbus_ok(rbus_unsubscribe(subs[i]));
    assert_rbus_ok(rbus_unsubscribe(adv));
    rbus_destroy(bus);
}

static void bad_intervals(void **state)
{
    (void)state;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.drop_advisories = true;
    rbus *bus = (rbus *)&cfg;
    cfg.advisory_interval_ns = 999999; /* below 1 ms */
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    assert_null(bus);
    cfg.advisory_interval_ns = UINT64_C(3600000000001); /* above 1 hour */
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    /* Checked whether advisories are on or not. */
    cfg.drop_advisories = false;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(advisories_equal_the_stats),
        cmocka_unit_test(once_per_interval),
        cmocka_unit_test(thread_only_when_on),
        cmocka_unit_test(full_advisory_subscriber_does_not_hold_the_thread),
        cmocka_unit_test(bad_intervals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
