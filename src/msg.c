/*
 * msg.c - messages: the pool, reference counts, accessors.
 *
 * Pool design. Messages come in power-of-two size classes (64 B .. 128 MiB
 * of payload + keys). Each per-thread state owns one cache per class:
 *  - `local`: a plain list only its owner touches (no atomics to allocate);
 *  - `returned`: a stack that any thread releasing a message born here
 *    pushes onto (one CAS), and that the owner empties in one exchange when
 *    `local` runs dry.
 * Only the owner ever pops, and it takes the whole stack at once, so the
 * ABA problem of a lock-free pop cannot arise (no double-width CAS needed).
 * In steady state a publisher recycles its own messages and allocates
 * nothing. A state's cache survives the thread (states are recycled), and
 * is freed at rbus_destroy.
 *
 * Memory bound: a state allocates only when its cache is empty, so the
 * messages of one state never exceed the most it had in flight at once
 * (queued in rings or held by users); the pool is bounded by the sum of
 * that over the states, and the states by the most threads that published
 * at the same time.
 */
#include "internal.h"

#include <string.h>

#define RBUS_MIN_CLASS_SHIFT 6 /* 64 bytes */
#define RBUS_NUM_CLASSES 22    /* up to 64 << 21 = 128 MiB: max payload + both keys */

_Static_assert((UINT64_C(64) << (RBUS_NUM_CLASSES - 1)) >=
                   (uint64_t)RBUS_MAX_PAYLOAD_LIMIT + 2 * RBUS_MAX_KEY_LEN + RBUS_MAX_HEADER_BYTES +
                       5 * RBUS_MAX_HEADERS,
               "size classes must cover the largest payload, both keys and the headers");

struct rbus_msg_cache {
    rbus_msg *local[RBUS_NUM_CLASSES];
    /* Written by releasing threads: kept off the owner's line. */
    RBUS__CACHE_ALIGNED _Atomic(rbus_msg *) returned[RBUS_NUM_CLASSES];
};

static unsigned size_class_of(size_t bytes)
{
    unsigned c = 0;
    while (((size_t)64 << c) < bytes)
        c++;
    return c;
}

struct rbus_msg_cache *rbus__msg_cache_new(rbus *bus)
{
    return rbus__zalloc_aligned(bus, sizeof(struct rbus_msg_cache));
}

static void free_list(rbus *bus, rbus_msg *m)
{
    while (m) {
        rbus_msg *next = m->next_free;
        rbus__free(bus, m);
        m = next;
    }
}

void rbus__msg_cache_free(rbus *bus, struct rbus_msg_cache *cache)
{
    if (!cache)
        return;
    for (unsigned c = 0; c < RBUS_NUM_CLASSES; c++) {
        free_list(bus, cache->local[c]);
        free_list(bus, atomic_load_explicit(&cache->returned[c], memory_order_acquire));
    }
    rbus__free_aligned(bus, cache);
}

/* memcpy for keys: they are short (idempotency keys are typically 8-36
 * bytes), and a call to libc's memcpy costs as much as the copy. Fixed-size
 * copies compile to plain moves; two that overlap cover any length in
 * their range without a loop or a byte beyond n. */
static inline void copy_key(unsigned char *dst, const unsigned char *src, size_t n)
{
    if (n >= 16 && n <= 32) {
        memcpy(dst, src, 16);
        memcpy(dst + n - 16, src + n - 16, 16);
    } else if (n >= 8 && n < 16) {
        memcpy(dst, src, 8);
        memcpy(dst + n - 8, src + n - 8, 8);
    } else if (n >= 4 && n < 8) {
        memcpy(dst, src, 4);
        memcpy(dst + n - 4, src + n - 4, 4);
    } else if (n < 4) {
        for (size_t i = 0; i < n; i++)
            dst[i] = src[i];
    } else {
        memcpy(dst, src, n);
    }
}

/*
 * Headers. A message's header block follows its keys: per header, one
 * byte of name length, two of value length (host order), the name and a
 * NUL, the value and a NUL. The NULs make both usable as C strings; names
 * and values contain none (rbus__headers_check).
 */
#define HDR_FIXED 5u /* per header: lengths (3) and the two NULs */

static size_t headers_size(const rbus_pub_opts *opts)
{
    size_t n = 0;
    for (size_t i = 0; i < opts->header_count; i++)
        n += HDR_FIXED + strlen(opts->headers[i].name) + opts->headers[i].value_len;
    return n;
}

static void headers_write(unsigned char *p, const rbus_pub_opts *opts)
{
    for (size_t i = 0; i < opts->header_count; i++) {
        const rbus_header *h = &opts->headers[i];
        size_t nl = strlen(h->name);
        uint16_t vl = (uint16_t)h->value_len;
        *p++ = (unsigned char)nl;
        memcpy(p, &vl, 2);
        p += 2;
        memcpy(p, h->name, nl + 1);
        p += nl + 1;
        if (vl)
            memcpy(p, h->value, vl);
        p[vl] = '\0';
        p += vl + 1u;
    }
}

_Static_assert(RBUS_MAX_HEADER_NAME < 256, "a header name's length fits one byte");
_Static_assert(RBUS_MAX_HEADER_BYTES < 65536, "a header value's length fits two bytes");

int rbus__headers_check(const rbus_pub_opts *opts)
{
    if (!opts->header_count)
        return 0;
    if (!opts->headers)
        return rbus__fail(-EINVAL, "headers is NULL with header_count %zu", opts->header_count);
    if (opts->header_count > RBUS_MAX_HEADERS)
        return rbus__fail(-EINVAL, "header_count %zu above RBUS_MAX_HEADERS (%u)",
                          opts->header_count, RBUS_MAX_HEADERS);
    size_t bytes = 0;
    char q[RBUS__QUOTE_CAP];
    for (size_t i = 0; i < opts->header_count; i++) {
        const rbus_header *h = &opts->headers[i];
        if (!h->name)
            return rbus__fail(-EINVAL, "headers[%zu].name is NULL", i);
        size_t nl = strnlen(h->name, RBUS_MAX_HEADER_NAME + 1);
        if (nl == 0 || nl > RBUS_MAX_HEADER_NAME)
            return rbus__fail(-EINVAL, "headers[%zu].name %s, not 1..%u bytes", i,
                              rbus__quote(q, h->name), RBUS_MAX_HEADER_NAME);
        for (size_t k = 0; k < nl; k++) {
            unsigned char c = (unsigned char)h->name[k];
            if (c < 0x21 || c > 0x7e || c == ':')
                return rbus__fail(-EINVAL,
                                  "headers[%zu].name %s: byte %zu is not printable ASCII "
                                  "other than ':'",
                                  i, rbus__quote(q, h->name), k);
        }
        if (!h->value && h->value_len)
            return rbus__fail(-EINVAL, "headers[%zu].value is NULL with value_len %zu", i,
                              h->value_len);
        if (h->value_len > RBUS_MAX_HEADER_BYTES)
            return rbus__fail(-EMSGSIZE, "headers[%zu].value_len %zu above %u", i, h->value_len,
                              RBUS_MAX_HEADER_BYTES);
        const unsigned char *v = h->value;
        for (size_t k = 0; k < h->value_len; k++)
            if (v[k] == 0 || v[k] == '\r' || v[k] == '\n')
                return rbus__fail(-EINVAL, "headers[%zu] %s: value byte %zu is NUL, CR or LF", i,
                                  rbus__quote(q, h->name), k);
        bytes += nl + h->value_len;
    }
    if (bytes > RBUS_MAX_HEADER_BYTES)
        return rbus__fail(-EMSGSIZE,
                          "headers: %zu bytes of names and values, above RBUS_MAX_HEADER_BYTES "
                          "(%u)",
                          bytes, RBUS_MAX_HEADER_BYTES);
    return 0;
}

rbus_msg *rbus__msg_new(struct rbus_thread_state *th, rbus_topic *topic, const rbus_msg *hdr_src,
                        const void *data, size_t len, const rbus_pub_opts *opts)
{
    size_t key_len = opts && opts->key ? opts->key_len : 0;
    size_t okey_len = opts && opts->order_key ? opts->order_key_len : 0;
    size_t hdr_size = hdr_src                           ? hdr_src->headers_size
                      : opts && opts->header_count != 0 ? headers_size(opts)
                                                        : 0;
    size_t bytes = len + key_len + okey_len + hdr_size;
    unsigned cls = size_class_of(bytes);
    struct rbus_msg_cache *cache = th->cache;

    rbus_msg *m = cache->local[cls];
    if (RBUS__UNLIKELY(!m)) {
        /* Acquire: pairs with the release push in msg_recycle, so the
         * releaser's last reads of the message happen before we reuse it. */
        m = atomic_exchange_explicit(&cache->returned[cls], NULL, memory_order_acquire);
        if (!m) {
            m = rbus__alloc(th->bus, sizeof *m + ((size_t)64 << cls));
            if (!m)
                return NULL;
            m->next_free = NULL;
            m->size_class = (uint8_t)cls;
            m->home = th;
            m->bus_id = th->bus->id;
        }
    }
    cache->local[cls] = m->next_free;

    /* Not yet shared: plain initialisation. The ring enqueue publishes it. */
    atomic_init(&m->refs, 1);
    m->size = (uint32_t)len;
    m->key_len = (uint8_t)key_len;
    m->order_key_len = (uint8_t)okey_len;
    m->origin = opts ? opts->origin : 0;
    m->attempt = 1;
    m->topic = topic;
    m->origin_topic = NULL;
    m->seq = 0;
    atomic_store_explicit(&m->time_ns, 0, memory_order_relaxed);
    if (len)
        memcpy(m->data, data, len);
    if (key_len)
        copy_key((unsigned char *)m->data + len, opts->key, key_len);
    if (okey_len)
        copy_key((unsigned char *)m->data + len + key_len, opts->order_key, okey_len);
    m->headers_size = (uint16_t)hdr_size;
    m->header_count = 0;
    if (RBUS__UNLIKELY(hdr_size != 0)) {
        unsigned char *p = m->data + len + key_len + okey_len;
        if (hdr_src) {
            memcpy(p, hdr_src->data + hdr_src->size + hdr_src->key_len + hdr_src->order_key_len,
                   hdr_size);
            m->header_count = hdr_src->header_count;
        } else {
            headers_write(p, opts);
            m->header_count = (uint8_t)opts->header_count;
        }
    }
    return m;
}

void rbus__msg_opts(const rbus_msg *m, rbus_pub_opts *o)
{
    memset(o, 0, sizeof *o);
    o->key = rbus_msg_key(m, &o->key_len);
    o->order_key = rbus_msg_order_key(m, &o->order_key_len);
    o->origin = m->origin;
}

rbus_msg *rbus__msg_clone(struct rbus_thread_state *th, const rbus_msg *m, uint32_t attempt)
{
    rbus_pub_opts o;
    rbus__msg_opts(m, &o);
    rbus_msg *c = rbus__msg_new(th, m->topic, m, m->data, m->size, &o);
    if (!c)
        return NULL;
    c->seq = m->seq;
    atomic_store_explicit(&c->time_ns, atomic_load_explicit(&m->time_ns, memory_order_relaxed),
                          memory_order_relaxed);
    c->origin_topic = m->origin_topic;
    c->attempt = attempt;
    return c;
}

static void msg_recycle(struct rbus_thread_state *th, rbus_msg *m)
{
    /* Zero while it is in a cache (the sole-holder path below left it at
     * n): a second release of the same reference then finds no reference
     * to drop instead of pushing the message twice. Relaxed: the push
     * below (or the owner's own list) orders it before any reuse. */
    atomic_store_explicit(&m->refs, 0, memory_order_relaxed);
    struct rbus_msg_cache *cache = m->home->cache;
    if (th == m->home) {
        /* Back to its owner's own list: only the owner touches it. */
        m->next_free = cache->local[m->size_class];
        cache->local[m->size_class] = m;
        return;
    }
    _Atomic(rbus_msg *) *head = &cache->returned[m->size_class];
    rbus_msg *old = atomic_load_explicit(head, memory_order_relaxed);
    /* Release: our reads of the message (and the payload) happen before the
     * owner takes it back with its acquire exchange. A push-only stack has
     * no ABA: the owner only ever swaps the whole stack out. */
    do {
        m->next_free = old;
    } while (!atomic_compare_exchange_weak_explicit(head, &old, m, memory_order_release,
                                                    memory_order_relaxed));
}

bool rbus__msg_unref_by(struct rbus_thread_state *th, rbus_msg *m, uint32_t n)
{
#if defined(RBUS_CHECKED)
    /* Always the locked decrement, so that two releases of one reference,
     * even racing, leave one of them finding no reference to drop. */
    uint32_t had = atomic_fetch_sub_explicit(&m->refs, n, memory_order_acq_rel);
    if (had < n)
        rbus__misuse("rbus_msg_release", "released more times than it was referenced "
                                         "(a second release of one reference?)");
    if (had == n)
        msg_recycle(th, m);
    return true;
#else
    /* Holding every reference left, the caller is the only one who can
     * change the count, so it needs no atomic write: the common case (one
     * subscription, its receiver releasing) costs no locked instruction.
     * Otherwise acq_rel: the releasing side's reads happen before the last
     * owner recycles it (the classic refcount pattern). The acquire load
     * pairs with those same release decrements. A message found with no
     * reference at all is in a cache already: a second release of the
     * same reference, which is ignored rather than corrupting the cache
     * (RBUS_CHECKED builds abort instead). */
    uint32_t refs = atomic_load_explicit(&m->refs, memory_order_acquire);
    if (refs == n || (RBUS__LIKELY(refs > n) &&
                      atomic_fetch_sub_explicit(&m->refs, n, memory_order_acq_rel) == n))
        msg_recycle(th, m);
    return refs >= n;
#endif
}

void rbus__held_add(rbus *bus, struct rbus_thread_state *th, int64_t n)
{
    if (RBUS__LIKELY(th != NULL)) {
        /* Only the state's owner writes these, so a relaxed load and store
         * suffice (no locked instruction on a receive or release); the
         * sum in rbus__held_read reads them relaxed: a gauge. */
        atomic_store_explicit(&th->held, atomic_load_explicit(&th->held, memory_order_relaxed) + n,
                              memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&bus->held_stateless, n, memory_order_relaxed);
}

uint64_t rbus__held_read(rbus *bus)
{
    int64_t n = atomic_load_explicit(&bus->held_stateless, memory_order_relaxed);
    for (struct rbus_thread_state *th = bus->threads; th; th = th->bus_next)
        n += atomic_load_explicit(&th->held, memory_order_relaxed);
    /* A reference taken on one thread and released on another can be read
     * released before it was taken while both are in flight. */
    return n > 0 ? (uint64_t)n : 0;
}

void rbus__msg_unref(rbus_msg *m, uint32_t n)
{
    rbus__msg_unref_by(NULL, m, n);
}

#if defined(RBUS_CHECKED)
/* The message this thread's handler runs with, and how many references
 * the handler took on it itself (which it may release). */
static _Thread_local const rbus_msg *handler_msg;
static _Thread_local uint64_t handler_refs;

void rbus__msg_handler_enter(const rbus_msg *m)
{
    handler_msg = m;
    handler_refs = 0;
}

void rbus__msg_handler_leave(void)
{
    handler_msg = NULL;
}
#endif

rbus_msg *rbus_msg_ref(const rbus_msg *msg)
{
    RBUS__PAUSE(RBUS_MSG_REF);
    if (!msg)
        return NULL;
    rbus_msg *m = (rbus_msg *)msg;
#if defined(RBUS_CHECKED)
    if (m == handler_msg)
        handler_refs++;
#endif
    /* Relaxed: the caller already holds a reference, so the message cannot
     * be recycled concurrently; the new reference needs no ordering. */
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    rbus *bus = m->topic->bus;
    rbus__held_add(bus, rbus__thread_get(bus), 1);
    return m;
}

void rbus_msg_release(rbus_msg *msg)
{
    RBUS__PAUSE(RBUS_MSG_RELEASE);
    if (!msg)
        return;
#if defined(RBUS_CHECKED)
    /* Its memory outlives the bus (rbus_destroy frees only the messages
     * it holds), so the id can be read; the bus's state cannot. */
    if (!rbus__registry_alive(msg->bus_id))
        rbus__misuse("rbus_msg_release", "the message's bus was destroyed "
                                         "(release every message before rbus_destroy)");
    if (msg == handler_msg) {
        if (handler_refs == 0)
            rbus__misuse("rbus_msg_release", "a handler released the message it was given "
                                             "(the dispatcher releases it; rbus_msg_ref it "
                                             "to keep it past the call)");
        handler_refs--;
    }
#endif
    /* Read before the release: the message may be reused once it is done. */
    rbus *bus = msg->topic->bus;
    struct rbus_thread_state *th = rbus__thread_get(bus);
    if (rbus__msg_unref_by(th, msg, 1))
        rbus__held_add(bus, th, -1);
}

static const unsigned char empty_payload[1];

const void *rbus_msg_data(const rbus_msg *msg)
{
    RBUS__PAUSE(RBUS_MSG_DATA);
    if (!msg)
        return NULL;
    return msg->size ? (const void *)msg->data : (const void *)empty_payload;
}

size_t rbus_msg_size(const rbus_msg *msg)
{
    return msg ? msg->size : 0;
}

const char *rbus_msg_topic(const rbus_msg *msg)
{
    return msg ? msg->topic->name : NULL;
}

uint64_t rbus_msg_seq(const rbus_msg *msg)
{
    return msg ? msg->seq : 0;
}

uint64_t rbus_msg_time_ns(const rbus_msg *msg)
{
    return msg ? atomic_load_explicit(&msg->time_ns, memory_order_relaxed) : 0;
}

size_t rbus_msg_header_count(const rbus_msg *msg)
{
    return msg ? msg->header_count : 0;
}

int rbus_msg_header_at(const rbus_msg *msg, size_t i, const char **name, const void **value,
                       size_t *value_len)
{
    if (!msg)
        return rbus__fail_static(-EINVAL, "rbus_msg_header_at: msg is NULL");
    if (i >= msg->header_count)
        return rbus__fail(-ENOENT, "rbus_msg_header_at: no header %zu (the message has %u)", i,
                          (unsigned)msg->header_count);
    const unsigned char *p = msg->data + msg->size + msg->key_len + msg->order_key_len;
    for (size_t k = 0;; k++) {
        size_t nl = p[0];
        uint16_t vl;
        memcpy(&vl, p + 1, 2);
        if (k == i) {
            if (name)
                *name = (const char *)p + 3;
            if (value)
                *value = p + 3 + nl + 1;
            if (value_len)
                *value_len = vl;
            return 0;
        }
        p += HDR_FIXED + nl + vl;
    }
}

int rbus_msg_header(const rbus_msg *msg, const char *name, const void **value, size_t *value_len)
{
    if (!msg)
        return rbus__fail_static(-EINVAL, "rbus_msg_header: msg is NULL");
    if (!name)
        return rbus__fail_static(-EINVAL, "rbus_msg_header: name is NULL");
    for (size_t i = 0; i < msg->header_count; i++) {
        const char *n;
        rbus_msg_header_at(msg, i, &n, value, value_len);
        if (!strcmp(n, name))
            return 0;
    }
    char q[RBUS__QUOTE_CAP];
    return rbus__fail(-ENOENT, "rbus_msg_header: no header %s", rbus__quote(q, name));
}

const void *rbus_msg_key(const rbus_msg *msg, size_t *key_len)
{
    size_t n = msg ? msg->key_len : 0;
    if (key_len)
        *key_len = n;
    return n ? msg->data + msg->size : NULL;
}

const void *rbus_msg_order_key(const rbus_msg *msg, size_t *key_len)
{
    size_t n = msg ? msg->order_key_len : 0;
    if (key_len)
        *key_len = n;
    return n ? msg->data + msg->size + msg->key_len : NULL;
}

uint32_t rbus_msg_origin(const rbus_msg *msg)
{
    return msg ? msg->origin : 0;
}

uint32_t rbus_msg_attempt(const rbus_msg *msg)
{
    return msg ? msg->attempt : 0;
}

const char *rbus_msg_origin_topic(const rbus_msg *msg)
{
    return msg ? msg->origin_topic : NULL;
}
