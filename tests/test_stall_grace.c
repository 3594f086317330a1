/*
 * Grace periods with a reader stalled: a publisher parked inside its read
 * section (a slot reserved, not yet written) holds up every grace period,
 * and so an rbus_sub_close or rbus_close that waits for one. Meanwhile
 * stats, the Prometheus scrape and topic_open must still answer (they never
 * wait for a grace period, and nobody holds their lock across one), and the
 * waiting thread must sleep rather than spin.
 */
#include "test_util.h"

#include "pause.h"

#include <time.h>

#define PARK_TIMEOUT_NS INT64_C(30000000000)
#define ANSWER_TIMEOUT_US 10000000u /* how long the readers may take, stalled or not */

struct fixture {
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *a; /* the parked publisher's subscription */
    rbus_sub *b; /* the one being closed */
};

static void fixture_open(struct fixture *f)
{
    f->topic = rbus_test_bus_and_topic(&f->bus, "grace.t");
    f->a = rbus_test_subscribe_checked(f->bus, "grace.t", 8, RBUS_DROP_NEWEST, 0, NULL);
    f->b = rbus_test_subscribe_checked(f->bus, "grace.>", 8, RBUS_DROP_NEWEST, 0, NULL);
}

static void *publish_main(void *arg)
{
    struct fixture *f = arg;
    int rc = rbus_publish(f->topic, "parked", 6);
    return (void *)(intptr_t)rc;
}

struct closer {
    struct fixture *f;
    bool whole_bus;
    atomic_int done;
};

static void *close_main(void *arg)
{
    struct closer *c = arg;
    if (c->whole_bus)
        rbus_close(c->f->bus);
    else
        rbus_sub_close(c->f->b);
    atomic_store(&c->done, 1);
    return NULL;
}

struct readers {
    struct fixture *f;
    atomic_int done;
    int prom_rc, open_rc, sub_rc, topic_rc;
};

/* Everything that must not wait for a grace period. */
static void *readers_main(void *arg)
{
    struct readers *r = arg;
    char buf[8192];
    rbus_sub_stats ss;
    rbus_topic_stats ts;
    rbus_topic *t = NULL;
    r->prom_rc = rbus_stats_prometheus(r->f->bus, buf, sizeof buf);
    r->open_rc = rbus_topic_open(r->f->bus, "grace.new", &t);
    r->sub_rc = rbus_sub_stats_get(r->f->a, &ss);
    r->topic_rc = rbus_topic_stats_get(r->f->topic, &ts);
    atomic_store(&r->done, 1);
    return NULL;
}

static int64_t thread_cpu_ns(pthread_t t)
{
    clockid_t cid;
    struct timespec ts;
    assert_int_equal(pthread_getcpuclockid(t, &cid), 0);
    assert_int_equal(clock_gettime(cid, &ts), 0);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void stalled_reader_blocks_no_reader_of_stats(bool whole_bus)
{
    struct fixture f;
    fixture_open(&f);

    /* 1. A publisher parks inside its read section, its slot reserved. */
    pthread_t pub;
    int trap = rbus__trap_set(RBUS_PP_RING_PUT_RESERVED, NULL);
    assert_true(trap >= 0);
    assert_int_equal(pthread_create(&pub, NULL, publish_main, &f), 0);
    assert_true(rbus__trap_wait(trap, PARK_TIMEOUT_NS));

    /* 2. A close starts waiting for the grace period the publisher holds. */
    uint64_t syncs = rbus__pause_passes(RBUS_PP_SYNCHRONIZE);
    struct closer c = {.f = &f, .whole_bus = whole_bus};
    atomic_init(&c.done, 0);
    pthread_t closer;
    assert_int_equal(pthread_create(&closer, NULL, close_main, &c), 0);
    while (rbus__pause_passes(RBUS_PP_SYNCHRONIZE) == syncs)
        rbus_test_sleep_us(1000);

    /* 3. While it waits: it sleeps rather than spins, and stats, the
     * scrape and topic_open answer. */
    rbus_test_sleep_us(20000);
    int64_t cpu0 = thread_cpu_ns(closer);
    uint64_t t0 = rbus_test_now_ns();
    struct readers r = {.f = &f};
    atomic_init(&r.done, 0);
    pthread_t rd;
    assert_int_equal(pthread_create(&rd, NULL, readers_main, &r), 0);
    bool answered = rbus_test_wait_flag(&r.done, ANSWER_TIMEOUT_US);
    rbus_test_sleep_us(200000);
    int64_t cpu = thread_cpu_ns(closer) - cpu0;
    uint64_t wall = rbus_test_now_ns() - t0;
    bool close_waited = !atomic_load(&c.done);

    /* 4. Let everything go before judging, so a failure leaves no thread
     * parked. */
    rbus__trap_release(trap);
    void *prc;
    assert_int_equal(pthread_join(pub, &prc), 0);
    assert_int_equal(pthread_join(closer, NULL), 0);
    assert_int_equal(pthread_join(rd, NULL), 0);
    print_message("  closer: %.1f ms of CPU in %.1f ms waiting\n", (double)cpu / 1e6,
                  (double)wall / 1e6);

    if (!answered) {
        print_error("stats, Prometheus or topic_open waited for the grace period\n");
        fail();
    }
    /* The close really waited for the parked reader (else this test proves
     * nothing), and it slept: a spinning waiter burns its whole wall time. */
    assert_true(close_waited);
    assert_true(cpu * 4 < (int64_t)wall);
    assert_true(r.prom_rc > 0);
    assert_int_equal(r.open_rc, whole_bus ? -ESHUTDOWN : 0);
    assert_rbus_ok(r.sub_rc);
    assert_rbus_ok(r.topic_rc);
    assert_int_equal((int)(intptr_t)prc, 0); /* accepted before the close */

    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(f.a, &st));
    rbus_test_check_accounting(&st);
    assert_rbus_ok(rbus_unsubscribe(f.a));
    assert_rbus_ok(rbus_unsubscribe(f.b));
    rbus_destroy(f.bus);
}

static void sub_close_waits_for_stalled_reader_without_blocking_stats(void **state)
{
    (void)state;
    stalled_reader_blocks_no_reader_of_stats(false);
}

static void close_waits_for_stalled_reader_without_blocking_stats(void **state)
{
    (void)state;
    stalled_reader_blocks_no_reader_of_stats(true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sub_close_waits_for_stalled_reader_without_blocking_stats),
        cmocka_unit_test(close_waits_for_stalled_reader_without_blocking_stats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
