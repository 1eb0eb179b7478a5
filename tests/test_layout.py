"""The shape of the package, held by a test: no import cycle, one module per name, the catalog without
torch, data and records below the engine, classes and functions short enough to read, names listed
once (in their registrations) and read without torch exactly as registered."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

KD = Path(__file__).resolve().parent.parent / "kd"
MAX_CLASS, MAX_FUNCTION = 150, 60
LONG_ALLOWED = {"kd.cli.main"}          # the argument parser: one declaration per option


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(KD.rglob("*.py")):
        parts = p.relative_to(KD.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, mods: dict) -> set[str]:
    """Every kd module `name` imports, at module level or inside a function."""
    out = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in mods and t != name}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports(n, p, mods) for n, p in mods.items()}


def test_no_import_cycle():
    g, state, stack, cycles = graph(), {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"
    for n in sorted(g):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_two_modules_of_one_name():
    names = [p.stem for p in KD.rglob("*.py") if p.name != "__init__.py"]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def _imported_by(prefix: str) -> dict[str, set[str]]:
    return {n: deps for n, deps in graph().items() if n == prefix or n.startswith(prefix + ".")}


def test_layers():
    for n, deps in _imported_by("kd.catalog").items():
        assert all(d.startswith("kd.catalog") or d == "kd.errors" for d in deps), (n, deps)
    for n, deps in _imported_by("kd.data").items():
        assert not any(d.startswith(("kd.engine", "kd.records", "kd.commands")) for d in deps), (n, deps)
    for n, deps in _imported_by("kd.records").items():
        assert not any(d.startswith(("kd.engine", "kd.models", "kd.methods", "kd.commands")) for d in deps), (n, deps)
    for n, deps in _imported_by("kd.engine").items():
        assert not any(d.startswith(("kd.commands", "kd.analysis", "kd.cli")) for d in deps), (n, deps)


def test_the_catalog_imports_no_torch():
    code = ("import sys, kd.catalog.cells, kd.catalog.reftables, kd.catalog.spec, kd.catalog.names, kd.analysis.lookup;"
            "bad = [m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=KD.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    for p in (KD / "catalog").glob("*.py"):
        tree = ast.parse(p.read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
               {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in mods if m.split(".")[0] in ("torch", "numpy", "torchvision", "timm")}, p


def test_classes_and_functions_are_short():
    long = []
    for name, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
                if size > limit and f"{name}.{node.name}" not in LONG_ALLOWED:
                    long.append(f"{name}.{node.name}: {size} lines (limit {limit})")
    assert not long, long


def test_names_read_without_torch_equal_the_registered_names():
    import kd.data  # noqa: F401
    import kd.methods  # noqa: F401
    import kd.models  # noqa: F401
    from kd.catalog import names
    from kd.registry import DATASETS, METHODS, MODELS
    assert names.MODELS == set(MODELS) and names.METHODS == set(METHODS) and names.DATASETS == set(DATASETS)
    assert {n: f["classes"] for n, f in names.registered("dataset").items()} == {n: DATASETS[n].classes for n in DATASETS}


def test_a_method_is_its_file():
    """Every method module is imported by the package without a list to edit, and says which tiny teacher its
    tests use; every registered method has a golden value."""
    import json
    import kd.methods  # noqa: F401
    from kd.registry import METHODS
    golden = json.loads((KD.parent / "tests" / "golden" / "losses.json").read_text())
    assert set(METHODS) <= set(golden)
    assert all(cls.test_teacher in ("tiny_t", "tiny_s") for cls in METHODS.values())
    assert "import" not in (KD / "methods" / "__init__.py").read_text().split("pkgutil")[1].split("def ")[0].replace(
        "importlib.import_module", "")
