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
 * full: nobody receives), and for block with the publisher draining the
 * ring itself between batches (a lossless publish for comparison), median
 * and range of R interleaved repetitions.
 */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAPACITY 1024
#define DRAIN_BATCH 512 /* block: publishes between drains (< CAPACITY) */
#define MAX_REPS 31

struct setup {
    const char *name;
    rbus_overflow overflow;
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
        {"drop-newest", RBUS_DROP_NEWEST, NULL, NULL, NULL},
        {"drop-oldest", RBUS_DROP_OLDEST, NULL, NULL, NULL},
        {"block (drained inline)", RBUS_BLOCK, NULL, NULL, NULL},
    };
    enum { NSETUPS = sizeof setups / sizeof setups[0] };
    for (int k = 0; k < NSETUPS; k++) {
        struct setup *s = &setups[k];
        rbus_sub_opts so;
        rbus_sub_opts_init(&so);
        so.capacity = CAPACITY;
        so.overflow = s->overflow;
        if (rbus_create(&s->bus, NULL) != 0 ||
            rbus_subscribe(s->bus, "bench.cost", &so, &s->sub) != 0 ||
            rbus_topic_open(s->bus, "bench.cost", &s->topic) != 0) {
            fprintf(stderr, "overload_cost: setup failed\n");
            return 1;
        }
        /* Fill the ring (and warm the pool) before anything is timed. */
        measure(s, payload, payload_len, CAPACITY * 4);
    }

    bench_print_machine(stdout, FORMAT_TABLE);
    printf("overload_cost: one thread, one subscription of capacity %d, %zu B payloads, "
           "%llu publishes per repetition, %d interleaved repetitions\n",
           CAPACITY, payload_len, (unsigned long long)messages, reps);
    double ns[NSETUPS][MAX_REPS];
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < NSETUPS; k++)
            ns[k][r] = measure(&setups[k], payload, payload_len, messages);
    printf("%-24s %10s %10s %10s\n", "policy", "ns_median", "ns_min", "ns_max");
    for (int k = 0; k < NSETUPS; k++) {
        qsort(ns[k], (size_t)reps, sizeof ns[k][0], cmp_double);
        printf("%-24s %10.1f %10.1f %10.1f\n", setups[k].name, ns[k][reps / 2], ns[k][0],
               ns[k][reps - 1]);
        drain(setups[k].sub);
        rbus_destroy(setups[k].bus);
    }
    free(payload);
    return 0;
}
