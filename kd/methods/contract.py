"""The contract between the training loop and a distillation method.

A method is an nn.Module built once per run from a `Context` (shapes from one probe batch, the
student and teacher modules, dataset size) and called every step with a `Step` (this batch's
logits and features of both networks). It returns a scalar loss or a dict of named scalar terms
(their sum is the method's loss). The loop multiplies that by the cell's weight for the method and
adds `ce_weight * cross_entropy`: a method never weights itself by a cell weight.

Everything a method owns that trains (regressors, embeddings, projectors, peers, memory banks as
buffers) is a submodule/parameter of the method: the loop puts all method parameters into the
optimizer, saves and restores them with the run, and switches them between train/eval with the
student. The student and teacher are passed in, never stored as submodules (use `Context`).

A method's forward must not synchronise with the host (no .item(), no Python branch on a tensor's
value, no data-dependent shapes), so that the whole step can be compiled and captured as a CUDA
graph (kd/engine/execution.py); tests/test_execution.py traces every method with fullgraph=True.

Stages (FitNet's hint stage, FSP/AB/FT initialisation) are declared by `stages()`: the loop runs
each `Stage` for its epochs before the main training, optimising only `stage.params` on
`stage.loss(step)` alone (no cross-entropy), with the recipe's optimizer at `stage.lr`. During a
stage with `train_modules` the student and every method module are in eval mode except those (as
RepDistiller's helper/pretrain.py: `model_s.eval(); init_modules.train()`); a stage whose loss reads
teacher features only sets `student_forward=False` and the loop runs no student forward for it.

Features are requested per method: `needs_preact` asks for both networks' pre-ReLU stage maps,
`student_preact` overrides the student's kind (ReviewKD: plain student maps, pre-ReLU teacher maps).
The loop hands each method (and each of its stages) a Step holding exactly the kinds it asked for;
a cell whose methods all ask for one kind extracts only that kind.

`teacher_mode` says how the teacher's normalisation layers run while this method distils: "eval"
(running statistics, the default) or "train" (batch statistics, OFD as mdistiller/clovaai). The
teacher stays frozen either way (kd.engine.teacher.freeze).
"""
from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import torch
from torch import nn

from kd.catalog.cells import is_int, is_number
from kd.errors import KDError


@dataclass
class Context:
    student: nn.Module
    teacher: nn.Module | None
    s_shapes: list[torch.Size]        # shapes of student.extract(x)[0] on a probe batch (batch dim first)
    t_shapes: list[torch.Size]        # same for the teacher ([] without a teacher)
    num_classes: int
    num_train: int                    # training-set size (memory banks, CRD)
    epochs: int                       # main-stage epochs of the recipe
    steps_per_epoch: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    device: torch.device = torch.device("cpu")


@dataclass
class Step:
    images: torch.Tensor              # (B, C, H, W) augmented, normalised
    targets: torch.Tensor             # (B,) int64
    index: torch.Tensor               # (B,) int64 position of each sample in the training set
    s_logits: torch.Tensor | None     # None in a stage that runs no student forward
    s_feats: list[torch.Tensor]
    t_logits: torch.Tensor | None
    t_feats: list[torch.Tensor]
    epoch: torch.Tensor | int         # 0-based epoch of the current stage; the loop passes a 0-d float
                                      # tensor on the device (use torch ops on it: no host sync)
    student: nn.Module = field(repr=False, default=None)
    teacher: nn.Module | None = field(repr=False, default=None)
    # every extracted kind, keyed by (network 's'|'t', preact); s_feats/t_feats are one of them
    feats_by_kind: dict = field(repr=False, default_factory=dict)

    def select(self, kinds: tuple[bool, bool]) -> "Step":
        """This step with s_feats/t_feats of kinds (student preact, teacher preact); itself when they
        already are. Pure Python on the lists the loop extracted: no device work."""
        s = self.feats_by_kind.get(("s", kinds[0]), self.s_feats)
        t = self.feats_by_kind.get(("t", kinds[1]), self.t_feats)
        return self if s is self.s_feats and t is self.t_feats else replace(self, s_feats=s, t_feats=t)


@dataclass
class Stage:
    name: str
    epochs: int
    params: list[nn.Parameter]
    loss: Callable[[Step], torch.Tensor]
    lr: float | None = None           # None: the recipe's learning rate
    # the modules in train mode during the stage, all others (student, method modules) in eval;
    # None: the student and every method module in train mode, as in the main stage (FitNet's hints)
    train_modules: list[nn.Module] | None = None
    student_forward: bool = True      # False: the loss reads teacher features only (FT's paraphraser)
    kinds: tuple[bool, bool] | None = None  # feature kinds of its method; the loop fills it in


class Method(nn.Module):
    """Base class. Subclasses set the class attributes they need and implement forward(step)."""

    needs_features: bool = True       # False: the loop may skip feature extraction (logit methods)
    needs_preact: bool = False        # features before the last ReLU of each stage (AB, OFD)
    student_preact: bool | None = None  # the student's kind when it differs from needs_preact
    needs_teacher: bool = True        # False for online methods (DML, ONE)
    capturable: bool = True           # False: forward needs a host decision per step; cells run eagerly
    teacher_mode: Literal["eval", "train"] = "eval"  # how the teacher's BatchNorm runs (OFD: "train")
    test_teacher: str = "tiny_t"      # the tiny teacher its tests and golden value use (tiny_s: same channels)

    @classmethod
    def kinds(cls) -> tuple[bool, bool]:
        """(student preact, teacher preact): the kinds of s_feats / t_feats this method reads."""
        return (cls.needs_preact if cls.student_preact is None else cls.student_preact), cls.needs_preact

    def __init__(self, ctx: Context):
        super().__init__()

    def forward(self, step: Step) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError

    def stages(self) -> list[Stage]:
        return []

    def eval_logits(self, images: torch.Tensor, student: nn.Module) -> torch.Tensor | None:
        """Logits to evaluate instead of the student's own (ONE's gated ensemble); None = student."""
        return None


# --- a cell's terms against the methods' constructors -------------------------------------------------

def _fits(v, hint) -> bool:
    """Does a YAML value fit a constructor annotation (float, int, bool, str, X | None, list[X])?"""
    if hint is typing.Any:
        return True
    if hint is type(None):
        return v is None
    if hint is float:
        return is_number(v)
    if hint is int:
        return is_int(v)
    if hint in (bool, str):
        return isinstance(v, hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, h) for h in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(v, (list, tuple)) and (not args or all(_fits(x, args[0]) for x in v))
    return True                                   # an annotation this check does not know: the method checks


def check_hyperparameters(cls, term: dict, where: str) -> None:
    """Every hyperparameter of a term names a constructor argument of its method and fits its type."""
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None), params.pop("ctx", None)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: names are still checked
        hints = {}
    open_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for k, v in term.items():
        if k in ("name", "weight"):
            continue
        if k not in params and not open_kw:
            raise KDError(f"{where}: unknown hyperparameter '{k}' of method '{term['name']}'; valid: "
                          f"{', '.join(sorted(n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY)) or 'none'}")
        if k in hints and not _fits(v, hints[k]):
            want = str(hints[k]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise KDError(f"{where}: method '{term['name']}': {k} = {v!r}: must be {want}")
