"""OFD: Heo, Kim, Yun, Park, Kwak, Choi. "A Comprehensive Overhaul of Feature Distillation".
ICCV 2019, arXiv:1904.01866.

Implements the partial L2 distance of eq. (5)-(6) between the connected student pre-ReLU map
r(s) (1x1 conv + BN) and the teacher pre-ReLU map t, with the teacher target clipped by a per-channel
margin m_c = E[t_c | t_c < 0] of the teacher's BN before ReLU (gamma, beta):
m_c = beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|) (or -3|gamma| if Phi(-beta/|gamma|) <= 1e-3),
d = (r(s) - m)^2 [r(s) > m, t <= m] + (r(s) - t)^2 [r(s) > t, m < t <= 0] + (r(s) - t)^2 [t > 0],
per layer l: mean over the batch of the sum over (C, H, W); L = sum_l d_l / 2^(n-l-1) over the last
n aligned stage features feat[1:-1] (the teacher map average-pooled to the student's size).
Follows megvii-research/mdistiller `mdistiller/distillers/OFD.py` (feat_loss, ConnectorConvBN with
kernel 1, margins from `get_bn_before_relu()`) and `mdistiller/engine/cfg.py` (CFG.OFD).

Convention: as mdistiller: the margins are computed once from the (loaded) teacher at construction
and kept as buffers; the teacher map is detached; the term is unweighted here: the cell carries
mdistiller's FEAT_WEIGHT 1e-3 (the official clovaai code's sum / B / 1000), CE weight 1.0. The
features are those of `extract(preact=True)` for both nets (mdistiller's preact_feats[1:]).
The teacher runs with its BatchNorm in train mode (`teacher_mode = "train"`: batch statistics) while
distilling, as mdistiller's OFD (its train() override leaves the teacher in train mode, unlike its
base Distiller) and the official clovaai code (`t_net.train()`); its forward is still under no_grad
and its running statistics are not updated (kd.engine.teacher.freeze). The margins come from the BN affine
parameters only, so the mode does not change them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def bn_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Expected value of the negative part of N(beta, gamma^2) per channel, (C,)."""
    s, m = bn.weight.detach().abs().double(), bn.bias.detach().double()
    cdf = torch.special.ndtr(-m / s)
    pdf = torch.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi)
    return torch.where(cdf > 1e-3, -s * pdf / cdf + m, -3 * s).float()


def ofd_distance(s: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Partial L2 between (B, C, H, W) maps with margin (1, C, 1, 1): mean over B, sum over C, H, W."""
    d = ((s - margin).pow(2) * ((s > margin) & (t <= margin)).to(s.dtype)
         + (s - t).pow(2) * ((s > t) & (t > margin) & (t <= 0)).to(s.dtype)
         + (s - t).pow(2) * (t > 0).to(s.dtype))
    return d.mean(0).sum()


def conv_bn(c_in: int, c_out: int, k: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, k, padding=(k - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (k * k * c_out)))
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


@METHODS.register("ofd")
class OFD(Method):
    needs_preact = True
    teacher_mode = "train"

    def __init__(self, ctx: Context, kernel_size: int = 1):
        super().__init__(ctx)
        s_idx, t_idx = list(range(1, len(ctx.s_shapes) - 1)), list(range(1, len(ctx.t_shapes) - 1))
        n = min(len(s_idx), len(t_idx))                               # mdistiller's _align_list
        self.s_idx, self.t_idx = s_idx[-n:], t_idx[-n:]
        self.connectors = nn.ModuleList(conv_bn(ctx.s_shapes[i][1], ctx.t_shapes[j][1], kernel_size)
                                        for i, j in zip(self.s_idx, self.t_idx))
        bns = list(ctx.teacher.get_bn_before_relu())[-n:]
        for l, bn in enumerate(bns):
            self.register_buffer(f"margin{l}", bn_margin(bn).view(1, -1, 1, 1))  # (1, C_t, 1, 1)

    def forward(self, step: Step) -> torch.Tensor:
        n = len(self.connectors)
        terms = []
        for l, (i, j, conn) in enumerate(zip(self.s_idx, self.t_idx, self.connectors)):
            s = conn(step.s_feats[i])                                 # (B, C_t, H_s, W_s)
            t = F.adaptive_avg_pool2d(step.t_feats[j].detach(), s.shape[-2:])
            terms.append(ofd_distance(s, t, getattr(self, f"margin{l}")) / 2 ** (n - l - 1))
        return torch.stack(terms).sum()
