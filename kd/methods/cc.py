"""CC: Peng et al. (Baoyun Peng, Xiao Jin, Jiaheng Liu, ...). "Correlation Congruence for Knowledge
Distillation". ICCV 2019, arXiv:1904.01802.

Implements the correlation-congruence term as the authors' code shared with RepDistiller:
with e_s = W_s f_s and e_t = W_t f_t (linear embeddings of the penultimate features to 128-d) and
delta_i = |e_s,i - e_t,i|, loss = mean_i sum_d delta_i,d * delta_{i+1},d over consecutive samples of
the batch. Follows HobbitLong/RepDistiller `distiller_zoo/CC.py` (Correlation) and
`train_student.py` ('correlation': LinearEmbed(feat[-1] dim, feat_dim=128) on both sides, both
trained with the student).

Convention: the teacher features are detached but the teacher-side embedding trains (as in
RepDistiller); mean over the B - 1 consecutive pairs; the cell weight multiplies the loss
(RepDistiller: 0.02, CE 1). Not the paper's Gaussian-RBF correlation matrix (RepDistiller's choice).
"""
from __future__ import annotations

import torch
from torch import nn

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def cc_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    delta = (e_s - e_t).abs()                                     # (B, D)
    return (delta[:-1] * delta[1:]).sum(1).mean()


@METHODS.register("cc")
class CC(Method):
    def __init__(self, ctx: Context, feat_dim: int = 128, layer: int = -1):
        super().__init__(ctx)
        self.layer = layer
        s_dim = ctx.s_shapes[layer][1:].numel()
        t_dim = ctx.t_shapes[layer][1:].numel()
        self.embed_s = nn.Linear(s_dim, feat_dim)                 # RepDistiller LinearEmbed
        self.embed_t = nn.Linear(t_dim, feat_dim)

    def forward(self, step: Step) -> torch.Tensor:
        e_s = self.embed_s(step.s_feats[self.layer].flatten(1))  # (B, feat_dim)
        e_t = self.embed_t(step.t_feats[self.layer].detach().flatten(1))
        return cc_loss(e_s, e_t)
