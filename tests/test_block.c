/* RBUS_BLOCK: blocked publishers, and what they must not hold back. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

/* Polls the sub's stats until `field` reaches `want` (or ~10 s pass).
 * Returns the last value seen. */
enum stat_field { F_WAITS, F_TIMEOUT, F_CLOSED, F_DEPTH };

static uint64_t stat_value(rbus_sub *sub, enum stat_field field)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sub, &st));
    switch (field) {
    case F_WAITS:
        return st.publisher_waits;
    case F_TIMEOUT:
        return st.dropped_timeout;
    case F_CLOSED:
        return st.dropped_closed;
    case F_DEPTH:
        return st.depth;
    }
    return 0;
}

static uint64_t wait_for_stat(rbus_sub *sub, enum stat_field field, uint64_t want)
{
    uint64_t deadline = rbus_test_now_ns() + UINT64_C(10000000000);
    uint64_t v;
    while ((v = stat_value(sub, field)) < want && rbus_test_now_ns() < deadline)
        rbus_test_sleep_us(200);
    return v;
}

struct pub_job {
    rbus_topic *topic;
    uint64_t payload;
    rbus_pub_opts opts;
    bool use_opts;
    rbus_pub_result result;
    int rc;
    atomic_int done;
};

static void *pub_thread(void *arg)
{
    struct pub_job *j = arg;
    j->rc = rbus_publish_ex(j->topic, &j->payload, sizeof j->payload,
                            j->use_opts ? &j->opts : NULL, &j->result);
    atomic_store(&j->done, 1);
    return NULL;
}

/* Starts a publisher thread that publishes `payload` (as 8 bytes) on t. */
static void start_pub(struct pub_job *j, rbus_topic *t, uint64_t payload, pthread_t *th)
{
    memset(j, 0, sizeof *j);
    j->topic = t;
    j->payload = payload;
    j->rc = 12345;
    assert_int_equal(pthread_create(th, NULL, pub_thread, j), 0);
}

static void fill(rbus_topic *t, uint32_t n, uint64_t *next)
{
    for (uint32_t i = 0; i < n; i++) {
        uint64_t p = (*next)++;
        assert_rbus_ok(rbus_publish(t, &p, sizeof p));
    }
}

static void recv_expect(rbus_sub *s, uint64_t seq, int64_t timeout)
{
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(s, &m, timeout));
    assert_int_equal(rbus_msg_seq(m), seq);
    uint64_t p;
    assert_int_equal(rbus_msg_size(m), sizeof p);
    memcpy(&p, rbus_msg_data(m), sizeof p);
    assert_int_equal(p, seq);
    rbus_msg_release(m);
}

static void publisher_blocks_until_receiver_makes_room(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "blk");
    uint32_t cap;
    rbus_sub *s = rbus_test_subscribe_checked(bus, "blk", 2, RBUS_BLOCK, 0, &cap);

    uint64_t next = 1;
    fill(t, cap, &next);

    struct pub_job job;
    pthread_t th;
    start_pub(&job, t, next++, &th);

    assert_int_equal(wait_for_stat(s, F_WAITS, 1), 1);
    /* it waits: there is no room and nothing else can give it any */
    rbus_test_sleep_us(20000);
    assert_int_equal(atomic_load(&job.done), 0);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.depth, cap);
    assert_int_equal(st.offered, cap + 1);
    assert_int_equal(st.dropped_timeout, 0);

    recv_expect(s, 1, 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_rbus_ok(job.rc);
    assert_int_equal(job.result.matched, 1);
    assert_int_equal(job.result.queued, 1);
    assert_int_equal(job.result.dropped, 0);
    assert_int_equal(job.result.evicted, 0);

    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.offered, cap + 1);
    assert_int_equal(st.received, 1);
    assert_int_equal(st.depth, cap);
    assert_int_equal(st.publisher_waits, 1);
    assert_int_equal(st.dropped_timeout, 0);
    assert_int_equal(st.dropped_closed, 0);
    rbus_test_check_accounting(&st);

    for (uint64_t seq = 2; seq <= cap + 1; seq++)
        recv_expect(s, seq, 0);
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(s, &m, 0), -EAGAIN);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* sub A (full, block forever) sits between B and C in subscription order. */
static void full_block_sub_does_not_delay_other_subs(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "slow.t");
    rbus_sub *b = rbus_test_subscribe_checked(bus, "slow.t", 16, RBUS_BLOCK, 0, NULL);
    uint32_t cap;
    rbus_sub *a = rbus_test_subscribe_checked(bus, "slow.*", 2, RBUS_BLOCK, 0, &cap);
    rbus_sub *c = rbus_test_subscribe_checked(bus, ">", 16, RBUS_BLOCK, 0, NULL);

    uint64_t next = 1;
    fill(t, cap, &next);
    for (uint64_t seq = 1; seq <= cap; seq++) {
        recv_expect(b, seq, 0);
        recv_expect(c, seq, 0);
    }

    struct pub_job job;
    pthread_t th;
    start_pub(&job, t, next++, &th);

    /* B and C get the message while the publisher still waits for A */
    recv_expect(b, cap + 1, INT64_C(10000000000));
    recv_expect(c, cap + 1, INT64_C(10000000000));
    assert_int_equal(wait_for_stat(a, F_WAITS, 1), 1);
    assert_int_equal(atomic_load(&job.done), 0);
    assert_int_equal(stat_value(b, F_WAITS), 0);
    assert_int_equal(stat_value(c, F_WAITS), 0);

    recv_expect(a, 1, 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_rbus_ok(job.rc);
    assert_int_equal(job.result.matched, 3);
    assert_int_equal(job.result.queued, 3);
    assert_int_equal(job.result.dropped, 0);

    for (uint64_t seq = 2; seq <= cap + 1; seq++)
        recv_expect(a, seq, 0);
    rbus_sub *all[3] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(all[i], &st));
        assert_int_equal(st.offered, cap + 1);
        assert_int_equal(st.received, cap + 1);
        assert_int_equal(st.depth, 0);
        rbus_test_check_accounting(&st);
        assert_rbus_ok(rbus_unsubscribe(all[i]));
    }
    rbus_destroy(bus);
}

/* Two full block subs: a forever one and a 30 ms one. If the publisher
 * waited for them one after the other, the short one could not time out
 * while the forever one holds it. */
static void full_block_subs_are_waited_on_together(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "two");
    uint32_t cap_a, cap_b;
    rbus_sub *a = rbus_test_subscribe_checked(bus, "two", 2, RBUS_BLOCK, 0, &cap_a);
    rbus_sub *b = rbus_test_subscribe_checked(bus, "two", 2, RBUS_BLOCK, INT64_C(30000000), &cap_b);
    uint32_t cap = cap_a > cap_b ? cap_a : cap_b;

    uint64_t next = 1;
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.timeout_ns = -1;
    /* fill both; the smaller one drops (no wait) what does not fit */
    for (uint32_t i = 0; i < cap; i++) {
        uint64_t p = next++;
        assert_rbus_ok(rbus_publish_ex(t, &p, sizeof p, &po, NULL));
    }
    uint64_t base_timeout_a = stat_value(a, F_TIMEOUT);
    uint64_t base_timeout_b = stat_value(b, F_TIMEOUT);

    struct pub_job job;
    pthread_t th;
    start_pub(&job, t, next++, &th);

    assert_int_equal(wait_for_stat(b, F_TIMEOUT, base_timeout_b + 1), base_timeout_b + 1);
    assert_int_equal(stat_value(a, F_WAITS), 1);
    assert_int_equal(stat_value(b, F_WAITS), 1);
    assert_int_equal(atomic_load(&job.done), 0);

    recv_expect(a, 1, 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_rbus_ok(job.rc);
    assert_int_equal(job.result.matched, 2);
    assert_int_equal(job.result.queued, 1);
    assert_int_equal(job.result.dropped, 1);

    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(a, &st));
    assert_int_equal(st.dropped_timeout, base_timeout_a);
    assert_int_equal(st.offered, cap + 1);
    rbus_test_check_accounting(&st);
    assert_rbus_ok(rbus_sub_stats_get(b, &st));
    assert_int_equal(st.dropped_timeout, base_timeout_b + 1);
    assert_int_equal(st.offered, cap + 1);
    rbus_test_check_accounting(&st);

    assert_rbus_ok(rbus_unsubscribe(a));
    assert_rbus_ok(rbus_unsubscribe(b));
    rbus_destroy(bus);
}

static void run_timeout_case(int64_t sub_timeout, int64_t pub_timeout, int64_t expect_min,
                             int64_t expect_below)
{
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "to");
    uint32_t cap;
    rbus_sub *s = rbus_test_subscribe_checked(bus, "to", 2, RBUS_BLOCK, sub_timeout, &cap);
    uint64_t next = 1;
    fill(t, cap, &next);

    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.timeout_ns = pub_timeout;
    uint64_t p = next++;
    rbus_pub_result r;
    uint64_t t0 = rbus_test_now_ns();
    assert_rbus_ok(rbus_publish_ex(t, &p, sizeof p, &po, &r));
    uint64_t waited = rbus_test_now_ns() - t0;
    assert_int_equal(r.matched, 1);
    assert_int_equal(r.queued, 0);
    assert_int_equal(r.dropped, 1);
    if (waited < (uint64_t)expect_min || waited >= (uint64_t)expect_below) {
        print_error("sub timeout %lld, pub timeout %lld: waited %llu ns\n",
                    (long long)sub_timeout, (long long)pub_timeout,
                    (unsigned long long)waited);
        fail();
    }
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.dropped_timeout, 1);
    assert_int_equal(st.publisher_waits, 1);
    assert_int_equal(st.offered, cap + 1);
    assert_int_equal(st.depth, cap);
    rbus_test_check_accounting(&st);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void pub_timeout_shorter_than_sub_timeout_wins(void **state)
{
    (void)state;
    /* the sub waits forever; the publisher says 20 ms */
    run_timeout_case(0, INT64_C(20000000), INT64_C(20000000), INT64_C(30000000000));
    /* the sub says 20 s; the publisher says 20 ms: the shorter one */
    run_timeout_case(INT64_C(20000000000), INT64_C(20000000), INT64_C(20000000),
                     INT64_C(20000000000));
}

static void sub_timeout_shorter_than_pub_timeout_wins(void **state)
{
    (void)state;
    run_timeout_case(INT64_C(20000000), INT64_C(20000000000), INT64_C(20000000),
                     INT64_C(20000000000));
}

/* A receiver thread drains a tiny block queue while the main thread
 * publishes many messages: none lost, all in order, no drops. */
struct drain_job {
    rbus_sub *sub;
    uint64_t n;
    uint64_t got;
    uint64_t bad;
    int last_rc;
};

static void *drain_thread(void *arg)
{
    struct drain_job *j = arg;
    while (j->got < j->n) {
        rbus_msg *m = NULL;
        int rc = rbus_recv(j->sub, &m, INT64_C(10000000000));
        if (rc != 0) {
            j->last_rc = rc;
            break;
        }
        uint64_t p;
        memcpy(&p, rbus_msg_data(m), sizeof p);
        if (rbus_msg_seq(m) != j->got + 1 || p != j->got + 1)
            j->bad++;
        j->got++;
        rbus_msg_release(m);
    }
    return NULL;
}

static void blocked_publisher_loses_nothing_with_slow_receiver(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "flow");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "flow", 2, RBUS_BLOCK, 0, NULL);

    struct drain_job j = {.sub = s, .n = 5000};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, drain_thread, &j), 0);
    for (uint64_t i = 1; i <= j.n; i++) {
        rbus_pub_result r;
        assert_rbus_ok(rbus_publish_ex(t, &i, sizeof i, NULL, &r));
        assert_int_equal(r.queued, 1);
        assert_int_equal(r.dropped, 0);
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(j.last_rc, 0);
    assert_int_equal(j.got, j.n);
    assert_int_equal(j.bad, 0);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.offered, j.n);
    assert_int_equal(st.received, j.n);
    assert_int_equal(st.dropped_timeout + st.dropped_closed, 0);
    assert_int_equal(st.depth, 0);
    rbus_test_check_accounting(&st);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* ------------------------------------------- a consumer that hangs */

struct gate {
    atomic_int entered, open;
};

static int gate_handler(const rbus_msg *m, void *arg)
{
    (void)m;
    struct gate *g = arg;
    atomic_fetch_add(&g->entered, 1);
    while (!atomic_load(&g->open))
        rbus_test_sleep_us(1000);
    return 0;
}

static void wait_for_waiting(rbus_sub *s, uint32_t want)
{
    rbus_sub_stats st;
    uint64_t deadline = rbus_test_now_ns() + UINT64_C(10000000000);
    do {
        assert_rbus_ok(rbus_sub_stats_get(s, &st));
        if (st.publishers_waiting == want)
            return;
        rbus_test_sleep_us(200);
    } while (rbus_test_now_ns() < deadline);
    fail_msg("publishers_waiting stayed %u, not %u", st.publishers_waiting, want);
}

/* A handler that hangs under RBUS_BLOCK with no timeout freezes its
 * publishers for good; the stats and Prometheus show how many wait and
 * for how long. */
static void a_hung_consumer_shows_in_the_wait_gauges(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "hang.t");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "hang.t", 4, RBUS_BLOCK, 0, NULL);
    struct gate g = {0};
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, gate_handler, &g, NULL));
    uint64_t next = 1;
    fill(t, 1, &next);
    while (!atomic_load(&g.entered))
        rbus_test_sleep_us(200);
    fill(t, 4, &next); /* the queue is full; the handler hangs */
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.publishers_waiting, 0);
    assert_int_equal(st.longest_wait_ns, 0);

    struct pub_job a, b;
    pthread_t ta, tb;
    uint64_t a_began = rbus_test_now_ns();
    start_pub(&a, t, next++, &ta);
    wait_for_waiting(s, 1);
    rbus_test_sleep_us(50000);
    start_pub(&b, t, next++, &tb);
    wait_for_waiting(s, 2);
    rbus_test_sleep_us(50000);
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    uint64_t after = rbus_test_now_ns();
    printf("# hung consumer: %u publishers waiting, the longest for %.1f ms\n",
           st.publishers_waiting, st.longest_wait_ns / 1e6);
    assert_int_equal(st.publishers_waiting, 2);
    /* Publisher a began between a_began and its wait, 100 ms or more ago. */
    assert_true(st.longest_wait_ns >= UINT64_C(100000000));
    assert_true(st.longest_wait_ns <= after - a_began);
    assert_int_equal(atomic_load(&a.done) + atomic_load(&b.done), 0);

    char text[16384];
    assert_true(rbus_stats_prometheus(bus, text, sizeof text) > 0);
    assert_int_equal(
        strtoul(rbus_test_prom_sample(text, "ringbus_sub_publishers_waiting", s), NULL, 10), 2);
    double secs = strtod(rbus_test_prom_sample(text, "ringbus_sub_longest_wait_seconds", s), NULL);
    assert_true(secs >= 0.1 && secs < 1e3);

    atomic_store(&g.open, 1);
    assert_int_equal(pthread_join(ta, NULL), 0);
    assert_int_equal(pthread_join(tb, NULL), 0);
    assert_rbus_ok(a.rc);
    assert_rbus_ok(b.rc);
    rbus_dispatch_stats final;
    assert_rbus_ok(rbus_dispatch_drain(d, -1, &final));
    assert_int_equal(final.handled, 7);
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.publishers_waiting, 0);
    assert_int_equal(st.longest_wait_ns, 0);
    assert_true(rbus_stats_prometheus(bus, text, sizeof text) > 0);
    assert_int_equal(
        strtoul(rbus_test_prom_sample(text, "ringbus_sub_publishers_waiting", s), NULL, 10), 0);
    assert_int_equal(strncmp(rbus_test_prom_sample(text, "ringbus_sub_longest_wait_seconds", s),
                             "0.000000000\n", 12),
                     0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(publisher_blocks_until_receiver_makes_room),
        cmocka_unit_test(full_block_sub_does_not_delay_other_subs),
        cmocka_unit_test(full_block_subs_are_waited_on_together),
        cmocka_unit_test(pub_timeout_shorter_than_sub_timeout_wins),
        cmocka_unit_test(sub_timeout_shorter_than_pub_timeout_wins),
        cmocka_unit_test(blocked_publisher_loses_nothing_with_slow_receiver),
        cmocka_unit_test(a_hung_consumer_shows_in_the_wait_gauges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
