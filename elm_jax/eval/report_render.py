"""report.json -> one self-contained HTML page (figures as base64 PNG), laid out like the paper's §4.

Everything shown is read from the report dict, so the page and report.json always agree: each estimate appears
as "mean [low, high]" with three decimals, and the figures are drawn from the same values.
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONDITIONS = {  # condition -> (label, colour)
    "elm": ("ELM", "#1f77b4"),
    "text": ("text-only LLM", "#ff7f0e"),
    "zero": ("ELM, zero vector", "#7f7f7f"),
    "random": ("ELM, random vector", "#bcbd22"),
    "shuffled": ("ELM, shuffled (chance)", "#9467bd"),
}
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "text.parse_math": False,  # labels are movie texts and titles: "$5,000 ... $3 million" is not mathtext
}
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .8em 0; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { font-family: ui-monospace, Menlo, monospace; white-space: nowrap; }
td.paper, th.paper { background: #f7f7ef; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #555; font-size: .9em; } .warn { background: #fff3cd; padding: .5em .8em; border-radius: 4px; }
.text { white-space: pre-wrap; font-size: .9em; max-width: 60em; font-family: system-ui, sans-serif; }
details { margin: .5em 0; }
"""


def fmt(estimate: Mapping[str, Any] | None) -> str:
    """'0.912 [0.901, 0.925]', or '–' where the value is undefined."""
    if not estimate or estimate.get("mean") is None:
        return "–"
    return f"{estimate['mean']:.3f} [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _mean(e: Mapping[str, Any] | None) -> float:
    return float("nan") if not e or e.get("mean") is None else e["mean"]


def _err(e: Mapping[str, Any] | None) -> tuple[float, float]:
    if not e or e.get("mean") is None:
        return 0.0, 0.0
    return e["mean"] - e["ci_low"], e["ci_high"] - e["mean"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], paper_cols: Sequence[int] = ()) -> str:
    head = "".join(f'<th class="paper">{h}</th>' if i in paper_cols else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num paper" if i in paper_cols else ("num" if i else "")}">{c}</td>' for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


# --- Table 2 -------------------------------------------------------------------------------------------------------


def _table2(t2: Mapping[str, Any]) -> str:
    tasks = list(t2["tasks"])
    conditions = [c for c in CONDITIONS if any(c in t2["tasks"][n] for n in tasks)]
    tables = ""
    for metric, title in (("sc", "SC (cosine)"), ("bc", "BC (Spearman; user task: NDCG)")):
        rows = []
        for name in tasks:
            paper = t2["paper"].get(name)
            cells = [fmt(t2["tasks"][name].get(c, {}).get(metric)) for c in conditions]
            rows.append([_esc(name), *cells, f"{paper[metric]:.2f}" if paper else ""])
        header = ["task", *[CONDITIONS[c][0] for c in conditions], "paper"]
        tables += f"<h3>{title}</h3>" + _table(header, rows, (len(header) - 1,))
    pooled = [[_esc(k), fmt(v.get("sc")), fmt(v.get("bc"))] for k, v in t2["overall"].items()]
    s = t2.get("settings", {})
    return (
        "<h2>Table 2: consistency on held-out entities</h2>"
        f'<p class="note">SC: cosine between the encoder embedding of a generation and the entity\'s semantic vector '
        "(pair tasks: the pair's mean). BC: movie tasks, Spearman over the movie's raters between their ratings and "
        "the text's similarity to each rater; user task, NDCG of the user's movies ranked by similarity to the "
        f"generated profile. Mean over {s.get('max_examples_per_task', '?')} test entities per task at most, with a "
        f"{int(100 * s.get('confidence', 0.95))}% bootstrap interval. Controls: the ELM given zero or random vectors, "
        "and its own texts scored against another test entity (shuffled, chance level); text-only: the same LLM "
        "without adapter, told the title. Paper column (shaded): Table 2 of the paper, a different model and data.</p>"
        + _png(_table2_figure(t2, tasks, conditions))
        + tables
        + "<h3>Pooled by task group</h3>"
        + _table(["group/condition", "SC", "BC"], pooled)
    )


def _table2_figure(t2: Mapping[str, Any], tasks: Sequence[str], conditions: Sequence[str]):
    with plt.rc_context(STYLE):
        height = 1.4 + len(tasks) * (0.25 + 0.07 * len(conditions))
        fig, axes = plt.subplots(1, 2, figsize=(12, height), sharey=True)
        offsets = {c: (i - (len(conditions) - 1) / 2) * 0.6 / max(1, len(conditions)) for i, c in enumerate(conditions)}
        y = {name: len(tasks) - 1 - i for i, name in enumerate(tasks)}
        for ax, metric, title in zip(
            axes, ("sc", "bc"), ("SC (cosine)", "BC (Spearman; user task: NDCG)"), strict=True
        ):
            for c in conditions:
                label, colour = CONDITIONS[c]
                pts = [(y[n] + offsets[c], t2["tasks"][n].get(c, {}).get(metric)) for n in tasks]
                pts = [(yy, e) for yy, e in pts if e and e.get("mean") is not None]
                if pts:
                    ax.errorbar(
                        [_mean(e) for _, e in pts],
                        [yy for yy, _ in pts],
                        xerr=list(zip(*[_err(e) for _, e in pts], strict=True)),
                        fmt="o",
                        ms=4,
                        color=colour,
                        label=label,
                        capsize=2,
                        lw=1,
                    )
            paper = [(y[n], t2["paper"][n][metric]) for n in tasks if n in t2["paper"]]
            if paper:
                ax.scatter([v for _, v in paper], [yy for yy, _ in paper], marker="x", color="k", s=30, label="paper")
            ax.axvline(0, color="#aaa", lw=0.8)
            ax.set_title(title)
            ax.set_xlim(-1.0 if metric == "bc" else -0.2, 1.0)
            ax.set_ylim(-0.6, len(tasks) - 0.4)
            ax.grid(axis="x", alpha=0.3)
        axes[0].set_yticks(list(y.values()), list(y))
        handles, labels = axes[0].get_legend_handles_labels()
        fig.tight_layout()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, 1.0), frameon=False)
        return fig


# --- Fig. 3 --------------------------------------------------------------------------------------------------------


def _fig3(f3: Mapping[str, Any]) -> str:
    tasks = list(f3["tasks"])
    if not tasks:
        return "<h2>Fig. 3: interpolated movies and users</h2><p>No interpolation task was trained.</p>"
    rows = []
    for name in tasks:
        r = f3["tasks"][name]
        paper = f3["paper"].get(name)
        rows.append(
            [_esc(name), r["metric"].upper(), fmt(r["elm"]), fmt(r["text"])]
            + ([f"{v:.2f}" for v in paper.values()] if paper else ["", "", ""])
        )
    paper_models = list(next(iter(f3["paper"].values())))
    header = ["task", "metric", "ELM (this run)", "text-only LLM (this run)"] + [f"paper: {m}" for m in paper_models]
    skipped = f"<p class='note'>Not trained, left out: {_esc(', '.join(f3['not_trained']))}.</p>" * bool(
        f3["not_trained"]
    )
    return (
        "<h2>Fig. 3: interpolated movies and users</h2>"
        f"<p class='note'>Movies: {len(f3['movies'])} movies mixed with the anchor <b>{_esc(f3['anchor'])}</b> at "
        f"alpha = {f3['alpha']} (w = (1 - alpha) w_movie + alpha w_anchor), SC against the mixed vector. The "
        'text-only LLM is asked the task about "the movie that lies halfway between" the two titles. Users: random '
        "pairs mixed half and half, BC = NDCG against the CF-predicted ratings of the mixed vector; the text-only "
        "LLM is given both users' liked and disliked titles and asked for an interpolated profile. The paper's "
        "bars (right) are read off its Fig. 3: a different model, data and encoder.</p>"
        + skipped
        + _png(_fig3_figure(f3, tasks))
        + _table(header, rows, (4, 5, 6))
    )


def _fig3_figure(f3: Mapping[str, Any], tasks: Sequence[str]):
    with plt.rc_context(STYLE):
        fig, (ax, axp) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1]})
        x = range(len(tasks))
        for k, (key, c) in enumerate((("elm", "elm"), ("text", "text"))):
            means = [_mean(f3["tasks"][n][key]) for n in tasks]
            errs = list(zip(*[_err(f3["tasks"][n][key]) for n in tasks]))
            label = CONDITIONS[c][0]
            ax.bar([i + (k - 0.5) * 0.38 for i in x], means, 0.38, yerr=errs, color=CONDITIONS[c][1], label=label)
        ax.set_title(f"This run: anchor {textwrap.shorten(f3['anchor'], 40)}, alpha = {f3['alpha']}", pad=30)
        ax.set_xticks(list(x), [_tick(n, f3["tasks"][n]["metric"]) for n in tasks], rotation=35, ha="right")
        ax.set_ylabel("consistency")
        ax.set_xlim(-0.6, max(len(tasks), 4) - 0.4)  # bars keep their width when few tasks were trained
        ax.set_ylim(min(0.0, *[_mean(f3["tasks"][n][k]) for n in tasks for k in ("elm", "text")]) - 0.02, 1.0)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
        ptasks = list(f3["paper"])
        models = list(next(iter(f3["paper"].values())))
        colours = ("#1f77b4", "#ff7f0e", "#2ca02c")
        for k, model in enumerate(models):
            axp.bar(
                [i + (k - 1) * 0.27 for i in range(len(ptasks))],
                [f3["paper"][n][model] for n in ptasks],
                0.27,
                color=colours[k],
                alpha=0.55,
                label=model,
            )
        metric = {n: "bc" if n.startswith("user") else "sc" for n in ptasks}
        axp.set_xticks(range(len(ptasks)), [_tick(n, metric[n]) for n in ptasks], rotation=35, ha="right")
        axp.set_title("Paper, Fig. 3 (read off the plot; other model and data)", pad=30)
        axp.set_ylim(0, 1.0)
        axp.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
        fig.tight_layout()
        return fig


def _tick(name: str, metric: str) -> str:
    return f"{name}\n(BC, NDCG)" if metric == "bc" else name


# --- Fig. 4 --------------------------------------------------------------------------------------------------------


def _series_label(key: str, concepts: Mapping[str, Any]) -> str:
    if key == "interpolation":
        return "interpolation with anchor"
    concept = key.split(":", 1)[1]
    return f"CAV: {concept} (acc. {concepts[concept]['accuracy']:.2f}, gap {concepts[concept]['gap']:.2g})"


def _concepts_note(concepts: Mapping[str, Any], spread: float, kind: str) -> str:
    if not concepts:
        return "No concept passed the accuracy threshold (report.min_cav_accuracy)."
    listed = ", ".join(
        f"{_esc(c)} (held-out accuracy {v['accuracy']:.2f}, gap {v['gap']:.3g})" for c, v in concepts.items()
    )
    return (
        f"Concepts: {listed}. A move of alpha = 1 shifts a vector by its gap; the {kind} sit at a median distance of "
        f"{spread:.3g} from their centroid, so a gap far below that barely moves them."
    )


def _fig4(f4: Mapping[str, Any]) -> str:
    head = "<h2>Fig. 4: consistency along interpolations and CAVs</h2>"
    if not f4["tasks"]:
        return head + "<p>No sweep task was trained.</p>"
    tables = ""
    for name, lines in f4["tasks"].items():
        rows = [[_esc(_series_label(k, f4["concepts"]))] + [fmt(e) for e in series] for k, series in lines.items()]
        tables += f"<h3>{_esc(name)}: SC</h3>" + _table(["series"] + [f"alpha={a:g}" for a in f4["alphas"]], rows)
    return (
        head
        + "<p class='note'>SC against the given vector at each alpha. Interpolation: w = (1 - alpha) w_movie + alpha "
        f"w_anchor with anchor <b>{_esc(f4['anchor'])}</b>. CAV: w + alpha * gap * v, where gap is the distance "
        "between tagged and untagged movies along the concept's unit direction v (so alpha = 1 moves a movie as far "
        f"as a typical tagged movie sits). {_concepts_note(f4['concepts'], f4['spread'], 'movies')} The paper "
        "(five pos characteristics, long description; romantic, funny, animated, terrifying) reads SC of about "
        "0.87-0.95 throughout, dipping near alpha = 0.6 for interpolation and falling with alpha along CAVs.</p>"
        + _png(_fig4_figure(f4))
        + tables
    )


def _fig4_figure(f4: Mapping[str, Any]):
    tasks = list(f4["tasks"])
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 4.4), squeeze=False)
        alphas = f4["alphas"]
        for ax, name in zip(axes[0], tasks):
            series = f4["tasks"][name]
            _line(ax, alphas, series["interpolation"], "k", _series_label("interpolation", {}), "--")
            for i, key in enumerate(k for k in series if k != "interpolation"):
                _line(ax, alphas, series[key], plt.get_cmap("tab10")(i % 10), _series_label(key, f4["concepts"]))
            ax.set_title(name)
            ax.set_xlabel("alpha")
            ax.set_ylabel("SC (cosine)")
            ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.tight_layout()
        ncol = min(len(labels), 2 * len(tasks) - 1)  # about one 6-inch column of labels per panel
        fig.legend(handles, labels, loc="upper center", ncol=ncol, bbox_to_anchor=(0.5, 0), frameon=False)
        return fig


def _line(ax, x: Sequence[float], series: Sequence[Mapping[str, Any]], colour, label: str, style: str = "-") -> None:
    means = [_mean(e) for e in series]
    ax.plot(x, means, style, marker="o", ms=4, color=colour, label=label)
    lows = [e["ci_low"] if e.get("mean") is not None else float("nan") for e in series]
    highs = [e["ci_high"] if e.get("mean") is not None else float("nan") for e in series]
    ax.fill_between(x, lows, highs, color=colour, alpha=0.12, lw=0)


# --- Fig. 5 --------------------------------------------------------------------------------------------------------


def _fig5(f5: Mapping[str, Any]) -> str:
    head = "<h2>Fig. 5: users moved along behavioral CAVs</h2>"
    if "skipped" in f5:
        return head + f"<p>{_esc(f5['skipped'])}.</p>"
    refs = [["random ranking", fmt(f5["random"]), f"{f5['paper']['random']:.3f}"]]
    if "ground_truth" in f5:
        refs.append(["ground-truth profile", fmt(f5["ground_truth"]), f"{f5['paper']['ground_truth']:.3f}"])
    rows = [
        [f"{_esc(c)} (accuracy {f5['concepts'][c]['accuracy']:.2f}, gap {f5['concepts'][c]['gap']:.3g})"]
        + [fmt(e) for e in series]
        for c, series in f5["lines"].items()
    ]
    missing = f"<p class='note'>{_esc(f5['ground_truth_missing'])}.</p>" if "ground_truth_missing" in f5 else ""
    return (
        head + f"<p class='note'>{len(f5['users'])} users moved to w + alpha * gap * v along CAVs learned on movie "
        f"vectors of the same matrix factorisation. BC: NDCG{_at_k(f5)} of all movies ranked by similarity to "
        "the generated profile, against the CF-predicted ratings of the moved vector. References on the unmoved "
        "users: a random ranking and the ground-truth profile (the target text the ELM was trained towards). The "
        "paper's references (Fig. 5, read off the plot: random about 0.305, ground truth about 0.487) come from a "
        f"different model and data. {_concepts_note(f5['concepts'], f5['spread'], 'users')}</p>"
        + missing
        + (_png(_fig5_figure(f5)) if f5["lines"] else "<p>No behavioral CAV passed the accuracy threshold.</p>")
        + _table(["reference", "this run", "paper"], refs, (2,))
        + _table(["concept"] + [f"alpha={a:g}" for a in f5["alphas"]], rows)
    )


def _at_k(f5: Mapping[str, Any]) -> str:
    return f"@{f5['ndcg_k']}" if f5.get("ndcg_k") else ""


def _fig5_figure(f5: Mapping[str, Any]):
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(10, 5))
        cmap = plt.get_cmap("tab10")
        for i, (concept, series) in enumerate(f5["lines"].items()):
            label = f"{concept} (acc. {f5['concepts'][concept]['accuracy']:.2f})"
            _line(ax, f5["alphas"], series, cmap(i % 10), label, ("-", "-.")[i // 10 % 2])
        refs = [("random", "random ranking", "#555", ":")]
        if "ground_truth" in f5:
            refs.append(("ground_truth", "ground-truth profile", "#2ca02c", "--"))
        for key, label, colour, style in refs:
            ax.axhline(_mean(f5[key]), color=colour, ls=style, lw=1.5, label=f"{label} (unmoved)")
        ax.set_xlabel("alpha (distance moved along the CAV)")
        ax.set_ylabel(f"BC (NDCG{_at_k(f5)} vs CF-predicted ratings)")
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        return fig


# --- examples and the map ------------------------------------------------------------------------------------------


def _examples(report: Mapping[str, Any]) -> str:
    out = ["<h2>Example generations</h2>"]
    for name, examples in report["examples"].items():
        cells = []
        for i, ex in enumerate(examples):
            texts = "".join(
                f"<p><b>{_esc(CONDITIONS.get(c, (c,))[0])}:</b></p><div class='text'>{_esc(t)}</div>"
                for c, t in ex["texts"].items()
            )
            target = f"<p><b>target:</b></p><div class='text'>{_esc(ex['target'])}</div>" if ex["target"] else ""
            opened = " open" * (i == 0)
            cells.append(
                f"<details{opened}><summary>{_esc(' + '.join(ex['inputs']))}</summary>{texts}{target}</details>"
            )
        out.append(f"<h3>{_esc(name)} (held-out)</h3>" + "".join(cells))
    out.append("<h3>From the experiments (interpolated and moved vectors)</h3>")
    for section, title in (("fig3", "interpolation, alpha = 0.5"), ("fig4", "movie CAVs"), ("fig5", "user CAVs")):
        for ex in report[section].get("examples", []):
            what = " x ".join(ex["inputs"]) + (f" + CAV {ex['concept']}" if "concept" in ex else "")
            scores = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in ex.items() if k.endswith(("_sc", "_bc")))
            body = f"<p><b>ELM</b> (alpha = {ex['alpha']:g}):</p><div class='text'>{_esc(ex['elm'])}</div>"
            if "text" in ex:
                body += (
                    f"<p><b>text-only LLM</b>, asked: <i>{_esc(ex['text_prompt'])}</i></p>"
                    f"<div class='text'>{_esc(ex['text'])}</div>"
                )
            out.append(
                f"<details><summary>{_esc(title)}: {_esc(ex['task'])}: {_esc(what)} ({_esc(scores)})</summary>"
                f"{body}</details>"
            )
    return "".join(out)


def _map(m: Mapping[str, Any]) -> str:
    head = "<h2>Map: an interpolation path in the semantic movie space</h2>"
    if "skipped" in m:
        return head + f"<p>{_esc(m['skipped'])}.</p>"
    rows = [[f"{p['alpha']:.2f}", f"{p['sc']:.3f}", f"<div class='text'>{_esc(p['text'])}</div>"] for p in m["path"]]
    return (
        head + f"<p class='note'>PCA (first two components) of all movies' unit semantic vectors. Filled circles: the "
        f"vectors from <b>{_esc(m['start'])}</b> (alpha = 0) to <b>{_esc(m['anchor'])}</b> (alpha = 1); open "
        f"circles: where the ELM's {_esc(m['task'])} text for each lands when re-embedded by the encoder, joined "
        "to its vector. The closer they sit, the higher the SC.</p>"
        + _png(_map_figure(m))
        + _table(["alpha", "SC", "decoded text"], rows)
    )


def _map_figure(m: Mapping[str, Any]):
    with plt.rc_context(STYLE):
        fig, (ax, axt) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1.1, 1]})
        xs, ys = zip(*m["movies"])
        ax.scatter(xs, ys, s=6, color="#ccc", label="movies", rasterized=True)
        cmap = plt.get_cmap("viridis")
        n = len(m["path"])
        for i, p in enumerate(m["path"]):
            colour = cmap(i / max(1, n - 1))
            ax.plot(*zip(p["xy"], p["text_xy"]), color=colour, lw=0.8, alpha=0.7)
            ax.scatter(*p["xy"], s=60, color=colour, edgecolor="k", zorder=3)
            ax.scatter(*p["text_xy"], s=60, facecolor="white", edgecolor=colour, lw=2, zorder=3)
            ax.annotate(str(i + 1), p["xy"], xytext=(5, 5), textcoords="offset points", fontsize=11, weight="bold")
        ax.plot(*zip(*[p["xy"] for p in m["path"]]), color="k", lw=1, alpha=0.5)
        (sx, sy), (axx, axy) = m["endpoints_xy"]
        start, anchor = textwrap.shorten(m["start"], 45), textwrap.shorten(m["anchor"], 45)
        ax.scatter(
            sx, sy, marker="s", s=120, facecolor="none", edgecolor="k", lw=1.5, zorder=4, label=f"alpha 0: {start}"
        )
        ax.scatter(
            axx, axy, marker="*", s=260, facecolor="none", edgecolor="k", lw=1.2, zorder=4, label=f"alpha 1: {anchor}"
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title("semantic space: path (filled) and re-embedded texts (open)")
        axt.axis("off")
        axt.set_title(f"decoded {m['task']} texts along the path", loc="left")
        lines_per_item = max(2, 26 // n - 1)
        y = 1.0
        for i, p in enumerate(m["path"]):
            wrapped = textwrap.wrap(p["text"].replace("\n", " "), 62)[:lines_per_item]
            if len(wrapped) == lines_per_item:
                wrapped[-1] = textwrap.shorten(wrapped[-1] + " ...", 58, placeholder=" ...")
            body = f"{i + 1}. alpha = {p['alpha']:.2f} (SC {p['sc']:.2f})\n" + "\n".join(wrapped or ["(empty)"])
            axt.text(0, y, body, va="top", fontsize=10, color="#222")
            y -= (len(wrapped or [1]) + 1.6) / 28
        fig.tight_layout()
        return fig


# --- the page ------------------------------------------------------------------------------------------------------


def _header(report: Mapping[str, Any]) -> str:
    m = report["model"]
    stages = ", ".join(f"{s} (step {n})" for s, n in m["stages"]) or "none"
    warn = (
        "<p class='warn'>This ELM is <b>untrained</b> (eval.untrained=True): fresh adapters, a floor for trained "
        "models, not a result.</p>"
        if m["untrained"]
        else ""
    )
    rows = [
        ["LLM", _esc(m["llm"])],
        ["trained stages", _esc(stages)],
        ["text encoder (SC, BC)", _esc(m["encoder"])],
        ["data", f"{_esc(m['data'])}: {m['movies']} movies, {m['users']} users; targets: {_esc(m['targets'])}"],
        ["sampling", _esc(", ".join(f"{k}={v}" for k, v in m["sampling"].items()))],
        ["Table 2 from", f"eval/metrics.json written {_esc(m['eval_metrics_written'])}"],
        ["report written", _esc(report["created"])],
    ]
    return (
        "<h1>ELM: the paper's experiments on this run</h1>"
        + warn
        + _table(["", ""], rows)
        + f"<p class='note'>{_esc(report['paper_setup'])}</p>"
    )


def render(report: Mapping[str, Any]) -> str:
    """The whole page from a report dict (report.json)."""
    body = (
        _header(report)
        + _table2(report["table2"])
        + _fig3(report["fig3"])
        + _fig4(report["fig4"])
        + _fig5(report["fig5"])
        + _examples(report)
        + _map(report["map"])
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ELM report</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )
