"""`kd doctor`: an acceptance run of the execution paths on the device at hand, bounded in time.

One command that says whether this machine runs the suite correctly and how fast, before a week of
table runs is trusted to it. Its checks, in the order they run (the budget goes to the first):

1. equivalence: the loop's own step (kd.commands.bench.Ours) for KD, AT and CRD+KD on tiny networks
   (tiny_s from tiny_t, 96 synthetic CIFAR-100-shaped images, batches of 40, 40 and the last of 16:
   two epochs, every batch shape compiled; --quick on the CPU: batches of 48, one shape), eager vs
   each compiled mode from the same initialisation,
   batches and random draws. Student and method parameters and buffers must agree within
   rtol 1e-3, atol 3e-4 (tests/test_execution.py states why: Inductor reorders float sums); integer
   buffers exactly. On CUDA: compile and graph (Inductor); on the CPU: compile (Inductor; with
   --quick the aot_eager backend, which traces, functionalises and differentiates the same graphs
   without generating kernels, seconds instead of minutes).
2. speed: `kd bench` for resnet32x4 -> resnet8x4 KD, the same pair with CRD, and wrn_40_2 -> wrn_16_2
   KD, every execution mode the device has (images/s, ms/step, peak memory), and with --repdistiller
   RepDistiller's own step beside them (its ratio); the usual lines go to <results>/speed/bench.jsonl.
   --quick: the digits KD cell, eager, a few steps (and, given --repdistiller, the resnet32x4 pair beside
   RepDistiller for two steps on 2,000 images: the side-by-side path, not a figure to quote).
3. grouped: `kd bench-group`, a table's runs one by one and grouped on this device, which must write
   identical result lines: the Sarfraz Table III ResNet-8 column on the JPEG CIFAR-10 copy (1,000
   images, one epoch) when the copy is at hand, else the digits table (one epoch); one line in
   <results>/speed/group.jsonl.
4. bf16: the KD step (resnet32x4 -> resnet8x4; --quick: digits) in fp32 and under bf16 autocast, the
   same batches from the same initialisation: both speeds, the loss of the first step (same
   parameters, same batch: bf16's rounding alone), which must be within 10 % of fp32's (a coarse
   check: a broken bf16 path is off by far more; measured on this CPU for the digits KD cell, whose
   small loss is sensitive: 3 %), and the loss after the timed steps (each from its own trajectory:
   a figure, which must be finite; digits after 7 steps: 6-9 % apart).
5. learn: a real training, fp32, in the device's compiled mode (graph on CUDA, eager on the CPU), of
   a cell with committed CPU runs: the JPEG copy's baseline resnet8 (10 epochs, 10,000 images) when
   the copy is at hand, else the digits baseline student. Its top-1 must lie within the band of the
   committed runs (their min and max, widened by the recorded reference table's tolerance). The run
   goes to a temporary store and results folder: it never supersedes a committed line.
6. torchrun: with more than one CUDA device, a two-process digits KD run through torchrun (NCCL),
   which must finish with world_size 2; skipped with a note otherwise.

Each check's items are skipped, with one line, when what they need is missing (a CUDA device, the
RepDistiller checkout, the JPEG copy, a second GPU) or when the budget left is below the item's
planned seconds (PLAN: rough costs on one H100, written before any GPU run; the summary records
what each item took, so the plan can be corrected from a real run). The rest runs.

Output: a verdict table, and one JSON line appended to <results>/speed/doctor.jsonl (every item with
its status, figures, note and seconds; device, threads, versions, git). Exit status 1 when an item
failed, 0 otherwise. Nothing here writes a result line under <results>.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch._dynamo

from kd.errors import KDError

RTOL, ATOL = 1e-3, 3e-4                  # tests/test_execution.py
BF16_LOSS_RTOL = 0.10
DEFAULT_BUDGET_S = 420                   # one H100: the full form's default, well under 8 minutes
QUICK_BUDGET_S = 240                     # --quick on a 2-core CPU: about a minute when it is quiet
KD_PAIR = "cifar100/kd/resnet8x4_from_resnet32x4/crd"
SPEED_CELLS = (KD_PAIR, "cifar100/crd/resnet8x4_from_resnet32x4/crd", "cifar100/kd/wrn_16_2_from_wrn_40_2/crd")
DIGITS_KD = "digits-sub400/kd/tiny_s_from_tiny_t/digits"
JPEG_COLUMN = "sarfraz2020_table3_jpeg_resnet8"
LEARN = {"cifar10_jpeg": ("cifar10_jpeg-sub10000-test2000/baseline/resnet8/c10jpeg_student", "recorded_cifar10_jpeg"),
         "digits": ("digits-sub400/baseline/tiny_s/digits", "recorded_digits")}
# planned seconds per item (CUDA full form / CPU full form / --quick)
PLAN = {"equivalence": (40, 400, 15), "speed": (150, 600, 10), "grouped": (60, 300, 40), "bf16": (30, 200, 10),
        "learn": (120, 600, 15), "torchrun": (60, 0, 0)}
EQUIV_TERMS = {
    "kd": ({"name": "kd", "weight": 0.9, "T": 4},),
    "at": ({"name": "at", "weight": 1000.0},),
    "crd+kd": ({"name": "crd", "weight": 0.8, "nce_k": 32}, {"name": "kd", "weight": 1.0}),
}


@dataclass
class Item:
    check: str
    item: str
    status: str                          # ok | FAIL | skipped
    figures: dict = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0


class Doctor:
    """The checks on one device under one budget; `items` collects what each did."""

    def __init__(self, device: torch.device, quick: bool, budget_s: float, results, data_root, repdistiller, log,
                 only=None):
        self.dev, self.quick, self.budget_s, self.results, self.only = device, quick, budget_s, results, only
        self.data_root, self.repdistiller, self.log = data_root, repdistiller, log
        self.cuda = device.type == "cuda"
        self.t0, self.items = time.perf_counter(), []

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def planned(self, check: str) -> float:
        return PLAN[check][0 if self.cuda else 2 if self.quick else 1]

    def skip(self, check: str, item: str, why: str):
        if self.only and check not in self.only:
            return
        self.items.append(Item(check, item, "skipped", note=why))
        self.log(f"kd doctor: {check} {item}: skipped ({why})")

    def attempt(self, check: str, item: str, fn):
        """Run fn() -> (ok, figures, note) if the budget allows; a KDError or a crash is a FAIL with its line."""
        if self.only and check not in self.only:
            return None
        if self.left() < self.planned(check):
            return self.skip(check, item, f"budget: {max(self.left(), 0):.0f} s left, about "
                                          f"{self.planned(check):.0f} s planned")
        t0 = time.perf_counter()
        torch._dynamo.reset()                    # each item compiles its own steps: no cache carried over
        try:
            ok, figures, note = fn()
        except Exception as e:  # noqa: BLE001 - a doctor reports every failure as a line and goes on
            ok, figures, note = False, {}, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        it = Item(check, item, "ok" if ok else "FAIL", figures, note, round(time.perf_counter() - t0, 1))
        self.items.append(it)
        self.log(f"kd doctor: {check} {item}: {it.status} ({it.seconds} s){' ' + note if note else ''}")
        return it

    def modes(self) -> list[str]:
        return ["compile", "graph"] if self.cuda else ["compile"]


def _tiny_cell(method: str, batch_size: int):
    from kd.catalog.cells import Cell, load_recipe
    cell = Cell("cifar100", method, "tiny_s", "tiny_t", "crd", ce_weight=0.1, terms=EQUIV_TERMS[method])
    return cell, load_recipe("crd").with_overrides(batch_size=batch_size)


def _trained_state(cell, recipe, dev, execution, ds, steps: int) -> dict:
    from kd.commands.bench import Ours
    o = Ours(cell, recipe, dev, execution, ds)
    torch.manual_seed(1)                             # the random draws of the steps (CRD's negatives)
    o.steps(steps)
    return {**{f"student.{k}": v.detach().cpu() for k, v in o.d.student.state_dict().items()},
            **{f"methods.{k}": v.detach().cpu() for k, v in o.d.methods.state_dict().items()}}


def equivalence(doc: Doctor, method: str, mode: str):
    """(ok, figures, note): eager vs `mode` after two epochs of the tiny cell (module docstring, 1)."""
    from kd.commands.bench import _synthetic
    from kd.engine.execution import Execution
    quick = doc.quick and not doc.cuda
    cell, recipe = _tiny_cell(method, 48 if quick else 40)     # --quick: one batch shape, one compilation
    ds = _synthetic(96, 100, 32)
    backend = "aot_eager" if quick else "inductor"
    # The reference on a CPU under Inductor is the eager step in NCHW: measured against a float64 step
    # (tiny_s, batch 40), eager channels_last gradients of the 32x32 layers are 4e-4 to 1.5e-3 (relative)
    # from the truth, NCHW eager and Inductor's channels_last step 1e-6 to 1e-5, so a channels_last eager
    # reference fails AT and CRD+KD for eager's error, not the compiler's. aot_eager replays eager's own
    # kernels, and CUDA keeps its default layout.
    ref_cl = doc.cuda or backend == "aot_eager"
    ref = _trained_state(cell, recipe, doc.dev, Execution("eager", channels_last=ref_cl), ds, 6)
    got = _trained_state(cell, recipe, doc.dev, Execution(mode, channels_last=True, backend=backend), ds, 6)
    worst, bad = 0.0, []
    for k, v in ref.items():
        if not v.is_floating_point():
            if not torch.equal(got[k], v):
                bad.append(k)
            continue
        d = float((got[k] - v).abs().max()) if v.numel() else 0.0
        worst = max(worst, d)
        if not torch.allclose(got[k], v, rtol=RTOL, atol=ATOL):
            bad.append(k)
    note = f"{len(bad)} tensors beyond rtol {RTOL:g}, atol {ATOL:g}: {', '.join(bad[:3])}" if bad else \
        f"{len(ref)} tensors within rtol {RTOL:g}, atol {ATOL:g}"
    return not bad, {"max_abs_diff": worst, "tensors": len(ref), "backend": backend, "steps": 6,
                     "reference": f"eager, {'channels_last' if ref_cl else 'NCHW'}"}, note


def speed(doc: Doctor, cell_id: str, repdistiller):
    from kd.commands.bench import bench
    quick = doc.quick and not doc.cuda
    modes = ["eager"] + ([] if quick else doc.modes())
    kw = dict(steps=3, warmup=1, rounds=2) if quick else dict(steps=20, warmup=10, rounds=3)
    if quick and repdistiller:
        kw = dict(steps=2, warmup=1, rounds=1, num_train=2000)     # the path, not a figure to quote
    lines = bench(cell_id, modes=modes, device=str(doc.dev), repdistiller=repdistiller, results=doc.results,
                  log=lambda *a: None, **kw)
    fig = {x["contender"]: {k: x[k] for k in ("images_per_s", "ms_per_step", "peak_memory_mb", "ratio_to_repdistiller")}
           for x in lines}
    return all(x["images_per_s"] > 0 for x in lines), fig, ", ".join(
        f"{x['contender']} {x['images_per_s']} img/s" + (f" ({x['ratio_to_repdistiller']}x RepDistiller)"
                                                        if x["ratio_to_repdistiller"] and x["contender"] != "RepDistiller"
                                                        else "") for x in lines)


def grouped(doc: Doctor, table: str, overrides: dict):
    from kd.commands.bench import bench_group
    line = bench_group(table, overrides=overrides, device=str(doc.dev), data_root=doc.data_root,
                       results=doc.results, log=lambda *a: None)
    fig = {k: line[k] for k in ("wall_s_one_by_one", "wall_s_grouped", "ratio", "identical_result_lines", "failed")}
    fig.update(table=table, overrides=overrides, runs=len(line["cells"]))
    ok = line["identical_result_lines"] and not line["failed"]
    return ok, fig, f"{len(line['cells'])} runs: one by one {line['wall_s_one_by_one']} s, grouped " \
                    f"{line['wall_s_grouped']} s ({line['ratio']}x); identical result lines: {line['identical_result_lines']}"


def bf16(doc: Doctor, cell_id: str):
    from kd.catalog.cells import find_cell, load_recipe
    from kd.commands.bench import Ours, _bench_data, _time
    from kd.engine.execution import default_execution
    cell = find_cell(cell_id)
    recipe = load_recipe(cell.recipe)
    steps, warmup = (4, 1) if doc.quick and not doc.cuda else (20, 10)
    ds = _bench_data(cell, recipe, doc.data_root, 2 * recipe.batch_size * (steps + warmup + 1))
    ex = default_execution(doc.dev)
    c = [Ours(cell, r, doc.dev, ex, ds) for r in (recipe, recipe.with_overrides(precision="bf16"))]
    c[1].name += " bf16"
    first = [float(x.steps(1)) for x in c]            # same parameters, same batch: bf16's rounding alone
    times, _ = _time(c, doc.dev, steps, warmup, 1)
    last = [float(x.steps(1)) for x in c]             # after the same batches, each from its own trajectory
    ips = [round(recipe.batch_size * steps / times[x.name][0], 1) for x in c]
    rel0, rel = (abs(v[1] - v[0]) / abs(v[0]) for v in (first, last))
    fig = {"images_per_s_fp32": ips[0], "images_per_s_bf16": ips[1], "speedup": round(ips[1] / ips[0], 3),
           "first_loss_fp32": first[0], "first_loss_bf16": first[1], "first_loss_rel_diff": rel0,
           "loss_fp32": last[0], "loss_bf16": last[1], "loss_rel_diff": rel, "steps": steps + warmup + 2}
    ok = all(map(math.isfinite, first + last)) and rel0 <= BF16_LOSS_RTOL
    return ok, fig, f"bf16 {fig['speedup']}x fp32's speed; first-step loss {100 * rel0:.2f} % apart (at most " \
                    f"{100 * BF16_LOSS_RTOL:g} %), after {fig['steps']} steps {last[1]:.4f} vs {last[0]:.4f}"


def committed_band(cell_id: str, table_id: str) -> tuple[list[float], float]:
    """The top-1 (last) of the committed CPU runs of `cell_id` (results/*.jsonl of the checkout, not
    results/local) and the tolerance of the recorded reference table that judges them."""
    from kd.catalog.paths import REFERENCE_TABLES, REPO
    from kd.catalog.reftables import load_all
    from kd.records.results import check_record
    values = []
    for f in sorted((REPO / "results").glob("*.jsonl")):
        for raw in f.read_text().splitlines():
            try:
                r = json.loads(raw)
            except ValueError:
                continue
            if not check_record(r) and r["cell_id"] == cell_id and r["status"] == "ok" and not r.get("imported"):
                values.append(r["top1_last"])
    tol = next((t.tolerance for t in load_all(REFERENCE_TABLES) if t.id == table_id), 1.0)
    return values, tol


def learn(doc: Doctor, key: str):
    from kd.catalog.cells import find_cell
    from kd.catalog.spec import RunSpec
    from kd.engine import Env, run
    from kd.engine.execution import Execution, default_execution
    cell_id, table = LEARN[key]
    values, tol = committed_band(cell_id, table)
    if not values:
        return False, {}, f"no committed runs of {cell_id} in this checkout's results/ to compare with"
    ex = Execution("graph", channels_last=True) if doc.cuda else default_execution(doc.dev)
    with tempfile.TemporaryDirectory(prefix="kd-doctor-learn-") as tmp:
        env = Env(doc.data_root, Path(tmp) / "store", Path(tmp) / "results", doc.dev, ex).quiet()
        records, errors = run([RunSpec.of(find_cell(cell_id), 0, {})], env)
    if errors:
        return False, {}, "; ".join(errors)
    rec = records[-1]
    lo, hi = min(values) - tol, max(values) + tol
    fig = {"cell_id": cell_id, "top1_last": rec["top1_last"], "band": [round(lo, 2), round(hi, 2)],
           "committed": values, "tolerance": tol, "execution": rec.get("execution"), "wall_s": rec["wall_s"],
           "images_per_s": rec["images_per_s"]}
    return lo <= rec["top1_last"] <= hi, fig, f"top-1 {rec['top1_last']:.2f} vs committed CPU runs " \
        f"{min(values):.2f}-{max(values):.2f} (band {lo:.2f}-{hi:.2f}, tolerance {tol:g} from {table})"


def torchrun(doc: Doctor):
    """Two processes, one per GPU, through torchrun (NCCL): the digits KD cell, one epoch."""
    with tempfile.TemporaryDirectory(prefix="kd-doctor-torchrun-") as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "kd",
               "run", DIGITS_KD, "--epochs", "1", "--device", "cuda", "--no-progress",
               "--store", f"{tmp}/store", "--results", f"{tmp}/results"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, doc.left()),
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        lines = [json.loads(x) for f in Path(tmp, "results").glob("*.jsonl") for x in f.read_text().splitlines()]
    last = (p.stderr.strip().splitlines() or [""])[-1]
    ok = p.returncode == 0 and any(r.get("cell_id") == DIGITS_KD and r.get("world_size") == 2 for r in lines)
    fig = {"returncode": p.returncode, "world_size": [r.get("world_size") for r in lines],
           "dist_backend": [r.get("dist_backend") for r in lines]}
    return ok, fig, "two ranks (NCCL) finished one epoch" if ok else f"exit {p.returncode}: {last[:300]}"


def _jpeg_at_hand(data_root) -> bool:
    from kd.data.core import data_root as resolve_root
    return (Path(resolve_root(data_root)) / "cifar10-jpeg" / "train").is_dir()


def _checks(doc: Doctor):
    """Every item in order (module docstring), each skipped with one line when it cannot run."""
    quick_cpu = doc.quick and not doc.cuda
    for method in EQUIV_TERMS:
        for mode in doc.modes():
            doc.attempt("equivalence", f"{method}: eager vs {mode}", lambda: equivalence(doc, method, mode))
    rd = doc.repdistiller
    if rd and not (Path(rd) / "helper" / "loops.py").is_file():
        doc.skip("speed", "RepDistiller", f"{rd} is not a RepDistiller checkout (no helper/loops.py): ours alone")
        rd = None
    elif not rd:
        doc.skip("speed", "RepDistiller", "no --repdistiller PATH: ours alone")
    for cid in ([DIGITS_KD] + ([KD_PAIR] if rd else []) if quick_cpu else SPEED_CELLS):
        doc.attempt("speed", cid, lambda: speed(doc, cid, rd if cid == KD_PAIR or not quick_cpu else None))
    jpeg = _jpeg_at_hand(doc.data_root)
    if not jpeg:
        doc.skip("grouped", JPEG_COLUMN, "the JPEG CIFAR-10 copy is not at hand (<data root>/cifar10-jpeg): "
                                         "the digits table instead")
    table, ov = (JPEG_COLUMN, {"subset": 1000, "epochs": 1}) if jpeg and not quick_cpu else ("recorded_digits", {"epochs": 1})
    doc.attempt("grouped", table, lambda: grouped(doc, table, ov))
    doc.attempt("bf16", DIGITS_KD if quick_cpu else KD_PAIR, lambda: bf16(doc, DIGITS_KD if quick_cpu else KD_PAIR))
    key = "cifar10_jpeg" if jpeg and not quick_cpu else "digits"
    doc.attempt("learn", LEARN[key][0], lambda: learn(doc, key))
    n = torch.cuda.device_count() if doc.cuda else 0
    if n > 1:
        doc.attempt("torchrun", f"{n} GPUs, 2 ranks", lambda: torchrun(doc))
    else:
        doc.skip("torchrun", "2 ranks", "one CUDA device: torchrun needs two" if doc.cuda else "no CUDA device")


def doctor(*, quick: bool = False, device: str | None = None, budget_s: float | None = None, repdistiller=None,
           data_root=None, results=None, only=None, log=print) -> dict:
    """Run the checks, print the verdict table, append the summary line; returns it."""
    from kd.records.provenance import device_name, git, now, versions
    from kd.records.results import append_record, results_root
    if budget_s is not None and not 0 < budget_s <= 86400:
        raise KDError(f"--budget-s {budget_s:g}: must be a number of seconds in (0, 86400]")
    if device is None and not torch.cuda.is_available():
        log("kd doctor: no CUDA device on this machine: the CPU form runs, without the CUDA rows")
    from kd.engine.execution import pick_device
    dev = pick_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise KDError(f"--device {dev}: kd doctor checks cpu and cuda devices")
    budget = budget_s or (QUICK_BUDGET_S if quick and dev.type == "cpu" else DEFAULT_BUDGET_S)
    if only and set(only) - set(PLAN):
        raise KDError(f"--only {' '.join(sorted(set(only) - set(PLAN)))}: valid checks are {', '.join(PLAN)}")
    doc = Doctor(dev, quick, budget, results, data_root, repdistiller, log, only)
    log(f"kd doctor{' --quick' if quick else ''} on {device_name(dev)}, budget {budget:g} s")
    timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)     # a dataset download tried on a machine whose network drops packets
    try:
        _checks(doc)
    finally:
        socket.setdefaulttimeout(timeout)
    failed = [i for i in doc.items if i.status == "FAIL"]
    line = {"kind": "doctor", "quick": quick, "budget_s": budget, "only": only, "wall_s": round(time.perf_counter() - doc.t0, 1),
            "verdict": "FAIL" if failed else "ok", "failed": len(failed),
            "skipped": sum(i.status == "skipped" for i in doc.items), "items": [asdict(i) for i in doc.items],
            "device": device_name(dev), "threads": torch.get_num_threads(), "versions": versions(),
            "git": dict(git()), "when": now(), "argv": sys.argv[1:]}
    line = json.loads(json.dumps(line, default=str))
    path = results_root(results) / "speed" / "doctor.jsonl"
    _table(doc.items, log)
    append_record(line, path)
    log(f"kd doctor: {'FAIL' if failed else 'ok'}: {len(doc.items) - len(failed) - line['skipped']} ok, "
        f"{len(failed)} failed, {line['skipped']} skipped in {line['wall_s']} s; summary appended to {path}")
    return line


def _table(items, log):
    from tabulate import tabulate
    log(tabulate([[i.check, i.item, i.status, f"{i.seconds:g}" if i.status != "skipped" else "-", i.note[:120]]
                  for i in items], headers=["check", "item", "verdict", "s", "figures / why"]))
