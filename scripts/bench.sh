#!/usr/bin/env bash
# The main job: `ringbus-bench policies` — fast publishers against slow
# subscribers, once per overflow policy — printed as a table, with the CSV
# and a plot (gnuplot) written to results/. Installs what is missing
# (gnuplot-nox included) and builds a Release tree first. Extra arguments go
# to ringbus-bench (see `build-release/bench/ringbus-bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh gnuplot-nox libzmq3-dev libnng-dev libglib2.0-dev
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DRBUS_BUILD_TESTS=OFF \
  -DRBUS_BUILD_EXAMPLES=OFF -DRBUS_BUILD_BENCH=ON >/dev/null
cmake --build build-release -j"$jobs" --target ringbus-bench >/dev/null
exec build-release/bench/ringbus-bench policies "$@"
