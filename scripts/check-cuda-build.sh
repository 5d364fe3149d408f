#!/usr/bin/env bash
# Checks that the CUDA build (`--features cuda`) compiles, on a machine
# without a GPU or a system CUDA toolkit: installs NVIDIA's CUDA compiler and
# runtime headers from PyPI into a virtualenv, points candle's build scripts
# at them, and builds into its own target dir (target/cuda) so the CPU build
# is untouched. Nothing here runs on a GPU.
#
# Environment:
#   CUDA_VENV          virtualenv to create or reuse (default /tmp/cuda-venv)
#   CUDA_PIN           version of the CUDA wheels (default 13.0.*)
#   CUDA_COMPUTE_CAP   compute capability the PTX kernels are built for
#                      (default 80; candle-kernels asks nvidia-smi otherwise,
#                      which does not exist without a GPU)
#   CARGO_BUILD_ARGS   extra arguments for cargo build (e.g. "-p distillrec-models")
#   FEATURES           cargo features to build (default "cuda")
#   CUDA_LINK_LIBS     folders (colon-separated) holding the driver's
#                      libcuda.so.1 and cuBLAS, cuBLASLt, cuRAND and NVRTC,
#                      as an NVIDIA CUDA runtime image has them
#                      (/usr/local/cuda/lib64:/usr/local/cuda/compat): then the
#                      binary alone is built and linked against them, into
#                      target/cuda/release/distillrec (Dockerfile.cuda)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CUDA_VENV:-/tmp/cuda-venv}
python=${PYTHON:-python3}

echo "== CUDA toolkit from PyPI into $venv"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# The CUDA 12 wheels (nvidia-cuda-nvcc-cu12) ship ptxas but no nvcc; the
# CUDA 13 wheels ship the whole compiler under nvidia/cu13. 13.0 is pinned
# because cudarc (candle's CUDA binding) refuses toolkits newer than it knows.
# CCCL supplies <nv/target>, which cuda_fp16.h includes (candle's kernels).
cuda_pin=${CUDA_PIN:-13.0.*}
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "nvidia-cuda-nvcc==$cuda_pin" "nvidia-cuda-runtime==$cuda_pin" \
  "nvidia-cuda-crt==$cuda_pin" "nvidia-nvvm==$cuda_pin" "nvidia-cuda-cccl==$cuda_pin"

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
root="$site/nvidia/cu13"
[ -x "$root/bin/nvcc" ] || { echo "error: $root/bin/nvcc missing after pip install" >&2; exit 1; }
# nvcc links -lcudart from lib64; the wheel ships lib/libcudart.so.13 only
[ -e "$root/lib64" ] || ln -sfn lib "$root/lib64"
[ -e "$root/lib/libcudart.so" ] || ln -sfn libcudart.so.13 "$root/lib/libcudart.so"

export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root" CUDA_TOOLKIT_ROOT_DIR="$root"
export PATH="$root/bin:$PATH"
export NVCC="$root/bin/nvcc"
export LD_LIBRARY_PATH="$root/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
echo "== nvcc: $("$NVCC" --version | tail -n 2 | head -n 1)"
echo "== CUDA_ROOT=$CUDA_ROOT CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"

# link_cuda_libs DIR: unversioned names (libcublas.so, ...) in DIR, which
# cudarc's build script searches, for the libraries in $CUDA_LINK_LIBS.
link_cuda_libs() {
  local dir=$1 lib found
  local -a dirs
  IFS=: read -r -a dirs <<<"$CUDA_LINK_LIBS"
  for lib in cuda cublas cublasLt curand nvrtc; do
    found=$(find -L "${dirs[@]}" -maxdepth 1 -name "lib$lib.so.*" -print 2>/dev/null | sort | head -n 1)
    [ -n "$found" ] || { echo "error: no lib$lib.so.* in CUDA_LINK_LIBS=$CUDA_LINK_LIBS" >&2; exit 1; }
    ln -sfn "$found" "$dir/lib$lib.so"
    echo "== lib$lib.so -> $found"
  done
}

if [ -n "${CUDA_LINK_LIBS:-}" ]; then
  link_cuda_libs "$root/lib"
  echo "== cargo build --release --features ${FEATURES:-cuda} --bin distillrec (linked; target/cuda)"
  start=$(date +%s)
  # shellcheck disable=SC2086  # CARGO_BUILD_ARGS is a list of words
  cargo build --release --locked --target-dir target/cuda --features "${FEATURES:-cuda}" -p distillrec --bin distillrec ${CARGO_BUILD_ARGS:-}
  echo "== CUDA binary built in $(( $(date +%s) - start )) s: target/cuda/release/distillrec"
  exit 0
fi

# Every library crate is compiled to machine code with CUDA (candle's
# kernels through nvcc); the binary is type-checked but not linked: linking
# needs the GPU driver's libcuda and NVIDIA's cuBLAS/cuRAND/NVRTC libraries,
# which a machine with a GPU has and this check does not install.
echo "== cargo build --release --features ${FEATURES:-cuda} --workspace --lib (target/cuda)"
start=$(date +%s)
# shellcheck disable=SC2086  # CARGO_BUILD_ARGS is a list of words
cargo build --release --target-dir target/cuda --features "${FEATURES:-cuda}" --workspace --lib ${CARGO_BUILD_ARGS:-}
echo "== cargo check --release --features ${FEATURES:-cuda} --bins (the binary, not linked)"
# shellcheck disable=SC2086
cargo check --release --target-dir target/cuda --features "${FEATURES:-cuda}" --bins ${CARGO_BUILD_ARGS:-}
echo "== CUDA build passed in $(( $(date +%s) - start )) s"
