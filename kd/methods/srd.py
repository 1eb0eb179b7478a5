"""SRD: Miles, Mikolajczyk. "Understanding the Role of the Projector in Knowledge Distillation".
AAAI 2024, arXiv:2303.11098.

A trainable linear projector P (D_s -> D_t, with bias) maps the student's pooled embedding
z_s = feat_s[-1]; both sides are batch-normalised without affine parameters (BatchNorm1d,
eps 1e-4, batch statistics in training), and
L_SRD = log( sum_{b,d} | BN(P z_s) - BN(z_t) |^4 ).
Follows roymiles/Simple-Recipe-Distillation `imagenet/torchdistill/losses/single.py`
(OurDistillationLoss.forward_loss: nn.Linear projector, BatchNorm1d(affine=False, eps=1e-4) on
each side, log of the plain sum over batch and dimensions, no mean, no eps inside the log) and
`imagenet/configs/ilsvrc2012/ours/res3418.yaml`.

Convention: unweighted here; the paper's recipe is CE 1 + 2 * srd + 1 * kd(T=1), i.e. the cell
gives srd weight 2.0 and a separate `kd` term with T=1, weight 1 (the official code computes the
KL at T=1 as sum / B, the same as our kd method's batchmean). The teacher embedding is detached
(its BN still updates running statistics). The projector is a parameter of this method, so the
loop optimises it: the official ImageNet code built it inside the loss without registering it in
the optimizer (a random fixed projector, roymiles/Simple-Recipe-Distillation#1); we train it as
the paper describes. Computed in float32 outside autocast (a sum of 4th powers loses precision
in bf16).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def srd_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """log(sum |f_s - f_t|^4) over all elements of two normalised (B, D) embeddings."""
    return (f_s - f_t).abs().pow(4).sum().log()


@METHODS.register("srd")
class SRD(Method):
    def __init__(self, ctx: Context, bn_eps: float = 1e-4, layer: int = -1):
        super().__init__(ctx)
        d_s, d_t = ctx.s_shapes[layer][1], ctx.t_shapes[layer][1]
        self.projector = nn.Linear(d_s, d_t)
        self.bn_s = nn.BatchNorm1d(d_t, eps=bn_eps, affine=False)
        self.bn_t = nn.BatchNorm1d(d_t, eps=bn_eps, affine=False)
        self.layer = layer

    def forward(self, step: Step) -> torch.Tensor:
        with torch.autocast(step.s_logits.device.type, enabled=False):
            z_s = step.s_feats[self.layer].flatten(1).float()          # (B, D_s)
            z_t = step.t_feats[self.layer].flatten(1).float().detach() # (B, D_t)
            return srd_loss(self.bn_s(self.projector(z_s)), self.bn_t(z_t))
