/*
 * rbus_last_error_detail: every -EINVAL path of every public function says
 * which argument broke which rule, the other errors say what there is to
 * say, success leaves the text alone, and each thread has its own.
 *
 * Before each call under test the detail is set to a known other text (a
 * "poison"), so a failure that forgot to set its own detail shows up as
 * the poison instead of passing on an earlier call's words.
 */
#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/resource.h>

#include "test_util.h"

/* ------------------------------------------------------------- helpers */

#define POISON_A "rbus_topic_stats_get: topic is NULL"
#define POISON_B "rbus_sub_stats_get: sub is NULL"

/* Sets the detail to a poison whose text does not contain `want`. */
static void poison(const char *want)
{
    if (!strstr(POISON_A, want)) {
        assert_rbus_rc(rbus_topic_stats_get(NULL, NULL), -EINVAL);
        assert_string_equal(rbus_last_error_detail(), POISON_A);
    } else {
        assert_rbus_rc(rbus_sub_stats_get(NULL, NULL), -EINVAL);
        assert_string_equal(rbus_last_error_detail(), POISON_B);
    }
}

/* Every detail is bounded and printable: user bytes come out escaped. */
static void assert_detail_sane(const char *d)
{
    assert_non_null(d);
    size_t n = strlen(d);
    assert_true(n < 256);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)d[i] < 0x20 || (unsigned char)d[i] >= 0x7f) {
            print_error("detail '%s' has byte 0x%02x at %zu\n", d, (unsigned char)d[i], i);
            fail();
        }
}

static void check_detail(const char *expr, const char *want, bool exact)
{
    const char *d = rbus_last_error_detail();
    assert_detail_sane(d);
    if (exact ? strcmp(d, want) != 0 : strstr(d, want) == NULL) {
        print_error("%s:\n  detail '%s'\n  wanted %s'%s'\n", expr, d, exact ? "" : "a text with ",
                    want);
        fail();
    }
}

/* The call fails with `rc` and its detail is exactly `text`. */
#define assert_detail(expr, rc, text)      \
    do {                                   \
        poison(text);                      \
        assert_rbus_rc((expr), (rc));      \
        check_detail(#expr, (text), true); \
    } while (0)

/* The call fails with `rc` and its detail contains `part`. */
#define assert_detail_has(expr, rc, part)   \
    do {                                    \
        poison(part);                       \
        assert_rbus_rc((expr), (rc));       \
        check_detail(#expr, (part), false); \
    } while (0)

struct fixture {
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
};

static int fx_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_payload = 64;
    if (rbus_create(&f->bus, &cfg) != 0 || rbus_topic_open(f->bus, "ok.t", &f->topic) != 0)
        return -1;
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 16;
    o.overflow = RBUS_DROP_NEWEST;
    if (rbus_subscribe(f->bus, "ok.>", &o, &f->sub) != 0)
        return -1;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fixture *f = *state;
    if (f) {
        rbus_destroy(f->bus);
        free(f);
    }
    return 0;
}

/* "'" + the first 66 bytes of a long run of c + "'...": how a long
 * string from the caller is quoted. */
static void cut_run(char *dst, size_t cap, char c)
{
    char run[67];
    memset(run, c, 66);
    run[66] = '\0';
    snprintf(dst, cap, "'%s'...", run);
}

/* --------------------------------------------------------------- create */

static void create_details(void **state)
{
    (void)state;
    rbus *bus = NULL;
    rbus_config cfg;
    assert_detail(rbus_create(NULL, NULL), -EINVAL, "rbus_create: out is NULL");

    rbus_config_init(&cfg);
    cfg.default_capacity = RBUS_MAX_CAPACITY + 1;
    assert_detail(rbus_create(&bus, &cfg), -EINVAL,
                  "rbus_create: default_capacity 1073741825 above RBUS_MAX_CAPACITY "
                  "(1073741824)");
    /* the first broken rule is the one named */
    cfg.max_payload = RBUS_MAX_PAYLOAD_LIMIT + 1;
    assert_detail_has(rbus_create(&bus, &cfg), -EINVAL, "rbus_create: default_capacity");

    rbus_config_init(&cfg);
    cfg.max_payload = RBUS_MAX_PAYLOAD_LIMIT + 1;
    assert_detail(rbus_create(&bus, &cfg), -EINVAL,
                  "rbus_create: max_payload 67108865 above RBUS_MAX_PAYLOAD_LIMIT (67108864)");

    rbus_config_init(&cfg);
    cfg.dedup_window_ns = UINT64_MAX;
    assert_detail(rbus_create(&bus, &cfg), -EINVAL,
                  "rbus_create: dedup_window_ns 18446744073709551615 above INT64_MAX");

    rbus_config_init(&cfg);
    cfg.dedup_keys = RBUS_MAX_DEDUP_KEYS + 1;
    assert_detail(rbus_create(&bus, &cfg), -EINVAL,
                  "rbus_create: dedup_keys 4194305 above RBUS_MAX_DEDUP_KEYS (4194304) and not "
                  "RBUS_DEDUP_OFF");

    struct rbus_test_alloc cnt;
    rbus_test_alloc_init(&cnt);
    rbus_allocator a = {.alloc = NULL, .free = cnt.hooks.free, .arg = &cnt};
    rbus_config_init(&cfg);
    cfg.allocator = &a;
    assert_detail(rbus_create(&bus, &cfg), -EINVAL, "rbus_create: allocator->alloc is NULL");
    a.alloc = cnt.hooks.alloc;
    a.free = NULL;
    assert_detail(rbus_create(&bus, &cfg), -EINVAL, "rbus_create: allocator->free is NULL");
    assert_null(bus);
}

/* ------------------------------------------------- names and patterns */

struct bad_subject {
    const char *s;
    const char *quoted;   /* as the detail quotes it */
    const char *why;      /* as a pattern */
    const char *name_why; /* as a topic name, when that differs */
};

/* Patterns, one per rule (the eight and more distinct reasons). */
static const struct bad_subject bad_patterns[] = {
    {"", "''", "is empty", NULL},
    {".a", "'.a'", "empty token at offset 0 (leading '.')", NULL},
    {"a.", "'a.'", "empty token at offset 2 (trailing '.')", NULL},
    {"a..b", "'a..b'", "empty token at offset 2 ('..')", NULL},
    {"a b", "'a b'", "whitespace 0x20 at offset 1", NULL},
    {"a\tb", "'a\\x09b'", "whitespace 0x09 at offset 1", NULL},
    {"a.\x01", "'a.\\x01'", "control character 0x01 at offset 2", NULL},
    {"a\x7f", "'a\\x7f'", "control character 0x7f at offset 1", NULL},
    {"caf\xc3\xa9", "'caf\\xc3\\xa9'", "byte 0xc3 at offset 3 (not printable ASCII)", NULL},
    {"a*", "'a*'", "'*' inside a token at offset 1 (a wildcard is a whole token)", NULL},
    {"x.>y", "'x.>y'", "'>' inside a token at offset 2 (a wildcard is a whole token)", NULL},
    {"orders.>.x", "'orders.>.x'", "'>' must be the last token (offset 7)",
     "wildcard '>' at offset 7 (a topic name takes none)"},
    {"it's here", "'it\\'s here'", "whitespace 0x20 at offset 4", NULL},
    {"a\\ b", "'a\\\\ b'", "whitespace 0x20 at offset 2", NULL},
};

static void pattern_reasons(void **state)
{
    struct fixture *f = *state;
    rbus_sub *s = NULL;
    char want[256];
    for (size_t i = 0; i < sizeof bad_patterns / sizeof bad_patterns[0]; i++) {
        const struct bad_subject *b = &bad_patterns[i];
        snprintf(want, sizeof want, "rbus_subscribe: pattern %s: %s", b->quoted, b->why);
        assert_detail(rbus_subscribe(f->bus, b->s, NULL, &s), -EINVAL, want);
        assert_null(s);
        /* The validator the detail comes from is the public one. */
        assert_false(rbus_pattern_valid(b->s));
        assert_false(rbus_topic_valid(b->s));
        /* Every reason a pattern can have, a name has too. */
        snprintf(want, sizeof want, "rbus_topic_open: name %s: %s", b->quoted,
                 b->name_why ? b->name_why : b->why);
        rbus_topic *t = NULL;
        assert_detail(rbus_topic_open(f->bus, b->s, &t), -EINVAL, want);
    }
    assert_detail(rbus_subscribe(f->bus, NULL, NULL, &s), -EINVAL,
                  "rbus_subscribe: pattern is NULL");

    char longp[300], cut[80];
    memset(longp, 'p', sizeof longp);
    longp[256] = '\0';
    cut_run(cut, sizeof cut, 'p');
    snprintf(want, sizeof want,
             "rbus_subscribe: pattern %s: longer than RBUS_MAX_TOPIC_LEN (255 bytes)", cut);
    assert_detail(rbus_subscribe(f->bus, longp, NULL, &s), -EINVAL, want);
    longp[255] = '\0';
    assert_rbus_ok(rbus_subscribe(f->bus, longp, NULL, &s));
    assert_rbus_ok(rbus_unsubscribe(s));

    /* The validity functions agree with the calls on good subjects too. */
    static const char *good[] = {"a", "a.b", "*", ">", "a.*.c", "a.>", "it's", "a\\b", "~!"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_true(rbus_pattern_valid(good[i]));
        assert_rbus_ok(rbus_subscribe(f->bus, good[i], NULL, &s));
        assert_rbus_ok(rbus_unsubscribe(s));
    }
}

static void topic_open_details(void **state)
{
    struct fixture *f = *state;
    rbus_topic *t = NULL;
    rbus_topic_opts to;
    rbus_topic_opts_init(&to);
    assert_detail(rbus_topic_open(NULL, "a", &t), -EINVAL, "rbus_topic_open: bus is NULL");
    assert_detail(rbus_topic_open(f->bus, "a", NULL), -EINVAL, "rbus_topic_open: out is NULL");
    assert_detail(rbus_topic_open(f->bus, NULL, &t), -EINVAL, "rbus_topic_open: name is NULL");
    assert_detail(rbus_topic_open(f->bus, "orders.*", &t), -EINVAL,
                  "rbus_topic_open: name 'orders.*': wildcard '*' at offset 7 (a topic name "
                  "takes none)");
    assert_detail(rbus_topic_open(f->bus, ">", &t), -EINVAL,
                  "rbus_topic_open: name '>': wildcard '>' at offset 0 (a topic name takes none)");
    assert_false(rbus_topic_valid("orders.*"));
    assert_true(rbus_pattern_valid("orders.*"));

    assert_detail(rbus_topic_open_ex(NULL, "a", &to, &t), -EINVAL,
                  "rbus_topic_open_ex: bus is NULL");
    assert_detail(rbus_topic_open_ex(f->bus, "a", &to, NULL), -EINVAL,
                  "rbus_topic_open_ex: out is NULL");
    assert_detail(rbus_topic_open_ex(f->bus, NULL, NULL, &t), -EINVAL,
                  "rbus_topic_open_ex: name is NULL");
    assert_detail(rbus_topic_open_ex(f->bus, "a..b", NULL, &t), -EINVAL,
                  "rbus_topic_open_ex: name 'a..b': empty token at offset 2 ('..')");
    assert_detail(rbus_topic_open_ex(f->bus, "a.>", &to, &t), -EINVAL,
                  "rbus_topic_open_ex: name 'a.>': wildcard '>' at offset 2 (a topic name "
                  "takes none)");
    assert_null(t);
}

/* -------------------------------------------------------- subscriptions */

static void subscribe_details(void **state)
{
    struct fixture *f = *state;
    rbus_sub *s = NULL;
    rbus_sub_opts o;
    assert_detail(rbus_subscribe(NULL, "a", NULL, &s), -EINVAL, "rbus_subscribe: bus is NULL");
    assert_detail(rbus_subscribe(f->bus, "a", NULL, NULL), -EINVAL, "rbus_subscribe: out is NULL");

    rbus_sub_opts_init(&o);
    o.overflow = (rbus_overflow)3;
    assert_detail(rbus_subscribe(f->bus, "a", &o, &s), -EINVAL,
                  "rbus_subscribe: overflow 3 is none of RBUS_BLOCK, RBUS_DROP_OLDEST, "
                  "RBUS_DROP_NEWEST");
    o.overflow = (rbus_overflow)-1;
    assert_detail(rbus_subscribe(f->bus, "a", &o, &s), -EINVAL,
                  "rbus_subscribe: overflow -1 is none of RBUS_BLOCK, RBUS_DROP_OLDEST, "
                  "RBUS_DROP_NEWEST");

    rbus_sub_opts_init(&o);
    o.capacity = UINT32_C(2147483648);
    assert_detail(rbus_subscribe(f->bus, "a", &o, &s), -EINVAL,
                  "rbus_subscribe: capacity 2147483648 above RBUS_MAX_CAPACITY (1073741824)");
    o.capacity = RBUS_MAX_CAPACITY + 1;
    assert_detail(rbus_subscribe(f->bus, "a", &o, &s), -EINVAL,
                  "rbus_subscribe: capacity 1073741825 above RBUS_MAX_CAPACITY (1073741824)");
    /* a bad pattern is named before bad options */
    assert_detail(rbus_subscribe(f->bus, "", &o, &s), -EINVAL,
                  "rbus_subscribe: pattern '': is empty");

    rbus_sub_opts_init(&o);
    o.spin_ns = RBUS_MAX_SPIN_NS + 1;
    assert_detail(rbus_subscribe(f->bus, "a", &o, &s), -EINVAL,
                  "rbus_subscribe: spin_ns 1000000001 above RBUS_MAX_SPIN_NS (1000000000)");

    rbus_sub_opts_init(&o);
    char name[300], cut[80], want[256];
    memset(name, 'l', sizeof name);
    name[256] = '\0';
    o.name = name;
    cut_run(cut, sizeof cut, 'l');
    snprintf(want, sizeof want, "rbus_subscribe: name %s longer than 255 bytes", cut);
    assert_detail(rbus_subscribe(f->bus, "a", &o, &s), -EINVAL, want);
    assert_null(s);

    rbus_sub_opts_init(&o);
    o.max_bytes = 63;
    assert_detail(rbus_subscribe(f->bus, "a", &o, &s), -EINVAL,
                  "rbus_subscribe: max_bytes 63 below the bus's max_payload (64): a "
                  "message of max_payload could never be queued");
    assert_null(s);
}

static void handle_details(void **state)
{
    struct fixture *f = *state;
    assert_detail(rbus_sub_close(NULL), -EINVAL, "rbus_sub_close: sub is NULL");
    assert_detail(rbus_unsubscribe(NULL), -EINVAL, "rbus_unsubscribe: sub is NULL");
    assert_detail(rbus_sub_fd(NULL), -EINVAL, "rbus_sub_fd: sub is NULL");

    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(f->bus, "h", NULL, &s));
    assert_rbus_ok(rbus_unsubscribe(s));
    /* The handle's struct is kept until rbus_destroy: a second
     * unsubscribe finds it claimed. */
    assert_detail(rbus_unsubscribe(s), -EINVAL,
                  "rbus_unsubscribe: rbus_unsubscribe of the subscription has already begun");
}

/* ------------------------------------------------------------ publishing */

static void publish_details(void **state)
{
    struct fixture *f = *state;
    rbus_pub_opts po;
    char buf[128], key[300];
    memset(buf, 'p', sizeof buf);
    memset(key, 'k', sizeof key);

    assert_detail(rbus_publish(NULL, "a", 1), -EINVAL, "rbus_publish: topic is NULL");
    assert_detail(rbus_publish_ex(NULL, "a", 1, NULL, NULL), -EINVAL,
                  "rbus_publish_ex: topic is NULL");
    assert_detail(rbus_publish(f->topic, NULL, 5), -EINVAL,
                  "rbus_publish: data is NULL with len 5");
    assert_detail(rbus_publish_ex(f->topic, NULL, 7, NULL, NULL), -EINVAL,
                  "rbus_publish_ex: data is NULL with len 7");

    memset(&po, 0, sizeof po);
    po.key_len = 3;
    assert_detail(rbus_publish_ex(f->topic, "a", 1, &po, NULL), -EINVAL,
                  "rbus_publish_ex: key is NULL with key_len 3");
    po.key = key;
    po.key_len = 0;
    assert_detail(rbus_publish_ex(f->topic, "a", 1, &po, NULL), -EINVAL,
                  "rbus_publish_ex: key_len 0 outside 1..255");
    po.key_len = 300;
    assert_detail(rbus_publish_ex(f->topic, "a", 1, &po, NULL), -EINVAL,
                  "rbus_publish_ex: key_len 300 outside 1..255");
    po.key_len = SIZE_MAX;
    assert_detail(rbus_publish_ex(f->topic, "a", 1, &po, NULL), -EINVAL,
                  "rbus_publish_ex: key_len 18446744073709551615 outside 1..255");
    /* a bad key is named before an oversize payload */
    po.key_len = 256;
    assert_detail(rbus_publish_ex(f->topic, buf, sizeof buf, &po, NULL), -EINVAL,
                  "rbus_publish_ex: key_len 256 outside 1..255");

    memset(&po, 0, sizeof po);
    po.order_key_len = 1;
    assert_detail(rbus_publish_ex(f->topic, "a", 1, &po, NULL), -EINVAL,
                  "rbus_publish_ex: order_key is NULL with order_key_len 1");
    po.order_key = key;
    po.order_key_len = 0;
    assert_detail(rbus_publish_ex(f->topic, "a", 1, &po, NULL), -EINVAL,
                  "rbus_publish_ex: order_key_len 0 outside 1..255");
    po.order_key_len = 256;
    assert_detail(rbus_publish_ex(f->topic, "a", 1, &po, NULL), -EINVAL,
                  "rbus_publish_ex: order_key_len 256 outside 1..255");

    /* -EMSGSIZE with both sizes (max_payload is 64 here) */
    assert_detail(rbus_publish(f->topic, buf, 65), -EMSGSIZE,
                  "rbus_publish: len 65 above max_payload 64");
    assert_detail(rbus_publish_ex(f->topic, buf, sizeof buf, NULL, NULL), -EMSGSIZE,
                  "rbus_publish_ex: len 128 above max_payload 64");
}

/* -------------------------------------------------------------- receiving */

static void recv_details(void **state)
{
    struct fixture *f = *state;
    rbus_msg *m = NULL, *b[4];
    assert_detail(rbus_recv(NULL, &m, 0), -EINVAL, "rbus_recv: sub is NULL");
    assert_detail(rbus_recv(f->sub, NULL, 0), -EINVAL, "rbus_recv: out is NULL");
    assert_detail(rbus_recv_batch(NULL, b, 4, 0), -EINVAL, "rbus_recv_batch: sub is NULL");
    assert_detail(rbus_recv_batch(f->sub, NULL, 4, 0), -EINVAL, "rbus_recv_batch: out is NULL");
    assert_detail(rbus_recv_batch(f->sub, b, 0, 0), -EINVAL, "rbus_recv_batch: max is 0");

    /* An empty receive stores a pointer to a static text: nothing is
     * formatted, so the thread's buffer keeps the last formatted text. */
    assert_detail(rbus_publish_ex(NULL, "a", 1, NULL, NULL), -EINVAL,
                  "rbus_publish_ex: topic is NULL");
    const char *formatted = rbus_last_error_detail();
    assert_detail(rbus_recv(f->sub, &m, 0), -EAGAIN, "rbus_recv: no message queued (timeout 0)");
    const char *eagain = rbus_last_error_detail();
    assert_ptr_not_equal(eagain, formatted);
    assert_string_equal(formatted, "rbus_publish_ex: topic is NULL");
    assert_rbus_rc(rbus_recv(f->sub, &m, 0), -EAGAIN);
    assert_ptr_equal(rbus_last_error_detail(), eagain);
    assert_detail(rbus_recv_batch(f->sub, b, 4, 0), -EAGAIN,
                  "rbus_recv_batch: no message queued (timeout 0)");
    assert_detail(rbus_recv(f->sub, &m, 1000000), -ETIMEDOUT,
                  "rbus_recv: timed out, no message queued");
    assert_detail(rbus_recv_batch(f->sub, b, 4, 1000000), -ETIMEDOUT,
                  "rbus_recv_batch: timed out, no message queued");
    assert_string_equal(formatted, "rbus_publish_ex: topic is NULL");

    /* -ESHUTDOWN says which was closed */
    assert_rbus_ok(rbus_sub_close(f->sub));
    assert_detail(rbus_recv(f->sub, &m, 0), -ESHUTDOWN,
                  "rbus_recv: the subscription is closed and drained");
    assert_detail(rbus_recv_batch(f->sub, b, 4, -1), -ESHUTDOWN,
                  "rbus_recv_batch: the subscription is closed and drained");
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(f->bus, "r", NULL, &s));
    rbus_close(f->bus);
    assert_detail(rbus_recv(s, &m, -1), -ESHUTDOWN,
                  "rbus_recv: the bus is closed and the subscription drained");
    assert_detail(rbus_recv_batch(s, b, 4, 0), -ESHUTDOWN,
                  "rbus_recv_batch: the bus is closed and the subscription drained");
}

/* ------------------------------------------------------------ statistics */

static void stats_details(void **state)
{
    struct fixture *f = *state;
    rbus_sub_stats ss;
    rbus_topic_stats ts;
    char buf[16];
    assert_detail(rbus_sub_stats_get(NULL, &ss), -EINVAL, "rbus_sub_stats_get: sub is NULL");
    assert_detail(rbus_sub_stats_get(f->sub, NULL), -EINVAL, "rbus_sub_stats_get: out is NULL");
    assert_detail(rbus_topic_stats_get(NULL, &ts), -EINVAL, "rbus_topic_stats_get: topic is NULL");
    assert_detail(rbus_topic_stats_get(f->topic, NULL), -EINVAL,
                  "rbus_topic_stats_get: out is NULL");
    assert_detail(rbus_stats_prometheus(NULL, buf, sizeof buf), -EINVAL,
                  "rbus_stats_prometheus: bus is NULL");
    assert_detail(rbus_stats_prometheus(f->bus, NULL, 10), -EINVAL,
                  "rbus_stats_prometheus: buf is NULL with size 10");
    rbus_bus_stats bs;
    assert_detail(rbus_bus_stats_get(NULL, &bs), -EINVAL, "rbus_bus_stats_get: bus is NULL");
    assert_detail(rbus_bus_stats_get(f->bus, NULL), -EINVAL, "rbus_bus_stats_get: out is NULL");
}

/* -------------------------------------------------------------- handlers */

static int ok_handler(const rbus_msg *m, void *arg)
{
    (void)m;
    (void)arg;
    return 0;
}

struct in_handler {
    _Atomic(rbus_dispatcher *) d;
    atomic_int calls;
    int stop_rc;
    char at_start[256]; /* the detail as the handler found it */
    char after_stop[256];
};

static int stopping_handler(const rbus_msg *m, void *arg)
{
    (void)m;
    struct in_handler *h = arg;
    snprintf(h->at_start, sizeof h->at_start, "%s", rbus_last_error_detail());
    h->stop_rc = rbus_dispatch_stop(atomic_load(&h->d));
    snprintf(h->after_stop, sizeof h->after_stop, "%s", rbus_last_error_detail());
    atomic_fetch_add(&h->calls, 1);
    return 0;
}

static void dispatch_details(void **state)
{
    struct fixture *f = *state;
    rbus_dispatcher *d = NULL, *d2 = NULL;
    rbus_dispatch_opts o;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(f->bus, "orders.>", NULL, &s));

    assert_detail(rbus_dispatch_start(NULL, s, ok_handler, NULL, NULL), -EINVAL,
                  "rbus_dispatch_start: out is NULL");
    assert_detail(rbus_dispatch_start(&d, NULL, ok_handler, NULL, NULL), -EINVAL,
                  "rbus_dispatch_start: sub is NULL");
    assert_detail(rbus_dispatch_start(&d, s, NULL, NULL, NULL), -EINVAL,
                  "rbus_dispatch_start: fn is NULL");

    rbus_dispatch_opts_init(&o);
    o.threads = RBUS_MAX_DISPATCH_THREADS + 1;
    assert_detail(rbus_dispatch_start(&d, s, ok_handler, NULL, &o), -EINVAL,
                  "rbus_dispatch_start: threads 257 above RBUS_MAX_DISPATCH_THREADS (256)");
    rbus_dispatch_opts_init(&o);
    o.max_in_hand = RBUS_MAX_CAPACITY + 1;
    assert_detail(rbus_dispatch_start(&d, s, ok_handler, NULL, &o), -EINVAL,
                  "rbus_dispatch_start: max_in_hand 1073741825 above RBUS_MAX_CAPACITY "
                  "(1073741824)");
    rbus_dispatch_opts_init(&o);
    o.dead_letter_topic = "dead.*";
    assert_detail(rbus_dispatch_start(&d, s, ok_handler, NULL, &o), -EINVAL,
                  "rbus_dispatch_start: dead_letter_topic 'dead.*': wildcard '*' at offset 5 (a "
                  "topic name takes none)");
    o.dead_letter_topic = "dead..x";
    assert_detail(rbus_dispatch_start(&d, s, ok_handler, NULL, &o), -EINVAL,
                  "rbus_dispatch_start: dead_letter_topic 'dead..x': empty token at offset 5 "
                  "('..')");
    o.dead_letter_topic = "orders.dead";
    assert_detail(rbus_dispatch_start(&d, s, ok_handler, NULL, &o), -EINVAL,
                  "rbus_dispatch_start: dead_letter_topic 'orders.dead' is matched by the "
                  "subscription's own pattern 'orders.>' (its dead letters would loop)");
    assert_null(d);

    /* -EBUSY, both ways */
    struct in_handler h;
    memset(&h, 0, sizeof h);
    o.dead_letter_topic = "dead.letters";
    assert_rbus_ok(rbus_dispatch_start(&d, s, stopping_handler, &h, &o));
    atomic_store(&h.d, d);
    assert_detail(rbus_dispatch_start(&d2, s, ok_handler, NULL, NULL), -EBUSY,
                  "rbus_dispatch_start: the subscription already has a dispatcher");
    assert_detail(rbus_unsubscribe(s), -EBUSY,
                  "rbus_unsubscribe: a dispatcher runs on the subscription (rbus_dispatch_stop "
                  "it first)");
    rbus_dispatch_stats ds;
    assert_detail(rbus_dispatch_stats_get(NULL, &ds), -EINVAL,
                  "rbus_dispatch_stats_get: d is NULL");
    assert_detail(rbus_dispatch_stats_get(d, NULL), -EINVAL,
                  "rbus_dispatch_stats_get: out is NULL");

    /* The worker's receives time out every 10 ms meanwhile; the handler
     * still starts with an empty detail, and -EDEADLK is its own. */
    rbus_test_sleep_us(30000);
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open(f->bus, "orders.new", &t));
    assert_rbus_ok(rbus_publish(t, "x", 1));
    for (int i = 0; i < 10000 && atomic_load(&h.calls) == 0; i++)
        rbus_test_sleep_us(1000);
    assert_int_equal(atomic_load(&h.calls), 1);
    assert_string_equal(h.at_start, "");
    assert_rbus_rc(h.stop_rc, -EDEADLK);
    assert_string_equal(h.after_stop, "rbus_dispatch_stop: called from one of the dispatcher's "
                                      "own handlers (it would wait for itself)");

    assert_detail(rbus_dispatch_stop(NULL), -EINVAL, "rbus_dispatch_stop: d is NULL");
    assert_rbus_ok(rbus_dispatch_stop(d));
    /* The dispatcher's struct is kept until rbus_destroy. */
    assert_detail(rbus_dispatch_stop(d), -EINVAL,
                  "rbus_dispatch_stop: rbus_dispatch_stop or rbus_dispatch_drain was already "
                  "called on this dispatcher");
    assert_detail(rbus_dispatch_drain(d, 0, NULL), -EINVAL,
                  "rbus_dispatch_drain: rbus_dispatch_stop or rbus_dispatch_drain was already "
                  "called on this dispatcher");
    assert_detail(rbus_dispatch_drain(NULL, 0, NULL), -EINVAL, "rbus_dispatch_drain: d is NULL");
    assert_detail(rbus_dispatch_stats_get(d, &ds), -ESHUTDOWN,
                  "rbus_dispatch_stats_get: rbus_dispatch_stop has finished on this dispatcher");
    assert_rbus_ok(rbus_unsubscribe(s));
}

/* ------------------------------------------------- the other errno values */

static void closed_and_full_details(void **state)
{
    (void)state;
    rbus *bus = NULL;
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.max_topics = 2;
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *t = NULL, *t2 = NULL;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "a", &t));
    assert_rbus_ok(rbus_topic_open(bus, "b", &t2));
    assert_detail(rbus_topic_open(bus, "c", &t2), -ENOSPC,
                  "rbus_topic_open: new topic 'c': max_topics (2) reached");
    assert_detail(rbus_topic_open_ex(bus, "d", NULL, &t2), -ENOSPC,
                  "rbus_topic_open_ex: new topic 'd': max_topics (2) reached");
    assert_rbus_ok(rbus_topic_open(bus, "a", &t2)); /* an existing one is fine */
    assert_rbus_ok(rbus_subscribe(bus, "a", NULL, &s));
    rbus_dispatch_opts o;
    rbus_dispatch_opts_init(&o);
    o.dead_letter_topic = "dl";
    rbus_dispatcher *d = NULL;
    assert_detail(rbus_dispatch_start(&d, s, ok_handler, NULL, &o), -ENOSPC,
                  "rbus_dispatch_start: dead_letter_topic 'dl' could not be opened: max_topics "
                  "(2) reached");

    rbus_close(bus);
    assert_detail(rbus_publish(t, "x", 1), -ESHUTDOWN, "rbus_publish: the bus is closed");
    assert_detail(rbus_publish_ex(t, "x", 1, NULL, NULL), -ESHUTDOWN,
                  "rbus_publish_ex: the bus is closed");
    assert_detail(rbus_topic_open(bus, "a", &t2), -ESHUTDOWN, "rbus_topic_open: the bus is closed");
    assert_detail(rbus_topic_open_ex(bus, "a", NULL, &t2), -ESHUTDOWN,
                  "rbus_topic_open_ex: the bus is closed");
    rbus_sub *s2 = NULL;
    assert_detail(rbus_subscribe(bus, "a", NULL, &s2), -ESHUTDOWN,
                  "rbus_subscribe: the bus is closed");
    assert_detail(rbus_dispatch_start(&d, s, ok_handler, NULL, NULL), -ESHUTDOWN,
                  "rbus_dispatch_start: the bus is closed");
    /* argument errors still come first on a closed bus */
    assert_detail(rbus_publish(t, NULL, 3), -EINVAL, "rbus_publish: data is NULL with len 3");
    rbus_destroy(bus);
}

struct blocked_pub {
    rbus_topic *t;
    int rc;
    char detail[256];
};

static void *blocked_publisher(void *arg)
{
    struct blocked_pub *p = arg;
    p->rc = rbus_publish(p->t, "late", 4);
    snprintf(p->detail, sizeof p->detail, "%s", rbus_last_error_detail());
    return NULL;
}

static void close_while_waiting_detail(void **state)
{
    (void)state;
    rbus *bus = NULL;
    assert_rbus_ok(rbus_create(&bus, NULL));
    rbus_topic *t = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "w", &t));
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.capacity = 2;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_subscribe(bus, "w", &so, &s));
    assert_rbus_ok(rbus_publish(t, "1", 1));
    assert_rbus_ok(rbus_publish(t, "2", 1));
    struct blocked_pub p = {.t = t};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, blocked_publisher, &p), 0);
    rbus_sub_stats st;
    for (int i = 0; i < 10000; i++) {
        assert_rbus_ok(rbus_sub_stats_get(s, &st));
        if (st.publisher_waits)
            break;
        rbus_test_sleep_us(1000);
    }
    assert_int_equal(st.publisher_waits, 1);
    rbus_close(bus);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_rbus_rc(p.rc, -ESHUTDOWN);
    assert_string_equal(p.detail, "rbus_publish: the bus was closed while this publish waited "
                                  "for room; it was accepted and queued for 0 of 1 "
                                  "subscriptions");
    rbus_msg *b[4];
    assert_int_equal(rbus_recv_batch(s, b, 4, 0), 2);
    rbus_msg_release(b[0]);
    rbus_msg_release(b[1]);
    rbus_destroy(bus);
}

struct starved {
    rbus_topic *t;
    int rc;
    char detail[256];
};

static void *starved_publisher(void *arg)
{
    struct starved *p = arg;
    p->rc = rbus_publish(p->t, "x", 1);
    snprintf(p->detail, sizeof p->detail, "%s", rbus_last_error_detail());
    return NULL;
}

static void out_of_memory_details(void **state)
{
    (void)state;
    struct rbus_test_alloc cnt;
    rbus_test_alloc_init(&cnt);
    rbus_config cfg;
    rbus_config_init(&cfg);
    cfg.allocator = &cnt.hooks;
    rbus *bus = NULL;
    atomic_store(&cnt.budget, 0);
    assert_detail_has(rbus_create(&bus, &cfg), -ENOMEM, "rbus_create: out of memory for the bus (");
    atomic_store(&cnt.budget, -1);
    assert_rbus_ok(rbus_create(&bus, &cfg));
    rbus_topic *t = NULL;
    rbus_sub *s = NULL;
    assert_rbus_ok(rbus_topic_open(bus, "n.t", &t));
    assert_rbus_ok(rbus_subscribe(bus, "m", NULL, &s));
    /* This thread's state and a small message in its cache, before the
     * allocator runs dry. */
    assert_rbus_ok(rbus_publish(t, "x", 1));

    atomic_store(&cnt.budget, 0);
    rbus_topic *t2 = NULL;
    assert_detail(rbus_topic_open(bus, "n.new", &t2), -ENOMEM,
                  "rbus_topic_open: out of memory for the topic 'n.new'");
    rbus_topic_opts to;
    rbus_topic_opts_init(&to);
    to.keyed = true;
    assert_detail(rbus_topic_open_ex(bus, "n.keyed", &to, &t2), -ENOMEM,
                  "rbus_topic_open_ex: out of memory for the key window of 'n.keyed' (dedup_keys "
                  "4096)");
    rbus_sub *s2 = NULL;
    assert_detail(rbus_subscribe(bus, "n.>", NULL, &s2), -ENOMEM,
                  "rbus_subscribe: out of memory for the subscription");
    static char big[60000];
    assert_detail(rbus_publish(t, big, sizeof big), -ENOMEM,
                  "rbus_publish: out of memory for a message of 60000 bytes (payload and keys)");
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.key = "k";
    po.key_len = 1;
    assert_detail(rbus_publish_ex(t, "x", 1, &po, NULL), -ENOMEM,
                  "rbus_publish_ex: out of memory for the key window of 'n.t' (dedup_keys 4096)");
    rbus_dispatcher *d = NULL;
    assert_detail(rbus_dispatch_start(&d, s, ok_handler, NULL, NULL), -ENOMEM,
                  "rbus_dispatch_start: out of memory for the dispatcher");
    /* A thread that never published on the bus needs a state first. */
    struct starved p = {.t = t};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, starved_publisher, &p), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_rbus_rc(p.rc, -ENOMEM);
    assert_string_equal(p.detail, "rbus_publish: out of memory for this thread's state on the bus");

    /* Later allocations of a subscribe and a dispatch start: the struct
     * comes, then the ring, the pattern's copy, the lists of the topics it
     * matches (n.t); the dispatcher, then its tables. */
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.capacity = 100;
    atomic_store(&cnt.budget, 1);
    assert_detail(rbus_subscribe(bus, "n.>", &so, &s2), -ENOMEM,
                  "rbus_subscribe: out of memory for a ring of 128 slots");
    atomic_store(&cnt.budget, 2);
    assert_detail(rbus_subscribe(bus, "n.>", &so, &s2), -ENOMEM,
                  "rbus_subscribe: out of memory for a copy of the pattern or name");
    atomic_store(&cnt.budget, 3);
    assert_detail(rbus_subscribe(bus, "n.>", &so, &s2), -ENOMEM,
                  "rbus_subscribe: out of memory for the subscription lists of its topics");
    assert_null(s2);
    rbus_dispatch_opts dopts;
    rbus_dispatch_opts_init(&dopts);
    dopts.threads = 3;
    dopts.max_in_hand = 50;
    atomic_store(&cnt.budget, 1);
    assert_detail(rbus_dispatch_start(&d, s, ok_handler, NULL, &dopts), -ENOMEM,
                  "rbus_dispatch_start: out of memory for the dispatcher's tables (max_in_hand "
                  "50, threads 3)");
    assert_null(d);

    atomic_store(&cnt.budget, -1);
    rbus_destroy(bus);
    rbus_test_alloc_assert_all_returned(&cnt);
}

static void sub_fd_detail(void **state)
{
    struct fixture *f = *state;
    /* No descriptor left for the eventfd: the errno's own text. */
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    struct rlimit none = {.rlim_cur = 0, .rlim_max = old.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &none) != 0)
        skip();
    poison("rbus_sub_fd");
    int rc = rbus_sub_fd(f->sub);
    char seen[256];
    snprintf(seen, sizeof seen, "%s", rbus_last_error_detail());
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    assert_rbus_rc(rc, -EMFILE);
    assert_string_equal(seen, "rbus_sub_fd: eventfd failed: too many open files");
    assert_true(rbus_sub_fd(f->sub) >= 0);
}

/* ------------------------------------------------------ errno-like rules */

#define assert_unchanged(text, ptr)                            \
    do {                                                       \
        assert_ptr_equal(rbus_last_error_detail(), (ptr));     \
        assert_string_equal(rbus_last_error_detail(), (text)); \
    } while (0)

static void success_leaves_detail_unchanged(void **state)
{
    (void)state;
    const char *want;
    rbus *bus = NULL;
    rbus_sub *s = NULL;
    /* a formatted text, then a static one: both must survive success */
    for (int round = 0; round < 2; round++) {
        if (round == 0) {
            rbus *tmp = NULL;
            assert_rbus_ok(rbus_create(&tmp, NULL));
            assert_rbus_rc(rbus_subscribe(tmp, "a..b", NULL, &s), -EINVAL);
            rbus_destroy(tmp);
            want = "rbus_subscribe: pattern 'a..b': empty token at offset 2 ('..')";
        } else {
            assert_rbus_rc(rbus_recv(NULL, NULL, 0), -EINVAL);
            want = "rbus_recv: sub is NULL";
        }
        const char *ptr = rbus_last_error_detail();
        assert_string_equal(ptr, want);

        assert_rbus_ok(rbus_create(&bus, NULL));
        assert_unchanged(want, ptr);
        rbus_topic *t = NULL;
        rbus_topic_opts to;
        rbus_topic_opts_init(&to);
        to.keyed = true;
        assert_rbus_ok(rbus_topic_open(bus, "s.t", &t));
        assert_rbus_ok(rbus_topic_open_ex(bus, "s.k", &to, &t));
        assert_unchanged(want, ptr);
        assert_rbus_ok(rbus_subscribe(bus, "s.>", NULL, &s));
        assert_true(rbus_sub_fd(s) >= 0);
        assert_unchanged(want, ptr);
        rbus_pub_opts po;
        memset(&po, 0, sizeof po);
        po.key = "key";
        po.key_len = 3;
        rbus_pub_result r;
        assert_rbus_ok(rbus_publish_ex(t, "1", 1, &po, &r));
        assert_rbus_rc(rbus_publish_ex(t, "1", 1, &po, &r), RBUS_DUPLICATE);
        assert_rbus_ok(rbus_publish(t, "2", 1));
        assert_unchanged(want, ptr);
        rbus_msg *m = NULL, *b[4];
        assert_rbus_ok(rbus_recv(s, &m, 0));
        rbus_msg_release(m);
        assert_int_equal(rbus_recv_batch(s, b, 4, 0), 1);
        rbus_msg_release(b[0]);
        assert_unchanged(want, ptr);
        rbus_sub_stats ss;
        rbus_topic_stats ts;
        assert_rbus_ok(rbus_sub_stats_get(s, &ss));
        assert_rbus_ok(rbus_topic_stats_get(t, &ts));
        assert_true(rbus_stats_prometheus(bus, NULL, 0) > 0);
        assert_unchanged(want, ptr);
        rbus_dispatcher *d = NULL;
        rbus_dispatch_stats ds;
        assert_rbus_ok(rbus_dispatch_start(&d, s, ok_handler, NULL, NULL));
        assert_rbus_ok(rbus_dispatch_stats_get(d, &ds));
        assert_rbus_ok(rbus_dispatch_stop(d));
        assert_unchanged(want, ptr);
        /* the bool functions are not errno calls, invalid input or not */
        assert_false(rbus_topic_valid("a..b"));
        assert_false(rbus_pattern_valid(NULL));
        assert_false(rbus_pattern_match("a.*", "a..b"));
        assert_non_null(rbus_strerror(-EINVAL));
        assert_unchanged(want, ptr);
        assert_rbus_ok(rbus_sub_close(s));
        assert_rbus_ok(rbus_unsubscribe(s));
        rbus_close(bus);
        rbus_destroy(bus);
        assert_unchanged(want, ptr);
    }
}

struct peek {
    const char *detail;
    bool was_null;
    char copy[256];
};

static void *peek_detail(void *arg)
{
    struct peek *p = arg;
    p->detail = rbus_last_error_detail();
    p->was_null = p->detail == NULL;
    snprintf(p->copy, sizeof p->copy, "%s", p->detail ? p->detail : "(null)");
    return NULL;
}

static void fresh_thread_sees_empty_detail(void **state)
{
    (void)state;
    assert_rbus_rc(rbus_create(NULL, NULL), -EINVAL);
    assert_string_equal(rbus_last_error_detail(), "rbus_create: out is NULL");
    struct peek p;
    memset(&p, 0, sizeof p);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, peek_detail, &p), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_false(p.was_null);
    assert_string_equal(p.copy, "");
    assert_string_equal(rbus_last_error_detail(), "rbus_create: out is NULL");
}

struct twin {
    pthread_barrier_t *barrier;
    rbus *bus;
    int which;
    int rc;
    const char *ptr;
    char after[256]; /* read after both threads failed */
};

static void *twin_main(void *arg)
{
    struct twin *w = arg;
    rbus_sub *s = NULL;
    pthread_barrier_wait(w->barrier);
    if (w->which == 0)
        w->rc = rbus_subscribe(w->bus, "left..x", NULL, &s);
    else
        w->rc = rbus_publish(NULL, "r", 1);
    /* Both have failed before either reads. */
    pthread_barrier_wait(w->barrier);
    w->ptr = rbus_last_error_detail();
    snprintf(w->after, sizeof w->after, "%s", w->ptr);
    pthread_barrier_wait(w->barrier);
    return NULL;
}

static void each_thread_has_its_own_detail(void **state)
{
    struct fixture *f = *state;
    pthread_barrier_t barrier;
    assert_int_equal(pthread_barrier_init(&barrier, NULL, 2), 0);
    for (int round = 0; round < 20; round++) {
        struct twin w[2] = {{.barrier = &barrier, .bus = f->bus, .which = 0},
                            {.barrier = &barrier, .bus = f->bus, .which = 1}};
        pthread_t th[2];
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_create(&th[i], NULL, twin_main, &w[i]), 0);
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_rbus_rc(w[0].rc, -EINVAL);
        assert_rbus_rc(w[1].rc, -EINVAL);
        assert_string_equal(w[0].after,
                            "rbus_subscribe: pattern 'left..x': empty token at offset 5 ('..')");
        assert_string_equal(w[1].after, "rbus_publish: topic is NULL");
        assert_ptr_not_equal(w[0].ptr, w[1].ptr);
    }
    pthread_barrier_destroy(&barrier);
}

static void long_bad_input_is_cut_safely(void **state)
{
    struct fixture *f = *state;
    rbus_sub *s = NULL;
    char want[256], cut[80];

    /* Far over the limit, every byte a control character: each becomes
     * \x01, and the quote stops well inside the buffer. */
    static char huge[20000];
    memset(huge, 0x01, sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    poison("rbus_subscribe");
    assert_rbus_rc(rbus_subscribe(f->bus, huge, NULL, &s), -EINVAL);
    const char *d = rbus_last_error_detail();
    assert_detail_sane(d);
    snprintf(want, sizeof want,
             "rbus_subscribe: pattern '%s'...: longer than "
             "RBUS_MAX_TOPIC_LEN (255 bytes)",
             "\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01");
    assert_string_equal(d, want);

    /* Within the limit, the rule broken far past the part shown. */
    char mid[220];
    memset(mid, 'm', sizeof mid);
    memcpy(mid + 200, ".>.x", 5);
    cut_run(cut, sizeof cut, 'm');
    snprintf(want, sizeof want,
             "rbus_subscribe: pattern %s: '>' must be the last token (offset "
             "201)",
             cut);
    assert_detail(rbus_subscribe(f->bus, mid, NULL, &s), -EINVAL, want);

    /* Quotes and backslashes, escaped, cut between two escapes. */
    char esc[240];
    for (size_t i = 0; i + 1 < sizeof esc; i++)
        esc[i] = i % 2 ? '\\' : '\'';
    esc[sizeof esc - 1] = '\0';
    esc[100] = ' ';
    assert_detail_has(rbus_subscribe(f->bus, esc, NULL, &s), -EINVAL,
                      "rbus_subscribe: pattern '\\'\\\\\\'\\\\");
    assert_detail_has(rbus_subscribe(f->bus, esc, NULL, &s), -EINVAL,
                      "'...: whitespace 0x20 at offset 100");

    /* Two long strings in one text: it stays within the buffer. */
    char dl[250], wp[250];
    memset(dl, 'd', sizeof dl);
    memcpy(dl + 200, ".dead", 6);
    memset(wp, 'd', sizeof wp);
    memcpy(wp + 200, ".>", 3);
    rbus_sub *wide = NULL;
    assert_rbus_ok(rbus_subscribe(f->bus, wp, NULL, &wide));
    rbus_dispatch_opts o;
    rbus_dispatch_opts_init(&o);
    o.dead_letter_topic = dl;
    rbus_dispatcher *disp = NULL;
    assert_detail_has(rbus_dispatch_start(&disp, wide, ok_handler, NULL, &o), -EINVAL,
                      "rbus_dispatch_start: dead_letter_topic 'ddd");
    assert_rbus_ok(rbus_unsubscribe(wide));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(create_details),
        cmocka_unit_test_setup_teardown(pattern_reasons, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(topic_open_details, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(subscribe_details, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(handle_details, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(publish_details, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(recv_details, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(stats_details, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(dispatch_details, fx_setup, fx_teardown),
        cmocka_unit_test(closed_and_full_details),
        cmocka_unit_test(close_while_waiting_detail),
        cmocka_unit_test(out_of_memory_details),
        cmocka_unit_test_setup_teardown(sub_fd_detail, fx_setup, fx_teardown),
        cmocka_unit_test(success_leaves_detail_unchanged),
        cmocka_unit_test(fresh_thread_sees_empty_detail),
        cmocka_unit_test_setup_teardown(each_thread_has_its_own_detail, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(long_bad_input_is_cut_safely, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
