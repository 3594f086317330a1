/*
 * wake_latency.c - what spin_ns buys: one-way publish-to-receive latency of
 * a receiver blocked in rbus_recv(), and the CPU that receiver burns, for
 * several spin_ns values and publish paces. Used to choose
 * RBUS_DEFAULT_SPIN_NS (docs/waiting.md).
 *
 *   wake_latency [--rounds N]
 */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct rx {
    rbus_sub *sub;
    uint64_t *lat;
    size_t n;
    uint64_t cpu_ns;
};

static void *rx_loop(void *arg)
{
    struct rx *r = arg;
    uint64_t c0 = thread_cpu_ns();
    for (;;) {
        rbus_msg *m;
        if (rbus_recv(r->sub, &m, -1) != 0)
            break;
        r->lat[r->n++] = bench_now_ns() - rbus_msg_time_ns(m);
        rbus_msg_release(m);
    }
    r->cpu_ns = thread_cpu_ns() - c0;
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    size_t rounds = 2000;
    if (argc == 3 && !strcmp(argv[1], "--rounds"))
        rounds = strtoull(argv[2], NULL, 10);
    const int64_t spins[] = {-1, 5000, 10000, 20000, 50000, 100000};
    const uint64_t paces[] = {10000, 100000, 1000000};
    printf("%-10s %-9s %10s %10s %10s %12s\n", "spin_ns", "pace", "p50 us", "p99 us", "p99.9 us",
           "rx cpu %");
    for (size_t pi = 0; pi < sizeof paces / sizeof paces[0]; pi++) {
        for (size_t si = 0; si < sizeof spins / sizeof spins[0]; si++) {
            rbus *bus;
            rbus_topic *t;
            rbus_sub_opts o;
            rbus_sub_opts_init(&o);
            o.spin_ns = spins[si];
            struct rx r = {0};
            r.lat = calloc(rounds, sizeof *r.lat);
            if (!r.lat || rbus_create(&bus, NULL) || rbus_subscribe(bus, "lat", &o, &r.sub) ||
                rbus_topic_open(bus, "lat", &t))
                return 1;
            pthread_t th;
            pthread_create(&th, NULL, rx_loop, &r);
            uint64_t start = bench_now_ns() + 1000000, next = start;
            for (size_t i = 0; i < rounds; i++) {
                while (bench_now_ns() < next)
                    ; /* pace precisely: the publisher spins, the receiver is measured */
                rbus_publish(t, &i, sizeof i);
                next += paces[pi];
            }
            uint64_t wall = bench_now_ns() - start;
            rbus_close(bus);
            pthread_join(th, NULL);
            qsort(r.lat, r.n, sizeof *r.lat, cmp);
            printf("%-10lld %-9s %10.2f %10.2f %10.2f %12.1f\n", (long long)spins[si],
                   paces[pi] == 10000    ? "10us"
                   : paces[pi] == 100000 ? "100us"
                                         : "1ms",
                   r.lat[r.n / 2] / 1e3, r.lat[r.n * 99 / 100] / 1e3, r.lat[r.n * 999 / 1000] / 1e3,
                   100.0 * (double)r.cpu_ns / (double)wall);
            free(r.lat);
            rbus_destroy(bus);
        }
    }
    return 0;
}
