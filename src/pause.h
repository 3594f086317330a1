/*
 * pause.h - named pause points, for tests that stall a thread at a chosen
 * instruction (docs/design.md#pause-points).
 *
 * A promise about preemption ("whatever thread is stalled wherever") is
 * proved by stalling that thread there on purpose. Builds configured with
 * RBUS_PAUSE_POINTS (the test library ringbus_pause only) turn each
 * RBUS__PAUSE(point) into a call that a test can make park the thread that
 * reaches it; every other build compiles the points to nothing, so the
 * shipped libraries and the bench carry none (tests/check_no_pause.sh).
 */
#ifndef RBUS_PAUSE_H
#define RBUS_PAUSE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* X(NAME, "name"): every point, in one list so that names and ids agree. */
#define RBUS__PAUSE_POINTS(X)                                                             \
    /* the slot protocol (ring.h) */                                                      \
    X(RING_PUT_RESERVED, "ring.put.reserved")   /* writer owns a position, uncommitted */ \
    X(RING_PUT_PASS, "ring.put.pass")           /* about to pass a held slot as a hole */ \
    X(RING_RUN_RESERVED, "ring.run.reserved")   /* writer owns a run, none committed */   \
    X(RING_TAKE_CLAIMING, "ring.take.claiming") /* read the message, not yet claimed */   \
    X(RING_TAKE_CLAIMED, "ring.take.claimed")   /* claimed, head not yet moved on */      \
    X(RING_TAKE_SKIP, "ring.take.skip")         /* about to skip an unwritten slot */     \
    X(RING_HEAD_TO, "ring.head.to")             /* read head, about to store it */        \
    /* a put that reserved bytes found no slot, about to give them back (sub.c) */        \
    X(BYTES_PUT_FAILED, "bytes.put_failed")                                               \
    /* a drain about to check whether it is done, holding the lock (dispatch.c) */        \
    X(DISPATCH_DRAIN_CHECK, "dispatch.drain.check")                                       \
    /* idempotency keys (dedup.c) */                                                      \
    X(DEDUP_BUILDING, "dedup.building") /* a publish builds its topic's window */         \
    X(DEDUP_CLAIMED, "dedup.claimed")   /* owns a slot, identity not yet written */       \
    X(DEDUP_PROPOSED, "dedup.proposed") /* INTENT stored, about to CAS `accepted` */      \
    X(DEDUP_ACCEPTED, "dedup.accepted") /* won the CAS, slot not yet published */         \
    /* retained history (history.c) */                                                    \
    X(HISTORY_PUT, "history.put")       /* a publisher about to put in a history */       \
    X(HISTORY_HAZARD, "history.hazard") /* a reader announced a message, unchecked */     \
    X(REPLAY_COLLECT, "replay.collect") /* a subscribe, grace period over, about */       \
                                        /* to read the histories */                       \
    /* a receive took messages, about to look at the watermark flag (sub.c) */            \
    X(RECV_WATERMARK, "recv.watermark")                                                   \
    /* a receiver woke from its sleep (sub.c) */                                          \
    X(RECV_WOKE, "recv.woke")                                                             \
    /* an all-or-none publish holds a reserved position, before its next (topic.c) */     \
    X(ALL_OR_NONE_RESERVED, "all_or_none.reserved")                                       \
    /* a publisher waiting for room woke from its sleep (topic.c) */                      \
    X(PUBLISH_WAIT_WOKE, "publish_wait.woke")                                             \
    /* routing changes, after the new lists are in place and before the grace */          \
    /* period that retires the old ones (topic.c) */                                      \
    X(UPDATE_SWAPPED, "update.swapped")                                                   \
    /* a grace period begins (bus.c) */                                                   \
    X(SYNCHRONIZE, "epoch.synchronize")                                                   \
    /* the first instruction of every public call that takes a handle */                  \
    X(RBUS_CLOSE, "rbus_close")                                                           \
    X(RBUS_DESTROY, "rbus_destroy")                                                       \
    X(RBUS_TOPIC_OPEN, "rbus_topic_open")                                                 \
    X(RBUS_TOPIC_OPEN_EX, "rbus_topic_open_ex")                                           \
    X(RBUS_TOPIC_NAME, "rbus_topic_name")                                                 \
    X(RBUS_TOPIC_LAST, "rbus_topic_last")                                                 \
    X(RBUS_TOPIC_FD, "rbus_topic_fd")                                                     \
    X(RBUS_TOPIC_READY, "rbus_topic_ready")                                               \
    X(RBUS_TOPIC_STATS_GET, "rbus_topic_stats_get")                                       \
    X(RBUS_PUBLISH, "rbus_publish")                                                       \
    X(RBUS_PUBLISH_EX, "rbus_publish_ex")                                                 \
    X(RBUS_PUBLISH_BATCH, "rbus_publish_batch")                                           \
    X(RBUS_SUBSCRIBE, "rbus_subscribe")                                                   \
    X(RBUS_SUB_CLOSE, "rbus_sub_close")                                                   \
    X(RBUS_UNSUBSCRIBE, "rbus_unsubscribe")                                               \
    X(RBUS_SUB_ID, "rbus_sub_id")                                                         \
    X(RBUS_SUB_FD, "rbus_sub_fd")                                                         \
    X(RBUS_SUB_STATS_GET, "rbus_sub_stats_get")                                           \
    X(RBUS_SUB_TIMING_GET, "rbus_sub_timing_get")                                         \
    X(RBUS_BUS_STATS_GET, "rbus_bus_stats_get")                                           \
    X(RBUS_RECV, "rbus_recv")                                                             \
    X(RBUS_RECV_BATCH, "rbus_recv_batch")                                                 \
    X(RBUS_MSG_REF, "rbus_msg_ref")                                                       \
    X(RBUS_MSG_RELEASE, "rbus_msg_release")                                               \
    X(RBUS_MSG_DATA, "rbus_msg_data")                                                     \
    X(RBUS_DISPATCH_START, "rbus_dispatch_start")                                         \
    X(RBUS_DISPATCH_STOP, "rbus_dispatch_stop")                                           \
    X(RBUS_DISPATCH_DRAIN, "rbus_dispatch_drain")                                         \
    X(RBUS_DISPATCH_STATS_GET, "rbus_dispatch_stats_get")                                 \
    X(RBUS_DISPATCH_TIMING_GET, "rbus_dispatch_timing_get")                               \
    X(RBUS_STATS_PROMETHEUS, "rbus_stats_prometheus")

enum rbus__pp {
#define RBUS__PP_ENUM(id, name) RBUS_PP_##id,
    RBUS__PAUSE_POINTS(RBUS__PP_ENUM)
#undef RBUS__PP_ENUM
        RBUS_PP_COUNT
};

#if defined(RBUS_PAUSE_POINTS)

/* Counts the pass and, if a trap is set here for this thread, parks it
 * until the test releases it. */
void rbus__pause(enum rbus__pp point);
#define RBUS__PAUSE(id) rbus__pause(RBUS_PP_##id)

/* --- the test side --- */

/* Sets a trap at `point` for the thread `only` (NULL: the first thread to
 * pass). Returns its id (>= 0), or -1 when every trap is in use. A trap
 * catches one thread once. */
int rbus__trap_set(enum rbus__pp point, const pthread_t *only);
/* Waits until the trap holds its thread; false when timeout_ns ran out. */
bool rbus__trap_wait(int trap, int64_t timeout_ns);
/* Lets the parked thread go on (or disarms a trap nobody reached). */
void rbus__trap_release(int trap);
/* Whether the trap holds a thread now. */
bool rbus__trap_holds(int trap);
/* Releases and disarms every trap. */
void rbus__trap_reset(void);
/* How many times any thread has passed `point`. */
uint64_t rbus__pause_passes(enum rbus__pp point);
/* The point's name ("ring.put.reserved", "rbus_recv", ...). */
const char *rbus__pause_name(enum rbus__pp point);

#else

#define RBUS__PAUSE(id) ((void)0)

#endif

#endif /* RBUS_PAUSE_H */
