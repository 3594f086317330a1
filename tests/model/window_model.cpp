// The idempotency-key window (src/window.h) under Relacy: window.h itself
// is compiled with its C11 atomics mapped onto Relacy's, on a table of 8
// slots in lines of 2 (so keys spill past their line and sweeps run), and
// Relacy explores interleavings and the values relaxed loads may read.
// Each publish records its answer, its ticket when accepted, and the
// latest ticket read just before and just after it; after() replays them
// against the sequential rule:
//  - the accepted tickets are exactly 1..n, each taken once;
//  - a key is accepted only if none of the last K acceptances before it
//    (by ticket) was of that key: exactly once, and the count bound;
//  - a duplicate saw its key remembered: an acceptance of it with ticket t
//    and some latest ticket L, within the publish's two readings, with
//    t <= L < t + K.
//
//   window_model [iterations]   (default 200000 per scene)
#include <relacy/relacy.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

// --- the shim: what window.h takes from internal.h, on Relacy's atomics ---
#define RBUS_INTERNAL_H
#define RBUS_DUPLICATE 1
#define RBUS__LIKELY(x) (x)
#define RBUS__UNLIKELY(x) (x)
// The pause points are where the narrow windows are (a slot claimed, an
// intent stored, an acceptance won but not marked). A scene may park one
// thread at one of them until another says go, as the C stall tests do:
// the random scheduler alone almost never leaves a thread stopped for the
// whole of another's publishes.
enum pause_point { PP_DEDUP_BUILDING, PP_DEDUP_CLAIMED, PP_DEDUP_PROPOSED, PP_DEDUP_ACCEPTED };
struct park_spec {
    int thread, point;
    rl::atomic<int> *go; // NULL: nobody parks
};
static park_spec park = {-1, -1, nullptr};
static void model_pause(int point, rl::debug_info_param info)
{
    if (park.go && (int)rl::ctx().current_thread() == park.thread && point == park.point)
        while (!(*park.go)(info).load(rl::mo_acquire))
            rl::yield(1, info);
}
#define RBUS__PAUSE(point) model_pause(PP_##point, $)
struct rbus_dedup_ident {
    rl::atomic<uint64_t> lo, hi;
};
struct rbus_dedup {
    rl::atomic<uint64_t> accepted;
    uint64_t keys;
    int64_t window_ns;
    uint32_t mask;
    rl::atomic<uint64_t> *state;
    rbus_dedup_ident *ident;
    rl::atomic<int64_t> *time_ns;
    rl::atomic<uint32_t> *spill;
};
#define LINE_SLOTS 2u  // lines of 2 slots: a line fills, and keys spill
#define MAX_PROBE 8u   // the whole table
#define SWEEP_EVERY 2u // a line swept every other acceptance
#define memory_order_relaxed rl::mo_relaxed
#define memory_order_acquire rl::mo_acquire
#define memory_order_release rl::mo_release
#define memory_order_acq_rel rl::mo_acq_rel
#define memory_order_seq_cst rl::mo_seq_cst
#define atomic_load_explicit(p, mo) ((*(p))($).load(mo))
#define atomic_store_explicit(p, v, mo) ((*(p))($).store((v), mo))
#define atomic_fetch_sub_explicit(p, v, mo) ((*(p))($).fetch_sub((v), mo))
#define atomic_compare_exchange_weak_explicit(p, e, d, s, f)                                    \
    ((*(p))($).compare_exchange_weak(*(e), (d), s, f))
#define atomic_compare_exchange_strong_explicit(p, e, d, s, f)                                  \
    ((*(p))($).compare_exchange_strong(*(e), (d), s, f))
#define atomic_thread_fence(mo) rl::atomic_thread_fence((mo), $)
#include "window.h"

// --- scenes ---

enum { SLOTS = 8, MAX_OPS = 3, MAX_THREADS = 3 };

// Key k's hash. `same_home`: every key homed in slot 0, so that they all
// share one line of 2 and spill; key 2 then also shares key 1's tag (its
// low half), so telling them apart takes the full identity.
static uint64_t key_lo(int k, bool same_home)
{
    if (same_home)
        return (uint64_t)(k == 2 ? 1 : k) << 32;
    return (uint64_t)k << 32 | (uint64_t)(k * 3 % SLOTS);
}

static uint64_t key_hi(int k)
{
    return 0x9e3779b97f4a7c15u * (uint64_t)(k + 1);
}

struct op {
    int key, rc;
    uint64_t ticket, before, after; // ticket if accepted; latest ticket around it
};

// Which key publish j of thread i is.
enum pattern {
    ROUND,  // keys i, i+1, ... of 3: every key meets every other, and itself
    ONE,    // key 0 everywhere
    REUSE,  // thread 0 key 0; thread 1 keys 1, 2, 2: with dedup_keys 1, key
            // 0's slot is reusable by key 2 while thread 0 may still be
            // about to mark it, and key 2's repeat must find key 2
};

static int key_of_op(pattern p, unsigned i, int j)
{
    switch (p) {
    case ONE:
        return 0;
    case REUSE:
        return i == 0 ? 0 : j == 0 ? 1 : 2;
    default:
        return ((int)i + j) % 3;
    }
}

// PARKED: thread 0 stops at its first acceptance's last step (won, not
// marked) until thread 1 has made two publishes, and thread 1 makes its
// third only once thread 0 is done.
template <int THREADS, int OPS, int K, bool SAME_HOME, pattern PATTERN = ROUND,
          bool PARKED = false>
struct scene : rl::test_suite<scene<THREADS, OPS, K, SAME_HOME, PATTERN, PARKED>, THREADS> {
    rbus_dedup d;
    rl::atomic<uint64_t> state[SLOTS];
    rbus_dedup_ident ident[SLOTS];
    rl::atomic<int64_t> time_ns[SLOTS];
    rl::atomic<uint32_t> spill[SLOTS / LINE_SLOTS];
    op ops[THREADS][OPS]; // per thread, written by that thread only
    rl::atomic<int> go, done0;

    void before()
    {
        d.accepted($).store(0, rl::mo_relaxed);
        d.keys = K;
        d.window_ns = 0;
        d.mask = SLOTS - 1;
        d.state = state;
        d.ident = ident;
        d.time_ns = time_ns;
        d.spill = spill;
        for (int i = 0; i < SLOTS; i++) {
            state[i]($).store(0, rl::mo_relaxed);
            ident[i].lo($).store(0, rl::mo_relaxed);
            ident[i].hi($).store(0, rl::mo_relaxed);
            time_ns[i]($).store(0, rl::mo_relaxed);
        }
        for (int i = 0; i < SLOTS / (int)LINE_SLOTS; i++)
            spill[i]($).store(0, rl::mo_relaxed);
        go($).store(0, rl::mo_relaxed);
        done0($).store(0, rl::mo_relaxed);
        park = PARKED ? park_spec{0, PP_DEDUP_ACCEPTED, &go} : park_spec{-1, -1, nullptr};
    }

    void thread(unsigned idx)
    {
        for (int j = 0; j < OPS; j++) {
            if (PARKED && idx == 1 && j == 2) {
                go($).store(1, rl::mo_release);
                while (!done0($).load(rl::mo_acquire))
                    rl::yield(1, $);
            }
            op &o = ops[idx][j];
            o.key = key_of_op(PATTERN, idx, j);
            o.before = d.accepted($).load(rl::mo_seq_cst) & TICKET_MASK;
            o.ticket = 0;
            o.rc = rbus__window_accept(&d, key_lo(o.key, SAME_HOME), key_hi(o.key), 1, &o.ticket);
            o.after = d.accepted($).load(rl::mo_seq_cst) & TICKET_MASK;
            if (PARKED && idx == 0 && j == 0) {
                done0($).store(1, rl::mo_release);
                park.go = nullptr;
            }
        }
    }

    void after()
    {
        int key_of[THREADS * OPS + 1];
        int n = 0;
        for (int i = 0; i <= THREADS * OPS; i++)
            key_of[i] = -1;
        for (int t = 0; t < THREADS; t++)
            for (int j = 0; j < OPS; j++) {
                const op &o = ops[t][j];
                // Room for every key in flight at once: never -ENOBUFS.
                RL_ASSERT(o.rc == 0 || o.rc == RBUS_DUPLICATE);
                if (o.rc != 0)
                    continue;
                RL_ASSERT(o.ticket >= 1 && o.ticket <= (uint64_t)(THREADS * OPS));
                RL_ASSERT(key_of[o.ticket] == -1); // each ticket taken once
                key_of[o.ticket] = o.key;
                RL_ASSERT(o.before < o.ticket && o.ticket <= o.after);
                n++;
            }
        for (int t = 1; t <= n; t++) {
            RL_ASSERT(key_of[t] != -1); // tickets 1..n, no gap
            // Not among the last K acceptances before it.
            for (int p = t - 1; p >= 1 && p >= t - K; p--)
                RL_ASSERT(key_of[p] != key_of[t]);
        }
        for (int t = 0; t < THREADS; t++)
            for (int j = 0; j < OPS; j++) {
                const op &o = ops[t][j];
                if (o.rc != RBUS_DUPLICATE)
                    continue;
                bool seen = false;
                for (uint64_t a = 1; a <= (uint64_t)n && !seen; a++)
                    seen = key_of[a] == o.key && a <= o.after && a + K - 1 >= o.before;
                RL_ASSERT(seen);
            }
    }
};

template <class Scene>
static bool run(const char *name, rl::iteration_t iterations)
{
    rl::test_params p;
    p.iteration_count = iterations;
    p.search_type = rl::random_scheduler_type;
    p.execution_depth_limit = 8000;
    std::cout << name << ": " << std::flush;
    return rl::simulate<Scene>(p);
}

int main(int argc, char **argv)
{
    rl::iteration_t n = argc > 1 ? (rl::iteration_t)std::strtoull(argv[1], nullptr, 10) : 200000;
    bool ok = true;
    ok &= run<scene<3, 1, 2, false, ONE>>("3 threads, one key, dedup_keys 2", n);
    ok &= run<scene<2, 3, 1, true, REUSE>>("a won key's slot reused, dedup_keys 1, one line", n);
    ok &= run<scene<2, 3, 1, true, REUSE, true>>(
        "the same, its publisher parked after winning, dedup_keys 1", n);
    ok &= run<scene<2, 3, 1, false>>("2 threads, 3 publishes each, dedup_keys 1", n);
    ok &= run<scene<2, 3, 2, true>>("2 threads, 3 publishes each, dedup_keys 2, one line", n);
    ok &= run<scene<3, 2, 1, true>>("3 threads, 2 publishes each, dedup_keys 1, one line", n);
    ok &= run<scene<3, 2, 3, false>>("3 threads, 2 publishes each, dedup_keys 3", n);
    std::cout << (ok ? "window model: every scene passed" : "window model: FAILED") << std::endl;
    return ok ? 0 : 1;
}
