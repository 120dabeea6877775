#!/usr/bin/env bash
# capsa's main job end to end on embedded defaults: set-up, a zero-config daemon
# (SQLite, local store, generated certificates under CAPSA_HOME), one isolated job
# attached, one detached job with limits and its logs, then a clean shutdown.
#
# Environment:
#   CAPSA_HOME           data dir (default /var/lib/capsa); a fresh one is bootstrapped
#   CAPSA_LISTEN         host:port for the daemon (default: server.yaml's, 127.0.0.1:7443 on a fresh
#                        home); on a fresh home the generated client.yaml dials it, so the commands
#                        below find the daemon
#   QUICKSTART_TIMEOUT   seconds to wait for the daemon to be ready (default 60)
#   QUICKSTART_SKIP_SETUP=1  skip scripts/setup.sh (the tests run the script this way)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
[[ "${QUICKSTART_SKIP_SETUP:-}" == 1 ]] || "$here/scripts/setup.sh"
export CAPSA_HOME="${CAPSA_HOME:-/var/lib/capsa}"
unset CAPSA_CONFIG   # the commands below talk to this home's daemon, whatever the caller's shell says
listen="${CAPSA_LISTEN:-}"
timeout_s="${QUICKSTART_TIMEOUT:-60}"
capsa="$here/.venv/bin/capsa"

# An existing home keeps the address its client.yaml was generated with; a different CAPSA_LISTEN
# would start a daemon its own clients cannot find.
if [[ -f "$CAPSA_HOME/client.yaml" ]]; then
  dial="$(sed -n 's/^ *address: *//p' "$CAPSA_HOME/client.yaml" | head -1)"
  if [[ -n "$listen" && "$dial" != "$listen" ]]; then
    echo "quickstart: $CAPSA_HOME/client.yaml dials $dial, not CAPSA_LISTEN=$listen;" \
         "use a fresh CAPSA_HOME or unset CAPSA_LISTEN" >&2
    exit 2
  fi
fi
# Without CAPSA_LISTEN the daemon keeps what server.yaml says (a fresh home: 127.0.0.1:7443).
listen_args=()
[[ -z "$listen" ]] || listen_args=(--listen "$listen")

work="$(mktemp -d "${TMPDIR:-/tmp}/capsa-quickstart.XXXXXX")"
log="$work/daemon.log"
ready="$work/ready"
daemon_pid=""

stop_daemon() {
  if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || true   # the daemon stops its supervisor, zygote and cgroups before exiting
  fi
  daemon_pid=""
}
cleanup() {
  local status=$?
  stop_daemon
  if ((status != 0)) && [[ -s "$log" ]]; then
    echo "quickstart: failed; last lines of the daemon log ($log):" >&2
    tail -n 30 "$log" >&2
    echo "quickstart: the log is kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

"$capsa" daemon "${listen_args[@]}" --ready-file "$ready" >"$log" 2>&1 &
daemon_pid=$!

# The ready file appears once the API listens and client.yaml exists (on a fresh home the daemon
# first creates its certificates): from then on every command works, without retries.
deadline=$((SECONDS + timeout_s))
until [[ -f "$ready" ]]; do
  if ! kill -0 "$daemon_pid" 2>/dev/null; then
    wait "$daemon_pid" && code=0 || code=$?
    daemon_pid=""
    echo "quickstart: the daemon exited (status $code) before it was ready" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "quickstart: the daemon was not ready after ${timeout_s}s" >&2
    exit 1
  fi
  sleep 0.1
done

"$capsa" version
echo "--- capsa run -- /bin/sh -c 'echo hello from \$(hostname)'"
"$capsa" run -- /bin/sh -c 'echo hello from $(hostname); id -u; ls /'
echo "--- a detached job with limits"
id=$("$capsa" run -d --max-memory 64 --max-cpu 50 --max-pids 32 -- /bin/sh -c 'for i in 1 2 3; do echo tick $i; sleep 0.2; done')
"$capsa" logs -f "$id"
"$capsa" ps -a
# Not `capsa inspect | head`: with pipefail, head closing the pipe early would fail the script.
"$capsa" inspect "$id" >"$work/inspect.json"
head -20 "$work/inspect.json"
echo "--- stopping the daemon"
stop_daemon
if [[ -f "$ready" ]]; then
  echo "quickstart: the daemon left its ready file behind" >&2
  exit 1
fi
# Without --live-restore a stopped daemon takes its supervisor (and the zygote) with it.
sup_pid="$(cat "$CAPSA_HOME/run/supervisor.pid" 2>/dev/null || true)"
if [[ -n "$sup_pid" && -r "/proc/$sup_pid/environ" ]] &&
   tr '\0' '\n' <"/proc/$sup_pid/environ" | grep -qx "CAPSA_HOME=$CAPSA_HOME"; then
  echo "quickstart: the supervisor (pid $sup_pid) outlived the daemon" >&2
  exit 1
fi
echo "quickstart: ok"
