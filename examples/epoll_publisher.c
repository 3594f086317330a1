/*
 * epoll_publisher.c - publishing from an event loop without ever blocking
 * and without losing a message.
 *
 * The loop reads records from its clients (pipes here, sockets in a real
 * server) and publishes each one. A slow consumer holds an RBUS_BLOCK
 * subscription. The loop publishes with RBUS_PUB_ALL_OR_NONE: queued to
 * every RBUS_BLOCK subscription, or to none and -EAGAIN. When the bus is
 * not ready, it keeps the record it holds, stops reading its clients (the
 * pipes fill, and the clients feel the back-pressure as a socket's peer
 * would) and waits for the topic's readiness descriptor, which becomes
 * readable once the consumer has drained below its low watermark.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <ringbus.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define CLIENTS 4
#define RECORDS 20000 /* per client */

struct record {
    unsigned client, n;
};

static void *client_main(void *arg)
{
    int *p = arg; /* p[0]: the client number, p[1]: the pipe's write end */
    for (unsigned n = 0; n < RECORDS; n++) {
        struct record r = {(unsigned)p[0], n};
        if (write(p[1], &r, sizeof r) != (ssize_t)sizeof r) /* blocks while the pipe is full */
            break;
    }
    close(p[1]);
    return NULL;
}

static void *consumer_main(void *arg)
{
    rbus_sub *sub = arg;
    unsigned next[CLIENTS] = {0}, got = 0, bad = 0;
    rbus_msg *m;
    while (rbus_recv(sub, &m, -1) == 0) { /* until the bus is closed and drained */
        struct record r;
        memcpy(&r, rbus_msg_data(m), sizeof r);
        bad += r.n != next[r.client]; /* each client's records, in order, none missing */
        next[r.client] = r.n + 1;
        rbus_msg_release(m);
        if (++got % 512 == 0) /* slower than the loop */
            nanosleep(&(struct timespec){.tv_nsec = 2000000}, NULL);
    }
    printf("consumer: %u records, %u out of order or missing\n", got, bad);
    return (void *)(size_t)(got == CLIENTS * RECORDS && bad == 0);
}

/* Interest in the clients (reading) or in the topic's readiness. */
static void watch(int ep, const int *fds, int topic_fd, bool clients)
{
    for (int i = 0; i < CLIENTS; i++) {
        struct epoll_event ev = {.events = clients ? EPOLLIN : 0, .data.fd = fds[i]};
        if (fds[i] >= 0)
            epoll_ctl(ep, EPOLL_CTL_MOD, fds[i], &ev);
    }
    struct epoll_event ev = {.events = clients ? 0 : EPOLLIN, .data.fd = topic_fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, topic_fd, &ev);
}

int main(void)
{
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.capacity = 256;
    so.high_watermark = 192; /* not ready at 192 queued ... */
    so.low_watermark = 64;   /* ... ready again under 64 */
    if (rbus_create(&bus, NULL) != 0 || rbus_topic_open(bus, "records", &topic) != 0 ||
        rbus_subscribe(bus, "records", &so, &sub) != 0)
        return 1;
    int topic_fd = rbus_topic_fd(topic);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int fds[CLIENTS], args[CLIENTS][2];
    pthread_t clients[CLIENTS], consumer;
    pthread_create(&consumer, NULL, consumer_main, sub);
    for (int i = 0; i < CLIENTS; i++) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0)
            return 1;
        fcntl(p[0], F_SETFL, O_NONBLOCK);
        fds[i] = p[0];
        args[i][0] = i;
        args[i][1] = p[1];
        epoll_ctl(ep, EPOLL_CTL_ADD, p[0],
                  &(struct epoll_event){.events = EPOLLIN, .data.fd = p[0]});
        pthread_create(&clients[i], NULL, client_main, args[i]);
    }
    epoll_ctl(ep, EPOLL_CTL_ADD, topic_fd, &(struct epoll_event){.events = 0, .data.fd = topic_fd});

    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.flags = RBUS_PUB_ALL_OR_NONE;
    po.timeout_ns = -1; /* an event loop never waits */
    struct record held;
    bool holding = false;
    int open_clients = CLIENTS;
    unsigned long published = 0, refused = 0, pauses = 0;
    while (open_clients > 0 || holding) {
        struct epoll_event evs[CLIENTS + 1];
        int n = epoll_wait(ep, evs, CLIENTS + 1, -1);
        for (int e = 0; e < n; e++) {
            int fd = evs[e].data.fd;
            bool paused = fd == topic_fd; /* only watched while paused */
            if (paused && !holding) {
                watch(ep, fds, topic_fd, true); /* ready again: read the clients */
                break;
            }
            if (!paused) {
                if (holding)
                    continue; /* stale: we paused in this round */
                ssize_t r = read(fd, &held, sizeof held);
                if (r == 0) { /* this client is done */
                    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                    close(fd);
                    for (int i = 0; i < CLIENTS; i++)
                        fds[i] = fds[i] == fd ? -1 : fds[i];
                    open_clients--;
                    continue;
                }
                if (r != (ssize_t)sizeof held)
                    continue; /* EAGAIN: nothing yet */
                holding = true;
            }
            /* A record to publish: a new one, or the one kept while the
             * bus was not ready (the descriptor says it may be now). */
            rbus_pub_result res;
            int rc = rbus_publish_ex(topic, &held, sizeof held, &po, &res);
            if (rc == 0) {
                holding = false;
                published++;
            } else if (rc == -EAGAIN) {
                refused++; /* kept in `held` */
            } else {
                fprintf(stderr, "publish: %s\n", rbus_strerror(rc));
                return 1;
            }
            bool wait_ready = holding || res.at_high_watermark;
            if (wait_ready && !paused)
                pauses++;
            watch(ep, fds, topic_fd, !wait_ready);
            break; /* the interest changed: the other events may be stale */
        }
    }
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(clients[i], NULL);
    rbus_close(bus); /* the consumer drains what is queued, then stops */
    void *ok;
    pthread_join(consumer, &ok);
    printf("loop: %lu records published, %lu refused and kept, %lu pauses for readiness\n",
           published, refused, pauses);
    rbus_unsubscribe(sub);
    rbus_destroy(bus);
    close(ep);
    return ok ? 0 : 1;
}
