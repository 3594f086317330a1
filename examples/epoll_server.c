/*
 * epoll_server.c - subscriptions in an epoll loop.
 *
 * rbus_sub_fd() gives a subscription a descriptor that is readable while
 * messages are queued, level-triggered. An event loop adds it like any
 * socket; when it is readable, the loop drains the subscription with
 * non-blocking receives until one returns -EAGAIN, which is what re-arms
 * the descriptor. A closed subscription makes it readable one last time,
 * and its receives then return -ESHUTDOWN.
 *
 * Here a publisher thread stands in for the rest of a server: it publishes
 * orders and CPU samples, then closes both subscriptions. The loop serves
 * two subscriptions from one thread; a real server would have its sockets,
 * timers and signals in the same epoll set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <ringbus.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define ORDERS 2000
#define BATCH 32

/* What epoll_event.data.ptr points at: one per subscription. */
struct source {
    const char *name;
    rbus_sub *sub;
    unsigned long received;
};

struct publisher {
    rbus *bus;
    struct source *sources;
    int nsources;
};

static void *publish_all(void *arg)
{
    struct publisher *p = arg;
    rbus_topic *orders, *cpu;
    if (rbus_topic_open(p->bus, "orders.created", &orders) != 0 ||
        rbus_topic_open(p->bus, "metrics.cpu", &cpu) != 0)
        return NULL;
    char text[64];
    for (int i = 1; i <= ORDERS; i++) {
        int n = snprintf(text, sizeof text, "order %d", i);
        rbus_publish(orders, text, (size_t)n);
        if (i % 10 == 0) {
            n = snprintf(text, sizeof text, "cpu %d%%", i % 100);
            rbus_publish(cpu, text, (size_t)n);
        }
        if (i % 100 == 0) /* bursts with pauses, so the loop also sleeps */
            nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
    /* Closing a subscription wakes its fd; its loop sees -ESHUTDOWN. */
    for (int i = 0; i < p->nsources; i++)
        rbus_sub_close(p->sources[i].sub);
    return NULL;
}

/* Takes everything queued. Returns 1 while the subscription is open, 0
 * once it is closed and drained, -1 on an error. */
static int drain(struct source *src)
{
    rbus_msg *batch[BATCH];
    for (;;) {
        int n = rbus_recv_batch(src->sub, batch, BATCH, 0);
        if (n == -EAGAIN)
            return 1; /* the fd is re-armed: back to epoll_wait */
        if (n == -ESHUTDOWN)
            return 0;
        if (n < 0) {
            fprintf(stderr, "%s: %s\n", src->name, rbus_strerror(n));
            return -1;
        }
        for (int i = 0; i < n; i++) {
            src->received++;
            rbus_msg_release(batch[i]);
        }
    }
}

int main(void)
{
    rbus *bus;
    if (rbus_create(&bus, NULL) != 0)
        return 1;

    /* Orders must all arrive (block); CPU samples may lag (keep the newest). */
    struct source sources[] = {{"orders", NULL, 0}, {"metrics", NULL, 0}};
    const char *patterns[] = {"orders.>", "metrics.>"};
    const rbus_overflow policies[] = {RBUS_BLOCK, RBUS_DROP_OLDEST};
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("epoll_create1");
        return 1;
    }
    for (int i = 0; i < 2; i++) {
        rbus_sub_opts opts;
        rbus_sub_opts_init(&opts);
        opts.capacity = 64;
        opts.overflow = policies[i];
        int fd;
        if (rbus_subscribe(bus, patterns[i], &opts, &sources[i].sub) != 0 ||
            (fd = rbus_sub_fd(sources[i].sub)) < 0) {
            fprintf(stderr, "cannot subscribe to %s\n", patterns[i]);
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &sources[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            perror("epoll_ctl");
            return 1;
        }
    }

    struct publisher pub = {bus, sources, 2};
    pthread_t thread;
    if (pthread_create(&thread, NULL, publish_all, &pub) != 0)
        return 1;

    int open = 2, status = 0;
    while (open > 0) {
        struct epoll_event events[8];
        int n = epoll_wait(ep, events, 8, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("epoll_wait");
            status = 1;
            break;
        }
        for (int i = 0; i < n; i++) {
            struct source *src = events[i].data.ptr;
            int rc = drain(src);
            if (rc <= 0) {
                /* Out of the loop before rbus_unsubscribe closes the fd. */
                epoll_ctl(ep, EPOLL_CTL_DEL, rbus_sub_fd(src->sub), NULL);
                open--;
                status |= rc < 0;
            }
        }
    }
    pthread_join(thread, NULL);

    for (int i = 0; i < 2; i++) {
        rbus_sub_stats st;
        rbus_sub_stats_get(sources[i].sub, &st);
        printf("%-8s received %lu, dropped %llu\n", sources[i].name, sources[i].received,
               (unsigned long long)(st.dropped_oldest + st.dropped_newest + st.dropped_timeout));
    }
    if (sources[0].received != ORDERS) {
        fprintf(stderr, "orders: expected %d\n", ORDERS);
        status = 1;
    }
    close(ep);
    for (int i = 0; i < 2; i++)
        rbus_unsubscribe(sources[i].sub);
    rbus_destroy(bus);
    return status;
}
