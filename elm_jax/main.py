"""Command-line entry point: `elm-jax --config=configs/x.py[:arg] --workdir=DIR [--config.a.b=v]`."""

from __future__ import annotations

import logging
import pathlib
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from elm_jax import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for outputs, caches and checkpoints.")


def run_generate(config, workdir: pathlib.Path) -> None:
    import jax

    from elm_jax import sharding
    from elm_jax.generate import SamplingConfig, generate_text
    from elm_jax.io_utils import atomic_write_jsonl
    from elm_jax.weights.pretrained import load_configured_decoder

    mesh = sharding.make_mesh(config.mesh)
    t0 = time.perf_counter()
    loaded = load_configured_decoder(config.llm, mesh)
    logging.info(
        "loaded %s (%.1fM params) from %s in %.1fs",
        config.llm.checkpoint,
        loaded.config.num_params() / 1e6,
        loaded.path,
        time.perf_counter() - t0,
    )
    g = config.generate
    sampling = SamplingConfig(g.max_new_tokens, g.temperature, g.top_k, g.top_p, g.quant)
    t0 = time.perf_counter()
    texts = generate_text(
        loaded.model,
        loaded.params,
        loaded.tokenizer,
        list(g.prompts),
        sampling,
        chat=g.chat,
        seed=config.seed,
        batch_size=g.batch_size,
    )
    logging.info("generated %d completions in %.1fs (compile included)", len(texts), time.perf_counter() - t0)
    rows = [{"prompt": p, "completion": t} for p, t in zip(g.prompts, texts)]
    if jax.process_index() != 0:  # every process generated the same texts; one writes them
        return
    out = atomic_write_jsonl(workdir / "generations.jsonl", rows)
    for row in rows:
        print(f"\n>>> {row['prompt']}\n{row['completion']}")
    print(f"\nwrote {out}")


def run_evaluate(config, workdir: pathlib.Path) -> None:
    """Consistency evaluation of the ELM trained in workdir (metrics.json, generations.jsonl in workdir/eval).

    With eval.untrained=True the ELM is the LLM with fresh adapters: a floor that trained models must beat.
    """
    import functools

    from elm_jax import sharding, trained
    from elm_jax.data import tasks as tasks_lib
    from elm_jax.encoder import TextEncoder
    from elm_jax.eval import pipeline, vector_reliance
    from elm_jax.generate import generate_elm_text, generate_text

    mesh = sharding.make_mesh(config.mesh)
    encoder = TextEncoder.from_pretrained(config.encoder.checkpoint, mesh)
    elm = trained.load(config, workdir, mesh, encoder=encoder, untrained=config.eval.untrained)
    catalog, loaded, params = elm.catalog, elm.llm, elm.params
    print("evaluating", ", ".join(f"{n} (step {s})" for n, s in elm.stages) or "an untrained ELM (eval.untrained)")
    e = config.eval
    registry = tasks_lib.registry(tasks_lib.load_task_file(e.task_file) if e.task_file else ())
    settings = pipeline.settings_from_config(config)
    sampling = pipeline.sampling_from_config(config)
    elm_generate = functools.partial(
        generate_elm_text,
        elm.model,
        params,
        loaded.tokenizer,
        sampling=sampling,
        seed=config.seed,
        batch_size=e.batch_size,
    )
    text_generate = functools.partial(
        generate_text,
        loaded.model,
        loaded.params,
        loaded.tokenizer,
        sampling=sampling,
        chat=config.elm.chat,
        seed=config.seed,
        batch_size=e.batch_size,
    )
    tasks = tasks_lib.select(list(e.tasks), registry)
    report = pipeline.evaluate(
        catalog,
        tasks,
        settings,
        lambda q: elm_generate(q),
        lambda p: text_generate(p),
        encoder.encode,
        loaded.tokenizer,
        workdir / "eval",
        model=trained.generation_identity(config, elm, sampling, config.eval.untrained),
    )
    print(pipeline.format_overall(report))
    reliance = vector_reliance.run(config, elm, tasks, workdir)
    print("\nheld-out loss with true vs shuffled vectors (does the ELM read the vector?)")
    print(vector_reliance.format_table(reliance))
    print(f"\nwrote {workdir / 'eval' / 'metrics.json'} and {workdir / 'eval' / 'vector_reliance.json'}")


def run_prepare(config, workdir: pathlib.Path) -> None:
    """Training targets and tag CAVs under workdir (elm_jax/data/prepare.py), reused when their inputs are unchanged."""
    from elm_jax.data import prepare

    prepare.run(config, workdir)


def run_train(config, workdir: pathlib.Path) -> None:
    """Prepare (reused if done), then the configured training stages (elm_jax/train.py), resumable."""
    from elm_jax import train

    train.run(config, workdir)


def run_query(config, workdir: pathlib.Path) -> None:
    """Talk to the ELM trained in workdir (elm_jax/query.py): texts and consistency in workdir/queries/<name>.jsonl."""
    from elm_jax import query

    query.run(config, workdir)


def run_report(config, workdir: pathlib.Path) -> None:
    """The paper's Table 2 and Figs. 3-5 on this run (elm_jax/eval/report.py); evaluates first if eval/ is stale."""
    from elm_jax.eval import report

    if report.needs_evaluation(config, workdir):
        run_evaluate(config, workdir)
    print(f"wrote {report.run(config, workdir)}")


def run_export(config, workdir: pathlib.Path) -> None:
    """The trained ELM as a Hugging Face LLM folder, its adapters and a prompt manifest (elm_jax/export.py)."""
    from elm_jax import export

    print(f"wrote {export.run(config, workdir)}")


def run_main(config, workdir: pathlib.Path) -> None:
    """The whole pipeline: prepare -> stage 1 -> stage 2 -> evaluate -> report. A second run reuses every finished
    part (prepared data, finished stages, evaluated chunks), and an interrupted one resumes where it stopped."""
    run_train(config, workdir)
    run_report(config, workdir)


JOBS = {
    "generate": run_generate,
    "evaluate": run_evaluate,
    "prepare": run_prepare,
    "train": run_train,
    "query": run_query,
    "report": run_report,
    "main": run_main,
    "export": run_export,
}


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required (e.g. --config=configs/default.py)")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if config.job not in JOBS:
        raise app.UsageError(f"config.job={config.job!r} is unknown; known: {', '.join(JOBS)}")
    workdir = pathlib.Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Orbax (absl logger) writes ~20 INFO lines per checkpoint and jax notes absent backends: keep the
        # console to the job's own progress. --verbosity=1 (DEBUG) shows everything.
        for name in ("absl", "jax"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        distributed.maybe_initialize()
        JOBS[config.job](config, workdir)
    except (FileNotFoundError, ValueError) as e:  # bad input: say what and where, without a traceback
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"elm-jax: error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    app.run(main)


if __name__ == "__main__":
    run()
