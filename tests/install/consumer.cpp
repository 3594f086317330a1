// consumer.cpp - the installed header used from C++ (servers that embed
// ringbus often are C++); links whatever ringbus::ringbus stands for.
#include <ringbus.h>

#include <cstdio>
#include <cstring>
#include <string>

int main()
{
    const std::string header = std::to_string(RBUS_VERSION_MAJOR) + "." +
                               std::to_string(RBUS_VERSION_MINOR) + "." +
                               std::to_string(RBUS_VERSION_PATCH);
    if (header != rbus_version()) {
        std::fprintf(stderr, "consumer_cxx: library %s, header %s\n", rbus_version(), header.c_str());
        return 1;
    }
    rbus *bus = nullptr;
    if (rbus_create(&bus, nullptr) != 0)
        return 1;
    rbus_topic *topic = nullptr;
    rbus_sub *sub = nullptr;
    rbus_msg *msg = nullptr;
    const char text[] = "from C++";
    bool ok = rbus_subscribe(bus, "install.>", nullptr, &sub) == 0 &&
              rbus_topic_open(bus, "install.cxx", &topic) == 0 &&
              rbus_publish(topic, text, sizeof text) == 0 &&
              rbus_recv(sub, &msg, 1000000000) == 0 &&
              rbus_msg_size(msg) == sizeof text &&
              std::memcmp(rbus_msg_data(msg), text, sizeof text) == 0;
    rbus_msg_release(msg);
    rbus_destroy(bus);
    if (!ok) {
        std::fprintf(stderr, "consumer_cxx: the round trip failed\n");
        return 1;
    }
    std::printf("consumer_cxx: ringbus %s, one message round-tripped\n", rbus_version());
    return 0;
}
