/*
 * fuzz_api.c - libFuzzer target: a single-threaded script of API calls on
 * one bus, checked step by step against a plain sequential model.
 *
 * Input layout: three configuration bytes, then operations, each an opcode
 * byte followed by its parameter bytes (reads past the end give 0). The
 * model predicts every return code, every rbus_pub_result field, what each
 * subscription receives (payload, topic, seq, key, order key, origin) in
 * which order, and after every step every rbus_sub_stats and
 * rbus_topic_stats counter. Any difference aborts, printing the step, the
 * operation and both values.
 *
 * The semantics modelled, all from include/ringbus.h and docs/api.md:
 *  - effective capacity: the smallest power of two >= the one asked for
 *    (the bus default when 0), at least 2 (src/sub.c ring_size_for);
 *  - a publish offers the message to every open subscription whose pattern
 *    matches: queued if there is room; else drop-newest refuses it
 *    (dropped_newest), drop-oldest evicts the oldest (dropped_oldest,
 *    evicted) and queues it, and block waits: with a publish timeout < 0 it
 *    does not wait (dropped_timeout only); otherwise it counts
 *    publisher_waits, waits its (short, positive) timeout -- nobody else
 *    can make room -- and counts dropped_timeout;
 *  - precedence: -EINVAL, -EMSGSIZE, -ESHUTDOWN, RBUS_DUPLICATE;
 *  - keys: a key is a duplicate iff it is among the last dedup_keys keys
 *    accepted on the topic (dedup_keys is 1, 2, 3, 4, 64, 256, the default
 *    4096 or RBUS_DEDUP_OFF; keys are five fixed ones and, in bursts of up
 *    to 64 publishes, 512 generated ones); a duplicate records nothing and
 *    takes no seq;
 *    an accepted publish records its key and takes the next seq even when
 *    every subscription drops it or none matches; RBUS_DEDUP_OFF never
 *    deduplicates;
 *  - high_water: the largest depth right after an enqueue;
 *  - rbus_sub_close: publishers skip it, receivers drain then -ESHUTDOWN,
 *    its fd becomes readable; rbus_close: publish/subscribe/topic_open give
 *    -ESHUTDOWN, receivers drain then -ESHUTDOWN;
 *  - the fd is readable while a message is queued, and after a receive
 *    with timeout 0 returned -EAGAIN it is not, until a message is queued.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ringbus.h"

#define NSLOT 8        /* subscription handles alive at once */
#define NTOPIC 8       /* the fixed topic set */
#define NHELD 16       /* messages the script may hold */
#define NFIXED_KEYS 5  /* idempotency keys chosen by the publish op */
#define NGEN_KEYS 512  /* generated keys, for the burst op */
#define NKEY (NFIXED_KEYS + NGEN_KEYS)
#define MAX_BURST 64
#define MAX_STEPS 4096 /* operations per input */
#define MAX_LEN 64     /* payload sizes 0..64 */
#define MAX_BATCH 16

/* ------------------------------------------------------------ fixtures */

static const char *const topic_names[NTOPIC] = {"a", "b", "c", "a.b", "a.c", "b.a", "a.b.c",
                                                "a.a.a"};
static const char *const pattern_tokens[4] = {"a", "b", "c", "*"};
static const char *const bad_patterns[] = {"", "a..b", "a.>.b", "a*", ".a", "a.", ">.a", "a b",
                                           ">>"};
#define NBAD (sizeof bad_patterns / sizeof bad_patterns[0])

struct blob {
    const void *p;
    size_t n;
};

static unsigned char long_key[RBUS_MAX_KEY_LEN];        /* 255 bytes */
static unsigned char too_long_key[RBUS_MAX_KEY_LEN + 1]; /* 256 bytes */
static unsigned char long_order_key[RBUS_MAX_KEY_LEN];
static char name_255[256];
static char name_256[257];

/* Binary keys on purpose: "k1" and "k1\0" differ, "\0k" starts with NUL. */
static const struct blob fixed_keys[NFIXED_KEYS] = {
    {"k1", 2}, {"k2", 2}, {"\0k", 2}, {"k1\0", 3}, {long_key, sizeof long_key}};
/* Key NFIXED_KEYS + v is the 3 bytes 'g', v & 0xff, v >> 8: many distinct
 * keys fill the dedup table (probing, deletion, growth). */
static unsigned char gen_keys[NGEN_KEYS][3];
static const struct blob order_keys[2] = {{"o", 1}, {long_order_key, sizeof long_order_key}};

static struct blob key_blob(int k)
{
    if (k < NFIXED_KEYS)
        return fixed_keys[k];
    struct blob b = {gen_keys[k - NFIXED_KEYS], 3};
    return b;
}

static void fixtures_init(void)
{
    static bool done;
    if (done)
        return;
    for (size_t i = 0; i < sizeof long_key; i++) {
        long_key[i] = (unsigned char)(i * 7 + 1);
        long_order_key[i] = (unsigned char)(255 - i);
    }
    for (int v = 0; v < NGEN_KEYS; v++) {
        gen_keys[v][0] = 'g';
        gen_keys[v][1] = (unsigned char)(v & 0xff);
        gen_keys[v][2] = (unsigned char)(v >> 8);
    }
    memset(too_long_key, 'x', sizeof too_long_key);
    memset(name_255, 'n', 255);
    name_255[255] = '\0';
    memset(name_256, 'n', 256);
    name_256[256] = '\0';
    done = true;
}

/* --------------------------------------------------------------- model */

struct rec {          /* one accepted publish */
    uint8_t topic;
    int16_t key;       /* key_blob(key), -1 = none */
    int16_t order_key; /* index into order_keys[], -1 = none */
    uint8_t len;
    uint32_t origin;
    uint64_t seq;
    uint8_t payload[MAX_LEN];
};

struct msub {
    bool live; /* handle valid (not unsubscribed) */
    rbus_sub *h;
    char pattern[32];
    rbus_overflow policy;
    int64_t block_timeout_ns;
    bool closed;    /* rbus_sub_close called */
    uint32_t *q;    /* record ids, a ring of st.capacity */
    uint32_t qhead; /* oldest */
    rbus_sub_stats st; /* expected */
    int fd;            /* -1 until rbus_sub_fd */
    bool fd_cleared;   /* an -EAGAIN at timeout 0 cleared it, nothing queued since */
    uint64_t last_time_ns;
};

struct mtopic {
    bool open;
    rbus_topic *h;
    uint64_t seq;
    uint64_t duplicates;
    uint64_t key_tickets;           /* keys accepted on the topic */
    uint64_t key_ticket[NKEY];      /* each key's latest ticket, 0 = never */
};

struct held {
    rbus_msg *m;
    uint32_t rec;
};

static struct {
    rbus *bus;
    bool closed;
    uint32_t dedup_keys; /* resolved; RBUS_DEDUP_OFF = off */
    uint32_t max_payload;
    uint32_t default_capacity;
    uint32_t max_topics;
    uint32_t ntopics;
    struct msub subs[NSLOT];
    struct mtopic topics[NTOPIC];
    struct rec *recs;
    size_t nrecs, caprecs;
    struct held held[NHELD];
    unsigned nheld;
    uint64_t ids[MAX_STEPS + 1];
    unsigned nids;
    unsigned step;
    const char *op;
    int slot; /* the slot the operation is about, -1 = none */
    uint32_t payload_counter;
} S;

/* ------------------------------------------------------------ failures */

static void fail_at(const char *what, long long got, long long want)
{
    fprintf(stderr, "fuzz_api: MISMATCH at step %u (%s", S.step, S.op ? S.op : "?");
    if (S.slot >= 0)
        fprintf(stderr, ", slot %d pattern \"%s\"", S.slot, S.subs[S.slot].pattern);
    fprintf(stderr, "): %s: got %lld, want %lld\n", what, got, want);
    abort();
}

#define CHECK_EQ(what, got, want)                                                   \
    do {                                                                            \
        long long got_ = (long long)(got), want_ = (long long)(want);               \
        if (got_ != want_)                                                          \
            fail_at((what), got_, want_);                                           \
    } while (0)

#define CHECK(what, cond) CHECK_EQ((what), !!(cond), 1)

/* FUZZ_API_TRACE=1 in the environment prints each step (for reading a
 * reproducer; slow). */
static int trace_on = -1;

static void trace_step(int rc)
{
    /* rc > 0 is a count (recv_batch) or RBUS_DUPLICATE (publish). */
    if (trace_on < 0) {
        const char *e = getenv("FUZZ_API_TRACE");
        trace_on = e && *e && *e != '0';
    }
    if (!trace_on)
        return;
    fprintf(stderr, "step %u: %s", S.step, S.op ? S.op : "?");
    if (S.slot >= 0)
        fprintf(stderr, " [slot %d \"%s\"]", S.slot, S.subs[S.slot].pattern);
    if (rc > 0 && strncmp(S.op, "recv", 4) == 0)
        fprintf(stderr, " -> %d\n", rc);
    else
        fprintf(stderr, " -> %d (%s)\n", rc, rbus_strerror(rc));
}

/* ------------------------------------------------------------- helpers */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

struct reader {
    const uint8_t *p;
    size_t n, i;
};

static uint8_t rd(struct reader *r)
{
    return r->i < r->n ? r->p[r->i++] : 0;
}

static uint32_t effective_capacity(uint32_t asked)
{
    uint32_t c = 2;
    while (c < asked)
        c *= 2;
    return c;
}

/* Subject matching for the small, always valid sets used here: split both
 * at the dots and compare token by token. */
static int split_tokens(const char *s, char toks[][8])
{
    int n = 0;
    size_t k = 0;
    for (const char *p = s;; p++) {
        if (*p == '.' || *p == '\0') {
            toks[n][k] = '\0';
            n++;
            k = 0;
            if (*p == '\0')
                return n;
        } else if (k < 7) {
            toks[n][k++] = *p;
        }
    }
}

static bool model_match(const char *pattern, const char *name)
{
    char pt[8][8], nt[8][8];
    int np = split_tokens(pattern, pt);
    int nn = split_tokens(name, nt);
    for (int i = 0; i < np; i++) {
        if (strcmp(pt[i], ">") == 0)
            return nn > i;
        if (i >= nn)
            return false;
        if (strcmp(pt[i], "*") != 0 && strcmp(pt[i], nt[i]) != 0)
            return false;
    }
    return np == nn;
}

static bool sub_receives(const struct msub *s)
{
    return s->live && !s->closed && !S.closed;
}

static uint32_t q_pop(struct msub *s)
{
    uint32_t id = s->q[s->qhead];
    s->qhead = (s->qhead + 1) % s->st.capacity;
    s->st.depth--;
    return id;
}

static void q_push(struct msub *s, uint32_t id)
{
    s->q[(s->qhead + s->st.depth) % s->st.capacity] = id;
    s->st.depth++;
    if (s->st.depth > s->st.high_water)
        s->st.high_water = s->st.depth;
    s->fd_cleared = false;
}

/* --------------------------------------------------------- verification */

/* want NULL: none expected. */
static void check_blob(const char *what, const void *got, size_t got_len,
                       const struct blob *want)
{
    if (!want) {
        CHECK(what, got == NULL);
        CHECK_EQ(what, got_len, 0);
        return;
    }
    CHECK(what, got != NULL);
    CHECK_EQ(what, got_len, want->n);
    CHECK(what, memcmp(got, want->p, got_len) == 0);
}

/* m must be the message of record `id`. */
static void verify_msg(const rbus_msg *m, uint32_t id, struct msub *from)
{
    const struct rec *r = &S.recs[id];
    CHECK("message is not NULL", m != NULL);
    const char *topic = rbus_msg_topic(m);
    CHECK("rbus_msg_topic", topic && strcmp(topic, topic_names[r->topic]) == 0);
    CHECK_EQ("rbus_msg_seq", rbus_msg_seq(m), r->seq);
    CHECK_EQ("rbus_msg_size", rbus_msg_size(m), r->len);
    const void *data = rbus_msg_data(m);
    CHECK("rbus_msg_data is not NULL", data != NULL);
    CHECK("rbus_msg_data bytes", r->len == 0 || memcmp(data, r->payload, r->len) == 0);
    size_t kl = 12345;
    const void *k = rbus_msg_key(m, &kl);
    struct blob kb = r->key >= 0 ? key_blob(r->key) : (struct blob){NULL, 0};
    check_blob("rbus_msg_key", k, kl, r->key >= 0 ? &kb : NULL);
    CHECK("rbus_msg_key(NULL length)", rbus_msg_key(m, NULL) == k);
    kl = 12345;
    k = rbus_msg_order_key(m, &kl);
    check_blob("rbus_msg_order_key", k, kl,
               r->order_key >= 0 ? &order_keys[r->order_key] : NULL);
    CHECK_EQ("rbus_msg_origin", rbus_msg_origin(m), r->origin);
    CHECK_EQ("rbus_msg_attempt", rbus_msg_attempt(m), 1);
    CHECK("rbus_msg_origin_topic is NULL", rbus_msg_origin_topic(m) == NULL);
    uint64_t t = rbus_msg_time_ns(m);
    CHECK("rbus_msg_time_ns > 0", t > 0);
    CHECK("rbus_msg_time_ns <= now", t <= (uint64_t)now_ns());
    if (from) {
        /* One publisher: acceptance times follow publish order. */
        CHECK("rbus_msg_time_ns follows publish order", t >= from->last_time_ns);
        from->last_time_ns = t;
    }
}

static void hold_or_release(rbus_msg *m, uint32_t id, bool hold)
{
    if (hold && S.nheld < NHELD) {
        S.held[S.nheld].m = m;
        S.held[S.nheld].rec = id;
        S.nheld++;
    } else {
        rbus_msg_release(m);
    }
}

static bool fd_readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, 0);
    CHECK("poll on the subscription fd", n >= 0);
    CHECK("poll: fd valid", !(p.revents & POLLNVAL));
    return n == 1 && (p.revents & POLLIN);
}

/* After every step: every counter of every subscription and topic, the fd
 * states, and the held messages (still intact). */
static void check_all(void)
{
    int saved = S.slot;
    for (int i = 0; i < NSLOT; i++) {
        struct msub *s = &S.subs[i];
        if (!s->live)
            continue;
        S.slot = i;
        rbus_sub_stats st;
        memset(&st, 0xEE, sizeof st);
        CHECK_EQ("rbus_sub_stats_get rc", rbus_sub_stats_get(s->h, &st), 0);
        CHECK_EQ("sub stats: offered", st.offered, s->st.offered);
        CHECK_EQ("sub stats: received", st.received, s->st.received);
        CHECK_EQ("sub stats: dropped_newest", st.dropped_newest, s->st.dropped_newest);
        CHECK_EQ("sub stats: dropped_oldest", st.dropped_oldest, s->st.dropped_oldest);
        CHECK_EQ("sub stats: dropped_timeout", st.dropped_timeout, s->st.dropped_timeout);
        CHECK_EQ("sub stats: dropped_closed", st.dropped_closed, s->st.dropped_closed);
        CHECK_EQ("sub stats: publisher_waits", st.publisher_waits, s->st.publisher_waits);
        CHECK_EQ("sub stats: depth", st.depth, s->st.depth);
        CHECK_EQ("sub stats: high_water", st.high_water, s->st.high_water);
        CHECK_EQ("sub stats: capacity", st.capacity, s->st.capacity);
        if (s->fd >= 0) {
            bool readable = fd_readable(s->fd);
            if (s->st.depth > 0)
                CHECK_EQ("fd readable while a message is queued", readable, 1);
            else if (s->closed)
                CHECK_EQ("fd readable after rbus_sub_close", readable, 1);
            else if (s->fd_cleared)
                CHECK_EQ("fd unreadable after -EAGAIN until a message is queued", readable,
                         0);
        }
    }
    S.slot = -1;
    for (int t = 0; t < NTOPIC; t++) {
        struct mtopic *mt = &S.topics[t];
        if (!mt->open)
            continue;
        rbus_topic_stats ts;
        memset(&ts, 0xEE, sizeof ts);
        CHECK_EQ("rbus_topic_stats_get rc", rbus_topic_stats_get(mt->h, &ts), 0);
        CHECK_EQ("topic stats: published", ts.published, mt->seq);
        CHECK_EQ("topic stats: duplicates", ts.duplicates, mt->duplicates);
        if (!S.closed) {
            /* After rbus_close the docs do not say whether subscriptions
             * still count as open; not checked then. */
            uint32_t want = 0;
            for (int i = 0; i < NSLOT; i++)
                if (sub_receives(&S.subs[i]) && model_match(S.subs[i].pattern, topic_names[t]))
                    want++;
            CHECK_EQ("topic stats: subscriptions", ts.subscriptions, want);
        }
    }
    for (unsigned i = 0; i < S.nheld; i++)
        verify_msg(S.held[i].m, S.held[i].rec, NULL);
    S.slot = saved;
}

/* ---------------------------------------------------------- operations */

static void do_topic_open(int t)
{
    struct mtopic *mt = &S.topics[t];
    rbus_topic *h = (rbus_topic *)&h; /* poison */
    int rc = rbus_topic_open(S.bus, topic_names[t], &h);
    int want;
    if (S.closed)
        want = -ESHUTDOWN;
    else if (mt->open)
        want = 0;
    else if (S.ntopics >= S.max_topics)
        want = -ENOSPC;
    else
        want = 0;
    trace_step(rc);
    CHECK_EQ("rbus_topic_open rc", rc, want);
    if (want != 0) {
        CHECK("rbus_topic_open failed: *out NULL", h == NULL);
        return;
    }
    CHECK("rbus_topic_open: handle", h != NULL);
    if (mt->open) {
        CHECK("rbus_topic_open: same handle for the same name", h == mt->h);
    } else {
        mt->open = true;
        mt->h = h;
        S.ntopics++;
    }
    CHECK("rbus_topic_name", strcmp(rbus_topic_name(h), topic_names[t]) == 0);
}

static void op_topic_open(struct reader *r)
{
    uint8_t b = rd(r);
    S.op = "topic_open";
    if (((b >> 3) & 7) == 7) {
        rbus_topic *h = (rbus_topic *)&h;
        CHECK_EQ("rbus_topic_open(invalid name) rc", rbus_topic_open(S.bus, "a..b", &h), -EINVAL);
        CHECK("rbus_topic_open(invalid name): *out NULL", h == NULL);
        return;
    }
    do_topic_open(b & 7);
}

enum pub_error {
    PE_DATA_NULL,      /* data NULL: -EINVAL when len > 0, fine when len == 0 */
    PE_KEY_NULL_LEN,   /* key NULL with a length */
    PE_KEY_LEN_0,      /* key with length 0 */
    PE_KEY_LEN_256,    /* key one byte too long */
    PE_OKEY_LEN_256,   /* order key one byte too long */
    PE_OKEY_NULL_LEN,  /* order key NULL with a length */
    PE_NONE
};

/* One publish, as the publish and burst ops describe it. */
struct pub_args {
    int topic;
    size_t len;
    int key;             /* key_blob(key), -1 = none */
    int order_key;       /* order_keys[], -1 = none */
    int64_t timeout_ns;  /* rbus_pub_opts.timeout_ns */
    uint32_t origin;
    enum pub_error err;
    bool plain;          /* rbus_publish when nothing else is asked */
    bool no_result;      /* result NULL */
    bool opts_null_ok;   /* opts NULL when every option is the default */
};

/* Topic t's handle for a publish, opening it first if needed (which may
 * fail: the publish then gets a NULL topic); `why` names that step. */
static rbus_topic *publish_topic(int t, const char *why)
{
    struct mtopic *mt = &S.topics[t];
    if (!mt->open) {
        const char *op = S.op;
        S.op = why;
        do_topic_open(t);
        S.op = op;
    }
    return mt->open ? mt->h : NULL;
}

/* A publish's result (single or batch) against the model's. */
static void check_pub_result(const rbus_pub_result *res, const rbus_pub_result *wr)
{
    CHECK_EQ("pub result: matched", res->matched, wr->matched);
    CHECK_EQ("pub result: queued", res->queued, wr->queued);
    CHECK_EQ("pub result: dropped", res->dropped, wr->dropped);
    CHECK_EQ("pub result: evicted", res->evicted, wr->evicted);
    CHECK_EQ("pub result: duplicate", res->duplicate, wr->duplicate);
}

/*
 * The model of one publish of buf[0..len) to topic t: what the call must
 * return, with its result added to *wr and the longest wait a full block
 * subscription imposes in *longest_wait. `waited`, for a batch, marks the
 * subscriptions whose wait the current chunk already counted (a batch
 * waits once per subscription and chunk); NULL for a single publish.
 */
static int model_publish(int t, int key, int okey, size_t len, uint32_t origin, const uint8_t *buf,
                         int64_t pub_timeout, bool einval, rbus_pub_result *wr,
                         int64_t *longest_wait, bool *waited)
{
    struct mtopic *mt = &S.topics[t];
    int want;
    bool dedup_on = S.dedup_keys != RBUS_DEDUP_OFF;
    if (einval)
        want = -EINVAL;
    else if (len > S.max_payload)
        want = -EMSGSIZE;
    else if (S.closed)
        want = -ESHUTDOWN;
    else if (key >= 0 && dedup_on && mt->key_ticket[key] != 0 &&
             mt->key_ticket[key] + S.dedup_keys > mt->key_tickets)
        want = RBUS_DUPLICATE;
    else
        want = 0;

    if (want == RBUS_DUPLICATE) {
        wr->duplicate = true;
        mt->duplicates++;
    } else if (want == 0) {
        if (S.nrecs == S.caprecs) {
            S.caprecs = S.caprecs ? S.caprecs * 2 : 256;
            S.recs = realloc(S.recs, S.caprecs * sizeof *S.recs);
            if (!S.recs)
                abort();
        }
        uint32_t id = (uint32_t)S.nrecs++;
        struct rec *rec = &S.recs[id];
        memset(rec, 0, sizeof *rec);
        rec->topic = (uint8_t)t;
        rec->key = (int16_t)key;
        rec->order_key = (int16_t)okey;
        rec->len = (uint8_t)len;
        rec->origin = origin;
        rec->seq = ++mt->seq;
        memcpy(rec->payload, buf, len);
        if (key >= 0 && dedup_on)
            mt->key_ticket[key] = ++mt->key_tickets;
        for (int i = 0; i < NSLOT; i++) {
            struct msub *s = &S.subs[i];
            if (!sub_receives(s) || !model_match(s->pattern, topic_names[t]))
                continue;
            wr->matched++;
            s->st.offered++;
            if (s->st.depth < s->st.capacity) {
                q_push(s, id);
                wr->queued++;
                continue;
            }
            switch (s->policy) {
            case RBUS_DROP_NEWEST:
                s->st.dropped_newest++;
                wr->dropped++;
                break;
            case RBUS_DROP_OLDEST:
                q_pop(s);
                s->st.dropped_oldest++;
                wr->evicted++;
                q_push(s, id);
                wr->queued++;
                break;
            case RBUS_BLOCK:
            default:
                if (pub_timeout >= 0) {
                    /* A batch waits once per subscription and chunk. */
                    if (!waited || !waited[i])
                        s->st.publisher_waits++;
                    if (waited)
                        waited[i] = true;
                    int64_t w = s->block_timeout_ns;
                    if (pub_timeout > 0 && pub_timeout < w)
                        w = pub_timeout;
                    if (w > *longest_wait)
                        *longest_wait = w;
                }
                s->st.dropped_timeout++;
                wr->dropped++;
                break;
            }
        }
    }

    return want;
}

static void publish_one(const struct pub_args *a)
{
    int t = a->topic;
    size_t len = a->len;
    int key = a->key, okey = a->order_key;
    int64_t pub_timeout = a->timeout_ns;
    uint32_t origin = a->origin;
    bool no_result = a->no_result;
    rbus_topic *h = publish_topic(t, "publish: topic_open first");

    uint8_t buf[MAX_LEN];
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(S.payload_counter * 131u + i * 17u + 3u);
    S.payload_counter++;

    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    struct blob kb = key >= 0 ? key_blob(key) : (struct blob){NULL, 0};
    po.key = kb.p;
    po.key_len = kb.n;
    if (okey >= 0) {
        po.order_key = order_keys[okey].p;
        po.order_key_len = order_keys[okey].n;
    }
    po.timeout_ns = pub_timeout;
    po.origin = origin;
    const void *data = buf;
    bool einval = h == NULL;
    switch (a->err) {
    case PE_DATA_NULL:
        data = NULL;
        einval |= len > 0;
        break;
    case PE_KEY_NULL_LEN:
        po.key = NULL;
        po.key_len = 3;
        einval = true;
        break;
    case PE_KEY_LEN_0:
        po.key = "k1";
        po.key_len = 0;
        einval = true;
        break;
    case PE_KEY_LEN_256:
        po.key = too_long_key;
        po.key_len = sizeof too_long_key;
        einval = true;
        break;
    case PE_OKEY_LEN_256:
        po.order_key = too_long_key;
        po.order_key_len = sizeof too_long_key;
        einval = true;
        break;
    case PE_OKEY_NULL_LEN:
        po.order_key = NULL;
        po.order_key_len = 1;
        einval = true;
        break;
    case PE_NONE:
        break;
    }
    /* What the call will carry (an error case may have replaced a key). */
    if (!po.key)
        key = -1;
    if (!po.order_key)
        okey = -1;
    bool defaults = !po.key && !po.key_len && !po.order_key && !po.order_key_len &&
                    po.timeout_ns == 0 && po.origin == 0;

    /* ---- the model */
    rbus_pub_result wr = {0};
    int64_t longest_wait = 0; /* the longest wait a full block subscription imposes */
    int want = model_publish(t, key, okey, len, origin, buf, pub_timeout, einval, &wr,
                             &longest_wait, NULL);

    /* ---- the call */
    rbus_pub_result res;
    memset(&res, 0xEE, sizeof res);
    int rc;
    int64_t t0 = now_ns();
    if (a->plain && defaults && no_result) {
        rc = rbus_publish(h, data, len);
    } else {
        const rbus_pub_opts *opts = (a->opts_null_ok && defaults) ? NULL : &po;
        rc = rbus_publish_ex(h, data, len, opts, no_result ? NULL : &res);
    }
    int64_t waited = now_ns() - t0;
    trace_step(rc);
    if (trace_on && !no_result)
        fprintf(stderr, "    topic %s len %zu key %d: matched %u queued %u dropped %u evicted %u%s\n",
                topic_names[t], len, key, res.matched, res.queued, res.dropped, res.evicted,
                res.duplicate ? " duplicate" : "");
    CHECK_EQ("publish rc", rc, want);
    if (!no_result)
        check_pub_result(&res, &wr);
    if (longest_wait > 0)
        CHECK("a full block subscription made the publisher wait its timeout",
              waited >= longest_wait);
}


static void op_publish(struct reader *r)
{
    uint8_t bt = rd(r), bl = rd(r), bk = rd(r), bo = rd(r);
    static const uint32_t origins[4] = {0, 7, UINT32_MAX, 0};
    static const int64_t pub_timeouts[4] = {0, -1, 500, 3000};
    struct pub_args a;
    a.topic = bt & 7;
    a.plain = (bt >> 3) & 1;
    a.no_result = (bt >> 4) & 1;
    a.origin = origins[(bt >> 5) & 3];
    a.len = bl % (MAX_LEN + 1);
    a.key = (bk & 7) < 3 ? -1 : (bk & 7) - 3;
    a.order_key = ((bk >> 3) & 3) == 1 ? 0 : ((bk >> 3) & 3) == 2 ? 1 : -1;
    a.timeout_ns = pub_timeouts[bo & 3];
    unsigned e = (bo >> 2) & 15;
    a.err = e < PE_NONE ? (enum pub_error)e : PE_NONE;
    a.opts_null_ok = (bo >> 6) & 1;
    S.op = a.plain && a.no_result ? "publish (rbus_publish if no options)" : "publish";
    publish_one(&a);
}

/* Up to 64 keyed publishes on one topic in one step, with generated keys
 * v = base + i * stride (mod 512): new keys and repeats, so that the dedup
 * table probes, forgets (deletes) and grows. */
static void op_burst(struct reader *r)
{
    uint8_t bt = rd(r), bn = rd(r), bb = rd(r), bs = rd(r);
    S.op = "burst of keyed publishes";
    struct pub_args a;
    memset(&a, 0, sizeof a);
    a.topic = bt & 7;
    a.order_key = -1;
    a.timeout_ns = -1; /* full block subscriptions do not hold a burst up */
    a.err = PE_NONE;
    unsigned n = 1 + bn % MAX_BURST;
    unsigned base = bb | ((unsigned)(bt >> 3) & 1) << 8;
    unsigned stride = bs;
    for (unsigned i = 0; i < n; i++) {
        a.key = NFIXED_KEYS + (int)((base + i * stride) % NGEN_KEYS);
        a.len = i % 9;
        publish_one(&a);
    }
}

/* rbus_publish_batch of 0..MAX_PUB_BATCH payloads (past two chunks) to one
 * topic, with or without a bad argument, checked against the model run
 * once per message. */
#define MAX_PUB_BATCH 150
static void op_publish_batch(struct reader *r)
{
    uint8_t bt = rd(r), bn = rd(r), bl = rd(r), bo = rd(r);
    static const int64_t pub_timeouts[4] = {0, -1, 500, 3000};
    enum { BE_NONE, BE_KEY, BE_DATA_NULL, BE_TOO_LONG, BE_MSGS_NULL, BE_FLAGS };
    int t = bt & 7;
    unsigned n = bn % (MAX_PUB_BATCH + 1);
    int64_t pub_timeout = pub_timeouts[bo & 3];
    unsigned err = (bo >> 2) & 7;
    bool no_result = (bo >> 5) & 1;
    int okey = (bo >> 6) & 1 ? 0 : -1;
    uint32_t origin = (bt >> 3) & 1 ? 7 : 0;
    S.op = "publish_batch";
    rbus_topic *h = publish_topic(t, "publish_batch: topic_open first");

    static uint8_t bufs[MAX_PUB_BATCH][MAX_LEN + 1];
    rbus_payload pl[MAX_PUB_BATCH];
    bool einval = h == NULL, too_long = false;
    for (unsigned i = 0; i < n; i++) {
        size_t len = (bl + i * 7u) % (MAX_LEN + 1);
        for (size_t j = 0; j < len; j++)
            bufs[i][j] = (uint8_t)(S.payload_counter * 131u + j * 17u + 3u);
        S.payload_counter++;
        pl[i] = (rbus_payload){bufs[i], len};
    }
    if (err == BE_DATA_NULL && n) {
        pl[n / 2].data = NULL;
        einval |= pl[n / 2].len > 0;
    }
    if (err == BE_TOO_LONG && n)
        pl[n - 1].len = S.max_payload + 1; /* refused before a byte is read */
    for (unsigned i = 0; i < n; i++)
        too_long |= pl[i].len > S.max_payload;
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.timeout_ns = pub_timeout;
    po.origin = origin;
    if (okey >= 0) {
        po.order_key = order_keys[okey].p;
        po.order_key_len = order_keys[okey].n;
    }
    if (err == BE_KEY) {
        po.key = "k1";
        po.key_len = 2;
        einval = true;
    }
    if (err == BE_FLAGS) {
        po.flags = RBUS_PUB_ALL_OR_NONE;
        einval = true;
    }
    einval |= err == BE_MSGS_NULL && n > 0;

    /* ---- the model: each message as a single publish, in chunks of 64 */
    int want = einval ? -EINVAL : too_long ? -EMSGSIZE : S.closed ? -ESHUTDOWN : (int)n;
    rbus_pub_result wr = {0};
    int64_t longest_wait = 0;
    bool waited[NSLOT];
    for (unsigned i = 0; want > 0 && i < n; i++) {
        if (i % 64 == 0)
            memset(waited, 0, sizeof waited);
        model_publish(t, -1, okey, pl[i].len, origin, bufs[i], pub_timeout, false, &wr,
                      &longest_wait, waited);
    }

    /* ---- the call */
    rbus_pub_result res;
    memset(&res, 0xEE, sizeof res);
    int64_t t0 = now_ns();
    int rc =
        rbus_publish_batch(h, err == BE_MSGS_NULL ? NULL : pl, n, &po, no_result ? NULL : &res);
    int64_t took = now_ns() - t0;
    trace_step(rc);
    CHECK_EQ("publish_batch rc", rc, want);
    if (!no_result)
        check_pub_result(&res, &wr);
    if (longest_wait > 0)
        CHECK("a full block subscription made the batch wait its timeout", took >= longest_wait);
}

static void op_subscribe(struct reader *r)
{
    uint8_t p1 = rd(r), p2 = rd(r), c = rd(r), e = rd(r);
    S.op = "subscribe";
    char pattern[32];
    bool valid_pattern = true;
    if (((p1 >> 3) & 15) == 15) {
        snprintf(pattern, sizeof pattern, "%s", bad_patterns[p2 % NBAD]);
        valid_pattern = false;
    } else {
        int ntok = 1 + (p1 & 3);
        bool gt = (p1 >> 2) & 1;
        pattern[0] = '\0';
        for (int i = 0; i < ntok; i++) {
            const char *tok = (gt && i == ntok - 1) ? ">" : pattern_tokens[(p2 >> (2 * i)) & 3];
            if (i)
                strcat(pattern, ".");
            strcat(pattern, tok);
        }
    }

    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    uint32_t cap = c & 15;
    if (cap > 8)
        cap -= 8;
    o.capacity = cap;
    o.overflow = (rbus_overflow)(((c >> 4) & 3) % 3);
    static const int64_t block_timeouts[4] = {1000, 2000, 500, 1};
    o.block_timeout_ns = block_timeouts[(c >> 6) & 3];
    static const int64_t spins[4] = {0, -1, 500, 2000};
    o.spin_ns = spins[e & 3];
    bool valid_opts = true;
    switch ((e >> 2) & 3) {
    case 0:
        o.name = NULL;
        break;
    case 1:
        o.name = "sub";
        break;
    case 2:
        o.name = name_255;
        break;
    case 3:
        o.name = name_256;
        valid_opts = false;
        break;
    }
    switch ((e >> 4) & 15) {
    case 0:
        o.overflow = (rbus_overflow)3;
        valid_opts = false;
        break;
    case 1:
        o.spin_ns = RBUS_MAX_SPIN_NS + 1;
        valid_opts = false;
        break;
    case 2:
        o.capacity = RBUS_MAX_CAPACITY + 1;
        valid_opts = false;
        break;
    case 3:
        o.spin_ns = RBUS_MAX_SPIN_NS; /* the largest accepted */
        break;
    default:
        break;
    }

    int slot = -1;
    for (int i = 0; i < NSLOT; i++)
        if (!S.subs[i].live) {
            slot = i;
            break;
        }
    int want;
    if (!valid_pattern || !valid_opts)
        want = -EINVAL;
    else if (S.closed)
        want = -ESHUTDOWN;
    else
        want = 0;
    if (want == 0 && slot < 0) {
        S.op = "subscribe (skipped: no free slot)";
        return;
    }

    rbus_sub *h = (rbus_sub *)&h; /* poison */
    int rc = rbus_subscribe(S.bus, pattern, &o, &h);
    trace_step(rc);
    CHECK_EQ("rbus_subscribe rc", rc, want);
    if (want != 0) {
        CHECK("rbus_subscribe failed: *out NULL", h == NULL);
        return;
    }
    CHECK("rbus_subscribe: handle", h != NULL);
    S.slot = slot;
    struct msub *s = &S.subs[slot];
    memset(s, 0, sizeof *s);
    s->live = true;
    s->h = h;
    snprintf(s->pattern, sizeof s->pattern, "%s", pattern);
    s->policy = o.overflow;
    s->block_timeout_ns = o.block_timeout_ns;
    s->fd = -1;
    s->st.capacity = effective_capacity(o.capacity ? o.capacity : S.default_capacity);
    s->q = malloc(s->st.capacity * sizeof *s->q);
    if (!s->q)
        abort();
    uint64_t id = rbus_sub_id(h);
    CHECK("rbus_sub_id >= 1", id >= 1);
    for (unsigned i = 0; i < S.nids; i++)
        CHECK("rbus_sub_id unique in the bus", S.ids[i] != id);
    S.ids[S.nids++] = id;
}

static struct msub *slot_sub(uint8_t b)
{
    S.slot = b & 7;
    struct msub *s = &S.subs[S.slot];
    if (!s->live) {
        S.slot = -1;
        return NULL;
    }
    return s;
}

static void op_recv(struct reader *r)
{
    uint8_t b = rd(r);
    S.op = "recv";
    struct msub *s = slot_sub(b);
    static const int64_t timeouts[4] = {0, 1000, -1, 0};
    unsigned tsel = (b >> 3) & 3;
    int64_t timeout = timeouts[tsel];
    bool out_null = tsel == 3 && ((b >> 6) & 1);
    bool hold = (b >> 5) & 1;
    rbus_msg *m = (rbus_msg *)&m;
    if (!s) {
        CHECK_EQ("rbus_recv(NULL sub) rc", rbus_recv(NULL, &m, 0), -EINVAL);
        CHECK("rbus_recv(NULL sub): *out NULL", m == NULL);
        return;
    }
    if (out_null) {
        CHECK_EQ("rbus_recv(out NULL) rc", rbus_recv(s->h, NULL, 0), -EINVAL);
        return;
    }
    bool ended = s->closed || S.closed;
    if (timeout < 0 && s->st.depth == 0 && !ended)
        timeout = 0; /* would wait forever: nobody else publishes */
    int want = s->st.depth ? 0 : ended ? -ESHUTDOWN : timeout == 0 ? -EAGAIN : -ETIMEDOUT;
    int rc = rbus_recv(s->h, &m, timeout);
    trace_step(rc);
    CHECK_EQ("rbus_recv rc", rc, want);
    if (rc != 0) {
        CHECK("rbus_recv failed: *out NULL", m == NULL);
        if (rc == -EAGAIN && s->fd >= 0)
            s->fd_cleared = true;
        return;
    }
    uint32_t id = q_pop(s);
    s->st.received++;
    verify_msg(m, id, s);
    hold_or_release(m, id, hold);
}

static void op_recv_batch(struct reader *r)
{
    uint8_t b = rd(r), bm = rd(r);
    S.op = "recv_batch";
    struct msub *s = slot_sub(b);
    static const int64_t timeouts[4] = {0, 1000, -1, 0};
    unsigned tsel = (b >> 3) & 3;
    int64_t timeout = timeouts[tsel];
    bool hold = (b >> 5) & 1;
    size_t max = tsel == 3 && ((b >> 6) & 1) ? 0 : 1 + bm % MAX_BATCH;
    rbus_msg *out[MAX_BATCH];
    if (!s) {
        CHECK_EQ("rbus_recv_batch(NULL sub) rc", rbus_recv_batch(NULL, out, 4, 0), -EINVAL);
        return;
    }
    if (max == 0) {
        CHECK_EQ("rbus_recv_batch(max 0) rc", rbus_recv_batch(s->h, out, 0, 0), -EINVAL);
        return;
    }
    bool ended = s->closed || S.closed;
    if (timeout < 0 && s->st.depth == 0 && !ended)
        timeout = 0;
    int want;
    if (s->st.depth)
        want = (int)(s->st.depth < max ? s->st.depth : max);
    else
        want = ended ? -ESHUTDOWN : timeout == 0 ? -EAGAIN : -ETIMEDOUT;
    int rc = rbus_recv_batch(s->h, out, max, timeout);
    trace_step(rc);
    CHECK_EQ("rbus_recv_batch rc", rc, want);
    if (rc <= 0) {
        if (rc == -EAGAIN && s->fd >= 0)
            s->fd_cleared = true;
        return;
    }
    for (int i = 0; i < rc; i++) {
        uint32_t id = q_pop(s);
        s->st.received++;
        verify_msg(out[i], id, s);
        hold_or_release(out[i], id, hold);
    }
}

static void op_sub_close(struct reader *r)
{
    uint8_t b = rd(r);
    S.op = "sub_close";
    struct msub *s = slot_sub(b);
    if (!s) {
        CHECK_EQ("rbus_sub_close(NULL) rc", rbus_sub_close(NULL), -EINVAL);
        return;
    }
    CHECK_EQ("rbus_sub_close rc", rbus_sub_close(s->h), 0);
    s->closed = true;
    s->fd_cleared = false;
}

static void unsubscribe_slot(struct msub *s)
{
    CHECK_EQ("rbus_unsubscribe rc", rbus_unsubscribe(s->h), 0);
    free(s->q);
    memset(s, 0, sizeof *s);
    s->fd = -1;
}

static void op_unsubscribe(struct reader *r)
{
    uint8_t b = rd(r);
    S.op = "unsubscribe";
    struct msub *s = slot_sub(b);
    if (!s) {
        CHECK_EQ("rbus_unsubscribe(NULL) rc", rbus_unsubscribe(NULL), -EINVAL);
        return;
    }
    unsubscribe_slot(s);
    S.slot = -1;
}

static void release_held(unsigned i)
{
    verify_msg(S.held[i].m, S.held[i].rec, NULL);
    rbus_msg_release(S.held[i].m);
    S.held[i] = S.held[--S.nheld];
}

static void op_release(struct reader *r)
{
    uint8_t b = rd(r);
    S.op = "release";
    unsigned i = b % NHELD;
    if (i < S.nheld)
        release_held(i);
    else
        rbus_msg_release(NULL); /* a no-op */
}

static void op_ref(struct reader *r)
{
    uint8_t b = rd(r);
    S.op = "msg_ref";
    unsigned i = b % NHELD;
    if (i < S.nheld && S.nheld < NHELD) {
        rbus_msg *m = rbus_msg_ref(S.held[i].m);
        CHECK("rbus_msg_ref returns its argument", m == S.held[i].m);
        S.held[S.nheld].m = m;
        S.held[S.nheld].rec = S.held[i].rec;
        S.nheld++;
    } else {
        CHECK("rbus_msg_ref(NULL)", rbus_msg_ref(NULL) == NULL);
    }
}

static void op_fd(struct reader *r)
{
    uint8_t b = rd(r);
    S.op = "sub_fd";
    struct msub *s = slot_sub(b);
    if (!s) {
        CHECK_EQ("rbus_sub_fd(NULL) rc", rbus_sub_fd(NULL), -EINVAL);
        return;
    }
    int fd = rbus_sub_fd(s->h);
    CHECK("rbus_sub_fd >= 0", fd >= 0);
    if (s->fd >= 0)
        CHECK_EQ("rbus_sub_fd: the same fd on every call", fd, s->fd);
    s->fd = fd;
}

/* rbus_close: the docs promise nothing about the fds' readability after
 * it (rbus_sub_close does make them readable), so the model forgets that
 * they were cleared. */
static void bus_close(void)
{
    rbus_close(S.bus);
    S.closed = true;
    for (int i = 0; i < NSLOT; i++)
        S.subs[i].fd_cleared = false;
}

/* Either closes the bus (one time in eight) or checks NULL handling. */
static void op_close_or_nulls(struct reader *r)
{
    uint8_t b = rd(r);
    if ((b & 7) == 0) {
        S.op = "close";
        bus_close();
        return;
    }
    S.op = "NULL arguments";
    rbus_sub_stats ss;
    rbus_topic_stats ts;
    rbus_pub_result res;
    memset(&res, 0xEE, sizeof res);
    CHECK_EQ("rbus_sub_stats_get(NULL)", rbus_sub_stats_get(NULL, &ss), -EINVAL);
    CHECK_EQ("rbus_topic_stats_get(NULL)", rbus_topic_stats_get(NULL, &ts), -EINVAL);
    CHECK_EQ("rbus_publish_ex(NULL topic)", rbus_publish_ex(NULL, "x", 1, NULL, &res), -EINVAL);
    CHECK("rbus_publish_ex(NULL topic): result zeroed",
          res.matched == 0 && res.queued == 0 && res.dropped == 0 && res.evicted == 0 &&
              !res.duplicate);
    CHECK_EQ("rbus_sub_id(NULL)", rbus_sub_id(NULL), 0);
    CHECK("rbus_topic_name(NULL)", rbus_topic_name(NULL) == NULL);
    CHECK_EQ("rbus_msg_seq(NULL)", rbus_msg_seq(NULL), 0);
    CHECK_EQ("rbus_msg_size(NULL)", rbus_msg_size(NULL), 0);
    CHECK("rbus_msg_data(NULL)", rbus_msg_data(NULL) == NULL);
    rbus_topic *h = (rbus_topic *)&h;
    CHECK_EQ("rbus_topic_open(NULL name)", rbus_topic_open(S.bus, NULL, &h), -EINVAL);
    CHECK("rbus_topic_open(NULL name): *out NULL", h == NULL);
    CHECK_EQ("rbus_topic_open(NULL out)", rbus_topic_open(S.bus, "a", NULL), -EINVAL);
    rbus_sub *sh = (rbus_sub *)&sh;
    CHECK_EQ("rbus_subscribe(NULL pattern)", rbus_subscribe(S.bus, NULL, NULL, &sh), -EINVAL);
    CHECK("rbus_subscribe(NULL pattern): *out NULL", sh == NULL);
    CHECK_EQ("rbus_subscribe(NULL out)", rbus_subscribe(S.bus, "a", NULL, NULL), -EINVAL);
    if (S.subs[b & 7].live)
        CHECK_EQ("rbus_sub_stats_get(out NULL)", rbus_sub_stats_get(S.subs[b & 7].h, NULL),
                 -EINVAL);
}

/* -------------------------------------------------------------- target */

static void reset_model(void)
{
    for (int i = 0; i < NSLOT; i++)
        free(S.subs[i].q);
    free(S.recs);
    memset(&S, 0, sizeof S);
    for (int i = 0; i < NSLOT; i++)
        S.subs[i].fd = -1;
    S.slot = -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fixtures_init();
    reset_model();
    struct reader r = {data, size, 0};
    uint8_t c0 = rd(&r), c1 = rd(&r), c2 = rd(&r);

    static const uint32_t dedup_opts[8] = {1, 2, 3, 4, 64, 256, RBUS_DEDUP_OFF, 0};
    static const uint32_t payload_opts[4] = {0, 64, 48, 16};
    static const uint32_t capacity_opts[8] = {0, 1, 2, 3, 5, 8, 16, 7};
    static const uint32_t topics_opts[8] = {0, 1, 2, 3, 4, 6, 8, 5};
    rbus_config cfg;
    memset(&cfg, 0, sizeof cfg); /* zero = defaults, field by field */
    cfg.dedup_keys = dedup_opts[c0 & 7];
    cfg.max_payload = payload_opts[(c0 >> 3) & 3];
    cfg.default_capacity = capacity_opts[c1 & 7];
    cfg.max_topics = topics_opts[(c1 >> 3) & 7];
    S.dedup_keys = cfg.dedup_keys ? cfg.dedup_keys : 4096;
    S.max_payload = cfg.max_payload ? cfg.max_payload : 65536;
    S.default_capacity = cfg.default_capacity ? cfg.default_capacity : 1024;
    S.max_topics = cfg.max_topics ? cfg.max_topics : 65536;
    S.op = "rbus_create";
    CHECK_EQ("rbus_create rc", rbus_create(&S.bus, &cfg), 0);

    while (r.i < r.n && S.step < MAX_STEPS) {
        S.step++;
        S.slot = -1;
        uint8_t op = rd(&r) % 32;
        if (op <= 8 || op == 28 || op == 29)
            op_publish(&r);
        else if (op == 30)
            op_publish_batch(&r);
        else if (op == 31)
            op_burst(&r);
        else if (op <= 12)
            op_subscribe(&r);
        else if (op <= 17)
            op_recv(&r);
        else if (op <= 19)
            op_recv_batch(&r);
        else if (op == 20)
            op_sub_close(&r);
        else if (op == 21)
            op_unsubscribe(&r);
        else if (op == 22)
            op_topic_open(&r);
        else if (op <= 24)
            op_release(&r);
        else if (op == 25)
            op_ref(&r);
        else if (op == 26)
            op_fd(&r);
        else
            op_close_or_nulls(&r);
        check_all();
    }

    /* The end: every held message goes back first (rbus_destroy wants them
     * all released), then one of four ways to finish. */
    S.step++;
    S.slot = -1;
    S.op = "release all held";
    while (S.nheld)
        release_held(S.nheld - 1);
    switch (c2 & 3) {
    case 0:
        S.op = "destroy with subscriptions alive";
        break;
    case 1:
        S.op = "unsubscribe all";
        for (int i = 0; i < NSLOT; i++)
            if (S.subs[i].live) {
                S.slot = i;
                unsubscribe_slot(&S.subs[i]);
            }
        S.slot = -1;
        break;
    case 2:
        S.op = "final close";
        bus_close();
        check_all();
        break;
    case 3:
        /* Close every subscription, then drain each: everything queued
         * comes out in order, then -ESHUTDOWN. */
        for (int i = 0; i < NSLOT; i++) {
            struct msub *s = &S.subs[i];
            if (!s->live)
                continue;
            S.slot = i;
            S.op = "final sub_close";
            CHECK_EQ("rbus_sub_close rc", rbus_sub_close(s->h), 0);
            s->closed = true;
            S.op = "final drain";
            while (s->st.depth) {
                rbus_msg *m = NULL;
                CHECK_EQ("rbus_recv rc", rbus_recv(s->h, &m, -1), 0);
                uint32_t id = q_pop(s);
                s->st.received++;
                verify_msg(m, id, s);
                rbus_msg_release(m);
            }
            rbus_msg *m = NULL;
            CHECK_EQ("rbus_recv rc when drained", rbus_recv(s->h, &m, -1), -ESHUTDOWN);
        }
        S.slot = -1;
        check_all();
        break;
    }
    S.op = "rbus_destroy";
    rbus_destroy(S.bus);
    S.bus = NULL;
    reset_model();
    return 0;
}
