"""Shared fixtures: tiny datasets written in the standard on-disk layouts, isolated stores."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch


def write_cifar(root, kind: str = "cifar100", n_train: int = 96, n_test: int = 48, seed: int = 0):
    """A tiny CIFAR-10/100 in the python-pickle layout, with a learnable signal (class-dependent
    mean colour) so that short runs can improve on chance."""
    rng = np.random.default_rng(seed)
    classes = 100 if kind == "cifar100" else 10

    def make(n):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.float32) * 0.5
        x[:, 0] += (y[:, None, None] * 97 % 128)
        return x.clip(0, 255).astype(np.uint8).reshape(n, -1), y.tolist()

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    if kind == "cifar100":
        d = root / "cifar-100-python"
        d.mkdir(parents=True, exist_ok=True)
        for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
            with open(d / name, "wb") as f:
                pickle.dump({"data": x, "fine_labels": y}, f)
    else:
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True, exist_ok=True)
        parts = np.array_split(np.arange(n_train), 5)
        for i, idx in enumerate(parts, 1):
            with open(d / f"data_batch_{i}", "wb") as f:
                pickle.dump({"data": xtr[idx], "labels": [ytr[j] for j in idx]}, f)
        with open(d / "test_batch", "wb") as f:
            pickle.dump({"data": xte, "labels": yte}, f)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, "cifar100")
    write_cifar(root, "cifar10")
    return root


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    """Results and checkpoints in a temporary folder, never in the repository."""
    monkeypatch.setenv("KD_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    return tmp_path


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)   # small tensors: threads cost more than they give, and CI has 2 cores
    yield
