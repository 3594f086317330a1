/*
 * pol_nng.c - nng pub0/sub0 over inproc as a system of the policies study:
 * one pub0 socket, one sub0 socket per subscriber, whose receive queue
 * (NNG_OPT_RECVBUF) is the capacity and whose NNG_OPT_SUB_PREFNEW picks
 * which message a full queue drops. Built when pkg-config finds nng.
 */
#define _GNU_SOURCE
#include "policies.h"

#ifdef RBUS_BENCH_HAVE_NNG
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/pubsub0/sub.h>

#define NSTUDY_MAX_SUBS 8
#define NSTUDY_MAX_BUF 8192 /* nng's limit for RECVBUF and SENDBUF */

/* One subscriber's side, written only by its receiver thread (and read
 * after it is joined); padded so that receivers do not share a line. */
struct nstudy_sub {
    nng_socket sock;
    uint64_t received;
    nng_duration recvtimeo; /* NNG_OPT_RECVTIMEO as last set */
    char pad[64 - sizeof(nng_socket) - sizeof(uint64_t) - sizeof(nng_duration)];
};

struct nstudy {
    nng_socket pub;
    int nsubs;
    uint64_t offered; /* publisher thread */
    atomic_int pipes; /* pipes started, on either side */
    struct nstudy_sub sub[NSTUDY_MAX_SUBS];
};

static const char *nstudy_unsupported(const struct study_cfg *c)
{
    if (c->policy == POL_BLOCK || c->policy == POL_BLOCK_TIMEOUT)
        return "nng pub0 never blocks";
    if (c->policy != POL_DROP_OLDEST && c->policy != POL_DROP_NEWEST)
        return "unknown policy";
    if (c->capacity < 1 || c->capacity > NSTUDY_MAX_BUF)
        return "nng's RECVBUF is at most 8192";
    return NULL;
}

static void nstudy_describe(const struct study_cfg *c, char *buf, size_t len)
{
    snprintf(buf, len, "sub0 RECVBUF %u, SUB_PREFNEW %s (drops %s); pub0 SENDBUF %d (max)",
             (unsigned)c->capacity, c->policy == POL_DROP_OLDEST ? "true" : "false",
             c->policy == POL_DROP_OLDEST ? "oldest" : "newest", NSTUDY_MAX_BUF);
}

static void nstudy_close(void *state)
{
    struct nstudy *n = state;
    for (int i = 0; i < n->nsubs; i++)
        nng_close(n->sub[i].sock);
    if (nng_socket_id(n->pub) > 0)
        nng_close(n->pub);
    free(n);
}

static int nstudy_fail(struct nstudy *n, const char *what, int rv)
{
    fprintf(stderr, "ringbus-bench: nng: %s: %s\n", what, nng_strerror(rv));
    nstudy_close(n);
    return 1;
}

static void nstudy_pipe_added(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    struct nstudy *n = arg;
    (void)p;
    (void)ev;
    atomic_fetch_add(&n->pipes, 1);
}

static int nstudy_open(const struct study_cfg *c, void **state)
{
    static atomic_int serial;
    if (nstudy_unsupported(c) || c->subscribers < 1 || c->subscribers > NSTUDY_MAX_SUBS) {
        fprintf(stderr, "ringbus-bench: nng: configuration not supported\n");
        return 1;
    }
    struct nstudy *n = calloc(1, sizeof *n);
    if (!n) {
        fprintf(stderr, "ringbus-bench: nng: out of memory\n");
        return 1;
    }
    atomic_init(&n->pipes, 0);
    /* inproc names are process-wide: one per open, so that a socket still
     * closing cannot take this run's subscribers. */
    char url[64];
    snprintf(url, sizeof url, "inproc://ringbus-study-%d", atomic_fetch_add(&serial, 1));
    int rv;
    if ((rv = nng_pub0_open(&n->pub)) != 0)
        return nstudy_fail(n, "nng_pub0_open", rv);
    /* pub0's per-subscriber send queue drops its oldest when full, whatever
     * the subscriber prefers: at its largest it stays out of the way, and
     * the subscriber's RECVBUF queue is the one that applies the policy. */
    if ((rv = nng_socket_set_int(n->pub, NNG_OPT_SENDBUF, NSTUDY_MAX_BUF)) != 0)
        return nstudy_fail(n, "NNG_OPT_SENDBUF", rv);
    if ((rv = nng_pipe_notify(n->pub, NNG_PIPE_EV_ADD_POST, nstudy_pipe_added, n)) != 0)
        return nstudy_fail(n, "nng_pipe_notify", rv);
    if ((rv = nng_listen(n->pub, url, NULL, 0)) != 0)
        return nstudy_fail(n, "nng_listen", rv);
    for (int i = 0; i < c->subscribers; i++) {
        struct nstudy_sub *s = &n->sub[i];
        if ((rv = nng_sub0_open(&s->sock)) != 0)
            return nstudy_fail(n, "nng_sub0_open", rv);
        n->nsubs++;
        s->recvtimeo = 100;
        if ((rv = nng_socket_set_int(s->sock, NNG_OPT_RECVBUF, (int)c->capacity)) != 0 ||
            (rv = nng_socket_set_bool(s->sock, NNG_OPT_SUB_PREFNEW,
                                      c->policy == POL_DROP_OLDEST)) != 0 ||
            (rv = nng_socket_set_ms(s->sock, NNG_OPT_RECVTIMEO, s->recvtimeo)) != 0 ||
            (rv = nng_socket_set(s->sock, NNG_OPT_SUB_SUBSCRIBE, "", 0)) != 0)
            return nstudy_fail(n, "sub0 options", rv);
        if ((rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_POST, nstudy_pipe_added, n)) != 0)
            return nstudy_fail(n, "nng_pipe_notify", rv);
        if ((rv = nng_dial(s->sock, url, NULL, 0)) != 0)
            return nstudy_fail(n, "nng_dial", rv);
    }
    /* Dialing returns before the pipes start; a message sent before the
     * publisher's pipe to a subscriber has started does not reach it. */
    int want = 2 * c->subscribers;
    uint64_t until = bench_now_ns() + 2000000000u;
    while (atomic_load(&n->pipes) < want) {
        if (bench_now_ns() > until) {
            fprintf(stderr, "ringbus-bench: nng: %d of %d pipes started in 2 s\n",
                    atomic_load(&n->pipes), want);
            nstudy_close(n);
            return 1;
        }
        struct timespec nap = {0, 1000000};
        nanosleep(&nap, NULL);
    }
    *state = n;
    return 0;
}

static int nstudy_publish(void *state, const void *buf, size_t len)
{
    struct nstudy *n = state;
    nng_msg *m = NULL;
    int rv;
    n->offered++;
    if ((rv = nng_msg_alloc(&m, 0)) != 0 || (rv = nng_msg_append(m, buf, len)) != 0 ||
        (rv = nng_sendmsg(n->pub, m, 0)) != 0) {
        if (m)
            nng_msg_free(m);
        fprintf(stderr, "ringbus-bench: nng: publish: %s\n", nng_strerror(rv));
        return 1;
    }
    return 0;
}

static int nstudy_recv(void *state, int sub, unsigned char hdr[16], int timeout_ms)
{
    struct nstudy *n = state;
    struct nstudy_sub *s = &n->sub[sub];
    nng_duration want = timeout_ms < 0 ? NNG_DURATION_INFINITE : timeout_ms;
    int rv;
    if (want != s->recvtimeo) {
        if ((rv = nng_socket_set_ms(s->sock, NNG_OPT_RECVTIMEO, want)) != 0) {
            fprintf(stderr, "ringbus-bench: nng: NNG_OPT_RECVTIMEO: %s\n", nng_strerror(rv));
            return -1;
        }
        s->recvtimeo = want;
    }
    nng_msg *m;
    if ((rv = nng_recvmsg(s->sock, &m, 0)) != 0) {
        if (rv == NNG_ETIMEDOUT)
            return 0;
        if (rv != NNG_ECLOSED)
            fprintf(stderr, "ringbus-bench: nng: nng_recvmsg: %s\n", nng_strerror(rv));
        return -1;
    }
    size_t len = nng_msg_len(m);
    memset(hdr, 0, 16);
    memcpy(hdr, nng_msg_body(m), len < 16 ? len : 16);
    nng_msg_free(m);
    s->received++;
    return 1;
}

static void nstudy_finish(void *state)
{
    /* Nothing to close: pub0 cannot tell its subscribers it is done, and
     * closing a sub0 socket would discard what it holds. */
    (void)state;
}

static void nstudy_counts(void *state, int sub, struct study_counts *out)
{
    struct nstudy *n = state;
    memset(out, 0, sizeof *out);
    out->offered = n->offered; /* nng counts no drops: not checked */
    out->received = n->sub[sub].received;
}

const struct study_sys study_nng = {
    .name = "nng",
    .unsupported = nstudy_unsupported,
    .describe = nstudy_describe,
    .open = nstudy_open,
    .publish = nstudy_publish,
    .recv = nstudy_recv,
    .finish = nstudy_finish,
    .counts = nstudy_counts,
    .close = nstudy_close,
};
#endif
