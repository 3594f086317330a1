#!/usr/bin/env bash
# A/B performance comparison of two revisions of ringbus on this machine.
# Absolute figures on a shared machine swing by 2-4x between runs, so the
# two builds run alternately, round after round (A B, B A, A B, ...), and the
# output is the ratio of their medians rather than either figure alone.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/ab.sh [--rounds N] [--quick] [--csv FILE] [--scratch DIR] BASE_REV [NEW_REV]
       scripts/ab.sh --report FILE

Builds BASE_REV (side A) and NEW_REV (side B) in Release, then runs, in each
of N rounds (default 5, order A B, B A, A B, ...), on each side:
  ringbus-bench peers --messages 100000   (ringbus rows only are compared:
                                           msg/s of 1->1, 1->4, 2->1; p50,
                                           p99, p99.9 of the 4 latency runs)
  overload_cost                           (ns per publish, 3 policies)
  keyed_publish --drain inline            (ns per publish with and without an
                                           idempotency key, and their ratio;
                                           left out where a side lacks it)
Prints per metric the median and min-max of each side over the rounds and
B/A; "slower" marks a change beyond 5% in the bad direction (rates: lower,
ns: higher), "faster" one beyond 5% in the good direction.

  BASE_REV       any git revision (HEAD~3, a hash, a branch)
  NEW_REV        a git revision; default: the working tree as it is,
                 uncommitted changes included
  --rounds N     rounds (default 5)
  --quick        short runs (peers --messages 2000, overload_cost 200000 x 3,
                 keyed_publish 100000 x 3)
                 for a smoke test: a few minutes in all
  --csv FILE     every round's figures (default results/ab.csv)
  --scratch DIR  worktrees, builds and raw outputs (default build-ab)
  --report FILE  only print the table of an earlier run's CSV (no builds)
  -h, --help     this text

A round's peers figure is the median of the 5 repetitions peers runs
internally; every run's own output stays in DIR/runs/.
EOF
}

# The summary table of a CSV written by a run: medians, ranges, B/A.
report_table() {
awk -F, '
  function sortk(k,   n, i, j, t) {
    n = cnt[k]; for (i = 1; i <= n; i++) a[i] = val[k, i]
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n
  }
  function stats(k,   n) { n = sortk(k); lo = a[1]; hi = a[n]
                           md = n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function f(x) { if (u == "ratio") return sprintf("%.2f", x)
                  return sc != 1 ? sprintf("%.3f", x * sc) : sprintf(x < 1000 ? "%.1f" : "%.0f", x) }
  /^#/ || $1 == "round" { next }
  { m = $3; if (!(m in unit)) { order[++nm] = m; unit[m] = $4; bet[m] = $5 }
    k = m SUBSEP $2; val[k, ++cnt[k]] = $6 }
  END {
    printf "%-36s %-10s %-6s %9s %-17s %9s %-17s %6s %s\n", "metric", "unit", "better",
           "A median", "A min-max", "B median", "B min-max", "B/A", "note"
    for (i = 1; i <= nm; i++) {
      m = order[i]; u = unit[m]; sc = u == "msg/s" ? 1e-6 : 1; if (sc != 1) u = "M msg/s"
      if (!cnt[m, "A"] || !cnt[m, "B"]) { printf "%-36s %-10s (missing on one side)\n", m, u; continue }
      stats(m SUBSEP "A"); ma = md; ra = f(lo) "-" f(hi)
      stats(m SUBSEP "B"); mb = md; rb = f(lo) "-" f(hi)
      ratio = ma > 0 ? mb / ma : 0; note = ""
      if (ma > 0 && bet[m] == "higher") note = ratio < 0.95 ? "slower" : ratio > 1.05 ? "faster" : ""
      if (ma > 0 && bet[m] == "lower") note = ratio > 1.05 ? "slower" : ratio < 0.95 ? "faster" : ""
      printf "%-36s %-10s %-6s %9s %-17s %9s %-17s %6.3f %s\n", m, u, bet[m], f(ma), ra, f(mb), rb, ratio, note
    }
  }' "$1"
}

die_usage() { echo "ab.sh: $*" >&2; usage >&2; exit 2; }

rounds=5 quick=0 csv="" scratch="" report="" revs=()
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --rounds) [ $# -ge 2 ] || die_usage "--rounds needs a value"
              [[ $2 =~ ^[1-9][0-9]*$ ]] || die_usage "bad --rounds: $2"
              rounds=$2; shift ;;
    --quick) quick=1 ;;
    --csv) [ $# -ge 2 ] || die_usage "--csv needs a value"; csv=$2; shift ;;
    --scratch) [ $# -ge 2 ] || die_usage "--scratch needs a value"; scratch=$2; shift ;;
    --report) [ $# -ge 2 ] || die_usage "--report needs a value"; report=$2; shift ;;
    -*) die_usage "unknown option $1" ;;
    *) revs+=("$1") ;;
  esac
  shift
done
if [ -n "$report" ]; then
  [ -r "$report" ] || die_usage "cannot read $report"
  report_table "$report"
  exit 0
fi
[ ${#revs[@]} -ge 1 ] && [ ${#revs[@]} -le 2 ] || die_usage "give BASE_REV and optionally NEW_REV"

# Paths given are relative to the caller's cwd; the defaults are in the repo.
case $csv in ""|/*) ;; *) csv=$PWD/$csv ;; esac
case $scratch in ""|/*) ;; *) scratch=$PWD/$scratch ;; esac
cd "$(dirname "$0")/.."
repo=$PWD csv=${csv:-$PWD/results/ab.csv} scratch=${scratch:-$PWD/build-ab}

if [ $quick = 1 ]; then
  peers_args=(--messages 2000) cost_args=(--messages 200000 --reps 3)
  keyed_args=(--messages 100000 --reps 3)
else
  # peers' own default (200000-500000 per run) takes ~3 min a run: 30 min
  # for 5 rounds of two sides. 100000 keeps a run near one minute.
  peers_args=(--messages 100000) cost_args=() keyed_args=()
fi

# A fresh Debian 12 box may lack the toolchain, ck (needed) or libzmq/GLib
# (without them peers leaves those peers out); deps.sh installs them.
if ! command -v cmake >/dev/null || ! pkg-config --exists ck libzmq glib-2.0 2>/dev/null; then
  scripts/deps.sh libzmq3-dev libglib2.0-dev
fi

commit_of() {
  git -C "$repo" rev-parse --verify --quiet "$1^{commit}" || die_usage "not a revision: $1"
}
sha_a=$(commit_of "${revs[0]}")
if [ ${#revs[@]} = 2 ]; then
  sha_b=$(commit_of "${revs[1]}") label_b="${revs[1]} (${sha_b:0:10})"
else
  sha_b="" label_b="working tree (HEAD $(git rev-parse --short=10 HEAD)$(
    git diff --quiet HEAD -- 2>/dev/null || echo ' + uncommitted'))"
fi
label_a="${revs[0]} (${sha_a:0:10})"

mkdir -p "$scratch/runs"
worktrees=()
cleanup() {
  for w in ${worktrees[@]+"${worktrees[@]}"}; do
    git -C "$repo" worktree remove --force "$w" 2>/dev/null || rm -rf "$w"
  done
  git -C "$repo" worktree prune 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# build SIDE SHA: a detached worktree of SHA (none for the working tree),
# built in its own directory so the two sides never share objects.
build() {
  local side=$1 sha=$2 src=$repo
  if [ -n "$sha" ]; then
    src=$scratch/src-$side
    # A run that was killed hard can leave its worktree registered.
    git -C "$repo" worktree remove --force "$src" 2>/dev/null || rm -rf "$src"
    git -C "$repo" worktree prune
    git -C "$repo" worktree add --detach --quiet "$src" "$sha"
    worktrees+=("$src")
  fi
  # A build dir configured from the other kind of source (working tree vs
  # worktree) is refused by cmake: start it afresh.
  grep -qsxF "CMAKE_HOME_DIRECTORY:INTERNAL=$src" "$scratch/build-$side/CMakeCache.txt" ||
    rm -rf "$scratch/build-$side"
  echo "ab: building $side in $scratch/build-$side" >&2
  cmake -S "$src" -B "$scratch/build-$side" -DCMAKE_BUILD_TYPE=Release \
    -DRBUS_BUILD_TESTS=OFF -DRBUS_BUILD_EXAMPLES=OFF -DRBUS_BUILD_BENCH=ON \
    >"$scratch/build-$side.log" 2>&1 &&
  cmake --build "$scratch/build-$side" -j"$(nproc 2>/dev/null || echo 2)" \
    --target ringbus-bench overload_cost >>"$scratch/build-$side.log" 2>&1 ||
    { echo "ab: build of $side failed, see $scratch/build-$side.log" >&2; exit 1; }
  # Older revisions have no keyed_publish: that side then has no such rows.
  cmake --build "$scratch/build-$side" --target keyed_publish >>"$scratch/build-$side.log" 2>&1 ||
    echo "ab: $side has no keyed_publish" >&2
}
build A "$sha_a"
build B "$sha_b"

# run SIDE ROUND: appends "round,side,metric,unit,better,value" lines.
run() {
  local side=$1 round=$2 out=$scratch/runs/r$2-$1 bin=$scratch/build-$1/bench
  rm -rf "$out"; mkdir -p "$out"
  # A failed peer (a ZeroMQ time-out, say) makes peers exit 1; its ringbus
  # rows are still good, so go on and let missing rows show as gaps.
  "$bin/ringbus-bench" peers "${peers_args[@]}" --out "$out" >"$out/peers.txt" 2>&1 ||
    echo "ab: round $round $side: peers exited $? (see $out/peers.txt)" >&2
  # No CSV from peers' table, but peers.csv has every repetition: take the
  # ringbus rows' median per scenario (mawk has no asort: insertion sort).
  awk -F, -v r="$round" -v s="$side" '
    function med(k,   n, i, j, t, a) {
      n = cnt[k]; for (i = 1; i <= n; i++) a[i] = val[k, i]
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function add(k, u, b, v) { if (!(k in cnt)) { order[++nk] = k; unit[k] = u; bet[k] = b }
                               val[k, ++cnt[k]] = v }
    /^#/ || $1 == "rep" || $3 != "ringbus" || $13 != "ok" { next }
    # peers can print "inf" msg/s (its ringbus t0 is read after the barrier
    # by a thread that may run late): a failed repetition, not a figure.
    $9 !~ /^[0-9.]+$/ { printf "ab: round %s %s: ringbus %s rep %s is %s, left out\n", r, s, $2, $1, $9 > "/dev/stderr"; next }
    $10 == "msgs_per_s" { add("peers " $2, "msg/s", "higher", $9); next }
    { add("peers " $2 " p50", "ns", "lower", $9)
      add("peers " $2 " p99", "ns", "lower", $11)
      add("peers " $2 " p99.9", "ns", "lower", $12) }
    END { for (i = 1; i <= nk; i++) printf "%s,%s,%s,%s,%s,%.1f\n", r, s, order[i], unit[order[i]], bet[order[i]], med(order[i]) }
  ' "$out/peers.csv" >>"$csv" || true
  # overload_cost prints only a table: policy name (may hold spaces), then
  # median, min, max; the median is the figure.
  "$bin/overload_cost" ${cost_args[@]+"${cost_args[@]}"} >"$out/overload_cost.txt" 2>&1 ||
    echo "ab: round $round $side: overload_cost exited $?" >&2
  awk -v r="$round" -v s="$side" '
    $1 == "policy" && $2 == "ns_median" { t = 1; next }
    t && NF >= 4 { n = $1; for (i = 2; i <= NF - 3; i++) n = n " " $i
                   printf "%s,%s,overload_cost %s,ns/publish,lower,%s\n", r, s, n, $(NF - 2) }
  ' "$out/overload_cost.txt" >>"$csv"
  # keyed_publish's figure line: "median (drain inline): unkeyed X ns,
  # keyed Y ns, keyed/unkeyed R (...".
  [ -x "$bin/keyed_publish" ] || return 0
  "$bin/keyed_publish" --drain inline ${keyed_args[@]+"${keyed_args[@]}"} \
    >"$out/keyed_publish.txt" 2>&1 || echo "ab: round $round $side: keyed_publish exited $?" >&2
  awk -v r="$round" -v s="$side" '
    $1 == "median" && $2 == "(drain" {
      printf "%s,%s,keyed_publish unkeyed,ns/publish,lower,%s\n", r, s, $5
      printf "%s,%s,keyed_publish keyed,ns/publish,lower,%s\n", r, s, $8
      printf "%s,%s,keyed_publish keyed/unkeyed,ratio,lower,%s\n", r, s, $11 }
  ' "$out/keyed_publish.txt" >>"$csv"
}

mkdir -p "$(dirname "$csv")"
{ echo "# A = $label_a; B = $label_b; $(date -u +%FT%TZ); quick=$quick"
  echo "round,side,metric,unit,better,value"; } >"$csv"
started=$(date +%s)
for ((r = 1; r <= rounds; r++)); do
  # Alternate who goes first so a slow drift of the machine hits both sides.
  if (( r % 2 )); then order="A B"; else order="B A"; fi
  for side in $order; do
    echo "ab: round $r/$rounds: $side ($(( $(date +%s) - started )) s)" >&2
    run "$side" "$r"
  done
done
secs=$(( $(date +%s) - started ))

echo "A = $label_a"
echo "B = $label_b"
echo "$rounds rounds$([ $quick = 1 ] && echo ' (--quick)'), ${secs} s of runs; per round: peers figures are the median of its 5 repetitions"
echo "B/A: > 1 means B is higher; rates: higher is better, ns: lower is better"
report_table "$csv"
echo "every round: $csv; raw outputs: $scratch/runs/"
