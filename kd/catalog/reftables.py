"""Published result tables, transcribed as printed, turned into reference entries keyed by cell id.

One YAML file per published table lives in ``reference_tables/<id>.yaml`` (format: reference_tables/README.md).
The grid under ``values:`` is the table exactly as printed (one printed row per line, cells separated by
'|'); row and column mappings say what each printed row/column *is* (method, models, dataset, recipe,
metric), and ``kd.catalog.ids.cell_id`` turns that into the id shared with cells, result records and reports.

Merge order for an entry's fields: table ``defaults`` < column < row (a row's ``note`` is appended to the
column's instead of replacing it). Every problem (bad YAML, unknown key or name, wrong grid shape,
unparsable cell) raises ``KDError("<file>:<line>: ...")``. Only ``yaml.safe_load`` (kd.catalog.yamlsafe.StrictLoader) is used.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kd.errors import KDError
from kd.catalog.yamlsafe import StrictLoader
from kd.catalog import names
from kd.catalog.ids import cell_id
from kd.catalog.paths import BENCHMARKS

# A reference entry may name only what is registered (kd.catalog.names), the recipes of
# benchmarks/recipes, and the methods below, which tables quote without an implementation here.
QUOTED_METHODS = frozenset("civt dearkd uskd funmatch".split())
KNOWN_MODELS = names.MODELS
KNOWN_METHODS = names.METHODS | QUOTED_METHODS | {"baseline"}
KNOWN_RECIPES = frozenset(p.stem for p in (BENCHMARKS / "recipes").glob("*.yaml"))
# Methods whose published number has no single teacher network (online KD, ensemble teachers).
TEACHERLESS = frozenset({"dml", "one", "civt"})
_DATASET_RE = re.compile(rf"^({'|'.join(sorted(names.DATASETS))})(-(noisy|imb|sub|test)\d+(\.\d+)?)*$")

METRICS = ("top1", "top5")
VALUE_KINDS = ("accuracy", "error")
STATISTICS = ("last", "best", "unknown")
CONFIDENCES = ("code", "seed", "x-check", "inferred", "memory", "unknown")
AGGREGATES = ("mean", "ensemble")

_REQUIRED = ("id", "title", "source", "metric", "value_kind", "statistic", "runs", "confidence",
             "tolerance", "columns", "rows", "values")
_OPTIONAL = ("values_confidence", "baseline_row", "baseline_column", "defaults", "errata", "assumptions",
             "cell_notes", "gain_tolerance", "proxy")
# Fields an entry carries that defaults/columns/rows may set.
_ENTRY_FIELDS = ("dataset", "method", "student", "teacher", "recipe", "metric", "seed", "aggregate",
                 "quoted_from", "note")
# Keys only meaningful on a row/column mapping.
_AXIS_KEYS = ("label", "printed", "info", "baseline_row")

_NUM = r"[-+]?\d+(?:\.\d+)?"
_CELL_RE = re.compile(rf"^({_NUM})\s*(?:±\s*({_NUM}))?$")
MISSING = "N/A"


@dataclass(frozen=True)
class RefEntry:
    """One published number: a (row, column) cell of a table, resolved to a cell id.

    ``value``/``std`` are as printed (an error rate stays an error rate: see ``higher_is_better``);
    ``accuracy`` converts to the accuracy scale. ``seed`` is set for single-network columns,
    ``aggregate`` says whether the number is a mean over runs or an ensemble's accuracy.
    ``erratum`` is set on cells the table's errata flag as wrongly printed: do not use them as targets.
    """
    table_id: str
    row: str
    column: str
    metric: str
    value: float
    std: float | None
    higher_is_better: bool
    statistic: str
    tolerance: float
    cell_id: str
    quoted_from: str | None = None
    note: str | None = None
    seed: int | None = None
    aggregate: str = "mean"
    # provenance and the names behind the cell id
    dataset: str = ""
    method: str = ""
    student: str | None = None
    teacher: str | None = None
    recipe: str = ""
    value_kind: str = "accuracy"
    runs: int | None = None
    confidence: str = "unknown"
    raw: str = ""
    erratum: str | None = None

    @property
    def printed(self) -> str:
        """The number as the table prints it, its decimals kept ('72.50', '73.26 ± 0.18'; not 72.5)."""
        m = _CELL_RE.match(_unmarked(self.raw))
        if m is None:
            return f"{self.value:g}" + (f" ± {self.std:g}" if self.std is not None else "")
        return m.group(1) + (f" ± {m.group(2)}" if m.group(2) is not None else "")

    @property
    def accuracy(self) -> float:
        """The value on the accuracy scale (100 - error for error tables)."""
        return self.value if self.value_kind == "accuracy" else round(100.0 - self.value, 6)


@dataclass(frozen=True)
class InfoCell:
    """A printed cell of an information column (e.g. FSP's 'Iter', DeiT's '#params'): not a result."""
    row: str
    column: str
    raw: str


@dataclass(frozen=True)
class RefTable:
    id: str
    title: str
    source: dict
    metric: str
    value_kind: str
    statistic: str
    runs: int | None
    confidence: str
    values_confidence: str | None
    tolerance: float
    baseline_row: str | None
    baseline_column: str | None
    rows: list
    columns: list
    entries: list
    info: list = field(default_factory=list)
    errata: list = field(default_factory=list)
    assumptions: list = field(default_factory=list)
    path: str = ""
    gain_tolerance: float | None = None   # points; how far our gain over baseline_row may be from the table's
    proxy: str | None = None   # why our cells follow another protocol: values shown, never judged (kd.analysis.compare)

    @property
    def higher_is_better(self) -> bool:
        return self.value_kind == "accuracy"

    @property
    def shape(self) -> tuple[int, int]:
        """(printed rows, printed columns), information columns included."""
        return len(self.rows), len(self.columns)

    def entry(self, row: str, column: str, *, metric: str | None = None) -> RefEntry | None:
        """The entry printed at (row, column), or None for an N/A cell."""
        for e in self.entries:
            if e.row == row and e.column == column and (metric is None or e.metric == metric):
                return e
        return None

    def baseline_of(self, e: RefEntry) -> RefEntry | None:
        """The entry a gain of ``e`` is measured against (same column in the baseline row, or same row in
        the baseline column for tables printed with methods as columns); None when there is none."""
        row_over = {r["label"]: r.get("baseline_row") for r in self.rows}.get(e.row)
        brow = row_over or self.baseline_row
        if brow:
            return self.entry(brow, e.column)
        if self.baseline_column:
            return self.entry(e.row, self.baseline_column)
        return None


def _err(path: Path, line: int | None, msg: str) -> KDError:
    where = f"{path.name}:{line}" if line else path.name
    return KDError(f"{where}: {msg}")


def _line_of(lines: list[str], needle: str, start: int = 0) -> int | None:
    """1-based number of the first line at or after ``start`` containing ``needle``."""
    for i in range(start, len(lines)):
        if needle in lines[i]:
            return i + 1
    return None


def _unmarked(text: str) -> str:
    """A printed cell without its markup: bold, LaTeX math, \\pm."""
    t = text.replace("<b>", "").replace("</b>", "").replace("**", "").strip()
    if t.startswith("$") and t.endswith("$"):
        t = t[1:-1].strip()
    return t.replace("{\\pm}", "±").replace("\\pm", "±")


def parse_cell(text: str) -> tuple[float, float | None] | None:
    """'73.26±0.18', '94.82 ± 0.10', '$76.33 {\\pm} 0.32$', '<b>71.56</b>' -> (value, std); 'N/A' -> None.

    Raises ValueError for anything else."""
    t = text.strip()
    if t == MISSING:
        return None
    m = _CELL_RE.match(_unmarked(t))
    if not m:
        raise ValueError(f"cannot parse cell '{text}'")
    return float(m.group(1)), (float(m.group(2)) if m.group(2) is not None else None)


def _check_axis(path: Path, lines: list[str], kind: str, items, allowed: tuple) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise _err(path, _line_of(lines, f"{kind}:"), f"'{kind}' must be a non-empty list of mappings")
    seen = set()
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "label" not in it:
            raise _err(path, _line_of(lines, f"{kind}:"), f"{kind} #{i + 1} must be a mapping with a 'label'")
        label = str(it["label"])
        line = _line_of(lines, label)
        bad = set(it) - set(allowed)
        if bad:
            raise _err(path, line, f"{kind[:-1]} '{label}': unknown key(s) {sorted(bad)}; allowed {list(allowed)}")
        if label in seen:
            raise _err(path, line, f"{kind[:-1]} label '{label}' is used twice (labels must be unique)")
        seen.add(label)
    return items


def _resolve_cell_id(f: dict) -> str:
    method, student, teacher = f["method"], f.get("student"), f.get("teacher")
    if method == "teacher":
        if not teacher:
            raise ValueError("method 'teacher' needs a teacher model")
        return cell_id(f["dataset"], "baseline", teacher, None, f["recipe"])
    if not student:
        raise ValueError(f"method '{method}' needs a student model")
    if method == "baseline":
        return cell_id(f["dataset"], "baseline", student, None, f["recipe"])
    if not teacher and not (set(method.split("+")) & TEACHERLESS):
        raise ValueError(f"method '{method}' needs a teacher model (only {sorted(TEACHERLESS)} may have none)")
    return cell_id(f["dataset"], method, student, teacher or None, f["recipe"])


def _check_names(f: dict) -> None:
    if not isinstance(f.get("dataset"), str) or not _DATASET_RE.match(f["dataset"]):
        raise ValueError(f"unknown dataset '{f.get('dataset')}'")
    if f.get("recipe") not in KNOWN_RECIPES:
        raise ValueError(f"unknown recipe '{f.get('recipe')}'; known: {sorted(KNOWN_RECIPES)}")
    method = f.get("method")
    if not isinstance(method, str):
        raise ValueError("no method given")
    if method != "teacher":
        for part in method.split("+"):
            if part not in KNOWN_METHODS:
                raise ValueError(f"unknown method '{part}' in '{method}'")
    for role in ("student", "teacher"):
        if f.get(role) is not None and f[role] not in KNOWN_MODELS:
            raise ValueError(f"unknown {role} model '{f[role]}'")
    if f.get("metric") not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got '{f.get('metric')}'")
    if f.get("aggregate", "mean") not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}")
    if f.get("seed") is not None and not isinstance(f["seed"], int):
        raise ValueError("seed must be an integer")


def _read_table(path: Path) -> tuple[dict, list[str]]:
    """The table file's YAML mapping and its text lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _err(path, None, f"cannot read: {e}") from None
    lines = text.splitlines()
    try:
        d = yaml.load(text, Loader=StrictLoader)   # safe_load, refusing duplicate keys and aliases
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise _err(path, line, f"malformed YAML: {problem}") from None
    if not isinstance(d, dict):
        raise _err(path, 1, "a reference table must be a YAML mapping")
    return d, lines


def _check_header(path: Path, lines: list[str], d: dict) -> dict:
    """Checks the table's keys and scalar fields; returns its entry defaults."""
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise _err(path, None, f"missing key(s) {missing}")
    unknown = set(d) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        k = sorted(unknown)[0]
        raise _err(path, _line_of(lines, f"{k}:"), f"unknown key(s) {sorted(unknown)}")
    if d["id"] != path.stem:
        raise _err(path, _line_of(lines, "id:"), f"id '{d['id']}' must equal the file stem '{path.stem}'")
    for key, allowed in (("metric", METRICS), ("value_kind", VALUE_KINDS), ("statistic", STATISTICS),
                         ("confidence", CONFIDENCES)):
        if d[key] not in allowed:
            raise _err(path, _line_of(lines, f"{key}:"), f"{key} must be one of {allowed}, got '{d[key]}'")
    if d.get("values_confidence") not in (None, *CONFIDENCES):
        raise _err(path, _line_of(lines, "values_confidence:"), f"values_confidence must be one of {CONFIDENCES}")
    if d["runs"] is not None and (not isinstance(d["runs"], int) or d["runs"] < 1):
        raise _err(path, _line_of(lines, "runs:"), "runs must be a positive integer or null")
    if not isinstance(d["tolerance"], (int, float)) or d["tolerance"] <= 0:
        raise _err(path, _line_of(lines, "tolerance:"), "tolerance must be a positive number (absolute points)")
    if d.get("gain_tolerance") is not None and (not isinstance(d["gain_tolerance"], (int, float))
                                                or d["gain_tolerance"] <= 0):
        raise _err(path, _line_of(lines, "gain_tolerance:"), "gain_tolerance must be a positive number (points)")
    if d.get("proxy") is not None and (not isinstance(d["proxy"], str) or not d["proxy"].strip()):
        raise _err(path, _line_of(lines, "proxy:"), "proxy must be a sentence saying how our cells differ from the paper's")
    if not isinstance(d["source"], dict) or "paper" not in d["source"]:
        raise _err(path, _line_of(lines, "source:"), "source must be a mapping with at least 'paper'")
    defaults = d.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - set(_ENTRY_FIELDS):
        raise _err(path, _line_of(lines, "defaults:"), f"defaults may only set {list(_ENTRY_FIELDS)}")
    return defaults


def _check_axes(path: Path, lines: list[str], d: dict) -> tuple[list[dict], list[dict], list[str], list[str]]:
    """The checked columns and rows, and their labels; every baseline named must be a printed label."""
    columns = _check_axis(path, lines, "columns", d["columns"], _AXIS_KEYS[:3] + _ENTRY_FIELDS)
    rows = _check_axis(path, lines, "rows", d["rows"], ("label", "printed", "baseline_row") + _ENTRY_FIELDS)
    col_labels = [str(c["label"]) for c in columns]
    row_labels = [str(r["label"]) for r in rows]
    for key, labels in (("baseline_row", row_labels), ("baseline_column", col_labels)):
        if d.get(key) is not None and d[key] not in labels:
            raise _err(path, _line_of(lines, f"{key}:"), f"{key} '{d[key]}' is not a printed label")
    for r in rows:
        if r.get("baseline_row") is not None and r["baseline_row"] not in row_labels:
            raise _err(path, _line_of(lines, str(r["label"])), f"baseline_row '{r['baseline_row']}' is not a row")
    return columns, rows, col_labels, row_labels


def _cell_notes(path: Path, lines: list[str], d: dict, row_labels: list[str],
                col_labels: list[str]) -> dict[tuple[str, str], list[str]]:
    """The ``cell_notes`` ({row, column, note}) by (row, column)."""
    cell_notes: dict[tuple[str, str], list[str]] = {}
    for n in d.get("cell_notes") or []:
        if not isinstance(n, dict) or set(n) != {"row", "column", "note"} \
                or n["row"] not in row_labels or n["column"] not in col_labels:
            raise _err(path, _line_of(lines, "cell_notes:"), f"bad cell note {n!r}: need row, column, note of printed labels")
        cell_notes.setdefault((n["row"], n["column"]), []).append(str(n["note"]))
    return cell_notes


def _errata(path: Path, lines: list[str], d: dict, row_labels: list[str],
            col_labels: list[str]) -> tuple[list[str], dict[tuple[str, str], str]]:
    """Every erratum as text, and the per-cell ones ({row, column, text}) by (row, column)."""
    errata, cell_errata = [], {}
    for e in d.get("errata") or []:
        if isinstance(e, str):
            errata.append(e)
        elif isinstance(e, dict) and set(e) == {"row", "column", "text"} \
                and e["row"] in row_labels and e["column"] in col_labels:
            errata.append(f"{e['row']} / {e['column']}: {e['text']}")
            cell_errata[(e["row"], e["column"])] = str(e["text"])
        else:
            raise _err(path, _line_of(lines, "errata:"), f"bad erratum {e!r}: a string or {{row, column, text}}")
    return errata, cell_errata


def _grid_lines(path: Path, lines: list[str], d: dict, n_rows: int) -> tuple[list[tuple[int, str]], int | None]:
    """The non-blank lines of the ``values`` grid with their offsets, and the file line the grid starts on."""
    grid_text = d["values"]
    if not isinstance(grid_text, str):
        raise _err(path, _line_of(lines, "values:"), "values must be a block string ('values: |')")
    vline = next((i + 1 for i, l in enumerate(lines) if re.match(r"^values\s*:", l)), None)
    first = (vline + 1) if vline else None  # block scalar content starts on the next line
    grid = [(i, l) for i, l in enumerate(grid_text.split("\n")) if l.strip()]
    if len(grid) != n_rows:
        raise _err(path, vline, f"grid has {len(grid)} line(s) but {n_rows} row(s) are declared")
    return grid, first


def _entry_fields(metric: str, layers: tuple) -> tuple[dict, list[str]]:
    """An entry's fields, each later layer overriding, and the notes of all layers."""
    f = {"metric": metric, "aggregate": "mean", "seed": None, "quoted_from": None, "note": None,
         "teacher": None, "student": None}
    notes = []
    for layer in layers:
        for k in _ENTRY_FIELDS:
            if k in layer:
                if k == "note":
                    if layer[k]:
                        notes.append(str(layer[k]))
                else:
                    f[k] = layer[k]
    return f, notes


def _entry(path: Path, lineno: int | None, d: dict, defaults: dict, row: dict, col: dict, raw: str,
           cell_notes: dict, cell_errata: dict) -> RefEntry | None:
    """The entry of one grid cell; None for a missing value."""
    try:
        parsed = parse_cell(raw)
    except ValueError as e:
        raise _err(path, lineno, f"row '{row['label']}', column '{col['label']}': {e}") from None
    if parsed is None:
        return None
    f, notes = _entry_fields(d["metric"], (defaults, col, row))
    notes += cell_notes.get((row["label"], col["label"]), [])
    try:
        _check_names(f)
        cid = _resolve_cell_id(f)
    except ValueError as e:
        raise _err(path, lineno, f"row '{row['label']}', column '{col['label']}': {e}") from None
    return RefEntry(
        table_id=d["id"], row=str(row["label"]), column=str(col["label"]), metric=f["metric"],
        value=parsed[0], std=parsed[1], higher_is_better=d["value_kind"] == "accuracy",
        statistic=d["statistic"], tolerance=float(d["tolerance"]), cell_id=cid,
        quoted_from=f["quoted_from"], note="; ".join(notes) or None, seed=f["seed"],
        aggregate=f["aggregate"], dataset=f["dataset"], method=f["method"], student=f["student"],
        teacher=f["teacher"], recipe=f["recipe"], value_kind=d["value_kind"], runs=d["runs"],
        confidence=d["confidence"], raw=raw,
        erratum=cell_errata.get((row["label"], col["label"])))


def _grid_entries(path: Path, lines: list[str], d: dict, defaults: dict, columns: list[dict], rows: list[dict],
                  cell_notes: dict, cell_errata: dict) -> tuple[list[RefEntry], list[InfoCell]]:
    """The entries and information cells of the ``values`` grid: one printed row per non-blank line,
    '|' between cells."""
    grid, first = _grid_lines(path, lines, d, len(rows))
    info_cols = {c["label"] for c in columns if c.get("info")}
    if len(info_cols) == len(columns):
        raise _err(path, _line_of(lines, "columns:"), "every column is an information column")
    entries, info = [], []
    for (offset, gl), row in zip(grid, rows):
        lineno = first + offset if first else None
        cells = [c.strip() for c in gl.split("|")]
        if len(cells) != len(columns):
            raise _err(path, lineno, f"row '{row['label']}' has {len(cells)} cell(s) but {len(columns)} column(s) are declared")
        for col, raw in zip(columns, cells):
            if col["label"] in info_cols:
                info.append(InfoCell(str(row["label"]), str(col["label"]), raw))
                continue
            entry = _entry(path, lineno, d, defaults, row, col, raw, cell_notes, cell_errata)
            if entry is not None:
                entries.append(entry)
    return entries, info


def load_table(path) -> RefTable:
    """Load and validate one reference table; raises KDError naming the file (and line) on any problem."""
    path = Path(path)
    d, lines = _read_table(path)
    defaults = _check_header(path, lines, d)
    columns, rows, col_labels, row_labels = _check_axes(path, lines, d)
    cell_notes = _cell_notes(path, lines, d, row_labels, col_labels)
    errata, cell_errata = _errata(path, lines, d, row_labels, col_labels)
    entries, info = _grid_entries(path, lines, d, defaults, columns, rows, cell_notes, cell_errata)
    return RefTable(
        id=d["id"], title=str(d["title"]), source=d["source"], metric=d["metric"], value_kind=d["value_kind"],
        statistic=d["statistic"], runs=d["runs"], confidence=d["confidence"],
        values_confidence=d.get("values_confidence"), tolerance=float(d["tolerance"]),
        baseline_row=d.get("baseline_row"), baseline_column=d.get("baseline_column"),
        rows=rows, columns=columns, entries=entries, info=info, errata=errata,
        assumptions=list(d.get("assumptions") or []), path=str(path),
        gain_tolerance=float(d["gain_tolerance"]) if d.get("gain_tolerance") is not None else None,
        proxy=d["proxy"].strip() if d.get("proxy") else None)


def load_all(root="reference_tables") -> list[RefTable]:
    """Every ``<root>/*.yaml`` table, sorted by file name; table ids must be unique.

    A relative ``root`` that does not exist from the working directory is the suite's own folder
    (kd.catalog.paths.REFERENCE_TABLES: the source checkout's, or the copy installed with the package)."""
    root = Path(root)
    if not root.is_absolute() and not root.is_dir():
        from kd.catalog.paths import REFERENCE_TABLES
        root = REFERENCE_TABLES if root.name == "reference_tables" else REFERENCE_TABLES.parent / root
    if not root.is_dir():
        raise KDError(f"reference table folder '{root}' does not exist")
    tables, seen = [], {}
    for p in sorted(root.glob("*.yaml")):
        t = load_table(p)
        if t.id in seen:
            raise KDError(f"{p.name}: table id '{t.id}' is also used by {seen[t.id]}")
        seen[t.id] = p.name
        tables.append(t)
    return tables
