/*
 * impl_ringbus.c - ringbus as one implementation of the bench scenarios
 * (struct bench_impl), so `throughput`, `latency` and `peers` measure it
 * exactly the way they measure its peers.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct rb_rx {
    rbus_sub *sub;
    struct bench_verify v;
    uint64_t expect;
    uint64_t done_ns;
};

struct rb_pub {
    rbus_topic *topic;
    const struct scenario *sc;
    uint64_t id;
    uint32_t batch; /* > 1: rbus_publish_batch of this many */
    pthread_barrier_t *start;
    int rc;
};

static void *rb_receive(void *arg)
{
    struct rb_rx *r = arg;
    rbus_msg *batch[64];
    while (r->v.received < r->expect) {
        int n = rbus_recv_batch(r->sub, batch, 64, -1);
        if (n < 0) {
            r->v.bad = true;
            break;
        }
        for (int i = 0; i < n; i++) {
            bench_verify_one(&r->v, rbus_msg_data(batch[i]));
            rbus_msg_release(batch[i]);
        }
    }
    r->done_ns = bench_now_ns();
    return NULL;
}

static void *rb_publish(void *arg)
{
    struct rb_pub *p = arg;
    const size_t len = p->sc->payload;
    const uint32_t k = p->batch > 1 ? p->batch : 1;
    unsigned char *buf = calloc(k, len);
    rbus_payload *v = calloc(k, sizeof *v);
    if (!buf || !v) {
        p->rc = -1;
        goto out;
    }
    for (uint32_t i = 0; i < k; i++)
        v[i] = (rbus_payload){buf + (size_t)i * len, len};
    pthread_barrier_wait(p->start);
    for (uint64_t c = 0; c < p->sc->messages;) {
        if (k == 1) {
            bench_stamp(buf, p->id, c);
            int rc = rbus_publish(p->topic, buf, len);
            if (rc != 0) {
                p->rc = rc;
                break;
            }
            c++;
            continue;
        }
        uint64_t n = p->sc->messages - c < k ? p->sc->messages - c : k;
        for (uint64_t i = 0; i < n; i++)
            bench_stamp(buf + i * len, p->id, c + i);
        int rc = rbus_publish_batch(p->topic, v, n, NULL, NULL);
        if (rc != (int)n) {
            p->rc = rc < 0 ? rc : -1;
            break;
        }
        c += n;
    }
out:
    free(buf);
    free(v);
    return NULL;
}

static double rb_throughput(const struct scenario *sc)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    if (sc->payload > cfg.max_payload)
        cfg.max_payload = (uint32_t)sc->payload;
    if (sc->coarse_time)
        cfg.time_source = RBUS_TIME_COARSE;
    rbus *bus;
    rbus_topic *topic;
    if (rbus_create(&bus, &cfg) || rbus_topic_open(bus, "bench.peers", &topic))
        return -1;
    struct rb_rx rx[64];
    pthread_t rth[64], pth[64];
    struct rb_pub pub[64];
    memset(rx, 0, sizeof rx);
    for (int i = 0; i < sc->subscribers; i++) {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = sc->capacity;
        o.spin_ns = sc->spin_ns;
        if (rbus_subscribe(bus, "bench.peers", &o, &rx[i].sub))
            return -1;
        rx[i].expect = sc->messages * (uint64_t)sc->publishers;
        pthread_create(&rth[i], NULL, rb_receive, &rx[i]);
    }
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)sc->publishers + 1);
    for (int i = 0; i < sc->publishers; i++) {
        pub[i] = (struct rb_pub){
            .topic = topic, .sc = sc, .id = (uint64_t)i, .batch = sc->batch, .start = &start};
        pthread_create(&pth[i], NULL, rb_publish, &pub[i]);
    }
    pthread_barrier_wait(&start);
    uint64_t t0 = bench_now_ns();
    bool ok = true;
    for (int i = 0; i < sc->publishers; i++) {
        pthread_join(pth[i], NULL);
        ok &= pub[i].rc == 0;
    }
    uint64_t t1 = t0;
    for (int i = 0; i < sc->subscribers; i++) {
        pthread_join(rth[i], NULL);
        ok &= !rx[i].v.bad && rx[i].v.received == rx[i].expect;
        if (rx[i].done_ns > t1)
            t1 = rx[i].done_ns;
    }
    pthread_barrier_destroy(&start);
    rbus_destroy(bus);
    if (!ok)
        return -1;
    return (double)(sc->messages * (uint64_t)sc->publishers) * 1e9 / (double)(t1 - t0);
}

/* Publishers hand rbus_publish_batch 64 messages at a time. */
static double rb_throughput_batch(const struct scenario *sc)
{
    struct scenario b = *sc;
    b.batch = 64;
    return rb_throughput(&b);
}

/* Messages stamped with the coarse clock (RBUS_TIME_COARSE). */
static double rb_throughput_coarse(const struct scenario *sc)
{
    struct scenario c = *sc;
    c.coarse_time = true;
    return rb_throughput(&c);
}

struct rb_lat {
    rbus_topic *topic;
    rbus_sub *sub;
    const struct latency_run *lr;
    uint64_t *lat;
    pthread_barrier_t start;
    int rx_rc, pub_rc;
};

static void *rb_lat_receive(void *arg)
{
    struct rb_lat *l = arg;
    pthread_barrier_wait(&l->start);
    for (uint64_t i = 0; i < l->lr->rounds; i++) {
        rbus_msg *m;
        int rc = rbus_recv(l->sub, &m, -1);
        if (rc != 0) {
            l->rx_rc = rc;
            return NULL;
        }
        uint64_t now = bench_now_ns(), stamp, counter;
        bench_unstamp(rbus_msg_data(m), &stamp, &counter);
        if (counter != i)
            l->rx_rc = -1;
        l->lat[i] = now - stamp;
        rbus_msg_release(m);
    }
    return NULL;
}

static void *rb_lat_publish(void *arg)
{
    struct rb_lat *l = arg;
    unsigned char buf[64] = {0};
    uint64_t last = 0;
    pthread_barrier_wait(&l->start);
    for (uint64_t i = 0; i < l->lr->rounds && !l->pub_rc; i++) {
        /* Relative pacing, as the peers do: after a preemption the next
         * message waits a full pace instead of a burst catching up. */
        uint64_t now;
        do
            now = bench_now_ns();
        while (now - last < l->lr->pace_ns);
        last = now;
        bench_stamp(buf, now, i);
        l->pub_rc = rbus_publish(l->topic, buf, sizeof buf);
    }
    return NULL;
}

/* Publisher and receiver each on a thread of its own, released together
 * while the main thread waits, as the peers' harness runs them: a
 * publisher that is the main thread, publishing as soon as it has created
 * its receiver, shares its CPU with it for milliseconds at the start
 * (docs/benchmarks.md). */
static int rb_latency(const struct latency_run *lr, uint64_t *lat)
{
    rbus *bus;
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = lr->capacity;
    o.spin_ns = lr->sleeping_receiver ? -1 : 0;
    struct rb_lat l = {.lr = lr, .lat = lat};
    if (rbus_create(&bus, NULL))
        return -1;
    if (rbus_subscribe(bus, "bench.lat", &o, &l.sub) ||
        rbus_topic_open(bus, "bench.lat", &l.topic)) {
        rbus_destroy(bus);
        return -1;
    }
    pthread_barrier_init(&l.start, NULL, 3);
    pthread_t rx, pub;
    pthread_create(&rx, NULL, rb_lat_receive, &l);
    pthread_create(&pub, NULL, rb_lat_publish, &l);
    pthread_barrier_wait(&l.start);
    pthread_join(pub, NULL);
    pthread_join(rx, NULL);
    pthread_barrier_destroy(&l.start);
    rbus_destroy(bus);
    return l.pub_rc ? l.pub_rc : l.rx_rc;
}

const struct bench_impl bench_impl_ringbus = {
    .name = "ringbus",
    .throughput = rb_throughput,
    .latency = rb_latency,
    .wait_strategy = "block policy; receivers spin spin_ns (default 20 us: pauses, and "
                     "yields while other threads need the core) then sleep on a futex; "
                     "latency 'sleeping' = spin_ns < 0",
};

const struct bench_impl bench_impl_ringbus_batch = {
    .name = "ringbus-batch64",
    .throughput = rb_throughput_batch,
    .wait_strategy = "as ringbus; publishers call rbus_publish_batch with 64 messages",
};

const struct bench_impl bench_impl_ringbus_coarse = {
    .name = "ringbus-coarse",
    .throughput = rb_throughput_coarse,
    .wait_strategy = "as ringbus; the bus stamps messages with CLOCK_MONOTONIC_COARSE "
                     "(rbus_config.time_source)",
};
