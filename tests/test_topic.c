/* Topic names, subscription patterns, matching and routing. */
#include <string.h>

#include "test_util.h"

/* A string of `len` bytes made of tokens "aaaa.aaaa..." (valid as a name). */
static char *make_long_name(size_t len)
{
    char *s = malloc(len + 1);
    assert_non_null(s);
    for (size_t i = 0; i < len; i++)
        s[i] = (i % 5 == 4) ? '.' : 'a';
    /* never end with a dot */
    if (len > 0 && s[len - 1] == '.')
        s[len - 1] = 'b';
    s[len] = '\0';
    return s;
}

static void topic_valid_accepts_good_names(void **state)
{
    (void)state;
    static const char *good[] = {
        "a",
        "orders",
        "orders.created",
        "orders.eu.created",
        "A.B.C",
        "a-b_c:1",
        "x.y.z.1.2.3",
        "~!@#$%^&()+=,;'\"[]{}|\\/?<`",
        "0.0",
        "_",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (!rbus_topic_valid(good[i])) {
            print_error("topic should be valid: '%s'\n", good[i]);
            fail();
        }
        /* every valid topic name is also a valid pattern */
        if (!rbus_pattern_valid(good[i])) {
            print_error("topic name should be a valid pattern: '%s'\n", good[i]);
            fail();
        }
    }
}

static void topic_valid_rejects_bad_names(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",       ".",      "..",      ".a",     "a.",     "a..b",   "a.b.",
        ".a.b",   "a b",    " a",      "a ",     "a\tb",   "a\nb",   "a\x01",
        "\x7f",   "a.\x7f", "a\x80",   "\xc3\xa9", "*",     ">",      "a.*",
        "a.>",    "*.a",    ">.a",     "a*b",    "a>b",    "a*",     "*a",
        "a.b*",   "a.>b",   "a.b.*.c", "**",     ">>",
    };
    assert_false(rbus_topic_valid(NULL));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (rbus_topic_valid(bad[i])) {
            print_error("topic should be invalid: '%s' (#%zu)\n", bad[i], i);
            fail();
        }
    }
}

static void pattern_valid_accepts_wildcards(void **state)
{
    (void)state;
    static const char *good[] = {
        "*",     ">",       "a.*",   "a.>",     "*.a",     "*.*",   "*.>",
        "a.*.c", "a.*.*.d", "*.b.>", "a.b.c.>", "*.*.*.>", "orders.*.created",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (!rbus_pattern_valid(good[i])) {
            print_error("pattern should be valid: '%s'\n", good[i]);
            fail();
        }
        /* patterns with wildcards are not publishable names */
        if (rbus_topic_valid(good[i])) {
            print_error("wildcard pattern should not be a valid topic: '%s'\n", good[i]);
            fail();
        }
    }
}

static void pattern_valid_rejects_bad_patterns(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",     ".",     "a.",   ".a",    "a..b",  ">.a",   "a.>.b", ">.>",  "a*",
        "*a",   "a*b",   "a>b",  "a.b*",  "a.>b",  "a.b>",  ">>",    "**",   "*>",
        ">*",   "a.**",  "a b",  "a.* ",  "* .a",  "a\tb",  "a\x01", "a.\x7f", "\xff",
        ".>",   "*.",    ">.",
    };
    assert_false(rbus_pattern_valid(NULL));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (rbus_pattern_valid(bad[i])) {
            print_error("pattern should be invalid: '%s' (#%zu)\n", bad[i], i);
            fail();
        }
    }
}

static void names_and_patterns_limited_to_255_bytes(void **state)
{
    (void)state;
    char *n255 = make_long_name(255);
    char *n256 = make_long_name(256);
    assert_int_equal(strlen(n255), 255);
    assert_int_equal(strlen(n256), 256);
    assert_true(rbus_topic_valid(n255));
    assert_false(rbus_topic_valid(n256));
    assert_true(rbus_pattern_valid(n255));
    assert_false(rbus_pattern_valid(n256));

    /* a 255-byte pattern ending in ".>" is fine, 256 is not */
    char *p255 = make_long_name(255);
    p255[253] = '.';
    p255[254] = '>';
    assert_true(rbus_pattern_valid(p255));
    char *p256 = make_long_name(256);
    p256[254] = '.';
    p256[255] = '>';
    assert_false(rbus_pattern_valid(p256));

    /* one single 255-byte token, and 256 */
    char tok[257];
    memset(tok, 'z', sizeof tok);
    tok[255] = '\0';
    assert_true(rbus_topic_valid(tok));
    tok[255] = 'z';
    tok[256] = '\0';
    assert_false(rbus_topic_valid(tok));

    /* through the bus as well */
    rbus *bus = NULL;
    rbus_topic *t = NULL;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    assert_rbus_ok(rbus_topic_open(bus, n255, &t));
    assert_non_null(t);
    assert_string_equal(rbus_topic_name(t), n255);
    assert_rbus_rc(rbus_topic_open(bus, n256, &t), -EINVAL);
    assert_rbus_ok(rbus_subscribe(bus, p255, NULL, &s));
    assert_rbus_ok(rbus_unsubscribe(s));
    assert_rbus_rc(rbus_subscribe(bus, p256, NULL, &s), -EINVAL);
    assert_rbus_rc(rbus_subscribe(bus, n256, NULL, &s), -EINVAL);
    rbus_destroy(bus);

    free(n255);
    free(n256);
    free(p255);
    free(p256);
}

struct match_case {
    const char *pattern;
    const char *name;
    bool match;
};

static const struct match_case match_cases[] = {
    /* literal */
    {"a", "a", true},
    {"a.b", "a.b", true},
    {"a.b", "a.c", false},
    {"a", "a.b", false},
    {"a.b", "a", false},
    {"a", "ab", false},
    {"ab", "a", false},
    {"a.b", "a.bc", false},
    {"a.bc", "a.b", false},
    {"a.b", "ab", false},
    {"A", "a", false},
    /* '*' is exactly one token */
    {"*", "a", true},
    {"*", "abc", true},
    {"*", "a.b", false},
    {"a.*", "a.b", true},
    {"a.*", "a.xyz", true},
    {"a.*", "a", false},
    {"a.*", "a.b.c", false},
    {"a.*", "b.c", false},
    {"a.*", "ab.c", false},
    {"*.b", "a.b", true},
    {"*.b", "x.b", true},
    {"*.b", "b", false},
    {"*.b", "a.c", false},
    {"*.b", "a.a.b", false},
    {"a.*.c", "a.b.c", true},
    {"a.*.c", "a.x.c", true},
    {"a.*.c", "a.c", false},
    {"a.*.c", "a.b.d", false},
    {"a.*.c", "a.b.c.d", false},
    {"a.*.c", "a.b.b.c", false},
    {"a.*.c", "b.b.c", false},
    {"*.*", "a.b", true},
    {"*.*", "a", false},
    {"*.*", "a.b.c", false},
    /* '>' is one or more tokens, last only */
    {">", "a", true},
    {">", "a.b", true},
    {">", "a.b.c.d", true},
    {"a.>", "a.b", true},
    {"a.>", "a.b.c", true},
    {"a.>", "a", false},
    {"a.>", "b.c", false},
    {"a.>", "ab.c", false},
    {"a.>", "b.a.c", false},
    {"*.>", "a.b", true},
    {"*.>", "a.b.c", true},
    {"*.>", "a", false},
    {"a.*.>", "a.b.c", true},
    {"a.*.>", "a.b", false},
    {"a.b.>", "a.b.c.d.e", true},
    {"a.b.>", "a.c.d", false},
    /* invalid input never matches */
    {"a*", "a*", false},
    {"a.", "a.", false},
    {"", "", false},
    {"a.*", "a.*", false},
    {"a.>", "a.>", false},
    {"*", "*", false},
    {">", ">", false},
    {"a.>.b", "a.x.b", false},
    {"a", "a..", false},
};

static void pattern_match_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof match_cases / sizeof match_cases[0]; i++) {
        const struct match_case *c = &match_cases[i];
        bool got = rbus_pattern_match(c->pattern, c->name);
        if (got != c->match) {
            print_error("rbus_pattern_match('%s', '%s') = %d, want %d\n", c->pattern,
                        c->name, got, c->match);
            fail();
        }
    }
    assert_false(rbus_pattern_match(NULL, "a"));
    assert_false(rbus_pattern_match("a", NULL));
    assert_false(rbus_pattern_match(NULL, NULL));
}

/* Drains `sub` and returns a bitmask of which topics[] its messages came
 * from (by name); also checks that no name appears twice. */
static unsigned drain_topic_mask(rbus_sub *sub, const char *const *topics, size_t ntopics)
{
    unsigned mask = 0;
    rbus_msg *m = NULL;
    int rc;
    while ((rc = rbus_recv(sub, &m, 0)) == 0) {
        const char *name = rbus_msg_topic(m);
        assert_non_null(name);
        size_t i;
        for (i = 0; i < ntopics; i++)
            if (strcmp(topics[i], name) == 0)
                break;
        if (i == ntopics) {
            print_error("unexpected topic '%s'\n", name);
            rbus_msg_release(m);
            fail();
        }
        /* payload is the topic name too */
        assert_int_equal(rbus_msg_size(m), strlen(name));
        assert_memory_equal(rbus_msg_data(m), name, strlen(name));
        assert_int_equal(rbus_msg_seq(m), 1);
        if (mask & (1u << i)) {
            print_error("topic '%s' delivered twice\n", name);
            rbus_msg_release(m);
            fail();
        }
        mask |= 1u << i;
        rbus_msg_release(m);
    }
    assert_rbus_rc(rc, -EAGAIN);
    return mask;
}

static void routing_follows_patterns(void **state)
{
    (void)state;
    static const char *const patterns[] = {
        "a", "a.b", "*", "a.*", "a.>", ">", "*.c", "a.*.c", "*.*", "*.>", "b.>", "a.b.c",
    };
    static const char *const topics[] = {
        "a", "b", "a.b", "a.c", "b.c", "a.b.c", "a.x.c", "a.b.c.d", "b.c.d", "c",
    };
    enum { NP = sizeof patterns / sizeof patterns[0], NT = sizeof topics / sizeof topics[0] };
    /* expected[p] = bitmask over topics[], written out by hand */
    static const unsigned expected[NP] = {
        /* "a"     */ 1u << 0,
        /* "a.b"   */ 1u << 2,
        /* "*"     */ (1u << 0) | (1u << 1) | (1u << 9),
        /* "a.*"   */ (1u << 2) | (1u << 3),
        /* "a.>"   */ (1u << 2) | (1u << 3) | (1u << 5) | (1u << 6) | (1u << 7),
        /* ">"     */ (1u << NT) - 1,
        /* "*.c"   */ (1u << 3) | (1u << 4),
        /* "a.*.c" */ (1u << 5) | (1u << 6),
        /* "*.*"   */ (1u << 2) | (1u << 3) | (1u << 4),
        /* "*.>"   */ (1u << 2) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 7) |
            (1u << 8),
        /* "b.>"   */ (1u << 4) | (1u << 8),
        /* "a.b.c" */ 1u << 5,
    };

    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));

    /* half the topics opened before the subscriptions, half after */
    rbus_topic *th[NT];
    for (size_t i = 0; i < NT; i += 2)
        assert_rbus_ok(rbus_topic_open(bus, topics[i], &th[i]));

    rbus_sub *subs[NP];
    for (size_t p = 0; p < NP; p++) {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = 64;
        assert_rbus_ok(rbus_subscribe(bus, patterns[p], &o, &subs[p]));
    }
    for (size_t i = 1; i < NT; i += 2)
        assert_rbus_ok(rbus_topic_open(bus, topics[i], &th[i]));

    for (size_t t = 0; t < NT; t++) {
        uint32_t want_matched = 0;
        for (size_t p = 0; p < NP; p++) {
            /* the hand-written table agrees with rbus_pattern_match */
            bool m = (expected[p] >> t) & 1u;
            if (rbus_pattern_match(patterns[p], topics[t]) != m) {
                print_error("rbus_pattern_match('%s','%s') != %d\n", patterns[p], topics[t], m);
                fail();
            }
            want_matched += m;
        }
        rbus_topic_stats ts;
        assert_rbus_ok(rbus_topic_stats_get(th[t], &ts));
        assert_int_equal(ts.subscriptions, want_matched);

        rbus_pub_result r;
        assert_rbus_ok(rbus_publish_ex(th[t], topics[t], strlen(topics[t]), NULL, &r));
        assert_int_equal(r.matched, want_matched);
        assert_int_equal(r.queued, want_matched);
        assert_int_equal(r.dropped, 0);
        assert_int_equal(r.evicted, 0);
        assert_false(r.duplicate);
    }

    for (size_t p = 0; p < NP; p++) {
        unsigned got = drain_topic_mask(subs[p], topics, NT);
        if (got != expected[p]) {
            print_error("pattern '%s': got topic mask 0x%x, want 0x%x\n", patterns[p], got,
                        expected[p]);
            fail();
        }
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(subs[p], &st));
        assert_int_equal(st.offered, (uint64_t)__builtin_popcount(expected[p]));
        assert_int_equal(st.received, st.offered);
        assert_int_equal(st.depth, 0);
        rbus_test_check_accounting(&st);
    }
    for (size_t p = 0; p < NP; p++)
        assert_rbus_ok(rbus_unsubscribe(subs[p]));
    rbus_destroy(bus);
}

static void topic_open_returns_same_handle(void **state)
{
    (void)state;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));

    char name[32];
    strcpy(name, "orders.eu.created");
    rbus_topic *t1 = NULL, *t2 = NULL, *t3 = NULL, *t4 = NULL;
    assert_rbus_ok(rbus_topic_open(bus, name, &t1));
    assert_non_null(t1);
    /* the name is copied: changing our buffer changes nothing */
    name[0] = 'X';
    assert_string_equal(rbus_topic_name(t1), "orders.eu.created");
    assert_rbus_ok(rbus_topic_open(bus, "orders.eu.created", &t2));
    assert_ptr_equal(t1, t2);
    assert_rbus_ok(rbus_topic_open(bus, "orders.eu.deleted", &t3));
    assert_non_null(t3);
    assert_ptr_not_equal(t1, t3);
    assert_string_equal(rbus_topic_name(t3), "orders.eu.deleted");
    /* a prefix is a different topic */
    assert_rbus_ok(rbus_topic_open(bus, "orders.eu", &t4));
    assert_ptr_not_equal(t4, t1);
    assert_ptr_not_equal(t4, t3);
    assert_string_equal(rbus_topic_name(t4), "orders.eu");

    /* publishing through either handle is the same topic: one sequence */
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, "orders.eu.created", NULL, &s));
    assert_rbus_ok(rbus_publish(t1, "1", 1));
    assert_rbus_ok(rbus_publish(t2, "2", 1));
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_seq(m), 1);
    rbus_msg_release(m);
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_seq(m), 2);
    rbus_msg_release(m);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t2, &ts));
    assert_int_equal(ts.published, 2);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void topics_opened_before_and_after_subscribe_are_routed(void **state)
{
    (void)state;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));

    rbus_topic *before = NULL, *after = NULL, *other = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "svc.before", &before));
    rbus_sub *wild = NULL, *exact_after = NULL, *exact_before = NULL;
    assert_rbus_ok(rbus_subscribe(bus, "svc.*", NULL, &wild));
    assert_rbus_ok(rbus_subscribe(bus, "svc.after", NULL, &exact_after));
    assert_rbus_ok(rbus_subscribe(bus, "svc.before", NULL, &exact_before));
    assert_rbus_ok(rbus_topic_open(bus, "svc.after", &after));
    assert_rbus_ok(rbus_topic_open(bus, "other.after", &other));

    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(before, &ts));
    assert_int_equal(ts.subscriptions, 2);
    assert_rbus_ok(rbus_topic_stats_get(after, &ts));
    assert_int_equal(ts.subscriptions, 2);
    assert_rbus_ok(rbus_topic_stats_get(other, &ts));
    assert_int_equal(ts.subscriptions, 0);

    assert_rbus_ok(rbus_publish(before, "b", 1));
    assert_rbus_ok(rbus_publish(after, "a", 1));
    rbus_pub_result r;
    assert_rbus_ok(rbus_publish_ex(other, "o", 1, NULL, &r));
    assert_int_equal(r.matched, 0);
    assert_int_equal(r.queued, 0);

    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(wild, &m, 0));
    assert_string_equal(rbus_msg_topic(m), "svc.before");
    rbus_msg_release(m);
    assert_rbus_ok(rbus_recv(wild, &m, 0));
    assert_string_equal(rbus_msg_topic(m), "svc.after");
    rbus_msg_release(m);
    assert_rbus_rc(rbus_recv(wild, &m, 0), -EAGAIN);

    assert_rbus_ok(rbus_recv(exact_after, &m, 0));
    assert_string_equal(rbus_msg_topic(m), "svc.after");
    rbus_msg_release(m);
    assert_rbus_rc(rbus_recv(exact_after, &m, 0), -EAGAIN);

    assert_rbus_ok(rbus_recv(exact_before, &m, 0));
    assert_string_equal(rbus_msg_topic(m), "svc.before");
    rbus_msg_release(m);
    assert_rbus_rc(rbus_recv(exact_before, &m, 0), -EAGAIN);

    /* after unsubscribe the topic no longer counts or routes to it */
    assert_rbus_ok(rbus_unsubscribe(exact_before));
    assert_rbus_ok(rbus_topic_stats_get(before, &ts));
    assert_int_equal(ts.subscriptions, 1);
    assert_rbus_ok(rbus_publish_ex(before, "b", 1, NULL, &r));
    assert_int_equal(r.matched, 1);
    assert_rbus_ok(rbus_recv(wild, &m, 0));
    assert_int_equal(rbus_msg_seq(m), 2);
    rbus_msg_release(m);

    assert_rbus_ok(rbus_unsubscribe(wild));
    assert_rbus_ok(rbus_unsubscribe(exact_after));
    rbus_destroy(bus);
}

static void max_topics_gives_enospc(void **state)
{
    (void)state;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_topics = 3;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));

    rbus_topic *t[4] = {NULL, NULL, NULL, NULL};
    assert_rbus_ok(rbus_topic_open(bus, "t.1", &t[0]));
    assert_rbus_ok(rbus_topic_open(bus, "t.2", &t[1]));
    assert_rbus_ok(rbus_topic_open(bus, "t.3", &t[2]));
    assert_rbus_rc(rbus_topic_open(bus, "t.4", &t[3]), -ENOSPC);
    assert_rbus_rc(rbus_topic_open(bus, "t.5", &t[3]), -ENOSPC);
    /* an invalid name is -EINVAL first */
    assert_rbus_rc(rbus_topic_open(bus, "t.*", &t[3]), -EINVAL);
    assert_rbus_rc(rbus_topic_open(bus, "", &t[3]), -EINVAL);
    /* existing names still open (no new topic is created) */
    rbus_topic *again = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "t.2", &again));
    assert_ptr_equal(again, t[1]);
    /* subscriptions are not topics */
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, "t.9", NULL, &s));
    assert_rbus_rc(rbus_topic_open(bus, "t.9", &t[3]), -ENOSPC);
    /* the bus still works */
    assert_rbus_ok(rbus_publish(t[0], "x", 1));
    /* after close: -ESHUTDOWN before -ENOSPC */
    rbus_close(bus);
    assert_rbus_rc(rbus_topic_open(bus, "t.4", &t[3]), -ESHUTDOWN);
    assert_rbus_rc(rbus_topic_open(bus, "t.1", &t[3]), -ESHUTDOWN);
    assert_rbus_rc(rbus_topic_open(bus, "t.>", &t[3]), -EINVAL);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void published_name_must_not_have_wildcards(void **state)
{
    (void)state;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    static const char *wild[] = {"*", ">", "a.*", "a.>", "*.b", "a.*.c"};
    for (size_t i = 0; i < sizeof wild / sizeof wild[0]; i++) {
        rbus_topic *t = NULL;
        assert_rbus_rc(rbus_topic_open(bus, wild[i], &t), -EINVAL);
    }
    /* but they are fine as subscription patterns */
    for (size_t i = 0; i < sizeof wild / sizeof wild[0]; i++) {
        rbus_sub *s = NULL;
        assert_rbus_ok(rbus_subscribe(bus, wild[i], NULL, &s));
        assert_rbus_ok(rbus_unsubscribe(s));
    }
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(topic_valid_accepts_good_names),
        cmocka_unit_test(topic_valid_rejects_bad_names),
        cmocka_unit_test(pattern_valid_accepts_wildcards),
        cmocka_unit_test(pattern_valid_rejects_bad_patterns),
        cmocka_unit_test(names_and_patterns_limited_to_255_bytes),
        cmocka_unit_test(pattern_match_table),
        cmocka_unit_test(routing_follows_patterns),
        cmocka_unit_test(topic_open_returns_same_handle),
        cmocka_unit_test(topics_opened_before_and_after_subscribe_are_routed),
        cmocka_unit_test(max_topics_gives_enospc),
        cmocka_unit_test(published_name_must_not_have_wildcards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
