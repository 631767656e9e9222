"""elm_jax: Embedding Language Models (Tennenholtz et al., ICLR 2024) in JAX/Flax."""

import os as _os

# XLA:CPU's default dot emitter is slow for the skinny matmuls of decoding and small-batch training;
# XNNPACK fusions make CPU decode ~1.4x faster (benchmarks/decode.py). CPU-only flag: accelerators
# ignore it. It must be set before JAX starts its backend; a user's own setting of it wins.
_XNN_FLAG = "--xla_cpu_experimental_xnn_fusion_type"
if _XNN_FLAG not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_XNN_FLAG}=dot,eltwise".strip()
