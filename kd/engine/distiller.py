"""What computes a run's loss: the student and the cell's methods as one module, the frozen teacher
beside it (never a submodule: never saved, never trained). In the spirit of timm's training task.

Conventions that change numbers, all here:
- loss = ce_weight * CE(student logits, labels) + sum_i weight_i * method_i(step), weights from the
  cell (RepDistiller's `r*CE + a*KD + b*method`). A method returning a dict contributes the sum of
  its terms. A zero-weight method trains only in its stage (FSP, AB, FitNet hints).
- Initialisation stages (AB/FSP/FT) run with the student and the method modules in eval mode
  except the stage's `train_modules` (RepDistiller helper/pretrain.py); FitNet's hint stage and the
  main stage run the student and all method modules in train mode.
- Features are extracted per kind (plain or pre-ReLU) only when some method of the current phase
  reads that kind; each method gets the kinds it declares (`Method.kinds()`). A cell mixing kinds
  on one network (e.g. AB + FitNet; no reference cell does) runs that network once per kind, so the
  student's BatchNorm running statistics then move twice per step. The main stage runs the teacher
  only when a method with a nonzero weight is there to read it.
- The student's initialisation draws from seed `seed`, the methods' from `seed + 1`.
- Evaluation: the test set in batches of 256, the first method with `eval_logits` (ONE's ensemble)
  else the student; top-1/top-5 counted on the device. The predicted class of an example is the first
  of its top-k indices (the same `topk` that counts top-1, so ties resolve alike and the top-1 equals
  the accuracy of the predictions). Fidelity (Stanton et al., NeurIPS 2021), when asked for: top-1
  agreement (%) between those predictions and the teacher's, and the mean KL(teacher || student) of
  the softmaxes at T = 1 (nats per example), both in fp32 on the same batches, the teacher as frozen
  (kd.engine.teacher.freeze: a "train"-mode teacher uses each test batch's statistics). Evaluation
  draws no random numbers and changes no module.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kd.engine import dist
from kd.engine.teacher import build_model
from kd.errors import KDError
from kd.methods.contract import Context, Stage, Step

Kinds = tuple[bool, ...]


def features(model: nn.Module, x: torch.Tensor, kinds: Kinds, net: str) -> tuple[dict, torch.Tensor]:
    """{(net, preact): feats} for each requested kind, and the logits (one forward per kind)."""
    if not kinds:
        return {}, model(x)
    out = {}
    for preact in kinds:
        feats, logits = model.extract(x, preact=preact)
        out[(net, preact)] = feats
    return out, logits


def kinds_of(methods) -> tuple[Kinds, Kinds]:
    """The student's and the teacher's feature kinds read by `methods` (sorted: plain first)."""
    ks = [m.kinds() for m in methods if m.needs_features]
    return tuple(sorted({k[0] for k in ks})), tuple(sorted({k[1] for k in ks}))


def top_indices(logits: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """The classes of the max(ks) largest logits per sample, best first (k clipped to the classes)."""
    return logits.topk(min(max(ks), logits.shape[1]), dim=1).indices


def accuracy(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5), top: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k predictions (k clipped to the classes)."""
    top = top_indices(logits, ks) if top is None else top
    hit = top == y[:, None]
    return [hit[:, :k].any(1).sum() for k in ks]


@dataclass
class Evaluation:
    """One pass over the test set: top-1/top-5 (%), the predicted class of every test example and its
    label (CPU, test order); with a teacher asked for, its predictions, the top-1 agreement (%) and the
    mean KL(teacher || student) at T = 1."""
    top1: float
    top5: float
    pred: torch.Tensor
    labels: torch.Tensor
    teacher_pred: torch.Tensor | None = None
    agreement: float | None = None
    kl: float | None = None


class Distiller(nn.Module):
    """The student and the methods of one cell (both saved and trained); the teacher beside them."""

    def __init__(self, cell, student: nn.Module, teacher: nn.Module | None, methods: list, weights: list,
                 channels_last: bool, amp: bool):
        super().__init__()
        self.student, self.methods = student, nn.ModuleList(methods)
        self.__dict__["teacher"] = teacher                    # not a submodule
        self.cell, self.weights, self.channels_last, self.amp = cell, weights, channels_last, amp
        self.stages = []
        for m in methods:
            for s in m.stages():                  # stages() may build new Stage objects: call it once
                s.kinds = m.kinds()
                self.stages.append(s)
        # per phase (None: the main stage): the student's and teacher's kinds, and whether the teacher runs
        main = [m for m, w in zip(methods, weights) if w]
        self.phase = {None: (*kinds_of(main), teacher is not None and any(m.needs_teacher for m in main))}
        for s in self.stages:
            self.phase[id(s)] = ((s.kinds[0],) if s.student_forward else (), (s.kinds[1],), teacher is not None)

    @classmethod
    def build(cls, spec, teacher, data, num_classes: int, device, channels_last: bool) -> "Distiller":
        """Student (seed `spec.seed`), methods (seed + 1) sized from a probe batch of `data`."""
        import kd.methods  # noqa: F401
        from kd.registry import METHODS
        torch.manual_seed(spec.seed)
        student = dist.prepare_student(build_model(spec.cell.student, num_classes).to(device), spec.recipe.sync_bn)
        terms = [dict(t) for t in spec.cell.terms]
        classes = [METHODS.get(t.pop("name")) for t in terms]
        weights = [float(t.pop("weight")) for t in terms]
        if teacher is None and any(c.needs_teacher for c in classes):
            raise KDError(f"{spec.id}: a method needs a teacher but the cell has none")
        probe = data.probe(2)
        ctx = _context(spec, student, teacher, classes, probe, num_classes, data.num_train, device)
        torch.manual_seed(spec.seed + 1)
        try:
            methods = [c(ctx, **hp).to(device) for c, hp in zip(classes, terms)]
        except TypeError as e:
            raise KDError(f"{spec.id}: bad method hyperparameter: {e}") from None
        d = cls(spec.cell, student, teacher, methods, weights, channels_last, spec.recipe.amp)
        if channels_last:
            student.to(memory_format=torch.channels_last)
            d.methods.to(memory_format=torch.channels_last)
        return d

    def teacher_forward(self, x, kinds: Kinds) -> tuple[dict, torch.Tensor]:
        """The frozen teacher on a batch, in the run's memory format and precision: features of each
        kind, logits. Runs outside the compiled step, once per batch for a whole group."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return features(self.teacher, x, kinds, "t")

    def batch(self, stage: Stage | None, x, y, idx, epoch, t_out=None) -> Step:
        """The student's outputs on a batch (the kinds this phase reads) beside the teacher's `t_out`
        ((features by kind, logits), or None when the phase does not read the teacher)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        s_kinds, t_kinds, _ = self.phase[None if stage is None else id(stage)]
        by, s_logits, t_logits = {}, None, None
        if stage is None or stage.student_forward:
            by, s_logits = features(self.student, x, s_kinds, "s")
        if t_out is not None:
            t_by, t_logits = t_out
            by.update({k: v for k, v in t_by.items() if k[1] in t_kinds})
        return Step(x, y, idx, s_logits, by.get(("s", s_kinds[0]), []) if s_kinds else [],
                    t_logits, by.get(("t", t_kinds[0]), []) if t_kinds else [], epoch, self.student, self.teacher, by)

    def loss(self, stage: Stage | None, x, y, idx, epoch, t_out) -> torch.Tensor:
        """The cell's loss on one batch, the student's forward included. No host synchronisation."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            step = self.batch(stage, x, y, idx, epoch, t_out)
            if stage is not None:
                return stage.loss(step.select(stage.kinds))
            loss = self.cell.ce_weight * F.cross_entropy(step.s_logits, y) if self.cell.ce_weight else 0
            for m, w in zip(self.methods, self.weights):
                if w:
                    out = m(step.select(m.kinds()))
                    loss = loss + w * (sum(out.values()) if isinstance(out, dict) else out)
            return loss

    def reads_teacher(self, stage: Stage | None) -> Kinds | None:
        """The teacher's feature kinds this phase reads, or None when it does not run the teacher."""
        _, t_kinds, use = self.phase[None if stage is None else id(stage)]
        return t_kinds if use else None

    def make_step(self, stage: Stage | None, opt: torch.optim.Optimizer, execution):
        """step(x, y, idx, epoch_tensor, t_out) -> detached loss: forward, loss, backward, optimizer step,
        run as the execution mode says (the compiled modes compile the loss and the update). In graph
        mode the first step of a phase runs eagerly, so the optimizer's state (momentum buffers) is
        created outside the CUDA graphs' private memory pool; an eager step is exact."""
        eager = (functools.partial(self.loss, stage), opt.step)
        compiled = (execution.wrap(eager[0]), execution.wrap(eager[1]))
        first = [execution.mode == "graph"]

        def step(x, y, idx, epoch, t_out):
            loss_fn, update = eager if first[0] else compiled
            first[0] = False
            execution.mark_step()                          # one CUDA-graph generation per step
            loss = loss_fn(x, y, idx, epoch, t_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            update()
            return loss.detach()
        return step

    def train_mode(self, stage: Stage | None):
        """Student and method modules in train mode, or for a stage with `train_modules` only those."""
        train_all = stage is None or stage.train_modules is None
        self.student.train(train_all)
        self.methods.train(train_all)
        if not train_all:
            for m in stage.train_modules:
                m.train()

    @torch.no_grad()
    def evaluation(self, data, fidelity: bool = False) -> Evaluation:
        """Top-1/top-5 and the predictions on the test set; with `fidelity` (and a teacher), the
        teacher's predictions, agreement and KL on the same batches (module docstring)."""
        self.student.eval()
        self.methods.eval()
        teacher = self.teacher if fidelity else None
        c1 = c5 = agree = kl = 0
        preds, labels, t_preds = [], [], []
        for x, y in data.test_batches(256):        # 64-256 is fastest per image on CPU; BN in eval: same numbers
            x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
            logits = next((out for m in self.methods if (out := m.eval_logits(x, self.student)) is not None), None)
            logits = (self.student(x) if logits is None else logits).float()
            top = top_indices(logits)
            a1, a5 = accuracy(logits, y, top=top)
            c1, c5 = c1 + a1, c5 + a5
            preds.append(top[:, 0])
            labels.append(y)
            if teacher is not None:
                t_logits = teacher(x).float()
                t_top = top_indices(t_logits, (1,))[:, 0]
                t_preds.append(t_top)
                agree = agree + (t_top == top[:, 0]).sum()
                kl = kl + F.kl_div(F.log_softmax(logits, 1), F.log_softmax(t_logits, 1), reduction="sum", log_target=True)
        n = data.num_test
        e = Evaluation(100.0 * float(c1) / n, 100.0 * float(c5) / n, torch.cat(preds).cpu(), torch.cat(labels).cpu())
        if teacher is not None:
            e.teacher_pred, e.agreement, e.kl = torch.cat(t_preds).cpu(), 100.0 * float(agree) / n, float(kl) / n
        return e


def _context(spec, student, teacher, classes, probe, num_classes: int, num_train: int, device) -> Context:
    """The shapes every method is built from: one no-grad forward of a probe batch per network and kind."""
    s_kinds, t_kinds = kinds_of(classes)
    with torch.no_grad():
        student.eval()
        s_by = features(student, probe, s_kinds or (False,), "s")[0]
        t_by = features(teacher, probe, t_kinds or (False,), "t")[0] if teacher is not None else {}
    s_feats, t_feats = next(iter(s_by.values())), next(iter(t_by.values()), [])
    if any([f.shape for f in v] != [f.shape for f in s_feats] for v in s_by.values()) or \
            any([f.shape for f in v] != [f.shape for f in t_feats] for v in t_by.values()):
        raise KDError(f"{spec.id}: plain and pre-ReLU features differ in shape")
    steps = math.ceil(num_train / spec.recipe.batch_size)
    return Context(student, teacher, [f.shape for f in s_feats], [f.shape for f in t_feats], num_classes,
                   num_train, spec.recipe.epochs, steps, tuple(probe.shape[1:]), device)
