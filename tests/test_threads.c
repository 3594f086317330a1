/*
 * test_threads.c - many short-lived publisher threads, several buses, and
 * threads that outlive (or die with) the buses they used.
 *
 * The library keeps per (thread, bus) state (an epoch record and a message
 * cache) that is recycled when a thread exits. These tests check that:
 *   - thousands of threads publishing a few messages each on several buses
 *     lose nothing, and a bus's memory does not grow with the number of
 *     threads that ever used it (a counting allocator per bus: live blocks
 *     after the first wave vs after the last);
 *   - a thread may exit after a bus it used was destroyed, while another bus
 *     it used is still alive, or at the very moment the bus is destroyed
 *     (destroy only requires that no thread still *uses* the bus); thread
 *     exit must never touch a destroyed bus (ASan/TSan see it if it does);
 *   - rbus_destroy returns every block to the allocator even while threads
 *     that used the bus are still alive.
 */
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "harness.h"

static rbus *make_bus(struct rbus_test_alloc *c)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &c->hooks;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    assert_non_null(bus);
    return bus;
}

static rbus_sub *make_sub(rbus *bus, const char *pattern, rbus_overflow policy, uint32_t cap)
{
    rbus_sub *sub = rbus_test_subscribe(bus, pattern, cap, policy, 0);
    assert_non_null(sub);
    return sub;
}

/* ---------------------------------------- many short-lived publishers */

#define NBUS 3
#define WAVE 8
#define MSGS_PER_BUS 5

struct th_payload {
    uint32_t thread; /* global thread index */
    uint32_t k;      /* 1..MSGS_PER_BUS */
    uint32_t bus;
};

struct th_bus {
    struct rbus_test_alloc alloc;
    rbus *bus;
    rbus_topic *tx, *ty;
    rbus_sub *block;  /* thr.>, every message */
    rbus_sub *oldest; /* thr.x, drop-oldest, small */
    atomic_uchar *seen;            /* BLOCK: [thread * (MSGS_PER_BUS + 1) + k] */
    atomic_ullong got_block, got_oldest;
    uint64_t published_x, published_y; /* main thread's count */
};

struct th_recv {
    struct th_bus *b;
    rbus_sub *sub;
    bool is_block;
    uint32_t nthreads;
    uint32_t *last;   /* per publisher thread: last k seen by this receiver */
};

struct th_pub {
    struct th_bus *buses;
    uint32_t index;
    uint32_t slot;
    pthread_barrier_t *bar; /* synchronised waves: meet main twice before exit */
};

static struct th_bus g_buses[NBUS];
static struct rbus_test_threads g_receivers;

static void *th_receiver(void *arg)
{
    struct th_recv *r = arg;
    rbus_msg *msgs[16];
    for (;;) {
        int n = rbus_recv_batch(r->sub, msgs, 16, -1);
        if (n == -ESHUTDOWN)
            break;
        if (n <= 0) {
            rbus_test_report("receiver: %d (%s)", n, rbus_strerror(n));
            break;
        }
        for (int i = 0; i < n; i++) {
            struct th_payload p;
            if (rbus_msg_size(msgs[i]) != sizeof p) {
                rbus_test_report("receiver: size %zu", rbus_msg_size(msgs[i]));
            } else {
                memcpy(&p, rbus_msg_data(msgs[i]), sizeof p);
                if (p.thread >= r->nthreads || p.k == 0 || p.k > MSGS_PER_BUS ||
                    &g_buses[p.bus % NBUS] != r->b) {
                    rbus_test_report("receiver: bad payload thread %u k %u bus %u", p.thread, p.k,
                                     p.bus);
                } else {
                    if (p.k <= r->last[p.thread])
                        rbus_test_report("receiver: thread %u out of order: %u after %u", p.thread,
                                         p.k, r->last[p.thread]);
                    r->last[p.thread] = p.k;
                    if (r->is_block) {
                        size_t idx = (size_t)p.thread * (MSGS_PER_BUS + 1) + p.k;
                        if (atomic_exchange(&r->b->seen[idx], 1) != 0)
                            rbus_test_report("receiver: duplicate thread %u k %u", p.thread, p.k);
                    }
                }
            }
            rbus_msg_release(msgs[i]);
        }
        atomic_fetch_add(r->is_block ? &r->b->got_block : &r->b->got_oldest, (uint64_t)n);
    }
    return NULL;
}

/* In-wave slot j publishes on bus j % NBUS, and when j is even also on
 * bus (j + 1) % NBUS: every wave puts the same load on every bus. */
static int th_bus_count(uint32_t slot, uint32_t *which)
{
    which[0] = slot % NBUS;
    if (slot % 2 == 0) {
        which[1] = (slot + 1) % NBUS;
        return 2;
    }
    return 1;
}

static void *th_publisher(void *arg)
{
    struct th_pub *p = arg;
    uint32_t which[2];
    int nb = th_bus_count(p->slot, which);
    for (uint32_t k = 1; k <= MSGS_PER_BUS; k++) {
        for (int i = 0; i < nb; i++) {
            struct th_bus *b = &p->buses[which[i]];
            struct th_payload pl = {p->index, k, which[i]};
            int rc = rbus_publish(k % 2 ? b->tx : b->ty, &pl, sizeof pl);
            if (rc != 0)
                rbus_test_report("thread %u: publish: %d (%s)", p->index, rc, rbus_strerror(rc));
        }
    }
    if (p->bar != NULL) {
        pthread_barrier_wait(p->bar); /* everything published */
        pthread_barrier_wait(p->bar); /* everything received and released */
    }
    return NULL;
}

/* Waits until every receiver has taken (and released) everything queued. */
static void th_wait_drained(void)
{
    for (int b = 0; b < NBUS; b++) {
        struct th_bus *tb = &g_buses[b];
        for (;;) {
            rbus_sub_stats sb, so;
            assert_rbus_ok(rbus_sub_stats_get(tb->block, &sb));
            assert_rbus_ok(rbus_sub_stats_get(tb->oldest, &so));
            uint64_t want_block = tb->published_x + tb->published_y;
            uint64_t want_oldest = so.offered - so.dropped_oldest;
            if (atomic_load(&tb->got_block) == want_block &&
                atomic_load(&tb->got_oldest) == want_oldest && sb.depth == 0 && so.depth == 0)
                break;
            if (rbus_test_error_count() != 0)
                return;
            rbus_test_sleep_us(100);
        }
    }
}

/* Step 1: NBUS buses, each with a counting allocator, two topics, a BLOCK
 * and a DROP_OLDEST subscription, and a receiver record for each. */
static void th_setup(uint32_t nthreads, struct th_recv *recvs)
{
    for (int b = 0; b < NBUS; b++) {
        struct th_bus *tb = &g_buses[b];
        memset(tb, 0, sizeof *tb);
        rbus_test_alloc_init(&tb->alloc);
        tb->bus = make_bus(&tb->alloc);
        assert_rbus_ok(rbus_topic_open(tb->bus, "thr.x", &tb->tx));
        assert_rbus_ok(rbus_topic_open(tb->bus, "thr.y", &tb->ty));
        tb->block = make_sub(tb->bus, "thr.>", RBUS_BLOCK, 1024);
        /* Room for wave 0's x messages: nothing is evicted while the
         * receivers have not started. */
        tb->oldest = make_sub(tb->bus, "thr.x", RBUS_DROP_OLDEST, 64);
        tb->seen = calloc((size_t)nthreads * (MSGS_PER_BUS + 1), sizeof *tb->seen);
        assert_non_null(tb->seen);
        for (int i = 0; i < 2; i++) {
            struct th_recv *r = &recvs[b * 2 + i];
            r->b = tb;
            r->is_block = i == 0;
            r->sub = i == 0 ? tb->block : tb->oldest;
            r->nthreads = nthreads;
            r->last = calloc(nthreads, sizeof *r->last);
            assert_non_null(r->last);
        }
    }
}

/* Live blocks per bus after wave 0 and after the last synchronised wave. */
struct th_live {
    long long first[NBUS], sync[NBUS];
    uint32_t sync_waves;
};

/* Step 2: the waves of publisher threads (the receivers start after the
 * first one has published). */
static void th_run_waves(uint32_t waves, struct th_recv *recvs, struct th_live *live)
{
    /* Phase 1, synchronised waves: each wave's threads all publish, then
     * wait together until the receivers have released every message, then
     * exit together. So every wave has the same threads alive at once on
     * each bus, none has a message in flight when it exits, and in wave 0
     * (receivers not started yet) every message is in flight at once: the
     * states and message caches that wave 0 creates are all later waves can
     * need. Live blocks after the last synchronised wave must equal those
     * after wave 0 (a margin of 16 is allowed).
     * Phase 2, free-running waves: threads start and exit at will (exits
     * race with publishes of others). The pool may still grow, by at most
     * one wave's messages per state, whatever the number of threads. */
    static struct th_pub pubs[WAVE];
    static struct rbus_test_threads th;
    const uint32_t sync_waves = (waves + 1) / 2;
    live->sync_waves = sync_waves;
    bool receivers_started = false;
    pthread_barrier_t bar;
    assert_int_equal(pthread_barrier_init(&bar, NULL, WAVE + 1), 0);
    for (uint32_t w = 0; w < waves; w++) {
        const bool synced = w < sync_waves;
        rbus_test_threads_init(&th);
        for (uint32_t j = 0; j < WAVE; j++) {
            pubs[j].buses = g_buses;
            pubs[j].index = w * WAVE + j;
            pubs[j].slot = j;
            pubs[j].bar = synced ? &bar : NULL;
            uint32_t which[2];
            int nb = th_bus_count(j, which);
            for (int i = 0; i < nb; i++) {
                /* Topics alternate x, y, x, ... per message, starting at x. */
                g_buses[which[i]].published_x += (MSGS_PER_BUS + 1) / 2;
                g_buses[which[i]].published_y += MSGS_PER_BUS / 2;
            }
            rbus_test_threads_add(&th, th_publisher, &pubs[j]);
        }
        rbus_test_threads_start_free(&th);
        if (synced) {
            pthread_barrier_wait(&bar);
            if (!receivers_started) {
                rbus_test_threads_init(&g_receivers);
                rbus_test_threads_add_n(&g_receivers, NBUS * 2, th_receiver, recvs, sizeof *recvs);
                rbus_test_threads_start_free(&g_receivers);
                receivers_started = true;
            }
            th_wait_drained();
            pthread_barrier_wait(&bar);
        }
        rbus_test_threads_join(&th);
        th_wait_drained();
        rbus_test_assert_no_thread_errors();
        if (getenv("RBUS_TEST_VERBOSE") != NULL)
            printf("threads:   after wave %u: live blocks %lld %lld %lld\n", w,
                   (long long)atomic_load(&g_buses[0].alloc.live_blocks),
                   (long long)atomic_load(&g_buses[1].alloc.live_blocks),
                   (long long)atomic_load(&g_buses[2].alloc.live_blocks));
        for (int b = 0; b < NBUS; b++) {
            if (w == 0)
                live->first[b] = atomic_load(&g_buses[b].alloc.live_blocks);
            if (w + 1 == sync_waves)
                live->sync[b] = atomic_load(&g_buses[b].alloc.live_blocks);
        }
    }
    pthread_barrier_destroy(&bar);
}

/* Step 3: memory did not grow with the number of threads; the buses close
 * and the receivers finish. */
static void th_check_memory(uint32_t waves, const struct th_live *live, struct th_recv *recvs)
{
    for (int b = 0; b < NBUS; b++) {
        struct th_bus *tb = &g_buses[b];
        long long live_last = atomic_load(&tb->alloc.live_blocks);
        printf("threads:   bus %d: live blocks after wave 0: %lld, after %u synchronised "
               "waves: %lld, after %u free-running waves: %lld (%lld B), allocs %lld\n",
               b, live->first[b], live->sync_waves, live->sync[b], waves - live->sync_waves,
               live_last, (long long)atomic_load(&tb->alloc.live_bytes),
               (long long)atomic_load(&tb->alloc.calls));
        assert_true(live->sync[b] <= live->first[b] + 16);
        /* At most WAVE states per bus, each growing by at most one wave's
         * messages on the bus (drained between waves). */
        assert_true(live_last <= live->sync[b] + WAVE * (2 * WAVE * MSGS_PER_BUS));
        rbus_close(tb->bus);
    }
    (void)recvs; /* they run on g_receivers */
    rbus_test_threads_join(&g_receivers);
    rbus_test_assert_no_thread_errors();
}

/* Step 4: every message arrived exactly once, the counters add up, and
 * each bus gives back every block. */
static void th_check_delivery(uint32_t nthreads)
{
    for (int b = 0; b < NBUS; b++) {
        struct th_bus *tb = &g_buses[b];
        rbus_topic_stats tsx, tsy;
        assert_rbus_ok(rbus_topic_stats_get(tb->tx, &tsx));
        assert_rbus_ok(rbus_topic_stats_get(tb->ty, &tsy));
        assert_int_equal(tsx.published, tb->published_x);
        assert_int_equal(tsy.published, tb->published_y);
        rbus_sub_stats sb, so;
        rbus_test_sub_stats_checked(tb->block, &sb);
        rbus_test_sub_stats_checked(tb->oldest, &so);
        assert_int_equal(sb.offered, tb->published_x + tb->published_y);
        assert_int_equal(sb.received, tb->published_x + tb->published_y);
        assert_int_equal(so.offered, tb->published_x);
        assert_int_equal(so.received, atomic_load(&tb->got_oldest));
        /* Every (thread, k) that published on this bus arrived exactly once. */
        uint64_t seen = 0;
        for (uint32_t t = 0; t < nthreads; t++) {
            uint32_t which[2];
            int nb = th_bus_count(t % WAVE, which);
            bool used = false;
            for (int i = 0; i < nb; i++)
                used = used || which[i] == (uint32_t)b;
            for (uint32_t k = 1; k <= MSGS_PER_BUS; k++) {
                unsigned char s = atomic_load(&tb->seen[(size_t)t * (MSGS_PER_BUS + 1) + k]);
                assert_int_equal(s, used ? 1 : 0);
                seen += s;
            }
        }
        assert_int_equal(seen, sb.received);
        assert_rbus_ok(rbus_unsubscribe(tb->block));
        assert_rbus_ok(rbus_unsubscribe(tb->oldest));
        rbus_destroy(tb->bus);
        rbus_test_alloc_assert_all_returned(&tb->alloc);
        free(tb->seen);
    }
}

static void test_threads_thousands_of_short_lived_publishers(void **state)
{
    (void)state;
    const uint32_t nthreads = (uint32_t)rbus_test_scaled(2000, 100) / WAVE * WAVE;
    const uint32_t waves = nthreads / WAVE;
    printf("threads: %u short-lived publisher threads in %u waves of %d on %d buses, "
           "%d messages per (thread, bus)\n",
           nthreads, waves, WAVE, NBUS, MSGS_PER_BUS);

    static struct th_recv recvs[NBUS * 2];
    struct th_live live;
    memset(&live, 0, sizeof live);
    th_setup(nthreads, recvs);
    th_run_waves(waves, recvs, &live);
    th_check_memory(waves, &live, recvs);
    th_check_delivery(nthreads);
    for (int i = 0; i < NBUS * 2; i++)
        free(recvs[i].last);
}

/* ------------------------------------- threads that outlive their buses */

/* A two-party gate: the worker waits at `step` until main moves it. */
struct gate {
    atomic_int step;
};

static void gate_wait(struct gate *g, int want)
{
    while (atomic_load(&g->step) < want)
        rbus_test_sleep_us(50);
}

struct outlive {
    struct gate g;
    rbus_topic *t1;    /* step 0: publish here */
    rbus_topic *t2;    /* step 0: and here, if set */
    rbus *(*next_bus)(void); /* step 2: a bus made after the first died */
    rbus_topic *t3;
    rbus_sub *s3;
    atomic_int stage;  /* what the worker has finished */
};

static void *outlive_main(void *arg)
{
    struct outlive *o = arg;
    uint64_t v = 1;
    if (rbus_publish(o->t1, &v, sizeof v) != 0)
        rbus_test_report("outlive: publish t1 failed");
    if (o->t2 != NULL && rbus_publish(o->t2, &v, sizeof v) != 0)
        rbus_test_report("outlive: publish t2 failed");
    atomic_store(&o->stage, 1);
    gate_wait(&o->g, 1); /* main destroys a bus meanwhile */
    if (o->t3 != NULL) {
        /* A bus created after the first one was destroyed (perhaps at the
         * same address): this thread's stale state must not be used. */
        for (uint64_t i = 0; i < 100; i++) {
            int rc = rbus_publish(o->t3, &i, sizeof i);
            if (rc != 0)
                rbus_test_report("outlive: publish on the new bus: %d (%s)", rc, rbus_strerror(rc));
            rbus_msg *m = NULL;
            rc = rbus_recv(o->s3, &m, 0);
            if (rc != 0)
                rbus_test_report("outlive: recv on the new bus: %d (%s)", rc, rbus_strerror(rc));
            else if (rbus_msg_seq(m) != i + 1)
                rbus_test_report("outlive: seq %llu want %llu", (unsigned long long)rbus_msg_seq(m),
                                 (unsigned long long)(i + 1));
            rbus_msg_release(m);
        }
    }
    atomic_store(&o->stage, 2);
    return NULL; /* thread exit: the library's cleanup runs now */
}

static void test_threads_exit_after_their_bus_was_destroyed(void **state)
{
    (void)state;
    static struct rbus_test_alloc c1, c2, c3;

    /* Variant A: the thread used one bus; the bus dies; the thread exits. */
    {
        rbus_test_alloc_init(&c1);
        rbus *b1 = make_bus(&c1);
        static struct outlive o;
        memset(&o, 0, sizeof o);
        rbus_sub *s = make_sub(b1, ">", RBUS_BLOCK, 8);
        (void)s;
        assert_rbus_ok(rbus_topic_open(b1, "a.b", &o.t1));
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, outlive_main, &o), 0);
        while (atomic_load(&o.stage) < 1)
            rbus_test_sleep_us(50);
        rbus_destroy(b1); /* the thread is alive, done with the bus */
        rbus_test_alloc_assert_all_returned(&c1);
        atomic_store(&o.g.step, 1);
        assert_int_equal(pthread_join(th, NULL), 0);
        rbus_test_alloc_assert_all_returned(&c1);
        rbus_test_assert_no_thread_errors();
        printf("threads: variant A (thread exits after its only bus died): ok\n");
    }

    /* Variant B: the thread used two buses; one dies; the thread exits; the
     * other is destroyed after. */
    {
        rbus_test_alloc_init(&c1);
        rbus_test_alloc_init(&c2);
        rbus *b1 = make_bus(&c1);
        rbus *b2 = make_bus(&c2);
        static struct outlive o;
        memset(&o, 0, sizeof o);
        (void)make_sub(b1, ">", RBUS_DROP_OLDEST, 8);
        rbus_sub *s2 = make_sub(b2, ">", RBUS_BLOCK, 8);
        assert_rbus_ok(rbus_topic_open(b1, "one", &o.t1));
        assert_rbus_ok(rbus_topic_open(b2, "two", &o.t2));
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, outlive_main, &o), 0);
        while (atomic_load(&o.stage) < 1)
            rbus_test_sleep_us(50);
        rbus_destroy(b1);
        rbus_test_alloc_assert_all_returned(&c1);
        atomic_store(&o.g.step, 1);
        assert_int_equal(pthread_join(th, NULL), 0);
        rbus_test_assert_no_thread_errors();
        /* The surviving bus still works and still has the message. */
        rbus_msg *m = NULL;
        assert_rbus_ok(rbus_recv(s2, &m, 0));
        assert_string_equal(rbus_msg_topic(m), "two");
        rbus_msg_release(m);
        rbus_topic *t = NULL;
        assert_rbus_ok(rbus_topic_open(b2, "two", &t));
        uint32_t v = 9;
        assert_rbus_ok(rbus_publish(t, &v, sizeof v));
        rbus_destroy(b2);
        rbus_test_alloc_assert_all_returned(&c1);
        rbus_test_alloc_assert_all_returned(&c2);
        printf("threads: variant B (two buses, one dies first): ok\n");
    }

    /* Variant C: the thread used a bus that died; a new bus is made (the
     * allocator may well hand out the same addresses); the same thread uses
     * the new bus, then exits; then the new bus dies. */
    {
        rbus_test_alloc_init(&c1);
        rbus_test_alloc_init(&c3);
        rbus *b1 = make_bus(&c1);
        static struct outlive o;
        memset(&o, 0, sizeof o);
        (void)make_sub(b1, ">", RBUS_BLOCK, 8);
        assert_rbus_ok(rbus_topic_open(b1, "first", &o.t1));
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, outlive_main, &o), 0);
        while (atomic_load(&o.stage) < 1)
            rbus_test_sleep_us(50);
        void *old_addr = (void *)b1;
        rbus_destroy(b1);
        rbus_test_alloc_assert_all_returned(&c1);
        rbus *b3 = make_bus(&c3);
        o.s3 = make_sub(b3, "first", RBUS_BLOCK, 4);
        assert_rbus_ok(rbus_topic_open(b3, "first", &o.t3));
        printf("threads: variant C: new bus %s the old one's address\n",
               (void *)b3 == old_addr ? "reuses" : "does not reuse");
        atomic_store(&o.g.step, 1);
        assert_int_equal(pthread_join(th, NULL), 0);
        rbus_test_assert_no_thread_errors();
        rbus_topic_stats ts;
        assert_rbus_ok(rbus_topic_stats_get(o.t3, &ts));
        assert_int_equal(ts.published, 100);
        rbus_destroy(b3);
        rbus_test_alloc_assert_all_returned(&c3);
        printf("threads: variant C (a new bus after the old one died): ok\n");
    }
}

/* One thread uses many buses one after the other, each destroyed before
 * the next is made, then exits. Whatever per-thread table the library keeps
 * must not leak or grow without bound (ASan/LSan check the former). */
static void *serial_buses_main(void *arg)
{
    unsigned n = *(unsigned *)arg;
    for (unsigned i = 0; i < n; i++) {
        struct rbus_test_alloc c;
        rbus_test_alloc_init(&c);
        rbus_config cfg;
        rbus_config_init(&cfg);
        cfg.allocator = &c.hooks;
        rbus *bus = NULL;
        if (rbus_create(&bus, &cfg) != 0) {
            rbus_test_report("serial: create failed");
            return NULL;
        }
        rbus_topic *t = NULL;
        rbus_sub *s = NULL;
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = 4;
        if (rbus_topic_open(bus, "s.t", &t) != 0 || rbus_subscribe(bus, "s.>", &o, &s) != 0) {
            rbus_test_report("serial: setup failed");
        } else {
            for (unsigned k = 0; k < 3; k++) {
                if (rbus_publish(t, &k, sizeof k) != 0)
                    rbus_test_report("serial: publish failed");
                rbus_msg *m = NULL;
                if (rbus_recv(s, &m, 0) != 0)
                    rbus_test_report("serial: recv failed");
                rbus_msg_release(m);
            }
        }
        rbus_destroy(bus);
        if (atomic_load(&c.live_blocks) != 0)
            rbus_test_report("serial: bus %u: %lld blocks live after destroy", i,
                             (long long)atomic_load(&c.live_blocks));
    }
    return NULL;
}

static void test_threads_one_thread_many_buses_in_turn(void **state)
{
    (void)state;
    unsigned n = (unsigned)rbus_test_scaled(300, 20);
    printf("threads: one thread uses %u buses in turn (x2 threads)\n", n);
    rbus_test_threads_run(2, serial_buses_main, &n, 0);
    rbus_test_assert_no_thread_errors();
}

/* Threads publish, meet main at a barrier, and exit while main destroys the
 * bus: their exit cleanup races with destroy, which the contract allows
 * (they no longer use the bus). */
struct racer {
    rbus_topic *t;
    pthread_barrier_t *bar;
    uint32_t id;
};

static void *racer_main(void *arg)
{
    struct racer *r = arg;
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t v[2] = {r->id, k};
        int rc = rbus_publish(r->t, v, sizeof v);
        if (rc != 0)
            rbus_test_report("racer %u: publish: %d (%s)", r->id, rc, rbus_strerror(rc));
    }
    pthread_barrier_wait(r->bar);
    return NULL;
}

static void test_threads_exit_while_bus_is_destroyed(void **state)
{
    (void)state;
    const unsigned rounds = (unsigned)rbus_test_scaled(100, 5);
    printf("threads: %u rounds of %d threads exiting while their bus is destroyed\n", rounds,
           WAVE);
    static struct rbus_test_alloc c;
    static struct racer rs[WAVE];
    for (unsigned round = 0; round < rounds; round++) {
        rbus_test_alloc_init(&c);
        rbus *bus = make_bus(&c);
        rbus_topic *t = NULL;
        assert_rbus_ok(rbus_topic_open(bus, "race.exit", &t));
        rbus_sub *s = make_sub(bus, "race.>", round % 2 ? RBUS_DROP_OLDEST : RBUS_BLOCK, 64);
        (void)s;
        pthread_barrier_t bar;
        assert_int_equal(pthread_barrier_init(&bar, NULL, WAVE + 1), 0);
        static struct rbus_test_threads th;
        rbus_test_threads_init(&th);
        for (uint32_t i = 0; i < WAVE; i++) {
            rs[i].t = t;
            rs[i].bar = &bar;
            rs[i].id = i;
        }
        rbus_test_threads_add_n(&th, WAVE, racer_main, rs, sizeof *rs);
        rbus_test_threads_start(&th);
        pthread_barrier_wait(&bar);
        /* Every thread is done with the bus; they are exiting right now. */
        rbus_destroy(bus);
        rbus_test_alloc_assert_all_returned(&c);
        rbus_test_threads_join(&th);
        pthread_barrier_destroy(&bar);
        rbus_test_alloc_assert_all_returned(&c);
        rbus_test_assert_no_thread_errors();
    }
}

int main(void)
{
    rbus_test_print_scale("threads");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_thousands_of_short_lived_publishers),
        cmocka_unit_test(test_threads_exit_after_their_bus_was_destroyed),
        cmocka_unit_test(test_threads_one_thread_many_buses_in_turn),
        cmocka_unit_test(test_threads_exit_while_bus_is_destroyed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
