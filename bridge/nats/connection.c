/* The connection to NATS: cnats options and callbacks, the JetStream context
 * and stream, the import subscription, errors in the caller's words, and
 * teardown, which frees the bridge once cnats can no longer call into it. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WRITE_DEADLINE_MS 2000
#define PING_INTERVAL_MS 2000
/* A core subscription holds at most this much before cnats drops (counted as
 * import_dropped): the bound on memory for a slow local bus. */
#define CORE_PENDING_MSGS 65536
#define CORE_PENDING_BYTES (64 * 1024 * 1024)

void rbus_nats__set_err(char *err, size_t err_size, const char *fmt, ...)
{
    if (!err || err_size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    rbus_nats *b = closure;
    atomic_store_explicit(&b->connected, false, memory_order_relaxed);
    count(&b->disconnects);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    rbus_nats *b = closure;
    atomic_store_explicit(&b->connected, true, memory_order_relaxed);
    count(&b->reconnects);
}

static void on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    rbus_nats *b = closure;
    atomic_store_explicit(&b->connected, false, memory_order_relaxed);
    atomic_store_explicit(&b->conn_closed, true, memory_order_relaxed);
    pthread_mutex_lock(&b->closed_lock);
    b->closed = true;
    pthread_cond_broadcast(&b->closed_cond);
    pthread_mutex_unlock(&b->closed_lock);
}

static int errno_of(natsStatus s)
{
    switch (s) {
    case NATS_NO_SERVER:
        return -ECONNREFUSED;
    case NATS_TIMEOUT:
        return -ETIMEDOUT;
    case NATS_INVALID_ARG:
    case NATS_ADDRESS_MISSING:
        return -EINVAL;
    case NATS_NO_MEMORY:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

static int nats_fail(natsStatus s, const char *what, char *err, size_t err_size)
{
    natsStatus last = NATS_OK;
    const char *detail = nats_GetLastError(&last);
    rbus_nats__set_err(err, err_size, "%s: %s%s%s", what, natsStatus_GetText(s),
                       detail && *detail ? ": " : "", detail && *detail ? detail : "");
    return errno_of(s);
}

static int js_fail(natsStatus s, jsErrCode jerr, const char *what, char *err, size_t err_size)
{
    int rc = nats_fail(s, what, err, err_size);
    if (jerr == JSNotEnabledErr || jerr == JSNotEnabledForAccountErr || s == NATS_NO_RESPONDERS)
        return -ENOTSUP;
    if (jerr == JSStreamNotFoundErr)
        return -ENOENT;
    return rc;
}

int rbus_nats__open_connection(rbus_nats *b, const rbus_nats_opts *o, char *err, size_t err_size)
{
    natsStatus s = natsOptions_Create(&b->nopts);
    const char *url = o->url ? o->url : DEFAULT_URL;
    int64_t connect_ms =
        ns_to_ms_ceil(o->connect_timeout_ns ? o->connect_timeout_ns : DEFAULT_CONNECT_TIMEOUT_NS);
    int64_t wait_ms =
        ns_to_ms_ceil(o->reconnect_wait_ns ? o->reconnect_wait_ns : DEFAULT_RECONNECT_WAIT_NS);
    /* Several servers are one comma-separated string for the user; cnats
     * takes them as one too (natsOptions_SetURL splits on commas). */
    if (s == NATS_OK)
        s = natsOptions_SetURL(b->nopts, url);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(b->nopts, connect_ms);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(b->nopts, o->max_reconnect > 0 ? o->max_reconnect : -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(b->nopts, wait_ms);
    /* A write that cannot proceed (a frozen server, a partition) fails
     * after the deadline and cnats reconnects, instead of holding the
     * connection lock (and every caller behind it) until TCP gives up; pings
     * notice a dead server in seconds rather than minutes. */
    if (s == NATS_OK)
        s = natsOptions_SetWriteDeadline(b->nopts, WRITE_DEADLINE_MS);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(b->nopts, PING_INTERVAL_MS);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(b->nopts, 2);
    /* No echo: in core mode the bridge must not receive its own exports. */
    if (s == NATS_OK)
        s = natsOptions_SetNoEcho(b->nopts, true);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(b->nopts, on_disconnected, b);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(b->nopts, on_reconnected, b);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(b->nopts, on_closed, b);
    if (s != NATS_OK)
        return nats_fail(s, "nats options", err, err_size);
    /* A failed first connect is an error now, not a retry in the background:
     * the caller learns at start that the URL is wrong or nobody listens. */
    s = natsConnection_Connect(&b->nc, b->nopts);
    if (s != NATS_OK) {
        char what[300];
        snprintf(what, sizeof what, "nats connect to %.250s", url);
        return nats_fail(s, what, err, err_size);
    }
    atomic_store_explicit(&b->connected, true, memory_order_relaxed);
    return 0;
}

int rbus_nats__setup_jetstream(rbus_nats *b, const rbus_nats_opts *o, char *err, size_t err_size)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = o->max_pending ? o->max_pending : DEFAULT_MAX_PENDING;
    jo.PublishAsync.AckHandler = rbus_nats__on_ack;
    jo.PublishAsync.AckHandlerClosure = b;
    natsStatus s = natsConnection_JetStream(&b->js, b->nc, &jo);
    if (s != NATS_OK)
        return nats_fail(s, "nats jetstream context", err, err_size);
    /* Ask now whether the server has JetStream at all, so an export-only
     * bridge fails at start rather than on every message. */
    jsAccountInfo *ai = NULL;
    jsErrCode aerr = 0;
    s = js_GetAccountInfo(&ai, b->js, NULL, &aerr);
    if (s == NATS_OK)
        jsAccountInfo_Destroy(ai);
    else if (s == NATS_NO_RESPONDERS || aerr == JSNotEnabledErr ||
             aerr == JSNotEnabledForAccountErr)
        return js_fail(s, aerr, "nats jetstream account", err, err_size);
    /* Anything else (a user not allowed to ask, a timeout) says nothing
     * about JetStream: go on, and let the stream answer for itself. */

    if (!o->create_stream)
        return 0;
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    s = js_GetStreamInfo(&si, b->js, o->stream, NULL, &jerr);
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return 0;
    }
    if (jerr != JSStreamNotFoundErr && s != NATS_NOT_FOUND)
        return js_fail(s, jerr, "nats stream info", err, err_size);

    char subjects[2][SUBJECT_MAX];
    const char *list[2];
    int n = 0;
    const char *patterns[2] = {o->export_pattern, o->import_pattern};
    for (int i = 0; i < 2; i++) {
        if (!patterns[i] || !rbus_nats__build_subject(b, patterns[i], subjects[n]))
            continue;
        if (n == 1 && strcmp(subjects[0], subjects[1]) == 0)
            continue;
        list[n] = subjects[n];
        n++;
    }
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = o->stream;
    cfg.Subjects = list;
    cfg.SubjectsLen = n;
    cfg.Storage = js_FileStorage;
    cfg.Duplicates = o->stream_duplicate_window_ns;
    jerr = 0;
    s = js_AddStream(&si, b->js, &cfg, NULL, &jerr);
    if (s != NATS_OK)
        return js_fail(s, jerr, "nats create stream", err, err_size);
    jsStreamInfo_Destroy(si);
    return 0;
}

int rbus_nats__setup_import(rbus_nats *b, const rbus_nats_opts *o, char *err, size_t err_size)
{
    char subject[SUBJECT_MAX];
    if (!rbus_nats__build_subject(b, o->import_pattern, subject)) {
        rbus_nats__set_err(err, err_size, "import pattern too long with the prefix");
        return -EINVAL;
    }
    natsStatus s;
    if (b->mode == RBUS_NATS_CORE) {
        s = natsConnection_SubscribeSync(&b->import_sub, b->nc, subject);
        if (s == NATS_OK)
            s = natsSubscription_SetPendingLimits(b->import_sub, CORE_PENDING_MSGS,
                                                  CORE_PENDING_BYTES);
        /* A round trip, so that once start returns the server knows the
         * subscription: what others publish from then on reaches us. */
        if (s == NATS_OK)
            s = natsConnection_FlushTimeout(b->nc, POLL_MS * 20);
        return s == NATS_OK ? 0 : nats_fail(s, "nats subscribe", err, err_size);
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = o->stream;
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.DeliverPolicy = o->durable ? js_DeliverAll : js_DeliverNew;
    jsErrCode jerr = 0;
    s = js_PullSubscribe(&b->import_sub, b->js, subject, o->durable, NULL, &so, &jerr);
    return s == NATS_OK ? 0 : js_fail(s, jerr, "nats jetstream consumer", err, err_size);
}

void rbus_nats__teardown(rbus_nats *b)
{
    if (b->import_sub) {
        natsSubscription_Destroy(b->import_sub);
        b->import_sub = NULL;
    }
    if (b->js && rbus_nats__export_in_flight(b) > 0) {
        /* Take back what was never acknowledged, so that no ack callback
         * can run once the bridge is freed. (Only when there is some: cnats
         * 3.4 crashes in this call if nothing was ever published async.) */
        rbus_nats__fail_stranded_acks(b);
        /* An ack cnats took off its list just before ours is still on its
         * way into rbus_nats__on_ack, which touches the bridge: let it land. */
        while (rbus_nats__export_in_flight(b) > 0)
            sleep_ms(1);
    }
    /* A callback that counted the last export may still be leaving
     * awaiting_done: taking the lock waits for it. */
    pthread_mutex_lock(&b->track_lock);
    pthread_mutex_unlock(&b->track_lock);
    if (b->nc) {
        natsConnection_Close(b->nc);
        pthread_mutex_lock(&b->closed_lock);
        while (!b->closed)
            pthread_cond_wait(&b->closed_cond, &b->closed_lock);
        pthread_mutex_unlock(&b->closed_lock);
    }
    if (b->js)
        jsCtx_Destroy(b->js);
    if (b->nc)
        natsConnection_Destroy(b->nc);
    if (b->nopts)
        natsOptions_Destroy(b->nopts);
    if (b->export_sub)
        rbus_unsubscribe(b->export_sub);
    if (b->failed) {
        rbus_nats__destroy_failed(b);
        free(b->failed);
    }
    free(b->awaiting);
    pthread_mutex_destroy(&b->track_lock);
    pthread_mutex_destroy(&b->failed_lock);
    pthread_cond_destroy(&b->closed_cond);
    pthread_mutex_destroy(&b->closed_lock);
    free(b->topic_cache);
    free(b->prefix);
    free(b);
}
