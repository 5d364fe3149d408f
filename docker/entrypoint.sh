#!/usr/bin/env bash
# Entrypoint of the distillrec images (Dockerfile, Dockerfile.cuda): runs a
# command (default `distillrec --help`) as the host's user, so that what it
# writes into the mounted project belongs to that user on the host, not root.
#
#   HOST_UID, HOST_GID  the ids to run as (default: the owner of $WORKSPACE);
#                       a user and group with these ids are reused when the
#                       image has them, created otherwise (named distillrec)
#   ALLOW_ROOT=1        allows HOST_UID=0 or HOST_GID=0 (refused otherwise)
#   WORKSPACE           the mounted project (default /workspace); never chowned
#   DISTILLREC_DEV=1    development image: rebuild the binary from $WORKSPACE
#                       first, but only when Cargo.lock, Cargo.toml or a file
#                       under crates/ is newer than it (see --needs-rebuild);
#                       it is built into $CARGO_TARGET_DIR (default
#                       $WORKSPACE/target/container) and put first on PATH
#
# The command replaces this script (exec, through setpriv or gosu), so it
# keeps the process id and receives SIGINT and SIGTERM itself (the images
# start this script under tini, which forwards them).
#
#   entrypoint.sh --needs-rebuild SRC BIN
#       the development image's decision alone: prints why BIN must be
#       rebuilt from the checkout SRC and exits 0, or prints that it is up to
#       date and exits 1
#
# A refused HOST_UID/HOST_GID ends with one `error:` line and exit code 125,
# before anything runs; otherwise the exit code is the command's.
set -euo pipefail

workspace=${WORKSPACE:-/workspace}

die() {
  echo "error: $*" >&2
  exit 125
}

# needs_rebuild SRC BIN: the reason BIN must be rebuilt from SRC (status 0),
# or that it is up to date (status 1).
needs_rebuild() {
  local src=$1 bin=$2 newer
  [ -f "$src/Cargo.lock" ] || die "$src/Cargo.lock is absent: mount the distillrec checkout at $src"
  if [ ! -e "$bin" ]; then
    echo "rebuild: no binary at $bin"
    return 0
  fi
  newer=$(find "$src/Cargo.lock" "$src/Cargo.toml" "$src/crates" -type f -newer "$bin" -print -quit 2>/dev/null || true)
  if [ -n "$newer" ]; then
    echo "rebuild: ${newer#"$src"/} is newer than $bin"
    return 0
  fi
  echo "up to date: $bin is newer than Cargo.lock, Cargo.toml and crates/"
  return 1
}

# dev_build: in the development image, rebuilds the binary when
# needs_rebuild says so (as the host user, so target/ stays theirs) and puts
# it first on PATH.
dev_build() {
  [ "${DISTILLREC_DEV:-0}" = 1 ] || return 0
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$workspace/target/container}
  local bin=$CARGO_TARGET_DIR/release/distillrec reason status=0
  reason=$(needs_rebuild "$workspace" "$bin") || status=$?
  case $status in
    0)
      echo "entrypoint: $reason: cargo build --release" >&2
      (cd "$workspace" && cargo build --release -p distillrec --bin distillrec)
      # cargo leaves an up-to-date binary untouched: mark it as checked now
      touch "$bin"
      ;;
    1) echo "entrypoint: $reason" >&2 ;;
    *) exit "$status" ;;
  esac
  export PATH="$CARGO_TARGET_DIR/release:$PATH"
}

# check_id NAME FLAG VALUE [WHERE]: VALUE (of variable NAME, or taken from
# WHERE when NAME is unset) is a usable id: decimal, below 2^32 - 1, not 0
# unless ALLOW_ROOT=1. Prints it without leading zeros.
check_id() {
  local name=$1 flag=$2 value=$3 where=${4:-} said
  said="$name=$value"
  [ -z "$where" ] || said="$name is unset and $where belongs to ${name#HOST_} $value, which"
  [ -n "$value" ] || die "$name is empty: pass -e $name=\$(id -$flag)"
  if ! [[ $value =~ ^[0-9]{1,10}$ ]] || ((10#$value > 4294967294)); then
    die "$said is not a numeric id: pass -e $name=\$(id -$flag)"
  fi
  value=$((10#$value))
  if [ "$value" = 0 ] && [ "${ALLOW_ROOT:-0}" != 1 ]; then
    die "$said would run the command as root and leave root-owned files in $workspace: pass -e $name=\$(id -$flag), or set ALLOW_ROOT=1 to run as root on purpose"
  fi
  echo "$value"
}

# host_ids: sets uid and gid from HOST_UID and HOST_GID, each defaulting to
# the owner of the workspace; refuses (exit 125) before anything runs.
host_ids() {
  if [ -n "${HOST_UID+set}" ]; then uid=$(check_id HOST_UID u "$HOST_UID") || exit; fi
  if [ -n "${HOST_GID+set}" ]; then gid=$(check_id HOST_GID g "$HOST_GID") || exit; fi
  [ -n "${uid:-}" ] && [ -n "${gid:-}" ] && return
  [ -d "$workspace" ] || die "HOST_UID/HOST_GID are unset and $workspace does not exist: mount the project with -v \"\$PWD\":$workspace, or pass -e HOST_UID=\$(id -u) -e HOST_GID=\$(id -g)"
  [ -n "${uid:-}" ] || uid=$(check_id HOST_UID u "$(stat -c %u "$workspace")" "$workspace") || exit
  [ -n "${gid:-}" ] || gid=$(check_id HOST_GID g "$(stat -c %g "$workspace")" "$workspace") || exit
}

# ensure_group: sets group to the name of the group with id $gid, created
# (as distillrec, or distillrec-GID when that name is taken) when missing.
ensure_group() {
  local entry
  if entry=$(getent group "$gid"); then
    group=${entry%%:*}
    return
  fi
  group=distillrec
  getent group "$group" >/dev/null && group=distillrec-$gid
  groupadd -g "$gid" "$group" || die "could not create group $group with GID $gid"
}

# ensure_user: sets user and home for the user with id $uid, created (as
# distillrec, or distillrec-UID) with primary group $gid when missing. Only
# a new user's own home is created; the workspace is never touched.
ensure_user() {
  local entry
  if entry=$(getent passwd "$uid"); then
    user=${entry%%:*}
    home=$(cut -d: -f6 <<<"$entry")
    return
  fi
  user=distillrec
  getent passwd "$user" >/dev/null && user=distillrec-$uid
  home=/home/$user
  # --no-log-init: no sparse lastlog/faillog entries sized by a large UID
  useradd --no-log-init -M -u "$uid" -g "$gid" -d "$home" -s /bin/bash "$user" \
    || die "could not create user $user with UID $uid"
  [ -e "$home" ] || install -d -o "$uid" -g "$gid" -m 0755 "$home"
}

# switch_user CMD...: replaces this process with CMD run as uid:gid.
switch_user() {
  export HOME=$home USER=$user LOGNAME=$user
  if command -v setpriv >/dev/null; then
    exec setpriv --reuid="$uid" --regid="$gid" --init-groups -- "$@"
  elif command -v gosu >/dev/null; then
    exec gosu "$uid:$gid" "$@"
  fi
  die "neither setpriv (util-linux) nor gosu is installed: cannot run as UID $uid"
}

main() {
  case ${1:-} in
    --needs-rebuild)
      [ $# -eq 3 ] || die "usage: entrypoint.sh --needs-rebuild SRC BIN"
      needs_rebuild "$2" "$3"
      return
      ;;
    --as-host-user)
      shift
      dev_build
      exec "$@"
      ;;
  esac
  [ $# -gt 0 ] || set -- distillrec --help
  local uid gid group user home
  host_ids
  if [ "$(id -u)" != 0 ]; then
    if [ "$(id -u)" != "$uid" ] || [ "$(id -g)" != "$gid" ]; then
      die "running as UID $(id -u) GID $(id -g), not root: cannot switch to HOST_UID=$uid HOST_GID=$gid (start the container as root, the default, or with --user $uid:$gid)"
    fi
    dev_build
    exec "$@"
  fi
  if [ "$uid" = 0 ] && [ "$gid" = 0 ]; then
    dev_build
    exec "$@"
  fi
  ensure_group
  ensure_user
  if [ "${DISTILLREC_DEV:-0}" = 1 ]; then
    switch_user bash "$(readlink -f "$0")" --as-host-user "$@"
  fi
  switch_user "$@"
}

main "$@"
