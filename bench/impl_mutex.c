/*
 * impl_mutex.c - the mutex + condition-variable ring peer of
 * `ringbus-bench peers` (mutex-ring): what most people write by hand.
 */
#define _GNU_SOURCE
#include "peers.h"

#include <ck_pr.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    unsigned char *buf = run_buf(r);
    if (!buf)
        return NULL;
    uint64_t last = 0;
    run_pub_started(r, t->id);
    for (uint64_t c = 0; c < r->messages; c++) {
        run_stamp(r, buf, t->id, c, &last);
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
    unsigned char *buf = run_buf(r);
    if (!buf)
        return NULL;
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

const struct bench_impl bench_impl_mutex = {
    .name = "mutex-ring",
    .throughput = mutex_throughput,
    .latency = mutex_latency,
    .wait_strategy = "pthread mutex + 2 condvars, a ring of payload copies per receiver; "
                     "push and pop block on the condvars (latency spin runs: "
                     "lock/check/unlock loop)",
};
