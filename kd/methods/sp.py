"""SP: Tung, Mori. "Similarity-Preserving Knowledge Distillation". ICCV 2019, arXiv:1907.09682.

Implements paper eq. (2)-(4): G = A A^T on the (B, C*H*W)-flattened activations, each row
l2-normalised, loss = ||G_t - G_s||_F^2 / B^2. Follows HobbitLong/RepDistiller `distiller_zoo/SP.py`
(Similarity), feature `feat[-2]` (last stage output) as `helper/loops.py`.

Convention: one layer by default (sum over layers if several are given); teacher detached; the
cell weight multiplies the loss (RepDistiller: 3000, CE 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    b = f_s.shape[0]
    a_s, a_t = f_s.reshape(b, -1), f_t.detach().reshape(b, -1)   # (B, D_s), (B, D_t)
    g_s = F.normalize(a_s @ a_s.t())                              # (B, B) row-normalised
    g_t = F.normalize(a_t @ a_t.t())
    return (g_t - g_s).pow(2).sum() / (b * b)


@METHODS.register("sp")
class SP(Method):
    def __init__(self, ctx: Context, layers: list[int] = (-2,)):
        super().__init__(ctx)
        self.layers = list(layers)

    def forward(self, step: Step) -> torch.Tensor:
        return sum(sp_loss(step.s_feats[i], step.t_feats[i]) for i in self.layers)
