/*
 * keyed_publish.c - what an idempotency key costs: ns per publish with a
 * distinct key each time against the same publishes without a key, on the
 * same topic with the same fan-out, interleaved in one run. The ratio
 * keyed/unkeyed is the figure.
 *
 * Two ways to drain the subscriptions, both reported:
 *  - inline: the publisher itself drains after every batch of publishes,
 *    and only the publishes are timed. No other thread runs, so the figure
 *    is the CPU cost of a publish, free of cross-core cache traffic, which
 *    on a shared VM swings the cost of every publish 2-4x between runs.
 *  - thread: one receiver thread per subscription drains concurrently (the
 *    cost a real publisher sees, cross-core traffic included).
 *
 *   keyed_publish [--messages N] [--reps R] [--subs S] [--dedup-keys K]
 *                 [--drain inline|thread|both]
 */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH 256 /* inline drain: publishes per timed batch (< capacity) */
#define MAX_SUBS 8
#define MAX_REPS 99

static void *drain_thread(void *arg)
{
    rbus_sub *s = arg;
    rbus_msg *batch[BATCH];
    int n;
    while ((n = rbus_recv_batch(s, batch, BATCH, -1)) > 0)
        for (int i = 0; i < n; i++)
            rbus_msg_release(batch[i]);
    return NULL;
}

static void drain_inline(rbus_sub **subs, int nsubs)
{
    rbus_msg *batch[BATCH];
    for (int s = 0; s < nsubs; s++) {
        int n;
        while ((n = rbus_recv_batch(subs[s], batch, BATCH, 0)) > 0)
            for (int i = 0; i < n; i++)
                rbus_msg_release(batch[i]);
    }
}

static void *noop_thread(void *arg)
{
    return arg;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct run {
    rbus_topic *topic;
    rbus_sub **subs;
    int nsubs;
    bool inline_drain;
    uint64_t messages;
    uint64_t key_counter; /* keys stay distinct across passes */
};

/* ns per publish over `messages` publishes, with or without a key. */
static double measure(struct run *r, bool with_key)
{
    static const char payload[64];
    char key[16];
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.key = key;
    po.key_len = sizeof key;
    uint64_t timed_ns = 0;
    for (uint64_t done = 0; done < r->messages;) {
        uint64_t batch = r->inline_drain ? BATCH : r->messages;
        if (batch > r->messages - done)
            batch = r->messages - done;
        uint64_t t0 = bench_now_ns();
        for (uint64_t i = 0; i < batch; i++) {
            int rc;
            if (with_key) {
                r->key_counter++;
                memcpy(key, &r->key_counter, 8);
                memcpy(key + 8, "ringbus!", 8);
                rc = rbus_publish_ex(r->topic, payload, sizeof payload, &po, NULL);
            } else {
                rc = rbus_publish(r->topic, payload, sizeof payload);
            }
            if (rc != 0) {
                fprintf(stderr, "keyed_publish: publish: %s\n", rbus_strerror(rc));
                exit(1);
            }
        }
        timed_ns += bench_now_ns() - t0;
        done += batch;
        if (r->inline_drain)
            drain_inline(r->subs, r->nsubs);
    }
    return (double)timed_ns / (double)r->messages;
}

static int run_mode(bool inline_drain, uint64_t messages, int reps, int nsubs, uint32_t dedup_keys)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.dedup_keys = dedup_keys;
    rbus *bus;
    rbus_topic *t;
    rbus_sub *subs[MAX_SUBS];
    pthread_t th[MAX_SUBS];
    if (rbus_create(&bus, &cfg) || rbus_topic_open(bus, "bench.keyed", &t))
        return 1;
    for (int i = 0; i < nsubs; i++) {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = 4096; /* block (lossless): every publish is queued */
        if (rbus_subscribe(bus, "bench.>", &o, &subs[i]))
            return 1;
        if (!inline_drain)
            pthread_create(&th[i], NULL, drain_thread, subs[i]);
    }
    printf("drain %s: %s\n", inline_drain ? "inline" : "thread",
           inline_drain ? "the publisher drains between timed batches of 256 (no other thread)"
                        : "one receiver thread per subscription drains concurrently");
    struct run r = {.topic = t,
                    .subs = subs,
                    .nsubs = nsubs,
                    .inline_drain = inline_drain,
                    .messages = messages};
    double plain[MAX_REPS], keyed[MAX_REPS], ratios[MAX_REPS];
    /* Warm-up, untimed: builds the key window and fills the message pool. */
    measure(&r, true);
    measure(&r, false);
    for (int i = 0; i < reps; i++) {
        /* Alternate which goes first, so drift favours neither. */
        if (i % 2 == 0) {
            keyed[i] = measure(&r, true);
            plain[i] = measure(&r, false);
        } else {
            plain[i] = measure(&r, false);
            keyed[i] = measure(&r, true);
        }
        ratios[i] = keyed[i] / plain[i];
        printf("  rep %d: unkeyed %.1f ns/publish, keyed %.1f ns/publish, ratio %.2f\n", i + 1,
               plain[i], keyed[i], ratios[i]);
    }
    rbus_topic_stats ts;
    rbus_topic_stats_get(t, &ts);
    rbus_close(bus);
    if (!inline_drain)
        for (int i = 0; i < nsubs; i++)
            pthread_join(th[i], NULL);
    qsort(plain, (size_t)reps, sizeof plain[0], cmp_double);
    qsort(keyed, (size_t)reps, sizeof keyed[0], cmp_double);
    qsort(ratios, (size_t)reps, sizeof ratios[0], cmp_double);
    printf("median (drain %s): unkeyed %.1f ns, keyed %.1f ns, keyed/unkeyed %.2f (min %.2f, "
           "max %.2f); duplicates %llu (must be 0)\n",
           inline_drain ? "inline" : "thread", plain[reps / 2], keyed[reps / 2], ratios[reps / 2],
           ratios[0], ratios[reps - 1], (unsigned long long)ts.duplicates);
    rbus_destroy(bus);
    return ts.duplicates == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    uint64_t messages = 500000;
    int reps = 5, nsubs = 1;
    uint32_t dedup_keys = 4096;
    const char *drain = "both";
    for (int i = 1; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--help")) {
            printf("usage: keyed_publish [--messages N] [--reps R] [--subs S] [--dedup-keys K] "
                   "[--drain inline|thread|both]\n");
            return 0;
        } else if (v && !strcmp(argv[i], "--messages")) {
            messages = strtoull(v, NULL, 10);
        } else if (v && !strcmp(argv[i], "--reps")) {
            reps = atoi(v);
        } else if (v && !strcmp(argv[i], "--subs")) {
            nsubs = atoi(v);
        } else if (v && !strcmp(argv[i], "--dedup-keys")) {
            dedup_keys = (uint32_t)strtoul(v, NULL, 10);
        } else if (v && !strcmp(argv[i], "--drain")) {
            drain = v;
        } else {
            fprintf(stderr, "keyed_publish: bad argument '%s' (see --help)\n", argv[i]);
            return 2;
        }
    }
    bool want_inline = !strcmp(drain, "inline") || !strcmp(drain, "both");
    bool want_thread = !strcmp(drain, "thread") || !strcmp(drain, "both");
    if (reps < 1 || reps > MAX_REPS || nsubs < 1 || nsubs > MAX_SUBS || !messages ||
        !(want_inline || want_thread)) {
        fprintf(stderr, "keyed_publish: bad arguments (see --help)\n");
        return 2;
    }
    /* A server embedding ringbus is multithreaded, and glibc skips the
     * locked instructions of its mutexes while a process has one thread:
     * start (and end) a thread first, so the inline figures pay what a
     * real publisher pays. */
    pthread_t waker;
    if (pthread_create(&waker, NULL, noop_thread, NULL) == 0)
        pthread_join(waker, NULL);
    bench_print_machine(stdout, FORMAT_TABLE);
    printf("keyed_publish: %llu publishes of 64 B per measurement, %d subscription(s), "
           "dedup_keys %u, distinct 16-byte keys, %d repetitions\n",
           (unsigned long long)messages, nsubs, dedup_keys, reps);
    int rc = 0;
    if (want_inline)
        rc |= run_mode(true, messages, reps, nsubs, dedup_keys);
    if (want_thread)
        rc |= run_mode(false, messages, reps, nsubs, dedup_keys);
    return rc;
}
