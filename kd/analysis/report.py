"""Reports regenerated from comparison rows (kd/analysis/compare.py) alone: per table <id>.md and a
self-contained <id>.html (inline CSS, plot as a data-URI PNG), plus index.md / index.html.

Each cell reads `ours mean ± std (n) / published / delta` and a verdict marker (✓ reproduced,
▼ below = worse than published, ▲ above = better, · missing); a missing cell reads `— / published`.
Entries other than top-1 over all seeds are tagged (top5, seed k, ensemble). Every cell also shows its
cell id (the `kd run` argument) and, when there are runs of the cell with overrides (quick checks),
their numbers marked "not the published protocol". With the result lines given, the HTML also draws
each cell's training curves (test top-1 and training loss per epoch, one line per seed); the Markdown
links the same PNGs, written to curves/<table id>/.

Reports are written for a reader who has only the repository: `public_text` rewrites notes that name
files of the development tree (the transcription sources and protocol notes) into the paper's name.
Output is deterministic: the only run-dependent line is 'generated from N result lines'.
"""
from __future__ import annotations

import base64
import html
import io
import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tabulate import tabulate  # noqa: E402

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


MARK = {"reproduced": "✓", "below": "▼", "above": "▲", "missing": "·", "extra": "+"}
COLOR = {"reproduced": "#2e7d32", "below": "#c62828", "above": "#1565c0", "missing": "#9e9e9e"}
VERDICTS = ("reproduced", "below", "above", "missing")
LEGEND = ("cell: ours mean ± std (n) / published / delta (ours − published, table units); "
          "✓ reproduced (|delta| ≤ tolerance or ≤ 2 × published std), ▼ below (worse than published), "
          "▲ above (better), · missing (no result)")
CSS = """body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:center}th{background:#eee}
.v-reproduced{background:#e8f5e9}.v-below{background:#ffebee}.v-above{background:#e3f2fd}
.v-missing{background:#f5f5f5;color:#777}.v-extra{background:#fff8e1}code.cid{font-size:75%;color:#555}"""


def _num(x, signed=False) -> str:
    return "—" if x is None else (f"{x:+.2f}" if signed else f"{x:.2f}").replace("-", "−")


def cell_text(r) -> str:
    """`74.10 ± 0.21 (3) / 74.92 / −0.82 ✓` or `— / 74.92 ·`, tagged for top5 / seed / ensemble; then
    quick checks (runs with overrides), each marked as not the published protocol."""
    tags = [t for t in (r.metric if r.metric != "top1" else "", f"seed {r.seed}" if r.seed is not None
                        else "", "ensemble" if r.aggregate == "ensemble" else "") if t]
    pub = _num(r.published) + (f" ± {_num(r.published_std)}" if r.published_std else "")
    if r.ours is None:
        text = f"— / {pub}"
    else:
        std = f" ± {_num(r.ours_std)}" if r.ours_std is not None else ""
        text = f"{_num(r.ours)}{std} ({r.n}) / {pub} / {_num(r.delta, signed=True)}"
    text = (f"[{', '.join(tags)}] " if tags else "") + f"{text} {MARK[r.verdict]}"
    for recipe, mean, std, n in getattr(r, "quick", ()):
        text += (f"; quick check {recipe}: {_num(mean)}" + (f" ± {_num(std)}" if std is not None else "")
                 + f" ({n}), not the published protocol")
    return text


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
                    ["row", "column", "metric", "published gain", "our gain", "same sign", "tolerance", "verdict"],
                    [[r.row, r.column, r.metric, _num(r.gain_published, True), _num(r.gain_ours, True),
                      {True: "yes", False: "NO", None: "—"}[r.gain_agrees],
                      "—" if r.gain_tolerance is None else f"±{_num(r.gain_tolerance)}",
                      r.gain_verdict or "—"] for r in gains]))
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
    conv += [f"confidence tags: {CONFIDENCE_TAGS}"]
    source = {k: public_text(v) for k, v in (getattr(table, "source", None) or {}).items() if k != "seed_file"}
    out.append(("Source", "list", [], [f"{k}: {v}" for k, v in source.items() if v]))
    out.append(("Conventions", "list", [], [public_text(c) for c in conv]))
    notes = [f"{r.row} / {r.column}: {public_text(r.note)}" for r in rows if r.note]
    notes += [f"{r.row} / {r.column}: printed value flagged as erratum ({public_text(r.erratum)})"
              for r in rows if r.erratum]
    if notes:
        out.append(("Notes", "list", [], notes))
    return out


def _markdown(table, rows, n_results) -> str:
    rl, cl, cells = _grid(table, rows)
    body = [[r] + ["<br>".join(f"{cell_text(x)}<br>`{x.cell_id}`" for x in cells.get((r, c), [])) for c in cl]
            for r in rl]
    parts = [f"# {table.id}: {table.title}", f"generated from {n_results} result lines", LEGEND,
             tabulate(body, headers=[""] + cl, tablefmt="pipe", disable_numparse=True)]
    for title, kind, headers, items in _sections(table, rows):
        parts.append(f"## {title}")
        parts.append(tabulate(items, headers=headers, tablefmt="pipe", disable_numparse=True)
                     if kind == "table" else "\n".join(f"- {i}" for i in items) or "- (none)")
    return "\n\n".join(parts) + "\n"


def band(r) -> float:
    """The half-width of r's own band: its verdict is 'reproduced' iff |ours − published| ≤ band(r)
    (kd.analysis.compare.verdict: the tolerance, or twice the published std when that is wider)."""
    return max(r.tolerance, 2 * (r.published_std or 0.0))


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


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plot_png(rows, title: str = "") -> str | None:
    """Base64 PNG: published (x) vs ours (y) with error bars, y = x, each point's own band drawn as a
    vertical bar at its x, each point labelled with its row (and column when the table has several);
    None if nothing to plot."""
    pts = plot_points(rows)
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(8, 8), dpi=110)
    lo = min(min(x, y) - b for _, x, y, b, _ in pts) - 1
    hi = max(max(x, y) + b for _, x, y, b, _ in pts) + 1
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (ours = published)")
    for i, (r, x, y, b, _) in enumerate(pts):
        ax.plot([x, x], [x - b, x + b], color="#bbb", lw=6, solid_capstyle="butt", zorder=1,
                label="accepted band (tolerance or 2 × published std)" if i == 0 else None)
    for v in VERDICTS:
        sel = [p for p in pts if p[4] == COLOR[v]]
        if sel:
            ax.errorbar([p[1] for p in sel], [p[2] for p in sel], xerr=[p[0].published_std or 0 for p in sel],
                        yerr=[p[0].ours_std or 0 for p in sel], fmt="o", color=COLOR[v], label=v, capsize=3, zorder=3)
    several_columns = len({p[0].column for p in pts}) > 1
    for r, x, y, _, _ in pts:
        label = f"{r.row} / {r.column}" if several_columns else str(r.row)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    unit = "accuracy %" if pts[0][0].higher_is_better else "error %"
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"published ({unit})", ylabel=f"ours ({unit})",
           title=title or "published vs ours")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
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


def _html(table, rows, n_results, curves=()) -> str:
    rl, cl, cells = _grid(table, rows)
    body = [[r] + [("".join(f'<div class="v-{x.verdict}">{html.escape(cell_text(x))}'
                            f'<br><code class="cid">{html.escape(str(x.cell_id))}</code></div>'
                            for x in cells.get((r, c), [])), "") for c in cl] for r in rl]
    parts = [f"<h1>{html.escape(f'{table.id}: {table.title}')}</h1>",
             f"<p>generated from {n_results} result lines</p><p>{html.escape(LEGEND)}</p>",
             _html_table([""] + cl, body)]
    png = plot_png(rows, f"{table.id}: published vs ours")
    parts.append(f'<img alt="published vs reproduced" src="data:image/png;base64,{png}">' if png
                 else "<p>no results yet: nothing to plot</p>")
    if curves:
        parts.append("<h2>Training curves</h2>")
        parts += [f'<h3><code>{html.escape(cid)}</code></h3><img alt="training curves of {html.escape(cid)}" '
                  f'src="data:image/png;base64,{png}">' for cid, png in curves]
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


def write_reports(tables, rows, out_dir, n_results: int | None = None, records=None) -> list[Path]:
    """Write <id>.md and <id>.html per table, then index.md and index.html; returns the paths written.
    n_results is the number of result lines read (default: distinct (cell, seed) results in rows).
    With `records` (the result lines), each table's cells with curves get curves/<id>/<n>.png, linked
    from the Markdown and embedded in the HTML."""
    if n_results is None:
        n_results = len({(r.cell_id, s) for r in rows for s in r.seeds})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        mine = [r for r in rows if r.table_id == t.id]
        curves = _curves(mine, records)
        md = _markdown(t, mine, n_results)
        if curves:
            cdir = out / "curves" / t.id
            cdir.mkdir(parents=True, exist_ok=True)
            links = []
            for i, (cid, png) in enumerate(curves):
                f = cdir / f"{i:03d}.png"
                f.write_bytes(base64.b64decode(png))
                written.append(f)
                links.append(f"### `{cid}`\n\n![training curves of {cid}](curves/{t.id}/{f.name})")
            md += "\n## Training curves\n\n" + "\n\n".join(links) + "\n"
        for suffix, text in ((".md", md), (".html", _html(t, mine, n_results, curves))):
            p = out / f"{t.id}{suffix}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
            written.append(p)
    for name, text in zip(("index.md", "index.html"), _index(tables, rows, n_results)):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
