#!/usr/bin/env bash
# The README's first command: set up, then run the main job on the embedded default.
# Extra arguments go to the job, e.g. --config.generate.max_new_tokens=16
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh ""  # an explicit (empty) extra: a bare `source` would pass this script's arguments
source launch/cpu_allocator.sh
exec "$PY" -m elm_jax.main --config=configs/default.py --workdir="${WORKDIR:-runs/default}" "$@"
