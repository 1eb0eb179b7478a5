"""Two tiny conv nets for the demo and the tests: tiny_t (teacher) and tiny_s (student).

Our own definition (no published counterpart), with the same interface as the CIFAR zoo:
a conv-bn-relu stem, three stages (stride 1, 2, 2) of conv-bn[-relu-conv-bn] whose last
ReLU is applied outside the stage (so preact features exist), global average pooling,
and a linear classifier. Any input size works.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from kd.models.featurenet import FeatureNet
from kd.registry import MODELS


def _stage(cin: int, cout: int, stride: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, stride=stride if i == 0 else 1, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers[:-1])


class TinyNet(FeatureNet):
    def __init__(self, widths: tuple[int, int, int, int], convs: int, num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.stage_channels = list(widths)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stage1 = _stage(widths[0], widths[1], 1, convs)
        self.stage2 = _stage(widths[1], widths[2], 2, convs)
        self.stage3 = _stage(widths[2], widths[3], 2, convs)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def head(self, fmap):
        return self.fc(self.pool(fmap).flatten(1))

    def extract(self, x, preact: bool = False):
        f0 = self.stem(x)
        p1 = self.stage1(f0)
        f1 = F.relu(p1)
        p2 = self.stage2(f1)
        f2 = F.relu(p2)
        p3 = self.stage3(f2)
        f3 = F.relu(p3)
        emb = self.pool(f3).flatten(1)
        logits = self.fc(emb)
        feats = [f0, p1, p2, p3, emb] if preact else [f0, f1, f2, f3, emb]
        return feats, logits

    def get_feat_modules(self):
        return nn.ModuleList([self.stem, self.stage1, self.stage2, self.stage3])

    def get_bn_before_relu(self):
        return [self.stage1[-1], self.stage2[-1], self.stage3[-1]]


@MODELS.register("tiny_t")
def tiny_t(num_classes=100, **kw):
    return TinyNet((16, 16, 32, 64), 2, num_classes, **kw)


@MODELS.register("tiny_s")
def tiny_s(num_classes=100, **kw):
    return TinyNet((8, 8, 16, 16), 1, num_classes, **kw)
