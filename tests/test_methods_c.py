"""Hand-computed and reference checks for REMD, IPOT (OT feature KD), DML and ONE (online KD)."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

import kd.methods  # noqa: F401
from kd.errors import KDError
from kd.methods.contract import Step
from kd.methods.dml import DML
from kd.methods.ipot import IPOT, cosine_cost, ipot_plan
from kd.methods.one import ONE
from kd.methods.remd import REMD, remd_cost
from kd.registry import MODELS
from test_methods_common import context, make_pair, step


def test_cosine_cost_by_hand():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    r = 1 - 1 / math.sqrt(2)
    assert torch.allclose(cosine_cost(x, y), torch.tensor([[1.0, 0.0], [r, r]]), atol=1e-6)
    # per-sample flattening of maps: (b, C, H, W) -> (b, C*H*W)
    assert torch.allclose(cosine_cost(x.view(2, 2, 1, 1), y.view(2, 1, 2, 1)), cosine_cost(x, y))


def test_remd_by_hand():
    C = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.3, 0.4], [0.7, 0.05, 0.6]])
    # row minima 0.1 + 0.2 + 0.05 = 0.35, column minima 0.1 + 0.05 + 0.4 = 0.55; max / b
    assert remd_cost(C).item() == pytest.approx(0.55 / 3, abs=1e-7)
    assert remd_cost(C.t()).item() == pytest.approx(0.55 / 3, abs=1e-7)


@pytest.mark.parametrize("b", [4, 8])
@pytest.mark.parametrize("seed", range(5))
def test_ipot_reaches_exact_ot(b, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, 300, generator=g).relu(), torch.randn(b, 300, generator=g).relu()
    for C in (cosine_cost(x, y), 2 * torch.rand(b, b, generator=g)):
        T = ipot_plan(C)
        assert torch.allclose(T.sum(0), torch.full((b,), 1 / b), atol=1e-5)   # column marginals
        exact = ot.emd2(np.full(b, 1 / b), np.full(b, 1 / b), C.double().numpy())
        assert (T * C).sum().item() == pytest.approx(exact, rel=1e-3)


def test_ipot_batched_over_layers_and_identity_plan():
    C = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ipot_plan(C), torch.stack([ipot_plan(c) for c in C]), atol=1e-6)
    C = 1 - torch.eye(5)                                        # zero cost on the diagonal only
    assert torch.allclose(ipot_plan(C), torch.eye(5) / 5, atol=1e-5)


def ot_step(feats_s, feats_t):
    return Step(None, None, None, None, feats_s, None, feats_t, 0)


@pytest.mark.parametrize("cls", [IPOT, REMD])
def test_ot_loss_zero_for_identical_features(cls):
    s, _ = make_pair()
    m = cls(context(s, s))                                      # same network: no projectors
    assert len(m.proj) == 0 and m.layers == [1, 2, 3]
    feats, _ = s.extract(torch.randn(8, 3, 16, 16))
    assert m(ot_step(feats, feats)).item() == pytest.approx(0.0, abs=1e-4)
    other, _ = s.extract(torch.randn(8, 3, 16, 16))
    assert m(ot_step(feats, other)).item() > 1e-3


def test_ot_projector_and_pooling_for_mismatched_shapes():
    s, t = make_pair()                                          # tiny_s widths 8/16/16, tiny_t 16/32/64
    m = IPOT(context(s, t))
    assert set(m.proj) == {"1", "2", "3"}
    # a ShuffleV2-like student: half the teacher's spatial size and other widths
    fs = [torch.randn(4, 3, 8, 8), torch.randn(4, 12, 8, 8), torch.randn(4, 6)]
    ft = [torch.randn(4, 3, 8, 8), torch.randn(4, 5, 16, 16), torch.randn(4, 6)]
    ctx = context(s, t)
    ctx.s_shapes, ctx.t_shapes = [f.shape for f in fs], [f.shape for f in ft]
    m = IPOT(ctx)
    C = m.costs(ot_step(fs, ft))
    y = F.adaptive_avg_pool2d(ft[1], 8)                         # teacher pooled to 8x8
    assert torch.allclose(C[0], cosine_cost(m.proj["1"](fs[1]), y), atol=1e-6)
    with pytest.raises(KDError):
        IPOT(ctx, layers=[5])


def test_dml_peer_gets_gradients_and_kl_zero_for_equal_peer():
    s, t = make_pair()
    m = DML(context(s, t), peers=2)
    assert all(not torch.equal(a, b) for a, b in zip(s.parameters(), m.peers[0].parameters()) if a.numel() > 1 and a.std() > 0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    out = m(step(s, t, m, x, y, torch.arange(8)))
    sum(out.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.peers.parameters())
    # the student's term: mean over the two peers of KL(p_peer || p_student)
    zs, z1, z2 = s(x), m.peers[0](x), m.peers[1](x)
    kl = lambda a, b: F.kl_div(F.log_softmax(a, 1), F.softmax(b, 1), reduction="batchmean")  # noqa: E731
    assert out["kl"].item() == pytest.approx(((kl(zs, z1) + kl(zs, z2)) / 2).item(), rel=1e-4)
    m = DML(context(s, t))
    m.peers[0].load_state_dict(s.state_dict())
    out = m(step(s, t, m, x, y, torch.arange(8)))
    assert out["kl"].item() == pytest.approx(0.0, abs=1e-6) and out["peer_kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["peer_ce"].item() == pytest.approx(F.cross_entropy(s(x), y).item(), rel=1e-5)


@pytest.mark.parametrize("arch", ["tiny_s", "resnet8", "wrn_10_2"])
def test_one_branches_gate_ensemble(arch):
    torch.manual_seed(0)
    s = MODELS[arch](num_classes=10)
    m = ONE(context(s, None), gate_bn=(arch != "wrn_10_2")).to("cpu")   # .to(): no clash with Module internals
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    s.train(), m.train()
    feats, logits = s.extract(x)
    z, g, ens = m.ensemble(feats[-3], logits)
    assert z.shape == (3, 8, 10) and torch.allclose(g.sum(1), torch.ones(8), atol=1e-6)
    assert torch.allclose(ens, sum(g[:, i:i + 1] * z[i] for i in range(3)), atol=1e-5)
    out = m(Step(x, y, torch.arange(8), logits, feats, None, [], 100, s, None))
    assert all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    # the accessor reproduces the student's own head: a branch with the student's weights = branch 0
    s.eval(), m.eval()
    names = list(m.branches[0].keys())
    for n in names:
        m.branches[0][n].load_state_dict(getattr(s, n).state_dict())
    feats, logits = s.extract(x)
    assert torch.allclose(m.ensemble(feats[-3], logits)[0][1], logits, atol=1e-5)
    assert m.eval_logits(x, s) is None
    m.eval_what = "ensemble"
    assert torch.allclose(m.eval_logits(x, s), m.ensemble(feats[-3], logits)[2], atol=1e-5)
    m.train()
    stats = [b.clone() for b in m.buffers()]
    m.eval_logits(x, s)                                         # eval mode inside, mode restored after
    assert m.training and all(torch.equal(a, b) for a, b in zip(stats, m.buffers()))


def test_one_kl_term_and_rampup_by_hand():
    s, t = make_pair()
    m = ONE(context(s, t), rampup_epochs=80)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    st = step(s, t, m, x, y, torch.arange(8), epoch=40)
    z, _, ens = m.ensemble(st.s_feats[-3], st.s_logits)
    pe = F.softmax(ens / 3, 1)
    kl = sum((pe * (pe.log() - F.log_softmax(zi / 3, 1))).sum(1).mean() * 9 for zi in z)
    assert m(st)["kl"].item() == pytest.approx(math.exp(-5 * 0.5 ** 2) * kl.item(), rel=1e-4)


def test_one_unsupported_architecture():
    s = MODELS["vgg8"](num_classes=10)
    with pytest.raises(KDError, match="one: no branch accessor"):
        ONE(context(s, None))


@pytest.mark.parametrize("name,hp", [("dml", {}), ("one", {"eval": "ensemble"})])
def test_online_methods_run_in_the_loop_without_teacher(name, hp, data_root, isolated):
    from kd.catalog.cells import Cell
    from kd.engine import run_cell
    cell = Cell("cifar100", name, "tiny_s", None, "crd", terms=({"name": name, "weight": 1.0, **hp},))
    rec = run_cell(cell, 0, device="cpu", overrides={"epochs": 1, "batch_size": 32}, data_root=data_root,
                   progress=False, log=lambda *a: None)
    assert rec["status"] == "ok" and math.isfinite(rec["curve"][0]["train_loss"])
