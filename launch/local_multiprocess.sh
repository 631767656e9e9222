#!/usr/bin/env bash
# N elm_jax processes on this machine, joined over loopback: the multi-host code path (jax.distributed,
# per-host batches, Orbax saving from several processes) without a cluster, e.g. to try a config before
# a pod slice. CPU only: each process gets DEVICES_PER_PROCESS simulated CPU devices, so a mesh spans
# N * DEVICES_PER_PROCESS devices (on a GPU machine, N processes would otherwise all claim every GPU).
#
# Usage: launch/local_multiprocess.sh N [elm_jax.main args ...]
#   e.g. launch/local_multiprocess.sh 2 --config=configs/default.py:job=train --workdir=runs/mp
# Env:   DEVICES_PER_PROCESS (default 1), PORT (default: a free one), LOGDIR (default: runs/local_multiprocess/
#        <date>), PY (default .venv/bin/python), ELM_JAX_INIT_TIMEOUT (seconds, default 300).
# Every process shares the --workdir (checkpoints need one folder all processes see). The first process to
# fail ends the run: its peers would otherwise wait for it in a collective until they time out.
set -euo pipefail

usage() {
  sed -n '7,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
[ $# -ge 1 ] || usage
n="$1"
shift
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "error: N must be a positive integer, not '$n'" >&2; usage; }
devices="${DEVICES_PER_PROCESS:-1}"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || { echo "error: DEVICES_PER_PROCESS must be a positive integer" >&2; exit 2; }

cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
source launch/cpu_allocator.sh
# An explicit port: jax's default coordinator port has changed between versions (jax_anchors §3.4).
port="${PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
logdir="${LOGDIR:-runs/local_multiprocess/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$logdir"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
trap 'exit 130' INT TERM # runs the EXIT trap: no process is left waiting for its peers

for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$devices" \
    ELM_JAX_COORDINATOR="127.0.0.1:$port" ELM_JAX_NUM_PROCESSES="$n" ELM_JAX_PROCESS_ID="$i" \
    "$PY" -m elm_jax.main "$@" >"$logdir/process_$i.log" 2>&1 &
  pids+=("$!")
done
echo "started $n processes x $devices CPU devices, coordinator 127.0.0.1:$port; follow: tail -f $logdir/process_0.log" >&2

for ((i = 0; i < n; i++)); do
  if ! wait -n; then
    echo "error: a process failed; stopping the others. Last lines of each log:" >&2
    for ((j = 0; j < n; j++)); do
      echo "--- $logdir/process_$j.log" >&2
      tail -n 15 "$logdir/process_$j.log" >&2
    done
    exit 1
  fi
done
echo "all $n processes finished; logs in $logdir" >&2
