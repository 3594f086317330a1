/*
 * tracing.c - a W3C traceparent carried from a publisher through a
 * dispatcher's handler to the next hop: the handler reads the trace
 * context from the message's headers and passes it on with what it
 * publishes, so a trace follows the request across the asynchronous hop.
 * (A real service would start a span where the comments say so.)
 */
#include <ringbus.h>

#include <stdio.h>
#include <string.h>

/* The handler of "orders.created": work, then publish "orders.billed" with
 * the same trace id, under a new span id of its own. */
static int bill(const rbus_msg *m, void *arg)
{
    rbus_topic *billed = arg;
    const void *tp;
    size_t len;
    if (rbus_msg_header(m, "traceparent", &tp, &len) != 0 || len != 55)
        return 0; /* not traced: nothing to carry */
    /* version-traceid-parentid-flags: keep the trace id and the flags, put
     * our span id (here a fixed one) in the middle. */
    char next[56];
    memcpy(next, tp, 55);
    memcpy(next + 36, "b7ad6b7169203331", 16);
    next[55] = '\0';
    printf("bill: order %.*s in trace %.32s\n", (int)rbus_msg_size(m),
           (const char *)rbus_msg_data(m), next + 3);
    rbus_header h = {"traceparent", next, 55};
    rbus_pub_opts po = {.headers = &h, .header_count = 1};
    return rbus_publish_ex(billed, rbus_msg_data(m), rbus_msg_size(m), &po, NULL);
}

int main(void)
{
    rbus *bus;
    rbus_topic *created, *billed;
    rbus_sub *orders, *audit;
    rbus_dispatcher *d;
    if (rbus_create(&bus, NULL) || rbus_topic_open(bus, "orders.created", &created) ||
        rbus_topic_open(bus, "orders.billed", &billed) ||
        rbus_subscribe(bus, "orders.created", NULL, &orders) ||
        rbus_subscribe(bus, "orders.billed", NULL, &audit) ||
        rbus_dispatch_start(&d, orders, bill, billed, NULL)) {
        fprintf(stderr, "setup: %s\n", rbus_last_error_detail());
        return 1;
    }

    /* The publisher's request is part of trace 4bf9...4736. */
    static const char tp[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    rbus_header h = {"traceparent", tp, sizeof tp - 1};
    rbus_pub_opts po = {.headers = &h, .header_count = 1};
    if (rbus_publish_ex(created, "A-1001", 6, &po, NULL) != 0)
        return 1;

    /* Downstream, the billed message carries the same trace id. */
    rbus_msg *m;
    if (rbus_recv(audit, &m, INT64_C(5000000000)) != 0)
        return 1;
    const void *got;
    size_t len;
    int rc = rbus_msg_header(m, "traceparent", &got, &len);
    printf("audit: %.*s billed, traceparent %s\n", (int)rbus_msg_size(m),
           (const char *)rbus_msg_data(m), rc == 0 ? (const char *)got : "(none)");
    bool same_trace = rc == 0 && len == 55 && memcmp(got, tp, 36) == 0;
    rbus_msg_release(m);

    rbus_dispatch_drain(d, INT64_C(5000000000), NULL);
    rbus_unsubscribe(orders);
    rbus_unsubscribe(audit);
    rbus_destroy(bus);
    return same_trace ? 0 : 1;
}
