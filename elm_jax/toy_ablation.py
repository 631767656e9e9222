"""The paper's two-stage ablation (App. D): decode a 2-D vector to the word "one" or "two".

Training data repeat [1, 0] -> "one" and [0, 1] -> "two", with no text in the prompt: the soft token is the
whole user message (inside the chat template, for chat models; a lone first token would sit where the LLM
keeps its attention sink). The paper reports that fine-tuning everything from the start never got past
answering one word for both vectors, while fitting the adapter first (stage 1) and then the whole model
converged in under 1000 iterations. `run` trains both regimes with the real trainer and reports, per regime,
how the token accuracy and loss on the two examples evolve.

    python -m elm_jax.toy_ablation --llm=smollm2-135m-instruct --workdir=/tmp/toy
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
from collections.abc import Sequence

import jax
import numpy as np

from elm_jax import sharding as shd
from elm_jax.data.prompts import encode_prompt
from elm_jax.data.train_batches import Batches, BatchSpec, TrainSequence
from elm_jax.models.adapter import AdapterConfig
from elm_jax.models.elm import ELM, ELMConfig, init_params
from elm_jax.optim import OptimConfig
from elm_jax.tokenizer import Tokenizer
from elm_jax.train import StageConfig, train_stage

VECTORS = {"one": (1.0, 0.0), "two": (0.0, 1.0)}


def toy_sequences(tokenizer: Tokenizer) -> list[TrainSequence]:
    chat = tokenizer.has_chat_template
    prompt = encode_prompt(tokenizer, "{x}", chat=chat)
    out = []
    for word, vector in VECTORS.items():
        target = tokenizer.encode(word if chat else " " + word, bos=False) + [tokenizer.stop_ids[0]]
        out.append(
            TrainSequence(
                np.asarray(prompt.tokens + target, np.int32),
                np.asarray(prompt.soft_index + [-1] * len(target), np.int32),
                len(prompt.tokens),
                (np.asarray(vector, np.float32),),
                (0,),
            )
        )
    return out


def _stage(name: str, trainable: str, steps: int, lr: float, eval_every: int) -> StageConfig:
    optim = OptimConfig(learning_rate=lr, steps=steps, warmup_steps=min(10, steps), schedule="constant")
    return StageConfig(name, trainable, optim, log_every=eval_every, eval_every=eval_every, save_every=10**9)


def _history(workdir: pathlib.Path, stage: str, offset: int) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / stage / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [{**r, "step": r["step"] + offset} for r in rows if r["split"] == "eval"]


def run(
    llm: str,
    workdir: str | pathlib.Path,
    *,
    stage1_steps: int = 60,
    stage2_steps: int = 40,
    adapter_lr: float = 1e-3,
    model_lr: float = 1e-5,
    eval_every: int = 10,
    regimes: Sequence[str] = ("two_stage", "single_stage"),
) -> dict[str, list[dict]]:
    """Per regime, the eval history: [{"step", "loss", "accuracy"}, ...] over the two toy examples."""
    from elm_jax.weights.pretrained import load_decoder

    unknown = [r for r in regimes if r not in ("two_stage", "single_stage")]
    if unknown:
        raise ValueError(f"regime {unknown[0]!r} is not one of two_stage, single_stage")
    # One folder per setting: a rerun with other steps or rates trains anew (the trainer resumes what it finds).
    settings = [llm, stage1_steps, stage2_steps, adapter_lr, model_lr, eval_every]
    workdir = pathlib.Path(workdir) / hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:12]
    mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
    loaded = load_decoder(llm, mesh)
    model = ELM(ELMConfig(loaded.config, (("toy", AdapterConfig(2, loaded.config.hidden_size, 256)),)))
    sequences = toy_sequences(loaded.tokenizer)
    seq_len = -(-max(len(s.tokens) for s in sequences) // 8) * 8
    spec = BatchSpec(global_batch=8, seq_len=seq_len, space_dims=(("toy", 2),), max_slots=1)
    data = Batches(sequences, spec, loaded.tokenizer.pad_id, seed=0)
    vectors = np.asarray(list(VECTORS.values()), np.float32)
    fresh = lambda: init_params(model.config, loaded.params, {"toy": vectors}, jax.random.key(0))
    out = {}
    for regime in regimes:
        folder = workdir / regime
        if regime == "two_stage":
            s1 = _stage("stage1", r"adapters_.*", stage1_steps, adapter_lr, eval_every)
            params = train_stage(model, fresh(), s1, data, mesh, folder, eval_sets={"eval": sequences})
            s2 = _stage("stage2", r".*", stage2_steps, model_lr, eval_every)
            train_stage(model, params, s2, data, mesh, folder, eval_sets={"eval": sequences})
            out[regime] = _history(folder, "stage1", 0) + _history(folder, "stage2", stage1_steps)
        else:
            single = _stage("single", r".*", stage1_steps + stage2_steps, model_lr, eval_every)
            train_stage(model, fresh(), single, data, mesh, folder, eval_sets={"eval": sequences})
            out[regime] = _history(folder, "single", 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--stage1_steps", type=int, default=60)
    parser.add_argument("--stage2_steps", type=int, default=40)
    parser.add_argument("--adapter_lr", type=float, default=1e-3)
    parser.add_argument("--model_lr", type=float, default=1e-5)
    args = parser.parse_args()
    histories = run(
        args.llm,
        args.workdir,
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        adapter_lr=args.adapter_lr,
        model_lr=args.model_lr,
    )
    print("| regime | step | eval loss | eval token accuracy |\n|---|---|---|---|")
    for regime, rows in histories.items():
        for r in rows:
            print(f"| {regime} | {r['step']} | {r['loss']:.4f} | {r['accuracy']:.3f} |")


if __name__ == "__main__":
    main()
