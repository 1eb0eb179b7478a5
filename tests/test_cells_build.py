"""Every registered cell builds: its student and teacher models are constructed for the dataset's
class count, a probe batch gives their features, and every method of the cell is constructed from
that Context with the cell's hyperparameters (the same construction kd.engine.distiller.Distiller.build performs).
Models and probe features are built once per (model, classes, preact) and shared between cells."""
from __future__ import annotations

import functools

import pytest
import torch

import kd.methods  # noqa: F401
from kd.catalog.cells import load_cells, load_recipe
from kd.data import num_classes, split_name
from kd.methods.contract import Context
from kd.registry import METHODS
import zoo  # noqa: E402

CELLS = load_cells()
SIZE = {"imagenet": 224, "digits": 8}


def _hw(dataset: str) -> int:
    return SIZE.get(split_name(dataset)[0], 32)


def model(name: str, classes: int):
    return zoo.build(name, classes)


@functools.lru_cache(maxsize=None)
def shapes(name: str, classes: int, hw: int, preact: bool):
    with torch.no_grad():
        feats, _ = model(name, classes).extract(torch.randn(1, 3, hw, hw), preact=preact)
    return [f.shape for f in feats]


@pytest.fixture(scope="module", autouse=True)
def _free():
    yield
    zoo.build.cache_clear()
    shapes.cache_clear()


@pytest.mark.parametrize("cid", sorted(c for c in CELLS if CELLS[c].terms))   # baselines: models only, below
def test_cell_builds(cid):
    cell = CELLS[cid]
    k, hw = num_classes(cell.dataset), _hw(cell.dataset)
    classes = [METHODS.get(t["name"]) for t in cell.terms]
    preact = any(c.needs_preact for c in classes)
    student = model(cell.student, k)
    teacher = model(cell.teacher, k) if cell.teacher else None
    ctx = Context(student, teacher, shapes(cell.student, k, hw, preact),
                  shapes(cell.teacher, k, hw, preact) if cell.teacher else [], k, 1000,
                  load_recipe(cell.recipe).epochs, 10, (3, hw, hw))
    for cls, term in zip(classes, cell.terms):
        hp = {key: v for key, v in term.items() if key not in ("name", "weight")}
        m = cls(ctx, **hp)
        for stage in m.stages():
            assert stage.epochs >= 1 and stage.params, f"{cid}: stage {stage.name} is empty"


def test_every_model_of_every_cell_constructs():
    names = {(c.student, num_classes(c.dataset)) for c in CELLS.values()}
    names |= {(c.teacher, num_classes(c.dataset)) for c in CELLS.values() if c.teacher}
    for name, k in sorted(names):
        assert model(name, k).num_classes == k
