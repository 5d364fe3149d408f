#!/usr/bin/env bash
# Alternate a distillrec student benchmark and its PyTorch reference, `runs`
# times (default 3), in one session, then print a Markdown table of medians:
#   student  `<bin> bench student` vs ../shared/bench/torch_sasrec_step.py
#   distill  `<bin> bench distill` vs scripts/bench_distill_torch.py
#            (both: for each run, for each case objective last/all_positions
#            x heads 1/2: distillrec, then pytorch)
#   eval     `<bin> bench eval` vs scripts/bench_eval_torch.py (extra args
#            must include --data DIR; for each run: distillrec, then pytorch)
# Extra arguments go unchanged to both (e.g. --items 300 --batch 16 --steps 2;
# distill overrides as --set distill.alpha=0, which both accept). Table:
#   speed  = steps_per_s (rows_per_s) distillrec / torch (>1: distillrec faster)
#   memory = peak_rss_mb distillrec / torch              (<1: distillrec smaller)
#
#   scripts/bench_student_compare.sh <distillrec binary> <student|distill|eval> [runs=3] [extra args...]
#
# PYTHON selects the interpreter (default /work/torchenv/bin/python); TORCH_STEP
# the student reference (default ../shared/bench/torch_sasrec_step.py beside the repo).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
bin="$1"; what="$2"; runs="${3:-3}"
shift $(( $# < 3 ? $# : 3 ))
py="${PYTHON:-/work/torchenv/bin/python}"
here="$(cd "$(dirname "$0")" && pwd)"
case "$what" in
  student) ref="${TORCH_STEP:-$here/../../shared/bench/torch_sasrec_step.py}" ;;
  distill) ref="$here/bench_distill_torch.py" ;;
  eval) ref="$here/bench_eval_torch.py" ;;
  *) echo "what must be student, distill or eval, not '$what'" >&2; exit 2 ;;
esac
[ -f "$ref" ] || { echo "PyTorch reference not found: $ref" >&2; exit 2; }
out="$(mktemp)"; log="$(mktemp)"; err="$(mktemp)"; trap 'rm -f "$out" "$log" "$err"' EXIT

# shellcheck source=bench_run.sh
. "$here/bench_run.sh"

for i in $(seq "$runs"); do
  if [ "$what" = eval ]; then
    run "run $i eval distillrec" "$bin" bench eval "$@"
    run "run $i eval pytorch" "$py" "$ref" "$@"
  else
    for objective in last all_positions; do
      for heads in 1 2; do
        run "run $i $objective heads=$heads distillrec" "$bin" bench "$what" --objective "$objective" --heads "$heads" "$@"
        run "run $i $objective heads=$heads pytorch" "$py" "$ref" --objective "$objective" --heads "$heads" "$@"
      done
    done
  fi
done

echo
"$py" - "$out" "$what" <<'PY'
import statistics, sys

IMPLS = ("distillrec", "torch")
CONFIG = ("rows", "items", "len", "batch", "k", "teacher_dim", "lambda", "alpha", "ed_weight")
what = sys.argv[2]
speed = "rows_per_s" if what == "eval" else "steps_per_s"

runs = {}  # (case, impl) -> list of {key: value}
for line in open(sys.argv[1]):
    kv = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
    if "impl" not in kv:
        continue
    case = "eval" if kv.get("bench") == "eval" else f"{kv.get('objective', '?')} h={kv.get('heads', '?')}"
    runs.setdefault((case, kv["impl"]), []).append(kv)

def median(case, impl, key):
    vals = [float(r[key]) for r in runs.get((case, impl), []) if key in r]
    return statistics.median(vals) if vals else None

def fmt(x, digits=1):
    return "n/a" if x is None else f"{x:.{digits}f}"

def ratio(case, key):
    d, t = median(case, "distillrec", key), median(case, "torch", key)
    return None if d is None or not t else d / t

order = ["last h=1", "last h=2", "all_positions h=1", "all_positions h=2", "eval"]
cases = [c for c in order if any(k[0] == c for k in runs)]
cases += sorted({k[0] for k in runs} - set(cases))
head = (["case", "config", "runs d/t"] + [f"{speed} {i}" for i in IMPLS] + ["speed"]
        + [f"peak_rss_mb {i}" for i in IMPLS] + ["memory"])
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---" for _ in head) + "|")
notes = []
for c in cases:
    # the config keys both impls print (torch_sasrec_step.py has no k, lambda, ...)
    first = {i: runs[(c, i)][0] for i in IMPLS if runs.get((c, i))}
    keys = [k for k in CONFIG if all(k in r for r in first.values())]
    configs = {i: tuple(r[k] for k in keys) for i, r in first.items()}
    if len(set(configs.values())) > 1:
        notes.append(f"{c}: configs differ: " + "; ".join(
            f"{i} " + " ".join(f"{k}={v}" for k, v in zip(keys, cfg)) for i, cfg in configs.items()))
    cfg = next(iter(configs.values()), ())
    config = " ".join(f"{k}={v}" for k, v in zip(keys, cfg)) or "n/a"
    n = "/".join(str(len(runs.get((c, i), []))) for i in IMPLS)
    digits = 1 if what == "eval" else 3
    cells = ([fmt(median(c, i, speed), digits) for i in IMPLS] + [fmt(ratio(c, speed), 2)]
             + [fmt(median(c, i, "peak_rss_mb"), 0) for i in IMPLS] + [fmt(ratio(c, "peak_rss_mb"), 2)])
    print("| " + " | ".join([c, config, n] + cells) + " |")
for n in notes:
    print(f"\nwarning: {n}")
PY
