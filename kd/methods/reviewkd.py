"""ReviewKD: Chen, Liu, Zhao, Jia. "Distilling Knowledge via Knowledge Review". CVPR 2021,
arXiv:2104.09044.

Implements the review mechanism with attention-based fusion (ABF) and the hierarchical context
loss (HCL). Levels l = 1..n are the stage maps feat[1:-1] plus the pooled embedding as a 1x1 map.
From the deepest level down, ABF_l maps the student's level-l map to a mid width (1x1 conv + BN),
fuses it with the upsampled (nearest) residual of level l+1 by a 2-channel sigmoid attention
(1x1 conv on their concatenation), resizes to the teacher's size and outputs a teacher-width map
(3x3 conv + BN); the fused mid map is the residual passed down. HCL per level:
(MSE(F_s, F_t) + sum_{k in 4,2,1; k < H} 2^-j MSE(pool_k F_s, pool_k F_t)) / (1 + sum 2^-j),
j = 1, 2, 3 counting the pyramid levels used; L = sum over levels.
Follows megvii-research/mdistiller `mdistiller/distillers/ReviewKD.py` (ABF, hcl_loss; mid width
min(512, C of the student's pooled feature); kaiming_uniform(a=1) on the ABF convs) and
`mdistiller/engine/cfg.py` (REVIEWKD: weight 1.0, warm-up 20 epochs; its resnet32x4->resnet8x4 config
uses weight 5.0), with the channels and sizes read from the probe shapes instead of the config.

Convention: the teacher uses pre-ReLU stage maps (mdistiller's preact_feats[1:]) and its pooled
feature, detached; the student hands the fusion modules its plain stage outputs and pooled feature
(`student_preact = False`: mdistiller's STU_PREACT False, the official dvlab-research/ReviewKD
code's student features). The plain output equals ReLU(pre-ReLU map) for ResNet, ResNetV2, VGG,
ShuffleV1 and the tiny nets, but not for WRN (the block output f, not ReLU(BN(f))), MobileNetV2
(its blocks end in a BN without ReLU) or ShuffleV2 (the channel shuffle follows the ReLU), so the
loop extracts each network's own kind. If the levels differ in number the last ones are paired. The
loss is multiplied by min((step.epoch + 1) / warmup_epochs, 1) (mdistiller's 1-based epoch); the
cell carries REVIEWKD_WEIGHT; CE weight 1.0. The teacher runs in eval mode (mdistiller's Distiller).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.methods.contract import Context, Method, Step
from kd.methods.dkd import warmup_factor
from kd.registry import METHODS


class ABF(nn.Module):
    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid))
        self.conv2 = nn.Sequential(nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.att = nn.Sequential(nn.Conv2d(2 * c_mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, res, out_hw):
        x = self.conv1(x)                                             # (B, C_mid, H_s, W_s)
        if self.att is not None:
            res = F.interpolate(res, x.shape[-2:], mode="nearest")    # residual of the deeper level
            z = self.att(torch.cat([x, res], dim=1))                  # (B, 2, H_s, W_s)
            x = x * z[:, :1] + res * z[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_hw):
            x = F.interpolate(x, out_hw, mode="nearest")
        return self.conv2(x), x                                       # (B, C_t, H_t, W_t), residual


def hcl_loss(fs_list, ft_list) -> torch.Tensor:
    total = []
    for fs, ft in zip(fs_list, ft_list):
        loss, cnt, tot = F.mse_loss(fs, ft), 1.0, 1.0
        for k in (4, 2, 1):
            if k >= fs.shape[2]:
                continue
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, k), F.adaptive_avg_pool2d(ft, k)) * cnt
            tot += cnt
        total.append(loss / tot)
    return torch.stack(total).sum()


@METHODS.register("reviewkd")
class ReviewKD(Method):
    needs_preact = True               # the teacher's maps
    student_preact = False            # the student's: plain stage outputs

    def __init__(self, ctx: Context, warmup_epochs: float = 20.0, max_mid_channel: int = 512):
        super().__init__(ctx)
        ns, nt = len(ctx.s_shapes) - 1, len(ctx.t_shapes) - 1       # levels: feat[1:-1] + pooled
        n = min(ns, nt)
        self.s_idx = list(range(len(ctx.s_shapes)))[-n:]             # e.g. [1, 2, 3, 4]
        self.t_idx = list(range(len(ctx.t_shapes)))[-n:]
        self.t_hw = [tuple(ctx.t_shapes[j][2:]) or (1, 1) for j in self.t_idx]
        c_mid = min(max_mid_channel, ctx.s_shapes[-1][1])
        self.abfs = nn.ModuleList(ABF(ctx.s_shapes[i][1], c_mid, ctx.t_shapes[j][1], l < n - 1)
                                  for l, (i, j) in enumerate(zip(self.s_idx, self.t_idx)))
        self.warmup_epochs = warmup_epochs

    @staticmethod
    def _as_map(f: torch.Tensor) -> torch.Tensor:
        return f if f.dim() == 4 else f[:, :, None, None]            # pooled (B, C) -> (B, C, 1, 1)

    def forward(self, step: Step) -> torch.Tensor:
        xs = [self._as_map(step.s_feats[i]) for i in self.s_idx]       # plain student maps, as they are
        ts = [self._as_map(step.t_feats[j]).detach() for j in self.t_idx]
        outs, res = [], None
        for l in reversed(range(len(xs))):                            # deepest level first
            out, res = self.abfs[l](xs[l], res, self.t_hw[l])
            outs.insert(0, out)
        return warmup_factor(step.epoch, self.warmup_epochs) * hcl_loss(outs, ts)
