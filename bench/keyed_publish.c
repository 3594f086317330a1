/*
 * keyed_publish.c - what an idempotency key costs: ns per publish with a
 * distinct key each time against the same publishes without a key, on the
 * same topic with the same fan-out, interleaved in one run. Prints each
 * repetition and the medians; the ratio keyed/unkeyed is the figure.
 *
 *   keyed_publish [--messages N] [--reps R] [--subs S] [--dedup-keys K]
 */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void *drain(void *arg)
{
    rbus_sub *s = arg;
    rbus_msg *batch[256];
    int n;
    while ((n = rbus_recv_batch(s, batch, 256, -1)) > 0)
        for (int i = 0; i < n; i++)
            rbus_msg_release(batch[i]);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    uint64_t messages = 500000, key_counter = 0;
    int reps = 5, nsubs = 1;
    uint32_t dedup_keys = 4096;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--messages"))
            messages = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--subs"))
            nsubs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--dedup-keys"))
            dedup_keys = (uint32_t)strtoul(argv[i + 1], NULL, 10);
    }
    if (reps < 1 || reps > 99 || nsubs < 1 || nsubs > 8 || !messages)
        return 2;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.dedup_keys = dedup_keys;
    rbus *bus;
    rbus_topic *t;
    rbus_sub *subs[8];
    pthread_t th[8];
    if (rbus_create(&bus, &cfg) || rbus_topic_open(bus, "bench.keyed", &t))
        return 1;
    for (int i = 0; i < nsubs; i++) {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = 4096; /* block (lossless); the drainers keep up */
        if (rbus_subscribe(bus, "bench.>", &o, &subs[i]))
            return 1;
        pthread_create(&th[i], NULL, drain, subs[i]);
    }
    printf("keyed_publish: %llu publishes of 64 B per measurement, %d subscription(s), "
           "dedup_keys %u, distinct 16-byte keys\n",
           (unsigned long long)messages, nsubs, dedup_keys);
    double plain[99], keyed[99];
    char payload[64] = {0};
    for (int r = 0; r < reps; r++) {
        for (int pass = 0; pass < 2; pass++) {
            bool with_key = (pass == 0) == (r % 2 == 0); /* alternate which goes first */
            char key[16];
            rbus_pub_opts po;
            memset(&po, 0, sizeof po);
            po.key = key;
            po.key_len = sizeof key;
            uint64_t t0 = bench_now_ns();
            for (uint64_t i = 0; i < messages; i++) {
                int rc;
                if (with_key) {
                    key_counter++;
                    memcpy(key, &key_counter, 8);
                    memcpy(key + 8, "ringbus!", 8);
                    rc = rbus_publish_ex(t, payload, sizeof payload, &po, NULL);
                } else {
                    rc = rbus_publish(t, payload, sizeof payload);
                }
                if (rc != 0) {
                    fprintf(stderr, "publish: %s\n", rbus_strerror(rc));
                    return 1;
                }
            }
            double ns = (double)(bench_now_ns() - t0) / (double)messages;
            if (with_key)
                keyed[r] = ns;
            else
                plain[r] = ns;
        }
        printf("  rep %d: unkeyed %.1f ns/publish, keyed %.1f ns/publish, ratio %.2f\n", r + 1,
               plain[r], keyed[r], keyed[r] / plain[r]);
    }
    rbus_topic_stats ts;
    rbus_topic_stats_get(t, &ts);
    rbus_close(bus);
    for (int i = 0; i < nsubs; i++)
        pthread_join(th[i], NULL);
    double ratios[99];
    for (int r = 0; r < reps; r++)
        ratios[r] = keyed[r] / plain[r];
    qsort(plain, (size_t)reps, sizeof plain[0], cmp_double);
    qsort(keyed, (size_t)reps, sizeof keyed[0], cmp_double);
    qsort(ratios, (size_t)reps, sizeof ratios[0], cmp_double);
    printf("median: unkeyed %.1f ns, keyed %.1f ns, keyed/unkeyed %.2f (min %.2f, max %.2f); "
           "duplicates %llu (must be 0)\n",
           plain[reps / 2], keyed[reps / 2], ratios[reps / 2], ratios[0], ratios[reps - 1],
           (unsigned long long)ts.duplicates);
    rbus_destroy(bus);
    return ts.duplicates == 0 ? 0 : 1;
}
