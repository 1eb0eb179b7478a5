"""KDSVD: Lee, Kim, Song. "Self-supervised Knowledge Distillation Using Singular Value Decomposition".
ECCV 2018, arXiv:1807.06819.

Implements the paper's distillation module: each stage map F_l (B, C, H, W) is read per sample as
an (H*W) x C matrix and compressed by truncated SVD to its first right singular vectors V_l
(C x k, teacher) and (C x (k+3), student), each column of unit length; every teacher vector picks
the student vector of largest |cosine| (with its sign); both are scaled by the teacher's first k
singular values normalised to unit length, sigma_l. The knowledge is the correlation between
consecutive stages by a radial basis function, elementwise over the k vectors:
R_l[c, c', j] = exp(-(V_l[c, j] - V_{l-1}[c', j])^2 / 8),
and L = sum_l sum_{c, c', j} (R_l^s - R_l^t)^2 / B over l = 2..n (non-finite terms zeroed).
Follows HobbitLong/RepDistiller `distiller_zoo/KDSVD.py` (k = 1, its (H*W) x C matrices, as the
authors' TensorFlow code sseung0703/SSKD_SVD) and `helper/loops.py` ('kdsvd': features
feat[1:-1], plain, i.e. after the ReLU); megvii-research/mdistiller `distillers/KDSVD.py` and
`engine/cfg.py` (K 1, CE 1.0, FEAT_WEIGHT 1.0) give the same loss except that it reads each map as a
(C*H) x W matrix, which we do not follow.

Convention: teacher features and the teacher's RBF detached; the SVD runs in float32 outside
autocast (mdistiller casts to float); torch.linalg.svd (reduced) instead of the deprecated
torch.svd, same factors; a non-finite map is zeroed before its SVD (the references zero the SVD's
non-finite outputs; torch.linalg.svd raises on such input), so a diverging run ends in the loop's
non-finite-loss check. As the references, the student and the teacher must have the same channels
at every distilled stage (singular vectors of equal length): other pairs are refused. No connector
is offered: a linear one would make the student's matrix rank-deficient, and the SVD's gradient is
not finite for repeated (zero) singular values -- nor is it in the references, should a map be
rank-deficient there. The term is unweighted; the cell carries the weight.
Not capturable (`capturable = False`): torch.linalg.svd synchronises a CUDA device with the host
(PyTorch's documentation), so its cells run eagerly in every execution mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.errors import KDError
from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def right_singular(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First n right singular vectors (B, C, n), unit columns, and first n singular values
    normalised to unit length (B, n) of each sample's (H*W) x C matrix; non-finite entries zeroed."""
    b, c = f.shape[:2]
    x = _finite(f.reshape(b, c, -1).transpose(1, 2).float())       # (B, H*W, C)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)            # s (B, r), vh (B, r, C)
    v = _finite(vh.transpose(1, 2))                                # (B, C, r)
    return F.normalize(v[:, :, :n], dim=1), F.normalize(_finite(s)[:, :n], dim=1)


def align(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector (B, C, n_t), the student vector (of B, C, n_s) of largest |cosine|,
    times the cosine's sign: (B, C, n_t)."""
    cos = v_s.transpose(1, 2) @ v_t                                # (B, n_s, n_t)
    best = cos.abs().amax(1, keepdim=True)
    return v_s @ torch.where(cos.abs() == best, cos.sign(), torch.zeros_like(cos))


def rbf(v: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
    """(B, C, k), (B, C', k) -> (B, C, C', k): exp(-(v[c, j] - v_prev[c', j])^2 / 8)."""
    return torch.exp(-(v[:, :, None] - v_prev[:, None]).pow(2) / 8)


def kdsvd_loss(g_s: list[torch.Tensor], g_t: list[torch.Tensor], k: int = 1) -> torch.Tensor:
    with torch.autocast(g_s[0].device.type, enabled=False):
        total, prev = g_s[0].new_zeros((), dtype=torch.float32), None
        for f_s, f_t in zip(g_s, g_t):
            v_t, s_t = right_singular(f_t.detach(), k)
            v_s, _ = right_singular(f_s, k + 3)
            v_s = align(v_s, v_t)
            v_s, v_t = v_s * s_t[:, None], v_t * s_t[:, None]      # scaled by sigma_l (B, 1, k)
            if prev is not None:
                d = (rbf(v_s, prev[0]) - rbf(v_t, prev[1]).detach()).pow(2)
                total = total + _finite(d).sum()
            prev = v_s, v_t
        return total / g_s[0].shape[0]


@METHODS.register("kdsvd")
class KDSVD(Method):
    capturable = False                 # torch.linalg.svd syncs with the host on CUDA
    test_teacher = "tiny_s"            # aligns singular vectors of equal length: the student's channels

    def __init__(self, ctx: Context, k: int = 1, layers: list[int] | None = None):
        super().__init__(ctx)
        self.k = k
        self.layers = list(range(1, len(ctx.s_shapes) - 1)) if layers is None else list(layers)  # feat[1:-1]
        s_c = [ctx.s_shapes[i][1] for i in self.layers]
        t_c = [ctx.t_shapes[i][1] for i in self.layers]
        if s_c != t_c:
            raise KDError(f"kdsvd: student channels {s_c} differ from teacher channels {t_c}; "
                          "its singular vectors align only at equal channels (as RepDistiller/mdistiller)")

    def forward(self, step: Step) -> torch.Tensor:
        return kdsvd_loss([step.s_feats[i] for i in self.layers], [step.t_feats[i] for i in self.layers], self.k)
