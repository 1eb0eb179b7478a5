"""`kd demo`: the embedded benchmark. No download: scikit-learn's handwritten digits, a tiny CNN
teacher (tiny_t) and a smaller student (tiny_s), the baseline and KD, a few seeds, on the CPU.

Each demo trains its own teacher (once, seed 0: the seed students use) into a temporary checkpoint store (so it is complete and
repeatable), appends its result lines to <results>/digits.jsonl (default results/local/, git-ignored),
and prints mean ± std over seeds.

Convention that changes numbers: the demo runs with THREADS CPU threads on every machine
(torch.set_num_threads), because the order of floating-point reductions, and so the last bits of
every step, depends on the thread count (a 4-epoch tiny_t teacher: 73.06 % top-1 with two threads,
73.33 % with one; two runs with two threads agree to the last digit). The recorded reference
(reference_tables/recorded_digits.yaml) was measured with THREADS; every result line records the count in its "device" field ("cpu (x86_64, 2 threads)").
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch

from kd.catalog.cells import find_cell
from kd.records.results import results_root
from kd.engine import run_cell

TEACHER = "digits-sub400/baseline/tiny_t/digits"
STUDENTS = ["digits-sub400/baseline/tiny_s/digits", "digits-sub400/kd/tiny_s_from_tiny_t/digits"]
CELLS = [TEACHER] + STUDENTS
THREADS = 2          # fixed on every machine: see the module docstring


def _fmt(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def demo(seeds: int = 5, results=None, store=None, progress: bool = True) -> list[dict]:
    from tabulate import tabulate
    t0 = time.perf_counter()
    records = []
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    print(f"kd demo: digits, CPU with {THREADS} threads (fixed, so that the numbers match on any machine)")
    with tempfile.TemporaryDirectory(prefix="kd-demo-") as tmp:
        try:
            for cid, n in [(TEACHER, 1)] + [(c, seeds) for c in STUDENTS]:
                cell = find_cell(cid)
                for seed in range(n):
                    records.append(run_cell(cell, seed, device="cpu", store=store or tmp, results_dir=results,
                                            progress=progress, log=lambda *a: None))
        finally:
            torch.set_num_threads(before)
    rows = []
    for cid in CELLS:
        rs = [r for r in records if r["cell_id"] == cid]
        rows.append([cid, len(rs), _fmt([r["top1_last"] for r in rs]), _fmt([r["top1_best"] for r in rs]),
                     f"{sum(r['wall_s'] for r in rs):.1f}"])
    print(tabulate(rows, headers=["cell", "seeds", "top-1 last (%)", "top-1 best (%)", "train s"], tablefmt="github"))
    _compare_and_report(results)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; result lines appended under {results_root(results)}/")
    return records


def _compare_and_report(results) -> None:
    """Judge the digits results against the recorded reference and write its reports (and the index
    of every table: kd.commands.verdicts)."""
    from kd.catalog.reftables import load_all
    from kd.catalog.paths import REFERENCE_TABLES
    from kd.commands.verdicts import load, report_command
    tables = [t for t in load_all(REFERENCE_TABLES) if t.id == "recorded_digits"]
    if not tables:
        print("no recorded reference for digits yet (tools/record_reference.py writes it)")
        return
    rows = load(results_root(results), ["recorded_digits"]).rows
    for r in rows:
        ours = "-" if r.ours is None else f"{r.ours:.2f}" + (f" ± {r.ours_std:.2f}" if r.n > 1 else "") + f" (n={r.n})"
        gain = "" if r.gain_verdict is None else \
            f"  gain {r.gain_ours:+.2f} (recorded {r.gain_published:+.2f}) {r.gain_verdict}"
        print(f"  {r.row:8s} recorded {r.published:6.2f}  ours {ours:22s} {r.verdict}{gain}")
    _, out = report_command(results_root(results), ["recorded_digits"])
    print(f"reports: {out / 'recorded_digits.md'} and {out / 'recorded_digits.html'}")
