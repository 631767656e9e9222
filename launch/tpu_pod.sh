#!/usr/bin/env bash
# elm_jax on a Cloud TPU pod slice: the same command on every worker VM at once, joined by jax.distributed.
#
# Usage: launch/tpu_pod.sh TPU_NAME ZONE WORKDIR [elm_jax.main args ...]
#   e.g. launch/tpu_pod.sh my-v4-32 us-central2-b /mnt/shared/runs/elm --config.train.batch_size=256
# WORKDIR must be a folder that every worker sees at the same path (an NFS/Filestore mount): all workers
# write one Orbax checkpoint there. --config defaults to configs/default.py:job=train.
# Env: PROJECT (gcloud project; default: gcloud's), REPO (the repository on the VMs, relative to the home
#      folder or absolute; default elm_jax), PY (python on the VMs; default .venv/bin/python inside REPO),
#      ELM_JAX_PORT (coordinator port; default 8476), LOGDIR (local folder for the workers' logs; default
#      runs/tpu_pod/<name>-<date>), CHECK_SHARED (1: first check that WORKDIR is shared; default 1).
# The repository (and its .venv, see launch/setup_env.sh) must already be on every worker at REPO.
set -euo pipefail

usage() {
  sed -n '4,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
[ $# -ge 3 ] || usage
name="$1"
zone="$2"
workdir="$3"
shift 3
case "$workdir" in
  gs://* | s3://*)
    echo "error: WORKDIR must be a shared filesystem path; object stores are not supported" >&2
    exit 2
    ;;
  /*) ;;
  *)
    echo "error: WORKDIR must be absolute (the workers' working folder is REPO, not yours)" >&2
    exit 2
    ;;
esac
config=(--config=configs/default.py:job=train)
for arg in "$@"; do [[ "$arg" == --config=* ]] && config=(); done
repo="${REPO:-elm_jax}"
py="${PY:-.venv/bin/python}"
cd "$(dirname "$0")/.."
logdir="${LOGDIR:-runs/tpu_pod/$name-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$logdir"

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[ -n "${PROJECT:-}" ] && where+=(--project="$PROJECT")

# `--worker=all` always: a program started on only some workers waits for the others until it times out.
on_workers() { # on_workers WORKERS COMMAND [gcloud args]
  local workers="$1" command="$2"
  shift 2
  "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker="$workers" --command="$command" "$@"
}

if [ "${CHECK_SHARED:-1}" = 1 ]; then
  # A folder that is not shared looks fine until the first checkpoint: each worker then writes its own
  # shards to its own disk and the checkpoint can never be restored.
  marker="$workdir/.shared-check-$(date +%s)-$RANDOM"
  on_workers 0 "mkdir -p $(printf %q "$workdir") && touch $(printf %q "$marker")"
  if ! on_workers all "test -f $(printf %q "$marker")"; then
    echo "error: $workdir is not shared by all workers of $name (worker 0's file is missing on some)" >&2
    exit 1
  fi
  on_workers 0 "rm -f $(printf %q "$marker")"
fi

# Worker 0's internal address with an explicit port: jax's default port has changed between versions
# (0.8.1 moved it past the port GCP's firewall rule opens). jax finds the process count and ids itself.
address="$("${gcloud_tpu[@]}" describe "$name" "${where[@]}" --format='value(networkEndpoints[0].ipAddress)')"
[ -n "$address" ] || { echo "error: could not find worker 0's address of $name" >&2; exit 1; }
coordinator="$address:${ELM_JAX_PORT:-8476}"

args=("${config[@]}" --workdir="$workdir" "$@")
command="cd $(printf %q "$repo") && ELM_JAX_DISTRIBUTED=1 ELM_JAX_COORDINATOR=$(printf %q "$coordinator")"
command+=" exec $(printf %q "$py") -m elm_jax.main$(printf ' %q' "${args[@]}")"
echo "running on all workers of $name (coordinator $coordinator); logs in $logdir:" >&2
echo "  $command" >&2
on_workers all "$command" --output-directory="$logdir"
