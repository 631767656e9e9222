#!/usr/bin/env bash
# The README's test command (CI runs it too): set up, then the whole suite, pretrained-weight tests included.
# Extra arguments go to pytest, e.g. -m "not pretrained" or -k decoder.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh test
exec "$PY" -m pytest -p no:cacheprovider "$@"
