"""Reports regenerated from comparison rows (kd/compare.py) alone: per table <id>.md and a
self-contained <id>.html (inline CSS, plot as a data-URI PNG), plus index.md / index.html.

Each cell reads `ours mean ± std (n) / published / delta` and a verdict marker (✓ reproduced,
▼ below = worse than published, ▲ above = better, · missing); a missing cell reads `— / published`.
Entries other than top-1 over all seeds are tagged (top5, seed k, ensemble). Output is deterministic:
the only run-dependent line is 'generated from N result lines'.
"""
from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tabulate import tabulate  # noqa: E402

from kd.compare import rankings, summary  # noqa: E402

MARK = {"reproduced": "✓", "below": "▼", "above": "▲", "missing": "·", "extra": "+"}
COLOR = {"reproduced": "#2e7d32", "below": "#c62828", "above": "#1565c0", "missing": "#9e9e9e"}
VERDICTS = ("reproduced", "below", "above", "missing")
LEGEND = ("cell: ours mean ± std (n) / published / delta (ours − published, table units); "
          "✓ reproduced (|delta| ≤ tolerance or ≤ 2 × published std), ▼ below (worse than published), "
          "▲ above (better), · missing (no result)")
CSS = """body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:center}th{background:#eee}
.v-reproduced{background:#e8f5e9}.v-below{background:#ffebee}.v-above{background:#e3f2fd}
.v-missing{background:#f5f5f5;color:#777}.v-extra{background:#fff8e1}"""


def _num(x, signed=False) -> str:
    return "—" if x is None else (f"{x:+.2f}" if signed else f"{x:.2f}").replace("-", "−")


def cell_text(r) -> str:
    """`74.10 ± 0.21 (3) / 74.92 / −0.82 ✓` or `— / 74.92 ·`, tagged for top5 / seed / ensemble."""
    tags = [t for t in (r.metric if r.metric != "top1" else "", f"seed {r.seed}" if r.seed is not None
                        else "", "ensemble" if r.aggregate == "ensemble" else "") if t]
    pub = _num(r.published) + (f" ± {_num(r.published_std)}" if r.published_std else "")
    if r.ours is None:
        text = f"— / {pub}"
    else:
        std = f" ± {_num(r.ours_std)}" if r.ours_std is not None else ""
        text = f"{_num(r.ours)}{std} ({r.n}) / {pub} / {_num(r.delta, signed=True)}"
    return (f"[{', '.join(tags)}] " if tags else "") + f"{text} {MARK[r.verdict]}"


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


def _sections(table, rows) -> list[tuple[str, str, list, list]]:
    """(title, kind, headers, body) sections shown under the main table; kind "table" or "list"."""
    out = []
    rl, cl, _ = _grid(table, rows)  # list rows in the paper's order
    rows = sorted(rows, key=lambda r: (cl.index(r.column), rl.index(r.row)))
    gains = [r for r in rows if r.gain_published is not None]
    if gains:
        out.append((f"Gains over the baseline row '{table.baseline_row}' (> 0 = better)", "table",
                    ["row", "column", "metric", "published gain", "our gain", "same sign"],
                    [[r.row, r.column, r.metric, _num(r.gain_published, True), _num(r.gain_ours, True),
                      {True: "yes", False: "NO", None: "—"}[r.gain_agrees]] for r in gains]))
    ranks = rankings(rows)
    if ranks:
        out.append(("Ranking (Spearman rho, published vs ours, rows with results)", "table",
                    ["column", "metric", "rows", "rho", "top published", "top ours", "same top"],
                    [[k.column, k.metric, k.n, "— (< 3 rows)" if k.rho is None else f"{k.rho:.2f}",
                      k.top_published, k.top_ours, "yes" if k.top_agrees else "NO"] for k in ranks]))
    stats = Counter(r.statistic + (" (assumed: paper does not say)" if r.statistic_assumed else "")
                    for r in rows)
    units = sorted({"accuracy %" if r.higher_is_better else "error % (ours = 100 − accuracy)" for r in rows})
    conv = [f"statistic: {s} ({n} entries)" for s, n in sorted(stats.items())]
    conv += [f"units: {u}" for u in units]
    conv += [f"tolerance: ±{_num(t)} points" for t in sorted({r.tolerance for r in rows})]
    conv += [f"erratum: {e}" for e in _as_list(getattr(table, "errata", None))]
    conv += [f"assumption: {a}" for a in _as_list(getattr(table, "assumptions", None))]
    out.append(("Source", "list", [], [f"{k}: {v}" for k, v in (getattr(table, "source", None) or {}).items()]))
    out.append(("Conventions", "list", [], conv))
    notes = [f"{r.row} / {r.column}: {r.note}" for r in rows if r.note]
    notes += [f"{r.row} / {r.column}: printed value flagged as erratum ({r.erratum})" for r in rows if r.erratum]
    if notes:
        out.append(("Notes", "list", [], notes))
    return out


def _markdown(table, rows, n_results) -> str:
    rl, cl, cells = _grid(table, rows)
    body = [[r] + ["<br>".join(cell_text(x) for x in cells.get((r, c), [])) for c in cl] for r in rl]
    parts = [f"# {table.id}: {table.title}", f"generated from {n_results} result lines", LEGEND,
             tabulate(body, headers=[""] + cl, tablefmt="pipe", disable_numparse=True)]
    for title, kind, headers, items in _sections(table, rows):
        parts.append(f"## {title}")
        parts.append(tabulate(items, headers=headers, tablefmt="pipe", disable_numparse=True)
                     if kind == "table" else "\n".join(f"- {i}" for i in items) or "- (none)")
    return "\n\n".join(parts) + "\n"


def plot_png(rows) -> str | None:
    """Base64 PNG: published (x) vs ours (y) with error bars, y = x and the ±tolerance band; None if empty."""
    pts = [r for r in rows if r.ours is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    lo = min(min(r.published, r.ours) for r in pts) - 1
    hi = max(max(r.published, r.ours) for r in pts) + 1
    tol = max(r.tolerance for r in pts)
    ax.fill_between([lo, hi], [lo - tol, hi - tol], [lo + tol, hi + tol], color="#ddd", label=f"±{tol:g}")
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    for v in VERDICTS:
        sel = [r for r in pts if r.verdict == v]
        if sel:
            ax.errorbar([r.published for r in sel], [r.ours for r in sel],
                        xerr=[r.published_std or 0 for r in sel], yerr=[r.ours_std or 0 for r in sel],
                        fmt="o", color=COLOR[v], label=v, capsize=2)
    unit = "accuracy %" if pts[0].higher_is_better else "error %"
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"published ({unit})", ylabel=f"reproduced ({unit})")
    ax.legend(loc="upper left", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


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


def _html(table, rows, n_results) -> str:
    rl, cl, cells = _grid(table, rows)
    body = [[r] + [("".join(f'<div class="v-{x.verdict}">{html.escape(cell_text(x))}</div>'
                            for x in cells.get((r, c), [])), "") for c in cl] for r in rl]
    parts = [f"<h1>{html.escape(f'{table.id}: {table.title}')}</h1>",
             f"<p>generated from {n_results} result lines</p><p>{html.escape(LEGEND)}</p>",
             _html_table([""] + cl, body)]
    png = plot_png(rows)
    parts.append(f'<img alt="published vs reproduced" src="data:image/png;base64,{png}">' if png
                 else "<p>no results yet: nothing to plot</p>")
    for title, kind, headers, items in _sections(table, rows):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_html_table(headers, items) if kind == "table" else
                     "<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in items) + "</ul>")
    return _page(table.id, "\n".join(parts))


def _index(tables, rows, n_results) -> tuple[str, str]:
    counts = summary(rows)
    head = ["table", "title", *VERDICTS]
    md_body, html_body = [], []
    for t in tables:
        c = counts.get(t.id, Counter())
        nums = [c[v] for v in VERDICTS]
        md_body.append([f"[{t.id}]({t.id}.md) ([html]({t.id}.html))", t.title, *nums])
        link = f'<a href="{html.escape(t.id)}.html">{html.escape(t.id)}</a>'
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


def write_reports(tables, rows, out_dir, n_results: int | None = None) -> list[Path]:
    """Write <id>.md and <id>.html per table, then index.md and index.html; returns the paths written.
    n_results is the number of result lines read (default: distinct (cell, seed) results in rows)."""
    if n_results is None:
        n_results = len({(r.cell_id, s) for r in rows for s in r.seeds})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        mine = [r for r in rows if r.table_id == t.id]
        for suffix, text in ((".md", _markdown(t, mine, n_results)), (".html", _html(t, mine, n_results))):
            p = out / f"{t.id}{suffix}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
            written.append(p)
    for name, text in zip(("index.md", "index.html"), _index(tables, rows, n_results)):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
