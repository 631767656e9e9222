"""Training metrics: FLOP accounting for MFU, one writer for the console, TensorBoard and a JSONL log, and a
profiler trace of chosen steps.

FLOPs are counted the MaxText way (every matmul; causal attention as half of the full square). Stage 1
still backpropagates through the frozen LLM to reach the adapter, so its matmuls cost forward + input
gradients (4N per token) rather than the 6N of full fine-tuning (jax_anchors §2.1); LoRA stage 2 is the same
as stage 1 for the frozen base. MFU is model FLOPs per second over the devices' peak bf16 FLOP/s.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
import uuid
from typing import Any

import jax
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.summary import scalar

from elm_jax.io_utils import atomic_write_text
from elm_jax.models.decoder_config import DecoderConfig

# Dense bf16 peak FLOP/s per device, by `device_kind` prefix (vendor figures; see jax_anchors §2.1).
PEAK_FLOPS = (  # first matching prefix wins: the specific variants come before the family
    ("NVIDIA H200", 989e12),
    ("NVIDIA GH200", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H100", 989e12),
    ("NVIDIA A100", 312e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    return next((flops for prefix, flops in PEAK_FLOPS if kind.startswith(prefix)), None)


def matmul_params(cfg: DecoderConfig) -> int:
    """Parameters that take part in a matmul per token: every layer's projections plus the output head."""
    attn = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    return cfg.num_layers * (attn + 3 * cfg.hidden_size * cfg.mlp_dim) + cfg.vocab_size * cfg.hidden_size


def train_flops_per_token(
    cfg: DecoderConfig, seq_len: int, weight_grads: bool, head_tokens: int | None = None
) -> float:
    """Model FLOPs per trained token (remat recomputation excluded, as MFU requires).

    The trainer runs the vocab-wide head only on each row's target window (`head_tokens` of its `seq_len`
    positions; None: all), so only those head FLOPs count: counting the head everywhere would credit the step
    with work it never does (SmolLM2, 128 tokens with 64 targets: 11% more than it computes).
    """
    head = cfg.vocab_size * cfg.hidden_size
    head_share = (seq_len if head_tokens is None else head_tokens) / seq_len
    matmul_fwd = 2.0 * (matmul_params(cfg) - head + head * head_share)
    attn_fwd = sum(
        2.0 * 2 * _mean_keys(seq_len, None if g else cfg.sliding_window) * cfg.num_heads * cfg.head_dim
        for g in cfg.layer_is_global
    )  # QK^T and PV over the keys each query sees
    return matmul_fwd * (3 if weight_grads else 2) + attn_fwd * 3


def _mean_keys(seq_len: int, window: int | None) -> float:
    """Keys a query attends to on average, causally and within `window` (None: no window)."""
    w = min(seq_len, window or seq_len)
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def _step(row: str) -> float:
    """A metrics.jsonl row's step; a line cut short by a crash counts as past any step."""
    try:
        return json.loads(row)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


class MetricsWriter:
    """Scalars to TensorBoard event files and `metrics.jsonl` (process 0 only), and to the Python log."""

    def __init__(self, directory: str | os.PathLike, enabled: bool = True, resume_step: int = 0):
        """`resume_step`: the checkpoint a resumed run starts from; what an interrupted run logged after it is
        dropped, since those steps run again."""
        self.directory = pathlib.Path(directory)
        self.enabled = enabled and jax.process_index() == 0
        self._tb = None
        if self.enabled:
            self.directory.mkdir(parents=True, exist_ok=True)
            jsonl = self.directory / "metrics.jsonl"
            if jsonl.is_file():
                kept = [r for r in jsonl.read_text(encoding="utf-8").splitlines() if _step(r) <= resume_step]
                atomic_write_text(jsonl, "".join(r + "\n" for r in kept))
            # Written synchronously, as metrics.jsonl is: tensorboardX's SummaryWriter queues events for a thread,
            # and a killed run (which never reaches close) lost the steps up to its last checkpoint for good.
            # Its own file per writer: event files are named by the second, and a run resumed within the same
            # second would truncate its predecessor's.
            self._tb = EventsWriter(str(self.directory / "events"), filename_suffix=f".{uuid.uuid4().hex[:8]}")
            if resume_step:  # TensorBoard drops what an earlier run logged after this step (its purge marker)
                start = SessionLog(status=SessionLog.START)
                self._tb.write_event(Event(wall_time=time.time(), step=resume_step + 1, session_log=start))
                self._tb.flush()

    def write(self, step: int, scalars: dict[str, Any], prefix: str = "train") -> None:
        values = {k: float(v) for k, v in scalars.items()}
        logging.info("%s step %d: %s", prefix, step, " ".join(f"{k}={v:.4g}" for k, v in values.items()))
        if not self.enabled:
            return
        summary = Summary(value=[scalar(f"{prefix}/{k}", v).value[0] for k, v in values.items()])
        self._tb.write_event(Event(wall_time=time.time(), step=step, summary=summary))
        self._tb.flush()
        with (self.directory / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class StepTrace:
    """A jax.profiler trace of steps [first, first + count) of a loop, for TensorBoard's profile tab or xprof.

    Written to `directory`/plugins/profile/<time>/<host>.xplane.pb (every process writes its own host's), so
    with `directory` the TensorBoard log folder the trace sits beside the scalars. The trace ends after
    waiting for the last traced step's outputs: the step's device work is in it, not only its dispatch.
    """

    def __init__(self, directory: str | os.PathLike, first: int, count: int):
        self.directory, self.first, self.end = pathlib.Path(directory), first, first + count
        self.active = False

    def before(self, step: int) -> None:
        if step == self.first and self.first < self.end:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, outputs: Any) -> None:
        if self.active and step + 1 == self.end:
            jax.block_until_ready(outputs)
            self.close()
            logging.info("profiled steps %d-%d to %s", self.first + 1, self.end, self.directory)

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False

    def __enter__(self) -> StepTrace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # a trace the loop did not run to its end (fewer steps left, or a failure)
