"""NST: Huang, Wang. "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer".
arXiv:1707.01219, 2017.

Implements the squared MMD with the polynomial kernel k(x, y) = (x·y)^2 (paper eq. 10 with d = 2,
c = 0) between the sets of channel activation maps, each map l2-normalised over its positions:
MMD² = mean k(t, t) + mean k(s, s) - 2 mean k(s, t), summed over the matched layers. Follows
HobbitLong/RepDistiller `distiller_zoo/NST.py` (NSTLoss, full_loss=True), features `feat[1:-1]`.

Convention: maps pooled to the smaller spatial size (RepDistiller); each kernel mean is over batch
and all channel pairs (so student and teacher may differ in channels); the k(t, t) term is a
detached constant; layers summed. The cell weight multiplies the sum (RepDistiller: 50, CE 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.methods.at import match_hw, pick
from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()         # (B, Ca, HW) x (B, Cb, HW) -> (B, Ca, Cb)


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    f_s, f_t = match_hw(f_s, f_t.detach())
    f_s = F.normalize(f_s.flatten(2), dim=2)                      # (B, Cs, HW), unit maps
    f_t = F.normalize(f_t.flatten(2), dim=2)                      # (B, Ct, HW)
    return poly_kernel_mean(f_t, f_t).detach() + poly_kernel_mean(f_s, f_s) - 2 * poly_kernel_mean(f_s, f_t)


@METHODS.register("nst")
class NST(Method):
    def __init__(self, ctx: Context, layers: list[int] | None = None):
        super().__init__(ctx)
        self.layers = layers                                      # None: feat[1:-1]

    def forward(self, step: Step) -> torch.Tensor:
        g_s = pick(step.s_feats, self.layers, slice(1, -1))
        g_t = pick(step.t_feats, self.layers, slice(1, -1))
        return sum(nst_loss(s, t) for s, t in zip(g_s, g_t))
