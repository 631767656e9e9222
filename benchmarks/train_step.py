"""Train-step throughput: the elm_jax ELM trainer's step vs the same step in PyTorch/transformers (CPU).

Both train an ELM around SmolLM2-135M-Instruct in float32 (or, with `--dtype bfloat16`, computing in
bfloat16 from float32 weights) from the same converted weights, with one MLP
adapter (384 -> 1024 -> 576, GELU-tanh: the shape for all-MiniLM-L6-v2 vectors) initialised identically,
on the same batch: rows of tokenised movie descriptions, one soft slot near the start, the loss on the last
`--target` tokens. Stage 1 trains the adapter only (the LLM frozen, but backpropagated through to reach the
adapter); stage 2 trains everything. Both use AdamW with the trainer's global-norm clipping.

elm_jax runs the real trainer step (`make_train_step`, `make_optimizer`, `partition`, the shardings and
buffer donation of `elm_jax.train.train_stage`); PyTorch runs transformers' LlamaForCausalLM with the
adapter output written into `inputs_embeds`. After `--warmup` steps each (elm_jax compiles in the first),
the two take timed steps in alternation, so background load on a shared machine hits both alike; the
median step is reported. The first step's loss and gradient norm of both must agree: same weights, same data.

torch runs with OMP_WAIT_POLICY=PASSIVE unless the environment sets it. With libgomp's default (threads spin
at every barrier) and a second process on the other core, each of torch's ~3,000 small parallel ops per step
waits out a scheduler time slice: an elementwise multiply of 1.5M floats took 8 ms instead of 0.2 ms on the
shared 2-core VM, and a whole step 3-4x longer. That would measure the machine's load, not the frameworks.

  .venv/bin/python benchmarks/train_step.py [--steps 3] [--warmup 1] [--batch 8] [--seq 128] [--stages 1,2]
                                             [--dtype float32|bfloat16]

The reference needs `pip install torch==2.13.0` (a CPU-only build; the `bench` extra of setup.py).
"""

from __future__ import annotations

import os

# libgomp (torch's OpenMP) reads this once, when torch loads it (transformers imports torch): set it first.
# Why PASSIVE: see the docstring.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import datetime
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from decode import cpu_model  # noqa: E402  (importing elm_jax, as decode does, sets XLA:CPU flags)
from encoder import make_sentences, markdown  # noqa: E402

from elm_jax import sharding as shd  # noqa: E402
from elm_jax.data.train_batches import BatchSpec, TrainSequence, collate  # noqa: E402
from elm_jax.io_utils import atomic_write_json  # noqa: E402
from elm_jax.models.adapter import AdapterConfig  # noqa: E402
from elm_jax.models.elm import ELM, ELMConfig, init_params  # noqa: E402
from elm_jax.optim import OptimConfig, make_optimizer, partition  # noqa: E402
from elm_jax.tokenizer import Tokenizer  # noqa: E402
from elm_jax.train import batch_shardings, global_batch, param_shardings  # noqa: E402
from elm_jax.train_step import StepConfig, frozen_for_step, make_train_step  # noqa: E402
from elm_jax.weights.pretrained import load_decoder  # noqa: E402

CHECKPOINT = "smollm2-135m-instruct"
SPACE = "semantic"
INPUT_DIM = 384  # all-MiniLM-L6-v2 vectors
HIDDEN_DIM = 1024
SLOT = 4  # the soft slot's position in every row
STAGES = {1: r"adapters_.*", 2: r".*"}  # trainable regex per stage, as in the trainer's stage configs
OPTIM = dict(learning_rate=1e-4, b1=0.9, b2=0.999, weight_decay=0.01, grad_clip=1.0)
GOAL_SPEEDUP = 1.5  # elm_jax tokens/s over PyTorch's, at least

Step = Callable[[], tuple[float, float]]  # one training step, blocking until done: (loss, gradient norm)


@dataclasses.dataclass
class Timing:
    first_loss: float  # the loss of the very first step (before any update)
    first_grad_norm: float  # and its global gradient norm (before clipping): the backward pass agrees too
    first_s: float  # the first step (elm_jax: compilation included)
    seconds: list[float]  # the timed steps, wall clock
    cpu_seconds: list[float]  # the same steps, CPU time of all the process's threads

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.seconds)

    @property
    def cores(self) -> float:
        """Cores busy on average: 2 on a free 2-core machine, ~1 when other work holds the second core."""
        return statistics.median(c / s for c, s in zip(self.cpu_seconds, self.seconds))


def make_batch(tokenizer: Tokenizer, spec: BatchSpec, target: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The trainer's batch layout (`collate`): full rows of real text, a soft slot at SLOT, the loss on the
    last `target` tokens; unit-norm random vectors, like sentence-encoder outputs."""
    rng = np.random.default_rng(seed)
    sentences = make_sentences(spec.global_batch * spec.seq_len // 5 + 1, seed)  # >= 5 words, >= 5 tokens each
    stream = [i for ids in tokenizer.encode_batch(sentences) for i in ids]
    sequences = []
    for row in range(spec.global_batch):
        tokens = np.asarray(stream[row * spec.seq_len : (row + 1) * spec.seq_len], np.int32)
        soft = np.full(spec.seq_len, -1, np.int32)
        soft[SLOT] = 0
        vector = rng.standard_normal(INPUT_DIM).astype(np.float32)
        sequences.append(TrainSequence(tokens, soft, spec.seq_len - target, (vector / np.linalg.norm(vector),), (0,)))
    return collate(sequences, spec, tokenizer.pad_id)


def elm_jax_step(model: ELM, params: dict, trainable: str, host: dict, spec: BatchSpec, mesh: Mesh) -> Step:
    """The trainer's jitted step with its shardings and state donation, built the way `train_stage` does."""
    rules = shd.DEFAULT_RULES
    shardings = param_shardings(model, mesh, rules)
    params = jax.device_put(jax.tree.map(jnp.copy, params), shardings)  # a copy: the state gets donated
    train, frozen = partition(params, trainable)
    frozen = frozen_for_step(frozen, model.config.decoder, None)
    t_sh, f_sh = partition(shardings, trainable)
    replicated = NamedSharding(mesh, P())
    tx = make_optimizer(OptimConfig(steps=1000, schedule="constant", **OPTIM))
    o_sh = optax.tree_map_params(
        tx, lambda _, s: s, jax.eval_shape(tx.init, train), t_sh, transform_non_params=lambda _: replicated
    )
    state_sh = {"step": replicated, "params": t_sh, "opt_state": o_sh, "rng": replicated}
    b_sh = batch_shardings(spec, mesh, rules)
    state = {
        "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
        "params": train,
        "opt_state": jax.jit(tx.init, out_shardings=o_sh)(train),
        "rng": jax.device_put(jax.random.key_data(jax.random.key(0)), replicated),
    }
    step_fn = jax.jit(
        make_train_step(model, tx, StepConfig()),
        in_shardings=(state_sh, f_sh, b_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=0,
    )
    batch = global_batch(host, b_sh, spec)

    def step() -> tuple[float, float]:
        nonlocal state
        state, metrics = step_fn(state, frozen, batch)
        return float(metrics["loss"]), float(metrics["grad_norm"])  # blocks until the step is done

    return step


def torch_step(path: pathlib.Path, adapter: dict, train_llm: bool, host: dict, dtype: str) -> Step:
    """The same step in PyTorch: transformers' Llama, the adapter's soft token written into inputs_embeds.

    With dtype bfloat16 the forward runs under CPU autocast (float32 weights, bfloat16 matmuls), as elm_jax
    computes in bfloat16 from float32 master weights.
    """
    import torch
    from transformers import LlamaForCausalLM

    llm = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    llm.train()  # no dropout in SmolLM2's config: only sets the mode a training loop runs in
    fc1, fc2 = torch.nn.Linear(INPUT_DIM, HIDDEN_DIM), torch.nn.Linear(HIDDEN_DIM, llm.config.hidden_size)
    with torch.no_grad():
        for layer, name in ((fc1, "fc1"), (fc2, "fc2")):  # Flax kernels are (in, out), torch weights (out, in)
            layer.weight.copy_(torch.tensor(np.asarray(adapter[name]["kernel"]).T))
            layer.bias.copy_(torch.tensor(np.asarray(adapter[name]["bias"])))
    net = torch.nn.Sequential(fc1, torch.nn.GELU(approximate="tanh"), fc2)  # jax.nn.gelu is the tanh form
    llm.requires_grad_(train_llm)
    trainable = [p for p in (*net.parameters(), *llm.parameters()) if p.requires_grad]  # the tied head once
    groups = [  # the trainer's decay mask: matrices only
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": OPTIM["weight_decay"]},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=OPTIM["learning_rate"], betas=(OPTIM["b1"], OPTIM["b2"]), foreach=True)

    tokens = torch.from_numpy(host["tokens"][0]).long()
    soft_index = torch.from_numpy(host["soft_index"][0]).long()
    mask = torch.from_numpy(host["mask"][0]).long()
    # Labels for the positions holding a target token (HF shifts them itself). Like elm_jax, torch computes
    # logits only where a loss is taken: the last `keep` positions (transformers' `logits_to_keep`), whose
    # first label is a prompt token (-100) so that the first target token is still predicted.
    index = torch.from_numpy(host["target_index"][0]).long()
    labels = torch.full_like(tokens, -100)
    rows = torch.arange(len(tokens))[:, None].expand_as(index)
    labels[rows[index >= 0], index[index >= 0] + 1] = tokens[rows[index >= 0], index[index >= 0] + 1]
    keep = int(tokens.shape[1] - (labels[0] != -100).nonzero().min()) + 1  # every row has the same window here
    labels = labels[:, -keep:]
    # The adapter's fixed input standardization, as elm_jax applies it before fc1.
    mean, std = (torch.tensor(np.asarray(adapter[k])) for k in ("input_mean", "input_std"))
    vectors = (torch.from_numpy(host["vectors"][SPACE][0]) - mean) / std

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step() -> tuple[float, float]:
        opt.zero_grad(set_to_none=True)
        with autocast:
            soft = net(vectors)  # (B, slots, hidden): one soft token per slot
            text = llm.get_input_embeddings()(tokens)
            picked = torch.gather(soft, 1, soft_index.clamp(min=0)[..., None].expand_as(text))
            embeds = torch.where((soft_index >= 0)[..., None], picked.to(text.dtype), text)
            loss = llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, logits_to_keep=keep).loss
        loss.float().backward()
        norm = torch.nn.utils.clip_grad_norm_(trainable, OPTIM["grad_clip"])
        opt.step()
        return loss.item(), norm.item()

    return step


def measure(steps: dict[str, Step], warmup: int, timed: int) -> dict[str, Timing]:
    """`warmup` untimed steps each (the first one's loss and gradient norm kept), then `timed` steps alternating."""
    first: dict[str, tuple[float, float, float]] = {}
    for name, step in steps.items():
        start = time.perf_counter()
        first[name] = (*step(), time.perf_counter() - start)
        for _ in range(warmup - 1):
            step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(timed):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: Timing(*first[name], wall[name], cpu[name]) for name in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per framework and stage")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 1: elm_jax compiles)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--target", type=int, default=64, help="loss on this many last tokens of each row")
    parser.add_argument("--stages", default="1,2", help="which stages: 1 (adapter only), 2 (everything)")
    parser.add_argument("--scan-layers", type=int, default=1, help="elm_jax: nn.scan over layers (1) or not (0)")
    parser.add_argument("--remat", default="none", help="elm_jax remat policy: none | full | dots | dots_no_batch")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="compute dtype of both (weights and optimizer stay float32): elm_jax llm.dtype, torch autocast",
    )
    parser.add_argument("--out", type=pathlib.Path, help="also write the results here as JSON")
    args = parser.parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    if args.warmup < 1 or args.steps < 1 or not set(stages) <= set(STAGES) or not 0 < args.target < args.seq - SLOT:
        parser.error(f"need --warmup >= 1, --steps >= 1, --stages from 1,2 and 0 < --target < --seq - {SLOT}")

    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    machine = f"{cpu_model()}, {threads} cores"
    print(
        f"machine: {machine}; jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}"
        f" ({threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}); load average"
        f" {os.getloadavg()[0]:.2f} (the machine may be shared: other work skews the timings)"
    )

    mesh = shd.make_mesh({"data": -1})
    loaded = load_decoder(
        CHECKPOINT, mesh, scan_layers=bool(args.scan_layers), remat_policy=args.remat, dtype=args.dtype
    )
    adapter_cfg = AdapterConfig(INPUT_DIM, loaded.config.hidden_size, HIDDEN_DIM)
    model = ELM(ELMConfig(loaded.config, ((SPACE, adapter_cfg),)))
    spec = BatchSpec(args.batch, args.seq, ((SPACE, INPUT_DIM),), max_slots=1, target_len=args.target)
    host = make_batch(loaded.tokenizer, spec, args.target)
    params = init_params(model.config, loaded.params, {SPACE: host["vectors"][SPACE][0, :, 0]}, jax.random.key(0))
    adapter = jax.device_get(params[f"adapters_{SPACE}"])
    tokens_per_step = args.batch * args.seq

    rows, results = [], []
    for stage in stages:
        steps = {
            "elm_jax": elm_jax_step(model, params, STAGES[stage], host, spec, mesh),
            "torch": torch_step(loaded.path, adapter, stage == 2, host, args.dtype),
        }
        t = measure(steps, args.warmup, args.steps)
        ours, ref = t["elm_jax"], t["torch"]
        speedup = ref.median_ms / ours.median_ms
        results.append(
            {
                "stage": stage,
                "trainable": STAGES[stage],
                "speedup": speedup,
                "loss_difference": ours.first_loss - ref.first_loss,
                "grad_norm_difference": ours.first_grad_norm - ref.first_grad_norm,
                **{
                    name: {
                        "median_ms": x.median_ms,
                        "step_seconds": x.seconds,
                        "step_cpu_seconds": x.cpu_seconds,
                        "cores_busy": x.cores,
                        "first_step_s": x.first_s,
                        "tokens_per_s": tokens_per_step * 1e3 / x.median_ms,
                        "first_loss": x.first_loss,
                        "first_grad_norm": x.first_grad_norm,
                    }
                    for name, x in t.items()
                },
            }
        )
        for name, x, ratio in (("elm_jax (jit)", ours, speedup), ("PyTorch/transformers", ref, 1.0)):
            rows.append(
                [
                    f"{stage} ({'adapter' if stage == 1 else 'all weights'})",
                    name,
                    f"{x.median_ms:.0f}",
                    f"{1e3 * min(x.seconds):.0f}-{1e3 * max(x.seconds):.0f}",
                    f"{tokens_per_step * 1e3 / x.median_ms:.0f}",
                    f"{ratio:.2f}x",
                    f"{x.cores:.2f}",
                    f"{x.first_loss:.5f}",
                    f"{x.first_grad_norm:.4f}",
                    f"{x.first_s:.1f}",
                ]
            )
        del steps, t  # free this stage's optimizer state and activations before the next
    header = ["stage", "framework", "step ms (median)", "range ms", "tokens/s", "elm_jax/torch", "cores busy"]
    header += ["1st loss", "1st grad norm", "1st s"]
    print("\n" + markdown([header, *rows]))
    print(
        f"\nbatch {args.batch} x {args.seq} tokens, loss on the last {args.target} of each row, {args.dtype} compute;"
        f" median of {args.steps} alternating timed steps after {args.warmup} warm-up step(s) each"
        f" (1st s: the first step, elm_jax's compilation included; cores busy: CPU time / wall time);"
        f" elm_jax scan_layers={bool(args.scan_layers)}, remat={args.remat}."
    )
    for r in results:
        ok = "met" if r["speedup"] >= GOAL_SPEEDUP else "NOT met"
        print(
            f"stage {r['stage']}: goal elm_jax >= {GOAL_SPEEDUP}x torch {ok} ({r['speedup']:.2f}x);"
            f" first-step loss difference {r['loss_difference']:+.2e}, gradient norm difference"
            f" {r['grad_norm_difference']:+.2e}"
        )
    if args.out:
        atomic_write_json(
            args.out,
            {
                "date": datetime.date.today().isoformat(),
                "machine": machine,
                "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                "jax": jax.__version__,
                "torch": torch.__version__,
                "checkpoint": CHECKPOINT,
                "batch": args.batch,
                "seq": args.seq,
                "dtype": args.dtype,
                "target": args.target,
                "warmup": args.warmup,
                "steps": args.steps,
                "scan_layers": bool(args.scan_layers),
                "remat": args.remat,
                "stages": results,
            },
        )


if __name__ == "__main__":
    main()
