"""`kd import-teacher`: use a teacher checkpoint you have, checked, evaluated and recorded.

Order (nothing is written until every check has passed): the cell is a teacher cell; the file's
sha256 equals the one given; no teacher is stored there yet (unless force); the store, the results
file and the teacher's lock file can be written (no links, locks supported); it loads strictly
(weights_only=True) into the cell's model; the test set is evaluated; the teacher's lock is taken
(refused when a run trains this teacher). Then the file is copied into the checkpoint store with its
sha256 sidecar, its predictions are stored, and one result line is appended for the cell and the
recipe's teacher seed, marked {"imported": {"from", "sha256"}} (`kd import-teachers` adds how the
file was found, downloaded and compared with the published teacher accuracy). A line that cannot
be appended takes the installed checkpoint back out: never a stored teacher without its line.

Convention: an imported checkpoint has one evaluation and no training curve, so its top-1/top-5 are
both the 'last' and the 'best' numbers of the line (best_epoch null, curve empty, wall_s = the
evaluation's seconds); its predictions (kd.records.predictions) are stored as both epochs'.
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
    evaluation: object = None


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
        raise KDError(f"a teacher for {cell.id} is already stored ({dst}, {_stored_sha(dst)}); --force replaces it")
    return Checked(cell, src, sha256_file(src), recipe.teacher_seed, dst)


def check_targets(c: Checked, store: Path, results_dir) -> None:
    """Everything the import writes, checked before anything is: the store, the results file and the
    teacher's lock file are writable (no links), their filesystems lock."""
    from kd.records.files import probe_locks
    from kd.records.results import results_file
    from kd.records.store import check_writable, lock_path
    results = results_file(c.cell.dataset, results_dir)
    check_writable(store, "checkpoint store", folder=True)
    check_writable(results, "results file", folder=False)
    check_writable(lock_path(store, c.cell.id, c.seed), "lock file", folder=False)
    probe_locks(store)
    probe_locks(results.parent)


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
    c.evaluation = Distiller(c.cell, model.to(dev), None, [], [], channels_last=False, amp=False).evaluation(data)
    c.top1, c.top5 = c.evaluation.top1, c.evaluation.top5
    c.wall, c.device, c.info, c.num_test = time.perf_counter() - t0, device_name(dev), ds.info, data.num_test
    return c


def install(c: Checked, store, results_dir, imported: dict) -> dict:
    """Copy the checked file into the store (sha256 sidecar), store its predictions, append its line
    (the caller has run check_targets before evaluating)."""
    from kd.records.predictions import write_run
    from kd.records.results import append_record, results_file, results_root
    from kd.records.store import install_checkpoint, run_lock, safe_name
    with run_lock(store, c.cell.id, c.seed):          # not while a run trains this teacher
        rec = _record(c, imported)
        existed = c.dst.is_file()
        install_checkpoint(c.src, c.dst, c.digest, f"imported from {c.src.resolve()}")
        ev = c.evaluation
        rec["predictions"] = write_run(results_root(results_dir), safe_name(c.cell.id), c.seed,
                                       ev.pred.numpy(), ev.pred.numpy(), ev.labels.numpy())   # one evaluation: last = best
        try:
            append_record(rec, results_file(c.cell.dataset, results_dir))
        except KDError:
            if not existed:                 # never a stored teacher without its line
                c.dst.unlink(missing_ok=True)
                c.dst.with_suffix(".sha256").unlink(missing_ok=True)
            raise
    return rec


def _record(c: Checked, imported: dict) -> dict:
    from kd.catalog.cells import load_recipe
    from kd.records.provenance import git, versions
    from kd.records.results import SCHEMA
    cell = c.cell
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
    return json.loads(json.dumps(rec))


def _stored_sha(dst: Path) -> str:
    """The first 12 digits of a stored checkpoint's sidecar, for a message (an empty or odd sidecar says so)."""
    side = dst.with_suffix(".sha256")
    try:
        words = side.read_text(errors="replace").split() if side.is_file() else None
    except OSError:
        words = []
    if words is None:
        return "no sha256"
    return words[0][:12] + "…" if words else "an empty sha256 sidecar"


def import_teacher(cell, src: Path, sha256: str, *, data_root=None, store=None, results_dir=None,
                   device: str | None = None, force: bool = False) -> dict:
    from kd.catalog.cells import load_recipe
    from kd.data import load_dataset
    from kd.engine.execution import pick_device
    from kd.records.store import store_root
    store = store_root(store)
    c = check_file(cell, src, store, force)
    if c.digest != sha256.lower():
        raise KDError(f"{c.src}: sha256 is {c.digest}, not the {sha256} you gave; nothing imported")
    check_targets(c, store, results_dir)
    ds = load_dataset(cell.dataset, data_root, seed=load_recipe(cell.recipe).data_seed)
    evaluate(c, ds, pick_device(device))
    return install(c, store, results_dir, {})
