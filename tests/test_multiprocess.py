"""Multi-host training on one machine: two processes over loopback must train like one process.
Also: which settings `elm_jax.distributed` hands to jax.distributed.initialize.

Two worker processes (2 CPU devices each, tests/multiprocess_worker.py) join through `elm_jax.distributed`
on a free 127.0.0.1 port, each builds only its half of every global batch, and they train one stage on a
mesh over all 4 devices with a shared workdir, stopping at step 3 and resuming from the checkpoint the two
wrote together, then export the trained ELM together. The reference is the same stage (and export) in this
process on 4 of its devices. The workers have a deadline, so a hung collective fails the test instead of
hanging it.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file

from elm_jax import distributed
from elm_jax.checkpoint import import_adapters
from tests import multiprocess_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEADLINE_S = 240  # for the workers together; a healthy run takes 40-110 s on 2 busy cores
# Cross-process all-reduces (gloo) add in another order than in-process ones: float32 rounding only
# (measured: 1e-7 relative on the losses).
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: pathlib.Path, name: str, processes: int, devices: int, *args: str) -> list[subprocess.Popen]:
    """Starts `processes` workers with `devices` CPU devices each, logging to tmp/<name>.<i>.log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELM_JAX_")}
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        ELM_JAX_COORDINATOR=f"127.0.0.1:{_free_port()}",  # explicit: jax's default port has changed before
        ELM_JAX_NUM_PROCESSES=str(processes),
        ELM_JAX_INIT_TIMEOUT="60",
        # The resumed run compiles its step again; process 0 takes it from this cache (jax writes entries
        # from process 0 only, so process 1 compiles it twice).
        JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    command = [sys.executable, "-m", "tests.multiprocess_worker", "--setup", str(tmp / "setup.pkl")]
    command += ["--workdir", str(tmp / name), "--report", str(tmp / name), *args]
    procs = []
    for i in range(processes):
        with (tmp / f"{name}.{i}.log").open("w") as log:
            procs.append(
                subprocess.Popen(command, cwd=ROOT, env={**env, "ELM_JAX_PROCESS_ID": str(i)}, stdout=log, stderr=log)
            )
    return procs


def _wait(procs: list[subprocess.Popen], logs: list[pathlib.Path], deadline: float) -> None:
    """Waits for all workers; at the first failure or at the deadline kills the rest and fails with the logs
    (a process whose peer died would otherwise wait in a collective until the deadline)."""
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.returncode for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    if any(p.returncode for p in procs):
        tails = "\n".join(
            f"--- {log.name} (exit {p.returncode}):\n" + "\n".join(log.read_text().splitlines()[-25:])
            for p, log in zip(procs, logs)
        )
        raise AssertionError(f"worker processes failed or timed out:\n{tails}")


def _metrics(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "stage2" / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_from_a_shared_checkpoint(tmp_path):
    multiprocess_worker.write_setup(tmp_path / "llm", tmp_path / "setup.pkl")
    deadline = time.monotonic() + DEADLINE_S
    procs = _launch(tmp_path, "pair", 2, 2, "--stop-at", "3")
    try:
        ref = multiprocess_worker.train(tmp_path / "setup.pkl", tmp_path / "one", devices=jax.devices()[:4])
    finally:
        _wait(procs, [tmp_path / f"pair.{i}.log" for i in range(2)], deadline)
    reports = [json.loads((tmp_path / f"pair.p{i}").read_text()) for i in range(2)]

    batch = multiprocess_worker.GLOBAL_BATCH
    assert ref["rows"] == list(range(batch))
    for i, r in enumerate(reports):
        assert (r["process_index"], r["process_count"]) == (i, 2)
        assert (r["local_device_count"], r["device_count"], r["mesh_processes"]) == (2, 4, [0, 1])
        assert r["host_batch_shape"] == [1, batch // 2, multiprocess_worker.SEQ_LEN]  # only its own rows
    assert sorted(reports[0]["rows"] + reports[1]["rows"]) == list(range(batch))  # disjoint, all covered
    # Both saw the checkpoints they wrote together into the shared folder; the second run resumed from step
    # 2 (dropping the step 3 the first run logged, then logging it again) and saved, asynchronously, to the end.
    assert all(max(r["checkpoints_at_stop"]) == 2 and r["checkpoints_after"] == [4, 6] for r in reports)

    expected = {(r["split"], r["step"]): r for r in _metrics(tmp_path / "one")}
    got = _metrics(tmp_path / "pair")
    assert [(r["split"], r["step"]) for r in got] == [("train", s) for s in (1, 2, 3, 4, 5, 6)] + [("eval", 6)]
    for r in got:
        want = expected[r["split"], r["step"]]
        np.testing.assert_allclose(r["loss"], want["loss"], rtol=RTOL, err_msg=f"{r['split']} step {r['step']}")
        assert r["accuracy"] == want["accuracy"]
    a, b = (flatten_dict(import_adapters(tmp_path / n / "stage2" / "adapters")[0]) for n in ("one", "pair"))
    assert a.keys() == b.keys()
    for k, v in a.items():
        np.testing.assert_allclose(b[k], v, rtol=RTOL, atol=1e-6, err_msg=str(k))
    # The export gathers the LLM's shards from both processes into one Hugging Face folder.
    one, pair = (tmp_path / n / "export" for n in ("one", "pair"))
    assert sorted(p.relative_to(pair).as_posix() for p in pair.rglob("*")) == sorted(
        p.relative_to(one).as_posix() for p in one.rglob("*")
    )
    assert (pair / "elm.json").read_text() == (one / "elm.json").read_text()
    a, b = (load_file(d / "llm" / "model.safetensors") for d in (one, pair))
    assert a.keys() == b.keys() and len(a) > 3
    for k, v in a.items():
        np.testing.assert_allclose(b[k], v, rtol=RTOL, atol=1e-6, err_msg=k)


def test_explicit_settings_keep_jax_from_second_guessing_them(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for name in [k for k in os.environ if k.startswith(("ELM_JAX_", "SLURM_"))]:
        monkeypatch.delenv(name)
    assert not distributed.maybe_initialize() and not calls
    # Inside a Slurm step, jax's own detection would give each process only the GPU of its local rank.
    slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]", SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="0")
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ELM_JAX_COORDINATOR", "n1:8476")
    monkeypatch.setenv("ELM_JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("ELM_JAX_PROCESS_ID", "1")
    assert distributed.maybe_initialize()
    assert calls.pop() == dict(
        coordinator_address="n1:8476",
        num_processes=2,
        process_id=1,
        cluster_detection_method="deactivate",
        initialization_timeout=300,
    )
    for name in ("ELM_JAX_COORDINATOR", "ELM_JAX_NUM_PROCESSES", "ELM_JAX_PROCESS_ID"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("ELM_JAX_DISTRIBUTED", "1")  # the rest from the cluster
    monkeypatch.setenv("ELM_JAX_LOCAL_DEVICE_IDS", "0,1")
    monkeypatch.setenv("ELM_JAX_INIT_TIMEOUT", "30")
    assert distributed.maybe_initialize()
    assert calls.pop() == dict(local_device_ids=[0, 1], initialization_timeout=30)
    monkeypatch.setenv("ELM_JAX_PROCESS_ID", "one")
    with pytest.raises(ValueError, match="ELM_JAX_PROCESS_ID='one' is not an integer"):
        distributed.maybe_initialize()
    monkeypatch.delenv("ELM_JAX_PROCESS_ID")
    for name, value in (("ELM_JAX_LOCAL_DEVICE_IDS", "0,,1"), ("ELM_JAX_INIT_TIMEOUT", "5m")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=f"{name}='{value}' is not an integer"):
            distributed.maybe_initialize()
        monkeypatch.setenv(name, {"ELM_JAX_LOCAL_DEVICE_IDS": "0", "ELM_JAX_INIT_TIMEOUT": "30"}[name])
