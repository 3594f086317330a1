// The ring (src/ring.h) under Relacy, Dmitry Vyukov's checker for the C++11
// memory model: ring.h itself is compiled with its C11 atomics mapped onto
// Relacy's, with the orderings the code uses, and Relacy explores thread
// interleavings and the values relaxed loads may read. Each scene asserts
// no message lost or taken twice, per-producer order, exact counts, at most
// one eviction per put, and (through a payload written before each put and
// read after each take) that a take sees what its producer wrote; two more
// check the wake-up pairs of sub.c against the ring's orderings.
//
//   ring_model [iterations]   (default 200000 per scene)
#include <relacy/relacy.hpp>

#include <cstdint>
#include <cstdlib>

// --- the shim: what ring.h takes from internal.h, on Relacy's atomics ---
#define RBUS_INTERNAL_H
struct rbus_msg {
    rl::var<int> payload; // written before the put, read after the take
    int producer, index;
};
struct rbus_ring_slot {
    rl::atomic<uint64_t> seq;
    rl::atomic<rbus_msg *> msg;
};
struct rbus_ring {
    rl::atomic<uint64_t> tail, head_seen, head;
    rbus_ring_slot *slots;
    uint64_t mask, line_mask;
    unsigned line_shift;
    rl::atomic<uint64_t> skipped, holes, reoffers;
};
#define RBUS__POS_WORD rl::atomic<uint64_t>
#define RBUS__PAUSE(point) ((void)0)
#define RBUS__CPU_RELAX() rl::yield(1, $)
#define RBUS__SKIP_POLLS 2u // skip soon, so that skips, holes and re-offers happen
#define RBUS__SLOTS_PER_LINE 2u // a ring of 4 slots spreads over 2 lines
#define memory_order_relaxed rl::mo_relaxed
#define memory_order_acquire rl::mo_acquire
#define memory_order_release rl::mo_release
#define memory_order_acq_rel rl::mo_acq_rel
#define memory_order_seq_cst rl::mo_seq_cst
#define atomic_init(p, v) ((*(p))($).store((v), rl::mo_relaxed))
#define atomic_load_explicit(p, mo) ((*(p))($).load(mo))
#define atomic_store_explicit(p, v, mo) ((*(p))($).store((v), mo))
#define atomic_fetch_add_explicit(p, v, mo) ((*(p))($).fetch_add((v), mo))
#define atomic_compare_exchange_weak_explicit(p, e, d, s, f)                                    \
    ((*(p))($).compare_exchange_weak(*(e), (d), s, f))
#define atomic_compare_exchange_strong_explicit(p, e, d, s, f)                                  \
    ((*(p))($).compare_exchange_strong(*(e), (d), s, f))
#include "ring.h"

// --- scenes ---

enum { RING = 4, PUTS = 3 }; // a ring of 4 slots; each producer puts 3 messages

// RUNS of the producers put their messages as runs (rbus__ring_put_run),
// falling back to a single put when no run fits, as sub.c does.
template <int PRODUCERS, int CONSUMERS, bool EVICT, int RUNS = 0>
struct scene : rl::test_suite<scene<PRODUCERS, CONSUMERS, EVICT, RUNS>, PRODUCERS + CONSUMERS> {
    rbus_ring ring;
    rbus_ring_slot slots[RING];
    rbus_msg msgs[PRODUCERS][PUTS];
    // Per thread, written by that thread only and read in after().
    int taken[CONSUMERS][PRODUCERS * PUTS];
    int ntaken[CONSUMERS];
    int refused[PRODUCERS], evicted[PRODUCERS];
    rbus_msg *evicted_msgs[PRODUCERS][PUTS];

    void before()
    {
        rbus__ring_init(&ring, slots, RING);
        for (int p = 0; p < PRODUCERS; p++) {
            refused[p] = evicted[p] = 0;
            for (int i = 0; i < PUTS; i++) {
                msgs[p][i].producer = p;
                msgs[p][i].index = i;
            }
        }
        for (int c = 0; c < CONSUMERS; c++)
            ntaken[c] = 0;
    }

    void put_one(int p, rbus_msg *m)
    {
        bool may_evict = EVICT;
        for (;;) {
            rbus_msg *old = nullptr;
            uint32_t depth;
            enum rbus_put rc = rbus__ring_put(&ring, m, may_evict ? &old : nullptr, 0, &depth);
            if (old) {
                RL_ASSERT(may_evict); // at most one eviction per put
                evicted_msgs[p][evicted[p]++] = old;
                may_evict = false;
            }
            if (rc == RBUS__PUT_SKIPPED)
                continue; // offered again
            if (rc == RBUS__PUT_FULL)
                refused[p]++;
            break;
        }
    }

    void produce(int p)
    {
        rbus_msg *ms[PUTS];
        for (int i = 0; i < PUTS; i++) {
            ms[i] = &msgs[p][i];
            ms[i]->payload($) = 1000 * p + i;
        }
        for (int i = 0; i < PUTS;) {
            if (p < RUNS) {
                uint64_t last;
                bool cut = false;
                uint32_t got = rbus__ring_put_run(&ring, ms + i, PUTS - i, &last, &cut);
                i += (int)got;
                if (got || cut)
                    continue; // the rest, again, behind what was queued
            }
            put_one(p, ms[i++]);
        }
    }

    void note(int c, rbus_msg *m)
    {
        RL_ASSERT(m->payload($) == 1000 * m->producer + m->index); // what its producer wrote
        taken[c][ntaken[c]++] = m->producer * PUTS + m->index;
    }

    void consume(int c)
    {
        for (int tries = 0; tries < PRODUCERS * PUTS; tries++) {
            rbus_msg *m = rbus__ring_take(&ring, true);
            if (m)
                note(c, m);
        }
    }

    void thread(unsigned idx)
    {
        if ((int)idx < PRODUCERS)
            produce((int)idx);
        else
            consume((int)idx - PRODUCERS);
    }

    void after()
    {
        // What is left, taken by consumer 0.
        while (rbus_msg *m = rbus__ring_take(&ring, true))
            note(0, m);
        int seen[PRODUCERS * PUTS] = {0};
        int total = 0;
        for (int c = 0; c < CONSUMERS; c++) {
            int last[PRODUCERS];
            for (int p = 0; p < PRODUCERS; p++)
                last[p] = -1;
            for (int k = 0; k < ntaken[c]; k++) {
                int id = taken[c][k];
                RL_ASSERT(seen[id] == 0); // never taken twice
                seen[id] = 1;
                int p = id / PUTS, i = id % PUTS;
                // Per producer, in order (a consumer's own takes; the
                // final drain by consumer 0 comes after its takes).
                RL_ASSERT(i > last[p]);
                last[p] = i;
                total++;
            }
        }
        int gone = 0;
        for (int p = 0; p < PRODUCERS; p++) {
            gone += refused[p] + evicted[p];
            for (int e = 0; e < evicted[p]; e++) {
                rbus_msg *old = evicted_msgs[p][e];
                int id = old->producer * PUTS + old->index;
                RL_ASSERT(seen[id] == 0); // evicted, so never taken
                seen[id] = 1;
            }
            if (!EVICT)
                RL_ASSERT(evicted[p] == 0);
        }
        // Every message taken, evicted or refused, exactly once.
        RL_ASSERT(total + gone == PRODUCERS * PUTS);
        RL_ASSERT(ring.reoffers($).load(rl::mo_relaxed) <=
                  ring.skipped($).load(rl::mo_relaxed));
    }
};

// The sleep pair of sub.c: a receiver that found the ring empty sets its
// sleep flag (seq_cst), then sleeps only if nothing is reserved (seq_cst
// loads of head and tail); a writer reserves (seq_cst CAS on tail), commits,
// then reads the flag (seq_cst) and wakes it. A receiver must never sleep
// through a message.
struct sleep_pair : rl::test_suite<sleep_pair, 2> {
    rbus_ring ring;
    rbus_ring_slot slots[RING];
    rbus_msg msg;
    rl::atomic<unsigned> flag;
    bool slept, woke, took;

    void before()
    {
        rbus__ring_init(&ring, slots, RING);
        flag($).store(0, rl::mo_relaxed);
        slept = woke = took = false;
    }
    void thread(unsigned idx)
    {
        if (idx == 0) {
            uint32_t depth;
            enum rbus_put rc;
            while ((rc = rbus__ring_put(&ring, &msg, nullptr, 0, &depth)) == RBUS__PUT_SKIPPED) {
            }
            RL_ASSERT(rc == RBUS__PUT_QUEUED);
            if (flag($).load(rl::mo_seq_cst))
                woke = true;
        } else {
            if (rbus__ring_take(&ring, true)) {
                took = true;
                return;
            }
            flag($).store(1, rl::mo_seq_cst);
            if (rbus__ring_reserved(&ring) == 0)
                slept = true;
            else
                took = rbus__ring_take(&ring, true) != nullptr || took;
        }
    }
    void after()
    {
        RL_ASSERT(!slept || woke);
    }
};

// The room pair: a writer that found the ring full registers as a waiter
// (seq_cst RMW), then sleeps only if the ring is still full (seq_cst
// loads); a receiver claims (seq_cst CAS), then reads the waiters (seq_cst)
// and wakes them. A writer must never sleep through room.
struct room_pair : rl::test_suite<room_pair, 2> {
    rbus_ring ring;
    rbus_ring_slot slots[RING];
    rbus_msg msgs[RING + 1];
    rl::atomic<unsigned> waiters;
    bool slept, woke;

    void before()
    {
        rbus__ring_init(&ring, slots, RING);
        uint32_t depth;
        for (int i = 0; i < RING; i++)
            rbus__ring_put(&ring, &msgs[i], nullptr, 0, &depth);
        waiters($).store(0, rl::mo_relaxed);
        slept = woke = false;
    }
    void thread(unsigned idx)
    {
        if (idx == 0) {
            uint32_t depth;
            if (rbus__ring_put(&ring, &msgs[RING], nullptr, 0, &depth) == RBUS__PUT_QUEUED)
                return;
            waiters($).fetch_add(1, rl::mo_seq_cst);
            if (rbus__ring_full_at_tail(&ring))
                slept = true;
        } else {
            RL_ASSERT(rbus__ring_take(&ring, true) != nullptr);
            if (waiters($).load(rl::mo_seq_cst))
                woke = true;
        }
    }
    void after()
    {
        RL_ASSERT(!slept || woke);
    }
};

template <class Scene>
static bool run(const char *name, rl::iteration_t iterations)
{
    rl::test_params p;
    p.iteration_count = iterations;
    p.search_type = rl::random_scheduler_type;
    p.execution_depth_limit = 4000;
    std::cout << name << ": " << std::flush;
    return rl::simulate<Scene>(p);
}

int main(int argc, char **argv)
{
    rl::iteration_t n = argc > 1 ? (rl::iteration_t)std::strtoull(argv[1], nullptr, 10) : 200000;
    bool ok = true;
    ok &= run<scene<2, 1, false>>("2 producers, 1 consumer, no eviction", n);
    ok &= run<scene<1, 2, false>>("1 producer, 2 consumers, no eviction", n);
    ok &= run<scene<2, 1, true>>("2 producers, 1 consumer, drop-oldest", n);
    ok &= run<scene<2, 2, true>>("2 producers, 2 consumers, drop-oldest", n);
    ok &= run<scene<2, 1, false, 2>>("2 producers putting runs, 1 consumer", n);
    ok &= run<scene<1, 2, false, 1>>("1 producer putting runs, 2 consumers", n);
    ok &= run<scene<2, 2, true, 1>>("runs and single puts, 2 consumers, drop-oldest", n);
    ok &= run<sleep_pair>("a receiver going to sleep, a writer", n);
    ok &= run<room_pair>("a writer waiting for room, a receiver", n);
    std::cout << (ok ? "ring model: every scene passed" : "ring model: FAILED") << std::endl;
    return ok ? 0 : 1;
}
