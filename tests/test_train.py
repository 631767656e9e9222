"""The trainer's invariants on a tiny random model: freezing, sharding, resumption, LoRA, accumulation, export."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from elm_jax import sharding as shd
from elm_jax.checkpoint import export_adapters, import_adapters
from elm_jax.data.train_batches import Batches, BatchSpec, collate, example_indices, host_rows
from elm_jax.lora import LoraConfig, apply_lora
from elm_jax.models.elm import ELM
from elm_jax.optim import OptimConfig, decay_mask, make_optimizer, merge, partition
from elm_jax.train import StageConfig, add_lora, check_batch_split, even_pick, shuffled_vectors, train_stage
from elm_jax.train_step import StepConfig, frozen_for_step, token_losses
from tests import fixtures

STAGE1 = r"adapters_.*"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return fixtures.tiny_elm(tmp_path_factory.mktemp("llm"))


def _spec(accum=1, batch=8):
    return BatchSpec(global_batch=batch, seq_len=12, space_dims=(("semantic", 4),), max_slots=1, accum_steps=accum)


def _stage(name="stage1", trainable=STAGE1, steps=4, lr=3e-3, **kw):
    step = StepConfig(lora=kw.pop("lora", None), vector_noise=kw.pop("vector_noise", 0.0))
    optim = OptimConfig(learning_rate=lr, steps=steps, warmup_steps=1)
    return StageConfig(name, trainable, optim, step, log_every=1, save_every=2, **kw)


def _losses(workdir, stage="stage1", split="train"):
    rows = [json.loads(line) for line in (workdir / stage / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == split]


def _micro(batch):
    """The first (only) micro-batch of a collated batch."""
    return jax.tree.map(lambda x: jnp.asarray(x[0]), batch)


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_batches_are_a_function_of_the_step_and_cover_each_epoch():
    first = example_indices(10, seed=3, step=0, global_batch=4)
    np.testing.assert_array_equal(first, example_indices(10, seed=3, step=0, global_batch=4))
    epoch = np.concatenate([example_indices(10, 3, s, 5) for s in range(2)])
    assert sorted(epoch.tolist()) == list(range(10))
    spec = BatchSpec(8, 12, (("semantic", 4),), 1, accum_steps=2)
    rows = np.concatenate([host_rows(spec, p, 2) for p in range(2)])
    assert sorted(rows.tolist()) == list(range(8))
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        host_rows(spec, 0, 3)


def test_loss_on_the_target_window_equals_the_loss_over_all_logits(tiny):
    """The LM head runs only at target positions; loss, count and accuracy match a full-logits computation."""
    model, params, sequences = tiny
    rows = [sequences[0], None, dataclasses.replace(sequences[1], target_start=3)]  # an empty row, a longer target
    windowed = collate(rows, BatchSpec(3, 12, (("semantic", 4),), 1, target_len=6), pad_id=0)
    full = collate(rows, BatchSpec(3, 12, (("semantic", 4),), 1), pad_id=0)
    assert windowed["target_index"].shape == (1, 3, 6) and full["target_index"].shape == (1, 3, 11)
    got = [token_losses(model, params, _micro(b)) for b in (windowed, full)]
    b = _micro(full)
    logits, _ = model.apply({"params": params}, b["tokens"], b["soft_index"], b["vectors"], b["slot_space"], b["mask"])
    weights = np.zeros((3, 11), np.float32)
    weights[0, 4:8], weights[2, 2:8] = 1.0, 1.0  # targets: tokens 5..8 of row 0, 3..8 of row 2 (the end token)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], b["tokens"][:, 1:])
    right = jnp.argmax(logits[:, :-1], -1) == b["tokens"][:, 1:]
    want = (jnp.sum(ce * weights), 10.0, jnp.sum(right * weights))
    for total, count, correct in got:
        np.testing.assert_allclose([total, count, correct], want, rtol=1e-5)
    with pytest.raises(ValueError, match="6 target tokens; target_len=5"):
        collate(rows, BatchSpec(3, 12, (("semantic", 4),), 1, target_len=5), pad_id=0)


def test_held_out_loss_is_logged_pooled_and_per_task(tiny, tmp_path):
    model, params, sequences = tiny
    # Tasks in runs of unequal length and 21 rows (3 batches of 8, the last one padded): the per-task losses come
    # from one pass over the rows in order, so a misplaced row would move loss between tasks.
    names = ["a"] * 5 + ["b"] * 9 + ["c"] * 7
    tagged = [dataclasses.replace(s, task=t) for s, t in zip(sequences, names)]
    data = Batches(tagged, _spec(), pad_id=0, seed=0)
    mesh = shd.make_mesh({"data": -1})
    untagged = [dataclasses.replace(s, task="") for s in tagged]
    eval_sets = {"eval": tagged, "plain": untagged}
    out = train_stage(model, params, _stage(steps=2), data, mesh, tmp_path, eval_sets=eval_sets)
    rows = [json.loads(line) for line in (tmp_path / "stage1" / "logs" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["split"] == "eval"][-1]
    for task in "abc":
        subset = [s for s in tagged if s.task == task]
        total, count, _ = token_losses(model, out, _micro(collate(subset, _spec(batch=len(subset)), pad_id=0)))
        assert last[f"loss_{task}"] == pytest.approx(float(total / count), rel=1e-5)
    # Every row has 4 target tokens (3 + the end token): pooled = the row-weighted mean of the tasks.
    assert last["loss"] == pytest.approx((5 * last["loss_a"] + 9 * last["loss_b"] + 7 * last["loss_c"]) / 21, rel=1e-5)
    plain = [r for r in rows if r["split"] == "plain"][-1]  # one task (untagged): only the pooled loss
    assert plain["loss"] == pytest.approx(last["loss"], rel=1e-5) and not any(k.startswith("loss_") for k in plain)


def test_batch_split_names_what_does_not_divide():
    check_batch_split(_spec(batch=8), batch_shards=4, processes=2)
    with pytest.raises(ValueError, match="8 is not divisible by the 3 batch shards"):
        check_batch_split(_spec(batch=8), batch_shards=3, processes=1)
    with pytest.raises(ValueError, match="2 batch shards .* for 4 processes"):
        check_batch_split(_spec(batch=8), batch_shards=2, processes=4)


def test_weight_decay_reaches_weight_matrices_only_even_when_scanned_layers_stack_norms(tiny):
    _, params, _ = tiny
    mask = _flat(decay_mask(params))
    assert params["llm"]["layers"]["attn_norm"]["scale"].ndim == 2  # (layers, embed): 2-D, still a norm
    assert {k for k, v in mask.items() if v} == {
        k for k in mask if k.endswith("kernel") or k in ("llm/embedding", "llm/lm_head")
    }
    assert not mask["llm/layers/attn_norm/scale"] and not mask["adapters_semantic/fc1/bias"]
    assert not mask["adapters_semantic/input_std"] and mask["llm/layers/mlp/down_kernel"]


def test_lr_multipliers_scale_the_update_of_matching_paths():
    params = {"adapters_semantic": {"w": jnp.ones((2, 2))}, "llm": {"w": jnp.ones((2, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    updates = {}
    for rules in ((), (("adapters_.*", 10.0),)):
        tx = make_optimizer(OptimConfig(learning_rate=1e-3, steps=10, schedule="constant", lr_multipliers=rules))
        updates[rules] = tx.update(grads, tx.init(params), params)[0]
    plain, scaled = updates[()], updates[(("adapters_.*", 10.0),)]
    np.testing.assert_allclose(scaled["adapters_semantic"]["w"], 10 * plain["adapters_semantic"]["w"], rtol=1e-6)
    np.testing.assert_array_equal(scaled["llm"]["w"], plain["llm"]["w"])
    with pytest.raises(ValueError, match="lr_multipliers"):
        OptimConfig(learning_rate=1e-3, steps=10, lr_multipliers=(("x", 0.0),))


def test_optimizer_state_keeps_its_structure_whatever_the_clipping_and_rules():
    """A run resumes with grad_clip or lr_multipliers changed: the restore target's structure must not change."""
    params = {"adapters_semantic": {"w": jnp.ones((2, 2))}}
    structures = {
        jax.tree.structure(make_optimizer(OptimConfig(1e-3, 10, grad_clip=clip, lr_multipliers=rules)).init(params))
        for clip in (0.0, 1.0)
        for rules in ((), (("adapters_.*", 10.0),))
    }
    assert len(structures) == 1


def test_bad_regexes_and_rules_in_a_stage_are_named():
    from configs.default import stage_config
    from elm_jax.train import stage_from_config

    for fields, message in (
        (dict(trainable="adapters_(.*"), r"config.stage1: trainable: 'adapters_\(\.\*' is not a valid regex"),
        (dict(lr_multipliers=("adapters_.*", 20.0)), r"config.stage1: lr_multipliers: a tuple of \(regex, factor\)"),
        (dict(lr_multipliers=(("[x", 2.0),)), r"config.stage1: lr_multipliers: '\[x' is not a valid regex"),
        (dict(lora=dict(rank=2, targets="llm/(")), r"config.stage1: lora.targets: 'llm/\(' is not a valid regex"),
        (dict(profile_steps=-1), r"config.stage1: profile_steps: a step count \(an int >= 0\); got -1"),
    ):
        with pytest.raises(ValueError, match=message):
            stage_from_config("stage1", stage_config(**fields), 0)


def test_profile_traces_the_chosen_steps_beside_the_scalars(tiny, tmp_path):
    model, params, sequences = tiny
    mesh = shd.make_mesh({"data": -1})
    data = Batches(sequences, _spec(), pad_id=0, seed=0)
    # 3 steps, traced from the second for 5: the trace ends with the loop, and none is left running.
    train_stage(model, params, _stage(steps=3, profile_skip=1, profile_steps=5), data, mesh, tmp_path / "a")
    traces = list((tmp_path / "a" / "stage1" / "logs" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and b"jit_step" in traces[0].read_bytes()  # the train step ran inside it
    jax.profiler.start_trace(str(tmp_path / "next"))  # fails if the trainer left its trace running
    jax.profiler.stop_trace()
    # A trace that would start after the last step is never begun.
    train_stage(model, params, _stage(steps=2, profile_skip=2, profile_steps=1), data, mesh, tmp_path / "b")
    assert not (tmp_path / "b" / "stage1" / "logs" / "plugins").exists()


def test_stage1_trains_adapters_and_leaves_every_llm_weight_bit_identical(tiny, tmp_path):
    model, params, sequences = tiny
    mesh = shd.make_mesh({"data": -1})
    data = Batches(sequences, _spec(), pad_id=0, seed=0)
    out = train_stage(model, params, _stage(steps=30, lr=2e-2), data, mesh, tmp_path, eval_sets={"eval": sequences})
    before, after = _flat(params), _flat(out)
    llm = [k for k in before if k.startswith("llm/")]
    assert llm and all(np.array_equal(before[k], after[k]) for k in llm)
    assert not np.allclose(before["adapters_semantic/fc1/kernel"], after["adapters_semantic/fc1/kernel"])
    losses = _losses(tmp_path)
    assert losses[-1] < 0.6 * losses[0]
    # No optimizer state exists for frozen weights: only the adapter's leaves get Adam moments.
    trainable, _ = partition(params, STAGE1)
    moments = jax.eval_shape(make_optimizer(_stage().optim).init, trainable)
    shapes = {x.shape for x in jax.tree.leaves(moments) if x.ndim}
    assert shapes == {x.shape for x in jax.tree.leaves(trainable)}
    assert len(jax.tree.leaves(moments)) < 3 * len(jax.tree.leaves(trainable)) + 4


def test_frozen_weights_cast_once_for_bfloat16_compute_change_no_loss_or_gradient(tiny):
    model, params, sequences = tiny
    bf16 = ELM(dataclasses.replace(model.config, decoder=model.config.decoder.replace(dtype="bfloat16")))
    trainable, frozen = partition(params, STAGE1)
    cast = frozen_for_step(frozen, bf16.config.decoder, None)
    dtypes = {k: v.dtype for k, v in _flat(cast).items()}
    assert dtypes["llm/embedding"] == jnp.bfloat16
    assert dtypes["llm/layers/mlp/down_kernel"] == dtypes["llm/layers/attn/q_kernel"] == jnp.bfloat16
    assert dtypes["llm/layers/attn_norm/scale"] == dtypes["llm/final_norm/scale"] == jnp.float32  # read in float32
    batch = _micro(collate(sequences[:4], BatchSpec(4, 12, (("semantic", 4),), 1), pad_id=0))
    loss = lambda t, f: token_losses(bf16, merge(t, f), batch)[0]
    (l0, g0), (l1, g1) = (jax.value_and_grad(loss)(trainable, f) for f in (frozen, cast))
    np.testing.assert_array_equal(l0, l1)
    jax.tree.map(np.testing.assert_array_equal, g0, g1)
    # Nothing to gain in float32, and LoRA adds its factors to the float32 kernels before the cast.
    assert frozen_for_step(frozen, model.config.decoder, None) is frozen
    assert frozen_for_step(frozen, bf16.config.decoder, LoraConfig(rank=2)) is frozen


def test_bfloat16_stage1_on_cpu_trains_keeps_llm_weights_and_advises_unscanned_layers(tiny, tmp_path, caplog):
    model, params, sequences = tiny
    bf16 = ELM(dataclasses.replace(model.config, decoder=model.config.decoder.replace(dtype="bfloat16")))
    data = Batches(sequences, _spec(), pad_id=0, seed=0)
    with caplog.at_level("WARNING"):
        out = train_stage(bf16, params, _stage(steps=8, lr=2e-2), data, shd.make_mesh({"data": -1}), tmp_path)
    assert "bfloat16 compute with llm.scan_layers=True on CPU" in caplog.text
    before, after = _flat(params), _flat(out)
    assert all(after[k].dtype == before[k].dtype and np.array_equal(before[k], after[k]) for k in before if "llm" in k)
    losses = _losses(tmp_path)
    assert losses[-1] < losses[0]


def test_sharded_training_gives_the_single_device_loss_curve(tiny, tmp_path):
    model, params, sequences = tiny
    curves = {}
    for name, mesh in {
        "one": shd.make_mesh({"data": 1}, jax.devices()[:1]),
        "eight": shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}),
    }.items():
        data = Batches(sequences, _spec(), pad_id=0, seed=0)
        on_device = jax.device_put(params)
        train_stage(model, on_device, _stage("stage2", ".*", steps=5, lr=1e-3), data, mesh, tmp_path / name)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(on_device), jax.tree.leaves(params)))
        curves[name] = _losses(tmp_path / name, "stage2")
    assert len(curves["one"]) == 5
    np.testing.assert_allclose(curves["eight"], curves["one"], rtol=2e-5)  # tolerance: reduction order only


def test_killed_and_resumed_run_ends_bit_identical(tiny, tmp_path, monkeypatch):
    model, params, sequences = tiny
    mesh = shd.make_mesh({"data": -1})
    stage = _stage("stage2", ".*", steps=6, vector_noise=0.1)  # noise: the RNG must resume too
    full = train_stage(model, params, stage, Batches(sequences, _spec(), 0, seed=0), mesh, tmp_path / "full")

    class Killed(Exception):
        pass

    data = Batches(sequences, _spec(), 0, seed=0)
    real = data.host_batch

    def dies_at_step_5(step):
        if step == 5:
            raise Killed
        return real(step)

    monkeypatch.setattr(data, "host_batch", dies_at_step_5)
    with pytest.raises(Killed):
        train_stage(model, params, stage, data, mesh, tmp_path / "resumed")
    monkeypatch.undo()
    resumed = train_stage(model, params, stage, Batches(sequences, _spec(), 0, seed=0), mesh, tmp_path / "resumed")
    a, b = _flat(full), _flat(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # The log too: steps the killed run logged after its last checkpoint (step 4) were dropped, then logged again.
    assert _losses(tmp_path / "resumed", "stage2") == _losses(tmp_path / "full", "stage2")


def test_checkpoint_restores_onto_a_different_mesh(tiny, tmp_path, monkeypatch):
    model, params, sequences = tiny
    stage = _stage("stage2", ".*", steps=4)
    data = Batches(sequences, _spec(), 0, seed=0)
    real = data.host_batch
    monkeypatch.setattr(data, "host_batch", lambda s: (_ for _ in ()).throw(KeyboardInterrupt) if s == 2 else real(s))
    with pytest.raises(KeyboardInterrupt):
        train_stage(model, params, stage, data, shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), tmp_path)
    monkeypatch.undo()
    one = shd.make_mesh({"data": 1}, jax.devices()[:1])
    out = train_stage(model, params, stage, Batches(sequences, _spec(), 0, seed=0), one, tmp_path)
    ref = train_stage(model, params, stage, Batches(sequences, _spec(), 0, seed=0), one, tmp_path / "ref")
    a, b = _flat(out), _flat(ref)
    assert all(np.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert {x.sharding.num_devices for x in jax.tree.leaves(out)} == {1}


def test_gradient_accumulation_matches_one_big_batch(tiny, tmp_path):
    model, params, sequences = tiny
    mesh = shd.make_mesh({"data": 4}, jax.devices()[:4])
    with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
        train_stage(
            model, params, _stage(), Batches(sequences, _spec(accum=2), 0, 0), shd.make_mesh({"data": -1}), tmp_path
        )
    outs = {}
    for accum in (1, 2):
        data = Batches(sequences, _spec(accum=accum), 0, seed=0)
        outs[accum] = _flat(train_stage(model, params, _stage(steps=2), data, mesh, tmp_path / str(accum)))
    assert all(np.allclose(outs[1][k], outs[2][k], atol=1e-6) for k in outs[1])
    np.testing.assert_allclose(_losses(tmp_path / "2"), _losses(tmp_path / "1"), rtol=1e-5)


def test_lora_starts_as_the_base_model_and_trains_only_factors_and_adapters(tiny, tmp_path):
    model, params, sequences = tiny
    mesh = shd.make_mesh({"data": 2, "tensor": 2, "fsdp": 2})
    lora = LoraConfig(rank=2, targets=r"llm/layers/(attn/(q|v)|mlp/down)_kernel")
    fresh = add_lora(model, params, lora, mesh, shd.DEFAULT_RULES, seed=0)
    folded = _flat(apply_lora(fresh, lora))
    assert all(np.array_equal(folded[k], v) for k, v in _flat(params).items())  # B = 0
    stage = _stage("stage2", r"adapters_.*|lora/.*", steps=6, lora=lora)
    out = train_stage(model, fresh, stage, Batches(sequences, _spec(), 0, seed=0), mesh, tmp_path)
    before, after = _flat(params), _flat(out)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed >= {"llm/layers/attn/q_kernel", "llm/layers/attn/v_kernel", "llm/layers/mlp/down_kernel"}
    assert not any("k_kernel" in k or "norm" in k or k == "llm/embedding" for k in changed)


def test_shuffled_control_and_adapter_export_round_trip(tiny, tmp_path):
    model, params, sequences = tiny
    shuffled = shuffled_vectors(sequences)
    assert all(not np.array_equal(a.vectors[0], b.vectors[0]) for a, b in zip(sequences, shuffled))
    # An entity in several rows never gets its own vector back from another of its rows.
    repeated = [dataclasses.replace(s, vectors=sequences[i % 3].vectors) for i, s in enumerate(sequences[:9])]
    again = shuffled_vectors(repeated, seed=1)
    assert all(not np.array_equal(a.vectors[0], b.vectors[0]) for a, b in zip(repeated, again))
    with pytest.raises(ValueError, match="cannot shuffle the vectors of the 1 rows reading spaces"):
        shuffled_vectors(sequences[:1])
    picked = even_pick(["b", "a", "b", "b", "c", "a"], 4, seed=0).tolist()  # quotas a 2, b 1, c 1
    assert picked == sorted(picked) and {1, 4, 5} <= set(picked) and len(set(picked) & {0, 2, 3}) == 1
    path = export_adapters(tmp_path / "adapters", params, model.config.adapters)
    assert path.stat().st_mode & 0o777 == 0o755  # an ordinary shared folder, not mkdtemp's private one
    loaded, adapters = import_adapters(path)
    assert adapters == model.config.adapters
    assert all(np.array_equal(v, _flat(params)[k]) for k, v in _flat(loaded).items())
    tensors = load_file(str(path / "adapters.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.endswith("fc1/bias")}, str(path / "adapters.safetensors"))
    with pytest.raises(ValueError, match=r"adapters.safetensors: adapter 'semantic' tensor fc1/bias has shape None"):
        import_adapters(path)
    (path / "adapters.json").write_text("{")
    with pytest.raises(ValueError, match="adapters.json"):
        import_adapters(path)


def test_restore_stages_rebuilds_the_trained_elm_from_its_checkpoints(tiny, tmp_path):
    import ml_collections

    from configs.default import stage_config
    from elm_jax.train import stage_from_config
    from elm_jax.trained import restore_stages

    model, params, sequences = tiny
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    config = ml_collections.ConfigDict({"seed": 0, "train": {"stages": ("stage1", "stage2")}})
    config.stage1 = stage_config(steps=3, warmup_steps=1, save_every=2)
    config.stage2 = stage_config(steps=2, warmup_steps=1, trainable=STAGE1, lora={"rank": 2})
    data = Batches(sequences, _spec(), 0, seed=0)
    out = params
    for name in ("stage1", "stage2"):
        out = train_stage(model, out, stage_from_config(name, config[name], 0), data, mesh, tmp_path)
    restored, done, runs = restore_stages(model, params, config, tmp_path, mesh)
    assert done == [("stage1", 3), ("stage2", 2)]
    assert len(set(runs)) == 2 and all(len(r) == 32 for r in runs)  # each training has its own id
    a, b = _flat(out), _flat(restored)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    config.stage2.steps = 5
    with pytest.raises(ValueError, match="stage2 has a checkpoint at step 2, not its final step 5"):
        restore_stages(model, params, config, tmp_path, mesh)
    # Fewer steps than trained: refused by training too (it used to call the stage finished, and loading failed).
    config.stage2.steps = 1
    with pytest.raises(ValueError, match=r"stage2 has a checkpoint at step 2, beyond stage2.steps=1; set it to 2"):
        train_stage(model, out, stage_from_config("stage2", config.stage2, 0), data, mesh, tmp_path)
    # A model that asks for parameters the checkpoint lacks (e.g. another layer layout) is named, not half-filled.
    config.stage2.steps = 2
    config.stage2.update(trainable=".*", lora={"rank": 0})
    with pytest.raises(ValueError, match=r"stage2/checkpoints step 2 holds no llm/.* missing\): the model asks"):
        restore_stages(model, params, config, tmp_path, mesh)
