/*
 * impl_ck.c - the raw ck_ring peers of `ringbus-bench peers`: raw-ck-ring,
 * the busy-polling floor, and raw-ck-yield, the same ring with
 * sched_yield() instead of a pause (the floor that survives more threads
 * than cores); and for 1->1 the floor under those, single-producer
 * single-consumer rings: raw-spsc-ptr (pointers to preallocated slots)
 * and raw-spsc-inline (the 64-byte message copied into the ring's slot).
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
    bool spsc;          /* raw-spsc-ptr: the single-producer, single-consumer calls */
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
                   !(k->spsc ? ck_ring_enqueue_spsc(&q->ring, q->buf, m)
                             : ck_ring_enqueue_mpmc(&q->ring, q->buf, m))) {
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
        while (!(k->spsc ? ck_ring_dequeue_spsc(&q->ring, q->buf, &m)
                         : ck_ring_dequeue_mpmc(&q->ring, q->buf, &m))) {
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

/* Variants: 0 MPMC busy-poll, 1 MPMC sched_yield, 2 SPSC (pointers). */
static uint64_t ck_run(struct run *r, const char *who, int variant)
{
    struct ck_peer k;
    memset(&k, 0, sizeof k);
    k.yield = variant == 1;
    k.spsc = variant == 2;
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

/* ------------------------------------- raw SPSC of inline 64-byte slots */

/* The message itself in the ring's slot: one copy in, one copy out, no
 * pointer chased; the floor for handing 64 bytes to another core. */
struct inline_msg {
    unsigned char b[64];
};
CK_RING_PROTOTYPE(inline_msg, inline_msg)

struct inl_peer {
    ck_ring_t ring;
    struct inline_msg *buf;
    unsigned int bound;
};

static void *inl_pub(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct inl_peer *k = r->impl;
    struct inline_msg m;
    memset(&m, 0, sizeof m);
    uint64_t last = 0;
    run_pub_started(r, t->id);
    for (uint64_t c = 0; c < r->messages; c++) {
        run_stamp(r, m.b, t->id, c, &last);
        while (ck_ring_size(&k->ring) >= k->bound ||
               !ck_ring_enqueue_spsc_inline_msg(&k->ring, k->buf, &m)) {
            ck_pr_stall();
            if (aborted(r))
                return NULL;
        }
        PEER_TSAN_RELEASE(&k->ring); /* the slot's bytes, to the receiver */
    }
    return NULL;
}

static void *inl_rx(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct inl_peer *k = r->impl;
    struct bench_verify v;
    memset(&v, 0, sizeof v);
    uint64_t want = r->messages;
    run_wait_start(r);
    while (v.received < want) {
        struct inline_msg m;
        PEER_TSAN_ACQUIRE(&k->ring);
        while (!ck_ring_dequeue_spsc_inline_msg(&k->ring, k->buf, &m)) {
            ck_pr_stall();
            if (aborted(r))
                return NULL;
            PEER_TSAN_ACQUIRE(&k->ring);
        }
        rx_one(r, &v, m.b);
    }
    run_rx_done(r, t->id, &v);
    return NULL;
}

static uint64_t inl_run(struct run *r, const char *who, int variant)
{
    (void)variant;
    struct inl_peer k;
    memset(&k, 0, sizeof k);
    unsigned int size = 2;
    while (size < r->capacity + 1u)
        size <<= 1;
    k.bound = r->capacity;
    ck_ring_init(&k.ring, size);
    k.buf = zalloc_aligned(size * sizeof *k.buf);
    uint64_t elapsed = 0;
    if (k.buf) {
        r->impl = &k;
        elapsed = run_threads(r, who, inl_pub, inl_rx, ck_wake);
    } else {
        fprintf(stderr, "ringbus-bench: %s: out of memory\n", who);
    }
    free(k.buf);
    return elapsed;
}

/* Single producer, single consumer, and (inline) a message that fits. */
static bool spsc_ok(const struct scenario *sc, bool inline_slots)
{
    return scenario_ok(sc) && sc->publishers == 1 && sc->subscribers == 1 &&
           (!inline_slots || sc->payload <= sizeof(struct inline_msg));
}

static double spsc_ptr_throughput(const struct scenario *sc)
{
    return spsc_ok(sc, false) ? peer_throughput(sc, ck_run, 2, "raw-spsc-ptr") : -1;
}

static double spsc_inline_throughput(const struct scenario *sc)
{
    return spsc_ok(sc, true) ? peer_throughput(sc, inl_run, 0, "raw-spsc-inline") : -1;
}

const struct bench_impl bench_impl_spsc_ptr = {
    .name = "raw-spsc-ptr",
    .throughput = spsc_ptr_throughput,
    .latency = NULL,
    .wait_strategy = "ck_ring SPSC of pointers to preallocated slots (1->1 only); "
                     "busy-poll (ck_pr_stall)",
};

const struct bench_impl bench_impl_spsc_inline = {
    .name = "raw-spsc-inline",
    .throughput = spsc_inline_throughput,
    .latency = NULL,
    .wait_strategy = "ck_ring SPSC whose slots hold the 64-byte message itself (1->1, "
                     "payload <= 64 B only); busy-poll (ck_pr_stall)",
};

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
