#!/usr/bin/env bash
# Installs everything capsa needs on a fresh Debian/Ubuntu machine, as root:
# system packages (kernel tools, test servers, benchmark peers), a venv in .venv
# and capsa itself (editable) with its pinned test dependencies. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc
  util-linux iproute2 iptables kmod e2fsprogs btrfs-progs dmsetup thin-provisioning-tools
  libseccomp2 busybox-static
  docker-registry skopeo umoci
  runc bubblewrap debootstrap
  chromium chromium-driver
  etcd-server
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package starts a registry listening on all interfaces; tests run their own on 127.0.0.1.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
  systemctl disable docker-registry >/dev/null 2>&1 || true
fi
# Likewise etcd: the cluster tests start their own members on loopback ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
  systemctl disable etcd >/dev/null 2>&1 || true
fi

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for candidate in python3.11 python3 python3.12 python3.13; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$candidate"; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
# Byte-compile capsa once: with PYTHONDONTWRITEBYTECODE set (as on some hosts) every CLI call would
# otherwise compile every module it imports again (~20 ms per command).
.venv/bin/python -m compileall -q -j 0 src >/dev/null
echo "setup: ok ($(.venv/bin/python --version), capsa at $here/.venv/bin/capsa)"
