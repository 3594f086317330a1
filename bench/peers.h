/*
 * peers.h - what the peers of `ringbus-bench peers` share: the harness in
 * peers.c (start barrier, timing, verification, deadline) and the peers,
 * one file each (impl_ck.c, impl_zmq.c, impl_gasync.c, impl_mutex.c).
 * A peer's thread functions only move messages; starting, timing,
 * verifying and aborting a run are the harness's job. How the peers are
 * configured, and why that is fair, is in docs/benchmarks.md.
 */
#ifndef RBUS_BENCH_PEERS_H
#define RBUS_BENCH_PEERS_H

#include "bench.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64
#define LAT_PAYLOAD 64

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
    uint64_t pace_ns; /* latency runs only */
    bool spin_rx;     /* latency runs: spinning receiver */
    uint64_t *lat;    /* latency runs: lat[counter] */
    void *impl;       /* the peer's state */

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
void run_fail(struct run *r, const char *why);
/* Every thread waits here; publishers then read their start time. */
void run_wait_start(struct run *r);
void run_pub_started(struct run *r, int id);
/* A receiver that got everything hands in its verification. */
void run_rx_done(struct run *r, int id, const struct bench_verify *v);

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

/* A thread's message buffer, payload bytes zeroed; NULL, after run_fail,
 * when memory runs out. */
static inline unsigned char *run_buf(struct run *r)
{
    unsigned char *buf = calloc(1, r->payload);
    if (!buf)
        run_fail(r, "out of memory");
    return buf;
}

/* Publisher `id`'s message `c` into buf; latency runs pace it first and
 * carry the send time at byte 16. */
static inline void run_stamp(const struct run *r, unsigned char *buf, int id, uint64_t c,
                             uint64_t *last)
{
    bench_stamp(buf, (uint64_t)id, c);
    if (r->pace_ns) {
        uint64_t now = pace(r, last);
        memcpy(buf + 16, &now, 8);
    }
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

/*
 * Starts ns receivers and np publishers, releases them together, waits for
 * every receiver (a run that takes too long, or a failed thread, aborts it
 * and calls wake() so that blocked threads return), joins them and
 * verifies every receiver. Returns the elapsed ns from the first
 * publisher's start to the last receiver's end, or 0 on any failure (the
 * reason on stderr, prefixed by `who`).
 */
uint64_t run_threads(struct run *r, const char *who, void *(*pub)(void *), void *(*rx)(void *),
                     void (*wake)(struct run *));

/* Whether a scenario fits the harness (thread counts, payload, sizes). */
bool scenario_ok(const struct scenario *sc);
/* Zeroed, 64-byte aligned (free() it). */
void *zalloc_aligned(size_t size);

/* One peer's run function: sets the peer up around run_threads(); `variant`
 * selects a flavour (raw ck: yield instead of spin; ZeroMQ: PUB/SUB instead
 * of PUSH/PULL). Returns the elapsed ns, 0 on failure. */
typedef uint64_t (*peer_run_fn)(struct run *r, const char *who, int variant);

/* A throughput run or a latency run of one peer around its run function. */
double peer_throughput(const struct scenario *sc, peer_run_fn run, int variant, const char *name);
int peer_latency(const struct latency_run *lr, peer_run_fn run, int variant, const char *who,
                 bool spin_rx, uint64_t *lat);

/* The peers; the ZeroMQ and GLib ones only when pkg-config found them. */
extern const struct bench_impl bench_impl_ck;       /* impl_ck.c */
extern const struct bench_impl bench_impl_ck_yield; /* impl_ck.c */
extern const struct bench_impl bench_impl_spsc_ptr; /* impl_ck.c */
extern const struct bench_impl bench_impl_spsc_inline; /* impl_ck.c */
#ifdef RBUS_BENCH_HAVE_ZMQ
extern const struct bench_impl bench_impl_zmq_pubsub;   /* impl_zmq.c */
extern const struct bench_impl bench_impl_zmq_pushpull; /* impl_zmq.c */
#endif
#ifdef RBUS_BENCH_HAVE_GLIB
extern const struct bench_impl bench_impl_gasync; /* impl_gasync.c */
#endif
extern const struct bench_impl bench_impl_mutex; /* impl_mutex.c */

#endif
