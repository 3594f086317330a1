/*
 * producer_stall.c - what several publishers on one ring cost when there
 * are more threads than cores, for ringbus's ring and for a raw ck_ring
 * MPMC ring (the one ringbus used first). P publisher threads publish into
 * one drop-newest subscription (so nobody ever waits for room) while one
 * thread drains it; we report the total rate, the worst single publish and
 * how many publishes took over 100 us.
 *
 * ck_ring's MPMC enqueue makes a producer wait at commit for every earlier
 * producer; one preempted between reservation and commit stalls the
 * others, and on 2 cores with 5 threads commits convoy (docs/design.md).
 *
 *   producer_stall [--messages N] [--publishers P] [--ring rbus|ck|both]
 */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <ck_ring.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CK_CAPACITY 1024u

struct pub {
    rbus_topic *topic; /* NULL: raw ck_ring */
    uint64_t messages;
    uint64_t worst_ns;
    uint64_t over_100us;
    int index;
};

static ck_ring_t ck_ring;
static ck_ring_buffer_t ck_slots[CK_CAPACITY * 2];
static uint64_t ck_payloads[64][8];
static atomic_int ck_done;

static void *pub_loop(void *arg)
{
    struct pub *p = arg;
    uint64_t *slot = ck_payloads[p->index & 63];
    for (uint64_t i = 0; i < p->messages; i++) {
        uint64_t t0 = bench_now_ns();
        if (p->topic) {
            rbus_publish(p->topic, &i, sizeof i);
        } else {
            slot[0] = i;
            (void)ck_ring_enqueue_mpmc(&ck_ring, ck_slots, slot); /* full: dropped */
        }
        uint64_t d = bench_now_ns() - t0;
        if (d > p->worst_ns)
            p->worst_ns = d;
        if (d > 100000)
            p->over_100us++;
    }
    return NULL;
}

static void *drain_rbus(void *arg)
{
    rbus_sub *s = arg;
    rbus_msg *batch[64];
    int n;
    while ((n = rbus_recv_batch(s, batch, 64, -1)) > 0)
        for (int i = 0; i < n; i++)
            rbus_msg_release(batch[i]);
    return NULL;
}

static void *drain_ck(void *arg)
{
    (void)arg;
    void *p;
    /* A busy-polling consumer, as raw ck_ring users write it. */
    while (!atomic_load(&ck_done) || ck_ring_size(&ck_ring))
        (void)ck_ring_dequeue_mpmc(&ck_ring, ck_slots, &p);
    return NULL;
}

static int run(const char *which, int publishers, uint64_t messages)
{
    bool use_ck = !strcmp(which, "ck");
    rbus *bus = NULL;
    rbus_topic *t = NULL;
    rbus_sub *s = NULL;
    pthread_t drain;
    if (use_ck) {
        ck_ring_init(&ck_ring, CK_CAPACITY * 2);
        atomic_store(&ck_done, 0);
        pthread_create(&drain, NULL, drain_ck, NULL);
    } else {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.overflow = RBUS_DROP_NEWEST;
        o.capacity = CK_CAPACITY;
        if (rbus_create(&bus, NULL) || rbus_subscribe(bus, "stall", &o, &s) ||
            rbus_topic_open(bus, "stall", &t))
            return 1;
        pthread_create(&drain, NULL, drain_rbus, s);
    }
    struct pub p[64];
    pthread_t th[64];
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < publishers; i++) {
        p[i] = (struct pub){.topic = t, .messages = messages, .index = i};
        pthread_create(&th[i], NULL, pub_loop, &p[i]);
    }
    uint64_t worst = 0, slow = 0;
    for (int i = 0; i < publishers; i++) {
        pthread_join(th[i], NULL);
        if (p[i].worst_ns > worst)
            worst = p[i].worst_ns;
        slow += p[i].over_100us;
    }
    uint64_t elapsed = bench_now_ns() - t0;
    if (use_ck) {
        atomic_store(&ck_done, 1);
        pthread_join(drain, NULL);
    } else {
        rbus_close(bus);
        pthread_join(drain, NULL);
        rbus_destroy(bus);
    }
    uint64_t total = messages * (uint64_t)publishers;
    printf("%-8s %3d publishers x %8llu: %10.0f publishes/s, worst single publish %9.1f us, "
           "over 100 us: %6llu (%.4f%%)\n",
           use_ck ? "ck_ring" : "ringbus", publishers, (unsigned long long)messages,
           (double)total * 1e9 / (double)elapsed, worst / 1e3, (unsigned long long)slow,
           100.0 * (double)slow / (double)total);
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t messages = 1000000;
    int publishers = 4;
    const char *ring = "both";
    for (int i = 1; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--help")) {
            printf("usage: producer_stall [--messages N] [--publishers P] [--ring rbus|ck|both]\n"
                   "  N publishes per publisher (default 1000000), P publishers (default 4);\n"
                   "  'ck' runs ck_ring, which can convoy for minutes with P > cores\n");
            return 0;
        } else if (v && !strcmp(argv[i], "--messages")) {
            messages = strtoull(v, NULL, 10);
        } else if (v && !strcmp(argv[i], "--publishers")) {
            publishers = atoi(v);
        } else if (v && !strcmp(argv[i], "--ring")) {
            ring = v;
        } else {
            fprintf(stderr, "producer_stall: bad argument '%s' (see --help)\n", argv[i]);
            return 2;
        }
    }
    if (publishers < 1 || publishers > 64 || !messages ||
        (strcmp(ring, "rbus") && strcmp(ring, "ck") && strcmp(ring, "both"))) {
        fprintf(stderr, "producer_stall: bad arguments (see --help)\n");
        return 2;
    }
    int rc = 0;
    if (strcmp(ring, "ck"))
        rc |= run("rbus", publishers, messages);
    if (strcmp(ring, "rbus"))
        rc |= run("ck", publishers, messages);
    return rc;
}
