/*
 * sub.c - subscriptions: lifecycle, the ring (ring.h) and its overflow
 * policies, receiving, and the event-loop fd.
 *
 * Wake-up protocol (no system call and no fence per message when nobody
 * waits). These are Dekker pairs of seq_cst operations, so C11 orders them
 * and on x86 they cost nothing beyond the locked CAS the ring already does:
 *  - A receiver about to sleep sets the flag of msg_ev (seq_cst CAS), then
 *    reads the ring's tail (seq_cst load). A publisher reserves its slot
 *    with a seq_cst CAS on tail, then reads the flag (seq_cst load). Either
 *    the publisher sees the flag and wakes the receiver, or the receiver
 *    sees the reservation and does not sleep (it spins, then sleeps briefly,
 *    until the slot is written).
 *  - The eventfd's `fd_armed` works the same way.
 *  - A publisher waiting for room registers in room_waiters and sets the
 *    flag of the subscription's room_ev (waiting on it alone) or the bus's
 *    (waiting on several), then reads head; a receiver advances head with
 *    a seq_cst CAS, then reads room_waiters and both events' flags.
 */
#include "internal.h"
#include "ring.h"

#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Whether anything is queued or being queued: the ring's reserved
 * positions, or replayed messages not yet taken. */
static inline bool ring_reserved(rbus_sub *s)
{
    return rbus__ring_reserved(&s->ring) != 0 || rbus__sub_replay_left(s) != 0;
}

/*
 * Byte bound. With max_bytes, `bytes` counts the payload bytes of the
 * messages queued and of those publishers have reserved room for and are
 * putting. A put first reserves its message's bytes (a CAS that fails when
 * they do not fit, so `bytes` never exceeds max_bytes), then takes a slot;
 * every message that leaves the ring (received, evicted) gives its bytes
 * back. No message is larger than max_bytes (rbus_subscribe refuses a
 * bound below max_payload), so a message always fits an empty queue with
 * no put in flight; a put stalled after its reservation holds its bytes
 * until it runs again (docs/design.md, P3). seq_cst: a reservation's load
 * of `bytes` after registering in room_waiters, against any give-back
 * (a receiver's, or a failed put's in bytes_put_failed) before a read of
 * room_waiters, is the room Dekker pair again, for bytes.
 */
static inline bool bytes_reserve_len(rbus_sub *s, uint64_t len)
{
    uint64_t b = atomic_load_explicit(&s->bytes, memory_order_seq_cst);
    do {
        if (len > s->max_bytes - b)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&s->bytes, &b, b + len, memory_order_seq_cst,
                                                    memory_order_seq_cst));
    return true;
}

static inline bool bytes_reserve(rbus_sub *s, const rbus_msg *m)
{
    return bytes_reserve_len(s, m->size);
}

static inline void bytes_give_back(rbus_sub *s, uint64_t n)
{
    if (n)
        atomic_fetch_sub_explicit(&s->bytes, n, memory_order_seq_cst);
}

/* Whether a put of m would find no room (seq_cst loads): the publisher's
 * half of the room Dekker pair reads this after registering. */
bool rbus__sub_full(rbus_sub *s, const rbus_msg *m)
{
    if (s->max_bytes &&
        m->size > s->max_bytes - atomic_load_explicit(&s->bytes, memory_order_seq_cst))
        return true;
    return rbus__ring_full_at_tail(&s->ring);
}

/* ------------------------------------------------------------ wake-ups */

static void fd_signal(int fd)
{
    uint64_t one = 1;
    /* The eventfd counter cannot overflow from our writes of 1, so the
     * write cannot fail with EAGAIN in practice; nothing to do if it did:
     * the fd is already readable then. */
    ssize_t n = write(fd, &one, sizeof one);
    (void)n;
}

static void fd_make_readable(rbus_sub *s)
{
    if (atomic_exchange_explicit(&s->fd_armed, 0, memory_order_acq_rel) == 1) {
        int fd = atomic_load_explicit(&s->fd, memory_order_acquire);
        if (fd >= 0) /* always, since the fd is published before arming */
            fd_signal(fd);
    }
}

static RBUS__NOINLINE void wake_receivers(rbus_sub *s)
{
    /* One receiver: any one can take the message, and it wakes the next
     * if more are left (recv_common). */
    if (rbus__event_has_waiters(&s->msg_ev))
        rbus__event_signal_one(&s->msg_ev);
    if (atomic_load_explicit(&s->fd_armed, memory_order_relaxed))
        fd_make_readable(s);
}

/* ----------------------------------------------------------- watermarks */

/*
 * Watermarks (RBUS_BLOCK subscriptions; ready.c turns them into the
 * topics' readiness). `over` goes 0 -> 1 when a put leaves the ring at
 * high_mark or more, and 1 -> 0 when a take leaves it under low_mark;
 * each change is one CAS, counted, and asks for the descriptors to be
 * refreshed. The depth is the ring's pending positions, counted exactly
 * by rbus__ring_pending (head alone may lag behind, or move back, when
 * receivers race), which reads the slot words seq_cst. Stuck states are
 * ruled out by Dekker pairs that meet on the slot words: a publisher sets
 * `over` (seq_cst CAS) and then counts; a receiver claims a slot (its
 * seq_cst CAS) and then reads `over` (seq_cst) in take_batch; an
 * all-or-none publish that gives a position back (seq_cst CAS) then
 * reads `over` too. Either the one that made room sees `over` and counts,
 * or the one that set `over` counts the room made. Whoever clears it
 * counts again, and sets it back if puts raced it past high_mark.
 */
static bool over_set(rbus_sub *s)
{
    uint32_t no = 0;
    if (!atomic_compare_exchange_strong_explicit(&s->over, &no, 1, memory_order_seq_cst,
                                                 memory_order_relaxed))
        return false;
    atomic_fetch_add_explicit(&s->high_hits, 1, memory_order_relaxed);
    return true;
}

static bool over_clear(rbus_sub *s)
{
    uint32_t yes = 1;
    if (!atomic_compare_exchange_strong_explicit(&s->over, &yes, 0, memory_order_seq_cst,
                                                 memory_order_relaxed))
        return false;
    atomic_fetch_add_explicit(&s->low_hits, 1, memory_order_relaxed);
    return true;
}

/* After a put whose depth estimate (an upper bound) reached high_mark:
 * true when `over` changed. */
static RBUS__NOINLINE bool watermark_after_put(rbus_sub *s)
{
    if (rbus__ring_pending(&s->ring) < s->high_mark || !over_set(s))
        return false;
    if (rbus__ring_pending(&s->ring) < s->low_mark)
        over_clear(s); /* drained meanwhile, by a take that did not see `over` */
    return true;
}

/* After room was made (a take, a position given back), with `over` set:
 * true when it changed. */
static RBUS__NOINLINE bool watermark_after_take(rbus_sub *s)
{
    if (rbus__ring_pending(&s->ring) >= s->low_mark || !over_clear(s))
        return false;
    if (rbus__ring_pending(&s->ring) >= s->high_mark)
        over_set(s); /* filled again meanwhile, by a put that saw `over` set */
    return true;
}

/* After room was made by a seq_cst CAS (a claim, a position given back):
 * the receiver half of the watermark pairs reads `over` (seq_cst). True
 * when `over` changed (readiness to refresh). */
static inline bool watermark_room_made(rbus_sub *s)
{
    return RBUS__UNLIKELY(atomic_load_explicit(&s->over, memory_order_seq_cst)) &&
           watermark_after_take(s);
}

/* After a put that queued, at `depth` (rbus__ring_depth_after, exact above
 * hw): the wake-up, the high-water mark and the high watermark. The put's
 * seq_cst CAS on tail came first: these loads are the publisher half of
 * the Dekker pairs above (plain loads on x86). Relaxed for high_water: a
 * statistic, whose monotonicity the CAS loop keeps. */
static inline void after_put(struct rbus_thread_state *th, rbus_sub *s, uint32_t hw, uint32_t depth)
{
    if (RBUS__UNLIKELY((atomic_load_explicit(&s->msg_ev.word, memory_order_seq_cst) & 1u) |
                       atomic_load_explicit(&s->fd_armed, memory_order_seq_cst)))
        wake_receivers(s);
    while (RBUS__UNLIKELY(depth > hw) &&
           !atomic_compare_exchange_weak_explicit(&s->high_water, &hw, depth, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
    if (RBUS__UNLIKELY(depth >= s->high_mark) && watermark_after_put(s))
        th->ready_dirty = true;
}

/* One put (ring.h) and, when it queued, after_put. `evicted` non-NULL:
 * drop-oldest. */
static inline enum rbus_put ring_put(struct rbus_thread_state *th, rbus_sub *s, rbus_msg *m,
                                     rbus_msg **evicted)
{
    /* Relaxed: high_water is a statistic; only its monotonicity matters,
     * which the CAS loop below keeps. */
    uint32_t hw = atomic_load_explicit(&s->high_water, memory_order_relaxed);
    uint32_t depth;
    enum rbus_put rc = rbus__ring_put(&s->ring, m, evicted, hw, &depth);
    if (rc == RBUS__PUT_QUEUED)
        after_put(th, s, hw, depth);
    return rc;
}

static inline void after_dequeue(rbus_sub *s)
{
    /* seq_cst load after the ring's seq_cst CAS on head: the receiver half
     * of the room Dekker pair. A signal costs a load of the event's word
     * unless somebody sleeps on it. */
    if (RBUS__UNLIKELY(atomic_load_explicit(&s->room_waiters, memory_order_seq_cst))) {
        rbus__event_signal(&s->room_ev);
        rbus__event_signal(&s->bus->room_ev);
    }
}

/* Bytes a put reserved and then did not use, given back. A blocked
 * publisher may be waiting for exactly those bytes (it found them
 * reserved and registered), so this is a dequeue for the room Dekker
 * pair: give back (seq_cst RMW), then read room_waiters. */
static void bytes_return(rbus_sub *s, uint64_t len)
{
    bytes_give_back(s, len);
    after_dequeue(s);
}

/* A put that reserved bytes and then did not queue. */
static void bytes_put_failed(rbus_sub *s, const rbus_msg *m)
{
    RBUS__PAUSE(BYTES_PUT_FAILED);
    bytes_return(s, m->size);
}

/* ------------------------------------------------------------ tallies */

/* Indices past this get no node (their counts go to `shared`), so table
 * lengths cannot overflow. No bus has a billion thread states. */
#define RBUS_TALLY_MAX_INDEX (UINT32_C(1) << 30)

struct rbus_tally *rbus__tally_add_node(struct rbus_thread_state *th, rbus_sub *s)
{
    /* Once per (publisher state, subscription), or again after an
     * allocation failed or the lock was busy. A try-lock, not a mutex: we
     * are inside a read section, which must not sleep (a grace period
     * would wait for us), so a busy lock sends this one count to `shared`
     * instead. Acquire/release: the holder's table writes happen before the
     * next holder's reads. */
    if (th->index >= RBUS_TALLY_MAX_INDEX ||
        atomic_exchange_explicit(&s->tally_lock, 1, memory_order_acquire))
        return &s->shared;
    struct rbus_tally *t;
    struct rbus_tally_table *tab = atomic_load_explicit(&s->tallies, memory_order_relaxed);
    if (tab && th->index < tab->len &&
        (t = atomic_load_explicit(&tab->node[th->index], memory_order_relaxed)) != NULL)
        goto out;
    t = rbus__zalloc_aligned(s->bus, sizeof *t);
    if (!t) {
        t = &s->shared;
        goto out;
    }
    if (tab && th->index < tab->len) {
        /* Release: the node's zeroed fields before its pointer. */
        atomic_store_explicit(&tab->node[th->index], t, memory_order_release);
        goto out;
    }
    uint32_t len = tab ? tab->len : 4;
    while (len <= th->index)
        len *= 2;
    struct rbus_tally_table *longer =
        rbus__zalloc(s->bus, sizeof *longer + (size_t)len * sizeof longer->node[0]);
    if (!longer) {
        rbus__free_aligned(s->bus, t);
        t = &s->shared;
        goto out;
    }
    longer->len = len;
    longer->retired = tab;
    for (uint32_t i = 0; tab && i < tab->len; i++)
        atomic_init(&longer->node[i], atomic_load_explicit(&tab->node[i], memory_order_relaxed));
    atomic_init(&longer->node[th->index], t);
    /* Release: the table's contents (and our node's) before its pointer. */
    atomic_store_explicit(&s->tallies, longer, memory_order_release);
out:
    atomic_store_explicit(&s->tally_lock, 0, memory_order_release);
    return t;
}

void rbus__tally_sum(const rbus_sub *s, uint64_t *offered, uint64_t *dropped_newest,
                     uint64_t *refused, uint64_t *dropped_oldest)
{
    *offered = *dropped_newest = *refused = *dropped_oldest = 0;
    /* Acquire, as in rbus__tally_of. The newest table holds every node
     * (a longer one starts as a copy). */
    struct rbus_tally_table *tab = atomic_load_explicit(&s->tallies, memory_order_acquire);
    uint32_t len = tab ? tab->len : 0;
    for (uint32_t i = 0; i <= len; i++) {
        const struct rbus_tally *t =
            i < len ? atomic_load_explicit(&tab->node[i], memory_order_acquire) : &s->shared;
        if (!t)
            continue;
        *offered += atomic_load_explicit(&t->offered, memory_order_relaxed);
        *dropped_newest += atomic_load_explicit(&t->dropped_newest, memory_order_relaxed);
        *refused += atomic_load_explicit(&t->refused, memory_order_relaxed);
        *dropped_oldest += atomic_load_explicit(&t->dropped_oldest, memory_order_relaxed);
    }
}

int64_t rbus__tally_oldest_wait(const rbus_sub *s)
{
    int64_t oldest = 0;
    /* Acquire, as in rbus__tally_sum; the times are relaxed: a gauge. */
    struct rbus_tally_table *tab = atomic_load_explicit(&s->tallies, memory_order_acquire);
    for (uint32_t i = 0; tab && i < tab->len; i++) {
        const struct rbus_tally *t = atomic_load_explicit(&tab->node[i], memory_order_acquire);
        int64_t since = t ? atomic_load_explicit(&t->wait_since, memory_order_relaxed) : 0;
        if (since && (!oldest || since < oldest))
            oldest = since;
    }
    return oldest;
}

/* ------------------------------------------------------ overflow policy */

/* A message a drop-oldest put took out of the ring: counted, its bytes
 * given back, released. */
static inline void drop_oldest(struct rbus_thread_state *th, rbus_sub *s, struct rbus_tally *tally,
                               rbus_msg *old, uint32_t *evicted)
{
    if (s->max_bytes)
        bytes_give_back(s, old->size);
    rbus__tally_add(s, tally, &tally->dropped_oldest);
    (*evicted)++;
    rbus__msg_unref_by(th, old, 1);
}

/* How many times a drop-oldest publish over its byte bound looks again
 * when the ring has nothing it can evict: the bytes are then reserved by
 * publishes in flight, which queue (or give them back) within nanoseconds
 * unless preempted. */
#define BYTES_EVICT_RETRIES 64u

/* Reserves m's bytes under the policy; false when they do not fit. Drop-
 * oldest first evicts the oldest messages until they fit. Its take is a
 * receiver's: it passes a slot whose writer has not committed after its
 * bounded polls, as a receiver does (the writer offers again, its bytes
 * still reserved), and takes the committed message behind it. At most one
 * lap of the ring, and a bounded number of looks at an empty one. Off the
 * common path. */
static RBUS__NOINLINE bool bytes_make_room(struct rbus_thread_state *th, rbus_sub *s,
                                           struct rbus_tally *tally, const rbus_msg *m,
                                           uint32_t *evicted)
{
    uint32_t taken = 0, empty = 0;
    while (!bytes_reserve(s, m)) {
        if (s->overflow != RBUS_DROP_OLDEST)
            return false;
        rbus_msg *old = taken < s->capacity ? rbus__ring_take(&s->ring, true) : NULL;
        if (!old) {
            if (taken >= s->capacity || ++empty > BYTES_EVICT_RETRIES)
                return false;
            RBUS__CPU_RELAX();
            continue;
        }
        taken++;
        drop_oldest(th, s, tally, old, evicted);
    }
    return true;
}

enum rbus_offer rbus__sub_offer(struct rbus_thread_state *th, rbus_sub *s, rbus_msg *m,
                                uint32_t *evicted)
{
    /* Tallies are read only by stats: relaxed (rbus_tally). */
    struct rbus_tally *tally = rbus__tally_of(th, s);
    rbus__tally_add(s, tally, &tally->offered);
    if (RBUS__UNLIKELY(s->max_bytes != 0) && !bytes_make_room(th, s, tally, m, evicted)) {
        if (s->overflow == RBUS_BLOCK)
            return RBUS_OFFER_FULL;
        rbus__tally_add(s, tally, &tally->dropped_newest);
        return RBUS_OFFER_DROPPED;
    }
    /* Drop-oldest evicts at most once per publish: after an eviction, a
     * publish offered again (its slot was skipped while it was stalled)
     * only takes free room. */
    bool may_evict = s->overflow == RBUS_DROP_OLDEST;
    for (;;) {
        rbus_msg *old = NULL;
        enum rbus_put rc = ring_put(th, s, m, may_evict ? &old : NULL);
        if (old) {
            drop_oldest(th, s, tally, old, evicted);
            may_evict = false;
        }
        if (RBUS__LIKELY(rc == RBUS__PUT_QUEUED))
            return RBUS_OFFER_QUEUED;
        if (rc == RBUS__PUT_SKIPPED)
            continue; /* we stalled mid-write and were skipped: offer again
                         (with our bytes still reserved) */
        if (s->max_bytes)
            bytes_put_failed(s, m);
        if (s->overflow == RBUS_BLOCK)
            return RBUS_OFFER_FULL;
        /* Drop-oldest that evicted once and was then skipped: every message
         * queued now came after ours, so ours is the oldest, and goes. */
        if (s->overflow == RBUS_DROP_OLDEST && !may_evict) {
            rbus__tally_add(s, tally, &tally->dropped_oldest);
            return RBUS_OFFER_DROPPED;
        }
        /* Drop-newest; or drop-oldest with every slot held by a stalled
         * writer, so that there is nothing to evict. */
        rbus__tally_add(s, tally, &tally->dropped_newest);
        return RBUS_OFFER_DROPPED;
    }
}

uint32_t rbus__sub_offer_run(struct rbus_thread_state *th, rbus_sub *s, rbus_msg *const *ms,
                             uint32_t k)
{
    uint32_t most = (uint32_t)(rbus__ring_size(&s->ring) / 4);
    if (most > RBUS__RUN_MAX)
        most = RBUS__RUN_MAX;
    if (k > most)
        k = most;
    if (k < 2)
        return 0; /* nothing to gain over a put */
    uint64_t bytes = 0;
    if (RBUS__UNLIKELY(s->max_bytes != 0)) {
        for (uint32_t i = 0; i < k; i++)
            bytes += ms[i]->size;
        if (!bytes_reserve_len(s, bytes))
            return 0;
    }
    /* Relaxed: a statistic, as in ring_put. */
    uint32_t hw = atomic_load_explicit(&s->high_water, memory_order_relaxed);
    uint64_t last = 0;
    bool cut = false;
    uint32_t done = rbus__ring_put_run(&s->ring, ms, k, &last, &cut);
    if (RBUS__UNLIKELY(s->max_bytes != 0) && done < k) {
        for (uint32_t i = 0; i < done; i++)
            bytes -= ms[i]->size;
        bytes_return(s, bytes); /* the rest's, which a blocked publisher may want */
    }
    /* Positions given back counted in the depth until now: room made, as
     * by rbus__sub_unreserve (the forgo CAS was seq_cst). */
    if (RBUS__UNLIKELY(cut) && watermark_room_made(s))
        th->ready_dirty = true;
    if (!done)
        return 0;
    struct rbus_tally *tally = rbus__tally_of(th, s);
    rbus__tally_add_n(s, tally, &tally->offered, done);
    /* The run's tail CAS was seq_cst, as a put's. */
    after_put(th, s, hw, rbus__ring_depth_after(&s->ring, last, hw));
    return done;
}

uint32_t rbus__sub_replay_set(rbus_sub *s, rbus_msg **q, uint32_t n)
{
    /* Under a byte bound, the newest run that fits: a message that does
     * not fit ends it, so that no publisher's run has a gap. */
    uint32_t first = 0;
    for (uint32_t i = n; s->max_bytes && i-- > 0;)
        if (!bytes_reserve(s, q[i])) {
            first = i + 1;
            break;
        }
    for (uint32_t i = 0; i < first; i++)
        rbus__msg_unref(q[i], 1);
    memmove(q, q + first, (size_t)(n - first) * sizeof *q);
    s->replay_q = q;
    atomic_store_explicit(&s->replay_next, 0, memory_order_relaxed);
    atomic_store_explicit(&s->replay_count, n - first, memory_order_relaxed);
    /* Offered, on the shared tally: this thread publishes nothing here.
     * The handle's publication (rbus_subscribe) orders all of it before
     * any receive. */
    atomic_fetch_add_explicit(&s->shared.offered, n - first, memory_order_relaxed);
    return n - first;
}

bool rbus__sub_try_enqueue(struct rbus_thread_state *th, rbus_sub *s, rbus_msg *m)
{
    if (s->max_bytes && !bytes_reserve(s, m))
        return false;
    enum rbus_put rc;
    while ((rc = ring_put(th, s, m, NULL)) == RBUS__PUT_SKIPPED) {
    }
    if (rc != RBUS__PUT_QUEUED && s->max_bytes)
        bytes_put_failed(s, m);
    return rc == RBUS__PUT_QUEUED;
}

bool rbus__sub_reserve(rbus_sub *s, size_t len, struct rbus_resv *r)
{
    if (s->max_bytes && !bytes_reserve_len(s, len))
        return false;
    /* Without eviction (RBUS_BLOCK): FULL or a position. Its tail CAS is
     * seq_cst, as a put's: the receivers' sleep pair holds for it. */
    if (rbus__ring_reserve(&s->ring, NULL, &r->slot, &r->pos) == RBUS__PUT_QUEUED)
        return true;
    if (s->max_bytes)
        bytes_return(s, len);
    return false;
}

bool rbus__sub_unreserve(rbus_sub *s, size_t len, struct rbus_resv *r)
{
    rbus__ring_forgo(&s->ring, r->pos);
    if (s->max_bytes)
        bytes_return(s, len);
    /* The position counted in the depth until now: room made, as by a
     * take (forgo's CAS is seq_cst). */
    return watermark_room_made(s);
}

enum rbus_offer rbus__sub_commit(struct rbus_thread_state *th, rbus_sub *s, rbus_msg *m,
                                 struct rbus_resv *r)
{
    if (!rbus__ring_commit_at(&s->ring, r->pos, m)) {
        /* Skipped while we were stalled between reserving and writing:
         * our bytes are still reserved, and rbus__sub_offer reserves its
         * own, so give these back first. Counted as a put offered again. */
        atomic_fetch_add_explicit(&s->ring.reoffers, 1, memory_order_relaxed);
        if (s->max_bytes)
            bytes_give_back(s, m->size);
        uint32_t evicted = 0; /* RBUS_BLOCK evicts nothing */
        return rbus__sub_offer(th, s, m, &evicted);
    }
    struct rbus_tally *tally = rbus__tally_of(th, s);
    rbus__tally_add(s, tally, &tally->offered);
    /* The reservation's tail CAS was seq_cst, as a put's. */
    uint32_t hw = atomic_load_explicit(&s->high_water, memory_order_relaxed);
    after_put(th, s, hw, rbus__ring_depth_after(&s->ring, r->pos, hw));
    return RBUS_OFFER_QUEUED;
}

/* -------------------------------------------------------------- receive */

/* Up to max messages. With `skip`, a slot whose writer has not committed
 * is skipped after a bounded number of polls (ring.h): for a caller that
 * found the queue empty while something was reserved. */
/* latency_sample: the age of the sampled messages just taken, by one
 * clock read for the batch. Sampling by sequence number needs no shared
 * counter, and spreads the samples evenly over a topic's messages. */
static RBUS__NOINLINE void record_queue_wait(rbus_sub *s, rbus_msg **m, size_t n)
{
    int64_t now = 0;
    uint32_t every = s->latency_sample;
    for (size_t i = 0; i < n; i++) {
        if (every > 1 && m[i]->seq % every != 0)
            continue;
        if (!now)
            now = rbus__stamp_ns(s->bus);
        rbus__hist_add(&s->queue_wait,
                       now - (int64_t)atomic_load_explicit(&m[i]->time_ns, memory_order_relaxed));
    }
}

/* Takes from the replay queue: each entry once, whoever races for it.
 * The count drops to 0 once every entry is claimed, so that the common
 * receive tests one word. */
static RBUS__NOINLINE size_t take_replayed(rbus_sub *s, rbus_msg **out, size_t max)
{
    size_t got = 0;
    /* Relaxed: the entries were written before the handle was published;
     * the fetch-and-add hands each index to one receiver. The count read
     * first: it becomes 0 only after every index below it was handed out,
     * so an index below the count read is a valid claim. */
    uint32_t count = atomic_load_explicit(&s->replay_count, memory_order_relaxed);
    while (got < max) {
        uint32_t i = atomic_fetch_add_explicit(&s->replay_next, 1, memory_order_relaxed);
        if (i >= count) {
            atomic_store_explicit(&s->replay_count, 0, memory_order_relaxed);
            break;
        }
        out[got++] = s->replay_q[i];
    }
    return got;
}

static size_t take_batch(rbus_sub *s, rbus_msg **out, size_t max, bool skip)
{
    size_t got = 0;
    /* Replayed messages come first. Relaxed: see take_replayed. */
    if (RBUS__UNLIKELY(atomic_load_explicit(&s->replay_count, memory_order_relaxed) != 0))
        got = take_replayed(s, out, max);
    while (got < max) {
        rbus_msg *m = rbus__ring_take(&s->ring, skip);
        if (!m)
            break;
        out[got++] = m;
    }
    if (got) {
        atomic_fetch_add_explicit(&s->received, got, memory_order_relaxed);
        if (RBUS__UNLIKELY(s->latency_sample != 0))
            record_queue_wait(s, out, got);
        if (s->max_bytes) {
            uint64_t n = 0;
            for (size_t i = 0; i < got; i++)
                n += out[i]->size;
            bytes_give_back(s, n); /* before after_dequeue's read: see above */
        }
        after_dequeue(s);
        RBUS__PAUSE(RECV_WATERMARK);
        if (watermark_room_made(s)) /* after the claim's seq_cst CAS */
            rbus__ready_refresh_all(s->bus);
    }
    return got;
}

/* On an empty receive with timeout 0: clear the fd until the next enqueue.
 * If something was reserved meanwhile the fd is made readable again (the
 * caller tries once more to take it). */
static void fd_clear(rbus_sub *s)
{
    int fd = atomic_load_explicit(&s->fd, memory_order_acquire);
    if (fd < 0 || atomic_load_explicit(&s->fd_armed, memory_order_relaxed))
        return;
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof v); /* drain; EAGAIN if already clear */
    (void)n;
    /* seq_cst store, then the seq_cst loads of ring_reserved(): the receiver
     * half of the Dekker pair with ring_put(). */
    atomic_store_explicit(&s->fd_armed, 1, memory_order_seq_cst);
    if (ring_reserved(s) || atomic_load_explicit(&s->state, memory_order_acquire) != RBUS_SUB_OPEN)
        fd_make_readable(s);
}

/* `held`: count what it takes as held by the application (a dispatcher's
 * own receives are not: its workers release them uncounted). */
static int recv_common(rbus_sub *s, rbus_msg **out, size_t max, int64_t timeout_ns, bool held)
{
    if (!rbus__sub_enter(s))
        return -ESHUTDOWN;
    int rc;
    int64_t deadline = 0, spin_until = 0;
    bool timed = false;
    unsigned iter = 0, reserved_rounds = 0;
    struct rbus_spin spin = {.steps = 0, .pause_only = false, .deadline = -1, .sub = s};
    for (;;) {
        /* Read the state before trying: if it was CLOSED already, no
         * enqueue can follow, so an empty ring is final. */
        uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);
        size_t got = take_batch(s, out, max, false);
        if (got) {
            rc = (int)got;
            break;
        }
        if (st == RBUS_SUB_CLOSED) {
            rc = -ESHUTDOWN;
            break;
        }
        if (timeout_ns == 0) {
            fd_clear(s);
            /* A message may have landed while we cleared the fd. */
            got = take_batch(s, out, max, true);
            rc = got ? (int)got : -EAGAIN;
            break;
        }
        int64_t now = rbus__now_ns();
        if (!timed) {
            timed = true;
            deadline = rbus__deadline(timeout_ns);
            spin_until = now + s->spin_ns;
            spin.deadline = deadline;
        }
        if (deadline >= 0 && now >= deadline) {
            rc = -ETIMEDOUT;
            break;
        }
        if (now < spin_until) {
            rbus__spin_wait_step(&spin);
            continue;
        }
        uint32_t seen = rbus__event_prepare(&s->msg_ev);
        if (atomic_load_explicit(&s->state, memory_order_acquire) == RBUS_SUB_CLOSED)
            continue; /* the next round drains, then ends */
        int64_t until = deadline;
        if (ring_reserved(s)) {
            /* Something was reserved before we set our flag, so its writer
             * may not wake us. Usually it is committed by now: retry at
             * once. If not, its writer may have been preempted mid-write:
             * wait for it a bounded time, then skip it (ring.h), so that a
             * stalled writer holds back no receiver. */
            if (++reserved_rounds < 64) {
                rbus__spin_step_before(iter++, now, deadline);
                continue;
            }
            if ((got = take_batch(s, out, max, true)) != 0) {
                rc = (int)got;
                break;
            }
            until = rbus__sooner(now + RBUS__SLOT_RETRY_NS, deadline);
        }
        /* Counted while we sleep, for the baton below. seq_cst: a receiver
         * that is already asleep is seen by the baton's load; one on its
         * way to sleep has announced itself on msg_ev first, and sleeps
         * only on a word no signal has changed since (wait.c). */
        atomic_fetch_add_explicit(&s->msg_sleepers, 1, memory_order_seq_cst);
        rbus__event_wait(&s->msg_ev, seen, until);
        /* A signal that woke us alone cleared the flag for everybody: with
         * others still asleep, announce again for them, so that the next
         * publish wakes one. A publish racing this meets the baton below:
         * its tail CAS comes before its look at the flag, our flag CAS
         * before the baton's look at tail. */
        if (atomic_fetch_sub_explicit(&s->msg_sleepers, 1, memory_order_seq_cst) > 1)
            (void)rbus__event_prepare(&s->msg_ev);
        RBUS__PAUSE(RECV_WOKE);
        reserved_rounds = 0;
    }
    /* The baton: a publish wakes one sleeping receiver (wake_receivers),
     * so one that leaves anything queued or being queued wakes the next
     * sleeper, if any, before it returns, whatever it returns: it may
     * have been the one woken, and be leaving with a message (or timing
     * out behind a stalled writer's slot, which a receiver that sleeps on
     * skips). Otherwise a receiver that stops receiving after this call
     * could leave them queued while others sleep. A closed subscription
     * has woken everybody already. seq_cst load: after our claim's
     * seq_cst CAS, the other half of the sleepers' count. */
    if (rc != -ESHUTDOWN &&
        RBUS__UNLIKELY(atomic_load_explicit(&s->msg_sleepers, memory_order_seq_cst)) &&
        ring_reserved(s))
        rbus__event_wake_one(&s->msg_ev);
    if (held && rc > 0)
        rbus__held_add(s->bus, rbus__thread_get(s->bus), rc);
    rbus__sub_leave(s);
    return rc;
}

int rbus__sub_recv_unheld(rbus_sub *s, rbus_msg **out, int64_t timeout_ns)
{
    int rc = recv_common(s, out, 1, timeout_ns, false);
    return rc > 0 ? 0 : rc;
}

/* The detail of a receive that found nothing. Static texts only, so that
 * an event loop's -EAGAIN costs a pointer store. For -ESHUTDOWN, entering
 * the subscription again tells an unsubscribe from a close; the bus is
 * only read while the call holds it. */
static int recv_failed(rbus_sub *s, int rc, bool batch)
{
    const char *text;
    if (rc == -EAGAIN) {
        text = batch ? "rbus_recv_batch: no message queued (timeout 0)"
                     : "rbus_recv: no message queued (timeout 0)";
    } else if (rc == -ETIMEDOUT) {
        text = batch ? "rbus_recv_batch: timed out, no message queued"
                     : "rbus_recv: timed out, no message queued";
    } else if (!rbus__sub_enter(s)) {
        text = batch ? "rbus_recv_batch: rbus_unsubscribe of the subscription has begun"
                     : "rbus_recv: rbus_unsubscribe of the subscription has begun";
    } else {
        if (atomic_load_explicit(&s->bus->closing, memory_order_relaxed))
            text = batch ? "rbus_recv_batch: the bus is closed and the subscription drained"
                         : "rbus_recv: the bus is closed and the subscription drained";
        else
            text = batch ? "rbus_recv_batch: the subscription is closed and drained"
                         : "rbus_recv: the subscription is closed and drained";
        rbus__sub_leave(s);
    }
    return rbus__fail_static(rc, text);
}

int rbus_recv(rbus_sub *sub, rbus_msg **out, int64_t timeout_ns)
{
    RBUS__PAUSE(RBUS_RECV);
    if (out)
        *out = NULL;
    if (!sub)
        return rbus__fail_static(-EINVAL, "rbus_recv: sub is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_recv: out is NULL");
    int rc = recv_common(sub, out, 1, timeout_ns, true);
    if (RBUS__UNLIKELY(rc < 0))
        return recv_failed(sub, rc, false);
    return 0;
}

int rbus_recv_batch(rbus_sub *sub, rbus_msg **out, size_t max, int64_t timeout_ns)
{
    RBUS__PAUSE(RBUS_RECV_BATCH);
    if (!sub)
        return rbus__fail_static(-EINVAL, "rbus_recv_batch: sub is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_recv_batch: out is NULL");
    if (max == 0)
        return rbus__fail_static(-EINVAL, "rbus_recv_batch: max is 0");
    if (max > INT_MAX)
        max = INT_MAX;
    int rc = recv_common(sub, out, max, timeout_ns, true);
    if (RBUS__UNLIKELY(rc < 0))
        return recv_failed(sub, rc, true);
    return rc;
}

/* ---------------------------------------------------------- lifecycle */

void rbus_sub_opts_init(rbus_sub_opts *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    opts->capacity = 0;
    opts->overflow = RBUS_BLOCK;
    opts->block_timeout_ns = 0;
    opts->spin_ns = 0;
    opts->name = NULL;
}

static uint32_t ring_size_for(uint32_t capacity)
{
    /* At least 2, so that a held slot (ring.h) never leaves a ring with
     * no slot at all. */
    uint32_t size = 2;
    while (size < capacity)
        size <<= 1;
    return size;
}

/* ------------------------------------------------ the struct's life */

char rbus__unsubscribing;

/* A struct for a new subscription, `dying` set: the pool's oldest when
 * more than RBUS__POOL_HOLD wait there (so a late call on an unsubscribed
 * handle finds it dying for as long as possible), else a fresh one. */
static rbus_sub *sub_struct_get(rbus *bus)
{
    rbus_sub *s = rbus__pool_take(bus, &bus->sub_pool, offsetof(rbus_sub, pool_next));
    if (s) {
        /* Everything but the kept fields (internal.h): `dying`, which late
         * calls read, and `callers` and `fd_lock`, which they may be
         * using; `callers` is balanced by each of them. */
        unsigned char *p = (unsigned char *)s;
        size_t from = offsetof(rbus_sub, bus), mid = offsetof(rbus_sub, callers);
        size_t after = mid + sizeof s->callers, lock_at = offsetof(rbus_sub, fd_lock);
        memset(p + from, 0, mid - from);
        memset(p + after, 0, lock_at - after);
        return s;
    }
    s = rbus__zalloc_aligned(bus, sizeof *s);
    if (s) {
        atomic_init(&s->dying, 1);
        pthread_mutex_init(&s->fd_lock, NULL);
    }
    return s;
}

/* Frees what hangs off the struct (queued messages, ring, names, tallies,
 * fd). Nobody may be using them: the subscription was never visible, or
 * rbus_unsubscribe has waited for every call and publisher. */
static void sub_release_parts(rbus_sub *s)
{
    rbus *bus = s->bus;
    rbus_msg *m;
    while (s->capacity && (m = rbus__ring_take(&s->ring, true))) /* capacity: ring initialised */
        rbus__msg_unref(m, 1);
    uint32_t count = atomic_load_explicit(&s->replay_count, memory_order_relaxed);
    for (uint32_t i = atomic_load_explicit(&s->replay_next, memory_order_relaxed); i < count; i++)
        rbus__msg_unref(s->replay_q[i], 1);
    rbus__free(bus, s->replay_q);
    s->replay_q = NULL;
    atomic_store_explicit(&s->replay_count, 0, memory_order_relaxed);
    int fd = atomic_load_explicit(&s->fd, memory_order_relaxed);
    if (fd >= 0)
        close(fd);
    atomic_store_explicit(&s->fd, -1, memory_order_relaxed);
    struct rbus_tally_table *tab = atomic_load_explicit(&s->tallies, memory_order_acquire);
    for (uint32_t i = 0; tab && i < tab->len; i++)
        rbus__free_aligned(bus, atomic_load_explicit(&tab->node[i], memory_order_relaxed));
    while (tab) {
        struct rbus_tally_table *older = tab->retired;
        rbus__free(bus, tab);
        tab = older;
    }
    atomic_store_explicit(&s->tallies, NULL, memory_order_relaxed);
    rbus__free_aligned(bus, s->ring.slots);
    rbus__free(bus, s->pattern);
    rbus__free(bus, s->name);
    s->ring.slots = NULL;
    s->pattern = s->name = NULL;
    s->capacity = 0;
}

/* Gives a struct whose parts are released to the pool; `dying` is set. */
static void sub_struct_put(rbus *bus, rbus_sub *s)
{
    rbus__pool_put(bus, &bus->sub_pool, s, offsetof(rbus_sub, pool_next));
}

void rbus__sub_free(rbus_sub *s)
{
    rbus *bus = s->bus;
    sub_release_parts(s);
    pthread_mutex_destroy(&s->fd_lock);
    rbus__free_aligned(bus, s);
}

void rbus__sub_pool_free(rbus *bus)
{
    rbus_sub *s;
    while ((s = rbus__pool_drain(&bus->sub_pool, offsetof(rbus_sub, pool_next)))) {
        pthread_mutex_destroy(&s->fd_lock);
        rbus__free_aligned(bus, s);
    }
}

/* Under bus->lock. */
static void subs_unlink(rbus *bus, rbus_sub *s)
{
    if (s->bus_prev)
        s->bus_prev->bus_next = s->bus_next;
    else
        bus->subs = s->bus_next;
    if (s->bus_next)
        s->bus_next->bus_prev = s->bus_prev;
    s->bus_next = s->bus_prev = NULL;
}

int rbus_subscribe(rbus *bus, const char *pattern, const rbus_sub_opts *opts, rbus_sub **out)
{
    RBUS__PAUSE(RBUS_SUBSCRIBE);
    if (out)
        *out = NULL;
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    if (opts)
        o = *opts;
    if (!bus)
        return rbus__fail_static(-EINVAL, "rbus_subscribe: bus is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_subscribe: out is NULL");
    int rc = rbus__subject_check("rbus_subscribe", "pattern", pattern, true);
    if (rc != 0)
        return rc;
    if ((unsigned)o.overflow > RBUS_DROP_NEWEST)
        return rbus__fail(-EINVAL,
                          "rbus_subscribe: overflow %d is none of RBUS_BLOCK, RBUS_DROP_OLDEST, "
                          "RBUS_DROP_NEWEST",
                          (int)o.overflow);
    if (o.capacity > RBUS_MAX_CAPACITY)
        return rbus__fail(
            -EINVAL, "rbus_subscribe: capacity %" PRIu32 " above RBUS_MAX_CAPACITY (%" PRIu32 ")",
            o.capacity, RBUS_MAX_CAPACITY);
    if (o.spin_ns > RBUS_MAX_SPIN_NS)
        return rbus__fail(
            -EINVAL, "rbus_subscribe: spin_ns %" PRId64 " above RBUS_MAX_SPIN_NS (%" PRId64 ")",
            o.spin_ns, RBUS_MAX_SPIN_NS);
    if (o.name && strnlen(o.name, 256) > 255) {
        char q[RBUS__QUOTE_CAP];
        return rbus__fail(-EINVAL, "rbus_subscribe: name %s longer than 255 bytes",
                          rbus__quote(q, o.name));
    }
    /* A bound below the largest payload would refuse some messages for
     * good, whatever the policy: refused here instead. */
    if (o.max_bytes && o.max_bytes < bus->cfg.max_payload)
        return rbus__fail(-EINVAL,
                          "rbus_subscribe: max_bytes %" PRIu64
                          " below the bus's max_payload (%" PRIu32
                          "): a message of max_payload could never be queued",
                          o.max_bytes, bus->cfg.max_payload);
    if (o.replay > RBUS_MAX_RETAIN)
        return rbus__fail(-EINVAL,
                          "rbus_subscribe: replay %" PRIu32 " above RBUS_MAX_RETAIN (%" PRIu32 ")",
                          o.replay, RBUS_MAX_RETAIN);
    /* Acquire: pairs with the release that set it (topic.c). */
    if (o.replay && !atomic_load_explicit(&bus->retains, memory_order_acquire))
        return rbus__fail_static(-EINVAL, "rbus_subscribe: replay on a bus without retained "
                                          "history (rbus_config.retain is 0 and no topic was "
                                          "opened with rbus_topic_opts.retain)");
    if (atomic_load_explicit(&bus->closing, memory_order_relaxed))
        return rbus__fail_static(-ESHUTDOWN, "rbus_subscribe: the bus is closed");

    uint32_t capacity = o.capacity ? o.capacity : bus->cfg.default_capacity;
    uint32_t size = ring_size_for(capacity);
    if ((o.high_watermark || o.low_watermark) && o.overflow != RBUS_BLOCK)
        return rbus__fail_static(-EINVAL, "rbus_subscribe: high_watermark and low_watermark "
                                          "are for RBUS_BLOCK subscriptions only");
    uint32_t high = o.high_watermark ? o.high_watermark : size;
    uint32_t low = o.low_watermark ? o.low_watermark : (high / 2 ? high / 2 : 1);
    if (high > size)
        return rbus__fail(-EINVAL,
                          "rbus_subscribe: high_watermark %" PRIu32
                          " above the effective capacity (%" PRIu32 ")",
                          high, size);
    if (low > high)
        return rbus__fail(-EINVAL,
                          "rbus_subscribe: low_watermark %" PRIu32 " above high_watermark %" PRIu32,
                          low, high);
    rbus_sub *s = sub_struct_get(bus);
    if (!s)
        return rbus__fail_static(-ENOMEM, "rbus_subscribe: out of memory for the subscription");
    s->bus = bus;
    atomic_init(&s->fd, -1);
    /* Line-aligned: ring.h spreads consecutive positions over lines. */
    s->ring.slots = rbus__zalloc_aligned(bus, (size_t)size * sizeof(struct rbus_ring_slot));
    s->pattern = rbus__strdup(bus, pattern);
    s->name = o.name ? rbus__strdup(bus, o.name) : NULL;
    if (!s->ring.slots || !s->pattern || (o.name && !s->name)) {
        if (!s->ring.slots)
            rbus__fail(-ENOMEM, "rbus_subscribe: out of memory for a ring of %" PRIu32 " slots",
                       size);
        else
            rbus__fail_static(-ENOMEM, "rbus_subscribe: out of memory for a copy of the "
                                       "pattern or name");
        sub_release_parts(s); /* the ring is empty: this only frees memory */
        sub_struct_put(bus, s);
        return -ENOMEM;
    }
    rbus__ring_init(&s->ring, s->ring.slots, size);
    s->capacity = size;
    s->overflow = o.overflow;
    s->block_timeout_ns = o.block_timeout_ns;
    s->spin_ns = o.spin_ns == 0 ? RBUS_DEFAULT_SPIN_NS : (o.spin_ns < 0 ? 0 : o.spin_ns);
    s->max_bytes = o.max_bytes;
    s->latency_sample = o.latency_sample;
    s->replay = o.replay;
    s->high_mark = o.overflow == RBUS_BLOCK ? high : UINT32_MAX;
    s->low_mark = o.overflow == RBUS_BLOCK ? low : 0;
    s->advised_ns = rbus__now_ns(); /* the first advisory's since_ns */
    atomic_init(&s->bytes, 0);

    pthread_mutex_lock(&bus->route_lock);
    pthread_mutex_lock(&bus->lock);
    /* Before the list update makes it visible to publishers: nothing may read
     * a subscription's id while it changes. On the bus's list, unlisted,
     * before routing: topic_open lists it the moment the update marks it. */
    s->id = bus->next_sub_id++;
    rc = atomic_load_explicit(&bus->closing, memory_order_relaxed) ? -ESHUTDOWN : 0;
    if (!rc) {
        s->bus_next = bus->subs;
        if (bus->subs)
            bus->subs->bus_prev = s;
        bus->subs = s;
    }
    pthread_mutex_unlock(&bus->lock);
    struct rbus_replay replay = {.want = o.replay};
    if (!rc && (rc = rbus__topics_update(bus, s, true, &replay)) != 0) {
        pthread_mutex_lock(&bus->lock);
        subs_unlink(bus, s);
        pthread_mutex_unlock(&bus->lock);
    }
    /* Under the routing lock: no close marks the subscription closed
     * while its first positions are being written. */
    if (!rc && replay.cap)
        rbus__replay_run(s, &replay);
    rbus__replay_free(bus, &replay);
    pthread_mutex_unlock(&bus->route_lock);
    if (rc) {
        rbus__fail_static(rc, rc == -ESHUTDOWN ? "rbus_subscribe: the bus is closed"
                                               : "rbus_subscribe: out of memory for the "
                                                 "subscription lists of its topics");
        sub_release_parts(s);
        sub_struct_put(bus, s);
        return rc;
    }
    /* Release: a call that finds `dying` clear sees the subscription
     * initialised (acquire in rbus__sub_enter's seq_cst load). */
    atomic_store_explicit(&s->dying, 0, memory_order_release);
    *out = s;
    return 0;
}

void rbus__sub_finish_close(rbus_sub *s)
{
    /* seq_cst, then an unconditional bump of the sequence: a receiver that
     * registered before the bump is woken; one that registers after it
     * reads CLOSED. */
    atomic_store_explicit(&s->state, RBUS_SUB_CLOSED, memory_order_seq_cst);
    rbus__event_broadcast(&s->msg_ev);
    if (atomic_load_explicit(&s->fd, memory_order_acquire) >= 0)
        fd_make_readable(s);
}

/* rbus_sub_close's work, for it and for rbus_unsubscribe. */
static void sub_close(rbus_sub *sub)
{
    rbus *bus = sub->bus;
    /* The routing lock, not bus->lock: the grace period below may take as
     * long as a preempted publisher's read section, and stats, Prometheus
     * and topic_open must not wait for it. A concurrent rbus_sub_close of
     * the same handle waits here, so it does not return before the
     * subscription is CLOSED. */
    pthread_mutex_lock(&bus->route_lock);
    bool was_open = atomic_load_explicit(&sub->state, memory_order_relaxed) == RBUS_SUB_OPEN;
    /* CLOSING before the grace period that the list update waits for: a publisher
     * still walking an old list may enqueue until that period ends, and a
     * publisher waiting for room re-checks the state inside a read section,
     * so once it has passed no enqueue can reach the sub. */
    if (was_open)
        atomic_store_explicit(&sub->state, RBUS_SUB_CLOSING, memory_order_seq_cst);
    /* A bus close marks subscriptions CLOSED but leaves them listed, so
     * unlisting may still be due when the state says closed. */
    if (sub->listed)
        rbus__topics_update(bus, sub, false, NULL); /* removal cannot fail; unlists it */
    else if (was_open)
        rbus__synchronize(bus);
    if (was_open) {
        /* Waiting publishers: give up on it. */
        rbus__event_broadcast(&sub->room_ev);
        rbus__event_broadcast(&bus->room_ev);
        rbus__sub_finish_close(sub);
    }
    pthread_mutex_unlock(&bus->route_lock);
    /* It no longer holds its topics back. */
    if (was_open && sub->overflow == RBUS_BLOCK)
        rbus__ready_refresh_all(bus);
}

int rbus_sub_close(rbus_sub *sub)
{
    RBUS__PAUSE(RBUS_SUB_CLOSE);
    if (!sub)
        return rbus__fail_static(-EINVAL, "rbus_sub_close: sub is NULL");
    /* Unsubscribe has begun: it closes the subscription itself. */
    if (!rbus__sub_enter(sub))
        return 0;
    sub_close(sub);
    rbus__sub_leave(sub);
    return 0;
}

int rbus_unsubscribe(rbus_sub *sub)
{
    RBUS__PAUSE(RBUS_UNSUBSCRIBE);
    if (!sub)
        return rbus__fail_static(-EINVAL, "rbus_unsubscribe: sub is NULL");
    /* The claim that a dispatcher's start also makes (acq_rel both): of an
     * rbus_dispatch_start and an rbus_unsubscribe that race, exactly one
     * wins; a second unsubscribe finds the handle claimed. */
    void *seen = NULL;
    if (!atomic_compare_exchange_strong_explicit(&sub->dispatcher, &seen, RBUS__UNSUBSCRIBING,
                                                 memory_order_acq_rel, memory_order_acquire))
        return seen == RBUS__UNSUBSCRIBING
                   ? rbus__fail_static(-EINVAL, "rbus_unsubscribe: rbus_unsubscribe of the "
                                                "subscription has already begun")
                   : rbus__fail_static(-EBUSY, "rbus_unsubscribe: a dispatcher runs on the "
                                               "subscription (rbus_dispatch_stop it first)");
    /* From here no call enters (rbus__sub_enter's Dekker pair). */
    atomic_store_explicit(&sub->dying, 1, memory_order_seq_cst);
    sub_close(sub);
    /* Receivers blocked on it were woken by the close and return
     * -ESHUTDOWN; publishers that pinned it were woken and drop it; other
     * calls are short. A sleeping poll: no core burnt, no extra word on
     * their fast paths. seq_cst loads: our half of the Dekker pair. */
    struct timespec pause = {0, 20000};
    while (atomic_load_explicit(&sub->pins, memory_order_seq_cst) ||
           atomic_load_explicit(&sub->callers, memory_order_seq_cst)) {
        rbus__event_broadcast(&sub->msg_ev);
        nanosleep(&pause, NULL);
    }
    /* Acquire: pairs with the release decrements (rbus__sub_leave, pins),
     * so every call's last touch of the parts happens before we free them. */
    atomic_thread_fence(memory_order_acquire);
    rbus *bus = sub->bus;
    pthread_mutex_lock(&bus->lock);
    subs_unlink(bus, sub);
    pthread_mutex_unlock(&bus->lock);
    sub_release_parts(sub);
    sub_struct_put(bus, sub);
    return 0;
}

uint64_t rbus_sub_id(const rbus_sub *sub)
{
    RBUS__PAUSE(RBUS_SUB_ID);
    rbus_sub *s = (rbus_sub *)sub;
    if (!s || !rbus__sub_enter(s))
        return 0;
    uint64_t id = s->id;
    rbus__sub_leave(s);
    return id;
}

int rbus_sub_fd(rbus_sub *sub)
{
    RBUS__PAUSE(RBUS_SUB_FD);
    if (!sub)
        return rbus__fail_static(-EINVAL, "rbus_sub_fd: sub is NULL");
    /* A call in flight, like a receive: rbus_unsubscribe waits for it
     * before closing the fd. */
    if (!rbus__sub_enter(sub))
        return rbus__fail_static(-ESHUTDOWN,
                                 "rbus_sub_fd: rbus_unsubscribe of the subscription has begun");
    int fd = atomic_load_explicit(&sub->fd, memory_order_acquire);
    if (fd >= 0) {
        rbus__sub_leave(sub);
        return fd;
    }
    pthread_mutex_lock(&sub->fd_lock);
    fd = atomic_load_explicit(&sub->fd, memory_order_relaxed);
    if (fd < 0) {
        fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) {
            int err = -errno;
            pthread_mutex_unlock(&sub->fd_lock);
            rbus__sub_leave(sub);
            return rbus__fail(err, "rbus_sub_fd: eventfd failed: %s", rbus_strerror(err));
        }
        /* Publish the fd first (release), then arm (seq_cst), then look
         * once: a publisher that sees fd_armed == 1 also sees the fd, and a
         * message queued before (or while) we armed makes it readable. */
        atomic_store_explicit(&sub->fd, fd, memory_order_release);
        atomic_store_explicit(&sub->fd_armed, 1, memory_order_seq_cst);
        if (ring_reserved(sub) ||
            atomic_load_explicit(&sub->state, memory_order_acquire) != RBUS_SUB_OPEN)
            fd_make_readable(sub);
    }
    pthread_mutex_unlock(&sub->fd_lock);
    rbus__sub_leave(sub);
    return fd;
}
