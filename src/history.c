/*
 * history.c - retained history: each topic that asks keeps its newest
 * messages, which a late subscription gets first (replay) and
 * rbus_topic_last reads.
 *
 * Writers are publishers, inside their read sections: a history is a
 * drop-oldest ring (ring.h), so a put never waits, a publisher stalled in
 * it holds one slot, and its order is the order in which puts reached it.
 *
 * Readers (a replay, rbus_topic_last) do not take from the ring: they
 * look at a FULL slot and take a reference of their own on its message.
 * An evictor may take that message out and drop the history's reference
 * at the same moment, so a reader first announces the message in
 * `hazard`, then checks the slot still holds it. The pair of seq_cst
 * accesses on each side (reader: store hazard, load the slot; evictor:
 * its CAS on the slot, a fence, load hazard) is a Dekker pair: either the
 * reader sees the slot changed and lets go, or the evictor sees the
 * hazard and, instead of dropping the reference, hands it to the reader
 * (hazard | 1), who drops it when done. So a reader's reference is always
 * taken while another is alive, and at most one message waits per
 * history: memory stays bounded whoever stalls.
 *
 * Replay without a gap or a duplicate. Each list of subscriptions a topic
 * publishes has a higher generation; a publisher stamps the message with
 * the generation of the list it loaded, and offers it to exactly that
 * list's subscriptions. A new subscription notes the generation G of the
 * first list that holds it, then waits for a grace period: every publish
 * that loaded an older list has then put its message in the history (or
 * had it evicted). So a message with generation < G reached every earlier
 * subscriber but not the new one, and one with generation >= G reaches it
 * live: the replay takes exactly the first kind. A publisher's messages
 * load lists in order, and reach the history in order, so from each
 * publisher the new subscription gets an unbroken run: its last messages
 * still retained, then the rest live.
 */
#include "internal.h"
#include "ring.h"

#include <stdlib.h>
#include <string.h>

struct rbus_history *rbus__history_new(rbus *bus, uint32_t keep)
{
    /* A power of two, and at least 2 (ring.h); readers look only at the
     * newest `keep`. */
    uint64_t size = 2;
    while (size < keep)
        size <<= 1;
    struct rbus_history *h = rbus__zalloc_aligned(bus, sizeof *h);
    struct rbus_ring_slot *slots =
        rbus__zalloc_aligned(bus, (size_t)size * sizeof(struct rbus_ring_slot));
    if (!h || !slots) {
        rbus__free_aligned(bus, h);
        rbus__free_aligned(bus, slots);
        return NULL;
    }
    rbus__ring_init(&h->ring, slots, size);
    h->keep = keep;
    pthread_mutex_init(&h->read_lock, NULL);
    atomic_init(&h->hazard, 0);
    return h;
}

void rbus__history_free(rbus *bus, struct rbus_history *h)
{
    if (!h)
        return;
    rbus_msg *m;
    while ((m = rbus__ring_take(&h->ring, true)))
        rbus__msg_unref(m, 1);
    pthread_mutex_destroy(&h->read_lock);
    rbus__free_aligned(bus, h->ring.slots);
    rbus__free_aligned(bus, h);
}

/* The history's reference of a message an evictor took out: handed to
 * the reader that announced it, or dropped. */
static void history_let_go(struct rbus_thread_state *th, struct rbus_history *h, rbus_msg *m)
{
    /* The evictor's half of the Dekker pair (see the top): its CAS on the
     * slot (acq_rel in ring.h), this fence, then the load. */
    atomic_thread_fence(memory_order_seq_cst);
    uintptr_t hz = atomic_load_explicit(&h->hazard, memory_order_seq_cst);
    /* acq_rel: the reader's hand-over exchange reads it, and our earlier
     * accesses to the message happen before its release. */
    if (hz == (uintptr_t)m &&
        atomic_compare_exchange_strong_explicit(&h->hazard, &hz, hz | 1u, memory_order_acq_rel,
                                                memory_order_relaxed))
        return;
    rbus__msg_unref_by(th, m, 1);
}

void rbus__history_put(struct rbus_thread_state *th, struct rbus_history *h, rbus_msg *m)
{
    /* Unlike a subscription's drop-oldest, which evicts once per publish,
     * a history evicts as often as it is offered again: a put that was
     * skipped mid-write and dropped its message would leave a gap in its
     * publisher's run. Each retry follows another put's progress. */
    RBUS__PAUSE(HISTORY_PUT);
    for (;;) {
        rbus_msg *old = NULL;
        uint32_t depth;
        enum rbus_put rc = rbus__ring_put(&h->ring, m, &old, UINT32_MAX, &depth);
        if (old)
            history_let_go(th, h, old);
        if (rc == RBUS__PUT_QUEUED)
            return;
        if (rc == RBUS__PUT_SKIPPED)
            continue;
        /* Every slot is held by a stalled writer: nothing the history
         * holds is older, so no run has a gap. */
        rbus__msg_unref_by(th, m, 1);
        return;
    }
}

/* Announces m in the hazard; a message handed over with the previous one
 * is ours to drop. */
static void hazard_set(struct rbus_history *h, rbus_msg *m)
{
    /* seq_cst: the reader's half of the Dekker pair, before the slot is
     * read again. */
    uintptr_t prev = atomic_exchange_explicit(&h->hazard, (uintptr_t)m, memory_order_seq_cst);
    if (prev & 1u)
        rbus__msg_unref((rbus_msg *)(prev & ~(uintptr_t)1), 1);
}

/* A reference of our own to the message at position pos, if the slot
 * holds it; NULL otherwise. *v is the slot word we found. */
static rbus_msg *history_ref(struct rbus_history *h, uint64_t pos, uint64_t *v)
{
    struct rbus_ring_slot *s = rbus__ring_slot(&h->ring, pos);
    /* Acquire: pairs with the writer's release commit (the message word
     * and the message). */
    *v = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (*v != RBUS__SEQ(pos, RBUS__SLOT_FULL))
        return NULL;
    /* Acquire: pairs with the writer's release store of the word (ring.h),
     * so a message of a later lap read here comes with the CAS that made
     * the slot its writer's, and the re-check below sees it. */
    rbus_msg *m = atomic_load_explicit(&s->msg, memory_order_acquire);
    hazard_set(h, m);
    RBUS__PAUSE(HISTORY_HAZARD);
    /* Positions are never reused, so an unchanged word means the slot
     * still holds m, and m the history's reference. */
    if (atomic_load_explicit(&s->seq, memory_order_seq_cst) != *v) {
        hazard_set(h, NULL);
        *v = atomic_load_explicit(&s->seq, memory_order_acquire);
        return NULL;
    }
    /* Relaxed, as rbus_msg_ref: a reference is alive (the history's, or
     * the one handed to us). The hazard's release below orders it before
     * an evictor's drop. */
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    hazard_set(h, NULL);
    return m;
}

/* Whether position pos has left the ring's window (tail - size, tail]:
 * then every older one has too. A slot that serves a later position while
 * pos is still in the window was a hole that a skipped writer handed on,
 * not an eviction: evictions happen at the window's far end only. */
static bool left_window(struct rbus_history *h, uint64_t pos)
{
    /* Acquire: pairs with the tail moves after a slot was taken. */
    uint64_t tail = atomic_load_explicit(&h->ring.tail, memory_order_acquire);
    return pos + rbus__ring_size(&h->ring) < tail;
}

static int by_seq(const void *a, const void *b)
{
    uint64_t x = (*(rbus_msg *const *)a)->seq, y = (*(rbus_msg *const *)b)->seq;
    return x < y ? -1 : x > y;
}

uint32_t rbus__history_collect(struct rbus_history *h, uint64_t gen, uint32_t want, uint32_t max,
                               rbus_msg **out, uint64_t *more)
{
    if (want > h->keep)
        want = h->keep;
    uint32_t n = 0, seen = 0;
    pthread_mutex_lock(&h->read_lock);
    /* Relaxed: a starting point. Positions at or past it were reserved
     * after the grace period, by publishers of newer lists. */
    uint64_t tail = atomic_load_explicit(&h->ring.tail, memory_order_relaxed);
    uint64_t size = rbus__ring_size(&h->ring);
    uint64_t lowest = tail > h->keep ? tail - h->keep : 0;
    if (tail > size && lowest < tail - size)
        lowest = tail - size;
    /* Newest first, so that evictions racing us cost only the oldest. A
     * position evicted (its slot serves a later one) means every older
     * position is gone too: what we took so far stays an unbroken run. */
    for (uint64_t pos = tail; pos > lowest && seen < want;) {
        pos--;
        uint64_t v;
        rbus_msg *m = history_ref(h, pos, &v);
        if (!m) {
            if (RBUS__SEQ_POS(v) > pos && left_window(h, pos))
                break; /* evicted, and all before it */
            continue;  /* a hole, or a write in flight (a newer list's) */
        }
        if (m->gen < gen && seen++ < max)
            out[n++] = m;
        else
            rbus__msg_unref(m, 1); /* live for the new subscription, or beyond max */
    }
    pthread_mutex_unlock(&h->read_lock);
    *more += seen - n;
    qsort(out, n, sizeof *out, by_seq);
    return n;
}

uint32_t rbus__history_count(struct rbus_history *h)
{
    uint32_t n = rbus__ring_depth(&h->ring);
    return n < h->keep ? n : h->keep;
}

/* Merges two runs (each in its own order) from their newest ends into
 * `into`, keeping the newest `cap` by acceptance time; the older rest is
 * released and counted in *skipped. Returns how many it kept. A merge
 * keeps each run's order, so dropping its oldest part leaves every topic
 * an unbroken run. */
static uint32_t merge_newest(rbus_msg **a, uint32_t na, rbus_msg **b, uint32_t nb, rbus_msg **into,
                             uint32_t cap, uint64_t *skipped)
{
    uint32_t k = na + nb < cap ? na + nb : cap, kept = k;
    while (k > 0) {
        bool from_a =
            nb == 0 ||
            (na > 0 && atomic_load_explicit(&a[na - 1]->time_ns, memory_order_relaxed) >
                           atomic_load_explicit(&b[nb - 1]->time_ns, memory_order_relaxed));
        into[--k] = from_a ? a[--na] : b[--nb];
    }
    *skipped += na + nb;
    while (na)
        rbus__msg_unref(a[--na], 1);
    while (nb)
        rbus__msg_unref(b[--nb], 1);
    return kept;
}

void rbus__replay_run(rbus_sub *s, struct rbus_replay *r)
{
    uint32_t cap = r->cap, n = 0;
    int best = 0, got = 1, merged = 2;
    uint64_t skipped = 0;
    RBUS__PAUSE(REPLAY_COLLECT);
    for (uint32_t i = 0; i < r->ntopics; i++) {
        /* Acquire: pairs with the release that installed it (topic.c). */
        struct rbus_history *h = atomic_load_explicit(&r->topics[i]->hist, memory_order_acquire);
        uint32_t ngot = rbus__history_collect(h, r->gens[i], r->want, cap, r->buf[got], &skipped);
        n = merge_newest(r->buf[best], n, r->buf[got], ngot, r->buf[merged], cap, &skipped);
        int t = best;
        best = merged;
        merged = t;
    }
    /* The queue takes the buffer it is in; the others go with the rest. */
    uint32_t kept = rbus__sub_replay_set(s, r->buf[best], n);
    r->buf[best] = NULL;
    skipped += n - kept;
    /* Relaxed: statistics, read by stats after this call returns or
     * racing it (Prometheus), which then sees either value. */
    atomic_store_explicit(&s->replayed, kept, memory_order_relaxed);
    atomic_store_explicit(&s->replay_skipped, skipped, memory_order_relaxed);
}

void rbus__replay_free(rbus *bus, struct rbus_replay *r)
{
    rbus__free(bus, r->topics);
    rbus__free(bus, r->gens);
    for (int i = 0; i < 3; i++) {
        rbus__free(bus, r->buf[i]);
        r->buf[i] = NULL;
    }
    r->topics = NULL;
    r->gens = NULL;
    r->ntopics = r->cap = 0;
}

int rbus_topic_last(rbus_topic *topic, rbus_msg **out)
{
    RBUS__PAUSE(RBUS_TOPIC_LAST);
    if (out)
        *out = NULL;
    if (!topic)
        return rbus__fail_static(-EINVAL, "rbus_topic_last: topic is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_topic_last: out is NULL");
    /* Acquire: pairs with the release that installed it (topic.c). */
    struct rbus_history *h = atomic_load_explicit(&topic->hist, memory_order_acquire);
    if (!h) {
        char q[RBUS__QUOTE_CAP];
        return rbus__fail(-EINVAL,
                          "rbus_topic_last: topic %s keeps no history (rbus_topic_opts.retain, "
                          "rbus_config.retain)",
                          rbus__quote(q, topic->name));
    }
    rbus_msg *m = NULL;
    pthread_mutex_lock(&h->read_lock);
    /* The newest committed position: a write still in flight above it is
     * not retained yet. A position that left the window while we looked
     * means publishers moved on: start again from the new tail (each
     * round follows their progress). */
    uint64_t size = rbus__ring_size(&h->ring);
    for (bool again = true; again && !m;) {
        again = false;
        uint64_t tail = atomic_load_explicit(&h->ring.tail, memory_order_acquire);
        for (uint64_t pos = tail; pos > 0 && tail - pos < size && !m;) {
            uint64_t v;
            m = history_ref(h, --pos, &v);
            if (!m && RBUS__SEQ_POS(v) > pos && left_window(h, pos)) {
                again = true;
                break;
            }
        }
    }
    pthread_mutex_unlock(&h->read_lock);
    if (!m) {
        char q[RBUS__QUOTE_CAP];
        return rbus__fail(-ENOENT, "rbus_topic_last: topic %s has retained nothing yet",
                          rbus__quote(q, topic->name));
    }
    rbus *bus = topic->bus;
    rbus__held_add(bus, rbus__thread_get(bus), 1);
    *out = m;
    return 0;
}
