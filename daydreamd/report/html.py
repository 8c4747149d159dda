"""The HTML report of a cohort: one self-contained file people can open anywhere (no network).

What it shows: the cohort's definition and progress, one heatmap per evaluation template (each
rubric on its own scale, never averaged with another) of the mean score by draft template x
generation model with n and the 95 % t interval in each cell, score distributions per judge, how
far judges (and templates, and replicates) agree with the agreement statistics of each pair, the
top essays with their scores, their text and links to their files, failures by kind, and what
the calls cost.

The page is the Jinja2 template ``templates/report.html`` (with ``report.css``), rendered with
autoescape on; this module prepares what each section shows. Charts are drawn by matplotlib into
inline SVG (text kept as text, so it stays small, sharp and searchable) and handed to the
template as markup; the page has no scripts and loads nothing. ``render_report`` is pure apart
from matplotlib drawing in memory: the shell reads what it needs and writes the file.
"""

from __future__ import annotations

import html
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

import jinja2
from markupsafe import Markup

from daydreamd.core.agreement import AGREEMENT_LIMITS, DISAGREEMENT, variance_analysis
from daydreamd.core.breakdowns import t_interval
from daydreamd.core.costs import CallGroup, combine, nearest_rank, stage_key
from daydreamd.core.pairs import agreement_pairs
from daydreamd.core.results import TopEssay, completeness, top_essays
from daydreamd.core.scores import SCORE_MAX_DEFAULT, Scores, column_name
from daydreamd.core.table import format_number

PROGRESS_STATES = ("pending", "queued", "running", "done", "failed", "not_in_run_state")
AGREEMENT_ORDER = (*(label for _, label in AGREEMENT_LIMITS), DISAGREEMENT)
AGREEMENT_COLORS = ("#1a9850", "#91cf60", "#fdae61", "#d73027")
TOP_N = 15
TEMPLATE = "report.html"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportData:
    """Everything the report shows, read by the shell."""

    cohort_id: str
    scores: Scores
    source: str
    """Where the scores came from: ``sqlite`` or ``files``."""
    generated_at: str
    manifest: Mapping[str, Any] | None = None
    progress: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """stage -> state -> count, plus ``total`` (the cohort's size for the stage)."""
    essay_texts: Mapping[str, str] = field(default_factory=dict)
    """essay gen_id -> its text (the top essays), shown folded under each."""
    link_prefix: str = ""
    """How to get from the report's folder to the data directory (e.g. ``../../..``)."""
    warnings: Sequence[str] = ()
    costs: Sequence[CallGroup] | None = None
    """The cohort's calls per (stage, template, model) (None: not known, e.g. from files)."""


def render_report(data: ReportData) -> str:
    """The whole HTML document."""
    scores = data.scores
    title = f"daydreamd report: {data.cohort_id}"
    template = _environment().get_template(TEMPLATE)
    return template.render(
        title=title,
        cohort_id=data.cohort_id,
        generated_at=data.generated_at,
        source="run state (SQLite)" if data.source == "sqlite" else "gens store (files)",
        evaluations=len(scores),
        scored=scores.scored,
        failed=scores.failed,
        warnings=data.warnings,
        definition=_definition(data.manifest),
        progress=_progress(data.progress),
        completeness=completeness(data.progress),
        heatmaps=_heatmaps(scores),
        distributions=_distributions(scores),
        agreement=_agreement(scores),
        pairs=agreement_pairs(scores).records(),
        top=_top(scores, top_essays(scores, TOP_N), data),
        failures=_failures(scores),
        costs=_costs(data.costs),
    )


@cache
def _environment() -> jinja2.Environment:
    """The templates of this package (shipped in the wheel), autoescaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("daydreamd.report", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["thousands"] = _thousands
    env.filters["score"] = _num
    return env


# -- what each section shows -----------------------------------------------------------------------


def _definition(m: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    """(label, value) rows of the cohort's definition after its id (None: no manifest)."""
    if not m:
        return None
    rows = [
        ("concepts per combo (k)", str(m.get("k", ""))),
        ("description level", str(m.get("description_level", ""))),
        ("combos", f"{len(m.get('combos', ())):,}"),
        ("concepts", ", ".join(str(c.get("concept_id", "")) for c in m.get("concepts", ()))),
    ]
    templates = m.get("templates") or {}
    for stage in ("draft", "essay", "evaluation"):
        entries = templates.get(stage) or ()
        listing = ", ".join(
            f"{t.get('template_id', '')}" + (" (copy)" if t.get("generator") == "copy" else "")
            for t in entries
        )
        rows.append((f"{stage} templates", listing))
    models = m.get("models") or {}
    rows.append(("generation models", ", ".join(x.get("id", "") for x in models.get("generation", ()))))
    rows.append(("judge models", ", ".join(x.get("id", "") for x in models.get("evaluation", ()))))
    replicates = m.get("replicates") or {}
    rows.append(("replicates", ", ".join(f"{k} {v}" for k, v in replicates.items())))
    counts = m.get("counts") or {}
    rows.append(("generations", ", ".join(f"{k} {v:,}" for k, v in counts.items())))
    return rows


class _ProgressRow(NamedTuple):
    stage: str
    total: int
    counts: list[int]
    """One per shown state."""
    width: float
    """Finished share in percent (the bar)."""
    share: str


class _Progress(NamedTuple):
    headings: list[str]
    rows: list[_ProgressRow]


def _progress(progress: Mapping[str, Mapping[str, int]]) -> _Progress:
    states = [s for s in PROGRESS_STATES if any(p.get(s) for p in progress.values())]
    headings = [s.replace("_", " ") for s in ("stage", "total", *states, "finished")]
    rows = []
    for stage, counts in progress.items():
        total = counts.get("total", 0)
        finished = counts.get("done", 0) + counts.get("failed", 0)
        share = f"{finished / total:.0%}" if total else "-"
        width = 100 * finished / total if total else 0
        rows.append(_ProgressRow(stage, total, [counts.get(s, 0) for s in states], width, share))
    return _Progress(headings, rows)


class _Cell(NamedTuple):
    """One heatmap cell: the mean of its scores, how many, and the 95 % t interval."""

    mean: float
    n: int
    interval: tuple[float, float] | None


class _Heatmap(NamedTuple):
    evaluation_template: str
    score_max: float
    svg: Markup


def cell_of(values: Sequence[float]) -> _Cell:
    """The mean, n and 95 % t interval (None under two scores) of a cell's scores."""
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return _Cell(mean, n, t_interval(mean, sd, n))


def heatmap_cells(scores: Scores) -> dict[str, dict[tuple[str, str], _Cell]]:
    """Per evaluation template: (draft template, generation model) -> its cell (replicates count as
    scores; failed evaluations are not in it)."""
    values: dict[str, dict[tuple[str, str], list[float]]] = {}
    for row in scores.rows:
        if row.score is not None:
            cells = values.setdefault(row.evaluation_template, {})
            cells.setdefault((row.draft_template, row.generation_model), []).append(row.score)
    return {
        template: {key: cell_of(found) for key, found in cells.items()}
        for template, cells in sorted(values.items())
    }


def _heatmaps(scores: Scores) -> list[_Heatmap]:
    maps = []
    for template, cells in heatmap_cells(scores).items():
        top = scores.score_max.get(template, SCORE_MAX_DEFAULT)
        rows = sorted({k[0] for k in cells})
        cols = sorted({k[1] for k in cells})
        maps.append(_Heatmap(template, top, _heatmap_svg(template, rows, cols, cells, top)))
    return maps


def _distributions(scores: Scores) -> Markup | None:
    by_judge: dict[str, list[float]] = {}
    for row in scores.rows:
        if row.score is not None:
            by_judge.setdefault(row.evaluation_model, []).append(row.score)
    if not by_judge:
        return None
    top = max(scores.score_max.values(), default=SCORE_MAX_DEFAULT)
    return _histograms_svg(dict(sorted(by_judge.items())), top)


class _Agreement(NamedTuple):
    svg: Markup | None
    why: str
    """Why there is nothing to compare (when ``svg`` is None)."""


def _agreement(scores: Scores) -> _Agreement:
    table = variance_analysis(scores)
    counts: dict[str, Counter[str]] = {}
    for record in table.records():
        counts.setdefault(str(record["dimension"]), Counter())[str(record["agreement"])] += 1
    if not counts:
        judges = {row.evaluation_model for row in scores.rows}
        why = (
            "there is only one judge model, one evaluation template per judge and one replicate"
            if len(judges) <= 1
            else "no essay has been scored twice yet"
        )
        return _Agreement(None, why)
    dims: list[str] = [d for d in ("judges", "templates", "replicates") if d in counts]
    return _Agreement(_agreement_svg(dims, counts), "")


class _TopRow(NamedTuple):
    rank: str
    """``3``, or ``=3`` when another essay has the same score."""
    essay: TopEssay
    means: list[float | None]
    """The essay's mean per column, in the order of the headings."""
    link: str
    concepts: str
    text: str | None


class _Top(NamedTuple):
    headings: list[str]
    rows: list[_TopRow]


def _top(scores: Scores, top: Sequence[TopEssay], data: ReportData) -> _Top:
    keys = scores.columns()
    headings = [
        "#",
        "sum",
        "mean",
        *(column_name(*k) for k in keys),
        "draft template",
        "model",
        "essay template",
    ]
    rows = []
    for essay in top:
        indexed = scores.essays[essay.essay_gen_id]
        means = indexed.means()
        rows.append(
            _TopRow(
                f"={essay.rank}" if essay.tied else str(essay.rank),
                essay,
                [means.get(k) for k in keys],
                _link(data.link_prefix, essay.essay_path),
                ", ".join(indexed.first.concept_ids) or essay.combo_id,
                data.essay_texts.get(essay.essay_gen_id),
            )
        )
    return _Top(headings, rows)


class _Failures(NamedTuple):
    svg: Markup
    rows: list[tuple[str, int, list[str]]]
    """(kind, evaluations, up to three examples)."""


def _failures(scores: Scores) -> _Failures | None:
    kinds = scores.failures_by_kind()
    if not kinds:
        return None
    examples: dict[str, list[str]] = {}
    for row in scores.rows:
        if row.score is None:
            found = examples.setdefault(row.error_kind or "unknown", [])
            if len(found) < 3:
                found.append(f"{row.gen_id}: {row.error_message}" if row.error_message else row.gen_id)
    rows = [(kind, n, examples.get(kind, [])) for kind, n in kinds.items()]
    return _Failures(_bars_svg(list(kinds.items())), rows)


# -- charts (matplotlib, inline SVG) ---------------------------------------------------------------


def _literal(text: str) -> str:
    """``text`` as a chart label shown as it is: matplotlib reads text between two ``$`` as mathtext
    (a model id ``m$x^2$`` would be drawn as a formula, and ``m$\\foo$`` stops the report with a
    parse error), so every ``$`` is escaped (``\\$``, which matplotlib shows as ``$``). Other
    mathtext specials (``\\``, ``^``, ``_``, ``{``) mean nothing outside ``$...$``, so they are
    shown as they are. Every label made from the data (model, template and concept ids, failure
    kinds) goes through this."""
    return text.replace("$", r"\$")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any, name: str) -> Markup:
    """The figure as an ``<svg>`` element (no XML prologue), with ids unique to this chart."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"daydreamd-{name}"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    start = text.find("<svg")
    svg = text[start:] if start >= 0 else text
    label = html.escape(name, quote=True)
    return Markup(svg.replace("<svg ", f"<svg role='img' aria-label='{label}' class='chart' ", 1))


def _heatmap_svg(
    template: str, rows: list[str], cols: list[str], cells: dict[tuple[str, str], _Cell], top: float
) -> Markup:
    import numpy as np

    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), cell in cells.items():
        grid[rows.index(r), cols.index(c)] = cell.mean
    fig = _figure(max(4.0, 1.6 + 1.5 * len(cols)), max(2.2, 1.2 + 0.7 * len(rows)))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(grid)
    mesh = ax.pcolormesh(masked, cmap="viridis", vmin=0, vmax=top, edgecolors="white", linewidth=1)
    ax.set_xticks([i + 0.5 for i in range(len(cols))], [_literal(c) for c in cols], rotation=20, ha="right")
    ax.set_yticks([i + 0.5 for i in range(len(rows))], [_literal(r) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("generation model")
    ax.set_ylabel("draft template")
    for (r, c), cell in cells.items():
        color = "black" if cell.mean > 0.6 * top else "white"
        ax.text(
            cols.index(c) + 0.5,
            rows.index(r) + 0.5,
            _cell_text(cell),
            ha="center",
            va="center",
            color=color,
            fontsize=8,
        )
    fig.colorbar(mesh, ax=ax, label=f"mean score (0-{format_number(top)})")
    return _svg(fig, f"heatmap of {template}")


def _cell_text(cell: _Cell) -> str:
    """``7.25``, its interval and ``n=12`` on three lines."""
    interval = "" if cell.interval is None else f"[{cell.interval[0]:.2f}, {cell.interval[1]:.2f}]\n"
    return f"{format_number(round(cell.mean, 2))}\n{interval}n={cell.n}"


class _CostRow(NamedTuple):
    label: str
    group: CallGroup
    total: bool

    @property
    def cost(self) -> str:
        """Dollars, marked as a lower bound when some calls reported no cost."""
        if self.group.cost_usd is None:
            return "unknown"
        text = f"${self.group.cost_usd:,.4f}"
        return text if self.group.priced_calls == self.group.calls else text + " (lower bound)"

    @property
    def latency(self) -> str:
        """The median seconds from sending a call to its answer."""
        median = nearest_rank(sorted(self.group.latencies_s), 50)
        return "" if median is None else f"{median:.2f} s"


def _costs(groups: Sequence[CallGroup] | None) -> list[_CostRow] | None:
    """Every (stage, template, model), each stage's total, and overall (as ``summary/costs.csv``)."""
    if groups is None:
        return None
    by_stage: dict[str, list[CallGroup]] = {}
    for group in groups:
        by_stage.setdefault(group.stage, []).append(group)
    rows, totals = [], []
    for stage in sorted(by_stage, key=stage_key):
        members = sorted(by_stage[stage], key=lambda g: (g.template_id, g.llm_model_id))
        rows += [_CostRow(f"{g.template_id} / {g.llm_model_id}", g, False) for g in members]
        totals.append(combine(members, stage=stage))
        rows.append(_CostRow(f"{stage}: all", totals[-1], True))
    if totals:
        rows.append(_CostRow("overall", combine(totals), True))
    return rows


def _histograms_svg(by_judge: dict[str, list[float]], top: float) -> Markup:
    n = len(by_judge)
    per_row = min(n, 3)
    nrows = math.ceil(n / per_row)
    fig = _figure(3.6 * per_row, 2.6 * nrows)
    edges = [x - 0.5 for x in range(math.ceil(top) + 2)]
    axes = fig.subplots(nrows, per_row, squeeze=False, sharex=True)
    for index, (judge, values) in enumerate(by_judge.items()):
        ax = axes[index // per_row][index % per_row]
        ax.hist(values, bins=edges, color="#3b6ea5", edgecolor="white")
        mean = math.fsum(values) / len(values)
        ax.axvline(mean, color="#d95f02", linestyle="--", linewidth=1.5)
        title = f"{judge} (n={len(values):,}, mean {format_number(round(mean, 2))})"
        ax.set_title(_literal(title), fontsize=9)
        ax.set_xlabel("score")
        ax.set_ylabel("evaluations")
        ax.set_xlim(edges[0], edges[-1])
    for index in range(n, nrows * per_row):
        axes[index // per_row][index % per_row].set_visible(False)
    return _svg(fig, "distributions")


def _agreement_svg(dims: list[str], counts: dict[str, Counter[str]]) -> Markup:
    fig = _figure(7.5, 0.9 + 0.55 * len(dims))
    ax = fig.add_subplot()
    left = [0.0] * len(dims)
    for label, color in zip(AGREEMENT_ORDER, AGREEMENT_COLORS, strict=True):
        totals = [sum(counts[d].values()) for d in dims]
        shares = [counts[d].get(label, 0) / t if t else 0.0 for d, t in zip(dims, totals, strict=True)]
        ax.barh(
            [_literal(f"across {d} (n={sum(counts[d].values()):,})") for d in dims],
            shares,
            left=left,
            color=color,
            label=_literal(label),
        )
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter("{x:.0%}")
    ax.set_xlabel("share of comparisons")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncols=4, frameon=False, fontsize=8)
    return _svg(fig, "agreement")


def _bars_svg(items: list[tuple[str, int]]) -> Markup:
    fig = _figure(6.0, 0.8 + 0.4 * len(items))
    ax = fig.add_subplot()
    labels = [_literal(k) for k, _ in items]
    values = [v for _, v in items]
    bars = ax.barh(labels, values, color="#c0504d")
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("failed evaluations")
    ax.set_xlim(0, max(values) * 1.15)
    return _svg(fig, "failures")


# -- helpers ---------------------------------------------------------------------------------------


def _thousands(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _num(value: float | None) -> str:
    return "" if value is None else format_number(round(value, 2))


def _link(prefix: str, path: str) -> str:
    return f"{prefix.rstrip('/')}/{path}" if prefix else path
