#!/usr/bin/env bash
# Set up (.venv with the test extras, the real MobileNetV2 weights) and run the whole
# test suite. Extra arguments go to pytest. pytest's exit code 5 (no tests ran) fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS=test bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; failing" >&2
    exit 1
fi
exit "$status"
