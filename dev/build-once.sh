# shellcheck shell=bash
# build_once <key> <dir> <description> <command...>, sourced by dev/build-tools.sh.
#
# Runs `<command> <temp dir>` only when <dir> lacks its .complete stamp, then renames the temp
# dir into place, so a killed build leaves nothing half-made. Prints "<key>=<dir>" on stdout
# and one progress line per step on stderr.
# - One build of <dir> at a time, also across `make` runs on one machine: the second waits
#   on <dir>.lock (flock), then finds the first one's result instead of building again.
# - A temp dir <dir>.tmp.<pid> is removed only once the process that made it is gone.
# - While it builds, a line every TEMPOTRAIN_BUILD_PROGRESS_SECONDS (default 30) says so:
#   the first Kubernetes build takes minutes.
build_once() {
  local key="$1" dest="$2" what="$3"
  shift 3
  if [[ -f "$dest/.complete" ]]; then
    echo "[build-tools] $what: cache hit ($dest)" >&2
    echo "$key=$dest"
    return
  fi
  mkdir -p "$(dirname "$dest")"
  local lock
  exec {lock}>"$dest.lock"
  if ! flock -n "$lock"; then
    echo "[build-tools] $what: another run is building it; waiting for that one" >&2
    flock "$lock"
  fi
  if [[ -f "$dest/.complete" ]]; then
    exec {lock}>&-
    echo "[build-tools] $what: built by the other run ($dest)" >&2
    echo "$key=$dest"
    return
  fi
  local stale owner
  for stale in "$dest".tmp.*; do
    [[ -e "$stale" ]] || continue
    owner="${stale##*.tmp.}"
    if [[ "$owner" =~ ^[0-9]+$ ]] && kill -0 "$owner" 2>/dev/null; then
      continue # its maker still runs (a build-tools.sh from before this lock)
    fi
    rm -rf "$stale"
  done
  local tmp="$dest.tmp.$$" start=$SECONDS every="${TEMPOTRAIN_BUILD_PROGRESS_SECONDS:-30}"
  mkdir -p "$tmp"
  echo "[build-tools] $what: building ..." >&2
  # In the background, not behind `||`: there `set -e` would be off inside the builder, and
  # a failed step in the middle of it would go unnoticed.
  "$@" "$tmp" >&2 &
  local builder=$!
  # One-second naps: killed, the ticker leaves no sleep holding stderr for long.
  (
    ticks=0
    while sleep 1; do
      ticks=$((ticks + 1))
      if ((ticks % every == 0)); then
        echo "[build-tools] $what: still building ($((SECONDS - start))s)" >&2
      fi
    done
  ) &
  local ticker=$! status=0
  wait "$builder" || status=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if [[ $status -ne 0 ]]; then
    rm -rf "$tmp"
    exec {lock}>&-
    echo "[build-tools] $what: failed (exit $status)" >&2
    return "$status"
  fi
  touch "$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  exec {lock}>&-
  echo "[build-tools] $what: built in $((SECONDS - start))s" >&2
  echo "$key=$dest"
}
