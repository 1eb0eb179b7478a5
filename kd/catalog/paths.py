"""Where the suite's data lives: benchmarks/ (cells, recipes) and reference_tables/.

From a source checkout (or an editable install) they are the folders at the repository root. A wheel or
sdist ships them inside the package as kd/_benchmarks and kd/_reference_tables (the mapping is in
pyproject.toml, [tool.setuptools.package-dir]); the installed copy is used when it exists.
"""
from __future__ import annotations

from pathlib import Path

PKG = Path(__file__).resolve().parent.parent      # the kd package
REPO = PKG.parent          # the source checkout (meaningless for an installed wheel)


def _find(installed: str, source: str) -> Path:
    return PKG / installed if (PKG / installed).is_dir() else REPO / source


BENCHMARKS = _find("_benchmarks", "benchmarks")
REFERENCE_TABLES = _find("_reference_tables", "reference_tables")
