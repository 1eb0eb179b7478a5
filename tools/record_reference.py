"""Record this project's own measured numbers as reference tables (the second kind of reference).

    python tools/record_reference.py                       # every recorded table below
    python tools/record_reference.py --bench digits        # reference_tables/recorded_digits.yaml only

Two benchmarks are recorded, each from the result lines committed in results/:
- digits (results/digits.jsonl): the cells of `kd demo` (CPU, 2 threads, fixed by kd.commands.demo);
- cifar10_jpeg (results/cifar10_jpeg.jsonl): the README's real-data CPU run (JPEG copy of CIFAR-10).
For each cell the ok result lines give mean ± std over seeds of the last-epoch top-1, written in the
reference-table format with a tolerance for each number and one for each gain over the Student row,
so that `kd compare --check` catches a change that moves a method's accuracy or erases its gain.
Only real result lines are used; nothing is typed by hand. Re-run it (and commit the tables) when a
change is meant to move these numbers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kd.analysis.compare import _latest_ok, aggregate  # noqa: E402

BENCHES = {
    "digits": dict(
        results="digits.jsonl",
        title="Recorded: embedded digits benchmark (kd demo), top-1 (%) at the last epoch, CPU (2 threads, "
              "AVX2 code paths)",
        dataset="digits-sub400", recipe="digits", teacher="tiny_t", student="tiny_s", teacher_recipe="digits",
        # Points. The demo fixes its threads and CPU code paths (kd.commands.demo); what it cannot fix (a CPU
        # without AVX2, another torch build) acts like another seed. Measured on one AVX-512 machine with the
        # other code paths the libraries can take (teacher / baseline / KD means; pinned 97.22 / 94.17 / 93.06):
        # own choice 96.11 / 93.94 / 93.72, ATen AVX2 96.39 / 94.61 / 95.67, ATen and oneDNN AVX2
        # 96.94 / 94.11 / 95.11 (the numbers of the other machine), generic code 96.67 / 94.39 / 95.67;
        # an older machine's record 96.39 / 94.33 / 94.67. Largest distance to the pinned values: 2.61 (KD).
        tolerance=3.0,
        # points; the KD gain over the baseline in those runs: -1.11 pinned, -0.22, +1.06, +1.00, +1.28,
        # +0.34 (largest distance 2.39). Five seeds of std 1-2 do not resolve a gain this small; the check
        # catches a KD that collapses, not a fraction of a point.
        gain_tolerance=2.5),
    "cifar10_jpeg": dict(
        results="cifar10_jpeg.jsonl",
        title="Recorded: real-data CPU run, CIFAR-10 JPEG copy (10,000 train / 2,000 test images), "
              "top-1 (%) at the last epoch",
        dataset="cifar10_jpeg-sub10000-test2000", recipe="c10jpeg_student", teacher="resnet20", student="resnet8",
        teacher_recipe="c10jpeg_teacher",
        # points; seed-to-seed std is 0.6-0.8 here (3 seeds); GPUs and other CPUs differ in the last bits
        tolerance=1.5, gain_tolerance=1.5),
}
ROWS = [("Teacher", "teacher"), ("Student", "baseline"), ("KD", "kd")]


def _cell(b: dict, method: str) -> str:
    if method == "teacher":
        return f"{b['dataset']}/baseline/{b['teacher']}/{b['teacher_recipe']}"
    if method == "baseline":
        return f"{b['dataset']}/baseline/{b['student']}/{b['recipe']}"
    return f"{b['dataset']}/{method}/{b['student']}_from_{b['teacher']}/{b['recipe']}"


def table_text(name: str, records: list[dict]) -> str:
    """The YAML text of reference_tables/recorded_<name>.yaml from these result lines."""
    b = BENCHES[name]
    agg = aggregate(records)
    values, seeds, commits = [], set(), set()
    for label, method in ROWS:
        cid = _cell(b, method)
        if cid not in agg or agg[cid].n == 0:
            raise SystemExit(f"no ok result lines for {cid} in results/{b['results']}")
        st = agg[cid].stats["top1_last"]
        values.append(f"{st.mean:.2f}±{st.std:.2f}" if agg[cid].n > 1 else f"{st.mean:.2f}")
        seeds.add(agg[cid].n)
        commits |= {r["git"]["commit"] for r in _latest_ok(records) if r.get("cell_id") == cid}   # the lines used
    lines = [
        f"# Written by tools/record_reference.py from result lines in results/{b['results']}; do not edit by hand.",
        f"id: recorded_{name}",
        f'title: "{b["title"]}"',
        "source:",
        '  paper: "this project (numbers measured here, not published)"',
        '  table: "recorded"',
        f'  via: "results/{b["results"]}, commits {", ".join(sorted(c[:10] for c in commits if c))}"',
        "metric: top1", "value_kind: accuracy", "statistic: last", f"runs: {max(seeds)}  # the teacher row: {min(seeds)}",
        "confidence: code", f"tolerance: {b['tolerance']}", f"gain_tolerance: {b['gain_tolerance']}",
        "baseline_row: Student",
        f"defaults: {{dataset: {b['dataset']}, recipe: {b['recipe']}}}",
        "columns:", f'  - {{label: "{b["teacher"]} → {b["student"]}", teacher: {b["teacher"]}, student: {b["student"]}}}',
        "rows:",
        f"  - {{label: Teacher, method: teacher, recipe: {b['teacher_recipe']}}}" if b["teacher_recipe"] != b["recipe"]
        else "  - {label: Teacher, method: teacher}",
        "  - {label: Student, method: baseline}",
        "  - {label: KD, method: kd}",
        "values: |"] + [f"  {v}" for v in values]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", choices=sorted(BENCHES), nargs="+", default=sorted(BENCHES))
    p.add_argument("--results", default=str(REPO / "results"), help="folder of the committed result files")
    p.add_argument("--out", default=str(REPO / "reference_tables"))
    a = p.parse_args(argv)
    for name in a.bench:
        f = Path(a.results) / BENCHES[name]["results"]
        if not f.is_file():
            print(f"{f} is missing: run the benchmark with --results {a.results} first", file=sys.stderr)
            return 1
        out = Path(a.out) / f"recorded_{name}.yaml"
        out.write_text(table_text(name, _read_one(f)))
        print(f"wrote {out}")
    return 0


def _read_one(f: Path) -> list[dict]:
    """The lines of one committed file (not results/local/: a user's own runs are not the record)."""
    import json
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
