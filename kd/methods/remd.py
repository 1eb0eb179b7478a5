"""REMD: Lohit, Jones. "Model Compression Using Optimal Transport". WACV 2022, arXiv:2012.03907.

Relaxed Earth Mover's Distance (Kusner et al., ICML 2015) between the batch of student features and
the batch of teacher features at each matched layer: dropping one of the two marginal constraints of
the batch OT problem gives R1 = (1/b) sum_i min_j C_ij and R2 = (1/b) sum_j min_i C_ij, and
L_REMD = max(R1, R2), with C_ij = 1 - cos(x_i, y_j) (the poster's equation; summed over layers).
No public code of the paper exists; layer pairing, projectors and costs are shared with IPOT
(kd/methods/ipot.py).

Convention: summed over layers, each term (1/b) max(sum of row minima, sum of column minima); the
gradient flows through the selected minima of C (subgradient of min/max). Layers: `layers`, default
the stage outputs feat[1:-1] (the paper does not say); projectors and pooling as in ipot.py. The
teacher features are detached. The cell weight is the paper's alpha.
"""
from __future__ import annotations

import torch

from kd.methods.contract import Context, Step
from kd.methods.ipot import OTFeatureMethod
from kd.registry import METHODS


def remd_cost(C: torch.Tensor) -> torch.Tensor:
    """(..., n, m) costs -> (...) relaxed EMD with uniform marginals 1/n, 1/m (n = m = b here)."""
    rows = C.min(dim=-1).values.mean(-1)                        # (1/n) sum_i min_j C_ij
    cols = C.min(dim=-2).values.mean(-1)                        # (1/m) sum_j min_i C_ij
    return torch.maximum(rows, cols)


@METHODS.register("remd")
class REMD(OTFeatureMethod):
    def __init__(self, ctx: Context, layers: list[int] | None = None):
        super().__init__(ctx, layers)

    def forward(self, step: Step) -> torch.Tensor:
        return remd_cost(self.costs(step)).sum()
