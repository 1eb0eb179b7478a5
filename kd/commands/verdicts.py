"""`kd compare`, `kd report` and `kd plan`: the result lines (and their stored predictions) against the
reference tables, printed, checked, written as reports, or turned into a seeds plan.

Every table is compared, whatever `--table` selects: the selection says what is printed or written,
while the report index and the count of result cells no table names always cover every table.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from kd.errors import KDError


@dataclass
class Comparison:
    tables: list          # the selected tables
    all_tables: list
    records: list
    rows: list            # rows of the selected tables
    all_rows: list
    extra: list           # result cells no table names (over every table)


def load(results=None, only: list[str] | None = None, strict: bool = False) -> Comparison:
    from kd.analysis.compare import compare, extras, latest_ok
    from kd.catalog.paths import REFERENCE_TABLES
    from kd.catalog.reftables import load_all
    from kd.records import predictions
    from kd.records.results import read_records, read_root
    all_tables = load_all(REFERENCE_TABLES)
    tables = [t for t in all_tables if not only or t.id in only]
    if only and len(tables) != len(set(only)):
        known = {t.id for t in all_tables}
        raise KDError(f"unknown table(s) {', '.join(sorted(set(only) - known))}; valid: {', '.join(sorted(known))}")
    records = read_records(results, strict=strict)
    preds = predictions.load(latest_ok(records), read_root(results))
    all_rows = compare(all_tables, records, preds)
    ids = {t.id for t in tables}
    return Comparison(tables, all_tables, records, [r for r in all_rows if r.table_id in ids], all_rows,
                      extras(all_tables, records))


def num(x, signed: bool = False, digits: int = 2) -> str:
    """A number as printed everywhere: fixed decimals, '−' for minus, '—' for none."""
    return "—" if x is None else (f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}").replace("-", "−")


def interval_text(ci, signed: bool = False) -> str:
    return "—" if ci is None else f"[{num(ci[0], signed)}, {num(ci[1], signed)}]"


def _entries_table(rows) -> str:
    from tabulate import tabulate
    body = []
    for r in rows:
        if r.ours is not None:
            half = None if r.ours_ci is None else (r.ours_ci[1] - r.ours_ci[0]) / 2
            body.append([r.table_id, r.row, r.column, num(r.published), num(r.ours) + (f" ± {num(half)}" if half else ""),
                         r.n, num(r.delta, True), interval_text(r.ci, True),
                         "not judged (proxy)" if r.verdict == "proxy" else r.verdict])
        for recipe, mean, _, n in r.quick:
            body.append([r.table_id, f"↳ {r.row}", r.column, num(r.published), num(mean), n, "", "",
                         f"not judged (quick check {recipe})"])
    return tabulate(body, headers=["table", "row", "column", "published", "ours ± 90% CI", "n", "delta",
                                   "delta 90% CI", "verdict"], disable_numparse=True) if body else ""


def _gains_table(rows) -> str:
    from tabulate import tabulate
    body = [[r.table_id, r.row, r.column, num(r.gain_published, True), num(r.gain_ours, True),
             interval_text(r.gain_ci, True), num(r.gain_beats), "—" if r.gain_p is None else f"{r.gain_p:.2g}",
             r.gain_sign or "—", r.gain_verdict or ("not judged (proxy)" if r.proxy else "—")]
            for r in rows if r.gain_ours is not None]
    return tabulate(body, headers=["table", "row", "column", "published gain", "our gain", "90% CI", "P(beats)",
                                   "McNemar p", "sign", "verdict"], disable_numparse=True) if body else ""


def _rankings_table(rows) -> str:
    from tabulate import tabulate
    from kd.analysis.compare import rankings
    body = [[k.table_id, k.column, k.n, num(k.rho), interval_text(k.rho_ci), k.top_published, k.top_ours]
            for k in rankings(rows) if k.rho is not None]
    return tabulate(body, headers=["table", "column", "rows", "Spearman rho", "90% CI", "top published", "top ours"],
                    disable_numparse=True) if body else ""


VERDICTS = ("reproduced", "inconclusive", "below", "above", "proxy", "missing")


def _fail_lines(c: Comparison, proxies: bool) -> list[str]:
    from kd.analysis.compare import FAILING, check, gain_fails, sign_fails
    out = []
    for r in check(c.rows, proxies):
        if r.verdict in FAILING:
            out.append(f"FAIL {r.table_id} | {r.row} | {r.column}: ours {num(r.ours)} vs {num(r.published)} "
                       f"(delta {num(r.delta, True)}, 90% CI {interval_text(r.ci, True)}, tolerance ±{r.tolerance:g}): {r.verdict}")
        if gain_fails(r):
            out.append(f"FAIL {r.table_id} | {r.row} | {r.column}: gain over the baseline row ours "
                       f"{num(r.gain_ours, True)} {interval_text(r.gain_ci, True)} vs {num(r.gain_published, True)} "
                       f"(tolerance ±{r.gain_tolerance:g}): {r.gain_verdict}")
        if sign_fails(r):
            out.append(f"FAIL {r.table_id} | {r.row} | {r.column}: gain ours {num(r.gain_ours, True)} "
                       f"{interval_text(r.gain_ci, True)} has the opposite sign of the published {num(r.gain_published, True)} (proxy)")
    for r in c.rows:
        if r.n == 0 and r.n_failed > 0 and not r.erratum:
            out.append(f"FAIL {r.table_id} | {r.row} | {r.column}: every run failed ({r.n_failed} failed, none ok)")
    if not any(r.ours is not None for r in c.rows):
        out.append(f"FAIL nothing was judged: no ok result line matches an entry of the {len(c.tables)} selected table(s)")
    return out


def compare_command(results=None, only=None, check: bool = False, proxies: bool = False) -> int:
    """Print entries, gains, rankings and counts; with `check`, FAIL lines and exit status 1 on failures."""
    from tabulate import tabulate
    from kd.analysis.compare import summary
    c = load(results, only, strict=check)
    for text in (_entries_table(c.rows), _gains_table(c.rows), _rankings_table(c.rows)):
        if text:
            print(text + "\n")
    counts = summary(c.rows)
    print(tabulate([[t.id] + [counts.get(t.id, {}).get(v, 0) for v in VERDICTS] for t in c.tables],
                   headers=["table", *VERDICTS]))
    if c.extra:
        print(f"{len({r.cell_id for r in c.extra})} result cells are named by no reference table")
    if not check:
        return 0
    fails = _fail_lines(c, proxies)
    for line in fails:
        print(line, file=sys.stderr)
    if fails:
        return 1
    judged = [r for r in c.rows if r.ours is not None and not r.proxy]
    n = {v: sum(r.verdict == v for r in judged) for v in ("reproduced", "inconclusive")}
    gains = [r for r in c.rows if r.gain_verdict is not None]
    signs = [r for r in c.rows if r.proxy and r.gain_sign]
    print(f"check passed: {len(judged)} judged entries ({n['reproduced']} reproduced, {n['inconclusive']} inconclusive) "
          f"and {len(gains)} gains over the baseline row, none confidently outside its tolerance"
          + (f"; {sum(r.ours is not None for r in c.rows if r.proxy)} proxy entries shown, not judged "
             f"({sum(r.gain_sign == 'disagrees' for r in signs)} gain sign(s) confidently disagree"
             f"{'' if proxies else '; --proxies fails on them'})" if signs else "")
          + ("; inconclusive entries are not failures: `kd plan TABLE` says how many seeds would settle them, "
             "`kd table TABLE --auto-seeds MAX` runs them" if n["inconclusive"] else ""))
    return 0


def report_command(results=None, only=None, out=None) -> tuple[list[Path], Path]:
    """Write the selected tables' reports and the index of every table; (paths written, folder)."""
    from kd.analysis.report import write_reports
    from kd.records.results import results_root
    from kd.records.store import check_writable
    out = Path(out or results_root(results) / "reports")
    check_writable(out, "report folder", folder=True)
    c = load(results, only)
    try:
        paths = write_reports(c.tables, c.rows + c.extra, out, n_results=len(c.records), records=c.records,
                              index=(c.all_tables, c.all_rows + c.extra))
    except OSError as e:
        raise KDError(f"cannot write reports under {out}: {e.strerror or e}") from None
    return paths, out


def plan_command(name: str, results=None) -> None:
    """Print the seeds plan of one table (kd.analysis.plan)."""
    from tabulate import tabulate
    from kd.analysis import plan
    from kd.catalog.cells import load_cells, load_recipe
    from kd.records.results import read_root
    c = load(results, [name])
    table = c.tables[0]
    needs = plan.needs(table, c.rows)
    if not needs:
        raise KDError(f"{name}: no published gain over a baseline row to plan for (the table has no baseline_row)")
    have = {r.cell_id: r.n for r in c.rows}
    print(tabulate([[n.row, n.column, num(n.gain, True), num(n.sigma), n.source, n.seeds or "—", have.get(n.cell_id, 0)]
                    for n in needs], headers=["row", "column", "published gain", "per-seed std", "std from",
                                              "seeds per method", "seeds we have"], disable_numparse=True))
    seeds = plan.cell_seeds(needs)
    cells = load_cells(check=False)
    epochs = {cid: load_recipe(cells[cid].recipe).epochs for cid in seeds if cid in cells}
    total, add = sum(seeds.values()), sum(max(0, k - have.get(cid, 0)) for cid, k in seeds.items())
    print(f"{table.id}: {total} runs over {len(seeds)} cells resolve every planned gain (80% power, 5% two-sided); "
          f"{add} more than recorded" + (f"; {sum(n.seeds is None for n in needs)} gains without a std or a gain "
                                         f"are not planned" if any(n.seeds is None for n in needs) else ""))
    for device, (h_all, h_add, k) in plan.hours(seeds, have, epochs, plan.bench_speeds(read_root(results))).items():
        print(f"  {device}: {h_all:.1f} device-hours for all, {h_add:.1f} for the runs to add "
              f"({k} of {len(seeds)} cells timed by `kd bench`)")
    inconclusive = [r for r in c.rows if r.verdict == "inconclusive"]
    for r in inconclusive:
        print(f"  inconclusive {r.row} / {r.column}: "
              + (f"about {r.settle} more seed(s) would settle it" if r.settle else "more seeds alone would not settle it"))
