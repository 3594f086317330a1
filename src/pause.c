/*
 * pause.c - the test side of the pause points (pause.h). Compiled only into
 * the test library: a mutex and a condition variable are fine here, and
 * parking inside a read section is exactly what the tests want to do.
 */
#include "pause.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define TRAPS 256

enum trap_state { TRAP_FREE, TRAP_ARMED, TRAP_HOLDING, TRAP_RELEASED };

struct trap {
    enum trap_state state;
    enum rbus__pp point;
    bool any_thread;
    pthread_t thread;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static struct trap traps[TRAPS];
/* Armed traps: a pass with none armed takes no lock. Acquire/release with
 * the arming, so a thread that sees it non-zero finds the trap under the
 * lock anyway (the lock orders everything else). */
static _Atomic unsigned armed;
static _Atomic uint64_t passes[RBUS_PP_COUNT];

static const char *const names[RBUS_PP_COUNT] = {
#define RBUS__PP_NAME(id, name) [RBUS_PP_##id] = name,
    RBUS__PAUSE_POINTS(RBUS__PP_NAME)
#undef RBUS__PP_NAME
};

const char *rbus__pause_name(enum rbus__pp point)
{
    return (unsigned)point < RBUS_PP_COUNT ? names[point] : "?";
}

uint64_t rbus__pause_passes(enum rbus__pp point)
{
    return atomic_load_explicit(&passes[point], memory_order_relaxed);
}

void rbus__pause(enum rbus__pp point)
{
    atomic_fetch_add_explicit(&passes[point], 1, memory_order_relaxed);
    if (!atomic_load_explicit(&armed, memory_order_acquire))
        return;
    pthread_t self = pthread_self();
    pthread_mutex_lock(&lock);
    for (int i = 0; i < TRAPS; i++) {
        struct trap *t = &traps[i];
        if (t->state != TRAP_ARMED || t->point != point ||
            !(t->any_thread || pthread_equal(t->thread, self)))
            continue;
        t->state = TRAP_HOLDING;
        atomic_fetch_sub_explicit(&armed, 1, memory_order_relaxed);
        pthread_cond_broadcast(&cond);
        while (t->state == TRAP_HOLDING)
            pthread_cond_wait(&cond, &lock);
        t->state = TRAP_FREE;
        pthread_cond_broadcast(&cond);
        break;
    }
    pthread_mutex_unlock(&lock);
}

int rbus__trap_set(enum rbus__pp point, const pthread_t *only)
{
    int id = -1;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < TRAPS && id < 0; i++) {
        if (traps[i].state != TRAP_FREE)
            continue;
        traps[i] = (struct trap){.state = TRAP_ARMED, .point = point, .any_thread = !only};
        if (only)
            traps[i].thread = *only;
        atomic_fetch_add_explicit(&armed, 1, memory_order_release);
        id = i;
    }
    pthread_mutex_unlock(&lock);
    return id;
}

bool rbus__trap_wait(int trap, int64_t timeout_ns)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    int64_t ns = until.tv_nsec + timeout_ns % 1000000000;
    until.tv_sec += (time_t)(timeout_ns / 1000000000 + ns / 1000000000);
    until.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&lock);
    while (traps[trap].state == TRAP_ARMED && pthread_cond_timedwait(&cond, &lock, &until) == 0) {
    }
    bool holding = traps[trap].state == TRAP_HOLDING;
    pthread_mutex_unlock(&lock);
    return holding;
}

bool rbus__trap_holds(int trap)
{
    pthread_mutex_lock(&lock);
    bool holding = traps[trap].state == TRAP_HOLDING;
    pthread_mutex_unlock(&lock);
    return holding;
}

/* Under the lock. */
static void release_locked(struct trap *t)
{
    if (t->state == TRAP_ARMED) {
        atomic_fetch_sub_explicit(&armed, 1, memory_order_relaxed);
        t->state = TRAP_FREE;
    } else if (t->state == TRAP_HOLDING) {
        t->state = TRAP_RELEASED; /* the parked thread frees it */
        pthread_cond_broadcast(&cond);
    }
}

void rbus__trap_release(int trap)
{
    pthread_mutex_lock(&lock);
    release_locked(&traps[trap]);
    pthread_mutex_unlock(&lock);
}

void rbus__trap_reset(void)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < TRAPS; i++)
        release_locked(&traps[i]);
    pthread_mutex_unlock(&lock);
}
