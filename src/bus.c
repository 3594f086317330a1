/*
 * bus.c - the bus: configuration, memory hooks, close and destroy.
 */
#include "internal.h"

#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define RBUS_DEFAULT_CAPACITY 1024u
#define RBUS_DEFAULT_MAX_PAYLOAD 65536u
#define RBUS_DEFAULT_DEDUP_KEYS 4096u
#define RBUS_DEFAULT_MAX_TOPICS 65536u

const char *rbus_version(void)
{
#define RBUS_STR_(x) #x
#define RBUS_STR(x) RBUS_STR_(x)
    return RBUS_STR(RBUS_VERSION_MAJOR) "." RBUS_STR(RBUS_VERSION_MINOR) "." RBUS_STR(
        RBUS_VERSION_PATCH);
}

const char *rbus_strerror(int rc)
{
    switch (rc) {
    case 0: return "success";
    case RBUS_DUPLICATE: return "duplicate: suppressed by idempotency key";
    case -EINVAL: return "invalid argument";
    case -ENOMEM: return "out of memory";
    case -EAGAIN:
        return "try again: no message queued, or over the topic's rate limit";
    case -ETIMEDOUT: return "timed out";
    case -EMSGSIZE: return "payload larger than max_payload";
    case -ESHUTDOWN: return "closed";
    case -ENOSPC: return "too many topics";
    case -ENOBUFS:
        return "no free slot in the topic's key window (too many keyed publishes at once)";
    case -EBUSY: return "busy: a dispatcher runs on the subscription";
    case -EDEADLK: return "would deadlock: called from its own handler";
    case -EOVERFLOW:
        return "the text would exceed INT_MAX bytes";
    case -EMFILE: return "too many open files";
    case -ENFILE: return "too many open files in the system";
    case -ENODEV: return "no such device";
    /* ringbus_nats (the NATS bridge) adds these. */
    case -ECONNREFUSED: return "NATS: no server answered";
    case -ENOTSUP: return "NATS: the server has no JetStream";
    case -ENOENT: return "NATS: no such JetStream stream";
    case -EIO: return "NATS: error from the server or client";
    default: return "unknown ringbus error";
    }
}

#if defined(RBUS_CHECKED)
void rbus__misuse(const char *call, const char *what)
{
    fprintf(stderr, "ringbus: %s: %s\n", call, what);
    abort();
}
#endif

/* ----------------------------------------------------------- memory */

static void *default_alloc(size_t size, void *arg)
{
    (void)arg;
    return malloc(size);
}

static void default_free(void *ptr, void *arg)
{
    (void)arg;
    free(ptr);
}

void *rbus__alloc(rbus *bus, size_t size)
{
    return bus->alloc.alloc(size, bus->alloc.arg);
}

void *rbus__zalloc(rbus *bus, size_t size)
{
    void *p = bus->alloc.alloc(size, bus->alloc.arg);
    if (p)
        memset(p, 0, size);
    return p;
}

void rbus__free(rbus *bus, void *ptr)
{
    if (ptr)
        bus->alloc.free(ptr, bus->alloc.arg);
}

void *rbus__zalloc_aligned(rbus *bus, size_t size)
{
    size_t total = size + RBUS__CACHELINE + sizeof(void *);
    if (total < size)
        return NULL;
    unsigned char *raw = rbus__alloc(bus, total);
    if (!raw)
        return NULL;
    uintptr_t p =
        ((uintptr_t)raw + sizeof(void *) + RBUS__CACHELINE - 1) & ~(uintptr_t)(RBUS__CACHELINE - 1);
    memcpy((void *)(p - sizeof(void *)), &raw, sizeof raw);
    memset((void *)p, 0, size);
    return (void *)p;
}

void rbus__free_aligned(rbus *bus, void *ptr)
{
    if (!ptr)
        return;
    void *raw;
    memcpy(&raw, (unsigned char *)ptr - sizeof(void *), sizeof raw);
    rbus__free(bus, raw);
}

static void **pool_link(void *item, size_t link)
{
    return (void **)((unsigned char *)item + link);
}

void *rbus__pool_take(rbus *bus, struct rbus_pool *pool, size_t link)
{
    void *item = NULL;
    pthread_mutex_lock(&bus->lock);
    if (pool->len > RBUS__POOL_HOLD)
        item = rbus__pool_drain(pool, link);
    pthread_mutex_unlock(&bus->lock);
    return item;
}

void rbus__pool_put(rbus *bus, struct rbus_pool *pool, void *item, size_t link)
{
    pthread_mutex_lock(&bus->lock);
    *pool_link(item, link) = NULL;
    if (pool->tail)
        *pool_link(pool->tail, link) = item;
    else
        pool->head = item;
    pool->tail = item;
    pool->len++;
    pthread_mutex_unlock(&bus->lock);
}

void *rbus__pool_drain(struct rbus_pool *pool, size_t link)
{
    void *item = pool->head;
    if (!item)
        return NULL;
    pool->head = *pool_link(item, link);
    if (!pool->head)
        pool->tail = NULL;
    pool->len--;
    *pool_link(item, link) = NULL;
    return item;
}

char *rbus__strdup(rbus *bus, const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = rbus__alloc(bus, n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* ----------------------------------------------------------- config */

void rbus_config_init(rbus_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->default_capacity = RBUS_DEFAULT_CAPACITY;
    cfg->max_payload = RBUS_DEFAULT_MAX_PAYLOAD;
    cfg->dedup_keys = RBUS_DEFAULT_DEDUP_KEYS;
    cfg->dedup_window_ns = 0;
    cfg->max_topics = RBUS_DEFAULT_MAX_TOPICS;
    cfg->allocator = NULL;
    cfg->drop_advisories = false;
    cfg->advisory_interval_ns = UINT64_C(1000000000);
    cfg->time_source = RBUS_TIME_PRECISE;
}

static int config_resolve(const rbus_config *in, rbus_config *out, rbus_allocator *alloc)
{
    rbus_config_init(out);
    if (in) {
        /* Zero means default, field by field. */
        if (in->default_capacity)
            out->default_capacity = in->default_capacity;
        if (in->max_payload)
            out->max_payload = in->max_payload;
        if (in->dedup_keys)
            out->dedup_keys = in->dedup_keys;
        out->dedup_window_ns = in->dedup_window_ns;
        if (in->max_topics)
            out->max_topics = in->max_topics;
        out->allocator = NULL;
        out->drop_advisories = in->drop_advisories;
        if (in->advisory_interval_ns)
            out->advisory_interval_ns = in->advisory_interval_ns;
        out->retain = in->retain;
        out->time_source = in->time_source;
    }
    if (out->time_source != RBUS_TIME_PRECISE && out->time_source != RBUS_TIME_COARSE)
        return rbus__fail(-EINVAL, "rbus_create: time_source %d is no rbus_time_source",
                          (int)out->time_source);
    if (out->retain > RBUS_MAX_RETAIN)
        return rbus__fail(-EINVAL,
                          "rbus_create: retain %" PRIu32 " above RBUS_MAX_RETAIN (%" PRIu32 ")",
                          out->retain, RBUS_MAX_RETAIN);
    if (out->advisory_interval_ns < UINT64_C(1000000) ||
        out->advisory_interval_ns > UINT64_C(3600000000000))
        return rbus__fail(-EINVAL,
                          "rbus_create: advisory_interval_ns %" PRIu64 " outside 1 ms..1 hour",
                          out->advisory_interval_ns);
    if (out->default_capacity > RBUS_MAX_CAPACITY)
        return rbus__fail(-EINVAL,
                          "rbus_create: default_capacity %" PRIu32
                          " above RBUS_MAX_CAPACITY (%" PRIu32 ")",
                          out->default_capacity, RBUS_MAX_CAPACITY);
    if (out->max_payload > RBUS_MAX_PAYLOAD_LIMIT)
        return rbus__fail(-EINVAL,
                          "rbus_create: max_payload %" PRIu32
                          " above RBUS_MAX_PAYLOAD_LIMIT (%" PRIu32 ")",
                          out->max_payload, RBUS_MAX_PAYLOAD_LIMIT);
    if (out->dedup_window_ns > (uint64_t)INT64_MAX)
        return rbus__fail(-EINVAL, "rbus_create: dedup_window_ns %" PRIu64 " above INT64_MAX",
                          out->dedup_window_ns);
    if (out->dedup_keys > RBUS_MAX_DEDUP_KEYS && out->dedup_keys != RBUS_DEDUP_OFF)
        return rbus__fail(-EINVAL,
                          "rbus_create: dedup_keys %" PRIu32 " above RBUS_MAX_DEDUP_KEYS (%" PRIu32
                          ") and not RBUS_DEDUP_OFF",
                          out->dedup_keys, RBUS_MAX_DEDUP_KEYS);
    if (in && in->allocator) {
        if (!in->allocator->alloc)
            return rbus__fail_static(-EINVAL, "rbus_create: allocator->alloc is NULL");
        if (!in->allocator->free)
            return rbus__fail_static(-EINVAL, "rbus_create: allocator->free is NULL");
        *alloc = *in->allocator;
    } else {
        alloc->alloc = default_alloc;
        alloc->free = default_free;
        alloc->arg = NULL;
    }
    return 0;
}

/* --------------------------------------------------------- lifecycle */

static _Atomic uint64_t next_bus_id = 1;

int rbus_create(rbus **out, const rbus_config *cfg)
{
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_create: out is NULL");
    *out = NULL;

    rbus_config resolved;
    rbus_allocator alloc;
    int rc = config_resolve(cfg, &resolved, &alloc);
    if (rc)
        return rc;

    /* The bus itself must be cache-line aligned, and our aligned helper
     * needs a bus to reach the hooks: borrow a stack copy of the hooks. */
    rbus boot;
    memset(&boot, 0, sizeof boot);
    boot.alloc = alloc;
    rbus *bus = rbus__zalloc_aligned(&boot, sizeof *bus);
    if (!bus)
        return rbus__fail(-ENOMEM, "rbus_create: out of memory for the bus (%zu bytes)",
                          sizeof *bus);
    bus->cfg = resolved;
    bus->alloc = alloc;
    bus->nbuckets = 64;
    bus->buckets = rbus__zalloc(bus, bus->nbuckets * sizeof *bus->buckets);
    if (!bus->buckets) {
        rbus__free_aligned(&boot, bus);
        return rbus__fail_static(-ENOMEM, "rbus_create: out of memory for the topic registry");
    }
    bus->id = atomic_fetch_add_explicit(&next_bus_id, 1, memory_order_relaxed);
    if (getrandom(&bus->dedup_seed, sizeof bus->dedup_seed, GRND_NONBLOCK) !=
        (ssize_t)sizeof bus->dedup_seed)
        bus->dedup_seed = (uint64_t)rbus__now_ns() * 0x9E3779B97F4A7C15u ^ bus->id;
    bus->next_sub_id = 1;
    atomic_init(&bus->retains, resolved.retain != 0);
    ck_epoch_init(&bus->epoch);
    pthread_mutex_init(&bus->route_lock, NULL);
    pthread_mutex_init(&bus->lock, NULL);
    pthread_mutex_init(&bus->dedup_lock, NULL);
    rbus__registry_add(bus);
    if ((rc = rbus__advisor_start(bus)) != 0) {
        rbus_destroy(bus);
        return rc;
    }
    *out = bus;
    return 0;
}

/* Called by ck each time a poll finds a reader that has not yet moved on.
 * Read sections are short, so the first polls only yield; a reader that is
 * still there was preempted (or parked by a test), and then we sleep,
 * doubling up to 1 ms, rather than burn the core it may need. */
static void synchronize_backoff(ck_epoch_t *epoch, ck_epoch_record_t *reader, void *arg)
{
    (void)epoch;
    (void)reader;
    unsigned *polls = arg;
    if (*polls < 8) {
        sched_yield();
    } else {
        unsigned shift = *polls - 8 < 10 ? *polls - 8 : 10;
        struct timespec ts = {0, 1000L << shift}; /* 1 us .. 1.024 ms */
        nanosleep(&ts, NULL);
    }
    (*polls)++;
}

void rbus__synchronize(rbus *bus)
{
    /* ck_epoch_synchronize_wait needs no record of our own, so any thread
     * may call it, including one that never published on this bus. */
    RBUS__PAUSE(SYNCHRONIZE);
    unsigned polls = 0;
    ck_epoch_synchronize_wait(&bus->epoch, synchronize_backoff, &polls);
#if defined(RBUS_TSAN)
    /* Every read section releases this address when it ends (thread.c);
     * acquiring it here gives TSan the edge the epoch provides. */
    RBUS__TSAN_ACQUIRE(&bus->epoch);
#endif
}

void rbus_close(rbus *bus)
{
    RBUS__PAUSE(RBUS_CLOSE);
    if (!bus)
        return;
    /* First: the advisory thread publishes, and a closed bus refuses. */
    rbus__advisor_stop(bus);
    /* The routing lock: no subscribe or sub_close runs meanwhile, and
     * bus->lock stays free for stats, Prometheus and topic_open while we
     * wait for the grace period and the blocked publishers. */
    pthread_mutex_lock(&bus->route_lock);
    if (bus->closed) {
        pthread_mutex_unlock(&bus->route_lock);
        return;
    }
    /* 1. New publishes see `closing` inside their read section and fail. */
    atomic_store_explicit(&bus->closing, 1, memory_order_seq_cst);
    /* 2. Publishers blocked for room re-check and give up (dropped_closed),
     *    wherever they sleep. */
    rbus__event_broadcast(&bus->room_ev);
    pthread_mutex_lock(&bus->lock);
    for (rbus_sub *s = bus->subs; s; s = s->bus_next)
        rbus__event_broadcast(&s->room_ev);
    pthread_mutex_unlock(&bus->lock);
    /* 3. Every publish that read `closing` as 0 has left its read section;
     *    those that went on to wait registered in blocked_publishers first. */
    rbus__synchronize(bus);
    for (;;) {
        uint32_t seen = rbus__event_prepare(&bus->close_ev);
        if (atomic_load_explicit(&bus->blocked_publishers, memory_order_seq_cst) == 0)
            break;
        rbus__event_wait(&bus->close_ev, seen, -1);
    }
    /* 4. No enqueue can happen any more: receivers may now end on empty. */
    pthread_mutex_lock(&bus->lock);
    for (rbus_sub *s = bus->subs; s; s = s->bus_next)
        rbus__sub_finish_close(s);
    pthread_mutex_unlock(&bus->lock);
    bus->closed = true;
    pthread_mutex_unlock(&bus->route_lock);
    /* Every topic is ready now: a loop waiting to publish wakes, and
     * meets -ESHUTDOWN. */
    rbus__ready_refresh_all(bus);
}

void rbus_destroy(rbus *bus)
{
    RBUS__PAUSE(RBUS_DESTROY);
    if (!bus)
        return;
    /* Dispatchers first, while the bus is open: what they hold still gets
     * its last attempts and dead letters. */
    rbus__dispatch_stop_all(bus);
    rbus_close(bus);
#if defined(RBUS_CHECKED)
    /* A reference still held is a leak, or a use after the free below. */
    pthread_mutex_lock(&bus->lock);
    uint64_t held = rbus__held_read(bus);
    pthread_mutex_unlock(&bus->lock);
    if (held)
        fprintf(stderr,
                "ringbus: rbus_destroy: %llu message reference(s) still held by the "
                "application; rbus_msg_release each before rbus_destroy\n",
                (unsigned long long)held);
#endif
    rbus__registry_remove(bus);
    while (bus->subs) {
        rbus_sub *s = bus->subs;
        bus->subs = s->bus_next;
        rbus__sub_free(s); /* releases its queued messages into the caches */
    }
    rbus__sub_pool_free(bus);
    rbus__dispatch_pool_free(bus);
    rbus__topics_free_all(bus);
    rbus__advisor_free(bus);
    rbus__thread_free_all(bus);
    rbus__free(bus, bus->buckets);
    pthread_mutex_destroy(&bus->dedup_lock);
    pthread_mutex_destroy(&bus->lock);
    pthread_mutex_destroy(&bus->route_lock);
    rbus_allocator alloc = bus->alloc;
    rbus boot;
    memset(&boot, 0, sizeof boot);
    boot.alloc = alloc;
    rbus__free_aligned(&boot, bus);
}
