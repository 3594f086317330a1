/**
 * @file ringbus_nats.h
 * @brief ringbus_nats: bridges ringbus topics onto NATS (optional component).
 *
 * A bridge connects one bus to one NATS server (or cluster) through the NATS
 * C client (cnats). It exports local topics that match a pattern to NATS
 * subjects of the same name, and imports NATS subjects that match a pattern
 * into the local bus. Library `ringbus_nats`, CMake target `ringbus::nats`;
 * the core library does not depend on it. docs/scaling.md says when to use
 * it and what it guarantees.
 *
 * Two modes:
 *  - RBUS_NATS_CORE: core NATS publish/subscribe; at most once (a message
 *    in a socket buffer when the connection drops is lost, uncounted).
 *  - RBUS_NATS_JETSTREAM: exports are published to a stream asynchronously,
 *    at most max_pending unacknowledged, and count as sent only when the
 *    stream acknowledged them; imports come through a JetStream pull
 *    consumer and are acknowledged after the local publish. A message's
 *    idempotency key travels as the Nats-Msg-Id header (base64url), so the
 *    stream's duplicate window deduplicates across processes.
 *
 * Conventions are those of ringbus.h: 0 or a negative errno, every
 * argument checked, every function thread-safe.
 */
#ifndef RINGBUS_NATS_H
#define RINGBUS_NATS_H

#include <ringbus.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The origin tag (rbus_pub_opts.origin) of imported messages unless the
 *  options name another: "NATS" in ASCII. Exports skip messages that carry
 *  it, so nothing a bridge imported is ever exported again. */
#define RBUS_NATS_ORIGIN UINT32_C(0x4e415453)

/** The header that carries a message's idempotency key (base64url, no padding). */
#define RBUS_NATS_KEY_HEADER "Nats-Msg-Id"
/** The header that carries a message's order key (base64url, no padding). */
#define RBUS_NATS_ORDER_KEY_HEADER "Rbus-Order-Key"
/** The header that names the bridge instance that exported a message. */
#define RBUS_NATS_BRIDGE_HEADER "Rbus-Bridge"

typedef struct rbus_nats rbus_nats; /**< a bridge */

/** How messages cross the bridge. */
typedef enum rbus_nats_mode {
    RBUS_NATS_CORE = 0,     /**< core NATS: at most once, no server-side dedup */
    RBUS_NATS_JETSTREAM = 1 /**< JetStream: acknowledged sends, server dedup window */
} rbus_nats_mode;

/**
 * Bridge settings for rbus_nats_start(). Initialise with
 * rbus_nats_opts_init() (or zero it: 0 means "default"); strings are
 * copied by the call.
 */
typedef struct rbus_nats_opts {
    const char *url;            /**< NATS server URL(s), comma-separated;
                                     NULL = "nats://127.0.0.1:4222" */
    rbus_nats_mode mode;        /**< default RBUS_NATS_CORE */
    const char *export_pattern; /**< local topics to send to NATS; NULL = none */
    const char *import_pattern; /**< topics to take from NATS (local names, without
                                     the prefix); NULL = none */
    const char *subject_prefix; /**< NATS subject = prefix "." topic; NULL = none;
                                     a valid topic name */
    uint32_t origin;            /**< origin tag of imported messages (and the tag
                                     exports skip); 0 = RBUS_NATS_ORIGIN */
    uint32_t export_capacity;   /**< queue of the bridge's own subscription
                                     (RBUS_BLOCK policy); 0 = bus default */
    int64_t export_block_timeout_ns; /**< how long a local publisher waits for room
                                     in that queue before the message is dropped
                                     (counted); 0 = 1 s; < 0 = forever */
    int64_t import_timeout_ns;  /**< how long an import waits for room in full
                                     RBUS_BLOCK local subscriptions; 0 = 1 s;
                                     < 0 = as long as each subscription's own
                                     block_timeout_ns says */
    uint32_t max_pending;       /**< JetStream: unacknowledged exports at most;
                                     0 = 1024; at most 2^20 */
    int64_t ack_timeout_ns;     /**< JetStream: an export not acknowledged this long
                                     counts as failed (at once when the connection
                                     is closed for good); 0 = 5 s. Also bounds how
                                     long rbus_nats_stop waits */
    const char *stream;         /**< JetStream: the stream imports read from and,
                                     with create_stream, exports go to; NULL = the
                                     stream that holds the import subjects */
    bool create_stream;         /**< JetStream: create `stream` (file storage) for
                                     the prefixed export and import patterns when
                                     it does not exist */
    int64_t stream_duplicate_window_ns; /**< with create_stream: the stream's dedup
                                     window; 0 = the server's default (2 min) */
    const char *durable;        /**< JetStream: durable consumer name for imports,
                                     so a restarted process resumes where it
                                     stopped; NULL = an ephemeral consumer that
                                     starts with the messages stored from now on.
                                     Together with `stream` it is also the bridge's
                                     identity in the Rbus-Bridge header, so a
                                     restarted bridge still skips its own earlier
                                     exports (bridges sharing one durable consumer
                                     count as one bridge); at most 255 bytes, no
                                     '.', '*', '>' or whitespace */
    int64_t connect_timeout_ns; /**< each (re)connect attempt; 0 = 2 s */
    int64_t reconnect_wait_ns;  /**< between reconnect attempts; 0 = 100 ms */
    int max_reconnect;          /**< reconnect attempts before giving up; 0 = for
                                     ever; > 0 = that many */
} rbus_nats_opts;

/** A bridge's counters, from rbus_nats_stats_get(). */
typedef struct rbus_nats_stats {
    /* export: local bus -> NATS */
    uint64_t export_taken;    /**< messages the bridge took from its subscription */
    uint64_t export_skipped;  /**< of those, imported ones (origin tag) not sent back */
    uint64_t sent;            /**< core: accepted by the connection; JetStream:
                                   acknowledged by the stream */
    uint64_t send_failed;     /**< refused by the client, negatively acknowledged
                                   or not acknowledged within ack_timeout_ns */
    uint64_t server_duplicates; /**< JetStream: acks that said "duplicate" (a subset
                                   of sent: the stream already had that key) */
    uint64_t export_dropped;  /**< local publishes that found the bridge's queue full
                                   until export_block_timeout_ns (never reached NATS) */
    uint32_t in_flight;       /**< taken but neither sent nor failed yet */
    uint32_t export_depth;    /**< queued in the bridge's subscription now */
    /* import: NATS -> local bus */
    uint64_t import_received; /**< messages the bridge received from NATS */
    uint64_t imported;        /**< published into the local bus and accepted */
    uint64_t import_duplicates; /**< suppressed by the local bus's dedup window */
    uint64_t import_own;      /**< JetStream: this bridge's own exports, not imported */
    uint64_t import_invalid;  /**< subjects that are not valid topics (or lack the
                                   prefix), undecodable keys, and headers a ringbus
                                   message cannot carry (rbus_header): skipped */
    uint64_t import_failed;   /**< local publish errors (too large, bus closed) */
    uint64_t import_dropped;  /**< core: messages the client dropped as a slow consumer */
    /* connection */
    uint64_t disconnects;     /**< connection losses */
    uint64_t reconnects;      /**< successful reconnects */
    bool connected;           /**< connected now */
} rbus_nats_stats;

/** rbus_nats_opts_init: fills the defaults. NULL is a no-op. */
RBUS_API void rbus_nats_opts_init(rbus_nats_opts *opts);

/**
 * rbus_nats_start: connects to NATS and starts bridging. At least one of
 * export_pattern and import_pattern must be set. Returns 0, -EINVAL (bad
 * argument or pattern, bad URL), -ECONNREFUSED (no server answered),
 * -ETIMEDOUT, -ENOTSUP (JetStream mode and the server has no JetStream),
 * -ENOENT (JetStream stream missing), -ESHUTDOWN (bus closed), -ENOMEM or
 * -EIO (another NATS error). It never waits longer than about
 * connect_timeout_ns per server for a connection. When `err` is not NULL,
 * a readable reason is written there (at most err_size bytes, with the NUL)
 * on failure. On failure *out is NULL and nothing is left running.
 */
RBUS_API int rbus_nats_start(rbus_nats **out, rbus *bus, const rbus_nats_opts *opts,
                             char *err, size_t err_size);

/**
 * rbus_nats_flush: waits until every message queued for export when it was
 * called has been sent or has failed (JetStream: acknowledged, refused or
 * timed out), and the connection's buffer has reached the server. Returns
 * 0, -ETIMEDOUT, -EIO (the connection is closed for good) or -EINVAL.
 * timeout_ns as in ringbus.h (0 = do not wait: 0 if nothing is queued or
 * in flight, else -ETIMEDOUT). An idle bridge answers within about 10 ms.
 */
RBUS_API int rbus_nats_flush(rbus_nats *bridge, int64_t timeout_ns);

/**
 * rbus_nats_stats_get: the bridge's counters. With nothing in flight,
 * export_taken == export_skipped + sent + send_failed, and import_received
 * == imported + import_duplicates + import_own + import_invalid +
 * import_failed. Returns 0 or -EINVAL.
 */
RBUS_API int rbus_nats_stats_get(const rbus_nats *bridge, rbus_nats_stats *out);

/**
 * rbus_nats_stop: stops importing (the message being imported finishes:
 * at most import_timeout_ns), sends what is queued for export and waits
 * for acknowledgements, ack_timeout_ns in all (plus up to 2 s, cnats' write
 * deadline, if a write to a frozen server is under way); what is not
 * through by then counts as failed. Then it closes the connection and frees
 * the bridge. Must be called before rbus_destroy of its bus. NULL is a
 * no-op. Not to be called twice, nor while another thread uses the bridge.
 */
RBUS_API void rbus_nats_stop(rbus_nats *bridge);

/**
 * rbus_nats_prometheus: the counters of `count` bridges in the Prometheus
 * text format, one family per field of rbus_nats_stats
 * (ringbus_nats_sent_total, ringbus_nats_send_failed_total, ...,
 * ringbus_nats_in_flight, ringbus_nats_export_depth, ringbus_nats_connected),
 * each with its HELP and TYPE once and a sample per bridge, labelled
 * bridge="<identity>" (stream/durable, or the random id). Append it to
 * rbus_stats_prometheus's text for one scrape (bridges that share an
 * identity give samples with equal labels, which Prometheus refuses: give
 * each its own durable). Like snprintf: returns the
 * whole length even when `size` is too small, and NUL-terminates when
 * size > 0. Errors: -EINVAL (bridges NULL with count > 0, a NULL bridge, buf
 * NULL with size > 0), -ENOMEM, -EOVERFLOW.
 */
RBUS_API int rbus_nats_prometheus(const rbus_nats *const *bridges, size_t count, char *buf,
                                  size_t size);

#ifdef __cplusplus
}
#endif

#endif
