"""CIFAR ResNets (depth 6n+2, BasicBlock) incl. the 4x-wide resnet8x4 / resnet32x4.

Follows HobbitLong/RepDistiller models/resnet.py (same state_dict layout, same
features); get_stage_channels as in megvii-research/mdistiller models/cifar/resnet.py.
resnet26 is not in RepDistiller but is the same family (n = 4).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from kd.models.featurenet import FeatureNet
from kd.registry import MODELS


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn + shortcut; returns (relu(sum), sum)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=True)))
        out += x if self.downsample is None else self.downsample(x)   # in place, as RepDistiller: same
        return F.relu(out), out                                       # numbers, less memory traffic


class Stage(nn.Sequential):
    """A sequence of blocks that each return (out, preact); returns the last pair."""

    def forward(self, x):
        pre = x
        for block in self:
            x, pre = block(x)
        return x, pre


class CifarResNet(FeatureNet):
    def __init__(self, depth: int, widths: list[int], num_classes: int = 100):
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n+2"
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.stage_channels = list(widths)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        for i, (w, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            blocks = [BasicBlock(cin if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i}", Stage(*blocks))
            cin = w
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def head(self, fmap):
        return self.fc(F.avg_pool2d(fmap, fmap.shape[2:]).flatten(1))

    def extract(self, x, preact: bool = False):
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1, p1 = self.layer1(f0)
        f2, p2 = self.layer2(f1)
        f3, p3 = self.layer3(f2)
        emb = F.avg_pool2d(f3, f3.shape[2:]).flatten(1)
        logits = self.fc(emb)
        feats = [f0, p1, p2, p3, emb] if preact else [f0, f1, f2, f3, emb]
        return feats, logits

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        return [self.layer1[-1].bn2, self.layer2[-1].bn2, self.layer3[-1].bn2]


_BASE, _X4 = [16, 16, 32, 64], [32, 64, 128, 256]


@MODELS.register("resnet8")
def resnet8(num_classes=100, **kw):
    return CifarResNet(8, _BASE, num_classes, **kw)


@MODELS.register("resnet14")
def resnet14(num_classes=100, **kw):
    return CifarResNet(14, _BASE, num_classes, **kw)


@MODELS.register("resnet20")
def resnet20(num_classes=100, **kw):
    return CifarResNet(20, _BASE, num_classes, **kw)


@MODELS.register("resnet26")
def resnet26(num_classes=100, **kw):
    return CifarResNet(26, _BASE, num_classes, **kw)


@MODELS.register("resnet32")
def resnet32(num_classes=100, **kw):
    return CifarResNet(32, _BASE, num_classes, **kw)


@MODELS.register("resnet44")
def resnet44(num_classes=100, **kw):
    return CifarResNet(44, _BASE, num_classes, **kw)


@MODELS.register("resnet56")
def resnet56(num_classes=100, **kw):
    return CifarResNet(56, _BASE, num_classes, **kw)


@MODELS.register("resnet110")
def resnet110(num_classes=100, **kw):
    return CifarResNet(110, _BASE, num_classes, **kw)


@MODELS.register("resnet8x4")
def resnet8x4(num_classes=100, **kw):
    return CifarResNet(8, _X4, num_classes, **kw)


@MODELS.register("resnet32x4")
def resnet32x4(num_classes=100, **kw):
    return CifarResNet(32, _X4, num_classes, **kw)
