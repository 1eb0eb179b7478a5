"""The one training loop every cell runs: build(cell), train stages, evaluate, record.

Conventions that change numbers, all here:
- loss = ce_weight * CE(student logits, labels) + sum_i weight_i * method_i(step), weights from the
  cell (RepDistiller's `r*CE + a*KD + b*method`). A method returning a dict contributes the sum of
  its terms.
- The teacher is frozen in exactly one place, `freeze()`: no parameter gradients, forward under
  torch.no_grad(), never saved. Its BatchNorm runs on running statistics ("eval", every method
  but OFD) or on batch statistics ("train", OFD as mdistiller / clovaai), as the cell's methods
  declare (`Method.teacher_mode`); the mode is recorded in the result (`teacher_mode`).
- Initialisation stages (AB/FSP/FT) run with the student and the method modules in eval mode
  except the stage's `train_modules` (RepDistiller helper/pretrain.py); FitNet's hint stage and the
  main stage run the student and all method modules in train mode.
- Features are extracted per kind (plain or pre-ReLU) only when some method of the current stage
  reads that kind; each method gets the kinds it declares (`Method.kinds()`). A cell mixing kinds
  on one network (e.g. AB + FitNet; no reference cell does) runs that network once per kind, so the
  student's BatchNorm running statistics then move twice per step. The main stage runs the teacher
  only when a method with a nonzero weight is there to read it.
- SGD (momentum, weight decay, Nesterov off) over the student's and the methods' parameters in one
  group, LR by the recipe (per-student LR where the recipe says so), multi-step decay ×gamma at the
  milestone epochs (or cosine), stepped once per epoch.
- The test set is evaluated after every epoch; the record holds the last epoch's top-1/top-5
  (RepDistiller's reported number) and the best epoch's (mdistiller's), chosen by top-1.
- Seeding: the student's initialisation uses `seed`; each epoch reseeds every RNG from
  (seed, stage, epoch), so a run resumed from its per-epoch checkpoint repeats the uninterrupted
  run exactly (on the CPU; CUDA kernels may differ in the last bits).
- A non-finite loss stops the run: a failed record is appended and a KDError raised. The check
  runs once per epoch, on a loss sum kept on the device: the step itself never waits for the host.
- The learning rate of each epoch is what PyTorch's MultiStepLR/CosineAnnealingLR give (computed
  once per stage, `lr_schedule`), written into the optimizer before the epoch.
- Execution (`kd/execution.py`: eager, compile, graph; channels_last; TF32) changes float rounding,
  never the protocol; it is recorded in every result line. bf16 is part of the recipe (`amp`).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kd import dist
from kd.cells import Cell, Recipe, load_recipe
from kd.data import DeviceData, load_dataset
from kd.errors import KDError
from kd.execution import Execution, default_execution, lr_schedule, set_lr
from kd.ids import cell_id
from kd.methods.base import Context, Method, Stage, Step
from kd.registry import METHODS, MODELS
from kd.results import SCHEMA, append_record, results_file
from kd.store import (check_writable, checkpoint_path, config_digest, load_checkpoint, load_state, run_lock,
                      save_checkpoint, save_state, state_path, store_root)

REPO = Path(__file__).resolve().parent.parent


def build_model(name: str, num_classes: int) -> nn.Module:
    import kd.models  # noqa: F401
    return MODELS.get(name)(num_classes=num_classes)


TEACHER_MODES = ("eval", "train")


def freeze(teacher: nn.Module, mode: str = "eval") -> nn.Module:
    """The one place the teacher is frozen: no parameter gets a gradient, its forward runs under
    no_grad (Run._forward), and it is never written back (only the student is saved).

    mode "eval": every layer in eval mode, BatchNorm on its running statistics.
    mode "train": BatchNorm layers on the batch's statistics, every other layer (dropout) in eval.
    mdistiller's OFD (its Distiller.train, unlike the base class, leaves the teacher in train mode)
    and the official clovaai OFD code (`t_net.train()`) do this; they also let the running
    statistics drift in memory, where nothing reads them. Here train-mode BatchNorm does not track
    them (track_running_stats off), so the teacher in memory stays equal to its checkpoint; the
    forward's values are the same. The mode is kept in `teacher.kd_teacher_mode` and never changes,
    whoever calls train()/eval() on the teacher afterwards.
    """
    if mode not in TEACHER_MODES:
        raise KDError(f"unknown teacher mode '{mode}'; valid: {', '.join(TEACHER_MODES)}")
    teacher.requires_grad_(False)
    nn.Module.train(teacher, False)
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.Module.train(m, mode == "train")
            m.track_running_stats = mode == "eval" and m.running_mean is not None
    teacher.train = lambda mode=True: teacher  # never leaves its mode, whoever calls train()/eval()
    teacher.kd_teacher_mode = mode
    return teacher


def _features(model: nn.Module, x: torch.Tensor, kinds: tuple[bool, ...], net: str) -> tuple[dict, torch.Tensor]:
    """{(net, preact): feats} for each requested kind, and the logits. One forward per kind: no
    kind costs one plain forward; a network asked for both kinds by a mixed cell runs twice (no
    reference cell mixes kinds on one network)."""
    if not kinds:
        return {}, model(x)
    out = {}
    for preact in kinds:
        feats, logits = model.extract(x, preact=preact)
        out[(net, preact)] = feats
    return out, logits


def _kinds(methods) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """The student's and the teacher's feature kinds read by `methods` (sorted: plain first)."""
    ks = [m.kinds() for m in methods if m.needs_features]
    return tuple(sorted({k[0] for k in ks})), tuple(sorted({k[1] for k in ks}))


def _versions() -> dict:
    import numpy
    import torchvision
    import kd
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "kd": kd.__version__, "cuda": torch.version.cuda}


@functools.lru_cache(maxsize=1)
def _git() -> dict:
    """The commit of the code this process loaded (read once, at the first run of the process)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=REPO, capture_output=True, text=True, timeout=10)   # code, not result files
        return {"commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _reseed(seed: int, stage: int, epoch: int, device: torch.device) -> torch.Generator:
    s = (seed * 1_000_003 + stage * 10_007 + epoch) % (2**63)
    torch.manual_seed(s)
    g = torch.Generator(device=device)
    g.manual_seed(s)
    return g


def accuracy(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k predictions (k clipped to the classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == y[:, None]
    return [hit[:, :k].any(1).sum() for k in ks]


@torch.no_grad()
def evaluate(student: nn.Module, methods: list[Method], data: DeviceData,
             channels_last: bool = False) -> tuple[float, float]:
    student.eval()
    for m in methods:
        m.eval()
    c1 = c5 = 0
    for x, y in data.test_batches(256):        # 64-256 is fastest per image on CPU; BN in eval: same numbers
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        logits = None
        for m in methods:
            logits = m.eval_logits(x, student)
            if logits is not None:
                break
        if logits is None:
            logits = student(x)
        a1, a5 = accuracy(logits.float(), y)
        c1, c5 = c1 + a1, c5 + a5
    n = data.num_test
    return 100.0 * float(c1) / n, 100.0 * float(c5) / n


class Run:
    """One (cell, seed) run: everything needed to train, checkpoint, resume and record it."""

    def __init__(self, cell: Cell, recipe: Recipe, seed: int, device: torch.device, data_root=None,
                 store=None, results_dir=None, progress: bool = True, log=print, execution: Execution | None = None):
        self.cell, self.recipe, self.seed, self.device = cell, recipe, seed, device
        self.execution = (execution or default_execution(device)).check(device)
        self.id = cell_id(cell.dataset, cell.label, cell.student, cell.teacher, recipe.id)
        self.data_root, self.store = data_root, store_root(store)
        self.results_dir = Path(results_dir) if results_dir else None
        self.progress, self.log = progress, log
        self.state_path = state_path(self.id, seed, self.store)
        self.digest = config_digest(cell, recipe, seed)      # stored with the resume state, checked on resume
        self.teacher_id, self.git, self.group = None, None, None

    def run(self, stop_after_epochs: int | None = None) -> dict:
        self.prepare()
        lock = run_lock(self.store, self.id, self.seed) if dist.world().main else contextlib.nullcontext()
        with lock:                                   # multi-process: rank 0 holds it for the whole group
            self.build(*self.get_teacher())
            return self.train(stop_after_epochs)

    def prepare(self, data=None):
        """Before anything trains or is written: the results file and the store can be written, a
        resume state left in the store belongs to this very configuration, the data reads (or is
        `data`, (Dataset, DeviceData), shared by a group). Then the caller takes the run's lock
        (kd.store): no other process trains this (cell, seed) until its record is appended."""
        check_writable(results_file(self.cell.dataset, self.results_dir), "results file", folder=False)
        check_writable(self.store, "checkpoint store", folder=True)
        load_state(self.state_path, self.digest)
        if data is None:
            self.load_data()
        else:
            self.ds, self.data = data

    def get_teacher(self) -> tuple[nn.Module | None, str | None]:
        """The frozen teacher (trained first when none is stored) and its sha256."""
        teacher, sha, self.teacher_id = get_teacher(
            self.cell, self.recipe, self.ds.num_classes, self.device, data_root=self.data_root, store=self.store,
            results_dir=self.results_dir, progress=self.progress, log=self.log, execution=self.execution)
        return teacher, sha

    # -- building -------------------------------------------------------------------------------
    def load_data(self):
        dataset = self.cell.dataset
        if "subset" in self.recipe.overrides:
            dataset += f"-sub{self.recipe.overrides['subset']}"
        self.ds = load_dataset(dataset, self.data_root, seed=self.recipe.data_seed)
        self.data = self.ds.on_device(self.device)
        dist.check_batch(self.recipe.batch_size, dist.world().size, self.ds.num_train)

    def build(self, teacher: nn.Module | None, teacher_sha: str | None):
        ds = self.ds
        torch.manual_seed(self.seed)
        self.student = dist.prepare_student(build_model(self.cell.student, ds.num_classes).to(self.device),
                                            self.recipe.sync_bn)
        self.teacher, self.teacher_sha = teacher, teacher_sha
        specs = []
        for t in self.cell.terms:
            t = dict(t)
            specs.append((t.pop("name"), float(t.pop("weight")), t))
        classes = [METHODS.get(n) for n, _, _ in specs]
        if teacher is None and any(c.needs_teacher for c in classes):
            raise KDError(f"{self.id}: a method needs a teacher but the cell has none")
        modes = {c.teacher_mode for c in classes if c.needs_teacher}
        if len(modes) > 1:
            raise KDError(f"{self.id}: the methods need the teacher in different modes ({', '.join(sorted(modes))})")
        if teacher is not None:
            freeze(teacher, modes.pop() if modes else "eval")
        s_kinds, t_kinds = _kinds(classes)
        probe = self.data.probe(2)
        with torch.no_grad():
            self.student.eval()
            s_by = _features(self.student, probe, s_kinds or (False,), "s")[0]
            t_by = _features(teacher, probe, t_kinds or (False,), "t")[0] if teacher is not None else {}
        s_feats, t_feats = next(iter(s_by.values())), next(iter(t_by.values()), [])
        if any([f.shape for f in v] != [f.shape for f in s_feats] for v in s_by.values()) or \
                any([f.shape for f in v] != [f.shape for f in t_feats] for v in t_by.values()):
            raise KDError(f"{self.id}: plain and pre-ReLU features differ in shape")
        steps = math.ceil(ds.num_train / self.recipe.batch_size)
        ctx = Context(self.student, teacher, [f.shape for f in s_feats], [f.shape for f in t_feats],
                      ds.num_classes, ds.num_train, self.recipe.epochs, steps, tuple(probe.shape[1:]),
                      self.device)
        torch.manual_seed(self.seed + 1)
        try:
            self.methods = [cls(ctx, **hp).to(self.device) for cls, (_, _, hp) in zip(classes, specs)]
        except TypeError as e:
            raise KDError(f"{self.id}: bad method hyperparameter: {e}") from None
        self.weights = [w for _, w, _ in specs]
        self.method_modules = nn.ModuleList(self.methods)
        self.stages = []
        for m in self.methods:
            for s in m.stages():
                s.kinds = m.kinds()
                self.stages.append(s)
        # the feature kinds each phase extracts: a stage its method's, the main stage those of the
        # methods it trains (zero-weight methods train only in their stages)
        main = [m for m, w in zip(self.methods, self.weights) if w]
        self._phase = {None: (*_kinds(main), any(m.needs_teacher for m in main))}
        for s in self.stages:
            self._phase[id(s)] = ((s.kinds[0],) if s.student_forward else (), (s.kinds[1],), True)
        self.execution = self.execution.for_methods(self.methods, self.log)
        if dist.world().size > 1:                   # the gradient all-reduce is an optimizer hook
            self.execution = self.execution.fall_back(
                f"{dist.world().size} processes average gradients in an optimizer hook", self.log)
        if self.execution.channels_last:
            for m in (self.student, teacher, self.method_modules):
                if m is not None:
                    m.to(memory_format=torch.channels_last)

    @property
    def teacher_mode(self) -> str | None:
        """How the teacher's BatchNorm runs in this run ("eval"/"train"; None without a teacher):
        runs in different modes must never share a teacher forward."""
        return getattr(self.teacher, "kd_teacher_mode", None)

    def _optimizer(self, params, lr: float):
        r = self.recipe
        params = [p for p in params if p.requires_grad]
        if r.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=r.nesterov)
        if r.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=r.weight_decay)
        raise KDError(f"unknown optimizer '{r.optimizer}'; valid: sgd, adamw")

    # -- one step, one epoch ----------------------------------------------------------------------
    def _forward(self, x, y, idx, epoch, stage: Stage | None = None, t_out=None):
        """`t_out`: the teacher's (features by kind, logits) on this batch when a group computed
        them once for all its members (kd/group.py); else the teacher runs here."""
        if self.execution.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        s_kinds, t_kinds, use_teacher = self._phase[None if stage is None else id(stage)]
        by, s_logits = {}, None
        if stage is None or stage.student_forward:
            by, s_logits = _features(self.student, x, s_kinds, "s")
        t_logits = None
        if self.teacher is not None and use_teacher:
            if t_out is None:
                t_out = self.teacher_forward(x, t_kinds)
            t_by, t_logits = t_out
            by.update({k: v for k, v in t_by.items() if k[1] in t_kinds})
        s_feats = by.get(("s", s_kinds[0]), []) if s_kinds else []
        t_feats = by.get(("t", t_kinds[0]), []) if t_kinds else []
        return Step(x, y, idx, s_logits, s_feats, t_logits, t_feats, epoch, self.student, self.teacher, by)

    def teacher_forward(self, x, kinds) -> tuple[dict, torch.Tensor]:
        """The frozen teacher on a batch, in the run's memory format and precision: features of each
        kind, logits (a group runs it once for all its members, kd/group.py)."""
        if self.execution.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)      # a no-op inside _forward
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.recipe.amp):
            return _features(self.teacher, x, kinds, "t")

    def _loss(self, stage: Stage | None, x, y, idx, epoch, t_out=None) -> torch.Tensor:
        """The cell's loss on one batch (forward included). No host synchronisation: capturable."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.recipe.amp):
            step = self._forward(x, y, idx, epoch, stage, t_out)
            if stage is not None:
                return stage.loss(step.select(stage.kinds))
            loss = self.cell.ce_weight * F.cross_entropy(step.s_logits, y) if self.cell.ce_weight else 0
            for m, w in zip(self.methods, self.weights):
                if w:            # a zero-weight method only trains in its stage (FSP, AB, FitNet hints)
                    out = m(step.select(m.kinds()))
                    loss = loss + w * (sum(out.values()) if isinstance(out, dict) else out)
            return loss

    def make_step(self, stage: Stage | None, opt: torch.optim.Optimizer):
        """step(x, y, idx, epoch_tensor, t_out=None) -> detached loss: forward, loss, backward, optimizer step,
        run as the execution mode says (the compiled modes compile the loss and the update)."""
        loss_fn = self.execution.wrap(functools.partial(self._loss, stage))
        update = self.execution.wrap(opt.step)

        def step(x, y, idx, epoch, t_out=None):
            loss = loss_fn(x, y, idx, epoch, t_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            update()
            return loss.detach()
        return step

    def train_mode(self, stage: Stage | None):
        """The student and method modules in train mode, or for a stage with `train_modules` only those."""
        train_all = stage is None or stage.train_modules is None
        self.student.train(train_all)
        self.method_modules.train(train_all)
        if not train_all:
            for m in stage.train_modules:         # e.g. the student's feature modules + connectors
                m.train()

    def set_epoch_lr(self, epoch: int):
        """This epoch's learning rate of the current stage into its optimizer."""
        set_lr(self.opt, self.lrs[epoch], self.execution.compiled, self.device)

    def _epoch(self, stage: Stage | None, step, gen, epoch: int) -> float:
        self.train_mode(stage)
        epoch_t = torch.full((), float(epoch), device=self.device)   # a tensor: no recompile per epoch
        total = torch.zeros((), device=self.device)                    # summed on the device: no sync per step
        for idx, x, y in self.data.train_batches(self.recipe.batch_size, gen):
            total += step(x, y, idx, epoch_t)
        return total.item() / math.ceil(self.data.num_train / self.recipe.batch_size)   # the epoch's one sync

    # -- checkpoint/resume ----------------------------------------------------------------------
    def _save_state(self, state: dict):
        save_state(self.state_path, state, self.digest, self.teacher_sha)

    def _load_state(self) -> dict | None:
        """The resume state, refused (KDError) when written under another configuration or teacher."""
        return load_state(self.state_path, self.digest, self.teacher_sha, check_teacher=True, map_location=self.device)

    # -- the run --------------------------------------------------------------------------------
    def train(self, stop_after_epochs: int | None = None) -> dict:
        """Run all stages then the main training; returns the result record (also appended).
        `stop_after_epochs` interrupts after that many epochs in total (for resume tests)."""
        self.begin()
        return self.train_begun(stop_after_epochs)

    def train_begun(self, stop_after_epochs: int | None = None) -> dict:
        """`train` after `begin` (a group that could not train its members together calls this)."""
        try:
            for si, stage, epochs in self.plan:
                for epoch in self.stage_epochs(si, stage, epochs):
                    self.set_epoch_lr(epoch)
                    gen = _reseed(self.seed, si, epoch, self.device)
                    t0 = time.perf_counter()
                    loss = dist.mean(self._epoch(stage, self.step, gen, epoch))
                    self.end_epoch(si, stage, epoch, loss, time.perf_counter() - t0)
                    if stop_after_epochs is not None and self.done_epochs >= stop_after_epochs \
                            and (si, epoch + 1) != (self.plan[-1][0], epochs):
                        raise KeyboardInterrupt
        except FloatingPointError as e:
            self.fail(e)
        return self.finish()

    def begin(self):
        """The plan of stages, and where a resume state left it."""
        self.started = dt.datetime.now(dt.timezone.utc)
        self.git = dict(_git())
        self.plan = [(i, s, s.epochs) for i, s in enumerate(self.stages)] + [(len(self.stages), None, self.recipe.epochs)]
        self.state = self._load_state() or {}
        if self.state:
            self.student.load_state_dict(self.state["student"])
            self.method_modules.load_state_dict(self.state["methods"])
            self.log(f"resuming {self.id} seed {self.seed} at stage {self.state['stage']} epoch {self.state['epoch'] + 1}")
        self.curve, self.stage_log = self.state.get("curve", []), self.state.get("stage_log", [])
        self.elapsed, self.images = self.state.get("elapsed", 0.0), self.state.get("images", 0)
        self.done_epochs = len(self.curve) + len(self.stage_log)
        from kd.log import EpochLog
        self.elog = EpochLog.for_run(self, sum(e for _, _, e in self.plan), self.done_epochs)   # bar/lines/CSV/TB

    def stage_epochs(self, si: int, stage: Stage | None, epochs: int) -> range:
        """Set up stage `si` (optimizer, LR of each epoch, the step) and return the epochs left to run."""
        if self.state and si < self.state["stage"]:
            return range(0)
        lr = self.recipe.lr_for(self.cell.student)
        params = (list(self.student.parameters()) + list(self.method_modules.parameters())
                  if stage is None else stage.params)
        self.opt = self._optimizer(params, lr if stage is None else (stage.lr or lr))
        self.lrs = lr_schedule(self.recipe.schedule, self.opt.param_groups[0]["lr"], epochs,
                               self.recipe.milestones if stage is None else (), self.recipe.gamma)
        dist.attach(self.opt)            # multi-process: average gradients over ranks before each step
        start = 0
        if self.state and si == self.state["stage"]:
            self.opt.load_state_dict(self.state["optimizer"])
            start = self.state["epoch"] + 1
        self.state = {}
        self.step = self.make_step(stage, self.opt)
        return range(start, epochs)

    def end_epoch(self, si: int, stage: Stage | None, epoch: int, loss: float, seconds: float):
        """Check the loss, evaluate, log and save the resume state (rank 0 of several processes)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.elapsed += seconds
        self.images += self.data.num_train
        self.done_epochs += 1
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss}) in epoch {epoch + 1}"
                                     + (f" of stage '{stage.name}'" if stage else ""))
        if not dist.world().main:
            return
        top1, top5 = evaluate(self.student, self.methods, self.data, self.execution.channels_last)
        entry = {"epoch": epoch + 1, "top1": round(top1, 4), "top5": round(top5, 4),
                 "train_loss": round(loss, 6), "lr": self.lrs[epoch]}
        (self.curve if stage is None else self.stage_log).append(entry if stage is None else {"stage": stage.name, **entry})
        self.elog.epoch(entry, stage, self.images, self.elapsed)
        self._save_state({"stage": si, "epoch": epoch, "student": self.student.state_dict(),
                          "methods": self.method_modules.state_dict(), "optimizer": self.opt.state_dict(),
                          "curve": self.curve, "stage_log": self.stage_log, "elapsed": self.elapsed,
                          "images": self.images})

    def fail(self, e: FloatingPointError):
        """A non-finite loss: a failed line (no number), the resume state dropped, one-line error."""
        self.elog.close()
        if dist.world().main:
            self._record(self.started, self.curve, self.stage_log, self.elapsed, self.images, status="failed", error=str(e))
            self.state_path.unlink(missing_ok=True)
        raise KDError(f"{self.id} seed {self.seed}: {e}; recorded a failed run") from None

    def finish(self) -> dict:
        """The checkpoint and the result line (rank 0 of several processes); the record."""
        self.elog.close()
        record = None
        if dist.world().main:
            ckpt = checkpoint_path(self.id, self.seed, self.store)
            sha = save_checkpoint(self.student, ckpt)
            record = self._record(self.started, self.curve, self.stage_log, self.elapsed, self.images,
                                  checkpoint=str(ckpt), sha=sha)
            self.state_path.unlink(missing_ok=True)
        return dist.barrier_and_share(record)

    def _record(self, started, curve, stage_log, elapsed, images, status="ok", error=None, checkpoint=None, sha=None):
        c = self.cell
        rec = {"schema": SCHEMA, "cell_id": self.id, "dataset": c.dataset, "label": c.label, "student": c.student,
               "teacher": c.teacher, "recipe": self.recipe.id, "seed": self.seed, "status": status}
        if status == "ok":
            best = max(curve, key=lambda e: (e["top1"], e["epoch"]))
            rec.update(top1_last=curve[-1]["top1"], top5_last=curve[-1]["top5"], top1_best=best["top1"],
                       top5_best=best["top5"], best_epoch=best["epoch"], checkpoint=checkpoint, checkpoint_sha256=sha)
        else:
            rec["error"] = error
        rec.update(curve=curve, stage_curve=stage_log,
                   config={"cell": c.to_dict(), "recipe": asdict(self.recipe), "dataset_info": self.ds.info,
                           "num_train": self.ds.num_train, "num_test": self.data.num_test},
                   teacher_cell=self.teacher_id, teacher_mode=self.teacher_mode, group=self.group,
                   teacher_checkpoint_sha256=self.teacher_sha, git=self.git, versions=_versions(),
                   device=_device_name(self.device), execution=self.execution.record(self.device), wall_s=round(elapsed, 3),
                   images_per_s=round(images / elapsed, 1) if elapsed else None,
                   started=started.isoformat(timespec="seconds"),
                   finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), host=platform.node(),
                   argv=sys.argv[1:], **dist.provenance(self.recipe))
        rec = json.loads(json.dumps(rec))      # the record as it is stored (tuples become lists)
        append_record(rec, results_file(c.dataset, self.results_dir))
        return rec


def teacher_run(cell: Cell, recipe: Recipe, store: Path) -> tuple[Cell, Recipe, str, Path, bool]:
    """The teacher run `cell` uses: (teacher cell, its recipe, its cell id, checkpoint path, stored?).
    A quick-check run (overrides) uses the full-protocol teacher when one is stored (trained or
    imported); otherwise a teacher under the same overrides, seed recipe.teacher_seed."""
    tcell = cell.teacher_cell(recipe)
    full = load_recipe(tcell.recipe)
    trecipe = full.with_overrides(**recipe.overrides)
    for tr in [trecipe] + ([full] if recipe.overrides else []):
        cid = cell_id(tcell.dataset, "baseline", tcell.student, None, tr.id)
        if checkpoint_path(cid, recipe.teacher_seed, store).is_file():
            return tcell, tr, cid, checkpoint_path(cid, recipe.teacher_seed, store), True
    tid = cell_id(tcell.dataset, "baseline", tcell.student, None, trecipe.id)
    return tcell, trecipe, tid, checkpoint_path(tid, recipe.teacher_seed, store), False


def get_teacher(cell: Cell, recipe: Recipe, num_classes: int, device, *, data_root=None, store=None,
                results_dir=None, progress=True, log=print, execution: Execution | None = None) -> tuple[nn.Module | None, str | None, str | None]:
    """The frozen teacher of `cell`: from the checkpoint store (sha256-checked), or trained now by
    its own cell (the baseline method on the teacher architecture, the teacher recipe, the recipe's
    teacher seed, the same overrides)."""
    if not cell.teacher:
        return None, None, None
    store = store_root(store)
    tcell, trecipe, tid, path, stored = teacher_run(cell, recipe, store)
    if not stored:
        log(f"no stored teacher for {tid}: training it first (seed {recipe.teacher_seed})")
        Run(tcell, trecipe, recipe.teacher_seed, device, data_root, store, results_dir, progress, log, execution).run()
    model = build_model(cell.teacher, num_classes).to(device)
    sha = load_checkpoint(model, path)
    return freeze(model), sha, tid


def run_cell(cell: Cell, seed: int = 0, *, device: str | None = None, overrides: dict | None = None,
             data_root=None, store=None, results_dir=None, progress=True, log=print, stop_after_epochs=None,
             execution: Execution | None = None) -> dict:
    """Train `cell` with `seed` (its teacher first when none is stored) and append its result line."""
    import kd.methods  # noqa: F401
    recipe = load_recipe(cell.recipe).with_overrides(**(overrides or {}))
    dev = dist.setup(torch.device(device) if device else None, recipe.batch_size)   # joins torchrun's group, if any
    if not dist.world().main:
        progress, log = False, (lambda *a, **k: None)
    return Run(cell, recipe, seed, dev, data_root, store, results_dir, progress, log, execution).run(stop_after_epochs)
