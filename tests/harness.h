/* The scaffolding the concurrency tests share: worker threads started
 * together and joined, a watchdog, the stress-scale banner. Like
 * test_util.h, nothing here is called from a worker except where said. */
#ifndef RBUS_TEST_HARNESS_H
#define RBUS_TEST_HARNESS_H

#include "test_util.h"

/* ------------------------------------------------------ worker threads */

#define RBUS_TEST_MAX_THREADS 64

typedef void *(*rbus_test_thread_fn)(void *arg);

/* A team of threads: added one by one, started at once, joined at once. */
struct rbus_test_threads {
    int n;
    bool together; /* false: each thread runs as soon as it exists */
    pthread_barrier_t start;
    pthread_t th[RBUS_TEST_MAX_THREADS];
    rbus_test_thread_fn fn[RBUS_TEST_MAX_THREADS];
    void *arg[RBUS_TEST_MAX_THREADS];
    struct rbus_test_threads *self[RBUS_TEST_MAX_THREADS]; /* each thread finds its slot */
};

/* Every thread waits for the others to exist before it runs, so the
 * contention a test is after does not depend on how fast they are made. */
static inline void *rbus_test_threads_main_(void *p)
{
    struct rbus_test_threads **slot = p;
    struct rbus_test_threads *t = *slot;
    int i = (int)(slot - t->self);
    if (t->together)
        pthread_barrier_wait(&t->start);
    return t->fn[i](t->arg[i]);
}

static inline void rbus_test_threads_init(struct rbus_test_threads *t)
{
    t->n = 0;
}

/* Queues fn(arg) on the team; nothing runs before rbus_test_threads_start. */
static inline void rbus_test_threads_add(struct rbus_test_threads *t, rbus_test_thread_fn fn,
                                         void *arg)
{
    assert_true(t->n < RBUS_TEST_MAX_THREADS);
    t->fn[t->n] = fn;
    t->arg[t->n] = arg;
    t->self[t->n] = t;
    t->n++;
}

/* Queues n threads running fn on args, args + stride, ...: an array of
 * contexts, or (args NULL, stride 1) the indices 0..n-1 themselves. */
static inline void rbus_test_threads_add_n(struct rbus_test_threads *t, int n,
                                           rbus_test_thread_fn fn, void *args, size_t stride)
{
    for (int i = 0; i < n; i++)
        rbus_test_threads_add(t, fn, (void *)((uintptr_t)args + (uintptr_t)i * stride));
}

static inline void rbus_test_threads_create_(struct rbus_test_threads *t, bool together)
{
    assert_true(t->n > 0);
    t->together = together;
    if (together)
        assert_int_equal(pthread_barrier_init(&t->start, NULL, (unsigned)t->n), 0);
    for (int i = 0; i < t->n; i++)
        assert_int_equal(pthread_create(&t->th[i], NULL, rbus_test_threads_main_, &t->self[i]), 0);
}

/* Creates the queued threads; they start together once the last exists. */
static inline void rbus_test_threads_start(struct rbus_test_threads *t)
{
    rbus_test_threads_create_(t, true);
}

/* Creates the queued threads with no start barrier: for tests whose point
 * is threads that come and go at will, one possibly gone before the next. */
static inline void rbus_test_threads_start_free(struct rbus_test_threads *t)
{
    rbus_test_threads_create_(t, false);
}

/* Joins every thread of the team (all have passed the barrier by then). */
static inline void rbus_test_threads_join(struct rbus_test_threads *t)
{
    for (int i = 0; i < t->n; i++)
        assert_int_equal(pthread_join(t->th[i], NULL), 0);
    if (t->together)
        pthread_barrier_destroy(&t->start);
    t->n = 0;
}

/* The common case: n threads on an array of contexts, started together,
 * run to completion. */
static inline void rbus_test_threads_run(int n, rbus_test_thread_fn fn, void *args, size_t stride)
{
    struct rbus_test_threads *t = malloc(sizeof *t);
    assert_non_null(t);
    rbus_test_threads_init(t);
    rbus_test_threads_add_n(t, n, fn, args, stride);
    rbus_test_threads_start(t);
    rbus_test_threads_join(t);
    free(t);
}

/* ------------------------------------------------------------ watchdog */

/* A thread that aborts the run when `progress` has not moved for
 * silence_ns, or when `stuck` names a reason: a deadlock then fails the
 * test with a report instead of hanging until ctest's timeout. abort()
 * because a stuck worker cannot be unwound, and cmocka reports the crash. */
struct rbus_test_watchdog {
    const char *label;
    uint64_t silence_ns;
    int n;                        /* workers with a "what am I doing" slot */
    const char *const *names;     /* n names, or NULL: "worker i" */
    _Atomic(const char *) *doing; /* n slots, each NULL or a static string */
    /* Optional: why the run is stuck although progress moves (NULL: it is not). */
    const char *(*stuck)(void *arg, uint64_t now_ns);
    /* Optional: more detail for the report, after the doing slots. */
    void (*dump)(void *arg, uint64_t now_ns);
    void *arg;
    atomic_ullong progress;
    atomic_bool stop;
    pthread_t thread;
};

/* Workers call this after each step: the watchdog's only sign of life. */
static inline void rbus_test_progress(struct rbus_test_watchdog *w)
{
    atomic_fetch_add_explicit(&w->progress, 1, memory_order_relaxed);
}

/* Worker i says what it is about to do (a string that outlives the run). */
static inline void rbus_test_doing(struct rbus_test_watchdog *w, int i, const char *what)
{
    atomic_store_explicit(&w->doing[i], what, memory_order_relaxed);
}

static inline void rbus_test_watchdog_fire_(struct rbus_test_watchdog *w, const char *why,
                                            uint64_t silent_ns, uint64_t now)
{
    fprintf(stderr, "\n%s WATCHDOG: ", w->label);
    if (why)
        fprintf(stderr, "%s", why);
    else
        fprintf(stderr, "no progress for %.1f s", (double)silent_ns / 1e9);
    fprintf(stderr, " (progress counter %llu)\n", (unsigned long long)atomic_load(&w->progress));
    for (int i = 0; i < w->n; i++) {
        const char *d = atomic_load(&w->doing[i]);
        if (w->names)
            fprintf(stderr, "  %-12s %s\n", w->names[i], d ? d : "(nothing yet)");
        else
            fprintf(stderr, "  worker %-5d %s\n", i, d ? d : "(nothing yet)");
    }
    if (w->dump)
        w->dump(w->arg, now);
    fflush(stderr);
    abort();
}

static inline void *rbus_test_watchdog_main_(void *arg)
{
    struct rbus_test_watchdog *w = arg;
    uint64_t last = atomic_load(&w->progress);
    uint64_t last_change = rbus_test_now_ns();
    while (!atomic_load(&w->stop)) {
        rbus_test_sleep_us(20000);
        uint64_t now = rbus_test_now_ns();
        uint64_t p = atomic_load(&w->progress);
        if (p != last) {
            last = p;
            last_change = now;
        }
        const char *why = w->stuck ? w->stuck(w->arg, now) : NULL;
        if (now - last_change > w->silence_ns || why)
            rbus_test_watchdog_fire_(w, why, now - last_change, now);
    }
    return NULL;
}

/* Starts watching; `doing` has n slots (n may be 0), all cleared here.
 * Set stuck/dump/arg/names before this call if wanted. */
static inline void rbus_test_watchdog_start(struct rbus_test_watchdog *w, const char *label,
                                            uint64_t silence_ms, int n,
                                            _Atomic(const char *) *doing)
{
    w->label = label;
    w->silence_ns = silence_ms * UINT64_C(1000000);
    w->n = n;
    w->doing = doing;
    for (int i = 0; i < n; i++)
        atomic_store(&doing[i], NULL);
    atomic_store(&w->progress, 0);
    atomic_store(&w->stop, false);
    assert_int_equal(pthread_create(&w->thread, NULL, rbus_test_watchdog_main_, w), 0);
}

static inline void rbus_test_watchdog_stop(struct rbus_test_watchdog *w)
{
    atomic_store(&w->stop, true);
    assert_int_equal(pthread_join(w->thread, NULL), 0);
}

/* ---------------------------------------------------------------- misc */

/* The first line of every stress test's output: what scale its sizes use. */
static inline void rbus_test_print_scale(const char *prefix)
{
    printf("%s: RBUS_STRESS_SCALE=%g\n", prefix, rbus_test_stress_scale());
}

/* Reads a subscription's stats and checks the exact accounting on them:
 * the first thing every end-of-run check does. */
static inline void rbus_test_sub_stats_checked(rbus_sub *s, rbus_sub_stats *st)
{
    assert_rbus_ok(rbus_sub_stats_get(s, st));
    rbus_test_check_accounting(st);
}

#endif
