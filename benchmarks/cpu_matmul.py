"""The CPU matmul kernels under SmolLM2's decode and train steps: XLA (as elm_jax configures it) vs torch.

Decode: each weight shape of a SmolLM2 layer (and the head) multiplied by 1 and by 8 rows, over enough copies
of the weights (>= 512 MiB) that they stream from memory as in a decode step; the rate is weight bytes read per
second, beside the copy bandwidth that `decode.py`'s floor divides by. Train: the forward, input-gradient and
weight-gradient matmuls of a batch of 8 x 128 tokens, in GFLOP/s. Both frameworks get the layout they use:
elm_jax's kernels are (in, out), torch's Linear weights (out, in).

  .venv/bin/python benchmarks/cpu_matmul.py [--out results.json]      # ~3 minutes; needs torch==2.13.0
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from decode import copy_bandwidth, cpu_model  # noqa: E402  (importing elm_jax there sets XLA:CPU flags)
from encoder import markdown  # noqa: E402

from elm_jax.io_utils import atomic_write_json  # noqa: E402

# SmolLM2-135M's matmuls as (name, in, out).
SHAPES = (
    ("q, o", 576, 576),
    ("k, v", 576, 192),
    ("gate, up", 576, 1536),
    ("down", 1536, 576),
    ("head", 576, 49152),
)
STREAM_BYTES = 512 * 2**20
TRAIN_TOKENS = 8 * 128


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_rates(d_in: int, d_out: int, rows: int, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    """Weight bytes read per second by `rows` x (in, out) matmuls over weights that do not fit in cache."""
    copies = max(1, -(-STREAM_BYTES // (4 * d_in * d_out)))
    weights = [rng.standard_normal((d_in, d_out), np.float32) for _ in range(copies)]
    x = rng.standard_normal((rows, d_in), np.float32)
    jax_w, jax_x = [jnp.asarray(w) for w in weights], jnp.asarray(x)
    matmuls = jax.jit(lambda x, ws: [x @ w for w in ws])
    jax_s = _median_seconds(lambda: jax.block_until_ready(matmuls(jax_x, jax_w)), repeats)
    torch_w = [torch.from_numpy(np.ascontiguousarray(w.T)) for w in weights]  # nn.Linear's (out, in)
    torch_x = torch.from_numpy(x)
    with torch.inference_mode():
        torch_s = _median_seconds(lambda: [torch.nn.functional.linear(torch_x, w) for w in torch_w], repeats)
    total = 4 * d_in * d_out * copies
    return {"elm_jax_gb_s": total / jax_s / 1e9, "torch_gb_s": total / torch_s / 1e9}


def train_rates(d_in: int, d_out: int, repeats: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """GFLOP/s of a layer's forward, input-gradient and weight-gradient matmuls at TRAIN_TOKENS tokens."""
    t = TRAIN_TOKENS
    x, dy = rng.standard_normal((t, d_in), np.float32), rng.standard_normal((t, d_out), np.float32)
    w = rng.standard_normal((d_in, d_out), np.float32)
    jx, jdy, jw = jnp.asarray(x), jnp.asarray(dy), jnp.asarray(w)
    tx, tdy, tw = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(np.ascontiguousarray(w.T))
    jax_ops = {
        "forward": (jax.jit(lambda x, w: x @ w), jx, jw),
        "input grad": (jax.jit(lambda dy, w: dy @ w.T), jdy, jw),
        "weight grad": (jax.jit(lambda x, dy: x.T @ dy), jx, jdy),
    }
    torch_ops = {  # what nn.Linear's autograd runs with its (out, in) weight
        "forward": lambda: torch.nn.functional.linear(tx, tw),
        "input grad": lambda: tdy @ tw,
        "weight grad": lambda: tdy.T @ tx,
    }
    flops = 2 * t * d_in * d_out
    rates = {}
    with torch.inference_mode():
        for op, (fn, a, b) in jax_ops.items():
            jax_s = _median_seconds(lambda fn=fn, a=a, b=b: fn(a, b).block_until_ready(), repeats)
            torch_s = _median_seconds(torch_ops[op], repeats)
            rates[op] = {"elm_jax_gflop_s": flops / jax_s / 1e9, "torch_gflop_s": flops / torch_s / 1e9}
    return rates


def _compared(elm_jax: float, torch_rate: float, digits: int) -> list[str]:
    return [f"{elm_jax:.{digits}f}", f"{torch_rate:.{digits}f}", f"{elm_jax / torch_rate:.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=pathlib.Path, help="also write the results here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as XLA:CPU, every core this process may use
    rng = np.random.default_rng(0)
    bandwidth, how = copy_bandwidth()
    print(f"{cpu_model()}; jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s ({how})\n")
    decode, train = [], []
    header = ["in x out", "rows", "elm_jax GB/s", "torch GB/s", "elm_jax / torch"]
    table = [["decode matmul", *header]]
    for name, d_in, d_out in SHAPES:
        for rows in (1, 8):
            r = decode_rates(d_in, d_out, rows, args.repeats, rng)
            decode.append({"matmul": name, "in": d_in, "out": d_out, "rows": rows, **r})
            table.append([name, f"{d_in} x {d_out}", str(rows), *_compared(r["elm_jax_gb_s"], r["torch_gb_s"], 1)])
    print(markdown(table) + "\n", flush=True)
    header = ["in x out", "op", "elm_jax GFLOP/s", "torch GFLOP/s", "elm_jax / torch"]
    table = [[f"train matmul, {TRAIN_TOKENS} tokens", *header]]
    for name, d_in, d_out in SHAPES:
        for op, r in train_rates(d_in, d_out, args.repeats, rng).items():
            train.append({"matmul": name, "in": d_in, "out": d_out, "op": op, **r})
            table.append([name, f"{d_in} x {d_out}", op, *_compared(r["elm_jax_gflop_s"], r["torch_gflop_s"], 0)])
    print(markdown(table))
    if args.out:
        atomic_write_json(
            args.out,
            {
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "cpu": cpu_model(),
                "copy_bandwidth_gb_s": bandwidth / 1e9,
                "decode": decode,
                "train": train,
            },
        )


if __name__ == "__main__":
    main()
