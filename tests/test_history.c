/*
 * Retained history and replay: a topic keeps its newest messages;
 * rbus_topic_last reads the newest; a late subscription gets the retained
 * ones first, in sequence order, then everything live, each message once,
 * an unbroken run from each publisher even while publishers run; replay
 * takes at most the capacity and counts the rest; bad input changes
 * nothing; a retained topic allocates nothing per message in steady state.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "harness.h"

static rbus_sub *replay_sub(rbus *bus, const char *pattern, uint32_t replay, uint32_t cap,
                            rbus_overflow policy)
{
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = cap;
    o.overflow = policy;
    o.replay = replay;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, pattern, &o, &s));
    return s;
}

static void publish_u64(rbus_topic *t, uint64_t v)
{
    assert_rbus_ok(rbus_publish(t, &v, sizeof v));
}

static uint64_t msg_u64(const rbus_msg *m)
{
    uint64_t v;
    assert_int_equal(rbus_msg_size(m), sizeof v);
    memcpy(&v, rbus_msg_data(m), sizeof v);
    return v;
}

/* Receives one message (it must be there) and checks its topic and seq. */
static void expect(rbus_sub *s, const char *topic, uint64_t seq)
{
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_string_equal(rbus_msg_topic(m), topic);
    assert_int_equal(rbus_msg_seq(m), seq);
    assert_int_equal(msg_u64(m), seq); /* the tests publish their seq */
    rbus_msg_release(m);
}

static void expect_empty(rbus_sub *s)
{
    rbus_msg *m;
    assert_rbus_rc(rbus_recv(s, &m, 0), -EAGAIN);
}

static void last_value(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t = rbus_test_open_retained(bus, "config.db", 1);
    rbus_msg *m = (rbus_msg *)&m; /* not NULL: the failure must clear it */
    assert_rbus_rc(rbus_topic_last(t, &m), -ENOENT);
    assert_null(m);
    for (uint64_t i = 1; i <= 3; i++)
        publish_u64(t, i);
    assert_rbus_ok(rbus_topic_last(t, &m));
    assert_int_equal(msg_u64(m), 3);
    assert_int_equal(rbus_msg_seq(m), 3);
    rbus_bus_stats bs;
    assert_rbus_ok(rbus_bus_stats_get(bus, &bs));
    assert_int_equal(bs.held, 1);
    rbus_msg_release(m);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.retain, 1);
    assert_int_equal(ts.retained, 1);
    /* A late subscriber asking for more gets only what is kept: one. */
    rbus_sub *s = replay_sub(bus, "config.>", 5, 16, RBUS_BLOCK);
    expect(s, "config.db", 3);
    expect_empty(s);
    publish_u64(t, 4);
    expect(s, "config.db", 4);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.replayed, 1);
    assert_int_equal(st.replay_skipped, 0);
    assert_int_equal(st.offered, 2);
    rbus_test_check_accounting(&st);
    /* A topic without history has no last value. */
    rbus_topic *plain;
    assert_rbus_ok(rbus_topic_open(bus, "config.plain", &plain));
    assert_rbus_rc(rbus_topic_last(plain, &m), -EINVAL);
    assert_non_null(strstr(rbus_last_error_detail(), "keeps no history"));
    assert_rbus_ok(rbus_topic_stats_get(plain, &ts));
    assert_int_equal(ts.retain, 0);
    assert_int_equal(ts.retained, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* The newest `replay` first, in order, then live; older subscribers are
 * not touched; a subscription without replay gets only live messages. */
static void replay_then_live(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t = rbus_test_open_retained(bus, "prices.eur", 8);
    rbus_sub *early = replay_sub(bus, "prices.*", 0, 64, RBUS_BLOCK);
    for (uint64_t i = 1; i <= 10; i++)
        publish_u64(t, i);
    rbus_sub *late = replay_sub(bus, "prices.*", 5, 64, RBUS_BLOCK);
    rbus_sub *none = replay_sub(bus, "prices.*", 0, 64, RBUS_BLOCK);
    publish_u64(t, 11);
    for (uint64_t i = 6; i <= 11; i++)
        expect(late, "prices.eur", i);
    expect_empty(late);
    for (uint64_t i = 1; i <= 11; i++)
        expect(early, "prices.eur", i);
    expect(none, "prices.eur", 11);
    expect_empty(none);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(late, &st));
    assert_int_equal(st.replayed, 5);
    assert_int_equal(st.high_water, 1); /* the replay waits in a queue of its own */
    rbus_test_check_accounting(&st);
    /* Asking for more than is kept gets what is kept. */
    rbus_sub *all = replay_sub(bus, "prices.eur", 100, 64, RBUS_BLOCK);
    for (uint64_t i = 4; i <= 11; i++)
        expect(all, "prices.eur", i);
    expect_empty(all);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.retained, 8);
    assert_int_equal(ts.published, 11);
    rbus_sub *subs[] = {early, late, none, all};
    for (size_t i = 0; i < 4; i++)
        assert_rbus_ok(rbus_unsubscribe(subs[i]));
    rbus_destroy(bus);
}

/* Replay takes at most the capacity: the newest, the rest counted. It
 * waits in a queue of its own, taken first, so the ring is free for what
 * is published next. */
static void replay_bounded_by_capacity(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t = rbus_test_open_retained(bus, "orders.book", 16);
    for (uint64_t i = 1; i <= 10; i++)
        publish_u64(t, i);
    rbus_sub *s = replay_sub(bus, "orders.book", 16, 4, RBUS_DROP_NEWEST);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.capacity, 4);
    assert_int_equal(st.replayed, 4);
    assert_int_equal(st.replay_skipped, 6);
    assert_int_equal(st.depth, 4);
    rbus_test_check_accounting(&st);
    for (uint64_t i = 11; i <= 15; i++)
        publish_u64(t, i); /* four fit the ring; the fifth is dropped */
    for (uint64_t i = 7; i <= 14; i++)
        expect(s, "orders.book", i);
    expect_empty(s);
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.dropped_newest, 1);
    rbus_test_check_accounting(&st);
    /* A byte bound: retained messages of 40000 bytes, a bound that holds
     * one; the replay keeps the newest run that fits (an older message
     * after a gap would break the run) and counts the rest. */
    rbus_topic *big = rbus_test_open_retained(bus, "orders.big", 4);
    static unsigned char blob[40000];
    for (int i = 0; i < 3; i++) {
        memset(blob, 'a' + i, sizeof blob);
        assert_rbus_ok(rbus_publish(big, blob, sizeof blob));
    }
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.replay = 3;
    o.max_bytes = 65536; /* the default max_payload */
    o.overflow = RBUS_DROP_NEWEST;
    rbus_sub *b;
    assert_rbus_ok(rbus_subscribe(bus, "orders.big", &o, &b));
    assert_rbus_ok(rbus_sub_stats_get(b, &st));
    assert_int_equal(st.replayed, 1);
    assert_int_equal(st.replay_skipped, 2);
    assert_int_equal(st.bytes, sizeof blob);
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(b, &m, 0));
    assert_int_equal(rbus_msg_seq(m), 3);
    assert_int_equal(((const unsigned char *)rbus_msg_data(m))[0], 'c');
    rbus_msg_release(m);
    assert_rbus_ok(rbus_unsubscribe(b));
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* A pattern over two topics: the newest of each, merged in the order they
 * were published, each topic in sequence order. */
static void replay_across_topics(void **state)
{
    (void)state;
    rbus *bus;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.retain = 4; /* the bus default: both topics keep 4 */
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *a, *b;
    assert_rbus_ok(rbus_topic_open(bus, "fx.a", &a));
    assert_rbus_ok(rbus_topic_open(bus, "fx.b", &b));
    for (uint64_t i = 1; i <= 6; i++) {
        publish_u64(a, i);
        rbus_test_sleep_us(50); /* distinct acceptance times */
        publish_u64(b, i);
        rbus_test_sleep_us(50);
    }
    rbus_sub *s = replay_sub(bus, "fx.*", 2, 64, RBUS_BLOCK);
    expect(s, "fx.a", 5);
    expect(s, "fx.b", 5);
    expect(s, "fx.a", 6);
    expect(s, "fx.b", 6);
    expect_empty(s);
    /* Capacity 2 (the smallest ring): the newest two across both. */
    rbus_sub *two = replay_sub(bus, "fx.*", 4, 2, RBUS_DROP_NEWEST);
    expect(two, "fx.a", 6);
    expect(two, "fx.b", 6);
    expect_empty(two);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(two, &st));
    assert_int_equal(st.replayed, 2);
    assert_int_equal(st.replay_skipped, 6);
    /* Prometheus: the history and replay families, only where they apply. */
    char text[16384];
    assert_true(rbus_stats_prometheus(bus, text, sizeof text) > 0);
    assert_non_null(strstr(text, "ringbus_topic_retain{topic=\"fx.a\"} 4\n"));
    assert_non_null(strstr(text, "ringbus_topic_retained{topic=\"fx.b\"} 4\n"));
    assert_non_null(strstr(text, "# TYPE ringbus_sub_replayed_total counter\n"));
    assert_non_null(strstr(text, "# TYPE ringbus_sub_replay_skipped_total counter\n"));
    const char *v = rbus_test_prom_sample(text, "ringbus_sub_replay_skipped_total", two);
    assert_non_null(v);
    assert_int_equal(strtoull(v, NULL, 10), 6);
    assert_rbus_ok(rbus_unsubscribe(two));
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* Every drop-newest subscription full: the publish still reaches the
 * history (the overload fast path, which builds no message, is not taken). */
static void retained_when_refused(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t = rbus_test_open_retained(bus, "health.db", 2);
    rbus_sub *s = replay_sub(bus, "health.db", 0, 2, RBUS_DROP_NEWEST);
    for (uint64_t i = 1; i <= 5; i++)
        publish_u64(t, i);
    rbus_msg *m;
    assert_rbus_ok(rbus_topic_last(t, &m));
    assert_int_equal(rbus_msg_seq(m), 5);
    rbus_msg_release(m);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.dropped_newest, 3);
    rbus_test_check_accounting(&st);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void bad_input(void **state)
{
    (void)state;
    rbus *bus;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.retain = RBUS_MAX_RETAIN + 1;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    assert_non_null(strstr(rbus_last_error_detail(), "RBUS_MAX_RETAIN"));
    assert_rbus_ok(rbus_create(&bus, NULL));
    /* Replay on a bus where nothing retains: refused, nothing made. */
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.replay = 1;
    rbus_sub *s = (rbus_sub *)&s;
    assert_rbus_rc(rbus_subscribe(bus, ">", &o, &s), -EINVAL);
    assert_null(s);
    assert_non_null(strstr(rbus_last_error_detail(), "without retained history"));
    rbus_bus_stats bs;
    assert_rbus_ok(rbus_bus_stats_get(bus, &bs));
    assert_int_equal(bs.subscriptions, 0);
    rbus_topic_opts to;
    rbus_topic_opts_init(&to);
    to.retain = RBUS_MAX_RETAIN + 1;
    rbus_topic *t = (rbus_topic *)&t;
    assert_rbus_rc(rbus_topic_open_ex(bus, "x.y", &to, &t), -EINVAL);
    assert_null(t);
    assert_rbus_ok(rbus_bus_stats_get(bus, &bs));
    assert_int_equal(bs.topics, 0);
    /* A history is set once: another size is refused, and changes nothing
     * (not even the rate limit asked for with it); the same one is fine,
     * and so is none asked. */
    to.retain = 4;
    assert_rbus_ok(rbus_topic_open_ex(bus, "x.y", &to, &t));
    to.retain = 8;
    to.rate_per_s = 10;
    to.rate_burst = 1;
    rbus_topic *again;
    assert_rbus_rc(rbus_topic_open_ex(bus, "x.y", &to, &again), -EINVAL);
    assert_non_null(strstr(rbus_last_error_detail(), "retains 4 messages already"));
    for (int i = 0; i < 5; i++)
        assert_rbus_ok(rbus_publish(t, "v", 1)); /* no limit was set */
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.retain, 4);
    assert_int_equal(ts.rate_limited, 0);
    to.retain = 4;
    to.rate_per_s = 0;
    to.rate_burst = 0;
    assert_rbus_ok(rbus_topic_open_ex(bus, "x.y", &to, &again));
    assert_ptr_equal(again, t);
    assert_rbus_ok(rbus_topic_open(bus, "x.y", &again));
    /* An existing topic without history gets one. */
    rbus_topic *later;
    assert_rbus_ok(rbus_topic_open(bus, "x.later", &later));
    assert_rbus_ok(rbus_topic_open_ex(bus, "x.later", &to, &again));
    assert_rbus_ok(rbus_publish(later, "w", 1));
    rbus_msg *m;
    assert_rbus_ok(rbus_topic_last(later, &m));
    rbus_msg_release(m);
    /* Replay above the maximum; replay now allowed on this bus. */
    o.replay = RBUS_MAX_RETAIN + 1;
    assert_rbus_rc(rbus_subscribe(bus, ">", &o, &s), -EINVAL);
    o.replay = 2;
    assert_rbus_ok(rbus_subscribe(bus, "x.y", &o, &s));
    assert_rbus_ok(rbus_unsubscribe(s));
    /* rbus_topic_last's arguments. */
    assert_rbus_rc(rbus_topic_last(NULL, &m), -EINVAL);
    assert_null(m);
    assert_rbus_rc(rbus_topic_last(t, NULL), -EINVAL);
    rbus_destroy(bus);
}

/* Steady state on a retained topic allocates nothing per message, and
 * every retained message is given back at destroy. */
static void no_allocation_per_message(void **state)
{
    (void)state;
    struct rbus_test_alloc a;
    rbus_test_alloc_init(&a);
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &a.hooks;
    cfg.retain = 32;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "tick", &t));
    rbus_sub *s = replay_sub(bus, "tick", 8, 64, RBUS_DROP_OLDEST);
    rbus_msg *m;
    for (uint64_t i = 1; i <= 200; i++) { /* warm: history and ring full */
        publish_u64(t, i);
        if (i % 3 == 0 && rbus_recv(s, &m, 0) == 0)
            rbus_msg_release(m);
    }
    long long before = atomic_load(&a.allocs);
    for (uint64_t i = 201; i <= 2200; i++) {
        publish_u64(t, i);
        if (i % 3 == 0 && rbus_recv(s, &m, 0) == 0)
            rbus_msg_release(m);
        if (i % 100 == 0) {
            assert_rbus_ok(rbus_topic_last(t, &m));
            rbus_msg_release(m);
        }
    }
    assert_int_equal(atomic_load(&a.allocs) - before, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&a);
}

/* --------------------------------------------- handover under publishers */

#define HANDOVER_PUBS 3

struct handover {
    rbus *bus;
    rbus_topic *topic;
    uint64_t per_pub;
    atomic_int pubs_done;
    atomic_int subs_made, pubs_parked;
    int nsubs;
    rbus_sub *subs[16];
};

struct pub_ctx {
    struct handover *h;
    uint32_t id;
};

static void *pub_main(void *arg)
{
    struct pub_ctx *c = arg;
    for (uint64_t i = 0; i < c->h->per_pub; i++) {
        /* A quarter of the way, until half the subscriptions exist:
         * those are made while every publisher is mid-run and parked,
         * so each gets a replay and then live messages, whatever the
         * machine's speed. The other half race the running publishers. */
        if (i == c->h->per_pub / 4) {
            atomic_fetch_add(&c->h->pubs_parked, 1);
            while (atomic_load(&c->h->subs_made) < c->h->nsubs / 2)
                rbus_test_sleep_us(50);
        }
        struct rbus_test_payload p = {.pub = c->id, .topic = 0, .counter = i};
        int rc = rbus_publish(c->h->topic, &p, sizeof p);
        if (rc != 0)
            rbus_test_report("publisher %u: publish %llu: %d", c->id, (unsigned long long)i, rc);
    }
    atomic_fetch_add(&c->h->pubs_done, 1);
    return NULL;
}

struct sub_ctx {
    struct handover *h;
    int first; /* this thread makes subscriptions first, first + 2, ... */
};

static void *subscriber_main(void *arg)
{
    struct sub_ctx *c = arg;
    struct handover *h = c->h;
    /* Two threads racing: the first half while the publishers are parked
     * a quarter of the way, the rest while they run. */
    while (atomic_load(&h->pubs_parked) < HANDOVER_PUBS)
        rbus_test_sleep_us(20);
    for (int i = c->first; i < h->nsubs; i += 2) {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = 1u << 15;
        o.replay = 64;
        int rc = rbus_subscribe(h->bus, "state.>", &o, &h->subs[i]);
        if (rc != 0)
            rbus_test_report("subscribe %d: %d", i, rc);
        if (atomic_fetch_add(&h->subs_made, 1) >= h->nsubs / 2)
            rbus_test_sleep_us(100 + 100 * (unsigned)i);
    }
    return NULL;
}

/* Drains one subscription and checks: the replayed part in sequence
 * order; from each publisher an unbroken run that ends with its last
 * message; nothing twice; the accounting. */
static void handover_check(rbus_sub *s, uint64_t per_pub, uint64_t *replayed_total,
                           int *both)
{
    uint64_t next[HANDOVER_PUBS];
    bool seen[HANDOVER_PUBS] = {false};
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    *replayed_total += st.replayed;
    uint64_t got = 0, last_seq = 0;
    rbus_msg *m;
    while (rbus_recv(s, &m, 0) == 0) {
        struct rbus_test_payload p;
        assert_true(rbus_test_payload_get(m, &p));
        assert_true(p.pub < HANDOVER_PUBS);
        if (got < st.replayed) {
            assert_true(rbus_msg_seq(m) > last_seq);
            last_seq = rbus_msg_seq(m);
        }
        if (seen[p.pub] && p.counter != next[p.pub]) {
            print_error("publisher %u: got %llu after %llu (message %llu of the subscription, "
                        "%llu replayed)\n",
                        p.pub, (unsigned long long)p.counter, (unsigned long long)next[p.pub] - 1,
                        (unsigned long long)got, (unsigned long long)st.replayed);
            fail();
        }
        seen[p.pub] = true;
        next[p.pub] = p.counter + 1;
        got++;
        rbus_msg_release(m);
    }
    for (int p = 0; p < HANDOVER_PUBS; p++)
        if (seen[p])
            assert_int_equal(next[p], per_pub);
    *both += st.replayed > 0 && got > st.replayed; /* a handover happened here */
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.received, got);
    assert_int_equal(st.replay_skipped, 0);
    rbus_test_check_accounting(&st);
}

static void handover_under_publishers(uint32_t retain)
{
    struct handover h;
    memset(&h, 0, sizeof h);
    h.per_pub = rbus_test_scaled(10000, 300); /* all fit the capacity: 3 x 10000 < 2^15 */
    h.nsubs = 16;
    printf("handover: %d publishers x %llu messages, %d late subscriptions from 2 threads, "
           "retain %u\n",
           HANDOVER_PUBS, (unsigned long long)h.per_pub, h.nsubs, retain);
    assert_rbus_ok(rbus_create(&h.bus, NULL));
    h.topic = rbus_test_open_retained(h.bus, "state.x", retain);
    struct pub_ctx pc[HANDOVER_PUBS];
    struct rbus_test_threads *team = malloc(sizeof *team);
    assert_non_null(team);
    rbus_test_threads_init(team);
    for (uint32_t i = 0; i < HANDOVER_PUBS; i++) {
        pc[i] = (struct pub_ctx){.h = &h, .id = i};
        rbus_test_threads_add(team, pub_main, &pc[i]);
    }
    struct sub_ctx sc[2] = {{&h, 0}, {&h, 1}};
    for (int i = 0; i < 2; i++)
        rbus_test_threads_add(team, subscriber_main, &sc[i]);
    rbus_test_threads_start(team);
    rbus_test_threads_join(team);
    free(team);
    rbus_test_assert_no_thread_errors();
    uint64_t replayed = 0;
    int both = 0;
    for (int i = 0; i < h.nsubs; i++) {
        handover_check(h.subs[i], h.per_pub, &replayed, &both);
        assert_rbus_ok(rbus_unsubscribe(h.subs[i]));
    }
    /* At least the subscriptions made while the publishers were parked
     * got a replay and then live messages: a test that never saw a
     * handover cannot pass. */
    printf("handover: %d of %d subscriptions got a replay and then live messages\n", both,
           h.nsubs);
    assert_true(replayed > 0);
    assert_true(both >= h.nsubs / 2);
    rbus_destroy(h.bus);
}

static void handover_retain_64(void **state)
{
    (void)state;
    handover_under_publishers(64);
}

/* A small history: evictions race every collection. */
static void handover_retain_4(void **state)
{
    (void)state;
    handover_under_publishers(4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(last_value),
        cmocka_unit_test(replay_then_live),
        cmocka_unit_test(replay_bounded_by_capacity),
        cmocka_unit_test(replay_across_topics),
        cmocka_unit_test(retained_when_refused),
        cmocka_unit_test(bad_input),
        cmocka_unit_test(no_allocation_per_message),
        cmocka_unit_test(handover_retain_64),
        cmocka_unit_test(handover_retain_4),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
