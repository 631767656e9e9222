"""The ELM train and eval steps: pure functions of (state, frozen params, batch).

The state holds only what trains: `{"step", "params" (trainable subtree), "opt_state", "rng"}`. Frozen
parameters come in as a separate argument, so they are neither differentiated nor donated nor saved, and
stage 1 (adapters only) and stage 2 (everything, or adapters + LoRA) are the same code with another regex.

The loss is token cross-entropy on target tokens only (prompt and padding masked). A batch carries a leading
gradient-accumulation axis; gradients of the summed loss are accumulated over it and divided by the global
number of target tokens, so the update does not depend on how the batch is split (accumulation or sharding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from elm_jax.lora import LoraConfig, apply_lora
from elm_jax.models.decoder_config import DecoderConfig
from elm_jax.models.elm import ELM
from elm_jax.models.layers import KERNEL_LAYOUT
from elm_jax.optim import merge

Array = jax.Array
State = dict[str, Any]
Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    lora: LoraConfig | None = None
    # Gaussian noise added to adapter inputs, in units of each space's per-dimension std: smooths the adapter
    # between training vectors, where interpolations and concept moves land. 0 disables.
    vector_noise: float = 0.0


# The LLM params the decoder only ever reads cast to its compute dtype (layers.kernel_einsum, Decoder.logits).
_READ_IN_COMPUTE_DTYPE = frozenset(KERNEL_LAYOUT) | {"embedding", "lm_head"}


def frozen_for_step(frozen: dict, decoder: DecoderConfig, lora: LoraConfig | None) -> dict:
    """The frozen params as the step takes them: with a low-precision compute dtype, the frozen LLM's kernels
    and embedding cast to it once per stage instead of in every step.

    The step's results do not change (the decoder casts them anyway), and it is faster where the cast costs:
    XLA:CPU spent ~15% of a bfloat16 stage-1 SmolLM2 step converting the frozen weights. The price is a
    compute-dtype copy of those weights beside the float32 ones. Not with LoRA, whose factors are added to the
    float32 kernels before the cast.
    """
    dtype = jnp.dtype(decoder.dtype)
    if lora is not None or dtype == jnp.dtype(decoder.param_dtype) or "llm" not in frozen:
        return frozen
    cast = lambda path, x: x.astype(dtype) if path[-1].key in _READ_IN_COMPUTE_DTYPE else x
    return {**frozen, "llm": jax.tree_util.tree_map_with_path(cast, frozen["llm"])}


def full_params(trainable: Any, frozen: Any, cfg: StepConfig) -> dict:
    """The parameters the ELM module applies: both subtrees merged, LoRA factors folded in."""
    params = merge(trainable, frozen)
    return apply_lora(params, cfg.lora) if cfg.lora else params


def row_losses(model: ELM, params: dict, batch: Batch) -> tuple[Array, Array, Array]:
    """Per row of one batch: (sum of target-token cross-entropies, target tokens, tokens predicted right).

    The vocab-wide LM head runs only at the `target_index` positions (B, target_len), not at every position:
    on SmolLM2 it is ~13% of a stage-1 step, about half of it spent on prompt and padding.
    """
    hidden, _ = model.apply(
        {"params": params},
        batch["tokens"],
        batch["soft_index"],
        batch["vectors"],
        batch["slot_space"],
        batch["mask"],
        return_hidden=True,
    )
    index = batch["target_index"]
    weights = (index >= 0).astype(jnp.float32)
    index = jnp.maximum(index, 0)
    picked = jnp.take_along_axis(hidden, index[..., None], axis=1)
    labels = jnp.take_along_axis(batch["tokens"], index + 1, axis=1)
    logits = model.apply({"params": params}, picked, method=ELM.logits)
    target = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - target
    # Right when no logit beats the target's: a max-reduce, where argmax over the vocabulary took ~2.5% of a
    # bfloat16 stage-1 SmolLM2 step on CPU (ties, vanishingly rare in float, count as right).
    correct = (target >= jnp.max(logits, axis=-1)).astype(jnp.float32)
    return jnp.sum(ce * weights, axis=1), jnp.sum(weights, axis=1), jnp.sum(correct * weights, axis=1)


def token_losses(model: ELM, params: dict, batch: Batch) -> tuple[Array, Array, Array]:
    """`row_losses` summed over the batch's rows."""
    return tuple(jnp.sum(x) for x in row_losses(model, params, batch))


def _noisy(batch: Batch, rng: Array, scales: dict[str, Array], amount: float) -> Batch:
    if not amount:
        return batch
    vectors = {
        name: v + amount * scales[name] * jax.random.normal(jax.random.fold_in(rng, i), v.shape, v.dtype)
        for i, (name, v) in enumerate(sorted(batch["vectors"].items()))
    }
    return {**batch, "vectors": vectors}


def make_train_step(
    model: ELM, tx: optax.GradientTransformation, cfg: StepConfig, vector_scales: dict[str, Array] | None = None
) -> Callable[[State, Any, Batch], tuple[State, dict[str, Array]]]:
    """step(state, frozen, batch) -> (new state, metrics). `vector_scales`: per-space std for `vector_noise`."""

    def loss_fn(trainable, frozen, micro, rng):
        micro = _noisy(micro, rng, vector_scales or {}, cfg.vector_noise)
        total, count, correct = token_losses(model, full_params(trainable, frozen, cfg), micro)
        return total, (count, correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: State, frozen: Any, batch: Batch) -> tuple[State, dict[str, Array]]:
        rng = jax.random.wrap_key_data(state["rng"])
        step_rng, next_rng = jax.random.split(jax.random.fold_in(rng, state["step"]))

        def accumulate(carry, xs):
            grads, total, count, correct = carry
            i, micro = xs
            (t, (c, k)), g = grad_fn(state["params"], frozen, micro, jax.random.fold_in(step_rng, i))
            return (jax.tree.map(jnp.add, grads, g), total + t, count + c, correct + k), None

        n_micro = batch["tokens"].shape[0]
        if n_micro == 1:  # no accumulation: skip the scan's zero-filled gradient carry
            (total, (count, correct)), grads = grad_fn(
                state["params"], frozen, jax.tree.map(lambda x: x[0], batch), jax.random.fold_in(step_rng, 0)
            )
        else:
            zeros = jax.tree.map(jnp.zeros_like, state["params"])
            init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
            (grads, total, count, correct), _ = jax.lax.scan(accumulate, init, (jnp.arange(n_micro), batch))
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "rng": jax.random.key_data(next_rng),
        }
        metrics = {
            "loss": total / denom,
            "accuracy": correct / denom,
            "target_tokens": count,
            "grad_norm": optax.tree.norm(grads),
        }
        return new_state, metrics

    return step


def make_eval_step(model: ELM, cfg: StepConfig) -> Callable[[Any, Any, Batch], dict[str, Array]]:
    """eval(trainable, frozen, batch) -> per row of the flattened batch (accum_steps x micro-batch rows):
    summed loss, target tokens and correct tokens, so callers can pool them over any grouping of rows."""

    def evaluate(trainable: Any, frozen: Any, batch: Batch) -> dict[str, Array]:
        params = full_params(trainable, frozen, cfg)
        _, (total, count, correct) = jax.lax.scan(lambda c, micro: (c, row_losses(model, params, micro)), None, batch)
        return {"loss_sum": total.reshape(-1), "target_tokens": count.reshape(-1), "correct": correct.reshape(-1)}

    return evaluate
