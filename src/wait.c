/*
 * wait.c - waiting and waking: an event count on a futex, clocks, spinning.
 *
 * Why not ck_ec: ck's event count keeps its counter with ck_pr operations,
 * which ThreadSanitizer cannot see, so every wait would look like a race in
 * TSan runs and we could not suppress it without hiding our own code
 * (ck_ec's functions are inlined into ours). The futex protocol we need is
 * a few lines on <stdatomic.h>, which TSan understands.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

int64_t rbus__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

int64_t rbus__stamp_ns(const rbus *bus)
{
    struct timespec ts;
    clock_gettime(
        bus->cfg.time_source == RBUS_TIME_COARSE ? CLOCK_MONOTONIC_COARSE : CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

int64_t rbus__deadline(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return -1;
    int64_t now = rbus__now_ns();
    if (timeout_ns > INT64_MAX - now)
        return INT64_MAX;
    return now + timeout_ns;
}

/*
 * A receiver spinning for its spin_ns before it sleeps. On an
 * oversubscribed machine a receiver that only pauses takes the core from
 * the publisher and receivers it waits for, so it yields every 64 steps.
 * A yield costs a system call, during which a message goes unnoticed, so a
 * yield that comes back at once (nobody else was ready) ends the yields of
 * that wait. Next to a CPU hog a yield costs a whole time slice, so a
 * slice-long yield ends them too, and when RBUS_YIELD_LONG_OF_8 of the
 * subscription's last 8 yields that ran somebody took a slice, its
 * receivers stop yielding for RBUS_YIELD_BACKOFF_NS. A timed wait never
 * yields within 4 slices of its deadline. The figures behind each
 * threshold are in docs/benchmarks.md ("Wake latency and spin_ns").
 */
#define RBUS_YIELD_RAN_NOBODY_NS INT64_C(5000)
#define RBUS_YIELD_SLICE_NS INT64_C(500000)
#define RBUS_YIELD_LONG_OF_8 6
#define RBUS_YIELD_BACKOFF_NS INT64_C(100000000)

/* Whether a wait ending at deadline_ns (< 0: none) is too close to it for
 * a yield, which may take a whole slice. */
static inline bool deadline_near(int64_t now_ns, int64_t deadline_ns)
{
    return deadline_ns >= 0 && deadline_ns - now_ns < RBUS_YIELD_SLICE_NS * 4;
}

void rbus__spin_wait_step(struct rbus_spin *spin)
{
    if (spin->pause_only || (++spin->steps & 63) != 0) {
        RBUS__CPU_RELAX();
        return;
    }
    rbus_sub *s = spin->sub;
    int64_t before = rbus__now_ns();
    /* Relaxed loads and stores, not RMWs: hints that a subscription's
     * receivers share; a lost update costs one yield more or fewer, and
     * nothing else is ordered by them. */
    if (deadline_near(before, spin->deadline) ||
        before < atomic_load_explicit(&s->no_yield_until, memory_order_relaxed)) {
        spin->pause_only = true;
        return;
    }
    sched_yield();
    int64_t took = rbus__now_ns() - before;
    if (took < RBUS_YIELD_RAN_NOBODY_NS) {
        spin->pause_only = true;
        return;
    }
    /* One bit per yield that ran somebody, newest lowest: 1 = slice-long. */
    bool slice_long = took >= RBUS_YIELD_SLICE_NS;
    uint32_t last8 = (atomic_load_explicit(&s->yield_history, memory_order_relaxed) << 1 |
                      (uint32_t)slice_long) & 0xffu;
    if (slice_long) {
        spin->pause_only = true;
        if (__builtin_popcount(last8) >= RBUS_YIELD_LONG_OF_8) {
            atomic_store_explicit(&s->no_yield_until, before + took + RBUS_YIELD_BACKOFF_NS,
                                  memory_order_relaxed);
            last8 = 0;
        }
    }
    atomic_store_explicit(&s->yield_history, last8, memory_order_relaxed);
}

void rbus__spin_step_before(unsigned iteration, int64_t now_ns, int64_t deadline_ns)
{
    /* Pause for a while first: a peer on another core is likely mid-way.
     * Past that, yield: on an oversubscribed machine (2 cores, 5 threads)
     * the thread we wait for may need our core. But not close to a
     * deadline, as in rbus__spin_wait_step: next to a CPU-bound thread a
     * yield takes a whole slice, which would overrun a blocked
     * publisher's short timeout by that much. */
    if ((iteration & 63) == 63 && !deadline_near(now_ns, deadline_ns))
        sched_yield();
    else
        RBUS__CPU_RELAX();
}

void rbus__spin_step(unsigned iteration)
{
    rbus__spin_step_before(iteration, 0, -1);
}

/*
 * The event word holds a sequence in its upper 31 bits and a "somebody may
 * sleep" flag in bit 0. A waiter sets the flag (CAS) and sleeps on the
 * exact value it installed; a signaller that finds the flag set bumps the
 * sequence, clears the flag in the same CAS and wakes every sleeper. A
 * signaller that finds the flag clear writes nothing and makes no system
 * call, and after one wake the flag stays clear until someone sleeps
 * again, so a burst of signals costs one futex_wake.
 *
 * Lost wake-ups: the waiter's CAS is followed by a full fence before it
 * reads its condition; the signaller makes the condition true, has a full
 * barrier, then reads the word. So either the signaller sees the flag, or
 * the waiter sees the condition. If the flag is cleared between the
 * waiter's CAS and its futex_wait, the word differs from the value it
 * sleeps on and futex_wait returns at once.
 */
uint32_t rbus__event_prepare(struct rbus_event *ev)
{
    uint32_t v = atomic_load_explicit(&ev->word, memory_order_relaxed);
    while (!(v & 1u) && !atomic_compare_exchange_weak_explicit(
                            &ev->word, &v, v | 1u, memory_order_seq_cst, memory_order_relaxed))
        ;
    atomic_thread_fence(memory_order_seq_cst);
    return v | 1u;
}

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts,
                  uint32_t val3)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, val3);
}

int rbus__event_wait(struct rbus_event *ev, uint32_t seen, int64_t deadline_ns)
{
    if (deadline_ns < 0) {
        futex(&ev->word, FUTEX_WAIT_PRIVATE, seen, NULL, 0);
        return 0;
    }
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so
     * spurious wake-ups never stretch the total wait. */
    struct timespec ts = {.tv_sec = deadline_ns / 1000000000, .tv_nsec = deadline_ns % 1000000000};
    if (futex(&ev->word, FUTEX_WAIT_BITSET_PRIVATE, seen, &ts, FUTEX_BITSET_MATCH_ANY) < 0 &&
        errno == ETIMEDOUT)
        return -ETIMEDOUT;
    return 0;
}

static void event_bump_and_wake(struct rbus_event *ev, uint32_t v, int waiters)
{
    /* Release: what made the condition true is visible to a waiter that
     * reads the new word. */
    while (!atomic_compare_exchange_weak_explicit(&ev->word, &v, (v + 2u) & ~1u,
                                                  memory_order_acq_rel, memory_order_relaxed))
        ;
    futex(&ev->word, FUTEX_WAKE_PRIVATE, (uint32_t)waiters, NULL, 0);
}

/* Wakes up to `waiters` sleepers if any announced itself. */
static void event_signal(struct rbus_event *ev, int waiters)
{
    /* seq_cst: the signaller's half of a Dekker pair ends with this load
     * (a plain load on x86). */
    uint32_t v = atomic_load_explicit(&ev->word, memory_order_seq_cst);
    if (v & 1u)
        event_bump_and_wake(ev, v, waiters);
}

void rbus__event_signal(struct rbus_event *ev)
{
    event_signal(ev, INT_MAX);
}

/*
 * The same, waking one sleeper: for waiters of which any one can take
 * what the signal announces (competing receivers). Clearing the flag
 * leaves the others asleep, and later signals find it clear; the woken
 * one announces itself again for them, and wakes the next before it
 * returns if anything is left (rbus__event_wake_one: the baton). sub.c,
 * recv_common, has both rules.
 */
void rbus__event_signal_one(struct rbus_event *ev)
{
    event_signal(ev, 1);
}

void rbus__event_wake_one(struct rbus_event *ev)
{
    futex(&ev->word, FUTEX_WAKE_PRIVATE, 1, NULL, 0);
}

void rbus__event_broadcast(struct rbus_event *ev)
{
    event_bump_and_wake(ev, atomic_load_explicit(&ev->word, memory_order_relaxed), INT_MAX);
}
