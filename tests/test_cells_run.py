"""Registered cells of each dataset kind run a smoke recipe end to end on tiny generated data in the
standard on-disk layouts (CIFAR-100, CIFAR-10, SVHN .mat, label noise, class imbalance; the image
folder / ImageNet kind is in test_imagenet.py), teacher first, and record the variant they used."""
from __future__ import annotations

import numpy as np
import pytest

from kd.catalog.cells import find_cell
from kd.records.results import read_records
from kd.engine import run_cell

SMOKE = {"epochs": 1, "batch_size": 48}


@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory):
    from scipy.io import savemat
    root = tmp_path_factory.mktemp("svhn_data")
    (root / "svhn").mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 32)):
        y = rng.integers(1, 11, (n, 1))                       # SVHN labels 1..10 (10 = digit 0)
        x = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
        savemat(root / "svhn" / f"{split}_32x32.mat", {"X": x, "y": y})
    return root


@pytest.mark.parametrize("cid, info_key", [
    ("cifar100/kd/resnet20_from_resnet56/crd", None),
    ("cifar10/fitnet/resnet8_from_resnet26/sarfraz", None),
    ("cifar10-noisy0.2/kd/wrn_16_2_from_wrn_40_2/sarfraz", "noise_rate"),
    ("cifar10-imb0.2/kd/wrn_16_2_from_wrn_40_2/sarfraz", "class_counts"),
])
def test_registered_cell_runs(cid, info_key, data_root, isolated):
    rec = run_cell(find_cell(cid), 0, device="cpu", overrides=SMOKE, data_root=data_root, progress=False,
                   log=lambda *a: None)
    assert rec["status"] == "ok" and rec["cell_id"] == cid.rsplit("/", 1)[0] + "/" + rec["recipe"]
    assert "~" in rec["recipe"]                                   # a smoke run never poses as the protocol
    teacher, = [r for r in read_records(isolated / "results") if r["label"] == "baseline"]
    assert rec["teacher_cell"] == teacher["cell_id"]
    if info_key:                                                  # the teacher saw the same corrupted set
        assert rec["config"]["dataset_info"][info_key] == teacher["config"]["dataset_info"][info_key]


def test_svhn_cell_runs(svhn_root, isolated):
    cell = find_cell("svhn/kd/wrn_16_2_from_wrn_40_2/svhn_ot")
    rec = run_cell(cell, 0, device="cpu", overrides=SMOKE, data_root=svhn_root, progress=False, log=lambda *a: None)
    assert rec["status"] == "ok" and rec["config"]["num_train"] == 64 and rec["config"]["num_test"] == 32
