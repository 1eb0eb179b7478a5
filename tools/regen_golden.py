"""The only writer of tests/golden/losses.json: each method's loss on a fixed small input.

    python tools/regen_golden.py          # after adding a method, or an intended change of a method's numbers

tests/test_golden.py recomputes every value and fails when one moves beyond the tolerance below, so a
change of a loss formula, a default hyperparameter or a reduction cannot pass unnoticed. A rewrite
touches only what moved: a stored value that the recomputation matches within that tolerance stays as
stored (float rounding of another torch build or CPU is no change), a method that moved is rewritten
whole, a new method added, a removed one dropped. Commit the file together with the change that
justifies it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GOLDEN = REPO / "tests" / "golden" / "losses.json"
# A stored value still holds when |recomputed - stored| <= max(REL * |stored|, ABS): pytest.approx's rule,
# with which tests/test_golden.py checks it.
REL, ABS = 2e-4, 1e-6


def unchanged(stored: dict[str, float], got: dict[str, float]) -> bool:
    """The same named terms, each within the tolerance."""
    return sorted(stored) == sorted(got) and all(abs(got[k] - stored[k]) <= max(REL * abs(stored[k]), ABS)
                                                 for k in stored)


def tiny_teacher(name: str) -> str:
    """The tiny teacher of a method's checks, as the method declares it (`Method.test_teacher`)."""
    import kd.methods  # noqa: F401
    from kd.registry import METHODS
    return METHODS[name].test_teacher


def method_losses(name: str) -> dict[str, float]:
    """Named loss terms of method `name` for tiny_s <- tiny_teacher(name) (10 classes) on a fixed batch of 8
    16x16 images, every random draw seeded, each network's features of the kind the method reads
    (`Method.kinds()`). The teacher is frozen as the loop freezes it for this method
    (`teacher_mode`); the student is in train mode, as in the training loop."""
    import kd.methods  # noqa: F401
    import kd.models  # noqa: F401
    from kd.methods.contract import Context, Step
    from kd.registry import METHODS, MODELS
    from kd.engine.teacher import freeze
    torch.manual_seed(0)
    s, t = MODELS["tiny_s"](num_classes=10), MODELS[tiny_teacher(name)](num_classes=10)
    cls = METHODS[name]
    freeze(t, cls.teacher_mode)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    idx = torch.arange(8)
    s_pre, t_pre = cls.kinds()
    with torch.no_grad():
        s.eval()
        sf, _ = s.extract(x[:2], preact=s_pre)
        tf, _ = t.extract(x[:2], preact=t_pre)
    torch.manual_seed(2)
    m = cls(Context(s, t, [f.shape for f in sf], [f.shape for f in tf], 10, 64, 10, 8, (3, 16, 16)))
    s.train(), m.train()
    torch.manual_seed(3)
    sf, sl = s.extract(x, preact=s_pre)
    with torch.no_grad():
        tf, tl = t.extract(x, preact=t_pre)
    out = m(Step(x, y, idx, sl, sf, tl, tf, 1, s, t))
    terms = out if isinstance(out, dict) else {"loss": out}
    return {k: float(v.detach()) for k, v in sorted(terms.items())}


def all_losses() -> dict[str, dict[str, float]]:
    from kd.registry import METHODS
    import kd.methods  # noqa: F401
    torch.set_num_threads(1)
    return {name: method_losses(name) for name in sorted(METHODS)}


def regenerate(stored: dict[str, dict[str, float]]) -> tuple[dict, dict[str, list[str]]]:
    """(the golden values to store, {"kept"|"changed"|"added"|"removed": method names})."""
    got = all_losses()
    out, what = {}, {"kept": [], "changed": [], "added": [], "removed": sorted(set(stored) - set(got))}
    for name, values in got.items():
        if name in stored and unchanged(stored[name], values):
            out[name] = stored[name]
            what["kept"].append(name)
        else:
            out[name] = values
            what["changed" if name in stored else "added"].append(name)
    return out, what


if __name__ == "__main__":
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    values, what = regenerate(stored)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"{GOLDEN}: " + "; ".join(f"{k} {len(v)}" + (f" ({', '.join(v)})" if v and k != "kept" else "")
                                    for k, v in what.items()))
