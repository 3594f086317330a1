/* rbus_close, rbus_sub_close, rbus_unsubscribe and rbus_destroy. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

#define SEC INT64_C(1000000000)

static uint64_t waits_of(rbus_sub *s)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    return st.publisher_waits;
}

/* Waits (bounded, ~10 s) until the subscription counts a waiting publisher. */
static void wait_publisher_waits(rbus_sub *s, uint64_t want)
{
    uint64_t deadline = rbus_test_now_ns() + 10 * UINT64_C(1000000000);
    while (waits_of(s) < want && rbus_test_now_ns() < deadline)
        rbus_test_sleep_us(200);
    assert_int_equal(waits_of(s), want);
}

static void publish_n(rbus_topic *t, uint64_t first, uint64_t count)
{
    for (uint64_t i = first; i < first + count; i++)
        assert_rbus_ok(rbus_publish(t, &i, sizeof i));
}

static void recv_seq(rbus_sub *s, uint64_t seq, int64_t timeout)
{
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(s, &m, timeout));
    assert_int_equal(rbus_msg_seq(m), seq);
    rbus_msg_release(m);
}

/* ---- threads ---- */

struct pub_job {
    rbus_topic *topic;
    uint64_t payload;
    rbus_pub_result result;
    int rc;
    atomic_int done;
    pthread_t th;
};

static void *pub_thread(void *arg)
{
    struct pub_job *j = arg;
    j->rc = rbus_publish_ex(j->topic, &j->payload, sizeof j->payload, NULL, &j->result);
    atomic_store(&j->done, 1);
    return NULL;
}

static void start_pub(struct pub_job *j, rbus_topic *t, uint64_t payload)
{
    memset(j, 0, sizeof *j);
    j->topic = t;
    j->payload = payload;
    j->rc = 12345;
    atomic_init(&j->done, 0);
    assert_int_equal(pthread_create(&j->th, NULL, pub_thread, j), 0);
}

enum rx_kind { RX_RECV, RX_BATCH };

struct rx_job {
    rbus_sub *sub;
    enum rx_kind kind;
    int64_t timeout;
    atomic_int started;
    int rc;
    rbus_msg *msg; /* if one arrived anyway */
    pthread_t th;
};

static void *rx_thread(void *arg)
{
    struct rx_job *j = arg;
    atomic_store(&j->started, 1);
    if (j->kind == RX_RECV) {
        j->rc = rbus_recv(j->sub, &j->msg, j->timeout);
    } else {
        rbus_msg *b[4];
        j->rc = rbus_recv_batch(j->sub, b, 4, j->timeout);
        for (int i = 0; i < j->rc; i++)
            rbus_msg_release(b[i]);
    }
    return NULL;
}

static void start_rx(struct rx_job *j, rbus_sub *s, enum rx_kind kind, int64_t timeout)
{
    memset(j, 0, sizeof *j);
    j->sub = s;
    j->kind = kind;
    j->timeout = timeout;
    j->rc = 12345;
    atomic_init(&j->started, 0);
    assert_int_equal(pthread_create(&j->th, NULL, rx_thread, j), 0);
    /* let it get into the wait; correctness does not depend on it having
     * arrived there except for rbus_unsubscribe (see there) */
    while (!atomic_load(&j->started))
        rbus_test_sleep_us(100);
    rbus_test_sleep_us(50000);
}

static void join_rx(struct rx_job *j, int want)
{
    assert_int_equal(pthread_join(j->th, NULL), 0);
    if (j->msg) {
        rbus_msg_release(j->msg);
        j->msg = NULL;
    }
    assert_rbus_rc(j->rc, want);
}

/* A publisher waiting for room: a bus with one topic, a full BLOCK
 * subscription on it (capacity 2 asked; 1..cap queued) and a roomy one, and
 * a publisher thread whose message cap + 1 waits for room in `full`. */
struct blocked_pub {
    rbus *bus;
    rbus_topic *t;
    rbus_sub *full, *other;
    uint32_t cap;
    struct pub_job j;
};

static void start_blocked_publisher(struct blocked_pub *b, const char *topic,
                                    const char *other_pattern, rbus_overflow other_policy)
{
    b->t = rbus_test_bus_and_topic(&b->bus, topic);
    b->full = rbus_test_subscribe_checked(b->bus, topic, 2, RBUS_BLOCK, 0, &b->cap);
    b->other = rbus_test_subscribe_checked(b->bus, other_pattern, 32, other_policy, 0, NULL);
    publish_n(b->t, 1, b->cap);
    start_pub(&b->j, b->t, b->cap + 1);
    wait_publisher_waits(b->full, 1);
    assert_int_equal(atomic_load(&b->j.done), 0);
}

/* The waiting message counts as dropped_closed in `full`; what was queued
 * stays. */
static void check_dropped_closed(struct blocked_pub *b)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(b->full, &st));
    assert_int_equal(st.offered, b->cap + 1);
    assert_int_equal(st.dropped_closed, 1);
    assert_int_equal(st.dropped_timeout, 0);
    assert_int_equal(st.publisher_waits, 1);
    assert_int_equal(st.depth, b->cap);
    rbus_test_check_accounting(&st);
}

/* `full` gives 1..cap, then -ESHUTDOWN; `other` has 1..cap + 1. */
static void drain_after_close(struct blocked_pub *b)
{
    for (uint64_t seq = 1; seq <= b->cap; seq++)
        recv_seq(b->full, seq, 0);
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(b->full, &m, 0), -ESHUTDOWN);
    for (uint64_t seq = 1; seq <= b->cap + 1; seq++)
        recv_seq(b->other, seq, 0);
}

/* ---- rbus_close ---- */

static void close_wakes_blocked_publisher_with_eshutdown(void **state)
{
    (void)state;
    struct blocked_pub b;
    start_blocked_publisher(&b, "c.t", "c.>", RBUS_DROP_NEWEST);

    rbus_close(b.bus);
    assert_int_equal(pthread_join(b.j.th, NULL), 0);
    assert_rbus_rc(b.j.rc, -ESHUTDOWN);
    /* it had been accepted: queued where there was room, dropped where it
     * waited */
    assert_int_equal(b.j.result.matched, 2);
    assert_int_equal(b.j.result.queued, 1);
    assert_int_equal(b.j.result.dropped, 1);
    assert_false(b.j.result.duplicate);

    check_dropped_closed(&b);

    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(b.t, &ts));
    assert_int_equal(ts.published, b.cap + 1);

    /* nothing queued is lost */
    drain_after_close(&b);
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(b.other, &m, -1), -ESHUTDOWN);

    assert_rbus_ok(rbus_unsubscribe(b.full));
    assert_rbus_ok(rbus_unsubscribe(b.other));
    rbus_destroy(b.bus);
}

static void close_wakes_receivers_blocked_on_empty_sub(void **state)
{
    (void)state;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_sub *s = rbus_test_subscribe_checked(bus, "idle", 4, RBUS_BLOCK, 0, NULL);
    rbus_sub *s2 = rbus_test_subscribe_checked(bus, "idle", 4, RBUS_BLOCK, 0, NULL);

    struct rx_job forever, finite, batch, other;
    start_rx(&forever, s, RX_RECV, -1);
    start_rx(&finite, s, RX_RECV, 30 * SEC);
    start_rx(&batch, s, RX_BATCH, -1);
    start_rx(&other, s2, RX_BATCH, 30 * SEC);

    rbus_close(bus);
    join_rx(&forever, -ESHUTDOWN);
    join_rx(&finite, -ESHUTDOWN);
    join_rx(&batch, -ESHUTDOWN);
    join_rx(&other, -ESHUTDOWN);

    assert_rbus_ok(rbus_unsubscribe(s));
    assert_rbus_ok(rbus_unsubscribe(s2));
    rbus_destroy(bus);
}

static void queued_messages_survive_close_then_eshutdown_is_final(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "q");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "q", 8, RBUS_BLOCK, 0, NULL);
    publish_n(t, 1, 5);
    rbus_close(bus);

    rbus_msg *m = NULL;
    recv_seq(s, 1, 0);
    recv_seq(s, 2, -1);
    recv_seq(s, 3, SEC);
    rbus_msg *b[8];
    assert_int_equal(rbus_recv_batch(s, b, 8, -1), 2);
    assert_int_equal(rbus_msg_seq(b[0]), 4);
    assert_int_equal(rbus_msg_seq(b[1]), 5);
    rbus_msg_release(b[0]);
    rbus_msg_release(b[1]);

    for (int i = 0; i < 3; i++) {
        assert_rbus_rc(rbus_recv(s, &m, 0), -ESHUTDOWN);
        assert_rbus_rc(rbus_recv(s, &m, -1), -ESHUTDOWN);
        assert_rbus_rc(rbus_recv(s, &m, 1000000), -ESHUTDOWN);
        assert_rbus_rc(rbus_recv_batch(s, b, 8, 0), -ESHUTDOWN);
        assert_rbus_rc(rbus_recv_batch(s, b, 8, -1), -ESHUTDOWN);
    }
    /* stats keep working */
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.offered, 5);
    assert_int_equal(st.received, 5);
    assert_int_equal(st.depth, 0);
    rbus_test_check_accounting(&st);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void calls_after_close_give_eshutdown(void **state)
{
    (void)state;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_payload = 16;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "after", &t));
    rbus_sub *s = rbus_test_subscribe_checked(bus, "after", 4, RBUS_BLOCK, 0, NULL);
    assert_rbus_ok(rbus_publish(t, "x", 1));
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.subscriptions, 1);

    rbus_close(bus);
    rbus_close(bus); /* idempotent */
    /* "matching open subscriptions now": none once the bus is closed
     * (regression: closed subscriptions that stay listed were counted). */
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.subscriptions, 0);
    assert_int_equal(ts.published, 1);

    assert_rbus_rc(rbus_publish(t, "y", 1), -ESHUTDOWN);
    rbus_pub_result r;
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(t, "y", 1, NULL, &r), -ESHUTDOWN);
    assert_int_equal(r.matched, 0);
    assert_int_equal(r.queued, 0);
    assert_int_equal(r.dropped, 0);
    assert_int_equal(r.evicted, 0);
    assert_false(r.duplicate);
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.key = "k";
    po.key_len = 1;
    assert_rbus_rc(rbus_publish_ex(t, "y", 1, &po, &r), -ESHUTDOWN);
    /* precedence: -EINVAL, then -EMSGSIZE, then -ESHUTDOWN */
    assert_rbus_rc(rbus_publish(t, NULL, 1), -EINVAL);
    char big[17] = {0};
    assert_rbus_rc(rbus_publish(t, big, sizeof big), -EMSGSIZE);
    po.key_len = 0;
    assert_rbus_rc(rbus_publish_ex(t, big, sizeof big, &po, &r), -EINVAL);

    rbus_topic *t2 = NULL;
    assert_rbus_rc(rbus_topic_open(bus, "after", &t2), -ESHUTDOWN);
    assert_rbus_rc(rbus_topic_open(bus, "brand.new", &t2), -ESHUTDOWN);
    assert_rbus_rc(rbus_topic_open(bus, "bad..name", &t2), -EINVAL);
    rbus_sub *s2 = NULL;
    assert_rbus_rc(rbus_subscribe(bus, "after", NULL, &s2), -ESHUTDOWN);
    assert_rbus_rc(rbus_subscribe(bus, "a.>.b", NULL, &s2), -EINVAL);

    /* nothing of that was published */
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 1);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.offered, 1);
    assert_int_equal(st.depth, 1);

    /* sub_close and unsubscribe still work after a bus close */
    assert_rbus_ok(rbus_sub_close(s));
    recv_seq(s, 1, 0);
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(s, &m, 0), -ESHUTDOWN);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_close(bus);
    rbus_destroy(bus);
}

/* Close while a thread publishes as fast as it can: after rbus_close
 * returns nothing more is published, and nothing accepted is lost. */
struct loop_pub {
    rbus_topic *topic;
    uint64_t accepted;
    uint64_t other_rc;
    atomic_int running;
};

static void *loop_pub_thread(void *arg)
{
    struct loop_pub *lp = arg;
    for (;;) {
        uint64_t p = lp->accepted + 1;
        int rc = rbus_publish(lp->topic, &p, sizeof p);
        if (rc == 0) {
            lp->accepted++;
            if (lp->accepted == 1000)
                atomic_store(&lp->running, 1);
        } else if (rc == -ESHUTDOWN) {
            break;
        } else {
            lp->other_rc++;
        }
    }
    return NULL;
}

static void close_during_publishing_loses_nothing(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "fast");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "fast", 64, RBUS_DROP_OLDEST, 0, NULL);

    struct loop_pub lp = {.topic = t};
    atomic_init(&lp.running, 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, loop_pub_thread, &lp), 0);
    uint64_t deadline = rbus_test_now_ns() + 10 * UINT64_C(1000000000);
    while (!atomic_load(&lp.running) && rbus_test_now_ns() < deadline)
        rbus_test_sleep_us(100);
    assert_int_equal(atomic_load(&lp.running), 1);

    rbus_close(bus);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    uint64_t at_close = ts.published;
    rbus_sub_stats st1;
    assert_rbus_ok(rbus_sub_stats_get(s, &st1));

    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(lp.other_rc, 0);
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, at_close);
    assert_int_equal(ts.published, lp.accepted);

    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.offered, st1.offered);
    assert_int_equal(st.offered, lp.accepted);
    rbus_test_check_accounting(&st);

    /* the queue holds the newest messages, ending with the last accepted */
    uint64_t last = 0, n = 0;
    rbus_msg *m = NULL;
    int rc;
    while ((rc = rbus_recv(s, &m, 0)) == 0) {
        uint64_t seq = rbus_msg_seq(m);
        assert_true(seq > last);
        last = seq;
        n++;
        rbus_msg_release(m);
    }
    assert_rbus_rc(rc, -ESHUTDOWN);
    assert_int_equal(n, st.depth);
    assert_int_equal(last, lp.accepted);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* ---- rbus_sub_close ---- */

static void sub_close_publishers_skip_it(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "sc");
    rbus_sub *a = rbus_test_subscribe_checked(bus, "sc", 8, RBUS_BLOCK, 0, NULL);
    rbus_sub *b = rbus_test_subscribe_checked(bus, "sc", 8, RBUS_BLOCK, 0, NULL);
    publish_n(t, 1, 2);

    assert_rbus_ok(rbus_sub_close(a));
    assert_rbus_ok(rbus_sub_close(a)); /* idempotent */

    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.subscriptions, 1);

    rbus_pub_result r;
    uint64_t p = 3;
    assert_rbus_ok(rbus_publish_ex(t, &p, sizeof p, NULL, &r));
    assert_int_equal(r.matched, 1);
    assert_int_equal(r.queued, 1);
    assert_int_equal(r.dropped, 0);

    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(a, &st));
    assert_int_equal(st.offered, 2);
    assert_int_equal(st.depth, 2);
    rbus_test_check_accounting(&st);

    /* a drains what it had, then -ESHUTDOWN for good */
    recv_seq(a, 1, 0);
    recv_seq(a, 2, -1);
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(a, &m, 0), -ESHUTDOWN);
    assert_rbus_rc(rbus_recv(a, &m, -1), -ESHUTDOWN);
    rbus_msg *bb[2];
    assert_rbus_rc(rbus_recv_batch(a, bb, 2, SEC), -ESHUTDOWN);

    /* b has everything and is still open */
    recv_seq(b, 1, 0);
    recv_seq(b, 2, 0);
    recv_seq(b, 3, 0);
    assert_rbus_rc(rbus_recv(b, &m, 0), -EAGAIN);

    /* the bus as a whole goes on */
    assert_rbus_ok(rbus_publish(t, &p, sizeof p));
    recv_seq(b, 4, 0);

    assert_rbus_ok(rbus_unsubscribe(a));
    assert_rbus_ok(rbus_unsubscribe(b));
    rbus_destroy(bus);
}

static void sub_close_wakes_blocked_publisher(void **state)
{
    (void)state;
    struct blocked_pub b;
    start_blocked_publisher(&b, "scw", "scw", RBUS_BLOCK);

    assert_rbus_ok(rbus_sub_close(b.full));
    assert_int_equal(pthread_join(b.j.th, NULL), 0);
    /* The message was accepted and reached `other`. The contract says only
     * that the waiting publisher wakes and the message counts as
     * dropped_closed there; whether the publish reports 0 (drops are not
     * errors) or -ESHUTDOWN (closed while waiting) is left open. */
    if (b.j.rc != 0 && b.j.rc != -ESHUTDOWN) {
        print_error("publish woken by sub_close returned %d (%s)\n", b.j.rc,
                    rbus_strerror(b.j.rc));
        fail();
    }
    assert_int_equal(b.j.result.matched, 2);
    assert_int_equal(b.j.result.queued, 1);
    assert_int_equal(b.j.result.dropped, 1);

    check_dropped_closed(&b);

    drain_after_close(&b);

    /* the bus is not closed: publishing goes on, skipping `full` */
    rbus_pub_result r;
    uint64_t p = b.cap + 2;
    assert_rbus_ok(rbus_publish_ex(b.t, &p, sizeof p, NULL, &r));
    assert_int_equal(r.matched, 1);
    assert_int_equal(r.queued, 1);
    recv_seq(b.other, b.cap + 2, 0);

    assert_rbus_ok(rbus_unsubscribe(b.full));
    assert_rbus_ok(rbus_unsubscribe(b.other));
    rbus_destroy(b.bus);
}

static void sub_close_wakes_blocked_receiver_at_once(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "scr");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "scr", 4, RBUS_BLOCK, 0, NULL);
    rbus_sub *keep = rbus_test_subscribe_checked(bus, "scr", 4, RBUS_BLOCK, 0, NULL);

    struct rx_job a, b, c;
    start_rx(&a, s, RX_RECV, -1);
    start_rx(&b, s, RX_BATCH, -1);
    start_rx(&c, s, RX_RECV, 30 * SEC);
    assert_rbus_ok(rbus_sub_close(s));
    join_rx(&a, -ESHUTDOWN);
    join_rx(&b, -ESHUTDOWN);
    join_rx(&c, -ESHUTDOWN);

    /* the other subscription is unaffected */
    assert_rbus_ok(rbus_publish(t, "z", 1));
    recv_seq(keep, 1, 0);

    assert_rbus_ok(rbus_unsubscribe(s));
    assert_rbus_ok(rbus_unsubscribe(keep));
    rbus_destroy(bus);
}

/* ---- rbus_unsubscribe ---- */

static void unsubscribe_wakes_blocked_receiver(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "uw");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "uw", 4, RBUS_BLOCK, 0, NULL);
    rbus_sub *s2 = rbus_test_subscribe_checked(bus, "uw", 4, RBUS_BLOCK, 0, NULL);

    /* The receivers must be inside rbus_recv* before rbus_unsubscribe
     * begins (starting a call after it began is undefined): start_rx gives
     * them 50 ms to get there. */
    struct rx_job a, b;
    start_rx(&a, s, RX_RECV, -1);
    start_rx(&b, s2, RX_BATCH, 30 * SEC);
    assert_rbus_ok(rbus_unsubscribe(s));
    join_rx(&a, -ESHUTDOWN);
    assert_rbus_ok(rbus_unsubscribe(s2));
    join_rx(&b, -ESHUTDOWN);

    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.subscriptions, 0);
    rbus_pub_result r;
    assert_rbus_ok(rbus_publish_ex(t, "q", 1, NULL, &r));
    assert_int_equal(r.matched, 0);
    rbus_destroy(bus);
}

static void unsubscribe_releases_queued_messages(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "uq");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "uq", 16, RBUS_BLOCK, 0, NULL);
    rbus_sub *s2 = rbus_test_subscribe_checked(bus, "uq", 16, RBUS_BLOCK, 0, NULL);
    publish_n(t, 1, 10);

    /* one message held by the user across the unsubscribe */
    rbus_msg *held = NULL;
    assert_rbus_ok(rbus_recv(s, &held, 0));
    assert_rbus_ok(rbus_unsubscribe(s));
    assert_int_equal(rbus_msg_seq(held), 1);
    uint64_t p;
    memcpy(&p, rbus_msg_data(held), sizeof p);
    assert_int_equal(p, 1);
    rbus_msg_release(held);

    /* the same messages are still queued in s2 */
    for (uint64_t seq = 1; seq <= 10; seq++)
        recv_seq(s2, seq, 0);
    publish_n(t, 11, 3);
    /* sub_close first, then unsubscribe with messages still queued */
    assert_rbus_ok(rbus_sub_close(s2));
    assert_rbus_ok(rbus_unsubscribe(s2));
    /* LeakSanitizer checks that those were released */
    rbus_destroy(bus);
}

static void destroy_with_queued_messages_and_open_subs(void **state)
{
    (void)state;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t = NULL, *u = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "d.t", &t));
    assert_rbus_ok(rbus_topic_open(bus, "d.u", &u));
    (void)rbus_test_subscribe_checked(bus, "d.>", 16, RBUS_BLOCK, 0, NULL);
    (void)rbus_test_subscribe_checked(bus, "d.t", 4, RBUS_DROP_OLDEST, 0, NULL);
    rbus_sub *closed = rbus_test_subscribe_checked(bus, "d.u", 4, RBUS_DROP_NEWEST, 0, NULL);
    publish_n(t, 1, 8);
    publish_n(u, 1, 8);
    assert_rbus_ok(rbus_sub_close(closed));
    rbus_destroy(bus); /* not closed first, subs not unsubscribed */

    /* and destroy after close */
    assert_rbus_ok(rbus_create(&bus, NULL));
    assert_rbus_ok(rbus_topic_open(bus, "d.t", &t));
    (void)rbus_test_subscribe_checked(bus, "d.t", 4, RBUS_BLOCK, 0, NULL);
    publish_n(t, 1, 3);
    rbus_close(bus);
    rbus_destroy(bus);

    /* a bus with nothing in it */
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_destroy(bus);
}

static void null_handles_are_noops(void **state)
{
    (void)state;
    rbus_close(NULL);
    rbus_destroy(NULL);
    rbus_msg_release(NULL);
    assert_rbus_rc(rbus_sub_close(NULL), -EINVAL);
    assert_rbus_rc(rbus_unsubscribe(NULL), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(close_wakes_blocked_publisher_with_eshutdown),
        cmocka_unit_test(close_wakes_receivers_blocked_on_empty_sub),
        cmocka_unit_test(queued_messages_survive_close_then_eshutdown_is_final),
        cmocka_unit_test(calls_after_close_give_eshutdown),
        cmocka_unit_test(close_during_publishing_loses_nothing),
        cmocka_unit_test(sub_close_publishers_skip_it),
        cmocka_unit_test(sub_close_wakes_blocked_publisher),
        cmocka_unit_test(sub_close_wakes_blocked_receiver_at_once),
        cmocka_unit_test(unsubscribe_wakes_blocked_receiver),
        cmocka_unit_test(unsubscribe_releases_queued_messages),
        cmocka_unit_test(destroy_with_queued_messages_and_open_subs),
        cmocka_unit_test(null_handles_are_noops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
