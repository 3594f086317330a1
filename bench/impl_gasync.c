/*
 * impl_gasync.c - the GLib GAsyncQueue peer of `ringbus-bench peers`
 * (gasyncqueue). Built when pkg-config finds glib-2.0.
 */
#define _GNU_SOURCE
#include "peers.h"

#include <glib.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

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

const struct bench_impl bench_impl_gasync = {
    .name = "gasyncqueue",
    .throughput = gaq_throughput,
    .latency = gaq_latency,
    .wait_strategy = "one GAsyncQueue per receiver, one refcounted malloc'd copy per message; "
                     "receivers block in g_async_queue_pop (latency spin runs: try_pop loop); "
                     "publisher yields while a queue holds capacity",
};
