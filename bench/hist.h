/*
 * hist.h - a fixed-size log-linear histogram of nanosecond values for
 * percentiles of streams too long to keep (every delivered message's age,
 * every publish's stall): 64 buckets per power of two, so a percentile is
 * within 1/64 (1.6%) of the value, and the maximum is kept exactly.
 */
#ifndef RBUS_BENCH_HIST_H
#define RBUS_BENCH_HIST_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
/* Values below HIST_SUB have a bucket each; above, 64 per power of two up
 * to 2^63. */
#define HIST_BUCKETS (HIST_SUB + (64 - HIST_SUB_BITS) * HIST_SUB)

struct hist {
    uint64_t n, max;
    uint64_t count[HIST_BUCKETS];
};

static inline void hist_clear(struct hist *h)
{
    memset(h, 0, sizeof *h);
}

static inline unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (unsigned)v;
    unsigned top = 63u - (unsigned)__builtin_clzll(v); /* >= HIST_SUB_BITS */
    unsigned shift = top - HIST_SUB_BITS;
    /* v >> shift is in [HIST_SUB, 2 * HIST_SUB). */
    return HIST_SUB + shift * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

/* The smallest value of bucket i. */
static inline uint64_t hist_floor(unsigned i)
{
    if (i < HIST_SUB)
        return i;
    unsigned shift = (i - HIST_SUB) / HIST_SUB;
    uint64_t mant = HIST_SUB + (i - HIST_SUB) % HIST_SUB;
    return mant << shift;
}

static inline void hist_add(struct hist *h, uint64_t v)
{
    h->count[hist_index(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static inline void hist_merge(struct hist *into, const struct hist *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->count[i] += from->count[i];
    into->n += from->n;
    if (from->max > into->max)
        into->max = from->max;
}

/* The p-th percentile (0..100): the middle of the bucket holding it,
 * never above the exact maximum; 0 for an empty histogram. */
static inline uint64_t hist_percentile(const struct hist *h, double p)
{
    if (!h->n)
        return 0;
    uint64_t rank = (uint64_t)ceil((double)h->n * p / 100.0); /* nearest rank */
    if (rank < 1)
        rank = 1;
    if (rank > h->n)
        rank = h->n;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->count[i];
        if (seen >= rank) {
            uint64_t lo = hist_floor(i);
            uint64_t hi = i + 1 < HIST_BUCKETS ? hist_floor(i + 1) : UINT64_MAX;
            uint64_t mid = lo + (hi - lo) / 2;
            return mid < h->max ? mid : h->max;
        }
    }
    return h->max;
}

#endif
