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


def fold_batchnorm(teacher: nn.Module, probe: torch.Tensor) -> int:
    """Fold each eval-mode BatchNorm2d that is the only reader of a convolution's output into that
    convolution (torch.nn.utils.fusion.fuse_conv_bn_eval: W' = W g / sqrt(v + eps),
    b' = (b - m) g / sqrt(v + eps) + beta), in place; the BatchNorm becomes an Identity. Returns how
    many were folded.

    Only for a frozen teacher whose BatchNorm runs on its running statistics (mode "eval"), where the
    fold is exact in real arithmetic; in float32 it moves the teacher's outputs by rounding only.
    Measured on this CPU (tests/test_teacher_fold.py, the CIFAR zoo's teachers with random BatchNorm
    statistics, channels_last, batch 64): logits and every feature of both kinds within 4.0e-6 of the
    unfolded teacher's, relative to the tensor's largest magnitude (the test allows 2e-5). Those
    rounding differences do move training results: `kd demo` with the fold gives other digits
    (README, Speed), so the fold is opt-in (`kd bench --fold-teacher-bn`), never a run's default.
    Pairs are found by running `probe` through the teacher: a BatchNorm is folded when its input is
    the very tensor a convolution returned and nothing else (no module, no functional op such as a
    residual add, no returned feature) read that tensor; pre-activation BatchNorms (WRN) stay. The
    probe's outputs before and after are compared; a fold that moved them beyond rounding is a
    KDError (it would be a bug here, not a property of the teacher).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    with torch.no_grad():
        before = _outputs(teacher, probe)
    folded = _conv_bn_pairs(teacher, probe)
    for conv_name, bn_name in folded:
        conv, bn = teacher.get_submodule(conv_name), teacher.get_submodule(bn_name)
        fused = fuse_conv_bn_eval(conv, bn)
        fused.weight.data = fused.weight.data.contiguous(memory_format=_format(conv.weight))
        fused.requires_grad_(False)
        _set(teacher, conv_name, fused)
        _set(teacher, bn_name, nn.Identity().eval())
    with torch.no_grad():
        after = _outputs(teacher, probe)
    for a, b in zip(after, before):
        if not torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max())):
            raise KDError(f"folding the teacher's BatchNorm moved its outputs by {float((a - b).abs().max()):.3g}")
    return len(folded)


def _conv_bn_pairs(teacher: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, BatchNorm) module names where the BatchNorm is the only reader of the conv's output."""
    from torch.overrides import TorchFunctionMode
    names = {m: n for n, m in teacher.named_modules()}
    conv_out: dict[int, tuple[str, torch.Tensor]] = {}        # tensors kept alive: ids are not reused meanwhile
    reads: dict[int, int] = {}
    pairs = []

    class Reads(TorchFunctionMode):
        """Counts every call that reads a convolution's output and returns a tensor (not .dim(), .size())."""
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                for a in args:
                    if isinstance(a, torch.Tensor) and id(a) in conv_out:
                        reads[id(a)] = reads.get(id(a), 0) + 1
            return out

    def hook(mod, args, out):
        if isinstance(mod, nn.Conv2d):
            conv_out[id(out)] = (names[mod], out)
        elif args and id(args[0]) in conv_out and not mod.training:
            pairs.append((conv_out[id(args[0])][0], names[mod], id(args[0])))
    hooks = [m.register_forward_hook(hook) for m in teacher.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad(), Reads():
            for t in _outputs(teacher, probe):                # a returned feature is a read too
                if id(t) in conv_out:
                    reads[id(t)] = reads.get(id(t), 0) + 1
    finally:
        for h in hooks:
            h.remove()
    ok: dict[tuple[str, str], bool] = {}                    # each pair is seen once per forward of _outputs
    for c, b, key in pairs:
        ok[(c, b)] = ok.get((c, b), True) and reads.get(key) == 1
    return [pair for pair, good in ok.items() if good]


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor the teacher hands the methods: features of both kinds and logits (extract), else logits."""
    if not hasattr(model, "extract"):
        return [model(x)]
    out = []
    for preact in (False, True):
        feats, logits = model.extract(x, preact=preact)
        out += [*feats, logits]
    return out


def _format(t: torch.Tensor):
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def _set(root: nn.Module, name: str, module: nn.Module):
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


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
