"""CIFAR ShuffleNetV2 (net size 1: stages 116/232/464, 3/7/3 blocks, 1024-d conv2), registered as ShuffleV2.

Follows HobbitLong/RepDistiller models/ShuffleNetv2.py (same state_dict layout, same
features); get_stage_channels as in megvii-research/mdistiller models/cifar/ShuffleNetv2.py.
Each stage is a DownBlock followed by n BasicBlocks. A stage's preact feature is
cat(x1, bn3 output) of its last block, before the ReLU and the channel shuffle.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.models.shufflenetv1 import channel_shuffle
from kd.models.featurenet import FeatureNet
from kd.errors import KDError
from kd.registry import MODELS


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, dw: bool = False):
    return (nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=cin if dw else 1, bias=False),
            nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Split channels in half; the second half goes 1x1-dw3x3-1x1; concat; shuffle.
    Returns (out, preact)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1, self.bn1 = _conv_bn(c, c, 1)
        self.conv2, self.bn2 = _conv_bn(c, c, 3, dw=True)
        self.conv3, self.bn3 = _conv_bn(c, c, 1)

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
        pre = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)
        return out, torch.cat([x1, pre], 1)


class DownBlock(nn.Module):
    """Stride-2 block: left dw3x3-1x1, right 1x1-dw3x3-1x1, concat, shuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = _conv_bn(cin, cin, 3, 2, dw=True)
        self.conv2, self.bn2 = _conv_bn(cin, mid, 1)
        self.conv3, self.bn3 = _conv_bn(cin, mid, 1)
        self.conv4, self.bn4 = _conv_bn(mid, mid, 3, 2, dw=True)
        self.conv5, self.bn5 = _conv_bn(mid, mid, 1)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class Stage(nn.Sequential):
    """DownBlock, then BasicBlocks; returns (out, preact of the last BasicBlock)."""

    def forward(self, x):
        blocks = iter(self)
        x = next(blocks)(x)
        pre = x
        for block in blocks:
            x, pre = block(x)
        return x, pre


class ShuffleNetV2(FeatureNet):
    def __init__(self, widths=(116, 232, 464, 1024), depths=(3, 7, 3), num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.stage_channels = [24, *widths[:3]]
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (w, n) in enumerate(zip(widths[:3], depths), start=1):
            setattr(self, f"layer{i}", Stage(DownBlock(cin, w), *[BasicBlock(w) for _ in range(n)]))
            cin = w
        self.conv2 = nn.Conv2d(cin, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def _pool_fc(self, fmap):
        out = F.relu(self.bn2(self.conv2(fmap)))
        emb = F.avg_pool2d(out, out.shape[2:]).flatten(1)
        return emb, self.linear(emb)

    def head(self, fmap):
        return self._pool_fc(fmap)[1]

    def extract(self, x, preact: bool = False):
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = self.layer1(f0)
        f2, p2 = self.layer2(f1)
        f3, p3 = self.layer3(f2)
        emb, logits = self._pool_fc(f3)
        feats = [f0, p1, p2, p3, emb] if preact else [f0, f1, f2, f3, emb]
        return feats, logits

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        raise KDError("ShuffleV2 has no single BN before its stage ReLUs (as in RepDistiller)")


@MODELS.register("ShuffleV2")
def shufflev2(num_classes=100, **kw):
    return ShuffleNetV2(num_classes=num_classes, **kw)
