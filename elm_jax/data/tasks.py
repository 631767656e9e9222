"""The paper's tasks as data: 24 movie tasks and the user-profile task (paper §3.1, Table 7, App. E).

Each task has two prompts:
  * `template`: what the ELM sees. Slots ({movie}, {movie1}, {user}) receive domain vectors; no name.
  * `teacher_template`: what a teacher LLM sees when it writes training targets: the same prompt with the
    entity's title in the slot, plus the instruction not to use the name (App. E). Teacher-only fields
    ({liked}, {disliked}) are filled with text.

`pairing` says how a two-slot task picks its second entity: "random" or "nearest" (in the slot's space).
App. E says tasks 20-22 used random pairs and 23-24 nearest neighbours, while Table 2's caption says every
task named "nn" used nearest neighbours; we follow the names (22 "why like nn" is nearest), and every task's
pairing can be changed in a task file.

Users add or replace tasks with a JSON file: a list of objects with the fields of `Task`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from elm_jax.data.prompts import SLOT, slot_names

PAIRINGS = ("none", "random", "nearest")
_NO_NAME = " Do not use the movie's name in your response."
_NO_NAMES = " Do not use the movies' names in your answer."
_REFER = " Refer to {movie1} as 'the first movie' and to {movie2} as 'the second movie.'"


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    template: str
    teacher_template: str
    spaces: Mapping[str, str]  # slot name -> embedding space ("semantic", "behavioral", ...)
    pairing: str = "none"
    entity: str = "movie"  # the entity kind whose vectors fill the slots
    group: str = "single"  # single | pair | user: how results are grouped in reports (Table 2)
    description: str = ""

    def __post_init__(self):
        slots = slot_names(self.template)
        if not slots:
            raise ValueError(f"task {self.name!r}: template {self.template!r} has no {{slot}}")
        if set(slots) != set(self.spaces):
            raise ValueError(f"task {self.name!r}: template slots {slots} do not match spaces {sorted(self.spaces)}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"task {self.name!r}: pairing {self.pairing!r} is not one of {PAIRINGS}")
        if (len(slots) == 2) != (self.pairing != "none") or len(slots) > 2:
            raise ValueError(f"task {self.name!r}: one-slot tasks take pairing 'none', two-slot tasks random/nearest")
        # The teacher prompt names each movie of the template, or a user by their liked and disliked titles.
        naming = {"liked", "disliked"} if self.entity == "user" else set(slots)
        allowed = naming | set(slots)
        teacher = set(SLOT.findall(self.teacher_template))  # names may repeat there: they are text
        if not naming <= teacher <= allowed:
            raise ValueError(
                f"task {self.name!r}: teacher_template slots {sorted(teacher)} must include {sorted(naming)} and"
                f" come from {sorted(allowed)}"
            )

    @property
    def slots(self) -> list[str]:
        return slot_names(self.template)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "task file") -> Task:
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: expected an object with Task's fields, got {d!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        missing = {"name", "template", "teacher_template", "spaces"} - set(d)
        if unknown or missing:
            raise ValueError(
                f"{source}: task {d.get('name', '?')!r} has unknown fields {sorted(unknown)} or lacks {sorted(missing)}"
            )
        try:
            return cls(**{**d, "spaces": dict(d["spaces"])})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None


def _movie(name: str, template: str, description: str, suffix: str = _NO_NAME) -> Task:
    return Task(name, template, template + suffix, {"movie": "semantic"}, description=description)


def _pair(name: str, template: str, pairing: str, description: str, refer: bool) -> Task:
    teacher = template + _NO_NAMES + (_REFER if refer else "")
    spaces = {"movie1": "semantic", "movie2": "semantic"}
    return Task(name, template, teacher, spaces, pairing=pairing, group="pair", description=description)


MOVIE_TASKS: tuple[Task, ...] = (
    _movie(
        "long_description",
        "Write a long description of the plot of the movie {movie}.",
        "A long exhaustive description of the movie plot.",
    ),
    _movie(
        "summary",
        "Write a long summary of the movie {movie}.",
        "One paragraph summarizing the movie plot.",
        " Do not use the movie's name in your answer.",
    ),
    _movie("positive_review", "Write a long positive review for the movie {movie}.", "A positive review of the movie."),
    _movie("negative_review", "Write a long negative review for the movie {movie}.", "A negative review of the movie."),
    _movie("neutral_review", "Write a long neutral review for the movie {movie}.", "A neutral review of the movie."),
    _movie(
        "five_pos_char",
        "List 5 characteristics of the movie {movie} that make it great.",
        "Listing five positive characteristics of the movie.",
    ),
    _movie(
        "five_neg_char",
        "List 5 characteristics of the movie {movie} that people hate about.",
        "Listing five negative characteristics of the movie.",
    ),
    _movie(
        "improve",
        "Improve the movie {movie}. Describe how you improved the movie, and why it is now better.",
        "An improved version of the movie.",
    ),
    _movie(
        "criticize",
        "Criticize movie {movie}. Explain what characteristics of the movie that people dislike and "
        "how it compares to similar movies.",
        "Criticizing the movie.",
    ),
    _movie(
        "pitch",
        "Assume the movie {movie} does not exist. Convince a producer to create it. Explain what "
        "characteristics of the movie will make it a great movie and how it compares to similar movies.",
        "A pitch for the movie.",
    ),
    _movie("convince1", "In detail, convince someone to watch the movie {movie}.", "Convincing to watch the movie."),
    _movie("convince2", "Convince someone to watch the movie {movie}.", "Convincing to watch the movie."),
    _movie(
        "convince3", "Briefly convince someone to watch the movie {movie}.", "Convincing briefly to watch the movie."
    ),
    _movie(
        "dissuade1",
        "In detail, dissuade someone from watching the movie {movie}.",
        "Dissuading from watching the movie.",
    ),
    _movie("dissuade2", "Dissuade someone from watching the movie {movie}.", "Dissuading from watching the movie."),
    _movie("funnier", "Write a funnier version of the movie {movie}.", "A plot for a funnier version of the movie."),
    _movie(
        "sadder",
        "Write a sadder and dramatic version of the movie {movie}.",
        "A plot for a sadder version of the movie.",
    ),
    _movie("scarier", "Write a scarier version of the movie {movie}.", "A plot for a scarier version of the movie."),
    _movie(
        "movie_to_viewer",
        "What type of viewers would enjoy the movie {movie}? Describe the viewer's characteristics.",
        "Describing a viewer that would like to watch this movie.",
    ),
    _pair(
        "interpolation",
        "Write a long description of the plot of a new movie that is the interpolation between {movie1} and {movie2}.",
        "random",
        "Interpolate the plots of two movies.",
        refer=False,
    ),
    _pair(
        "similarities",
        "List three similarities and three differences between the movies {movie1} and {movie2}.",
        "random",
        "Three similarities and three differences between two movies.",
        refer=True,
    ),
    _pair(
        "why_like_nn",
        "I like the movie {movie1}. Explain to me why I would also like the movie {movie2}.",
        "nearest",
        "Explain why someone would like a nearest-neighbour movie.",
        refer=False,
    ),
    _pair(
        "diff_than_nn",
        "What are the three major attributes that are different between the movies {movie1} and {movie2}?",
        "nearest",
        "Three major differences between two nearest-neighbour movies.",
        refer=True,
    ),
    _pair(
        "common_with_nn",
        "What are the three major attributes that are common between the movies {movie1} and {movie2}?",
        "nearest",
        "Three similarities between two nearest-neighbour movies.",
        refer=True,
    ),
)

USER_PROFILE = Task(
    "user_profile",
    "In ten bullet points, describe the attributes and characteristics of the viewer {user}.",
    "In ten bullet points, describe the attributes and characteristics of a viewer who likes the movies: {liked} "
    "but dislikes the movies: {disliked}.",
    {"user": "behavioral"},
    entity="user",
    group="user",
    description="A ten-bullet taste profile from a user's behavioral embedding (the paper's separate user model).",
)

DEFAULT_TASKS: tuple[Task, ...] = MOVIE_TASKS + (USER_PROFILE,)


def registry(extra: Iterable[Task] = ()) -> dict[str, Task]:
    """The paper's tasks, with `extra` tasks added or replacing same-named ones."""
    tasks = {t.name: t for t in DEFAULT_TASKS}
    tasks.update({t.name: t for t in extra})
    return tasks


def load_task_file(path: str | os.PathLike) -> list[Task]:
    """Tasks from a JSON file (a list of objects with Task's fields)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"task file {path}: invalid JSON: {e}") from e
    if not isinstance(rows, list):
        raise ValueError(f"task file {path}: expected a JSON list of tasks")
    return [Task.from_dict(row, source=f"task file {path}, entry {i}") for i, row in enumerate(rows)]


def select(names: Sequence[str], tasks: Mapping[str, Task]) -> list[Task]:
    """Tasks by name; 'all', 'movie' (the 24 movie tasks) and 'user' are shorthands."""
    groups = {"all": list(tasks), "movie": [t.name for t in MOVIE_TASKS if t.name in tasks], "user": ["user_profile"]}
    out: list[str] = []
    for name in names:
        for n in groups.get(name, [name]):
            if n not in tasks:
                raise ValueError(f"task {n!r} is unknown; known: {', '.join(tasks)}")
            if n not in out:
                out.append(n)
    return [tasks[n] for n in out]
