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
 *  (d) out of memory: an allocator that fails every call after K successful
 *      ones, for K = 0, 1, 2, ... until a whole scenario runs without an
 *      injected failure. Each call that fails says -ENOMEM, leaves its out
 *      parameter NULL, takes no sequence number or key, and the bus stays
 *      usable and is destroyed without a leak.
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

/* Every block a hook hands out is recorded (pointer -> size, owner) in one
 * open-addressing table, so a free of a pointer the hooks never gave out, or
 * given out for another bus, is caught. */
#define PTAB_BITS 18
#define PTAB_SIZE (1u << PTAB_BITS)
#define PTAB_MASK (PTAB_SIZE - 1)

struct ptab_entry {
    void *ptr;
    size_t size;
    const void *owner;
};

static struct ptab_entry *ptab;
static size_t ptab_count;
static pthread_mutex_t ptab_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t ptab_slot(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    return (size_t)(x & PTAB_MASK);
}

static bool ptab_insert(void *p, size_t size, const void *owner)
{
    if (ptab_count >= PTAB_SIZE / 4 * 3)
        return false;
    size_t i = ptab_slot(p);
    while (ptab[i].ptr != NULL)
        i = (i + 1) & PTAB_MASK;
    ptab[i].ptr = p;
    ptab[i].size = size;
    ptab[i].owner = owner;
    ptab_count++;
    return true;
}

/* Removes p; returns false when absent. */
static bool ptab_remove(void *p, size_t *size, const void **owner)
{
    size_t i = ptab_slot(p);
    while (ptab[i].ptr != NULL && ptab[i].ptr != p)
        i = (i + 1) & PTAB_MASK;
    if (ptab[i].ptr == NULL)
        return false;
    *size = ptab[i].size;
    *owner = ptab[i].owner;
    /* Backward-shift deletion keeps every probe chain intact. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & PTAB_MASK;
        if (ptab[j].ptr == NULL)
            break;
        size_t k = ptab_slot(ptab[j].ptr);
        bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        ptab[i] = ptab[j];
        i = j;
    }
    ptab[i].ptr = NULL;
    ptab_count--;
    return true;
}

struct counting {
    const char *label;
    atomic_llong allocs;      /* alloc hook calls, failed ones included */
    atomic_llong frees;       /* free hook calls with a non-NULL pointer */
    atomic_llong null_frees;
    atomic_llong live_blocks;
    atomic_llong live_bytes;
    atomic_llong peak_bytes;
    atomic_llong fail_after;  /* < 0: never fail; else fail calls after that many */
    atomic_llong injected;    /* failures handed out */
    atomic_llong bad_frees;   /* unknown pointer, or another allocator's */
    atomic_llong table_full;
    rbus_allocator hooks;
};

static void *counting_alloc(size_t size, void *arg)
{
    struct counting *c = arg;
    void *p = NULL;
    tl_in_hook++;
    long long n = atomic_fetch_add(&c->allocs, 1);
    long long limit = atomic_load(&c->fail_after);
    if (limit >= 0 && n >= limit) {
        atomic_fetch_add(&c->injected, 1);
    } else {
        p = __real_malloc(size ? size : 1);
        if (p != NULL) {
            pthread_mutex_lock(&ptab_lock);
            bool ok = ptab_insert(p, size, c);
            pthread_mutex_unlock(&ptab_lock);
            if (!ok) {
                atomic_fetch_add(&c->table_full, 1);
                __real_free(p);
                p = NULL;
            } else {
                atomic_fetch_add(&c->live_blocks, 1);
                long long now = atomic_fetch_add(&c->live_bytes, (long long)size) + (long long)size;
                long long peak = atomic_load(&c->peak_bytes);
                while (now > peak && !atomic_compare_exchange_weak(&c->peak_bytes, &peak, now)) {
                }
            }
        }
    }
    tl_in_hook--;
    return p;
}

static void counting_free(void *ptr, void *arg)
{
    struct counting *c = arg;
    tl_in_hook++;
    if (ptr == NULL) {
        atomic_fetch_add(&c->null_frees, 1);
    } else {
        size_t size = 0;
        const void *owner = NULL;
        pthread_mutex_lock(&ptab_lock);
        bool found = ptab_remove(ptr, &size, &owner);
        pthread_mutex_unlock(&ptab_lock);
        if (!found || owner != c) {
            /* Not ours: leave it (freeing a foreign pointer could crash);
             * the test fails on bad_frees. */
            atomic_fetch_add(&c->bad_frees, 1);
        } else {
            atomic_fetch_add(&c->frees, 1);
            atomic_fetch_sub(&c->live_blocks, 1);
            atomic_fetch_sub(&c->live_bytes, (long long)size);
            __real_free(ptr);
        }
    }
    tl_in_hook--;
}

static void counting_init(struct counting *c, const char *label)
{
    memset(c, 0, sizeof *c);
    c->label = label;
    atomic_store(&c->fail_after, -1);
    c->hooks.alloc = counting_alloc;
    c->hooks.free = counting_free;
    c->hooks.arg = c;
}

static void counting_print(struct counting *c, const char *when)
{
    printf("alloc: [%s] %s: %lld allocs, %lld frees, live %lld blocks / %lld bytes, "
           "peak %lld bytes, injected failures %lld\n",
           c->label, when, (long long)atomic_load(&c->allocs), (long long)atomic_load(&c->frees),
           (long long)atomic_load(&c->live_blocks), (long long)atomic_load(&c->live_bytes),
           (long long)atomic_load(&c->peak_bytes), (long long)atomic_load(&c->injected));
}

/* After rbus_destroy: nothing live, every free matched an alloc. */
static void assert_all_returned(struct counting *c)
{
    assert_int_equal(atomic_load(&c->bad_frees), 0);
    assert_int_equal(atomic_load(&c->table_full), 0);
    assert_int_equal(atomic_load(&c->live_blocks), 0);
    assert_int_equal(atomic_load(&c->live_bytes), 0);
    assert_int_equal(atomic_load(&c->allocs) - atomic_load(&c->injected),
                     atomic_load(&c->frees));
}

static rbus *make_bus(struct counting *c, uint32_t default_capacity)
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

static uint32_t ss_topic(uint32_t pub, uint32_t i)
{
    return (i + pub) % SS_NTOPICS;
}

static void *ss_publisher(void *arg)
{
    struct ss_worker *w = arg;
    struct ss_state *st = w->st;
    unsigned char *buf = malloc(4096);
    if (buf == NULL) {
        rbus_test_report("publisher: no buffer");
        return NULL;
    }
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
            memset(buf, (int)((w->id + i + gen) & 0xff), h.size);
            memcpy(buf, &h, sizeof h);
            int rc;
            IN_BUS(rc = rbus_publish(st->topics[ss_topic(w->id, i)], buf, h.size));
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
    static struct counting ca;
    counting_init(&ca, "steady");
    const uint64_t warm_msgs = 10000;
    const uint64_t measured_req = rbus_test_scaled(200000, 4000);
    const unsigned warm_rounds = (unsigned)((warm_msgs + SS_PUBS * SS_PER_ROUND - 1) /
                                            (SS_PUBS * SS_PER_ROUND));
    const unsigned measured_rounds = (unsigned)((measured_req + SS_PUBS * SS_PER_ROUND - 1) /
                                                (SS_PUBS * SS_PER_ROUND));
    printf("alloc: steady state: %d publishers, rounds of %d messages, sizes %u..%u B, "
           "warm-up %u rounds (%u msgs), measured %u rounds (%u msgs)\n",
           SS_PUBS, SS_PUBS * SS_PER_ROUND, ss_sizes[0], ss_sizes[SS_NSIZES - 1], warm_rounds,
           warm_rounds * SS_PUBS * SS_PER_ROUND, measured_rounds,
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

    counting_print(&ca, "after warm-up");
    const long long allocs_warm = atomic_load(&ca.allocs);
    const long long bytes_warm = atomic_load(&ca.live_bytes);
    unsigned first_alloc_round = 0;
    for (unsigned r = warm_rounds + 1; r <= warm_rounds + measured_rounds; r++) {
        ss_round(&st, r, true);
        if (first_alloc_round == 0 && atomic_load(&ca.allocs) != allocs_warm)
            first_alloc_round = r;
    }
    counting_print(&ca, "after measured rounds");
    atomic_store(&st.quit, true);
    for (uint32_t i = 0; i < SS_PUBS; i++)
        assert_int_equal(pthread_join(pubs[i].thread, NULL), 0);
    for (uint32_t i = 0; i < SS_NRECV; i++)
        assert_int_equal(pthread_join(recvs[i].thread, NULL), 0);
    rbus_test_assert_no_thread_errors();

    if (first_alloc_round != 0)
        print_error("allocation in steady state: first in round %u (%lld -> %lld allocs)\n",
                    first_alloc_round, allocs_warm, (long long)atomic_load(&ca.allocs));
    assert_int_equal(atomic_load(&ca.allocs), allocs_warm);
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
    counting_print(&ca, "after destroy");
    assert_all_returned(&ca);
    assert_no_stray("steady state");
}

/* ------------------------------------------- (b) destroy frees everything */

static void test_alloc_destroy_frees_everything_left_behind(void **state)
{
    (void)state;
    stray_reset();
    static struct counting ca;
    counting_init(&ca, "leftovers");
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
    counting_print(&ca, "before destroy (subs open, messages queued)");
    assert_true(atomic_load(&ca.live_blocks) > 0);
    /* Destroy without close, with subscriptions open and messages queued. */
    IN_BUS(rbus_destroy(bus));
    counting_print(&ca, "after destroy");
    assert_all_returned(&ca);
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

static void test_alloc_every_call_goes_through_the_hooks(void **state)
{
    (void)state;
    /* The measurement itself works: a malloc/free made inside a window
     * (here by this file) is seen, one made outside is not. */
    stray_reset();
    void *volatile probe;
    IN_BUS(probe = malloc(8));
    IN_BUS(free(probe));
    probe = malloc(8);
    free(probe);
    assert_int_equal(atomic_load(&stray[W_MALLOC]), 1);
    assert_int_equal(atomic_load(&stray[W_FREE]), 1);
    stray_reset();
    static struct counting ca;
    counting_init(&ca, "api");
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
    /* The duplicate is checked at the end, so that a dedup failure does not
     * hide what this test is about. */
    IN_BUS(rc = rbus_publish_ex(t, data, 100, &po, &res));
    const int dup_rc = rc;
    const bool dup_flag = res.duplicate;
    IN_BUS(rc = rbus_publish(t, data, 0));
    assert_rbus_ok(rc);
    IN_BUS(rc = rbus_publish(t, NULL, 0));
    assert_rbus_ok(rc);
    IN_BUS(rc = rbus_publish(t_late, data, 4096));
    assert_rbus_ok(rc);
    IN_BUS(rc = rbus_publish(t_late, data, 65537));
    assert_rbus_rc(rc, -EMSGSIZE);

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
    const uint64_t dup_published = tst.published;
    const uint64_t dup_count = tst.duplicates;

    /* A thread that opens a topic, publishes, receives, and exits. */
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

    /* Subscribe and unsubscribe after topics exist (list rebuilds). */
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
    IN_BUS(rbus_destroy(bus));
    counting_print(&ca, "after destroy");
    assert_all_returned(&ca);
    assert_no_stray("every call");
    /* Idempotency: the same key on the same topic was a duplicate. */
    assert_rbus_rc(dup_rc, RBUS_DUPLICATE);
    assert_true(dup_flag);
    assert_int_equal(dup_published, 3);
    assert_int_equal(dup_count, 1);
}

/* ------------------------------------------------------- (d) out of memory */

/* Ran `call` and it returned rc; when an injected failure happened during
 * it, -ENOMEM is right (0 is too, when the library could do without);
 * otherwise only 0 is. Returns true when the call failed with -ENOMEM. */
static bool oom_step(struct counting *ca, long long injected_before, int rc, const char *what,
                     long long k)
{
    bool injected = atomic_load(&ca->injected) != injected_before;
    if (rc == -ENOMEM && injected)
        return true;
    if (rc == 0)
        return false;
    print_error("K=%lld: %s returned %d (%s); injected failure during it: %s\n", k, what, rc,
                rbus_strerror(rc), injected ? "yes" : "no");
    fail();
    return false;
}

static void test_alloc_out_of_memory_sweep(void **state)
{
    (void)state;
    stray_reset();
    static struct counting ca;
    const long long k_max = 5000;
    long long k;
    long long failures_seen = 0;
    char data[3000];
    memset(data, 'z', sizeof data);
    for (k = 0; k < k_max; k++) {
        counting_init(&ca, "oom");
        atomic_store(&ca.fail_after, k);
        rbus_config cfg;
        rbus_config_init(&cfg);
        cfg.allocator = &ca.hooks;
        long long inj;
        int rc;

        /* 1. create */
        rbus *bus = (rbus *)&cfg; /* not NULL: create must reset it */
        inj = atomic_load(&ca.injected);
        IN_BUS(rc = rbus_create(&bus, &cfg));
        if (oom_step(&ca, inj, rc, "rbus_create", k)) {
            assert_null(bus);
            assert_all_returned(&ca);
            failures_seen++;
            continue;
        }
        assert_non_null(bus);

        rbus_sub *s1 = NULL, *s2 = NULL;
        rbus_topic *t1 = NULL, *t2 = NULL;
        rbus_msg *held[4] = {NULL, NULL, NULL, NULL};
        bool failed = false;
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);

        /* 2. subscribe (BLOCK, wildcard) */
        o.capacity = 64;
        o.overflow = RBUS_BLOCK;
        o.name = "oom-block";
        inj = atomic_load(&ca.injected);
        IN_BUS(rc = rbus_subscribe(bus, "oom.>", &o, &s1));
        if (oom_step(&ca, inj, rc, "rbus_subscribe #1", k)) {
            assert_null(s1);
            failed = true;
            atomic_store(&ca.fail_after, -1);
            IN_BUS(rc = rbus_subscribe(bus, "oom.>", &o, &s1));
            assert_rbus_ok(rc);
        }
        /* 3. subscribe (DROP_OLDEST, exact) */
        if (!failed) {
            o.capacity = 16;
            o.overflow = RBUS_DROP_OLDEST;
            o.name = "oom-exact";
            inj = atomic_load(&ca.injected);
            IN_BUS(rc = rbus_subscribe(bus, "oom.a", &o, &s2));
            if (oom_step(&ca, inj, rc, "rbus_subscribe #2", k)) {
                assert_null(s2);
                failed = true;
                atomic_store(&ca.fail_after, -1);
                IN_BUS(rc = rbus_subscribe(bus, "oom.a", &o, &s2));
                assert_rbus_ok(rc);
            }
        }
        /* 4. topic_open of a topic both subscriptions match */
        if (!failed) {
            inj = atomic_load(&ca.injected);
            IN_BUS(rc = rbus_topic_open(bus, "oom.a", &t1));
            if (oom_step(&ca, inj, rc, "rbus_topic_open oom.a", k)) {
                assert_null(t1);
                failed = true;
                atomic_store(&ca.fail_after, -1);
                IN_BUS(rc = rbus_topic_open(bus, "oom.a", &t1));
                assert_rbus_ok(rc);
                rbus_topic_stats ts;
                IN_BUS(rc = rbus_topic_stats_get(t1, &ts));
                assert_rbus_ok(rc);
                assert_int_equal(ts.subscriptions, s2 ? 2 : 1);
            }
        }
        /* 5. a second topic (only the wildcard matches) */
        if (!failed) {
            inj = atomic_load(&ca.injected);
            IN_BUS(rc = rbus_topic_open(bus, "oom.b", &t2));
            if (oom_step(&ca, inj, rc, "rbus_topic_open oom.b", k)) {
                assert_null(t2);
                failed = true;
            }
        }
        /* 6. first publish: on -ENOMEM nothing is accepted (no sequence
         * number taken, nothing offered) and a retry gets seq 1. */
        if (!failed) {
            rbus_pub_result res;
            inj = atomic_load(&ca.injected);
            IN_BUS(rc = rbus_publish_ex(t1, data, 100, NULL, &res));
            if (oom_step(&ca, inj, rc, "first rbus_publish", k)) {
                failed = true;
                assert_int_equal(res.matched, 0);
                assert_int_equal(res.queued, 0);
                atomic_store(&ca.fail_after, -1);
                rbus_topic_stats ts;
                IN_BUS(rc = rbus_topic_stats_get(t1, &ts));
                assert_rbus_ok(rc);
                assert_int_equal(ts.published, 0);
                rbus_sub_stats ss;
                IN_BUS(rc = rbus_sub_stats_get(s1, &ss));
                assert_rbus_ok(rc);
                assert_int_equal(ss.offered, 0);
                IN_BUS(rc = rbus_publish(t1, data, 100));
                assert_rbus_ok(rc);
                IN_BUS(rc = rbus_recv(s1, &held[0], 0));
                assert_rbus_ok(rc);
                uint64_t seq;
                IN_BUS(seq = rbus_msg_seq(held[0]));
                assert_int_equal(seq, 1);
            } else {
                assert_int_equal(res.matched, 2);
                assert_int_equal(res.queued, 2);
            }
        }
        /* 7. first keyed publish (dedup memory): -ENOMEM does not record
         * the key, so the retry is accepted, not a duplicate. */
        if (!failed) {
            rbus_pub_opts po;
            memset(&po, 0, sizeof po);
            po.key = "key-1";
            po.key_len = 5;
            inj = atomic_load(&ca.injected);
            IN_BUS(rc = rbus_publish_ex(t2, data, 10, &po, NULL));
            if (oom_step(&ca, inj, rc, "first keyed rbus_publish_ex", k)) {
                failed = true;
                atomic_store(&ca.fail_after, -1);
                IN_BUS(rc = rbus_publish_ex(t2, data, 10, &po, NULL));
                assert_rbus_ok(rc);
                rbus_topic_stats ts;
                IN_BUS(rc = rbus_topic_stats_get(t2, &ts));
                assert_rbus_ok(rc);
                assert_int_equal(ts.published, 1);
                assert_int_equal(ts.duplicates, 0);
            }
        }
        /* 8. a big message (another size class) */
        if (!failed) {
            inj = atomic_load(&ca.injected);
            IN_BUS(rc = rbus_publish(t1, data, sizeof data));
            if (oom_step(&ca, inj, rc, "big rbus_publish", k))
                failed = true;
        }
        /* 9. receive what is there and hold it */
        if (!failed) {
            inj = atomic_load(&ca.injected);
            IN_BUS(rc = rbus_recv_batch(s1, held, 4, 0));
            if (rc != 3) {
                print_error("K=%lld: rbus_recv_batch gave %d, want 3\n", k, rc);
                fail();
            }
        }
        /* 10. unsubscribe cannot report -ENOMEM: it must work whatever the
         * allocator says. */
        if (!failed) {
            inj = atomic_load(&ca.injected);
            IN_BUS(rc = rbus_unsubscribe(s2));
            assert_rbus_ok(rc);
            s2 = NULL;
            bool inj_here = atomic_load(&ca.injected) != inj;
            atomic_store(&ca.fail_after, -1);
            rbus_topic_stats ts;
            IN_BUS(rc = rbus_topic_stats_get(t1, &ts));
            assert_rbus_ok(rc);
            assert_int_equal(ts.subscriptions, 1);
            rbus_pub_result res;
            IN_BUS(rc = rbus_publish_ex(t1, data, 1, NULL, &res));
            assert_rbus_ok(rc);
            assert_int_equal(res.matched, 1);
            if (inj_here)
                failed = true;
        }

        for (int i = 0; i < 4; i++)
            IN_BUS(rbus_msg_release(held[i]));
        /* 11. destroy, with the allocator possibly still failing. */
        bool all_done = !failed && atomic_load(&ca.injected) == 0;
        IN_BUS(rbus_destroy(bus));
        assert_all_returned(&ca);
        if (all_done)
            break;
        failures_seen++;
    }
    printf("alloc: out-of-memory sweep: the scenario needs %lld allocations; %lld runs hit "
           "an injected failure\n",
           k, failures_seen);
    assert_true(k < k_max);
    assert_true(k > 0);
    assert_no_stray("out of memory sweep");
}

/* ------------------------------------------------------------------ main */

static int group_setup(void **state)
{
    (void)state;
    ptab = __real_calloc(PTAB_SIZE, sizeof *ptab);
    return ptab == NULL ? -1 : 0;
}

static int group_teardown(void **state)
{
    (void)state;
    __real_free(ptab);
    ptab = NULL;
    return 0;
}

int main(void)
{
    printf("alloc: RBUS_STRESS_SCALE=%g\n", rbus_test_stress_scale());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_every_call_goes_through_the_hooks),
        cmocka_unit_test(test_alloc_destroy_frees_everything_left_behind),
        cmocka_unit_test(test_alloc_out_of_memory_sweep),
        cmocka_unit_test(test_alloc_steady_state_no_allocation_per_message),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
