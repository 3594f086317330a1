/*
 * topic.c - topic names and patterns, the topic registry, each topic's list
 * of matching subscriptions, and the publish path that walks it.
 *
 * Routing is decided when subscriptions and topics come and go, never per
 * message: each topic holds an immutable array of the open subscriptions
 * whose pattern matches it. Subscribe, sub_close and topic_open build new
 * arrays under bus->lock and swap them in (copy-on-write); a publisher
 * loads the array inside an epoch read section, so the old array is freed
 * only after rbus__synchronize().
 */
#include "internal.h"
#include "ring.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------- names and patterns */

static bool token_char_ok(unsigned char c)
{
    /* Printable ASCII other than space; '.', '*' and '>' are handled by
     * the callers. */
    return c > 0x20 && c < 0x7f;
}

/* Writes the rule a subject breaks into why (when it is not NULL); returns
 * false, for subject_valid's one-line exits. Cold: only invalid input. */
static RBUS__PRINTF(3, 4) bool subject_bad(char *why, size_t cap, const char *fmt, ...)
{
    if (why) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, cap, fmt, ap);
        va_end(ap);
    }
    return false;
}

/* The one validator of subjects, so that rbus_topic_valid, rbus_pattern_valid
 * and the texts of rbus_last_error_detail cannot disagree. Wildcards are
 * allowed only when `pattern`. When s is invalid and `why` is not NULL, the
 * rule it breaks goes there (cap bytes); a valid subject, or a NULL `why`,
 * formats nothing. */
static bool subject_valid(const char *s, bool pattern, char *why, size_t cap)
{
    if (!s)
        return subject_bad(why, cap, "is NULL");
    size_t len = strnlen(s, RBUS_MAX_TOPIC_LEN + 1);
    if (len == 0)
        return subject_bad(why, cap, "is empty");
    if (len > RBUS_MAX_TOPIC_LEN)
        return subject_bad(why, cap, "longer than RBUS_MAX_TOPIC_LEN (%d bytes)",
                           RBUS_MAX_TOPIC_LEN);
    const char *tok = s;
    for (;;) {
        const char *end = tok;
        while (*end && *end != '.')
            end++;
        size_t tlen = (size_t)(end - tok), at = (size_t)(tok - s);
        if (tlen == 0)
            return subject_bad(why, cap, "empty token at offset %zu (%s)", at,
                               tok == s ? "leading '.'"
                               : *end   ? "'..'"
                                        : "trailing '.'");
        if (tlen == 1 && (*tok == '*' || *tok == '>')) {
            if (!pattern)
                return subject_bad(
                    why, cap, "wildcard '%c' at offset %zu (a topic name takes none)", *tok, at);
            if (*tok == '>' && *end != '\0')
                return subject_bad(why, cap, "'>' must be the last token (offset %zu)", at);
        } else {
            for (const char *p = tok; p < end; p++) {
                unsigned char c = (unsigned char)*p;
                size_t off = (size_t)(p - s);
                if (c == '*' || c == '>')
                    return subject_bad(why, cap,
                                       "'%c' inside a token at offset %zu (a wildcard is a "
                                       "whole token)",
                                       c, off);
                if (token_char_ok(c))
                    continue;
                if (c == ' ' || (c >= '\t' && c <= '\r'))
                    return subject_bad(why, cap, "whitespace 0x%02x at offset %zu", c, off);
                if (c < 0x20 || c == 0x7f)
                    return subject_bad(why, cap, "control character 0x%02x at offset %zu", c, off);
                return subject_bad(why, cap, "byte 0x%02x at offset %zu (not printable ASCII)", c,
                                   off);
            }
        }
        if (*end == '\0')
            return true;
        tok = end + 1;
    }
}

bool rbus_topic_valid(const char *name)
{
    return subject_valid(name, false, NULL, 0);
}

bool rbus_pattern_valid(const char *pattern)
{
    return subject_valid(pattern, true, NULL, 0);
}

int rbus__subject_check(const char *fn, const char *what, const char *s, bool pattern)
{
    char why[128];
    if (RBUS__LIKELY(subject_valid(s, pattern, why, sizeof why)))
        return 0;
    if (!s)
        return rbus__fail(-EINVAL, "%s: %s is NULL", fn, what);
    char q[RBUS__QUOTE_CAP];
    return rbus__fail(-EINVAL, "%s: %s %s: %s", fn, what, rbus__quote(q, s), why);
}

bool rbus__match_unchecked(const char *p, const char *n)
{
    for (;;) {
        const char *pe = p, *ne = n;
        while (*pe && *pe != '.')
            pe++;
        while (*ne && *ne != '.')
            ne++;
        size_t plen = (size_t)(pe - p);
        if (plen == 1 && *p == '>')
            return true; /* the name has at least this one more token */
        if (!(plen == 1 && *p == '*')) {
            if (plen != (size_t)(ne - n) || memcmp(p, n, plen) != 0)
                return false;
        }
        if (*pe == '\0' || *ne == '\0')
            return *pe == '\0' && *ne == '\0';
        p = pe + 1;
        n = ne + 1;
    }
}

bool rbus_pattern_match(const char *pattern, const char *name)
{
    if (!rbus_pattern_valid(pattern) || !rbus_topic_valid(name))
        return false;
    return rbus__match_unchecked(pattern, name);
}

const char *rbus_topic_name(const rbus_topic *topic)
{
    RBUS__PAUSE(RBUS_TOPIC_NAME);
    return topic ? topic->name : NULL;
}

/* ------------------------------------------------------------ registry */

static uint32_t hash_name(const char *s, size_t len)
{
    /* FNV-1a: topic lookups happen at topic_open and subscribe only. */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static rbus_topic *registry_find(rbus *bus, const char *name, size_t len, uint32_t h)
{
    for (rbus_topic *t = bus->buckets[h & (bus->nbuckets - 1)]; t; t = t->hash_next)
        if (t->hash == h && t->name_len == len && memcmp(t->name, name, len) == 0)
            return t;
    return NULL;
}

static void registry_grow(rbus *bus)
{
    /* Best effort: a failed grow only makes chains longer. */
    uint32_t n = bus->nbuckets * 2;
    rbus_topic **b = rbus__zalloc(bus, n * sizeof *b);
    if (!b)
        return;
    for (rbus_topic *t = bus->topics; t; t = t->all_next) {
        t->hash_next = b[t->hash & (n - 1)];
        b[t->hash & (n - 1)] = t;
    }
    rbus__free(bus, bus->buckets);
    bus->buckets = b;
    bus->nbuckets = n;
}

static struct rbus_sublist *sublist_new(rbus *bus, uint32_t count)
{
    struct rbus_sublist *l = rbus__alloc(bus, sizeof *l + count * sizeof(rbus_sub *));
    if (l) {
        l->garbage_next = NULL;
        l->owner = NULL;
        l->cap = count;
        l->count = count;
    }
    return l;
}

/* Under bus->lock: the list `next` that topic t publishes now gets the
 * topic's next generation; a replay notes it for a topic with history. */
static void list_stamp(rbus_topic *t, struct rbus_sublist *next, struct rbus_replay *r)
{
    if (!next)
        return;
    next->gen = ++t->list_gen;
    if (r && r->cap && atomic_load_explicit(&t->hist, memory_order_relaxed)) {
        r->topics[r->ntopics] = t;
        r->gens[r->ntopics++] = next->gen;
    }
}

uint32_t rbus__topic_count_subs(rbus_topic *t, bool (*pred)(const rbus_sub *s), bool locked)
{
    struct rbus_thread_state *th = locked ? NULL : rbus__thread_get(t->bus);
    bool lock = !locked && !th;
    if (th)
        rbus__read_begin(th);
    else if (lock)
        pthread_mutex_lock(&t->bus->lock);
    /* Acquire: pairs with the release exchange in rbus__topics_update. */
    const struct rbus_sublist *l = atomic_load_explicit(&t->subs, memory_order_acquire);
    uint32_t n = 0;
    for (uint32_t i = 0; l && i < l->count; i++)
        n += pred(l->subs[i]);
    if (th)
        rbus__read_end(th);
    else if (lock)
        pthread_mutex_unlock(&t->bus->lock);
    return n;
}

/* Under bus->lock, or before t is visible: sets t's features, and
 * plain_below from them (publish()). Release: after the pointers the
 * features stand for. */
static void features_store(rbus_topic *t, uint32_t f)
{
    atomic_store_explicit(&t->features, f, memory_order_release);
    atomic_store_explicit(&t->plain_below, f ? 0 : (uint64_t)t->bus->cfg.max_payload + 1,
                          memory_order_release);
}

/* The listed (open) subscriptions whose pattern matches `name`: counted,
 * and stored into `fill` when it is not NULL. Under bus->lock. */
static uint32_t listed_matching(rbus *bus, const char *name, rbus_sub **fill)
{
    uint32_t count = 0;
    for (rbus_sub *s = bus->subs; s; s = s->bus_next)
        if (s->listed && rbus__match_unchecked(s->pattern, name)) {
            if (fill)
                fill[count] = s;
            count++;
        }
    return count;
}

/* -ENOMEM: a keyed topic's window could not be built. */
static int topic_no_window(const rbus *bus, const char *name)
{
    char q[RBUS__QUOTE_CAP];
    return rbus__fail(-ENOMEM, "out of memory for the key window of %s (dedup_keys %" PRIu32 ")",
                      rbus__quote(q, name), bus->cfg.dedup_keys);
}

/* Finds or creates the topic `name` (checked by the caller). `keyed`: the
 * topic has its dedup window when this returns 0; a topic created here gets
 * it before anyone can see the topic. A topic created here keeps the
 * history *hist (which it then takes: *hist becomes NULL), or, with none,
 * one of the bus's default size. Failures set the detail without a
 * function name, which the public callers put in front. */
static int topic_open(rbus *bus, const char *name, bool keyed, struct rbus_history **given,
                      rbus_topic **out)
{
    size_t len = strlen(name);
    uint32_t h = hash_name(name, len);
    /* Built outside bus->lock (it is large, and the lock is for short
     * sections), and only when the topic does not exist yet. */
    struct rbus_dedup *window = NULL;
    rbus_topic *t = NULL;
    int rc = 0;
    for (;;) {
        pthread_mutex_lock(&bus->lock);
        if (atomic_load_explicit(&bus->closing, memory_order_relaxed)) {
            rc = rbus__fail_static(-ESHUTDOWN, "the bus is closed");
            break;
        }
        t = registry_find(bus, name, len, h);
        if (t)
            break;
        if (bus->ntopics >= bus->cfg.max_topics) {
            char q[RBUS__QUOTE_CAP];
            rc = rbus__fail(-ENOSPC, "new topic %s: max_topics (%" PRIu32 ") reached",
                            rbus__quote(q, name), bus->cfg.max_topics);
            break;
        }
        if (keyed && !window) {
            pthread_mutex_unlock(&bus->lock);
            if (!(window = rbus__dedup_new(bus)))
                return topic_no_window(bus, name);
            continue; /* look again: another thread may have created it */
        }

        uint32_t count = listed_matching(bus, name, NULL);
        struct rbus_history *hist = given && *given ? *given : NULL;
        bool own_hist = !hist && bus->cfg.retain;
        if (own_hist)
            hist = rbus__history_new(bus, bus->cfg.retain);
        t = rbus__zalloc_aligned(bus, sizeof *t);
        struct rbus_sublist *list = count ? sublist_new(bus, count) : NULL;
        /* The first spare, so that a later removal never allocates. */
        struct rbus_sublist *spare = count > 1 ? sublist_new(bus, count) : NULL;
        char *copy = rbus__strdup(bus, name);
        if (!t || !copy || (count && !list) || (count > 1 && !spare) || (own_hist && !hist)) {
            if (own_hist)
                rbus__history_free(bus, hist);
            rbus__free_aligned(bus, t);
            rbus__free(bus, list);
            rbus__free(bus, spare);
            rbus__free(bus, copy);
            t = NULL;
            char q[RBUS__QUOTE_CAP];
            rc = rbus__fail(-ENOMEM, "out of memory for the topic %s", rbus__quote(q, name));
            break;
        }
        if (list)
            listed_matching(bus, name, list->subs);
        t->bus = bus;
        t->name = copy;
        t->name_len = (uint32_t)len;
        t->hash = h;
        t->spare = spare;
        list_stamp(t, list, NULL);
        atomic_init(&t->ready_fd, -1);
        /* No publisher can see the topic before we return it: relaxed. */
        atomic_store_explicit(&t->subs, list, memory_order_relaxed);
        atomic_store_explicit(&t->hist, hist, memory_order_relaxed);
        features_store(t, hist ? RBUS__TOPIC_RETAINED : 0);
        if (hist && !own_hist)
            *given = NULL; /* the topic's now */
        /* Release: pairs with rbus_subscribe's acquire (a replay then
         * finds the topic under bus->lock anyway). */
        if (hist)
            atomic_store_explicit(&bus->retains, 1, memory_order_release);
        atomic_store_explicit(&t->listed_hint, count, memory_order_relaxed);
        atomic_store_explicit(&t->dedup, window, memory_order_relaxed);
        window = NULL;
        t->hash_next = bus->buckets[h & (bus->nbuckets - 1)];
        bus->buckets[h & (bus->nbuckets - 1)] = t;
        t->all_next = bus->topics;
        bus->topics = t;
        bus->ntopics++;
        if (bus->ntopics > bus->nbuckets)
            registry_grow(bus);
        break;
    }
    pthread_mutex_unlock(&bus->lock);
    rbus__dedup_free(bus, window);
    /* A topic that existed without a window gets one now. */
    if (rc == 0 && keyed && (rc = rbus__dedup_prepare(t)) != 0) {
        rc = topic_no_window(bus, name);
        t = NULL;
    }
    *out = t;
    return rc;
}

int rbus_topic_open(rbus *bus, const char *name, rbus_topic **out)
{
    RBUS__PAUSE(RBUS_TOPIC_OPEN);
    if (out)
        *out = NULL;
    if (!bus)
        return rbus__fail_static(-EINVAL, "rbus_topic_open: bus is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_topic_open: out is NULL");
    int rc = rbus__subject_check("rbus_topic_open", "name", name, false);
    if (rc == 0 && (rc = topic_open(bus, name, false, NULL, out)) != 0)
        rbus__fail_prefix("rbus_topic_open");
    return rc;
}

void rbus_topic_opts_init(rbus_topic_opts *opts)
{
    if (opts)
        memset(opts, 0, sizeof *opts);
}

/* The rate and burst of opts: 0 (none, or valid), or -EINVAL. */
static int rate_check(const rbus_topic_opts *o)
{
    if (o->rate_per_s == 0 && o->rate_burst == 0)
        return 0;
    if (!(o->rate_per_s >= RBUS_MIN_RATE && o->rate_per_s <= RBUS_MAX_RATE))
        return rbus__fail(-EINVAL, "rbus_topic_open_ex: rate_per_s %g outside %g..%g",
                          o->rate_per_s, RBUS_MIN_RATE, RBUS_MAX_RATE);
    if (o->rate_burst < 1 || o->rate_burst > RBUS_MAX_RATE_BURST)
        return rbus__fail(-EINVAL, "rbus_topic_open_ex: rate_burst %" PRIu32 " outside 1..%u",
                          o->rate_burst, RBUS_MAX_RATE_BURST);
    return 0;
}

/* Gives t the limit l and a history of `retain` messages (h, made for it)
 * where it has none; each is set once. Under bus->lock, so that both are
 * checked before either is set: 0, or -EINVAL (nothing changed) when t
 * has a different one already. Frees what did not become t's. */
static int topic_features_set(rbus_topic *t, struct rbus_limit *l, uint32_t retain,
                              struct rbus_history *h)
{
    rbus *bus = t->bus;
    char q[RBUS__QUOTE_CAP];
    int rc = 0;
    pthread_mutex_lock(&bus->lock);
    struct rbus_limit *had = atomic_load_explicit(&t->limit, memory_order_relaxed);
    struct rbus_history *kept = atomic_load_explicit(&t->hist, memory_order_relaxed);
    if (l && had && !(had->rate_per_s == l->rate_per_s && had->burst == l->burst)) {
        rc = rbus__fail(-EINVAL,
                        "rbus_topic_open_ex: topic %s has a rate limit already (%g a second, "
                        "burst %" PRIu32 "); a limit is set once",
                        rbus__quote(q, t->name), had->rate_per_s, had->burst);
    } else if (retain && kept && kept->keep != retain) {
        rc = rbus__fail(-EINVAL,
                        "rbus_topic_open_ex: topic %s retains %" PRIu32
                        " messages already; a history is set once",
                        rbus__quote(q, t->name), kept->keep);
    } else {
        uint32_t f = atomic_load_explicit(&t->features, memory_order_relaxed);
        /* Release stores of the pointers: a publisher's acquire load then
         * sees what they point to. `features` follows them (a publisher
         * that sees the bit but not yet the pointer does without). */
        if (l && !had) {
            atomic_store_explicit(&t->limit, l, memory_order_release);
            f |= RBUS__TOPIC_LIMITED;
            l = NULL;
        }
        if (h && !kept) {
            atomic_store_explicit(&t->hist, h, memory_order_release);
            f |= RBUS__TOPIC_RETAINED;
            atomic_store_explicit(&bus->retains, 1, memory_order_release);
            h = NULL;
        }
        features_store(t, f);
    }
    pthread_mutex_unlock(&bus->lock);
    rbus__free_aligned(bus, l);
    rbus__history_free(bus, h);
    return rc;
}

int rbus_topic_open_ex(rbus *bus, const char *name, const rbus_topic_opts *opts, rbus_topic **out)
{
    RBUS__PAUSE(RBUS_TOPIC_OPEN_EX);
    if (out)
        *out = NULL;
    if (!bus)
        return rbus__fail_static(-EINVAL, "rbus_topic_open_ex: bus is NULL");
    if (!out)
        return rbus__fail_static(-EINVAL, "rbus_topic_open_ex: out is NULL");
    int rc = rbus__subject_check("rbus_topic_open_ex", "name", name, false);
    if (rc != 0 || (opts && (rc = rate_check(opts)) != 0))
        return rc;
    uint32_t retain = opts ? opts->retain : 0;
    if (retain > RBUS_MAX_RETAIN)
        return rbus__fail(
            -EINVAL, "rbus_topic_open_ex: retain %" PRIu32 " above RBUS_MAX_RETAIN (%" PRIu32 ")",
            retain, RBUS_MAX_RETAIN);
    /* The limit and the history are made before the topic, so that no
     * failure for memory can follow the topic's creation; a topic created
     * now takes the history at once. */
    struct rbus_limit *l = NULL;
    struct rbus_history *h = NULL;
    if (opts && opts->rate_per_s > 0) {
        if (!(l = rbus__zalloc_aligned(bus, sizeof *l)))
            return rbus__fail_static(-ENOMEM, "rbus_topic_open_ex: out of memory for the rate "
                                              "limit");
        l->rate_per_s = opts->rate_per_s;
        l->burst = opts->rate_burst;
        double interval = 1e9 / opts->rate_per_s;
        l->interval_ns = interval < 1 ? 1 : (uint64_t)interval;
        l->tolerance_ns = (uint64_t)(opts->rate_burst - 1) * l->interval_ns;
        atomic_init(&l->tat, 0);
        atomic_init(&l->limited, 0);
    }
    if (retain && !(h = rbus__history_new(bus, retain))) {
        rbus__free_aligned(bus, l);
        return rbus__fail(-ENOMEM,
                          "rbus_topic_open_ex: out of memory for a history of %" PRIu32 " messages",
                          retain);
    }
    bool keyed = opts && opts->keyed && bus->cfg.dedup_keys != RBUS_DEDUP_OFF;
    if ((rc = topic_open(bus, name, keyed, &h, out)) != 0) {
        rbus__free_aligned(bus, l);
        rbus__history_free(bus, h);
        rbus__fail_prefix("rbus_topic_open_ex");
        return rc;
    }
    if ((l || h) && (rc = topic_features_set(*out, l, retain, h)) != 0)
        *out = NULL;
    return rc;
}

/* A publish at `now` under limit l: 0 when accepted (a token taken), or
 * -EAGAIN with *retry_ns set to when one would be. Lock-free: a CAS that
 * fails saw another publish accepted, and retries with its tat. */
static int limit_take(struct rbus_limit *l, uint64_t now, uint64_t *retry_ns)
{
    uint64_t tat = atomic_load_explicit(&l->tat, memory_order_relaxed);
    for (;;) {
        uint64_t base = tat > now ? tat : now;
        if (base - now > l->tolerance_ns) {
            *retry_ns = base - now - l->tolerance_ns;
            atomic_fetch_add_explicit(&l->limited, 1, memory_order_relaxed);
            return -EAGAIN;
        }
        /* Relaxed: the counter orders nothing else; its atomicity is the
         * whole guarantee. */
        if (atomic_compare_exchange_weak_explicit(&l->tat, &tat, base + l->interval_ns,
                                                  memory_order_relaxed, memory_order_relaxed))
            return 0;
    }
}

/* ------------------------------------------------- subscription lists */

/*
 * Removing a subscription must never fail (rbus_unsubscribe cannot report
 * -ENOMEM), yet a publisher may be walking the current list, so removal
 * needs a second buffer. Each topic keeps a spare: the list it retired
 * last, recycled once a grace period has passed. Invariant, true after
 * every list update: a topic whose list holds c subscriptions has a spare of
 * capacity >= c - 1 (or c <= 1). It holds because the list being retired
 * always held one more (removal) or one fewer (addition) than the new one,
 * and topic_open allocates the first spare. Adding may still allocate, and
 * may fail with -ENOMEM, leaving routing untouched.
 */
static struct rbus_sublist *take_spare(rbus_topic *t, uint32_t need)
{
    struct rbus_sublist *l = t->spare;
    if (!l || l->cap < need)
        return NULL;
    t->spare = NULL;
    return l;
}

static void keep_spare(rbus *bus, rbus_topic *t, struct rbus_sublist *l)
{
    if (!t->spare || t->spare->cap < l->cap) {
        rbus__free(bus, t->spare);
        t->spare = l;
    } else {
        rbus__free(bus, l);
    }
}

static bool lists_sub(const struct rbus_sublist *l, const rbus_sub *sub)
{
    for (uint32_t i = 0; l && i < l->count; i++)
        if (l->subs[i] == sub)
            return true;
    return false;
}

/* Under bus->lock: swaps in new lists for every topic `sub` matches, and
 * returns the retired ones in *retired. Adding returns 0 or -ENOMEM
 * (nothing changed). */
/* Under bus->lock, adding a subscription with a replay: the topics with
 * history it matches, how many it may replay (at most its capacity, at
 * most `want` per topic), and the replay's buffers. -ENOMEM changes
 * nothing. */
static int replay_prepare(rbus *bus, rbus_sub *sub, struct rbus_replay *r)
{
    uint64_t total = 0;
    uint32_t n = 0;
    for (rbus_topic *t = bus->topics; t; t = t->all_next) {
        struct rbus_history *h = atomic_load_explicit(&t->hist, memory_order_relaxed);
        if (h && rbus__match_unchecked(sub->pattern, t->name)) {
            n++;
            total += r->want < h->keep ? r->want : h->keep;
        }
    }
    uint32_t cap = total < sub->capacity ? (uint32_t)total : sub->capacity;
    if (cap == 0)
        return 0;
    r->topics = rbus__alloc(bus, n * sizeof *r->topics);
    r->gens = rbus__alloc(bus, n * sizeof *r->gens);
    for (int i = 0; i < 3; i++)
        r->buf[i] = rbus__alloc(bus, (size_t)cap * sizeof *r->buf[i]);
    if (!r->topics || !r->gens || !r->buf[0] || !r->buf[1] || !r->buf[2]) {
        rbus__replay_free(bus, r);
        return -ENOMEM;
    }
    r->cap = cap;
    return 0;
}

static int update_swap(rbus *bus, rbus_sub *sub, bool add, struct rbus_sublist **retired,
                       struct rbus_replay *replay)
{
    uint32_t n = 0;
    for (rbus_topic *t = bus->topics; t; t = t->all_next)
        if (rbus__match_unchecked(sub->pattern, t->name))
            n++;
    *retired = NULL;
    if (n == 0) {
        sub->listed = add;
        return 0;
    }
    if (add && replay && replay->want && replay_prepare(bus, sub, replay) != 0)
        return -ENOMEM;

    /* Adding: get every buffer before swapping any, so -ENOMEM changes
     * nothing. */
    struct rbus_sublist **fresh = NULL;
    if (add) {
        fresh = rbus__zalloc(bus, n * sizeof *fresh);
        if (!fresh) {
            if (replay)
                rbus__replay_free(bus, replay);
            return -ENOMEM;
        }
        uint32_t i = 0;
        for (rbus_topic *t = bus->topics; t; t = t->all_next) {
            if (!rbus__match_unchecked(sub->pattern, t->name))
                continue;
            struct rbus_sublist *cur = atomic_load_explicit(&t->subs, memory_order_relaxed);
            uint32_t need = (cur ? cur->count : 0) + 1;
            if (!t->spare || t->spare->cap < need) {
                fresh[i] = sublist_new(bus, need);
                if (!fresh[i]) {
                    for (uint32_t j = 0; j < i; j++)
                        rbus__free(bus, fresh[j]);
                    rbus__free(bus, fresh);
                    if (replay)
                        rbus__replay_free(bus, replay);
                    return -ENOMEM;
                }
            }
            i++;
        }
    }

    struct rbus_sublist *garbage = NULL;
    uint32_t i = 0;
    for (rbus_topic *t = bus->topics; t; t = t->all_next) {
        if (!rbus__match_unchecked(sub->pattern, t->name))
            continue;
        struct rbus_sublist *cur = atomic_load_explicit(&t->subs, memory_order_relaxed);
        uint32_t c = cur ? cur->count : 0;
        struct rbus_sublist *next = NULL;
        if (add) {
            next = fresh[i] ? fresh[i] : take_spare(t, c + 1);
            if (c)
                memcpy(next->subs, cur->subs, c * sizeof(rbus_sub *));
            next->subs[c] = sub;
            next->count = c + 1;
        } else if (lists_sub(cur, sub) && c > 1) {
            next = take_spare(t, c - 1);
            while (!next) {
                /* Unreachable while the invariant above holds; if it ever
                 * broke, waiting for memory beats failing an unsubscribe. */
                struct timespec pause = {0, 1000000};
                if (!(next = sublist_new(bus, c - 1)))
                    nanosleep(&pause, NULL);
            }
            uint32_t k = 0;
            for (uint32_t j = 0; j < c; j++)
                if (cur->subs[j] != sub)
                    next->subs[k++] = cur->subs[j];
            next->count = k;
        } else if (!lists_sub(cur, sub)) {
            i++;
            continue; /* not listed here (nothing to remove) */
        }
        i++;
        list_stamp(t, next, add ? replay : NULL);
        /* Release: the new list's contents, and the subscription it points
         * to, are complete for a publisher that loads it (acquire). */
        struct rbus_sublist *old = atomic_exchange_explicit(&t->subs, next, memory_order_release);
        atomic_store_explicit(&t->listed_hint, next ? next->count : 0, memory_order_relaxed);
        if (old) {
            /* Publishers never read these two fields, so writing them while
             * they may still walk the old list is safe. */
            old->garbage_next = garbage;
            old->owner = t;
            garbage = old;
        }
    }
    rbus__free(bus, fresh);
    /* With the lists: topic_open (under the same lock) lists the
     * subscription on a new topic exactly when it is listed on the others. */
    sub->listed = add;
    /* After the grace period nobody walks the retired lists: they become
     * their topics' spares (rbus__topics_update). */
    *retired = garbage;
    return 0;
}

int rbus__topics_update(rbus *bus, rbus_sub *sub, bool add, struct rbus_replay *replay)
{
    struct rbus_sublist *garbage;
    pthread_mutex_lock(&bus->lock);
    int rc = update_swap(bus, sub, add, &garbage, replay);
    pthread_mutex_unlock(&bus->lock);
    if (rc < 0)
        return rc;
    /* Outside bus->lock: stats, Prometheus and topic_open go on while a
     * preempted publisher holds the grace period up. The spares are ours
     * alone meanwhile (every update holds route_lock). */
    RBUS__PAUSE(UPDATE_SWAPPED);
    rbus__synchronize(bus);
    while (garbage) {
        struct rbus_sublist *next = garbage->garbage_next;
        keep_spare(bus, garbage->owner, garbage);
        garbage = next;
    }
    return 0;
}

void rbus__topics_free_all(rbus *bus)
{
    rbus_topic *t = bus->topics;
    while (t) {
        rbus_topic *next = t->all_next;
        rbus__free(bus, atomic_load_explicit(&t->subs, memory_order_relaxed));
        rbus__free(bus, t->spare);
        rbus__dedup_free(bus, atomic_load_explicit(&t->dedup, memory_order_relaxed));
        rbus__free_aligned(bus, atomic_load_explicit(&t->limit, memory_order_relaxed));
        rbus__history_free(bus, atomic_load_explicit(&t->hist, memory_order_relaxed));
        rbus__topic_fd_close(t);
        rbus__free(bus, t->name);
        rbus__free_aligned(bus, t);
        t = next;
    }
    bus->topics = NULL;
    bus->ntopics = 0;
}

/* -------------------------------------------------------------- publish */

static bool key_ok(const void *key, size_t len)
{
    return key ? (len >= 1 && len <= RBUS_MAX_KEY_LEN) : len == 0;
}

/* -EINVAL for a key that key_ok refused; `what` is "key" or "order_key". */
static int key_bad(const char *what, const void *key, size_t len)
{
    if (!key)
        return rbus__fail(-EINVAL, "%s is NULL with %s_len %zu", what, what, len);
    return rbus__fail(-EINVAL, "%s_len %zu outside 1..%d", what, len, RBUS_MAX_KEY_LEN);
}

/* How long a publish may wait for room on `s`: the sub's own timeout,
 * shortened by the publish's when that is > 0. -1 = forever. */
static int64_t wait_deadline(const rbus_sub *s, int64_t pub_timeout_ns, int64_t now)
{
    int64_t t = s->block_timeout_ns > 0 ? s->block_timeout_ns : -1;
    if (pub_timeout_ns > 0 && (t < 0 || pub_timeout_ns < t))
        t = pub_timeout_ns;
    if (t < 0)
        return -1;
    return t > INT64_MAX - now ? INT64_MAX : now + t;
}

/* The wait on pending entry i is over (queued, timed out or closed) at
 * `now`: its time goes to the subscription's publisher_wait histogram. */
static void pending_drop(struct rbus_thread_state *th, uint32_t i, uint32_t *n, int64_t now)
{
    rbus_sub *s = th->pending[i].sub;
    rbus__hist_add(&s->publisher_wait, now - th->pending[i].since_ns);
    if (th->pending[i].tally)
        atomic_store_explicit(&th->pending[i].tally->wait_since, 0, memory_order_relaxed);
    atomic_fetch_sub_explicit(&s->room_waiters, 1, memory_order_relaxed);
    /* Release: our last touch of the subscription happens before an
     * unsubscribe that acquires pins == 0 frees it. */
    atomic_fetch_sub_explicit(&s->pins, 1, memory_order_release);
    th->pending[i] = th->pending[--*n];
}

/* A RBUS_BLOCK subscription that was full, to wait on after the read
 * section (publish_wait) for the message `next` of the publish and those
 * after it; *now is read once per publish. */
static void pending_add(struct rbus_thread_state *th, rbus_sub *s, int64_t pub_timeout,
                        uint32_t next, int64_t *now, uint32_t *waiting)
{
    if (!*now)
        *now = rbus__now_ns();
    atomic_fetch_add_explicit(&s->publisher_waits, 1, memory_order_relaxed);
    /* Pinned: rbus_unsubscribe waits for pins == 0 before freeing,
     * since we keep using it after leaving the read section. */
    atomic_fetch_add_explicit(&s->pins, 1, memory_order_relaxed);
    /* The wait's start, on this state's own node (its only writer; the
     * shared fallback has many, and goes untimed). */
    struct rbus_tally *tally = rbus__tally_of(th, s);
    if (tally == &s->shared)
        tally = NULL;
    else
        atomic_store_explicit(&tally->wait_since, *now, memory_order_relaxed);
    th->pending[(*waiting)++] =
        (struct rbus_pending){.sub = s,
                              .tally = tally,
                              .since_ns = *now,
                              .deadline_ns = wait_deadline(s, pub_timeout, *now),
                              .spin_ns = s->spin_ns,
                              .next = next};
}

/*
 * The slow path of a publish: wait, all at once, on the RBUS_BLOCK
 * subscriptions that were full, each up to its own deadline. Runs outside
 * any read section (it may sleep); each retry re-enters one, so that
 * sub_close and close, which synchronise, never miss an enqueue. The
 * messages are ms[0..k) (a batch; k is 1 otherwise): each pending entry
 * queues them in order from its `next`, and one that times out or is
 * closed drops the rest of them; not_queued[j] counts message j's drops.
 * Returns -ESHUTDOWN if the bus was closed while we waited, else 0.
 */
static int publish_wait(rbus *bus, struct rbus_thread_state *th, rbus_msg *const *ms, uint32_t k,
                        uint32_t n, rbus_pub_result *res, uint32_t *not_queued)
{
    int rc = 0;
    int64_t spin_ns = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (th->pending[i].spin_ns > spin_ns)
            spin_ns = th->pending[i].spin_ns;
        /* seq_cst: registration before our re-check of the ring, the
         * publisher half of the Dekker pair with after_dequeue(). */
        atomic_fetch_add_explicit(&th->pending[i].sub->room_waiters, 1, memory_order_seq_cst);
    }
    int64_t spin_until = rbus__now_ns() + spin_ns;
    unsigned iter = 0;
    while (n) {
        int64_t now = rbus__now_ns();
        bool sleep_next = now >= spin_until;
        /* Waiting on one subscription, sleep on its own event, which only
         * its dequeues signal; on several, on the bus's, which all do. */
        struct rbus_event *ev = n == 1 ? &th->pending[0].sub->room_ev : &bus->room_ev;
        uint32_t seen = sleep_next ? rbus__event_prepare(ev) : 0;
        /* The earliest wake-up (deadlines and short retries) for the sleep,
         * and the earliest deadline alone for the spin's yields: a short
         * retry is no deadline, and it is set just when a receiver may have
         * been preempted mid-release, when a yield helps most. */
        int64_t earliest = -1, earliest_deadline = -1;

        rbus__read_begin(th);
        bool closing = atomic_load_explicit(&bus->closing, memory_order_seq_cst);
        for (uint32_t i = 0; i < n;) {
            struct rbus_pending *p = &th->pending[i];
            rbus_sub *s = p->sub;
            uint32_t left = k - p->next;
            if (closing || atomic_load_explicit(&s->state, memory_order_seq_cst) != RBUS_SUB_OPEN) {
                atomic_fetch_add_explicit(&s->dropped_closed, left, memory_order_relaxed);
                if (closing)
                    rc = -ESHUTDOWN;
            } else if (rbus__sub_try_enqueue(th, s, ms[p->next])) {
                res->queued++;
                if (++p->next == k)
                    pending_drop(th, i, &n, now);
                continue; /* a batch's next message, on the same subscription */
            } else if (p->deadline_ns >= 0 && now >= p->deadline_ns) {
                atomic_fetch_add_explicit(&s->dropped_timeout, left, memory_order_relaxed);
            } else {
                int64_t wake = p->deadline_ns;
                earliest_deadline = rbus__sooner(earliest_deadline, wake);
                /* The Dekker pair with the receiver is on `head` (its
                 * seq_cst CAS, our seq_cst load here). If head says there is
                 * room but the enqueue failed, the receiver is between its
                 * CAS and releasing the slot, and may have checked
                 * room_waiters before we registered: retry soon, do not trust a
                 * wake-up. */
                if (!rbus__sub_full(s, ms[p->next]))
                    wake = rbus__sooner(wake, now + RBUS__SLOT_RETRY_NS);
                earliest = rbus__sooner(earliest, wake);
                i++;
                continue;
            }
            res->dropped += left;
            for (uint32_t j = p->next; j < k; j++)
                not_queued[j]++;
            pending_drop(th, i, &n, now);
        }
        rbus__read_end(th);

        if (n && sleep_next) {
            rbus__event_wait(ev, seen, earliest);
            RBUS__PAUSE(PUBLISH_WAIT_WOKE);
        } else if (n) {
            rbus__spin_step_before(iter++, now, earliest_deadline);
        }
    }
    /* RMW, full fence, then the flag: the Dekker pair with rbus_close, which
     * announces itself on close_ev before it reads blocked_publishers. */
    atomic_fetch_sub_explicit(&bus->blocked_publishers, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    rbus__event_signal(&bus->close_ev);
    return rc;
}

/* Whether a publish's key is checked against the topic's window: a plain
 * publish with a key, on a bus that keeps a window. */
static inline bool key_checked(const rbus *bus, const rbus_pub_opts *opts,
                               const struct rbus_relay *relay)
{
    return !relay && opts && opts->key && bus->cfg.dedup_keys != RBUS_DEDUP_OFF;
}

/* The overload fast path's test (inside a read section): true when every
 * subscription on the list is drop-newest and full right now, so a publish
 * would be refused everywhere and needs no message at all. Inline, with
 * ring.h, because an overloaded publisher runs it on every publish. */
static inline bool subs_refuse_newest(const struct rbus_sublist *list)
{
    for (uint32_t i = 0; i < list->count; i++) {
        rbus_sub *s = list->subs[i];
        if (s->overflow != RBUS_DROP_NEWEST || !rbus__ring_full_at_tail(&s->ring))
            return false;
    }
    return true;
}

/*
 * Overload fast path, inside the caller's read section (ended here): every
 * subscription is drop-newest and full, so the publish of k messages (a
 * batch's, or 1) is accepted (sequence numbers taken) and refused
 * everywhere without queueing a message. An unkeyed publish builds none at
 * all, so an overloaded publisher pays only for the bookkeeping; a keyed
 * one built `m` and had its key accepted before the read section, and
 * gives `m` back here.
 */
static RBUS__NOINLINE int publish_refused(rbus_topic *topic, struct rbus_thread_state *th,
                                          const struct rbus_sublist *list, rbus_msg *m, uint32_t k,
                                          rbus_pub_result *result)
{
    atomic_fetch_add_explicit(&topic->seq, k, memory_order_relaxed);
    /* The tallies of an offer refused by drop-newest, one field per
     * subscription: the stats add `refused` into both `offered` and
     * `dropped_newest`. */
    for (uint32_t i = 0; i < list->count; i++) {
        rbus_sub *s = list->subs[i];
        struct rbus_tally *tally = rbus__tally_of(th, s);
        rbus__tally_add_n(s, tally, &tally->refused, k);
    }
    if (result)
        result->matched = result->dropped = list->count * k;
    rbus__read_end(th);
    if (m)
        rbus__msg_unref_by(th, m, 1);
    return 0;
}

/* -ENOMEM: the thread's array of full RBUS_BLOCK subscriptions to wait on
 * could not grow to n. */
static int no_pending(uint32_t n)
{
    return rbus__fail(
        -ENOMEM, "out of memory for this thread's list of %" PRIu32 " subscriptions to wait on", n);
}

/* -ENOMEM: the message pool could not grow. */
static int no_message(size_t len, const rbus_pub_opts *opts)
{
    size_t keys =
        opts ? (opts->key ? opts->key_len : 0) + (opts->order_key ? opts->order_key_len : 0) : 0;
    return rbus__fail(-ENOMEM, "out of memory for a message of %zu bytes (payload and keys)",
                      len + keys);
}

/*
 * A keyed publish's first half, before any read section: the message is
 * built, then the key checked and recorded. In that order so that a
 * failed publish never records its key; outside a read section so that a
 * publisher preempted inside the key check holds up no grace period. On 0
 * the key is accepted and *m is the message; otherwise nothing is left.
 */
static int publish_keyed_accept(rbus_topic *topic, struct rbus_thread_state *th, const void *data,
                                size_t len, const rbus_pub_opts *opts, uint64_t key_lo,
                                uint64_t key_hi, int64_t *now_ns, rbus_pub_result *result,
                                rbus_msg **m)
{
    /* Room to wait on every subscription listed now, so that only a list
     * that grew meanwhile can need an allocation after acceptance. */
    uint32_t hint = atomic_load_explicit(&topic->listed_hint, memory_order_relaxed);
    if (RBUS__UNLIKELY(hint > th->pending_cap && rbus__thread_reserve_pending(th, hint) != 0))
        return no_pending(hint);
    if (RBUS__UNLIKELY(!(*m = rbus__msg_new(th, topic, NULL, data, len, opts))))
        return no_message(len, opts);
    /* Between the hash's prefetches and the check, as late as it can be:
     * reading the clock gives those lines time to arrive. */
    *now_ns = rbus__stamp_ns(topic->bus);
    int drc = rbus__dedup_accept(topic, key_lo, key_hi, *now_ns);
    if (RBUS__UNLIKELY(drc != 0)) {
        if (drc == RBUS_DUPLICATE) {
            atomic_fetch_add_explicit(&topic->duplicates, 1, memory_order_relaxed);
            if (result)
                result->duplicate = true;
        } else if (drc == -ENOBUFS) {
            char q[RBUS__QUOTE_CAP];
            rbus__fail(drc,
                       "topic %s: no free slot near this key in its key window (dedup_keys %" PRIu32
                       "; too many keyed publishes in flight), retry",
                       rbus__quote(q, topic->name), topic->bus->cfg.dedup_keys);
        } else {
            topic_no_window(topic->bus, topic->name);
        }
        rbus__msg_unref_by(th, *m, 1);
        *m = NULL;
    }
    return drc;
}

/* After acceptance, a publish cannot fail for memory: when the list grew
 * past the pending array since publish_keyed_accept sized it, wait for the
 * allocation as a subscription-list removal does. */
static void reserve_pending_accepted(struct rbus_thread_state *th, uint32_t n)
{
    while (rbus__thread_reserve_pending(th, n) != 0) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
}

/* After a publish's read section: a watermark crossed during it refreshes
 * the topics' readiness descriptors (system calls, so outside). */
static inline void ready_flush(rbus *bus, struct rbus_thread_state *th)
{
    if (RBUS__UNLIKELY(th->ready_dirty)) {
        th->ready_dirty = false;
        rbus__ready_refresh_all(bus);
    }
}

/* -EINVAL for flags a publish cannot take. */
static RBUS__NOINLINE int flags_check(const rbus_pub_opts *opts)
{
    if (opts->flags & ~RBUS_PUB_ALL_OR_NONE)
        return rbus__fail(-EINVAL, "flags 0x%" PRIx32 " has bits that are no RBUS_PUB_* flag",
                          opts->flags);
    if (opts->key)
        return rbus__fail_static(-EINVAL, "RBUS_PUB_ALL_OR_NONE with a key (an accepted key "
                                          "cannot be taken back)");
    return 0;
}

/* The RBUS_BLOCK subscriptions on the list that are at their high
 * watermark now, into res (inside the read section). */
static RBUS__NOINLINE void at_high_watermark(const struct rbus_sublist *list, rbus_pub_result *res)
{
    for (uint32_t i = 0; list && i < list->count; i++) {
        rbus_sub *s = list->subs[i];
        /* Relaxed: a report, ordered with nothing. */
        if (s->overflow == RBUS_BLOCK && atomic_load_explicit(&s->over, memory_order_relaxed)) {
            if (!res->at_high_watermark++)
                res->high_watermark_sub = s->id;
        }
    }
}

/*
 * RBUS_PUB_ALL_OR_NONE, inside the read section, before acceptance: a
 * position (and the bytes) in every RBUS_BLOCK subscription on the list,
 * which the offers then fill; 0, or -EAGAIN having given back what it
 * took, with the read section ended and *result saying which had no room.
 */
static RBUS__NOINLINE int reserve_all(struct rbus_thread_state *th, rbus_topic *topic,
                                      const struct rbus_sublist *list, size_t len,
                                      rbus_pub_result *result)
{
    uint32_t n = list ? list->count : 0;
    if (rbus__thread_reserve_pending(th, n) != 0) {
        rbus__read_end(th);
        return no_pending(n);
    }
    for (uint32_t i = 0; i < n; i++) {
        rbus_sub *s = list->subs[i];
        if (s->overflow != RBUS_BLOCK)
            continue;
        if (rbus__sub_reserve(s, len, &th->resv[i])) {
            RBUS__PAUSE(ALL_OR_NONE_RESERVED);
            continue;
        }
        uint64_t full = s->id;
        bool ready_changed = false;
        while (i-- > 0)
            if (list->subs[i]->overflow == RBUS_BLOCK)
                ready_changed |= rbus__sub_unreserve(list->subs[i], len, &th->resv[i]);
        rbus__read_end(th);
        if (RBUS__UNLIKELY(ready_changed))
            rbus__ready_refresh_all(topic->bus);
        if (result) {
            result->matched = n;
            result->at_high_watermark = 1;
            result->high_watermark_sub = full;
        }
        char q[RBUS__QUOTE_CAP];
        return rbus__fail(-EAGAIN,
                          "RBUS_PUB_ALL_OR_NONE: subscription %" PRIu64
                          " of topic %s has no room; nothing was queued",
                          full, rbus__quote(q, topic->name));
    }
    return 0;
}

/* A publish on a topic with a rate limit: 0 when it may go on, or -EAGAIN
 * with result->retry_after_ns. Out of line, so that topics without a limit
 * pay only the test of `features`. */
static RBUS__NOINLINE int limit_check(rbus_topic *topic, rbus_pub_result *result)
{
    /* Acquire: pairs with the release store in topic_features_set. */
    struct rbus_limit *lim = atomic_load_explicit(&topic->limit, memory_order_acquire);
    uint64_t retry;
    if (!lim || limit_take(lim, (uint64_t)rbus__now_ns(), &retry) == 0)
        return 0;
    if (result)
        result->retry_after_ns = retry;
    char q[RBUS__QUOTE_CAP];
    return rbus__fail(-EAGAIN,
                      "topic %s is over its rate limit (%g a second, burst %" PRIu32
                      "): the next publish passes in %" PRIu64 " ns",
                      rbus__quote(q, topic->name), lim->rate_per_s, lim->burst, retry);
}

/* A message accepted on a topic with history: stamped with the generation
 * of the list it is offered to, then put in the history, which owns one
 * of its references (counted in refs already). Inside the read section,
 * before the offers. */
static RBUS__NOINLINE void retain(struct rbus_thread_state *th, struct rbus_history *h,
                                  const struct rbus_sublist *list, rbus_msg *m)
{
    m->gen = list ? list->gen : 0;
    rbus__history_put(th, h, m);
}

/* The publish itself (see publish()); `featured` is a constant in each
 * of its two copies. */
static RBUS__ALWAYS_INLINE int publish_body(rbus_topic *topic, const void *data, size_t len,
                                            const rbus_pub_opts *opts, rbus_pub_result *result,
                                            const struct rbus_relay *relay, const bool featured)
{
    rbus_pub_result res = {0};
    if (result)
        *result = res;
    if (!data && len)
        return rbus__fail(-EINVAL, "data is NULL with len %zu", len);
    if (opts && !key_ok(opts->key, opts->key_len))
        return key_bad("key", opts->key, opts->key_len);
    if (opts && !key_ok(opts->order_key, opts->order_key_len))
        return key_bad("order_key", opts->order_key, opts->order_key_len);
    int hrc;
    if (opts && RBUS__UNLIKELY(opts->header_count != 0) && (hrc = rbus__headers_check(opts)) != 0)
        return hrc;
    const bool all_or_none = featured && opts && (opts->flags & RBUS_PUB_ALL_OR_NONE);
    if (featured && opts && opts->flags != 0 && (hrc = flags_check(opts)) != 0)
        return hrc;
    rbus *bus = topic->bus;
    /* The plain copy runs only for a len under plain_below (publish()). */
    if (featured && len > bus->cfg.max_payload)
        return rbus__fail(-EMSGSIZE, "len %zu above max_payload %" PRIu32, len,
                          bus->cfg.max_payload);
    /* Relaxed pre-check only orders the error codes (-ESHUTDOWN before
     * -ENOMEM and RBUS_DUPLICATE); the authoritative check is inside the
     * read section. */
    if (atomic_load_explicit(&bus->closing, memory_order_relaxed))
        return rbus__fail_static(-ESHUTDOWN, "the bus is closed");
    /* Relaxed: only a hint of which pointers to load (with acquire). */
    const uint32_t features =
        featured ? atomic_load_explicit(&topic->features, memory_order_relaxed) : 0;
    int lrc;
    if ((features & RBUS__TOPIC_LIMITED) && (lrc = limit_check(topic, result)) != 0)
        return lrc;
    /* The key's hash first: it starts loading the window's lines, which
     * then arrive while the thread state is found and the message built. */
    const bool keyed = key_checked(bus, opts, relay);
    uint64_t key_lo = 0, key_hi = 0;
    if (keyed)
        key_lo = rbus__dedup_hash(topic, opts->key, opts->key_len, &key_hi);
    struct rbus_thread_state *th = rbus__thread_get(bus);
    if (RBUS__UNLIKELY(!th))
        return rbus__fail_static(-ENOMEM, "out of memory for this thread's state on the bus");
    rbus_msg *m = NULL;
    int64_t now_ns = 0;
    if (keyed) {
        int drc =
            publish_keyed_accept(topic, th, data, len, opts, key_lo, key_hi, &now_ns, result, &m);
        if (drc != 0)
            return drc;
    }

    uint32_t n;
    struct rbus_sublist *list;
    for (;;) {
        rbus__read_begin(th);
        /* The epoch entry above is a full barrier, so this load is ordered
         * after our record went active: rbus_close either sees us in its
         * synchronize or we see `closing`. A keyed publish whose key was
         * accepted and that fails here leaves the key recorded, which no
         * later publish on the closed bus can observe. */
        if (RBUS__UNLIKELY(atomic_load_explicit(&bus->closing, memory_order_relaxed))) {
            rbus__read_end(th);
            if (m)
                rbus__msg_unref_by(th, m, 1);
            return rbus__fail_static(-ESHUTDOWN, "the bus is closed");
        }
        /* Acquire: pairs with the release exchange in rbus__topics_update. */
        list = atomic_load_explicit(&topic->subs, memory_order_acquire);
        n = list ? list->count : 0;
        if (RBUS__LIKELY(!m) || RBUS__LIKELY(n <= th->pending_cap))
            break;
        rbus__read_end(th);
        reserve_pending_accepted(th, n);
    }
    /* A topic with history keeps even a message every subscription
     * refuses. Acquire: pairs with the release store in topic_open or
     * topic_features_set. */
    struct rbus_history *hist = (features & RBUS__TOPIC_RETAINED)
                                    ? atomic_load_explicit(&topic->hist, memory_order_acquire)
                                    : NULL;
    if (n && !relay && !hist && RBUS__UNLIKELY(subs_refuse_newest(list)))
        return publish_refused(topic, th, list, m, 1, result);
    if (!m) {
        if (RBUS__UNLIKELY(rbus__thread_reserve_pending(th, n) != 0)) {
            rbus__read_end(th);
            return no_pending(n);
        }
        if (RBUS__UNLIKELY(
                !(m = rbus__msg_new(th, topic, relay ? relay->orig : NULL, data, len, opts)))) {
            rbus__read_end(th);
            return no_message(len, opts);
        }
        now_ns = rbus__stamp_ns(bus);
    }
    /* Last before acceptance, so that the positions it reserves wait for
     * their messages as briefly as a put's would. */
    if (RBUS__UNLIKELY(all_or_none) && (hrc = reserve_all(th, topic, list, len, result)) != 0) {
        rbus__msg_unref_by(th, m, 1);
        return hrc;
    }
    /* Accepted from here on. */
    m->seq = atomic_fetch_add_explicit(&topic->seq, 1, memory_order_relaxed) + 1;
    atomic_store_explicit(&m->time_ns, (uint64_t)now_ns, memory_order_relaxed);
    if (relay) {
        m->origin_topic = relay->origin_topic;
        m->attempt = relay->attempt;
    }
    /* One reference per subscription, set before the message is shared
     * (the ring enqueue publishes it). The publisher holds no reference of
     * its own: each subscription not yet decided keeps the message alive
     * while we offer it to the others, and the references of those that did
     * not queue it are given back in one step at the end — so the common
     * case, queued everywhere, costs no atomic here at all. With no
     * subscription at all the message is simply ours to recycle. */
    uint32_t kept = hist != NULL, own = n == 0 && !kept;
    atomic_store_explicit(&m->refs, n + own + kept, memory_order_relaxed);
    if (RBUS__UNLIKELY(kept))
        retain(th, hist, list, m);

    int64_t pub_timeout = opts ? opts->timeout_ns : 0;
    uint32_t not_queued = 0, waiting = 0;
    int64_t now = 0;
    for (uint32_t i = 0; i < n; i++) {
        rbus_sub *s = list->subs[i];
        enum rbus_offer offer = all_or_none && s->overflow == RBUS_BLOCK
                                    ? rbus__sub_commit(th, s, m, &th->resv[i])
                                    : rbus__sub_offer(th, s, m, &res.evicted);
        switch (offer) {
        case RBUS_OFFER_QUEUED:
            res.queued++;
            break;
        case RBUS_OFFER_DROPPED:
            res.dropped++;
            not_queued++;
            break;
        case RBUS_OFFER_FULL:
            /* All-or-none keeps its promise to a subscription whose slot
             * was skipped while this publisher stalled (rbus__sub_commit):
             * it waits for room there, as the subscription's own policy
             * says, rather than drop. */
            if (pub_timeout < 0 && !(all_or_none && s->overflow == RBUS_BLOCK)) {
                atomic_fetch_add_explicit(&s->dropped_timeout, 1, memory_order_relaxed);
                res.dropped++;
                not_queued++;
                break;
            }
            pending_add(th, s, all_or_none ? 0 : pub_timeout, 0, &now, &waiting);
            break;
        }
    }
    res.matched = n;
    if (result)
        at_high_watermark(list, &res);
    if (waiting)
        atomic_fetch_add_explicit(&bus->blocked_publishers, 1, memory_order_seq_cst);
    rbus__read_end(th);
    /* Before any wait for room: a loop watching the descriptor should not
     * learn late that this publish made the topic not ready. */
    ready_flush(bus, th);

    int rc = 0;
    if (RBUS__UNLIKELY(waiting)) {
        if ((rc = publish_wait(bus, th, &m, 1, waiting, &res, &not_queued)) != 0)
            rbus__fail(rc,
                       "the bus was closed while this publish waited for room; it was "
                       "accepted and queued for %" PRIu32 " of %" PRIu32 " subscriptions",
                       res.queued, res.matched);
        ready_flush(bus, th); /* the retries' puts may have crossed a mark */
    }
    /* Not a byte of m may be read after this point unless we still hold a
     * reference: a receiver may already have recycled it. */
    if (not_queued + own)
        rbus__msg_unref_by(th, m, not_queued + own);
    if (result)
        *result = res;
    return rc;
}

/* A publish on a topic with a rate limit or a history, with flags, or of
 * a payload above max_payload: everything the plain path leaves out. */
static RBUS__NOINLINE int publish_featured(rbus_topic *topic, const void *data, size_t len,
                                           const rbus_pub_opts *opts, rbus_pub_result *result,
                                           const struct rbus_relay *relay)
{
    return publish_body(topic, data, len, opts, result, relay, true);
}

/* Two copies of one body: a topic with none of the features, published
 * without flags, runs one that has no test for them at all. The choice
 * costs the plain path nothing: plain_below folds the features into the
 * payload-size check that every publish makes anyway (docs/benchmarks.md
 * has the A/B). `relay` (dispatch.c's dead letters): not deduplicated,
 * and the message carries its origin topic and attempt count; NULL for a
 * plain publish. Failures set the detail without a function name, which
 * the public callers put in front. */
static RBUS__ALWAYS_INLINE int publish(rbus_topic *topic, const void *data, size_t len,
                                       const rbus_pub_opts *opts, rbus_pub_result *result,
                                       const struct rbus_relay *relay)
{
    if (RBUS__UNLIKELY(!topic)) {
        if (result)
            memset(result, 0, sizeof *result);
        return rbus__fail_static(-EINVAL, "topic is NULL");
    }
    /* Relaxed: which copy to run; the featured one loads what it needs. */
    if (RBUS__UNLIKELY(len >= atomic_load_explicit(&topic->plain_below, memory_order_relaxed)) ||
        (opts && RBUS__UNLIKELY(opts->flags != 0)))
        return publish_featured(topic, data, len, opts, result, relay);
    return publish_body(topic, data, len, opts, result, relay, false);
}

int rbus_publish_ex(rbus_topic *topic, const void *data, size_t len, const rbus_pub_opts *opts,
                    rbus_pub_result *result)
{
    RBUS__PAUSE(RBUS_PUBLISH_EX);
    int rc = publish(topic, data, len, opts, result, NULL);
    if (RBUS__UNLIKELY(rc < 0))
        rbus__fail_prefix("rbus_publish_ex");
    return rc;
}

int rbus__publish_relay(rbus_topic *topic, const rbus_msg *orig, const struct rbus_relay *relay,
                        int64_t timeout_ns)
{
    rbus_pub_opts o;
    rbus__msg_opts(orig, &o);
    o.timeout_ns = timeout_ns;
    struct rbus_relay r = *relay;
    r.orig = orig; /* its headers, copied as they are */
    return publish(topic, rbus_msg_data(orig), rbus_msg_size(orig), &o, NULL, &r);
}

int rbus_publish(rbus_topic *topic, const void *data, size_t len)
{
    RBUS__PAUSE(RBUS_PUBLISH);
    /* Not through rbus_publish_ex, so that a detail names this function. */
    int rc = publish(topic, data, len, NULL, NULL, NULL);
    if (RBUS__UNLIKELY(rc < 0))
        rbus__fail_prefix("rbus_publish");
    return rc;
}

/* -------------------------------------------------------------- batches */

/* A batch goes in chunks of this many messages: one read section each,
 * and what the publisher keeps on its stack. */
#define BATCH_CHUNK RBUS__RUN_MAX

/*
 * One chunk of a batch on a topic without features: one read section, one
 * clock read and k consecutive sequence numbers for all of it, and for each
 * subscription runs of positions taken at once (rbus__sub_offer_run), then
 * single offers, under the policy, from where no run fits. Adds to *res. Returns
 * 0 when accepted (waits, drops and a bus closed during a wait are in
 * *res), or a negative errno with nothing accepted.
 */
static int publish_chunk(rbus_topic *topic, struct rbus_thread_state *th, const rbus_payload *pl,
                         uint32_t k, const rbus_pub_opts *opts, rbus_pub_result *res)
{
    rbus *bus = topic->bus;
    rbus_msg *ms[BATCH_CHUNK];
    uint32_t not_queued[BATCH_CHUNK];
    rbus__read_begin(th);
    /* After the epoch entry's full barrier, as in publish_body. */
    if (RBUS__UNLIKELY(atomic_load_explicit(&bus->closing, memory_order_relaxed))) {
        rbus__read_end(th);
        return rbus__fail_static(-ESHUTDOWN, "the bus is closed");
    }
    /* Acquire: pairs with the release exchange in rbus__topics_update. */
    struct rbus_sublist *list = atomic_load_explicit(&topic->subs, memory_order_acquire);
    uint32_t n = list ? list->count : 0;
    if (n && RBUS__UNLIKELY(subs_refuse_newest(list))) {
        rbus_pub_result r = {0};
        publish_refused(topic, th, list, NULL, k, &r);
        res->matched += r.matched;
        res->dropped += r.dropped;
        return 0;
    }
    if (RBUS__UNLIKELY(rbus__thread_reserve_pending(th, n) != 0)) {
        rbus__read_end(th);
        return no_pending(n);
    }
    for (uint32_t i = 0; i < k; i++) {
        ms[i] = rbus__msg_new(th, topic, NULL, pl[i].data, pl[i].len, opts);
        if (RBUS__UNLIKELY(!ms[i])) {
            for (uint32_t j = 0; j < i; j++)
                rbus__msg_unref_by(th, ms[j], 1);
            rbus__read_end(th);
            return no_message(pl[i].len, opts);
        }
    }
    /* Accepted from here on: one acceptance time for the chunk. As in
     * publish_body, every subscription holds a reference to each message
     * until it has decided, and those that did not queue it are given
     * back at the end; with no subscription the messages are ours. */
    int64_t now_ns = rbus__stamp_ns(bus);
    uint64_t seq = atomic_fetch_add_explicit(&topic->seq, k, memory_order_relaxed);
    uint32_t own = n == 0;
    for (uint32_t i = 0; i < k; i++) {
        ms[i]->seq = ++seq;
        atomic_store_explicit(&ms[i]->time_ns, (uint64_t)now_ns, memory_order_relaxed);
        atomic_store_explicit(&ms[i]->refs, n + own, memory_order_relaxed);
        not_queued[i] = own;
    }
    int64_t pub_timeout = opts ? opts->timeout_ns : 0, now = 0;
    uint32_t waiting = 0;
    for (uint32_t i = 0; i < n; i++) {
        rbus_sub *s = list->subs[i];
        /* Runs until one finds no free slot at tail; the rest of the chunk
         * then goes one message at a time, so that a full ring (an
         * overloaded drop policy) is not tried twice for each message. */
        bool runs = true;
        for (uint32_t j = 0; j < k;) {
            uint32_t run = runs ? rbus__sub_offer_run(th, s, ms + j, k - j) : 0;
            if (run) {
                j += run;
                res->queued += run;
                continue;
            }
            runs = false;
            enum rbus_offer offer = rbus__sub_offer(th, s, ms[j], &res->evicted);
            if (offer == RBUS_OFFER_QUEUED) {
                res->queued++;
                j++;
                continue;
            }
            if (offer == RBUS_OFFER_FULL && pub_timeout >= 0) {
                /* Block: the rest wait behind message j, in order, after
                 * the read section. Offered now, as j was: each will be
                 * queued or dropped by the wait. */
                struct rbus_tally *tally = rbus__tally_of(th, s);
                rbus__tally_add_n(s, tally, &tally->offered, k - j - 1);
                pending_add(th, s, pub_timeout, j, &now, &waiting);
                break;
            }
            if (offer == RBUS_OFFER_FULL)
                atomic_fetch_add_explicit(&s->dropped_timeout, 1, memory_order_relaxed);
            res->dropped++;
            not_queued[j++]++;
        }
    }
    res->matched += n * k;
    at_high_watermark(list, res);
    if (waiting)
        atomic_fetch_add_explicit(&bus->blocked_publishers, 1, memory_order_seq_cst);
    rbus__read_end(th);
    ready_flush(bus, th);
    if (RBUS__UNLIKELY(waiting)) {
        publish_wait(bus, th, ms, k, waiting, res, not_queued);
        ready_flush(bus, th);
    }
    /* As in publish_body: what we still hold, given back last. */
    for (uint32_t i = 0; i < k; i++)
        if (not_queued[i])
            rbus__msg_unref_by(th, ms[i], not_queued[i]);
    return 0;
}

/* The checks a batch makes before it publishes anything: 0, or the
 * error of its first bad argument. */
static int batch_check(rbus_topic *topic, const rbus_payload *msgs, size_t count,
                       const rbus_pub_opts *opts)
{
    if (!topic)
        return rbus__fail_static(-EINVAL, "topic is NULL");
    if (!msgs && count)
        return rbus__fail(-EINVAL, "msgs is NULL with count %zu", count);
    if (count > INT_MAX)
        return rbus__fail(-EINVAL, "count %zu above INT_MAX", count);
    for (size_t i = 0; i < count; i++)
        if (!msgs[i].data && msgs[i].len)
            return rbus__fail(-EINVAL, "msgs[%zu].data is NULL with len %zu", i, msgs[i].len);
    if (opts) {
        if (opts->key)
            return rbus__fail_static(-EINVAL, "a batch takes no idempotency key (one key would "
                                              "make every message after the first a duplicate)");
        if (opts->key_len)
            return key_bad("key", opts->key, opts->key_len);
        if (!key_ok(opts->order_key, opts->order_key_len))
            return key_bad("order_key", opts->order_key, opts->order_key_len);
        if (opts->flags)
            return rbus__fail(-EINVAL, "flags 0x%" PRIx32 ": a batch takes no RBUS_PUB_* flag",
                              opts->flags);
        int hrc;
        if (opts->header_count != 0 && (hrc = rbus__headers_check(opts)) != 0)
            return hrc;
    }
    uint32_t max = topic->bus->cfg.max_payload;
    for (size_t i = 0; i < count; i++)
        if (msgs[i].len > max)
            return rbus__fail(-EMSGSIZE, "msgs[%zu].len %zu above max_payload %" PRIu32, i,
                              msgs[i].len, max);
    return 0;
}

/* A result's field from a batch's sum. */
static uint32_t sum32(uint64_t v)
{
    return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static int publish_batch(rbus_topic *topic, const rbus_payload *msgs, size_t count,
                         const rbus_pub_opts *opts, rbus_pub_result *result)
{
    if (result)
        memset(result, 0, sizeof *result);
    int rc = batch_check(topic, msgs, count, opts);
    if (rc != 0)
        return rc;
    rbus *bus = topic->bus;
    /* Relaxed: orders the error codes only, as in publish_body. */
    if (atomic_load_explicit(&bus->closing, memory_order_relaxed))
        return rbus__fail_static(-ESHUTDOWN, "the bus is closed");
    /* Sums over the chunks or messages (uint32 fields would overflow). */
    uint64_t matched = 0, queued = 0, dropped = 0, evicted = 0;
    rbus_pub_result r = {0};
    size_t done = 0;
    /* Relaxed: which path to take, as publish()'s plain_below. A topic
     * with a rate limit or a history publishes one message at a time, so
     * that each takes its token and its place in the history. */
    if (atomic_load_explicit(&topic->features, memory_order_relaxed) != 0) {
        for (; done < count; done++) {
            rc = publish_featured(topic, msgs[done].data, msgs[done].len, opts, &r, NULL);
            if (rc < 0 && !r.matched)
                break;
            matched += r.matched, queued += r.queued, dropped += r.dropped, evicted += r.evicted;
            if (rc < 0) { /* accepted, and the bus closed while it waited */
                done++;
                break;
            }
        }
    } else {
        struct rbus_thread_state *th = rbus__thread_get(bus);
        if (RBUS__UNLIKELY(!th))
            return rbus__fail_static(-ENOMEM, "out of memory for this thread's state on the bus");
        while (done < count) {
            uint32_t k = count - done < BATCH_CHUNK ? (uint32_t)(count - done) : BATCH_CHUNK;
            r = (rbus_pub_result){0};
            if ((rc = publish_chunk(topic, th, msgs + done, k, opts, &r)) != 0)
                break;
            matched += r.matched, queued += r.queued, dropped += r.dropped, evicted += r.evicted;
            done += k;
        }
    }
    if (result) {
        *result = r;
        result->matched = sum32(matched);
        result->queued = sum32(queued);
        result->dropped = sum32(dropped);
        result->evicted = sum32(evicted);
    }
    return done ? (int)done : rc;
}

int rbus_publish_batch(rbus_topic *topic, const rbus_payload *msgs, size_t count,
                       const rbus_pub_opts *opts, rbus_pub_result *result)
{
    RBUS__PAUSE(RBUS_PUBLISH_BATCH);
    int rc = publish_batch(topic, msgs, count, opts, result);
    if (RBUS__UNLIKELY(rc < 0))
        rbus__fail_prefix("rbus_publish_batch");
    return rc;
}
