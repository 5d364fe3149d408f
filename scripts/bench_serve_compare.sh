#!/usr/bin/env bash
# `distillrec serve` against scripts/serve_torch.py (PyTorch + the standard
# library's threaded HTTP server, one forward pass per request) on the same
# checkpoint, under the same closed-loop load (`distillrec bench serve`),
# alternately, ROUNDS times; prints each run's RESULT lines and, per
# concurrency, the median throughput and p99 of each and their ratios.
# Loopback only.
#
#   scripts/bench_serve_compare.sh <distillrec binary> <checkpoint> [data dir]
#   env: CONCURRENCY=1,8,64 DURATION=10s ROUNDS=3 THREADS=2
#        PYTHON=/work/torchenv/bin/python BODY='{"history": ["1","2","3"], "k": 10}'
set -euo pipefail
bin=${1:?usage: $0 <distillrec binary> <checkpoint> [data dir]}
ckpt=${2:?usage: $0 <distillrec binary> <checkpoint> [data dir]}
data=${3:-}
CONCURRENCY=${CONCURRENCY:-1,8,64}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-/work/torchenv/bin/python}
BODY=${BODY:-'{"history": ["1", "2", "3"], "k": 10}'}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# start NAME CMD...: runs a server in the background of this shell (so the
# exit trap can stop it).
start() {
    local name=$1
    shift
    "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
}

# addr NAME: waits for NAME's "listening on" line and prints its address.
addr() {
    for _ in $(seq 300); do
        grep -q '^listening on ' "$work/$1.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q '^listening on ' "$work/$1.out" || { cat "$work/$1.err" >&2; exit 1; }
    sed -n 's/^listening on //p' "$work/$1.out" | head -1
}

data_args=()
[ -n "$data" ] && data_args=(--data "$data")
start rust "$bin" serve --checkpoint "$ckpt" "${data_args[@]}" --addr 127.0.0.1:0 --threads "$THREADS"
start torch "$PYTHON" "$here/serve_torch.py" --checkpoint "$ckpt" "${data_args[@]}" --addr 127.0.0.1:0 --threads "$THREADS"
rust=$(addr rust)
torch=$(addr torch)
echo "distillrec serve: $rust   serve_torch.py: $torch   concurrency $CONCURRENCY, $DURATION per level, $ROUNDS rounds"

for r in $(seq "$ROUNDS"); do
    for side in rust torch; do
        url=${!side}/recommend
        "$bin" bench serve --url "$url" --concurrency "$CONCURRENCY" --duration "$DURATION" --body "$BODY" |
            sed "s/^RESULT/RESULT side=$side round=$r/" | tee -a "$work/results"
    done
done

python3 - "$work/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    kv = dict(f.split("=", 1) for f in line.split()[1:])
    key = (kv["side"], int(kv["concurrency"]))
    runs.setdefault(key, []).append((float(kv["throughput"].rstrip("/s")), float(kv["p99_ms"]), int(kv["errors"])))
print(f"{'conc':>5} {'rust req/s':>11} {'torch req/s':>12} {'ratio':>6} {'rust p99 ms':>12} {'torch p99 ms':>13} {'errors':>7}")
for c in sorted({c for _, c in runs}):
    rt, tt = runs[("rust", c)], runs[("torch", c)]
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    errs = sum(x[2] for x in rt + tt)
    print(f"{c:>5} {med(rt,0):>11.1f} {med(tt,0):>12.1f} {med(rt,0)/med(tt,0):>6.2f} {med(rt,1):>12.3f} {med(tt,1):>13.3f} {errs:>7}")
PY
