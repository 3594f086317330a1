/*
 * rbus_stats_prometheus: the numbers equal the stats API's, label values
 * are escaped, snprintf semantics hold, and (when promtool is installed,
 * Debian package `prometheus`) `promtool check metrics` accepts the text.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

struct scene {
    rbus *bus;
    rbus_topic *orders, *audit;
    rbus_sub *subs[3];
};

static const char *const sub_names[3] = {"plain", "quo\"te back\\slash\nnewline", NULL};

/* Three subscriptions with different policies, drops of several causes,
 * and a duplicate. */
static void scene_build(struct scene *sc)
{
    memset(sc, 0, sizeof *sc);
    assert_rbus_ok(rbus_create(&sc->bus, NULL));
    rbus_topic_opts to;
    rbus_topic_opts_init(&to);
    to.retain = 4; /* a history, so that its families appear */
    assert_rbus_ok(rbus_topic_open_ex(sc->bus, "orders.created", &to, &sc->orders));
    assert_rbus_ok(rbus_topic_open(sc->bus, "audit.log", &sc->audit));
    assert_true(rbus_topic_fd(sc->orders) >= 0); /* and readiness */
    static const rbus_overflow pol[3] = {RBUS_BLOCK, RBUS_DROP_NEWEST, RBUS_DROP_OLDEST};
    static const char *const pat[3] = {"orders.*", "orders.>", ">"};
    for (int i = 0; i < 3; i++) {
        rbus_sub_opts o;
        rbus_sub_opts_init(&o);
        o.capacity = 4;
        o.overflow = pol[i];
        o.name = sub_names[i];
        o.replay = i == 0 ? 2 : 0;
        assert_rbus_ok(rbus_subscribe(sc->bus, pat[i], &o, &sc->subs[i]));
    }
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.timeout_ns = -1; /* the full block subscription counts dropped_timeout */
    for (int i = 0; i < 7; i++)
        assert_rbus_ok(rbus_publish_ex(sc->orders, &i, sizeof i, &po, NULL));
    po.key = "k1";
    po.key_len = 2;
    assert_rbus_ok(rbus_publish_ex(sc->audit, "a", 1, &po, NULL));
    assert_rbus_rc(rbus_publish_ex(sc->audit, "a", 1, &po, NULL), RBUS_DUPLICATE);
    rbus_msg *m;
    assert_rbus_ok(rbus_recv(sc->subs[0], &m, 0));
    rbus_msg_release(m);
}

static void scene_destroy(struct scene *sc)
{
    for (int i = 0; i < 3; i++)
        assert_rbus_ok(rbus_unsubscribe(sc->subs[i]));
    rbus_destroy(sc->bus);
}

static char *render(rbus *bus, int *len_out)
{
    int len = rbus_stats_prometheus(bus, NULL, 0);
    assert_true(len > 0);
    char *text = malloc((size_t)len + 1);
    assert_non_null(text);
    assert_int_equal(rbus_stats_prometheus(bus, text, (size_t)len + 1), len);
    assert_int_equal(strlen(text), (size_t)len);
    *len_out = len;
    return text;
}

/* The value of the one sample line that starts with `prefix`. */
static uint64_t sample(const char *text, const char *prefix)
{
    size_t plen = strlen(prefix);
    const char *found = NULL;
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        if (!end)
            end = line + strlen(line);
        if ((size_t)(end - line) > plen && !strncmp(line, prefix, plen)) {
            if (found)
                fail_msg("two samples start with %s", prefix);
            found = line;
        }
        line = *end ? end + 1 : end;
    }
    if (!found)
        fail_msg("no sample starts with %s\n--- text ---\n%s", prefix, text);
    return strtoull(found + plen, NULL, 10);
}

static void sub_prefix(char *out, size_t size, const char *family, const char *pattern, uint64_t id,
                       const char *escaped_name, const char *policy, const char *reason)
{
    int n = snprintf(out, size, "%s{pattern=\"%s\",sub=\"%llu\",name=\"%s\",policy=\"%s\"", family,
                     pattern, (unsigned long long)id, escaped_name, policy);
    if (reason)
        snprintf(out + n, size - (size_t)n, ",reason=\"%s\"} ", reason);
    else
        snprintf(out + n, size - (size_t)n, "} ");
}

static void numbers_equal_the_stats_api(void **state)
{
    (void)state;
    struct scene sc;
    scene_build(&sc);
    int len;
    char *text = render(sc.bus, &len);

    rbus_topic_stats ts;
    assert_rbus_ok(rbus_topic_stats_get(sc.orders, &ts));
    assert_int_equal(sample(text, "ringbus_topic_published_total{topic=\"orders.created\"} "),
                     ts.published);
    assert_int_equal(ts.published, 7);
    assert_rbus_ok(rbus_topic_stats_get(sc.audit, &ts));
    assert_int_equal(sample(text, "ringbus_topic_duplicates_total{topic=\"audit.log\"} "),
                     ts.duplicates);
    assert_int_equal(ts.duplicates, 1);

    static const char *const pat[3] = {"orders.*", "orders.>", ">"};
    static const char *const pol[3] = {"block", "drop_newest", "drop_oldest"};
    static const char *const escaped[3] = {"plain", "quo\\\"te back\\\\slash\\nnewline", ""};
    char p[512];
    for (int i = 0; i < 3; i++) {
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(sc.subs[i], &st));
        uint64_t id = rbus_sub_id(sc.subs[i]);
        const struct {
            const char *family, *reason;
            uint64_t want;
        } rows[] = {
            {"ringbus_sub_offered_total", NULL, st.offered},
            {"ringbus_sub_received_total", NULL, st.received},
            {"ringbus_sub_dropped_total", "newest", st.dropped_newest},
            {"ringbus_sub_dropped_total", "oldest", st.dropped_oldest},
            {"ringbus_sub_dropped_total", "timeout", st.dropped_timeout},
            {"ringbus_sub_dropped_total", "closed", st.dropped_closed},
            {"ringbus_sub_publisher_waits_total", NULL, st.publisher_waits},
            {"ringbus_sub_depth", NULL, st.depth},
            {"ringbus_sub_high_water", NULL, st.high_water},
            {"ringbus_sub_capacity", NULL, st.capacity},
            {"ringbus_sub_skipped_total", NULL, st.skipped},
            {"ringbus_sub_holes_total", NULL, st.holes},
            {"ringbus_sub_reoffers_total", NULL, st.reoffers},
        };
        for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
            sub_prefix(p, sizeof p, rows[r].family, pat[i], id, escaped[i], pol[i], rows[r].reason);
            assert_int_equal(sample(text, p), rows[r].want);
        }
    }
    /* History, readiness and replay: the block subscription (0) replays,
     * and is over its high watermark (4 of 4 queued, then 3). */
    assert_rbus_ok(rbus_topic_stats_get(sc.orders, &ts));
    assert_int_equal(sample(text, "ringbus_topic_retain{topic=\"orders.created\"} "), 4);
    assert_int_equal(sample(text, "ringbus_topic_retained{topic=\"orders.created\"} "),
                     ts.retained);
    assert_int_equal(ts.retained, 4);
    assert_int_equal(sample(text, "ringbus_topic_ready{topic=\"orders.created\"} "), 0);
    assert_null(strstr(text, "ringbus_topic_retain{topic=\"audit.log\"}"));
    {
        rbus_sub_stats st;
        assert_rbus_ok(rbus_sub_stats_get(sc.subs[0], &st));
        uint64_t id = rbus_sub_id(sc.subs[0]);
        sub_prefix(p, sizeof p, "ringbus_sub_replayed_total", pat[0], id, escaped[0], pol[0], NULL);
        assert_int_equal(sample(text, p), st.replayed);
        sub_prefix(p, sizeof p, "ringbus_sub_high_watermark_crossings_total", pat[0], id,
                   escaped[0], pol[0], NULL);
        assert_int_equal(sample(text, p), st.high_crossings);
        assert_int_equal(st.high_crossings, 1);
        sub_prefix(p, sizeof p, "ringbus_sub_low_watermark_crossings_total", pat[0], id, escaped[0],
                   pol[0], NULL);
        assert_int_equal(sample(text, p), st.low_crossings);
        assert_null(strstr(text, "ringbus_sub_replayed_total{pattern=\"orders.>\""));
        assert_null(
            strstr(text, "ringbus_sub_high_watermark_crossings_total{pattern=\"orders.>\""));
    }
    /* The scene produced every kind of figure it was built for. */
    rbus_sub_stats st;
    assert_rbus_ok(rbus_sub_stats_get(sc.subs[0], &st));
    assert_true(st.dropped_timeout > 0 && st.received == 1);
    assert_rbus_ok(rbus_sub_stats_get(sc.subs[1], &st));
    assert_true(st.dropped_newest > 0);
    assert_rbus_ok(rbus_sub_stats_get(sc.subs[2], &st));
    assert_true(st.dropped_oldest > 0);

    /* Each family's HELP and TYPE exactly once, its samples contiguous. */
    static const char *const families[] = {
        "ringbus_topic_published_total",
        "ringbus_topic_duplicates_total",
        "ringbus_sub_offered_total",
        "ringbus_sub_received_total",
        "ringbus_sub_dropped_total",
        "ringbus_sub_publisher_waits_total",
        "ringbus_sub_depth",
        "ringbus_sub_high_water",
        "ringbus_sub_capacity",
        "ringbus_sub_skipped_total",
        "ringbus_sub_holes_total",
        "ringbus_sub_reoffers_total",
        "ringbus_topic_retain",
        "ringbus_topic_retained",
        "ringbus_topic_ready",
        "ringbus_sub_replayed_total",
        "ringbus_sub_replay_skipped_total",
        "ringbus_sub_high_watermark_crossings_total",
        "ringbus_sub_low_watermark_crossings_total",
    };
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        char help[128], type[128];
        snprintf(help, sizeof help, "# HELP %s ", families[f]);
        snprintf(type, sizeof type, "# TYPE %s ", families[f]);
        const char *h = strstr(text, help);
        assert_non_null(h);
        assert_null(strstr(h + 1, help));
        assert_non_null(strstr(text, type));
        assert_null(strstr(strstr(text, type) + 1, type));
    }
    free(text);
    scene_destroy(&sc);
}

static void snprintf_semantics(void **state)
{
    (void)state;
    struct scene sc;
    scene_build(&sc);
    int len;
    char *full = render(sc.bus, &len);
    char small[40];
    memset(small, 'x', sizeof small);
    assert_int_equal(rbus_stats_prometheus(sc.bus, small, sizeof small), len);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_memory_equal(small, full, sizeof small - 1);
    char one = 'x';
    assert_int_equal(rbus_stats_prometheus(sc.bus, &one, 1), len);
    assert_int_equal(one, '\0');
    assert_rbus_rc(rbus_stats_prometheus(NULL, small, sizeof small), -EINVAL);
    assert_rbus_rc(rbus_stats_prometheus(sc.bus, NULL, 10), -EINVAL);
    free(full);
    scene_destroy(&sc);
}

static bool have_promtool(void)
{
    return system("command -v promtool >/dev/null 2>&1") == 0;
}

/* Fails the test unless `promtool check metrics` accepts the text. */
static void promtool_check(const char *text, int len)
{
    char path[] = "/tmp/rbus-prom-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, (size_t)len), len);
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s", path);
    int rc = system(cmd);
    unlink(path);
    if (rc != 0)
        fail_msg("promtool check metrics failed (status %d) on:\n%s", rc, text);
    printf("# promtool check metrics: ok (%d bytes)\n", len);
}

static void promtool_accepts_the_text(void **state)
{
    (void)state;
    if (!have_promtool()) {
        printf("# promtool not installed (Debian package prometheus): skipped\n");
        skip();
    }
    struct scene sc;
    scene_build(&sc);
    int len;
    char *text = render(sc.bus, &len);
    promtool_check(text, len);
    free(text);
    scene_destroy(&sc);
}

static int handle_ok(const rbus_msg *m, void *arg)
{
    (void)m;
    atomic_fetch_add((_Atomic unsigned *)arg, 1);
    return 0;
}

static void dispatcher_families_appear_once_one_ran(void **state)
{
    (void)state;
    struct scene sc;
    scene_build(&sc);
    int len;
    char *text = render(sc.bus, &len);
    assert_null(strstr(text, "ringbus_dispatch_"));
    free(text);
    _Atomic unsigned calls = 0;
    rbus_dispatcher *d;
    assert_rbus_ok(rbus_dispatch_start(&d, sc.subs[2], handle_ok, &calls, NULL));
    rbus_sub_stats st;
    rbus_dispatch_stats ds;
    /* Wait until it drained the queue and let go of the last message: the
     * handler's own count comes before the dispatcher's in_hand drops (a
     * TSan run in CI caught the gap). */
    for (int i = 0; i < 10000; i++) {
        assert_rbus_ok(rbus_sub_stats_get(sc.subs[2], &st));
        assert_rbus_ok(rbus_dispatch_stats_get(d, &ds));
        if (st.depth == 0 && atomic_load(&calls) == st.received && ds.in_hand == 0 &&
            ds.handled == st.received)
            break;
        rbus_test_sleep_us(1000);
    }
    text = render(sc.bus, &len);
    char p[256];
    uint64_t id = rbus_sub_id(sc.subs[2]);
    /* Labelled as the subscription's own families are. */
    sub_prefix(p, sizeof p, "ringbus_dispatch_handled_total", ">", id, "", "drop_oldest", NULL);
    assert_int_equal(sample(text, p), ds.handled);
    assert_true(ds.handled > 0);
    sub_prefix(p, sizeof p, "ringbus_dispatch_in_hand", ">", id, "", "drop_oldest", NULL);
    assert_int_equal(sample(text, p), 0);
    if (have_promtool())
        promtool_check(text, len);
    free(text);
    /* Its counters outlive it, and a second dispatcher adds to them. */
    assert_rbus_ok(rbus_dispatch_stop(d));
    assert_rbus_ok(rbus_publish(sc.audit, "b", 1));
    assert_rbus_ok(rbus_dispatch_start(&d, sc.subs[2], handle_ok, &calls, NULL));
    rbus_dispatch_stats final;
    assert_rbus_ok(rbus_dispatch_drain(d, -1, &final));
    assert_int_equal(final.handled, 1);
    text = render(sc.bus, &len);
    sub_prefix(p, sizeof p, "ringbus_dispatch_handled_total", ">", id, "", "drop_oldest", NULL);
    assert_int_equal(sample(text, p), ds.handled + 1);
    if (have_promtool())
        promtool_check(text, len);
    free(text);
    scene_destroy(&sc);
}

/* Histogram families: _count and the +Inf bucket equal the timing API's
 * count, buckets never decrease, families appear only where they can hold
 * something, and promtool accepts them. */
static void histograms_equal_the_timing_api(void **state)
{
    (void)state;
    rbus *bus;
    rbus_topic *t;
    assert_rbus_ok(rbus_create(&bus, NULL));
    assert_rbus_ok(rbus_topic_open(bus, "orders.created", &t));
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 16;
    o.latency_sample = 1;
    rbus_sub *sampled, *dropping;
    assert_rbus_ok(rbus_subscribe(bus, "orders.*", &o, &sampled));
    o.latency_sample = 0;
    o.overflow = RBUS_DROP_NEWEST;
    assert_rbus_ok(rbus_subscribe(bus, "orders.*", &o, &dropping));
    for (int i = 0; i < 3; i++)
        assert_rbus_ok(rbus_publish(t, &i, sizeof i));
    rbus_test_sleep_us(1000);
    rbus_msg *m;
    for (int i = 0; i < 2; i++) {
        assert_rbus_ok(rbus_recv(sampled, &m, 0));
        rbus_msg_release(m);
    }
    rbus_sub_timing tm;
    assert_rbus_ok(rbus_sub_timing_get(sampled, &tm));
    assert_int_equal(tm.queue_wait.count, 2);

    int len;
    char *text = render(bus, &len);
    char p[256];
    uint64_t id = rbus_sub_id(sampled);
    sub_prefix(p, sizeof p, "ringbus_sub_queue_wait_seconds_count", "orders.*", id, "", "block",
               NULL);
    assert_int_equal(sample(text, p), 2);
    snprintf(p, sizeof p,
             "ringbus_sub_queue_wait_seconds_bucket{pattern=\"orders.*\",sub=\"%llu\",name=\"\","
             "policy=\"block\",le=\"+Inf\"} ",
             (unsigned long long)id);
    assert_int_equal(sample(text, p), 2);
    /* Every bucket line of that histogram, in order, never decreasing. */
    uint64_t last = 0;
    unsigned buckets = 0;
    char head[96];
    snprintf(head, sizeof head,
             "ringbus_sub_queue_wait_seconds_bucket{pattern=\"orders.*\",sub=\"%llu\"",
             (unsigned long long)id);
    for (const char *l = strstr(text, head); l; l = strstr(l + 1, head)) {
        uint64_t v = strtoull(strstr(l, "} ") + 2, NULL, 10);
        assert_true(v >= last);
        last = v;
        buckets++;
    }
    assert_int_equal(buckets, RBUS_HIST_BUCKETS);
    /* The lag gauge: one message still queued, a millisecond old at least. */
    const char *lag = rbus_test_prom_sample(text, "ringbus_sub_lag_seconds", sampled);
    assert_true(strtod(lag, NULL) >= 0.001);
    /* Publisher waits only for block subscriptions, queue waits only where
     * sampled. */
    assert_non_null(
        rbus_test_prom_sample(text, "ringbus_sub_publisher_wait_seconds_count", sampled));
    char other[64];
    snprintf(other, sizeof other, "sub=\"%llu\",name=\"\",policy=\"drop_newest\",le=",
             (unsigned long long)rbus_sub_id(dropping));
    assert_null(strstr(text, other));
    if (have_promtool())
        promtool_check(text, len);
    free(text);
    assert_rbus_ok(rbus_unsubscribe(sampled));
    assert_rbus_ok(rbus_unsubscribe(dropping));
    rbus_destroy(bus);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(numbers_equal_the_stats_api),
        cmocka_unit_test(snprintf_semantics),
        cmocka_unit_test(promtool_accepts_the_text),
        cmocka_unit_test(dispatcher_families_appear_once_one_ran),
        cmocka_unit_test(histograms_equal_the_timing_api),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
