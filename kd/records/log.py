"""Per-epoch logging of a run: a progress bar on a terminal, plain lines elsewhere, a CSV per run,
optionally TensorBoard event files.

Each run in training (kd.engine.member) calls `EpochLog.for_run(...)` once and then
`.epoch(entry, stage, images, elapsed)` after every evaluated epoch, `.close()` at the end.

Output mode, decided once per run:
- a tqdm bar (one line, redrawn) when progress is on, stderr is a terminal and $TQDM_DISABLE is unset;
- otherwise one plain line per epoch on stderr, flushed at once (piped to a file, under nohup or a
  batch scheduler, with --no-progress, or with TQDM_DISABLE=1):
      <cell id> seed 0 epoch 3/20 loss 1.2345 top1 81.20 top5 97.40 lr 0.05 img/s 1520
  `configure(quiet=True)` (tests, the API) prints nothing.
Images/s is the training throughput of that epoch alone (images seen / seconds in the training step;
evaluation excluded), as the result line's images_per_s is for the whole run.

Files: <results>/curves/<cell id with '/' -> '__'>/seed<k>.csv (beside the result lines; columns
stage ("main", or the name of a method's own stage), epoch, train_loss, top1, top5, lr (10 significant
digits: 0.005, not the float sum's 0.005000000000000001; the result line keeps the exact value),
images_per_s), rewritten from epoch 1 and appended on resume. With configure(tensorboard=DIR) also DIR/<same name>/seed<k>/ event files (scalars
train/loss, test/top1, test/top5, lr, images_per_s; step = epochs done over all stages). TensorBoard
is an optional extra (pip install 'kd-bench[tensorboard]'), imported only when asked for.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

from kd.errors import KDError

_CONFIG = {"tensorboard": None, "quiet": False}
FIELDS = ("stage", "epoch", "train_loss", "top1", "top5", "lr", "images_per_s")
MAIN = "main"        # the CSV's stage of the main training (a method's own stages carry their names)


def configure(tensorboard: str | os.PathLike | None = None, quiet: bool | None = None) -> None:
    """Process-wide settings (the CLI sets them from --tensorboard). Checks for TensorBoard at once,
    so a missing package is one error line before anything is trained."""
    if tensorboard is not None:
        summary_writer()
        _CONFIG["tensorboard"] = Path(tensorboard)
    if quiet is not None:
        _CONFIG["quiet"] = quiet


def summary_writer():
    """torch's SummaryWriter class; a KDError naming the extra when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise KDError("--tensorboard needs the tensorboard package: pip install 'kd-bench[tensorboard]' "
                      "(or pip install tensorboard)") from None
    return SummaryWriter


def bar_wanted(progress: bool, stream=None) -> bool:
    """A redrawn bar only on a terminal, with progress on and $TQDM_DISABLE unset (or 0/false)."""
    stream = stream or sys.stderr
    disabled = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    return bool(progress) and not disabled and hasattr(stream, "isatty") and stream.isatty()


def run_file_name(cid: str) -> str:
    return cid.replace("/", "__").replace("~", "@")


def csv_path(cid: str, seed: int, results_dir=None) -> Path:
    """<results>/curves/<cell id, '/' -> '__'>/seed<k>.csv"""
    from kd.records.results import results_root
    return results_root(results_dir) / "curves" / run_file_name(cid) / f"seed{seed}.csv"


class EpochLog:
    def __init__(self, name: str, seed: int, total: int, done: int, progress: bool, csv_path: Path | None,
                 tensorboard: Path | None = None, stream=None):
        self.name, self.seed, self.total, self.done = name, seed, total, done
        self.stream = stream or sys.stderr
        self.bar = None
        if bar_wanted(progress, self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=name, unit="ep", leave=False, dynamic_ncols=True,
                            file=self.stream)
        self.lines = self.bar is None and not _CONFIG["quiet"]
        self.csv_path = csv_path
        if csv_path is not None and (done == 0 or not csv_path.is_file()):
            self._csv_row(FIELDS, truncate=True)
        self.writer = None
        if tensorboard is not None:
            self.writer = summary_writer()(log_dir=str(tensorboard / run_file_name(name) / f"seed{seed}"))
        self._images = self._elapsed = None

    @classmethod
    def for_run(cls, cid: str, seed: int, results_dir, progress: bool, total: int, done: int) -> "EpochLog":
        """The logger of run (cid, seed): its per-epoch CSV under <results>/curves/ (no link out of it)."""
        from kd.records.files import check_inside
        from kd.records.results import results_root
        path = csv_path(cid, seed, results_dir)
        check_inside(path, results_root(results_dir), "per-epoch log")
        return cls(cid, seed, total, done, progress, path, _CONFIG["tensorboard"])

    def _csv_row(self, row, truncate: bool = False) -> None:
        """One CSV row (the header with truncate=True), never through a symbolic link (refused in one
        line). The CSV is a convenience beside the result line: a write that fails (a full or read-only
        disk) is one warning line, and the run goes on without it."""
        from kd.records.files import open_write
        buf = io.StringIO()
        csv.writer(buf).writerow(row)
        try:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            fd = open_write(self.csv_path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND),
                            "per-epoch log")
            with os.fdopen(fd, "w", newline="") as f:
                f.write(buf.getvalue())
        except OSError as e:
            print(f"kd: warning: cannot write the per-epoch log {self.csv_path} ({e.strerror or e}); "
                  f"the run goes on without it (its result line keeps the curve)", file=sys.stderr)
            self.csv_path = None

    def epoch(self, entry: dict, stage, images: int, elapsed: float) -> None:
        """Log one evaluated epoch; `images`/`elapsed` are the run's running totals (training only)."""
        ips = None
        if self._images is not None and elapsed > self._elapsed:
            ips = (images - self._images) / (elapsed - self._elapsed)
        elif self._images is None and elapsed > 0 and self.done == 0:
            ips = images / elapsed
        self._images, self._elapsed = images, elapsed
        self.done += 1
        sname = getattr(stage, "name", None) or ""
        if self.bar is not None:
            self.bar.set_postfix(top1=f"{entry['top1']:.2f}", loss=f"{entry['train_loss']:.3f}")
            self.bar.update(1)
        elif self.lines:
            parts = [self.name, f"seed {self.seed}"] + ([f"stage {sname}"] if sname else []) + [
                f"epoch {self.done}/{self.total}", f"loss {entry['train_loss']:.4f}", f"top1 {entry['top1']:.2f}",
                f"top5 {entry['top5']:.2f}", f"lr {entry['lr']:.4g}"] + ([f"img/s {ips:.0f}"] if ips else [])
            print(" ".join(parts), file=self.stream, flush=True)
        if self.csv_path is not None:
            self._csv_row([sname or MAIN, entry["epoch"], entry["train_loss"], entry["top1"], entry["top5"],
                           f"{entry['lr']:.10g}", round(ips, 1) if ips else ""])
        if self.writer is not None:
            for tag, v in (("train/loss", entry["train_loss"]), ("test/top1", entry["top1"]),
                           ("test/top5", entry["top5"]), ("lr", entry["lr"]), ("images_per_s", ips)):
                if v is not None:
                    self.writer.add_scalar(tag, v, self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
