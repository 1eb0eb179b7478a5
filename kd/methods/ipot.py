"""IPOT: Lohit, Jones. "Model Compression Using Optimal Transport". WACV 2022, arXiv:2012.03907.

Batch-level optimal transport between student and teacher features at each matched layer l:
L_OT = min_T <T, C>  s.t.  T 1 = T^T 1 = 1/b,  C_ij = 1 - cos(x_i, y_j)  (student sample i, teacher
sample j, features flattened per sample); the loss is the sum over layers. The plan is computed with
the inexact proximal point method of Xie, Wang, Wang, Zha, "A Fast Proximal Point Method for
Computing Exact Wasserstein Distance", UAI 2020, arXiv:1802.04307, Algorithm 1 (G = exp(-C/beta);
per outer step Q = G * T, `n_inner` Sinkhorn-like updates delta = mu/(Q sigma), sigma = nu/(Q^T delta),
T = diag(delta) Q diag(sigma); sigma warm-started as in the authors' `xieyujia/IPOT` ipot.py).
No public code of Lohit & Jones exists; this file also holds the pieces REMD (remd.py) shares.

Convention: loss = sum over layers of <T.detach(), C>: the plan is computed without gradient and the
gradient flows through C only, which is the gradient of the exact OT value (Danskin's theorem).
After t outer steps IPOT equals entropic OT with regulariser beta/t, so the defaults beta = 0.1,
n_outer = 100, n_inner = 1 (eps 1e-3; the authors' code uses beta 2 and 1000 steps, eps 2e-3) reach
the exact cost to ~1e-3 relative at b = 64 (tested against POT's ot.emd2). Layers: `layers`, feature
indices into the feats list, default the stage outputs feat[1:-1] (the paper does not say). Where the
student's channels differ from the teacher's, an owned linear 1x1 conv (bias-free; nn.Linear for
vectors) maps the student to the teacher's width; where the spatial sizes differ (resnet32x4 ->
ShuffleV2) the larger map is average-pooled to the smaller size first. Costs and plans run in
float32 with autocast off. The teacher features are detached. The cell weight is the paper's alpha.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kd.errors import KDError
from kd.methods.contract import Context, Method, Step
from kd.registry import METHODS


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(b, ...) student, (b', ...) teacher -> (b, b') cost 1 - cos, in float32."""
    with torch.autocast(x.device.type, enabled=False):
        x = F.normalize(x.flatten(1).float(), dim=1)            # (b, D)
        y = F.normalize(y.flatten(1).float(), dim=1)            # (b', D)
        return 1.0 - x @ y.t()


@torch.no_grad()
def ipot_plan(C: torch.Tensor, beta: float = 0.1, n_outer: int = 100, n_inner: int = 1) -> torch.Tensor:
    """(..., n, m) costs -> (..., n, m) transport plans with uniform marginals 1/n, 1/m."""
    with torch.autocast(C.device.type, enabled=False):
        C = C.float()
        n, m = C.shape[-2:]
        mu = C.new_full(C.shape[:-1], 1.0 / n)                  # (..., n)
        nu = C.new_full(C.shape[:-2] + (m,), 1.0 / m)           # (..., m)
        G = torch.exp(-C / beta)
        T, sigma = torch.ones_like(C), nu.clone()
        for _ in range(n_outer):
            Q = G * T
            for _ in range(n_inner):
                delta = mu / (Q @ sigma.unsqueeze(-1)).squeeze(-1)                   # (..., n)
                sigma = nu / (Q.transpose(-1, -2) @ delta.unsqueeze(-1)).squeeze(-1)  # (..., m)
            T = delta.unsqueeze(-1) * Q * sigma.unsqueeze(-2)
        return T


class OTFeatureMethod(Method):
    """Layer pairing, projectors and per-layer cost matrices shared by IPOT and REMD."""

    def __init__(self, ctx: Context, layers: list[int] | None = None):
        super().__init__(ctx)
        n = len(ctx.s_shapes)
        self.layers = list(range(1, n - 1)) if layers is None else [int(i) for i in layers]
        proj = {}
        for i in self.layers:
            try:
                s, t = ctx.s_shapes[i], ctx.t_shapes[i]
            except IndexError:
                raise KDError(f"OT layer {i} is not a feature index of both networks "
                              f"({n} student, {len(ctx.t_shapes)} teacher features)") from None
            if len(s) != len(t):
                raise KDError(f"OT layer {i}: student feature {tuple(s)} and teacher {tuple(t)} differ in rank")
            if s[1] != t[1]:  # channels differ: owned linear map student -> teacher width
                proj[str(i)] = nn.Conv2d(s[1], t[1], 1, bias=False) if len(s) == 4 else nn.Linear(s[1], t[1], bias=False)
        self.proj = nn.ModuleDict(proj)

    def costs(self, step: Step) -> torch.Tensor:
        """(L, b, b) cosine costs, one per matched layer."""
        out = []
        for i in self.layers:
            x, y = step.s_feats[i], step.t_feats[i].detach()    # (b, C_s, H_s, W_s), (b, C_t, H_t, W_t)
            if x.dim() == 4 and x.shape[2:] != y.shape[2:]:
                hw = (min(x.shape[2], y.shape[2]), min(x.shape[3], y.shape[3]))
                x, y = F.adaptive_avg_pool2d(x, hw), F.adaptive_avg_pool2d(y, hw)
            if str(i) in self.proj:
                x = self.proj[str(i)](x)
            out.append(cosine_cost(x, y))
        return torch.stack(out)


@METHODS.register("ipot")
class IPOT(OTFeatureMethod):
    def __init__(self, ctx: Context, layers: list[int] | None = None, beta: float = 0.1,
                 n_outer: int = 100, n_inner: int = 1):
        super().__init__(ctx, layers)
        self.beta, self.n_outer, self.n_inner = beta, n_outer, n_inner

    def forward(self, step: Step) -> torch.Tensor:
        C = self.costs(step)                                    # (L, b, b)
        T = ipot_plan(C.detach(), self.beta, self.n_outer, self.n_inner)
        return (T * C).sum()
