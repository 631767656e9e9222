"""One process of a multi-process training run on CPU, for tests/test_multiprocess.py.

Run as `python -m tests.multiprocess_worker --setup FILE --workdir DIR --report FILE [...]` with the ELM_JAX_*
variables of `elm_jax.distributed` set and JAX_NUM_CPU_DEVICES giving this process's devices. Every process
loads the same tiny ELM and sequences (`fixtures.tiny_elm`, pickled once by `write_setup` so workers skip
transformers and the eager initialisation), trains one stage over a mesh of all global devices with the
workdir shared, and writes a JSON report of what it saw: process and device counts, the rows of each global
batch it built, checkpoint steps. It then exports the trained ELM (`elm_jax.export`:
every process takes part, process 0 writes). `train` is also the single-process reference.

`--stop-at S` first runs the stage until every process fails when asked for step S's batch, like a preempted
job, then runs it again, which resumes from the shared checkpoint folder (in the same processes: a fresh
start would only add another start-up to the test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import pickle
import sys
from collections.abc import Sequence

GLOBAL_BATCH = 8
SEQ_LEN = 12
MESH = {"data": 2, "fsdp": 2}
STEPS = 6


class _Stopped(Exception):
    pass


def _stop() -> None:
    raise _Stopped


def write_setup(directory: pathlib.Path, out: pathlib.Path) -> None:
    """Pickles `fixtures.tiny_elm` (module, numpy params, sequences; its LLM written to `directory`) and the
    LLM's path for the workers."""
    from tests import fixtures

    model, params, sequences = fixtures.tiny_elm(directory)
    out.write_bytes(pickle.dumps({"model": model, "params": params, "sequences": sequences, "llm": str(directory)}))


def _steps(checkpoints: pathlib.Path) -> list[int]:
    """Committed checkpoint steps (Orbax writes to a temporary name and renames when done)."""
    return sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()) if checkpoints.exists() else []


def train(setup: pathlib.Path, workdir: pathlib.Path, stop_at: int = -1, devices: Sequence | None = None) -> dict:
    """Trains the stage on a mesh over `devices` (default: all global devices); returns this process's report."""
    import jax

    from elm_jax import export
    from elm_jax import sharding as shd
    from elm_jax.data.train_batches import Batches, BatchSpec
    from elm_jax.optim import OptimConfig
    from elm_jax.train import StageConfig, train_stage

    loaded = pickle.loads(setup.read_bytes())
    model, params, sequences = loaded["model"], loaded["params"], loaded["sequences"]
    mesh = shd.make_mesh(MESH, devices)
    spec = BatchSpec(GLOBAL_BATCH, SEQ_LEN, space_dims=(("semantic", 4),), max_slots=1)
    data = Batches(sequences, spec, 0, 0, process_index=jax.process_index(), process_count=jax.process_count())
    optim = OptimConfig(learning_rate=1e-3, steps=STEPS, warmup_steps=1)
    stage = StageConfig("stage2", ".*", optim, log_every=1, save_every=2)
    checkpoints = workdir / stage.name / "checkpoints"
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "mesh_processes": sorted({d.process_index for d in mesh.devices.flat}),
        "rows": data.rows.tolist(),
        "host_batch_shape": list(data.host_batch(0)["tokens"].shape),
    }
    eval_sets = {"eval": sequences[:10]}  # 10 rows: the second eval batch is padded with empty rows
    if stop_at >= 0:  # synchronous saves: the checkpoint before the stop is committed when it fails
        real = data.host_batch
        data.host_batch = lambda step: _stop() if step == stop_at else real(step)
        try:
            train_stage(model, params, dataclasses.replace(stage, async_save=False), data, mesh, workdir)
        except _Stopped:
            logging.info("stopped at step %d as asked", stop_at)
        del data.host_batch
        report["checkpoints_at_stop"] = _steps(checkpoints)
    trained = train_stage(model, params, stage, data, mesh, workdir, eval_sets=eval_sets)
    report["checkpoints_after"] = _steps(checkpoints)
    export.write(workdir / "export", trained, model.config, loaded["llm"], tasks=(), chat=False)
    return report


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", type=pathlib.Path, required=True, help="pickle from write_setup")
    parser.add_argument("--workdir", type=pathlib.Path, required=True, help="shared by all processes")
    parser.add_argument("--report", type=pathlib.Path, required=True, help="JSON out; .p<process index> is added")
    parser.add_argument("--stop-at", type=int, default=-1, help="fail when step S's batch is asked for, then resume")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    from elm_jax import distributed

    distributed.maybe_initialize()  # before anything touches a device

    import jax

    report = train(args.setup, args.workdir, args.stop_at)
    args.report.with_name(f"{args.report.name}.p{jax.process_index()}").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
