"""Consistency evaluation (paper §3.2, App. B): generate about held-out entities, re-embed, score.

For every task and *condition* it generates texts, embeds them with the text encoder, and scores them:

  elm      the ELM given each test entity's true vector(s)                     (the paper's setting)
  zero     the ELM given zero vectors             \
  random   the ELM given random vectors with the  |  controls: how much of a score does the vector explain?
           space's per-dimension mean and std     /
  text     the same LLM, no adapter, prompted with the entity's title (the paper's text-only baseline)
  shuffled the `elm` generations scored against another test entity (a derangement): chance level

Metrics per example, each reported with a bootstrap interval:
  sc       semantic consistency: cos(encoder(text), semantic vector). Pair tasks use the mean of the two
           movies' vectors. Controls are scored against the true entity's vector.
  bc       behavioral consistency. Movie tasks: Spearman, over users who rated the movie, between each
           user's rating and the similarity of the text to the user's representation (Table 2). User task:
           NDCG of a set of movies (the user's rated movies plus random unrated ones, 0 stars) ranked by
           similarity to the generated profile (Fig. 3, 5). Pair tasks use the user's mean rating of the
           pair's movies they rated.
  rank     retrieval: 1-based rank of the true entity among all test entities of its kind by similarity
           to the text (single-entity tasks), summarised as recall@1, recall@10, MRR and mean rank.

The paper does not say how users are represented as text for the movie ranker: we use the encoder
embedding of a "likes: ...; dislikes: ..." list of the user's five highest- and lowest-rated titles, or
of the user's ground-truth profile text (`user_text="profile"`).

Generations are written per (task, condition, chunk) as they finish, so an interrupted evaluation
resumes where it stopped; final files are written atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from elm_jax.data.catalog import Catalog, fingerprint
from elm_jax.data.examples import Example, build_examples, task_seed, teacher_prompt, user_ratings_text
from elm_jax.data.prompts import Query, encode_prompt
from elm_jax.data.tasks import Task
from elm_jax.eval import metrics
from elm_jax.generate import SamplingConfig
from elm_jax.io_utils import atomic_write_json, atomic_write_jsonl
from elm_jax.resumable import map_in_chunks

CONDITIONS = ("elm", "zero", "random", "text")
Generator = Callable[[Sequence[Query]], list[str]]  # ELM queries -> texts
TextGenerator = Callable[[Sequence[str]], list[str]]  # plain prompts -> texts (the text-only baseline)
Encoder = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised rows


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    conditions: tuple[str, ...] = CONDITIONS
    max_examples_per_task: int = 100
    chat: bool = True  # wrap prompts in the LLM's chat template
    tokens_per_slot: int = 1
    semantic_space: str = "semantic"  # the space the text encoder produced (SC is defined there)
    user_text: str = "titles"  # titles | profile: how users are represented for the movie ranker
    max_ranked_users: int = 100  # movie BC: at most this many raters per movie
    ranked_items: int = 100  # user BC: the user's rated movies (up to half) plus random unrated ones
    chunk_size: int = 64  # generations per resumable chunk
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.conditions) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"eval conditions {sorted(unknown)} are unknown; known: {', '.join(CONDITIONS)}")
        if self.user_text not in ("titles", "profile"):
            raise ValueError(f"user_text must be 'titles' or 'profile', got {self.user_text!r}")
        for name in ("max_examples_per_task", "chunk_size", "tokens_per_slot", "n_resamples"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval setting {name} must be at least 1, got {getattr(self, name)}")


def settings_from_config(config: Any) -> EvalSettings:
    """The evaluation's settings from a config's `eval` (and `elm`) sections."""
    e = config.eval
    return EvalSettings(
        conditions=tuple(e.conditions),
        max_examples_per_task=e.max_examples_per_task,
        chat=config.elm.chat,
        tokens_per_slot=config.elm.adapter.num_tokens,
        user_text=e.user_text,
        max_ranked_users=e.max_ranked_users,
        ranked_items=e.ranked_items,
        chunk_size=e.chunk_size,
        n_resamples=e.n_resamples,
        seed=config.seed,
    )


def sampling_from_config(config: Any) -> SamplingConfig:
    e = config.eval
    return SamplingConfig(e.max_new_tokens, e.temperature, e.top_k, e.top_p, e.quant)


def _slot_vectors(catalog: Catalog, task: Task, ex: Example, condition: str, rng: np.random.Generator):
    table = catalog.table(task.entity)
    out = []
    for slot, row in zip(task.slots, ex.rows, strict=True):
        matrix = table.embeddings[task.spaces[slot]]
        if condition == "elm":
            out.append(matrix[row])
        elif condition == "zero":
            out.append(np.zeros(matrix.shape[1], np.float32))
        else:
            out.append((matrix.mean(0) + matrix.std(0) * rng.standard_normal(matrix.shape[1])).astype(np.float32))
    return tuple(out)


def user_texts(catalog: Catalog, mode: str) -> list[str]:
    """What the movie ranker compares a generated movie text against, per user."""
    if mode == "profile":
        if catalog.users.texts is None:
            raise ValueError("user_text='profile' needs ground-truth user profile texts in the catalog")
        return list(catalog.users.texts)
    return [user_ratings_text(catalog, u) for u in range(len(catalog.users))]


class _Scorer:
    """Per-example metrics of embedded generations against the ground truth of given examples."""

    def __init__(self, catalog: Catalog, settings: EvalSettings, user_embeddings: np.ndarray):
        self.catalog, self.settings, self.user_embeddings = catalog, settings, user_embeddings
        self.ratings = catalog.ratings.tocsc()

    def semantic(self, task: Task, truth: Sequence[Example], text_emb: np.ndarray) -> np.ndarray | None:
        if set(task.spaces.values()) != {self.settings.semantic_space}:
            return None
        matrix = self.catalog.table(task.entity).embeddings[self.settings.semantic_space]
        refs = np.stack([matrix[list(ex.rows)].mean(0) for ex in truth])
        return metrics.semantic_consistency(text_emb, refs)

    def behavioral(self, task: Task, truth: Sequence[Example], text_emb: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.settings.seed)
        out = np.full(len(truth), np.nan)
        for i, ex in enumerate(truth):
            if task.entity == "user":
                out[i] = self._user_bc(ex.rows[0], text_emb[i], rng)
            else:
                out[i] = self._movie_bc(ex.rows, text_emb[i], rng)
        return out

    def _movie_bc(self, movies: tuple[int, ...], text: np.ndarray, rng: np.random.Generator) -> float:
        cols = self.ratings[:, list(movies)]
        raters = np.unique(cols.indices)
        if len(raters) < 2:
            return np.nan
        raters = rng.permutation(raters)[: self.settings.max_ranked_users]
        rated = cols[raters].tocsr()  # a rater of a pair may have rated one of its movies: average what they rated
        ratings = np.asarray(rated.sum(axis=1)).ravel() / np.diff(rated.indptr)
        sims = metrics.cosine_matrix(text[None], self.user_embeddings[raters])[0]
        return float(metrics.spearman(sims, ratings))

    def _user_bc(self, user: int, text: np.ndarray, rng: np.random.Generator) -> float:
        row = self.catalog.ratings.getrow(user)
        n = self.settings.ranked_items
        rated = rng.permutation(row.indices)[: n // 2]
        unrated = np.setdiff1d(np.arange(len(self.catalog.movies)), row.indices)
        items = np.concatenate([rated, rng.permutation(unrated)[: n - len(rated)]]).astype(np.int64)
        relevance = np.asarray(row[:, items].todense()).ravel()
        item_emb = self.catalog.movies.embeddings[self.settings.semantic_space][items]
        return float(metrics.ndcg(metrics.cosine_matrix(text[None], item_emb)[0], relevance))

    def retrieval(self, task: Task, truth: Sequence[Example], text_emb: np.ndarray) -> np.ndarray | None:
        if task.pairing != "none":
            return None
        test = np.asarray(self.catalog.test[task.entity])
        if task.entity == "user":
            candidates = self.user_embeddings[test]
        else:
            candidates = self.catalog.movies.embeddings[self.settings.semantic_space][test]
        position = {int(r): i for i, r in enumerate(test)}
        return metrics.retrieval_ranks(text_emb, candidates, np.array([position[ex.rows[0]] for ex in truth]))

    def score(self, task: Task, truth: Sequence[Example], text_emb: np.ndarray) -> dict[str, np.ndarray]:
        out = {"bc": self.behavioral(task, truth, text_emb)}
        sc, ranks = self.semantic(task, truth, text_emb), self.retrieval(task, truth, text_emb)
        if sc is not None:
            out["sc"] = sc
        if ranks is not None:
            out["rank"] = ranks
        return out


def _summarise(per_example: dict[str, np.ndarray], settings: EvalSettings) -> dict[str, Any]:
    kw = dict(n_resamples=settings.n_resamples, confidence=settings.confidence, seed=settings.seed)
    ranks = per_example.get("rank")
    out = metrics.summarise({k: v for k, v in per_example.items() if k != "rank"}, **kw)
    if ranks is not None:
        out.update(metrics.retrieval_summary(ranks, **kw))
    return out


def evaluate(
    catalog: Catalog,
    tasks: Sequence[Task],
    settings: EvalSettings,
    elm_generate: Generator,
    text_generate: TextGenerator,
    encode: Encoder,
    tokenizer,
    workdir: str | pathlib.Path,
    model: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs every (task, condition), writes generations.jsonl and metrics.json into `workdir`, returns metrics.

    `model` describes what generates (LLM, trained stages and their steps, sampling): it is recorded in
    metrics.json and is part of every generation chunk's key with the catalogue's content, each task's
    templates and spaces and the prompt settings, so a retrained ELM, another sampling setting, re-prepared
    data or an edited task never reuses generations kept from an earlier run.
    """
    workdir = pathlib.Path(workdir)
    model = dict(model or {})
    context = [model, fingerprint(catalog), settings.chat, settings.tokens_per_slot]
    identity = {
        t.name: hashlib.sha1(
            json.dumps([*context, dataclasses.asdict(t)], sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        for t in tasks
    }
    chunks_dir = workdir / "generation_chunks"
    examples = {
        t.name: build_examples(catalog, t, "test", settings.max_examples_per_task, settings.seed) for t in tasks
    }
    plan = [(t, c) for t in tasks for c in settings.conditions]
    total = sum(len(examples[t.name]) for t, _ in plan)
    texts: dict[tuple[str, str], list[str]] = {}
    with tqdm(total=total, desc="generating", unit="text", disable=None) as bar:
        for task, condition in plan:
            exs = examples[task.name]
            keys = [f"{identity[task.name]}|{task.name}|{condition}|{settings.seed}|{ex.rows}" for ex in exs]
            fn = functools.partial(
                _generate_chunk, catalog, task, condition, settings, elm_generate, text_generate, tokenizer
            )
            texts[task.name, condition] = map_in_chunks(
                exs, keys, fn, chunks_dir / task.name / condition, settings.chunk_size, bar.update
            )

    logging.info("embedding %d generations", total)
    keys = list(texts)
    flat = [t for k in keys for t in texts[k]]
    embedded = encode(flat) if flat else np.zeros((0, 0), np.float32)
    emb, offset = {}, 0
    for k in keys:
        emb[k], offset = embedded[offset : offset + len(texts[k])], offset + len(texts[k])

    scorer = _Scorer(catalog, settings, encode(user_texts(catalog, settings.user_text)))
    results: dict[str, Any] = {}
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}
    for task in tasks:
        exs = examples[task.name]
        per_condition = {c: scorer.score(task, exs, emb[task.name, c]) for c in settings.conditions}
        if "elm" in settings.conditions and len(exs) > 1:
            perm = metrics.shuffled_control(np.array([ex.rows for ex in exs]), seed=settings.seed)
            per_condition["shuffled"] = scorer.score(task, [exs[i] for i in perm], emb[task.name, "elm"])
        results[task.name] = {c: _summarise(v, settings) for c, v in per_condition.items()}
        for c, values in per_condition.items():
            group = pooled.setdefault(f"{task.group}/{c}", {})
            for metric, v in values.items():
                group.setdefault(metric, []).append(v)
    overall = {key: _summarise({m: np.concatenate(v) for m, v in ms.items()}, settings) for key, ms in pooled.items()}
    report = {"tasks": results, "overall": overall, "settings": dataclasses.asdict(settings), "model": model}
    rows = [
        {
            "task": t.name,
            "condition": c,
            "entities": [str(catalog.table(t.entity).ids[r]) for r in ex.rows],
            "text": text,
        }
        for t, c in plan
        for ex, text in zip(examples[t.name], texts[t.name, c], strict=True)
    ]
    atomic_write_jsonl(workdir / "generations.jsonl", rows)
    atomic_write_json(workdir / "metrics.json", report)
    return report


def _generate_chunk(catalog, task, condition, settings, elm_generate, text_generate, tokenizer, chunk):
    if condition == "text":
        return text_generate([teacher_prompt(catalog, task, ex, "test") for ex in chunk])
    rng = np.random.default_rng([*task_seed(settings.seed, task.name), *chunk[0].rows])
    prompt = encode_prompt(tokenizer, task.template, settings.tokens_per_slot, settings.chat)
    spaces = tuple(task.spaces[s] for s in task.slots)
    queries = [Query(prompt, _slot_vectors(catalog, task, ex, condition, rng), spaces) for ex in chunk]
    return elm_generate(queries)


def format_overall(report: dict[str, Any]) -> str:
    """A markdown table of the pooled metrics: one row per (task group, condition)."""
    metrics_shown = ("sc", "bc", "recall@1", "recall@10", "mean_rank")
    lines = ["| group/condition | " + " | ".join(metrics_shown) + " |", "|---" * (len(metrics_shown) + 1) + "|"]
    for key, stats in report["overall"].items():
        cells = []
        for m in metrics_shown:
            s = stats.get(m)
            cells.append(
                "" if s is None or s["mean"] is None else f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
