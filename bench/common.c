/*
 * common.c - clocks, percentiles, machine header, RSS, progress, allocation
 * counting and result rows for ringbus-bench.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_spin_for(uint64_t ns)
{
    if (!ns)
        return;
    uint64_t end = bench_now_ns() + ns;
    while (bench_now_ns() < end)
        ;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

uint64_t bench_percentile(uint64_t *v, size_t n, double p)
{
    if (!n)
        return 0;
    qsort(v, n, sizeof *v, cmp_u64);
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

long bench_rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

void bench_print_machine(FILE *out, enum bench_format fmt)
{
    char model[128] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');
                if (c) {
                    snprintf(model, sizeof model, "%s", c + 2);
                    model[strcspn(model, "\n")] = 0;
                }
                break;
            }
        }
        fclose(f);
    }
    struct utsname u;
    uname(&u);
    const char *prefix = fmt == FORMAT_TABLE ? "" : "# ";
    if (fmt == FORMAT_JSON)
        return; /* json carries no comments; the caller embeds the machine */
    fprintf(out, "%sringbus %s, %ld cores, %s, %s %s\n", prefix, rbus_version(),
            sysconf(_SC_NPROCESSORS_ONLN), model, u.sysname, u.release);
}

static bool progress_shown;

void bench_progress(const char *what, double done, uint64_t started_ns)
{
    static uint64_t last;
    uint64_t now = bench_now_ns();
    if (now - started_ns < 2000000000u || now - last < 500000000u)
        return;
    last = now;
    progress_shown = true;
    fprintf(stderr, "\r%s: %3.0f%% (%.1f s)   ", what, done * 100.0,
            (double)(now - started_ns) / 1e9);
}

void bench_progress_done(void)
{
    if (progress_shown)
        fputc('\n', stderr);
    progress_shown = false;
}

static void *count_alloc(size_t size, void *arg)
{
    struct bench_alloc *a = arg;
    atomic_fetch_add_explicit(&a->allocs, 1, memory_order_relaxed);
    return malloc(size);
}

static void count_free(void *ptr, void *arg)
{
    struct bench_alloc *a = arg;
    atomic_fetch_add_explicit(&a->frees, 1, memory_order_relaxed);
    free(ptr);
}

void bench_alloc_init(struct bench_alloc *a)
{
    a->hooks.alloc = count_alloc;
    a->hooks.free = count_free;
    a->hooks.arg = a;
    atomic_init(&a->allocs, 0);
    atomic_init(&a->frees, 0);
}

static int row_add(struct bench_row *r, const char *name, bool numeric)
{
    if (r->ncols >= BENCH_MAX_COLS)
        return -1;
    r->names[r->ncols] = name;
    r->numeric[r->ncols] = numeric;
    return r->ncols++;
}

void bench_row_str(struct bench_row *r, const char *name, const char *value)
{
    int i = row_add(r, name, false);
    if (i >= 0)
        snprintf(r->values[i], sizeof r->values[i], "%s", value);
}

void bench_row_num(struct bench_row *r, const char *name, const char *fmt, double value)
{
    int i = row_add(r, name, true);
    if (i >= 0)
        snprintf(r->values[i], sizeof r->values[i], fmt, value);
}

void bench_print_rows(FILE *out, enum bench_format fmt, const struct bench_row *rows, int n)
{
    if (n == 0)
        return;
    const struct bench_row *h = &rows[0];
    if (fmt == FORMAT_CSV) {
        for (int c = 0; c < h->ncols; c++)
            fprintf(out, "%s%s", c ? "," : "", h->names[c]);
        fputc('\n', out);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < rows[i].ncols; c++) {
                const char *v = rows[i].values[c];
                /* A text with a comma is quoted (RFC 4180); it has no quotes. */
                bool quote = !rows[i].numeric[c] && strchr(v, ',');
                fprintf(out, "%s%s%s%s%s", c ? "," : "", quote ? "\"" : "", v, quote ? "\"" : "",
                        c + 1 == rows[i].ncols ? "\n" : "");
            }
        return;
    }
    if (fmt == FORMAT_JSON) {
        fputs("[\n", out);
        for (int i = 0; i < n; i++) {
            fputs("  {", out);
            for (int c = 0; c < rows[i].ncols; c++)
                fprintf(out, rows[i].numeric[c] ? "%s\"%s\": %s" : "%s\"%s\": \"%s\"",
                        c ? ", " : "", rows[i].names[c], rows[i].values[c]);
            fprintf(out, "}%s\n", i + 1 < n ? "," : "");
        }
        fputs("]\n", out);
        return;
    }
    int width[BENCH_MAX_COLS];
    for (int c = 0; c < h->ncols; c++) {
        width[c] = (int)strlen(h->names[c]);
        for (int i = 0; i < n; i++) {
            int w = (int)strlen(rows[i].values[c]);
            if (w > width[c])
                width[c] = w;
        }
    }
    for (int c = 0; c < h->ncols; c++)
        fprintf(out, "%s%*s", c ? "  " : "", c ? width[c] : -width[c], h->names[c]);
    fputc('\n', out);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < rows[i].ncols; c++)
            fprintf(out, "%s%*s%s", c ? "  " : "", c ? width[c] : -width[c], rows[i].values[c],
                    c + 1 == rows[i].ncols ? "\n" : "");
}

/* mkdir -p: every missing folder on the way, like the shell's. */
static int make_dirs(const char *dir)
{
    char buf[512];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        bool end = *p == '\0';
        if (*p == '/' || end) {
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return -1;
            if (end)
                return 0;
            *p = '/';
        }
    }
}

FILE *bench_open_result(const struct bench_opts *o, const char *name, char *path, size_t len)
{
    const char *dir = o->out_dir ? o->out_dir : "results";
    snprintf(path, len, "%s/%s", dir, name);
    if (make_dirs(dir) != 0) {
        fprintf(stderr, "ringbus-bench: cannot create %s: %s\n", dir, strerror(errno));
        return NULL;
    }
    FILE *f = fopen(path, "w");
    if (!f)
        fprintf(stderr, "ringbus-bench: cannot write %s: %s\n", path, strerror(errno));
    return f;
}
