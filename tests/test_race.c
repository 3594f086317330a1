/*
 * test_race.c - subscribe/unsubscribe churn under continuous publishing.
 *
 * Two publisher threads publish without pause, alternating between the
 * topics race.a and race.b; payload (publisher, counter, topic), counters
 * from 1, and after each publish returns the publisher stores its counter
 * in upto[p]. The main thread keeps up to three subscriptions alive (exact
 * and wildcard patterns), each with its own receiver thread, and replaces
 * one per cycle.
 *
 * For a subscription, with pre[p] read just before rbus_subscribe,
 * start[p] just after it returned, end[p] just before rbus_sub_close and
 * end2[p] just after it returned:
 *   - nothing <= pre[p] arrives (those publishes finished before it
 *     existed);
 *   - under RBUS_BLOCK every matching counter in [start[p] + 2, end[p]]
 *     arrives (start[p] + 1 may have been in flight during subscribe; every
 *     later publish began after subscribe returned and ended before close);
 *   - nothing > end2[p] + 1 arrives (later publishes began after close);
 *   - counters of one publisher strictly increase (one receiver per sub),
 *     so no duplicates;
 *   - after the receiver drained to -ESHUTDOWN: offered == received + depth
 *     + drops exactly, depth 0; then rbus_unsubscribe.
 * The topics' subscription counts follow the churn exactly.
 */
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "harness.h"

/* ------------------------------------------------------------ publishers */

#define NPUB 2
#define NTOPIC 2
#define MAXLIVE 3

static const char *const topic_names[NTOPIC] = {"race.a", "race.b"};

static rbus_topic *g_topics[NTOPIC];
static _Atomic uint64_t upto[NPUB]; /* last counter whose publish returned */
static atomic_bool g_stop;
static uint64_t g_per_topic[NPUB][NTOPIC];

static uint32_t topic_of(uint64_t counter)
{
    return (uint32_t)(counter % NTOPIC);
}

/* Catches a publisher stuck in rbus_publish, which wait_progress would
 * otherwise wait for forever. */
static struct rbus_test_watchdog g_watchdog;
static _Atomic(const char *) g_doing[NPUB];

static void *publisher_main(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    for (uint64_t c = 1; !atomic_load_explicit(&g_stop, memory_order_relaxed); c++) {
        struct rbus_test_payload p = {id, topic_of(c), c};
        rbus_test_doing(&g_watchdog, (int)id, "rbus_publish");
        int rc = rbus_publish(g_topics[p.topic], &p, sizeof p);
        rbus_test_doing(&g_watchdog, (int)id, "between publishes");
        rbus_test_progress(&g_watchdog);
        if (rc != 0) {
            rbus_test_report("publisher %u: publish #%llu: %d (%s)", id, (unsigned long long)c, rc,
                             rbus_strerror(rc));
            break;
        }
        g_per_topic[id][p.topic]++;
        atomic_store_explicit(&upto[id], c, memory_order_release);
    }
    return NULL;
}

/* --------------------------------------------------------- subscriptions */

struct pattern_def {
    const char *pattern;
    uint32_t mask; /* bit t: topic t matches */
};

static const struct pattern_def patterns[] = {
    {"race.a", 1}, {"race.>", 3}, {"race.b", 2}, {"race.*", 3},
    {"*.a", 1},    {">", 3},      {"*.*", 3},    {"*.b", 2},
};
#define NPATTERNS (sizeof patterns / sizeof patterns[0])

struct counters {
    uint64_t *v;
    size_t n, cap;
};

struct live_sub {
    bool used;
    unsigned cycle;
    rbus_sub *sub;
    const struct pattern_def *pd;
    rbus_overflow policy;
    bool batch;
    uint64_t pre[NPUB], start[NPUB], end[NPUB], end2[NPUB];
    struct counters got[NPUB];
    uint64_t total;
    atomic_bool closed;
    pthread_t thread;
};

static struct live_sub slots[MAXLIVE];

static void counters_push(struct counters *c, uint64_t v)
{
    if (c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 4096;
        uint64_t *nv = realloc(c->v, ncap * sizeof *nv);
        if (nv == NULL) {
            rbus_test_report("out of memory in the test");
            return;
        }
        c->v = nv;
        c->cap = ncap;
    }
    c->v[c->n++] = v;
}

static void take(struct live_sub *ls, const rbus_msg *m)
{
    struct rbus_test_payload p;
    if (!rbus_test_payload_get(m, &p)) {
        rbus_test_report("cycle %u: size %zu", ls->cycle, rbus_msg_size(m));
        return;
    }
    if (p.pub >= NPUB || p.topic >= NTOPIC || topic_of(p.counter) != p.topic) {
        rbus_test_report("cycle %u: bad payload", ls->cycle);
        return;
    }
    const char *tn = rbus_msg_topic(m);
    if (tn == NULL || strcmp(tn, topic_names[p.topic]) != 0 ||
        !rbus_pattern_match(ls->pd->pattern, tn) || !(ls->pd->mask & (1u << p.topic))) {
        rbus_test_report("cycle %u: pattern %s got topic %s", ls->cycle, ls->pd->pattern,
                         tn ? tn : "(null)");
        return;
    }
    struct counters *c = &ls->got[p.pub];
    if (c->n > 0 && p.counter <= c->v[c->n - 1]) {
        rbus_test_report("cycle %u (%s): publisher %u: %llu after %llu", ls->cycle, ls->pd->pattern,
                         p.pub, (unsigned long long)p.counter, (unsigned long long)c->v[c->n - 1]);
        return;
    }
    counters_push(c, p.counter);
    ls->total++;
}

static void *receiver_main(void *arg)
{
    struct live_sub *ls = arg;
    rbus_msg *msgs[32];
    for (;;) {
        /* Closed before the call began: the call must not time out. */
        bool closed_before = atomic_load(&ls->closed);
        int n;
        if (ls->batch) {
            n = rbus_recv_batch(ls->sub, msgs, 32, INT64_C(2000000000));
        } else {
            n = rbus_recv(ls->sub, &msgs[0], INT64_C(2000000000));
            if (n == 0)
                n = 1;
        }
        if (n == -ESHUTDOWN)
            return NULL;
        if (n == -ETIMEDOUT) {
            if (closed_before) {
                rbus_test_report("cycle %u: no -ESHUTDOWN 2 s after rbus_sub_close", ls->cycle);
                return NULL;
            }
            continue;
        }
        if (n < 0) {
            rbus_test_report("cycle %u: receive: %d (%s)", ls->cycle, n, rbus_strerror(n));
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            take(ls, msgs[i]);
            rbus_msg_release(msgs[i]);
        }
    }
}

static void read_upto(uint64_t *out)
{
    for (int p = 0; p < NPUB; p++)
        out[p] = atomic_load_explicit(&upto[p], memory_order_acquire);
}

/* Topic subscription counts must equal the open subscriptions matching. */
static void check_topic_counts(void)
{
    for (uint32_t t = 0; t < NTOPIC; t++) {
        uint32_t want = 0;
        for (int s = 0; s < MAXLIVE; s++)
            if (slots[s].used && !atomic_load(&slots[s].closed) && (slots[s].pd->mask & (1u << t)))
                want++;
        rbus_topic_stats ts;
        assert_rbus_ok(rbus_topic_stats_get(g_topics[t], &ts));
        assert_int_equal(ts.subscriptions, want);
    }
}

static void open_slot(rbus *bus, struct live_sub *ls, unsigned cycle)
{
    for (int p = 0; p < NPUB; p++)
        free(ls->got[p].v);
    memset(ls, 0, sizeof *ls);
    ls->cycle = cycle;
    ls->pd = &patterns[cycle % NPATTERNS];
    ls->policy = cycle % 5 == 4 ? RBUS_DROP_OLDEST : RBUS_BLOCK;
    ls->batch = cycle % 2 == 0;
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = ls->policy == RBUS_BLOCK ? 128 : 32;
    o.overflow = ls->policy;
    o.spin_ns = cycle % 3 == 0 ? -1 : 0;
    read_upto(ls->pre);
    assert_rbus_ok(rbus_subscribe(bus, ls->pd->pattern, &o, &ls->sub));
    read_upto(ls->start);
    ls->used = true;
    check_topic_counts();
    assert_int_equal(pthread_create(&ls->thread, NULL, receiver_main, ls), 0);
}

static void wait_progress(const uint64_t *from, uint64_t by)
{
    for (;;) {
        uint64_t now[NPUB];
        read_upto(now);
        bool ok = true;
        for (int p = 0; p < NPUB; p++)
            ok = ok && now[p] >= from[p] + by;
        if (ok || rbus_test_error_count() != 0)
            return;
        rbus_test_sleep_us(50);
    }
}

static uint64_t g_checked_msgs;
static unsigned g_block_subs, g_drop_subs;

static void retire_slot(struct live_sub *ls)
{
    read_upto(ls->end);
    assert_rbus_ok(rbus_sub_close(ls->sub));
    read_upto(ls->end2);
    atomic_store(&ls->closed, true);
    check_topic_counts();
    assert_int_equal(pthread_join(ls->thread, NULL), 0);
    rbus_test_assert_no_thread_errors();
    /* A publish that was in flight during rbus_sub_close (at most counter
     * end2 + 1 per publisher: e.g. one asleep waiting for room, which counts
     * dropped_closed only when it wakes) may still be touching the counters.
     * Once each publisher has returned from a later publish, none is: the
     * stats must then be exact. */
    wait_progress(ls->end2, 2);

    rbus_sub_stats st;
    rbus_test_sub_stats_checked(ls->sub, &st);
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.received, ls->total);
    assert_int_equal(st.dropped_timeout, 0);
    if (ls->policy == RBUS_BLOCK) {
        assert_int_equal(st.dropped_newest, 0);
        assert_int_equal(st.dropped_oldest, 0);
        g_block_subs++;
    } else {
        assert_int_equal(st.dropped_newest, 0);
        g_drop_subs++;
    }

    for (int p = 0; p < NPUB; p++) {
        struct counters *c = &ls->got[p];
        if (c->n > 0) {
            if (c->v[0] <= ls->pre[p]) {
                print_error("cycle %u (%s): publisher %d: got %llu, finished before subscribe "
                            "(pre %llu)\n",
                            ls->cycle, ls->pd->pattern, p, (unsigned long long)c->v[0],
                            (unsigned long long)ls->pre[p]);
                fail();
            }
            if (c->v[c->n - 1] > ls->end2[p] + 1) {
                print_error("cycle %u (%s): publisher %d: got %llu, begun after sub_close "
                            "(end2 %llu)\n",
                            ls->cycle, ls->pd->pattern, p, (unsigned long long)c->v[c->n - 1],
                            (unsigned long long)ls->end2[p]);
                fail();
            }
        }
        if (ls->policy != RBUS_BLOCK)
            continue;
        /* Every matching counter in [start + 2, end] is there. */
        size_t i = 0;
        for (uint64_t want = ls->start[p] + 2; want <= ls->end[p]; want++) {
            if (!(ls->pd->mask & (1u << topic_of(want))))
                continue;
            while (i < c->n && c->v[i] < want)
                i++;
            if (i == c->n || c->v[i] != want) {
                print_error("cycle %u (%s, BLOCK): publisher %d: counter %llu missing "
                            "(start %llu, end %llu, got %zu, next got %llu)\n",
                            ls->cycle, ls->pd->pattern, p, (unsigned long long)want,
                            (unsigned long long)ls->start[p], (unsigned long long)ls->end[p],
                            c->n, i < c->n ? (unsigned long long)c->v[i] : 0ULL);
                fail();
            }
        }
    }
    g_checked_msgs += ls->total;
    assert_rbus_ok(rbus_unsubscribe(ls->sub));
    ls->sub = NULL;
    ls->used = false;
    check_topic_counts();
}

static void test_race_subscribe_unsubscribe_churn_under_publishing(void **state)
{
    (void)state;
    const unsigned cycles = (unsigned)rbus_test_scaled(200, 20);
    printf("race: %d publishers on %d topics, %u subscribe/unsubscribe cycles, up to %d live "
           "subscriptions\n",
           NPUB, NTOPIC, cycles, MAXLIVE);
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    for (int t = 0; t < NTOPIC; t++)
        assert_rbus_ok(rbus_topic_open(bus, topic_names[t], &g_topics[t]));
    atomic_store(&g_stop, false);
    for (int p = 0; p < NPUB; p++)
        atomic_store(&upto[p], 0);
    memset(g_per_topic, 0, sizeof g_per_topic);
    memset(slots, 0, sizeof slots);

    rbus_test_watchdog_start(&g_watchdog, "race", 60000, NPUB, g_doing);
    static struct rbus_test_threads pubs;
    rbus_test_threads_init(&pubs);
    rbus_test_threads_add_n(&pubs, NPUB, publisher_main, NULL, 1); /* ids 0..NPUB-1 */
    rbus_test_threads_start(&pubs);

    for (unsigned cycle = 0; cycle < cycles; cycle++) {
        struct live_sub *ls = &slots[cycle % MAXLIVE];
        if (ls->used)
            retire_slot(ls);
        open_slot(bus, ls, cycle);
        /* Let the new subscription see a stretch of traffic. */
        wait_progress(ls->start, 40);
        rbus_test_assert_no_thread_errors();
    }
    for (int s = 0; s < MAXLIVE; s++)
        if (slots[s].used)
            retire_slot(&slots[s]);

    atomic_store(&g_stop, true);
    rbus_test_threads_join(&pubs);
    rbus_test_watchdog_stop(&g_watchdog);
    rbus_test_assert_no_thread_errors();
    for (int t = 0; t < NTOPIC; t++) {
        rbus_topic_stats ts;
        assert_rbus_ok(rbus_topic_stats_get(g_topics[t], &ts));
        uint64_t want = 0;
        for (int p = 0; p < NPUB; p++)
            want += g_per_topic[p][t];
        assert_int_equal(ts.published, want);
        assert_int_equal(ts.subscriptions, 0);
    }
    uint64_t last[NPUB];
    read_upto(last);
    printf("race: published %llu + %llu, %u BLOCK and %u DROP_OLDEST subscriptions checked, "
           "%llu deliveries checked\n",
           (unsigned long long)last[0], (unsigned long long)last[1], g_block_subs, g_drop_subs,
           (unsigned long long)g_checked_msgs);
    rbus_close(bus);
    rbus_destroy(bus);
    for (int s = 0; s < MAXLIVE; s++)
        for (int p = 0; p < NPUB; p++)
            free(slots[s].got[p].v);
}

/* Close races with receivers entering a wait on an empty queue: each
 * round two receivers call rbus_recv (5 s timeout) at about the moment the
 * subscription (or the whole bus) is closed. None may miss the wake-up
 * (-ETIMEDOUT would mean a lost wake-up); a message queued before the close
 * goes to exactly one of them; the other gets -ESHUTDOWN. */
struct blocked_recv {
    rbus_sub *sub;
    atomic_int entered;
    int rc;
};

static void *blocked_recv_main(void *arg)
{
    struct blocked_recv *b = arg;
    atomic_store(&b->entered, 1);
    rbus_msg *m = NULL;
    b->rc = rbus_recv(b->sub, &m, INT64_C(5000000000));
    rbus_msg_release(m);
    return NULL;
}

static void test_race_close_wakes_receivers_entering_a_wait(void **state)
{
    (void)state;
    const unsigned rounds = (unsigned)rbus_test_scaled(300, 20);
    printf("race: %u rounds of close racing with receivers entering a wait\n", rounds);
    unsigned got_msg = 0;
    for (unsigned r = 0; r < rounds; r++) {
        rbus *bus = NULL;
        assert_rbus_ok(rbus_create(&bus, NULL));
        rbus_topic *t = NULL;
        assert_rbus_ok(rbus_topic_open(bus, "race.idle", &t));
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.spin_ns = r % 3 == 0 ? -1 : 0;
        rbus_sub *sub = NULL;
        assert_rbus_ok(rbus_subscribe(bus, r % 3 ? "race.*" : "race.idle", &o, &sub));
        static struct blocked_recv b[2];
        static struct rbus_test_threads th;
        rbus_test_threads_init(&th);
        for (int i = 0; i < 2; i++) {
            b[i].sub = sub;
            atomic_store(&b[i].entered, 0);
            b[i].rc = 1;
        }
        rbus_test_threads_add_n(&th, 2, blocked_recv_main, b, sizeof *b);
        rbus_test_threads_start_free(&th);
        if (r % 4 >= 2) {
            for (int i = 0; i < 2; i++)
                while (!atomic_load(&b[i].entered))
                    sched_yield();
        }
        if (r % 8 >= 6)
            rbus_test_sleep_us(300); /* often asleep in the kernel by now; not required */
        bool published = r % 5 == 1;
        if (published) {
            uint32_t v = r;
            assert_rbus_ok(rbus_publish(t, &v, sizeof v));
        }
        if (r % 2)
            assert_rbus_ok(rbus_sub_close(sub));
        else
            rbus_close(bus);
        int ok = 0, shut = 0;
        rbus_test_threads_join(&th);
        for (int i = 0; i < 2; i++) {
            if (b[i].rc == 0)
                ok++;
            else if (b[i].rc == -ESHUTDOWN)
                shut++;
            else
                fail_msg("round %u: receiver returned %d (%s)%s", r, b[i].rc,
                         rbus_strerror(b[i].rc),
                         b[i].rc == -ETIMEDOUT ? ": lost wake-up on close" : "");
        }
        assert_int_equal(ok, published ? 1 : 0);
        assert_int_equal(shut, published ? 1 : 2);
        got_msg += (unsigned)ok;
        rbus_sub_stats st;
        rbus_test_sub_stats_checked(sub, &st);
        assert_int_equal(st.received, published ? 1 : 0);
        assert_int_equal(st.depth, 0);
        assert_rbus_ok(rbus_unsubscribe(sub));
        rbus_topic_stats ts;
        assert_rbus_ok(rbus_topic_stats_get(t, &ts));
        assert_int_equal(ts.subscriptions, 0);
        rbus_destroy(bus);
    }
    printf("race: %u messages handed over at close\n", got_msg);
}

int main(void)
{
    rbus_test_print_scale("race");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_race_subscribe_unsubscribe_churn_under_publishing),
        cmocka_unit_test(test_race_close_wakes_receivers_entering_a_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
