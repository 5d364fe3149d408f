#!/usr/bin/env bash
# The GPU check of the LLM teacher (issue 29 §7): one prepared script, at
# most 8 minutes on one H100, run from a checkout or from the artefact of
# scripts/check-cuda-build.sh (target/cuda/distillrec-cuda.tar.gz):
#
#   scripts/device-check.sh [RESULTS.json]     (default $OUT/device-check.json,
#                                               else target/device-check/device-check.json)
#
# 1. nvidia-smi, the binary's version; LD_LIBRARY_PATH gets the cu13 libraries
#    of the python3 that holds torch (nvidia/*/lib in its site-packages) when
#    the binary does not find cuBLAS, cuRAND or NVRTC by itself.
# 2. Agreement on a tiny random-weight Llama (scripts/device_check.py tiny),
#    adapters on all seven projections: `bench llm --step teacher` and
#    `--step infer` with `--grads-out` on the CPU in f32 (the reference),
#    then on CUDA in f32 and in bf16; device_check.py compare checks `loss`,
#    every `grad.*` and `scores` (f32: max|a-b|/max|ref| <= 1e-3; bf16: norms
#    within 5e-2, cosine > 0.99).
# 3. Timing on random-weight Llama shapes of 1B (Llama-3.2-1B) and 7B
#    (Llama-2-7B), deploy/configs/*.json: bf16, batch 8 x 256 tokens, MoE-LoRA
#    E 4, r 8 on q,k,v,o,gate,up,down; the teacher step and inference, ours
#    then PyTorch (scripts/bench_llm_torch.py on ours' --dump, random weights
#    of the same shape), alternating, RUNS times; peak GPU memory sampled with
#    nvidia-smi for both; `teacher plan` of the same shape for the predicted
#    memory.
# 4. One results file (JSON: agreement, every RESULT line, plans, speed
#    ratios, each step's share of the 790 TFLOP/s bf16 peak with the FLOPs
#    formula of device_check.py) and a log beside it. Exit status 1 when
#    CPU and CUDA disagree (the results are written all the same).
#
# Environment: DEVICE (cuda, default; `cpu` is a dry run of the plumbing on
# the CPU: the reference twice, the tiny shape for the timing, PyTorch on the
# CPU), DISTILLREC (the binary; default target/cuda/release/distillrec, else
# target/release/distillrec), PYTHON (python3), RUNS (alternations, 2),
# WORK (the scratch folder; default a new one in $TMPDIR), DEADLINE_S (no
# timing run starts after this many seconds, 420), TOTAL_S
# (every timed command is killed at this many seconds, 480), SHAPES (default
# "1b 7b").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
runs=${RUNS:-2}
deadline=${DEADLINE_S:-420}
total=${TOTAL_S:-480}
results=${1:-${OUT:-$root/target/device-check}/device-check.json}
# inputs, dumps and gradients (a 7B dump is hundreds of MB): kept out of the
# results folder, which may be copied back from the GPU machine
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")}
log="${results%.json}.log"
lines="$work/lines.txt"
targets=q,k,v,o,gate,up,down
mkdir -p "$work" "$(dirname "$results")"
: >"$lines"
exec > >(tee "$log") 2>&1

bin=${DISTILLREC:-}
if [ -z "$bin" ]; then
  for b in "$root/target/cuda/release/distillrec" "$root/target/release/distillrec"; do
    [ -x "$b" ] && { bin=$b; break; }
  done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "error: no distillrec binary; set DISTILLREC" >&2
  exit 1
fi
# the dtypes checked against the CPU's f32; the timed dtype, batch and tokens
case $device in
  cuda) dtypes=(f32 bf16) dt=bf16 batch=8 tokens=256 ;;
  cpu) dtypes=(f32) dt=f32 batch=2 tokens=32 ;;
  *) echo "error: DEVICE=$device; use cuda or cpu" >&2; exit 2 ;;
esac

# note LINE: a line for the results file (and the log).
note() { echo "$*" | tee -a "$lines"; }

# find_libs: torch's cu13 libraries on LD_LIBRARY_PATH if the binary misses any.
find_libs() {
  local dirs found
  found=$(ldd "$bin")
  grep -q 'not found' <<<"$found" || return 0
  dirs=$("$py" - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
try:
    import torch
    roots.append(os.path.dirname(os.path.dirname(torch.__file__)))
except ImportError:
    pass
libs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so.*"), recursive=True)})
# the driver's libcuda.so.1, where the loader's cache may not list it
libs += [d for d in ("/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/local/cuda/compat")
         if os.path.exists(os.path.join(d, "libcuda.so.1"))]
print(":".join(libs))
PY
)
  export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "== LD_LIBRARY_PATH += $dirs"
  found=$(ldd "$bin")
  if grep 'not found' <<<"$found"; then
    echo "error: $bin misses the libraries above (the NVIDIA driver's libcuda.so.1; CUDA 13's cuBLAS, cuRAND, cudart)" >&2
    exit 1
  fi
}

header() {
  echo "== $(date -u +%FT%TZ) device-check on $(hostname), DEVICE=$device, binary $bin"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    note "GPU $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
  else
    note "GPU none (nvidia-smi not found)"
  fi
  [ "$device" = cpu ] || find_libs
  echo "== $("$bin" --version); $("$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"
}

# supports FLAG: whether this binary's `bench llm` has FLAG (the help read
# whole: `grep -q` in a pipe can end it early, a failure under pipefail).
supports() {
  local help
  help=$("$bin" bench llm --help)
  grep -q -- "$1" <<<"$help"
}

# grads STEP DEVICE DTYPE OUT: one `bench llm --grads-out` run on the tiny
# backbone; its RESULT line, or a failed AGREE line for the results.
grads() {
  local step=$1 dev=$2 dt=$3 out=$4
  if ! timeout 300 "$bin" bench llm --model "$work/tiny" --tokens 64 --targets "$targets" --repeats 1 \
    --threads 4 --step "$step" --device "$dev" --dtype "$dt" --grads-out "$out" | grep '^RESULT'; then
    note "AGREE label=$step-$device dtype=$dt tensor=ALL ok=0 failed=run-on-$dev"
    agreed=0
    return 1
  fi
}

# agreement: the tiny backbone's teacher step and inference, CPU f32 against
# each CUDA dtype (DEVICE=cpu: against a second CPU run).
agreement() {
  local step dt ref out
  echo "== agreement on a tiny random-weight Llama"
  "$py" "$root/scripts/device_check.py" selftest
  "$py" "$root/scripts/device_check.py" tiny "$work/tiny"
  if ! supports --grads-out; then
    note "SKIPPED agreement: this binary's bench llm has no --grads-out"
    return 0
  fi
  for step in teacher infer; do
    ref=$work/$step-ref.safetensors
    grads "$step" cpu f32 "$ref" || continue
    for dt in "${dtypes[@]}"; do
      out=$work/$step-$device-$dt.safetensors
      grads "$step" "$device" "$dt" "$out" || continue
      "$py" "$root/scripts/device_check.py" compare "$ref" "$out" --dtype "$dt" --label "$step-$device" \
        | tee -a "$lines" | grep -E ' ok=0 |tensor=ALL' || true
      grep -q "label=$step-$device dtype=$dt tensor=ALL ok=1" "$lines" || agreed=0
    done
  done
  if [ "$agreed" = 1 ]; then echo "== agreement: passed"; else echo "== agreement: FAILED (see AGREE lines)"; fi
}

# left: seconds a timed command may still run (at least 1).
left() { echo $(( total - SECONDS > 1 ? total - SECONDS : 1 )); }

# gpu_peak CMD...: runs CMD, prints its RESULT line with the peak GPU memory
# it used (nvidia-smi sampled every 100 ms, less what was in use before).
gpu_peak() {
  local smi="$work/smi.txt" pid base peak out
  if [ "$device" != cuda ]; then
    timeout "$(left)" "$@" | grep '^RESULT'
    return
  fi
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$smi" &
  pid=$!
  out=$(timeout "$(left)" "$@" | grep '^RESULT') || { kill "$pid"; return 1; }
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  peak=$(sort -n "$smi" | tail -n 1)
  echo "$out gpu_peak_mb=$(( ${peak:-0} - base ))"
}

# plan SHAPE CONFIG: `teacher plan` of the timed shape; a PLAN line.
plan() {
  local shape=$1 cfg=$2 text total
  text=$("$bin" teacher plan --config "$root/configs/synthetic-teacher-tiny.toml" --backbone "$cfg" \
    --device "$device" --memory-gb 80 --no-measure --prompt-tokens 256 \
    --set teacher.experts=4 --set teacher.rank=8 --set teacher.alpha=32 \
    --set 'teacher.targets=["q","k","v","o","gate","up","down"]' --set train.teacher.batch_size=8 2>&1) || true
  echo "$text"
  total=$(awk '/in all/ {print $1 $2; exit}' <<<"$text")
  note "PLAN shape=$shape total=${total:-unknown} params=$(awk '/^backbone:/ {print $2; exit}' <<<"$text")"
}

# shape_config SHAPE: the config.json of a timed shape.
shape_config() {
  case $1 in
    1b) echo "$root/deploy/configs/llama-3.2-1b.json" ;;
    7b) echo "$root/deploy/configs/llama-2-7b.json" ;;
    tiny) echo "$work/tiny/config.json" ;;
    *) echo "error: shape $1; use 1b, 7b (or tiny with DEVICE=cpu)" >&2; return 2 ;;
  esac
}

# time_pair SHAPE STEP RUN OURS...: ours, then PyTorch on ours' --dump.
time_pair() {
  local shape=$1 step=$2 i=$3 cfg dump line
  shift 3
  cfg=$(shape_config "$shape")
  dump=$work/$shape-$step.safetensors
  rm -f "$dump"
  if ! line=$(gpu_peak "$bin" "$@" --step "$step" --dump "$dump"); then
    note "SKIPPED distillrec shape=$shape step=$step run=$i: failed"
    return 0
  fi
  note "$line shape=$shape run=$i"
  if [ ! -s "$dump" ]; then
    note "SKIPPED pytorch shape=$shape step=$step run=$i: distillrec wrote no --dump"
  elif line=$(gpu_peak "$py" "$root/scripts/bench_llm_torch.py" --random-weights-config "$cfg" \
    --step "$step" --dump "$dump" --device "$device" --dtype "$dt" --tokens "$tokens" --threads 8); then
    note "$line shape=$shape run=$i"
  else
    note "SKIPPED pytorch shape=$shape step=$step run=$i: failed"
  fi
}

# timing: the plans, then ours and PyTorch alternating, each run over every
# shape and step (so that a run cut by the deadline still covers each shape
# once).
timing() {
  local shape cfg step i
  local -a shapes model ours
  read -r -a shapes <<<"${SHAPES:-1b 7b}"
  [ "$device" = cpu ] && shapes=(tiny)
  for shape in "${shapes[@]}"; do
    cfg=$(shape_config "$shape")
    note "CONFIG shape=$shape file=$cfg"
    plan "$shape" "$cfg"
  done
  if [ "$device" = cuda ] && ! supports --random-weights; then
    note "SKIPPED timing: this binary's bench llm has no --random-weights"
    return 0
  fi
  for i in $(seq "$runs"); do
    for shape in "${shapes[@]}"; do
      model=(--random-weights --model "$(shape_config "$shape")")
      [ "$shape" = tiny ] && model=(--model "$work/tiny")
      ours=(bench llm "${model[@]}" --device "$device" --batch "$batch" --tokens "$tokens"
        --experts 4 --rank 8 --targets "$targets" --threads 8)
      supports --dtype && ours+=(--dtype "$dt")
      for step in teacher infer; do
        if [ "$SECONDS" -gt "$deadline" ]; then
          note "SKIPPED timing shape=$shape step=$step run=$i: past DEADLINE_S=$deadline"
        else
          time_pair "$shape" "$step" "$i" "${ours[@]}"
        fi
      done
    done
  done
}

agreed=1
header
agreement
timing
"$py" "$root/scripts/device_check.py" summary "$lines" "$results"
echo "== done in ${SECONDS} s; log: $log; scratch: $work"
# the results are written either way; the exit status says whether CPU and
# CUDA agreed
[ "$agreed" = 1 ]
