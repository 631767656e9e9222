"""WALS on MovieLens-25M-sized data: elm_jax `fit_wals` vs the `implicit` library's CPU ALS, same model and data.

Generates 162,541 users x 59,047 items x 25,000,095 ratings (times `--scale`) with power-law item popularity and
planted taste structure, holds out 20% of each user's ratings, then fits both libraries with the same rank, l2,
confidence and iterations, with exact solves (elm_jax `cholesky`, implicit `use_cg=False`) and with 3 conjugate-
gradient steps (elm_jax `cg`, implicit's default). The confidence c = 1 + alpha r goes to `implicit` precomputed
with its alpha = 1: it weighs with c - 1 = alpha r where Hu et al. use c = 1 + alpha r. Each fit runs in a fresh
subprocess (peak RSS is its own), on 2 cores: implicit with 2 threads, elm_jax on 2 XLA:CPU devices (mesh data=2).
Seconds per iteration are the median over iterations 2..n (elm_jax compiles in the first). Held-out Recall@20 /
NDCG@20 (training items excluded) are computed afterwards for every fit on the same sampled users.

  .venv/bin/python benchmarks/wals.py [--scale 0.1] [--iterations 15] [--solvers cholesky,cg] [--out results.json]

Needs `pip install implicit==0.7.3`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from elm_jax.data import wals  # importing elm_jax sets XLA:CPU flags before any backend starts
from elm_jax.io_utils import atomic_write_json

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from encoder import markdown  # noqa: E402  (the benchmarks' one table format)

GOAL_TIME_RATIO = 2.0  # elm_jax seconds per iteration over implicit's (same solver), at most, at equal recall
RECALL_TOLERANCE = 0.01  # "equal recall": Recall@20 within this of implicit's
CORES = 2
FULL = {"users": 162_541, "items": 59_047, "ratings": 25_000_095}
IMPLICIT_SOLVER = {"cholesky": "exact (use_cg=False)", "cg": "CG, 3 steps (use_cg=True)"}


def make_ratings(scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(users, items, stars, n_users, n_items): unique pairs; ML-25M-like user activity (>= 20 ratings, heavy tail);
    item popularity p_i ~ 1 / (i + 50); 70% of a user's picks come from the genres they like (Dirichlet(0.2) over
    32 genres), by popularity within the genre, and are rated higher (0.5-5 stars)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = round(FULL["users"] * scale), round(FULL["items"] * scale)
    target, genres = round(FULL["ratings"] * scale), 32
    genre = rng.integers(0, genres, n_items)
    by_genre = np.argsort(genre, kind="stable")
    popularity = 1.0 / (np.arange(n_items) + 50.0)
    cum = np.cumsum(popularity[by_genre])  # popularity mass, items in genre order
    genre_mass = np.bincount(genre, popularity, genres)
    genre_start = np.cumsum(genre_mass) - genre_mass
    taste = rng.dirichlet(np.full(genres, 0.2), n_users)

    flat_taste = (np.cumsum(taste, axis=1) + np.arange(n_users)[:, None]).ravel()
    extra = rng.lognormal(3.93, 1.38, n_users)  # ML-25M: median ~70, mean ~154 ratings per user
    counts = np.minimum(20 + np.round(extra * (1.15 * target - 20 * n_users) / extra.sum()), n_items // 4)
    keys = np.zeros(0, np.int64)
    while len(keys) < target:  # draws collide on popular items: top up until there are enough distinct pairs
        users = np.repeat(np.arange(n_users), counts.astype(np.int64))
        g = np.clip(np.searchsorted(flat_taste, users + rng.random(len(users))) - users * genres, 0, genres - 1)
        u01 = rng.random(len(users))
        mass = np.where(rng.random(len(users)) < 0.7, genre_start[g] + u01 * genre_mass[g], u01 * cum[-1])
        items = by_genre[np.minimum(np.searchsorted(cum, mass), n_items - 1)]
        keys = np.sort(np.concatenate([keys, users * n_items + items]))
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]  # (np.unique hashes, and is ~20x slower here)
        counts = np.ceil(counts * 1.2 * (target - len(keys)) / counts.sum())
    keys = np.delete(keys, rng.choice(len(keys), len(keys) - target, replace=False))
    users, items = keys // n_items, keys % n_items
    stars = 2.5 + 4.0 * taste[users, genre[items]] + rng.normal(0, 0.9, len(users))
    stars = np.clip(np.round(2 * stars) / 2, 0.5, 5.0)
    return users.astype(np.int32), items.astype(np.int32), stars.astype(np.float32), n_users, n_items


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM): unlike getrusage's ru_maxrss, it does not inherit the parent's across exec."""
    status = pathlib.Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def fit_child(args: argparse.Namespace) -> None:
    """One fit in this (fresh) process: writes factors and timings next to the data."""
    data = np.load(args.data)
    users, items, stars = data["users"], data["items"], data["stars"]
    n_users, n_items = int(data["n_users"]), int(data["n_items"])
    config = wals.WALSConfig(
        rank=args.rank, l2=args.l2, alpha=args.alpha, iterations=args.iterations, solver=args.solver
    )
    rss_data = peak_rss_mb()
    stamps: list[float] = []
    start = time.perf_counter()
    if args.engine == "elm_jax":
        import jax

        jax.config.update("jax_num_cpu_devices", CORES)
        from elm_jax.sharding import make_mesh

        def tick(iteration, user_factors, item_factors):
            jax.block_until_ready(item_factors)
            stamps.append(time.perf_counter())

        x, y = wals.fit_wals(
            users, items, stars, n_users, n_items, config, mesh=make_mesh({"data": CORES}), callback=tick
        )
        per_iteration = np.diff([start, *stamps]).tolist()  # the first one includes layout and compilation
    else:
        from implicit.cpu.als import AlternatingLeastSquares

        confidence = wals.ratings_csr(users, items, stars, n_users, n_items)
        confidence.data = wals.confidences(confidence.data, config).astype(np.float32)
        model = AlternatingLeastSquares(
            factors=args.rank,
            regularization=args.l2,
            alpha=1.0,
            iterations=args.iterations,
            use_cg=args.solver == "cg",
            calculate_training_loss=False,
            num_threads=CORES,
            random_state=config.seed,
        )
        per_iteration = []
        model.fit(confidence, show_progress=False, callback=lambda it, seconds, loss: per_iteration.append(seconds))
        x, y = model.user_factors, model.item_factors
    total = time.perf_counter() - start
    np.savez(args.result + ".npz", x=np.asarray(x, np.float32), y=np.asarray(y, np.float32))
    result = {
        "per_iteration_s": per_iteration,
        "fit_s": total,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_data_mb": rss_data,
    }
    pathlib.Path(args.result).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of ML-25M's users, items and ratings")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--l2", type=float, default=wals.WALSConfig.l2)
    parser.add_argument("--alpha", type=float, default=wals.WALSConfig.alpha)
    parser.add_argument("--solvers", default="cholesky,cg", help="comma-separated: cholesky (exact), cg")
    parser.add_argument("--eval-users", type=int, default=10_000, help="held-out users scored (a fixed sample)")
    parser.add_argument("--out", help="write the results as JSON here")
    for internal in ("--engine", "--solver", "--data", "--result"):  # set by main() for its fit subprocesses
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        fit_child(args)
        return
    solvers = args.solvers.split(",")
    if not set(solvers) <= {"cholesky", "cg"} or args.scale <= 0 or args.iterations < 2:
        parser.error("--solvers takes cholesky and/or cg; --scale must be positive; --iterations at least 2")

    start = time.perf_counter()
    users, items, stars, n_users, n_items = make_ratings(args.scale)
    (tu, ti, ts), (hu, hi, hs) = wals.split_heldout(users, items, stars, fraction=0.2, seed=0)
    generate_s = time.perf_counter() - start
    train = wals.ratings_csr(tu, ti, ts, n_users, n_items)
    heldout = wals.ratings_csr(hu, hi, hs, n_users, n_items)
    eval_users = np.random.default_rng(1).permutation(np.flatnonzero(np.diff(heldout.indptr)))[: args.eval_users]
    metrics = lambda x, y: wals.recall_ndcg_at_k(x, y, train, heldout, k=20, users=eval_users)
    popularity = metrics(np.ones((n_users, 1), np.float32), wals.popularity_scores(train)[:, None])

    fits: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "train.npz")
        np.savez(data, users=tu, items=ti, stars=ts, n_users=n_users, n_items=n_items)
        for solver in solvers:
            for engine in ("elm_jax", "implicit"):
                name, result = f"{engine}/{solver}", os.path.join(tmp, f"{engine}-{solver}.json")
                common = ["--rank", str(args.rank), "--l2", str(args.l2), "--alpha", str(args.alpha)]
                command = [sys.executable, __file__, "--engine", engine, "--solver", solver, "--data", data]
                command += ["--result", result, "--iterations", str(args.iterations), *common]
                print(f"fitting {name} ...", flush=True)
                subprocess.run(command, check=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
                fits[name] = json.loads(pathlib.Path(result).read_text())
                factors = np.load(result + ".npz")
                fits[name].update(metrics(factors["x"], factors["y"]))
                fits[name]["s_per_iteration"] = statistics.median(fits[name]["per_iteration_s"][1:])

    rows = [["fit (2 cores)", "solver", "s / iteration", "1st iteration (s)", "fit total (s)", "peak RSS (GB)"]]
    rows[0] += ["Recall@20", "NDCG@20", "time vs implicit", "goal", "met"]
    verdicts = {}
    for name, fit in fits.items():
        engine, solver = name.split("/")
        ref = fits[f"implicit/{solver}"]
        ratio = fit["s_per_iteration"] / ref["s_per_iteration"]
        same_recall = abs(fit["recall@20"] - ref["recall@20"]) <= RECALL_TOLERANCE
        if engine == "elm_jax":
            verdicts[solver] = {"time_ratio": ratio, "equal_recall": same_recall, "met": ratio <= GOAL_TIME_RATIO}
        rows.append(
            [
                "elm_jax fit_wals (jit, mesh data=2)" if engine == "elm_jax" else "implicit 0.7.3 (2 threads)",
                solver if engine == "elm_jax" else IMPLICIT_SOLVER[solver],
                f"{fit['s_per_iteration']:.2f}",
                f"{fit['per_iteration_s'][0]:.2f}",
                f"{fit['fit_s']:.1f}",
                f"{fit['peak_rss_mb'] / 1024:.2f}",
                f"{fit['recall@20']:.4f}",
                f"{fit['ndcg@20']:.4f}",
                f"{ratio:.2f}x",
                f"<= {GOAL_TIME_RATIO}x at equal recall" if engine == "elm_jax" else "",
                ("yes" if ratio <= GOAL_TIME_RATIO and same_recall else "NO") if engine == "elm_jax" else "",
            ]
        )
    rows.append(["popularity baseline", "", "", "", "", "", f"{popularity['recall@20']:.4f}"])
    rows[-1] += [f"{popularity['ndcg@20']:.4f}", "", "", ""]
    print(markdown(rows))
    print(
        f"\n{n_users:,} users x {n_items:,} items, {len(users):,} ratings ({len(tu):,} train, {len(hu):,} held out; "
        f"generated in {generate_s:.0f} s); rank {args.rank}, l2 {args.l2}, c = 1 + {args.alpha} r, "
        f"{args.iterations} iterations; metrics over {popularity['users']:,} sampled held-out users."
    )
    if args.out:
        import jax

        results = {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}",
            "command": " ".join(sys.argv),
            "scale": args.scale,
            "users": n_users,
            "items": n_items,
            "ratings": len(users),
            "train": len(tu),
            "heldout": len(hu),
            "rank": args.rank,
            "l2": args.l2,
            "alpha": args.alpha,
            "iterations": args.iterations,
            "eval_users": popularity["users"],
            "fits": fits,
            "popularity": popularity,
            "goal_time_ratio": GOAL_TIME_RATIO,
            "recall_tolerance": RECALL_TOLERANCE,
            "verdicts": verdicts,
        }
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
