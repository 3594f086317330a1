/* The NATS bridge (optional component, library ringbus_nats): one cnats
 * connection, an export thread that drains the bridge's own subscription into
 * NATS, and an import thread that feeds NATS messages into the bus. This file
 * holds the public calls: start, stats, flush, stop.
 *
 * It uses only the public ringbus API: the bridge is a client of the bus like
 * any other, which keeps the core free of NATS and lets the bridge be tested
 * against the same contract users get. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* Largest max_pending accepted: the bridge sizes two arrays by it. */
#define MAX_PENDING_LIMIT (UINT32_C(1) << 20)

static bool opt_valid(const rbus_nats_opts *o)
{
    if (!o->export_pattern && !o->import_pattern)
        return false;
    if (o->export_pattern && !rbus_pattern_valid(o->export_pattern))
        return false;
    if (o->import_pattern && !rbus_pattern_valid(o->import_pattern))
        return false;
    if (o->subject_prefix && !rbus_topic_valid(o->subject_prefix))
        return false;
    if (o->mode != RBUS_NATS_CORE && o->mode != RBUS_NATS_JETSTREAM)
        return false;
    if (o->url && !*o->url)
        return false;
    if (o->stream &&
        (!*o->stream || strpbrk(o->stream, ". *>\t\r\n") || strlen(o->stream) > RBUS_MAX_TOPIC_LEN))
        return false;
    if (o->durable && (!*o->durable || strpbrk(o->durable, ". *>\t\r\n") ||
                       strlen(o->durable) > RBUS_MAX_TOPIC_LEN))
        return false;
    if (o->create_stream && !o->stream)
        return false;
    if (o->max_reconnect < 0 || o->connect_timeout_ns < 0 || o->reconnect_wait_ns < 0 ||
        o->ack_timeout_ns < 0 || o->stream_duplicate_window_ns < 0)
        return false;
    if (o->max_pending > MAX_PENDING_LIMIT)
        return false;
    return true;
}

void rbus_nats_opts_init(rbus_nats_opts *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    opts->origin = RBUS_NATS_ORIGIN;
    opts->export_block_timeout_ns = DEFAULT_BLOCK_TIMEOUT_NS;
    opts->import_timeout_ns = DEFAULT_IMPORT_TIMEOUT_NS;
    opts->max_pending = DEFAULT_MAX_PENDING;
    opts->ack_timeout_ns = DEFAULT_ACK_TIMEOUT_NS;
    opts->connect_timeout_ns = DEFAULT_CONNECT_TIMEOUT_NS;
    opts->reconnect_wait_ns = DEFAULT_RECONNECT_WAIT_NS;
}

int rbus_nats_start(rbus_nats **out, rbus *bus, const rbus_nats_opts *opts, char *err,
                    size_t err_size)
{
    if (out)
        *out = NULL;
    rbus_nats__set_err(err, err_size, "ok");
    if (!out || !bus || !opts || !opt_valid(opts)) {
        rbus_nats__set_err(err, err_size, "invalid argument");
        return -EINVAL;
    }
    rbus_nats *b = calloc(1, sizeof *b);
    if (!b) {
        rbus_nats__set_err(err, err_size, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&b->closed_lock, NULL);
    pthread_cond_init(&b->closed_cond, NULL);
    pthread_mutex_init(&b->failed_lock, NULL);
    pthread_mutex_init(&b->track_lock, NULL);
    b->bus = bus;
    b->mode = opts->mode;
    b->origin = opts->origin ? opts->origin : RBUS_NATS_ORIGIN;
    /* rbus_pub_opts.timeout_ns 0 means "each subscription's own block
     * timeout", which is what "wait as long as the subscriptions say" is. */
    b->import_timeout_ns = opts->import_timeout_ns < 0 ? 0
                           : opts->import_timeout_ns   ? opts->import_timeout_ns
                                                       : DEFAULT_IMPORT_TIMEOUT_NS;
    b->ack_timeout_ns = opts->ack_timeout_ns ? opts->ack_timeout_ns : DEFAULT_ACK_TIMEOUT_NS;
    if (opts->durable) {
        snprintf(b->bridge_id, sizeof b->bridge_id, "%s/%s", opts->stream ? opts->stream : "",
                 opts->durable);
    } else {
        uint64_t id = 0;
        if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
            id = monotonic_ns() ^ (uint64_t)(uintptr_t)b;
        snprintf(b->bridge_id, sizeof b->bridge_id, "%016llx", (unsigned long long)id);
    }
    if (opts->subject_prefix) {
        b->prefix = strdup(opts->subject_prefix);
        if (!b->prefix) {
            free(b);
            rbus_nats__set_err(err, err_size, "out of memory");
            return -ENOMEM;
        }
        b->prefix_len = strlen(b->prefix);
    }

    int rc = 0;
    if (opts->export_pattern) {
        /* Subscribe before connecting: a closed bus fails fast, without a
         * connection attempt. Block policy: a slow or absent NATS server
         * makes local publishers wait (bounded), then counts drops. */
        rbus_sub_opts so;
        rbus_sub_opts_init(&so);
        so.capacity = opts->export_capacity;
        so.overflow = RBUS_BLOCK;
        so.block_timeout_ns = opts->export_block_timeout_ns < 0 ? -1
                              : opts->export_block_timeout_ns   ? opts->export_block_timeout_ns
                                                                : DEFAULT_BLOCK_TIMEOUT_NS;
        so.name = "nats-export";
        rc = rbus_subscribe(bus, opts->export_pattern, &so, &b->export_sub);
        if (rc < 0)
            rbus_nats__set_err(err, err_size, "export subscription: %s", rbus_strerror(rc));
    }
    if (rc == 0)
        rc = rbus_nats__open_connection(b, opts, err, err_size);
    if (rc == 0 && b->mode == RBUS_NATS_JETSTREAM && b->export_sub) {
        /* Room for every export that can fail before the export thread
         * next destroys the failed ones. */
        b->failed_cap =
            (opts->max_pending ? opts->max_pending : DEFAULT_MAX_PENDING) + EXPORT_BATCH + 16;
        b->failed = calloc(b->failed_cap, sizeof *b->failed);
        uint32_t slots = 16;
        while (slots < 2 * (b->failed_cap + 2))
            slots <<= 1;
        b->awaiting = calloc(slots, sizeof *b->awaiting);
        b->awaiting_mask = slots - 1;
        if (!b->failed || !b->awaiting) {
            rbus_nats__set_err(err, err_size, "out of memory");
            rc = -ENOMEM;
        }
    }
    if (rc == 0 && b->mode == RBUS_NATS_JETSTREAM)
        rc = rbus_nats__setup_jetstream(b, opts, err, err_size);
    if (rc == 0 && opts->import_pattern) {
        b->topic_cache = calloc(TOPIC_CACHE_SIZE, sizeof *b->topic_cache);
        rc = b->topic_cache ? rbus_nats__setup_import(b, opts, err, err_size) : -ENOMEM;
        if (!b->topic_cache)
            rbus_nats__set_err(err, err_size, "out of memory");
    }
    if (rc == 0 && b->export_sub) {
        rc = -pthread_create(&b->export_thread, NULL, rbus_nats__export_main, b);
        b->export_running = rc == 0;
    }
    if (rc == 0 && b->import_sub) {
        rc = -pthread_create(&b->import_thread, NULL, rbus_nats__import_main, b);
        b->import_running = rc == 0;
    }
    if (rc < 0) {
        if (rc == -EAGAIN || rc == -EPERM)
            rbus_nats__set_err(err, err_size, "cannot start a bridge thread (%d)", rc);
        if (b->export_running || b->import_running) {
            rbus_nats_stop(b);
        } else {
            rbus_nats__teardown(b);
        }
        return rc;
    }
    *out = b;
    return 0;
}

int rbus_nats_stats_get(const rbus_nats *b, rbus_nats_stats *out)
{
    if (!b || !out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    /* The done counts first: a message is taken before it is done, so this
     * order never shows more done than taken. */
    out->export_skipped = atomic_load_explicit(&b->export_skipped, memory_order_acquire);
    out->sent = atomic_load_explicit(&b->sent, memory_order_acquire);
    out->send_failed = atomic_load_explicit(&b->send_failed, memory_order_acquire);
    out->export_taken = atomic_load_explicit(&b->export_taken, memory_order_acquire);
    out->server_duplicates = atomic_load_explicit(&b->server_duplicates, memory_order_relaxed);
    uint64_t done = out->export_skipped + out->sent + out->send_failed;
    out->in_flight = out->export_taken > done ? (uint32_t)(out->export_taken - done) : 0;
    if (b->export_sub) {
        rbus_sub_stats ss;
        if (rbus_sub_stats_get(b->export_sub, &ss) == 0) {
            out->export_dropped = ss.dropped_timeout + ss.dropped_closed;
            out->export_depth = ss.depth;
        }
    }
    out->import_received = atomic_load_explicit(&b->import_received, memory_order_relaxed);
    out->imported = atomic_load_explicit(&b->imported, memory_order_relaxed);
    out->import_duplicates = atomic_load_explicit(&b->import_duplicates, memory_order_relaxed);
    out->import_own = atomic_load_explicit(&b->import_own, memory_order_relaxed);
    out->import_invalid = atomic_load_explicit(&b->import_invalid, memory_order_relaxed);
    out->import_failed = atomic_load_explicit(&b->import_failed, memory_order_relaxed);
    if (b->mode == RBUS_NATS_CORE && b->import_sub) {
        int64_t dropped = 0;
        if (natsSubscription_GetDropped(b->import_sub, &dropped) == NATS_OK && dropped > 0)
            out->import_dropped = (uint64_t)dropped;
    }
    out->disconnects = atomic_load_explicit(&b->disconnects, memory_order_relaxed);
    out->reconnects = atomic_load_explicit(&b->reconnects, memory_order_relaxed);
    out->connected = atomic_load_explicit(&b->connected, memory_order_relaxed);
    return 0;
}

/* Milliseconds left until deadline_ns (0 = none: `none_ms`), at least 1. */
static int64_t ms_left(uint64_t deadline_ns, int64_t none_ms)
{
    if (!deadline_ns)
        return none_ms;
    uint64_t now = monotonic_ns();
    return now >= deadline_ns ? 1 : ns_to_ms_ceil((int64_t)(deadline_ns - now));
}

int rbus_nats_flush(rbus_nats *b, int64_t timeout_ns)
{
    if (!b)
        return -EINVAL;
    if (timeout_ns == 0) {
        /* Done when everything that entered the bridge's queue before now
         * is counted done (entered is read first; a message between the
         * queue and export_taken is in neither depth nor in_flight, but it
         * is in `entered`), and nothing taken is still out (completions
         * come out of order: a skip can finish before an earlier ack). */
        uint64_t entered = 0;
        if (b->export_sub) {
            rbus_sub_stats ss;
            rbus_sub_stats_get(b->export_sub, &ss);
            entered = ss.offered - ss.dropped_timeout - ss.dropped_closed;
        }
        rbus_nats_stats st;
        rbus_nats_stats_get(b, &st);
        bool done = st.export_skipped + st.sent + st.send_failed >= entered && st.in_flight == 0;
        return done ? 0 : -ETIMEDOUT;
    }
    uint64_t deadline = timeout_ns > 0 ? monotonic_ns() + (uint64_t)timeout_ns : 0;
    if (b->export_sub) {
        /* 1. The export thread says how far this flush reaches. */
        /* Release: our publishes before this call happen before the export
         * thread's acquire load that sees the request, so the mark it then
         * reads off the queue counts them. */
        uint64_t gen = atomic_fetch_add_explicit(&b->flush_requested, 1, memory_order_release) + 1;
        while (atomic_load_explicit(&b->flush_served, memory_order_acquire) < gen) {
            if (deadline && monotonic_ns() >= deadline)
                return -ETIMEDOUT;
            sleep_ms(1);
        }
        uint64_t mark = atomic_load_explicit(&b->flush_mark, memory_order_relaxed);
        /* 2. The export thread is past the mark, and no export before it
         *    awaits an ack (acks complete out of order). */
        while (atomic_load_explicit(&b->export_handed, memory_order_acquire) < mark ||
               (b->js && rbus_nats__awaiting_before(b, mark))) {
            if (atomic_load_explicit(&b->conn_closed, memory_order_relaxed))
                return -EIO;
            if (deadline && monotonic_ns() >= deadline)
                return -ETIMEDOUT;
            sleep_ms(1);
        }
    }
    /* 3. The connection's buffer reaches the server (a PING/PONG). */
    natsStatus s = natsConnection_FlushTimeout(b->nc, ms_left(deadline, INT32_MAX));
    return s == NATS_OK ? 0 : s == NATS_TIMEOUT ? -ETIMEDOUT : -EIO;
}

void rbus_nats_stop(rbus_nats *b)
{
    if (!b)
        return;
    atomic_store_explicit(&b->stopping, true, memory_order_relaxed);
    if (b->import_running)
        pthread_join(b->import_thread, NULL);
    /* The export budget starts once the import is out of the way. */
    atomic_store_explicit(&b->export_deadline_ns, monotonic_ns() + (uint64_t)b->ack_timeout_ns,
                          memory_order_relaxed);
    if (b->export_sub) {
        /* The export thread drains what is queued, then sees -ESHUTDOWN. */
        rbus_sub_close(b->export_sub);
        if (b->export_running)
            pthread_join(b->export_thread, NULL);
    }
    /* Whatever is left of the same deadline: stop waits for acks (or the
     * connection's buffer) at most ack_timeout_ns in all. */
    uint64_t deadline = atomic_load_explicit(&b->export_deadline_ns, memory_order_relaxed);
    if (b->js && rbus_nats__export_in_flight(b) > 0 &&
        !atomic_load_explicit(&b->conn_closed, memory_order_relaxed)) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = ms_left(deadline, 1);
        js_PublishAsyncComplete(b->js, &po);
    } else if (!b->js && b->export_sub &&
               !atomic_load_explicit(&b->conn_closed, memory_order_relaxed)) {
        natsConnection_FlushTimeout(b->nc, ms_left(deadline, 1));
    }
    rbus_nats__teardown(b);
}
