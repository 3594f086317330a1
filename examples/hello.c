/* hello.c - the smallest complete ringbus program: one topic, one
 * subscription, one message, clean shutdown. */
#include <ringbus.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    rbus *bus;
    rbus_topic *topic;
    rbus_sub *sub;
    int rc;

    if ((rc = rbus_create(&bus, NULL)) != 0) {
        fprintf(stderr, "rbus_create: %s\n", rbus_strerror(rc));
        return 1;
    }
    rbus_sub_opts opts;
    rbus_sub_opts_init(&opts);
    opts.capacity = 64;
    opts.overflow = RBUS_DROP_OLDEST;
    if ((rc = rbus_subscribe(bus, "orders.>", &opts, &sub)) != 0 ||
        (rc = rbus_topic_open(bus, "orders.created", &topic)) != 0) {
        fprintf(stderr, "setup: %s\n", rbus_strerror(rc));
        rbus_destroy(bus);
        return 1;
    }

    const char *text = "order 42";
    rc = rbus_publish(topic, text, strlen(text));
    if (rc != 0) {
        fprintf(stderr, "publish: %s\n", rbus_strerror(rc));
        rbus_destroy(bus);
        return 1;
    }

    rbus_msg *msg;
    rc = rbus_recv(sub, &msg, 1000000000); /* wait up to 1 s */
    if (rc == 0) {
        printf("%s #%llu: %.*s\n", rbus_msg_topic(msg), (unsigned long long)rbus_msg_seq(msg),
               (int)rbus_msg_size(msg), (const char *)rbus_msg_data(msg));
        rbus_msg_release(msg);
    } else {
        fprintf(stderr, "recv: %s\n", rbus_strerror(rc));
    }
    rbus_destroy(bus);
    return rc == 0 ? 0 : 1;
}
