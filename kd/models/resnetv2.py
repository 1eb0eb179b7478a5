"""CIFAR ResNet50 (bottleneck blocks [3, 4, 6, 3], 3x3 stride-1 stem, no max-pool).

Follows HobbitLong/RepDistiller models/resnetv2.py (same state_dict layout, same
features); also megvii-research/mdistiller models/cifar/resnetv2.py. Unlike mdistiller
(which lists [256, 512, 1024, 2048]), get_stage_channels lists the channels of
feats[:-1] including the stem, like every other model here.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from kd.models.resnet import Stage
from kd.models.featurenet import FeatureNet
from kd.registry import MODELS


class Bottleneck(nn.Module):
    """1x1-3x3(stride)-1x1 (x4 expansion) + shortcut; returns (relu(sum), sum)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(pre), pre


class ResNetV2(FeatureNet):
    def __init__(self, depths=(3, 4, 6, 3), num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        planes = (64, 128, 256, 512)
        self.stage_channels = [64] + [p * Bottleneck.expansion for p in planes]
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (p, n, stride) in enumerate(zip(planes, depths, (1, 2, 2, 2)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, p, stride if j == 0 else 1))
                cin = p * Bottleneck.expansion
            setattr(self, f"layer{i}", Stage(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def head(self, fmap):
        return self.linear(self.avgpool(fmap).flatten(1))

    def extract(self, x, preact: bool = False):
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, p1 = self.layer1(f0)
        f2, p2 = self.layer2(f1)
        f3, p3 = self.layer3(f2)
        f4, p4 = self.layer4(f3)
        emb = self.avgpool(f4).flatten(1)
        logits = self.linear(emb)
        feats = [f0, p1, p2, p3, p4, emb] if preact else [f0, f1, f2, f3, f4, emb]
        return feats, logits

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self):
        return [self.layer1[-1].bn3, self.layer2[-1].bn3, self.layer3[-1].bn3, self.layer4[-1].bn3]


@MODELS.register("ResNet50")
def resnet50(num_classes=100, **kw):
    return ResNetV2((3, 4, 6, 3), num_classes, **kw)
