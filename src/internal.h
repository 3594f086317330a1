/*
 * internal.h - private types shared between the rooms of src/. Nothing here
 * is public; internal non-static names use the rbus__ prefix.
 *
 * The files of src/ and what each owns are listed in docs/design.md#rooms.
 */
#ifndef RBUS_INTERNAL_H
#define RBUS_INTERNAL_H

#include "ringbus.h"
#include "pause.h"

#include <ck_epoch.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define RBUS__CACHELINE 64
#define RBUS__CACHE_ALIGNED _Alignas(RBUS__CACHELINE)

/* A CPU pause for a bounded spin. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RBUS__CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define RBUS__CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define RBUS__CPU_RELAX() ((void)0)
#endif

#if defined(__GNUC__)
#define RBUS__NOINLINE __attribute__((noinline))
#define RBUS__ALWAYS_INLINE inline __attribute__((always_inline))
#define RBUS__LIKELY(x) __builtin_expect(!!(x), 1)
#define RBUS__UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define RBUS__NOINLINE
#define RBUS__ALWAYS_INLINE inline
#define RBUS__LIKELY(x) (x)
#define RBUS__UNLIKELY(x) (x)
#endif

/*
 * ThreadSanitizer cannot see ck's synchronisation (ck_pr is volatile
 * accesses plus asm fences). ck_epoch is the one ck structure we use; the
 * edge it provides (a read section ends before the grace period that
 * frees what it read) is told to TSan by hand, see rbus__read_end().
 */
#if defined(RBUS_TSAN)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define RBUS__TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#define RBUS__TSAN_RELEASE(p) __tsan_release((void *)(p))
#else
#define RBUS__TSAN_ACQUIRE(p) ((void)0)
#define RBUS__TSAN_RELEASE(p) ((void)0)
#endif

struct rbus_thread_state;

/* ------------------------------------------------------------- bus.c */

void *rbus__alloc(rbus *bus, size_t size);
void *rbus__zalloc(rbus *bus, size_t size);
void rbus__free(rbus *bus, void *ptr);
/* Cache-line aligned memory through the user's hooks (which promise only
 * malloc's alignment): over-allocates and keeps the original pointer. */
void *rbus__zalloc_aligned(rbus *bus, size_t size);
void rbus__free_aligned(rbus *bus, void *ptr);
char *rbus__strdup(rbus *bus, const char *s);
/* Waits until every epoch read section that began before the call has ended,
 * yielding and then sleeping between polls. Never call it holding bus->lock
 * (stats, Prometheus and topic_open take that lock and must not wait for a
 * grace period); callers that change routing hold bus->route_lock. */
void rbus__synchronize(rbus *bus);

/* Retired handle structs (subscriptions, dispatchers), oldest first, kept
 * until rbus_destroy (the lifetimes comment at struct rbus_sub). Each is
 * linked through its own `pool_next` pointer, at byte offset `link`. */
struct rbus_pool {
    void *head, *tail;
    uint32_t len;
};
/* The oldest struct once more than RBUS__POOL_HOLD wait, else NULL. Takes
 * bus->lock. */
void *rbus__pool_take(rbus *bus, struct rbus_pool *pool, size_t link);
/* Appends one. Takes bus->lock. */
void rbus__pool_put(rbus *bus, struct rbus_pool *pool, void *item, size_t link);
/* Removes and returns the oldest, or NULL: for rbus_destroy, no lock. */
void *rbus__pool_drain(struct rbus_pool *pool, size_t link);

/* Misuse that memory safety cannot survive (a second release of a
 * reference, a release after rbus_destroy): RBUS_CHECKED builds abort
 * with a message naming the call; other builds never call it. */
#if defined(RBUS_CHECKED)
_Noreturn void rbus__misuse(const char *call, const char *what);
#endif

/* ----------------------------------------------------------- error.c */

/* rbus_last_error_detail's text, NULL for "" (error.c). Written only when a
 * public call fails: a call that succeeds never touches it. */
extern _Thread_local const char *rbus__detail;
#define RBUS__DETAIL_CAP 256 /* the formatted text's buffer, NUL included */
#define RBUS__QUOTE_CAP 72   /* a quoted user string, NUL included */

#if defined(__GNUC__)
#define RBUS__PRINTF(fmt, args) __attribute__((format(printf, fmt, args), cold))
#else
#define RBUS__PRINTF(fmt, args)
#endif

/* Sets the detail to a static text and returns rc: one pointer store, no
 * formatting, for failures that event loops meet all the time (a receive's
 * -EAGAIN and -ETIMEDOUT). */
static inline int rbus__fail_static(int rc, const char *text)
{
    rbus__detail = text;
    return rc;
}
/* Formats the detail into this thread's buffer (cut to fit) and returns rc. */
int rbus__fail(int rc, const char *fmt, ...) RBUS__PRINTF(2, 3);
/* Puts "fn: " before the detail: bodies shared by two public functions
 * (topic_open, publish) set the rest, and their callers add their name. */
void rbus__fail_prefix(const char *fn);
/* s for a detail, into dst (RBUS__QUOTE_CAP bytes): in single quotes, a
 * quote or backslash escaped, bytes outside printable ASCII as \xNN, cut
 * with "..." after the closing quote when long. Reads no further than it
 * writes. Returns dst. */
const char *rbus__quote(char *dst, const char *s);

/* ------------------------------------------------------------ wait.c */

/*
 * An event count on a futex (wait.c explains the word). For a waiter:
 *     seen = rbus__event_prepare(ev);   announces itself, then a full fence
 *     if (condition holds) ...          nothing to undo
 *     else rbus__event_wait(ev, seen, deadline);
 * and for a signaller: make the condition true, then (after a StoreLoad
 * barrier of its own) rbus__event_signal(), which makes no system call and
 * writes nothing when nobody announced itself.
 */
struct rbus_event {
    _Atomic uint32_t word;
};

uint32_t rbus__event_prepare(struct rbus_event *ev);
/* Returns 0 when woken (or spuriously), -ETIMEDOUT when the deadline passed.
 * deadline_ns < 0 = no deadline. */
int rbus__event_wait(struct rbus_event *ev, uint32_t seen, int64_t deadline_ns);
/* Wakes every waiter if any announced itself. */
void rbus__event_signal(struct rbus_event *ev);
/* Wakes one waiter if any announced itself (wait.c: the woken one hands
 * on what it leaves with rbus__event_wake_one). */
void rbus__event_signal_one(struct rbus_event *ev);
/* Wakes one sleeper, if any, changing nothing else. */
void rbus__event_wake_one(struct rbus_event *ev);
/* Wakes every waiter, unconditionally (close paths). */
void rbus__event_broadcast(struct rbus_event *ev);

static inline bool rbus__event_has_waiters(struct rbus_event *ev)
{
    /* Relaxed: the caller provides the StoreLoad ordering (see above). */
    return atomic_load_explicit(&ev->word, memory_order_relaxed) & 1u;
}

/* How long a waiter sleeps at most when the other side is half-way through a slot
 * (a producer between reserving and writing it, a consumer between taking
 * and releasing it): that thread may have missed our sleep flag, so we do
 * not sleep untimed. It only matters if it was preempted there. */
#define RBUS__SLOT_RETRY_NS INT64_C(200000)

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t rbus__now_ns(void);
/* A message time on `bus` (rbus_config.time_source): acceptance stamps,
 * and the "now" that message ages and key windows are measured against. */
int64_t rbus__stamp_ns(const rbus *bus);
/* now + timeout, saturating; timeout < 0 gives -1 (no deadline). */
int64_t rbus__deadline(int64_t timeout_ns);
/* The earlier of two deadlines, where < 0 means none. */
static inline int64_t rbus__sooner(int64_t a, int64_t b)
{
    return a < 0 || (b >= 0 && b < a) ? b : a;
}
/* One step of a bounded spin: a CPU pause, and every so often a yield so a
 * preempted peer on an oversubscribed machine gets to run. */
void rbus__spin_step(unsigned iteration);
/* The same, for a wait that ends at deadline_ns (< 0: none): no yield
 * within a few time slices of it. */
void rbus__spin_step_before(unsigned iteration, int64_t now_ns, int64_t deadline_ns);
/* The spin_ns phase of a receiver's wait, one step at a time (wait.c).
 * One per wait: steps 0, pause_only false, the wait's deadline, and the
 * subscription, whose yield back-off outlives the wait. */
struct rbus_spin {
    unsigned steps;
    bool pause_only;  /* no more yields in this wait: one found nobody else
                        to run, or took a slice, or yields are backed off */
    int64_t deadline; /* the wait's, or -1: no yield close to it */
    rbus_sub *sub;
};
void rbus__spin_wait_step(struct rbus_spin *spin);

/* ----------------------------------------------------------- thread.c */

/*
 * Per (thread, bus) state. A publisher needs an epoch record to read a
 * topic's subscription list and a private message cache to allocate without
 * atomics; both live here. A thread finds its state through a small
 * thread-local table keyed by the bus id (ids are never reused, so a stale
 * entry can never match a new bus). When the thread exits its states are
 * unregistered and recycled by the next thread that needs one on that bus;
 * they are freed only by rbus_destroy.
 */
struct rbus_msg_cache;

struct rbus_pending {
    rbus_sub *sub;
    struct rbus_tally *tally; /* the state's own node for sub, or NULL */
    int64_t since_ns;         /* when the wait began: for publisher_wait */
    int64_t deadline_ns;      /* -1 = none */
    int64_t spin_ns;
    uint32_t next; /* a batch's next message for sub (0 for a single message) */
};

/*
 * A latency histogram (stats.c reads it): per-bucket counts, not
 * cumulative, so that a snapshot's count is the sum of what it read and
 * equals its +Inf bucket however many adds race with it. Relaxed adds:
 * the counts are statistics, ordered with nothing.
 */
struct rbus__hist {
    _Atomic uint64_t count[RBUS_HIST_BUCKETS];
    _Atomic uint64_t sum_ns;
};

/* Bucket of v ns: 0 for v <= 256, i for 256 << (i-1) < v <= 256 << i,
 * RBUS_HIST_FINITE (+Inf) above 256 << (RBUS_HIST_FINITE - 1). */
static inline unsigned rbus__hist_bucket(uint64_t v)
{
    if (v <= 256)
        return 0;
    unsigned i = 64u - (unsigned)__builtin_clzll((v - 1) >> 8);
    return i < RBUS_HIST_FINITE ? i : RBUS_HIST_FINITE;
}

static inline void rbus__hist_add(struct rbus__hist *h, int64_t ns)
{
    uint64_t v = ns > 0 ? (uint64_t)ns : 0;
    atomic_fetch_add_explicit(&h->count[rbus__hist_bucket(v)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, v, memory_order_relaxed);
}

/* A snapshot into the public, cumulative form. */
void rbus__hist_read(const struct rbus__hist *h, rbus_hist *out);
/* into += from (both quiescent, or under a lock their writers respect). */
void rbus__hist_merge(struct rbus__hist *into, const struct rbus__hist *from);

/*
 * The tallies a publish keeps for each subscription it offers to. A tally
 * that every publisher adds to with a locked instruction would cost each
 * offer a contended line (docs/design.md#counters). So each publisher state
 * keeps its own node per subscription, written only by that state (a
 * relaxed load and store: one writer, nothing to lose), and stats add the
 * nodes up. A subscription finds a state's node in its table by the
 * state's index (a bus numbers its states densely; states are recycled, so
 * the table is as long as the most threads that ever published at once).
 * `shared` in the subscription is the fallback when a node cannot be
 * allocated; there every add is atomic.
 */
struct rbus_tally {
    /* A line of its own: states' nodes are written by different cores. */
    _Alignas(RBUS__CACHELINE) _Atomic uint64_t offered;
    _Atomic uint64_t dropped_newest;
    /* Offers the overload fast path refused (topic.c): each is one offer
     * and one drop-newest, in one field so that a snapshot counts it in
     * both or in neither. */
    _Atomic uint64_t refused;
    _Atomic uint64_t dropped_oldest;
    /* When this state's publisher began waiting for room here (CLOCK_
     * MONOTONIC ns), 0 when it is not waiting: for the longest current
     * wait in the stats. Not kept in `shared`, which has many writers. */
    _Atomic int64_t wait_since;
};

/* A subscription's nodes by state index. Replaced by a longer copy when a
 * state with a larger index first offers; the one it replaced stays on
 * `retired` until the subscription is freed, as a publisher or a stats
 * reader may still be reading it. */
struct rbus_tally_table {
    uint32_t len;
    struct rbus_tally_table *retired;
    _Atomic(struct rbus_tally *) node[];
};

/* A position an all-or-none publish reserved in a subscription's ring
 * before it was accepted (sub.c): committed once every RBUS_BLOCK
 * subscription has one, else given back. */
struct rbus_ring_slot;
struct rbus_resv {
    struct rbus_ring_slot *slot;
    uint64_t pos;
};

struct rbus_thread_state {
    ck_epoch_record_t epoch; /* first: ck_epoch_recycle gives us this pointer */
    rbus *bus;
    struct rbus_thread_state *bus_next; /* every state of this bus, under bus->lock */
    struct rbus_msg_cache *cache;       /* msg.c */
    struct rbus_pending *pending;       /* scratch for a publish that waits */
    struct rbus_resv *resv;             /* scratch for an all-or-none publish */
    uint32_t pending_cap;               /* entries of both */
    /* A publish or receive made a subscription cross a watermark: the
     * topics' readiness descriptors are refreshed before the call returns
     * (outside any read section). */
    bool ready_dirty;
    uint32_t index; /* dense per bus, from 0: its place in tally tables */
    /* Held count (msg.c): references this state's threads took from
     * receives and rbus_msg_ref minus those they released. Written only
     * by the thread that owns the state; signed, since a reference may be
     * released on another thread. */
    _Atomic int64_t held;
};

/* The calling thread's state on `bus`, registering one at first use.
 * NULL only when memory runs out. */
struct rbus_thread_state *rbus__thread_get(rbus *bus);
/* Frees every state of the bus (destroy only). */
void rbus__thread_free_all(rbus *bus);
/* Makes room for n pending entries before a publish is accepted. */
int rbus__thread_reserve_pending(struct rbus_thread_state *th, uint32_t n);

/* Global registry of live buses, so that thread-exit cleanup never touches
 * a destroyed one. */
void rbus__registry_add(rbus *bus);
void rbus__registry_remove(rbus *bus);
/* Whether the bus with this id is alive (takes the registry lock). */
bool rbus__registry_alive(uint64_t bus_id);

/* ------------------------------------------------------------- msg.c */

struct rbus_msg {
    _Atomic uint32_t refs;
    uint8_t size_class;
    uint8_t key_len;
    uint8_t order_key_len;
    uint8_t header_count;
    uint16_t headers_size; /* bytes of the header block (msg.c) */
    uint32_t size;
    uint32_t origin;
    uint32_t attempt;
    struct rbus_thread_state *home; /* whose cache it returns to */
    uint64_t bus_id;                /* its bus, readable after the bus is gone (misuse checks) */
    struct rbus_msg *next_free;
    rbus_topic *topic;
    const char *origin_topic;
    uint64_t seq;
    /* On a topic with history: the generation of the subscription list it
     * was offered to (struct rbus_sublist), which tells a replay whether
     * the new subscription got it live (history.c). */
    uint64_t gen;
    /* Acceptance time. Atomic (relaxed) because a lag reading (stats.c)
     * may read a message's time while the message is being recycled: it
     * then checks that the message was still queued. */
    _Atomic uint64_t time_ns;
    /* payload, then key, then order key, then the header block */
    _Alignas(16) unsigned char data[];
};

/* Takes a message from the thread's cache (allocating only when the cache
 * and its return stack are empty), copies payload and keys, and the
 * headers of opts, or hdr_src's when it is not NULL; refs = 1. */
rbus_msg *rbus__msg_new(struct rbus_thread_state *th, rbus_topic *topic, const rbus_msg *hdr_src,
                        const void *data, size_t len, const rbus_pub_opts *opts);
/* Drops n references at once; the last one returns it to its home cache. */
void rbus__msg_unref(rbus_msg *msg, uint32_t n);
/* The publish options that carry m's keys and origin tag over to another
 * message (retry copies, dead letters). */
void rbus__msg_opts(const rbus_msg *m, rbus_pub_opts *o);
/* A private copy of m (same topic, seq, time, keys, origin) whose attempt
 * count is `attempt`: a retry must not change a message other
 * subscriptions share. NULL when the pool cannot grow. */
rbus_msg *rbus__msg_clone(struct rbus_thread_state *th, const rbus_msg *m, uint32_t attempt);
/* The same, by a caller whose state on the bus is `th`: a message born in
 * th goes straight back to its own list, with no atomic at all. */
bool rbus__msg_unref_by(struct rbus_thread_state *th, rbus_msg *msg, uint32_t n);
/* Held count: n references more (n > 0) or fewer held by the application
 * on `bus`, counted in th, the calling thread's state on it (NULL: it has
 * none, out of memory). It never reads a message: a receive that counts
 * touches no line of the message's before the caller does. */
void rbus__held_add(rbus *bus, struct rbus_thread_state *th, int64_t n);
/* The bus's held count now (bus->lock held); never negative. */
uint64_t rbus__held_read(rbus *bus);
void rbus__msg_cache_free(rbus *bus, struct rbus_msg_cache *cache);
/* RBUS_CHECKED builds: the message a handler is running with on this thread
 * (NULL outside handlers), so that releasing it there is caught; nothing
 * in other builds. */
#if defined(RBUS_CHECKED)
void rbus__msg_handler_enter(const rbus_msg *m);
void rbus__msg_handler_leave(void);
#else
static inline void rbus__msg_handler_enter(const rbus_msg *m)
{
    (void)m;
}
static inline void rbus__msg_handler_leave(void)
{
}
#endif
struct rbus_msg_cache *rbus__msg_cache_new(rbus *bus);

/* ------------------------------------------------------------ topic.c */

/* An immutable list of the open subscriptions that match a topic. Replaced
 * (copy-on-write) under bus->lock; the old one is freed after an epoch
 * synchronisation, so a publisher inside a read section can always walk
 * the list it loaded. */
struct rbus_sublist {
    struct rbus_sublist *garbage_next; /* writers only, after the swap */
    struct rbus_topic *owner;          /* writers only, after the swap */
    uint32_t cap;                      /* slots allocated */
    uint32_t count;                    /* slots in use: what publishers read */
    /* Set before the list is published, from the topic's list_gen: each
     * list a topic publishes has a higher one than the one before. */
    uint64_t gen;
    rbus_sub *subs[];
};

/* rbus_topic.features: what a publish on the topic must do besides the
 * common path. One word that every publish loads, so that a topic with
 * none of them pays one test. */
#define RBUS__TOPIC_LIMITED 1u  /* a rate limit (rbus_limit) */
#define RBUS__TOPIC_RETAINED 2u /* a history (rbus_history) */

struct rbus_topic {
    /* Read by every publish, written only under bus->lock; in the first
     * line with subs and features, which every publish reads. */
    rbus *bus;
    _Atomic(struct rbus_sublist *) subs;
    /* RBUS__TOPIC_*: set (under bus->lock) after the pointer it stands
     * for, which the publish then loads with acquire. */
    _Atomic uint32_t features;
    /* max_payload + 1 while `features` is 0, else 0: a publish whose len
     * is below it takes the plain path, in the one test that checks the
     * payload size (topic.c, publish()). */
    _Atomic uint64_t plain_below;
    /* Rate limit (rbus_topic_open_ex), set once; NULL = none. */
    _Atomic(struct rbus_limit *) limit;
    /* Retained history (history.c), set once; NULL = none. */
    _Atomic(struct rbus_history *) hist;
    char *name;
    uint32_t name_len;
    uint32_t hash;
    struct rbus_topic *hash_next; /* registry chain, under bus->lock */
    struct rbus_topic *all_next;  /* every topic, under bus->lock */
    /* Built by rbus_topic_open_ex (keyed) or at the first keyed publish. */
    _Atomic(struct rbus_dedup *) dedup;
    struct rbus_sublist *spare; /* retired list kept for the next list update */
    /* The count of the current list, for a keyed publish to size its
     * pending array before it accepts its key (relaxed: only a hint). */
    _Atomic uint32_t listed_hint;
    uint64_t list_gen; /* the newest list's gen; under bus->lock */
    /* Readiness (ready.c): the eventfd, -1 until rbus_topic_fd; the next
     * topic that has one (immutable once the topic is on the bus's list). */
    _Atomic int ready_fd;
    struct rbus_topic *ready_next;
    /* The descriptor's updater (ready.c): one at a time (busy), and a
     * request for another round (dirty). readable: what the descriptor
     * shows, touched only by the updater. */
    _Atomic uint32_t ready_busy, ready_dirty;
    bool readable;
    /* Written by every accepted publish. */
    RBUS__CACHE_ALIGNED _Atomic uint64_t seq;
    _Atomic uint64_t duplicates;
};

/*
 * A topic's rate limit: GCRA, the token bucket as one word. `tat` is when
 * the bucket would be full again; a publish at `now` is accepted when
 * max(tat, now) - now <= tolerance (burst - 1 intervals), and moves tat on
 * by one interval with a CAS. Each accepted publish moves it exactly once,
 * so over any window no more than burst + window / interval are accepted,
 * however many publishers race (a failed CAS means another was accepted).
 */
struct rbus_limit {
    double rate_per_s;
    uint32_t burst;
    uint64_t interval_ns, tolerance_ns;
    RBUS__CACHE_ALIGNED _Atomic uint64_t tat;
    _Atomic uint64_t limited;
};

bool rbus__match_unchecked(const char *pattern, const char *name);
/* How many subscriptions on t's current list `pred` holds for. Read as a
 * publisher reads the list, inside a read section (without a thread
 * state, under bus->lock); `locked`: the caller holds bus->lock, which
 * keeps the current list alive. */
uint32_t rbus__topic_count_subs(rbus_topic *t, bool (*pred)(const rbus_sub *s), bool locked);
/* 0 when s is a valid topic name (with `pattern`: a valid pattern); else
 * -EINVAL, with the detail "fn: what 'quoted s': the rule it breaks" from
 * the validator that rbus_topic_valid and rbus_pattern_valid use. */
int rbus__subject_check(const char *fn, const char *what, const char *s, bool pattern);

/* A message re-published on behalf of another (dead letters). */
struct rbus_relay {
    const char *origin_topic; /* the topic it failed on (lives until destroy) */
    uint32_t attempt;         /* attempts made */
    const rbus_msg *orig;     /* whose headers the copy carries */
};
/* Headers of a publish: 0, or -EINVAL/-EMSGSIZE with the detail set. */
int rbus__headers_check(const rbus_pub_opts *opts);
/* Publishes a copy of orig (payload, keys, origin tag) to topic, never
 * deduplicated, carrying relay's origin topic and attempt count; waits for
 * room in full RBUS_BLOCK subscriptions as rbus_pub_opts.timeout_ns says.
 * Same returns as rbus_publish. */
int rbus__publish_relay(rbus_topic *topic, const rbus_msg *orig, const struct rbus_relay *relay,
                        int64_t timeout_ns);
/* What a new subscription's replay needs from the list update that adds
 * it (history.c): for each matching topic with history, the generation of
 * the first list that holds the subscription; and, allocated with them,
 * room for `cap` messages three times over (the replay queue and two
 * buffers for merging). */
struct rbus_replay {
    uint32_t want; /* rbus_sub_opts.replay: per topic, at most */
    uint32_t ntopics;
    rbus_topic **topics;
    uint64_t *gens;
    uint32_t cap; /* most it replays: the capacity; 0 = nothing to do */
    rbus_msg **buf[3];
};
/* Holding bus->route_lock (not bus->lock, which it takes for the swap):
 * swaps in new lists for every topic `sub` matches, with the sub added or
 * removed and sub->listed set to match, then waits for a grace period and
 * keeps the retired lists as spares. Adding returns 0 or -ENOMEM (nothing
 * changed); removing never fails and never allocates. Adding with
 * `replay` (want > 0) also fills it. */
int rbus__topics_update(rbus *bus, rbus_sub *sub, bool add, struct rbus_replay *replay);
void rbus__topics_free_all(rbus *bus);

/* ------------------------------------------------------------ dedup.c */

/* A topic's idempotency-key window (window.h has the algorithm, dedup.c
 * the memory). A slot's key, written only while the slot is CLAIMED, by the claimer; read by lookups,
 * which check the state word before and after (a sequence lock whose
 * sequence is the state word: tickets never repeat). */
struct rbus_dedup_ident {
    _Atomic uint64_t lo, hi; /* the key's hash */
};

struct rbus_dedup {
    /* The one word every acceptance on the topic CASes: a line of its own. */
    RBUS__CACHE_ALIGNED _Atomic uint64_t accepted; /* [slot + 1:25][ticket:39] */
    /* Read-only after the build. */
    RBUS__CACHE_ALIGNED uint64_t keys; /* dedup_keys */
    int64_t window_ns;                 /* 0 = no time bound */
    uint32_t mask;                     /* slots - 1 */
    _Atomic uint64_t *state;
    struct rbus_dedup_ident *ident;
    /* When each slot's key was accepted (its publish began): a separate
     * array, touched only when window_ns > 0, so that a window bounded by
     * count alone keeps its randomly written lines to state and ident. */
    _Atomic int64_t *time_ns;
    /* Per line: [over:24][reach:8], the keys homed there that lie past it
     * (claimed, not yet reused or freed) and how many lines past it the
     * farthest ever lay. */
    _Atomic uint32_t *spill;
};

/* Hashes a key for rbus__dedup_accept (128-bit XXH3, seeded per bus:
 * returns the low half, *hi the high half) and starts loading the table
 * line that the check will read, so a cache miss there overlaps the
 * building of the message instead of following it. Two scalars rather than
 * a struct: a struct spilled as two 8-byte stores and reloaded as one
 * 16-byte load stalls store forwarding. */
uint64_t rbus__dedup_hash(rbus_topic *t, const void *key, size_t len, uint64_t *hi);
/* Check-and-insert of an idempotency key (by its hash) on topic t, one
 * linearisable step without a lock: 0 = accepted (recorded),
 * RBUS_DUPLICATE, -ENOMEM (the window could not be built) or -ENOBUFS (no
 * slot free near the key's home); only 0 records the key. Never inside a
 * read section: it may wait for the window's build (once per topic). */
int rbus__dedup_accept(rbus_topic *t, uint64_t lo, uint64_t hi, int64_t now_ns);
/* A new, empty window for a topic of this bus (zeroed), or NULL. */
struct rbus_dedup *rbus__dedup_new(rbus *bus);
/* Builds t's window if it has none (one build at a time per bus, under
 * bus->dedup_lock): 0 or -ENOMEM. */
int rbus__dedup_prepare(rbus_topic *t);
void rbus__dedup_free(rbus *bus, struct rbus_dedup *d);

/* -------------------------------------------------------------- sub.c */

/* The subscription's ring: see ring.h for the protocol and guarantees. */
struct rbus_ring_slot {
    _Atomic uint64_t seq;    /* position << 2 | state (ring.h) */
    _Atomic(rbus_msg *) msg; /* relaxed: ordered by seq (ring.h) */
};

struct rbus_ring {
    /* Producers' words and consumers' word on their own lines. */
    RBUS__CACHE_ALIGNED _Atomic uint64_t tail; /* next position to reserve */
    _Atomic uint64_t head_seen;                /* a recent value of head, for the depth */
    RBUS__CACHE_ALIGNED _Atomic uint64_t head; /* every position below it is done with */
    RBUS__CACHE_ALIGNED struct rbus_ring_slot *slots;
    uint64_t mask;
    uint64_t line_mask;  /* lines of slots - 1 (ring.h's rbus__ring_slot) */
    unsigned line_shift; /* log2(lines) */
    /* What stalled threads cost, written only when one is met (ring.h). */
    RBUS__CACHE_ALIGNED _Atomic uint64_t skipped; /* unwritten slots passed over */
    _Atomic uint64_t holes;    /* positions left without a message: passed (a stalled
                                  writer held the slot) or given up by an evictor */
    _Atomic uint64_t reoffers; /* messages whose slot was skipped, offered again */
};

enum rbus_sub_state {
    RBUS_SUB_OPEN = 0,    /* publishers deliver */
    RBUS_SUB_CLOSING = 1, /* publishers skip it; some may still be mid-enqueue */
    RBUS_SUB_CLOSED = 2   /* no enqueue can happen any more: empty means final */
};

enum rbus_offer {
    RBUS_OFFER_QUEUED,
    RBUS_OFFER_DROPPED, /* drop-newest refused it */
    RBUS_OFFER_FULL     /* block policy, no room: the caller waits or gives up */
};

/*
 * Handles stay valid memory until rbus_destroy (docs/design.md#lifetimes).
 * A call on a subscription may begin, at its first instruction, before an
 * rbus_unsubscribe that then runs to completion while the call's thread is
 * preempted. So the subscription's own struct is never given back to the
 * allocator before rbus_destroy: rbus_unsubscribe frees what hangs off it
 * (ring, names, tallies, fd) and puts the struct on the bus's pool, where
 * `dying` stays set; a late call finds it set and touches nothing else.
 * rbus_subscribe reuses pooled structs oldest first, and only while more
 * than RBUS__POOL_HOLD others wait in the pool.
 */
#define RBUS__POOL_HOLD 16

struct rbus_sub {
    /* Kept across reuse (see above), with `callers` and `fd_lock` below. */
    _Atomic uint32_t dying;     /* rbus_unsubscribe has begun: no new call enters */
    struct rbus_sub *pool_next; /* the bus's pool, under bus->lock */

    /* Read-mostly: set at subscribe. From `bus` on, everything but the
     * kept fields is cleared when the struct is reused. */
    rbus *bus;
    uint32_t capacity; /* effective: the ring's size */
    rbus_overflow overflow;
    int64_t block_timeout_ns; /* <= 0 = forever */
    int64_t spin_ns;          /* resolved: >= 0 */
    uint64_t max_bytes;       /* byte bound on what is queued; 0 = none */
    /* rbus_sub_opts.latency_sample: next to max_bytes, which every receive
     * reads too, so that testing it costs no other line. */
    uint32_t latency_sample;
    uint32_t replay; /* rbus_sub_opts.replay, for Prometheus */
    /* Watermarks (RBUS_BLOCK; high UINT32_MAX otherwise: never reached). */
    uint32_t high_mark, low_mark;
    uint64_t id;
    char *pattern;
    char *name;
    _Atomic uint32_t state;
    bool listed;                /* on its topics' lists; under bus->lock */
    _Atomic(void *) dispatcher; /* running dispatcher, if any (Handlers) */
    /* Counters of the dispatchers that ran on it and stopped, kept for
     * rbus_stats_prometheus; under bus->lock. */
    rbus_dispatch_stats dispatched;
    struct rbus__hist dispatched_handler, dispatched_start_delay;
    bool had_dispatcher;
    /* Drop advisories (advisory.c, under bus->lock): the counts told so
     * far, by cause, and when. */
    uint64_t advised[4];
    int64_t advised_ns;
    /* Publishers' own tallies (struct rbus_tally), by state index; NULL
     * until the first offer. Read by every offer, written rarely: with the
     * read-mostly fields. Written only by the holder of tally_lock, a
     * try-lock (a read section must not sleep). */
    _Atomic(struct rbus_tally_table *) tallies;
    _Atomic uint32_t tally_lock;
    struct rbus_sub *bus_next;
    struct rbus_sub *bus_prev;

    struct rbus_ring ring; /* its words sit on their own lines */

    /* Read by every enqueue (receivers waiting, fd armed) and every dequeue
     * (publishers waiting for room); written only on slow paths. */
    RBUS__CACHE_ALIGNED struct rbus_event msg_ev;
    _Atomic uint32_t msg_sleepers; /* receivers in (or entering) a sleep on msg_ev */
    _Atomic uint32_t fd_armed;     /* 1: fd unreadable, next enqueue must write */
    _Atomic uint32_t room_waiters; /* publishers waiting for room here */
    /* Where a publisher waiting for room on this subscription alone
     * sleeps (one waiting on several sleeps on the bus's room_ev): a
     * dequeue here wakes it and no publisher blocked elsewhere. */
    struct rbus_event room_ev;
    _Atomic uint32_t pins;         /* publishers holding it outside a read section */
    /* 1 from reaching high_mark until drained below low_mark (sub.c,
     * "Watermarks"): its topics are not ready. */
    _Atomic uint32_t over;

    /* With max_bytes: payload bytes queued, or reserved by publishers about
     * to queue (sub.c, "Byte bound"). Written by publishers and receivers. */
    RBUS__CACHE_ALIGNED _Atomic uint64_t bytes;

    /* Written by publishers. */
    RBUS__CACHE_ALIGNED struct rbus_tally shared; /* when a node is out of memory */
    struct rbus__hist publisher_wait;             /* the slow path only */
    _Atomic uint64_t dropped_timeout;
    _Atomic uint64_t dropped_closed;
    _Atomic uint64_t publisher_waits;
    _Atomic uint32_t high_water;
    /* Replay (history.c), written once by rbus_subscribe: retained
     * messages queued first, and those it collected that did not fit. */
    _Atomic uint64_t replayed, replay_skipped;
    /* Watermark crossings, up and down (rare: hysteresis). */
    _Atomic uint64_t high_hits, low_hits;

    /* Written by receivers. */
    RBUS__CACHE_ALIGNED _Atomic uint32_t callers; /* kept: threads inside calls on it */
    _Atomic uint64_t received;
    /* Replay (sub.c): replay_q[0..replay_count), set before the handle is
     * returned, is taken before the ring; replay_next is the next entry a
     * receiver claims (it may run past replay_count). */
    _Atomic uint32_t replay_next;
    _Atomic uint32_t replay_count; /* relaxed: see take_replayed */
    rbus_msg **replay_q;
    struct rbus__hist queue_wait; /* with latency_sample only */
    /* rbus__spin_wait_step's back-off: until when receivers do not yield,
     * and which of the last 8 yields that ran somebody took a slice. Per
     * subscription, not per thread: one receiver next to a CPU hog turns
     * yields off for its subscription's other receivers too. */
    _Atomic int64_t no_yield_until;
    _Atomic uint32_t yield_history;

    _Atomic int fd; /* eventfd, -1 until rbus_sub_fd */

    pthread_mutex_t fd_lock; /* kept, and last: initialised once */
};

/* rbus_sub.dispatcher while rbus_unsubscribe runs and after it: neither a
 * dispatcher nor a second unsubscribe can claim the subscription. */
extern char rbus__unsubscribing;
#define RBUS__UNSUBSCRIBING ((void *)&rbus__unsubscribing)

/* Enters a call on s, counted in `callers` so that rbus_unsubscribe waits
 * for it; false (nothing counted) once rbus_unsubscribe has begun. seq_cst
 * RMW then seq_cst load, against rbus_unsubscribe's seq_cst store of
 * `dying` then seq_cst load of `callers` (a Dekker pair): either the call
 * sees `dying`, or rbus_unsubscribe sees the call and waits for it. */
static inline bool rbus__sub_enter(rbus_sub *s)
{
    atomic_fetch_add_explicit(&s->callers, 1, memory_order_seq_cst);
    if (RBUS__LIKELY(!atomic_load_explicit(&s->dying, memory_order_seq_cst)))
        return true;
    /* Release, as below; nothing was touched. */
    atomic_fetch_sub_explicit(&s->callers, 1, memory_order_release);
    return false;
}

/* Replayed messages not yet taken (sub.c, take_replayed). Relaxed: a
 * count, exact when no receive is in flight. */
static inline uint32_t rbus__sub_replay_left(rbus_sub *s)
{
    uint32_t next = atomic_load_explicit(&s->replay_next, memory_order_relaxed);
    uint32_t count = atomic_load_explicit(&s->replay_count, memory_order_relaxed);
    return next < count ? count - next : 0;
}

/* Leaves it. Release: everything the call did to the subscription happens
 * before rbus_unsubscribe, which acquires callers == 0, frees what hangs
 * off it. */
static inline void rbus__sub_leave(rbus_sub *s)
{
    atomic_fetch_sub_explicit(&s->callers, 1, memory_order_release);
}

/* The slow path of rbus__tally_of: adds this state's node to the table. */
struct rbus_tally *rbus__tally_add_node(struct rbus_thread_state *th, rbus_sub *sub);
/* This state's tallies for sub (inside a read section): its own node, or
 * sub->shared if none could be added (no memory, or another state was
 * adding its own at that instant: the next offer tries again). */
static inline struct rbus_tally *rbus__tally_of(struct rbus_thread_state *th, rbus_sub *sub)
{
    /* Acquire: pairs with the release stores of a table or a node in
     * rbus__tally_add_node, whose initialisation we then see. */
    const struct rbus_tally_table *tab = atomic_load_explicit(&sub->tallies, memory_order_acquire);
    if (RBUS__LIKELY(tab != NULL) && RBUS__LIKELY(th->index < tab->len)) {
        struct rbus_tally *t = atomic_load_explicit(&tab->node[th->index], memory_order_acquire);
        if (RBUS__LIKELY(t != NULL))
            return t;
    }
    return rbus__tally_add_node(th, sub);
}
/* Adds n to a field of t: a plain load and store on a state's own node
 * (its only writer), an atomic add on the shared fallback. */
static inline void rbus__tally_add_n(const rbus_sub *sub, const struct rbus_tally *t,
                                     _Atomic uint64_t *field, uint64_t n)
{
    if (RBUS__LIKELY(t != &sub->shared))
        atomic_store_explicit(field, atomic_load_explicit(field, memory_order_relaxed) + n,
                              memory_order_relaxed);
    else
        atomic_fetch_add_explicit(field, n, memory_order_relaxed);
}
static inline void rbus__tally_add(const rbus_sub *sub, const struct rbus_tally *t,
                                   _Atomic uint64_t *field)
{
    rbus__tally_add_n(sub, t, field, 1);
}
/* Sum of every tally of sub (stats). */
void rbus__tally_sum(const rbus_sub *sub, uint64_t *offered, uint64_t *dropped_newest,
                     uint64_t *refused, uint64_t *dropped_oldest);
/* When the longest current wait for room on sub began (ns), or 0. */
int64_t rbus__tally_oldest_wait(const rbus_sub *sub);

/* Offers msg to sub's ring under its policy (inside a read section). */
enum rbus_offer rbus__sub_offer(struct rbus_thread_state *th, rbus_sub *sub, rbus_msg *msg,
                                uint32_t *evicted);
/* Queues a prefix of ms[0..k) (at most RBUS__RUN_MAX, and a quarter of
 * the ring) at consecutive positions with one reservation, as that many
 * offers (inside a read section). Returns how many; 0 when the ring has
 * no free slot at its tail or the byte bound no room for the run: the
 * caller offers one with rbus__sub_offer, which applies the policy. */
uint32_t rbus__sub_offer_run(struct rbus_thread_state *th, rbus_sub *sub, rbus_msg *const *ms,
                             uint32_t k);
/* Longest run rbus__sub_offer_run reserves: what a stalled batch
 * publisher may hold of a ring, and receivers may poll past. */
#define RBUS__RUN_MAX 64u
/* A new subscription's replay queue: q[0..n) (references that become
 * the subscription's; q its own allocation, freed with it), oldest first.
 * Under a byte bound it keeps the newest run that fits and releases the
 * older rest. Returns how many it kept, counted as offered. */
uint32_t rbus__sub_replay_set(rbus_sub *s, rbus_msg **q, uint32_t n);
/* Block policy retry (inside a read section): true if queued. */
bool rbus__sub_try_enqueue(struct rbus_thread_state *th, rbus_sub *sub, rbus_msg *msg);
/* An all-or-none publish (inside a read section, before acceptance): a
 * position in s's ring, and room for len bytes under its byte bound;
 * false when there is none. */
bool rbus__sub_reserve(rbus_sub *s, size_t len, struct rbus_resv *r);
/* Gives back what rbus__sub_reserve took (the publish was refused); true
 * when that brought s under its low watermark (readiness to refresh). */
bool rbus__sub_unreserve(rbus_sub *s, size_t len, struct rbus_resv *r);
/* Writes msg into the reserved position: an offer, counted as one. If a
 * receiver skipped the slot meanwhile (this publisher was stalled there),
 * it offers again as rbus__sub_offer does, which may find no room. */
enum rbus_offer rbus__sub_commit(struct rbus_thread_state *th, rbus_sub *s, rbus_msg *msg,
                                 struct rbus_resv *r);
/* Whether m would find no room right now: no free slot (reservations
 * count), or, with a byte bound, not its bytes. */
bool rbus__sub_full(rbus_sub *sub, const rbus_msg *m);
/* No enqueue can reach `sub` any more: marks it CLOSED, wakes receivers
 * and makes its fd readable. */
void rbus__sub_finish_close(rbus_sub *sub);
/* rbus_destroy: frees a live subscription, struct and all. */
void rbus__sub_free(rbus_sub *sub);
/* rbus_destroy: frees the pool of unsubscribed subscriptions' structs. */
void rbus__sub_pool_free(rbus *bus);
/* rbus_sub_stats_get's snapshot, for a caller that keeps the subscription
 * alive otherwise (Prometheus, under bus->lock). */
void rbus__sub_stats_read(rbus_sub *sub, rbus_sub_stats *out);
/* rbus_recv for a dispatcher's worker: the same, but what it takes is not
 * counted as held by the application (the worker releases it with
 * rbus__msg_unref_by). */
int rbus__sub_recv_unheld(rbus_sub *s, rbus_msg **out, int64_t timeout_ns);

/* ---------------------------------------------------------- history.c */

/*
 * A topic's retained history: its last `keep` messages, for late joiners
 * (rbus_sub_opts.replay) and rbus_topic_last. A drop-oldest ring of its
 * own (ring.h), written by publishers inside their read sections, holding
 * one reference per message. Readers never take from it: they look at a
 * slot and take a reference of their own, and `hazard` keeps the message
 * alive meanwhile (history.c explains the hand-off). Readers of one
 * history take turns on read_lock; publishers never take it.
 */
struct rbus_history {
    struct rbus_ring ring;
    uint32_t keep; /* rbus_topic_opts.retain: readers look at the newest `keep` */
    pthread_mutex_t read_lock;
    /* The message a reader is about to reference, | 1 once an evictor
     * has handed the history's reference of it to that reader. */
    RBUS__CACHE_ALIGNED _Atomic uintptr_t hazard;
};

/* A history of `keep` messages (1..RBUS_MAX_RETAIN), or NULL. */
struct rbus_history *rbus__history_new(rbus *bus, uint32_t keep);
/* Releases every message it holds and frees it (rbus_destroy). */
void rbus__history_free(rbus *bus, struct rbus_history *h);
/* Inside a read section: m, which carries a reference for the history,
 * becomes its newest message (the oldest leaves when it is full), or,
 * when every slot is held by a stalled writer, is released. */
void rbus__history_put(struct rbus_thread_state *th, struct rbus_history *h, rbus_msg *m);
/* The retained messages a replay gets from h: the newest `want` offered
 * to lists older than `gen` (the first list holding the new
 * subscription), of which the newest `max` go into out as references of
 * the caller's, in sequence order, and the rest are added to *more. Takes
 * h->read_lock. Returns how many it stored. */
uint32_t rbus__history_collect(struct rbus_history *h, uint64_t gen, uint32_t want, uint32_t max,
                               rbus_msg **out, uint64_t *more);
/* Messages it holds now (stats): O(keep). */
uint32_t rbus__history_count(struct rbus_history *h);
/* The replay of a new subscription, after the list update that added it
 * (holding route_lock): collects from each topic, keeps the newest that
 * fit, and makes them the subscription's replay queue (taking one of
 * r's buffers). Never fails (its buffers come with the replay). */
void rbus__replay_run(rbus_sub *s, struct rbus_replay *r);
/* Frees what a replay allocated. */
void rbus__replay_free(rbus *bus, struct rbus_replay *r);

/* ------------------------------------------------------------ ready.c */

/* Brings every topic's readiness descriptor up to date with its
 * subscriptions' watermark states. Outside any read section: it makes
 * system calls. Never waits: an update in progress elsewhere is asked to
 * run again instead. */
void rbus__ready_refresh_all(rbus *bus);
/* Whether every open RBUS_BLOCK subscription on t's list is under its
 * watermarks; `locked` as in rbus__topic_count_subs. */
bool rbus__topic_ready(rbus_topic *t, bool locked);
/* rbus_destroy: closes t's descriptor. */
void rbus__topic_fd_close(rbus_topic *t);

/* --------------------------------------------------------- dispatch.c */

/* rbus_destroy: stops every dispatcher still running on the bus. */
void rbus__dispatch_stop_all(rbus *bus);
/* rbus_destroy: frees the stopped dispatchers' structs (kept until then, as
 * subscriptions' are). */
void rbus__dispatch_pool_free(rbus *bus);

/* -------------------------------------------------------------- bus */

struct rbus {
    /* Read by every publish. */
    rbus_config cfg;
    rbus_allocator alloc;
    uint64_t id;
    uint64_t dedup_seed; /* per bus, so key hashes cannot be predicted */
    _Atomic uint32_t closing;
    /* Some topic has (or every new topic gets) a history: replay is
     * allowed. Only ever set, with release. */
    _Atomic uint32_t retains;
    ck_epoch_t epoch;

    /* Everything below is touched only at subscribe/unsubscribe/topic_open/
     * close/destroy, or on slow paths. */
    /* Serialises changes of routing (subscribe, sub_close, close), which
     * wait for grace periods holding it. Taken before `lock`. */
    RBUS__CACHE_ALIGNED pthread_mutex_t route_lock;
    /* Short sections only, never across a grace period: the registry, the
     * lists below, and the swap of topics' subscription lists. */
    pthread_mutex_t lock;
    /* Serialises the building of topics' dedup windows (dedup.c), so that
     * racing first keyed publishers never each allocate one. */
    pthread_mutex_t dedup_lock;
    struct rbus_topic **buckets; /* topic registry, power-of-two buckets */
    uint32_t nbuckets;
    uint32_t ntopics;
    struct rbus_topic *topics;         /* all topics */
    struct rbus_sub *subs;             /* all subscriptions not yet unsubscribed */
    struct rbus_thread_state *threads; /* all per-thread states */
    uint32_t nthreads;                 /* how many: the next state's index */
    uint64_t next_sub_id;
    bool closed; /* close finished */
    /* Unsubscribed subscriptions' structs, oldest first (rbus_sub), and
     * stopped dispatchers' (dispatch.c), likewise kept until destroy. */
    struct rbus_pool sub_pool;
    struct rbus_pool dispatcher_pool;

    /* Publishers blocked for room sleep here; receivers signal it when a
     * subscription they took from has room_waiters. */
    RBUS__CACHE_ALIGNED struct rbus_event room_ev;
    _Atomic uint32_t blocked_publishers;
    struct rbus_event close_ev; /* close waits here for blocked publishers */
    /* Held count of threads that could get no state (out of memory). */
    _Atomic int64_t held_stateless;

    rbus *registry_next;

    /* Topics with a readiness descriptor, newest first (ready.c): pushed
     * under bus->lock, read without it. */
    _Atomic(struct rbus_topic *) ready_topics;

    /* Drop advisories (advisory.c): the thread, and what it waits on. */
    struct rbus_advisor *advisor;
};

/* Starts the advisory thread when cfg.drop_advisories is set; 0 or a
 * negative errno. */
int rbus__advisor_start(rbus *bus);
/* Stops and joins it (close, destroy); idempotent. */
void rbus__advisor_stop(rbus *bus);
/* Frees it (destroy, once stopped). */
void rbus__advisor_free(rbus *bus);

/* A read section: subscription lists loaded inside stay valid until its
 * end. Never sleep inside one (an unsubscribe waiting in rbus__synchronize
 * would wait for the sleeper). */
static inline void rbus__read_begin(struct rbus_thread_state *th)
{
    ck_epoch_begin(&th->epoch, NULL);
}

static inline void rbus__read_end(struct rbus_thread_state *th)
{
    /* Pairs with the acquire in rbus__synchronize, for TSan only. */
    RBUS__TSAN_RELEASE(&th->bus->epoch);
    ck_epoch_end(&th->epoch, NULL);
}

#endif /* RBUS_INTERNAL_H */
