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
                    (checked by the reader like the accuracies: a line with a malformed curve is skipped)
    config          the resolved cell + recipe (after overrides), as run
    git             {"commit", "dirty"}
    versions        {"python", "torch", "torchvision", "kd", ...}
    device, wall_s, images_per_s, started, finished (ISO 8601 UTC), host
    world_size, global_batch, per_rank_batch, sync_bn, dist_backend   the data-parallel layout (kd.engine.dist);
                                    1 process: world_size 1, per_rank_batch = global_batch, backend null
    lr_scaling, lr_factor           the recipe's LR rule for the global batch (kd.catalog.cells.Recipe.lr_factor)
    predictions     {"file", "sha256"}: the predicted class of every test example at the last and the best
                    epoch, with the labels (kd.records.predictions; file relative to this .jsonl's folder);
                    absent on lines written before it existed
    teacher_predictions   {"file", "sha256"}: the teacher's predictions (runs with a teacher)
    fidelity        {"agreement", "kl", "epoch": "last"}: top-1 agreement with the teacher (%) and the mean
                    KL(teacher || student) at T = 1 (nats) on the test set (runs with a teacher)
Lines are never edited; a rerun is a new line. Readers skip (and report) lines that are not
schema-1 records, so one torn or foreign line never hides the others. Tables, diffs and reports are derived from them.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

from kd.records.files import NotReadable, read_regular

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
    (processes or threads) never interleave or lose lines.

    The file always ends on a newline: a torn last line (a full disk, a killed writer) is closed
    with a newline before the record, so the new record stays whole and the torn one is the only bad
    line (readers skip and report it). Every byte is checked: a short or failed write is undone
    (the file is truncated back to its former size) and raised as a KDError, so success is reported
    only for a record that is wholly on disk (fsync'ed)."""
    from kd.errors import KDError
    line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()
    from kd.records.files import flock, open_write
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_write(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, "results file")
    except OSError as e:
        raise KDError(f"cannot write result line to {path}: {e.strerror or e}") from None
    try:
        flock(fd, path, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line               # start on a fresh line after a torn tail
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write: {written} of {len(line)} bytes")
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError:
                pass
            raise KDError(f"result line NOT recorded in {path}: {e.strerror or e}; the file is as it was") from None
    finally:
        os.close(fd)                          # releases the lock


def _order(root: Path, f: Path) -> tuple:
    """Committed lines before a user's (results/local/), then by path."""
    return (f.relative_to(root).parts[0] == LOCAL.name and root.resolve() == LOCAL.parent.resolve(), str(f))


_NUMBER_KEYS = ("top1_last", "top5_last", "top1_best", "top5_best", "ensemble_top1", "ensemble_top5")
_reported: set = set()


def _num(v) -> bool:
    """A JSON number (not a string, not true/false) that is an accuracy in [0, 100]."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100


def check_record(rec) -> str | None:
    """Why `rec` is not a schema-1 result record, or None. Numbers must be JSON numbers: "95.0"
    and true are not accuracies."""
    if not isinstance(rec, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(rec), "null")
        return f"a JSON {kind}, not an object"
    if rec.get("schema") != SCHEMA or isinstance(rec.get("schema"), bool):
        return f"schema {rec.get('schema')!r}, this kd reads schema {SCHEMA}"
    for k in ("cell_id", "status"):
        if not isinstance(rec.get(k), str):
            return f"'{k}' missing or not a string"
    if rec["cell_id"].count("/") != 3:
        return f"cell_id '{rec['cell_id']}' is not dataset/label/model/recipe"
    if not isinstance(rec.get("seed"), int) or isinstance(rec["seed"], bool):
        return "'seed' missing or not an integer"
    if rec["status"] not in ("ok", "failed"):
        return f"status '{rec['status']}' is neither ok nor failed"
    if "recipe" in rec and not isinstance(rec["recipe"], str):
        return "'recipe' is not a string"
    for k in _NUMBER_KEYS:
        required = rec["status"] == "ok" and k in _NUMBER_KEYS[:4]
        if (required or rec.get(k) is not None) and not _num(rec.get(k)):
            return f"'{k}' is {json.dumps(rec.get(k))}, not a number in [0, 100]"
    return _check_curve(rec.get("curve"))


def _check_curve(curve) -> str | None:
    """Why a record's curve is not a list of {"epoch": int >= 1, "top1", "top5": numbers in [0, 100],
    "train_loss", "lr": numbers}, or None (an absent curve is fine)."""
    if curve is None:
        return None
    if not isinstance(curve, list):
        return f"'curve' is a {type(curve).__name__}, not a list of epochs"
    for i, e in enumerate(curve):
        if not isinstance(e, dict):
            return f"curve[{i}] is not an object"
        ep = e.get("epoch")
        if not isinstance(ep, int) or isinstance(ep, bool) or ep < 1:
            return f"curve[{i}]: 'epoch' is {_show(ep)}, not a whole number >= 1"
        for k in ("top1", "top5"):
            if not _num(e.get(k)):
                return f"curve[{i}]: '{k}' is {_show(e.get(k))}, not a number in [0, 100]"
        for k in ("train_loss", "lr"):
            if not isinstance(e.get(k), (int, float)) or isinstance(e.get(k), bool):
                return f"curve[{i}]: '{k}' is {_show(e.get(k))}, not a number"
    return None


def _show(v) -> str:
    t = json.dumps(v)
    return t if len(t) <= 40 else t[:37] + "..."


def _reject_constant(name):
    raise ValueError(f"{name} is not a number in a result line")


def scan_records(root: Path | None = None) -> tuple[list[dict], list[str]]:
    """(records, problems): every valid result line under root (default: read_root(); recursively,
    *.jsonl, committed files first, each in line order), and one 'file:line: why' per line or file that was skipped (torn or malformed lines,
    another schema, mistyped fields, unreadable files, directories named *.jsonl)."""
    records, problems = [], []
    base = read_root(root)
    if (base.exists() or base.is_symlink()) and not base.is_dir():
        from kd.errors import KDError
        raise KDError(f"results folder {base} is not a folder")
    for f in sorted(base.rglob("*.jsonl"), key=lambda f: _order(base, f)) if base.is_dir() else []:
        if "speed" in f.relative_to(base).parts[:-1]:
            continue                                   # `kd bench` lines: timings, never results
        if f.is_dir():
            problems.append(f"{f}: a folder named *.jsonl, not a results file")
            continue
        try:
            data = read_regular(f)
        except NotReadable as e:
            problems.append(f"{f}: {e}")
            continue
        except OSError as e:
            problems.append(f"{f}: unreadable ({e.strerror or e})")
            continue
        lines = data.split(b"\n")
        for i, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            torn = i == len(lines)        # no newline after it: a torn (partly written) line
            try:
                rec = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
                why = check_record(rec)
            except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError
                why = f"not a JSON result line ({getattr(e, 'msg', None) or e})"
            if torn:
                why = "torn last line (no newline: a write did not finish)" + (f"; {why}" if why else "")
            if why:
                problems.append(f"{f}:{i}: {why}")
            else:
                records.append(rec)
    return records, problems


def read_records(root: Path | None = None, strict: bool = False) -> list[dict]:
    """The valid result lines under root. Bad lines are skipped and reported on stderr in one
    `kd: warning:` line (each once per process); with strict=True any bad line is a KDError."""
    records, problems = scan_records(root)
    if problems and strict:
        from kd.errors import KDError
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise KDError(f"bad result line {problems[0]}{more}; fix or remove it before checking")
    new = [p for p in problems if p not in _reported]
    if new:
        _reported.update(new)
        more = f" (and {len(new) - 1} more)" if len(new) > 1 else ""
        print(f"kd: warning: skipped bad result line {new[0]}{more}", file=sys.stderr)
    return records


def recorded_seeds(cell_id: str, root: Path | None = None) -> set[int]:
    """Seeds of `cell_id` with an ok line in the folder runs are written to (results_root(root))."""
    root = results_root(root)
    if not root.is_dir():
        return set()
    records, _ = scan_records(root)          # quietly: a bad line is reported by the command that reads
    return {r["seed"] for r in records if r.get("cell_id") == cell_id and r.get("status") == "ok"}
