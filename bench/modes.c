/*
 * modes.c - `ringbus-bench throughput` and `ringbus-bench latency`: ringbus
 * alone, across fan-out shapes and payload sizes, and its paced one-way
 * latency with the default wait strategy and with sleeping receivers.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int bench_mode_throughput(const struct bench_opts *o)
{
    static const int shapes[][2] = {{1, 1}, {1, 4}, {2, 1}, {2, 4}};
    static const size_t payloads[] = {16, 64, 256, 1024, 4096};
    int reps = o->reps > 0 ? o->reps : 3;
    bench_print_machine(stdout, o->format);
    if (o->format == FORMAT_TABLE)
        printf("throughput: lossless (block policy), %llu messages per publisher, capacity %u, "
               "median of %d runs; rate = published messages/s\n",
               (unsigned long long)o->messages, o->capacity, reps);
    struct bench_row rows[40];
    memset(rows, 0, sizeof rows);
    int n = 0, rc = 0, total = 0, done = 0;
    uint64_t started = bench_now_ns();
    for (size_t s = 0; s < 4; s++)
        for (size_t p = 0; p < 5; p++)
            total += (!o->payload_set || payloads[p] == o->payload);
    for (size_t s = 0; s < 4; s++) {
        for (size_t p = 0; p < 5; p++) {
            if (o->payload_set && payloads[p] != o->payload)
                continue;
            struct scenario sc = {.publishers = shapes[s][0], .subscribers = shapes[s][1],
                                  .payload = payloads[p], .messages = o->messages,
                                  .capacity = o->capacity, .spin_ns = o->spin_ns};
            double r[16];
            for (int k = 0; k < reps && k < 16; k++) {
                r[k] = bench_impl_ringbus.throughput(&sc);
                if (r[k] < 0) {
                    fprintf(stderr, "ringbus-bench: %d->%d %zu B failed verification\n",
                            sc.publishers, sc.subscribers, sc.payload);
                    rc = 1;
                }
            }
            qsort(r, (size_t)reps, sizeof r[0], cmp_double);
            struct bench_row *row = &rows[n++];
            char shape[16];
            snprintf(shape, sizeof shape, "%d->%d", sc.publishers, sc.subscribers);
            bench_row_str(row, "shape", shape);
            bench_row_num(row, "payload_b", "%.0f", (double)sc.payload);
            bench_row_num(row, "msgs_per_s", "%.0f", r[reps / 2]);
            bench_row_num(row, "min", "%.0f", r[0]);
            bench_row_num(row, "max", "%.0f", r[reps - 1]);
            bench_row_num(row, "mib_per_s", "%.1f",
                          r[reps / 2] * (double)sc.payload / (1024.0 * 1024.0));
            bench_progress("throughput", (double)++done / total, started);
        }
    }
    bench_progress_done();
    bench_print_rows(stdout, o->format, rows, n);
    return rc;
}

int bench_mode_latency(const struct bench_opts *o)
{
    static const uint64_t paces[] = {10000, 100000};
    int reps = o->reps > 0 ? o->reps : 3;
    bench_print_machine(stdout, o->format);
    if (o->format == FORMAT_TABLE)
        printf("latency: one-way, publish to receive, a message every PACE, stamped by the "
               "bench just before the publish; percentiles over %d runs together\n",
               reps);
    struct bench_row rows[4];
    memset(rows, 0, sizeof rows);
    int n = 0, rc = 0;
    uint64_t started = bench_now_ns();
    for (size_t p = 0; p < 2; p++) {
        for (int sleeping = 0; sleeping < 2; sleeping++) {
            /* About 0.2 s per run at 10 us, 1 s at 100 us. */
            uint64_t rounds = paces[p] == 10000 ? 20000 : 10000;
            struct latency_run lr = {.pace_ns = paces[p], .rounds = rounds,
                                     .sleeping_receiver = sleeping, .capacity = o->capacity};
            uint64_t *lat = malloc(rounds * (size_t)reps * sizeof *lat);
            if (!lat)
                return 1;
            for (int k = 0; k < reps; k++)
                if (bench_impl_ringbus.latency(&lr, lat + (size_t)k * rounds) != 0) {
                    fprintf(stderr, "ringbus-bench: latency run failed\n");
                    rc = 1;
                }
            size_t all = rounds * (size_t)reps;
            struct bench_row *row = &rows[n++];
            bench_row_str(row, "pace", paces[p] == 10000 ? "10us" : "100us");
            bench_row_str(row, "receiver", sleeping ? "sleeping (spin_ns<0)" : "default spin");
            bench_row_num(row, "p50_us", "%.2f", (double)bench_percentile(lat, all, 50) / 1e3);
            bench_row_num(row, "p99_us", "%.2f", (double)bench_percentile(lat, all, 99) / 1e3);
            bench_row_num(row, "p999_us", "%.2f", (double)bench_percentile(lat, all, 99.9) / 1e3);
            free(lat);
            bench_progress("latency", (double)n / 4, started);
        }
    }
    bench_progress_done();
    bench_print_rows(stdout, o->format, rows, n);
    return rc;
}
