/*
 * nats_bridge: messages per second through the NATS bridge (a local publish
 * on one bus to a receive on another bus, through a real nats-server) next
 * to cnats' own rate on the same server, in the same run, interleaved.
 *
 *   core:      cnats publish -> cnats subscription      vs
 *              rbus_publish -> bridge -> NATS -> bridge -> rbus_recv
 *   jetstream: cnats js_PublishAsync until every ack    vs
 *              rbus_publish -> bridge (async, acked) until rbus_nats_flush
 *
 * It starts its own nats-server (Debian package nats-server) on a free port
 * with a temporary store. Every run checks its count: a row that lost
 * messages says so. Usage: nats_bridge [--messages N] [--payload B]
 * [--reps R] [--csv FILE]
 */
#include <ringbus.h>
#include <ringbus_nats.h>

#include <nats/nats.h>

#include "../tests/nats/nats_fixture.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define SEC INT64_C(1000000000)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct run {
    double rate; /* messages per second */
    uint64_t delivered;
};

static void die(const char *what, int rc)
{
    fprintf(stderr, "nats_bridge: %s failed (%d)\n", what, rc);
    exit(1);
}

struct raw_receiver {
    natsSubscription *sub;
    uint64_t want, delivered, last_ns;
};

static void *raw_receive_all(void *arg)
{
    struct raw_receiver *rx = arg;
    natsMsg *m = NULL;
    rx->last_ns = now_ns();
    while (rx->delivered < rx->want && natsSubscription_NextMsg(&m, rx->sub, 2000) == NATS_OK) {
        rx->delivered++;
        rx->last_ns = now_ns();
        natsMsg_Destroy(m);
    }
    return NULL;
}

/* cnats alone, core: one connection publishes, another receives, with the
 * bridge's pending limits (65536 messages, 64 MiB) and a concurrent
 * receiver, like the bridge path. */
static struct run raw_core(const char *url, int n, const char *payload, int len)
{
    natsConnection *pub = NULL, *sub = NULL;
    natsSubscription *s = NULL;
    if (natsConnection_ConnectTo(&pub, url) != NATS_OK ||
        natsConnection_ConnectTo(&sub, url) != NATS_OK ||
        natsConnection_SubscribeSync(&s, sub, "raw.core") != NATS_OK ||
        natsSubscription_SetPendingLimits(s, 65536, 64 * 1024 * 1024) != NATS_OK ||
        natsConnection_Flush(sub) != NATS_OK)
        die("raw core setup", 0);
    struct raw_receiver rx = {.sub = s, .want = (uint64_t)n};
    pthread_t th;
    if (pthread_create(&th, NULL, raw_receive_all, &rx))
        die("pthread_create", 0);
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; i++)
        natsConnection_Publish(pub, "raw.core", payload, len);
    natsConnection_Flush(pub);
    pthread_join(th, NULL);
    struct run r = {.delivered = rx.delivered};
    r.rate = r.delivered / ((rx.last_ns - t0) / 1e9);
    natsSubscription_Destroy(s);
    natsConnection_Destroy(pub);
    natsConnection_Destroy(sub);
    return r;
}

static void on_raw_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js, (void)pae;
    if (pa)
        atomic_fetch_add((_Atomic uint64_t *)closure, 1);
    natsMsg_Destroy(msg);
}

/* cnats alone, JetStream: async publishes, at most 1024 unacknowledged (the
 * bridge's default), until every ack is in. */
static struct run raw_js(const char *url, int n, const char *payload, int len)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    _Atomic uint64_t acked = 0;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 1024;
    jo.PublishAsync.AckHandler = on_raw_ack;
    jo.PublishAsync.AckHandlerClosure = (void *)&acked;
    if (natsConnection_ConnectTo(&nc, url) != NATS_OK ||
        natsConnection_JetStream(&js, nc, &jo) != NATS_OK)
        die("raw jetstream setup", 0);
    /* The same kind of stream the bridge creates: file storage, defaults. */
    const char *subjects[] = {"rawjs.>"};
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = "BENCHRAW";
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    jsStreamInfo *si = NULL;
    if (js_AddStream(&si, js, &cfg, NULL, NULL) != NATS_OK)
        die("raw jetstream stream", 0);
    jsStreamInfo_Destroy(si);
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        natsStatus s;
        do
            s = js_PublishAsync(js, "rawjs.x", payload, len, NULL);
        while (s == NATS_TIMEOUT);
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 30000;
    js_PublishAsyncComplete(js, &po);
    struct run r = {.delivered = atomic_load(&acked)};
    r.rate = r.delivered / ((now_ns() - t0) / 1e9);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return r;
}

static rbus_nats *start(rbus *bus, const char *url, rbus_nats_mode mode, const char *exp,
                        const char *imp, const char *stream)
{
    rbus_nats_opts o;
    rbus_nats_opts_init(&o);
    o.url = url;
    o.mode = mode;
    o.export_pattern = exp;
    o.import_pattern = imp;
    o.stream = stream;
    o.create_stream = stream != NULL;
    o.export_capacity = 4096;
    char err[256];
    rbus_nats *b = NULL;
    int rc = rbus_nats_start(&b, bus, &o, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "rbus_nats_start: %s\n", err);
        exit(1);
    }
    return b;
}

struct receiver {
    rbus_sub *sub;
    uint64_t want, delivered, last_ns;
};

/* Takes messages until `want` arrived or none came for 2 s; last_ns is the
 * time of the last one, so lost messages do not count idle time. */
static void *receive_all(void *arg)
{
    struct receiver *rx = arg;
    rbus_msg *batch[256];
    rx->last_ns = now_ns();
    while (rx->delivered < rx->want) {
        int got = rbus_recv_batch(rx->sub, batch, 256, 2 * SEC);
        if (got <= 0)
            break;
        for (int i = 0; i < got; i++)
            rbus_msg_release(batch[i]);
        rx->delivered += (uint64_t)got;
        rx->last_ns = now_ns();
    }
    return NULL;
}

/* Through the bridge, core: bus A exports, bus B imports and receives. */
static struct run bridge_core(const char *url, int n, const char *payload, int len)
{
    rbus *a = NULL, *b = NULL;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.default_capacity = 65536;
    if (rbus_create(&a, &cfg) || rbus_create(&b, &cfg))
        die("rbus_create", 0);
    rbus_sub *sub = NULL;
    rbus_topic *t = NULL;
    if (rbus_subscribe(b, "bc.>", NULL, &sub) || rbus_topic_open(a, "bc.x", &t))
        die("bus setup", 0);
    rbus_nats *ex = start(a, url, RBUS_NATS_CORE, "bc.>", NULL, NULL);
    rbus_nats *im = start(b, url, RBUS_NATS_CORE, NULL, "bc.>", NULL);
    /* The receiver runs while the publisher publishes, as in a real system:
     * core NATS drops what a receiver does not take in time. */
    struct receiver rx = {.sub = sub, .want = (uint64_t)n};
    pthread_t th;
    if (pthread_create(&th, NULL, receive_all, &rx))
        die("pthread_create", 0);
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; i++)
        rbus_publish(t, payload, (size_t)len);
    pthread_join(th, NULL);
    struct run r = {.delivered = rx.delivered};
    r.rate = r.delivered / ((rx.last_ns - t0) / 1e9);
    if (r.delivered < (uint64_t)n) {
        /* Say where they went: core NATS is at most once. */
        rbus_nats_stats se, si;
        rbus_nats_stats_get(ex, &se);
        rbus_nats_stats_get(im, &si);
        fprintf(stderr,
                "nats_bridge: core run delivered %llu of %d: exporter sent %llu failed %llu "
                "dropped %llu; importer received %llu imported %llu, client dropped %llu "
                "(slow consumer)\n",
                (unsigned long long)r.delivered, n, (unsigned long long)se.sent,
                (unsigned long long)se.send_failed, (unsigned long long)se.export_dropped,
                (unsigned long long)si.import_received, (unsigned long long)si.imported,
                (unsigned long long)si.import_dropped);
    }
    rbus_nats_stop(ex);
    rbus_nats_stop(im);
    rbus_unsubscribe(sub);
    rbus_destroy(a);
    rbus_destroy(b);
    return r;
}

/* Through the bridge, JetStream: until the stream acknowledged everything. */
static struct run bridge_js(const char *url, int n, const char *payload, int len)
{
    rbus *a = NULL;
    if (rbus_create(&a, NULL))
        die("rbus_create", 0);
    rbus_topic *t = NULL;
    if (rbus_topic_open(a, "bj.x", &t))
        die("topic", 0);
    rbus_nats *ex = start(a, url, RBUS_NATS_JETSTREAM, "bj.>", NULL, "BENCHBRIDGE");
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; i++)
        rbus_publish(t, payload, (size_t)len);
    if (rbus_nats_flush(ex, 60 * SEC) != 0)
        fprintf(stderr, "nats_bridge: flush timed out\n");
    struct run r = {0};
    rbus_nats_stats st;
    rbus_nats_stats_get(ex, &st);
    r.delivered = st.sent;
    r.rate = r.delivered / ((now_ns() - t0) / 1e9);
    rbus_nats_stop(ex);
    rbus_destroy(a);
    return r;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    int n = 200000, len = 64, reps = 5;
    const char *csv_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--messages") == 0 && i + 1 < argc)
            n = atoi(argv[++i]);
        else if (strcmp(argv[i], "--payload") == 0 && i + 1 < argc)
            len = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--csv") == 0 && i + 1 < argc)
            csv_path = argv[++i];
        else {
            printf("usage: %s [--messages N (200000)] [--payload BYTES (64)] [--reps R (5)] "
                   "[--csv FILE]\n",
                   argv[0]);
            return strcmp(argv[i], "--help") == 0 ? 0 : 2;
        }
    }
    if (n < 1 || len < 0 || len > 65536 || reps < 1 || reps > 100) {
        fprintf(stderr, "nats_bridge: out of range\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    nats_server srv = {0};
    if (nats_server_start(&srv, true) != 0)
        return 1;
    char *payload = calloc(1, (size_t)len + 1);
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv)
        fprintf(csv, "rep,mode,impl,messages,payload,delivered,msgs_per_s\n");

    const char *names[4] = {
        "core: cnats publish->subscribe", "core: ringbus->bridge->NATS->bridge->ringbus",
        "jetstream: cnats publish async, acked", "jetstream: ringbus->bridge, acked"};
    double *rates[4];
    uint64_t lost[4] = {0};
    for (int k = 0; k < 4; k++)
        rates[k] = calloc((size_t)reps, sizeof(double));
    printf(
        "# nats_bridge: %d messages of %d bytes, %d interleaved repetitions, nats-server on %s\n",
        n, len, reps, srv.url);
    for (int r = 0; r < reps; r++) {
        struct run runs[4] = {
            raw_core(srv.url, n, payload, len), bridge_core(srv.url, n, payload, len),
            raw_js(srv.url, n, payload, len), bridge_js(srv.url, n, payload, len)};
        for (int k = 0; k < 4; k++) {
            rates[k][r] = runs[k].rate;
            lost[k] += (uint64_t)n - runs[k].delivered;
            if (csv)
                fprintf(csv, "%d,%s,%s,%d,%d,%llu,%.0f\n", r, k < 2 ? "core" : "jetstream",
                        k % 2 ? "ringbus_bridge" : "cnats", n, len,
                        (unsigned long long)runs[k].delivered, runs[k].rate);
        }
        fprintf(stderr, "rep %d/%d done\n", r + 1, reps);
    }
    double med[4];
    printf("%-48s %14s %26s %10s\n", "path", "median msg/s", "min-max", "lost");
    for (int k = 0; k < 4; k++) {
        med[k] = median(rates[k], reps);
        printf("%-48s %14.0f %12.0f-%-12.0f %10llu\n", names[k], med[k], rates[k][0],
               rates[k][reps - 1], (unsigned long long)lost[k]);
    }
    printf("ratio bridge/cnats: core %.2f, jetstream %.2f\n", med[1] / med[0], med[3] / med[2]);
    if (csv)
        fclose(csv);
    for (int k = 0; k < 4; k++)
        free(rates[k]);
    free(payload);
    nats_server_destroy(&srv);
    return 0;
}
