/* The NATS bridge against a real nats-server (started by the fixture):
 * both directions between two processes, keys as Nats-Msg-Id and the
 * server's duplicate window, a server restart mid-stream, no echo loops,
 * invalid subjects, backpressure from a frozen server, and start errors.
 *
 * The same binary is also the peer process: `test_nats_bridge --peer ...`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <ringbus.h>
#include <ringbus_nats.h>

#include "nats_fixture.h"
#include "test_util.h"

#define SEC INT64_C(1000000000)
#define MS INT64_C(1000000)

static nats_server g_server; /* JetStream-enabled, shared by most tests */

static rbus *new_bus(uint32_t dedup_keys)
{
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.dedup_keys = dedup_keys;
    rbus *bus = NULL;
    assert_int_equal(rbus_create(&bus, &cfg), 0);
    return bus;
}

static rbus_sub *subscribe(rbus *bus, const char *pattern, uint32_t capacity)
{
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.capacity = capacity;
    rbus_sub *sub = NULL;
    assert_int_equal(rbus_subscribe(bus, pattern, &so, &sub), 0);
    return sub;
}

static rbus_nats *bridge(rbus *bus, rbus_nats_opts *o)
{
    char err[256];
    rbus_nats *b = NULL;
    int rc = rbus_nats_start(&b, bus, o, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "rbus_nats_start: %d %s\n", rc, err);
    assert_int_equal(rc, 0);
    assert_non_null(b);
    return b;
}

static void opts_for(rbus_nats_opts *o, const char *url, rbus_nats_mode mode,
                     const char *export_pattern, const char *import_pattern, const char *stream)
{
    rbus_nats_opts_init(o);
    o->url = url;
    o->mode = mode;
    o->export_pattern = export_pattern;
    o->import_pattern = import_pattern;
    if (mode == RBUS_NATS_JETSTREAM) {
        o->stream = stream;
        o->create_stream = stream != NULL;
    }
}

static void publish_index(rbus *bus, const char *topic_name, uint32_t i, const char *key)
{
    rbus_topic *t = NULL;
    assert_int_equal(rbus_topic_open(bus, topic_name, &t), 0);
    rbus_pub_opts po = {0};
    if (key) {
        po.key = key;
        po.key_len = strlen(key);
    }
    assert_int_equal(rbus_publish_ex(t, &i, sizeof i, &po, NULL), 0);
}

static uint32_t index_of(const rbus_msg *m)
{
    uint32_t i;
    assert_int_equal(rbus_msg_size(m), sizeof i);
    memcpy(&i, rbus_msg_data(m), sizeof i);
    return i;
}

/* Receives until `n` arrived or `timeout_ns` passed; checks the indices come
 * in order 0..n-1 when `ordered`. Returns how many arrived. */
static int receive_indices(rbus_sub *sub, int n, int64_t timeout_ns, bool ordered)
{
    uint64_t deadline = rbus_test_now_ns() + (uint64_t)timeout_ns;
    int got = 0;
    while (got < n && rbus_test_now_ns() < deadline) {
        rbus_msg *m = NULL;
        int rc = rbus_recv(sub, &m, 100 * MS);
        if (rc == -ETIMEDOUT)
            continue;
        assert_int_equal(rc, 0);
        if (ordered)
            assert_int_equal(index_of(m), (uint32_t)got);
        got++;
        rbus_msg_release(m);
    }
    return got;
}

/* Nothing more arrives within `ms`. */
static void assert_quiet(rbus_sub *sub, int ms)
{
    rbus_msg *m = NULL;
    int rc = rbus_recv(sub, &m, ms * MS);
    if (rc == 0) {
        fprintf(stderr, "unexpected message on %s\n", rbus_msg_topic(m));
        rbus_msg_release(m);
    }
    assert_int_equal(rc, -ETIMEDOUT);
}

static uint64_t stream_msgs(const char *url, const char *stream)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    assert_int_equal(natsConnection_ConnectTo(&nc, url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    assert_int_equal(js_GetStreamInfo(&si, js, stream, NULL, NULL), NATS_OK);
    uint64_t n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return n;
}

static void print_stats(const char *who, const rbus_nats_stats *s)
{
    printf("%s: taken %llu skipped %llu sent %llu failed %llu dup %llu dropped %llu in_flight %u | "
           "recv %llu imported %llu dup %llu own %llu invalid %llu failed %llu | "
           "disconnects %llu reconnects %llu\n",
           who, (unsigned long long)s->export_taken, (unsigned long long)s->export_skipped,
           (unsigned long long)s->sent, (unsigned long long)s->send_failed,
           (unsigned long long)s->server_duplicates, (unsigned long long)s->export_dropped,
           s->in_flight, (unsigned long long)s->import_received, (unsigned long long)s->imported,
           (unsigned long long)s->import_duplicates, (unsigned long long)s->import_own,
           (unsigned long long)s->import_invalid, (unsigned long long)s->import_failed,
           (unsigned long long)s->disconnects, (unsigned long long)s->reconnects);
}

/* ---------------------------------------------------------------- peer */

/* Peer "both": imports pa.> and exports pb.>; receives n from the test in
 * order, then sends n back. Prints "ready" once its bridge runs. */
static int peer_both(rbus_nats_mode mode, const char *url, int n, const char *stream)
{
    rbus *bus = new_bus(0);
    rbus_sub *sub = subscribe(bus, "pa.>", 0);
    rbus_nats_opts o;
    opts_for(&o, url, mode, "pb.>", "pa.>", stream);
    o.create_stream = false;
    rbus_nats *b = bridge(bus, &o);
    printf("ready\n");
    fflush(stdout);
    int got = receive_indices(sub, n, 30 * SEC, true);
    for (int i = 0; i < n; i++)
        publish_index(bus, "pb.back", (uint32_t)i, NULL);
    int frc = rbus_nats_flush(b, 30 * SEC);
    rbus_nats_stats st;
    rbus_nats_stats_get(b, &st);
    print_stats("peer", &st);
    printf("done received %d flush %d\n", got, frc);
    fflush(stdout);
    rbus_nats_stop(b);
    rbus_unsubscribe(sub);
    rbus_destroy(bus);
    return got == n && frc == 0 && st.sent == (uint64_t)n ? 0 : 1;
}

/* Peer "keys": exports dk.> to JetStream, publishing keys key-0..key-(n-1). */
static int peer_keys(const char *url, const char *stream, int n)
{
    rbus *bus = new_bus(0);
    rbus_nats_opts o;
    opts_for(&o, url, RBUS_NATS_JETSTREAM, "dk.>", NULL, stream);
    o.create_stream = false;
    rbus_nats *b = bridge(bus, &o);
    char key[32];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        publish_index(bus, "dk.orders", (uint32_t)i, key);
    }
    int frc = rbus_nats_flush(b, 30 * SEC);
    rbus_nats_stats st;
    rbus_nats_stats_get(b, &st);
    printf("sent %llu dup %llu failed %llu flush %d\n", (unsigned long long)st.sent,
           (unsigned long long)st.server_duplicates, (unsigned long long)st.send_failed, frc);
    fflush(stdout);
    rbus_nats_stop(b);
    rbus_destroy(bus);
    return frc == 0 && st.send_failed == 0 ? 0 : 1;
}

static int peer_main(int argc, char **argv)
{
    if (argc >= 6 && strcmp(argv[2], "both") == 0)
        return peer_both(strcmp(argv[3], "js") == 0 ? RBUS_NATS_JETSTREAM : RBUS_NATS_CORE,
                         argv[4], atoi(argv[5]), argc > 6 ? argv[6] : NULL);
    if (argc >= 6 && strcmp(argv[2], "keys") == 0)
        return peer_keys(argv[3], argv[4], atoi(argv[5]));
    fprintf(stderr, "bad peer arguments\n");
    return 2;
}

typedef struct peer {
    pid_t pid;
    FILE *out; /* its stdout */
} peer;

static void peer_spawn(peer *p, char *const args[])
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    char *argv[16] = {"/proc/self/exe", "--peer"};
    int i = 0;
    for (; args[i] && i < 13; i++)
        argv[i + 2] = args[i];
    argv[i + 2] = NULL;
    assert_int_equal(posix_spawn(&p->pid, "/proc/self/exe", &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    p->out = fdopen(fds[0], "r");
    assert_non_null(p->out);
}

/* Reads the peer's lines until one starts with `prefix`; copies it to line. */
static void peer_expect(peer *p, const char *prefix, char *line, size_t size)
{
    while (fgets(line, (int)size, p->out)) {
        printf("  peer %d: %s", (int)p->pid, line);
        if (strncmp(line, prefix, strlen(prefix)) == 0)
            return;
    }
    fail_msg("peer %d ended without a '%s' line", (int)p->pid, prefix);
}

static int peer_wait(peer *p)
{
    char line[512];
    while (fgets(line, sizeof line, p->out))
        printf("  peer %d: %s", (int)p->pid, line);
    fclose(p->out);
    int status = 0;
    waitpid(p->pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* --------------------------------------------------------------- tests */

static void both_ways(rbus_nats_mode mode, const char *stream)
{
    int n = (int)rbus_test_scaled(2000, 100);
    printf("two processes, %s, %d messages each way\n", mode ? "JetStream" : "core", n);
    rbus *bus = new_bus(0);
    rbus_sub *sub = subscribe(bus, "pb.>", 0);
    rbus_nats_opts o;
    opts_for(&o, g_server.url, mode, "pa.>", "pb.>", stream);
    rbus_nats *b = bridge(bus, &o);
    if (mode == RBUS_NATS_JETSTREAM) {
        /* The stream must hold both directions for the peer's import. */
        assert_true(stream != NULL);
    }

    char count[16];
    snprintf(count, sizeof count, "%d", n);
    char *args[] = {"both", mode ? "js" : "core", g_server.url, count, (char *)stream, NULL};
    peer p;
    peer_spawn(&p, args);
    char line[512];
    peer_expect(&p, "ready", line, sizeof line);
    for (int i = 0; i < n; i++)
        publish_index(bus, "pa.go", (uint32_t)i, NULL);
    assert_int_equal(rbus_nats_flush(b, 30 * SEC), 0);
    assert_int_equal(receive_indices(sub, n, 30 * SEC, true), n);
    assert_int_equal(peer_wait(&p), 0);

    rbus_nats_stats st;
    assert_int_equal(rbus_nats_stats_get(b, &st), 0);
    print_stats("test", &st);
    assert_int_equal(st.sent, (uint64_t)n);
    assert_int_equal(st.send_failed, 0);
    assert_int_equal(st.imported, (uint64_t)n);
    assert_true(st.connected);
    rbus_nats_stop(b);
    rbus_unsubscribe(sub);
    rbus_destroy(bus);
}

static void two_processes_both_ways_core(void **state)
{
    (void)state;
    both_ways(RBUS_NATS_CORE, NULL);
}

static void two_processes_both_ways_jetstream(void **state)
{
    (void)state;
    /* One stream for both directions, made before either bridge imports. */
    rbus *bus = new_bus(0);
    rbus_nats_opts o;
    opts_for(&o, g_server.url, RBUS_NATS_JETSTREAM, "pa.>", "pb.>", "BOTHWAYS");
    rbus_nats_stop(bridge(bus, &o));
    rbus_destroy(bus);
    both_ways(RBUS_NATS_JETSTREAM, "BOTHWAYS");
}

static void same_key_from_two_processes_delivered_once(void **state)
{
    (void)state;
    int n = (int)rbus_test_scaled(500, 50);
    printf("two processes publish the same %d keys to JetStream\n", n);
    /* Local dedup off: only the server's window can suppress duplicates. */
    rbus *bus = new_bus(RBUS_DEDUP_OFF);
    rbus_sub *sub = subscribe(bus, "dk.>", (uint32_t)(4 * n));
    rbus_nats_opts o;
    opts_for(&o, g_server.url, RBUS_NATS_JETSTREAM, NULL, "dk.>", "DEDUP");
    rbus_nats *b = bridge(bus, &o);

    char count[16];
    snprintf(count, sizeof count, "%d", n);
    char *args[] = {"keys", g_server.url, "DEDUP", count, NULL};
    peer p1, p2;
    peer_spawn(&p1, args);
    peer_spawn(&p2, args);
    char l1[256], l2[256];
    peer_expect(&p1, "sent", l1, sizeof l1);
    peer_expect(&p2, "sent", l2, sizeof l2);
    assert_int_equal(peer_wait(&p1), 0);
    assert_int_equal(peer_wait(&p2), 0);
    unsigned long long s1, d1, s2, d2;
    assert_int_equal(sscanf(l1, "sent %llu dup %llu", &s1, &d1), 2);
    assert_int_equal(sscanf(l2, "sent %llu dup %llu", &s2, &d2), 2);
    /* Each key was acknowledged twice, once as a duplicate. */
    assert_int_equal(s1 + s2, 2 * (unsigned long long)n);
    assert_int_equal(d1 + d2, (unsigned long long)n);
    assert_int_equal(stream_msgs(g_server.url, "DEDUP"), (uint64_t)n);

    /* The receiving bus gets every key exactly once, with its key. */
    char *seen = calloc((size_t)n, 1);
    int got = 0;
    uint64_t deadline = rbus_test_now_ns() + 30 * SEC;
    while (got < n && rbus_test_now_ns() < deadline) {
        rbus_msg *m = NULL;
        if (rbus_recv(sub, &m, 100 * MS) != 0)
            continue;
        size_t klen = 0;
        const char *key = rbus_msg_key(m, &klen);
        assert_non_null(key);
        char text[32] = {0};
        assert_true(klen < sizeof text);
        memcpy(text, key, klen);
        int k = -1;
        assert_int_equal(sscanf(text, "key-%d", &k), 1);
        assert_true(k >= 0 && k < n);
        assert_int_equal(seen[k], 0);
        seen[k] = 1;
        assert_int_equal(rbus_msg_origin(m), RBUS_NATS_ORIGIN);
        got++;
        rbus_msg_release(m);
    }
    assert_int_equal(got, n);
    assert_quiet(sub, 500);
    free(seen);
    rbus_nats_stats st;
    rbus_nats_stats_get(b, &st);
    print_stats("receiver", &st);
    assert_int_equal(st.imported, (uint64_t)n);
    assert_int_equal(st.import_duplicates, 0);
    rbus_nats_stop(b);
    rbus_unsubscribe(sub);
    rbus_destroy(bus);
}

typedef struct publisher_arg {
    rbus *bus;
    int n;
    int per_batch;
    long pause_ms;
} publisher_arg;

static void *paced_publisher(void *arg)
{
    publisher_arg *a = arg;
    for (int i = 0; i < a->n; i++) {
        publish_index(a->bus, "rs.tick", (uint32_t)i, NULL);
        if ((i + 1) % a->per_batch == 0)
            fixture_sleep_ms(a->pause_ms);
    }
    return NULL;
}

static void server_restart_mid_stream(void **state)
{
    (void)state;
    nats_server srv = {0};
    assert_int_equal(nats_server_start(&srv, true), 0);
    int n = (int)rbus_test_scaled(20000, 2000);
    printf("JetStream export of %d messages over ~2 s; the server is killed (SIGKILL) "
           "after ~0.7 s and restarted 300 ms later\n", n);

    rbus *bus = new_bus(0);
    rbus_nats_opts o;
    opts_for(&o, srv.url, RBUS_NATS_JETSTREAM, "rs.>", NULL, "RESTART");
    o.export_block_timeout_ns = -1; /* nothing dropped locally: offered == taken */
    o.max_pending = 256;
    o.ack_timeout_ns = 2 * SEC;
    o.reconnect_wait_ns = 50 * MS;
    rbus_nats *b = bridge(bus, &o);

    publisher_arg pa = {bus, n, n / 400, 5};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, paced_publisher, &pa), 0);
    fixture_sleep_ms(700);
    rbus_nats_stats before;
    rbus_nats_stats_get(b, &before);
    nats_server_stop(&srv, SIGKILL);
    fixture_sleep_ms(300);
    assert_int_equal(nats_server_start(&srv, true), 0);
    pthread_join(th, NULL);
    assert_int_equal(rbus_nats_flush(b, 60 * SEC), 0);

    rbus_nats_stats st;
    rbus_nats_stats_get(b, &st);
    print_stats("before kill", &before);
    print_stats("after", &st);
    assert_int_equal(st.export_taken, (uint64_t)n);
    assert_int_equal(st.export_dropped, 0);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.sent + st.send_failed, (uint64_t)n);
    assert_true(st.disconnects >= 1);
    assert_true(st.reconnects >= 1);
    assert_true(st.connected);
    assert_true(st.sent > before.sent); /* it recovered */

    /* What the stream holds: every acknowledged message, plus perhaps some
     * whose ack was lost with the server. A durable consumer reads it all. */
    uint64_t stored = stream_msgs(srv.url, "RESTART");
    printf("stream holds %llu: sent %llu, failed %llu\n", (unsigned long long)stored,
           (unsigned long long)st.sent, (unsigned long long)st.send_failed);
    assert_true(stored >= st.sent);
    assert_true(stored <= st.sent + st.send_failed);

    rbus *bus2 = new_bus(0);
    rbus_sub *sub = subscribe(bus2, "rs.>", (uint32_t)n);
    rbus_nats_opts io;
    opts_for(&io, srv.url, RBUS_NATS_JETSTREAM, NULL, "rs.>", "RESTART");
    io.create_stream = false;
    io.durable = "restart_reader";
    rbus_nats *reader = bridge(bus2, &io);
    int got = 0;
    int64_t last = -1;
    uint64_t deadline = rbus_test_now_ns() + 30 * SEC;
    while ((uint64_t)got < stored && rbus_test_now_ns() < deadline) {
        rbus_msg *m = NULL;
        if (rbus_recv(sub, &m, 100 * MS) != 0)
            continue;
        int64_t i = index_of(m);
        assert_true(i > last); /* stream order is publish order, with gaps */
        last = i;
        got++;
        rbus_msg_release(m);
    }
    assert_int_equal((uint64_t)got, stored);
    assert_quiet(sub, 300);

    rbus_nats_stop(reader);
    rbus_unsubscribe(sub);
    rbus_destroy(bus2);
    rbus_nats_stop(b);
    rbus_destroy(bus);
    nats_server_destroy(&srv);
}

static void no_echo_loop(rbus_nats_mode mode, const char *stream)
{
    int n = 200;
    rbus *a = new_bus(0), *c = new_bus(0);
    rbus_sub *sa = subscribe(a, "ne.>", 0), *sc = subscribe(c, "ne.>", 0);
    rbus_nats_opts o;
    opts_for(&o, g_server.url, mode, "ne.>", "ne.>", stream);
    rbus_nats *ba = bridge(a, &o);
    rbus_nats *bc = bridge(c, &o);
    for (int i = 0; i < n; i++)
        publish_index(a, "ne.ping", (uint32_t)i, NULL);
    assert_int_equal(rbus_nats_flush(ba, 10 * SEC), 0);
    assert_int_equal(receive_indices(sc, n, 10 * SEC, true), n);
    assert_int_equal(receive_indices(sa, n, 10 * SEC, true), n);
    /* Long enough for an echo to have gone round several times. */
    assert_quiet(sc, 700);
    assert_quiet(sa, 1);
    assert_int_equal(rbus_nats_flush(bc, 10 * SEC), 0);

    rbus_nats_stats sta, stc;
    /* A's own exports come back from the stream (JetStream) on their own
     * schedule: wait for them rather than guess a time. */
    uint64_t deadline = rbus_test_now_ns() + 10 * SEC;
    do {
        rbus_nats_stats_get(ba, &sta);
    } while (mode == RBUS_NATS_JETSTREAM && sta.import_own < (uint64_t)n &&
             rbus_test_now_ns() < deadline && (fixture_sleep_ms(10), true));
    rbus_nats_stats_get(bc, &stc);
    print_stats("A", &sta);
    print_stats("C", &stc);
    assert_int_equal(sta.sent, (uint64_t)n);
    assert_int_equal(sta.imported, 0);
    assert_int_equal(sta.import_own, mode == RBUS_NATS_JETSTREAM ? (uint64_t)n : 0);
    assert_int_equal(stc.imported, (uint64_t)n);
    assert_int_equal(stc.export_skipped, (uint64_t)n);
    assert_int_equal(stc.sent, 0);
    rbus_topic *t = NULL;
    rbus_topic_stats ts;
    assert_int_equal(rbus_topic_open(a, "ne.ping", &t), 0);
    assert_int_equal(rbus_topic_stats_get(t, &ts), 0);
    assert_int_equal(ts.published, (uint64_t)n);

    rbus_nats_stop(ba);
    rbus_nats_stop(bc);
    rbus_unsubscribe(sa);
    rbus_unsubscribe(sc);
    rbus_destroy(a);
    rbus_destroy(c);
}

static void no_echo_loop_core(void **state)
{
    (void)state;
    no_echo_loop(RBUS_NATS_CORE, NULL);
}

static void no_echo_loop_jetstream(void **state)
{
    (void)state;
    no_echo_loop(RBUS_NATS_JETSTREAM, "NOECHO");
}

static void fill_keys(uint8_t *key, uint8_t *okey, int len)
{
    for (int j = 0; j < RBUS_MAX_KEY_LEN; j++) {
        key[j] = (uint8_t)(len * 7 + j * 13);
        okey[j] = (uint8_t)(255 - j - len);
    }
}

/* Core bridges on the shared server: bus a exports `pattern`, bus c
 * imports it. */
static void core_pair(rbus *a, rbus *c, const char *pattern, rbus_nats **ba, rbus_nats **bc)
{
    rbus_nats_opts o;
    opts_for(&o, g_server.url, RBUS_NATS_CORE, pattern, NULL, NULL);
    *ba = bridge(a, &o);
    opts_for(&o, g_server.url, RBUS_NATS_CORE, NULL, pattern, NULL);
    *bc = bridge(c, &o);
}

/* Binary keys and order keys of every length and byte value arrive intact,
 * and travel as base64url text. */
static void keys_travel_as_base64url(void **state)
{
    (void)state;
    rbus *a = new_bus(0), *c = new_bus(RBUS_DEDUP_OFF);
    rbus_sub *sc = subscribe(c, "kr.>", 512);
    rbus_nats *ba, *bc;
    core_pair(a, c, "kr.>", &ba, &bc);

    natsConnection *raw = NULL;
    natsSubscription *rs = NULL;
    assert_int_equal(natsConnection_ConnectTo(&raw, g_server.url), NATS_OK);
    assert_int_equal(natsConnection_SubscribeSync(&rs, raw, "kr.text"), NATS_OK);
    assert_int_equal(natsConnection_Flush(raw), NATS_OK);

    rbus_topic *t = NULL;
    assert_int_equal(rbus_topic_open(a, "kr.bin", &t), 0);
    uint8_t key[RBUS_MAX_KEY_LEN], okey[RBUS_MAX_KEY_LEN];
    for (int len = 1; len <= RBUS_MAX_KEY_LEN; len++) {
        fill_keys(key, okey, len);
        rbus_pub_opts po = {.key = key, .key_len = (size_t)len, .order_key = okey,
                            .order_key_len = (size_t)(RBUS_MAX_KEY_LEN + 1 - len)};
        uint32_t i = (uint32_t)len;
        assert_int_equal(rbus_publish_ex(t, &i, sizeof i, &po, NULL), 0);
    }
    /* The wire form: bytes fb ff are "-_8" in base64url without padding. */
    rbus_topic *tt = NULL;
    assert_int_equal(rbus_topic_open(a, "kr.text", &tt), 0);
    const uint8_t fbff[] = {0xfb, 0xff};
    rbus_pub_opts po = {.key = fbff, .key_len = 2};
    assert_int_equal(rbus_publish_ex(tt, "x", 1, &po, NULL), 0);
    assert_int_equal(rbus_nats_flush(ba, 10 * SEC), 0);

    for (int len = 1; len <= RBUS_MAX_KEY_LEN; len++) {
        rbus_msg *m = NULL;
        assert_int_equal(rbus_recv(sc, &m, 10 * SEC), 0);
        assert_string_equal(rbus_msg_topic(m), "kr.bin");
        assert_int_equal(index_of(m), (uint32_t)len);
        fill_keys(key, okey, len);
        size_t kl = 0, okl = 0;
        const void *k = rbus_msg_key(m, &kl);
        const void *ok = rbus_msg_order_key(m, &okl);
        assert_int_equal(kl, (size_t)len);
        assert_memory_equal(k, key, kl);
        assert_int_equal(okl, (size_t)(RBUS_MAX_KEY_LEN + 1 - len));
        assert_memory_equal(ok, okey, okl);
        assert_int_equal(rbus_msg_origin(m), RBUS_NATS_ORIGIN);
        rbus_msg_release(m);
    }
    rbus_msg *m = NULL;
    assert_int_equal(rbus_recv(sc, &m, 10 * SEC), 0);
    assert_string_equal(rbus_msg_topic(m), "kr.text");
    size_t kl = 0;
    const void *k = rbus_msg_key(m, &kl);
    assert_int_equal(kl, 2);
    assert_memory_equal(k, fbff, 2);
    rbus_msg_release(m);
    natsMsg *nm = NULL;
    assert_int_equal(natsSubscription_NextMsg(&nm, rs, 10000), NATS_OK);
    const char *value = NULL;
    assert_int_equal(natsMsgHeader_Get(nm, RBUS_NATS_KEY_HEADER, &value), NATS_OK);
    assert_string_equal(value, "-_8");
    natsMsg_Destroy(nm);

    /* A foreign id that is not base64url becomes the key as it is. */
    assert_int_equal(natsMsg_Create(&nm, "kr.foreign", NULL, "y", 1), NATS_OK);
    assert_int_equal(natsMsgHeader_Set(nm, RBUS_NATS_KEY_HEADER, "order#42"), NATS_OK);
    assert_int_equal(natsConnection_PublishMsg(raw, nm), NATS_OK);
    natsMsg_Destroy(nm);
    assert_int_equal(rbus_recv(sc, &m, 10 * SEC), 0);
    assert_string_equal(rbus_msg_topic(m), "kr.foreign");
    k = rbus_msg_key(m, &kl);
    assert_int_equal(kl, 8);
    assert_memory_equal(k, "order#42", 8);
    rbus_msg_release(m);

    natsSubscription_Destroy(rs);
    natsConnection_Destroy(raw);
    rbus_nats_stop(ba);
    rbus_nats_stop(bc);
    rbus_unsubscribe(sc);
    rbus_destroy(a);
    rbus_destroy(c);
}

/* Message headers travel as NATS headers both ways: a ringbus message's
 * headers arrive on a raw NATS subscriber and on the importing bus,
 * repeated names with their values in order; a foreign NATS message's headers become
 * the imported message's; NATS headers a ringbus message cannot carry
 * (too many) are counted as invalid and skipped. */
static void headers_travel_both_ways(void **state)
{
    (void)state;
    rbus *a = new_bus(0), *c = new_bus(0);
    rbus_sub *sc = subscribe(c, "hd.>", 64);
    rbus_nats *ba, *bc;
    core_pair(a, c, "hd.>", &ba, &bc);
    natsConnection *raw = NULL;
    natsSubscription *rs = NULL;
    assert_int_equal(natsConnection_ConnectTo(&raw, g_server.url), NATS_OK);
    assert_int_equal(natsConnection_SubscribeSync(&rs, raw, "hd.out"), NATS_OK);
    assert_int_equal(natsConnection_Flush(raw), NATS_OK);

    static const char tp[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    rbus_header h[3] = {
        {"traceparent", tp, sizeof tp - 1}, {"tenant", "acme", 4}, {"tenant", "beta", 4}};
    rbus_pub_opts po = {.headers = h, .header_count = 3};
    rbus_topic *t = NULL;
    assert_int_equal(rbus_topic_open(a, "hd.out", &t), 0);
    assert_int_equal(rbus_publish_ex(t, "x", 1, &po, NULL), 0);
    assert_int_equal(rbus_nats_flush(ba, 10 * SEC), 0);

    /* On the wire: NATS headers. */
    natsMsg *nm = NULL;
    assert_int_equal(natsSubscription_NextMsg(&nm, rs, 10000), NATS_OK);
    const char *value = NULL;
    assert_int_equal(natsMsgHeader_Get(nm, "traceparent", &value), NATS_OK);
    assert_string_equal(value, tp);
    const char **values = NULL;
    int nvalues = 0;
    assert_int_equal(natsMsgHeader_Values(nm, "tenant", &values, &nvalues), NATS_OK);
    assert_int_equal(nvalues, 2);
    assert_string_equal(values[0], "acme");
    assert_string_equal(values[1], "beta");
    free((void *)values);
    natsMsg_Destroy(nm);

    /* On the importing bus: the same headers. */
    rbus_msg *m = NULL;
    assert_int_equal(rbus_recv(sc, &m, 10 * SEC), 0);
    assert_int_equal(rbus_msg_header_count(m), 3);
    const void *v;
    size_t len;
    assert_int_equal(rbus_msg_header(m, "traceparent", &v, &len), 0);
    assert_string_equal(v, tp);
    /* NATS headers are a map: the values of a name keep their order, the
     * names need not. */
    const char *tenants[2];
    int nt = 0;
    for (size_t i = 0; i < 3; i++) {
        const char *name;
        assert_int_equal(rbus_msg_header_at(m, i, &name, &v, &len), 0);
        if (!strcmp(name, "tenant"))
            tenants[nt++] = v;
    }
    assert_int_equal(nt, 2);
    assert_string_equal(tenants[0], "acme");
    assert_string_equal(tenants[1], "beta");
    rbus_msg_release(m);

    /* A foreign NATS message's headers. */
    assert_int_equal(natsMsg_Create(&nm, "hd.foreign", NULL, "y", 1), NATS_OK);
    assert_int_equal(natsMsgHeader_Set(nm, "traceparent", tp), NATS_OK);
    assert_int_equal(natsConnection_PublishMsg(raw, nm), NATS_OK);
    natsMsg_Destroy(nm);
    assert_int_equal(rbus_recv(sc, &m, 10 * SEC), 0);
    assert_string_equal(rbus_msg_topic(m), "hd.foreign");
    assert_int_equal(rbus_msg_header_count(m), 1);
    assert_int_equal(rbus_msg_header(m, "traceparent", &v, &len), 0);
    assert_string_equal(v, tp);
    rbus_msg_release(m);

    /* More headers than a ringbus message may carry: skipped, counted. */
    rbus_nats_stats st;
    assert_int_equal(rbus_nats_stats_get(bc, &st), 0);
    uint64_t invalid = st.import_invalid;
    assert_int_equal(natsMsg_Create(&nm, "hd.many", NULL, "z", 1), NATS_OK);
    for (unsigned i = 0; i <= RBUS_MAX_HEADERS; i++) {
        char hn[16];
        snprintf(hn, sizeof hn, "h%u", i);
        assert_int_equal(natsMsgHeader_Set(nm, hn, "v"), NATS_OK);
    }
    assert_int_equal(natsConnection_PublishMsg(raw, nm), NATS_OK);
    natsMsg_Destroy(nm);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(rbus_nats_stats_get(bc, &st), 0);
        if (st.import_invalid > invalid)
            break;
        rbus_test_sleep_us(10000);
    }
    assert_int_equal(st.import_invalid, invalid + 1);
    assert_int_equal(rbus_recv(sc, &m, 0), -EAGAIN);

    natsSubscription_Destroy(rs);
    natsConnection_Destroy(raw);
    rbus_nats_stop(ba);
    rbus_nats_stop(bc);
    rbus_unsubscribe(sc);
    rbus_destroy(a);
    rbus_destroy(c);
}

/* NATS subjects that are not valid topics (here: longer than 255 bytes)
 * and ids too long to be keys are counted and skipped; the prefix is
 * stripped on import. */
static void invalid_subjects_are_counted_and_skipped(void **state)
{
    (void)state;
    rbus *c = new_bus(0);
    rbus_sub *sc = subscribe(c, ">", 0);
    rbus_nats_opts o;
    opts_for(&o, g_server.url, RBUS_NATS_CORE, NULL, ">", NULL);
    o.subject_prefix = "site1";
    rbus_nats *bc = bridge(c, &o);

    natsConnection *raw = NULL;
    assert_int_equal(natsConnection_ConnectTo(&raw, g_server.url), NATS_OK);
    char subject[400] = "site1.";
    memset(subject + 6, 'a', 300);
    subject[306] = '\0';
    assert_int_equal(natsConnection_PublishString(raw, subject, "long"), NATS_OK);
    natsMsg *nm = NULL;
    char id[300];
    memset(id, '#', 299);
    id[299] = '\0';
    assert_int_equal(natsMsg_Create(&nm, "site1.bad.key", NULL, "k", 1), NATS_OK);
    assert_int_equal(natsMsgHeader_Set(nm, RBUS_NATS_KEY_HEADER, id), NATS_OK);
    assert_int_equal(natsConnection_PublishMsg(raw, nm), NATS_OK);
    natsMsg_Destroy(nm);
    assert_int_equal(natsConnection_PublishString(raw, "site1.good.one", "ok"), NATS_OK);
    assert_int_equal(natsConnection_Flush(raw), NATS_OK);

    rbus_msg *m = NULL;
    assert_int_equal(rbus_recv(sc, &m, 10 * SEC), 0);
    assert_string_equal(rbus_msg_topic(m), "good.one");
    assert_int_equal(rbus_msg_size(m), 2);
    rbus_msg_release(m);
    assert_quiet(sc, 200);
    rbus_nats_stats st;
    rbus_nats_stats_get(bc, &st);
    print_stats("importer", &st);
    assert_int_equal(st.import_received, 3);
    assert_int_equal(st.import_invalid, 2);
    assert_int_equal(st.imported, 1);

    natsConnection_Destroy(raw);
    rbus_nats_stop(bc);
    rbus_unsubscribe(sc);
    rbus_destroy(c);
}

/* A frozen server (SIGSTOP: connected, silent) stops acks: the export stalls
 * at max_pending, the bridge's queue fills, and local publishers wait at
 * most export_block_timeout_ns before their message is counted as dropped.
 * Memory stays bounded; after SIGCONT everything adds up. */
static void frozen_server_gives_backpressure_and_counted_drops(void **state)
{
    (void)state;
    nats_server srv = {0};
    assert_int_equal(nats_server_start(&srv, true), 0);
    rbus *bus = new_bus(0);
    rbus_nats_opts o;
    opts_for(&o, srv.url, RBUS_NATS_JETSTREAM, "bp.>", NULL, "BACKPRESSURE");
    o.max_pending = 8;
    o.export_capacity = 16;
    o.export_block_timeout_ns = 20 * MS;
    o.ack_timeout_ns = 30 * SEC;
    rbus_nats *b = bridge(bus, &o);

    kill(srv.pid, SIGSTOP);
    int n = 100;
    uint64_t worst = 0;
    for (int i = 0; i < n; i++) {
        uint64_t t0 = rbus_test_now_ns();
        publish_index(bus, "bp.x", (uint32_t)i, NULL);
        uint64_t dt = rbus_test_now_ns() - t0;
        worst = dt > worst ? dt : worst;
    }
    rbus_nats_stats st;
    rbus_nats_stats_get(b, &st);
    print_stats("frozen", &st);
    printf("worst local publish while frozen: %.1f ms (bound 20 ms)\n", worst / 1e6);
    assert_true(worst < 500 * MS); /* bounded by the block timeout, with slack for a busy CI */
    assert_true(st.export_dropped > 0);
    assert_true(st.export_depth <= 16);
    /* max_pending awaiting acks, plus the batch the export thread holds
     * (64, one of them stalled in the publish call). */
    assert_true(st.in_flight <= 8 + 64);
    kill(srv.pid, SIGCONT);

    assert_int_equal(rbus_nats_flush(b, 30 * SEC), 0);
    rbus_nats_stats_get(b, &st);
    print_stats("thawed", &st);
    assert_int_equal(st.export_taken + st.export_dropped, (uint64_t)n);
    assert_int_equal(st.sent + st.send_failed, st.export_taken);
    assert_int_equal(stream_msgs(srv.url, "BACKPRESSURE"), st.sent);
    rbus_nats_stop(b);
    rbus_destroy(bus);
    nats_server_destroy(&srv);
}

static void start_errors_are_clear_and_fast(void **state)
{
    (void)state;
    rbus *bus = new_bus(0);
    rbus_nats *b = (rbus_nats *)1;
    rbus_nats_opts o;
    char err[256];

    opts_for(&o, g_server.url, RBUS_NATS_CORE, "x.>", NULL, NULL);
    assert_int_equal(rbus_nats_start(NULL, bus, &o, err, sizeof err), -EINVAL);
    assert_int_equal(rbus_nats_start(&b, NULL, &o, err, sizeof err), -EINVAL);
    assert_null(b);
    assert_int_equal(rbus_nats_start(&b, bus, NULL, NULL, 0), -EINVAL);
    o.export_pattern = NULL; /* neither direction */
    assert_int_equal(rbus_nats_start(&b, bus, &o, err, sizeof err), -EINVAL);
    o.export_pattern = "x..y";
    assert_int_equal(rbus_nats_start(&b, bus, &o, err, sizeof err), -EINVAL);
    o.export_pattern = "x.>";
    o.subject_prefix = "a.*";
    assert_int_equal(rbus_nats_start(&b, bus, &o, err, sizeof err), -EINVAL);
    o.subject_prefix = NULL;
    o.mode = (rbus_nats_mode)7;
    assert_int_equal(rbus_nats_start(&b, bus, &o, err, sizeof err), -EINVAL);
    o.mode = RBUS_NATS_JETSTREAM;
    o.create_stream = true; /* without a stream name */
    assert_int_equal(rbus_nats_start(&b, bus, &o, err, sizeof err), -EINVAL);
    assert_int_equal(rbus_nats_stats_get(NULL, NULL), -EINVAL);
    assert_int_equal(rbus_nats_flush(NULL, 0), -EINVAL);
    rbus_nats_stop(NULL);
    rbus_nats_opts_init(NULL);

    /* Nobody listens: refused at once, with the URL in the reason. */
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", fixture_free_port());
    opts_for(&o, url, RBUS_NATS_CORE, "x.>", NULL, NULL);
    uint64_t t0 = rbus_test_now_ns();
    assert_int_equal(rbus_nats_start(&b, bus, &o, err, sizeof err), -ECONNREFUSED);
    printf("refused in %.1f ms: %s\n", (rbus_test_now_ns() - t0) / 1e6, err);
    assert_true(rbus_test_now_ns() - t0 < 5 * SEC);
    assert_non_null(strstr(err, url));
    assert_null(b);

    /* A URL without a host. */
    opts_for(&o, "nats://:", RBUS_NATS_CORE, "x.>", NULL, NULL);
    int rc = rbus_nats_start(&b, bus, &o, err, sizeof err);
    printf("bad URL: %d (%s): %s\n", rc, rbus_strerror(rc), err);
    assert_true(rc == -EINVAL || rc == -ECONNREFUSED);
    assert_null(b);

    /* JetStream asked of a server without it. */
    nats_server core = {0};
    assert_int_equal(nats_server_start(&core, false), 0);
    opts_for(&o, core.url, RBUS_NATS_JETSTREAM, "x.>", NULL, "NOJS");
    rc = rbus_nats_start(&b, bus, &o, err, sizeof err);
    printf("no JetStream: %d (%s): %s\n", rc, rbus_strerror(rc), err);
    assert_int_equal(rc, -ENOTSUP);
    assert_null(b);
    /* Export only, no stream to create: still found out at start. */
    opts_for(&o, core.url, RBUS_NATS_JETSTREAM, "x.>", NULL, NULL);
    rc = rbus_nats_start(&b, bus, &o, err, sizeof err);
    printf("no JetStream, export only: %d (%s): %s\n", rc, rbus_strerror(rc), err);
    assert_int_equal(rc, -ENOTSUP);
    assert_null(b);
    nats_server_destroy(&core);

    /* Importing from a stream that does not exist. */
    opts_for(&o, g_server.url, RBUS_NATS_JETSTREAM, NULL, "nostream.>", "MISSING");
    o.create_stream = false;
    rc = rbus_nats_start(&b, bus, &o, err, sizeof err);
    printf("missing stream: %d (%s): %s\n", rc, rbus_strerror(rc), err);
    assert_int_equal(rc, -ENOENT);
    assert_null(b);

    /* A closed bus. */
    rbus_close(bus);
    opts_for(&o, g_server.url, RBUS_NATS_CORE, "x.>", NULL, NULL);
    assert_int_equal(rbus_nats_start(&b, bus, &o, err, sizeof err), -ESHUTDOWN);
    assert_null(b);
    rbus_destroy(bus);
}

/* A frozen server with big messages: writes block in the kernel. Stats
 * never wait for cnats, and stop returns within its bound (ack timeout plus
 * cnats' write deadline), counting what it could not send. */
static void stop_is_bounded_with_a_frozen_server(void **state)
{
    (void)state;
    nats_server srv = {0};
    assert_int_equal(nats_server_start(&srv, true), 0);
    for (int js = 0; js < 2; js++) {
        rbus *bus = new_bus(0);
        rbus_nats_opts o;
        opts_for(&o, srv.url, js ? RBUS_NATS_JETSTREAM : RBUS_NATS_CORE, "fz.>", NULL,
                 js ? "FROZEN" : NULL);
        o.ack_timeout_ns = 1 * SEC;
        o.export_block_timeout_ns = 10 * MS;
        o.max_pending = 16;
        rbus_nats *b = bridge(bus, &o);
        kill(srv.pid, SIGSTOP);
        static char big[60000];
        rbus_topic *t = NULL;
        assert_int_equal(rbus_topic_open(bus, "fz.big", &t), 0);
        for (int i = 0; i < 1500; i++)
            assert_int_equal(rbus_publish(t, big, sizeof big), 0);
        uint64_t t0 = rbus_test_now_ns();
        rbus_nats_stats st;
        assert_int_equal(rbus_nats_stats_get(b, &st), 0);
        uint64_t stats_ns = rbus_test_now_ns() - t0;
        print_stats(js ? "frozen js" : "frozen core", &st);
        assert_true(stats_ns < 100 * MS);
        t0 = rbus_test_now_ns();
        rbus_nats_stop(b);
        double stop_s = (rbus_test_now_ns() - t0) / 1e9;
        printf("%s: stats took %.3f ms, stop took %.2f s (bound: ack 1 s + write deadline 2 s)\n",
               js ? "JetStream" : "core", stats_ns / 1e6, stop_s);
        assert_true(stop_s < 6.0); /* the bound plus slack for a busy machine */
        kill(srv.pid, SIGCONT);
        rbus_destroy(bus);
    }
    nats_server_destroy(&srv);
}

/* Reconnects exhausted: the connection closes for good, what was awaiting
 * an ack fails, later exports fail at once, and nothing is stuck. */
static void closed_connection_fails_exports_and_frees_the_queue(void **state)
{
    (void)state;
    nats_server srv = {0};
    assert_int_equal(nats_server_start(&srv, true), 0);
    rbus *bus = new_bus(0);
    rbus_nats_opts o;
    opts_for(&o, srv.url, RBUS_NATS_JETSTREAM, "cl.>", NULL, "CLOSED");
    o.max_reconnect = 1;
    o.reconnect_wait_ns = 20 * MS;
    o.export_block_timeout_ns = 50 * MS;
    o.ack_timeout_ns = 30 * SEC; /* longer than the test: acks must fail by closing */
    rbus_nats *b = bridge(bus, &o);
    for (int i = 0; i < 10; i++)
        publish_index(bus, "cl.x", (uint32_t)i, NULL);
    assert_int_equal(rbus_nats_flush(b, 10 * SEC), 0);
    nats_server_destroy(&srv);
    rbus_nats_stats st;
    uint64_t deadline = rbus_test_now_ns() + 10 * SEC;
    do {
        fixture_sleep_ms(20);
        rbus_nats_stats_get(b, &st);
    } while (st.connected && rbus_test_now_ns() < deadline);
    assert_false(st.connected);
    fixture_sleep_ms(1000); /* its one reconnect attempt (20 ms later, refused) runs out */
    for (int i = 10; i < 110; i++)
        publish_index(bus, "cl.x", (uint32_t)i, NULL);
    deadline = rbus_test_now_ns() + 10 * SEC;
    do {
        fixture_sleep_ms(20);
        rbus_nats_stats_get(b, &st);
    } while ((st.export_depth > 0 || st.in_flight > 0) && rbus_test_now_ns() < deadline);
    print_stats("closed", &st);
    assert_int_equal(st.sent, 10);
    assert_int_equal(st.export_taken + st.export_dropped, 110);
    assert_int_equal(st.sent + st.send_failed, st.export_taken);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(rbus_nats_flush(b, 1 * SEC) == 0, false); /* the connection is gone */
    uint64_t t0 = rbus_test_now_ns();
    rbus_nats_stop(b);
    assert_true(rbus_test_now_ns() - t0 < 2 * SEC);
    rbus_destroy(bus);
}

/* A bridge that exports and imports one pattern through a durable consumer
 * knows its own exports again after a restart. */
static void restarted_durable_bridge_skips_its_own_exports(void **state)
{
    (void)state;
    rbus *bus = new_bus(0);
    rbus_sub *sub = subscribe(bus, "dr.>", 0);
    rbus_nats_opts o;
    opts_for(&o, g_server.url, RBUS_NATS_JETSTREAM, "dr.>", "dr.>", "DURABLE");
    o.durable = "restart_me";
    rbus_nats *b = bridge(bus, &o);
    rbus_nats_stop(b); /* the durable consumer now exists, at the stream's end */
    /* The same bridge exports while its import is down (as when a process
     * exports its last messages at stop and restarts later): export only,
     * same identity. */
    rbus_nats_opts eo = o;
    eo.import_pattern = NULL;
    b = bridge(bus, &eo);
    for (int i = 0; i < 10; i++)
        publish_index(bus, "dr.x", (uint32_t)i, NULL);
    assert_int_equal(rbus_nats_flush(b, 10 * SEC), 0);
    rbus_nats_stop(b);
    assert_int_equal(receive_indices(sub, 10, 5 * SEC, true), 10); /* the local copies */
    b = bridge(bus, &o); /* restarted: the consumer holds our 10 exports */
    rbus_nats_stats st;
    uint64_t deadline = rbus_test_now_ns() + 10 * SEC;
    do {
        fixture_sleep_ms(20);
        rbus_nats_stats_get(b, &st);
    } while (st.import_received < 10 && rbus_test_now_ns() < deadline);
    print_stats("restarted", &st);
    assert_quiet(sub, 300);
    rbus_nats_stats_get(b, &st);
    assert_int_equal(st.import_received, 10);
    assert_int_equal(st.import_own, 10);
    assert_int_equal(st.imported, 0);
    rbus_nats_stop(b);
    rbus_unsubscribe(sub);
    rbus_destroy(bus);
}

typedef struct steady_publisher {
    rbus *bus;
    atomic_bool stop;
    atomic_uint_fast64_t published;
} steady_publisher;

static void *steady_publish(void *arg)
{
    steady_publisher *p = arg;
    rbus_topic *t = NULL;
    assert_int_equal(rbus_topic_open(p->bus, "fl.x", &t), 0);
    for (uint32_t i = 0; !atomic_load(&p->stop); i++) {
        if (rbus_publish(t, &i, sizeof i) != 0)
            break;
        atomic_fetch_add(&p->published, 1);
    }
    return NULL;
}

/* A flush returns once everything queued before it is through, even while
 * publishing goes on; idle it answers at once; after rbus_close it still
 * answers. */
static void flush_reaches_its_mark_under_load_and_after_close(void **state)
{
    (void)state;
    rbus *bus = new_bus(0);
    rbus_nats_opts o;
    opts_for(&o, g_server.url, RBUS_NATS_JETSTREAM, "fl.>", NULL, "FLUSH");
    o.export_block_timeout_ns = -1; /* lossless: nothing dropped locally */
    rbus_nats *b = bridge(bus, &o);

    assert_int_equal(rbus_nats_flush(b, 0), 0); /* idle: nothing to do */
    uint64_t t0 = rbus_test_now_ns();
    assert_int_equal(rbus_nats_flush(b, 5 * SEC), 0);
    printf("idle flush: %.1f ms\n", (rbus_test_now_ns() - t0) / 1e6);
    assert_true(rbus_test_now_ns() - t0 < 1 * SEC);

    steady_publisher p = {.bus = bus};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, steady_publish, &p), 0);
    for (int round = 0; round < 3; round++) {
        fixture_sleep_ms(200);
        uint64_t before = atomic_load(&p.published);
        t0 = rbus_test_now_ns();
        int rc = rbus_nats_flush(b, 20 * SEC);
        rbus_nats_stats st;
        rbus_nats_stats_get(b, &st);
        printf("flush under load: %d in %.1f ms; published before %llu, done %llu\n", rc,
               (rbus_test_now_ns() - t0) / 1e6, (unsigned long long)before,
               (unsigned long long)(st.sent + st.send_failed));
        assert_int_equal(rc, 0);
        assert_true(st.sent + st.send_failed >= before);
    }
    atomic_store(&p.stop, true);
    pthread_join(th, NULL);

    /* flush(0) never says "done" early: right after bursts of 64 (the
     * export thread's batch size), a 0 must mean every one is through. A
     * core bridge counts each send as it goes, so the moments between two
     * messages of a batch come often. */
    rbus *cbus = new_bus(0);
    rbus_nats_opts co;
    opts_for(&co, g_server.url, RBUS_NATS_CORE, "fz0.>", NULL, NULL);
    rbus_nats *cb = bridge(cbus, &co);
    rbus_topic *t = NULL;
    assert_int_equal(rbus_topic_open(cbus, "fz0.x", &t), 0);
    int early_zero = 0, zeros = 0;
    uint64_t cpublished = 0;
    for (int burst = 0; burst < 300; burst++) {
        for (uint32_t i = 0; i < 64; i++, cpublished++)
            assert_int_equal(rbus_publish(t, &i, sizeof i), 0);
        for (int poll = 0; poll < 2000; poll++) {
            if (rbus_nats_flush(cb, 0) != 0) {
                struct timespec ts = {0, 20000};
                nanosleep(&ts, NULL);
                continue;
            }
            zeros++;
            rbus_nats_stats st;
            rbus_nats_stats_get(cb, &st);
            early_zero += st.sent + st.send_failed != cpublished;
            break;
        }
    }
    printf("flush(0) after bursts: %d of 300 said done, %d of them early\n", zeros, early_zero);
    assert_true(zeros > 0);
    assert_int_equal(early_zero, 0);
    rbus_nats_stop(cb);
    rbus_destroy(cbus);

    rbus_close(bus);
    t0 = rbus_test_now_ns();
    assert_int_equal(rbus_nats_flush(b, 20 * SEC), 0);
    printf("flush after rbus_close: %.1f ms\n", (rbus_test_now_ns() - t0) / 1e6);
    rbus_nats_stats st;
    rbus_nats_stats_get(b, &st);
    assert_int_equal(st.sent + st.send_failed, atomic_load(&p.published));
    assert_int_equal(st.send_failed, 0);
    assert_int_equal(rbus_nats_flush(b, -1), 0); /* forever, with nothing left */
    rbus_nats_stop(b);
    rbus_destroy(bus);
}

/* The bridges' metrics: every family once, a sample per bridge whose value
 * is the stats API's, snprintf semantics, and promtool (when installed)
 * accepts the text. */
static void metrics_match_the_stats(void **state)
{
    (void)state;
    rbus *a = new_bus(0), *c = new_bus(0);
    rbus_sub *sc = subscribe(c, "mx.>", 0);
    rbus_nats *ba, *bc;
    core_pair(a, c, "mx.>", &ba, &bc);
    for (int i = 0; i < 25; i++)
        publish_index(a, "mx.m", (uint32_t)i, NULL);
    assert_int_equal(rbus_nats_flush(ba, 10 * SEC), 0);
    assert_int_equal(receive_indices(sc, 25, 10 * SEC, true), 25);

    const rbus_nats *both[] = {ba, bc};
    int len = rbus_nats_prometheus(both, 2, NULL, 0);
    assert_true(len > 0);
    char *text = malloc((size_t)len + 1);
    assert_int_equal(rbus_nats_prometheus(both, 2, text, (size_t)len + 1), len);
    assert_int_equal(strlen(text), (size_t)len);
    rbus_nats_stats sa, sb;
    rbus_nats_stats_get(ba, &sa);
    rbus_nats_stats_get(bc, &sb);
    char want[256], label[64];
    const char *sample = "ringbus_nats_sent_total{bridge=\"";
    snprintf(label, sizeof label, "%s", strstr(text, sample) + strlen(sample));
    *strchr(label, '"') = '\0';
    snprintf(want, sizeof want, "ringbus_nats_sent_total{bridge=\"%s\"} %llu\n", label,
             (unsigned long long)sa.sent);
    assert_non_null(strstr(text, want));
    assert_int_equal(sa.sent, 25);
    assert_int_equal(sb.imported, 25);
    assert_non_null(strstr(text, "ringbus_nats_imported_total{bridge=\""));
    assert_non_null(strstr(text, "} 25\n"));
    /* Each family's HELP once, whatever the number of bridges. */
    const char *help = "# HELP ringbus_nats_sent_total ";
    const char *first = strstr(text, help);
    assert_non_null(first);
    assert_null(strstr(first + 1, help));
    /* snprintf semantics: a short buffer gets the length and a NUL. */
    char small[40];
    assert_int_equal(rbus_nats_prometheus(both, 2, small, sizeof small), len);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_int_equal(rbus_nats_prometheus(NULL, 1, NULL, 0), -EINVAL);
    const rbus_nats *with_null[] = {ba, NULL};
    assert_int_equal(rbus_nats_prometheus(with_null, 2, NULL, 0), -EINVAL);
    assert_int_equal(rbus_nats_prometheus(both, 2, NULL, 10), -EINVAL);
    assert_int_equal(rbus_nats_prometheus(NULL, 0, NULL, 0), 0);

    if (system("command -v promtool >/dev/null 2>&1") == 0) {
        FILE *p = popen("promtool check metrics", "w");
        assert_non_null(p);
        fwrite(text, 1, (size_t)len, p);
        int rc = pclose(p);
        if (rc != 0)
            fail_msg("promtool check metrics rejected:\n%s", text);
        printf("promtool check metrics: ok (%d bytes)\n", len);
    } else {
        printf("promtool not installed (Debian package prometheus): text not checked by it\n");
    }
    free(text);
    rbus_nats_stop(ba);
    rbus_nats_stop(bc);
    rbus_unsubscribe(sc);
    rbus_destroy(a);
    rbus_destroy(c);
}

static int group_setup(void **state)
{
    (void)state;
    return nats_server_start(&g_server, true);
}

static int group_teardown(void **state)
{
    (void)state;
    nats_server_destroy(&g_server);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--peer") == 0)
        return peer_main(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    printf("RBUS_STRESS_SCALE=%g\n", rbus_test_stress_scale());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(start_errors_are_clear_and_fast),
        cmocka_unit_test(keys_travel_as_base64url),
        cmocka_unit_test(headers_travel_both_ways),
        cmocka_unit_test(invalid_subjects_are_counted_and_skipped),
        cmocka_unit_test(two_processes_both_ways_core),
        cmocka_unit_test(two_processes_both_ways_jetstream),
        cmocka_unit_test(same_key_from_two_processes_delivered_once),
        cmocka_unit_test(no_echo_loop_core),
        cmocka_unit_test(no_echo_loop_jetstream),
        cmocka_unit_test(frozen_server_gives_backpressure_and_counted_drops),
        cmocka_unit_test(server_restart_mid_stream),
        cmocka_unit_test(stop_is_bounded_with_a_frozen_server),
        cmocka_unit_test(closed_connection_fails_exports_and_frees_the_queue),
        cmocka_unit_test(restarted_durable_bridge_skips_its_own_exports),
        cmocka_unit_test(flush_reaches_its_mark_under_load_and_after_close),
        cmocka_unit_test(metrics_match_the_stats),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
