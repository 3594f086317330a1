/*
 * advisory.c - drop advisories (rbus_config.drop_advisories): a bus thread
 * that, once per interval, compares every subscription's drop counters
 * with what it last told and publishes one rbus_drop_advisory on
 * RBUS_ADVISORY_DROPS for each subscription that dropped since. The drop
 * paths themselves do nothing more than count, as without advisories: no
 * clock read, no publish, so a drop can never lead to a publish inside a
 * publish. The thread's publishes never wait for room (a full RBUS_BLOCK
 * subscriber of the advisory topic counts a timeout drop instead), and an
 * advisory subscriber that drops advisories is told so like any other,
 * at most once per interval.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>

/* Subscriptions told about in one tick, at most; the others (with their
 * drops still counted) are told at the next. */
#define ADVISE_BATCH 64

struct rbus_advisor {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    bool stop;
    rbus_topic *topic;
    int64_t interval_ns;
    /* One tick's advisories, built under bus->lock, published after. */
    rbus_drop_advisory batch[ADVISE_BATCH];
};

static void copy_cut(char *dst, size_t size, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= size)
        n = size - 1;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Under bus->lock: the advisories due now, into a->batch; their count. A
 * subscription's told counts move on only when it gets an advisory, so
 * one left out of a full batch is told everything at the next tick. */
static size_t collect(rbus *bus, struct rbus_advisor *a, int64_t now)
{
    size_t n = 0;
    for (rbus_sub *s = bus->subs; s && n < ADVISE_BATCH; s = s->bus_next) {
        uint64_t offered, newest, refused, oldest;
        rbus__tally_sum(s, &offered, &newest, &refused, &oldest);
        uint64_t c[4] = {newest + refused, oldest,
                         atomic_load_explicit(&s->dropped_timeout, memory_order_relaxed),
                         atomic_load_explicit(&s->dropped_closed, memory_order_relaxed)};
        if (c[0] == s->advised[0] && c[1] == s->advised[1] && c[2] == s->advised[2] &&
            c[3] == s->advised[3])
            continue;
        rbus_drop_advisory *d = &a->batch[n++];
        memset(d, 0, sizeof *d);
        d->sub_id = s->id;
        d->dropped_newest = c[0] - s->advised[0];
        d->dropped_oldest = c[1] - s->advised[1];
        d->dropped_timeout = c[2] - s->advised[2];
        d->dropped_closed = c[3] - s->advised[3];
        d->since_ns = (uint64_t)s->advised_ns;
        d->time_ns = (uint64_t)now;
        copy_cut(d->pattern, sizeof d->pattern, s->pattern);
        copy_cut(d->name, sizeof d->name, s->name);
        memcpy(s->advised, c, sizeof c);
        s->advised_ns = now;
    }
    return n;
}

static void *advisor_main(void *arg)
{
    rbus *bus = arg;
    struct rbus_advisor *a = bus->advisor;
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.timeout_ns = -1; /* never wait for room */
    pthread_mutex_lock(&a->lock);
    int64_t next = rbus__now_ns() + a->interval_ns;
    while (!a->stop) {
        struct timespec until = {(time_t)(next / 1000000000), (long)(next % 1000000000)};
        pthread_cond_timedwait(&a->cond, &a->lock, &until);
        if (a->stop)
            break;
        int64_t now = rbus__now_ns();
        if (now < next)
            continue; /* woken early */
        next = now + a->interval_ns;
        pthread_mutex_unlock(&a->lock);
        pthread_mutex_lock(&bus->lock);
        size_t n = collect(bus, a, now);
        pthread_mutex_unlock(&bus->lock);
        /* Outside the bus lock: a publish may register this thread under
         * it. A closed bus refuses them, which ends nothing: stop does. */
        for (size_t i = 0; i < n; i++)
            rbus_publish_ex(a->topic, &a->batch[i], sizeof a->batch[i], &po, NULL);
        pthread_mutex_lock(&a->lock);
    }
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

int rbus__advisor_start(rbus *bus)
{
    if (!bus->cfg.drop_advisories)
        return 0;
    struct rbus_advisor *a = rbus__zalloc(bus, sizeof *a);
    if (!a)
        return rbus__fail_static(-ENOMEM, "rbus_create: out of memory for the advisory thread");
    int rc = rbus_topic_open(bus, RBUS_ADVISORY_DROPS, &a->topic);
    if (rc) {
        rbus__free(bus, a);
        return rc;
    }
    a->interval_ns = (int64_t)bus->cfg.advisory_interval_ns;
    pthread_mutex_init(&a->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cond, &ca);
    pthread_condattr_destroy(&ca);
    bus->advisor = a;
    if ((rc = pthread_create(&a->thread, NULL, advisor_main, bus)) != 0) {
        bus->advisor = NULL;
        pthread_cond_destroy(&a->cond);
        pthread_mutex_destroy(&a->lock);
        rbus__free(bus, a);
        return rbus__fail(-rc, "rbus_create: cannot start the advisory thread (%s)", strerror(rc));
    }
    return 0;
}

void rbus__advisor_stop(rbus *bus)
{
    struct rbus_advisor *a = bus->advisor;
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    bool first = !a->stop;
    a->stop = true;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->lock);
    if (first)
        pthread_join(a->thread, NULL);
}

/* rbus_destroy, after the thread is joined. */
void rbus__advisor_free(rbus *bus)
{
    struct rbus_advisor *a = bus->advisor;
    if (!a)
        return;
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->lock);
    rbus__free(bus, a);
    bus->advisor = NULL;
}
