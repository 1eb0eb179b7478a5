"""Append-only result lines: one JSON object per finished (or failed) run, under results/.

Record fields (schema 1):
    schema, cell_id, dataset, label, student, teacher, recipe, seed,
    status          "ok" | "failed"   (a failed run carries "error" and no accuracies)
    top1_last, top5_last            accuracy (%) at the last epoch
    top1_best, top5_best, best_epoch   accuracy (%) at the epoch of best top-1 (test set, as mdistiller)
    curve           [{"epoch", "top1", "top5", "train_loss", "lr"}, ...] one entry per evaluated epoch
    config          the resolved cell + recipe (after overrides), as run
    git             {"commit", "dirty"}
    versions        {"python", "torch", "torchvision", "kd", ...}
    device, wall_s, images_per_s, started, finished (ISO 8601 UTC), host
    world_size, global_batch, per_rank_batch, sync_bn, dist_backend   the data-parallel layout (kd.dist);
                                    1 process: world_size 1, per_rank_batch = global_batch, backend null
    lr_scaling, lr_factor           the recipe's LR rule for the global batch (kd.cells.Recipe.lr_factor)
Lines are never edited; a rerun is a new line. Tables, diffs and reports are derived from them.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

SCHEMA = 1


def results_root(override: str | os.PathLike | None = None) -> Path:
    """--results, else $KD_RESULTS, else ./results (read at call time)."""
    return Path(override or os.environ.get("KD_RESULTS", "results"))


def results_file(dataset: str, root: Path | None = None) -> Path:
    """One JSONL file per dataset family (the part of the dataset name before a variant)."""
    return results_root(root) / f"{dataset.split('-')[0]}.jsonl"


def append_record(record: dict, path: Path) -> None:
    """Append one line atomically: a single write() under an exclusive lock, so concurrent runs
    (processes or threads) never interleave or lose lines."""
    line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_records(root: Path | None = None) -> list[dict]:
    """Every result line under root (recursively, *.jsonl), in file order."""
    out = []
    for f in sorted(results_root(root).rglob("*.jsonl")):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    from kd.errors import KDError
                    raise KDError(f"{f}:{i}: not a JSON result line ({e.msg})") from None
    return out
