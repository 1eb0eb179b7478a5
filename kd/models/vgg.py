"""CIFAR VGGs with batch norm (RepDistiller's vgg*_bn, registered as vgg8 ... vgg19).

Follows HobbitLong/RepDistiller models/vgg.py (same state_dict layout, same
features); get_stage_channels as in megvii-research/mdistiller models/cifar/vgg.py.
Five conv blocks, each ending in a BN whose ReLU is applied outside the block (so the
pre-activation is available); max-pool between blocks (pool3 only for 64x64 inputs).
"""
from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

from kd.models.featurenet import FeatureNet
from kd.registry import MODELS

CFGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(widths: list[int], cin: int) -> nn.Sequential:
    """[conv, bn, relu] per width, without the final relu."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(FeatureNet):
    def __init__(self, cfg: list[list[int]], num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.stage_channels = [c[-1] for c in cfg]
        cin = 3
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _block(widths, cin))
            cin = widths[-1]
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def head(self, fmap):
        return self.classifier(self.pool4(fmap).flatten(1))

    def extract(self, x, preact: bool = False):
        big = x.shape[2] == 64  # RepDistiller: an extra pool before block4 for 64x64 inputs
        f0 = F.relu(self.block0(x))
        p1 = self.block1(self.pool0(f0))
        f1 = F.relu(p1)
        p2 = self.block2(self.pool1(f1))
        f2 = F.relu(p2)
        p3 = self.block3(self.pool2(f2))
        f3 = F.relu(p3)
        p4 = self.block4(self.pool3(f3) if big else f3)
        f4 = F.relu(p4)
        emb = self.pool4(f4).flatten(1)
        logits = self.classifier(emb)
        feats = [f0, p1, p2, p3, p4, emb] if preact else [f0, f1, f2, f3, f4, emb]
        return feats, logits

    def get_feat_modules(self):
        return nn.ModuleList([self.block0, self.pool0, self.block1, self.pool1, self.block2,
                              self.pool2, self.block3, self.pool3, self.block4, self.pool4])

    def get_bn_before_relu(self):
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]


@MODELS.register("vgg8")
def vgg8(num_classes=100, **kw):
    return VGG(CFGS["vgg8"], num_classes, **kw)


@MODELS.register("vgg11")
def vgg11(num_classes=100, **kw):
    return VGG(CFGS["vgg11"], num_classes, **kw)


@MODELS.register("vgg13")
def vgg13(num_classes=100, **kw):
    return VGG(CFGS["vgg13"], num_classes, **kw)


@MODELS.register("vgg16")
def vgg16(num_classes=100, **kw):
    return VGG(CFGS["vgg16"], num_classes, **kw)


@MODELS.register("vgg19")
def vgg19(num_classes=100, **kw):
    return VGG(CFGS["vgg19"], num_classes, **kw)
