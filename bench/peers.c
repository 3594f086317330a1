/*
 * peers.c - `ringbus-bench peers`: ringbus and every peer on the same
 * lossless scenarios and the same paced latency runs, in one run,
 * repetitions interleaved; the shared harness the peers run in (peers.h),
 * the table, the CSV and the ratios. The peers themselves are impl_*.c
 * beside this file; how they are configured is in docs/benchmarks.md.
 */
#define _GNU_SOURCE
#include "peers.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef RUN_LIMIT_NS
#define RUN_LIMIT_NS (60ull * 1000000000ull) /* a run that takes longer failed */
#endif
#define MAX_REPS 64

/* ------------------------------------------------ the shared harness */

/* A thread that cannot go on: record why, stop everybody, wake main. */
void run_fail(struct run *r, const char *why)
{
    pthread_mutex_lock(&r->mu);
    if (!r->why[0])
        snprintf(r->why, sizeof r->why, "%s", why);
    atomic_store(&r->abort, 1);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

void run_wait_start(struct run *r)
{
    pthread_barrier_wait(&r->start);
}

void run_pub_started(struct run *r, int id)
{
    run_wait_start(r);
    r->t_start[id] = bench_now_ns();
}

void run_rx_done(struct run *r, int id, const struct bench_verify *v)
{
    r->t_done[id] = bench_now_ns();
    r->verify[id] = *v;
    pthread_mutex_lock(&r->mu);
    r->done++;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void run_init(struct run *r, int np, int ns, size_t payload, uint64_t messages,
                     uint32_t capacity)
{
    memset(r, 0, sizeof *r);
    r->np = np;
    r->ns = ns;
    r->payload = payload;
    r->messages = messages;
    r->capacity = capacity;
    atomic_init(&r->abort, 0);
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
}

static void run_destroy(struct run *r)
{
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

/*
 * Starts ns receivers and np publishers, releases them together, waits for
 * every receiver (at most RUN_LIMIT_NS; then, or when a thread failed, it
 * aborts the run and calls wake() so that blocked threads return), joins
 * them and verifies every receiver. Returns the elapsed ns from the first
 * publisher's start to the last receiver's end, or 0 on any failure (the
 * reason on stderr, prefixed by `who`).
 */
uint64_t run_threads(struct run *r, const char *who, void *(*pub)(void *), void *(*rx)(void *),
                     void (*wake)(struct run *))
{
    pthread_t th[2 * MAX_THREADS];
    struct thr args[2 * MAX_THREADS];
    int n = r->np + r->ns;
    pthread_barrier_init(&r->start, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++) {
        bool is_rx = i < r->ns;
        args[i] = (struct thr){.run = r, .id = is_rx ? i : i - r->ns};
        if (pthread_create(&th[i], NULL, is_rx ? rx : pub, &args[i]) != 0) {
            fprintf(stderr, "ringbus-bench: %s: cannot start a thread\n", who);
            exit(1); /* the barrier would never open */
        }
    }
    run_wait_start(r);

    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(RUN_LIMIT_NS / 1000000000u);
    pthread_mutex_lock(&r->mu);
    int wrc = 0;
    while (r->done < r->ns && !aborted(r) && wrc != ETIMEDOUT)
        wrc = pthread_cond_timedwait(&r->cv, &r->mu, &until);
    bool finished = r->done == r->ns && !aborted(r);
    if (!finished && !r->why[0])
        snprintf(r->why, sizeof r->why, "timed out after %llu s (a lost message?)",
                 (unsigned long long)(RUN_LIMIT_NS / 1000000000u));
    pthread_mutex_unlock(&r->mu);
    if (!finished) {
        atomic_store(&r->abort, 1);
        wake(r);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&r->start);
    if (!finished) {
        fprintf(stderr, "ringbus-bench: %s: %s\n", who, r->why);
        return 0;
    }

    uint64_t want = r->messages * (uint64_t)r->np;
    for (int i = 0; i < r->ns; i++) {
        const struct bench_verify *v = &r->verify[i];
        bool ok = !v->bad && v->received == want;
        for (int p = 0; p < r->np; p++)
            ok = ok && v->next[p] == r->messages;
        if (!ok) {
            fprintf(stderr,
                    "ringbus-bench: %s: VERIFICATION FAILED at receiver %d: %llu of %llu "
                    "messages%s\n",
                    who, i, (unsigned long long)v->received, (unsigned long long)want,
                    v->bad ? ", lost, duplicated or out of order" : "");
            return 0;
        }
    }
    uint64_t t0 = r->t_start[0], t1 = 0;
    for (int p = 1; p < r->np; p++)
        if (r->t_start[p] < t0)
            t0 = r->t_start[p];
    for (int i = 0; i < r->ns; i++)
        if (r->t_done[i] > t1)
            t1 = r->t_done[i];
    return t1 > t0 ? t1 - t0 : 1;
}

static double rate_of(const struct run *r, uint64_t elapsed)
{
    if (!elapsed)
        return -1;
    return (double)(r->messages * (uint64_t)r->np) * 1e9 / (double)elapsed;
}

bool scenario_ok(const struct scenario *sc)
{
    return sc->publishers >= 1 && sc->publishers <= MAX_THREADS && sc->subscribers >= 1 &&
           sc->subscribers <= MAX_THREADS && sc->payload >= 16 && sc->messages >= 1 &&
           sc->capacity >= 1;
}

void *zalloc_aligned(size_t size)
{
    size = (size + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, size ? size : 64);
    if (p)
        memset(p, 0, size);
    return p;
}

double peer_throughput(const struct scenario *sc, peer_run_fn run, int variant, const char *name)
{
    char who[64];
    snprintf(who, sizeof who, "%s %d->%d", name, sc->publishers, sc->subscribers);
    struct run *r = malloc(sizeof *r);
    if (!r)
        return -1;
    run_init(r, sc->publishers, sc->subscribers, sc->payload, sc->messages, sc->capacity);
    double rate = rate_of(r, run(r, who, variant));
    run_destroy(r);
    free(r);
    return rate;
}

int peer_latency(const struct latency_run *lr, peer_run_fn run, int variant, const char *who,
                 bool spin_rx, uint64_t *lat)
{
    struct run *r = malloc(sizeof *r);
    if (!r)
        return -1;
    run_init(r, 1, 1, LAT_PAYLOAD, lr->rounds, lr->capacity);
    r->pace_ns = lr->pace_ns;
    r->spin_rx = spin_rx;
    r->lat = lat;
    uint64_t elapsed = run(r, who, variant);
    run_destroy(r);
    free(r);
    return elapsed ? 0 : -1;
}

/* ------------------------------------------------ `ringbus-bench peers` */

/* Which scenarios an implementation offers, and its short receiver labels. */
struct peer {
    const struct bench_impl *impl;
    int max_publishers, max_subscribers; /* 0 = any */
    bool lat_spin, lat_sleep;
    const char *tp_wait;  /* throughput runs */
    const char *rx_spin;  /* latency "spin" runs */
    const char *rx_sleep; /* latency "sleep" runs */
};

static const struct peer peers[] = {
    {&bench_impl_ringbus, 0, 0, true, true, "spin/yield, futex", "default (spin_ns 0)",
     "spin_ns < 0"},
    {&bench_impl_ringbus_batch, 0, 0, false, false, "spin/yield, futex", NULL, NULL},
    {&bench_impl_ringbus_coarse, 0, 0, false, false, "spin/yield, futex", NULL, NULL},
    {&bench_impl_ck, 0, 0, true, false, "busy-poll", "busy-poll", NULL},
    {&bench_impl_ck_yield, 0, 0, false, false, "sched_yield poll", NULL, NULL},
    {&bench_impl_spsc_ptr, 1, 1, false, false, "busy-poll", NULL, NULL},
    {&bench_impl_spsc_inline, 1, 1, false, false, "busy-poll", NULL, NULL},
#ifdef RBUS_BENCH_HAVE_ZMQ
    {&bench_impl_zmq_pubsub, 1, 0, true, true, "blocking send/recv", "recv DONTWAIT loop",
     "blocking zmq_recv"},
    {&bench_impl_zmq_pushpull, 0, 1, false, false, "blocking send/recv", NULL, NULL},
#endif
#ifdef RBUS_BENCH_HAVE_GLIB
    {&bench_impl_gasync, 0, 0, true, true, "pop blocks; push yields", "try_pop loop",
     "g_async_queue_pop"},
#endif
    {&bench_impl_mutex, 0, 0, true, true, "condvar waits", "lock/check loop", "cond_wait"},
};
#define NPEERS ((int)(sizeof peers / sizeof peers[0]))

/* The cases of one peers run: throughput scenarios, then latency runs. */
struct pcase {
    const char *name;
    int np, ns;        /* throughput */
    uint64_t messages; /* default per publisher, or rounds */
    uint64_t pace_ns;  /* latency: > 0 */
    bool sleeping;
};

static const struct pcase cases[] = {
    {"1->1", 1, 1, 500000, 0, false},
    {"1->4", 1, 4, 200000, 0, false},
    {"2->1", 2, 1, 250000, 0, false},
    {"lat 10us spin", 1, 1, 20000, 10000, false},
    {"lat 10us sleep", 1, 1, 20000, 10000, true},
    {"lat 100us spin", 1, 1, 5000, 100000, false},
    {"lat 100us sleep", 1, 1, 5000, 100000, true},
};
#define NCASES ((int)(sizeof cases / sizeof cases[0]))

static bool offers(const struct peer *p, const struct pcase *c)
{
    if (p->impl->throughput == NULL && !c->pace_ns)
        return false;
    if (c->pace_ns)
        return p->impl->latency != NULL && (c->sleeping ? p->lat_sleep : p->lat_spin);
    return (!p->max_publishers || c->np <= p->max_publishers) &&
           (!p->max_subscribers || c->ns <= p->max_subscribers);
}

#define GAQ_FANOUT_CAP 50000u

/* Messages per publisher (or rounds) of one implementation in one case. */
static uint64_t case_messages(const struct bench_opts *o, const struct peer *p,
                              const struct pcase *c)
{
    if (c->pace_ns) /* rounds: fixed by the pace, at most --messages */
        return o->messages_set && o->messages < c->messages ? o->messages : c->messages;
    uint64_t n = o->messages_set ? o->messages : c->messages;
#ifdef RBUS_BENCH_HAVE_GLIB
    /* One wake-up per message and receiver: ~0.2 M/s on 2 cores. */
    if (p->impl == &bench_impl_gasync && c->ns > 1 && n > GAQ_FANOUT_CAP)
        n = GAQ_FANOUT_CAP;
#else
    (void)p;
#endif
    return n;
}

/* Every repetition of one implementation in one case. */
struct cell {
    double v[MAX_REPS]; /* msg/s, or p50 ns */
    double p99[MAX_REPS], p999[MAX_REPS];
    int n, failed;
    uint64_t messages;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median, min and max of n values (sorts a copy). */
static void stats3(const double *v, int n, double *med, double *lo, double *hi)
{
    double s[MAX_REPS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    *lo = s[0];
    *hi = s[n - 1];
    *med = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static double median_of(const double *v, int n)
{
    double m, lo, hi;
    stats3(v, n, &m, &lo, &hi);
    return m;
}

static FILE *open_csv(const struct bench_opts *o, char *path, size_t len)
{
    FILE *f = bench_open_result(o, "peers.csv", path, len);
    if (!f)
        return NULL;
    bench_print_machine(f, FORMAT_CSV);
    fputs("rep,scenario,impl,publishers,subscribers,payload_b,capacity,messages,value,unit,"
          "p99_ns,p999_ns,status\n",
          f);
    return f;
}

/* One repetition of one implementation in one case; returns false on a
 * failure (already reported on stderr). */
static bool run_one(const struct bench_opts *o, const struct peer *p, const struct pcase *c,
                    int rep, struct cell *cell, FILE *csv)
{
    uint64_t n = case_messages(o, p, c);
    cell->messages = n;
    double v = -1, p99 = 0, p999 = 0;
    bool ok;
    size_t payload = c->pace_ns ? LAT_PAYLOAD : o->payload;
    if (!c->pace_ns) {
        struct scenario sc = {.publishers = c->np,
                              .subscribers = c->ns,
                              .payload = o->payload,
                              .messages = n,
                              .capacity = o->capacity,
                              .spin_ns = o->spin_ns};
        v = p->impl->throughput(&sc);
        ok = v > 0;
    } else {
        struct latency_run lr = {.pace_ns = c->pace_ns,
                                 .rounds = n,
                                 .sleeping_receiver = c->sleeping,
                                 .capacity = o->capacity};
        uint64_t *lat = calloc(n, sizeof *lat);
        ok = lat && p->impl->latency(&lr, lat) == 0;
        if (ok) {
            v = (double)bench_percentile(lat, n, 50);
            p99 = (double)bench_percentile(lat, n, 99);
            p999 = (double)bench_percentile(lat, n, 99.9);
        }
        free(lat);
    }
    if (ok) {
        cell->v[cell->n] = v;
        cell->p99[cell->n] = p99;
        cell->p999[cell->n] = p999;
        cell->n++;
    } else {
        cell->failed++;
        fprintf(stderr, "ringbus-bench: peers: %s %s rep %d FAILED\n", p->impl->name, c->name,
                rep + 1);
    }
    if (csv) {
        fprintf(csv, "%d,%s,%s,%d,%d,%zu,%u,%llu,%.0f,%s,%.0f,%.0f,%s\n", rep + 1, c->name,
                p->impl->name, c->np, c->ns, payload, o->capacity, (unsigned long long)n,
                ok ? v : 0.0, c->pace_ns ? "p50_ns" : "msgs_per_s", p99, p999,
                ok ? "ok" : "FAILED");
        fflush(csv);
    }
    return ok;
}

static void fill_row(struct bench_row *row, const struct peer *p, const struct pcase *c,
                     const struct cell *cell, const struct cell *rb)
{
    bench_row_str(row, "scenario", c->name);
    bench_row_str(row, "impl", p->impl->name);
    bench_row_str(row, "unit", c->pace_ns ? "p50 ns" : "M msg/s");
    if (cell->n == 0) {
        static const char *const cols[] = {"median",     "min",    "max",
                                           "vs_ringbus", "p99_ns", "p999_ns"};
        for (size_t k = 0; k < sizeof cols / sizeof cols[0]; k++)
            bench_row_str(row, cols[k], "FAILED");
    } else {
        double med, lo, hi, scale = c->pace_ns ? 1.0 : 1e-6;
        const char *fmt = c->pace_ns ? "%.0f" : "%.3f";
        stats3(cell->v, cell->n, &med, &lo, &hi);
        bench_row_num(row, "median", fmt, med * scale);
        bench_row_num(row, "min", fmt, lo * scale);
        bench_row_num(row, "max", fmt, hi * scale);
        if (rb && rb->n > 0) {
            double rbmed = median_of(rb->v, rb->n);
            bench_row_num(row, "vs_ringbus", "%.2f", c->pace_ns ? med / rbmed : rbmed / med);
        } else {
            bench_row_str(row, "vs_ringbus", "-");
        }
        if (c->pace_ns) {
            bench_row_num(row, "p99_ns", "%.0f", median_of(cell->p99, cell->n));
            bench_row_num(row, "p999_ns", "%.0f", median_of(cell->p999, cell->n));
        } else {
            bench_row_str(row, "p99_ns", "-");
            bench_row_str(row, "p999_ns", "-");
        }
    }
    bench_row_num(row, "reps_ok", "%.0f", (double)cell->n);
    bench_row_num(row, "messages", "%.0f", (double)cell->messages);
    bench_row_str(row, "wait", !c->pace_ns ? p->tp_wait : c->sleeping ? p->rx_sleep : p->rx_spin);
}

/* Median of one implementation in one case (its p99s with `p99`, in a
 * latency case), or 0 when it has none. */
static double med_by_name(struct cell (*cells)[NPEERS], const char *cname, const char *iname,
                          bool p99)
{
    for (int c = 0; c < NCASES; c++)
        for (int p = 0; p < NPEERS; p++)
            if (!strcmp(cases[c].name, cname) && !strcmp(peers[p].impl->name, iname) &&
                cells[c][p].n > 0)
                return median_of(p99 ? cells[c][p].p99 : cells[c][p].v, cells[c][p].n);
    return 0;
}

/* Ratios of medians between ringbus and the peers it is usually weighed
 * against (table format only): throughput ratios above 1 and latency
 * ratios below 1 favour ringbus. */
static void print_ratios(struct cell (*cells)[NPEERS])
{
    static const struct {
        const char *what, *scen, *a, *b, *scen_b; /* scen_b: b's case, if not scen */
    } t[] = {
        {"1->1 ringbus / raw-ck-ring", "1->1", "ringbus", "raw-ck-ring", NULL},
        {"1->1 ringbus / zmq-pubsub", "1->1", "ringbus", "zmq-pubsub", NULL},
        {"1->1 ringbus / raw-ck-yield (yielding floor)", "1->1", "ringbus", "raw-ck-yield", NULL},
        {"1->1 ringbus / raw-spsc-ptr (SPSC floor)", "1->1", "ringbus", "raw-spsc-ptr", NULL},
        {"1->1 ringbus-coarse / ringbus", "1->1", "ringbus-coarse", "ringbus", NULL},
        {"2->1 ringbus-coarse / ringbus", "2->1", "ringbus-coarse", "ringbus", NULL},
        {"1->1 ringbus-batch64 / ringbus", "1->1", "ringbus-batch64", "ringbus", NULL},
        {"1->1 ringbus-batch64 / raw-spsc-ptr", "1->1", "ringbus-batch64", "raw-spsc-ptr", NULL},
        {"1->4 ringbus-batch64 / ringbus", "1->4", "ringbus-batch64", "ringbus", NULL},
        {"2->1 ringbus-batch64 / ringbus", "2->1", "ringbus-batch64", "ringbus", NULL},
        {"1->4 ringbus / raw-ck-ring", "1->4", "ringbus", "raw-ck-ring", NULL},
        {"1->4 ringbus / raw-ck-yield (yielding floor)", "1->4", "ringbus", "raw-ck-yield", NULL},
        {"1->4 ringbus / zmq-pubsub", "1->4", "ringbus", "zmq-pubsub", NULL},
        {"1->4 ringbus / gasyncqueue", "1->4", "ringbus", "gasyncqueue", NULL},
        {"2->1 ringbus / mutex-ring", "2->1", "ringbus", "mutex-ring", NULL},
        {"2->1 ringbus / zmq-pushpull", "2->1", "ringbus", "zmq-pushpull", NULL},
        {"10us p50 ringbus default / raw-ck-ring", "lat 10us spin", "ringbus", "raw-ck-ring", NULL},
        {"10us p50 ringbus default / zmq blocking recv", "lat 10us spin", "ringbus", "zmq-pubsub",
         "lat 10us sleep"},
        {"10us p50 ringbus spin_ns<0 / zmq blocking recv", "lat 10us sleep", "ringbus",
         "zmq-pubsub", NULL},
    };
    printf("\nratios (medians; latency rows: ringbus p50 / peer p50):\n");
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        double a = med_by_name(cells, t[i].scen, t[i].a, false);
        double b = med_by_name(cells, t[i].scen_b ? t[i].scen_b : t[i].scen, t[i].b, false);
        if (a <= 0 || b <= 0) {
            printf("  %-48s  n/a (not measured)\n", t[i].what);
            continue;
        }
        printf("  %-48s %7.2f\n", t[i].what, a / b);
    }
    double a = med_by_name(cells, "lat 10us spin", "ringbus", true);
    double b = med_by_name(cells, "lat 10us spin", "raw-ck-ring", true);
    if (a > 0 && b > 0)
        printf("  %-48s %7.2f\n", "10us p99 ringbus default / raw-ck-ring", a / b);
}

int bench_mode_peers(const struct bench_opts *o)
{
    int reps = o->reps > 5 ? o->reps : 5;
    if (reps > MAX_REPS)
        reps = MAX_REPS;
    if (o->payload < 16) {
        fprintf(stderr, "ringbus-bench: peers needs --payload >= 16\n");
        return 2;
    }
    struct cell(*cells)[NPEERS] = calloc(NCASES, sizeof *cells);
    struct bench_row *rows = calloc((size_t)NCASES * NPEERS, sizeof *rows);
    if (!cells || !rows) {
        free(cells);
        free(rows);
        return 1;
    }
    bench_print_machine(stdout, o->format);
    if (o->format != FORMAT_JSON) {
        const char *pre = o->format == FORMAT_CSV ? "# " : "";
        printf("%speers: lossless throughput (published messages/s, all publishers; "
               "%zu B payloads) and paced one-way latency (64 B, p50 per run), capacity %u "
               "per queue everywhere; median (min-max) of %d interleaved repetitions\n",
               pre, o->payload, o->capacity, reps);
        printf("%svs_ringbus: throughput = ringbus / peer, latency = peer p50 / ringbus p50; "
               "> 1 means ringbus is better\n",
               pre);
        printf("%slatency 'spin' runs: ringbus default wait strategy, peers spinning; "
               "'sleep' runs: ringbus spin_ns < 0, peers' blocking receive\n",
               pre);
        printf("%swait strategies:\n", pre);
        for (int p = 0; p < NPEERS; p++)
            printf("%s  %-15s %s\n", pre, peers[p].impl->name, peers[p].impl->wait_strategy);
#ifndef RBUS_BENCH_HAVE_ZMQ
        printf("%s  (ZeroMQ peers not built: libzmq not found by pkg-config)\n", pre);
#endif
#ifndef RBUS_BENCH_HAVE_GLIB
        printf("%s  (GAsyncQueue peer not built: glib-2.0 not found by pkg-config)\n", pre);
#endif
    }
    char path[512];
    FILE *csv = open_csv(o, path, sizeof path);

    int total = 0, done = 0, failures = 0;
    for (int c = 0; c < NCASES; c++)
        for (int p = 0; p < NPEERS; p++)
            total += offers(&peers[p], &cases[c]);
    total *= reps;
    uint64_t started = bench_now_ns();
    for (int rep = 0; rep < reps; rep++) {
        for (int c = 0; c < NCASES; c++) {
            for (int p = 0; p < NPEERS; p++) {
                if (!offers(&peers[p], &cases[c]))
                    continue;
                bench_progress("peers", (double)done / total, started);
                failures += !run_one(o, &peers[p], &cases[c], rep, &cells[c][p], csv);
                done++;
            }
        }
    }
    bench_progress_done();
    if (csv)
        fclose(csv);

    int n = 0;
    for (int c = 0; c < NCASES; c++)
        for (int p = 0; p < NPEERS; p++)
            if (offers(&peers[p], &cases[c]))
                fill_row(&rows[n++], &peers[p], &cases[c], &cells[c][p], &cells[c][0]);
    bench_print_rows(stdout, o->format, rows, n);
    if (o->format == FORMAT_TABLE) {
        print_ratios(cells);
        if (csv)
            printf("\nevery repetition: %s\n", path);
    }
    if (failures) {
        fprintf(stderr, "ringbus-bench: peers: %d run(s) FAILED:\n", failures);
        for (int c = 0; c < NCASES; c++)
            for (int p = 0; p < NPEERS; p++)
                if (cells[c][p].failed)
                    fprintf(stderr, "  %s %s: %d of %d repetitions failed\n", peers[p].impl->name,
                            cases[c].name, cells[c][p].failed, reps);
    }
    free(cells);
    free(rows);
    return failures ? 1 : 0;
}
