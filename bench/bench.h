/*
 * bench.h - shared pieces of ringbus-bench: options, clocks, percentiles,
 * the machine header, RSS and allocation counting, output rows.
 */
#ifndef RBUS_BENCH_H
#define RBUS_BENCH_H

#include <ringbus.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum bench_format { FORMAT_TABLE, FORMAT_CSV, FORMAT_JSON };

struct bench_opts {
    const char *mode;
    int publishers;
    int subscribers;
    bool shape_set; /* --publishers or --subscribers given: throughput runs only that shape */
    uint32_t capacity;
    size_t payload;
    bool payload_set; /* --payload given: sweeps use only that size */
    uint64_t messages;
    bool messages_set;
    double duration_s; /* upper bound per run */
    uint64_t work_ns;  /* consumer work per message */
    int64_t spin_ns;
    uint32_t batch; /* throughput: messages per rbus_publish_batch (1 = rbus_publish) */
    int64_t block_timeout_ns;
    enum bench_format format;
    const char *out_dir;
    int reps;
    /* policies (the study; docs/benchmarks.md): */
    double loads[16]; /* offered load as a fraction of the service rate; 0 = unthrottled */
    int nloads;
    uint32_t caps[8]; /* --capacity LIST; caps[0] is `capacity` */
    int ncaps;
    int arrivals;           /* 0 Poisson, 1 paced, 2 bursty */
    uint32_t burst;         /* messages per burst (bursty) */
    bool exp_service;       /* service time exponential around work_ns, not fixed */
    unsigned policy_mask;   /* bit per enum study_policy */
    unsigned peer_mask;     /* bit per system: ringbus, mutex-queue, nng, zmq */
    unsigned scenario_mask; /* load, capacity, isolation; 0 = chosen from the other flags */
    bool quick, grid, duration_set, caps_set, loads_set, peers_set;
    double iso_load;      /* isolation: load on the fast subscribers */
    uint64_t iso_work_ns; /* isolation: a fast subscriber's (sleeping) service time */
};

uint64_t bench_now_ns(void);
void bench_spin_for(uint64_t ns);

/* Sorts v and returns the p-th percentile (0..100); 0 for an empty set. */
uint64_t bench_percentile(uint64_t *v, size_t n, double p);

/* Resident set size now, in KiB. */
long bench_rss_kib(void);

/* Prints cores, CPU model and kernel (prefixed with "# " in csv). */
void bench_print_machine(FILE *out, enum bench_format fmt);
/* Opens `name` for writing in the results folder (--out, default
 * "results"), creating the folder first; the full path goes to `path`. On
 * failure says why on stderr and returns NULL. */
FILE *bench_open_result(const struct bench_opts *o, const char *name, char *path, size_t len);

/* A progress line on stderr for long runs (only when stderr is a tty or
 * the run is longer than 2 s). */
void bench_progress(const char *what, double done_fraction, uint64_t started_ns);
/* Ends the progress line, if one was shown. */
void bench_progress_done(void);

/* A counting allocator for rbus_config.allocator: allocations made while a
 * run is in steady state are the figure "allocations per message". */
struct bench_alloc {
    rbus_allocator hooks;
    _Atomic uint64_t allocs;
    _Atomic uint64_t frees;
};
void bench_alloc_init(struct bench_alloc *a);

/* A result row: named columns of numbers and strings, printed as a table,
 * csv or json by the caller's chosen format. */
#define BENCH_MAX_COLS 64
struct bench_row {
    int ncols;
    const char *names[BENCH_MAX_COLS];
    char values[BENCH_MAX_COLS][96];
    bool numeric[BENCH_MAX_COLS];
};
void bench_row_str(struct bench_row *r, const char *name, const char *value);
void bench_row_num(struct bench_row *r, const char *name, const char *fmt, double value);
/* Prints a set of rows with a header (table: aligned columns; csv: one
 * header line; json: an array of objects). */
void bench_print_rows(FILE *out, enum bench_format fmt, const struct bench_row *rows, int n);

int bench_mode_policies(const struct bench_opts *o);
int bench_mode_throughput(const struct bench_opts *o); /* modes.c */
int bench_mode_latency(const struct bench_opts *o);    /* modes.c */
int bench_mode_peers(const struct bench_opts *o);      /* peers.c */

/* ------------------------------------------------ implementations */

/*
 * One lossless scenario: `publishers` threads each publish `messages`
 * payloads of `payload` bytes (publisher id and counter in the first 16
 * bytes); `subscribers` receivers each get every message (fan-out). Every
 * implementation must verify what it received (count, and per-publisher
 * order) and fail (return non-zero) on any loss, duplicate or reordering.
 */
struct scenario {
    int publishers;
    int subscribers;
    size_t payload;    /* >= 16 */
    uint64_t messages; /* per publisher */
    uint32_t capacity; /* per queue, same for every implementation */
    int64_t spin_ns;   /* ringbus receivers' spin (0 = default) */
    uint32_t batch;    /* ringbus publishers: > 1 = rbus_publish_batch of this many */
    bool coarse_time;  /* ringbus: RBUS_TIME_COARSE */
};

/* One paced one-way latency run: a message every `pace_ns`, `rounds` of
 * them, the timestamp taken by the bench just before each send and carried
 * in the payload; the receiver records now - stamp into lat[i]. */
struct latency_run {
    uint64_t pace_ns;
    uint64_t rounds;
    bool sleeping_receiver; /* ringbus: spin_ns < 0; peers: their blocking receive */
    uint32_t capacity;
};

struct bench_impl {
    const char *name;
    /* Published messages per second (all publishers together), or < 0 on a
     * failure (verification included). NULL = scenario not offered. */
    double (*throughput)(const struct scenario *sc);
    /* Fills lat[0..rounds) in ns; returns 0, or non-zero on failure. */
    int (*latency)(const struct latency_run *lr, uint64_t *lat);
    /* Says how the implementation waits, for the docs/table. */
    const char *wait_strategy;
};

extern const struct bench_impl bench_impl_ringbus;
extern const struct bench_impl bench_impl_ringbus_batch;
extern const struct bench_impl bench_impl_ringbus_coarse;

/* Payload helpers shared by every implementation. */
static inline void bench_stamp(unsigned char *buf, uint64_t publisher, uint64_t counter)
{
    __builtin_memcpy(buf, &publisher, 8);
    __builtin_memcpy(buf + 8, &counter, 8);
}

static inline void bench_unstamp(const unsigned char *buf, uint64_t *publisher, uint64_t *counter)
{
    __builtin_memcpy(publisher, buf, 8);
    __builtin_memcpy(counter, buf + 8, 8);
}

/* Per-receiver verification state: next expected counter per publisher. */
struct bench_verify {
    uint64_t next[64];
    uint64_t received;
    bool bad;
};
static inline void bench_verify_one(struct bench_verify *v, const unsigned char *buf)
{
    uint64_t p, c;
    bench_unstamp(buf, &p, &c);
    if (p >= 64 || c != v->next[p])
        v->bad = true;
    else
        v->next[p]++;
    v->received++;
}

#endif
