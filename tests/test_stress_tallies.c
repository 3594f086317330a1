/*
 * test_stress_tallies.c - the offer tallies publishers keep per
 * subscription (src/sub.c, struct rbus_tally) add up exactly.
 *
 * Each publisher state counts its own offers, drops and fast-path
 * refusals for each subscription, in a node the subscription keeps in a
 * table indexed by the state's number; stats add the nodes up. What could
 * go wrong: states recycled when publisher threads exit and new ones
 * start (a node must keep one writer), subscriptions replaced between
 * rounds (new tables, old nodes freed), subscriptions coming and going
 * while publishers run, and the overload fast path, which counts a
 * refusal as one offer and one drop-newest.
 *
 * Rounds of NPUB fresh threads each publish N messages to topic "tally.a",
 * whose subscriptions are all drop-newest and soon full (so nearly every
 * publish takes the fast path), and N to "tally.b", whose subscriptions mix
 * drop-newest and drop-oldest (the ordinary offer path). Nobody receives.
 * Every so often a publisher also publishes once on each of NOTHER other
 * buses, more than a thread keeps states for, so its state on the main bus
 * is handed back and it attaches again, often to a state another thread
 * handed back (with that state's nodes). Meanwhile the main thread
 * subscribes and unsubscribes short-lived subscriptions on both topics and
 * checks that a long-lived subscription's counts never go down.
 * After each round every subscription must show exactly
 *   offered = NPUB * N * (rounds since it subscribed),
 *   depth = its capacity, and the rest dropped by its policy,
 * and then a few subscriptions per topic are replaced by new ones.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"

#define NSUBS 40 /* per topic */
#define NPUB 4
#define ROUNDS 3
#define REPLACED 10 /* per topic and round */
#define NOTHER 9    /* other buses: one more than a thread's state slots */
#define HOP_EVERY 997

struct tally_sub {
    rbus_sub *sub;
    rbus_overflow policy;
    uint32_t capacity;
    int joined; /* the round before which it subscribed */
};

struct publisher {
    rbus_topic *a, *b;
    rbus_topic **other; /* NOTHER topics, one per other bus */
    uint64_t n;
    atomic_int *running;
    int rc; /* the first publish error, checked by the main thread */
};

static void *publisher_main(void *arg)
{
    struct publisher *p = arg;
    for (uint64_t i = 0; i < p->n && !p->rc; i++) {
        int rc = rbus_publish(p->a, &i, sizeof i);
        if (!rc)
            rc = rbus_publish(p->b, &i, sizeof i);
        for (int k = 0; !rc && i % HOP_EVERY == 0 && k < NOTHER; k++)
            rc = rbus_publish(p->other[k], &i, sizeof i);
        p->rc = rc;
    }
    atomic_fetch_sub(p->running, 1);
    return NULL;
}

/* While publishers run (at least once, however fast they are):
 * short-lived subscriptions come and go on both topics, and the long-lived
 * `watched` one's counts never go down. No cmocka assertion here, as the
 * publishers still use this test's stack: the first problem is written to
 * `error` (empty if none) and the caller fails after joining them. */
static void churn_while_publishing(rbus *bus, atomic_int *running, rbus_sub *watched,
                                   uint64_t *churned, char *error, size_t error_size)
{
    rbus_sub_stats last = {0};
    error[0] = '\0';
    do {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = 4;
        o.overflow = RBUS_DROP_NEWEST;
        rbus_sub *tmp_a = NULL, *tmp_b = NULL;
        int rc = rbus_subscribe(bus, "tally.a", &o, &tmp_a);
        o.overflow = RBUS_DROP_OLDEST;
        if (!rc)
            rc = rbus_subscribe(bus, "tally.b", &o, &tmp_b);
        rbus_sub_stats st;
        if (!rc)
            rc = rbus_sub_stats_get(watched, &st);
        if (!rc && (st.offered < last.offered || st.dropped_newest < last.dropped_newest ||
                    st.dropped_oldest < last.dropped_oldest)) {
            snprintf(error, error_size,
                     "counts went down: offered %llu -> %llu, dropped newest %llu -> %llu",
                     (unsigned long long)last.offered, (unsigned long long)st.offered,
                     (unsigned long long)last.dropped_newest,
                     (unsigned long long)st.dropped_newest);
            break;
        }
        last = st;
        if (!rc)
            rc = rbus_sub_stats_get(tmp_a, &st);
        if (!rc)
            rc = rbus_sub_stats_get(tmp_b, &st);
        if (tmp_a && !rc)
            rc = rbus_unsubscribe(tmp_a);
        if (tmp_b && !rc)
            rc = rbus_unsubscribe(tmp_b);
        if (rc) {
            snprintf(error, error_size, "churn: %s", rbus_strerror(rc));
            break;
        }
        (*churned)++;
    } while (atomic_load(running) > 0);
}

static void subscribe_one(rbus *bus, const char *topic, rbus_overflow policy, int round,
                          struct tally_sub *ts)
{
    ts->policy = policy;
    ts->sub = rbus_test_subscribe_checked(bus, topic, 4, policy, 0, &ts->capacity);
    ts->joined = round;
}

static void expect_exact(const struct tally_sub *ts, int rounds_done, uint64_t per_round)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(ts->sub, &st));
    uint64_t offered = per_round * (uint64_t)(rounds_done - ts->joined);
    uint64_t dropped = offered > ts->capacity ? offered - ts->capacity : 0;
    if (st.offered != offered || st.received != 0 || st.depth != offered - dropped ||
        st.dropped_newest != (ts->policy == RBUS_DROP_NEWEST ? dropped : 0) ||
        st.dropped_oldest != (ts->policy == RBUS_DROP_OLDEST ? dropped : 0))
        fail_msg("after round %d, a %s subscription (joined before round %d, capacity %u): "
                 "offered %llu (want %llu), depth %u, dropped newest %llu, oldest %llu "
                 "(want %llu dropped)",
                 rounds_done, ts->policy == RBUS_DROP_NEWEST ? "drop-newest" : "drop-oldest",
                 ts->joined, ts->capacity, (unsigned long long)st.offered,
                 (unsigned long long)offered, st.depth, (unsigned long long)st.dropped_newest,
                 (unsigned long long)st.dropped_oldest, (unsigned long long)dropped);
    rbus_test_check_accounting(&st);
}

static void tallies_add_up_exactly(void **state)
{
    (void)state;
    const uint64_t n = rbus_test_scaled(20000, 2000);
    printf("# tallies: %d rounds x %d fresh publisher threads x %llu publishes per topic, "
           "%d subscriptions per topic, %d replaced per round\n",
           ROUNDS, NPUB, (unsigned long long)n, NSUBS, REPLACED);
    rbus *bus;
    rbus_topic *a = rbus_test_bus_and_topic(&bus, "tally.a");
    rbus_topic *b;
    assert_rbus_ok(rbus_topic_open(bus, "tally.b", &b));
    rbus *others[NOTHER];
    rbus_topic *other_topics[NOTHER];
    rbus_test_buses_open(NOTHER, others, other_topics, "tally.other");
    uint64_t churned = 0;
    static struct tally_sub subs_a[NSUBS], subs_b[NSUBS];
    for (int i = 0; i < NSUBS; i++) {
        subscribe_one(bus, "tally.a", RBUS_DROP_NEWEST, 0, &subs_a[i]);
        subscribe_one(bus, "tally.b", i % 2 ? RBUS_DROP_OLDEST : RBUS_DROP_NEWEST, 0,
                      &subs_b[i]);
    }
    for (int round = 0; round < ROUNDS; round++) {
        struct publisher pubs[NPUB];
        static struct rbus_test_threads threads;
        atomic_int running = NPUB;
        for (int p = 0; p < NPUB; p++)
            pubs[p] = (struct publisher){
                .a = a, .b = b, .other = other_topics, .n = n, .running = &running};
        rbus_test_threads_init(&threads);
        rbus_test_threads_add_n(&threads, NPUB, publisher_main, pubs, sizeof *pubs);
        rbus_test_threads_start(&threads);
        char churn_error[200];
        churn_while_publishing(bus, &running, subs_a[NSUBS - 1].sub, &churned, churn_error,
                               sizeof churn_error);
        rbus_test_threads_join(&threads);
        if (churn_error[0])
            fail_msg("round %d: %s", round + 1, churn_error);
        for (int p = 0; p < NPUB; p++)
            assert_rbus_ok(pubs[p].rc);
        for (int i = 0; i < NSUBS; i++) {
            expect_exact(&subs_a[i], round + 1, NPUB * n);
            expect_exact(&subs_b[i], round + 1, NPUB * n);
        }
        /* Replace a different few each round: new ids, and the old
         * subscriptions' tally nodes are freed. */
        for (int k = 0; k < REPLACED; k++) {
            int i = (round * REPLACED + k * 3) % NSUBS;
            assert_rbus_ok(rbus_unsubscribe(subs_a[i].sub));
            assert_rbus_ok(rbus_unsubscribe(subs_b[i].sub));
            subscribe_one(bus, "tally.a", RBUS_DROP_NEWEST, round + 1, &subs_a[i]);
            subscribe_one(bus, "tally.b", subs_b[i].policy, round + 1, &subs_b[i]);
        }
    }
    rbus_topic_stats st;
    assert_rbus_ok(rbus_topic_stats_get(a, &st));
    assert_int_equal(st.published, (uint64_t)ROUNDS * NPUB * n);
    assert_rbus_ok(rbus_topic_stats_get(b, &st));
    assert_int_equal(st.published, (uint64_t)ROUNDS * NPUB * n);
    printf("# tallies: every subscription exact after every round (%llu short-lived "
           "subscription pairs came and went meanwhile)\n",
           (unsigned long long)churned);
    rbus_destroy(bus);
    rbus_test_buses_destroy(NOTHER, others);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tallies_add_up_exactly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
