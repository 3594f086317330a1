/*
 * Targeted wake-ups: a publisher blocked for room on one subscription
 * sleeps on that subscription's own event, so that receives elsewhere do
 * not wake it; it wakes for room on its own subscription, and for a
 * close. A trap at the point where a sleeping publisher wakes shows
 * which publisher woke. Competing receivers asleep on one subscription
 * are woken one per message, and each hands on what it leaves.
 */
#include "test_util.h"

#include "pause.h"

#define CAP 4
#define WAIT_NS INT64_C(30000000000)

struct blocked {
    rbus_topic *topic;
    pthread_t thr;
    rbus_pub_result res;
    int rc;
};

static void *blocked_main(void *arg)
{
    struct blocked *b = arg;
    b->rc = rbus_publish_ex(b->topic, "x", 1, NULL, &b->res);
    return NULL;
}

/* A full RBUS_BLOCK subscription on `name`, and a publisher blocked on
 * it (asleep: its spin is long over when this returns). */
static rbus_sub *full_and_blocked(rbus *bus, const char *name, struct blocked *b)
{
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = CAP;
    o.spin_ns = 1000; /* publishers sleep after 1 us */
    rbus_sub *s;
    assert_rbus_ok(rbus_subscribe(bus, name, &o, &s));
    assert_rbus_ok(rbus_topic_open(bus, name, &b->topic));
    for (int i = 0; i < CAP; i++)
        assert_rbus_ok(rbus_publish(b->topic, "f", 1));
    assert_int_equal(pthread_create(&b->thr, NULL, blocked_main, b), 0);
    rbus_sub_stats st;
    do {
        rbus_test_sleep_us(1000);
        assert_rbus_ok(rbus_sub_stats_get(s, &st));
    } while (st.publishers_waiting == 0);
    rbus_test_sleep_us(20000);
    return s;
}

static void recv_one(rbus_sub *s)
{
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    rbus_msg_release(m);
}

/* Room on A wakes A's publisher and not B's; room on B wakes B's. */
static void room_wakes_only_its_own_publisher(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    struct blocked pa = {0}, pb = {0};
    rbus_sub *a = full_and_blocked(bus, "wake.a", &pa);
    rbus_sub *b = full_and_blocked(bus, "wake.b", &pb);
    int trap = rbus__trap_set(RBUS_PP_PUBLISH_WAIT_WOKE, &pb.thr);
    assert_true(trap >= 0);
    for (int i = 0; i < CAP; i++)
        recv_one(a);
    assert_int_equal(pthread_join(pa.thr, NULL), 0);
    assert_rbus_ok(pa.rc);
    assert_int_equal(pa.res.queued, 1);
    /* B's publisher slept through all of it. */
    assert_false(rbus__trap_wait(trap, 200 * INT64_C(1000000)));
    recv_one(b);
    assert_true(rbus__trap_wait(trap, WAIT_NS));
    rbus__trap_release(trap);
    assert_int_equal(pthread_join(pb.thr, NULL), 0);
    assert_rbus_ok(pb.rc);
    assert_int_equal(pb.res.queued, 1);
    rbus_destroy(bus);
}

/* Publishers asleep on their subscriptions' events wake for a close of
 * the bus, and for an unsubscribe of theirs. */
static void close_wakes_publishers_asleep_on_their_subscription(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    struct blocked pa = {0}, pb = {0};
    rbus_sub *a = full_and_blocked(bus, "wake.a", &pa);
    full_and_blocked(bus, "wake.b", &pb);
    assert_rbus_ok(rbus_unsubscribe(a));
    assert_int_equal(pthread_join(pa.thr, NULL), 0);
    assert_rbus_ok(pa.rc); /* a drop (dropped_closed), not an error */
    assert_int_equal(pa.res.dropped, 1);
    rbus_close(bus);
    assert_int_equal(pthread_join(pb.thr, NULL), 0);
    assert_rbus_rc(pb.rc, -ESHUTDOWN);
    assert_int_equal(pb.res.dropped, 1);
    rbus_destroy(bus);
}

/* ----------------------------------------------------- competing receivers */

#define RECEIVERS 4

/* A thread that receives one message (or times out) and leaves. */
struct receiver {
    rbus_sub *sub;
    int64_t timeout_ns;
    atomic_int *got;
    pthread_t thr;
    int rc;
};

static void *receive_one_main(void *arg)
{
    struct receiver *r = arg;
    rbus_msg *m;
    r->rc = rbus_recv(r->sub, &m, r->timeout_ns);
    if (r->rc == 0) {
        rbus_msg_release(m);
        atomic_fetch_add(r->got, 1);
    }
    return NULL;
}

static void receiver_start(struct receiver *r, rbus_sub *s, int64_t timeout_ns, atomic_int *got)
{
    *r = (struct receiver){.sub = s, .timeout_ns = timeout_ns, .got = got};
    assert_int_equal(pthread_create(&r->thr, NULL, receive_one_main, r), 0);
}

/* Waits until `got` reaches k, for seconds at most: well before a
 * receive times out (WAIT_NS), which would take what is queued too. */
static void wait_for_got(atomic_int *got, int k)
{
    uint64_t t0 = rbus_test_now_ns();
    while (atomic_load(got) < k && rbus_test_now_ns() - t0 < UINT64_C(5000000000))
        rbus_test_sleep_us(1000);
    assert_int_equal(atomic_load(got), k);
}

/* A subscription whose receivers sleep after 1 us, and its topic. */
struct crowd {
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    atomic_int got;
    struct receiver rx[RECEIVERS];
};

static void crowd_open(struct crowd *c, const char *name)
{
    assert_rbus_ok(rbus_create(&c->bus, NULL));
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.spin_ns = 1000;
    assert_rbus_ok(rbus_subscribe(c->bus, name, &o, &c->sub));
    assert_rbus_ok(rbus_topic_open(c->bus, name, &c->topic));
    atomic_init(&c->got, 0);
}

/* RECEIVERS receivers of one message each, all asleep on return. */
static void crowd_start(struct crowd *c)
{
    for (int i = 0; i < RECEIVERS; i++)
        receiver_start(&c->rx[i], c->sub, WAIT_NS, &c->got);
    rbus_test_sleep_us(50000);
}

/* Closes the subscription (the receivers still asleep wake and end),
 * joins every receiver and destroys the bus. */
static void crowd_close(struct crowd *c)
{
    assert_rbus_ok(rbus_sub_close(c->sub));
    for (int i = 0; i < RECEIVERS; i++)
        assert_int_equal(pthread_join(c->rx[i].thr, NULL), 0);
    rbus_destroy(c->bus);
}

/* A message wakes one of the sleeping receivers, not all of them. */
static void a_message_wakes_one_receiver(void **state)
{
    (void)state;
    struct crowd c;
    crowd_open(&c, "wake.rx");
    crowd_start(&c);
    uint64_t woke = rbus__pause_passes(RBUS_PP_RECV_WOKE);
    assert_rbus_ok(rbus_publish(c.topic, "m", 1));
    while (atomic_load(&c.got) == 0)
        rbus_test_sleep_us(1000);
    rbus_test_sleep_us(50000);
    assert_int_equal(rbus__pause_passes(RBUS_PP_RECV_WOKE) - woke, 1);
    crowd_close(&c);
    assert_int_equal(atomic_load(&c.got), 1);
}

/* Receivers that each take one message and leave: a burst of as many
 * messages reaches every one of them, though each publish woke only one
 * sleeper (each woken receiver wakes the next while messages are left). */
static void a_burst_reaches_every_sleeping_receiver(void **state)
{
    (void)state;
    struct crowd c;
    crowd_open(&c, "wake.rx");
    crowd_start(&c);
    rbus_payload burst[RECEIVERS];
    for (int i = 0; i < RECEIVERS; i++)
        burst[i] = (rbus_payload){"m", 1};
    assert_int_equal(rbus_publish_batch(c.topic, burst, RECEIVERS, NULL, NULL), RECEIVERS);
    wait_for_got(&c.got, RECEIVERS);
    crowd_close(&c);
    for (int i = 0; i < RECEIVERS; i++)
        assert_rbus_ok(c.rx[i].rc);
}

/* Receivers asleep; the first message wakes one, which takes it and
 * leaves with nothing queued (no baton to pass). A second message must
 * still wake another: the woken one announced itself again for them. */
static void a_later_message_wakes_a_receiver_still_asleep(void **state)
{
    (void)state;
    struct crowd c;
    crowd_open(&c, "wake.rx");
    crowd_start(&c);
    for (int k = 1; k <= 2; k++) {
        assert_rbus_ok(rbus_publish(c.topic, "m", 1));
        wait_for_got(&c.got, k);
        rbus_test_sleep_us(50000); /* the receiver that got it has left */
    }
    crowd_close(&c);
}

static void *publish_one_main(void *arg)
{
    rbus_topic *t = arg;
    assert_rbus_ok(rbus_publish(t, "w", 1));
    return NULL;
}

/* R1 (short timeout) and R2 (long) asleep. A writer reserves the head
 * slot and stalls; a message behind it wakes R1 alone, which reaches its
 * deadline before it looks and times out at the unwritten slot. R2 must
 * still be woken, to skip the stalled writer's slot and take the message
 * behind it: a receiver leaving with anything queued passes the baton,
 * whatever it returns. */
static void a_woken_receiver_that_times_out_hands_on(void **state)
{
    (void)state;
    struct crowd c;
    crowd_open(&c, "wake.rx2");
    struct receiver *r1 = &c.rx[0], *r2 = &c.rx[1];
    receiver_start(r1, c.sub, 300000000, &c.got);
    rbus_test_sleep_us(50000);
    receiver_start(r2, c.sub, WAIT_NS, &c.got);
    rbus_test_sleep_us(50000); /* both asleep, R1 first in the futex's queue */
    int woke = rbus__trap_set(RBUS_PP_RECV_WOKE, &r1->thr);
    int stalled = rbus__trap_set(RBUS_PP_RING_PUT_RESERVED, NULL);
    assert_true(woke >= 0 && stalled >= 0);
    pthread_t writer;
    assert_int_equal(pthread_create(&writer, NULL, publish_one_main, c.topic), 0);
    assert_true(rbus__trap_wait(stalled, WAIT_NS));
    assert_rbus_ok(rbus_publish(c.topic, "m", 1));
    assert_true(rbus__trap_wait(woke, WAIT_NS)); /* R1 had the one wake */
    rbus_test_sleep_us(400000);                  /* past R1's deadline */
    rbus__trap_release(woke);
    assert_int_equal(pthread_join(r1->thr, NULL), 0);
    assert_rbus_rc(r1->rc, -ETIMEDOUT);
    wait_for_got(&c.got, 1); /* with the writer still stalled */
    rbus__trap_release(stalled);
    assert_int_equal(pthread_join(writer, NULL), 0);
    assert_int_equal(pthread_join(r2->thr, NULL), 0);
    assert_rbus_ok(r2->rc);
    rbus_destroy(c.bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(room_wakes_only_its_own_publisher),
        cmocka_unit_test(close_wakes_publishers_asleep_on_their_subscription),
        cmocka_unit_test(a_message_wakes_one_receiver),
        cmocka_unit_test(a_burst_reaches_every_sleeping_receiver),
        cmocka_unit_test(a_later_message_wakes_a_receiver_still_asleep),
        cmocka_unit_test(a_woken_receiver_that_times_out_hands_on),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
