"""FT: Kim, Park, Kwak. "Paraphrasing Complex Network: Network Compression via Factor Transfer".
NeurIPS 2018, arXiv:1802.04977.

Stage 'paraphraser' (init_epochs): a convolutional auto-encoder P on the teacher map T = feat_t[-2]
is trained alone on the reconstruction loss MSE(P_dec(P_enc(T)), T). Main training: a translator
Tr on the student map S = feat_s[-2] is trained with the factor loss
L_FT = mean | F(Tr(S)) - F(P_enc(T)) |,   F(f) = normalize_2( mean_c f**2 )   (B, H*W),
the larger map being average-pooled to the smaller. Follows HobbitLong/RepDistiller
`distiller_zoo/FT.py` (FactorTransfer p1=2, p2=1), `models/util.py` (Paraphraser k=0.5 without BN,
Translator k=0.5 with BN, LeakyReLU 0.1), `helper/pretrain.py` and `train_student.py` ('factor').

Convention: as RepDistiller: the factor is the L2-normalised channel-mean of squares per sample
(the paper's eq. (3) normalises the whole factor tensor; RepDistiller reduces it to a spatial map),
p = 1, mean over batch and positions; cell weight 200 (`-a 0 -b 200`). The paraphraser is frozen
in main training: its factor is computed under no_grad, so its parameters never get a gradient and
SGD leaves them untouched (no weight decay, no momentum), as RepDistiller keeps it out of the optimizer.
The stage LR `init_lr` is 0.01 as RepDistiller's init for ResNet/WRN students (it uses the
recipe LR for others: pass init_lr=None). As RepDistiller's init(), only the paraphraser is in
train mode during its stage (the student's BatchNorm statistics do not move), and the stage runs no
student forward at all (`student_forward=False`): its loss reads the teacher's map only.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Stage, Step
from kd.registry import METHODS


def _chain(chans: list[int], bn: bool, conv=nn.Conv2d) -> nn.Sequential:
    """3x3 (transposed) convs along `chans`, each followed by [BN] and LeakyReLU(0.1)."""
    layers: list[nn.Module] = []
    for a, b in zip(chans[:-1], chans[1:]):
        layers += [conv(a, b, 3, 1, 1)] + ([nn.BatchNorm2d(b)] if bn else []) + [nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def factor(f: torch.Tensor, p1: float = 2.0) -> torch.Tensor:
    return F.normalize(f.pow(p1).mean(1).flatten(1), dim=1)          # (B, C, H, W) -> (B, H*W)


def factor_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    hs, ht = f_s.shape[2], f_t.shape[2]
    if hs > ht:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif hs < ht:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    return (factor(f_s) - factor(f_t)).abs().mean()


@METHODS.register("ft")
class FT(Method):
    def __init__(self, ctx: Context, k: float = 0.5, init_epochs: int = 30, init_lr: float | None = 0.01,
                 layer: int = -2):
        super().__init__(ctx)
        c_s, c_t = ctx.s_shapes[layer][1], ctx.t_shapes[layer][1]
        c_f = int(c_t * k)
        self.layer, self.init_epochs, self.init_lr = layer, init_epochs, init_lr
        self.encoder = _chain([c_t, c_t, c_f, c_f], bn=False)                       # paraphraser
        self.decoder = _chain([c_f, c_f, c_t, c_t], bn=False, conv=nn.ConvTranspose2d)
        self.translator = _chain([c_s, c_s, c_f, c_f], bn=True)

    def paraphraser_params(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) + list(self.decoder.parameters())

    def _init_loss(self, step: Step) -> torch.Tensor:
        f_t = step.t_feats[self.layer].detach()                       # (B, C_t, H, W)
        return F.mse_loss(self.decoder(self.encoder(f_t)), f_t)

    def stages(self) -> list[Stage]:
        if self.init_epochs <= 0:
            return []
        return [Stage("paraphraser", self.init_epochs, self.paraphraser_params(), self._init_loss, self.init_lr,
                      train_modules=[self.encoder, self.decoder], student_forward=False)]

    def forward(self, step: Step) -> torch.Tensor:
        with torch.no_grad():                                         # paraphraser frozen after its stage
            factor_t = self.encoder(step.t_feats[self.layer])         # (B, c_f, H_t, W_t)
        factor_s = self.translator(step.s_feats[self.layer])          # (B, c_f, H_s, W_s)
        return factor_loss(factor_s, factor_t)
