"""MFU's FLOP accounting against XLA's own count of the compiled train step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elm_jax.data.train_batches import BatchSpec, TrainSequence, collate
from elm_jax.models.adapter import AdapterConfig
from elm_jax.models.decoder_config import DecoderConfig
from elm_jax.models.elm import ELM, ELMConfig
from elm_jax.optim import OptimConfig, make_optimizer, partition
from elm_jax.train import init_args
from elm_jax.train_log import train_flops_per_token
from elm_jax.train_step import StepConfig, make_train_step

B, T, TARGET, DIM = 4, 128, 64, 32


@pytest.mark.parametrize("stage, trainable", [(1, r"adapters_.*"), (2, r".*")])
def test_train_flops_match_xla_cost_analysis(stage, trainable):
    # Big enough that matmuls dominate XLA's count (norms, softmax and AdamW add ~1-2%); separate layers,
    # since XLA counts a scanned body once.
    cfg = DecoderConfig(
        family="llama",
        vocab_size=2048,
        hidden_size=256,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        mlp_dim=1024,
        scan_layers=False,
    )
    model = ELM(ELMConfig(cfg, (("s", AdapterConfig(DIM, cfg.hidden_size, 64)),)))
    params = nn.unbox(model.init(jax.random.key(0), *init_args(model))["params"])
    rng = np.random.default_rng(0)
    soft = np.where(np.arange(T) == 4, 0, -1).astype(np.int32)
    sequences = [
        TrainSequence(
            rng.integers(3, cfg.vocab_size, T).astype(np.int32), soft, T - TARGET, (np.ones(DIM, np.float32),), (0,)
        )
        for _ in range(B)
    ]
    spec = BatchSpec(B, T, (("s", DIM),), max_slots=1, target_len=TARGET)
    batch = jax.tree.map(jnp.asarray, collate(sequences, spec, pad_id=0))
    train, frozen = partition(params, trainable)
    tx = make_optimizer(OptimConfig(learning_rate=1e-3, steps=10))
    state = {"step": jnp.zeros((), jnp.int32), "params": train, "opt_state": tx.init(train)}
    state["rng"] = jax.random.key_data(jax.random.key(0))
    compiled = jax.jit(make_train_step(model, tx, StepConfig())).lower(state, frozen, batch).compile()

    counted = train_flops_per_token(cfg, T, weight_grads=stage == 2, head_tokens=spec.target_window) * B * T
    # MFU counts causal attention as half the square; XLA computes (and counts) the masked half too.
    masked_half = cfg.num_layers * 2.0 * T * cfg.num_heads * cfg.head_dim * 3 * B * T
    xla = compiled.cost_analysis()["flops"]
    assert xla == pytest.approx(counted + masked_half, rel=0.03)
    # Counting the head at every position (what the trainer reported before) is off by more than that.
    everywhere = train_flops_per_token(cfg, T, weight_grads=stage == 2) * B * T
    assert abs(xla / (everywhere + masked_half) - 1) > 0.03


def test_sliding_window_attention_counts_the_keys_each_query_sees():
    from elm_jax.train_log import _mean_keys

    brute = lambda t, w: np.mean([min(i + 1, w or t) for i in range(t)])
    for t, w in ((128, None), (128, 512), (2048, 512), (7, 3)):
        assert _mean_keys(t, w) == pytest.approx(brute(t, w))


def test_peak_flops_tell_h100_variants_apart():
    from types import SimpleNamespace

    from elm_jax.train_log import peak_flops_per_device

    kinds = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA GH200 480GB": 989e12, "cpu": None}
    for kind, flops in kinds.items():
        assert peak_flops_per_device(SimpleNamespace(device_kind=kind)) == flops


def test_tensorboard_rows_are_on_disk_without_close(tmp_path):
    """A killed run never reaches close(); its rows up to the checkpoint are not logged again on resume."""
    import struct

    from tensorboardX.proto import event_pb2

    from elm_jax.train_log import MetricsWriter

    def events(path):
        data, out = path.read_bytes(), []
        while data:  # TFRecord: u64 length, u32 crc, the Event, u32 crc
            (n,) = struct.unpack("<Q", data[:8])
            out.append(event_pb2.Event.FromString(data[12 : 12 + n]))
            data = data[16 + n :]
        return out

    first = MetricsWriter(tmp_path)
    for step in (1, 2, 3):
        first.write(step, {"loss": 2.0})
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert [e.step for e in events(path) for v in e.summary.value if v.tag == "train/loss"] == [1, 2, 3]
    # A resumed run's writer (same second, same host) gets its own file, which starts with the purge marker.
    MetricsWriter(tmp_path, resume_step=2).close()
    (new,) = set(tmp_path.glob("events.out.tfevents.*")) - {path}
    assert len(events(path)) == 4 and [(e.step, e.session_log.status) for e in events(new)[1:]] == [(3, 1)]
