"""Every method's loss on a fixed small input equals its stored golden value (tools/regen_golden.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from regen_golden import GOLDEN, method_losses  # noqa: E402

import kd.methods  # noqa: E402,F401
from kd.registry import METHODS  # noqa: E402

STORED = json.loads(GOLDEN.read_text())


def test_every_method_has_a_golden_value():
    assert sorted(STORED) == sorted(METHODS), "run tools/regen_golden.py after adding or removing a method"


@pytest.mark.parametrize("name", sorted(STORED))
def test_golden_value_unchanged(name):
    got = method_losses(name)
    assert sorted(got) == sorted(STORED[name])
    for term, want in STORED[name].items():
        assert got[term] == pytest.approx(want, rel=2e-4, abs=1e-6), f"{name}.{term}"
