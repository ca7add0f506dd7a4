#!/usr/bin/env bash
# Set up (.venv with the test extras, the real MobileNetV2 weights) and run the whole
# test suite. Extra arguments go to pytest. pytest's exit code 5 (no tests ran) fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS=test bash "$ROOT/scripts/setup.sh"
# tests/test_links.py's reflink case loop-mounts an XFS image: it needs mkfs.xfs (Debian's
# xfsprogs). Best effort, as root with apt only; without it that one test skips, saying why.
if ! command -v mkfs.xfs >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { timeout 300 apt-get install -y -q xfsprogs || { timeout 300 apt-get update -q && timeout 300 apt-get install -y -q xfsprogs; }; } \
        >/dev/null 2>&1 || echo "test.sh: could not install xfsprogs; the reflink test will skip" >&2
fi
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
