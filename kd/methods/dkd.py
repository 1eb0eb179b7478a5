"""DKD: Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation". CVPR 2022, arXiv:2203.08679.

Implements eq. (8), DKD = alpha * TCKD + beta * NCKD (the reformulation of KD in eq. (7)), where
TCKD = KL(b^t || b^s) on the binary (target, non-target) probabilities b = [p_y, 1 - p_y] and
NCKD = KL(p̂^t || p̂^s) on the softmax over the non-target classes only, all at temperature T.
The paper's identity KD = TCKD + (1 - p_y^t) * NCKD holds per sample (tested).
Follows megvii-research/mdistiller `mdistiller/distillers/DKD.py` (`dkd_loss`) and its CIFAR-100 config
(`mdistiller/engine/cfg.py`: CE 1.0, alpha 1, beta 8, T 4, warm-up 20 epochs; beta 2 or 6 per pair).

Convention: as mdistiller: the gt/other masks gather b; NCKD's softmaxes use z / T - 1000 * gt_mask;
each KL is summed over classes and over the batch, divided by the batch size, times T². The term
is multiplied by the warm-up factor min(e / warmup, 1) with e = step.epoch + 1, mdistiller's
1-based integer epoch (constant within an epoch, 1/20 in the first epoch). The teacher logits are
detached. CE is the loop's (cell ce_weight 1.0); the cell weight for dkd is 1.0 (beta per pair is
a hyperparameter, not the cell weight).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def dkd_terms(s_logits: torch.Tensor, t_logits: torch.Tensor, target: torch.Tensor, T: float,
              reduction: str = "batchmean") -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each times T²; reduction 'batchmean' (sum / B, mdistiller) or 'none' (B,)."""
    t_logits = t_logits.detach()
    gt = torch.zeros_like(s_logits).scatter_(1, target.view(-1, 1), 1.0)     # (B, K) one-hot
    p_s, p_t = F.softmax(s_logits / T, dim=1), F.softmax(t_logits / T, dim=1)  # (B, K)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)    # (B, 2)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)    # (B, 2)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="none").sum(1)            # (B,)
    log_q_s = F.log_softmax(s_logits / T - 1000.0 * gt, dim=1)               # (B, K) non-target
    q_t = F.softmax(t_logits / T - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="none").sum(1)                    # (B,)
    tckd, nckd = tckd * T * T, nckd * T * T
    if reduction == "batchmean":
        return tckd.sum() / target.shape[0], nckd.sum() / target.shape[0]
    return tckd, nckd


def warmup_factor(epoch, warmup: float):
    """mdistiller's min(epoch / warmup, 1) with its 1-based epoch (our step.epoch is 0-based; a
    0-d tensor in the loop, so the factor is computed on the device, without a host sync)."""
    if warmup <= 0:
        return 1.0
    return torch.clamp((torch.as_tensor(epoch, dtype=torch.float32) + 1) / warmup, max=1.0)


@METHODS.register("dkd")
class DKD(Method):
    needs_features = False

    def __init__(self, ctx: Context, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0,
                 warmup: float = 20.0):
        super().__init__(ctx)
        self.alpha, self.beta, self.T, self.warmup = alpha, beta, T, warmup

    def forward(self, step: Step) -> torch.Tensor:
        tckd, nckd = dkd_terms(step.s_logits, step.t_logits, step.targets, self.T)
        return warmup_factor(step.epoch, self.warmup) * (self.alpha * tckd + self.beta * nckd)
