/* Private to ringbus_nats, the NATS bridge: struct rbus_nats, which all its
 * files share, and the calls between those files. Internal non-static names
 * use the rbus_nats__ prefix; they stay hidden (only ringbus_nats.h's calls
 * are exported).
 *
 * Files: codec.c (base64url, key headers, subjects), export.c (the export
 * thread, acks), import.c (the import thread), connection.c (connection,
 * JetStream setup, teardown), bridge.c (the public calls), metrics.c
 * (rbus_nats_prometheus). */
#ifndef RBUS_NATS_INTERNAL_H
#define RBUS_NATS_INTERNAL_H

#include "ringbus_nats.h"

#include <nats/nats.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define DEFAULT_URL "nats://127.0.0.1:4222"
#define DEFAULT_BLOCK_TIMEOUT_NS INT64_C(1000000000)
#define DEFAULT_IMPORT_TIMEOUT_NS INT64_C(1000000000)
#define DEFAULT_MAX_PENDING 1024u
#define DEFAULT_ACK_TIMEOUT_NS INT64_C(5000000000)
#define DEFAULT_CONNECT_TIMEOUT_NS INT64_C(2000000000)
#define DEFAULT_RECONNECT_WAIT_NS INT64_C(100000000)
/* How often the worker threads look at the stop flag when idle. */
#define POLL_MS 100
#define EXPORT_BATCH 64
/* Longest NATS subject the bridge builds: prefix "." topic. */
#define SUBJECT_MAX (2 * RBUS_MAX_TOPIC_LEN + 2)
#define TOPIC_CACHE_SIZE 64u

struct rbus_nats {
    rbus *bus;
    rbus_nats_mode mode;
    uint32_t origin;
    int64_t import_timeout_ns;
    int64_t ack_timeout_ns;
    char *prefix; /* NULL or "prefix" (no dot) */
    size_t prefix_len;
    /* Tags exports (Rbus-Bridge header) so that imports can spot our own:
     * the durable consumer's name when there is one, so that a restarted
     * bridge still knows its earlier exports, else random per start. */
    char bridge_id[2 * RBUS_MAX_TOPIC_LEN + 2];

    natsOptions *nopts;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *import_sub;
    rbus_sub *export_sub;

    /* The import thread's handles of recent topics: rbus_topic_open takes
     * the bus lock, and handles stay valid until rbus_destroy. Direct-mapped
     * by a hash of the name; only the import thread touches it. */
    struct topic_cache_entry {
        rbus_topic *topic;
        char name[RBUS_MAX_TOPIC_LEN + 1];
    } * topic_cache;

    pthread_t export_thread, import_thread;
    bool export_running, import_running;

    /* Set once by rbus_nats_stop, read by both workers in their loops: a
     * plain flag whose only job is to end them, so relaxed suffices; the
     * join that follows gives the memory ordering. */
    atomic_bool stopping;
    /* When stopping: the time after which the export thread stops waiting
     * for room among the unacknowledged (0 before). Same reasoning. */
    atomic_uint_fast64_t export_deadline_ns;

    /* rbus_nats_flush asks (flush_requested, a generation) and the export
     * thread answers: flush_mark = how many messages it had taken plus how
     * many were queued when it saw the request (only the queue's one
     * consumer can say that), then flush_served = the generation. The
     * flush then waits until the first flush_mark messages are done.
     * Release/acquire: a flush that sees its generation sees the mark.
     * flush_served is UINT64_MAX once the export thread has ended. */
    atomic_uint_fast64_t flush_requested, flush_served, flush_mark;
    /* Messages the export thread is finished with: done, or handed to cnats
     * and recorded in `awaiting` (release, after either). */
    atomic_uint_fast64_t export_handed;

    /* JetStream: exports awaiting their ack, by natsMsg address, with their
     * position in export order, so that a flush can tell whether any
     * message before its mark is still out (acks and timeouts complete them
     * out of order). Open addressing, linear probing, backward-shift
     * deletion; at most max_pending + 1 entries in 2^k >= 2 (max_pending
     * + 2) slots. Guarded by track_lock (export thread, ack callbacks,
     * flush). */
    pthread_mutex_t track_lock;
    struct awaiting_ack {
        const natsMsg *msg; /* NULL = free */
        uint64_t pos;
    } * awaiting;
    uint32_t awaiting_mask;
    uint32_t awaiting_count; /* entries: a flush scans only when there are some */

    /* Kept by the connection callbacks, so stats never call into cnats
     * (which could wait for a connection lock held by a blocked write).
     * Relaxed: a status flag, read on its own. */
    atomic_bool connected, conn_closed;

    /* Counters. Written by the export thread, the import thread and cnats'
     * callback threads; read by stats and flush. Each is an independent
     * monotonic count, so relaxed increments are enough, except for the
     * export "done" counts, which flush compares against: those are
     * incremented with release and read with acquire so that a flush that
     * sees a message as done also sees what was done before it. */
    atomic_uint_fast64_t export_taken, export_skipped, sent, send_failed, server_duplicates;
    atomic_uint_fast64_t import_received, imported, import_duplicates, import_own;
    atomic_uint_fast64_t import_invalid, import_failed;
    atomic_uint_fast64_t disconnects, reconnects;

    /* cnats runs connection callbacks on its own thread, in order, with the
     * closed callback last: teardown waits for it before freeing. */
    pthread_mutex_t closed_lock;
    pthread_cond_t closed_cond;
    bool closed;

    /* Failed exports, to be destroyed by the export thread. cnats 3.4 arms
     * an export's ack timer before its write ends; against a frozen server
     * the write can outlast the timer, and the failure callback then gets a
     * message cnats is still copying (ThreadSanitizer showed it). Only the
     * export thread, between two publishes, knows cnats is done with it. */
    pthread_mutex_t failed_lock;
    natsMsg **failed;
    uint32_t failed_count, failed_cap;
};

static inline int64_t ns_to_ms_ceil(int64_t ns)
{
    if (ns <= 0)
        return 0;
    if (ns > INT64_MAX - 999999)
        return INT64_MAX / 1000000;
    return (ns + 999999) / 1000000;
}

static inline uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

static inline void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline void count(atomic_uint_fast64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* codec.c */
natsStatus rbus_nats__set_key_header(natsMsg *nm, const char *name, const void *key, size_t len);
size_t rbus_nats__header_to_key(const char *value, uint8_t *key);
bool rbus_nats__build_subject(const rbus_nats *b, const char *topic, char *out);
const char *rbus_nats__subject_to_topic(const rbus_nats *b, const char *subject);

/* export.c */
void *rbus_nats__export_main(void *arg);
void rbus_nats__on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure);
uint64_t rbus_nats__export_in_flight(const rbus_nats *b);
bool rbus_nats__awaiting_before(rbus_nats *b, uint64_t mark);
void rbus_nats__fail_stranded_acks(rbus_nats *b);
void rbus_nats__destroy_failed(rbus_nats *b);

/* import.c */
void *rbus_nats__import_main(void *arg);

/* connection.c */
void rbus_nats__set_err(char *err, size_t err_size, const char *fmt, ...);
int rbus_nats__open_connection(rbus_nats *b, const rbus_nats_opts *o, char *err, size_t err_size);
int rbus_nats__setup_jetstream(rbus_nats *b, const rbus_nats_opts *o, char *err, size_t err_size);
int rbus_nats__setup_import(rbus_nats *b, const rbus_nats_opts *o, char *err, size_t err_size);
void rbus_nats__teardown(rbus_nats *b);

#endif
