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
    verdict     an equivalence test (TOST), with our own uncertainty: the 90 % interval of delta
                (kd.analysis.stats: each end a one-sided 5 % test) is
                    our seeds' t-interval (std s over n seeds: s/sqrt(n), n - 1 df), widened by the
                    published mean's own error where the table prints its std and run count k
                    (std/sqrt(k), k - 1 df; Welch-Satterthwaite);
                "reproduced" when that interval lies inside ± tolerance, "below" (worse than published:
                lower accuracy / higher error) or "above" (better) when it lies wholly beyond one edge,
                "inconclusive" otherwise. Why this rule: failing to show a difference is not showing
                agreement, so a wide interval (few seeds, a large spread) is "inconclusive", never
                "reproduced"; and a run is called worse only when it is confidently worse by more than the
                tolerance, so a regression check does not fail on noise. One seed has no spread of its
                own: its interval borrows the published std (the paper's run-to-run spread) or, without
                one, the binomial spread of one accuracy on the test set, sqrt(p (1 - p) / N) (close to the
                run-to-run std of CIFAR-sized trainings, Jordan ICLR 2024); it can be "below"/"above" or
                "inconclusive", never "reproduced". No spread at all: "inconclusive". "missing" without
                an ok result; "extra" for result cells no entry names; "proxy" for every entry of a proxy
                table (its cells follow another protocol: values shown, never judged). `settle`: how many
                more seeds would settle an inconclusive entry if mean and std stayed as measured.
    gain        with a baseline_row: gain = value - value(baseline row, same column and metric),
                negated for error tables, so gain > 0 means better than the baseline, for both the
                published and our numbers; gain_agrees compares the signs of the two point values. Our
                gain's 90 % interval comes from paired draws (kd.analysis.stats: runs of a column that
                share a seed share the data order and the teacher): the seed level from the per-seed
                gains, the example level from the stored predictions (top-1 entries; lines without
                predictions: seeds alone, with a note). gain_beats = P(A beats B), the share of draws
                with gain > 0; gain_p = McNemar's exact test on the stored predictions (stats.mcnemar).
                gain_sign: "agrees" / "disagrees" when our interval and the published gain (its own
                interval where the stds are printed, else its sign) both exclude 0 on the same /
                opposite sides, else "inconclusive". gain_verdict (tables that are not proxies) judges
                gain_ours - gain_published like a value: its interval (ours and the published gain's
                error) inside ± gain tolerance (the table's `gain_tolerance`, else the entry's) is
                "reproduced", wholly beyond one edge "below"/"above", else "inconclusive".
                `kd compare --check` fails on a gain_verdict below/above too, so a change that keeps
                every number inside its band but confidently erases a method's gain is caught.
    fidelity    agreement (%) and kl: means over the seeds whose lines carry them (kd.engine.member).
    quick       runs of the entry's cell with overrides (recipe '<recipe>~key=value') never judge it, but
                are attached to its row (Row.quick: (recipe id, mean, std, n) of the same statistic), so a
                report shows a quick check's numbers, marked as not the published protocol.
    ranking     per (table, column, metric): Spearman rho (average ranks for ties) between published and
                ours over rows with results (None with fewer than 3 or constant values), its 90 % interval
                from draws of every row's mean and of the published means (stats), and whether the best
                row is the same.
    check       `kd compare --check` fails on below/above values and gains of tables that are not
                proxies, never on "inconclusive"; on a proxy table only with proxies=True, and then only
                on a gain whose sign confidently disagrees (gain_sign "disagrees").
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kd.analysis import stats
from kd.catalog.ids import parse_cell_id

KEYS = ("top1_last", "top1_best", "top5_last", "top5_best")
FAILING = ("below", "above")
SIGNS = ("agrees", "disagrees", "inconclusive")


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
    proxy: bool = False                 # the table's cells follow another protocol: values never judged
    runs: int | None = None             # published run count (for the published mean's error)
    ours_ci: tuple | None = None        # 90 % interval of our mean
    ci: tuple | None = None             # 90 % interval of delta
    spread: str = ""                    # where the interval's spread comes from
    why: str = ""                       # the interval against the band, in words
    settle: int | None = None           # more seeds that would settle an inconclusive entry
    spread_sd: float | None = None      # the per-seed std behind the interval (for one seed, its stand-in)
    gain_ci: tuple | None = None        # 90 % interval of our gain
    gain_published_ci: tuple | None = None
    gain_beats: float | None = None     # P(A beats B): share of draws with gain > 0
    gain_p: float | None = None         # McNemar's exact p on the stored predictions
    gain_sign: str | None = None        # agrees | disagrees | inconclusive
    gain_note: str = ""
    agreement: float | None = None      # top-1 agreement with the teacher (%), mean over seeds
    kl: float | None = None             # mean KL(teacher || student), T = 1, mean over seeds
    values: dict = field(default_factory=dict, repr=False)    # seed -> our value (table units)
    correct: dict = field(default_factory=dict, repr=False)   # seed -> per-example 0/1 (stored predictions)


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
    rho_ci: tuple | None = None


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


def latest_ok(records) -> list[dict]:
    """The lines comparisons use: the last ok line per (cell_id, seed)."""
    return _latest_ok(records)


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


def verdict(delta: float | None, tolerance: float, published_std: float | None = None,
            higher_is_better: bool = True, *, ours_std: float | None = None, n: int = 1,
            runs: int | None = None, n_test: int | None = None, ours: float | None = None) -> str:
    """The verdict of one entry (module docstring): `delta` with our std over n seeds, the published std
    over `runs` runs; for one seed the published std or the binomial spread of `ours` on n_test examples."""
    if delta is None:
        return "missing"
    j = judgement(delta, tolerance, published_std, higher_is_better, ours_std, n, runs, n_test, ours)
    return j["verdict"]


def _published_error(published_std, runs) -> tuple[float, float]:
    """(variance, df) of a published mean: std^2/k with k - 1 df when both are printed, else exact."""
    if published_std and runs and runs >= 2:
        return published_std ** 2 / runs, runs - 1
    return 0.0, math.inf


def _our_spread(ours_std, n, published_std, runs, n_test, ours, hib) -> tuple[float | None, float, str]:
    """(per-seed std, its df, where it comes from) for our mean (module docstring: one seed)."""
    if n >= 2 and ours_std is not None:
        return ours_std, n - 1, f"t-interval over {n} seeds"
    if published_std and runs and runs >= 2:
        return published_std, runs - 1, "one seed: the published std as its spread"
    if n_test and ours is not None:
        acc = ours if hib else 100.0 - ours
        return stats.binomial_sd(acc, n_test), math.inf, f"one seed: binomial spread on {n_test} test examples"
    return None, math.inf, "one seed and no spread known"


def judgement(delta, tol, published_std, hib, ours_std, n, runs, n_test, ours) -> dict:
    """verdict, ci (of delta), ours_ci, spread, why, settle for one entry (module docstring)."""
    sd, df, how = _our_spread(ours_std, n, published_std, runs, n_test, ours, hib)
    pub_var, pub_df = _published_error(published_std, runs)
    if pub_var:
        how += f" + published std/√{runs}"
    if sd is None:
        return dict(verdict="inconclusive", ci=None, ours_ci=None, spread=how, why="no interval", settle=None, sd=None)
    se, sdf = stats.welch([(sd * sd / max(n, 1), df), (pub_var, pub_df)])
    lo, hi = stats.interval(delta, se, sdf)
    v = stats.judge(lo, hi, tol, n, hib)
    where = {"reproduced": f"inside ±{tol:g}", "inconclusive": f"overlaps the edge of ±{tol:g}"}.get(
        v, f"wholly {'below' if hi < 0 else 'above'} ±{tol:g}")
    if v == "inconclusive" and n < 2 and lo >= -tol - stats.EPS and hi <= tol + stats.EPS:
        where = f"inside ±{tol:g}, but one seed is never 'reproduced'"
    settle = stats.seeds_to_settle(delta, sd, n, pub_var, pub_df, tol) if v == "inconclusive" else None
    return dict(verdict=v, ci=(lo, hi), ours_ci=stats.interval(0.0, sd / math.sqrt(max(n, 1)), df), spread=how,
                why=f"Δ interval [{lo:+.2f}, {hi:+.2f}] {where}".replace("-", "−"), settle=settle, sd=sd)


def _joins(rec: dict, cell_id: str) -> bool:
    """The recipe guard: same cell id, and a record recipe (if given) equal to the cell id's recipe."""
    if rec.get("cell_id") != cell_id:
        return False
    recipe = rec.get("recipe")
    return recipe is None or recipe == parse_cell_id(cell_id)["recipe"]


def _quick(records, cid, seed, key, hib) -> tuple:
    """(recipe id, mean, std, n) per recipe of the runs of `cid` with overrides."""
    quick = {}
    for r in _latest_ok([r for r in records if cid and str(r.get("cell_id", "")).startswith(cid + "~")
                         and (seed is None or r.get("seed") == seed) and r.get(key) is not None]):
        quick.setdefault(parse_cell_id(r["cell_id"])["recipe"], []).append(r[key])
    out = []
    for recipe, vals in sorted(quick.items()):
        q = _stat(vals)
        out.append((recipe, q.mean if hib else 100.0 - q.mean, q.std, q.n))
    return tuple(out)


def _fidelity(ok) -> tuple[float | None, float | None]:
    f = [r["fidelity"] for r in ok if isinstance(r.get("fidelity"), dict)]
    if not f:
        return None, None
    return statistics.fmean(x["agreement"] for x in f), statistics.fmean(x["kl"] for x in f)


def _entry_row(table, e, records, predictions) -> Row:
    hib = bool(getattr(e, "higher_is_better", True))
    stat = getattr(e, "statistic", "unknown") or "unknown"
    agg_kind = getattr(e, "aggregate", None)
    seed, cid = getattr(e, "seed", None), getattr(e, "cell_id", None)
    mine = [r for r in records if cid and _joins(r, cid) and (seed is None or r.get("seed") == seed)]
    used = "ensemble" if agg_kind == "ensemble" else ("best" if stat == "best" else "last")
    key = f"ensemble_{e.metric}" if used == "ensemble" else f"{e.metric}_{used}"
    ok = [r for r in _latest_ok(mine) if r.get(key) is not None]
    s = _stat(r[key] for r in ok)
    ours = None if s.mean is None else (s.mean if hib else 100.0 - s.mean)
    tol, pstd = float(getattr(e, "tolerance", 0.0) or 0.0), getattr(e, "std", None)
    runs, proxy = getattr(e, "runs", None), bool(getattr(table, "proxy", None))
    delta = None if ours is None else ours - float(e.value)
    row = Row(table_id=table.id, row=e.row, column=e.column, cell_id=cid, metric=e.metric,
              statistic=used, statistic_assumed=(stat not in ("last", "best") and used != "ensemble"),
              higher_is_better=hib, published=float(e.value), published_std=pstd, tolerance=tol,
              ours=ours, ours_std=s.std, n=s.n, seeds=tuple(sorted(r.get("seed") for r in ok)),
              n_failed=sum(r.get("status") != "ok" for r in mine), delta=delta, verdict="missing", seed=seed,
              aggregate=agg_kind, note=getattr(e, "note", "") or "", erratum=getattr(e, "erratum", None),
              quick=_quick(records, cid, seed, key, hib), proxy=proxy, runs=runs,
              values={r.get("seed"): (r[key] if hib else 100.0 - r[key]) for r in ok})
    row.agreement, row.kl = _fidelity(ok)
    if used != "ensemble" and e.metric == "top1":
        row.correct = {r.get("seed"): c for r in ok
                       if (p := predictions.get((cid, r.get("seed")))) is not None and (c := p.correct(used)) is not None}
    if delta is not None:
        n_test = next((r["config"]["num_test"] for r in ok if isinstance(r.get("config"), dict)
                       and isinstance(r["config"].get("num_test"), int)), None)
        j = judgement(delta, tol, pstd, hib, s.std, s.n, runs, n_test, ours)
        row.verdict, row.ci, row.spread, row.why, row.settle = j["verdict"], j["ci"], j["spread"], j["why"], j["settle"]
        row.spread_sd = j["sd"]
        row.ours_ci = None if j["ours_ci"] is None else (ours + j["ours_ci"][0], ours + j["ours_ci"][1])
        if proxy:
            row.verdict, row.settle, row.why = "proxy", None, "proxy table: values shown, not judged"
    return row


def _sign(x: float) -> int:
    return (x > 1e-9) - (x < -1e-9)


def _side(ci) -> int:
    """+1 / -1 when an interval lies wholly above / below 0, else 0."""
    return 0 if ci is None else (ci[0] > 0) - (ci[1] < 0)


def _gain_draws(r: Row, b: Row, gen) -> tuple[np.ndarray | None, int, str]:
    """(draws of our gain of r over b, seeds behind them, note): paired over the seeds both have, else
    unpaired; plus the test-set level where both rows have predictions for every seed (the examples
    resampled alike for both: the per-example mean over the seeds used)."""
    sign = 1.0 if r.higher_is_better else -1.0
    common = sorted(set(r.values) & set(b.values), key=str)
    draws, note = None, ""
    if len(common) >= 2:
        draws = stats.mean_draws([sign * (r.values[s] - b.values[s]) for s in common], gen)
    elif r.spread_sd is not None and b.spread_sd is not None:
        draws = sign * (stats.mean_draws(list(r.values.values()), gen, sd=r.spread_sd)
                        - stats.mean_draws(list(b.values.values()), gen, sd=b.spread_sd))
        note = "unpaired (no two seeds in common)" + ("; one seed: its stand-in spread" if min(r.n, b.n) < 2 else "")
    if draws is not None and set(r.correct) == set(r.values) and set(b.correct) == set(b.values):
        seeds_r, seeds_b = (common, common) if len(common) >= 2 else (list(r.values), list(b.values))
        d = np.mean([r.correct[s] for s in seeds_r], axis=0) - np.mean([b.correct[s] for s in seeds_b], axis=0)
        draws = draws + stats.example_draws(d, gen)
    elif draws is not None:
        note = "; ".join(x for x in (note, "interval from seeds alone (no stored predictions)") if x)
    if draws is None:
        note = "no spread known: no interval"
    return draws, min(r.n, b.n) if not common else len(common), note


def _judge_gain(table, r: Row, b: Row) -> None:
    """Our gain of r over its baseline row b: interval, P(beats), McNemar, sign and (not proxy) verdict."""
    sign = 1.0 if r.higher_is_better else -1.0
    gen = stats.rng(f"gain|{r.table_id}|{r.column}|{r.metric}|{r.row}|{r.seed}")
    draws, n, r.gain_note = _gain_draws(r, b, gen)
    pub = sign * (stats.published_draws(r.published, r.published_std, r.runs, gen)
                  - stats.published_draws(b.published, b.published_std, b.runs, gen))
    if r.published_std and b.published_std and r.runs and r.runs >= 2:
        r.gain_published_ci = stats.percentile_interval(pub)
    paired = sorted(set(r.correct) & set(b.correct), key=str)
    if paired:
        r.gain_p = stats.mcnemar(np.array([r.correct[s] for s in paired]), np.array([b.correct[s] for s in paired]))[2]
    pub_side = _side(r.gain_published_ci) if r.gain_published_ci else _sign(r.gain_published)
    if draws is None:
        r.gain_sign = "inconclusive"
        r.gain_verdict = None if r.proxy else "inconclusive"
        return
    r.gain_ci, r.gain_beats = stats.percentile_interval(draws), float(np.mean(draws > 0))
    ours_side = _side(r.gain_ci)
    r.gain_sign = "inconclusive" if not (ours_side and pub_side) else ("agrees" if ours_side == pub_side else "disagrees")
    if not r.proxy:
        gt = getattr(table, "gain_tolerance", None)
        r.gain_tolerance = float(gt) if gt is not None else r.tolerance
        lo, hi = stats.percentile_interval(draws - pub)
        r.gain_verdict = stats.judge(lo, hi, r.gain_tolerance, n)


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
            _judge_gain(table, r, b)


def compare(tables, records, predictions: dict | None = None) -> list[Row]:
    """One Row per reference entry of every table, in table then entry order (see module docstring).
    `predictions`: (cell_id, seed) -> kd.records.predictions.Predictions of the lines compared."""
    out = []
    for t in tables:
        rows = [_entry_row(t, e, records, predictions or {}) for e in t.entries]
        _add_gains(t, rows)
        out.extend(rows)
    return out


def extras(tables, records) -> list[Row]:
    """A Row (verdict "extra", top1 last epoch, no table) per result cell that no entry of `tables` names
    (pass every table: the count must not depend on a selection)."""
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


def _rho_draws(table_id, col, metric, labels, by_row) -> np.ndarray | None:
    """Draws of Spearman's rho: every row's mean and published value drawn (stats), test examples
    resampled together where every row has predictions for all its seeds."""
    gen = stats.rng(f"rho|{table_id}|{col}|{metric}")
    rows = [by_row[k] for k in labels]
    ours = []
    for r in rows:
        d = stats.mean_draws(list(r.values.values()), gen, sd=r.spread_sd)
        ours.append(np.full(stats.DRAWS, r.ours) if d is None else d)
    ours = np.stack(ours, axis=1)
    if all(r.correct and set(r.correct) == set(r.values) for r in rows):
        acc = np.stack([np.mean(list(r.correct.values()), axis=0) for r in rows], axis=1)
        ex = stats.example_draws(acc, gen)
        ours = ours + np.where([r.higher_is_better for r in rows], ex, -ex)
    pub = np.stack([stats.published_draws(r.published, r.published_std, r.runs, gen) for r in rows], axis=1)
    rho = stats.spearman_rows(pub, ours)
    rho = rho[~np.isnan(rho)]
    return rho if len(rho) else None


def rankings(rows) -> list[Ranking]:
    """Per (table, column, metric): Spearman rho with its 90 % interval, and top-row agreement, over
    rows with results."""
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
        rho, ci = None, None
        if len(labels) >= 3:
            c = pub.rank().corr(ours.rank())
            rho = None if pd.isna(c) else float(c)
            draws = _rho_draws(tid, col, metric, labels, by_row) if rho is not None else None
            ci = None if draws is None else stats.percentile_interval(draws)
        top_p = pub.idxmax() if hib else pub.idxmin()
        top_o = ours.idxmax() if hib else ours.idxmin()
        out.append(Ranking(tid, col, metric, len(labels), rho, top_p, top_o, top_p == top_o, ci))
    return out


def gain_fails(r: Row) -> bool:
    """Our gain over the baseline row is confidently outside the gain tolerance (see `gain` above)."""
    return r.gain_verdict in FAILING and not r.erratum and not r.proxy


def sign_fails(r: Row) -> bool:
    """A proxy entry whose gain confidently has the opposite sign of the published one."""
    return r.proxy and r.gain_sign == "disagrees" and not r.erratum


def check(rows, proxies: bool = False) -> list[Row]:
    """Rows that fail `kd compare --check` (module docstring: check), except printed values flagged as
    errata. Missing and inconclusive rows never fail; proxy rows only with `proxies`."""
    return [r for r in rows if not r.erratum and
            ((not r.proxy and (r.verdict in FAILING or gain_fails(r))) or (proxies and sign_fails(r)))]


def summary(rows) -> dict:
    """table_id -> Counter of verdicts (extras are under table_id None)."""
    out: dict = {}
    for r in rows:
        out.setdefault(r.table_id, Counter())[r.verdict] += 1
    return out
