/**
 * @file ringbus.h
 * @brief ringbus: an in-process publish/subscribe event bus.
 *
 * This is the only supported public header of the ringbus core. Anything it
 * does not declare is internal and may change at any time.
 *
 * Conventions (docs/api.md has the rest: ownership, undefined behaviour):
 *  - Functions that can fail return 0 (or a documented positive value) on
 *    success and a negative errno on failure. rbus_strerror() names them.
 *  - Timeouts are int64_t nanoseconds on CLOCK_MONOTONIC: < 0 wait forever,
 *    0 do not wait, > 0 wait at most that long.
 *  - Every pointer argument is checked; NULL where it is not allowed gives
 *    -EINVAL. Options structs may be NULL (= defaults); a zero-initialised
 *    options struct means "all defaults".
 *  - Every function is thread-safe unless its comment says otherwise.
 *    rbus_destroy() is the only one that requires every other thread to have
 *    stopped using the bus.
 *  - Memory model: everything a thread wrote before a publish is visible to
 *    the thread whose receive returns that message (release/acquire).
 *  - A bus is not usable in the child of a fork().
 *
 * Before 1.0, struct layouts may change between minor versions; the shared
 * library's SOVERSION says so.
 */
#ifndef RINGBUS_H
#define RINGBUS_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @def RBUS_API
 * Marks the public functions: exported from the shared library, which hides
 * every other symbol. Static users define RBUS_STATIC_DEFINE (the CMake
 * target ringbus::ringbus_static and the pkg-config module ringbus_static
 * do it for them).
 */
#if defined(RBUS_STATIC_DEFINE)
#define RBUS_API
#elif defined(__GNUC__)
#define RBUS_API __attribute__((visibility("default")))
#else
#define RBUS_API
#endif

#define RBUS_VERSION_MAJOR 0 /**< this header's major version */
#define RBUS_VERSION_MINOR 1 /**< minor version: before 1.0 it breaks the ABI */
#define RBUS_VERSION_PATCH 0 /**< patch version */

/** rbus_version: the library's version as "MAJOR.MINOR.PATCH" ("0.1.0"). */
RBUS_API const char *rbus_version(void);

typedef struct rbus rbus;             /**< the bus */
typedef struct rbus_topic rbus_topic; /**< a topic handle, owned by the bus */
typedef struct rbus_sub rbus_sub;     /**< a subscription */
typedef struct rbus_msg rbus_msg;     /**< a message (immutable, refcounted) */

/** What a subscription does with a message when its queue is full. */
typedef enum rbus_overflow {
    RBUS_BLOCK = 0,       /**< publisher waits for room (up to block_timeout_ns) */
    RBUS_DROP_OLDEST = 1, /**< evict the oldest queued message to make room */
    RBUS_DROP_NEWEST = 2  /**< refuse the new message for this subscription */
} rbus_overflow;

#define RBUS_DUPLICATE 1          /**< rbus_publish*: suppressed by idempotency key */
#define RBUS_DEDUP_OFF UINT32_MAX /**< rbus_config.dedup_keys: no deduplication */

/** Largest capacity a subscription (or the bus default) may ask for. */
#define RBUS_MAX_CAPACITY (UINT32_C(1) << 30)
/** Longest topic name or pattern, in bytes. */
#define RBUS_MAX_TOPIC_LEN 255
/** Longest idempotency key or order key, in bytes. */
#define RBUS_MAX_KEY_LEN 255
/** Largest rbus_config.dedup_keys accepted, RBUS_DEDUP_OFF aside (4 Mi keys;
 *  dedup memory is about 130 bytes per key per keyed topic). */
#define RBUS_MAX_DEDUP_KEYS (UINT32_C(1) << 22)
/** Largest rbus_config.max_payload accepted (64 MiB). */
#define RBUS_MAX_PAYLOAD_LIMIT (UINT32_C(1) << 26)

/**
 * rbus_strerror: a text for 0, RBUS_DUPLICATE and every negative errno the
 * library returns; any other value gives a non-NULL "unknown" text. Never
 * returns NULL.
 */
RBUS_API const char *rbus_strerror(int rc);

/**
 * rbus_last_error_detail: what was wrong, in words, in the last call on the
 * calling thread that returned a negative errno. It names the function, the
 * argument, its value and the rule it broke, e.g.
 * `rbus_subscribe: pattern 'orders.>.x': '>' must be the last token (offset 7)`
 * or `rbus_publish_ex: key_len 300 outside 1..255`; for failures with
 * nothing more to say, the function's name and the rbus_strerror() text.
 *
 *  - Per thread, like errno: every public rbus_* function of the core sets
 *    it when it returns a negative errno (rbus_nats_* functions do not,
 *    though core calls they make on the calling thread may). Calls that
 *    succeed (0, a positive count, RBUS_DUPLICATE) leave it unchanged, so
 *    read it right after the failure.
 *  - Never NULL: "" while no call on this thread has failed, and at the
 *    start of each handler call of a dispatcher (the dispatcher's own calls
 *    on its worker threads do not show through).
 *  - The text stays as it is until another rbus_* call on this thread
 *    fails (rbus_strerror, the accessors and calls that succeed never
 *    change it); copy it to keep it past that.
 *  - At most 255 bytes. Strings from the caller appear in single quotes,
 *    with a quote or backslash escaped, bytes outside printable ASCII as
 *    \\xNN, and a long one cut, "..." following its closing quote.
 *  - For people, not programs: the wording may change in any release;
 *    decide on the errno.
 *
 * Setting it costs nothing on success; for a receive's -EAGAIN or
 * -ETIMEDOUT it is one pointer store.
 */
RBUS_API const char *rbus_last_error_detail(void);

/* ------------------------------------------------------------------ bus */

/** Memory hooks. Both functions must be set, or the pointer left NULL. */
typedef struct rbus_allocator {
    void *(*alloc)(size_t size, void *arg); /**< like malloc */
    void (*free)(void *ptr, void *arg);     /**< like free */
    void *arg;                              /**< passed to both */
} rbus_allocator;

/**
 * rbus_config.time_source: the clock that stamps each message's acceptance
 * time (rbus_msg_time_ns) and that the bus's message-age figures (the
 * queue_wait histogram, lag_ns) and key windows (dedup_window_ns) read.
 */
typedef enum rbus_time_source {
    /** CLOCK_MONOTONIC (default): nanoseconds. Reading it is one of the
     *  larger costs of a publish (about a quarter of it on a VM). */
    RBUS_TIME_PRECISE = 0,
    /** CLOCK_MONOTONIC_COARSE: the kernel's tick (1 to 10 ms, often 4), at
     *  a fraction of the cost. Every message-age figure then has that
     *  resolution: ages shorter than a tick read as 0 or one tick. For
     *  throughput-bound publishers that do not need sub-millisecond ages. */
    RBUS_TIME_COARSE = 1,
} rbus_time_source;

/**
 * Bus settings for rbus_create(). Initialise with rbus_config_init() (or
 * zero it: 0 means "default" in every field), then change what you need.
 * rbus_create() copies it.
 */
typedef struct rbus_config {
    uint32_t default_capacity;       /**< messages per subscription when the sub asks 0;
                                    default 1024; at most RBUS_MAX_CAPACITY */
    uint32_t max_payload;            /**< largest payload in bytes; default 65536; at most
                                    RBUS_MAX_PAYLOAD_LIMIT; larger publishes -> -EMSGSIZE */
    uint32_t dedup_keys;             /**< idempotency keys remembered per topic; default 4096;
                                    at most RBUS_MAX_DEDUP_KEYS; RBUS_DEDUP_OFF = keys are
                                    carried, never deduplicated */
    uint64_t dedup_window_ns;        /**< a key is forgotten this long after it was accepted;
                                    0 (default) = only dedup_keys bounds it */
    uint32_t max_topics;             /**< default 65536 */
    const rbus_allocator *allocator; /**< NULL = malloc/free; the struct is copied */
    bool drop_advisories;            /**< publish drop advisories on RBUS_ADVISORY_DROPS
                                    (rbus_drop_advisory): a bus thread, started only when
                                    true, reads every subscription's drop counters once per
                                    advisory_interval_ns; default false */
    uint64_t advisory_interval_ns;   /**< at most one advisory per subscription per interval;
                                    0 = 1 s; from 1 ms to 1 hour */
    uint32_t retain;                 /**< retained history: how many of its newest messages each
                                    topic keeps for late subscribers (rbus_sub_opts.replay)
                                    and rbus_topic_last, unless rbus_topic_opts.retain says
                                    otherwise; 0 (default) = none; at most RBUS_MAX_RETAIN */
    rbus_time_source time_source;    /**< the clock messages are stamped with; default
                                    RBUS_TIME_PRECISE */
} rbus_config;

/** Largest history a topic keeps (rbus_config.retain, rbus_topic_opts.retain), and
 *  largest rbus_sub_opts.replay. */
#define RBUS_MAX_RETAIN 65536u

/** The topic drop advisories are published on. */
#define RBUS_ADVISORY_DROPS "_rbus.drops"

/**
 * A drop advisory: the payload of each message on RBUS_ADVISORY_DROPS,
 * published by the bus (with rbus_config.drop_advisories) for a
 * subscription that dropped messages since its last advisory. Fixed
 * layout: rbus_msg_data() of such a message is one of these, and its
 * size is sizeof(rbus_drop_advisory). Counts are the drops since the
 * previous advisory about the same subscription, by cause, exactly as its
 * rbus_sub_stats counts them; summed over its advisories they equal its
 * stats (up to drops made after the last one).
 */
typedef struct rbus_drop_advisory {
    uint64_t sub_id;          /**< rbus_sub_id of the subscription */
    uint64_t dropped_newest;  /**< since the previous advisory about it */
    uint64_t dropped_oldest;  /**< since the previous advisory about it */
    uint64_t dropped_timeout; /**< since the previous advisory about it */
    uint64_t dropped_closed;  /**< since the previous advisory about it */
    uint64_t since_ns;        /**< CLOCK_MONOTONIC time of the previous advisory about it,
                                   or of its subscribe */
    uint64_t time_ns;         /**< CLOCK_MONOTONIC time this one was made */
    char pattern[128];        /**< its pattern, NUL-terminated, cut at 127 bytes */
    char name[64];            /**< rbus_sub_opts.name, NUL-terminated, cut at 63 bytes */
} rbus_drop_advisory;

/** rbus_config_init: fills every field with its default. NULL is a no-op. */
RBUS_API void rbus_config_init(rbus_config *cfg);

/**
 * rbus_create: makes a bus. cfg NULL = defaults.
 * Returns 0, -EINVAL (out NULL, a field out of range, an allocator with a
 * NULL function) or -ENOMEM. On failure *out is left NULL (when out is not
 * NULL) and nothing is allocated.
 */
RBUS_API int rbus_create(rbus **out, const rbus_config *cfg);

/**
 * rbus_close: shuts the bus down for publishing. Returns once every publish
 * already in flight has finished. Afterwards publish, subscribe and
 * topic_open return -ESHUTDOWN; publishers blocked for room wake and return
 * -ESHUTDOWN (the subscriptions they could not reach count dropped_closed);
 * receivers get what is already queued, then -ESHUTDOWN for good. Stats,
 * receive, unsubscribe and destroy keep working. Idempotent; NULL is a no-op.
 */
RBUS_API void rbus_close(rbus *bus);

/**
 * rbus_destroy: closes if needed, releases every queued message and all
 * memory. Every other thread must have stopped using the bus, and every
 * message a user took must have been released. NULL is a no-op.
 */
RBUS_API void rbus_destroy(rbus *bus);

/* --------------------------------------------------------------- topics */

/**
 * rbus_topic_open: finds or creates the topic `name` (NATS subject syntax,
 * no wildcards). The same name always gives the same handle, valid until
 * rbus_destroy. Returns 0, -EINVAL, -ESHUTDOWN, -ENOSPC (max_topics reached)
 * or -ENOMEM, in that order of precedence.
 */
RBUS_API int rbus_topic_open(rbus *bus, const char *name, rbus_topic **out);

/** Options for rbus_topic_open_ex(); initialise with rbus_topic_opts_init(). */
typedef struct rbus_topic_opts {
    bool keyed; /**< the topic takes keyed publishes: build its idempotency-key
                     window now (about 130 bytes x dedup_keys, rounded up to a
                     power of two), so that no publish ever builds it. A topic
                     not declared keyed builds it at its first keyed publish,
                     and publishers racing that one wait for it, once. */
    double rate_per_s;   /**< rate limit: publishes a second this topic accepts, on
                              average; 0 (default) = no limit; else from
                              RBUS_MIN_RATE to RBUS_MAX_RATE, with rate_burst */
    uint32_t rate_burst; /**< how many publishes the limit accepts at once after a
                              quiet spell (the bucket's size); 1..RBUS_MAX_RATE_BURST
                              with a rate, 0 without */
    uint32_t retain;     /**< retained history: the topic keeps its newest `retain`
                              messages (1..RBUS_MAX_RETAIN) for rbus_sub_opts.replay and
                              rbus_topic_last; 0 (default) = the bus's rbus_config.retain.
                              Set once, like the rate limit */
} rbus_topic_opts;

/** Lowest rbus_topic_opts.rate_per_s (one publish in 1000 s). */
#define RBUS_MIN_RATE 0.001
/** Highest rbus_topic_opts.rate_per_s. */
#define RBUS_MAX_RATE 1e9
/** Largest rbus_topic_opts.rate_burst. */
#define RBUS_MAX_RATE_BURST 1000000u

/** rbus_topic_opts_init: fills every field with its default (nothing
 *  declared). NULL is a no-op. */
RBUS_API void rbus_topic_opts_init(rbus_topic_opts *opts);

/**
 * rbus_topic_open_ex: rbus_topic_open with options; NULL opts = defaults.
 * With opts->keyed, on a bus that deduplicates, the topic's window exists
 * when it returns 0: built now if the topic had none, or -ENOMEM and the
 * topic is not created (nor changed, if it existed). With a rate limit,
 * the topic has it when this returns 0 (a limit is set once: asking an
 * existing topic for another one is -EINVAL and changes nothing; asking
 * for the one it has is fine). A publish beyond the limit returns -EAGAIN
 * (rbus_publish_ex). Same errors, in the same order, as rbus_topic_open,
 * and -EINVAL for a rate or burst out of range, or one without the other.
 */
RBUS_API int rbus_topic_open_ex(rbus *bus, const char *name, const rbus_topic_opts *opts,
                                rbus_topic **out);

/**
 * rbus_topic_last: the newest message the topic's history holds (a last-
 * value cache: the last config, the last price), without subscribing.
 * On 0, *out is a reference of the caller's: rbus_msg_release it. Readers
 * of one topic's history take turns on a lock; publishers never take it.
 * Returns 0, -ENOENT (nothing retained yet) or -EINVAL (NULL argument, or
 * a topic that keeps no history); *out is NULL on failure.
 */
RBUS_API int rbus_topic_last(rbus_topic *topic, rbus_msg **out);

/**
 * rbus_topic_fd: publisher readiness for event loops, as a socket's
 * writability: a descriptor (an eventfd, level-triggered, close-on-exec)
 * that is readable while the topic is ready: every open RBUS_BLOCK
 * subscription that matches it is under its high watermark
 * (rbus_sub_opts). Once one reaches it, the topic is not ready until each
 * has drained below its low watermark, so a loop does not wake per
 * message. A topic no RBUS_BLOCK subscription matches is ready. Made at
 * the first call, the same one after; the bus owns it (rbus_destroy
 * closes it): poll it, never read or close it. The descriptor follows the
 * subscriptions within the time one change takes; a thread preempted in
 * the middle of updating it delays the update until it runs again, which
 * a loop that publishes with RBUS_PUB_ALL_OR_NONE meets as -EAGAIN (it
 * loses nothing). Returns the descriptor, or -EINVAL (NULL topic) or the
 * negative errno of eventfd().
 */
RBUS_API int rbus_topic_fd(rbus_topic *topic);

/**
 * rbus_topic_ready: the state rbus_topic_fd shows, read now from the
 * subscriptions: 1 ready, 0 not, -EINVAL for NULL.
 */
RBUS_API int rbus_topic_ready(rbus_topic *topic);

/** rbus_topic_name: the topic's name; NULL for NULL. */
RBUS_API const char *rbus_topic_name(const rbus_topic *topic);

/**
 * rbus_topic_valid: whether `name` is a valid topic name (NATS subject
 * syntax: dot-separated non-empty tokens, no wildcards, no whitespace, at
 * most RBUS_MAX_TOPIC_LEN bytes). NULL is invalid. Pure; thread-safe.
 */
RBUS_API bool rbus_topic_valid(const char *name);
/**
 * rbus_pattern_valid: whether `pattern` is a valid subscription pattern: a
 * topic name whose tokens may also be `*` (one token) or, last, `>` (one
 * or more tokens). NULL is invalid. Pure; thread-safe.
 */
RBUS_API bool rbus_pattern_valid(const char *pattern);

/**
 * rbus_pattern_match: whether `pattern` matches the topic `name`. Both must
 * be valid (invalid input gives false).
 */
RBUS_API bool rbus_pattern_match(const char *pattern, const char *name);

/* -------------------------------------------------------- subscriptions */

/**
 * Subscription settings for rbus_subscribe(). Initialise with
 * rbus_sub_opts_init() (or zero it: 0 means "default"); copied by the call.
 */
typedef struct rbus_sub_opts {
    uint32_t capacity;        /**< 0 = bus default. At least this many are queued;
                                   the effective figure is in the stats */
    rbus_overflow overflow;   /**< default RBUS_BLOCK */
    int64_t block_timeout_ns; /**< RBUS_BLOCK only: how long a publisher waits for
                                   room; 0 (default) or < 0 = forever */
    int64_t spin_ns;          /**< how long a waiting receiver (or blocked publisher)
                                   spins/yields before it sleeps; 0 = library default
                                   (RBUS_DEFAULT_SPIN_NS); < 0 = sleep at once */
    const char *name;         /**< optional label for stats; copied; <= 255 bytes */
    uint64_t max_bytes;       /**< byte bound: payload bytes queued at most; 0 (default) =
                                   none. The policy applies when either bound is reached:
                                   RBUS_BLOCK waits until the message's bytes fit,
                                   RBUS_DROP_NEWEST refuses it, RBUS_DROP_OLDEST evicts the
                                   oldest messages, as many as it takes, without waiting
                                   for anyone; only bytes that other publishes in flight
                                   have reserved cannot be evicted, and when they are in
                                   the way the new message is refused as drop-newest.
                                   At least the bus's max_payload, so that every message
                                   fits an empty queue. A publisher stalled in the middle
                                   of a put holds the bytes it reserved until it runs
                                   again, as it holds one slot of the capacity */
    uint32_t latency_sample;  /**< queue-wait histogram (rbus_sub_timing_get): 0 (default) =
                                   off; 1 = every message received; N = the messages whose
                                   sequence number is a multiple of N. It costs a receive one
                                   clock read and two atomic adds per sampled message
                                   (docs/metrics.md, "Cost") */
    uint32_t replay;          /**< late joiners: of each matching topic's retained history,
                                   the newest `replay` messages published before this
                                   subscription existed are queued first, in sequence order,
                                   and every later one live: each message is replayed or
                                   delivered live, never both, and from each publisher the
                                   subscription gets an unbroken run. 0 (default) = none; at
                                   most RBUS_MAX_RETAIN; -EINVAL on a bus where no topic
                                   retains anything. Never blocks: at most the capacity is
                                   replayed (the newest, across topics), and what did not fit
                                   is counted in rbus_sub_stats.replay_skipped */
    uint32_t high_watermark;  /**< RBUS_BLOCK only: publisher readiness (rbus_topic_fd).
                                   The subscription holds its topics "not ready" once
                                   its depth reaches this, until it has drained below
                                   low_watermark. 0 (default) = the effective capacity;
                                   at most the effective capacity */
    uint32_t low_watermark;   /**< RBUS_BLOCK only: see high_watermark. 0 (default) =
                                   high_watermark / 2 (at least 1); at most
                                   high_watermark */
} rbus_sub_opts;

/** The spin time used when rbus_sub_opts.spin_ns is 0 (docs/waiting.md). */
#define RBUS_DEFAULT_SPIN_NS INT64_C(20000)
/** Largest spin_ns accepted (1 s). */
#define RBUS_MAX_SPIN_NS INT64_C(1000000000)

/** rbus_sub_opts_init: fills the defaults. NULL is a no-op. */
RBUS_API void rbus_sub_opts_init(rbus_sub_opts *opts);

/**
 * rbus_subscribe: a new subscription to every topic, existing or future,
 * that `pattern` matches. It gets its own reference to every message
 * published to a matching topic after this call returned.
 * Returns 0, -EINVAL (bad pattern, opts out of range, capacity above
 * RBUS_MAX_CAPACITY, max_bytes not 0 and below the bus's max_payload),
 * -ESHUTDOWN or -ENOMEM.
 */
RBUS_API int rbus_subscribe(rbus *bus, const char *pattern, const rbus_sub_opts *opts,
                            rbus_sub **out);

/**
 * rbus_sub_close: graceful stop. Publishers skip the subscription from now
 * on; publishers waiting for its room wake (their message counts as
 * dropped_closed); receivers drain what is queued, then get -ESHUTDOWN; its
 * fd becomes readable. Idempotent. Returns 0 or -EINVAL.
 */
RBUS_API int rbus_sub_close(rbus_sub *sub);

/**
 * rbus_unsubscribe: rbus_sub_close, then wakes receivers blocked on it (they
 * return -ESHUTDOWN), waits until every thread has left calls on it,
 * releases the queued messages, closes its fd and retires the handle.
 * A call on the handle that began before it, even one whose thread was
 * preempted at its first instruction, never touches freed memory: it
 * answers as for a closed subscription (rbus_recv* -ESHUTDOWN, rbus_sub_close
 * 0, ...; docs/design.md, "Lifetimes"). Starting a new call on the handle
 * once it has returned is undefined. Returns 0, -EINVAL (NULL, or a second
 * rbus_unsubscribe of the handle), or -EBUSY while a dispatcher runs on the
 * subscription.
 */
RBUS_API int rbus_unsubscribe(rbus_sub *sub);

/** rbus_sub_id: unique in the bus, never reused, >= 1; 0 for NULL or once
 *  rbus_unsubscribe has begun. */
RBUS_API uint64_t rbus_sub_id(const rbus_sub *sub);

/* ----------------------------------------------------------- publishing */

/**
 * A message header, given to rbus_publish_ex in rbus_pub_opts.headers:
 * text metadata that travels with the message (W3C `traceparent`, a
 * tenant, a content type), copied with the payload, kept on retries and
 * dead letters, and carried by the NATS bridge as NATS headers (a NATS
 * header set is a map: across the bridge the values of one name keep
 * their order, but different names may come in another order).
 */
typedef struct rbus_header {
    const char *name;  /**< NUL-terminated; 1..RBUS_MAX_HEADER_NAME bytes of printable
                            ASCII (0x21..0x7e) except ':' */
    const void *value; /**< value_len bytes, none of them NUL, CR or LF; NULL only when
                            value_len is 0 */
    size_t value_len;  /**< bytes of value */
} rbus_header;

/** Most headers one message may carry. */
#define RBUS_MAX_HEADERS 16u
/** Longest header name, in bytes. */
#define RBUS_MAX_HEADER_NAME 64u
/** Most bytes of names and values together in one message's headers. */
#define RBUS_MAX_HEADER_BYTES 4096u

/**
 * Per-publish options for rbus_publish_ex(); zero it for defaults. Keys and
 * headers are copied into the message; the caller keeps its buffers.
 */
typedef struct rbus_pub_opts {
    const void *key;       /**< idempotency key, NULL = none; 1..255 bytes */
    size_t key_len;        /**< bytes of `key` (binary; compared exactly) */
    const void *order_key; /**< ordering key for dispatch, NULL = none; 1..255 bytes */
    size_t order_key_len;  /**< bytes of `order_key` */
    int64_t timeout_ns;    /**< 0 = each RBUS_BLOCK sub's own block_timeout_ns;
                                   > 0 = the shorter of this and the sub's own;
                                   < 0 = do not wait (full block subs: dropped_timeout) */
    uint32_t origin;       /**< publisher's tag carried to receivers; 0 = none */
    const rbus_header *headers; /**< header_count headers, copied into the message; names
                                     may repeat, and keep their order */
    size_t header_count;        /**< 0 (default) .. RBUS_MAX_HEADERS */
    uint32_t flags;             /**< RBUS_PUB_* flags; 0 = none */
} rbus_pub_opts;

/**
 * rbus_pub_opts.flags: queue to every matching RBUS_BLOCK subscription or
 * to none, without waiting. When one has no room (or its byte bound would
 * be passed), the publish returns -EAGAIN and changes nothing: nothing
 * queued anywhere, nothing counted, no sequence number, nothing retained
 * (a rate limit's token is spent, though). For an event loop that must
 * never block nor lose a message: it keeps the message and retries once
 * the topic is ready again (rbus_topic_fd). Drop-oldest and drop-newest
 * subscriptions apply their policies as usual. The one exception: a
 * publisher preempted between reserving its slot and writing it for longer
 * than a receiver waits for it (design.md, "Progress") loses that slot and
 * offers again; if the subscription is full by then, it waits for room
 * there as long as the subscription's block_timeout_ns allows (forever
 * without one), and only then counts a drop (dropped_timeout). Under a
 * byte bound a subscription can refuse (-EAGAIN) while under its high
 * watermark, which counts messages: the descriptor then stays readable.
 * Not with a key (-EINVAL): an accepted key cannot be taken back.
 */
#define RBUS_PUB_ALL_OR_NONE 1u

/** What one publish did, written by rbus_publish_ex() when asked. */
typedef struct rbus_pub_result {
    uint32_t matched; /**< open subscriptions whose pattern matched */
    uint32_t queued;  /**< of those, how many got this message queued */
    uint32_t dropped; /**< refused: drop-newest, block timeout, closed while waiting */
    uint32_t evicted; /**< older messages this publish evicted (drop-oldest) */
    bool duplicate;   /**< suppressed by the idempotency key; nothing offered, queued
                            or counted (matched 0) */
    uint64_t retry_after_ns; /**< refused by the topic's rate limit (-EAGAIN): how long
                                  until it accepts one again (HTTP 429's Retry-After);
                                  0 otherwise */
    uint32_t at_high_watermark;  /**< matched RBUS_BLOCK subscriptions at or over their high
                                      watermark after this publish (or, refused by
                                      RBUS_PUB_ALL_OR_NONE, the ones with no room): while
                                      any is, the topic is not ready (rbus_topic_fd) */
    uint64_t high_watermark_sub; /**< rbus_sub_id of the first of them; 0 = none */
} rbus_pub_result;

/**
 * rbus_publish / rbus_publish_ex: copies `len` bytes of `data` into one
 * immutable message and offers it to every matching open subscription.
 * The caller may reuse its buffer at once; it never owns the message.
 * Returns 0 when accepted (drops are counted, not errors), RBUS_DUPLICATE
 * when suppressed by its key, or in this order of precedence: -EINVAL
 * (NULL topic, data NULL with len > 0, key or order key NULL with a length
 * or a length outside 1..255, headers NULL with header_count > 0, more than
 * RBUS_MAX_HEADERS, a header name or value not as rbus_header says),
 * -EMSGSIZE (len > max_payload, or header names and values over
 * RBUS_MAX_HEADER_BYTES); such a refusal changes nothing. Then -ESHUTDOWN
 * (bus closed; or the bus was closed while this publish waited for room,
 * after it was accepted; an rbus_sub_close while it waits is only a drop,
 * counted as dropped_closed, and the publish returns 0), -ENOMEM (the
 * message pool could not grow, or the topic's key window could not be
 * built), -ENOBUFS (keyed: every slot of the topic's key window near this
 * key was remembered or held by another keyed publish in flight, which
 * takes hundreds of them at once; retry). Only 0 records a key.
 * On a topic with a rate limit (rbus_topic_open_ex), a publish beyond it
 * returns -EAGAIN after the argument checks and -ESHUTDOWN: it is counted
 * (rbus_topic_stats.rate_limited), queues nothing, takes no sequence
 * number and records no key (a duplicate's publish uses a token too), and
 * result->retry_after_ns says when the next would pass.
 * `result`, when not NULL, is always written; matched == queued + dropped.
 */
RBUS_API int rbus_publish(rbus_topic *topic, const void *data, size_t len);
/**
 * rbus_publish_ex: rbus_publish() with options (`opts` NULL = none): an
 * idempotency key (a key accepted on this topic within the window makes
 * this publish return RBUS_DUPLICATE, queueing nothing), an order key, a
 * wait bound for full RBUS_BLOCK subscriptions and an origin tag; and the
 * outcome in `result` (NULL = not wanted). Same returns as rbus_publish().
 * Thread-safe; it may block only on full RBUS_BLOCK subscriptions, for at
 * most the applicable timeout, and, once per topic not declared keyed
 * (rbus_topic_open_ex), while another thread's keyed publish builds the
 * topic's key window. Checking and recording a key takes no lock: a keyed
 * publisher preempted anywhere holds back no other.
 */
RBUS_API int rbus_publish_ex(rbus_topic *topic, const void *data, size_t len,
                             const rbus_pub_opts *opts, rbus_pub_result *result);

/** One payload of rbus_publish_batch(). */
typedef struct rbus_payload {
    const void *data; /**< NULL only when len is 0 */
    size_t len;       /**< bytes of data; at most max_payload */
} rbus_payload;

/**
 * rbus_publish_batch: publishes msgs[0..count) to one topic, in that
 * order, as that many rbus_publish_ex calls with the same `opts` would,
 * and at a fraction of their cost (docs/benchmarks.md): the batch goes
 * in chunks of 64, each with one read section, one acceptance time (every
 * message of a chunk carries the same rbus_msg_time_ns), consecutive
 * sequence numbers, and, on each subscription, runs of consecutive ring
 * positions reserved at once, so that a receiver can take them together.
 * Each message is offered to each subscription under its policy exactly
 * as a single publish is, counted the same way, and a publisher's messages
 * stay in order on every subscription. An RBUS_BLOCK subscription with no
 * room holds the rest of the chunk for it until there is room for each in
 * turn; its block timeout (or opts->timeout_ns) bounds that wait as a
 * whole, and when it runs out every message still waiting is a drop
 * (dropped_timeout). A publisher stalled inside the call holds at most
 * 64 positions of a ring (a quarter of a small one) where a single publish
 * holds one (docs/design.md, "Progress"). On a topic with a rate limit or
 * a history the messages are published one at a time (each takes its
 * token and its place), with no gain.
 *
 * Returns how many messages were accepted: count, or fewer when a rate
 * limit (-EAGAIN, result->retry_after_ns), rbus_close (-ESHUTDOWN) or
 * memory (-ENOMEM) stopped the batch after the first; when none was
 * accepted, that negative errno. Before publishing anything it returns
 * -EINVAL (NULL topic, msgs NULL with count > 0, count above INT_MAX, a
 * payload's data NULL with a length, opts with a key, any flag, or an
 * order key or headers rbus_publish_ex refuses) or -EMSGSIZE (a payload
 * above max_payload, or headers over RBUS_MAX_HEADER_BYTES), which change
 * nothing; count 0 returns 0. `result`, when not NULL, is always written,
 * with sums over the messages: matched (subscriptions the messages were
 * offered to, counted once per message) == queued + dropped, and evicted;
 * the watermark fields are those after the last message.
 */
RBUS_API int rbus_publish_batch(rbus_topic *topic, const rbus_payload *msgs, size_t count,
                                const rbus_pub_opts *opts, rbus_pub_result *result);

/* ------------------------------------------------------------ receiving */

/**
 * rbus_recv: takes the oldest queued message. Returns 0 with *out set (the
 * caller owns one reference: rbus_msg_release it), -EAGAIN (empty and
 * timeout 0), -ETIMEDOUT, -ESHUTDOWN (closed and drained; final; it wins
 * over -EAGAIN/-ETIMEDOUT) or -EINVAL. Competing receivers each get
 * different messages.
 */
RBUS_API int rbus_recv(rbus_sub *sub, rbus_msg **out, int64_t timeout_ns);

/**
 * rbus_recv_batch: waits until at least one message is queued, then takes up
 * to `max` of those already queued. Returns the count (>= 1) or the same
 * errors as rbus_recv; max == 0 is -EINVAL.
 */
RBUS_API int rbus_recv_batch(rbus_sub *sub, rbus_msg **out, size_t max, int64_t timeout_ns);

/** rbus_msg_ref: one more reference; returns msg (NULL for NULL). */
RBUS_API rbus_msg *rbus_msg_ref(const rbus_msg *msg);
/**
 * rbus_msg_release: drops one reference; NULL is a no-op. Releasing a
 * reference twice, releasing a handler's message in the handler, or
 * releasing after rbus_destroy is a bug: builds with RBUS_CHECKED (Debug
 * builds) abort with a message naming it; other builds ignore a release
 * that finds no reference left (docs/design.md, "Misuse checks").
 */
RBUS_API void rbus_msg_release(rbus_msg *msg);

/**
 * rbus_msg_data: the payload, valid while the caller holds a reference;
 * non-NULL also when the size is 0; NULL for NULL. Messages are immutable:
 * every accessor is thread-safe and never fails.
 */
RBUS_API const void *rbus_msg_data(const rbus_msg *msg);
/** rbus_msg_header_count: how many headers the message carries; 0 for NULL. */
RBUS_API size_t rbus_msg_header_count(const rbus_msg *msg);

/**
 * rbus_msg_header_at: header i of the message (0-based, in the order they
 * were published): its name as a NUL-terminated string, and its value,
 * also followed by a NUL (so a text value can be used as a string) that
 * value_len does not count. Valid while the caller holds a reference.
 * Any of name, value, value_len may be NULL. Returns 0, -EINVAL (msg
 * NULL) or -ENOENT (no header i).
 */
RBUS_API int rbus_msg_header_at(const rbus_msg *msg, size_t i, const char **name,
                                const void **value, size_t *value_len);

/**
 * rbus_msg_header: the value of the message's first header named `name`
 * (exact, case-sensitive match), as rbus_msg_header_at gives it. Returns
 * 0, -EINVAL (msg or name NULL) or -ENOENT (no such header).
 */
RBUS_API int rbus_msg_header(const rbus_msg *msg, const char *name, const void **value,
                             size_t *value_len);

/** rbus_msg_size: the payload's size in bytes; 0 for NULL. */
RBUS_API size_t rbus_msg_size(const rbus_msg *msg);
/** rbus_msg_topic: the concrete topic it was published to (valid until
 *  rbus_destroy); NULL for NULL. */
RBUS_API const char *rbus_msg_topic(const rbus_msg *msg);
/** rbus_msg_seq: its per-topic sequence number, from 1; 0 for NULL. */
RBUS_API uint64_t rbus_msg_seq(const rbus_msg *msg);
/** rbus_msg_time_ns: when the publish was accepted, by the bus's time_source
 *  (CLOCK_MONOTONIC unless the bus chose RBUS_TIME_COARSE); 0 for NULL. */
RBUS_API uint64_t rbus_msg_time_ns(const rbus_msg *msg);
/** The idempotency key: NULL and *key_len 0 if none; key_len may be NULL. */
RBUS_API const void *rbus_msg_key(const rbus_msg *msg, size_t *key_len);
/** The order key, likewise. */
RBUS_API const void *rbus_msg_order_key(const rbus_msg *msg, size_t *key_len);
/** rbus_msg_origin: the publisher's rbus_pub_opts.origin tag; 0 if none or NULL. */
RBUS_API uint32_t rbus_msg_origin(const rbus_msg *msg);
/** 1 on the first delivery (always, for messages from rbus_recv*); 0 for NULL. */
RBUS_API uint32_t rbus_msg_attempt(const rbus_msg *msg);
/** Dead letters: the topic the message failed on; otherwise NULL. */
RBUS_API const char *rbus_msg_origin_topic(const rbus_msg *msg);

/* ------------------------------------------------ event-loop integration */

/**
 * rbus_sub_fd: a descriptor owned by the subscription (the same one on every
 * call; non-blocking, close-on-exec; never read, write or close it) for
 * poll/epoll loops, level-triggered: it never stays unreadable while a
 * message is queued, and may stay readable until some rbus_recv*(sub, .., 0)
 * returns -EAGAIN. rbus_unsubscribe closes it. Returns the fd, -EINVAL,
 * -ESHUTDOWN (rbus_unsubscribe has begun), or a negative errno from
 * eventfd().
 */
RBUS_API int rbus_sub_fd(rbus_sub *sub);

/* ----------------------------------------------------------- statistics */

/** A subscription's counters, from rbus_sub_stats_get(). */
typedef struct rbus_sub_stats {
    uint64_t offered;            /**< once per (publish, sub) matched */
    uint64_t received;           /**< taken out by rbus_recv* */
    uint64_t dropped_newest;     /**< refused when full (RBUS_DROP_NEWEST) */
    uint64_t dropped_oldest;     /**< evicted (RBUS_DROP_OLDEST) */
    uint64_t dropped_timeout;    /**< block wait ran out, or the publish would not wait */
    uint64_t dropped_closed;     /**< a waiting publisher was woken by close */
    uint64_t publisher_waits;    /**< (publish, sub) pairs that began to wait for room */
    uint32_t publishers_waiting; /**< publishers waiting for room now (RBUS_BLOCK) */
    uint64_t longest_wait_ns;    /**< how long the one waiting longest has waited so far;
                                      0 when none waits. A consumer that hangs under
                                      RBUS_BLOCK with no block_timeout_ns shows here as
                                      a wait that only grows (docs/guide.md) */
    uint32_t depth;              /**< messages queued now, read from the queue itself */
    uint32_t high_water;         /**< largest depth seen right after an enqueue */
    uint32_t capacity;           /**< effective capacity */
    uint64_t bytes;              /**< with max_bytes: payload bytes queued now, and of messages
                                   being queued; 0 without a byte bound */
    uint64_t max_bytes;          /**< the byte bound; 0 = none */
    /* What threads stalled inside calls cost (docs/design.md, "Progress"): */
    uint64_t skipped;  /**< slots passed over because their publisher, preempted
                            between reserving and writing, had not written them */
    uint64_t holes;    /**< positions passed because such a publisher still held
                            the slot */
    uint64_t reoffers; /**< messages offered again by a publisher whose slot was
                            skipped (each still counts once in offered) */
    uint64_t replayed; /**< retained messages queued at subscribe
                                  (rbus_sub_opts.replay); counted in offered too */
    uint64_t replay_skipped; /**< retained messages the replay asked for that did not fit
                                  (capacity, max_bytes, or evicted by drop-oldest
                                  publishes before the subscribe returned); not offered */
    uint32_t high_watermark; /**< effective (RBUS_BLOCK; 0 for the other policies) */
    uint32_t low_watermark;  /**< effective (RBUS_BLOCK; 0 for the other policies) */
    bool over_high;          /**< reached high_watermark and not yet drained below
                                  low_watermark: its topics are not ready */
    uint64_t high_crossings; /**< times it reached high_watermark (from under it) */
    uint64_t low_crossings;  /**< times it then drained below low_watermark */
} rbus_sub_stats;

/** A topic's counters, from rbus_topic_stats_get(). */
typedef struct rbus_topic_stats {
    uint64_t published;     /**< accepted publishes (== last sequence number) */
    uint64_t duplicates;    /**< suppressed by idempotency key */
    uint32_t subscriptions; /**< matching open subscriptions now */
    uint64_t rate_limited;  /**< publishes refused by the topic's rate limit */
    uint32_t retain;        /**< messages its history keeps; 0 = none */
    uint32_t retained;      /**< messages its history holds now (at most retain) */
} rbus_topic_stats;

/** A bus's figures, from rbus_bus_stats_get(). */
typedef struct rbus_bus_stats {
    uint64_t held;          /**< message references the application holds now: taken by
                              rbus_recv*, added by rbus_msg_ref, not yet released
                              (a dispatcher's own are its in_hand; a second release of
                              one reference is not counted) */
    uint32_t topics;        /**< topics opened */
    uint32_t subscriptions; /**< subscriptions not yet unsubscribed */
} rbus_bus_stats;

/**
 * rbus_bus_stats_get: the bus's figures into *out. A leak of messages
 * (an rbus_msg_release forgotten) shows as `held` growing; builds with
 * RBUS_CHECKED also say at rbus_destroy how many are still held. Takes
 * the bus's registry lock briefly; publishes and receives never wait for
 * it, except a thread's first call on the bus, which registers the thread
 * under it. Returns 0 or -EINVAL.
 */
RBUS_API int rbus_bus_stats_get(rbus *bus, rbus_bus_stats *out);

/**
 * rbus_sub_stats_get: a snapshot of the subscription's counters into *out.
 * Counters only grow. With no publish, receive or unsubscribe in flight on
 * the subscription they are exact and offered == received + depth +
 * dropped_newest + dropped_oldest + dropped_timeout + dropped_closed; while
 * calls are in flight the fields are not one consistent picture. Never
 * blocks publishers or receivers, and never waits for a subscribe or close
 * in progress. Returns 0, -EINVAL, or -ESHUTDOWN (rbus_unsubscribe has
 * begun; *out zeroed).
 */
RBUS_API int rbus_sub_stats_get(const rbus_sub *sub, rbus_sub_stats *out);

/** Finite buckets of an rbus_hist: bucket i counts values up to
 *  rbus_hist_bound_ns(i) = 256 ns << i, from 256 ns to 8.6 s. */
#define RBUS_HIST_FINITE 26u
/** Buckets of an rbus_hist: the finite ones, then +Inf. */
#define RBUS_HIST_BUCKETS (RBUS_HIST_FINITE + 1u)

/**
 * A latency histogram snapshot, with cumulative buckets as Prometheus has
 * them: bucket[i] counts the values <= rbus_hist_bound_ns(i), the last
 * (+Inf) all of them, and count == bucket[RBUS_HIST_BUCKETS - 1] always.
 * sum_ns is read apart from the buckets, so while values are recorded it
 * may include a few that the buckets do not yet (or the other way).
 */
typedef struct rbus_hist {
    uint64_t count;                     /**< values recorded */
    uint64_t sum_ns;                    /**< their sum, ns */
    uint64_t bucket[RBUS_HIST_BUCKETS]; /**< cumulative counts by upper bound */
} rbus_hist;

/** rbus_hist_bound_ns: the upper bound of bucket i in ns (256 << i), or
 *  UINT64_MAX for the +Inf bucket and beyond. */
RBUS_API uint64_t rbus_hist_bound_ns(unsigned i);

/**
 * rbus_hist_quantile_ns: the q-quantile (0 <= q <= 1) of a snapshot, by
 * linear interpolation inside the bucket that holds it, as Prometheus's
 * histogram_quantile() computes it; a quantile in the +Inf bucket gives
 * the largest finite bound. Returns 0 for NULL, an empty histogram or q
 * outside [0, 1] (or NaN).
 */
RBUS_API uint64_t rbus_hist_quantile_ns(const rbus_hist *h, double q);

/** A subscription's latencies, from rbus_sub_timing_get(). */
typedef struct rbus_sub_timing {
    rbus_hist queue_wait;     /**< age of messages when received: receive time minus
                                   acceptance (rbus_msg_time_ns); only with
                                   rbus_sub_opts.latency_sample, sampled as it says */
    rbus_hist publisher_wait; /**< how long each publish that found the subscription full
                                   (RBUS_BLOCK) waited, whether it then queued, timed out
                                   or met a close; only that slow path pays for it */
    uint64_t lag_ns;          /**< lag: the age of the oldest message queued now; 0 when
                                   none is */
    uint32_t depth;           /**< messages queued now */
} rbus_sub_timing;

/**
 * rbus_sub_timing_get: the subscription's latency histograms and its lag
 * now into *out. Never blocks publishers or receivers. Returns 0, -EINVAL,
 * or -ESHUTDOWN (rbus_unsubscribe has begun; *out zeroed).
 */
RBUS_API int rbus_sub_timing_get(const rbus_sub *sub, rbus_sub_timing *out);

/**
 * rbus_topic_stats_get: the topic's counters into *out (published ==
 * the last sequence number taken). Never blocks publishers. Returns 0 or
 * -EINVAL.
 */
RBUS_API int rbus_topic_stats_get(const rbus_topic *topic, rbus_topic_stats *out);

/* -------------------------------------------------------------- handlers */

/**
 * A handler, called by a dispatcher's worker with one message: return >= 0
 * when done, < 0 when it failed and should be retried later. It must not
 * release `msg` (rbus_msg_ref it to keep it past the call).
 */
typedef int (*rbus_handler_fn)(const rbus_msg *msg, void *arg);

/** Dispatcher settings for rbus_dispatch_start(); zero it for defaults. */
typedef struct rbus_dispatch_opts {
    unsigned threads;              /**< worker threads; 0 = 1; at most RBUS_MAX_DISPATCH_THREADS */
    bool ordered_by_key;           /**< messages with the same ORDER key run one at a time,
                                        in queue order; messages without one run freely */
    unsigned max_attempts;         /**< attempts per message; 0 = 1 (no retry) */
    uint64_t backoff_initial_ns;   /**< 0 = 1 ms */
    uint64_t backoff_max_ns;       /**< 0 = 1 s */
    const char *dead_letter_topic; /**< after the last failed attempt the message is published
                                        there; NULL = dropped and counted */
    uint32_t max_in_hand;          /**< messages the dispatcher may hold (running, parked behind
                                        their key, waiting for a retry); at the cap workers take
                                        no new ones; 0 = 1024; at most RBUS_MAX_CAPACITY */
} rbus_dispatch_opts;

/** Most worker threads one dispatcher may run. */
#define RBUS_MAX_DISPATCH_THREADS 256u

typedef struct rbus_dispatcher rbus_dispatcher; /**< a running dispatcher */

/** A dispatcher's counters, from rbus_dispatch_stats_get(). */
typedef struct rbus_dispatch_stats {
    uint64_t handled;         /**< handler returned >= 0 */
    uint64_t failed_attempts; /**< handler returned < 0 */
    uint64_t retried;         /**< failed attempts that were given another */
    uint64_t dead_lettered;   /**< published to the dead-letter topic */
    uint64_t dropped;         /**< failed for good with no dead-letter topic, or the
                                   dead-letter publish failed */
    uint32_t in_hand;         /**< messages held now */
} rbus_dispatch_stats;

/** rbus_dispatch_opts_init: fills the defaults. NULL is a no-op. */
RBUS_API void rbus_dispatch_opts_init(rbus_dispatch_opts *opts);

/**
 * rbus_dispatch_start: starts worker threads (named "rbus-<sub id>", all
 * signals blocked) that receive from `sub` and call `fn(msg, arg)`. A
 * failed call (< 0) is retried up to max_attempts in all, the delay before
 * attempt k+1 uniform in [0, min(backoff_max_ns, backoff_initial_ns *
 * 2^(k-1))] (full jitter); a message waiting for a retry waits aside, so
 * other messages go on, except later ones with the same order key when
 * ordered_by_key. After the last failed attempt the message goes to the
 * dead-letter topic (payload, keys and origin tag kept, never deduplicated;
 * rbus_msg_origin_topic and rbus_msg_attempt tell its reader where it
 * failed and how often), or is dropped and counted. One dispatcher per
 * subscription; while it runs, rbus_unsubscribe returns -EBUSY.
 * A dead-letter publish waits at most 100 ms for room in a full RBUS_BLOCK
 * subscription of the dead-letter topic (so a stuck reader cannot hang
 * rbus_dispatch_stop), after which that subscription counts it as
 * dropped_timeout.
 * Returns 0, -EINVAL (NULL argument, opts out of range, invalid dead-letter
 * topic, or one the subscription itself matches), -EBUSY (the subscription
 * has a dispatcher), -ESHUTDOWN (the bus is closed, or rbus_unsubscribe of
 * the subscription has begun), -ENOMEM, or -EAGAIN (threads could not be
 * created). On failure no dispatcher remains; if thread creation failed
 * half-way, the workers already started finished what they had taken
 * before the call returned.
 */
RBUS_API int rbus_dispatch_start(rbus_dispatcher **out, rbus_sub *sub, rbus_handler_fn fn,
                                 void *arg, const rbus_dispatch_opts *opts);

/**
 * rbus_dispatch_stop: stops taking messages, lets running handlers finish,
 * then runs every message it holds — pending retries at once (the rest of
 * their backoff ignored) and messages parked behind their order key —
 * until each succeeds or becomes a dead letter (or is dropped), joins the
 * workers and frees the dispatcher. Messages still queued in the
 * subscription stay there (rbus_dispatch_drain handles them first). Its
 * counters stay in rbus_stats_prometheus, added to the subscription's
 * dispatcher totals. Returns 0, -EINVAL (NULL, or stop or drain was already
 * called on it), or -EDEADLK when called from one of its own handlers.
 * A stats call on the dispatcher that began before stop returned never
 * touches freed memory; starting one after is undefined.
 */
RBUS_API int rbus_dispatch_stop(rbus_dispatcher *d);

/**
 * rbus_dispatch_drain: the graceful stop. Handles every message queued in
 * the subscription when it was called, as the dispatcher always does
 * (ordered keys kept, retries after their backoff, dead letters), then
 * stops as rbus_dispatch_stop does. Messages published after the call may
 * be handled too; a publish in flight at the call, whose publisher was
 * preempted before it finished, is waited for or skipped as a receive
 * would. When timeout_ns runs out first (< 0 = wait forever, 0 = do not
 * wait) it stops at once, as rbus_dispatch_stop does: what workers hold
 * is finished (retries at once), the rest stays queued, and it returns
 * -ETIMEDOUT. Either way the dispatcher is gone when it returns, and its
 * final counters are written to `final` (NULL = not wanted; in_hand 0;
 * zeroed on -EINVAL and -EDEADLK), counting what the stop itself did.
 * Closing the subscription first (rbus_sub_close) makes the drain end once
 * the subscription is empty. Returns 0, -ETIMEDOUT, -EINVAL (NULL, or stop
 * or drain was already called on it), or -EDEADLK from one of its own
 * handlers (the dispatcher keeps running).
 */
RBUS_API int rbus_dispatch_drain(rbus_dispatcher *d, int64_t timeout_ns,
                                 rbus_dispatch_stats *final);

/** rbus_dispatch_stats_get: the dispatcher's counters. Returns 0, -EINVAL, or
 *  -ESHUTDOWN when rbus_dispatch_stop finished meanwhile (*out zeroed). */
RBUS_API int rbus_dispatch_stats_get(const rbus_dispatcher *d, rbus_dispatch_stats *out);

/** A dispatcher's latencies, from rbus_dispatch_timing_get(). */
typedef struct rbus_dispatch_timing {
    rbus_hist handler;     /**< time inside the handler, per call (every attempt) */
    rbus_hist start_delay; /**< from a message's receive to its first handler call: time
                                parked behind its order key or waiting for a worker */
} rbus_dispatch_timing;

/** rbus_dispatch_timing_get: the dispatcher's latency histograms. Returns
 *  0, -EINVAL, or -ESHUTDOWN when rbus_dispatch_stop finished meanwhile
 *  (*out zeroed). */
RBUS_API int rbus_dispatch_timing_get(const rbus_dispatcher *d, rbus_dispatch_timing *out);

/**
 * rbus_stats_prometheus: writes every topic's and subscription's counters,
 * and for each subscription that has or had a dispatcher, the counters of
 * its dispatchers (stopped ones included), in the Prometheus text
 * exposition format (the families and their labels are listed in
 * docs/metrics.md). Label values
 * are escaped; each family's HELP and TYPE come once, its samples together.
 *
 * Like snprintf: returns the length of the whole text (without the NUL)
 * even when `size` is too small, and always NUL-terminates when size > 0;
 * the length can grow between two calls. Errors: -EINVAL (bus NULL, or buf
 * NULL with size > 0), -EOVERFLOW (the text exceeds INT_MAX). Thread-safe;
 * it takes the bus's registry lock briefly (publishes and receives never
 * wait for it, except a thread's first call on the bus, which registers
 * the thread under it), and never waits for a subscribe or close in
 * progress.
 */
RBUS_API int rbus_stats_prometheus(rbus *bus, char *buf, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* RINGBUS_H */
