#!/usr/bin/env bash
# Full test suite, as root on the real kernel: set-up, lint, then pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
"$here/scripts/setup.sh"
.venv/bin/ruff check src tests bench
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
