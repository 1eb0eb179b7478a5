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


def run_table(name: str, seeds: list[int], overrides: dict, progress=True, **kw) -> list[dict]:
    from tqdm import tqdm
    from kd.train import run_cell
    table = table_by_name(name)
    cells, unregistered = plan(table, overrides, seeds)
    if unregistered:
        print(f"{len(unregistered)} entries have no runnable cell (quoted methods): "
              + ", ".join(sorted({e.cell_id for e in unregistered}))[:500])
    results_dir = kw.get("results_dir")
    active = _submitted_and_active(kw.get("store"), results_dir)
    out = []
    from kd.log import bar_wanted      # a bar only on a terminal (the runs print their own lines otherwise)
    bar = tqdm(total=len(cells) * len(seeds), desc=f"table {name}", unit="run", disable=not bar_wanted(progress))
    for cell in cells:
        recipe_id = load_recipe(cell.recipe).with_overrides(**overrides).id
        cid = cell_id(cell.dataset, cell.label, cell.student, cell.teacher, recipe_id)
        for seed in seeds:
            # read again before each run: a teacher trained for an earlier cell is recorded meanwhile.
            # Only the folder runs are written to counts (as for `kd run`), not the committed lines.
            root = results_root(results_dir)
            done = {(r["cell_id"], r["seed"]) for r in (read_records(root) if root.is_dir() else [])
                    if r.get("status") == "ok"}
            if (cid, seed) in active:
                print(f"{cid} seed {seed}: already {active[(cid, seed)]} on the cluster (`kd list --status`); skipped")
            elif (cid, seed) not in done:
                out.append(run_cell(cell, seed, overrides=overrides, progress=progress, **kw))
            bar.update(1)
    bar.close()
    return out


def _submitted_and_active(store, results_dir) -> dict:
    """(cell id, seed) -> queued | running for runs submitted with --executor slurm (kd.executor),
    so that training here never duplicates them."""
    from kd.train import store_root
    if not (store_root(store) / "jobs").is_dir():
        return {}
    from kd.executor import run_states
    return {k: v["state"] for k, v in run_states(store, results_dir).items() if v["state"] in ("queued", "running")}
