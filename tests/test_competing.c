/* Competing consumers: several threads on one subscription get each message
 * exactly once. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "harness.h"

enum recv_mode { MODE_RECV, MODE_BATCH };

struct shared {
    rbus_sub *sub;
    uint64_t n;              /* messages expected in all */
    atomic_uchar *seen;      /* [n + 1], by sequence number */
    atomic_uint_fast64_t total;
    atomic_uint_fast64_t dup;      /* a sequence seen twice */
    atomic_uint_fast64_t bad;      /* out of range, wrong payload/topic */
    atomic_uint_fast64_t disorder; /* one thread saw a smaller seq after a larger */
    atomic_int errors;             /* an unexpected return code */
    atomic_int last_error;
    bool single_publisher;         /* payload == seq and per-thread order hold */
    uint64_t deadline_ns;
};

struct receiver {
    struct shared *sh;
    enum recv_mode mode;
    uint64_t got;
};

static void check_msg(struct shared *sh, rbus_msg *m, uint64_t *last_seq)
{
    uint64_t seq = rbus_msg_seq(m);
    uint64_t payload = 0;
    if (rbus_msg_size(m) == sizeof payload)
        memcpy(&payload, rbus_msg_data(m), sizeof payload);
    bool payload_ok = sh->single_publisher ? payload == seq : payload == 0;
    if (seq == 0 || seq > sh->n || !payload_ok || strcmp(rbus_msg_topic(m), "work") != 0) {
        atomic_fetch_add(&sh->bad, 1);
    } else if (atomic_fetch_add(&sh->seen[seq], 1) != 0) {
        atomic_fetch_add(&sh->dup, 1);
    }
    /* one publisher: the queue is FIFO, so each receiver's own takes are
     * increasing */
    if (sh->single_publisher && seq <= *last_seq)
        atomic_fetch_add(&sh->disorder, 1);
    *last_seq = seq;
    atomic_fetch_add(&sh->total, 1);
}

static void *receiver_main(void *arg)
{
    struct receiver *r = arg;
    struct shared *sh = r->sh;
    uint64_t last_seq = 0;
    rbus_msg *batch[7];
    while (atomic_load(&sh->total) < sh->n && rbus_test_now_ns() < sh->deadline_ns) {
        if (r->mode == MODE_RECV) {
            rbus_msg *m = NULL;
            int rc = rbus_recv(sh->sub, &m, INT64_C(5000000));
            if (rc == -ETIMEDOUT)
                continue;
            if (rc != 0) {
                atomic_fetch_add(&sh->errors, 1);
                atomic_store(&sh->last_error, rc);
                break;
            }
            check_msg(sh, m, &last_seq);
            r->got++;
            rbus_msg_release(m);
        } else {
            int rc = rbus_recv_batch(sh->sub, batch, 7, INT64_C(5000000));
            if (rc == -ETIMEDOUT)
                continue;
            if (rc < 1 || rc > 7) {
                atomic_fetch_add(&sh->errors, 1);
                atomic_store(&sh->last_error, rc);
                break;
            }
            for (int i = 0; i < rc; i++) {
                check_msg(sh, batch[i], &last_seq);
                r->got++;
                rbus_msg_release(batch[i]);
            }
        }
    }
    return NULL;
}

struct publisher {
    rbus_topic *topic;
    uint64_t count;
    int rc;
};

static void *publisher_main(void *arg)
{
    struct publisher *p = arg;
    p->rc = 0;
    for (uint64_t i = 0; i < p->count; i++) {
        /* with several publishers nobody knows the sequence number a
         * message will get, so the payload is 0 */
        uint64_t payload = 0;
        int rc = rbus_publish(p->topic, &payload, sizeof payload);
        if (rc != 0) {
            p->rc = rc;
            return NULL;
        }
    }
    return NULL;
}

/* One run: `nrecv` receivers with the given modes, `npub` publisher threads
 * (0 = the test thread publishes, with payload = sequence number). */
static void run_competing(const enum recv_mode *modes, int nrecv, int npub, uint64_t n,
                          uint32_t capacity)
{
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "work");
    rbus_sub *sub = rbus_test_subscribe(bus, "work", capacity, RBUS_BLOCK, 0);

    struct shared sh;
    memset(&sh, 0, sizeof sh);
    sh.sub = sub;
    sh.n = n;
    sh.seen = calloc(n + 1, sizeof *sh.seen);
    assert_non_null(sh.seen);
    atomic_init(&sh.total, 0);
    atomic_init(&sh.dup, 0);
    atomic_init(&sh.bad, 0);
    atomic_init(&sh.disorder, 0);
    atomic_init(&sh.errors, 0);
    atomic_init(&sh.last_error, 0);
    sh.single_publisher = npub == 0;
    sh.deadline_ns = rbus_test_now_ns() + UINT64_C(60000000000);

    struct receiver rs[8];
    assert_true(nrecv <= 8);
    for (int i = 0; i < nrecv; i++) {
        rs[i].sh = &sh;
        rs[i].mode = modes[i];
        rs[i].got = 0;
    }
    static struct rbus_test_threads receivers;
    rbus_test_threads_init(&receivers);
    rbus_test_threads_add_n(&receivers, nrecv, receiver_main, rs, sizeof *rs);
    rbus_test_threads_start(&receivers);

    struct publisher pubs[8];
    assert_true(npub <= 8);
    if (npub == 0) {
        for (uint64_t i = 1; i <= n; i++)
            assert_rbus_ok(rbus_publish(t, &i, sizeof i));
    } else {
        assert_int_equal(n % (uint64_t)npub, 0);
        for (int i = 0; i < npub; i++) {
            pubs[i].topic = t;
            pubs[i].count = n / (uint64_t)npub;
            pubs[i].rc = 0;
        }
        rbus_test_threads_run(npub, publisher_main, pubs, sizeof *pubs);
        for (int i = 0; i < npub; i++)
            assert_rbus_ok(pubs[i].rc);
    }

    rbus_test_threads_join(&receivers);
    uint64_t sum = 0;
    for (int i = 0; i < nrecv; i++)
        sum += rs[i].got;
    if (atomic_load(&sh.errors) != 0) {
        int e = atomic_load(&sh.last_error);
        print_error("receiver got rc %d (%s)\n", e, rbus_strerror(e));
        fail();
    }
    assert_int_equal(atomic_load(&sh.bad), 0);
    assert_int_equal(atomic_load(&sh.dup), 0);
    assert_int_equal(atomic_load(&sh.disorder), 0);
    assert_int_equal(atomic_load(&sh.total), n);
    assert_int_equal(sum, n);
    for (uint64_t i = 1; i <= n; i++) {
        if (atomic_load(&sh.seen[i]) != 1) {
            print_error("seq %llu seen %u times\n", (unsigned long long)i,
                        (unsigned)atomic_load(&sh.seen[i]));
            fail();
        }
    }
    rbus_msg *m = NULL;
    assert_rbus_rc(rbus_recv(sub, &m, 0), -EAGAIN);

    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(t, &ts));
    assert_int_equal(ts.published, n);
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sub, &st));
    assert_int_equal(st.offered, n);
    assert_int_equal(st.received, n);
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.dropped_timeout + st.dropped_closed + st.dropped_newest +
                         st.dropped_oldest,
                     0);
    rbus_test_check_accounting(&st);

    free(sh.seen);
    assert_rbus_ok(rbus_unsubscribe(sub));
    rbus_destroy(bus);
}

static void four_receivers_with_recv_get_each_message_once(void **state)
{
    (void)state;
    const enum recv_mode modes[4] = {MODE_RECV, MODE_RECV, MODE_RECV, MODE_RECV};
    run_competing(modes, 4, 0, 20000, 64);
}

static void three_receivers_with_recv_batch_get_each_message_once(void **state)
{
    (void)state;
    const enum recv_mode modes[3] = {MODE_BATCH, MODE_BATCH, MODE_BATCH};
    run_competing(modes, 3, 0, 20000, 64);
}

static void mixed_recv_and_batch_on_tiny_queue(void **state)
{
    (void)state;
    const enum recv_mode modes[4] = {MODE_RECV, MODE_BATCH, MODE_RECV, MODE_BATCH};
    run_competing(modes, 4, 0, 20000, 2);
}

/* Several publisher threads and several receivers: the sequence numbers
 * 1..N are each delivered exactly once. */
static void three_publishers_four_receivers_get_each_message_once(void **state)
{
    (void)state;
    const enum recv_mode modes[4] = {MODE_BATCH, MODE_RECV, MODE_BATCH, MODE_RECV};
    run_competing(modes, 4, 3, 15000, 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(four_receivers_with_recv_get_each_message_once),
        cmocka_unit_test(three_receivers_with_recv_batch_get_each_message_once),
        cmocka_unit_test(mixed_recv_and_batch_on_tiny_queue),
        cmocka_unit_test(three_publishers_four_receivers_get_each_message_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
