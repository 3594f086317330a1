/*
 * test_threads_torture.c - concurrency torture.
 *
 * Worker threads pick operations at random for a bounded time: publish
 * (several topics, with and without idempotency keys, order keys, origin
 * tags, plain rbus_publish and rbus_publish_ex with and without wait
 * bounds), subscribe (random pattern, capacity, policy, block timeout, spin,
 * name), receive with timeouts (rbus_recv and rbus_recv_batch), hold and
 * release references, rbus_sub_close, rbus_unsubscribe, rbus_sub_fd,
 * rbus_topic_open (two topics are first opened by the workers, racing) and
 * stats. Then the main thread calls rbus_close while they are still busy,
 * every worker drains what it owns to -ESHUTDOWN, and everything is
 * checked against what the test itself did.
 *
 * Ownership: every subscription belongs to the worker that made it; only
 * that worker receives from it, reads its stats, closes and unsubscribes
 * it, so the test knows exactly what was received from each one and no
 * receive of the test is in flight when its stats are checked.
 *
 * No deadlock by construction (so the watchdog only catches the library's):
 * RBUS_BLOCK subscriptions without a timeout ("untimed") exist only on the
 * "tor.*" topics and belong only to "sink" workers, which never publish on
 * those topics. Everything else a publisher can wait for has a timeout. A
 * publish on a tor.* topic never passes a wait bound (rbus_pub_opts.
 * timeout_ns stays 0), so untimed subscriptions must show dropped_timeout
 * == 0; publishes on the other topics use every kind of bound.
 *
 * Checked:
 *   - every message: payload bytes, size, topic (and that the pattern
 *     matches it), key, order key, origin, attempt; per subscription, each
 *     publisher's messages in publish order (across topics too) with
 *     increasing per-topic sequence numbers, nothing twice;
 *   - every subscription, right before it is unsubscribed mid-run (after
 *     rbus_sub_close and once the publishers that were waiting on it have
 *     given up), at the end (bus closed, drained): offered == received +
 *     depth + drops exactly; received == what its owner received; the drop
 *     counters its policy allows are the only non-zero ones; untimed block
 *     subscriptions: dropped_timeout == 0 and every message missing between
 *     two received ones of a publisher is a dropped_closed; any policy:
 *     missing <= drops; offered <= what was accepted on matching topics;
 *   - stats read mid-run only grow and `received` is exact;
 *   - per topic: published == the publishes the workers saw accepted
 *     (+ plain rbus_publish calls that returned -ESHUTDOWN, which may or may
 *     not have been accepted), duplicates == the RBUS_DUPLICATE returns;
 *   - keys: a never-used key is accepted; a key accepted twice on a topic
 *     must have had at least dedup_keys other keys accepted in between (the
 *     test bounds that count from its own tally);
 *   - after rbus_close: publish, subscribe and topic_open say -ESHUTDOWN,
 *     receives never time out, -ESHUTDOWN is final;
 *   - a counting allocator: rbus_destroy returns every byte.
 *
 * A watchdog fails the run on a deadlock: if the global progress counter
 * (bumped by every operation) stands still, or one operation runs, for 10 s
 * it prints what every thread was doing and aborts. Runs at a stress scale
 * below 1 (sanitizers, valgrind) are that much slower, so the bound grows
 * by 1/scale, up to 120 s; the run prints the bound it used.
 *
 * Duration scales with RBUS_STRESS_SCALE; the sizes and counts are printed.
 */
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "harness.h"

#define MAX_WORKERS 12
#define MAX_OWNED 6
#define MAX_HELD 8
#define BATCH_MAX 32
#define NSHARED 48 /* shared idempotency keys per topic */
#define DEDUP_KEYS 256
#define DEFAULT_CAP 64
#define WATCHDOG_NS (INT64_C(10) * 1000000000)
#define WATCHDOG_MAX_NS (INT64_C(120) * 1000000000)

/* WATCHDOG_NS, stretched for slow runs (see the file's comment). */
static int64_t watchdog_ns(void)
{
    double scale = rbus_test_stress_scale();
    double ns = scale < 1.0 ? (double)WATCHDOG_NS / scale : (double)WATCHDOG_NS;
    return ns > (double)WATCHDOG_MAX_NS ? WATCHDOG_MAX_NS : (int64_t)ns;
}
#define SETTLE_NS (INT64_C(5) * 1000000000)
#define PAY_MAGIC 0x70727475u

/* ---------------------------------------------------------- topics */

#define NTOPICS 8
#define N_UNTIMED_TOPICS 4 /* topics 0..3: the only ones untimed subs match */
#define FIRST_LAZY_TOPIC 6 /* 6, 7: opened by the workers */
static const char *const topic_names[NTOPICS] = {"tor.a", "tor.b",   "tor.c.x", "tor.c.y",
                                                 "tim.a", "tim.b.z", "dyn.p",   "dyn.q.r"};

/* Patterns an untimed block subscription may use: they match tor.* only. */
static const char *const untimed_patterns[] = {"tor.a", "tor.b",   "tor.*",  "tor.>",
                                               "tor.c.*", "*.c.x", "tor.c.y"};
#define N_UNTIMED_PATTERNS (sizeof untimed_patterns / sizeof untimed_patterns[0])
/* Every other subscription picks from these. */
static const char *const any_patterns[] = {"tor.a", "tor.*",  "tor.>", "*.c.x", ">",
                                           "*.a",   "tim.>",  "tim.*", "*.*",   "dyn.>",
                                           "*.b.z", "none.>", "*.*.*", "dyn.p", "tor.c.y"};
#define N_ANY_PATTERNS (sizeof any_patterns / sizeof any_patterns[0])

static uint32_t mask_of(const char *pattern)
{
    uint32_t m = 0;
    for (uint32_t t = 0; t < NTOPICS; t++)
        if (rbus_pattern_match(pattern, topic_names[t]))
            m |= UINT32_C(1) << t;
    return m;
}

/* ------------------------------------------------------------- payload */

struct tpay {
    uint32_t magic;
    uint16_t pub;
    uint16_t topic;
    uint64_t gidx;   /* the publisher's publish counter (every attempt), from 1 */
    uint64_t idx;    /* the publisher's accepted publishes on this topic, + 1 */
    uint64_t keynum; /* unique: the publisher's key counter; shared: the key */
    uint32_t len;    /* whole payload */
    uint32_t fill;
    uint8_t keykind; /* 0 none, 1 unique ("u<pub>-<n>"), 2 shared ("s<n>") */
    uint8_t okey;    /* order key "o<pub>" */
    uint8_t origin;  /* origin tag pub + 1 was set */
    uint8_t pad[5];
};

static const uint32_t extra_sizes[] = {0, 8, 16, 80, 200, 450, 1000, 2100, 3000};
#define N_EXTRA (sizeof extra_sizes / sizeof extra_sizes[0])
#define MAX_PAYLOAD (sizeof(struct tpay) + 3000)

static size_t key_text(char *buf, size_t cap, unsigned keykind, unsigned pub, uint64_t n)
{
    int len = keykind == 1 ? snprintf(buf, cap, "u%u-%llu", pub, (unsigned long long)n)
                           : snprintf(buf, cap, "s%llu", (unsigned long long)n);
    return len > 0 ? (size_t)len : 0;
}

static unsigned char fill_byte(uint32_t fill, size_t i)
{
    return (unsigned char)(fill + i * 13u);
}

/* ------------------------------------------------ subscriptions (owned) */

struct tsub {
    rbus_sub *sub;
    uint64_t id;
    const char *pattern;
    uint32_t mask;
    rbus_overflow policy;
    int64_t block_timeout_ns;
    bool untimed; /* RBUS_BLOCK with no timeout */
    uint32_t cap_req;
    uint32_t cap;
    int fd;       /* from rbus_sub_fd, -1 before */
    bool closed;  /* we called rbus_sub_close */
    bool shut;    /* a receive returned -ESHUTDOWN */
    uint64_t received;
    rbus_sub_stats last; /* the last mid-run snapshot */
    uint64_t last_gidx[MAX_WORKERS];
    uint64_t last_seq[MAX_WORKERS][NTOPICS];
    uint64_t first_idx[MAX_WORKERS][NTOPICS];
    uint64_t last_idx[MAX_WORKERS][NTOPICS];
    uint64_t count_idx[MAX_WORKERS][NTOPICS];
};

/* ------------------------------------------------------------ run state */

enum op {
    OP_IDLE,
    OP_PUBLISH,
    OP_RECV,
    OP_RECV_BATCH,
    OP_SUBSCRIBE,
    OP_UNSUBSCRIBE,
    OP_SUB_CLOSE,
    OP_SETTLE,
    OP_STATS,
    OP_TOPIC_OPEN,
    OP_SUB_FD,
    OP_RELEASE,
    OP_DRAIN,
    OP_SLEEP,
    OP_CLOSE,
    OP_JOIN,
    OP_CHECK,
    OP_DESTROY,
    OP_COUNT
};
static const char *const op_names[OP_COUNT] = {
    "idle",        "publish",         "rbus_recv",      "rbus_recv_batch",  "rbus_subscribe",
    "rbus_unsubscribe", "rbus_sub_close", "settle (waiting for stats to add up after close)",
    "stats",       "rbus_topic_open", "rbus_sub_fd",    "release",          "final drain",
    "sleeping (run time)", "rbus_close", "joining workers", "final checks", "rbus_destroy"};

/* What a thread is doing, for the watchdog. */
struct activity {
    char name[24];
    atomic_int op;
    atomic_llong since_ns;
    atomic_ullong sub_id;
    atomic_int topic;
    atomic_ullong ops_done;
};

struct run_cfg {
    const char *label;
    int sinks;
    int sources;
    uint64_t base_ms;
    bool tiny_caps; /* capacities 1..8 only */
};

struct worker {
    int id;
    bool sink;
    uint64_t rng;
    struct activity act;
    struct tsub *subs[MAX_OWNED];
    int nsubs;
    rbus_topic *topics[NTOPICS];
    uint64_t gidx;
    uint64_t accepted_idx[NTOPICS];
    uint64_t uniq_next;
    struct {
        bool valid;
        uint64_t n;
        uint64_t c0;
    } last_unique[NTOPICS];
    rbus_msg *held[MAX_HELD];
    int nheld;
    unsigned char buf[MAX_PAYLOAD];
    /* tallies */
    uint64_t ops[OP_COUNT];
    uint64_t pub_accepted, pub_dup, pub_refused_closed, pub_ambiguous, pub_keyed;
    uint64_t pub_some_dropped; /* accepted, refused by some subscription */
    uint64_t recv_msgs, recv_empty, subs_made, subs_unsubscribed, subs_closed, subs_direct;
};

struct shared_rec {
    bool valid;
    uint64_t c0, c2;
};

static struct {
    rbus *bus;
    const struct run_cfg *cfg;
    int nworkers;
    struct worker *workers;
    _Atomic(rbus_topic *) topics[NTOPICS];
    atomic_ullong accepted[NTOPICS];
    atomic_ullong ambiguous[NTOPICS];
    atomic_ullong dups[NTOPICS];
    atomic_ullong keyed_done[NTOPICS]; /* keyed acceptances the workers saw */
    pthread_mutex_t shared_lock[NTOPICS];
    struct shared_rec shared[NTOPICS][NSHARED];
    atomic_bool close_started;
    atomic_bool closed;
    struct rbus_test_watchdog wd; /* its progress counter: bumped by every operation */
    char wd_label[40];
    struct rbus_test_threads team;
    struct activity main_act;
    atomic_ullong shared_reaccepted; /* a shared key accepted again (window moved on) */
    atomic_ullong repeat_dup, repeat_accepted; /* a worker's last unique key once more */
    /* totals over every subscription checked exactly */
    atomic_ullong chk_subs, chk_offered, chk_received, chk_depth, chk_newest, chk_oldest,
        chk_timeout, chk_closed, chk_waits, chk_missing, chk_untimed, chk_untimed_waits,
        chk_untimed_closed;
} g;

/* -------------------------------------------------------------- helpers */

static uint64_t rnd(struct worker *w)
{
    /* xorshift64* */
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * UINT64_C(2685821657736338717);
}

static uint32_t rnd_below(struct worker *w, uint32_t n)
{
    return (uint32_t)((rnd(w) >> 33) % n);
}

static void act_begin(struct activity *a, enum op op, uint64_t sub_id, int topic)
{
    atomic_store_explicit(&a->sub_id, sub_id, memory_order_relaxed);
    atomic_store_explicit(&a->topic, topic, memory_order_relaxed);
    atomic_store_explicit(&a->since_ns, (long long)rbus_test_now_ns(), memory_order_relaxed);
    atomic_store_explicit(&a->op, (int)op, memory_order_release);
}

static void act_end(struct activity *a)
{
    atomic_store_explicit(&a->op, OP_IDLE, memory_order_release);
    atomic_fetch_add_explicit(&a->ops_done, 1, memory_order_relaxed);
    rbus_test_progress(&g.wd);
}

static bool topic_is_untimed(uint32_t t)
{
    return t < N_UNTIMED_TOPICS;
}

/* The worker's handle of topic t, opening it on first use (the lazy topics
 * are created here, by whichever worker comes first). NULL once closing. */
static rbus_topic *worker_topic(struct worker *w, uint32_t t)
{
    if (w->topics[t])
        return w->topics[t];
    rbus_topic *h = NULL;
    bool closed_before = atomic_load(&g.closed);
    int rc = rbus_topic_open(g.bus, topic_names[t], &h);
    if (rc == -ESHUTDOWN) {
        if (!atomic_load(&g.close_started))
            rbus_test_report("worker %d: rbus_topic_open(%s): -ESHUTDOWN before rbus_close",
                             w->id, topic_names[t]);
        return NULL;
    }
    if (rc != 0 || h == NULL) {
        rbus_test_report("worker %d: rbus_topic_open(%s) = %d (%s)", w->id, topic_names[t], rc,
                         rbus_strerror(rc));
        return NULL;
    }
    if (closed_before)
        rbus_test_report("worker %d: rbus_topic_open(%s) succeeded after rbus_close", w->id,
                         topic_names[t]);
    rbus_topic *expect = NULL;
    if (!atomic_compare_exchange_strong(&g.topics[t], &expect, h) && expect != h)
        rbus_test_report("worker %d: topic %s: two handles %p and %p", w->id, topic_names[t],
                         (void *)expect, (void *)h);
    w->topics[t] = h;
    return h;
}

/* ------------------------------------------------------------- publishing */

/* A keyed acceptance on topic t that began when keyed_done was c0: counts
 * it, and returns keyed_done right after (c2). */
static uint64_t count_keyed(uint32_t t)
{
    return atomic_fetch_add(&g.keyed_done[t], 1) + 1;
}

/* Two acceptances of one key on one topic, the first begun at c0 (keyed_done
 * then) and the second finished at c2: at most (c2 - c0) + workers keys were
 * accepted between them, so fewer than dedup_keys means the key was still
 * remembered and the second should have been a duplicate. */
static bool surely_remembered(uint64_t c0, uint64_t c2)
{
    return c2 - c0 + (uint64_t)g.nworkers < DEDUP_KEYS;
}

static void note_shared_accept(struct worker *w, uint32_t t, uint64_t key, uint64_t c0,
                               uint64_t c2)
{
    pthread_mutex_lock(&g.shared_lock[t]);
    struct shared_rec *r = &g.shared[t][key];
    if (r->valid) {
        atomic_fetch_add(&g.shared_reaccepted, 1);
        uint64_t lo = r->c0 < c0 ? r->c0 : c0;
        uint64_t hi = r->c2 > c2 ? r->c2 : c2;
        if (surely_remembered(lo, hi))
            rbus_test_report("worker %d: topic %s: key s%llu accepted twice with at most %llu "
                             "keys accepted in between (dedup_keys %d)",
                             w->id, topic_names[t], (unsigned long long)key,
                             (unsigned long long)(hi - lo + (uint64_t)g.nworkers), DEDUP_KEYS);
    }
    r->valid = true;
    r->c0 = c0;
    r->c2 = c2;
    pthread_mutex_unlock(&g.shared_lock[t]);
}

/* What one publish will be: topic, key kind, options. The options point
 * into the plan's own buffers. */
struct pub_plan {
    uint32_t t;
    unsigned keykind; /* 0 none, 1 the worker's own unique key, 2 a shared key */
    bool repeat;      /* the worker's last unique key on t, again */
    uint64_t keynum;
    bool plain, okey, origin;
    rbus_pub_opts po;
    char kbuf[40], obuf[16];
};

/* Step 1: picks the publish; false when its topic is not open yet. */
static bool plan_publish(struct worker *w, struct pub_plan *pl, rbus_topic **topic)
{
    memset(pl, 0, sizeof *pl);
    /* Sinks own untimed subscriptions: they never publish where those are. */
    pl->t = w->sink ? N_UNTIMED_TOPICS + rnd_below(w, NTOPICS - N_UNTIMED_TOPICS)
                    : rnd_below(w, NTOPICS);
    *topic = worker_topic(w, pl->t);
    if (!*topic)
        return false;
    uint32_t r = rnd_below(w, 20);
    if (r < 3) {
        pl->keykind = 1;
        pl->keynum = ++w->uniq_next;
    } else if (r < 6) {
        pl->keykind = 2;
        pl->keynum = rnd_below(w, NSHARED);
    } else if (r < 7 && w->last_unique[pl->t].valid) {
        pl->keykind = 1;
        pl->repeat = true;
        pl->keynum = w->last_unique[pl->t].n;
    }
    pl->plain = pl->keykind == 0 && rnd_below(w, 4) == 0;
    if (pl->keykind) {
        pl->po.key = pl->kbuf;
        pl->po.key_len =
            key_text(pl->kbuf, sizeof pl->kbuf, pl->keykind, (unsigned)w->id, pl->keynum);
    }
    pl->okey = !pl->plain && rnd_below(w, 5) == 0;
    if (pl->okey) {
        int n = snprintf(pl->obuf, sizeof pl->obuf, "o%d", w->id);
        pl->po.order_key = pl->obuf;
        pl->po.order_key_len = (size_t)n;
    }
    pl->origin = !pl->plain && rnd_below(w, 2) == 0;
    if (pl->origin)
        pl->po.origin = (uint32_t)w->id + 1;
    /* Wait bounds only where no untimed subscription can be. */
    if (!pl->plain && !topic_is_untimed(pl->t)) {
        switch (rnd_below(w, 4)) {
        case 0:
            pl->po.timeout_ns = -1;
            break;
        case 1:
            pl->po.timeout_ns = 20000 + (int64_t)rnd_below(w, 1000000);
            break;
        default:
            pl->po.timeout_ns = 0;
            break;
        }
    }
    return true;
}

/* Step 2: the payload, which tells receivers who published it, where,
 * with what key and options, and how to check every byte. */
static struct tpay fill_payload(struct worker *w, const struct pub_plan *pl)
{
    struct tpay p;
    memset(&p, 0, sizeof p);
    p.magic = PAY_MAGIC;
    p.pub = (uint16_t)w->id;
    p.topic = (uint16_t)pl->t;
    p.gidx = ++w->gidx;
    p.idx = w->accepted_idx[pl->t] + 1;
    p.keynum = pl->keynum;
    p.len = (uint32_t)(sizeof p + extra_sizes[rnd_below(w, N_EXTRA)]);
    p.fill = (uint32_t)rnd(w);
    p.keykind = (uint8_t)pl->keykind;
    p.okey = pl->okey;
    p.origin = pl->origin;
    memcpy(w->buf, &p, sizeof p);
    for (size_t i = sizeof p; i < p.len; i++)
        w->buf[i] = fill_byte(p.fill, i);
    return p;
}

/* Step 3: whether the publish's return and result fit what the worker
 * knows (the key's history, the close); true when it was accepted. */
static bool check_publish_outcome(struct worker *w, const struct pub_plan *pl, int rc,
                                  const rbus_pub_result *res, bool closed_before,
                                  bool close_started)
{
    bool accepted = false;
    if (rc == 0) {
        accepted = true;
        if (closed_before)
            rbus_test_report("worker %d: publish on %s accepted after rbus_close", w->id,
                             topic_names[pl->t]);
        if (!pl->plain && (res->duplicate || res->matched != res->queued + res->dropped))
            rbus_test_report("worker %d: publish result matched %u queued %u dropped %u dup %d",
                             w->id, res->matched, res->queued, res->dropped, (int)res->duplicate);
    } else if (rc == RBUS_DUPLICATE) {
        if (pl->keykind == 0 || (pl->keykind == 1 && !pl->repeat))
            rbus_test_report("worker %d: a never-used key (kind %u) on %s was a duplicate", w->id,
                             pl->keykind, topic_names[pl->t]);
        if (closed_before)
            rbus_test_report("worker %d: RBUS_DUPLICATE after rbus_close (want -ESHUTDOWN)",
                             w->id);
        if (res->matched || res->queued || res->dropped || res->evicted || !res->duplicate)
            rbus_test_report("worker %d: duplicate's result not zero + duplicate", w->id);
        atomic_fetch_add(&g.dups[pl->t], 1);
        w->pub_dup++;
        if (pl->repeat)
            atomic_fetch_add(&g.repeat_dup, 1);
    } else if (rc == -ESHUTDOWN) {
        if (!close_started)
            rbus_test_report("worker %d: publish on %s: -ESHUTDOWN before rbus_close", w->id,
                             topic_names[pl->t]);
        if (pl->plain) {
            /* Accepted and then interrupted, or refused: cannot tell. */
            atomic_fetch_add(&g.ambiguous[pl->t], 1);
            w->pub_ambiguous++;
        } else if (res->matched > 0) {
            /* Accepted, interrupted by the close while it waited. */
            accepted = true;
            if (closed_before)
                rbus_test_report("worker %d: accepted after rbus_close returned", w->id);
            if (res->matched != res->queued + res->dropped || res->duplicate)
                rbus_test_report("worker %d: interrupted publish's result inconsistent", w->id);
        } else {
            if (res->queued || res->dropped || res->evicted || res->duplicate)
                rbus_test_report("worker %d: refused publish's result not zero", w->id);
            w->pub_refused_closed++;
        }
    } else {
        rbus_test_report("worker %d: publish on %s returned %d (%s)", w->id, topic_names[pl->t], rc,
                         rbus_strerror(rc));
    }
    return accepted;
}

/* Step 4: an accepted publish: the tallies, and what its key says about
 * the dedup window. */
static void note_accepted(struct worker *w, const struct pub_plan *pl, const rbus_pub_result *res,
                          uint64_t c0)
{
    w->accepted_idx[pl->t]++;
    atomic_fetch_add(&g.accepted[pl->t], 1);
    w->pub_accepted++;
    if (!pl->plain && res->dropped > 0)
        w->pub_some_dropped++;
    if (pl->keykind) {
        w->pub_keyed++;
        uint64_t c2 = count_keyed(pl->t);
        if (pl->keykind == 2) {
            note_shared_accept(w, pl->t, pl->keynum, c0, c2);
        } else if (pl->repeat) {
            atomic_fetch_add(&g.repeat_accepted, 1);
            if (surely_remembered(w->last_unique[pl->t].c0, c2))
                rbus_test_report(
                    "worker %d: topic %s: key u%d-%llu accepted again with at most "
                    "%llu keys accepted in between (dedup_keys %d)",
                    w->id, topic_names[pl->t], w->id, (unsigned long long)pl->keynum,
                    (unsigned long long)(c2 - w->last_unique[pl->t].c0 + (uint64_t)g.nworkers),
                    DEDUP_KEYS);
            w->last_unique[pl->t].c0 = c0;
        } else {
            w->last_unique[pl->t].valid = true;
            w->last_unique[pl->t].n = pl->keynum;
            w->last_unique[pl->t].c0 = c0;
        }
    }
}

static void op_publish(struct worker *w)
{
    struct pub_plan plan;
    rbus_topic *topic;
    if (!plan_publish(w, &plan, &topic))
        return;
    const uint32_t t = plan.t;
    const struct tpay p = fill_payload(w, &plan);

    uint64_t c0 = plan.keykind ? atomic_load(&g.keyed_done[t]) : 0;
    bool closed_before = atomic_load(&g.closed);
    rbus_pub_result res;
    memset(&res, 0x77, sizeof res);
    act_begin(&w->act, OP_PUBLISH, 0, (int)t);
    int rc = plan.plain ? rbus_publish(topic, w->buf, p.len)
                        : rbus_publish_ex(topic, w->buf, p.len, &plan.po, &res);
    act_end(&w->act);
    w->ops[OP_PUBLISH]++;
    bool close_started = atomic_load(&g.close_started);

    if (check_publish_outcome(w, &plan, rc, &res, closed_before, close_started))
        note_accepted(w, &plan, &res, c0);
}

/* -------------------------------------------------------------- receiving */

static void check_msg(struct tsub *s, const rbus_msg *m)
{
    struct tpay p;
    size_t size = rbus_msg_size(m);
    const unsigned char *d = rbus_msg_data(m);
    if (size < sizeof p || d == NULL) {
        rbus_test_report("sub %llu: message of %zu bytes", (unsigned long long)s->id, size);
        return;
    }
    memcpy(&p, d, sizeof p);
    if (p.magic != PAY_MAGIC || p.len != size || p.pub >= g.nworkers || p.topic >= NTOPICS ||
        p.idx == 0 || p.gidx == 0) {
        rbus_test_report("sub %llu: bad header (magic %#x len %u/%zu pub %u topic %u)",
                         (unsigned long long)s->id, p.magic, p.len, size, p.pub, p.topic);
        return;
    }
    /* Payload bytes: the first, a middle and the last few. */
    size_t extra = size - sizeof p;
    if (extra) {
        size_t probes[6] = {sizeof p, sizeof p + 1, sizeof p + extra / 2, size - 2, size - 1,
                            sizeof p + extra / 3};
        for (int i = 0; i < 6; i++) {
            size_t at = probes[i] < size ? probes[i] : size - 1;
            if (d[at] != fill_byte(p.fill, at)) {
                rbus_test_report("sub %llu: payload byte %zu of (pub %u, topic %u, #%llu) wrong",
                                 (unsigned long long)s->id, at, p.pub, p.topic,
                                 (unsigned long long)p.idx);
                return;
            }
        }
    }
    const char *tn = rbus_msg_topic(m);
    if (tn == NULL || strcmp(tn, topic_names[p.topic]) != 0 ||
        !(s->mask & (UINT32_C(1) << p.topic))) {
        rbus_test_report("sub %llu (%s): message of topic %s arrived as %s",
                         (unsigned long long)s->id, s->pattern, topic_names[p.topic],
                         tn ? tn : "(null)");
        return;
    }
    size_t klen = 999;
    const void *k = rbus_msg_key(m, &klen);
    if (p.keykind) {
        char kbuf[40];
        size_t n = key_text(kbuf, sizeof kbuf, p.keykind, p.pub, p.keynum);
        if (k == NULL || klen != n || memcmp(k, kbuf, n) != 0)
            rbus_test_report("sub %llu: key of (pub %u, #%llu) wrong", (unsigned long long)s->id,
                             p.pub, (unsigned long long)p.gidx);
    } else if (k != NULL || klen != 0) {
        rbus_test_report("sub %llu: unkeyed message carries a key", (unsigned long long)s->id);
    }
    size_t olen = 999;
    const void *ok = rbus_msg_order_key(m, &olen);
    if (p.okey) {
        char obuf[16];
        int n = snprintf(obuf, sizeof obuf, "o%u", p.pub);
        if (ok == NULL || olen != (size_t)n || memcmp(ok, obuf, olen) != 0)
            rbus_test_report("sub %llu: order key wrong", (unsigned long long)s->id);
    } else if (ok != NULL || olen != 0) {
        rbus_test_report("sub %llu: message carries an order key it was not given",
                         (unsigned long long)s->id);
    }
    if (rbus_msg_origin(m) != (p.origin ? (uint32_t)p.pub + 1 : 0))
        rbus_test_report("sub %llu: origin %u", (unsigned long long)s->id, rbus_msg_origin(m));
    if (rbus_msg_attempt(m) != 1 || rbus_msg_origin_topic(m) != NULL || rbus_msg_time_ns(m) == 0)
        rbus_test_report("sub %llu: attempt/origin topic/time wrong", (unsigned long long)s->id);
    /* Order: one publisher's messages arrive in publish order, with
     * increasing sequence numbers per topic, none twice. */
    uint64_t seq = rbus_msg_seq(m);
    if (p.gidx <= s->last_gidx[p.pub])
        rbus_test_report("sub %llu (%s): publisher %u out of order: #%llu after #%llu",
                         (unsigned long long)s->id, s->pattern, p.pub,
                         (unsigned long long)p.gidx, (unsigned long long)s->last_gidx[p.pub]);
    s->last_gidx[p.pub] = p.gidx;
    if (seq == 0 || seq <= s->last_seq[p.pub][p.topic] || seq < p.idx)
        rbus_test_report("sub %llu: publisher %u topic %s: seq %llu after %llu (its #%llu)",
                         (unsigned long long)s->id, p.pub, topic_names[p.topic],
                         (unsigned long long)seq,
                         (unsigned long long)s->last_seq[p.pub][p.topic],
                         (unsigned long long)p.idx);
    s->last_seq[p.pub][p.topic] = seq;
    if (s->count_idx[p.pub][p.topic] == 0)
        s->first_idx[p.pub][p.topic] = p.idx;
    else if (p.idx <= s->last_idx[p.pub][p.topic])
        rbus_test_report("sub %llu: (pub %u, topic %u) #%llu after #%llu",
                         (unsigned long long)s->id, p.pub, p.topic, (unsigned long long)p.idx,
                         (unsigned long long)s->last_idx[p.pub][p.topic]);
    s->last_idx[p.pub][p.topic] = p.idx;
    s->count_idx[p.pub][p.topic]++;
}

static void take_msgs(struct worker *w, struct tsub *s, rbus_msg **msgs, int n)
{
    for (int i = 0; i < n; i++) {
        check_msg(s, msgs[i]);
        if (w->nheld < MAX_HELD && rnd_below(w, 16) == 0) {
            /* Keep one more reference for a while; drop ours now. */
            rbus_msg *again = rbus_msg_ref(msgs[i]);
            if (again != msgs[i])
                rbus_test_report("rbus_msg_ref returned another pointer");
            w->held[w->nheld++] = again;
        }
        rbus_msg_release(msgs[i]);
    }
    s->received += (uint64_t)n;
    w->recv_msgs += (uint64_t)n;
}

/* One receive on s. Returns the count, 0 when nothing came, -1 on
 * -ESHUTDOWN. */
static int recv_once(struct worker *w, struct tsub *s, bool batch, int64_t timeout_ns)
{
    rbus_msg *msgs[BATCH_MAX];
    size_t max = batch ? 1 + rnd_below(w, BATCH_MAX) : 1;
    bool closed_before = atomic_load(&g.closed);
    bool sub_closed_before = s->closed; /* our rbus_sub_close had returned */
    act_begin(&w->act, batch ? OP_RECV_BATCH : OP_RECV, s->id, -1);
    int rc;
    if (batch) {
        rc = rbus_recv_batch(s->sub, msgs, max, timeout_ns);
    } else {
        rc = rbus_recv(s->sub, &msgs[0], timeout_ns);
        if (rc == 0)
            rc = 1;
    }
    act_end(&w->act);
    w->ops[batch ? OP_RECV_BATCH : OP_RECV]++;
    if (rc > 0) {
        if ((size_t)rc > max) {
            rbus_test_report("sub %llu: rbus_recv_batch gave %d > max %zu",
                             (unsigned long long)s->id, rc, max);
            rc = (int)max;
        }
        if (s->shut)
            rbus_test_report("sub %llu: a message after -ESHUTDOWN", (unsigned long long)s->id);
        take_msgs(w, s, msgs, rc);
        return rc;
    }
    if (rc == -EAGAIN || rc == -ETIMEDOUT) {
        if ((rc == -EAGAIN) != (timeout_ns == 0))
            rbus_test_report("sub %llu: %s with timeout %lld", (unsigned long long)s->id,
                             rbus_strerror(rc), (long long)timeout_ns);
        if (closed_before || sub_closed_before || s->shut)
            rbus_test_report("sub %llu: %s after %s (want a message or -ESHUTDOWN)",
                             (unsigned long long)s->id, rbus_strerror(rc),
                             s->shut ? "-ESHUTDOWN"
                                     : (sub_closed_before ? "rbus_sub_close" : "rbus_close"));
        w->recv_empty++;
        return 0;
    }
    if (rc == -ESHUTDOWN) {
        if (!s->closed && !atomic_load(&g.close_started))
            rbus_test_report("sub %llu: -ESHUTDOWN on an open subscription of an open bus",
                             (unsigned long long)s->id);
        s->shut = true;
        return -1;
    }
    rbus_test_report("sub %llu: receive returned %d (%s)", (unsigned long long)s->id, rc,
                     rbus_strerror(rc));
    return -1;
}

static void op_recv(struct worker *w, bool batch)
{
    if (w->nsubs == 0)
        return;
    struct tsub *s = w->subs[rnd_below(w, (uint32_t)w->nsubs)];
    static const int64_t timeouts[] = {0, 0, 50000, 200000, 1000000};
    recv_once(w, s, batch, timeouts[rnd_below(w, 5)]);
}

/* ------------------------------------------------------- subscriptions */

static void op_subscribe(struct worker *w)
{
    if (w->nsubs >= MAX_OWNED)
        return;
    struct tsub *s = calloc(1, sizeof *s);
    if (!s) {
        rbus_test_report("worker %d: out of memory", w->id);
        return;
    }
    s->fd = -1;
    uint32_t kind = rnd_below(w, 8);
    if (w->sink && kind < 3) {
        s->policy = RBUS_BLOCK;
        s->untimed = true;
        s->pattern = untimed_patterns[rnd_below(w, N_UNTIMED_PATTERNS)];
        s->block_timeout_ns = rnd_below(w, 2) ? 0 : -1; /* both mean forever */
    } else {
        s->pattern = any_patterns[rnd_below(w, N_ANY_PATTERNS)];
        s->policy = kind < 5 ? RBUS_BLOCK : (kind < 7 ? RBUS_DROP_OLDEST : RBUS_DROP_NEWEST);
        if (kind == 7 && rnd_below(w, 2))
            s->policy = RBUS_DROP_NEWEST;
        else if (kind < 5 && rnd_below(w, 3) == 0)
            s->policy = rnd_below(w, 2) ? RBUS_DROP_OLDEST : RBUS_DROP_NEWEST;
        if (s->policy == RBUS_BLOCK) {
            static const int64_t tmo[] = {30000, 100000, 500000, 2000000};
            s->block_timeout_ns = tmo[rnd_below(w, 4)];
        }
    }
    s->mask = mask_of(s->pattern);
    static const uint32_t caps[] = {0, 1, 2, 3, 5, 8, 16, 33, 64, 256};
    static const uint32_t tiny[] = {1, 2, 3, 4, 5, 8};
    s->cap_req = g.cfg->tiny_caps ? tiny[rnd_below(w, 6)] : caps[rnd_below(w, 10)];
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = s->cap_req;
    o.overflow = s->policy;
    o.block_timeout_ns = s->block_timeout_ns;
    static const int64_t spins[] = {0, -1, 2000, 50000};
    o.spin_ns = spins[rnd_below(w, 4)];
    char name[32];
    if (rnd_below(w, 2)) {
        snprintf(name, sizeof name, "w%d-%s", w->id, s->untimed ? "untimed" : "sub");
        o.name = name;
    }
    bool closed_before = atomic_load(&g.closed);
    act_begin(&w->act, OP_SUBSCRIBE, 0, -1);
    int rc = rbus_subscribe(g.bus, s->pattern, &o, &s->sub);
    act_end(&w->act);
    w->ops[OP_SUBSCRIBE]++;
    if (rc == -ESHUTDOWN) {
        if (!atomic_load(&g.close_started))
            rbus_test_report("worker %d: rbus_subscribe: -ESHUTDOWN before rbus_close", w->id);
        free(s);
        return;
    }
    if (rc != 0 || s->sub == NULL) {
        rbus_test_report("worker %d: rbus_subscribe(%s) = %d (%s)", w->id, s->pattern, rc,
                         rbus_strerror(rc));
        free(s);
        return;
    }
    if (closed_before)
        rbus_test_report("worker %d: rbus_subscribe succeeded after rbus_close", w->id);
    s->id = rbus_sub_id(s->sub);
    rbus_sub_stats st;
    if (rbus_sub_stats_get(s->sub, &st) != 0)
        rbus_test_report("worker %d: stats of a new subscription failed", w->id);
    uint32_t want = s->cap_req ? s->cap_req : DEFAULT_CAP;
    if (st.capacity < want || (st.capacity & (st.capacity - 1)) != 0)
        rbus_test_report("sub %llu: capacity %u for %u asked", (unsigned long long)s->id,
                         st.capacity, s->cap_req);
    s->cap = st.capacity;
    w->subs[w->nsubs++] = s;
    w->subs_made++;
}

static uint64_t drops_of(const rbus_sub_stats *st)
{
    return st->dropped_newest + st->dropped_oldest + st->dropped_timeout + st->dropped_closed;
}

static bool adds_up(const rbus_sub_stats *st)
{
    return st->offered == st->received + st->depth + drops_of(st);
}

/*
 * The exact check of a subscription that is closed (no publisher offers it
 * anything any more), whose owner is not receiving, and whose stats have
 * settled. `drained`: a receive returned -ESHUTDOWN.
 */
static void check_sub_exact(const char *when, struct tsub *s, const rbus_sub_stats *st,
                            bool workers_running)
{
    unsigned long long id = (unsigned long long)s->id;
    if (!adds_up(st))
        rbus_test_report("%s: sub %llu (%s): offered %llu != received %llu + depth %u + "
                         "dropped %llu/%llu/%llu/%llu",
                         when, id, s->pattern, (unsigned long long)st->offered,
                         (unsigned long long)st->received, st->depth,
                         (unsigned long long)st->dropped_newest,
                         (unsigned long long)st->dropped_oldest,
                         (unsigned long long)st->dropped_timeout,
                         (unsigned long long)st->dropped_closed);
    if (st->received != s->received)
        rbus_test_report("%s: sub %llu: stats say %llu received, its owner took %llu", when, id,
                         (unsigned long long)st->received, (unsigned long long)s->received);
    if (s->shut && st->depth != 0)
        rbus_test_report("%s: sub %llu: depth %u after -ESHUTDOWN", when, id, st->depth);
    if (st->capacity != s->cap || st->high_water > st->capacity || st->depth > st->capacity)
        rbus_test_report("%s: sub %llu: capacity %u high water %u depth %u", when, id,
                         st->capacity, st->high_water, st->depth);
    switch (s->policy) {
    case RBUS_BLOCK:
        if (st->dropped_newest || st->dropped_oldest)
            rbus_test_report("%s: block sub %llu: dropped newest %llu oldest %llu", when, id,
                             (unsigned long long)st->dropped_newest,
                             (unsigned long long)st->dropped_oldest);
        if (s->untimed && st->dropped_timeout)
            rbus_test_report("%s: untimed block sub %llu (%s): dropped_timeout %llu", when, id,
                             s->pattern, (unsigned long long)st->dropped_timeout);
        break;
    case RBUS_DROP_OLDEST:
    case RBUS_DROP_NEWEST:
        if (st->dropped_timeout || st->dropped_closed || st->publisher_waits ||
            (s->policy == RBUS_DROP_OLDEST ? st->dropped_newest : st->dropped_oldest))
            rbus_test_report("%s: %s sub %llu: newest %llu oldest %llu timeout %llu closed %llu "
                             "waits %llu",
                             when, s->policy == RBUS_DROP_OLDEST ? "drop-oldest" : "drop-newest",
                             id, (unsigned long long)st->dropped_newest,
                             (unsigned long long)st->dropped_oldest,
                             (unsigned long long)st->dropped_timeout,
                             (unsigned long long)st->dropped_closed,
                             (unsigned long long)st->publisher_waits);
        break;
    }
    /* Messages missing between two received ones of a publisher on a topic
     * were offered (the subscription was listed all along) and not
     * received: each one is a drop. */
    uint64_t missing = 0, counted = 0;
    for (int p = 0; p < MAX_WORKERS; p++)
        for (int t = 0; t < NTOPICS; t++) {
            uint64_t c = s->count_idx[p][t];
            if (c) {
                missing += s->last_idx[p][t] - s->first_idx[p][t] + 1 - c;
                counted += c;
            }
        }
    if (counted != s->received)
        rbus_test_report("%s: sub %llu: %llu messages tallied, %llu received", when, id,
                         (unsigned long long)counted, (unsigned long long)s->received);
    uint64_t allowed = s->untimed ? st->dropped_closed : drops_of(st);
    if (missing > allowed)
        rbus_test_report("%s: sub %llu (%s, %s): %llu messages lost between received ones, "
                         "only %llu drops to explain them",
                         when, id, s->pattern,
                         s->untimed ? "untimed block"
                                    : (s->policy == RBUS_BLOCK ? "timed block"
                                                               : (s->policy == RBUS_DROP_OLDEST
                                                                      ? "drop-oldest"
                                                                      : "drop-newest")),
                         (unsigned long long)missing, (unsigned long long)allowed);
    /* It cannot have been offered more than was accepted where it matches
     * (workers count an acceptance when their publish returns: while they
     * run, each may have one accepted that it has not counted yet). */
    uint64_t accepted = workers_running ? (uint64_t)g.nworkers : 0;
    for (int t = 0; t < NTOPICS; t++)
        if (s->mask & (UINT32_C(1) << t))
            accepted += atomic_load(&g.accepted[t]) + atomic_load(&g.ambiguous[t]);
    if (st->offered > accepted)
        rbus_test_report("%s: sub %llu (%s): offered %llu, only %llu accepted on its topics",
                         when, id, s->pattern, (unsigned long long)st->offered,
                         (unsigned long long)accepted);
    atomic_fetch_add(&g.chk_subs, 1);
    atomic_fetch_add(&g.chk_offered, st->offered);
    atomic_fetch_add(&g.chk_received, st->received);
    atomic_fetch_add(&g.chk_depth, st->depth);
    atomic_fetch_add(&g.chk_newest, st->dropped_newest);
    atomic_fetch_add(&g.chk_oldest, st->dropped_oldest);
    atomic_fetch_add(&g.chk_timeout, st->dropped_timeout);
    atomic_fetch_add(&g.chk_closed, st->dropped_closed);
    atomic_fetch_add(&g.chk_waits, st->publisher_waits);
    atomic_fetch_add(&g.chk_missing, missing);
    if (s->untimed) {
        atomic_fetch_add(&g.chk_untimed, 1);
        atomic_fetch_add(&g.chk_untimed_waits, st->publisher_waits);
        atomic_fetch_add(&g.chk_untimed_closed, st->dropped_closed);
    }
}

/* Stats of a closed subscription, once publishers that were waiting on it
 * have counted their drop (they do so after rbus_sub_close returns). */
static bool settled_stats(struct worker *w, struct tsub *s, rbus_sub_stats *st)
{
    uint64_t deadline = rbus_test_now_ns() + (uint64_t)SETTLE_NS;
    act_begin(&w->act, OP_SETTLE, s->id, -1);
    bool ok;
    for (;;) {
        if (rbus_sub_stats_get(s->sub, st) != 0) {
            rbus_test_report("sub %llu: rbus_sub_stats_get failed", (unsigned long long)s->id);
            ok = false;
            break;
        }
        if (adds_up(st)) {
            ok = true;
            break;
        }
        if (rbus_test_now_ns() > deadline) {
            ok = false;
            break;
        }
        rbus_test_sleep_us(100);
    }
    act_end(&w->act);
    return ok;
}

static void remove_owned(struct worker *w, int i)
{
    free(w->subs[i]);
    w->subs[i] = w->subs[--w->nsubs];
}

/*
 * Unsubscribe the owned subscription i. Usually: rbus_sub_close, sometimes
 * a drain to -ESHUTDOWN, the exact check, then rbus_unsubscribe (with
 * whatever is still queued). Now and then rbus_unsubscribe straight on the
 * open subscription, after the checks that hold while publishers run.
 */
static void unsubscribe_owned(struct worker *w, int i, bool allow_direct)
{
    struct tsub *s = w->subs[i];
    if (allow_direct && rnd_below(w, 5) == 0) {
        w->subs_direct++;
        rbus_sub_stats st;
        if (rbus_sub_stats_get(s->sub, &st) != 0 || st.received != s->received ||
            st.offered < s->last.offered)
            rbus_test_report("sub %llu: before a direct unsubscribe: received %llu (owner took "
                             "%llu), offered %llu",
                             (unsigned long long)s->id, (unsigned long long)st.received,
                             (unsigned long long)s->received, (unsigned long long)st.offered);
    } else {
        if (!s->closed) {
            act_begin(&w->act, OP_SUB_CLOSE, s->id, -1);
            int rc = rbus_sub_close(s->sub);
            act_end(&w->act);
            if (rc != 0)
                rbus_test_report("sub %llu: rbus_sub_close = %d", (unsigned long long)s->id, rc);
            s->closed = true;
        }
        if (rnd_below(w, 2)) {
            while (!s->shut && recv_once(w, s, true, 1000000) >= 0) {
            }
        }
        rbus_sub_stats st;
        if (!settled_stats(w, s, &st)) {
            rbus_test_report("sub %llu (%s): stats never added up after rbus_sub_close "
                             "(offered %llu received %llu depth %u dropped %llu)",
                             (unsigned long long)s->id, s->pattern,
                             (unsigned long long)st.offered, (unsigned long long)st.received,
                             st.depth, (unsigned long long)drops_of(&st));
        }
        check_sub_exact("before rbus_unsubscribe", s, &st, true);
    }
    act_begin(&w->act, OP_UNSUBSCRIBE, s->id, -1);
    int rc = rbus_unsubscribe(s->sub);
    act_end(&w->act);
    w->ops[OP_UNSUBSCRIBE]++;
    if (rc != 0)
        rbus_test_report("sub %llu: rbus_unsubscribe = %d (%s)", (unsigned long long)s->id, rc,
                         rbus_strerror(rc));
    w->subs_unsubscribed++;
    remove_owned(w, i);
}

static void op_sub_close(struct worker *w)
{
    if (w->nsubs == 0)
        return;
    struct tsub *s = w->subs[rnd_below(w, (uint32_t)w->nsubs)];
    act_begin(&w->act, OP_SUB_CLOSE, s->id, -1);
    int rc = rbus_sub_close(s->sub);
    act_end(&w->act);
    w->ops[OP_SUB_CLOSE]++;
    if (rc != 0)
        rbus_test_report("sub %llu: rbus_sub_close = %d", (unsigned long long)s->id, rc);
    if (!s->closed)
        w->subs_closed++;
    s->closed = true;
}

/* Mid-run stats: counters only grow, `received` is exact. */
static void op_stats(struct worker *w)
{
    if (w->nsubs > 0) {
        struct tsub *s = w->subs[rnd_below(w, (uint32_t)w->nsubs)];
        rbus_sub_stats st;
        act_begin(&w->act, OP_STATS, s->id, -1);
        int rc = rbus_sub_stats_get(s->sub, &st);
        act_end(&w->act);
        const rbus_sub_stats *o = &s->last;
        if (rc != 0 || st.received != s->received || st.offered < o->offered ||
            st.dropped_newest < o->dropped_newest || st.dropped_oldest < o->dropped_oldest ||
            st.dropped_timeout < o->dropped_timeout || st.dropped_closed < o->dropped_closed ||
            st.publisher_waits < o->publisher_waits || st.high_water < o->high_water ||
            st.capacity != s->cap || st.depth > st.capacity)
            rbus_test_report("sub %llu: mid-run stats went backwards or are off (received %llu, "
                             "owner took %llu)",
                             (unsigned long long)s->id, (unsigned long long)st.received,
                             (unsigned long long)s->received);
        if (s->untimed && st.dropped_timeout)
            rbus_test_report("untimed sub %llu: dropped_timeout %llu", (unsigned long long)s->id,
                             (unsigned long long)st.dropped_timeout);
        s->last = st;
    }
    uint32_t t = rnd_below(w, NTOPICS);
    rbus_topic *h = atomic_load(&g.topics[t]);
    if (h) {
        rbus_topic_stats ts;
        if (rbus_topic_stats_get(h, &ts) != 0)
            rbus_test_report("topic %s: rbus_topic_stats_get failed", topic_names[t]);
    }
    w->ops[OP_STATS]++;
}

static void op_topic_open(struct worker *w)
{
    uint32_t t = rnd_below(w, NTOPICS);
    rbus_topic *h = NULL;
    bool closed_before = atomic_load(&g.closed);
    act_begin(&w->act, OP_TOPIC_OPEN, 0, (int)t);
    int rc = rbus_topic_open(g.bus, topic_names[t], &h);
    act_end(&w->act);
    w->ops[OP_TOPIC_OPEN]++;
    if (rc == -ESHUTDOWN) {
        if (!atomic_load(&g.close_started))
            rbus_test_report("rbus_topic_open: -ESHUTDOWN before rbus_close");
        return;
    }
    if (rc != 0) {
        rbus_test_report("rbus_topic_open(%s) = %d", topic_names[t], rc);
        return;
    }
    if (closed_before)
        rbus_test_report("rbus_topic_open succeeded after rbus_close");
    rbus_topic *expect = NULL;
    if (!atomic_compare_exchange_strong(&g.topics[t], &expect, h) && expect != h)
        rbus_test_report("topic %s: two handles", topic_names[t]);
    if (strcmp(rbus_topic_name(h), topic_names[t]) != 0)
        rbus_test_report("topic %s: named %s", topic_names[t], rbus_topic_name(h));
    w->topics[t] = h;
}

static void op_sub_fd(struct worker *w)
{
    if (w->nsubs == 0)
        return;
    struct tsub *s = w->subs[rnd_below(w, (uint32_t)w->nsubs)];
    act_begin(&w->act, OP_SUB_FD, s->id, -1);
    int fd = rbus_sub_fd(s->sub);
    act_end(&w->act);
    w->ops[OP_SUB_FD]++;
    if (fd < 0 || (s->fd >= 0 && fd != s->fd))
        rbus_test_report("sub %llu: rbus_sub_fd = %d (was %d)", (unsigned long long)s->id, fd,
                         s->fd);
    s->fd = fd;
}

static void release_some(struct worker *w, bool all)
{
    while (w->nheld > 0) {
        rbus_msg_release(w->held[--w->nheld]);
        if (!all)
            break;
    }
    w->ops[OP_RELEASE]++;
}

/* ------------------------------------------------------------ the worker */

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    while (!atomic_load(&g.closed)) {
        uint32_t r = rnd_below(w, 100);
        if (r < 40) {
            op_publish(w);
        } else if (r < 60) {
            op_recv(w, false);
        } else if (r < 72) {
            op_recv(w, true);
        } else if (r < 78) {
            op_subscribe(w);
        } else if (r < 81) {
            if (w->nsubs > 0)
                unsubscribe_owned(w, (int)rnd_below(w, (uint32_t)w->nsubs), true);
        } else if (r < 83) {
            op_sub_close(w);
        } else if (r < 88) {
            op_stats(w);
        } else if (r < 92) {
            release_some(w, false);
        } else if (r < 96) {
            op_topic_open(w);
        } else if (r < 97) {
            op_sub_fd(w);
        } else {
            /* A sink never idles long: it owns what publishers wait for. */
            if (!w->sink)
                sched_yield();
        }
        /* A closed subscription that is drained is of no more use. */
        for (int i = 0; i < w->nsubs; i++) {
            if (w->subs[i]->shut && !atomic_load(&g.close_started)) {
                unsubscribe_owned(w, i, false);
                break;
            }
        }
    }
    /* rbus_close has returned: drain everything to -ESHUTDOWN. Nothing may
     * time out any more. */
    for (int i = 0; i < w->nsubs; i++) {
        struct tsub *s = w->subs[i];
        act_begin(&w->act, OP_DRAIN, s->id, -1);
        while (!s->shut && recv_once(w, s, rnd_below(w, 2) == 0, 1000000) >= 0) {
        }
        act_end(&w->act);
        /* -ESHUTDOWN stays. */
        rbus_msg *m = NULL;
        if (rbus_recv(s->sub, &m, 0) != -ESHUTDOWN || m != NULL)
            rbus_test_report("sub %llu: -ESHUTDOWN was not final", (unsigned long long)s->id);
    }
    /* After the close every publish is refused. */
    for (uint32_t t = 0; t < NTOPICS; t++) {
        if (!w->topics[t])
            continue;
        rbus_pub_result res;
        memset(&res, 0x77, sizeof res);
        int rc = rbus_publish_ex(w->topics[t], "x", 1, NULL, &res);
        if (rc != -ESHUTDOWN || res.matched || res.queued || res.dropped || res.duplicate)
            rbus_test_report("worker %d: publish after rbus_close = %d", w->id, rc);
    }
    /* ... and so are subscribe and topic_open, new name or old. */
    rbus_sub *late_sub = (rbus_sub *)w;
    int rc = rbus_subscribe(g.bus, ">", NULL, &late_sub);
    if (rc != -ESHUTDOWN || late_sub != NULL)
        rbus_test_report("worker %d: rbus_subscribe after rbus_close = %d", w->id, rc);
    char late_name[32];
    snprintf(late_name, sizeof late_name, "late.w%d", w->id);
    rbus_topic *late_topic = (rbus_topic *)w;
    rc = rbus_topic_open(g.bus, late_name, &late_topic);
    if (rc != -ESHUTDOWN || late_topic != NULL)
        rbus_test_report("worker %d: rbus_topic_open(new) after rbus_close = %d", w->id, rc);
    late_topic = (rbus_topic *)w;
    rc = rbus_topic_open(g.bus, topic_names[w->id % NTOPICS], &late_topic);
    if (rc != -ESHUTDOWN || late_topic != NULL)
        rbus_test_report("worker %d: rbus_topic_open(old) after rbus_close = %d", w->id, rc);
    /* Unsubscribe some after the close (checked exactly first); the main
     * thread checks the rest and leaves some to rbus_destroy. */
    for (int i = 0; i < w->nsubs;) {
        if (rnd_below(w, 3) == 0)
            unsubscribe_owned(w, i, false);
        else
            i++;
    }
    release_some(w, true);
    return NULL;
}

/* ------------------------------------------------------------ the watchdog */

static void dump_activity(const struct activity *a, int64_t now)
{
    int op = atomic_load(&a->op);
    int64_t since = atomic_load(&a->since_ns);
    int topic = atomic_load(&a->topic);
    fprintf(stderr, "  %-10s %s", a->name, op_names[op]);
    if (op != OP_IDLE)
        fprintf(stderr, " for %.3f s", (double)(now - since) / 1e9);
    if (atomic_load(&a->sub_id))
        fprintf(stderr, ", sub %llu", (unsigned long long)atomic_load(&a->sub_id));
    if (topic >= 0 && topic < NTOPICS)
        fprintf(stderr, ", topic %s", topic_names[topic]);
    fprintf(stderr, "; %llu operations done\n", (unsigned long long)atomic_load(&a->ops_done));
}

/* The torture's second trigger, beside the shared watchdog's silence: one
 * thread in one operation for over watchdog_ns() while others progress. */
static const char *torture_stuck(void *arg, uint64_t now_ns)
{
    (void)arg;
    int64_t now = (int64_t)now_ns;
    const struct activity *stuck = NULL;
    for (int i = 0; i < g.nworkers; i++) {
        const struct activity *a = &g.workers[i].act;
        if (atomic_load(&a->op) != OP_IDLE && now - atomic_load(&a->since_ns) > watchdog_ns())
            stuck = a;
    }
    if (atomic_load(&g.main_act.op) != OP_IDLE && atomic_load(&g.main_act.op) != OP_SLEEP &&
        now - atomic_load(&g.main_act.since_ns) > watchdog_ns())
        stuck = &g.main_act;
    if (!stuck)
        return NULL;
    static char why[96];
    snprintf(why, sizeof why, "%s has been in one operation for over %lld s", stuck->name,
             (long long)(watchdog_ns() / 1000000000));
    return why;
}

/* The watchdog's report: the bus's state and every thread's activity. */
static void torture_dump(void *arg, uint64_t now_ns)
{
    (void)arg;
    fprintf(stderr, "close started %d, closed %d. Threads:\n", (int)atomic_load(&g.close_started),
            (int)atomic_load(&g.closed));
    dump_activity(&g.main_act, (int64_t)now_ns);
    for (int i = 0; i < g.nworkers; i++)
        dump_activity(&g.workers[i].act, (int64_t)now_ns);
}

/* ---------------------------------------------------------------- the run */

/* Step 1: the bus (on the counting allocator), its first topics, and the
 * workers' state; returns how long the workers run, in ms. */
static uint64_t torture_setup(const struct run_cfg *cfg, struct rbus_test_alloc *ca)
{
    rbus_test_errors_reset();
    memset(&g, 0, sizeof g);
    g.cfg = cfg;
    g.nworkers = cfg->sinks + cfg->sources;
    assert_true(g.nworkers <= MAX_WORKERS);
    for (int t = 0; t < NTOPICS; t++)
        pthread_mutex_init(&g.shared_lock[t], NULL);
    snprintf(g.main_act.name, sizeof g.main_act.name, "main");
    atomic_store(&g.main_act.topic, -1);

    const uint64_t run_ms = rbus_test_scaled(cfg->base_ms, 1000);
    rbus_test_alloc_init(ca);
    rbus_config bc;
    rbus_config_init(&bc);
    bc.allocator = &ca->hooks;
    bc.dedup_keys = DEDUP_KEYS;
    bc.default_capacity = DEFAULT_CAP;
    assert_rbus_ok(rbus_create(&g.bus, &bc));
    for (uint32_t t = 0; t < FIRST_LAZY_TOPIC; t++) {
        rbus_topic *h = NULL;
        assert_rbus_ok(rbus_topic_open(g.bus, topic_names[t], &h));
        atomic_store(&g.topics[t], h);
    }
    printf("torture[%s]: %d sinks + %d sources for %llu ms (RBUS_STRESS_SCALE=%g), %d topics, "
           "dedup_keys %d, default capacity %d%s\n",
           cfg->label, cfg->sinks, cfg->sources, (unsigned long long)run_ms,
           rbus_test_stress_scale(), NTOPICS, DEDUP_KEYS, DEFAULT_CAP,
           cfg->tiny_caps ? ", capacities 1..8" : "");

    g.workers = calloc((size_t)g.nworkers, sizeof *g.workers);
    assert_non_null(g.workers);
    uint64_t seed = rbus_test_now_ns();
    printf("torture[%s]: seed %llu, watchdog after %lld s in one operation or of silence\n",
           cfg->label, (unsigned long long)seed, (long long)(watchdog_ns() / 1000000000));
    for (int i = 0; i < g.nworkers; i++) {
        struct worker *w = &g.workers[i];
        w->id = i;
        w->sink = i < cfg->sinks;
        w->rng = (seed + (uint64_t)i * UINT64_C(0x9E3779B97F4A7C15)) | 1;
        snprintf(w->act.name, sizeof w->act.name, "%s %d", w->sink ? "sink" : "source", i);
        atomic_store(&w->act.topic, -1);
    }
    return run_ms;
}

/* Step 2: the watchdog and the workers run for run_ms, then the bus is
 * closed under them and they are joined. Returns when they started. */
static uint64_t torture_run_and_close(uint64_t run_ms, uint64_t *close_ns)
{
    snprintf(g.wd_label, sizeof g.wd_label, "torture (%s)", g.cfg->label);
    g.wd.stuck = torture_stuck;
    g.wd.dump = torture_dump;
    rbus_test_watchdog_start(&g.wd, g.wd_label, watchdog_ns() / 1000000, 0, NULL);
    uint64_t t0 = rbus_test_now_ns();
    rbus_test_threads_init(&g.team);
    rbus_test_threads_add_n(&g.team, g.nworkers, worker_main, g.workers, sizeof *g.workers);
    rbus_test_threads_start(&g.team);

    act_begin(&g.main_act, OP_SLEEP, 0, -1);
    while (rbus_test_now_ns() - t0 < run_ms * UINT64_C(1000000))
        rbus_test_sleep_us(5000);
    act_end(&g.main_act);

    /* Close while everybody is busy. */
    atomic_store(&g.close_started, true);
    uint64_t tc = rbus_test_now_ns();
    act_begin(&g.main_act, OP_CLOSE, 0, -1);
    rbus_close(g.bus);
    act_end(&g.main_act);
    *close_ns = rbus_test_now_ns() - tc;
    atomic_store(&g.closed, true);

    act_begin(&g.main_act, OP_JOIN, 0, -1);
    rbus_test_threads_join(&g.team);
    act_end(&g.main_act);

    return t0;
}

/* Step 3: every surviving subscription (closed by the bus, drained by its
 * owner, nobody receiving) is exact. Returns how many there are. */
static unsigned torture_check_survivors(void)
{
    act_begin(&g.main_act, OP_CHECK, 0, -1);
    unsigned survivors = 0;
    for (int i = 0; i < g.nworkers; i++) {
        struct worker *w = &g.workers[i];
        for (int j = 0; j < w->nsubs; j++) {
            struct tsub *s = w->subs[j];
            rbus_sub_stats st;
            assert_rbus_ok(rbus_sub_stats_get(s->sub, &st));
            if (!s->shut)
                rbus_test_report("sub %llu: not drained to -ESHUTDOWN", (unsigned long long)s->id);
            check_sub_exact("at the end", s, &st, false);
            survivors++;
        }
    }
    act_end(&g.main_act);
    rbus_test_assert_no_thread_errors();

    return survivors;
}

/* What the topics counted, summed over topics. */
struct topic_totals {
    uint64_t pub, dup, amb;
    unsigned subs_after_close;
};

/* Step 4: per topic, what the workers saw accepted, and the duplicates. */
static struct topic_totals torture_check_topics(const struct run_cfg *cfg)
{
    struct topic_totals tt = {0, 0, 0, 0};
    for (uint32_t t = 0; t < NTOPICS; t++) {
        rbus_topic *h = atomic_load(&g.topics[t]);
        uint64_t acc = atomic_load(&g.accepted[t]), amb = atomic_load(&g.ambiguous[t]);
        uint64_t dups = atomic_load(&g.dups[t]);
        if (!h) {
            assert_int_equal(acc + amb + dups, 0);
            printf("torture[%s]:   topic %-8s never opened\n", cfg->label, topic_names[t]);
            continue;
        }
        rbus_topic_stats ts;
        assert_rbus_ok(rbus_topic_stats_get(h, &ts));
        printf("torture[%s]:   topic %-8s published %llu (workers saw %llu accepted, %llu "
               "unknown at close), duplicates %llu (workers saw %llu), keyed accepted %llu\n",
               cfg->label, topic_names[t], (unsigned long long)ts.published,
               (unsigned long long)acc, (unsigned long long)amb,
               (unsigned long long)ts.duplicates, (unsigned long long)dups,
               (unsigned long long)atomic_load(&g.keyed_done[t]));
        assert_true(ts.published >= acc);
        assert_true(ts.published <= acc + amb);
        assert_int_equal(ts.duplicates, dups);
        /* "Matching open subscriptions now": after rbus_close none is open
         * for publishing; the library keeps counting those its owner did
         * not close itself (still listed). Either reading is accepted. */
        uint32_t listed = 0;
        for (int i = 0; i < g.nworkers; i++)
            for (int j = 0; j < g.workers[i].nsubs; j++) {
                const struct tsub *s = g.workers[i].subs[j];
                if (!s->closed && (s->mask & (UINT32_C(1) << t)))
                    listed++;
            }
        if (ts.subscriptions != 0 && ts.subscriptions != listed) {
            print_error("topic %s: %u subscriptions after rbus_close; %u survive unclosed\n",
                        topic_names[t], ts.subscriptions, listed);
            fail();
        }
        if (ts.subscriptions != 0)
            tt.subs_after_close += ts.subscriptions;
        tt.pub += ts.published;
        tt.dup += ts.duplicates;
        tt.amb += amb;
    }

    return tt;
}

/* Step 5: the workers' own tallies, printed, and what must add up. */
static void torture_check_workers(const struct run_cfg *cfg, uint64_t t0, uint64_t close_ns,
                                  unsigned survivors, const struct topic_totals *tt)
{
    uint64_t ops = 0, recv_msgs = 0, recv_empty = 0, made = 0, unsub = 0, closed = 0;
    uint64_t acc = 0, dup = 0, refused = 0, keyed = 0, some_dropped = 0, pubs = 0, recvs = 0;
    uint64_t direct = 0;
    for (int i = 0; i < g.nworkers; i++) {
        struct worker *w = &g.workers[i];
        ops += atomic_load(&w->act.ops_done);
        recv_msgs += w->recv_msgs;
        recv_empty += w->recv_empty;
        made += w->subs_made;
        unsub += w->subs_unsubscribed;
        closed += w->subs_closed;
        acc += w->pub_accepted;
        dup += w->pub_dup;
        refused += w->pub_refused_closed;
        keyed += w->pub_keyed;
        some_dropped += w->pub_some_dropped;
        direct += w->subs_direct;
        pubs += w->ops[OP_PUBLISH];
        recvs += w->ops[OP_RECV] + w->ops[OP_RECV_BATCH];
    }
    printf("torture[%s]: %llu operations in %.2f s; rbus_close took %.3f ms; after it the "
           "topics still count %u subscriptions\n",
           cfg->label, (unsigned long long)ops, (double)(rbus_test_now_ns() - t0) / 1e9,
           (double)close_ns / 1e6, tt->subs_after_close);
    printf("torture[%s]: publishes %llu: accepted %llu (keyed %llu, dropped somewhere %llu), "
           "duplicates %llu, refused by close %llu, unknown at close %llu; topics published "
           "%llu, duplicates %llu\n",
           cfg->label, (unsigned long long)pubs, (unsigned long long)acc, (unsigned long long)keyed,
           (unsigned long long)some_dropped, (unsigned long long)dup, (unsigned long long)refused,
           (unsigned long long)tt->amb, (unsigned long long)tt->pub, (unsigned long long)tt->dup);
    printf("torture[%s]: receive calls %llu: %llu messages, %llu empty/timed out\n", cfg->label,
           (unsigned long long)recvs, (unsigned long long)recv_msgs,
           (unsigned long long)recv_empty);
    printf("torture[%s]: subscriptions %llu made, %llu sub_closed mid-run, %llu unsubscribed by "
           "their owners (%llu of them straight while open), %u at the end\n",
           cfg->label, (unsigned long long)made, (unsigned long long)closed,
           (unsigned long long)unsub, (unsigned long long)direct, survivors);
    printf("torture[%s]: exact checks on %llu subscriptions (%llu untimed block): offered %llu = "
           "received %llu + depth %llu + dropped newest %llu oldest %llu timeout %llu closed "
           "%llu; publisher waits %llu; messages missing between received ones %llu\n",
           cfg->label, (unsigned long long)atomic_load(&g.chk_subs),
           (unsigned long long)atomic_load(&g.chk_untimed),
           (unsigned long long)atomic_load(&g.chk_offered),
           (unsigned long long)atomic_load(&g.chk_received),
           (unsigned long long)atomic_load(&g.chk_depth),
           (unsigned long long)atomic_load(&g.chk_newest),
           (unsigned long long)atomic_load(&g.chk_oldest),
           (unsigned long long)atomic_load(&g.chk_timeout),
           (unsigned long long)atomic_load(&g.chk_closed),
           (unsigned long long)atomic_load(&g.chk_waits),
           (unsigned long long)atomic_load(&g.chk_missing));
    printf("torture[%s]: untimed block subscriptions: %llu publisher waits, %llu dropped_closed; "
           "keys: a worker's last unique key again: %llu duplicates, %llu accepted again "
           "(forgotten); shared keys accepted again: %llu\n",
           cfg->label, (unsigned long long)atomic_load(&g.chk_untimed_waits),
           (unsigned long long)atomic_load(&g.chk_untimed_closed),
           (unsigned long long)atomic_load(&g.repeat_dup),
           (unsigned long long)atomic_load(&g.repeat_accepted),
           (unsigned long long)atomic_load(&g.shared_reaccepted));
    assert_int_equal(made, unsub + survivors);
    /* Every subscription got the exact check but those unsubscribed
     * straight while open. */
    assert_int_equal(atomic_load(&g.chk_subs), unsub - direct + survivors);
    assert_true(acc > 0);
    assert_true(recv_msgs > 0);
}

/* Step 6: half of the survivors are unsubscribed, rbus_destroy frees the
 * rest with whatever they hold, and every byte comes back. */
static void torture_teardown(const struct run_cfg *cfg, struct rbus_test_alloc *ca)
{
    unsigned left_to_destroy = 0;
    for (int i = 0; i < g.nworkers; i++) {
        struct worker *w = &g.workers[i];
        for (int j = 0; j < w->nsubs; j++) {
            if (j % 2 == 0) {
                assert_rbus_ok(rbus_unsubscribe(w->subs[j]->sub));
            } else {
                left_to_destroy++;
            }
            free(w->subs[j]);
        }
        w->nsubs = 0;
    }
    long long live_before = atomic_load(&ca->live_bytes);
    act_begin(&g.main_act, OP_DESTROY, 0, -1);
    rbus_destroy(g.bus);
    act_end(&g.main_act);
    g.bus = NULL;
    rbus_test_watchdog_stop(&g.wd);
    printf("torture[%s]: allocator: %lld allocations, peak %lld bytes, %lld bytes live before "
           "rbus_destroy (%u subscriptions left to it), after: %lld blocks / %lld bytes, %lld "
           "bad frees\n",
           cfg->label, (long long)atomic_load(&ca->allocs), (long long)atomic_load(&ca->peak_bytes),
           live_before, left_to_destroy, (long long)atomic_load(&ca->live_blocks),
           (long long)atomic_load(&ca->live_bytes), (long long)atomic_load(&ca->bad_frees));
    rbus_test_alloc_assert_all_returned(ca);
    for (int t = 0; t < NTOPICS; t++)
        pthread_mutex_destroy(&g.shared_lock[t]);
    free(g.workers);
    g.workers = NULL;
    rbus_test_assert_no_thread_errors();
}

static void run_torture(const struct run_cfg *cfg)
{
    static struct rbus_test_alloc ca;
    uint64_t close_ns;
    const uint64_t run_ms = torture_setup(cfg, &ca);
    const uint64_t t0 = torture_run_and_close(run_ms, &close_ns);
    const unsigned survivors = torture_check_survivors();
    rbus_test_assert_no_thread_errors();
    const struct topic_totals tt = torture_check_topics(cfg);
    torture_check_workers(cfg, t0, close_ns, survivors, &tt);
    torture_teardown(cfg, &ca);
}

static void test_torture_mixed(void **state)
{
    (void)state;
    static const struct run_cfg cfg = {"mixed", 2, 4, 4000, false};
    run_torture(&cfg);
}

static void test_torture_tiny_queues(void **state)
{
    (void)state;
    static const struct run_cfg cfg = {"tiny", 3, 6, 2000, true};
    run_torture(&cfg);
}

int main(void)
{
    rbus_test_print_scale("torture");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_torture_mixed),
        cmocka_unit_test(test_torture_tiny_queues),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
