/*
 * pol_ringbus.c - ringbus in `ringbus-bench policies`: one topic, one
 * subscription per subscriber with the policy under study, the bus's
 * counting allocator hooked in.
 */
#define _GNU_SOURCE
#include "policies.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct rb_state {
    rbus *bus;
    rbus_topic *topic;
    int nsubs;
    uint32_t capacity;
    rbus_sub *subs[8];
};

static const char *rb_unsupported(const struct study_cfg *c)
{
    return c->capacity > RBUS_MAX_CAPACITY ? "capacity above RBUS_MAX_CAPACITY" : NULL;
}

static void rb_describe(const struct study_cfg *c, char *buf, size_t len)
{
    static const char *const names[POL_COUNT] = {"RBUS_BLOCK", "RBUS_BLOCK + timeout",
                                                 "RBUS_DROP_OLDEST", "RBUS_DROP_NEWEST"};
    if (c->policy == POL_BLOCK_TIMEOUT)
        snprintf(buf, len, "%s %lld us, capacity %u", names[c->policy],
                 (long long)(c->block_timeout_ns / 1000), c->capacity);
    else
        snprintf(buf, len, "%s, capacity %u", names[c->policy], c->capacity);
}

static int rb_open(const struct study_cfg *c, void **state)
{
    struct rb_state *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    rbus_config cfg;
    rbus_config_init(&cfg);
    if (c->alloc)
        cfg.allocator = &c->alloc->hooks;
    if (c->payload > cfg.max_payload)
        cfg.max_payload = (uint32_t)c->payload;
    s->capacity = c->capacity;
    int rc = rbus_create(&s->bus, &cfg);
    if (!rc)
        rc = rbus_topic_open(s->bus, "bench.policies", &s->topic);
    for (int i = 0; !rc && i < c->subscribers; i++) {
        rbus_sub_opts so;
        rbus_sub_opts_init(&so);
        so.capacity = c->capacity;
        so.overflow = c->policy == POL_DROP_OLDEST   ? RBUS_DROP_OLDEST
                      : c->policy == POL_DROP_NEWEST ? RBUS_DROP_NEWEST
                                                     : RBUS_BLOCK;
        so.block_timeout_ns = c->policy == POL_BLOCK_TIMEOUT ? c->block_timeout_ns : 0;
        so.name = study_policy_names[c->policy];
        rc = rbus_subscribe(s->bus, "bench.>", &so, &s->subs[i]);
        if (!rc)
            s->nsubs++;
    }
    if (rc) {
        fprintf(stderr, "ringbus-bench: ringbus: %s (%s)\n", rbus_strerror(rc),
                rbus_last_error_detail());
        if (s->bus)
            rbus_destroy(s->bus);
        free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static int rb_publish(void *state, const void *buf, size_t len)
{
    struct rb_state *s = state;
    int rc = rbus_publish(s->topic, buf, len);
    /* A drop is counted by the subscription, not returned; -ESHUTDOWN
     * cannot happen before finish. */
    if (rc)
        fprintf(stderr, "ringbus-bench: ringbus publish: %s\n", rbus_strerror(rc));
    return rc;
}

/* Grows the publisher thread's message cache to a full ring and some:
 * publishes capacity + 64 messages to a subscription of that size on a
 * topic of its own, then takes them back on this thread (a message returns
 * to the cache of the thread that built it). Without this, allocations
 * during the run count the cache growing to the deepest queue seen. */
static void rb_warm(void *state, size_t len)
{
    struct rb_state *s = state;
    rbus_topic *t;
    rbus_sub *w;
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.capacity = s->capacity + 64;
    so.overflow = RBUS_DROP_NEWEST;
    unsigned char buf[4096] = {0};
    if (len > sizeof buf || rbus_topic_open(s->bus, "warm.up", &t) ||
        rbus_subscribe(s->bus, "warm.up", &so, &w))
        return;
    for (uint32_t i = 0; i < so.capacity; i++)
        rbus_publish(t, buf, len);
    rbus_msg *m;
    while (rbus_recv(w, &m, 0) == 0)
        rbus_msg_release(m);
    rbus_unsubscribe(w);
}

static int rb_recv(void *state, int sub, unsigned char hdr[16], int timeout_ms)
{
    struct rb_state *s = state;
    rbus_msg *m;
    int rc = rbus_recv(s->subs[sub], &m, (int64_t)timeout_ms * 1000000);
    if (rc == -ESHUTDOWN)
        return -1; /* closed, and this subscription is drained */
    if (rc == -ETIMEDOUT || rc == -EAGAIN)
        return 0;
    if (rc) {
        fprintf(stderr, "ringbus-bench: ringbus recv: %s\n", rbus_strerror(rc));
        return -1;
    }
    memcpy(hdr, rbus_msg_data(m), 16);
    rbus_msg_release(m);
    return 1;
}

static void rb_finish(void *state)
{
    struct rb_state *s = state;
    rbus_close(s->bus); /* receivers drain what is queued, then get -ESHUTDOWN */
}

static void rb_counts(void *state, int sub, struct study_counts *out)
{
    struct rb_state *s = state;
    rbus_sub_stats st;
    memset(out, 0, sizeof *out);
    if (rbus_sub_stats_get(s->subs[sub], &st))
        return;
    out->counted = true;
    out->offered = st.offered;
    out->received = st.received;
    out->depth = st.depth;
    out->dropped_newest = st.dropped_newest;
    out->dropped_oldest = st.dropped_oldest;
    out->dropped_timeout = st.dropped_timeout;
    out->dropped_closed = st.dropped_closed;
    out->peak_depth = st.high_water;
}

static void rb_close(void *state)
{
    struct rb_state *s = state;
    rbus_destroy(s->bus);
    free(s);
}

const struct study_sys study_ringbus = {
    .name = "ringbus",
    .unsupported = rb_unsupported,
    .describe = rb_describe,
    .open = rb_open,
    .publish = rb_publish,
    .warm = rb_warm,
    .recv = rb_recv,
    .finish = rb_finish,
    .counts = rb_counts,
    .close = rb_close,
};
