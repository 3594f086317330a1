/*
 * Idempotency keys with a publisher parked inside the key check, at each of
 * its steps (a slot claimed; its intent stored; the acceptance won but its
 * slot not yet marked): every other keyed publisher, of the same key or
 * not, goes on without waiting, a grace period completes, and when the
 * parked one resumes exactly one publish of its key was accepted.
 */
#include "test_util.h"

#include "pause.h"

#include <pthread.h>

#define PARK_TIMEOUT_NS INT64_C(30000000000)
#define ANSWER_TIMEOUT_US 10000000u

static const enum rbus__pp steps[] = {RBUS_PP_DEDUP_CLAIMED, RBUS_PP_DEDUP_PROPOSED,
                                      RBUS_PP_DEDUP_ACCEPTED};

struct keyed_pub {
    rbus_topic *topic;
    const char *key;
    int rc;
    atomic_int done;
};

static int publish_key(rbus_topic *t, const char *key, size_t klen)
{
    rbus_pub_opts o;
    memset(&o, 0, sizeof o);
    o.key = key;
    o.key_len = klen;
    return rbus_publish_ex(t, key, klen, &o, NULL);
}

static void *keyed_main(void *arg)
{
    struct keyed_pub *p = arg;
    p->rc = publish_key(p->topic, p->key, strlen(p->key));
    atomic_store(&p->done, 1);
    return NULL;
}

/* Starts a thread publishing p->key and waits until it is parked at
 * `step`; returns the trap that holds it. */
static int park_keyed(enum rbus__pp step, struct keyed_pub *p, pthread_t *th)
{
    int trap = rbus__trap_set(step, NULL);
    assert_true(trap >= 0);
    assert_int_equal(pthread_create(th, NULL, keyed_main, p), 0);
    assert_true(rbus__trap_wait(trap, PARK_TIMEOUT_NS));
    return trap;
}

static rbus *new_bus(uint32_t dedup_keys)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.dedup_keys = dedup_keys;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    return bus;
}

/* How many messages with key `key` the subscription holds; drains it. */
static unsigned drain_count_key(rbus_sub *s, const char *key, unsigned *total)
{
    unsigned n = 0;
    rbus_msg *m;
    *total = 0;
    while (rbus_recv(s, &m, 0) == 0) {
        size_t kl;
        const void *k = rbus_msg_key(m, &kl);
        if (k && kl == strlen(key) && memcmp(k, key, kl) == 0)
            n++;
        (*total)++;
        rbus_msg_release(m);
    }
    return n;
}

struct closer {
    rbus_sub *sub;
    atomic_int done;
};

static void *close_main(void *arg)
{
    struct closer *c = arg;
    rbus_sub_close(c->sub); /* waits for a grace period */
    atomic_store(&c->done, 1);
    return NULL;
}

/*
 * One key, parked at `step`: the main thread publishes the same key and 100
 * others, a second thread the same key, and a subscription is closed (a
 * grace period); all answer while the first is parked. Exactly one publish
 * of the key is accepted, whichever step it was parked at.
 */
static void parked_publisher_holds_nobody_back(void **state)
{
    (void)state;
    for (size_t si = 0; si < sizeof steps / sizeof steps[0]; si++) {
        const enum rbus__pp step = steps[si];
        const bool won = step == RBUS_PP_DEDUP_ACCEPTED;
        printf("stall dedup: parked at %s\n", rbus__pause_name(step));
        rbus *bus = new_bus(4096);
        rbus_topic *t = rbus_test_open_keyed(bus, "dd.t");
        rbus_sub *s = rbus_test_subscribe_checked(bus, "dd.t", 1024, RBUS_DROP_NEWEST, 0, NULL);
        rbus_sub *other = rbus_test_subscribe_checked(bus, "dd.>", 8, RBUS_DROP_NEWEST, 0, NULL);

        struct keyed_pub a = {.topic = t, .key = "K"};
        pthread_t ta;
        int trap = park_keyed(step, &a, &ta);

        /* The same key, here: a duplicate only if the parked one won. */
        assert_rbus_rc(publish_key(t, "K", 1), won ? RBUS_DUPLICATE : 0);
        /* Other keys: all accepted, none waits. */
        for (int i = 0; i < 100; i++) {
            char key[16];
            int kl = snprintf(key, sizeof key, "o%d", i);
            assert_rbus_ok(publish_key(t, key, (size_t)kl));
        }
        /* The same key from another thread: a duplicate now, whoever won. */
        struct keyed_pub b = {.topic = t, .key = "K"};
        pthread_t tb;
        assert_int_equal(pthread_create(&tb, NULL, keyed_main, &b), 0);
        assert_true(rbus_test_wait_flag(&b.done, ANSWER_TIMEOUT_US));
        assert_int_equal(pthread_join(tb, NULL), 0);
        assert_rbus_rc(b.rc, RBUS_DUPLICATE);
        /* A grace period completes: the parked publisher is in no read
         * section. */
        struct closer c = {.sub = other};
        atomic_init(&c.done, 0);
        pthread_t tc;
        assert_int_equal(pthread_create(&tc, NULL, close_main, &c), 0);
        assert_true(rbus_test_wait_flag(&c.done, ANSWER_TIMEOUT_US));
        assert_int_equal(pthread_join(tc, NULL), 0);
        assert_true(rbus__trap_holds(trap));

        rbus__trap_release(trap);
        assert_int_equal(pthread_join(ta, NULL), 0);
        assert_rbus_rc(a.rc, won ? 0 : RBUS_DUPLICATE);
        assert_rbus_rc(publish_key(t, "K", 1), RBUS_DUPLICATE);

        unsigned total;
        assert_int_equal(drain_count_key(s, "K", &total), 1);
        assert_int_equal(total, 101);
        rbus_topic_stats ts;
        assert_rbus_ok(rbus_topic_stats_get(t, &ts));
        assert_int_equal(ts.published, 101);
        assert_int_equal(ts.duplicates, 3);
        assert_rbus_ok(rbus_unsubscribe(other));
        assert_rbus_ok(rbus_unsubscribe(s));
        rbus_destroy(bus);
        rbus__trap_reset();
    }
}

/*
 * A small window (8 keys) cycles through its slots hundreds of times while
 * one publisher stays parked: the slot it owns is never taken from it,
 * and an acceptance it won but has not marked is marked HELPED by the
 * next one and forgotten in its turn, its slot still kept for it. On
 * release its key is accepted (nobody else published it) and remembered.
 */
static void window_cycles_around_parked_publisher(void **state)
{
    (void)state;
    const uint32_t k = 8, rounds = 5000;
    for (size_t si = 0; si < sizeof steps / sizeof steps[0]; si++) {
        const enum rbus__pp step = steps[si];
        printf("stall dedup: dedup_keys %u, %u keys while parked at %s\n", (unsigned)k,
               (unsigned)rounds, rbus__pause_name(step));
        rbus *bus = new_bus(k);
        rbus_topic *t = rbus_test_open_keyed(bus, "dd.c");
        struct keyed_pub a = {.topic = t, .key = "parked"};
        pthread_t ta;
        int trap = park_keyed(step, &a, &ta);

        char key[16];
        for (uint32_t i = 0; i < rounds; i++) {
            int kl = snprintf(key, sizeof key, "c%u", (unsigned)i);
            assert_rbus_ok(publish_key(t, key, (size_t)kl));
        }
        /* The window still holds exactly the last k. */
        for (uint32_t i = rounds - k; i < rounds; i++) {
            int kl = snprintf(key, sizeof key, "c%u", (unsigned)i);
            assert_rbus_rc(publish_key(t, key, (size_t)kl), RBUS_DUPLICATE);
        }
        rbus__trap_release(trap);
        assert_int_equal(pthread_join(ta, NULL), 0);
        if (step == RBUS_PP_DEDUP_ACCEPTED) {
            /* Accepted before the others; long forgotten by now. */
            assert_rbus_ok(a.rc);
            assert_rbus_ok(publish_key(t, "parked", 6));
        } else {
            assert_rbus_ok(a.rc);
        }
        assert_rbus_rc(publish_key(t, "parked", 6), RBUS_DUPLICATE);
        /* The k - 1 most recent others are still remembered. */
        for (uint32_t i = rounds - (k - 1); i < rounds; i++) {
            int kl = snprintf(key, sizeof key, "c%u", (unsigned)i);
            assert_rbus_rc(publish_key(t, key, (size_t)kl), RBUS_DUPLICATE);
        }
        rbus_destroy(bus);
        rbus__trap_reset();
    }
}

#define CROWD 255

/*
 * dedup_keys 1 gives the smallest window, 256 slots. With 255 publishers
 * parked holding a slot each and the latest key remembered in the last,
 * a publish of a new key finds no slot: -ENOBUFS, nothing recorded. Once
 * they resume, every one of them is accepted.
 */
static void crowded_window_says_enobufs(void **state)
{
    (void)state;
    printf("stall dedup: %d publishers parked holding slots, dedup_keys 1\n", CROWD);
    rbus *bus = new_bus(1);
    rbus_topic *t = rbus_test_open_keyed(bus, "dd.crowd");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "dd.crowd", 1024, RBUS_DROP_NEWEST, 0, NULL);
    assert_rbus_ok(publish_key(t, "first", 5));

    static struct keyed_pub pubs[CROWD];
    static pthread_t threads[CROWD];
    static char keys[CROWD][16];
    for (int i = 0; i < CROWD; i++) {
        snprintf(keys[i], sizeof keys[i], "p%d", i);
        pubs[i] = (struct keyed_pub){.topic = t, .key = keys[i]};
        park_keyed(RBUS_PP_DEDUP_CLAIMED, &pubs[i], &threads[i]);
    }
    rbus_pub_result r;
    rbus_pub_opts o;
    memset(&o, 0, sizeof o);
    o.key = "late";
    o.key_len = 4;
    assert_rbus_rc(rbus_publish_ex(t, "late", 4, &o, &r), -ENOBUFS);
    assert_false(r.duplicate);
    assert_int_equal(r.matched, 0);
    /* Not recorded, and the remembered key still is. */
    assert_rbus_rc(publish_key(t, "first", 5), RBUS_DUPLICATE);

    rbus__trap_reset();
    for (int i = 0; i < CROWD; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
        assert_rbus_ok(pubs[i].rc);
    }
    assert_rbus_ok(publish_key(t, "late", 4));
    unsigned total;
    assert_int_equal(drain_count_key(s, "late", &total), 1);
    assert_int_equal(total, 1 + CROWD + 1);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

struct warm_pub {
    rbus_topic *warm, *target;
    const char *key;
    atomic_int ready, go, done;
    int rc;
};

/* Publishes once on `warm` (so its thread state and message cache exist),
 * then, on `go`, once on `target`. */
static void *warm_main(void *arg)
{
    struct warm_pub *p = arg;
    char wk[32];
    snprintf(wk, sizeof wk, "warm-%s", p->key);
    if (publish_key(p->warm, wk, strlen(wk)) != 0)
        p->rc = -1000;
    atomic_store(&p->ready, 1);
    while (!atomic_load(&p->go))
        rbus_test_sleep_us(100);
    p->rc = publish_key(p->target, p->key, strlen(p->key));
    atomic_store(&p->done, 1);
    return NULL;
}

/*
 * Racing first keyed publishes on a topic not declared keyed build one
 * window between them: a publisher parked while it builds the window
 * makes the other wait for it (the one wait a keyed publish has, once per
 * topic), and the other allocates nothing of its own.
 */
static void racing_first_publishers_build_one_window(void **state)
{
    (void)state;
    printf("stall dedup: a first keyed publish parked while building its window\n");
    struct rbus_test_alloc ca;
    rbus_test_alloc_init(&ca);
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &ca.hooks;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *warm = rbus_test_open_keyed(bus, "dd.warm");
    rbus_topic *target = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "dd.first", &target));

    struct warm_pub a = {.warm = warm, .target = target, .key = "a"};
    struct warm_pub b = {.warm = warm, .target = target, .key = "b"};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, warm_main, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, warm_main, &b), 0);
    assert_true(rbus_test_wait_flag(&a.ready, ANSWER_TIMEOUT_US));
    assert_true(rbus_test_wait_flag(&b.ready, ANSWER_TIMEOUT_US));

    int trap = rbus__trap_set(RBUS_PP_DEDUP_BUILDING, NULL);
    assert_true(trap >= 0);
    long long allocs0 = atomic_load(&ca.allocs);
    atomic_store(&a.go, 1);
    assert_true(rbus__trap_wait(trap, PARK_TIMEOUT_NS));
    atomic_store(&b.go, 1);
    rbus_test_sleep_us(50000);
    assert_false(atomic_load(&b.done)); /* waits for the builder */
    rbus__trap_release(trap);
    assert_int_equal(pthread_join(ta, NULL), 0);
    assert_int_equal(pthread_join(tb, NULL), 0);
    assert_rbus_ok(a.rc);
    assert_rbus_ok(b.rc);
    /* One allocation between them: the window. */
    assert_int_equal(atomic_load(&ca.allocs) - allocs0, 1);
    assert_rbus_rc(publish_key(target, "a", 1), RBUS_DUPLICATE);
    assert_rbus_rc(publish_key(target, "b", 1), RBUS_DUPLICATE);
    rbus_destroy(bus);
    rbus__trap_reset();
    rbus_test_alloc_assert_all_returned(&ca);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parked_publisher_holds_nobody_back),
        cmocka_unit_test(window_cycles_around_parked_publisher),
        cmocka_unit_test(crowded_window_says_enobufs),
        cmocka_unit_test(racing_first_publishers_build_one_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
