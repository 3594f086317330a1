/* consumer.c - a program built out of tree against an installed ringbus:
 * one message through a bus, and the header agrees with the library. */
#include <ringbus.h>

#include <stdio.h>
#include <string.h>

/* The build says which library it links; the static one must come with
 * RBUS_STATIC_DEFINE (from the CMake target or `pkg-config --static`). */
#if defined(CONSUMER_STATIC) != defined(RBUS_STATIC_DEFINE)
#error "RBUS_STATIC_DEFINE does not match the library this consumer links"
#endif

#define STR_(x) #x
#define STR(x) STR_(x)
#define HEADER_VERSION STR(RBUS_VERSION_MAJOR) "." STR(RBUS_VERSION_MINOR) "." STR(RBUS_VERSION_PATCH)

static int fail(const char *what, int rc)
{
    fprintf(stderr, "consumer: %s: %s\n", what, rbus_strerror(rc));
    return 1;
}

int main(void)
{
    rbus *bus = NULL;
    rbus_topic *topic = NULL;
    rbus_sub *sub = NULL;
    rbus_msg *msg = NULL;
    const char text[] = "installed";
    int rc, same;

    if (strcmp(rbus_version(), HEADER_VERSION) != 0) {
        fprintf(stderr, "consumer: library %s, header %s\n", rbus_version(), HEADER_VERSION);
        return 1;
    }
    if ((rc = rbus_create(&bus, NULL)) != 0)
        return fail("rbus_create", rc);
    if ((rc = rbus_subscribe(bus, "install.>", NULL, &sub)) != 0 ||
        (rc = rbus_topic_open(bus, "install.check", &topic)) != 0 ||
        (rc = rbus_publish(topic, text, sizeof text)) != 0 ||
        (rc = rbus_recv(sub, &msg, 1000000000)) != 0) {
        rbus_destroy(bus);
        return fail("round trip", rc);
    }
    same = rbus_msg_size(msg) == sizeof text && memcmp(rbus_msg_data(msg), text, sizeof text) == 0;
    rbus_msg_release(msg);
    rbus_destroy(bus);
    if (!same) {
        fprintf(stderr, "consumer: the message came back changed\n");
        return 1;
    }
    printf("consumer: ringbus %s, one message round-tripped\n", rbus_version());
    return 0;
}
