"""`kd list` and `kd find`: from names, filters or a published number to cell ids and commands.

Both read only YAML (cells, reference tables) and result lines: no torch import, so they answer in
well under two seconds for the 600+ cells. A filter that matches nothing is an error that lists the
valid values, never an empty table.
"""
from __future__ import annotations

from kd.catalog import names
from kd.errors import KDError
from kd.catalog.ids import cell_id, parse_cell_id


QUICK = "↳ "     # marks a row of runs with overrides under its cell in `kd list`


def _families(dataset: str) -> set[str]:
    return {dataset, dataset.split("-")[0]}


def method_matches(query: str, label: str) -> bool:
    """`kd` matches kd and crd+kd (a part of the combination); `crd+kd` matches crd+kd (every part)."""
    want = set(query.lower().split("+"))
    return want <= set(label.lower().split("+"))


def _check_filter(flag: str, value: str, valid) -> None:
    raise KDError(f"no cell matches {flag} {value}; valid values: {', '.join(sorted(valid))}")


def list_rows(cells: dict, records: list[dict], dataset=None, method=None, status=None) -> list[list]:
    """Rows [cell id, runs, seeds]: every cell, then under it one row per other recipe id (quick
    checks with overrides, 'recipe~key=value') that has ok result lines."""
    if dataset and not any(dataset in _families(c.dataset) for c in cells.values()):
        _check_filter("--dataset", dataset, {d for c in cells.values() for d in _families(c.dataset)})
    if method:
        known = names.METHODS | {"baseline"} | {c.label for c in cells.values()}
        unknown = [p for p in method.lower().split("+") if p not in {k.lower() for k in known}]
        if unknown or not any(method_matches(method, c.label) for c in cells.values()):
            _check_filter("--method", method, {c.label for c in cells.values()})
    seeds: dict[str, dict[str, set]] = {}          # base cell id -> recipe id -> seeds
    for r in records:
        if r.get("status") != "ok" or "cell_id" not in r:
            continue
        try:
            p = parse_cell_id(r["cell_id"])
        except ValueError:
            continue
        base = cell_id(p["dataset"], p["label"], p["student"], p["teacher"], p["recipe"].split("~")[0])
        seeds.setdefault(base, {}).setdefault(p["recipe"], set()).add(r.get("seed"))
    rows = []
    for cid, c in sorted(cells.items()):
        if dataset and dataset not in _families(c.dataset):
            continue
        if method and not method_matches(method, c.label):
            continue
        mine = seeds.get(cid, {})
        full = sorted(mine.get(c.recipe, set()))
        if status == "done" and not full or status == "missing" and full:
            continue
        rows.append([cid, len(full), ",".join(map(str, full)) or "-"])
        for recipe in sorted(set(mine) - {c.recipe}):
            s = sorted(mine[recipe])
            rows.append([f"{QUICK}{cell_id(c.dataset, c.label, c.student, c.teacher, recipe)}", len(s),
                         ",".join(map(str, s))])
    return rows


def _value_match(query: str, value: float) -> bool:
    """'75.46' matches 75.455..75.465 (half a unit of the last digit given)."""
    decimals = len(query.split(".")[1]) if "." in query else 0
    return abs(value - float(query)) <= 0.5 * 10 ** -decimals + 1e-9


def _pair(query: str) -> tuple[str | None, str]:
    """'resnet32x4:resnet8x4', 'resnet32x4,resnet8x4' or 'resnet8x4_from_resnet32x4' -> (teacher, student);
    a single name is a student."""
    if "_from_" in query:
        s, t = query.split("_from_", 1)
        return t, s
    for sep in (":", ",", "->", "→"):
        if sep in query:
            t, s = query.split(sep, 1)
            return t.strip(), s.strip()
    return None, query


def find_entries(tables, value: str | None = None, table=None, method=None, pair=None, dataset=None) -> list:
    """Reference entries matching every filter given (value, table id, method label, pair, dataset)."""
    if value is not None:
        try:
            float(value)
        except ValueError:
            raise KDError(f"'{value}' is not a number (e.g. kd find 75.46)") from None
    if table and table not in {t.id for t in tables}:
        raise KDError(f"unknown table '{table}'; valid tables: {', '.join(sorted(t.id for t in tables))}")
    teacher, student = _pair(pair) if pair else (None, None)
    out = []
    for t in tables:
        if table and t.id != table:
            continue
        for e in t.entries:
            if value is not None and not _value_match(value, e.value):
                continue
            if method and not (method.lower() == e.row.lower() or method_matches(method, e.method)
                               and len(method.split("+")) == len(e.method.split("+"))):
                continue
            if pair and not (e.student == student or e.method == "teacher" and e.teacher == student) \
                    or teacher and e.teacher != teacher:
                continue
            if dataset and dataset not in _families(e.dataset):
                continue
            out.append(e)
    return out


def command_for(e, cells: dict) -> str:
    """The command that produces the entry's number, or why there is none."""
    if e.cell_id not in cells:
        return "(quoted only: no runnable cell)"
    seed = f" --seed {e.seed}" if e.seed is not None else ""
    return f"kd run {e.cell_id}{seed}"
