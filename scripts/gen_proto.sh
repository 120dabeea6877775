#!/usr/bin/env bash
# Regenerates src/capsa/api/gen from src/capsa/api/proto (tests/unit/api/test_proto_current.py checks it is current).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
out="${1:-$here/src/capsa/api/gen}"
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I "$here/src/capsa/api/proto" --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  $(cd "$here/src/capsa/api/proto" && find capsa -name '*.proto' | sort)
# protoc emits absolute-package imports ("from capsa.v1 import ..."); make them relative to capsa.api.gen.
find "$out" -name '*.py' -exec sed -i -E 's/^from capsa\.v1 import/from capsa.api.gen.capsa.v1 import/' {} +
find "$out" -type d -exec sh -c 'touch "$0/__init__.py"' {} \;
