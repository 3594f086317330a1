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
 * its own mutex, table (open addressing, linear probing, backward-shift
 * deletion) and FIFO of its keys in ticket order. Publishers of different
 * keys rarely meet on one lock; publishers of the same key always do.
 *
 * Why this is race-free for the exactly-once rule: the check and the
 * insert of a key happen under the mutex of the key's shard, and every
 * publish of that key takes that same mutex. The first to get it finds the
 * key absent (or no longer remembered), takes a ticket and inserts it before
 * unlocking; every later one finds it remembered. Taking the ticket (an
 * atomic increment) inside the shard lock also keeps each shard's tickets in
 * increasing order, which its FIFO relies on. Reading `accepted` for the
 * "still remembered" test is a single atomic load: a publish that reads it
 * just before another key's acceptance pushes ours out linearises before
 * that acceptance, so the rule holds at every instant.
 *
 * Memory. Each shard forgets (deletes) its own keys once their tickets fall
 * out of the window, oldest first from its FIFO, whenever it accepts a new
 * key. A shard holds its live keys plus keys that aged out since its last
 * acceptance. Tables start at twice the expected share (dedup_keys / shards)
 * and double only when a shard is three-quarters full of *live* keys, which
 * a seeded 128-bit hash makes vanishingly unlikely in steady state: no
 * allocation per keyed publish. The false-duplicate probability of comparing
 * hashes: for k remembered keys, a new key collides with probability about
 * k / 2^128 (for k = 4096, about 1.2e-35).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define RBUS_DEDUP_SHARDS 16u

struct dedup_entry {
    uint64_t lo, hi;  /* the key's hash */
    uint64_t ticket;  /* 0 = empty slot */
    int64_t time_ns;  /* when it was accepted */
};

struct dedup_fifo_item {
    uint64_t lo, hi;
    uint64_t ticket;
};

struct dedup_shard {
    pthread_mutex_t lock;
    struct dedup_entry *table; /* cap slots */
    struct dedup_fifo_item *fifo; /* cap items, ring in ticket order */
    uint32_t cap;   /* power of two */
    uint32_t count; /* items in the FIFO (>= occupied table slots: a key
                       accepted anew keeps its old, expired item too) */
    uint32_t fifo_head;
    char pad[RBUS_CACHELINE];
};

struct rbus_dedup {
    _Atomic uint64_t accepted; /* the latest key ticket */
    uint64_t keys;             /* dedup_keys */
    int64_t window_ns;         /* 0 = no time bound */
    struct dedup_shard shards[RBUS_DEDUP_SHARDS];
};

static void shard_free(rbus *bus, struct dedup_shard *sh)
{
    rbus__free(bus, sh->table);
    rbus__free(bus, sh->fifo);
}

static int shard_alloc(rbus *bus, struct dedup_shard *sh, uint32_t cap)
{
    sh->table = rbus__zalloc(bus, cap * sizeof *sh->table);
    sh->fifo = rbus__alloc(bus, cap * sizeof *sh->fifo);
    if (!sh->table || !sh->fifo) {
        shard_free(bus, sh);
        sh->table = NULL;
        sh->fifo = NULL;
        return -ENOMEM;
    }
    sh->cap = cap;
    sh->count = 0;
    sh->fifo_head = 0;
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
                pthread_mutex_destroy(&d->shards[i].lock);
            }
            rbus__free_aligned(bus, d);
            return NULL;
        }
        pthread_mutex_init(&d->shards[i].lock, NULL);
    }
    return d;
}

void rbus__dedup_free(rbus *bus, struct rbus_dedup *d)
{
    if (!d)
        return;
    for (unsigned i = 0; i < RBUS_DEDUP_SHARDS; i++) {
        shard_free(bus, &d->shards[i]);
        pthread_mutex_destroy(&d->shards[i].lock);
    }
    rbus__free_aligned(bus, d);
}

/* ------------------------------------------------------- shard table */

static uint32_t slot_of(const struct dedup_shard *sh, uint64_t lo)
{
    /* The shard index used the top bits of hi; the slot uses lo. */
    return (uint32_t)lo & (sh->cap - 1);
}

static struct dedup_entry *table_find(struct dedup_shard *sh, uint64_t lo, uint64_t hi)
{
    for (uint32_t i = slot_of(sh, lo);; i = (i + 1) & (sh->cap - 1)) {
        struct dedup_entry *e = &sh->table[i];
        if (!e->ticket)
            return NULL;
        if (e->lo == lo && e->hi == hi)
            return e;
    }
}

static void table_put(struct dedup_shard *sh, const struct dedup_entry *in)
{
    uint32_t i = slot_of(sh, in->lo);
    while (sh->table[i].ticket)
        i = (i + 1) & (sh->cap - 1);
    sh->table[i] = *in;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void table_delete(struct dedup_shard *sh, struct dedup_entry *e)
{
    uint32_t mask = sh->cap - 1;
    uint32_t hole = (uint32_t)(e - sh->table);
    uint32_t i = hole;
    for (;;) {
        i = (i + 1) & mask;
        struct dedup_entry *n = &sh->table[i];
        if (!n->ticket)
            break;
        uint32_t home = slot_of(sh, n->lo);
        /* n may move into the hole unless its home lies cyclically in
         * (hole, i]. */
        bool stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!stays) {
            sh->table[hole] = *n;
            hole = i;
        }
    }
    sh->table[hole].ticket = 0;
}

/* Forgets the shard's keys whose tickets left the window (oldest first). */
static void shard_expire(struct dedup_shard *sh, uint64_t oldest_live)
{
    while (sh->count) {
        struct dedup_fifo_item *it = &sh->fifo[sh->fifo_head];
        if (it->ticket >= oldest_live)
            break;
        struct dedup_entry *e = table_find(sh, it->lo, it->hi);
        /* A key re-accepted later carries a newer ticket and a newer FIFO
         * item; only the entry of this acceptance goes. */
        if (e && e->ticket == it->ticket)
            table_delete(sh, e);
        sh->fifo_head = (sh->fifo_head + 1) & (sh->cap - 1);
        sh->count--;
    }
}

/* Doubles a shard that is three-quarters full of live keys. */
static int shard_grow(rbus *bus, struct dedup_shard *sh)
{
    struct dedup_shard bigger = {0};
    if (shard_alloc(bus, &bigger, sh->cap * 2) != 0)
        return -ENOMEM;
    for (uint32_t k = 0; k < sh->count; k++) {
        struct dedup_fifo_item *it = &sh->fifo[(sh->fifo_head + k) & (sh->cap - 1)];
        bigger.fifo[k] = *it;
        struct dedup_entry *e = table_find(sh, it->lo, it->hi);
        if (e && e->ticket == it->ticket)
            table_put(&bigger, e);
    }
    bigger.count = sh->count;
    shard_free(bus, sh);
    sh->table = bigger.table;
    sh->fifo = bigger.fifo;
    sh->cap = bigger.cap;
    sh->fifo_head = 0;
    return 0;
}

/* ------------------------------------------------------------- check */

int rbus__dedup_accept(rbus_topic *t, const void *key, size_t len, int64_t now_ns)
{
    rbus *bus = t->bus;
    struct rbus_dedup *d = atomic_load_explicit(&t->dedup, memory_order_acquire);
    if (RBUS_UNLIKELY(!d)) {
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

    XXH128_hash_t h = XXH3_128bits_withSeed(key, len, bus->dedup_seed);
    struct dedup_shard *sh = &d->shards[h.high64 >> 60 & (RBUS_DEDUP_SHARDS - 1)];
    int rc = 0;
    pthread_mutex_lock(&sh->lock);
    /* Relaxed is enough: tickets are taken inside shard locks; for keys of
     * other shards, any value between our lock and unlock is a valid
     * linearisation point (see the header comment). */
    uint64_t accepted = atomic_load_explicit(&d->accepted, memory_order_relaxed);
    uint64_t oldest_live = accepted >= d->keys ? accepted - d->keys + 1 : 1;
    struct dedup_entry *e = table_find(sh, h.low64, h.high64);
    if (e && e->ticket >= oldest_live &&
        (d->window_ns == 0 || now_ns - e->time_ns < d->window_ns)) {
        rc = RBUS_DUPLICATE;
        goto out;
    }
    /* A key found here is remembered no longer (stale); one not found stays
     * absent whatever expiry and growth do below. */
    bool present = e != NULL;
    shard_expire(sh, oldest_live);
    /* Every item left is live now; keep the shard under 3/4 full so probe
     * chains stay short and the FIFO never overflows. */
    if ((sh->count + 1) * 4 > sh->cap * 3 && shard_grow(bus, sh) != 0) {
        rc = -ENOMEM; /* the key is not recorded */
        goto out;
    }
    uint64_t ticket = atomic_fetch_add_explicit(&d->accepted, 1, memory_order_relaxed) + 1;
    /* Expiry and growth move (or delete) entries: look a stale key up again. */
    e = present ? table_find(sh, h.low64, h.high64) : NULL;
    if (e) {
        /* Remembered no longer (aged out by count or time): accepted anew. */
        e->ticket = ticket;
        e->time_ns = now_ns;
    } else {
        struct dedup_entry fresh = {h.low64, h.high64, ticket, now_ns};
        table_put(sh, &fresh);
    }
    sh->fifo[(sh->fifo_head + sh->count) & (sh->cap - 1)] =
        (struct dedup_fifo_item){h.low64, h.high64, ticket};
    sh->count++;
out:
    pthread_mutex_unlock(&sh->lock);
    return rc;
}
