"""Every method's loss on a fixed small input equals its stored golden value (tools/regen_golden.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from regen_golden import ABS, GOLDEN, REL, method_losses  # noqa: E402

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
        assert got[term] == pytest.approx(want, rel=REL, abs=ABS), f"{name}.{term}"


def test_regeneration_rewrites_only_what_moved(monkeypatch):
    """tools/regen_golden.py keeps a stored value the recomputation matches within the tolerance (float
    rounding of another build), rewrites a method that moved beyond it, adds new methods, drops gone ones."""
    import regen_golden
    got = {"same": {"loss": 1.0}, "moved": {"loss": 2.0}, "renamed": {"kl": 1.0}, "new": {"loss": 3.0}}
    monkeypatch.setattr(regen_golden, "all_losses", lambda: got)
    stored = {"same": {"loss": 1.0 * (1 + REL / 2)}, "moved": {"loss": 2.0 * (1 + 2 * REL)}, "renamed": {"loss": 1.0},
              "gone": {"loss": 0.0}}
    out, what = regen_golden.regenerate(stored)
    assert out == {"same": stored["same"], "moved": got["moved"], "renamed": got["renamed"], "new": got["new"]}
    assert what == {"kept": ["same"], "changed": ["moved", "renamed"], "added": ["new"], "removed": ["gone"]}
