"""RKD: Park, Kim, Lu, Cho. "Relational Knowledge Distillation". CVPR 2019, arXiv:1904.05068.

Implements paper eq. (4)-(7): distance-wise loss sum over pairs of Huber(psi_D^t, psi_D^s) with
psi_D = ||e_i - e_j|| / mu (mu the mean non-zero pairwise distance of the batch), and angle-wise
loss on cos angle(e_i - e_j, e_k - e_j); total w_d * L_D + w_a * L_A. Follows HobbitLong/RepDistiller
`distiller_zoo/RKD.py` (RKDLoss, w_d = 25, w_a = 50), feature `feat[-1]` (penultimate embedding).
Presets: `rkd` and `rkd_da` (25, 50), `rkd_d` (25, 0), `rkd_a` (0, 50) -- the paper's RKD-D/-A/-DA.

Convention: smooth-L1 (Huber, delta 1) averaged over all B*B (distance) and B^3 (angle) entries as
in the reference, diagonal included; pairwise distances clamped at 1e-12 before the sqrt; the
teacher side is computed without gradients. w_d, w_a are inside the method; the cell weight
multiplies the total (RepDistiller: 1, CE 1). A zero weight skips its term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def pdist(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    sq = e.pow(2).sum(1)                                          # (B,)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt()   # (B, B)
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))      # zero diagonal


def _mean_pos(d: torch.Tensor) -> torch.Tensor:
    return d.sum() / (d > 0).sum()                                # mean of the non-zero distances, no sync


def rkd_distance(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        d_t = pdist(t)
        d_t = d_t / _mean_pos(d_t)
    d_s = pdist(s)
    return F.smooth_l1_loss(d_s / _mean_pos(d_s), d_t)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # (B, B, D): e_j - e_i, unit
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()         # (B^3,) cosines at vertex i


def rkd_angle(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        a_t = _angles(t)
    return F.smooth_l1_loss(_angles(s), a_t)


@METHODS.register("rkd")
class RKD(Method):
    def __init__(self, ctx: Context, w_d: float = 25.0, w_a: float = 50.0, layer: int = -1):
        super().__init__(ctx)
        self.w_d, self.w_a, self.layer = w_d, w_a, layer

    def forward(self, step: Step) -> torch.Tensor:
        s = step.s_feats[self.layer].flatten(1)                   # (B, D_s)
        t = step.t_feats[self.layer].detach().flatten(1)          # (B, D_t)
        loss = s.new_zeros(())
        if self.w_d:
            loss = loss + self.w_d * rkd_distance(s, t)
        if self.w_a:
            loss = loss + self.w_a * rkd_angle(s, t)
        return loss


@METHODS.register("rkd_d")
class RKD_D(RKD):
    """RKD preset rkd_d: distance term only (w_d=25, w_a=0)."""

    def __init__(self, ctx: Context, w_d: float = 25.0, w_a: float = 0.0, layer: int = -1):
        super().__init__(ctx, w_d, w_a, layer)


@METHODS.register("rkd_a")
class RKD_A(RKD):
    """RKD preset rkd_a: angle term only (w_d=0, w_a=50)."""

    def __init__(self, ctx: Context, w_d: float = 0.0, w_a: float = 50.0, layer: int = -1):
        super().__init__(ctx, w_d, w_a, layer)


@METHODS.register("rkd_da")
class RKD_DA(RKD):
    """RKD preset rkd_da: both terms (w_d=25, w_a=50)."""

    def __init__(self, ctx: Context, w_d: float = 25.0, w_a: float = 50.0, layer: int = -1):
        super().__init__(ctx, w_d, w_a, layer)
