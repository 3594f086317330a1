/*
 * timing_cost.c - what latency tracking costs a receive, with no other
 * thread running: a ring of CAPACITY messages is filled (untimed), then
 * received one rbus_recv at a time (timed), with rbus_sub_opts.
 * latency_sample 0 (off), 1 (every message) and 64 (one in 64), in
 * interleaved repetitions. docs/metrics.md quotes it ("Cost").
 *
 *   timing_cost [--messages N] [--reps R]
 */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAPACITY 1024
#define MAX_REPS 31

static const uint32_t samples[] = {0, 1, 64};
#define NSETUPS (sizeof samples / sizeof samples[0])

struct setup {
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
};

/* ns per receive over `messages` receives. */
static double measure(struct setup *s, uint64_t messages)
{
    uint64_t timed = 0, done = 0;
    char payload[64] = {0};
    while (done < messages) {
        uint64_t chunk = messages - done < CAPACITY ? messages - done : CAPACITY;
        for (uint64_t i = 0; i < chunk; i++)
            if (rbus_publish(s->topic, payload, sizeof payload) != 0) {
                fprintf(stderr, "timing_cost: publish failed\n");
                exit(1);
            }
        uint64_t t0 = bench_now_ns();
        for (uint64_t i = 0; i < chunk; i++) {
            rbus_msg *m;
            if (rbus_recv(s->sub, &m, 0) != 0) {
                fprintf(stderr, "timing_cost: recv failed\n");
                exit(1);
            }
            rbus_msg_release(m);
        }
        timed += bench_now_ns() - t0;
        done += chunk;
    }
    return (double)timed / (double)messages;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    uint64_t messages = 2000000;
    int reps = 7;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--messages") && i + 1 < argc)
            messages = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: timing_cost [--messages N] [--reps R]\n");
            return 2;
        }
    }
    if (messages < 1 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "usage: timing_cost [--messages N >= 1] [--reps 1..%d]\n", MAX_REPS);
        return 2;
    }
    struct setup s[NSETUPS];
    for (size_t k = 0; k < NSETUPS; k++) {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = CAPACITY;
        o.latency_sample = samples[k];
        if (rbus_create(&s[k].bus, NULL) || rbus_topic_open(s[k].bus, "cost.t", &s[k].topic) ||
            rbus_subscribe(s[k].bus, ">", &o, &s[k].sub)) {
            fprintf(stderr, "timing_cost: setup failed\n");
            return 1;
        }
        measure(&s[k], CAPACITY * 4); /* warm: caches, thread states */
    }
    double v[NSETUPS][MAX_REPS];
    for (int r = 0; r < reps; r++)
        for (size_t k = 0; k < NSETUPS; k++)
            v[k][r] = measure(&s[k], messages);
    bench_print_machine(stdout, FORMAT_TABLE);
    printf("timing_cost: %llu receives a run, %d interleaved runs, ns per rbus_recv\n",
           (unsigned long long)messages, reps);
    printf("%-18s %10s %10s %10s\n", "latency_sample", "ns_median", "ns_min", "ns_max");
    for (size_t k = 0; k < NSETUPS; k++) {
        qsort(v[k], (size_t)reps, sizeof v[k][0], cmp_dbl);
        printf("%-18u %10.1f %10.1f %10.1f\n", samples[k], v[k][reps / 2], v[k][0], v[k][reps - 1]);
    }
    for (size_t k = 0; k < NSETUPS; k++) {
        rbus_unsubscribe(s[k].sub);
        rbus_destroy(s[k].bus);
    }
    return 0;
}
