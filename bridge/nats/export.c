/* The export side: a thread drains the bridge's own subscription into NATS,
 * and, in JetStream mode, exports are tracked until their ack (or failure)
 * so that flush and stop know when they are done. */
#include "internal.h"

/* The export thread looks for flush requests this often when idle: the
 * latency an idle rbus_nats_flush pays, for ~100 wake-ups a second. */
#define EXPORT_POLL_MS 10

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

static void count_done(atomic_uint_fast64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_release);
}

/* Taken but neither sent nor failed yet. */
uint64_t rbus_nats__export_in_flight(const rbus_nats *b)
{
    uint64_t done = atomic_load_explicit(&b->export_skipped, memory_order_acquire) +
                    atomic_load_explicit(&b->sent, memory_order_acquire) +
                    atomic_load_explicit(&b->send_failed, memory_order_acquire);
    uint64_t taken = atomic_load_explicit(&b->export_taken, memory_order_relaxed);
    return taken > done ? taken - done : 0;
}

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
bool rbus_nats__awaiting_before(rbus_nats *b, uint64_t mark)
{
    bool any = false;
    pthread_mutex_lock(&b->track_lock);
    for (uint32_t i = 0; b->awaiting_count && i <= b->awaiting_mask && !any; i++)
        any = b->awaiting[i].msg && b->awaiting[i].pos < mark;
    pthread_mutex_unlock(&b->track_lock);
    return any;
}

void rbus_nats__on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
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
    /* Forgotten before it joins `failed`, both under track_lock: once
     * destroyed, its address may come back as a new export's, which must not
     * find this one still recorded. (Lock order: track_lock, failed_lock.) */
    pthread_mutex_lock(&b->track_lock);
    awaiting_remove_locked(b, msg);
    pthread_mutex_lock(&b->failed_lock);
    /* `failed` is emptied after every batch: at most max_pending + a batch
     * fail in between, so it always fits. */
    natsMsg *destroy_now = msg;
    if (b->failed_count < b->failed_cap) {
        b->failed[b->failed_count++] = msg;
        destroy_now = NULL;
    }
    pthread_mutex_unlock(&b->failed_lock);
    count_done(&b->send_failed);
    pthread_mutex_unlock(&b->track_lock);
    natsMsg_Destroy(destroy_now);
}

/* Destroys the failed exports: called by the export thread outside any
 * publish (or once it has ended). */
void rbus_nats__destroy_failed(rbus_nats *b)
{
    pthread_mutex_lock(&b->failed_lock);
    for (uint32_t i = 0; i < b->failed_count; i++)
        natsMsg_Destroy(b->failed[i]);
    b->failed_count = 0;
    pthread_mutex_unlock(&b->failed_lock);
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

    if (!rbus_nats__build_subject(b, rbus_msg_topic(m), subject) || size > (size_t)INT32_MAX ||
        export_gives_up(b)) {
        count_done(&b->send_failed);
        return;
    }
    if (b->mode == RBUS_NATS_CORE && !key && !okey && !rbus_msg_header_count(m)) {
        natsStatus s = natsConnection_Publish(b->nc, subject, rbus_msg_data(m), (int)size);
        count_done(s == NATS_OK ? &b->sent : &b->send_failed);
        return;
    }

    natsMsg *nm = NULL;
    natsStatus s = natsMsg_Create(&nm, subject, NULL, rbus_msg_data(m), (int)size);
    if (s == NATS_OK && key)
        s = rbus_nats__set_key_header(nm, RBUS_NATS_KEY_HEADER, key, key_len);
    if (s == NATS_OK && okey)
        s = rbus_nats__set_key_header(nm, RBUS_NATS_ORDER_KEY_HEADER, okey, okey_len);
    /* The message's headers as NATS headers, in order; their values are
     * NUL-terminated text (rbus_msg_header_at). */
    for (size_t i = 0; s == NATS_OK && i < rbus_msg_header_count(m); i++) {
        const char *hname;
        const void *hvalue;
        rbus_msg_header_at(m, i, &hname, &hvalue, NULL);
        s = natsMsgHeader_Add(nm, hname, hvalue);
    }
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
void rbus_nats__fail_stranded_acks(rbus_nats *b)
{
    natsMsgList pending = {0};
    if (js_PublishAsyncGetPendingList(&pending, b->js) == NATS_OK) {
        for (int i = 0; i < pending.Count; i++)
            awaiting_done(b, pending.Msgs[i], &b->send_failed);
        natsMsgList_Destroy(&pending);
    }
}

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

void *rbus_nats__export_main(void *arg)
{
    rbus_nats *b = arg;
    rbus_msg *batch[EXPORT_BATCH];
    for (;;) {
        answer_flush(b);
        int n =
            rbus_recv_batch(b->export_sub, batch, EXPORT_BATCH, (int64_t)EXPORT_POLL_MS * 1000000);
        if (b->js)
            rbus_nats__destroy_failed(b);
        if (n > 0) {
            export_batch(b, batch, n);
            continue;
        }
        if (b->js && atomic_load_explicit(&b->conn_closed, memory_order_relaxed) &&
            rbus_nats__export_in_flight(b) > 0)
            rbus_nats__fail_stranded_acks(b);
        if (n == -ESHUTDOWN)
            break; /* stopped (or bus closed) and drained */
    }
    /* Nothing is left to take: every flush from now on needs only the
     * exports already handed to cnats. */
    atomic_store_explicit(&b->flush_mark,
                          atomic_load_explicit(&b->export_taken, memory_order_relaxed),
                          memory_order_relaxed);
    atomic_store_explicit(&b->flush_served, UINT64_MAX, memory_order_release);
    return NULL;
}
