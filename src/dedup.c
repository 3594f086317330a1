/*
 * dedup.c - the per-topic idempotency window.
 *
 * Rule (contract): a key is a duplicate iff it is among the last
 * `dedup_keys` keys accepted on the topic (forgotten oldest first) and, when
 * dedup_window_ns > 0, was accepted less than that long ago. A duplicate
 * never refreshes a key. Among concurrent publishes of one key exactly one
 * is accepted.
 *
 * Structure. Every accepted key takes the topic's next key ticket (1, 2,
 * ...). A key accepted with ticket t is remembered while
 *     t > accepted - dedup_keys   (and its age < the window)
 * where `accepted` is the latest ticket: that is exactly "among the last
 * dedup_keys accepted", oldest forgotten first, with no per-key work when
 * a key ages out. Keys are compared by their 128-bit XXH3 hash (seeded per
 * bus), so the table stores 16 bytes per key whatever the key's length.
 *
 * Shards. Keys are spread over RBUS_DEDUP_SHARDS shards by hash, each with
 * its own lock, table (open addressing, linear probing, backward-shift
 * deletion) and FIFO of its keys in ticket order. Publishers of different
 * keys rarely meet on one lock; publishers of the same key always do.
 *
 * Why this is race-free for the exactly-once rule: the check and the
 * insert of a key happen under the lock of the key's shard, and every
 * publish of that key takes that same lock. The first to get it finds the
 * key absent (or no longer remembered), takes a ticket and inserts it before
 * unlocking; every later one finds it remembered. Taking the ticket (an
 * atomic increment) inside the shard lock also keeps each shard's tickets in
 * increasing order, which its FIFO relies on. Reading `accepted` for the
 * "still remembered" test is a single atomic load: a publish that reads it
 * just before another key's acceptance pushes ours out linearises before
 * that acceptance, so the rule holds at every instant.
 *
 * Memory. Each shard forgets (deletes) its own keys once their tickets fall
 * out of the window, oldest first from its FIFO, in batches (see
 * expire_slack): a shard holds its live keys plus those that aged out
 * since its last batch, about cap/16. FIFOs start at twice the expected
 * share (dedup_keys / shards),
 * tables at RBUS_DEDUP_SPREAD times that, and both double only when a shard
 * is three-quarters full of *live* keys, which a seeded 128-bit hash makes
 * vanishingly unlikely in steady state: no allocation per keyed publish.
 * The false-duplicate probability of comparing hashes: for k remembered
 * keys, a new key collides with probability about k / 2^128 (for k = 4096,
 * about 1.2e-35).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
/* Header-only: the hash of a short key inlines to a few dozen instructions. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#define RBUS_DEDUP_SHARDS 16u
/* Table slots per FIFO item: at most 3/16 of the slots are ever taken,
 * which keeps probe chains and backward shifts short (2 was slower, 8 no
 * faster: docs/benchmarks.md). */
#define RBUS_DEDUP_SPREAD 4u

/* What a shard remembers of one acceptance, in its FIFO (ticket order). */
struct dedup_item {
    uint64_t lo, hi;  /* the key's hash */
    uint64_t ticket;
    int64_t time_ns;  /* when it was accepted */
};

/*
 * A table slot is 8 bytes: the low 32 bits of the key's hash `lo` above
 * (1 + the FIFO position of the key's latest acceptance); 0 = empty.
 * Small slots are the point: the table of a topic at the default 4096 keys
 * is 256 KiB (16 shards x 2,048 slots), so a lookup and the deletion of an
 * aged-out key usually hit L2, where 32-byte entries (hash, ticket, time)
 * made each a miss. The
 * 32 hash bits give the home slot (cap <= 2^30) and filter candidates; a
 * candidate is confirmed against the full 128-bit hash in its FIFO item.
 */
typedef uint64_t dedup_slot;

struct dedup_shard {
    _Atomic uint32_t lock; /* shard_lock / shard_unlock */
    /* Copies of `table` and `slot_mask` for rbus__dedup_hash, which reads
     * them without the lock only to prefetch: relaxed, since a stale or
     * mismatched pair merely prefetches a useless line (a prefetch never
     * faults). Written where the table is (re)allocated, under the lock. */
    _Atomic uintptr_t hint_table;
    _Atomic uint32_t hint_mask;
    dedup_slot *table;       /* slots = RBUS_DEDUP_SPREAD * cap, linear probing */
    struct dedup_item *fifo; /* cap items, a ring in ticket order */
    uint32_t cap;            /* power of two */
    uint32_t slot_mask;      /* slots - 1 */
    uint32_t count;          /* items in the FIFO (>= occupied slots: a key
                                accepted anew keeps its old item too) */
    uint32_t fifo_head;
    uint32_t expire_at;      /* count at which aged-out keys are next deleted */
    char pad[RBUS__CACHELINE];
};

struct rbus_dedup {
    _Atomic uint64_t accepted; /* the latest key ticket */
    uint64_t keys;             /* dedup_keys */
    int64_t window_ns;         /* 0 = no time bound */
    struct dedup_shard shards[RBUS_DEDUP_SHARDS];
};

/*
 * Keys that aged out are deleted in batches, once a shard's FIFO has grown
 * by this many items since the last batch, rather than on every
 * acceptance. Deleting is only reclamation: whether a key is remembered is
 * decided by its ticket (and age), never by its presence, so a late
 * deletion changes no answer. Per acceptance, the number of keys to delete
 * is random (0, 1, 2, ...), and so was the branch that ended the loop;
 * each deletion's table line was a cache miss waited for alone. A batch
 * mispredicts once and its misses overlap. The slack costs about cap/16
 * stale items per shard, some 1.5 % of its table's slots.
 */
static inline uint32_t expire_slack(const struct dedup_shard *sh)
{
    return sh->cap / 16 ? sh->cap / 16 : 1;
}

static void shard_free(rbus *bus, struct dedup_shard *sh)
{
    rbus__free(bus, sh->table);
    rbus__free(bus, sh->fifo);
}

static int shard_alloc(rbus *bus, struct dedup_shard *sh, uint32_t cap)
{
    sh->table = rbus__zalloc(bus, (size_t)cap * RBUS_DEDUP_SPREAD * sizeof *sh->table);
    sh->fifo = rbus__alloc(bus, cap * sizeof *sh->fifo);
    if (!sh->table || !sh->fifo) {
        shard_free(bus, sh);
        sh->table = NULL;
        sh->fifo = NULL;
        return -ENOMEM;
    }
    sh->cap = cap;
    sh->slot_mask = cap * RBUS_DEDUP_SPREAD - 1;
    atomic_store_explicit(&sh->hint_table, (uintptr_t)sh->table, memory_order_relaxed);
    atomic_store_explicit(&sh->hint_mask, sh->slot_mask, memory_order_relaxed);
    sh->count = 0;
    sh->fifo_head = 0;
    sh->expire_at = expire_slack(sh);
    return 0;
}

static struct rbus_dedup *dedup_new(rbus *bus)
{
    struct rbus_dedup *d = rbus__zalloc_aligned(bus, sizeof *d);
    if (!d)
        return NULL;
    d->keys = bus->cfg.dedup_keys;
    d->window_ns = (int64_t)bus->cfg.dedup_window_ns;
    uint64_t share = d->keys / RBUS_DEDUP_SHARDS;
    uint32_t cap = 16;
    while (cap < 2 * share && cap < (UINT32_C(1) << 30))
        cap <<= 1;
    for (unsigned i = 0; i < RBUS_DEDUP_SHARDS; i++) {
        if (shard_alloc(bus, &d->shards[i], cap) != 0) {
            while (i--) {
                shard_free(bus, &d->shards[i]);
            }
            rbus__free_aligned(bus, d);
            return NULL;
        }
    }
    return d;
}

void rbus__dedup_free(rbus *bus, struct rbus_dedup *d)
{
    if (!d)
        return;
    for (unsigned i = 0; i < RBUS_DEDUP_SHARDS; i++) {
        shard_free(bus, &d->shards[i]);
    }
    rbus__free_aligned(bus, d);
}

/* ------------------------------------------------------- shard table */

static inline dedup_slot slot_make(uint64_t lo, uint32_t fifo_pos)
{
    return (uint64_t)(uint32_t)lo << 32 | (fifo_pos + 1u);
}

static inline uint32_t slot_pos(dedup_slot v)
{
    return (uint32_t)v - 1u;
}

static inline uint32_t slot_home(const struct dedup_shard *sh, dedup_slot v)
{
    /* The shard index used the top bits of hi; the home uses lo. */
    return (uint32_t)(v >> 32) & sh->slot_mask;
}

/* The slot holding the key hashed (lo, hi), or UINT32_MAX. */
static uint32_t table_find(const struct dedup_shard *sh, uint64_t lo, uint64_t hi)
{
    const uint32_t mask = sh->slot_mask, tag = (uint32_t)lo;
    for (uint32_t i = tag & mask;; i = (i + 1) & mask) {
        dedup_slot v = sh->table[i];
        if (!v)
            return UINT32_MAX;
        if ((uint32_t)(v >> 32) == tag) {
            const struct dedup_item *it = &sh->fifo[slot_pos(v)];
            if (it->lo == lo && it->hi == hi)
                return i;
        }
    }
}

static void table_put(struct dedup_shard *sh, dedup_slot v)
{
    const uint32_t mask = sh->slot_mask;
    uint32_t i = slot_home(sh, v);
    while (sh->table[i])
        i = (i + 1) & mask;
    sh->table[i] = v;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void table_delete(struct dedup_shard *sh, uint32_t hole)
{
    const uint32_t mask = sh->slot_mask;
    uint32_t i = hole;
    for (;;) {
        i = (i + 1) & mask;
        dedup_slot v = sh->table[i];
        if (!v)
            break;
        uint32_t home = slot_home(sh, v);
        /* v may move into the hole unless its home lies cyclically in
         * (hole, i]. */
        bool stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!stays) {
            sh->table[hole] = v;
            hole = i;
        }
    }
    sh->table[hole] = 0;
}

/* Forgets the shard's keys whose tickets left the window (oldest first). */
static void shard_expire(struct dedup_shard *sh, uint64_t oldest_live)
{
    const uint32_t mask = sh->slot_mask;
    while (sh->count) {
        const uint32_t pos = sh->fifo_head;
        const struct dedup_item *it = &sh->fifo[pos];
        if (it->ticket >= oldest_live)
            break;
        /* Only the slot naming this very item goes: a key accepted anew
         * since then names its newer item, and stays. */
        const dedup_slot want = slot_make(it->lo, pos);
        for (uint32_t i = slot_home(sh, want);; i = (i + 1) & mask) {
            dedup_slot v = sh->table[i];
            if (v == want)
                table_delete(sh, i);
            if (!v || v == want)
                break;
        }
        sh->fifo_head = (pos + 1) & (sh->cap - 1);
        sh->count--;
    }
    sh->expire_at = sh->count + expire_slack(sh);
}

/* Doubles a shard that is three-quarters full of live keys. */
static int shard_grow(rbus *bus, struct dedup_shard *sh)
{
    struct dedup_shard bigger = {0};
    if (shard_alloc(bus, &bigger, sh->cap * 2) != 0)
        return -ENOMEM;
    for (uint32_t k = 0; k < sh->count; k++) {
        uint32_t pos = (sh->fifo_head + k) & (sh->cap - 1);
        bigger.fifo[k] = sh->fifo[pos];
        uint32_t at = table_find(sh, sh->fifo[pos].lo, sh->fifo[pos].hi);
        /* Only the key's latest item gets a slot, as before. */
        if (at != UINT32_MAX && slot_pos(sh->table[at]) == pos)
            table_put(&bigger, slot_make(sh->fifo[pos].lo, k));
    }
    bigger.count = sh->count;
    shard_free(bus, sh);
    sh->table = bigger.table;
    sh->fifo = bigger.fifo;
    sh->cap = bigger.cap;
    sh->slot_mask = bigger.slot_mask;
    atomic_store_explicit(&sh->hint_table, (uintptr_t)sh->table, memory_order_relaxed);
    atomic_store_explicit(&sh->hint_mask, sh->slot_mask, memory_order_relaxed);
    sh->fifo_head = 0;
    sh->expire_at = sh->count + expire_slack(sh);
    return 0;
}

/* ------------------------------------------------------------- lock */

/*
 * A test-and-test-and-set lock rather than a mutex: a shard is held for a
 * few dozen nanoseconds, and releasing with a plain store saves the locked
 * instruction a futex mutex's unlock needs. Waiters spin on a read, pausing, and past a few dozen
 * rounds yield (rbus__spin_step), so a holder preempted on an
 * oversubscribed machine gets the core back instead of being starved.
 * Nothing inside blocks except the rare shard_grow, whose allocation is
 * what the user's allocator makes it.
 */
static void shard_lock(struct dedup_shard *sh)
{
    /* Acquire: everything the previous holder wrote under the lock
     * happens before what we read under it. */
    for (unsigned round = 0;; ) {
        if (!atomic_exchange_explicit(&sh->lock, 1, memory_order_acquire))
            return;
        while (atomic_load_explicit(&sh->lock, memory_order_relaxed))
            rbus__spin_step(round++);
    }
}

static void shard_unlock(struct dedup_shard *sh)
{
    /* Release: pairs with the acquire exchange of the next holder. */
    atomic_store_explicit(&sh->lock, 0, memory_order_release);
}

/* ------------------------------------------------------------- check */

static inline struct dedup_shard *shard_of(struct rbus_dedup *d, uint64_t hi)
{
    /* The top bits of hi pick the shard; the home slot uses lo. */
    return &d->shards[hi >> 60 & (RBUS_DEDUP_SHARDS - 1)];
}

uint64_t rbus__dedup_hash(rbus_topic *t, const void *key, size_t len, uint64_t *hi)
{
    XXH128_hash_t h128 = XXH3_128bits_withSeed(key, len, t->bus->dedup_seed);
    *hi = h128.high64;
    /* Acquire, as in rbus__dedup_accept: the window was initialised
     * (zeroed, hints stored) before it was published, and we read it. */
    struct rbus_dedup *d = atomic_load_explicit(&t->dedup, memory_order_acquire);
    if (RBUS__LIKELY(d != NULL)) {
        struct dedup_shard *sh = shard_of(d, h128.high64);
        uintptr_t table = atomic_load_explicit(&sh->hint_table, memory_order_relaxed);
        uint32_t mask = atomic_load_explicit(&sh->hint_mask, memory_order_relaxed);
        /* For writing: the lock is taken and the key's slot filled. A
         * table slot is a random line of 256 KiB (at 4096 keys), seldom in
         * L1. A publisher on another core that holds this shard's
         * lock loses the line one transfer early; with keys spread over
         * 16 shards that is rare. */
        __builtin_prefetch(sh, 1, 3);
        __builtin_prefetch(
            (const void *)(table + ((uint32_t)h128.low64 & mask) * sizeof(dedup_slot)), 1, 3);
    }
    return h128.low64;
}

int rbus__dedup_accept(rbus_topic *t, uint64_t lo, uint64_t hi, int64_t now_ns)
{
    rbus *bus = t->bus;
    struct rbus_dedup *d = atomic_load_explicit(&t->dedup, memory_order_acquire);
    if (RBUS__UNLIKELY(!d)) {
        /* First keyed publish on this topic. Racing first publishers each
         * build one; the CAS keeps exactly one (acq_rel: the winner's
         * initialisation is visible to every later loader). */
        struct rbus_dedup *mine = dedup_new(bus);
        if (!mine)
            return -ENOMEM;
        if (atomic_compare_exchange_strong_explicit(&t->dedup, &d, mine, memory_order_acq_rel,
                                                    memory_order_acquire))
            d = mine;
        else
            rbus__dedup_free(bus, mine);
    }

    struct dedup_shard *sh = shard_of(d, hi);
    int rc = 0;
    shard_lock(sh);
    RBUS__PAUSE(DEDUP_LOCKED);
    /* Relaxed is enough: tickets are taken inside shard locks; for keys of
     * other shards, any value between our lock and unlock is a valid
     * linearisation point (see the header comment). */
    uint64_t accepted = atomic_load_explicit(&d->accepted, memory_order_relaxed);
    uint64_t oldest_live = accepted >= d->keys ? accepted - d->keys + 1 : 1;
    uint32_t at = table_find(sh, lo, hi);
    if (at != UINT32_MAX) {
        const struct dedup_item *it = &sh->fifo[slot_pos(sh->table[at])];
        if (it->ticket >= oldest_live &&
            (d->window_ns == 0 || now_ns - it->time_ns < d->window_ns)) {
            rc = RBUS_DUPLICATE;
            goto out;
        }
    }
    /* A key found here is remembered no longer (stale); one not found stays
     * absent whatever expiry and growth do below. */
    bool present = at != UINT32_MAX;
    uint64_t ticket;
    if ((sh->count + 1) * 4 <= sh->cap * 3) {
        /* Room even before expiry, so nothing below can fail: take the
         * ticket first. A locked instruction waits for every store before it
         * to reach the cache, and expiry's stores (a table slot that is
         * often a cache miss) would make it wait for that miss; here only
         * the lock's own store precedes it. */
        ticket = atomic_fetch_add_explicit(&d->accepted, 1, memory_order_relaxed) + 1;
        if (sh->count >= sh->expire_at)
            shard_expire(sh, oldest_live);
    } else {
        shard_expire(sh, oldest_live);
        /* Every item left is live now; keep the shard under 3/4 full so
         * probe chains stay short and the FIFO never overflows. */
        if ((sh->count + 1) * 4 > sh->cap * 3 && shard_grow(bus, sh) != 0) {
            rc = -ENOMEM; /* the key is not recorded, and took no ticket */
            goto out;
        }
        ticket = atomic_fetch_add_explicit(&d->accepted, 1, memory_order_relaxed) + 1;
    }
    uint32_t pos = (sh->fifo_head + sh->count) & (sh->cap - 1);
    sh->fifo[pos] = (struct dedup_item){lo, hi, ticket, now_ns};
    sh->count++;
    /* Expiry and growth move (or delete) slots: look a stale key up again.
     * Found, it is accepted anew: its slot names the new item. */
    at = present ? table_find(sh, lo, hi) : UINT32_MAX;
    if (at != UINT32_MAX)
        sh->table[at] = slot_make(lo, pos);
    else
        table_put(sh, slot_make(lo, pos));
out:
    shard_unlock(sh);
    return rc;
}
