"""Per-example predictions stored beside the result lines: the predicted class of every test example.

    <results>/predictions/<cell id, '/' -> '__'>/seed<k>-<sha256[:12]>.npz     a run's (line field "predictions")
    <results>/predictions/teachers/<teacher sha256[:16]>-<mode>.npz            a teacher's, written once
                                                                                 (line field "teacher_predictions")

A file is an uncompressed-name, deflated zip of .npy arrays (numpy's .npz layout, fixed timestamps so
identical predictions give an identical sha256): `labels` (uint16, the test labels in test order) and
`last`, `best` (a run's predictions at the last and at the best epoch; the best epoch as the line's
best_epoch) or `pred` (a teacher's). A result line names its file relative to the folder the line's
.jsonl file is in, with the file's sha256: {"file": "predictions/...", "sha256": "..."}. A file whose
sha256 differs from its line is never used. Names carry the sha256, so a rerun never replaces the file
an earlier line names (append-only, as the lines).
"""
from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FOLDER = "predictions"
_STAMP = (1980, 1, 1, 0, 0, 0)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The .npz bytes of `arrays` (uint16), byte-identical for identical arrays."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in sorted(arrays):
            a = np.asarray(arrays[name])
            if a.size and (a.min() < 0 or a.max() > np.iinfo(np.uint16).max):
                raise ValueError(f"{name}: class indices outside uint16")
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            npy = io.BytesIO()
            np.lib.format.write_array(npy, a.astype(np.uint16), allow_pickle=False)
            z.writestr(info, npy.getvalue())
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    from kd.records.store import atomic_write
    atomic_write(path, lambda t: t.write_bytes(data))


def write_run(results_root: Path, safe_id: str, seed: int, last, best, labels) -> dict:
    """Store a run's predictions; the line field {"file", "sha256"}."""
    data = _npz_bytes({"last": last, "best": best, "labels": labels})
    sha = hashlib.sha256(data).hexdigest()
    rel = Path(FOLDER) / safe_id / f"seed{seed}-{sha[:12]}.npz"
    _write(Path(results_root) / rel, data)
    return {"file": rel.as_posix(), "sha256": sha}


def write_teacher(results_root: Path, teacher_sha: str, mode: str, pred, labels) -> dict:
    """Store a teacher's predictions once (an existing file with the same content is kept)."""
    data = _npz_bytes({"pred": pred, "labels": labels})
    sha = hashlib.sha256(data).hexdigest()
    rel = Path(FOLDER) / "teachers" / f"{teacher_sha[:16]}-{mode}.npz"
    path = Path(results_root) / rel
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha):
        _write(path, data)
    return {"file": rel.as_posix(), "sha256": sha}


@dataclass(frozen=True)
class Predictions:
    """A run's stored predictions: `last` and `best` (None for a teacher's file), `labels`, and `pred`
    (a teacher's)."""
    labels: np.ndarray
    last: np.ndarray | None = None
    best: np.ndarray | None = None
    pred: np.ndarray | None = None

    def correct(self, statistic: str) -> np.ndarray | None:
        """1 where the prediction of that epoch ("last" or "best") is right, else 0 (float)."""
        p = self.best if statistic == "best" else self.last
        return None if p is None else (p == self.labels).astype(np.float64)


def read(path: Path, sha256: str | None = None) -> Predictions:
    """Load one file; ValueError when its sha256 is not `sha256` or it is not a predictions file."""
    data = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError("sha256 does not match its result line")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k].astype(np.int64) for k in z.files}
    if "labels" not in arrays:
        raise ValueError("no labels array")
    return Predictions(arrays["labels"], arrays.get("last"), arrays.get("best"), arrays.get("pred"))


def _folders(root: Path) -> list[Path]:
    """The folders whose .jsonl files hold result lines under `root` (the folder itself first)."""
    found = {f.parent for f in root.rglob("*.jsonl") if "speed" not in f.relative_to(root).parts[:-1]} \
        if root.is_dir() else set()
    return [root] + sorted(found - {root})


def _find(folders: list[Path], field: dict) -> tuple[Predictions | None, str | None]:
    """(predictions, None) for a line's field, (None, why) when refused, (None, None) when absent."""
    if not isinstance(field, dict) or not isinstance(field.get("file"), str) or not isinstance(field.get("sha256"), str):
        return None, "a malformed predictions field"
    refused = None
    for d in folders:
        path = d / field["file"]
        if path.is_file():
            try:
                return read(path, field["sha256"]), None
            except (ValueError, OSError, zipfile.BadZipFile) as e:
                refused = f"{path}: {e}"
    return None, refused


def load(records, root: Path, key: str = "predictions") -> dict[tuple[str, int], Predictions]:
    """(cell_id, seed) -> Predictions for each of `records` whose field `key` names a file found under
    `root` with the sha256 the line gives. Files that do not match are refused with one
    `kd: warning:` line and never used; lines without the field (older lines, imports) are skipped."""
    folders, out, refused = _folders(Path(root)), {}, []
    for r in records:
        if not r.get(key):
            continue
        p, why = _find(folders, r[key])
        if p is not None:
            out[(r["cell_id"], r["seed"])] = p
        elif why:
            refused.append(why)
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        print(f"kd: warning: predictions not used: {refused[0]}{more}", file=sys.stderr)
    return out
