/*
 * Publisher readiness: watermarks with hysteresis, the topic's descriptor
 * that follows them, what rbus_pub_result reports, RBUS_PUB_ALL_OR_NONE
 * (every RBUS_BLOCK subscription or none), bad input, and an event loop
 * that publishes against competing receivers and racing publishers
 * without ever waiting or losing a message.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "harness.h"

static void recv_n(rbus_sub *s, int n)
{
    for (int i = 0; i < n; i++) {
        rbus_msg *m;
        assert_rbus_ok(rbus_recv(s, &m, 0));
        rbus_msg_release(m);
    }
}

static void hysteresis(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "jobs.new", &t));
    int fd = rbus_topic_fd(t);
    assert_true(fd >= 0);
    assert_int_equal(rbus_topic_fd(t), fd); /* the same one */
    assert_true(rbus_test_fd_readable(fd, 0)); /* nobody to hold it back */
    rbus_sub *s = rbus_test_subscribe_marks(bus, "jobs.>", 8, 0, 0);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.high_watermark, 8); /* defaults: capacity, half of it */
    assert_int_equal(st.low_watermark, 4);
    rbus_pub_result res;
    for (int i = 0; i < 7; i++) {
        assert_rbus_ok(rbus_publish_ex(t, "j", 1, NULL, &res));
        assert_int_equal(res.at_high_watermark, 0);
        assert_true(rbus_test_fd_readable(fd, 0));
    }
    assert_rbus_ok(rbus_publish_ex(t, "j", 1, NULL, &res)); /* the 8th: at the mark */
    assert_int_equal(res.at_high_watermark, 1);
    assert_int_equal(res.high_watermark_sub, rbus_sub_id(s));
    assert_false(rbus_test_fd_readable(fd, 0));
    assert_int_equal(rbus_topic_ready(t), 0);
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_true(st.over_high);
    assert_int_equal(st.high_crossings, 1);
    /* Drained to 4: not below the low mark yet. */
    recv_n(s, 4);
    assert_false(rbus_test_fd_readable(fd, 0));
    /* Below it: ready again. */
    recv_n(s, 1);
    assert_true(rbus_test_fd_readable(fd, 0));
    assert_int_equal(rbus_topic_ready(t), 1);
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_false(st.over_high);
    assert_int_equal(st.low_crossings, 1);
    /* Back up to 7: under the high mark, still ready (no flapping). */
    for (int i = 0; i < 4; i++)
        assert_rbus_ok(rbus_publish(t, "j", 1));
    assert_true(rbus_test_fd_readable(fd, 0));
    /* Prometheus agrees. */
    char text[16384];
    assert_true(rbus_stats_prometheus(bus, text, sizeof text) > 0);
    assert_non_null(strstr(text, "ringbus_topic_ready{topic=\"jobs.new\"} 1\n"));
    const char *v = rbus_test_prom_sample(text, "ringbus_sub_high_watermark_crossings_total", s);
    assert_non_null(v);
    assert_int_equal(strtoull(v, NULL, 10), 1);
    /* Closing the subscription frees the topic at once. */
    assert_rbus_ok(rbus_publish(t, "j", 1)); /* 8: over again */
    assert_false(rbus_test_fd_readable(fd, 0));
    assert_rbus_ok(rbus_sub_close(s));
    assert_true(rbus_test_fd_readable(fd, 0));
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* Chosen marks; subscriptions of the other policies never hold a topic
 * back; a topic another topic's traffic filled shows it too. */
static void marks_and_policies(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *a, *b;
    assert_rbus_ok(rbus_topic_open(bus, "m.a", &a));
    assert_rbus_ok(rbus_topic_open(bus, "m.b", &b));
    int fa = rbus_topic_fd(a), fb = rbus_topic_fd(b);
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 4;
    o.overflow = RBUS_DROP_OLDEST;
    rbus_sub *drop;
    assert_rbus_ok(rbus_subscribe(bus, "m.*", &o, &drop));
    for (int i = 0; i < 10; i++)
        assert_rbus_ok(rbus_publish(a, "x", 1));
    assert_true(rbus_test_fd_readable(fa, 0)); /* a full drop-oldest queue holds nothing back */
    rbus_sub *s = rbus_test_subscribe_marks(bus, "m.*", 16, 6, 2);
    for (int i = 0; i < 6; i++)
        assert_rbus_ok(rbus_publish(a, "x", 1));
    /* m.a's publishes filled the subscription m.b shares: both not ready. */
    assert_false(rbus_test_fd_readable(fa, 0));
    assert_false(rbus_test_fd_readable(fb, 0));
    recv_n(s, 3); /* 3 left: not below 2 */
    assert_false(rbus_test_fd_readable(fb, 0));
    recv_n(s, 2);
    assert_true(rbus_test_fd_readable(fa, 0));
    assert_true(rbus_test_fd_readable(fb, 0));
    assert_rbus_ok(rbus_unsubscribe(s));
    assert_rbus_ok(rbus_unsubscribe(drop));
    rbus_destroy(bus);
}

static void all_or_none(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "aon.t", &t));
    rbus_sub *a = rbus_test_subscribe_marks(bus, "aon.t", 4, 0, 0);
    rbus_sub *b = rbus_test_subscribe_marks(bus, "aon.t", 4, 0, 0);
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 2;
    o.overflow = RBUS_DROP_NEWEST;
    rbus_sub *dn;
    assert_rbus_ok(rbus_subscribe(bus, "aon.t", &o, &dn));
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.flags = RBUS_PUB_ALL_OR_NONE;
    po.timeout_ns = -1;
    rbus_pub_result res;
    for (int i = 0; i < 4; i++)
        assert_rbus_ok(rbus_publish_ex(t, "v", 1, &po, &res));
    recv_n(b, 2); /* a full, b has room */
    rbus_sub_stats before_a, before_b, before_dn, st;
    assert_rbus_ok(rbus_sub_stats_get(a, &before_a));
    assert_rbus_ok(rbus_sub_stats_get(b, &before_b));
    assert_rbus_ok(rbus_sub_stats_get(dn, &before_dn));
    assert_rbus_rc(rbus_publish_ex(t, "v", 1, &po, &res), -EAGAIN);
    assert_int_equal(res.queued, 0);
    assert_int_equal(res.at_high_watermark, 1);
    assert_int_equal(res.high_watermark_sub, rbus_sub_id(a));
    assert_non_null(strstr(rbus_last_error_detail(), "has no room"));
    /* Nothing changed anywhere: b, the drop-newest one, the topic. */
    assert_rbus_ok(rbus_sub_stats_get(b, &st));
    assert_int_equal(st.offered, before_b.offered);
    assert_int_equal(st.depth, before_b.depth);
    assert_rbus_ok(rbus_sub_stats_get(dn, &st));
    assert_int_equal(st.offered, before_dn.offered);
    assert_rbus_ok(rbus_sub_stats_get(a, &st));
    assert_int_equal(st.offered, before_a.offered);
    assert_int_equal(st.dropped_timeout, 0);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 4);
    /* Room in a: it goes to both, with the next sequence number. */
    recv_n(a, 1);
    assert_rbus_ok(rbus_publish_ex(t, "w", 1, &po, &res));
    assert_int_equal(res.queued, 2); /* a and b; dn is full: drop-newest */
    assert_int_equal(res.dropped, 1);
    rbus_msg *m;
    for (uint64_t seq = 2; seq <= 5; seq++) { /* 1 was taken above */
        assert_rbus_ok(rbus_recv(a, &m, 0));
        assert_int_equal(rbus_msg_seq(m), seq);
        rbus_msg_release(m);
    }
    rbus_sub *subs[] = {a, b, dn};
    for (int i = 0; i < 3; i++) {
        assert_rbus_ok(rbus_sub_stats_get(subs[i], &st));
        rbus_test_check_accounting(&st);
    }
    /* Bytes count too: a bound that holds one large message. */
    rbus_sub_opts bo;
    rbus_sub_opts_init(&bo);
    bo.max_bytes = 65536; /* the default max_payload */
    rbus_sub *bytes;
    assert_rbus_ok(rbus_subscribe(bus, "aon.big", &bo, &bytes));
    rbus_topic *big;
    assert_rbus_ok(rbus_topic_open(bus, "aon.big", &big));
    static unsigned char blob[40000];
    assert_rbus_ok(rbus_publish_ex(big, blob, sizeof blob, &po, &res));
    assert_rbus_rc(rbus_publish_ex(big, blob, sizeof blob, &po, &res), -EAGAIN);
    assert_rbus_ok(rbus_sub_stats_get(bytes, &st));
    assert_int_equal(st.bytes, sizeof blob);
    assert_int_equal(st.depth, 1);
    recv_n(bytes, 1);
    assert_rbus_ok(rbus_publish_ex(big, blob, sizeof blob, &po, &res));
    assert_rbus_ok(rbus_unsubscribe(bytes));
    for (int i = 0; i < 3; i++)
        assert_rbus_ok(rbus_unsubscribe(subs[i]));
    rbus_destroy(bus);
}

static void bad_input(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 8;
    rbus_sub *s = (rbus_sub *)&s;
    o.high_watermark = 4;
    o.low_watermark = 5;
    assert_rbus_rc(rbus_subscribe(bus, ">", &o, &s), -EINVAL);
    assert_null(s);
    assert_non_null(strstr(rbus_last_error_detail(), "above high_watermark"));
    o.high_watermark = 9;
    o.low_watermark = 0;
    assert_rbus_rc(rbus_subscribe(bus, ">", &o, &s), -EINVAL);
    assert_non_null(strstr(rbus_last_error_detail(), "effective capacity"));
    o.high_watermark = 0;
    o.low_watermark = 9; /* above the default high (8) */
    assert_rbus_rc(rbus_subscribe(bus, ">", &o, &s), -EINVAL);
    o.low_watermark = 2;
    o.overflow = RBUS_DROP_NEWEST;
    assert_rbus_rc(rbus_subscribe(bus, ">", &o, &s), -EINVAL);
    assert_non_null(strstr(rbus_last_error_detail(), "RBUS_BLOCK subscriptions only"));
    rbus_bus_stats bs;
    assert_rbus_ok(rbus_bus_stats_get(bus, &bs));
    assert_int_equal(bs.subscriptions, 0);
    assert_rbus_rc(rbus_topic_fd(NULL), -EINVAL);
    assert_rbus_rc(rbus_topic_ready(NULL), -EINVAL);
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "k", &t));
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.flags = RBUS_PUB_ALL_OR_NONE;
    po.key = "id";
    po.key_len = 2;
    assert_rbus_rc(rbus_publish_ex(t, "v", 1, &po, NULL), -EINVAL);
    assert_non_null(strstr(rbus_last_error_detail(), "with a key"));
    po.key = NULL;
    po.key_len = 0;
    po.flags = 0x80;
    assert_rbus_rc(rbus_publish_ex(t, "v", 1, &po, NULL), -EINVAL);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 0);
    rbus_destroy(bus);
}

/* ------------------------------------------------------------ event loop */

struct loop_run {
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    uint64_t messages, racers_each;
    atomic_int pubs_done;
    atomic_ullong received;
    atomic_uchar *seen; /* per loop message */
    uint64_t eagain, stalls, timeouts;
};

/* One competing receiver: takes until every message arrived. */
static void *receiver_main(void *arg)
{
    struct loop_run *r = arg;
    uint64_t want = r->messages + 2 * r->racers_each;
    unsigned n = 0;
    while (atomic_load(&r->received) < want) {
        rbus_msg *m;
        int rc = rbus_recv(r->sub, &m, 1000000);
        if (rc == -ETIMEDOUT && atomic_load(&r->pubs_done) == 3)
            break; /* everything published is taken: the main thread counts */
        if (rc == -ETIMEDOUT)
            continue;
        if (rc != 0) {
            rbus_test_report("receive: %d", rc);
            return NULL;
        }
        struct rbus_test_payload p;
        if (!rbus_test_payload_get(m, &p))
            rbus_test_report("receive: a payload of %zu bytes", rbus_msg_size(m));
        else if (p.pub == 0 && atomic_fetch_add(&r->seen[p.counter], 1) != 0)
            rbus_test_report("message %llu received twice", (unsigned long long)p.counter);
        rbus_msg_release(m);
        atomic_fetch_add(&r->received, 1);
        if (++n % 64 == 0) /* slower than the loop, in bursts */
            rbus_test_sleep_us(200);
    }
    return NULL;
}

/* Other publishers on the same topic, which wait for room as usual. */
static void *racer_main(void *arg)
{
    struct loop_run *r = arg;
    for (uint64_t i = 0; i < r->racers_each; i++) {
        struct rbus_test_payload p = {.pub = 1, .counter = i};
        int rc = rbus_publish(r->topic, &p, sizeof p);
        if (rc != 0)
            rbus_test_report("racer: %d", rc);
    }
    atomic_fetch_add(&r->pubs_done, 1);
    return NULL;
}

/* The event loop: publish while ready, keep the refused message, wait on
 * the topic's descriptor, never on the bus. */
static void *loop_main(void *arg)
{
    struct loop_run *r = arg;
    int fd = rbus_topic_fd(r->topic);
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.flags = RBUS_PUB_ALL_OR_NONE;
    po.timeout_ns = -1; /* never wait (a drop would show in the stats) */
    for (uint64_t i = 0; i < r->messages;) {
        struct rbus_test_payload p = {.pub = 0, .counter = i};
        rbus_pub_result res;
        int rc = rbus_publish_ex(r->topic, &p, sizeof p, &po, &res);
        if (rc == 0) {
            if (res.queued != 1)
                rbus_test_report("loop: message %llu queued %u times", (unsigned long long)i,
                                 res.queued);
            i++;
            if (!res.at_high_watermark)
                continue;
        } else if (rc == -EAGAIN) {
            r->eagain++;
        } else {
            rbus_test_report("loop: publish: %d", rc);
            break;
        }
        /* Not ready: wait for the descriptor (a real loop serves its
         * other descriptors meanwhile). */
        r->stalls++;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 5000) == 0) {
            r->timeouts++; /* 5 s not ready: stuck, unless truly full */
            if (rbus_topic_ready(r->topic))
                rbus_test_report("loop: ready, but the descriptor slept 5 s");
        }
    }
    atomic_fetch_add(&r->pubs_done, 1);
    return NULL;
}

static void event_loop_never_waits_nor_loses(void **state)
{
    (void)state;
    struct loop_run r;
    memset(&r, 0, sizeof r);
    r.messages = rbus_test_scaled(200000, 2000);
    r.racers_each = r.messages / 4;
    printf("event loop: %llu messages, 2 racing publishers x %llu, 3 receivers, capacity 64, "
           "watermarks 48/16\n",
           (unsigned long long)r.messages, (unsigned long long)r.racers_each);
    r.seen = calloc(r.messages, 1);
    assert_non_null(r.seen);
    assert_rbus_ok(rbus_create(&r.bus, NULL));
    assert_rbus_ok(rbus_topic_open(r.bus, "loop.out", &r.topic));
    r.sub = rbus_test_subscribe_marks(r.bus, "loop.out", 64, 48, 16);
    struct rbus_test_threads *team = malloc(sizeof *team);
    assert_non_null(team);
    rbus_test_threads_init(team);
    rbus_test_threads_add(team, loop_main, &r);
    for (int i = 0; i < 2; i++)
        rbus_test_threads_add(team, racer_main, &r);
    for (int i = 0; i < 3; i++)
        rbus_test_threads_add(team, receiver_main, &r);
    rbus_test_threads_start(team);
    rbus_test_threads_join(team);
    free(team);
    rbus_test_assert_no_thread_errors();
    for (uint64_t i = 0; i < r.messages; i++)
        if (r.seen[i] != 1) {
            print_error("loop message %llu received %u times\n", (unsigned long long)i,
                        (unsigned)r.seen[i]);
            fail();
        }
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(r.sub, &st));
    printf("event loop: %llu refusals, %llu waits for readiness, %llu crossings up, "
           "%llu down\n",
           (unsigned long long)r.eagain, (unsigned long long)r.stalls,
           (unsigned long long)st.high_crossings, (unsigned long long)st.low_crossings);
    assert_int_equal(st.dropped_timeout, 0);
    assert_int_equal(st.received, r.messages + 2 * r.racers_each);
    rbus_test_check_accounting(&st);
    /* The receivers are slower: the loop must have met not-ready, and the
     * marks must have been crossed both ways. */
    assert_true(r.stalls > 0);
    assert_true(st.high_crossings > 0 && st.low_crossings > 0);
    assert_true(st.high_crossings - st.low_crossings <= 1);
    assert_rbus_ok(rbus_unsubscribe(r.sub));
    rbus_destroy(r.bus);
    free(r.seen);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hysteresis),
        cmocka_unit_test(marks_and_policies),
        cmocka_unit_test(all_or_none),
        cmocka_unit_test(bad_input),
        cmocka_unit_test(event_loop_never_waits_nor_loses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
