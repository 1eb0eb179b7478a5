"""The in-memory dataset, its variants (label noise, class imbalance, subsets) and batches on the device.

Every dataset is loaded into memory as uint8 tensors (N, C, H, W) plus int64 labels. Training
augmentation runs on whole batches on the training device (no per-image Python):
  random crop of the zero-padded image (RepDistiller's RandomCrop(32, padding=4): the padding is
  black pixels, i.e. zero *before* normalisation), horizontal flip with p = 0.5 drawn per sample,
  then per-dataset normalisation. Evaluation normalises only.

The data root comes from `--data-root` or the KD_DATA_ROOT environment variable (default ./data).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from kd.errors import KDError

def data_root(override: str | os.PathLike | None = None) -> Path:
    return Path(override or os.environ.get("KD_DATA_ROOT") or "data")          # an empty KD_DATA_ROOT is unset


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor          # (N, C, H, W) uint8
    train_y: torch.Tensor          # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]        # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    crop_pad: int = 4
    flip: bool = True
    info: dict = field(default_factory=dict)   # variant facts recorded with every result

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    def on_device(self, device: torch.device) -> "DeviceData":
        """The batch source the training loop uses (a streaming dataset returns its own)."""
        return DeviceData(self, device)


# --- variants ---------------------------------------------------------------------------------

_VARIANT = re.compile(r"^(noisy|imb|sub|test)([0-9.]+)$")


def split_name(name: str) -> tuple[str, list[str]]:
    """'cifar10-noisy0.2-sub1000' -> ('cifar10', ['noisy0.2', 'sub1000'])."""
    base, *variants = name.split("-")
    return base, variants


def symmetric_noise(y: torch.Tensor, rate: float, num_classes: int, seed: int) -> torch.Tensor:
    """Symmetric label noise (Co-teaching's `noisify`, as NeurAI-Lab/NCT uses): each training label
    is flipped with probability `rate` to one of the other C-1 classes, uniformly."""
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < rate
    shift = torch.randint(1, num_classes, (len(y),), generator=g)
    return torch.where(flip, (y + shift) % num_classes, y)


def imbalance_counts(n_per_class: int, num_classes: int, gamma: float) -> list[int]:
    """Class-imbalance profile (ASSUMED: the source does not define γ). Power law over the class
    index, n_c = n_max * ((c + 1) / C) ** (1 / γ): γ = ∞ is balanced, larger γ is milder, which is
    what the source's baseline trend requires (accuracy rises from γ = 0.2 to γ = 2). For C = 10,
    γ = 1 keeps 10%..100% of each class; γ = 0.2 keeps 0.001%..100% (at least 1 image)."""
    return [max(1, int(round(n_per_class * ((c + 1) / num_classes) ** (1.0 / gamma))))
            for c in range(num_classes)]


def apply_variant(ds: Dataset, variant: str, seed: int = 0) -> Dataset:
    """Deterministic in `seed`; the test set is never changed."""
    m = _VARIANT.match(variant)
    if not m:
        raise KDError(f"unknown dataset variant '{variant}'; valid: noisy<rate>, imb<gamma>, sub<n>, test<n>, "
                      f"e.g. cifar10-noisy0.2")
    kind = m.group(1)
    try:
        val = float(m.group(2))
    except ValueError:
        raise KDError(f"dataset variant '{variant}': '{m.group(2)}' is not a number") from None
    if kind in ("sub", "test") and (val != int(val) or val < 1):
        raise KDError(f"dataset variant '{variant}': the size must be a whole number >= 1")
    if kind == "imb" and not val > 0:
        raise KDError(f"dataset variant '{variant}': the imbalance gamma must be > 0")
    g = torch.Generator().manual_seed(seed)
    if kind == "noisy":
        if not 0 <= val < 1:
            raise KDError(f"noise rate must be in [0, 1), got {val}")
        y = symmetric_noise(ds.train_y, val, ds.num_classes, seed)
        info = {"noise": "symmetric", "noise_rate": val, "noise_seed": seed,
                "labels_changed": int((y != ds.train_y).sum())}
        return replace(ds, train_y=y, info={**ds.info, **info})
    if kind == "imb":
        n_max = int(torch.bincount(ds.train_y, minlength=ds.num_classes).min())
        counts = imbalance_counts(n_max, ds.num_classes, val)
        keep = []
        for c, n in enumerate(counts):
            idx = (ds.train_y == c).nonzero().flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
        keep = torch.cat(keep).sort().values
        info = {"imbalance": "power", "gamma": val, "class_counts": counts, "imbalance_seed": seed}
        return replace(ds, train_x=ds.train_x[keep], train_y=ds.train_y[keep], info={**ds.info, **info})
    n = int(val)
    if kind == "test":  # a seeded subset of the test set, for short CPU runs; recorded in the result
        if n > len(ds.test_y):
            raise KDError(f"test subset of {n} asked, but {ds.name} has {len(ds.test_y)} test images")
        keep = torch.randperm(len(ds.test_y), generator=g)[:n].sort().values
        return replace(ds, test_x=ds.test_x[keep], test_y=ds.test_y[keep],
                       info={**ds.info, "test_subset": n, "test_subset_seed": seed})
    if n > ds.num_train:
        raise KDError(f"subset of {n} asked, but {ds.name} has {ds.num_train} training images")
    keep = torch.randperm(ds.num_train, generator=g)[:n].sort().values
    return replace(ds, train_x=ds.train_x[keep], train_y=ds.train_y[keep],
                   info={**ds.info, "subset": n, "subset_seed": seed})


def _missing(what: Path, how: str) -> KDError:
    return KDError(f"dataset not found: {what} is missing; {how} (data root: set --data-root or KD_DATA_ROOT)")


# --- batches on the device ----------------------------------------------------------------------

class DeviceData:
    """The dataset moved once to the device, with batch iterators that augment on the device."""

    def __init__(self, ds: Dataset, device: torch.device):
        self.ds = ds
        self.device = device
        self.train_x = ds.train_x.to(device)
        self.train_y = ds.train_y.to(device)
        self.test_x = ds.test_x.to(device)
        self.test_y = ds.test_y.to(device)
        self.mean = torch.tensor(ds.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(ds.std, device=device).view(1, -1, 1, 1)

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    @property
    def num_test(self) -> int:
        return len(self.test_y)

    def probe(self, n: int) -> torch.Tensor:
        """A few normalised training images, to learn feature shapes."""
        return self.normalise(self.train_x[:n])

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float().div_(255) - self.mean) / self.std

    def augment(self, x_uint8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Zero-padded random crop + random horizontal flip on a (B, C, H, W) batch."""
        x = x_uint8.float().div_(255)
        B, C, H, W = x.shape
        p = self.ds.crop_pad
        if p:
            x = torch.nn.functional.pad(x, (p, p, p, p))                  # black border, as PIL's pad
            oy = torch.randint(0, 2 * p + 1, (B, 1), device=x.device, generator=gen)
            ox = torch.randint(0, 2 * p + 1, (B, 1), device=x.device, generator=gen)
            rows = (oy + torch.arange(H, device=x.device)).view(B, 1, H, 1)
            cols = (ox + torch.arange(W, device=x.device)).view(B, 1, 1, W)
            x = x.gather(2, rows.expand(B, C, H, W + 2 * p)).gather(3, cols.expand(B, C, H, W))
        if self.ds.flip:
            flip = torch.rand(B, device=x.device, generator=gen) < 0.5
            x = torch.where(flip.view(B, 1, 1, 1), x.flip(3), x)
        return (x - self.mean) / self.std

    def train_batches(self, batch_size: int, gen: torch.Generator, shard=None):
        """Shuffled batches of (index, images, labels); the last, smaller batch is kept
        (drop_last=False, as RepDistiller). Several processes (kd.engine.dist) hand in `shard`, which
        maps a global batch's size to this rank's slice: every rank draws the same permutation and
        augments the whole global batch (the generator advances as in one process), then keeps its slice."""
        n = len(self.train_y)
        order = torch.randperm(n, device=self.device, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            x = self.augment(self.train_x[idx], gen)
            if shard is not None:
                s = shard(len(idx))
                idx, x = idx[s], x[s]
            yield idx, x, self.train_y[idx]

    def test_batches(self, batch_size: int = 1000):
        for i in range(0, len(self.test_y), batch_size):
            yield self.normalise(self.test_x[i:i + batch_size]), self.test_y[i:i + batch_size]
