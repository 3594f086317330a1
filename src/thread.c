/*
 * thread.c - per-(thread, bus) state: the epoch record a publisher reads
 * subscription lists under, and its private message cache.
 *
 * A thread keeps up to RBUS_THREAD_SLOTS states in a thread-local table
 * keyed by bus id. Bus ids come from a global counter and are never reused,
 * so an entry left behind by a destroyed bus never matches again and is
 * never dereferenced on the fast path. Thread exit (a pthread key
 * destructor) and slot eviction hand a state back with
 * ck_epoch_unregister, under the global registry lock and only if the bus
 * is still alive; the next thread to need a state on that bus recycles it
 * (ck_epoch_recycle) with its message cache, so thousands of short-lived
 * publisher threads use a bounded number of states.
 */
#include "internal.h"

#include <string.h>

#define RBUS_THREAD_SLOTS 8

struct thread_slot {
    uint64_t bus_id;
    struct rbus_thread_state *th;
};

/* initial-exec: in the shared library the default model would call
 * __tls_get_addr on every publish; these 130-odd bytes fit glibc's static
 * TLS surplus even when the library is dlopen()ed. */
#if defined(__GNUC__)
#define RBUS_TLS _Thread_local __attribute__((tls_model("initial-exec")))
#else
#define RBUS_TLS _Thread_local
#endif
static RBUS_TLS struct thread_slot tls_slots[RBUS_THREAD_SLOTS];
static RBUS_TLS bool tls_key_set;

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;

/* Live buses. Taken only at create, destroy, state registration and thread
 * exit: never on a publish. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static rbus *registry_head;

void rbus__registry_add(rbus *bus)
{
    pthread_mutex_lock(&registry_lock);
    bus->registry_next = registry_head;
    registry_head = bus;
    pthread_mutex_unlock(&registry_lock);
}

void rbus__registry_remove(rbus *bus)
{
    pthread_mutex_lock(&registry_lock);
    for (rbus **pp = &registry_head; *pp; pp = &(*pp)->registry_next) {
        if (*pp == bus) {
            *pp = bus->registry_next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

/* Caller holds registry_lock. */
static bool bus_alive(uint64_t id)
{
    for (rbus *b = registry_head; b; b = b->registry_next)
        if (b->id == id)
            return true;
    return false;
}

bool rbus__registry_alive(uint64_t bus_id)
{
    pthread_mutex_lock(&registry_lock);
    bool alive = bus_alive(bus_id);
    pthread_mutex_unlock(&registry_lock);
    return alive;
}

/* Caller holds registry_lock and has checked that the bus is alive. */
static void slot_release(struct thread_slot *slot)
{
    /* The record is idle (we are not in a read section), so it can be
     * handed to another thread; its message cache goes with it. */
    ck_epoch_unregister(&slot->th->epoch);
    slot->bus_id = 0;
    slot->th = NULL;
}

static void thread_exit(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < RBUS_THREAD_SLOTS; i++) {
        if (tls_slots[i].bus_id && bus_alive(tls_slots[i].bus_id))
            slot_release(&tls_slots[i]);
        tls_slots[i].bus_id = 0;
        tls_slots[i].th = NULL;
    }
    pthread_mutex_unlock(&registry_lock);
    /* If a later destructor (another library's) publishes again, the next
     * attach re-arms the key, and glibc runs our destructor once more. */
    tls_key_set = false;
}

static void make_key(void)
{
    pthread_key_create(&exit_key, thread_exit);
}

static struct rbus_thread_state *thread_register(rbus *bus)
{
    struct rbus_thread_state *th;
    ck_epoch_record_t *rec = ck_epoch_recycle(&bus->epoch, NULL);
    if (rec) {
        th = (struct rbus_thread_state *)rec; /* epoch is the first member */
        return th;
    }
    th = rbus__zalloc_aligned(bus, sizeof *th);
    if (!th)
        return NULL;
    th->bus = bus;
    th->cache = rbus__msg_cache_new(bus);
    if (!th->cache) {
        rbus__free_aligned(bus, th);
        return NULL;
    }
    pthread_mutex_lock(&bus->lock);
    th->index = bus->nthreads++;
    th->bus_next = bus->threads;
    bus->threads = th;
    pthread_mutex_unlock(&bus->lock);
    ck_epoch_register(&bus->epoch, &th->epoch, NULL);
    return th;
}

/* Slow path of rbus__thread_get: first use of this bus by this thread. */
static struct rbus_thread_state *thread_attach(rbus *bus)
{
    pthread_once(&key_once, make_key);
    if (!tls_key_set) {
        /* Any non-NULL value makes the destructor run at thread exit. */
        if (pthread_setspecific(exit_key, (void *)1) != 0)
            return NULL;
        tls_key_set = true;
    }

    pthread_mutex_lock(&registry_lock);
    int free_slot = -1;
    for (int i = 0; i < RBUS_THREAD_SLOTS; i++) {
        if (tls_slots[i].bus_id && !bus_alive(tls_slots[i].bus_id)) {
            tls_slots[i].bus_id = 0;
            tls_slots[i].th = NULL;
        }
        if (!tls_slots[i].bus_id && free_slot < 0)
            free_slot = i;
    }
    if (free_slot < 0) {
        /* More live buses than slots: hand back the least recently
         * attached one (the last slot); it is re-attached if used again. */
        free_slot = RBUS_THREAD_SLOTS - 1;
        slot_release(&tls_slots[free_slot]);
    }
    /* Registering under the registry lock also orders us after the thread
     * that unregistered a state we recycle (its last writes to the state's
     * cache and scratch happen before its unlock), which TSan can see;
     * ck's own hand-over inside libck it cannot. */
    struct rbus_thread_state *th = thread_register(bus);
    pthread_mutex_unlock(&registry_lock);
    if (!th)
        return NULL;
    /* Newest first, so the common single-bus case hits slot 0. */
    memmove(&tls_slots[1], &tls_slots[0], (size_t)free_slot * sizeof tls_slots[0]);
    tls_slots[0].bus_id = bus->id;
    tls_slots[0].th = th;
    return th;
}

struct rbus_thread_state *rbus__thread_get(rbus *bus)
{
    for (int i = 0; i < RBUS_THREAD_SLOTS; i++)
        if (tls_slots[i].bus_id == bus->id)
            return tls_slots[i].th;
    return thread_attach(bus);
}

int rbus__thread_reserve_pending(struct rbus_thread_state *th, uint32_t n)
{
    if (n <= th->pending_cap)
        return 0;
    uint32_t cap = th->pending_cap ? th->pending_cap : 8;
    while (cap < n)
        cap *= 2;
    struct rbus_pending *p = rbus__alloc(th->bus, cap * sizeof *p);
    struct rbus_resv *r = rbus__alloc(th->bus, cap * sizeof *r);
    if (!p || !r) {
        rbus__free(th->bus, p);
        rbus__free(th->bus, r);
        return -ENOMEM;
    }
    rbus__free(th->bus, th->pending);
    rbus__free(th->bus, th->resv);
    th->pending = p;
    th->resv = r;
    th->pending_cap = cap;
    return 0;
}

void rbus__thread_free_all(rbus *bus)
{
    struct rbus_thread_state *th = bus->threads;
    while (th) {
        struct rbus_thread_state *next = th->bus_next;
        rbus__msg_cache_free(bus, th->cache);
        rbus__free(bus, th->pending);
        rbus__free(bus, th->resv);
        rbus__free_aligned(bus, th);
        th = next;
    }
    bus->threads = NULL;
}
