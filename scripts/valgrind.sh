#!/usr/bin/env bash
# Every cmocka test under valgrind memcheck: no invalid access, no use of
# uninitialised memory, no leak ("definitely" or "indirectly" lost), else
# exit 1. scripts/test.sh runs it as its fourth variant, one test per core;
# alone:  scripts/valgrind.sh
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
# One test per core at a time (valgrind runs each test's threads on one):
# each prints its line when it ends, with how long it took.
one() { # test binary: runs it under memcheck, exits non-zero on a finding
  local t=$1 name start
  name=$(basename "$t")
  start=$SECONDS
  if valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
       --show-leak-kinds=definite,indirect --track-origins=yes "$t" >"$dir/$name.log" 2>&1; then
    echo "valgrind: $name clean ($(grep -c '^\[       OK' "$dir/$name.log" || true) cmocka tests passed, $((SECONDS - start)) s)"
  else
    echo "valgrind: $name FAILED (status $?), log $dir/$name.log:"; tail -40 "$dir/$name.log"; return 1
  fi
}
export -f one
export dir
status=0
find "$dir/tests" -maxdepth 1 -name 'test_*' -type f -executable -print0 | sort -z |
  xargs -0 -n1 -P"$(nproc 2>/dev/null || echo 2)" bash -c 'one "$0"' || status=1
[ $status -eq 0 ] && echo "valgrind: every test clean (RBUS_STRESS_SCALE=$RBUS_STRESS_SCALE)"
exit $status
