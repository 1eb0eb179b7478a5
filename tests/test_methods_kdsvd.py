"""KDSVD (kd/methods/kdsvd.py): alignment by hand, the whole loss against a direct numpy computation,
zero for identical networks, gradients, and the channel rule. (The registry-wide checks run it on
tiny_s <- tiny_s: KDSVD needs equal channels.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kd.methods  # noqa: F401
from kd.errors import KDError
from kd.methods.contract import Context, Step
from kd.methods.kdsvd import KDSVD, align, kdsvd_loss


def test_align_picks_the_student_vector_of_largest_abs_cosine_with_its_sign():
    e = torch.eye(4)
    v_s = torch.stack([e[1], -e[0], (e[2] + e[0]) / 2 ** 0.5, e[3]], dim=1)[None]   # (1, 4, 4) columns
    v_t = torch.stack([e[0], e[3]], dim=1)[None]                                      # (1, 4, 2)
    torch.testing.assert_close(align(v_s, v_t), v_t)          # -(-e0) beats cos 0.71; e3 as it is


def numpy_loss(g_s, g_t, k):
    """The loss written out per sample with numpy's SVD; each singular vector's sign taken from
    torch's SVD (the sign of a singular vector is arbitrary and the RBF of consecutive layers
    depends on it, in the references as here)."""
    total = 0.0
    b = g_s[0].shape[0]
    for i in range(b):
        prev = None
        for f_s, f_t in zip(g_s, g_t):
            vs_, ts_ = [], []
            for f, n in ((f_t, k), (f_s, k + 3)):
                x = f[i].reshape(f.shape[1], -1).T.double().numpy()               # (H*W, C)
                _, s, vh = np.linalg.svd(x, full_matrices=False)
                v = vh.T[:, :n]
                ref = torch.linalg.svd(f[i].reshape(f.shape[1], -1).T, full_matrices=False)[2].T[:, :n].numpy()
                v = v * np.sign((v * ref).sum(0))                                   # torch's signs
                vs_.append(v / np.linalg.norm(v, axis=0))
                ts_.append(s[:n] / np.linalg.norm(s[:n]))
            (v_t, v_s), sigma = vs_, ts_[0]
            cos = v_s.T @ v_t                                                      # (k+3, k)
            pick = np.abs(cos).argmax(0)
            v_s = v_s[:, pick] * np.sign(cos[pick, np.arange(k)])
            v_s, v_t = v_s * sigma, v_t * sigma
            if prev is not None:
                r_s = np.exp(-(v_s[:, None, :] - prev[0][None, :, :]) ** 2 / 8)
                r_t = np.exp(-(v_t[:, None, :] - prev[1][None, :, :]) ** 2 / 8)
                total += ((r_s - r_t) ** 2).sum()
            prev = v_s, v_t
    return total / b


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_loss_equals_a_direct_numpy_computation(k):
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 6, 4, 4), (3, 8, 4, 4), (3, 8, 3, 3)]
    g_s = [torch.randn(*s, generator=g) for s in shapes]
    g_t = [torch.randn(*s, generator=g) for s in shapes]
    got = kdsvd_loss(g_s, g_t, k).item()
    assert got > 0
    assert got == pytest.approx(numpy_loss(g_s, g_t, k), rel=1e-4)


def ctx(s_c, t_c, hw=4):
    s = [torch.Size((2, c, hw, hw)) for c in s_c] + [torch.Size((2, s_c[-1]))]
    t = [torch.Size((2, c, hw, hw)) for c in t_c] + [torch.Size((2, t_c[-1]))]
    return Context(None, None, s, t, 10, 64, 10, 4, (3, hw, hw))


def test_kdsvd_is_zero_for_identical_maps_and_trains_the_student_only():
    m = KDSVD(ctx([4, 6, 6, 8], [4, 6, 6, 8]))
    assert m.layers == [1, 2, 3]
    g = torch.Generator().manual_seed(1)
    t_feats = [torch.randn(5, c, 4, 4, generator=g) for c in (4, 6, 6, 8)] + [torch.randn(5, 8, generator=g)]
    same = [f.clone().requires_grad_() for f in t_feats]
    assert m(Step(None, None, None, None, same, None, t_feats, 0)).item() == pytest.approx(0, abs=1e-10)
    s_feats = [torch.randn(5, c, 4, 4, generator=g, requires_grad=True) for c in (4, 6, 6, 8)] + [same[-1]]
    loss = m(Step(None, None, None, None, s_feats, None, t_feats, 0))
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s_feats[1:4])
    assert s_feats[0].grad is None                                    # feat[0] and the embedding are not used


def test_kdsvd_refuses_different_channels_and_survives_a_non_finite_map():
    with pytest.raises(KDError, match="differ"):
        KDSVD(ctx([4, 6, 6, 8], [4, 6, 12, 8]))
    g_t = [torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)]
    g_s = [g_t[0].clone(), torch.full((2, 6, 4, 4), float("nan"))]
    assert torch.isfinite(kdsvd_loss(g_s, g_t))                # no LinAlgError; CE carries the NaN
