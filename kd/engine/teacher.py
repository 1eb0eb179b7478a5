"""The frozen teacher: which run trains it, which stored checkpoint a run uses, and how it is frozen.

A teacher is loaded once per (checkpoint sha256, BatchNorm mode) and frozen once, when it is loaded;
nothing freezes it again, so runs that share a teacher module share its mode (a group never mixes
modes: kd.engine.grouping).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kd.catalog.spec import RunSpec
from kd.errors import KDError
from kd.records.store import checkpoint_path, verified_checkpoint

TEACHER_MODES = ("eval", "train")


def build_model(name: str, num_classes: int) -> nn.Module:
    import kd.models  # noqa: F401  (registers the models)
    from kd.registry import MODELS
    return MODELS.get(name)(num_classes=num_classes)


def freeze(teacher: nn.Module, mode: str = "eval") -> nn.Module:
    """The one place the teacher is frozen: no parameter gets a gradient, its forward runs under
    no_grad (Distiller.teacher_forward), and it is never written back (only the student is saved).

    mode "eval": every layer in eval mode, BatchNorm on its running statistics.
    mode "train": BatchNorm layers on the batch's statistics, every other layer (dropout) in eval.
    mdistiller's OFD (its Distiller.train, unlike the base class, leaves the teacher in train mode)
    and the official clovaai OFD code (`t_net.train()`) do this; they also let the running
    statistics drift in memory, where nothing reads them. Here train-mode BatchNorm does not track
    them (track_running_stats off), so the teacher in memory stays equal to its checkpoint; the
    forward's values are the same. The mode is kept in `teacher.kd_teacher_mode` and never changes,
    whoever calls train()/eval() on the teacher afterwards.
    """
    if mode not in TEACHER_MODES:
        raise KDError(f"unknown teacher mode '{mode}'; valid: {', '.join(TEACHER_MODES)}")
    if getattr(teacher, "kd_teacher_mode", mode) != mode:
        raise KDError(f"a teacher frozen in mode '{teacher.kd_teacher_mode}' cannot be frozen again in mode '{mode}'")
    teacher.requires_grad_(False)
    nn.Module.train(teacher, False)
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.Module.train(m, mode == "train")
            m.track_running_stats = mode == "eval" and m.running_mean is not None
    teacher.train = lambda mode=True: teacher  # never leaves its mode, whoever calls train()/eval()
    teacher.kd_teacher_mode = mode
    return teacher


def teacher_mode(cell) -> str | None:
    """How the teacher's BatchNorm runs for this cell's methods (None: no method reads a teacher)."""
    import kd.methods  # noqa: F401
    from kd.registry import METHODS
    modes = {METHODS.get(t["name"]).teacher_mode for t in cell.terms if METHODS.get(t["name"]).needs_teacher}
    if len(modes) > 1:
        raise KDError(f"{cell.id}: the methods need the teacher in different modes ({', '.join(sorted(modes))})")
    return modes.pop() if modes else ("eval" if cell.teacher else None)


def teacher_run(spec: RunSpec, store: Path) -> tuple[RunSpec | None, Path | None, bool]:
    """(the teacher's run, its checkpoint path, stored?) for `spec`: the first of spec.teacher_specs()
    that is stored (a quick check uses the full-protocol teacher when one is stored, trained or
    imported), else the teacher under the same overrides, to be trained first."""
    tries = spec.teacher_specs()
    for t in tries:
        path = checkpoint_path(t.id, t.seed, store)
        if path.is_file():
            return t, path, True
    if not tries:
        return None, None, False
    return tries[0], checkpoint_path(tries[0].id, tries[0].seed, store), False


class Teachers:
    """Frozen teachers loaded once per (checkpoint sha256, mode), in the run's memory format."""

    def __init__(self, store: Path, device: torch.device, channels_last: bool):
        self.store, self.device, self.channels_last = store, device, channels_last
        self.loaded: dict[tuple[str, str], nn.Module] = {}

    def get(self, spec: RunSpec, num_classes: int) -> tuple[nn.Module | None, str | None, str | None]:
        """(frozen teacher, its sha256, its cell id) for `spec`, or Nones without a teacher."""
        tspec, path, stored = teacher_run(spec, self.store)
        if tspec is None:
            return None, None, None
        if not stored:
            raise KDError(f"{spec.id}: no stored teacher {tspec.id} (seed {tspec.seed})")
        sha, mode = verified_checkpoint(path), teacher_mode(spec.cell)
        if (sha, mode) not in self.loaded:
            from kd.models import load_weights
            model = load_weights(build_model(spec.cell.teacher, num_classes), path).to(self.device)
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
            self.loaded[(sha, mode)] = freeze(model, mode)
        return self.loaded[(sha, mode)], sha, tspec.id
