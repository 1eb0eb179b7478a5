"""A stand-in for kd.catalog.reftables.RefEntry, for comparator and report tests on synthetic tables."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class E:
    row: str
    column: str
    value: float
    cell_id: str | None
    metric: str = "top1"
    std: float | None = None
    higher_is_better: bool = True
    statistic: str = "last"
    tolerance: float = 0.5
    seed: int | None = None
    aggregate: str | None = None
    quoted_from: str | None = None
    note: str = ""
    erratum: str | None = None
    table_id: str = "t"
    runs: int | None = None
