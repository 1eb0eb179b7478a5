"""`kd bench CELL`: how fast one cell's training step runs, per execution mode, and beside RepDistiller.

What is timed is the loop's own step (`Distiller.make_step`: the batch drawn and augmented on the device,
student and teacher forward, the cell's loss, backward, optimizer update) on synthetic data of the
cell's dataset shape when its data is not at hand (the content does not change the time), a randomly
initialised teacher, at the recipe's batch size (or --batch-size). Each contender warms up (`--warmup` steps: compilation, CUDA graph
records, cuDNN autotuning) and is then timed over `--steps` steps, ended by a device sync; contenders
alternate over `--rounds` rounds, and the median round is reported (every round is kept in the line).
Peak memory is CUDA's max_memory_allocated during the timed steps (null on the CPU, where no
allocator reports a per-contender peak). Nothing here writes an accuracy:
the lines go to <results>/speed/bench.jsonl, which no reading command takes for a result.

Side by side (`--repdistiller PATH`): RepDistiller's own `train_distill` (helper/loops.py) runs from
the user's checkout, imported at run time and never copied: its models (`models.model_dict`), its
losses (DistillKL, CRDLoss), its data pipeline (`dataset/cifar100.py`: torchvision CIFAR-100 with PIL
RandomCrop/RandomHorizontalFlip/ToTensor/Normalize and a shuffling DataLoader), on synthetic CIFAR-100
files written in the standard layout to a temporary folder (torchvision's checksum check is skipped
for them). The setup follows its train_student.py: SGD lr 0.05, momentum 0.9, wd 5e-4; KD with
gamma 0.1, alpha 0.9, T 4; CRD with gamma 1, beta 0.8, nce_k 16384, 50,000 training images.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import pickle
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from kd.errors import KDError
from kd.engine.execution import Execution, pick_device
from kd.engine.optim import set_lr

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic(num_train: int, num_classes: int, hw: int, seed: int = 0):
    from kd.data import Dataset
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (num_train, 3, hw, hw), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (num_train,), generator=g)
    return Dataset("synthetic", x, y, x[:256], y[:256], num_classes, CIFAR_MEAN, CIFAR_STD)


class Ours:
    """The loop's step for one cell and one execution mode (a random-initialised teacher: speed only)."""

    def __init__(self, cell, recipe, device, execution: Execution, ds):
        from kd.catalog.spec import RunSpec
        from kd.engine.distiller import Distiller
        from kd.engine.optim import optimizer
        from kd.engine.teacher import build_model, freeze, teacher_mode
        self.name = f"kd ({execution.mode}{', channels_last' if execution.channels_last else ''})"
        self.device, data = device, ds.on_device(device)
        torch.manual_seed(0)
        teacher = None
        if cell.teacher:
            teacher = freeze(build_model(cell.teacher, ds.num_classes).to(device), teacher_mode(cell))
            if execution.channels_last:
                teacher.to(memory_format=torch.channels_last)
        d = Distiller.build(RunSpec(cell, recipe, 0), teacher, data, ds.num_classes, device, execution.channels_last)
        self.execution = execution.for_methods(list(d.methods), lambda *a: None)   # after any announced fallback
        opt = optimizer(recipe, list(d.student.parameters()) + list(d.methods.parameters()), recipe.lr)
        set_lr(opt, recipe.lr, self.execution.compiled, device)
        d.train_mode(None)
        self.d, self.step = d, d.make_step(None, opt, self.execution)
        self.teacher_forward = self.execution.wrap_teacher(d.teacher_forward)
        self.kinds = d.phase[None][1] if d.phase[None][2] else None
        self.epoch = torch.zeros((), device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        self.batches = itertools.chain.from_iterable(
            data.train_batches(recipe.batch_size, gen) for _ in itertools.count())

    def steps(self, n: int):
        """n steps; the last step's loss (a device tensor)."""
        loss = None
        for idx, x, y in itertools.islice(self.batches, n):
            t_out = self.teacher_forward(x, self.kinds) if self.kinds is not None else None
            loss = self.step(x, y, idx, self.epoch, t_out)
        _sync(self.device)
        return loss


class RepDistiller:
    """RepDistiller's train_distill over `n` batches of its own DataLoader (see the module docstring)."""

    def __init__(self, path: Path, cell, recipe, device, workers: int, num_train: int):
        self.name, self.device = "RepDistiller", device
        method = {t["name"] for t in cell.terms} - {"kd"}
        self.check(path, cell, device)
        sys.path.insert(0, str(path))
        try:
            import torchvision.datasets as tvd
            from dataset import cifar100 as rd_data
            from distiller_zoo import DistillKL
            from helper.loops import train_distill
            from models import model_dict
        except ImportError as e:
            raise KDError(f"cannot import RepDistiller from {path}: {e}") from None
        finally:
            sys.path.remove(str(path))
        self.tmp = tempfile.TemporaryDirectory(prefix="kd-bench-rd-")
        _write_cifar100(Path(self.tmp.name), num_train)
        tvd.CIFAR100._check_integrity = lambda self: True      # synthetic files: no published md5
        tvd.cifar.check_integrity = lambda *a, **k: True
        rd_data.get_data_folder = lambda: self.tmp.name
        crd = "crd" in method
        with contextlib.redirect_stdout(io.StringIO()):
            if crd:
                loader, _, n_data = rd_data.get_cifar100_dataloaders_sample(
                    batch_size=recipe.batch_size, num_workers=workers, k=16384, mode="exact")
            else:
                loader, _, n_data = rd_data.get_cifar100_dataloaders(
                    batch_size=recipe.batch_size, num_workers=workers, is_instance=True)
        torch.manual_seed(0)
        model_s, model_t = model_dict[cell.student](num_classes=100), model_dict[cell.teacher](num_classes=100)
        probe = torch.randn(2, 3, 32, 32)
        model_s.eval(), model_t.eval()
        feat_s, _ = model_s(probe, is_feat=True)
        feat_t, _ = model_t(probe, is_feat=True)
        modules, trainable = torch.nn.ModuleList([model_s]), torch.nn.ModuleList([model_s])
        opt = _Opt(distill="crd" if crd else "kd", gamma=1.0 if crd else 0.1, alpha=0.0 if crd else 0.9,
                   beta=0.8 if crd else 0.0, kd_T=4, print_freq=10**9, s_dim=feat_s[-1].shape[1],
                   t_dim=feat_t[-1].shape[1], feat_dim=128, n_data=n_data, nce_k=16384, nce_t=0.07, nce_m=0.5)
        if crd:
            from crd.criterion import CRDLoss
            criterion_kd = CRDLoss(opt)
            modules.extend([criterion_kd.embed_s, criterion_kd.embed_t])
            trainable.extend([criterion_kd.embed_s, criterion_kd.embed_t])
        else:
            criterion_kd = DistillKL(4)
        criteria = torch.nn.ModuleList([torch.nn.CrossEntropyLoss(), DistillKL(4), criterion_kd])
        optimizer = torch.optim.SGD(trainable.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        modules.append(model_t)
        if device.type == "cuda":
            modules.cuda(), criteria.cuda()
            torch.backends.cudnn.benchmark = True           # as train_student.py
        self.loader, self.args = loader, (modules, criteria, optimizer, opt)
        self.train_distill, self.it = train_distill, None

    @staticmethod
    def check(path: Path, cell, device) -> None:
        """What can be refused before anything is built: the checkout, the cell's method, the device."""
        if not (path / "helper" / "loops.py").is_file():
            raise KDError(f"{path} is not a RepDistiller checkout (no helper/loops.py)")
        if {t["name"] for t in cell.terms} - {"kd", "crd"} or not cell.teacher:
            raise KDError(f"--repdistiller runs KD and CRD cells; {cell.id} is neither")
        if (device.type == "cuda") != torch.cuda.is_available():
            raise KDError("RepDistiller's loop uses CUDA whenever it is available: bench on --device cuda there, "
                          "on the CPU only where no GPU is visible")

    def steps(self, n: int):
        if self.it is None:
            self.it = iter(self.loader)
        with contextlib.redirect_stdout(io.StringIO()):
            self.train_distill(0, _Take(self.it, n), *self.args)
        _sync(self.device)

    def end_round(self):
        self.it = None                                      # stop its workers before the others run


class _Opt:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Take:
    """n batches of a running DataLoader iterator, with a len() for train_distill's prints."""

    def __init__(self, it, n):
        self.it, self.n = it, n

    def __iter__(self):
        return itertools.islice(self.it, self.n)

    def __len__(self):
        return self.n


def _write_cifar100(root: Path, n: int):
    """Synthetic CIFAR-100 in torchvision's python layout (uint8 images, fine labels)."""
    import numpy as np
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, m in (("train", n), ("test", 1000)):
        with open(d / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
                         "fine_labels": rng.integers(0, 100, m).tolist()}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)


def bench(cell_id: str, *, modes=None, device=None, steps=30, warmup=10, rounds=5, threads=None, batch_size=None,
          repdistiller=None, workers=None, results=None, channels_last=True, num_train=None, data_root=None,
          log=print) -> list[dict]:
    """Time the contenders, print a table, append one speed line per contender; returns the lines."""
    from kd.catalog.cells import find_cell, load_recipe
    dev = pick_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KDError("--device cuda: no CUDA device is visible")
    modes = modes or (["eager", "graph"] if dev.type == "cuda" else ["eager"])
    for m in modes:
        Execution(m).check(dev)
    if threads:
        torch.set_num_threads(threads)
    cell = find_cell(cell_id)
    if repdistiller:
        RepDistiller.check(Path(repdistiller), cell, dev)
    recipe = load_recipe(cell.recipe)
    if batch_size:
        recipe = recipe.with_overrides(batch_size=batch_size)
    ds = _bench_data(cell, recipe, data_root, num_train or (50_000 if repdistiller else
                                                            4 * recipe.batch_size * (steps + warmup)))
    contenders = [Ours(cell, recipe, dev, Execution(m, channels_last=channels_last), ds) for m in modes]
    if repdistiller:
        w = workers if workers is not None else min(8, os.cpu_count() or 1)
        contenders.append(RepDistiller(Path(repdistiller), cell, recipe, dev, w, ds.num_train))
    times, peak = _time(contenders, dev, steps, warmup, rounds)
    out = _speed_lines(contenders, times, peak, cell, recipe, ds, dev, steps, warmup, rounds)
    _report(out, results, log)
    return out


def _bench_data(cell, recipe, data_root, n: int):
    """The cell's own data when it is at hand (its size and shape), else n synthetic images of its shape:
    the content does not change the time."""
    from kd.data import load_dataset, num_classes
    try:
        return load_dataset(cell.dataset, data_root, seed=recipe.data_seed)
    except KDError:
        return _synthetic(n, num_classes(cell.dataset), 224 if cell.dataset.startswith("imagenet") else 32)


def _time(contenders, dev, steps: int, warmup: int, rounds: int) -> tuple[dict, dict]:
    """Seconds of `steps` steps per round per contender (orders alternate), and peak CUDA memory."""
    times = {c.name: [] for c in contenders}
    peak = {c.name: None for c in contenders}
    for r in range(rounds):
        for c in (contenders if r % 2 == 0 else contenders[::-1]):
            c.steps(warmup)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            c.steps(steps)
            times[c.name].append(time.perf_counter() - t0)
            if dev.type == "cuda":
                peak[c.name] = max(peak[c.name] or 0, torch.cuda.max_memory_allocated(dev))
            getattr(c, "end_round", lambda: None)()
    return times, peak


def _speed_lines(contenders, times, peak, cell, recipe, ds, dev, steps, warmup, rounds) -> list[dict]:
    from kd.records.provenance import device_name, git, now, versions
    bs, n = recipe.batch_size, ds.num_train
    base = statistics.median(times["RepDistiller"]) if "RepDistiller" in times else None
    out, when = [], now()
    for c in contenders:
        t = statistics.median(times[c.name])
        out.append({"kind": "speed", "cell_id": cell.id, "contender": c.name,
                    "execution": c.execution.record(dev, c.kinds is not None) if isinstance(c, Ours) else None,
                    "batch_size": bs, "data": ds.name, "num_train": n, "steps": steps, "warmup": warmup,
                    "rounds": rounds, "ms_per_step": round(1000 * t / steps, 3), "images_per_s": round(bs * steps / t, 1),
                    "images_per_s_rounds": [round(bs * steps / x, 1) for x in times[c.name]],
                    "peak_memory_mb": round(peak[c.name] / 2**20, 1) if peak[c.name] else None,
                    "ratio_to_repdistiller": round(base / t, 3) if base else None,
                    **_paired_ratio(times.get("RepDistiller"), times[c.name]),
                    "device": device_name(dev), "threads": torch.get_num_threads(),
                    "dataloader_workers": getattr(c, "loader", None) and c.loader.num_workers,
                    "versions": versions(), "git": dict(git()), "when": when, "argv": sys.argv[1:]})
    return out


def _paired_ratio(base: list | None, ours: list) -> dict:
    """Each round's RepDistiller time over ours (the rounds interleave the contenders, so a round's two
    times share the machine's state: the ratio is paired), their geometric mean and its 90 % t-interval
    over rounds (kd.analysis.stats.interval on log ratios). Nothing without RepDistiller or with one round."""
    if not base or len(base) < 2:
        return {}
    import math

    from kd.analysis.stats import interval
    logs = [math.log(b / o) for b, o in zip(base, ours)]
    m, se = statistics.mean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    lo, hi = interval(m, se, len(logs) - 1)
    return {"ratio_rounds": [round(math.exp(x), 3) for x in logs], "ratio_paired": round(math.exp(m), 3),
            "ratio_interval_90": [round(math.exp(lo), 3), round(math.exp(hi), 3)]}


def _report(out: list[dict], results, log):
    from tabulate import tabulate
    from kd.records.results import append_record, results_root
    log(tabulate([[x["contender"], x["ms_per_step"], x["images_per_s"], x["peak_memory_mb"] or "-",
                   x["ratio_to_repdistiller"] or "-",
                   "{:.3f}-{:.3f}".format(*x["ratio_interval_90"]) if "ratio_interval_90" in x else "-"] for x in out],
                 headers=["contender", "ms/step", "img/s", "peak MB", "x RepDistiller", "90 % interval (paired)"]))
    path = results_root(results) / "speed" / "bench.jsonl"
    for line in out:
        append_record(line, path)
    log(f"{len(out)} speed lines appended to {path}")


def bench_group(table: str, *, seed=0, overrides=None, device=None, threads=None, data_root=None, results=None,
                log=print) -> dict:
    """Whole wall time of a table's runs (one seed, under `overrides`) one by one and grouped
    (kd.engine.grouping), in one process on the same machine; checks that both wrote the same result lines
    (curves, checkpoint sha256) and appends one line to <results>/speed/group.jsonl. Teachers are
    trained first, untimed, into a store both passes share."""
    from kd.catalog.spec import RunSpec
    from kd.commands.table import plan, table_by_name
    from kd.engine import Env, run
    from kd.records.provenance import device_name, git, now, versions
    from kd.records.results import append_record, read_records, results_root
    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    ov = dict(overrides or {})
    cells, _ = plan(table_by_name(table), ov, [seed])
    specs = [RunSpec.of(c, seed, ov) for c in cells]
    teachers = {t.id for s in specs for t in s.teacher_specs()}
    specs = [s for s in specs if s.id not in teachers]
    with tempfile.TemporaryDirectory(prefix="kd-bench-group-") as tmp:
        env = Env(data_root, Path(tmp) / "store", device=dev).quiet()
        from kd.engine import build
        run(build.missing_teachers(specs, env.resolved(dev)), replace(env, results=Path(tmp) / "teachers"), group=False)
        walls, errors = {}, {}
        for mode in ("one_by_one", "grouped"):
            t0 = time.perf_counter()
            errors[mode] = run(specs, replace(env, results=Path(tmp) / mode), group=mode == "grouped")[1]
            walls[mode] = time.perf_counter() - t0
        key = lambda rs: {(r["cell_id"], r["seed"]): (r["curve"], r.get("checkpoint_sha256")) for r in rs}  # noqa: E731
        same = key(read_records(Path(tmp) / "one_by_one")) == key(read_records(Path(tmp) / "grouped"))
    line = {"kind": "group-speed", "table": table, "seed": seed, "overrides": ov, "cells": [s.cell.id for s in specs],
            "wall_s_one_by_one": round(walls["one_by_one"], 2), "wall_s_grouped": round(walls["grouped"], 2),
            "ratio": round(walls["one_by_one"] / walls["grouped"], 3), "identical_result_lines": same,
            "failed": errors["grouped"], "device": device_name(dev), "threads": torch.get_num_threads(),
            "versions": versions(), "git": dict(git()), "when": now(), "argv": sys.argv[1:]}
    append_record(line, results_root(results) / "speed" / "group.jsonl")
    log(f"{table}: {len(specs)} runs, one by one {line['wall_s_one_by_one']} s, grouped {line['wall_s_grouped']} s, "
        f"ratio {line['ratio']}x; identical result lines: {same}")
    return line
