"""`kd` command line: run cells, list them, import teachers, run the embedded demo.

Every user error is one line on stderr (`kd: error: ...`) and exit status 2; nothing is written.
Arguments are checked (seeds, device, overrides, output folders) before anything runs.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from kd.errors import KDError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`kd: error: ...`), exit 2, like every other error."""

    def error(self, message):
        print(f"kd: error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _device(name: str | None, here: bool = True) -> str | None:
    """A device this machine has: cpu, cuda[:k] (with a GPU k), mps; None picks cuda when available.
    here=False (a job for another machine): only the name is checked."""
    if name is None:
        return None
    import torch
    try:
        d = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise KDError(f"--device {name!r}: not a device; use cpu, cuda, cuda:1 ...") from None
    if not here:
        if d.type not in ("cpu", "cuda", "mps"):
            raise KDError(f"--device {name}: unsupported device type '{d.type}'; use cpu, cuda or mps")
        return name
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


OVERRIDES = {"epochs": (int, "override: epochs (milestones scale); recorded as another recipe"),
             "batch_size": (int, "override: batch size"), "lr": (float, "override: learning rate"),
             "subset": (int, "override: train on a seeded subset of N images"),
             "precision": (None, "override: bf16 autocast (its results carry another recipe id, never mixed with fp32)")}


def _override_flags(p: argparse.ArgumentParser, names=tuple(OVERRIDES), help_suffix: str = ""):
    """The override flags of run, table, bench and bench-group: one declaration, one validator (_overrides)."""
    for name in names:
        typ, text = OVERRIDES[name]
        flag = "--" + name.replace("_", "-")
        if typ is None:
            p.add_argument(flag, choices=["fp32", "bf16"], help=text + help_suffix)
        else:
            p.add_argument(flag, type=typ, help=text + help_suffix)


def _overrides(a) -> dict:
    """The override flags given (None: not given; 0 is given, and refused), each checked."""
    from kd.catalog.cells import FieldError, check_override
    ov = {k: getattr(a, k) for k in OVERRIDES if getattr(a, k, None) is not None}
    for k, v in ov.items():
        try:
            check_override(k, v)
        except FieldError as e:
            raise KDError(f"--{k.replace('_', '-')}: {e}") from None
    return ov


def _check_run_args(a) -> dict:
    """Seeds, device, overrides, environment and folders of `kd run` / `kd table`, checked before anything runs."""
    from kd.catalog.cells import check_seed
    from kd.engine.dist import environment
    for seed in a.seed:
        check_seed(seed, "--seed")
    slurm = getattr(a, "executor", "local") == "slurm"
    a.device = _device(a.device, here=not slurm)
    if not slurm:
        environment()
    _check_folders(a)
    return _overrides(a)


def _check_folders(a) -> None:
    """--store, --results, --data-root and --tensorboard: names without control characters, and the
    store and results folders writable (the results folder of a reading command: a folder)."""
    from kd.records.store import check_writable, store_root
    from kd.records.results import results_root
    for flag in ("store", "results", "data_root", "tensorboard"):
        v = getattr(a, flag, None)
        if v is not None and (not v or any(ord(c) < 32 or ord(c) == 127 for c in v)):
            raise KDError(f"--{flag.replace('_', '-')} {v!r}: not a folder name (empty, or a control character)")
    if hasattr(a, "store"):
        check_writable(store_root(a.store), "checkpoint store", folder=True)
    check_writable(results_root(a.results), "results folder", folder=True)


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
                   help="execution: eager, compile (torch.compile) or graph (CUDA graphs); default eager (the mode "
                        "proven on both CPU and CUDA). Changes float rounding only; recorded in every result line")
    p.add_argument("--no-channels-last", action="store_true", help="keep models and batches in NCHW (recorded)")


def _logging(a):
    from kd.records.log import configure
    if getattr(a, "tensorboard", None):
        configure(tensorboard=a.tensorboard)


def _execution(a):
    """--mode / --no-channels-last on the chosen device (None: the device's default)."""
    if not a.mode and not a.no_channels_last:
        return None
    from kd.engine.execution import resolve
    return resolve(a.device, a.mode, False if a.no_channels_last else None)


def _at_least(a, low: int, *flags: str) -> None:
    for flag in flags:
        v = getattr(a, flag)
        if v is not None and v < low:
            raise KDError(f"--{flag.replace('_', '-')} {v}: must be a whole number >= {low}")


def _check_speed_args(a, speed_file: str) -> None:
    """What kd bench and kd bench-group share: the device (this machine's), --threads, the folders and
    the speed file they append to, checked before anything is timed."""
    from kd.records.results import results_root
    from kd.records.store import check_writable
    a.device = _device(a.device)
    _at_least(a, 1, "threads")
    _check_folders(a)
    check_writable(results_root(a.results) / "speed" / speed_file, "speed file", folder=False)


def cmd_bench(a):
    from kd.commands.bench import bench
    _at_least(a, 1, "steps", "rounds")
    _at_least(a, 0, "warmup", "workers")
    _check_speed_args(a, "bench.jsonl")
    ov = _overrides(a)
    bench(a.cell, modes=a.modes, device=a.device, steps=a.steps, warmup=a.warmup, rounds=a.rounds,
          threads=a.threads, batch_size=ov.get("batch_size"), repdistiller=a.repdistiller, workers=a.workers,
          results=a.results, channels_last=not a.no_channels_last, data_root=a.data_root)


def cmd_doctor(a):
    from kd.commands.doctor import doctor
    from kd.records.results import results_root
    from kd.records.store import check_writable
    a.device = _device(a.device)
    check_writable(results_root(a.results) / "speed" / "doctor.jsonl", "speed file", folder=False)
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
    g.add_argument("--group-jobs", action="store_true", help="the runs that share a teacher (and dataset, recipe, seed) "
                   "go in one job and train together, one teacher forward per batch; default: one job per run")


def _submit(a, cells, seeds, ov) -> bool:
    """--executor slurm: submit and return True; local: False."""
    if a.executor != "slurm":
        given = [f"--{k.replace('_', '-')}" for k in ("slurm_config", "partition", "account", "qos", "gpus_per_job",
                                                      "cpus_per_task", "mem_gb", "time_min", "sbatch", "group_jobs")
                 if getattr(a, k) not in (None, False)]
        if given:
            raise KDError(f"{', '.join(given)}: Slurm options, used only with --executor slurm")
        return False
    from kd.commands.slurm import options_from_args, submit_cells
    settings = {"mode": a.mode, "channels_last": False if a.no_channels_last else None,
                "force": getattr(a, "force", False), "tensorboard": a.tensorboard}
    submit_cells(cells, seeds, {k: v for k, v in ov.items() if v is not None}, options_from_args(a),
                 data_root=a.data_root, store=a.store, results_dir=a.results, device=a.device, settings=settings,
                 group_jobs=a.group_jobs)
    return True


def cmd_bench_group(a):
    from kd.catalog.cells import check_seed
    from kd.commands.bench import bench_group
    from kd.engine.dist import environment
    check_seed(a.seed, "--seed")
    _check_speed_args(a, "group.jsonl")
    environment()
    bench_group(a.table, seed=a.seed, overrides=_overrides(a), device=a.device, threads=a.threads,
                data_root=a.data_root, results=a.results)


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
    if a.store is not None and (not a.store or Path(a.store).exists() and not Path(a.store).is_dir()):
        raise KDError(f"--store {a.store!r}: not a folder (the checkpoint store, where submitted jobs are tracked)")
    if a.status:                     # runs' states, including submitted jobs and runs with overrides
        from kd.commands.jobs import run_states
        for (cid, seed), st in run_states(a.store, Path(a.results) if a.results else None).items():
            states.setdefault(cid, {})[seed] = st["shown"]          # failed(OUT_OF_MEMORY), queued(PREEMPTED)
        unstored = _unstored_teachers(cells, states, a.store)
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
        if a.status in ("queued", "running", "failed", "unknown"):
            rows = [row for row in rows if a.status in {v.split("(")[0] for v in
                                                        states.get(row[0].removeprefix(QUICK), {}).values()}]
    print(tabulate(rows, headers=["cell", "runs", "seeds"] + (["state (seed:state)"] if a.status else []),
                   tablefmt="simple"))
    n = sum(not r[0].startswith(QUICK) for r in rows)
    root = read_root(a.results)
    committed = not (a.results or os.environ.get("KD_RESULTS")) and any(root.glob("*.jsonl"))
    print(f"{n} cells; runs counted from the result lines under {root}/"
          + (" (committed, and yours in results/local/)" if committed else "")
          + f"; {QUICK.strip()} rows: runs with overrides (quick checks, not the published protocol)")
    if a.status and unstored:
        from kd.records.store import store_root
        print(f"{NO_CKPT}: a teacher's result line is there but not its checkpoint (not in the store "
              f"{store_root(a.store)}/), so a student's `kd run` trains this teacher again first; "
              f"`kd import-teacher` stores a checkpoint you have")


NO_CKPT = "done,no-checkpoint"


def _unstored_teachers(cells, states, store) -> set:
    """Marks, in `states`, the done seeds of teacher cells whose checkpoint is not in the store (as
    NO_CKPT); the (cell id, seed) so marked."""
    from kd.catalog.cells import load_recipe
    from kd.records.store import checkpoint_path, store_root
    recipes, teachers = {}, set()
    for c in cells.values():
        if c.teacher:
            recipe = recipes.setdefault(c.recipe, load_recipe(c.recipe))
            teachers.add(c.teacher_cell(recipe).id)
    marked = set()
    for cid in teachers & set(states):
        for seed, st in states[cid].items():
            if st == "done" and not checkpoint_path(cid, seed, store_root(store)).is_file():
                states[cid][seed] = NO_CKPT
                marked.add((cid, seed))
    return marked


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
    print(tabulate([[e.printed, e.table_id, e.row, e.column, e.cell_id,
                     command_for(e, cells)] for e in entries],
                   headers=["published", "table", "row", "column", "cell", "command"], disable_numparse=True))
    print(f"{len(entries)} entries")


def cmd_import_teacher(a):
    from kd.catalog.cells import find_cell
    from kd.commands.import_teacher import import_teacher
    a.device = _device(a.device)
    _check_folders(a)
    _not_used(a, "import-teacher evaluates the checkpoint as it is", "tensorboard", "mode", "no_channels_last")
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


def cmd_compare(a):
    from kd.commands.verdicts import compare_command
    return compare_command(a.results, a.table, check=a.check, proxies=a.proxies)


def cmd_report(a):
    from kd.commands.verdicts import report_command
    paths, out = report_command(a.results, a.table, a.out)
    print(f"wrote {len(paths)} files under {out} (open {out / 'index.html'})")


def cmd_plan(a):
    from kd.commands.verdicts import plan_command
    plan_command(a.name, a.results)


def cmd_table(a):
    from kd.commands.table import plan, run_table_auto, table_by_name
    ov = _check_run_args(a)
    if a.auto_seeds is not None:
        if not len(set(a.seed)) <= a.auto_seeds <= 1000:
            raise KDError(f"--auto-seeds {a.auto_seeds}: must be a whole number from the number of --seed values "
                          f"({len(set(a.seed))}) to 1000")
        if a.executor == "slurm":
            raise KDError("--auto-seeds: runs here only (it reads each pass's verdicts before the next); "
                          "not with --executor slurm")
    if _submit(a, plan(table_by_name(a.name), ov, a.seed)[0], a.seed, ov):
        print(f"`kd list --table {a.name} --status` shows progress; `kd report --table {a.name}` when done")
        return
    _logging(a)
    _raise_failed(run_table_auto(a.name, list(dict.fromkeys(a.seed)), a.auto_seeds, ov, _env(a), group=not a.no_group))
    a.table, a.out = [a.name], None
    cmd_report(a)
    from kd.analysis.compare import summary
    from kd.commands.verdicts import VERDICTS, load
    counts = summary(load(a.results, [a.name]).rows).get(a.name, {})
    print(f"{a.name}: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS if counts.get(v) or v != "proxy")
          + f" (`kd compare --table {a.name}` gives each entry)")


def _not_used(a, why: str, *flags: str) -> None:
    """Refuse, in one line, flags a command takes with the common ones but does not use."""
    given = [f"--{f.replace('_', '-')}" for f in flags if getattr(a, f, None) not in (None, False)]
    if given:
        raise KDError(f"{', '.join(given)}: not used here ({why})")


def cmd_demo(a):
    from kd.commands.demo import demo
    if not 1 <= a.seeds <= 1000:
        raise KDError(f"--seeds {a.seeds}: must be a whole number in [1, 1000]")
    _not_used(a, "the demo runs on the CPU with fixed settings and its own data", "device", "mode",
              "no_channels_last", "data_root")
    _check_folders(a)
    _logging(a)
    demo(seeds=a.seeds, results=a.results, store=a.store, progress=not a.no_progress)


def _tolerant_streams() -> None:
    """stdout and stderr that print what this terminal cannot encode as '?' (PYTHONIOENCODING=ascii, a
    latin-1 terminal) instead of raising UnicodeEncodeError on a '±' or '…'."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", "strict") == "strict":
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):
                pass


def _fail(e: KDError) -> int:
    """One line and exit 2. Under torchrun every rank fails alike: the line comes from rank 0 and goes
    to torchrun's error file too (its failure report then names it); a stray RANK or SLURM_PROCID in a
    lone process's environment never silences it (kd.engine.dist.launch_rank)."""
    from kd.engine.dist import launch_rank, torchrun_error_file
    line = f"kd: error: {e}"
    torchrun_error_file(line)
    if launch_rank() == 0:
        print(line, file=sys.stderr)
    return 2


def _closed_pipe() -> int:
    """The reader of stdout went away (`kd list | head -1`): stop quietly, as a tool killed by SIGPIPE
    would (status 141), with no traceback and no error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 141


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler stopping the job), raised where the command is, as Ctrl-C raises
    KeyboardInterrupt: the same unwinding (locks released) and the same one line on how to resume."""


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises _Terminated while a command runs (main thread only; the previous handler after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise _Terminated()
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    import kd
    p = _Parser(prog="kd", description="Knowledge-distillation benchmark suite")
    p.add_argument("--version", action="version", version=f"kd {kd.__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="train one or more cells, each for the given seeds (their teachers first when "
                                    "none is stored)")
    r.add_argument("cell", nargs="+", help="cell id(s), e.g. cifar100/kd/resnet8x4_from_resnet32x4/crd (see `kd list`); "
                                           "several cells that share a teacher train together (--no-group: one by one)")
    r.add_argument("--no-group", action="store_true", help="with several cells: run them one by one")
    r.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (default 0)")
    _override_flags(r)
    r.add_argument("--force", action="store_true", help="run seeds that already have a result line again")
    _common(r)
    _executor_flags(r)
    r.set_defaults(fn=cmd_run)

    l = sub.add_parser("list", help="list cells and their finished runs")
    l.add_argument("--table", help="only the cells of this reference table")
    l.add_argument("--dataset", help="a dataset or dataset family, e.g. cifar100, cifar10-noisy0.2")
    l.add_argument("--method", help="a method label or part of one: kd matches kd and crd+kd; crd+kd matches crd+kd")
    l.add_argument("--status", nargs="?", const="all",
                   choices=["all", "done", "missing", "queued", "running", "failed", "unknown"],
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
    c.add_argument("--check", action="store_true",
                   help="exit 1 when a result or a gain is confidently outside its tolerance (CI; see README 'How a verdict is made')")
    c.add_argument("--proxies", action="store_true",
                   help="with --check: also fail when a proxy table's gain confidently has the published gain's opposite sign")
    c.add_argument("--results")
    c.set_defaults(fn=cmd_compare)

    pl = sub.add_parser("plan", help="seeds needed to resolve each published gain of a table, and what they cost")
    pl.add_argument("name", help="table id, e.g. sarfraz2020_table3 (see reference_tables/)")
    pl.add_argument("--results")
    pl.set_defaults(fn=cmd_plan)

    rp = sub.add_parser("report", help="write Markdown and HTML reports (default under results/local/reports/)")
    rp.add_argument("--table", nargs="+", help="only these tables")
    rp.add_argument("--out", help="output folder (default: <results>/reports, e.g. results/local/reports)")
    rp.add_argument("--results")
    rp.set_defaults(fn=cmd_report)

    tb = sub.add_parser("table", help="run every missing cell of a reference table, then write its report")
    tb.add_argument("name", help="table id, e.g. crd2020_table1 (see reference_tables/)")
    tb.add_argument("--seed", type=int, nargs="+", default=[0])
    tb.add_argument("--auto-seeds", type=int, metavar="MAX",
                    help="after --seed, add seeds 0..k-1 to every cell while an inconclusive entry says more "
                         "seeds would settle it, k at most MAX (kd plan gives the same numbers)")
    _override_flags(tb)
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
    _override_flags(b, ["batch_size"], " (instead of the recipe's)")
    b.add_argument("--data-root", help="the cell's data, when at hand (else synthetic images of its shape)")
    b.add_argument("--repdistiller", metavar="PATH", help="a RepDistiller checkout: time its own step side by side")
    b.add_argument("--workers", type=int, help="RepDistiller's DataLoader workers (default min(8, CPUs))")
    b.add_argument("--no-channels-last", action="store_true")
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
    _override_flags(bg, help_suffix=" (as kd table)")
    bg.add_argument("--threads", type=int)
    bg.add_argument("--device")
    bg.add_argument("--data-root")
    bg.add_argument("--results", help="the line goes to <results>/speed/group.jsonl")
    bg.set_defaults(fn=cmd_bench_group)

    _tolerant_streams()
    try:
        a = p.parse_args(argv)
    except SystemExit as e:               # --help (0) or a usage error (2, one line: _Parser.error)
        return e.code if isinstance(e.code, int) else 2
    try:
        with _sigterm_raises():
            code = a.fn(a) or 0
            sys.stdout.flush()            # a closed pipe shows here, not at exit
        return code
    except KDError as e:
        return _fail(e)
    except KeyboardInterrupt as e:                     # Ctrl-C, or SIGTERM (_Terminated)
        stopped = "terminated (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
        print(f"kd: {stopped}; run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    except BrokenPipeError:
        return _closed_pipe()


if __name__ == "__main__":
    sys.exit(main())
