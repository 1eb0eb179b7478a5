"""AB: Heo, Lee, Yun, Choi. "Knowledge Transfer via Distillation of Activation Boundaries Formed by
Hidden Neurons". AAAI 2019, arXiv:1811.03233.

Implements the alternative (hinge-squared) loss of eq. (6) on pre-ReLU features, per layer l:
L_l = sum [ (r(s) + m)^2 * 1{r(s) > -m, t <= 0} + (r(s) - m)^2 * 1{r(s) <= m, t > 0} ],
with r a connector (identity when shapes match, else conv + BN without ReLU, RepDistiller's
ConvReg(use_relu=False)), summed over elements; L = sum_l 2^(l-n+1) * L_l / B * 3/1000 over the
n layers feat[1:-1] (deeper layers weigh more). Follows HobbitLong/RepDistiller
`distiller_zoo/AB.py` (ABLoss, margin 1.0), `models/util.py` (Connector), `helper/pretrain.py`
(init stage) and `train_student.py` ('abound', `--init_epochs 30`).

Convention: teacher features detached; the stage 'ab_init' trains the student's feature modules
(`get_feat_modules()`) and the connectors on L alone for init_epochs at the recipe LR. As
RepDistiller's init(), the stage puts the student in eval mode and then only the connectors and the
feature modules in train mode: a student layer outside get_feat_modules() keeps its running
statistics -- for WRN the final bn1, so the third (most heavily weighted) pre-ReLU map is bn1 on
its running statistics (at initialisation: mean 0, var 1, i.e. about the raw block output), and
bn1's statistics do not move in the stage. forward()
returns the same L for main training, but RepDistiller's main stage uses loss_kd = 0 for 'abound'
(`helper/loops.py`): its script's `-b 1` is inert, so the RepDistiller-faithful cell gives ab
weight 0 (CE only after the init stage); a nonzero weight keeps AB as a main-stage term (variant).
Both networks' features are the pre-ReLU maps (`needs_preact`, RepDistiller's preact=True).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kd.methods.contract import Context, Method, Stage, Step
from kd.registry import METHODS


def connector(s: torch.Size, t: torch.Size) -> nn.Module:
    """Student map (B, C_s, H_s, W_s) -> teacher shape (B, C_t, H_t, W_t); RepDistiller's ConvReg."""
    (_, cs, hs, ws), (_, ct, ht, wt) = s, t
    if cs == ct and hs == ht:
        return nn.Identity()
    if hs == 2 * ht:
        conv = nn.Conv2d(cs, ct, 3, stride=2, padding=1)
    elif hs * 2 == ht:
        conv = nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1)
    elif hs >= ht:
        conv = nn.Conv2d(cs, ct, (1 + hs - ht, 1 + ws - wt))
    else:
        raise ValueError(f"AB connector: student map {hs}x{ws} cannot be mapped to teacher {ht}x{wt}")
    return nn.Sequential(conv, nn.BatchNorm2d(ct))


def ab_layer_loss(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    """Sum over all elements of the hinge-squared activation-boundary loss (eq. 6)."""
    neg = ((s > -margin) & (t <= 0)).to(s.dtype)
    pos = ((s <= margin) & (t > 0)).to(s.dtype)
    return ((s + margin).pow(2) * neg + (s - margin).pow(2) * pos).sum()


@METHODS.register("ab")
class AB(Method):
    needs_preact = True

    def __init__(self, ctx: Context, margin: float = 1.0, init_epochs: int = 30, init_lr: float | None = None,
                 layers: list[int] | None = None):
        super().__init__(ctx)
        self.layers = list(layers) if layers is not None else list(range(1, len(ctx.s_shapes) - 1))
        self.margin, self.init_epochs, self.init_lr = margin, init_epochs, init_lr
        self.connectors = nn.ModuleList(connector(ctx.s_shapes[i], ctx.t_shapes[i]) for i in self.layers)
        n = len(self.layers)
        self.w = [2.0 ** (i - n + 1) for i in range(n)]               # 1/2^(n-1), ..., 1/2, 1
        self._feat_modules = tuple(ctx.student.get_feat_modules())   # a tuple: not our submodules

    def forward(self, step: Step) -> torch.Tensor:
        bsz = step.s_feats[0].shape[0]
        terms = [w * ab_layer_loss(conn(step.s_feats[i]),                # (B, C_t, H_t, W_t) pre-ReLU
                                   step.t_feats[i].detach(), self.margin) / bsz * 3 / 1000
                 for w, i, conn in zip(self.w, self.layers, self.connectors)]
        return torch.stack(terms).sum()

    def stages(self) -> list[Stage]:
        if self.init_epochs <= 0:
            return []
        feat_params = [p for m in self._feat_modules for p in m.parameters()]
        return [Stage("ab_init", self.init_epochs, list(self.connectors.parameters()) + feat_params,
                      self.forward, self.init_lr, train_modules=[self.connectors, *self._feat_modules])]
