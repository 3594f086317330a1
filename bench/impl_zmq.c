/*
 * impl_zmq.c - the ZeroMQ inproc peers of `ringbus-bench peers`:
 * zmq-pubsub (XPUB/SUB, lossless with ZMQ_XPUB_NODROP) and zmq-pushpull.
 * Built when pkg-config finds libzmq.
 */
#define _GNU_SOURCE
#include "peers.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

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
    unsigned char *buf = run_buf(r);
    if (!buf)
        return NULL;
    uint64_t last = 0;
    run_pub_started(r, t->id);
    for (uint64_t c = 0; c < r->messages; c++) {
        run_stamp(r, buf, t->id, c, &last);
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
    unsigned char *buf = run_buf(r);
    if (!buf)
        return NULL;
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

const struct bench_impl bench_impl_zmq_pubsub = {
    .name = "zmq-pubsub",
    .throughput = pubsub_throughput,
    .latency = pubsub_latency,
    .wait_strategy = "XPUB (NODROP) -> SUB per receiver, inproc; zmq_send and zmq_recv "
                     "block (latency spin runs: zmq_recv ZMQ_DONTWAIT in a loop)",
};

const struct bench_impl bench_impl_zmq_pushpull = {
    .name = "zmq-pushpull",
    .throughput = pushpull_throughput,
    .latency = NULL,
    .wait_strategy = "PUSH per publisher -> one PULL, inproc; zmq_send and zmq_recv block",
};
