"""CIFAR ShuffleNetV1 (groups 3, stages 240/480/960, 4/8/4 blocks), registered as ShuffleV1.

Follows HobbitLong/RepDistiller models/ShuffleNetv1.py (same state_dict layout, same
features); also megvii-research/mdistiller models/cifar/ShuffleNetv1.py.
get_stage_channels lists the channels of feats[:-1]. get_bn_before_relu raises like
RepDistiller: the pre-activations are sums/concats, not the output of one BN.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.models.resnet import Stage
from kd.models.featurenet import FeatureNet
from kd.errors import KDError
from kd.registry import MODELS


def channel_shuffle(x, groups: int):
    """[N, g*c, H, W] -> [N, c*g, H, W] (interleave the groups)."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class Bottleneck(nn.Module):
    """1x1 group conv, shuffle, 3x3 depthwise (stride s), 1x1 group conv; add, or concat with
    an avg-pooled shortcut when s == 2. Returns (relu(pre), pre)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = cout // 4
        self.g1 = 1 if cin == 24 else groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        if self.stride == 2:
            pre = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            pre = out + x
        return F.relu(pre), pre


class ShuffleNetV1(FeatureNet):
    def __init__(self, widths=(240, 480, 960), depths=(4, 8, 4), groups: int = 3, num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.stage_channels = [24, *widths]
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for i, (w, n) in enumerate(zip(widths, depths), start=1):
            # the first block concatenates its input, so its branch makes w - cin channels
            blocks = [Bottleneck(cin, w - cin, 2, groups)] + [Bottleneck(w, w, 1, groups) for _ in range(n - 1)]
            setattr(self, f"layer{i}", Stage(*blocks))
            cin = w
        self.linear = nn.Linear(widths[-1], num_classes)

    def head(self, fmap):
        return self.linear(F.avg_pool2d(fmap, fmap.shape[2:]).flatten(1))

    def extract(self, x, preact: bool = False):
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = self.layer1(f0)
        f2, p2 = self.layer2(f1)
        f3, p3 = self.layer3(f2)
        emb = F.avg_pool2d(f3, f3.shape[2:]).flatten(1)
        logits = self.linear(emb)
        feats = [f0, p1, p2, p3, emb] if preact else [f0, f1, f2, f3, emb]
        return feats, logits

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        raise KDError("ShuffleV1 has no single BN before its stage ReLUs (as in RepDistiller)")


@MODELS.register("ShuffleV1")
def shufflev1(num_classes=100, **kw):
    return ShuffleNetV1(num_classes=num_classes, **kw)
