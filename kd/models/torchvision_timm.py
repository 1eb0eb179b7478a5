"""ImageNet models: torchvision ResNets, the SRRL/DKD MobileNet v1, DeiT (timm), RegNetY-160 and
BiT-M R152x2 (timm), all with the zoo's interface (see kd.models). Never pretrained: weights come
from user checkpoints (kd.models.load_weights), which load strictly because every model keeps the
state_dict layout of the library that defines it.

tv_resnet18/34/50 (resnet50_in: alias for the FunMatch row)
    torchvision.models.resnet.ResNet subclasses (same keys as torchvision's resnet18/34/50).
    feats = [stem after the max-pool, layer1, layer2, layer3, layer4, pooled]; forward is
    torchvision's. preact=True runs the last block of each stage from its own modules with the
    final ReLU taken out (exact: same operations, so the logits do not change).
mobilenet_v1
    The MobileNet (v1, width 1.0, 32..1024 channels) of the SRRL and DKD ImageNet tables: the
    layout of megvii-research/mdistiller mdistiller/models/imagenet/mobilenetv1.py (itself that of
    clovaai/overhaul-distillation ImageNet/models/mobilenet.py, which jingyang2017/KD_SRRL uses):
    `model` = Sequential(conv_bn(3,32,s2), 13 depthwise-separable blocks, pool), `fc`; PyTorch's
    default init. One change: AvgPool2d(7) is AdaptiveAvgPool2d(1), equal at 224 px and usable at
    any size (no parameters, keys unchanged). feats = [stem (32 ch, model[0]), model[3] (128),
    model[5] (256), model[11] (512), model[13] (1024), pooled]: mdistiller's four stage features
    plus the stem; preact gives those four before their last ReLU (mdistiller's preact_feats).
deit_tiny / deit_small: timm deit_{tiny,small}_distilled_patch16_224 (class + distillation token)
deit_tiny_nodist / deit_small_nodist: timm deit_{tiny,small}_patch16_224 (no distillation token:
    the teacher-less DeiT baseline rows, whose distillation head would otherwise never train)
    feats = [tokens after the patch embedding + position embedding (B, T, D), outputs of blocks
    3, 6 and 9 (B, T, D), the final normed tokens (B, T, D), the class-token embedding (B, D)]:
    token sequences, not 4-d maps, so map-based methods (AT, FitNet, ...) do not apply to them;
    get_stage_channels() gives D for each. No ReLU: preact equals post-activation
    (preact_equals_post = True); get_bn_before_relu raises KDError (a one-line user error: the method does not apply).
    The distillation token (distilled models only), as DeiT's models.py does it:
      - train mode: forward / extract logits are the CLASS-token head's (what the loop's CE reads);
      - eval mode: the average of the class and distillation heads (DeiT's test-time output);
      - `model.dist_logits(feats)` gives the distillation head's logits from the feats of the same
        extract() call: head_dist(feats[-2][:, 1]), a linear layer on a token that forward already
        computed, so no second forward and gradients flow into the same graph. kd.methods.deit
        (deit_hard / deit_soft) reads it; models without it (CNNs, *_nodist) have no attribute.
      - `head` stays timm's classifier nn.Linear (its state_dict keys), so for ViTs the zoo's
        map-level head is `head_logits(feats[-2])` (== logits in both modes); the `head` Linear
        of feats[-1] equals the logits in train mode only (eval averages the two heads).
regnety_160: timm regnety_160 (the DeiT teacher; 83.6M parameters). feats = [stem, s1..s4, pooled];
    preact: the input of each stage's last `act3` (the ReLU after the residual sum), caught by a
    forward pre-hook. head(fmap) is timm's ClassifierHead (pool + fc), so SRRL can use it.
bit_m_r152x2: timm resnetv2_152x2_bit (the FunMatch teacher, 236M parameters: build it only on a
    machine meant for it). feats = [stem, stages 1..4 (stage 4 after the final BN+ReLU), pooled].
    Pre-activation blocks end in a sum without ReLU, so preact equals post (preact_equals_post).
Every model has the class attribute preact_equals_post (True where extract(preact=True) returns
the same features, the ViTs and BiT). timm models are built with timm.create_model(pretrained=False) and re-classed (`__class__`) to a
subclass that only adds methods, so their parameters, buffers and keys are timm's own.

Importing torchvision.models or timm takes seconds, so this module imports neither: the methods
live in mixins here and each concrete class (TVResNet = _TVResNetMixin + torchvision ResNet, ...)
is composed on first use (`_compose`; also reachable as kd.models.torchvision_timm.TVResNet etc.).
"""
from __future__ import annotations

import functools
import importlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.errors import KDError
from kd.registry import MODELS

# concrete class -> (mixin name, "module:base class")
_BASES = {
    "TVResNet": ("_TVResNetMixin", "torchvision.models.resnet:ResNet"),
    "DeiT": ("_DeiTMixin", "timm.models.vision_transformer:VisionTransformer"),
    "DeiTDistilled": ("_DeiTDistilledMixin", "timm.models.deit:VisionTransformerDistilled"),
    "RegNetY": ("_RegNetMixin", "timm.models.regnet:RegNet"),
    "BiTResNetV2": ("_BiTMixin", "timm.models.resnetv2:ResNetV2"),
}


@functools.cache
def _compose(name: str) -> type:
    """The class `name` = its mixin + the library class, created (and its library imported) once."""
    mixin, where = _BASES[name]
    module, base = where.split(":")
    cls = type(name, (globals()[mixin], getattr(importlib.import_module(module), base)), {"__module__": __name__})
    globals()[name] = cls
    return cls


def __getattr__(name: str):               # PEP 562: kd.models.torchvision_timm.TVResNet etc. (and pickling)
    if name in _BASES:
        return _compose(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- torchvision ResNets -------------------------------------------------------------------------

def _run_last_block_preact(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(relu(sum), sum) of a torchvision BasicBlock/Bottleneck, from the block's own modules."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    if hasattr(block, "conv3"):                                      # Bottleneck
        out = block.bn3(block.conv3(block.relu(out)))
    pre = out + identity
    return F.relu(pre), pre


class _TVResNetMixin:
    """torchvision ResNet with the zoo's extract/head/... (state_dict identical to torchvision's)."""

    preact_equals_post = False

    def __init__(self, block, layers, num_classes: int = 1000, **kw):
        super().__init__(block, layers, num_classes=num_classes, **kw)
        self.num_classes = num_classes
        width = block.expansion
        self.stage_channels = [64] + [c * width for c in (64, 128, 256, 512)]

    def head(self, fmap):
        return self.fc(torch.flatten(self.avgpool(fmap), 1))

    def extract(self, x, preact: bool = False):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            if preact:
                x, pre = _run_last_block_preact(layer[-1], layer[:-1](x))
                feats.append(pre)
            else:
                x = layer(x)
                feats.append(x)
        emb = torch.flatten(self.avgpool(x), 1)
        feats.append(emb)
        return feats, self.fc(emb)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.maxpool,
                              self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self):
        last = "bn3" if hasattr(self.layer1[-1], "bn3") else "bn2"
        return [getattr(layer[-1], last) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def get_stage_channels(self):
        return list(self.stage_channels)


def _tv_resnet(block: str, layers: list[int], num_classes: int, **kw):
    from torchvision.models import resnet
    return _compose("TVResNet")(getattr(resnet, block), layers, num_classes, **kw)


@MODELS.register("tv_resnet18")
def tv_resnet18(num_classes=1000, **kw):
    return _tv_resnet("BasicBlock", [2, 2, 2, 2], num_classes, **kw)


@MODELS.register("tv_resnet34")
def tv_resnet34(num_classes=1000, **kw):
    return _tv_resnet("BasicBlock", [3, 4, 6, 3], num_classes, **kw)


@MODELS.register("tv_resnet50")
def tv_resnet50(num_classes=1000, **kw):
    return _tv_resnet("Bottleneck", [3, 4, 6, 3], num_classes, **kw)


@MODELS.register("resnet50_in")
def resnet50_in(num_classes=1000, **kw):
    """The ResNet-50 student of FunMatch (Beyer et al. CVPR 2022): torchvision's ResNet-50."""
    return tv_resnet50(num_classes, **kw)


# --- MobileNet v1 (SRRL / DKD ImageNet) -----------------------------------------------------------

def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


# (out channels, stride) of the 13 depthwise-separable blocks
_MBV1 = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
_MBV1_TAPS = (3, 5, 11, 13)          # blocks whose outputs are the stage features (mdistiller)


class MobileNetV1(nn.Module):
    preact_equals_post = False

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.num_classes = num_classes
        blocks, cin = [_conv_bn(3, 32, 2)], 32
        for cout, stride in _MBV1:
            blocks.append(_conv_dw(cin, cout, stride))
            cin = cout
        self.model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(1024, num_classes)

    def head(self, fmap):
        return self.fc(self.model[14](fmap).flatten(1))

    def extract(self, x, preact: bool = False):
        x = self.model[0](x)
        feats, start = [x], 1
        for tap in _MBV1_TAPS:
            pre = self.model[tap][:-1](self.model[start:tap](x))      # tap block without its last ReLU
            x = F.relu(pre)
            feats.append(pre if preact else x)
            start = tap + 1
        emb = self.model[14](x).flatten(1)
        feats.append(emb)
        return feats, self.fc(emb)

    def forward(self, x):
        return self.extract(x)[1]

    def get_feat_modules(self):
        return nn.ModuleList([self.model[:14]])

    def get_bn_before_relu(self):
        return [self.model[t][-2] for t in _MBV1_TAPS]

    def get_stage_channels(self):
        return [32, 128, 256, 512, 1024]


@MODELS.register("mobilenet_v1")
def mobilenet_v1(num_classes=1000, **kw):
    return MobileNetV1(num_classes, **kw)


# --- timm models -------------------------------------------------------------------------------------

def _timm(name: str, cls: str, num_classes: int, **kw) -> nn.Module:
    """timm.create_model(name, pretrained=False), re-classed to `cls` (a subclass adding methods only)."""
    import timm
    cls = _compose(cls)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    base = cls.__bases__[-1]          # the timm class; the others are method-only mixins
    if type(model) is not base:
        raise TypeError(f"timm {name} built a {type(model).__name__}, expected {base.__name__}")
    model.__class__ = cls
    model.num_classes = num_classes
    return model


class _TokenFeatures:
    """extract() for timm ViTs: feats = [embedded tokens, blocks at 1/4, 2/4, 3/4 depth, final normed
    tokens, class-token embedding]."""

    preact_equals_post = True

    def extract(self, x, preact: bool = False):
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        feats, depth = [x], len(self.blocks)
        taps = {depth // 4, depth // 2, 3 * depth // 4}
        for i, blk in enumerate(self.blocks, start=1):
            x = blk(x)
            if i in taps:
                feats.append(x)
        x = self.norm(x)
        feats += [x, self._cls_embedding(x)]
        return feats, self.head_logits(x)

    def forward(self, x):
        return self.extract(x)[1]

    def get_feat_modules(self):
        return nn.ModuleList([self.patch_embed, self.blocks, self.norm])

    def get_bn_before_relu(self):
        raise KDError(f"{type(self).__name__} has no BatchNorm before a ReLU")

    def get_stage_channels(self):
        return [self.embed_dim] * 5


class _DeiTMixin(_TokenFeatures):
    """timm VisionTransformer (class token only)."""

    def _cls_embedding(self, tokens):
        return self.fc_norm(self.pool(tokens))

    def head_logits(self, tokens):
        return self.head(self.head_drop(self._cls_embedding(tokens)))


class _DeiTDistilledMixin(_TokenFeatures):
    """timm VisionTransformerDistilled: class token (index 0) and distillation token (index 1)."""

    def _cls_embedding(self, tokens):
        return tokens[:, 0]

    def head_logits(self, tokens):
        cls = self.head(self.head_drop(tokens[:, 0]))
        if self.training:
            return cls
        return (cls + self.head_dist(self.head_drop(tokens[:, 1]))) / 2

    def dist_logits(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Distillation-head logits of the extract() call that produced `feats` (no new forward)."""
        return self.head_dist(self.head_drop(feats[-2][:, 1]))


class _RegNetMixin:
    """timm RegNet; preact from a pre-hook on each stage's last `act3` (its ReLU, not in-place)."""

    preact_equals_post = False

    def _stages(self):
        return [self.s1, self.s2, self.s3, self.s4]

    def extract(self, x, preact: bool = False):
        pres, hooks = [], []
        if preact:
            for s in self._stages():
                last = list(s.children())[-1]
                hooks.append(last.act3.register_forward_pre_hook(lambda m, args: pres.append(args[0])))
        try:
            x = self.stem(x)
            feats = [x]
            for s in self._stages():
                x = s(x)
                feats.append(x)
        finally:
            for h in hooks:
                h.remove()
        if preact:
            feats[1:] = pres
        x = self.final_conv(x)
        emb = self.head(x, pre_logits=True)
        feats.append(emb)
        return feats, self.head.fc(emb)

    def forward(self, x):
        return self.extract(x)[1]

    def get_feat_modules(self):
        return nn.ModuleList([self.stem, *self._stages()])

    def get_bn_before_relu(self):
        return [list(s.children())[-1].conv3.bn for s in self._stages()]

    def get_stage_channels(self):
        return [f["num_chs"] for f in self.feature_info]


class _BiTMixin:
    """timm ResNetV2 (pre-activation, BiT)."""

    preact_equals_post = True

    def extract(self, x, preact: bool = False):
        x = self.stem(x)
        feats = [x]
        for i, s in enumerate(self.stages):
            x = s(x)
            if i == len(self.stages) - 1:
                x = self.norm(x)
            feats.append(x)
        feats.append(self.head(x, pre_logits=True))
        return feats, self.head(x)

    def forward(self, x):
        return self.extract(x)[1]

    def get_feat_modules(self):
        return nn.ModuleList([self.stem, self.stages, self.norm])

    def get_bn_before_relu(self):
        raise KDError("pre-activation ResNet: its blocks end without BN+ReLU")

    def get_stage_channels(self):
        return [f["num_chs"] for f in self.feature_info]


@MODELS.register("deit_tiny")
def deit_tiny(num_classes=1000, **kw):
    return _timm("deit_tiny_distilled_patch16_224", "DeiTDistilled", num_classes, **kw)


@MODELS.register("deit_small")
def deit_small(num_classes=1000, **kw):
    return _timm("deit_small_distilled_patch16_224", "DeiTDistilled", num_classes, **kw)


@MODELS.register("deit_tiny_nodist")
def deit_tiny_nodist(num_classes=1000, **kw):
    return _timm("deit_tiny_patch16_224", "DeiT", num_classes, **kw)


@MODELS.register("deit_small_nodist")
def deit_small_nodist(num_classes=1000, **kw):
    return _timm("deit_small_patch16_224", "DeiT", num_classes, **kw)


@MODELS.register("regnety_160")
def regnety_160(num_classes=1000, **kw):
    return _timm("regnety_160", "RegNetY", num_classes, **kw)


@MODELS.register("bit_m_r152x2")
def bit_m_r152x2(num_classes=1000, **kw):
    return _timm("resnetv2_152x2_bit", "BiTResNetV2", num_classes, **kw)
