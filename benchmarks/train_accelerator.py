"""Train-step MFU on an accelerator: the ELM trainer's step around a Llama-3.2-1B-shaped decoder, random weights.

Step time does not depend on weight values, so no checkpoint has to travel to the machine: the decoder (a
shape of benchmarks/decode_accelerator.py) gets random weights, created directly on their shards, and one
adapter (768 -> 2048 -> hidden). Every configuration of the sweep (stage x batch x sequence length x remat
policy) runs the trainer's own jitted step (`elm_jax_step` of benchmarks/train_step.py: `make_train_step`,
the trainer's shardings, donated state) computing in bfloat16 with float32 master weights and AdamW state.
Rows are random tokens with the soft slot at position 4 and the loss on the last `--target` tokens.

MFU = model FLOPs per token (`train_flops_per_token`: every matmul, the LM head on the target window only,
causal attention as half the square; stage 1's frozen LLM costs forward + input gradients) x tokens/s /
(devices x peak bf16 FLOP/s of the device kind, or `--peak-flops`).

  python benchmarks/train_accelerator.py [--model llama3.2-1b] [--stages 2] [--batches 8,16] [--seqs 1024]
      [--target 512] [--remat none,dots] [--mesh data|fsdp] [--steps 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import pathlib
import statistics
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from decode_accelerator import SHAPES  # noqa: E402
from encoder import markdown  # noqa: E402
from train_step import SLOT, STAGES, elm_jax_step  # noqa: E402

from elm_jax import sharding as shd  # noqa: E402
from elm_jax.data.train_batches import BatchSpec, TrainSequence, collate  # noqa: E402
from elm_jax.io_utils import atomic_write_json  # noqa: E402
from elm_jax.models.adapter import AdapterConfig  # noqa: E402
from elm_jax.models.decoder_config import DecoderConfig  # noqa: E402
from elm_jax.models.elm import ELM, ELMConfig  # noqa: E402
from elm_jax.train import init_args, param_shardings  # noqa: E402
from elm_jax.train_log import peak_flops_per_device, train_flops_per_token  # noqa: E402

SPACE = "semantic"
INPUT_DIM = 768  # a sentence-T5-sized semantic space
HIDDEN_DIM = 2048
GOAL_MFU = 0.45  # stage 2, a >= 1B model, on an H100


def random_batch(config: DecoderConfig, spec: BatchSpec, target: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full rows of random tokens, the soft slot at SLOT, the loss on the last `target` tokens."""
    rng = np.random.default_rng(seed)
    soft = np.where(np.arange(spec.seq_len) == SLOT, 0, -1).astype(np.int32)
    rows = []
    for _ in range(spec.global_batch):
        tokens = rng.integers(3, config.vocab_size, spec.seq_len).astype(np.int32)
        vector = rng.standard_normal(INPUT_DIM).astype(np.float32)
        rows.append(TrainSequence(tokens, soft, spec.seq_len - target, (vector / np.linalg.norm(vector),), (0,)))
    return collate(rows, spec, pad_id=0)


def measure_config(
    config: DecoderConfig,
    stage: int,
    batch: int,
    seq: int,
    target: int,
    mesh: jax.sharding.Mesh,
    steps: int,
    peak: float | None,
) -> dict[str, Any]:
    """Times `steps` trainer steps (after two untimed ones: compilation, then a warm step) of one configuration."""
    model = ELM(ELMConfig(config, ((SPACE, AdapterConfig(INPUT_DIM, config.hidden_size, HIDDEN_DIM)),)))
    shardings = param_shardings(model, mesh, shd.DEFAULT_RULES)
    init = jax.jit(lambda key: nn.unbox(model.init(key, *init_args(model))["params"]), out_shardings=shardings)
    params = init(jax.random.key(0))
    spec = BatchSpec(batch, seq, ((SPACE, INPUT_DIM),), max_slots=1, target_len=target)
    step = elm_jax_step(model, params, STAGES[stage], random_batch(config, spec, target), spec, mesh)
    del params  # the step holds its own copy
    start = time.perf_counter()
    loss, _ = step()
    compile_s = time.perf_counter() - start
    step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    ms = 1e3 * statistics.median(seconds)
    tokens_per_s = batch * seq / (ms / 1e3)
    flops = train_flops_per_token(config, seq, weight_grads=stage == 2, head_tokens=target)
    memory = jax.devices()[0].memory_stats() or {}
    return {
        "stage": stage,
        "batch": batch,
        "seq": seq,
        "target": target,
        "remat": config.remat_policy,
        "params": config.num_params(),
        "first_loss": loss,
        "compile_s": compile_s,
        "step_ms": ms,
        "step_ms_range": (1e3 * min(seconds), 1e3 * max(seconds)),
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_s_per_device": tokens_per_s * flops / mesh.devices.size / 1e12,
        "mfu": tokens_per_s * flops / (mesh.devices.size * peak) if peak else None,
        "peak_bytes_in_use": memory.get("peak_bytes_in_use"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama3.2-1b", choices=sorted(SHAPES))
    parser.add_argument("--stages", default="2", help="1 (adapter only), 2 (everything), or both: 1,2")
    parser.add_argument("--batches", default="8,16", help="global batch sizes (rows)")
    parser.add_argument("--seqs", default="1024", help="sequence lengths")
    parser.add_argument("--target", type=float, default=0.5, help="loss tokens per row, as a fraction of --seqs")
    parser.add_argument("--remat", default="none,dots", help="remat policies: none | full | dots | dots_no_batch")
    parser.add_argument("--mesh", default="data", choices=("data", "fsdp"), help="the axis all devices go on")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (median)")
    parser.add_argument("--peak-flops", type=float, default=0.0, help="per device; 0: look up the device kind")
    parser.add_argument("--out", type=pathlib.Path, help="also write the results here as JSON")
    args = parser.parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    if not set(stages) <= set(STAGES) or args.steps < 1 or not 0 < args.target < 1:
        parser.error("need --stages from 1,2, --steps >= 1 and 0 < --target < 1")

    device = jax.devices()[0]
    peak = args.peak_flops or peak_flops_per_device(device)
    mesh = shd.make_mesh({args.mesh: -1})
    print(
        f"{datetime.date.today()} | {jax.device_count()} x {device.device_kind} | jax {jax.__version__} | peak"
        f" {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s bf16 per device | mesh {dict(mesh.shape)}",
        flush=True,
    )
    rows = []
    configs = itertools.product(stages, args.remat.split(","), map(int, args.seqs.split(",")), args.batches.split(","))
    for stage, remat, seq, batch in configs:
        config = SHAPES[args.model].replace(
            dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy=remat
        )
        target = max(1, int(seq * args.target))
        try:
            row = measure_config(config, stage, int(batch), seq, target, mesh, args.steps, peak)
        except Exception as e:  # an out-of-memory configuration must not end the sweep
            row = {"stage": stage, "batch": int(batch), "seq": seq, "remat": remat, "error": str(e).splitlines()[0]}
        rows.append(row)
        print(row, flush=True)
    table = [["stage", "batch x seq", "remat", "step ms", "tokens/s", "TFLOP/s/device", "MFU", "peak GiB", "compile s"]]
    for r in rows:
        if "error" in r:
            table.append(
                [str(r["stage"]), f"{r['batch']} x {r['seq']}", r["remat"], r["error"][:60], "", "", "", "", ""]
            )
            continue
        table.append(
            [
                str(r["stage"]),
                f"{r['batch']} x {r['seq']}",
                r["remat"],
                f"{r['step_ms']:.1f}",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['model_tflops_per_s_per_device']:.1f}",
                f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a",
                f"{r['peak_bytes_in_use'] / 2**30:.1f}" if r["peak_bytes_in_use"] else "n/a",
                f"{r['compile_s']:.0f}",
            ]
        )
    print(
        f"\n{args.model} ({SHAPES[args.model].num_params() / 1e9:.2f}B parameters), bf16 compute, f32 master weights\n"
    )
    print(markdown(table))
    best = max((r["mfu"] for r in rows if r.get("mfu") is not None and r["stage"] == 2), default=None)
    if best is not None:
        print(f"\nstage 2: best MFU {100 * best:.1f}% (goal {100 * GOAL_MFU:.0f}% on an H100)")
    if args.out:
        atomic_write_json(args.out, {"device": device.device_kind, "devices": jax.device_count(), "rows": rows})


if __name__ == "__main__":
    main()
