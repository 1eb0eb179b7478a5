"""Hand-computed and behaviour tests for FT, AB, VID, OFD, ReviewKD, SRRL, SRD and CRD."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kd.methods  # noqa: F401
import kd.models  # noqa: F401
from kd.methods.ab import ab_layer_loss
from kd.methods.contract import Context, Step
from kd.methods.crd import nce_loss
from kd.methods.ft import factor_loss
from kd.methods.ofd import bn_margin, ofd_distance
from kd.methods.reviewkd import hcl_loss
from kd.registry import METHODS, MODELS


def pair(student="tiny_s", teacher="tiny_t", num_classes=10):
    torch.manual_seed(0)
    s, t = MODELS[student](num_classes=num_classes), MODELS[teacher](num_classes=num_classes)
    t.eval().requires_grad_(False)
    return s, t


def ctx_for(s, t, preact=False, hw=16, n=64):
    with torch.no_grad():
        s.eval()
        sf, _ = s.extract(torch.randn(2, 3, hw, hw), preact=preact)
        tf, _ = t.extract(torch.randn(2, 3, hw, hw), preact=preact)
    s.train()
    return Context(s, t, [f.shape for f in sf], [f.shape for f in tf], 10, n, 10, 4, (3, hw, hw))


def make_step(s, t, preact=False, b=8, hw=16, epoch=0, seed=1, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, hw, hw, generator=g)
    y, idx = torch.randint(0, 10, (b,), generator=g), torch.randperm(n, generator=g)[:b]
    sf, sl = s.extract(x, preact=preact)
    with torch.no_grad():
        tf, tl = t.extract(x, preact=preact)
    return Step(x, y, idx, sl, sf, tl, tf, epoch, s, t)


def manual_factor(f):
    a = (f ** 2).mean(1).reshape(f.shape[0], -1)
    return a / a.norm(dim=1, keepdim=True)


def test_ft_factor_loss_hand():
    g = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 5, 2, 2, generator=g)
    want = (manual_factor(f_s) - manual_factor(f_t)).abs().mean()
    assert torch.allclose(factor_loss(f_s, f_t), want)
    big = torch.randn(2, 3, 4, 4, generator=g)                        # 4x4 student pooled to 2x2
    pooled = big.reshape(2, 3, 2, 2, 2, 2).mean((3, 5))
    assert torch.allclose(factor_loss(big, f_t), (manual_factor(pooled) - manual_factor(f_t)).abs().mean())


def test_ft_stage_trains_only_paraphraser():
    s, t = pair()
    m = METHODS["ft"](ctx_for(s, t))
    (stage,) = m.stages()
    assert stage.epochs == 30 and stage.lr == 0.01
    para = {id(p) for p in list(m.encoder.parameters()) + list(m.decoder.parameters())}
    assert {id(p) for p in stage.params} == para
    everything = list(s.parameters()) + list(m.parameters())
    before = [p.detach().clone() for p in everything]
    stage.loss(make_step(s, t)).backward()
    with torch.no_grad():                                             # one plain SGD step on everything
        for p in everything:
            if p.grad is not None:
                p -= 0.1 * p.grad
                p.grad = None
    for p, b in zip(everything, before):
        assert torch.equal(p, b) != (id(p) in para), "the FT stage must change the paraphraser only"
    # main training: the translator learns, the paraphraser stays frozen
    m(make_step(s, t)).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.translator.parameters())


def test_ab_layer_loss_hand():
    s = torch.tensor([-2.0, -0.5, 0.5, 2.0, 0.5, -0.5])
    t = torch.tensor([-1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    # 0 + (−0.5+1)² + (0.5−1)² + 0 + (0.5+1)² + (−0.5−1)²
    assert torch.allclose(ab_layer_loss(s, t, 1.0), torch.tensor(5.0))


def test_ab_weights_and_stage_params():
    s, t = pair("tiny_t", "tiny_t")                                   # equal shapes: identity connectors
    m = METHODS["ab"](ctx_for(s, t, preact=True))
    st = make_step(s, t, preact=True)
    want = sum(w * ab_layer_loss(st.s_feats[i], st.t_feats[i], 1.0) / 8 * 3 / 1000
               for w, i in zip([0.25, 0.5, 1.0], [1, 2, 3]))
    assert torch.allclose(m(st), want)
    s, t = pair()
    m = METHODS["ab"](ctx_for(s, t, preact=True))
    (stage,) = m.stages()
    want_ids = {id(p) for p in list(m.connectors.parameters()) + list(s.get_feat_modules().parameters())}
    assert stage.epochs == 30 and {id(p) for p in stage.params} == want_ids
    assert len(list(m.connectors.parameters())) > 0
    stage.loss(make_step(s, t, preact=True)).backward()
    assert all(p.grad is not None for p in stage.params)
    assert s.fc.weight.grad is None


def test_vid_hand():
    s, t = pair()
    m = METHODS["vid"](ctx_for(s, t))
    layer = m.vid[0]
    var = F.softplus(layer.log_scale) + 1e-5
    assert torch.allclose(var, torch.full_like(var, 5.0))
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 16, 2, 2, generator=g)
    mean = layer.regressor(fs.reshape(2, 8, 2, 2, 2, 2).mean((3, 5)))
    want = (0.5 * ((mean - ft) ** 2 / var.view(1, -1, 1, 1) + var.log().view(1, -1, 1, 1))).mean()
    assert torch.allclose(layer(fs, ft), want)


def test_ofd_margin_and_distance_hand():
    bn = torch.nn.BatchNorm2d(3)
    bn.weight.data, bn.bias.data = torch.tensor([1.0, -2.0, 1.0]), torch.tensor([0.5, -1.0, 5.0])
    want = []
    for sd, mu in ((1.0, 0.5), (2.0, -1.0), (1.0, 5.0)):
        c = 0.5 * math.erfc(mu / sd / math.sqrt(2))                   # Phi(-mu / sd)
        want.append(-sd * math.exp(-(mu / sd) ** 2 / 2) / math.sqrt(2 * math.pi) / c + mu if c > 1e-3 else -3 * sd)
    assert torch.allclose(bn_margin(bn), torch.tensor(want, dtype=torch.float32), atol=1e-6)
    assert want[2] == -3.0
    s = torch.tensor([[0.0, -1.0, 0.3], [-0.4, 0.0, 1.0]]).view(2, 1, 1, 3)
    t = torch.tensor([[-1.0, -1.0, -0.2], [-0.2, 0.5, 0.5]]).view(2, 1, 1, 3)
    # per element 0.25, 0, 0.25 | 0, 0.25, 0.25 -> mean over batch, sum over the rest
    assert torch.allclose(ofd_distance(s, t, torch.tensor(-0.5).view(1, 1, 1, 1)), torch.tensor(0.5))


def test_reviewkd_hcl_hand_and_warmup():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    p2 = lambda f: f.reshape(2, 3, 2, 2, 2, 2).mean((3, 5))          # noqa: E731
    want = (F.mse_loss(fs, ft) + 0.5 * F.mse_loss(p2(fs), p2(ft))
            + 0.25 * F.mse_loss(fs.mean((2, 3)), ft.mean((2, 3)))) / 1.75
    assert torch.allclose(hcl_loss([fs], [ft]), want)
    s, t = pair()
    m = METHODS["reviewkd"](ctx_for(s, t, preact=True)).eval()
    s.eval()
    first = m(make_step(s, t, preact=True, epoch=0))
    late = m(make_step(s, t, preact=True, epoch=30))
    assert torch.allclose(first * 20, late)


@pytest.mark.parametrize("student,teacher,hw", [("tiny_s", "tiny_t", 16), ("resnet8x4", "resnet32x4", 32)])
@pytest.mark.parametrize("name", ["reviewkd", "ofd"])
def test_reviewkd_ofd_shapes(name, student, teacher, hw):
    s, t = pair(student, teacher, num_classes=100)
    m = METHODS[name](ctx_for(s, t, preact=True, hw=hw))
    loss = m(make_step(s, t, preact=True, b=2, hw=hw, epoch=25))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_srrl_gradient_through_frozen_teacher_head():
    s, t = pair()
    m = METHODS["srrl"](ctx_for(s, t))
    st = make_step(s, t)
    out = m(st)
    conn = m.connector(st.s_feats[-2])
    assert torch.allclose(out["sr"], F.mse_loss(t.head(conn), st.t_logits))
    want_fm = ((conn.mean((2, 3)) - st.t_feats[-2].mean((2, 3))) ** 2).mean()
    assert torch.allclose(out["fm"], want_fm)
    out["sr"].backward()                                              # the SR term alone
    assert m.connector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in t.parameters()) and not any(p.requires_grad for p in t.parameters())
    m_ce = METHODS["srrl"](ctx_for(s, t), sr_loss="ce", sr_weight=2.0)
    st = make_step(s, t)
    z = t.head(m_ce.connector(st.s_feats[-2]))
    want = -2.0 * (F.softmax(st.t_logits, 1) * F.log_softmax(z, 1)).sum(1).mean()
    assert torch.allclose(m_ce(st)["sr"], want)


def test_srd_hand_and_projector_gradient():
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(4, 3, generator=g, requires_grad=True)
    f_t = torch.randn(4, 5, generator=g)
    ctx = Context(None, None, [f_s.shape], [f_t.shape], 10, 64, 10, 4, (3, 8, 8))
    m = METHODS["srd"](ctx)
    st = Step(None, None, None, torch.zeros(4, 10), [f_s], torch.zeros(4, 10), [f_t], 0)
    loss = m(st)
    bn = lambda x: (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-4)  # noqa: E731
    z = f_s @ m.projector.weight.T + m.projector.bias
    assert torch.allclose(loss, torch.log(((bn(z) - bn(f_t)).abs() ** 4).sum()), atol=1e-6)
    loss.backward()
    assert m.projector.weight.grad.abs().sum() > 0 and m.projector.bias.grad is not None


def test_crd_memory_momentum_update_batch_rows_only():
    s, t = pair()
    m = METHODS["crd"](ctx_for(s, t, n=20))
    assert m.k == 19                                                  # nce_k capped at N - 1
    st = make_step(s, t, b=2)
    st.index = torch.tensor([3, 7])
    old_s, old_t = m.memory_s.clone(), m.memory_t.clone()
    m(st)
    v_s = F.normalize(m.embed_s(st.s_feats[-1]), dim=1).detach()
    want = 0.5 * old_s[[3, 7]] + 0.5 * v_s
    assert torch.allclose(m.memory_s[[3, 7]], want / want.norm(dim=1, keepdim=True), atol=1e-6)
    rest = torch.ones(20, dtype=torch.bool)
    rest[[3, 7]] = False
    assert torch.equal(m.memory_s[rest], old_s[rest]) and torch.equal(m.memory_t[rest], old_t[rest])
    assert not torch.equal(m.memory_t[[3, 7]], old_t[[3, 7]])
    z = m.z.clone()
    assert (z > 0).all()
    m(make_step(s, t, b=2, seed=5, n=20))
    assert torch.equal(m.z, z)                                        # Z fixed after the first batch


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_crd_negatives(device):
    s, t = pair()
    m = METHODS["crd"](ctx_for(s, t, n=50), nce_k=30).to(device)
    labels = torch.arange(50, device=device) % 5                      # 10 per class, 40 others
    m.labels.copy_(labels)
    index = torch.tensor([0, 7, 13, 49], device=device)
    idx = m.sample(index, labels[index])
    assert idx.shape == (4, 31) and idx.device == index.device
    assert torch.equal(idx[:, 0], index)
    neg = idx[:, 1:]
    assert not (neg == index[:, None]).any()
    assert (labels[neg] != labels[index][:, None]).all()              # other classes only
    assert all(len(set(r.tolist())) == 30 for r in neg)               # without replacement
    m.labels.fill_(-1)                                                # unseen labels: still never the positive
    for _ in range(5):
        assert not (m.sample(index, labels[index])[:, 1:] == index[:, None]).any()


def test_crd_nce_hand():
    x = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.05, 0.4]])
    mpn = 2 / 10
    want = -(sum(math.log(p / (p + mpn + 1e-7)) for p in (0.5, 0.3))
             + sum(math.log(mpn / (q + mpn + 1e-7)) for q in (0.1, 0.2, 0.05, 0.4))) / 2
    assert torch.allclose(nce_loss(x, 10), torch.tensor(want))
