"""`kd run` path for every method: one CIFAR-shaped cell per method (32x32 CIFAR-100 pickles,
generated) completes through the training loop, stages included, and appends a result line."""
from __future__ import annotations

import pytest

import kd.methods  # noqa: F401
from kd.catalog.cells import Cell
from kd.registry import METHODS
from kd.records.results import read_records
from kd.engine import run_cell
from test_methods_common import tiny_teacher

SHORT_STAGE = {"ab": {"init_epochs": 1}, "fsp": {"init_epochs": 1}, "ft": {"init_epochs": 1},
               "fitnet": {"hint_epochs": 1}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")          # one teacher for every method's cell


@pytest.mark.parametrize("name", sorted(METHODS))
def test_cell_per_method_runs_and_records(name, data_root, store, tmp_path):
    cls = METHODS[name]
    teacher = tiny_teacher(name) if cls.needs_teacher else None
    term = {"name": name, "weight": 1.0, **SHORT_STAGE.get(name, {})}
    cell = Cell("cifar100", name, "tiny_s", teacher, "crd", terms=(term,))
    rec = run_cell(cell, 0, device="cpu", overrides={"epochs": 1, "batch_size": 48}, data_root=data_root,
                   store=store, results_dir=tmp_path, progress=False, log=lambda *a: None)
    assert rec["status"] == "ok" and len(rec["curve"]) == 1
    assert len(rec["stage_curve"]) == (1 if name in SHORT_STAGE else 0)
    lines = [r for r in read_records(tmp_path) if r["label"] == name]
    assert len(lines) == 1 and lines[0]["cell_id"] == rec["cell_id"]


def test_stages_run_in_order_with_their_epochs_before_main_training(data_root, store, tmp_path):
    terms = ({"name": "fitnet", "weight": 0.0, "hint_epochs": 2}, {"name": "fsp", "weight": 0.0, "init_epochs": 1},
             {"name": "kd", "weight": 0.9})
    cell = Cell("cifar100", "fitnet+fsp+kd", "tiny_s", "tiny_t", "crd", ce_weight=0.1, terms=terms)
    rec = run_cell(cell, 0, device="cpu", overrides={"epochs": 2, "batch_size": 48}, data_root=data_root,
                   store=store, results_dir=tmp_path, progress=False, log=lambda *a: None)
    assert [(e["stage"], e["epoch"]) for e in rec["stage_curve"]] == [("hint", 1), ("hint", 2), ("fsp_init", 1)]
    assert [e["epoch"] for e in rec["curve"]] == [1, 2]
