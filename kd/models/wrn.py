"""CIFAR Wide ResNets WRN-d-k (pre-activation blocks, depth 6n+4).

Follows HobbitLong/RepDistiller models/wrn.py (same state_dict layout, same
features); get_stage_channels as in megvii-research/mdistiller models/cifar/wrn.py.
wrn_10_2 and wrn_28_2 are not in RepDistiller but are the same family.

Preact features are the BN outputs that the next stage's first block (resp. the
final bn1) applies anyway: RepDistiller calls those BNs a second time, we reuse the
single result, so values match and running statistics are updated once per step.
"""
from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

from kd.models.featurenet import FeatureNet
from kd.registry import MODELS


class BasicBlock(nn.Module):
    """bn-relu-conv-bn-relu-conv; the shortcut is identity, or a 1x1 conv on relu(bn1(x))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.equal_in_out = cin == cout
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def from_preact(self, x, pre):
        """The block's output given x and pre = self.bn1(x)."""
        a = F.relu(pre)
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.convShortcut is None else self.convShortcut(a))

    def forward(self, x):
        return self.from_preact(x, self.bn1(x))


class NetworkBlock(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def from_preact(self, x, pre):
        """The stage's output given x and pre = self.layer[0].bn1(x)."""
        blocks = iter(self.layer)
        x = next(blocks).from_preact(x, pre)
        for block in blocks:
            x = block(x)
        return x

    def forward(self, x):
        return self.layer(x)


class WideResNet(FeatureNet):
    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        assert (depth - 4) % 6 == 0, "depth must be 6n+4"
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.stage_channels = ch
        self.conv1 = nn.Conv2d(3, ch[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def _pool_fc(self, pre):
        a = F.relu(pre)
        emb = F.avg_pool2d(a, a.shape[2:]).flatten(1)
        return emb, self.fc(emb)

    def head(self, fmap):
        return self._pool_fc(self.bn1(fmap))[1]

    def extract(self, x, preact: bool = False):
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        p1 = self.block2.layer[0].bn1(f1)
        f2 = self.block2.from_preact(f1, p1)
        p2 = self.block3.layer[0].bn1(f2)
        f3 = self.block3.from_preact(f2, p2)
        p3 = self.bn1(f3)
        emb, logits = self._pool_fc(p3)
        feats = [f0, p1, p2, p3, emb] if preact else [f0, f1, f2, f3, emb]
        return feats, logits

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self):
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


@MODELS.register("wrn_10_2")
def wrn_10_2(num_classes=100, **kw):
    return WideResNet(10, 2, num_classes, **kw)


@MODELS.register("wrn_16_1")
def wrn_16_1(num_classes=100, **kw):
    return WideResNet(16, 1, num_classes, **kw)


@MODELS.register("wrn_16_2")
def wrn_16_2(num_classes=100, **kw):
    return WideResNet(16, 2, num_classes, **kw)


@MODELS.register("wrn_28_2")
def wrn_28_2(num_classes=100, **kw):
    return WideResNet(28, 2, num_classes, **kw)


@MODELS.register("wrn_40_1")
def wrn_40_1(num_classes=100, **kw):
    return WideResNet(40, 1, num_classes, **kw)


@MODELS.register("wrn_40_2")
def wrn_40_2(num_classes=100, **kw):
    return WideResNet(40, 2, num_classes, **kw)
