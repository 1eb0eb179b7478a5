"""SRRL: Yang, Martinez, Bulat, Tzimiropoulos. "Knowledge Distillation via Softmax Regression
Representation Learning". ICLR 2021 (OpenReview ZzwDy_wiWv).

A connector r (1x1 conv C_s -> C_t without bias, BN, ReLU) maps the student's last feature map
S = feat_s[-2] to the teacher's width. Two terms:
L_FM = mean_b mean_c ( mean_hw r(S)_bc - mean_hw T_bc )^2     (T = feat_t[-2]),
L_SR = MSE( h_t(r(S)), z_t )  (default)  or  CE: -sum_k softmax(z_t)_k log softmax(h_t(r(S)))_k,
where h_t is the frozen teacher's pooling + classifier (`teacher.head`) and z_t the teacher logits.
Follows jingyang2017/KD_SRRL `distiller_zoo/AIN.py` (transfer_conv, statm_loss) and
`train_imagenet_distillation.py` (loss = CE + statm + weight * MSE, `--weight` 1).

Convention: returns {'fm': L_FM, 'sr': sr_weight * L_SR}; the cell weight multiplies both (1 in the
official code). MSE is averaged over batch and classes (F.mse_loss). L_FM is the official code's
intended statm_loss (HEAD instantiates the class instead of calling it: we implement the intended
call); the paper writes L_FM as a full-map L2, the official code matches channel means. The paper
writes L_SR as a cross-entropy, the official code uses MSE on logits: `sr_loss` selects ('mse'
default). Teacher map and logits are detached; gradients of L_SR flow through the teacher head
into the connector and the student, while the teacher's parameters stay frozen (no grad).
If the spatial sizes differ, the teacher map is average-pooled to the student's (not in the code).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def statm_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Squared gap of channel-wise spatial means, mean over channels and batch."""
    return (s.flatten(2).mean(2) - t.flatten(2).mean(2)).pow(2).mean(1).mean()


@METHODS.register("srrl")
class SRRL(Method):
    def __init__(self, ctx: Context, sr_weight: float = 1.0, sr_loss: str = "mse", layer: int = -2):
        super().__init__(ctx)
        if sr_loss not in ("mse", "ce"):
            raise ValueError(f"srrl: sr_loss must be 'mse' or 'ce', not {sr_loss!r}")
        c_s, c_t = ctx.s_shapes[layer][1], ctx.t_shapes[layer][1]
        conv = nn.Conv2d(c_s, c_t, 1, bias=False)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_t))
        self.connector = nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU())
        self.sr_weight, self.sr_loss, self.layer = sr_weight, sr_loss, layer

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        s = self.connector(step.s_feats[self.layer])                  # (B, C_t, H_s, W_s)
        t = step.t_feats[self.layer].detach()                         # (B, C_t, H_t, W_t)
        if t.shape[-2:] != s.shape[-2:]:
            t = F.adaptive_avg_pool2d(t, s.shape[-2:])
        z_t = step.t_logits.detach()                                  # (B, K)
        z_sr = step.teacher.head(s)                                   # (B, K), frozen teacher head
        if self.sr_loss == "mse":
            sr = F.mse_loss(z_sr, z_t)
        else:
            sr = -(F.softmax(z_t, dim=1) * F.log_softmax(z_sr, dim=1)).sum(1).mean()
        return {"fm": statm_loss(s, t), "sr": self.sr_weight * sr}
