/*
 * producer_stall.c - the progress cost of ck's MPMC ring: a producer that
 * is preempted between reserving its slot and committing it stalls every
 * later producer on that ring. With more publisher threads than cores the
 * scheduler does exactly that; this measures the longest single publish
 * each publisher saw (on a drop-newest subscription, so publishers never
 * wait for room: any long publish is a commit stall or a preemption).
 *
 *   producer_stall [--messages N] [--publishers P]
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

struct pub {
    rbus_topic *topic;
    uint64_t messages;
    uint64_t worst_ns;
    uint64_t over_100us;
};

static void *pub_loop(void *arg)
{
    struct pub *p = arg;
    for (uint64_t i = 0; i < p->messages; i++) {
        uint64_t t0 = now_ns();
        rbus_publish(p->topic, &i, sizeof i);
        uint64_t d = now_ns() - t0;
        if (d > p->worst_ns)
            p->worst_ns = d;
        if (d > 100000)
            p->over_100us++;
    }
    return NULL;
}

static void *drain_loop(void *arg)
{
    rbus_sub *s = arg;
    rbus_msg *batch[64];
    int n;
    while ((n = rbus_recv_batch(s, batch, 64, -1)) > 0)
        for (int i = 0; i < n; i++)
            rbus_msg_release(batch[i]);
    return NULL;
}

int main(int argc, char **argv)
{
    uint64_t messages = 1000000;
    int publishers = 4;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--messages"))
            messages = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--publishers"))
            publishers = atoi(argv[i + 1]);
    }
    if (publishers < 1 || publishers > 64)
        return 2;
    rbus *bus;
    rbus_topic *t;
    rbus_sub *s;
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.overflow = RBUS_DROP_NEWEST;
    if (rbus_create(&bus, NULL) || rbus_subscribe(bus, "stall", &o, &s) ||
        rbus_topic_open(bus, "stall", &t))
        return 1;
    pthread_t drain;
    pthread_create(&drain, NULL, drain_loop, s);
    struct pub p[64];
    pthread_t th[64];
    for (int i = 0; i < publishers; i++) {
        p[i] = (struct pub){.topic = t, .messages = messages};
        pthread_create(&th[i], NULL, pub_loop, &p[i]);
    }
    uint64_t worst = 0, slow = 0;
    for (int i = 0; i < publishers; i++) {
        pthread_join(th[i], NULL);
        if (p[i].worst_ns > worst)
            worst = p[i].worst_ns;
        slow += p[i].over_100us;
    }
    rbus_close(bus);
    pthread_join(drain, NULL);
    printf("producer_stall: %d publishers x %llu publishes on one ring, 2 cores: worst single "
           "publish %.1f us, publishes over 100 us: %llu (%.4f%%)\n",
           publishers, (unsigned long long)messages, worst / 1e3, (unsigned long long)slow,
           100.0 * (double)slow / (double)(messages * (uint64_t)publishers));
    rbus_destroy(bus);
    return 0;
}
