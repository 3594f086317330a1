/*
 * Readiness (src/ready.c, the watermarks in src/sub.c) with a thread
 * stalled on purpose where the watermark flag could be left set on an
 * empty subscription, which would keep its topics "not ready" for good and
 * an event loop waiting on the descriptor asleep:
 *  - a receiver parked between its claim and its store of `head`, while
 *    another receiver drains the rest: the late store moves head back, and
 *    the depth the watermark check counts must not trust it;
 *  - an all-or-none publish parked holding a position in one subscription
 *    while its receiver drains it, then refused by another subscription:
 *    giving the position back must bring the first under its low mark.
 */
#include "test_util.h"

#include "pause.h"

#define PARK_TIMEOUT_NS INT64_C(30000000000)

/* The topic ready again, the flag clear, the descriptor readable. */
static void assert_ready(rbus_topic *t, rbus_sub *s)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.depth, 0);
    assert_false(st.over_high);
    assert_int_equal(rbus_topic_ready(t), 1);
    assert_true(rbus_test_fd_readable(rbus_topic_fd(t), 0));
}

struct parked {
    pthread_t thr;
    rbus_sub *sub;
    rbus_topic *topic;
    int rc, trap;
    atomic_int go;
    bool publish; /* all-or-none publish instead of a receive */
    int batch;    /* a receive of up to this many (0: one) */
};

static void *parked_main(void *arg)
{
    struct parked *p = arg;
    while (!atomic_load(&p->go))
        rbus_test_sleep_us(100);
    if (p->publish) {
        rbus_pub_opts o = {.flags = RBUS_PUB_ALL_OR_NONE, .timeout_ns = -1};
        p->rc = rbus_publish_ex(p->topic, "p", 1, &o, NULL);
    } else if (p->batch) {
        rbus_msg *m[16];
        p->rc = rbus_recv_batch(p->sub, m, (size_t)p->batch, 0);
        for (int i = 0; i < p->rc; i++)
            rbus_msg_release(m[i]);
    } else {
        rbus_msg *m;
        p->rc = rbus_recv(p->sub, &m, 0);
        if (p->rc == 0)
            rbus_msg_release(m);
    }
    return NULL;
}

static void park(struct parked *p, enum rbus__pp point)
{
    atomic_init(&p->go, 0);
    assert_int_equal(pthread_create(&p->thr, NULL, parked_main, p), 0);
    p->trap = rbus__trap_set(point, &p->thr);
    assert_true(p->trap >= 0);
    atomic_store(&p->go, 1);
    assert_true(rbus__trap_wait(p->trap, PARK_TIMEOUT_NS));
}

static void unpark(struct parked *p)
{
    rbus__trap_release(p->trap);
    assert_int_equal(pthread_join(p->thr, NULL), 0);
}

/* Would catch a watermark check that counts the depth as tail - head:
 * receiver y claims the first message and parks before storing head; x
 * drains the other 7 and parks before its look at the flag; y's late
 * store moves head 7 positions back over an empty ring, and both then
 * see 7 >= low: nobody clears the flag. */
static void receiver_moves_head_back(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "rb.t", &t));
    rbus_sub *s = rbus_test_subscribe_marks(bus, "rb.t", 16, 8, 4);
    (void)rbus_topic_fd(t);
    for (int i = 0; i < 8; i++)
        assert_rbus_ok(rbus_publish(t, "x", 1));
    assert_int_equal(rbus_topic_ready(t), 0);
    struct parked y = {.sub = s};
    park(&y, RBUS_PP_RING_HEAD_TO); /* claimed the first, head not stored */
    struct parked x = {.sub = s, .batch = 7};
    park(&x, RBUS_PP_RECV_WATERMARK); /* took 7, head at the tail */
    unpark(&y);
    unpark(&x);
    assert_rbus_ok(y.rc);
    assert_int_equal(x.rc, 7);
    assert_ready(t, s);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 8);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* Would catch a refused all-or-none publish that gives its position back
 * without counting again: the receiver drained while that position still
 * counted (1, not under the low mark of 1), and nobody else comes. */
static void refused_all_or_none_gives_room_back(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "aon.t", &t));
    rbus_sub *a = rbus_test_subscribe_marks(bus, "aon.t", 4, 2, 1);
    (void)rbus_topic_fd(t);
    for (int i = 0; i < 2; i++)
        assert_rbus_ok(rbus_publish(t, "x", 1)); /* a: 2, at its high mark */
    rbus_sub *b = rbus_test_subscribe_marks(bus, "aon.t", 2, 0, 0);
    for (int i = 0; i < 2; i++)
        assert_rbus_ok(rbus_publish(t, "y", 1)); /* b full; a: 4 */
    rbus_msg *m;
    for (int i = 0; i < 2; i++) {
        assert_rbus_ok(rbus_recv(a, &m, 0));
        rbus_msg_release(m);
    }
    /* a holds 2 (over, not under 1); the publish reserves a third in a. */
    struct parked p = {.topic = t, .publish = true};
    park(&p, RBUS_PP_ALL_OR_NONE_RESERVED);
    for (int i = 0; i < 2; i++) {
        assert_rbus_ok(rbus_recv(a, &m, 0));
        rbus_msg_release(m);
    }
    unpark(&p);
    assert_rbus_rc(p.rc, -EAGAIN); /* b was full: nothing queued */
    assert_rbus_rc(rbus_recv(a, &m, 0), -EAGAIN);
    for (int i = 0; i < 2; i++) {
        assert_rbus_ok(rbus_recv(b, &m, 0));
        rbus_msg_release(m);
    }
    assert_ready(t, a);
    assert_ready(t, b);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 4);
    assert_rbus_ok(rbus_unsubscribe(a));
    assert_rbus_ok(rbus_unsubscribe(b));
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(receiver_moves_head_back),
        cmocka_unit_test(refused_all_or_none_gives_room_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
