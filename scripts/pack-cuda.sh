#!/usr/bin/env bash
# Smoke-tests the linked CUDA binary on this machine (no GPU) and packs it,
# with the GPU check and what that needs, into a carryable artefact:
#
#   scripts/pack-cuda.sh BIN STUB_LIBS   (called by scripts/check-cuda-build.sh)
#
# BIN is target/cuda/release/distillrec; STUB_LIBS (colon-separated) holds
# the link-time driver stub (libcuda.so.1) and the wheels' cuBLAS, cuRAND and
# NVRTC. The binary needs some libcuda.so.1 to start (see
# check-cuda-build.sh), so the smoke test puts STUB_LIBS on LD_LIBRARY_PATH:
# `--help`, one epoch of `train student` on the synthetic data set on the
# CPU, and `--device cuda` refused in one line (the stub answers every driver
# call with CUDA_ERROR_STUB_LIBRARY). The artefact holds no CUDA library:
#
#   target/cuda/distillrec-cuda.tar.gz   (at most 60 MiB)
#     distillrec-cuda/target/cuda/release/distillrec   (stripped)
#     distillrec-cuda/scripts/device-check.sh, device_check.py, bench_llm_torch.py
#     distillrec-cuda/configs/{synthetic-teacher-tiny,lastfm-ilora-smollm2}.toml, deploy/configs/*.json
#
# On the GPU machine: tar xzf distillrec-cuda.tar.gz && distillrec-cuda/scripts/device-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
bin=$1 stub_libs=$2
max_mib=60

# smoke_test: the CPU path of the CUDA binary, with the stub as its driver.
smoke_test() {
  local tmp err
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  echo "== without any libcuda.so.1 the binary cannot start (expected):"
  env -u LD_LIBRARY_PATH "$bin" --version 2>&1 | sed 's/^/   /' || true
  export LD_LIBRARY_PATH=$stub_libs
  "$bin" --version
  "$bin" --help >/dev/null
  "$bin" data prepare --dataset synthetic --set dataset.synthetic.users=60 --seed 42 \
    --out "$tmp/data" >/dev/null
  local student=(train student --data "$tmp/data" --set student.hidden=16 --set student.layers=1
    --set student.max_len=10 --set train.student.max_epochs=1)
  "$bin" "${student[@]}" --out "$tmp/run" | tail -n 1
  [ -s "$tmp/run/checkpoints/best.safetensors" ] || { echo "error: no checkpoint from the CPU run" >&2; return 1; }
  err=$(env -u RUST_BACKTRACE "$bin" "${student[@]}" --out "$tmp/cuda" --device cuda 2>&1) && {
    echo "error: --device cuda succeeded against the driver stub" >&2; return 1; }
  echo "== --device cuda with the stub: $err"
  if [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ] || grep -q panicked <<<"$err"; then
    echo "error: --device cuda without a driver must fail in one line" >&2
    return 1
  fi
  echo "== smoke test passed (CPU path of the CUDA binary)"
}

# pack: the artefact, in the repository's layout so that device-check.sh
# finds everything as it does in a checkout.
pack() {
  local stage=target/cuda/pack out=target/cuda/distillrec-cuda.tar.gz size
  rm -rf "$stage"
  mkdir -p "$stage/distillrec-cuda/target/cuda/release" "$stage/distillrec-cuda/scripts" \
    "$stage/distillrec-cuda/configs" "$stage/distillrec-cuda/deploy/configs"
  strip -o "$stage/distillrec-cuda/target/cuda/release/distillrec" "$bin"
  cp scripts/device-check.sh scripts/device_check.py scripts/bench_llm_torch.py \
    "$stage/distillrec-cuda/scripts/"
  cp configs/synthetic-teacher-tiny.toml configs/lastfm-ilora-smollm2.toml "$stage/distillrec-cuda/configs/"
  cp deploy/configs/*.json "$stage/distillrec-cuda/deploy/configs/"
  tar -C "$stage" -czf "$out.tmp" distillrec-cuda
  mv "$out.tmp" "$out"
  size=$(stat -c %s "$out")
  echo "== artefact: $out, $(( (size + 1048575) / 1048576 )) MiB ($size bytes); binary $(stat -c %s "$bin") bytes unstripped"
  if [ "$size" -gt $(( max_mib * 1048576 )) ]; then
    echo "error: $out is over $max_mib MiB" >&2
    exit 1
  fi
}

smoke_test
pack
