/*
 * Retained history (src/history.c) with a thread stalled on purpose where
 * its promises are hardest to keep:
 *  - a reader (rbus_topic_last) parked after announcing a message in the
 *    hazard word, while publishes evict that message many times over: the
 *    publishers never wait, the evictor hands its reference to the reader,
 *    and the reader comes back with a message of its own or the newest;
 *  - a publisher parked holding a history slot it has not committed:
 *    other publishers pass it, rbus_topic_last still answers, and on
 *    release the history holds the newest messages;
 *  - a subscribe parked after its grace period, about to collect its
 *    replay, while publishers go on: each message reaches it exactly once,
 *    an unbroken run from each publisher;
 *  - a publisher parked inside its read section before its history put,
 *    while a subscribe with replay starts: the subscribe waits for it, and
 *    its message is replayed exactly once, in order.
 * Every scene ends with the bus destroyed and, where a counting allocator
 * is used, every byte given back.
 */
#include "test_util.h"

#include "internal.h" /* the history's hazard word, and pause.h */

#define PARK_TIMEOUT_NS INT64_C(30000000000)
#define ANSWER_TIMEOUT_US 10000000u

/* Publisher ids in the payload. */
#define PUB_MAIN 0u
#define PUB_OTHER 1u
#define PUB_PARKED 2u

/* --------------------------------------------------------------- payload */

/* What every message carries: who published it, its number in that
 * publisher's run, and the sequence number it must have (0 where several
 * publishers race and nobody can tell). */
struct stamp {
    uint32_t pub;
    uint32_t zero;
    uint64_t counter;
    uint64_t seq;
};

/* Never waits: a full subscription refuses the message (counted in
 * dropped_timeout) instead, which the checks then find missing. */
static int publish_stamp(rbus_topic *t, uint32_t pub, uint64_t counter, uint64_t seq)
{
    struct stamp s = {.pub = pub, .zero = 0, .counter = counter, .seq = seq};
    rbus_pub_opts o = {.timeout_ns = -1};
    return rbus_publish_ex(t, &s, sizeof s, &o, NULL);
}

/* Copies m's payload into *s; fails the test when it is not a stamp. */
static void stamp_get(const rbus_msg *m, struct stamp *s)
{
    assert_int_equal(rbus_msg_size(m), sizeof *s);
    memcpy(s, rbus_msg_data(m), sizeof *s);
    assert_int_equal(s->zero, 0);
    if (s->seq)
        assert_int_equal(rbus_msg_seq(m), s->seq);
}

static rbus_sub *replay_sub(rbus *bus, const char *pattern, uint32_t replay, uint32_t cap)
{
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = cap;
    o.overflow = RBUS_BLOCK;
    o.replay = replay;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, pattern, &o, &s));
    return s;
}

static rbus *counted_bus(struct rbus_test_alloc *a)
{
    rbus_test_alloc_init(a);
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &a->hooks;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    return bus;
}

static uint64_t bus_held(rbus *bus)
{
    rbus_bus_stats bs;
    assert_rbus_ok(rbus_bus_stats_get(bus, &bs));
    return bs.held;
}

static rbus_topic_stats topic_stats(rbus_topic *t)
{
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    return ts;
}

/* ------------------------------------------------------- a parked thread */

/* One call on a thread of its own, which a trap may park on the way. */
struct actor {
    void (*job)(struct actor *a);
    rbus *bus;
    rbus_topic *topic;
    /* publishing: n stamps from `counter` on, expecting `seq` on (0: not known) */
    uint32_t pub;
    uint64_t counter, seq, n;
    /* subscribing */
    const char *pattern;
    rbus_sub_opts sub_opts;
    pthread_t thr;
    atomic_int go, done;
    int trap;
    int rc;
    rbus_msg *msg;
    rbus_sub *sub;
};

static void job_last(struct actor *a)
{
    a->rc = rbus_topic_last(a->topic, &a->msg);
}

static void job_publish(struct actor *a)
{
    for (uint64_t i = 0; i < a->n && a->rc == 0; i++)
        a->rc = publish_stamp(a->topic, a->pub, a->counter + i, a->seq ? a->seq + i : 0);
}

static void job_subscribe(struct actor *a)
{
    a->rc = rbus_subscribe(a->bus, a->pattern, &a->sub_opts, &a->sub);
}

static void *actor_main(void *arg)
{
    struct actor *a = arg;
    while (!atomic_load(&a->go))
        rbus_test_sleep_us(100);
    a->job(a);
    atomic_store(&a->done, 1);
    return NULL;
}

/* Starts the actor; with a point (RBUS_PP_COUNT: none), returns once it
 * is parked there. */
static void actor_start(struct actor *a, enum rbus__pp point)
{
    atomic_init(&a->go, 0);
    atomic_init(&a->done, 0);
    a->trap = -1;
    a->rc = 0;
    assert_int_equal(pthread_create(&a->thr, NULL, actor_main, a), 0);
    if (point != RBUS_PP_COUNT) {
        a->trap = rbus__trap_set(point, &a->thr);
        assert_true(a->trap >= 0);
    }
    atomic_store(&a->go, 1);
    if (a->trap >= 0 && !rbus__trap_wait(a->trap, PARK_TIMEOUT_NS)) {
        print_error("never reached %s\n", rbus__pause_name(point));
        fail();
    }
}

static void actor_release(struct actor *a)
{
    if (a->trap >= 0)
        rbus__trap_release(a->trap);
}

/* Waits (bounded) for the call to return, then joins the thread. */
static void actor_finish(struct actor *a)
{
    if (!rbus_test_wait_flag(&a->done, ANSWER_TIMEOUT_US)) {
        print_error("the actor's call did not return within %u ms\n", ANSWER_TIMEOUT_US / 1000);
        fail();
    }
    assert_int_equal(pthread_join(a->thr, NULL), 0);
}

/* ------------------------------------- 1. a reader parked on the hazard */

/*
 * A history of 2 holding seq 3 and 4; rbus_topic_last parked after it
 * announced seq 4 in the hazard word and before it checked the slot again.
 * `evictions` publishes follow; from the second on, the announced message
 * has left the history (seq 4 is evicted by the publish of seq 6).
 *
 * What it catches: a publisher that waits for the parked reader (the
 * publishes would never return); an evictor that drops the history's
 * reference although the reader announced the message (it would be
 * recycled by the next publishes, and the reader's message would change
 * under it, or its reference counts go wrong: held, or memory the
 * allocator never gets back); an evictor that never hands the reference
 * over (the hazard word would not say so); a reader that keeps a handed-
 * over reference or forgets to drop it (a leak at destroy); and a reader
 * that comes back empty-handed although the history held two messages
 * all along (-ENOENT is only for a history that has retained nothing).
 */
static bool reader_parked_on_hazard(uint64_t evictions)
{
    struct rbus_test_alloc a;
    rbus *bus = counted_bus(&a);
    rbus_topic *t = rbus_test_open_retained(bus, "hist.last", 2);
    uint64_t seq = 0;
    for (int i = 0; i < 4; i++) {
        seq++;
        assert_rbus_ok(publish_stamp(t, PUB_MAIN, seq, seq));
    }
    const uint64_t announced = seq;
    struct actor r = {.job = job_last, .topic = t};
    actor_start(&r, RBUS_PP_HISTORY_HAZARD);

    struct rbus_history *h = atomic_load_explicit(&t->hist, memory_order_acquire);
    assert_non_null(h);
    uintptr_t hz = atomic_load(&h->hazard);
    assert_true(hz != 0 && (hz & 1u) == 0);
    assert_int_equal(rbus_msg_seq((const rbus_msg *)hz), announced);

    /* Each returns while the reader is parked: a put never waits. */
    for (uint64_t i = 0; i < evictions; i++) {
        seq++;
        assert_rbus_ok(publish_stamp(t, PUB_MAIN, seq, seq));
    }
    assert_true(rbus__trap_holds(r.trap));
    /* The publish that evicted the announced message handed the history's
     * reference to the reader (hazard | 1); the later ones dropped theirs. */
    assert_int_equal(atomic_load(&h->hazard), evictions >= 2 ? (hz | 1u) : hz);
    rbus_topic_stats ts = topic_stats(t);
    assert_int_equal(ts.retained, 2);
    assert_int_equal(ts.published, seq);

    actor_release(&r);
    actor_finish(&r);
    /* Nothing is left announced or handed over. */
    assert_int_equal(atomic_load(&h->hazard), 0);
    const int rc = r.rc;
    uint64_t got = 0;
    if (rc == 0) {
        assert_non_null(r.msg);
        struct stamp s, again;
        stamp_get(r.msg, &s);
        got = rbus_msg_seq(r.msg);
        /* A reference of its own to the message it announced, or the
         * newest one. */
        if (got != announced && got != seq) {
            print_error("rbus_topic_last returned seq %llu: neither the announced %llu nor the "
                        "newest %llu\n",
                        (unsigned long long)got, (unsigned long long)announced,
                        (unsigned long long)seq);
            fail();
        }
        /* The history turns over many times more: the reference is the
         * reader's own, so the message stays as it was. */
        uint64_t base = seq;
        for (int i = 0; i < 16; i++) {
            seq++;
            assert_rbus_ok(publish_stamp(t, PUB_MAIN, seq, seq));
        }
        stamp_get(r.msg, &again);
        assert_memory_equal(&s, &again, sizeof s);
        assert_int_equal(rbus_msg_seq(r.msg), got);
        assert_true(got <= base);
        rbus_msg_release(r.msg);
    } else {
        assert_null(r.msg);
    }
    assert_int_equal(bus_held(bus), 0);
    /* The history still answers, with the newest. */
    rbus_msg *m;
    assert_rbus_ok(rbus_topic_last(t, &m));
    assert_int_equal(rbus_msg_seq(m), seq);
    rbus_msg_release(m);
    assert_int_equal(bus_held(bus), 0);
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&a);
    printf("  %llu publishes while parked: rc %d, seq %llu (announced %llu)\n",
           (unsigned long long)evictions, rc, (unsigned long long)got,
           (unsigned long long)announced);
    if (rc != 0)
        print_error("rbus_topic_last, parked at %s while %llu publishes went on, returned %d "
                    "(%s) although the history held 2 messages all along\n",
                    rbus__pause_name(RBUS_PP_HISTORY_HAZARD), (unsigned long long)evictions, rc,
                    strerror(-rc));
    return rc == 0;
}

static void topic_last_parked_on_hazard_while_history_turns_over(void **state)
{
    (void)state;
    const uint64_t many = rbus_test_scaled(2000, 20);
    printf("stall history: rbus_topic_last parked at %s, retain 2, 0/1/2/3/%llu publishes\n",
           rbus__pause_name(RBUS_PP_HISTORY_HAZARD), (unsigned long long)many);
    const uint64_t evictions[] = {0, 1, 2, 3, many};
    unsigned failed = 0;
    for (size_t i = 0; i < sizeof evictions / sizeof evictions[0]; i++)
        failed += !reader_parked_on_hazard(evictions[i]);
    assert_int_equal(failed, 0);
}

/* ---------------------------------- 2. a writer parked in the history */

#define PUT_RETAIN 4u

/* Receives everything queued on s: seqs into out (at most max), sorted
 * as received; returns how many. Each message's payload is checked. */
static uint32_t drain_seqs(rbus_sub *s, uint64_t *out, uint32_t max, uint64_t *parked_seq)
{
    uint32_t n = 0;
    rbus_msg *m;
    while (rbus_recv(s, &m, 0) == 0) {
        struct stamp st;
        stamp_get(m, &st);
        assert_true(n < max);
        out[n++] = rbus_msg_seq(m);
        if (st.pub == PUB_PARKED && parked_seq)
            *parked_seq = rbus_msg_seq(m);
        rbus_msg_release(m);
    }
    return n;
}

/*
 * A history of 4 and no subscription, so that the only ring put is the
 * history's. After `pre` publishes, a publisher is parked at
 * RING_PUT_RESERVED inside its history put: it owns a position (an empty
 * slot with pre < 4, the slot of an evicted message otherwise) and has
 * not committed it. Another thread, then the main thread, publish `k`
 * messages each.
 *
 * What it catches: a put that waits for the parked writer (the other
 * publishes would not return); a reader that waits for it (rbus_topic_last
 * would not answer, or answer with something older than the newest); a
 * parked writer that costs more than its one slot (fewer than 3
 * retained); after release, a history that lost some of the newest
 * messages, holds one twice, or the parked message neither retained nor
 * given back (a leak: memory not returned at destroy, or held != 0); a
 * replay that stops short of a message the history still holds (it gets
 * fewer than rbus_topic_stats.retained says); a slot not given back by the
 * skipped writer (the history would not fill up again).
 */
static bool writer_parked_in_history(uint64_t pre, uint64_t k)
{
    struct rbus_test_alloc a;
    rbus *bus = counted_bus(&a);
    rbus_topic *t = rbus_test_open_retained(bus, "hist.put", PUT_RETAIN);
    uint64_t seq = 0, counter = 0;
    for (uint64_t i = 0; i < pre; i++) {
        seq++;
        assert_rbus_ok(publish_stamp(t, PUB_MAIN, counter++, seq));
    }
    struct actor p = {
        .job = job_publish, .topic = t, .pub = PUB_PARKED, .counter = 0, .seq = seq + 1, .n = 1};
    actor_start(&p, RBUS_PP_RING_PUT_RESERVED);
    const uint64_t parked_seq = ++seq;

    /* Another publisher, on its own thread: it returns while p is parked. */
    struct actor q = {
        .job = job_publish, .topic = t, .pub = PUB_OTHER, .counter = 0, .seq = seq + 1, .n = k};
    actor_start(&q, RBUS_PP_COUNT);
    actor_finish(&q);
    assert_rbus_ok(q.rc);
    seq += k;
    for (uint64_t i = 0; i < k; i++) {
        seq++;
        assert_rbus_ok(publish_stamp(t, PUB_MAIN, counter++, seq));
    }
    assert_true(rbus__trap_holds(p.trap));

    /* rbus_topic_last answers, with the newest. */
    rbus_msg *m;
    assert_rbus_ok(rbus_topic_last(t, &m));
    struct stamp st;
    stamp_get(m, &st);
    assert_int_equal(rbus_msg_seq(m), seq);
    assert_int_equal(st.pub, PUB_MAIN);
    rbus_msg_release(m);
    /* The parked writer holds one slot: the other three hold the newest. */
    rbus_topic_stats ts = topic_stats(t);
    assert_int_equal(ts.published, seq);
    assert_int_equal(ts.retained, PUT_RETAIN - 1);

    actor_release(&p);
    actor_finish(&p);
    assert_rbus_ok(p.rc);

    /* What the history holds now, through a replay: every message of it
     * was published before the subscription. */
    ts = topic_stats(t);
    assert_true(ts.retained >= PUT_RETAIN - 1);
    rbus_sub *s = replay_sub(bus, "hist.put", PUT_RETAIN, 16);
    uint64_t got[16], parked_got = 0;
    uint32_t n = drain_seqs(s, got, 16, &parked_got);
    rbus_sub_stats ss;
    assert_rbus_ok(rbus_sub_stats_get(s, &ss));
    assert_int_equal(ss.replayed, n);
    assert_int_equal(ss.replay_skipped, 0);
    /* Checked last, so that the rest is checked too when it fails. */
    const uint32_t retained_now = ts.retained;
    /* The others: the newest, an unbroken run ending with the last; the
     * parked one at most once (its seq is older than all of them). */
    uint32_t others = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (i > 0)
            assert_true(got[i] > got[i - 1]);
        if (got[i] == parked_seq)
            continue;
        assert_int_equal(got[i], seq - (n - 1 - i));
        others++;
    }
    const bool retained = parked_got != 0;
    assert_int_equal(others + retained, n);
    if (retained)
        assert_int_equal(parked_got, parked_seq);
    /* The slot is back: PUT_RETAIN more publishes fill the history with them
     * alone, and rbus_topic_last gives the newest. */
    for (uint32_t i = 0; i < PUT_RETAIN; i++) {
        seq++;
        assert_rbus_ok(publish_stamp(t, PUB_MAIN, counter++, seq));
    }
    assert_int_equal(drain_seqs(s, got, 16, NULL), PUT_RETAIN); /* live */
    ts = topic_stats(t);
    assert_int_equal(ts.retained, PUT_RETAIN);
    assert_rbus_ok(rbus_topic_last(t, &m));
    assert_int_equal(rbus_msg_seq(m), seq);
    rbus_msg_release(m);
    rbus_sub *s2 = replay_sub(bus, "hist.put", PUT_RETAIN, 16);
    assert_int_equal(drain_seqs(s2, got, 16, NULL), PUT_RETAIN);
    for (uint32_t i = 0; i < PUT_RETAIN; i++)
        assert_int_equal(got[i], seq - (PUT_RETAIN - 1 - i));
    assert_rbus_ok(rbus_sub_stats_get(s, &ss));
    rbus_test_check_accounting(&ss);
    assert_rbus_ok(rbus_unsubscribe(s2));
    assert_rbus_ok(rbus_unsubscribe(s));
    assert_int_equal(bus_held(bus), 0);
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&a);
    printf("  %llu before it, 2 x %llu while parked: after release %u retained, %u replayed, "
           "the parked message %s\n",
           (unsigned long long)pre, (unsigned long long)k, retained_now, n,
           retained ? "among them" : "given back");
    if (n != retained_now)
        print_error("%llu before the parked writer, 2 x %llu while parked: the history holds %u "
                    "messages (rbus_topic_stats.retained) but a replay of %u got %u\n",
                    (unsigned long long)pre, (unsigned long long)k, retained_now, PUT_RETAIN, n);
    return n == retained_now;
}

static void writer_parked_in_history_holds_nobody_back(void **state)
{
    (void)state;
    const uint64_t k = rbus_test_scaled(1000, 20);
    printf("stall history: a history writer parked at %s, retain %u, 2 x %llu.. publishes\n",
           rbus__pause_name(RBUS_PP_RING_PUT_RESERVED), PUT_RETAIN, (unsigned long long)k);
    /* k to k + 3: where the other publishes leave the ring's tail, relative
     * to the parked writer's slot, decides how its second offer goes in. */
    unsigned failed = 0;
    for (uint64_t extra = 0; extra < PUT_RETAIN; extra++) {
        failed += !writer_parked_in_history(2, k + extra); /* it reserved an empty slot */
        failed += !writer_parked_in_history(6, k + extra); /* its reservation evicted one */
    }
    assert_int_equal(failed, 0);
}

/* ------------------------- 3. a subscribe parked before its collection */

#define COLLECT_PUBS 3
#define COLLECT_RETAIN 4096u

struct collect_world {
    rbus_topic *topic;
    uint64_t per_pub;
    atomic_int parked; /* the subscribe is parked: publish the second half */
    atomic_int pubs_done;
    atomic_ullong published;
};

struct collect_pub {
    struct collect_world *w;
    uint32_t id;
    pthread_t thr;
};

static void *collect_pub_main(void *arg)
{
    struct collect_pub *c = arg;
    struct collect_world *w = c->w;
    for (uint64_t i = 0; i < w->per_pub; i++) {
        if (i == w->per_pub / 2 && !rbus_test_wait_flag(&w->parked, ANSWER_TIMEOUT_US)) {
            rbus_test_report("publisher %u: the subscribe never parked", c->id);
            break;
        }
        /* Paced until the subscribe is parked, so that its list update
         * and grace period meet publishes in flight. */
        if (!atomic_load(&w->parked))
            rbus_test_sleep_us(20);
        int rc = publish_stamp(w->topic, c->id, i, 0);
        if (rc != 0) {
            rbus_test_report("publisher %u: publish %llu: %d", c->id, (unsigned long long)i, rc);
            break;
        }
        atomic_fetch_add(&w->published, 1);
    }
    atomic_fetch_add(&w->pubs_done, 1);
    return NULL;
}

/*
 * Three publishers on a topic that retains everything they publish. A
 * subscription with replay starts after a quarter of it, races the
 * publishers through its list update and grace period, and is parked
 * where the grace period is over and the histories not yet read; the
 * publishers publish the second half meanwhile, into the history and live
 * into the reserved-for ring.
 *
 * What it catches: a replay that takes messages offered live to the new
 * subscription (duplicates: a counter seen twice), or misses one that
 * loaded the old list (a gap), a replay out of seq order, live messages
 * queued ahead of the replay, and publishers that wait for the parked
 * subscribe (they would not finish; with timeout -1, a full ring shows as
 * a drop instead).
 */
static void replay_collect_parked_while_publishers_run(void **state)
{
    (void)state;
    struct collect_world w;
    memset(&w, 0, sizeof w);
    w.per_pub = rbus_test_scaled(1000, 40);
    if (w.per_pub > COLLECT_RETAIN / COLLECT_PUBS)
        w.per_pub = COLLECT_RETAIN / COLLECT_PUBS; /* the history holds them all */
    printf("stall history: subscribe parked at %s, %d publishers x %llu messages, retain %u\n",
           rbus__pause_name(RBUS_PP_REPLAY_COLLECT), COLLECT_PUBS, (unsigned long long)w.per_pub,
           COLLECT_RETAIN);
    rbus_test_errors_reset();
    struct rbus_test_alloc a;
    rbus *bus = counted_bus(&a);
    w.topic = rbus_test_open_retained(bus, "hist.replay", COLLECT_RETAIN);
    const uint64_t total = COLLECT_PUBS * w.per_pub;

    struct collect_pub pubs[COLLECT_PUBS];
    for (uint32_t i = 0; i < COLLECT_PUBS; i++) {
        pubs[i] = (struct collect_pub){.w = &w, .id = i};
        assert_int_equal(pthread_create(&pubs[i].thr, NULL, collect_pub_main, &pubs[i]), 0);
    }
    for (unsigned waited = 0; atomic_load(&w.published) < total / 4; waited += 100) {
        assert_true(waited < ANSWER_TIMEOUT_US);
        rbus_test_sleep_us(100);
    }
    struct actor s = {.job = job_subscribe, .bus = bus, .pattern = "hist.replay"};
    rbus_sub_opts_init(&s.sub_opts);
    s.sub_opts.replay = COLLECT_RETAIN;
    s.sub_opts.capacity = 2 * COLLECT_RETAIN; /* the replay's positions and all the rest */
    s.sub_opts.overflow = RBUS_BLOCK;
    actor_start(&s, RBUS_PP_REPLAY_COLLECT);
    const uint64_t at_park = atomic_load(&w.published);
    atomic_store(&w.parked, 1);
    for (unsigned waited = 0; atomic_load(&w.pubs_done) < COLLECT_PUBS; waited += 100) {
        if (waited >= ANSWER_TIMEOUT_US) {
            print_error("publishers still not done after %u ms with the subscribe parked\n",
                        ANSWER_TIMEOUT_US / 1000);
            fail();
        }
        rbus_test_sleep_us(100);
    }
    for (uint32_t i = 0; i < COLLECT_PUBS; i++)
        assert_int_equal(pthread_join(pubs[i].thr, NULL), 0);
    rbus_test_assert_no_thread_errors();
    assert_true(rbus__trap_holds(s.trap));
    assert_false(atomic_load(&s.done));
    const uint64_t during = total - at_park;
    assert_true(during >= COLLECT_PUBS * (w.per_pub - w.per_pub / 2));

    actor_release(&s);
    actor_finish(&s);
    assert_rbus_ok(s.rc);

    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s.sub, &st));
    uint64_t next[COLLECT_PUBS] = {0}, got = 0, last_seq = 0;
    rbus_msg *m;
    while (rbus_recv(s.sub, &m, 0) == 0) {
        struct stamp p;
        stamp_get(m, &p);
        assert_true(p.pub < COLLECT_PUBS);
        if (got < st.replayed) {
            assert_true(rbus_msg_seq(m) > last_seq);
            last_seq = rbus_msg_seq(m);
        }
        if (p.counter != next[p.pub]) {
            print_error("publisher %u: got %llu, expected %llu (message %llu of the "
                        "subscription, %llu replayed)\n",
                        p.pub, (unsigned long long)p.counter, (unsigned long long)next[p.pub],
                        (unsigned long long)got, (unsigned long long)st.replayed);
            fail();
        }
        next[p.pub]++;
        got++;
        rbus_msg_release(m);
    }
    /* The history kept everything, so each run starts at 0 and ends with
     * the publisher's last message. */
    for (uint32_t i = 0; i < COLLECT_PUBS; i++)
        assert_int_equal(next[i], w.per_pub);
    assert_int_equal(got, total);
    assert_true(st.replayed > 0);
    assert_int_equal(st.replay_skipped, 0);
    assert_rbus_ok(rbus_sub_stats_get(s.sub, &st));
    assert_int_equal(st.received, total);
    assert_int_equal(st.offered, total);
    assert_int_equal(st.publisher_waits, 0);
    assert_int_equal(st.dropped_timeout + st.dropped_newest + st.dropped_oldest, 0);
    rbus_test_check_accounting(&st);
    printf("  %llu published before the park, %llu replayed, %llu live\n",
           (unsigned long long)at_park, (unsigned long long)st.replayed,
           (unsigned long long)(total - st.replayed));
    assert_rbus_ok(rbus_unsubscribe(s.sub));
    assert_int_equal(bus_held(bus), 0);
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&a);
}

/* ------------------- 4. a publisher parked before its history put */

#define GRACE_RETAIN 16u

/*
 * A topic with an early subscription and a history of 16; seq 1..3
 * published. A publisher is parked at HISTORY_PUT: inside its read
 * section, it has loaded the list of the early subscription alone and
 * taken seq 4. A subscribe with replay is parked right after its new lists
 * are in place (UPDATE_SWAPPED), seq 5..7 are published (live for it), and
 * it is let go into its grace period, which the parked publisher holds up.
 *
 * What it catches: a subscribe that does not wait for the publishers of
 * the old lists (it would return within 50 ms, and its replay would miss
 * seq 4, which reaches the history only later: a gap); a replay that takes
 * seq 5..7 too (duplicates); seq 4 delivered live as well as replayed, or
 * out of order. The new subscription must get 1..N exactly, in order.
 */
static void subscribe_waits_for_publisher_parked_before_history(void **state)
{
    (void)state;
    printf("stall history: a publisher parked at %s, a subscribe with replay waiting for it\n",
           rbus__pause_name(RBUS_PP_HISTORY_PUT));
    struct rbus_test_alloc a;
    rbus *bus = counted_bus(&a);
    rbus_topic *t = rbus_test_open_retained(bus, "hist.grace", GRACE_RETAIN);
    rbus_sub *early = rbus_test_subscribe(bus, "hist.grace", 64, RBUS_BLOCK, 0);
    uint64_t seq = 0, counter = 0;
    for (int i = 0; i < 3; i++) {
        seq++;
        assert_rbus_ok(publish_stamp(t, PUB_MAIN, counter++, seq));
    }
    struct actor p = {
        .job = job_publish, .topic = t, .pub = PUB_PARKED, .counter = 0, .seq = seq + 1, .n = 1};
    actor_start(&p, RBUS_PP_HISTORY_PUT);
    const uint64_t parked_seq = ++seq;

    struct actor s = {.job = job_subscribe, .bus = bus, .pattern = "hist.grace"};
    rbus_sub_opts_init(&s.sub_opts);
    s.sub_opts.replay = GRACE_RETAIN;
    s.sub_opts.capacity = 64;
    s.sub_opts.overflow = RBUS_BLOCK;
    actor_start(&s, RBUS_PP_UPDATE_SWAPPED);
    /* The new lists are in place: these are offered to it live. */
    for (int i = 0; i < 3; i++) {
        seq++;
        assert_rbus_ok(publish_stamp(t, PUB_MAIN, counter++, seq));
    }
    const uint64_t syncs = rbus__pause_passes(RBUS_PP_SYNCHRONIZE);
    actor_release(&s);
    for (unsigned waited = 0;
         rbus__pause_passes(RBUS_PP_SYNCHRONIZE) == syncs && !atomic_load(&s.done); waited += 100) {
        assert_true(waited < ANSWER_TIMEOUT_US);
        rbus_test_sleep_us(100);
    }
    /* In its grace period, which the parked publisher holds up; publishes
     * go on meanwhile. */
    for (int i = 0; i < 2; i++) {
        seq++;
        assert_rbus_ok(publish_stamp(t, PUB_MAIN, counter++, seq));
    }
    rbus_test_sleep_us(50000);
    if (atomic_load(&s.done)) {
        print_error("rbus_subscribe with replay returned while a publisher of the old list was "
                    "parked in its read section (rc %d)\n",
                    s.rc);
        fail();
    }
    assert_true(rbus__trap_holds(p.trap));

    actor_release(&p);
    actor_finish(&p);
    assert_rbus_ok(p.rc);
    actor_finish(&s);
    assert_rbus_ok(s.rc);
    for (int i = 0; i < 2; i++) {
        seq++;
        assert_rbus_ok(publish_stamp(t, PUB_MAIN, counter++, seq));
    }

    /* The new subscription: 1..seq, each once, in order; the replay is
     * 1..4, the parked publisher's message last of it. */
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s.sub, &st));
    assert_int_equal(st.replayed, parked_seq);
    assert_int_equal(st.replay_skipped, 0);
    uint64_t want = 1, parked_seen = 0;
    rbus_msg *m;
    while (rbus_recv(s.sub, &m, 0) == 0) {
        struct stamp ps;
        stamp_get(m, &ps);
        if (rbus_msg_seq(m) != want) {
            print_error("the new subscription got seq %llu (publisher %u), expected %llu\n",
                        (unsigned long long)rbus_msg_seq(m), ps.pub, (unsigned long long)want);
            fail();
        }
        if (ps.pub == PUB_PARKED)
            parked_seen++;
        want++;
        rbus_msg_release(m);
    }
    assert_int_equal(want - 1, seq);
    assert_int_equal(parked_seen, 1);
    assert_rbus_ok(rbus_sub_stats_get(s.sub, &st));
    assert_int_equal(st.offered, seq);
    rbus_test_check_accounting(&st);
    /* The early subscription got every message once (the parked one when
     * it was offered, after the others). */
    bool seen[32] = {false};
    assert_true(seq < 32);
    while (rbus_recv(early, &m, 0) == 0) {
        struct stamp ps;
        stamp_get(m, &ps);
        uint64_t q = rbus_msg_seq(m);
        assert_true(q >= 1 && q <= seq);
        assert_false(seen[q]);
        seen[q] = true;
        rbus_msg_release(m);
    }
    for (uint64_t q = 1; q <= seq; q++)
        assert_true(seen[q]);
    assert_rbus_ok(rbus_unsubscribe(s.sub));
    assert_rbus_ok(rbus_unsubscribe(early));
    assert_int_equal(bus_held(bus), 0);
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(topic_last_parked_on_hazard_while_history_turns_over),
        cmocka_unit_test(writer_parked_in_history_holds_nobody_back),
        cmocka_unit_test(replay_collect_parked_while_publishers_run),
        cmocka_unit_test(subscribe_waits_for_publisher_parked_before_history),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
