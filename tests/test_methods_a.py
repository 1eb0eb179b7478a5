"""Hand-computed checks for dkd, bss, fitnet, at, fsp, nst, sp, pkt, cc, rkd (and kd's loss).

Each reference value is computed independently with numpy and explicit loops, not with the code
under test, so a change of formula, reduction or normalisation fails here."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import kd.methods  # noqa: F401
import kd.models  # noqa: F401
from kd.errors import KDError
from kd.methods.at import at_loss
from kd.methods.contract import Context, Step
from kd.methods.dkd import dkd_terms
from kd.methods.fitnet import ConvReg
from kd.methods.fsp import fsp_loss
from kd.methods.kd import kd_loss
from kd.methods.nst import nst_loss
from kd.methods.pkt import pkt_loss
from kd.methods.rkd import rkd_angle, rkd_distance
from kd.methods.sp import sp_loss
from kd.registry import METHODS, MODELS

D = torch.float64


def rnd(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape))


def ctx_for(s, t, hw=16, epochs=10):
    x = torch.randn(2, 3, hw, hw)
    with torch.no_grad():
        s.eval()
        sf, _ = s.extract(x)
        tf, _ = t.extract(x)
    return Context(s, t, [f.shape for f in sf], [f.shape for f in tf], 10, 64, epochs, 4, (3, hw, hw))


def fake_step(s_logits=None, t_logits=None, targets=None, s_feats=(), t_feats=(), epoch=0, **kw):
    return Step(kw.get("images"), targets, None, s_logits, list(s_feats), t_logits, list(t_feats), epoch,
                kw.get("student"), kw.get("teacher"))


def np_pool2(a):          # (B, C, H, W) -> (B, C, H/2, W/2), 2x2 block means (= adaptive pool here)
    return 0.25 * (a[:, :, 0::2, 0::2] + a[:, :, 1::2, 0::2] + a[:, :, 0::2, 1::2] + a[:, :, 1::2, 1::2])


# --- KD / DKD ----------------------------------------------------------------------------------

def test_kd_zero_for_identical_logits_and_hand_2x3():
    z = rnd(4, 5)
    assert kd_loss(z, z.clone(), 4.0).abs() < 1e-12
    s, t, T = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]], 2.0
    total = 0.0
    for zs, zt in zip(s, t):
        ps = [math.exp(v / T) / sum(math.exp(u / T) for u in zs) for v in zs]
        pt = [math.exp(v / T) / sum(math.exp(u / T) for u in zt) for v in zt]
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    expected = total / 2 * T * T
    assert kd_loss(torch.tensor(s, dtype=D), torch.tensor(t, dtype=D), T).item() == pytest.approx(expected, rel=1e-12)


def test_dkd_terms_match_hand_binary_and_nontarget_kl():
    s, t, y, T = rnd(3, 5, seed=1), rnd(3, 5, seed=2) * 3, torch.tensor([0, 3, 4]), 4.0
    tckd, nckd = dkd_terms(s, t, y, T, reduction="none")
    for i in range(3):
        ps, pt = np.exp(s[i].numpy() / T), np.exp(t[i].numpy() / T)
        ps, pt = ps / ps.sum(), pt / pt.sum()
        k = y[i].item()
        bs, bt = [ps[k], 1 - ps[k]], [pt[k], 1 - pt[k]]
        tc = sum(q * math.log(q / p) for p, q in zip(bs, bt)) * T * T
        nc = sum(pt[c] / (1 - pt[k]) * math.log((pt[c] / (1 - pt[k])) / (ps[c] / (1 - ps[k])))
                 for c in range(5) if c != k) * T * T
        assert tckd[i].item() == pytest.approx(tc, rel=1e-9) and nckd[i].item() == pytest.approx(nc, rel=1e-6)
    tb, nb = dkd_terms(s, t, y, T)                                   # mdistiller: sum / batch size
    assert tb.item() == pytest.approx(tckd.sum().item() / 3) and nb.item() == pytest.approx(nckd.sum().item() / 3)


def test_kd_equals_tckd_plus_one_minus_pt_times_nckd_per_sample():
    s, t, y, T = rnd(6, 7, seed=3), rnd(6, 7, seed=4) * 2, torch.tensor([0, 1, 2, 3, 4, 6]), 4.0
    tckd, nckd = dkd_terms(s, t, y, T, reduction="none")
    p_t = torch.softmax(t / T, 1).gather(1, y[:, None]).squeeze(1)
    for i in range(6):
        kd_i = kd_loss(s[i:i + 1], t[i:i + 1], T)
        assert kd_i.item() == pytest.approx((tckd[i] + (1 - p_t[i]) * nckd[i]).item(), rel=1e-6, abs=1e-9)


def test_dkd_warmup_factor_and_weights():
    s, t, y = rnd(4, 5, seed=5), rnd(4, 5, seed=6), torch.tensor([0, 1, 2, 3])
    m = METHODS["dkd"](None, beta=6.0)
    tc, nc = dkd_terms(s, t, y, 4.0)
    full = (tc + 6.0 * nc).item()
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (100, 1.0)):
        got = m(fake_step(s, t, y, epoch=epoch)).item()
        assert got == pytest.approx(factor * full, rel=1e-6), epoch   # the factor is computed in float32, on the device


# --- feature losses against hand computations --------------------------------------------------

def test_at_equals_hand_computation_with_pooling():
    g_s = [rnd(2, 3, 4, 4, seed=7), rnd(2, 5, 2, 2, seed=8)]
    g_t = [rnd(2, 6, 2, 2, seed=9), rnd(2, 4, 2, 2, seed=10)]

    def att(f):
        out = np.zeros((f.shape[0], f.shape[2] * f.shape[3]))
        for b in range(f.shape[0]):
            a = np.array([np.mean([f[b, c, h, w] ** 2 for c in range(f.shape[1])])
                          for h in range(f.shape[2]) for w in range(f.shape[3])])
            out[b] = a / np.sqrt((a ** 2).sum())
        return out
    expected = 0.0
    for fs, ft in zip(g_s, g_t):
        fs, ft = fs.numpy(), ft.numpy()
        if fs.shape[2] > ft.shape[2]:
            fs = np_pool2(fs)
        expected += ((att(fs) - att(ft)) ** 2).mean()
    m = METHODS["at"](None)
    got = m(fake_step(s_feats=[None, *g_s, None], t_feats=[None, *g_t, None]))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    assert at_loss(g_s[1], g_s[1]).item() == 0.0


def test_fsp_equals_hand_computation_with_pooling():
    g_s = [rnd(2, 2, 4, 4, seed=11), rnd(2, 3, 4, 4, seed=12), rnd(2, 2, 2, 2, seed=13)]
    g_t = [rnd(2, 2, 4, 4, seed=14), rnd(2, 3, 4, 4, seed=15), rnd(2, 2, 2, 2, seed=16)]

    def grams(g):
        out = []
        for bot, top in zip(g[:-1], g[1:]):
            bot, top = bot.numpy(), top.numpy()
            if bot.shape[2] > top.shape[2]:
                bot = np_pool2(bot)
            G = np.zeros((bot.shape[0], top.shape[1], bot.shape[1]))
            for b in range(bot.shape[0]):
                for i in range(top.shape[1]):
                    for j in range(bot.shape[1]):
                        G[b, i, j] = np.mean(top[b, i] * bot[b, j])
            out.append(G)
        return out
    expected = sum(((a - b) ** 2).mean() for a, b in zip(grams(g_s), grams(g_t)))
    assert fsp_loss(g_s, g_t).item() == pytest.approx(expected, rel=1e-10)


def test_sp_equals_hand_computation():
    f_s, f_t = rnd(3, 2, 2, 2, seed=17), rnd(3, 4, 1, 1, seed=18)

    def gram(f):
        a = f.reshape(3, -1).numpy()
        G = np.array([[sum(a[i, k] * a[j, k] for k in range(a.shape[1])) for j in range(3)] for i in range(3)])
        return G / np.sqrt((G ** 2).sum(1, keepdims=True))
    expected = ((gram(f_t) - gram(f_s)) ** 2).sum() / 9
    m = METHODS["sp"](None)
    assert m(fake_step(s_feats=[f_s, None], t_feats=[f_t, None])).item() == pytest.approx(expected, rel=1e-10)
    assert sp_loss(f_s, f_s * 3).item() == pytest.approx(0.0, abs=1e-14)   # scale-free per row


def test_pkt_equals_hand_computation():
    f_s, f_t, eps = rnd(4, 3, seed=19), rnd(4, 5, seed=20), 1e-7

    def probs(f):
        f = f.numpy()
        f = f / (np.sqrt((f ** 2).sum(1, keepdims=True)) + eps)
        K = np.array([[(np.dot(f[i], f[j]) + 1) / 2 for j in range(4)] for i in range(4)])
        return K / K.sum(1, keepdims=True)
    ps, pt = probs(f_s), probs(f_t)
    expected = np.mean([[pt[i, j] * math.log((pt[i, j] + eps) / (ps[i, j] + eps)) for j in range(4)] for i in range(4)])
    assert pkt_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-9)
    assert METHODS["pkt"](None)(fake_step(s_feats=[f_s], t_feats=[f_t])).item() == pytest.approx(expected, rel=1e-9)


def test_nst_equals_hand_mmd():
    f_s, f_t = rnd(2, 3, 2, 2, seed=21), rnd(2, 2, 2, 2, seed=22)
    a = f_s.reshape(2, 3, 4).numpy()
    b = f_t.reshape(2, 2, 4).numpy()
    a, b = a / np.linalg.norm(a, axis=2, keepdims=True), b / np.linalg.norm(b, axis=2, keepdims=True)

    def k(x, y):
        return np.mean([[[np.dot(x[n, i], y[n, j]) ** 2 for j in range(y.shape[1])] for i in range(x.shape[1])]
                        for n in range(2)])
    assert nst_loss(f_s, f_t).item() == pytest.approx(k(b, b) + k(a, a) - 2 * k(a, b), rel=1e-10)


def test_cc_equals_hand_computation():
    s, t = make_pair()
    m = METHODS["cc"](ctx_for(s, t))
    f_s, f_t = torch.randn(5, 16), torch.randn(5, 64)
    e_s, e_t = m.embed_s(f_s).detach().numpy(), m.embed_t(f_t).detach().numpy()
    assert e_s.shape == (5, 128)
    d = np.abs(e_s - e_t)
    expected = np.mean([sum(d[i, c] * d[i + 1, c] for c in range(128)) for i in range(4)])
    got = m(fake_step(s_feats=[f_s], t_feats=[f_t]))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_rkd_scale_invariance_and_presets():
    s, t = rnd(6, 4, seed=23), rnd(6, 8, seed=24)
    for c in (0.01, 3.0, 250.0):
        assert rkd_distance(s * c, t * c).item() == pytest.approx(rkd_distance(s, t).item(), rel=1e-9)
        assert rkd_angle(s * c, t * c).item() == pytest.approx(rkd_angle(s, t).item(), rel=1e-9)
    assert rkd_distance(s, s * 7).item() == pytest.approx(0.0, abs=1e-12)
    step = fake_step(s_feats=[s], t_feats=[t])
    d, a = rkd_distance(s, t).item(), rkd_angle(s, t).item()
    assert METHODS["rkd_d"](None)(step).item() == pytest.approx(25 * d)
    assert METHODS["rkd_a"](None)(step).item() == pytest.approx(50 * a)
    for name in ("rkd", "rkd_da"):
        assert METHODS[name](None)(step).item() == pytest.approx(25 * d + 50 * a)
    # hand distance loss on 3 points: pair distances normalised by their mean, Huber over the 3x3 matrix
    e_s = torch.tensor([[0.0], [1.0], [2.0]], dtype=D)                     # distances 1, 2, 1
    e_t = torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]], dtype=D)      # distances 2, 2*sqrt2, 2
    dt = np.array([2, 2 * math.sqrt(2), 2]) / ((4 + 2 * math.sqrt(2)) / 3)
    ds = np.array([1, 2, 1]) / (4 / 3)            # pairs (0,1), (0,2), (1,2)
    hub = sum(0.5 * x * x if abs(x) < 1 else abs(x) - 0.5 for x in ds - dt) * 2 / 9
    assert rkd_distance(e_s, e_t).item() == pytest.approx(hub, rel=1e-9)


# --- methods with trainable parts and stages ---------------------------------------------------

def make_pair(student="tiny_s", teacher="tiny_t"):
    torch.manual_seed(0)
    s, t = MODELS[student](num_classes=10), MODELS[teacher](num_classes=10)
    t.eval().requires_grad_(False)
    return s, t


def test_convreg_shape_rules():
    for s_shape, t_shape, kind in (((2, 8, 8, 8), (2, 16, 4, 4), torch.nn.Conv2d),
                                   ((2, 8, 4, 4), (2, 16, 8, 8), torch.nn.ConvTranspose2d),
                                   ((2, 8, 6, 6), (2, 16, 4, 4), torch.nn.Conv2d),
                                   ((2, 8, 4, 4), (2, 16, 4, 4), torch.nn.Conv2d)):
        r = ConvReg(s_shape, t_shape)
        assert type(r.conv) is kind and isinstance(r.bn, torch.nn.BatchNorm2d)
        out = r(torch.randn(*s_shape))
        assert out.shape == t_shape and (out >= 0).all()                      # BN then ReLU
    assert ConvReg((2, 8, 6, 6), (2, 16, 4, 4)).conv.kernel_size == (3, 3)
    with pytest.raises(KDError):
        ConvReg((2, 8, 3, 3), (2, 16, 4, 4))


def test_fitnet_single_stage_has_no_stage_two_stage_trains_up_to_hint_layer():
    s, t = make_pair()
    assert METHODS["fitnet"](ctx_for(s, t)).stages() == []
    m = METHODS["fitnet"](ctx_for(s, t), hint_epochs=7, hint_lr=0.01)
    (stage,) = m.stages()
    want = list(s.stem.parameters()) + list(s.stage1.parameters()) + list(s.stage2.parameters())
    assert stage.epochs == 7 and stage.lr == 0.01
    assert {id(p) for p in stage.params} == {id(p) for p in want + list(m.regressor.parameters())}
    x = torch.randn(4, 3, 16, 16)
    sf, sl = s.extract(x)
    tf, tl = t.extract(x)
    expected = torch.nn.functional.mse_loss(m.regressor(sf[2]), tf[2])
    assert stage.loss(fake_step(sl, tl, None, sf, tf)).item() == pytest.approx(expected.item())


def test_fsp_zero_weight_cell_still_runs_its_stage(data_root, isolated):
    from kd.catalog.cells import Cell, load_recipe
    from kd.engine.teacher import freeze
    from harness import View, member
    cell = Cell("cifar100", "fsp", "tiny_s", "tiny_t", "crd", ce_weight=1.0,
                terms=({"name": "fsp", "weight": 0.0, "init_epochs": 1},))
    torch.manual_seed(0)
    teacher = freeze(MODELS["tiny_t"](num_classes=100))
    with pytest.warns(UserWarning, match="connectors"):
        run = View(member(cell, load_recipe("crd").with_overrides(epochs=1, batch_size=48), data_root, teacher,
                          store=isolated / "store", results=isolated / "results"))
    stem0 = run.student.stem[0].weight.detach().clone()
    rec = run.train()
    assert rec["status"] == "ok" and [e["stage"] for e in rec["stage_curve"]] == ["fsp_init"]
    assert len(rec["curve"]) == 1 and not torch.equal(stem0, run.student.stem[0].weight)


def test_fsp_stage_declared_with_feature_modules():
    s, t = make_pair("tiny_t", "tiny_t")                           # equal channels: RepDistiller's setting
    m = METHODS["fsp"](ctx_for(s, t))
    assert m.connectors is None and list(m.parameters()) == []
    (stage,) = m.stages()
    assert stage.epochs == 30 and stage.lr is None
    assert {id(p) for p in stage.params} == {id(p) for p in s.get_feat_modules().parameters()}
    s2, t2 = make_pair()
    with pytest.raises(KDError, match="channels"):
        METHODS["fsp"](ctx_for(s2, t2), connect=False)


# --- BSS ------------------------------------------------------------------------------------------

def test_bss_attack_moves_teacher_toward_target_class():
    m = METHODS["bss"](ctx_for(*make_pair()))
    torch.manual_seed(1)
    lin = torch.nn.Linear(3 * 4 * 4, 10)
    with torch.no_grad():
        lin.weight.normal_(0, 1.0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), lin).requires_grad_(False)
    x = torch.randn(8, 3, 4, 4) * 0.3
    with torch.no_grad():
        z = teacher(x)
    orig, target = z.argmax(1), z.argsort(1, descending=True)[:, 2]
    x_adv = m.attack(teacher, x, target)
    with torch.no_grad():
        z_adv = teacher(x_adv)
    assert (z_adv.argmax(1) != orig).all()                                # crossed the original boundary
    p0, p1 = torch.softmax(z, 1).gather(1, target[:, None]), torch.softmax(z_adv, 1).gather(1, target[:, None])
    assert (p1 > p0).all() and x_adv.abs().max() <= 2.5
    # linear teacher: one step x + 0.3 (margin + 1e-4) g / ||g||, g = w_target - w_orig, crosses it;
    # the reference then stops moving the sample (step size 0 once the prediction changed)
    w = lin.weight.detach()
    for i in range(8):
        g = (w[target[i]] - w[orig[i]]).view(3, 4, 4)
        margin = (z[i, orig[i]] - z[i, target[i]]).item()
        assert margin * 0.3 * g.norm() > margin                          # the first step suffices
        assert torch.allclose(x_adv[i], x[i] + 0.3 * (margin + 1e-4) * g / g.norm(), atol=1e-5)


def test_bss_selection_sampling_schedules_and_terms():
    m = METHODS["bss"](ctx_for(*make_pair(), epochs=10), attack_size=3)
    assert m.ratios(0) == (pytest.approx(3 * 0.9 + 1), pytest.approx(2 * (1 - 4 / 30)))
    assert m.ratios(7)[1] == 0 and m.ratios(9)[0] == pytest.approx(1.0)
    t_logits = torch.tensor([[5.0, 1.0, 0.0, 0.0]] * 6)
    s_logits = t_logits.clone()
    s_logits[:, 1] = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 9.0])  # last one: student wrong
    y = torch.tensor([0, 0, 0, 0, 0, 0])
    idx, target = m.select(fake_step(s_logits, t_logits, y))
    assert sorted(idx.tolist()) == [2, 3, 4]                        # the 3 with the largest non-target gap
    assert (target != 0).all()
    big = torch.tensor([[3.0, 2.0, 1.0, 0.0]]).repeat(20000, 1)
    m.attack_size = 10**6
    _, target = m.select(fake_step(big, big, torch.zeros(20000, dtype=torch.long)))
    p = torch.softmax(big[0], 0)[1:]
    freq = torch.bincount(target, minlength=4)[1:].double() / 20000
    assert torch.allclose(freq, (p / p.sum()).double(), atol=0.015)
    # forward with the teacher as its own student: every correct sample is attacked, both terms finite
    _, t = make_pair()
    s = copy.deepcopy(t).requires_grad_(True)
    m = METHODS["bss"](ctx_for(s, t, epochs=10))
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        tl = t(x)
    out = m(fake_step(s(x), tl, tl.argmax(1), images=x, student=s, teacher=t, epoch=0))
    assert set(out) == {"kd", "bss"} and out["bss"] > 0 and torch.isfinite(out["kd"])
    out["bss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())
    late = m(fake_step(s(x), tl, tl.argmax(1), images=x, student=s, teacher=t, epoch=8))
    assert late["bss"] == 0
