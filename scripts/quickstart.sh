#!/usr/bin/env bash
# capsa's main job end to end on embedded defaults: set-up, a zero-config daemon
# (SQLite, local store, generated certificates under CAPSA_HOME), one isolated job
# attached, one detached job with limits and its logs, then a clean shutdown.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
"$here/scripts/setup.sh"
export CAPSA_HOME="${CAPSA_HOME:-/var/lib/capsa}"
capsa="$here/.venv/bin/capsa"

"$capsa" daemon >"${TMPDIR:-/tmp}/capsa-quickstart-daemon.log" 2>&1 &
daemon_pid=$!
trap 'kill -TERM $daemon_pid 2>/dev/null; wait $daemon_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  "$capsa" version >/dev/null 2>&1 && break
  sleep 0.1
done
"$capsa" version
echo "--- capsa run -- /bin/sh -c 'echo hello from \$(hostname)'"
"$capsa" run -- /bin/sh -c 'echo hello from $(hostname); id -u; ls /'
echo "--- a detached job with limits"
id=$("$capsa" run -d --max-memory 64 --max-cpu 50 --max-pids 32 -- /bin/sh -c 'for i in 1 2 3; do echo tick $i; sleep 0.2; done')
"$capsa" logs -f "$id"
"$capsa" ps -a
"$capsa" inspect "$id" | head -20
echo "quickstart: ok"
