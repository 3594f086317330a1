/*
 * fuzz_topic.c - libFuzzer target: topic names and subscription patterns.
 *
 * The input is split at its first NUL byte into a pattern (before) and a
 * name (after, up to the next NUL); without a NUL both are the whole input.
 * rbus_topic_valid, rbus_pattern_valid and rbus_pattern_match are checked
 * against a deliberately simple reference written from docs/api.md
 * ("Topic names"):
 *  - a subject is 1..RBUS_MAX_TOPIC_LEN (255) bytes of dot-separated,
 *    non-empty tokens;
 *  - a token is made of printable ASCII other than space, '.', '*' and '>'
 *    (bytes 0x21..0x7e minus those three);
 *  - a pattern may also use the tokens "*" (exactly one token) and, as its
 *    last token only, ">" (one or more tokens); a topic name may not.
 *
 * Both strings are also tried the other way round (the name as a pattern,
 * the pattern as a name, each against itself), and through a bus made once
 * for the input (see bus_get): rbus_topic_open must accept exactly the
 * valid names and rbus_subscribe exactly the valid patterns; when both are
 * valid, one publish on the name must reach the pattern's subscription iff
 * the reference says they match. Any disagreement aborts, naming both
 * inputs.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ringbus.h"

/* ------------------------------------------------------------ reference */

struct ref_tok {
    const char *p;
    size_t n;
};

/* A subject of at most 255 bytes has at most 255 dots: 256 tokens (empty
 * ones included, for the invalid subjects). */
#define REF_MAX_TOKS (RBUS_MAX_TOPIC_LEN + 1)

/* Splits s at every '.'; returns the token count, or -1 when the subject
 * is too long to be valid (so it never needs splitting). */
static int ref_split(const char *s, struct ref_tok *toks)
{
    size_t len = strlen(s);
    if (len > RBUS_MAX_TOPIC_LEN)
        return -1;
    int n = 0;
    const char *start = s;
    for (size_t i = 0; i <= len; i++) {
        if (s[i] == '.' || s[i] == '\0') {
            toks[n].p = start;
            toks[n].n = (size_t)(s + i - start);
            n++;
            start = s + i + 1;
        }
    }
    return n;
}

static bool ref_is(const struct ref_tok *t, char c)
{
    return t->n == 1 && t->p[0] == c;
}

static bool ref_literal_token(const struct ref_tok *t)
{
    if (t->n == 0)
        return false;
    for (size_t i = 0; i < t->n; i++) {
        unsigned char c = (unsigned char)t->p[i];
        if (c < 0x21 || c > 0x7e || c == '.' || c == '*' || c == '>')
            return false;
    }
    return true;
}

static bool ref_valid(const char *s, bool pattern)
{
    struct ref_tok toks[REF_MAX_TOKS];
    if (s[0] == '\0')
        return false;
    int n = ref_split(s, toks);
    if (n < 0)
        return false;
    for (int i = 0; i < n; i++) {
        if (ref_literal_token(&toks[i]))
            continue;
        if (pattern && ref_is(&toks[i], '*'))
            continue;
        if (pattern && ref_is(&toks[i], '>') && i == n - 1)
            continue;
        return false;
    }
    return true;
}

/* Token lists of a valid pattern and a valid name. */
static bool ref_match_toks(const struct ref_tok *p, int np, const struct ref_tok *n, int nn)
{
    if (np == 0)
        return nn == 0;
    if (ref_is(&p[0], '>'))
        return nn >= 1;
    if (nn == 0)
        return false;
    if (!ref_is(&p[0], '*') && (p[0].n != n[0].n || memcmp(p[0].p, n[0].p, p[0].n) != 0))
        return false;
    return ref_match_toks(p + 1, np - 1, n + 1, nn - 1);
}

static bool ref_match(const char *pattern, const char *name)
{
    if (!ref_valid(pattern, true) || !ref_valid(name, false))
        return false;
    struct ref_tok pt[REF_MAX_TOKS], nt[REF_MAX_TOKS];
    int np = ref_split(pattern, pt);
    int nn = ref_split(name, nt);
    return ref_match_toks(pt, np, nt, nn);
}

/* ------------------------------------------------------------ reporting */

static const char *g_in_pattern;
static const char *g_in_name;

static void print_escaped(const char *label, const char *s)
{
    fprintf(stderr, "  %s (%zu bytes): \"", label, strlen(s));
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\')
            fputc(*p, stderr);
        else
            fprintf(stderr, "\\x%02x", *p);
    }
    fprintf(stderr, "\"\n");
}

static void fail(const char *what, const char *a, const char *b, long got, long want)
{
    fprintf(stderr, "fuzz_topic: DISAGREEMENT: %s: got %ld, want %ld\n", what, got, want);
    print_escaped("argument 1", a);
    if (b)
        print_escaped("argument 2", b);
    print_escaped("input pattern", g_in_pattern);
    print_escaped("input name", g_in_name);
    abort();
}

/* ------------------------------------------------------------------ bus */

/*
 * By default each input gets a bus of its own, made once for the input and
 * shared by all of its checks: an input then reproduces on its own, the
 * registry stays small (every subscribe walks it), and mallocs balance
 * frees, so libFuzzer's leak detection stays on. Measured on this machine,
 * a process-wide bus ran at half the speed and made libFuzzer give up leak
 * detection after 1000 inputs (each new topic looks like a leak). Build
 * with -DFUZZ_TOPIC_SHARED_BUS=1 for one process-wide bus instead (remade
 * every 256 topic opens to bound the registry).
 */
#ifndef FUZZ_TOPIC_SHARED_BUS
#define FUZZ_TOPIC_SHARED_BUS 0
#endif

static rbus *g_bus;
static unsigned g_opens; /* valid topic opens since the bus was made */

static rbus *bus_get(void)
{
    if (g_bus && g_opens >= 256) {
        rbus_destroy(g_bus);
        g_bus = NULL;
    }
    if (!g_bus) {
        int rc = rbus_create(&g_bus, NULL);
        if (rc != 0) {
            fprintf(stderr, "fuzz_topic: rbus_create: %s\n", rbus_strerror(rc));
            abort();
        }
        g_opens = 0;
    }
    return g_bus;
}

static void bus_put(void)
{
    if (!FUZZ_TOPIC_SHARED_BUS) {
        rbus_destroy(g_bus);
        g_bus = NULL;
    }
}

/* rbus_topic_open accepts exactly the valid names; returns the handle. */
static rbus_topic *check_open(rbus *bus, const char *name)
{
    bool valid = ref_valid(name, false);
    rbus_topic *t = (rbus_topic *)&t; /* poison: must be overwritten */
    int rc = rbus_topic_open(bus, name, &t);
    if (rc != (valid ? 0 : -EINVAL))
        fail("rbus_topic_open rc", name, NULL, rc, valid ? 0 : -EINVAL);
    if (!valid) {
        if (t != NULL)
            fail("rbus_topic_open(invalid) left *out non-NULL", name, NULL, 1, 0);
        return NULL;
    }
    g_opens++;
    if (!t)
        fail("rbus_topic_open gave NULL", name, NULL, 0, 1);
    const char *tn = rbus_topic_name(t);
    if (!tn || strcmp(tn, name) != 0)
        fail("rbus_topic_name differs from the name opened", name, tn ? tn : "(null)", 1, 0);
    rbus_topic *again = NULL;
    rc = rbus_topic_open(bus, name, &again);
    if (rc != 0 || again != t)
        fail("reopening gave another handle", name, NULL, rc, 0);
    return t;
}

/* rbus_subscribe accepts exactly the valid patterns. */
static rbus_sub *check_subscribe(rbus *bus, const char *pattern)
{
    bool valid = ref_valid(pattern, true);
    rbus_sub_opts o;
    rbus_sub_opts_init(&o);
    o.capacity = 2;
    o.overflow = RBUS_DROP_NEWEST;
    rbus_sub *s = (rbus_sub *)&s;
    int rc = rbus_subscribe(bus, pattern, &o, &s);
    if (rc != (valid ? 0 : -EINVAL))
        fail("rbus_subscribe rc", pattern, NULL, rc, valid ? 0 : -EINVAL);
    if (!valid) {
        if (s != NULL)
            fail("rbus_subscribe(invalid) left *out non-NULL", pattern, NULL, 1, 0);
        return NULL;
    }
    if (!s)
        fail("rbus_subscribe gave NULL", pattern, NULL, 0, 1);
    return s;
}

static void unsubscribe(rbus_sub *s, const char *pattern)
{
    int rc = rbus_unsubscribe(s);
    if (rc != 0)
        fail("rbus_unsubscribe rc", pattern, NULL, rc, 0);
}

/* Routing agrees with the reference matcher: one publish on `name` reaches
 * the subscription on `pattern` iff they match. `topic_first` opens the
 * topic before subscribing (the list is built by the subscribe) or after
 * (built by topic_open). */
static void check_routing(rbus *bus, const char *pattern, const char *name, bool topic_first)
{
    rbus_topic *t = topic_first ? check_open(bus, name) : NULL;
    rbus_sub *s = check_subscribe(bus, pattern);
    if (!topic_first)
        t = check_open(bus, name);
    bool want = ref_match(pattern, name);

    rbus_topic_stats ts;
    int rc = rbus_topic_stats_get(t, &ts);
    if (rc != 0)
        fail("rbus_topic_stats_get rc", pattern, name, rc, 0);
    if (ts.subscriptions != (uint32_t)want)
        fail("topic stats: subscriptions (routing)", pattern, name, ts.subscriptions, want);

    rbus_pub_result r;
    rc = rbus_publish_ex(t, name, strlen(name), NULL, &r);
    if (rc != 0)
        fail("rbus_publish_ex rc", pattern, name, rc, 0);
    if (r.matched != (uint32_t)want || r.queued != (uint32_t)want || r.dropped != 0 ||
        r.evicted != 0 || r.duplicate)
        fail("publish result: matched (routing)", pattern, name, r.matched, want);

    rbus_msg *m = NULL;
    rc = rbus_recv(s, &m, 0);
    if (rc != (want ? 0 : -EAGAIN))
        fail("rbus_recv rc (routing)", pattern, name, rc, want ? 0 : -EAGAIN);
    if (want) {
        const char *mt = rbus_msg_topic(m);
        if (!mt || strcmp(mt, name) != 0 || rbus_msg_size(m) != strlen(name) ||
            memcmp(rbus_msg_data(m), name, strlen(name)) != 0)
            fail("received message differs from the one published", pattern, name, 1, 0);
        rbus_msg_release(m);
        rc = rbus_recv(s, &m, 0);
        if (rc != -EAGAIN)
            fail("rbus_recv rc after the one message", pattern, name, rc, -EAGAIN);
    }
    unsubscribe(s, pattern);
}

/* --------------------------------------------------------------- target */

static void check_pure(const char *a, const char *b)
{
    bool got, want;
    got = rbus_pattern_match(a, b);
    want = ref_match(a, b);
    if (got != want)
        fail("rbus_pattern_match(pattern, name)", a, b, got, want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t plen = nul ? (size_t)(nul - data) : size;
    const uint8_t *nstart = nul ? nul + 1 : data;
    size_t nrest = nul ? size - plen - 1 : size;
    const uint8_t *nul2 = memchr(nstart, 0, nrest);
    size_t nlen = nul2 ? (size_t)(nul2 - nstart) : nrest;

    char *pattern = malloc(plen + 1);
    char *name = malloc(nlen + 1);
    if (!pattern || !name)
        abort();
    memcpy(pattern, data, plen);
    pattern[plen] = '\0';
    memcpy(name, nstart, nlen);
    name[nlen] = '\0';
    g_in_pattern = pattern;
    g_in_name = name;

    /* Validators, each string both ways. */
    const char *both[2] = {pattern, name};
    for (int i = 0; i < 2; i++) {
        bool got = rbus_topic_valid(both[i]);
        bool want = ref_valid(both[i], false);
        if (got != want)
            fail("rbus_topic_valid", both[i], NULL, got, want);
        got = rbus_pattern_valid(both[i]);
        want = ref_valid(both[i], true);
        if (got != want)
            fail("rbus_pattern_valid", both[i], NULL, got, want);
    }
    /* The matcher: every ordered pair of the two strings. */
    check_pure(pattern, name);
    check_pure(name, pattern);
    check_pure(pattern, pattern);
    check_pure(name, name);

    /* Through the bus: topic_open and subscribe accept exactly the valid
     * ones, and routing follows the matcher. */
    rbus *bus = bus_get();
    bool topic_first = (size & 1) != 0;
    if (ref_valid(pattern, true) && ref_valid(name, false)) {
        check_routing(bus, pattern, name, topic_first);
    } else {
        check_open(bus, name);
        rbus_sub *s = check_subscribe(bus, pattern);
        if (s)
            unsubscribe(s, pattern);
    }
    /* And the other way round: the pattern as a name, the name as a
     * pattern. */
    check_open(bus, pattern);
    rbus_sub *s = check_subscribe(bus, name);
    if (s)
        unsubscribe(s, name);

    bus_put();
    free(pattern);
    free(name);
    return 0;
}
