#!/usr/bin/env bash
# Runs distillrec in its container with the current folder as /workspace,
# as the current user (files it writes there are yours, not root's):
#
#   scripts/container.sh [--gpu] [--dev] [--models DIR] [--data DIR]
#                        [--image IMAGE] [--dry-run] -- <distillrec args>
#
#   --gpu         the CUDA image (distillrec:cuda, Dockerfile.cuda) with every
#                 NVIDIA GPU (docker: --gpus all; podman: the CDI device
#                 nvidia.com/gpu=all, from nvidia-container-toolkit)
#   --dev         the development image (distillrec:dev, Dockerfile --target
#                 dev): rebuilds the binary from this checkout first when a
#                 source or Cargo.lock is newer than it
#   --models DIR  mounted read-only at /workspace/models (where a config's
#                 `backbone = "smollm2"` is looked for)
#   --data DIR    mounted read-only at /workspace/data
#   --image IMAGE another image
#   --dry-run     print the command instead of running it
#
# Environment: CONTAINER_ENGINE (docker or podman; default docker when
# installed, else podman; may carry global flags, e.g. "podman --runtime
# runc"), CONTAINER_RUN_ARGS (more `run` options, split on spaces).
set -euo pipefail

die() {
  echo "error: $*" >&2
  exit 2
}

gpu=0 dev=0 dry=0 image="" models="" data=""
while [ $# -gt 0 ]; do
  case $1 in
    --gpu) gpu=1 ;;
    --dev) dev=1 ;;
    --dry-run) dry=1 ;;
    --models | --data | --image)
      [ $# -ge 2 ] || die "$1 needs a value"
      case $1 in
        --models) models=$2 ;;
        --data) data=$2 ;;
        --image) image=$2 ;;
      esac
      shift
      ;;
    --) shift; break ;;
    *) die "unknown option $1: usage: scripts/container.sh [--gpu] [--dev] [--models DIR] [--data DIR] [--image IMAGE] [--dry-run] -- <distillrec args>" ;;
  esac
  shift
done
if [ $gpu = 1 ] && [ $dev = 1 ] && [ -z "$image" ]; then
  die "--gpu with --dev: there is no CUDA development image; name one with --image"
fi
[ $# -gt 0 ] || set -- --help

if [ -z "$image" ]; then
  image=distillrec
  [ $gpu = 1 ] && image=distillrec:cuda
  [ $dev = 1 ] && image=distillrec:dev
fi

engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  if command -v docker >/dev/null; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  else die "neither docker nor podman is installed (or set CONTAINER_ENGINE)"
  fi
fi
read -r -a run <<<"$engine"

run+=(run --rm -v "$PWD":/workspace -w /workspace -e HOST_UID="$(id -u)" -e HOST_GID="$(id -g)")
# root here is root there too; the entrypoint wants that said explicitly
[ "$(id -u)" != 0 ] || run+=(-e ALLOW_ROOT=1)
if [ -t 0 ] && [ -t 1 ]; then run+=(-it); else run+=(-i); fi
if [ $gpu = 1 ]; then
  case ${run[0]##*/} in
    podman) run+=(--device nvidia.com/gpu=all) ;;
    *) run+=(--gpus all) ;;
  esac
fi
# mount points are made here, as you: the engine would make them as root
for pair in "models:$models" "data:$data"; do
  name=${pair%%:*} dir=${pair#*:}
  [ -n "$dir" ] || continue
  [ -d "$dir" ] || die "--$name $dir is not a folder"
  [ $dry = 1 ] || mkdir -p "$PWD/$name"
  run+=(-v "$(cd "$dir" && pwd)":/workspace/"$name":ro)
done
if [ -n "${CONTAINER_RUN_ARGS:-}" ]; then
  read -r -a more <<<"$CONTAINER_RUN_ARGS"
  run+=("${more[@]}")
fi
run+=("$image" distillrec "$@")

if [ $dry = 1 ]; then
  printf '%q ' "${run[@]}"
  echo
  exit 0
fi
exec "${run[@]}"
