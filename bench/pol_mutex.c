/*
 * pol_mutex.c - the queue people write by hand, in `ringbus-bench
 * policies`: per subscriber a ring of payload copies behind one mutex, with
 * "not empty" and "not full" condition variables, and the three policies
 * done the obvious way. It counts everything under its lock, so its
 * accounting is checked as ringbus's is.
 */
#define _GNU_SOURCE
#include "policies.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct mq {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    uint32_t cap, head, count, peak;
    bool closed;
    uint64_t offered, received, dropped_newest, dropped_oldest, dropped_timeout;
    unsigned char *slots;
    char pad[64];
};

struct mq_state {
    struct study_cfg cfg;
    struct mq q[8];
};

static const char *mq_unsupported(const struct study_cfg *c)
{
    return c->capacity > (1u << 24) ? "capacity above 2^24" : NULL;
}

static void mq_describe(const struct study_cfg *c, char *buf, size_t len)
{
    static const char *const how[POL_COUNT] = {"wait on not_full", "timed wait on not_full",
                                               "overwrite the oldest", "refuse when full"};
    if (c->policy == POL_BLOCK_TIMEOUT)
        snprintf(buf, len, "ring per sub, %s (%lld us), capacity %u", how[c->policy],
                 (long long)(c->block_timeout_ns / 1000), c->capacity);
    else
        snprintf(buf, len, "ring per sub, %s, capacity %u", how[c->policy], c->capacity);
}

static void mq_free(struct mq_state *s, int n)
{
    for (int i = 0; i < n; i++) {
        pthread_mutex_destroy(&s->q[i].mu);
        pthread_cond_destroy(&s->q[i].not_empty);
        pthread_cond_destroy(&s->q[i].not_full);
        free(s->q[i].slots);
    }
    free(s);
}

static int mq_open(const struct study_cfg *c, void **state)
{
    struct mq_state *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->cfg = *c;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    for (int i = 0; i < c->subscribers; i++) {
        struct mq *q = &s->q[i];
        q->cap = c->capacity;
        q->slots = malloc((size_t)c->capacity * c->payload);
        pthread_mutex_init(&q->mu, NULL);
        pthread_cond_init(&q->not_empty, &ca);
        pthread_cond_init(&q->not_full, &ca);
        if (!q->slots) {
            pthread_condattr_destroy(&ca);
            mq_free(s, i + 1);
            fprintf(stderr, "ringbus-bench: mutex-queue: out of memory\n");
            return -ENOMEM;
        }
    }
    pthread_condattr_destroy(&ca);
    *state = s;
    return 0;
}

static struct timespec deadline_in(int64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ns / 1000000000);
    ts.tv_nsec += (long)(ns % 1000000000);
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

static void mq_put(struct mq_state *s, struct mq *q, const void *buf, size_t len)
{
    pthread_mutex_lock(&q->mu);
    q->offered++;
    if (q->count == q->cap) {
        switch (s->cfg.policy) {
        case POL_BLOCK:
            while (q->count == q->cap && !q->closed)
                pthread_cond_wait(&q->not_full, &q->mu);
            if (q->closed) { /* finished early: a receiver failed */
                pthread_mutex_unlock(&q->mu);
                return;
            }
            break;
        case POL_BLOCK_TIMEOUT: {
            struct timespec until = deadline_in(s->cfg.block_timeout_ns);
            int rc = 0;
            while (q->count == q->cap && rc != ETIMEDOUT)
                rc = pthread_cond_timedwait(&q->not_full, &q->mu, &until);
            if (q->count == q->cap) {
                q->dropped_timeout++;
                pthread_mutex_unlock(&q->mu);
                return;
            }
            break;
        }
        case POL_DROP_OLDEST:
            q->dropped_oldest++;
            if (++q->head == q->cap)
                q->head = 0;
            q->count--;
            break;
        default:
            q->dropped_newest++;
            pthread_mutex_unlock(&q->mu);
            return;
        }
    }
    uint32_t tail = q->head + q->count;
    if (tail >= q->cap)
        tail -= q->cap;
    memcpy(q->slots + (size_t)tail * s->cfg.payload, buf, len);
    if (++q->count > q->peak)
        q->peak = q->count;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
}

static int mq_publish(void *state, const void *buf, size_t len)
{
    struct mq_state *s = state;
    for (int i = 0; i < s->cfg.subscribers; i++)
        mq_put(s, &s->q[i], buf, len);
    return 0;
}

static int mq_recv(void *state, int sub, unsigned char hdr[16], int timeout_ms)
{
    struct mq_state *s = state;
    struct mq *q = &s->q[sub];
    pthread_mutex_lock(&q->mu);
    if (q->count == 0 && !q->closed) {
        struct timespec until = deadline_in((int64_t)timeout_ms * 1000000);
        int rc = 0;
        while (q->count == 0 && !q->closed && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&q->not_empty, &q->mu, &until);
    }
    if (q->count == 0) {
        bool closed = q->closed;
        pthread_mutex_unlock(&q->mu);
        return closed ? -1 : 0;
    }
    /* Copies the whole payload out, as a user of this queue must before
     * letting go of the lock; the study reads the first 16 bytes. */
    unsigned char copy[4096];
    size_t n = s->cfg.payload < sizeof copy ? s->cfg.payload : sizeof copy;
    memcpy(copy, q->slots + (size_t)q->head * s->cfg.payload, n);
    if (++q->head == q->cap)
        q->head = 0;
    q->count--;
    q->received++;
    pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->mu);
    memcpy(hdr, copy, 16);
    return 1;
}

static void mq_finish(void *state)
{
    struct mq_state *s = state;
    for (int i = 0; i < s->cfg.subscribers; i++) {
        pthread_mutex_lock(&s->q[i].mu);
        s->q[i].closed = true;
        pthread_cond_broadcast(&s->q[i].not_empty);
        pthread_cond_broadcast(&s->q[i].not_full);
        pthread_mutex_unlock(&s->q[i].mu);
    }
}

static void mq_counts(void *state, int sub, struct study_counts *out)
{
    struct mq_state *s = state;
    struct mq *q = &s->q[sub];
    pthread_mutex_lock(&q->mu);
    *out = (struct study_counts){.counted = true,
                                 .offered = q->offered,
                                 .received = q->received,
                                 .depth = q->count,
                                 .dropped_newest = q->dropped_newest,
                                 .dropped_oldest = q->dropped_oldest,
                                 .dropped_timeout = q->dropped_timeout,
                                 .peak_depth = q->peak};
    pthread_mutex_unlock(&q->mu);
}

static void mq_close(void *state)
{
    struct mq_state *s = state;
    mq_free(s, s->cfg.subscribers);
}

const struct study_sys study_mutex = {
    .name = "mutex-queue",
    .unsupported = mq_unsupported,
    .describe = mq_describe,
    .open = mq_open,
    .publish = mq_publish,
    .recv = mq_recv,
    .finish = mq_finish,
    .counts = mq_counts,
    .close = mq_close,
};
