#!/usr/bin/env bash
# Installs capsa as a systemd service, as root: capsa into a venv (default /opt/capsa/venv, or this
# checkout's .venv with --use-repo-venv), the unit dist/systemd/capsa.service with ExecStart=
# pointing at that venv, then `systemctl daemon-reload`. It never enables or starts the service:
# that is `systemctl enable --now capsa` (docs/operations.md). Idempotent.
#
#   scripts/install.sh [--venv DIR | --use-repo-venv] [--unit-dir DIR] [--no-reload]
#
#   --venv DIR        where to create the venv and install capsa (default /opt/capsa/venv)
#   --use-repo-venv   use this checkout's .venv (created by scripts/setup.sh if missing) instead
#   --unit-dir DIR    where to write capsa.service (default /etc/systemd/system)
#   --no-reload       do not run systemctl daemon-reload (also skipped when systemd is not running)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv=/opt/capsa/venv
unit_dir=/etc/systemd/system
use_repo=0
reload=1
while (($#)); do
  case "$1" in
    --venv) venv="${2:?--venv needs a directory}"; shift 2 ;;
    --use-repo-venv) use_repo=1; shift ;;
    --unit-dir) unit_dir="${2:?--unit-dir needs a directory}"; shift 2 ;;
    --no-reload) reload=0; shift ;;
    -h|--help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "install: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ((use_repo)); then
  venv="$here/.venv"
  [[ -x "$venv/bin/capsa" ]] || "$here/scripts/setup.sh"
else
  PY="${PYTHON:-python3}"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "install: $PY is older than Python 3.11" >&2; exit 1; }
  [[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  # A regular (not editable) install: the service does not depend on this checkout staying put.
  "$venv/bin/python" -m pip install -q "$here"
fi
capsa="$venv/bin/capsa"
[[ -x "$capsa" ]] || { echo "install: $capsa is missing after the install" >&2; exit 1; }

mkdir -p "$unit_dir"
unit="$unit_dir/capsa.service"
tmp="$(mktemp "$unit_dir/.capsa.service.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# Only the executable changes; every other line (and its comment) is the shipped unit's.
sed "s#^ExecStart=/opt/capsa/venv/bin/capsa #ExecStart=$capsa #" "$here/dist/systemd/capsa.service" >"$tmp"
grep -q "^ExecStart=$capsa daemon" "$tmp" || { echo "install: could not set ExecStart in $unit" >&2; exit 1; }
chmod 0644 "$tmp"
mv -f "$tmp" "$unit"
trap - EXIT
echo "install: capsa $("$capsa" --help >/dev/null && "$venv/bin/python" -c 'import capsa; print(capsa.__version__)') at $capsa"
echo "install: unit written to $unit"

if ((reload)) && command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
  echo "install: systemctl daemon-reload done"
else
  echo "install: systemd not reloaded (--no-reload, or systemd is not running here)"
fi
echo "install: start it with: systemctl enable --now capsa   (then, as root: $capsa ps)"
