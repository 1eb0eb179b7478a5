"""`kd demo`: the embedded benchmark. No download: scikit-learn's handwritten digits, a tiny CNN
teacher (tiny_t) and a smaller student (tiny_s), the baseline and KD, a few seeds, on the CPU.

Each demo trains its own teacher (once, seed 0: the seed students use) into a temporary checkpoint store (so it is complete and
repeatable), appends its result lines to <results>/digits.jsonl (default results/local/, git-ignored),
and prints mean ± std over seeds.

Conventions that change numbers, both recorded in every result line's "device"
("cpu (x86_64, 2 threads, AVX2; oneDNN AVX2, MKL AVX2)"):
- THREADS CPU threads on every machine (torch.set_num_threads): the thread count sets the order of
  floating-point reductions, and so the last bits of every step (a 4-epoch tiny_t teacher: 73.06 % top-1
  with two threads, 73.33 % with one; two runs with two threads agree to the last digit).
- The CPU code paths pinned to AVX2 (KERNELS). PyTorch's own kernels (ATen), oneDNN's convolutions and
  MKL's matrix products each pick the code of the CPU they run on (AVX-512 on one machine, AVX2 on
  another), and each code sums in its own order; a float difference in the first step grows over 20
  epochs into another trained network. Measured on one AMD EPYC with AVX-512 (2 threads, torch 2.15.0),
  the teacher's top-1 at the last epoch: 96.11 with the machine's own choice (AVX-512 in all three),
  96.39 with ATen on AVX2, 96.94 with ATen and oneDNN on AVX2, 97.22 with all three on AVX2, 98.33 with
  ATen's generic code. The three libraries read their variables once, when each first computes, so
  `demo` sets them before torch computes anything in this process; where that is too late (torch already
  used here) or the CPU has no AVX2 (ARM, x86 before 2013), it says so in one line and the line's "device"
  records the code in effect. What stays machine-dependent is stated in the README ("Quick start").
The recorded reference (reference_tables/recorded_digits.yaml) was measured with THREADS and KERNELS;
its tolerance covers the spread of the other code paths (tools/record_reference.py).
"""
from __future__ import annotations

import contextlib
import os
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
# ATen's capability, oneDNN's highest instruction set, MKL's code path (its Conditional Numerical
# Reproducibility mode): AVX2 is what every x86-64 CPU since 2013 has.
KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


@contextlib.contextmanager
def pinned_kernels():
    """KERNELS in the environment while the demo runs (the libraries read them once per process, in effect
    only before torch first computes here; the result lines record them), the previous values after: a
    process that goes on (a test session) must not have torch.compile pick its vector ISA from them.
    Says in one line when ATen's code path is not AVX2 after all."""
    before = {k: os.environ.get(k) for k in KERNELS}
    os.environ.update(KERNELS)
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        print(f"kd demo: PyTorch's CPU kernels run {torch.backends.cpu.get_cpu_capability()}, not AVX2 "
              "(no AVX2 on this CPU, or torch computed before the demo in this process): the numbers can "
              "differ from the recorded reference, within its tolerance")
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fmt(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def demo(seeds: int = 5, results=None, store=None, progress: bool = True) -> list[dict]:
    t0 = time.perf_counter()
    records = []
    with pinned_kernels():
        return _demo(seeds, results, store, progress, t0, records)


def _demo(seeds, results, store, progress, t0, records) -> list[dict]:
    from tabulate import tabulate
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    print(f"kd demo: digits on the CPU, {THREADS} threads and AVX2 code paths (fixed: see README, Quick start)")
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
