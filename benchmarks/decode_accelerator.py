"""Decode throughput on an accelerator against its memory-bandwidth floor, with random weights.

Decoding speed does not depend on weight values, so this builds SmolLM2-135M- and Llama-3.2-1B-shaped
decoders with random bfloat16 weights (no checkpoint has to travel to the machine) and times greedy
decoding with the same difference method as benchmarks/decode.py. The floor is the bytes read per step
(all weights once, plus the KV cache at its mean length) over the measured device-to-device copy bandwidth.

  python benchmarks/decode_accelerator.py [--batch-sizes 1,8,64] [--new-tokens 272] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from decode import SHORT_TOKENS, measure  # noqa: E402  (the shared timing method)

from elm_jax import generate as gen  # noqa: E402
from elm_jax.io_utils import atomic_write_json  # noqa: E402
from elm_jax.models.decoder import Decoder  # noqa: E402
from elm_jax.models.decoder_config import DecoderConfig, RopeConfig  # noqa: E402

PROMPT_LEN = 64
SHAPES = {
    "smollm2-135m": DecoderConfig(
        family="llama",
        vocab_size=49152,
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        mlp_dim=1536,
        rope=RopeConfig(1e5),
        local_rope=RopeConfig(1e5),
        query_scale=64**-0.5,
    ),
    "llama3.2-1b": DecoderConfig(
        family="llama",
        vocab_size=128256,
        hidden_size=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        mlp_dim=8192,
        rope=RopeConfig(5e5, "llama3", 32.0, 1.0, 4.0, 8192),
        local_rope=RopeConfig(5e5, "llama3", 32.0, 1.0, 4.0, 8192),
        query_scale=64**-0.5,
    ),
}


def copy_bandwidth_bytes_per_s() -> float:
    """Device-to-device copy, counting bytes read and written; best of several."""
    x = jnp.ones((1 << 28,), jnp.float32)  # 1 GiB
    copy = jax.jit(lambda a: a + 0)
    copy(x).block_until_ready()
    best = min(_timed(lambda: copy(x).block_until_ready()) for _ in range(10))
    return 2 * x.nbytes / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SHAPES), help=f"any of {', '.join(SHAPES)}")
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--new-tokens", type=int, default=272)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scan-layers", type=int, default=1, help="1: nn.scan over layers; 0: separate layers")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    device = jax.devices()[0]
    bandwidth = copy_bandwidth_bytes_per_s()
    print(
        f"{datetime.date.today()} | {device.device_kind} | jax {jax.__version__} | copy bandwidth "
        f"{bandwidth / 1e12:.2f} TB/s (read+write)\n"
    )
    print("| model | batch | tok/s | ms/step | floor ms/step | ms/step / floor |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in args.models.split(","):
        config = SHAPES[name].replace(dtype="bfloat16", param_dtype="bfloat16", scan_layers=bool(args.scan_layers))
        model = Decoder(config)
        params = jax.jit(lambda k, m=model: m.init(k, jnp.zeros((1, 1), jnp.int32))["params"])(jax.random.key(0))
        params = jax.tree.map(
            lambda p: p.value if hasattr(p, "value") else p, params, is_leaf=lambda p: hasattr(p, "value")
        )
        weight_bytes = sum(p.nbytes for p in jax.tree.leaves(params))
        for batch in map(int, args.batch_sizes.split(",")):
            ids = np.random.default_rng(0).integers(0, config.vocab_size, (batch, PROMPT_LEN)).astype(np.int32)
            mask = np.ones_like(ids, bool)
            emb = gen._compiled_embed(config)(params, ids)

            def run(n: int, emb=emb, mask=mask, params=params, model=model) -> np.ndarray:
                tokens, _ = gen.generate(model, params, emb, mask, jax.random.key(0), gen.SamplingConfig(n))
                return np.asarray(tokens)

            timing = measure(run, SHORT_TOKENS, args.new_tokens, args.repeats)
            mean_len = PROMPT_LEN + (SHORT_TOKENS + args.new_tokens) / 2
            kv_bytes = 2 * config.num_layers * batch * mean_len * config.num_kv_heads * config.head_dim * 2
            floor_ms = (weight_bytes + kv_bytes) / bandwidth * 1e3
            row = dict(
                model=name,
                batch=batch,
                params=int(weight_bytes // 2),
                ms_per_step=timing.ms_per_step,
                tok_s=batch / timing.ms_per_step * 1e3,
                floor_ms=floor_ms,
            )
            rows.append(row)
            print(
                f"| {name} | {batch} | {row['tok_s']:.0f} | {timing.ms_per_step:.3f} | {floor_ms:.3f} | "
                f"{timing.ms_per_step / floor_ms:.2f}x |",
                flush=True,
            )
    if args.out:
        atomic_write_json(args.out, {"device": device.device_kind, "bandwidth_bytes_per_s": bandwidth, "rows": rows})


if __name__ == "__main__":
    main()
