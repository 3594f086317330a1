/* rbus_nats_prometheus: the bridges' stats in the Prometheus text format,
 * one family per counter or gauge, one sample per bridge. */
#include "internal.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

enum field_kind { FIELD_U64, FIELD_U32, FIELD_BOOL };

static const struct {
    const char *name, *type, *help;
    size_t offset;
    enum field_kind kind;
} nats_families[] = {
#define NATS_FAMILY(field, type, kind, help)                                                \
    {                                                                                       \
        "ringbus_nats_" #field "_total", type, help, offsetof(rbus_nats_stats, field), kind \
    }
#define NATS_GAUGE(field, kind, help)                                                 \
    {                                                                                 \
        "ringbus_nats_" #field, "gauge", help, offsetof(rbus_nats_stats, field), kind \
    }
    NATS_FAMILY(export_taken, "counter", FIELD_U64,
                "Messages the bridge took from its subscription."),
    NATS_FAMILY(export_skipped, "counter", FIELD_U64, "Imported messages not exported again."),
    NATS_FAMILY(sent, "counter", FIELD_U64, "Exports accepted by NATS (JetStream: acknowledged)."),
    NATS_FAMILY(send_failed, "counter", FIELD_U64,
                "Exports refused, negatively acknowledged or timed out."),
    NATS_FAMILY(server_duplicates, "counter", FIELD_U64,
                "JetStream acks that reported a duplicate."),
    NATS_FAMILY(export_dropped, "counter", FIELD_U64,
                "Local publishes that found the bridge's queue full."),
    NATS_FAMILY(import_received, "counter", FIELD_U64, "Messages received from NATS."),
    NATS_FAMILY(imported, "counter", FIELD_U64, "Messages published into the local bus."),
    NATS_FAMILY(import_duplicates, "counter", FIELD_U64,
                "Imports suppressed by the local dedup window."),
    NATS_FAMILY(import_own, "counter", FIELD_U64,
                "This bridge's own exports read back, not imported."),
    NATS_FAMILY(import_invalid, "counter", FIELD_U64,
                "Imports with an invalid topic or key, skipped."),
    NATS_FAMILY(import_failed, "counter", FIELD_U64, "Imports the local bus refused."),
    NATS_FAMILY(import_dropped, "counter", FIELD_U64,
                "Core imports the client dropped as a slow consumer."),
    NATS_FAMILY(disconnects, "counter", FIELD_U64, "Connection losses."),
    NATS_FAMILY(reconnects, "counter", FIELD_U64, "Successful reconnects."),
    NATS_GAUGE(in_flight, FIELD_U32, "Exports taken but neither sent nor failed yet."),
    NATS_GAUGE(export_depth, FIELD_U32, "Messages queued in the bridge's subscription."),
    NATS_GAUGE(connected, FIELD_BOOL, "1 while connected to a server."),
#undef NATS_FAMILY
#undef NATS_GAUGE
};

/* snprintf into buf at *len, counting what would not fit. */
static void prom_append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *at = *len < size ? buf + *len : NULL;
    int n = vsnprintf(at, at ? size - *len : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        *len += (size_t)n;
}

/* A label value with \ " and newline escaped, as the text format asks. */
static void prom_label(char *out, size_t cap, const char *value)
{
    size_t o = 0;
    for (const char *c = value; *c && o + 3 < cap; c++) {
        if (*c == '\\' || *c == '"') {
            out[o++] = '\\';
            out[o++] = *c;
        } else if (*c == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *c;
        }
    }
    out[o] = '\0';
}

int rbus_nats_prometheus(const rbus_nats *const *bridges, size_t count, char *buf, size_t size)
{
    if ((!bridges && count) || (!buf && size))
        return -EINVAL;
    for (size_t i = 0; i < count; i++)
        if (!bridges[i])
            return -EINVAL;
    rbus_nats_stats *stats = count ? calloc(count, sizeof *stats) : NULL;
    if (count && !stats)
        return -ENOMEM;
    /* One snapshot per bridge, so every family shows the same moment. */
    for (size_t i = 0; i < count; i++)
        rbus_nats_stats_get(bridges[i], &stats[i]);
    size_t len = 0;
    char label[2 * sizeof bridges[0]->bridge_id];
    for (size_t f = 0; count && f < sizeof nats_families / sizeof nats_families[0]; f++) {
        prom_append(buf, size, &len, "# HELP %s %s\n# TYPE %s %s\n", nats_families[f].name,
                    nats_families[f].help, nats_families[f].name, nats_families[f].type);
        for (size_t i = 0; i < count; i++) {
            const char *field = (const char *)&stats[i] + nats_families[f].offset;
            unsigned long long v = 0;
            if (nats_families[f].kind == FIELD_U64)
                v = *(const uint64_t *)(const void *)field;
            else if (nats_families[f].kind == FIELD_U32)
                v = *(const uint32_t *)(const void *)field;
            else
                v = *(const bool *)(const void *)field;
            prom_label(label, sizeof label, bridges[i]->bridge_id);
            prom_append(buf, size, &len, "%s{bridge=\"%s\"} %llu\n", nats_families[f].name, label,
                        v);
        }
    }
    free(stats);
    if (size)
        buf[len < size ? len : size - 1] = '\0';
    return len > INT_MAX ? -EOVERFLOW : (int)len;
}
