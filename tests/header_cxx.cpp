// The public header compiles as C++ (extern "C" linkage), as servers that
// embed ringbus are often C++.
#include "ringbus.h"
// The bridge's header too (it includes no cnats header, so it compiles
// whether or not libnats is installed; nothing here links the bridge).
#include "ringbus_nats.h"

#include <cstdio>
#include <cstring>
#include <memory>

int main()
{
    rbus_nats_opts nats_opts = rbus_nats_opts();
    rbus_nats_stats nats_stats = rbus_nats_stats();
    if (nats_opts.mode != RBUS_NATS_CORE || nats_stats.connected)
        return 1;
    // The detail text is a plain C string in C++ too.
    if (rbus_create(nullptr, nullptr) != -EINVAL ||
        std::strcmp(rbus_last_error_detail(), "rbus_create: out is NULL") != 0)
        return 1;
    rbus *raw = nullptr;
    if (rbus_create(&raw, nullptr) != 0)
        return 1;
    // The handles are plain pointers, so C++ code can own them: the bus is
    // destroyed on every return below.
    std::unique_ptr<rbus, void (*)(rbus *)> bus(raw, rbus_destroy);
    rbus_sub_opts opts;
    rbus_sub_opts_init(&opts);
    rbus_sub *sub = nullptr;
    rbus_topic *topic = nullptr;
    if (rbus_subscribe(bus.get(), "cxx.>", &opts, &sub) != 0 ||
        rbus_topic_open(bus.get(), "cxx.hello", &topic) != 0)
        return 1;
    const char text[] = "from C++";
    if (rbus_publish(topic, text, sizeof text) != 0)
        return 1;
    rbus_msg *msg = nullptr;
    if (rbus_recv(sub, &msg, 0) != 0)
        return 1;
    const bool same = std::strcmp(static_cast<const char *>(rbus_msg_data(msg)), text) == 0;
    rbus_msg_release(msg); // before the bus goes, whatever the outcome
    if (!same)
        return 1;
    bus.reset();
    std::puts("1 passed, 0 failed");
    return 0;
}
