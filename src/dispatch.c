/*
 * dispatch.c - handlers: worker threads that receive from one subscription
 * and call a function, with per-order-key serialisation, retries with
 * jittered exponential backoff, and dead letters.
 *
 * Everything a dispatcher holds is an `item`: a message in hand (being
 * received into, running, parked behind its order key, or waiting for a
 * retry). Items come from a pool of max_in_hand allocated at start, and so
 * do order-key states and the retry heap: nothing is allocated per message
 * (a retry takes a pooled message copy, see below).
 *
 * One mutex guards the dispatcher's state; handlers, receives and
 * dead-letter publishes run outside it. Workers look for work in this
 * order: a message made ready (its key came free), a retry that is due (all
 * of them at once while stopping), and only then a new message from the
 * subscription, and only while fewer than max_in_hand are held. A worker
 * reserves its in-hand slot before it receives, so the cap holds even for
 * messages in flight from the ring to the worker.
 *
 * Order keys (ordered_by_key): a key is "busy" from the moment one of its
 * messages starts until the last of its messages in hand is done; later
 * messages with that key park in a FIFO on the key's state. One worker at
 * a time receives (`receiver_busy`, taken under the lock and released
 * once the message is attached to its key), so the FIFO is in queue order;
 * the others wait on the condition variable, free to run retries. A
 * message waiting for a retry keeps its key busy, so it holds back only its
 * own key's later messages.
 *
 * Attempts: messages are shared by every subscription that received them,
 * so a retry runs on a private copy whose rbus_msg_attempt says which
 * attempt it is; the previous copy is released when the next is made.
 */
#include "internal.h"
#include "ring.h"

#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* How long a worker waits in one receive before it looks again at the
 * stop flag: a receive cannot be woken, so this bounds how late a stop is
 * noticed (an idle worker wakes 100 times a second, a negligible cost next
 * to a wake-up protocol between the dispatcher and the ring). Retries are
 * not delayed by it: a receive never waits past the earliest due retry it
 * saw, and a worker that schedules a retry is itself free to run it. */
#define RECV_SLICE_NS INT64_C(10000000)

/* How long a dead-letter publish may wait for room in a full RBUS_BLOCK
 * subscription of the dead-letter topic: long enough to ride out a burst,
 * bounded so that a stuck reader cannot hang rbus_dispatch_stop or
 * rbus_destroy; past it that subscription counts the dead letter as
 * dropped_timeout. */
#define DEAD_LETTER_WAIT_NS INT64_C(100000000)

struct key_state;

struct item {
    rbus_msg *msg;         /* our reference */
    int64_t received_ns;   /* when a worker received it: for start_delay */
    uint32_t attempts;     /* attempts made so far */
    int64_t due_ns;        /* retry: when */
    struct item *next;     /* key FIFO, ready list or free list */
    struct key_state *key; /* ordered_by_key and the message has an order key */
};

struct key_state {
    uint64_t hash;
    const void *bytes; /* the key, inside a message in hand with this key */
    size_t len;
    struct item *parked; /* later messages of this key, FIFO */
    struct item *parked_tail;
    uint32_t held;           /* messages in hand with this key */
    struct key_state *chain; /* hash chain or free list */
};

struct rbus_dispatcher {
    /* Kept until rbus_destroy, as subscriptions are (internal.h): a
     * stats call that began before rbus_dispatch_stop may still lock
     * `lock`. Everything from `sub` on is cleared on reuse, under it. */
    pthread_mutex_t lock;
    pthread_cond_t cond;               /* work appeared, a slot came free, or stop */
    struct rbus_dispatcher *pool_next; /* the bus's pool, under bus->lock */

    rbus_sub *sub;
    rbus *bus;
    rbus_handler_fn fn;
    void *arg;
    rbus_dispatch_opts opts;
    rbus_topic *dead_letters; /* NULL = drop */

    bool stop_begun; /* rbus_dispatch_stop was called (a second call: -EINVAL) */
    bool retired;    /* stopped and pooled: stats answer -ESHUTDOWN */
    /* ordered_by_key: a worker is receiving; the next waits, so messages
     * attach to their keys in queue order. */
    bool receiver_busy;
    bool stopping;
    bool source_done; /* the subscription is closed and drained */
    /* rbus_dispatch_drain: workers take no message once the ring's head
     * has been seen past drain_mark, its tail when the drain began
     * (drain_passed, latched: head may move back a little). */
    bool draining;
    bool drain_passed;
    uint64_t drain_mark;
    /* Stopping after a drain: messages in hand keep their backoff. */
    bool graceful;
    uint32_t in_hand;
    uint32_t receiving; /* workers inside a receive (slots reserved) */
    uint64_t rng;

    struct item *items, *free_items;
    struct item *ready, *ready_tail; /* keys came free: run next */
    struct item **heap;              /* retries, min-heap by due_ns */
    uint32_t heap_len;
    struct key_state *keys, *free_keys;
    struct key_state **buckets;
    uint32_t bucket_mask;

    rbus_dispatch_stats stats;
    /* rbus_dispatch_timing: added to by workers after each attempt, under
     * `lock` (atomics only because the type is shared with subscriptions). */
    struct rbus__hist handler, start_delay;

    pthread_t *threads;
    unsigned nthreads; /* started */
};

/* The dispatcher whose handler the calling thread is running, if any. */
static _Thread_local rbus_dispatcher *tls_running;

/* --------------------------------------------------------- options */

void rbus_dispatch_opts_init(rbus_dispatch_opts *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    opts->threads = 1;
    opts->max_attempts = 1;
    opts->backoff_initial_ns = UINT64_C(1000000);
    opts->backoff_max_ns = UINT64_C(1000000000);
    opts->max_in_hand = 1024;
}

static int resolve_opts(const rbus_dispatch_opts *in, rbus_dispatch_opts *out)
{
    rbus_dispatch_opts_init(out);
    if (!in)
        return 0;
    if (in->threads > RBUS_MAX_DISPATCH_THREADS)
        return rbus__fail(-EINVAL,
                          "rbus_dispatch_start: threads %u above RBUS_MAX_DISPATCH_THREADS (%u)",
                          in->threads, RBUS_MAX_DISPATCH_THREADS);
    if (in->max_in_hand > RBUS_MAX_CAPACITY)
        return rbus__fail(-EINVAL,
                          "rbus_dispatch_start: max_in_hand %" PRIu32
                          " above RBUS_MAX_CAPACITY (%" PRIu32 ")",
                          in->max_in_hand, RBUS_MAX_CAPACITY);
    if (in->dead_letter_topic) {
        int rc = rbus__subject_check("rbus_dispatch_start", "dead_letter_topic",
                                     in->dead_letter_topic, false);
        if (rc != 0)
            return rc;
    }
    if (in->threads)
        out->threads = in->threads;
    if (in->max_attempts)
        out->max_attempts = in->max_attempts;
    if (in->backoff_initial_ns)
        out->backoff_initial_ns = in->backoff_initial_ns;
    if (in->backoff_max_ns)
        out->backoff_max_ns = in->backoff_max_ns;
    if (in->max_in_hand)
        out->max_in_hand = in->max_in_hand;
    out->ordered_by_key = in->ordered_by_key;
    out->dead_letter_topic = in->dead_letter_topic;
    return 0;
}

/* ------------------------------------------------------ retry heap */

static void heap_swap(struct item **h, uint32_t a, uint32_t b)
{
    struct item *t = h[a];
    h[a] = h[b];
    h[b] = t;
}

static void heap_push(rbus_dispatcher *d, struct item *it)
{
    uint32_t i = d->heap_len++;
    d->heap[i] = it;
    while (i && d->heap[(i - 1) / 2]->due_ns > d->heap[i]->due_ns) {
        heap_swap(d->heap, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static struct item *heap_pop(rbus_dispatcher *d)
{
    struct item *top = d->heap[0];
    d->heap[0] = d->heap[--d->heap_len];
    for (uint32_t i = 0;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < d->heap_len && d->heap[l]->due_ns < d->heap[m]->due_ns)
            m = l;
        if (r < d->heap_len && d->heap[r]->due_ns < d->heap[m]->due_ns)
            m = r;
        if (m == i)
            break;
        heap_swap(d->heap, i, m);
        i = m;
    }
    return top;
}

/* ------------------------------------------------------ order keys */

static struct key_state *key_find(rbus_dispatcher *d, uint64_t hash, const void *bytes, size_t len)
{
    for (struct key_state *k = d->buckets[hash & d->bucket_mask]; k; k = k->chain)
        if (k->hash == hash && k->len == len && !memcmp(k->bytes, bytes, len))
            return k;
    return NULL;
}

/* The state of the item's order key, created if the key is not busy;
 * `*busy` says whether another message with the key is in hand. */
static struct key_state *key_attach(rbus_dispatcher *d, struct item *it, bool *busy)
{
    size_t len;
    const void *bytes = rbus_msg_order_key(it->msg, &len);
    uint64_t hash = XXH3_64bits(bytes, len);
    struct key_state *k = key_find(d, hash, bytes, len);
    *busy = k != NULL;
    if (!k) {
        /* Never empty: at most max_in_hand keys are busy at once. */
        k = d->free_keys;
        d->free_keys = k->chain;
        *k = (struct key_state){.hash = hash, .bytes = bytes, .len = len};
        struct key_state **b = &d->buckets[hash & d->bucket_mask];
        k->chain = *b;
        *b = k;
    }
    k->held++;
    return k;
}

static void key_detach(rbus_dispatcher *d, struct key_state *k)
{
    if (--k->held)
        return;
    struct key_state **p = &d->buckets[k->hash & d->bucket_mask];
    while (*p != k)
        p = &(*p)->chain;
    *p = k->chain;
    k->chain = d->free_keys;
    d->free_keys = k;
}

/* ----------------------------------------------------------- items */

static struct item *item_take(rbus_dispatcher *d, rbus_msg *m)
{
    struct item *it = d->free_items;
    d->free_items = it->next;
    *it = (struct item){.msg = m};
    return it;
}

/* Under the lock: the item is done for good. Gives its key to the next
 * parked message, if any, and its slot back. */
static void item_finish(rbus_dispatcher *d, struct item *it)
{
    struct key_state *k = it->key;
    if (k) {
        struct item *next = k->parked;
        if (next) {
            k->parked = next->next;
            if (!k->parked)
                k->parked_tail = NULL;
            /* The key's bytes must live in a message still in hand. */
            k->bytes = rbus_msg_order_key(next->msg, &k->len);
            next->next = NULL;
            if (d->ready_tail)
                d->ready_tail->next = next;
            else
                d->ready = next;
            d->ready_tail = next;
        }
        key_detach(d, k);
    }
    it->next = d->free_items;
    d->free_items = it;
    d->in_hand--;
    pthread_cond_broadcast(&d->cond);
}

static uint64_t rng_next(rbus_dispatcher *d)
{
    /* splitmix64: plenty for jitter, and cheap under the lock. */
    uint64_t z = (d->rng += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Full jitter: uniform in [0, min(max, initial * 2^(attempts - 1))]. */
static int64_t backoff_ns(rbus_dispatcher *d, uint32_t attempts)
{
    uint64_t cap = d->opts.backoff_max_ns, base = d->opts.backoff_initial_ns;
    unsigned shift = attempts > 0 ? attempts - 1 : 0;
    uint64_t bound = shift >= 63 || base > (cap >> shift) ? cap : base << shift;
    if (bound > (uint64_t)INT64_MAX - 1)
        bound = (uint64_t)INT64_MAX - 1;
    return (int64_t)(rng_next(d) % (bound + 1));
}

/* ---------------------------------------------------------- worker */

/* Under the lock, while draining: whether every message queued when the
 * drain began is out of the subscription's ring (taken by a worker, which
 * then holds it, evicted, or skipped). head only ever passes positions that
 * are done with (ring.h), so one value at or past the mark proves it even
 * if head later moves back a little. Relaxed: a worker's claim and its
 * in_hand reservation are ordered by this lock, not by head. */
static bool drain_passed(rbus_dispatcher *d)
{
    /* Latched: a store of head by a thread that read it long ago (a
     * drop-oldest publisher, a receiver outside the dispatcher) may move it
     * back below the mark after we saw it past, and no worker would then
     * look again. */
    if (!d->drain_passed)
        d->drain_passed =
            d->source_done ||
            atomic_load_explicit(&d->sub->ring.head, memory_order_relaxed) >= d->drain_mark;
    return d->drain_passed;
}

/* Under the lock: waits on d->cond until signalled or CLOCK_MONOTONIC
 * time `until` (< 0: no limit). */
static void wait_until(rbus_dispatcher *d, int64_t until)
{
    if (until >= 0) {
        struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
        pthread_cond_timedwait(&d->cond, &d->lock, &ts);
    } else {
        pthread_cond_wait(&d->cond, &d->lock);
    }
}

/* Under the lock: the next item to run, or NULL after waiting/receiving.
 * Returns NULL with *quit set when the worker should exit. */
static struct item *next_work(rbus_dispatcher *d, bool *quit)
{
    for (;;) {
        if (d->ready) {
            struct item *it = d->ready;
            d->ready = it->next;
            if (!d->ready)
                d->ready_tail = NULL;
            it->next = NULL;
            return it;
        }
        int64_t now = rbus__now_ns();
        bool at_once = d->stopping && !d->graceful; /* a stop runs retries now */
        if (d->heap_len && (at_once || d->heap[0]->due_ns <= now))
            return heap_pop(d);
        if (d->stopping && d->in_hand == 0) {
            *quit = true;
            return NULL;
        }
        int64_t until = d->heap_len ? d->heap[0]->due_ns : -1;
        bool ordered = d->opts.ordered_by_key;
        if (!d->stopping && !d->source_done && !(d->draining && drain_passed(d)) &&
            d->in_hand < d->opts.max_in_hand && !(ordered && d->receiver_busy)) {
            /* Reserve the slot, then receive without the lock. */
            d->in_hand++;
            d->receiving++;
            int64_t wait = RECV_SLICE_NS;
            if (until >= 0 && until - now < wait)
                wait = until - now > 0 ? until - now : 0;
            d->receiver_busy = ordered;
            pthread_mutex_unlock(&d->lock);
            rbus_msg *m = NULL;
            int rc = rbus__sub_recv_unheld(d->sub, &m, wait);
            pthread_mutex_lock(&d->lock);
            d->receiving--;
            if (ordered) {
                /* Released once the message (if any) is attached below,
                 * under this same lock hold: the next receiver waits. */
                d->receiver_busy = false;
                pthread_cond_broadcast(&d->cond);
            }
            if (rc != 0) {
                d->in_hand--;
                if (rc == -ESHUTDOWN)
                    d->source_done = true;
                pthread_cond_broadcast(&d->cond);
                continue;
            }
            struct item *it = item_take(d, m);
            it->attempts = 0;
            it->received_ns = rbus__now_ns();
            if (ordered && rbus_msg_order_key(m, NULL)) {
                bool busy;
                it->key = key_attach(d, it, &busy);
                if (busy) {
                    /* Parked behind the key; look for other work. */
                    if (it->key->parked_tail)
                        it->key->parked_tail->next = it;
                    else
                        it->key->parked = it;
                    it->key->parked_tail = it;
                    continue;
                }
            }
            return it;
        }
        /* Nothing to take now: wait for a slot, ready work, the receiving
         * role, a retry's due time, or stop. */
        wait_until(d, until);
    }
}

/* Under the lock, before a retry runs: a private copy of the message that
 * says which attempt this is (the key's bytes move with it). Out of memory,
 * the retry runs on the message as it is. */
static void prepare_retry(struct rbus_thread_state *th, struct item *it)
{
    if (it->attempts == 0 || !th)
        return;
    rbus_msg *copy = rbus__msg_clone(th, it->msg, it->attempts + 1);
    if (!copy)
        return;
    if (it->key && it->key->bytes == rbus_msg_order_key(it->msg, NULL))
        it->key->bytes = rbus_msg_order_key(copy, NULL);
    rbus__msg_unref_by(th, it->msg, 1);
    it->msg = copy;
}

/* Outside the lock: one attempt. Returns the handler's verdict; *began
 * and *ended say when the handler ran. */
static int run_attempt(rbus_dispatcher *d, struct item *it, int64_t *began, int64_t *ended)
{
    tls_running = d;
    *began = rbus__now_ns();
    /* Each attempt starts with an empty detail: the worker's own receives
     * and dead-letter publishes on this thread are not the handler's. */
    rbus__detail = NULL;
    rbus__msg_handler_enter(it->msg); /* misuse checks: the handler must not release it */
    int rc = d->fn(it->msg, d->arg);
    *ended = rbus__now_ns();
    rbus__msg_handler_leave();
    tls_running = NULL;
    return rc;
}

static void *worker_main(void *arg)
{
    rbus_dispatcher *d = arg;
    /* This thread's state on the bus, for message copies; NULL (no
     * memory) only means retries run on the original message. */
    struct rbus_thread_state *th = rbus__thread_get(d->bus);
    pthread_mutex_lock(&d->lock);
    for (;;) {
        bool quit = false;
        struct item *it = next_work(d, &quit);
        if (quit)
            break;
        prepare_retry(th, it);
        pthread_mutex_unlock(&d->lock);
        int64_t began, ended;
        int rc = run_attempt(d, it, &began, &ended);
        /* Again after every handler, outside the lock (attaching takes the
         * bus lock, which is taken before d->lock elsewhere): a handler
         * that published on more buses than a thread keeps states for
         * evicted ours, and another thread may have taken it over. */
        th = rbus__thread_get(d->bus);
        pthread_mutex_lock(&d->lock);
        if (it->attempts == 0)
            rbus__hist_add(&d->start_delay, began - it->received_ns);
        rbus__hist_add(&d->handler, ended - began);
        it->attempts++;
        if (rc >= 0) {
            d->stats.handled++;
            rbus_msg *m = it->msg;
            item_finish(d, it);
            rbus__msg_unref_by(th, m, 1); /* after: the key's bytes may live in m */
            continue;
        }
        d->stats.failed_attempts++;
        if (it->attempts < d->opts.max_attempts) {
            d->stats.retried++;
            int64_t now = rbus__now_ns(), delay = backoff_ns(d, it->attempts);
            bool at_once = d->stopping && !d->graceful;
            it->due_ns = at_once ? 0 : delay > INT64_MAX - now ? INT64_MAX : now + delay;
            heap_push(d, it);
            /* Waiting workers must see the (maybe earlier) due time. */
            pthread_cond_broadcast(&d->cond);
            continue;
        }
        /* Failed for good. Publish outside the lock; the message stays in
         * hand (and its key busy, its bytes alive) until item_finish. */
        pthread_mutex_unlock(&d->lock);
        int prc = -1;
        if (d->dead_letters) {
            struct rbus_relay relay = {rbus_msg_topic(it->msg), it->attempts, it->msg};
            prc = rbus__publish_relay(d->dead_letters, it->msg, &relay, DEAD_LETTER_WAIT_NS);
        }
        rbus_msg *m = it->msg;
        pthread_mutex_lock(&d->lock);
        if (prc == 0)
            d->stats.dead_lettered++;
        else
            d->stats.dropped++;
        item_finish(d, it);
        /* Only now: key_find may compare against the key's bytes in m
         * until item_finish handed the key on. */
        rbus__msg_unref_by(th, m, 1);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

/* ------------------------------------------------------ start/stop */

/* A dispatcher struct: the pool's oldest when more than RBUS__POOL_HOLD
 * wait there, else a fresh one (lock and cond initialised once). */
static rbus_dispatcher *dispatcher_get(rbus *bus)
{
    rbus_dispatcher *d =
        rbus__pool_take(bus, &bus->dispatcher_pool, offsetof(rbus_dispatcher, pool_next));
    if (!d) {
        d = rbus__zalloc(bus, sizeof *d);
        if (!d)
            return NULL;
        pthread_mutex_init(&d->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&d->cond, &ca);
        pthread_condattr_destroy(&ca);
    }
    /* Under the lock: a late stats call may hold it. */
    pthread_mutex_lock(&d->lock);
    unsigned char *p = (unsigned char *)d;
    size_t from = offsetof(rbus_dispatcher, sub);
    memset(p + from, 0, sizeof *d - from);
    d->bus = bus;
    pthread_mutex_unlock(&d->lock);
    return d;
}

/* Frees what hangs off d (its workers are joined, or never started) and
 * gives the struct to the pool. */
static void dispatcher_retire(rbus_dispatcher *d)
{
    rbus *bus = d->bus;
    pthread_mutex_lock(&d->lock);
    d->retired = true;
    pthread_mutex_unlock(&d->lock);
    rbus__free(bus, d->threads);
    rbus__free(bus, d->buckets);
    rbus__free(bus, d->keys);
    rbus__free(bus, d->heap);
    rbus__free(bus, d->items);
    d->threads = NULL;
    d->buckets = NULL;
    d->keys = NULL;
    d->heap = NULL;
    d->items = NULL;
    rbus__pool_put(bus, &bus->dispatcher_pool, d, offsetof(rbus_dispatcher, pool_next));
}

void rbus__dispatch_pool_free(rbus *bus)
{
    rbus_dispatcher *d;
    while ((d = rbus__pool_drain(&bus->dispatcher_pool, offsetof(rbus_dispatcher, pool_next)))) {
        pthread_cond_destroy(&d->cond);
        pthread_mutex_destroy(&d->lock);
        rbus__free(bus, d);
    }
}

static int dispatcher_alloc(rbus_dispatcher *d)
{
    rbus *bus = d->bus;
    uint32_t n = d->opts.max_in_hand;
    uint32_t nb = 16;
    while (nb < 2 * (uint64_t)n && nb < (UINT32_C(1) << 31))
        nb <<= 1;
    d->items = rbus__zalloc(bus, (size_t)n * sizeof *d->items);
    d->heap = rbus__zalloc(bus, (size_t)n * sizeof *d->heap);
    d->keys = rbus__zalloc(bus, (size_t)n * sizeof *d->keys);
    d->buckets = rbus__zalloc(bus, (size_t)nb * sizeof *d->buckets);
    d->threads = rbus__zalloc(bus, d->opts.threads * sizeof *d->threads);
    if (!d->items || !d->heap || !d->keys || !d->buckets || !d->threads)
        return -ENOMEM;
    d->bucket_mask = nb - 1;
    for (uint32_t i = 0; i < n; i++) {
        d->items[i].next = i + 1 < n ? &d->items[i + 1] : NULL;
        d->keys[i].chain = i + 1 < n ? &d->keys[i + 1] : NULL;
    }
    d->free_items = d->items;
    d->free_keys = d->keys;
    return 0;
}

/* Joins every started worker after asking them to finish what they hold. */
static void stop_and_join(rbus_dispatcher *d)
{
    pthread_mutex_lock(&d->lock);
    d->stopping = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    for (unsigned i = 0; i < d->nthreads; i++)
        pthread_join(d->threads[i], NULL);
}

/* After the workers are joined: adds the dispatcher's counters to its
 * subscription's totals (rbus_stats_prometheus keeps reporting them) and
 * unlinks it, both under the bus lock, which rbus_stats_prometheus holds
 * while it follows sub->dispatcher: it sees the dispatcher or the totals
 * that include it, never both nor neither. */
static void detach(rbus_dispatcher *d, rbus_dispatch_stats *final)
{
    rbus *bus = d->bus;
    rbus_sub *s = d->sub;
    pthread_mutex_lock(&bus->lock);
    rbus_dispatch_stats *t = &s->dispatched;
    t->handled += d->stats.handled;
    t->failed_attempts += d->stats.failed_attempts;
    t->retried += d->stats.retried;
    t->dead_lettered += d->stats.dead_lettered;
    t->dropped += d->stats.dropped;
    rbus__hist_merge(&s->dispatched_handler, &d->handler);
    rbus__hist_merge(&s->dispatched_start_delay, &d->start_delay);
    s->had_dispatcher = true;
    atomic_store_explicit(&s->dispatcher, NULL, memory_order_release);
    pthread_mutex_unlock(&bus->lock);
    if (final) {
        *final = d->stats;
        final->in_hand = 0;
    }
}

int rbus_dispatch_start(rbus_dispatcher **out, rbus_sub *sub, rbus_handler_fn fn, void *arg,
                        const rbus_dispatch_opts *opts)
{
    RBUS__PAUSE(RBUS_DISPATCH_START);
    if (out)
        *out = NULL;
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_dispatch_start: out is NULL");
    if (!sub)
        return rbus__fail_static(-EINVAL, "rbus_dispatch_start: sub is NULL");
    if (!fn)
        return rbus__fail_static(-EINVAL, "rbus_dispatch_start: fn is NULL");
    rbus_dispatch_opts o;
    int rc = resolve_opts(opts, &o);
    if (rc)
        return rc;
    /* A call on the subscription until it is claimed below: an
     * rbus_unsubscribe that begins meanwhile waits for us. */
    if (!rbus__sub_enter(sub))
        return rbus__fail_static(-ESHUTDOWN, "rbus_dispatch_start: rbus_unsubscribe of the "
                                             "subscription has begun");
    /* A dead letter the subscription itself receives would come back to
     * this dispatcher, fail again, and loop. */
    if (o.dead_letter_topic && rbus_pattern_match(sub->pattern, o.dead_letter_topic)) {
        char qt[RBUS__QUOTE_CAP], qp[RBUS__QUOTE_CAP];
        rbus__fail(-EINVAL,
                   "rbus_dispatch_start: dead_letter_topic %s is matched by the "
                   "subscription's own pattern %s (its dead letters would loop)",
                   rbus__quote(qt, o.dead_letter_topic), rbus__quote(qp, sub->pattern));
        rbus__sub_leave(sub);
        return -EINVAL;
    }
    rbus *bus = sub->bus;
    if (atomic_load_explicit(&bus->closing, memory_order_acquire)) {
        rbus__sub_leave(sub);
        return rbus__fail_static(-ESHUTDOWN, "rbus_dispatch_start: the bus is closed");
    }
    rbus_dispatcher *d = dispatcher_get(bus);
    if (!d) {
        rbus__sub_leave(sub);
        return rbus__fail_static(-ENOMEM, "rbus_dispatch_start: out of memory for the "
                                          "dispatcher");
    }
    d->sub = sub;
    d->fn = fn;
    d->arg = arg;
    d->opts = o;
    d->rng = bus->dedup_seed ^ sub->id ^ (uint64_t)rbus__now_ns();
    if ((rc = dispatcher_alloc(d)) != 0) {
        rbus__fail(rc,
                   "rbus_dispatch_start: out of memory for the dispatcher's tables (max_in_hand "
                   "%" PRIu32 ", threads %u)",
                   o.max_in_hand, o.threads);
        goto fail;
    }
    if (o.dead_letter_topic &&
        (rc = rbus_topic_open(bus, o.dead_letter_topic, &d->dead_letters)) != 0) {
        /* Its own words, not rbus_topic_open's, which are in the buffer. */
        char q[RBUS__QUOTE_CAP];
        rbus__quote(q, o.dead_letter_topic);
        if (rc == -ENOSPC)
            rbus__fail(rc,
                       "rbus_dispatch_start: dead_letter_topic %s could not be opened: "
                       "max_topics (%" PRIu32 ") reached",
                       q, bus->cfg.max_topics);
        else if (rc == -ESHUTDOWN)
            rbus__fail_static(rc, "rbus_dispatch_start: the bus is closed");
        else
            rbus__fail(rc, "rbus_dispatch_start: dead_letter_topic %s could not be opened: %s", q,
                       rbus_strerror(rc));
        goto fail;
    }
    /* Claim the subscription (one dispatcher each); acq_rel pairs with the
     * claim in rbus_unsubscribe, so exactly one of two racing calls wins. */
    void *seen = NULL;
    if (!atomic_compare_exchange_strong_explicit(&sub->dispatcher, &seen, d, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        rc = seen == RBUS__UNSUBSCRIBING
                 ? rbus__fail_static(-ESHUTDOWN, "rbus_dispatch_start: rbus_unsubscribe of "
                                                 "the subscription began meanwhile")
                 : rbus__fail_static(-EBUSY, "rbus_dispatch_start: the subscription already "
                                             "has a dispatcher");
        goto fail;
    }
    /* Claimed: rbus_unsubscribe now answers -EBUSY, so our own hold on
     * the subscription can end (the workers' receives are calls of their
     * own). */
    rbus__sub_leave(sub);
    /* Workers inherit a full signal mask: signals are the application's. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    char name[16];
    snprintf(name, sizeof name, "rbus-%llu", (unsigned long long)sub->id);
    for (unsigned i = 0; i < o.threads; i++) {
        int err = pthread_create(&d->threads[i], NULL, worker_main, d);
        if (err != 0) {
            rc = rbus__fail(-EAGAIN,
                            "rbus_dispatch_start: could not create worker thread %u of %u "
                            "(pthread_create: error %d)",
                            i + 1, o.threads, err);
            break;
        }
        pthread_setname_np(d->threads[i], name);
        d->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        /* Workers already started may hold messages: they finish them. The
         * pointer is cleared under the bus lock, as in rbus_dispatch_stop,
         * because rbus_stats_prometheus follows it under that lock. */
        stop_and_join(d);
        detach(d, NULL);
        dispatcher_retire(d);
        return rc;
    }
    *out = d;
    return 0;
fail:
    rbus__sub_leave(sub);
    dispatcher_retire(d);
    return rc;
}

/* Marks the stop begun; false (a second stop or drain) when it already was. */
static bool begin_end(rbus_dispatcher *d)
{
    pthread_mutex_lock(&d->lock);
    bool again = d->stop_begun || d->retired;
    d->stop_begun = true;
    pthread_mutex_unlock(&d->lock);
    return !again;
}

int rbus_dispatch_stop(rbus_dispatcher *d)
{
    RBUS__PAUSE(RBUS_DISPATCH_STOP);
    if (!d)
        return rbus__fail_static(-EINVAL, "rbus_dispatch_stop: d is NULL");
    if (tls_running == d)
        return rbus__fail_static(-EDEADLK, "rbus_dispatch_stop: called from one of the "
                                           "dispatcher's own handlers (it would wait for "
                                           "itself)");
    if (!begin_end(d))
        return rbus__fail_static(-EINVAL, "rbus_dispatch_stop: rbus_dispatch_stop or "
                                          "rbus_dispatch_drain was already called on this "
                                          "dispatcher");
    stop_and_join(d);
    detach(d, NULL);
    dispatcher_retire(d);
    return 0;
}

/* Under the lock: one wait of a drain for the workers; false once its
 * deadline has passed (at once for timeout 0). */
static bool drain_wait(rbus_dispatcher *d, int64_t timeout_ns, int64_t deadline)
{
    if (timeout_ns == 0 || (deadline >= 0 && rbus__now_ns() >= deadline))
        return false;
    wait_until(d, deadline);
    return true;
}

int rbus_dispatch_drain(rbus_dispatcher *d, int64_t timeout_ns, rbus_dispatch_stats *final)
{
    RBUS__PAUSE(RBUS_DISPATCH_DRAIN);
    if (final)
        memset(final, 0, sizeof *final);
    if (!d)
        return rbus__fail_static(-EINVAL, "rbus_dispatch_drain: d is NULL");
    if (tls_running == d)
        return rbus__fail_static(-EDEADLK, "rbus_dispatch_drain: called from one of the "
                                           "dispatcher's own handlers (it would wait for "
                                           "itself)");
    if (!begin_end(d))
        return rbus__fail_static(-EINVAL, "rbus_dispatch_drain: rbus_dispatch_stop or "
                                          "rbus_dispatch_drain was already called on this "
                                          "dispatcher");
    int64_t deadline = rbus__deadline(timeout_ns);
    int rc = 0;
    pthread_mutex_lock(&d->lock);
    /* seq_cst, as every move of tail: a publish that returned before this
     * call has its position below the mark. */
    d->drain_mark = atomic_load_explicit(&d->sub->ring.tail, memory_order_seq_cst);
    d->draining = true;
    pthread_cond_broadcast(&d->cond);
    /* Passed, and workers hold nothing but reservations for receives in
     * flight. A receive in flight may still return a message from before
     * the mark (its worker claimed it and was preempted before it came
     * back), so the stop that follows is graceful: messages in hand are
     * run as always, retries after their backoff, until the deadline. */
    for (;;) {
        RBUS__PAUSE(DISPATCH_DRAIN_CHECK);
        if (drain_passed(d) && d->in_hand == d->receiving)
            break;
        if (!drain_wait(d, timeout_ns, deadline)) {
            rc = -ETIMEDOUT;
            break;
        }
    }
    d->stopping = true;
    d->graceful = rc == 0;
    pthread_cond_broadcast(&d->cond);
    while (d->graceful && d->in_hand != 0) {
        if (!drain_wait(d, timeout_ns, deadline)) {
            /* Out of time: what is left runs at once. Receives still in
             * flight (an idle worker's wait) are no work left undone. */
            if (d->in_hand != d->receiving)
                rc = -ETIMEDOUT;
            d->graceful = false;
            pthread_cond_broadcast(&d->cond);
        }
    }
    pthread_mutex_unlock(&d->lock);
    stop_and_join(d);
    /* Before the subscription is let go: it is alive while claimed. */
    uint32_t left = rc ? rbus__ring_depth(&d->sub->ring) : 0;
    detach(d, final);
    dispatcher_retire(d);
    if (rc)
        return rbus__fail(rc,
                          "rbus_dispatch_drain: the timeout ran out; the dispatcher stopped with "
                          "%" PRIu32 " message(s) still queued",
                          left);
    return 0;
}

int rbus_dispatch_stats_get(const rbus_dispatcher *dc, rbus_dispatch_stats *out)
{
    RBUS__PAUSE(RBUS_DISPATCH_STATS_GET);
    if (!dc)
        return rbus__fail_static(-EINVAL, "rbus_dispatch_stats_get: d is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_dispatch_stats_get: out is NULL");
    rbus_dispatcher *d = (rbus_dispatcher *)dc;
    pthread_mutex_lock(&d->lock);
    if (d->retired) {
        pthread_mutex_unlock(&d->lock);
        memset(out, 0, sizeof *out);
        return rbus__fail_static(-ESHUTDOWN, "rbus_dispatch_stats_get: rbus_dispatch_stop has "
                                             "finished on this dispatcher");
    }
    *out = d->stats;
    out->in_hand = d->in_hand - d->receiving;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

int rbus_dispatch_timing_get(const rbus_dispatcher *dc, rbus_dispatch_timing *out)
{
    RBUS__PAUSE(RBUS_DISPATCH_TIMING_GET);
    if (!dc)
        return rbus__fail_static(-EINVAL, "rbus_dispatch_timing_get: d is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_dispatch_timing_get: out is NULL");
    rbus_dispatcher *d = (rbus_dispatcher *)dc;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&d->lock);
    if (d->retired) {
        pthread_mutex_unlock(&d->lock);
        return rbus__fail_static(-ESHUTDOWN, "rbus_dispatch_timing_get: rbus_dispatch_stop has "
                                             "finished on this dispatcher");
    }
    rbus__hist_read(&d->handler, &out->handler);
    rbus__hist_read(&d->start_delay, &out->start_delay);
    pthread_mutex_unlock(&d->lock);
    return 0;
}

void rbus__dispatch_stop_all(rbus *bus)
{
    for (;;) {
        rbus_dispatcher *d = NULL;
        pthread_mutex_lock(&bus->lock);
        for (rbus_sub *s = bus->subs; s && !d; s = s->bus_next)
            if ((d = atomic_load_explicit(&s->dispatcher, memory_order_acquire)) ==
                RBUS__UNSUBSCRIBING)
                d = NULL;
        pthread_mutex_unlock(&bus->lock);
        /* Fails only when called from one of d's handlers (rbus_destroy
         * from a handler, which is undefined): stop rather than spin. */
        if (!d || rbus_dispatch_stop(d) != 0)
            return;
    }
}
