#!/usr/bin/env bash
# The core's unit tests — JobService, CapsuleManager and the supervisor's request handling, with fake
# resources and a fake supervisor — run as `nobody` (issue 9.5): proof that they need no root.
#
# `nobody` cannot read a checkout or venv under /root, so what the tests import (src, tests and the
# venv's site-packages) is copied into a world-readable temporary directory and run with the system's
# Python of the venv's version (same ABI as the venv's wheels). Removed again at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

version="$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
py=""
for candidate in "/usr/bin/python$version" "/usr/local/bin/python$version"; do
  [[ -x "$candidate" ]] && { py="$candidate"; break; }
done
[[ -n "$py" ]] || { echo "test_unprivileged: no system python$version that nobody can run" >&2; exit 1; }
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

tmp="$(mktemp -d /tmp/capsa-unpriv.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
cp -a "$site" "$tmp/site"
cp -a src tests pyproject.toml "$tmp/"
find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
chmod -R a+rX "$tmp"
install -d -m 1777 "$tmp/basetemp"

cd "$tmp"
runuser -u nobody -- env -i PATH=/usr/bin:/bin HOME="$tmp/basetemp" PYTHONPATH="$tmp/src:$tmp/site" \
  PYTHONDONTWRITEBYTECODE=1 "$py" -m pytest -p no:cacheprovider -q --basetemp="$tmp/basetemp/run" \
  tests/unit/jobs tests/unit/capsules tests/unit/runtime/supervisor tests/unit/runtime/test_runtime_protocol.py \
  tests/unit/runtime/test_runtime_client.py tests/unit/runtime/test_standby_pages.py "$@"
