/*
 * test_dedup.c - idempotency-key deduplication, through the public API only.
 *
 * Contract (docs: "Publishing", "Keys"): a keyed publish is a duplicate iff
 * its key is among the last `dedup_keys` keys accepted on that topic
 * (forgotten oldest first) and, when dedup_window_ns > 0, was accepted less
 * than that long ago. A duplicate returns RBUS_DUPLICATE, queues nothing,
 * takes no sequence number, never refreshes the key and counts in the
 * topic's `duplicates`. Among concurrent publishes of one key exactly one is
 * accepted. Failures (-EINVAL, -EMSGSIZE, -ESHUTDOWN, -ENOMEM) record no key,
 * and they take precedence over RBUS_DUPLICATE. RBUS_DEDUP_OFF carries keys
 * and never deduplicates.
 *
 * Sizes scale with RBUS_STRESS_SCALE (test_util.h); every test prints the
 * sizes it used.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

/* ----------------------------------------------------------- helpers */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / INT64_C(1000000000));
    ts.tv_nsec = (long)(ns % INT64_C(1000000000));
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static rbus *new_bus(uint32_t dedup_keys, uint64_t window_ns, uint32_t max_payload,
                     const rbus_allocator *alloc)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    if (dedup_keys)
        cfg.dedup_keys = dedup_keys;
    cfg.dedup_window_ns = window_ns;
    if (max_payload)
        cfg.max_payload = max_payload;
    cfg.allocator = alloc;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    assert_non_null(bus);
    return bus;
}

static rbus_topic *open_topic(rbus *bus, const char *name)
{
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open(bus, name, &t));
    assert_non_null(t);
    return t;
}

static rbus_sub *new_sub(rbus *bus, const char *pattern, uint32_t capacity, rbus_overflow ov)
{
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = capacity;
    o.overflow = ov;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, pattern, &o, &s));
    assert_non_null(s);
    return s;
}

/* Keyed publish; the result struct is filled with junk first so that the
 * library must really write every field. */
static int pub_key(rbus_topic *t, const void *key, size_t klen, const void *data, size_t len,
                   rbus_pub_result *res)
{
    rbus_pub_opts o;
    memset(&o, 0, sizeof o);
    o.key = key;
    o.key_len = klen;
    res->matched = 77;
    res->queued = 77;
    res->dropped = 77;
    res->evicted = 77;
    res->duplicate = true;
    return rbus_publish_ex(t, data, len, &o, res);
}

static void assert_result_zero(const rbus_pub_result *r, bool duplicate)
{
    assert_int_equal(r->matched, 0);
    assert_int_equal(r->queued, 0);
    assert_int_equal(r->dropped, 0);
    assert_int_equal(r->evicted, 0);
    if (duplicate)
        assert_true(r->duplicate);
    else
        assert_false(r->duplicate);
}

/* Publishes `key` and asserts RBUS_DUPLICATE with a zeroed result. */
static void expect_dup(rbus_topic *t, const void *key, size_t klen)
{
    rbus_pub_result r;
    /* pre-fill duplicate = false so that a library that forgets to set it fails */
    rbus_pub_opts o;
    memset(&o, 0, sizeof o);
    o.key = key;
    o.key_len = klen;
    r.matched = r.queued = r.dropped = r.evicted = 55;
    r.duplicate = false;
    assert_rbus_rc(rbus_publish_ex(t, "dup", 3, &o, &r), RBUS_DUPLICATE);
    assert_result_zero(&r, true);
}

/* Publishes `key` and asserts it is accepted and reached `matched` subs. */
static void expect_accept(rbus_topic *t, const void *key, size_t klen, uint32_t matched)
{
    rbus_pub_result r;
    assert_rbus_ok(pub_key(t, key, klen, "acc", 3, &r));
    assert_false(r.duplicate);
    assert_int_equal(r.matched, matched);
    assert_int_equal(r.queued + r.dropped, r.matched);
}

static void expect_topic_stats(const rbus_topic *t, uint64_t published, uint64_t duplicates)
{
    rbus_topic_stats st;
    memset(&st, 0xab, sizeof st);
    assert_rbus_ok(rbus_topic_stats_get(t, &st));
    assert_int_equal(st.published, published);
    assert_int_equal(st.duplicates, duplicates);
}

static void expect_empty(rbus_sub *s)
{
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(s, &m, 0), -EAGAIN);
    assert_null(m);
}

/* Receives one message and checks its payload, key (bytes and length) and
 * sequence number. key NULL = must carry none. */
static void expect_msg(rbus_sub *s, const void *data, size_t len, const void *key, size_t klen,
                       uint64_t seq)
{
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_non_null(m);
    assert_int_equal(rbus_msg_size(m), len);
    if (len)
        assert_memory_equal(rbus_msg_data(m), data, len);
    size_t got_len = 12345;
    const void *got = rbus_msg_key(m, &got_len);
    if (key) {
        assert_non_null(got);
        assert_int_equal(got_len, klen);
        assert_memory_equal(got, key, klen);
    } else {
        assert_null(got);
        assert_int_equal(got_len, 0);
    }
    if (seq)
        assert_int_equal(rbus_msg_seq(m), seq);
    rbus_msg_release(m);
}

static size_t fmt_key(char *buf, size_t cap, const char *prefix, uint32_t i)
{
    int n = snprintf(buf, cap, "%s-%08u", prefix, (unsigned)i);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

/* ------------------------------------------- 1. duplicates in the window */

static void duplicate_in_window_is_suppressed_for_every_subscription(void **state)
{
    (void)state;
    rbus *bus = new_bus(0, 0, 0, NULL);
    rbus_topic *t = open_topic(bus, "orders.eu");
    rbus_sub *subs[3];
    subs[0] = new_sub(bus, "orders.eu", 16, RBUS_BLOCK);
    subs[1] = new_sub(bus, "orders.*", 16, RBUS_DROP_NEWEST);
    subs[2] = new_sub(bus, "orders.>", 16, RBUS_DROP_OLDEST);
    printf("dedup: 3 subscriptions, default dedup_keys, key \"idem-1\"\n");

    rbus_pub_result r;
    assert_rbus_ok(pub_key(t, "idem-1", 6, "first", 5, &r));
    assert_false(r.duplicate);
    assert_int_equal(r.matched, 3);
    assert_int_equal(r.queued, 3);
    assert_int_equal(r.dropped, 0);
    assert_int_equal(r.evicted, 0);
    expect_topic_stats(t, 1, 0);

    /* Same key, different payload: suppressed. */
    expect_dup(t, "idem-1", 6);
    expect_topic_stats(t, 1, 1);
    /* Again, through pub_key (junk says duplicate = true, counts 77). */
    assert_rbus_rc(pub_key(t, "idem-1", 6, "second", 6, &r), RBUS_DUPLICATE);
    assert_result_zero(&r, true);
    expect_topic_stats(t, 1, 2);
    /* A plain rbus_publish carries no key: never a duplicate. */
    assert_rbus_ok(rbus_publish(t, "plain", 5));
    expect_topic_stats(t, 2, 2);

    for (int i = 0; i < 3; i++) {
        rbus_sub_stats ss;
        assert_rbus_ok(rbus_sub_stats_get(subs[i], &ss));
        assert_int_equal(ss.offered, 2);
        assert_int_equal(ss.depth, 2);
        expect_msg(subs[i], "first", 5, "idem-1", 6, 1);
        expect_msg(subs[i], "plain", 5, NULL, 0, 2);
        expect_empty(subs[i]);
        assert_rbus_ok(rbus_sub_stats_get(subs[i], &ss));
        assert_int_equal(ss.offered, 2);
        assert_int_equal(ss.received, 2);
        rbus_test_check_accounting(&ss);
    }
    /* The duplicate took no sequence number: the next accepted one is 3. */
    assert_rbus_ok(pub_key(t, "idem-2", 6, "third", 5, &r));
    for (int i = 0; i < 3; i++) {
        expect_msg(subs[i], "third", 5, "idem-2", 6, 3);
        expect_empty(subs[i]);
    }
    expect_topic_stats(t, 3, 2);

    for (int i = 0; i < 3; i++)
        assert_rbus_ok(rbus_unsubscribe(subs[i]));
    rbus_destroy(bus);
}

static void keys_are_binary_safe_and_length_exact(void **state)
{
    (void)state;
    rbus *bus = new_bus(0, 0, 0, NULL);
    rbus_topic *t = open_topic(bus, "bin");
    rbus_sub *s = new_sub(bus, "bin", 64, RBUS_BLOCK);

    /* Keys differing only after an embedded NUL, or only in length. */
    static const unsigned char k_a0b[3] = {'a', 0, 'b'};
    static const unsigned char k_a0c[3] = {'a', 0, 'c'};
    static const unsigned char k_a[1] = {'a'};
    static const unsigned char k_a0[2] = {'a', 0};
    static const unsigned char k_a00[3] = {'a', 0, 0};
    static const unsigned char k_0[1] = {0};
    static const unsigned char k_00[2] = {0, 0};
    static const unsigned char k_ff[4] = {0xff, 0, 0x80, 0x7f};
    struct {
        const unsigned char *k;
        size_t len;
    } keys[] = {{k_a0b, 3}, {k_a0c, 3}, {k_a, 1},  {k_a0, 2},
                {k_a00, 3}, {k_0, 1},   {k_00, 2}, {k_ff, 4}};
    size_t nk = sizeof keys / sizeof keys[0];
    printf("dedup: %zu binary keys (embedded NULs)\n", nk);

    for (size_t i = 0; i < nk; i++)
        expect_accept(t, keys[i].k, keys[i].len, 1);
    expect_topic_stats(t, nk, 0);
    for (size_t i = 0; i < nk; i++)
        expect_dup(t, keys[i].k, keys[i].len);
    expect_topic_stats(t, nk, nk);
    for (size_t i = 0; i < nk; i++)
        expect_msg(s, "acc", 3, keys[i].k, keys[i].len, i + 1);
    expect_empty(s);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void key_lengths_1_and_255_are_accepted(void **state)
{
    (void)state;
    rbus *bus = new_bus(0, 0, 0, NULL);
    rbus_topic *t = open_topic(bus, "len");
    rbus_sub *s = new_sub(bus, "len", 16, RBUS_BLOCK);
    unsigned char big[RBUS_MAX_KEY_LEN];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (unsigned char)(i * 7 + 1);
    unsigned char big2[RBUS_MAX_KEY_LEN];
    memcpy(big2, big, sizeof big2);
    big2[RBUS_MAX_KEY_LEN - 1] ^= 0x01; /* differs only in the last byte */
    printf("dedup: key lengths 1 and %d\n", RBUS_MAX_KEY_LEN);

    expect_accept(t, "x", 1, 1);
    expect_accept(t, big, RBUS_MAX_KEY_LEN, 1);
    expect_accept(t, big2, RBUS_MAX_KEY_LEN, 1);
    expect_accept(t, big, RBUS_MAX_KEY_LEN - 1, 1); /* a prefix is another key */
    expect_dup(t, "x", 1);
    expect_dup(t, big, RBUS_MAX_KEY_LEN);
    expect_dup(t, big2, RBUS_MAX_KEY_LEN);
    expect_dup(t, big, RBUS_MAX_KEY_LEN - 1);
    expect_topic_stats(t, 4, 4);
    expect_msg(s, "acc", 3, "x", 1, 1);
    expect_msg(s, "acc", 3, big, RBUS_MAX_KEY_LEN, 2);
    expect_msg(s, "acc", 3, big2, RBUS_MAX_KEY_LEN, 3);
    expect_msg(s, "acc", 3, big, RBUS_MAX_KEY_LEN - 1, 4);
    expect_empty(s);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void same_key_on_another_topic_is_a_different_message(void **state)
{
    (void)state;
    rbus *bus = new_bus(0, 0, 0, NULL);
    rbus_topic *eu = open_topic(bus, "orders.eu");
    rbus_topic *us = open_topic(bus, "orders.us");
    rbus_sub *all = new_sub(bus, "orders.*", 16, RBUS_BLOCK);
    rbus_sub *only_us = new_sub(bus, "orders.us", 16, RBUS_BLOCK);
    printf("dedup: one key on 2 topics\n");

    expect_accept(eu, "k1", 2, 1);
    expect_accept(us, "k1", 2, 2);
    expect_dup(eu, "k1", 2);
    expect_dup(us, "k1", 2);
    expect_topic_stats(eu, 1, 1);
    expect_topic_stats(us, 1, 1);

    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(all, &m, 0));
    assert_string_equal(rbus_msg_topic(m), "orders.eu");
    rbus_msg_release(m);
    assert_rbus_ok(rbus_recv(all, &m, 0));
    assert_string_equal(rbus_msg_topic(m), "orders.us");
    size_t kl = 0;
    assert_memory_equal(rbus_msg_key(m, &kl), "k1", 2);
    assert_int_equal(kl, 2);
    rbus_msg_release(m);
    expect_empty(all);
    expect_msg(only_us, "acc", 3, "k1", 2, 1);
    expect_empty(only_us);

    assert_rbus_ok(rbus_unsubscribe(all));
    assert_rbus_ok(rbus_unsubscribe(only_us));
    rbus_destroy(bus);
}

/* ---------------------------------------------------- 2. the count bound */

/* dedup_keys = K. After A, a duplicate while fewer than K other keys were
 * accepted since, accepted again after exactly K others. */
static void check_count_bound(uint32_t k_cfg, uint32_t k)
{
    rbus *bus = new_bus(k_cfg, 0, 0, NULL);
    rbus_topic *t = open_topic(bus, "count");
    rbus_sub *s = new_sub(bus, "count", 2 * k + 16, RBUS_BLOCK);
    uint64_t published = 0, dups = 0;
    char key[32];
    size_t kl;
    printf("dedup: count bound dedup_keys=%u%s\n", (unsigned)k, k_cfg ? "" : " (default)");

    expect_accept(t, "A", 1, 1);
    published++;
    /* Still a duplicate after 0, 1, ..., K-1 other keys (a duplicate does
     * not refresh, so probing it changes nothing). */
    for (uint32_t i = 1; i <= k - 1; i++) {
        kl = fmt_key(key, sizeof key, "o", i);
        expect_accept(t, key, kl, 1);
        published++;
        if (i == k - 1 || i % 16 == 1 || i < 4) {
            expect_dup(t, "A", 1);
            dups++;
        }
    }
    if (k == 1) {
        expect_dup(t, "A", 1);
        dups++;
    }
    expect_topic_stats(t, published, dups);
    /* The K-th other key pushes A out: accepted again, not one key earlier. */
    kl = fmt_key(key, sizeof key, "o", k);
    expect_accept(t, key, kl, 1);
    published++;
    expect_accept(t, "A", 1, 1);
    published++;
    /* Remembered again. */
    expect_dup(t, "A", 1);
    dups++;
    /* Window now: o2..oK, A (K keys). o1 is forgotten, oK and o2 are not. */
    if (k >= 2) {
        kl = fmt_key(key, sizeof key, "o", k);
        expect_dup(t, key, kl);
        dups++;
        kl = fmt_key(key, sizeof key, "o", 2);
        expect_dup(t, key, kl);
        dups++;
    }
    kl = fmt_key(key, sizeof key, "o", 1);
    expect_accept(t, key, kl, 1); /* forgotten: accepted */
    published++;
    /* Window: o3..oK, A, o1 -> A still remembered (K >= 2). */
    if (k >= 2) {
        expect_dup(t, "A", 1);
        dups++;
    } else {
        expect_accept(t, "A", 1, 1);
        published++;
    }
    expect_topic_stats(t, published, dups);

    /* Every accepted publish was delivered once, in order, with its key. */
    rbus_sub_stats ss;
    assert_rbus_ok(rbus_sub_stats_get(s, &ss));
    assert_int_equal(ss.offered, published);
    assert_int_equal(ss.depth, published);
    expect_msg(s, "acc", 3, "A", 1, 1);
    for (uint32_t i = 1; i <= k; i++) {
        kl = fmt_key(key, sizeof key, "o", i);
        expect_msg(s, "acc", 3, key, kl, i + 1);
    }
    expect_msg(s, "acc", 3, "A", 1, (uint64_t)k + 2);
    kl = fmt_key(key, sizeof key, "o", 1);
    expect_msg(s, "acc", 3, key, kl, (uint64_t)k + 3);
    if (k == 1)
        expect_msg(s, "acc", 3, "A", 1, (uint64_t)k + 4);
    expect_empty(s);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void count_bound_is_exact_both_ways(void **state)
{
    (void)state;
    check_count_bound(1, 1);
    check_count_bound(2, 2);
    check_count_bound(8, 8);
    check_count_bound(17, 17);
    check_count_bound(100, 100);
    check_count_bound(0, 4096); /* the default */
}

/* Accept A, K-1 others, A as a duplicate, one more: A is accepted, so the
 * duplicate did not move A to the front. */
static void duplicate_never_refreshes_count_position(void **state)
{
    (void)state;
    static const uint32_t ks[] = {3, 8, 100};
    for (size_t n = 0; n < sizeof ks / sizeof ks[0]; n++) {
        uint32_t k = ks[n];
        printf("dedup: no refresh by count, dedup_keys=%u\n", (unsigned)k);
        rbus *bus = new_bus(k, 0, 0, NULL);
        rbus_topic *t = open_topic(bus, "refresh");
        char key[32];
        size_t kl;
        expect_accept(t, "A", 1, 0);
        for (uint32_t i = 1; i <= k - 1; i++) {
            kl = fmt_key(key, sizeof key, "r", i);
            expect_accept(t, key, kl, 0);
        }
        /* Many duplicates of A right at the edge. */
        for (int j = 0; j < 5; j++)
            expect_dup(t, "A", 1);
        kl = fmt_key(key, sizeof key, "r", k);
        expect_accept(t, key, kl, 0);
        expect_accept(t, "A", 1, 0);
        expect_dup(t, "A", 1);
        expect_topic_stats(t, (uint64_t)k + 2, 6);
        rbus_destroy(bus);
    }
}

/* Long time window, small count: the count still forgets keys. */
static void count_bound_applies_with_long_time_window(void **state)
{
    (void)state;
    const uint32_t k = 4;
    const uint64_t window = UINT64_C(10000000000); /* 10 s */
    printf("dedup: dedup_keys=%u with dedup_window_ns=%llu\n", (unsigned)k,
           (unsigned long long)window);
    rbus *bus = new_bus(k, window, 0, NULL);
    rbus_topic *t = open_topic(bus, "both");
    expect_accept(t, "A", 1, 0);
    expect_accept(t, "B", 1, 0);
    expect_accept(t, "C", 1, 0);
    expect_accept(t, "D", 1, 0);
    expect_dup(t, "A", 1);
    expect_dup(t, "D", 1);
    expect_accept(t, "E", 1, 0); /* A falls out by count, long before 10 s */
    expect_accept(t, "A", 1, 0);
    expect_dup(t, "A", 1);
    expect_accept(t, "B", 1, 0); /* remembered: C D E A -> B fell out */
    expect_dup(t, "D", 1);       /* remembered: D E A B */
    expect_accept(t, "C", 1, 0); /* -> E A B C */
    expect_accept(t, "D", 1, 0); /* -> A B C D */
    expect_dup(t, "A", 1);
    expect_topic_stats(t, 9, 5);
    rbus_destroy(bus);
}

/* ----------------------------------------------------- 3. time window */

/* Acceptance happens somewhere inside [t_s0, t_e0]; a later publish of the
 * key runs inside [t_s, t_e]. It must be a duplicate when even the latest
 * possible "now" is less than the window after the earliest possible
 * acceptance, and must be accepted when even the earliest "now" is at least
 * the window after the latest possible acceptance. */
struct accept_span {
    int64_t s, e;
};

static struct accept_span timed_accept(rbus_topic *t, const char *key)
{
    struct accept_span sp;
    rbus_pub_result r;
    sp.s = now_ns();
    assert_rbus_ok(pub_key(t, key, strlen(key), "t", 1, &r));
    sp.e = now_ns();
    return sp;
}

/* Returns the publish's rc after checking it against the rule. */
static int timed_probe(rbus_topic *t, const char *key, struct accept_span acc, int64_t window)
{
    rbus_pub_result r;
    int64_t s = now_ns();
    int rc = pub_key(t, key, strlen(key), "t", 1, &r);
    int64_t e = now_ns();
    if (e - acc.s < window) {
        assert_rbus_rc(rc, RBUS_DUPLICATE);
    } else if (s - acc.e >= window) {
        assert_rbus_ok(rc);
    } else {
        if (rc != 0 && rc != RBUS_DUPLICATE)
            assert_rbus_ok(rc);
    }
    if (rc == RBUS_DUPLICATE)
        assert_result_zero(&r, true);
    else
        assert_false(r.duplicate);
    return rc;
}

static void time_window_forgets_keys(void **state)
{
    (void)state;
    const int64_t window = INT64_C(50000000); /* 50 ms */
    printf("dedup: dedup_window_ns=%lld, sleep 250 ms\n", (long long)window);
    rbus *bus = new_bus(0, (uint64_t)window, 0, NULL);
    rbus_topic *t = open_topic(bus, "timed");
    rbus_sub *s = new_sub(bus, "timed", 16, RBUS_BLOCK);

    struct accept_span a = timed_accept(t, "A");
    int rc = timed_probe(t, "A", a, window);
    /* On a heavily loaded machine 50 ms may already have passed; the check
     * above enforces the rule either way. */
    printf("dedup: immediate repeat rc=%d (%s)\n", rc, rbus_strerror(rc));
    sleep_ns(5 * window);
    /* 250 ms after the last acceptance: forgotten by time (the count bound,
     * 4096, is far away). */
    struct accept_span a2 = timed_accept(t, "A");
    /* and remembered again */
    int rc2 = timed_probe(t, "A", a2, window);
    printf("dedup: repeat after re-acceptance rc=%d (%s)\n", rc2, rbus_strerror(rc2));

    /* The accepted copies carry times a window or more apart. */
    rbus_msg *first = NULL, *second = NULL, *extra = NULL;
    assert_rbus_ok(rbus_recv(s, &first, 0));
    assert_rbus_ok(rbus_recv(s, &second, 0));
    while (rbus_recv(s, &extra, 0) == 0) {
        /* Repeats the rule allowed on a slow machine: keep the last copy. */
        rbus_msg_release(second);
        second = extra;
    }
    expect_empty(s);
    assert_true(rbus_msg_time_ns(second) - rbus_msg_time_ns(first) >= (uint64_t)window);
    assert_true(rbus_msg_time_ns(first) >= (uint64_t)a.s);
    assert_true(rbus_msg_time_ns(first) <= (uint64_t)a.e);
    rbus_msg_release(first);
    rbus_msg_release(second);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* Keeps republishing a key as duplicates: if a duplicate refreshed its
 * time, it would never be accepted again. */
static void time_window_duplicate_does_not_refresh(void **state)
{
    (void)state;
    const int64_t window = INT64_C(100000000); /* 100 ms */
    const int64_t give_up = INT64_C(5000000000);
    rbus *bus = new_bus(0, (uint64_t)window, 0, NULL);
    rbus_topic *t = open_topic(bus, "timed2");
    struct accept_span a = timed_accept(t, "C");
    int dups = 0;
    for (;;) {
        int rc = timed_probe(t, "C", a, window);
        if (rc == 0)
            break;
        dups++;
        if (now_ns() - a.e > give_up) {
            print_error("key still a duplicate %lld ms after acceptance (%d duplicates): "
                        "duplicates refresh the key's time\n",
                        (long long)((now_ns() - a.e) / 1000000), dups);
            fail();
        }
        sleep_ns(window / 20);
    }
    int64_t took = now_ns() - a.s;
    printf("dedup: dedup_window_ns=%lld: %d duplicates, accepted again after %lld ms\n",
           (long long)window, dups, (long long)(took / 1000000));
    assert_true(took >= window);
    expect_topic_stats(t, 2, (uint64_t)dups);
    rbus_destroy(bus);
}

/* ------------------------------------------------------------- 4. race */

struct race_shared {
    rbus_topic *topic;
    pthread_barrier_t start;
    uint32_t nkeys;
};

struct race_worker {
    pthread_t th;
    struct race_shared *sh;
    uint32_t offset;
    uint64_t accepted;
    uint64_t dups;
    uint64_t other;
    int first_other_rc;
    bool result_bad;
};

static void *race_main(void *arg)
{
    struct race_worker *w = arg;
    struct race_shared *sh = w->sh;
    char key[32];
    pthread_barrier_wait(&sh->start);
    for (uint32_t j = 0; j < sh->nkeys; j++) {
        uint32_t idx = (w->offset + j) % sh->nkeys;
        int n = snprintf(key, sizeof key, "race-%08u", (unsigned)idx);
        rbus_pub_opts o;
        memset(&o, 0, sizeof o);
        o.key = key;
        o.key_len = (size_t)n;
        rbus_pub_result r;
        int rc = rbus_publish_ex(sh->topic, &idx, sizeof idx, &o, &r);
        if (rc == 0) {
            w->accepted++;
            if (r.duplicate || r.queued != r.matched)
                w->result_bad = true;
        } else if (rc == RBUS_DUPLICATE) {
            w->dups++;
            if (!r.duplicate || r.matched || r.queued || r.dropped || r.evicted)
                w->result_bad = true;
        } else {
            if (w->other++ == 0)
                w->first_other_rc = rc;
        }
    }
    return NULL;
}

/* Drains `s` and checks every key index arrived exactly once, with its key. */
static void race_check_sub(rbus_sub *s, uint32_t nkeys)
{
    unsigned char *seen = calloc(nkeys, 1);
    assert_non_null(seen);
    uint64_t got = 0, bad = 0, twice = 0;
    char key[32];
    rbus_msg *m = NULL;
    int rc;
    while ((rc = rbus_recv(s, &m, 0)) == 0) {
        uint32_t idx = UINT32_MAX;
        if (rbus_msg_size(m) == sizeof idx)
            memcpy(&idx, rbus_msg_data(m), sizeof idx);
        size_t kl = 0;
        const void *k = rbus_msg_key(m, &kl);
        if (idx >= nkeys) {
            bad++;
        } else {
            int n = snprintf(key, sizeof key, "race-%08u", (unsigned)idx);
            if (!k || kl != (size_t)n || memcmp(k, key, kl) != 0)
                bad++;
            if (seen[idx]++)
                twice++;
        }
        got++;
        rbus_msg_release(m);
    }
    assert_rbus_rc(rc, -EAGAIN);
    uint64_t missing = 0;
    for (uint32_t i = 0; i < nkeys; i++)
        if (!seen[i])
            missing++;
    free(seen);
    if (got != nkeys || bad || twice || missing) {
        print_error("subscription %llu: received %llu of %u, %llu malformed, %llu keys twice, "
                    "%llu missing\n",
                    (unsigned long long)rbus_sub_id(s), (unsigned long long)got,
                    (unsigned)nkeys, (unsigned long long)bad, (unsigned long long)twice,
                    (unsigned long long)missing);
        fail();
    }
    rbus_sub_stats ss;
    assert_rbus_ok(rbus_sub_stats_get(s, &ss));
    assert_int_equal(ss.offered, nkeys);
    assert_int_equal(ss.received, nkeys);
    rbus_test_check_accounting(&ss);
}

static void run_race(unsigned nthreads, bool staggered, const char *topic_name)
{
    uint32_t nkeys = (uint32_t)rbus_test_scaled(10000, 500);
    printf("dedup race: %u threads x %u keys (%s), dedup_keys=%u\n", nthreads,
           (unsigned)nkeys, staggered ? "staggered starts" : "same order", (unsigned)nkeys);
    /* Exactly nkeys keys, so none is forgotten by count. */
    rbus *bus = new_bus(nkeys, 0, 0, NULL);
    struct race_shared sh;
    sh.topic = open_topic(bus, topic_name);
    sh.nkeys = nkeys;
    rbus_sub *s1 = new_sub(bus, topic_name, nkeys, RBUS_BLOCK);
    rbus_sub *s2 = new_sub(bus, "race.>", nkeys, RBUS_BLOCK);
    assert_int_equal(pthread_barrier_init(&sh.start, NULL, nthreads), 0);

    struct race_worker *w = calloc(nthreads, sizeof *w);
    assert_non_null(w);
    for (unsigned i = 0; i < nthreads; i++) {
        w[i].sh = &sh;
        w[i].offset = staggered ? (uint32_t)((uint64_t)i * nkeys / nthreads) : 0;
        assert_int_equal(pthread_create(&w[i].th, NULL, race_main, &w[i]), 0);
    }
    uint64_t accepted = 0, dups = 0;
    bool bad = false;
    for (unsigned i = 0; i < nthreads; i++) {
        assert_int_equal(pthread_join(w[i].th, NULL), 0);
        accepted += w[i].accepted;
        dups += w[i].dups;
        if (w[i].other) {
            print_error("thread %u: %llu publishes failed, first rc %d (%s)\n", i,
                        (unsigned long long)w[i].other, w[i].first_other_rc,
                        rbus_strerror(w[i].first_other_rc));
            bad = true;
        }
        if (w[i].result_bad) {
            print_error("thread %u: an rbus_pub_result disagreed with its rc\n", i);
            bad = true;
        }
    }
    free(w);
    pthread_barrier_destroy(&sh.start);
    printf("dedup race: accepted %llu, duplicates %llu\n", (unsigned long long)accepted,
           (unsigned long long)dups);
    if (bad)
        fail();
    assert_int_equal(accepted, nkeys);
    assert_int_equal(dups, (uint64_t)(nthreads - 1) * nkeys);
    expect_topic_stats(sh.topic, nkeys, (uint64_t)(nthreads - 1) * nkeys);

    race_check_sub(s1, nkeys);
    race_check_sub(s2, nkeys);
    assert_rbus_ok(rbus_unsubscribe(s1));
    assert_rbus_ok(rbus_unsubscribe(s2));
    rbus_destroy(bus);
}

static void concurrent_same_keys_staggered_exactly_one_accepted(void **state)
{
    (void)state;
    run_race(4, true, "race.staggered");
}

static void concurrent_same_keys_same_order_exactly_one_accepted(void **state)
{
    (void)state;
    run_race(6, false, "race.lockstep");
}

/* ------------------------------------------------------------ 5. memory */

static void dedup_memory_does_not_grow_with_distinct_keys(void **state)
{
    (void)state;
    const uint32_t k = 4096;
    uint32_t nkeys = (uint32_t)rbus_test_scaled(1000000, 50000);
    const uint32_t warm = 3 * k;
    struct rbus_test_alloc ca;
    rbus_test_alloc_init(&ca);
    rbus *bus = new_bus(k, 0, 0, &ca.hooks);
    rbus_topic *t = open_topic(bus, "mem");
    rbus_sub *s = new_sub(bus, "mem", 64, RBUS_DROP_NEWEST);
    char key[32];
    uint64_t published = 0, dups = 0;
    long long warm_allocs = -1, warm_bytes = -1, warm_blocks = -1;
    long long mid_allocs = -1, mid_bytes = -1;

    for (uint32_t i = 0; i < nkeys; i++) {
        size_t kl = fmt_key(key, sizeof key, "mem", i);
        rbus_pub_opts o;
        memset(&o, 0, sizeof o);
        o.key = key;
        o.key_len = kl;
        rbus_pub_result r;
        int rc = rbus_publish_ex(t, &i, sizeof i, &o, &r);
        if (rc != 0) {
            print_error("key %u: rc %d (%s)\n", (unsigned)i, rc, rbus_strerror(rc));
            fail();
        }
        published++;
        /* Now and then a recent key again: still deduplicated. */
        if (i % 1000 == 999) {
            kl = fmt_key(key, sizeof key, "mem", i - 100);
            o.key_len = kl;
            assert_rbus_rc(rbus_publish_ex(t, &i, sizeof i, &o, &r), RBUS_DUPLICATE);
            dups++;
        }
        if (i + 1 == warm) {
            warm_allocs = atomic_load(&ca.allocs);
            warm_bytes = atomic_load(&ca.live_bytes);
            warm_blocks = atomic_load(&ca.live_blocks);
        }
        if (i + 1 == nkeys / 2) {
            mid_allocs = atomic_load(&ca.allocs);
            mid_bytes = atomic_load(&ca.live_bytes);
        }
    }
    long long end_allocs = atomic_load(&ca.allocs);
    long long end_bytes = atomic_load(&ca.live_bytes);
    long long end_blocks = atomic_load(&ca.live_blocks);
    printf("dedup memory: %u distinct keys, dedup_keys=%u; after %u keys: %lld allocs, "
           "%lld live blocks, %lld live bytes; at %u: %lld allocs, %lld live bytes; "
           "at the end: %lld allocs, %lld live blocks, %lld live bytes\n",
           (unsigned)nkeys, (unsigned)k, (unsigned)warm, warm_allocs, warm_blocks, warm_bytes,
           (unsigned)(nkeys / 2), mid_allocs, mid_bytes, end_allocs, end_blocks, end_bytes);
    assert_true(warm_allocs > 0);
    assert_int_equal(mid_allocs, warm_allocs);
    assert_int_equal(mid_bytes, warm_bytes);
    assert_int_equal(end_allocs, warm_allocs);
    assert_int_equal(end_bytes, warm_bytes);
    assert_int_equal(end_blocks, warm_blocks);
    expect_topic_stats(t, published, dups);
    /* The oldest keys are long forgotten: accepted again; the newest are not. */
    expect_accept(t, "mem-00000000", 12, 1);
    fmt_key(key, sizeof key, "mem", nkeys - 1);
    expect_dup(t, key, strlen(key));
    rbus_sub_stats ss;
    assert_rbus_ok(rbus_sub_stats_get(s, &ss));
    assert_int_equal(ss.offered, published + 1);
    assert_true(ss.capacity >= 64);
    assert_int_equal(ss.depth, ss.capacity);
    assert_int_equal(ss.dropped_newest, published + 1 - ss.capacity);
    rbus_test_check_accounting(&ss);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&ca);
}

/* ------------------------------------------- 6. failures record no key */

static void failed_publish_does_not_record_key(void **state)
{
    (void)state;
    const uint32_t maxp = 64;
    printf("dedup: max_payload=%u\n", (unsigned)maxp);
    rbus *bus = new_bus(0, 0, maxp, NULL);
    rbus_topic *t = open_topic(bus, "fail");
    rbus_sub *s = new_sub(bus, "fail", 16, RBUS_BLOCK);
    unsigned char big[65];
    memset(big, 'z', sizeof big);
    rbus_pub_result r;

    /* -EMSGSIZE with A: A is not recorded. */
    assert_rbus_rc(pub_key(t, "A", 1, big, maxp + 1, &r), -EMSGSIZE);
    assert_result_zero(&r, false);
    expect_topic_stats(t, 0, 0);
    expect_empty(s);
    assert_rbus_ok(pub_key(t, "A", 1, big, maxp, &r)); /* maxp itself is fine */
    assert_int_equal(r.queued, 1);
    expect_dup(t, "A", 1);
    /* -EMSGSIZE wins over RBUS_DUPLICATE, and counts no duplicate. */
    assert_rbus_rc(pub_key(t, "A", 1, big, maxp + 1, &r), -EMSGSIZE);
    assert_result_zero(&r, false);
    expect_topic_stats(t, 1, 1);

    /* -EINVAL (data NULL with a length) with D: D is not recorded. */
    assert_rbus_rc(pub_key(t, "D", 1, NULL, 5, &r), -EINVAL);
    assert_result_zero(&r, false);
    expect_accept(t, "D", 1, 1);
    /* -EINVAL (bad order key) with E: E not recorded; with A: not a dup. */
    rbus_pub_opts o;
    memset(&o, 0, sizeof o);
    o.key = "E";
    o.key_len = 1;
    o.order_key = NULL;
    o.order_key_len = 3;
    r.duplicate = true;
    assert_rbus_rc(rbus_publish_ex(t, "x", 1, &o, &r), -EINVAL);
    assert_result_zero(&r, false);
    o.key = "A";
    r.duplicate = true;
    assert_rbus_rc(rbus_publish_ex(t, "x", 1, &o, &r), -EINVAL);
    assert_result_zero(&r, false);
    expect_topic_stats(t, 2, 1);
    expect_accept(t, "E", 1, 1);
    expect_dup(t, "E", 1);
    expect_topic_stats(t, 3, 2);

    expect_msg(s, big, maxp, "A", 1, 1);
    expect_msg(s, "acc", 3, "D", 1, 2);
    expect_msg(s, "acc", 3, "E", 1, 3);
    expect_empty(s);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void closed_bus_says_shutdown_before_duplicate(void **state)
{
    (void)state;
    printf("dedup: keyed publishes after rbus_close\n");
    rbus *bus = new_bus(0, 0, 64, NULL);
    rbus_topic *t = open_topic(bus, "closed");
    rbus_sub *s = new_sub(bus, "closed", 16, RBUS_BLOCK);
    rbus_pub_result r;
    expect_accept(t, "B", 1, 1);
    expect_dup(t, "B", 1);
    expect_topic_stats(t, 1, 1);
    rbus_close(bus);

    /* A previously accepted key: -ESHUTDOWN, not RBUS_DUPLICATE. */
    assert_rbus_rc(pub_key(t, "B", 1, "x", 1, &r), -ESHUTDOWN);
    assert_result_zero(&r, false);
    assert_rbus_rc(pub_key(t, "C", 1, "x", 1, &r), -ESHUTDOWN);
    assert_result_zero(&r, false);
    /* -EMSGSIZE and -EINVAL still come first. */
    unsigned char big[65] = {0};
    assert_rbus_rc(pub_key(t, "B", 1, big, sizeof big, &r), -EMSGSIZE);
    assert_result_zero(&r, false);
    assert_rbus_rc(pub_key(t, "B", 0, "x", 1, &r), -EINVAL);
    assert_result_zero(&r, false);
    expect_topic_stats(t, 1, 1);

    expect_msg(s, "acc", 3, "B", 1, 1);
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(s, &m, 0), -ESHUTDOWN);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* The first keyed publish on a topic builds its dedup memory: make the
 * allocator fail after `budget` more allocations, for budget = 0, 1, ...,
 * until the publish succeeds. Every -ENOMEM leaves the key unrecorded. */
static void dedup_allocation_failure_records_no_key(void **state)
{
    (void)state;
    struct rbus_test_alloc ca;
    rbus_test_alloc_init(&ca);
    rbus *bus = new_bus(0, 0, 0, &ca.hooks);
    rbus_sub *s = new_sub(bus, "oom.*", 1024, RBUS_BLOCK);
    /* Warm-up: thread state, message cache and the size class of keyed
     * one-subscription publishes, on another topic. */
    rbus_topic *warm = open_topic(bus, "oom.warm");
    expect_accept(warm, "A", 1, 1);
    expect_msg(s, "acc", 3, "A", 1, 1);

    int failures = 0;
    long long budget;
    for (budget = 0; budget < 1000; budget++) {
        char name[32];
        snprintf(name, sizeof name, "oom.t%lld", budget);
        rbus_topic *t = open_topic(bus, name);
        long long failed_before = atomic_load(&ca.injected);
        long long allocs_before = atomic_load(&ca.allocs);
        long long bytes_before = atomic_load(&ca.live_bytes);
        rbus_pub_result r;
        atomic_store(&ca.budget, budget);
        int rc = pub_key(t, "A", 1, "acc", 3, &r);
        atomic_store(&ca.budget, -1);
        if (rc == -ENOMEM) {
            failures++;
            assert_true(atomic_load(&ca.injected) > failed_before);
            assert_result_zero(&r, false);
            expect_topic_stats(t, 0, 0);
            expect_empty(s);
            /* Not recorded: the retry is accepted, then A is remembered. */
            long long allocs_retry = atomic_load(&ca.allocs);
            expect_accept(t, "A", 1, 1);
            /* The retry built the dedup memory (the failed call kept none). */
            assert_true(atomic_load(&ca.allocs) > allocs_retry);
            expect_dup(t, "A", 1);
            expect_topic_stats(t, 1, 1);
            expect_msg(s, "acc", 3, "A", 1, 1);
            expect_empty(s);
            continue;
        }
        assert_rbus_ok(rc);
        assert_int_equal(atomic_load(&ca.injected), failed_before);
        /* The first keyed publish allocated (dedup memory is lazy). */
        assert_true(atomic_load(&ca.allocs) - allocs_before == budget);
        printf("dedup: the first keyed publish on a topic (default dedup_keys) took "
               "%lld bytes in %lld blocks\n",
               (long long)atomic_load(&ca.live_bytes) - bytes_before, budget);
        expect_dup(t, "A", 1);
        expect_topic_stats(t, 1, 1);
        expect_msg(s, "acc", 3, "A", 1, 1);
        expect_empty(s);
        break;
    }
    printf("dedup: first keyed publish needs %lld allocations; %d injected -ENOMEM runs\n",
           budget, failures);
    assert_true(budget < 1000);
    assert_true(failures >= 1);

    /* The message pool cannot grow (a payload size never used on this
     * thread), on a topic whose dedup memory exists: -ENOMEM, and the key
     * is not recorded either. */
    rbus_topic *t = open_topic(bus, "oom.pool");
    expect_accept(t, "first", 5, 1);
    expect_msg(s, "acc", 3, "first", 5, 1);
    enum { POOL_PAYLOAD = 3000 };
    unsigned char *payload = calloc(1, POOL_PAYLOAD);
    assert_non_null(payload);
    rbus_pub_result r;
    long long failed_before = atomic_load(&ca.injected);
    atomic_store(&ca.budget, 0);
    int rc = pub_key(t, "P", 1, payload, POOL_PAYLOAD, &r);
    atomic_store(&ca.budget, -1);
    printf("dedup: keyed %d-byte publish with the allocator failing: rc=%d (%s)\n",
           (int)POOL_PAYLOAD, rc, rbus_strerror(rc));
    assert_rbus_rc(rc, -ENOMEM);
    assert_true(atomic_load(&ca.injected) > failed_before);
    assert_result_zero(&r, false);
    expect_topic_stats(t, 1, 0);
    expect_empty(s);
    assert_rbus_ok(pub_key(t, "P", 1, payload, POOL_PAYLOAD, &r));
    assert_int_equal(r.queued, 1);
    expect_dup(t, "P", 1);
    expect_topic_stats(t, 2, 1);
    expect_msg(s, payload, POOL_PAYLOAD, "P", 1, 2);
    expect_empty(s);
    free(payload);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&ca);
}

/* ----------------------------------------------------- 7. RBUS_DEDUP_OFF */

static void dedup_off_carries_keys_without_deduplicating(void **state)
{
    (void)state;
    printf("dedup: RBUS_DEDUP_OFF\n");
    rbus *bus = new_bus(RBUS_DEDUP_OFF, 0, 0, NULL);
    rbus_topic *t = open_topic(bus, "off");
    rbus_sub *s1 = new_sub(bus, "off", 16, RBUS_BLOCK);
    rbus_sub *s2 = new_sub(bus, "*", 16, RBUS_BLOCK);
    static const unsigned char key[4] = {'k', 0, 'e', 'y'};
    rbus_pub_result r;
    assert_rbus_ok(pub_key(t, key, sizeof key, "one", 3, &r));
    assert_false(r.duplicate);
    assert_int_equal(r.queued, 2);
    assert_rbus_ok(pub_key(t, key, sizeof key, "two", 3, &r));
    assert_false(r.duplicate);
    assert_int_equal(r.queued, 2);
    /* Key validation still applies. */
    assert_rbus_rc(pub_key(t, key, 256, "bad", 3, &r), -EINVAL);
    assert_result_zero(&r, false);
    expect_topic_stats(t, 2, 0);
    expect_msg(s1, "one", 3, key, sizeof key, 1);
    expect_msg(s1, "two", 3, key, sizeof key, 2);
    expect_empty(s1);
    expect_msg(s2, "one", 3, key, sizeof key, 1);
    expect_msg(s2, "two", 3, key, sizeof key, 2);
    expect_empty(s2);
    assert_rbus_ok(rbus_unsubscribe(s1));
    assert_rbus_ok(rbus_unsubscribe(s2));
    rbus_destroy(bus);
}

/* ---------------------------------------------------------- 8. bad keys */

static void bad_keys_are_rejected_and_dedup_stays_intact(void **state)
{
    (void)state;
    printf("dedup: invalid keys (NULL/5, non-NULL/0, 256, SIZE_MAX)\n");
    rbus *bus = new_bus(0, 0, 0, NULL);
    rbus_topic *t = open_topic(bus, "bad");
    rbus_sub *s = new_sub(bus, "bad", 16, RBUS_BLOCK);
    char buf[300];
    memset(buf, 'q', sizeof buf);
    memcpy(buf, "prior", 5);
    rbus_pub_result r;

    expect_accept(t, "prior", 5, 1);
    expect_topic_stats(t, 1, 0);

    assert_rbus_rc(pub_key(t, NULL, 5, "x", 1, &r), -EINVAL);
    assert_result_zero(&r, false);
    assert_rbus_rc(pub_key(t, "fresh", 0, "x", 1, &r), -EINVAL);
    assert_result_zero(&r, false);
    assert_rbus_rc(pub_key(t, buf, 256, "x", 1, &r), -EINVAL);
    assert_result_zero(&r, false);
    assert_rbus_rc(pub_key(t, buf, SIZE_MAX, "x", 1, &r), -EINVAL);
    assert_result_zero(&r, false);
    /* An invalid length around an already accepted key: -EINVAL, not a dup. */
    assert_rbus_rc(pub_key(t, "prior", 0, "x", 1, &r), -EINVAL);
    assert_result_zero(&r, false);
    assert_rbus_rc(pub_key(t, buf, 256, "x", 1, &r), -EINVAL);
    assert_result_zero(&r, false);
    /* With result NULL too. */
    rbus_pub_opts o;
    memset(&o, 0, sizeof o);
    o.key = NULL;
    o.key_len = 1;
    assert_rbus_rc(rbus_publish_ex(t, "x", 1, &o, NULL), -EINVAL);

    expect_topic_stats(t, 1, 0);
    rbus_sub_stats ss;
    assert_rbus_ok(rbus_sub_stats_get(s, &ss));
    assert_int_equal(ss.offered, 1);
    assert_int_equal(ss.depth, 1);

    /* Dedup still works: the prior key is a duplicate, new ones accepted
     * (including the bytes that were offered with a bad length). */
    expect_dup(t, "prior", 5);
    expect_accept(t, "fresh", 5, 1);
    expect_accept(t, buf, 255, 1);
    expect_dup(t, buf, 255);
    expect_dup(t, "fresh", 5);
    expect_topic_stats(t, 3, 3);
    expect_msg(s, "acc", 3, "prior", 5, 1);
    expect_msg(s, "acc", 3, "fresh", 5, 2);
    expect_msg(s, "acc", 3, buf, 255, 3);
    expect_empty(s);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/*
 * Differential check of the window against a plain sequential model: a FIFO
 * of the last K accepted keys. Keys come from a universe a few times K, so
 * keys recur on both sides of the bound, are accepted anew after aging out,
 * and the window's slots are reused many times over. Any disagreement fails.
 */
static void window_matches_sequential_model(void **state)
{
    (void)state;
    static const uint32_t ks[] = {1, 2, 3, 7, 100, 333, 4096};
    const uint64_t publishes = rbus_test_scaled(200000, 20000);
    printf("# model: %llu keyed publishes per dedup_keys value\n", (unsigned long long)publishes);
    for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++) {
        const uint32_t k = ks[c], universe = 3 * k + 5;
        rbus_config cfg;
        rbus_config_init(&cfg);
        cfg.dedup_keys = k;
        rbus *bus;
        rbus_topic *t;
        assert_rbus_ok(rbus_create(&bus, &cfg));
        assert_rbus_ok(rbus_topic_open(bus, "model.keys", &t));
        uint32_t *fifo = calloc(k, sizeof *fifo);     /* last k accepted */
        uint32_t *live = calloc(universe, sizeof *live); /* times in fifo */
        assert_non_null(fifo);
        assert_non_null(live);
        uint64_t accepted = 0, dups = 0, x = 0x9e3779b97f4a7c15u + c;
        for (uint64_t i = 0; i < publishes; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
            uint32_t key = (uint32_t)(x % universe);
            rbus_pub_result r;
            int rc = pub_key(t, &key, sizeof key, "m", 1, &r);
            if (live[key]) {
                if (rc != RBUS_DUPLICATE)
                    fail_msg("dedup_keys %u, publish %llu: key %u is among the last %u accepted "
                             "but got %d",
                             k, (unsigned long long)i, key, k, rc);
                dups++;
                continue;
            }
            if (rc != 0)
                fail_msg("dedup_keys %u, publish %llu: key %u is not remembered but got %d", k,
                         (unsigned long long)i, key, rc);
            uint32_t *slot = &fifo[accepted % k];
            if (accepted >= k)
                live[*slot]--;
            *slot = key;
            live[key]++;
            accepted++;
        }
        expect_topic_stats(t, accepted, dups);
        printf("# model: dedup_keys %u: %llu accepted, %llu duplicates, agree\n", k,
               (unsigned long long)accepted, (unsigned long long)dups);
        free(fifo);
        free(live);
        rbus_destroy(bus);
    }
}

/* --------------------------------------------- 10. topics declared keyed */

/* A topic declared keyed has its window from rbus_topic_open_ex on: its
 * first keyed publish allocates nothing, where an undeclared topic's
 * builds the window; declaring an existing topic builds it once. */
static void declared_keyed_topic_has_its_window_at_open(void **state)
{
    (void)state;
    struct rbus_test_alloc ca;
    rbus_test_alloc_init(&ca);
    rbus *bus = new_bus(0, 0, 0, &ca.hooks);
    rbus_sub *s = new_sub(bus, "k.*", 1024, RBUS_DROP_NEWEST);
    /* Warm-up: thread state and message cache (the message recycled). */
    expect_accept(open_topic(bus, "k.warm"), "W", 1, 1);
    expect_msg(s, "acc", 3, "W", 1, 1);

    long long a0 = atomic_load(&ca.allocs), b0 = atomic_load(&ca.live_bytes);
    rbus_topic *plain = open_topic(bus, "k.plain");
    long long a1 = atomic_load(&ca.allocs), b1 = atomic_load(&ca.live_bytes);
    rbus_topic *declared = rbus_test_open_keyed(bus, "k.keyed");
    long long a2 = atomic_load(&ca.allocs), b2 = atomic_load(&ca.live_bytes);
    long long window = (b2 - b1) - (b1 - b0);
    printf("dedup: a topic declared keyed (default dedup_keys) takes %lld more bytes "
           "at open, in %lld more block(s)\n",
           window, (a2 - a1) - (a1 - a0));
    assert_int_equal((a2 - a1) - (a1 - a0), 1);
    assert_true(window >= 4096 * 128 && window <= 4096 * 132);

    expect_accept(declared, "A", 1, 1);
    assert_int_equal(atomic_load(&ca.allocs), a2); /* nothing more */
    expect_msg(s, "acc", 3, "A", 1, 1);
    expect_accept(plain, "A", 1, 1);
    expect_msg(s, "acc", 3, "A", 1, 1);
    assert_int_equal(atomic_load(&ca.allocs), a2 + 1); /* its window */
    assert_int_equal(atomic_load(&ca.live_bytes) - b2, window);

    /* Declaring an existing topic: the same handle, its window built once. */
    rbus_topic *later = open_topic(bus, "k.later");
    long long a3 = atomic_load(&ca.allocs);
    assert_ptr_equal(rbus_test_open_keyed(bus, "k.later"), later);
    assert_int_equal(atomic_load(&ca.allocs), a3 + 1);
    assert_ptr_equal(rbus_test_open_keyed(bus, "k.later"), later);
    assert_ptr_equal(open_topic(bus, "k.later"), later);
    assert_ptr_equal(rbus_test_open_keyed(bus, "k.keyed"), declared);
    assert_int_equal(atomic_load(&ca.allocs), a3 + 1);
    expect_accept(later, "A", 1, 1);
    assert_int_equal(atomic_load(&ca.allocs), a3 + 1);
    expect_msg(s, "acc", 3, "A", 1, 1);
    expect_dup(later, "A", 1);
    expect_dup(declared, "A", 1);
    expect_empty(s);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&ca);

    /* A bus without deduplication builds no window, declared or not. */
    rbus_test_alloc_init(&ca);
    bus = new_bus(RBUS_DEDUP_OFF, 0, 0, &ca.hooks);
    a0 = atomic_load(&ca.allocs);
    open_topic(bus, "k.plain");
    a1 = atomic_load(&ca.allocs);
    rbus_test_open_keyed(bus, "k.keyed");
    assert_int_equal(atomic_load(&ca.allocs) - a1, a1 - a0);
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&ca);
}

/* Bad input gets -EINVAL and *out NULL; an allocation failure at any step
 * of a keyed open creates no topic; a closed bus says -ESHUTDOWN. */
static void topic_open_ex_fails_cleanly(void **state)
{
    (void)state;
    rbus_topic_opts opts;
    rbus_topic_opts_init(&opts);
    opts.keyed = true;
    rbus_topic *t = (rbus_topic *)&opts;
    rbus *bus = new_bus(0, 0, 0, NULL);
    assert_rbus_rc(rbus_topic_open_ex(NULL, "k.a", &opts, &t), -EINVAL);
    assert_null(t);
    assert_rbus_rc(rbus_topic_open_ex(bus, "k.a", &opts, NULL), -EINVAL);
    t = (rbus_topic *)&opts;
    assert_rbus_rc(rbus_topic_open_ex(bus, "k.*", &opts, &t), -EINVAL);
    assert_null(t);
    t = (rbus_topic *)&opts;
    assert_rbus_rc(rbus_topic_open_ex(bus, NULL, &opts, &t), -EINVAL);
    assert_null(t);
    rbus_topic_opts_init(NULL); /* a no-op */
    /* NULL opts: as rbus_topic_open. */
    assert_rbus_ok(rbus_topic_open_ex(bus, "k.a", NULL, &t));
    assert_ptr_equal(t, open_topic(bus, "k.a"));
    rbus_close(bus);
    t = (rbus_topic *)&opts;
    assert_rbus_rc(rbus_topic_open_ex(bus, "k.b", &opts, &t), -ESHUTDOWN);
    assert_null(t);
    rbus_destroy(bus);

    /* One topic allowed: after a failed keyed open, another name still
     * opens, so the failed one was not created. */
    int failures = 0;
    long long budget;
    for (budget = 0; budget < 100; budget++) {
        struct rbus_test_alloc ca;
        rbus_test_alloc_init(&ca);
        rbus_config cfg;
        rbus_config_init(&cfg);
        cfg.max_topics = 1;
        cfg.allocator = &ca.hooks;
        assert_rbus_ok(rbus_create(&bus, &cfg));
        atomic_store(&ca.budget, budget);
        t = (rbus_topic *)&opts;
        int rc = rbus_topic_open_ex(bus, "k.x", &opts, &t);
        atomic_store(&ca.budget, -1);
        if (rc == 0) {
            assert_non_null(t);
            assert_rbus_rc(rbus_topic_open(bus, "k.y", &t), -ENOSPC);
            rbus_destroy(bus);
            rbus_test_alloc_assert_all_returned(&ca);
            break;
        }
        failures++;
        assert_rbus_rc(rc, -ENOMEM);
        assert_null(t);
        assert_rbus_ok(rbus_topic_open(bus, "k.y", &t));
        rbus_destroy(bus);
        rbus_test_alloc_assert_all_returned(&ca);
    }
    printf("dedup: a keyed topic_open_ex failed cleanly at each of its %d allocations\n", failures);
    assert_true(failures >= 2 && budget < 100);

    /* An existing topic whose window cannot be built: -ENOMEM, the topic
     * unchanged, and a later declaration builds it. */
    struct rbus_test_alloc ca;
    rbus_test_alloc_init(&ca);
    bus = new_bus(0, 0, 0, &ca.hooks);
    rbus_topic *plain = open_topic(bus, "k.plain");
    atomic_store(&ca.budget, 0);
    t = (rbus_topic *)&opts;
    assert_rbus_rc(rbus_topic_open_ex(bus, "k.plain", &opts, &t), -ENOMEM);
    atomic_store(&ca.budget, -1);
    assert_null(t);
    assert_ptr_equal(rbus_test_open_keyed(bus, "k.plain"), plain);
    expect_accept(plain, "A", 1, 0);
    expect_dup(plain, "A", 1);
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&ca);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(duplicate_in_window_is_suppressed_for_every_subscription),
        cmocka_unit_test(keys_are_binary_safe_and_length_exact),
        cmocka_unit_test(key_lengths_1_and_255_are_accepted),
        cmocka_unit_test(same_key_on_another_topic_is_a_different_message),
        cmocka_unit_test(count_bound_is_exact_both_ways),
        cmocka_unit_test(duplicate_never_refreshes_count_position),
        cmocka_unit_test(count_bound_applies_with_long_time_window),
        cmocka_unit_test(time_window_forgets_keys),
        cmocka_unit_test(time_window_duplicate_does_not_refresh),
        cmocka_unit_test(concurrent_same_keys_staggered_exactly_one_accepted),
        cmocka_unit_test(concurrent_same_keys_same_order_exactly_one_accepted),
        cmocka_unit_test(dedup_memory_does_not_grow_with_distinct_keys),
        cmocka_unit_test(failed_publish_does_not_record_key),
        cmocka_unit_test(closed_bus_says_shutdown_before_duplicate),
        cmocka_unit_test(dedup_allocation_failure_records_no_key),
        cmocka_unit_test(dedup_off_carries_keys_without_deduplicating),
        cmocka_unit_test(bad_keys_are_rejected_and_dedup_stays_intact),
        cmocka_unit_test(window_matches_sequential_model),
        cmocka_unit_test(declared_keyed_topic_has_its_window_at_open),
        cmocka_unit_test(topic_open_ex_fails_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
