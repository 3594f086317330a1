/*
 * The byte bound (rbus_sub_opts.max_bytes): each policy applies when the
 * bytes would not fit, drop-oldest evicts as many messages as one large
 * message needs, a bound below max_payload is refused, and under
 * concurrent publishers and receivers the bytes never pass the bound and
 * the accounting stays exact.
 *
 * Sizes of the concurrent run scale with RBUS_STRESS_SCALE and are printed.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "test_util.h"

#define MAX_PAYLOAD 16384u

static char payload[MAX_PAYLOAD];

static rbus *bus_open(void)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_payload = MAX_PAYLOAD;
    rbus *bus;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    return bus;
}

static rbus_sub *sub_bytes(rbus *bus, const char *pattern, uint32_t cap, rbus_overflow policy,
                           uint64_t max_bytes)
{
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = cap;
    o.overflow = policy;
    o.max_bytes = max_bytes;
    rbus_sub *s;
    assert_rbus_ok(rbus_subscribe(bus, pattern, &o, &s));
    return s;
}

/* Publishes `size` bytes whose first byte is `tag`; never waits. */
static rbus_pub_result put(rbus_topic *t, size_t size, unsigned char tag)
{
    payload[0] = (char)tag;
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.timeout_ns = -1;
    rbus_pub_result res;
    assert_rbus_ok(rbus_publish_ex(t, payload, size, &po, &res));
    return res;
}

/* The stats, at rest (no call in flight on s): accounting exact. */
static rbus_sub_stats stats(rbus_sub *s)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(s, &st));
    rbus_test_check_accounting(&st);
    return st;
}

/* Takes one message and checks its tag and size. */
static void take(rbus_sub *s, unsigned char tag, size_t size)
{
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(s, &m, 0));
    assert_int_equal(rbus_msg_size(m), size);
    assert_int_equal(*(const unsigned char *)rbus_msg_data(m), tag);
    rbus_msg_release(m);
}

static void a_bound_below_max_payload_is_refused(void **state)
{
    (void)state;
    rbus *bus = bus_open();
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.max_bytes = MAX_PAYLOAD - 1;
    rbus_sub *s = (rbus_sub *)&s;
    assert_rbus_rc(rbus_subscribe(bus, "b.t", &o, &s), -EINVAL);
    assert_null(s);
    o.max_bytes = MAX_PAYLOAD;
    assert_rbus_ok(rbus_subscribe(bus, "b.t", &o, &s));
    rbus_sub_stats st = stats(s);
    assert_int_equal(st.max_bytes, MAX_PAYLOAD);
    assert_int_equal(st.bytes, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* 10 KiB messages under a 40000-byte bound: three fit, the fourth does not,
 * though the queue has slots to spare. */
static void drop_newest_and_block_refuse_what_does_not_fit(void **state)
{
    (void)state;
    rbus *bus = bus_open();
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "b.t", &t));
    rbus_sub *newest = sub_bytes(bus, "b.t", 64, RBUS_DROP_NEWEST, 40000);
    rbus_sub *block = sub_bytes(bus, "b.t", 64, RBUS_BLOCK, 40000);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(put(t, 10240, (unsigned char)i).queued, 2);
    rbus_pub_result r = put(t, 10240, 3);
    assert_int_equal(r.queued, 0);
    assert_int_equal(r.dropped, 2);
    rbus_sub_stats sn = stats(newest), sb = stats(block);
    assert_int_equal(sn.bytes, 30720);
    assert_int_equal(sn.depth, 3);
    assert_int_equal(sn.dropped_newest, 1);
    assert_int_equal(sb.bytes, 30720);
    assert_int_equal(sb.dropped_timeout, 1); /* the publish would not wait */
    /* A small one still fits. */
    assert_int_equal(put(t, 9000, 4).queued, 2);
    assert_int_equal(stats(newest).bytes, 39720);
    /* Receiving gives the bytes back. */
    take(newest, 0, 10240);
    take(block, 0, 10240);
    assert_int_equal(stats(newest).bytes, 29480);
    assert_int_equal(put(t, 10240, 5).queued, 2);
    for (unsigned tag = 1; tag <= 5; tag++) {
        if (tag == 3)
            continue;
        size_t size = tag == 4 ? 9000 : 10240;
        take(newest, (unsigned char)tag, size);
        take(block, (unsigned char)tag, size);
    }
    assert_int_equal(stats(newest).bytes, 0);
    assert_int_equal(stats(block).bytes, 0);
    assert_rbus_ok(rbus_unsubscribe(newest));
    assert_rbus_ok(rbus_unsubscribe(block));
    rbus_destroy(bus);
}

struct waiter {
    rbus_topic *t;
    int rc;
    rbus_pub_result res;
};

static void *publish_big(void *arg)
{
    struct waiter *w = arg;
    static char big[12000];
    big[0] = 9;
    w->rc = rbus_publish_ex(w->t, big, sizeof big, NULL, &w->res);
    return NULL;
}

/* RBUS_BLOCK waits until the bytes fit, and is woken by the receive that
 * makes them fit. */
static void block_waits_for_the_bytes(void **state)
{
    (void)state;
    rbus *bus = bus_open();
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "b.t", &t));
    rbus_sub *s = sub_bytes(bus, "b.t", 64, RBUS_BLOCK, 40000);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(put(t, 10240, (unsigned char)i).queued, 1);
    struct waiter w = {.t = t};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, publish_big, &w), 0);
    rbus_sub_stats st;
    uint64_t deadline = rbus_test_now_ns() + UINT64_C(10000000000);
    do { /* a publish in flight: no accounting check */
        rbus_test_sleep_us(500);
        assert_rbus_ok(rbus_sub_stats_get(s, &st));
    } while (st.publishers_waiting == 0 && rbus_test_now_ns() < deadline);
    assert_int_equal(st.publishers_waiting, 1);
    assert_int_equal(st.depth, 3);
    take(s, 0, 10240); /* 20480 + 12000 fits */
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_rbus_ok(w.rc);
    assert_int_equal(w.res.queued, 1);
    st = stats(s);
    assert_int_equal(st.bytes, 32480);
    assert_int_equal(st.publisher_waits, 1);
    take(s, 1, 10240);
    take(s, 2, 10240);
    take(s, 9, 12000);
    assert_int_equal(stats(s).bytes, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* Ten 4000-byte messages fill a 40000-byte bound; one of 16000 bytes
 * evicts the four oldest, in the one publish, and nothing waits. */
static void drop_oldest_evicts_as_many_as_one_message_needs(void **state)
{
    (void)state;
    rbus *bus = bus_open();
    rbus_topic *t;
    assert_rbus_ok(rbus_topic_open(bus, "b.t", &t));
    rbus_sub *s = sub_bytes(bus, "b.t", 64, RBUS_DROP_OLDEST, 40000);
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(put(t, 4000, (unsigned char)i).queued, 1);
    rbus_pub_result r = put(t, 16000, 10);
    assert_int_equal(r.queued, 1);
    assert_int_equal(r.evicted, 4);
    rbus_sub_stats st = stats(s);
    assert_int_equal(st.dropped_oldest, 4);
    assert_int_equal(st.bytes, 40000);
    assert_int_equal(st.depth, 7);
    /* 16384 more bytes: five more of the oldest go. */
    r = put(t, MAX_PAYLOAD, 11);
    assert_int_equal(r.evicted, 5);
    st = stats(s);
    assert_int_equal(st.depth, 3);
    assert_int_equal(st.bytes, 4000 + 16000 + MAX_PAYLOAD);
    take(s, 9, 4000);
    take(s, 10, 16000);
    take(s, 11, MAX_PAYLOAD);
    /* The count bound still applies on its own: a full queue of small
     * messages evicts one. */
    rbus_sub *few = sub_bytes(bus, "b.t", 4, RBUS_DROP_OLDEST, 40000);
    for (unsigned i = 0; i < 5; i++)
        put(t, 10, (unsigned char)(20 + i));
    st = stats(few);
    assert_int_equal(st.depth, 4);
    assert_int_equal(st.dropped_oldest, 1);
    assert_int_equal(st.bytes, 40);
    for (unsigned i = 1; i < 5; i++)
        take(few, (unsigned char)(20 + i), 10);
    assert_int_equal(stats(few).bytes, 0);
    assert_rbus_ok(rbus_unsubscribe(few));
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

/* -------------------------------------------------------- concurrently */

#define PUBLISHERS 3
#define BOUND 65536u

struct run {
    rbus_topic *t;
    rbus_sub *subs[3];
    uint32_t per_publisher;
    atomic_int publishers_left;
    atomic_int over_bound; /* a stats read saw bytes above the bound */
    _Atomic uint64_t received[3];
};

struct pub_arg {
    struct run *run;
    uint32_t id;
};

static void *pub_main(void *arg)
{
    struct pub_arg *a = arg;
    uint64_t x = 0x9e3779b97f4a7c15u * (a->id + 1);
    unsigned char buf[MAX_PAYLOAD];
    for (uint32_t i = 0; i < a->run->per_publisher; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t size = 1 + (size_t)(x % MAX_PAYLOAD);
        /* publisher id and per-publisher sequence, to check order */
        memcpy(buf, &a->id, sizeof a->id);
        memcpy(buf + 4, &i, sizeof i);
        size = size < 8 ? 8 : size;
        if (rbus_publish(a->run->t, buf, size) != 0)
            rbus_test_report("publish failed");
    }
    atomic_fetch_sub(&a->run->publishers_left, 1);
    return NULL;
}

struct recv_arg {
    struct run *run;
    int sub;
};

static void *recv_main(void *arg)
{
    struct recv_arg *a = arg;
    rbus_sub *s = a->run->subs[a->sub];
    uint32_t next[PUBLISHERS] = {0};
    rbus_msg *m[16];
    for (;;) {
        int n = rbus_recv_batch(s, m, 16, 1000000);
        if (n == -ESHUTDOWN)
            break;
        if (n == -ETIMEDOUT) {
            if (atomic_load(&a->run->publishers_left) == 0)
                rbus_sub_close(s); /* drain what is left, then -ESHUTDOWN */
            continue;
        }
        for (int i = 0; i < n; i++) {
            uint32_t id, seq;
            memcpy(&id, rbus_msg_data(m[i]), 4);
            memcpy(&seq, (const char *)rbus_msg_data(m[i]) + 4, 4);
            if (id >= PUBLISHERS || seq < next[id])
                rbus_test_report("sub %d: publisher %u out of order", a->sub, id);
            else
                next[id] = seq + 1;
            rbus_msg_release(m[i]);
        }
        atomic_fetch_add(&a->run->received[a->sub], (uint64_t)n);
        rbus_sub_stats st;
        if (rbus_sub_stats_get(s, &st) == 0 && st.bytes > BOUND)
            atomic_store(&a->run->over_bound, 1);
        if (a->sub != 0)
            rbus_test_sleep_us(20); /* slower than the publishers: the bound bites */
    }
    return NULL;
}

static void bound_holds_under_concurrent_publishers(void **state)
{
    (void)state;
    rbus *bus = bus_open();
    struct run run;
    memset(&run, 0, sizeof run);
    assert_rbus_ok(rbus_topic_open(bus, "b.c", &run.t));
    run.subs[0] = sub_bytes(bus, "b.c", 1024, RBUS_BLOCK, BOUND);
    run.subs[1] = sub_bytes(bus, "b.c", 1024, RBUS_DROP_OLDEST, BOUND);
    run.subs[2] = sub_bytes(bus, "b.c", 1024, RBUS_DROP_NEWEST, BOUND);
    run.per_publisher = (uint32_t)rbus_test_scaled(20000, 500);
    printf("# bytes: %d publishers x %u messages of 8..%u bytes, bound %u bytes\n", PUBLISHERS,
           run.per_publisher, MAX_PAYLOAD, BOUND);
    atomic_init(&run.publishers_left, PUBLISHERS);
    pthread_t pubs[PUBLISHERS], recvs[3];
    struct pub_arg pa[PUBLISHERS];
    struct recv_arg ra[3];
    for (int i = 0; i < 3; i++) {
        ra[i] = (struct recv_arg){&run, i};
        assert_int_equal(pthread_create(&recvs[i], NULL, recv_main, &ra[i]), 0);
    }
    for (uint32_t i = 0; i < PUBLISHERS; i++) {
        pa[i] = (struct pub_arg){&run, i};
        assert_int_equal(pthread_create(&pubs[i], NULL, pub_main, &pa[i]), 0);
    }
    for (int i = 0; i < PUBLISHERS; i++)
        assert_int_equal(pthread_join(pubs[i], NULL), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_join(recvs[i], NULL), 0);
    assert_int_equal(rbus_test_error_count(), 0);
    assert_int_equal(atomic_load(&run.over_bound), 0);
    uint64_t offered = (uint64_t)PUBLISHERS * run.per_publisher;
    for (int i = 0; i < 3; i++) {
        rbus_sub_stats st = stats(run.subs[i]);
        printf("# bytes: %s: received %llu, dropped oldest %llu, newest %llu\n",
               i == 0   ? "block"
               : i == 1 ? "drop-oldest"
                        : "drop-newest",
               (unsigned long long)st.received, (unsigned long long)st.dropped_oldest,
               (unsigned long long)st.dropped_newest);
        assert_int_equal(st.offered, offered);
        assert_int_equal(st.received, atomic_load(&run.received[i]));
        assert_int_equal(st.depth, 0);
        assert_int_equal(st.bytes, 0);
        if (i == 0)
            assert_int_equal(st.received, offered); /* nothing lost under block */
        assert_rbus_ok(rbus_unsubscribe(run.subs[i]));
    }
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_bound_below_max_payload_is_refused),
        cmocka_unit_test(drop_newest_and_block_refuse_what_does_not_fit),
        cmocka_unit_test(block_waits_for_the_bytes),
        cmocka_unit_test(drop_oldest_evicts_as_many_as_one_message_needs),
        cmocka_unit_test(bound_holds_under_concurrent_publishers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
