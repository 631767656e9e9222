"""Decode throughput: elm_jax `generate` vs Hugging Face transformers, and the memory-bandwidth limit.

Both run greedy decoding of SmolLM2-135M-Instruct from the same converted weights, on the same left-padded
prompts, never stopping early: in float32, and with int8 weights and activations (elm_jax
`SamplingConfig(quant="int8")` against torch's dynamic int8 quantization of every Linear, per-channel weights).
The per-step decode time is a difference, (time(N tokens) - time(16 tokens)) / (N - 16), so prefill, dispatch
and compilation cancel out.

  .venv/bin/python benchmarks/decode.py [--new-tokens N] [--batch-sizes 1,8] [--quant none,int8] [--out results.json]
  .venv/bin/python benchmarks/decode.py --skip-reference   # elm_jax only: no torch needed

The reference needs `pip install torch==2.13.0 accelerate==1.15.0` (that pin is a CPU-only build).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elm_jax import generate as gen  # importing elm_jax sets XLA:CPU flags before the backend starts
from elm_jax.io_utils import atomic_write_json
from elm_jax.models.quantize import quantized_params
from elm_jax.weights.pretrained import LoadedDecoder, load_decoder

CHECKPOINT = "smollm2-135m-instruct"
PROMPT = "The capital of France is"
PROMPT_LEN = 16  # every prompt is left-padded to this many tokens
SHORT_TOKENS = 16  # the short run of the difference
CHECK_TOKENS = 10  # greedy tokens that must agree between elm_jax and transformers at batch 1
GOAL_SPEEDUP = 3.0  # elm_jax vs transformers at batch 1, at least
GOAL_LIMIT_RATIO = 1.5  # elm_jax ms/step vs the bandwidth limit, at most
COPY_BYTES = 512 * 2**20
WEIGHTS = {"none": "float32", "int8": "int8"}  # --quant value -> the table's name for it

Runner = Callable[[int], np.ndarray]  # n -> (batch, n) generated tokens, blocking until done


@dataclasses.dataclass
class Timing:
    ms_per_step: float  # median over repeats of (t(long) - t(short)) / (long - short)
    ms_range: tuple[float, float]  # the smallest and largest of those repeats: how noisy the machine was
    prefill_ms: float  # t(short) - (short - 1) steps: prefill, first token and per-call overhead
    warmup_s: float  # first calls of both lengths minus steady ones: compilation and warm-up
    tokens: np.ndarray  # (batch, long) tokens of the long run


def _seconds(fn: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def measure(runs: dict[Any, Runner], short: int, long: int, repeats: int) -> dict[Any, Timing]:
    """Warms up both lengths of every runner, then times short and long runs, the runners in alternation.

    Alternating inside each repeat keeps this VM's minute-to-minute speed drift out of the runners' ratio.
    """
    first = {name: _seconds(run, short) + _seconds(run, long) for name, run in runs.items()}
    shorts: dict[Any, list[float]] = {name: [] for name in runs}
    longs: dict[Any, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            shorts[name].append(_seconds(run, short))
            longs[name].append(_seconds(run, long))
    timings = {}
    for name, run in runs.items():
        steps = [(tl - ts) / (long - short) for ts, tl in zip(shorts[name], longs[name])]
        step = statistics.median(steps)
        timings[name] = Timing(
            ms_per_step=1e3 * step,
            ms_range=(1e3 * min(steps), 1e3 * max(steps)),
            prefill_ms=1e3 * (statistics.median(shorts[name]) - (short - 1) * step),
            warmup_s=first[name] - statistics.median(shorts[name]) - statistics.median(longs[name]),
            tokens=run(long),
        )
    return timings


def elm_jax_runner(loaded: LoadedDecoder, ids: np.ndarray, mask: np.ndarray, quant: str) -> Runner:
    embeddings = gen._compiled_embed(loaded.config)(loaded.params, jnp.asarray(ids))
    mask_j, rng = jnp.asarray(mask), jax.random.key(0)

    def run(n: int) -> np.ndarray:
        sampling = gen.SamplingConfig(max_new_tokens=n, quant=quant)  # greedy; no stop ids: always n steps
        tokens, _ = gen.generate(
            loaded.model, loaded.params, embeddings, mask_j, rng, sampling, pad_id=loaded.tokenizer.pad_id
        )
        return np.asarray(tokens)

    return run


def transformers_runners(
    path: pathlib.Path, inputs: dict[int, tuple[np.ndarray, np.ndarray]], pad_id: int, threads: int, quant: str
) -> tuple[dict[int, Runner], str]:
    """Runners per batch size for transformers' `generate` (KV cache, greedy); and torch's version.

    quant="int8": torch's dynamic int8 quantization of every Linear (the tied head included), with per-channel
    weight scales as elm_jax's; its activations are quantized per tensor.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if quant == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)

    def runner(ids: np.ndarray, mask: np.ndarray) -> Runner:
        ids_t, mask_t = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

        def run(n: int) -> np.ndarray:
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids_t,
                    attention_mask=mask_t,
                    do_sample=False,
                    use_cache=True,
                    min_new_tokens=n,
                    max_new_tokens=n,
                    pad_token_id=pad_id,
                )
            return out[:, ids.shape[1] :].numpy()

        return run

    return {b: runner(*inputs[b]) for b in inputs}, torch.__version__


def copy_bandwidth() -> tuple[float, str]:
    """Bytes/s of copying a 512 MiB float32 array, counting read + write; best of 5."""
    n = COPY_BYTES // 4
    if jax.default_backend() == "cpu":
        src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
        copies, copy, how = 1, (lambda: np.copyto(dst, src)), "numpy np.copyto of 512 MiB float32"
    else:  # ten queued copies, so that the dispatch latency of one is not timed as memory traffic
        x, add_one = jnp.ones(n, jnp.float32), jax.jit(lambda a: a + 1)
        copies, how = 10, "jax on-device x + 1 of 512 MiB float32, 10 queued"
        copy = lambda: [add_one(x) for _ in range(copies)][-1].block_until_ready()
    copy()
    return 2 * COPY_BYTES * copies / min(_seconds(copy) for _ in range(5)), how


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=144, help=f"long run length (short run: {SHORT_TOKENS})")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=5, help="timed short/long pairs per measurement (>= 3)")
    parser.add_argument("--skip-reference", action="store_true", help="elm_jax only (no torch needed)")
    parser.add_argument("--quant", default="none,int8", help="weights to time: none (float32) and/or int8")
    parser.add_argument("--out", type=pathlib.Path, help="also write the results here as JSON")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    quants = args.quant.split(",")
    short, long = SHORT_TOKENS, args.new_tokens
    if long <= short or args.repeats < 3:
        parser.error(f"--new-tokens must exceed {short} and --repeats must be >= 3")
    if not quants or set(quants) - set(WEIGHTS):
        parser.error(f"--quant {args.quant!r}: a comma-separated choice of {', '.join(WEIGHTS)}")

    threads = len(os.sched_getaffinity(0))
    device = jax.devices()[0]
    machine = (
        cpu_model() if device.platform == "cpu" else f"{device.device_kind} ({device.platform}), host {cpu_model()}"
    )
    print(
        f"machine: {machine}; {threads} cores; jax {jax.__version__}, backend {jax.default_backend()};"
        f" load average {os.getloadavg()[0]:.2f} (other work on the machine skews the timings)"
    )

    loaded = load_decoder(CHECKPOINT)
    cfg = loaded.config
    prompt_ids = loaded.tokenizer.encode(PROMPT)
    inputs = {b: gen.left_pad([prompt_ids] * b, loaded.tokenizer.pad_id, PROMPT_LEN) for b in batches}

    # One measurement per batch size: every runner of that size alternates with the others.
    runs = {b: {("elm_jax", q): elm_jax_runner(loaded, *inputs[b], q) for q in quants} for b in batches}
    torch_version = None
    if not args.skip_reference:
        for q in quants:
            ref_runs, torch_version = transformers_runners(loaded.path, inputs, loaded.tokenizer.pad_id, threads, q)
            for b in batches:
                runs[b][("transformers", q)] = ref_runs[b]
        print(f"torch {torch_version}, {threads} threads")
    timed = {b: measure(runs[b], short, long, args.repeats) for b in batches}

    # Bandwidth limit: every weight read once per step (the tied embedding once, as the LM head; int8 codes and
    # their float32 scales) plus the float32 K and V caches at the mean cache length of the differenced steps.
    weight_bytes = {
        q: sum(x.nbytes for x in jax.tree.leaves(quantized_params(loaded.params) if q == "int8" else loaded.params))
        for q in quants
    }
    mean_cache = PROMPT_LEN + (short + long) / 2
    kv_bytes = lambda b: 2 * cfg.num_layers * b * mean_cache * cfg.num_kv_heads * cfg.head_dim * 4
    bandwidth, bandwidth_how = copy_bandwidth()
    formula = (
        "bytes/step = weight bytes ("
        + ", ".join(f"{WEIGHTS[q]} {weight_bytes[q] / 1e6:.1f} MB" for q in quants)
        + ", tied embedding once) + 2*layers*batch*S*kv_heads*head_dim*4 (K and V, float32),"
        f" S = {PROMPT_LEN} + ({short}+{long})/2 = {mean_cache:g} cache slots"
    )
    print(f"copy bandwidth: {bandwidth / 1e9:.2f} GB/s ({bandwidth_how})\n{formula}\n")

    rows = []
    for b in batches:
        for q in quants:
            e = timed[b][("elm_jax", q)]
            r = timed[b].get(("transformers", q))
            r_float = timed[b].get(("transformers", "none"))
            limit_ms = 1e3 * (weight_bytes[q] + kv_bytes(b)) / bandwidth
            rows.append(
                {
                    "batch": b,
                    "weights": WEIGHTS[q],
                    "elm_jax_ms_per_step": e.ms_per_step,
                    "elm_jax_ms_range": e.ms_range,
                    "elm_jax_tok_s": b * 1e3 / e.ms_per_step,
                    "elm_jax_prefill_ms": e.prefill_ms,
                    "elm_jax_warmup_s": e.warmup_s,
                    "limit_ms_per_step": limit_ms,
                    "elm_jax_over_limit": e.ms_per_step / limit_ms,
                    "transformers_ms_per_step": r and r.ms_per_step,
                    "transformers_ms_range": r and r.ms_range,
                    "transformers_tok_s": r and b * 1e3 / r.ms_per_step,
                    "transformers_prefill_ms": r and r.prefill_ms,
                    "speedup": r and r.ms_per_step / e.ms_per_step,
                    "speedup_vs_transformers_float32": r_float and r_float.ms_per_step / e.ms_per_step,
                }
            )

    fmt = lambda v, spec, unit="": "–" if v is None else format(v, spec) + unit
    print(
        "| batch | weights | elm_jax tok/s | elm_jax ms/step | transformers tok/s (same weights) | speed-up"
        " | speed-up vs transformers float32 | bandwidth-limit ms/step | elm_jax / limit |"
        "\n|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {row['batch']} | {row['weights']} | {row['elm_jax_tok_s']:.1f} | {row['elm_jax_ms_per_step']:.2f}"
            f" | {fmt(row['transformers_tok_s'], '.1f')} | {fmt(row['speedup'], '.2f', 'x')}"
            f" | {fmt(row['speedup_vs_transformers_float32'], '.2f', 'x')}"
            f" | {row['limit_ms_per_step']:.2f} | {row['elm_jax_over_limit']:.2f}x |"
        )
    span = lambda r: "–" if r is None else f"{r[0]:.1f}–{r[1]:.1f}"
    print(
        "\n| batch | weights | elm_jax ms/step, range | transformers ms/step, range | elm_jax prefill+overhead ms"
        " | transformers prefill+overhead ms | elm_jax compile+warm-up s |\n|---:|---|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {row['batch']} | {row['weights']} | {span(row['elm_jax_ms_range'])}"
            f" | {span(row['transformers_ms_range'])} | {row['elm_jax_prefill_ms']:.1f}"
            f" | {fmt(row['transformers_prefill_ms'], '.1f')} | {row['elm_jax_warmup_s']:.1f} |"
        )

    print(
        f"\ngoal: elm_jax / limit <= {GOAL_LIMIT_RATIO}x: "
        + ", ".join(
            f"batch {r['batch']} {r['weights']} {'met' if r['elm_jax_over_limit'] <= GOAL_LIMIT_RATIO else 'NOT met'}"
            for r in rows
        )
    )
    agree = {}
    ref = timed[1].get(("transformers", "none")) if 1 in batches else None
    for q in quants if ref else ():
        row = next(r for r in rows if r["batch"] == 1 and r["weights"] == WEIGHTS[q])
        speedup = row["speedup_vs_transformers_float32"]
        print(
            f"goal: speed-up >= {GOAL_SPEEDUP}x transformers float32 at batch 1, elm_jax {WEIGHTS[q]}:"
            f" {'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}"
        )
        ours, theirs = timed[1][("elm_jax", q)].tokens[0], ref.tokens[0]
        agree[WEIGHTS[q]] = bool(np.array_equal(ours[:CHECK_TOKENS], theirs[:CHECK_TOKENS]))
        same = int(np.argmin(ours == theirs)) if not np.array_equal(ours, theirs) else len(ours)
        print(
            f"greedy tokens at batch 1, elm_jax {WEIGHTS[q]} against transformers float32: first {CHECK_TOKENS}"
            f" {'agree' if agree[WEIGHTS[q]] else 'DIFFER'}; {same} of {long} agree before the first difference"
        )
        print(f"  elm_jax:      {loaded.tokenizer.decode(ours[:CHECK_TOKENS])!r}")
        print(f"  transformers: {loaded.tokenizer.decode(theirs[:CHECK_TOKENS])!r}")

    if args.out:
        atomic_write_json(
            args.out,
            {
                "date": datetime.date.today().isoformat(),
                "machine": machine,
                "cores": threads,
                "jax": jax.__version__,
                "torch": torch_version,
                "backend": jax.default_backend(),
                "checkpoint": CHECKPOINT,
                "prompt": PROMPT,
                "prompt_len": PROMPT_LEN,
                "short_tokens": short,
                "new_tokens": long,
                "repeats": args.repeats,
                "copy_bandwidth_gb_s": bandwidth / 1e9,
                "bandwidth_method": bandwidth_how,
                "limit_formula": formula,
                "greedy_first_tokens_agree_with_transformers_float32": agree,
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
