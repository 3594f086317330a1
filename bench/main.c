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
          "  policies      (default) fast publishers against slow subscribers, once per\n"
          "                overflow policy: attempts/s, delivered/s, drops by cause, age of\n"
          "                delivered messages, sequence gaps, peak depth, RSS, allocations\n"
          "                per message, and the accounting check (exit 1 if it fails)\n"
          "  throughput    ringbus lossless: 1->1, 1->4, 2->1, 2->4 x payloads 16 B..4 KiB\n"
          "                (--publishers/--subscribers: only that shape)\n"
          "  latency       ringbus one-way latency under a paced load (10 us, 100 us),\n"
          "                default wait strategy and sleeping receivers\n"
          "  peers         ringbus side by side with raw ck_ring, ZeroMQ inproc, GLib\n"
          "                GAsyncQueue and a mutex+condvar ring, in one run\n"
          "\n"
          "options:\n"
          "  --publishers N      publisher threads (default 1)\n"
          "  --subscribers N     subscriptions, one receiver thread each (default 1)\n"
          "  --capacity N        messages per subscription (default 1024)\n"
          "  --payload BYTES     payload size, >= 16 (default 64; throughput sweeps\n"
          "                      16..4096 unless given)\n"
          "  --policy P          only one policy: block, block-timeout, drop-oldest,\n"
          "                      drop-newest (default: all four)\n"
          "  --messages N        publishes per run (policies, default 1000000) or per\n"
          "                      publisher (throughput/peers, default 200000)\n"
          "  --reps N            repetitions (throughput/latency 3, peers 5)\n"
          "  --duration S        upper bound of each run in seconds (default 10)\n"
          "  --work-ns NS        subscriber work per message (default 2000)\n"
          "  --spin-ns NS        receivers' spin before sleeping (0 = library default,\n"
          "                      < 0 = sleep at once)\n"
          "  --block-timeout NS  the block-timeout policy's timeout (default 50000)\n"
          "  --format F          table (default), csv or json\n"
          "  --no-zmq            policies: leave out the ZeroMQ PUB comparison row\n"
          "  --out DIR           results folder for csv and plot (default results)\n"
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
    if (errno || end == s || *end || s[0] == '-')
        return false;
    *v = x;
    return true;
}

int main(int argc, char **argv)
{
    struct bench_opts o = {
        .mode = "policies",
        .publishers = 1,
        .subscribers = 1,
        .capacity = 1024,
        .payload = 64,
        .policy = -1,
        .messages = 1000000,
        .duration_s = 10,
        .work_ns = 2000,
        .spin_ns = 0,
        .block_timeout_ns = 50000,
        .format = FORMAT_TABLE,
        .out_dir = "results",
    };
    int i = 1;
    if (argc > 1 && argv[1][0] != '-')
        o.mode = argv[i++];
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--no-zmq")) {
            o.no_zmq = true; /* takes no value */
            continue;
        }
        if (!v) {
            fprintf(stderr, "ringbus-bench: %s needs a value (or unknown option)\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        bool ok = true;
        if (!strcmp(a, "--publishers"))
            ok = parse_u64(v, &n) && n >= 1 && n <= 64 &&
                 ((o.publishers = (int)n), (o.shape_set = true));
        else if (!strcmp(a, "--subscribers"))
            ok = parse_u64(v, &n) && n >= 1 && n <= 64 &&
                 ((o.subscribers = (int)n), (o.shape_set = true));
        else if (!strcmp(a, "--capacity"))
            ok = parse_u64(v, &n) && n >= 1 && n <= RBUS_MAX_CAPACITY && (o.capacity = (uint32_t)n);
        else if (!strcmp(a, "--payload"))
            ok = parse_u64(v, &n) && n >= 16 && n <= RBUS_MAX_PAYLOAD_LIMIT &&
                 ((o.payload = n), (o.payload_set = true));
        else if (!strcmp(a, "--policy"))
            ok = (o.policy = parse_policy(v)) >= 0;
        else if (!strcmp(a, "--messages"))
            ok = parse_u64(v, &n) && n >= 1 && ((o.messages = n), (o.messages_set = true));
        else if (!strcmp(a, "--reps"))
            ok = parse_u64(v, &n) && n >= 1 && n <= 15 && (o.reps = (int)n);
        else if (!strcmp(a, "--duration"))
            ok = (o.duration_s = strtod(v, NULL)) > 0;
        else if (!strcmp(a, "--work-ns"))
            ok = parse_u64(v, &n) && ((o.work_ns = n), true);
        else if (!strcmp(a, "--spin-ns"))
            o.spin_ns = strtoll(v, NULL, 10);
        else if (!strcmp(a, "--block-timeout"))
            ok = parse_u64(v, &n) && n >= 1 && ((o.block_timeout_ns = (int64_t)n), true);
        else if (!strcmp(a, "--format"))
            ok = !strcmp(v, "table") ? (o.format = FORMAT_TABLE, true)
                 : !strcmp(v, "csv") ? (o.format = FORMAT_CSV, true)
                 : !strcmp(v, "json") ? (o.format = FORMAT_JSON, true)
                                      : false;
        else if (!strcmp(a, "--out"))
            o.out_dir = v;
        else {
            fprintf(stderr, "ringbus-bench: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "ringbus-bench: bad value for %s: %s\n", a, v);
            return 2;
        }
    }
    if (strcmp(o.mode, "policies") && !o.messages_set)
        o.messages = 200000;
    if (!strcmp(o.mode, "policies"))
        return bench_mode_policies(&o);
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
