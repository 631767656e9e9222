#!/usr/bin/env bash
# Sourced by the CPU launch scripts: preloads jemalloc, when installed (`apt install libjemalloc2`), told to keep
# freed pages. Why: XLA:CPU allocates each step's temporaries afresh, and glibc maps and unmaps blocks that large,
# so every SmolLM2 stage-2 train step page-faulted ~2 GB back in (~1 s of kernel time; more after an idle spell
# on a VM). With jemalloc keeping its pages the step took 4.4 against 4.8 s on the 2-core Intel VM
# (benchmarks/README.md). The price: the process keeps its peak memory until it exits.
# A preload already set wins; ELM_JAX_JEMALLOC=0 turns this off.
_elm_ldconfig="$(command -v ldconfig || echo /sbin/ldconfig)"  # /sbin is not on every user's PATH
# Never fails (the launch scripts run under `set -euo pipefail`): no ldconfig, or no jemalloc, gives "".
_elm_jemalloc="$({ "$_elm_ldconfig" -p 2>/dev/null || true; } | awk '/libjemalloc\.so\.2 /{found = $NF} END {print found}')"
if [ -n "$_elm_jemalloc" ] && [ "${ELM_JAX_JEMALLOC:-1}" != 0 ] && [ -z "${LD_PRELOAD:-}" ]; then
  export LD_PRELOAD="$_elm_jemalloc"
  export MALLOC_CONF="${MALLOC_CONF:-dirty_decay_ms:-1,muzzy_decay_ms:-1}"
fi
unset _elm_ldconfig _elm_jemalloc
