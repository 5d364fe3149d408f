#!/usr/bin/env bash
# Builds the CUDA binary (`--features cuda`) on a machine without a GPU or a
# system CUDA toolkit, links it, and packs it to carry to a GPU machine:
#
#   scripts/check-cuda-build.sh     -> target/cuda/release/distillrec (linked)
#                                      target/cuda/distillrec-cuda.tar.gz
#
# NVIDIA's CUDA compiler, headers and the libraries the binary links (cuBLAS,
# cuBLASLt, cuRAND, NVRTC) come from PyPI wheels in a virtualenv. The driver
# library libcuda.so.1 comes with the GPU's driver, not in any wheel, so the
# link uses a stub built here (see make_driver_stub): it has the driver's
# soname and exports every driver function cudarc declares, each returning
# CUDA_ERROR_STUB_LIBRARY. The binary records only the real sonames
# (libcuda.so.1, libcublas.so.13, libcurand.so.10, libcudart.so.13; checked
# with readelf below) and no library path, so on the GPU machine it loads
# the driver's libcuda and the CUDA 13 libraries of torch's wheels.
#
# It cannot start without some libcuda.so.1: candle 0.11 asks cudarc for
# `dynamic-linking`, and cudarc's build script refuses `dynamic-loading`
# (which would dlopen the libraries on first use) next to it, so features
# alone cannot select it. The stub is therefore put on LD_LIBRARY_PATH only
# for the smoke test below (the CPU path of the binary, and `--device cuda`
# refused in one line), and never packed into the artefact.
#
# Times on the 2-core development machine (nice 10, shared with two other
# builds, load average 5 to 7), the whole script:
#   cold (empty target/cuda, wheels in pip's cache):       25 min 18 s
#   warm (one line edited in distillrec-llm, relink, pack): 30 s (cargo 26 s)
#   warm (crates/distillrec/src/main.rs touched):           18 s (cargo 12 s)
# The artefact is 20 MiB (the stripped binary 78 MB, the CPU one 26 MB: the
# rest is candle's CUDA kernels, PTX and cubins).
#
# Environment:
#   CUDA_VENV          virtualenv to create or reuse (default /tmp/cuda-venv)
#   CUDA_PIN           version of the CUDA wheels (default 13.0.*)
#   CURAND_PIN         version of the cuRAND wheel of that CUDA (default
#                      10.4.0.*, the one of CUDA 13.0)
#   CUDA_COMPUTE_CAP   compute capability the PTX kernels are built for
#                      (default 80; candle-kernels asks nvidia-smi otherwise,
#                      which does not exist without a GPU; newer GPUs such
#                      as the H100 JIT the same PTX)
#   CARGO_BUILD_ARGS   extra arguments for cargo build
#   FEATURES           cargo features to build (default "cuda")
#   CUDA_LINK_LIBS     folders (colon-separated) holding the driver's
#                      libcuda.so.1 and cuBLAS, cuBLASLt, cuRAND and NVRTC,
#                      as an NVIDIA CUDA runtime image has them
#                      (/usr/local/cuda/lib64:/usr/local/cuda/compat): then the
#                      binary is linked against them instead of the wheels and
#                      the stub, and neither smoke-tested nor packed
#                      (Dockerfile.cuda)
#   NO_PACK            set to 1 to skip the smoke test and the artefact
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CUDA_VENV:-/tmp/cuda-venv}
python=${PYTHON:-python3}
cuda_pin=${CUDA_PIN:-13.0.*}
# The libraries the binary links, as cudarc's build script names them
# (cargo:rustc-link-lib=dylib=NAME).
link_libs=(cuda cublas cublasLt curand nvrtc)

# install_toolkit: the CUDA 13 wheels into $venv. The CUDA 12 wheels
# (nvidia-cuda-nvcc-cu12) ship ptxas but no nvcc; the CUDA 13 wheels ship the
# whole compiler under nvidia/cu13. 13.0 is pinned because cudarc (candle's
# CUDA binding) refuses toolkits newer than it knows. CCCL supplies
# <nv/target>, which cuda_fp16.h includes (candle's kernels).
install_toolkit() {
  local -a wheels=("nvidia-cuda-nvcc==$cuda_pin" "nvidia-cuda-runtime==$cuda_pin"
    "nvidia-cuda-crt==$cuda_pin" "nvidia-nvvm==$cuda_pin" "nvidia-cuda-cccl==$cuda_pin")
  if [ -z "${CUDA_LINK_LIBS:-}" ]; then
    wheels+=("nvidia-cublas==$cuda_pin" "nvidia-cuda-nvrtc==$cuda_pin"
      "nvidia-curand==${CURAND_PIN:-10.4.0.*}")
  fi
  echo "== CUDA toolkit from PyPI into $venv"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${wheels[@]}"
}

# link_from DIR...: unversioned names (libcublas.so, ...) in $root/lib, which
# cudarc's build script searches, for the first lib$NAME.so.* found in DIR...
# (the driver only where it is there: the wheels have none).
link_from() {
  local lib found
  for lib in "${link_libs[@]}"; do
    found=$(find -L "$@" -maxdepth 1 -name "lib$lib.so.*" -print 2>/dev/null | sort | head -n 1)
    if [ -z "$found" ]; then
      [ "$lib" = cuda ] && [ -z "${CUDA_LINK_LIBS:-}" ] && continue
      echo "error: no lib$lib.so.* in $*; install it or set CUDA_LINK_LIBS" >&2
      exit 1
    fi
    ln -sfn "$found" "$root/lib/lib$lib.so"
    echo "== lib$lib.so -> $found"
  done
}

# make_driver_stub: $root/lib/stubs/libcuda.so (where a CUDA toolkit keeps
# its stub, and a folder cudarc's build script searches), with soname
# libcuda.so.1 and one function per driver entry point that cudarc's
# bindings declare (`pub unsafe fn cu...` in src/driver/sys/mod.rs of the
# locked cudarc), each returning CUDA_ERROR_STUB_LIBRARY (34), except
# cuGetErrorString, which names the stub. Only the link needs the names; a
# call reaching the stub reports the error instead of running. A superset of
# what the binary references is harmless.
make_driver_stub() {
  local cudarc stubs=$root/lib/stubs
  cudarc=$(cargo metadata --format-version 1 --locked --features distillrec/cuda | "$venv/bin/python" -c '
import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in pkgs if p["name"] == "cudarc"))')
  mkdir -p "$stubs"
  {
    echo "/* Generated by scripts/check-cuda-build.sh from $cudarc: link-time stand-in for libcuda.so.1. */"
    echo 'int cuGetErrorString(int e, const char **s) { (void)e; *s = "libcuda.so.1 is the link-time stub: no NVIDIA driver here"; return 0; }'
    grep -oP '^pub unsafe fn \Kcu\w+' "$cudarc/src/driver/sys/mod.rs" | grep -vx cuGetErrorString | sort -u \
      | sed 's/.*/int &(void) { return 34; }/'
  } >"$stubs/libcuda_stub.c"
  cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
  ln -sfn libcuda.so "$stubs/libcuda.so.1"
  # also as lib/libcuda.so: cudarc's build script searches only the folders
  # that exist when it first runs (a target/cuda built before the stub
  # existed does not search lib/stubs), and lib always does
  ln -sfn stubs/libcuda.so "$root/lib/libcuda.so"
  echo "== driver stub: $stubs/libcuda.so ($(grep -c '^int ' "$stubs/libcuda_stub.c") functions, soname libcuda.so.1)"
}

install_toolkit
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

if [ -n "${CUDA_LINK_LIBS:-}" ]; then
  IFS=: read -r -a dirs <<<"$CUDA_LINK_LIBS"
  link_from "${dirs[@]}"
else
  make_driver_stub
  link_from "$root/lib"
fi

bin=target/cuda/release/distillrec
echo "== cargo build --release --features ${FEATURES:-cuda} --bin distillrec (linked; target/cuda)"
start=$(date +%s)
# shellcheck disable=SC2086  # CARGO_BUILD_ARGS is a list of words
cargo build --release --locked --target-dir target/cuda --features "${FEATURES:-cuda}" \
  -p distillrec --bin distillrec ${CARGO_BUILD_ARGS:-}
echo "== CUDA binary built in $(( $(date +%s) - start )) s: $bin"
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
echo "== its libraries (NEEDED): $(echo "$needed" | tr '\n' ' ')"
# the linker keeps only what the code calls (--as-needed): NVRTC and cuBLASLt
# are linked by cudarc but not recorded; cudart comes from candle's kernels
for lib in libcuda.so.1 libcublas.so.13 libcurand.so.10; do
  grep -qx "$lib" <<<"$needed" || { echo "error: $bin does not record $lib" >&2; exit 1; }
done
if readelf -d "$bin" | grep -E 'RPATH|RUNPATH|stubs'; then
  echo "error: $bin records a library path; it must find the GPU machine's libraries" >&2
  exit 1
fi

[ -z "${CUDA_LINK_LIBS:-}" ] && [ "${NO_PACK:-0}" != 1 ] || exit 0
scripts/pack-cuda.sh "$bin" "$root/lib/stubs:$root/lib"
