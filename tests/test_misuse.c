/*
 * Misuse of message references. In RBUS_CHECKED builds (Debug, and the
 * AddressSanitizer run) a second release of one reference, a handler
 * releasing its own message and a release after rbus_destroy abort with a
 * message naming the call: each is tried in a child process, whose death
 * and words the parent checks. In other builds the second release of a
 * message that is back in its cache is ignored, so the cache is never
 * corrupted (it used to hand one message out twice).
 *
 * A forgotten release shows: the bus counts the references the
 * application holds (rbus_bus_stats_get, ringbus_held_messages), and
 * RBUS_CHECKED builds say at rbus_destroy how many are still held.
 */
#include "test_util.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(RBUS_CHECKED)
/* Runs fn in a child with stderr piped back; true when the child ended as
 * `aborts` says (died of SIGABRT, or exited 0) having written every one of
 * `words` (NULL-terminated). */
static bool child_ends_saying(void (*fn)(void), bool aborts, const char *const *words)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDERR_FILENO);
        close(fds[0]);
        fn();
        _exit(0); /* it did not abort */
    }
    close(fds[1]);
    char text[4096];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof text - 1 && (n = read(fds[0], text + len, sizeof text - 1 - len)) > 0)
        len += (size_t)n;
    text[len] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    print_message("  child said: %s", len ? text : "(nothing)\n");
    if (aborts ? !WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT
               : !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return false;
    for (const char *const *w = words; *w; w++)
        if (!strstr(text, *w))
            return false;
    return true;
}

static bool child_aborts_saying(void (*fn)(void), const char *const *words)
{
    return child_ends_saying(fn, true, words);
}
#endif

/* Publishes `text` and receives it. */
static rbus_msg *publish_and_take(rbus_topic *t, rbus_sub *s, const char *text)
{
    rbus_msg *m = NULL;
    assert_rbus_ok(rbus_publish(t, text, strlen(text) + 1));
    assert_rbus_ok(rbus_recv(s, &m, 0));
    return m;
}

/* The cache still hands out distinct messages with the right payloads. */
static void assert_cache_sound(rbus_topic *t, rbus_sub *s)
{
    assert_rbus_ok(rbus_publish(t, "second", 7));
    assert_rbus_ok(rbus_publish(t, "third", 6));
    rbus_msg *x = NULL, *y = NULL;
    assert_rbus_ok(rbus_recv(s, &x, 0));
    assert_rbus_ok(rbus_recv(s, &y, 0));
    assert_ptr_not_equal(x, y);
    assert_string_equal(rbus_msg_data(x), "second");
    assert_string_equal(rbus_msg_data(y), "third");
    rbus_msg_release(x);
    rbus_msg_release(y);
}

static void double_release(void)
{
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "misuse.t");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "misuse.t", 8, RBUS_BLOCK, 0, NULL);
    rbus_msg *m = publish_and_take(t, s, "first");
    rbus_msg_release(m);
    rbus_msg_release(m); /* the misuse */
    assert_cache_sound(t, s);
    rbus_unsubscribe(s);
    rbus_destroy(bus);
}

static void second_release_of_one_reference(void **state)
{
    (void)state;
#if defined(RBUS_CHECKED)
    static const char *const words[] = {"rbus_msg_release", "released more times", NULL};
    assert_true(child_aborts_saying(double_release, words));
#else
    double_release();  /* ignored: the cache stays sound */
#endif
}

static int releasing_handler(const rbus_msg *msg, void *arg)
{
    atomic_int *calls = arg;
    rbus_msg_release((rbus_msg *)msg); /* the misuse */
    atomic_fetch_add(calls, 1);
    return 0;
}

static int keeping_handler(const rbus_msg *msg, void *arg)
{
    rbus_msg **kept = arg;
    /* Allowed: a reference of its own, released in the handler. */
    rbus_msg_release(rbus_msg_ref(msg));
    *kept = rbus_msg_ref(msg);
    return 0;
}

static void handler_release(void)
{
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "misuse.h");
    rbus_sub *hs = rbus_test_subscribe_checked(bus, "misuse.h", 8, RBUS_BLOCK, 0, NULL);
    atomic_int calls;
    atomic_init(&calls, 0);
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, hs, releasing_handler, &calls, NULL));
    assert_rbus_ok(rbus_publish(t, "handled", 8));
    while (atomic_load(&calls) == 0)
        rbus_test_sleep_us(1000);
    assert_rbus_ok(rbus_dispatch_stop(d));
    assert_rbus_ok(rbus_unsubscribe(hs));
    rbus_sub *s = rbus_test_subscribe_checked(bus, "misuse.h", 8, RBUS_BLOCK, 0, NULL);
    assert_cache_sound(t, s);
    rbus_unsubscribe(s);
    rbus_destroy(bus);
}

static void handler_releasing_its_message(void **state)
{
    (void)state;
#if defined(RBUS_CHECKED)
    static const char *const words[] = {"rbus_msg_release", "handler released", NULL};
    assert_true(child_aborts_saying(handler_release, words));
#else
    handler_release(); /* the dispatcher's own release is then ignored */
#endif
}

/* A handler may take and release references of its own: never an abort. */
static void handler_with_references_of_its_own(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "misuse.k");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "misuse.k", 8, RBUS_BLOCK, 0, NULL);
    rbus_msg *plain_kept = NULL;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, keeping_handler, &plain_kept, NULL));
    assert_rbus_ok(rbus_publish(t, "kept", 5));
    assert_rbus_ok(rbus_dispatch_stop(d)); /* joins the worker */
    if (!plain_kept) {
        /* The worker had not taken it yet when stop came: stop leaves it queued. */
        assert_rbus_ok(rbus_recv(s, &plain_kept, 0));
    }
    assert_string_equal(rbus_msg_data(plain_kept), "kept");
    rbus_msg_release(plain_kept);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

#if defined(RBUS_CHECKED)
static void release_after_destroy(void)
{
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "misuse.d");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "misuse.d", 8, RBUS_BLOCK, 0, NULL);
    rbus_msg *m = publish_and_take(t, s, "late");
    rbus_destroy(bus);
    rbus_msg_release(m); /* the misuse */
}
#endif

static void release_after_destroy_aborts(void **state)
{
    (void)state;
#if defined(RBUS_CHECKED)
    static const char *const words[] = {"rbus_msg_release", "bus was destroyed", NULL};
    assert_true(child_aborts_saying(release_after_destroy, words));
#else
    skip();            /* undefined without the checks: memory the bus freed is read */
#endif
}

/* ------------------------------------------------------ held counts */

static void assert_held(rbus *bus, uint64_t held)
{
    rbus_bus_stats st;
    assert_rbus_ok(rbus_bus_stats_get(bus, &st));
    assert_int_equal(st.held, held);
}

static void *release_elsewhere(void *m)
{
    rbus_msg_release(m);
    return NULL;
}

static int kept_handler(const rbus_msg *msg, void *arg)
{
    rbus_msg **kept = arg;
    if (!*kept)
        *kept = rbus_msg_ref(msg);
    return 0;
}

static void held_counts_follow_receives_refs_and_releases(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "held.t");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "held.t", 16, RBUS_BLOCK, 0, NULL);
    assert_rbus_rc(rbus_bus_stats_get(NULL, NULL), -EINVAL);
    assert_rbus_rc(rbus_bus_stats_get(bus, NULL), -EINVAL);
    assert_held(bus, 0);
    for (int i = 0; i < 4; i++)
        assert_rbus_ok(rbus_publish(t, "0123456789", 10));
    assert_held(bus, 0); /* queued is not held */
    rbus_msg *m[4];
    assert_rbus_ok(rbus_recv(s, &m[0], 0));
    assert_held(bus, 1);
    assert_int_equal(rbus_recv_batch(s, &m[1], 3, 0), 3);
    assert_held(bus, 4);
    rbus_msg *extra = rbus_msg_ref(m[0]);
    assert_held(bus, 5);
    rbus_bus_stats bst;
    assert_rbus_ok(rbus_bus_stats_get(bus, &bst));
    assert_int_equal(bst.topics, 1);
    assert_int_equal(bst.subscriptions, 1);
    char text[8192];
    assert_true(rbus_stats_prometheus(bus, text, sizeof text) > 0);
    assert_non_null(strstr(text, "\nringbus_held_messages 5\n"));

    /* Released on another thread than the one that received. */
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, release_elsewhere, m[1]), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_held(bus, 4);
    rbus_msg_release(extra);
    for (int i = 0; i < 4; i++)
        if (i != 1)
            rbus_msg_release(m[i]);
    assert_held(bus, 0);
#if !defined(RBUS_CHECKED)
    /* A second release of one reference is ignored, and so not counted. */
    assert_rbus_ok(rbus_publish(t, "x", 1));
    assert_rbus_ok(rbus_recv(s, &m[0], 0));
    rbus_msg_release(m[0]);
    rbus_msg_release(m[0]);
    assert_rbus_ok(rbus_publish(t, "y", 1));
    assert_rbus_ok(rbus_recv(s, &m[0], 0));
    assert_held(bus, 1);
    rbus_msg_release(m[0]);
#endif

    /* A dispatcher's own messages are not the application's; a reference
     * its handler keeps is. */
    rbus_msg *kept = NULL;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, s, kept_handler, &kept, NULL));
    for (int i = 0; i < 3; i++)
        assert_rbus_ok(rbus_publish(t, "abc", 3));
    assert_rbus_ok(rbus_dispatch_drain(d, -1, NULL));
    assert_non_null(kept);
    assert_held(bus, 1);
    rbus_msg_release(kept);
    assert_held(bus, 0);
    assert_rbus_ok(rbus_unsubscribe(s));
    rbus_destroy(bus);
}

#if defined(RBUS_CHECKED)
static void destroy_holding(void)
{
    rbus *bus;
    rbus_topic *t = rbus_test_bus_and_topic(&bus, "held.d");
    rbus_sub *s = rbus_test_subscribe_checked(bus, "held.d", 8, RBUS_BLOCK, 0, NULL);
    publish_and_take(t, s, "forgotten"); /* the misuse: never released */
    rbus_destroy(bus);
}
#endif

static void destroy_says_what_is_still_held(void **state)
{
    (void)state;
#if defined(RBUS_CHECKED)
    static const char *const words[] = {"rbus_destroy", "1 message reference(s)", "still held",
                                        NULL};
    assert_true(child_ends_saying(destroy_holding, false, words));
#else
    skip();            /* the check is in RBUS_CHECKED builds */
#endif
}

int main(void)
{
#if defined(RBUS_CHECKED)
    print_message("misuse checks: on (RBUS_CHECKED)\n");
#else
    print_message("misuse checks: off\n");
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(second_release_of_one_reference),
        cmocka_unit_test(handler_releasing_its_message),
        cmocka_unit_test(handler_with_references_of_its_own),
        cmocka_unit_test(release_after_destroy_aborts),
        cmocka_unit_test(held_counts_follow_receives_refs_and_releases),
        cmocka_unit_test(destroy_says_what_is_still_held),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
