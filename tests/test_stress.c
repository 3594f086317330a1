/*
 * test_stress.c - many publishers, every overflow policy, competing
 * receivers, exact bookkeeping.
 *
 * Every payload carries (publisher id, topic index, per-publisher counter),
 * counters starting at 1. Receivers never call cmocka from their threads:
 * they record what they saw and the first error, and the main thread checks
 * everything after the threads have been joined.
 *
 * What must hold at the end (the bus closed, every receiver drained to
 * -ESHUTDOWN):
 *   - each subscription: offered == received + depth + drops (exact), and
 *     offered == the number of matching messages published;
 *   - RBUS_BLOCK: nothing lost, every (publisher, counter) exactly once;
 *   - every subscription: no (publisher, counter) twice;
 *   - per receiver thread: counters of one publisher strictly increase
 *     (competing receivers split the stream, so order holds per receiver);
 *   - the drop subscriptions really dropped: their receiver pauses at a few
 *     points until the publishers have published well past its capacity,
 *     so drops are certain whenever such a pause ran its full length.
 */
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "harness.h"

#define NPUB 3
#define SUB_CAP 256
#define BATCH_MAX 64
#define RECV_TIMEOUT_NS INT64_C(2000000000)
#define MAX_RECV_PER_SUB 2
#define MAX_RECV 4 /* receiver threads in one test */
#define WATCHDOG_MS 60000

/* ------------------------------------------------------------ contexts */

struct sub_ctx {
    rbus_sub *sub;
    const char *label;
    const char *pattern;
    rbus_overflow policy;
    uint32_t topic_mask;    /* bit t set: topic t matches the pattern */
    uint64_t per_pub;       /* counters run 1..per_pub */
    atomic_uchar *seen;     /* [pub * (per_pub + 1) + counter] */
    uint64_t *seen_seq[8];  /* BLOCK subs: per topic, seq -> times seen */
    uint64_t seq_limit;     /* size of each seen_seq array - 1 */
    uint32_t eff_cap;
    atomic_ullong got;      /* messages taken by all its receivers */
    atomic_ullong dups;
};

struct recv_ctx {
    struct sub_ctx *sc;
    bool use_batch;
    bool pauses;             /* stop receiving now and then (drop subs) */
    uint64_t last[NPUB];     /* last counter seen from each publisher */
    uint64_t last_seq[NPUB][8];
    uint64_t got;
    unsigned full_pauses;    /* pauses that ran their full length */
    int slot;                /* its "doing" slot in the watchdog */
};

struct pub_ctx {
    uint32_t id;
    uint64_t count;
    rbus_topic **topics;
    uint32_t ntopics;
    uint64_t per_topic[8];   /* what this publisher sent to each topic */
};

static atomic_ullong g_published;   /* approximate progress, for pauses */
static atomic_bool g_pubs_done;
static atomic_bool g_bus_closed;
static const char *const *g_topic_names;
/* Turns a deadlock into a report: slots 0..NPUB-1 are the publishers,
 * then the receivers. */
static struct rbus_test_watchdog g_watchdog;
static _Atomic(const char *) g_doing[NPUB + MAX_RECV];

static uint32_t topic_for(uint32_t pub, uint64_t counter, uint32_t ntopics)
{
    if (ntopics == 1)
        return 0;
    /* Irregular, but a pure function of (pub, counter). */
    uint64_t x = counter * UINT64_C(0x9E3779B97F4A7C15) + pub * UINT64_C(0x632BE59BD9B4E019);
    return (uint32_t)((x >> 33) % ntopics);
}

static void *publisher_main(void *arg)
{
    struct pub_ctx *pc = arg;
    uint64_t unreported = 0;
    rbus_test_doing(&g_watchdog, (int)pc->id, "publishing");
    for (uint64_t c = 1; c <= pc->count; c++) {
        struct rbus_test_payload p = {pc->id, topic_for(pc->id, c, pc->ntopics), c};
        int rc = rbus_publish(pc->topics[p.topic], &p, sizeof p);
        if (rc != 0) {
            rbus_test_report("publisher %u: rbus_publish #%llu returned %d (%s)", pc->id,
                             (unsigned long long)c, rc, rbus_strerror(rc));
            break;
        }
        pc->per_topic[p.topic]++;
        if (++unreported == 32) {
            atomic_fetch_add_explicit(&g_published, unreported, memory_order_relaxed);
            rbus_test_progress(&g_watchdog);
            unreported = 0;
        }
    }
    atomic_fetch_add_explicit(&g_published, unreported, memory_order_relaxed);
    rbus_test_doing(&g_watchdog, (int)pc->id, "finished publishing");
    return NULL;
}

/* Stop taking messages until the publishers have published `span` more (or
 * finished). Returns true when the full span went by. */
static bool pause_receiving(uint64_t span)
{
    uint64_t start = atomic_load_explicit(&g_published, memory_order_relaxed);
    for (;;) {
        if (atomic_load_explicit(&g_published, memory_order_relaxed) >= start + span)
            return true;
        if (atomic_load(&g_pubs_done))
            return false;
        rbus_test_sleep_us(50);
    }
}

static void check_message(struct recv_ctx *rc, const rbus_msg *m)
{
    struct sub_ctx *sc = rc->sc;
    struct rbus_test_payload p;
    if (!rbus_test_payload_get(m, &p)) {
        rbus_test_report("%s: message of %zu bytes, want %zu", sc->label, rbus_msg_size(m),
                         sizeof p);
        return;
    }
    if (p.pub >= NPUB || p.counter == 0 || p.counter > sc->per_pub || p.topic >= 8 ||
        !(sc->topic_mask & (UINT32_C(1) << p.topic))) {
        rbus_test_report("%s: bad payload pub=%u topic=%u counter=%llu", sc->label, p.pub, p.topic,
                         (unsigned long long)p.counter);
        return;
    }
    const char *tn = rbus_msg_topic(m);
    if (tn == NULL || strcmp(tn, g_topic_names[p.topic]) != 0) {
        rbus_test_report("%s: message of topic %u arrived as topic '%s'", sc->label, p.topic,
                         tn ? tn : "(null)");
        return;
    }
    if (p.counter <= rc->last[p.pub]) {
        rbus_test_report("%s: publisher %u out of order at one receiver: %llu after %llu",
                         sc->label, p.pub, (unsigned long long)p.counter,
                         (unsigned long long)rc->last[p.pub]);
    }
    rc->last[p.pub] = p.counter;
    uint64_t seq = rbus_msg_seq(m);
    if (seq == 0 || seq <= rc->last_seq[p.pub][p.topic]) {
        rbus_test_report("%s: publisher %u topic %u: seq %llu after %llu", sc->label, p.pub,
                         p.topic, (unsigned long long)seq,
                         (unsigned long long)rc->last_seq[p.pub][p.topic]);
    }
    rc->last_seq[p.pub][p.topic] = seq;
    size_t idx = (size_t)p.pub * (size_t)(sc->per_pub + 1) + (size_t)p.counter;
    if (atomic_exchange_explicit(&sc->seen[idx], 1, memory_order_relaxed) != 0) {
        atomic_fetch_add(&sc->dups, 1);
        rbus_test_report("%s: duplicate (publisher %u, counter %llu)", sc->label, p.pub,
                         (unsigned long long)p.counter);
    }
    if (sc->seen_seq[p.topic] != NULL && seq > sc->seq_limit) {
        rbus_test_report("%s: seq %llu beyond every message published", sc->label,
                         (unsigned long long)seq);
    } else if (sc->seen_seq[p.topic] != NULL) {
        /* Only one receiver writes these (BLOCK subs here have one receiver
         * when seq tracking is on), bounds checked by the caller's sizing. */
        sc->seen_seq[p.topic][seq]++;
    }
}

static void *receiver_main(void *arg)
{
    struct recv_ctx *rc = arg;
    struct sub_ctx *sc = rc->sc;
    rbus_msg *msgs[BATCH_MAX];
    uint64_t next_pause = 1000;
    for (;;) {
        /* Closed before the call began: the call must not time out. */
        bool closed_before = atomic_load(&g_bus_closed);
        int n;
        rbus_test_doing(&g_watchdog, rc->slot, rc->use_batch ? "rbus_recv_batch" : "rbus_recv");
        if (rc->use_batch) {
            n = rbus_recv_batch(sc->sub, msgs, BATCH_MAX, RECV_TIMEOUT_NS);
            if (n == 0 || n > BATCH_MAX) {
                rbus_test_report("%s: rbus_recv_batch returned %d", sc->label, n);
                return NULL;
            }
        } else {
            n = rbus_recv(sc->sub, &msgs[0], RECV_TIMEOUT_NS);
            if (n == 0)
                n = 1;
            else if (n > 0) {
                rbus_test_report("%s: rbus_recv returned %d", sc->label, n);
                return NULL;
            }
        }
        if (n == -ESHUTDOWN) {
            rbus_test_doing(&g_watchdog, rc->slot, "drained to -ESHUTDOWN");
            return NULL;
        }
        if (n == -ETIMEDOUT) {
            if (closed_before) {
                rbus_test_report("%s: -ETIMEDOUT after rbus_close instead of -ESHUTDOWN",
                                 sc->label);
                return NULL;
            }
            continue;
        }
        if (n < 0) {
            rbus_test_report("%s: receive failed: %d (%s)", sc->label, n, rbus_strerror(n));
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            check_message(rc, msgs[i]);
            rbus_msg_release(msgs[i]);
        }
        rc->got += (uint64_t)n;
        atomic_fetch_add_explicit(&sc->got, (uint64_t)n, memory_order_relaxed);
        rbus_test_progress(&g_watchdog);
        if (rc->pauses && rc->got >= next_pause) {
            rbus_test_doing(&g_watchdog, rc->slot, "pausing for the publishers");
            if (pause_receiving(4 * (uint64_t)sc->eff_cap + 2048))
                rc->full_pauses++;
            next_pause = rc->got + 150000;
        }
    }
}

/* --------------------------------------------------------------- setup */

static void sub_ctx_init(struct sub_ctx *sc, rbus *bus, const char *label, const char *pattern,
                         rbus_overflow policy, uint32_t topic_mask, uint64_t per_pub)
{
    memset(sc, 0, sizeof *sc);
    sc->label = label;
    sc->pattern = pattern;
    sc->policy = policy;
    sc->topic_mask = topic_mask;
    sc->per_pub = per_pub;
    sc->seen = calloc((size_t)NPUB * (size_t)(per_pub + 1), sizeof *sc->seen);
    assert_non_null(sc->seen);
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = SUB_CAP;
    o.overflow = policy;
    o.name = label;
    assert_rbus_ok(rbus_subscribe(bus, pattern, &o, &sc->sub));
    assert_non_null(sc->sub);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc->sub, &st));
    assert_true(st.capacity >= SUB_CAP);
    sc->eff_cap = st.capacity;
}

static void sub_ctx_free(struct sub_ctx *sc)
{
    free(sc->seen);
    for (int t = 0; t < 8; t++)
        free(sc->seen_seq[t]);
}

/* Queues a receiver on `team`; the test starts them all at once. */
static void add_receiver(struct rbus_test_threads *team, struct recv_ctx *rc, struct sub_ctx *sc,
                         bool batch, bool pauses)
{
    memset(rc, 0, sizeof *rc);
    rc->sc = sc;
    rc->use_batch = batch;
    rc->pauses = pauses;
    assert_true(team->n < MAX_RECV);
    rc->slot = NPUB + team->n;
    rbus_test_threads_add(team, receiver_main, rc);
}

/* Checks the final numbers of one subscription. `expected` is the number of
 * matching messages published. */
static void check_sub_final(struct sub_ctx *sc, struct recv_ctx *rcs, int nrc, uint64_t expected,
                            bool want_drops)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc->sub, &st));
    uint64_t drops = st.dropped_newest + st.dropped_oldest + st.dropped_timeout + st.dropped_closed;
    uint64_t got = 0;
    unsigned full_pauses = 0;
    for (int i = 0; i < nrc; i++) {
        got += rcs[i].got;
        full_pauses += rcs[i].full_pauses;
    }
    printf("stress:   %-12s pattern %-9s cap %u: offered %llu received %llu depth %u "
           "dropped newest %llu oldest %llu timeout %llu closed %llu, waits %llu, "
           "high water %u, full pauses %u\n",
           sc->label, sc->pattern, st.capacity, (unsigned long long)st.offered,
           (unsigned long long)st.received, st.depth, (unsigned long long)st.dropped_newest,
           (unsigned long long)st.dropped_oldest, (unsigned long long)st.dropped_timeout,
           (unsigned long long)st.dropped_closed, (unsigned long long)st.publisher_waits,
           st.high_water, full_pauses);
    rbus_test_check_accounting(&st);
    assert_int_equal(st.offered, expected);
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.received, got);
    assert_int_equal(atomic_load(&sc->got), got);
    assert_int_equal(atomic_load(&sc->dups), 0);
    assert_true(st.high_water <= st.capacity);
    assert_int_equal(st.dropped_timeout, 0);
    assert_int_equal(st.dropped_closed, 0);

    /* Count what was seen: exactly `received` distinct (publisher, counter). */
    uint64_t distinct = 0;
    size_t n = (size_t)NPUB * (size_t)(sc->per_pub + 1);
    for (size_t i = 0; i < n; i++)
        distinct += atomic_load_explicit(&sc->seen[i], memory_order_relaxed);
    assert_int_equal(distinct, got);

    /* Drops are certain on a large run with one pausing receiver: either
     * it took 1000 messages before the publishers were done, and then its
     * first pause lets them publish 4 x capacity + 2048 more (unless they
     * finish first, which a large run leaves no room for) into a queue
     * nobody drains; or it did not, and then it received less than was
     * offered, which by the exact accounting above are drops. */
    switch (sc->policy) {
    case RBUS_BLOCK:
        assert_int_equal(drops, 0);
        assert_int_equal(got, expected);
        break;
    case RBUS_DROP_OLDEST:
        assert_int_equal(st.dropped_newest, 0);
        if (want_drops)
            assert_true(st.dropped_oldest > 0);
        break;
    case RBUS_DROP_NEWEST:
        assert_int_equal(st.dropped_oldest, 0);
        if (want_drops)
            assert_true(st.dropped_newest > 0);
        break;
    }
}

/* NPUB publishers of per_pub messages each over `topics` run to
 * completion, then the bus is closed and the receivers drain to
 * -ESHUTDOWN. */
static void run_publishers_then_close(rbus *bus, struct pub_ctx *pcs, uint64_t per_pub,
                                      rbus_topic **topics, uint32_t ntopics)
{
    for (uint32_t i = 0; i < NPUB; i++) {
        memset(&pcs[i], 0, sizeof pcs[i]);
        pcs[i].id = i;
        pcs[i].count = per_pub;
        pcs[i].topics = topics;
        pcs[i].ntopics = ntopics;
    }
    rbus_test_threads_run(NPUB, publisher_main, pcs, sizeof *pcs);
    atomic_store(&g_pubs_done, true);
    rbus_close(bus);
    atomic_store(&g_bus_closed, true);
}

static void reset_globals(void)
{
    rbus_test_errors_reset();
    atomic_store(&g_published, 0);
    atomic_store(&g_pubs_done, false);
    atomic_store(&g_bus_closed, false);
}

/* The watchdog for one test: started before its threads, stopped after. */
static void start_watchdog(void)
{
    rbus_test_watchdog_start(&g_watchdog, "stress", WATCHDOG_MS, NPUB + MAX_RECV, g_doing);
}

/* ---------------------------------------------------------------- tests */

static const char *const one_topic[] = {"stress.one"};

/* One topic, three subscriptions (one per policy), the BLOCK one shared by
 * two competing receivers (batch and single). */
static void test_stress_fanout_three_policies_one_topic(void **state)
{
    (void)state;
    reset_globals();
    const uint64_t total_req = rbus_test_scaled(1200000, 20000);
    const uint64_t per_pub = total_req / NPUB;
    const uint64_t total = per_pub * NPUB;
    const bool want_drops = total >= 200000;
    printf("stress: %d publishers x %llu messages = %llu pushed (1 topic, 3 subs cap %d)\n",
           NPUB, (unsigned long long)per_pub, (unsigned long long)total, SUB_CAP);
    g_topic_names = one_topic;

    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *topic = NULL;
    assert_rbus_ok(rbus_topic_open(bus, one_topic[0], &topic));

    static struct sub_ctx block, oldest, newest;
    sub_ctx_init(&block, bus, "block", "stress.one", RBUS_BLOCK, 1, per_pub);
    sub_ctx_init(&oldest, bus, "drop-oldest", "stress.*", RBUS_DROP_OLDEST, 1, per_pub);
    sub_ctx_init(&newest, bus, "drop-newest", "stress.>", RBUS_DROP_NEWEST, 1, per_pub);

    static struct recv_ctx rb[2], ro[1], rn[1];
    static struct rbus_test_threads receivers;
    start_watchdog();
    rbus_test_threads_init(&receivers);
    add_receiver(&receivers, &rb[0], &block, true, false);
    add_receiver(&receivers, &rb[1], &block, false, false);
    add_receiver(&receivers, &ro[0], &oldest, true, true);
    add_receiver(&receivers, &rn[0], &newest, false, true);
    rbus_test_threads_start(&receivers);

    static struct pub_ctx pcs[NPUB];
    rbus_topic *topics[1] = {topic};
    run_publishers_then_close(bus, pcs, per_pub, topics, 1);
    rbus_test_threads_join(&receivers);
    rbus_test_watchdog_stop(&g_watchdog);
    rbus_test_assert_no_thread_errors();

    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(topic, &ts));
    assert_int_equal(ts.published, total);
    assert_int_equal(ts.duplicates, 0);

    check_sub_final(&block, rb, 2, total, want_drops);
    check_sub_final(&oldest, ro, 1, total, want_drops);
    check_sub_final(&newest, rn, 1, total, want_drops);

    /* BLOCK: every (publisher, counter) exactly once. */
    for (uint32_t p = 0; p < NPUB; p++)
        for (uint64_t c = 1; c <= per_pub; c++)
            assert_int_equal(atomic_load_explicit(&block.seen[p * (per_pub + 1) + c],
                                                  memory_order_relaxed),
                             1);
    /* The competing receivers split the stream; both own part of it only if
     * the scheduler let both run, so only their sum is checked. */
    assert_int_equal(rb[0].got + rb[1].got, total);

    /* After close and drain, -ESHUTDOWN is final, and publishing is refused. */
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(block.sub, &m, 0), -ESHUTDOWN);
    assert_null(m);
    assert_rbus_rc(rbus_recv_batch(oldest.sub, &m, 1, 0), -ESHUTDOWN);
    struct rbus_test_payload p = {0, 0, 0};
    assert_rbus_rc(rbus_publish(topic, &p, sizeof p), -ESHUTDOWN);

    assert_rbus_ok(rbus_unsubscribe(block.sub));
    assert_rbus_ok(rbus_unsubscribe(oldest.sub));
    assert_rbus_ok(rbus_unsubscribe(newest.sub));
    rbus_destroy(bus);
    sub_ctx_free(&block);
    sub_ctx_free(&oldest);
    sub_ctx_free(&newest);
    printf("stress: %d publishers x %llu messages = %llu pushed: done\n", NPUB,
           (unsigned long long)per_pub, (unsigned long long)total);
}

#define NTOPICS 4
static const char *const multi_topics[NTOPICS] = {"stress.a", "stress.b", "stress.c.x",
                                                  "stress.d.y.z"};

/* Several topics; `stress.>` subscriptions see every publisher's messages in
 * its publish order across topics. */
static void test_stress_wildcard_order_across_topics(void **state)
{
    (void)state;
    reset_globals();
    const uint64_t total_req = rbus_test_scaled(300000, 10000);
    const uint64_t per_pub = total_req / NPUB;
    const uint64_t total = per_pub * NPUB;
    const bool want_drops = total >= 200000;
    printf("stress: %d publishers x %llu messages = %llu pushed (%d topics, patterns "
           "stress.> and stress.*)\n",
           NPUB, (unsigned long long)per_pub, (unsigned long long)total, NTOPICS);
    g_topic_names = multi_topics;

    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *topics[NTOPICS];
    for (int t = 0; t < NTOPICS; t++)
        assert_rbus_ok(rbus_topic_open(bus, multi_topics[t], &topics[t]));

    static struct sub_ctx all_block, all_oldest, one_newest;
    sub_ctx_init(&all_block, bus, "all-block", "stress.>", RBUS_BLOCK, 0xF, per_pub);
    sub_ctx_init(&all_oldest, bus, "all-oldest", "stress.>", RBUS_DROP_OLDEST, 0xF, per_pub);
    /* stress.* matches the one-token topics only: stress.a and stress.b. */
    sub_ctx_init(&one_newest, bus, "one-newest", "stress.*", RBUS_DROP_NEWEST, 0x3, per_pub);
    /* Seq bookkeeping on the BLOCK sub (one receiver). */
    for (int t = 0; t < NTOPICS; t++) {
        all_block.seen_seq[t] = calloc((size_t)total + 1, sizeof(uint64_t));
        all_block.seq_limit = total;
        assert_non_null(all_block.seen_seq[t]);
    }

    static struct recv_ctx rb[1], ro[2], rn[1];
    static struct rbus_test_threads receivers;
    start_watchdog();
    rbus_test_threads_init(&receivers);
    add_receiver(&receivers, &rb[0], &all_block, true, false);
    add_receiver(&receivers, &ro[0], &all_oldest, true, true);
    add_receiver(&receivers, &ro[1], &all_oldest, false, false);
    add_receiver(&receivers, &rn[0], &one_newest, false, true);
    rbus_test_threads_start(&receivers);

    static struct pub_ctx pcs[NPUB];
    run_publishers_then_close(bus, pcs, per_pub, topics, NTOPICS);
    /* Competing receivers on all-oldest: the pausing one stops, the other
     * keeps taking, so drops there are not certain; both keep order. */
    rbus_test_threads_join(&receivers);
    rbus_test_watchdog_stop(&g_watchdog);
    rbus_test_assert_no_thread_errors();

    uint64_t per_topic[NTOPICS] = {0};
    for (uint32_t i = 0; i < NPUB; i++)
        for (int t = 0; t < NTOPICS; t++)
            per_topic[t] += pcs[i].per_topic[t];
    for (int t = 0; t < NTOPICS; t++) {
        rbus_topic_stats ts;
        assert_rbus_ok(rbus_topic_stats_get(topics[t], &ts));
        printf("stress:   topic %-13s published %llu\n", multi_topics[t],
               (unsigned long long)ts.published);
        assert_int_equal(ts.published, per_topic[t]);
        /* Every sequence number 1..published reached the BLOCK sub once. */
        for (uint64_t s = 1; s <= per_topic[t]; s++)
            assert_int_equal(all_block.seen_seq[t][s], 1);
        assert_int_equal(all_block.seen_seq[t][0], 0);
    }

    check_sub_final(&all_block, rb, 1, total, want_drops);
    check_sub_final(&all_oldest, ro, 2, total, false);
    check_sub_final(&one_newest, rn, 1, per_topic[0] + per_topic[1], want_drops);
    for (uint32_t p = 0; p < NPUB; p++)
        for (uint64_t c = 1; c <= per_pub; c++)
            assert_int_equal(atomic_load_explicit(&all_block.seen[p * (per_pub + 1) + c],
                                                  memory_order_relaxed),
                             1);

    assert_rbus_ok(rbus_unsubscribe(all_block.sub));
    assert_rbus_ok(rbus_unsubscribe(all_oldest.sub));
    assert_rbus_ok(rbus_unsubscribe(one_newest.sub));
    rbus_destroy(bus);
    sub_ctx_free(&all_block);
    sub_ctx_free(&all_oldest);
    sub_ctx_free(&one_newest);
    printf("stress: %d publishers x %llu messages = %llu pushed: done\n", NPUB,
           (unsigned long long)per_pub, (unsigned long long)total);
}

int main(void)
{
    rbus_test_print_scale("stress");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress_fanout_three_policies_one_topic),
        cmocka_unit_test(test_stress_wildcard_order_across_topics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
