"""Seeds planning (`kd plan TABLE`): for each published gain over a table's baseline row, the seeds per
method needed to resolve it (kd.analysis.stats.seeds_for_power: 80 % power, two-sided 5 %), and what
the table would cost in runs and, where a `kd bench` line times a cell, in device-hours.

Conventions
    sigma       the per-seed std of the two rows of a gain, pooled: sqrt((s_a^2 + s_b^2) / 2), each s our
                measured std where we have at least 2 seeds of the row, else the published std; no
                std for a row: no plan for its gains.
    cell seeds  a cell needs the most seeds any of its gains needs (the baseline row: over its column).
    cost        runs = the seeds every planned cell needs; to add = those beyond the seeds it has. A
                cell's time per run = recipe epochs x training images / images per second of the
                fastest `kd bench` line of that cell on a device (results/speed/bench.jsonl), so device-hours
                are given per device, for the cells such a line times. Teachers are not counted.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from kd.analysis import stats


@dataclass(frozen=True)
class Need:
    row: str
    column: str
    metric: str
    cell_id: str
    baseline_cell: str
    gain: float
    sigma: float | None
    source: str            # "ours", "published" or "ours + published"
    seeds: int | None      # per method; None without a std or a gain


def _std(r) -> tuple[float | None, str | None]:
    if r.n >= 2 and r.ours_std is not None:
        return r.ours_std, "ours"
    if r.published_std:
        return r.published_std, "published"
    return None, None


def needs(table, rows) -> list[Need]:
    """One Need per entry of `table` with a published gain over its baseline row (kd.analysis.compare
    rows of that table); rows of baseline cells (a teacher trained alone) have no gain to resolve."""
    from kd.catalog.ids import parse_cell_id
    rows = [r for r in rows if r.table_id == table.id]
    base = {(r.column, r.metric): r for r in rows if r.row == getattr(table, "baseline_row", None) and r.seed is None}
    out = []
    for r in rows:
        b = base.get((r.column, r.metric))
        if r.gain_published is None or b is None or r.erratum or not r.cell_id \
                or parse_cell_id(r.cell_id)["label"] == "baseline":
            continue
        (sa, ka), (sb, kb) = _std(r), _std(b)
        sigma = math.sqrt((sa * sa + sb * sb) / 2) if sa is not None and sb is not None else None
        source = " + ".join(dict.fromkeys(k for k in (ka, kb) if k)) if sigma is not None else "—"
        out.append(Need(r.row, r.column, r.metric, r.cell_id, b.cell_id, r.gain_published, sigma, source,
                        stats.seeds_for_power(r.gain_published, sigma)))
    return out


def cell_seeds(plan: list[Need]) -> dict[str, int]:
    """cell id -> seeds it needs: the most any of its gains needs (a baseline: over its column)."""
    out: dict[str, int] = {}
    for n in plan:
        if n.seeds is not None:
            for cid in (n.cell_id, n.baseline_cell):
                out[cid] = max(out.get(cid, 0), n.seeds)
    return out


def bench_speeds(root: Path) -> dict[tuple[str, str], dict]:
    """(cell id, device) -> the fastest kd line of <root>/speed/bench.jsonl (images_per_s, num_train)."""
    path = Path(root) / "speed" / "bench.jsonl"
    out: dict[tuple[str, str], dict] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            b = json.loads(line)
        except ValueError:
            continue
        if not isinstance(b, dict) or not str(b.get("contender", "")).startswith("kd") \
                or not isinstance(b.get("images_per_s"), (int, float)) or not b.get("num_train"):
            continue
        key = (b.get("cell_id"), b.get("device"))
        if key not in out or b["images_per_s"] > out[key]["images_per_s"]:
            out[key] = b
    return out


def hours(seeds: dict[str, int], have: dict[str, int], epochs: dict[str, int],
          speeds: dict[tuple[str, str], dict]) -> dict[str, tuple[float, float, int]]:
    """device -> (hours for all seeds, hours for the seeds to add, cells timed) over the timed cells."""
    out: dict[str, list] = {}
    for (cid, device), b in sorted(speeds.items(), key=str):
        if cid in seeds and cid in epochs:
            per_run = epochs[cid] * b["num_train"] / b["images_per_s"] / 3600.0
            acc = out.setdefault(device, [0.0, 0.0, 0])
            acc[0] += seeds[cid] * per_run
            acc[1] += max(0, seeds[cid] - have.get(cid, 0)) * per_run
            acc[2] += 1
    return {d: tuple(v) for d, v in out.items()}
