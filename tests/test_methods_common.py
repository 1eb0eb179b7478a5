"""Registry-parametrized checks every method must pass: a tiny teacher/student pair trains a few
steps on random data with a finite loss, and every trainable part the method owns gets gradients
(memory banks: their buffers change); declared stages run and train their parameters."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import kd.methods  # noqa: F401
import kd.models  # noqa: F401
from kd.methods.contract import Context, Step
from kd.registry import METHODS, MODELS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from regen_golden import tiny_teacher  # noqa: E402


def make_pair(student="tiny_s", teacher="tiny_t", num_classes=10, hw=16):
    torch.manual_seed(0)
    s, t = MODELS[student](num_classes=num_classes), MODELS[teacher](num_classes=num_classes)
    t.eval().requires_grad_(False)
    return s, t


def context(s, t, kinds=(False, False), num_classes=10, hw=16, n=64):
    x = torch.randn(2, 3, hw, hw)
    with torch.no_grad():
        s.eval()
        sf, _ = s.extract(x, preact=kinds[0])
        tf, _ = t.extract(x, preact=kinds[1]) if t is not None else ([], None)
    return Context(s, t, [f.shape for f in sf], [f.shape for f in tf], num_classes, n, 10, 4, (3, hw, hw))


def step(s, t, method, x, y, idx, epoch=0):
    s_pre, t_pre = method.kinds()
    sf, sl = s.extract(x, preact=s_pre)
    with torch.no_grad():
        tf, tl = t.extract(x, preact=t_pre)
    return Step(x, y, idx, sl, sf, tl, tf, epoch, s, t)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains(name):
    s, t = make_pair(teacher=tiny_teacher(name))
    cls = METHODS[name]
    m = cls(context(s, t, cls.kinds()))
    s.train(), m.train()
    params = [p for p in list(s.parameters()) + list(m.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    buffers0 = {k: v.clone() for k, v in m.named_buffers()}
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        x = torch.randn(8, 3, 16, 16, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        idx = torch.randint(0, 64, (8,), generator=g)
        out = m(step(s, t, m, x, y, idx, epoch=i))
        loss = sum(out.values()) if isinstance(out, dict) else out
        assert loss.dim() == 0 and torch.isfinite(loss), f"{name}: loss {loss}"
        opt.zero_grad()
        loss.backward()
        if i == 0:
            staged = {id(p) for st in m.stages() for p in st.params}   # stage-trained (FT's paraphraser is
            for pn, p in m.named_parameters():                           # then frozen): test_method_stages
                if p.requires_grad and not (id(p) in staged and p.grad is None):
                    assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pn}"
        opt.step()
    for k, v in m.named_buffers():
        if "bank" in k or "memory" in k:
            assert not torch.equal(v, buffers0[k]), f"{name}: memory buffer {k} never updated"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_stages(name):
    s, t = make_pair(teacher=tiny_teacher(name))
    cls = METHODS[name]
    m = cls(context(s, t, cls.kinds()))
    for stage in m.stages():
        assert stage.epochs >= 1 and stage.params, f"{name}: stage {stage.name} trains nothing"
        before = [p.detach().clone() for p in stage.params]
        opt = torch.optim.SGD(stage.params, lr=0.01)
        x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
        loss = stage.loss(step(s, t, m, x, y, torch.arange(8)))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert any(not torch.equal(a, b) for a, b in zip(before, stage.params)), f"{name}: stage {stage.name} changed nothing"
