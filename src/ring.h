/*
 * ring.h - the bounded MPMC ring of message pointers that each subscription
 * owns. Inline: it is the hot path of every publish and receive. Included
 * by sub.c, stats.c (depth) and topic.c (the overload fast path's test).
 *
 * What it promises, whatever other threads do and wherever they are
 * stalled (docs/design.md#progress):
 *  - A put never waits: it retries only because another operation on the
 *    ring completed, and passes at most `size` slots held by stalled
 *    writers. An evicting put (drop-oldest) takes the oldest message out
 *    with the same CAS that makes the slot its own, so it evicts at most one.
 *  - A take never waits for another receiver: a claim is one CAS that also
 *    frees the slot, so a receiver stalled anywhere holds nothing. It waits
 *    for a writer that has reserved a slot and not committed it only for
 *    RBUS__SKIP_POLLS polls, then skips the slot; the writer learns it when
 *    its commit fails, and offers its message again (RBUS__PUT_SKIPPED).
 *  - A thread stalled inside a call costs the ring at most one slot, or
 *    a batch writer the run it reserved (rbus__ring_put_run).
 *  - FIFO by position: a writer's successive puts are taken in order.
 *
 * Positions count up forever (64-bit); position p lives in slot p & mask.
 * A slot's word `seq` is p << 2 | state, for the position it serves now:
 *   EMPTY(p)  free for position p; once `tail` > p, reserved by a writer
 *             that has not committed
 *   BUSY(p)   reserved by an evicting writer that has not committed
 *   FULL(p)   holds the message of p
 *   HOLE(p)   no message at p, and the slot is held: its writer was
 *             skipped and has not yet acknowledged; positions that meet the
 *             held slot meanwhile are passed as holes too
 * Every change of a slot is a CAS on `seq`:
 *   writer     EMPTY(p)/BUSY(p) -> FULL(p)   commit
 *   receiver   FULL(p) -> EMPTY(p + size)    claim, freeing the slot
 *   evictor    FULL(p) -> BUSY(p + size)     claim of the oldest, reserving
 *   skipper    EMPTY(p)/BUSY(p) -> HOLE(p)   a receiver after its polls; an
 *                                            evictor at once (full ring)
 *   passer     HOLE(q) -> HOLE(p)            position p passed as a hole
 *   writer     HOLE(q) -> EMPTY(q + size)    acknowledging its skip
 * A plain writer reserves a position with a CAS on `tail`, only when its
 * slot is EMPTY for it; an evictor's reservation is its claim, after which
 * it moves `tail` on. `head` is a hint that only grows: every position
 * below it is done with (claimed, evicted or a hole).
 */
#ifndef RBUS_RING_H
#define RBUS_RING_H

#include "internal.h"

#define RBUS__SLOT_EMPTY 0u
#define RBUS__SLOT_BUSY 1u
#define RBUS__SLOT_FULL 2u
#define RBUS__SLOT_HOLE 3u
#define RBUS__SEQ(pos, state) (((pos) << 2) | (state))
#define RBUS__SEQ_POS(v) ((v) >> 2)
#define RBUS__SEQ_STATE(v) ((unsigned)((v)&3u))

/* How often a receiver re-reads a reserved, uncommitted slot before it
 * skips it: a writer that runs commits within nanoseconds; one that has
 * not after this many polls (microseconds) was preempted there. */
#ifndef RBUS__SKIP_POLLS /* the model check (tests/model) sets a small one */
#define RBUS__SKIP_POLLS 1024u
#endif

/* The type of tail and head (the model check has its own atomics). */
#ifndef RBUS__POS_WORD
#define RBUS__POS_WORD _Atomic uint64_t
#endif

enum rbus_put {
    RBUS__PUT_QUEUED,
    RBUS__PUT_FULL,   /* no room (or, evicting, every slot held by a stalled writer) */
    RBUS__PUT_SKIPPED /* reserved, then skipped before the commit: offer again */
};

/* Slots per cache line. Consecutive positions go to different lines, so
 * that a writer committing one and a receiver claiming the one before, both
 * with locked instructions, do not fight over a line; positions a lap apart
 * still share their slot. */
#ifndef RBUS__SLOTS_PER_LINE /* the model check sets its own */
#define RBUS__SLOTS_PER_LINE (RBUS__CACHELINE / sizeof(struct rbus_ring_slot))
#endif

static inline struct rbus_ring_slot *rbus__ring_slot(const struct rbus_ring *r, uint64_t pos)
{
    uint64_t i = ((pos & r->line_mask) * RBUS__SLOTS_PER_LINE) |
                 ((pos >> r->line_shift) & (RBUS__SLOTS_PER_LINE - 1));
    return &r->slots[i & r->mask];
}

static inline void rbus__ring_init(struct rbus_ring *r, struct rbus_ring_slot *slots,
                                   uint64_t size)
{
    r->slots = slots;
    r->mask = size - 1;
    /* Fewer slots than a line: one line, in position order. */
    uint64_t lines = size >= RBUS__SLOTS_PER_LINE ? size / RBUS__SLOTS_PER_LINE : 1;
    r->line_mask = lines - 1;
    r->line_shift = 0;
    while ((UINT64_C(1) << r->line_shift) < lines)
        r->line_shift++;
    for (uint64_t i = 0; i < size; i++) {
        struct rbus_ring_slot *s = rbus__ring_slot(r, i);
        atomic_init(&s->seq, RBUS__SEQ(i, RBUS__SLOT_EMPTY));
        atomic_init(&s->msg, NULL);
    }
    atomic_init(&r->tail, 0);
    atomic_init(&r->head_seen, 0);
    atomic_init(&r->head, 0);
    atomic_init(&r->skipped, 0);
    atomic_init(&r->holes, 0);
    atomic_init(&r->reoffers, 0);
}

static inline uint64_t rbus__ring_size(const struct rbus_ring *r)
{
    return r->mask + 1;
}

/* Moves a position word (tail or head) from `from` to from + 1 unless
 * someone already did; returns its value now. seq_cst: moving tail is the
 * writer half of the receivers' sleep Dekker pair (sub.c); for head, which
 * only needs relaxed, it is the rare path (a receiver helping it past a
 * position another thread finished), where the order costs nothing. */
static inline uint64_t rbus__ring_move_on(RBUS__POS_WORD *word, uint64_t from)
{
    uint64_t seen = from;
    if (atomic_compare_exchange_strong_explicit(word, &seen, from + 1, memory_order_seq_cst,
                                                memory_order_seq_cst))
        return from + 1;
    return seen;
}

/* Moves head on to `to` after the position before it was claimed or
 * evicted. A plain store, no locked instruction: two racing stores may
 * move head back a little, which is harmless, since every position below
 * any value head takes is done with, and a reader that finds head's slot
 * already serving a later position moves it on. Relaxed: head is a hint;
 * the slot words carry every ordering. */
static inline void rbus__ring_head_to(struct rbus_ring *r, uint64_t to)
{
    if (atomic_load_explicit(&r->head, memory_order_relaxed) < to) {
        RBUS__PAUSE(RING_HEAD_TO);
        atomic_store_explicit(&r->head, to, memory_order_relaxed);
    }
}

/* A writer whose commit failed: its slot was skipped, and is HOLE(q) for its
 * position or a later one that met the held slot. It frees the slot for the
 * lap after q. Retried only when a passer moved q on meanwhile. */
static inline void rbus__ring_unhold(struct rbus_ring *r, struct rbus_ring_slot *s)
{
    uint64_t v = atomic_load_explicit(&s->seq, memory_order_relaxed);
    /* Release: our store of the message word happens before the next
     * writer of this slot stores its own (its acquire load of seq). */
    while (!atomic_compare_exchange_weak_explicit(
        &s->seq, &v, RBUS__SEQ(RBUS__SEQ_POS(v) + rbus__ring_size(r), RBUS__SLOT_EMPTY),
        memory_order_release, memory_order_relaxed))
        ;
}

/* The same, for a writer that will offer its message again: counted. */
static inline void rbus__ring_acknowledge(struct rbus_ring *r, struct rbus_ring_slot *s)
{
    rbus__ring_unhold(r, s);
    atomic_fetch_add_explicit(&r->reoffers, 1, memory_order_relaxed);
}

/* The depth estimate for the high-water mark: an upper bound, exact
 * whenever it is above `exact_above`. Reading `head` costs a miss on the
 * receivers' line, so a recent value of it is used unless the estimate
 * could raise the mark. Relaxed: a statistic. */
static inline uint32_t rbus__ring_depth_after(struct rbus_ring *r, uint64_t pos,
                                              uint32_t exact_above)
{
    uint64_t head = atomic_load_explicit(&r->head_seen, memory_order_relaxed);
    if (pos + 1 - head > exact_above) {
        head = atomic_load_explicit(&r->head, memory_order_relaxed);
        atomic_store_explicit(&r->head_seen, head, memory_order_relaxed);
    }
    uint64_t d = pos + 1 > head ? pos + 1 - head : 0;
    return d > r->mask + 1 ? (uint32_t)(r->mask + 1) : (uint32_t)d;
}

/* A position of our own, in slot s: t, with its slot word when we took it
 * (*vp). Returns FULL when there is no room, or when evicting and every
 * slot is held by a stalled writer. */
static inline enum rbus_put rbus__ring_reserve(struct rbus_ring *r, rbus_msg **evicted,
                                               struct rbus_ring_slot **sp, uint64_t *tp)
{
    const uint64_t size = rbus__ring_size(r);
    uint64_t passed = 0;
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    for (;;) {
        struct rbus_ring_slot *s = rbus__ring_slot(r, t);
        /* Acquire: pairs with the release CAS that last changed the slot (a
         * claim: the receiver's read of the old message word happens before
         * we store ours; an acknowledgement: the skipped writer's store
         * does). */
        uint64_t v = atomic_load_explicit(&s->seq, memory_order_acquire);
        uint64_t p = RBUS__SEQ_POS(v);
        unsigned state = RBUS__SEQ_STATE(v);
        if (p == t && state == RBUS__SLOT_EMPTY) {
            /* seq_cst: the writer half of the receivers' sleep pair. */
            if (atomic_compare_exchange_weak_explicit(&r->tail, &t, t + 1, memory_order_seq_cst,
                                                      memory_order_relaxed)) {
                *sp = s;
                *tp = t;
                return RBUS__PUT_QUEUED;
            }
            continue;
        }
        if (p < t && state == RBUS__SLOT_FULL) {
            /* Full: the oldest message, of position t - size, is unclaimed. */
            if (!evicted)
                return RBUS__PUT_FULL;
            rbus_msg *old = atomic_load_explicit(&s->msg, memory_order_relaxed);
            /* The claim a receiver would make, but reserving t for us. acq_rel:
             * acquire as a claim (we read the old message word above, after
             * the acquire load of v); release publishes nothing yet. */
            if (atomic_compare_exchange_strong_explicit(&s->seq, &v, RBUS__SEQ(t, RBUS__SLOT_BUSY),
                                                        memory_order_acq_rel,
                                                        memory_order_relaxed)) {
                *evicted = old;
                rbus__ring_head_to(r, p + 1); /* every position up to p is done with */
                rbus__ring_move_on(&r->tail, t);
                *sp = s;
                *tp = t;
                return RBUS__PUT_QUEUED;
            }
            continue;
        }
        if (p < t && state != RBUS__SLOT_HOLE) {
            /* Full, and the oldest position is reserved and not committed.
             * An evictor does not wait: it skips that writer (which offers
             * again) and passes the held slot below. */
            if (!evicted)
                return RBUS__PUT_FULL;
            if (atomic_compare_exchange_strong_explicit(&s->seq, &v, RBUS__SEQ(p, RBUS__SLOT_HOLE),
                                                        memory_order_relaxed, memory_order_relaxed))
                atomic_fetch_add_explicit(&r->skipped, 1, memory_order_relaxed);
            continue;
        }
        if (p < t) {
            /* HOLE: held by a skipped writer that has not come back. Pass
             * position t as a hole (marked before tail moves on, so that a
             * receiver at t sees it), unless every slot is held. */
            if (++passed > size)
                return RBUS__PUT_FULL;
            RBUS__PAUSE(RING_PUT_PASS);
            if (!atomic_compare_exchange_strong_explicit(&s->seq, &v, RBUS__SEQ(t, RBUS__SLOT_HOLE),
                                                         memory_order_relaxed,
                                                         memory_order_relaxed))
                continue;
            atomic_fetch_add_explicit(&r->holes, 1, memory_order_relaxed);
        }
        /* Position t is taken (reserved, committed or a hole) and tail has
         * not moved past it yet: move it on and look at the next. */
        t = rbus__ring_move_on(&r->tail, t);
    }
}

/*
 * Put. Without `evicted`, FULL when the oldest position still holds a
 * message or its writer has not committed. With `evicted` (drop-oldest), a
 * full ring gives up its oldest message (stored in *evicted) in the CAS
 * that reserves our slot, and an oldest writer that has not committed is
 * skipped at once. SKIPPED: we were skipped before our commit; nothing of
 * ours is queued (*evicted may still be set), the caller offers again.
 */
static inline enum rbus_put rbus__ring_put(struct rbus_ring *r, rbus_msg *m, rbus_msg **evicted,
                                           uint32_t exact_above, uint32_t *depth)
{
    struct rbus_ring_slot *s;
    uint64_t t;
    enum rbus_put rc = rbus__ring_reserve(r, evicted, &s, &t);
    if (rc != RBUS__PUT_QUEUED)
        return rc;
    RBUS__PAUSE(RING_PUT_RESERVED);
    /* The commit's release publishes it to receivers. Release here too,
     * for readers that look without claiming (history.c): one that reads
     * this message word also sees the CAS that gave us the slot, so its
     * re-check of the slot word cannot pass on an older value. Nobody
     * else stores this word until the slot is claimed, or acknowledged
     * if we are skipped. */
    atomic_store_explicit(&s->msg, m, memory_order_release);
    uint64_t v = atomic_load_explicit(&s->seq, memory_order_relaxed);
    for (;;) {
        if (RBUS__SEQ_POS(v) == t && RBUS__SEQ_STATE(v) != RBUS__SLOT_HOLE &&
            RBUS__SEQ_STATE(v) != RBUS__SLOT_FULL) {
            /* Release: the message word (and the message) before FULL. */
            if (atomic_compare_exchange_weak_explicit(&s->seq, &v, RBUS__SEQ(t, RBUS__SLOT_FULL),
                                                      memory_order_release, memory_order_relaxed))
                break;
            continue;
        }
        /* HOLE(t or later): a skipper got there first; the slot is held
         * for us until we acknowledge. */
        rbus__ring_acknowledge(r, s);
        return RBUS__PUT_SKIPPED;
    }
    *depth = rbus__ring_depth_after(r, t, exact_above);
    return RBUS__PUT_QUEUED;
}

/* Commits m at position pos, which the caller reserved with
 * rbus__ring_reserve (an all-or-none publish, sub.c); false when a
 * receiver skipped the slot meanwhile (the caller was stalled there): the
 * slot is freed, and m is not queued. */
static inline bool rbus__ring_commit_at(struct rbus_ring *r, uint64_t pos, rbus_msg *m)
{
    struct rbus_ring_slot *s = rbus__ring_slot(r, pos);
    /* Release, as in rbus__ring_put. */
    atomic_store_explicit(&s->msg, m, memory_order_release);
    uint64_t v = RBUS__SEQ(pos, RBUS__SLOT_EMPTY);
    /* Release: the message word (and the message) before FULL. A failed
     * CAS saw HOLE, the only other state a reserved slot can take. */
    if (atomic_compare_exchange_strong_explicit(&s->seq, &v, RBUS__SEQ(pos, RBUS__SLOT_FULL),
                                                memory_order_release, memory_order_relaxed))
        return true;
    rbus__ring_unhold(r, s);
    return false;
}

/* Up to `want` consecutive positions from tail, reserved with one CAS on
 * tail: the run of slots after tail that are EMPTY for their position.
 * Such a slot is free: only a writer that moves tail past its position
 * (a plain writer's CAS, or an evictor's claim of the slot at tail) can
 * take it, and our CAS fails if any did. Returns how many (the first in
 * *tp), or 0 when the slot at tail is not free: full, a hole, or another
 * put between its reservation and moving tail on, which the caller leaves
 * to rbus__ring_reserve. */
static inline uint64_t rbus__ring_reserve_run(struct rbus_ring *r, uint64_t want, uint64_t *tp)
{
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    for (;;) {
        uint64_t n = 0;
        /* Acquire: as in rbus__ring_reserve (the last claim's read of the
         * old message word happens before we store ours). */
        while (n < want &&
               atomic_load_explicit(&rbus__ring_slot(r, t + n)->seq, memory_order_acquire) ==
                   RBUS__SEQ(t + n, RBUS__SLOT_EMPTY))
            n++;
        if (!n)
            return 0;
        /* seq_cst: the writer half of the receivers' sleep pair, as a
         * single reservation's. */
        if (atomic_compare_exchange_weak_explicit(&r->tail, &t, t + n, memory_order_seq_cst,
                                                  memory_order_relaxed)) {
            *tp = t;
            return n;
        }
    }
}

/* Gives back reserved position pos without a message (an all-or-none
 * publish that found another subscription full, or the rest of a run cut
 * short): the slot moves on to the next lap, which receivers pass as a
 * position done with. A receiver may have skipped it meanwhile (HOLE):
 * then the hold is released the same way. */
static inline void rbus__ring_forgo(struct rbus_ring *r, uint64_t pos)
{
    struct rbus_ring_slot *s = rbus__ring_slot(r, pos);
    uint64_t v = RBUS__SEQ(pos, RBUS__SLOT_EMPTY);
    /* Release, as in rbus__ring_unhold (which a skipped slot takes);
     * seq_cst for the watermark pair its caller then completes (sub.c). */
    if (!atomic_compare_exchange_strong_explicit(
            &s->seq, &v, RBUS__SEQ(pos + rbus__ring_size(r), RBUS__SLOT_EMPTY),
            memory_order_seq_cst, memory_order_relaxed))
        rbus__ring_unhold(r, s);
}

/*
 * Puts a prefix of ms[0..k) at consecutive positions reserved at once
 * (rbus__ring_reserve_run), each committed as a single put's is, in order.
 * Returns how many were queued; *lastp is the position of the last. 0 when
 * the slot at tail was not free (the caller puts one message the ordinary
 * way). When a receiver skipped a slot of the run before we wrote it (we
 * were stalled there), the positions after it are given back unwritten,
 * *cut is set and the count queued so far returned: the caller offers the
 * rest again, behind them, so that its messages stay in order. A stalled
 * writer of a run holds at most the run (k slots).
 */
static inline uint32_t rbus__ring_put_run(struct rbus_ring *r, rbus_msg *const *ms, uint32_t k,
                                          uint64_t *lastp, bool *cut)
{
    uint64_t t;
    uint32_t got = (uint32_t)rbus__ring_reserve_run(r, k, &t);
    if (!got)
        return 0;
    RBUS__PAUSE(RING_RUN_RESERVED);
    uint32_t done = 0;
    while (done < got && rbus__ring_commit_at(r, t + done, ms[done]))
        done++;
    if (done < got) {
        /* Skipped at `done`: rbus__ring_commit_at freed that slot. */
        atomic_fetch_add_explicit(&r->reoffers, 1, memory_order_relaxed);
        for (uint32_t i = done + 1; i < got; i++)
            rbus__ring_forgo(r, t + i);
        *cut = true;
    }
    *lastp = t + done - 1;
    return done;
}

/* Take; NULL when empty. With `skip`, a slot reserved and not committed is
 * polled RBUS__SKIP_POLLS times and then skipped; without it, such a slot
 * ends the take at once, as an empty one does, and the take reads only the
 * slot (no line of the writers'). The claim CAS is seq_cst: the receiver
 * half of the room-waiter Dekker pair (sub.c). */
static inline rbus_msg *rbus__ring_take(struct rbus_ring *r, bool skip)
{
    const uint64_t size = rbus__ring_size(r);
    unsigned polls = 0;
    uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    for (;;) {
        struct rbus_ring_slot *s = rbus__ring_slot(r, h);
        /* Acquire: pairs with the writer's release commit, so its message
         * word and message are visible. */
        uint64_t v = atomic_load_explicit(&s->seq, memory_order_acquire);
        uint64_t p = RBUS__SEQ_POS(v);
        unsigned state = RBUS__SEQ_STATE(v);
        if (p == h && state == RBUS__SLOT_FULL) {
            rbus_msg *m = atomic_load_explicit(&s->msg, memory_order_relaxed);
            RBUS__PAUSE(RING_TAKE_CLAIMING);
            /* The claim frees the slot for the next lap at once. seq_cst:
             * see above; it also releases our read of the message word
             * before the next writer stores its own. */
            if (atomic_compare_exchange_strong_explicit(
                    &s->seq, &v, RBUS__SEQ(h + size, RBUS__SLOT_EMPTY), memory_order_seq_cst,
                    memory_order_relaxed)) {
                RBUS__PAUSE(RING_TAKE_CLAIMED);
                rbus__ring_head_to(r, h + 1);
                return m;
            }
            continue;
        }
        if (p > h || (p == h && state == RBUS__SLOT_HOLE)) {
            /* Position h is done with (claimed, evicted or a hole) and head
             * lags behind: move it on. */
            h = rbus__ring_move_on(&r->head, h);
            polls = 0;
            continue;
        }
        if (!skip && p == h)
            return NULL; /* empty, or being written */
        if (p == h && state == RBUS__SLOT_EMPTY) {
            /* Empty, unless a writer reserved h (tail moved past it).
             * seq_cst: the receiver half of the sleep pair reads tail. */
            if (atomic_load_explicit(&r->tail, memory_order_seq_cst) <= h)
                return NULL;
        } else if (p < h) {
            /* Held for an older position: h is free for nobody until a
             * passer marks it, which it does before moving tail past it. */
            if (atomic_load_explicit(&r->tail, memory_order_seq_cst) <= h)
                return NULL;
            RBUS__CPU_RELAX();
            continue;
        }
        /* Reserved, not committed (EMPTY with tail past it, or BUSY). */
        if (++polls < RBUS__SKIP_POLLS) {
            RBUS__CPU_RELAX();
            continue;
        }
        RBUS__PAUSE(RING_TAKE_SKIP);
        if (atomic_compare_exchange_strong_explicit(&s->seq, &v, RBUS__SEQ(h, RBUS__SLOT_HOLE),
                                                    memory_order_relaxed, memory_order_relaxed))
            atomic_fetch_add_explicit(&r->skipped, 1, memory_order_relaxed);
        polls = 0;
    }
}

/* Whether a put without eviction would find no room now, by the test it
 * makes: the slot at `tail` still serves the position a lap before, which
 * holds a message or is reserved. False when it cannot tell. seq_cst
 * loads: a publisher waiting for room reads this after registering (the
 * room Dekker pair in sub.c); the overload fast path only decides whether
 * to try. */
static inline bool rbus__ring_full_at_tail(struct rbus_ring *r)
{
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_seq_cst);
    uint64_t v = atomic_load_explicit(&rbus__ring_slot(r, t)->seq, memory_order_seq_cst);
    return RBUS__SEQ_POS(v) < t && RBUS__SEQ_STATE(v) != RBUS__SLOT_HOLE;
}

/* Positions reserved and not yet passed by head: counts slots being
 * written, and holes head has not passed. seq_cst loads: the receiving
 * halves of the sleep Dekker pairs in sub.c. */
static inline uint64_t rbus__ring_reserved(struct rbus_ring *r)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_seq_cst);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_seq_cst);
    /* head is read first, so writers may have moved on meanwhile: clamp to
     * what the ring can hold. */
    uint64_t n = tail > head ? tail - head : 0;
    return n > r->mask + 1 ? r->mask + 1 : n;
}

/* Positions not yet done with: reserved, written or not, and not yet
 * claimed, evicted, passed or given back. Exact where `head` is only a
 * hint (it may lag, even move back): from it, slots whose word shows the
 * position done with are walked over, reading each word seq_cst, so that
 * a caller's seq_cst store before this meets a receiver's claim CAS on
 * the slot (the watermark pairs in sub.c). O(lag of head): for rare
 * paths only. */
static inline uint64_t rbus__ring_pending(struct rbus_ring *r)
{
    const uint64_t size = rbus__ring_size(r);
    uint64_t h = atomic_load_explicit(&r->head, memory_order_seq_cst);
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_seq_cst);
    while (h < t) {
        uint64_t v = atomic_load_explicit(&rbus__ring_slot(r, h)->seq, memory_order_seq_cst);
        uint64_t p = RBUS__SEQ_POS(v);
        if (!(p > h || (p == h && RBUS__SEQ_STATE(v) == RBUS__SLOT_HOLE)))
            break; /* FULL, or reserved and not yet written: pending */
        h++;
        /* Writers may have moved tail on meanwhile: read it again at the
         * end, so that positions reserved since count too. */
        if (h == t)
            t = atomic_load_explicit(&r->tail, memory_order_seq_cst);
    }
    uint64_t n = t > h ? t - h : 0;
    return n > size ? size : n;
}

/* Messages in the ring (stats): the committed slots among the positions
 * between head and tail, which may also hold reserved, uncommitted slots
 * and holes. It reads each of those slots once: O(depth). */
static inline uint32_t rbus__ring_depth(struct rbus_ring *r)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint64_t n = tail > head ? tail - head : 0;
    if (n > r->mask + 1)
        n = r->mask + 1;
    uint32_t full = 0;
    for (uint64_t pos = tail - n; pos != tail; pos++) {
        uint64_t v = atomic_load_explicit(&rbus__ring_slot(r, pos)->seq, memory_order_relaxed);
        full += v == RBUS__SEQ(pos, RBUS__SLOT_FULL);
    }
    return full;
}

#endif /* RBUS_RING_H */
