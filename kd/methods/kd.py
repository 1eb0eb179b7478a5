"""KD: Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network". arXiv:1503.02531, 2015.

Implements the soft-target term, eq. (2) of the paper: KL(p_t^T || p_s^T) with p^T = softmax(z / T).
Follows RepDistiller `distiller_zoo/KD.py` (DistillKL).

Convention: KL summed over classes, averaged over the batch (reduction 'batchmean'), multiplied by
T**2 so gradients keep their scale across temperatures. The teacher logits are detached. The cell
weights the term (RepDistiller's KD cell: ce_weight 0.1, kd weight 0.9, T = 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, T: float) -> torch.Tensor:
    log_p_s = F.log_softmax(s_logits / T, dim=1)                  # (B, K)
    p_t = F.softmax(t_logits.detach() / T, dim=1)                 # (B, K)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * T * T


@METHODS.register("kd")
class KD(Method):
    needs_features = False

    def __init__(self, ctx: Context, T: float = 4.0):
        super().__init__(ctx)
        self.T = T

    def forward(self, step: Step) -> torch.Tensor:
        return kd_loss(step.s_logits, step.t_logits, self.T)
