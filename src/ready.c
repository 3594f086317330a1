/*
 * ready.c - publisher readiness: each topic that asks for one has an
 * eventfd that is readable while every open RBUS_BLOCK subscription on
 * its list is under its watermarks (sub.c, "Watermarks").
 *
 * The descriptor is a copy of a state that lives in the subscriptions'
 * `over` flags, so it is refreshed from them whenever one changes (or a
 * list does): the thread that changed it refreshes every topic that has a
 * descriptor, after its call's read section. The refresh of one topic is
 * a combining update: whoever finds `ready_busy` clear owns the
 * descriptor, clears `ready_dirty`, reads the state and makes the
 * descriptor match it (a write to make it readable, a read to drain it);
 * whoever finds it taken only sets `ready_dirty`, and the owner runs
 * again before letting go. So no thread waits for another, and the
 * descriptor ends up matching the last state anyone saw; an owner
 * preempted mid-update delays it until it runs again.
 */
#include "internal.h"

#include <inttypes.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* An open RBUS_BLOCK subscription over its high watermark: it holds its
 * topics back. seq_cst: after the caller's change of `over` (or of the
 * list), so that the last refresher sees every change made before it. */
static bool holds_back(const rbus_sub *s)
{
    return s->overflow == RBUS_BLOCK &&
           atomic_load_explicit(&s->state, memory_order_seq_cst) == RBUS_SUB_OPEN &&
           atomic_load_explicit(&s->over, memory_order_seq_cst);
}

bool rbus__topic_ready(rbus_topic *t, bool locked)
{
    return rbus__topic_count_subs(t, holds_back, locked) == 0;
}

/* Makes the descriptor show `ready`; only the owner calls it. */
static void fd_show(rbus_topic *t, int fd, bool ready)
{
    if (t->readable == ready)
        return;
    uint64_t v = 1;
    /* An eventfd is readable while its counter is not zero: a write of 1
     * makes it so, a read drains it (EAGAIN when already 0). Neither can
     * fail otherwise for our small counts; nothing to undo if one did. */
    ssize_t n = ready ? write(fd, &v, sizeof v) : read(fd, &v, sizeof v);
    (void)n;
    t->readable = ready;
}

static void refresh(rbus_topic *t)
{
    /* Acquire: pairs with the release store in rbus_topic_fd. */
    int fd = atomic_load_explicit(&t->ready_fd, memory_order_acquire);
    if (fd < 0)
        return;
    /* seq_cst: ask, then look for an owner; the owner lets go, then
     * looks for a request (a Dekker pair): one of us sees the other. */
    atomic_store_explicit(&t->ready_dirty, 1, memory_order_seq_cst);
    while (atomic_load_explicit(&t->ready_dirty, memory_order_seq_cst)) {
        /* Acquire: the previous owner's update of `readable` and the
         * descriptor happen before ours. */
        if (atomic_exchange_explicit(&t->ready_busy, 1, memory_order_seq_cst))
            return; /* the owner runs again for us */
        atomic_store_explicit(&t->ready_dirty, 0, memory_order_seq_cst);
        fd_show(t, fd, rbus__topic_ready(t, false));
        atomic_store_explicit(&t->ready_busy, 0, memory_order_seq_cst);
    }
}

void rbus__ready_refresh_all(rbus *bus)
{
    /* Acquire: pairs with the release push in rbus_topic_fd; each topic's
     * ready_next was set before it was pushed. */
    for (rbus_topic *t = atomic_load_explicit(&bus->ready_topics, memory_order_acquire); t;
         t = t->ready_next)
        refresh(t);
}

int rbus_topic_fd(rbus_topic *topic)
{
    RBUS__PAUSE(RBUS_TOPIC_FD);
    if (!topic)
        return rbus__fail_static(-EINVAL, "rbus_topic_fd: topic is NULL");
    int fd = atomic_load_explicit(&topic->ready_fd, memory_order_acquire);
    if (fd >= 0)
        return fd;
    rbus *bus = topic->bus;
    pthread_mutex_lock(&bus->lock);
    fd = atomic_load_explicit(&topic->ready_fd, memory_order_relaxed);
    if (fd < 0) {
        fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) {
            int err = -errno;
            pthread_mutex_unlock(&bus->lock);
            return rbus__fail(err, "rbus_topic_fd: eventfd failed: %s", rbus_strerror(err));
        }
        topic->readable = false;
        /* Release: readable (and the descriptor) before a refresher's
         * acquire load sees it. */
        atomic_store_explicit(&topic->ready_fd, fd, memory_order_release);
        topic->ready_next = atomic_load_explicit(&bus->ready_topics, memory_order_relaxed);
        /* Release: ready_next before a reader of the list follows it. */
        atomic_store_explicit(&bus->ready_topics, topic, memory_order_release);
    }
    pthread_mutex_unlock(&bus->lock);
    refresh(topic); /* its first state */
    return fd;
}

int rbus_topic_ready(rbus_topic *topic)
{
    RBUS__PAUSE(RBUS_TOPIC_READY);
    if (!topic)
        return rbus__fail_static(-EINVAL, "rbus_topic_ready: topic is NULL");
    return rbus__topic_ready(topic, false) ? 1 : 0;
}

void rbus__topic_fd_close(rbus_topic *t)
{
    int fd = atomic_load_explicit(&t->ready_fd, memory_order_relaxed);
    if (fd >= 0)
        close(fd);
    atomic_store_explicit(&t->ready_fd, -1, memory_order_relaxed);
}
