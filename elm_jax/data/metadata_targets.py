"""Training targets for the embedded default catalogue, written from its ground truth instead of a teacher LLM.

The default catalogue keeps every movie's soft attributes and every user's taste, so each task's answer can be
written directly from them: offline, in seconds for the whole catalogue, and grounded in exactly what the
embeddings encode. Each sentence type has several templates and a per-example RNG picks among them, so targets
are not one fixed string, but the attribute words stay explicit so that a sentence encoder's embedding of a
target (semantic consistency) reflects the attributes. No target names its entity: the ELM must learn from the
vector alone (paper App. E).
"""

from __future__ import annotations

import dataclasses
import random
import re
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from elm_jax.data.catalog import Catalog
from elm_jax.data.examples import Example, build_examples, split_rows
from elm_jax.data.synthetic import GENRE_WEIGHTS  # the generator's own attribute -> genre rule
from elm_jax.data.targets import Target
from elm_jax.data.tasks import Task

_STRONG = 0.35  # the generator's lower bound for a movie's strong attributes
_GENRE_MIN = 0.6  # genre score (attributes . genre weights) for a derived genre beyond the first


@dataclasses.dataclass(frozen=True)
class _Lexicon:
    """How targets talk about one attribute."""

    adjs: tuple[str, ...]  # the attribute's own word first, so it appears most often
    nouns: tuple[str, ...]  # mass nouns ("a little humour", "without gore")
    praise: tuple[str, ...]  # clauses for a strong attribute, as a strength
    excess: tuple[str, ...]  # clauses for a strong attribute, as what people dislike
    lack: tuple[str, ...]  # clauses for a weak attribute, as a flaw; () where its absence is no flaw
    viewers: tuple[str, ...]  # who enjoys the attribute
    add: str  # how an improved version adds the attribute; "" where adding it would not improve a film
    tone_down: str  # how an improved version eases an excess of it


_LEX: dict[str, _Lexicon] = {
    "funny": _Lexicon(
        ("funny", "hilarious", "humorous", "comic"),
        ("humour", "comedy"),
        (
            "the jokes land again and again",
            "it is genuinely funny, with laughs in nearly every scene",
            "its humour is sharp and perfectly timed",
        ),
        (
            "the jokes never stop, and many of them fall flat",
            "it is so busy being funny that nothing else gets a chance",
            "the comedy is broad and forced",
        ),
        ("there is barely a laugh in it", "it has no sense of humour at all", "it is never funny, even when it tries"),
        ("people who love to laugh", "comedy fans", "anyone who enjoys a funny film"),
        "a few well-timed jokes to make it funnier",
        "cut the weaker gags so the funny moments land harder",
    ),
    "scary": _Lexicon(
        ("scary", "frightening", "creepy", "terrifying"),
        ("fear", "dread"),
        (
            "the scares are genuinely frightening",
            "it builds real dread and pays it off with terrifying moments",
            "it is scary in the best way, with a creepy atmosphere that never lets go",
        ),
        (
            "it is relentlessly scary and too frightening for many viewers",
            "the scares are cheap jump scares repeated until they stop working",
        ),
        ("it is never scary, even when it wants to be", "there is no real sense of fear or danger"),
        ("horror fans who enjoy being frightened", "viewers who love scary movies"),
        "",
        "rely less on jump scares and more on a creeping, scary atmosphere",
    ),
    "romantic": _Lexicon(
        ("romantic", "tender", "heartfelt"),
        ("romance",),
        (
            "the romance is tender and believable",
            "its love story is genuinely romantic and warm",
            "the romantic chemistry between the leads is lovely",
        ),
        ("the romance is syrupy and predictable", "it is so romantic that it turns into sentimental mush"),
        ("there is no romance or warmth to speak of", "the love story, such as it is, has no chemistry"),
        ("romantics who love a good love story", "fans of romantic films"),
        "a romantic subplot to give it more heart",
        "make the romance less sugary",
    ),
    "violent": _Lexicon(
        ("violent", "brutal", "hard-hitting"),
        ("violence",),
        (
            "the violence is hard-hitting and gives every fight real weight",
            "its brutal, violent fight scenes are staged with conviction",
        ),
        ("the violence is brutal and numbing", "it is needlessly violent, with one beating after another"),
        (),
        ("viewers with a strong stomach for violence", "fans of hard-hitting, violent films"),
        "",
        "cut back the violence so that it shocks when it matters",
    ),
    "thought-provoking": _Lexicon(
        ("thought-provoking", "thoughtful", "philosophical"),
        ("food for thought", "reflection"),
        (
            "it is thought-provoking, raising questions that linger long after the credits",
            "its ideas are smart and genuinely thought-provoking",
        ),
        (
            "it is so busy being thought-provoking that it forgets to entertain",
            "its philosophical musings feel pretentious and slow",
        ),
        ("there is nothing to think about once it ends", "it has no ideas beneath the surface"),
        ("viewers who like films that make them think", "fans of thoughtful, philosophical cinema"),
        "a deeper theme that makes it more thought-provoking",
        "trim the philosophical speeches",
    ),
    "action-packed": _Lexicon(
        ("action-packed", "action-filled", "fast-paced"),
        ("action",),
        ("the action is relentless and superbly staged", "it is action-packed, with thrilling chases and set pieces"),
        ("the nonstop action is noisy and exhausting", "it is so action-packed that the characters get lost"),
        ("hardly anything happens, and the pacing drags", "there is almost no action to keep things moving"),
        ("action fans who want thrills and chases", "adrenaline junkies who love action"),
        "a couple of exciting action set pieces to lift the pace",
        "slow the action down so that the characters can breathe",
    ),
    "cartoonish": _Lexicon(
        ("cartoonish", "animated", "colourful"),
        ("animation", "cartoon style"),
        (
            "the cartoonish animation is bright, inventive and full of charm",
            "its colourful, animated world is a joy to look at",
        ),
        ("it is too cartoonish to take seriously", "the cartoonish style feels childish and shallow"),
        ("the visuals are flat and unimaginative", "it looks drab, with no visual flair"),
        ("fans of animation and cartoons", "viewers who love colourful animated worlds"),
        "",
        "ground the cartoonish style with some real emotion",
    ),
    "sad": _Lexicon(
        ("sad", "heartbreaking", "moving", "melancholy"),
        ("sadness", "heartbreak"),
        ("it is deeply moving, and the sad moments are earned", "its heartbreaking story will leave few dry eyes"),
        ("it is relentlessly sad and depressing", "the misery piles up until it feels manipulative"),
        ("it never moves you emotionally", "the emotional moments fall flat"),
        ("viewers who enjoy a good cry", "fans of sad, moving stories"),
        "a sadder, more moving emotional arc",
        "ease the misery so the sad moments hit harder",
    ),
    "realistic": _Lexicon(
        ("realistic", "grounded", "believable", "true-to-life"),
        ("realism", "authenticity"),
        (
            "it is realistic and true to life, with believable characters",
            "its grounded realism makes every scene feel authentic",
        ),
        (
            "it is so realistic and plain that it feels like watching paint dry",
            "its drab realism leaves little room for excitement",
        ),
        ("nothing in it is believable", "the characters and events feel completely unrealistic"),
        ("viewers who appreciate realistic, true-to-life stories", "fans of grounded, believable drama"),
        "more realistic, believable characters",
        "add some imagination to the drab realism",
    ),
    "far-fetched": _Lexicon(
        ("far-fetched", "fantastical", "imaginative", "outlandish"),
        ("fantasy", "imagination"),
        (
            "its far-fetched premise is wildly imaginative",
            "it embraces its outlandish, far-fetched ideas with real imagination",
        ),
        ("the plot is far-fetched and makes no sense", "it is so far-fetched and implausible that nothing matters"),
        ("it lacks imagination and plays it completely safe", "the story is predictable and unimaginative"),
        ("fans of imaginative, far-fetched fantasy and science fiction", "viewers who enjoy outlandish premises"),
        "",
        "make the far-fetched plot a little more plausible",
    ),
    "intense": _Lexicon(
        ("intense", "tense", "suspenseful", "gripping"),
        ("tension", "suspense"),
        ("it is intense and gripping from start to finish", "the suspense is tight and the tension never lets up"),
        ("it is so intense that it becomes exhausting", "the constant tension is draining rather than thrilling"),
        ("there is no tension or suspense at all", "it is slack and never gripping"),
        ("viewers who love intense, edge-of-the-seat suspense", "thriller fans who like a tense ride"),
        "tighter pacing that makes it more intense and suspenseful",
        "give the audience a moment to breathe between the tense scenes",
    ),
    "playful": _Lexicon(
        ("playful", "lighthearted", "whimsical", "breezy"),
        ("playfulness", "whimsy"),
        ("it is playful and lighthearted, with a whimsical charm", "its breezy, playful tone is infectious"),
        ("it is so playful and silly that nothing has any weight", "the whimsical tone grows cloying"),
        ("it is joyless and heavy-handed", "it has no lightness or playfulness at all"),
        ("people who enjoy playful, lighthearted fun", "viewers looking for something breezy and whimsical"),
        "a more playful, lighthearted touch",
        "rein in the silliness",
    ),
    "gory": _Lexicon(
        ("gory", "bloody", "gruesome"),
        ("gore", "blood"),
        ("the gory effects are gruesome and impressively done", "its bloody, gory moments deliver for horror fans"),
        ("it is gratuitously gory, with blood for its own sake", "the gore is gruesome and stomach-churning"),
        (),
        ("gore hounds who like their horror bloody", "horror fans with a strong stomach for gore"),
        "",
        "cut back the gore",
    ),
    "serious": _Lexicon(
        ("serious", "earnest", "weighty", "sober"),
        ("seriousness", "gravity"),
        ("it treats its subject with serious, earnest care", "its serious tone gives real weight to every choice"),
        ("it is so serious and solemn that it becomes a chore", "it is humourless, heavy and far too serious"),
        ("it has no weight and nothing at stake", "it never takes anything seriously"),
        ("viewers who appreciate serious, weighty drama", "fans of earnest, grown-up films"),
        "more serious stakes",
        "lighten the serious tone with a little humour",
    ),
    "family-friendly": _Lexicon(
        ("family-friendly", "wholesome", "kid-friendly"),
        ("family appeal", "wholesomeness"),
        (
            "it is family-friendly, wholesome fun that all ages can share",
            "its wholesome, family-friendly story is perfect for children and parents",
        ),
        ("it is so wholesome and family-friendly that it feels toothless", "it talks down to its audience"),
        ("it is not suitable for children", "it is too harsh for a family audience"),
        ("families with young children", "parents looking for a wholesome family movie"),
        "",
        "give the adults in the audience more to chew on",
    ),
    "dark": _Lexicon(
        ("dark", "bleak", "grim", "brooding"),
        ("darkness", "gloom"),
        ("its dark, brooding atmosphere is gripping", "it is dark and bleak in a compelling way"),
        ("it is so dark and bleak that it is hard to sit through", "its grim, nihilistic tone is oppressive"),
        ("it has no edge at all", "it feels toothless and safe"),
        ("fans of dark, bleak stories", "viewers drawn to grim, noir-ish tales"),
        "",
        "let some light into the dark tone",
    ),
}
# An improved version does not add an attribute that fights one the movie is strong in.
_CLASHES = {
    "playful": ("serious", "dark", "sad"),
    "serious": ("playful", "cartoonish", "family-friendly", "funny"),
    "realistic": ("far-fetched", "cartoonish"),
    "sad": ("family-friendly", "playful", "cartoonish"),
    "funny": ("serious",),
    "intense": ("family-friendly",),
}
# Genre -> (noun, plural, label).
_GENRES = {
    "Action": ("action film", "action films", "action"),
    "Adventure": ("adventure", "adventure films", "adventure"),
    "Animation": ("animated film", "animated films", "animation"),
    "Children": ("children's film", "children's films", "children's"),
    "Comedy": ("comedy", "comedies", "comedy"),
    "Crime": ("crime film", "crime films", "crime"),
    "Documentary": ("documentary", "documentaries", "documentary"),
    "Drama": ("drama", "dramas", "drama"),
    "Fantasy": ("fantasy", "fantasy films", "fantasy"),
    "Horror": ("horror film", "horror films", "horror"),
    "Musical": ("musical", "musicals", "musical"),
    "Mystery": ("mystery", "mysteries", "mystery"),
    "Romance": ("romance", "romances", "romance"),
    "Sci-Fi": ("science-fiction film", "science-fiction films", "sci-fi"),
    "Thriller": ("thriller", "thrillers", "thriller"),
    "War": ("war film", "war films", "war"),
    "Western": ("western", "westerns", "western"),
}
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


@dataclasses.dataclass
class _Movie:
    """What targets may say about one movie (never its title)."""

    values: dict[str, float]  # attribute -> strength in [0, 1]
    top: list[str]  # attributes, strongest first
    genres: list[str]  # derived genres, best first
    decade: str  # "1990s", or "" when the title carries no year
    plot: list[str]  # plot sentences (empty when the catalogue has no texts)
    quality: float
    popularity: float  # percentile among the catalogue's movies, 1 = most popular
    more: str  # the attribute it has most more of than its genre's average
    less: str  # ... and most less of
    title: re.Pattern  # finds the title in a text

    @property
    def strong(self) -> list[str]:
        return [a for a in self.top if self.values[a] >= _STRONG] or self.top[:1]

    @property
    def lacking(self) -> list[str]:
        """Weakest attributes whose absence is a flaw, weakest first."""
        return [a for a in reversed(self.top) if _LEX[a].lack and self.values[a] < _STRONG]


# ---------------------------------------------------------------- wording helpers


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _adj(a: str, r: random.Random) -> str:
    words = _LEX[a].adjs
    return words[0] if r.random() < 0.6 else r.choice(words[1:])


def _noun(a: str, r: random.Random) -> str:
    return r.choice(_LEX[a].nouns)


def _graded(a: str, v: float, r: random.Random) -> str:
    """The attribute as a predicate that says how strong it is ("very funny", "not scary at all")."""
    word = _adj(a, r)
    if v >= 0.75:
        return f"{r.choice(('very', 'extremely', 'thoroughly', 'remarkably'))} {word}"
    if v >= 0.5:
        return f"{r.choice(('quite', 'clearly', 'distinctly', 'fairly'))} {word}"
    if v >= _STRONG:
        return f"{r.choice(('somewhat', 'mildly', 'moderately'))} {word}"
    if v >= 0.15:
        return f"{r.choice(('only slightly', 'barely', 'hardly'))} {word}"
    return r.choice(("not {w} at all", "never {w}", "not the least bit {w}")).format(w=word)


def _g(m: _Movie, a: str, r: random.Random) -> str:
    return _graded(a, m.values[a], r)


def _praise(a: str, r: random.Random) -> str:
    return r.choice(_LEX[a].praise)


def _excess(a: str, r: random.Random) -> str:
    return r.choice(_LEX[a].excess)


def _lack(a: str, r: random.Random) -> str:
    return r.choice(_LEX[a].lack)


def _viewer(a: str, r: random.Random) -> str:
    return r.choice(_LEX[a].viewers)


def _gnoun(m: _Movie, r: random.Random) -> str:
    return _GENRES[m.genres[0]][0] if len(m.genres) == 1 or r.random() < 0.7 else _GENRES[m.genres[1]][0]


def _plural(m: _Movie) -> str:
    return _GENRES[m.genres[0]][1]


def _kind(m: _Movie, r: random.Random, article: bool = True) -> str:
    """'a 1990s comedy', 'a crime drama from the 1970s', ...: genre and era."""
    noun = _GENRES[m.genres[0]][0]
    if len(m.genres) > 1 and r.random() < 0.5:
        noun = r.choice(("{l} {n}", "{n} with touches of {l}", "{n} with a streak of {l}")).format(
            n=noun, l=_GENRES[m.genres[1]][2]
        )
    if m.decade:
        noun = r.choice(("{d} {n}", "{n} from the {d}")).format(d=m.decade, n=noun)
    return _a(noun) if article else noun


def _plot(m: _Movie, words: int) -> list[str]:
    """Leading plot sentences within about `words` words (at least the opening)."""
    out: list[str] = []
    for s in m.plot:
        if out and sum(len(x.split()) for x in out) + len(s.split()) > words:
            break
        out.append(s)
    return out


def _premise(m: _Movie, r: random.Random) -> str:
    if m.plot:
        return m.plot[0]
    return f"It is {_kind(m, r)} that is {_g(m, m.top[0], r)} and {_g(m, m.top[1], r)}."


def _text(*parts: str | Sequence[str]) -> str:
    """Sentences (or lists of them) joined into a paragraph; each sentence capitalised."""
    out: list[str] = []
    for p in parts:
        out.extend([p] if isinstance(p, str) else p)
    return " ".join(_cap(s) for s in out if s)


def _numbered(items: Sequence[str]) -> str:
    return "\n".join(f"{i}. {_cap(s)}" for i, s in enumerate(items, 1))


# ---------------------------------------------------------------- one-movie tasks


def _long_description(m: _Movie, r: random.Random) -> str:
    a1, a2, a3 = m.top[:3]
    weak = m.top[-1]
    elaborate = [
        r.choice(
            (
                f"The film is {_kind(m, r)}, {_g(m, a1, r)} above all and {_g(m, a2, r)} as well.",
                f"As {_kind(m, r)}, it is {_g(m, a1, r)}, {_g(m, a2, r)} and {_g(m, a3, r)}.",
                f"Taken as a whole, this {_gnoun(m, r)} is {_g(m, a1, r)} and {_g(m, a2, r)}.",
            )
        ),
        r.choice(("In practice, ", "Throughout, ", "", "Scene by scene, ")) + _praise(a1, r) + ".",
    ]
    if m.values[a2] >= _STRONG:
        elaborate.append(
            r.choice(("At the same time, ", "Alongside this, ", "Just as clearly, ")) + _praise(a2, r) + "."
        )
    elaborate.append(
        r.choice(
            (
                f"By contrast, it is {_g(m, weak, r)}.",
                f"What it is not is {_adj(weak, r)}: there is little {_noun(weak, r)} here.",
                f"It is {_g(m, weak, r)}, and never tries to be.",
            )
        )
    )
    return _text(_plot(m, 120 - sum(len(s.split()) for s in elaborate)), elaborate)


def _summary(m: _Movie, r: random.Random) -> str:
    a1, a2, a3 = m.top[:3]
    first = r.choice(
        (
            f"{_kind(m, r)}, this film is {_g(m, a1, r)} and {_g(m, a2, r)}.",
            f"This is {_kind(m, r)} that is {_g(m, a1, r)} and {_g(m, a2, r)}.",
            f"At heart this is {_kind(m, r)}: {_g(m, a1, r)}, {_g(m, a2, r)} and {_g(m, a3, r)}.",
            f"{_kind(m, r)} built on {_noun(a1, r)} and {_noun(a2, r)}.",
        )
    )
    last = r.choice(
        (
            f"Overall it is {_adj(a1, r)} rather than {_adj(m.top[-1], r)}.",
            f"The tone stays {_adj(a1, r)} throughout, with little that is {_adj(m.top[-1], r)}.",
            f"In short: {_adj(a1, r)}, {_adj(a2, r)}, and {_g(m, m.top[-1], r)}.",
        )
    )
    return _text(first, _plot(m, 55), last)


def _positive_review(m: _Movie, r: random.Random) -> str:
    a1 = m.top[0]
    opener = r.choice(
        (
            f"I loved this {_adj(a1, r)}, {_adj(m.top[1], r)} {_gnoun(m, r)}.",
            f"What a delight: {_kind(m, r)} that gets almost everything right.",
            f"This is {_kind(m, r)} I would happily watch again and again.",
            f"Few {_plural(m)} are as {_adj(a1, r)} as this one, and that is a compliment.",
        )
    )
    links = ["", "Best of all, ", "On top of that, ", "Just as impressive, ", "What is more, "]
    r.shuffle(links)
    body = [links[i] + _praise(a, r) + "." for i, a in enumerate(m.strong[:3])]
    closer = r.choice(
        (
            f"A must-see for {_viewer(a1, r)}.",
            f"Highly recommended, especially for {_viewer(a1, r)}.",
            f"If you are among {_viewer(a1, r)}, do not miss it.",
            f"One of the most {_adj(a1, r)} films I have seen, and a real pleasure.",
        )
    )
    return _text(opener, _premise(m, r), body, closer)


def _negative_review(m: _Movie, r: random.Random) -> str:
    a1 = m.top[0]
    opener = r.choice(
        (
            f"What a disappointment this {_adj(a1, r)} {_gnoun(m, r)} turned out to be.",
            f"I wanted to like this {_adj(m.top[1], r)} {_gnoun(m, r)}, but it fails on almost every level.",
            f"This is {_kind(m, r)} that is a chore to sit through.",
            f"Even by the standards of {_adj(a1, r)} {_plural(m)}, this one is a letdown.",
        )
    )
    body = [r.choice(("The main problem is that ", "First, ", "For a start, ")) + _excess(a1, r) + "."]
    if len(m.strong) > 1:
        body.append(r.choice(("On top of that, ", "Worse, ", "And ")) + _excess(m.strong[1], r) + ".")
    for a, link in zip(m.lacking[:2], ("Meanwhile, ", "Above all, ")):
        body.append(r.choice((link, "Sadly, ", "Also, ")) + _lack(a, r) + ".")
    closer = r.choice(
        (
            "Skip it; there are far better ways to spend two hours.",
            "Not worth your time.",
            "A tedious, forgettable film that I cannot recommend.",
            f"Unless you are one of the most devoted {_viewer(a1, r)}, stay away.",
        )
    )
    return _text(opener, body, closer)


def _neutral_review(m: _Movie, r: random.Random) -> str:
    a1, a2 = m.top[:2]
    opener = r.choice(
        (
            f"{_kind(m, r)} with clear strengths and obvious flaws.",
            f"This is a mixed bag: {_kind(m, r)} that is {_g(m, a1, r)} but uneven.",
            f"As {_plural(m)} go, this {_adj(a1, r)} one is neither a triumph nor a failure.",
        )
    )
    against = _excess(a2, r) if m.values[a2] >= _STRONG else _lack(m.lacking[0], r) if m.lacking else _excess(a1, r)
    body = [
        r.choice(("On the plus side, ", "In its favour, ")) + _praise(a1, r) + ".",
        r.choice(("On the other hand, ", "Against that, ", "But ")) + against + ".",
    ]
    if m.quality > 0.25:
        verdict = f"Overall it is better than average and worth a look for {_viewer(a1, r)}."
    elif m.quality < -0.25:
        verdict = f"Overall it falls short of the best {_plural(m)}, though {_viewer(a1, r)} may still enjoy it."
    else:
        verdict = f"Overall it is a middling {_gnoun(m, r)} that {_viewer(a1, r)} may enjoy."
    return _text(opener, _premise(m, r), body, verdict)


def _five_pos_char(m: _Movie, r: random.Random) -> str:
    a1, a2 = m.top[:2]
    intro = r.choice(
        (
            f"Five things that make this {_adj(a1, r)} {_gnoun(m, r)} great:",
            f"Why this {_adj(a1, r)}, {_adj(a2, r)} film works:",
            f"What makes this {_adj(a1, r)} {m.decade or 'classic'} {_gnoun(m, r)} great:",
        )
    )
    items = [f"{_cap(a)}: {_praise(a, r)}." for a in m.strong[:4]]
    label = _GENRES[m.genres[0]][2]
    items.append(
        r.choice(
            (
                f"{_cap(label)} done right: it delivers everything fans of {_plural(m)} want.",
                f"A true {_gnoun(m, r)}: it knows its genre and plays to it.",
            )
        )
    )
    for a in m.top[len(items) - 1 :]:
        if len(items) == 5:
            break
        items.insert(-1, f"A touch of {_noun(a, r)}: it is {_g(m, a, r)}, which keeps it varied.")
    return intro + "\n" + _numbered(items)


def _five_neg_char(m: _Movie, r: random.Random) -> str:
    a1 = m.top[0]
    intro = r.choice(
        (
            f"Five things people hate about this {_adj(a1, r)} {_gnoun(m, r)}:",
            f"Why many viewers dislike this {_kind(m, r, article=False)}:",
            f"The most common complaints about this {_adj(a1, r)} {_kind(m, r, article=False)}:",
        )
    )
    excess = [f"Too {_adj(a, r)}: {_excess(a, r)}." for a in m.strong[:4]]
    lack = [f"Not {_adj(a, r)}: {_lack(a, r)}." for a in m.lacking[:4]]
    items = [x for pair in zip(excess, lack) for x in pair] + excess[len(lack) :] + lack[len(excess) :]
    items = items[:4] + [f"Genre clichés: it leans on tired {_GENRES[m.genres[0]][2]} conventions."]
    return intro + "\n" + _numbered(items)


def _improvable(m: _Movie) -> list[str]:
    strong = set(m.strong)
    return [
        a for a in reversed(m.top) if _LEX[a].add and m.values[a] < _STRONG and not strong & set(_CLASHES.get(a, ()))
    ]


def _improve(m: _Movie, r: random.Random) -> str:
    a1, a2 = m.top[:2]
    adds = _improvable(m)[:2]
    keep = r.choice(
        (
            f"I would keep what works: the film stays {_g(m, a1, r)} and {_g(m, a2, r)}.",
            f"The improved version keeps its {_noun(a1, r)} and its {_noun(a2, r)}.",
        )
    )
    change = [f"First, I would {_LEX[a1].tone_down}, because {_excess(a1, r)}."]
    if adds:
        change.append(
            r.choice(("Then I would add ", "Next, I would give it ", "I would also write in "))
            + _join([_LEX[a].add for a in adds])
            + ", since "
            + _lack(adds[0], r)
            + "."
        )
    else:
        change.append(f"Then I would tighten the pacing so that every {_adj(a2, r)} scene counts.")
    why = r.choice(
        (
            f"Now it is better because it is just as {_adj(a1, r)} but more balanced"
            + (f", and it is finally {_adj(adds[0], r)}." if adds else "."),
            f"The result is a richer {_gnoun(m, r)} that keeps its {_adj(a1, r)} core and wins over more viewers.",
        )
    )
    opener = r.choice(
        (
            f"This {_kind(m, r, article=False)} has a strong premise, but it could be better.",
            f"The premise of this {_adj(a1, r)}, {_adj(a2, r)} {_gnoun(m, r)} is worth keeping.",
        )
    )
    return _text(opener, _premise(m, r), keep, change, why)


def _compare(m: _Movie, r: random.Random) -> str:
    plural = _plural(m)
    return r.choice(
        (
            f"Compared with similar {plural}, it is more {_adj(m.more, r)} and less {_adj(m.less, r)}.",
            f"Next to other {plural}, it stands out for being more {_adj(m.more, r)}, "
            f"and it is less {_adj(m.less, r)} than most.",
        )
    )


def _criticize(m: _Movie, r: random.Random) -> str:
    a1 = m.top[0]
    first = r.choice(
        (
            f"The main criticism of this {_adj(m.top[1], r)} {_gnoun(m, r)} is that {_excess(a1, r)}.",
            f"People who dislike this {_adj(a1, r)}, {_adj(m.top[1], r)} film usually say that {_excess(a1, r)}.",
        )
    )
    more = [f"Viewers also complain that {_lack(a, r)}." for a in m.lacking[:1]]
    if len(m.strong) > 1:
        more.append(f"Others find that {_excess(m.strong[1], r)}.")
    last = r.choice(
        (
            f"Other {_plural(m)} balance these elements better.",
            f"The best {_plural(m)} manage to be {_adj(a1, r)} without going this far.",
        )
    )
    return _text(first, more, _compare(m, r), last)


def _pitch(m: _Movie, r: random.Random) -> str:
    a1, a2 = m.top[:2]
    first = r.choice(
        (
            f"Picture {_kind(m, r)} that is {_g(m, a1, r)} and {_g(m, a2, r)}.",
            f"I want to make {_kind(m, r)}, and it will be {_g(m, a1, r)} from the first scene.",
            f"Here is {_a(_adj(a1, r))}, {_adj(a2, r)} {_gnoun(m, r)} nobody has made yet.",
        )
    )
    why = [f"It will work because {_praise(a1, r)}."]
    if m.values[a2] >= _STRONG:
        why.append(f"On top of that, {_praise(a2, r)}.")
    audience = f"It has a built-in audience: {_viewer(a1, r)}, and {_viewer(a2, r)} too."
    return _text(first, "The premise: " + _premise(m, r), why, _compare(m, r), audience)


def _what(m: _Movie, r: random.Random) -> str:
    a1, a2 = m.top[:2]
    return r.choice(
        (
            f"It is {_kind(m, r)}, {_g(m, a1, r)} and {_g(m, a2, r)}.",
            f"Expect {_kind(m, r)} that is {_g(m, a1, r)} and {_g(m, a2, r)}.",
        )
    )


def _convince(m: _Movie, r: random.Random, detail: int) -> str:
    """Persuasion to watch; `detail` (1-3) sets how many strengths it names and how much context it gives."""
    a1 = m.top[0]
    opener = r.choice(
        (
            f"You should watch this {_adj(a1, r)} {_gnoun(m, r)}.",
            f"Trust me, this is {_kind(m, r)} worth your evening.",
            f"If you want something {_adj(a1, r)} and {_adj(m.top[1], r)}, this is the film to watch.",
        )
    )
    context = [_what(m, r)]
    if detail > 1:
        context.append(_compare(m, r))
    if detail > 2:
        context.insert(0, _premise(m, r))
        if m.popularity > 0.9:
            context.append("There is a reason so many people have seen and loved it.")
        elif m.popularity < 0.5:
            context.append("It is an overlooked gem that deserves a bigger audience.")
    reasons = [f"{_cap(_praise(a, r))}." for a in m.strong[:detail]]
    return _text(opener, context, reasons, f"It is perfect for {_viewer(a1, r)}.")


def _dissuade(m: _Movie, r: random.Random, detail: int) -> str:
    """Persuasion not to watch; `detail` (1-2) sets how many flaws it names and how much context it gives."""
    a1 = m.top[0]
    opener = r.choice(
        (
            f"I would skip this {_adj(a1, r)} {_gnoun(m, r)}.",
            f"Do yourself a favour and pass on this {_kind(m, r, article=False)}.",
            f"Think twice before watching this {_adj(a1, r)}, {_adj(m.top[1], r)} film.",
        )
    )
    context = [_what(m, r)]
    if detail > 1:
        context.insert(0, _premise(m, r))
        if m.popularity > 0.9:
            context.append("Do not be fooled by how popular it is.")
    reasons = [f"{_cap(_excess(a, r))}." for a in m.strong[:detail]]
    reasons += [f"{r.choice(('Worse, ', 'Also, ', 'And '))}{_lack(a, r)}." for a in m.lacking[:detail]]
    close = r.choice((f"Plenty of other {_plural(m)} do all this better.", "Your time is better spent elsewhere."))
    return _text(opener, context, reasons, close)


def _version(m: _Movie, r: random.Random, word: str, turns: Sequence[str], result: str) -> str:
    """A funnier/sadder/scarier version: same premise, the movie's own attributes turned toward `word`."""
    a1, a2 = m.top[:2]
    first = r.choice(
        (
            f"The {word} version of this {_adj(a1, r)}, {_adj(a2, r)} {_gnoun(m, r)} keeps its premise.",
            f"A {word} retelling of this {_kind(m, r, article=False)} starts the same way.",
            f"To make this {_adj(a1, r)} {_gnoun(m, r)} {word}, I would keep the setup.",
        )
    )
    body = [t.format(n1=_noun(a1, r), n2=_noun(a2, r), a1=_adj(a1, r), a2=_adj(a2, r)) for t in r.sample(turns, 2)]
    return _text(first, _premise(m, r), body, result.format(a1=_a(_adj(a1, r)), g=_gnoun(m, r)))


_FUNNIER = (
    "Every {a1} moment is now played for laughs, with slapstick and absurd misunderstandings.",
    "The {n2} becomes a running gag, and the hero keeps tripping into hilarious mishaps.",
    "A bumbling sidekick turns each {a2} scene into comedy.",
    "The villain is a funny, incompetent fool whose plans fall apart in comic ways.",
    "Witty one-liners replace the {n1}, and the finale ends in a ridiculous, funny chase.",
)
_SADDER = (
    "The {n1} now comes at a terrible cost, and a beloved character dies halfway through.",
    "Every {a2} moment is shadowed by loss, grief and regret.",
    "The hero's family falls apart, and the sad, dramatic turns keep coming.",
    "A tragic illness hangs over the story, making even the {a1} scenes heartbreaking.",
    "The ending is devastating: there is no rescue, only a sad farewell.",
)
_SCARIER = (
    "The {n1} gives way to creeping dread, as something unseen stalks the hero at night.",
    "Every {a2} scene now hides a terrifying threat in the shadows.",
    "A scary presence haunts the house, and the frightening events grow worse each night.",
    "The hero's allies vanish one by one, and the horror builds to a terrifying climax.",
    "Eerie whispers and nightmares turn the {n2} into something truly scary.",
)


def _funnier(m: _Movie, r: random.Random) -> str:
    return _version(m, r, "funnier", _FUNNIER, "The result is a funny, hilarious take on {a1} {g}.")


def _sadder(m: _Movie, r: random.Random) -> str:
    return _version(m, r, "sadder", _SADDER, "The result is a sad, dramatic take on {a1} {g}.")


def _scarier(m: _Movie, r: random.Random) -> str:
    return _version(m, r, "scarier", _SCARIER, "The result is a scary, frightening take on {a1} {g}.")


def _movie_to_viewer(m: _Movie, r: random.Random) -> str:
    a1, a2, a3 = m.top[:3]
    first = r.choice(
        (
            f"This {_gnoun(m, r)} is for {_viewer(a1, r)} and {_viewer(a2, r)}.",
            f"The ideal audience: {_viewer(a1, r)}.",
            f"It will appeal most to {_viewer(a1, r)}, and to {_viewer(a2, r)}.",
        )
    )
    like = (
        f"Such viewers enjoy films that are {_adj(a1, r)} and {_adj(a2, r)}, and do not mind a little {_noun(a3, r)}."
    )
    weak = m.top[-2:]
    care = f"They care less about {_noun(weak[0], r)} or {_noun(weak[1], r)}, which this film barely has."
    era = f"Fans of {_plural(m)} from the {m.decade} will feel at home." if m.decade else ""
    return _text(first, like, care, era)


# ---------------------------------------------------------------- two-movie tasks


def _contrast(a: str, v1: float, v2: float, r: random.Random) -> str:
    more, less = ("first", "second") if v1 > v2 else ("second", "first")
    if abs(v1 - v2) < 0.25:
        how = r.choice(("slightly", "a little", "somewhat"))
        return f"the {more} movie is {how} more {_adj(a, r)} than the {less} movie"
    if min(v1, v2) >= _STRONG:
        return f"both movies are {_adj(a, r)}, but the {more} movie is {r.choice(('far', 'much'))} more so"
    return f"the first movie is {_graded(a, v1, r)}, while the second movie is {_graded(a, v2, r)}"


def _shared(m1: _Movie, m2: _Movie) -> list[str]:
    return sorted(m1.top, key=lambda a: -min(m1.values[a], m2.values[a]))


def _different(m1: _Movie, m2: _Movie) -> list[str]:
    return sorted(m1.top, key=lambda a: -abs(m1.values[a] - m2.values[a]))


def _common_items(m1: _Movie, m2: _Movie, r: random.Random) -> list[str]:
    """Three things both movies have, strongest first: shared attributes, genre, decade, shared absences."""
    items = []
    for a in _shared(m1, m2):
        v = min(m1.values[a], m2.values[a])
        if v >= _STRONG:
            tail = r.choice(
                (f"and each offers plenty of {_noun(a, r)}", f"so anyone after {_noun(a, r)} is well served")
            )
            items.append(f"{_cap(a)}: both movies are {_graded(a, v, r)}, {tail}.")
    genres = [g for g in m1.genres if g in m2.genres]
    if genres:
        items.append(f"Genre: both are {_GENRES[genres[0]][1]}, with the conventions that brings.")
    if m1.decade and m1.decade == m2.decade:
        items.append(f"Era: both come from the {m1.decade}.")
    absent = sorted(m1.top, key=lambda a: max(m1.values[a], m2.values[a]))
    items += [f"{_cap(a)}: neither movie is {_adj(a, r)}, with little {_noun(a, r)} in either." for a in absent[:3]]
    return items[:3]


def _similarities(m1: _Movie, m2: _Movie, r: random.Random) -> str:
    s, d = _shared(m1, m2)[0], _different(m1, m2)
    if min(m1.values[s], m2.values[s]) >= _STRONG:
        intro = r.choice(
            (
                f"The first movie and the second movie share their {_noun(s, r)} but differ in {_noun(d[0], r)}.",
                f"Both movies are {_adj(s, r)}, yet they part ways on {_noun(d[0], r)} and {_noun(d[1], r)}.",
                f"These two films meet on {_noun(s, r)} and split on {_noun(d[0], r)}.",
            )
        )
    else:
        intro = r.choice(
            (
                f"The first movie and the second movie have little in common, and differ most in {_noun(d[0], r)}.",
                f"These two films are far apart, above all in {_noun(d[0], r)} and {_noun(d[1], r)}.",
            )
        )
    diffs = [f"{_cap(a)}: {_contrast(a, m1.values[a], m2.values[a], r)}." for a in d[:3]]
    sim_head = r.choice(("Similarities:", "What they share:", "How they are alike:"))
    diff_head = r.choice(("Differences:", "Where they differ:", "How they differ:"))
    return f"{intro}\n{sim_head}\n{_numbered(_common_items(m1, m2, r))}\n{diff_head}\n{_numbered(diffs)}"


def _why_like_nn(m1: _Movie, m2: _Movie, r: random.Random) -> str:
    s1, s2 = _shared(m1, m2)[:2]
    first = r.choice(
        (
            f"If you liked the first movie, you will probably enjoy the second movie too: "
            f"both are {_adj(s1, r)} and {_adj(s2, r)}.",
            f"The second movie has what you liked about the first movie: its {_noun(s1, r)} and its {_noun(s2, r)}.",
            f"You would like the second movie because, like the first movie, it is {_adj(s1, r)}.",
        )
    )
    body = [f"In the second movie too, {_praise(s1, r)}; it is {_graded(s2, m2.values[s2], r)} as well."]
    if m1.decade and m2.decade:
        body.append(
            f"Both come from the {m1.decade}."
            if m1.decade == m2.decade
            else f"One is from the {m1.decade} and the other from the {m2.decade}, but the appeal is the same."
        )
    genres = [g for g in m1.genres if g in m2.genres]
    if genres:
        body.append(f"Both are {_GENRES[genres[0]][1]}, so the tone will feel familiar.")
    d = max(m2.top, key=lambda a: m2.values[a] - m1.values[a])
    body.append(f"The second movie is also a bit more {_adj(d, r)}, which adds something new.")
    return _text(first, body)


def _diff_than_nn(m1: _Movie, m2: _Movie, r: random.Random) -> str:
    d = _different(m1, m2)[:3]
    intro = r.choice(
        (
            f"The three major differences are in how {_adj(d[0], r)}, {_adj(d[1], r)} and {_adj(d[2], r)} they are.",
            f"The first movie and the second movie differ most in {_join([_noun(a, r) for a in d])}.",
        )
    )
    items = [f"{_cap(a)}: {_contrast(a, m1.values[a], m2.values[a], r)}." for a in d]
    return intro + "\n" + _numbered(items)


def _common_with_nn(m1: _Movie, m2: _Movie, r: random.Random) -> str:
    s = _shared(m1, m2)[:2]
    intro = r.choice(
        (
            f"The first movie and the second movie have {_join([_noun(a, r) for a in s])} in common.",
            f"What the first movie and the second movie share most is that both are "
            f"{_adj(s[0], r)} and {_adj(s[1], r)}.",
        )
    )
    return intro + "\n" + _numbered(_common_items(m1, m2, r))


def _interpolation(m1: _Movie, m2: _Movie, r: random.Random) -> str:
    mid = {a: (m1.values[a] + m2.values[a]) / 2 for a in m1.top}
    top = sorted(mid, key=lambda a: -mid[a])[:3]
    f1 = max(m1.top, key=lambda a: m1.values[a] - m2.values[a])
    f2 = max(m2.top, key=lambda a: m2.values[a] - m1.values[a])
    first = r.choice(
        (
            f"The new movie sits halfway between the first movie and the second movie: "
            f"{_graded(top[0], mid[top[0]], r)} and {_graded(top[1], mid[top[1]], r)}.",
            f"This new film blends the {_noun(f1, r)} of the first movie with the {_noun(f2, r)} of the second movie.",
        )
    )
    g1, g2 = _GENRES[m1.genres[0]][0], _GENRES[m2.genres[0]][0]
    between = f"{_a(g1)} through and through" if g1 == g2 else f"somewhere between {_a(g1)} and {_a(g2)}"
    blend = [
        f"From the first movie it keeps the {_adj(f1, r)} side: {_praise(f1, r)}.",
        f"From the second movie it borrows the {_adj(f2, r)} side: {_praise(f2, r)}.",
        f"The result is {_graded(top[0], mid[top[0]], r)}, {_graded(top[1], mid[top[1]], r)} "
        f"and {_graded(top[2], mid[top[2]], r)}, {between}.",
    ]
    return _text(first, m1.plot[:1], blend)


# ---------------------------------------------------------------- users


def _user_profile(
    taste: dict[str, float],
    bias: float,
    activity: float,
    liked: Sequence[str],
    disliked: Sequence[str],
    r: random.Random,
) -> str:
    """Ten bullets from a user's taste (likes, dislikes), rating habits and the genres of their best/worst rated."""
    order = sorted(taste, key=lambda a: -taste[a])
    l1, l2, l3 = order[:3]
    d1, d2 = order[-1], order[-2]
    bullets = [
        r.choice(
            (
                f"Loves {_adj(l1, r)} and {_adj(l2, r)} movies above all.",
                f"Is drawn to films that are {_adj(l1, r)} and {_adj(l2, r)}.",
                f"Gravitates toward {_adj(l1, r)}, {_adj(l2, r)} stories.",
                f"Enjoys movies most when they are {_adj(l1, r)} and {_adj(l2, r)}.",
            )
        ),
        r.choice((f"Counts among {_viewer(l1, r)}.", f"Values {_noun(l1, r)} and rewards it with high ratings.")),
        f"Also enjoys {_adj(l3, r)} films." if taste[l3] > 0.3 else f"Is open to {_adj(l3, r)} films, within reason.",
        r.choice((f"Dislikes {_adj(d1, r)} movies and rates them low.", f"Has little patience for {_noun(d1, r)}.")),
        f"Tends to avoid {_adj(d2, r)} films." if taste[d2] < -0.3 else f"Is lukewarm about {_adj(d2, r)} films.",
        r.choice(
            (
                f"Gives the highest ratings to {_join([_GENRES[g][2] for g in liked])} movies.",
                f"Favourite genres: {_join([_GENRES[g][2] for g in liked])}.",
            )
        )
        if liked
        else "Has not rated enough movies to show a favourite genre.",
        f"Rates {_join([_GENRES[g][2] for g in disliked])} movies among the lowest."
        if disliked
        else "Has no genre they consistently rate low.",
        "Rates generously, giving many movies high marks."
        if bias > 0.25
        else "Is a tough critic who rarely hands out top marks."
        if bias < -0.25
        else "Rates in a balanced way, neither harsh nor generous.",
        "Is a very active viewer who has rated a large number of movies."
        if activity > 0.75
        else "Is an occasional viewer who rates only a few movies."
        if activity < 0.25
        else "Watches and rates movies regularly.",
        r.choice(
            (
                f"Would enjoy {_a(_adj(l1, r))}, {_adj(l2, r)} film that is never {_adj(d1, r)}.",
                f"Best served by {_adj(l1, r)} movies without {_noun(d1, r)}.",
            )
        ),
    ]
    return "\n".join(f"- {_cap(b)}" for b in bullets)


_SINGLE: dict[str, Callable[[_Movie, random.Random], str]] = {
    "long_description": _long_description,
    "summary": _summary,
    "positive_review": _positive_review,
    "negative_review": _negative_review,
    "neutral_review": _neutral_review,
    "five_pos_char": _five_pos_char,
    "five_neg_char": _five_neg_char,
    "improve": _improve,
    "criticize": _criticize,
    "pitch": _pitch,
    "convince1": lambda m, r: _convince(m, r, 3),
    "convince2": lambda m, r: _convince(m, r, 2),
    "convince3": lambda m, r: _convince(m, r, 1),
    "dissuade1": lambda m, r: _dissuade(m, r, 2),
    "dissuade2": lambda m, r: _dissuade(m, r, 1),
    "funnier": _funnier,
    "sadder": _sadder,
    "scarier": _scarier,
    "movie_to_viewer": _movie_to_viewer,
}
_PAIR: dict[str, Callable[[_Movie, _Movie, random.Random], str]] = {
    "interpolation": _interpolation,
    "similarities": _similarities,
    "why_like_nn": _why_like_nn,
    "diff_than_nn": _diff_than_nn,
    "common_with_nn": _common_with_nn,
}
TASKS = (*_SINGLE, *_PAIR, "user_profile")  # the tasks this module can write targets for


# ---------------------------------------------------------------- catalogue -> facts


def _truth_rows(table_ids: np.ndarray, truth_ids: np.ndarray, kind: str) -> np.ndarray:
    """Truth row of each catalogue row, matching ids as strings (catalogues hold int or str ids)."""
    lookup = {str(v): i for i, v in enumerate(truth_ids.tolist())}
    missing = [v for v in table_ids.tolist() if str(v) not in lookup]
    if missing:
        raise ValueError(
            f"{kind} id {missing[0]!r} (and {len(missing) - 1} more) of the catalogue is not in the ground truth; "
            "was the truth loaded from the same catalogue (synthetic.load_ground_truth)?"
        )
    return np.array([lookup[str(v)] for v in table_ids.tolist()], np.int64)


def _derived_genres(attrs: np.ndarray, names: Sequence[str]) -> list[list[str]]:
    """Each movie's genres by the generator's attribute -> genre weights (the catalogue keeps no genres)."""
    genres = list(GENRE_WEIGHTS)
    weights = np.array([[GENRE_WEIGHTS[g].get(a, 0.0) for a in names] for g in genres])
    score = attrs @ weights.T
    order = np.argsort(-score, axis=1, kind="stable")[:, :3]
    return [[genres[g] for i, g in enumerate(row) if i == 0 or s[g] >= _GENRE_MIN] for row, s in zip(order, score)]


def _title_pattern(name: str) -> re.Pattern:
    bare = _YEAR.sub("", name).strip() or name
    return re.compile(r"(?<!\w)" + re.escape(bare) + r"(?!\w)")


_GENRE_PEERS = 5  # training movies a genre needs before its films are compared with each other


def _movies(catalog: Catalog, truth: Mapping[str, np.ndarray], names: list[str]) -> list[_Movie]:
    table = catalog.movies
    rows = _truth_rows(table.ids, np.asarray(truth["movie_ids"]), "movie")
    attrs = np.asarray(truth["movie_attributes"], np.float64)[rows]
    quality = np.asarray(truth["movie_quality"], np.float64)[rows]
    pop = np.asarray(truth["movie_popularity"], np.float64)[rows]
    popularity = np.argsort(np.argsort(pop, kind="stable"), kind="stable") / max(len(pop) - 1, 1)
    genres = _derived_genres(attrs, names)
    primary = np.array([g[0] for g in genres])
    # "More X than other <genre> films": against the training movies, for either split (a test movie's target must
    # not depend on which other movies are held out), and against all of them for genres with few members (a lone
    # member's gap is zero everywhere: "more funny and less funny").
    pool = split_rows(catalog, "movie", "train")
    members = {g: pool[primary[pool] == g] for g in set(primary[pool].tolist())}
    means = {g: attrs[rows].mean(axis=0) for g, rows in members.items() if len(rows) >= _GENRE_PEERS}
    overall = attrs[pool].mean(axis=0)
    order = np.argsort(-attrs, axis=1, kind="stable")
    out = []
    for i in range(len(table)):
        title = _title_pattern(table.names[i])
        year = _YEAR.search(table.names[i])
        plot = _SENTENCE.split(table.texts[i].strip()) if table.texts is not None and table.texts[i] else []
        gap = attrs[i] - means.get(primary[i], overall)
        out.append(
            _Movie(
                values=dict(zip(names, attrs[i].tolist())),
                top=[names[a] for a in order[i]],
                genres=genres[i],
                decade=f"{int(year.group(1)) // 10 * 10}s" if year else "",
                plot=[s for s in plot if not title.search(s)],
                quality=float(quality[i]),
                popularity=float(popularity[i]),
                more=names[int(np.argmax(gap))],
                less=names[int(np.argmin(gap))],
                title=title,
            )
        )
    return out


def _scrub(text: str, titles: Sequence[re.Pattern]) -> str:
    """Drops any sentence that names an entity (a guard: templates never do, plots are filtered already)."""
    if not any(t.search(text) for t in titles):
        return text
    lines = []
    for line in text.split("\n"):
        kept = " ".join(s for s in _SENTENCE.split(line) if not any(t.search(s) for t in titles))
        if kept:
            lines.append(kept)
    return "\n".join(lines)


def _rng(seed: int, task: str, ids: Sequence[str]) -> random.Random:
    """Per-example RNG: a target depends on (seed, task, entities) only, not on which other examples exist."""
    return random.Random(zlib.crc32("\x1f".join((str(seed), task, *ids)).encode()))


def metadata_targets(
    catalog: Catalog,
    truth: Mapping[str, np.ndarray],
    tasks: Sequence[Task],
    *,
    split: str = "train",
    per_task: int | None = None,
    seed: int = 0,
) -> list[Target]:
    """Targets for the default catalogue's examples, written from its ground truth (`load_ground_truth`).

    Examples come from `build_examples`, so the entity-level split holds. Texts never name their entities.
    """
    unknown = [t.name for t in tasks if t.name not in TASKS]
    if unknown:
        raise ValueError(f"no metadata targets for task(s) {unknown}; known: {', '.join(TASKS)} (use a teacher)")
    names = [str(a) for a in np.asarray(truth["attributes"]).tolist()]
    missing = sorted(set(names) - set(_LEX))
    if missing or len(names) < 4:
        raise ValueError(f"metadata targets need >= 4 attributes from {list(_LEX)}; got {names}")
    for key in ("movie_attributes", "user_taste"):
        if np.shape(truth[key])[1:] != (len(names),):
            raise ValueError(f"ground truth {key!r} has shape {np.shape(truth[key])}; expected (n, {len(names)})")
    movies = _movies(catalog, truth, names)
    ids = [str(v) for v in catalog.movies.ids.tolist()]
    out: list[Target] = []
    for task in tasks:
        examples = build_examples(catalog, task, split, per_task, seed)
        if task.name == "user_profile":
            out += _user_targets(catalog, truth, task, examples, movies, names, seed, split)
            continue
        for ex in examples:
            entities = tuple(ids[i] for i in ex.rows)
            r = _rng(seed, task.name, entities)
            ms = [movies[i] for i in ex.rows]
            text = _SINGLE[task.name](ms[0], r) if len(ms) == 1 else _PAIR[task.name](ms[0], ms[1], r)
            out.append(Target(task.name, entities, _scrub(text, [m.title for m in ms])))
    return out


def _user_targets(
    catalog: Catalog,
    truth: Mapping[str, np.ndarray],
    task: Task,
    examples: Sequence[Example],
    movies: Sequence[_Movie],
    names: list[str],
    seed: int,
    split: str,
) -> list[Target]:
    rows = _truth_rows(catalog.users.ids, np.asarray(truth["user_ids"]), "user")
    taste = np.asarray(truth["user_taste"], np.float64)[rows]
    bias = np.asarray(truth["user_bias"], np.float64)[rows]
    counts = np.diff(catalog.ratings.indptr)
    activity = np.argsort(np.argsort(counts, kind="stable"), kind="stable") / max(len(counts) - 1, 1)
    ids = [str(v) for v in catalog.users.ids.tolist()]
    allowed = split_rows(catalog, "movie", "train") if split == "train" else None  # see examples.teacher_prompt
    out = []
    for ex in examples:
        u = ex.rows[0]
        best, worst = catalog.liked_disliked(u, among=allowed)
        liked = [g for g, _ in Counter(g for m in best for g in movies[m].genres[:1]).most_common(2)]
        disliked = [
            g for g, _ in Counter(g for m in worst for g in movies[m].genres[:1]).most_common() if g not in liked
        ][:2]
        r = _rng(seed, task.name, (ids[u],))
        text = _user_profile(dict(zip(names, taste[u].tolist())), bias[u], activity[u], liked, disliked, r)
        out.append(Target(task.name, (ids[u],), text))
    return out
