"""`kd import-teacher`: use a teacher checkpoint you have, checked, evaluated and recorded.

Order (nothing is written until every check has passed): the cell is a teacher cell; the file's
sha256 equals the one given; no teacher is stored there yet (unless force); the store, the results
file and the teacher's lock file can be written (no links, locks supported); it loads strictly
(weights_only=True) into the cell's model; the teacher's lock is taken (refused when a run trains
this teacher); the test set is evaluated. Then the file is copied into the checkpoint store with its
sha256 sidecar, and one result line is appended for the cell and the recipe's teacher seed, marked
{"imported": {"from", "sha256"}}.

Convention: an imported checkpoint has one evaluation and no training curve, so its top-1/top-5 are
both the 'last' and the 'best' numbers of the line (best_epoch null, curve empty, wall_s = the
evaluation's seconds); its predictions (kd.records.predictions) are stored as both epochs'.
"""
from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

from kd.errors import KDError


def import_teacher(cell, src: Path, sha256: str, *, data_root=None, store=None, results_dir=None,
                   device: str | None = None, force: bool = False) -> dict:
    import torch

    from kd.catalog.cells import load_recipe
    from kd.data import load_dataset
    from kd.records.results import append_record, results_file
    from kd.engine.distiller import Distiller
    from kd.engine.teacher import build_model
    from kd.models import load_weights
    from kd.records.store import checkpoint_path, install_checkpoint, lock_path, run_lock, sha256_file, store_root
    if cell.label != "baseline" or cell.teacher:
        raise KDError(f"{cell.id} is not a teacher cell (expected dataset/baseline/<model>/<recipe>)")
    src = Path(src)
    if not src.is_file():
        raise KDError(f"no such file: {src}")
    digest = sha256_file(src)
    if digest != sha256.lower():
        raise KDError(f"{src}: sha256 is {digest}, not the {sha256} you gave; nothing imported")
    recipe = load_recipe(cell.recipe)
    store = store_root(store)
    dst = checkpoint_path(cell.id, recipe.teacher_seed, store)
    if dst.is_file() and not force:
        raise KDError(f"a teacher for {cell.id} is already stored ({dst}, {_stored_sha(dst)}); --force replaces it")
    _check_targets(store, results_file(cell.dataset, results_dir), lock_path(store, cell.id, recipe.teacher_seed))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ds = load_dataset(cell.dataset, data_root, seed=recipe.data_seed)
    model = build_model(cell.student, ds.num_classes)
    load_weights(model, src)                                                         # strict load check
    with run_lock(store, cell.id, recipe.teacher_seed):          # not while a run trains this teacher
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        data = ds.on_device(dev)
        ev = Distiller(cell, model.to(dev), None, [], [], channels_last=False, amp=False).evaluation(data)
        rec = _record(cell, recipe, src, dst, digest, (ev.top1, ev.top5), ds, data, dev, started, time.perf_counter() - t0)
        existed = dst.is_file()
        install_checkpoint(src, dst, digest, f"imported from {src.resolve()}")
        from kd.records.predictions import write_run
        from kd.records.results import results_root
        from kd.records.store import safe_name
        rec["predictions"] = write_run(results_root(results_dir), safe_name(cell.id), recipe.teacher_seed,
                                       ev.pred.numpy(), ev.pred.numpy(), ev.labels.numpy())   # one evaluation: last = best
        try:
            append_record(rec, results_file(cell.dataset, results_dir))
        except KDError:
            if not existed:                 # never a stored teacher without its line
                dst.unlink(missing_ok=True)
                dst.with_suffix(".sha256").unlink(missing_ok=True)
            raise
    return rec


def _record(cell, recipe, src: Path, dst: Path, digest: str, top: tuple, ds, data, dev, started, wall: float) -> dict:
    import json
    import platform
    from kd.records.provenance import device_name, git, versions
    from kd.records.results import SCHEMA
    top1, top5 = top
    rec = {"schema": SCHEMA, "cell_id": cell.id, "dataset": cell.dataset, "label": cell.label,
           "student": cell.student, "teacher": None, "recipe": recipe.id, "seed": recipe.teacher_seed,
           "status": "ok", "top1_last": round(top1, 4), "top5_last": round(top5, 4), "top1_best": round(top1, 4),
           "top5_best": round(top5, 4), "best_epoch": None, "checkpoint": str(dst), "checkpoint_sha256": digest,
           "imported": {"from": str(src.resolve()), "sha256": digest}, "curve": [], "stage_curve": [],
           "config": {"cell": cell.to_dict(), "dataset_info": ds.info, "num_test": data.num_test},
           "teacher_cell": None, "teacher_checkpoint_sha256": None, "git": dict(git()), "versions": versions(),
           "device": device_name(dev), "wall_s": round(wall, 3), "images_per_s": None,
           "started": started.isoformat(timespec="seconds"),
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


def _check_targets(store: Path, results: Path, lock: Path) -> None:
    """Everything the import writes, checked before anything is: the store and the results file are
    writable (no links), their filesystems lock. The teacher's lock itself is taken by the caller, before
    the checkpoint is installed."""
    from kd.records.files import probe_locks
    from kd.records.store import check_writable
    check_writable(store, "checkpoint store", folder=True)
    check_writable(results, "results file", folder=False)
    check_writable(lock, "lock file", folder=False)
    probe_locks(store)
    probe_locks(results.parent)
