/*
 * pubsub_server.c - a small TCP pub/sub server on 127.0.0.1 around one bus:
 * the end-to-end test of rbus_sub_fd in epoll loops shared with sockets,
 * signalfd and timerfd, driven by pubsub_client.c (examples/epoll_server.c
 * is the five-minute version of the same idea).
 *
 *   e2e_pubsub_server PORT [METRICS_PORT] [--port-file FILE] [--exit-after-ms N]
 *
 * PORT 0 (or METRICS_PORT 0) = any free port; the bound ports are printed
 * and, with --port-file, written as "PORT METRICS_PORT\n" once listening
 * (METRICS_PORT 0 there = no metrics listener). Protocol, one command a line:
 *
 *   PUB topic text...   publish text to topic; replies OK or ERR <reason>
 *   SUB pattern         one more subscription (drop-oldest, 256 deep); likewise
 *   QUIT                close the connection
 *
 * and, for every message a client's subscriptions take,
 *
 *   MSG topic seq text
 *
 * GET /metrics on METRICS_PORT answers with rbus_stats_prometheus().
 * SIGINT, SIGTERM or --exit-after-ms stop it cleanly (exit status 0).
 *
 * Threads: the main thread accepts and serves /metrics; WORKERS threads
 * each run an epoll loop over their clients' sockets and their clients'
 * subscription fds. Nothing in a loop ever blocks: publishes do not wait
 * (timeout_ns < 0; the subscriptions here are drop-oldest anyway), and a
 * client that reads too slowly loses messages (counted), not the loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <ringbus.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 2
#define SUB_CAPACITY 256
#define MAX_SUBS_PER_CLIENT 16
#define IN_CAP 8192         /* longest command line, newline included */
#define OUT_CAP (64 * 1024) /* per-client output bound */
#define REPLY_MAX 256       /* longest OK/ERR reply; always kept free for one */
#define MAX_TOPICS 4096     /* bounds what clients can make the bus allocate */
#define MAX_HTTP 16
#define HTTP_REQ_CAP 2048
#define HTTP_DEADLINE_MS 5000
#define TOPIC_BUCKETS 256
#define BATCH 32

/* epoll_data.ptr always points at one of these, first member of its owner. */
enum kind { K_STOP, K_HANDOFF, K_CLIENT, K_SUB, K_LISTEN, K_METRICS, K_SIGNAL, K_TIMER, K_HTTP };
struct tag {
    enum kind kind;
};
static struct tag listen_tag = {K_LISTEN}, metrics_tag = {K_METRICS}, signal_tag = {K_SIGNAL},
                  timer_tag = {K_TIMER};

struct client;

struct csub {
    struct tag tag;
    rbus_sub *sub;
    int fd; /* owned by sub */
    struct client *c;
    struct csub *next;
};

struct client {
    struct tag tag;
    int fd;
    unsigned long long id;
    uint32_t events; /* as registered with epoll */
    bool dead, quit, eof, in_blocked;
    unsigned nsubs;
    struct csub *subs;
    uint64_t dropped;
    struct client *prev, *next; /* live list, or the zombie list once dead */
    size_t in_len, out_len;
    char in[IN_CAP];
    char out[OUT_CAP];
};

struct server;

struct worker {
    struct server *srv;
    pthread_t thread;
    int ep;
    int handoff[2]; /* accepted fds, as ints: writes this small are atomic */
    struct tag handoff_tag;
    struct client *clients;
    struct client *zombies; /* closed during this epoll batch; freed after it */
    uint64_t dropped, served;
};

struct topic_ent {
    rbus_topic *topic;
    struct topic_ent *next;
    char name[];
};

struct server {
    rbus *bus;
    int stop_fd; /* eventfd, written once; never read, so every worker sees it */
    struct tag stop_tag;
    pthread_mutex_t topics_lock;
    struct topic_ent *topics[TOPIC_BUCKETS];
    struct worker workers[WORKERS];
};

static atomic_ullong next_client_id = 1;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------- topics */

/* rbus_topic_open once per name: the handle lives as long as the bus. */
static int topic_get(struct server *s, const char *name, rbus_topic **out)
{
    uint32_t h = 2166136261u;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    struct topic_ent **head = &s->topics[h % TOPIC_BUCKETS];
    int rc = 0;

    pthread_mutex_lock(&s->topics_lock);
    struct topic_ent *e = *head;
    while (e && strcmp(e->name, name) != 0)
        e = e->next;
    if (!e) {
        rbus_topic *t;
        size_t len = strlen(name);
        rc = rbus_topic_open(s->bus, name, &t);
        if (rc == 0) {
            e = malloc(sizeof *e + len + 1);
            if (e) {
                e->topic = t;
                memcpy(e->name, name, len + 1);
                e->next = *head;
                *head = e;
            } else {
                *out = t; /* still usable; just not cached */
            }
        }
    }
    if (e)
        *out = e->topic;
    pthread_mutex_unlock(&s->topics_lock);
    return rc;
}

static void topics_free(struct server *s)
{
    for (size_t i = 0; i < TOPIC_BUCKETS; i++) {
        while (s->topics[i]) {
            struct topic_ent *e = s->topics[i];
            s->topics[i] = e->next;
            free(e);
        }
    }
}

/* ------------------------------------------------------------ clients */

/* Sends what the socket takes now. false: the connection is broken. */
static bool flush_out(struct client *c)
{
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t n = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        return false;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    return true;
}

static void reply(struct client *c, const char *a, const char *b)
{
    int n = snprintf(c->out + c->out_len, OUT_CAP - c->out_len, "%s%s\n", a, b ? b : "");
    /* process_input() keeps REPLY_MAX free, so this fits; a long reason is cut. */
    if (n < 0)
        return;
    if ((size_t)n >= OUT_CAP - c->out_len || (size_t)n >= REPLY_MAX) {
        size_t cut = REPLY_MAX - 1;
        c->out[c->out_len + cut - 1] = '\n';
        c->out_len += cut;
    } else {
        c->out_len += (size_t)n;
    }
}

static void close_client(struct worker *w, struct client *c)
{
    for (struct csub *cs = c->subs; cs; cs = cs->next) {
        if (cs->sub) {
            /* The fd belongs to the subscription: out of epoll first. */
            epoll_ctl(w->ep, EPOLL_CTL_DEL, cs->fd, NULL);
            rbus_unsubscribe(cs->sub);
            cs->sub = NULL;
        }
    }
    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->dropped)
        fprintf(stderr, "pubsub_server: client %llu: %llu messages dropped (slow reader)\n", c->id,
                (unsigned long long)c->dropped);
    w->dropped += c->dropped;

    if (c->prev)
        c->prev->next = c->next;
    else
        w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->dead = true;
    c->prev = NULL;
    c->next = w->zombies;
    w->zombies = c;
}

static void free_zombies(struct worker *w)
{
    while (w->zombies) {
        struct client *c = w->zombies;
        w->zombies = c->next;
        while (c->subs) {
            struct csub *cs = c->subs;
            c->subs = cs->next;
            free(cs);
        }
        free(c);
    }
}

static void update_events(struct worker *w, struct client *c)
{
    uint32_t want =
        (c->in_blocked ? 0u : (uint32_t)EPOLLIN) | (c->out_len ? (uint32_t)EPOLLOUT : 0u);
    if (want == c->events)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = &c->tag};
    if (epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->events = want;
    else
        close_client(w, c);
}

static void cmd_pub(struct worker *w, struct client *c, char *args, size_t len)
{
    char *sp = memchr(args, ' ', len);
    const char *text = "";
    size_t tlen = 0;
    if (sp) {
        *sp = '\0';
        text = sp + 1;
        tlen = len - (size_t)(sp + 1 - args);
    }
    rbus_topic *t;
    int rc = topic_get(w->srv, args, &t);
    if (rc == 0) {
        /* Never wait for room: this thread serves other clients. */
        rbus_pub_opts po = {.timeout_ns = -1};
        rc = rbus_publish_ex(t, text, tlen, &po, NULL);
    }
    if (rc < 0)
        reply(c, "ERR ", rbus_strerror(rc));
    else
        reply(c, "OK", NULL);
}

static void cmd_sub(struct worker *w, struct client *c, const char *pattern)
{
    if (c->nsubs >= MAX_SUBS_PER_CLIENT) {
        reply(c, "ERR too many subscriptions", NULL);
        return;
    }
    struct csub *cs = calloc(1, sizeof *cs);
    if (!cs) {
        reply(c, "ERR ", rbus_strerror(-ENOMEM));
        return;
    }
    char name[48];
    snprintf(name, sizeof name, "client-%llu", c->id);
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.capacity = SUB_CAPACITY;
    so.overflow = RBUS_DROP_OLDEST; /* a slow client loses its oldest, stalls nobody */
    so.name = name;
    int rc = rbus_subscribe(w->srv->bus, pattern, &so, &cs->sub);
    if (rc == 0) {
        cs->fd = rbus_sub_fd(cs->sub);
        rc = cs->fd;
        if (cs->fd >= 0) {
            cs->tag.kind = K_SUB;
            cs->c = c;
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs->tag};
            rc = epoll_ctl(w->ep, EPOLL_CTL_ADD, cs->fd, &ev) == 0 ? 0 : -errno;
        }
        if (rc < 0)
            rbus_unsubscribe(cs->sub);
    }
    if (rc < 0) {
        free(cs);
        reply(c, "ERR ", rbus_strerror(rc));
        return;
    }
    cs->next = c->subs;
    c->subs = cs;
    c->nsubs++;
    reply(c, "OK", NULL);
}

static void handle_line(struct worker *w, struct client *c, char *line, size_t len)
{
    if (len && line[len - 1] == '\r')
        line[--len] = '\0';
    if (len == 0)
        return;
    if (len > 4 && memcmp(line, "PUB ", 4) == 0)
        cmd_pub(w, c, line + 4, len - 4);
    else if (len > 4 && memcmp(line, "SUB ", 4) == 0)
        cmd_sub(w, c, line + 4);
    else if (len == 4 && memcmp(line, "QUIT", 4) == 0)
        c->quit = true;
    else
        reply(c, "ERR unknown command", NULL);
}

/* Runs the complete lines received, while a reply has room (otherwise
 * input waits: backpressure on this client only). false: closed. */
static bool process_input(struct worker *w, struct client *c)
{
    size_t off = 0;
    c->in_blocked = false;
    while (!c->quit) {
        char *nl = memchr(c->in + off, '\n', c->in_len - off);
        if (!nl)
            break;
        if (OUT_CAP - c->out_len < REPLY_MAX) {
            if (!flush_out(c)) {
                close_client(w, c);
                return false;
            }
            if (OUT_CAP - c->out_len < REPLY_MAX) {
                c->in_blocked = true;
                break;
            }
        }
        *nl = '\0';
        handle_line(w, c, c->in + off, (size_t)(nl - (c->in + off)));
        off = (size_t)(nl - c->in) + 1;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    if (!c->quit && !c->in_blocked && c->in_len == IN_CAP) {
        reply(c, "ERR line too long", NULL);
        c->quit = true;
    }
    if (c->quit || (c->eof && !c->in_blocked)) {
        flush_out(c); /* best effort: the replies so far */
        close_client(w, c);
        return false;
    }
    if (!flush_out(c)) {
        close_client(w, c);
        return false;
    }
    update_events(w, c);
    return !c->dead;
}

static void client_event(struct worker *w, struct client *c, uint32_t events)
{
    if (events & (EPOLLERR | EPOLLHUP)) {
        close_client(w, c);
        return;
    }
    if (events & EPOLLOUT) {
        if (!flush_out(c)) {
            close_client(w, c);
            return;
        }
        if (c->in_blocked) {
            process_input(w, c); /* may unblock, or close */
            return;
        }
    }
    if ((events & EPOLLIN) && c->in_len < IN_CAP) {
        ssize_t n = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, 0);
        if (n == 0) {
            c->eof = true;
        } else if (n > 0) {
            c->in_len += (size_t)n;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            close_client(w, c);
            return;
        }
        process_input(w, c);
        return;
    }
    update_events(w, c);
}

/* Appends one MSG line, or drops it when the bounded buffer is full. */
static bool push_msg(struct client *c, const rbus_msg *m)
{
    char head[RBUS_MAX_TOPIC_LEN + 32];
    int h = snprintf(head, sizeof head, "MSG %s %llu ", rbus_msg_topic(m),
                     (unsigned long long)rbus_msg_seq(m));
    size_t size = rbus_msg_size(m);
    if (h < 0 || (size_t)h >= sizeof head)
        return false;
    size_t need = (size_t)h + size + 1 + REPLY_MAX;
    if (OUT_CAP - c->out_len < need && !flush_out(c))
        return false; /* caller closes */
    if (OUT_CAP - c->out_len < need) {
        c->dropped++;
        return true;
    }
    memcpy(c->out + c->out_len, head, (size_t)h);
    memcpy(c->out + c->out_len + (size_t)h, rbus_msg_data(m), size);
    c->out_len += (size_t)h + size;
    c->out[c->out_len++] = '\n';
    return true;
}

static void sub_event(struct worker *w, struct csub *cs)
{
    struct client *c = cs->c;
    rbus_msg *batch[BATCH];
    bool ok = true;
    /* Drain until -EAGAIN: only that re-arms the level-triggered fd. */
    for (;;) {
        int n = rbus_recv_batch(cs->sub, batch, BATCH, 0);
        if (n == -EAGAIN)
            break;
        if (n < 0) {
            /* Closed for good (bus shutting down): it would stay readable. */
            epoll_ctl(w->ep, EPOLL_CTL_DEL, cs->fd, NULL);
            break;
        }
        for (int i = 0; i < n; i++) {
            if (ok)
                ok = push_msg(c, batch[i]);
            rbus_msg_release(batch[i]);
        }
        if (!ok)
            break;
    }
    if (!ok || !flush_out(c)) {
        close_client(w, c);
        return;
    }
    if (c->in_blocked)
        process_input(w, c);
    else
        update_events(w, c);
}

static void take_handoffs(struct worker *w)
{
    int fds[64];
    ssize_t n = read(w->handoff[0], fds, sizeof fds);
    for (ssize_t i = 0; n > 0 && i < n / (ssize_t)sizeof fds[0]; i++) {
        struct client *c = malloc(sizeof *c);
        if (!c) {
            close(fds[i]);
            continue;
        }
        memset(c, 0, offsetof(struct client, in));
        c->tag.kind = K_CLIENT;
        c->fd = fds[i];
        c->id = atomic_fetch_add(&next_client_id, 1);
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->tag};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
            close(c->fd);
            free(c);
            continue;
        }
        c->next = w->clients;
        if (c->next)
            c->next->prev = c;
        w->clients = c;
        w->served++;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[64];
    bool stop = false;
    while (!stop) {
        int n = epoll_wait(w->ep, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("pubsub_server: epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            struct tag *t = evs[i].data.ptr;
            if (t->kind == K_STOP) {
                stop = true;
            } else if (t->kind == K_HANDOFF) {
                take_handoffs(w);
            } else if (t->kind == K_CLIENT) {
                struct client *c = (void *)t; /* t is its first member */
                if (!c->dead)
                    client_event(w, c, evs[i].events);
            } else if (t->kind == K_SUB) {
                struct csub *cs = (void *)t;
                if (!cs->c->dead)
                    sub_event(w, cs);
            }
        }
        free_zombies(w);
    }
    while (w->clients)
        close_client(w, w->clients);
    free_zombies(w);
    /* Clients handed over but not taken yet. */
    int fd;
    while (read(w->handoff[0], &fd, sizeof fd) == (ssize_t)sizeof fd)
        close(fd);
    return NULL;
}

/* ------------------------------------------------------------ metrics */

struct http_conn {
    struct tag tag;
    int fd;
    uint64_t started_ms;
    char *resp;
    size_t resp_len, resp_off;
    struct http_conn *prev, *next;
    size_t req_len;
    char req[HTTP_REQ_CAP];
};

static struct http_conn *http_conns;
static unsigned http_count;

static void http_close(int ep, struct http_conn *h)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, h->fd, NULL);
    close(h->fd);
    if (h->prev)
        h->prev->next = h->next;
    else
        http_conns = h->next;
    if (h->next)
        h->next->prev = h->prev;
    free(h->resp);
    free(h);
    http_count--;
}

static char *http_response(rbus *bus, const char *req, size_t *len)
{
    static const char not_found[] = "HTTP/1.0 404 Not Found\r\n"
                                    "Content-Type: text/plain\r\n"
                                    "Content-Length: 10\r\n"
                                    "Connection: close\r\n\r\n"
                                    "not found\n";
    char *out = NULL;
    const char *eol = strpbrk(req, "\r\n");
    size_t line = eol ? (size_t)(eol - req) : strlen(req);
    bool metrics = (line == 12 && memcmp(req, "GET /metrics", 12) == 0) ||
                   (line > 13 && memcmp(req, "GET /metrics ", 13) == 0);
    if (metrics) {
        /* The text can grow between the sizing call and the real one. */
        int need = rbus_stats_prometheus(bus, NULL, 0);
        char *body = NULL;
        while (need >= 0) {
            char *nb = realloc(body, (size_t)need + 1);
            if (!nb) {
                need = -ENOMEM;
                break;
            }
            body = nb;
            int got = rbus_stats_prometheus(bus, body, (size_t)need + 1);
            if (got >= 0 && got <= need) {
                need = got;
                break;
            }
            need = got;
        }
        if (need >= 0) {
            char head[160];
            int h = snprintf(head, sizeof head,
                             "HTTP/1.0 200 OK\r\n"
                             "Content-Type: text/plain; version=0.0.4\r\n"
                             "Content-Length: %d\r\n"
                             "Connection: close\r\n\r\n",
                             need);
            out = malloc((size_t)h + (size_t)need);
            if (out) {
                memcpy(out, head, (size_t)h);
                memcpy(out + h, body, (size_t)need);
                *len = (size_t)h + (size_t)need;
            }
        } else {
            fprintf(stderr, "pubsub_server: rbus_stats_prometheus: %s\n", rbus_strerror(need));
        }
        free(body);
        return out; /* NULL: the connection is just closed */
    }
    out = malloc(sizeof not_found - 1);
    if (out) {
        memcpy(out, not_found, sizeof not_found - 1);
        *len = sizeof not_found - 1;
    }
    return out;
}

static void http_event(int ep, rbus *bus, struct http_conn *h, uint32_t events)
{
    if (events & EPOLLERR) {
        http_close(ep, h);
        return;
    }
    if (!h->resp) {
        ssize_t n = recv(h->fd, h->req + h->req_len, HTTP_REQ_CAP - 1 - h->req_len, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            http_close(ep, h);
            return;
        }
        h->req_len += (size_t)n;
        h->req[h->req_len] = '\0';
        /* Answer once the headers are in (closing earlier can reset the
         * connection before the client reads the answer); a request too
         * big for the buffer is not /metrics anyway. */
        if (!strstr(h->req, "\r\n\r\n") && !strstr(h->req, "\n\n") && h->req_len < HTTP_REQ_CAP - 1)
            return;
        if (h->req_len == HTTP_REQ_CAP - 1)
            h->req[0] = '\0';
        h->resp = http_response(bus, h->req, &h->resp_len);
        if (!h->resp) {
            http_close(ep, h);
            return;
        }
        struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = &h->tag};
        if (epoll_ctl(ep, EPOLL_CTL_MOD, h->fd, &ev) != 0) {
            http_close(ep, h);
            return;
        }
    }
    while (h->resp_off < h->resp_len) {
        ssize_t n = send(h->fd, h->resp + h->resp_off, h->resp_len - h->resp_off, MSG_NOSIGNAL);
        if (n > 0) {
            h->resp_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            break;
        }
    }
    http_close(ep, h);
}

/* --------------------------------------------------------------- main */

static int listen_loopback(unsigned port, unsigned *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &sl) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    *bound = ntohs(sin.sin_port);
    return fd;
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v > max)
        return false;
    *out = v;
    return true;
}

static int write_port_file(const char *path, unsigned port, unsigned mport)
{
    /* Written aside and renamed, so a reader never sees half of it. */
    size_t len = strlen(path) + 5;
    char *tmp = malloc(len);
    if (!tmp)
        return -1;
    snprintf(tmp, len, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int rc = -1;
    if (f) {
        int w = fprintf(f, "%u %u\n", port, mport);
        if (fclose(f) == 0 && w > 0 && rename(tmp, path) == 0)
            rc = 0;
        else
            remove(tmp);
    }
    free(tmp);
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: e2e_pubsub_server PORT [METRICS_PORT] [--port-file FILE] "
                    "[--exit-after-ms N]\n");
}

static int add_watch(int ep, int fd, struct tag *t)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = t};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* Listens and hands clients out until a signal or the deadline. 0 when
 * stopped cleanly. */
static int serve(struct server *s, int ep, int lfd, int mfd, bool *accept_paused)
{
    unsigned rr = 0;
    uint64_t resume_at = 0;
    struct epoll_event evs[32];

    for (;;) {
        int timeout = (http_conns || *accept_paused) ? 200 : -1;
        int n = epoll_wait(ep, evs, 32, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("pubsub_server: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct tag *t = evs[i].data.ptr;
            if (t->kind == K_SIGNAL || t->kind == K_TIMER)
                return 0;
            if (t->kind == K_HTTP) {
                http_event(ep, s->bus, (void *)t, evs[i].events);
                continue;
            }
            bool metrics = t->kind == K_METRICS;
            int fd = accept4(metrics ? mfd : lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                    /* The pending connection keeps the listener readable:
                     * stop watching it for a while instead of spinning. */
                    epoll_ctl(ep, EPOLL_CTL_DEL, metrics ? mfd : lfd, NULL);
                    *accept_paused = true;
                    resume_at = now_ms() + 100;
                }
                continue;
            }
            if (metrics) {
                struct http_conn *h = http_count < MAX_HTTP ? malloc(sizeof *h) : NULL;
                if (!h) {
                    close(fd);
                    continue;
                }
                memset(h, 0, offsetof(struct http_conn, req));
                h->tag.kind = K_HTTP;
                h->fd = fd;
                h->started_ms = now_ms();
                if (add_watch(ep, fd, &h->tag) != 0) {
                    close(fd);
                    free(h);
                    continue;
                }
                h->next = http_conns;
                if (h->next)
                    h->next->prev = h;
                http_conns = h;
                http_count++;
            } else {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct worker *w = &s->workers[rr++ % WORKERS];
                if (write(w->handoff[1], &fd, sizeof fd) != (ssize_t)sizeof fd)
                    close(fd); /* that worker is far behind: shed the client */
            }
        }
        uint64_t now = now_ms();
        if (*accept_paused && now >= resume_at) {
            *accept_paused = false;
            add_watch(ep, lfd, &listen_tag);
            if (mfd >= 0)
                add_watch(ep, mfd, &metrics_tag); /* EEXIST if it was not paused */
        }
        for (struct http_conn *h = http_conns, *nx; h; h = nx) {
            nx = h->next;
            if (now - h->started_ms > HTTP_DEADLINE_MS)
                http_close(ep, h);
        }
    }
}

int main(int argc, char **argv)
{
    const char *port_file = NULL;
    unsigned long ports[2] = {0, 0}, exit_after = 0;
    int nports = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc) {
            port_file = argv[++i];
        } else if (strcmp(argv[i], "--exit-after-ms") == 0 && i + 1 < argc) {
            if (!parse_uint(argv[++i], 86400000ul, &exit_after) || exit_after == 0) {
                usage();
                return 2;
            }
        } else if (nports < 2 && parse_uint(argv[i], 65535, &ports[nports])) {
            nports++;
        } else {
            usage();
            return 2;
        }
    }
    if (nports == 0) {
        usage();
        return 2;
    }

    /* Blocked before any thread starts, so every thread inherits it and
     * only the signalfd sees the signals. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    static struct server srv;
    struct server *s = &srv;
    int status = 1, started = 0;
    int ep = -1, lfd = -1, mfd = -1, sfd = -1, tfd = -1;
    unsigned port = 0, mport = 0;
    bool accept_paused = false;

    s->stop_fd = -1;
    s->stop_tag.kind = K_STOP;
    pthread_mutex_init(&s->topics_lock, NULL);
    for (int i = 0; i < WORKERS; i++) {
        s->workers[i].ep = s->workers[i].handoff[0] = s->workers[i].handoff[1] = -1;
        s->workers[i].srv = s;
        s->workers[i].handoff_tag.kind = K_HANDOFF;
    }

    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_topics = MAX_TOPICS;
    cfg.max_payload = IN_CAP; /* no PUB line carries more */
    int rc = rbus_create(&s->bus, &cfg);
    if (rc != 0) {
        fprintf(stderr, "pubsub_server: rbus_create: %s\n", rbus_strerror(rc));
        return 1;
    }

    if ((lfd = listen_loopback((unsigned)ports[0], &port)) < 0) {
        perror("pubsub_server: listen");
        goto out;
    }
    if (nports == 2 && (mfd = listen_loopback((unsigned)ports[1], &mport)) < 0) {
        perror("pubsub_server: metrics listen");
        goto out;
    }
    if ((sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
        (ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (s->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        perror("pubsub_server: setup");
        goto out;
    }
    if (add_watch(ep, lfd, &listen_tag) != 0 ||
        (mfd >= 0 && add_watch(ep, mfd, &metrics_tag) != 0) ||
        add_watch(ep, sfd, &signal_tag) != 0) {
        perror("pubsub_server: epoll_ctl");
        goto out;
    }
    if (exit_after) {
        struct itimerspec its = {.it_value = {.tv_sec = (time_t)(exit_after / 1000),
                                              .tv_nsec = (long)(exit_after % 1000) * 1000000L}};
        if ((tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)) < 0 ||
            timerfd_settime(tfd, 0, &its, NULL) != 0 || add_watch(ep, tfd, &timer_tag) != 0) {
            perror("pubsub_server: timer");
            goto out;
        }
    }

    /* One thread accepts and deals clients round-robin rather than each
     * worker accepting on its own SO_REUSEPORT listener: the kernel spreads
     * those by a hash of the address pair, so a few clients can all land on
     * one worker, and with port 0 the workers would have to share the first
     * one's port (which any process of the same user could join too). */
    for (int i = 0; i < WORKERS; i++) {
        struct worker *w = &s->workers[i];
        if ((w->ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
            pipe2(w->handoff, O_NONBLOCK | O_CLOEXEC) != 0 ||
            add_watch(w->ep, s->stop_fd, &s->stop_tag) != 0 ||
            add_watch(w->ep, w->handoff[0], &w->handoff_tag) != 0) {
            perror("pubsub_server: worker setup");
            goto out;
        }
        if ((rc = pthread_create(&w->thread, NULL, worker_main, w)) != 0) {
            fprintf(stderr, "pubsub_server: pthread_create: %s\n", strerror(rc));
            goto out;
        }
        started++;
    }

    printf("pubsub_server: clients on 127.0.0.1:%u", port);
    if (mfd >= 0)
        printf(", metrics on http://127.0.0.1:%u/metrics", mport);
    printf("\n");
    fflush(stdout);
    if (port_file && write_port_file(port_file, port, mfd >= 0 ? mport : 0) != 0) {
        perror("pubsub_server: port file");
        goto out;
    }

    status = serve(s, ep, lfd, mfd, &accept_paused);

out:
    /* Stop accepting, then stop the workers; they close their clients. */
    if (lfd >= 0)
        close(lfd);
    if (mfd >= 0)
        close(mfd);
    if (started && eventfd_write(s->stop_fd, 1) != 0) {
        perror("pubsub_server: stop");
        abort(); /* workers could not be told to stop: joining would hang */
    }
    uint64_t dropped = 0, served = 0;
    for (int i = 0; i < WORKERS; i++) {
        struct worker *w = &s->workers[i];
        if (i < started) {
            pthread_join(w->thread, NULL);
            dropped += w->dropped;
            served += w->served;
        }
        if (w->ep >= 0)
            close(w->ep);
        if (w->handoff[0] >= 0) {
            close(w->handoff[0]);
            close(w->handoff[1]);
        }
    }
    while (http_conns)
        http_close(ep, http_conns);
    if (ep >= 0)
        close(ep);
    if (sfd >= 0)
        close(sfd);
    if (tfd >= 0)
        close(tfd);
    if (s->stop_fd >= 0)
        close(s->stop_fd);
    rbus_destroy(s->bus);
    topics_free(s);
    pthread_mutex_destroy(&s->topics_lock);
    if (status == 0)
        printf("pubsub_server: stopped; %llu clients served, %llu messages dropped\n",
               (unsigned long long)served, (unsigned long long)dropped);
    return status;
}
