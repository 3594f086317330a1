/*
 * The ring's progress with a thread stalled at each step of the slot
 * protocol (src/ring.h): a receiver stalled mid-claim holds nothing back; a
 * publisher stalled between reserving and committing its slot holds back
 * no other publisher and no receiver (the slot is skipped, the publisher
 * offers its message again); a drop-oldest publish never waits and evicts
 * exactly one message; a stalled thread costs at most one slot. Every
 * scene ends with exact accounting and every message received once, in
 * order. A dispatcher's drain passes a stalled writer too, and a batch
 * publisher stalled holding a run of positions costs that run and holds
 * back nothing.
 */
#include "test_util.h"

#include "pause.h"

#define PARK_TIMEOUT_NS INT64_C(30000000000)
#define CAP 8

struct scene {
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    uint64_t next_seq_seen;  /* receivers check FIFO against it */
    uint64_t next_batch_seq; /* and a parked batch's order */
};

static void scene_open_cap(struct scene *sc, rbus_overflow policy, uint32_t want)
{
    memset(sc, 0, sizeof *sc);
    sc->topic = rbus_test_bus_and_topic(&sc->bus, "stall.ring");
    uint32_t cap;
    sc->sub = rbus_test_subscribe_checked(sc->bus, "stall.ring", want, policy, 0, &cap);
    assert_int_equal(cap, want);
}

static void scene_open(struct scene *sc, rbus_overflow policy)
{
    scene_open_cap(sc, policy, CAP);
}

/* Everything left; returns how many. The main thread's messages ("m")
 * must come in the order it published them, and so must a parked batch's
 * ("b"); a parked publisher's ("p") is its only one, and comes after the
 * others if its slot was skipped. */
static unsigned drain_in_order(struct scene *sc)
{
    unsigned n = 0;
    rbus_msg *m;
    while (rbus_recv(sc->sub, &m, 0) == 0) {
        if (*(const char *)rbus_msg_data(m) == 'm') {
            assert_true(rbus_msg_seq(m) > sc->next_seq_seen);
            sc->next_seq_seen = rbus_msg_seq(m);
        } else if (*(const char *)rbus_msg_data(m) == 'b') {
            assert_true(rbus_msg_seq(m) > sc->next_batch_seq);
            sc->next_batch_seq = rbus_msg_seq(m);
        }
        rbus_msg_release(m);
        n++;
    }
    return n;
}

static void scene_close(struct scene *sc)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc->sub, &st));
    rbus_test_check_accounting(&st);
    assert_rbus_ok(rbus_unsubscribe(sc->sub));
    rbus_destroy(sc->bus);
}

static rbus_pub_result publish(struct scene *sc)
{
    rbus_pub_result res;
    rbus_pub_opts o = {.timeout_ns = -1}; /* a full block sub: do not wait */
    assert_rbus_ok(rbus_publish_ex(sc->topic, "m", 1, &o, &res));
    return res;
}

/* ------------------------------------------------------ a parked thread */

enum job { JOB_RECV, JOB_PUBLISH, JOB_BATCH };

/* What a parked JOB_BATCH publishes: a run of BATCH messages "b". */
#define BATCH 16

struct parked {
    struct scene *sc;
    enum job job;
    pthread_t thr;
    atomic_int go;
    int trap;
    int rc;
    rbus_msg *msg;
    rbus_pub_result res;
};

static void *parked_main(void *arg)
{
    struct parked *p = arg;
    while (!atomic_load(&p->go))
        rbus_test_sleep_us(100);
    if (p->job == JOB_RECV) {
        p->rc = rbus_recv(p->sc->sub, &p->msg, 0);
    } else if (p->job == JOB_PUBLISH) {
        rbus_pub_opts o = {.timeout_ns = -1};
        p->rc = rbus_publish_ex(p->sc->topic, "p", 1, &o, &p->res);
    } else {
        rbus_payload v[BATCH];
        for (int i = 0; i < BATCH; i++)
            v[i] = (rbus_payload){"b", 1};
        rbus_pub_opts o = {.timeout_ns = -1};
        p->rc = rbus_publish_batch(p->sc->topic, v, BATCH, &o, &p->res);
    }
    return NULL;
}

/* Starts the job on its own thread and returns once it is parked at
 * `point`. */
static void park(struct parked *p, struct scene *sc, enum job job, enum rbus__pp point)
{
    memset(p, 0, sizeof *p);
    p->sc = sc;
    p->job = job;
    atomic_init(&p->go, 0);
    assert_int_equal(pthread_create(&p->thr, NULL, parked_main, p), 0);
    p->trap = rbus__trap_set(point, &p->thr);
    assert_true(p->trap >= 0);
    atomic_store(&p->go, 1);
    if (!rbus__trap_wait(p->trap, PARK_TIMEOUT_NS)) {
        print_error("never reached %s\n", rbus__pause_name(point));
        fail();
    }
}

static void unpark(struct parked *p)
{
    rbus__trap_release(p->trap);
    assert_int_equal(pthread_join(p->thr, NULL), 0);
}

/* ------------------------------------------------------------- receivers */

/* A receiver stalled before or after its claim: drop-oldest publishes into
 * the full ring evict exactly one message each and never wait (it used to
 * evict the whole queue and then spin until the receiver ran). */
static void evictor_meets_stalled_receiver(enum rbus__pp point)
{
    struct scene sc;
    scene_open(&sc, RBUS_DROP_OLDEST);
    for (int i = 0; i < CAP; i++)
        assert_int_equal(publish(&sc).queued, 1);
    struct parked r;
    park(&r, &sc, JOB_RECV, point);
    for (int i = 0; i < 3 * CAP; i++) {
        rbus_pub_result res = publish(&sc);
        assert_int_equal(res.queued, 1);
        /* A claim made before the stall freed its slot: the first publish
         * finds room there. */
        assert_int_equal(res.evicted, i == 0 && point == RBUS_PP_RING_TAKE_CLAIMED ? 0 : 1);
    }
    unpark(&r);
    assert_rbus_ok(r.rc);
    sc.next_seq_seen = rbus_msg_seq(r.msg);
    rbus_msg_release(r.msg);
    /* The ring held the newest CAP messages: the parked receiver's claim,
     * if it had made it, freed its slot at once; if not, it lost the first
     * message to an eviction and took the oldest one left. */
    assert_int_equal(drain_in_order(&sc), point == RBUS_PP_RING_TAKE_CLAIMED ? CAP : CAP - 1);
    assert_int_equal(sc.next_seq_seen, 4 * CAP);
    scene_close(&sc);
}

static void drop_oldest_evicts_one_past_a_receiver_stalled_mid_claim(void **state)
{
    (void)state;
    evictor_meets_stalled_receiver(RBUS_PP_RING_TAKE_CLAIMING);
    evictor_meets_stalled_receiver(RBUS_PP_RING_TAKE_CLAIMED);
}

/* Two receivers; one stalls mid-claim and the other drains the rest: the
 * queue is empty, and must accept a full capacity again (it used to look
 * full: drop-newest refused and block timed out at depth 0). */
static void stalled_receiver_costs_no_room(enum rbus__pp point, rbus_overflow policy)
{
    struct scene sc;
    scene_open(&sc, policy);
    for (int i = 0; i < CAP; i++)
        assert_int_equal(publish(&sc).queued, 1);
    struct parked a;
    park(&a, &sc, JOB_RECV, point);
    unsigned drained = drain_in_order(&sc);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.depth, 0);
    for (int i = 0; i < CAP; i++)
        assert_int_equal(publish(&sc).queued, 1);
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.dropped_newest + st.dropped_timeout + st.dropped_oldest, 0);
    assert_int_equal(st.depth, CAP);
    unpark(&a);
    /* Stalled before its claim, it lost the race for every old message and
     * takes the first new one; stalled after, it had claimed the first. */
    assert_rbus_ok(a.rc);
    rbus_msg_release(a.msg);
    assert_int_equal(drained + 1 + drain_in_order(&sc), 2 * CAP);
    scene_close(&sc);
}

static void stalled_receiver_leaves_the_room_to_publishers(void **state)
{
    (void)state;
    static const rbus_overflow policies[] = {RBUS_DROP_NEWEST, RBUS_BLOCK, RBUS_DROP_OLDEST};
    for (size_t i = 0; i < 3; i++) {
        stalled_receiver_costs_no_room(RBUS_PP_RING_TAKE_CLAIMED, policies[i]);
        stalled_receiver_costs_no_room(RBUS_PP_RING_TAKE_CLAIMING, policies[i]);
    }
}

/* ------------------------------------------------------------ publishers */

/* A publisher stalled between reserving and committing: other publishers
 * go on, receivers skip its slot and take what follows, and on resuming it
 * offers its message again, counted once. */
static void stalled_writer_is_skipped(rbus_overflow policy)
{
    struct scene sc;
    scene_open(&sc, policy);
    struct parked p;
    park(&p, &sc, JOB_PUBLISH, RBUS_PP_RING_PUT_RESERVED);
    for (int i = 0; i < 5; i++)
        assert_int_equal(publish(&sc).queued, 1);
    assert_int_equal(drain_in_order(&sc), 5);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.skipped, 1);
    assert_int_equal(st.depth, 0);
    unpark(&p);
    assert_rbus_ok(p.rc);
    assert_int_equal(p.res.queued, 1);
    assert_int_equal(drain_in_order(&sc), 1);
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.reoffers, 1);
    assert_int_equal(st.offered, 6);
    assert_int_equal(st.received, 6);
    scene_close(&sc);
}

static void stalled_writer_holds_back_nothing(void **state)
{
    (void)state;
    stalled_writer_is_skipped(RBUS_BLOCK);
    stalled_writer_is_skipped(RBUS_DROP_NEWEST);
    stalled_writer_is_skipped(RBUS_DROP_OLDEST);
}

/* A stalled writer costs one slot: with it parked on an empty ring, a
 * drop-newest subscription takes CAP - 1 messages before refusing. */
static void stalled_writer_costs_one_slot(void **state)
{
    (void)state;
    struct scene sc;
    scene_open(&sc, RBUS_DROP_NEWEST);
    struct parked p;
    park(&p, &sc, JOB_PUBLISH, RBUS_PP_RING_PUT_RESERVED);
    for (int i = 0; i < CAP - 1; i++)
        assert_int_equal(publish(&sc).queued, 1);
    assert_int_equal(publish(&sc).dropped, 1);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.depth, CAP - 1);
    unpark(&p); /* nobody skipped it: it commits */
    assert_int_equal(p.res.queued, 1);
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.depth, CAP);
    assert_int_equal(drain_in_order(&sc), CAP);
    scene_close(&sc);
}

/* Drop-oldest with the oldest position's writer stalled: the publish skips
 * that writer, passes its held slot and evicts exactly one message; the
 * stalled writer, resuming, evicts exactly one for its own. */
static void evictor_never_waits_for_a_stalled_writer(void **state)
{
    (void)state;
    struct scene sc;
    scene_open(&sc, RBUS_DROP_OLDEST);
    struct parked p;
    park(&p, &sc, JOB_PUBLISH, RBUS_PP_RING_PUT_RESERVED);
    for (int i = 0; i < CAP - 1; i++)
        assert_int_equal(publish(&sc).queued, 1);
    for (int i = 0; i < 3 * CAP; i++) {
        rbus_pub_result res = publish(&sc);
        assert_int_equal(res.queued, 1);
        assert_int_equal(res.evicted, 1);
    }
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.skipped, 1);
    assert_true(st.holes >= 1);
    /* The held slot: CAP - 1 messages, the newest. */
    assert_int_equal(st.depth, CAP - 1);
    unpark(&p);
    assert_int_equal(p.res.queued, 1);
    assert_int_equal(p.res.evicted, 1);
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.reoffers, 1);
    /* Still CAP - 1: the slot it held is free again, but for a position the
     * ring reaches only after the oldest one now. */
    assert_int_equal(drain_in_order(&sc), CAP - 1);
    scene_close(&sc);
}

/* A skipped writer's slot stays held until it acknowledges; publishers
 * pass it as a hole, and the ring keeps working at one slot less. */
static void publishers_pass_a_held_slot(void **state)
{
    (void)state;
    struct scene sc;
    scene_open(&sc, RBUS_DROP_NEWEST);
    struct parked p;
    park(&p, &sc, JOB_PUBLISH, RBUS_PP_RING_PUT_RESERVED);
    for (int round = 0; round < 4; round++) {
        /* CAP - 1 fit around the held slot, then it is full. */
        for (int i = 0; i < CAP - 1; i++)
            assert_int_equal(publish(&sc).queued, 1);
        assert_int_equal(publish(&sc).dropped, 1);
        assert_int_equal(drain_in_order(&sc), CAP - 1);
    }
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.skipped, 1);
    assert_true(st.holes >= 3);
    unpark(&p);
    assert_int_equal(p.res.queued, 1);
    assert_int_equal(drain_in_order(&sc), 1);
    for (int i = 0; i < CAP; i++) /* the slot is back */
        assert_int_equal(publish(&sc).queued, 1);
    assert_int_equal(drain_in_order(&sc), CAP);
    scene_close(&sc);
}

/* ------------------------------------------------------ a byte bound */

/* Drop-oldest over its byte bound does not wait for a stalled writer:
 * with the oldest position held by a writer parked before its commit, a
 * publish whose bytes need an eviction passes that slot (the writer is
 * skipped and offers again when it runs) and evicts the committed message
 * behind it. Only bytes reserved by publishes in flight cannot be evicted:
 * when they are all that stands in the way, the new message is refused. */
static void byte_eviction_passes_a_stalled_writer(void **state)
{
    (void)state;
    struct scene sc;
    memset(&sc, 0, sizeof sc);
    sc.topic = rbus_test_bus_and_topic(&sc.bus, "stall.ring");
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = CAP;
    o.overflow = RBUS_DROP_OLDEST;
    o.max_bytes = 65536; /* the bus's max_payload */
    assert_rbus_ok(rbus_subscribe(sc.bus, "stall.ring", &o, &sc.sub));
    struct parked p;
    park(&p, &sc, JOB_PUBLISH, RBUS_PP_RING_PUT_RESERVED); /* 1 byte, position 0 */
    static char big[30000];
    big[0] = 'm';
    rbus_pub_opts po = {.timeout_ns = -1};
    rbus_pub_result res;
    for (int i = 0; i < 2; i++) {
        assert_rbus_ok(rbus_publish_ex(sc.topic, big, sizeof big, &po, &res));
        assert_int_equal(res.queued, 1);
    }
    /* 60001 bytes used; 30000 more need an eviction, and the oldest
     * position is the stalled writer's. */
    assert_rbus_ok(rbus_publish_ex(sc.topic, big, sizeof big, &po, &res));
    assert_int_equal(res.queued, 1);
    assert_int_equal(res.evicted, 1);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.skipped, 1);
    assert_int_equal(st.dropped_oldest, 1);
    assert_int_equal(st.bytes, 60001);
    /* 65536 bytes more: the queued 60000 go, the stalled writer's 1 byte
     * cannot, so it does not fit. */
    static char huge[65536];
    huge[0] = 'm';
    assert_rbus_ok(rbus_publish_ex(sc.topic, huge, sizeof huge, &po, &res));
    assert_int_equal(res.queued, 0);
    assert_int_equal(res.evicted, 2);
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.dropped_newest, 1);
    assert_int_equal(st.bytes, 1);
    unpark(&p);
    assert_rbus_ok(p.rc);
    assert_int_equal(p.res.queued, 1);
    assert_int_equal(drain_in_order(&sc), 1);
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.bytes, 0);
    scene_close(&sc);
}

/* A put that reserved bytes, found no slot and stalled before giving
 * them back: a blocked publisher that needs those bytes, and found them
 * reserved, must be woken when they come back, though no receive follows
 * (it used to sleep for good on an empty queue). */
struct bytes_waiter {
    rbus_topic *t;
    size_t size;
    int64_t timeout_ns;
    pthread_t thr;
    atomic_int go; /* set once a trap for the thread is armed */
    atomic_int done;
    int rc;
    rbus_pub_result res;
};

static void *bytes_waiter_main(void *arg)
{
    struct bytes_waiter *w = arg;
    static const char buf[100] = "p";
    while (!atomic_load(&w->go))
        rbus_test_sleep_us(100);
    rbus_pub_opts o = {.timeout_ns = w->timeout_ns};
    w->rc = rbus_publish_ex(w->t, buf, w->size, &o, &w->res);
    atomic_store(&w->done, 1);
    return NULL;
}

static void bytes_given_back_by_a_failed_put_wake_a_waiter(void **state)
{
    (void)state;
    rbus *bus;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_payload = 100;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "stall.bytes", &t));
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 2;
    o.max_bytes = 100;
    rbus_sub *s;
    assert_rbus_ok(rbus_subscribe(bus, "stall.bytes", &o, &s));
    assert_rbus_ok(rbus_publish(t, "0123456789", 10));
    assert_rbus_ok(rbus_publish(t, "0123456789", 10)); /* full by count */
    /* p1 (50 bytes, will not wait) reserves its bytes, finds no slot and
     * stalls before giving them back. */
    struct bytes_waiter p1 = {.t = t, .size = 50, .timeout_ns = -1};
    assert_int_equal(pthread_create(&p1.thr, NULL, bytes_waiter_main, &p1), 0);
    int trap = rbus__trap_set(RBUS_PP_BYTES_PUT_FAILED, &p1.thr);
    assert_true(trap >= 0);
    atomic_store(&p1.go, 1);
    assert_true(rbus__trap_wait(trap, PARK_TIMEOUT_NS));
    /* p2 (60 bytes, waits forever) finds 70 of 100 bytes taken. */
    struct bytes_waiter p2 = {.t = t, .size = 60, .timeout_ns = 0, .go = 1};
    assert_int_equal(pthread_create(&p2.thr, NULL, bytes_waiter_main, &p2), 0);
    rbus_sub_stats st;
    uint64_t deadline = rbus_test_now_ns() + UINT64_C(10000000000);
    do {
        rbus_test_sleep_us(500);
        assert_rbus_ok(rbus_sub_stats_get(s, &st));
    } while (st.publishers_waiting == 0 && rbus_test_now_ns() < deadline);
    assert_int_equal(st.publishers_waiting, 1);
    /* The receives free the slots, but p1's bytes still stand in the way. */
    rbus_msg *m;
    for (int i = 0; i < 2; i++) {
        assert_rbus_ok(rbus_recv(s, &m, 0));
        rbus_msg_release(m);
    }
    rbus_test_sleep_us(20000);
    assert_int_equal(atomic_load(&p2.done), 0);
    /* p1 gives its bytes back: that alone must wake p2. */
    rbus__trap_release(trap);
    assert_int_equal(pthread_join(p1.thr, NULL), 0);
    assert_rbus_ok(p1.rc);
    assert_int_equal(p1.res.dropped, 1);
    deadline = rbus_test_now_ns() + UINT64_C(5000000000);
    while (!atomic_load(&p2.done) && rbus_test_now_ns() < deadline)
        rbus_test_sleep_us(1000);
    assert_int_equal(atomic_load(&p2.done), 1);
    assert_int_equal(pthread_join(p2.thr, NULL), 0);
    assert_rbus_ok(p2.rc);
    assert_int_equal(p2.res.queued, 1);
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_size(m), 60);
    rbus_msg_release(m);
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    rbus_test_check_accounting(&st);
    assert_int_equal(st.bytes, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* ------------------------------------------------------------ a drain */

static int count_handler(const rbus_msg *m, void *arg)
{
    (void)m;
    atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

/* rbus_dispatch_drain with a publisher stalled inside its publish, its
 * slot below the drain's mark: the drain skips it as a receive would and
 * returns; the stalled message, offered again once its publisher runs,
 * stays queued for whoever receives next. */
static void drain_passes_a_stalled_writer(void **state)
{
    (void)state;
    struct scene sc;
    scene_open(&sc, RBUS_BLOCK);
    struct parked p;
    park(&p, &sc, JOB_PUBLISH, RBUS_PP_RING_PUT_RESERVED);
    for (int i = 0; i < 5; i++)
        assert_int_equal(publish(&sc).queued, 1);
    atomic_int handled = 0;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, sc.sub, count_handler, &handled, NULL));
    rbus_dispatch_stats final;
    assert_rbus_ok(rbus_dispatch_drain(d, PARK_TIMEOUT_NS, &final));
    assert_int_equal(final.handled, 5);
    assert_int_equal(atomic_load(&handled), 5);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.skipped, 1);
    assert_int_equal(st.depth, 0);
    unpark(&p);
    assert_rbus_ok(p.rc);
    assert_int_equal(p.res.queued, 1);
    assert_int_equal(drain_in_order(&sc), 1);
    scene_close(&sc);
}

/* A drain that saw the ring's head past its mark stays done when head then
 * moves back: a drop-oldest publisher that read head before the worker
 * moved it on stores its older value late. The drain used to look at head
 * again, find it below the mark with no worker left to move it, and wait
 * for good. */
struct gates {
    atomic_int in_d, open_d;
};

static int gated_handler(const rbus_msg *m, void *arg)
{
    struct gates *g = arg;
    if (*(const char *)rbus_msg_data(m) == 'D') {
        atomic_store(&g->in_d, 1);
        while (!atomic_load(&g->open_d))
            rbus_test_sleep_us(200);
    }
    return 0;
}

struct drainer {
    rbus_dispatcher *d;
    pthread_t thr;
    atomic_int done;
    int rc;
};

static void *drainer_main(void *arg)
{
    struct drainer *dr = arg;
    dr->rc = rbus_dispatch_drain(dr->d, INT64_C(3000000000), NULL);
    atomic_store(&dr->done, 1);
    return NULL;
}

static void drain_survives_head_moving_back(void **state)
{
    (void)state;
    struct scene sc;
    memset(&sc, 0, sizeof sc);
    sc.topic = rbus_test_bus_and_topic(&sc.bus, "stall.ring");
    sc.sub = rbus_test_subscribe_checked(sc.bus, "stall.ring", 2, RBUS_DROP_OLDEST, 0, NULL);
    struct gates g = {0};
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, sc.sub, gated_handler, &g, NULL));
    /* C and D fill the ring while the worker holds B. */
    atomic_store(&g.open_d, 0);
    rbus_pub_opts po = {.timeout_ns = -1};
    assert_rbus_ok(rbus_publish_ex(sc.topic, "B", 1, &po, NULL));
    rbus_test_sleep_us(20000);
    /* The worker took B (handled at once); hold it on D next. */
    assert_rbus_ok(rbus_publish_ex(sc.topic, "C", 1, &po, NULL));
    assert_rbus_ok(rbus_publish_ex(sc.topic, "D", 1, &po, NULL));
    /* The worker takes C, then D, and stays in the handler with D. */
    for (int i = 0; i < 10000 && !atomic_load(&g.in_d); i++)
        rbus_test_sleep_us(1000);
    assert_int_equal(atomic_load(&g.in_d), 1);
    /* Refill so that a drop-oldest publish evicts: E, F fill the ring,
     * then P evicts E and stalls in head_to with its old reading of head. */
    assert_rbus_ok(rbus_publish_ex(sc.topic, "E", 1, &po, NULL));
    assert_rbus_ok(rbus_publish_ex(sc.topic, "F", 1, &po, NULL));
    struct parked p;
    park(&p, &sc, JOB_PUBLISH, RBUS_PP_RING_HEAD_TO);
    /* The worker is stuck with D; take F ourselves so head moves past the
     * position P will store. */
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(sc.sub, &m, 0));
    assert_int_equal(*(const char *)rbus_msg_data(m), 'F');
    rbus_msg_release(m);
    /* The drain's mark is tail; head is there already: passed. */
    struct drainer dr = {.d = d};
    uint64_t checks = rbus__pause_passes(RBUS_PP_DISPATCH_DRAIN_CHECK);
    assert_int_equal(pthread_create(&dr.thr, NULL, drainer_main, &dr), 0);
    while (rbus__pause_passes(RBUS_PP_DISPATCH_DRAIN_CHECK) == checks)
        rbus_test_sleep_us(200);
    /* Its next check comes after the worker finished D and went idle. */
    int check = rbus__trap_set(RBUS_PP_DISPATCH_DRAIN_CHECK, &dr.thr);
    assert_true(check >= 0);
    atomic_store(&g.open_d, 1);
    assert_true(rbus__trap_wait(check, PARK_TIMEOUT_NS));
    /* P stores its old head, below the mark, then commits its message. */
    unpark(&p);
    assert_rbus_ok(p.rc);
    rbus__trap_release(check);
    assert_int_equal(pthread_join(dr.thr, NULL), 0);
    assert_rbus_ok(dr.rc);
    /* P's message came after the mark: still queued. */
    assert_int_equal(drain_in_order(&sc), 1);
    scene_close(&sc);
}

/* A batch publisher stalled holding its run of positions: other
 * publishers go on behind it, receivers skip the run (a bounded poll per
 * slot) and take what follows, and the batch, resuming, gives back the
 * positions it lost and offers its messages again, in order, each counted
 * once. */
static void stalled_batch_is_skipped(rbus_overflow policy)
{
    struct scene sc;
    scene_open_cap(&sc, policy, 4 * BATCH);
    struct parked p;
    park(&p, &sc, JOB_BATCH, RBUS_PP_RING_RUN_RESERVED);
    for (int i = 0; i < 5; i++)
        assert_int_equal(publish(&sc).queued, 1);
    assert_int_equal(drain_in_order(&sc), 5);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.skipped, BATCH);
    assert_int_equal(st.depth, 0);
    unpark(&p);
    assert_int_equal(p.rc, BATCH);
    assert_int_equal(p.res.queued, BATCH);
    assert_int_equal(drain_in_order(&sc), BATCH);
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.reoffers, 1);
    assert_int_equal(st.offered, 5 + BATCH);
    assert_int_equal(st.received, 5 + BATCH);
    /* The ring is whole again: a full capacity fits. */
    for (int i = 0; i < 4 * BATCH; i++)
        assert_int_equal(publish(&sc).queued, 1);
    assert_int_equal(drain_in_order(&sc), 4 * BATCH);
    scene_close(&sc);
}

static void stalled_batch_holds_back_nothing(void **state)
{
    (void)state;
    stalled_batch_is_skipped(RBUS_BLOCK);
    stalled_batch_is_skipped(RBUS_DROP_NEWEST);
    stalled_batch_is_skipped(RBUS_DROP_OLDEST);
}

/* A stalled batch costs its run and no more: with it parked on an empty
 * ring, a drop-newest subscription takes the rest of the capacity before
 * refusing, and the batch then commits all of its run. */
static void stalled_batch_costs_its_run(void **state)
{
    (void)state;
    struct scene sc;
    scene_open_cap(&sc, RBUS_DROP_NEWEST, 4 * BATCH);
    struct parked p;
    park(&p, &sc, JOB_BATCH, RBUS_PP_RING_RUN_RESERVED);
    for (int i = 0; i < 3 * BATCH; i++)
        assert_int_equal(publish(&sc).queued, 1);
    assert_int_equal(publish(&sc).dropped, 1);
    unpark(&p); /* nobody skipped it: it commits */
    assert_int_equal(p.rc, BATCH);
    assert_int_equal(p.res.queued, BATCH);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.sub, &st));
    assert_int_equal(st.depth, 4 * BATCH);
    assert_int_equal(st.skipped, 0);
    /* The batch's positions came first: its messages, then the others. */
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(sc.sub, &m, 0));
    assert_int_equal(*(const char *)rbus_msg_data(m), 'b');
    rbus_msg_release(m);
    assert_int_equal(drain_in_order(&sc), 4 * BATCH - 1);
    scene_close(&sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(drop_oldest_evicts_one_past_a_receiver_stalled_mid_claim),
        cmocka_unit_test(stalled_receiver_leaves_the_room_to_publishers),
        cmocka_unit_test(stalled_writer_holds_back_nothing),
        cmocka_unit_test(stalled_writer_costs_one_slot),
        cmocka_unit_test(evictor_never_waits_for_a_stalled_writer),
        cmocka_unit_test(publishers_pass_a_held_slot),
        cmocka_unit_test(byte_eviction_passes_a_stalled_writer),
        cmocka_unit_test(drain_passes_a_stalled_writer),
        cmocka_unit_test(bytes_given_back_by_a_failed_put_wake_a_waiter),
        cmocka_unit_test(drain_survives_head_moving_back),
        cmocka_unit_test(stalled_batch_holds_back_nothing),
        cmocka_unit_test(stalled_batch_costs_its_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
