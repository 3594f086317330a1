/* Bad input for every public function; the bus keeps working afterwards. */
#include <limits.h>
#include <stdatomic.h>
#include <string.h>

#include "test_util.h"

struct fixture {
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    uint64_t next_seq;
};

static int fx_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_payload = 64;
    if (rbus_create(&f->bus, &cfg) != 0)
        return -1;
    if (rbus_topic_open(f->bus, "bad.t", &f->topic) != 0)
        return -1;
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 16;
    o.overflow = RBUS_DROP_NEWEST;
    if (rbus_subscribe(f->bus, "bad.>", &o, &f->sub) != 0)
        return -1;
    f->next_seq = 1;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fixture *f = *state;
    if (f) {
        rbus_destroy(f->bus);
        free(f);
    }
    return 0;
}

/* Publishes one message and receives it: nothing else was queued. */
static void assert_bus_works(struct fixture *f)
{
    char payload[32];
    int len = snprintf(payload, sizeof payload, "ok %llu", (unsigned long long)f->next_seq);
    rbus_pub_result r;
    assert_rbus_ok(rbus_publish_ex(f->topic, payload, (size_t)len, NULL, &r));
    assert_int_equal(r.matched, 1);
    assert_int_equal(r.queued, 1);
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(f->sub, &m, 0));
    assert_int_equal(rbus_msg_seq(m), f->next_seq);
    assert_int_equal(rbus_msg_size(m), (size_t)len);
    assert_memory_equal(rbus_msg_data(m), payload, (size_t)len);
    rbus_msg_release(m);
    assert_rbus_rc(rbus_recv(f->sub, &m, 0), -EAGAIN);
    f->next_seq++;
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    rbus_test_check_accounting(&st);
}

static void assert_result_zero(const rbus_pub_result *r)
{
    assert_int_equal(r->matched, 0);
    assert_int_equal(r->queued, 0);
    assert_int_equal(r->dropped, 0);
    assert_int_equal(r->evicted, 0);
    assert_false(r->duplicate);
}

/* ---- tests ---- */

static void version_and_strerror(void **state)
{
    (void)state;
    const char *v = rbus_version();
    assert_non_null(v);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", RBUS_VERSION_MAJOR, RBUS_VERSION_MINOR,
             RBUS_VERSION_PATCH);
    assert_string_equal(v, want);

    static const int known[] = {0, RBUS_DUPLICATE, -EINVAL, -ENOMEM, -EAGAIN, -ETIMEDOUT, -EMSGSIZE,
                                -ESHUTDOWN, -ENOSPC, -EBUSY, -EDEADLK, -EOVERFLOW, -ENOBUFS,
                                -EMFILE, -ENFILE,
                                /* the NATS bridge's */
                                -ECONNREFUSED, -ENOTSUP, -ENOENT, -EIO};
    static const int unknown[] = {INT_MIN, INT_MIN + 1, -99999, -4095, 2,
                                  12345,   INT_MAX,     EINVAL, ESHUTDOWN};
    const char *unk = rbus_strerror(-99999);
    assert_non_null(unk);
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = rbus_strerror(unknown[i]);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
    }
    const size_t nk = sizeof known / sizeof known[0];
    for (size_t i = 0; i < nk; i++) {
        const char *s = rbus_strerror(known[i]);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        /* named, not the unknown text, and each different */
        if (strcmp(s, unk) == 0) {
            print_error("rbus_strerror(%d) gives the unknown text '%s'\n", known[i], s);
            fail();
        }
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(s, rbus_strerror(known[j]));
    }
    /* a spread of values never gives NULL */
    for (long x = -70000; x <= 70000; x += 7)
        assert_non_null(rbus_strerror((int)x));
}

static void config_init_fills_defaults(void **state)
{
    (void)state;
    rbus_config cfg;
    memset(&cfg, 0xA5, sizeof cfg);
    rbus_config_init(&cfg);
    rbus_test_assert_config_defaults(&cfg);
    rbus_config_init(NULL);

    rbus_sub_opts o;
    memset(&o, 0xA5, sizeof o);
    rbus_sub_opts_init(&o);
    assert_int_equal(o.capacity, 0);
    assert_int_equal(o.overflow, RBUS_BLOCK);
    assert_true(o.block_timeout_ns <= 0);
    assert_null(o.name);
    rbus_sub_opts_init(NULL);

    /* a zeroed config is all defaults too */
    rbus_config zero;
    memset(&zero, 0, sizeof zero);
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &zero));
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, "x", &o, &s));
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_true(st.capacity >= 1024);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "x", &t));
    static char big[65537];
    assert_rbus_ok(rbus_publish(t, big, 65536));
    assert_rbus_rc(rbus_publish(t, big, 65537), -EMSGSIZE);
    rbus_destroy(bus);
}

static void create_rejects_bad_arguments(void **state)
{
    (void)state;
    static int dummy;
    rbus *bus;

    assert_rbus_rc(rbus_create(NULL, NULL), -EINVAL);

    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.default_capacity = RBUS_MAX_CAPACITY + 1;
    bus = (rbus *)(void *)&dummy;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    assert_null(bus);
    assert_rbus_rc(rbus_create(NULL, &cfg), -EINVAL);
    cfg.default_capacity = UINT32_MAX;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    assert_null(bus);

    rbus_config_init(&cfg);
    cfg.max_payload = RBUS_MAX_PAYLOAD_LIMIT + 1;
    bus = (rbus *)(void *)&dummy;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    assert_null(bus);

    rbus_config_init(&cfg);
    cfg.dedup_keys = RBUS_MAX_DEDUP_KEYS + 1;
    bus = (rbus *)(void *)&dummy;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    assert_null(bus);
    cfg.dedup_keys = RBUS_MAX_DEDUP_KEYS;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_destroy(bus);

    /* allocator with a NULL function */
    struct rbus_test_alloc cnt;
    rbus_test_alloc_init(&cnt);
    rbus_allocator a = {.alloc = cnt.hooks.alloc, .free = NULL, .arg = &cnt};
    rbus_config_init(&cfg);
    cfg.allocator = &a;
    bus = (rbus *)(void *)&dummy;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    assert_null(bus);
    a.alloc = NULL;
    a.free = cnt.hooks.free;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    a.free = NULL;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    assert_int_equal(atomic_load(&cnt.calls), 0);

    /* a good allocator with a bad field: nothing is allocated */
    a.alloc = cnt.hooks.alloc;
    a.free = cnt.hooks.free;
    cfg.max_payload = RBUS_MAX_PAYLOAD_LIMIT + 1;
    assert_rbus_rc(rbus_create(&bus, &cfg), -EINVAL);
    assert_int_equal(atomic_load(&cnt.calls), 0);

    /* the limits themselves are accepted */
    rbus_config_init(&cfg);
    cfg.default_capacity = RBUS_MAX_CAPACITY;
    cfg.max_payload = RBUS_MAX_PAYLOAD_LIMIT;
    cfg.dedup_keys = RBUS_DEDUP_OFF;
    cfg.allocator = &a;
    bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    assert_non_null(bus);
    assert_true(atomic_load(&cnt.calls) > 0);
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "alloc", &t));
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 4;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, "alloc", &o, &s));
    assert_rbus_ok(rbus_publish(t, "m", 1));
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    rbus_msg_release(m);
    rbus_destroy(bus);
    /* everything the bus allocated through the hooks went back */
    rbus_test_alloc_assert_all_returned(&cnt);
}

static void topic_open_rejects_bad_arguments(void **state)
{
    struct fixture *f = *state;
    rbus_topic *t = NULL;
    assert_rbus_rc(rbus_topic_open(NULL, "a", &t), -EINVAL);
    assert_rbus_rc(rbus_topic_open(f->bus, NULL, &t), -EINVAL);
    assert_rbus_rc(rbus_topic_open(f->bus, "a", NULL), -EINVAL);
    assert_rbus_rc(rbus_topic_open(NULL, NULL, NULL), -EINVAL);
    static const char *bad[] = {"", ".", "a.", ".a", "a..b", "a b", "a\x01", "a*b",
                                "a>b", "*", ">", "bad.*", "bad.>", "bad.*.x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_rbus_rc(rbus_topic_open(f->bus, bad[i], &t), -EINVAL);
    char longname[300];
    memset(longname, 'n', sizeof longname);
    longname[256] = '\0';
    assert_rbus_rc(rbus_topic_open(f->bus, longname, &t), -EINVAL);
    longname[255] = '\0';
    assert_rbus_ok(rbus_topic_open(f->bus, longname, &t));
    assert_non_null(t);

    assert_null(rbus_topic_name(NULL));
    assert_false(rbus_topic_valid(NULL));
    assert_false(rbus_pattern_valid(NULL));
    assert_false(rbus_pattern_match(NULL, "a"));
    assert_false(rbus_pattern_match("a", NULL));
    assert_bus_works(f);
}

static void subscribe_rejects_bad_arguments(void **state)
{
    struct fixture *f = *state;
    rbus_sub *s = NULL;
    assert_rbus_rc(rbus_subscribe(NULL, "a", NULL, &s), -EINVAL);
    assert_rbus_rc(rbus_subscribe(f->bus, NULL, NULL, &s), -EINVAL);
    assert_rbus_rc(rbus_subscribe(f->bus, "a", NULL, NULL), -EINVAL);
    static const char *bad[] = {"", "a.", "..", "a.>.b", ">.a", "a*", "*a", "a>", "a b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_rbus_rc(rbus_subscribe(f->bus, bad[i], NULL, &s), -EINVAL);

    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = RBUS_MAX_CAPACITY + 1;
    assert_rbus_rc(rbus_subscribe(f->bus, "bad.t", &o, &s), -EINVAL);
    o.capacity = UINT32_MAX;
    assert_rbus_rc(rbus_subscribe(f->bus, "bad.t", &o, &s), -EINVAL);

    rbus_sub_opts_init(&o);
    o.overflow = (rbus_overflow)3;
    assert_rbus_rc(rbus_subscribe(f->bus, "bad.t", &o, &s), -EINVAL);
    o.overflow = (rbus_overflow)-1;
    assert_rbus_rc(rbus_subscribe(f->bus, "bad.t", &o, &s), -EINVAL);
    o.overflow = (rbus_overflow)1000;
    assert_rbus_rc(rbus_subscribe(f->bus, "bad.t", &o, &s), -EINVAL);

    rbus_sub_opts_init(&o);
    o.spin_ns = RBUS_MAX_SPIN_NS + 1;
    assert_rbus_rc(rbus_subscribe(f->bus, "bad.t", &o, &s), -EINVAL);

    rbus_sub_opts_init(&o);
    char longname[300];
    memset(longname, 'l', sizeof longname);
    longname[256] = '\0';
    o.name = longname;
    assert_rbus_rc(rbus_subscribe(f->bus, "bad.t", &o, &s), -EINVAL);

    /* a bad pattern with bad opts is still -EINVAL */
    o.capacity = RBUS_MAX_CAPACITY + 1;
    assert_rbus_rc(rbus_subscribe(f->bus, "", &o, &s), -EINVAL);

    /* the same options within range are fine */
    rbus_sub_opts_init(&o);
    o.capacity = 8;
    o.overflow = RBUS_DROP_OLDEST;
    o.spin_ns = RBUS_MAX_SPIN_NS;
    longname[255] = '\0';
    o.name = longname;
    assert_rbus_ok(rbus_subscribe(f->bus, "other", &o, &s));
    assert_true(rbus_sub_id(s) >= 1);
    assert_rbus_ok(rbus_unsubscribe(s));
    o.spin_ns = -1;
    o.block_timeout_ns = -5;
    o.overflow = RBUS_BLOCK;
    o.name = NULL;
    assert_rbus_ok(rbus_subscribe(f->bus, "other", &o, &s));
    assert_rbus_ok(rbus_unsubscribe(s));

    assert_rbus_rc(rbus_sub_close(NULL), -EINVAL);
    assert_rbus_rc(rbus_unsubscribe(NULL), -EINVAL);
    assert_int_equal(rbus_sub_id(NULL), 0);
    assert_rbus_rc(rbus_sub_fd(NULL), -EINVAL);
    assert_bus_works(f);
}

static void publish_rejects_bad_arguments(void **state)
{
    struct fixture *f = *state;
    rbus_pub_result r;
    char buf[128];
    memset(buf, 'p', sizeof buf);

    assert_rbus_rc(rbus_publish(NULL, "a", 1), -EINVAL);
    assert_rbus_rc(rbus_publish(NULL, NULL, 0), -EINVAL);
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(NULL, "a", 1, NULL, &r), -EINVAL);
    assert_result_zero(&r);
    assert_rbus_rc(rbus_publish(f->topic, NULL, 1), -EINVAL);
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(f->topic, NULL, 5, NULL, &r), -EINVAL);
    assert_result_zero(&r);

    /* oversize: max_payload is 64 here */
    assert_rbus_rc(rbus_publish(f->topic, buf, 65), -EMSGSIZE);
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(f->topic, buf, sizeof buf, NULL, &r), -EMSGSIZE);
    assert_result_zero(&r);
    /* -EINVAL before -EMSGSIZE */
    assert_rbus_rc(rbus_publish(f->topic, NULL, 65), -EINVAL);
    assert_rbus_rc(rbus_publish(NULL, buf, 65), -EINVAL);

    rbus_pub_opts po;
    /* key NULL with a length */
    memset(&po, 0, sizeof po);
    po.key_len = 3;
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(f->topic, "a", 1, &po, &r), -EINVAL);
    assert_result_zero(&r);
    /* key with length 0 */
    po.key = "abc";
    po.key_len = 0;
    assert_rbus_rc(rbus_publish_ex(f->topic, "a", 1, &po, &r), -EINVAL);
    assert_result_zero(&r);
    /* key too long */
    char key[300];
    memset(key, 'k', sizeof key);
    po.key = key;
    po.key_len = 256;
    assert_rbus_rc(rbus_publish_ex(f->topic, "a", 1, &po, &r), -EINVAL);
    po.key_len = SIZE_MAX;
    assert_rbus_rc(rbus_publish_ex(f->topic, "a", 1, &po, &r), -EINVAL);
    /* bad key before oversize */
    po.key_len = 256;
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(f->topic, buf, sizeof buf, &po, &r), -EINVAL);
    assert_result_zero(&r);

    /* order key, likewise */
    memset(&po, 0, sizeof po);
    po.order_key_len = 1;
    assert_rbus_rc(rbus_publish_ex(f->topic, "a", 1, &po, &r), -EINVAL);
    po.order_key = "o";
    po.order_key_len = 0;
    assert_rbus_rc(rbus_publish_ex(f->topic, "a", 1, &po, &r), -EINVAL);
    po.order_key = key;
    po.order_key_len = 256;
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(f->topic, "a", 1, &po, &r), -EINVAL);
    assert_result_zero(&r);
    assert_rbus_rc(rbus_publish_ex(f->topic, buf, sizeof buf, &po, NULL), -EINVAL);

    /* none of that took a sequence number or queued anything */
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(f->topic, &ts));
    assert_int_equal(ts.published, f->next_seq - 1);
    assert_bus_works(f);

    /* the limits themselves are fine: 255-byte keys, 64-byte payload */
    memset(&po, 0, sizeof po);
    po.key = key;
    po.key_len = 255;
    po.order_key = key;
    po.order_key_len = 255;
    memset(&r, 0xFF, sizeof r);
    assert_rbus_ok(rbus_publish_ex(f->topic, buf, 64, &po, &r));
    assert_int_equal(r.matched, 1);
    assert_int_equal(r.queued, 1);
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(f->sub, &m, 0));
    size_t kl = 0;
    assert_memory_equal(rbus_msg_key(m, &kl), key, 255);
    assert_int_equal(kl, 255);
    assert_int_equal(rbus_msg_size(m), 64);
    rbus_msg_release(m);
    f->next_seq++;
    assert_bus_works(f);

    /* the key of a failed publish was not recorded: the same key is
     * accepted now (the 255-byte one above was, so use another) */
    memset(&po, 0, sizeof po);
    po.key = "fresh-key";
    po.key_len = 9;
    assert_rbus_rc(rbus_publish_ex(f->topic, buf, 65, &po, &r), -EMSGSIZE);
    assert_rbus_ok(rbus_publish_ex(f->topic, buf, 1, &po, &r));
    assert_false(r.duplicate);
    assert_int_equal(r.queued, 1);
    assert_rbus_ok(rbus_recv(f->sub, &m, 0));
    rbus_msg_release(m);
    f->next_seq++;
    assert_bus_works(f);
}

static void recv_rejects_bad_arguments(void **state)
{
    struct fixture *f = *state;
    rbus_msg *m = NULL;
    rbus_msg *b[4];
    /* a message is queued: none of the bad calls may take it */
    assert_rbus_ok(rbus_publish(f->topic, "q", 1));
    assert_rbus_rc(rbus_recv(NULL, &m, 0), -EINVAL);
    assert_rbus_rc(rbus_recv(NULL, &m, -1), -EINVAL);
    assert_rbus_rc(rbus_recv(f->sub, NULL, 0), -EINVAL);
    assert_rbus_rc(rbus_recv(f->sub, NULL, -1), -EINVAL);
    assert_rbus_rc(rbus_recv_batch(NULL, b, 4, 0), -EINVAL);
    assert_rbus_rc(rbus_recv_batch(f->sub, NULL, 4, 0), -EINVAL);
    assert_rbus_rc(rbus_recv_batch(f->sub, NULL, 4, -1), -EINVAL);
    assert_rbus_rc(rbus_recv_batch(f->sub, b, 0, 0), -EINVAL);
    assert_rbus_rc(rbus_recv_batch(f->sub, b, 0, -1), -EINVAL);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(f->sub, &st));
    assert_int_equal(st.depth, 1);
    assert_rbus_ok(rbus_recv(f->sub, &m, 0));
    assert_int_equal(rbus_msg_seq(m), f->next_seq);
    rbus_msg_release(m);
    f->next_seq++;
    /* with an empty queue: -EINVAL, not -EAGAIN, and no wait */
    assert_rbus_rc(rbus_recv(f->sub, NULL, -1), -EINVAL);
    assert_rbus_rc(rbus_recv_batch(f->sub, b, 0, -1), -EINVAL);
    assert_bus_works(f);
}

static void stats_reject_bad_arguments(void **state)
{
    struct fixture *f = *state;
    rbus_sub_stats ss;
    rbus_topic_stats ts;
    assert_rbus_rc(rbus_sub_stats_get(NULL, &ss), -EINVAL);
    assert_rbus_rc(rbus_sub_stats_get(f->sub, NULL), -EINVAL);
    assert_rbus_rc(rbus_topic_stats_get(NULL, &ts), -EINVAL);
    assert_rbus_rc(rbus_topic_stats_get(f->topic, NULL), -EINVAL);
    assert_bus_works(f);
}

static void accessors_with_null_message(void **state)
{
    struct fixture *f = *state;
    assert_null(rbus_msg_ref(NULL));
    rbus_msg_release(NULL);
    assert_null(rbus_msg_data(NULL));
    assert_int_equal(rbus_msg_size(NULL), 0);
    assert_null(rbus_msg_topic(NULL));
    assert_int_equal(rbus_msg_seq(NULL), 0);
    assert_int_equal(rbus_msg_time_ns(NULL), 0);
    rbus_test_assert_no_keys(NULL, 99);
    assert_int_equal(rbus_msg_origin(NULL), 0);
    assert_int_equal(rbus_msg_attempt(NULL), 0);
    assert_null(rbus_msg_origin_topic(NULL));
    assert_bus_works(f);
}

static void publish_to_wildcard_name_is_einval(void **state)
{
    struct fixture *f = *state;
    rbus_topic *t = NULL;
    assert_rbus_rc(rbus_topic_open(f->bus, "bad.*", &t), -EINVAL);
    assert_rbus_rc(rbus_topic_open(f->bus, "bad.>", &t), -EINVAL);
    assert_rbus_rc(rbus_topic_open(f->bus, ">", &t), -EINVAL);
    assert_bus_works(f);
}

static void bad_calls_after_close_keep_precedence(void **state)
{
    (void)state;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_payload = 8;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "p", &t));
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, "p", NULL, &s));
    rbus_close(bus);

    rbus_pub_result r;
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.key_len = 1;
    char buf[16] = {0};
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(t, buf, 9, &po, &r), -EINVAL);
    assert_result_zero(&r);
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(t, buf, 9, NULL, &r), -EMSGSIZE);
    assert_result_zero(&r);
    memset(&r, 0xFF, sizeof r);
    assert_rbus_rc(rbus_publish_ex(t, buf, 8, NULL, &r), -ESHUTDOWN);
    assert_result_zero(&r);
    rbus_topic *t2 = NULL;
    assert_rbus_rc(rbus_topic_open(bus, NULL, &t2), -EINVAL);
    assert_rbus_rc(rbus_topic_open(bus, "p", NULL), -EINVAL);
    rbus_sub *s2 = NULL;
    assert_rbus_rc(rbus_subscribe(bus, "p", NULL, NULL), -EINVAL);
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.overflow = (rbus_overflow)7;
    assert_rbus_rc(rbus_subscribe(bus, "p", &o, &s2), -EINVAL);
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(s, NULL, 0), -EINVAL);
    assert_rbus_rc(rbus_recv(s, &m, 0), -ESHUTDOWN);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(version_and_strerror),
        cmocka_unit_test(config_init_fills_defaults),
        cmocka_unit_test(create_rejects_bad_arguments),
        cmocka_unit_test_setup_teardown(topic_open_rejects_bad_arguments, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(subscribe_rejects_bad_arguments, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(publish_rejects_bad_arguments, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(recv_rejects_bad_arguments, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(stats_reject_bad_arguments, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(accessors_with_null_message, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(publish_to_wildcard_name_is_einval, fx_setup,
                                        fx_teardown),
        cmocka_unit_test(bad_calls_after_close_keep_precedence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
