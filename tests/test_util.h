/* Shared helpers for the cmocka tests. */
#ifndef RBUS_TEST_UTIL_H
#define RBUS_TEST_UTIL_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "ringbus.h"

/* Fails with both codes named, so a wrong errno reads as text. */
#define assert_rbus_rc(expr, want)                                                  \
    do {                                                                            \
        int rbus_got_ = (expr);                                                     \
        int rbus_want_ = (want);                                                    \
        if (rbus_got_ != rbus_want_) {                                              \
            print_error("%s: got %d (%s), want %d (%s)\n", #expr, rbus_got_,        \
                        rbus_strerror(rbus_got_), rbus_want_,                       \
                        rbus_strerror(rbus_want_));                                 \
            fail();                                                                 \
        }                                                                           \
    } while (0)
#define assert_rbus_ok(expr) assert_rbus_rc((expr), 0)

/* RBUS_STRESS_SCALE scales every stress size (default 1.0); the tests print
 * the sizes they actually used. */
static inline double rbus_test_stress_scale(void)
{
    const char *s = getenv("RBUS_STRESS_SCALE");
    double v = s ? strtod(s, NULL) : 1.0;
    return v > 0 ? v : 1.0;
}

static inline uint64_t rbus_test_scaled(uint64_t base, uint64_t minimum)
{
    double v = (double)base * rbus_test_stress_scale();
    uint64_t n = (uint64_t)v;
    return n < minimum ? minimum : n;
}

static inline void rbus_test_check_accounting(const rbus_sub_stats *st)
{
    assert_int_equal(st->offered, st->received + st->depth + st->dropped_newest +
                                      st->dropped_oldest + st->dropped_timeout +
                                      st->dropped_closed);
}

/* ------------------------------------------------------------------ time */

static inline uint64_t rbus_test_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

/* Sleeps the whole `us` microseconds, resuming after a signal. */
static inline void rbus_test_sleep_us(unsigned us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Waits up to `timeout_us` for *flag to be set, polling every millisecond;
 * whether it was. */
static inline bool rbus_test_wait_flag(atomic_int *flag, unsigned timeout_us)
{
    for (unsigned waited = 0; !atomic_load(flag) && waited < timeout_us; waited += 1000)
        rbus_test_sleep_us(1000);
    return atomic_load(flag);
}

/* --------------------------------------------------------- bus, topic, sub */

/* Opens (or finds) `name` declared keyed: its idempotency window exists. */
static inline rbus_topic *rbus_test_open_keyed(rbus *bus, const char *name)
{
    rbus_topic_opts opts;
    rbus_topic_opts_init(&opts);
    opts.keyed = true;
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open_ex(bus, name, &opts, &t));
    assert_non_null(t);
    return t;
}

/* Creates a bus with the default configuration and opens one topic on it. */
static inline rbus_topic *rbus_test_bus_and_topic(rbus **bus, const char *topic)
{
    *bus = NULL;
    assert_rbus_ok(rbus_create(bus, NULL));
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open(*bus, topic, &t));
    return t;
}

/* n more buses with the default configuration, one topic `topic` each:
 * for tests that make a thread use more buses than it keeps states for. */
static inline void rbus_test_buses_open(int n, rbus **buses, rbus_topic **topics,
                                        const char *topic)
{
    for (int i = 0; i < n; i++)
        topics[i] = rbus_test_bus_and_topic(&buses[i], topic);
}

static inline void rbus_test_buses_destroy(int n, rbus **buses)
{
    for (int i = 0; i < n; i++)
        rbus_destroy(buses[i]);
}

/* Subscribes with the given capacity, policy, block timeout and
 * watermarks (0: the defaults; every other option at its default). */
static inline rbus_sub *rbus_test_subscribe_full(rbus *bus, const char *pattern, uint32_t cap,
                                                 rbus_overflow policy, int64_t block_timeout_ns,
                                                 uint32_t high, uint32_t low)
{
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = cap;
    o.overflow = policy;
    o.block_timeout_ns = block_timeout_ns;
    o.high_watermark = high;
    o.low_watermark = low;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, pattern, &o, &s));
    return s;
}

/* The same, with default watermarks. */
static inline rbus_sub *rbus_test_subscribe(rbus *bus, const char *pattern, uint32_t cap,
                                            rbus_overflow policy, int64_t block_timeout_ns)
{
    return rbus_test_subscribe_full(bus, pattern, cap, policy, block_timeout_ns, 0, 0);
}

/* An RBUS_BLOCK subscription with the given capacity and watermarks (0:
 * the defaults). */
static inline rbus_sub *rbus_test_subscribe_marks(rbus *bus, const char *pattern, uint32_t cap,
                                                  uint32_t high, uint32_t low)
{
    return rbus_test_subscribe_full(bus, pattern, cap, RBUS_BLOCK, 0, high, low);
}

/* A topic that retains `retain` messages. */
static inline rbus_topic *rbus_test_open_retained(rbus *bus, const char *name, uint32_t retain)
{
    rbus_topic_opts o;
    rbus_topic_opts_init(&o);
    o.retain = retain;
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open_ex(bus, name, &o, &t));
    return t;
}

/* Polls fd once: true when it is readable within timeout_ms. */
static inline bool rbus_test_fd_readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int rc;
    do {
        rc = poll(&p, 1, timeout_ms);
    } while (rc < 0 && errno == EINTR);
    assert_true(rc >= 0);
    if (rc == 0)
        return false;
    assert_int_equal(p.revents & (POLLERR | POLLNVAL), 0);
    return (p.revents & POLLIN) != 0;
}

/* rbus_test_subscribe, then checks that the effective capacity is at least
 * `cap` and (to keep the tests small) at most 1024; stores it in *eff_cap
 * when eff_cap is not NULL. */
static inline rbus_sub *rbus_test_subscribe_checked(rbus *bus, const char *pattern, uint32_t cap,
                                                    rbus_overflow policy,
                                                    int64_t block_timeout_ns, uint32_t *eff_cap)
{
    rbus_sub *s = rbus_test_subscribe(bus, pattern, cap, policy, block_timeout_ns);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_true(st.capacity >= cap);
    assert_true(st.capacity <= 1024);
    if (eff_cap)
        *eff_cap = st.capacity;
    return s;
}

/* What rbus_config_init promises. */
static inline void rbus_test_assert_config_defaults(const rbus_config *cfg)
{
    assert_int_equal(cfg->default_capacity, 1024);
    assert_int_equal(cfg->max_payload, 65536);
    assert_int_equal(cfg->dedup_keys, 4096);
    assert_int_equal(cfg->dedup_window_ns, 0);
    assert_int_equal(cfg->max_topics, 65536);
    assert_null(cfg->allocator);
    assert_false(cfg->drop_advisories);
    assert_int_equal(cfg->advisory_interval_ns, 1000000000);
    assert_int_equal(cfg->time_source, RBUS_TIME_PRECISE);
}

/* m (a message, or NULL) has no key and no order key: NULL, with the
 * length written as 0 (it is `poison` before each call). */
static inline void rbus_test_assert_no_keys(const rbus_msg *m, size_t poison)
{
    size_t len = poison;
    assert_null(rbus_msg_key(m, &len));
    assert_int_equal(len, 0);
    assert_null(rbus_msg_key(m, NULL));
    len = poison;
    assert_null(rbus_msg_order_key(m, &len));
    assert_int_equal(len, 0);
    assert_null(rbus_msg_order_key(m, NULL));
}

/* The value (text) of subscription sub's sample of `family` in a
 * Prometheus exposition from rbus_stats_prometheus; fails the test when
 * there is none. */
static inline const char *rbus_test_prom_sample(const char *text, const char *family,
                                                const rbus_sub *sub)
{
    char head[128], id[48];
    snprintf(head, sizeof head, "\n%s{", family);
    snprintf(id, sizeof id, ",sub=\"%llu\",", (unsigned long long)rbus_sub_id(sub));
    for (const char *p = text; (p = strstr(p, head)) != NULL; p++) {
        const char *end = strchr(p + 1, '\n');
        const char *at = strstr(p, id);
        if (at && end && at < end)
            return strstr(p, "} ") + 2;
    }
    fail_msg("no %s sample for sub %llu", family, (unsigned long long)rbus_sub_id(sub));
    return NULL;
}

/* ------------------------------------------------- a counting allocator */

/* Hooks for rbus_config.allocator, the one every test uses. Each block
 * carries a 16-byte header (its size and a tag naming this allocator): live
 * bytes are exact, and a free of a pointer these hooks did not hand out,
 * one another allocator handed out, or a second free, counts in bad_frees
 * instead of corrupting the heap. Failures can be injected two ways:
 * `budget` >= 0 lets that many more allocations succeed, then fails every
 * one until it is reset (-1 = unlimited); `fail_at` > 0 fails exactly that
 * call (1-based, counted in `calls`). Only injected failures count in
 * `injected`. `raw_alloc`/`raw_free` replace malloc/free underneath (a test
 * that wraps malloc itself sets them); NULL = malloc/free. */
#define RBUS_TEST_ALLOC_HDR 16
#define RBUS_TEST_ALLOC_TAG UINT64_C(0x5ded0bee70b7c0de)

struct rbus_test_alloc {
    atomic_llong calls;  /* alloc hook calls, failed ones included */
    atomic_llong allocs; /* successful allocations */
    atomic_llong frees;
    atomic_llong injected;
    atomic_llong live_blocks;
    atomic_llong live_bytes;
    atomic_llong peak_bytes;
    atomic_llong bad_frees;
    atomic_llong budget;
    atomic_llong fail_at;
    void *(*raw_alloc)(size_t size);
    void (*raw_free)(void *ptr);
    /* When set, freed blocks are poisoned (0xA5) and kept rather than
     * freed, until rbus_test_alloc_drain(): a read of freed memory then
     * finds garbage pointers and crashes, with or without a sanitizer. */
    bool quarantine;
    _Atomic(unsigned char *) kept;
    rbus_allocator hooks;
};

static inline uint64_t rbus_test_alloc_tag(const struct rbus_test_alloc *a)
{
    return RBUS_TEST_ALLOC_TAG ^ (uint64_t)(uintptr_t)a;
}

static inline void *rbus_test_alloc_alloc(size_t size, void *arg)
{
    struct rbus_test_alloc *a = arg;
    long long n = atomic_fetch_add(&a->calls, 1) + 1;
    if (n == atomic_load(&a->fail_at)) {
        atomic_fetch_add(&a->injected, 1);
        return NULL;
    }
    long long b = atomic_load(&a->budget);
    while (b > 0 && !atomic_compare_exchange_weak(&a->budget, &b, b - 1)) {
    }
    if (b == 0) {
        atomic_fetch_add(&a->injected, 1);
        return NULL;
    }
    if (size > SIZE_MAX - RBUS_TEST_ALLOC_HDR)
        return NULL;
    size_t total = size + RBUS_TEST_ALLOC_HDR;
    unsigned char *raw = a->raw_alloc ? a->raw_alloc(total) : malloc(total);
    if (!raw)
        return NULL;
    uint64_t sz = (uint64_t)size, tag = rbus_test_alloc_tag(a);
    memcpy(raw, &sz, sizeof sz);
    memcpy(raw + 8, &tag, sizeof tag);
    atomic_fetch_add(&a->allocs, 1);
    atomic_fetch_add(&a->live_blocks, 1);
    long long now = atomic_fetch_add(&a->live_bytes, (long long)size) + (long long)size;
    long long peak = atomic_load(&a->peak_bytes);
    while (now > peak && !atomic_compare_exchange_weak(&a->peak_bytes, &peak, now)) {
    }
    return raw + RBUS_TEST_ALLOC_HDR;
}

static inline void rbus_test_alloc_free(void *ptr, void *arg)
{
    struct rbus_test_alloc *a = arg;
    if (!ptr)
        return;
    unsigned char *raw = (unsigned char *)ptr - RBUS_TEST_ALLOC_HDR;
    uint64_t sz, tag;
    memcpy(&sz, raw, sizeof sz);
    memcpy(&tag, raw + 8, sizeof tag);
    if (tag != rbus_test_alloc_tag(a)) {
        atomic_fetch_add(&a->bad_frees, 1);
        return;
    }
    tag = 0;
    memcpy(raw + 8, &tag, sizeof tag); /* so a double free is caught too */
    atomic_fetch_add(&a->frees, 1);
    atomic_fetch_sub(&a->live_blocks, 1);
    atomic_fetch_sub(&a->live_bytes, (long long)sz);
    if (a->quarantine) {
        memset(ptr, 0xA5, (size_t)sz);
        /* The link takes the size's place in the header. */
        unsigned char *next = atomic_load(&a->kept);
        do
            memcpy(raw, &next, sizeof next);
        while (!atomic_compare_exchange_weak(&a->kept, &next, raw));
        return;
    }
    if (a->raw_free)
        a->raw_free(raw);
    else
        free(raw);
}

/* Frees the blocks quarantine kept. */
static inline void rbus_test_alloc_drain(struct rbus_test_alloc *a)
{
    unsigned char *raw = atomic_exchange(&a->kept, NULL);
    while (raw) {
        unsigned char *next;
        memcpy(&next, raw, sizeof next);
        if (a->raw_free)
            a->raw_free(raw);
        else
            free(raw);
        raw = next;
    }
}

/* Zero counters, no budget, no fail_at. */
static inline void rbus_test_alloc_init(struct rbus_test_alloc *a)
{
    atomic_init(&a->calls, 0);
    atomic_init(&a->allocs, 0);
    atomic_init(&a->frees, 0);
    atomic_init(&a->injected, 0);
    atomic_init(&a->live_blocks, 0);
    atomic_init(&a->live_bytes, 0);
    atomic_init(&a->peak_bytes, 0);
    atomic_init(&a->bad_frees, 0);
    atomic_init(&a->budget, -1);
    atomic_init(&a->fail_at, 0);
    a->raw_alloc = NULL;
    a->raw_free = NULL;
    a->quarantine = false;
    atomic_init(&a->kept, NULL);
    a->hooks.alloc = rbus_test_alloc_alloc;
    a->hooks.free = rbus_test_alloc_free;
    a->hooks.arg = a;
}

static inline void rbus_test_alloc_assert_all_returned(struct rbus_test_alloc *a)
{
    assert_int_equal(atomic_load(&a->bad_frees), 0);
    assert_int_equal(atomic_load(&a->live_blocks), 0);
    assert_int_equal(atomic_load(&a->live_bytes), 0);
    assert_int_equal(atomic_load(&a->allocs), atomic_load(&a->frees));
}

/* ------------------------------------------------ errors in worker threads */

/* Worker threads never call cmocka: they report here (the first message is
 * kept, all are counted) and the main thread asserts after joining them.
 * One record per test executable. */
struct rbus_test_errors {
    pthread_mutex_t lock;
    atomic_uint count;
    char first[512];
};

static inline struct rbus_test_errors *rbus_test_errors(void)
{
    static struct rbus_test_errors e = {.lock = PTHREAD_MUTEX_INITIALIZER};
    return &e;
}

static inline void rbus_test_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void rbus_test_report(const char *fmt, ...)
{
    struct rbus_test_errors *e = rbus_test_errors();
    if (atomic_fetch_add(&e->count, 1) == 0) {
        va_list ap;
        va_start(ap, fmt);
        pthread_mutex_lock(&e->lock);
        vsnprintf(e->first, sizeof e->first, fmt, ap);
        pthread_mutex_unlock(&e->lock);
        va_end(ap);
    }
}

/* How many errors the worker threads reported so far. */
static inline unsigned rbus_test_error_count(void)
{
    return atomic_load(&rbus_test_errors()->count);
}

static inline void rbus_test_errors_reset(void)
{
    struct rbus_test_errors *e = rbus_test_errors();
    atomic_store(&e->count, 0);
    e->first[0] = '\0';
}

static inline void rbus_test_assert_no_thread_errors(void)
{
    struct rbus_test_errors *e = rbus_test_errors();
    unsigned n = atomic_load(&e->count);
    if (n != 0) {
        pthread_mutex_lock(&e->lock);
        print_error("%u error(s) in worker threads; first: %s\n", n, e->first);
        pthread_mutex_unlock(&e->lock);
        fail();
    }
}

/* -------------------------------------------------------------- payloads */

/* The stress payload: (publisher, topic index, per-publisher counter). */
struct rbus_test_payload {
    uint32_t pub;
    uint32_t topic;
    uint64_t counter;
};

/* Copies m's payload into *p; false when m is not exactly that size. */
static inline bool rbus_test_payload_get(const rbus_msg *m, struct rbus_test_payload *p)
{
    if (rbus_msg_size(m) != sizeof *p)
        return false;
    memcpy(p, rbus_msg_data(m), sizeof *p);
    return true;
}

#endif
