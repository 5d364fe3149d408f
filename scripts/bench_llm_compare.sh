#!/usr/bin/env bash
# Alternate `distillrec bench llm` and the PyTorch reference N times (default 3)
# in the same session and print each RESULT line plus the medians.
#   scripts/bench_llm_compare.sh <distillrec binary> <model.gguf> [runs] [tokens]
set -euo pipefail
bin="$1"; model="$2"; runs="${3:-3}"; tokens="${4:-128}"
py="${PYTHON:-/work/torchenv/bin/python}"
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mktemp)"; trap 'rm -f "$out"' EXIT
for i in $(seq "$runs"); do
  echo "# run $i, load: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$bin" bench llm --model "$model" --tokens "$tokens" | tee -a "$out"
  "$py" "$here/bench_llm_torch.py" --gguf "$model" --tokens "$tokens" 2>/dev/null | grep '^RESULT' | tee -a "$out"
done
"$py" - "$out" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    for k in ("prefill_tok_s", "train_tok_s"):
        rows.setdefault((kv["impl"], k), []).append(float(kv[k]))
for (impl, k), v in sorted(rows.items()):
    print(f"median {impl:10s} {k:14s} {statistics.median(v):8.1f}  (runs: {', '.join(f'{x:.1f}' for x in v)})")
PY
