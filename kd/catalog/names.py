"""The registered model, method and dataset names, read without importing torch.

Names live once, in their registration (`@MODELS.register("resnet8")`, `@METHODS.register("kd")`,
`@DATASETS.register("cifar10", classes=10)`). Listing cells (`kd list`, `kd find`) must stay fast, so
this module reads those calls from the source files (`ast`) instead of importing the packages;
tests/test_layout.py checks that the sets read here equal the registries after import.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

from kd.errors import KDError

_KD = Path(__file__).resolve().parent.parent
_WHERE = {"model": ("models", "MODELS"), "method": ("methods", "METHODS"), "dataset": ("data", "DATASETS")}


@functools.lru_cache(maxsize=None)
def registered(kind: str) -> dict[str, dict]:
    """{name: facts} of every `<REGISTRY>.register("name", **facts)` call in the package of `kind`."""
    folder, registry = _WHERE[kind]
    out = {}
    for path in sorted((_KD / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == registry
                    and node.args and isinstance(node.args[0], ast.Constant)):
                out[node.args[0].value] = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return out


MODELS = frozenset(registered("model"))
METHODS = frozenset(registered("method"))
DATASETS = frozenset(registered("dataset"))
_SETS = {"model": MODELS, "method": METHODS, "dataset": DATASETS}


def check(kind: str, name: str) -> None:
    """Raise the registry's KDError for an unknown name (same message as kd.registry.Registry.get)."""
    valid = _SETS[kind]
    if name not in valid:
        raise KDError(f"unknown {kind} '{name}'; valid {kind}s: {', '.join(sorted(valid))}")
