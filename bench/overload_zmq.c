/*
 * overload_zmq.c - the policies workload on ZeroMQ, for the overload
 * comparison: one PUB socket (which drops at its high-water mark, ZeroMQ's
 * only behaviour when a subscriber is slow) against one SUB that spends the
 * same work per message, inproc, the same capacity split between SNDHWM and
 * RCVHWM. A row of `ringbus-bench policies`, comparable with drop-newest.
 */
#define _GNU_SOURCE
#include "bench.h"

#if defined(RBUS_BENCH_HAVE_ZMQ)
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct zsub {
    void *sock;
    uint64_t work_ns;
    uint64_t *ages;
    size_t nages, cap;
    uint64_t last, max_gap;
};

static void *zsub_loop(void *arg)
{
    struct zsub *z = arg;
    unsigned char buf[4096];
    for (;;) {
        int n = zmq_recv(z->sock, buf, sizeof buf, 0);
        if (n < 0)
            break; /* ETERM: the context is shutting down */
        if (n < 16)
            continue;
        uint64_t now = bench_now_ns(), counter, stamp;
        bench_unstamp(buf, &counter, &stamp);
        if (counter == UINT64_MAX)
            break; /* end marker */
        if (z->nages < z->cap)
            z->ages[z->nages++] = now - stamp;
        if (z->last && counter > z->last && counter - z->last > z->max_gap)
            z->max_gap = counter - z->last;
        z->last = counter;
        bench_spin_for(z->work_ns);
    }
    return NULL;
}

int bench_zmq_overload(const struct bench_opts *o, struct bench_row *row)
{
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_PUB), *sub = zmq_socket(ctx, ZMQ_SUB);
    int snd = (int)(o->capacity / 2 ? o->capacity / 2 : 1);
    int rcv = (int)(o->capacity - (uint32_t)snd ? o->capacity - (uint32_t)snd : 1);
    int linger = 0;
    zmq_setsockopt(pub, ZMQ_SNDHWM, &snd, sizeof snd);
    zmq_setsockopt(sub, ZMQ_RCVHWM, &rcv, sizeof rcv);
    zmq_setsockopt(pub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sub, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(pub, "inproc://overload") || zmq_connect(sub, "inproc://overload") ||
        zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0)) {
        zmq_ctx_term(ctx);
        return 1;
    }
    /* A plain PUB cannot tell when the subscription has arrived: send
     * probes until one gets through (the subscriber ignores short ones). */
    for (int i = 0; i < 1000; i++) {
        zmq_send(pub, "p", 1, 0);
        char tmp[4];
        if (zmq_recv(sub, tmp, sizeof tmp, ZMQ_DONTWAIT) >= 0)
            break;
        struct timespec nap = {0, 1000000};
        nanosleep(&nap, NULL);
    }
    struct zsub z = {.sock = sub, .work_ns = o->work_ns, .cap = o->messages};
    z.ages = malloc(o->messages * sizeof *z.ages);
    if (!z.ages)
        return 1;
    memset(z.ages, 0xff, o->messages * sizeof *z.ages);
    pthread_t th;
    pthread_create(&th, NULL, zsub_loop, &z);
    unsigned char *buf = calloc(1, o->payload);
    long rss_warm = 0, rss_peak = 0;
    uint64_t t0 = bench_now_ns(), deadline = t0 + (uint64_t)(o->duration_s * 1e9), sent = 0;
    for (uint64_t i = 1; i <= o->messages; i++) {
        if ((i & 1023) == 0 && bench_now_ns() > deadline)
            break;
        bench_stamp(buf, i, bench_now_ns());
        zmq_send(pub, buf, o->payload, 0); /* PUB drops at the HWM */
        sent++;
        if ((i & 8191) == 0) {
            long rss = bench_rss_kib();
            if (rss > rss_peak)
                rss_peak = rss;
            if (i / 8192 == o->messages / 10 / 8192)
                rss_warm = rss;
        }
    }
    uint64_t t1 = bench_now_ns();
    /* The end marker may be dropped too: resend until the reader stops. */
    bench_stamp(buf, UINT64_MAX, 0);
    struct timespec nap = {0, 1000000};
    while (pthread_tryjoin_np(th, NULL) != 0) {
        zmq_send(pub, buf, o->payload, ZMQ_DONTWAIT);
        nanosleep(&nap, NULL);
    }
    uint64_t t2 = bench_now_ns();
    uint64_t received = z.nages;
    bench_row_str(row, "policy", "zmq-pub");
    bench_row_num(row, "attempts_per_s", "%.0f", (double)sent * 1e9 / (double)(t1 - t0));
    bench_row_num(row, "delivered_per_s", "%.0f", (double)received * 1e9 / (double)(t2 - t0));
    bench_row_num(row, "dropped_newest", "%.0f", (double)(sent - received));
    bench_row_num(row, "dropped_oldest", "%.0f", 0);
    bench_row_num(row, "dropped_timeout", "%.0f", 0);
    bench_row_num(row, "drop_pct", "%.2f", 100.0 * (double)(sent - received) / (double)sent);
    bench_row_num(row, "age_p50_us", "%.1f", (double)bench_percentile(z.ages, received, 50) / 1e3);
    bench_row_num(row, "age_p99_us", "%.1f", (double)bench_percentile(z.ages, received, 99) / 1e3);
    bench_row_num(row, "age_p999_us", "%.1f",
                  (double)bench_percentile(z.ages, received, 99.9) / 1e3);
    bench_row_num(row, "max_seq_gap", "%.0f", (double)z.max_gap);
    bench_row_num(row, "peak_depth", "%.0f", (double)o->capacity);
    bench_row_num(row, "peak_rss_mib", "%.1f", (double)rss_peak / 1024.0);
    bench_row_num(row, "rss_growth_kib", "%.0f", (double)(rss_peak - (rss_warm ? rss_warm : rss_peak)));
    bench_row_str(row, "allocs_per_msg", "n/a");
    /* ZeroMQ does not count its drops: received + dropped is sent by
     * construction, nothing to check. */
    bench_row_str(row, "accounting", "uncounted");
    free(buf);
    free(z.ages);
    zmq_close(pub);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return 0;
}
#else
int bench_zmq_overload(const struct bench_opts *o, struct bench_row *row)
{
    (void)o;
    (void)row;
    return -1; /* not built with ZeroMQ */
}
#endif
