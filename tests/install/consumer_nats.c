/* A consumer of the installed NATS bridge (ringbus::nats): it links, its
 * header works, and a start against a port nobody listens on fails at once
 * with -ECONNREFUSED (no server needed). */
#include <ringbus_nats.h>

#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: consumer_nats URL-with-a-closed-port\n");
        return 2;
    }
    rbus *bus = NULL;
    if (rbus_create(&bus, NULL) != 0)
        return 1;
    rbus_nats_opts o;
    rbus_nats_opts_init(&o);
    o.url = argv[1];
    o.export_pattern = "consumer.>";
    char err[256];
    rbus_nats *bridge = NULL;
    int rc = rbus_nats_start(&bridge, bus, &o, err, sizeof err);
    printf("consumer_nats: rbus_nats_start -> %d (%s): %s\n", rc, rbus_strerror(rc), err);
    rbus_destroy(bus);
    return rc == -ECONNREFUSED && bridge == NULL ? 0 : 1;
}
