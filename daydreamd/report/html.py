"""The HTML report of a cohort: one self-contained file people can open anywhere (no network).

What it shows: the cohort's definition and progress, a heatmap of the mean score by draft
template x generation model, score distributions per judge, how far judges (and templates, and
replicates) agree, the top essays with their scores, their text and links to their files, and
failures by kind.

Charts are drawn by matplotlib into inline SVG (text kept as text, so it stays small, sharp
and searchable); the page has no scripts and loads nothing. ``render_report`` is pure apart
from matplotlib drawing in memory: the shell reads what it needs and writes the file.
"""

from __future__ import annotations

import html
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daydreamd.core.results import (
    AGREEMENT_LIMITS,
    DISAGREEMENT,
    SCORE_MAX_DEFAULT,
    Scores,
    TopEssay,
    column_name,
    format_number,
    top_essays,
    variance_analysis,
)

PROGRESS_STATES = ("pending", "queued", "running", "done", "failed", "not_in_run_state")
AGREEMENT_ORDER = (*(label for _, label in AGREEMENT_LIMITS), DISAGREEMENT)
AGREEMENT_COLORS = ("#1a9850", "#91cf60", "#fdae61", "#d73027")
TOP_N = 15


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


def render_report(data: ReportData) -> str:
    """The whole HTML document."""
    scores = data.scores
    top = top_essays(scores, TOP_N)
    sections = [
        _section("Cohort", _definition(data)),
        _section("Progress", _progress(data.progress)),
        _section("Mean score by draft template × generation model", _heatmap_section(scores)),
        _section("Score distribution per judge", _distribution_section(scores)),
        _section("Agreement", _agreement_section(scores)),
        _section(f"Top essays (best {len(top)} by sum of scores)", _top_section(scores, top, data)),
        _section("Failures by kind", _failures_section(scores)),
    ]
    warnings = "".join(f"<p class='warn'>{_e(w)}</p>" for w in data.warnings)
    title = f"daydreamd report: {data.cohort_id}"
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1><p class='muted'>generated {_e(data.generated_at)} from the "
        f"{'run state (SQLite)' if data.source == 'sqlite' else 'gens store (files)'}; "
        f"{len(scores):,} finished evaluations: {scores.scored:,} scored, {scores.failed:,} failed</p>"
        f"{warnings}</header>\n<main>\n" + "\n".join(sections) + "\n</main>\n</body>\n</html>\n"
    )


# -- sections ------------------------------------------------------------------------------------


def _section(title: str, body: str) -> str:
    return f"<section>\n<h2>{_e(title)}</h2>\n{body}\n</section>"


def _definition(data: ReportData) -> str:
    m = data.manifest
    if not m:
        return f"<p>Cohort <code>{_e(data.cohort_id)}</code>: no manifest.json was found.</p>"
    rows = [
        ("cohort id", f"<code>{_e(data.cohort_id)}</code>"),
        ("concepts per combo (k)", _e(m.get("k", ""))),
        ("description level", _e(m.get("description_level", ""))),
        ("combos", f"{len(m.get('combos', ())):,}"),
        ("concepts", _e(", ".join(str(c.get("concept_id", "")) for c in m.get("concepts", ())))),
    ]
    templates = m.get("templates") or {}
    for stage in ("draft", "essay", "evaluation"):
        entries = templates.get(stage) or ()
        listing = ", ".join(
            f"{t.get('template_id', '')}" + (" (copy)" if t.get("generator") == "copy" else "")
            for t in entries
        )
        rows.append((f"{stage} templates", _e(listing)))
    models = m.get("models") or {}
    rows.append(("generation models", _e(", ".join(x.get("id", "") for x in models.get("generation", ())))))
    rows.append(("judge models", _e(", ".join(x.get("id", "") for x in models.get("evaluation", ())))))
    replicates = m.get("replicates") or {}
    rows.append(("replicates", _e(", ".join(f"{k} {v}" for k, v in replicates.items()))))
    counts = m.get("counts") or {}
    rows.append(("generations", _e(", ".join(f"{k} {v:,}" for k, v in counts.items()))))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{body}</table>"


def _progress(progress: Mapping[str, Mapping[str, int]]) -> str:
    if not progress:
        return "<p>No progress information.</p>"
    states = [s for s in PROGRESS_STATES if any(p.get(s) for p in progress.values())]
    head = "".join(f"<th>{_e(s.replace('_', ' '))}</th>" for s in ("stage", "total", *states, "finished"))
    body = []
    for stage, counts in progress.items():
        total = counts.get("total", 0)
        finished = counts.get("done", 0) + counts.get("failed", 0)
        share = f"{finished / total:.0%}" if total else "-"
        width = 100 * finished / total if total else 0
        bar = f"<div class='bar'><span style='width:{width:.1f}%'></span></div>"
        cells = "".join(f"<td class='num'>{counts.get(s, 0):,}</td>" for s in states)
        body.append(
            f"<tr><td>{_e(stage)}</td><td class='num'>{total:,}</td>{cells}<td>{bar} {share}</td></tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _heatmap_section(scores: Scores) -> str:
    groups = scores.groups(("draft_template", "generation_model"))
    means = {key: acc.cells()[2] for key, acc in groups.items()}
    means = {k: v for k, v in means.items() if isinstance(v, float)}
    if not means:
        return _empty("No scores yet.")
    rows = sorted({k[0] for k in means})
    cols = sorted({k[1] for k in means})
    maxima = set(scores.score_max.values()) or {SCORE_MAX_DEFAULT}
    note = ""
    if len(maxima) > 1:
        note = "<p class='muted'>Evaluation templates use different scales; means are of raw scores.</p>"
    svg = _heatmap_svg(rows, cols, means, max(maxima))
    return f"<figure>{svg}</figure>{note}"


def _distribution_section(scores: Scores) -> str:
    by_judge: dict[str, list[float]] = {}
    for row in scores.rows:
        if row.score is not None:
            by_judge.setdefault(row.evaluation_model, []).append(row.score)
    if not by_judge:
        return _empty("No scores yet.")
    top = max(scores.score_max.values(), default=SCORE_MAX_DEFAULT)
    return f"<figure>{_histograms_svg(dict(sorted(by_judge.items())), top)}</figure>"


def _agreement_section(scores: Scores) -> str:
    table = variance_analysis(scores)
    counts: dict[str, Counter[str]] = {}
    for record in table.records():
        counts.setdefault(str(record["dimension"]), Counter())[str(record["agreement"])] += 1
    judges = {row.evaluation_model for row in scores.rows}
    if not counts:
        why = (
            "there is only one judge model, one evaluation template per judge and one replicate"
            if len(judges) <= 1
            else "no essay has been scored twice yet"
        )
        return _empty(f"Nothing to compare: {why}.")
    explain = (
        "<p class='muted'>Per essay: the range of the scores given by different judges (same "
        "template), by different templates (same judge) and by replicates (same template and judge). "
        "Range &le; 1 strong, &le; 2 moderate, &le; 3 weak agreement, else disagreement (on 0-10; "
        "scaled for other maxima). See analysis/judge_agreement.csv and variance_analysis.csv.</p>"
    )
    dims = [d for d in ("judges", "templates", "replicates") if d in counts]
    return f"<figure>{_agreement_svg(dims, counts)}</figure>{explain}"


def _top_section(scores: Scores, top: Sequence[TopEssay], data: ReportData) -> str:
    if not top:
        return _empty("No scored essays yet.")
    keys = scores.columns()
    head = "".join(
        f"<th>{_e(h)}</th>"
        for h in (
            "#",
            "sum",
            "mean",
            *(column_name(*k) for k in keys),
            "draft template",
            "model",
            "essay template",
        )
    )
    body = []
    for rank, essay in enumerate(top, start=1):
        means = scores.essays[essay.essay_gen_id].means()
        cells = "".join(f"<td class='num'>{_num(means.get(k))}</td>" for k in keys)
        link = _link(data.link_prefix, essay.essay_path)
        text = data.essay_texts.get(essay.essay_gen_id)
        first = scores.essays[essay.essay_gen_id].first
        concepts = ", ".join(first.concept_ids) or essay.combo_id
        details = (
            f"<details><summary><a href='{_e(link)}'>{_e(essay.essay_gen_id)}</a> · {_e(concepts)}"
            "</summary>"
            + (f"<pre>{_e(text)}</pre>" if text is not None else "<p class='muted'>text not found</p>")
            + "</details>"
        )
        body.append(
            f"<tr><td class='num'>{rank}</td><td class='num'><b>{_num(essay.sum_scores)}</b></td>"
            f"<td class='num'>{_num(essay.mean)}</td>{cells}<td>{_e(essay.draft_template)}</td>"
            f"<td>{_e(essay.generation_model)}</td><td>{_e(essay.essay_template)}</td></tr>"
            f"<tr class='sub'><td></td><td colspan='{len(keys) + 5}'>{details}</td></tr>"
        )
    return f"<table class='top'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _failures_section(scores: Scores) -> str:
    kinds = scores.failures_by_kind()
    if not kinds:
        return _empty("No failed evaluations.")
    examples: dict[str, list[str]] = {}
    for row in scores.rows:
        if row.score is None:
            found = examples.setdefault(row.error_kind or "unknown", [])
            if len(found) < 3:
                found.append(f"{row.gen_id}: {row.error_message}" if row.error_message else row.gen_id)
    body = "".join(
        f"<tr><td>{_e(kind)}</td><td class='num'>{n:,}</td><td><ul>"
        + "".join(f"<li><code>{_e(x[:300])}</code></li>" for x in examples.get(kind, ()))
        + "</ul></td></tr>"
        for kind, n in kinds.items()
    )
    head = "<tr><th>kind</th><th>evaluations</th><th>examples</th></tr>"
    table = f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
    return f"<figure>{_bars_svg(list(kinds.items()))}</figure>{table}"


# -- charts (matplotlib, inline SVG) ---------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any, name: str) -> str:
    """The figure as an ``<svg>`` element (no XML prologue), with ids unique to this chart."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"daydreamd-{name}"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    start = text.find("<svg")
    svg = text[start:] if start >= 0 else text
    return svg.replace("<svg ", f"<svg role='img' aria-label='{_e(name)}' class='chart' ", 1)


def _heatmap_svg(rows: list[str], cols: list[str], means: dict[tuple[str, str], float], top: float) -> str:
    import numpy as np

    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), value in means.items():
        grid[rows.index(r), cols.index(c)] = value
    fig = _figure(max(4.0, 1.6 + 1.3 * len(cols)), max(2.2, 1.2 + 0.45 * len(rows)))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(grid)
    mesh = ax.pcolormesh(masked, cmap="viridis", vmin=0, vmax=top, edgecolors="white", linewidth=1)
    ax.set_xticks([i + 0.5 for i in range(len(cols))], cols, rotation=20, ha="right")
    ax.set_yticks([i + 0.5 for i in range(len(rows))], rows)
    ax.invert_yaxis()
    ax.set_xlabel("generation model")
    ax.set_ylabel("draft template")
    for i in range(len(rows)):
        for j in range(len(cols)):
            value = grid[i, j]
            if math.isfinite(value):
                color = "black" if value > 0.6 * top else "white"
                ax.text(
                    j + 0.5, i + 0.5, format_number(round(value, 2)), ha="center", va="center", color=color
                )
    fig.colorbar(mesh, ax=ax, label="mean score")
    return _svg(fig, "heatmap")


def _histograms_svg(by_judge: dict[str, list[float]], top: float) -> str:
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
        ax.set_title(f"{judge} (n={len(values):,}, mean {format_number(round(mean, 2))})", fontsize=9)
        ax.set_xlabel("score")
        ax.set_ylabel("evaluations")
        ax.set_xlim(edges[0], edges[-1])
    for index in range(n, nrows * per_row):
        axes[index // per_row][index % per_row].set_visible(False)
    return _svg(fig, "distributions")


def _agreement_svg(dims: list[str], counts: dict[str, Counter[str]]) -> str:
    fig = _figure(7.5, 0.9 + 0.55 * len(dims))
    ax = fig.add_subplot()
    left = [0.0] * len(dims)
    for label, color in zip(AGREEMENT_ORDER, AGREEMENT_COLORS, strict=True):
        totals = [sum(counts[d].values()) for d in dims]
        shares = [counts[d].get(label, 0) / t if t else 0.0 for d, t in zip(dims, totals, strict=True)]
        ax.barh(
            [f"across {d} (n={sum(counts[d].values()):,})" for d in dims],
            shares,
            left=left,
            color=color,
            label=label,
        )
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter("{x:.0%}")
    ax.set_xlabel("share of comparisons")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncols=4, frameon=False, fontsize=8)
    return _svg(fig, "agreement")


def _bars_svg(items: list[tuple[str, int]]) -> str:
    fig = _figure(6.0, 0.8 + 0.4 * len(items))
    ax = fig.add_subplot()
    labels = [k for k, _ in items]
    values = [v for _, v in items]
    bars = ax.barh(labels, values, color="#c0504d")
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("failed evaluations")
    ax.set_xlim(0, max(values) * 1.15)
    return _svg(fig, "failures")


# -- helpers ---------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None) -> str:
    return "" if value is None else format_number(round(value, 2))


def _empty(message: str) -> str:
    return f"<p class='muted'>{_e(message)}</p>"


def _link(prefix: str, path: str) -> str:
    return f"{prefix.rstrip('/')}/{path}" if prefix else path


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header .muted{color:#c9d1dc}main{padding:8px 32px 40px;max-width:1200px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:12px 20px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
thead th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{width:200px;color:#555;font-weight:600}.muted{color:#6a737d}.warn{color:#b35900}
figure{margin:8px 0}svg.chart{max-width:100%;height:auto}code{font-size:12px}
.bar{display:inline-block;width:140px;height:10px;background:#e6e9ee;border-radius:5px;vertical-align:middle}
.bar span{display:block;height:100%;background:#2e8b57;border-radius:5px}
tr.sub td{border-bottom:1px solid #d8dce1;padding-top:0}details summary{cursor:pointer;color:#30557f}
details pre{white-space:pre-wrap;max-height:320px;overflow:auto;background:#f6f8fa;padding:8px;font-size:12px}
ul{margin:0;padding-left:18px}
"""
