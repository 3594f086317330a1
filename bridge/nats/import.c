/* The import side: a thread takes messages from NATS (a core subscription or
 * a JetStream pull consumer) and publishes them into the bus. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define IMPORT_BATCH 128

static bool is_stopping(const rbus_nats *b)
{
    return atomic_load_explicit(&b->stopping, memory_order_relaxed);
}

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
    const char *topic_name = rbus_nats__subject_to_topic(b, natsMsg_GetSubject(nm));
    if (!topic_name) {
        count(&b->import_invalid);
        return true;
    }

    uint8_t key[RBUS_MAX_KEY_LEN], okey[RBUS_MAX_KEY_LEN];
    rbus_pub_opts po = {.origin = b->origin, .timeout_ns = b->import_timeout_ns};
    if (natsMsgHeader_Get(nm, RBUS_NATS_KEY_HEADER, &value) == NATS_OK && value) {
        po.key_len = rbus_nats__header_to_key(value, key);
        if (po.key_len == 0) {
            count(&b->import_invalid);
            return true;
        }
        po.key = key;
    }
    if (natsMsgHeader_Get(nm, RBUS_NATS_ORDER_KEY_HEADER, &value) == NATS_OK && value) {
        po.order_key_len = rbus_nats__header_to_key(value, okey);
        if (po.order_key_len == 0) {
            count(&b->import_invalid);
            return true;
        }
        po.order_key = okey;
    }

    /* NATS headers other than the bridge's own become the message's. */
    rbus_header hdrs[RBUS_MAX_HEADERS];
    const char **keys = NULL;
    int nkeys = 0;
    size_t nh = 0;
    bool too_many = false;
    if (natsMsgHeader_Keys(nm, &keys, &nkeys) == NATS_OK) {
        for (int k = 0; k < nkeys && !too_many; k++) {
            if (!strcmp(keys[k], RBUS_NATS_KEY_HEADER) ||
                !strcmp(keys[k], RBUS_NATS_ORDER_KEY_HEADER) ||
                !strcmp(keys[k], RBUS_NATS_BRIDGE_HEADER))
                continue;
            const char **values = NULL;
            int nvalues = 0;
            if (natsMsgHeader_Values(nm, keys[k], &values, &nvalues) != NATS_OK)
                continue;
            for (int v = 0; v < nvalues; v++) {
                if (nh == RBUS_MAX_HEADERS) {
                    too_many = true;
                    break;
                }
                hdrs[nh++] = (rbus_header){keys[k], values[v], strlen(values[v])};
            }
            free((void *)values);
        }
    }
    po.headers = hdrs;
    po.header_count = nh;

    rbus_topic *topic = NULL;
    int rc = too_many ? -EINVAL : open_topic(b, topic_name, &topic);
    if (rc == 0) {
        const char *data = natsMsg_GetData(nm);
        int len = natsMsg_GetDataLength(nm);
        rc = rbus_publish_ex(topic, len > 0 ? data : NULL, len > 0 ? (size_t)len : 0, &po, NULL);
    }
    free((void *)keys);
    if (rc == 0)
        count(&b->imported);
    else if (rc == RBUS_DUPLICATE)
        count(&b->import_duplicates);
    else if ((rc == -EINVAL || rc == -EMSGSIZE) && (nh || too_many))
        count(&b->import_invalid); /* headers ringbus cannot carry */
    else
        count(&b->import_failed);
    return rc != -ESHUTDOWN;
}

void *rbus_nats__import_main(void *arg)
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
