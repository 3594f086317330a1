/*
 * policies.h - the systems `ringbus-bench policies` studies: ringbus and
 * its peers (a mutex + condition-variable queue, nng pub0/sub0 inproc,
 * ZeroMQ PUB/SUB inproc), each behind the same small adapter, so that the
 * study in policies.c drives every one with the same publisher, the same
 * receivers and the same clock. docs/benchmarks.md says how each peer is
 * configured for each policy.
 */
#ifndef RBUS_BENCH_POLICIES_H
#define RBUS_BENCH_POLICIES_H

#include "bench.h"

enum study_policy { POL_BLOCK, POL_BLOCK_TIMEOUT, POL_DROP_OLDEST, POL_DROP_NEWEST, POL_COUNT };

extern const char *const study_policy_names[POL_COUNT];

/* One configuration of one system. */
struct study_cfg {
    enum study_policy policy;
    uint32_t capacity;         /* messages each subscriber can have waiting */
    int subscribers;           /* 1..8, one receiver thread each */
    size_t payload;            /* bytes per message, >= 16 */
    int64_t block_timeout_ns;  /* POL_BLOCK_TIMEOUT only */
    struct bench_alloc *alloc; /* ringbus counts its allocations here */
};

/* What a system says of one subscriber once every receiver has stopped. */
struct study_counts {
    bool counted; /* the system counts its drops itself: accounting is checked */
    uint64_t offered, received, depth;
    uint64_t dropped_newest, dropped_oldest, dropped_timeout, dropped_closed;
    uint32_t peak_depth; /* 0: the system does not say */
};

/*
 * A system. The study calls open, then publish from one publisher thread
 * and recv(sub) from receiver thread `sub` only, then finish once the
 * publisher is done, joins the receivers, then counts and close.
 */
struct study_sys {
    const char *name;
    /* NULL when the system offers c->policy at c->capacity; otherwise a
     * few words on why not (the row shows n/a and says them). */
    const char *(*unsupported)(const struct study_cfg *c);
    /* How it is configured for c, a few words for the table and the CSV. */
    void (*describe)(const struct study_cfg *c, char *buf, size_t len);
    /* Sets up the publisher side and c->subscribers subscribers, connected
     * and ready (a message published after open reaches every one); 0, or
     * non-zero after saying why on stderr. */
    int (*open)(const struct study_cfg *c, void **state);
    /* One message of len bytes; 0 when the system took it (delivered,
     * queued or dropped by its policy), non-zero on a failure. */
    int (*publish)(void *state, const void *buf, size_t len);
    /* Optional: called once by the publisher thread before its first
     * publish, to grow what the system pools per thread to what the run
     * will need, so that allocations counted later are per message. */
    void (*warm)(void *state, size_t len);
    /* Subscriber `sub`'s next message, waiting at most timeout_ms: copies
     * its first 16 bytes to hdr and returns 1; 0 when none came in time;
     * -1 when the system is finished and this subscriber has nothing left. */
    int (*recv)(void *state, int sub, unsigned char hdr[16], int timeout_ms);
    /* The publisher is done. A system that can be closed closes, and its
     * receivers drain and then get -1; the study stops the others'
     * receivers after an idle gap. */
    void (*finish)(void *state);
    void (*counts)(void *state, int sub, struct study_counts *out);
    void (*close)(void *state);
};

extern const struct study_sys study_ringbus; /* pol_ringbus.c */
extern const struct study_sys study_mutex;   /* pol_mutex.c */
#ifdef RBUS_BENCH_HAVE_NNG
extern const struct study_sys study_nng; /* pol_nng.c */
#endif
#ifdef RBUS_BENCH_HAVE_ZMQ
extern const struct study_sys study_zmq; /* pol_zmq.c */
#endif

#endif
