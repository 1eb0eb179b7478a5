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
    from kd.cells import FieldError, check_override, check_seed
    for seed in a.seed:
        check_seed(seed, "--seed")
    a.device = _device(a.device)
    ov = {k: v for k, v in {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "subset": a.subset}.items()
          if v is not None}
    for k, v in ov.items():
        try:
            check_override(k, v)
        except FieldError as e:
            raise KDError(f"--{k.replace('_', '-')}: {e}") from None
    return ov


def _common(p: argparse.ArgumentParser):
    p.add_argument("--data-root", help="dataset root (default: $KD_DATA_ROOT or ./data)")
    p.add_argument("--store", help="checkpoint store (default: $KD_STORE or ./checkpoints)")
    p.add_argument("--results", help="results directory (default: $KD_RESULTS or ./results)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_run(a):
    from kd.cells import find_cell
    from kd.train import run_cell
    ov = _check_run_args(a)
    cell = find_cell(a.cell)
    for seed in a.seed:
        rec = run_cell(cell, seed, device=a.device, overrides=ov, data_root=a.data_root, store=a.store,
                       results_dir=a.results, progress=not a.no_progress)
        print(f"{rec['cell_id']} seed {seed}: top-1 last {rec['top1_last']:.2f} best {rec['top1_best']:.2f} "
              f"(epoch {rec['best_epoch']}), {rec['images_per_s']} img/s on {rec['device']}")


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
    for r in read_records(a.results):
        if r.get("status") == "ok":
            done.setdefault(r["cell_id"], []).append(r["seed"])
    rows = []
    for cid, c in sorted(cells.items()):
        if a.dataset and c.dataset.split("-")[0] != a.dataset and c.dataset != a.dataset:
            continue
        if a.method and a.method not in c.label.split("+"):
            continue
        seeds = sorted(done.get(cid, []))
        if a.status == "done" and not seeds or a.status == "missing" and seeds:
            continue
        rows.append([cid, len(seeds), ",".join(map(str, seeds)) or "-"])
    print(tabulate(rows, headers=["cell", "runs", "seeds"], tablefmt="simple"))
    print(f"{len(rows)} cells")


def cmd_import_teacher(a):
    from kd.cells import find_cell, load_recipe
    from kd.store import checkpoint_path, install_checkpoint, load_checkpoint, run_lock, sha256_file, store_root
    from kd.train import build_model
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
    seed, store = load_recipe(cell.recipe).teacher_seed, store_root(a.store)
    dst = checkpoint_path(cell.id, seed, store)
    with run_lock(store, cell.id, seed):                  # not while a run trains this teacher
        install_checkpoint(src, dst, digest, f"imported from {src.resolve()}")
    print(f"imported {src} as teacher {cell.id} ({digest[:12]}…) -> {dst}")


def _compare(results=None, only: list[str] | None = None, strict: bool = False):
    from kd.compare import compare, extras
    from kd.reftables import load_all
    from kd.results import read_records
    from kd.table import REPO
    tables = [t for t in load_all(REPO / "reference_tables") if not only or t.id in only]
    if only and len(tables) != len(set(only)):
        known = {t.id for t in load_all(REPO / "reference_tables")}
        raise KDError(f"unknown table(s) {', '.join(sorted(set(only) - known))}; valid: {', '.join(sorted(known))}")
    records = read_records(results, strict=strict)
    rows = compare(tables, records)
    return tables, records, rows, extras(tables, records)


def cmd_compare(a):
    from tabulate import tabulate
    from kd.compare import check, summary
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
        all_failed = [r for r in rows if r.n == 0 and r.n_failed > 0 and not r.erratum]
        for r in bad:
            print(f"FAIL {r.table_id} | {r.row} | {r.column}: ours {r.ours:.2f} vs {r.published} "
                  f"(delta {r.delta:+.2f}, tolerance {r.tolerance})", file=sys.stderr)
        for r in all_failed:
            print(f"FAIL {r.table_id} | {r.row} | {r.column}: every run failed ({r.n_failed} failed, none ok)",
                  file=sys.stderr)
        if not judged:
            print(f"FAIL nothing was judged: no ok result line matches an entry of the {len(tables)} selected table(s)",
                  file=sys.stderr)
        if bad or all_failed or not judged:
            return 1
        print(f"check passed: {len(judged)} judged entries within tolerance")


def cmd_report(a):
    from kd.report import write_reports
    from kd.store import check_writable
    out = Path(a.out or Path(a.results or os.environ.get("KD_RESULTS", "results")) / "reports")
    check_writable(out, "report folder", folder=True)
    tables, records, rows, extra = _compare(a.results, a.table)
    try:
        paths = write_reports(tables, rows + extra, out, n_results=len(records))
    except OSError as e:
        raise KDError(f"cannot write reports under {out}: {e.strerror or e}") from None
    print(f"wrote {len(paths)} files under {out} (open {out / 'index.html'})")


def cmd_table(a):
    from kd.table import run_table
    ov = _check_run_args(a)
    run_table(a.name, a.seed, ov, progress=not a.no_progress, device=a.device, data_root=a.data_root,
              store=a.store, results_dir=a.results)
    a.table, a.out = [a.name], None
    cmd_report(a)


def cmd_demo(a):
    from kd.demo import demo
    if not 1 <= a.seeds <= 1000:
        raise KDError(f"--seeds {a.seeds}: must be a whole number in [1, 1000]")
    demo(seeds=a.seeds, results=a.results, store=a.store, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="kd", description="Knowledge-distillation benchmark suite")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="train one cell (its teacher first when none is stored)")
    r.add_argument("cell", help="cell id, e.g. cifar100/kd/resnet8x4_from_resnet32x4/crd (see `kd list`)")
    r.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (default 0)")
    r.add_argument("--epochs", type=int, help="override: epochs (milestones scale); recorded as another recipe")
    r.add_argument("--batch-size", type=int, help="override: batch size")
    r.add_argument("--lr", type=float, help="override: learning rate")
    r.add_argument("--subset", type=int, help="override: train on a seeded subset of N images")
    _common(r)
    r.set_defaults(fn=cmd_run)

    l = sub.add_parser("list", help="list cells and their finished runs")
    l.add_argument("--table", help="only the cells of this reference table")
    l.add_argument("--dataset"), l.add_argument("--method")
    l.add_argument("--status", choices=["done", "missing"])
    l.add_argument("--results")
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
    tb.set_defaults(fn=cmd_table)

    try:
        a = p.parse_args(argv)
    except SystemExit as e:               # --help (0) or a usage error (2, one line: _Parser.error)
        return e.code if isinstance(e.code, int) else 2
    try:
        return a.fn(a) or 0
    except KDError as e:
        print(f"kd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
