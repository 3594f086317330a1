/*
 * Handle lifetimes under preemption: a call that began before
 * rbus_unsubscribe (or rbus_dispatch_stop) never touches freed memory,
 * however long its thread is stalled. A call "begins" at its first
 * instruction, so each case parks the calling thread at the pause point of
 * that first instruction, runs the ending call to completion, and only then
 * lets the parked call go on. The bus's allocator poisons and keeps what
 * is freed, so a read of freed memory crashes in any build, not only under
 * AddressSanitizer.
 */
#include "test_util.h"

#include "internal.h" /* RBUS__POOL_HOLD, and pause.h */

#define PARK_TIMEOUT_NS INT64_C(30000000000)

enum call_kind {
    CALL_RECV,
    CALL_RECV_BATCH,
    CALL_SUB_CLOSE,
    CALL_SUB_ID,
    CALL_SUB_FD,
    CALL_SUB_STATS,
    CALL_SUB_TIMING,
    CALL_DISPATCH_START,
    CALL_UNSUBSCRIBE,
    CALL_DISPATCH_STATS,
    CALL_DISPATCH_TIMING,
    CALL_DISPATCH_STOP,
    CALL_PUBLISH,
    CALL_PUBLISH_EX,
    CALL_TOPIC_NAME,
    CALL_TOPIC_STATS,
    CALL_MSG_REF,
    CALL_MSG_DATA,
    CALL_MSG_RELEASE,
    CALL_SUBSCRIBE,
    CALL_TOPIC_OPEN,
    CALL_PROMETHEUS,
};

/* What the main thread runs to completion while the call is parked. */
enum ending { END_UNSUBSCRIBE, END_DISPATCH_STOP };

struct lifetime_case {
    const char *what;
    enum call_kind kind;
    enum rbus__pp point;
    enum ending ending;
    long want; /* the parked call's result once released */
};

struct world {
    struct rbus_test_alloc alloc;
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    rbus_dispatcher *d;
    rbus_msg *held; /* received before the call, released after */
};

struct call {
    const struct lifetime_case *c;
    struct world *w;
    atomic_int go;
    long rc;
};

static int handler_ok(const rbus_msg *m, void *arg)
{
    (void)m;
    (void)arg;
    return 0;
}

static long run_call(struct call *k)
{
    struct world *w = k->w;
    rbus_msg *m = NULL, *batch[4];
    rbus_sub_stats ss;
    rbus_sub_timing st;
    rbus_topic_stats ts;
    rbus_dispatch_stats ds;
    rbus_dispatch_timing dt;
    rbus_dispatcher *d2 = NULL;
    rbus_sub *s2 = NULL;
    rbus_topic *t2 = NULL;
    rbus_pub_opts po = {.timeout_ns = -1};
    char buf[4096];
    long rc;
    switch (k->c->kind) {
    case CALL_RECV:
        rc = rbus_recv(w->sub, &m, 0);
        return m ? 12345 : rc; /* a message from an unsubscribed handle is wrong */
    case CALL_RECV_BATCH:
        return rbus_recv_batch(w->sub, batch, 4, 0);
    case CALL_SUB_CLOSE:
        return rbus_sub_close(w->sub);
    case CALL_SUB_ID:
        return (long)rbus_sub_id(w->sub);
    case CALL_SUB_FD:
        return rbus_sub_fd(w->sub);
    case CALL_SUB_STATS:
        return rbus_sub_stats_get(w->sub, &ss);
    case CALL_SUB_TIMING:
        return rbus_sub_timing_get(w->sub, &st);
    case CALL_DISPATCH_START:
        rc = rbus_dispatch_start(&d2, w->sub, handler_ok, NULL, NULL);
        if (d2)
            rbus_dispatch_stop(d2);
        return rc;
    case CALL_UNSUBSCRIBE:
        return rbus_unsubscribe(w->sub);
    case CALL_DISPATCH_STATS:
        return rbus_dispatch_stats_get(w->d, &ds);
    case CALL_DISPATCH_TIMING:
        return rbus_dispatch_timing_get(w->d, &dt);
    case CALL_DISPATCH_STOP:
        return rbus_dispatch_stop(w->d);
    case CALL_PUBLISH:
        return rbus_publish(w->topic, "late", 4);
    case CALL_PUBLISH_EX:
        return rbus_publish_ex(w->topic, "late", 4, &po, NULL);
    case CALL_TOPIC_NAME:
        return strcmp(rbus_topic_name(w->topic), "life.t");
    case CALL_TOPIC_STATS:
        rc = rbus_topic_stats_get(w->topic, &ts);
        return rc ? rc : (long)ts.subscriptions;
    case CALL_MSG_REF:
        rc = rbus_msg_ref(w->held) == w->held ? 0 : -1;
        rbus_msg_release(w->held); /* the reference just taken */
        return rc;
    case CALL_MSG_DATA:
        return memcmp(rbus_msg_data(w->held), "held", 4);
    case CALL_MSG_RELEASE:
        rbus_msg_release(w->held);
        w->held = NULL;
        return 0;
    case CALL_SUBSCRIBE:
        rc = rbus_subscribe(w->bus, "life.>", NULL, &s2);
        if (s2)
            rbus_unsubscribe(s2);
        return rc;
    case CALL_TOPIC_OPEN:
        rc = rbus_topic_open(w->bus, "life.other", &t2);
        return rc;
    case CALL_PROMETHEUS:
        rc = rbus_stats_prometheus(w->bus, buf, sizeof buf);
        return rc > 0 ? 0 : rc;
    }
    return -1000;
}

static void *call_main(void *arg)
{
    struct call *k = arg;
    while (!atomic_load(&k->go))
        rbus_test_sleep_us(100);
    k->rc = run_call(k);
    return NULL;
}

static void world_open(struct world *w, bool dispatcher)
{
    memset(w, 0, sizeof *w);
    rbus_test_alloc_init(&w->alloc);
    w->alloc.quarantine = true;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &w->alloc.hooks;
    assert_rbus_ok(rbus_create(&w->bus, &cfg));
    assert_rbus_ok(rbus_topic_open(w->bus, "life.t", &w->topic));
    w->sub = rbus_test_subscribe_checked(w->bus, "life.>", 8, RBUS_DROP_NEWEST, 0, NULL);
    assert_rbus_ok(rbus_publish(w->topic, "held", 4));
    assert_rbus_ok(rbus_recv(w->sub, &w->held, 0));
    assert_rbus_ok(rbus_publish(w->topic, "queued", 6));
    if (dispatcher)
        assert_rbus_ok(rbus_dispatch_start(&w->d, w->sub, handler_ok, NULL, NULL));
}

static void world_close(struct world *w)
{
    if (w->held)
        rbus_msg_release(w->held);
    rbus_destroy(w->bus);
    rbus_test_alloc_drain(&w->alloc);
    rbus_test_alloc_assert_all_returned(&w->alloc);
}

static void run_case(const struct lifetime_case *c)
{
    struct world w;
    world_open(&w, c->ending == END_DISPATCH_STOP);
    struct call k = {.c = c, .w = &w, .rc = -9999};
    atomic_init(&k.go, 0);
    pthread_t thr;
    assert_int_equal(pthread_create(&thr, NULL, call_main, &k), 0);
    int trap = rbus__trap_set(c->point, &thr);
    assert_true(trap >= 0);
    atomic_store(&k.go, 1);
    if (!rbus__trap_wait(trap, PARK_TIMEOUT_NS)) {
        print_error("%s: the call never reached %s\n", c->what, rbus__pause_name(c->point));
        fail();
    }

    /* The ending call runs to completion while the other is parked at its
     * first instruction. */
    if (c->ending == END_UNSUBSCRIBE) {
        assert_rbus_ok(rbus_unsubscribe(w.sub));
    } else {
        assert_rbus_ok(rbus_dispatch_stop(w.d));
        assert_true(rbus__trap_holds(trap));
    }

    rbus__trap_release(trap);
    assert_int_equal(pthread_join(thr, NULL), 0);
    if (k.rc != c->want) {
        print_error("%s: returned %ld, want %ld\n", c->what, k.rc, c->want);
        fail();
    }
    if (c->ending == END_DISPATCH_STOP)
        assert_rbus_ok(rbus_unsubscribe(w.sub));
    world_close(&w);
}

#define CASE(kind, point, ending, want)                                                \
    {                                                                                  \
#kind " parked at " #point, CALL_##kind, RBUS_PP_##point, END_##ending, (want) \
    }

static const struct lifetime_case subscription_cases[] = {
    CASE(RECV, RBUS_RECV, UNSUBSCRIBE, -ESHUTDOWN),
    CASE(RECV_BATCH, RBUS_RECV_BATCH, UNSUBSCRIBE, -ESHUTDOWN),
    /* rbus_sub_close racing rbus_unsubscribe: the close is done for it. */
    CASE(SUB_CLOSE, RBUS_SUB_CLOSE, UNSUBSCRIBE, 0),
    CASE(SUB_ID, RBUS_SUB_ID, UNSUBSCRIBE, 0),
    CASE(SUB_FD, RBUS_SUB_FD, UNSUBSCRIBE, -ESHUTDOWN),
    CASE(SUB_STATS, RBUS_SUB_STATS_GET, UNSUBSCRIBE, -ESHUTDOWN),
    CASE(SUB_TIMING, RBUS_SUB_TIMING_GET, UNSUBSCRIBE, -ESHUTDOWN),
    CASE(DISPATCH_START, RBUS_DISPATCH_START, UNSUBSCRIBE, -ESHUTDOWN),
    /* A second unsubscribe that began before the first. */
    CASE(UNSUBSCRIBE, RBUS_UNSUBSCRIBE, UNSUBSCRIBE, -EINVAL),
};

static const struct lifetime_case dispatcher_cases[] = {
    CASE(DISPATCH_STATS, RBUS_DISPATCH_STATS_GET, DISPATCH_STOP, -ESHUTDOWN),
    CASE(DISPATCH_TIMING, RBUS_DISPATCH_TIMING_GET, DISPATCH_STOP, -ESHUTDOWN),
    CASE(DISPATCH_STOP, RBUS_DISPATCH_STOP, DISPATCH_STOP, -EINVAL),
};

/* Topics, messages and the bus outlive a subscription: these calls simply
 * work, with the subscription gone. */
static const struct lifetime_case other_cases[] = {
    CASE(PUBLISH, RBUS_PUBLISH, UNSUBSCRIBE, 0),
    CASE(PUBLISH_EX, RBUS_PUBLISH_EX, UNSUBSCRIBE, 0),
    CASE(TOPIC_NAME, RBUS_TOPIC_NAME, UNSUBSCRIBE, 0),
    CASE(TOPIC_STATS, RBUS_TOPIC_STATS_GET, UNSUBSCRIBE, 0),
    CASE(MSG_REF, RBUS_MSG_REF, UNSUBSCRIBE, 0),
    CASE(MSG_DATA, RBUS_MSG_DATA, UNSUBSCRIBE, 0),
    CASE(MSG_RELEASE, RBUS_MSG_RELEASE, UNSUBSCRIBE, 0),
    CASE(SUBSCRIBE, RBUS_SUBSCRIBE, UNSUBSCRIBE, 0),
    CASE(TOPIC_OPEN, RBUS_TOPIC_OPEN, UNSUBSCRIBE, 0),
    CASE(PROMETHEUS, RBUS_STATS_PROMETHEUS, UNSUBSCRIBE, 0),
};

static void run_all(const struct lifetime_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        print_message("  %s\n", cases[i].what);
        run_case(&cases[i]);
    }
}

static void calls_on_a_subscription_survive_unsubscribe(void **state)
{
    (void)state;
    run_all(subscription_cases, sizeof subscription_cases / sizeof subscription_cases[0]);
}

static void calls_on_a_dispatcher_survive_stop(void **state)
{
    (void)state;
    run_all(dispatcher_cases, sizeof dispatcher_cases / sizeof dispatcher_cases[0]);
}

static void calls_on_topics_messages_and_the_bus_survive_unsubscribe(void **state)
{
    (void)state;
    run_all(other_cases, sizeof other_cases / sizeof other_cases[0]);
}

/* The handle's memory is reused only after RBUS__POOL_HOLD later
 * unsubscribes: until then a late call keeps finding it unsubscribed. */
static void unsubscribed_handle_stays_dead_until_the_pool_turns_over(void **state)
{
    (void)state;
    struct world w;
    world_open(&w, false);
    rbus_sub *old = w.sub;
    assert_rbus_ok(rbus_unsubscribe(old));
    for (int i = 0; i < RBUS__POOL_HOLD; i++) {
        rbus_sub *s = rbus_test_subscribe_checked(w.bus, "life.x", 4, RBUS_DROP_NEWEST, 0, NULL);
        assert_ptr_not_equal(s, old);
        assert_rbus_ok(rbus_unsubscribe(s));
    }
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(old, &m, 0), -ESHUTDOWN);
    assert_null(m);
    assert_int_equal(rbus_sub_id(old), 0);
    world_close(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(calls_on_a_subscription_survive_unsubscribe),
        cmocka_unit_test(calls_on_a_dispatcher_survive_stop),
        cmocka_unit_test(calls_on_topics_messages_and_the_bus_survive_unsubscribe),
        cmocka_unit_test(unsubscribed_handle_stays_dead_until_the_pool_turns_over),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
