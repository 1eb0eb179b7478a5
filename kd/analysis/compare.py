"""Compare result lines (kd/records/results.py) with published reference tables. Pure functions, no I/O.

Conventions
    join        a record judges an entry only if its cell_id equals the entry's cell_id exactly and its
                recipe (when present) equals the cell id's recipe part; so a shortened run (recipe
                '<recipe>~key=value') never judges a full-protocol entry.
    runs        only status "ok" records count; failed ones are counted as n_failed. A rerun of the same
                (cell, seed) supersedes the earlier line (the last ok line per seed is used).
    statistic   "last" -> top1_last/top5_last, "best" -> top1_best/top5_best; "unknown" uses last and
                sets statistic_assumed.
    units       higher_is_better=False entries are error rates: ours = 100 - accuracy. std is unchanged.
    seed        an entry with seed=k is compared with seed k's record only.
    ensemble    aggregate="ensemble" entries use the record field "ensemble_top1"/"ensemble_top5"
                (mean over seeds carrying it); without such a field they are "missing".
    delta       ours - published, signed, in the table's units (points of accuracy or of error).
    verdict     "reproduced" if |delta| <= tolerance or |delta| <= 2 * published std;
                otherwise "below" (ours worse than published: lower accuracy / higher error) or
                "above" (ours better); "missing" without an ok result; "extra" for result cells no
                entry names.
    gain        with a baseline_row: gain = value - value(baseline row, same column and metric),
                negated for error tables, so gain > 0 means better than the baseline, for both the
                published and our numbers; gain_agrees compares their signs. gain_verdict judges our gain
                against the published (or recorded) one like a value: "reproduced" if
                |gain_ours - gain_published| <= gain tolerance (the table's `gain_tolerance`, else the
                entry's tolerance; no std band), else "below"/"above". `kd compare --check` fails on it too,
                so a change that keeps every number inside its band but erases a method's gain is caught.
    quick       runs of the entry's cell with overrides (recipe '<recipe>~key=value') never judge it, but
                are attached to its row (Row.quick: (recipe id, mean, std, n) of the same statistic), so a
                report shows a quick check's numbers, marked as not the published protocol.
    ranking     per (table, column, metric): Spearman rho (average ranks for ties) between published and
                ours over rows with results (None with fewer than 3 or constant values), and whether
                the best row is the same.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from kd.catalog.ids import parse_cell_id

KEYS = ("top1_last", "top1_best", "top5_last", "top5_best")
FAILING = ("below", "above")


@dataclass(frozen=True)
class Stat:
    mean: float | None
    std: float | None  # sample std (ddof=1); None for n < 2
    n: int


@dataclass
class Agg:
    cell_id: str
    n: int
    n_failed: int
    seeds: tuple
    stats: dict = field(default_factory=dict)  # key in KEYS -> Stat


@dataclass
class Row:
    table_id: str | None
    row: str | None
    column: str | None
    cell_id: str | None
    metric: str
    statistic: str  # "last" | "best" | "ensemble" (the statistic actually used)
    statistic_assumed: bool
    higher_is_better: bool
    published: float | None
    published_std: float | None
    tolerance: float
    ours: float | None
    ours_std: float | None
    n: int
    seeds: tuple
    n_failed: int
    delta: float | None
    verdict: str
    seed: int | None = None
    aggregate: str | None = None
    note: str = ""
    erratum: str | None = None  # the table flags this printed value as wrong: shown, never a check target
    gain_published: float | None = None
    gain_ours: float | None = None
    gain_agrees: bool | None = None
    gain_tolerance: float | None = None
    gain_verdict: str | None = None
    quick: tuple = ()


@dataclass(frozen=True)
class Ranking:
    table_id: str
    column: str
    metric: str
    n: int
    rho: float | None
    top_published: str | None
    top_ours: str | None
    top_agrees: bool | None


def _stat(values) -> Stat:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def _latest_ok(records) -> list[dict]:
    """Ok records, the last line per (cell_id, seed) winning, in first-seen order."""
    latest = {}
    for r in records:
        if r.get("status") == "ok":
            latest[(r.get("cell_id"), r.get("seed"))] = r
    return list(latest.values())


def aggregate(records) -> dict[str, Agg]:
    """Per cell: mean/std/n over ok records (one per seed) of each of KEYS; failed runs only in n_failed."""
    out: dict[str, Agg] = {}
    for r in records:
        a = out.setdefault(r["cell_id"], Agg(r["cell_id"], 0, 0, ()))
        a.n_failed += r.get("status") != "ok"
    latest = _latest_ok(records)
    for cid, a in out.items():
        ok = [r for r in latest if r["cell_id"] == cid]
        a.n, a.seeds = len(ok), tuple(sorted(r.get("seed") for r in ok))
        a.stats = {k: _stat(r.get(k) for r in ok) for k in KEYS}
    return out


def verdict(delta: float | None, tolerance: float, published_std: float | None,
            higher_is_better: bool = True) -> str:
    """reproduced if |delta| <= tolerance or |delta| <= 2*published_std; else below (worse) / above (better)."""
    if delta is None:
        return "missing"
    if abs(delta) <= tolerance + 1e-9 or (published_std and abs(delta) <= 2 * published_std + 1e-9):
        return "reproduced"
    better = delta if higher_is_better else -delta
    return "above" if better > 0 else "below"


def _joins(rec: dict, cell_id: str) -> bool:
    """The recipe guard: same cell id, and a record recipe (if given) equal to the cell id's recipe."""
    if rec.get("cell_id") != cell_id:
        return False
    recipe = rec.get("recipe")
    return recipe is None or recipe == parse_cell_id(cell_id)["recipe"]


def _entry_row(table, e, records) -> Row:
    hib = bool(getattr(e, "higher_is_better", True))
    stat = getattr(e, "statistic", "unknown") or "unknown"
    agg_kind = getattr(e, "aggregate", None)
    seed = getattr(e, "seed", None)
    cid = getattr(e, "cell_id", None)
    mine = [r for r in records if cid and _joins(r, cid) and (seed is None or r.get("seed") == seed)]
    n_failed = sum(r.get("status") != "ok" for r in mine)
    ok = _latest_ok(mine)
    if agg_kind == "ensemble":
        used = "ensemble"
        key = f"ensemble_{e.metric}"
    else:
        used = "best" if stat == "best" else "last"
        key = f"{e.metric}_{used}"
    ok = [r for r in ok if r.get(key) is not None]
    s = _stat(r[key] for r in ok)
    ours = None if s.mean is None else (s.mean if hib else 100.0 - s.mean)
    tol = float(getattr(e, "tolerance", 0.0) or 0.0)
    pstd = getattr(e, "std", None)
    delta = None if ours is None else ours - float(e.value)
    quick = {}
    for r in _latest_ok([r for r in records if cid and str(r.get("cell_id", "")).startswith(cid + "~")
                         and (seed is None or r.get("seed") == seed) and r.get(key) is not None]):
        quick.setdefault(parse_cell_id(r["cell_id"])["recipe"], []).append(r[key])
    quick_rows = []
    for recipe, vals in sorted(quick.items()):
        q = _stat(vals)
        quick_rows.append((recipe, q.mean if hib else 100.0 - q.mean, q.std, q.n))
    return Row(table_id=table.id, row=e.row, column=e.column, cell_id=cid, metric=e.metric,
               statistic=used, statistic_assumed=(stat not in ("last", "best") and used != "ensemble"),
               higher_is_better=hib, published=float(e.value), published_std=pstd, tolerance=tol,
               ours=ours, ours_std=s.std, n=s.n, seeds=tuple(sorted(r.get("seed") for r in ok)),
               n_failed=n_failed, delta=delta, verdict=verdict(delta, tol, pstd, hib), seed=seed,
               aggregate=agg_kind, note=getattr(e, "note", "") or "",
               erratum=getattr(e, "erratum", None), quick=tuple(quick_rows))


def _sign(x: float) -> int:
    return (x > 1e-9) - (x < -1e-9)


def _add_gains(table, rows: list[Row]) -> None:
    base_label = getattr(table, "baseline_row", None)
    if not base_label:
        return
    base = {}
    for r in rows:  # prefer the all-seeds entry of the baseline row
        if r.row == base_label and (r.column, r.metric) not in base and r.seed is None:
            base[(r.column, r.metric)] = r
    for r in rows:
        b = base.get((r.column, r.metric))
        if b is None or r is b:
            continue
        sign = 1.0 if r.higher_is_better else -1.0
        r.gain_published = sign * (r.published - b.published)
        if r.ours is not None and b.ours is not None:
            r.gain_ours = sign * (r.ours - b.ours)
            r.gain_agrees = _sign(r.gain_published) == _sign(r.gain_ours)
            gt = getattr(table, "gain_tolerance", None)
            r.gain_tolerance = float(gt) if gt is not None else r.tolerance
            r.gain_verdict = verdict(r.gain_ours - r.gain_published, r.gain_tolerance, None)


def compare(tables, records) -> list[Row]:
    """One Row per reference entry of every table, in table then entry order (see module docstring)."""
    out = []
    for t in tables:
        rows = [_entry_row(t, e, records) for e in t.entries]
        _add_gains(t, rows)
        out.extend(rows)
    return out


def extras(tables, records) -> list[Row]:
    """A Row (verdict "extra", top1 last epoch, no table) per result cell that no entry names."""
    named = {getattr(e, "cell_id", None) for t in tables for e in t.entries}
    out = []
    for cid, a in aggregate(records).items():
        if cid in named:
            continue
        s = a.stats["top1_last"]
        out.append(Row(table_id=None, row=None, column=None, cell_id=cid, metric="top1", statistic="last",
                       statistic_assumed=False, higher_is_better=True, published=None, published_std=None,
                       tolerance=0.0, ours=s.mean, ours_std=s.std, n=a.n, seeds=a.seeds,
                       n_failed=a.n_failed, delta=None, verdict="extra"))
    return out


def rankings(rows) -> list[Ranking]:
    """Per (table, column, metric): Spearman rho and top-row agreement over rows with results."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r.table_id is not None and r.ours is not None:
            groups.setdefault((r.table_id, r.column, r.metric), {}).setdefault(r.row, r)
    out = []
    for (tid, col, metric), by_row in groups.items():
        labels = list(by_row)
        pub = pd.Series([by_row[k].published for k in labels], index=labels)
        ours = pd.Series([by_row[k].ours for k in labels], index=labels)
        hib = by_row[labels[0]].higher_is_better
        rho = None
        if len(labels) >= 3:
            c = pub.rank().corr(ours.rank())
            rho = None if pd.isna(c) else float(c)
        top_p = pub.idxmax() if hib else pub.idxmin()
        top_o = ours.idxmax() if hib else ours.idxmin()
        out.append(Ranking(tid, col, metric, len(labels), rho, top_p, top_o, top_p == top_o))
    return out


def gain_fails(r: Row) -> bool:
    """Our gain over the baseline row is outside the gain tolerance (see `gain` above)."""
    return r.gain_verdict in FAILING and not r.erratum


def check(rows) -> list[Row]:
    """Rows with results outside tolerance (below/above) or whose gain over the baseline row is outside
    the gain tolerance, except printed values flagged as errata: `kd compare --check` fails iff this is
    non-empty. Missing rows never fail."""
    return [r for r in rows if (r.verdict in FAILING or gain_fails(r)) and not r.erratum]


def summary(rows) -> dict:
    """table_id -> Counter of verdicts (extras are under table_id None)."""
    out: dict = {}
    for r in rows:
        out.setdefault(r.table_id, Counter())[r.verdict] += 1
    return out
