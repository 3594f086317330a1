/*
 * Message headers: published with a message, read back by receivers in
 * order, kept on dispatcher retries and dead letters; the limits hold
 * exactly at their bounds, and a refused publish changes nothing.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "test_util.h"

static const char traceparent[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

static void publish_and_read(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "orders.created");
    rbus_sub *s = rbus_test_subscribe(bus, ">", 8, RBUS_BLOCK, 0);
    rbus_header h[3] = {
        {"traceparent", traceparent, sizeof traceparent - 1},
        {"tenant", "", 0},
        {"tenant", "acme", 4},
    };
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.headers = h;
    po.header_count = 3;
    po.key = "k";
    po.key_len = 1;
    assert_rbus_ok(rbus_publish_ex(t, "payload", 7, &po, NULL));
    assert_rbus_ok(rbus_publish(t, "plain", 5)); /* none */

    rbus_msg *m;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_size(m), 7);
    assert_memory_equal(rbus_msg_data(m), "payload", 7);
    size_t kl;
    assert_memory_equal(rbus_msg_key(m, &kl), "k", 1);
    assert_int_equal(rbus_msg_header_count(m), 3);
    for (size_t i = 0; i < 3; i++) {
        const char *name;
        const void *value;
        size_t len;
        assert_rbus_ok(rbus_msg_header_at(m, i, &name, &value, &len));
        assert_string_equal(name, h[i].name);
        assert_int_equal(len, h[i].value_len);
        assert_memory_equal(value, h[i].value, len);
        assert_int_equal(((const char *)value)[len], '\0'); /* a C string too */
    }
    const void *v;
    size_t len;
    assert_rbus_ok(rbus_msg_header(m, "traceparent", &v, &len));
    assert_string_equal(v, traceparent);
    assert_rbus_ok(rbus_msg_header(m, "tenant", &v, &len)); /* the first of two */
    assert_int_equal(len, 0);
    assert_rbus_rc(rbus_msg_header(m, "Tenant", &v, &len), -ENOENT); /* exact match */
    assert_rbus_rc(rbus_msg_header_at(m, 3, NULL, NULL, NULL), -ENOENT);
    assert_rbus_rc(rbus_msg_header(m, NULL, &v, &len), -EINVAL);
    assert_rbus_rc(rbus_msg_header(NULL, "x", &v, &len), -EINVAL);
    assert_rbus_rc(rbus_msg_header_at(NULL, 0, NULL, NULL, NULL), -EINVAL);
    assert_int_equal(rbus_msg_header_count(NULL), 0);
    rbus_msg_release(m);

    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_header_count(m), 0);
    assert_rbus_rc(rbus_msg_header(m, "traceparent", &v, &len), -ENOENT);
    rbus_msg_release(m);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* The limits, at their bounds: 16 headers of 4096 bytes in all pass and
 * read back; one byte or one header more is refused. */
static void limits(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "a.b");
    rbus_sub *s = rbus_test_subscribe(bus, ">", 8, RBUS_BLOCK, 0);
    static char names[RBUS_MAX_HEADERS + 1][RBUS_MAX_HEADER_NAME + 1];
    static char value[RBUS_MAX_HEADER_BYTES];
    memset(value, 'v', sizeof value);
    rbus_header h[RBUS_MAX_HEADERS + 1];
    /* 16 names of 64 bytes (1024) and values of 192 bytes (3072): 4096. */
    for (unsigned i = 0; i <= RBUS_MAX_HEADERS; i++) {
        memset(names[i], 'a' + (int)(i % 26), RBUS_MAX_HEADER_NAME);
        names[i][RBUS_MAX_HEADER_NAME] = '\0';
        h[i] = (rbus_header){names[i], value, 192};
    }
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.headers = h;
    po.header_count = RBUS_MAX_HEADERS;
    assert_rbus_ok(rbus_publish_ex(t, "x", 1, &po, NULL));
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_header_count(m), RBUS_MAX_HEADERS);
    const char *name;
    const void *v;
    size_t len;
    assert_rbus_ok(rbus_msg_header_at(m, RBUS_MAX_HEADERS - 1, &name, &v, &len));
    assert_string_equal(name, names[RBUS_MAX_HEADERS - 1]);
    assert_int_equal(len, 192);
    rbus_msg_release(m);
    h[0].value_len = 193; /* 4097 bytes */
    assert_rbus_rc(rbus_publish_ex(t, "x", 1, &po, NULL), -EMSGSIZE);
    h[0].value_len = 192;
    po.header_count = RBUS_MAX_HEADERS + 1;
    assert_rbus_rc(rbus_publish_ex(t, "x", 1, &po, NULL), -EINVAL);
    /* One header with the whole budget as its value. */
    rbus_header big = {"big", value, RBUS_MAX_HEADER_BYTES - 3};
    po.headers = &big;
    po.header_count = 1;
    assert_rbus_ok(rbus_publish_ex(t, "x", 1, &po, NULL));
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_rbus_ok(rbus_msg_header(m, "big", &v, &len));
    assert_int_equal(len, RBUS_MAX_HEADER_BYTES - 3);
    rbus_msg_release(m);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void bad_headers_change_nothing(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "a.b");
    rbus_sub *s = rbus_test_subscribe(bus, ">", 8, RBUS_BLOCK, 0);
    char long_name[RBUS_MAX_HEADER_NAME + 2];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    static char huge[RBUS_MAX_HEADER_BYTES + 1];
    memset(huge, 'v', sizeof huge);
    const struct {
        rbus_header h;
        int want;
    } cases[] = {
        {{NULL, "v", 1}, -EINVAL},
        {{"", "v", 1}, -EINVAL},
        {{"a:b", "v", 1}, -EINVAL},
        {{"a b", "v", 1}, -EINVAL},
        {{"caf\xc3\xa9", "v", 1}, -EINVAL},
        {{long_name, "v", 1}, -EINVAL},
        {{"ok", NULL, 3}, -EINVAL},
        {{"ok", "a\nb", 3}, -EINVAL},
        {{"ok", "a\rb", 3}, -EINVAL},
        {{"ok", "a\0b", 3}, -EINVAL},
        {{"ok", huge, sizeof huge}, -EMSGSIZE},
    };
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        po.headers = &cases[i].h;
        po.header_count = 1;
        rbus_pub_result res = {.matched = 99};
        assert_rbus_rc(rbus_publish_ex(t, "x", 1, &po, &res), cases[i].want);
        assert_int_equal(res.matched, 0);
        assert_true(strlen(rbus_last_error_detail()) > 0);
    }
    po.headers = NULL;
    po.header_count = 1;
    assert_rbus_rc(rbus_publish_ex(t, "x", 1, &po, NULL), -EINVAL);
    /* Nothing was accepted, offered or queued. */
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 0);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.offered, 0);
    assert_int_equal(st.depth, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* A handler that fails every time and notes each attempt's traceparent. */
struct seen {
    atomic_int attempts;
    atomic_int with_header;
};

static int failing_handler(const rbus_msg *m, void *arg)
{
    struct seen *s = arg;
    const void *v;
    size_t len;
    atomic_fetch_add(&s->attempts, 1);
    if (rbus_msg_header(m, "traceparent", &v, &len) == 0 && len == sizeof traceparent - 1 &&
        !memcmp(v, traceparent, len))
        atomic_fetch_add(&s->with_header, 1);
    return -1;
}

static void retries_and_dead_letters_keep_headers(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "orders.created");
    rbus_sub *work = rbus_test_subscribe(bus, "orders.*", 8, RBUS_BLOCK, 0);
    rbus_sub *dead = rbus_test_subscribe(bus, "dead.orders", 8, RBUS_BLOCK, 0);
    struct seen seen;
    atomic_init(&seen.attempts, 0);
    atomic_init(&seen.with_header, 0);
    rbus_dispatch_opts o;
    rbus_dispatch_opts_init(&o);
    o.max_attempts = 3;
    o.backoff_initial_ns = 1000000;
    o.backoff_max_ns = 2000000;
    o.dead_letter_topic = "dead.orders";
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, work, failing_handler, &seen, &o));
    rbus_header h[2] = {{"traceparent", traceparent, sizeof traceparent - 1},
                        {"tenant", "acme", 4}};
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.headers = h;
    po.header_count = 2;
    assert_rbus_ok(rbus_publish_ex(t, "p", 1, &po, NULL));
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(dead, &m, INT64_C(10000000000)));
    /* Every attempt saw it, the dead letter carries both, in order. */
    assert_int_equal(atomic_load(&seen.attempts), 3);
    assert_int_equal(atomic_load(&seen.with_header), 3);
    assert_int_equal(rbus_msg_attempt(m), 3);
    assert_int_equal(rbus_msg_header_count(m), 2);
    const char *name;
    const void *v;
    size_t len;
    assert_rbus_ok(rbus_msg_header_at(m, 1, &name, &v, &len));
    assert_string_equal(name, "tenant");
    assert_string_equal(v, "acme");
    rbus_msg_release(m);
    assert_rbus_ok(rbus_dispatch_stop(d));
    assert_rbus_ok(rbus_unsubscribe(work));
    assert_rbus_ok(rbus_unsubscribe(dead));
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(publish_and_read),
        cmocka_unit_test(limits),
        cmocka_unit_test(bad_headers_change_nothing),
        cmocka_unit_test(retries_and_dead_letters_keep_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
