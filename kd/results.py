"""Append-only result lines: one JSON object per finished (or failed) run.

Where they go: a user's runs are written to results/local/ (git-ignored, so running the suite never
dirties a checkout) unless --results or $KD_RESULTS names another folder. The lines committed with the
repository (results/*.jsonl: the recorded demo and real-data runs) stay where they are. Reading
commands (list, compare, report) read, without --results/$KD_RESULTS, every line under results/: the
committed ones first, then results/local/, so a user's rerun of a seed supersedes a committed line;
with --results/$KD_RESULTS they read that folder only.

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
Lines are never edited; a rerun is a new line. Tables, diffs and reports are derived from them.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

SCHEMA = 1


LOCAL = Path("results") / "local"     # the default folder for a user's runs (relative to the working directory)


def results_root(override: str | os.PathLike | None = None) -> Path:
    """Where runs are written: --results, else $KD_RESULTS, else ./results/local (read at call time)."""
    return Path(override or os.environ.get("KD_RESULTS") or LOCAL)


def read_root(override: str | os.PathLike | None = None) -> Path:
    """Where reading commands look: --results, else $KD_RESULTS, else ./results (committed + local)."""
    return Path(override or os.environ.get("KD_RESULTS") or LOCAL.parent)


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


def _order(root: Path, f: Path) -> tuple:
    """Committed lines before a user's (results/local/), then by path."""
    return (f.relative_to(root).parts[0] == LOCAL.name and root.resolve() == LOCAL.parent.resolve(), str(f))


def read_records(root: Path | None = None) -> list[dict]:
    """Every result line under `root` (default: read_root(), see the module docstring), recursively
    (*.jsonl), committed files first, each file in line order."""
    root = read_root(root)
    out = []
    for f in sorted(root.rglob("*.jsonl"), key=lambda f: _order(root, f)):
        if "speed" in f.relative_to(root).parts[:-1]:
            continue                                   # `kd bench` lines: timings, never results
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    from kd.errors import KDError
                    raise KDError(f"{f}:{i}: not a JSON result line ({e.msg})") from None
    return out


def recorded_seeds(cell_id: str, root: Path | None = None) -> set[int]:
    """Seeds of `cell_id` with an ok line in the folder runs are written to (results_root(root))."""
    root = results_root(root)
    if not root.is_dir():
        return set()
    return {r["seed"] for r in read_records(root) if r.get("cell_id") == cell_id and r.get("status") == "ok"}
