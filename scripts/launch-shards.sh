#!/usr/bin/env bash
# Runs a cache-writing teacher command (`teacher infer` or `teacher
# from-student`) as N shards at once, shard i with `--shard i/N` on GPU i
# (`--device cuda:i`), then joins them by row key with `teacher merge` into
# the command's own `--out`: the merged cache is byte-identical to one run.
#
#   scripts/launch-shards.sh N <distillrec> teacher infer --checkpoint <file> --data <dir> --out <dir> [args...]
#
# DEVICE=cpu runs every shard on the CPU (tests, machines without GPUs).
# Shards are written to <out>.shards/<i> and removed after the merge
# (KEEP_SHARDS=1 keeps them); a failed shard stops the merge and the exit
# code says which.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
n="$1"; shift
case "$n" in
  ''|*[!0-9]*) echo "error: N '$n' is not a positive whole number" >&2; exit 2 ;;
esac
if [ "$n" -lt 1 ]; then
  echo "error: N must be at least 1" >&2; exit 2
fi
bin="$1"; shift
out=""; data=""; args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:-}"; shift 2 || shift; continue ;;
    --out=*) out="${1#--out=}" ;;
    --data) data="${2:-}"; args+=("$1" "${2:-}"); shift 2 || shift; continue ;;
    --data=*) data="${1#--data=}"; args+=("$1") ;;
    --shard|--shard=*|--device|--device=*)
      echo "error: launch-shards.sh sets --shard and --device itself; leave them out" >&2; exit 2 ;;
    *) args+=("$1") ;;
  esac
  shift
done
if [ -z "$out" ] || [ -z "$data" ]; then
  echo "error: the command needs --data <dir> and --out <dir>" >&2; exit 2
fi
shards="$out.shards"
mkdir -p "$shards"
pids=()
for ((i = 0; i < n; i++)); do
  dev="cuda:$i"; [ "${DEVICE:-}" = cpu ] && dev=cpu
  "$bin" "${args[@]}" --shard "$i/$n" --device "$dev" --out "$shards/$i" &
  pids+=("$!")
done
failed=()
for ((i = 0; i < n; i++)); do
  wait "${pids[$i]}" || failed+=("$i")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "error: shard(s) ${failed[*]} of $n failed; the others are in $shards" >&2
  exit 1
fi
parts=()
for ((i = 0; i < n; i++)); do parts+=("$shards/$i"); done
"$bin" teacher merge --data "$data" --out "$out" "${parts[@]}"
if [ "${KEEP_SHARDS:-0}" != 1 ]; then
  rm -rf "$shards"
fi
