/*
 * Latency histograms and lag: every figure of rbus_sub_timing_get and
 * rbus_dispatch_timing_get against delays the test makes itself (sleeps),
 * with bounds that hold on a loaded machine: a sleep of T makes a wait of
 * at least T, and nothing here takes 8 s. Plus the bucket bounds and the
 * quantile helper, computed by hand.
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "test_util.h"

/* Bucket 16 ends at 256 << 16 ns = 16.8 ms: every wait of 20 ms or more
 * lies above it. */
#define B_16MS 16u
#define SLEEP_US 20000u

static void bounds_and_quantiles(void **state)
{
    (void)state;
    assert_int_equal(rbus_hist_bound_ns(0), 256);
    assert_int_equal(rbus_hist_bound_ns(1), 512);
    assert_int_equal(rbus_hist_bound_ns(RBUS_HIST_FINITE - 1), UINT64_C(256) << 25);
    assert_int_equal(rbus_hist_bound_ns(RBUS_HIST_FINITE), UINT64_MAX);
    assert_int_equal(rbus_hist_bound_ns(1000), UINT64_MAX);

    rbus_hist h;
    memset(&h, 0, sizeof h);
    assert_int_equal(rbus_hist_quantile_ns(NULL, 0.5), 0);
    assert_int_equal(rbus_hist_quantile_ns(&h, 0.5), 0); /* empty */
    /* 100 values, all in bucket 3 (1024, 2048]: the median is half way. */
    h.count = 100;
    for (unsigned i = 3; i < RBUS_HIST_BUCKETS; i++)
        h.bucket[i] = 100;
    assert_int_equal(rbus_hist_quantile_ns(&h, 0.5), 1536);
    assert_int_equal(rbus_hist_quantile_ns(&h, 1.0), 2048);
    assert_int_equal(rbus_hist_quantile_ns(&h, 0.0), 1024);
    assert_int_equal(rbus_hist_quantile_ns(&h, -0.1), 0);
    assert_int_equal(rbus_hist_quantile_ns(&h, 1.1), 0);
    assert_int_equal(rbus_hist_quantile_ns(&h, NAN), 0);
    /* Half in bucket 0 [0, 256], half in +Inf: p25 at 128, p99 at the
     * largest finite bound. */
    memset(&h, 0, sizeof h);
    h.count = 10;
    for (unsigned i = 0; i < RBUS_HIST_FINITE; i++)
        h.bucket[i] = 5;
    h.bucket[RBUS_HIST_FINITE] = 10;
    assert_int_equal(rbus_hist_quantile_ns(&h, 0.25), 128);
    assert_int_equal(rbus_hist_quantile_ns(&h, 0.99), UINT64_C(256) << 25);
}

/* Every value of h lies in (bound(lo), bound(hi)]. */
static void assert_all_within(const rbus_hist *h, unsigned lo, unsigned hi, uint64_t n)
{
    assert_int_equal(h->count, n);
    assert_int_equal(h->bucket[RBUS_HIST_BUCKETS - 1], n);
    assert_int_equal(h->bucket[lo], 0);
    assert_int_equal(h->bucket[hi], n);
}

static void queue_wait_and_lag(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "orders.created");
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 64;
    o.latency_sample = 1;
    rbus_sub *sampled, *plain;
    assert_rbus_ok(rbus_subscribe(bus, "orders.*", &o, &sampled));
    plain = rbus_test_subscribe(bus, "orders.*", 64, RBUS_BLOCK, 0);

    rbus_sub_timing tm;
    assert_rbus_ok(rbus_sub_timing_get(sampled, &tm));
    assert_int_equal(tm.lag_ns, 0);
    assert_int_equal(tm.depth, 0);
    assert_int_equal(tm.queue_wait.count, 0);

    for (int i = 0; i < 5; i++)
        assert_rbus_ok(rbus_publish(t, &i, sizeof i));
    rbus_test_sleep_us(SLEEP_US);
    /* Lag: the oldest has waited at least the sleep. */
    assert_rbus_ok(rbus_sub_timing_get(sampled, &tm));
    assert_int_equal(tm.depth, 5);
    assert_true(tm.lag_ns >= SLEEP_US * UINT64_C(1000));
    assert_true(tm.lag_ns < UINT64_C(8000000000));
    /* A later message does not make the lag younger. */
    int x = 5;
    assert_rbus_ok(rbus_publish(t, &x, sizeof x));
    assert_rbus_ok(rbus_sub_timing_get(sampled, &tm));
    assert_true(tm.lag_ns >= SLEEP_US * UINT64_C(1000));

    rbus_msg *batch[8];
    assert_int_equal(rbus_recv_batch(sampled, batch, 8, 0), 6);
    for (int i = 0; i < 6; i++)
        rbus_msg_release(batch[i]);
    assert_int_equal(rbus_recv_batch(plain, batch, 8, 0), 6);
    for (int i = 0; i < 6; i++)
        rbus_msg_release(batch[i]);

    assert_rbus_ok(rbus_sub_timing_get(sampled, &tm));
    assert_int_equal(tm.lag_ns, 0);
    assert_int_equal(tm.depth, 0);
    /* Five waited >= 20 ms, the sixth less (it may be anything below). */
    assert_int_equal(tm.queue_wait.count, 6);
    assert_true(tm.queue_wait.bucket[B_16MS] <= 1);
    assert_int_equal(tm.queue_wait.bucket[RBUS_HIST_FINITE - 1], 6);
    assert_true(tm.queue_wait.sum_ns >= 5 * SLEEP_US * UINT64_C(1000));
    assert_true(rbus_hist_quantile_ns(&tm.queue_wait, 0.5) > rbus_hist_bound_ns(B_16MS));
    /* Without latency_sample, no histogram (and no clock read). */
    assert_rbus_ok(rbus_sub_timing_get(plain, &tm));
    assert_int_equal(tm.queue_wait.count, 0);
    assert_int_equal(tm.publisher_wait.count, 0);

    assert_rbus_ok(rbus_unsubscribe(sampled));
    assert_rbus_ok(rbus_unsubscribe(plain));
    rbus_destroy(bus);
}

static void sampling_by_sequence(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "orders.created");
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 128;
    o.latency_sample = 4;
    rbus_sub *s;
    assert_rbus_ok(rbus_subscribe(bus, ">", &o, &s));
    for (int i = 0; i < 100; i++)
        assert_rbus_ok(rbus_publish(t, &i, sizeof i));
    rbus_msg *m;
    while (rbus_recv(s, &m, 0) == 0)
        rbus_msg_release(m);
    rbus_sub_timing tm;
    assert_rbus_ok(rbus_sub_timing_get(s, &tm));
    assert_int_equal(tm.queue_wait.count, 25); /* sequence numbers 4, 8, ..., 100 */
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

struct blocked {
    rbus_topic *t;
    int rc;
};

static void *publish_one(void *arg)
{
    struct blocked *b = arg;
    int v = 2;
    b->rc = rbus_publish(b->t, &v, sizeof v);
    return NULL;
}

/* Waits (bounded) until a publisher waits for room on s. */
static void wait_for_waiter(rbus_sub *s)
{
    rbus_sub_stats st;
    for (int i = 0; i < 10000; i++) {
        assert_rbus_ok(rbus_sub_stats_get(s, &st));
        if (st.publishers_waiting == 1)
            return;
        rbus_test_sleep_us(500);
    }
    fail_msg("the publisher never waited");
}

static void publisher_wait(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "orders.created");
    /* Capacity 1: the second publish waits until we receive, 20 ms on. */
    rbus_sub *s = rbus_test_subscribe(bus, ">", 1, RBUS_BLOCK, 0);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    int v = 1;
    for (uint32_t i = 0; i < st.capacity; i++)
        assert_rbus_ok(rbus_publish(t, &v, sizeof v));
    struct blocked b = {t, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, publish_one, &b), 0);
    wait_for_waiter(s);
    rbus_test_sleep_us(SLEEP_US);
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(s, &m, -1));
    rbus_msg_release(m);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_rbus_ok(b.rc);
    rbus_sub_timing tm;
    assert_rbus_ok(rbus_sub_timing_get(s, &tm));
    assert_all_within(&tm.publisher_wait, B_16MS, RBUS_HIST_FINITE - 1, 1);
    assert_int_equal(tm.queue_wait.count, 0);
    assert_rbus_ok(rbus_unsubscribe(s));

    /* A wait that times out is recorded too: 20 ms of block_timeout_ns. */
    s = rbus_test_subscribe(bus, ">", 1, RBUS_BLOCK, SLEEP_US * INT64_C(1000));
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    for (uint32_t i = 0; i < st.capacity + 1; i++)
        assert_rbus_ok(rbus_publish(t, &v, sizeof v));
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.dropped_timeout, 1);
    assert_rbus_ok(rbus_sub_timing_get(s, &tm));
    assert_all_within(&tm.publisher_wait, B_16MS, RBUS_HIST_FINITE - 1, 1);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* The dispatcher test's handler: the first call waits for the test's go;
 * every call sleeps 20 ms. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool go;
    atomic_int calls;
};

static int gated_handler(const rbus_msg *m, void *arg)
{
    (void)m;
    struct gate *g = arg;
    if (atomic_fetch_add(&g->calls, 1) == 0) {
        pthread_mutex_lock(&g->mu);
        while (!g->go)
            pthread_cond_wait(&g->cv, &g->mu);
        pthread_mutex_unlock(&g->mu);
    }
    rbus_test_sleep_us(SLEEP_US);
    return 0;
}

/* A dispatcher (two workers, ordered by key) on a fresh bus, handed two
 * messages of one order key: the first's handler waits at the gate, the
 * second is received and parks behind it. Once both are in hand, 20 ms
 * pass and the gate opens: the second's start delay is at least that. */
struct gated_run {
    rbus *bus;
    rbus_sub *s;
    rbus_dispatcher *d;
    struct gate g;
};

static void gated_run_start(struct gated_run *r)
{
    rbus_topic *t = rbus_test_bus_and_topic(&r->bus, "orders.created");
    r->s = rbus_test_subscribe(r->bus, ">", 16, RBUS_BLOCK, 0);
    r->g = (struct gate){.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    atomic_init(&r->g.calls, 0);
    rbus_dispatch_opts o;
    rbus_dispatch_opts_init(&o);
    o.threads = 2;
    o.ordered_by_key = true;
    assert_rbus_ok(rbus_dispatch_start(&r->d, r->s, gated_handler, &r->g, &o));
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.order_key = "k";
    po.order_key_len = 1;
    int v = 0;
    assert_rbus_ok(rbus_publish_ex(t, &v, sizeof v, &po, NULL));
    assert_rbus_ok(rbus_publish_ex(t, &v, sizeof v, &po, NULL));
    rbus_dispatch_stats ds;
    for (int i = 0; i < 10000; i++) {
        assert_rbus_ok(rbus_dispatch_stats_get(r->d, &ds));
        if (ds.in_hand == 2)
            break;
        rbus_test_sleep_us(500);
    }
    assert_int_equal(ds.in_hand, 2); /* both received: the second waits from here */
    rbus_test_sleep_us(SLEEP_US);
    pthread_mutex_lock(&r->g.mu);
    r->g.go = true;
    pthread_cond_broadcast(&r->g.cv);
    pthread_mutex_unlock(&r->g.mu);
}

static void dispatcher_timing(void **state)
{
    (void)state;
    struct gated_run r;
    gated_run_start(&r);
    rbus *bus = r.bus;
    rbus_sub *s = r.s;
    rbus_dispatch_stats ds;
    assert_rbus_ok(rbus_dispatch_drain(r.d, INT64_C(10000000000), &ds));
    assert_int_equal(ds.handled, 2);

    /* Drained and stopped: the figures live on in the Prometheus text. */
    int len = rbus_stats_prometheus(bus, NULL, 0);
    char *text = malloc((size_t)len + 1);
    assert_non_null(text);
    assert_int_equal(rbus_stats_prometheus(bus, text, (size_t)len + 1), len);
    const char *c = rbus_test_prom_sample(text, "ringbus_dispatch_handler_seconds_count", s);
    assert_non_null(c);
    assert_int_equal(strtoull(c, NULL, 10), 2);
    c = rbus_test_prom_sample(text, "ringbus_dispatch_start_delay_seconds_count", s);
    assert_non_null(c);
    assert_int_equal(strtoull(c, NULL, 10), 2);
    free(text);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* The same through a running dispatcher's own snapshot. */
static void dispatcher_timing_live(void **state)
{
    (void)state;
    struct gated_run r;
    gated_run_start(&r);
    rbus *bus = r.bus;
    rbus_sub *s = r.s;
    rbus_dispatcher *d = r.d;
    rbus_dispatch_stats ds;
    for (int i = 0; i < 10000; i++) {
        assert_rbus_ok(rbus_dispatch_stats_get(d, &ds));
        if (ds.handled == 2)
            break;
        rbus_test_sleep_us(500);
    }
    rbus_dispatch_timing dt;
    assert_rbus_ok(rbus_dispatch_timing_get(d, &dt));
    /* Each handler call slept 20 ms (the first waited for go as well). */
    assert_all_within(&dt.handler, B_16MS, RBUS_HIST_FINITE - 1, 2);
    /* The first started at once; the second was received before the
     * test's 20 ms sleep and started after the first handler returned. */
    assert_int_equal(dt.start_delay.count, 2);
    assert_true(dt.start_delay.bucket[B_16MS] <= 1);
    assert_int_equal(dt.start_delay.bucket[RBUS_HIST_FINITE - 1], 2);
    assert_rbus_ok(rbus_dispatch_stop(d));
    assert_rbus_rc(rbus_dispatch_timing_get(d, &dt), -ESHUTDOWN);
    assert_int_equal(dt.handler.count, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* Lag and histograms read while a publisher and a receiver run flat out:
 * the lag read races receivers taking (and recycling) the very message it
 * looks at; every reading must still be a real age, and the sanitizers
 * must see nothing. */
struct churn {
    rbus_topic *t;
    rbus_sub *s;
    uint64_t n;
    atomic_int done;
};

static void *churn_publish(void *arg)
{
    struct churn *c = arg;
    for (uint64_t i = 0; i < c->n; i++)
        assert_rbus_ok(rbus_publish(c->t, &i, sizeof i));
    return NULL;
}

static void *churn_receive(void *arg)
{
    struct churn *c = arg;
    for (uint64_t i = 0; i < c->n; i++) {
        rbus_msg *m;
        assert_rbus_ok(rbus_recv(c->s, &m, -1));
        rbus_msg_release(m);
    }
    atomic_store(&c->done, 1);
    return NULL;
}

static void lag_read_while_receiving(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "churn.t");
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 64;
    o.latency_sample = 1;
    rbus_sub *s;
    assert_rbus_ok(rbus_subscribe(bus, ">", &o, &s));
    struct churn c = {t, s, rbus_test_scaled(200000, 2000), 0};
    print_message("lag_read_while_receiving: %llu messages\n", (unsigned long long)c.n);
    pthread_t p, r;
    uint64_t start = rbus_test_now_ns(); /* before the first publish */
    assert_int_equal(pthread_create(&r, NULL, churn_receive, &c), 0);
    assert_int_equal(pthread_create(&p, NULL, churn_publish, &c), 0);
    unsigned reads = 0;
    char buf[1 << 14];
    while (!atomic_load(&c.done)) {
        rbus_sub_timing tm;
        assert_rbus_ok(rbus_sub_timing_get(s, &tm));
        /* No queued message is older than the test: a time read from a
         * message being recycled (0, or garbage) would be. */
        if (tm.lag_ns > rbus_test_now_ns() - start)
            fail_msg("lag %llu, elapsed %llu", (unsigned long long)tm.lag_ns,
                     (unsigned long long)(rbus_test_now_ns() - start));
        sched_yield(); /* valgrind runs one thread at a time */
        assert_int_equal(tm.queue_wait.count, tm.queue_wait.bucket[RBUS_HIST_BUCKETS - 1]);
        if ((++reads & 63) == 0)
            assert_true(rbus_stats_prometheus(bus, buf, sizeof buf) > 0);
    }
    assert_int_equal(pthread_join(p, NULL), 0);
    assert_int_equal(pthread_join(r, NULL), 0);
    rbus_sub_timing tm;
    assert_rbus_ok(rbus_sub_timing_get(s, &tm));
    assert_int_equal(tm.queue_wait.count, c.n);
    assert_int_equal(tm.lag_ns, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void bad_input(void **state)
{
    (void)state;
    rbus_sub_timing tm;
    rbus_dispatch_timing dt;
    assert_rbus_rc(rbus_sub_timing_get(NULL, &tm), -EINVAL);
    assert_rbus_rc(rbus_dispatch_timing_get(NULL, &dt), -EINVAL);
    rbus *bus;
    rbus_test_bus_and_topic(&bus, "a.b");
    rbus_sub *s = rbus_test_subscribe(bus, ">", 4, RBUS_BLOCK, 0);
    assert_rbus_rc(rbus_sub_timing_get(s, NULL), -EINVAL);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static int64_t coarse_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

/* RBUS_TIME_COARSE: messages carry the coarse clock, and the ages the bus
 * reports (queue_wait, lag) are read against that same clock, so that
 * they are right to a tick rather than skewed by mixing clocks. */
static void coarse_time_source(void **state)
{
    (void)state;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.time_source = RBUS_TIME_COARSE;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "coarse.t", &t));
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.latency_sample = 1;
    rbus_sub *s;
    assert_rbus_ok(rbus_subscribe(bus, "coarse.t", &o, &s));
    int64_t before = coarse_now();
    for (int i = 0; i < 5; i++)
        assert_rbus_ok(rbus_publish(t, &i, sizeof i));
    rbus_payload pl[3] = {{"a", 1}, {"b", 1}, {"c", 1}};
    assert_int_equal(rbus_publish_batch(t, pl, 3, NULL, NULL), 3);
    int64_t after = coarse_now();
    rbus_test_sleep_us(SLEEP_US);
    rbus_sub_timing tm;
    assert_rbus_ok(rbus_sub_timing_get(s, &tm));
    /* A tick is at most 10 ms: the lag is the sleep give or take one. */
    assert_true(tm.lag_ns + UINT64_C(10000000) >= SLEEP_US * UINT64_C(1000));
    assert_true(tm.lag_ns < UINT64_C(8000000000));
    rbus_msg *m[8];
    assert_int_equal(rbus_recv_batch(s, m, 8, 0), 8);
    for (int i = 0; i < 8; i++) {
        int64_t at = (int64_t)rbus_msg_time_ns(m[i]);
        assert_true(at >= before && at <= after);
        rbus_msg_release(m[i]);
    }
    assert_rbus_ok(rbus_sub_timing_get(s, &tm));
    assert_int_equal(tm.queue_wait.count, 8);
    assert_true(tm.queue_wait.sum_ns + 8 * UINT64_C(10000000) >= 8 * SLEEP_US * UINT64_C(1000));
    rbus_destroy(bus);

    cfg.time_source = (rbus_time_source)2;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bounds_and_quantiles),     cmocka_unit_test(queue_wait_and_lag),
        cmocka_unit_test(sampling_by_sequence),     cmocka_unit_test(publisher_wait),
        cmocka_unit_test(dispatcher_timing),        cmocka_unit_test(dispatcher_timing_live),
        cmocka_unit_test(lag_read_while_receiving), cmocka_unit_test(bad_input),
        cmocka_unit_test(coarse_time_source),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
