"""PKT: Passalis, Tefas. "Learning Deep Representations with Probabilistic Knowledge Transfer".
ECCV 2018, arXiv:1803.10837.

Implements the cosine-similarity kernel K(a, b) = (cos(a, b) + 1) / 2, the conditional
probabilities p_{i|j} = K_ij / sum_k K_ik (rows of the B x B kernel matrix), and
KL(P_t || P_s) = mean_{i,j} p^t_ij log((p^t_ij + eps) / (p^s_ij + eps)). Follows
HobbitLong/RepDistiller `distiller_zoo/PKT.py` (from the authors' code), feature `feat[-1]`.

Convention: rows normalised with norm + eps (eps = 1e-7), NaNs set to 0 as in the reference; the
KL is averaged over all B*B entries (not summed over j), so the cell weight is large (RepDistiller:
30000, CE 1). The self-pair diagonal is kept, as in the reference. Teacher detached.
"""
from __future__ import annotations

import torch

from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def _cond_probs(f: torch.Tensor, eps: float) -> torch.Tensor:
    f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)          # (B, D) unit rows
    f = torch.where(torch.isnan(f), torch.zeros_like(f), f)
    k = (f @ f.t() + 1.0) / 2.0                                   # (B, B) in [0, 1]
    return k / k.sum(1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    p_s = _cond_probs(f_s.flatten(1), eps)
    p_t = _cond_probs(f_t.detach().flatten(1), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@METHODS.register("pkt")
class PKT(Method):
    def __init__(self, ctx: Context, layer: int = -1, eps: float = 1e-7):
        super().__init__(ctx)
        self.layer, self.eps = layer, eps

    def forward(self, step: Step) -> torch.Tensor:
        return pkt_loss(step.s_feats[self.layer], step.t_feats[self.layer], self.eps)
