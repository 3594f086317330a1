/*
 * Randomized stalls: publishers and competing receivers run on one small
 * subscription per policy while a chaos thread parks a random one of them
 * at a random step of the slot protocol (src/ring.h) for a random time,
 * over and over. Checked: every publish's outcome (a drop-oldest publish
 * evicts at most one message), every message received at most once and,
 * per receiver, in each publisher's order, and at the end the exact
 * accounting and, under block, nothing lost. The three policies run again
 * with a byte bound and payloads of varied sizes, which it binds before
 * the capacity does: the bytes queued never pass it and return to 0.
 *
 * Then the same chaos on idempotency keys (src/window.h): publishers race
 * over one round of keys after another, each round a window's worth, and a
 * publisher is parked at a random step of a key's acceptance. Checked:
 * every key of every round accepted exactly once.
 *
 * The run lasts RBUS_TORTURE_SECONDS (default 2) times RBUS_STRESS_SCALE.
 */
#include <sched.h>

#include "test_util.h"

#include "pause.h"

#define NPUB 3
#define NRECV 2
#define CAP 8
#define PAYLOAD_WORDS 2 /* publisher id, counter */
#define BYTES_PAYLOAD 256 /* byte-bound runs: max_payload, max_bytes, largest payload */

static const enum rbus__pp chaos_points[] = {
    RBUS_PP_RING_PUT_RESERVED, RBUS_PP_RING_PUT_PASS,  RBUS_PP_RING_TAKE_CLAIMING,
    RBUS_PP_RING_TAKE_CLAIMED, RBUS_PP_RING_TAKE_SKIP,
};

struct torture {
    rbus_overflow policy;
    bool bytes;            /* a byte bound of BYTES_PAYLOAD, payloads of varied sizes */
    atomic_int over_bound; /* a stats read saw more bytes queued than the bound */
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    uint64_t per_pub_cap;       /* messages below this counter are checked for repeats */
    atomic_uint_least8_t *seen; /* [publisher][counter] */
    atomic_int stop;            /* publishers: stop publishing */
    atomic_int publishers_done;
    atomic_uint_fast64_t published, evicted_total, parks;
    pthread_t threads[NPUB + NRECV];
};

struct worker {
    struct torture *t;
    unsigned id;
    uint64_t count; /* publishers: how many published */
};

static void *publisher_main(void *arg)
{
    struct worker *w = arg;
    struct torture *t = w->t;
    uint64_t payload[BYTES_PAYLOAD / sizeof(uint64_t)] = {w->id, 0};
    uint64_t rng = 0x2545F4914F6CDD1Du * (w->id + 1);
    rbus_pub_opts o = {.timeout_ns = 0}; /* block: wait as long as it takes */
    while (!atomic_load(&t->stop)) {
        rbus_pub_result res;
        size_t size = PAYLOAD_WORDS * sizeof(uint64_t);
        if (t->bytes) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            size += rng % (BYTES_PAYLOAD - size + 1);
        }
        int rc = rbus_publish_ex(t->topic, payload, size, &o, &res);
        if (rc != 0)
            rbus_test_report("publish returned %d", rc);
        if (res.evicted > 1 && !t->bytes) /* a byte bound may need several */
            rbus_test_report("a drop-oldest publish evicted %u messages", res.evicted);
        if (res.matched != res.queued + res.dropped)
            rbus_test_report("result: matched %u, queued %u, dropped %u", res.matched, res.queued,
                             res.dropped);
        atomic_fetch_add(&t->evicted_total, res.evicted);
        /* A publish that never waits makes no system call: under valgrind,
         * which runs one thread at a time and switches mostly at system
         * calls, the chaos thread would barely run and the run would last
         * far past its time. */
        if (++payload[1] % 1024 == 0)
            sched_yield();
    }
    w->count = payload[1];
    atomic_fetch_add(&t->published, payload[1]);
    atomic_fetch_add(&t->publishers_done, 1);
    return NULL;
}

static void *receiver_main(void *arg)
{
    struct worker *w = arg;
    struct torture *t = w->t;
    uint64_t last[NPUB];
    for (int i = 0; i < NPUB; i++)
        last[i] = UINT64_MAX;
    for (;;) {
        rbus_msg *m;
        int rc = rbus_recv(t->sub, &m, 2000000);
        if (rc == -ETIMEDOUT || rc == -EAGAIN) {
            if (atomic_load(&t->publishers_done) == NPUB)
                break;
            continue;
        }
        if (rc != 0) {
            rbus_test_report("receive returned %d", rc);
            break;
        }
        uint64_t p[PAYLOAD_WORDS];
        memcpy(p, rbus_msg_data(m), sizeof p);
        rbus_msg_release(m);
        rbus_sub_stats st;
        if (t->bytes && p[1] % 64 == 0 && rbus_sub_stats_get(t->sub, &st) == 0 &&
            st.bytes > BYTES_PAYLOAD)
            atomic_store(&t->over_bound, 1);
        if (p[0] >= NPUB) {
            rbus_test_report("a message no publisher sent: %llu/%llu", (unsigned long long)p[0],
                             (unsigned long long)p[1]);
            continue;
        }
        if (p[1] < t->per_pub_cap && atomic_exchange(&t->seen[p[0] * t->per_pub_cap + p[1]], 1))
            rbus_test_report("publisher %llu's message %llu received twice",
                             (unsigned long long)p[0], (unsigned long long)p[1]);
        if (last[p[0]] != UINT64_MAX && p[1] <= last[p[0]])
            rbus_test_report("publisher %llu: message %llu after %llu", (unsigned long long)p[0],
                             (unsigned long long)p[1], (unsigned long long)last[p[0]]);
        last[p[0]] = p[1];
    }
    return NULL;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Parks a random one of `threads` at a random one of `points` for up to
 * 3 ms, over and over until the deadline; counts the parks. */
static void chaos(const enum rbus__pp *points, size_t npoints, const pthread_t *threads,
                  size_t nthreads, atomic_uint_fast64_t *parks, uint64_t until_ns, uint64_t seed)
{
    while (rbus_test_now_ns() < until_ns) {
        enum rbus__pp point = points[rng_next(&seed) % npoints];
        pthread_t who = threads[rng_next(&seed) % nthreads];
        int trap = rbus__trap_set(point, &who);
        if (trap < 0)
            continue;
        if (rbus__trap_wait(trap, 2000000)) {
            atomic_fetch_add(parks, 1);
            rbus_test_sleep_us((unsigned)(rng_next(&seed) % 3000));
        }
        rbus__trap_release(trap);
    }
    rbus__trap_reset();
}

static void torture_policy(rbus_overflow policy, bool bytes, double seconds)
{
    struct torture t;
    memset(&t, 0, sizeof t);
    t.policy = policy;
    t.bytes = bytes;
    t.per_pub_cap = UINT64_C(1) << 24;
    t.seen = calloc((size_t)(NPUB * t.per_pub_cap), 1);
    assert_non_null(t.seen);
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_payload = bytes ? BYTES_PAYLOAD : cfg.max_payload;
    assert_rbus_ok(rbus_create(&t.bus, &cfg));
    assert_rbus_ok(rbus_topic_open(t.bus, "torture.ring", &t.topic));
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.capacity = CAP;
    so.overflow = policy;
    so.max_bytes = bytes ? BYTES_PAYLOAD : 0;
    assert_rbus_ok(rbus_subscribe(t.bus, "torture.ring", &so, &t.sub));

    struct worker w[NPUB + NRECV];
    for (unsigned i = 0; i < NPUB + NRECV; i++) {
        w[i] = (struct worker){.t = &t, .id = i < NPUB ? i : i - NPUB};
        assert_int_equal(
            pthread_create(&t.threads[i], NULL, i < NPUB ? publisher_main : receiver_main, &w[i]),
            0);
    }
    chaos(chaos_points, sizeof chaos_points / sizeof chaos_points[0], t.threads, NPUB + NRECV,
          &t.parks, rbus_test_now_ns() + (uint64_t)(seconds * 1e9), 0x9E3779B97F4A7C15u ^ policy);
    atomic_store(&t.stop, 1);
    for (unsigned i = 0; i < NPUB + NRECV; i++)
        assert_int_equal(pthread_join(t.threads[i], NULL), 0);
    rbus_test_assert_no_thread_errors();

    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(t.sub, &st));
    rbus_test_check_accounting(&st);
    assert_int_equal(st.offered, atomic_load(&t.published));
    assert_int_equal(st.depth, 0); /* the receivers drained it */
    assert_int_equal(st.bytes, 0);
    assert_int_equal(atomic_load(&t.over_bound), 0);
    if (policy != RBUS_DROP_OLDEST)
        assert_int_equal(st.dropped_oldest, 0);
    /* Over a byte bound, drop-oldest refuses as drop-newest when the oldest
     * message is one a parked publisher has not finished writing. */
    if (policy != RBUS_DROP_NEWEST && !(bytes && policy == RBUS_DROP_OLDEST))
        assert_int_equal(st.dropped_newest, 0);
    if (policy == RBUS_BLOCK)
        assert_int_equal(st.received, st.offered); /* nothing lost */
    uint64_t got = 0, checked = 0;
    for (uint64_t i = 0; i < NPUB * t.per_pub_cap; i++)
        got += t.seen[i];
    for (unsigned i = 0; i < NPUB; i++)
        checked += w[i].count < t.per_pub_cap ? w[i].count : t.per_pub_cap;
    if (checked == st.offered) /* no counter past the bitmap: every receipt is in it */
        assert_int_equal(got, st.received);
    print_message("  %s%s: %.1f s, %llu published, %llu received, %llu evicted, %llu parks; "
                  "skipped %llu, holes %llu, reoffers %llu\n",
                  policy == RBUS_BLOCK         ? "block"
                  : policy == RBUS_DROP_OLDEST ? "drop-oldest"
                                               : "drop-newest",
                  bytes ? " with a byte bound" : "", seconds, (unsigned long long)st.offered,
                  (unsigned long long)st.received,
                  (unsigned long long)atomic_load(&t.evicted_total),
                  (unsigned long long)atomic_load(&t.parks), (unsigned long long)st.skipped,
                  (unsigned long long)st.holes, (unsigned long long)st.reoffers);
    assert_rbus_ok(rbus_unsubscribe(t.sub));
    rbus_destroy(t.bus);
    free(t.seen);
}

static void random_stalls_keep_every_promise(void **state)
{
    (void)state;
    const char *env = getenv("RBUS_TORTURE_SECONDS");
    double seconds = (env ? strtod(env, NULL) : 2.0) * rbus_test_stress_scale();
    if (seconds < 0.2)
        seconds = 0.2;
    print_message("torture: %.1f s per policy (RBUS_TORTURE_SECONDS x RBUS_STRESS_SCALE), "
                  "%d publishers, %d receivers, capacity %d\n",
                  seconds, NPUB, NRECV, CAP);
    for (int bytes = 0; bytes < 2; bytes++) {
        torture_policy(RBUS_DROP_OLDEST, bytes, seconds);
        torture_policy(RBUS_DROP_NEWEST, bytes, seconds);
        torture_policy(RBUS_BLOCK, bytes, seconds);
    }
}

/* ---------------------------------------------------- idempotency keys */

#define ROUND_KEYS 8 /* keys per round, and the window: each round forgets the last */

static const enum rbus__pp key_chaos_points[] = {
    RBUS_PP_DEDUP_CLAIMED,
    RBUS_PP_DEDUP_PROPOSED,
    RBUS_PP_DEDUP_ACCEPTED,
};

struct key_torture {
    rbus_topic *topic;
    pthread_barrier_t barrier;
    atomic_int stop;
    bool last_round; /* thread 0 decides between the barriers */
    atomic_uint accepted[ROUND_KEYS];
    atomic_uint_fast64_t rounds, duplicates, parks;
    pthread_t threads[NPUB];
};

struct key_worker {
    struct key_torture *t;
    unsigned id;
};

static void *key_publisher_main(void *arg)
{
    struct key_worker *w = arg;
    struct key_torture *t = w->t;
    uint64_t rng = 0x2545F4914F6CDD1Du * (w->id + 1);
    for (uint64_t round = 0;; round++) {
        if (w->id == 0)
            t->last_round = atomic_load(&t->stop);
        pthread_barrier_wait(&t->barrier);
        if (t->last_round)
            break;
        unsigned order[ROUND_KEYS];
        for (unsigned i = 0; i < ROUND_KEYS; i++)
            order[i] = i;
        for (unsigned i = ROUND_KEYS - 1; i > 0; i--) {
            unsigned j = (unsigned)(rng_next(&rng) % (i + 1)), x = order[i];
            order[i] = order[j];
            order[j] = x;
        }
        for (unsigned i = 0; i < ROUND_KEYS; i++) {
            char key[32];
            int kl = snprintf(key, sizeof key, "r%llu-k%u", (unsigned long long)round, order[i]);
            rbus_pub_opts o = {.key = key, .key_len = (size_t)kl};
            int rc = rbus_publish_ex(t->topic, key, (size_t)kl, &o, NULL);
            if (rc == 0)
                atomic_fetch_add(&t->accepted[order[i]], 1);
            else if (rc == RBUS_DUPLICATE)
                atomic_fetch_add(&t->duplicates, 1);
            else
                rbus_test_report("keyed publish returned %d", rc);
        }
        pthread_barrier_wait(&t->barrier);
        if (w->id == 0) {
            for (unsigned k = 0; k < ROUND_KEYS; k++)
                if (atomic_exchange(&t->accepted[k], 0) != 1)
                    rbus_test_report("round %llu: a key not accepted exactly once",
                                     (unsigned long long)round);
            atomic_fetch_add(&t->rounds, 1);
        }
    }
    return NULL;
}

static void random_stalls_keep_keys_exactly_once(void **state)
{
    (void)state;
    const char *env = getenv("RBUS_TORTURE_SECONDS");
    double seconds = (env ? strtod(env, NULL) : 2.0) * rbus_test_stress_scale();
    if (seconds < 0.2)
        seconds = 0.2;
    struct key_torture t;
    memset(&t, 0, sizeof t);
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.dedup_keys = ROUND_KEYS;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    assert_rbus_ok(rbus_topic_open(bus, "torture.keys", &t.topic));
    assert_int_equal(pthread_barrier_init(&t.barrier, NULL, NPUB), 0);
    struct key_worker w[NPUB];
    for (unsigned i = 0; i < NPUB; i++) {
        w[i] = (struct key_worker){.t = &t, .id = i};
        assert_int_equal(pthread_create(&t.threads[i], NULL, key_publisher_main, &w[i]), 0);
    }
    chaos(key_chaos_points, sizeof key_chaos_points / sizeof key_chaos_points[0], t.threads, NPUB,
          &t.parks, rbus_test_now_ns() + (uint64_t)(seconds * 1e9), 0xD1B54A32D192ED03u);
    atomic_store(&t.stop, 1);
    for (unsigned i = 0; i < NPUB; i++)
        assert_int_equal(pthread_join(t.threads[i], NULL), 0);
    rbus_test_assert_no_thread_errors();
    uint64_t rounds = atomic_load(&t.rounds);
    print_message("torture: keys: %.1f s, %d publishers, %llu rounds of %d keys, %llu duplicates, "
                  "%llu parks\n",
                  seconds, NPUB, (unsigned long long)rounds, ROUND_KEYS,
                  (unsigned long long)atomic_load(&t.duplicates),
                  (unsigned long long)atomic_load(&t.parks));
    assert_true(rounds > 0);
    assert_int_equal(atomic_load(&t.duplicates), rounds * ROUND_KEYS * (NPUB - 1));
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t.topic, &ts));
    assert_int_equal(ts.published, rounds * ROUND_KEYS);
    pthread_barrier_destroy(&t.barrier);
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(random_stalls_keep_every_promise),
        cmocka_unit_test(random_stalls_keep_keys_exactly_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
