#!/usr/bin/env bash
# Check a kernel .config against docker-required.txt (moby check-config.sh's list plus
# what the vmctl guest needs). Exits 1 naming every option that is not built in.
# Usage: check-config.sh path/to/.config
set -euo pipefail
config="${1:?usage: check-config.sh .config}"
list="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/docker-required.txt"
[ -r "$config" ] || { echo "error: cannot read $config" >&2; exit 2; }
missing=()
while read -r opt _; do
  case "$opt" in ''|'#'*) continue ;; esac
  grep -qx "CONFIG_$opt=y" "$config" || missing+=("CONFIG_$opt")
done < "$list"
if [ "${#missing[@]}" -gt 0 ]; then
  for m in "${missing[@]}"; do
    echo "missing: $m ($(grep -E "^(# )?$m[= ]" "$config" || echo 'not in .config'))" >&2
  done
  echo "kernel config check FAILED: ${#missing[@]} option(s) missing" >&2
  exit 1
fi
echo "kernel config check: all $(grep -cvE '^(#|$)' "$list") options built in"
