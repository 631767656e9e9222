"""Talking to embeddings (paper §4): ask a trained ELM about a vector, a walk between two, or a concept shift.

    describe     entities or raw vectors + a task or a free-form prompt with one {slot} -> texts
    interpolate  two entities (or vectors) and alphas -> texts about (1 - alpha) * a + alpha * b (Figs. 3-4)
    cav          an entity and a tag concept and alphas -> texts about w + alpha * gap * v_concept (Figs. 4-5)
    profile      user embeddings -> ten-bullet taste profiles (the user_profile task)
    compare      pairs of entities or vectors + a two-slot task or prompt -> texts (the paper's pair tasks)

Every text is scored against the very vector the ELM was given, so hypothetical points are graded like real ones
(a pair's text against the pair's mean vector, as the evaluation scores pair tasks):

    sc           vectors in the semantic space (the text encoder's): cosine of the encoded text with the vector
    bc_ndcg      user vectors: NDCG@k (settings.ndcg_k) of all movies ranked by cosine between the text and
                 their semantic embeddings, graded by the CF model's predicted ratings (user vector . item
                 factors, clipped at 0; the paper's Fig. 5 for CAV-shifted users). Predicted, not observed,
                 ratings, so that interpolated, moved and raw user vectors are scored like catalogue users.
    bc_spearman  movie vectors in another space (behavioral): Spearman over all users between the cosine of the
                 text with each user's likes/dislikes text and the CF model's predicted rating (user . movie)

A `Talker` holds one loaded ELM, the text encoder and the CAVs, and answers each call with one batched
generation and one batched encoding. Bad input (an unknown id or concept, a vector of the wrong size or with
NaN/Inf, an alpha outside a sane range, a prompt whose slots or space do not fit) raises ValueError naming the
argument before anything is generated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from elm_jax.data import tasks as tasks_lib
from elm_jax.data.cavs import CAV, load_cavs, move
from elm_jax.data.prompts import Query, encode_prompt, slot_names
from elm_jax.eval import metrics
from elm_jax.eval.pipeline import user_texts
from elm_jax.generate import SamplingConfig, generate_elm_text

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from elm_jax.trained import TrainedELM

KINDS = ("describe", "interpolate", "cav", "profile", "compare")
INTERPOLATION_RANGE = (-1.0, 2.0)  # beyond this an "interpolation" is a long extrapolation
CAV_LIMIT = 5.0  # |alpha| in CAV gaps: 1 moves a typical untagged item as far as a typical tagged one sits
DEFAULT_TASKS = {"movie": "summary", "user": "user_profile"}
DEFAULT_PAIR_TASK = "similarities"
METRICS = {
    "sc": "semantic consistency: cosine of the encoded text with the vector given to the ELM",
    "bc_ndcg": "behavioral consistency: NDCG@k of all movies ranked by similarity to the text, graded by the CF "
    "model's predicted ratings for the given user vector (clipped at 0)",
    "bc_spearman": "behavioral consistency: Spearman over users between the text's similarity to each user's "
    "likes/dislikes text and the CF model's predicted rating of the given movie vector",
}

Target = str | int | np.integer | Sequence[float] | np.ndarray  # an entity id (or exact name), or a raw vector
Encoder = Callable[[Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Answer:
    """One generated text with what it was asked about and how consistent it is with that vector."""

    query: str  # describe | interpolate | cav | profile | compare
    template: str  # the ELM prompt, with its {slot}
    entity_kind: str  # movie | user
    space: str  # the embedding space of the vector
    subject: str  # the vector in words, e.g. "A -> B, alpha 0.25"
    inputs: dict[str, Any]  # the same, structured: entity ids and names, alpha, concept
    text: str
    metric: str  # a key of METRICS
    consistency: float | None  # None where the metric is undefined (e.g. no positive predicted rating)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class QuerySettings:
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=128)
    chat: bool = True  # as the ELM was trained: prompts inside the LLM's chat template
    seed: int = 0
    batch_size: int = 8
    semantic_space: str = "semantic"  # the space the text encoder made: SC is defined there
    # bc_ndcg looks at the top ndcg_k movies of the text's ranking (0: all). Over all ~3k movies graded by
    # predicted ratings nearly any ranking scores ~0.77 (random 0.769, true profiles 0.784 on the default
    # catalogue); at 20, random 0.158 against 0.200.
    ndcg_k: int = 20

    def __post_init__(self):
        if self.ndcg_k < 0:
            raise ValueError(f"ndcg_k must be >= 0 (0: all movies), got {self.ndcg_k}")

    @property
    def ndcg_cutoff(self) -> int | None:
        """`ndcg_k` as the NDCG functions take it: None ranks all movies."""
        return self.ndcg_k or None


@dataclasses.dataclass(frozen=True)
class _Prompt:
    template: str
    entity_kind: str
    space: str


def check_alphas(alphas: float | Sequence[float], query: str, force: bool = False) -> list[float]:
    """Alphas as a list; refuses non-finite ones always and out-of-range ones unless `force`."""
    try:
        values = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"alphas: give one number or a list of numbers, got {alphas!r}") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"alphas: give one number or a list of numbers, got {alphas!r}")
    if not np.isfinite(values).all():
        raise ValueError(f"alphas: must be finite, got {values.tolist()}")
    lo, hi = INTERPOLATION_RANGE if query == "interpolate" else (-CAV_LIMIT, CAV_LIMIT)
    outside = values[(values < lo) | (values > hi)]
    if outside.size and not force:
        raise ValueError(
            f"alphas: {outside[0]:g} is outside [{lo:g}, {hi:g}] for {query}; pass force=True (query.force) to go there"
        )
    return values.tolist()


def load_vectors(path: str | os.PathLike) -> np.ndarray:
    """(N, dim) float vectors from a .npy file or a JSON list (one vector) or list of lists (one per row)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vector file {path} does not exist")
    if path.suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"vector file {path}: not a readable numeric .npy array: {e}") from None
    elif path.suffix == ".json":
        try:
            values = np.asarray(json.loads(path.read_text()), dtype=np.float64)
        except json.JSONDecodeError as e:
            raise ValueError(f"vector file {path}: invalid JSON: {e}") from None
        except (TypeError, ValueError):
            raise ValueError(
                f"vector file {path}: expected a list of numbers or a list of equal-length lists"
            ) from None
    else:
        raise ValueError(f"vector file {path}: expected a .npy or .json file")
    if not np.issubdtype(values.dtype, np.number) or values.ndim not in (1, 2) or values.size == 0:
        raise ValueError(f"vector file {path}: expected numbers of shape (dim,) or (n, dim), got {values.shape}")
    return np.atleast_2d(values).astype(np.float64)


def _as_targets(targets: Target | Sequence[Target]) -> list[Target]:
    if isinstance(targets, str | int | np.integer):
        return [targets]
    if isinstance(targets, np.ndarray):
        return [targets] if targets.ndim == 1 else list(targets)
    return list(targets)


def _is_id(target: Target) -> bool:
    return isinstance(target, str | int | np.integer) and not isinstance(target, bool)


class Talker:
    """One loaded ELM, its text encoder and the CAVs: describe / interpolate / cav / profile, each one batch."""

    def __init__(
        self,
        elm: TrainedELM,
        encode: Encoder,
        cavs: Mapping[str, Mapping[str, CAV]],
        settings: QuerySettings = QuerySettings(),
        tasks: Mapping[str, tasks_lib.Task] | None = None,
    ) -> None:
        """`encode`: the text encoder that made the semantic space; `cavs`: space -> concept -> CAV."""
        self.elm = elm
        self.encode = encode
        self.cavs = cavs
        self.settings = settings
        self.tasks = tasks if tasks is not None else tasks_lib.registry()
        self._lookup = {
            kind: _lookup(elm.catalog.table(kind).ids.tolist(), elm.catalog.table(kind).names)
            for kind in ("movie", "user")
        }

    @classmethod
    def from_config(cls, config: Any, workdir: str | os.PathLike, mesh: Mesh | None = None) -> Talker:
        """The ELM trained in `workdir` by `config` (fresh adapters with query.untrained), with its CAVs."""
        from elm_jax import sharding, trained
        from elm_jax.encoder import TextEncoder

        workdir = pathlib.Path(workdir)
        mesh = mesh or sharding.make_mesh(config.mesh)
        encoder = TextEncoder.from_pretrained(config.encoder.checkpoint, mesh)
        q = config.query
        elm = trained.load(config, workdir, mesh, encoder=encoder, untrained=q.untrained)
        cavs = {path.stem: load_cavs(path) for path in sorted((workdir / "cavs").glob("*.npz"))}
        extra = tasks_lib.load_task_file(config.eval.task_file) if config.eval.task_file else ()
        sampling = SamplingConfig(q.max_new_tokens, q.temperature, q.top_k, q.top_p, q.quant)
        settings = QuerySettings(
            sampling, chat=config.elm.chat, seed=config.seed, batch_size=q.batch_size, ndcg_k=q.ndcg_k
        )
        return cls(elm, encoder.encode, cavs, settings, tasks_lib.registry(extra))

    # The four queries.

    def describe(
        self,
        targets: Target | Sequence[Target],
        *,
        task: str | None = None,
        prompt: str | None = None,
        entity_kind: str | None = None,
        space: str | None = None,
    ) -> list[Answer]:
        """A text per target (entity id, exact name, or raw vector) for a task or a one-slot prompt."""
        p = self._prompt(task, prompt, entity_kind, space, "describe")
        targets = _as_targets(targets)
        if not targets:
            raise ValueError("targets: give at least one entity id or vector")
        vectors, labels = self._vectors(p, targets, [f"targets[{i}]" for i in range(len(targets))])
        inputs = [{"target": label} for label in labels]
        return self._answer("describe", p, vectors[:, None], [_name(x) for x in labels], inputs)

    def profile(self, users: Target | Sequence[Target]) -> list[Answer]:
        """A ten-bullet taste profile per user (id or behavioral vector): the user_profile task."""
        return [dataclasses.replace(a, query="profile") for a in self.describe(users, task="user_profile")]

    def interpolate(
        self,
        a: Target,
        b: Target,
        alphas: float | Sequence[float],
        *,
        task: str | None = None,
        prompt: str | None = None,
        entity_kind: str | None = None,
        space: str | None = None,
        force: bool = False,
    ) -> list[Answer]:
        """A text per alpha about (1 - alpha) * a + alpha * b: alpha 0 is a, 1 is b (the paper's Figs. 3-4)."""
        alphas = check_alphas(alphas, "interpolate", force)
        p = self._prompt(task, prompt, entity_kind, space, "interpolate")
        (va, vb), (la, lb) = self._vectors(p, [a, b], ["a", "b"])
        vectors = np.stack([(1 - alpha) * va + alpha * vb for alpha in alphas])
        subjects = [f"{_name(la)} -> {_name(lb)}, alpha {alpha:g}" for alpha in alphas]
        inputs = [{"a": la, "b": lb, "alpha": x} for x in alphas]
        return self._answer("interpolate", p, vectors[:, None], subjects, inputs)

    def cav(
        self,
        target: Target,
        concept: str,
        alphas: float | Sequence[float],
        *,
        task: str | None = None,
        prompt: str | None = None,
        entity_kind: str | None = None,
        space: str | None = None,
        force: bool = False,
    ) -> list[Answer]:
        """A text per alpha about the target moved alpha CAV gaps towards `concept` (the paper's Figs. 4-5)."""
        alphas = check_alphas(alphas, "cav", force)
        p = self._prompt(task, prompt, entity_kind, space, "cav")
        known = self.cavs.get(p.space, {})
        if concept not in known:
            listed = ", ".join(sorted(known)[:20]) + (" ..." if len(known) > 20 else "")
            raise ValueError(
                f"concept: {concept!r} has no CAV in space {p.space!r}; "
                + (f"known: {listed}" if known else "there are none (no tags in the catalogue, or no job=prepare)")
            )
        c = known[concept]
        (vector,), (label,) = self._vectors(p, [target], ["target"])
        vectors = move(np.repeat(vector[None], len(alphas), 0), c, np.asarray(alphas))
        subjects = [f"{_name(label)} + {alpha:g} x {concept!r}" for alpha in alphas]
        accuracy = _finite(c.accuracy)
        inputs = [{"target": label, "concept": concept, "alpha": alpha, "cav_accuracy": accuracy} for alpha in alphas]
        return self._answer("cav", p, vectors[:, None], subjects, inputs)

    def compare(
        self,
        pairs: Sequence[tuple[Target, Target]],
        *,
        task: str | None = None,
        prompt: str | None = None,
        entity_kind: str | None = None,
        space: str | None = None,
    ) -> list[Answer]:
        """A text per pair (entity ids, exact names or raw vectors) for a two-slot task or prompt: the paper's
        pair tasks (similarities, why_like_nn, ...) on any two points of the space, real or not."""
        p = self._prompt(task or (None if prompt else DEFAULT_PAIR_TASK), prompt, entity_kind, space, "compare", 2)
        if not len(pairs) or any(_is_id(pair) or not hasattr(pair, "__len__") or len(pair) != 2 for pair in pairs):
            raise ValueError("pairs: give a list of pairs (a, b) of entity ids or vectors, at least one")
        pairs = [tuple(pair) for pair in pairs]
        flat = [t for pair in pairs for t in pair]
        fields = [f"pairs[{i}][{j}]" for i in range(len(pairs)) for j in range(2)]
        vectors, labels = self._vectors(p, flat, fields)
        labels = [labels[i : i + 2] for i in range(0, len(labels), 2)]
        subjects = [f"{_name(a)} & {_name(b)}" for a, b in labels]
        inputs = [{"a": a, "b": b} for a, b in labels]
        return self._answer("compare", p, vectors.reshape(len(pairs), 2, -1), subjects, inputs)

    # Validation.

    def _prompt(
        self,
        task: str | None,
        prompt: str | None,
        entity_kind: str | None,
        space: str | None,
        query: str,
        n_slots: int = 1,
    ) -> _Prompt:
        """The template, entity kind and space of a query with `n_slots` vectors, checked against the ELM and
        the catalogue (every slot reads the same space)."""
        count = "exactly one" if n_slots == 1 else f"exactly {n_slots}"
        if entity_kind is not None and entity_kind not in DEFAULT_TASKS:
            raise ValueError(f"entity_kind: {entity_kind!r} is unknown; known: {', '.join(DEFAULT_TASKS)}")
        if task is not None and prompt is not None:
            raise ValueError("task, prompt: give one of them, not both")
        if prompt is None:
            task = task or DEFAULT_TASKS[entity_kind or "movie"]
            if task not in self.tasks:
                raise ValueError(f"task: {task!r} is unknown; known: {', '.join(self.tasks)}")
            t = self.tasks[task]
            if len(t.slots) != n_slots:
                raise ValueError(f"task: {task!r} has {len(t.slots)} slots; {query} fills {count}")
            if len(set(t.spaces.values())) != 1:
                spaces = sorted(set(t.spaces.values()))
                raise ValueError(f"task: {task!r} reads several spaces ({spaces}); {query} takes one")
            for name, value, wanted in (("entity_kind", entity_kind, t.entity), ("space", space, t.spaces[t.slots[0]])):
                if value not in (None, wanted):
                    raise ValueError(f"{name}: task {task!r} takes {wanted!r}, not {value!r}")
            p = _Prompt(t.template, t.entity, t.spaces[t.slots[0]])
        else:
            slots = slot_names(prompt)
            if len(slots) != n_slots:
                example = "{movie}" if n_slots == 1 else "{movie1} and {movie2}"
                raise ValueError(f"prompt: {prompt!r} has {len(slots)} slots; {query} fills {count}, e.g. {example}")
            kinds = {slot.rstrip("0123456789") for slot in slots}  # {movie1} and {movie2} are movies
            kind = entity_kind or (kinds.pop() if len(kinds) == 1 and kinds <= set(DEFAULT_TASKS) else None)
            if kind is None:
                raise ValueError(f"entity_kind: are {slots} movies or users? name the slots so, or pass it")
            p = _Prompt(prompt, kind, space or self._default_space(kind))
        adapters = self.elm.model.config.space_names
        if p.space not in adapters:
            raise ValueError(f"space: the ELM has no adapter for {p.space!r}; it has {', '.join(adapters)}")
        spaces = self.elm.catalog.table(p.entity_kind).embeddings
        if p.space not in spaces:
            raise ValueError(f"space: {p.entity_kind}s have no {p.space!r} embeddings; they have {', '.join(spaces)}")
        return p

    def _default_space(self, kind: str) -> str:
        used = sorted({s for t in self.elm.tasks if t.entity == kind for s in t.spaces.values()})
        if len(used) != 1:
            raise ValueError(f"space: the ELM was trained on {used or 'no'} {kind} spaces; pass space")
        return used[0]

    def _vectors(self, p: _Prompt, targets: Sequence[Target], fields: Sequence[str]) -> tuple[np.ndarray, list]:
        """(N, dim) vectors and a JSON-ready label per target; raises naming the field of a bad one."""
        table = self.elm.catalog.table(p.entity_kind)
        matrix = table.embeddings[p.space]
        vectors, labels = [], []
        for field, target in zip(fields, targets, strict=True):
            if _is_id(target):
                rows = self._lookup[p.entity_kind](target)
                if not rows:
                    raise ValueError(f"{field}: no {p.entity_kind} has the id or exact name {target!r}")
                if len(rows) > 1:
                    ids = ", ".join(str(table.ids[r].item()) for r in rows)
                    raise ValueError(f"{field}: {len(rows)} {p.entity_kind}s are named {target!r}; give an id ({ids})")
                (row,) = rows
                vectors.append(matrix[row].astype(np.float64))
                labels.append({"id": table.ids[row].item(), "name": table.names[row]})
                continue
            try:
                v = np.asarray(target, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{field}: {target!r} is neither an entity id nor a vector of numbers") from None
            if v.ndim != 1:
                raise ValueError(f"{field}: {target!r} is neither an entity id nor a vector of numbers")
            if v.shape[0] != matrix.shape[1]:
                raise ValueError(
                    f"{field}: a vector of {v.shape[0]} dims; {p.entity_kind} space {p.space!r} has {matrix.shape[1]}"
                )
            if not np.isfinite(v).all():
                raise ValueError(f"{field}: the vector has NaN or Inf entries")
            vectors.append(v)
            labels.append({"vector": field})
        return np.stack(vectors), labels

    # Generation and scoring.

    def _answer(
        self, query: str, p: _Prompt, vectors: np.ndarray, subjects: list[str], inputs: list[dict]
    ) -> list[Answer]:
        """Generates and scores one text per row of `vectors` (N, slots, dim); a pair is scored at its mean."""
        s = self.settings
        tokenizer = self.elm.llm.tokenizer
        encoded = encode_prompt(tokenizer, p.template, self.elm.model.config.tokens_per_slot, s.chat)
        queries = [Query(encoded, tuple(v.astype(np.float32)), (p.space,) * len(v)) for v in vectors]
        texts = generate_elm_text(
            self.elm.model, self.elm.params, tokenizer, queries, s.sampling, seed=s.seed, batch_size=s.batch_size
        )
        metric, scores = self.consistency(p.entity_kind, p.space, vectors.mean(axis=1), texts)
        return [
            Answer(query, p.template, p.entity_kind, p.space, subject, x, text, metric, _finite(score))
            for subject, x, text, score in zip(subjects, inputs, texts, scores, strict=True)
        ]

    def consistency(
        self, entity_kind: str, space: str, vectors: np.ndarray, texts: Sequence[str]
    ) -> tuple[str, np.ndarray]:
        """(metric name, per-text values) of texts about `vectors`; see METRICS and the module doc."""
        catalog, semantic = self.elm.catalog, self.settings.semantic_space
        embedded = self.encode(list(texts))
        if space == semantic:
            self._check_encoder(embedded, vectors.shape[1], f"{entity_kind} space {space!r}")
            return "sc", metrics.semantic_consistency(embedded, vectors)
        if entity_kind == "user":
            factors = self._factors(catalog.movies, space, vectors.shape[1])
            items = catalog.movies.embeddings.get(semantic)
            if items is None:
                raise ValueError(f"bc_ndcg ranks movies by their {semantic!r} embeddings; the catalogue has none")
            self._check_encoder(embedded, items.shape[1], f"movie space {semantic!r}")
            predicted = np.clip(vectors @ factors.T, 0.0, None)
            k = self.settings.ndcg_cutoff
            return "bc_ndcg", metrics.user_behavioral_consistency(embedded, items, predicted, k=k)
        factors = self._factors(catalog.users, space, vectors.shape[1])
        predicted = vectors @ factors.T
        return "bc_spearman", metrics.movie_behavioral_consistency(embedded, self._user_text_embeddings, predicted)

    @functools.cached_property
    def _user_text_embeddings(self) -> np.ndarray:
        return self.encode(user_texts(self.elm.catalog, "titles"))

    @staticmethod
    def _factors(table, space: str, dim: int) -> np.ndarray:
        """The other side's CF factors in `space`: what predicted ratings are dot products with."""
        factors = table.embeddings.get(space)
        if factors is None or factors.shape[1] != dim:
            raise ValueError(f"behavioral consistency in {space!r} needs {table.kind} factors of {dim} dims there")
        return factors.astype(np.float64)

    @staticmethod
    def _check_encoder(embedded: np.ndarray, dim: int, what: str) -> None:
        if embedded.shape[1] != dim:
            raise ValueError(
                f"{what} has {dim} dims but the text encoder gives {embedded.shape[1]}: consistency needs the "
                "encoder that made it (config.encoder)"
            )


def _lookup(ids: list, names: list[str]) -> Callable[[Target], list[int]]:
    """Rows of an id (compared as text, so "356" finds 356; one row) or else of an exact name (titles repeat)."""
    by_id = {str(i): [row] for row, i in enumerate(ids)}
    by_name: dict[str, list[int]] = {}
    for row, name in enumerate(names):
        by_name.setdefault(name, []).append(row)
    return lambda target: by_id.get(str(target)) or by_name.get(str(target), [])


def _name(label: Mapping[str, Any]) -> str:
    return f"{label['name']} [{label['id']}]" if "id" in label else label["vector"]


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def format_answers(answers: Sequence[Answer]) -> str:
    """Readable text: the prompt and metric once, then each subject with its consistency and text."""
    lines: list[str] = []
    header = None
    for a in answers:
        if (a.query, a.template, a.metric) != header:
            header = (a.query, a.template, a.metric)
            lines += [
                f"== {a.query}: {a.template!r} ({a.entity_kind}, space {a.space})",
                f"   {a.metric}: {METRICS[a.metric]}",
            ]
        score = "undefined" if a.consistency is None else f"{a.consistency:.3f}"
        lines += ["", f">>> {a.subject}   {a.metric}={score}", a.text]
    return "\n".join(lines)


def run(config: Any, workdir: str | os.PathLike) -> pathlib.Path:
    """The `query` job: one query from config.query, printed and written to workdir/queries/<name>.jsonl."""
    from elm_jax.io_utils import atomic_write_jsonl

    q = config.query
    if q.kind not in KINDS:
        raise ValueError(f"query.kind={q.kind!r} is unknown; known: {', '.join(KINDS)}")
    name = q.name or q.kind
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"query.name={name!r}: use letters, digits, '_', '.' and '-' (it names a file)")
    targets: list[Target] = list(q.entities)
    if q.vector_file:
        targets += list(load_vectors(q.vector_file))
    need = {"interpolate": 2, "cav": 1}.get(q.kind)
    if q.kind == "compare" and (not targets or len(targets) % 2):
        raise ValueError(
            f"query.entities, query.vector_file: compare takes pairs (an even number of entities or vectors in "
            f"all, taken two by two), got {len(targets)}"
        )
    if not targets or (need and len(targets) != need):
        raise ValueError(
            f"query.entities, query.vector_file: {q.kind} takes {need or 'at least 1'} entities or vectors in all, "
            f"got {len(targets)}"
        )
    if q.kind in ("interpolate", "cav"):
        check_alphas(list(q.alphas), q.kind, q.force)
    if q.kind == "cav" and not q.concept:
        raise ValueError("query.concept: cav needs a concept (a tag with a CAV, see workdir/cavs/summary.json)")
    if q.kind == "profile" and (q.task or q.prompt):
        raise ValueError("query.task, query.prompt: profile always asks the user_profile task; use describe")

    talker = Talker.from_config(config, workdir)
    stages = talker.elm.stages
    print("ELM:", ", ".join(f"{n} (step {s})" for n, s in stages) or "untrained adapters (query.untrained)")
    common = dict(task=q.task, prompt=q.prompt, entity_kind=q.entity_kind, space=q.space)
    if q.kind == "describe":
        answers = talker.describe(targets, **common)
    elif q.kind == "profile":
        answers = talker.profile(targets)
    elif q.kind == "compare":
        answers = talker.compare(list(zip(targets[::2], targets[1::2])), **common)
    elif q.kind == "interpolate":
        answers = talker.interpolate(*targets, list(q.alphas), **common, force=q.force)
    else:
        answers = talker.cav(targets[0], q.concept, list(q.alphas), **common, force=q.force)
    print(format_answers(answers))
    out = atomic_write_jsonl(pathlib.Path(workdir) / "queries" / f"{name}.jsonl", [a.to_json() for a in answers])
    print(f"\nwrote {out}")
    return out
