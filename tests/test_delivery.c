/* Fan-out delivery, message contents and accessors, batches, results. */
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

static rbus_sub *subscribe_cap(rbus *bus, const char *pattern, uint32_t cap)
{
    rbus_sub *s = rbus_test_subscribe(bus, pattern, cap, RBUS_BLOCK, 0);
    assert_non_null(s);
    return s;
}

enum { FANOUT_N = 100 };

static void fanout_three_subs_receive_every_message_in_order(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "fan.out");

    rbus_sub *subs[3];
    subs[0] = subscribe_cap(bus, "fan.out", 128);
    subs[1] = subscribe_cap(bus, "fan.*", 128);
    subs[2] = subscribe_cap(bus, ">", 128);

    uint64_t t0 = rbus_test_now_ns();
    char buf[64];
    for (int i = 1; i <= FANOUT_N; i++) {
        char key[32], okey[32];
        int klen = snprintf(key, sizeof key, "key-%d", i);
        int olen = snprintf(okey, sizeof okey, "ord-%d", i % 7);
        int len = snprintf(buf, sizeof buf, "payload number %d", i);
        rbus_pub_opts po;
        memset(&po, 0, sizeof po);
        po.key = key;
        po.key_len = (size_t)klen;
        po.order_key = okey;
        po.order_key_len = (size_t)olen;
        po.origin = (uint32_t)(1000 + i);
        rbus_pub_result r;
        memset(&r, 0xA5, sizeof r);
        assert_rbus_ok(rbus_publish_ex(t, buf, (size_t)len, &po, &r));
        assert_int_equal(r.matched, 3);
        assert_int_equal(r.queued, 3);
        assert_int_equal(r.dropped, 0);
        assert_int_equal(r.evicted, 0);
        assert_false(r.duplicate);
        /* the payload was copied: scribble over our buffers */
        memset(buf, 'X', sizeof buf);
        memset(key, 'Y', sizeof key);
        memset(okey, 'Z', sizeof okey);
    }
    uint64_t t1 = rbus_test_now_ns();

    for (int s = 0; s < 3; s++) {
        uint64_t last_time = 0;
        for (int i = 1; i <= FANOUT_N; i++) {
            rbus_msg *m = NULL;
            assert_rbus_ok(rbus_recv(subs[s], &m, 0));
            assert_non_null(m);
            char want[64];
            int wlen = snprintf(want, sizeof want, "payload number %d", i);
            assert_int_equal(rbus_msg_seq(m), (uint64_t)i);
            assert_int_equal(rbus_msg_size(m), (size_t)wlen);
            assert_non_null(rbus_msg_data(m));
            assert_memory_equal(rbus_msg_data(m), want, (size_t)wlen);
            assert_string_equal(rbus_msg_topic(m), "fan.out");
            assert_int_equal(rbus_msg_attempt(m), 1);
            assert_int_equal(rbus_msg_origin(m), (uint32_t)(1000 + i));
            assert_null(rbus_msg_origin_topic(m));

            char wkey[32], wokey[32];
            int wk = snprintf(wkey, sizeof wkey, "key-%d", i);
            int wo = snprintf(wokey, sizeof wokey, "ord-%d", i % 7);
            size_t klen = 999;
            const void *k = rbus_msg_key(m, &klen);
            assert_non_null(k);
            assert_int_equal(klen, (size_t)wk);
            assert_memory_equal(k, wkey, (size_t)wk);
            assert_ptr_equal(rbus_msg_key(m, NULL), k);
            size_t olen = 999;
            const void *ok = rbus_msg_order_key(m, &olen);
            assert_non_null(ok);
            assert_int_equal(olen, (size_t)wo);
            assert_memory_equal(ok, wokey, (size_t)wo);
            assert_ptr_equal(rbus_msg_order_key(m, NULL), ok);

            uint64_t tm = rbus_msg_time_ns(m);
            assert_true(tm >= t0);
            assert_true(tm <= t1);
            assert_true(tm >= last_time);
            last_time = tm;
            rbus_msg_release(m);
        }
        rbus_msg *m = NULL;
        assert_rbus_rc(rbus_recv(subs[s], &m, 0), -EAGAIN);

        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(subs[s], &st));
        assert_int_equal(st.offered, FANOUT_N);
        assert_int_equal(st.received, FANOUT_N);
        assert_int_equal(st.depth, 0);
        assert_int_equal(st.high_water, FANOUT_N);
        assert_int_equal(st.dropped_newest + st.dropped_oldest + st.dropped_timeout +
                             st.dropped_closed,
                         0);
        assert_int_equal(st.publisher_waits, 0);
        rbus_test_check_accounting(&st);
    }

    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, FANOUT_N);
    assert_int_equal(ts.duplicates, 0);
    assert_int_equal(ts.subscriptions, 3);

    for (int s = 0; s < 3; s++)
        assert_rbus_ok(rbus_unsubscribe(subs[s]));
    rbus_destroy(bus);
}

static void message_without_keys_has_null_keys(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "plain");
    rbus_sub *s = subscribe_cap(bus, "plain", 8);

    assert_rbus_ok(rbus_publish(t, "hello", 5));
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    assert_rbus_ok(rbus_publish_ex(t, "world", 5, &po, NULL));
    assert_rbus_ok(rbus_publish_ex(t, "again", 5, NULL, NULL));

    static const char *want[] = {"hello", "world", "again"};
    for (int i = 0; i < 3; i++) {
        rbus_msg *m = NULL;
        assert_rbus_ok(rbus_recv(s, &m, 0));
        assert_int_equal(rbus_msg_seq(m), (uint64_t)(i + 1));
        assert_int_equal(rbus_msg_size(m), 5);
        assert_memory_equal(rbus_msg_data(m), want[i], 5);
        rbus_test_assert_no_keys(m, 77);
        assert_int_equal(rbus_msg_origin(m), 0);
        assert_int_equal(rbus_msg_attempt(m), 1);
        rbus_msg_release(m);
    }
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void zero_size_message_has_non_null_data(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "empty");
    rbus_sub *s = subscribe_cap(bus, "empty", 8);

    assert_rbus_ok(rbus_publish(t, NULL, 0));
    assert_rbus_ok(rbus_publish(t, "ignored", 0));
    rbus_pub_result r;
    assert_rbus_ok(rbus_publish_ex(t, NULL, 0, NULL, &r));
    assert_int_equal(r.matched, 1);
    assert_int_equal(r.queued, 1);

    for (int i = 1; i <= 3; i++) {
        rbus_msg *m = NULL;
        assert_rbus_ok(rbus_recv(s, &m, 0));
        assert_int_equal(rbus_msg_seq(m), (uint64_t)i);
        assert_int_equal(rbus_msg_size(m), 0);
        assert_non_null(rbus_msg_data(m));
        assert_string_equal(rbus_msg_topic(m), "empty");
        rbus_msg_release(m);
    }
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void large_payload_is_copied_exactly(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "big");
    rbus_sub *s = subscribe_cap(bus, "big", 4);

    size_t n = 65536; /* the default max_payload */
    unsigned char *buf = malloc(n);
    assert_non_null(buf);
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)(i * 31u + 7u);
    assert_rbus_ok(rbus_publish(t, buf, n));
    unsigned char *copy = malloc(n);
    assert_non_null(copy);
    memcpy(copy, buf, n);
    memset(buf, 0, n);

    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_size(m), n);
    assert_memory_equal(rbus_msg_data(m), copy, n);
    rbus_msg_release(m);
    free(buf);
    free(copy);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void msg_ref_keeps_message_alive_after_release(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "ref");
    rbus_sub *a = subscribe_cap(bus, "ref", 4);
    rbus_sub *b = subscribe_cap(bus, "ref", 4);

    assert_rbus_ok(rbus_publish(t, "keep me", 7));
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(a, &m, 0));
    rbus_msg *extra = rbus_msg_ref(m);
    assert_ptr_equal(extra, m);
    rbus_msg *extra2 = rbus_msg_ref(m);
    assert_ptr_equal(extra2, m);
    rbus_msg_release(m);

    /* the other subscription's copy comes and goes */
    rbus_msg *mb = NULL;
    assert_rbus_ok(rbus_recv(b, &mb, 0));
    assert_memory_equal(rbus_msg_data(mb), "keep me", 7);
    rbus_msg_release(mb);

    /* churn through more messages so a freed message would be reused */
    for (int i = 0; i < 64; i++) {
        char p[16];
        int len = snprintf(p, sizeof p, "other %d", i);
        assert_rbus_ok(rbus_publish(t, p, (size_t)len));
        rbus_msg *x = NULL;
        assert_rbus_ok(rbus_recv(a, &x, 0));
        rbus_msg_release(x);
        assert_rbus_ok(rbus_recv(b, &x, 0));
        rbus_msg_release(x);
    }
    assert_int_equal(rbus_msg_size(extra), 7);
    assert_memory_equal(rbus_msg_data(extra), "keep me", 7);
    assert_int_equal(rbus_msg_seq(extra), 1);
    assert_string_equal(rbus_msg_topic(extra), "ref");
    rbus_msg_release(extra);

    /* it also outlives its subscription */
    assert_rbus_ok(rbus_unsubscribe(a));
    assert_rbus_ok(rbus_unsubscribe(b));
    assert_int_equal(rbus_msg_size(extra2), 7);
    assert_memory_equal(rbus_msg_data(extra2), "keep me", 7);
    assert_string_equal(rbus_msg_topic(extra2), "ref");
    rbus_msg_release(extra2);
    rbus_destroy(bus);
}

static void recv_batch_returns_up_to_max(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "batch");
    rbus_sub *s = subscribe_cap(bus, "batch", 16);

    rbus_msg *out[10];
    assert_rbus_rc(rbus_recv_batch(s, out, 0, 0), -EINVAL);
    assert_rbus_rc(rbus_recv_batch(s, out, 10, 0), -EAGAIN);
    assert_rbus_rc(rbus_recv_batch(s, out, 10, 1000000), -ETIMEDOUT);

    for (int i = 1; i <= 5; i++) {
        char p = (char)('0' + i);
        assert_rbus_ok(rbus_publish(t, &p, 1));
    }
    assert_rbus_rc(rbus_recv_batch(s, out, 0, 0), -EINVAL);
    /* max 0 took nothing */
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.depth, 5);

    memset(out, 0, sizeof out);
    assert_int_equal(rbus_recv_batch(s, out, 3, 0), 3);
    for (int i = 0; i < 3; i++) {
        assert_non_null(out[i]);
        assert_int_equal(rbus_msg_seq(out[i]), (uint64_t)(i + 1));
        assert_int_equal(*(const char *)rbus_msg_data(out[i]), '0' + i + 1);
        rbus_msg_release(out[i]);
    }
    memset(out, 0, sizeof out);
    assert_int_equal(rbus_recv_batch(s, out, 10, -1), 2);
    for (int i = 0; i < 2; i++) {
        assert_non_null(out[i]);
        assert_int_equal(rbus_msg_seq(out[i]), (uint64_t)(i + 4));
        rbus_msg_release(out[i]);
    }
    assert_rbus_rc(rbus_recv_batch(s, out, 10, 0), -EAGAIN);

    /* max 1 behaves like rbus_recv */
    assert_rbus_ok(rbus_publish(t, "6", 1));
    assert_int_equal(rbus_recv_batch(s, out, 1, 0), 1);
    assert_int_equal(rbus_msg_seq(out[0]), 6);
    rbus_msg_release(out[0]);

    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.offered, 6);
    assert_int_equal(st.received, 6);
    assert_int_equal(st.depth, 0);
    rbus_test_check_accounting(&st);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

struct late_pub {
    rbus_topic *topic;
    int rc;
};

static void *late_publisher(void *arg)
{
    struct late_pub *lp = arg;
    rbus_test_sleep_us(30000);
    lp->rc = rbus_publish(lp->topic, "late", 4);
    return NULL;
}

static void recv_waits_for_a_later_publish(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "late");
    rbus_sub *s = subscribe_cap(bus, "late", 8);

    /* recv_batch with an infinite timeout gets the one message */
    struct late_pub lp = {.topic = t, .rc = -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, late_publisher, &lp), 0);
    rbus_msg *out[4] = {NULL, NULL, NULL, NULL};
    assert_int_equal(rbus_recv_batch(s, out, 4, -1), 1);
    assert_memory_equal(rbus_msg_data(out[0]), "late", 4);
    rbus_msg_release(out[0]);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_rbus_ok(lp.rc);

    /* rbus_recv with a long finite timeout likewise */
    lp.rc = -1;
    assert_int_equal(pthread_create(&th, NULL, late_publisher, &lp), 0);
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(s, &m, INT64_C(10000000000)));
    assert_int_equal(rbus_msg_seq(m), 2);
    rbus_msg_release(m);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_rbus_ok(lp.rc);

    assert_rbus_rc(rbus_recv(s, &m, 0), -EAGAIN);
    assert_rbus_rc(rbus_recv(s, &m, 1000000), -ETIMEDOUT);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void pub_result_and_topic_stats(void **state)
{
    (void)state;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t = NULL, *u = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "res.t", &t));
    assert_rbus_ok(rbus_topic_open(bus, "res.u", &u));

    /* nobody listening: accepted, all counts zero, sequence advances */
    rbus_pub_result r;
    memset(&r, 0xFF, sizeof r);
    assert_rbus_ok(rbus_publish_ex(t, "a", 1, NULL, &r));
    assert_int_equal(r.matched, 0);
    assert_int_equal(r.queued, 0);
    assert_int_equal(r.dropped, 0);
    assert_int_equal(r.evicted, 0);
    assert_false(r.duplicate);
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 1);
    assert_int_equal(ts.subscriptions, 0);

    rbus_sub *s1 = subscribe_cap(bus, "res.t", 8);
    rbus_sub *s2 = subscribe_cap(bus, "res.>", 16);
    rbus_sub *s3 = subscribe_cap(bus, "res.u", 8);
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.subscriptions, 2);
    assert_rbus_ok(rbus_topic_stats_get(u, &ts));
    assert_int_equal(ts.subscriptions, 2);

    for (int i = 0; i < 4; i++) {
        memset(&r, 0xFF, sizeof r);
        assert_rbus_ok(rbus_publish_ex(t, "b", 1, NULL, &r));
        assert_int_equal(r.matched, 2);
        assert_int_equal(r.queued, 2);
        assert_int_equal(r.dropped, 0);
        assert_int_equal(r.evicted, 0);
        assert_false(r.duplicate);
    }
    memset(&r, 0xFF, sizeof r);
    assert_rbus_ok(rbus_publish_ex(u, "c", 1, NULL, &r));
    assert_int_equal(r.matched, 2);
    assert_int_equal(r.queued, 2);

    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, 5);
    assert_int_equal(ts.duplicates, 0);
    assert_rbus_ok(rbus_topic_stats_get(u, &ts));
    assert_int_equal(ts.published, 1);

    /* sequences are per topic and count from 1; a sub sees only what was
     * published after it subscribed; one publisher's order holds across
     * topics */
    rbus_msg *m = NULL;
    static const struct {
        const char *topic;
        uint64_t seq;
    } want2[] = {{"res.t", 2}, {"res.t", 3}, {"res.t", 4}, {"res.t", 5}, {"res.u", 1}};
    for (size_t i = 0; i < 5; i++) {
        assert_rbus_ok(rbus_recv(s2, &m, 0));
        assert_string_equal(rbus_msg_topic(m), want2[i].topic);
        assert_int_equal(rbus_msg_seq(m), want2[i].seq);
        rbus_msg_release(m);
    }
    assert_rbus_rc(rbus_recv(s2, &m, 0), -EAGAIN);
    for (uint64_t seq = 2; seq <= 5; seq++) {
        assert_rbus_ok(rbus_recv(s1, &m, 0));
        assert_int_equal(rbus_msg_seq(m), seq);
        rbus_msg_release(m);
    }
    assert_rbus_ok(rbus_recv(s3, &m, 0));
    assert_int_equal(rbus_msg_seq(m), 1);
    assert_string_equal(rbus_msg_topic(m), "res.u");
    rbus_msg_release(m);

    /* interleaved publishes to two topics arrive in publish order */
    for (int i = 0; i < 10; i++)
        assert_rbus_ok(rbus_publish((i & 1) ? u : t, "i", 1));
    for (int i = 0; i < 10; i++) {
        assert_rbus_ok(rbus_recv(s2, &m, 0));
        assert_string_equal(rbus_msg_topic(m), (i & 1) ? "res.u" : "res.t");
        assert_int_equal(rbus_msg_seq(m), (i & 1) ? (uint64_t)(2 + i / 2) : (uint64_t)(6 + i / 2));
        rbus_msg_release(m);
    }

    /* a closed subscription is no longer counted or matched */
    assert_rbus_ok(rbus_sub_close(s1));
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.subscriptions, 1);
    memset(&r, 0xFF, sizeof r);
    assert_rbus_ok(rbus_publish_ex(t, "d", 1, NULL, &r));
    assert_int_equal(r.matched, 1);
    assert_int_equal(r.queued, 1);
    assert_rbus_ok(rbus_unsubscribe(s2));
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.subscriptions, 0);
    assert_int_equal(ts.published, 11);

    assert_rbus_ok(rbus_unsubscribe(s1));
    assert_rbus_ok(rbus_unsubscribe(s3));
    rbus_destroy(bus);
}

static void sub_ids_are_unique_and_never_reused(void **state)
{
    (void)state;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    uint64_t ids[20];
    for (int i = 0; i < 20; i++) {
        rbus_sub *s = subscribe_cap(bus, "ids", 2);
        ids[i] = rbus_sub_id(s);
        assert_true(ids[i] >= 1);
        for (int j = 0; j < i; j++)
            assert_true(ids[j] != ids[i]);
        /* half of them go away at once */
        if (i % 2 == 0)
            assert_rbus_ok(rbus_unsubscribe(s));
    }
    rbus_destroy(bus); /* frees the subscriptions still open */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fanout_three_subs_receive_every_message_in_order),
        cmocka_unit_test(message_without_keys_has_null_keys),
        cmocka_unit_test(zero_size_message_has_non_null_data),
        cmocka_unit_test(large_payload_is_copied_exactly),
        cmocka_unit_test(msg_ref_keeps_message_alive_after_release),
        cmocka_unit_test(recv_batch_returns_up_to_max),
        cmocka_unit_test(recv_waits_for_a_later_publish),
        cmocka_unit_test(pub_result_and_topic_stats),
        cmocka_unit_test(sub_ids_are_unique_and_never_reused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
