/* How the bridge writes bus messages for NATS and reads them back: keys as
 * base64url header values, topics as subjects under the optional prefix.
 * Pure functions, no state: export.c, import.c and connection.c share them. */
#include "internal.h"

#include <string.h>

/* base64url of RBUS_MAX_KEY_LEN bytes, no padding, plus NUL. */
#define B64_MAX (((RBUS_MAX_KEY_LEN + 2) / 3) * 4 + 1)

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Keys are binary and header values are text: base64url (RFC 4648 section
 * 5) without padding is the encoding NATS' own tools use for ids. */
static void b64url_encode(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes canonical unpadded base64url (unused low bits zero, so every key
 * has exactly one encoding). Returns the byte count, or -1 if `in` is not
 * that or would not fit in `cap` bytes. */
static long b64url_decode(const char *in, uint8_t *out, size_t cap)
{
    size_t len = strlen(in);
    if (len % 4 == 1)
        return -1;
    size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (need > cap)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value(in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* non-canonical trailing bits */
        return -1;
    return (long)o;
}

/* A header value becomes a key: its base64url decoding when it is one (what
 * ringbus bridges send), else its text as it is (ids set by other NATS
 * publishers), so equal ids always give equal keys. 0 when unusable. */
size_t rbus_nats__header_to_key(const char *value, uint8_t *key)
{
    long n = b64url_decode(value, key, RBUS_MAX_KEY_LEN);
    if (n >= 1)
        return (size_t)n;
    size_t len = strlen(value);
    if (len < 1 || len > RBUS_MAX_KEY_LEN)
        return 0;
    memcpy(key, value, len);
    return len;
}

natsStatus rbus_nats__set_key_header(natsMsg *nm, const char *name, const void *key, size_t len)
{
    char text[B64_MAX];
    b64url_encode(key, len, text);
    return natsMsgHeader_Set(nm, name, text);
}

bool rbus_nats__build_subject(const rbus_nats *b, const char *topic, char *out)
{
    size_t tlen = strlen(topic);
    if (!b->prefix) {
        memcpy(out, topic, tlen + 1);
        return true;
    }
    if (b->prefix_len + 1 + tlen >= SUBJECT_MAX)
        return false;
    memcpy(out, b->prefix, b->prefix_len);
    out[b->prefix_len] = '.';
    memcpy(out + b->prefix_len + 1, topic, tlen + 1);
    return true;
}

/* The local topic a NATS subject maps to, or NULL (not ours, or invalid). */
const char *rbus_nats__subject_to_topic(const rbus_nats *b, const char *subject)
{
    const char *topic = subject;
    if (b->prefix) {
        if (strncmp(subject, b->prefix, b->prefix_len) != 0 || subject[b->prefix_len] != '.')
            return NULL;
        topic = subject + b->prefix_len + 1;
    }
    return rbus_topic_valid(topic) ? topic : NULL;
}
