/*
 * peers.c - the peers ringbus is measured against, and `ringbus-bench
 * peers`: ringbus and every peer on the same lossless scenarios and the
 * same paced latency runs, in one run, repetitions interleaved.
 *
 * Fairness notes (docs/benchmarks.md quotes them)
 * -----------------------------------------------
 * - Same capacity everywhere. Every queue between a publisher and a
 *   receiver holds `capacity` messages (--capacity, default 1024):
 *     raw ck_ring: a ring of 2^k slots holds 2^k - 1 entries, so the ring
 *       has the smallest 2^k >= capacity + 1 slots and the publisher also
 *       refuses to enqueue while ck_ring_size() >= capacity (exact with one
 *       publisher; P publishers sharing a ring can pass the check at once,
 *       so with 2->1 it may briefly hold capacity + 1);
 *     ZeroMQ: an inproc pipe holds SNDHWM + RCVHWM messages, so the
 *       capacity is split: SNDHWM = capacity / 2 on the sending socket,
 *       RCVHWM = the rest on the receiving one (each at least 1, since 0
 *       means "no limit"). For PUSH/PULL with P publishers there are P
 *       pipes into the one PULL socket, so each pipe gets capacity / P,
 *       split the same way: the receiver holds `capacity` in all. ZeroMQ's
 *       HWM is not exact (the reader acknowledges in batches), so ZeroMQ
 *       may stall a little before its pipe is really full;
 *     GAsyncQueue (unbounded): the publisher checks the length under the
 *       queue's lock and yields while it is >= capacity;
 *     mutex + condvar ring: a ring of `capacity` slots per receiver.
 * - Lossless everywhere: ringbus uses the block policy, ZeroMQ PUB/SUB
 *   uses an XPUB socket with ZMQ_XPUB_NODROP = 1 (zmq_send blocks instead
 *   of dropping; a 100 ms send timeout only lets the bench notice an abort,
 *   EAGAIN is retried), PUSH blocks by design, the others block or spin
 *   when full. Every receiver verifies what it got (count, and order per
 *   publisher) with bench_verify_one, for every implementation, so nobody
 *   wins by losing messages; a failed verification fails the mode.
 * - Timing starts when every thread has passed the start barrier (the
 *   earliest publisher's first clock read after it) and ends when the last
 *   receiver has its last message. Setup is outside: ZeroMQ sockets are
 *   bound and connected before, and the XPUB socket has received every
 *   subscriber's subscription message (ZMQ_XPUB_VERBOSE = 1, so each of
 *   them arrives) before the barrier, so no message can be lost to the
 *   "slow joiner" race and no subscription handshake is timed.
 * - Fan-out: ringbus has one subscription per receiver; raw ck and the
 *   mutex ring have one ring per receiver, GAsyncQueue one queue per
 *   receiver; ZeroMQ PUB/SUB has one pipe per SUB socket. Payload copies:
 *   raw ck writes the payload once into a preallocated slot and enqueues
 *   its pointer into every ring (zero-copy, the floor); ZeroMQ copies it
 *   once into a zmq_msg that the pipes share (refcounted); GAsyncQueue
 *   mallocs one copy per published message shared by the receivers with an
 *   atomic refcount (the last receiver frees it); the mutex ring copies the
 *   payload into each receiver's ring under its lock (what hand-written
 *   code does).
 * - Who spins, who sleeps (throughput runs): raw ck publishers and
 *   receivers busy-poll (that is how raw ck_ring is used); ringbus
 *   receivers spin spin_ns then sleep (its default wait strategy); ZeroMQ
 *   receivers block in zmq_recv and publishers in zmq_send; GAsyncQueue
 *   receivers block in g_async_queue_pop and the publisher yields
 *   (sched_yield) while a queue is full; the mutex ring blocks on its
 *   condition variables both ways.
 * - Latency runs: one publisher, one receiver, 64-byte payloads, a message
 *   every pace_ns (busy-wait pacing in the publisher, the next send pace_ns
 *   after the previous one, so a preempted publisher never sends a burst);
 *   the publisher reads bench_now_ns() just before the send and carries it
 *   in the payload (bytes 16..23), the receiver subtracts it from its own
 *   clock read right after the receive. "spin" runs: ringbus uses its
 *   default wait strategy, the peers spin (ck busy-poll, zmq_recv with
 *   ZMQ_DONTWAIT in a loop, g_async_queue_try_pop in a loop, lock/check/
 *   unlock in a loop). "sleep" runs: ringbus spin_ns < 0, the peers their
 *   blocking receive (zmq_recv, g_async_queue_pop, pthread_cond_wait); raw
 *   ck has no blocking receive and is left out of them.
 * - 2 cores: 1->4 runs five threads on two cores. Spinning implementations
 *   (raw ck in particular) then burn time slices that a sleeping one gives
 *   away: a busy-polling publisher blocked on a full ring waits for the
 *   scheduler to run that ring's receiver, so raw-ck-ring moves about one
 *   ring's worth of messages per time slice (and collapses the same way in
 *   1->1 when other processes take a core). 1->4 is as much a test of the
 *   wait strategy as of the queue; the table's wait column says which
 *   strategy each implementation used. For a floor that survives
 *   oversubscription the bench also runs raw-ck-yield: the same ring and
 *   slots, with sched_yield() instead of a pause after every failed
 *   enqueue or dequeue; throughput only.
 * - Repetitions are interleaved (rep 1 of every implementation and
 *   scenario, then rep 2, ...) so a noisy phase of the machine hits
 *   everybody; the table shows the median with min-max, peers.csv every
 *   repetition.
 * - Message counts: by default 500000 per publisher for 1->1, 250000 per
 *   publisher for 2->1 and 200000 for 1->4; --messages N sets N for every
 *   scenario. GAsyncQueue fan-out is capped at 50000 either way (its
 *   receivers wake once per message, about 0.2 M/s on 2 cores), so each
 *   run takes a few seconds at most and a whole peers run stays within
 *   about three minutes on 2 cores. Rates are per second, so the counts
 *   may differ between implementations. Latency runs: 20000 rounds at
 *   10 us, 5000 at 100 us (fewer if --messages is smaller).
 */
#define _GNU_SOURCE
#include "bench.h"

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
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef RBUS_BENCH_HAVE_ZMQ
#include <zmq.h>
#endif
#ifdef RBUS_BENCH_HAVE_GLIB
#include <glib.h>
#endif

#define MAX_THREADS 64
#define LAT_PAYLOAD 64
#ifndef RUN_LIMIT_NS
#define RUN_LIMIT_NS (60ull * 1000000000ull) /* a run that takes longer failed */
#endif
#define MAX_REPS 64

/* ------------------------------------------------ the shared harness */

/*
 * One run of one peer: the workload, the start barrier, the receivers'
 * "done" count that the main thread waits on with a deadline, and the
 * results. The peers' thread functions only move messages; starting,
 * timing, verifying and aborting are here.
 */
struct run {
    int np, ns;
    size_t payload;
    uint64_t messages; /* per publisher (latency: rounds) */
    uint32_t capacity;
    uint64_t pace_ns;  /* latency runs only */
    bool spin_rx;      /* latency runs: spinning receiver */
    uint64_t *lat;     /* latency runs: lat[counter] */
    void *impl;        /* the peer's state */

    _Atomic int abort;
    pthread_barrier_t start;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    char why[160];
    uint64_t t_start[MAX_THREADS], t_done[MAX_THREADS];
    struct bench_verify verify[MAX_THREADS];
};

struct thr {
    struct run *run;
    int id;
};

static inline bool aborted(struct run *r)
{
    return atomic_load_explicit(&r->abort, memory_order_relaxed) != 0;
}

/* A thread that cannot go on: record why, stop everybody, wake main. */
static void run_fail(struct run *r, const char *why)
{
    pthread_mutex_lock(&r->mu);
    if (!r->why[0])
        snprintf(r->why, sizeof r->why, "%s", why);
    atomic_store(&r->abort, 1);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void run_wait_start(struct run *r)
{
    pthread_barrier_wait(&r->start);
}

static void run_pub_started(struct run *r, int id)
{
    run_wait_start(r);
    r->t_start[id] = bench_now_ns();
}

static void run_rx_done(struct run *r, int id, const struct bench_verify *v)
{
    r->t_done[id] = bench_now_ns();
    r->verify[id] = *v;
    pthread_mutex_lock(&r->mu);
    r->done++;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Latency runs: busy-wait until pace_ns after the previous send; returns
 * the clock read the message carries. */
static inline uint64_t pace(const struct run *r, uint64_t *last)
{
    uint64_t now;
    do
        now = bench_now_ns();
    while (now - *last < r->pace_ns);
    *last = now;
    return now;
}

/* Every received message: the latency sample (latency runs), then the
 * count/order check. */
static inline void rx_one(const struct run *r, struct bench_verify *v, const unsigned char *buf)
{
    if (r->lat) {
        uint64_t now = bench_now_ns(), sent, p, c;
        memcpy(&sent, buf + 16, 8);
        bench_unstamp(buf, &p, &c);
        if (c < r->messages)
            r->lat[c] = now - sent;
    }
    bench_verify_one(v, buf);
}

static void run_init(struct run *r, int np, int ns, size_t payload, uint64_t messages,
                     uint32_t capacity)
{
    memset(r, 0, sizeof *r);
    r->np = np;
    r->ns = ns;
    r->payload = payload;
    r->messages = messages;
    r->capacity = capacity;
    atomic_init(&r->abort, 0);
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
}

static void run_destroy(struct run *r)
{
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

/*
 * Starts ns receivers and np publishers, releases them together, waits for
 * every receiver (at most RUN_LIMIT_NS; then, or when a thread failed, it
 * aborts the run and calls wake() so that blocked threads return), joins
 * them and verifies every receiver. Returns the elapsed ns from the first
 * publisher's start to the last receiver's end, or 0 on any failure (the
 * reason on stderr, prefixed by `who`).
 */
static uint64_t run_threads(struct run *r, const char *who, void *(*pub)(void *),
                            void *(*rx)(void *), void (*wake)(struct run *))
{
    pthread_t th[2 * MAX_THREADS];
    struct thr args[2 * MAX_THREADS];
    int n = r->np + r->ns;
    pthread_barrier_init(&r->start, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++) {
        bool is_rx = i < r->ns;
        args[i] = (struct thr){.run = r, .id = is_rx ? i : i - r->ns};
        if (pthread_create(&th[i], NULL, is_rx ? rx : pub, &args[i]) != 0) {
            fprintf(stderr, "ringbus-bench: %s: cannot start a thread\n", who);
            exit(1); /* the barrier would never open */
        }
    }
    run_wait_start(r);

    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(RUN_LIMIT_NS / 1000000000u);
    pthread_mutex_lock(&r->mu);
    int wrc = 0;
    while (r->done < r->ns && !aborted(r) && wrc != ETIMEDOUT)
        wrc = pthread_cond_timedwait(&r->cv, &r->mu, &until);
    bool finished = r->done == r->ns && !aborted(r);
    if (!finished && !r->why[0])
        snprintf(r->why, sizeof r->why, "timed out after %llu s (a lost message?)",
                 (unsigned long long)(RUN_LIMIT_NS / 1000000000u));
    pthread_mutex_unlock(&r->mu);
    if (!finished) {
        atomic_store(&r->abort, 1);
        wake(r);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&r->start);
    if (!finished) {
        fprintf(stderr, "ringbus-bench: %s: %s\n", who, r->why);
        return 0;
    }

    uint64_t want = r->messages * (uint64_t)r->np;
    for (int i = 0; i < r->ns; i++) {
        const struct bench_verify *v = &r->verify[i];
        bool ok = !v->bad && v->received == want;
        for (int p = 0; p < r->np; p++)
            ok = ok && v->next[p] == r->messages;
        if (!ok) {
            fprintf(stderr,
                    "ringbus-bench: %s: VERIFICATION FAILED at receiver %d: %llu of %llu "
                    "messages%s\n",
                    who, i, (unsigned long long)v->received, (unsigned long long)want,
                    v->bad ? ", lost, duplicated or out of order" : "");
            return 0;
        }
    }
    uint64_t t0 = r->t_start[0], t1 = 0;
    for (int p = 1; p < r->np; p++)
        if (r->t_start[p] < t0)
            t0 = r->t_start[p];
    for (int i = 0; i < r->ns; i++)
        if (r->t_done[i] > t1)
            t1 = r->t_done[i];
    return t1 > t0 ? t1 - t0 : 1;
}

static double rate_of(const struct run *r, uint64_t elapsed)
{
    if (!elapsed)
        return -1;
    return (double)(r->messages * (uint64_t)r->np) * 1e9 / (double)elapsed;
}

static bool scenario_ok(const struct scenario *sc)
{
    return sc->publishers >= 1 && sc->publishers <= MAX_THREADS && sc->subscribers >= 1 &&
           sc->subscribers <= MAX_THREADS && sc->payload >= 16 && sc->messages >= 1 &&
           sc->capacity >= 1;
}

static void *zalloc_aligned(size_t size)
{
    size = (size + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, size ? size : 64);
    if (p)
        memset(p, 0, size);
    return p;
}

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

/* One peer's run function: sets the peer up around run_threads(); `variant`
 * selects a flavour (raw ck: yield instead of spin; ZeroMQ: PUB/SUB instead
 * of PUSH/PULL). Returns the elapsed ns, 0 on failure. */
typedef uint64_t (*peer_run_fn)(struct run *r, const char *who, int variant);

static double peer_throughput(const struct scenario *sc, peer_run_fn run, int variant,
                              const char *name)
{
    char who[64];
    snprintf(who, sizeof who, "%s %d->%d", name, sc->publishers, sc->subscribers);
    struct run *r = malloc(sizeof *r);
    if (!r)
        return -1;
    run_init(r, sc->publishers, sc->subscribers, sc->payload, sc->messages, sc->capacity);
    double rate = rate_of(r, run(r, who, variant));
    run_destroy(r);
    free(r);
    return rate;
}

static int peer_latency(const struct latency_run *lr, peer_run_fn run, int variant,
                        const char *who, bool spin_rx, uint64_t *lat)
{
    struct run *r = malloc(sizeof *r);
    if (!r)
        return -1;
    run_init(r, 1, 1, LAT_PAYLOAD, lr->rounds, lr->capacity);
    r->pace_ns = lr->pace_ns;
    r->spin_rx = spin_rx;
    r->lat = lat;
    uint64_t elapsed = run(r, who, variant);
    run_destroy(r);
    free(r);
    return elapsed ? 0 : -1;
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

static const struct bench_impl impl_ck = {
    .name = "raw-ck-ring",
    .throughput = ck_throughput,
    .latency = ck_latency,
    .wait_strategy = "ck_ring MPMC of pointers to preallocated slots, one ring per "
                     "receiver; publisher and receivers busy-poll (ck_pr_stall), never sleep",
};

/* An extra floor: the same ring when its users call sched_yield()
 * instead of spinning, which is what keeps raw ck usable when there are
 * more threads than cores (1->4 on 2 cores). Throughput only. */
static const struct bench_impl impl_ck_yield = {
    .name = "raw-ck-yield",
    .throughput = ck_yield_throughput,
    .latency = NULL,
    .wait_strategy = "the raw-ck-ring above, but publisher and receivers sched_yield() "
                     "after every failed enqueue/dequeue (throughput only)",
};

/* ------------------------------------------------ ZeroMQ inproc */

#ifdef RBUS_BENCH_HAVE_ZMQ

/* The sockets are created, bound and connected by the main thread and only
 * used by one thread each afterwards (thread creation and join are the full
 * barriers ZeroMQ asks for when a socket changes threads). */
struct zmq_peer {
    void *ctx;
    void *out[MAX_THREADS]; /* XPUB (one) or PUSH (one per publisher) */
    void *in[MAX_THREADS];  /* SUB (one per receiver) or PULL (one) */
    int nout, nin;
};

static bool zset(void *s, int opt, int v)
{
    return zmq_setsockopt(s, opt, &v, sizeof v) == 0;
}

static void *zmq_pub(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct zmq_peer *z = r->impl;
    void *s = z->out[t->id];
    unsigned char *buf = calloc(1, r->payload);
    if (!buf) {
        run_fail(r, "out of memory");
        return NULL;
    }
    uint64_t last = 0;
    run_pub_started(r, t->id);
    for (uint64_t c = 0; c < r->messages; c++) {
        bench_stamp(buf, (uint64_t)t->id, c);
        if (r->pace_ns) {
            uint64_t now = pace(r, &last);
            memcpy(buf + 16, &now, 8);
        }
        while (zmq_send(s, buf, r->payload, 0) < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                run_fail(r, zmq_strerror(errno));
                goto out;
            }
            if (aborted(r))
                goto out;
        }
    }
out:
    free(buf);
    return NULL;
}

static void *zmq_rx(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct zmq_peer *z = r->impl;
    void *s = z->in[t->id];
    int flags = r->spin_rx ? ZMQ_DONTWAIT : 0;
    struct bench_verify v;
    memset(&v, 0, sizeof v);
    uint64_t want = r->messages * (uint64_t)r->np;
    unsigned char *buf = calloc(1, r->payload);
    if (!buf) {
        run_fail(r, "out of memory");
        return NULL;
    }
    run_wait_start(r);
    while (v.received < want) {
        int n = zmq_recv(s, buf, r->payload, flags);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                run_fail(r, zmq_strerror(errno));
                goto out;
            }
            if (aborted(r))
                goto out;
            continue;
        }
        if ((size_t)n != r->payload)
            v.bad = true;
        rx_one(r, &v, buf);
    }
    run_rx_done(r, t->id, &v);
out:
    free(buf);
    return NULL;
}

static void zmq_wake(struct run *r)
{
    (void)r; /* 100 ms send/receive timeouts: every thread sees the flag */
}

static void zmq_peer_close(struct zmq_peer *z)
{
    for (int i = 0; i < z->nout; i++)
        zmq_close(z->out[i]);
    for (int i = 0; i < z->nin; i++)
        zmq_close(z->in[i]);
    if (z->ctx)
        zmq_ctx_term(z->ctx);
}

/* SNDHWM + RCVHWM = per_pipe, each at least 1 (0 would mean unlimited). */
static void zmq_split(uint32_t per_pipe, int *snd, int *rcv)
{
    *snd = (int)(per_pipe / 2);
    if (*snd < 1)
        *snd = 1;
    *rcv = (int)per_pipe - *snd;
    if (*rcv < 1)
        *rcv = 1;
}

static void *zsock(struct zmq_peer *z, int type, int hwm_opt, int hwm, int timeo_opt)
{
    void *s = zmq_socket(z->ctx, type);
    if (!s)
        return NULL;
    if (!zset(s, ZMQ_LINGER, 0) || !zset(s, hwm_opt, hwm) || !zset(s, timeo_opt, 100)) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* XPUB (NODROP, VERBOSE) bound, ns SUB sockets connected and subscribed to
 * everything; returns when the XPUB socket has read every subscription. */
static bool pubsub_setup(struct zmq_peer *z, const struct run *r)
{
    static const char ep[] = "inproc://ringbus-bench-pubsub";
    int snd, rcv;
    zmq_split(r->capacity, &snd, &rcv);
    if (!(z->ctx = zmq_ctx_new()))
        return false;
    void *xpub = zsock(z, ZMQ_XPUB, ZMQ_SNDHWM, snd, ZMQ_SNDTIMEO);
    if (!xpub)
        return false;
    z->out[z->nout++] = xpub;
    if (!zset(xpub, ZMQ_XPUB_NODROP, 1) || !zset(xpub, ZMQ_XPUB_VERBOSE, 1) ||
        !zset(xpub, ZMQ_RCVTIMEO, 100) || zmq_bind(xpub, ep) != 0)
        return false;
    for (int j = 0; j < r->ns; j++) {
        void *sub = zsock(z, ZMQ_SUB, ZMQ_RCVHWM, rcv, ZMQ_RCVTIMEO);
        if (!sub)
            return false;
        z->in[z->nin++] = sub;
        if (zmq_connect(sub, ep) != 0 || zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0) != 0)
            return false;
    }
    uint64_t until = bench_now_ns() + 5000000000u;
    for (int got = 0; got < r->ns;) {
        unsigned char m[8];
        int n = zmq_recv(xpub, m, sizeof m, 0);
        if (n >= 1 && m[0] == 1)
            got++;
        else if (n < 0 && errno != EAGAIN && errno != EINTR)
            return false;
        if (bench_now_ns() > until)
            return false;
    }
    return true;
}

/* One PULL bound, one PUSH per publisher connected; each pipe gets
 * capacity / np (SNDHWM + RCVHWM) so the receiver holds capacity. */
static bool pushpull_setup(struct zmq_peer *z, const struct run *r)
{
    static const char ep[] = "inproc://ringbus-bench-pushpull";
    int snd, rcv;
    uint32_t per_pipe = r->capacity / (uint32_t)r->np;
    zmq_split(per_pipe ? per_pipe : 1, &snd, &rcv);
    if (!(z->ctx = zmq_ctx_new()))
        return false;
    void *pull = zsock(z, ZMQ_PULL, ZMQ_RCVHWM, rcv, ZMQ_RCVTIMEO);
    if (!pull)
        return false;
    z->in[z->nin++] = pull;
    if (zmq_bind(pull, ep) != 0)
        return false;
    for (int p = 0; p < r->np; p++) {
        void *push = zsock(z, ZMQ_PUSH, ZMQ_SNDHWM, snd, ZMQ_SNDTIMEO);
        if (!push)
            return false;
        z->out[z->nout++] = push;
        if (zmq_connect(push, ep) != 0)
            return false;
    }
    return true;
}

static uint64_t zmq_run(struct run *r, const char *who, int pubsub)
{
    struct zmq_peer z;
    memset(&z, 0, sizeof z);
    uint64_t elapsed = 0;
    if (pubsub ? pubsub_setup(&z, r) : pushpull_setup(&z, r)) {
        r->impl = &z;
        elapsed = run_threads(r, who, zmq_pub, zmq_rx, zmq_wake);
    } else {
        fprintf(stderr, "ringbus-bench: %s: setup failed: %s\n", who, zmq_strerror(errno));
    }
    zmq_peer_close(&z);
    return elapsed;
}

static double zmq_throughput(const struct scenario *sc, bool pubsub)
{
    if (!scenario_ok(sc) || (pubsub ? sc->publishers != 1 : sc->subscribers != 1))
        return -1;
    return peer_throughput(sc, zmq_run, pubsub, pubsub ? "zmq-pubsub" : "zmq-pushpull");
}

static double pubsub_throughput(const struct scenario *sc)
{
    return zmq_throughput(sc, true);
}

static double pushpull_throughput(const struct scenario *sc)
{
    return zmq_throughput(sc, false);
}

static int pubsub_latency(const struct latency_run *lr, uint64_t *lat)
{
    return peer_latency(lr, zmq_run, 1, "zmq-pubsub latency", !lr->sleeping_receiver, lat);
}

static const struct bench_impl impl_pubsub = {
    .name = "zmq-pubsub",
    .throughput = pubsub_throughput,
    .latency = pubsub_latency,
    .wait_strategy = "XPUB (NODROP) -> SUB per receiver, inproc; zmq_send and zmq_recv "
                     "block (latency spin runs: zmq_recv ZMQ_DONTWAIT in a loop)",
};

static const struct bench_impl impl_pushpull = {
    .name = "zmq-pushpull",
    .throughput = pushpull_throughput,
    .latency = NULL,
    .wait_strategy = "PUSH per publisher -> one PULL, inproc; zmq_send and zmq_recv block",
};

#endif /* RBUS_BENCH_HAVE_ZMQ */

/* ------------------------------------------------ GLib GAsyncQueue */

#ifdef RBUS_BENCH_HAVE_GLIB

/*
 * One GAsyncQueue per receiver. Each published message is one malloc'd
 * copy of the payload shared by every receiver: an atomic reference count
 * set to the number of receivers before the first push (the queue's lock
 * publishes it), decremented by each receiver, the last one frees it. The
 * queue is bounded by the publisher: under the queue's lock it reads the
 * length and, while the queue holds capacity items, unlocks and yields.
 * On an abort the main thread pushes gaq_stop into every queue to wake the
 * receivers blocked in g_async_queue_pop.
 */
struct gaq_msg {
    _Atomic int refs;
    unsigned char data[];
};

static char gaq_stop;

struct gaq_peer {
    GAsyncQueue *q[MAX_THREADS];
};

static void gaq_release(struct gaq_msg *m, int n)
{
    if (atomic_fetch_sub_explicit(&m->refs, n, memory_order_acq_rel) == n)
        free(m);
}

static void *gaq_pub(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct gaq_peer *g = r->impl;
    gint cap = (gint)r->capacity;
    uint64_t last = 0;
    run_pub_started(r, t->id);
    for (uint64_t c = 0; c < r->messages; c++) {
        struct gaq_msg *m = malloc(sizeof *m + r->payload);
        if (!m) {
            run_fail(r, "out of memory");
            return NULL;
        }
        atomic_init(&m->refs, r->ns);
        memset(m->data + 16, 0, r->payload - 16);
        bench_stamp(m->data, (uint64_t)t->id, c);
        if (r->pace_ns) {
            uint64_t now = pace(r, &last);
            memcpy(m->data + 16, &now, 8);
        }
        for (int j = 0; j < r->ns; j++) {
            GAsyncQueue *q = g->q[j];
            g_async_queue_lock(q);
            while (g_async_queue_length_unlocked(q) >= cap) {
                g_async_queue_unlock(q);
                if (aborted(r)) {
                    gaq_release(m, r->ns - j);
                    return NULL;
                }
                sched_yield();
                g_async_queue_lock(q);
            }
            g_async_queue_push_unlocked(q, m);
            g_async_queue_unlock(q);
        }
    }
    return NULL;
}

static void *gaq_rx(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct gaq_peer *g = r->impl;
    GAsyncQueue *q = g->q[t->id];
    struct bench_verify v;
    memset(&v, 0, sizeof v);
    uint64_t want = r->messages * (uint64_t)r->np;
    run_wait_start(r);
    while (v.received < want) {
        void *p;
        if (r->spin_rx) {
            while (!(p = g_async_queue_try_pop(q)))
                if (aborted(r))
                    return NULL;
        } else {
            p = g_async_queue_pop(q);
        }
        if (p == &gaq_stop)
            return NULL;
        struct gaq_msg *m = p;
        rx_one(r, &v, m->data);
        gaq_release(m, 1);
    }
    run_rx_done(r, t->id, &v);
    return NULL;
}

static void gaq_wake(struct run *r)
{
    struct gaq_peer *g = r->impl;
    for (int j = 0; j < r->ns; j++)
        g_async_queue_push(g->q[j], &gaq_stop);
}

static uint64_t gaq_run(struct run *r, const char *who, int unused)
{
    (void)unused;
    struct gaq_peer g;
    memset(&g, 0, sizeof g);
    for (int j = 0; j < r->ns; j++)
        g.q[j] = g_async_queue_new();
    r->impl = &g;
    uint64_t elapsed = run_threads(r, who, gaq_pub, gaq_rx, gaq_wake);
    for (int j = 0; j < r->ns; j++) {
        void *p;
        while ((p = g_async_queue_try_pop(g.q[j])) != NULL)
            if (p != &gaq_stop)
                gaq_release(p, 1);
        g_async_queue_unref(g.q[j]);
    }
    return elapsed;
}

static double gaq_throughput(const struct scenario *sc)
{
    if (!scenario_ok(sc) || sc->capacity > (uint32_t)G_MAXINT)
        return -1;
    return peer_throughput(sc, gaq_run, 0, "gasyncqueue");
}

static int gaq_latency(const struct latency_run *lr, uint64_t *lat)
{
    return peer_latency(lr, gaq_run, 0, "gasyncqueue latency", !lr->sleeping_receiver, lat);
}

static const struct bench_impl impl_gaq = {
    .name = "gasyncqueue",
    .throughput = gaq_throughput,
    .latency = gaq_latency,
    .wait_strategy = "one GAsyncQueue per receiver, one refcounted malloc'd copy per message; "
                     "receivers block in g_async_queue_pop (latency spin runs: try_pop loop); "
                     "publisher yields while a queue holds capacity",
};

#endif /* RBUS_BENCH_HAVE_GLIB */

/* ------------------------------------------------ mutex + condvar ring */

/* What most people write by hand: a ring of `capacity` payload slots per
 * receiver, one mutex, "not empty" and "not full" condition variables,
 * signalled on every push and pop. */
struct mring {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    uint32_t cap, head, count;
    size_t stride;
    unsigned char *data;
};

struct mutex_peer {
    struct mring *q; /* [ns], 64-byte aligned each */
    size_t qstride;
};

static inline struct mring *mring_of(struct mutex_peer *m, int j)
{
    return (struct mring *)(void *)((char *)m->q + (size_t)j * m->qstride);
}

static bool mring_push(struct run *r, struct mring *q, const unsigned char *buf)
{
    pthread_mutex_lock(&q->mu);
    while (q->count == q->cap) {
        if (aborted(r)) {
            pthread_mutex_unlock(&q->mu);
            return false;
        }
        pthread_cond_wait(&q->not_full, &q->mu);
    }
    uint32_t tail = q->head + q->count;
    if (tail >= q->cap)
        tail -= q->cap;
    memcpy(q->data + (size_t)tail * q->stride, buf, r->payload);
    q->count++;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
    return true;
}

/* Takes the oldest message out (caller holds the lock, count > 0). */
static void mring_take(struct run *r, struct mring *q, unsigned char *buf)
{
    memcpy(buf, q->data + (size_t)q->head * q->stride, r->payload);
    if (++q->head == q->cap)
        q->head = 0;
    q->count--;
    pthread_cond_signal(&q->not_full);
}

static bool mring_pop(struct run *r, struct mring *q, unsigned char *buf)
{
    pthread_mutex_lock(&q->mu);
    if (r->spin_rx) {
        while (q->count == 0) {
            pthread_mutex_unlock(&q->mu);
            if (aborted(r))
                return false;
            ck_pr_stall();
            pthread_mutex_lock(&q->mu);
        }
    } else {
        while (q->count == 0) {
            if (aborted(r)) {
                pthread_mutex_unlock(&q->mu);
                return false;
            }
            pthread_cond_wait(&q->not_empty, &q->mu);
        }
    }
    mring_take(r, q, buf);
    pthread_mutex_unlock(&q->mu);
    return true;
}

static void *mutex_pub(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct mutex_peer *mp = r->impl;
    unsigned char *buf = calloc(1, r->payload);
    if (!buf) {
        run_fail(r, "out of memory");
        return NULL;
    }
    uint64_t last = 0;
    run_pub_started(r, t->id);
    for (uint64_t c = 0; c < r->messages; c++) {
        bench_stamp(buf, (uint64_t)t->id, c);
        if (r->pace_ns) {
            uint64_t now = pace(r, &last);
            memcpy(buf + 16, &now, 8);
        }
        for (int j = 0; j < r->ns; j++)
            if (!mring_push(r, mring_of(mp, j), buf))
                goto out;
    }
out:
    free(buf);
    return NULL;
}

static void *mutex_rx(void *arg)
{
    struct thr *t = arg;
    struct run *r = t->run;
    struct mring *q = mring_of(r->impl, t->id);
    struct bench_verify v;
    memset(&v, 0, sizeof v);
    uint64_t want = r->messages * (uint64_t)r->np;
    unsigned char *buf = calloc(1, r->payload);
    if (!buf) {
        run_fail(r, "out of memory");
        return NULL;
    }
    run_wait_start(r);
    while (v.received < want) {
        if (!mring_pop(r, q, buf))
            goto out;
        rx_one(r, &v, buf);
    }
    run_rx_done(r, t->id, &v);
out:
    free(buf);
    return NULL;
}

static void mutex_wake(struct run *r)
{
    for (int j = 0; j < r->ns; j++) {
        struct mring *q = mring_of(r->impl, j);
        pthread_mutex_lock(&q->mu);
        pthread_cond_broadcast(&q->not_empty);
        pthread_cond_broadcast(&q->not_full);
        pthread_mutex_unlock(&q->mu);
    }
}

static uint64_t mutex_run(struct run *r, const char *who, int unused)
{
    (void)unused;
    struct mutex_peer mp;
    mp.qstride = (sizeof(struct mring) + 63) & ~(size_t)63;
    mp.q = zalloc_aligned(mp.qstride * (size_t)r->ns);
    if (!mp.q) {
        fprintf(stderr, "ringbus-bench: %s: out of memory\n", who);
        return 0;
    }
    bool ok = true;
    int made = 0;
    for (; made < r->ns; made++) {
        struct mring *q = mring_of(&mp, made);
        q->cap = r->capacity;
        q->stride = r->payload;
        q->data = malloc((size_t)q->cap * q->stride);
        if (!q->data) {
            ok = false;
            break;
        }
        pthread_mutex_init(&q->mu, NULL);
        pthread_cond_init(&q->not_empty, NULL);
        pthread_cond_init(&q->not_full, NULL);
    }
    uint64_t elapsed = 0;
    if (ok) {
        r->impl = &mp;
        elapsed = run_threads(r, who, mutex_pub, mutex_rx, mutex_wake);
    } else {
        fprintf(stderr, "ringbus-bench: %s: out of memory\n", who);
    }
    for (int j = 0; j < made; j++) {
        struct mring *q = mring_of(&mp, j);
        pthread_mutex_destroy(&q->mu);
        pthread_cond_destroy(&q->not_empty);
        pthread_cond_destroy(&q->not_full);
        free(q->data);
    }
    free(mp.q);
    return elapsed;
}

static double mutex_throughput(const struct scenario *sc)
{
    return scenario_ok(sc) ? peer_throughput(sc, mutex_run, 0, "mutex-ring") : -1;
}

static int mutex_latency(const struct latency_run *lr, uint64_t *lat)
{
    return peer_latency(lr, mutex_run, 0, "mutex-ring latency", !lr->sleeping_receiver, lat);
}

static const struct bench_impl impl_mutex = {
    .name = "mutex-ring",
    .throughput = mutex_throughput,
    .latency = mutex_latency,
    .wait_strategy = "pthread mutex + 2 condvars, a ring of payload copies per receiver; "
                     "push and pop block on the condvars (latency spin runs: "
                     "lock/check/unlock loop)",
};

/* ------------------------------------------------ `ringbus-bench peers` */

/* Which scenarios an implementation offers, and its short receiver labels. */
struct peer {
    const struct bench_impl *impl;
    int max_publishers, max_subscribers; /* 0 = any */
    bool lat_spin, lat_sleep;
    const char *tp_wait;  /* throughput runs */
    const char *rx_spin;  /* latency "spin" runs */
    const char *rx_sleep; /* latency "sleep" runs */
};

static const struct peer peers[] = {
    {&bench_impl_ringbus, 0, 0, true, true, "spin/yield, futex", "default (spin_ns 0)",
     "spin_ns < 0"},
    {&impl_ck, 0, 0, true, false, "busy-poll", "busy-poll", NULL},
    {&impl_ck_yield, 0, 0, false, false, "sched_yield poll", NULL, NULL},
#ifdef RBUS_BENCH_HAVE_ZMQ
    {&impl_pubsub, 1, 0, true, true, "blocking send/recv", "recv DONTWAIT loop",
     "blocking zmq_recv"},
    {&impl_pushpull, 0, 1, false, false, "blocking send/recv", NULL, NULL},
#endif
#ifdef RBUS_BENCH_HAVE_GLIB
    {&impl_gaq, 0, 0, true, true, "pop blocks; push yields", "try_pop loop",
     "g_async_queue_pop"},
#endif
    {&impl_mutex, 0, 0, true, true, "condvar waits", "lock/check loop", "cond_wait"},
};
#define NPEERS ((int)(sizeof peers / sizeof peers[0]))

/* The cases of one peers run: throughput scenarios, then latency runs. */
struct pcase {
    const char *name;
    int np, ns;          /* throughput */
    uint64_t messages;   /* default per publisher, or rounds */
    uint64_t pace_ns;    /* latency: > 0 */
    bool sleeping;
};

static const struct pcase cases[] = {
    {"1->1", 1, 1, 500000, 0, false},
    {"1->4", 1, 4, 200000, 0, false},
    {"2->1", 2, 1, 250000, 0, false},
    {"lat 10us spin", 1, 1, 20000, 10000, false},
    {"lat 10us sleep", 1, 1, 20000, 10000, true},
    {"lat 100us spin", 1, 1, 5000, 100000, false},
    {"lat 100us sleep", 1, 1, 5000, 100000, true},
};
#define NCASES ((int)(sizeof cases / sizeof cases[0]))

static bool offers(const struct peer *p, const struct pcase *c)
{
    if (p->impl->throughput == NULL && !c->pace_ns)
        return false;
    if (c->pace_ns)
        return p->impl->latency != NULL && (c->sleeping ? p->lat_sleep : p->lat_spin);
    return (!p->max_publishers || c->np <= p->max_publishers) &&
           (!p->max_subscribers || c->ns <= p->max_subscribers);
}

#define GAQ_FANOUT_CAP 50000u

/* Messages per publisher (or rounds) of one implementation in one case. */
static uint64_t case_messages(const struct bench_opts *o, const struct peer *p,
                              const struct pcase *c)
{
    if (c->pace_ns) /* rounds: fixed by the pace, at most --messages */
        return o->messages_set && o->messages < c->messages ? o->messages : c->messages;
    uint64_t n = o->messages_set ? o->messages : c->messages;
#ifdef RBUS_BENCH_HAVE_GLIB
    /* One wake-up per message and receiver: ~0.2 M/s on 2 cores. */
    if (p->impl == &impl_gaq && c->ns > 1 && n > GAQ_FANOUT_CAP)
        n = GAQ_FANOUT_CAP;
#else
    (void)p;
#endif
    return n;
}

/* Every repetition of one implementation in one case. */
struct cell {
    double v[MAX_REPS]; /* msg/s, or p50 ns */
    double p99[MAX_REPS], p999[MAX_REPS];
    int n, failed;
    uint64_t messages;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median, min and max of n values (sorts a copy). */
static void stats3(const double *v, int n, double *med, double *lo, double *hi)
{
    double s[MAX_REPS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    *lo = s[0];
    *hi = s[n - 1];
    *med = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static double median_of(const double *v, int n)
{
    double m, lo, hi;
    stats3(v, n, &m, &lo, &hi);
    return m;
}

static FILE *open_csv(const struct bench_opts *o, char *path, size_t len)
{
    FILE *f = bench_open_result(o, "peers.csv", path, len);
    if (!f)
        return NULL;
    bench_print_machine(f, FORMAT_CSV);
    fputs("rep,scenario,impl,publishers,subscribers,payload_b,capacity,messages,value,unit,"
          "p99_ns,p999_ns,status\n",
          f);
    return f;
}

/* One repetition of one implementation in one case; returns false on a
 * failure (already reported on stderr). */
static bool run_one(const struct bench_opts *o, const struct peer *p, const struct pcase *c,
                    int rep, struct cell *cell, FILE *csv)
{
    uint64_t n = case_messages(o, p, c);
    cell->messages = n;
    double v = -1, p99 = 0, p999 = 0;
    bool ok;
    size_t payload = c->pace_ns ? LAT_PAYLOAD : o->payload;
    if (!c->pace_ns) {
        struct scenario sc = {.publishers = c->np, .subscribers = c->ns, .payload = o->payload,
                              .messages = n, .capacity = o->capacity, .spin_ns = o->spin_ns};
        v = p->impl->throughput(&sc);
        ok = v > 0;
    } else {
        struct latency_run lr = {.pace_ns = c->pace_ns, .rounds = n,
                                 .sleeping_receiver = c->sleeping, .capacity = o->capacity};
        uint64_t *lat = calloc(n, sizeof *lat);
        ok = lat && p->impl->latency(&lr, lat) == 0;
        if (ok) {
            v = (double)bench_percentile(lat, n, 50);
            p99 = (double)bench_percentile(lat, n, 99);
            p999 = (double)bench_percentile(lat, n, 99.9);
        }
        free(lat);
    }
    if (ok) {
        cell->v[cell->n] = v;
        cell->p99[cell->n] = p99;
        cell->p999[cell->n] = p999;
        cell->n++;
    } else {
        cell->failed++;
        fprintf(stderr, "ringbus-bench: peers: %s %s rep %d FAILED\n", p->impl->name, c->name,
                rep + 1);
    }
    if (csv) {
        fprintf(csv, "%d,%s,%s,%d,%d,%zu,%u,%llu,%.0f,%s,%.0f,%.0f,%s\n", rep + 1, c->name,
                p->impl->name, c->np, c->ns, payload, o->capacity, (unsigned long long)n,
                ok ? v : 0.0, c->pace_ns ? "p50_ns" : "msgs_per_s", p99, p999,
                ok ? "ok" : "FAILED");
        fflush(csv);
    }
    return ok;
}

static void fill_row(struct bench_row *row, const struct peer *p, const struct pcase *c,
                     const struct cell *cell, const struct cell *rb)
{
    bench_row_str(row, "scenario", c->name);
    bench_row_str(row, "impl", p->impl->name);
    bench_row_str(row, "unit", c->pace_ns ? "p50 ns" : "M msg/s");
    if (cell->n == 0) {
        static const char *const cols[] = {"median", "min",    "max",
                                           "vs_ringbus", "p99_ns", "p999_ns"};
        for (size_t k = 0; k < sizeof cols / sizeof cols[0]; k++)
            bench_row_str(row, cols[k], "FAILED");
    } else {
        double med, lo, hi, scale = c->pace_ns ? 1.0 : 1e-6;
        const char *fmt = c->pace_ns ? "%.0f" : "%.3f";
        stats3(cell->v, cell->n, &med, &lo, &hi);
        bench_row_num(row, "median", fmt, med * scale);
        bench_row_num(row, "min", fmt, lo * scale);
        bench_row_num(row, "max", fmt, hi * scale);
        if (rb && rb->n > 0) {
            double rbmed = median_of(rb->v, rb->n);
            bench_row_num(row, "vs_ringbus", "%.2f", c->pace_ns ? med / rbmed : rbmed / med);
        } else {
            bench_row_str(row, "vs_ringbus", "-");
        }
        if (c->pace_ns) {
            bench_row_num(row, "p99_ns", "%.0f", median_of(cell->p99, cell->n));
            bench_row_num(row, "p999_ns", "%.0f", median_of(cell->p999, cell->n));
        } else {
            bench_row_str(row, "p99_ns", "-");
            bench_row_str(row, "p999_ns", "-");
        }
    }
    bench_row_num(row, "reps_ok", "%.0f", (double)cell->n);
    bench_row_num(row, "messages", "%.0f", (double)cell->messages);
    bench_row_str(row, "wait",
                  !c->pace_ns ? p->tp_wait : c->sleeping ? p->rx_sleep : p->rx_spin);
}

/* Median of one implementation in one case, or 0 when it has none. */
static double med_by_name(struct cell (*cells)[NPEERS], const char *cname, const char *iname)
{
    for (int c = 0; c < NCASES; c++)
        for (int p = 0; p < NPEERS; p++)
            if (!strcmp(cases[c].name, cname) && !strcmp(peers[p].impl->name, iname) &&
                cells[c][p].n > 0)
                return median_of(cells[c][p].v, cells[c][p].n);
    return 0;
}

/* Ratios of medians between ringbus and the peers it is usually weighed
 * against (table format only): throughput ratios above 1 and latency
 * ratios below 1 favour ringbus. */
static void print_ratios(struct cell (*cells)[NPEERS])
{
    static const struct {
        const char *what, *scen, *a, *b, *scen_b; /* scen_b: b's case, if not scen */
    } t[] = {
        {"1->1 ringbus / raw-ck-ring", "1->1", "ringbus", "raw-ck-ring", NULL},
        {"1->1 ringbus / zmq-pubsub", "1->1", "ringbus", "zmq-pubsub", NULL},
        {"1->1 ringbus / raw-ck-yield (yielding floor)", "1->1", "ringbus", "raw-ck-yield", NULL},
        {"1->4 ringbus / raw-ck-ring", "1->4", "ringbus", "raw-ck-ring", NULL},
        {"1->4 ringbus / raw-ck-yield (yielding floor)", "1->4", "ringbus", "raw-ck-yield", NULL},
        {"1->4 ringbus / zmq-pubsub", "1->4", "ringbus", "zmq-pubsub", NULL},
        {"1->4 ringbus / gasyncqueue", "1->4", "ringbus", "gasyncqueue", NULL},
        {"2->1 ringbus / mutex-ring", "2->1", "ringbus", "mutex-ring", NULL},
        {"2->1 ringbus / zmq-pushpull", "2->1", "ringbus", "zmq-pushpull", NULL},
        {"10us p50 ringbus default / raw-ck-ring", "lat 10us spin", "ringbus", "raw-ck-ring", NULL},
        {"10us p50 ringbus default / zmq blocking recv", "lat 10us spin", "ringbus", "zmq-pubsub",
         "lat 10us sleep"},
        {"10us p50 ringbus spin_ns<0 / zmq blocking recv", "lat 10us sleep", "ringbus",
         "zmq-pubsub", NULL},
    };
    printf("\nratios (medians; latency rows: ringbus p50 / peer p50):\n");
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        double a = med_by_name(cells, t[i].scen, t[i].a);
        double b = med_by_name(cells, t[i].scen_b ? t[i].scen_b : t[i].scen, t[i].b);
        if (a <= 0 || b <= 0) {
            printf("  %-48s  n/a (not measured)\n", t[i].what);
            continue;
        }
        printf("  %-48s %7.2f\n", t[i].what, a / b);
    }
}

int bench_mode_peers(const struct bench_opts *o)
{
    int reps = o->reps > 5 ? o->reps : 5;
    if (reps > MAX_REPS)
        reps = MAX_REPS;
    if (o->payload < 16) {
        fprintf(stderr, "ringbus-bench: peers needs --payload >= 16\n");
        return 2;
    }
    struct cell (*cells)[NPEERS] = calloc(NCASES, sizeof *cells);
    struct bench_row *rows = calloc((size_t)NCASES * NPEERS, sizeof *rows);
    if (!cells || !rows) {
        free(cells);
        free(rows);
        return 1;
    }
    bench_print_machine(stdout, o->format);
    if (o->format != FORMAT_JSON) {
        const char *pre = o->format == FORMAT_CSV ? "# " : "";
        printf("%speers: lossless throughput (published messages/s, all publishers; "
               "%zu B payloads) and paced one-way latency (64 B, p50 per run), capacity %u "
               "per queue everywhere; median (min-max) of %d interleaved repetitions\n",
               pre, o->payload, o->capacity, reps);
        printf("%svs_ringbus: throughput = ringbus / peer, latency = peer p50 / ringbus p50; "
               "> 1 means ringbus is better\n",
               pre);
        printf("%slatency 'spin' runs: ringbus default wait strategy, peers spinning; "
               "'sleep' runs: ringbus spin_ns < 0, peers' blocking receive\n",
               pre);
        printf("%swait strategies:\n", pre);
        for (int p = 0; p < NPEERS; p++)
            printf("%s  %-13s %s\n", pre, peers[p].impl->name, peers[p].impl->wait_strategy);
#ifndef RBUS_BENCH_HAVE_ZMQ
        printf("%s  (ZeroMQ peers not built: libzmq not found by pkg-config)\n", pre);
#endif
#ifndef RBUS_BENCH_HAVE_GLIB
        printf("%s  (GAsyncQueue peer not built: glib-2.0 not found by pkg-config)\n", pre);
#endif
    }
    char path[512];
    FILE *csv = open_csv(o, path, sizeof path);

    int total = 0, done = 0, failures = 0;
    for (int c = 0; c < NCASES; c++)
        for (int p = 0; p < NPEERS; p++)
            total += offers(&peers[p], &cases[c]);
    total *= reps;
    uint64_t started = bench_now_ns();
    for (int rep = 0; rep < reps; rep++) {
        for (int c = 0; c < NCASES; c++) {
            for (int p = 0; p < NPEERS; p++) {
                if (!offers(&peers[p], &cases[c]))
                    continue;
                bench_progress("peers", (double)done / total, started);
                failures += !run_one(o, &peers[p], &cases[c], rep, &cells[c][p], csv);
                done++;
            }
        }
    }
    bench_progress_done();
    if (csv)
        fclose(csv);

    int n = 0;
    for (int c = 0; c < NCASES; c++)
        for (int p = 0; p < NPEERS; p++)
            if (offers(&peers[p], &cases[c]))
                fill_row(&rows[n++], &peers[p], &cases[c], &cells[c][p], &cells[c][0]);
    bench_print_rows(stdout, o->format, rows, n);
    if (o->format == FORMAT_TABLE) {
        print_ratios(cells);
        if (csv)
            printf("\nevery repetition: %s\n", path);
    }
    if (failures) {
        fprintf(stderr, "ringbus-bench: peers: %d run(s) FAILED:\n", failures);
        for (int c = 0; c < NCASES; c++)
            for (int p = 0; p < NPEERS; p++)
                if (cells[c][p].failed)
                    fprintf(stderr, "  %s %s: %d of %d repetitions failed\n",
                            peers[p].impl->name, cases[c].name, cells[c][p].failed, reps);
    }
    free(cells);
    free(rows);
    return failures ? 1 : 0;
}
