/*
 * impl_ck.c - the raw ck_ring peers of `ringbus-bench peers`: raw-ck-ring,
 * the busy-polling floor, and raw-ck-yield, the same ring with
 * sched_yield() instead of a pause (the floor that survives more threads
 * than cores).
 */
#define _GNU_SOURCE
#include "peers.h"

/* ThreadSanitizer cannot see ck_ring's ordering (ck_pr is volatile plus asm
 * fences): in TSan builds the raw ck peer tells it about its hand-offs. */
#if defined(RBUS_TSAN)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define PEER_TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#define PEER_TSAN_RELEASE(p) __tsan_release((void *)(p))
#else
#define PEER_TSAN_ACQUIRE(p) ((void)0)
#define PEER_TSAN_RELEASE(p) ((void)0)
#endif

#include <ck_pr.h>
#include <ck_ring.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------ raw ck_ring (the floor) */

/*
 * One ck_ring MPMC ring of pointers per receiver; every publisher owns an
 * array of S preallocated payload slots and writes message c into slot
 * c mod S, then enqueues the slot's pointer into every receiver's ring.
 *
 * Why reusing slot c mod S is safe with S = R + 2, R = the entries a ring
 * can hold (its mask): the publisher writes slot c only after its enqueue
 * of c - 1 succeeded in every ring; that enqueue saw the ring's consumer
 * head h > index(c - 1) - R. A receiver handles one message at a time, so
 * it has finished every ring index below h - 1, and this publisher's
 * message c - R - 2 sits at an index <= index(c - 1) - R - 1 < h - 1: it
 * is done with it in every ring. Message c - S = c - R - 2 is exactly the
 * one that used slot c mod S. The order "receiver finished reading the
 * slot" -> "its next dequeue moves the head" -> "the publisher read that
 * head" -> "the publisher rewrites the slot" is kept by a release fence in
 * the receiver after each message and an acquire fence in the publisher
 * after each enqueue (both free on x86).
 */
struct ck_q {
    ck_ring_t ring;
    ck_ring_buffer_t *buf;
};

struct ck_peer {
    struct ck_q *q;       /* [ns], 64-byte aligned each */
    size_t qstride;       /* bytes between rings */
    unsigned char *slots; /* [np][nslots][stride] */
    uint32_t nslots;
    size_t stride;
    unsigned int bound; /* = capacity */
    bool yield;         /* raw-ck-yield: sched_yield() instead of a pause */
};

/* A failed enqueue or dequeue: busy-poll (a pause), or give the core away. */
static inline void ck_idle(const struct ck_peer *k)
{
    if (k->yield)
        sched_yield();
    else
        ck_pr_stall();
}

static inline struct ck_q *ck_ring_of(struct ck_peer *k, int j)
{
    return (struct ck_q *)(void *)((char *)k->q + (size_t)j * k->qstride);
}

static void *ck_pub(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct ck_peer *k = r->impl;
    unsigned char *mine = k->slots + (size_t)t->id * k->nslots * k->stride;
    uint64_t last = 0;
    run_pub_started(r, t->id);
    for (uint64_t c = 0; c < r->messages; c++) {
        unsigned char *m = mine + (size_t)(c % k->nslots) * k->stride;
        PEER_TSAN_ACQUIRE(m); /* the receivers are done with this slot */
        bench_stamp(m, (uint64_t)t->id, c);
        if (r->pace_ns) {
            uint64_t now = pace(r, &last);
            memcpy(m + 16, &now, 8);
        }
        for (int j = 0; j < r->ns; j++) {
            struct ck_q *q = ck_ring_of(k, j);
            PEER_TSAN_RELEASE(m); /* hand-off through the ring */
            while (ck_ring_size(&q->ring) >= k->bound ||
                   !ck_ring_enqueue_mpmc(&q->ring, q->buf, m)) {
                ck_idle(k);
                if (aborted(r))
                    return NULL;
            }
        }
        atomic_thread_fence(memory_order_acquire);
    }
    return NULL;
}

static void *ck_rx(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct ck_peer *k = r->impl;
    struct ck_q *q = ck_ring_of(k, t->id);
    struct bench_verify v;
    memset(&v, 0, sizeof v);
    uint64_t want = r->messages * (uint64_t)r->np;
    run_wait_start(r);
    while (v.received < want) {
        void *m;
        while (!ck_ring_dequeue_mpmc(&q->ring, q->buf, &m)) {
            ck_idle(k);
            if (aborted(r))
                return NULL;
        }
        PEER_TSAN_ACQUIRE(m);
        rx_one(r, &v, m);
        atomic_thread_fence(memory_order_release);
        PEER_TSAN_RELEASE(m); /* the publisher may reuse the slot */
    }
    run_rx_done(r, t->id, &v);
    return NULL;
}

static void ck_wake(struct run *r)
{
    (void)r; /* everybody spins and checks the abort flag */
}

static uint64_t ck_run(struct run *r, const char *who, int yield)
{
    struct ck_peer k;
    memset(&k, 0, sizeof k);
    k.yield = yield != 0;
    unsigned int size = 2;
    while (size < r->capacity + 1u)
        size <<= 1;
    k.bound = r->capacity;
    k.nslots = size - 1 + 2; /* R + 2, see above */
    k.stride = (r->payload + 63) & ~(size_t)63;
    k.qstride = (sizeof(struct ck_q) + 63) & ~(size_t)63;
    k.q = zalloc_aligned(k.qstride * (size_t)r->ns);
    k.slots = zalloc_aligned((size_t)r->np * k.nslots * k.stride);
    bool ok = k.q && k.slots;
    for (int j = 0; ok && j < r->ns; j++) {
        struct ck_q *q = ck_ring_of(&k, j);
        ck_ring_init(&q->ring, size);
        q->buf = zalloc_aligned(size * sizeof *q->buf);
        ok = q->buf != NULL;
    }
    uint64_t elapsed = 0;
    if (ok) {
        r->impl = &k;
        elapsed = run_threads(r, who, ck_pub, ck_rx, ck_wake);
    } else {
        fprintf(stderr, "ringbus-bench: %s: out of memory\n", who);
    }
    for (int j = 0; k.q && j < r->ns; j++)
        free(ck_ring_of(&k, j)->buf);
    free(k.q);
    free(k.slots);
    return elapsed;
}

static double ck_throughput(const struct scenario *sc)
{
    return scenario_ok(sc) ? peer_throughput(sc, ck_run, 0, "raw-ck-ring") : -1;
}

static double ck_yield_throughput(const struct scenario *sc)
{
    return scenario_ok(sc) ? peer_throughput(sc, ck_run, 1, "raw-ck-yield") : -1;
}

static int ck_latency(const struct latency_run *lr, uint64_t *lat)
{
    /* Always a spinning receiver: raw ck has no blocking receive. */
    return peer_latency(lr, ck_run, 0, "raw-ck-ring latency", true, lat);
}

const struct bench_impl bench_impl_ck = {
    .name = "raw-ck-ring",
    .throughput = ck_throughput,
    .latency = ck_latency,
    .wait_strategy = "ck_ring MPMC of pointers to preallocated slots, one ring per "
                     "receiver; publisher and receivers busy-poll (ck_pr_stall), never sleep",
};

/* An extra floor: the same ring when its users call sched_yield()
 * instead of spinning, which is what keeps raw ck usable when there are
 * more threads than cores (1->4 on 2 cores). Throughput only. */
const struct bench_impl bench_impl_ck_yield = {
    .name = "raw-ck-yield",
    .throughput = ck_yield_throughput,
    .latency = NULL,
    .wait_strategy = "the raw-ck-ring above, but publisher and receivers sched_yield() "
                     "after every failed enqueue/dequeue (throughput only)",
};
