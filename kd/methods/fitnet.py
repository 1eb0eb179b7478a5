"""FitNet: Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin Deep Nets".
ICLR 2015, arXiv:1412.6550.

Implements the hint loss (paper eq. 3 up to the 1/2 and the mean): MSE(r(f_s), f_t) between the
teacher's hint layer and the student's guided layer passed through a convolutional regressor r.
Follows HobbitLong/RepDistiller `distiller_zoo/FitNet.py` (HintLoss) and `models/util.py` (ConvReg),
hint layer `feat[2]` (`--hint_layer 2`), as `train_student.py` / `helper/loops.py`.

ConvReg shape rules (RepDistiller): s_H == 2 t_H -> Conv 3x3 stride 2 pad 1; 2 s_H == t_H ->
ConvTranspose 4x4 stride 2 pad 1; s_H >= t_H -> Conv with kernel (1 + s_H - t_H, 1 + s_W - t_W);
otherwise refused. Then BatchNorm and ReLU. Conv layers keep their bias, as the reference.

`hint_epochs` = 0 (default): RepDistiller's single stage, the hint term added to CE in the main stage
(cell: ce_weight 1, fitnet weight 100). `hint_epochs` > 0: the paper's two stages -- a Stage 'hint'
of that many epochs trains only the student's parameters that reach the guided layer plus the
regressor on the hint loss alone (lr `hint_lr`, None = the recipe's); the main stage is then the
paper's KD stage (cell: kd term, fitnet weight 0; a zero-weight method still declares its stage).

Convention: nn.MSELoss mean over all elements; teacher detached; the cell weight multiplies it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kd.errors import KDError
from kd.methods.contract import Context, Method, Stage, Step
from kd.registry import METHODS


class ConvReg(nn.Module):
    def __init__(self, s_shape, t_shape, use_relu: bool = True):
        super().__init__()
        (_, s_c, s_h, s_w), (_, t_c, t_h, t_w) = s_shape, t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise KDError(f"ConvReg: student map {s_h}x{s_w} smaller than teacher {t_h}x{t_w} (not 1/2)")
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:           # (B, s_C, s_H, s_W) -> (B, t_C, t_H, t_W)
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


def params_reaching(model: nn.Module, layer: int, image_shape, device) -> list[nn.Parameter]:
    """The model's trainable parameters that feats[layer] depends on (autograd graph on a probe)."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()                                                  # no BN running-stat update
    try:
        with torch.enable_grad():
            feats, _ = model.extract(torch.zeros(2, *image_shape, device=device))
            grads = torch.autograd.grad(feats[layer].sum(), params, allow_unused=True)
    finally:
        model.train(was_training)
    return [p for p, g in zip(params, grads) if g is not None]


@METHODS.register("fitnet")
class FitNet(Method):
    def __init__(self, ctx: Context, hint_layer: int = 2, hint_epochs: int = 0, hint_lr: float | None = None):
        super().__init__(ctx)
        self.hint_layer, self.hint_epochs, self.hint_lr = hint_layer, hint_epochs, hint_lr
        self.regressor = ConvReg(ctx.s_shapes[hint_layer], ctx.t_shapes[hint_layer])
        self._guided = (params_reaching(ctx.student, hint_layer, ctx.image_shape, ctx.device)
                        if hint_epochs > 0 else [])

    def forward(self, step: Step) -> torch.Tensor:
        f_s = self.regressor(step.s_feats[self.hint_layer])      # (B, t_C, t_H, t_W)
        return F.mse_loss(f_s, step.t_feats[self.hint_layer].detach())

    def stages(self) -> list[Stage]:
        if self.hint_epochs <= 0:
            return []
        return [Stage("hint", self.hint_epochs, self._guided + list(self.regressor.parameters()),
                      self.forward, self.hint_lr)]
