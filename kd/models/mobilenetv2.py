"""CIFAR MobileNetV2, width 0.5, expansion 6 (RepDistiller's `mobile_half`, registered as MobileNetV2).

Follows HobbitLong/RepDistiller models/mobilenetv2.py (same state_dict layout, same
features); get_stage_channels as in megvii-research/mdistiller models/cifar/mobilenetv2.py.
Every block ends in a BN without ReLU, so the preact features equal the plain ones.
"""
from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

from kd.models.featurenet import FeatureNet
from kd.registry import MODELS

# (expansion, channels, repeats, first stride); expansion None means "T"
SETTING = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
           (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(FeatureNet):
    def __init__(self, expand: int = 6, width_mult: float = 0.5, num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.stage_channels = [int(c * width_mult) for c in (32, 24, 32, 96, 320)]
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTING:
            cout = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, expand if t is None else t))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _pool_fc(self, fmap):
        out = self.conv2(fmap)
        emb = F.avg_pool2d(out, out.shape[2:]).flatten(1)
        return emb, self.classifier(emb)

    def head(self, fmap):
        return self._pool_fc(fmap)[1]

    def extract(self, x, preact: bool = False):
        b = self.blocks
        f0 = self.conv1(x)
        f1 = b[1](b[0](f0))
        f2 = b[2](f1)
        f3 = b[4](b[3](f2))
        f4 = b[6](b[5](f3))
        emb, logits = self._pool_fc(f4)
        return [f0, f1, f2, f3, f4, emb], logits

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.blocks])

    def get_bn_before_relu(self):
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]


@MODELS.register("MobileNetV2")
def mobile_half(num_classes=100, **kw):
    return MobileNetV2(6, 0.5, num_classes, **kw)
