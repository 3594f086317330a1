/*
 * modes.c - `ringbus-bench throughput` and `ringbus-bench latency`: ringbus
 * alone, across fan-out shapes and payload sizes, and its paced one-way
 * latency with the default wait strategy and with sleeping receivers.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int bench_mode_throughput(const struct bench_opts *o)
{
    static const int sweep[][2] = {{1, 1}, {1, 4}, {2, 1}, {2, 4}};
    static const size_t sweep_payloads[] = {16, 64, 256, 1024, 4096};
    /* A shape or payload given on the command line replaces its sweep. */
    const int chosen[][2] = {{o->publishers, o->subscribers}};
    const int(*shapes)[2] = o->shape_set ? chosen : sweep;
    const size_t nshapes = o->shape_set ? 1 : sizeof sweep / sizeof sweep[0];
    const size_t chosen_payload[] = {o->payload};
    const size_t *payloads = o->payload_set ? chosen_payload : sweep_payloads;
    const size_t npayloads = o->payload_set ? 1 : sizeof sweep_payloads / sizeof sweep_payloads[0];
    int reps = o->reps > 0 ? o->reps : 3;
    bench_print_machine(stdout, o->format);
    if (o->format == FORMAT_TABLE)
        printf("throughput: lossless (block policy), %llu messages per publisher%s, capacity %u, "
               "median of %d runs; rate = published messages/s\n",
               (unsigned long long)o->messages,
               o->batch > 1 ? ", published with rbus_publish_batch" : "", o->capacity, reps);
    if (o->format == FORMAT_TABLE && o->batch > 1)
        printf("batch: %u messages per rbus_publish_batch call\n", o->batch);
    struct bench_row rows[40];
    memset(rows, 0, sizeof rows);
    int n = 0, rc = 0, done = 0;
    const int total = (int)(nshapes * npayloads);
    uint64_t started = bench_now_ns();
    for (size_t s = 0; s < nshapes; s++) {
        for (size_t p = 0; p < npayloads; p++) {
            struct scenario sc = {.publishers = shapes[s][0],
                                  .subscribers = shapes[s][1],
                                  .payload = payloads[p],
                                  .messages = o->messages,
                                  .capacity = o->capacity,
                                  .spin_ns = o->spin_ns,
                                  .batch = o->batch};
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

struct idle_rx {
    rbus_sub *sub;
    double cpu_pct;
    double msgs_per_s;
};

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *idle_receive(void *arg)
{
    struct idle_rx *r = arg;
    uint64_t c0 = thread_cpu_ns(), w0 = bench_now_ns();
    rbus_msg *m;
    uint64_t got = 0;
    while (rbus_recv(r->sub, &m, -1) == 0) {
        rbus_msg_release(m);
        got++;
    }
    uint64_t wall = bench_now_ns() - w0;
    r->cpu_pct = 100.0 * (double)(thread_cpu_ns() - c0) / (double)wall;
    r->msgs_per_s = (double)got * 1e9 / (double)wall;
    return NULL;
}

/* CPU used by a receiver blocked in rbus_recv() on a subscription that gets
 * one message every `gap_ns` (0 = none at all), over `wall_ns`, as a
 * percentage of one core (measured by the receiver thread itself). */
static double receiver_cpu_pct(int64_t spin_ns, uint64_t gap_ns, uint64_t wall_ns,
                               double *msgs_per_s)
{
    rbus *bus;
    rbus_topic *t;
    struct idle_rx r = {0};
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.spin_ns = spin_ns;
    if (rbus_create(&bus, NULL) || rbus_subscribe(bus, "idle", &so, &r.sub) ||
        rbus_topic_open(bus, "idle", &t))
        return -1;
    pthread_t th;
    pthread_create(&th, NULL, idle_receive, &r);
    uint64_t start = bench_now_ns(), next = start;
    while (bench_now_ns() - start < wall_ns) {
        if (gap_ns && bench_now_ns() >= next) {
            rbus_publish(t, "x", 1);
            next += gap_ns;
        }
        /* The publisher sleeps between messages so that it does not compete
         * with the receiver for a core. */
        struct timespec nap = {0, gap_ns ? 20000 : 10000000};
        nanosleep(&nap, NULL);
    }
    rbus_close(bus);
    pthread_join(th, NULL);
    rbus_destroy(bus);
    *msgs_per_s = r.msgs_per_s;
    return r.cpu_pct;
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
            struct latency_run lr = {.pace_ns = paces[p],
                                     .rounds = rounds,
                                     .sleeping_receiver = sleeping,
                                     .capacity = o->capacity};
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

    /* What the default wait strategy costs a receiver that is idle, or
     * nearly so: latency is never bought with a burning core. */
    struct bench_row cpu[3];
    memset(cpu, 0, sizeof cpu);
    static const uint64_t gaps[] = {0, 1000000, 100000};
    static const char *labels[] = {"no messages", "paced 1 ms", "paced 100 us"};
    for (int i = 0; i < 3; i++) {
        double rate_spin, rate_sleep;
        double spin = receiver_cpu_pct(0, gaps[i], 1000000000u, &rate_spin);
        double sleep = receiver_cpu_pct(-1, gaps[i], 1000000000u, &rate_sleep);
        bench_row_str(&cpu[i], "receiver_load", labels[i]);
        bench_row_num(&cpu[i], "msgs_per_s", "%.0f", rate_spin);
        bench_row_num(&cpu[i], "cpu_pct_default_spin", "%.2f", spin);
        bench_row_num(&cpu[i], "cpu_pct_sleeping", "%.2f", sleep);
    }
    if (o->format == FORMAT_TABLE)
        printf("\nreceiver CPU (%% of one core, over 1 s), default spin_ns = %lld ns:\n",
               (long long)RBUS_DEFAULT_SPIN_NS);
    bench_print_rows(stdout, o->format, cpu, 3);
    return rc;
}
