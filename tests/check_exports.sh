#!/bin/sh
# Fails when the shared library exports a symbol that is not public API:
# every defined dynamic symbol must be rbus_* (rbus__* is internal by
# naming convention). With a version node given, every rbus_* symbol must
# also carry it, which shows the version script was applied.
# usage: check_exports.sh NM LIBRARY [VERSION_NODE]
set -eu
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 NM LIBRARY [VERSION_NODE]" >&2
  exit 2
fi
nm=$1 lib=$2 node=${3:-}

echo "+ $nm -D --defined-only $lib"
# A temporary file, not a pipe, so that a failing nm fails the test.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$nm" -D --defined-only "$lib" >"$out"

checked=0 bad=0 public=0
while read -r addr type name rest; do
  [ -n "${name:-}" ] || { name=$type type=$addr; }
  base=${name%%@*}
  if [ "$type" = A ] && [ -n "$node" ] && [ "$base" = "$node" ]; then
    echo "  version node $name (ignored)"
    continue
  fi
  checked=$((checked + 1))
  case $base in
    rbus__*) echo "  OFFENDER (internal name): $type $name"; bad=$((bad + 1)) ;;
    rbus_*)
      public=$((public + 1))
      if [ -n "$node" ] && [ "$name" = "$base" ]; then
        echo "  OFFENDER (no version $node): $type $name"; bad=$((bad + 1))
      elif [ -n "$node" ] && [ "${name#*@}" != "@$node" ]; then
        echo "  OFFENDER (version is not $node): $type $name"; bad=$((bad + 1))
      else
        echo "  ok $type $name"
      fi ;;
    *) echo "  OFFENDER (not rbus_*): $type $name"; bad=$((bad + 1)) ;;
  esac
done <"$out"

echo "checked $checked defined dynamic symbols: $public rbus_*, $bad offenders"
if [ "$public" -eq 0 ]; then
  echo "FAIL: no rbus_* symbol at all; is this the right library?" >&2
  exit 1
fi
# A few functions by name, so that a library exporting some other rbus_*
# set is caught too: the first and the newest additions to the API.
for fn in rbus_version rbus_strerror rbus_last_error_detail; do
  if ! grep -Eq " $fn(@|\$)" "$out"; then
    echo "FAIL: $fn is not exported" >&2
    exit 1
  fi
done
[ "$bad" -eq 0 ] || { echo "FAIL: $bad symbols outside the API" >&2; exit 1; }
echo "PASS"
