/* Regression tests for bugs found in review (named after what broke). */
#include "test_util.h"

#include "internal.h" /* to see when a call on a handle has begun */

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

/* A one-slot ring cannot tell "holds message p" from "free for p + 1":
 * capacity 1 must still queue, refuse and count correctly. */
static void test_regress_capacity_one_counts_and_receives(void **state)
{
    (void)state;
    for (int via_default = 0; via_default < 2; via_default++) {
        rbus_config cfg;
        rbus_config_init(&cfg);
        if (via_default)
            cfg.default_capacity = 1;
        rbus *bus;
        assert_rbus_ok(rbus_create(&bus, &cfg));
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = via_default ? 0 : 1;
        o.overflow = RBUS_DROP_NEWEST;
        rbus_sub *sub;
        rbus_topic *t;
        assert_rbus_ok(rbus_subscribe(bus, "r.one", &o, &sub));
        assert_rbus_ok(rbus_topic_open(bus, "r.one", &t));
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(sub, &st));
        assert_true(st.capacity >= 1);
        uint32_t cap = st.capacity;
        for (uint32_t i = 0; i < cap + 3; i++)
            assert_rbus_ok(rbus_publish(t, &i, sizeof i));
        assert_rbus_ok(rbus_sub_stats_get(sub, &st));
        assert_int_equal(st.depth, cap);
        assert_int_equal(st.dropped_newest, 3);
        rbus_test_check_accounting(&st);
        for (uint32_t i = 0; i < cap; i++) {
            rbus_msg *m;
            assert_rbus_ok(rbus_recv(sub, &m, 0));
            uint32_t v;
            memcpy(&v, rbus_msg_data(m), sizeof v);
            assert_int_equal(v, i);
            rbus_msg_release(m);
        }
        rbus_msg *m;
        assert_rbus_rc(rbus_recv(sub, &m, 0), -EAGAIN);
        rbus_destroy(bus);
    }
}

struct closer {
    rbus_sub *sub;
    atomic_int go;
    int rc;
};

static void *close_main(void *arg)
{
    struct closer *c = arg;
    while (!atomic_load(&c->go))
        ;
    c->rc = rbus_sub_close(c->sub);
    return NULL;
}

/* rbus_sub_close in flight while another thread unsubscribes the handle:
 * the unsubscribe must wait for it (ASan catches a use after free). The
 * unsubscribe starts only once the close has visibly begun (the sub left
 * OPEN): a call that *starts* after rbus_unsubscribe began is undefined. */
static void test_regress_sub_close_racing_unsubscribe(void **state)
{
    (void)state;
    const unsigned rounds = (unsigned)rbus_test_scaled(2000, 100);
    printf("regress: %u rounds of sub_close racing unsubscribe\n", rounds);
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "r.close", &t));
    for (unsigned r = 0; r < rounds; r++) {
        struct closer c = {0};
        assert_rbus_ok(rbus_subscribe(bus, "r.>", NULL, &c.sub));
        assert_rbus_ok(rbus_publish(t, "x", 1));
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, close_main, &c), 0);
        atomic_store(&c.go, 1);
        while (atomic_load(&c.sub->state) == RBUS_SUB_OPEN)
            ;
        assert_rbus_ok(rbus_unsubscribe(c.sub));
        assert_int_equal(pthread_join(th, NULL), 0);
        assert_rbus_ok(c.rc);
    }
    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.subscriptions, 0);
    rbus_destroy(bus);
}

struct first_publish {
    rbus_topic *topic;
    atomic_int go;
};

static void *publish_once(void *arg)
{
    struct first_publish *p = arg;
    while (!atomic_load(&p->go))
        ;
    (void)rbus_publish(p->topic, "y", 1);
    return NULL;
}

/* A publish racing the creation of the fd must never leave it unreadable
 * with a message queued. */
static void test_regress_fd_created_while_a_message_lands(void **state)
{
    (void)state;
    const unsigned rounds = (unsigned)rbus_test_scaled(20000, 500);
    printf("regress: %u rounds of the first rbus_sub_fd racing a publish\n", rounds);
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "r.fd", &t));
    for (unsigned r = 0; r < rounds; r++) {
        rbus_sub *sub;
        assert_rbus_ok(rbus_subscribe(bus, "r.fd", NULL, &sub));
        struct first_publish p = {.topic = t};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, publish_once, &p), 0);
        atomic_store(&p.go, 1);
        int fd = rbus_sub_fd(sub);
        assert_true(fd >= 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(sub, &st));
        assert_int_equal(st.depth, 1);
        if (poll(&pfd, 1, 0) != 1)
            fail_msg("round %u: a message is queued but the fd is not readable", r);
        assert_rbus_ok(rbus_unsubscribe(sub));
    }
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regress_capacity_one_counts_and_receives),
        cmocka_unit_test(test_regress_sub_close_racing_unsubscribe),
        cmocka_unit_test(test_regress_fd_created_while_a_message_lands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
