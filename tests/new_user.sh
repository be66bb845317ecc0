#!/usr/bin/env bash
# A new user's first minutes, as CI runs them: a fresh clone of this commit, the README's first
# command run word for word (set-up, models, build, serve on the embedded defaults with no config
# and no key), then the official `openai` SDK's realtime client speaks a fixture into
# /v1/realtime and must get the agent's spoken answer back.
#
# Usage: tests/new_user.sh [FIXTURE_WAV]   (default fixtures/audio/table_booking.wav)
#
# The clone shares the build cache and the models folder of the checkout it was cloned from
# (CARGO_TARGET_DIR, VOXGATE_MODELS_DIR) so CI does not build and download everything twice; the
# README's command still runs in full (its set-up checks, `models fetch` verifying every file's
# SHA-256, the build of the clone's own sources, `serve`).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
fixture="${1:-$repo/fixtures/audio/table_booking.wav}"
work="$(mktemp -d "${TMPDIR:-/tmp}/voxgate-new-user-XXXXXX")"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 -- "-$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

git clone --quiet "$repo" "$work/voxgate"
cd "$work/voxgate"

# The README's first command: the first line of its first `sh` block.
first="$(awk '/^```sh$/ { getline; print; exit }' README.md)"
case "$first" in
  *"serve"*) ;;
  *) echo "new_user: the README's first command does not serve: $first" >&2; exit 1 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
export VOXGATE_MODELS_DIR="${VOXGATE_MODELS_DIR:-$repo/models}"
echo "new_user: running the README's first command in a fresh clone: $first" >&2

# Its own process group, so the server it ends in is stopped with it.
setsid bash -c "$first" >"$work/serve.log" 2>&1 &
server_pid=$!

base="http://127.0.0.1:8080"
ready=""
for _ in $(seq 1 1800); do
  if python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$base/healthz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 1
done
if [ -z "$ready" ]; then
  echo "new_user: the server never answered on $base; the last lines it wrote:" >&2
  tail -n 40 "$work/serve.log" >&2
  exit 1
fi

# No key is configured, so any key is accepted on loopback; the default route answers.
if ! python3 "$repo/tests/sdk/realtime_check.py" "$base/v1" "no-key-needed" "$fixture" --route default --offline; then
  echo "new_user: the realtime check failed; the server's last lines:" >&2
  tail -n 40 "$work/serve.log" >&2
  exit 1
fi
echo "new_user: a fresh clone served the offline defaults and answered a spoken request" >&2
