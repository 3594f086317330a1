/*
 * main.c - ringbus-bench: the command line. Modes live in their own files.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fputs("usage: ringbus-bench [MODE] [OPTIONS]\n"
          "\n"
          "modes:\n"
          "  policies      (default) which overflow policy and capacity for a load: one\n"
          "                publisher on a schedule against slow subscribers, per policy,\n"
          "                ringbus beside its peers; delivered/dropped/unsent, age of\n"
          "                delivered messages from their scheduled time, publisher stall,\n"
          "                a capacity sweep and an isolation scenario (docs/benchmarks.md)\n"
          "  throughput    ringbus lossless: 1->1, 1->4, 2->1, 2->4 x payloads 16 B..4 KiB\n"
          "                (--publishers/--subscribers: only that shape)\n"
          "  latency       ringbus one-way latency under a paced load (10 us, 100 us),\n"
          "                default wait strategy and sleeping receivers\n"
          "  peers         ringbus side by side with raw ck_ring, ZeroMQ inproc, GLib\n"
          "                GAsyncQueue and a mutex+condvar ring, in one run\n"
          "\n"
          "policies options:\n"
          "  --load LIST         offered loads, fractions of the service rate, and max for\n"
          "                      unthrottled (default 0.5,0.8,0.95,1,1.2,2,max)\n"
          "  --capacity LIST     capacities, powers of two (default 1024, and a sweep of\n"
          "                      64,1024,16384 at loads 0.95 and 1.2)\n"
          "  --grid              every load at every capacity\n"
          "  --policy LIST       block, block-timeout, drop-oldest, drop-newest, all\n"
          "                      (default block,drop-oldest,drop-newest)\n"
          "  --peers LIST        mutex-queue, nng, zmq, all or none (default all built in)\n"
          "  --scenario LIST     load, capacity, isolation (default: all three, or only\n"
          "                      load when --load or --capacity is given)\n"
          "  --arrivals A        poisson (default), paced, bursty\n"
          "  --burst N           messages a burst of bursty arrivals (default 64; alone, it\n"
          "                      means --arrivals bursty)\n"
          "  --service S         fixed (default) or exp: service time around --work-ns\n"
          "  --work-ns NS        subscriber service time per message (default 2000)\n"
          "  --duration S        seconds per point (default 0.5)\n"
          "  --reps N            repetitions of every point, interleaved (default 1)\n"
          "  --quick             fewer loads and capacities, 0.1 s per point (~20 s)\n"
          "  --iso-load X        isolation: load on the fast subscribers (default 0.5)\n"
          "  --iso-work-ns NS    isolation: a fast subscriber's sleep per message (default\n"
          "                      20000; the slow one sleeps ten times as long)\n"
          "  --block-timeout NS  the block-timeout policy's timeout, 1000..100000000\n"
          "                      (default 50000)\n"
          "  --payload BYTES     message size, 16..4096 (default 64)\n"
          "\n"
          "other options:\n"
          "  --publishers N      publisher threads (throughput, peers; default 1)\n"
          "  --batch N           throughput: publish with rbus_publish_batch, N messages a\n"
          "                      call (1..1024; default 1 = rbus_publish)\n"
          "  --subscribers N     subscriptions, one receiver thread each (default 1)\n"
          "  --capacity N        messages per subscription (default 1024)\n"
          "  --payload BYTES     payload size, >= 16 (default 64; throughput sweeps\n"
          "                      16..4096 unless given)\n"
          "  --messages N        publishes per publisher (default 200000)\n"
          "  --reps N            repetitions (throughput/latency 3, peers 5)\n"
          "  --spin-ns NS        receivers' spin before sleeping (0 = library default,\n"
          "                      < 0 = sleep at once; not for policies)\n"
          "  --format F          table (default), csv or json\n"
          "  --out DIR           results folder for csv, json and plots (default results)\n"
          "  --help              this text\n",
          out);
}

static int parse_policy(const char *s)
{
    static const char *names[] = {"block", "block-timeout", "drop-oldest", "drop-newest"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -2;
}

static bool parse_u64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] < '0' || s[0] > '9')
        return false; /* digits only: no sign, no leading space */
    *v = x;
    return true;
}

/* Splits a comma-separated list, calling one(item) for each; false on an
 * empty list or item, or when one() refuses an item. */
static bool each_item(const char *list, bool (*one)(const char *item, void *ctx), void *ctx)
{
    char buf[256];
    if (!*list || strlen(list) >= sizeof buf)
        return false;
    strcpy(buf, list);
    char *save = NULL;
    int n = 0;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save), n++)
        if (!one(t, ctx))
            return false;
    /* "a,,b" and a trailing comma are mistakes, not empty items to skip. */
    return n > 0 && !strstr(list, ",,") && list[strlen(list) - 1] != ',' && list[0] != ',';
}

static bool one_load(const char *t, void *ctx)
{
    struct bench_opts *o = ctx;
    if (o->nloads == 16)
        return false;
    if (!strcmp(t, "max") || !strcmp(t, "unthrottled")) {
        o->loads[o->nloads++] = 0;
        return true;
    }
    char *end;
    double v = strtod(t, &end);
    if (end == t || *end || !(v > 0) || v > 100)
        return false;
    o->loads[o->nloads++] = v;
    return true;
}

static bool one_cap(const char *t, void *ctx)
{
    struct bench_opts *o = ctx;
    uint64_t n;
    /* A power of two: ringbus rounds a capacity up to one, and every system
     * in the study must get the same capacity. */
    if (o->ncaps == 8 || !parse_u64(t, &n) || n < 2 || n > RBUS_MAX_CAPACITY || (n & (n - 1)))
        return false;
    o->caps[o->ncaps++] = (uint32_t)n;
    return true;
}

static bool one_policy(const char *t, void *ctx)
{
    struct bench_opts *o = ctx;
    int p = !strcmp(t, "all") ? 4 : parse_policy(t);
    if (p < 0)
        return false;
    o->policy_mask |= p == 4 ? 15u : 1u << p;
    return true;
}

static bool one_peer(const char *t, void *ctx)
{
    static const char *names[] = {"mutex-queue", "nng", "zmq"};
    struct bench_opts *o = ctx;
    if (!strcmp(t, "none"))
        return true;
    if (!strcmp(t, "all")) {
        o->peer_mask |= 15u;
        return true;
    }
    for (int i = 0; i < 3; i++)
        if (!strcmp(t, names[i])) {
            o->peer_mask |= 2u << i;
            return true;
        }
    return false;
}

static bool one_scenario(const char *t, void *ctx)
{
    static const char *names[] = {"load", "capacity", "isolation"};
    struct bench_opts *o = ctx;
    for (int i = 0; i < 3; i++)
        if (!strcmp(t, names[i])) {
            o->scenario_mask |= 1u << i;
            return true;
        }
    return false;
}

static int bad_args(const char *what, const char *v)
{
    if (v)
        fprintf(stderr, "ringbus-bench: bad value for %s: '%s'\n", what, v);
    else
        fprintf(stderr, "ringbus-bench: %s\n", what);
    usage(stderr);
    return 2;
}

int main(int argc, char **argv)
{
    struct bench_opts o = {
        .mode = "policies",
        .publishers = 1,
        .subscribers = 1,
        .capacity = 1024,
        .payload = 64,
        .messages = 200000,
        .duration_s = 0.5,
        .work_ns = 2000,
        .spin_ns = 0,
        .batch = 1,
        .block_timeout_ns = 50000,
        .format = FORMAT_TABLE,
        .out_dir = "results",
        .burst = 64,
        .iso_load = 0.5,
        .iso_work_ns = 20000,
    };
    int i = 1;
    if (argc > 1 && argv[1][0] != '-')
        o.mode = argv[i++];
    bool policies = !strcmp(o.mode, "policies");
    bool arrivals_set = false, burst_set = false;
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--quick") || !strcmp(a, "--grid")) {
            if (!policies)
                return bad_args("--quick and --grid are policies options", NULL);
            *(a[2] == 'q' ? &o.quick : &o.grid) = true; /* take no value */
            continue;
        }
        if (strncmp(a, "--", 2)) {
            fprintf(stderr, "ringbus-bench: unexpected argument %s\n", a);
            usage(stderr);
            return 2;
        }
        if (!v || !strncmp(v, "--", 2)) {
            fprintf(stderr, "ringbus-bench: %s needs a value (or is unknown)\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        bool ok = true;
        if (!strcmp(a, "--publishers"))
            ok = !policies && parse_u64(v, &n) && n >= 1 && n <= 64 &&
                 ((o.publishers = (int)n), (o.shape_set = true));
        else if (!strcmp(a, "--batch"))
            ok = !policies && parse_u64(v, &n) && n >= 1 && n <= 1024 && ((o.batch = (uint32_t)n), true);
        else if (!strcmp(a, "--subscribers"))
            ok = !policies && parse_u64(v, &n) && n >= 1 && n <= 64 &&
                 ((o.subscribers = (int)n), (o.shape_set = true));
        else if (!strcmp(a, "--capacity")) {
            o.ncaps = 0;
            ok = each_item(v, one_cap, &o) && (policies || o.ncaps == 1);
            o.capacity = o.caps[0];
            o.caps_set = true;
        } else if (!strcmp(a, "--payload"))
            ok = parse_u64(v, &n) && n >= 16 && n <= (policies ? 4096 : RBUS_MAX_PAYLOAD_LIMIT) &&
                 ((o.payload = n), (o.payload_set = true));
        else if (!strcmp(a, "--policy"))
            ok = policies && each_item(v, one_policy, &o);
        else if (!strcmp(a, "--peers"))
            ok = policies && (o.peers_set = true) && each_item(v, one_peer, &o);
        else if (!strcmp(a, "--scenario"))
            ok = policies && each_item(v, one_scenario, &o);
        else if (!strcmp(a, "--load")) {
            o.nloads = 0;
            ok = policies && each_item(v, one_load, &o);
            o.loads_set = true;
        } else if (!strcmp(a, "--arrivals")) {
            ok = policies && (!strcmp(v, "poisson")  ? (o.arrivals = 0, true)
                              : !strcmp(v, "paced")  ? (o.arrivals = 1, true)
                              : !strcmp(v, "bursty") ? (o.arrivals = 2, true)
                                                     : false);
            arrivals_set = true;
        } else if (!strcmp(a, "--burst")) {
            ok = policies && parse_u64(v, &n) && n >= 1 && n <= 1000000 &&
                 ((o.burst = (uint32_t)n), true);
            burst_set = true;
        } else if (!strcmp(a, "--service"))
            ok = policies && (!strcmp(v, "fixed") ? (o.exp_service = false, true)
                              : !strcmp(v, "exp") ? (o.exp_service = true, true)
                                                  : false);
        else if (!strcmp(a, "--iso-load")) {
            char *end;
            o.iso_load = strtod(v, &end);
            ok = policies && end != v && !*end && o.iso_load > 0 && o.iso_load <= 100;
        } else if (!strcmp(a, "--iso-work-ns"))
            ok = policies && parse_u64(v, &n) && n >= 1000 && n <= 100000000 &&
                 ((o.iso_work_ns = n), true);
        else if (!strcmp(a, "--messages") && policies)
            return bad_args("policies runs by time, not by count: --duration S a point", NULL);
        else if (!strcmp(a, "--messages"))
            ok = !policies && parse_u64(v, &n) && n >= 1 &&
                 ((o.messages = n), (o.messages_set = true));
        else if (!strcmp(a, "--reps"))
            ok = parse_u64(v, &n) && n >= 1 && n <= 15 && (o.reps = (int)n);
        else if (!strcmp(a, "--duration")) {
            char *end;
            o.duration_s = strtod(v, &end);
            ok = policies && end != v && !*end && o.duration_s >= 0.01 && o.duration_s <= 3600;
            o.duration_set = true;
        } else if (!strcmp(a, "--work-ns"))
            ok = parse_u64(v, &n) && n <= 100000000 && ((o.work_ns = n), true) &&
                 (!policies || n >= 100);
        else if (!strcmp(a, "--spin-ns")) {
            char *end;
            errno = 0;
            o.spin_ns = strtoll(v, &end, 10);
            ok = !policies && !errno && end != v && !*end && o.spin_ns <= 1000000000;
        } else if (!strcmp(a, "--block-timeout"))
            /* At most 100 ms: the policy check waits out up to 128 of them. */
            ok = parse_u64(v, &n) && n >= 1000 && n <= 100000000 &&
                 ((o.block_timeout_ns = (int64_t)n), true);
        else if (!strcmp(a, "--format"))
            ok = !strcmp(v, "table")  ? (o.format = FORMAT_TABLE, true)
                 : !strcmp(v, "csv")  ? (o.format = FORMAT_CSV, true)
                 : !strcmp(v, "json") ? (o.format = FORMAT_JSON, true)
                                      : false;
        else if (!strcmp(a, "--out"))
            o.out_dir = v;
        else {
            fprintf(stderr, "ringbus-bench: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (!ok)
            return bad_args(a, v);
    }
    if (policies) {
        static const double loads[] = {0.5, 0.8, 0.95, 1.0, 1.2, 2.0, 0};
        static const double quick[] = {0.5, 0.95, 1.2, 0};
        if (!o.loads_set) {
            const double *l = o.quick ? quick : loads;
            o.nloads = o.quick ? 4 : 7;
            memcpy(o.loads, l, (size_t)o.nloads * sizeof *l);
        }
        if (!o.caps_set) {
            o.caps[0] = 1024;
            o.ncaps = 1;
        }
        if (!o.policy_mask)
            o.policy_mask = 1u << 0 | 1u << 2 | 1u << 3;
        o.peer_mask |= 1u; /* ringbus is always studied */
        if (!o.peers_set)
            o.peer_mask = 15u;
        if (!o.scenario_mask)
            o.scenario_mask = o.loads_set || o.caps_set ? 1u : 7u;
        if (o.quick && !o.duration_set)
            o.duration_s = 0.1;
        if (burst_set && !arrivals_set)
            o.arrivals = 2; /* --burst N alone means bursty arrivals */
        else if (burst_set && o.arrivals != 2)
            return bad_args("--burst goes with --arrivals bursty", NULL);
        /* Every throttled point must schedule a few messages at least. */
        for (int k = 0; k < o.nloads; k++)
            if (o.loads[k] > 0 && (double)o.work_ns / o.loads[k] > o.duration_s * 1e8)
                return bad_args("a load that schedules fewer than 10 messages a point: raise "
                                "--load, --duration, or lower --work-ns",
                                NULL);
        if (strchr(o.out_dir, '\''))
            return bad_args("--out with a quote in it (the plot script quotes paths)", NULL);
        return bench_mode_policies(&o);
    }
    if (!strcmp(o.mode, "throughput"))
        return bench_mode_throughput(&o);
    if (!strcmp(o.mode, "latency"))
        return bench_mode_latency(&o);
    if (!strcmp(o.mode, "peers"))
        return bench_mode_peers(&o);
    fprintf(stderr, "ringbus-bench: unknown mode %s\n", o.mode);
    usage(stderr);
    return 2;
}
