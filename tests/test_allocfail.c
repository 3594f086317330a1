/*
 * test_allocfail.c - allocation-failure injection through the allocator
 * hooks.
 *
 * An allocator that fails exactly the k-th call of its alloc hook, and
 * counts live blocks and bytes. One scenario, single-threaded except for a
 * helper thread that publishes now and then (joined at once, so the order
 * of allocations never depends on scheduling): create the bus, open topics,
 * subscribe with every policy, publish with and without keys in many
 * message size classes (enough that the message pool grows), receive some,
 * unsubscribe one subscription that still has messages queued, subscribe
 * again, publish more, close one subscription and drain it, destroy.
 *
 * The scenario runs once with no failure to count the allocations N, then
 * once for every k in 1..N with the k-th allocation failing. Rules:
 *   - every call returns what it returns without the failure, or -ENOMEM
 *     (and -ENOMEM only from a call during which the failure was injected);
 *     rbus_create may fail, and then nothing else runs;
 *   - a call that failed left its out parameter NULL and changed nothing
 *     the stats can see (no sequence number, no key, nothing offered,
 *     routing unchanged); retried once with failures switched off it
 *     succeeds, and the scenario goes on to the end on the same bus;
 *   - rbus_sub_close and rbus_unsubscribe never call the alloc hook;
 *   - nothing queued is lost: the test keeps a model of every subscription
 *     (its FIFO, capacity and policy); every message received must be the
 *     model's next one (topic, sequence number, size, payload bytes, key),
 *     every counter must equal the model's, and what is still queued at
 *     rbus_unsubscribe / rbus_destroy must be exactly the model's depth;
 *   - rbus_destroy gives back every byte (live blocks and bytes 0, no free
 *     of a pointer the hooks did not hand out); LSan checks the rest.
 *
 * The library also allocates outside the hooks (pthread keys, eventfd);
 * only the hooks can fail here.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "test_util.h"

/* ------------------------------------------------------------ the model */

#define NTOPICS 6
#define NSUBS 7
#define MAX_MSGS 1024 /* accepted publishes per scenario, bound */
#define NSIZES 13

static const char *const topic_names[NTOPICS] = {"af.a",   "af.b.c",  "af.d",
                                                 "ov.x",   "af.late", "af.new"};
/* Payload sizes: with the keys they land in size classes 64 B .. 64 KiB. */
static const uint32_t sizes[NSIZES] = {0,    1,    16,   60,   100,   200,  500,
                                       1000, 2000, 5000, 9000, 20000, 40000};

/* One accepted message, identified by (topic, seq). */
struct mmsg {
    uint32_t topic;
    uint64_t seq;
    uint32_t size;
    int key; /* key number, -1 = none */
    bool order_key;
    uint32_t origin;
};

struct msub {
    rbus_sub *sub;
    const char *label;
    const char *pattern;
    rbus_overflow policy;
    uint32_t cap; /* effective, from the stats */
    bool exists;  /* subscribed, not yet unsubscribed */
    bool open;    /* not closed: publishers deliver */
    uint32_t q[MAX_MSGS]; /* message indexes, FIFO: q[head..tail) */
    uint32_t head, tail;
    uint64_t offered, received, dnew, dold, dtime;
};

struct scen {
    struct rbus_test_alloc *fa;
    long long k; /* the failing call; 0 = none */
    rbus *bus;
    rbus_topic *topics[NTOPICS];
    uint64_t accepted[NTOPICS];
    uint64_t dups[NTOPICS];
    int last_key[NTOPICS]; /* an accepted key on the topic, -1 = none yet */
    int next_key;
    struct msub subs[NSUBS];
    struct mmsg msgs[MAX_MSGS];
    uint32_t nmsgs;
    uint32_t npub; /* publishes attempted (drives sizes and options) */
    rbus_msg *held[16];
    unsigned nheld;
    /* what happened, for the report */
    const char *failed_call;  /* the call that returned -ENOMEM, if any */
    const char *absorbed_by;  /* the call that met the failure and still succeeded */
    uint64_t n_received, n_dropped, n_queued_at_unsub, n_queued_at_destroy;
};

static uint32_t depth_of(const struct msub *m)
{
    return m->tail - m->head;
}

static long long injected(const struct scen *s)
{
    return atomic_load(&s->fa->injected);
}

static void failures_off(struct scen *s)
{
    atomic_store(&s->fa->fail_at, 0);
}

/*
 * The verdict on one call that returned rc, where `want` is what it returns
 * without a failure. Returns true when it failed with -ENOMEM because of
 * the injected failure: then failures are switched off and the caller
 * checks that nothing changed and retries. Anything else fails the test.
 */
static bool failed_here(struct scen *s, long long inj_before, const char *what, int rc, int want)
{
    bool inj = injected(s) != inj_before;
    if (rc == want) {
        if (inj)
            s->absorbed_by = what;
        return false;
    }
    if (rc == -ENOMEM && inj) {
        if (s->failed_call != NULL) {
            print_error("k=%lld: a second -ENOMEM (%s after %s)\n", s->k, what, s->failed_call);
            fail();
        }
        s->failed_call = what;
        failures_off(s);
        return true;
    }
    print_error("k=%lld: %s returned %d (%s), want %d (%s); failure injected during it: %s\n",
                s->k, what, rc, rbus_strerror(rc), want, rbus_strerror(want), inj ? "yes" : "no");
    fail();
    return false;
}

static bool sub_matches(const struct msub *m, uint32_t topic)
{
    return rbus_pattern_match(m->pattern, topic_names[topic]);
}

static uint32_t model_subscriptions(const struct scen *s, uint32_t topic)
{
    uint32_t n = 0;
    for (int i = 0; i < NSUBS; i++)
        if (s->subs[i].exists && s->subs[i].open && sub_matches(&s->subs[i], topic))
            n++;
    return n;
}

/* Every counter the library shows equals the model's. */
static void compare_sub(struct scen *s, struct msub *m)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(m->sub, &st));
    if (st.offered != m->offered || st.received != m->received || st.depth != depth_of(m) ||
        st.dropped_newest != m->dnew || st.dropped_oldest != m->dold ||
        st.dropped_timeout != m->dtime || st.dropped_closed != 0 || st.capacity != m->cap) {
        print_error("k=%lld (failed: %s): sub %s: offered %llu received %llu depth %u newest "
                    "%llu oldest %llu timeout %llu closed %llu cap %u; model: %llu %llu %u "
                    "%llu %llu %llu 0 cap %u\n",
                    s->k, s->failed_call ? s->failed_call : "-", m->label,
                    (unsigned long long)st.offered, (unsigned long long)st.received, st.depth,
                    (unsigned long long)st.dropped_newest, (unsigned long long)st.dropped_oldest,
                    (unsigned long long)st.dropped_timeout, (unsigned long long)st.dropped_closed,
                    st.capacity, (unsigned long long)m->offered, (unsigned long long)m->received,
                    depth_of(m), (unsigned long long)m->dnew, (unsigned long long)m->dold,
                    (unsigned long long)m->dtime, m->cap);
        fail();
    }
    rbus_test_check_accounting(&st);
}

static void compare_topic(struct scen *s, uint32_t t)
{
    rbus_topic_stats ts;
    long long inj = injected(s);
    assert_rbus_ok(rbus_topic_stats_get(s->topics[t], &ts));
    if (injected(s) != inj)
        s->absorbed_by = "rbus_topic_stats_get"; /* it falls back to the bus lock */
    uint32_t want_subs = model_subscriptions(s, t);
    if (ts.published != s->accepted[t] || ts.duplicates != s->dups[t] ||
        ts.subscriptions != want_subs) {
        print_error("k=%lld (failed: %s): topic %s: published %llu duplicates %llu "
                    "subscriptions %u; model %llu %llu %u\n",
                    s->k, s->failed_call ? s->failed_call : "-", topic_names[t],
                    (unsigned long long)ts.published, (unsigned long long)ts.duplicates,
                    ts.subscriptions, (unsigned long long)s->accepted[t],
                    (unsigned long long)s->dups[t], want_subs);
        fail();
    }
}

static void compare_all(struct scen *s)
{
    for (int i = 0; i < NSUBS; i++)
        if (s->subs[i].exists)
            compare_sub(s, &s->subs[i]);
    for (uint32_t t = 0; t < NTOPICS; t++)
        if (s->topics[t])
            compare_topic(s, t);
}

/* --------------------------------------------------------------- steps */

static void step_open_topic(struct scen *s, uint32_t t)
{
    rbus_topic *out = (rbus_topic *)&s->bus; /* junk: a failed call must reset it */
    long long inj = injected(s);
    int rc = rbus_topic_open(s->bus, topic_names[t], &out);
    if (failed_here(s, inj, "rbus_topic_open", rc, 0)) {
        assert_null(out);
        compare_all(s);
        assert_rbus_ok(rbus_topic_open(s->bus, topic_names[t], &out));
    }
    assert_non_null(out);
    s->topics[t] = out;
    /* The same name gives the same handle. */
    rbus_topic *again = NULL;
    assert_rbus_ok(rbus_topic_open(s->bus, topic_names[t], &again));
    assert_ptr_equal(again, out);
    compare_topic(s, t);
}

static void step_subscribe(struct scen *s, int i, const char *label, const char *pattern,
                           rbus_overflow policy, uint32_t capacity, int64_t block_timeout_ns)
{
    struct msub *m = &s->subs[i];
    memset(m, 0, sizeof *m);
    m->label = label;
    m->pattern = pattern;
    m->policy = policy;
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = capacity;
    o.overflow = policy;
    o.block_timeout_ns = block_timeout_ns;
    o.name = (i % 2) ? label : NULL;
    rbus_sub *out = (rbus_sub *)&s->bus;
    long long inj = injected(s);
    int rc = rbus_subscribe(s->bus, pattern, &o, &out);
    if (failed_here(s, inj, "rbus_subscribe", rc, 0)) {
        assert_null(out);
        /* Routing untouched: every topic still lists what the model says. */
        compare_all(s);
        assert_rbus_ok(rbus_subscribe(s->bus, pattern, &o, &out));
    }
    assert_non_null(out);
    m->sub = out;
    m->exists = true;
    m->open = true;
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(out, &st));
    assert_true(st.capacity >= capacity);
    m->cap = st.capacity;
    assert_true(m->cap <= MAX_MSGS);
    compare_all(s);
}

/* The payload of message (topic, seq): byte i is (seq * 31 + topic * 101 +
 * i * 7) mod 256. With pattern[j] = j * 7 mod 256 that is pattern[off + i]
 * for off = (seq * 31 + topic * 101) * 183 mod 256 (183 * 7 = 1 mod 256),
 * so no payload is ever written or compared byte by byte (which costs a lot
 * under the sanitizers). */
static unsigned char pattern[40000 + 256];

static void pattern_init(void)
{
    for (size_t j = 0; j < sizeof pattern; j++)
        pattern[j] = (unsigned char)(j * 7u);
}

static const unsigned char *payload_of(uint32_t topic, uint64_t seq)
{
    return pattern + (size_t)(((seq * 31u + topic * 101u) * 183u) & 0xffu);
}

static size_t key_text(char *buf, size_t cap, uint32_t topic, int key)
{
    int n = snprintf(buf, cap, "key-%u-%d", (unsigned)topic, key);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

struct pub_job {
    rbus_topic *topic;
    const void *data;
    size_t len;
    const rbus_pub_opts *opts;
    rbus_pub_result *res;
    int rc;
};

static void *pub_job_main(void *arg)
{
    struct pub_job *j = arg;
    j->rc = rbus_publish_ex(j->topic, j->data, j->len, j->opts, j->res);
    return NULL;
}

/* A publish: from this thread, or from a new thread joined at once. */
static int do_publish(rbus_topic *t, const void *data, size_t len, const rbus_pub_opts *opts,
                      rbus_pub_result *res, bool plain, bool in_thread)
{
    if (in_thread) {
        struct pub_job j = {t, data, len, opts, res, 12345};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, pub_job_main, &j), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        return j.rc;
    }
    if (plain)
        return rbus_publish(t, data, len);
    return rbus_publish_ex(t, data, len, opts, res);
}

/*
 * One publish on topic t. key_mode: 0 none, 1 a new key, 2 a key already
 * accepted on t (a duplicate). Applies the outcome to the model and checks
 * the result against it.
 */
static void step_publish(struct scen *s, uint32_t t, int key_mode, bool in_thread)
{
    uint32_t n = s->npub++;
    uint32_t size = sizes[(n * 7u + t) % NSIZES];
    bool dup = key_mode == 2 && s->last_key[t] >= 0;
    int key = -1;
    if (dup)
        key = s->last_key[t];
    else if (key_mode != 0)
        key = s->next_key++;
    char kbuf[32];
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    if (key >= 0) {
        po.key = kbuf;
        po.key_len = key_text(kbuf, sizeof kbuf, t, key);
    }
    bool okey = n % 4 == 1;
    if (okey) {
        po.order_key = "ord";
        po.order_key_len = 3;
    }
    po.origin = n + 1;
    /* A full BLOCK subscription would make a plain publish wait for good
     * (nobody receives meanwhile): such publishes do not wait. */
    bool would_wait = false;
    for (int i = 0; i < NSUBS; i++) {
        struct msub *m = &s->subs[i];
        if (m->exists && m->open && m->policy == RBUS_BLOCK && sub_matches(m, t) &&
            depth_of(m) >= m->cap)
            would_wait = true;
    }
    if (would_wait)
        po.timeout_ns = -1;
    /* Plain rbus_publish now and then, when there are no options to pass. */
    bool plain = !in_thread && key < 0 && !okey && !would_wait && n % 6 == 2;
    if (plain)
        po.origin = 0;

    uint64_t seq = s->accepted[t] + 1;
    const unsigned char *data = payload_of(t, seq);
    rbus_pub_result res;
    memset(&res, 0x5a, sizeof res);
    int want = dup ? RBUS_DUPLICATE : 0;
    long long inj = injected(s);
    int rc = do_publish(s->topics[t], data, size, &po, &res, plain, in_thread);
    const char *what = in_thread ? "rbus_publish_ex (other thread)"
                                 : (plain ? "rbus_publish" : "rbus_publish_ex");
    if (failed_here(s, inj, what, rc, want)) {
        if (!plain) {
            assert_int_equal(res.matched, 0);
            assert_int_equal(res.queued, 0);
            assert_int_equal(res.dropped, 0);
            assert_int_equal(res.evicted, 0);
            assert_false(res.duplicate);
        }
        /* No sequence number, no key, nothing offered. */
        compare_all(s);
        memset(&res, 0x5a, sizeof res);
        rc = do_publish(s->topics[t], data, size, &po, &res, plain, in_thread);
        assert_rbus_rc(rc, want);
    }
    if (dup) {
        s->dups[t]++;
        if (!plain) {
            assert_true(res.duplicate);
            assert_int_equal(res.matched, 0);
            assert_int_equal(res.queued, 0);
        }
        return;
    }
    /* Accepted: the model offers it to every open matching subscription. */
    assert_true(s->nmsgs < MAX_MSGS);
    uint32_t idx = s->nmsgs++;
    s->msgs[idx] = (struct mmsg){t, seq, size, key, okey, po.origin};
    s->accepted[t] = seq;
    if (key >= 0)
        s->last_key[t] = key;
    uint32_t matched = 0, queued = 0, dropped = 0, evicted = 0;
    for (int i = 0; i < NSUBS; i++) {
        struct msub *m = &s->subs[i];
        if (!m->exists || !m->open || !sub_matches(m, t))
            continue;
        matched++;
        m->offered++;
        if (depth_of(m) < m->cap) {
            m->q[m->tail++] = idx;
            queued++;
            continue;
        }
        switch (m->policy) {
        case RBUS_DROP_NEWEST:
            m->dnew++;
            dropped++;
            s->n_dropped++;
            break;
        case RBUS_DROP_OLDEST:
            m->head++;
            m->dold++;
            evicted++;
            s->n_dropped++;
            m->q[m->tail++] = idx;
            queued++;
            break;
        case RBUS_BLOCK:
        default:
            assert_true(po.timeout_ns < 0);
            m->dtime++;
            dropped++;
            s->n_dropped++;
            break;
        }
    }
    if (!plain) {
        if (res.matched != matched || res.queued != queued || res.dropped != dropped ||
            res.evicted != evicted || res.duplicate) {
            print_error("k=%lld: publish #%u on %s: result matched %u queued %u dropped %u "
                        "evicted %u dup %d; model %u %u %u %u\n",
                        s->k, n, topic_names[t], res.matched, res.queued, res.dropped,
                        res.evicted, (int)res.duplicate, matched, queued, dropped, evicted);
            fail();
        }
    }
}

/* Checks that m is the model's message idx. */
static void check_msg(struct scen *s, const struct msub *sub, const rbus_msg *m, uint32_t idx)
{
    const struct mmsg *want = &s->msgs[idx];
    const char *tn = rbus_msg_topic(m);
    bool ok = tn != NULL && strcmp(tn, topic_names[want->topic]) == 0 &&
              rbus_msg_seq(m) == want->seq && rbus_msg_size(m) == want->size &&
              rbus_msg_origin(m) == want->origin;
    if (ok && want->size)
        ok = memcmp(rbus_msg_data(m), payload_of(want->topic, want->seq), want->size) == 0;
    size_t klen = 999;
    const void *k = rbus_msg_key(m, &klen);
    if (ok && want->key >= 0) {
        char kbuf[32];
        size_t n = key_text(kbuf, sizeof kbuf, want->topic, want->key);
        ok = k != NULL && klen == n && memcmp(k, kbuf, n) == 0;
    } else if (ok) {
        ok = k == NULL && klen == 0;
    }
    size_t olen = 999;
    const void *ok_ptr = rbus_msg_order_key(m, &olen);
    if (ok)
        ok = want->order_key ? (ok_ptr != NULL && olen == 3 && memcmp(ok_ptr, "ord", 3) == 0)
                             : (ok_ptr == NULL && olen == 0);
    if (!ok) {
        print_error("k=%lld (failed: %s): sub %s received %s seq %llu size %zu origin %u; "
                    "want %s seq %llu size %u origin %u (or its payload/keys differ)\n",
                    s->k, s->failed_call ? s->failed_call : "-", sub->label, tn ? tn : "(null)",
                    (unsigned long long)rbus_msg_seq(m), rbus_msg_size(m), rbus_msg_origin(m),
                    topic_names[want->topic], (unsigned long long)want->seq, want->size,
                    want->origin);
        fail();
    }
}

/* Takes up to `count` messages from sub i (batch or one by one), each the
 * model's next; holds on to some of them (released later). */
static void step_receive(struct scen *s, int i, unsigned count, bool batch)
{
    struct msub *m = &s->subs[i];
    unsigned got = 0;
    while (got < count) {
        rbus_msg *msgs[8];
        size_t max = batch ? (count - got < 8 ? count - got : 8) : 1;
        int rc;
        if (batch) {
            rc = rbus_recv_batch(m->sub, msgs, max, 0);
        } else {
            rc = rbus_recv(m->sub, &msgs[0], 0);
            if (rc == 0)
                rc = 1;
        }
        if (depth_of(m) == 0) {
            int want = m->open ? -EAGAIN : -ESHUTDOWN;
            if (rc != want) {
                print_error("k=%lld: receive on %s (model empty) returned %d (%s), want %d\n",
                            s->k, m->label, rc, rbus_strerror(rc), want);
                fail();
            }
            return;
        }
        uint32_t expect = depth_of(m) < max ? depth_of(m) : (uint32_t)max;
        if (rc != (int)expect) {
            print_error("k=%lld (failed: %s): receive on %s returned %d (%s), want %u\n", s->k,
                        s->failed_call ? s->failed_call : "-", m->label, rc, rbus_strerror(rc),
                        expect);
            fail();
        }
        for (int j = 0; j < rc; j++) {
            check_msg(s, m, msgs[j], m->q[m->head++]);
            m->received++;
            s->n_received++;
            if (s->nheld < 16 && (s->n_received % 17) == 0) {
                /* Keep it, with one extra reference dropped at once. */
                rbus_msg *again = rbus_msg_ref(msgs[j]);
                assert_ptr_equal(again, msgs[j]);
                rbus_msg_release(again);
                s->held[s->nheld++] = msgs[j];
            } else {
                rbus_msg_release(msgs[j]);
            }
        }
        got += (unsigned)rc;
    }
}

static void release_held(struct scen *s)
{
    for (unsigned i = 0; i < s->nheld; i++)
        rbus_msg_release(s->held[i]);
    s->nheld = 0;
}

/* rbus_sub_close: never allocates, never fails. */
static void step_sub_close(struct scen *s, int i)
{
    struct msub *m = &s->subs[i];
    long long calls = atomic_load(&s->fa->calls);
    assert_rbus_ok(rbus_sub_close(m->sub));
    assert_int_equal(atomic_load(&s->fa->calls), calls);
    m->open = false;
    compare_all(s);
}

/* rbus_unsubscribe with messages possibly still queued: the stats right
 * before it equal the model, and it never allocates. */
static void step_unsubscribe(struct scen *s, int i)
{
    struct msub *m = &s->subs[i];
    compare_sub(s, m);
    s->n_queued_at_unsub += depth_of(m);
    long long calls = atomic_load(&s->fa->calls);
    assert_rbus_ok(rbus_unsubscribe(m->sub));
    assert_int_equal(atomic_load(&s->fa->calls), calls);
    m->exists = false;
    m->sub = NULL;
    compare_all(s);
}

static void publish_round(struct scen *s, unsigned count, uint32_t ntopics)
{
    for (unsigned i = 0; i < count; i++) {
        uint32_t n = s->npub;
        uint32_t t = (n * 5u + n / 7u) % ntopics;
        int key_mode = n % 3 == 0 ? 1 : (n % 10 == 5 ? 2 : 0);
        bool in_thread = n % 53 == 11;
        step_publish(s, t, key_mode, in_thread);
    }
}

/*
 * The scenario. Returns false when rbus_create failed (nothing else ran).
 */
static bool run_scenario(struct scen *s)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &s->fa->hooks;
    /* 1024 keys: each shard's window (64 keys expected) stays far below the
     * size at which it grows, so the count of allocations is the same on
     * every run whatever the bus's random hash seed. */
    cfg.dedup_keys = 1024;
    rbus *bus = (rbus *)&cfg; /* junk: a failed create must reset it */
    long long inj = injected(s);
    int rc = rbus_create(&bus, &cfg);
    bool inj_create = injected(s) != inj;
    if (rc == -ENOMEM && inj_create) {
        s->failed_call = "rbus_create";
        assert_null(bus);
        return false;
    }
    if (rc != 0) {
        print_error("k=%lld: rbus_create returned %d (%s)\n", s->k, rc, rbus_strerror(rc));
        fail();
    }
    if (inj_create)
        s->absorbed_by = "rbus_create";
    assert_non_null(bus);
    s->bus = bus;

    for (uint32_t t = 0; t < 4; t++)
        step_open_topic(s, t);
    step_subscribe(s, 0, "all-block", "af.>", RBUS_BLOCK, 512, 0);
    step_subscribe(s, 1, "a-oldest", "af.a", RBUS_DROP_OLDEST, 8, 0);
    step_subscribe(s, 2, "one-newest", "af.*", RBUS_DROP_NEWEST, 16, 0);
    step_subscribe(s, 3, "bc-block", "*.b.c", RBUS_BLOCK, 32, 0);
    step_subscribe(s, 4, "overload", "ov.*", RBUS_DROP_NEWEST, 4, 0);
    step_subscribe(s, 6, "d-oldest", "*.d", RBUS_DROP_OLDEST, 2, 0);
    /* A topic opened after the subscriptions: its list (and spare) are
     * built by topic_open. */
    step_open_topic(s, 4);
    int fd = rbus_sub_fd(s->subs[0].sub);
    assert_true(fd >= 0);

    /* Phase 1: 5 topics, receiving now and then. */
    for (int round = 0; round < 6; round++) {
        publish_round(s, 40, 5);
        step_receive(s, 0, 15, round % 2 == 0);
        step_receive(s, 1, 3, false);
        step_receive(s, 2, 5, true);
        step_receive(s, 3, round % 3 == 0 ? 40 : 2, true);
        step_receive(s, 4, 1, false);
        step_receive(s, 6, 1, true);
    }
    compare_all(s);

    /* Unsubscribe one that has messages queued. */
    assert_true(depth_of(&s->subs[1]) > 0);
    step_unsubscribe(s, 1);
    /* A new subscription over existing topics (lists and spares rebuilt). */
    step_subscribe(s, 5, "a-block-timed", "af.a", RBUS_BLOCK, 64, 1000000);
    step_open_topic(s, 5);

    /* Phase 2: every topic, bigger sizes included. */
    for (int round = 0; round < 4; round++) {
        publish_round(s, 40, NTOPICS);
        step_receive(s, 0, 30, round % 2 == 1);
        step_receive(s, 5, 4, false);
        step_receive(s, 2, 3, false);
        step_receive(s, 3, 10, true);
    }
    /* Close one and drain it to -ESHUTDOWN. */
    step_sub_close(s, 2);
    step_receive(s, 2, MAX_MSGS, true);
    step_receive(s, 2, 1, false);
    /* A few more after the close: the closed one is not offered them. */
    publish_round(s, 12, NTOPICS);
    compare_all(s);

    /* Destroy with messages queued in several subscriptions. */
    for (int i = 0; i < NSUBS; i++)
        if (s->subs[i].exists)
            s->n_queued_at_destroy += depth_of(&s->subs[i]);
    release_held(s);
    rbus_destroy(s->bus);
    s->bus = NULL;
    return true;
}

static void scen_init(struct scen *s, struct rbus_test_alloc *fa, long long k)
{
    memset(s, 0, sizeof *s);
    s->fa = fa;
    s->k = k;
    for (int t = 0; t < NTOPICS; t++)
        s->last_key[t] = -1;
}

static void assert_all_returned(const struct scen *s)
{
    struct rbus_test_alloc *fa = s->fa;
    if (atomic_load(&fa->live_blocks) != 0 || atomic_load(&fa->live_bytes) != 0 ||
        atomic_load(&fa->bad_frees) != 0) {
        print_error("k=%lld (failed: %s): after rbus_destroy %lld blocks / %lld bytes live, "
                    "%lld bad frees\n",
                    s->k, s->failed_call ? s->failed_call : "-",
                    (long long)atomic_load(&fa->live_blocks),
                    (long long)atomic_load(&fa->live_bytes), (long long)atomic_load(&fa->bad_frees));
        fail();
    }
}

/* --------------------------------------------------------------- tests */

struct call_tally {
    const char *name;
    unsigned count;
};

static void tally(struct call_tally *t, unsigned *n, const char *name)
{
    for (unsigned i = 0; i < *n; i++) {
        if (strcmp(t[i].name, name) == 0) {
            t[i].count++;
            return;
        }
    }
    t[*n].name = name;
    t[*n].count = 1;
    (*n)++;
}

static void test_allocfail_every_allocation(void **state)
{
    (void)state;
    static struct rbus_test_alloc fa;
    static struct scen s;
    pattern_init();

    /* The scenario with no failure: how many allocations it makes. */
    rbus_test_alloc_init(&fa);
    scen_init(&s, &fa, 0);
    assert_true(run_scenario(&s));
    assert_all_returned(&s);
    const long long total = atomic_load(&fa.calls);
    uint64_t accepted = 0, dups = 0;
    for (int t = 0; t < NTOPICS; t++) {
        accepted += s.accepted[t];
        dups += s.dups[t];
    }
    printf("allocfail: the scenario makes %lld allocations; %u publishes: %llu accepted, "
           "%llu duplicates; %llu received, %llu dropped, %llu queued at unsubscribe, %llu "
           "queued at destroy\n",
           total, s.npub, (unsigned long long)accepted, (unsigned long long)dups,
           (unsigned long long)s.n_received, (unsigned long long)s.n_dropped,
           (unsigned long long)s.n_queued_at_unsub, (unsigned long long)s.n_queued_at_destroy);
    assert_true(total > 100);
    assert_true(s.n_queued_at_unsub > 0);
    assert_true(s.n_queued_at_destroy > 0);

    struct call_tally calls[16], absorbers[16];
    unsigned ncalls = 0, nabsorbers = 0;
    unsigned create_failed = 0, absorbed = 0;
    long long k;
    for (k = 1; k <= total; k++) {
        rbus_test_alloc_init(&fa);
        atomic_store(&fa.fail_at, k);
        scen_init(&s, &fa, k);
        bool ran = run_scenario(&s);
        /* The first k-1 allocations are the same as in the clean run, so
         * the k-th exists and failed. */
        if (atomic_load(&fa.injected) != 1) {
            print_error("k=%lld: %lld failures injected, want 1 (the scenario is not "
                        "deterministic?)\n",
                        k, (long long)atomic_load(&fa.injected));
            fail();
        }
        assert_all_returned(&s);
        if (!ran)
            create_failed++;
        if (s.failed_call) {
            tally(calls, &ncalls, s.failed_call);
        } else if (s.absorbed_by) {
            absorbed++;
            tally(absorbers, &nabsorbers, s.absorbed_by);
        } else {
            fail_msg("k=%lld: the failure was injected but no checked call saw it", k);
        }
    }
    printf("allocfail: %lld k values tried (every allocation of the scenario failed once): "
           "%u at rbus_create, %u absorbed by a call that still succeeded;",
           k - 1, create_failed, absorbed);
    printf(" -ENOMEM from:");
    for (unsigned i = 0; i < ncalls; i++)
        printf(" %s %u;", calls[i].name, calls[i].count);
    printf(" absorbed by:");
    for (unsigned i = 0; i < nabsorbers; i++)
        printf(" %s %u;", absorbers[i].name, absorbers[i].count);
    printf("\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allocfail_every_allocation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
