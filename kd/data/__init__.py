"""Datasets: `load_dataset(name)` reads a registered dataset (kd.data.readers, kd.data.imagenet) from the
data root and applies its '-'-separated variants (kd.data.core)."""
from __future__ import annotations

import os

from kd.data import imagenet, readers  # noqa: F401  (register the datasets)
from kd.data.core import (Dataset, DeviceData, apply_variant, data_root, imbalance_counts, split_name,  # noqa: F401
                          symmetric_noise)
from kd.registry import DATASETS


def num_classes(name: str, root: str | os.PathLike | None = None) -> int:
    """Classes of a dataset, from its registration (no read) or, for a folder dataset, from its files."""
    base = split_name(name)[0]
    return getattr(DATASETS.get(base), "classes", None) or load_dataset(name, root).num_classes


def load_dataset(name: str, root: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """Load `name` (a registered dataset plus '-'-separated variants) from the data root."""
    base, variants = split_name(name)
    ds = DATASETS.get(base)(data_root(root))
    for v in variants:
        ds = apply_variant(ds, v, seed)
    ds.name = name
    return ds
