/*
 * stats.c - counter snapshots. Counters are written with relaxed atomics on
 * the side (publisher or receiver) that owns them; a snapshot reads each
 * one once, so while calls are in flight the fields are not one consistent
 * picture (the contract says so), but every field is a real value.
 */
#include "internal.h"
#include "ring.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

int rbus_sub_stats_get(const rbus_sub *sub, rbus_sub_stats *out)
{
    RBUS__PAUSE(RBUS_SUB_STATS_GET);
    if (!sub)
        return rbus__fail_static(-EINVAL, "rbus_sub_stats_get: sub is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_sub_stats_get: out is NULL");
    rbus_sub *s = (rbus_sub *)sub;
    /* A call in flight for rbus_unsubscribe to wait for: the tallies it
     * reads are freed there. */
    if (!rbus__sub_enter(s)) {
        memset(out, 0, sizeof *out);
        return rbus__fail_static(-ESHUTDOWN, "rbus_sub_stats_get: rbus_unsubscribe of the "
                                             "subscription has begun");
    }
    rbus__sub_stats_read(s, out);
    rbus__sub_leave(s);
    return 0;
}

/* Messages queued: read from the ring itself (and the replay queue),
 * never derived from the counters, so the accounting equation is a real
 * check. */
static uint32_t sub_depth(rbus_sub *s)
{
    return rbus__ring_depth(&s->ring) + rbus__sub_replay_left(s);
}

void rbus__sub_stats_read(rbus_sub *s, rbus_sub_stats *out)
{
    memset(out, 0, sizeof *out);
    /* One read of each `refused` feeds both fields, so a fast-path
     * refusal is counted in both `offered` and `dropped_newest` or in
     * neither. */
    uint64_t offered, dropped_newest, refused;
    rbus__tally_sum(s, &offered, &dropped_newest, &refused, &out->dropped_oldest);
    out->offered = offered + refused;
    out->received = atomic_load_explicit(&s->received, memory_order_relaxed);
    out->dropped_newest = dropped_newest + refused;
    out->dropped_timeout = atomic_load_explicit(&s->dropped_timeout, memory_order_relaxed);
    out->dropped_closed = atomic_load_explicit(&s->dropped_closed, memory_order_relaxed);
    out->publisher_waits = atomic_load_explicit(&s->publisher_waits, memory_order_relaxed);
    out->publishers_waiting = atomic_load_explicit(&s->room_waiters, memory_order_relaxed);
    int64_t since = rbus__tally_oldest_wait(s);
    if (since) {
        int64_t now = rbus__now_ns();
        out->longest_wait_ns = now > since ? (uint64_t)(now - since) : 0;
    }
    out->depth = sub_depth(s);
    out->skipped = atomic_load_explicit(&s->ring.skipped, memory_order_relaxed);
    out->holes = atomic_load_explicit(&s->ring.holes, memory_order_relaxed);
    out->reoffers = atomic_load_explicit(&s->ring.reoffers, memory_order_relaxed);
    out->replayed = atomic_load_explicit(&s->replayed, memory_order_relaxed);
    out->replay_skipped = atomic_load_explicit(&s->replay_skipped, memory_order_relaxed);
    if (s->overflow == RBUS_BLOCK) {
        out->high_watermark = s->high_mark;
        out->low_watermark = s->low_mark;
    }
    out->over_high = atomic_load_explicit(&s->over, memory_order_relaxed) != 0;
    out->high_crossings = atomic_load_explicit(&s->high_hits, memory_order_relaxed);
    out->low_crossings = atomic_load_explicit(&s->low_hits, memory_order_relaxed);
    out->high_water = atomic_load_explicit(&s->high_water, memory_order_relaxed);
    out->capacity = s->capacity;
    out->max_bytes = s->max_bytes;
    out->bytes = atomic_load_explicit(&s->bytes, memory_order_relaxed);
}

/* ------------------------------------------------------------ histograms */

uint64_t rbus_hist_bound_ns(unsigned i)
{
    return i < RBUS_HIST_FINITE ? UINT64_C(256) << i : UINT64_MAX;
}

void rbus__hist_read(const struct rbus__hist *h, rbus_hist *out)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < RBUS_HIST_BUCKETS; i++) {
        total += atomic_load_explicit(&h->count[i], memory_order_relaxed);
        out->bucket[i] = total;
    }
    out->count = total; /* the +Inf bucket, by construction */
    out->sum_ns = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
}

void rbus__hist_merge(struct rbus__hist *into, const struct rbus__hist *from)
{
    for (unsigned i = 0; i < RBUS_HIST_BUCKETS; i++)
        atomic_fetch_add_explicit(&into->count[i],
                                  atomic_load_explicit(&from->count[i], memory_order_relaxed),
                                  memory_order_relaxed);
    atomic_fetch_add_explicit(&into->sum_ns,
                              atomic_load_explicit(&from->sum_ns, memory_order_relaxed),
                              memory_order_relaxed);
}

uint64_t rbus_hist_quantile_ns(const rbus_hist *h, double q)
{
    if (!h || !h->count || !(q >= 0.0 && q <= 1.0))
        return 0;
    double rank = q * (double)h->count;
    for (unsigned i = 0; i < RBUS_HIST_BUCKETS; i++) {
        if ((double)h->bucket[i] < rank || h->bucket[i] == 0)
            continue;
        if (i == RBUS_HIST_FINITE)
            return rbus_hist_bound_ns(RBUS_HIST_FINITE - 1);
        /* Linear inside (lower, upper], as histogram_quantile() does; the
         * first bucket's lower bound is 0. */
        double lower = i ? (double)rbus_hist_bound_ns(i - 1) : 0.0;
        double upper = (double)rbus_hist_bound_ns(i);
        uint64_t below = i ? h->bucket[i - 1] : 0;
        double in = (double)(h->bucket[i] - below);
        double frac = in > 0 ? (rank - (double)below) / in : 1.0;
        if (frac < 0)
            frac = 0;
        return (uint64_t)(lower + (upper - lower) * frac);
    }
    return rbus_hist_bound_ns(RBUS_HIST_FINITE - 1);
}

/*
 * The acceptance time of the oldest message queued now (stats: the lag),
 * or 0 when none is. Messages are freed only by rbus_destroy (their caches
 * live as long as the bus), so reading the time of one that a receiver
 * took meanwhile is safe; reading the slot's word again after it says
 * whether the time read was still the queued message's (positions never
 * repeat, so the word cannot come back). Gives up after two laps of
 * positions, answering 0, rather than chase a ring that moves under it.
 */
static uint64_t ring_oldest_time(struct rbus_ring *r)
{
    const uint64_t size = rbus__ring_size(r);
    uint64_t pos = atomic_load_explicit(&r->head, memory_order_acquire);
    for (uint64_t steps = 0; steps < 2 * size; steps++, pos++) {
        if (pos >= atomic_load_explicit(&r->tail, memory_order_acquire))
            return 0;
        struct rbus_ring_slot *s = rbus__ring_slot(r, pos);
        /* Acquire: pairs with the writer's release commit (message word and
         * message visible). */
        uint64_t v = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (v != RBUS__SEQ(pos, RBUS__SLOT_FULL))
            continue; /* done with, a hole, or not committed yet */
        rbus_msg *m = atomic_load_explicit(&s->msg, memory_order_relaxed);
        uint64_t t = atomic_load_explicit(&m->time_ns, memory_order_relaxed);
        /* Our reads of the message before the re-read of its slot. */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, memory_order_relaxed) == v)
            return t;
        /* Taken meanwhile: the next position holds the oldest now. */
    }
    return 0;
}

/* The lag now: the age of the oldest queued message, 0 when none is. */
static uint64_t sub_lag_ns(rbus_sub *s)
{
    uint64_t t = ring_oldest_time(&s->ring);
    if (!t)
        return 0;
    int64_t now = rbus__stamp_ns(s->bus);
    return now > (int64_t)t ? (uint64_t)(now - (int64_t)t) : 0;
}

static void sub_timing_read(rbus_sub *s, rbus_sub_timing *out)
{
    rbus__hist_read(&s->queue_wait, &out->queue_wait);
    rbus__hist_read(&s->publisher_wait, &out->publisher_wait);
    out->lag_ns = sub_lag_ns(s);
    out->depth = sub_depth(s);
}

int rbus_sub_timing_get(const rbus_sub *sub, rbus_sub_timing *out)
{
    RBUS__PAUSE(RBUS_SUB_TIMING_GET);
    if (!sub)
        return rbus__fail_static(-EINVAL, "rbus_sub_timing_get: sub is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_sub_timing_get: out is NULL");
    rbus_sub *s = (rbus_sub *)sub;
    memset(out, 0, sizeof *out);
    /* Counted in `callers`: rbus_unsubscribe waits for us before it frees
     * the ring we read. */
    if (!rbus__sub_enter(s))
        return rbus__fail_static(-ESHUTDOWN, "rbus_sub_timing_get: rbus_unsubscribe of the "
                                             "subscription has begun");
    sub_timing_read(s, out);
    rbus__sub_leave(s);
    return 0;
}

/* Still open: rbus_close marks subscriptions closed but leaves them
 * listed until each is closed or unsubscribed. Relaxed: a count. */
static bool sub_open(const rbus_sub *s)
{
    return atomic_load_explicit(&s->state, memory_order_relaxed) == RBUS_SUB_OPEN;
}

int rbus_topic_stats_get(const rbus_topic *topic, rbus_topic_stats *out)
{
    RBUS__PAUSE(RBUS_TOPIC_STATS_GET);
    if (!topic)
        return rbus__fail_static(-EINVAL, "rbus_topic_stats_get: topic is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_topic_stats_get: out is NULL");
    rbus_topic *t = (rbus_topic *)topic;
    memset(out, 0, sizeof *out);
    out->published = atomic_load_explicit(&t->seq, memory_order_relaxed);
    out->duplicates = atomic_load_explicit(&t->duplicates, memory_order_relaxed);
    struct rbus_limit *lim = atomic_load_explicit(&t->limit, memory_order_acquire);
    if (lim)
        out->rate_limited = atomic_load_explicit(&lim->limited, memory_order_relaxed);
    /* Acquire: pairs with the release that installed it (topic.c). */
    struct rbus_history *h = atomic_load_explicit(&t->hist, memory_order_acquire);
    if (h) {
        out->retain = h->keep;
        out->retained = rbus__history_count(h);
    }
    /* Read as a publisher reads it: never blocked by a subscribe or close
     * holding the bus lock. */
    out->subscriptions = rbus__topic_count_subs(t, sub_open, false);
    return 0;
}

int rbus_bus_stats_get(rbus *bus, rbus_bus_stats *out)
{
    RBUS__PAUSE(RBUS_BUS_STATS_GET);
    if (!bus)
        return rbus__fail_static(-EINVAL, "rbus_bus_stats_get: bus is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_bus_stats_get: out is NULL");
    memset(out, 0, sizeof *out);
    /* The lock keeps the list of thread states and subscriptions still. */
    pthread_mutex_lock(&bus->lock);
    out->held = rbus__held_read(bus);
    out->topics = bus->ntopics;
    for (rbus_sub *s = bus->subs; s; s = s->bus_next)
        out->subscriptions++;
    pthread_mutex_unlock(&bus->lock);
    return 0;
}

/* ------------------------------------------------ Prometheus exposition */

/* snprintf-style output: writes what fits, always counts the whole text. */
struct prom_out {
    char *buf;
    size_t size;
    size_t len; /* the whole text so far, written or not */
};

static void prom_put(struct prom_out *o, const char *s, size_t n)
{
    if (o->len < o->size) {
        size_t room = o->size - o->len - 1; /* keep the NUL's place */
        memcpy(o->buf + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

static void prom_str(struct prom_out *o, const char *s)
{
    prom_put(o, s, strlen(s));
}

static void prom_u64(struct prom_out *o, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    prom_put(o, tmp, (size_t)n);
}

/* A label value: backslash, double quote and newline escaped, as the text
 * format requires. */
static void prom_escaped(struct prom_out *o, const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            prom_put(o, "\\\\", 2);
        else if (*p == '"')
            prom_put(o, "\\\"", 2);
        else if (*p == '\n')
            prom_put(o, "\\n", 2);
        else
            prom_put(o, p, 1);
    }
}

static void prom_family(struct prom_out *o, const char *name, const char *type, const char *help)
{
    prom_str(o, "# HELP ");
    prom_str(o, name);
    prom_str(o, " ");
    prom_str(o, help);
    prom_str(o, "\n# TYPE ");
    prom_str(o, name);
    prom_str(o, " ");
    prom_str(o, type);
    prom_str(o, "\n");
}

static const char *policy_label(rbus_overflow p)
{
    switch (p) {
    case RBUS_DROP_OLDEST:
        return "drop_oldest";
    case RBUS_DROP_NEWEST:
        return "drop_newest";
    case RBUS_BLOCK:
    default:
        return "block";
    }
}

/* A subscription family's sample up to its value: name, labels, space. */
/* name{pattern=...,sub=...,name=...,policy=...[,key="val"]} and a space. */
static void prom_sub_labels(struct prom_out *o, const char *name, const rbus_sub *s,
                            const char *key, const char *val)
{
    prom_str(o, name);
    prom_str(o, "{pattern=\"");
    prom_escaped(o, s->pattern);
    prom_str(o, "\",sub=\"");
    prom_u64(o, s->id);
    prom_str(o, "\",name=\"");
    prom_escaped(o, s->name ? s->name : "");
    prom_str(o, "\",policy=\"");
    prom_str(o, policy_label(s->overflow));
    if (key) {
        prom_str(o, "\",");
        prom_str(o, key);
        prom_str(o, "=\"");
        prom_str(o, val);
    }
    prom_str(o, "\"} ");
}

static void prom_sub_sample(struct prom_out *o, const char *name, const rbus_sub *s,
                            const char *reason, uint64_t value)
{
    prom_sub_labels(o, name, s, reason ? "reason" : NULL, reason);
    prom_u64(o, value);
    prom_str(o, "\n");
}

/* Seconds from nanoseconds, exactly (no floating point). */
static void prom_seconds(struct prom_out *o, uint64_t ns)
{
    char tmp[48];
    int n = snprintf(tmp, sizeof tmp, "%llu.%09llu", (unsigned long long)(ns / 1000000000),
                     (unsigned long long)(ns % 1000000000));
    prom_put(o, tmp, (size_t)n);
}

static void prom_sub_seconds(struct prom_out *o, const char *name, const rbus_sub *s, uint64_t ns)
{
    prom_sub_labels(o, name, s, NULL, NULL);
    prom_seconds(o, ns);
    prom_str(o, "\n");
}

/* One histogram's samples: _bucket for every bound (in seconds) and +Inf,
 * then _sum and _count (== the +Inf bucket). */
static void prom_sub_hist(struct prom_out *o, const char *name, const rbus_sub *s,
                          const rbus_hist *h)
{
    char sample[96], le[32];
    snprintf(sample, sizeof sample, "%s_bucket", name);
    for (unsigned i = 0; i < RBUS_HIST_BUCKETS; i++) {
        if (i < RBUS_HIST_FINITE) {
            uint64_t ns = rbus_hist_bound_ns(i);
            snprintf(le, sizeof le, "%llu.%09llu", (unsigned long long)(ns / 1000000000),
                     (unsigned long long)(ns % 1000000000));
        } else {
            snprintf(le, sizeof le, "+Inf");
        }
        prom_sub_labels(o, sample, s, "le", le);
        prom_u64(o, h->bucket[i]);
        prom_str(o, "\n");
    }
    snprintf(sample, sizeof sample, "%s_sum", name);
    prom_sub_seconds(o, sample, s, h->sum_ns);
    snprintf(sample, sizeof sample, "%s_count", name);
    prom_sub_sample(o, sample, s, NULL, h->count);
}

/* Everything one scrape reports of a subscription, read once. */
struct sub_snap {
    rbus_sub *s;
    rbus_sub_stats st;
    rbus_sub_timing tm;
    bool dispatched; /* has or had a dispatcher */
    rbus_dispatch_stats ds;
    rbus_hist handler, start_delay;
};

static void hist_add_into(rbus_hist *into, const rbus_hist *h)
{
    into->count += h->count;
    into->sum_ns += h->sum_ns;
    for (unsigned i = 0; i < RBUS_HIST_BUCKETS; i++)
        into->bucket[i] += h->bucket[i];
}

/* Dispatcher figures carry the subscription's labels. They are those of
 * the dispatchers that ran on it and stopped (kept on it by
 * rbus_dispatch_stop and rbus_dispatch_drain) plus the running one's; so
 * counters never go back when a dispatcher is replaced, and what a stop
 * itself did (retries, dead letters) is counted. Under the bus lock. */
static void snap_dispatch(struct sub_snap *n)
{
    rbus_sub *s = n->s;
    /* Stable under the bus lock: rbus_dispatch_stop clears it, and adds
     * its counters to the subscription's, under the lock before retiring
     * the dispatcher. */
    rbus_dispatcher *d = atomic_load_explicit(&s->dispatcher, memory_order_acquire);
    if (d == RBUS__UNSUBSCRIBING)
        d = NULL;
    n->dispatched = d || s->had_dispatcher;
    if (!n->dispatched)
        return;
    rbus_dispatch_stats st = {0};
    rbus_dispatch_timing tm;
    memset(&tm, 0, sizeof tm);
    if (d) {
        rbus_dispatch_stats_get(d, &st);
        rbus_dispatch_timing_get(d, &tm);
    }
    const rbus_dispatch_stats *t = &s->dispatched;
    n->ds.handled = t->handled + st.handled;
    n->ds.failed_attempts = t->failed_attempts + st.failed_attempts;
    n->ds.retried = t->retried + st.retried;
    n->ds.dead_lettered = t->dead_lettered + st.dead_lettered;
    n->ds.dropped = t->dropped + st.dropped;
    n->ds.in_hand = st.in_hand;
    rbus__hist_read(&s->dispatched_handler, &n->handler);
    rbus__hist_read(&s->dispatched_start_delay, &n->start_delay);
    hist_add_into(&n->handler, &tm.handler);
    hist_add_into(&n->start_delay, &tm.start_delay);
}

enum sub_field {
    F_OFFERED,
    F_RECEIVED,
    F_DROPPED,
    F_WAITS,
    F_WAITING,
    F_LONGEST_WAIT,
    F_DEPTH,
    F_HIGH_WATER,
    F_CAPACITY,
    F_BYTES,
    F_MAX_BYTES,
    F_SKIPPED,
    F_HOLES,
    F_REOFFERS,
    F_REPLAYED,
    F_REPLAY_SKIPPED,
    F_HIGH_CROSSINGS,
    F_LOW_CROSSINGS,
    F_LAG,
    F_QUEUE_WAIT,
    F_PUBLISHER_WAIT,
};

static void prom_sub_family(struct prom_out *o, const struct sub_snap *snaps, size_t n,
                            enum sub_field f, const char *name, const char *type, const char *help)
{
    bool header = false;
    for (size_t i = 0; i < n; i++) {
        const rbus_sub *s = snaps[i].s;
        const rbus_sub_stats *st = &snaps[i].st;
        /* Histograms only where they can hold something: queue waits
         * where they are sampled, publisher waits where publishers wait. */
        if ((f == F_QUEUE_WAIT && !s->latency_sample) ||
            (f == F_PUBLISHER_WAIT && s->overflow != RBUS_BLOCK) ||
            ((f == F_REPLAYED || f == F_REPLAY_SKIPPED) && !s->replay) ||
            ((f == F_HIGH_CROSSINGS || f == F_LOW_CROSSINGS) && s->overflow != RBUS_BLOCK))
            continue;
        if (!header) {
            prom_family(o, name, type, help);
            header = true;
        }
        switch (f) {
        case F_OFFERED:
            prom_sub_sample(o, name, s, NULL, st->offered);
            break;
        case F_RECEIVED:
            prom_sub_sample(o, name, s, NULL, st->received);
            break;
        case F_DROPPED:
            prom_sub_sample(o, name, s, "newest", st->dropped_newest);
            prom_sub_sample(o, name, s, "oldest", st->dropped_oldest);
            prom_sub_sample(o, name, s, "timeout", st->dropped_timeout);
            prom_sub_sample(o, name, s, "closed", st->dropped_closed);
            break;
        case F_WAITS:
            prom_sub_sample(o, name, s, NULL, st->publisher_waits);
            break;
        case F_WAITING:
            prom_sub_sample(o, name, s, NULL, st->publishers_waiting);
            break;
        case F_LONGEST_WAIT:
            prom_sub_seconds(o, name, s, st->longest_wait_ns);
            break;
        case F_DEPTH:
            prom_sub_sample(o, name, s, NULL, st->depth);
            break;
        case F_HIGH_WATER:
            prom_sub_sample(o, name, s, NULL, st->high_water);
            break;
        case F_CAPACITY:
            prom_sub_sample(o, name, s, NULL, st->capacity);
            break;
        case F_BYTES:
            prom_sub_sample(o, name, s, NULL, st->bytes);
            break;
        case F_MAX_BYTES:
            prom_sub_sample(o, name, s, NULL, st->max_bytes);
            break;
        case F_SKIPPED:
            prom_sub_sample(o, name, s, NULL, st->skipped);
            break;
        case F_HOLES:
            prom_sub_sample(o, name, s, NULL, st->holes);
            break;
        case F_REOFFERS:
            prom_sub_sample(o, name, s, NULL, st->reoffers);
            break;
        case F_REPLAYED:
            prom_sub_sample(o, name, s, NULL, st->replayed);
            break;
        case F_REPLAY_SKIPPED:
            prom_sub_sample(o, name, s, NULL, st->replay_skipped);
            break;
        case F_HIGH_CROSSINGS:
            prom_sub_sample(o, name, s, NULL, st->high_crossings);
            break;
        case F_LOW_CROSSINGS:
            prom_sub_sample(o, name, s, NULL, st->low_crossings);
            break;
        case F_LAG:
            prom_sub_seconds(o, name, s, snaps[i].tm.lag_ns);
            break;
        case F_QUEUE_WAIT:
            prom_sub_hist(o, name, s, &snaps[i].tm.queue_wait);
            break;
        case F_PUBLISHER_WAIT:
            prom_sub_hist(o, name, s, &snaps[i].tm.publisher_wait);
            break;
        }
    }
}

static void prom_topic_family(struct prom_out *o, rbus *bus, bool duplicates)
{
    const char *name =
        duplicates ? "ringbus_topic_duplicates_total" : "ringbus_topic_published_total";
    prom_family(o, name, "counter",
                duplicates ? "Keyed publishes suppressed as duplicates."
                           : "Accepted publishes (the topic's last sequence number).");
    for (rbus_topic *t = bus->topics; t; t = t->all_next) {
        prom_str(o, name);
        prom_str(o, "{topic=\"");
        prom_escaped(o, t->name);
        prom_str(o, "\"} ");
        prom_u64(o,
                 atomic_load_explicit(duplicates ? &t->duplicates : &t->seq, memory_order_relaxed));
        prom_str(o, "\n");
    }
}

enum topic_field { T_RATE_LIMITED, T_RETAIN, T_RETAINED, T_READY };

/* A family of the topics that have the feature it counts (a rate limit, a
 * history, a readiness descriptor); none at all when no topic has it. */
static void prom_topic_feature(struct prom_out *o, rbus *bus, enum topic_field f)
{
    static const char *const names[] = {"ringbus_topic_rate_limited_total", "ringbus_topic_retain",
                                        "ringbus_topic_retained", "ringbus_topic_ready"};
    static const char *const types[] = {"counter", "gauge", "gauge", "gauge"};
    static const char *const helps[] = {
        "Publishes refused by the topic's rate limit.",
        "Messages the topic's history keeps at most.", "Messages the topic's history holds now.",
        "1 while every RBUS_BLOCK subscription of the topic is under its watermarks."};
    bool header = false;
    for (rbus_topic *t = bus->topics; t; t = t->all_next) {
        /* Acquire: pairs with the release stores that installed them. */
        struct rbus_limit *lim = atomic_load_explicit(&t->limit, memory_order_acquire);
        struct rbus_history *h = atomic_load_explicit(&t->hist, memory_order_acquire);
        bool has = f == T_RATE_LIMITED ? lim != NULL
                   : f == T_READY ? atomic_load_explicit(&t->ready_fd, memory_order_relaxed) >= 0
                                  : h != NULL;
        if (!has)
            continue;
        if (!header) {
            prom_family(o, names[f], types[f], helps[f]);
            header = true;
        }
        prom_str(o, names[f]);
        prom_str(o, "{topic=\"");
        prom_escaped(o, t->name);
        prom_str(o, "\"} ");
        prom_u64(o, f == T_RATE_LIMITED ? atomic_load_explicit(&lim->limited, memory_order_relaxed)
                    : f == T_RETAIN     ? h->keep
                    : f == T_RETAINED   ? rbus__history_count(h)
                                        : rbus__topic_ready(t, true));
        prom_str(o, "\n");
    }
}

enum dispatch_field {
    D_HANDLED,
    D_FAILED,
    D_RETRIED,
    D_DEAD,
    D_DROPPED,
    D_IN_HAND,
    D_HANDLER,
    D_START_DELAY
};

static void prom_dispatch_family(struct prom_out *o, const struct sub_snap *snaps, size_t n,
                                 enum dispatch_field f, const char *name, const char *type,
                                 const char *help)
{
    bool header = false;
    for (size_t i = 0; i < n; i++) {
        const struct sub_snap *sn = &snaps[i];
        if (!sn->dispatched)
            continue;
        if (!header) {
            prom_family(o, name, type, help);
            header = true;
        }
        const rbus_dispatch_stats *t = &sn->ds;
        switch (f) {
        case D_HANDLED:
            prom_sub_sample(o, name, sn->s, NULL, t->handled);
            break;
        case D_FAILED:
            prom_sub_sample(o, name, sn->s, NULL, t->failed_attempts);
            break;
        case D_RETRIED:
            prom_sub_sample(o, name, sn->s, NULL, t->retried);
            break;
        case D_DEAD:
            prom_sub_sample(o, name, sn->s, NULL, t->dead_lettered);
            break;
        case D_DROPPED:
            prom_sub_sample(o, name, sn->s, NULL, t->dropped);
            break;
        case D_IN_HAND:
            prom_sub_sample(o, name, sn->s, NULL, t->in_hand);
            break;
        case D_HANDLER:
            prom_sub_hist(o, name, sn->s, &sn->handler);
            break;
        case D_START_DELAY:
            prom_sub_hist(o, name, sn->s, &sn->start_delay);
            break;
        }
    }
}

static const struct {
    enum sub_field field;
    const char *name, *type, *help;
} sub_families[] = {
    {F_OFFERED, "ringbus_sub_offered_total", "counter",
     "Messages offered to the subscription (once per publish and subscription)."},
    {F_RECEIVED, "ringbus_sub_received_total", "counter", "Messages taken out by receives."},
    {F_DROPPED, "ringbus_sub_dropped_total", "counter", "Messages dropped, by reason."},
    {F_WAITS, "ringbus_sub_publisher_waits_total", "counter",
     "Publishes that found the subscription full and waited."},
    {F_WAITING, "ringbus_sub_publishers_waiting", "gauge",
     "Publishers waiting for room in the subscription now."},
    {F_LONGEST_WAIT, "ringbus_sub_longest_wait_seconds", "gauge",
     "How long the publisher waiting longest for room has waited so far."},
    {F_DEPTH, "ringbus_sub_depth", "gauge", "Messages queued now."},
    {F_HIGH_WATER, "ringbus_sub_high_water", "gauge", "Largest depth seen right after an enqueue."},
    {F_CAPACITY, "ringbus_sub_capacity", "gauge",
     "Effective capacity of the subscription's queue."},
    {F_BYTES, "ringbus_sub_bytes", "gauge",
     "Payload bytes queued (with a byte bound; 0 without one)."},
    {F_MAX_BYTES, "ringbus_sub_max_bytes", "gauge", "The subscription's byte bound; 0 = none."},
    {F_SKIPPED, "ringbus_sub_skipped_total", "counter",
     "Slots passed over because their publisher, preempted mid-write, had not written them."},
    {F_HOLES, "ringbus_sub_holes_total", "counter",
     "Positions passed because such a publisher still held the slot."},
    {F_REOFFERS, "ringbus_sub_reoffers_total", "counter",
     "Messages offered again by a publisher whose slot was skipped."},
    {F_REPLAYED, "ringbus_sub_replayed_total", "counter",
     "Retained messages queued first at subscribe (subscriptions with replay only)."},
    {F_REPLAY_SKIPPED, "ringbus_sub_replay_skipped_total", "counter",
     "Retained messages a replay asked for that did not fit."},
    {F_HIGH_CROSSINGS, "ringbus_sub_high_watermark_crossings_total", "counter",
     "Times the subscription reached its high watermark (RBUS_BLOCK only)."},
    {F_LOW_CROSSINGS, "ringbus_sub_low_watermark_crossings_total", "counter",
     "Times it then drained below its low watermark (RBUS_BLOCK only)."},
    {F_LAG, "ringbus_sub_lag_seconds", "gauge",
     "Age of the oldest message queued now; 0 when none is."},
    {F_QUEUE_WAIT, "ringbus_sub_queue_wait_seconds", "histogram",
     "Age of messages when received (subscriptions with latency_sample only)."},
    {F_PUBLISHER_WAIT, "ringbus_sub_publisher_wait_seconds", "histogram",
     "How long publishes that found the subscription full waited (RBUS_BLOCK only)."},
};

static const struct {
    enum dispatch_field field;
    const char *name, *type, *help;
} dispatch_families[] = {
    {D_HANDLED, "ringbus_dispatch_handled_total", "counter",
     "Messages whose handler returned >= 0."},
    {D_FAILED, "ringbus_dispatch_failed_attempts_total", "counter",
     "Handler calls that returned < 0."},
    {D_RETRIED, "ringbus_dispatch_retried_total", "counter",
     "Failed attempts that were given another."},
    {D_DEAD, "ringbus_dispatch_dead_lettered_total", "counter",
     "Messages published to the dead-letter topic."},
    {D_DROPPED, "ringbus_dispatch_dropped_total", "counter",
     "Messages that failed for good and were not dead-lettered."},
    {D_IN_HAND, "ringbus_dispatch_in_hand", "gauge", "Messages the dispatcher holds now."},
    {D_HANDLER, "ringbus_dispatch_handler_seconds", "histogram",
     "Time inside the handler, per call."},
    {D_START_DELAY, "ringbus_dispatch_start_delay_seconds", "histogram",
     "From a message's receive to its first handler call."},
};

int rbus_stats_prometheus(rbus *bus, char *buf, size_t size)
{
    RBUS__PAUSE(RBUS_STATS_PROMETHEUS);
    if (!bus)
        return rbus__fail_static(-EINVAL, "rbus_stats_prometheus: bus is NULL");
    if (!buf && size)
        return rbus__fail(-EINVAL, "rbus_stats_prometheus: buf is NULL with size %zu", size);
    struct prom_out o = {buf, size, 0};
    /* The bus lock keeps every listed topic and subscription alive while we
     * read them (unsubscribe unlinks under it before freeing); publishes
     * and receives never take it, so exposition does not stall them. */
    pthread_mutex_lock(&bus->lock);
    /* Each subscription read once, for every family. */
    size_t nsubs = 0;
    for (rbus_sub *s = bus->subs; s; s = s->bus_next)
        nsubs++;
    struct sub_snap *snaps = nsubs ? rbus__zalloc(bus, nsubs * sizeof *snaps) : NULL;
    if (nsubs && !snaps) {
        pthread_mutex_unlock(&bus->lock);
        return rbus__fail(
            -ENOMEM, "rbus_stats_prometheus: out of memory for %zu subscriptions' figures", nsubs);
    }
    size_t k = 0;
    for (rbus_sub *s = bus->subs; s; s = s->bus_next, k++) {
        snaps[k].s = s;
        rbus__sub_stats_read(s, &snaps[k].st); /* alive: unlinked under the lock */
        sub_timing_read(s, &snaps[k].tm);
        snap_dispatch(&snaps[k]);
    }
    uint64_t held = rbus__held_read(bus);
    prom_family(&o, "ringbus_held_messages", "gauge",
                "Message references the application holds: received or referenced, not "
                "yet released.");
    prom_str(&o, "ringbus_held_messages ");
    prom_u64(&o, held);
    prom_str(&o, "\n");
    prom_topic_family(&o, bus, false);
    prom_topic_family(&o, bus, true);
    prom_topic_feature(&o, bus, T_RATE_LIMITED);
    prom_topic_feature(&o, bus, T_RETAIN);
    prom_topic_feature(&o, bus, T_RETAINED);
    prom_topic_feature(&o, bus, T_READY);
    for (size_t i = 0; i < sizeof sub_families / sizeof sub_families[0]; i++)
        prom_sub_family(&o, snaps, nsubs, sub_families[i].field, sub_families[i].name,
                        sub_families[i].type, sub_families[i].help);
    /* Dispatcher families appear once a dispatcher has run. */
    for (size_t i = 0; i < sizeof dispatch_families / sizeof dispatch_families[0]; i++)
        prom_dispatch_family(&o, snaps, nsubs, dispatch_families[i].field,
                             dispatch_families[i].name, dispatch_families[i].type,
                             dispatch_families[i].help);
    pthread_mutex_unlock(&bus->lock);
    rbus__free(bus, snaps);
    if (size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    if (o.len > INT_MAX)
        return rbus__fail(-EOVERFLOW, "rbus_stats_prometheus: the text is %zu bytes, above INT_MAX",
                          o.len);
    return (int)o.len;
}
