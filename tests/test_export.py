"""The export of a trained ELM, read back the way an outside tool would: numpy adapters and an HF-layout LLM."""

import json

import jax
import numpy as np
from safetensors.numpy import load_file

from elm_jax import export
from elm_jax.data.tasks import registry
from elm_jax.data.train_batches import BatchSpec, collate
from tests import fixtures
from tests.reference import numpy_llm


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def test_exported_elm_gives_the_trained_logits_by_the_documented_recipe(tmp_path):
    model, params, sequences = fixtures.tiny_elm(tmp_path / "llm")
    # Stage 2 changes the LLM: the export must carry the trained weights, not the source checkpoint's.
    leaves, tree = jax.tree.flatten(params["llm"])
    rng = np.random.default_rng(0)
    params = {**params, "llm": jax.tree.unflatten(tree, [x + 0.05 * rng.standard_normal(x.shape) for x in leaves])}
    params["llm"] = jax.tree.map(lambda x: np.asarray(x, np.float32), params["llm"])
    tasks = [registry()["summary"], registry()["user_profile"]]  # user_profile reads a space this ELM lacks
    out = export.write(tmp_path / "export", params, model.config, tmp_path / "llm", tasks, chat=True)

    manifest = json.loads((out / "elm.json").read_text())
    assert manifest["chat"] is True and manifest["tokens_per_slot"] == 1 and list(manifest["tasks"]) == ["summary"]
    assert manifest["tasks"]["summary"]["template"] == registry()["summary"].template

    seq = sequences[0]
    batch = jax.tree.map(lambda x: x[0], collate([seq], BatchSpec(1, len(seq.tokens), (("semantic", 4),), 1), 0))
    inputs = [batch[k] for k in ("tokens", "soft_index", "vectors", "slot_space")]
    want, _ = model.apply({"params": params}, *inputs)

    w = load_file(str(out / "adapters" / "adapters.safetensors"))
    x = (seq.vectors[0] - w["semantic/input_mean"]) / w["semantic/input_std"]
    soft = _gelu_tanh(x @ w["semantic/fc1/kernel"] + w["semantic/fc1/bias"]) @ w["semantic/fc2/kernel"]
    soft = soft + w["semantic/fc2/bias"]
    weights = fixtures.load_hf_weights(out / "llm")
    embeds = weights["model.embed_tokens.weight"][seq.tokens].copy()
    embeds[seq.soft_index == 0] = soft
    got = numpy_llm.forward(weights, fixtures.load_hf_config(out / "llm"), embeds=embeds[None])
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-4, rtol=0)
