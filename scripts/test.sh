#!/usr/bin/env bash
# The formatting of the last commit's C lines (scripts/check-format.sh),
# then the whole test suite, four times: a plain optimised build (gcc,
# -Werror, plus the Doxygen reference), AddressSanitizer+UBSan (clang, with
# the misuse checks of RBUS_CHECKED), ThreadSanitizer (clang) and valgrind
# memcheck; then both libFuzzer targets
# for RBUS_FUZZ_SECONDS (default 60) each. Installs what is missing first.
# Exits non-zero if any build, test or fuzz run fails.
#
# Stress sizes: every stress test multiplies its size by RBUS_STRESS_SCALE
# and prints the sizes it used. Plain runs use 1 (or what you export);
# sanitizer runs are 5-15x slower, so they use RBUS_ASAN_SCALE (default 0.2)
# and RBUS_TSAN_SCALE (default 0.05).
set -euo pipefail
cd "$(dirname "$0")/.."
# zmq, nng and glib: the bench's peers (smoke-tested); prometheus: promtool, which
# checks rbus_stats_prometheus's output (test_prometheus); doxygen: the API
# reference, which must document every public declaration; libnats-dev and
# nats-server: the NATS bridge and the server its tests run against;
# relacy-dev: the ring's model check (tests/model).
scripts/deps.sh libzmq3-dev libnng-dev libglib2.0-dev prometheus doxygen libnats-dev nats-server relacy-dev

jobs=$(nproc 2>/dev/null || echo 2)
plain_scale=${RBUS_STRESS_SCALE:-1}
asan_scale=${RBUS_ASAN_SCALE:-0.2}
tsan_scale=${RBUS_TSAN_SCALE:-0.05}
valgrind_scale=${RBUS_VALGRIND_SCALE:-0.02}
fuzz_seconds=${RBUS_FUZZ_SECONDS:-60}
only=${RBUS_TEST_ONLY:-format plain asan tsan valgrind fuzz}
status=0

run() { # name scale cmake-args...
  local name=$1 scale=$2; shift 2
  local dir=build-test-$name t0=$SECONDS
  echo "=== $name build (RBUS_STRESS_SCALE=$scale) ==="
  cmake -S . -B "$dir" -DRBUS_WERROR=ON -DRBUS_BUILD_BENCH=ON -DRBUS_BUILD_EXAMPLES=ON "$@" >/dev/null
  cmake --build "$dir" -j"$jobs" >"$dir.build.log" 2>&1 || { cat "$dir.build.log"; echo "=== $name: BUILD FAILED ==="; status=1; return; }
  echo "=== $name: built in $((SECONDS - t0)) s ==="
  if [ "$name" = plain ]; then
    if cmake --build "$dir" --target docs; then
      echo "=== docs: API reference built, every public declaration documented ==="
    else
      echo "=== docs: FAILED (undocumented public declaration?) ==="; status=1
    fi
  fi
  if RBUS_STRESS_SCALE=$scale ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 900; then
    echo "=== $name: all tests passed ==="
  else
    echo "=== $name: TESTS FAILED ==="; status=1
  fi
}

t_all=$SECONDS
for v in $only; do
  t_v=$SECONDS
  case $v in
    format)
      # The lines HEAD's last commit changed, as .clang-format says.
      if scripts/check-format.sh; then
        echo "=== format: the last commit's C lines are formatted ==="
      else
        echo "=== format: FAILED ==="; status=1
      fi ;;
    plain) CC=gcc CXX=g++ run plain "$plain_scale" -DCMAKE_BUILD_TYPE=RelWithDebInfo ;;
    asan)
      export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
      export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
      # With the misuse checks (RBUS_CHECKED): test_misuse expects aborts.
      CC=clang CXX=clang++ run asan "$asan_scale" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRBUS_SANITIZE=address \
        -DRBUS_CHECKED=ON ;;
    tsan)
      export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp"
      CC=clang CXX=clang++ run tsan "$tsan_scale" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRBUS_SANITIZE=thread ;;
    valgrind)
      echo "=== valgrind memcheck (RBUS_STRESS_SCALE=$valgrind_scale) ==="
      if RBUS_STRESS_SCALE=$valgrind_scale scripts/valgrind.sh; then
        echo "=== valgrind: every test clean ==="
      else
        echo "=== valgrind: FAILED ==="; status=1
      fi ;;
    fuzz)
      # Both libFuzzer targets, side by side, for RBUS_FUZZ_SECONDS each.
      dir=build-test-fuzz
      echo "=== fuzz: fuzz_topic and fuzz_api, ${fuzz_seconds} s each ==="
      if ! CC=clang CXX=clang++ cmake -S . -B "$dir" -DRBUS_FUZZ=ON -DRBUS_FUZZ_SECONDS="$fuzz_seconds" \
             -DRBUS_WERROR=ON -DRBUS_BUILD_TESTS=OFF -DRBUS_BUILD_BENCH=OFF \
             -DRBUS_BUILD_EXAMPLES=OFF >/dev/null ||
         ! cmake --build "$dir" -j"$jobs" >"$dir.build.log" 2>&1; then
        tail -30 "$dir.build.log"; echo "=== fuzz: BUILD FAILED ==="; status=1
      elif ctest --test-dir "$dir" -L fuzz -j2 --output-on-failure -V >"$dir.log" 2>&1; then
        grep -E "number_of_executed_units|average_exec_per_sec|Passed|tests passed" "$dir.log" || true
        echo "=== fuzz: no finding ==="
      else
        tail -80 "$dir.log"; echo "=== fuzz: FAILED (log $dir.log) ==="; status=1
      fi ;;
    *) echo "unknown variant $v"; exit 2 ;;
  esac
  echo "=== $v: $((SECONDS - t_v)) s ==="
done
echo "=== total: $((SECONDS - t_all)) s (after installing what was missing) ==="
[ $status -eq 0 ] && echo "test.sh: every variant passed ($only)" || echo "test.sh: FAILURES (see above)"
exit $status
