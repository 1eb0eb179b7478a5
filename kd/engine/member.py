"""One run in training: its distiller, optimizer and learning rates, resume state, progress and
result line. The loop (kd.engine.loop) drives members; a lone run is a group of one.

Conventions that change numbers:
- Each phase (every stage, then the main training) gets a fresh optimizer (kd.engine.optim) over
  the stage's parameters (the main stage: the student's and the methods'), its LR per epoch computed
  once; stages use their own LR (`Stage.lr`) or the recipe's, the main stage the recipe's for the
  student (lr_by_student, the LR rule of the global batch).
- A non-finite epoch loss stops the run: a failed line (no number) is appended and a KDError raised.
  The check runs once per epoch, on a loss sum kept on the device: the step never waits for the host.
- The record holds the last epoch's top-1/top-5 and the best epoch's (kd.records.provenance), and
  the predicted class of every test example at both epochs (kd.records.predictions; best as in
  provenance: highest stored top-1, ties to the later epoch). A run with a teacher also records, at
  the last epoch, the top-1 agreement with the teacher and the mean KL(teacher || student) at T = 1
  (kd.engine.distiller.Evaluation), and the teacher's predictions (one file per teacher and mode).
- Resume: the state saved after every epoch (student, methods, optimizer, curves) is reloaded and the
  run continues at the next epoch; the per-epoch reseeding makes it repeat the uninterrupted run.
"""
from __future__ import annotations

import datetime as dt
import json
import math

import torch

from kd.engine import dist
from kd.engine.distiller import Distiller
from kd.engine.optim import lr_schedule, optimizer, set_lr
from kd.records import predictions, provenance
from kd.records.results import append_record, results_file, results_root
from kd.records.store import checkpoint_path, load_state, safe_name, save_checkpoint, save_state, state_path


class Member:
    def __init__(self, spec, env, ds, data, distiller: Distiller, teacher_sha: str | None, teacher_id: str | None):
        self.spec, self.env, self.ds, self.data, self.d = spec, env, ds, data, distiller
        self.id, self.seed, self.device = spec.id, spec.seed, env.device
        self.teacher_sha, self.teacher_id, self.group = teacher_sha, teacher_id, None
        execution = env.execution.for_methods(list(distiller.methods), env.log)
        if dist.world().size > 1:                   # the gradient all-reduce is an optimizer hook
            execution = execution.fall_back(f"{dist.world().size} processes average gradients in an optimizer hook",
                                            env.log)
        self.execution = execution
        self.teacher_forward = execution.wrap_teacher(distiller.teacher_forward)
        self.state_path = state_path(self.id, self.seed, env.store)
        self.plan = [(i, s, s.epochs) for i, s in enumerate(distiller.stages)] + \
                    [(len(distiller.stages), None, spec.recipe.epochs)]

    @property
    def teacher_mode(self) -> str | None:
        return getattr(self.d.teacher, "kd_teacher_mode", None)

    def begin(self):
        """Where a resume state left the run (refused when written under another configuration or teacher)."""
        self.started = dt.datetime.now(dt.timezone.utc)
        self.git = dict(provenance.git())
        self.state = load_state(self.state_path, self.spec.digest, self.teacher_sha, check_teacher=True,
                                map_location=self.device) or {}
        if self.state:
            self.d.student.load_state_dict(self.state["student"])
            self.d.methods.load_state_dict(self.state["methods"])
            _, stage, epochs = self.plan[self.state["stage"]]
            self.env.log(f"resuming {self.id} seed {self.seed} after epoch {self.state['epoch'] + 1} of {epochs}"
                         + (f" of its stage '{stage.name}'" if stage is not None else ""))
        self.curve, self.stage_log = self.state.get("curve", []), self.state.get("stage_log", [])
        self.evidence = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in self.state.get("evidence", {}).items()}
        self.elapsed, self.images = self.state.get("elapsed", 0.0), self.state.get("images", 0)
        self.done_epochs = len(self.curve) + len(self.stage_log)
        from kd.records.log import EpochLog
        self.elog = EpochLog.for_run(self.id, self.seed, self.env.results, self.env.progress,
                                     sum(e for _, _, e in self.plan), self.done_epochs)

    @property
    def resume_point(self) -> tuple:
        return self.state.get("stage"), self.state.get("epoch")

    def start_phase(self, si: int, stage, epochs: int) -> range:
        """Optimizer, LR of each epoch and the step of phase `si`; the epochs left to run in it."""
        if self.state and si < self.state["stage"]:
            return range(0)
        lr = self.spec.recipe.lr_for(self.spec.cell.student)
        params = (list(self.d.student.parameters()) + list(self.d.methods.parameters())
                  if stage is None else stage.params)
        self.opt = optimizer(self.spec.recipe, params, lr if stage is None else (stage.lr or lr))
        self.lrs = lr_schedule(self.spec.recipe.schedule, self.opt.param_groups[0]["lr"], epochs,
                               self.spec.recipe.milestones if stage is None else (), self.spec.recipe.gamma)
        dist.attach(self.opt)            # several processes: average gradients over ranks before each step
        start = 0
        if self.state and si == self.state["stage"]:
            self.opt.load_state_dict(self.state["optimizer"])
            start = self.state["epoch"] + 1
        self.state = {}
        self.step = self.d.make_step(stage, self.opt, self.execution)
        return range(start, epochs)

    def start_epoch(self, stage, epoch: int):
        set_lr(self.opt, self.lrs[epoch], self.execution.compiled, self.device)
        self.d.train_mode(stage)
        self.loss_sum = torch.zeros((), device=self.device)          # summed on the device: no sync per step

    def end_epoch(self, si: int, stage, epoch: int, seconds: float):
        """Check the loss, evaluate, log and save the resume state (rank 0 of several processes)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        loss = dist.mean(self.loss_sum.item() / math.ceil(self.data.num_train / self.spec.recipe.batch_size))
        self.elapsed += seconds
        self.images += self.data.num_train
        self.done_epochs += 1
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss}) in epoch {epoch + 1}"
                                     + (f" of stage '{stage.name}'" if stage else ""))
        if not dist.world().main:
            return
        last = stage is None and epoch == self.plan[-1][2] - 1
        ev = self.d.evaluation(self.data, fidelity=last and self.d.teacher is not None)
        top1, top5 = ev.top1, ev.top5
        entry = {"epoch": epoch + 1, "top1": round(top1, 4), "top5": round(top5, 4),
                 "train_loss": round(loss, 6), "lr": self.lrs[epoch]}
        (self.curve if stage is None else self.stage_log).append(entry if stage is None else {"stage": stage.name, **entry})
        if stage is None:
            self._keep(ev, entry)
        self.elog.epoch(entry, stage, self.images, self.elapsed)
        save_state(self.state_path, {"stage": si, "epoch": epoch, "student": self.d.student.state_dict(),
                                     "methods": self.d.methods.state_dict(), "optimizer": self.opt.state_dict(),
                                     "curve": self.curve, "stage_log": self.stage_log, "elapsed": self.elapsed,
                                     "images": self.images, "evidence": self.evidence}, self.spec.digest, self.teacher_sha)

    def _keep(self, ev, entry: dict):
        """This epoch's predictions as the last ones, and as the best ones when its stored top-1 is at
        least the best so far (ties to the later epoch, as kd.records.provenance picks best_epoch)."""
        small = lambda t: t.to(torch.int16 if self.ds.num_classes <= 2 ** 15 else torch.int32)  # noqa: E731
        self.evidence["last"], self.evidence["labels"] = small(ev.pred), small(ev.labels)
        if entry["top1"] >= max((e["top1"] for e in self.curve[:-1]), default=-1.0):
            self.evidence["best"] = self.evidence["last"]
        if ev.teacher_pred is not None:
            self.evidence.update(teacher=small(ev.teacher_pred), agreement=ev.agreement, kl=ev.kl)

    def fail(self, e: FloatingPointError) -> str:
        """A non-finite loss: a failed line (no number), the resume state dropped; the one-line error."""
        self.elog.close()
        if dist.world().main:
            self._record(status="failed", error=str(e))
            self.state_path.unlink(missing_ok=True)
        return f"{self.id} seed {self.seed}: {e}; recorded a failed run"

    def finish(self) -> dict:
        """The checkpoint and the result line (rank 0 of several processes); the record on every rank."""
        self.elog.close()
        record = None
        if dist.world().main:
            ckpt = checkpoint_path(self.id, self.seed, self.env.store)
            sha = save_checkpoint(self.d.student, ckpt)
            record = self._record(status="ok", checkpoint=str(ckpt), sha=sha, evidence=self._write_evidence())
            self.state_path.unlink(missing_ok=True)
        return dist.barrier_and_share(record)

    def _write_evidence(self) -> dict:
        """The predictions files of this run (and of its teacher, once) and the line fields naming them."""
        ev, root, out = self.evidence, results_root(self.env.results), {}
        if "last" in ev and "best" in ev:
            out["predictions"] = predictions.write_run(root, safe_name(self.id), self.seed, ev["last"].numpy(),
                                                       ev["best"].numpy(), ev["labels"].numpy())
        if "teacher" in ev and self.teacher_sha:
            out["teacher_predictions"] = predictions.write_teacher(root, self.teacher_sha, self.teacher_mode or "eval",
                                                                   ev["teacher"].numpy(), ev["labels"].numpy())
            out["fidelity"] = {"agreement": round(ev["agreement"], 4), "kl": round(ev["kl"], 6), "epoch": "last"}
        return out

    def _record(self, **kw) -> dict:
        progress = {"curve": self.curve, "stage_log": self.stage_log, "elapsed": self.elapsed, "images": self.images,
                    "started": self.started.isoformat(timespec="seconds")}
        data = {"dataset_info": self.ds.info, "num_train": self.ds.num_train, "num_test": self.data.num_test}
        run = {"teacher_cell": self.teacher_id, "teacher_mode": self.teacher_mode, "group": self.group,
               "teacher_checkpoint_sha256": self.teacher_sha, "git": self.git,
               "device": provenance.device_name(self.device),
               "execution": self.execution.record(self.device, self.d.teacher is not None),
               "layout": dist.provenance(self.spec.recipe)}
        rec = provenance.result_record(self.spec, progress, data=data, run=run, **kw)
        rec = json.loads(json.dumps(rec))      # the record as it is stored (tuples become lists)
        append_record(rec, results_file(self.spec.cell.dataset, self.env.results))
        return rec

