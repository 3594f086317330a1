/*
 * policies.c - `ringbus-bench policies`: which overflow policy and which
 * capacity for a given load. One publisher sends on a schedule (Poisson,
 * paced or bursty) at a fraction of the subscriber's service rate; every
 * system in policies.h gets the same schedule, interleaved point by point.
 * Ages are measured from each message's SCHEDULED time, carried in the
 * payload (pub_loop), so a publisher that stalls cannot hide the delay it
 * causes. docs/benchmarks.md says how to read the output.
 */
#define _GNU_SOURCE
#include "policies.h"
#include "hist.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

const char *const study_policy_names[POL_COUNT] = {"block", "block-timeout", "drop-oldest",
                                                   "drop-newest"};

enum study_scenario { SC_LOAD, SC_CAPACITY, SC_ISOLATION, SC_COUNT };
static const char *const scenario_names[SC_COUNT] = {"load", "capacity", "isolation"};
static const char *const arrival_names[] = {"Poisson", "paced", "bursty"};

#define MAX_SUBS 4 /* the isolation scenario: one slow, three fast */
#define MAX_REPS 15
#define BURST_CAP 64 /* the policy check: capacity, and 3x as many messages */

/* ------------------------------------------------------------ metrics */

enum metric {
    M_SCHEDULED,
    M_OFFERED,
    M_DELIVERED,
    M_DELIVERED_PCT,
    M_DROP_PCT,
    M_UNSENT_PCT,
    M_DROP_NEWEST,
    M_DROP_OLDEST,
    M_DROP_TIMEOUT,
    M_DROP_CLOSED,
    M_AGE_P50,
    M_AGE_P99,
    M_AGE_P999,
    M_AGE_MAX,
    M_STALL_P99,
    M_STALL_MAX,
    M_ATTEMPTS,
    M_PEAK_DEPTH,
    M_LOSS_RUN,
    M_ALLOCS,
    M_SERVICE,
    M_SLOW_DELIVERED_PCT,
    M_SLOW_AGE_P99,
    M_SLOW_SERVICE,
    M_COUNT
};

/* Name in the CSV/JSON, printf format, and whether min and max across
 * repetitions get columns of their own. NaN means "not known" (n/a). */
static const struct {
    const char *name, *fmt;
    bool range;
} mdef[M_COUNT] = {
    [M_SCHEDULED] = {"scheduled", "%.0f", false},
    [M_OFFERED] = {"offered", "%.0f", false},
    [M_DELIVERED] = {"delivered", "%.0f", false},
    [M_DELIVERED_PCT] = {"delivered_pct", "%.3f", true},
    [M_DROP_PCT] = {"dropped_pct", "%.3f", true},
    [M_UNSENT_PCT] = {"unsent_pct", "%.3f", true},
    [M_DROP_NEWEST] = {"dropped_newest", "%.0f", false},
    [M_DROP_OLDEST] = {"dropped_oldest", "%.0f", false},
    [M_DROP_TIMEOUT] = {"dropped_timeout", "%.0f", false},
    [M_DROP_CLOSED] = {"dropped_closed", "%.0f", false},
    [M_AGE_P50] = {"age_p50_us", "%.2f", false},
    [M_AGE_P99] = {"age_p99_us", "%.2f", true},
    [M_AGE_P999] = {"age_p999_us", "%.2f", false},
    [M_AGE_MAX] = {"age_max_us", "%.2f", false},
    [M_STALL_P99] = {"stall_p99_us", "%.3f", true},
    [M_STALL_MAX] = {"stall_max_us", "%.2f", false},
    [M_ATTEMPTS] = {"publishes_per_s", "%.0f", true},
    [M_PEAK_DEPTH] = {"peak_depth", "%.0f", false},
    [M_LOSS_RUN] = {"longest_loss_run", "%.0f", false},
    [M_ALLOCS] = {"allocs_per_msg", "%.4f", false},
    [M_SERVICE] = {"delivery_gap_us", "%.3f", false},
    [M_SLOW_DELIVERED_PCT] = {"slow_delivered_pct", "%.3f", false},
    [M_SLOW_AGE_P99] = {"slow_age_p99_us", "%.2f", false},
    [M_SLOW_SERVICE] = {"slow_service_us", "%.2f", false},
};

enum acct { ACCT_EXACT, ACCT_INFERRED, ACCT_MISMATCH, ACCT_LOST, ACCT_FAILED };
static const char *const acct_names[] = {"exact", "inferred", "MISMATCH", "LOST", "FAILED"};

struct metrics {
    double v[M_COUNT];
    enum acct acct;
};

/* One point of the study: a system, a configuration, a load, and what its
 * repetitions measured. */
struct point {
    enum study_scenario sc;
    int sys;
    struct study_cfg cfg;
    double load;    /* 0: unthrottled */
    const char *na; /* why the system does not offer this; NULL when run */
    char config[96];
    int nreps;
    struct metrics rep[MAX_REPS];
    struct metrics med, lo, hi;
};

/* ------------------------------------------------------------- clocks */

struct rng {
    uint64_t s;
};

/* splitmix64: fast, and good enough for arrival and service times. */
static uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* An exponential variate of the given mean (inverse transform of a uniform
 * in (0, 1]). */
static double rng_exp(struct rng *r, double mean)
{
    double u = (double)((rng_next(r) >> 11) + 1) * 0x1p-53;
    return -mean * log(u);
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Waits until the monotonic clock reads t: sleeps while far ahead (the
 * caller's timer slack is 1 us), then spins, yielding the core on every
 * turn: a system that delivers on threads of its own (nng) gets the CPU the
 * publisher is only waiting with. Returns the time read last. */
static uint64_t wait_until(uint64_t t)
{
    uint64_t now = bench_now_ns();
    while (now < t) {
        if (t - now > 40000)
            sleep_ns(t - now - 25000);
        else
            sched_yield();
        now = bench_now_ns();
    }
    return now;
}

/* ----------------------------------------------------------- one run */

enum service { SVC_SPIN, SVC_SPIN_EXP, SVC_SLEEP };

struct study_run;

struct rx {
    struct study_run *run;
    int sub;
    enum service svc;
    uint64_t work_ns;
    struct rng rng;
    struct hist age;
    uint64_t received, expect, longest_loss, busy_ns;
    uint64_t first_ns, last_ns; /* first and last delivery */
    bool reordered;
};

struct study_run {
    const struct study_sys *sys;
    void *st;
    size_t payload;
    double load;
    uint64_t work_ns; /* the fast subscribers' mean service time */
    int arrivals;
    uint32_t burst;
    uint64_t dur_ns;
    struct bench_alloc *alloc;
    struct rng rng;
    _Atomic bool pub_done;
    _Atomic bool rx_failed; /* a receiver failed: the run is finished early */
    /* publisher results */
    struct hist stall;
    uint64_t scheduled, offered, t_first, t_last;
    uint64_t allocs_warm, allocs_end, seq_warm;
    bool warm, failed;
    struct rx rx[MAX_SUBS];
};

static void *rx_loop(void *arg)
{
    struct rx *x = arg;
    struct study_run *r = x->run;
    if (x->svc == SVC_SLEEP)
        prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    int idle = 0;
    for (;;) {
        unsigned char hdr[16];
        int rc = r->sys->recv(r->st, x->sub, hdr, 20);
        if (rc < 0) {
            /* Before the publisher is done, an end is a failure: finish the
             * system so that a publisher waiting for room gives up. */
            if (!atomic_load_explicit(&r->pub_done, memory_order_acquire) &&
                !atomic_exchange(&r->rx_failed, true))
                r->sys->finish(r->st);
            break;
        }
        if (rc == 0) {
            /* Systems that cannot be closed: stop after 60 ms with nothing
             * once the publisher is done (pairs with the release store in
             * run_once). */
            if (atomic_load_explicit(&r->pub_done, memory_order_acquire) && ++idle >= 3)
                break;
            continue;
        }
        idle = 0;
        uint64_t now = bench_now_ns(), seq, sched;
        memcpy(&seq, hdr, 8);
        memcpy(&sched, hdr + 8, 8);
        /* The age of a delivered message: from when it was due. */
        hist_add(&x->age, now > sched ? now - sched : 0);
        if (seq >= x->expect) {
            if (seq - x->expect > x->longest_loss)
                x->longest_loss = seq - x->expect;
            x->expect = seq + 1;
        } else {
            x->reordered = true;
        }
        x->received++;
        if (!x->first_ns)
            x->first_ns = now;
        x->last_ns = now;
        switch (x->svc) {
        case SVC_SPIN:
            bench_spin_for(x->work_ns);
            break;
        case SVC_SPIN_EXP:
            bench_spin_for((uint64_t)rng_exp(&x->rng, (double)x->work_ns));
            break;
        case SVC_SLEEP:
            sleep_ns(x->work_ns);
            break;
        }
        x->busy_ns += bench_now_ns() - now;
    }
    return NULL;
}

/* When message idx is due, given when the one before it was: Poisson
 * (exponential gaps), paced (equal gaps), or bursty (bursts of `burst` all
 * due at once, one every burst * mean, the same mean rate). */
static double next_due(struct study_run *r, double prev, uint64_t t0, double mean, uint64_t idx)
{
    switch (r->arrivals) {
    case 0:
        return prev + rng_exp(&r->rng, mean);
    case 1:
        return prev + mean;
    default:
        return (double)t0 + (double)(idx / r->burst * r->burst) * mean;
    }
}

/*
 * The publisher. Message i is due at sched_i (the schedule of the run's
 * arrival process); it is stamped with sched_i, not with the time it is
 * actually sent, and the receiver's age is now - sched_i. A publisher held
 * up by a full subscriber sends its overdue messages at once when it gets
 * going again, each still carrying the time it was due. What is still due
 * when the run's time is up counts as unsent.
 */
static void *pub_loop(void *arg)
{
    struct study_run *r = arg;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    unsigned char *buf = calloc(1, r->payload);
    if (!buf) {
        r->failed = true;
        return NULL;
    }
    if (r->sys->warm)
        r->sys->warm(r->st, r->payload);
    double mean = r->load > 0 ? (double)r->work_ns / r->load : 0;
    uint64_t t0 = bench_now_ns(), t_end = t0 + r->dur_ns, t_warm = t0 + r->dur_ns / 5;
    uint64_t seq = 0, unsent = 0, after = t0;
    double next = (double)t0;
    r->t_first = t0;
    for (;;) {
        uint64_t sched, now;
        if (mean == 0) {
            /* Unthrottled: no schedule to fall behind; the clock read that
             * ended the last publish starts this one (a read costs ~26 ns
             * on a VM, as much as a publish). */
            now = after;
            if (now >= t_end)
                break;
            sched = now;
        } else {
            if (next >= (double)t_end)
                break;
            sched = (uint64_t)next;
            now = bench_now_ns();
            if (now >= t_end) {
                /* Time is up and the publisher is behind: what was due. */
                while (next < (double)t_end) {
                    unsent++;
                    next = next_due(r, next, t0, mean, seq + unsent);
                }
                break;
            }
            if (now < sched)
                now = wait_until(sched);
        }
        if (!r->warm && now >= t_warm && r->alloc) {
            r->warm = true;
            r->seq_warm = seq;
            r->allocs_warm = atomic_load(&r->alloc->allocs);
        }
        memcpy(buf, &seq, 8);
        memcpy(buf + 8, &sched, 8);
        if (r->sys->publish(r->st, buf, r->payload) ||
            atomic_load_explicit(&r->rx_failed, memory_order_relaxed)) {
            r->failed = true;
            break;
        }
        after = bench_now_ns();
        hist_add(&r->stall, after - now); /* time the publish call held the publisher */
        seq++;
        if (mean > 0)
            next = next_due(r, next, t0, mean, seq);
    }
    r->t_last = bench_now_ns();
    if (r->alloc)
        r->allocs_end = atomic_load(&r->alloc->allocs);
    r->offered = seq;
    r->scheduled = seq + unsent;
    free(buf);
    return NULL;
}

/*
 * The isolation scenario's sleeps as this machine does them: a sleep of
 * 20 us can take 50 (timer and wake-up costs), which would make the "fast"
 * subscribers slower than the load assumes. So the fast ones' service time
 * is what their sleep takes here, the load is a fraction of that rate, and
 * the slow one sleeps long enough to take ten times as long.
 */
struct iso_cal {
    uint64_t fast_ns;       /* a fast subscriber's sleep, measured */
    uint64_t slow_sleep_ns; /* what the slow one asks for */
    uint64_t slow_ns;       /* what that takes, measured */
};

static uint64_t sleep_takes(uint64_t ns)
{
    enum { N = 100 };
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < N; i++)
        sleep_ns(ns);
    return (bench_now_ns() - t0) / N;
}

static void calibrate(const struct bench_opts *o, struct iso_cal *c)
{
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL); /* as the receivers have it */
    c->fast_ns = sleep_takes(o->iso_work_ns);
    uint64_t overhead = c->fast_ns > o->iso_work_ns ? c->fast_ns - o->iso_work_ns : 0;
    c->slow_sleep_ns = 10 * c->fast_ns - overhead;
    c->slow_ns = sleep_takes(c->slow_sleep_ns);
}

/* Fills m from one run of p's system, configuration and load. */
static void run_once(const struct bench_opts *o, const struct iso_cal *cal,
                     const struct study_sys *sys, struct point *p, uint64_t seed, struct metrics *m)
{
    for (int i = 0; i < M_COUNT; i++)
        m->v[i] = NAN;
    m->acct = ACCT_FAILED;
    struct bench_alloc alloc;
    bench_alloc_init(&alloc);
    struct study_cfg cfg = p->cfg;
    cfg.alloc = &alloc;
    struct study_run *r = calloc(1, sizeof *r);
    if (!r)
        return;
    bool iso = p->sc == SC_ISOLATION;
    *r = (struct study_run){
        .sys = sys,
        .payload = cfg.payload,
        .load = p->load,
        .work_ns = iso ? cal->fast_ns : o->work_ns,
        .arrivals = iso ? 0 : o->arrivals,
        .burst = o->burst,
        /* Isolation: long enough for the slow one to fill
                             * its queue, or block would look harmless. */
        .dur_ns = (uint64_t)((iso && o->duration_s < 0.5 ? 0.5 : o->duration_s) * 1e9),
        .alloc = sys == &study_ringbus ? &alloc : NULL,
        .rng = {seed}};
    atomic_init(&r->pub_done, false);
    atomic_init(&r->rx_failed, false);
    if (sys->open(&cfg, &r->st) != 0) {
        free(r);
        return;
    }
    pthread_t rth[MAX_SUBS], pth;
    int started = 0;
    for (int i = 0; i < cfg.subscribers; i++) {
        struct rx *x = &r->rx[i];
        x->run = r;
        x->sub = i;
        x->rng.s = seed * 31 + (uint64_t)i + 1;
        if (iso) {
            /* Subscriber 0 is the slow one: ten times the service time,
             * spent asleep, so that it costs no CPU the others need. */
            x->svc = SVC_SLEEP;
            x->work_ns = i == 0 ? cal->slow_sleep_ns : o->iso_work_ns;
        } else {
            x->svc = o->exp_service ? SVC_SPIN_EXP : SVC_SPIN;
            x->work_ns = o->work_ns;
        }
        if (pthread_create(&rth[i], NULL, rx_loop, x) != 0)
            break;
        started++;
    }
    bool published = started == cfg.subscribers && pthread_create(&pth, NULL, pub_loop, r) == 0;
    if (published)
        pthread_join(pth, NULL);
    /* Pairs with the acquire load in rx_loop. */
    atomic_store_explicit(&r->pub_done, true, memory_order_release);
    sys->finish(r->st);
    for (int i = 0; i < started; i++)
        pthread_join(rth[i], NULL);
    if (!published) {
        fprintf(stderr, "ringbus-bench: cannot start threads\n");
        sys->close(r->st);
        free(r);
        return;
    }

    /* The subscribers measured: the one (load, capacity) or the three fast
     * ones (isolation; the slow one is reported apart). */
    double sched = (double)r->scheduled;
    struct hist *ages = malloc(sizeof *ages);
    if (!ages) {
        sys->close(r->st);
        free(r);
        return;
    }
    hist_clear(ages);
    /* Isolation: the figures of the fast subscriber that got least (ages:
     * all three together). */
    struct study_counts worst = {0};
    uint64_t worst_received = UINT64_MAX;
    double peak = 0, loss = 0, gap_sum = 0;
    int gaps = 0;
    enum acct acct = ACCT_EXACT;
    for (int i = 0; i < cfg.subscribers; i++) {
        struct rx *x = &r->rx[i];
        struct study_counts c;
        sys->counts(r->st, i, &c);
        uint64_t drops;
        if (c.counted) {
            drops = c.dropped_newest + c.dropped_oldest + c.dropped_timeout + c.dropped_closed;
            if (c.offered != r->offered || c.offered != c.received + c.depth + drops ||
                c.received != x->received || c.depth != 0 || x->reordered)
                acct = ACCT_MISMATCH;
        } else {
            /* The system does not count its drops: whatever was offered and
             * not received was dropped, by the policy it was set up with. */
            c.offered = r->offered;
            drops = x->received <= r->offered ? r->offered - x->received : 0;
            c.dropped_newest = c.dropped_oldest = c.dropped_timeout = c.dropped_closed = 0;
            if (p->cfg.policy == POL_DROP_OLDEST)
                c.dropped_oldest = drops;
            else if (p->cfg.policy == POL_DROP_NEWEST)
                c.dropped_newest = drops;
            else
                c.dropped_timeout = drops;
            if (x->received > r->offered || x->reordered)
                acct = ACCT_MISMATCH;
            else if (acct == ACCT_EXACT)
                acct = ACCT_INFERRED;
        }
        /* Block promises no loss, whoever counts. */
        if (p->cfg.policy == POL_BLOCK && drops && acct != ACCT_MISMATCH)
            acct = ACCT_LOST;
        /* A run of losses that reaches the end leaves no gap to see. */
        uint64_t tail = r->offered > x->expect ? r->offered - x->expect : 0;
        if (tail > x->longest_loss)
            x->longest_loss = tail;
        if (iso && i == 0) {
            m->v[M_SLOW_DELIVERED_PCT] = sched ? 100.0 * (double)x->received / sched : 0;
            m->v[M_SLOW_AGE_P99] = (double)hist_percentile(&x->age, 99) / 1e3;
            m->v[M_SLOW_SERVICE] =
                x->received ? (double)x->busy_ns / (double)x->received / 1e3 : NAN;
            continue;
        }
        hist_merge(ages, &x->age);
        if (x->received < worst_received) {
            worst_received = x->received;
            worst = c;
        }
        if (c.peak_depth > peak)
            peak = c.peak_depth;
        if ((double)x->longest_loss > loss)
            loss = (double)x->longest_loss;
        /* Mean time between deliveries: at a saturated point (a queue that
         * never ran empty) the subscriber's real service time, receive
         * included. */
        if (x->received > 1) {
            gap_sum += (double)(x->last_ns - x->first_ns) / (double)(x->received - 1);
            gaps++;
        }
    }
    if (worst_received == UINT64_MAX)
        worst_received = 0;
    double worst_drops = (double)(worst.dropped_newest + worst.dropped_oldest +
                                  worst.dropped_timeout + worst.dropped_closed);
    m->v[M_SCHEDULED] = sched;
    m->v[M_OFFERED] = (double)r->offered;
    m->v[M_DELIVERED] = (double)worst_received;
    m->v[M_DELIVERED_PCT] = sched ? 100.0 * (double)worst_received / sched : 0;
    m->v[M_DROP_PCT] = sched ? 100.0 * worst_drops / sched : 0;
    m->v[M_UNSENT_PCT] = sched ? 100.0 * (sched - (double)r->offered) / sched : 0;
    m->v[M_DROP_NEWEST] = (double)worst.dropped_newest;
    m->v[M_DROP_OLDEST] = (double)worst.dropped_oldest;
    m->v[M_DROP_TIMEOUT] = (double)worst.dropped_timeout;
    m->v[M_DROP_CLOSED] = (double)worst.dropped_closed;
    m->v[M_AGE_P50] = (double)hist_percentile(ages, 50) / 1e3;
    m->v[M_AGE_P99] = (double)hist_percentile(ages, 99) / 1e3;
    m->v[M_AGE_P999] = (double)hist_percentile(ages, 99.9) / 1e3;
    m->v[M_AGE_MAX] = (double)ages->max / 1e3;
    m->v[M_STALL_P99] = (double)hist_percentile(&r->stall, 99) / 1e3;
    m->v[M_STALL_MAX] = (double)r->stall.max / 1e3;
    m->v[M_ATTEMPTS] =
        r->t_last > r->t_first ? (double)r->offered * 1e9 / (double)(r->t_last - r->t_first) : 0;
    m->v[M_PEAK_DEPTH] = peak > 0 ? peak : NAN;
    m->v[M_LOSS_RUN] = loss;
    /* Allocations from a fifth of the run on, per message published: the
     * bus's set-up and each thread's first calls are not steady state (and
     * the publisher's message cache was grown before the run: warm). */
    if (r->alloc && r->warm && r->offered > r->seq_warm)
        m->v[M_ALLOCS] =
            (double)(r->allocs_end - r->allocs_warm) / (double)(r->offered - r->seq_warm);
    m->v[M_SERVICE] = gaps ? gap_sum / gaps / 1e3 : NAN;
    m->acct = r->failed ? ACCT_FAILED : acct;
    free(ages);
    sys->close(r->st);
    free(r);
}

/*
 * The policy check: with the subscriber not yet reading, one burst of
 * 3 x BURST_CAP messages into a capacity of BURST_CAP; then the subscriber
 * drains. What survives says what the system did: all of them (it blocked
 * the publisher), the first ones (it dropped the newest), or the last ones
 * (it dropped the oldest). A blocking publisher waits in its own thread.
 */
struct burst_run {
    const struct study_sys *sys;
    void *st;
    size_t payload;
    _Atomic bool go, pub_done, published;
    bool failed;
    bool seen[3 * BURST_CAP];
    bool in_order;
    uint64_t got;
};

static void *burst_pub(void *arg)
{
    struct burst_run *b = arg;
    unsigned char buf[4096] = {0};
    for (uint64_t i = 0; i < 3 * BURST_CAP; i++) {
        uint64_t due = bench_now_ns();
        memcpy(buf, &i, 8);
        memcpy(buf + 8, &due, 8);
        if (b->sys->publish(b->st, buf, b->payload)) {
            b->failed = true;
            break;
        }
    }
    atomic_store_explicit(&b->published, true, memory_order_release);
    return NULL;
}

static void *burst_rx(void *arg)
{
    struct burst_run *b = arg;
    while (!atomic_load_explicit(&b->go, memory_order_acquire))
        sleep_ns(1000000);
    uint64_t last = 0;
    int idle = 0;
    b->in_order = true;
    for (;;) {
        unsigned char hdr[16];
        int rc = b->sys->recv(b->st, 0, hdr, 20);
        if (rc < 0)
            break;
        if (rc == 0) {
            if (atomic_load_explicit(&b->pub_done, memory_order_acquire) && ++idle >= 3)
                break;
            continue;
        }
        idle = 0;
        uint64_t seq;
        memcpy(&seq, hdr, 8);
        if (seq >= 3 * BURST_CAP || (b->got && seq <= last))
            b->in_order = false;
        else
            b->seen[seq] = true;
        last = seq;
        b->got++;
    }
    return NULL;
}

/* What the burst showed, in a few words, into buf. */
static void burst_check(const struct study_sys *sys, enum study_policy pol,
                        const struct bench_opts *o, char *buf, size_t len)
{
    struct study_cfg cfg = {.policy = pol,
                            .capacity = BURST_CAP,
                            .subscribers = 1,
                            .payload = o->payload,
                            .block_timeout_ns = o->block_timeout_ns};
    snprintf(buf, len, "failed");
    if (sys->unsupported(&cfg)) {
        snprintf(buf, len, "n/a");
        return;
    }
    struct burst_run *b = calloc(1, sizeof *b);
    if (!b)
        return;
    b->sys = sys;
    b->payload = o->payload;
    atomic_init(&b->go, false);
    atomic_init(&b->pub_done, false);
    atomic_init(&b->published, false);
    if (sys->open(&cfg, &b->st)) {
        free(b);
        return;
    }
    pthread_t pt, rt;
    if (pthread_create(&rt, NULL, burst_rx, b) != 0) {
        sys->close(b->st);
        free(b);
        return;
    }
    bool started = pthread_create(&pt, NULL, burst_pub, b) == 0;
    /* A blocking publisher is stuck after 20 ms; any other is let finish
     * (and given 20 ms for what a system moves in the background) before
     * the subscriber reads. */
    if (started && pol != POL_BLOCK)
        pthread_join(pt, NULL);
    sleep_ns(20000000);
    /* Whether the publisher got through the burst with nobody reading. */
    bool blocked = !atomic_load_explicit(&b->published, memory_order_acquire);
    atomic_store_explicit(&b->go, true, memory_order_release); /* pairs with burst_rx */
    if (started && pol == POL_BLOCK)
        pthread_join(pt, NULL);
    atomic_store_explicit(&b->pub_done, true, memory_order_release);
    sys->finish(b->st);
    pthread_join(rt, NULL);
    sys->close(b->st);
    /* The survivors: how many, and whether they are one run from the
     * start or to the end of the burst. */
    int firsts = -1, lasts = -1;
    for (int i = 0; i < 3 * BURST_CAP; i++)
        if (b->seen[i]) {
            if (firsts < 0)
                firsts = i;
            lasts = i;
        }
    bool run = firsts >= 0 && (uint64_t)(lasts - firsts + 1) == b->got;
    if (!started || b->failed)
        snprintf(buf, len, "failed");
    else if (!b->in_order)
        snprintf(buf, len, "reordered");
    else if (b->got == 3 * BURST_CAP)
        snprintf(buf, len, blocked ? "kept all, blocked" : "kept all, never blocked");
    else if (run && firsts == 0)
        snprintf(buf, len, "kept first %llu", (unsigned long long)b->got);
    else if (run && lasts == 3 * BURST_CAP - 1)
        snprintf(buf, len, "kept last %llu", (unsigned long long)b->got);
    else
        snprintf(buf, len, "kept %llu, scattered", (unsigned long long)b->got);
    free(b);
}

/* What the burst check should see for each policy: block holds the
 * publisher back and keeps everything; a timed-out block refuses the
 * newest, as drop-newest does; every other keeps exactly a capacity. */
#define BURST_CAP_STR "64"
static const char *const burst_expect[POL_COUNT] = {
    "kept all, blocked", "kept first " BURST_CAP_STR, "kept last " BURST_CAP_STR,
    "kept first " BURST_CAP_STR};
_Static_assert(BURST_CAP == 64, "BURST_CAP_STR spells BURST_CAP");

/* ------------------------------------------------------------ the plan */

static const struct study_sys *const all_systems[] = {
    &study_ringbus,
    &study_mutex,
#ifdef RBUS_BENCH_HAVE_NNG
    &study_nng,
#else
    NULL,
#endif
#ifdef RBUS_BENCH_HAVE_ZMQ
    &study_zmq,
#else
    NULL,
#endif
};
#define NSYS 4
static const char *const sys_names[NSYS] = {"ringbus", "mutex-queue", "nng", "zmq"};
static const char *const sys_missing[NSYS] = {NULL, NULL, "libnng-dev", "libzmq3-dev"};

struct study {
    const struct bench_opts *o;
    struct point *pts;
    int n, cap;
    uint32_t load_caps[8];
    int nload_caps;
    double sweep_loads[4];
    int nsweep;
    uint32_t sweep_caps[8];
    int nsweep_caps;
    char burst[NSYS][POL_COUNT][32];
    struct iso_cal cal;
};

static bool sys_on(const struct study *s, int i)
{
    return all_systems[i] && (s->o->peer_mask & (1u << i));
}

static int add_point(struct study *s, enum study_scenario sc, int sys, enum study_policy pol,
                     uint32_t cap, double load)
{
    if (s->n == s->cap) {
        int ncap = s->cap ? 2 * s->cap : 64;
        struct point *p = realloc(s->pts, (size_t)ncap * sizeof *p);
        if (!p)
            return -1;
        s->pts = p;
        s->cap = ncap;
    }
    struct point *p = &s->pts[s->n++];
    memset(p, 0, sizeof *p);
    p->sc = sc;
    p->sys = sys;
    p->load = load;
    p->cfg = (struct study_cfg){.policy = pol,
                                .capacity = cap,
                                .subscribers = sc == SC_ISOLATION ? 4 : 1,
                                .payload = s->o->payload,
                                .block_timeout_ns = s->o->block_timeout_ns};
    const struct study_sys *ss = all_systems[sys];
    p->na = ss->unsupported(&p->cfg);
    ss->describe(&p->cfg, p->config, sizeof p->config);
    return 0;
}

static bool has_load_point(const struct study *s, uint32_t cap, double load)
{
    if (!(s->o->scenario_mask & (1u << SC_LOAD)))
        return false;
    for (int c = 0; c < s->nload_caps; c++)
        for (int l = 0; l < s->o->nloads; l++)
            if (s->load_caps[c] == cap && s->o->loads[l] == load)
                return true;
    return false;
}

static int plan(struct study *s)
{
    const struct bench_opts *o = s->o;
    static const uint32_t decades[] = {64, 1024, 16384};
    if (o->caps_set) {
        for (int i = 0; i < o->ncaps; i++)
            s->load_caps[s->nload_caps++] = o->caps[i];
    } else if (o->grid) {
        memcpy(s->load_caps, decades, sizeof decades);
        s->nload_caps = 3;
    } else {
        s->load_caps[s->nload_caps++] = 1024;
    }
    /* The capacity sweep: at a load just below the service rate and at one
     * above it; the capacities given, or three decades. */
    if (!o->quick)
        s->sweep_loads[s->nsweep++] = 0.95;
    s->sweep_loads[s->nsweep++] = 1.2;
    if (o->caps_set && o->ncaps > 1) {
        for (int i = 0; i < o->ncaps; i++)
            s->sweep_caps[s->nsweep_caps++] = o->caps[i];
    } else {
        memcpy(s->sweep_caps, decades, sizeof decades);
        s->nsweep_caps = 3;
    }
    for (int c = 0; c < s->nload_caps && (o->scenario_mask & (1u << SC_LOAD)); c++)
        for (int l = 0; l < o->nloads; l++)
            for (int i = 0; i < NSYS; i++)
                for (int p = 0; p < POL_COUNT; p++)
                    if (sys_on(s, i) && (o->policy_mask & (1u << p)) &&
                        add_point(s, SC_LOAD, i, (enum study_policy)p, s->load_caps[c],
                                  o->loads[l]))
                        return -1;
    for (int l = 0; l < s->nsweep && (o->scenario_mask & (1u << SC_CAPACITY)); l++)
        for (int c = 0; c < s->nsweep_caps; c++) {
            if (has_load_point(s, s->sweep_caps[c], s->sweep_loads[l]))
                continue; /* measured once, shown in both */
            for (int i = 0; i < NSYS; i++)
                for (int p = 0; p < POL_COUNT; p++)
                    if (sys_on(s, i) && (o->policy_mask & (1u << p)) &&
                        add_point(s, SC_CAPACITY, i, (enum study_policy)p, s->sweep_caps[c],
                                  s->sweep_loads[l]))
                        return -1;
        }
    if (o->scenario_mask & (1u << SC_ISOLATION))
        for (int i = 0; i < NSYS; i++)
            for (int p = 0; p < POL_COUNT; p++)
                if (sys_on(s, i) && (o->policy_mask & (1u << p)) &&
                    add_point(s, SC_ISOLATION, i, (enum study_policy)p, s->load_caps[0],
                              o->iso_load))
                    return -1;
    return 0;
}

/* ------------------------------------------------------------ running */

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median, minimum and maximum of every metric over the repetitions
 * (NaN, "not known", when no repetition knows it). */
static void summarize(struct point *p)
{
    for (int k = 0; k < M_COUNT; k++) {
        double v[MAX_REPS];
        int n = 0;
        for (int r = 0; r < p->nreps; r++)
            if (!isnan(p->rep[r].v[k]))
                v[n++] = p->rep[r].v[k];
        if (!n) {
            p->med.v[k] = p->lo.v[k] = p->hi.v[k] = NAN;
            continue;
        }
        qsort(v, (size_t)n, sizeof v[0], cmp_dbl);
        p->lo.v[k] = v[0];
        p->hi.v[k] = v[n - 1];
        p->med.v[k] = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    }
    p->med.acct = ACCT_EXACT;
    for (int r = 0; r < p->nreps; r++)
        if (p->rep[r].acct > p->med.acct)
            p->med.acct = p->rep[r].acct;
}

static bool same_group(const struct point *a, const struct point *b)
{
    return a->sc == b->sc && a->cfg.capacity == b->cfg.capacity && a->load == b->load;
}

static void run_all(struct study *s)
{
    const struct bench_opts *o = s->o;
    int reps = o->reps > 0 ? o->reps : 1;
    int total = 0, done = 0;
    for (int i = 0; i < s->n; i++)
        total += s->pts[i].na ? 0 : reps;
    uint64_t started = bench_now_ns();
    /* Repetitions go round a group (one scenario, capacity and load), so
     * every system meets the same moments of a noisy machine. */
    for (int g = 0; g < s->n;) {
        int end = g + 1;
        while (end < s->n && same_group(&s->pts[g], &s->pts[end]))
            end++;
        for (int r = 0; r < reps; r++)
            for (int i = g; i < end; i++) {
                struct point *p = &s->pts[i];
                if (p->na)
                    continue;
                run_once(o, &s->cal, all_systems[p->sys], p,
                         0x5eed0000u + (uint64_t)r * 7919u + (uint64_t)g, &p->rep[r]);
                p->nreps = r + 1;
                bench_progress("policies", (double)++done / (double)total, started);
            }
        for (int i = g; i < end; i++)
            summarize(&s->pts[i]);
        g = end;
    }
    bench_progress_done();
}

/* ------------------------------------------------------------- output */

static const char *fmt_us(double us, char *buf, size_t len)
{
    if (isnan(us))
        snprintf(buf, len, "n/a");
    else if (us < 10)
        snprintf(buf, len, "%.2fus", us);
    else if (us < 1000)
        snprintf(buf, len, "%.1fus", us);
    else if (us < 1e6)
        snprintf(buf, len, "%.2fms", us / 1e3);
    else
        snprintf(buf, len, "%.2fs", us / 1e6);
    return buf;
}

static const char *fmt_load(double load, char *buf, size_t len)
{
    if (load > 0)
        snprintf(buf, len, "%g", load);
    else
        snprintf(buf, len, "max");
    return buf;
}

static const char *cause(const struct metrics *m)
{
    static const int k[] = {M_DROP_NEWEST, M_DROP_OLDEST, M_DROP_TIMEOUT, M_DROP_CLOSED};
    static const char *const names[] = {"newest", "oldest", "timeout", "closed"};
    const char *c = "-";
    int seen = 0;
    for (int i = 0; i < 4; i++)
        if (m->v[k[i]] > 0) {
            c = names[i];
            seen++;
        }
    return seen > 1 ? "mixed" : c;
}

static const char *check_of(const struct study *s, const struct point *p, char *buf, size_t len)
{
    const char *b = s->burst[p->sys][p->cfg.policy];
    if (strcmp(b, burst_expect[p->cfg.policy]))
        snprintf(buf, len, "%s (!)", b);
    else
        snprintf(buf, len, "%s", b);
    return buf;
}

static void print_row(const struct study *s, const struct point *p)
{
    char a[8][16], chk[24];
    if (p->na) {
        printf("  %-12s %-14s n/a: %s\n", sys_names[p->sys], study_policy_names[p->cfg.policy],
               p->na);
        return;
    }
    const struct metrics *m = &p->med;
    printf("  %-12s %-14s %7.2f %7.2f %7.2f %-7s %9s %9s %9s %9s %9s %6s %9.0f %-17s %s\n",
           sys_names[p->sys], study_policy_names[p->cfg.policy], m->v[M_DELIVERED_PCT],
           m->v[M_DROP_PCT], m->v[M_UNSENT_PCT], cause(m), fmt_us(m->v[M_AGE_P50], a[0], 16),
           fmt_us(m->v[M_AGE_P99], a[1], 16), fmt_us(m->v[M_AGE_P999], a[2], 16),
           fmt_us(m->v[M_AGE_MAX], a[3], 16), fmt_us(m->v[M_STALL_P99], a[4], 16),
           isnan(m->v[M_PEAK_DEPTH]) ? "n/a"
                                     : (snprintf(a[5], 16, "%.0f", m->v[M_PEAK_DEPTH]), a[5]),
           m->v[M_LOSS_RUN], check_of(s, p, chk, sizeof chk), acct_names[m->acct]);
}

static void print_group(const struct study *s, uint32_t cap, double load, bool any_sc)
{
    char l[16];
    bool header = false;
    for (int i = 0; i < s->n; i++) {
        const struct point *p = &s->pts[i];
        if (p->sc == SC_ISOLATION || p->cfg.capacity != cap || p->load != load ||
            (!any_sc && p->sc != SC_LOAD))
            continue;
        if (!header) {
            printf("\nload %s, capacity %u\n", fmt_load(load, l, sizeof l), cap);
            printf("  %-12s %-14s %7s %7s %7s %-7s %9s %9s %9s %9s %9s %6s %9s %-17s %s\n",
                   "system", "policy", "deliv%", "drop%", "unsent%", "by", "age p50", "p99",
                   "p99.9", "max", "stall p99", "peak", "loss run", "burst", "accounting");
            header = true;
        }
        print_row(s, p);
    }
}

static void print_isolation(const struct study *s)
{
    const struct bench_opts *o = s->o;
    bool header = false;
    for (int i = 0; i < s->n; i++) {
        const struct point *p = &s->pts[i];
        if (p->sc != SC_ISOLATION)
            continue;
        if (!header) {
            char w[16], fw[16], sw[16];
            printf("\nisolation: one subscriber ten times slower than three fast ones, all "
                   "asleep while they serve\n(fast: sleep %s, which takes %s here; slow: takes "
                   "%s), Poisson arrivals at load %g\nof the fast ones' rate, capacity %u\n",
                   fmt_us((double)o->iso_work_ns / 1e3, w, sizeof w),
                   fmt_us((double)s->cal.fast_ns / 1e3, fw, sizeof fw),
                   fmt_us((double)s->cal.slow_ns / 1e3, sw, sizeof sw), o->iso_load,
                   p->cfg.capacity);
            printf("  %-12s %-14s %10s %9s %9s %10s %12s %9s %9s %7s %s\n", "system", "policy",
                   "fast deliv%", "fast p99", "fast max", "slow deliv%", "slow service",
                   "stall p99", "stall max", "unsent%", "accounting");
            header = true;
        }
        if (p->na) {
            printf("  %-12s %-14s n/a: %s\n", sys_names[p->sys], study_policy_names[p->cfg.policy],
                   p->na);
            continue;
        }
        const struct metrics *m = &p->med;
        char a[5][16];
        printf("  %-12s %-14s %10.2f %9s %9s %10.2f %12s %9s %9s %7.2f %s\n", sys_names[p->sys],
               study_policy_names[p->cfg.policy], m->v[M_DELIVERED_PCT],
               fmt_us(m->v[M_AGE_P99], a[0], 16), fmt_us(m->v[M_AGE_MAX], a[1], 16),
               m->v[M_SLOW_DELIVERED_PCT], fmt_us(m->v[M_SLOW_SERVICE], a[2], 16),
               fmt_us(m->v[M_STALL_P99], a[3], 16), fmt_us(m->v[M_STALL_MAX], a[4], 16),
               m->v[M_UNSENT_PCT], acct_names[m->acct]);
    }
}

static void fill_row(const struct study *s, const struct point *p, struct bench_row *row)
{
    const struct bench_opts *o = s->o;
    char l[16], chk[24];
    bool iso = p->sc == SC_ISOLATION;
    memset(row, 0, sizeof *row);
    bench_row_str(row, "scenario", scenario_names[p->sc]);
    bench_row_str(row, "system", sys_names[p->sys]);
    bench_row_str(row, "policy", study_policy_names[p->cfg.policy]);
    bench_row_str(row, "load", fmt_load(p->load, l, sizeof l));
    bench_row_num(row, "capacity", "%.0f", p->cfg.capacity);
    bench_row_num(row, "subscribers", "%.0f", p->cfg.subscribers);
    bench_row_str(row, "arrivals", arrival_names[iso ? 0 : o->arrivals]);
    bench_row_num(row, "burst", "%.0f", o->arrivals == 2 && !iso ? o->burst : 0);
    bench_row_str(row, "service", iso ? "sleep" : o->exp_service ? "exponential" : "fixed");
    /* Isolation: the fast ones' service as measured (the load's base). */
    bench_row_num(row, "work_ns", "%.0f", (double)(iso ? s->cal.fast_ns : o->work_ns));
    bench_row_num(row, "payload", "%.0f", (double)o->payload);
    bench_row_num(row, "seconds", "%.3f", iso && o->duration_s < 0.5 ? 0.5 : o->duration_s);
    bench_row_num(row, "reps", "%.0f", p->nreps);
    bench_row_str(row, "configured", p->config);
    bench_row_str(row, "status", p->na ? p->na : "run");
    bench_row_str(row, "burst_check", p->na ? "n/a" : check_of(s, p, chk, sizeof chk));
    bench_row_str(row, "accounting", p->na ? "n/a" : acct_names[p->med.acct]);
    /* Column names outlive the row: made once, here. */
    static char names[M_COUNT][3][40];
    for (int k = 0; k < M_COUNT; k++) {
        const struct metrics *set[3] = {&p->med, &p->lo, &p->hi};
        for (int j = 0; j < (mdef[k].range ? 3 : 1); j++) {
            if (!names[k][j][0])
                snprintf(names[k][j], sizeof names[k][j], "%s%s", mdef[k].name,
                         j == 0   ? ""
                         : j == 1 ? "_min"
                                  : "_max");
            double v = p->na ? NAN : set[j]->v[k];
            if (isnan(v))
                bench_row_str(row, names[k][j], "n/a");
            else
                bench_row_num(row, names[k][j], mdef[k].fmt, v);
        }
    }
}

/* ------------------------------------------------------------- plots */

/* The series of a plot: every (system, policy) with a point run in `sc`
 * groups at this capacity (cap 0: any). */
static int series_of(const struct study *s, bool iso, uint32_t cap, int out[][2])
{
    int n = 0;
    for (int i = 0; i < NSYS; i++)
        for (int p = 0; p < POL_COUNT; p++) {
            bool run = false;
            for (int k = 0; k < s->n && !run; k++) {
                const struct point *q = &s->pts[k];
                run = !q->na && q->sys == i && (int)q->cfg.policy == p &&
                      (q->sc == SC_ISOLATION) == iso && (!cap || q->cfg.capacity == cap);
            }
            if (run) {
                out[n][0] = i;
                out[n][1] = p;
                n++;
            }
        }
    return n;
}

static const struct point *find(const struct study *s, bool iso, int sys, int pol, uint32_t cap,
                                double load)
{
    for (int k = 0; k < s->n; k++) {
        const struct point *q = &s->pts[k];
        if (!q->na && q->sys == sys && (int)q->cfg.policy == pol && q->cfg.capacity == cap &&
            q->load == load && (q->sc == SC_ISOLATION) == iso)
            return q;
    }
    return NULL;
}

static void put_val(FILE *f, const struct point *q, int k)
{
    if (!q || isnan(q->med.v[k]))
        fputs(" ?", f);
    else
        fprintf(f, " %.6g", q->med.v[k]);
}

/* The results folder as the plot script names it (write_plots). */
static char plot_dir[4096];

/* The plotted figures, in this order in every data file. */
static const int plotted[] = {M_DROP_PCT, M_DELIVERED_PCT, M_AGE_P99};
#define NPLOTTED 3

/* A data file: one row per x (load or capacity), then for each plotted
 * figure its value for every series. */
static bool write_dat(const struct study *s, const char *name, bool by_load, uint32_t cap,
                      double load, int ser[][2], int nser)
{
    char path[512];
    FILE *f = bench_open_result(s->o, name, path, sizeof path);
    if (!f)
        return false;
    fputs(by_load ? "load" : "capacity", f);
    for (int j = 0; j < NPLOTTED; j++)
        for (int i = 0; i < nser; i++)
            fprintf(f, " \"%s %s %s\"", sys_names[ser[i][0]], study_policy_names[ser[i][1]],
                    mdef[plotted[j]].name);
    fputc('\n', f);
    int nx = by_load ? s->o->nloads : s->nsweep_caps;
    for (int x = 0; x < nx; x++) {
        double l = by_load ? s->o->loads[x] : load;
        uint32_t c = by_load ? cap : s->sweep_caps[x];
        char lb[16];
        if (by_load)
            fprintf(f, "%s", fmt_load(l, lb, sizeof lb));
        else
            fprintf(f, "%u", c);
        for (int j = 0; j < NPLOTTED; j++)
            for (int i = 0; i < nser; i++)
                put_val(f, find(s, false, ser[i][0], ser[i][1], c, l), plotted[j]);
        fputc('\n', f);
    }
    fclose(f);
    return true;
}

/* One plot of figure j (index into plotted) for every series: colour by
 * system, dashes and points by policy, so that a reader can follow either. */
static void plot_lines(FILE *gp, const char *dat, bool by_load, int j, int ser[][2], int nser)
{
    static const char *const colour[NSYS] = {"#0072b2", "#e69f00", "#009e73", "#d55e00"};
    static const int dash[POL_COUNT] = {1, 4, 2, 3}, point[POL_COUNT] = {7, 9, 5, 13};
    fputs("plot", gp);
    for (int i = 0; i < nser; i++)
        fprintf(gp,
                "%s '%s/%s' using %s:%d%s with linespoints lw 2 lc rgb '%s' dt %d pt %d "
                "title '%s %s'",
                i ? ", \\\n    " : " ", plot_dir, dat, by_load ? "0" : "1", 2 + j * nser + i,
                by_load ? ":xtic(1)" : "", colour[ser[i][0]], dash[ser[i][1]], point[ser[i][1]],
                sys_names[ser[i][0]], study_policy_names[ser[i][1]]);
    fputc('\n', gp);
}

static void plot_panels(FILE *gp, const char *dat, bool by_load, const char *what, int ser[][2],
                        int nser)
{
    fprintf(gp, "set ylabel 'dropped, %% of scheduled%s'\nunset logscale y\nset yrange [0:100]\n",
            what);
    plot_lines(gp, dat, by_load, 0, ser, nser);
    fprintf(gp, "set ylabel 'delivered, %% of scheduled%s'\n", what);
    plot_lines(gp, dat, by_load, 1, ser, nser);
    fprintf(gp, "set ylabel 'p99 age of delivered (us)%s'\nset logscale y\nset yrange [*:*]\n",
            what);
    plot_lines(gp, dat, by_load, 2, ser, nser);
}

static void write_plots(const struct study *s)
{
    const struct bench_opts *o = s->o;
    char path[512];
    FILE *gp = bench_open_result(o, "policies.gp", path, sizeof path);
    if (!gp)
        return;
    /* Absolute paths in the script, so that it runs from any folder. */
    if (!realpath(o->out_dir, plot_dir))
        snprintf(plot_dir, sizeof plot_dir, "%s", o->out_dir);
    char arr[64];
    if (o->arrivals == 2)
        snprintf(arr, sizeof arr, "bursts of %u", o->burst);
    else
        snprintf(arr, sizeof arr, "%s arrivals", arrival_names[o->arrivals]);
    fputs("# Written by ringbus-bench policies; run with gnuplot from any folder.\n"
          "set datafile missing '?'\nset grid\nset key below\n",
          gp);
    int ser[NSYS * POL_COUNT][2];
    int nplots = 0;
    for (int c = 0; c < s->nload_caps && o->nloads > 1 && (o->scenario_mask & 1u); c++) {
        int n = series_of(s, false, s->load_caps[c], ser);
        char dat[64];
        snprintf(dat, sizeof dat, "policies-load-cap%u.dat", s->load_caps[c]);
        if (!n || !write_dat(s, dat, true, s->load_caps[c], 0, ser, n))
            continue;
        fprintf(gp,
                "set terminal pngcairo size 1500,640 noenhanced font ',10'\n"
                "set output '%s/policies-load-cap%u.png'\n"
                "set multiplot layout 1,3 title 'against offered load (a fraction of the "
                "service rate; max = unthrottled): capacity %u, %s, %llu ns service'\n"
                "set xlabel 'offered load'\nunset logscale x\n",
                plot_dir, s->load_caps[c], s->load_caps[c], arr, (unsigned long long)o->work_ns);
        plot_panels(gp, dat, true, "", ser, n);
        fputs("unset multiplot\nunset logscale\n", gp);
        nplots++;
    }
    if ((o->scenario_mask & (1u << SC_CAPACITY)) && s->nsweep_caps > 1) {
        int n = series_of(s, false, 0, ser);
        fprintf(gp,
                "set terminal pngcairo size 1500,%d noenhanced font ',10'\n"
                "set output '%s/policies-capacity.png'\n"
                "set multiplot layout %d,3 title 'against capacity: %s, %llu ns service'\n"
                "set logscale x 2\nset xlabel 'capacity (messages)'\n",
                300 + 340 * s->nsweep, plot_dir, s->nsweep, arr, (unsigned long long)o->work_ns);
        for (int l = 0; l < s->nsweep; l++) {
            char dat[64], what[32];
            snprintf(dat, sizeof dat, "policies-capacity-load%g.dat", s->sweep_loads[l]);
            snprintf(what, sizeof what, ", load %g", s->sweep_loads[l]);
            if (write_dat(s, dat, false, 0, s->sweep_loads[l], ser, n))
                plot_panels(gp, dat, false, what, ser, n);
        }
        fputs("unset multiplot\nunset logscale\n", gp);
        nplots++;
    }
    int n = series_of(s, true, 0, ser);
    if (n) {
        FILE *f = bench_open_result(o, "policies-isolation.dat", path, sizeof path);
        if (f) {
            fputs("series fast_delivered_pct fast_age_p99_us stall_p99_us slow_delivered_pct\n", f);
            for (int i = 0; i < n; i++) {
                const struct point *q = NULL;
                for (int k = 0; k < s->n && !q; k++)
                    if (s->pts[k].sc == SC_ISOLATION && !s->pts[k].na &&
                        s->pts[k].sys == ser[i][0] && (int)s->pts[k].cfg.policy == ser[i][1])
                        q = &s->pts[k];
                fprintf(f, "\"%s %s\"", sys_names[ser[i][0]], study_policy_names[ser[i][1]]);
                put_val(f, q, M_DELIVERED_PCT);
                put_val(f, q, M_AGE_P99);
                put_val(f, q, M_STALL_P99);
                put_val(f, q, M_SLOW_DELIVERED_PCT);
                fputc('\n', f);
            }
            fclose(f);
            fprintf(gp,
                    "set terminal pngcairo size 1500,520 noenhanced font ',10'\n"
                    "set output '%s/policies-isolation.png'\n"
                    "set multiplot layout 1,3 title 'one slow subscriber among three fast "
                    "ones: what each policy does to the fast ones and to the publisher'\n"
                    "set style fill solid 0.6\nset boxwidth 0.6\nset xtics rotate by -35\n"
                    "unset key\nunset xlabel\nunset ylabel\nunset logscale\n"
                    "set yrange [0:105]\n"
                    "set title 'fast subscribers: delivered %%'\n"
                    "plot '%s/policies-isolation.dat' every ::1 using 0:2:xtic(1) with boxes\n"
                    "set title 'fast subscribers: p99 age (us)'\nset logscale y\n"
                    "set yrange [*:*]\n"
                    "plot '%s/policies-isolation.dat' every ::1 using 0:3:xtic(1) with boxes\n"
                    "set title 'publisher: p99 time in publish (us)'\n"
                    "plot '%s/policies-isolation.dat' every ::1 using 0:4:xtic(1) with boxes\n"
                    "unset multiplot\n",
                    plot_dir, plot_dir, plot_dir, plot_dir);
            nplots++;
        }
    }
    fclose(gp);
    if (!nplots)
        return;
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        printf("plots: gnuplot is not installed (apt-get install gnuplot-nox); script "
               "%s/policies.gp\n",
               o->out_dir);
        return;
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "gnuplot '%s/policies.gp'", o->out_dir);
    if (system(cmd) == 0)
        printf("plots: %s/policies-*.png (script %s/policies.gp)\n", o->out_dir, o->out_dir);
    else
        printf("plots: gnuplot failed on %s/policies.gp\n", o->out_dir);
}

/* ------------------------------------------------- what the data says */

static bool lost_nothing(const struct point *p)
{
    return !p->na && p->nreps && p->hi.v[M_DROP_PCT] == 0 && p->hi.v[M_UNSENT_PCT] == 0 &&
           (p->med.acct == ACCT_EXACT || p->med.acct == ACCT_INFERRED);
}

/* The highest throttled load of the main grid; 0 when there is none. */
static double top_load(const struct bench_opts *o)
{
    double top = 0;
    for (int i = 0; i < o->nloads; i++)
        if (o->loads[i] > top)
            top = o->loads[i];
    return top;
}

static void derive(const struct study *s)
{
    const struct bench_opts *o = s->o;
    int ser[NSYS * POL_COUNT][2];
    char a[4][16], l[16];
    if (o->reps > 1)
        printf("\nfrom this run (medians of %d repetitions; \"nothing lost\" means in every "
               "one):\n",
               o->reps);
    else
        printf("\nfrom this run:\n");
    uint32_t cap = s->load_caps[0];
    double top = top_load(o);
    /* Loads are fractions of 1/work_ns; at a load above 1 the subscriber
     * never waits, and its time between deliveries is its real service
     * time: the work plus its system's receive. */
    bool first = true;
    for (int i = 0; i < NSYS && top > 1 && (o->scenario_mask & 1u); i++) {
        double v[POL_COUNT];
        int nv = 0;
        for (int p = 0; p < POL_COUNT; p++) {
            const struct point *q = find(s, false, i, p, cap, top);
            if (q && !isnan(q->med.v[M_SERVICE]))
                v[nv++] = q->med.v[M_SERVICE];
        }
        if (!nv)
            continue;
        qsort(v, (size_t)nv, sizeof v[0], cmp_dbl);
        if (first)
            printf("  at load %g a subscriber took a message every (work %s + receive):", top,
                   fmt_us((double)o->work_ns / 1e3, a[1], 16));
        printf("%s %s %s", first ? "" : ",", sys_names[i], fmt_us(v[nv / 2], a[0], 16));
        first = false;
    }
    if (!first)
        printf("\n");
    int n = (o->scenario_mask & 1u) ? series_of(s, false, cap, ser) : 0;
    for (int i = 0; i < n && top > 0; i++) {
        /* The highest load below which every load measured lost nothing. */
        double best = -1, lowest_loss = INFINITY;
        const struct point *bp = NULL;
        for (int x = 0; x < o->nloads; x++) {
            const struct point *q = find(s, false, ser[i][0], ser[i][1], cap, o->loads[x]);
            if (q && o->loads[x] > 0 && !lost_nothing(q) && o->loads[x] < lowest_loss)
                lowest_loss = o->loads[x];
        }
        for (int x = 0; x < o->nloads; x++) {
            const struct point *q = find(s, false, ser[i][0], ser[i][1], cap, o->loads[x]);
            if (q && o->loads[x] > best && o->loads[x] > 0 && o->loads[x] < lowest_loss &&
                lost_nothing(q)) {
                best = o->loads[x];
                bp = q;
            }
        }
        printf("  %s %s, capacity %u: ", sys_names[ser[i][0]], study_policy_names[ser[i][1]], cap);
        if (bp)
            printf("nothing lost up to load %g (p99 age %s)", best,
                   fmt_us(bp->med.v[M_AGE_P99], a[0], 16));
        else {
            /* The lowest load measured, and how much it lost at worst. */
            double low = 0;
            for (int x = 0; x < o->nloads; x++)
                if (o->loads[x] > 0 && (low == 0 || o->loads[x] < low))
                    low = o->loads[x];
            const struct point *q = low > 0 ? find(s, false, ser[i][0], ser[i][1], cap, low) : NULL;
            if (q)
                printf("lost messages at every load measured (at load %g, up to %.3f%% "
                       "dropped and %.3f%% unsent)",
                       low, q->hi.v[M_DROP_PCT], q->hi.v[M_UNSENT_PCT]);
        }
        const struct point *t =
            top > 0 && top > best ? find(s, false, ser[i][0], ser[i][1], cap, top) : NULL;
        if (t)
            printf("; at load %g: %.2f%% delivered, %.2f%% dropped, %.2f%% unsent, p99 age %s", top,
                   t->med.v[M_DELIVERED_PCT], t->med.v[M_DROP_PCT], t->med.v[M_UNSENT_PCT],
                   fmt_us(t->med.v[M_AGE_P99], a[1], 16));
        printf("\n");
    }
    if ((o->scenario_mask & (1u << SC_CAPACITY)) && s->nsweep_caps > 1) {
        n = series_of(s, false, 0, ser);
        for (int li = 0; li < s->nsweep; li++) {
            double load = s->sweep_loads[li];
            /* Above the service rate, a capacity only buys time: how much,
             * from ringbus's measured service time. */
            double svc = NAN;
            for (int k = 0; k < s->n; k++)
                if (s->pts[k].sys == 0 && s->pts[k].sc == SC_LOAD && s->pts[k].nreps &&
                    s->pts[k].load == top && top > 1)
                    svc = s->pts[k].med.v[M_SERVICE];
            double excess = load / (double)o->work_ns - 1.0 / (svc * 1e3);
            if (svc > 0 && excess > 0) {
                printf("  at load %g the backlog grows by %.0f messages a second: capacity", load,
                       excess * 1e9);
                for (int c = 0; c < s->nsweep_caps; c++)
                    printf("%s %u fills in %s", c ? "," : "", s->sweep_caps[c],
                           fmt_us((double)s->sweep_caps[c] / excess / 1e3, a[1], 16));
                printf(" (a point lasts %.2f s)\n", o->duration_s);
            }
            /* What capacity buys at this load: ringbus's own policies. */
            for (int i = 0; i < n; i++) {
                if (ser[i][0] != 0)
                    continue;
                printf("  ringbus %s at load %g, by capacity:", study_policy_names[ser[i][1]],
                       load);
                for (int c = 0; c < s->nsweep_caps; c++) {
                    const struct point *q =
                        find(s, false, ser[i][0], ser[i][1], s->sweep_caps[c], load);
                    if (q)
                        printf("%s %u: %.2f%% delivered, p99 %s", c ? ";" : "", s->sweep_caps[c],
                               q->med.v[M_DELIVERED_PCT], fmt_us(q->med.v[M_AGE_P99], a[0], 16));
                }
                printf("\n");
            }
            if (load >= 1)
                continue; /* above the service rate no capacity keeps up for long */
            printf("  smallest capacity that lost nothing at load %g:", load);
            for (int i = 0; i < n; i++) {
                uint32_t best = 0;
                bool any = false;
                for (int c = 0; c < s->nsweep_caps; c++) {
                    const struct point *q =
                        find(s, false, ser[i][0], ser[i][1], s->sweep_caps[c], load);
                    any |= q != NULL;
                    if (q && lost_nothing(q) && (!best || s->sweep_caps[c] < best))
                        best = s->sweep_caps[c];
                }
                if (!any)
                    continue;
                printf("%s %s %s %s", i ? "," : "", sys_names[ser[i][0]],
                       study_policy_names[ser[i][1]],
                       best ? (snprintf(l, sizeof l, "%u", best), l) : "none");
            }
            printf("\n");
        }
    }
    /* Isolation: each system's block against its best-isolating drop
     * policy, as the fast subscribers and the publisher see it. */
    for (int i = 0; i < NSYS && (o->scenario_mask & (1u << SC_ISOLATION)); i++) {
        const struct point *blk = NULL, *drop = NULL;
        for (int k = 0; k < s->n; k++) {
            const struct point *q = &s->pts[k];
            if (q->sc != SC_ISOLATION || q->sys != i || q->na || !q->nreps)
                continue;
            if (q->cfg.policy == POL_BLOCK)
                blk = q;
            else if ((q->cfg.policy == POL_DROP_OLDEST || q->cfg.policy == POL_DROP_NEWEST) &&
                     (!drop || q->med.v[M_AGE_P99] < drop->med.v[M_AGE_P99]))
                drop = q;
        }
        if (!blk || !drop)
            continue;
        printf("  isolation, %s: fast subscribers' p99 age %s under %s, %s under block (%.0fx); "
               "publisher p99 stall %s against %s\n",
               sys_names[i], fmt_us(drop->med.v[M_AGE_P99], a[0], 16),
               study_policy_names[drop->cfg.policy], fmt_us(blk->med.v[M_AGE_P99], a[1], 16),
               blk->med.v[M_AGE_P99] / drop->med.v[M_AGE_P99],
               fmt_us(drop->med.v[M_STALL_P99], a[2], 16),
               fmt_us(blk->med.v[M_STALL_P99], a[3], 16));
    }
    /* Unthrottled: publishes per second against each peer's same policy. */
    bool unthrottled = false;
    for (int x = 0; x < o->nloads; x++)
        unthrottled |= o->loads[x] == 0;
    for (int p = 0; unthrottled && (o->scenario_mask & 1u) && p < POL_COUNT; p++) {
        const struct point *rb = find(s, false, 0, p, cap, 0);
        if (!rb)
            continue;
        bool any = false;
        for (int i = 1; i < NSYS; i++) {
            const struct point *q = find(s, false, i, p, cap, 0);
            if (!q || !(q->med.v[M_ATTEMPTS] > 0))
                continue;
            if (!any)
                printf("  load %s, publishes/s: ringbus %s %.2fM =", fmt_load(0, l, sizeof l),
                       study_policy_names[p], rb->med.v[M_ATTEMPTS] / 1e6);
            printf("%s %.2fx %s's", any ? "," : "", rb->med.v[M_ATTEMPTS] / q->med.v[M_ATTEMPTS],
                   sys_names[i]);
            any = true;
        }
        if (any)
            printf("%s\n", o->reps > 1 ? "" : " (one run each: --reps N for a steadier ratio)");
    }
}

/* ------------------------------------------------------------- the mode */

/* How often this machine takes the CPU away from a spinning thread, and
 * for how long: on a shared or small machine these pauses, not the queue,
 * set the tail of every system's ages. */
static void noise_probe(uint64_t ns, int *pauses, uint64_t *longest)
{
    uint64_t t0 = bench_now_ns(), last = t0, now;
    *pauses = 0;
    *longest = 0;
    while ((now = bench_now_ns()) - t0 < ns) {
        if (now - last > 100000)
            ++*pauses;
        if (now - last > *longest)
            *longest = now - last;
        last = now;
    }
}

int bench_mode_policies(const struct bench_opts *o)
{
    struct study s = {.o = o};
    if (plan(&s)) {
        fprintf(stderr, "ringbus-bench: out of memory\n");
        return 1;
    }
    int runs = 0;
    for (int i = 0; i < s.n; i++)
        runs += s.pts[i].na ? 0 : (o->reps > 0 ? o->reps : 1);
    bench_print_machine(stdout, o->format);
    if (o->format == FORMAT_TABLE) {
        char arr[64];
        if (o->arrivals == 2)
            snprintf(arr, sizeof arr, "bursts of %u at full speed", o->burst);
        else
            snprintf(arr, sizeof arr, "%s arrivals", arrival_names[o->arrivals]);
        printf("policies: one publisher, %s at each load (a fraction of the subscriber's "
               "service rate);\n%s service of %llu ns a message; %zu B messages; %.2f s per "
               "point, %d runs; ages are counted from\neach message's scheduled time. "
               "deliv%%, drop%% and unsent%% are of the messages scheduled.\n",
               arr, o->exp_service ? "exponential" : "fixed", (unsigned long long)o->work_ns,
               o->payload, o->duration_s, runs);
        int pauses;
        uint64_t longest;
        char lg[16];
        noise_probe(300000000u, &pauses, &longest);
        printf("this machine paused a spinning thread %d times for over 100us in 0.3 s "
               "(longest %s):\nthe tails of all systems' ages include such pauses.\n",
               pauses, fmt_us((double)longest / 1e3, lg, sizeof lg));
    }
    for (int i = 0; i < NSYS; i++)
        if (!all_systems[i] && (o->peer_mask & (1u << i)) && o->format == FORMAT_TABLE)
            printf("%s: not built in (install %s and rebuild): no rows\n", sys_names[i],
                   sys_missing[i]);
    /* The policy check of every system, before the measurements. */
    for (int i = 0; i < NSYS; i++)
        for (int p = 0; p < POL_COUNT; p++)
            if (sys_on(&s, i) && (o->policy_mask & (1u << p)))
                burst_check(all_systems[i], (enum study_policy)p, o, s.burst[i][p],
                            sizeof s.burst[i][p]);
    if (o->scenario_mask & (1u << SC_ISOLATION))
        calibrate(o, &s.cal);
    run_all(&s);

    int rc = 0;
    if (o->format == FORMAT_TABLE) {
        if (o->reps > 1)
            printf("\nevery figure is the median of %d repetitions; min and max are in "
                   "policies.csv\n",
                   o->reps);
        for (int c = 0; c < s.nload_caps && (o->scenario_mask & 1u); c++)
            for (int l = 0; l < o->nloads; l++)
                print_group(&s, s.load_caps[c], o->loads[l], false);
        if (o->scenario_mask & (1u << SC_CAPACITY))
            printf("\ncapacity sweep (a group measured above is shown again here)\n");
        for (int l = 0; l < s.nsweep && (o->scenario_mask & (1u << SC_CAPACITY)); l++)
            for (int c = 0; c < s.nsweep_caps; c++)
                print_group(&s, s.sweep_caps[c], s.sweep_loads[l], true);
        print_isolation(&s);
    }
    struct bench_row *rows = calloc((size_t)(s.n ? s.n : 1), sizeof *rows);
    if (!rows) {
        free(s.pts);
        return 1;
    }
    for (int i = 0; i < s.n; i++)
        fill_row(&s, &s.pts[i], &rows[i]);
    if (o->format != FORMAT_TABLE)
        bench_print_rows(stdout, o->format, rows, s.n);
    char path[512];
    FILE *f = bench_open_result(o, "policies.csv", path, sizeof path);
    if (f) {
        bench_print_rows(f, FORMAT_CSV, rows, s.n);
        fclose(f);
    }
    f = bench_open_result(o, "policies.json", path, sizeof path);
    if (f) {
        bench_print_rows(f, FORMAT_JSON, rows, s.n);
        fclose(f);
    }
    free(rows);
    if (o->format == FORMAT_TABLE) {
        derive(&s);
        printf("\nresults: %s/policies.csv and policies.json (every point)\n", o->out_dir);
    }
    write_plots(&s);
    /* Ringbus and the mutex queue count their drops: a mismatch is a bug.
     * A peer that does not behave as configured is reported, not fatal. */
    bool told[NSYS][POL_COUNT] = {{false}};
    for (int i = 0; i < s.n; i++) {
        const struct point *p = &s.pts[i];
        if (p->na || !p->nreps)
            continue;
        const char *b = s.burst[p->sys][p->cfg.policy];
        bool ours = p->sys <= 1;
        if (p->med.acct == ACCT_MISMATCH || p->med.acct == ACCT_FAILED ||
            p->med.acct == ACCT_LOST) {
            fprintf(stderr, "ringbus-bench: %s %s at load %g, capacity %u: accounting %s\n",
                    sys_names[p->sys], study_policy_names[p->cfg.policy], p->load, p->cfg.capacity,
                    acct_names[p->med.acct]);
            if (ours)
                rc = 1;
        }
        if (strcmp(b, burst_expect[p->cfg.policy]) && !told[p->sys][p->cfg.policy]) {
            fprintf(stderr, "ringbus-bench: %s set up for %s: the burst check %s (expected %s)\n",
                    sys_names[p->sys], study_policy_names[p->cfg.policy], b,
                    burst_expect[p->cfg.policy]);
            if (ours)
                rc = 1;
            told[p->sys][p->cfg.policy] = true;
        }
    }
    free(s.pts);
    return rc;
}
