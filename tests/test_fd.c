/* rbus_sub_fd: the level-triggered readiness descriptor. */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"

static void spin_ns(uint64_t ns)
{
    uint64_t until = rbus_test_now_ns() + ns;
    while (rbus_test_now_ns() < until) {
    }
}

/* Long enough to never matter when the fd is (correctly) readable at once. */
#define READY_MS 2000

static void recv_seq(rbus_sub *s, uint64_t seq)
{
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_seq(m), seq);
    rbus_msg_release(m);
}

/* rbus_sub_fd, which must succeed. */
static int sub_fd(rbus_sub *s)
{
    int fd = rbus_sub_fd(s);
    assert_true(fd >= 0);
    return fd;
}

/* The queue is empty (-EAGAIN), and after that the fd is not readable. */
static void expect_drained_not_readable(rbus_sub *s, int fd)
{
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(s, &m, 0), -EAGAIN);
    assert_int_equal(rbus_test_fd_readable(fd, 0), 0);
}

static void fd_is_stable_nonblocking_and_cloexec(void **state)
{
    (void)state;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_sub *s = rbus_test_subscribe(bus, "fd", 8, RBUS_BLOCK, 0);
    rbus_sub *s2 = rbus_test_subscribe(bus, "fd", 8, RBUS_BLOCK, 0);
    int fd = sub_fd(s);
    assert_int_equal(rbus_sub_fd(s), fd);
    assert_int_equal(rbus_sub_fd(s), fd);
    int fd2 = sub_fd(s2);
    assert_int_not_equal(fd, fd2);

    int fl = fcntl(fd, F_GETFL);
    assert_true(fl >= 0);
    assert_true(fl & O_NONBLOCK);
    int fdfl = fcntl(fd, F_GETFD);
    assert_true(fdfl >= 0);
    assert_true(fdfl & FD_CLOEXEC);

    /* still the same after traffic */
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "fd", &t));
    assert_rbus_ok(rbus_publish(t, "a", 1));
    recv_seq(s, 1);
    assert_int_equal(rbus_sub_fd(s), fd);

    assert_rbus_ok(rbus_unsubscribe(s));
    assert_rbus_ok(rbus_unsubscribe(s2));
    rbus_destroy(bus);
}

static void fd_readable_when_messages_queued_before_creation(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "pre");
    rbus_sub *s = rbus_test_subscribe(bus, "pre", 8, RBUS_BLOCK, 0);
    assert_rbus_ok(rbus_publish(t, "a", 1));
    assert_rbus_ok(rbus_publish(t, "b", 1));

    int fd = sub_fd(s);
    assert_int_equal(rbus_test_fd_readable(fd, 0), 1);
    recv_seq(s, 1);
    /* one still queued: still readable */
    assert_int_equal(rbus_test_fd_readable(fd, 0), 1);
    recv_seq(s, 2);
    expect_drained_not_readable(s, fd);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void fd_follows_queue_until_eagain(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "lvl");
    rbus_sub *s = rbus_test_subscribe(bus, "lvl", 8, RBUS_BLOCK, 0);
    int fd = sub_fd(s);

    rbus_msg *m = NULL;
    expect_drained_not_readable(s, fd);

    uint64_t seq = 0;
    for (int round = 0; round < 5; round++) {
        /* one publish makes it readable */
        assert_rbus_ok(rbus_publish(t, "x", 1));
        assert_int_equal(rbus_test_fd_readable(fd, READY_MS), 1);
        /* polling again does not consume readiness */
        assert_int_equal(rbus_test_fd_readable(fd, 0), 1);
        assert_rbus_ok(rbus_publish(t, "y", 1));
        assert_int_equal(rbus_test_fd_readable(fd, 0), 1);
        recv_seq(s, ++seq);
        /* one more is queued: must be readable */
        assert_int_equal(rbus_test_fd_readable(fd, 0), 1);
        if (round % 2 == 0) {
            recv_seq(s, ++seq);
            assert_rbus_rc(rbus_recv(s, &m, 0), -EAGAIN);
        } else {
            rbus_msg *b[4];
            assert_int_equal(rbus_recv_batch(s, b, 4, 0), 1);
            assert_int_equal(rbus_msg_seq(b[0]), ++seq);
            rbus_msg_release(b[0]);
            assert_rbus_rc(rbus_recv_batch(s, b, 4, 0), -EAGAIN);
        }
        /* -EAGAIN clears it until the next message */
        assert_int_equal(rbus_test_fd_readable(fd, 0), 0);
        assert_int_equal(rbus_test_fd_readable(fd, 0), 0);
    }

    /* messages taken with a blocking receive don't leave it readable for
     * ever: the next -EAGAIN still clears it */
    assert_rbus_ok(rbus_publish(t, "z", 1));
    assert_rbus_ok(rbus_recv(s, &m, -1));
    rbus_msg_release(m);
    expect_drained_not_readable(s, fd);

    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

static void fd_readable_after_sub_close(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "cl");
    rbus_sub *s = rbus_test_subscribe(bus, "cl", 8, RBUS_BLOCK, 0);
    int fd = sub_fd(s);
    rbus_msg *m = NULL;
    expect_drained_not_readable(s, fd);

    assert_rbus_ok(rbus_sub_close(s));
    assert_int_equal(rbus_test_fd_readable(fd, READY_MS), 1);
    assert_rbus_rc(rbus_recv(s, &m, 0), -ESHUTDOWN);

    /* with messages queued at close: readable, drain, then -ESHUTDOWN */
    rbus_sub *s2 = rbus_test_subscribe(bus, "cl", 8, RBUS_BLOCK, 0);
    int fd2 = sub_fd(s2);
    assert_rbus_ok(rbus_publish(t, "a", 1));
    assert_rbus_ok(rbus_sub_close(s2));
    assert_int_equal(rbus_test_fd_readable(fd2, READY_MS), 1);
    recv_seq(s2, 1);
    assert_rbus_rc(rbus_recv(s2, &m, 0), -ESHUTDOWN);

    assert_rbus_ok(rbus_unsubscribe(s));
    assert_rbus_ok(rbus_unsubscribe(s2));
    rbus_destroy(bus);
}

/* rbus_close makes every subscription's fd readable: a loop waiting on it
 * learns of the close (its receives drain, then return -ESHUTDOWN). */
static void fd_readable_after_bus_close(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "bc");
    rbus_sub *s = rbus_test_subscribe(bus, "bc", 8, RBUS_BLOCK, 0);
    int fd = sub_fd(s);
    assert_rbus_ok(rbus_publish(t, "a", 1));
    recv_seq(s, 1);
    expect_drained_not_readable(s, fd);
    rbus_close(bus);
    assert_int_equal(rbus_test_fd_readable(fd, READY_MS), 1);
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(s, &m, 0), -ESHUTDOWN);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* epoll_wait on one edge-triggered fd: how many events within timeout_ms. */
static int et_wait(int ep, int timeout_ms)
{
    struct epoll_event ev;
    int n;
    do {
        n = epoll_wait(ep, &ev, 1, timeout_ms);
    } while (n < 0 && errno == EINTR);
    assert_true(n >= 0);
    return n;
}

/* With EPOLLET the fd gives one edge per transition to readable, and the
 * transition back (re-arming) happens only at a receive that returns
 * -EAGAIN. A loop that drains to -EAGAIN gets an edge for every later
 * burst; one that takes a single batch per wake-up and goes back to
 * epoll_wait is never woken again, though messages stay queued. */
static void edge_triggered_loop_must_drain_to_eagain(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "et");
    rbus_sub *s = rbus_test_subscribe(bus, "et", 64, RBUS_BLOCK, 0);
    int fd = sub_fd(s);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    assert_true(ep >= 0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET};
    assert_int_equal(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);
    rbus_msg *batch[8];

    /* Draining to -EAGAIN: every burst brings an edge. */
    for (int burst = 0; burst < 3; burst++) {
        for (int i = 0; i < 20; i++)
            assert_rbus_ok(rbus_publish(t, "x", 1));
        assert_int_equal(et_wait(ep, READY_MS), 1);
        int n, got = 0;
        while ((n = rbus_recv_batch(s, batch, 8, 0)) > 0) {
            for (int i = 0; i < n; i++)
                rbus_msg_release(batch[i]);
            got += n;
        }
        assert_rbus_rc(n, -EAGAIN);
        assert_int_equal(got, 20);
    }

    /* One batch per wake-up: the rest stays queued, and no edge comes,
     * not even when more is published. */
    for (int i = 0; i < 20; i++)
        assert_rbus_ok(rbus_publish(t, "y", 1));
    assert_int_equal(et_wait(ep, READY_MS), 1);
    int n = rbus_recv_batch(s, batch, 8, 0);
    assert_int_equal(n, 8);
    for (int i = 0; i < n; i++)
        rbus_msg_release(batch[i]);
    assert_rbus_ok(rbus_publish(t, "z", 1));
    assert_int_equal(et_wait(ep, 100), 0); /* stalled: 13 queued, no wake-up */
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    assert_int_equal(st.depth, 13);
    /* Draining to -EAGAIN mends it. */
    while ((n = rbus_recv_batch(s, batch, 8, 0)) > 0)
        for (int i = 0; i < n; i++)
            rbus_msg_release(batch[i]);
    assert_rbus_rc(n, -EAGAIN);
    assert_rbus_ok(rbus_publish(t, "w", 1));
    assert_int_equal(et_wait(ep, READY_MS), 1);
    close(ep);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* ---- the race: poll + drain against a publisher with small pauses ---- */

struct race {
    rbus_topic *topic;
    rbus_sub *sub;
    int fd;
    uint64_t n;
    bool use_batch;
    bool lockstep; /* publish the next one only once the last was received */
    atomic_int pub_done;
    /* receiver results */
    atomic_uint_fast64_t got;
    uint64_t pub_stalls; /* lockstep: a message not received within 2 s */
    uint64_t bad_order;
    uint64_t stuck;       /* poll timed out with a message queued */
    uint64_t lost;        /* publisher done, queue empty, but fewer than n */
    int recv_error;
    unsigned seed;
};

static void *race_publisher(void *arg)
{
    struct race *r = arg;
    unsigned seed = r->seed;
    for (uint64_t i = 1; i <= r->n; i++) {
        if (rbus_publish(r->topic, &i, sizeof i) != 0)
            break;
        if (r->lockstep) {
            /* every message is then the last one queued: a lost wake-up
             * cannot be hidden by the next publish */
            uint64_t until = rbus_test_now_ns() + UINT64_C(2000000000);
            while (atomic_load(&r->got) < i && rbus_test_now_ns() < until)
                sched_yield();
            if (atomic_load(&r->got) < i) {
                r->pub_stalls++;
                break;
            }
        }
        /* Pauses of varied length sweep the publish across every point of
         * the receiver's drain -> -EAGAIN -> poll sequence. */
        unsigned x = (unsigned)rand_r(&seed);
        switch (x % 8) {
        case 0:
            rbus_test_sleep_us(x % 200); /* a pause long enough for poll to sleep */
            break;
        case 1:
            sched_yield();
            break;
        case 2:
            break; /* back to back */
        default:
            spin_ns((x >> 4) % 20000); /* up to 20 us, busy */
            break;
        }
    }
    atomic_store(&r->pub_done, 1);
    return NULL;
}

/* Checks that m is the next message (payload == seq == got + 1), counts
 * and releases it. */
static void race_take(struct race *r, rbus_msg *m)
{
    uint64_t v;
    memcpy(&v, rbus_msg_data(m), sizeof v);
    if (v != atomic_load(&r->got) + 1 || rbus_msg_seq(m) != v)
        r->bad_order++;
    atomic_fetch_add(&r->got, 1);
    rbus_msg_release(m);
}

static void *race_receiver(void *arg)
{
    struct race *r = arg;
    uint64_t deadline = rbus_test_now_ns() + UINT64_C(60000000000);
    while (atomic_load(&r->got) < r->n && rbus_test_now_ns() < deadline) {
        struct pollfd p = {.fd = r->fd, .events = POLLIN};
        int prc = poll(&p, 1, READY_MS);
        if (prc < 0) {
            if (errno == EINTR)
                continue;
            r->recv_error = -errno;
            break;
        }
        if (prc == 0) {
            rbus_sub_stats st;
            if (rbus_sub_stats_get(r->sub, &st) != 0) {
                r->recv_error = -EINVAL;
                break;
            }
            if (st.depth > 0) {
                r->stuck++;
                break;
            }
            if (atomic_load(&r->pub_done) && atomic_load(&r->got) < r->n) {
                r->lost++;
                break;
            }
            continue;
        }
        /* drain until -EAGAIN */
        for (;;) {
            int rc;
            if (r->use_batch) {
                rbus_msg *b[3];
                rc = rbus_recv_batch(r->sub, b, 3, 0);
                for (int i = 0; i < rc; i++)
                    race_take(r, b[i]);
                if (rc > 0)
                    rc = 0;
            } else {
                rbus_msg *m = NULL;
                rc = rbus_recv(r->sub, &m, 0);
                if (rc == 0)
                    race_take(r, m);
            }
            if (rc == -EAGAIN)
                break;
            if (rc != 0) {
                r->recv_error = rc;
                return NULL;
            }
        }
    }
    return NULL;
}

static void run_race(bool use_batch, bool lockstep, unsigned seed)
{
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    struct race r;
    memset(&r, 0, sizeof r);
    assert_rbus_ok(rbus_topic_open(bus, "race", &r.topic));
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 32;
    o.overflow = RBUS_BLOCK;
    o.spin_ns = -1;
    assert_rbus_ok(rbus_subscribe(bus, "race", &o, &r.sub));
    r.fd = rbus_sub_fd(r.sub);
    assert_true(r.fd >= 0);
    r.n = lockstep ? rbus_test_scaled(5000, 300) : rbus_test_scaled(20000, 500);
    r.use_batch = use_batch;
    r.lockstep = lockstep;
    r.seed = seed;
    atomic_init(&r.pub_done, 0);
    atomic_init(&r.got, 0);
    print_message("fd race: n=%llu batch=%d lockstep=%d\n", (unsigned long long)r.n,
                  (int)use_batch, (int)lockstep);

    pthread_t rx, tx;
    assert_int_equal(pthread_create(&rx, NULL, race_receiver, &r), 0);
    assert_int_equal(pthread_create(&tx, NULL, race_publisher, &r), 0);
    assert_int_equal(pthread_join(tx, NULL), 0);
    assert_int_equal(pthread_join(rx, NULL), 0);

    assert_rbus_ok(r.recv_error);
    assert_int_equal(r.stuck, 0);
    assert_int_equal(r.lost, 0);
    assert_int_equal(r.bad_order, 0);
    assert_int_equal(r.pub_stalls, 0);
    assert_int_equal(atomic_load(&r.got), r.n);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(r.sub, &st));
    assert_int_equal(st.offered, r.n);
    assert_int_equal(st.received, r.n);
    assert_int_equal(st.depth, 0);
    rbus_test_check_accounting(&st);
    assert_rbus_ok(rbus_unsubscribe(r.sub));
    rbus_destroy(bus);
}

static void fd_race_poll_then_drain_with_recv(void **state)
{
    (void)state;
    run_race(false, false, 12345u);
}

static void fd_race_lockstep_publish_after_each_receive(void **state)
{
    (void)state;
    run_race(false, true, 4242u);
}

static void fd_race_lockstep_with_recv_batch(void **state)
{
    (void)state;
    run_race(true, true, 99u);
}

static void fd_race_poll_then_drain_with_recv_batch(void **state)
{
    (void)state;
    run_race(true, false, 777u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fd_is_stable_nonblocking_and_cloexec),
        cmocka_unit_test(fd_readable_when_messages_queued_before_creation),
        cmocka_unit_test(fd_follows_queue_until_eagain),
        cmocka_unit_test(fd_readable_after_sub_close),
        cmocka_unit_test(fd_readable_after_bus_close),
        cmocka_unit_test(edge_triggered_loop_must_drain_to_eagain),
        cmocka_unit_test(fd_race_poll_then_drain_with_recv),
        cmocka_unit_test(fd_race_poll_then_drain_with_recv_batch),
        cmocka_unit_test(fd_race_lockstep_publish_after_each_receive),
        cmocka_unit_test(fd_race_lockstep_with_recv_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
