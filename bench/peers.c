/*
 * peers.c - the peers ringbus is measured against, and `ringbus-bench
 * peers`. (Being written.)
 */
#define _GNU_SOURCE
#include "bench.h"

int bench_mode_peers(const struct bench_opts *o)
{
    (void)o;
    fprintf(stderr, "ringbus-bench: peers mode is not built yet\n");
    return 2;
}
