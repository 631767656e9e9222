"""The paper's experiments as one report: Table 2 and Figs. 3-5 of §4, on whatever data and model were trained.

    workdir/report/report.json   every number the report shows, with its 95% bootstrap interval
    workdir/report/report.html   the same, self-contained (figures as base64 PNG; `report_render.py`)
    workdir/report/generations/  generations per experiment, batch of requests and chunk: a rerun resumes

Sections and what they measure:

  Table 2   per-task SC and BC of the ELM, its controls and the text-only baseline, read from eval/metrics.json
            (the `evaluate` job, run first when missing, older than the checkpoints or made with other settings),
            beside the paper's numbers.
  Fig. 3    interpolation with a fixed anchor movie at alpha = 0.5, w = (1 - alpha) w_movie + alpha w_anchor,
            for movies of `report.split` (the paper: training movies with Forrest Gump), ELM vs the text-only
            LLM asked about "the movie that lies halfway between" the two titles; users: random pairs mixed half
            and half, ELM vs the text-only LLM asked to interpolate the two users' liked/disliked lists (App. F's
            zero-shot user prompt).
  Fig. 4    SC vs alpha for the same interpolation and for moves along semantic CAVs, w + alpha * gap * v.
  Fig. 5    user BC vs alpha along behavioral CAVs, with two references on the unmoved users: a random ranking,
            and the ground-truth profile (the user-profile target the ELM was trained towards).
  Examples  a few evaluation generations per task with their inputs named, and from each experiment above.
  Map       PCA of the semantic movie space with one interpolation path, the vectors along it, where their
            decoded texts land when re-embedded, and the texts.

Hypothetical vectors are built and scored as `elm_jax.query.Talker` does, so the report and the query job agree:
SC is the cosine of the encoded text with the vector the ELM was given; user BC is the NDCG@k of all movies ranked
by similarity to the text, graded by the CF-predicted ratings of the given user vector (the paper's "predicted CF
model ratings" for Fig. 5; used for Fig. 3's mixed users too, which have no ratings of their own). Generation
is batched across all requests of an experiment and kept per chunk on disk, which Talker's one-call-per-target
API does not do.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from elm_jax.data import cavs as cavs_lib
from elm_jax.data.catalog import Catalog
from elm_jax.data.examples import split_rows, user_ratings_text
from elm_jax.data.prompts import SLOT, Query, encode_prompt
from elm_jax.data.tasks import Task
from elm_jax.eval import metrics, pipeline
from elm_jax.eval.pipeline import TextGenerator
from elm_jax.generate import generate_elm_text
from elm_jax.io_utils import atomic_write_text
from elm_jax.resumable import map_in_chunks

if TYPE_CHECKING:
    from elm_jax.query import Talker

PAPER_SETUP = (
    "Paper: ELM fine-tuned from PaLM 2-XS on MovieLens 25M with PaLM 2-L targets and a Sentence-T5-like encoder "
    "(Tennenholtz et al., ICLR 2024). A different model, data and encoder: shown for the layout, not comparable."
)
# Table 2 of the paper: (SC cosine, BC Spearman) per task.
PAPER_TABLE2: dict[str, tuple[float, float]] = {
    "summary": (0.91, 0.94),
    "positive_review": (0.94, 0.81),
    "negative_review": (0.93, 0.79),
    "neutral_review": (0.92, 0.76),
    "five_pos_char": (0.91, 0.80),
    "five_neg_char": (0.89, 0.80),
    "long_description": (0.91, 0.80),
    "funnier": (0.88, 0.81),
    "sadder": (0.91, 0.82),
    "scarier": (0.90, 0.84),
    "improve": (0.91, 0.82),
    "movie_to_viewer": (0.89, 0.80),
    "pitch": (0.96, 0.80),
    "criticize": (0.89, 0.77),
    "convince1": (0.92, 0.96),
    "convince2": (0.90, 0.88),
    "convince3": (0.88, 0.86),
    "dissuade1": (0.88, 0.85),
    "dissuade2": (0.88, 0.87),
    "similarities": (0.86, 0.83),
    "interpolation": (0.89, 0.80),
    "why_like_nn": (0.83, 0.48),
    "diff_than_nn": (0.82, 0.48),
    "common_with_nn": (0.77, 0.46),
}
# Fig. 3, read off the bars (about +-0.01): movie tasks SC, user profile BC (NDCG).
PAPER_FIG3_MODELS = ("ELM (PaLM 2-XS)", "PaLM 2-L, text only", "GPT-4, text only")
PAPER_FIG3: dict[str, tuple[float, float, float]] = {
    "summary": (0.97, 0.87, 0.73),
    "positive_review": (0.93, 0.83, 0.60),
    "negative_review": (0.96, 0.77, 0.81),
    "neutral_review": (0.91, 0.89, 0.69),
    "five_pos_char": (0.87, 0.66, 0.53),
    "long_description": (0.88, 0.55, 0.69),
    "pitch": (0.91, 0.71, 0.61),
    "user_profile": (0.57, 0.45, 0.46),
}
# Fig. 5's dotted references, read off the plot.
PAPER_FIG5 = {"random": 0.305, "ground_truth": 0.487}
PAPER_ANCHOR = "Forrest Gump (1994)"
INTERPOLATED_MOVIE = "that lies halfway between the movies {a} and {b}"  # fills the text-only prompt's {movie}
USER_INTERPOLATION_PROMPT = (  # App. F's zero-shot prompt for the text-only baselines
    "In ten bullet points, generate an interpolation of the following two user profiles: "
    "User profile 1: {a} User profile 2: {b}"
)
RANDOM_DRAWS = 100  # random rankings averaged per user for Fig. 5's chance reference
Estimate = dict[str, Any]  # metrics.summarise's {"mean", "ci_low", "ci_high", "n", "n_dropped"}


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """What the experiments run on; the defaults are the paper's tasks and alphas (configs trim them for a CPU)."""

    anchor: str = ""  # movie id or title; "" picks PAPER_ANCHOR if present, else the most-rated test movie
    split: str = "train"  # whose movies and users are interpolated and moved
    n_movies: int = 8
    n_users: int = 8
    interpolation_tasks: tuple[str, ...] = tuple(t for t in PAPER_FIG3 if t != "user_profile")
    sweep_tasks: tuple[str, ...] = ("five_pos_char", "long_description")
    alphas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    user_alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    movie_concepts: tuple[str, ...] = ()  # () picks the n_movie_concepts most accurate CAVs
    n_movie_concepts: int = 4
    user_concepts: tuple[str, ...] = ()
    n_user_concepts: int = 6
    min_cav_accuracy: float = 0.6  # automatic picks need at least this held-out accuracy (0.5 is chance)
    n_examples: int = 3
    map_task: str = "summary"
    map_points: int = 5
    n_resamples: int = 1000
    confidence: float = 0.95
    chunk_size: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.split not in ("train", "test"):
            raise ValueError(f"report.split must be 'train' or 'test', got {self.split!r}")
        for name, least in (("n_movies", 1), ("n_users", 1), ("map_points", 2)):
            if getattr(self, name) < least:
                raise ValueError(f"report.{name} must be at least {least}, got {getattr(self, name)}")
        if not self.alphas or not self.user_alphas:
            raise ValueError("report.alphas and report.user_alphas need at least one value")


@dataclasses.dataclass
class Tools:
    """A loaded ELM for the report: `talker` generates and scores, `text_generate` is the text-only baseline."""

    talker: Talker  # the ELM, its text encoder, CAVs and task registry
    text_generate: TextGenerator
    targets: Mapping[tuple[str, tuple[str, ...]], str]  # (task, entity ids) -> training/test target text
    identity: str  # keys saved generations to the model and settings that made them


def _request_digest(task: Task, vectors: Sequence[np.ndarray]) -> str:
    h = hashlib.sha1(json.dumps(dataclasses.asdict(task), sort_keys=True).encode())
    for v in vectors:
        h.update(np.ascontiguousarray(v, np.float32).tobytes())
    return h.hexdigest()[:16]


class _Generations:
    """Generates each distinct request once per run, batched across an experiment and resumable on disk."""

    def __init__(self, tools: Tools, folder: pathlib.Path, chunk_size: int):
        self.tools, self.folder, self.chunk_size = tools, folder, chunk_size
        self.texts: dict[str, str] = {}
        self._prompts: dict[str, Any] = {}

    def _query(self, task: Task, vectors: Sequence[np.ndarray]) -> Query:
        if task.name not in self._prompts:
            elm, s = self.tools.talker.elm, self.tools.talker.settings
            slots = elm.model.config.tokens_per_slot
            self._prompts[task.name] = encode_prompt(elm.llm.tokenizer, task.template, slots, s.chat)
        spaces = tuple(task.spaces[s] for s in task.slots)
        return Query(self._prompts[task.name], tuple(np.asarray(v, np.float32) for v in vectors), spaces)

    def elm(self, experiment: str, requests: Sequence[tuple[str, Task, Sequence[np.ndarray]]]) -> list[str]:
        """ELM texts for (key, task, slot vectors) requests; equal keys must mean equal requests in one run, and
        across runs the task and the vectors themselves are keyed too (re-learned CAVs, an edited template)."""
        items = [(f"elm|{k}|{_request_digest(task, v)}", (task, v)) for k, task, v in requests]
        return self._run(experiment, items, self._elm_chunk)

    def text(self, experiment: str, prompts: Sequence[str]) -> list[str]:
        """The text-only LLM's answers to plain prompts."""
        return self._run(experiment, [(f"text|{p}", p) for p in prompts], self.tools.text_generate)

    def _elm_chunk(self, chunk: Sequence[tuple[Task, Sequence[np.ndarray]]]) -> list[str]:
        elm, s = self.tools.talker.elm, self.tools.talker.settings
        queries = [self._query(task, v) for task, v in chunk]
        return generate_elm_text(
            elm.model, elm.params, elm.llm.tokenizer, queries, s.sampling, seed=s.seed, batch_size=s.batch_size
        )

    def _run(self, experiment: str, items: Sequence[tuple[str, Any]], fn: Callable) -> list[str]:
        todo = {k: item for k, item in items if k not in self.texts}
        if todo:
            keys = [f"{self.tools.identity}|{self.tools.talker.settings.seed}|{k}" for k in todo]
            folder = self.folder / experiment / hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]
            with tqdm(total=len(todo), desc=f"report: {experiment}", unit="text", disable=None) as bar:
                texts = map_in_chunks(list(todo.values()), keys, fn, folder, self.chunk_size, bar.update)
            self.texts.update(zip(todo, texts, strict=True))
        return [self.texts[k] for k, _ in items]


class _Experiments:
    """The report's experiments on one ELM; each public method returns its JSON-ready section."""

    def __init__(self, tools: Tools, settings: ReportSettings, folder: pathlib.Path):
        self.tools, self.s = tools, settings
        self.talker = tools.talker
        self.catalog: Catalog = self.talker.elm.catalog
        self.gen = _Generations(tools, folder, settings.chunk_size)
        self.semantic = self.talker.settings.semantic_space
        trained = self.talker.elm.tasks
        self.movie_tasks = {
            t.name: t
            for t in trained
            if t.entity == "movie" and t.pairing == "none" and set(t.spaces.values()) == {self.semantic}
        }
        self.user_task = next((t for t in trained if t.entity == "user" and len(t.slots) == 1), None)
        self.user_space = self.user_task.spaces[self.user_task.slots[0]] if self.user_task else None
        rng = np.random.default_rng(settings.seed)
        self.anchor = self._anchor()
        pool = split_rows(self.catalog, "movie", settings.split)
        self.movies = [int(r) for r in rng.permutation(pool[pool != self.anchor])[: settings.n_movies]]
        self.users = self._users(rng)

    # Shared pieces.

    def estimate(self, values: Sequence[float]) -> Estimate:
        s = self.s
        out = metrics.summarise(
            {"v": np.asarray(values, np.float64)}, n_resamples=s.n_resamples, confidence=s.confidence, seed=s.seed
        )
        return out["v"]

    def name(self, kind: str, row: int) -> str:
        return self.catalog.table(kind).names[row]

    def _anchor(self) -> int:
        movies = self.catalog.movies
        wanted = self.s.anchor or PAPER_ANCHOR
        for row, (movie_id, title) in enumerate(zip(movies.ids.tolist(), movies.names, strict=True)):
            if wanted in (str(movie_id), title):
                return row
        if self.s.anchor:
            raise ValueError(f"report.anchor={self.s.anchor!r} is neither a movie id nor a title of the catalogue")
        test = np.asarray(self.catalog.test["movie"])
        counts = np.diff(self.catalog.ratings.tocsc().indptr)[test]
        return int(test[np.argmax(counts)])

    def _users(self, rng: np.random.Generator) -> list[int]:
        """Users of the split, those with a ground-truth profile first (Fig. 5's reference needs them)."""
        if self.user_task is None:
            return []
        pool = [int(u) for u in rng.permutation(split_rows(self.catalog, "user", self.s.split))]
        has_target = {u: self.profile_target(u) is not None for u in pool}
        return sorted(pool, key=lambda u: not has_target[u])[: 2 * self.s.n_users]  # stable: keeps the shuffle

    def profile_target(self, user: int) -> str | None:
        return self.tools.targets.get((self.user_task.name, (str(self.catalog.users.ids[user]),)))

    def sc(self, texts: Sequence[str], given: np.ndarray) -> np.ndarray:
        return self.talker.consistency("movie", self.semantic, np.asarray(given, np.float64), texts)[1]

    def user_bc(self, texts: Sequence[str], given: np.ndarray) -> np.ndarray:
        return self.talker.consistency("user", self.user_space, np.asarray(given, np.float64), texts)[1]

    def interpolate(self, alpha: float, movies: Sequence[int] | None = None) -> np.ndarray:
        m = self.catalog.movies.embeddings[self.semantic]
        return (1 - alpha) * m[self.movies if movies is None else list(movies)] + alpha * m[self.anchor]

    def concepts(self, space: str, named: Sequence[str], n: int, field: str) -> list[cavs_lib.CAV]:
        available = self.talker.cavs.get(space, {})
        if named:
            unknown = [c for c in named if c not in available]
            if unknown:
                raise ValueError(
                    f"report.{field}: no CAV for {unknown} in the {space!r} space; "
                    f"learned ones: {', '.join(sorted(available)) or 'none'}"
                )
            return [available[c] for c in named]
        good = [c for c in available.values() if c.accuracy >= self.s.min_cav_accuracy]
        return sorted(good, key=lambda c: (-c.accuracy, c.concept))[:n]

    def interpolation_requests(
        self, task: Task, alpha: float, movies: Sequence[int] | None = None
    ) -> list[tuple[str, Task, list[np.ndarray]]]:
        movies = self.movies if movies is None else list(movies)
        ids = self.catalog.movies.ids
        return [
            (f"{task.name}|interp|{ids[m]}|{ids[self.anchor]}|{alpha:g}", task, [v])
            for m, v in zip(movies, self.interpolate(alpha, movies), strict=True)
        ]

    # Fig. 3.

    def fig3(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "alpha": 0.5,
            "anchor": self.name("movie", self.anchor),
            "movies": [self.name("movie", m) for m in self.movies],
            "not_trained": [n for n in self.s.interpolation_tasks if n not in self.movie_tasks],
            "tasks": {},
            "examples": [],
        }
        given = self.interpolate(0.5)
        for name in [n for n in self.s.interpolation_tasks if n in self.movie_tasks]:
            task = self.movie_tasks[name]
            elm = self.gen.elm("fig3", self.interpolation_requests(task, 0.5))
            halfway = [INTERPOLATED_MOVIE.format(a=self.name("movie", m), b=out["anchor"]) for m in self.movies]
            prompts = [SLOT.sub(lambda _, h=h: h, task.teacher_template) for h in halfway]
            text = self.gen.text("fig3_text", prompts)
            inputs = [out["movies"][0], out["anchor"]]
            scores = self.sc(elm, given), self.sc(text, given)
            out["tasks"][name] = self._fig3_row(name, inputs, "sc", (elm, text), scores, prompts, out["examples"])
        if self.user_task is not None and len(self.users) >= 2:
            out["tasks"][self.user_task.name] = self._fig3_users(out["examples"])
        return out

    def _fig3_users(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = [(self.users[i], self.users[i + 1]) for i in range(0, len(self.users) - 1, 2)]
        u = self.catalog.users.embeddings[self.user_space]
        ids = self.catalog.users.ids
        mixed = np.stack([0.5 * (u[a] + u[b]) for a, b in pairs])
        task = self.user_task
        requests = [(f"{task.name}|mix|{ids[a]}|{ids[b]}", task, [v]) for (a, b), v in zip(pairs, mixed, strict=True)]
        elm = self.gen.elm("fig3", requests)
        prompts = [
            USER_INTERPOLATION_PROMPT.format(a=user_ratings_text(self.catalog, a), b=user_ratings_text(self.catalog, b))
            for a, b in pairs
        ]
        text = self.gen.text("fig3_text", prompts)
        inputs = [self.name("user", pairs[0][0]), self.name("user", pairs[0][1])]
        scores = self.user_bc(elm, mixed), self.user_bc(text, mixed)
        return self._fig3_row(task.name, inputs, "bc", (elm, text), scores, prompts, examples)

    def _fig3_row(
        self,
        task: str,
        inputs: list[str],
        metric: str,
        texts: tuple[list[str], list[str]],
        scores: tuple[np.ndarray, np.ndarray],
        prompts: list[str],
        examples: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """One task's ELM-vs-text estimates; its first pair (`inputs`) goes to `examples` with both texts."""
        (elm, text), (elm_scores, text_scores) = texts, scores
        examples.append(
            {
                "task": task,
                "inputs": inputs,
                "alpha": 0.5,
                "elm": elm[0],
                f"elm_{metric}": float(elm_scores[0]),
                "text_prompt": prompts[0],
                "text": text[0],
                f"text_{metric}": float(text_scores[0]),
            }
        )
        return {"metric": metric, "elm": self.estimate(elm_scores), "text": self.estimate(text_scores)}

    # Fig. 4.

    def fig4(self) -> dict[str, Any]:
        concepts = self.concepts(self.semantic, self.s.movie_concepts, self.s.n_movie_concepts, "movie_concepts")
        out: dict[str, Any] = {
            "alphas": list(self.s.alphas),
            "anchor": self.name("movie", self.anchor),
            "concepts": _concept_info(concepts),
            "spread": _spread(self.catalog.movies.embeddings[self.semantic]),
            "not_trained": [n for n in self.s.sweep_tasks if n not in self.movie_tasks],
            "tasks": {},
            "examples": [],
        }
        ids = self.catalog.movies.ids
        base = self.catalog.movies.embeddings[self.semantic][self.movies]
        for name in [n for n in self.s.sweep_tasks if n in self.movie_tasks]:
            task = self.movie_tasks[name]
            groups = []  # (series, keys, vectors) per point, all generated in one batched call
            for alpha in self.s.alphas:
                keys, _, vectors = zip(*self.interpolation_requests(task, alpha), strict=True)
                groups.append(("interpolation", list(keys), np.stack([v for (v,) in vectors])))
            for cav in concepts:
                for alpha in self.s.alphas:
                    keys = [f"{name}|cav|{cav.space}|{cav.concept}|{ids[m]}|{alpha:g}" for m in self.movies]
                    groups.append((f"cav:{cav.concept}", keys, cavs_lib.move(base, cav, alpha)))
            lines: dict[str, list[Estimate]] = {}
            for (series, _, vectors), texts in zip(groups, self._grid("fig4", task, groups), strict=True):
                scores = self.sc(texts, vectors)
                lines.setdefault(series, []).append(self.estimate(scores))
                if series != "interpolation" and len(lines[series]) == len(self.s.alphas):
                    out["examples"].append(  # the first movie at the last alpha, the farthest move
                        {
                            "task": name,
                            "inputs": [self.name("movie", self.movies[0])],
                            "concept": series.split(":", 1)[1],
                            "alpha": self.s.alphas[-1],
                            "elm": texts[0],
                            "elm_sc": float(scores[0]),
                        }
                    )
            out["tasks"][name] = lines
        return out

    def _grid(
        self, experiment: str, task: Task, groups: Sequence[tuple[str, list[str], np.ndarray]]
    ) -> list[list[str]]:
        """Texts for groups of (series, keys, vectors), generated in one batched call and split back per group."""
        flat = [(k, task, [v]) for _, keys, vectors in groups for k, v in zip(keys, vectors, strict=True)]
        texts = self.gen.elm(experiment, flat)
        bounds = np.cumsum([0] + [len(keys) for _, keys, _ in groups])
        return [texts[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    # Fig. 5.

    def fig5(self) -> dict[str, Any]:
        if self.user_task is None:
            return {"skipped": "the ELM was not trained on a user task"}
        task, space = self.user_task, self.user_space
        concepts = self.concepts(space, self.s.user_concepts, self.s.n_user_concepts, "user_concepts")
        users = self.users[: self.s.n_users]
        ids = self.catalog.users.ids
        base = self.catalog.users.embeddings[space][users]
        out: dict[str, Any] = {
            "alphas": list(self.s.user_alphas),
            "users": [self.name("user", u) for u in users],
            "concepts": _concept_info(concepts),
            "spread": _spread(self.catalog.users.embeddings[space]),
            "ndcg_k": self.talker.settings.ndcg_k,  # 0: all movies
            "lines": {},
            "examples": [],
        }
        groups = []
        for cav in concepts:
            for alpha in self.s.user_alphas:
                tag = "unmoved" if alpha == 0 else f"{cav.concept}|{alpha:g}"  # alpha 0: one text for all concepts
                keys = [f"{task.name}|cav|{space}|{tag}|{ids[u]}" for u in users]
                groups.append((cav.concept, keys, cavs_lib.move(base, cav, alpha)))
        for (concept, _, vectors), texts in zip(groups, self._grid("fig5", task, groups), strict=True):
            scores = self.user_bc(texts, vectors)
            out["lines"].setdefault(concept, []).append(self.estimate(scores))
            if len(out["lines"][concept]) == len(self.s.user_alphas):
                out["examples"].append(
                    {
                        "task": task.name,
                        "inputs": [out["users"][0]],
                        "concept": concept,
                        "alpha": self.s.user_alphas[-1],
                        "elm": texts[0],
                        "elm_bc": float(scores[0]),
                    }
                )
        out["random"] = self.estimate(self._random_bc(base))
        truth = [(i, t) for i, t in enumerate(self.profile_target(u) for u in users) if t is not None]
        if truth:
            rows = [i for i, _ in truth]
            out["ground_truth"] = self.estimate(self.user_bc([t for _, t in truth], base[rows]))
        else:
            out["ground_truth_missing"] = "no user-profile targets for these users in workdir/targets"
        return out

    def _random_bc(self, vectors: np.ndarray) -> np.ndarray:
        """Per user, the mean NDCG@k of random orderings of all movies against the user's predicted ratings."""
        factors = self.catalog.movies.embeddings[self.user_space].astype(np.float64)
        rng = np.random.default_rng(self.s.seed)
        k = self.talker.settings.ndcg_cutoff
        out = []
        for v in vectors:
            relevance = np.broadcast_to(np.clip(factors @ v, 0.0, None), (RANDOM_DRAWS, len(factors)))
            out.append(np.nanmean(metrics.ndcg_rows(rng.random(relevance.shape), relevance, k=k)))
        return np.asarray(out)

    # The map.

    def semantic_map(self) -> dict[str, Any]:
        task = self.movie_tasks.get(self.s.map_task) or next(iter(self.movie_tasks.values()), None)
        if task is None or not self.movies:
            return {"skipped": "the ELM was not trained on a single-movie semantic task"}
        alphas = np.linspace(0.0, 1.0, self.s.map_points)
        start = self.movies[0]
        requests = [self.interpolation_requests(task, float(a), [start])[0] for a in alphas]
        path = np.stack([v for _, _, (v,) in requests])
        texts = self.gen.elm("map", requests)
        m = self.catalog.movies.embeddings[self.semantic]
        mean, basis = _pca_basis(_unit(m))

        def project(x: np.ndarray) -> list[list[float]]:
            return ((_unit(x) - mean) @ basis).round(5).tolist()

        text_xy = project(self.talker.encode(texts))
        return {
            "task": task.name,
            "start": self.name("movie", start),
            "anchor": self.name("movie", self.anchor),
            "movies": project(m),
            "endpoints_xy": project(m[[start, self.anchor]]),
            "path": [
                {"alpha": float(a), "xy": xy, "text_xy": txy, "text": t, "sc": float(s)}
                for a, xy, txy, t, s in zip(alphas, project(path), text_xy, texts, self.sc(texts, path), strict=True)
            ],
        }


def _concept_info(concepts: Sequence[cavs_lib.CAV]) -> dict[str, dict[str, float]]:
    """Per concept: held-out accuracy, tagged movies, and `gap`, how far alpha = 1 moves a vector."""
    return {c.concept: {"accuracy": c.accuracy, "n_positive": c.n_positive, "gap": c.gap} for c in concepts}


def _spread(x: np.ndarray) -> float:
    """Median distance of a space's vectors from their centroid: the scale a CAV gap is judged against."""
    return float(np.median(np.linalg.norm(x - x.mean(0), axis=1)))


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: SC is a cosine, so the map shows directions."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _pca_basis(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2].T


def table2(metrics_report: Mapping[str, Any], order: Sequence[str] = ()) -> dict[str, Any]:
    """Table 2 from the evaluation's metrics.json: SC and BC per task and condition, pooled groups, paper values.

    Tasks come in the paper's order, then in `order` (the task registry's), then by name.
    """
    keep = ("sc", "bc")
    rank: dict[str, int] = {}
    for name in [*PAPER_TABLE2, *order]:
        rank.setdefault(name, len(rank))
    names = sorted(metrics_report["tasks"], key=lambda n: (rank.get(n, len(rank)), n))
    tasks = {
        name: {c: {m: stats[m] for m in keep if m in stats} for c, stats in metrics_report["tasks"][name].items()}
        for name in names
    }
    overall = {key: {m: stats[m] for m in keep if m in stats} for key, stats in metrics_report["overall"].items()}
    paper = {name: {"sc": v[0], "bc": v[1]} for name, v in PAPER_TABLE2.items() if name in tasks}
    return {"tasks": tasks, "overall": overall, "paper": paper, "settings": metrics_report.get("settings", {})}


def examples_from_eval(
    rows: Sequence[Mapping[str, Any]],
    catalog: Catalog,
    tasks: Mapping[str, Task],
    targets: Mapping[tuple[str, tuple[str, ...]], str],
    n: int,
) -> dict[str, list[dict[str, Any]]]:
    """Up to `n` evaluation examples per task: the inputs by name, each condition's text, and the target if known."""
    by_input: dict[str, dict[tuple[str, ...], dict[str, str]]] = {}
    for row in rows:
        by_input.setdefault(row["task"], {}).setdefault(tuple(row["entities"]), {})[row["condition"]] = row["text"]
    out = {}
    for name, inputs in by_input.items():
        table = catalog.table(tasks[name].entity)
        out[name] = [
            {
                "inputs": [table.names[table.row_of[e]] for e in entities],
                "texts": texts,
                "target": targets.get((name, entities)),
            }
            for entities, texts in list(inputs.items())[:n]
        ]
    return out


def read_targets(folder: pathlib.Path) -> dict[tuple[str, tuple[str, ...]], str]:
    """(task, entity ids) -> target text from the prepare job's train.jsonl and test.jsonl, when present."""
    out = {}
    for split in ("train", "test"):
        path = folder / f"{split}.jsonl"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    out[row["task"], tuple(str(e) for e in row["entities"])] = row["target"]
    return out


def build(
    tools: Tools,
    settings: ReportSettings,
    eval_metrics: Mapping[str, Any],
    eval_rows: Sequence[Mapping[str, Any]],
    folder: pathlib.Path,
    model: Mapping[str, Any],
) -> dict[str, Any]:
    """Every section's numbers and texts (report.json); generations are kept under `folder` for resumption."""
    exp = _Experiments(tools, settings, folder)
    catalog = tools.talker.elm.catalog
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": dict(model),
        "paper_setup": PAPER_SETUP,
        "settings": dataclasses.asdict(settings),
        "table2": table2(eval_metrics, list(tools.talker.tasks)),
        "fig3": exp.fig3()
        | {"paper": {k: dict(zip(PAPER_FIG3_MODELS, v, strict=True)) for k, v in PAPER_FIG3.items()}},
        "fig4": exp.fig4(),
        "fig5": exp.fig5() | {"paper": PAPER_FIG5},
        "examples": examples_from_eval(eval_rows, catalog, tools.talker.tasks, tools.targets, settings.n_examples),
        "map": exp.semantic_map(),
    }


def settings_from_config(config: Any) -> ReportSettings:
    r, e = config.report, config.eval
    return ReportSettings(
        anchor=r.anchor,
        split=r.split,
        n_movies=r.n_movies,
        n_users=r.n_users,
        interpolation_tasks=tuple(r.interpolation_tasks),
        sweep_tasks=tuple(r.sweep_tasks),
        alphas=tuple(float(a) for a in r.alphas),
        user_alphas=tuple(float(a) for a in r.user_alphas),
        movie_concepts=tuple(r.movie_concepts),
        n_movie_concepts=r.n_movie_concepts,
        user_concepts=tuple(r.user_concepts),
        n_user_concepts=r.n_user_concepts,
        min_cav_accuracy=r.min_cav_accuracy,
        n_examples=r.n_examples,
        map_task=r.map_task,
        map_points=r.map_points,
        n_resamples=e.n_resamples,
        chunk_size=e.chunk_size,
        seed=config.seed,
    )


def needs_evaluation(config: Any, workdir: pathlib.Path) -> bool:
    """True when eval/metrics.json is missing, was made with other settings (LLM, prompts, sampling, tasks, the
    evaluation's own settings, untrained vs trained), or is older than a trained stage's checkpoints."""
    from elm_jax.data import tasks as tasks_lib
    from elm_jax.trained import generation_settings

    path = workdir / "eval" / "metrics.json"
    if not path.is_file():
        return True
    recorded = json.loads(path.read_text())
    e = config.eval
    want = generation_settings(config, pipeline.sampling_from_config(config), e.untrained)
    model = recorded.get("model", {})
    if any(model.get(k) != v for k, v in want.items()):
        return True
    settings = json.loads(json.dumps(dataclasses.asdict(pipeline.settings_from_config(config))))
    registry = tasks_lib.registry(tasks_lib.load_task_file(e.task_file) if e.task_file else ())
    tasks = [t.name for t in tasks_lib.select(list(e.tasks), registry)]
    if recorded.get("settings") != settings or sorted(recorded.get("tasks", {})) != sorted(tasks):
        return True
    if e.untrained:
        return False
    stamps = [p.stat().st_mtime for s in config.train.stages for p in (workdir / s / "checkpoints").glob("*")]
    return bool(stamps) and max(stamps) > path.stat().st_mtime


def run(config: Any, workdir: pathlib.Path) -> pathlib.Path:
    """Loads the ELM trained in `workdir` and writes report/report.json and report/report.html (needs eval/ first)."""
    import functools

    from elm_jax import sharding, trained
    from elm_jax.data import tasks as tasks_lib
    from elm_jax.encoder import TextEncoder
    from elm_jax.eval import report_render
    from elm_jax.generate import generate_text
    from elm_jax.query import QuerySettings, Talker

    settings = settings_from_config(config)  # bad report settings fail before anything loads
    eval_dir = workdir / "eval"
    eval_metrics = json.loads((eval_dir / "metrics.json").read_text())
    eval_rows = [json.loads(line) for line in (eval_dir / "generations.jsonl").read_text().splitlines() if line]

    mesh = sharding.make_mesh(config.mesh)
    encoder = TextEncoder.from_pretrained(config.encoder.checkpoint, mesh)
    elm = trained.load(config, workdir, mesh, encoder=encoder, untrained=config.eval.untrained)
    e = config.eval
    sampling = pipeline.sampling_from_config(config)
    space_cavs = {path.stem: cavs_lib.load_cavs(path) for path in sorted((workdir / "cavs").glob("*.npz"))}
    registry = tasks_lib.registry(tasks_lib.load_task_file(e.task_file) if e.task_file else ())
    query_settings = QuerySettings(
        sampling,
        chat=config.elm.chat,
        seed=config.seed,
        batch_size=config.report.batch_size,
        ndcg_k=config.report.ndcg_k,
    )
    identity = trained.generation_identity(config, elm, sampling, config.eval.untrained)
    model = {
        **identity,
        "encoder": config.encoder.checkpoint,
        "data": config.data.source,
        "targets": config.targets.source,
        "movies": len(elm.catalog.movies),
        "users": len(elm.catalog.users),
        "eval_metrics_written": datetime.datetime.fromtimestamp(
            (eval_dir / "metrics.json").stat().st_mtime, datetime.UTC
        ).isoformat(timespec="seconds"),
    }
    tools = Tools(
        talker=Talker(elm, encoder.encode, space_cavs, query_settings, registry),
        text_generate=functools.partial(
            generate_text,
            elm.llm.model,
            elm.llm.params,
            elm.llm.tokenizer,
            sampling=sampling,
            chat=config.elm.chat,
            seed=config.seed,
            batch_size=config.report.batch_size,
        ),
        targets=read_targets(workdir / "targets"),
        identity=json.dumps(identity, sort_keys=True),
    )
    out_dir = workdir / "report"
    report = build(tools, settings, eval_metrics, eval_rows, out_dir / "generations", model)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1) + "\n")  # in the page's order
    html = atomic_write_text(out_dir / "report.html", report_render.render(report))
    logging.info("wrote %s and %s", out_dir / "report.json", html)
    return html
