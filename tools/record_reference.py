"""Record this project's own measured numbers as a reference table (the second kind of reference).

    python tools/record_reference.py            # writes reference_tables/recorded_digits.yaml

Reads the ok result lines of the embedded digits benchmark (the cells of `kd demo`), takes mean ± std
over seeds of the last-epoch top-1, and writes them in the reference-table format, so that
`kd compare --check` catches a change that moves a method's accuracy. Only real result lines are
used; nothing is typed by hand. Re-run it (and commit the table) when a change is meant to move
these numbers.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kd.compare import aggregate  # noqa: E402
from kd.results import read_records  # noqa: E402

ROWS = [("Teacher", "teacher", "digits-sub400/baseline/tiny_t/digits"),
        ("Student", "baseline", "digits-sub400/baseline/tiny_s/digits"),
        ("KD", "kd", "digits-sub400/kd/tiny_s_from_tiny_t/digits")]
TOLERANCE = 1.5   # points; the run is deterministic on one machine, this allows other torch builds/CPUs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(REPO / "results"))
    p.add_argument("--out", default=str(REPO / "reference_tables" / "recorded_digits.yaml"))
    a = p.parse_args(argv)
    records = read_records(Path(a.results))
    agg = aggregate(records)
    values, seeds, commits = [], set(), set()
    for label, _, cid in ROWS:
        if cid not in agg or agg[cid].n == 0:
            print(f"no ok result lines for {cid}: run `kd demo` first", file=sys.stderr)
            return 1
        st = agg[cid].stats["top1_last"]
        values.append(f"{st.mean:.2f}±{st.std:.2f}" if agg[cid].n > 1 else f"{st.mean:.2f}")
        seeds.add(agg[cid].n)
        commits |= {r["git"]["commit"] for r in records if r.get("cell_id") == cid and r.get("status") == "ok"}
    lines = [
        "# Written by tools/record_reference.py from result lines in results/digits.jsonl; do not edit by hand.",
        "id: recorded_digits",
        'title: "Recorded: embedded digits benchmark (kd demo), top-1 (%) at the last epoch, CPU"',
        "source:",
        '  paper: "this project (numbers measured here, not published)"',
        '  table: "recorded"',
        f'  via: "results/digits.jsonl, commits {", ".join(sorted(c[:10] for c in commits if c))}"',
        "metric: top1", "value_kind: accuracy", "statistic: last", f"runs: {max(seeds)}  # the teacher row: {min(seeds)}",
        "confidence: code", f"tolerance: {TOLERANCE}", "baseline_row: Student",
        "defaults: {dataset: digits-sub400, recipe: digits}",
        "columns:", '  - {label: "tiny_t → tiny_s", teacher: tiny_t, student: tiny_s}',
        "rows:"] + [f"  - {{label: {label}, method: {m}}}" for label, m, _ in ROWS] + [
        "values: |"] + [f"  {v}" for v in values]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}: " + ", ".join(f"{l} {v}" for (l, _, _), v in zip(ROWS, values)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
