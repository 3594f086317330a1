#!/usr/bin/env bash
# Checks the formatting (.clang-format) of the C files a change touched:
# clang-format --dry-run --Werror on the lines that HEAD's last commit
# changed, or on those changed between BASE and HEAD when a base revision
# is given. Only changed lines are checked, because existing code is
# hand-wrapped and is not reformatted wholesale; set RBUS_FORMAT_WHOLE=1 to
# check the touched files whole. Deleted files are skipped. Installs
# clang-format (scripts/deps.sh) if it is missing. Exits 1 on any finding.
#
#   scripts/check-format.sh            # what HEAD's last commit changed
#   scripts/check-format.sh main       # everything since main
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || scripts/deps.sh clang-format
command -v git >/dev/null || scripts/deps.sh git
# The diff is read through process substitutions, whose failures the loops
# below would not see: make sure git can read this checkout first.
git rev-parse --verify -q HEAD >/dev/null || { echo "check-format: not a git checkout with a HEAD"; exit 2; }

if [ $# -gt 0 ]; then
  range=("$1" HEAD)
  git rev-parse --verify -q "$1^{commit}" >/dev/null || { echo "check-format: no revision '$1'"; exit 2; }
else
  # --root makes the first commit of a repository work too.
  range=(--root HEAD)
fi
changed() { # the diff of the selected range, C files only, deletions left out
  if [ "${range[0]}" = --root ]; then
    git diff-tree -r -p --root --no-commit-id --diff-filter=d -U0 HEAD -- "$@"
  else
    git diff --diff-filter=d -U0 "${range[@]}" -- "$@"
  fi
}

status=0 checked=0
while IFS= read -r file; do
  [ -n "$file" ] || continue
  args=()
  if [ "${RBUS_FORMAT_WHOLE:-0}" != 1 ]; then
    # Hunk headers "@@ -a,b +c,d @@": lines c .. c+d-1 of the new file
    # (d is 1 when left out; 0 means the hunk only deleted lines).
    while read -r start count; do
      [ "$count" -gt 0 ] && args+=("--lines=$start:$((start + count - 1))")
    done < <(changed "$file" | sed -nE 's/^@@ -[0-9,]+ \+([0-9]+)(,([0-9]+))? @@.*/\1 \3/p' |
             awk '{ print $1, ($2 == "" ? 1 : $2) }')
    [ ${#args[@]} -gt 0 ] || continue
  fi
  checked=$((checked + 1))
  clang-format --dry-run --Werror "${args[@]}" "$file" || status=1
done < <(changed '*.c' '*.h' | sed -nE 's|^\+\+\+ b/(.*)|\1|p')

if [ $status -eq 0 ]; then
  echo "check-format: $checked file(s) checked, formatted as .clang-format says"
else
  echo "check-format: run clang-format -i on the files above (or fix the lines it names)"
fi
exit $status
