#!/usr/bin/env bash
# Every cmocka test under valgrind memcheck: no invalid access, no use of
# uninitialised memory, no leak ("definitely" or "indirectly" lost), else
# exit 1. scripts/test.sh runs it as its fourth variant (about 2 minutes
# on 2 cores); alone:  scripts/valgrind.sh
#
# valgrind serialises threads and runs 20-50x slower, so stress sizes shrink
# through RBUS_STRESS_SCALE (default here 0.02); the tests print the sizes
# they used.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh valgrind
dir=build-valgrind
export RBUS_STRESS_SCALE=${RBUS_STRESS_SCALE:-0.02}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRBUS_BUILD_BENCH=OFF \
  -DRBUS_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$dir" -j"$(nproc 2>/dev/null || echo 2)" >"$dir.build.log" 2>&1 ||
  { cat "$dir.build.log"; exit 1; }
status=0
for t in "$dir"/tests/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  if valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
       --show-leak-kinds=definite,indirect --track-origins=yes "$t" >"$dir/$name.log" 2>&1; then
    echo "valgrind: $name clean ($(grep -c '^\[       OK' "$dir/$name.log" || true) cmocka tests passed)"
  else
    echo "valgrind: $name FAILED (status $?), log $dir/$name.log:"; tail -40 "$dir/$name.log"; status=1
  fi
done
[ $status -eq 0 ] && echo "valgrind: every test clean (RBUS_STRESS_SCALE=$RBUS_STRESS_SCALE)"
exit $status
