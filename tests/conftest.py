"""Test-session set-up: 8 simulated CPU devices so every sharding path runs everywhere.

Both settings must happen before JAX starts its backend, so this module imports elm_jax (which sets
its XLA:CPU flags) before anything touches a device.
"""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the numpy oracles must not fight XLA for 2 cores

import jax  # noqa: E402

import elm_jax  # noqa: E402,F401  (sets XLA flags)

jax.config.update("jax_num_cpu_devices", 8)
