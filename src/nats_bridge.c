/* The NATS bridge (optional component, library ringbus_nats): one cnats
 * connection, an export thread that drains the bridge's own subscription into
 * NATS, and an import thread that feeds NATS messages into the bus.
 *
 * It uses only the public ringbus API: the bridge is a client of the bus like
 * any other, which keeps the core free of NATS and lets the bridge be tested
 * against the same contract users get. */
#include "ringbus_nats.h"

#include <nats/nats.h>

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define DEFAULT_URL "nats://127.0.0.1:4222"
#define DEFAULT_BLOCK_TIMEOUT_NS INT64_C(1000000000)
#define DEFAULT_IMPORT_TIMEOUT_NS INT64_C(1000000000)
#define DEFAULT_MAX_PENDING 1024u
#define DEFAULT_ACK_TIMEOUT_NS INT64_C(5000000000)
#define DEFAULT_CONNECT_TIMEOUT_NS INT64_C(2000000000)
#define DEFAULT_RECONNECT_WAIT_NS INT64_C(100000000)
/* How often the worker threads look at the stop flag when idle. */
#define POLL_MS 100
/* The export thread looks for flush requests this often when idle: the
 * latency an idle rbus_nats_flush pays, for ~100 wake-ups a second. */
#define EXPORT_POLL_MS 10
/* Largest max_pending accepted: the bridge sizes two arrays by it. */
#define MAX_PENDING_LIMIT (UINT32_C(1) << 20)
#define EXPORT_BATCH 64
#define WRITE_DEADLINE_MS 2000
#define PING_INTERVAL_MS 2000
#define IMPORT_BATCH 128
/* A core subscription holds at most this much before cnats drops (counted as
 * import_dropped): the bound on memory for a slow local bus. */
#define CORE_PENDING_MSGS 65536
#define CORE_PENDING_BYTES (64 * 1024 * 1024)
/* Longest NATS subject the bridge builds: prefix "." topic. */
#define SUBJECT_MAX (2 * RBUS_MAX_TOPIC_LEN + 2)
/* base64url of RBUS_MAX_KEY_LEN bytes, no padding, plus NUL. */
#define B64_MAX (((RBUS_MAX_KEY_LEN + 2) / 3) * 4 + 1)

struct rbus_nats {
    rbus *bus;
    rbus_nats_mode mode;
    uint32_t origin;
    int64_t import_timeout_ns;
    int64_t ack_timeout_ns;
    char *prefix; /* NULL or "prefix" (no dot) */
    size_t prefix_len;
    /* Tags exports (Rbus-Bridge header) so that imports can spot our own:
     * the durable consumer's name when there is one, so that a restarted
     * bridge still knows its earlier exports, else random per start. */
    char bridge_id[2 * RBUS_MAX_TOPIC_LEN + 2];

    natsOptions *nopts;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *import_sub;
    rbus_sub *export_sub;

    /* The import thread's handles of recent topics: rbus_topic_open takes
     * the bus lock, and handles stay valid until rbus_destroy. Direct-mapped
     * by a hash of the name; only the import thread touches it. */
    struct topic_cache_entry {
        rbus_topic *topic;
        char name[RBUS_MAX_TOPIC_LEN + 1];
    } *topic_cache;

    pthread_t export_thread, import_thread;
    bool export_running, import_running;

    /* Set once by rbus_nats_stop, read by both workers in their loops: a
     * plain flag whose only job is to end them, so relaxed suffices; the
     * join that follows gives the memory ordering. */
    atomic_bool stopping;
    /* When stopping: the time after which the export thread stops waiting
     * for room among the unacknowledged (0 before). Same reasoning. */
    atomic_uint_fast64_t export_deadline_ns;

    /* rbus_nats_flush asks (flush_requested, a generation) and the export
     * thread answers: flush_mark = how many messages it had taken plus how
     * many were queued when it saw the request (only the queue's one
     * consumer can say that), then flush_served = the generation. The
     * flush then waits until the first flush_mark messages are done.
     * Release/acquire: a flush that sees its generation sees the mark.
     * flush_served is UINT64_MAX once the export thread has ended. */
    atomic_uint_fast64_t flush_requested, flush_served, flush_mark;
    /* Messages the export thread is finished with: done, or handed to cnats
     * and recorded in `awaiting` (release, after either). */
    atomic_uint_fast64_t export_handed;

    /* JetStream: exports awaiting their ack, by natsMsg address, with their
     * position in export order, so that a flush can tell whether any
     * message before its mark is still out (acks and timeouts complete them
     * out of order). Open addressing, linear probing, backward-shift
     * deletion; at most max_pending + 1 entries in 2^k >= 2 (max_pending
     * + 2) slots. Guarded by track_lock (export thread, ack callbacks,
     * flush). */
    pthread_mutex_t track_lock;
    struct awaiting_ack {
        const natsMsg *msg; /* NULL = free */
        uint64_t pos;
    } *awaiting;
    uint32_t awaiting_mask;
    uint32_t awaiting_count; /* entries: a flush scans only when there are some */

    /* Kept by the connection callbacks, so stats never call into cnats
     * (which could wait for a connection lock held by a blocked write).
     * Relaxed: a status flag, read on its own. */
    atomic_bool connected, conn_closed;

    /* Counters. Written by the export thread, the import thread and cnats'
     * callback threads; read by stats and flush. Each is an independent
     * monotonic count, so relaxed increments are enough, except for the
     * export "done" counts, which flush compares against: those are
     * incremented with release and read with acquire so that a flush that
     * sees a message as done also sees what was done before it. */
    atomic_uint_fast64_t export_taken, export_skipped, sent, send_failed, server_duplicates;
    atomic_uint_fast64_t import_received, imported, import_duplicates, import_own;
    atomic_uint_fast64_t import_invalid, import_failed;
    atomic_uint_fast64_t disconnects, reconnects;

    /* cnats runs connection callbacks on its own thread, in order, with the
     * closed callback last: teardown waits for it before freeing. */
    pthread_mutex_t closed_lock;
    pthread_cond_t closed_cond;
    bool closed;

    /* Failed exports, to be destroyed by the export thread. cnats 3.4 arms
     * an export's ack timer before its write ends; against a frozen server
     * the write can outlast the timer, and the failure callback then gets a
     * message cnats is still copying (ThreadSanitizer showed it). Only the
     * export thread, between two publishes, knows cnats is done with it. */
    pthread_mutex_t grave_lock;
    natsMsg **grave;
    uint32_t grave_count, grave_cap;
};

/* ------------------------------------------------------------ helpers */

static void set_err(char *err, size_t err_size, const char *fmt, ...)
{
    if (!err || err_size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

static int64_t ns_to_ms_ceil(int64_t ns)
{
    if (ns <= 0)
        return 0;
    if (ns > INT64_MAX - 999999)
        return INT64_MAX / 1000000;
    return (ns + 999999) / 1000000;
}

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool is_stopping(const rbus_nats *b)
{
    return atomic_load_explicit(&b->stopping, memory_order_relaxed);
}

/* The export thread keeps waiting for acks to make room until the bridge is
 * stopped and ack_timeout_ns has passed since: a healthy server lets it send
 * everything queued, a dead one cannot hold rbus_nats_stop for long. */
static bool export_gives_up(const rbus_nats *b)
{
    if (atomic_load_explicit(&b->conn_closed, memory_order_relaxed))
        return true; /* reconnects exhausted: nothing will ever be sent */
    uint64_t deadline = atomic_load_explicit(&b->export_deadline_ns, memory_order_relaxed);
    return deadline != 0 && monotonic_ns() >= deadline;
}

static void count(atomic_uint_fast64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static void count_done(atomic_uint_fast64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_release);
}

/* --------------------------------------------------------- base64url */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Keys are binary and header values are text: base64url (RFC 4648 section
 * 5) without padding is the encoding NATS' own tools use for ids. */
static void b64url_encode(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes canonical unpadded base64url (unused low bits zero, so every key
 * has exactly one encoding). Returns the byte count, or -1 if `in` is not
 * that or would not fit in `cap` bytes. */
static long b64url_decode(const char *in, uint8_t *out, size_t cap)
{
    size_t len = strlen(in);
    if (len % 4 == 1)
        return -1;
    size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (need > cap)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value(in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* non-canonical trailing bits */
        return -1;
    return (long)o;
}

/* A header value becomes a key: its base64url decoding when it is one (what
 * ringbus bridges send), else its text as it is (ids set by other NATS
 * publishers), so equal ids always give equal keys. 0 when unusable. */
static size_t header_to_key(const char *value, uint8_t *key)
{
    long n = b64url_decode(value, key, RBUS_MAX_KEY_LEN);
    if (n >= 1)
        return (size_t)n;
    size_t len = strlen(value);
    if (len < 1 || len > RBUS_MAX_KEY_LEN)
        return 0;
    memcpy(key, value, len);
    return len;
}

/* --------------------------------------------------------- subjects */

static bool build_subject(const rbus_nats *b, const char *topic, char *out)
{
    size_t tlen = strlen(topic);
    if (!b->prefix) {
        memcpy(out, topic, tlen + 1);
        return true;
    }
    if (b->prefix_len + 1 + tlen >= SUBJECT_MAX)
        return false;
    memcpy(out, b->prefix, b->prefix_len);
    out[b->prefix_len] = '.';
    memcpy(out + b->prefix_len + 1, topic, tlen + 1);
    return true;
}

/* The local topic a NATS subject maps to, or NULL (not ours, or invalid). */
static const char *subject_to_topic(const rbus_nats *b, const char *subject)
{
    const char *topic = subject;
    if (b->prefix) {
        if (strncmp(subject, b->prefix, b->prefix_len) != 0 || subject[b->prefix_len] != '.')
            return NULL;
        topic = subject + b->prefix_len + 1;
    }
    return rbus_topic_valid(topic) ? topic : NULL;
}

/* ----------------------------------------------------------- export */

static uint32_t awaiting_home(const rbus_nats *b, const natsMsg *msg)
{
    uint64_t h = (uint64_t)(uintptr_t)msg * UINT64_C(0x9e3779b97f4a7c15);
    return (uint32_t)(h >> 40) & b->awaiting_mask;
}

static void awaiting_add(rbus_nats *b, const natsMsg *msg, uint64_t pos)
{
    pthread_mutex_lock(&b->track_lock);
    uint32_t i = awaiting_home(b, msg);
    while (b->awaiting[i].msg)
        i = (i + 1) & b->awaiting_mask;
    b->awaiting[i] = (struct awaiting_ack){msg, pos};
    b->awaiting_count++;
    pthread_mutex_unlock(&b->track_lock);
}

/* Forgets msg if it is recorded (a message is recorded once, and freed only
 * after this, so its address cannot stand for another one meanwhile).
 * Called with track_lock held. */
static void awaiting_remove_locked(rbus_nats *b, const natsMsg *msg)
{
    const uint32_t mask = b->awaiting_mask;
    uint32_t hole = awaiting_home(b, msg);
    while (b->awaiting[hole].msg && b->awaiting[hole].msg != msg)
        hole = (hole + 1) & mask;
    if (b->awaiting[hole].msg) {
        for (uint32_t i = hole;;) {
            i = (i + 1) & mask;
            if (!b->awaiting[i].msg)
                break;
            uint32_t home = awaiting_home(b, b->awaiting[i].msg);
            bool stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
            if (!stays) {
                b->awaiting[hole] = b->awaiting[i];
                hole = i;
            }
        }
        b->awaiting[hole].msg = NULL;
        b->awaiting_count--;
    }
}

/* Forgets msg and counts it done in one step under track_lock, so that a
 * flush never sees it gone from `awaiting` yet not counted. */
static void awaiting_done(rbus_nats *b, const natsMsg *msg, atomic_uint_fast64_t *counter)
{
    pthread_mutex_lock(&b->track_lock);
    awaiting_remove_locked(b, msg);
    count_done(counter);
    pthread_mutex_unlock(&b->track_lock);
}

/* Whether an export before position `mark` still awaits its ack. */
static bool awaiting_before(rbus_nats *b, uint64_t mark)
{
    bool any = false;
    pthread_mutex_lock(&b->track_lock);
    for (uint32_t i = 0; b->awaiting_count && i <= b->awaiting_mask && !any; i++)
        any = b->awaiting[i].msg && b->awaiting[i].pos < mark;
    pthread_mutex_unlock(&b->track_lock);
    return any;
}

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js, (void)pae;
    rbus_nats *b = closure;
    /* Leaving track_lock must stay this callback's last touch of the
     * bridge: teardown frees it once every export is counted done (and
     * takes track_lock once, to let a callback here leave it). */
    if (pa) {
        if (pa->Duplicate)
            count(&b->server_duplicates);
        awaiting_done(b, msg, &b->sent);
        natsMsg_Destroy(msg); /* acknowledged: its write is long over */
        return;
    }
    /* Forgotten before it goes to the grave, both under track_lock: once
     * buried, its address may come back as a new export's, which must not
     * find this one still recorded. (Lock order: track_lock, grave_lock.) */
    pthread_mutex_lock(&b->track_lock);
    awaiting_remove_locked(b, msg);
    pthread_mutex_lock(&b->grave_lock);
    /* Buried after every batch: at most max_pending + a batch fail in
     * between, so it always fits. */
    natsMsg *unburied = msg;
    if (b->grave_count < b->grave_cap) {
        b->grave[b->grave_count++] = msg;
        unburied = NULL;
    }
    pthread_mutex_unlock(&b->grave_lock);
    count_done(&b->send_failed);
    pthread_mutex_unlock(&b->track_lock);
    natsMsg_Destroy(unburied);
}

/* Destroys the failed exports: called by the export thread outside any
 * publish (or once it has ended). */
static void bury_failed(rbus_nats *b)
{
    pthread_mutex_lock(&b->grave_lock);
    for (uint32_t i = 0; i < b->grave_count; i++)
        natsMsg_Destroy(b->grave[i]);
    b->grave_count = 0;
    pthread_mutex_unlock(&b->grave_lock);
}

static natsStatus set_key_header(natsMsg *nm, const char *name, const void *key, size_t len)
{
    char text[B64_MAX];
    b64url_encode(key, len, text);
    return natsMsgHeader_Set(nm, name, text);
}

/* Hands one message to cnats. Core mode without keys takes cnats' direct
 * path (no natsMsg, which would cost an allocation per message). */
static void export_one(rbus_nats *b, const rbus_msg *m, uint64_t pos)
{
    char subject[SUBJECT_MAX];
    size_t key_len = 0, okey_len = 0;
    const void *key = rbus_msg_key(m, &key_len);
    const void *okey = rbus_msg_order_key(m, &okey_len);
    size_t size = rbus_msg_size(m);

    if (!build_subject(b, rbus_msg_topic(m), subject) || size > (size_t)INT32_MAX ||
        export_gives_up(b)) {
        count_done(&b->send_failed);
        return;
    }
    if (b->mode == RBUS_NATS_CORE && !key && !okey) {
        natsStatus s = natsConnection_Publish(b->nc, subject, rbus_msg_data(m), (int)size);
        count_done(s == NATS_OK ? &b->sent : &b->send_failed);
        return;
    }

    natsMsg *nm = NULL;
    natsStatus s = natsMsg_Create(&nm, subject, NULL, rbus_msg_data(m), (int)size);
    if (s == NATS_OK && key)
        s = set_key_header(nm, RBUS_NATS_KEY_HEADER, key, key_len);
    if (s == NATS_OK && okey)
        s = set_key_header(nm, RBUS_NATS_ORDER_KEY_HEADER, okey, okey_len);
    if (s == NATS_OK && b->mode == RBUS_NATS_JETSTREAM)
        s = natsMsgHeader_Set(nm, RBUS_NATS_BRIDGE_HEADER, b->bridge_id);
    if (s != NATS_OK) {
        natsMsg_Destroy(nm);
        count_done(&b->send_failed);
        return;
    }
    if (b->mode == RBUS_NATS_CORE) {
        s = natsConnection_PublishMsg(b->nc, nm);
        natsMsg_Destroy(nm);
        count_done(s == NATS_OK ? &b->sent : &b->send_failed);
        return;
    }

    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ns_to_ms_ceil(b->ack_timeout_ns);
    /* Recorded first: its ack may come before the call returns. */
    const natsMsg *sent_msg = nm;
    awaiting_add(b, sent_msg, pos);
    /* With max_pending acks outstanding cnats stalls the call for StallWait
     * and then gives NATS_TIMEOUT without taking the message: that is the
     * backpressure, so try again until it goes or the bridge stops. */
    do {
        s = js_PublishMsgAsync(b->js, &nm, &po);
    } while (s == NATS_TIMEOUT && !export_gives_up(b));
    if (s != NATS_OK) {
        awaiting_done(b, sent_msg, &b->send_failed);
        natsMsg_Destroy(nm); /* still ours: cnats cleared nm only on success */
    }
    /* On success the ack callback counts it. */
}

static void export_batch(rbus_nats *b, rbus_msg **batch, int n)
{
    /* The whole batch counts as taken at once: it has left the queue, so a
     * stats or flush(0) caller that saw its depth fall must see it here
     * (in_flight) rather than nowhere. */
    uint64_t base = atomic_fetch_add_explicit(&b->export_taken, (uint64_t)n, memory_order_relaxed);
    for (int i = 0; i < n; i++) {
        uint64_t pos = base + (uint64_t)i;
        if (rbus_msg_origin(batch[i]) == b->origin)
            count_done(&b->export_skipped);
        else
            export_one(b, batch[i], pos);
        rbus_msg_release(batch[i]);
        atomic_store_explicit(&b->export_handed, pos + 1, memory_order_release);
    }
}

/* Once the connection is closed for good, acks (and their timeouts) never
 * come: what cnats still holds unacknowledged has failed. Taking the list
 * back also means no ack callback will run for those. */
static void fail_stranded_acks(rbus_nats *b)
{
    natsMsgList pending = {0};
    if (js_PublishAsyncGetPendingList(&pending, b->js) == NATS_OK) {
        for (int i = 0; i < pending.Count; i++)
            awaiting_done(b, pending.Msgs[i], &b->send_failed);
        natsMsgList_Destroy(&pending);
    }
}

static uint64_t export_in_flight(const rbus_nats *b);

/* Answers a flush request: everything taken so far, plus everything queued
 * now, is what that flush waits for. */
static void answer_flush(rbus_nats *b)
{
    uint64_t want = atomic_load_explicit(&b->flush_requested, memory_order_acquire);
    if (want == atomic_load_explicit(&b->flush_served, memory_order_relaxed))
        return;
    rbus_sub_stats ss;
    rbus_sub_stats_get(b->export_sub, &ss);
    uint64_t mark = atomic_load_explicit(&b->export_taken, memory_order_relaxed) + ss.depth;
    atomic_store_explicit(&b->flush_mark, mark, memory_order_relaxed);
    atomic_store_explicit(&b->flush_served, want, memory_order_release);
}

static void *export_main(void *arg)
{
    rbus_nats *b = arg;
    rbus_msg *batch[EXPORT_BATCH];
    for (;;) {
        answer_flush(b);
        int n = rbus_recv_batch(b->export_sub, batch, EXPORT_BATCH,
                                (int64_t)EXPORT_POLL_MS * 1000000);
        if (b->js)
            bury_failed(b);
        if (n > 0) {
            export_batch(b, batch, n);
            continue;
        }
        if (b->js && atomic_load_explicit(&b->conn_closed, memory_order_relaxed) &&
            export_in_flight(b) > 0)
            fail_stranded_acks(b);
        if (n == -ESHUTDOWN)
            break; /* stopped (or bus closed) and drained */
    }
    /* Nothing is left to take: every flush from now on needs only the
     * exports already handed to cnats. */
    atomic_store_explicit(&b->flush_mark, atomic_load_explicit(&b->export_taken,
                                                               memory_order_relaxed),
                          memory_order_relaxed);
    atomic_store_explicit(&b->flush_served, UINT64_MAX, memory_order_release);
    return NULL;
}

/* ----------------------------------------------------------- import */

#define TOPIC_CACHE_SIZE 64u

static int open_topic(rbus_nats *b, const char *name, rbus_topic **out)
{
    uint32_t h = 2166136261u; /* FNV-1a: names are short, any spread will do */
    size_t len = 0;
    for (; name[len]; len++)
        h = (h ^ (uint8_t)name[len]) * 16777619u;
    struct topic_cache_entry *e = &b->topic_cache[h & (TOPIC_CACHE_SIZE - 1)];
    if (e->topic && memcmp(e->name, name, len + 1) == 0) {
        *out = e->topic;
        return 0;
    }
    int rc = rbus_topic_open(b->bus, name, out);
    if (rc == 0) {
        e->topic = *out;
        memcpy(e->name, name, len + 1);
    }
    return rc;
}

/* One NATS message into the bus. Returns false only when the bus refused it
 * for good (closed), so that JetStream leaves it unacknowledged. */
static bool import_one(rbus_nats *b, natsMsg *nm)
{
    count(&b->import_received);
    const char *value = NULL;
    if (b->mode == RBUS_NATS_JETSTREAM &&
        natsMsgHeader_Get(nm, RBUS_NATS_BRIDGE_HEADER, &value) == NATS_OK && value &&
        strcmp(value, b->bridge_id) == 0) {
        count(&b->import_own);
        return true;
    }
    const char *topic_name = subject_to_topic(b, natsMsg_GetSubject(nm));
    if (!topic_name) {
        count(&b->import_invalid);
        return true;
    }

    uint8_t key[RBUS_MAX_KEY_LEN], okey[RBUS_MAX_KEY_LEN];
    rbus_pub_opts po = {.origin = b->origin, .timeout_ns = b->import_timeout_ns};
    if (natsMsgHeader_Get(nm, RBUS_NATS_KEY_HEADER, &value) == NATS_OK && value) {
        po.key_len = header_to_key(value, key);
        if (po.key_len == 0) {
            count(&b->import_invalid);
            return true;
        }
        po.key = key;
    }
    if (natsMsgHeader_Get(nm, RBUS_NATS_ORDER_KEY_HEADER, &value) == NATS_OK && value) {
        po.order_key_len = header_to_key(value, okey);
        if (po.order_key_len == 0) {
            count(&b->import_invalid);
            return true;
        }
        po.order_key = okey;
    }

    rbus_topic *topic = NULL;
    int rc = open_topic(b, topic_name, &topic);
    if (rc == 0) {
        const char *data = natsMsg_GetData(nm);
        int len = natsMsg_GetDataLength(nm);
        rc = rbus_publish_ex(topic, len > 0 ? data : NULL, len > 0 ? (size_t)len : 0, &po, NULL);
    }
    if (rc == 0)
        count(&b->imported);
    else if (rc == RBUS_DUPLICATE)
        count(&b->import_duplicates);
    else
        count(&b->import_failed);
    return rc != -ESHUTDOWN;
}

static void *import_main(void *arg)
{
    rbus_nats *b = arg;
    while (!is_stopping(b)) {
        if (b->mode == RBUS_NATS_CORE) {
            natsMsg *nm = NULL;
            natsStatus s = natsSubscription_NextMsg(&nm, b->import_sub, POLL_MS);
            if (s == NATS_OK) {
                import_one(b, nm);
                natsMsg_Destroy(nm);
            } else if (s != NATS_TIMEOUT && s != NATS_SLOW_CONSUMER) {
                sleep_ms(POLL_MS / 4); /* closed or reconnecting: do not spin */
            }
            continue;
        }
        natsMsgList list = {0};
        jsErrCode jerr = 0;
        natsStatus s = natsSubscription_Fetch(&list, b->import_sub, IMPORT_BATCH, POLL_MS, &jerr);
        if (s != NATS_OK) {
            if (s != NATS_TIMEOUT)
                sleep_ms(POLL_MS / 4);
            continue;
        }
        /* Stopping ends the batch: what is left stays unacknowledged and
         * the server delivers it again later (to a durable consumer). */
        for (int i = 0; i < list.Count && !is_stopping(b); i++) {
            /* Acknowledged after the local publish: a crash in between makes
             * the server redeliver, and the key (if any) keeps that exact. */
            if (import_one(b, list.Msgs[i]))
                natsMsg_Ack(list.Msgs[i], NULL);
        }
        natsMsgList_Destroy(&list);
    }
    return NULL;
}

/* ------------------------------------------------------- connection */

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
    set_err(err, err_size, "%s: %s%s%s", what, natsStatus_GetText(s),
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

static bool opt_valid(const rbus_nats_opts *o)
{
    if (!o->export_pattern && !o->import_pattern)
        return false;
    if (o->export_pattern && !rbus_pattern_valid(o->export_pattern))
        return false;
    if (o->import_pattern && !rbus_pattern_valid(o->import_pattern))
        return false;
    if (o->subject_prefix && !rbus_topic_valid(o->subject_prefix))
        return false;
    if (o->mode != RBUS_NATS_CORE && o->mode != RBUS_NATS_JETSTREAM)
        return false;
    if (o->url && !*o->url)
        return false;
    if (o->stream && (!*o->stream || strpbrk(o->stream, ". *>\t\r\n") ||
                      strlen(o->stream) > RBUS_MAX_TOPIC_LEN))
        return false;
    if (o->durable && (!*o->durable || strpbrk(o->durable, ". *>\t\r\n") ||
                       strlen(o->durable) > RBUS_MAX_TOPIC_LEN))
        return false;
    if (o->create_stream && !o->stream)
        return false;
    if (o->max_reconnect < 0 || o->connect_timeout_ns < 0 || o->reconnect_wait_ns < 0 ||
        o->ack_timeout_ns < 0 || o->stream_duplicate_window_ns < 0)
        return false;
    if (o->max_pending > MAX_PENDING_LIMIT)
        return false;
    return true;
}

static int open_connection(rbus_nats *b, const rbus_nats_opts *o, char *err, size_t err_size)
{
    natsStatus s = natsOptions_Create(&b->nopts);
    const char *url = o->url ? o->url : DEFAULT_URL;
    int64_t connect_ms = ns_to_ms_ceil(o->connect_timeout_ns ? o->connect_timeout_ns
                                                             : DEFAULT_CONNECT_TIMEOUT_NS);
    int64_t wait_ms = ns_to_ms_ceil(o->reconnect_wait_ns ? o->reconnect_wait_ns
                                                         : DEFAULT_RECONNECT_WAIT_NS);
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

static int setup_jetstream(rbus_nats *b, const rbus_nats_opts *o, char *err, size_t err_size)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = o->max_pending ? o->max_pending : DEFAULT_MAX_PENDING;
    jo.PublishAsync.AckHandler = on_ack;
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
        if (!patterns[i] || !build_subject(b, patterns[i], subjects[n]))
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

static int setup_import(rbus_nats *b, const rbus_nats_opts *o, char *err, size_t err_size)
{
    char subject[SUBJECT_MAX];
    if (!build_subject(b, o->import_pattern, subject)) {
        set_err(err, err_size, "import pattern too long with the prefix");
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

/* Taken but neither sent nor failed yet. */
static uint64_t export_in_flight(const rbus_nats *b)
{
    uint64_t done = atomic_load_explicit(&b->export_skipped, memory_order_acquire) +
                    atomic_load_explicit(&b->sent, memory_order_acquire) +
                    atomic_load_explicit(&b->send_failed, memory_order_acquire);
    uint64_t taken = atomic_load_explicit(&b->export_taken, memory_order_relaxed);
    return taken > done ? taken - done : 0;
}

static void teardown(rbus_nats *b)
{
    if (b->import_sub) {
        natsSubscription_Destroy(b->import_sub);
        b->import_sub = NULL;
    }
    if (b->js && export_in_flight(b) > 0) {
        /* Take back what was never acknowledged, so that no ack callback
         * can run once the bridge is freed. (Only when there is some: cnats
         * 3.4 crashes in this call if nothing was ever published async.) */
        fail_stranded_acks(b);
        /* An ack cnats took off its list just before ours is still on its
         * way into on_ack, which touches the bridge: let it land. */
        while (export_in_flight(b) > 0)
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
    if (b->grave) {
        bury_failed(b);
        free(b->grave);
    }
    free(b->awaiting);
    pthread_mutex_destroy(&b->track_lock);
    pthread_mutex_destroy(&b->grave_lock);
    pthread_cond_destroy(&b->closed_cond);
    pthread_mutex_destroy(&b->closed_lock);
    free(b->topic_cache);
    free(b->prefix);
    free(b);
}

/* ------------------------------------------------------------- public */

void rbus_nats_opts_init(rbus_nats_opts *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    opts->origin = RBUS_NATS_ORIGIN;
    opts->export_block_timeout_ns = DEFAULT_BLOCK_TIMEOUT_NS;
    opts->import_timeout_ns = DEFAULT_IMPORT_TIMEOUT_NS;
    opts->max_pending = DEFAULT_MAX_PENDING;
    opts->ack_timeout_ns = DEFAULT_ACK_TIMEOUT_NS;
    opts->connect_timeout_ns = DEFAULT_CONNECT_TIMEOUT_NS;
    opts->reconnect_wait_ns = DEFAULT_RECONNECT_WAIT_NS;
}

int rbus_nats_start(rbus_nats **out, rbus *bus, const rbus_nats_opts *opts, char *err,
                    size_t err_size)
{
    if (out)
        *out = NULL;
    set_err(err, err_size, "ok");
    if (!out || !bus || !opts || !opt_valid(opts)) {
        set_err(err, err_size, "invalid argument");
        return -EINVAL;
    }
    rbus_nats *b = calloc(1, sizeof *b);
    if (!b) {
        set_err(err, err_size, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&b->closed_lock, NULL);
    pthread_cond_init(&b->closed_cond, NULL);
    pthread_mutex_init(&b->grave_lock, NULL);
    pthread_mutex_init(&b->track_lock, NULL);
    b->bus = bus;
    b->mode = opts->mode;
    b->origin = opts->origin ? opts->origin : RBUS_NATS_ORIGIN;
    /* rbus_pub_opts.timeout_ns 0 means "each subscription's own block
     * timeout", which is what "wait as long as the subscriptions say" is. */
    b->import_timeout_ns = opts->import_timeout_ns < 0 ? 0
                           : opts->import_timeout_ns ? opts->import_timeout_ns
                                                     : DEFAULT_IMPORT_TIMEOUT_NS;
    b->ack_timeout_ns = opts->ack_timeout_ns ? opts->ack_timeout_ns : DEFAULT_ACK_TIMEOUT_NS;
    if (opts->durable) {
        snprintf(b->bridge_id, sizeof b->bridge_id, "%s/%s", opts->stream ? opts->stream : "",
                 opts->durable);
    } else {
        uint64_t id = 0;
        if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
            id = monotonic_ns() ^ (uint64_t)(uintptr_t)b;
        snprintf(b->bridge_id, sizeof b->bridge_id, "%016llx", (unsigned long long)id);
    }
    if (opts->subject_prefix) {
        b->prefix = strdup(opts->subject_prefix);
        if (!b->prefix) {
            free(b);
            set_err(err, err_size, "out of memory");
            return -ENOMEM;
        }
        b->prefix_len = strlen(b->prefix);
    }

    int rc = 0;
    if (opts->export_pattern) {
        /* Subscribe before connecting: a closed bus fails fast, without a
         * connection attempt. Block policy: a slow or absent NATS server
         * makes local publishers wait (bounded), then counts drops. */
        rbus_sub_opts so;
        rbus_sub_opts_init(&so);
        so.capacity = opts->export_capacity;
        so.overflow = RBUS_BLOCK;
        so.block_timeout_ns = opts->export_block_timeout_ns < 0 ? -1
                              : opts->export_block_timeout_ns ? opts->export_block_timeout_ns
                                                              : DEFAULT_BLOCK_TIMEOUT_NS;
        so.name = "nats-export";
        rc = rbus_subscribe(bus, opts->export_pattern, &so, &b->export_sub);
        if (rc < 0)
            set_err(err, err_size, "export subscription: %s", rbus_strerror(rc));
    }
    if (rc == 0)
        rc = open_connection(b, opts, err, err_size);
    if (rc == 0 && b->mode == RBUS_NATS_JETSTREAM && b->export_sub) {
        /* Room for every export that can fail between two burials. */
        b->grave_cap = (opts->max_pending ? opts->max_pending : DEFAULT_MAX_PENDING) +
                       EXPORT_BATCH + 16;
        b->grave = calloc(b->grave_cap, sizeof *b->grave);
        uint32_t slots = 16;
        while (slots < 2 * (b->grave_cap + 2))
            slots <<= 1;
        b->awaiting = calloc(slots, sizeof *b->awaiting);
        b->awaiting_mask = slots - 1;
        if (!b->grave || !b->awaiting) {
            set_err(err, err_size, "out of memory");
            rc = -ENOMEM;
        }
    }
    if (rc == 0 && b->mode == RBUS_NATS_JETSTREAM)
        rc = setup_jetstream(b, opts, err, err_size);
    if (rc == 0 && opts->import_pattern) {
        b->topic_cache = calloc(TOPIC_CACHE_SIZE, sizeof *b->topic_cache);
        rc = b->topic_cache ? setup_import(b, opts, err, err_size) : -ENOMEM;
        if (!b->topic_cache)
            set_err(err, err_size, "out of memory");
    }
    if (rc == 0 && b->export_sub) {
        rc = -pthread_create(&b->export_thread, NULL, export_main, b);
        b->export_running = rc == 0;
    }
    if (rc == 0 && b->import_sub) {
        rc = -pthread_create(&b->import_thread, NULL, import_main, b);
        b->import_running = rc == 0;
    }
    if (rc < 0) {
        if (rc == -EAGAIN || rc == -EPERM)
            set_err(err, err_size, "cannot start a bridge thread (%d)", rc);
        if (b->export_running || b->import_running) {
            rbus_nats_stop(b);
        } else {
            teardown(b);
        }
        return rc;
    }
    *out = b;
    return 0;
}

int rbus_nats_stats_get(const rbus_nats *b, rbus_nats_stats *out)
{
    if (!b || !out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    /* The done counts first: a message is taken before it is done, so this
     * order never shows more done than taken. */
    out->export_skipped = atomic_load_explicit(&b->export_skipped, memory_order_acquire);
    out->sent = atomic_load_explicit(&b->sent, memory_order_acquire);
    out->send_failed = atomic_load_explicit(&b->send_failed, memory_order_acquire);
    out->export_taken = atomic_load_explicit(&b->export_taken, memory_order_acquire);
    out->server_duplicates = atomic_load_explicit(&b->server_duplicates, memory_order_relaxed);
    uint64_t done = out->export_skipped + out->sent + out->send_failed;
    out->in_flight = out->export_taken > done ? (uint32_t)(out->export_taken - done) : 0;
    if (b->export_sub) {
        rbus_sub_stats ss;
        if (rbus_sub_stats_get(b->export_sub, &ss) == 0) {
            out->export_dropped = ss.dropped_timeout + ss.dropped_closed;
            out->export_depth = ss.depth;
        }
    }
    out->import_received = atomic_load_explicit(&b->import_received, memory_order_relaxed);
    out->imported = atomic_load_explicit(&b->imported, memory_order_relaxed);
    out->import_duplicates = atomic_load_explicit(&b->import_duplicates, memory_order_relaxed);
    out->import_own = atomic_load_explicit(&b->import_own, memory_order_relaxed);
    out->import_invalid = atomic_load_explicit(&b->import_invalid, memory_order_relaxed);
    out->import_failed = atomic_load_explicit(&b->import_failed, memory_order_relaxed);
    if (b->mode == RBUS_NATS_CORE && b->import_sub) {
        int64_t dropped = 0;
        if (natsSubscription_GetDropped(b->import_sub, &dropped) == NATS_OK && dropped > 0)
            out->import_dropped = (uint64_t)dropped;
    }
    out->disconnects = atomic_load_explicit(&b->disconnects, memory_order_relaxed);
    out->reconnects = atomic_load_explicit(&b->reconnects, memory_order_relaxed);
    out->connected = atomic_load_explicit(&b->connected, memory_order_relaxed);
    return 0;
}

/* Milliseconds left until deadline_ns (0 = none: `none_ms`), at least 1. */
static int64_t ms_left(uint64_t deadline_ns, int64_t none_ms)
{
    if (!deadline_ns)
        return none_ms;
    uint64_t now = monotonic_ns();
    return now >= deadline_ns ? 1 : ns_to_ms_ceil((int64_t)(deadline_ns - now));
}

int rbus_nats_flush(rbus_nats *b, int64_t timeout_ns)
{
    if (!b)
        return -EINVAL;
    if (timeout_ns == 0) {
        /* Done when everything that entered the bridge's queue before now
         * is counted done (entered is read first; a message between the
         * queue and export_taken is in neither depth nor in_flight, but it
         * is in `entered`), and nothing taken is still out (completions
         * come out of order: a skip can finish before an earlier ack). */
        uint64_t entered = 0;
        if (b->export_sub) {
            rbus_sub_stats ss;
            rbus_sub_stats_get(b->export_sub, &ss);
            entered = ss.offered - ss.dropped_timeout - ss.dropped_closed;
        }
        rbus_nats_stats st;
        rbus_nats_stats_get(b, &st);
        bool done = st.export_skipped + st.sent + st.send_failed >= entered && st.in_flight == 0;
        return done ? 0 : -ETIMEDOUT;
    }
    uint64_t deadline = timeout_ns > 0 ? monotonic_ns() + (uint64_t)timeout_ns : 0;
    if (b->export_sub) {
        /* 1. The export thread says how far this flush reaches. */
        /* Release: our publishes before this call happen before the export
         * thread's acquire load that sees the request, so the mark it then
         * reads off the queue counts them. */
        uint64_t gen = atomic_fetch_add_explicit(&b->flush_requested, 1, memory_order_release) + 1;
        while (atomic_load_explicit(&b->flush_served, memory_order_acquire) < gen) {
            if (deadline && monotonic_ns() >= deadline)
                return -ETIMEDOUT;
            sleep_ms(1);
        }
        uint64_t mark = atomic_load_explicit(&b->flush_mark, memory_order_relaxed);
        /* 2. The export thread is past the mark, and no export before it
         *    awaits an ack (acks complete out of order). */
        while (atomic_load_explicit(&b->export_handed, memory_order_acquire) < mark ||
               (b->js && awaiting_before(b, mark))) {
            if (atomic_load_explicit(&b->conn_closed, memory_order_relaxed))
                return -EIO;
            if (deadline && monotonic_ns() >= deadline)
                return -ETIMEDOUT;
            sleep_ms(1);
        }
    }
    /* 3. The connection's buffer reaches the server (a PING/PONG). */
    natsStatus s = natsConnection_FlushTimeout(b->nc, ms_left(deadline, INT32_MAX));
    return s == NATS_OK ? 0 : s == NATS_TIMEOUT ? -ETIMEDOUT : -EIO;
}

void rbus_nats_stop(rbus_nats *b)
{
    if (!b)
        return;
    atomic_store_explicit(&b->stopping, true, memory_order_relaxed);
    if (b->import_running)
        pthread_join(b->import_thread, NULL);
    /* The export budget starts once the import is out of the way. */
    atomic_store_explicit(&b->export_deadline_ns, monotonic_ns() + (uint64_t)b->ack_timeout_ns,
                          memory_order_relaxed);
    if (b->export_sub) {
        /* The export thread drains what is queued, then sees -ESHUTDOWN. */
        rbus_sub_close(b->export_sub);
        if (b->export_running)
            pthread_join(b->export_thread, NULL);
    }
    /* Whatever is left of the same deadline: stop waits for acks (or the
     * connection's buffer) at most ack_timeout_ns in all. */
    uint64_t deadline = atomic_load_explicit(&b->export_deadline_ns, memory_order_relaxed);
    if (b->js && export_in_flight(b) > 0 &&
        !atomic_load_explicit(&b->conn_closed, memory_order_relaxed)) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = ms_left(deadline, 1);
        js_PublishAsyncComplete(b->js, &po);
    } else if (!b->js && b->export_sub && !atomic_load_explicit(&b->conn_closed, memory_order_relaxed)) {
        natsConnection_FlushTimeout(b->nc, ms_left(deadline, 1));
    }
    teardown(b);
}

/* ---------------------------------------------------------- metrics */

enum field_kind { FIELD_U64, FIELD_U32, FIELD_BOOL };

static const struct {
    const char *name, *type, *help;
    size_t offset;
    enum field_kind kind;
} nats_families[] = {
#define NATS_FAMILY(field, type, kind, help)                                                       \
    {"ringbus_nats_" #field "_total", type, help, offsetof(rbus_nats_stats, field), kind}
#define NATS_GAUGE(field, kind, help)                                                              \
    {"ringbus_nats_" #field, "gauge", help, offsetof(rbus_nats_stats, field), kind}
    NATS_FAMILY(export_taken, "counter", FIELD_U64, "Messages the bridge took from its subscription."),
    NATS_FAMILY(export_skipped, "counter", FIELD_U64, "Imported messages not exported again."),
    NATS_FAMILY(sent, "counter", FIELD_U64, "Exports accepted by NATS (JetStream: acknowledged)."),
    NATS_FAMILY(send_failed, "counter", FIELD_U64, "Exports refused, negatively acknowledged or timed out."),
    NATS_FAMILY(server_duplicates, "counter", FIELD_U64, "JetStream acks that reported a duplicate."),
    NATS_FAMILY(export_dropped, "counter", FIELD_U64, "Local publishes that found the bridge's queue full."),
    NATS_FAMILY(import_received, "counter", FIELD_U64, "Messages received from NATS."),
    NATS_FAMILY(imported, "counter", FIELD_U64, "Messages published into the local bus."),
    NATS_FAMILY(import_duplicates, "counter", FIELD_U64, "Imports suppressed by the local dedup window."),
    NATS_FAMILY(import_own, "counter", FIELD_U64, "This bridge's own exports read back, not imported."),
    NATS_FAMILY(import_invalid, "counter", FIELD_U64, "Imports with an invalid topic or key, skipped."),
    NATS_FAMILY(import_failed, "counter", FIELD_U64, "Imports the local bus refused."),
    NATS_FAMILY(import_dropped, "counter", FIELD_U64, "Core imports the client dropped as a slow consumer."),
    NATS_FAMILY(disconnects, "counter", FIELD_U64, "Connection losses."),
    NATS_FAMILY(reconnects, "counter", FIELD_U64, "Successful reconnects."),
    NATS_GAUGE(in_flight, FIELD_U32, "Exports taken but neither sent nor failed yet."),
    NATS_GAUGE(export_depth, FIELD_U32, "Messages queued in the bridge's subscription."),
    NATS_GAUGE(connected, FIELD_BOOL, "1 while connected to a server."),
#undef NATS_FAMILY
#undef NATS_GAUGE
};

/* snprintf into buf at *len, counting what would not fit. */
static void prom_append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *at = *len < size ? buf + *len : NULL;
    int n = vsnprintf(at, at ? size - *len : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        *len += (size_t)n;
}

/* A label value with \ " and newline escaped, as the text format asks. */
static void prom_label(char *out, size_t cap, const char *value)
{
    size_t o = 0;
    for (const char *c = value; *c && o + 3 < cap; c++) {
        if (*c == '\\' || *c == '"') {
            out[o++] = '\\';
            out[o++] = *c;
        } else if (*c == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *c;
        }
    }
    out[o] = '\0';
}

int rbus_nats_prometheus(const rbus_nats *const *bridges, size_t count, char *buf, size_t size)
{
    if ((!bridges && count) || (!buf && size))
        return -EINVAL;
    for (size_t i = 0; i < count; i++)
        if (!bridges[i])
            return -EINVAL;
    rbus_nats_stats *stats = count ? calloc(count, sizeof *stats) : NULL;
    if (count && !stats)
        return -ENOMEM;
    /* One snapshot per bridge, so every family shows the same moment. */
    for (size_t i = 0; i < count; i++)
        rbus_nats_stats_get(bridges[i], &stats[i]);
    size_t len = 0;
    char label[2 * sizeof bridges[0]->bridge_id];
    for (size_t f = 0; count && f < sizeof nats_families / sizeof nats_families[0]; f++) {
        prom_append(buf, size, &len, "# HELP %s %s\n# TYPE %s %s\n", nats_families[f].name,
                    nats_families[f].help, nats_families[f].name, nats_families[f].type);
        for (size_t i = 0; i < count; i++) {
            const char *field = (const char *)&stats[i] + nats_families[f].offset;
            unsigned long long v = 0;
            if (nats_families[f].kind == FIELD_U64)
                v = *(const uint64_t *)(const void *)field;
            else if (nats_families[f].kind == FIELD_U32)
                v = *(const uint32_t *)(const void *)field;
            else
                v = *(const bool *)(const void *)field;
            prom_label(label, sizeof label, bridges[i]->bridge_id);
            prom_append(buf, size, &len, "%s{bridge=\"%s\"} %llu\n", nats_families[f].name,
                        label, v);
        }
    }
    free(stats);
    if (size)
        buf[len < size ? len : size - 1] = '\0';
    return len > INT_MAX ? -EOVERFLOW : (int)len;
}
