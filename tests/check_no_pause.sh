#!/bin/sh
# Pause points (src/pause.h) are for tests only. Fails unless WITH, the
# test library, defines the pause functions (so the check can find them)
# and none of the WITHOUT files (shipped libraries, the bench) refers to
# any of them.
# usage: check_no_pause.sh NM WITH WITHOUT...
set -eu
if [ $# -lt 3 ]; then
  echo "usage: $0 NM WITH WITHOUT..." >&2
  exit 2
fi
nm=$1 with=$2
shift 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT

"$nm" "$with" >"$out"
found=$(grep -c 'rbus__pause' "$out" || true)
echo "$with: $found pause symbols"
if [ "$found" -eq 0 ]; then
  echo "FAIL: the test library has no pause points: the check below would prove nothing"
  exit 1
fi
bad=0
for f in "$@"; do
  "$nm" "$f" >"$out" 2>/dev/null || "$nm" -D "$f" >"$out"
  n=$(grep -c 'rbus__pause\|rbus__trap' "$out" || true)
  echo "$f: $n pause symbols"
  [ "$n" -eq 0 ] || { grep 'rbus__pause\|rbus__trap' "$out"; bad=1; }
done
[ $bad -eq 0 ] && echo "no pause points outside the test library"
exit $bad
