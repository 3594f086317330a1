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
    uint32_t capacity;
    size_t payload;
    int policy; /* -1 = every policy */
    uint64_t messages;
    double duration_s; /* upper bound per run */
    uint64_t work_ns;  /* consumer work per message */
    int64_t spin_ns;
    int64_t block_timeout_ns;
    enum bench_format format;
    const char *out_dir;
    int reps;
};

uint64_t bench_now_ns(void);
void bench_spin_for(uint64_t ns);

/* Sorts v and returns the p-th percentile (0..100); 0 for an empty set. */
uint64_t bench_percentile(uint64_t *v, size_t n, double p);

/* Resident set size now, in KiB. */
long bench_rss_kib(void);

/* Prints cores, CPU model and kernel (prefixed with "# " in csv). */
void bench_print_machine(FILE *out, enum bench_format fmt);

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
#define BENCH_MAX_COLS 24
struct bench_row {
    int ncols;
    const char *names[BENCH_MAX_COLS];
    char values[BENCH_MAX_COLS][48];
    bool numeric[BENCH_MAX_COLS];
};
void bench_row_str(struct bench_row *r, const char *name, const char *value);
void bench_row_num(struct bench_row *r, const char *name, const char *fmt, double value);
/* Prints a set of rows with a header (table: aligned columns; csv: one
 * header line; json: an array of objects). */
void bench_print_rows(FILE *out, enum bench_format fmt, const struct bench_row *rows, int n);

int bench_mode_policies(const struct bench_opts *o);

#endif
