"""`kd` command line: run cells, list them, import teachers, run the embedded demo.

Every user error is one line on stderr (`kd: error: ...`) and exit status 2; nothing is written.
Arguments are checked (seeds, device, overrides, output folders) before anything runs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kd.errors import KDError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`kd: error: ...`), exit 2, like every other error."""

    def error(self, message):
        print(f"kd: error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _device(name: str | None) -> str | None:
    """A device this machine has: cpu, cuda[:k] (with a GPU k), mps; None picks cuda when available."""
    if name is None:
        return None
    import torch
    try:
        d = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise KDError(f"--device {name!r}: not a device; use cpu, cuda, cuda:1 ...") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise KDError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu")
        if d.index is not None and d.index >= n:
            raise KDError(f"--device {name}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise KDError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif d.type != "cpu":
        raise KDError(f"--device {name}: unsupported device type '{d.type}'; use cpu, cuda or mps")
    return name


def _check_run_args(a) -> dict:
    """Seeds, device and overrides of `kd run` / `kd table`, checked before anything runs."""
    from kd.catalog.cells import FieldError, check_override, check_seed
    for seed in a.seed:
        check_seed(seed, "--seed")
    a.device = _device(a.device)
    ov = {k: v for k, v in {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "subset": a.subset,
                            "precision": getattr(a, "precision", None)}.items() if v is not None}
    for k, v in ov.items():
        try:
            check_override(k, v)
        except FieldError as e:
            raise KDError(f"--{k.replace('_', '-')}: {e}") from None
    return ov


def _common(p: argparse.ArgumentParser):
    p.add_argument("--data-root", help="dataset root (default: $KD_DATA_ROOT or ./data)")
    p.add_argument("--store", help="checkpoint store (default: $KD_STORE or ./checkpoints)")
    p.add_argument("--results", help="results directory (default: $KD_RESULTS or ./results/local, git-ignored)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one plain line per epoch (also off a terminal or with TQDM_DISABLE=1)")
    p.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files under DIR "
                   "(needs the tensorboard package: pip install 'kd-bench[tensorboard]')")
    p.add_argument("--mode", choices=["eager", "compile", "graph"],
                   help="execution: eager, compile (torch.compile) or graph (CUDA graphs); default graph on CUDA, "
                        "eager on the CPU. Changes float rounding only; recorded in every result line")
    p.add_argument("--no-channels-last", action="store_true", help="keep models and batches in NCHW (recorded)")


def _logging(a):
    from kd.records.log import configure
    if getattr(a, "tensorboard", None):
        configure(tensorboard=a.tensorboard)


def _execution(a):
    """--mode / --no-channels-last on the chosen device (None: the device's default)."""
    if not a.mode and not a.no_channels_last:
        return None
    import torch
    from kd.engine.execution import resolve
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return resolve(dev, a.mode, False if a.no_channels_last else None)


def cmd_bench(a):
    from kd.commands.bench import bench
    bench(a.cell, modes=a.modes, device=a.device, steps=a.steps, warmup=a.warmup, rounds=a.rounds,
          threads=a.threads, batch_size=a.batch_size, repdistiller=a.repdistiller, workers=a.workers,
          results=a.results, channels_last=not a.no_channels_last, data_root=a.data_root,
          fold_teacher_bn=a.fold_teacher_bn)


def cmd_doctor(a):
    from kd.commands.doctor import doctor
    a.device = _device(a.device)
    line = doctor(quick=a.quick, device=a.device, budget_s=a.budget_s, repdistiller=a.repdistiller,
                  data_root=a.data_root, results=a.results, only=a.only)
    return 1 if line["verdict"] == "FAIL" else 0


def _executor_flags(p: argparse.ArgumentParser):
    g = p.add_argument_group("cluster (--executor slurm; see README 'Running a whole table on a cluster')")
    g.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: train here (default); slurm: submit job arrays through submitit and return")
    g.add_argument("--slurm-config", help="YAML file of Slurm options (flags below win)")
    g.add_argument("--partition"), g.add_argument("--account"), g.add_argument("--qos")
    g.add_argument("--gpus-per-job", type=int, help="GPUs per run (>1: one data-parallel job, kd.engine.dist)")
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
    from kd.commands.slurm import options_from_args, submit_cells
    submit_cells(cells, seeds, {k: v for k, v in ov.items() if v is not None}, options_from_args(a),
                 data_root=a.data_root, store=a.store, results_dir=a.results, device=a.device)
    return True


def cmd_bench_group(a):
    from kd.commands.bench import bench_group
    ov = {k: v for k, v in {"epochs": a.epochs, "subset": a.subset, "batch_size": a.batch_size}.items() if v}
    bench_group(a.table, seed=a.seed, overrides=ov, device=a.device, threads=a.threads, data_root=a.data_root,
                results=a.results)


def _env(a):
    """The settings a command's runs share (kd.engine.Env), from the common flags."""
    from kd.engine import Env
    return Env(a.data_root, a.store, a.results, a.device, _execution(a), not a.no_progress)


def _raise_failed(errors):
    if errors:
        raise KDError(f"{len(errors)} run(s) failed and were recorded as failed (the others finished): "
                      + "; ".join(errors))


def cmd_run(a):
    from kd.catalog.cells import find_cell
    from kd.catalog.spec import RunSpec
    from kd.engine import run
    from kd.engine.dist import launch_rank
    from kd.records.results import recorded_seeds, results_root
    ov = _check_run_args(a)
    cells = [find_cell(c) for c in dict.fromkeys(a.cell)]
    if _submit(a, cells, a.seed, ov):
        return
    todo = []
    for cell in cells:
        for seed in dict.fromkeys(a.seed):
            spec = RunSpec.of(cell, seed, ov)
            if a.force or seed not in recorded_seeds(spec.id, a.results):
                todo.append(spec)
            elif launch_rank() == 0:
                print(f"{spec.id} seed {seed}: already recorded under {results_root(a.results)}; skipped (--force runs it again)")
    if not todo:
        return
    _logging(a)
    recs, errors = run(todo, _env(a), group=not a.no_group)
    for rec in recs:
        _summary(rec, rec["seed"])
    _raise_failed(errors)


def _summary(rec, seed):
    from kd.engine.dist import launch_rank
    if launch_rank() == 0:               # under torchrun: one summary, from rank 0
        print(f"{rec['cell_id']} seed {seed}: top-1 last {rec['top1_last']:.2f} best {rec['top1_best']:.2f} "
              f"(epoch {rec['best_epoch']}), {rec['images_per_s']} img/s on {rec['device']}"
              + (f", {rec['world_size']} processes" if rec.get("world_size", 1) > 1 else ""))


def cmd_list(a):
    from tabulate import tabulate
    from kd.catalog.cells import load_cells
    from kd.analysis.lookup import QUICK, list_rows
    from kd.records.results import read_records, read_root
    cells = load_cells()
    if a.table:
        from kd.commands.table import table_by_name
        wanted = {e.cell_id for e in table_by_name(a.table).entries}
        cells = {k: v for k, v in cells.items() if k in wanted}
    records = read_records(Path(a.results) if a.results else None)
    states: dict[str, dict[int, str]] = {}
    if a.status:                     # runs' states, including submitted jobs and runs with overrides
        from kd.commands.slurm import run_states
        for (cid, seed), st in run_states(a.store, Path(a.results) if a.results else None).items():
            states.setdefault(cid, {})[seed] = st["state"]
    rows = list_rows(cells, records, a.dataset, a.method, a.status if a.status in ("done", "missing") else None)
    if a.status:                     # runs known only by their jobs (no result line yet): under their cell
        shown = {row[0].removeprefix(QUICK) for row in rows}
        for cid in sorted(set(states) - shown, reverse=True):
            at = next((i for i, row in enumerate(rows) if row[0] == cid.split("~")[0]), None)
            if at is not None:
                rows.insert(at + 1, [f"{QUICK}{cid}" if "~" in cid else cid, 0, "-"])
        for row in rows:
            st = states.get(row[0].removeprefix(QUICK), {})
            row.append(" ".join(f"{s}:{v}" for s, v in sorted(st.items())) or "-")
        if a.status in ("queued", "running", "failed"):
            rows = [row for row in rows if a.status in states.get(row[0].removeprefix(QUICK), {}).values()]
    print(tabulate(rows, headers=["cell", "runs", "seeds"] + (["state (seed:state)"] if a.status else []),
                   tablefmt="simple"))
    n = sum(not r[0].startswith(QUICK) for r in rows)
    print(f"{n} cells; runs counted from the result lines under {read_root(a.results)}/"
          + ("" if a.results or os.environ.get("KD_RESULTS") else " (committed, and yours in results/local/)")
          + f"; {QUICK.strip()} rows: runs with overrides (quick checks, not the published protocol)")


def cmd_find(a):
    from tabulate import tabulate
    from kd.catalog.cells import load_cells
    from kd.analysis.lookup import command_for, find_entries
    from kd.catalog.paths import REFERENCE_TABLES
    from kd.catalog.reftables import load_all
    if not any((a.value, a.table, a.method, a.pair, a.dataset)):
        raise KDError("give a number (kd find 75.46) or --table, --method, --pair or --dataset")
    entries = find_entries(load_all(REFERENCE_TABLES), a.value, a.table, a.method, a.pair, a.dataset)
    if not entries:
        raise KDError("no reference entry matches; `kd find --table T` lists a table's entries")
    cells = load_cells(check=False)
    print(tabulate([[f"{e.value:g}" + (f" ± {e.std:g}" if e.std else ""), e.table_id, e.row, e.column, e.cell_id,
                     command_for(e, cells)] for e in entries],
                   headers=["published", "table", "row", "column", "cell", "command"], disable_numparse=True))
    print(f"{len(entries)} entries")


def cmd_import_teacher(a):
    from kd.catalog.cells import find_cell
    from kd.commands.import_teacher import import_teacher
    rec = import_teacher(find_cell(a.cell), Path(a.file), a.sha256, data_root=a.data_root, store=a.store,
                         results_dir=a.results, device=a.device, force=a.force)
    print(f"imported {a.file} as teacher {rec['cell_id']} ({rec['checkpoint_sha256'][:12]}…) -> {rec['checkpoint']}; "
          f"test top-1 {rec['top1_last']:.2f}, top-5 {rec['top5_last']:.2f} (result line marked imported)")


def cmd_import_teachers(a):
    from kd.commands.import_teachers import import_teachers
    a.device = _device(a.device)
    recs = import_teachers(Path(a.dir), downloads=a.download or (), data_root=a.data_root, store=a.store,
                           results_dir=a.results, device=a.device, force=a.force)
    for r in recs:
        print(f"imported {r['imported']['from']} as teacher {r['cell_id']} ({r['checkpoint_sha256'][:12]}…); "
              f"test top-1 {r['top1_last']:.2f}" + (" (forced past the published accuracy)" if r["imported"]["forced"] else ""))


def _compare(results=None, only: list[str] | None = None, strict: bool = False):
    from kd.analysis.compare import compare, extras
    from kd.catalog.reftables import load_all
    from kd.records.results import read_records
    from kd.catalog.paths import REFERENCE_TABLES
    tables = [t for t in load_all(REFERENCE_TABLES) if not only or t.id in only]
    if only and len(tables) != len(set(only)):
        known = {t.id for t in load_all(REFERENCE_TABLES)}
        raise KDError(f"unknown table(s) {', '.join(sorted(set(only) - known))}; valid: {', '.join(sorted(known))}")
    records = read_records(results, strict=strict)
    rows = compare(tables, records)
    return tables, records, rows, extras(tables, records)


def cmd_compare(a):
    from tabulate import tabulate
    from kd.analysis.compare import check, summary
    tables, records, rows, extra = _compare(a.results, a.table, strict=a.check)
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
        # A check passes only on evidence: every entry with runs has an ok one, and something was judged.
        bad = check(rows)
        from kd.analysis.compare import FAILING, gain_fails
        all_failed = [r for r in rows if r.n == 0 and r.n_failed > 0 and not r.erratum]
        for r in bad:
            if r.verdict in FAILING:
                print(f"FAIL {r.table_id} | {r.row} | {r.column}: ours {r.ours:.2f} vs {r.published} "
                      f"(delta {r.delta:+.2f}, tolerance {r.tolerance})", file=sys.stderr)
            if gain_fails(r):
                g_ours, g_pub = (round(g, 2) + 0.0 for g in (r.gain_ours, r.gain_published))     # no "-0.00"
                print(f"FAIL {r.table_id} | {r.row} | {r.column}: gain over the baseline row ours "
                      f"{g_ours:+.2f} vs {g_pub:+.2f} (tolerance {r.gain_tolerance})", file=sys.stderr)
        for r in all_failed:
            print(f"FAIL {r.table_id} | {r.row} | {r.column}: every run failed ({r.n_failed} failed, none ok)",
                  file=sys.stderr)
        if not judged:
            print(f"FAIL nothing was judged: no ok result line matches an entry of the {len(tables)} selected table(s)",
                  file=sys.stderr)
        if bad or all_failed or not judged:
            return 1
        gains = sum(r.gain_verdict is not None for r in rows)
        print(f"check passed: {len(judged)} judged entries and {gains} gains over the baseline row within tolerance")


def cmd_report(a):
    from kd.analysis.report import write_reports
    from kd.records.results import results_root
    from kd.records.store import check_writable
    out = Path(a.out or results_root(a.results) / "reports")
    check_writable(out, "report folder", folder=True)
    tables, records, rows, extra = _compare(a.results, a.table)
    try:
        paths = write_reports(tables, rows + extra, out, n_results=len(records), records=records)
    except OSError as e:
        raise KDError(f"cannot write reports under {out}: {e.strerror or e}") from None
    print(f"wrote {len(paths)} files under {out} (open {out / 'index.html'})")


def cmd_table(a):
    from kd.commands.table import plan, run_table, table_by_name
    ov = _check_run_args(a)
    if _submit(a, plan(table_by_name(a.name), ov, a.seed)[0], a.seed, ov):
        print(f"`kd list --table {a.name} --status` shows progress; `kd report --table {a.name}` when done")
        return
    _logging(a)
    _raise_failed(run_table(a.name, a.seed, ov, _env(a), group=not a.no_group))
    a.table, a.out = [a.name], None
    cmd_report(a)


def cmd_demo(a):
    from kd.commands.demo import demo
    if not 1 <= a.seeds <= 1000:
        raise KDError(f"--seeds {a.seeds}: must be a whole number in [1, 1000]")
    _logging(a)
    demo(seeds=a.seeds, results=a.results, store=a.store, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    import kd
    p = _Parser(prog="kd", description="Knowledge-distillation benchmark suite")
    p.add_argument("--version", action="version", version=f"kd {kd.__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="train one cell (its teacher first when none is stored)")
    r.add_argument("cell", nargs="+", help="cell id(s), e.g. cifar100/kd/resnet8x4_from_resnet32x4/crd (see `kd list`); "
                                           "several cells that share a teacher train together (--no-group: one by one)")
    r.add_argument("--no-group", action="store_true", help="with several cells: run them one by one")
    r.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (default 0)")
    r.add_argument("--epochs", type=int, help="override: epochs (milestones scale); recorded as another recipe")
    r.add_argument("--batch-size", type=int, help="override: batch size")
    r.add_argument("--lr", type=float, help="override: learning rate")
    r.add_argument("--subset", type=int, help="override: train on a seeded subset of N images")
    r.add_argument("--precision", choices=["fp32", "bf16"],
                   help="override: bf16 autocast (its results carry another recipe id, never mixed with fp32)")
    r.add_argument("--force", action="store_true", help="run seeds that already have a result line again")
    _common(r)
    _executor_flags(r)
    r.set_defaults(fn=cmd_run)

    l = sub.add_parser("list", help="list cells and their finished runs")
    l.add_argument("--table", help="only the cells of this reference table")
    l.add_argument("--dataset", help="a dataset or dataset family, e.g. cifar100, cifar10-noisy0.2")
    l.add_argument("--method", help="a method label or part of one: kd matches kd and crd+kd; crd+kd matches crd+kd")
    l.add_argument("--status", nargs="?", const="all", choices=["all", "done", "missing", "queued", "running", "failed"],
                   help="show each seed's state (done/queued/running/failed: results and submitted Slurm jobs); "
                        "done/missing: full-protocol runs present/absent; queued/running/failed: only cells that have it")
    l.add_argument("--results")
    l.add_argument("--store", help="checkpoint store, where submitted jobs are tracked (default: $KD_STORE or ./checkpoints)")
    l.set_defaults(fn=cmd_list)

    f = sub.add_parser("find", help="from a published number (or table, method, pair) to reference entries, "
                                    "their cell ids and the command to run")
    f.add_argument("value", nargs="?", help="a published number as printed, e.g. 75.46")
    f.add_argument("--table", help="a reference table id")
    f.add_argument("--method", help="a method label as in cell ids (crd+kd) or a printed row label (CRD+KD)")
    f.add_argument("--pair", help="teacher:student (resnet32x4:resnet8x4), student_from_teacher, or a student")
    f.add_argument("--dataset", help="a dataset or dataset family")
    f.set_defaults(fn=cmd_find)

    t = sub.add_parser("import-teacher", help="use a teacher checkpoint you have, checked against its sha256")
    t.add_argument("cell", help="the teacher's cell id, e.g. cifar100/baseline/resnet32x4/crd")
    t.add_argument("file")
    t.add_argument("--sha256", required=True)
    t.add_argument("--force", action="store_true", help="replace a teacher already stored for this cell")
    _common(t)
    t.set_defaults(fn=cmd_import_teacher)

    ts = sub.add_parser("import-teachers", help="the published CIFAR-100 teachers (RepDistiller / mdistiller layouts): "
                                                "strict load, evaluation, comparison with the published accuracy")
    ts.add_argument("dir", help="a folder holding save/models/<model>_vanilla/ckpt_epoch_240.pth (RepDistiller) or "
                                "download_ckpts/cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth (mdistiller)")
    ts.add_argument("--download", action="append", metavar="SOURCE",
                    help="first download into DIR: repdistiller, mdistiller, or a URL (a <model>_vanilla/ckpt_epoch_240.pth "
                         "file, a .tar archive, or a URL with {model}); repeatable. The sha256 of what arrived is recorded")
    ts.add_argument("--force", action="store_true", help="import a teacher further from the published accuracy than the "
                                                         "table's tolerance, and replace teachers already stored")
    _common(ts)
    ts.set_defaults(fn=cmd_import_teachers)

    d = sub.add_parser("demo", help="embedded CPU benchmark: digits, teacher + baseline + KD")
    d.add_argument("--seeds", type=int, default=5)
    _common(d)
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("compare", help="judge results against the reference tables")
    c.add_argument("--table", nargs="+", help="only these tables")
    c.add_argument("--check", action="store_true", help="exit 1 when a result is outside its tolerance (CI)")
    c.add_argument("--results")
    c.set_defaults(fn=cmd_compare)

    rp = sub.add_parser("report", help="write Markdown and HTML reports (default under results/local/reports/)")
    rp.add_argument("--table", nargs="+", help="only these tables")
    rp.add_argument("--out", help="output folder (default: <results>/reports, e.g. results/local/reports)")
    rp.add_argument("--results")
    rp.set_defaults(fn=cmd_report)

    tb = sub.add_parser("table", help="run every missing cell of a reference table, then write its report")
    tb.add_argument("name", help="table id, e.g. crd2020_table1 (see reference_tables/)")
    tb.add_argument("--seed", type=int, nargs="+", default=[0])
    for flag, typ in (("--epochs", int), ("--batch-size", int), ("--lr", float), ("--subset", int)):
        tb.add_argument(flag, type=typ, help="override (recorded as another recipe)")
    tb.add_argument("--no-group", action="store_true",
                    help="run cells one by one instead of training those that share a teacher together (kd/engine/grouping.py)")
    _common(tb)
    _executor_flags(tb)
    tb.set_defaults(fn=cmd_table)

    b = sub.add_parser("bench", help="time one cell's training step per execution mode (and beside RepDistiller)")
    b.add_argument("cell", help="cell id, e.g. cifar100/kd/resnet8x4_from_resnet32x4/crd")
    b.add_argument("--modes", nargs="+", choices=["eager", "compile", "graph"],
                   help="execution modes to time (default: eager and graph on CUDA, eager on the CPU)")
    b.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    b.add_argument("--steps", type=int, default=30, help="timed steps per round (default 30)")
    b.add_argument("--warmup", type=int, default=10, help="untimed steps before each timing (default 10)")
    b.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported (default 5)")
    b.add_argument("--threads", type=int, help="torch threads for every contender (default: torch's)")
    b.add_argument("--batch-size", type=int, help="instead of the recipe's")
    b.add_argument("--data-root", help="the cell's data, when at hand (else synthetic images of its shape)")
    b.add_argument("--repdistiller", metavar="PATH", help="a RepDistiller checkout: time its own step side by side")
    b.add_argument("--workers", type=int, help="RepDistiller's DataLoader workers (default min(8, CPUs))")
    b.add_argument("--no-channels-last", action="store_true")
    b.add_argument("--fold-teacher-bn", action="store_true",
                   help="also time each mode with the frozen teacher's BatchNorm folded into its convolutions")
    b.add_argument("--results", help="speed lines go to <results>/speed/bench.jsonl")
    b.set_defaults(fn=cmd_bench)

    dr = sub.add_parser("doctor", help="acceptance run of the execution paths on this device (equivalence, speed, "
                                       "grouped runs, bf16, a short real training, torchrun), bounded in time")
    dr.add_argument("--quick", action="store_true", help="the CPU form CI runs: tiny cells, seconds to a minute")
    dr.add_argument("--budget-s", type=float, help="seconds for all checks; items that do not fit are skipped "
                                                   "(default 420 on a GPU, 240 with --quick)")
    dr.add_argument("--repdistiller", metavar="PATH", help="a RepDistiller checkout: its own step timed beside ours")
    dr.add_argument("--only", nargs="+", metavar="CHECK",
                    help="only these checks: equivalence speed grouped bf16 learn torchrun")
    dr.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    dr.add_argument("--data-root", help="where the JPEG CIFAR-10 copy (cifar10-jpeg/) is, when at hand")
    dr.add_argument("--results", help="speed lines and the summary go to <results>/speed/ (default: ./results/local)")
    dr.set_defaults(fn=cmd_doctor)

    bg = sub.add_parser("bench-group", help="wall time of a table's runs one by one vs grouped (one teacher forward)")
    bg.add_argument("table", help="a reference table id, e.g. sarfraz2020_table3_jpeg_resnet8")
    bg.add_argument("--seed", type=int, default=0)
    bg.add_argument("--epochs", type=int, help="override (as kd table)")
    bg.add_argument("--subset", type=int, help="override (as kd table)")
    bg.add_argument("--batch-size", type=int, help="override (as kd table)")
    bg.add_argument("--threads", type=int)
    bg.add_argument("--device")
    bg.add_argument("--data-root")
    bg.add_argument("--results", help="the line goes to <results>/speed/group.jsonl")
    bg.set_defaults(fn=cmd_bench_group)

    try:
        a = p.parse_args(argv)
    except SystemExit as e:               # --help (0) or a usage error (2, one line: _Parser.error)
        return e.code if isinstance(e.code, int) else 2
    try:
        return a.fn(a) or 0
    except KDError as e:
        from kd.engine.dist import launch_rank
        if launch_rank() == 0:           # under torchrun every rank fails alike: one line, from rank 0
            print(f"kd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
