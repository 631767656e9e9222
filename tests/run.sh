#!/usr/bin/env bash
# The README's test command (CI runs it too): set up, then the whole suite, pretrained-weight tests included.
# Extra arguments go to pytest, e.g. -m "not pretrained" or -k decoder. Two workers (pytest-xdist), one per
# core of the 2-core CI machine: 14 min instead of ~16.5 serially (2026-12-02); -n 0 runs serially.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh test
exec "$PY" -m pytest -p no:cacheprovider -n 2 "$@"
