/*
 * policies.c - the three overflow policies side by side on one workload: a
 * publisher as fast as it can go against a subscriber that spends
 * --work-ns on every message. One run per policy (block, block with a
 * timeout, drop-oldest, drop-newest); for each it prints publish attempts/s,
 * delivered/s, drops by cause, the age of delivered messages, and checks
 * the accounting equation.
 *
 *   ringbus-policies [--messages N] [--work-ns NS] [--capacity C]
 */
#define _POSIX_C_SOURCE 200809L
#include <ringbus.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct receiver {
    rbus_sub *sub;
    uint64_t work_ns;
    uint64_t *ages; /* one per delivered message */
    size_t nages, cap;
    uint64_t last_seq, max_gap;
};

static void *receive_loop(void *arg)
{
    struct receiver *r = arg;
    for (;;) {
        rbus_msg *m;
        int rc = rbus_recv(r->sub, &m, -1);
        if (rc == -ESHUTDOWN)
            break;
        if (rc != 0) {
            fprintf(stderr, "recv: %s\n", rbus_strerror(rc));
            exit(1);
        }
        uint64_t t = now_ns();
        if (r->nages < r->cap)
            r->ages[r->nages++] = t - rbus_msg_time_ns(m);
        uint64_t seq = rbus_msg_seq(m);
        if (r->last_seq && seq - r->last_seq > r->max_gap)
            r->max_gap = seq - r->last_seq;
        r->last_seq = seq;
        rbus_msg_release(m);
        while (now_ns() - t < r->work_ns)
            ; /* the slow consumer's work */
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double pct(uint64_t *v, size_t n, double p)
{
    if (!n)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)(n - 1));
    return (double)v[i] / 1000.0;
}

struct policy {
    const char *label;
    rbus_overflow overflow;
    int64_t block_timeout_ns;
};

static int run(const struct policy *p, uint64_t messages, uint64_t work_ns, uint32_t capacity)
{
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    rbus_sub_opts opts;
    rbus_sub_opts_init(&opts);
    opts.capacity = capacity;
    opts.overflow = p->overflow;
    opts.block_timeout_ns = p->block_timeout_ns;
    if (rbus_create(&bus, NULL) || rbus_subscribe(bus, "bench.>", &opts, &sub) ||
        rbus_topic_open(bus, "bench.policies", &topic)) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    struct receiver r = {.sub = sub, .work_ns = work_ns, .cap = messages};
    r.ages = malloc(messages * sizeof *r.ages);
    if (!r.ages)
        return 1;
    pthread_t th;
    pthread_create(&th, NULL, receive_loop, &r);

    char payload[64] = {0};
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < messages; i++) {
        memcpy(payload, &i, sizeof i);
        int rc = rbus_publish(topic, payload, sizeof payload);
        if (rc != 0) {
            fprintf(stderr, "publish: %s\n", rbus_strerror(rc));
            return 1;
        }
    }
    uint64_t t1 = now_ns();
    rbus_close(bus); /* the receiver drains what is queued, then stops */
    pthread_join(th, NULL);
    uint64_t t2 = now_ns();

    rbus_sub_stats st;
    rbus_sub_stats_get(sub, &st);
    uint64_t drops = st.dropped_newest + st.dropped_oldest + st.dropped_timeout + st.dropped_closed;
    int ok = st.offered == messages &&
             st.offered == st.received + st.depth + drops && st.received == r.nages;
    qsort(r.ages, r.nages, sizeof *r.ages, cmp_u64);
    printf("%-16s %12.0f %12.0f %9llu %9llu %9llu %6.1f%% %9.1f %9.1f %9.1f %8llu %6u  %s\n",
           p->label, (double)messages * 1e9 / (double)(t1 - t0),
           (double)st.received * 1e9 / (double)(t2 - t0), (unsigned long long)st.dropped_newest,
           (unsigned long long)st.dropped_oldest, (unsigned long long)st.dropped_timeout,
           100.0 * (double)drops / (double)messages, pct(r.ages, r.nages, 50),
           pct(r.ages, r.nages, 99), pct(r.ages, r.nages, 99.9),
           (unsigned long long)r.max_gap, st.high_water, ok ? "ok" : "ACCOUNTING MISMATCH");
    free(r.ages);
    rbus_destroy(bus);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    uint64_t messages = 200000, work_ns = 2000;
    uint32_t capacity = 1024;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--messages") && i + 1 < argc)
            messages = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--work-ns") && i + 1 < argc)
            work_ns = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--capacity") && i + 1 < argc)
            capacity = (uint32_t)strtoul(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: %s [--messages N] [--work-ns NS] [--capacity C]\n", argv[0]);
            return 2;
        }
    }
    if (!messages) {
        fprintf(stderr, "--messages must be > 0\n");
        return 2;
    }
    printf("ringbus %s: %llu messages of 64 B, subscriber work %llu ns/msg, capacity %u\n",
           rbus_version(), (unsigned long long)messages, (unsigned long long)work_ns, capacity);
    printf("%-16s %12s %12s %9s %9s %9s %7s %9s %9s %9s %8s %6s  %s\n", "policy",
           "attempts/s", "delivered/s", "drop-new", "drop-old", "timeout", "drop%", "p50 us",
           "p99 us", "p99.9 us", "max gap", "peak", "accounting");
    const struct policy policies[] = {
        {"block", RBUS_BLOCK, 0},
        {"block 50us", RBUS_BLOCK, 50000},
        {"drop-oldest", RBUS_DROP_OLDEST, 0},
        {"drop-newest", RBUS_DROP_NEWEST, 0},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++)
        rc |= run(&policies[i], messages, work_ns, capacity);
    return rc;
}
