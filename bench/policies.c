/*
 * policies.c - `ringbus-bench policies`: fast publishers against slow
 * subscribers, once per overflow policy on the same workload, with the
 * figures a user compares policies by, the accounting check, and a plot.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct policy {
    const char *label;
    rbus_overflow overflow;
    int64_t block_timeout_ns;
};

struct receiver {
    rbus_sub *sub;
    uint64_t work_ns;
    uint64_t *ages;
    size_t nages, cap;
    uint64_t last_seq, max_gap;
};

struct publisher {
    rbus_topic *topic;
    const struct bench_opts *o;
    uint64_t quota;
    uint64_t attempts;
    uint64_t deadline_ns;
    /* publisher 0 samples memory */
    bool sampler;
    struct bench_alloc *alloc;
    uint64_t warm_at;
    uint64_t allocs_at_warm, allocs_at_end;
    long rss_at_warm, rss_peak;
    uint64_t started_ns;
    double total_share;
};

static void *receive_loop(void *arg)
{
    struct receiver *r = arg;
    for (;;) {
        rbus_msg *m;
        int rc = rbus_recv(r->sub, &m, -1);
        if (rc == -ESHUTDOWN)
            break;
        if (rc != 0) {
            fprintf(stderr, "ringbus-bench: recv: %s\n", rbus_strerror(rc));
            exit(1);
        }
        uint64_t now = bench_now_ns();
        if (r->nages < r->cap)
            r->ages[r->nages++] = now - rbus_msg_time_ns(m);
        uint64_t seq = rbus_msg_seq(m);
        if (r->last_seq && seq > r->last_seq && seq - r->last_seq > r->max_gap)
            r->max_gap = seq - r->last_seq;
        r->last_seq = seq;
        rbus_msg_release(m);
        bench_spin_for(r->work_ns);
    }
    return NULL;
}

static void *publish_loop(void *arg)
{
    struct publisher *p = arg;
    char *payload = calloc(1, p->o->payload ? p->o->payload : 1);
    if (!payload)
        exit(1);
    for (uint64_t i = 0; i < p->quota; i++) {
        if ((i & 1023) == 0 && bench_now_ns() > p->deadline_ns)
            break;
        if (p->o->payload >= sizeof i)
            memcpy(payload, &i, sizeof i);
        int rc = rbus_publish(p->topic, payload, p->o->payload);
        p->attempts++;
        if (rc != 0 && rc != -ESHUTDOWN) {
            fprintf(stderr, "ringbus-bench: publish: %s\n", rbus_strerror(rc));
            exit(1);
        }
        if (p->sampler && (i & 8191) == 0) {
            long rss = bench_rss_kib();
            if (rss > p->rss_peak)
                p->rss_peak = rss;
            if (i == p->warm_at) {
                p->rss_at_warm = rss;
                p->allocs_at_warm = atomic_load(&p->alloc->allocs);
            }
            bench_progress("policies", p->total_share + (double)i / (double)p->quota / 4.0,
                           p->started_ns);
        }
    }
    if (p->sampler) {
        p->allocs_at_end = atomic_load(&p->alloc->allocs);
        long rss = bench_rss_kib();
        if (rss > p->rss_peak)
            p->rss_peak = rss;
    }
    free(payload);
    return NULL;
}

static int run_policy(const struct bench_opts *o, const struct policy *pol, int index,
                      uint64_t started_ns, struct bench_row *row)
{
    struct bench_alloc alloc;
    bench_alloc_init(&alloc);
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &alloc.hooks;
    if (o->payload > cfg.max_payload)
        cfg.max_payload = (uint32_t)o->payload;
    rbus *bus;
    rbus_topic *topic;
    int rc = rbus_create(&bus, &cfg);
    if (!rc)
        rc = rbus_topic_open(bus, "bench.policies", &topic);
    if (rc) {
        fprintf(stderr, "ringbus-bench: setup: %s\n", rbus_strerror(rc));
        return 1;
    }
    int ns = o->subscribers;
    struct receiver *rx = calloc((size_t)ns, sizeof *rx);
    rbus_sub **subs = calloc((size_t)ns, sizeof *subs);
    pthread_t *rth = calloc((size_t)ns, sizeof *rth);
    for (int i = 0; i < ns; i++) {
        rbus_sub_opts so;
        rbus_sub_opts_init(&so);
        so.capacity = o->capacity;
        so.overflow = pol->overflow;
        so.block_timeout_ns = pol->block_timeout_ns;
        so.spin_ns = o->spin_ns;
        so.name = pol->label;
        if ((rc = rbus_subscribe(bus, "bench.>", &so, &subs[i])) != 0) {
            fprintf(stderr, "ringbus-bench: subscribe: %s\n", rbus_strerror(rc));
            return 1;
        }
        rx[i] = (struct receiver){.sub = subs[i], .work_ns = o->work_ns, .cap = o->messages};
        rx[i].ages = malloc(o->messages * sizeof *rx[i].ages);
        if (!rx[i].ages)
            return 1;
        /* Touch it now, so the run's RSS shows the bus, not this array
         * (non-zero: a zero fill may become calloc and touch nothing). */
        memset(rx[i].ages, 0xff, o->messages * sizeof *rx[i].ages);
        pthread_create(&rth[i], NULL, receive_loop, &rx[i]);
    }

    int np = o->publishers;
    struct publisher *pub = calloc((size_t)np, sizeof *pub);
    pthread_t *pth = calloc((size_t)np, sizeof *pth);
    uint64_t t0 = bench_now_ns();
    uint64_t deadline = t0 + (uint64_t)(o->duration_s * 1e9);
    for (int i = 0; i < np; i++) {
        pub[i] = (struct publisher){.topic = topic, .o = o, .deadline_ns = deadline,
                                    .quota = o->messages / (uint64_t)np +
                                             ((uint64_t)i < o->messages % (uint64_t)np),
                                    .sampler = i == 0, .alloc = &alloc,
                                    .started_ns = started_ns,
                                    .total_share = (double)index / 4.0};
        /* Warm-up: the first tenth of publisher 0's quota, rounded to a
         * sampling point. */
        pub[i].warm_at = (pub[i].quota / 10) & ~(uint64_t)8191;
        pthread_create(&pth[i], NULL, publish_loop, &pub[i]);
    }
    uint64_t attempts = 0;
    for (int i = 0; i < np; i++) {
        pthread_join(pth[i], NULL);
        attempts += pub[i].attempts;
    }
    uint64_t t1 = bench_now_ns();
    rbus_close(bus); /* receivers drain what is queued, then stop */
    for (int i = 0; i < ns; i++)
        pthread_join(rth[i], NULL);
    uint64_t t2 = bench_now_ns();

    uint64_t offered = 0, received = 0, dn = 0, dol = 0, dt = 0, dc = 0, gap = 0, depth = 0;
    uint32_t peak = 0;
    bool exact = true;
    size_t nages = 0;
    for (int i = 0; i < ns; i++) {
        rbus_sub_stats st;
        rbus_sub_stats_get(subs[i], &st);
        uint64_t drops = st.dropped_newest + st.dropped_oldest + st.dropped_timeout +
                         st.dropped_closed;
        if (st.offered != st.received + st.depth + drops || st.offered != attempts ||
            st.received != rx[i].nages)
            exact = false;
        offered += st.offered;
        received += st.received;
        depth += st.depth;
        dn += st.dropped_newest;
        dol += st.dropped_oldest;
        dt += st.dropped_timeout;
        dc += st.dropped_closed;
        if (st.high_water > peak)
            peak = st.high_water;
        if (rx[i].max_gap > gap)
            gap = rx[i].max_gap;
        nages += rx[i].nages;
    }
    uint64_t *ages = malloc((nages ? nages : 1) * sizeof *ages);
    size_t k = 0;
    for (int i = 0; i < ns; i++) {
        memcpy(ages + k, rx[i].ages, rx[i].nages * sizeof *ages);
        k += rx[i].nages;
    }
    uint64_t steady = pub[0].quota > pub[0].warm_at ? pub[0].attempts - pub[0].warm_at : 0;
    double allocs_per_msg =
        steady ? (double)(pub[0].allocs_at_end - pub[0].allocs_at_warm) / (double)steady : 0;
    uint64_t drops = dn + dol + dt + dc;

    bench_row_str(row, "policy", pol->label);
    bench_row_num(row, "attempts_per_s", "%.0f", (double)attempts * 1e9 / (double)(t1 - t0));
    bench_row_num(row, "delivered_per_s", "%.0f", (double)received * 1e9 / (double)(t2 - t0));
    bench_row_num(row, "dropped_newest", "%.0f", (double)dn);
    bench_row_num(row, "dropped_oldest", "%.0f", (double)dol);
    bench_row_num(row, "dropped_timeout", "%.0f", (double)dt);
    bench_row_num(row, "drop_pct", "%.2f", offered ? 100.0 * (double)drops / (double)offered : 0);
    bench_row_num(row, "age_p50_us", "%.1f", (double)bench_percentile(ages, nages, 50) / 1e3);
    bench_row_num(row, "age_p99_us", "%.1f", (double)bench_percentile(ages, nages, 99) / 1e3);
    bench_row_num(row, "age_p999_us", "%.1f", (double)bench_percentile(ages, nages, 99.9) / 1e3);
    bench_row_num(row, "max_seq_gap", "%.0f", (double)gap);
    bench_row_num(row, "peak_depth", "%.0f", (double)peak);
    bench_row_num(row, "peak_rss_mib", "%.1f", (double)pub[0].rss_peak / 1024.0);
    bench_row_num(row, "rss_growth_kib", "%.0f",
                  (double)(pub[0].rss_peak - (pub[0].rss_at_warm ? pub[0].rss_at_warm
                                                                 : pub[0].rss_peak)));
    bench_row_num(row, "allocs_per_msg", "%.4f", allocs_per_msg);
    bench_row_str(row, "accounting", exact ? "exact" : "MISMATCH");

    free(ages);
    for (int i = 0; i < ns; i++)
        free(rx[i].ages);
    free(rx);
    free(rth);
    free(pub);
    free(pth);
    rbus_destroy(bus);
    free(subs);
    if (!exact)
        fprintf(stderr,
                "ringbus-bench: ACCOUNTING MISMATCH for %s: offered %llu, received %llu, "
                "depth %llu, drops %llu, attempts %llu\n",
                pol->label, (unsigned long long)offered, (unsigned long long)received,
                (unsigned long long)depth, (unsigned long long)drops,
                (unsigned long long)attempts);
    return exact ? 0 : 1;
}

static void write_plot(const struct bench_opts *o, const struct bench_row *rows, int n)
{
    if (!o->out_dir)
        return;
    char path[512];
    FILE *f = bench_open_result(o, "policies.csv", path, sizeof path);
    if (!f)
        return;
    bench_print_machine(f, FORMAT_CSV);
    bench_print_rows(f, FORMAT_CSV, rows, n);
    fclose(f);
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        printf("results: %s (gnuplot is not installed, so no plot; "
               "apt-get install gnuplot-nox)\n",
               path);
        return;
    }
    f = bench_open_result(o, "policies.gp", path, sizeof path);
    if (!f)
        return;
    /* Columns: 1 policy, 3 delivered/s, 7 drop %, 9 p99 age (us). */
    fprintf(f,
            "set datafile separator ','\n"
            "set terminal pngcairo size 1200,420 noenhanced font ',10'\n"
            "set output '%s/policies.png'\n"
            "set multiplot layout 1,3 title 'ringbus-bench policies: %d publisher(s), %d "
            "subscriber(s), capacity %u, %zu B, %llu ns work per message'\n"
            "set style fill solid 0.6\nset boxwidth 0.6\nset grid ytics\nset yrange [0:*]\n"
            "set xtics rotate by -20\n"
            "set title 'delivered per second'\n"
            "plot '%s/policies.csv' every ::1 using 0:3:xtic(1) with boxes notitle\n"
            "set title 'drops (%% of offered)'\n"
            "plot '%s/policies.csv' every ::1 using 0:7:xtic(1) with boxes notitle\n"
            "set title 'p99 age of delivered messages (us)'\n"
            "plot '%s/policies.csv' every ::1 using 0:9:xtic(1) with boxes notitle\n"
            "unset multiplot\n",
            o->out_dir, o->publishers, o->subscribers, o->capacity, o->payload,
            (unsigned long long)o->work_ns, o->out_dir, o->out_dir, o->out_dir);
    fclose(f);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "gnuplot '%s/policies.gp'", o->out_dir);
    if (system(cmd) == 0)
        printf("results: %s/policies.csv, plot %s/policies.png\n", o->out_dir, o->out_dir);
    else
        printf("results: %s/policies.csv (gnuplot failed; script %s)\n", o->out_dir, path);
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/*
 * The comparison with ZeroMQ uses publish attempts/s, which swing by 2x
 * between single runs on a shared machine. So the drop-oldest, drop-newest
 * and ZeroMQ PUB runs are repeated, interleaved (the table's own runs are
 * the first repetition), every repetition goes to overload.csv, and the
 * reported ratio is the median of the per-repetition ratios.
 */
static int overload_reps(const struct bench_opts *o, const struct policy *oldest,
                         const struct policy *newest, const struct bench_row *rows, int n)
{
    enum { MAXR = 15 };
    int reps = o->reps > 0 ? o->reps : 5;
    double v[3][MAXR], ratio[2][MAXR];
    const char *names[3] = {"drop-oldest", "drop-newest", "zmq-pub"};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < n; i++)
            if (!strcmp(rows[i].values[0], names[k]))
                v[k][0] = strtod(rows[i].values[1], NULL);
    uint64_t started = bench_now_ns();
    for (int r = 1; r < reps; r++) {
        struct bench_row row[3];
        memset(row, 0, sizeof row);
        if (run_policy(o, oldest, 2, started, &row[0]) != 0 ||
            run_policy(o, newest, 3, started, &row[1]) != 0 ||
            bench_zmq_overload(o, &row[2]) != 0)
            return 1;
        for (int k = 0; k < 3; k++)
            v[k][r] = strtod(row[k].values[1], NULL);
    }
    bench_progress_done();
    /* The folder may not exist yet: the table's plot is written after. */
    char path[512];
    FILE *f = bench_open_result(o, "overload.csv", path, sizeof path);
    if (f)
        fprintf(f, "rep,drop_oldest_attempts_per_s,drop_newest_attempts_per_s,"
                   "zmq_pub_attempts_per_s\n");
    for (int r = 0; r < reps; r++) {
        ratio[0][r] = v[0][r] / v[2][r];
        ratio[1][r] = v[1][r] / v[2][r];
        if (f)
            fprintf(f, "%d,%.0f,%.0f,%.0f\n", r + 1, v[0][r], v[1][r], v[2][r]);
    }
    if (f)
        fclose(f);
    printf("overload, %d interleaved repetitions (every one in %s):\n", reps,
           f ? path : "no file: see the error above");
    for (int k = 0; k < 2; k++) {
        double med_v, med_z;
        double tmp[MAXR];
        memcpy(tmp, v[k], sizeof tmp);
        qsort(tmp, (size_t)reps, sizeof tmp[0], cmp_dbl);
        med_v = tmp[reps / 2];
        memcpy(tmp, v[2], sizeof tmp);
        qsort(tmp, (size_t)reps, sizeof tmp[0], cmp_dbl);
        med_z = tmp[reps / 2];
        qsort(ratio[k], (size_t)reps, sizeof ratio[k][0], cmp_dbl);
        double med = ratio[k][reps / 2];
        printf("  %s publish attempts/s = %.2fx ZeroMQ PUB's (median of per-run ratios; "
               "min %.2f, max %.2f; medians %.1f vs %.1f M/s)\n",
               names[k], med, ratio[k][0], ratio[k][reps - 1], med_v / 1e6, med_z / 1e6);
    }
    return 0;
}

int bench_mode_policies(const struct bench_opts *o)
{
    static const struct policy all[] = {
        {"block", RBUS_BLOCK, 0},
        {"block-timeout", RBUS_BLOCK, 0}, /* timeout filled in below */
        {"drop-oldest", RBUS_DROP_OLDEST, 0},
        {"drop-newest", RBUS_DROP_NEWEST, 0},
    };
    bench_print_machine(stdout, o->format);
    if (o->format == FORMAT_TABLE)
        printf("policies: %d publisher(s) -> %d subscriber(s) per policy, %llu messages of "
               "%zu B, capacity %u, %llu ns of work per message, spin_ns %lld, "
               "block timeout %lld ns\n",
               o->publishers, o->subscribers, (unsigned long long)o->messages, o->payload,
               o->capacity, (unsigned long long)o->work_ns, (long long)o->spin_ns,
               (long long)o->block_timeout_ns);
    struct bench_row rows[5];
    memset(rows, 0, sizeof rows);
    int n = 0, rc = 0;
    uint64_t started = bench_now_ns();
    for (int i = 0; i < 4; i++) {
        if (o->policy >= 0 && o->policy != i)
            continue;
        struct policy p = all[i];
        if (i == 1)
            p.block_timeout_ns = o->block_timeout_ns;
        rc |= run_policy(o, &p, i, started, &rows[n++]);
    }
    /* The same overload on ZeroMQ PUB/SUB, whose only answer to a slow
     * subscriber is dropping at its HWM: compare with drop-newest. */
    int zrc = o->policy < 0 && !o->no_zmq ? bench_zmq_overload(o, &rows[n]) : -1;
    if (zrc == 0)
        n++;
    else if (zrc > 0)
        rc = 1;
    bench_progress_done();
    bench_print_rows(stdout, o->format, rows, n);
    if (o->format == FORMAT_TABLE && zrc == 0) {
        rc |= overload_reps(o, &all[2], &all[3], rows, n);
    } else if (o->format == FORMAT_TABLE && o->policy < 0 && !o->no_zmq) {
        printf("overload: built without ZeroMQ, no zmq-pub row\n");
    }
    if (o->format == FORMAT_TABLE)
        write_plot(o, rows, n);
    return rc;
}
