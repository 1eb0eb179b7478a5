"""Reports regenerated from comparison rows (kd/analysis/compare.py) alone: per table <id>.md and a
self-contained <id>.html (inline CSS, plot as a data-URI PNG; the Markdown links the same plot, written
to plots/<id>.png), plus index.md / index.html over every table.

A report leads with the answer: a summary (verdict counts, gains by sign, Spearman rho with its
interval, the seeds that would settle each inconclusive entry), then the table in the paper's layout,
the gains, the ranking and the plot; sources, conventions, notes and training curves follow.

Each cell reads `ours ± CI (n) / published / delta` and a verdict marker (✓ reproduced, ? inconclusive,
▼ below = worse than published, ▲ above = better, ◇ proxy = shown, not judged, · missing); a missing cell
reads `— / published`. Under it: why (the interval of delta against the band), the agreement with the
teacher, the seeds that would settle an inconclusive entry. Entries other than top-1 over all seeds are
tagged (top5, seed k, ensemble). Every cell also shows its cell id (the `kd run` argument) and, when
there are runs of the cell with overrides (quick checks), their numbers marked "not the published
protocol". With the result lines given, the HTML also draws each cell's training curves (test top-1
and training loss per epoch, one line per seed); the Markdown links the same PNGs, written to
curves/<table id>/.

The plot: published (x) vs ours (y) with each point's band; for a proxy table, published gain (x) vs
our gain (y) with their intervals, the quadrants where the signs agree shaded. Labels sit in a column
beside the axes, each joined to its point by a line, so they never overlap.

Reports are written for a reader who has only the repository: `public_text` rewrites notes that name
files of the development tree (the transcription sources and protocol notes) into the paper's name.
Output is deterministic: the only run-dependent line is 'generated from N result lines'.
"""
from __future__ import annotations

import base64
import html
import io
import math
import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tabulate import tabulate  # noqa: E402

from kd.analysis import stats  # noqa: E402
from kd.analysis.compare import rankings, summary  # noqa: E402

# Development-tree sources named in the tables' notes -> what a reader of the repository can look up.
SOURCE_DOCS = {"000": "Lohit & Jones, WACV 2022", "001": "Sarfraz et al., ICPR 2020", "002": "Miles & Mikolajczyk, AAAI 2024",
               "003": "Yim et al., CVPR 2017 (FSP)", "004": "Yang et al., ICLR 2021 (SRRL)"}
CONFIDENCE_TAGS = ("[code] read in the authors' code or configs; [x-check] agrees across several sources; "
                   "[inferred] deduced, not stated; [memory] quoted from a secondary source, not checked "
                   "against the paper; [unknown] not known, chosen by this project")


def public_text(text: str) -> str:
    """`text` without paths that exist only in the development tree: 'shared/seeds/000_x.txt' and
    'shared/notes/protocols.md §6' are dropped, 'seed 000' (a source document, not a random seed)
    becomes the paper's name, 'the seed' becomes 'the source document'."""
    t = re.sub(r"(protocol:\s*)?(shared/)?(seeds/)?\d{3}_[0-9a-f]+\.txt;?\s*", "", str(text))
    t = re.sub(r"(protocol:\s*)?(shared/notes/)?protocols\.md\s*(§\w+(,\s*§\w+)*)?", "", t)
    t = re.sub(r"\b[Ss]eeds? (\d{3})\b", lambda m: SOURCE_DOCS.get(m.group(1), f"source document {m.group(1)}"), t)
    t = re.sub(r"\b([Tt])he seed\b", lambda m: m.group(1) + "he source document", t)
    t = re.sub(r"\(\s*\)|\(\s*;\s*|\s*;\s*\)", lambda m: "" if m.group(0).strip() == "()" else
               ("(" if m.group(0).strip().startswith("(") else ")"), t)
    return re.sub(r"\s{2,}", " ", t).strip(" ;,")


MARK = {"reproduced": "✓", "inconclusive": "?", "below": "▼", "above": "▲", "proxy": "◇", "missing": "·", "extra": "+"}
COLOR = {"reproduced": "#2e7d32", "inconclusive": "#f9a825", "below": "#c62828", "above": "#1565c0",
         "proxy": "#6d4c41", "missing": "#9e9e9e"}
SIGN_COLOR = {"agrees": "#2e7d32", "disagrees": "#c62828", "inconclusive": "#f9a825"}
VERDICTS = ("reproduced", "inconclusive", "below", "above", "proxy", "missing")
LEGEND = ("cell: ours ± half-width of its 90 % interval (n seeds) / published (± its std) / delta (ours − published, "
          "table units); under it, the 90 % interval of delta against the band ± tolerance: ✓ reproduced (inside), "
          "▼ below / ▲ above (wholly beyond one edge: worse / better than published), ? inconclusive (neither; "
          "one seed is never reproduced), ◇ proxy table (shown, not judged), · missing (no result). "
          "See the README, 'How a verdict is made'.")
CSS = """body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:center}th{background:#eee}
.v-reproduced{background:#e8f5e9}.v-below{background:#ffebee}.v-above{background:#e3f2fd}
.v-inconclusive{background:#fff8e1}.v-proxy{background:#efebe9}
.v-missing{background:#f5f5f5;color:#777}.v-extra{background:#fff8e1}code.cid{font-size:75%;color:#555}
.why{font-size:80%;color:#444}p.summary{font-size:110%;background:#f5f5f5;padding:.6em;border-left:4px solid #888}"""


def _num(x, signed=False) -> str:
    return "—" if x is None else (f"{x:+.2f}" if signed else f"{x:.2f}").replace("-", "−")


def _ci(ci, signed=True) -> str:
    return "—" if ci is None else f"[{_num(ci[0], signed)}, {_num(ci[1], signed)}]"


def cell_text(r) -> str:
    """`74.10 ± 0.35 (3) / 74.92 / −0.82 ✓` or `— / 74.92 ·`, tagged for top5 / seed / ensemble; then
    quick checks (runs with overrides), each marked as not the published protocol."""
    tags = [t for t in (r.metric if r.metric != "top1" else "", f"seed {r.seed}" if r.seed is not None
                        else "", "ensemble" if r.aggregate == "ensemble" else "") if t]
    pub = _num(r.published) + (f" ± {_num(r.published_std)}" if r.published_std else "")
    if r.ours is None:
        text = f"— / {pub}"
    else:
        half = None if r.ours_ci is None else (r.ours_ci[1] - r.ours_ci[0]) / 2
        ci = f" ± {_num(half)}" if half is not None else ""
        text = f"{_num(r.ours)}{ci} ({r.n}) / {pub} / {_num(r.delta, signed=True)}"
    text = (f"[{', '.join(tags)}] " if tags else "") + f"{text} {MARK[r.verdict]}"
    for recipe, mean, std, n in getattr(r, "quick", ()):
        text += (f"; quick check {recipe}: {_num(mean)}" + (f" ± {_num(std)}" if std is not None else "")
                 + f" ({n}), not the published protocol")
    return text


def detail_lines(r) -> list[str]:
    """Under a cell: why its verdict (the interval against the band, where the spread comes from),
    agreement with the teacher, the seeds that would settle it."""
    if r.ours is None:
        return []
    out = [f"{r.why} ({r.spread})" if r.verdict != "proxy" else "not judged (proxy table)"]
    if r.agreement is not None:
        out.append(f"agreement with the teacher {_num(r.agreement)} %, KL(teacher‖student) {r.kl:.3f}")
    if r.settle:
        out.append(f"about {r.settle} more seed(s) would settle it")
    elif r.verdict == "inconclusive" and r.ci is not None:
        out.append("more of our seeds alone would not settle it (the published number's own error is too wide)")
    return out


def _grid(table, rows):
    """(row labels, column labels, {(row, column): [Row]}) in the paper's order; unknown labels last."""
    rlabels = [r["label"] for r in table.rows]
    clabels = [c["label"] for c in table.columns]
    cells: dict = {}
    for r in rows:
        rlabels += [] if r.row in rlabels else [r.row]
        clabels += [] if r.column in clabels else [r.column]
        cells.setdefault((r.row, r.column), []).append(r)
    return rlabels, clabels, cells


def _as_list(x) -> list:
    return [] if not x else [x] if isinstance(x, str) else list(x)


def _ordered(table, rows) -> list:
    rl, cl, _ = _grid(table, rows)  # rows in the paper's order
    return sorted(rows, key=lambda r: (cl.index(r.column), rl.index(r.row)))


def summary_lines(table, rows) -> list[str]:
    """The answer first: verdict counts, gains by sign and verdict, rho with its interval, and how many
    more seeds would settle each inconclusive entry."""
    rows = _ordered(table, rows)
    with_results = [r for r in rows if r.ours is not None]
    c = Counter(r.verdict for r in rows)
    if getattr(table, "proxy", None):
        out = [f"Proxy table, values shown, not judged: {public_text(table.proxy)}. "
               f"{len(with_results)} of {len(rows)} entries have results."]
    else:
        out = [f"{len(with_results)} of {len(rows)} entries have results: "
               + ", ".join(f"{c[v]} {v}" for v in VERDICTS if v not in ("proxy", "missing"))
               + f"; {c['missing']} missing."]
    gains = [r for r in rows if r.gain_ours is not None]
    if gains:
        s = Counter(r.gain_sign for r in gains)
        g = Counter(r.gain_verdict for r in gains if r.gain_verdict)
        out.append(f"Gains over '{table.baseline_row}' ({len(gains)}): sign {s['agrees']} agree, {s['disagrees']} "
                   f"disagree, {s['inconclusive']} inconclusive"
                   + (f"; size {', '.join(f'{n} {v}' for v, n in sorted(g.items()))}" if g else "") + ".")
    for k in rankings(rows):
        if k.rho is not None:
            out.append(f"Ranking ({k.column}, {k.n} rows): Spearman ρ {_num(k.rho)}, 90 % interval {_ci(k.rho_ci, False)}; "
                       f"top row published {k.top_published}, ours {k.top_ours}.")
    settle = [f"{r.row} / {r.column} " + (f"+{r.settle}" if r.settle else "none (the published error is too wide)")
              for r in rows if r.verdict == "inconclusive" and r.ci is not None]
    if settle:
        out.append("More seeds that would settle each inconclusive entry (if mean and std stay): " + ", ".join(settle) + ".")
    return out


def _gains_section(table, rows):
    gains = [r for r in rows if r.gain_published is not None]
    if not gains:
        return None
    return (f"Gains over the baseline row '{table.baseline_row}' (> 0 = better; 90 % intervals)", "table",
            ["row", "column", "metric", "published gain", "our gain", "our 90 % CI", "P(beats baseline)",
             "McNemar p", "sign", "verdict", "note"],
            [[r.row, r.column, r.metric, _num(r.gain_published, True)
              + (f" {_ci(r.gain_published_ci)}" if r.gain_published_ci else ""), _num(r.gain_ours, True),
              _ci(r.gain_ci), _num(r.gain_beats), "—" if r.gain_p is None else f"{r.gain_p:.2g}",
              r.gain_sign or "—", (r.gain_verdict + (f" (±{_num(r.gain_tolerance)})" if r.gain_tolerance else ""))
              if r.gain_verdict else ("not judged (proxy)" if r.proxy and r.gain_ours is not None else "—"),
              r.gain_note or ""] for r in gains])


def _sections(table, rows) -> list[tuple[str, str, list, list]]:
    """(title, kind, headers, body) sections shown under the main table; kind "table" or "list"."""
    rows = _ordered(table, rows)
    out = [s for s in [_gains_section(table, rows)] if s]
    ranks = rankings(rows)
    if ranks:
        out.append(("Ranking (Spearman rho, published vs ours, rows with results)", "table",
                    ["column", "metric", "rows", "rho", "90 % interval", "top published", "top ours", "same top"],
                    [[k.column, k.metric, k.n, "— (< 3 rows)" if k.rho is None else _num(k.rho), _ci(k.rho_ci, False),
                      k.top_published, k.top_ours, "yes" if k.top_agrees else "NO"] for k in ranks]))
    return out


def _background(table, rows) -> list[tuple[str, str, list, list]]:
    """Source, conventions and notes: what follows the answer."""
    stats = Counter(r.statistic + (" (assumed: paper does not say)" if r.statistic_assumed else "")
                    for r in rows)
    units = sorted({"accuracy %" if r.higher_is_better else "error % (ours = 100 − accuracy)" for r in rows})
    conv = [f"statistic: {s} ({n} entries)" for s, n in sorted(stats.items())]
    conv += [f"units: {u}" for u in units]
    conv += [f"tolerance: ±{_num(t)} points" for t in sorted({r.tolerance for r in rows})]
    conv += [f"proxy: {table.proxy}" for _ in [0] if getattr(table, "proxy", None)]
    conv += [f"erratum: {e}" for e in _as_list(getattr(table, "errata", None))]
    conv += [f"assumption: {a}" for a in _as_list(getattr(table, "assumptions", None))]
    conv += [f"confidence tags: {CONFIDENCE_TAGS}"]
    source = {k: public_text(v) for k, v in (getattr(table, "source", None) or {}).items() if k != "seed_file"}
    out = [("Source", "list", [], [f"{k}: {v}" for k, v in source.items() if v]),
           ("Conventions", "list", [], [public_text(c) for c in conv])]
    notes = [f"{r.row} / {r.column}: {public_text(r.note)}" for r in rows if r.note]
    notes += [f"{r.row} / {r.column}: printed value flagged as erratum ({public_text(r.erratum)})"
              for r in rows if r.erratum]
    if notes:
        out.append(("Notes", "list", [], notes))
    return out


def _md_sections(sections) -> list[str]:
    parts = []
    for title, kind, headers, items in sections:
        parts.append(f"## {title}")
        parts.append(tabulate(items, headers=headers, tablefmt="pipe", disable_numparse=True)
                     if kind == "table" else "\n".join(f"- {i}" for i in items) or "- (none)")
    return parts


def _markdown(table, rows, n_results, plot_link=None) -> str:
    rl, cl, cells = _grid(table, rows)
    body = [[r] + ["<br>".join("<br>".join([cell_text(x), *detail_lines(x)]) + f"<br>`{x.cell_id}`"
                               for x in cells.get((r, c), [])) for c in cl] for r in rl]
    parts = [f"# {table.id}: {table.title}", f"generated from {n_results} result lines",
             "**Summary.** " + " ".join(summary_lines(table, rows)), LEGEND,
             tabulate(body, headers=[""] + cl, tablefmt="pipe", disable_numparse=True)]
    parts += _md_sections(_sections(table, rows))
    if plot_link:
        parts += ["## Published vs ours", f"![{table.id}: published vs ours]({plot_link})"]
    parts += _md_sections(_background(table, rows))
    return "\n\n".join(parts) + "\n"


def band(r) -> float:
    """The half-width of r's band, the tolerance: its verdict is 'reproduced' iff the 90 % interval of
    ours − published lies within ± band(r) (kd.analysis.compare)."""
    return r.tolerance


def plot_points(rows) -> list[tuple]:
    """(row, x = published, y = ours, band, colour) per row with a result. Colour is the verdict's,
    except that a point outside its own band is never green (a failed check must not look fine)."""
    out = []
    for r in rows:
        if r.ours is None:
            continue
        v = r.verdict
        if v == "reproduced" and abs(r.ours - r.published) > band(r) + 1e-9:
            v = "below" if (r.ours - r.published) * (1 if r.higher_is_better else -1) < 0 else "above"
        out.append((r, r.published, r.ours, band(r), COLOR.get(v, COLOR["missing"])))
    return out


def published_half(r) -> float:
    """Half the 90 % interval of a published mean (its std over its runs; 0 when either is not printed)."""
    if not (r.published_std and r.runs and r.runs >= 2):
        return 0.0
    return stats.tq(r.runs - 1) * r.published_std / math.sqrt(r.runs)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def spread_labels(ys, lo: float, hi: float, gap: float) -> list[float]:
    """Label heights for points at heights `ys`, each as near its point as a minimum `gap` between
    labels allows, inside [lo, hi] (in the given order's sorted positions)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    pos = [min(max(ys[i], lo), hi) for i in order]
    for i in range(1, len(pos)):
        pos[i] = max(pos[i], pos[i - 1] + gap)
    if pos and pos[-1] > hi:
        pos[-1] = hi
        for i in range(len(pos) - 2, -1, -1):
            pos[i] = min(pos[i], pos[i + 1] - gap)
    out = [0.0] * len(ys)
    for i, p in zip(order, pos):
        out[i] = p
    return out


def figure_size(n: int) -> float:
    """The side (inches) of a plot with n labelled points: 8, growing past 66 points."""
    return max(8.0, 0.12 * n)


def _label_column(ax, pts, labels, lo, hi, size: float):
    """Labels in a column right of the axes, one line from each to its point; the font shrinks (to 5 pt)
    so that a column of many labels still fits the height."""
    n = max(len(pts), 1)
    font = max(5.0, min(8.0, 0.75 * size * 72 / n))
    gap = (hi - lo) * max(0.035 if n <= 20 else 0.0, font * 1.3 / (size * 72 * 0.8))
    heights = spread_labels([y for _, y in pts], lo, hi, gap)
    for (x, y), text, h in zip(pts, labels, heights):
        ax.annotate(text, (x, y), xycoords="data", xytext=(1.03, h), textcoords=("axes fraction", "data"),
                    fontsize=font, va="center", arrowprops=dict(arrowstyle="-", color="#aaa", lw=0.5,
                                                                shrinkA=0, shrinkB=3))


def _labels(pts) -> list[str]:
    several_columns = len({p.column for p in pts}) > 1
    return [f"{r.row} / {r.column}" if several_columns else str(r.row) for r in pts]


def plot_png(rows, title: str = "") -> str | None:
    """Base64 PNG: published (x) vs ours (y) with error bars (both means' 90 % intervals),
    y = x, each point's band drawn as a vertical bar at its x, labels beside the axes, quick checks of a
    cell as hollow grey points (not judged); for a proxy
    table the gains plot instead (gain_plot_png); None if nothing to plot."""
    if any(r.proxy for r in rows):
        return gain_plot_png(rows, title)
    pts = plot_points(rows)
    if not pts:
        return None
    size = figure_size(len(pts))
    fig, ax = plt.subplots(figsize=(size, size), dpi=110)
    quick = [(r.published, mean) for r, *_ in pts for _, mean, _, _ in r.quick]
    lo = min([min(x, y) - b for _, x, y, b, _ in pts] + [y for _, y in quick]) - 1
    hi = max([max(x, y) + b for _, x, y, b, _ in pts] + [y for _, y in quick]) + 1
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (ours = published)")
    for i, (r, x, y, b, _) in enumerate(pts):
        ax.plot([x, x], [x - b, x + b], color="#bbb", lw=6, solid_capstyle="butt", zorder=1,
                label="band: published ± tolerance" if i == 0 else None)
    for v in VERDICTS:
        sel = [p for p in pts if p[4] == COLOR[v]]
        if sel:
            err = [[p[2] - p[0].ours_ci[0] if p[0].ours_ci else 0 for p in sel],
                   [p[0].ours_ci[1] - p[2] if p[0].ours_ci else 0 for p in sel]]
            ax.errorbar([p[1] for p in sel], [p[2] for p in sel], xerr=[published_half(p[0]) for p in sel],
                        yerr=err, fmt="o", color=COLOR[v], label=v, capsize=3, zorder=3)
    if quick:
        ax.plot(*zip(*quick), "o", mfc="none", color="#757575", zorder=2,
                label="quick check (overrides; not judged, not the published protocol)")
    _label_column(ax, [(x, y) for _, x, y, _, _ in pts], _labels([p[0] for p in pts]), lo, hi, size)
    unit = "accuracy %" if pts[0][0].higher_is_better else "error %"
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"published ({unit})", ylabel=f"ours ({unit}, 90 % interval)",
           title=title or "published vs ours")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _limits(values) -> tuple[float, float]:
    """An axis range holding `values` and 0, with a 10 % margin."""
    lo, hi = min([*values, 0.0]), max([*values, 0.0])
    pad = 0.1 * ((hi - lo) or 1.0)
    return lo - pad, hi + pad


def gain_plot_png(rows, title: str = "") -> str | None:
    """Base64 PNG: published gain (x) vs our gain (y) over the baseline row, each with its 90 % interval,
    coloured by the sign verdict; the quadrants where the signs agree shaded; None without gains."""
    pts = [r for r in rows if r.gain_ours is not None]
    if not pts:
        return None
    size = figure_size(len(pts))
    fig, ax = plt.subplots(figsize=(size, size * 7 / 8), dpi=110)
    ys = [v for r in pts for v in (r.gain_ours, *(r.gain_ci or ()))]
    xs = [v for r in pts for v in (r.gain_published, *(r.gain_published_ci or ()))]
    (x0, x1), (y0, y1) = _limits(xs), _limits(ys)
    ax.fill_between([0, x1], 0, y1, color="#e8f5e9", zorder=0, label="signs agree")
    ax.fill_between([x0, 0], y0, 0, color="#e8f5e9", zorder=0)
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0, color="k", lw=0.8)
    for sign, colour in SIGN_COLOR.items():
        sel = [r for r in pts if r.gain_sign == sign]
        if sel:
            yerr = [[r.gain_ours - r.gain_ci[0] if r.gain_ci else 0 for r in sel],
                    [r.gain_ci[1] - r.gain_ours if r.gain_ci else 0 for r in sel]]
            xerr = [[r.gain_published - r.gain_published_ci[0] if r.gain_published_ci else 0 for r in sel],
                    [r.gain_published_ci[1] - r.gain_published if r.gain_published_ci else 0 for r in sel]]
            ax.errorbar([r.gain_published for r in sel], [r.gain_ours for r in sel], xerr=xerr, yerr=yerr, fmt="o",
                        color=colour, capsize=3, zorder=3, label=f"sign {sign}")
    _label_column(ax, [(r.gain_published, r.gain_ours) for r in pts], _labels(pts), y0, y1, size * 7 / 8)
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="published gain over the baseline (points)",
           ylabel="our gain over the baseline (points, 90 % interval)", title=title or "gains: published vs ours")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def curve_png(cell_id: str, records) -> str | None:
    """Base64 PNG of one cell's training curves: test top-1 (left) and training loss (right) per epoch,
    one line per seed (the last ok line of each seed); None without curves."""
    latest = {}
    for r in records:
        if r.get("cell_id") == cell_id and r.get("status") == "ok" and r.get("curve"):
            latest[r.get("seed")] = r
    if not latest:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    for seed in sorted(latest, key=str):
        c = latest[seed]["curve"]
        a1.plot([e["epoch"] for e in c], [e["top1"] for e in c], label=f"seed {seed}")
        a2.plot([e["epoch"] for e in c], [e["train_loss"] for e in c], label=f"seed {seed}")
    a1.set(xlabel="epoch", ylabel="test top-1 (%)", title=cell_id)
    a2.set(xlabel="epoch", ylabel="training loss", title="training loss (the cell's total loss)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    a1.title.set_fontsize(8)
    a2.title.set_fontsize(8)
    return _png(fig)


def _curves(rows, records) -> list[tuple[str, str]]:
    """(cell id, base64 PNG) for each cell of these rows that has training curves, in row order."""
    if not records:
        return []
    out, seen = [], set()
    for r in rows:
        if r.cell_id and r.cell_id not in seen:
            seen.add(r.cell_id)
            png = curve_png(r.cell_id, records)
            if png:
                out.append((r.cell_id, png))
    return out


def _html_table(headers, body) -> str:
    """body cells are strings (escaped here) or (html, css class) pairs (already escaped)."""
    def td(c):
        return f'<td class="{c[1]}">{c[0]}</td>' if isinstance(c, tuple) else f"<td>{html.escape(str(c))}</td>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    return (f"<table><tr>{head}</tr>" + "".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in body)
            + "</table>")


def _page(title, body) -> str:
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _html_sections(sections) -> list[str]:
    parts = []
    for title, kind, headers, items in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_html_table(headers, items) if kind == "table" else
                     "<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in items) + "</ul>")
    return parts


def _html_cell(x) -> str:
    lines = "".join(f'<br><span class="why">{html.escape(d)}</span>' for d in detail_lines(x))
    return (f'<div class="v-{x.verdict}">{html.escape(cell_text(x))}{lines}'
            f'<br><code class="cid">{html.escape(str(x.cell_id))}</code></div>')


def _html(table, rows, n_results, curves=(), png=None) -> str:
    rl, cl, cells = _grid(table, rows)
    body = [[r] + [("".join(_html_cell(x) for x in cells.get((r, c), [])), "") for c in cl] for r in rl]
    parts = [f"<h1>{html.escape(f'{table.id}: {table.title}')}</h1>",
             f"<p>generated from {n_results} result lines</p>",
             '<p class="summary"><b>Summary.</b> ' + "<br>".join(html.escape(s) for s in summary_lines(table, rows)) + "</p>",
             f"<p>{html.escape(LEGEND)}</p>", _html_table([""] + cl, body)]
    parts += _html_sections(_sections(table, rows))
    parts.append("<h2>Published vs ours</h2>")
    parts.append(f'<img alt="published vs reproduced" src="data:image/png;base64,{png}">' if png
                 else "<p>no results yet: nothing to plot</p>")
    parts += _html_sections(_background(table, rows))
    if curves:
        parts.append("<h2>Training curves</h2>")
        parts += [f'<h3><code>{html.escape(cid)}</code></h3><img alt="training curves of {html.escape(cid)}" '
                  f'src="data:image/png;base64,{png}">' for cid, png in curves]
    return _page(table.id, "\n".join(parts))


def _index(tables, rows, n_results, out: Path, written: set) -> tuple[str, str]:
    """The summary of every table; a table links to its report where one is in `out`."""
    counts = summary(rows)
    head = ["table", "title", *VERDICTS]
    md_body, html_body = [], []
    for t in tables:
        c = counts.get(t.id, Counter())
        nums = [c[v] for v in VERDICTS]
        has = t.id in written or (out / f"{t.id}.md").is_file()
        md_body.append([f"[{t.id}]({t.id}.md) ([html]({t.id}.html))" if has else t.id, t.title, *nums])
        link = f'<a href="{html.escape(t.id)}.html">{html.escape(t.id)}</a>' if has else html.escape(t.id)
        html_body.append([(link, ""), t.title, *[(str(n), f"v-{v}" if n else "") for n, v in zip(nums, VERDICTS)]])
    extra = sorted(r.cell_id for r in rows if r.verdict == "extra")
    note = f"{len(extra)} result cells not named by any reference table" + (":" if extra else ".")
    md = "\n\n".join(["# Reproduction summary", f"generated from {n_results} result lines",
                      tabulate(md_body, headers=head, tablefmt="pipe", disable_numparse=True), note,
                      "\n".join(f"- `{c}`" for c in extra)]).rstrip() + "\n"
    htm = _page("Reproduction summary", "\n".join([
        "<h1>Reproduction summary</h1>", f"<p>generated from {n_results} result lines</p>",
        _html_table(head, html_body), f"<p>{html.escape(note)}</p>",
        "<ul>" + "".join(f'<li class="v-extra">{html.escape(c)}</li>' for c in extra) + "</ul>"]))
    return md, htm


def _write_table(t, mine, out: Path, n_results, records) -> list[Path]:
    """One table's <id>.md, <id>.html, plots/<id>.png and curves/<id>/<n>.png."""
    written = []
    curves = _curves(mine, records)
    png = plot_png(mine, f"{t.id}: published vs ours")
    link = None
    if png:
        f = out / "plots" / f"{t.id}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(base64.b64decode(png))
        written.append(f)
        link = f"plots/{t.id}.png"
    md = _markdown(t, mine, n_results, link)
    if curves:
        cdir = out / "curves" / t.id
        cdir.mkdir(parents=True, exist_ok=True)
        links = []
        for i, (cid, cpng) in enumerate(curves):
            f = cdir / f"{i:03d}.png"
            f.write_bytes(base64.b64decode(cpng))
            written.append(f)
            links.append(f"### `{cid}`\n\n![training curves of {cid}](curves/{t.id}/{f.name})")
        md += "\n## Training curves\n\n" + "\n\n".join(links) + "\n"
    for suffix, text in ((".md", md), (".html", _html(t, mine, n_results, curves, png))):
        p = out / f"{t.id}{suffix}"
        p.write_text(text, encoding="utf-8")
        written.append(p)
    return written


def write_reports(tables, rows, out_dir, n_results: int | None = None, records=None, index=None) -> list[Path]:
    """Write <id>.md and <id>.html per table, then index.md and index.html; returns the paths written.
    n_results is the number of result lines read (default: distinct (cell, seed) results in rows).
    With `records` (the result lines), each table's cells with curves get curves/<id>/<n>.png, linked
    from the Markdown and embedded in the HTML. `index`: (every table, their rows and the extras) for
    the index, which always covers every table (default: `tables`, `rows`)."""
    if n_results is None:
        n_results = len({(r.cell_id, s) for r in rows for s in r.seeds})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        written += _write_table(t, [r for r in rows if r.table_id == t.id], out, n_results, records)
    all_tables, all_rows = index or (tables, rows)
    for name, text in zip(("index.md", "index.html"), _index(all_tables, all_rows, n_results, out,
                                                              {t.id for t in tables})):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
