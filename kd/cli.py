"""`kd` command line: run cells, list them, import teachers, run the embedded demo.

Every user error is one line on stderr (`kd: error: ...`) and exit status 2; nothing is written.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kd.errors import KDError


def _common(p: argparse.ArgumentParser):
    p.add_argument("--data-root", help="dataset root (default: $KD_DATA_ROOT or ./data)")
    p.add_argument("--store", help="checkpoint store (default: $KD_STORE or ./checkpoints)")
    p.add_argument("--results", help="results directory (default: $KD_RESULTS or ./results)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _executor_flags(p: argparse.ArgumentParser):
    g = p.add_argument_group("cluster (--executor slurm; see README 'Running a whole table on a cluster')")
    g.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: train here (default); slurm: submit job arrays through submitit and return")
    g.add_argument("--slurm-config", help="YAML file of Slurm options (flags below win)")
    g.add_argument("--partition"), g.add_argument("--account"), g.add_argument("--qos")
    g.add_argument("--gpus-per-job", type=int, help="GPUs per run (>1: one data-parallel job, kd.dist)")
    g.add_argument("--cpus-per-task", type=int, help="CPUs per task (one task per GPU)")
    g.add_argument("--mem-gb", type=float), g.add_argument("--time-min", type=int, help="time limit per job")
    g.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="extra sbatch flag (repeatable)")


def _submit(a, cells, seeds, ov) -> bool:
    """--executor slurm: submit and return True; local: False."""
    if a.executor != "slurm":
        given = [f"--{k.replace('_', '-')}" for k in ("slurm_config", "partition", "account", "qos", "gpus_per_job",
                                                      "cpus_per_task", "mem_gb", "time_min", "sbatch")
                 if getattr(a, k) is not None]
        if given:
            raise KDError(f"{', '.join(given)}: Slurm options, used only with --executor slurm")
        return False
    from kd.executor import options_from_args, submit_cells
    submit_cells(cells, seeds, {k: v for k, v in ov.items() if v is not None}, options_from_args(a),
                 data_root=a.data_root, store=a.store, results_dir=a.results, device=a.device)
    return True


def cmd_run(a):
    from kd.cells import find_cell
    from kd.dist import launch_rank
    from kd.train import run_cell
    cell = find_cell(a.cell)
    ov = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "subset": a.subset}
    if _submit(a, [cell], a.seed, ov):
        return
    for seed in a.seed:
        rec = run_cell(cell, seed, device=a.device, overrides=ov, data_root=a.data_root, store=a.store,
                       results_dir=a.results, progress=not a.no_progress)
        if launch_rank() == 0:           # under torchrun: one summary, from rank 0
            print(f"{rec['cell_id']} seed {seed}: top-1 last {rec['top1_last']:.2f} best {rec['top1_best']:.2f} "
                  f"(epoch {rec['best_epoch']}), {rec['images_per_s']} img/s on {rec['device']}"
                  + (f", {rec['world_size']} processes" if rec.get("world_size", 1) > 1 else ""))


def cmd_list(a):
    from tabulate import tabulate
    from kd.cells import load_cells
    from kd.results import read_records
    cells = load_cells()
    if a.table:
        from kd.table import table_by_name
        wanted = {e.cell_id for e in table_by_name(a.table).entries}
        cells = {k: v for k, v in cells.items() if k in wanted}
    done: dict[str, list[int]] = {}
    for r in read_records(Path(a.results) if a.results else None):
        if r.get("status") == "ok":
            done.setdefault(r["cell_id"], []).append(r["seed"])
    states: dict[str, dict[int, str]] = {}
    if a.status:                     # runs' states, including submitted jobs and runs with overrides
        from kd.executor import run_states
        for (cid, seed), st in run_states(a.store, Path(a.results) if a.results else None).items():
            if cid.split("~")[0] in cells:
                states.setdefault(cid, {})[seed] = st["state"]
    rows = []
    for cid in sorted(set(cells) | set(states)):
        c = cells[cid.split("~")[0]]
        if a.dataset and c.dataset.split("-")[0] != a.dataset and c.dataset != a.dataset:
            continue
        if a.method and a.method not in c.label.split("+"):
            continue
        seeds = sorted(done.get(cid, []))
        if a.status == "done" and not seeds or a.status == "missing" and seeds:
            continue
        st = states.get(cid, {})
        if a.status in ("queued", "running", "failed") and a.status not in st.values():
            continue
        rows.append([cid, len(seeds), ",".join(map(str, seeds)) or "-"]
                    + ([" ".join(f"{s}:{v}" for s, v in sorted(st.items())) or "-"] if a.status else []))
    print(tabulate(rows, headers=["cell", "runs", "seeds"] + (["state (seed:state)"] if a.status else []),
                   tablefmt="simple"))
    print(f"{len(rows)} cells")


def cmd_import_teacher(a):
    import shutil
    from kd.cells import find_cell, load_recipe
    from kd.train import build_model, checkpoint_path, load_checkpoint, sha256_file, store_root
    cell = find_cell(a.cell)
    if cell.label != "baseline" or cell.teacher:
        raise KDError(f"{a.cell} is not a teacher cell (expected dataset/baseline/<model>/<recipe>)")
    src = Path(a.file)
    if not src.is_file():
        raise KDError(f"no such file: {src}")
    digest = sha256_file(src)
    if digest != a.sha256.lower():
        raise KDError(f"{src}: sha256 is {digest}, not the {a.sha256} you gave; nothing imported")
    from kd.data import num_classes
    load_checkpoint(build_model(cell.student, num_classes(cell.dataset, a.data_root)), src,
                    expected_sha256=digest)                                        # strict load check
    dst = checkpoint_path(cell.id, load_recipe(cell.recipe).teacher_seed, store_root(a.store))
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.with_suffix(".sha256").write_text(f"{digest}  imported from {src.resolve()}\n")
    print(f"imported {src} as teacher {cell.id} ({digest[:12]}…) -> {dst}")


def _compare(results=None, only: list[str] | None = None):
    from kd.compare import compare, extras
    from kd.reftables import load_all
    from kd.results import read_records
    from kd.table import REPO
    tables = [t for t in load_all(REPO / "reference_tables") if not only or t.id in only]
    if only and len(tables) != len(set(only)):
        known = {t.id for t in load_all(REPO / "reference_tables")}
        raise KDError(f"unknown table(s) {', '.join(sorted(set(only) - known))}; valid: {', '.join(sorted(known))}")
    records = read_records(Path(results) if results else None)
    rows = compare(tables, records)
    return tables, records, rows, extras(tables, records)


def cmd_compare(a):
    from tabulate import tabulate
    from kd.compare import check, summary
    tables, records, rows, extra = _compare(a.results, a.table)
    judged = [r for r in rows if r.verdict != "missing"]
    if judged:
        print(tabulate([[r.table_id, r.row, r.column, r.published, f"{r.ours:.2f}" if r.ours is not None else "-",
                         r.n, f"{r.delta:+.2f}" if r.delta is not None else "-", r.verdict] for r in judged],
                       headers=["table", "row", "column", "published", "ours", "n", "delta", "verdict"]))
    counts = summary(rows)
    print(tabulate([[t.id] + [counts.get(t.id, {}).get(v, 0) for v in ("reproduced", "below", "above", "missing")]
                    for t in tables], headers=["table", "reproduced", "below", "above", "missing"]))
    if extra:
        print(f"{len({r.cell_id for r in extra})} result cells are named by no reference table")
    if a.check:
        bad = check(rows)
        for r in bad:
            print(f"FAIL {r.table_id} | {r.row} | {r.column}: ours {r.ours:.2f} vs {r.published} "
                  f"(delta {r.delta:+.2f}, tolerance {r.tolerance})", file=sys.stderr)
        if bad:
            raise SystemExit(1)
        print(f"check passed: {len(judged)} judged entries within tolerance")


def cmd_report(a):
    from kd.report import write_reports
    tables, records, rows, extra = _compare(a.results, a.table)
    out = Path(a.out or Path(a.results or os.environ.get("KD_RESULTS", "results")) / "reports")
    paths = write_reports(tables, rows + extra, out, n_results=len(records))
    print(f"wrote {len(paths)} files under {out} (open {out / 'index.html'})")


def cmd_table(a):
    from kd.table import plan, run_table, table_by_name
    ov = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "subset": a.subset}
    ov = {k: v for k, v in ov.items() if v is not None}
    if _submit(a, plan(table_by_name(a.name), ov, a.seed)[0], a.seed, ov):
        print(f"`kd list --table {a.name} --status` shows progress; `kd report --table {a.name}` when done")
        return
    run_table(a.name, a.seed, ov, progress=not a.no_progress, device=a.device, data_root=a.data_root,
              store=a.store, results_dir=a.results)
    a.table, a.out = [a.name], None
    cmd_report(a)


def cmd_demo(a):
    from kd.demo import demo
    demo(seeds=a.seeds, results=a.results, store=a.store, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kd", description="Knowledge-distillation benchmark suite")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="train one cell (its teacher first when none is stored)")
    r.add_argument("cell", help="cell id, e.g. cifar100/kd/resnet8x4_from_resnet32x4/crd (see `kd list`)")
    r.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (default 0)")
    r.add_argument("--epochs", type=int, help="override: epochs (milestones scale); recorded as another recipe")
    r.add_argument("--batch-size", type=int, help="override: batch size")
    r.add_argument("--lr", type=float, help="override: learning rate")
    r.add_argument("--subset", type=int, help="override: train on a seeded subset of N images")
    _common(r)
    _executor_flags(r)
    r.set_defaults(fn=cmd_run)

    l = sub.add_parser("list", help="list cells and their finished runs")
    l.add_argument("--table", help="only the cells of this reference table")
    l.add_argument("--dataset"), l.add_argument("--method")
    l.add_argument("--status", nargs="?", const="all", choices=["all", "done", "missing", "queued", "running", "failed"],
                   help="show each seed's state (done/queued/running/failed: results and submitted Slurm jobs); "
                        "with a state, only cells that have it")
    l.add_argument("--results")
    l.add_argument("--store", help="checkpoint store, where submitted jobs are tracked (default: $KD_STORE or ./checkpoints)")
    l.set_defaults(fn=cmd_list)

    t = sub.add_parser("import-teacher", help="use a teacher checkpoint you have, checked against its sha256")
    t.add_argument("cell", help="the teacher's cell id, e.g. cifar100/baseline/resnet32x4/crd")
    t.add_argument("file")
    t.add_argument("--sha256", required=True)
    _common(t)
    t.set_defaults(fn=cmd_import_teacher)

    d = sub.add_parser("demo", help="embedded CPU benchmark: digits, teacher + baseline + KD")
    d.add_argument("--seeds", type=int, default=5)
    _common(d)
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("compare", help="judge results against the reference tables")
    c.add_argument("--table", nargs="+", help="only these tables")
    c.add_argument("--check", action="store_true", help="exit 1 when a result is outside its tolerance (CI)")
    c.add_argument("--results")
    c.set_defaults(fn=cmd_compare)

    rp = sub.add_parser("report", help="write Markdown and HTML reports under results/reports/")
    rp.add_argument("--table", nargs="+", help="only these tables")
    rp.add_argument("--out", help="output folder (default: <results>/reports)")
    rp.add_argument("--results")
    rp.set_defaults(fn=cmd_report)

    tb = sub.add_parser("table", help="run every missing cell of a reference table, then write its report")
    tb.add_argument("name", help="table id, e.g. crd2020_table1 (see reference_tables/)")
    tb.add_argument("--seed", type=int, nargs="+", default=[0])
    for flag, typ in (("--epochs", int), ("--batch-size", int), ("--lr", float), ("--subset", int)):
        tb.add_argument(flag, type=typ, help="override (recorded as another recipe)")
    _common(tb)
    _executor_flags(tb)
    tb.set_defaults(fn=cmd_table)

    a = p.parse_args(argv)
    try:
        a.fn(a)
    except KDError as e:
        from kd.dist import launch_rank
        if launch_rank() == 0:           # under torchrun every rank fails alike: one line, from rank 0
            print(f"kd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
