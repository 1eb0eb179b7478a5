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


def cmd_run(a):
    from kd.cells import find_cell
    from kd.train import run_cell
    cell = find_cell(a.cell)
    ov = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "subset": a.subset}
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
    done: dict[str, list[int]] = {}
    for r in read_records(Path(a.results) if a.results else None):
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
    from kd.data import load_dataset
    num_classes = {"cifar100": 100, "imagenet": 1000}.get(cell.dataset.split("-")[0]) or \
        load_dataset(cell.dataset, a.data_root).num_classes
    load_checkpoint(build_model(cell.student, num_classes), src, expected_sha256=digest)  # strict load check
    dst = checkpoint_path(cell.id, load_recipe(cell.recipe).teacher_seed, store_root(a.store))
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.with_suffix(".sha256").write_text(f"{digest}  imported from {src.resolve()}\n")
    print(f"imported {src} as teacher {cell.id} ({digest[:12]}…) -> {dst}")


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
    r.set_defaults(fn=cmd_run)

    l = sub.add_parser("list", help="list cells and their finished runs")
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
    d.add_argument("--seeds", type=int, default=3)
    _common(d)
    d.set_defaults(fn=cmd_demo)

    a = p.parse_args(argv)
    try:
        a.fn(a)
    except KDError as e:
        print(f"kd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
