/*
 * overload_cost.c - what one publish costs a publisher whose only
 * subscription is full, per overflow policy, with no other thread running:
 * the CPU floor under `ringbus-bench policies` (where a receiver shares the
 * machine and cross-core traffic adds to it). docs/benchmarks.md quotes it
 * to say where the time of an overloaded publish goes.
 *
 *   overload_cost [--messages N] [--reps R] [--payload BYTES]
 *
 * Prints ns per publish for drop-newest and drop-oldest (the ring stays
 * full: nobody receives), the same on a bus with the coarse clock
 * (rbus_config.time_source), and for block with the publisher draining the
 * ring itself between batches (a lossless publish for comparison), median
 * and range of R interleaved repetitions; and, as the floor, a failed
 * try-enqueue on a full raw ck_ring (MPMC) of the same capacity.
 */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <ck_ring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAPACITY 1024
#define DRAIN_BATCH 512 /* block: publishes between drains (< CAPACITY) */
#define MAX_REPS 31

struct setup {
    const char *name;
    rbus_overflow overflow;
    bool coarse;
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
};

static void drain(rbus_sub *sub)
{
    rbus_msg *batch[DRAIN_BATCH];
    int n;
    while ((n = rbus_recv_batch(sub, batch, DRAIN_BATCH, 0)) > 0)
        for (int i = 0; i < n; i++)
            rbus_msg_release(batch[i]);
}

/* ns per publish over `messages` publishes (block: drains untimed). */
static double measure(struct setup *s, const char *payload, size_t len, uint64_t messages)
{
    uint64_t timed = 0, done = 0;
    while (done < messages) {
        uint64_t chunk = messages - done < DRAIN_BATCH ? messages - done : DRAIN_BATCH;
        uint64_t t0 = bench_now_ns();
        for (uint64_t i = 0; i < chunk; i++) {
            if (rbus_publish(s->topic, payload, len) != 0) {
                fprintf(stderr, "overload_cost: %s: publish failed\n", s->name);
                exit(1);
            }
        }
        timed += bench_now_ns() - t0;
        done += chunk;
        if (s->overflow == RBUS_BLOCK)
            drain(s->sub);
    }
    return (double)timed / (double)messages;
}

/* The floor: ns per failed try-enqueue on a full ck_ring MPMC. */
struct raw_ring {
    ck_ring_t ring;
    ck_ring_buffer_t *buf;
};

static double measure_raw(struct raw_ring *r, uint64_t messages)
{
    static int item;
    uint64_t full = 0, t0 = bench_now_ns();
    for (uint64_t i = 0; i < messages; i++)
        full += !ck_ring_enqueue_mpmc(&r->ring, r->buf, &item);
    double ns = (double)(bench_now_ns() - t0) / (double)messages;
    if (full != messages) {
        fprintf(stderr, "overload_cost: the raw ring was not full\n");
        exit(1);
    }
    return ns;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    uint64_t messages = 2000000;
    int reps = 5;
    size_t payload_len = 64;
    /* Options come in pairs: name, value. */
    for (int i = 1; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--messages") && v)
            messages = strtoull(v, NULL, 10);
        else if (!strcmp(argv[i], "--reps") && v)
            reps = atoi(v);
        else if (!strcmp(argv[i], "--payload") && v)
            payload_len = strtoull(v, NULL, 10);
        else {
            fprintf(stderr,
                    "usage: overload_cost [--messages N] [--reps R (1..%d)] [--payload B]\n",
                    MAX_REPS);
            return 2;
        }
    }
    if (messages == 0 || reps < 1 || reps > MAX_REPS || payload_len > 65536) {
        fprintf(stderr, "overload_cost: bad arguments\n");
        return 2;
    }
    char *payload = calloc(1, payload_len ? payload_len : 1);
    if (!payload)
        return 1;

    struct setup setups[] = {
        {"drop-newest", RBUS_DROP_NEWEST, false, NULL, NULL, NULL},
        {"drop-oldest", RBUS_DROP_OLDEST, false, NULL, NULL, NULL},
        {"drop-newest, coarse clock", RBUS_DROP_NEWEST, true, NULL, NULL, NULL},
        {"drop-oldest, coarse clock", RBUS_DROP_OLDEST, true, NULL, NULL, NULL},
        {"block (drained inline)", RBUS_BLOCK, false, NULL, NULL, NULL},
    };
    enum { NSETUPS = sizeof setups / sizeof setups[0] };
    for (int k = 0; k < NSETUPS; k++) {
        struct setup *s = &setups[k];
        rbus_sub_opts so;
        rbus_sub_opts_init(&so);
        so.capacity = CAPACITY;
        so.overflow = s->overflow;
        rbus_config cfg;
        rbus_config_init(&cfg);
        if (s->coarse)
            cfg.time_source = RBUS_TIME_COARSE;
        if (rbus_create(&s->bus, &cfg) != 0 ||
            rbus_subscribe(s->bus, "bench.cost", &so, &s->sub) != 0 ||
            rbus_topic_open(s->bus, "bench.cost", &s->topic) != 0) {
            fprintf(stderr, "overload_cost: setup failed\n");
            return 1;
        }
        /* Fill the ring (and warm the pool) before anything is timed. */
        measure(s, payload, payload_len, CAPACITY * 4);
    }

    struct raw_ring raw;
    raw.buf = calloc(CAPACITY, sizeof *raw.buf);
    if (!raw.buf)
        return 1;
    ck_ring_init(&raw.ring, CAPACITY);
    static int filler;
    while (ck_ring_enqueue_mpmc(&raw.ring, raw.buf, &filler))
        ;

    bench_print_machine(stdout, FORMAT_TABLE);
    printf("overload_cost: one thread, one subscription of capacity %d, %zu B payloads, "
           "%llu publishes per repetition, %d interleaved repetitions\n",
           CAPACITY, payload_len, (unsigned long long)messages, reps);
    double ns[NSETUPS][MAX_REPS], raw_ns[MAX_REPS];
    for (int r = 0; r < reps; r++) {
        for (int k = 0; k < NSETUPS; k++)
            ns[k][r] = measure(&setups[k], payload, payload_len, messages);
        raw_ns[r] = measure_raw(&raw, messages);
    }
    printf("%-26s %10s %10s %10s\n", "policy", "ns_median", "ns_min", "ns_max");
    for (int k = 0; k < NSETUPS; k++) {
        qsort(ns[k], (size_t)reps, sizeof ns[k][0], cmp_double);
        printf("%-26s %10.1f %10.1f %10.1f\n", setups[k].name, ns[k][reps / 2], ns[k][0],
               ns[k][reps - 1]);
        drain(setups[k].sub);
        rbus_destroy(setups[k].bus);
    }
    qsort(raw_ns, (size_t)reps, sizeof raw_ns[0], cmp_double);
    printf("%-26s %10.1f %10.1f %10.1f\n", "raw ck_ring, full", raw_ns[reps / 2], raw_ns[0],
           raw_ns[reps - 1]);
    free(raw.buf);
    free(payload);
    return 0;
}
