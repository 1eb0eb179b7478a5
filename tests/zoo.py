"""Models for tests, built once per (name, classes) in eval mode with seed 0, and freed per module."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import kd.models  # noqa: F401
from kd.registry import MODELS


@functools.lru_cache(maxsize=None)
def build(name: str, num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return MODELS.get(name)(num_classes=num_classes).eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def free_models():
    """Use as `pytestmark = pytest.mark.usefixtures("free_models")`: drop the cache after the module."""
    yield
    build.cache_clear()
