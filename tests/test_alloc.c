/*
 * test_alloc.c - the allocator hooks: counted, complete and sufficient.
 *
 *  (a) no allocation per message once warm;
 *  (b) rbus_destroy gives back every block the bus took through its hooks;
 *  (c) nothing bypasses the hooks: this executable is linked with
 *      -Wl,--wrap=malloc,calloc,realloc,free,aligned_alloc,posix_memalign,
 *      so every call of those functions made by the static library (and by
 *      this file) lands in the __wrap_ functions below. A call counts as a
 *      bypass when it happens on a thread that is inside a ringbus call
 *      (the thread-local window tl_in_bus, opened around every ringbus call
 *      this file makes, and left open while a worker thread exits so that
 *      the library's thread-exit cleanup is measured too) and not inside one
 *      of our allocator hooks (tl_in_hook). libc's own internals (pthread,
 *      stdio, eventfd) are not wrapped: they live in libc.so;
 *  (d) out of memory: one scenario (topics, every policy, keyed and
 *      unkeyed publishes in many size classes, receives, unsubscribe with
 *      messages queued, close, destroy) against a model of every
 *      subscription, run once for every allocation k it makes, twice: with
 *      only the k-th allocation failing, and with every allocation from the
 *      k-th on failing until the call that met it returns (and again all
 *      through rbus_destroy). Each call that fails says -ENOMEM, leaves its
 *      out parameter NULL and changes nothing the stats can see, a retry
 *      succeeds, nothing queued is lost, unsubscribe and close never
 *      allocate, destroy gives back every block, and no error path
 *      allocates outside the hooks.
 *
 * Every allocator here is the counting one of test_util.h, on top of the
 * real malloc and free (the wrapped ones would count as bypasses).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

/* ------------------------------------------------------ the --wrap layer */

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *ptr, size_t size);
void __real_free(void *ptr);
void *__real_aligned_alloc(size_t align, size_t size);
int __real_posix_memalign(void **out, size_t align, size_t size);

void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *ptr, size_t size);
void __wrap_free(void *ptr);
void *__wrap_aligned_alloc(size_t align, size_t size);
int __wrap_posix_memalign(void **out, size_t align, size_t size);

enum { W_MALLOC, W_CALLOC, W_REALLOC, W_FREE, W_ALIGNED, W_POSIX_MEMALIGN, W_COUNT };
static const char *const wrap_names[W_COUNT] = {"malloc",        "calloc", "realloc", "free",
                                                "aligned_alloc", "posix_memalign"};

/* volatile: the compiler knows malloc and free touch no program variable,
 * and would otherwise move these counters across such calls. */
static _Thread_local volatile int tl_in_bus;  /* > 0: a ringbus call runs here */
static _Thread_local volatile int tl_in_hook; /* > 0: inside an allocator hook */
static atomic_llong stray[W_COUNT];
static atomic_uintptr_t stray_first_caller;
static atomic_int stray_first_fn = -1;

static void note_wrapped(int fn, void *caller)
{
    if (tl_in_bus > 0 && tl_in_hook == 0) {
        if (atomic_fetch_add(&stray[fn], 1) == 0) {
            uintptr_t expect = 0;
            if (atomic_compare_exchange_strong(&stray_first_caller, &expect,
                                               (uintptr_t)caller))
                atomic_store(&stray_first_fn, fn);
        }
    }
}

void *__wrap_malloc(size_t size)
{
    note_wrapped(W_MALLOC, __builtin_return_address(0));
    return __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size)
{
    note_wrapped(W_CALLOC, __builtin_return_address(0));
    return __real_calloc(n, size);
}

void *__wrap_realloc(void *ptr, size_t size)
{
    note_wrapped(W_REALLOC, __builtin_return_address(0));
    return __real_realloc(ptr, size);
}

void __wrap_free(void *ptr)
{
    note_wrapped(W_FREE, __builtin_return_address(0));
    __real_free(ptr);
}

void *__wrap_aligned_alloc(size_t align, size_t size)
{
    note_wrapped(W_ALIGNED, __builtin_return_address(0));
    return __real_aligned_alloc(align, size);
}

int __wrap_posix_memalign(void **out, size_t align, size_t size)
{
    note_wrapped(W_POSIX_MEMALIGN, __builtin_return_address(0));
    return __real_posix_memalign(out, align, size);
}

/* Runs one ringbus call inside the measured window. */
#define IN_BUS(stmt)                                                                   \
    do {                                                                               \
        tl_in_bus++;                                                                   \
        atomic_signal_fence(memory_order_seq_cst);                                     \
        stmt;                                                                          \
        atomic_signal_fence(memory_order_seq_cst);                                     \
        tl_in_bus--;                                                                   \
    } while (0)

static long long stray_total(void)
{
    long long n = 0;
    for (int i = 0; i < W_COUNT; i++)
        n += atomic_load(&stray[i]);
    return n;
}

static void stray_reset(void)
{
    for (int i = 0; i < W_COUNT; i++)
        atomic_store(&stray[i], 0);
    atomic_store(&stray_first_caller, 0);
    atomic_store(&stray_first_fn, -1);
}

static void assert_no_stray(const char *where)
{
    long long n = stray_total();
    if (n == 0)
        return;
    for (int i = 0; i < W_COUNT; i++)
        if (atomic_load(&stray[i]) != 0)
            print_error("%s: %lld %s call(s) inside ringbus calls bypassed the hooks\n", where,
                        (long long)atomic_load(&stray[i]), wrap_names[i]);
    uintptr_t caller = atomic_load(&stray_first_caller);
    int fn = atomic_load(&stray_first_fn);
    Dl_info info;
    if (caller != 0 && dladdr((void *)caller, &info) != 0) {
        print_error("first: %s called from %s+%#lx (%s, offset %#lx in the object)\n",
                    fn >= 0 ? wrap_names[fn] : "?", info.dli_sname ? info.dli_sname : "?",
                    info.dli_saddr ? (unsigned long)(caller - (uintptr_t)info.dli_saddr) : 0UL,
                    info.dli_fname ? info.dli_fname : "?",
                    (unsigned long)(caller - (uintptr_t)info.dli_fbase));
    }
    fail();
}

/* ------------------------------------------------- the counting allocator */

/* Underneath the shared counting allocator: the real malloc and free,
 * marked as "inside a hook" so that the wrap layer does not count them. */
static void *hook_malloc(size_t size)
{
    tl_in_hook++;
    void *p = __real_malloc(size);
    tl_in_hook--;
    return p;
}

static void hook_free(void *ptr)
{
    tl_in_hook++;
    __real_free(ptr);
    tl_in_hook--;
}

static const char *alloc_label; /* for alloc_print: the test that runs */

static void alloc_init(struct rbus_test_alloc *a, const char *label)
{
    rbus_test_alloc_init(a);
    a->raw_alloc = hook_malloc;
    a->raw_free = hook_free;
    alloc_label = label;
}

static void alloc_print(struct rbus_test_alloc *a, const char *when)
{
    printf("alloc: [%s] %s: %lld allocs, %lld frees, live %lld blocks / %lld bytes, "
           "peak %lld bytes, injected failures %lld\n",
           alloc_label, when, (long long)atomic_load(&a->calls), (long long)atomic_load(&a->frees),
           (long long)atomic_load(&a->live_blocks), (long long)atomic_load(&a->live_bytes),
           (long long)atomic_load(&a->peak_bytes), (long long)atomic_load(&a->injected));
}

static rbus *make_bus(struct rbus_test_alloc *c, uint32_t default_capacity)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &c->hooks;
    if (default_capacity)
        cfg.default_capacity = default_capacity;
    rbus *bus = NULL;
    int rc;
    IN_BUS(rc = rbus_create(&bus, &cfg));
    assert_rbus_ok(rc);
    assert_non_null(bus);
    return bus;
}

static rbus_sub *make_sub(rbus *bus, const char *pattern, rbus_overflow policy,
                          uint32_t capacity, const char *name)
{
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = capacity;
    o.overflow = policy;
    o.name = name;
    rbus_sub *sub = NULL;
    int rc;
    IN_BUS(rc = rbus_subscribe(bus, pattern, &o, &sub));
    assert_rbus_ok(rc);
    assert_non_null(sub);
    return sub;
}

static rbus_topic *open_topic(rbus *bus, const char *name)
{
    rbus_topic *t = NULL;
    int rc;
    IN_BUS(rc = rbus_topic_open(bus, name, &t));
    assert_rbus_ok(rc);
    assert_non_null(t);
    return t;
}

/* ------------------------------------------- (a) steady state, (c) bypass */

#define SS_PUBS 2
#define SS_PER_ROUND 400 /* per publisher; 2 x 400 fits the BLOCK sub's 1024 */
#define SS_NTOPICS 3
#define SS_NSUBS 3
#define SS_NRECV 4

static const uint32_t ss_sizes[] = {16, 24, 64, 100, 256, 512, 700, 1024, 2000, 3000, 4096};
#define SS_NSIZES (sizeof ss_sizes / sizeof ss_sizes[0])
static const char *const ss_topic_names[SS_NTOPICS] = {"alloc.data", "alloc.other",
                                                       "alloc.deep.x"};

struct ss_header {
    uint32_t pub;
    uint32_t index;
    uint32_t round;
    uint32_t size;
};

struct ss_state {
    rbus *bus;
    rbus_topic *topics[SS_NTOPICS];
    rbus_sub *subs[SS_NSUBS];
    uint32_t sub_topic_mask[SS_NSUBS];
    atomic_uint pub_gen;    /* publishers run round pub_gen - 1 */
    atomic_uint pub_done;   /* publisher-rounds finished */
    atomic_uint drain_gen;  /* receivers drain to empty when it moves */
    atomic_uint drain_done; /* receiver drains finished */
    atomic_bool quit;
    atomic_ullong received[SS_NSUBS];
    uint64_t published[SS_NTOPICS]; /* by the main thread's bookkeeping */
};

struct ss_worker {
    struct ss_state *st;
    uint32_t id;  /* publisher id, or receiver's sub index */
    bool batch;
    pthread_t thread;
};

static uint32_t ss_size(uint32_t pub, uint32_t i)
{
    return ss_sizes[(i * 5 + pub * 3) % SS_NSIZES];
}

/* Publisher 1 publishes runs of SS_RUN messages to one topic with
 * rbus_publish_batch; publisher 0 one message at a time. */
#define SS_RUN 8

static uint32_t ss_topic(uint32_t pub, uint32_t i)
{
    return (pub == 1 ? i / SS_RUN + pub : i + pub) % SS_NTOPICS;
}

static void *ss_publisher(void *arg)
{
    struct ss_worker *w = arg;
    struct ss_state *st = w->st;
    unsigned char *buf = malloc(4096 * SS_RUN);
    if (buf == NULL) {
        rbus_test_report("publisher: no buffer");
        return NULL;
    }
    rbus_payload run[SS_RUN];
    unsigned done_gen = 0;
    for (;;) {
        unsigned gen = atomic_load(&st->pub_gen);
        if (gen == done_gen) {
            if (atomic_load(&st->quit))
                break;
            rbus_test_sleep_us(20);
            continue;
        }
        for (uint32_t i = 0; i < SS_PER_ROUND; i++) {
            struct ss_header h = {w->id, i, gen, ss_size(w->id, i)};
            unsigned char *p = buf + (size_t)(i % SS_RUN) * 4096;
            memset(p, (int)((w->id + i + gen) & 0xff), h.size);
            memcpy(p, &h, sizeof h);
            int rc = 0;
            rbus_topic *t = st->topics[ss_topic(w->id, i)];
            if (w->id != 1) {
                IN_BUS(rc = rbus_publish(t, p, h.size));
            } else {
                run[i % SS_RUN] = (rbus_payload){p, h.size};
                if (i % SS_RUN == SS_RUN - 1) {
                    IN_BUS(rc = rbus_publish_batch(t, run, SS_RUN, NULL, NULL));
                    rc = rc == SS_RUN ? 0 : rc < 0 ? rc : -EIO;
                }
            }
            if (rc != 0)
                rbus_test_report("publisher %u round %u #%u: %d (%s)", w->id, gen, i, rc,
                                 rbus_strerror(rc));
        }
        done_gen = gen;
        atomic_fetch_add(&st->pub_done, 1);
    }
    free(buf);
    /* Leave the window open: whatever the library does when this thread
     * exits is measured as well. */
    tl_in_bus++;
    return NULL;
}

static void ss_check(struct ss_worker *w, const rbus_msg *m)
{
    struct ss_header h;
    size_t size = rbus_msg_size(m);
    const unsigned char *d = rbus_msg_data(m);
    if (size < sizeof h) {
        rbus_test_report("sub %u: short message %zu", w->id, size);
        return;
    }
    memcpy(&h, d, sizeof h);
    if (h.pub >= SS_PUBS || h.index >= SS_PER_ROUND || h.size != size ||
        ss_size(h.pub, h.index) != size) {
        rbus_test_report("sub %u: bad header pub %u index %u size %u/%zu", w->id, h.pub, h.index,
                         h.size, size);
        return;
    }
    unsigned char fill = (unsigned char)((h.pub + h.index + h.round) & 0xff);
    if (size > sizeof h && (d[size - 1] != fill || d[sizeof h + (size - sizeof h) / 2] != fill))
        rbus_test_report("sub %u: payload of (pub %u, round %u, #%u) overwritten", w->id, h.pub,
                         h.round, h.index);
    const char *tn = rbus_msg_topic(m);
    if (tn == NULL || strcmp(tn, ss_topic_names[ss_topic(h.pub, h.index)]) != 0)
        rbus_test_report("sub %u: wrong topic %s", w->id, tn ? tn : "(null)");
}

static void *ss_receiver(void *arg)
{
    struct ss_worker *w = arg;
    struct ss_state *st = w->st;
    rbus_sub *sub = st->subs[w->id];
    rbus_msg *msgs[32];
    unsigned drained = 0;
    for (;;) {
        unsigned dgen = atomic_load(&st->drain_gen);
        bool draining = dgen != drained;
        int n;
        if (w->batch) {
            IN_BUS(n = rbus_recv_batch(sub, msgs, 32, draining ? 0 : 1000000));
        } else {
            IN_BUS(n = rbus_recv(sub, &msgs[0], draining ? 0 : 1000000));
            if (n == 0)
                n = 1;
        }
        if (n > 0) {
            for (int i = 0; i < n; i++) {
                ss_check(w, msgs[i]);
                IN_BUS(rbus_msg_release(msgs[i]));
            }
            atomic_fetch_add(&st->received[w->id], (uint64_t)n);
            continue;
        }
        if (n == -EAGAIN && draining) {
            drained = dgen;
            atomic_fetch_add(&st->drain_done, 1);
            continue;
        }
        if (n == -ETIMEDOUT || n == -EAGAIN) {
            if (atomic_load(&st->quit))
                break;
            continue;
        }
        rbus_test_report("sub %u: receive: %d (%s)", w->id, n, rbus_strerror(n));
        break;
    }
    tl_in_bus++; /* measure thread exit, see ss_publisher */
    return NULL;
}

static void wait_for(atomic_uint *v, unsigned want)
{
    while (atomic_load(v) < want) {
        if (rbus_test_error_count() != 0)
            break;
        rbus_test_sleep_us(50);
    }
}

/* Runs one round: both publishers publish SS_PER_ROUND each, then every
 * receiver drains its subscription to empty and releases what it took. */
static void ss_round(struct ss_state *st, unsigned round, bool receivers_running)
{
    atomic_store(&st->pub_gen, round);
    wait_for(&st->pub_done, round * SS_PUBS);
    for (uint32_t p = 0; p < SS_PUBS; p++)
        for (uint32_t i = 0; i < SS_PER_ROUND; i++)
            st->published[ss_topic(p, i)]++;
    if (receivers_running) {
        atomic_store(&st->drain_gen, round);
        wait_for(&st->drain_done, round * SS_NRECV);
    }
}

static void test_alloc_steady_state_no_allocation_per_message(void **state)
{
    (void)state;
    stray_reset();
    static struct rbus_test_alloc ca;
    alloc_init(&ca, "steady");
    const uint64_t warm_msgs = 10000;
    const uint64_t measured_req = rbus_test_scaled(200000, 4000);
    const unsigned warm_rounds = (unsigned)((warm_msgs + SS_PUBS * SS_PER_ROUND - 1) /
                                            (SS_PUBS * SS_PER_ROUND));
    const unsigned measured_rounds = (unsigned)((measured_req + SS_PUBS * SS_PER_ROUND - 1) /
                                                (SS_PUBS * SS_PER_ROUND));
    printf("alloc: steady state: %d publishers (one in batches of %d), rounds of %d messages, "
           "sizes %u..%u B, "
           "warm-up %u rounds (%u msgs), measured %u rounds (%u msgs)\n",
           SS_PUBS, SS_RUN, SS_PUBS * SS_PER_ROUND, ss_sizes[0], ss_sizes[SS_NSIZES - 1],
           warm_rounds, warm_rounds * SS_PUBS * SS_PER_ROUND, measured_rounds,
           measured_rounds * SS_PUBS * SS_PER_ROUND);

    static struct ss_state st;
    memset(&st, 0, sizeof st);
    st.bus = make_bus(&ca, 0);
    for (int t = 0; t < SS_NTOPICS; t++)
        st.topics[t] = open_topic(st.bus, ss_topic_names[t]);
    st.subs[0] = make_sub(st.bus, "alloc.>", RBUS_BLOCK, 1024, "ss-block");
    st.sub_topic_mask[0] = 0x7;
    st.subs[1] = make_sub(st.bus, "alloc.*", RBUS_DROP_OLDEST, 64, "ss-oldest");
    st.sub_topic_mask[1] = 0x3;
    st.subs[2] = make_sub(st.bus, "alloc.data", RBUS_DROP_NEWEST, 64, "ss-newest");
    st.sub_topic_mask[2] = 0x1;

    static struct ss_worker pubs[SS_PUBS], recvs[SS_NRECV];
    for (uint32_t i = 0; i < SS_PUBS; i++) {
        pubs[i].st = &st;
        pubs[i].id = i;
        assert_int_equal(pthread_create(&pubs[i].thread, NULL, ss_publisher, &pubs[i]), 0);
    }
    /* Round 1 runs with no receiver at all: every message of the round is
     * alive at once, which is the most a later round can ever hold. */
    ss_round(&st, 1, false);
    const uint32_t recv_sub[SS_NRECV] = {0, 0, 1, 2};
    const bool recv_batch[SS_NRECV] = {true, false, true, false};
    for (uint32_t i = 0; i < SS_NRECV; i++) {
        recvs[i].st = &st;
        recvs[i].id = recv_sub[i];
        recvs[i].batch = recv_batch[i];
        assert_int_equal(pthread_create(&recvs[i].thread, NULL, ss_receiver, &recvs[i]), 0);
    }
    atomic_store(&st.drain_gen, 1);
    wait_for(&st.drain_done, SS_NRECV);
    for (unsigned r = 2; r <= warm_rounds; r++)
        ss_round(&st, r, true);
    rbus_test_assert_no_thread_errors();

    alloc_print(&ca, "after warm-up");
    const long long allocs_warm = atomic_load(&ca.calls);
    const long long bytes_warm = atomic_load(&ca.live_bytes);
    unsigned first_alloc_round = 0;
    for (unsigned r = warm_rounds + 1; r <= warm_rounds + measured_rounds; r++) {
        ss_round(&st, r, true);
        if (first_alloc_round == 0 && atomic_load(&ca.calls) != allocs_warm)
            first_alloc_round = r;
    }
    alloc_print(&ca, "after measured rounds");
    atomic_store(&st.quit, true);
    for (uint32_t i = 0; i < SS_PUBS; i++)
        assert_int_equal(pthread_join(pubs[i].thread, NULL), 0);
    for (uint32_t i = 0; i < SS_NRECV; i++)
        assert_int_equal(pthread_join(recvs[i].thread, NULL), 0);
    rbus_test_assert_no_thread_errors();

    if (first_alloc_round != 0)
        print_error("allocation in steady state: first in round %u (%lld -> %lld allocs)\n",
                    first_alloc_round, allocs_warm, (long long)atomic_load(&ca.calls));
    assert_int_equal(atomic_load(&ca.calls), allocs_warm);
    assert_int_equal(atomic_load(&ca.live_bytes), bytes_warm);

    /* Exact bookkeeping for every subscription. */
    for (int s = 0; s < SS_NSUBS; s++) {
        rbus_sub_stats ss;
        int rc;
        IN_BUS(rc = rbus_sub_stats_get(st.subs[s], &ss));
        assert_rbus_ok(rc);
        uint64_t want = 0;
        for (int t = 0; t < SS_NTOPICS; t++)
            if (st.sub_topic_mask[s] & (1u << t))
                want += st.published[t];
        printf("alloc:   sub %d: offered %llu received %llu dropped newest %llu oldest %llu\n", s,
               (unsigned long long)ss.offered, (unsigned long long)ss.received,
               (unsigned long long)ss.dropped_newest, (unsigned long long)ss.dropped_oldest);
        rbus_test_check_accounting(&ss);
        assert_int_equal(ss.offered, want);
        assert_int_equal(ss.depth, 0);
        assert_int_equal(ss.received, atomic_load(&st.received[s]));
        if (s == 0)
            assert_int_equal(ss.received, want);
    }
    IN_BUS(rbus_destroy(st.bus));
    alloc_print(&ca, "after destroy");
    rbus_test_alloc_assert_all_returned(&ca);
    assert_no_stray("steady state");
}

/* ------------------------------------------- (b) destroy frees everything */

static void test_alloc_destroy_frees_everything_left_behind(void **state)
{
    (void)state;
    stray_reset();
    static struct rbus_test_alloc ca;
    alloc_init(&ca, "leftovers");
    rbus *bus = make_bus(&ca, 128);
    rbus_topic *ta = open_topic(bus, "left.a");
    rbus_topic *tb = open_topic(bus, "left.b.c");
    for (int i = 0; i < 40; i++) {
        char name[32];
        snprintf(name, sizeof name, "left.many.t%d", i);
        (void)open_topic(bus, name);
    }
    rbus_sub *s_block = make_sub(bus, "left.>", RBUS_BLOCK, 256, "left-block");
    rbus_sub *s_oldest = make_sub(bus, "left.*", RBUS_DROP_OLDEST, 8, NULL);
    rbus_sub *s_newest = make_sub(bus, "left.b.c", RBUS_DROP_NEWEST, 8, "n");
    rbus_sub *s_closed = make_sub(bus, ">", RBUS_DROP_OLDEST, 0, "closed-not-unsubscribed");
    rbus_sub *s_gone = make_sub(bus, "left.a", RBUS_DROP_NEWEST, 16, "gone");
    int rc;
    IN_BUS(rc = rbus_sub_fd(s_block));
    assert_true(rc >= 0);
    IN_BUS(rc = rbus_sub_fd(s_gone));
    assert_true(rc >= 0);
    /* Messages of several sizes, keyed ones (dedup memory), queued and never
     * received; drops on the small subscriptions. */
    char buf[3000];
    memset(buf, 'x', sizeof buf);
    for (int i = 0; i < 120; i++) {
        char key[16];
        int klen = snprintf(key, sizeof key, "k%d", i % 50);
        rbus_pub_opts po;
        memset(&po, 0, sizeof po);
        po.key = key;
        po.key_len = (size_t)klen;
        po.order_key = "ord";
        po.order_key_len = 3;
        po.timeout_ns = -1; /* never wait: the BLOCK sub (cap 256) has room anyway */
        rbus_pub_result res;
        IN_BUS(rc = rbus_publish_ex(i % 2 ? ta : tb, buf, (size_t)(i * 23) % sizeof buf, &po,
                                    &res));
        assert_true(rc == 0 || rc == RBUS_DUPLICATE);
        IN_BUS(rc = rbus_publish(ta, buf, (size_t)i));
        assert_rbus_ok(rc);
    }
    /* One message taken, referenced twice, released twice. */
    rbus_msg *m = NULL;
    IN_BUS(rc = rbus_recv(s_block, &m, 0));
    assert_rbus_ok(rc);
    rbus_msg *m2;
    IN_BUS(m2 = rbus_msg_ref(m));
    assert_ptr_equal(m2, m);
    IN_BUS(rbus_msg_release(m));
    IN_BUS(rbus_msg_release(m2));
    IN_BUS(rc = rbus_sub_close(s_closed));
    assert_rbus_ok(rc);
    IN_BUS(rc = rbus_unsubscribe(s_gone));
    assert_rbus_ok(rc);
    rbus_sub_stats st;
    IN_BUS(rc = rbus_sub_stats_get(s_block, &st));
    assert_rbus_ok(rc);
    assert_true(st.depth > 0);
    (void)s_oldest;
    (void)s_newest;
    alloc_print(&ca, "before destroy (subs open, messages queued)");
    assert_true(atomic_load(&ca.live_blocks) > 0);
    /* Destroy without close, with subscriptions open and messages queued. */
    IN_BUS(rbus_destroy(bus));
    alloc_print(&ca, "after destroy");
    rbus_test_alloc_assert_all_returned(&ca);
    assert_no_stray("destroy with leftovers");
}

/* ----------------------------------------- (c) every call, hooks only */

struct api_thread {
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    int publish_rc;
    int recv_rc;
};

static void *api_thread_main(void *arg)
{
    struct api_thread *a = arg;
    uint32_t v = 7;
    rbus_topic *t2 = NULL;
    int rc;
    IN_BUS(rc = rbus_topic_open(a->bus, "api.thread", &t2));
    if (rc != 0)
        rbus_test_report("thread topic_open: %d", rc);
    IN_BUS(a->publish_rc = rbus_publish(a->topic, &v, sizeof v));
    if (t2 != NULL)
        IN_BUS(rc = rbus_publish(t2, &v, sizeof v));
    rbus_msg *m = NULL;
    IN_BUS(a->recv_rc = rbus_recv(a->sub, &m, -1));
    IN_BUS(rbus_msg_release(m));
    tl_in_bus++; /* the library's thread-exit cleanup is measured too */
    return NULL;
}

/* The measurement itself works: a malloc/free made inside a window (here
 * by this file) is seen, one made outside is not. */
static void api_probe_the_wrap_layer(void)
{
    stray_reset();
    void *volatile probe;
    IN_BUS(probe = malloc(8));
    IN_BUS(free(probe));
    probe = malloc(8);
    free(probe);
    assert_int_equal(atomic_load(&stray[W_MALLOC]), 1);
    assert_int_equal(atomic_load(&stray[W_FREE]), 1);
    stray_reset();
}

/* The duplicate publish's outcome, checked at the end so that a dedup
 * failure does not hide what the test is about. */
struct api_dup {
    int rc;
    bool flag;
    uint64_t published, duplicates;
};

/* Publishes with every option, sizes up to a 64 KiB payload and one past
 * max_payload, and the same key twice. */
static void api_publish(rbus_topic *t, rbus_topic *t_late, struct api_dup *dup)
{
    int rc;
    static char data[70000];
    memset(data, 'a', sizeof data);
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.key = "idem-1";
    po.key_len = 6;
    po.order_key = "order";
    po.order_key_len = 5;
    po.origin = 42;
    rbus_pub_result res;
    IN_BUS(rc = rbus_publish_ex(t, data, 100, &po, &res));
    assert_rbus_ok(rc);
    assert_int_equal(res.matched, 3);
    IN_BUS(rc = rbus_publish_ex(t, data, 100, &po, &res));
    dup->rc = rc;
    dup->flag = res.duplicate;
    IN_BUS(rc = rbus_publish(t, data, 0));
    assert_rbus_ok(rc);
    IN_BUS(rc = rbus_publish(t, NULL, 0));
    assert_rbus_ok(rc);
    IN_BUS(rc = rbus_publish(t_late, data, 4096));
    assert_rbus_ok(rc);
    IN_BUS(rc = rbus_publish(t_late, data, 65537));
    assert_rbus_rc(rc, -EMSGSIZE);
}

/* Every accessor of a received message. */
static void api_inspect_one(rbus_sub *s1)
{
    int rc;
    rbus_msg *m = NULL;
    IN_BUS(rc = rbus_recv(s1, &m, 0));
    assert_rbus_ok(rc);
    size_t klen = 0;
    const void *k;
    IN_BUS(k = rbus_msg_key(m, &klen));
    assert_non_null(k);
    assert_int_equal(klen, 6);
    IN_BUS(k = rbus_msg_order_key(m, &klen));
    assert_non_null(k);
    assert_int_equal(klen, 5);
    uint32_t origin;
    IN_BUS(origin = rbus_msg_origin(m));
    assert_int_equal(origin, 42);
    uint64_t seq;
    IN_BUS(seq = rbus_msg_seq(m));
    assert_int_equal(seq, 1);
    const char *tn;
    IN_BUS(tn = rbus_msg_topic(m));
    assert_string_equal(tn, "api.one");
    uint64_t ts;
    IN_BUS(ts = rbus_msg_time_ns(m));
    assert_true(ts > 0);
    uint32_t att;
    IN_BUS(att = rbus_msg_attempt(m));
    assert_int_equal(att, 1);
    IN_BUS(tn = rbus_msg_origin_topic(m));
    assert_null(tn);
    IN_BUS(rbus_msg_release(m));
}

/* Batches and single receives on every subscription, and the stats. */
static void api_drain(rbus_topic *t, rbus_sub *s1, rbus_sub *s2, rbus_sub *s3, struct api_dup *dup)
{
    int rc;
    rbus_msg *m = NULL;
    rbus_msg *batch[8];
    IN_BUS(rc = rbus_recv_batch(s1, batch, 8, 0));
    assert_int_equal(rc, 3);
    for (int i = 0; i < rc; i++)
        IN_BUS(rbus_msg_release(batch[i]));
    IN_BUS(rc = rbus_recv_batch(s2, batch, 8, 0));
    assert_true(rc >= 1);
    for (int i = 0; i < rc; i++)
        IN_BUS(rbus_msg_release(batch[i]));
    IN_BUS(rc = rbus_recv(s3, &m, 0));
    assert_rbus_ok(rc);
    IN_BUS(rbus_msg_release(m));

    rbus_sub_stats ss;
    IN_BUS(rc = rbus_sub_stats_get(s2, &ss));
    assert_rbus_ok(rc);
    rbus_topic_stats tst;
    IN_BUS(rc = rbus_topic_stats_get(t, &tst));
    assert_rbus_ok(rc);
    dup->published = tst.published;
    dup->duplicates = tst.duplicates;
}

/* A thread that opens a topic, publishes, receives, and exits. */
static void api_from_another_thread(rbus *bus, rbus_topic *t, rbus_sub *s1)
{
    static struct api_thread at;
    at.bus = bus;
    at.topic = t;
    at.sub = s1;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, api_thread_main, &at), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    rbus_test_assert_no_thread_errors();
    assert_rbus_ok(at.publish_rc);
    assert_rbus_ok(at.recv_rc);
}

/* Subscriptions come and go after topics exist (list rebuilds), then the
 * bus closes. */
static void api_churn_and_close(rbus *bus, rbus_topic *t, rbus_sub *s2, rbus_sub *s3)
{
    static const char data[10] = "churn";
    int rc;
    for (int i = 0; i < 20; i++) {
        rbus_sub *tmp = make_sub(bus, i % 2 ? "api.>" : "api.one", RBUS_BLOCK, 4, "tmp");
        IN_BUS(rc = rbus_publish(t, data, 10));
        assert_rbus_ok(rc);
        if (i % 3 == 0)
            IN_BUS(rc = rbus_sub_fd(tmp));
        if (i % 2 == 0)
            IN_BUS(rc = rbus_sub_close(tmp));
        IN_BUS(rc = rbus_unsubscribe(tmp));
        assert_rbus_ok(rc);
    }
    IN_BUS(rc = rbus_sub_close(s3));
    assert_rbus_ok(rc);
    IN_BUS(rc = rbus_unsubscribe(s3));
    assert_rbus_ok(rc);
    IN_BUS(rbus_close(bus));
    IN_BUS(rc = rbus_publish(t, data, 1));
    assert_rbus_rc(rc, -ESHUTDOWN);
    IN_BUS(rc = rbus_unsubscribe(s2));
    assert_rbus_ok(rc);
}

static void test_alloc_every_call_goes_through_the_hooks(void **state)
{
    (void)state;
    api_probe_the_wrap_layer();
    static struct rbus_test_alloc ca;
    alloc_init(&ca, "api");
    rbus *bus = make_bus(&ca, 0);
    rbus_topic *t = open_topic(bus, "api.one");
    rbus_topic *t_again = open_topic(bus, "api.one");
    assert_ptr_equal(t, t_again);
    rbus_sub *s1 = make_sub(bus, "api.>", RBUS_BLOCK, 64, "api-block");
    rbus_sub *s2 = make_sub(bus, "api.*", RBUS_DROP_OLDEST, 2, "api-oldest");
    rbus_sub *s3 = make_sub(bus, "*.one", RBUS_DROP_NEWEST, 2, NULL);
    rbus_topic *t_late = open_topic(bus, "api.late.topic");
    int rc;
    int fd;
    IN_BUS(fd = rbus_sub_fd(s1));
    assert_true(fd >= 0);
    IN_BUS(rc = rbus_sub_fd(s1));
    assert_int_equal(rc, fd);

    struct api_dup dup;
    api_publish(t, t_late, &dup);
    api_inspect_one(s1);
    api_drain(t, s1, s2, s3, &dup);
    api_from_another_thread(bus, t, s1);
    api_churn_and_close(bus, t, s2, s3);
    IN_BUS(rbus_destroy(bus));
    alloc_print(&ca, "after destroy");
    rbus_test_alloc_assert_all_returned(&ca);
    assert_no_stray("every call");
    /* Idempotency: the same key on the same topic was a duplicate. */
    assert_rbus_rc(dup.rc, RBUS_DUPLICATE);
    assert_true(dup.flag);
    assert_int_equal(dup.published, 3);
    assert_int_equal(dup.duplicates, 1);
}

/* ------------------------------------------------------- (d) out of memory */

/* The model */

#define NTOPICS 6
#define NSUBS 7
#define MAX_MSGS 1024 /* accepted publishes per scenario, bound */
#define NSIZES 13

static const char *const topic_names[NTOPICS] = {"af.a", "af.b.c",  "af.d",
                                                 "ov.x", "af.late", "af.new"};
/* Payload sizes: with the keys they land in size classes 64 B .. 64 KiB. */
static const uint32_t sizes[NSIZES] = {0,    1,    16,   60,   100,   200,  500,
                                       1000, 2000, 5000, 9000, 20000, 40000};

/* One accepted message, identified by (topic, seq). */
struct mmsg {
    uint32_t topic;
    uint64_t seq;
    uint32_t size;
    int key; /* key number, -1 = none */
    bool order_key;
    uint32_t origin;
};

struct msub {
    rbus_sub *sub;
    const char *label;
    const char *pattern;
    rbus_overflow policy;
    uint32_t cap;         /* effective, from the stats */
    bool exists;          /* subscribed, not yet unsubscribed */
    bool open;            /* not closed: publishers deliver */
    uint32_t q[MAX_MSGS]; /* message indexes, FIFO: q[head..tail) */
    uint32_t head, tail;
    uint64_t offered, received, dnew, dold, dtime;
};

struct scen {
    struct rbus_test_alloc *fa;
    long long k;     /* the (first) failing call; 0 = none */
    bool persistent; /* every call from the k-th on fails, not only the k-th */
    rbus *bus;
    rbus_topic *topics[NTOPICS];
    uint64_t accepted[NTOPICS];
    uint64_t dups[NTOPICS];
    int last_key[NTOPICS]; /* an accepted key on the topic, -1 = none yet */
    int next_key;
    struct msub subs[NSUBS];
    struct mmsg msgs[MAX_MSGS];
    uint32_t nmsgs;
    uint32_t npub; /* publishes attempted (drives sizes and options) */
    rbus_msg *held[16];
    unsigned nheld;
    /* what happened, for the report */
    const char *failed_call; /* the call that returned -ENOMEM, if any */
    const char *absorbed_by; /* the call that met the failure and still succeeded */
    uint64_t n_received, n_dropped, n_queued_at_unsub, n_queued_at_destroy;
};

static uint32_t depth_of(const struct msub *m)
{
    return m->tail - m->head;
}

static long long injected(const struct scen *s)
{
    return atomic_load(&s->fa->injected);
}

static void failures_off(struct scen *s)
{
    atomic_store(&s->fa->fail_at, 0);
    atomic_store(&s->fa->budget, -1);
}

/*
 * The verdict on one call that returned rc, where `want` is what it returns
 * without a failure. Returns true when it failed with -ENOMEM because of
 * the injected failure: then failures are switched off and the caller
 * checks that nothing changed and retries. Anything else fails the test.
 */
static bool failed_here(struct scen *s, long long inj_before, const char *what, int rc, int want)
{
    bool inj = injected(s) != inj_before;
    if (rc == want) {
        if (inj)
            s->absorbed_by = what;
        return false;
    }
    if (rc == -ENOMEM && inj) {
        if (s->failed_call != NULL) {
            print_error("k=%lld: a second -ENOMEM (%s after %s)\n", s->k, what, s->failed_call);
            fail();
        }
        s->failed_call = what;
        failures_off(s);
        return true;
    }
    print_error("k=%lld: %s returned %d (%s), want %d (%s); failure injected during it: %s\n", s->k,
                what, rc, rbus_strerror(rc), want, rbus_strerror(want), inj ? "yes" : "no");
    fail();
    return false;
}

static bool sub_matches(const struct msub *m, uint32_t topic)
{
    return rbus_pattern_match(m->pattern, topic_names[topic]);
}

static uint32_t model_subscriptions(const struct scen *s, uint32_t topic)
{
    uint32_t n = 0;
    for (int i = 0; i < NSUBS; i++)
        if (s->subs[i].exists && s->subs[i].open && sub_matches(&s->subs[i], topic))
            n++;
    return n;
}

/* Every counter the library shows equals the model's. */
static void compare_sub(struct scen *s, struct msub *m)
{
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(m->sub, &st));
    if (st.offered != m->offered || st.received != m->received || st.depth != depth_of(m) ||
        st.dropped_newest != m->dnew || st.dropped_oldest != m->dold ||
        st.dropped_timeout != m->dtime || st.dropped_closed != 0 || st.capacity != m->cap) {
        print_error("k=%lld (failed: %s): sub %s: offered %llu received %llu depth %u newest "
                    "%llu oldest %llu timeout %llu closed %llu cap %u; model: %llu %llu %u "
                    "%llu %llu %llu 0 cap %u\n",
                    s->k, s->failed_call ? s->failed_call : "-", m->label,
                    (unsigned long long)st.offered, (unsigned long long)st.received, st.depth,
                    (unsigned long long)st.dropped_newest, (unsigned long long)st.dropped_oldest,
                    (unsigned long long)st.dropped_timeout, (unsigned long long)st.dropped_closed,
                    st.capacity, (unsigned long long)m->offered, (unsigned long long)m->received,
                    depth_of(m), (unsigned long long)m->dnew, (unsigned long long)m->dold,
                    (unsigned long long)m->dtime, m->cap);
        fail();
    }
    rbus_test_check_accounting(&st);
}

static void compare_topic(struct scen *s, uint32_t t)
{
    rbus_topic_stats ts;
    long long inj = injected(s);
    assert_rbus_ok(rbus_topic_stats_get(s->topics[t], &ts));
    if (injected(s) != inj)
        s->absorbed_by = "rbus_topic_stats_get"; /* it falls back to the bus lock */
    uint32_t want_subs = model_subscriptions(s, t);
    if (ts.published != s->accepted[t] || ts.duplicates != s->dups[t] ||
        ts.subscriptions != want_subs) {
        print_error("k=%lld (failed: %s): topic %s: published %llu duplicates %llu "
                    "subscriptions %u; model %llu %llu %u\n",
                    s->k, s->failed_call ? s->failed_call : "-", topic_names[t],
                    (unsigned long long)ts.published, (unsigned long long)ts.duplicates,
                    ts.subscriptions, (unsigned long long)s->accepted[t],
                    (unsigned long long)s->dups[t], want_subs);
        fail();
    }
}

static void compare_all(struct scen *s)
{
    for (int i = 0; i < NSUBS; i++)
        if (s->subs[i].exists)
            compare_sub(s, &s->subs[i]);
    for (uint32_t t = 0; t < NTOPICS; t++)
        if (s->topics[t])
            compare_topic(s, t);
}

/* --------------------------------------------------------------- steps */

static void step_open_topic(struct scen *s, uint32_t t)
{
    rbus_topic *out = (rbus_topic *)&s->bus; /* junk: a failed call must reset it */
    long long inj = injected(s);
    int rc = rbus_topic_open(s->bus, topic_names[t], &out);
    if (failed_here(s, inj, "rbus_topic_open", rc, 0)) {
        assert_null(out);
        compare_all(s);
        assert_rbus_ok(rbus_topic_open(s->bus, topic_names[t], &out));
    }
    assert_non_null(out);
    s->topics[t] = out;
    /* The same name gives the same handle. */
    rbus_topic *again = NULL;
    assert_rbus_ok(rbus_topic_open(s->bus, topic_names[t], &again));
    assert_ptr_equal(again, out);
    compare_topic(s, t);
}

static void step_subscribe(struct scen *s, int i, const char *label, const char *pattern,
                           rbus_overflow policy, uint32_t capacity, int64_t block_timeout_ns)
{
    struct msub *m = &s->subs[i];
    memset(m, 0, sizeof *m);
    m->label = label;
    m->pattern = pattern;
    m->policy = policy;
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = capacity;
    o.overflow = policy;
    o.block_timeout_ns = block_timeout_ns;
    o.name = (i % 2) ? label : NULL;
    rbus_sub *out = (rbus_sub *)&s->bus;
    long long inj = injected(s);
    int rc = rbus_subscribe(s->bus, pattern, &o, &out);
    if (failed_here(s, inj, "rbus_subscribe", rc, 0)) {
        assert_null(out);
        /* Routing untouched: every topic still lists what the model says. */
        compare_all(s);
        assert_rbus_ok(rbus_subscribe(s->bus, pattern, &o, &out));
    }
    assert_non_null(out);
    m->sub = out;
    m->exists = true;
    m->open = true;
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(out, &st));
    assert_true(st.capacity >= capacity);
    m->cap = st.capacity;
    assert_true(m->cap <= MAX_MSGS);
    compare_all(s);
}

/* The payload of message (topic, seq): byte i is (seq * 31 + topic * 101 +
 * i * 7) mod 256. With oom_payload[j] = j * 7 mod 256 that is oom_payload[off + i]
 * for off = (seq * 31 + topic * 101) * 183 mod 256 (183 * 7 = 1 mod 256),
 * so no payload is ever written or compared byte by byte (which costs a lot
 * under the sanitizers). */
static unsigned char oom_payload[40000 + 256];

static void oom_payload_init(void)
{
    for (size_t j = 0; j < sizeof oom_payload; j++)
        oom_payload[j] = (unsigned char)(j * 7u);
}

static const unsigned char *payload_of(uint32_t topic, uint64_t seq)
{
    return oom_payload + (size_t)(((seq * 31u + topic * 101u) * 183u) & 0xffu);
}

static size_t key_text(char *buf, size_t cap, uint32_t topic, int key)
{
    int n = snprintf(buf, cap, "key-%u-%d", (unsigned)topic, key);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

struct pub_job {
    rbus_topic *topic;
    const void *data;
    size_t len;
    const rbus_pub_opts *opts;
    rbus_pub_result *res;
    int rc;
};

static void *pub_job_main(void *arg)
{
    struct pub_job *j = arg;
    tl_in_bus++; /* left open: the library's thread-exit cleanup is checked too */
    j->rc = rbus_publish_ex(j->topic, j->data, j->len, j->opts, j->res);
    return NULL;
}

/* A publish: from this thread, or from a new thread joined at once. */
static int do_publish(rbus_topic *t, const void *data, size_t len, const rbus_pub_opts *opts,
                      rbus_pub_result *res, bool plain, bool in_thread)
{
    if (in_thread) {
        struct pub_job j = {t, data, len, opts, res, 12345};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, pub_job_main, &j), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        return j.rc;
    }
    if (plain)
        return rbus_publish(t, data, len);
    return rbus_publish_ex(t, data, len, opts, res);
}

/*
 * One publish on topic t. key_mode: 0 none, 1 a new key, 2 a key already
 * accepted on t (a duplicate). Applies the outcome to the model and checks
 * the result against it.
 */
static void step_publish(struct scen *s, uint32_t t, int key_mode, bool in_thread)
{
    uint32_t n = s->npub++;
    uint32_t size = sizes[(n * 7u + t) % NSIZES];
    bool dup = key_mode == 2 && s->last_key[t] >= 0;
    int key = -1;
    if (dup)
        key = s->last_key[t];
    else if (key_mode != 0)
        key = s->next_key++;
    char kbuf[32];
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    if (key >= 0) {
        po.key = kbuf;
        po.key_len = key_text(kbuf, sizeof kbuf, t, key);
    }
    bool okey = n % 4 == 1;
    if (okey) {
        po.order_key = "ord";
        po.order_key_len = 3;
    }
    po.origin = n + 1;
    /* A full BLOCK subscription would make a plain publish wait for good
     * (nobody receives meanwhile): such publishes do not wait. */
    bool would_wait = false;
    for (int i = 0; i < NSUBS; i++) {
        struct msub *m = &s->subs[i];
        if (m->exists && m->open && m->policy == RBUS_BLOCK && sub_matches(m, t) &&
            depth_of(m) >= m->cap)
            would_wait = true;
    }
    if (would_wait)
        po.timeout_ns = -1;
    /* Plain rbus_publish now and then, when there are no options to pass. */
    bool plain = !in_thread && key < 0 && !okey && !would_wait && n % 6 == 2;
    if (plain)
        po.origin = 0;

    uint64_t seq = s->accepted[t] + 1;
    const unsigned char *data = payload_of(t, seq);
    rbus_pub_result res;
    memset(&res, 0x5a, sizeof res);
    int want = dup ? RBUS_DUPLICATE : 0;
    long long inj = injected(s);
    int rc = do_publish(s->topics[t], data, size, &po, &res, plain, in_thread);
    const char *what =
        in_thread ? "rbus_publish_ex (other thread)" : (plain ? "rbus_publish" : "rbus_publish_ex");
    if (failed_here(s, inj, what, rc, want)) {
        if (!plain) {
            assert_int_equal(res.matched, 0);
            assert_int_equal(res.queued, 0);
            assert_int_equal(res.dropped, 0);
            assert_int_equal(res.evicted, 0);
            assert_false(res.duplicate);
        }
        /* No sequence number, no key, nothing offered. */
        compare_all(s);
        memset(&res, 0x5a, sizeof res);
        rc = do_publish(s->topics[t], data, size, &po, &res, plain, in_thread);
        assert_rbus_rc(rc, want);
    }
    if (dup) {
        s->dups[t]++;
        if (!plain) {
            assert_true(res.duplicate);
            assert_int_equal(res.matched, 0);
            assert_int_equal(res.queued, 0);
        }
        return;
    }
    /* Accepted: the model offers it to every open matching subscription. */
    assert_true(s->nmsgs < MAX_MSGS);
    uint32_t idx = s->nmsgs++;
    s->msgs[idx] = (struct mmsg){t, seq, size, key, okey, po.origin};
    s->accepted[t] = seq;
    if (key >= 0)
        s->last_key[t] = key;
    uint32_t matched = 0, queued = 0, dropped = 0, evicted = 0;
    for (int i = 0; i < NSUBS; i++) {
        struct msub *m = &s->subs[i];
        if (!m->exists || !m->open || !sub_matches(m, t))
            continue;
        matched++;
        m->offered++;
        if (depth_of(m) < m->cap) {
            m->q[m->tail++] = idx;
            queued++;
            continue;
        }
        switch (m->policy) {
        case RBUS_DROP_NEWEST:
            m->dnew++;
            dropped++;
            s->n_dropped++;
            break;
        case RBUS_DROP_OLDEST:
            m->head++;
            m->dold++;
            evicted++;
            s->n_dropped++;
            m->q[m->tail++] = idx;
            queued++;
            break;
        case RBUS_BLOCK:
        default:
            assert_true(po.timeout_ns < 0);
            m->dtime++;
            dropped++;
            s->n_dropped++;
            break;
        }
    }
    if (!plain) {
        if (res.matched != matched || res.queued != queued || res.dropped != dropped ||
            res.evicted != evicted || res.duplicate) {
            print_error("k=%lld: publish #%u on %s: result matched %u queued %u dropped %u "
                        "evicted %u dup %d; model %u %u %u %u\n",
                        s->k, n, topic_names[t], res.matched, res.queued, res.dropped, res.evicted,
                        (int)res.duplicate, matched, queued, dropped, evicted);
            fail();
        }
    }
}

/* Checks that m is the model's message idx. */
static void check_msg(struct scen *s, const struct msub *sub, const rbus_msg *m, uint32_t idx)
{
    const struct mmsg *want = &s->msgs[idx];
    const char *tn = rbus_msg_topic(m);
    bool ok = tn != NULL && strcmp(tn, topic_names[want->topic]) == 0 &&
              rbus_msg_seq(m) == want->seq && rbus_msg_size(m) == want->size &&
              rbus_msg_origin(m) == want->origin;
    if (ok && want->size)
        ok = memcmp(rbus_msg_data(m), payload_of(want->topic, want->seq), want->size) == 0;
    size_t klen = 999;
    const void *k = rbus_msg_key(m, &klen);
    if (ok && want->key >= 0) {
        char kbuf[32];
        size_t n = key_text(kbuf, sizeof kbuf, want->topic, want->key);
        ok = k != NULL && klen == n && memcmp(k, kbuf, n) == 0;
    } else if (ok) {
        ok = k == NULL && klen == 0;
    }
    size_t olen = 999;
    const void *ok_ptr = rbus_msg_order_key(m, &olen);
    if (ok)
        ok = want->order_key ? (ok_ptr != NULL && olen == 3 && memcmp(ok_ptr, "ord", 3) == 0)
                             : (ok_ptr == NULL && olen == 0);
    if (!ok) {
        print_error("k=%lld (failed: %s): sub %s received %s seq %llu size %zu origin %u; "
                    "want %s seq %llu size %u origin %u (or its payload/keys differ)\n",
                    s->k, s->failed_call ? s->failed_call : "-", sub->label, tn ? tn : "(null)",
                    (unsigned long long)rbus_msg_seq(m), rbus_msg_size(m), rbus_msg_origin(m),
                    topic_names[want->topic], (unsigned long long)want->seq, want->size,
                    want->origin);
        fail();
    }
}

/* Takes up to `count` messages from sub i (batch or one by one), each the
 * model's next; holds on to some of them (released later). */
static void step_receive(struct scen *s, int i, unsigned count, bool batch)
{
    struct msub *m = &s->subs[i];
    unsigned got = 0;
    while (got < count) {
        rbus_msg *msgs[8];
        size_t max = batch ? (count - got < 8 ? count - got : 8) : 1;
        int rc;
        if (batch) {
            rc = rbus_recv_batch(m->sub, msgs, max, 0);
        } else {
            rc = rbus_recv(m->sub, &msgs[0], 0);
            if (rc == 0)
                rc = 1;
        }
        if (depth_of(m) == 0) {
            int want = m->open ? -EAGAIN : -ESHUTDOWN;
            if (rc != want) {
                print_error("k=%lld: receive on %s (model empty) returned %d (%s), want %d\n", s->k,
                            m->label, rc, rbus_strerror(rc), want);
                fail();
            }
            return;
        }
        uint32_t expect = depth_of(m) < max ? depth_of(m) : (uint32_t)max;
        if (rc != (int)expect) {
            print_error("k=%lld (failed: %s): receive on %s returned %d (%s), want %u\n", s->k,
                        s->failed_call ? s->failed_call : "-", m->label, rc, rbus_strerror(rc),
                        expect);
            fail();
        }
        for (int j = 0; j < rc; j++) {
            check_msg(s, m, msgs[j], m->q[m->head++]);
            m->received++;
            s->n_received++;
            if (s->nheld < 16 && (s->n_received % 17) == 0) {
                /* Keep it, with one extra reference dropped at once. */
                rbus_msg *again = rbus_msg_ref(msgs[j]);
                assert_ptr_equal(again, msgs[j]);
                rbus_msg_release(again);
                s->held[s->nheld++] = msgs[j];
            } else {
                rbus_msg_release(msgs[j]);
            }
        }
        got += (unsigned)rc;
    }
}

static void release_held(struct scen *s)
{
    for (unsigned i = 0; i < s->nheld; i++)
        rbus_msg_release(s->held[i]);
    s->nheld = 0;
}

/* rbus_sub_close: never allocates, never fails. */
static void step_sub_close(struct scen *s, int i)
{
    struct msub *m = &s->subs[i];
    long long calls = atomic_load(&s->fa->calls);
    assert_rbus_ok(rbus_sub_close(m->sub));
    assert_int_equal(atomic_load(&s->fa->calls), calls);
    m->open = false;
    compare_all(s);
}

/* rbus_unsubscribe with messages possibly still queued: the stats right
 * before it equal the model, and it never allocates. */
static void step_unsubscribe(struct scen *s, int i)
{
    struct msub *m = &s->subs[i];
    compare_sub(s, m);
    s->n_queued_at_unsub += depth_of(m);
    long long calls = atomic_load(&s->fa->calls);
    assert_rbus_ok(rbus_unsubscribe(m->sub));
    assert_int_equal(atomic_load(&s->fa->calls), calls);
    m->exists = false;
    m->sub = NULL;
    compare_all(s);
}

static void publish_round(struct scen *s, unsigned count, uint32_t ntopics)
{
    for (unsigned i = 0; i < count; i++) {
        uint32_t n = s->npub;
        uint32_t t = (n * 5u + n / 7u) % ntopics;
        int key_mode = n % 3 == 0 ? 1 : (n % 10 == 5 ? 2 : 0);
        bool in_thread = n % 53 == 11;
        step_publish(s, t, key_mode, in_thread);
    }
}

/*
 * The scenario. Returns false when rbus_create failed (nothing else ran).
 */
static bool run_scenario(struct scen *s)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &s->fa->hooks;
    /* A window of 1024 keys: one block, built at a topic's first keyed
     * publish, so the count of allocations is the same on every run. */
    cfg.dedup_keys = 1024;
    rbus *bus = (rbus *)&cfg; /* junk: a failed create must reset it */
    long long inj = injected(s);
    int rc = rbus_create(&bus, &cfg);
    bool inj_create = injected(s) != inj;
    if (rc == -ENOMEM && inj_create) {
        s->failed_call = "rbus_create";
        assert_null(bus);
        return false;
    }
    if (rc != 0) {
        print_error("k=%lld: rbus_create returned %d (%s)\n", s->k, rc, rbus_strerror(rc));
        fail();
    }
    if (inj_create)
        s->absorbed_by = "rbus_create";
    assert_non_null(bus);
    s->bus = bus;

    for (uint32_t t = 0; t < 4; t++)
        step_open_topic(s, t);
    step_subscribe(s, 0, "all-block", "af.>", RBUS_BLOCK, 512, 0);
    step_subscribe(s, 1, "a-oldest", "af.a", RBUS_DROP_OLDEST, 8, 0);
    step_subscribe(s, 2, "one-newest", "af.*", RBUS_DROP_NEWEST, 16, 0);
    step_subscribe(s, 3, "bc-block", "*.b.c", RBUS_BLOCK, 32, 0);
    step_subscribe(s, 4, "overload", "ov.*", RBUS_DROP_NEWEST, 4, 0);
    step_subscribe(s, 6, "d-oldest", "*.d", RBUS_DROP_OLDEST, 2, 0);
    /* A topic opened after the subscriptions: its list (and spare) are
     * built by topic_open. */
    step_open_topic(s, 4);
    int fd = rbus_sub_fd(s->subs[0].sub);
    assert_true(fd >= 0);

    /* Phase 1: 5 topics, receiving now and then. */
    for (int round = 0; round < 6; round++) {
        publish_round(s, 40, 5);
        step_receive(s, 0, 15, round % 2 == 0);
        step_receive(s, 1, 3, false);
        step_receive(s, 2, 5, true);
        step_receive(s, 3, round % 3 == 0 ? 40 : 2, true);
        step_receive(s, 4, 1, false);
        step_receive(s, 6, 1, true);
    }
    compare_all(s);

    /* Unsubscribe one that has messages queued. */
    assert_true(depth_of(&s->subs[1]) > 0);
    step_unsubscribe(s, 1);
    /* A new subscription over existing topics (lists and spares rebuilt). */
    step_subscribe(s, 5, "a-block-timed", "af.a", RBUS_BLOCK, 64, 1000000);
    step_open_topic(s, 5);

    /* Phase 2: every topic, bigger sizes included. */
    for (int round = 0; round < 4; round++) {
        publish_round(s, 40, NTOPICS);
        step_receive(s, 0, 30, round % 2 == 1);
        step_receive(s, 5, 4, false);
        step_receive(s, 2, 3, false);
        step_receive(s, 3, 10, true);
    }
    /* Close one and drain it to -ESHUTDOWN. */
    step_sub_close(s, 2);
    step_receive(s, 2, MAX_MSGS, true);
    step_receive(s, 2, 1, false);
    /* A few more after the close: the closed one is not offered them. */
    publish_round(s, 12, NTOPICS);
    compare_all(s);

    /* Destroy with messages queued in several subscriptions. */
    for (int i = 0; i < NSUBS; i++)
        if (s->subs[i].exists)
            s->n_queued_at_destroy += depth_of(&s->subs[i]);
    release_held(s);
    /* Persistent runs destroy with every allocation failing: destroy has
     * to give everything back without one. */
    if (s->persistent)
        atomic_store(&s->fa->budget, 0);
    rbus_destroy(s->bus);
    failures_off(s);
    s->bus = NULL;
    return true;
}

static void scen_init(struct scen *s, struct rbus_test_alloc *fa, long long k, bool persistent)
{
    memset(s, 0, sizeof *s);
    s->fa = fa;
    s->k = k;
    s->persistent = persistent;
    for (int t = 0; t < NTOPICS; t++)
        s->last_key[t] = -1;
}

static void scen_assert_all_returned(const struct scen *s)
{
    struct rbus_test_alloc *fa = s->fa;
    if (atomic_load(&fa->live_blocks) != 0 || atomic_load(&fa->live_bytes) != 0 ||
        atomic_load(&fa->bad_frees) != 0) {
        print_error(
            "k=%lld (failed: %s): after rbus_destroy %lld blocks / %lld bytes live, "
            "%lld bad frees\n",
            s->k, s->failed_call ? s->failed_call : "-", (long long)atomic_load(&fa->live_blocks),
            (long long)atomic_load(&fa->live_bytes), (long long)atomic_load(&fa->bad_frees));
        fail();
    }
}

/* ------------------------------------------------------------ the sweep */

struct call_tally {
    const char *name;
    unsigned count;
};

static void tally(struct call_tally *t, unsigned *n, const char *name)
{
    for (unsigned i = 0; i < *n; i++) {
        if (strcmp(t[i].name, name) == 0) {
            t[i].count++;
            return;
        }
    }
    t[*n].name = name;
    t[*n].count = 1;
    (*n)++;
}

/* What the failing runs did, for the report. */
struct oom_report {
    struct call_tally calls[16], absorbers[16];
    unsigned ncalls, nabsorbers;
    unsigned create_failed, absorbed;
};

/* The scenario inside the measured window (no allocation may bypass the
 * hooks, error paths included). */
static bool run_in_bus(struct scen *s)
{
    tl_in_bus++;
    atomic_signal_fence(memory_order_seq_cst);
    bool ran = run_scenario(s);
    atomic_signal_fence(memory_order_seq_cst);
    tl_in_bus--;
    return ran;
}

/* The scenario with no failure: returns how many allocations it makes. */
static long long oom_clean_run(struct rbus_test_alloc *fa, struct scen *s)
{
    alloc_init(fa, "oom");
    scen_init(s, fa, 0, false);
    assert_true(run_in_bus(s));
    scen_assert_all_returned(s);
    const long long total = atomic_load(&fa->calls);
    uint64_t accepted = 0, dups = 0;
    for (int t = 0; t < NTOPICS; t++) {
        accepted += s->accepted[t];
        dups += s->dups[t];
    }
    printf("alloc: the out-of-memory scenario makes %lld allocations; %u publishes: %llu "
           "accepted, %llu duplicates; %llu received, %llu dropped, %llu queued at "
           "unsubscribe, %llu queued at destroy\n",
           total, s->npub, (unsigned long long)accepted, (unsigned long long)dups,
           (unsigned long long)s->n_received, (unsigned long long)s->n_dropped,
           (unsigned long long)s->n_queued_at_unsub, (unsigned long long)s->n_queued_at_destroy);
    assert_true(total > 100);
    assert_true(s->n_queued_at_unsub > 0);
    assert_true(s->n_queued_at_destroy > 0);
    return total;
}

/* One run in which allocation k fails (and, when persistent, every one
 * after it until the call that met it returns). */
static void oom_failing_run(struct rbus_test_alloc *fa, struct scen *s, long long k,
                            bool persistent, struct oom_report *rep)
{
    alloc_init(fa, "oom");
    if (persistent)
        atomic_store(&fa->budget, k - 1);
    else
        atomic_store(&fa->fail_at, k);
    scen_init(s, fa, k, persistent);
    bool ran = run_in_bus(s);
    /* The first k-1 allocations are the same as in the clean run, so the
     * k-th exists and failed. */
    long long inj = atomic_load(&fa->injected);
    if (persistent ? inj < 1 : inj != 1) {
        print_error("k=%lld%s: %lld failures injected (the scenario is not deterministic?)\n", k,
                    persistent ? " on" : "", inj);
        fail();
    }
    scen_assert_all_returned(s);
    rbus_test_alloc_assert_all_returned(fa);
    if (!ran)
        rep->create_failed++;
    if (s->failed_call) {
        tally(rep->calls, &rep->ncalls, s->failed_call);
    } else if (s->absorbed_by) {
        rep->absorbed++;
        tally(rep->absorbers, &rep->nabsorbers, s->absorbed_by);
    } else if (!persistent) {
        /* Persistent runs may meet their failure only in rbus_destroy. */
        fail_msg("k=%lld: the failure was injected but no checked call saw it", k);
    }
}

static void oom_print_report(const struct oom_report *rep, long long total)
{
    printf("alloc: out-of-memory sweep: %lld allocations, each failed alone and from there "
           "on: %u runs failed at rbus_create, %u absorbed by a call that still succeeded;",
           total, rep->create_failed, rep->absorbed);
    printf(" -ENOMEM from:");
    for (unsigned i = 0; i < rep->ncalls; i++)
        printf(" %s %u;", rep->calls[i].name, rep->calls[i].count);
    printf(" absorbed by:");
    for (unsigned i = 0; i < rep->nabsorbers; i++)
        printf(" %s %u;", rep->absorbers[i].name, rep->absorbers[i].count);
    printf("\n");
}

static void test_alloc_out_of_memory_sweep(void **state)
{
    (void)state;
    static struct rbus_test_alloc fa;
    static struct scen s;
    static struct oom_report rep;
    oom_payload_init();
    stray_reset();
    const long long total = oom_clean_run(&fa, &s);
    for (long long k = 1; k <= total; k++) {
        oom_failing_run(&fa, &s, k, false, &rep);
        oom_failing_run(&fa, &s, k, true, &rep);
    }
    oom_print_report(&rep, total);
    assert_no_stray("out of memory sweep");
}

/* ------------------------------------------------------------------ main */

int main(void)
{
    printf("alloc: RBUS_STRESS_SCALE=%g\n", rbus_test_stress_scale());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_every_call_goes_through_the_hooks),
        cmocka_unit_test(test_alloc_destroy_frees_everything_left_behind),
        cmocka_unit_test(test_alloc_out_of_memory_sweep),
        cmocka_unit_test(test_alloc_steady_state_no_allocation_per_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
