/*
 * rbus_publish_batch: a batch is the same messages, offers and counts as
 * one publish per payload, in order on every subscription, under each
 * policy; one acceptance time per chunk and consecutive sequence numbers;
 * block waits bounded as a whole; topics with a rate limit or a history
 * publish one at a time; bad input changes nothing; and a stress run of
 * batch publishers against competing receivers loses nothing and keeps
 * every publisher's order.
 */
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "harness.h"

#define MAXB 300

/* count payloads of 8 bytes, payload i holding first + i. */
struct batch {
    uint64_t v[MAXB];
    rbus_payload p[MAXB];
};

static void batch_fill(struct batch *b, size_t count, uint64_t first)
{
    assert_true(count <= MAXB);
    for (size_t i = 0; i < count; i++) {
        b->v[i] = first + i;
        b->p[i] = (rbus_payload){&b->v[i], sizeof b->v[i]};
    }
}

static uint64_t value_of(const rbus_msg *m)
{
    uint64_t v;
    assert_int_equal(rbus_msg_size(m), sizeof v);
    memcpy(&v, rbus_msg_data(m), sizeof v);
    return v;
}

/* Takes everything queued on s; checks the values are first, first + 1, ...
 * and returns how many. */
static uint64_t drain_from(rbus_sub *s, uint64_t first)
{
    uint64_t n = 0;
    rbus_msg *m;
    while (rbus_recv(s, &m, 0) == 0) {
        assert_int_equal(value_of(m), first + n);
        rbus_msg_release(m);
        n++;
    }
    return n;
}

static void stats_of(rbus_sub *s, rbus_sub_stats *st)
{
    assert_rbus_ok(rbus_sub_stats_get(s, st));
    rbus_test_check_accounting(st);
}

static void every_message_in_order_with_one_time_per_chunk(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "b.x");
    rbus_sub *a = rbus_test_subscribe(bus, "b.x", 1024, RBUS_BLOCK, 0);
    rbus_sub *b = rbus_test_subscribe(bus, "b.*", 1024, RBUS_DROP_NEWEST, 0);
    static struct batch bt;
    batch_fill(&bt, 200, 1000);
    rbus_pub_result res;
    assert_int_equal(rbus_publish_batch(t, bt.p, 200, NULL, &res), 200);
    assert_int_equal(res.matched, 400);
    assert_int_equal(res.queued, 400);
    assert_int_equal(res.dropped, 0);
    rbus_msg *m;
    uint64_t last_seq = 0, time0 = 0;
    for (uint64_t i = 0; i < 200; i++) {
        assert_rbus_ok(rbus_recv(a, &m, 0));
        assert_int_equal(value_of(m), 1000 + i);
        assert_int_equal(rbus_msg_seq(m), last_seq + 1); /* consecutive */
        last_seq = rbus_msg_seq(m);
        /* Chunks of 64 share their acceptance time. */
        if (i % 64 == 0)
            time0 = rbus_msg_time_ns(m);
        assert_int_equal(rbus_msg_time_ns(m), time0);
        rbus_msg_release(m);
    }
    assert_int_equal(drain_from(b, 1000), 200);
    rbus_sub_stats st;
    stats_of(a, &st);
    assert_int_equal(st.offered, 200);
    assert_int_equal(st.received, 200);
    stats_of(b, &st);
    assert_int_equal(st.offered, 200);
    /* Interleaved with single publishes, in order. */
    assert_rbus_ok(rbus_publish(t, "x", 1));
    batch_fill(&bt, 3, 7);
    assert_int_equal(rbus_publish_batch(t, bt.p, 3, NULL, NULL), 3);
    assert_rbus_ok(rbus_recv(a, &m, 0));
    assert_int_equal(rbus_msg_size(m), 1);
    rbus_msg_release(m);
    assert_int_equal(drain_from(a, 7), 3);
    rbus_destroy(bus);
}

/* Options apply to every message; no subscription at all still accepts. */
static void options_and_no_subscription(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "b.opts");
    static struct batch bt;
    batch_fill(&bt, 70, 0);
    rbus_pub_result res;
    assert_int_equal(rbus_publish_batch(t, bt.p, 70, NULL, &res), 70);
    assert_int_equal(res.matched, 0);
    rbus_sub *s = rbus_test_subscribe(bus, "b.opts", 128, RBUS_BLOCK, 0);
    rbus_header h = {"tenant", "acme", 4};
    rbus_pub_opts o = {
        .order_key = "k1", .order_key_len = 2, .origin = 9, .headers = &h, .header_count = 1};
    batch_fill(&bt, 70, 500);
    assert_int_equal(rbus_publish_batch(t, bt.p, 70, &o, &res), 70);
    for (int i = 0; i < 70; i++) {
        rbus_msg *m;
        assert_rbus_ok(rbus_recv(s, &m, 0));
        assert_int_equal(value_of(m), 500 + (uint64_t)i);
        assert_int_equal(rbus_msg_seq(m), 71 + (uint64_t)i); /* the first 70 took 1..70 */
        size_t len;
        const void *k = rbus_msg_order_key(m, &len);
        assert_int_equal(len, 2);
        assert_memory_equal(k, "k1", 2);
        assert_int_equal(rbus_msg_origin(m), 9);
        const void *v;
        assert_rbus_ok(rbus_msg_header(m, "tenant", &v, &len));
        assert_int_equal(len, 4);
        rbus_msg_release(m);
    }
    /* Zero-length payloads, and count 0. */
    rbus_payload empty[3] = {{NULL, 0}, {"", 0}, {NULL, 0}};
    assert_int_equal(rbus_publish_batch(t, empty, 3, NULL, NULL), 3);
    assert_int_equal(rbus_publish_batch(t, empty, 0, NULL, &res), 0);
    assert_int_equal(res.matched, 0);
    assert_int_equal(rbus_publish_batch(t, NULL, 0, NULL, NULL), 0);
    rbus_sub_stats st;
    stats_of(s, &st);
    assert_int_equal(st.depth, 3);
    rbus_destroy(bus);
}

static void bad_input_changes_nothing(void **state)
{
    (void)state;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_payload = 64;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "b.bad", &t));
    rbus_sub *s = rbus_test_subscribe(bus, "b.bad", 64, RBUS_BLOCK, 0);
    static struct batch bt;
    batch_fill(&bt, 10, 0);
    rbus_pub_result res;
    memset(&res, 0xff, sizeof res);
    assert_rbus_rc(rbus_publish_batch(NULL, bt.p, 10, NULL, &res), -EINVAL);
    assert_int_equal(res.matched, 0); /* written even then */
    assert_rbus_rc(rbus_publish_batch(t, NULL, 1, NULL, NULL), -EINVAL);
    assert_rbus_rc(rbus_publish_batch(t, bt.p, (size_t)INT_MAX + 1, NULL, NULL), -EINVAL);
    bt.p[5].data = NULL;
    assert_rbus_rc(rbus_publish_batch(t, bt.p, 10, NULL, NULL), -EINVAL);
    assert_non_null(strstr(rbus_last_error_detail(), "msgs[5]"));
    assert_non_null(strstr(rbus_last_error_detail(), "rbus_publish_batch"));
    batch_fill(&bt, 10, 0);
    rbus_pub_opts key = {.key = "k", .key_len = 1};
    assert_rbus_rc(rbus_publish_batch(t, bt.p, 10, &key, NULL), -EINVAL);
    rbus_pub_opts flags = {.flags = RBUS_PUB_ALL_OR_NONE};
    assert_rbus_rc(rbus_publish_batch(t, bt.p, 10, &flags, NULL), -EINVAL);
    rbus_pub_opts okey = {.order_key = NULL, .order_key_len = 3};
    assert_rbus_rc(rbus_publish_batch(t, bt.p, 10, &okey, NULL), -EINVAL);
    rbus_pub_opts hdr = {.headers = NULL, .header_count = 1};
    assert_rbus_rc(rbus_publish_batch(t, bt.p, 10, &hdr, NULL), -EINVAL);
    static char big[65];
    bt.p[9] = (rbus_payload){big, sizeof big};
    assert_rbus_rc(rbus_publish_batch(t, bt.p, 10, NULL, NULL), -EMSGSIZE);
    rbus_sub_stats st;
    stats_of(s, &st);
    assert_int_equal(st.offered, 0);
    assert_rbus_ok(rbus_publish(t, "x", 1));
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_seq(m), 1); /* no sequence number was taken */
    rbus_msg_release(m);
    rbus_close(bus);
    batch_fill(&bt, 10, 0);
    assert_rbus_rc(rbus_publish_batch(t, bt.p, 10, NULL, NULL), -ESHUTDOWN);
    rbus_destroy(bus);
}

/* Each policy, as that many single publishes into a small queue. */
static void policies_as_single_publishes(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "b.pol");
    uint32_t cap;
    rbus_sub *newest = rbus_test_subscribe_checked(bus, "b.pol", 16, RBUS_DROP_NEWEST, 0, &cap);
    assert_int_equal(cap, 16);
    rbus_sub *oldest = rbus_test_subscribe(bus, "b.pol", 16, RBUS_DROP_OLDEST, 0);
    rbus_sub *block = rbus_test_subscribe(bus, "b.pol", 16, RBUS_BLOCK, 0);
    static struct batch bt;
    batch_fill(&bt, 100, 0);
    rbus_pub_result res;
    rbus_pub_opts nowait = {.timeout_ns = -1};
    assert_int_equal(rbus_publish_batch(t, bt.p, 100, &nowait, &res), 100);
    assert_int_equal(res.matched, 300);
    assert_int_equal(res.queued, 16 + 100 + 16);
    assert_int_equal(res.dropped, 84 + 84);
    assert_int_equal(res.evicted, 84);
    assert_int_equal(res.at_high_watermark, 1);
    assert_int_equal(res.high_watermark_sub, rbus_sub_id(block));
    assert_int_equal(drain_from(newest, 0), 16);  /* the first 16 */
    assert_int_equal(drain_from(oldest, 84), 16); /* the last 16 */
    assert_int_equal(drain_from(block, 0), 16);
    rbus_sub_stats st;
    stats_of(newest, &st);
    assert_int_equal(st.dropped_newest, 84);
    stats_of(oldest, &st);
    assert_int_equal(st.dropped_oldest, 84);
    stats_of(block, &st);
    assert_int_equal(st.dropped_timeout, 84);
    assert_int_equal(st.offered, 100);
    rbus_destroy(bus);
}

/* A full RBUS_BLOCK subscription's timeout bounds the batch's whole wait
 * there, not each message's. */
static void block_timeout_bounds_the_whole_wait(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "b.wait");
    rbus_sub *s = rbus_test_subscribe(bus, "b.wait", 16, RBUS_BLOCK, 20 * 1000 * 1000);
    static struct batch bt;
    batch_fill(&bt, 100, 0);
    rbus_pub_result res;
    uint64_t t0 = rbus_test_now_ns();
    assert_int_equal(rbus_publish_batch(t, bt.p, 100, NULL, &res), 100);
    uint64_t took = rbus_test_now_ns() - t0;
    assert_true(took >= 20 * 1000 * 1000);
    /* Two chunks: 36 of the first wait 20 ms, and the second's 36 too. */
    assert_true(took < 2000ull * 1000 * 1000);
    assert_int_equal(res.queued, 16);
    assert_int_equal(res.dropped, 84);
    rbus_sub_stats st;
    stats_of(s, &st);
    assert_int_equal(st.dropped_timeout, 84);
    assert_int_equal(st.publisher_waits, 2);
    assert_int_equal(drain_from(s, 0), 16);
    rbus_destroy(bus);
}

struct reader {
    rbus_sub *sub;
    uint64_t want;
    uint64_t got;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    while (r->got < r->want) {
        rbus_msg *m[32];
        int n = rbus_recv_batch(r->sub, m, 32, 5ll * 1000 * 1000 * 1000);
        if (n < 0) {
            rbus_test_report("reader: %s", rbus_strerror(n));
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            if (value_of(m[i]) != r->got)
                rbus_test_report("reader: %" PRIu64 " where %" PRIu64 " was due", value_of(m[i]),
                                 r->got);
            r->got++;
            rbus_msg_release(m[i]);
        }
    }
    return NULL;
}

/* A batch far larger than the queue, with a receiver: all of it, in
 * order, through waits for room (with a byte bound too). */
static void block_waits_for_room_in_order(void **state)
{
    (void)state;
    for (int bytes = 0; bytes < 2; bytes++) {
        rbus_config cfg;
        rbus_config_init(&cfg);
        cfg.max_payload = 16; /* a byte bound may not be below it */
        rbus *bus;
        assert_rbus_ok(rbus_create(&bus, &cfg));
        rbus_topic *t;
        assert_rbus_ok(rbus_topic_open(bus, "b.room", &t));
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = 32;
        o.overflow = RBUS_BLOCK;
        if (bytes)
            o.max_bytes = 100; /* 12 messages of 8 bytes */
        rbus_sub *s;
        assert_rbus_ok(rbus_subscribe(bus, "b.room", &o, &s));
        uint64_t rounds = rbus_test_scaled(200, 10);
        struct reader r = {.sub = s, .want = rounds * MAXB};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, reader_main, &r), 0);
        static struct batch bt;
        for (uint64_t i = 0; i < rounds; i++) {
            batch_fill(&bt, MAXB, i * MAXB);
            rbus_pub_result res;
            assert_int_equal(rbus_publish_batch(t, bt.p, MAXB, NULL, &res), MAXB);
            assert_int_equal(res.queued, MAXB);
        }
        assert_int_equal(pthread_join(th, NULL), 0);
        rbus_test_assert_no_thread_errors();
        assert_int_equal(r.got, rounds * MAXB);
        rbus_sub_stats st;
        stats_of(s, &st);
        assert_int_equal(st.received, rounds * MAXB);
        assert_true(st.max_bytes == 0 || st.bytes == 0);
        rbus_destroy(bus);
    }
}

/* A rate limit: each message takes its token, and the batch stops at the
 * limit with what was accepted; a history keeps each message. */
static void featured_topics_one_at_a_time(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic_opts to;
    rbus_topic_opts_init(&to);
    to.rate_per_s = 0.001;
    to.rate_burst = 5;
    rbus_topic *lim;
    assert_rbus_ok(rbus_topic_open_ex(bus, "b.lim", &to, &lim));
    rbus_sub *s = rbus_test_subscribe(bus, "b.lim", 64, RBUS_BLOCK, 0);
    static struct batch bt;
    batch_fill(&bt, 10, 0);
    rbus_pub_result res;
    assert_int_equal(rbus_publish_batch(lim, bt.p, 10, NULL, &res), 5);
    assert_int_equal(res.queued, 5);
    assert_true(res.retry_after_ns > 0);
    assert_rbus_rc(rbus_publish_batch(lim, bt.p, 10, NULL, &res), -EAGAIN);
    assert_true(res.retry_after_ns > 0);
    assert_int_equal(drain_from(s, 0), 5);

    rbus_topic *kept = rbus_test_open_retained(bus, "b.kept", 50);
    batch_fill(&bt, 100, 0);
    assert_int_equal(rbus_publish_batch(kept, bt.p, 100, NULL, NULL), 100);
    rbus_msg *last;
    assert_rbus_ok(rbus_topic_last(kept, &last));
    assert_int_equal(value_of(last), 99);
    rbus_msg_release(last);
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 64;
    o.replay = 50;
    rbus_sub *late;
    assert_rbus_ok(rbus_subscribe(bus, "b.kept", &o, &late));
    assert_int_equal(drain_from(late, 50), 50);
    rbus_destroy(bus);
}

/* ---------------------------------------------------------------- stress */

#define NPUB 2

struct bpub {
    rbus_topic *topic;
    uint32_t id;
    uint64_t rounds;
};

static void *bpub_main(void *arg)
{
    struct bpub *p = arg;
    struct rbus_test_payload pl[MAXB];
    rbus_payload v[MAXB];
    uint64_t c = 0;
    for (uint64_t r = 0; r < p->rounds; r++) {
        size_t n = 1 + (size_t)(r * 7919 % MAXB); /* lengths that vary */
        for (size_t i = 0; i < n; i++) {
            pl[i] = (struct rbus_test_payload){.pub = p->id, .counter = c + i};
            v[i] = (rbus_payload){&pl[i], sizeof pl[i]};
        }
        int rc = rbus_publish_batch(p->topic, v, n, NULL, NULL);
        if (rc != (int)n) {
            rbus_test_report("publisher %" PRIu32 ": %d", p->id, rc);
            return NULL;
        }
        c += n;
    }
    p->rounds = c; /* messages published */
    return NULL;
}

struct brx {
    rbus_sub *sub;
    atomic_int *stop;
    uint64_t next[NPUB];
    uint64_t got;
    bool strict; /* the only receiver, and nothing dropped: no gaps */
};

static void *brx_main(void *arg)
{
    struct brx *r = arg;
    for (;;) {
        rbus_msg *m[64];
        int n = rbus_recv_batch(r->sub, m, 64, 1000 * 1000);
        if (n == -ETIMEDOUT) {
            if (atomic_load(r->stop))
                return NULL;
            continue;
        }
        if (n < 0) {
            rbus_test_report("receiver: %s", rbus_strerror(n));
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            struct rbus_test_payload p;
            if (!rbus_test_payload_get(m[i], &p) || p.pub >= NPUB)
                rbus_test_report("receiver: a message not from a publisher");
            else if (r->strict ? p.counter != r->next[p.pub] : p.counter < r->next[p.pub])
                rbus_test_report("receiver: publisher %" PRIu32 " counter %" PRIu64
                                 " after %" PRIu64,
                                 p.pub, p.counter, r->next[p.pub]);
            else
                r->next[p.pub] = p.counter + 1;
            rbus_msg_release(m[i]);
        }
        r->got += (uint64_t)n;
    }
}

/* Two batch publishers; a block subscription with one receiver (all, in
 * order), a drop-oldest and a drop-newest one with a receiver each (in
 * order), and exact accounting everywhere. */
static void stress_batches_against_receivers(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "b.stress");
    rbus_sub *subs[3] = {rbus_test_subscribe(bus, "b.stress", 64, RBUS_BLOCK, 0),
                         rbus_test_subscribe(bus, "b.>", 64, RBUS_DROP_OLDEST, 0),
                         rbus_test_subscribe(bus, "b.*", 64, RBUS_DROP_NEWEST, 0)};
    uint64_t rounds = rbus_test_scaled(2000, 20);
    print_message("stress: %d publishers x %" PRIu64 " batches of 1..%d, 3 subscriptions\n", NPUB,
                  rounds, MAXB);
    atomic_int stop;
    atomic_init(&stop, 0);
    struct bpub pubs[NPUB];
    struct brx rx[3];
    struct rbus_test_threads team;
    rbus_test_threads_init(&team);
    for (int i = 0; i < 3; i++) {
        rx[i] = (struct brx){.sub = subs[i], .stop = &stop, .strict = i == 0};
        rbus_test_threads_add(&team, brx_main, &rx[i]);
    }
    struct rbus_test_threads pteam;
    rbus_test_threads_init(&pteam);
    for (uint32_t i = 0; i < NPUB; i++) {
        pubs[i] = (struct bpub){.topic = t, .id = i, .rounds = rounds};
        rbus_test_threads_add(&pteam, bpub_main, &pubs[i]);
    }
    rbus_test_threads_start(&team);
    rbus_test_threads_start(&pteam);
    rbus_test_threads_join(&pteam);
    atomic_store(&stop, 1);
    rbus_test_threads_join(&team);
    rbus_test_assert_no_thread_errors();
    uint64_t total = pubs[0].rounds + pubs[1].rounds;
    for (int i = 0; i < 3; i++) {
        rbus_sub_stats st;
        stats_of(subs[i], &st);
        assert_int_equal(st.offered, total);
        assert_int_equal(st.received, rx[i].got);
        if (i == 0) {
            assert_int_equal(rx[0].got, total);
            for (int p = 0; p < NPUB; p++)
                assert_int_equal(rx[0].next[p], pubs[p].rounds);
        }
    }
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_message_in_order_with_one_time_per_chunk),
        cmocka_unit_test(options_and_no_subscription),
        cmocka_unit_test(bad_input_changes_nothing),
        cmocka_unit_test(policies_as_single_publishes),
        cmocka_unit_test(block_timeout_bounds_the_whole_wait),
        cmocka_unit_test(block_waits_for_room_in_order),
        cmocka_unit_test(featured_topics_one_at_a_time),
        cmocka_unit_test(stress_batches_against_receivers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
