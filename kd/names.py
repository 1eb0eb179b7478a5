"""The registered model, method and dataset names, without importing torch.

Listing cells (`kd list`, `kd find`) validates names against these sets so that it stays fast; the
registries (kd.registry, filled by importing kd.models / kd.methods / kd.data) are the truth, and
tests/test_cli_ux.py checks that these sets equal them. Add a name here when you register one.
"""
from __future__ import annotations

from kd.errors import KDError

MODELS = frozenset(
    "MobileNetV2 ResNet50 ShuffleV1 ShuffleV2 bit_m_r152x2 deit_small deit_small_nodist deit_tiny "
    "deit_tiny_nodist mobilenet_v1 regnety_160 resnet110 resnet14 resnet20 resnet26 resnet32 resnet32x4 "
    "resnet44 resnet50_in resnet56 resnet8 resnet8x4 tiny_s tiny_t tv_resnet18 tv_resnet34 tv_resnet50 "
    "vgg11 vgg13 vgg16 vgg19 vgg8 wrn_10_2 wrn_16_1 wrn_16_2 wrn_28_2 wrn_40_1 wrn_40_2".split())
METHODS = frozenset(
    "ab at bss cc crd deit_hard deit_soft dkd dml fitnet fsp ft ipot kd kdsvd nst ofd one pkt remd reviewkd "
    "rkd rkd_a rkd_d rkd_da sp srd srrl vid".split())
DATASETS = frozenset("cifar10 cifar100 cifar10_jpeg digits imagenet svhn svhn_extra".split())

_SETS = {"model": MODELS, "method": METHODS, "dataset": DATASETS}


def check(kind: str, name: str) -> None:
    """Raise the registry's KDError for an unknown name (same message as kd.registry.Registry.get)."""
    valid = _SETS[kind]
    if name not in valid:
        raise KDError(f"unknown {kind} '{name}'; valid {kind}s: {', '.join(sorted(valid))}")
