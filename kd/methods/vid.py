"""VID: Ahn, Hu, Damianou, Lawrence, Dai. "Variational Information Distillation for Knowledge
Transfer". CVPR 2019, arXiv:1904.05835.

Implements the variational lower bound of eq. (2)-(4) with a Gaussian q(t|s) whose mean is a
regressor mu(s) (1x1 conv - ReLU - 1x1 conv - ReLU - 1x1 conv, mid width C_t) and whose variance is
a learned per-channel sigma_c^2 = softplus(alpha_c) + eps: per layer
L_l = mean_{b,c,h,w} [ (t - mu(s))^2 / (2 sigma_c^2) + log(sigma_c^2) / 2 ],
summed over the layers feat[1:-1] (the larger map average-pooled to the smaller).
Follows HobbitLong/RepDistiller `distiller_zoo/VID.py` (VIDLoss(s_C, t_C, t_C), init_pred_var 5.0,
eps 1e-5) and `train_student.py` ('vid', `-a 0 -b 1`).

Convention: as RepDistiller: mean over batch, channels and positions (the constant log(2 pi) / 2
dropped); alpha_c initialised so that the initial variance is init_pred_var; the teacher features
are detached; cell weight 1 (`-b 1`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


class VIDLayer(nn.Module):
    def __init__(self, c_s: int, c_mid: int, c_t: int, init_pred_var: float, eps: float):
        super().__init__()
        self.regressor = nn.Sequential(nn.Conv2d(c_s, c_mid, 1, bias=False), nn.ReLU(),
                                       nn.Conv2d(c_mid, c_mid, 1, bias=False), nn.ReLU(),
                                       nn.Conv2d(c_mid, c_t, 1, bias=False))
        # softplus^-1(init_pred_var - eps), so that softplus(alpha) + eps = init_pred_var
        self.log_scale = nn.Parameter(torch.full((c_t,), math.log(math.expm1(init_pred_var - eps))))
        self.eps = eps

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        hs, ht = s.shape[2], t.shape[2]
        if hs > ht:
            s = F.adaptive_avg_pool2d(s, t.shape[2:])
        elif hs < ht:
            t = F.adaptive_avg_pool2d(t, s.shape[2:])
        mean = self.regressor(s)                                       # (B, C_t, H, W)
        var = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)  # (1, C_t, 1, 1)
        return (0.5 * ((mean - t.detach()).pow(2) / var + var.log())).mean()


@METHODS.register("vid")
class VID(Method):
    def __init__(self, ctx: Context, init_pred_var: float = 5.0, eps: float = 1e-5,
                 layers: list[int] | None = None):
        super().__init__(ctx)
        self.layers = list(layers) if layers is not None else list(range(1, len(ctx.s_shapes) - 1))
        self.vid = nn.ModuleList(
            VIDLayer(ctx.s_shapes[i][1], ctx.t_shapes[i][1], ctx.t_shapes[i][1], init_pred_var, eps)
            for i in self.layers)

    def forward(self, step: Step) -> torch.Tensor:
        return torch.stack([m(step.s_feats[i], step.t_feats[i]) for i, m in zip(self.layers, self.vid)]).sum()
