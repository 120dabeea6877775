#!/usr/bin/env bash
# Full test suite, as root on the real kernel: set-up, lint, then pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
"$here/scripts/setup.sh"
.venv/bin/ruff check src tests bench
# The core's unit tests once more as `nobody`: they must not need root (issue 9.5).
"$here/scripts/test_unprivileged.sh"
# The 30 slowest tests are listed before the summary, so a creeping suite shows in every CI log.
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=30 "$@"
