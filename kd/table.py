"""`kd table NAME`: run every missing cell of a reference table, then write its report.

Order: teacher cells first (each trained once, with the recipe's teacher seed), then the other
cells; a cell already recorded for a seed (in the results folder runs are written to) is skipped, and an interrupted run resumes from its
per-epoch state, so running the same command again after an interruption finishes the table with
every cell recorded exactly once.
"""
from __future__ import annotations


from kd.cells import load_cells, load_recipe
from kd.errors import KDError
from kd.ids import cell_id
from kd.reftables import load_all
from kd.paths import REFERENCE_TABLES
from kd.results import read_records, results_root


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


def run_table(name: str, seeds: list[int], overrides: dict, progress=True, group: bool = True, **kw) -> list[dict]:
    from tqdm import tqdm
    from kd.train import run_cell
    table = table_by_name(name)
    cells, unregistered = plan(table, overrides, seeds)
    if unregistered:
        print(f"{len(unregistered)} entries have no runnable cell (quoted methods): "
              + ", ".join(sorted({e.cell_id for e in unregistered}))[:500])
    results_dir = kw.get("results_dir")
    active = _submitted_and_active(kw.get("store"), results_dir)
    from kd.log import bar_wanted      # a bar only on a terminal (the runs print their own lines otherwise)
    bar = tqdm(total=len(cells) * len(seeds), desc=f"table {name}", unit="run", disable=not bar_wanted(progress))
    todo = []
    for cell in cells:
        recipe_id = load_recipe(cell.recipe).with_overrides(**overrides).id
        cid = cell_id(cell.dataset, cell.label, cell.student, cell.teacher, recipe_id)
        for seed in seeds:
            if (cid, seed) in active:
                print(f"{cid} seed {seed}: already {active[(cid, seed)]} on the cluster (`kd list --status`); skipped")
            elif (cid, seed) not in _done(results_dir):
                todo.append((cell, seed))
    bar.update(len(cells) * len(seeds) - len(todo))
    out, errors = [], []
    # Teachers of other cells first, each alone; then, grouped, the runs that share a teacher forward
    # (kd/group.py), or one by one with group=False.
    teacher_ids = {c.teacher_cell(load_recipe(c.recipe)).id for c, _ in todo if c.teacher}
    for cell, seed in todo:
        if cell.id in teacher_ids or not group:
            # read again before each run: a teacher trained for an earlier cell is recorded meanwhile
            if (cell_id(cell.dataset, cell.label, cell.student, cell.teacher,
                        load_recipe(cell.recipe).with_overrides(**overrides).id), seed) not in _done(results_dir):
                out.append(run_cell(cell, seed, overrides=overrides, progress=progress, **kw))
            bar.update(1)
    if group:
        from kd.group import run_grouped
        rest = [(c, s) for c, s in todo if c.id not in teacher_ids]
        recs, errors = run_grouped(rest, overrides, progress=progress, **kw)
        out += recs
        bar.update(len(rest))
    bar.close()
    if errors:
        raise KDError(f"{len(errors)} run(s) failed and were recorded as failed (the others finished): "
                      + "; ".join(errors))
    return out


def _done(results_dir) -> set:
    """(cell id, seed) with an ok line in the folder runs are written to (not the committed lines)."""
    root = results_root(results_dir)
    return {(r["cell_id"], r["seed"]) for r in (read_records(root) if root.is_dir() else [])
            if r.get("status") == "ok"}


def _submitted_and_active(store, results_dir) -> dict:
    """(cell id, seed) -> queued | running for runs submitted with --executor slurm (kd.executor),
    so that training here never duplicates them."""
    from kd.store import store_root
    if not (store_root(store) / "jobs").is_dir():
        return {}
    from kd.executor import run_states
    return {k: v["state"] for k, v in run_states(store, results_dir).items() if v["state"] in ("queued", "running")}
