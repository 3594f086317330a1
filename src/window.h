/*
 * window.h - the idempotency-key window's algorithm (dedup.c keeps the
 * memory and the hashing). A header of static functions on the types of
 * internal.h, so that tests/model/window_model.cpp compiles this very code
 * under Relacy.
 *
 * Rule (contract): a key is a duplicate iff it is among the last
 * `dedup_keys` keys accepted on the topic (forgotten oldest first) and, when
 * dedup_window_ns > 0, was accepted less than that long ago. A duplicate
 * never refreshes a key. Among concurrent publishes of one key exactly one
 * is accepted. docs/design.md#idempotency-keys-windowh-dedupc has the
 * argument in full.
 *
 * Tickets. Every accepted key takes the topic's next ticket (1, 2, ...); a
 * key accepted with ticket t is remembered while latest - t < dedup_keys
 * (and its age is under the window). Forgetting is a comparison at lookup
 * time, so it needs no work, and no lock, when it happens.
 *
 * The acceptance word. `accepted` holds the latest ticket and the slot of
 * the key that took it. Every acceptance on the topic is one CAS on it,
 * from the value the publisher read *before* it looked for its key. A CAS
 * that succeeds proves that no key was accepted since that read, so the
 * lookup saw every acceptance there was: exactly once follows, for any
 * interleaving, with no lock. A publisher preempted anywhere holds nobody
 * up: the others' CASes simply succeed, and the only step of its own that
 * another may need (marking the slot of the latest acceptance published
 * before accepting the next) is one any of them does for it.
 *
 * Slots. An open-addressing table of 4 x dedup_keys slots (a power of two).
 * A slot is a state word, [kind:3][tag:22][ticket:39], and the key's
 * identity (its 128-bit hash and the time it was accepted), written only
 * by the publisher that claimed the slot:
 *   FREE       never used, or swept;
 *   CLAIMED    owned by one publisher, which writes the identity;
 *   INTENT t   owned, the identity complete, proposed for ticket t: an
 *              acceptance only if `accepted` names this slot and t;
 *   HELPED t   accepted with ticket t, marked so by the next acceptance
 *              while its publisher has not yet marked it: still owned;
 *   PUBLISHED t  accepted with ticket t, its publisher done with it;
 *              remembered or not by t and time, reusable once t has left
 *              the window by count.
 * Only the owner turns a slot PUBLISHED, and nobody takes a slot until
 * it is, so the owner's mark is a plain store, not a locked instruction:
 * an acceptance costs two (the claim and the acceptance word).
 * A key's probe order is its home's line of 8 state words, from its home
 * round, then the lines after it. Slots are reused in place, so a lookup
 * reads the whole line rather than stopping at a free slot, and the lines
 * after it only while keys homed there overflowed (a line holds about 2
 * remembered keys, all 8 about once in a thousand claims): each line
 * counts its keys that lie past it and have not been reused since, and
 * keeps how far the farthest ever went. Both are raised before an
 * acceptance becomes visible; the count falls when such a slot is reused.
 *
 * Tickets are kept modulo 2^39 (the acceptance word also names a slot).
 * Every acceptance that is a multiple of SWEEP_EVERY frees the slots of
 * one line that left the window, so no published ticket is ever more than
 * a few million acceptances old, and differences modulo 2^39 are exact.
 */
#ifndef RBUS_WINDOW_H
#define RBUS_WINDOW_H

#define TICKET_BITS 39
#define TICKET_MASK ((UINT64_C(1) << TICKET_BITS) - 1)
/* A difference of two tickets at or above this is negative: the first is
 * older than the second. */
#define TICKET_HALF (UINT64_C(1) << (TICKET_BITS - 1))
#define TAG_BITS 22
#define TAG_MASK ((UINT32_C(1) << TAG_BITS) - 1)
#define KIND_SHIFT 61
#define KIND_MASK (UINT64_C(7) << KIND_SHIFT)

enum slot_kind { FREE = 0, CLAIMED = 1, INTENT = 2, HELPED = 3, PUBLISHED = 4 };

/* State words per cache line: the unit of a lookup. (The model check
 * shrinks this and the next two, to reach spills and sweeps.) */
#ifndef LINE_SLOTS
#define LINE_SLOTS 8u
#endif
/* How far along its probe order a key's slot may lie: 32 lines. */
#ifndef MAX_PROBE
#define MAX_PROBE 256u
#endif
/* One line of state words is swept every SWEEP_EVERY acceptances: a full
 * pass takes 8 x slots acceptances, at most 2^27, far below 2^38. */
#ifndef SWEEP_EVERY
#define SWEEP_EVERY 64u
#endif

static inline unsigned kind_of(uint64_t s)
{
    return (unsigned)(s >> KIND_SHIFT);
}

static inline uint64_t ticket_of(uint64_t s)
{
    return s & TICKET_MASK;
}

static inline uint64_t state_make(enum slot_kind kind, uint32_t tag, uint64_t ticket)
{
    return (uint64_t)kind << KIND_SHIFT | (uint64_t)tag << TICKET_BITS | (ticket & TICKET_MASK);
}

/* The same tag and ticket, another kind. */
static inline uint64_t state_as(uint64_t s, enum slot_kind kind)
{
    return (s & ~KIND_MASK) | (uint64_t)kind << KIND_SHIFT;
}

static inline uint64_t acc_make(uint64_t ticket, uint32_t slot)
{
    return (uint64_t)(slot + 1) << TICKET_BITS | (ticket & TICKET_MASK);
}

static inline uint64_t acc_ticket(uint64_t a)
{
    return a & TICKET_MASK;
}

/* The slot of the latest acceptance plus one; 0 before the first. */
static inline uint32_t acc_winner(uint64_t a)
{
    return (uint32_t)(a >> TICKET_BITS);
}

/* How many acceptances ago ticket t was, seen from ticket `latest`;
 * >= TICKET_HALF when t came after it. */
static inline uint64_t ticket_age(uint64_t latest, uint64_t t)
{
    return (latest - t) & TICKET_MASK;
}

/* Whether slot i, whose state word read s, holds an acceptance as of the
 * acceptance word a: published, or the intent that a names. */
static inline bool is_accepted(uint64_t s, uint32_t i, uint64_t a)
{
    unsigned k = kind_of(s);
    return k == PUBLISHED || k == HELPED ||
           (k == INTENT && ticket_of(s) == acc_ticket(a) && acc_winner(a) == i + 1);
}

/* Whether an acceptance with ticket t at time `time` is still remembered,
 * seen from the latest ticket `latest` at now_ns. A ticket newer than
 * `latest` was accepted after the caller's snapshot, during its call. */
static inline bool remembered(const struct rbus_dedup *d, uint64_t latest, uint64_t t, int64_t time,
                              int64_t now_ns)
{
    uint64_t age = ticket_age(latest, t);
    if (age < TICKET_HALF && age >= d->keys)
        return false;
    return d->window_ns == 0 || now_ns - time < d->window_ns;
}

/* Whether slot i (state word s) may be claimed as of ticket `latest`: free,
 * or published with a ticket that left the window by count, which it
 * never re-enters. */
static inline bool reusable(const struct rbus_dedup *d, uint64_t latest, uint64_t s)
{
    unsigned k = kind_of(s);
    if (k == FREE)
        return true;
    if (k != PUBLISHED)
        return false;
    uint64_t age = ticket_age(latest, ticket_of(s));
    return age < TICKET_HALF && age >= d->keys;
}

/*
 * Whether slot i, read as state s (an acceptance with our key's tag), holds
 * the key (lo, hi); its acceptance time into *time. The identity is read
 * between two loads of the state word: the claimer writes it only while
 * the slot is CLAIMED, after a release fence, so an identity read while a
 * claimer rewrites it shows as a changed state word (the acquire fence
 * below pairs with that release fence). Marking (INTENT to HELPED or
 * PUBLISHED, same ticket) does not touch the identity.
 */
static bool slot_holds(const struct rbus_dedup *d, uint32_t i, uint64_t s, uint64_t lo, uint64_t hi,
                       int64_t *time)
{
    const struct rbus_dedup_ident *id = &d->ident[i];
    uint64_t l = atomic_load_explicit(&id->lo, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&id->hi, memory_order_relaxed);
    *time = d->window_ns ? atomic_load_explicit(&d->time_ns[i], memory_order_relaxed) : 0;
    atomic_thread_fence(memory_order_acquire);
    uint64_t again = atomic_load_explicit(&d->state[i], memory_order_relaxed);
    if (again != s && again != state_as(s, HELPED) && again != state_as(s, PUBLISHED))
        /* Reclaimed since: that acceptance left the window, so keys were
         * accepted after our snapshot and our CAS will fail. */
        return false;
    return l == lo && h == hi;
}

/* Marks the latest acceptance (named by a) HELPED, if its publisher has
 * not marked it PUBLISHED: before any CAS replaces a, so that only the
 * latest acceptance is ever an INTENT. Release: a lookup that reads HELPED
 * (acquire) then sees the acceptance word we loaded (acquire) from the
 * winner's CAS, so it never takes a key for accepted before `accepted`
 * says so; the caller's release CAS on `accepted`, after this, makes the
 * mark visible to whoever loads the new acceptance word. */
static void help_mark(struct rbus_dedup *d, uint64_t a)
{
    uint32_t w = acc_winner(a);
    if (!w)
        return;
    uint64_t s = atomic_load_explicit(&d->state[w - 1], memory_order_relaxed);
    if (kind_of(s) == INTENT && ticket_of(s) == acc_ticket(a))
        atomic_compare_exchange_strong_explicit(&d->state[w - 1], &s, state_as(s, HELPED),
                                                memory_order_release, memory_order_relaxed);
}

/* A claim `lines` lines past home's line: counted there, before the
 * claimer's INTENT store (release) can make it an acceptance. */
static void spill_add(struct rbus_dedup *d, uint32_t home, uint32_t lines)
{
    const uint32_t line = home / LINE_SLOTS;
    uint32_t v = atomic_load_explicit(&d->spill[line], memory_order_relaxed);
    uint32_t want;
    do {
        uint32_t reach = (v & 0xffu) > lines ? (v & 0xffu) : lines;
        want = (v & ~0xffu) + 0x100u + reach;
    } while (!atomic_compare_exchange_weak_explicit(&d->spill[line], &v, want, memory_order_relaxed,
                                                    memory_order_relaxed));
}

/* Slot i, which held key lo, is free or someone else's now: if it lay past
 * the key's home line, that line has one spilled key fewer. Relaxed: the
 * key was dead (or never accepted), so no lookup needs the count. */
static void spill_forget(struct rbus_dedup *d, uint64_t lo, uint32_t i)
{
    uint32_t home = (uint32_t)lo & d->mask;
    if (RBUS__UNLIKELY((home ^ i) & ~(LINE_SLOTS - 1)))
        atomic_fetch_sub_explicit(&d->spill[home / LINE_SLOTS], 0x100u, memory_order_relaxed);
}

/* Frees the slots of one line that left the window by count, so that no
 * published ticket grows old enough for differences modulo 2^39 to wrap.
 * Each CAS expects the exact word read: a stale sweeper frees nothing. */
static void sweep(struct rbus_dedup *d, uint64_t latest)
{
    uint32_t base = (uint32_t)(latest / SWEEP_EVERY * LINE_SLOTS) & d->mask;
    for (uint32_t k = 0; k < LINE_SLOTS; k++) {
        /* Acquire, as in claim(). */
        uint64_t s = atomic_load_explicit(&d->state[base + k], memory_order_acquire);
        if (kind_of(s) != PUBLISHED || !reusable(d, latest, s))
            continue;
        /* Its key, read while the word still names it (a new claimer
         * would change the word first, and fail our CAS). */
        uint64_t lo = atomic_load_explicit(&d->ident[base + k].lo, memory_order_relaxed);
        if (atomic_compare_exchange_strong_explicit(&d->state[base + k], &s, 0,
                                                    memory_order_relaxed, memory_order_relaxed))
            spill_forget(d, lo, base + k);
    }
}

/*
 * Whether the key (lo, hi), tagged `tag`, is remembered as of the
 * acceptance word a, looking at `lines` lines from `line`. Line by line in
 * memory order (the probe order matters only to claims), with relaxed
 * loads and one test that nearly always fails: which slots are reusable is
 * random, so any other test here would mispredict every few slots.
 */
static bool lookup(const struct rbus_dedup *d, uint32_t line, uint32_t lines, uint64_t a,
                   uint32_t tag, uint64_t lo, uint64_t hi, int64_t now_ns)
{
    const uint64_t want = (uint64_t)tag << TICKET_BITS;
    const uint64_t tag_bits = (uint64_t)TAG_MASK << TICKET_BITS;
    for (uint32_t l = 0; l < lines; l++) {
        const uint32_t base = (line + l * LINE_SLOTS) & d->mask;
        for (uint32_t j = 0; j < LINE_SLOTS; j++) {
            uint64_t s = atomic_load_explicit(&d->state[base + j], memory_order_relaxed);
            if (RBUS__LIKELY((s ^ want) & tag_bits))
                continue;
            /* Makes the load above an acquire: it pairs with the claimer's
             * INTENT store (release), so the identity read next is whole. */
            atomic_thread_fence(memory_order_acquire);
            int64_t time;
            if (is_accepted(s, base + j, a) && slot_holds(d, base + j, s, lo, hi, &time) &&
                remembered(d, acc_ticket(a), ticket_of(s), time, now_ns))
                return true;
        }
    }
    return false;
}

/* The x-th slot of home's probe order: home's own line from home round,
 * then the lines after it in order. */
static inline uint32_t probe_slot(const struct rbus_dedup *d, uint32_t home, uint32_t x)
{
    uint32_t line = home & ~(LINE_SLOTS - 1);
    if (x < LINE_SLOTS)
        return line | ((home + x) & (LINE_SLOTS - 1));
    return (line + x) & d->mask;
}

/*
 * Claims the first reusable slot among the first MAX_PROBE of home's probe
 * order. Its index into *slot and its position into *at; false when none
 * is reusable.
 */
static bool claim(struct rbus_dedup *d, uint64_t latest, uint32_t home, uint32_t *slot,
                  uint32_t *at)
{
    for (uint32_t x = 0; x < MAX_PROBE; x++) {
        uint32_t i = probe_slot(d, home, x);
        /* Acquire: the INTENT store of the claimer before us, whose key we
         * read next. The CAS can be relaxed: a slot won is ours alone
         * until our INTENT store (release) shows it. */
        uint64_t s = atomic_load_explicit(&d->state[i], memory_order_acquire);
        if (!reusable(d, latest, s))
            continue;
        /* The key it held, if any: read while the word still names it. */
        uint64_t lo = atomic_load_explicit(&d->ident[i].lo, memory_order_relaxed);
        if (atomic_compare_exchange_strong_explicit(&d->state[i], &s, state_make(CLAIMED, 0, 0),
                                                    memory_order_relaxed, memory_order_relaxed)) {
            if (kind_of(s) == PUBLISHED)
                spill_forget(d, lo, i);
            *slot = i;
            *at = x;
            return true;
        }
    }
    return false;
}

/*
 * Check-and-insert of the key hashed (lo, hi) at now_ns: 0 = accepted, its
 * ticket into *ticket; RBUS_DUPLICATE; or -ENOBUFS (no reusable slot
 * within MAX_PROBE of its home). Lock-free: a retry means another
 * acceptance succeeded.
 */
static int rbus__window_accept(struct rbus_dedup *d, uint64_t lo, uint64_t hi, int64_t now_ns,
                               uint64_t *ticket_out)
{
    const uint32_t home = (uint32_t)lo & d->mask;
    const uint32_t tag = (uint32_t)(lo >> 32) & TAG_MASK;
    uint32_t mine = UINT32_MAX; /* the slot we claimed, kept across retries */
    uint64_t ticket;            /* the one we propose */

    /* Acquire: pairs with the acq_rel CAS that stored it, so every slot of
     * an acceptance up to this ticket reads as such below, and its spill
     * is raised. */
    uint64_t a = atomic_load_explicit(&d->accepted, memory_order_acquire);
    for (;;) {
        const uint64_t latest = acc_ticket(a);
        /* Relaxed: raised before the INTENT store of every acceptance up to
         * `latest`, which the acquire above ordered before us. */
        const uint32_t spill =
            atomic_load_explicit(&d->spill[home / LINE_SLOTS], memory_order_relaxed);
        const uint32_t lines = spill >> 8 ? (spill & 0xffu) + 1u : 1u;
        if (lookup(d, home & ~(LINE_SLOTS - 1), lines, a, tag, lo, hi, now_ns)) {
            if (mine != UINT32_MAX) {
                /* Release: a lookup that reads FREE is done with our
                 * identity (it never reads one behind FREE anyway). */
                atomic_store_explicit(&d->state[mine], 0, memory_order_release);
                spill_forget(d, lo, mine);
            }
            return RBUS_DUPLICATE;
        }
        if (mine == UINT32_MAX) {
            uint32_t at;
            if (!claim(d, latest, home, &mine, &at)) {
                /* Every slot near home is remembered or in use by other
                 * publishers right now. Newer acceptances may have freed
                 * some: look again; otherwise report it. */
                uint64_t now_a = atomic_load_explicit(&d->accepted, memory_order_acquire);
                if (now_a != a) {
                    a = now_a;
                    continue;
                }
                return -ENOBUFS;
            }
            RBUS__PAUSE(DEDUP_CLAIMED);
            /* The sequence lock's writer side (see slot_holds): the CLAIMED
             * word is ordered before the identity stores. */
            atomic_thread_fence(memory_order_release);
            struct rbus_dedup_ident *id = &d->ident[mine];
            atomic_store_explicit(&id->lo, lo, memory_order_relaxed);
            atomic_store_explicit(&id->hi, hi, memory_order_relaxed);
            if (d->window_ns)
                atomic_store_explicit(&d->time_ns[mine], now_ns, memory_order_relaxed);
            /* Raised before our INTENT can become an acceptance; relaxed, as
             * the release stores below carry it. */
            if (RBUS__UNLIKELY(at >= LINE_SLOTS))
                spill_add(d, home, at / LINE_SLOTS);
        }
        ticket = (latest + 1) & TICKET_MASK;
        /* Release: the identity and spill, for a lookup that reads it. Only
         * we write this slot while we own it. */
        atomic_store_explicit(&d->state[mine], state_make(INTENT, tag, ticket),
                              memory_order_release);
        help_mark(d, a);
        RBUS__PAUSE(DEDUP_PROPOSED);
        /* acq_rel: release for our INTENT, identity, spill and help_mark's
         * mark; on failure, acquire for the newer acceptance word we look
         * again from. */
        if (atomic_compare_exchange_strong_explicit(&d->accepted, &a, acc_make(ticket, mine),
                                                    memory_order_acq_rel, memory_order_acquire))
            break;
        /* Lost to another acceptance: our INTENT names a ticket `accepted`
         * will never pair with our slot, so nobody takes it for one. */
    }
    RBUS__PAUSE(DEDUP_ACCEPTED);
    /* Ours to mark PUBLISHED, over INTENT or the next acceptance's HELPED:
     * a plain store, as nobody else writes the slot until it is
     * PUBLISHED (reusable() and sweep() take only PUBLISHED slots).
     * Release, after our CAS: a lookup that reads it sees `accepted` name
     * our ticket (as in help_mark), and our identity. */
    atomic_store_explicit(&d->state[mine], state_make(PUBLISHED, tag, ticket),
                          memory_order_release);
    if (RBUS__UNLIKELY(ticket % SWEEP_EVERY == 0))
        sweep(d, ticket);
    *ticket_out = ticket;
    return 0;
}

#endif /* RBUS_WINDOW_H */
