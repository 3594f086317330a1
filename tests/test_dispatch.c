/*
 * Dispatchers (rbus_dispatch_start in include/ringbus.h): worker counts, per-order-key order
 * without overlap, retries with backoff (checked as ordering, not timing),
 * dead letters with origin and attempts, max_in_hand backpressure, stop
 * under load loses nothing, and the error cases.
 *
 * Sizes scale with RBUS_STRESS_SCALE and are printed.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

static bool wait_until(bool (*cond)(void *), void *arg, int64_t timeout_ns)
{
    int64_t end = (int64_t)rbus_test_now_ns() + timeout_ns;
    while (!cond(arg)) {
        if ((int64_t)rbus_test_now_ns() > end)
            return false;
        rbus_test_sleep_us(200);
    }
    return true;
}

static rbus_sub *sub_block(rbus *bus, const char *pattern, uint32_t cap)
{
    return rbus_test_subscribe(bus, pattern, cap, RBUS_BLOCK, 0);
}

/* ------------------------------------------------- counts, 4 workers */

struct counts {
    _Atomic uint64_t calls;
    _Atomic uint8_t *seen; /* per message index */
    uint32_t n;
    _Atomic unsigned twice;
};

static int count_handler(const rbus_msg *m, void *arg)
{
    struct counts *c = arg;
    uint32_t idx;
    memcpy(&idx, rbus_msg_data(m), sizeof idx);
    if (idx >= c->n || atomic_fetch_add(&c->seen[idx], 1) != 0)
        atomic_fetch_add(&c->twice, 1);
    atomic_fetch_add(&c->calls, 1);
    return 0;
}

static bool handled_all(void *arg)
{
    struct counts *c = arg;
    return atomic_load(&c->calls) >= c->n;
}

static void four_workers_handle_every_message_once(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "work.items");
    rbus_sub *s = sub_block(bus, "work.*", 256);
    struct counts c = {.n = (uint32_t)rbus_test_scaled(200000, 5000)};
    c.seen = calloc(c.n, 1);
    assert_non_null(c.seen);
    printf("# dispatch: %u messages, 4 workers\n", c.n);
    rbus_dispatch_opts o;
    rbus_dispatch_opts_init(&o);
    o.threads = 4;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, count_handler, &c, &o));
    for (uint32_t i = 0; i < c.n; i++)
        assert_rbus_ok(rbus_publish(t, &i, sizeof i));
    assert_true(wait_until(handled_all, &c, INT64_C(60000000000)));
    assert_rbus_ok(rbus_dispatch_stop(d));
    assert_int_equal(atomic_load(&c.calls), c.n);
    assert_int_equal(atomic_load(&c.twice), 0);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.received, c.n);
    assert_int_equal(st.depth, 0);
    free((void *)c.seen);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* --------------------------------------------------- ordered by key */

#define NKEYS 8

struct ordered {
    _Atomic int running[NKEYS];
    uint32_t next[NKEYS]; /* written only by the key's current runner */
    _Atomic unsigned overlap, out_of_order, calls, concurrent, max_concurrent;
    uint32_t total;
};

static int ordered_handler(const rbus_msg *m, void *arg)
{
    struct ordered *o = arg;
    uint32_t v[2]; /* key, per-key sequence */
    memcpy(v, rbus_msg_data(m), sizeof v);
    unsigned now = atomic_fetch_add(&o->concurrent, 1) + 1;
    for (unsigned mx = atomic_load(&o->max_concurrent);
         now > mx && !atomic_compare_exchange_weak(&o->max_concurrent, &mx, now);)
        ;
    if (atomic_exchange(&o->running[v[0]], 1) != 0)
        atomic_fetch_add(&o->overlap, 1);
    if (o->next[v[0]] != v[1])
        atomic_fetch_add(&o->out_of_order, 1);
    o->next[v[0]] = v[1] + 1;
    if (v[1] % 64 == 0)
        rbus_test_sleep_us(300); /* let other keys' messages overlap this one */
    atomic_store(&o->running[v[0]], 0);
    atomic_fetch_sub(&o->concurrent, 1);
    atomic_fetch_add(&o->calls, 1);
    return 0;
}

static bool ordered_done(void *arg)
{
    struct ordered *o = arg;
    return atomic_load(&o->calls) >= o->total;
}

static void same_order_key_never_overlaps_and_keeps_order(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "orders.created");
    rbus_sub *s = sub_block(bus, "orders.>", 512);
    const uint32_t per_key = (uint32_t)rbus_test_scaled(20000, 500);
    struct ordered *o = calloc(1, sizeof *o);
    assert_non_null(o);
    o->total = per_key * NKEYS;
    printf("# ordered: %u keys x %u messages, 4 workers\n", NKEYS, per_key);
    rbus_dispatch_opts opts;
    rbus_dispatch_opts_init(&opts);
    opts.threads = 4;
    opts.ordered_by_key = true;
    opts.max_in_hand = 64;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, ordered_handler, o, &opts));
    uint32_t seq[NKEYS] = {0};
    uint64_t x = 88172645463325252u;
    for (uint32_t i = 0; i < o->total; i++) {
        uint32_t k;
        do {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            k = (uint32_t)(x % NKEYS);
        } while (seq[k] == per_key);
        uint32_t v[2] = {k, seq[k]++};
        char key[8];
        snprintf(key, sizeof key, "cust%u", k);
        rbus_pub_opts po;
        memset(&po, 0, sizeof po);
        po.order_key = key;
        po.order_key_len = strlen(key);
        assert_rbus_ok(rbus_publish_ex(t, v, sizeof v, &po, NULL));
    }
    assert_true(wait_until(ordered_done, o, INT64_C(120000000000)));
    assert_rbus_ok(rbus_dispatch_stop(d));
    printf("# ordered: max concurrent handlers %u\n", atomic_load(&o->max_concurrent));
    assert_int_equal(atomic_load(&o->overlap), 0);
    assert_int_equal(atomic_load(&o->out_of_order), 0);
    assert_true(atomic_load(&o->max_concurrent) >= 2); /* different keys ran in parallel */
    for (int k = 0; k < NKEYS; k++)
        assert_int_equal(o->next[k], per_key);
    free(o);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* ------------------------------------------------ retries, ordering */

struct retry_log {
    pthread_mutex_t lock;
    char events[64][16]; /* "A1" = message A, attempt 1, ... */
    int n;
};

static void log_event(struct retry_log *l, const rbus_msg *m)
{
    pthread_mutex_lock(&l->lock);
    if (l->n < 64)
        snprintf(l->events[l->n++], 16, "%.*s%u", (int)rbus_msg_size(m),
                 (const char *)rbus_msg_data(m), rbus_msg_attempt(m));
    pthread_mutex_unlock(&l->lock);
}

static int index_of(struct retry_log *l, const char *ev)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->events[i], ev))
            return i;
    return -1;
}

/* A fails on attempts 1 and 2 and succeeds on 3; everything else succeeds. */
static int fail_twice_handler(const rbus_msg *m, void *arg)
{
    log_event(arg, m);
    if (rbus_msg_size(m) == 1 && *(const char *)rbus_msg_data(m) == 'A')
        return rbus_msg_attempt(m) < 3 ? -1 : 0;
    return 0;
}

static bool four_handled(void *arg)
{
    rbus_dispatch_stats st;
    rbus_dispatch_stats_get(arg, &st);
    return st.handled >= 4;
}

static void fails_twice_then_succeeds_without_holding_up_others(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "jobs.run");
    rbus_sub *s = sub_block(bus, "jobs.run", 16);
    struct retry_log log = {.lock = PTHREAD_MUTEX_INITIALIZER};
    rbus_dispatch_opts opts;
    rbus_dispatch_opts_init(&opts);
    opts.threads = 1;
    opts.ordered_by_key = true;
    opts.max_attempts = 3;
    /* Full jitter: each delay is uniform in [0, 500 ms] then [0, 1 s], so
     * a single retry can come at once; both together come within the few
     * milliseconds B and D need (valgrind included) with odds of ~1e-4. */
    opts.backoff_initial_ns = 500000000;
    opts.backoff_max_ns = 1000000000;
    rbus_dispatcher *d;
    /* A and C share an order key; B has another; D none. Published before
     * the dispatcher starts, in the order A, B, C, D. */
    struct {
        const char *payload, *okey;
    } msgs[] = {{"A", "k1"}, {"B", "k2"}, {"C", "k1"}, {"D", NULL}};
    for (int i = 0; i < 4; i++) {
        rbus_pub_opts po;
        memset(&po, 0, sizeof po);
        po.order_key = msgs[i].okey;
        po.order_key_len = msgs[i].okey ? strlen(msgs[i].okey) : 0;
        assert_rbus_ok(rbus_publish_ex(t, msgs[i].payload, 1, &po, NULL));
    }
    assert_rbus_ok(rbus_dispatch_start(&d, s, fail_twice_handler, &log, &opts));
    assert_true(wait_until(four_handled, d, INT64_C(30000000000)));
    rbus_dispatch_stats st;
    assert_rbus_ok(rbus_dispatch_stats_get(d, &st));
    assert_rbus_ok(rbus_dispatch_stop(d));
    for (int i = 0; i < log.n; i++)
        printf("# event %d: %s\n", i, log.events[i]);
    assert_int_equal(log.n, 6); /* A1 A2 A3 B1 C1 D1 */
    /* A's attempts are numbered 1, 2, 3 and come in that order. */
    assert_true(index_of(&log, "A1") < index_of(&log, "A2"));
    assert_true(index_of(&log, "A2") < index_of(&log, "A3"));
    /* While A waits for its retries, B (other key) and D (no key) go on
     * (checked against A's last attempt: see the backoff above)... */
    assert_true(index_of(&log, "B1") < index_of(&log, "A3"));
    assert_true(index_of(&log, "D1") < index_of(&log, "A3"));
    /* ...but C (A's key) waits until A is done. */
    assert_true(index_of(&log, "A3") < index_of(&log, "C1"));
    assert_int_equal(st.handled, 4);
    assert_int_equal(st.failed_attempts, 2);
    assert_int_equal(st.retried, 2);
    assert_int_equal(st.dead_lettered, 0);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.in_hand, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* ------------------------------------------------------ dead letters */

static int always_fail(const rbus_msg *m, void *arg)
{
    (void)m;
    atomic_fetch_add((_Atomic unsigned *)arg, 1);
    return -1;
}

static bool dlq_full(void *arg)
{
    rbus_sub_stats st;
    rbus_sub_stats_get(arg, &st);
    return st.depth >= 40;
}

static void always_failing_messages_become_dead_letters(void **state)
{
    (void)state;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *tx, *ty;
    assert_rbus_ok(rbus_topic_open(bus, "pay.x", &tx));
    assert_rbus_ok(rbus_topic_open(bus, "pay.y", &ty));
    rbus_sub *s = sub_block(bus, "pay.*", 64);
    rbus_sub *dlq = sub_block(bus, "dead.pay", 64);
    _Atomic unsigned calls = 0;
    rbus_dispatch_opts opts;
    rbus_dispatch_opts_init(&opts);
    opts.threads = 2;
    opts.max_attempts = 3;
    opts.backoff_initial_ns = 1000;
    opts.backoff_max_ns = 100000;
    opts.dead_letter_topic = "dead.pay";
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, always_fail, &calls, &opts));
    /* 20 messages on each topic; the same idempotency key on both topics
     * (different messages), so their dead letters share a key: dead
     * letters are never deduplicated. */
    for (uint32_t i = 0; i < 40; i++) {
        char key[16], okey[16];
        snprintf(key, sizeof key, "id-%u", i / 2);
        snprintf(okey, sizeof okey, "o-%u", i % 3);
        rbus_pub_opts po;
        memset(&po, 0, sizeof po);
        po.key = key;
        po.key_len = strlen(key);
        po.order_key = okey;
        po.order_key_len = strlen(okey);
        po.origin = 7;
        assert_rbus_ok(rbus_publish_ex(i % 2 ? ty : tx, &i, sizeof i, &po, NULL));
    }
    assert_true(wait_until(dlq_full, dlq, INT64_C(30000000000)));
    assert_rbus_ok(rbus_dispatch_stop(d));
    uint8_t seen[40] = {0};
    for (int n = 0; n < 40; n++) {
        rbus_msg *m;
        assert_rbus_ok(rbus_recv(dlq, &m, 0));
        uint32_t i;
        assert_int_equal(rbus_msg_size(m), sizeof i);
        memcpy(&i, rbus_msg_data(m), sizeof i);
        assert_true(i < 40);
        seen[i]++;
        assert_string_equal(rbus_msg_origin_topic(m), i % 2 ? "pay.y" : "pay.x");
        assert_string_equal(rbus_msg_topic(m), "dead.pay");
        assert_int_equal(rbus_msg_attempt(m), 3);
        assert_int_equal(rbus_msg_origin(m), 7);
        char key[16], okey[16];
        snprintf(key, sizeof key, "id-%u", i / 2);
        snprintf(okey, sizeof okey, "o-%u", i % 3);
        size_t klen, olen;
        const void *k = rbus_msg_key(m, &klen);
        const void *ok = rbus_msg_order_key(m, &olen);
        assert_int_equal(klen, strlen(key));
        assert_memory_equal(k, key, klen);
        assert_int_equal(olen, strlen(okey));
        assert_memory_equal(ok, okey, olen);
        rbus_msg_release(m);
    }
    for (int i = 0; i < 40; i++)
        assert_int_equal(seen[i], 1);
    assert_int_equal(atomic_load(&calls), 120);
    rbus_sub_stats sst;
    assert_rbus_ok(rbus_sub_stats_get(dlq, &sst));
    assert_int_equal(sst.depth, 0);
    assert_rbus_ok(rbus_unsubscribe(dlq));
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* -------------------------------------------- max_in_hand backpressure */

struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool open;
    _Atomic unsigned calls;
};

static int gated_handler(const rbus_msg *m, void *arg)
{
    (void)m;
    struct gate *g = arg;
    pthread_mutex_lock(&g->lock);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
    atomic_fetch_add(&g->calls, 1);
    return 0;
}

struct hand_check {
    rbus_dispatcher *d;
    uint32_t want;
};

static bool in_hand_reached(void *arg)
{
    struct hand_check *h = arg;
    rbus_dispatch_stats st;
    rbus_dispatch_stats_get(h->d, &st);
    return st.in_hand >= h->want;
}

static bool gate_done(void *arg)
{
    return atomic_load(&((struct gate *)arg)->calls) >= 10;
}

static void max_in_hand_bounds_what_the_dispatcher_holds(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "slow.t");
    rbus_sub *s = sub_block(bus, "slow.t", 16);
    struct gate g = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    rbus_dispatch_opts opts;
    rbus_dispatch_opts_init(&opts);
    opts.threads = 2;
    opts.ordered_by_key = true;
    opts.max_in_hand = 3;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, gated_handler, &g, &opts));
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.order_key = "same";
    po.order_key_len = 4;
    for (uint32_t i = 0; i < 10; i++)
        assert_rbus_ok(rbus_publish_ex(t, &i, sizeof i, &po, NULL));
    /* One runs (blocked at the gate), two park behind its key; the rest stay
     * queued in the subscription. */
    struct hand_check h = {d, 3};
    assert_true(wait_until(in_hand_reached, &h, INT64_C(10000000000)));
    rbus_test_sleep_us(20000); /* would it take more? give it the chance */
    rbus_dispatch_stats st;
    assert_rbus_ok(rbus_dispatch_stats_get(d, &st));
    assert_int_equal(st.in_hand, 3);
    rbus_sub_stats sst;
    assert_rbus_ok(rbus_sub_stats_get(s, &sst));
    assert_int_equal(sst.depth, 7);
    pthread_mutex_lock(&g.lock);
    g.open = true;
    pthread_cond_broadcast(&g.cond);
    pthread_mutex_unlock(&g.lock);
    assert_true(wait_until(gate_done, &g, INT64_C(10000000000)));
    assert_rbus_ok(rbus_dispatch_stop(d));
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* ------------------------------------------------- stop under load */

struct flaky {
    _Atomic uint64_t handled;
    _Atomic uint64_t rng;
};

static int flaky_handler(const rbus_msg *m, void *arg)
{
    (void)m;
    struct flaky *f = arg;
    uint64_t x = atomic_fetch_add(&f->rng, UINT64_C(0x9e3779b97f4a7c15));
    x ^= x >> 31;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 29;
    if (x % 10 < 3)
        return -1; /* 30% of attempts fail */
    atomic_fetch_add(&f->handled, 1);
    return 0;
}

struct loader {
    rbus_topic *t;
    uint64_t published;
    _Atomic bool stop;
};

static void *load_main(void *arg)
{
    struct loader *l = arg;
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.timeout_ns = 1000000; /* never stuck behind the stopped dispatcher */
    while (!atomic_load(&l->stop)) {
        char okey[8];
        snprintf(okey, sizeof okey, "k%llu", (unsigned long long)(l->published % 5));
        po.order_key = okey;
        po.order_key_len = strlen(okey);
        rbus_pub_result r;
        if (rbus_publish_ex(l->t, &l->published, sizeof l->published, &po, &r) != 0)
            break;
        l->published++;
    }
    return NULL;
}

static void stop_under_load_loses_nothing(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "load.t");
    rbus_sub *s = sub_block(bus, "load.t", 1024);
    rbus_sub *dlq = sub_block(bus, "load.dead", 1u << 17);
    struct flaky f = {0};
    const int rounds = (int)rbus_test_scaled(6, 2);
    printf("# stop under load: %d start/stop rounds\n", rounds);
    struct loader l = {.t = t};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, load_main, &l), 0);
    for (int r = 0; r < rounds; r++) {
        rbus_dispatch_opts opts;
        rbus_dispatch_opts_init(&opts);
        opts.threads = 3;
        opts.ordered_by_key = r % 2 == 0;
        opts.max_attempts = 3;
        opts.backoff_initial_ns = 100000;
        opts.backoff_max_ns = 2000000;
        opts.dead_letter_topic = "load.dead";
        opts.max_in_hand = 64;
        rbus_dispatcher *d;
        assert_rbus_ok(rbus_dispatch_start(&d, s, flaky_handler, &f, &opts));
        rbus_test_sleep_us(30000);
        assert_rbus_ok(rbus_dispatch_stop(d));
    }
    atomic_store(&l.stop, true);
    pthread_join(th, NULL);
    rbus_sub_stats sst, dst;
    assert_rbus_ok(rbus_sub_stats_get(s, &sst));
    assert_rbus_ok(rbus_sub_stats_get(dlq, &dst));
    /* Every message the loader published is either still queued, or was
     * taken by a dispatcher and then handled or dead-lettered: nothing is
     * lost in the retry set or at stop. */
    printf("# stop under load: published %llu, handled %llu, dead letters %u, still queued %u, "
           "dropped at the source %llu\n",
           (unsigned long long)l.published, (unsigned long long)atomic_load(&f.handled),
           dst.depth, sst.depth, (unsigned long long)sst.dropped_timeout);
    assert_int_equal(sst.offered, l.published);
    assert_int_equal(sst.received, atomic_load(&f.handled) + dst.depth);
    assert_int_equal(sst.offered, sst.received + sst.depth + sst.dropped_timeout);
    assert_int_equal(dst.dropped_newest + dst.dropped_timeout, 0);
    assert_rbus_ok(rbus_unsubscribe(dlq));
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* ------------------------------- ordered keys with failures for good */

struct half {
    _Atomic int running[NKEYS];
    _Atomic unsigned overlap, calls;
    _Atomic uint32_t last_ok[NKEYS]; /* 1 + the last handled sequence */
    _Atomic unsigned out_of_order, handled;
};

/* Odd sequence numbers always fail (max_attempts 2, no dead-letter topic:
 * dropped); even ones succeed, and must do so in order per key. Messages
 * that fail for good are released and recycled while later messages of
 * their key wait: this is where a key's bytes must not go stale. */
static int half_handler(const rbus_msg *m, void *arg)
{
    struct half *h = arg;
    uint32_t v[2];
    memcpy(v, rbus_msg_data(m), sizeof v);
    if (atomic_exchange(&h->running[v[0]], 1) != 0)
        atomic_fetch_add(&h->overlap, 1);
    int rc = -1;
    if (v[1] % 2 == 0) {
        if (atomic_load(&h->last_ok[v[0]]) > v[1])
            atomic_fetch_add(&h->out_of_order, 1);
        atomic_store(&h->last_ok[v[0]], v[1] + 1);
        atomic_fetch_add(&h->handled, 1);
        rc = 0;
    }
    atomic_store(&h->running[v[0]], 0);
    atomic_fetch_add(&h->calls, 1);
    return rc;
}

static bool half_done(void *arg)
{
    rbus_dispatch_stats st;
    rbus_dispatch_stats_get(arg, &st);
    return st.handled + st.dropped >= 2000 && st.in_hand == 0;
}

static void keys_stay_exact_when_messages_fail_for_good(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "half.t");
    rbus_sub *s = sub_block(bus, "half.t", 64);
    struct half *h = calloc(1, sizeof *h);
    assert_non_null(h);
    rbus_dispatch_opts opts;
    rbus_dispatch_opts_init(&opts);
    opts.threads = 8;
    opts.ordered_by_key = true;
    opts.max_attempts = 2;
    opts.backoff_initial_ns = 1000;
    opts.backoff_max_ns = 10000;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, half_handler, h, &opts));
    uint32_t seq[NKEYS] = {0};
    for (uint32_t i = 0; i < 2000; i++) {
        uint32_t k = (i * 7 + i / 3) % NKEYS;
        uint32_t v[2] = {k, seq[k]++};
        char key[16];
        snprintf(key, sizeof key, "key-number-%u", k);
        rbus_pub_opts po;
        memset(&po, 0, sizeof po);
        po.order_key = key;
        po.order_key_len = strlen(key);
        assert_rbus_ok(rbus_publish_ex(t, v, sizeof v, &po, NULL));
    }
    assert_true(wait_until(half_done, d, INT64_C(60000000000)));
    rbus_dispatch_stats st;
    assert_rbus_ok(rbus_dispatch_stats_get(d, &st));
    assert_rbus_ok(rbus_dispatch_stop(d));
    assert_int_equal(atomic_load(&h->overlap), 0);
    assert_int_equal(atomic_load(&h->out_of_order), 0);
    uint64_t evens = 0;
    for (int k = 0; k < NKEYS; k++)
        evens += (seq[k] + 1) / 2; /* sequences 0, 2, 4, ... succeed */
    assert_int_equal(st.handled, evens);
    assert_int_equal(st.dropped, 2000 - evens);
    assert_int_equal(st.failed_attempts, 2 * (2000 - evens));
    assert_int_equal(st.retried, 2000 - evens);
    assert_int_equal(atomic_load(&h->handled), evens);
    free(h);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* -------------------------------------------------------- the errors */

struct self_stop {
    rbus_dispatcher *_Atomic d;
    _Atomic int rc, drain_rc;
    _Atomic uint64_t final_handled; /* what the refused drain wrote */
};

static int self_stop_handler(const rbus_msg *m, void *arg)
{
    (void)m;
    struct self_stop *ss = arg;
    rbus_dispatcher *d;
    while (!(d = atomic_load(&ss->d)))
        rbus_test_sleep_us(100);
    rbus_dispatch_stats final;
    memset(&final, 0xff, sizeof final);
    atomic_store(&ss->drain_rc, rbus_dispatch_drain(d, -1, &final));
    atomic_store(&ss->final_handled, final.handled);
    atomic_store(&ss->rc, rbus_dispatch_stop(d));
    return 0;
}

static bool self_stop_ran(void *arg)
{
    return atomic_load(&((struct self_stop *)arg)->rc) != 1;
}

static int ok_handler(const rbus_msg *m, void *arg)
{
    (void)m;
    (void)arg;
    return 0;
}

static void errors_are_reported_and_destroy_stops_dispatchers(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "err.t");
    rbus_sub *s = sub_block(bus, "err.t", 8);
    rbus_dispatcher *d = (rbus_dispatcher *)&d; /* non-NULL: a failed start must clear it */
    rbus_dispatch_opts bad;
    rbus_dispatch_opts_init(&bad);
    assert_rbus_rc(rbus_dispatch_start(NULL, s, ok_handler, NULL, NULL), -EINVAL);
    assert_rbus_rc(rbus_dispatch_start(&d, NULL, ok_handler, NULL, NULL), -EINVAL);
    assert_null(d);
    assert_rbus_rc(rbus_dispatch_start(&d, s, NULL, NULL, NULL), -EINVAL);
    bad.threads = RBUS_MAX_DISPATCH_THREADS + 1;
    assert_rbus_rc(rbus_dispatch_start(&d, s, ok_handler, NULL, &bad), -EINVAL);
    rbus_dispatch_opts_init(&bad);
    bad.dead_letter_topic = "bad.*";
    assert_rbus_rc(rbus_dispatch_start(&d, s, ok_handler, NULL, &bad), -EINVAL);
    bad.dead_letter_topic = "err.t"; /* the subscription's own topic: a loop */
    assert_rbus_rc(rbus_dispatch_start(&d, s, ok_handler, NULL, &bad), -EINVAL);
    assert_rbus_rc(rbus_dispatch_stop(NULL), -EINVAL);
    rbus_dispatch_stats st;
    memset(&st, 0xff, sizeof st);
    assert_rbus_rc(rbus_dispatch_drain(NULL, 0, &st), -EINVAL);
    assert_int_equal(st.handled + st.dropped + st.in_hand, 0);
    assert_rbus_rc(rbus_dispatch_drain(NULL, -1, NULL), -EINVAL);
    assert_rbus_rc(rbus_dispatch_stats_get(NULL, &st), -EINVAL);

    /* One dispatcher per subscription; unsubscribe waits for it to stop. */
    struct self_stop ss = {.rc = 1};
    assert_rbus_ok(rbus_dispatch_start(&d, s, self_stop_handler, &ss, NULL));
    rbus_dispatcher *d2;
    assert_rbus_rc(rbus_dispatch_start(&d2, s, ok_handler, NULL, NULL), -EBUSY);
    assert_rbus_rc(rbus_unsubscribe(s), -EBUSY);
    assert_rbus_rc(rbus_dispatch_stats_get(d, NULL), -EINVAL);
    /* A handler stopping its own dispatcher gets -EDEADLK. */
    atomic_store(&ss.d, d);
    assert_rbus_ok(rbus_publish(t, "x", 1));
    assert_true(wait_until(self_stop_ran, &ss, INT64_C(10000000000)));
    assert_rbus_rc(atomic_load(&ss.rc), -EDEADLK);
    assert_rbus_rc(atomic_load(&ss.drain_rc), -EDEADLK);
    assert_int_equal(atomic_load(&ss.final_handled), 0);
    assert_rbus_ok(rbus_dispatch_stop(d));
    /* After a stop, another may start; rbus_destroy stops it. */
    assert_rbus_ok(rbus_dispatch_start(&d, s, ok_handler, NULL, NULL));
    assert_rbus_ok(rbus_publish(t, "y", 1));
    rbus_destroy(bus); /* ASan/LSan: the dispatcher and its threads are gone */
}

/* ------------------------------------------------------------ drain */

/* Payload of the drain tests: order key index and per-key sequence. Every
 * 5th message fails its first attempt; every 47th fails every attempt and
 * becomes a dead letter after 3. So the final counters are known exactly. */
struct drain_log {
    _Atomic int running[NKEYS];
    uint32_t done[NKEYS]; /* 1 + the last sequence finished (handled or dead), by its runner */
    _Atomic unsigned overlap, out_of_order;
    unsigned sleep_us;
};

static bool drain_fails_for_good(uint32_t seq)
{
    return seq % 47 == 46;
}

static int drain_handler(const rbus_msg *m, void *arg)
{
    struct drain_log *l = arg;
    uint32_t v[2];
    memcpy(v, rbus_msg_data(m), sizeof v);
    if (atomic_exchange(&l->running[v[0]], 1) != 0)
        atomic_fetch_add(&l->overlap, 1);
    /* A later message of the key runs only once this one is done for
     * good: its retries and its dead letter come first. */
    if (l->done[v[0]] > v[1])
        atomic_fetch_add(&l->out_of_order, 1);
    if (l->sleep_us)
        rbus_test_sleep_us(l->sleep_us);
    int rc = 0;
    if (drain_fails_for_good(v[1]) || (v[1] % 5 == 0 && rbus_msg_attempt(m) == 1))
        rc = -1;
    if (rc == 0 || (drain_fails_for_good(v[1]) && rbus_msg_attempt(m) == 3))
        l->done[v[0]] = v[1] + 1;
    atomic_store(&l->running[v[0]], 0);
    return rc;
}

static void drain_publish(rbus_topic *t, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v[2] = {i % NKEYS, i / NKEYS};
        char key[8];
        snprintf(key, sizeof key, "k%u", v[0]);
        rbus_pub_opts po;
        memset(&po, 0, sizeof po);
        po.order_key = key;
        po.order_key_len = strlen(key);
        assert_rbus_ok(rbus_publish_ex(t, v, sizeof v, &po, NULL));
    }
}

/* The value of `family` for subscription `s` in the bus's exposition. */
static uint64_t prom_value(rbus *bus, const char *family, rbus_sub *s)
{
    static char text[1 << 16];
    int n = rbus_stats_prometheus(bus, text, sizeof text);
    assert_true(n > 0 && (size_t)n < sizeof text);
    return strtoull(rbus_test_prom_sample(text, family, s), NULL, 10);
}

static void drain_handles_everything_queued_under_retries_and_keys(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "drain.orders");
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.capacity = 8192;
    so.name = "billing";
    rbus_sub *s, *dlq;
    assert_rbus_ok(rbus_subscribe(bus, "drain.orders", &so, &s));
    dlq = sub_block(bus, "drain.dead", 8192);
    const uint32_t per_key = (uint32_t)rbus_test_scaled(1000, 63);
    const uint32_t n = per_key * NKEYS;
    printf("# drain: %u messages over %u order keys, 4 workers\n", n, NKEYS);
    struct drain_log *l = calloc(1, sizeof *l);
    assert_non_null(l);
    rbus_dispatch_opts o;
    rbus_dispatch_opts_init(&o);
    o.threads = 4;
    o.ordered_by_key = true;
    o.max_attempts = 3;
    o.backoff_initial_ns = 200000;
    o.backoff_max_ns = 2000000;
    o.dead_letter_topic = "drain.dead";
    o.max_in_hand = 64;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, drain_handler, l, &o));
    drain_publish(t, n);
    rbus_dispatch_stats final;
    assert_rbus_ok(rbus_dispatch_drain(d, -1, &final));

    uint64_t dead = 0, retried = 0;
    for (uint32_t seq = 0; seq < per_key; seq++) {
        dead += drain_fails_for_good(seq) ? NKEYS : 0;
        retried += drain_fails_for_good(seq) ? 2 * NKEYS : seq % 5 == 0 ? NKEYS : 0;
    }
    printf("# drain: handled %llu, retried %llu, dead letters %llu\n",
           (unsigned long long) final.handled, (unsigned long long) final.retried,
           (unsigned long long) final.dead_lettered);
    assert_int_equal(final.handled, n - dead);
    assert_int_equal(final.dead_lettered, dead);
    assert_int_equal(final.retried, retried);
    assert_int_equal(final.failed_attempts, retried + dead);
    assert_int_equal(final.dropped, 0);
    assert_int_equal(final.in_hand, 0);
    assert_int_equal(atomic_load(&l->overlap), 0);
    assert_int_equal(atomic_load(&l->out_of_order), 0);
    for (int k = 0; k < NKEYS; k++)
        assert_int_equal(l->done[k], per_key);
    rbus_sub_stats st, dst;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_rbus_ok(rbus_sub_stats_get(dlq, &dst));
    assert_int_equal(st.received, n);
    assert_int_equal(st.depth, 0);
    assert_int_equal(dst.depth, dead);

    /* The counters outlive the dispatcher, labelled like the sub's own. */
    assert_int_equal(prom_value(bus, "ringbus_dispatch_handled_total", s), n - dead);
    assert_int_equal(prom_value(bus, "ringbus_dispatch_dead_lettered_total", s), dead);
    assert_int_equal(prom_value(bus, "ringbus_dispatch_retried_total", s), retried);
    assert_int_equal(prom_value(bus, "ringbus_dispatch_in_hand", s), 0);
    static char text[1 << 16];
    assert_true(rbus_stats_prometheus(bus, text, sizeof text) > 0);
    assert_non_null(strstr(text, "ringbus_dispatch_handled_total{pattern=\"drain.orders\",sub=\""));
    assert_non_null(strstr(text, "\",name=\"billing\",policy=\"block\"} "));

    /* A second dispatcher adds to them: counters never go back. */
    memset(l, 0, sizeof *l);
    assert_rbus_ok(rbus_dispatch_start(&d, s, drain_handler, l, &o));
    drain_publish(t, NKEYS); /* sequence 0 of each key: fails once, then handled */
    assert_rbus_ok(rbus_dispatch_drain(d, -1, &final));
    assert_int_equal(final.handled, NKEYS);
    assert_int_equal(prom_value(bus, "ringbus_dispatch_handled_total", s), n - dead + NKEYS);
    assert_int_equal(prom_value(bus, "ringbus_dispatch_retried_total", s), retried + NKEYS);

    free(l);
    assert_rbus_ok(rbus_unsubscribe(dlq));
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void drain_that_times_out_leaves_the_rest_queued(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "drain.slow");
    rbus_sub *s = sub_block(bus, "drain.slow", 1024);
    struct drain_log *l = calloc(1, sizeof *l);
    assert_non_null(l);
    l->sleep_us = 2000;
    rbus_dispatch_opts o;
    rbus_dispatch_opts_init(&o);
    o.ordered_by_key = true;
    o.max_attempts = 3;
    o.max_in_hand = 4;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, drain_handler, l, &o));
    const uint32_t n = 400;
    drain_publish(t, n);
    rbus_dispatch_stats final;
    assert_rbus_rc(rbus_dispatch_drain(d, 30000000, &final), -ETIMEDOUT);
    assert_non_null(strstr(rbus_last_error_detail(), "rbus_dispatch_drain: the timeout ran out; "
                                                     "the dispatcher stopped with "));
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    printf("# drain with 30 ms for %u messages of 2 ms: %llu handled, %u still queued\n", n,
           (unsigned long long) final.handled, st.depth);
    /* Whatever was taken was finished (a retry at once; no dead letter
     * before sequence 46); the rest is still queued. */
    assert_true(st.depth > 0);
    assert_int_equal(final.handled + final.dead_lettered + final.dropped, st.received);
    assert_int_equal(st.received + st.depth, n);
    assert_int_equal(atomic_load(&l->out_of_order), 0);

    /* Nothing queued: a drain that may not wait still succeeds. */
    rbus_msg *m;
    while (rbus_recv(s, &m, 0) == 0)
        rbus_msg_release(m);
    l->sleep_us = 0;
    assert_rbus_ok(rbus_dispatch_start(&d, s, drain_handler, l, &o));
    assert_rbus_ok(rbus_dispatch_drain(d, 0, NULL));
    /* A closed subscription ends the drain once it is empty. */
    assert_rbus_ok(rbus_dispatch_start(&d, s, drain_handler, l, &o));
    memset(l, 0, sizeof *l);
    drain_publish(t, NKEYS);
    assert_rbus_ok(rbus_sub_close(s));
    assert_rbus_ok(rbus_dispatch_drain(d, -1, &final));
    assert_int_equal(final.handled, NKEYS);
    free(l);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* ------------------------------------- a handler that uses many buses */

/*
 * A thread keeps states for at most 8 buses; a handler that publishes on 9
 * other buses makes its worker hand its state on the dispatcher's bus back,
 * and another thread attaching to that bus then takes that very state over
 * (with its message cache). The worker's retry copies the message with a
 * state it must look up again, not the one it had: with the old cached one
 * two threads used one message cache at once (ThreadSanitizer reports it;
 * it could also corrupt the cache).
 */
#define HOP_BUSES 9

struct hop {
    rbus_topic *other[HOP_BUSES];
    rbus_topic *side; /* on the dispatcher's bus, for the intruder */
    atomic_int go, attached, stop;
    _Atomic unsigned attempts;
};

static int hop_handler(const rbus_msg *m, void *arg)
{
    struct hop *h = arg;
    atomic_fetch_add(&h->attempts, 1);
    if (rbus_msg_attempt(m) > 1)
        return 0;
    for (int k = 0; k < HOP_BUSES; k++)
        if (rbus_publish(h->other[k], "x", 1) != 0)
            return 0; /* counted as handled: the attempts check fails */
    atomic_store(&h->go, 1);
    while (!atomic_load(&h->attached))
        rbus_test_sleep_us(50);
    return -1; /* retried: the retry copies the message */
}

static void *hop_intruder(void *arg)
{
    struct hop *h = arg;
    while (!atomic_load(&h->go) && !atomic_load(&h->stop))
        rbus_test_sleep_us(50);
    int rc = rbus_publish(h->side, "y", 1); /* attaches: takes the freed state */
    atomic_store(&h->attached, 1);
    for (unsigned i = 0; rc == 0 && i < 20000 && !atomic_load(&h->stop); i++)
        rc = rbus_publish(h->side, "y", 1);
    return NULL;
}

static bool hop_done(void *arg)
{
    rbus_dispatch_stats st;
    rbus_dispatch_stats_get(arg, &st);
    return st.handled == 1;
}

static void retry_after_handler_used_many_buses(void **state)
{
    (void)state;
    struct hop h = {0};
    rbus *others[HOP_BUSES];
    rbus_test_buses_open(HOP_BUSES, others, h.other, "hop.other");
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "hop.in");
    assert_rbus_ok(rbus_topic_open(bus, "hop.side", &h.side));
    rbus_sub *s = sub_block(bus, "hop.in", 16);
    /* Drop-oldest: every intruder publish takes a message from the cache. */
    rbus_sub *side = rbus_test_subscribe(bus, "hop.side", 64, RBUS_DROP_OLDEST, 0);
    rbus_dispatch_opts opts;
    rbus_dispatch_opts_init(&opts);
    opts.max_attempts = 2;
    opts.backoff_initial_ns = 1000;
    opts.backoff_max_ns = 1000;
    pthread_t intruder;
    assert_int_equal(pthread_create(&intruder, NULL, hop_intruder, &h), 0);
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, hop_handler, &h, &opts));
    assert_rbus_ok(rbus_publish(t, "job", 3));
    assert_true(wait_until(hop_done, d, INT64_C(30000000000)));
    atomic_store(&h.stop, 1);
    assert_int_equal(pthread_join(intruder, NULL), 0);
    rbus_dispatch_stats st;
    assert_rbus_ok(rbus_dispatch_stats_get(d, &st));
    assert_rbus_ok(rbus_dispatch_stop(d));
    assert_int_equal(st.handled, 1);
    assert_int_equal(st.retried, 1);
    assert_int_equal(atomic_load(&h.attempts), 2);
    assert_int_equal(atomic_load(&h.attached), 1);
    assert_rbus_ok(rbus_unsubscribe(s));
    assert_rbus_ok(rbus_unsubscribe(side));
    rbus_destroy(bus);
    rbus_test_buses_destroy(HOP_BUSES, others);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(four_workers_handle_every_message_once),
        cmocka_unit_test(same_order_key_never_overlaps_and_keeps_order),
        cmocka_unit_test(fails_twice_then_succeeds_without_holding_up_others),
        cmocka_unit_test(always_failing_messages_become_dead_letters),
        cmocka_unit_test(max_in_hand_bounds_what_the_dispatcher_holds),
        cmocka_unit_test(stop_under_load_loses_nothing),
        cmocka_unit_test(keys_stay_exact_when_messages_fail_for_good),
        cmocka_unit_test(errors_are_reported_and_destroy_stops_dispatchers),
        cmocka_unit_test(drain_handles_everything_queued_under_retries_and_keys),
        cmocka_unit_test(drain_that_times_out_leaves_the_rest_queued),
        cmocka_unit_test(retry_after_handler_used_many_buses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
