/*
 * dedup.c - the per-topic idempotency window's memory and hashing; the
 * algorithm, without a lock, is window.h
 * (docs/design.md#idempotency-keys-windowh-dedupc).
 */
#include "internal.h"
#include "window.h"

#include <stdlib.h>
#include <string.h>
/* Header-only: the hash of a short key inlines to a few dozen instructions. */
#define XXH_INLINE_ALL
#include <xxhash.h>

/* Slots per remembered key: at most a quarter are remembered, so a key's
 * home line nearly always has a reusable slot. */
#define SLOTS_PER_KEY 4u
/* The smallest table: spare slots for many publishers at once even when
 * dedup_keys is 1. */
#define MIN_SLOTS 256u

/* ------------------------------------------------------------ memory */

static size_t dedup_size(uint32_t slots)
{
    return sizeof(struct rbus_dedup) +
           (size_t)slots * (sizeof(uint64_t) + sizeof(struct rbus_dedup_ident) + sizeof(int64_t)) +
           slots / LINE_SLOTS * sizeof(uint32_t);
}

struct rbus_dedup *rbus__dedup_new(rbus *bus)
{
    uint64_t want = (uint64_t)bus->cfg.dedup_keys * SLOTS_PER_KEY;
    uint32_t slots = MIN_SLOTS;
    while (slots < want)
        slots <<= 1; /* dedup_keys <= 2^22: at most 2^24 slots */
    /* One zeroed block: every slot FREE, nothing spilled, no ticket yet. */
    struct rbus_dedup *d = rbus__zalloc_aligned(bus, dedup_size(slots));
    if (!d)
        return NULL;
    d->keys = bus->cfg.dedup_keys;
    d->window_ns = (int64_t)bus->cfg.dedup_window_ns;
    d->mask = slots - 1;
    char *p = (char *)(d + 1);
    d->state = (_Atomic uint64_t *)p;
    p += (size_t)slots * sizeof *d->state;
    d->ident = (struct rbus_dedup_ident *)p;
    p += (size_t)slots * sizeof *d->ident;
    d->time_ns = (_Atomic int64_t *)p;
    p += (size_t)slots * sizeof *d->time_ns;
    d->spill = (_Atomic uint32_t *)p;
    return d;
}

void rbus__dedup_free(rbus *bus, struct rbus_dedup *d)
{
    if (d)
        rbus__free_aligned(bus, d);
}

int rbus__dedup_prepare(rbus_topic *t)
{
    rbus *bus = t->bus;
    /* Acquire: pairs with the release store below. */
    if (atomic_load_explicit(&t->dedup, memory_order_acquire))
        return 0;
    /* One builder per bus at a time, so racing first publishers never
     * each allocate a window: the others wait for it, once per topic. */
    int rc = 0;
    pthread_mutex_lock(&bus->dedup_lock);
    if (!atomic_load_explicit(&t->dedup, memory_order_relaxed)) {
        RBUS__PAUSE(DEDUP_BUILDING);
        struct rbus_dedup *d = rbus__dedup_new(bus);
        if (d)
            /* Release: the zeroed window is complete for a publisher that
             * loads the pointer (acquire) without the mutex. */
            atomic_store_explicit(&t->dedup, d, memory_order_release);
        else
            rc = -ENOMEM;
    }
    pthread_mutex_unlock(&bus->dedup_lock);
    return rc;
}

/* ------------------------------------------------------------- check */

uint64_t rbus__dedup_hash(rbus_topic *t, const void *key, size_t len, uint64_t *hi)
{
    XXH128_hash_t h128 = XXH3_128bits_withSeed(key, len, t->bus->dedup_seed);
    *hi = h128.high64;
    /* Acquire, as in rbus__dedup_prepare. */
    struct rbus_dedup *d = atomic_load_explicit(&t->dedup, memory_order_acquire);
    if (RBUS__LIKELY(d != NULL)) {
        /* The lines the check reads and, for a new key, writes (the slot
         * is usually the home or next to it), seldom in L1 (a window of
         * 4096 keys is 520 KiB), load while the message is built. For
         * writing: a locked instruction waits for every store before it,
         * and an identity store that misses would make the CAS on
         * `accepted` wait for that miss. */
        uint32_t home = (uint32_t)h128.low64 & d->mask;
        __builtin_prefetch(&d->state[home], 1, 3);
        __builtin_prefetch(&d->spill[home / LINE_SLOTS], 0, 3);
        __builtin_prefetch(&d->ident[home], 1, 3);
    }
    return h128.low64;
}

int rbus__dedup_accept(rbus_topic *t, uint64_t lo, uint64_t hi, int64_t now_ns)
{
    /* Acquire, as in rbus__dedup_prepare. */
    struct rbus_dedup *d = atomic_load_explicit(&t->dedup, memory_order_acquire);
    if (RBUS__UNLIKELY(!d)) {
        int rc = rbus__dedup_prepare(t);
        if (rc != 0)
            return rc;
        d = atomic_load_explicit(&t->dedup, memory_order_acquire);
    }
    uint64_t ticket;
    return rbus__window_accept(d, lo, hi, now_ns, &ticket);
}
