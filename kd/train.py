"""The one training loop every cell runs: build(cell), train stages, evaluate, record.

Conventions that change numbers, all here:
- loss = ce_weight * CE(student logits, labels) + sum_i weight_i * method_i(step), weights from the
  cell (RepDistiller's `r*CE + a*KD + b*method`). A method returning a dict contributes the sum of
  its terms.
- The teacher is frozen in exactly one place, `freeze()`: eval mode (BatchNorm uses running
  statistics), no parameter gradients, forward under torch.no_grad(). It never enters train mode.
- SGD (momentum, weight decay, Nesterov off) over the student's and the methods' parameters in one
  group, LR by the recipe (per-student LR where the recipe says so), multi-step decay ×gamma at the
  milestone epochs (or cosine), stepped once per epoch.
- The test set is evaluated after every epoch; the record holds the last epoch's top-1/top-5
  (RepDistiller's reported number) and the best epoch's (mdistiller's), chosen by top-1.
- Seeding: the student's initialisation uses `seed`; each epoch reseeds every RNG from
  (seed, stage, epoch), so a run resumed from its per-epoch checkpoint repeats the uninterrupted
  run exactly (on the CPU; CUDA kernels may differ in the last bits).
- A non-finite loss stops the run: a failed record is appended and a KDError raised.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import os
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
from kd.ids import cell_id
from kd.methods.base import Context, Method, Stage, Step
from kd.registry import METHODS, MODELS
from kd.results import SCHEMA, append_record, results_file

REPO = Path(__file__).resolve().parent.parent


def store_root(override: str | os.PathLike | None = None) -> Path:
    """Where checkpoints and resumable run states live (--store, KD_STORE, default ./checkpoints)."""
    return Path(override or os.environ.get("KD_STORE", "checkpoints"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe(cid: str) -> str:
    return cid.replace("/", "__").replace("~", "@")


def checkpoint_path(cid: str, seed: int, store: Path) -> Path:
    return store / _safe(cid) / f"seed{seed}.pt"


def save_checkpoint(model: nn.Module, path: Path, source: str = "trained") -> str:
    """Plain state_dict + a sidecar with its sha256; returns the sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    digest = sha256_file(path)
    path.with_suffix(".sha256").write_text(f"{digest}  {source}\n")
    return digest


def load_checkpoint(model: nn.Module, path: Path, expected_sha256: str | None = None) -> str:
    """Verify the sha256 (against `expected_sha256`, else the sidecar), then load strictly with
    weights_only=True. Returns the digest."""
    from kd.models import load_weights
    if not path.is_file():
        raise KDError(f"checkpoint not found: {path}")
    digest = sha256_file(path)
    side = path.with_suffix(".sha256")
    want = expected_sha256 or (side.read_text().split()[0] if side.is_file() else None)
    if want is None:
        raise KDError(f"{path}: no sha256 recorded; import it with `kd import-teacher` and its checksum")
    if digest != want.lower():
        raise KDError(f"{path}: sha256 mismatch (file {digest[:12]}…, expected {want[:12]}…); refusing to use it")
    load_weights(model, path)
    return digest


def build_model(name: str, num_classes: int) -> nn.Module:
    import kd.models  # noqa: F401
    return MODELS.get(name)(num_classes=num_classes)


def freeze(teacher: nn.Module) -> nn.Module:
    """The one place the teacher is frozen: eval mode, no gradients. Its forward runs under no_grad."""
    teacher.eval()
    teacher.requires_grad_(False)
    teacher.train = lambda mode=True: teacher  # never leaves eval mode, whoever calls train()
    return teacher


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
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
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
def evaluate(student: nn.Module, methods: list[Method], data: DeviceData) -> tuple[float, float]:
    student.eval()
    for m in methods:
        m.eval()
    c1 = c5 = 0
    for x, y in data.test_batches():
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
                 store=None, results_dir=None, progress: bool = True, log=print):
        self.cell, self.recipe, self.seed, self.device = cell, recipe, seed, device
        self.id = cell_id(cell.dataset, cell.label, cell.student, cell.teacher, recipe.id)
        self.data_root, self.store = data_root, store_root(store)
        self.results_dir = Path(results_dir) if results_dir else None
        self.progress, self.log = progress, log
        self.state_path = self.store / "runs" / _safe(self.id) / f"seed{seed}.state.pt"
        self.teacher_id, self.git = None, None

    def run(self, stop_after_epochs: int | None = None) -> dict:
        self.load_data()
        teacher, sha, self.teacher_id = get_teacher(
            self.cell, self.recipe, self.ds.num_classes, self.device, data_root=self.data_root, store=self.store,
            results_dir=self.results_dir, progress=self.progress, log=self.log)
        self.build(teacher, sha)
        return self.train(stop_after_epochs)

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
        self.need_feats = any(c.needs_features for c in classes)
        self.preact = any(c.needs_preact for c in classes)
        probe = self.data.probe(2)
        with torch.no_grad():
            self.student.eval()
            s_feats, _ = self.student.extract(probe, preact=self.preact)
            t_feats = teacher.extract(probe, preact=self.preact)[0] if teacher is not None else []
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
        self.stages = [s for m in self.methods for s in m.stages()]

    def _optimizer(self, params, lr: float, epochs: int, milestones):
        r = self.recipe
        params = [p for p in params if p.requires_grad]
        if r.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=r.nesterov)
        elif r.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=r.weight_decay)
        else:
            raise KDError(f"unknown optimizer '{r.optimizer}'; valid: sgd, adamw")
        if r.schedule == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=r.gamma)
        elif r.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        else:
            raise KDError(f"unknown schedule '{r.schedule}'; valid: multistep, cosine")
        return opt, sched

    # -- one epoch ------------------------------------------------------------------------------
    def _forward(self, x, y, idx, epoch, progress):
        if self.need_feats:
            s_feats, s_logits = self.student.extract(x, preact=self.preact)
        else:
            s_feats, s_logits = [], self.student(x)
        t_feats, t_logits = [], None
        if self.teacher is not None and self.methods:
            with torch.no_grad():
                if self.need_feats:
                    t_feats, t_logits = self.teacher.extract(x, preact=self.preact)
                else:
                    t_logits = self.teacher(x)
        return Step(x, y, idx, s_logits, s_feats, t_logits, t_feats, epoch, progress, self.student, self.teacher)

    def _epoch(self, stage: Stage | None, opt, gen, epoch: int) -> float:
        self.student.train()
        self.method_modules.train()
        steps = math.ceil(self.data.num_train / self.recipe.batch_size)
        total = torch.zeros((), device=self.device)
        amp = self.recipe.amp and self.device.type == "cuda"
        for i, (idx, x, y) in enumerate(self.data.train_batches(self.recipe.batch_size, gen)):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                step = self._forward(x, y, idx, epoch, epoch + i / steps)
                if stage is not None:
                    loss = stage.loss(step)
                else:
                    loss = self.cell.ce_weight * F.cross_entropy(step.s_logits, y) if self.cell.ce_weight else 0
                    for m, w in zip(self.methods, self.weights):
                        if not w:        # a zero-weight method only trains in its stage (FSP, AB, FitNet hints)
                            continue
                        out = m(step)
                        loss = loss + w * (sum(out.values()) if isinstance(out, dict) else out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            if (i + 1) % 100 == 0 and not torch.isfinite(total):
                break
        loss_mean = total.item() / steps
        if not math.isfinite(loss_mean):
            raise FloatingPointError(f"non-finite loss ({loss_mean}) in epoch {epoch + 1}"
                                     + (f" of stage '{stage.name}'" if stage else ""))
        return loss_mean

    # -- checkpoint/resume ----------------------------------------------------------------------
    def _save_state(self, state: dict):
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)

    def _load_state(self) -> dict | None:
        if not self.state_path.is_file():
            return None
        try:
            return torch.load(self.state_path, map_location=self.device, weights_only=True)
        except Exception as e:  # a truncated or foreign file: start over, say so
            self.log(f"ignoring unreadable resume state {self.state_path}: {type(e).__name__}")
            return None

    # -- the run --------------------------------------------------------------------------------
    def train(self, stop_after_epochs: int | None = None) -> dict:
        """Run all stages then the main training; returns the result record (also appended).
        `stop_after_epochs` interrupts after that many epochs in total (for resume tests)."""
        started = dt.datetime.now(dt.timezone.utc)
        self.git = dict(_git())
        r = self.recipe
        lr = r.lr_for(self.cell.student)
        plan = [(i, s, s.epochs) for i, s in enumerate(self.stages)] + [(len(self.stages), None, r.epochs)]
        state = self._load_state() or {}
        if state:
            self.student.load_state_dict(state["student"])
            self.method_modules.load_state_dict(state["methods"])
            self.log(f"resuming {self.id} seed {self.seed} at stage {state['stage']} epoch {state['epoch'] + 1}")
        curve, stage_log = state.get("curve", []), state.get("stage_log", [])
        elapsed, images = state.get("elapsed", 0.0), state.get("images", 0)
        done_epochs = sum(len(x) for x in (curve, stage_log))
        try:
            from tqdm import tqdm
            bar = tqdm(total=sum(e for _, _, e in plan), initial=done_epochs, desc=self.id, unit="ep",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            for si, stage, epochs in plan:
                if state and si < state["stage"]:
                    continue
                if stage is None:
                    opt, sched = self._optimizer(list(self.student.parameters()) + list(self.method_modules.parameters()),
                                                 lr, epochs, r.milestones)
                else:
                    opt, sched = self._optimizer(stage.params, stage.lr or lr, epochs, ())
                dist.attach(opt)             # multi-process: average gradients over ranks before each step
                start = 0
                if state and si == state["stage"]:
                    opt.load_state_dict(state["optimizer"])
                    sched.load_state_dict(state["scheduler"])
                    start = state["epoch"] + 1
                for epoch in range(start, epochs):
                    gen = _reseed(self.seed, si, epoch, self.device)
                    t0 = time.perf_counter()
                    cur_lr = opt.param_groups[0]["lr"]
                    loss = dist.mean(self._epoch(stage, opt, gen, epoch))
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    elapsed += time.perf_counter() - t0
                    images += self.data.num_train
                    sched.step()
                    if dist.world().main:    # multi-process: rank 0 alone evaluates and writes the state
                        top1, top5 = evaluate(self.student, self.methods, self.data)
                        entry = {"epoch": epoch + 1, "top1": round(top1, 4), "top5": round(top5, 4),
                                 "train_loss": round(loss, 6), "lr": cur_lr}
                        (curve if stage is None else stage_log).append(entry if stage is None else {"stage": stage.name, **entry})
                        bar.set_postfix(top1=f"{top1:.2f}", loss=f"{loss:.3f}")
                        bar.update(1)
                        self._save_state({"stage": si, "epoch": epoch, "student": self.student.state_dict(),
                                          "methods": self.method_modules.state_dict(), "optimizer": opt.state_dict(),
                                          "scheduler": sched.state_dict(), "curve": curve, "stage_log": stage_log,
                                          "elapsed": elapsed, "images": images})
                    done_epochs += 1
                    if stop_after_epochs is not None and done_epochs >= stop_after_epochs and (si, epoch + 1) != (plan[-1][0], epochs):
                        raise KeyboardInterrupt
                state = {}
            bar.close()
        except FloatingPointError as e:
            if dist.world().main:
                record = self._record(started, curve, stage_log, elapsed, images, status="failed", error=str(e))
                self.state_path.unlink(missing_ok=True)
            raise KDError(f"{self.id} seed {self.seed}: {e}; recorded a failed run") from None
        record = None
        if dist.world().main:            # multi-process: rank 0 alone writes the checkpoint and the line
            ckpt = checkpoint_path(self.id, self.seed, self.store)
            sha = save_checkpoint(self.student, ckpt)
            record = self._record(started, curve, stage_log, elapsed, images, checkpoint=str(ckpt), sha=sha)
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
                   teacher_cell=self.teacher_id,
                   teacher_checkpoint_sha256=self.teacher_sha, git=self.git, versions=_versions(),
                   device=_device_name(self.device), wall_s=round(elapsed, 3),
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
                results_dir=None, progress=True, log=print) -> tuple[nn.Module | None, str | None, str | None]:
    """The frozen teacher of `cell`: from the checkpoint store (sha256-checked), or trained now by
    its own cell (the baseline method on the teacher architecture, the teacher recipe, the recipe's
    teacher seed, the same overrides)."""
    if not cell.teacher:
        return None, None, None
    store = store_root(store)
    tcell, trecipe, tid, path, stored = teacher_run(cell, recipe, store)
    if not stored:
        log(f"no stored teacher for {tid}: training it first (seed {recipe.teacher_seed})")
        Run(tcell, trecipe, recipe.teacher_seed, device, data_root, store, results_dir, progress, log).run()
    model = build_model(cell.teacher, num_classes).to(device)
    sha = load_checkpoint(model, path)
    return freeze(model), sha, tid


def run_cell(cell: Cell, seed: int = 0, *, device: str | None = None, overrides: dict | None = None,
             data_root=None, store=None, results_dir=None, progress=True, log=print, stop_after_epochs=None) -> dict:
    """Train `cell` with `seed` (its teacher first when none is stored) and append its result line."""
    import kd.methods  # noqa: F401
    recipe = load_recipe(cell.recipe).with_overrides(**(overrides or {}))
    dev = dist.setup(torch.device(device) if device else None, recipe.batch_size)   # joins torchrun's group, if any
    if not dist.world().main:
        progress, log = False, (lambda *a, **k: None)
    return Run(cell, recipe, seed, dev, data_root, store, results_dir, progress, log).run(stop_after_epochs)
