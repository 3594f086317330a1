/*
 * order_pipeline.c - modules of one process wired by topic.
 *
 *  - the order service publishes `orders.created` (idempotency key = order
 *    id, so a retried request is delivered once; order key = customer id)
 *    and `orders.shipped`;
 *  - inventory receives `orders.created` in its own thread (block policy:
 *    it must see every order);
 *  - email is called by a dispatcher: two workers, per-customer order,
 *    retries with backoff for a flaky mail server, and a dead-letter topic
 *    for mail that cannot be sent;
 *  - metrics counts everything under `orders.>` (drop-oldest: metrics must
 *    never slow the business down), dead letters included;
 *  - an auditor reads the dead letters, with where and how often they
 *    failed.
 *
 * Prints what each module saw; exits 1 if a count is not what the
 * pipeline promises.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <ringbus.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ORDERS 12

struct order {
    unsigned id;
    char customer[16];
    unsigned amount;
};

/* --------------------------------------------------------- inventory */

static void *inventory_main(void *arg)
{
    rbus_sub *sub = arg;
    unsigned reserved = 0;
    rbus_msg *m;
    while (rbus_recv(sub, &m, -1) == 0) { /* -ESHUTDOWN once closed and drained */
        struct order o;
        memcpy(&o, rbus_msg_data(m), sizeof o);
        reserved++;
        rbus_msg_release(m);
    }
    printf("inventory: reserved stock for %u orders\n", reserved);
    return (void *)(uintptr_t)reserved;
}

/* ------------------------------------------------------------- email */

struct mailer {
    _Atomic unsigned sent, attempts;
};

/* The mail server refuses the first attempt for every third order, and
 * always refuses the customer "bounce". */
static int send_mail(const rbus_msg *m, void *arg)
{
    struct mailer *ml = arg;
    struct order o;
    memcpy(&o, rbus_msg_data(m), sizeof o);
    atomic_fetch_add(&ml->attempts, 1);
    if (!strcmp(o.customer, "bounce") || (o.id % 3 == 0 && rbus_msg_attempt(m) == 1))
        return -1;
    atomic_fetch_add(&ml->sent, 1);
    return 0;
}

/* ----------------------------------------------------------- metrics */

static void *metrics_main(void *arg)
{
    rbus_sub *sub = arg;
    unsigned created = 0, shipped = 0, dead = 0;
    rbus_msg *batch[32];
    int n;
    while ((n = rbus_recv_batch(sub, batch, 32, -1)) > 0) {
        for (int i = 0; i < n; i++) {
            const char *topic = rbus_msg_topic(batch[i]);
            if (!strcmp(topic, "orders.created"))
                created++;
            else if (!strcmp(topic, "orders.shipped"))
                shipped++;
            else if (!strcmp(topic, "orders.dead"))
                dead++;
            rbus_msg_release(batch[i]);
        }
    }
    printf("metrics: orders.created %u, orders.shipped %u, orders.dead %u\n", created, shipped,
           dead);
    return (void *)(uintptr_t)(created * 10000 + shipped * 100 + dead);
}

/* ----------------------------------------------------------- auditor */

static unsigned audit(rbus_sub *dead)
{
    unsigned n = 0;
    rbus_msg *m;
    while (rbus_recv(dead, &m, 0) == 0) {
        struct order o;
        memcpy(&o, rbus_msg_data(m), sizeof o);
        size_t klen;
        const char *key = rbus_msg_key(m, &klen);
        printf("auditor: dead letter: order %u (key %.*s) for %s failed on %s after %u "
               "attempts\n",
               o.id, (int)klen, key, o.customer, rbus_msg_origin_topic(m), rbus_msg_attempt(m));
        n++;
        rbus_msg_release(m);
    }
    return n;
}

/* ------------------------------------------------------ order service */

static int publish_order(rbus_topic *created, const struct order *o)
{
    char id[16];
    snprintf(id, sizeof id, "order-%u", o->id);
    rbus_pub_opts po;
    memset(&po, 0, sizeof po);
    po.key = id; /* a retried request with the same id is suppressed */
    po.key_len = strlen(id);
    po.order_key = o->customer; /* one customer's mails go out in order */
    po.order_key_len = strlen(o->customer);
    return rbus_publish_ex(created, o, sizeof *o, &po, NULL);
}

static rbus_sub *subscribe(rbus *bus, const char *pattern, rbus_overflow policy,
                           const char *name)
{
    rbus_sub_opts so;
    rbus_sub_opts_init(&so);
    so.overflow = policy;
    so.name = name;
    rbus_sub *s = NULL;
    int rc = rbus_subscribe(bus, pattern, &so, &s);
    if (rc) {
        fprintf(stderr, "subscribe %s: %s\n", pattern, rbus_strerror(rc));
        exit(1);
    }
    return s;
}

int main(void)
{
    rbus *bus;
    rbus_topic *created, *shipped;
    /* Declared keyed: its idempotency window is built now, not by the
     * first keyed publish. */
    rbus_topic_opts keyed;
    rbus_topic_opts_init(&keyed);
    keyed.keyed = true;
    if (rbus_create(&bus, NULL) || rbus_topic_open_ex(bus, "orders.created", &keyed, &created) ||
        rbus_topic_open(bus, "orders.shipped", &shipped))
        return 1;

    rbus_sub *inventory = subscribe(bus, "orders.created", RBUS_BLOCK, "inventory");
    rbus_sub *email = subscribe(bus, "orders.created", RBUS_BLOCK, "email");
    rbus_sub *metrics = subscribe(bus, "orders.>", RBUS_DROP_OLDEST, "metrics");
    rbus_sub *dead = subscribe(bus, "orders.dead", RBUS_BLOCK, "auditor");

    pthread_t inv_th, met_th;
    pthread_create(&inv_th, NULL, inventory_main, inventory);
    pthread_create(&met_th, NULL, metrics_main, metrics);

    struct mailer mailer = {0};
    rbus_dispatch_opts dopts;
    rbus_dispatch_opts_init(&dopts);
    dopts.threads = 2;
    dopts.ordered_by_key = true;
    dopts.max_attempts = 3;
    dopts.backoff_initial_ns = 1000000; /* 1 ms, 2 ms, ... */
    dopts.backoff_max_ns = 10000000;
    dopts.dead_letter_topic = "orders.dead";
    rbus_dispatcher *mail_dispatcher;
    int rc = rbus_dispatch_start(&mail_dispatcher, email, send_mail, &mailer, &dopts);
    if (rc) {
        fprintf(stderr, "dispatch: %s\n", rbus_strerror(rc));
        return 1;
    }

    static const char *const customers[] = {"ada", "grace", "bounce", "linus"};
    unsigned accepted = 0, duplicates = 0, bounced = 0;
    for (unsigned i = 1; i <= ORDERS; i++) {
        struct order o = {.id = i, .amount = 10 * i};
        snprintf(o.customer, sizeof o.customer, "%s", customers[i % 4]);
        rc = publish_order(created, &o);
        accepted += rc == 0;
        bounced += rc == 0 && !strcmp(o.customer, "bounce");
        if (i == 5) {
            /* The web tier timed out and retried order 5: same id. */
            rc = publish_order(created, &o);
            printf("order service: order 5 sent again: %s\n",
                   rc == RBUS_DUPLICATE ? "suppressed as a duplicate" : rbus_strerror(rc));
            duplicates += rc == RBUS_DUPLICATE;
        }
        if (i % 2 == 0)
            rbus_publish(shipped, &o, sizeof o);
    }
    printf("order service: %u orders accepted, %u duplicate suppressed\n", accepted, duplicates);

    /* Drain mail first: it handles every order queued for it, retries
     * included, so every dead letter is published before we close. */
    rbus_dispatch_stats mail;
    rc = rbus_dispatch_drain(mail_dispatcher, 10 * INT64_C(1000000000), &mail);
    if (rc)
        fprintf(stderr, "drain: %s\n", rbus_strerror(rc));
    rbus_close(bus); /* the receivers drain what is queued, then stop */
    void *inv_ret, *met_ret;
    pthread_join(inv_th, &inv_ret);
    pthread_join(met_th, &met_ret);
    printf("email: %u sent, %u attempts, %llu dead letters\n", atomic_load(&mailer.sent),
           atomic_load(&mailer.attempts), (unsigned long long)mail.dead_lettered);
    unsigned dead_letters = audit(dead);

    unsigned reserved = (unsigned)(uintptr_t)inv_ret;
    unsigned m = (unsigned)(uintptr_t)met_ret;
    bool ok = rc == 0 && mail.dead_lettered == bounced && accepted == ORDERS && duplicates == 1 &&
              reserved == ORDERS && atomic_load(&mailer.sent) == ORDERS - bounced &&
              dead_letters == bounced && m / 10000 == ORDERS && m / 100 % 100 == ORDERS / 2 &&
              m % 100 == bounced;
    printf("%s\n", ok ? "pipeline: every count as expected" : "pipeline: UNEXPECTED COUNTS");
    rbus_unsubscribe(inventory);
    rbus_unsubscribe(email);
    rbus_unsubscribe(metrics);
    rbus_unsubscribe(dead);
    rbus_destroy(bus);
    return ok ? 0 : 1;
}
