"""Runs built by hand for tests that look inside the loop: a member with a teacher module of the test's
choosing (kd.engine.build.member), one epoch with the test's own optimizer."""
from __future__ import annotations

import torch

from kd.catalog.spec import RunSpec
from kd.engine import build, loop
from kd.engine.env import Env
from kd.engine.teacher import freeze, teacher_mode

CPU = torch.device("cpu")


def member(cell, recipe, data_root, teacher=None, *, seed=0, device=CPU, execution=None, store=None, results=None):
    """A built member (kd.engine.member.Member) of (cell, recipe, seed); `teacher` frozen here in the cell's mode
    unless the caller froze it."""
    env = Env(data_root, store, results, device, execution,
              progress=False, log=lambda *a, **k: None).resolved(device)
    mode = teacher_mode(cell)                         # refuses methods that want different modes
    if teacher is not None and not hasattr(teacher, "kd_teacher_mode"):
        freeze(teacher, mode)
    if teacher is not None and env.execution.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return build.member(RunSpec(cell, recipe, seed), env, teacher=teacher)


def one_epoch(m, stage, opt, gen: torch.Generator, epoch: int = 0):
    """One epoch of member `m` in `stage` (None: main) with optimizer `opt`, the loop's own step."""
    m.d.train_mode(stage)
    step = m.d.make_step(stage, opt, m.execution)
    kinds = m.d.reads_teacher(stage)
    epoch_t = torch.full((), float(epoch), device=m.device)
    for idx, x, y in m.data.train_batches(m.spec.recipe.batch_size, gen):
        step(x, y, idx, epoch_t, m.teacher_forward(x, kinds) if kinds is not None else None)


def train(m) -> dict:
    """Train a built member alone, as the loop does; its record."""
    records, errors = loop.train([m])
    assert not errors, errors
    return records[0]


def forward(m, x, y, stage=None, idx=None, epoch=0):
    """The Step the loop would hand the methods for this batch (teacher included where the phase reads it)."""
    kinds = m.d.reads_teacher(stage)
    return m.d.batch(stage, x, y, idx, epoch, m.teacher_forward(x, kinds) if kinds is not None else None)


class View:
    """A built member seen as the tests look at a run: its modules, one batch, one epoch."""

    def __init__(self, m):
        self.m, self.d, self.data, self.ds, self.device = m, m.d, m.data, m.ds, m.device
        self.student, self.teacher, self.methods, self.stages = m.d.student, m.d.teacher, list(m.d.methods), m.d.stages
        self.method_modules, self.execution, self.teacher_mode = m.d.methods, m.execution, m.teacher_mode

    def _forward(self, x, y, idx, epoch, stage=None):
        return forward(self.m, x, y, stage, idx, epoch)

    def _optimizer(self, params, lr):
        from kd.engine.optim import optimizer
        return optimizer(self.m.spec.recipe, params, lr)

    def make_step(self, stage, opt):
        return self.d.make_step(stage, opt, self.m.execution)

    def _epoch(self, stage, f, gen, epoch) -> float:
        """One epoch with the step `f` of make_step; the mean batch loss."""
        self.d.train_mode(stage)
        kinds, total, n = self.d.reads_teacher(stage), torch.zeros(()), 0
        epoch_t = torch.full((), float(epoch), device=self.device)
        for idx, x, y in self.data.train_batches(self.m.spec.recipe.batch_size, gen):
            total, n = total + f(x, y, idx, epoch_t, self.m.teacher_forward(x, kinds) if kinds is not None else None).cpu(), n + 1
        return total.item() / n

    def train(self) -> dict:
        return train(self.m)
