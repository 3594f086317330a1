/*
 * Misuse of message references. In RBUS_CHECKED builds (Debug, and the
 * AddressSanitizer run) a second release of one reference, a handler
 * releasing its own message and a release after rbus_destroy abort with a
 * message naming the call: each is tried in a child process, whose death
 * and words the parent checks. In other builds the second release of a
 * message that is back in its cache is ignored, so the cache is never
 * corrupted (it used to hand one message out twice).
 */
#include "test_util.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(RBUS_CHECKED)
/* Runs fn in a child with stderr piped back; true when the child died of
 * SIGABRT having written every one of `words` (NULL-terminated). */
static bool child_aborts_saying(void (*fn)(void), const char *const *words)
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
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT)
        return false;
    for (const char *const *w = words; *w; w++)
        if (!strstr(text, *w))
            return false;
    return true;
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
