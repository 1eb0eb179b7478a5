"""`kd import-teacher`: use a teacher checkpoint you have, checked, evaluated and recorded.

Order (nothing is written until every check has passed): the cell is a teacher cell; the file's
sha256 equals the one given; it loads strictly (weights_only=True) into the cell's model; no teacher
is stored there yet (unless force); the test set is evaluated. Then the file is copied into the
checkpoint store with its sha256 sidecar, and one result line is appended for the cell and the
recipe's teacher seed, marked {"imported": {"from", "sha256"}} (`kd import-teachers` adds how the
file was found, downloaded and compared with the published teacher accuracy).

Convention: an imported checkpoint has one evaluation and no training curve, so its top-1/top-5 are
both the 'last' and the 'best' numbers of the line (best_epoch null, curve empty, wall_s = the
evaluation's seconds).
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kd.errors import KDError


@dataclass
class Checked:
    """A teacher checkpoint that passed the checks, with its evaluation."""
    cell: object
    src: Path
    digest: str
    seed: int
    dst: Path
    top1: float = 0.0
    top5: float = 0.0
    wall: float = 0.0
    started: str = ""
    device: str = ""
    info: dict | None = None
    num_test: int = 0


def check_file(cell, src: Path, store, force: bool) -> Checked:
    """The cell is a teacher cell, the file exists, and (unless force) no teacher is stored for it yet."""
    from kd.catalog.cells import load_recipe
    from kd.records.store import checkpoint_path, sha256_file
    if cell.label != "baseline" or cell.teacher:
        raise KDError(f"{cell.id} is not a teacher cell (expected dataset/baseline/<model>/<recipe>)")
    src = Path(src)
    if not src.is_file():
        raise KDError(f"no such file: {src}")
    recipe = load_recipe(cell.recipe)
    dst = checkpoint_path(cell.id, recipe.teacher_seed, store)
    if dst.is_file() and not force:
        old = dst.with_suffix(".sha256")
        old = old.read_text().split()[0][:12] + "…" if old.is_file() else "no sha256"
        raise KDError(f"a teacher for {cell.id} is already stored ({dst}, {old}); --force replaces it")
    return Checked(cell, src, sha256_file(src), recipe.teacher_seed, dst)


def evaluate(c: Checked, ds, dev) -> Checked:
    """Load strictly (weights_only=True) into the cell's model and evaluate on the test set."""
    from kd.engine.distiller import Distiller
    from kd.engine.teacher import build_model
    from kd.models import load_weights
    from kd.records.provenance import device_name
    model = load_weights(build_model(c.cell.student, ds.num_classes), c.src)       # strict load check
    c.started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    data = ds.on_device(dev)
    c.top1, c.top5 = Distiller(c.cell, model.to(dev), None, [], [], channels_last=False, amp=False).evaluate(data)
    c.wall, c.device, c.info, c.num_test = time.perf_counter() - t0, device_name(dev), ds.info, data.num_test
    return c


def install(c: Checked, store, results_dir, imported: dict) -> dict:
    """Copy the checked file into the store (sha256 sidecar) and append its result line."""
    from kd.catalog.cells import load_recipe
    from kd.records.provenance import git, versions
    from kd.records.results import SCHEMA, append_record, results_file
    from kd.records.store import install_checkpoint, run_lock
    cell = c.cell
    with run_lock(store, cell.id, c.seed):          # not while a run trains this teacher
        install_checkpoint(c.src, c.dst, c.digest, f"imported from {c.src.resolve()}")
    rec = {"schema": SCHEMA, "cell_id": cell.id, "dataset": cell.dataset, "label": cell.label,
           "student": cell.student, "teacher": None, "recipe": load_recipe(cell.recipe).id, "seed": c.seed,
           "status": "ok", "top1_last": round(c.top1, 4), "top5_last": round(c.top5, 4), "top1_best": round(c.top1, 4),
           "top5_best": round(c.top5, 4), "best_epoch": None, "checkpoint": str(c.dst), "checkpoint_sha256": c.digest,
           "imported": {"from": str(c.src.resolve()), "sha256": c.digest, **imported}, "curve": [], "stage_curve": [],
           "config": {"cell": cell.to_dict(), "dataset_info": c.info, "num_test": c.num_test},
           "teacher_cell": None, "teacher_checkpoint_sha256": None, "git": dict(git()), "versions": versions(),
           "device": c.device, "wall_s": round(c.wall, 3), "images_per_s": None, "started": c.started,
           "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "argv": sys.argv[1:]}
    rec = json.loads(json.dumps(rec))
    append_record(rec, results_file(cell.dataset, results_dir))
    return rec


def device_of(device: str | None):
    import torch
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def import_teacher(cell, src: Path, sha256: str, *, data_root=None, store=None, results_dir=None,
                   device: str | None = None, force: bool = False) -> dict:
    from kd.catalog.cells import load_recipe
    from kd.data import load_dataset
    from kd.records.store import store_root
    store = store_root(store)
    c = check_file(cell, src, store, force)
    if c.digest != sha256.lower():
        raise KDError(f"{c.src}: sha256 is {c.digest}, not the {sha256} you gave; nothing imported")
    ds = load_dataset(cell.dataset, data_root, seed=load_recipe(cell.recipe).data_seed)
    evaluate(c, ds, device_of(device))
    return install(c, store, results_dir, {})
