#!/usr/bin/env bash
# The main job: the drop-policy comparison (a fast publisher against a slow
# subscriber, once per overflow policy), printed as a table. Installs what is
# missing and builds first. Extra arguments go to ringbus-policies
# (--messages N, --work-ns NS, --capacity C).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DRBUS_BUILD_TESTS=OFF \
  -DRBUS_BUILD_EXAMPLES=ON -DRBUS_BUILD_BENCH=ON >/dev/null
cmake --build build-release -j"$jobs" >/dev/null
exec build-release/examples/ringbus-policies "$@"
