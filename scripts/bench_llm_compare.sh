#!/usr/bin/env bash
# Alternate `distillrec bench llm` and the PyTorch reference (bench_llm_torch.py)
# on the LLM steps, `runs` times (default 3), in one session:
#   for each run, for each step in $STEPS: distillrec, then pytorch.
# STEPS (default "lm teacher:ranking teacher:generative infer:ranking
# infer:generative") names step:objective pairs; for the teacher steps
# distillrec writes its inputs and initial weights with --dump and the
# reference computes the same step on them (the first run's teacher steps
# also pass --check: both losses of the first two steps must agree).
# Extra arguments go unchanged to both (e.g. --tokens 64 --threads 2); each
# invocation's RESULT line is printed, then a Markdown table of the medians
# over runs per step and impl, with
#   speed  = tok_s(distillrec) / tok_s(pytorch)     (>1: distillrec faster)
#   memory = peak_mb(distillrec) / peak_mb(pytorch) (<1: distillrec smaller)
#
#   scripts/bench_llm_compare.sh <distillrec binary> <model.gguf> [runs=3] [extra args...]
#
# PYTHON selects the interpreter of the reference (default /work/torchenv/bin/python).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
bin="$1"; gguf="$2"; runs="${3:-3}"
shift $(( $# < 3 ? $# : 3 ))
py="${PYTHON:-/work/torchenv/bin/python}"
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mktemp)"; log="$(mktemp)"; err="$(mktemp)"; dumps="$(mktemp -d)"
trap 'rm -rf "$out" "$log" "$err" "$dumps"' EXIT
steps="${STEPS:-lm teacher:ranking teacher:generative infer:ranking infer:generative}"

# shellcheck source=bench_run.sh
. "$here/bench_run.sh"

for i in $(seq "$runs"); do
  for pair in $steps; do
    step="${pair%%:*}"; obj="${pair#*:}"
    if [ "$step" = lm ]; then
      run "run $i lm distillrec" "$bin" bench llm --model "$gguf" --step lm "$@"
      run "run $i lm pytorch" "$py" "$here/bench_llm_torch.py" --gguf "$gguf" --step lm "$@"
      continue
    fi
    dump="$dumps/$step-$obj.safetensors"; rm -f "$dump"
    check=(); [ "$i" = 1 ] && [ "$step" = teacher ] && check=(--check)
    run "run $i $pair distillrec" "$bin" bench llm --model "$gguf" --step "$step" --objective "$obj" --dump "$dump" "$@"
    run "run $i $pair pytorch" "$py" "$here/bench_llm_torch.py" --gguf "$gguf" --step "$step" --dump "$dump" "${check[@]}" "$@"
    grep '^CHECK' "$log" || true
  done
done

echo
"$py" - "$out" <<'PY'
import statistics, sys

IMPLS = ("distillrec", "pytorch")
METRICS = ("step_ms", "tok_s", "rows_s", "peak_mb")
CONFIG = ("batch", "tokens", "adapter", "experts", "rank", "targets", "threads", "items", "prompt_tokens")

runs = {}  # (step, impl) -> list of {key: value}
for line in open(sys.argv[1]):
    kv = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
    if "step" in kv and "impl" in kv:
        step = kv["step"] + (":" + kv["objective"] if "objective" in kv else "")
        runs.setdefault((step, kv["impl"]), []).append(kv)

def median(step, impl, key):
    vals = [float(r[key]) for r in runs.get((step, impl), []) if key in r]
    return statistics.median(vals) if vals else None

def fmt(x, digits=1):
    return "n/a" if x is None else f"{x:.{digits}f}"

def ratio(step, key):
    d, p = median(step, "distillrec", key), median(step, "pytorch", key)
    return None if d is None or not p else d / p

ORDER = ("lm", "teacher:ranking", "teacher:generative", "infer:ranking", "infer:generative")
steps = [s for s in ORDER if any(k[0] == s for k in runs)]
steps += sorted({k[0] for k in runs} - set(steps))
head = ["step", "config", "runs d/p"] + [f"{m} {i}" for m in METRICS for i in IMPLS] + ["speed", "memory"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---" for _ in head) + "|")
notes = []
for s in steps:
    configs = {i: tuple(r.get(k, "?") for k in CONFIG) for i in IMPLS for r in runs.get((s, i), [])[:1]}
    if len(set(configs.values())) > 1:
        notes.append(f"{s}: configs differ: " + "; ".join(
            f"{i} " + " ".join(f"{k}={v}" for k, v in zip(CONFIG, c)) for i, c in configs.items()))
    c = next(iter(configs.values()), None)
    config = "n/a" if c is None else "B={} T={} {} E={} r={} {} th={} N={} prompt={}".format(*c)
    n = "/".join(str(len(runs.get((s, i), []))) for i in IMPLS)
    cells = [fmt(median(s, i, m)) for m in METRICS for i in IMPLS]
    print("| " + " | ".join([s, config, n] + cells + [fmt(ratio(s, "tok_s"), 2), fmt(ratio(s, "peak_mb"), 2)]) + " |")
for n in notes:
    print(f"\nwarning: {n}")
PY
