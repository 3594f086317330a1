/*
 * drop_policies.c - the three overflow policies side by side: one fast
 * publisher, three slow consumers (one per policy) with small queues.
 *
 *  - block (with a 200 us timeout): the publisher waits for room, briefly;
 *    a message that still does not fit is dropped as `timeout`;
 *  - drop-oldest: the publisher never waits; the queue keeps the newest;
 *  - drop-newest: the publisher never waits; the queue keeps what it has.
 *
 * The block consumer paces the publisher (up to 200 us per full publish),
 * so all three see the same pace. Prints which messages each consumer got
 * and what each dropped, and checks that every message is accounted for.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <ringbus.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MESSAGES 60
#define CAPACITY 8

struct consumer {
    const char *label;
    rbus_sub *sub;
    unsigned got[MESSAGES];
    unsigned n;
};

static void *consume(void *arg)
{
    struct consumer *c = arg;
    rbus_msg *m;
    while (rbus_recv(c->sub, &m, -1) == 0) {
        unsigned v;
        memcpy(&v, rbus_msg_data(m), sizeof v);
        if (c->n < MESSAGES)
            c->got[c->n++] = v;
        rbus_msg_release(m);
        struct timespec work = {0, 300000}; /* a slow consumer: 300 us each */
        nanosleep(&work, NULL);
    }
    return NULL;
}

/* Prints runs of consecutive numbers compactly: 1-8 21 25-60. */
static void print_runs(const unsigned *v, unsigned n)
{
    for (unsigned i = 0; i < n;) {
        unsigned j = i;
        while (j + 1 < n && v[j + 1] == v[j] + 1)
            j++;
        if (j > i)
            printf(" %u-%u", v[i], v[j]);
        else
            printf(" %u", v[i]);
        i = j + 1;
    }
    printf("\n");
}

int main(void)
{
    rbus *bus;
    rbus_topic *t;
    if (rbus_create(&bus, NULL) || rbus_topic_open(bus, "sensor.temp", &t))
        return 1;
    struct consumer cs[3] = {{.label = "block(200us)"}, {.label = "drop-oldest"},
                             {.label = "drop-newest"}};
    static const rbus_overflow pol[3] = {RBUS_BLOCK, RBUS_DROP_OLDEST, RBUS_DROP_NEWEST};
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = CAPACITY;
        o.overflow = pol[i];
        o.block_timeout_ns = 200000;
        o.name = cs[i].label;
        if (rbus_subscribe(bus, "sensor.*", &o, &cs[i].sub))
            return 1;
        pthread_create(&th[i], NULL, consume, &cs[i]);
    }
    for (unsigned v = 1; v <= MESSAGES; v++) {
        rbus_pub_result r;
        rbus_publish_ex(t, &v, sizeof v, NULL, &r); /* as fast as it can */
    }
    rbus_close(bus); /* consumers drain their queues, then stop */
    bool ok = true;
    printf("%u readings published, queues of %u, consumers taking 300 us each\n", MESSAGES,
           CAPACITY);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        rbus_sub_stats st;
        rbus_sub_stats_get(cs[i].sub, &st);
        printf("%-13s got %2u, dropped: newest %llu, oldest %llu, timeout %llu; kept:",
               cs[i].label, cs[i].n, (unsigned long long)st.dropped_newest,
               (unsigned long long)st.dropped_oldest, (unsigned long long)st.dropped_timeout);
        print_runs(cs[i].got, cs[i].n);
        uint64_t drops = st.dropped_newest + st.dropped_oldest + st.dropped_timeout +
                         st.dropped_closed;
        if (st.offered != MESSAGES || st.received != cs[i].n ||
            st.offered != st.received + st.depth + drops)
            ok = false;
        rbus_unsubscribe(cs[i].sub);
    }
    printf("%s\n", ok ? "every reading accounted for" : "ACCOUNTING MISMATCH");
    rbus_destroy(bus);
    return ok ? 0 : 1;
}
