"""The ELM trainer: one stage of training over a named mesh, resumable, with Orbax checkpoints.

The paper trains in two stages (§2): stage 1 fits the adapters with the LLM frozen, which it finds
essential for convergence; stage 2 fine-tunes everything (or, here, adapters + LoRA). Both are
`train_stage` with a different `StageConfig.trainable` regex; stage 2 starts from stage 1's parameters.

Per stage:
  abstract params (logical axis names) -> shardings from the rules -> state placed on its shards
  -> restore the latest checkpoint if there is one -> AOT-compile the step (memory printed)
  -> loop: host batch -> global arrays -> step -> log / eval / async checkpoint -> export adapters.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from elm_jax import sharding as shd
from elm_jax import training_record
from elm_jax.checkpoint import Checkpointer, abstract_like, export_adapters, latest_step
from elm_jax.data.catalog import fingerprint
from elm_jax.data.train_batches import Batches, BatchSpec, TrainSequence, fitted_spec
from elm_jax.eval.metrics import shuffled_control
from elm_jax.lora import LoraConfig, apply_lora, init_lora
from elm_jax.models.adapter import AdapterConfig
from elm_jax.models.elm import ELM, ELMConfig, init_params
from elm_jax.optim import OptimConfig, is_rule, learning_rate, make_optimizer, merge, partition, path_regex
from elm_jax.train_log import MetricsWriter, StepTrace, peak_flops_per_device, train_flops_per_token
from elm_jax.train_step import StepConfig, frozen_for_step, make_eval_step, make_train_step

Rules = Sequence[tuple[str, Any]]


@dataclasses.dataclass(frozen=True)
class StageConfig:
    name: str  # "stage1", "stage2": also the checkpoint and log folder
    trainable: str  # regex over parameter paths (see elm_jax.optim)
    optim: OptimConfig
    step: StepConfig = StepConfig()
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    save_every: int = 100
    keep: int = 2
    async_save: bool = True
    peak_flops_per_device: float = 0.0  # 0: look up the device kind; unknown kinds (CPU) report no MFU
    profile_steps: int = 0  # steps traced with jax.profiler into logs/ (TensorBoard's profile tab); 0: none
    profile_skip: int = 1  # steps this run takes before the trace, so the first step's warm-up stays out


def init_args(model: ELM) -> tuple:
    """The smallest inputs `model.init` accepts: one token, one slot per space."""
    zeros = jnp.zeros((1, 1), jnp.int32)
    return zeros, zeros, {name: jnp.zeros((1, 1, a.input_dim)) for name, a in model.config.adapters}, zeros


def abstract_params(model: ELM, lora: LoraConfig | None = None) -> dict:
    """Boxed abstract ELM params (shapes, dtypes, logical axis names), LoRA factors included."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_args(model))["params"])
    if lora is not None:
        boxed = {**boxed, **jax.eval_shape(lambda: init_lora(boxed, lora, jax.random.key(0)))}
    return boxed


def param_shardings(model: ELM, mesh: Mesh, rules: Rules, lora: LoraConfig | None = None) -> dict:
    return shd.logical_shardings(abstract_params(model, lora), mesh, rules)


def add_lora(model: ELM, params: dict, lora: LoraConfig, mesh: Mesh, rules: Rules, seed: int) -> dict:
    """Params plus fresh LoRA factors (B = 0: the model is unchanged), placed on their shards."""
    boxed = init_lora(abstract_params(model), lora, jax.random.key(seed))
    factors = jax.device_put(nn.unbox(boxed), shd.logical_shardings(boxed, mesh, rules))
    return {**params, **factors}


def batch_shardings(spec: BatchSpec, mesh: Mesh, rules: Rules) -> dict:
    """Batches are (accum, micro_batch, ...): the micro-batch axis is split over the batch mesh axes."""
    lead = shd.batch_sharding(mesh, 1, rules).spec[0]
    sh = lambda ndim: NamedSharding(mesh, P(None, lead, *([None] * (ndim - 2))))
    return {
        "tokens": sh(3),
        "soft_index": sh(3),
        "mask": sh(3),
        "target_index": sh(3),
        "slot_space": sh(3),
        "vectors": {name: sh(4) for name, _ in spec.space_dims},
    }


def global_batch(host_batch: dict, shardings: dict, spec: BatchSpec) -> dict:
    """This host's rows -> global jax.Arrays (each host holds only its shards)."""

    def one(local, sharding):
        shape = (spec.accum_steps, spec.micro_batch, *local.shape[2:])
        return jax.make_array_from_process_local_data(sharding, local, shape)

    return jax.tree.map(one, host_batch, shardings)


def _abstract_batch(spec: BatchSpec, shardings: dict) -> dict:
    a, b, t = spec.accum_steps, spec.micro_batch, spec.seq_len
    shapes = {
        "tokens": ((a, b, t), jnp.int32),
        "soft_index": ((a, b, t), jnp.int32),
        "mask": ((a, b, t), jnp.bool_),
        "target_index": ((a, b, spec.target_window), jnp.int32),
        "slot_space": ((a, b, spec.max_slots), jnp.int32),
        "vectors": {name: ((a, b, spec.max_slots, d), jnp.float32) for name, d in spec.space_dims},
    }
    is_leaf = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)
    return jax.tree.map(lambda sd, s: jax.ShapeDtypeStruct(*sd, sharding=s), shapes, shardings, is_leaf=is_leaf)


def _log_memory(compiled, what: str) -> None:
    mem = compiled.memory_analysis()
    if mem is None:
        return
    gib = lambda n: n / 2**30
    logging.info(
        "%s compiled: per device %.3f GiB arguments, %.3f GiB outputs, %.3f GiB temporaries, %.3f GiB code",
        what,
        gib(mem.argument_size_in_bytes),
        gib(mem.output_size_in_bytes),
        gib(mem.temp_size_in_bytes),
        gib(mem.generated_code_size_in_bytes),
    )


def shuffled_vectors(sequences: Sequence[TrainSequence], seed: int = 0) -> list[TrainSequence]:
    """The same sequences, each given the vectors of another entity read through the same embedding spaces: the
    control that shows whether the model reads the vector at all.

    Deranged by content (`metrics.shuffled_control`), so a row never keeps its own vectors, even when its entity
    appears in several rows. Raises ValueError where that is impossible (a space layout with one row).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(sequences):
        groups.setdefault(s.spaces, []).append(i)
    out = list(sequences)
    for spaces, rows in groups.items():
        content = np.stack([np.concatenate([np.ravel(v) for v in sequences[i].vectors]) for i in rows])
        try:
            perm = shuffled_control(content, seed)
        except ValueError as e:
            message = f"cannot shuffle the vectors of the {len(rows)} rows reading spaces {spaces}: {e}"
            raise ValueError(message) from None
        for i, j in zip(rows, perm):
            out[i] = dataclasses.replace(sequences[i], vectors=sequences[rows[j]].vectors)
    return out


def even_pick(tasks: Sequence[str], n: int, seed: int) -> np.ndarray:
    """Sorted indices of up to `n` rows spread evenly over the tasks (`tasks[i]` is row i's), seeded."""
    rng = np.random.default_rng(seed)
    names = sorted(set(tasks))
    by_task = [rng.permutation(np.flatnonzero(np.asarray(tasks) == t)) for t in names]
    quota = [n // len(names) + (k < n % len(names)) for k in range(len(names))] if names else []
    return np.sort(np.concatenate([rows[:q] for rows, q in zip(by_task, quota)] or [np.zeros(0, np.int64)]))


def check_batch_split(spec: BatchSpec, batch_shards: int, processes: int) -> None:
    """Each micro-batch splits over the mesh's batch shards, and each host builds a distinct block of rows: the
    batch axes must span the hosts (a batch replicated across hosts would need every host to build all rows)."""
    if spec.micro_batch % batch_shards:
        raise ValueError(
            f"train.batch_size / train.accum_steps = {spec.micro_batch} is not divisible by the {batch_shards} "
            "batch shards of the mesh"
        )
    if batch_shards % processes:
        raise ValueError(
            f"the mesh has {batch_shards} batch shards (data x fsdp) for {processes} processes: the batch axes must "
            "split over the hosts; keep mesh.tensor within a host"
        )


def train_stage(
    model: ELM,
    params: dict,
    stage: StageConfig,
    data: Batches,
    mesh: Mesh,
    workdir: str | pathlib.Path,
    *,
    rules: Rules = shd.DEFAULT_RULES,
    eval_sets: dict[str, Sequence[TrainSequence]] | None = None,
) -> dict:
    """Runs (or resumes, or skips if finished) one stage; returns the full params after it (LoRA folded in)."""
    workdir = pathlib.Path(workdir) / stage.name
    decoder = model.config.decoder
    if jax.default_backend() == "cpu" and decoder.scan_layers and jnp.dtype(decoder.dtype) != jnp.float32:
        # XLA:CPU widens bfloat16 dynamic-update-slices to float32, so each layer of the scan's backward
        # residual stacks rewrites the whole stack: SmolLM2 steps 2.3 / 4.6 s scanned against 1.6 / 2.8 s.
        logging.warning(
            "%s: %s compute with llm.scan_layers=True on CPU, where unscanned layers train ~1.5x faster "
            "(--config.llm.scan_layers=False; benchmarks/README.md)",
            stage.name,
            decoder.dtype,
        )
    check_batch_split(data.spec, shd.batch_divisor(mesh, rules), jax.process_count())
    lora = stage.step.lora
    if lora is not None and "lora" not in params:
        params = add_lora(model, params, lora, mesh, rules, stage.seed)
    shardings = param_shardings(model, mesh, rules, lora)
    trainable, frozen = partition(jax.device_put(params, shardings), stage.trainable)
    t_sh, f_sh = partition(shardings, stage.trainable)
    replicated = NamedSharding(mesh, P())
    tx = make_optimizer(stage.optim)
    o_sh = optax.tree_map_params(
        tx, lambda _, s: s, jax.eval_shape(tx.init, trainable), t_sh, transform_non_params=lambda _: replicated
    )
    state_sh = {"step": replicated, "params": t_sh, "opt_state": o_sh, "rng": replicated}
    b_sh = batch_shardings(data.spec, mesh, rules)

    ckpt = Checkpointer(workdir / "checkpoints", stage.save_every, stage.keep, stage.async_save)
    try:
        start = ckpt.latest_step() or 0
        if start > stage.optim.steps:
            raise ValueError(
                f"{workdir}: {stage.name} has a checkpoint at step {start}, beyond {stage.name}.steps="
                f"{stage.optim.steps}; set it to {start} or more, or train in a new workdir"
            )
        if start:
            abstract = {
                "step": jax.ShapeDtypeStruct((), jnp.int32),
                "params": trainable,
                "opt_state": jax.eval_shape(tx.init, trainable),
                "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
            }
            state, meta = ckpt.restore(start, abstract_like(abstract, state_sh))
            run = meta.get("run") or uuid.uuid4().hex
            logging.info("%s: restored step %d (%s examples seen)", stage.name, start, meta.get("examples_seen"))
        else:
            run = uuid.uuid4().hex  # this training's id, kept in every checkpoint of it (and across resumes)
            state = {
                "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
                # A copy: the step donates the state, and the caller's arrays must survive it.
                "params": jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=t_sh)(trainable),
                "opt_state": jax.jit(tx.init, out_shardings=o_sh)(trainable),
                "rng": jax.device_put(jax.random.key_data(jax.random.key(stage.seed)), replicated),
            }
        del trainable
        if start < stage.optim.steps:
            writer = MetricsWriter(workdir / "logs", resume_step=start)
            try:
                shardings = (state_sh, f_sh, b_sh)
                step_frozen = frozen_for_step(frozen, decoder, lora)
                state = _loop(
                    model, stage, tx, state, step_frozen, data, start, run, ckpt, writer, shardings, eval_sets
                )
            finally:
                writer.close()
        else:
            logging.info("%s: already finished (step %d)", stage.name, start)
    finally:
        ckpt.close()
    full = merge(state["params"], frozen)
    export_adapters(workdir / "adapters", full, model.config.adapters)
    return apply_lora(full, lora) if lora else full


def _loop(model, stage, tx, state, frozen, data, start, run, ckpt, writer, shardings, eval_sets) -> dict:
    """Steps `start`..`steps` of a stage: AOT-compiled step, logging, periodic eval and async checkpoints."""
    state_sh, f_sh, b_sh = shardings
    t_sh, replicated = state_sh["params"], state_sh["step"]
    spec, steps = data.spec, stage.optim.steps
    scales = _vector_scales(data) if stage.step.vector_noise else None
    step_fn = jax.jit(
        make_train_step(model, tx, stage.step, scales),
        in_shardings=(state_sh, f_sh, b_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=0,
    )
    compiled = step_fn.lower(state, frozen, _abstract_batch(spec, b_sh)).compile()
    _log_memory(compiled, f"{stage.name} train step")
    evaluate = jax.jit(make_eval_step(model, stage.step), in_shardings=(t_sh, f_sh, b_sh), out_shardings=replicated)

    lr = learning_rate(stage.optim)
    weight_grads = stage.step.lora is None and "llm" in state["params"]  # else the LLM's matmuls cost 4N, not 6N
    flops = train_flops_per_token(model.config.decoder, spec.seq_len, weight_grads, spec.target_window)
    peak = stage.peak_flops_per_device or peak_flops_per_device()

    def per_row(sequences: Sequence[TrainSequence]) -> dict[str, np.ndarray]:
        outs = [evaluate(state["params"], frozen, global_batch(h, b_sh, spec)) for h in data.eval_batches(sequences)]
        return {k: np.concatenate([np.asarray(o[k]) for o in outs])[: len(sequences)] for k in outs[0]}

    def run_eval(step: int) -> None:
        for name, sequences in (eval_sets or {}).items():
            # Batches hold sequences in order, so row i is sequences[i]: pooled and per task from one pass
            # (a pooled loss hides which tasks the vector informs).
            rows, tasks = per_row(sequences), np.array([s.task for s in sequences])
            scalars = {"loss": _token_mean(rows, "loss_sum"), "accuracy": _token_mean(rows, "correct")}
            if len(set(tasks)) > 1:
                scalars.update({f"loss_{t}": _token_mean(rows, "loss_sum", tasks == t) for t in sorted(set(tasks))})
            writer.write(step, scalars, prefix=name)

    t_last, step_last = time.perf_counter(), start
    trace = StepTrace(writer.directory, start + stage.profile_skip, stage.profile_steps)
    with trace, tqdm(total=steps, initial=start, desc=stage.name, unit="step", disable=None) as bar:
        for step in range(start, steps):
            trace.before(step)
            state, metrics = compiled(state, frozen, global_batch(data.host_batch(step), b_sh, spec))
            trace.after(step, (state, metrics))
            done = step + 1
            if done % stage.log_every == 0 or done == steps:
                metrics = jax.device_get(metrics)
                elapsed = time.perf_counter() - t_last
                tokens_per_s = (done - step_last) * spec.global_batch * spec.seq_len / elapsed
                scalars = {
                    **metrics,
                    "learning_rate": lr(step),
                    "tokens_per_s": tokens_per_s,
                    "epoch": data.epoch(done),
                }
                if peak:
                    scalars["mfu"] = tokens_per_s * flops / (peak * jax.device_count())
                writer.write(done, scalars)
                bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
                t_last, step_last = time.perf_counter(), done
            paused = time.perf_counter()
            if stage.eval_every and done % stage.eval_every == 0 or done == steps:
                run_eval(done)
            meta = {"stage": stage.name, "step": done, "examples_seen": done * spec.global_batch, "run": run}
            ckpt.save(done, state, meta, force=done == steps)
            t_last += time.perf_counter() - paused  # tokens/s and MFU count training time only
            bar.update(1)
    return state


def _token_mean(rows: dict[str, np.ndarray], key: str, pick: np.ndarray | slice = slice(None)) -> float:
    """`key` summed over the picked rows, per target token."""
    return float(rows[key][pick].sum() / max(rows["target_tokens"][pick].sum(), 1.0))


def _vector_scales(data: Batches) -> dict[str, jax.Array]:
    """Per-space, per-dimension std of the training vectors (the unit of `vector_noise`)."""
    names = [n for n, _ in data.spec.space_dims]
    out = {}
    for i, name in enumerate(names):
        vs = [v for s in data.sequences for v, sp in zip(s.vectors, s.spaces) if sp == i]
        out[name] = jnp.asarray(np.std(np.stack(vs), axis=0) if vs else np.ones(dict(data.spec.space_dims)[name]))
    return out


def build_elm(config: Any, catalog: Any, tasks: Sequence[Any], llm: Any) -> tuple[ELM, dict]:
    """The ELM for the embedding spaces `tasks` read, and fresh params (adapters scaled to token embeddings)."""
    a = config.elm.adapter
    spaces = {space: task.entity for task in tasks for space in task.spaces.values()}
    matrices = {space: catalog.table(kind).embeddings[space] for space, kind in sorted(spaces.items())}
    adapters = tuple(
        (name, AdapterConfig(m.shape[1], llm.config.hidden_size, a.hidden_dim, a.activation, a.num_tokens))
        for name, m in matrices.items()
    )
    model = ELM(ELMConfig(llm.config, adapters))
    return model, init_params(model.config, llm.params, matrices, jax.random.key(config.seed))


def stage_from_config(name: str, c: Any, seed: int) -> StageConfig:
    """A `config.stage1` / `config.stage2` section -> StageConfig (field names as in configs/default.py)."""
    try:
        return _stage_from_config(name, c, seed)
    except ValueError as e:
        raise ValueError(f"config.{name}: {e}") from None


def _stage_from_config(name: str, c: Any, seed: int) -> StageConfig:
    path_regex(c.trainable, "trainable")
    bad = [rule for rule in c.lr_multipliers if not is_rule(rule)]
    if bad:
        example = "(('adapters_.*', 20.0),)"
        raise ValueError(f"lr_multipliers: a tuple of (regex, factor) pairs, e.g. {example}; got {bad[0]!r}")
    for field in ("profile_steps", "profile_skip"):
        if not isinstance(c[field], int) or c[field] < 0:
            raise ValueError(f"{field}: a step count (an int >= 0); got {c[field]!r}")
    lora = LoraConfig(c.lora.rank, c.lora.alpha, c.lora.targets) if c.lora.rank else None
    optim = OptimConfig(
        learning_rate=c.learning_rate,
        steps=c.steps,
        warmup_steps=c.warmup_steps,
        schedule=c.schedule,
        end_fraction=c.end_fraction,
        weight_decay=c.weight_decay,
        grad_clip=c.grad_clip,
        lr_multipliers=tuple((str(pattern), float(factor)) for pattern, factor in c.lr_multipliers),
    )
    trainable = c.trainable if lora is None else rf"(?:{c.trainable})|lora/.*"
    return StageConfig(
        name=name,
        trainable=trainable,
        optim=optim,
        step=StepConfig(lora=lora, vector_noise=c.vector_noise),
        seed=seed,
        log_every=c.log_every,
        eval_every=c.eval_every,
        save_every=c.save_every,
        keep=c.keep,
        async_save=c.async_save,
        peak_flops_per_device=c.peak_flops_per_device,
        profile_steps=c.profile_steps,
        profile_skip=c.profile_skip,
    )


def run(config: Any, workdir: pathlib.Path) -> dict:
    """The `train` job: prepared targets -> sequences -> each configured stage in turn; returns final params."""
    from elm_jax.data import prepare
    from elm_jax.data import targets as targets_lib
    from elm_jax.data.train_batches import encode_targets
    from elm_jax.weights.pretrained import load_configured_decoder

    unknown = [name for name in config.train.stages if name not in ("stage1", "stage2")]
    if unknown:
        raise ValueError(f"train.stages has {unknown[0]!r}; stages are stage1 and stage2")
    stages = [stage_from_config(name, config[name], config.seed) for name in config.train.stages]
    mesh = shd.make_mesh(config.mesh)
    catalog, tasks = prepare.run_once(config, workdir, mesh)
    reached = [latest_step(pathlib.Path(workdir) / s.name / "checkpoints") for s in stages]
    for i, stage in enumerate(stages):
        later = [s.name for s, r in zip(stages[i + 1 :], reached[i + 1 :]) if r is not None]
        if reached[i] != stage.optim.steps and later:
            ends = "it has no checkpoints" if reached[i] is None else f"its checkpoints end at step {reached[i]}"
            raise ValueError(
                f"{stage.name}.steps={stage.optim.steps}, but {ends} and {later[0]} already trained without the "
                f"rest: more {stage.name} steps would not reach {later[0]}. Keep {stage.name}.steps, or train in a "
                "new workdir"
            )
    training_record.check_or_write(config, workdir, fingerprint(catalog), any(r is not None for r in reached))
    registry = {t.name: t for t in tasks}
    targets = {
        s: targets_lib.read_jsonl(workdir / "targets" / f"{s}.jsonl", catalog, registry) for s in ("train", "test")
    }
    loaded = load_configured_decoder(config.llm, mesh)
    model, params = build_elm(config, catalog, tasks, loaded)
    adapters = model.config.adapters

    t = config.train
    encode = lambda ts: encode_targets(
        catalog,
        registry,
        ts,
        loaded.tokenizer,
        model.config.space_names,
        tokens_per_slot=model.config.tokens_per_slot,
        chat=config.elm.chat,
        max_len=t.max_len,
    )
    train_seqs = encode(targets["train"])
    held_out = targets["test"]
    pick = even_pick([h.task for h in held_out], t.eval_examples, config.seed)
    eval_seqs = encode([held_out[i] for i in pick])
    try:
        eval_sets = {"eval": eval_seqs, "eval_shuffled": shuffled_vectors(eval_seqs)} if eval_seqs else None
    except ValueError as e:
        raise ValueError(f"train.eval_examples={t.eval_examples}: {e}") from None
    dims = tuple((name, cfg.input_dim) for name, cfg in adapters)
    spec = fitted_spec(train_seqs + eval_seqs, dims, t.batch_size, t.accum_steps, t.max_len)
    logging.info(
        "training on %d sequences (%d held out for eval loss), %d tokens each, batch %d",
        len(train_seqs),
        len(eval_seqs),
        spec.seq_len,
        spec.global_batch,
    )
    data = Batches(train_seqs, spec, loaded.tokenizer.pad_id, config.seed, jax.process_index(), jax.process_count())
    for stage in stages:
        params = train_stage(model, params, stage, data, mesh, workdir, eval_sets=eval_sets)
    return params
