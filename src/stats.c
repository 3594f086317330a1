/*
 * stats.c - counter snapshots. Counters are written with relaxed atomics on
 * the side (publisher or receiver) that owns them; a snapshot reads each
 * one once, so while calls are in flight the fields are not one consistent
 * picture (the contract says so), but every field is a real value.
 */
#include "internal.h"
#include "ring.h"

#include <string.h>

int rbus_sub_stats_get(const rbus_sub *sub, rbus_sub_stats *out)
{
    if (!sub || !out)
        return -EINVAL;
    rbus_sub *s = (rbus_sub *)sub;
    /* A call in flight for rbus_unsubscribe to wait for. */
    atomic_fetch_add_explicit(&s->callers, 1, memory_order_relaxed);
    memset(out, 0, sizeof *out);
    /* One read feeds both fields, so a fast-path refusal is counted in
     * both `offered` and `dropped_newest` or in neither. */
    uint64_t refused = atomic_load_explicit(&s->refused_full, memory_order_relaxed);
    out->offered = atomic_load_explicit(&s->offered, memory_order_relaxed) + refused;
    out->received = atomic_load_explicit(&s->received, memory_order_relaxed);
    out->dropped_newest =
        atomic_load_explicit(&s->dropped_newest, memory_order_relaxed) + refused;
    out->dropped_oldest = atomic_load_explicit(&s->dropped_oldest, memory_order_relaxed);
    out->dropped_timeout = atomic_load_explicit(&s->dropped_timeout, memory_order_relaxed);
    out->dropped_closed = atomic_load_explicit(&s->dropped_closed, memory_order_relaxed);
    out->publisher_waits = atomic_load_explicit(&s->publisher_waits, memory_order_relaxed);
    /* From the ring itself, never derived from the counters, so the
     * accounting equation is a real check. */
    out->depth = (uint32_t)rbus__ring_reserved(&s->ring);
    out->high_water = atomic_load_explicit(&s->high_water, memory_order_relaxed);
    out->capacity = s->capacity;
    atomic_fetch_sub_explicit(&s->callers, 1, memory_order_release);
    return 0;
}

int rbus_topic_stats_get(const rbus_topic *topic, rbus_topic_stats *out)
{
    if (!topic || !out)
        return -EINVAL;
    rbus_topic *t = (rbus_topic *)topic;
    memset(out, 0, sizeof *out);
    out->published = atomic_load_explicit(&t->seq, memory_order_relaxed);
    out->duplicates = atomic_load_explicit(&t->duplicates, memory_order_relaxed);
    /* Read the current list the way a publisher does, inside a read
     * section (never blocked by a subscribe or close holding the bus lock);
     * only if this thread cannot get a state (out of memory) fall back to
     * the lock, under which the current list is alive too. */
    struct rbus_thread *th = rbus__thread_get(t->bus);
    if (th) {
        rbus__read_begin(th);
        struct rbus_sublist *l = atomic_load_explicit(&t->subs, memory_order_acquire);
        out->subscriptions = l ? l->count : 0;
        rbus__read_end(th);
    } else {
        pthread_mutex_lock(&t->bus->lock);
        struct rbus_sublist *l = atomic_load_explicit(&t->subs, memory_order_relaxed);
        out->subscriptions = l ? l->count : 0;
        pthread_mutex_unlock(&t->bus->lock);
    }
    return 0;
}
