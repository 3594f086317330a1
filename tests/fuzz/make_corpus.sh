#!/bin/sh
# Regenerates the seed corpora corpus_topic/ and corpus_api/ next to this
# script (the files are committed; run this only to change them).
#
# corpus_topic: "<pattern>\0<name>" (fuzz_topic.c splits at the first NUL).
# corpus_api: three configuration bytes, then operations: an opcode byte and
# its parameter bytes, as fuzz_api.c reads them. Opcodes used here:
#   0 publish(topic/flags, len, key/order key, timeout/error)
#   9 subscribe(tokens/'>', token choices, capacity/policy/timeout, extras)
#  13 recv(slot/timeout/hold)   18 recv_batch(slot/timeout/hold, max)
#  20 sub_close(slot)  21 unsubscribe(slot)  22 topic_open(topic)
#  23 release(held)    25 ref(held)          26 sub_fd(slot)
#  27 close (arg & 7 == 0) or NULL-argument checks
#  31 burst(topic, count - 1, key base, key stride): keyed publishes
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir/corpus_topic" "$dir/corpus_api"

# b N...: writes the bytes N (decimal or 0x hex).
b() {
    for x in "$@"; do
        printf "\\$(printf '%03o' "$x")"
    done
}

# ------------------------------------------------------------ topics
t() { # t FILE PATTERN NAME
    printf '%s\000%s' "$2" "$3" > "$dir/corpus_topic/$1"
}
t nats_example 'orders.*.created' 'orders.eu.created'
t full_wildcard 'a.>' 'a.b.c'
t gt_alone '>' 'a'
t star_mid 'a.*.c' 'a.b.b.c'
t invalid_both 'a.>.b' 'a..b'
t wildcard_in_token 'a*b.c' 'a b.c'
t punctuation '*.~!@#$%^&()' 'x.~!@#$%^&()'
t high_bytes "$(printf 'caf\303\251.*')" "$(printf 'caf\303\251.x')"
# 255 bytes is the longest valid subject; 256 is one too many.
long=$(printf '%0254d' 0 | tr 0 a)
t long_255 "$(printf '%0253d' 0 | tr 0 b).>" "${long}c"
t long_256 "${long}.>" "${long}cd"
t dots_255 "$(printf '%0255d' 0 | tr 0 .)" 'a'

# --------------------------------------------------------------- api
# cfg: c0 = dedup choice | payload choice << 3, c1 = default capacity |
# max_topics << 3, c2 = how the script ends (0..3). Dedup choices 0..7:
# 1, 2, 3, 4, 64, 256 keys, RBUS_DEDUP_OFF, default (4096).

# Pub/recv on ">" (drop-newest, capacity 2), a duplicate key, a batch.
{
    b 3 0 1
    b 9 0x04 0x00 0x22 0x40           # subscribe ">" cap 2 drop-newest
    b 0 0x03 8 0x03 0x18              # publish a.b, 8 bytes, key "k1"
    b 0 0x03 8 0x03 0x18              # same key: duplicate
    b 0 0x06 0 0x00 0x18              # publish a.b.c, empty payload
    b 0 0x00 64 0x0c 0x18             # publish a, 64 bytes, key "k2", order key "o"
    b 13 0x00                         # recv
    b 18 0x00 4                       # recv_batch max 5
    b 13 0x00                         # recv: -EAGAIN
} > "$dir/corpus_api/basic"

# Block policy, capacity 1 (effective 2): waits, no-wait publish, timeouts.
{
    b 1 0 2
    b 9 0x00 0x00 0x01 0x40           # subscribe "a" cap 1 block, 1 us
    b 0 0x00 4 0x00 0x18              # publish a (queued)
    b 0 0x00 4 0x00 0x18              # publish a (queued)
    b 0 0x00 4 0x00 0x18              # full: waits 1 us, dropped_timeout
    b 0 0x00 4 0x00 0x19              # full, timeout -1: no wait
    b 0 0x00 4 0x00 0x1a              # full, publish timeout 500 ns
    b 13 0x08                         # recv, timeout 1 us
    b 0 0x00 4 0x00 0x18              # room again: queued
    b 18 0x10 8                       # recv_batch, timeout forever (queued)
    b 13 0x08                         # recv: -ETIMEDOUT
} > "$dir/corpus_api/block"

# Drop-oldest on "a.*" with an fd, holding and referencing messages.
{
    b 4 0 3
    b 9 0x01 0x0c 0x12 0x40           # subscribe "a.*" cap 2 drop-oldest
    b 26 0x00                         # sub_fd
    b 0 0x03 1 0x00 0x18              # publish a.b
    b 0 0x04 2 0x00 0x18              # publish a.c
    b 0 0x03 3 0x00 0x18              # publish a.b: evicts
    b 13 0x20                         # recv and hold
    b 25 0x00                         # one more reference
    b 13 0x00                         # recv
    b 13 0x00                         # -EAGAIN: fd cleared
    b 0 0x04 5 0x00 0x18              # fd readable again
    b 23 0x00                         # release one held
    b 20 0x00                         # sub_close: fd readable
    b 13 0x00                         # drains
    b 13 0x00                         # -ESHUTDOWN
} > "$dir/corpus_api/drop_oldest_fd"

# The bus closes in the middle of the script.
{
    b 2 0 0
    b 9 0x05 0x00 0x24 0x40           # subscribe "a.>" cap 4 drop-newest
    b 9 0x00 0x03 0x02 0x40           # subscribe "*" cap 2 block
    b 0 0x03 8 0x05 0x18              # publish a.b, key "\0k"
    b 0 0x00 8 0x00 0x18              # publish a
    b 27 0x00                         # rbus_close
    b 0 0x03 8 0x00 0x18              # -ESHUTDOWN
    b 9 0x00 0x00 0x02 0x40           # subscribe: -ESHUTDOWN
    b 22 0x01                         # topic_open: -ESHUTDOWN
    b 13 0x00 13 0x01 13 0x00 13 0x01 # drain both, then -ESHUTDOWN
} > "$dir/corpus_api/close_midway"

# Every kind of invalid argument.
{
    b 0 0 1
    b 0 0x00 5 0x00 0x00              # data NULL with a length
    b 0 0x00 0 0x00 0x00              # data NULL, length 0: fine
    b 0 0x00 5 0x00 0x04              # key NULL with a length
    b 0 0x00 5 0x00 0x08              # key length 0
    b 0 0x00 5 0x00 0x0c              # key of 256 bytes
    b 0 0x00 5 0x00 0x10              # order key of 256 bytes
    b 0 0x00 5 0x00 0x14              # order key NULL with a length
    b 9 0x78 0x01 0x02 0x40           # subscribe "a..b"
    b 9 0x00 0x00 0x02 0x00           # overflow out of range
    b 9 0x00 0x00 0x02 0x10           # spin_ns above 1 s
    b 9 0x00 0x00 0x02 0x20           # capacity above 2^30
    b 9 0x00 0x00 0x02 0x4c           # name of 256 bytes
    b 22 0x38                         # topic_open "a..b"
    b 27 0x01                         # NULL arguments
    b 13 0x03 18 0x03 0 20 0x03 21 0x03 26 0x03  # calls on an empty slot
} > "$dir/corpus_api/invalid_args"

# Dedup off, 16-byte payload limit, at most 2 topics.
{
    b 0x1e 0x10 0
    b 9 0x04 0x00 0x03 0x40           # subscribe ">" cap 3 block
    b 0 0x00 10 0x03 0x18             # publish a, key "k1"
    b 0 0x00 10 0x03 0x18             # same key: not a duplicate (dedup off)
    b 0 0x01 20 0x00 0x18             # 20 bytes: -EMSGSIZE
    b 0 0x02 1 0x00 0x18              # third topic: -ENOSPC, then NULL topic
    b 18 0x00 15                      # recv_batch
} > "$dir/corpus_api/dedup_off_limits"

# Bursts of generated keys with dedup_keys 256: the dedup table fills,
# forgets and grows.
{
    b 5 0 3
    b 9 0x04 0x00 0x28 0x40           # subscribe ">" cap 8 drop-newest
    b 31 0x00 63 0 1                  # 64 new keys on "a"
    b 31 0x00 63 0 1                  # the same 64: duplicates
    b 31 0x08 63 0 3                  # keys 256, 259, ...
    b 31 0x03 63 7 5                  # on "a.b"
    b 18 0x00 15                      # recv_batch 16
} > "$dir/corpus_api/dedup_bursts"
