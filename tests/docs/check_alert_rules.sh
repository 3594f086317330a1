#!/bin/sh
# The Prometheus alert rules docs/guide.md shows ("Is it keeping up?") are
# valid rules: extracted from the page, indented into a rule group, and
# checked by `promtool check rules` (skipped, exit 77, without promtool).
set -eu
guide=$1
command -v promtool >/dev/null 2>&1 || { echo "promtool not installed: skipped"; exit 77; }
tmp=$(mktemp /tmp/rbus-rules-XXXXXX.yml)
trap 'rm -f "$tmp"' EXIT
{
  echo "groups:"
  echo "- name: ringbus"
  echo "  rules:"
  # The first yaml block of the page, de-indented from the list item.
  awk '/^  ```yaml$/ {on=1; next} on && /^  ```$/ {exit} on {sub(/^  /, ""); print "  " $0}' "$guide"
} >"$tmp"
n=$(grep -c -- '- alert:' "$tmp" || true)
[ "$n" -ge 1 ] || { echo "no alert rules found in $guide"; exit 1; }
promtool check rules "$tmp"
