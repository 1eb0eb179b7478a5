"""AT: Zagoruyko, Komodakis. "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer". ICLR 2017, arXiv:1612.03928.

Implements the attention-transfer term (paper eq. 2 with the squared distance of RepDistiller):
for each matched layer, Q = normalize_2(mean_c f_c^p) flattened to (B, HW), loss_j = mean((Q_s - Q_t)^2),
summed over the matched layers. Follows HobbitLong/RepDistiller `distiller_zoo/AT.py` (Attention),
features `feat[1:-1]` (the stage outputs) as `helper/loops.py`.

Convention: p = 2; when spatial sizes differ the larger map is adaptive-average-pooled to the smaller
(RepDistiller); mean over batch and positions per layer (not the paper's ||.||_2 norm / 2), layers
summed; teacher features detached. The cell weight multiplies the sum (RepDistiller: 1000, CE 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def pick(feats: list, layers: list[int] | None, default: slice) -> list:
    """feats[i] for i in layers, or feats[default] when layers is None."""
    return list(feats[default]) if layers is None else [feats[i] for i in layers]


def match_hw(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the map with the larger height to the other's (H, H), as RepDistiller."""
    ha, hb = a.shape[2], b.shape[2]
    if ha > hb:
        a = F.adaptive_avg_pool2d(a, (hb, hb))
    elif ha < hb:
        b = F.adaptive_avg_pool2d(b, (ha, ha))
    return a, b


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return F.normalize(f.pow(p).mean(1).flatten(1))               # (B, C, H, W) -> (B, H*W), unit rows


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    f_s, f_t = match_hw(f_s, f_t.detach())
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@METHODS.register("at")
class AT(Method):
    def __init__(self, ctx: Context, p: float = 2.0, layers: list[int] | None = None):
        super().__init__(ctx)
        self.p, self.layers = p, layers                           # None: feat[1:-1]

    def forward(self, step: Step) -> torch.Tensor:
        g_s = pick(step.s_feats, self.layers, slice(1, -1))
        g_t = pick(step.t_feats, self.layers, slice(1, -1))
        return sum(at_loss(s, t, self.p) for s, t in zip(g_s, g_t))
