/*
 * pol_zmq.c - ZeroMQ inproc pub/sub as a system of the policies study: one
 * XPUB socket, one SUB socket per subscriber, the capacity split between
 * SNDHWM and RCVHWM (an inproc pipe holds their sum). Built when pkg-config
 * finds libzmq.
 */
#define _GNU_SOURCE
#include "policies.h"

#ifdef RBUS_BENCH_HAVE_ZMQ
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define ZSTUDY_MAX_SUBS 8

/* One subscriber's side, written only by its receiver thread (and read
 * after it is joined); padded so that receivers do not share a line. */
struct zstudy_sub {
    void *sock;
    uint64_t received;
    uint64_t left; /* unread when counted */
    bool drained;
    int rcvtimeo; /* ZMQ_RCVTIMEO as last set */
    char pad[64 - sizeof(void *) - 2 * sizeof(uint64_t) - sizeof(bool) - sizeof(int)];
};

struct zstudy {
    void *ctx;
    void *pub;
    int nsubs;
    bool lossless;
    uint64_t offered;  /* publisher thread */
    uint64_t timeouts; /* publisher thread: sends that timed out (block-timeout) */
    /* Lossless policies: what every subscriber gets in all, set by finish,
     * so that a receiver which has it all can return -1. */
    _Atomic uint64_t expected;
    struct zstudy_sub sub[ZSTUDY_MAX_SUBS];
};

/* SNDHWM + RCVHWM = capacity, each at least 1 (0 would mean unlimited). */
static void zstudy_split(uint32_t capacity, int *snd, int *rcv)
{
    *snd = (int)(capacity / 2);
    *rcv = (int)(capacity - capacity / 2);
}

static int zstudy_sndtimeo(int64_t ns)
{
    if (ns <= 0)
        return 0;
    int64_t ms = ns / 1000000 + (ns % 1000000 != 0);
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

static const char *zstudy_unsupported(const struct study_cfg *c)
{
    if (c->policy == POL_DROP_OLDEST)
        return "ZeroMQ has no drop-oldest; ZMQ_CONFLATE keeps only 1";
    if (c->policy != POL_BLOCK && c->policy != POL_BLOCK_TIMEOUT && c->policy != POL_DROP_NEWEST)
        return "unknown policy";
    if (c->capacity < 2)
        return "ZeroMQ needs capacity >= 2 (SNDHWM + RCVHWM, each >= 1)";
    if (c->capacity > INT_MAX)
        return "ZeroMQ's HWMs are ints";
    return NULL;
}

static void zstudy_describe(const struct study_cfg *c, char *buf, size_t len)
{
    int snd, rcv;
    zstudy_split(c->capacity, &snd, &rcv);
    if (c->policy == POL_BLOCK)
        snprintf(buf, len, "XPUB, XPUB_NODROP, SNDHWM %d + RCVHWM %d", snd, rcv);
    else if (c->policy == POL_BLOCK_TIMEOUT)
        snprintf(buf, len, "XPUB, XPUB_NODROP, SNDTIMEO %d ms, SNDHWM %d + RCVHWM %d",
                 zstudy_sndtimeo(c->block_timeout_ns), snd, rcv);
    else
        snprintf(buf, len, "PUB-side HWM drop (newest), SNDHWM %d + RCVHWM %d", snd, rcv);
}

static bool zstudy_set(void *s, int opt, int v)
{
    return zmq_setsockopt(s, opt, &v, sizeof v) == 0;
}

static void zstudy_close(void *state)
{
    struct zstudy *z = state;
    for (int i = 0; i < z->nsubs; i++)
        zmq_close(z->sub[i].sock);
    if (z->pub)
        zmq_close(z->pub);
    if (z->ctx)
        zmq_ctx_term(z->ctx);
    free(z);
}

static int zstudy_fail(struct zstudy *z, const char *what)
{
    fprintf(stderr, "ringbus-bench: zmq: %s: %s\n", what, zmq_strerror(errno));
    zstudy_close(z);
    return 1;
}

static int zstudy_open(const struct study_cfg *c, void **state)
{
    static const char ep[] = "inproc://ringbus-study";
    if (zstudy_unsupported(c) || c->subscribers < 1 || c->subscribers > ZSTUDY_MAX_SUBS) {
        fprintf(stderr, "ringbus-bench: zmq: configuration not supported\n");
        return 1;
    }
    struct zstudy *z = calloc(1, sizeof *z);
    if (!z) {
        fprintf(stderr, "ringbus-bench: zmq: out of memory\n");
        return 1;
    }
    z->lossless = c->policy != POL_DROP_NEWEST;
    atomic_init(&z->expected, UINT64_MAX);
    int snd, rcv;
    zstudy_split(c->capacity, &snd, &rcv);
    if (!(z->ctx = zmq_ctx_new()))
        return zstudy_fail(z, "zmq_ctx_new");
    /* XPUB rather than PUB in every policy: it reads the subscriptions
     * (VERBOSE: each subscriber's, not only the first ""), so open can wait
     * for all of them instead of losing the first messages to the slow
     * joiner; without NODROP it drops at the HWM exactly as PUB does. */
    if (!(z->pub = zmq_socket(z->ctx, ZMQ_XPUB)))
        return zstudy_fail(z, "zmq_socket(XPUB)");
    int sndtimeo = c->policy == POL_BLOCK_TIMEOUT ? zstudy_sndtimeo(c->block_timeout_ns) : -1;
    if (!zstudy_set(z->pub, ZMQ_LINGER, 0) || !zstudy_set(z->pub, ZMQ_SNDHWM, snd) ||
        !zstudy_set(z->pub, ZMQ_XPUB_VERBOSE, 1) ||
        !zstudy_set(z->pub, ZMQ_XPUB_NODROP, z->lossless) ||
        !zstudy_set(z->pub, ZMQ_SNDTIMEO, sndtimeo) || !zstudy_set(z->pub, ZMQ_RCVTIMEO, 100))
        return zstudy_fail(z, "XPUB options");
    if (zmq_bind(z->pub, ep) != 0)
        return zstudy_fail(z, "zmq_bind");
    for (int i = 0; i < c->subscribers; i++) {
        struct zstudy_sub *s = &z->sub[i];
        if (!(s->sock = zmq_socket(z->ctx, ZMQ_SUB)))
            return zstudy_fail(z, "zmq_socket(SUB)");
        z->nsubs++;
        s->rcvtimeo = 100;
        if (!zstudy_set(s->sock, ZMQ_LINGER, 0) || !zstudy_set(s->sock, ZMQ_RCVHWM, rcv) ||
            !zstudy_set(s->sock, ZMQ_RCVTIMEO, s->rcvtimeo) ||
            zmq_setsockopt(s->sock, ZMQ_SUBSCRIBE, "", 0) != 0)
            return zstudy_fail(z, "SUB options");
        if (zmq_connect(s->sock, ep) != 0)
            return zstudy_fail(z, "zmq_connect");
    }
    /* Each subscription arrives as a message of 1 (subscribe) + topic. */
    uint64_t until = bench_now_ns() + 2000000000u;
    for (int got = 0; got < c->subscribers;) {
        unsigned char m[8];
        int n = zmq_recv(z->pub, m, sizeof m, 0);
        if (n >= 1 && m[0] == 1)
            got++;
        else if (n < 0 && errno != EAGAIN && errno != EINTR)
            return zstudy_fail(z, "reading subscriptions");
        if (got < c->subscribers && bench_now_ns() > until) {
            fprintf(stderr, "ringbus-bench: zmq: %d of %d subscriptions arrived in 2 s\n", got,
                    c->subscribers);
            zstudy_close(z);
            return 1;
        }
    }
    *state = z;
    return 0;
}

static int zstudy_publish(void *state, const void *buf, size_t len)
{
    struct zstudy *z = state;
    z->offered++;
    for (;;) {
        if (zmq_send(z->pub, buf, len, 0) >= 0)
            return 0;
        if (errno == EAGAIN) {
            /* SNDTIMEO ran out with a subscriber still full (NODROP): the
             * message went to none of them. */
            z->timeouts++;
            return 0;
        }
        if (errno != EINTR) {
            fprintf(stderr, "ringbus-bench: zmq: zmq_send: %s\n", zmq_strerror(errno));
            return 1;
        }
    }
}

static int zstudy_recv(void *state, int sub, unsigned char hdr[16], int timeout_ms)
{
    struct zstudy *z = state;
    struct zstudy_sub *s = &z->sub[sub];
    if (atomic_load_explicit(&z->expected, memory_order_acquire) == s->received)
        return -1;
    int want = timeout_ms < 0 ? -1 : timeout_ms;
    if (want != s->rcvtimeo) {
        if (!zstudy_set(s->sock, ZMQ_RCVTIMEO, want)) {
            fprintf(stderr, "ringbus-bench: zmq: ZMQ_RCVTIMEO: %s\n", zmq_strerror(errno));
            return -1;
        }
        s->rcvtimeo = want;
    }
    memset(hdr, 0, 16);
    /* zmq_recv truncates to the buffer and returns the full size. */
    if (zmq_recv(s->sock, hdr, 16, 0) >= 0) {
        s->received++;
        return 1;
    }
    if (errno == EAGAIN || errno == EINTR)
        return 0;
    fprintf(stderr, "ringbus-bench: zmq: zmq_recv: %s\n", zmq_strerror(errno));
    return -1;
}

static void zstudy_finish(void *state)
{
    struct zstudy *z = state;
    /* NODROP: a message that was not refused reaches every subscriber. */
    if (z->lossless)
        atomic_store_explicit(&z->expected, z->offered - z->timeouts, memory_order_release);
}

static void zstudy_counts(void *state, int sub, struct study_counts *out)
{
    struct zstudy *z = state;
    struct zstudy_sub *s = &z->sub[sub];
    memset(out, 0, sizeof *out);
    out->offered = z->offered;
    out->received = s->received;
    if (!z->lossless)
        return; /* drops at the HWM are not counted anywhere */
    out->counted = true;
    out->dropped_timeout = z->timeouts;
    /* What the receiver left unread (its thread is joined: the socket is
     * ours now), so that offered = received + dropped + depth is checked
     * against what ZeroMQ delivered, not made true by construction. */
    unsigned char tmp[16];
    while (!s->drained && zmq_recv(s->sock, tmp, sizeof tmp, ZMQ_DONTWAIT) >= 0)
        s->left++;
    s->drained = true;
    out->depth = s->left;
}

const struct study_sys study_zmq = {
    .name = "zmq",
    .unsupported = zstudy_unsupported,
    .describe = zstudy_describe,
    .open = zstudy_open,
    .publish = zstudy_publish,
    .recv = zstudy_recv,
    .finish = zstudy_finish,
    .counts = zstudy_counts,
    .close = zstudy_close,
};
#endif
