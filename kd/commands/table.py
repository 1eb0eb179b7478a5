"""`kd table NAME`: run every missing cell of a reference table, then write its report.

Order: teacher cells first (each trained once, with the recipe's teacher seed), then the other
cells, grouped where they share a teacher (kd.engine); a cell already recorded for a seed (in the
results folder runs are written to) is skipped, and an interrupted run resumes from its per-epoch
state, so running the same command again after an interruption finishes the table with every cell
recorded exactly once.
"""
from __future__ import annotations


from kd.catalog.cells import load_cells, load_recipe
from kd.errors import KDError
from kd.catalog.reftables import load_all
from kd.catalog.paths import REFERENCE_TABLES
from kd.records.results import read_records, results_root


def table_by_name(name: str):
    tables = load_all(REFERENCE_TABLES)
    for t in tables:
        if t.id == name:
            return t
    raise KDError(f"unknown table '{name}'; valid tables: {', '.join(sorted(t.id for t in tables))}")


def plan(table, overrides: dict, seeds: list[int]):
    """(cells to run in order, entries without a registered cell) for `table` under `overrides`."""
    cells = load_cells()
    ids, unregistered = [], []
    for e in table.entries:
        if e.cell_id in cells:
            if e.cell_id not in ids:
                ids.append(e.cell_id)
        else:
            unregistered.append(e)
    teachers = [i for i in ids if any(cells[j].teacher and cells[j].teacher_cell(load_recipe(cells[j].recipe)).id == i
                                      for j in ids)]
    ordered = teachers + [i for i in ids if i not in teachers]
    return [cells[i] for i in ordered], unregistered


def run_table(name: str, seeds: list[int], overrides: dict, env, group: bool = True) -> list[str]:
    """Train every (cell, seed) of table `name` without an ok line in the results folder (teachers
    first; runs queued or running on the cluster skipped); the one-line errors of failed runs."""
    from kd.catalog.spec import RunSpec
    from kd.engine import run
    cells, unregistered = plan(table_by_name(name), overrides, seeds)
    if unregistered:
        print(f"{len(unregistered)} entries have no runnable cell (quoted methods): "
              + ", ".join(sorted({e.cell_id for e in unregistered}))[:500])
    active = _submitted_and_active(env.store, env.results)
    done = _done(env.results)
    todo = []
    for spec in (RunSpec.of(c, s, overrides) for c in cells for s in dict.fromkeys(seeds)):
        if spec.key in active:
            print(f"{spec.id} seed {spec.seed}: {active[spec.key]} on the cluster (`kd list --status`); skipped")
        elif spec.key not in done:
            todo.append(spec)
    print(f"table {name}: {len(todo)} run(s) to train" + (f", {len(done)} already recorded" if done else ""))
    return run(todo, env, group=group)[1] if todo else []


def run_table_auto(name: str, seeds: list[int], max_seeds: int | None, overrides: dict, env, group: bool = True,
                   log=print) -> list[str]:
    """`run_table` with `seeds`, then more seeds while more would settle an entry (`kd table --auto-seeds`;
    `max_seeds` None: the one pass).

    After each pass the table's verdicts are read again (kd.commands.verdicts.load: the committed lines
    and the user's); each inconclusive entry says how many more seeds would settle it if its mean and
    spread stayed as measured (kd.analysis.stats.seeds_to_settle). Every cell of the table then runs the
    seeds 0 .. k-1, k the most any entry needs (its seeds + that number), at most `max_seeds`: the same
    seeds for every cell, so gains stay paired and runs keep training together. It stops when no entry
    asks for a seed not yet run (all settled, or none would settle within `max_seeds`). Entries of
    quick checks (runs with overrides) are never judged, so they never ask for seeds."""
    from kd.commands.verdicts import load
    errors = run_table(name, seeds, overrides, env, group)
    while max_seeds is not None:
        open_rows = [r for r in load(env.results, [name]).rows if r.verdict == "inconclusive" and r.settle]
        want = seeds_wanted(open_rows, max_seeds)
        new = [s for s in range(want) if s not in seeds]
        entries = f"{len(open_rows)} inconclusive entr{'y' if len(open_rows) == 1 else 'ies'}"
        if not new:
            log(f"auto seeds: {entries} that more seeds would settle; no seed left to run within --auto-seeds "
                f"{max_seeds}" if open_rows else "auto seeds: no entry that more seeds would settle")
            return errors
        log(f"auto seeds: {entries}; the most seeds one needs: {max(r.n + r.settle for r in open_rows)}; "
            f"running seed(s) {', '.join(map(str, new))} of every cell")
        seeds = seeds + new
        errors += run_table(name, seeds, overrides, env, group)
    return errors


def seeds_wanted(open_rows, max_seeds: int) -> int:
    """The seed count every cell should reach: the most an unsettled entry needs (its n + settle),
    at most `max_seeds`; 0 when none needs any."""
    return min(max_seeds, max((r.n + r.settle for r in open_rows), default=0))


def _done(results_dir) -> set:
    """(cell id, seed) with an ok line in the folder runs are written to (not the committed lines)."""
    root = results_root(results_dir)
    return {(r["cell_id"], r["seed"]) for r in (read_records(root) if root.is_dir() else [])
            if r.get("status") == "ok"}


def _submitted_and_active(store, results_dir) -> dict:
    """(cell id, seed) -> how it stands (queued, running, unknown: kd.commands.jobs) for runs submitted with
    --executor slurm, so that training here never duplicates them."""
    from kd.commands.jobs import ACTIVE, run_states
    from kd.records.store import store_root
    if not (store_root(store) / "jobs").is_dir():
        return {}
    return {k: f"already {v['shown']}" for k, v in run_states(store, results_dir).items() if v["state"] in ACTIVE}
