"""Stand-ins for kd.catalog.reftables.RefEntry (E) and RefTable (T), for comparator, verdict and report
tests on synthetic tables."""
from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass
class T:
    """A reference table of `entries`; its rows and columns, unless given, in the entries' order."""
    entries: list
    id: str = "t"
    title: str = "synthetic"
    baseline_row: str | None = None
    proxy: str | None = None
    gain_tolerance: float | None = None
    source: dict = field(default_factory=lambda: {"paper": "synthetic"})
    rows: list = None
    columns: list = None

    def __post_init__(self):
        self.rows = self.rows or [{"label": lab} for lab in dict.fromkeys(e.row for e in self.entries)]
        self.columns = self.columns or [{"label": lab} for lab in dict.fromkeys(e.column for e in self.entries)]
