"""Provenance: the code, the versions and the machine behind a number, and the result line itself.

Every line a run appends is built by `result_record` (schema version kd.records.results.SCHEMA);
the same helpers stamp speed lines and imported teachers.
"""
from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from kd.records.results import SCHEMA

REPO = Path(__file__).resolve().parent.parent.parent


def versions() -> dict:
    import numpy
    import torchvision
    import kd
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "kd": kd.__version__, "cuda": torch.version.cuda}


@functools.lru_cache(maxsize=1)
def git() -> dict:
    """The commit of the code this process loaded (read once, at the first run of the process);
    `dirty` means uncommitted code, not result lines appended meanwhile."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=REPO, capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_name(device: torch.device) -> str:
    """The GPU's name, or "cpu (<arch>, <n> threads, <code paths>)": thread count and code paths both
    change a CPU run's numbers (kd.commands.demo)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {cpu_kernels()})"


def cpu_kernels() -> str:
    """The CPU code paths in effect: PyTorch's own kernels (ATen's capability, e.g. AVX512, AVX2, DEFAULT),
    then the caps on oneDNN's and MKL's when set in the environment (ONEDNN_MAX_CPU_ISA, MKL_CBWR), which
    otherwise pick the best the CPU has: e.g. "AVX2; oneDNN AVX2, MKL AVX2"."""
    caps = [f"{lib} {os.environ[var]}" for lib, var in (("oneDNN", "ONEDNN_MAX_CPU_ISA"), ("MKL", "MKL_CBWR"))
            if os.environ.get(var)]
    return torch.backends.cpu.get_cpu_capability() + ("; " + ", ".join(caps) if caps else "")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def result_record(spec, progress: dict, *, status: str, data: dict, run: dict, error: str | None = None,
                  checkpoint: str | None = None, sha: str | None = None, evidence: dict | None = None) -> dict:
    """One result line. `progress`: curve, stage_log, elapsed, images, started (what the run measured);
    `data`: dataset_info, num_train, num_test; `run`: teacher_cell, teacher_mode, group,
    teacher_checkpoint_sha256, git, device, execution and the parallel layout (kd.engine.dist.provenance).
    The reported numbers (convention): top-1/top-5 of the last epoch (RepDistiller's) and of the best
    epoch by top-1, ties to the later epoch (mdistiller's). `evidence`: the fields predictions,
    teacher_predictions and fidelity (kd.engine.member), added as given."""
    c, curve, elapsed = spec.cell, progress["curve"], progress["elapsed"]
    rec = {"schema": SCHEMA, "cell_id": spec.id, "dataset": c.dataset, "label": c.label, "student": c.student,
           "teacher": c.teacher, "recipe": spec.recipe.id, "seed": spec.seed, "status": status}
    if status == "ok":
        best = max(curve, key=lambda e: (e["top1"], e["epoch"]))
        rec.update(top1_last=curve[-1]["top1"], top5_last=curve[-1]["top5"], top1_best=best["top1"],
                   top5_best=best["top5"], best_epoch=best["epoch"], checkpoint=checkpoint, checkpoint_sha256=sha)
    else:
        rec["error"] = error
    rec.update(curve=curve, stage_curve=progress["stage_log"],
               config={"cell": c.to_dict(), "recipe": asdict(spec.recipe), **data})
    run = dict(run)
    layout = run.pop("layout")
    rec.update(teacher_cell=run.pop("teacher_cell"), teacher_mode=run.pop("teacher_mode"), group=run.pop("group"),
               teacher_checkpoint_sha256=run.pop("teacher_checkpoint_sha256"), git=run.pop("git"),
               versions=versions(), device=run.pop("device"), execution=run.pop("execution"),
               wall_s=round(elapsed, 3), images_per_s=round(progress["images"] / elapsed, 1) if elapsed else None,
               started=progress["started"], finished=now(), host=platform.node(), argv=sys.argv[1:], **layout)
    rec.update(evidence or {})
    return rec
