"""FSP: Yim, Joo, Bae, Kim. "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning". CVPR 2017 (no arXiv).

Implements the FSP ("flow of solution procedure") matrices G_ij = mean_{h,w} F1_i(h,w) F2_j(h,w)
between consecutive feature maps and the loss sum over pairs of mean((G_s - G_t)^2) (paper eq. 1-2
with equal lambdas, mean instead of sum). Follows HobbitLong/RepDistiller `distiller_zoo/FSP.py`
(FSP), `train_student.py` and `helper/pretrain.py` ('fsp'): features `feat[:-1]`, pairs
(feat[i], feat[i+1]), the map with the larger height adaptive-average-pooled to the smaller (the
paper max-pools). Stage 'fsp_init' (`init_epochs` = 30): the student's `get_feat_modules()` train on
the unweighted FSP sum alone, at the recipe's lr (RepDistiller init()); as init(), the student is in
eval mode except those feature modules (and our connectors), so a layer outside them (WRN's final
bn1, unused by FSP's feat[:-1]) keeps its running statistics through the stage.

Convention: RepDistiller's main stage uses CE only (its loop sets loss_kd = 0 for 'fsp', so its
`-b 50` has no effect): a RepDistiller FSP cell is ce_weight 1 with the fsp term at weight 0 -- the
method still declares its stage, and forward returns the FSP sum, so a non-zero cell weight adds
FSP to the main stage as well. Teacher detached. RepDistiller refuses pairs whose channels differ;
here `connect` = None builds a 1x1 conv + BN connector (as RepDistiller's AB Connector) on each
student map whose channels differ from the teacher's (our extension, warned; True: the same, silently;
False: refuse).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from kd.errors import KDError
from kd.methods.at import match_hw
from kd.methods.contract import Context, Method, Stage, Step
from kd.registry import METHODS


def fsp_matrices(g: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for bot, top in zip(g[:-1], g[1:]):
        bot, top = match_hw(bot, top)
        out.append(torch.bmm(top.flatten(2), bot.flatten(2).transpose(1, 2)) / bot[0, 0].numel())  # (B, C_top, C_bot)
    return out


def fsp_loss(g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> torch.Tensor:
    g_t = [f.detach() for f in g_t]
    return sum((s - t).pow(2).mean() for s, t in zip(fsp_matrices(g_s), fsp_matrices(g_t)))


@METHODS.register("fsp")
class FSP(Method):
    def __init__(self, ctx: Context, init_epochs: int = 30, init_lr: float | None = None,
                 layers: list[int] | None = None, connect: bool | None = None):
        super().__init__(ctx)
        self.init_epochs, self.init_lr = init_epochs, init_lr
        n = len(ctx.s_shapes)
        self.layers = list(range(n - 1)) if layers is None else list(layers)  # feat[:-1]
        s_c = [ctx.s_shapes[i][1] for i in self.layers]
        t_c = [ctx.t_shapes[i][1] for i in self.layers]
        differ = s_c != t_c
        if differ and connect is False:
            raise KDError(f"fsp: student channels {s_c} differ from teacher channels {t_c} (RepDistiller refuses)")
        if differ and connect is None:
            warnings.warn(f"fsp: channels differ (student {s_c}, teacher {t_c}); adding 1x1 conv connectors")
        self.connectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s, t, 1, bias=False), nn.BatchNorm2d(t)) if s != t else nn.Identity()
            for s, t in zip(s_c, t_c)) if differ else None
        self._feat_modules = tuple(ctx.student.get_feat_modules())   # a tuple: not our submodules

    def _student_maps(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        g = [feats[i] for i in self.layers]
        return g if self.connectors is None else [c(f) for c, f in zip(self.connectors, g)]

    def forward(self, step: Step) -> torch.Tensor:
        return fsp_loss(self._student_maps(step.s_feats), [step.t_feats[i] for i in self.layers])

    def stages(self) -> list[Stage]:
        if self.init_epochs <= 0:
            return []
        own = [] if self.connectors is None else list(self.connectors.parameters())
        feat_params = [p for m in self._feat_modules for p in m.parameters()]
        modules = list(self._feat_modules) + ([] if self.connectors is None else [self.connectors])
        return [Stage("fsp_init", self.init_epochs, feat_params + own, self.forward, self.init_lr,
                      train_modules=modules)]
