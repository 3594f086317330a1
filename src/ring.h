/*
 * ring.h - the bounded MPMC ring of message pointers that each subscription
 * owns (a bounded queue with a sequence number per slot, after Dmitry
 * Vyukov's design). Inline: it is the hot path of every publish and
 * receive. Included by sub.c, stats.c (depth) and topic.c (the overload
 * fast path's fullness test).
 *
 * Why not ck_ring: its MPMC enqueue makes a producer that reserved a slot
 * wait, at commit, for every earlier producer on the ring to commit, so a
 * producer preempted between reserving and committing stalls every later
 * producer (docs/design.md#progress). Here each slot carries its own
 * sequence number: a producer preempted mid-write holds back only the
 * receivers that reach its slot, never other producers. Every access is a
 * C11 atomic, which ThreadSanitizer sees.
 *
 * Guarantees:
 *  - Producers are lock-free toward each other (one CAS on `tail` per
 *    enqueue, retried only when another producer won it).
 *  - Consumers are lock-free toward each other (one CAS on `head`).
 *  - FIFO in reservation order: a thread's successive enqueues are dequeued
 *    in that order.
 *  - Not wait-free toward consumers: a consumer cannot take past a slot
 *    whose producer reserved it and has not yet written it; the ring looks
 *    empty at that slot until the producer resumes.
 *  - Holds exactly `size` entries (a power of two).
 *
 * Slot protocol, for position p (head/tail count up forever, 64-bit):
 *   slot.seq == p          free for the producer of position p
 *   slot.seq == p + 1      holds the message of position p
 *   slot.seq == p + size   released by the consumer of p, free for p + size
 */
#ifndef RBUS_RING_H
#define RBUS_RING_H

#include "internal.h"

/* struct rbus_ring and its slots are declared in internal.h. */

static inline void rbus__ring_init(struct rbus_ring *r, struct rbus_ring_slot *slots,
                                   uint64_t size)
{
    r->slots = slots;
    r->mask = size - 1;
    for (uint64_t i = 0; i < size; i++) {
        atomic_init(&slots[i].seq, i);
        slots[i].msg = NULL;
    }
    atomic_init(&r->tail, 0);
    atomic_init(&r->head_seen, 0);
    atomic_init(&r->head, 0);
}

/*
 * Enqueue. On success *depth is an upper bound of the queue depth right
 * after it, exact whenever it is above `exact_above` (the caller's
 * high-water mark): reading `head` costs a cache miss on the consumer's
 * line, so we estimate from a recent value of it and read it only when the
 * estimate could raise the mark. The CAS on `tail` is seq_cst on purpose: it is the
 * producer half of the Dekker pairs described in sub.c (the producer then
 * reads the receivers' sleep flag with a seq_cst load, which costs a plain
 * load on x86 while still ordering after the locked CAS).
 */
static inline bool rbus__ring_put(struct rbus_ring *r, rbus_msg *m, uint32_t exact_above,
                                  uint32_t *depth)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    struct rbus_ring_slot *slot;
    for (;;) {
        slot = &r->slots[pos & r->mask];
        /* Acquire: pairs with the consumer's release of this slot, so its
         * read of the old message happens before we overwrite it. */
        uint64_t seq = atomic_load_explicit(&slot->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + 1,
                                                      memory_order_seq_cst,
                                                      memory_order_relaxed))
                break;
        } else if (dif < 0) {
            return false; /* the slot still holds the message of pos - size: full */
        } else {
            /* Another producer took pos; catch up. */
            pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
        }
    }
    RBUS__PAUSE(RING_PUT_RESERVED);
    slot->msg = m;
    /* Release: the message pointer (and everything the publisher wrote into
     * the message) is visible to the consumer that acquires this seq. */
    atomic_store_explicit(&slot->seq, pos + 1, memory_order_release);
    /* Relaxed: a statistic. head only grows, so an old value over-estimates
     * the depth; refresh it when that could matter. */
    uint64_t head = atomic_load_explicit(&r->head_seen, memory_order_relaxed);
    if (pos + 1 - head > exact_above) {
        head = atomic_load_explicit(&r->head, memory_order_relaxed);
        atomic_store_explicit(&r->head_seen, head, memory_order_relaxed);
    }
    uint64_t d = pos + 1 > head ? pos + 1 - head : 0;
    *depth = d > r->mask + 1 ? (uint32_t)(r->mask + 1) : (uint32_t)d;
    return true;
}

/* Dequeue; NULL when empty (or when the oldest slot's producer has not
 * finished writing it). The CAS on `head` is seq_cst: the consumer half of
 * the room-waiter Dekker pair (sub.c). */
static inline rbus_msg *rbus__ring_take(struct rbus_ring *r)
{
    uint64_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    struct rbus_ring_slot *slot;
    for (;;) {
        slot = &r->slots[pos & r->mask];
        /* Acquire: pairs with the producer's release of seq = pos + 1. */
        uint64_t seq = atomic_load_explicit(&slot->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - (pos + 1));
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + 1,
                                                      memory_order_seq_cst,
                                                      memory_order_relaxed))
                break;
        } else if (dif < 0) {
            return NULL; /* empty, or its producer is mid-write */
        } else {
            pos = atomic_load_explicit(&r->head, memory_order_relaxed);
        }
    }
    RBUS__PAUSE(RING_TAKE_CLAIMED);
    rbus_msg *m = slot->msg;
    /* Release: our read of the slot happens before a producer reuses it. */
    atomic_store_explicit(&slot->seq, pos + r->mask + 1, memory_order_release);
    return m;
}

/* Whether an enqueue now would fail for want of room, by the very test
 * rbus__ring_put makes: the slot at `tail` still holds the message of
 * tail - size. False when tail moves meanwhile (then we do not know).
 * Relaxed loads: the answer only decides whether to try, and the slot is
 * not touched, so nothing it guards needs ordering. */
static inline bool rbus__ring_full_at_tail(struct rbus_ring *r)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t seq = atomic_load_explicit(&r->slots[pos & r->mask].seq, memory_order_relaxed);
    return (int64_t)(seq - pos) < 0;
}

/* Positions reserved by producers and not yet taken: counts a slot whose
 * producer is mid-write. seq_cst loads: the receiving halves of the Dekker
 * pairs in sub.c. */
static inline uint64_t rbus__ring_reserved(struct rbus_ring *r)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_seq_cst);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_seq_cst);
    /* head is read first, so producers may have moved on meanwhile: clamp
     * to what the ring can hold. */
    uint64_t n = tail > head ? tail - head : 0;
    return n > r->mask + 1 ? r->mask + 1 : n;
}

static inline uint64_t rbus__ring_size(const struct rbus_ring *r)
{
    return r->mask + 1;
}

#endif /* RBUS_RING_H */
