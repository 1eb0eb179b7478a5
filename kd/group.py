"""Grouped runs: the cells of a table column trained in one pass, one teacher forward per batch.

Runs share a group when they share the dataset (variant and subset), the recipe id (overrides
included), the seed, the execution, the teacher checkpoint and the way it runs (its BatchNorm mode)
and have no stages of their own (FitNet hints, AB/FSP/FT initialisation run alone). A run without a
teacher (the baseline row) joins the group of its dataset, recipe and seed. Each step of a group
draws one batch and one augmentation (every run of that seed would draw the same: per-epoch
reseeding, kd/train.py), runs the teacher once, and then each member's own step in turn: its
forward, loss, backward and optimizer update.

Nothing about a member changes because it ran in a group (tests/test_group.py: bit for bit):
- the teacher's outputs are those each member would compute (the same frozen module, input, kernels
  and precision);
- every draw a member's methods make from the global generator (CRD's negatives, dropout) comes
  from that member's own generator state: the loop swaps it in before the member's step and out
  after, so members never consume each other's random numbers;
- each member keeps its optimizer, LR schedule, resume state, checkpoint and result line; the line
  records the group (`group`: size and members). Its wall time is the group's: the members share it.
- a member whose loss is not finite is recorded failed and leaves; the others go on.
- resume: members restart from their own states when they all stopped at the same epoch (the
  group writes them one after another at each epoch's end); otherwise each resumes on its own.

Why members run in turn rather than fused (torch.func.stack_module_state + vmap, grouped
convolutions) or on CUDA streams: in turn is exact (bit for bit), needs nothing from a method, and
already removes the repeated teacher forward, the larger part of a KD step's arithmetic
(results/speed/group.jsonl has the measured ratio). Fusion would also merge the members' launches,
but changes float rounding and needs every method vmappable; streams help only where one member's
kernels leave the GPU idle. Both are left for a measurement on a GPU.
"""
from __future__ import annotations

import contextlib
import math
import time

import torch

from kd.errors import KDError


def run_grouped(cells_seeds: list, overrides: dict | None = None, *, device=None, data_root=None, store=None,
                results_dir=None, progress=True, log=print, execution=None) -> tuple[list[dict], list[str]]:
    """Build every (cell, seed) run (teachers trained first where none is stored; data and teacher
    modules loaded once and shared), take every run's lock, then train them group by group.
    Returns (records, one-line errors of failed members)."""
    import kd.methods  # noqa: F401
    from kd.cells import load_recipe
    from kd.store import run_lock
    from kd.train import Run
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    datasets, teachers, runs = {}, {}, []
    with contextlib.ExitStack() as locks:
        for cell, seed in cells_seeds:
            recipe = load_recipe(cell.recipe).with_overrides(**(overrides or {}))
            r = Run(cell, recipe, seed, dev, data_root, store, results_dir, progress, log, execution)
            dkey = (cell.dataset, recipe.overrides.get("subset"), recipe.data_seed)
            r.prepare(datasets.get(dkey))
            datasets[dkey] = r.ds, r.data
            locks.enter_context(run_lock(r.store, r.id, r.seed))
            tkey = (cell.teacher, recipe.id, recipe.teacher_seed)
            if tkey not in teachers:
                teachers[tkey] = (*r.get_teacher(), r.teacher_id)
            teacher, sha, r.teacher_id = teachers[tkey]
            r.build(teacher, sha)
            runs.append(r)
        records, errors = [], []
        for g in partition(runs):
            if len(g) > 1:
                log(f"training {len(g)} runs together (one teacher forward per batch): {', '.join(r.id for r in g)}")
            recs, errs = train_group(g, log)
            records += recs
            errors += errs
    return records, errors


def group_key(run) -> tuple | None:
    """Runs with equal keys can share batches and the teacher forward (None: runs alone)."""
    if run.stages:
        return None
    return (run.cell.dataset, run.recipe.id, run.seed, run.execution.mode, run.execution.channels_last,
            run.teacher_id, run.teacher_sha, run.teacher_mode)


def partition(runs: list) -> list[list]:
    """Groups of runs (lists of one for those that run alone); teacher-less runs join a group of
    their dataset, recipe and seed when one exists."""
    groups: dict[tuple, list] = {}
    alone, loose = [], []
    for r in runs:
        k = group_key(r)
        if k is None:
            alone.append([r])
        elif r.teacher is None:
            loose.append(r)
        else:
            groups.setdefault(k, []).append(r)
    for r in loose:
        k = group_key(r)
        target = next((g for key, g in groups.items() if key[:5] == k[:5]), None)
        if target is not None:
            target.append(r)
        else:
            groups.setdefault(k, []).append(r)
    return list(groups.values()) + alone


@contextlib.contextmanager
def _own_rng(state: dict, device: torch.device):
    """The member's generator state in, the global one's back out (CPU and CUDA)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    try:
        yield
    finally:
        state["cpu"] = torch.get_rng_state()
        if device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(device)


def train_group(runs: list, log=print) -> tuple[list[dict], list[str]]:
    """Train the built runs of one group together; (records of the members that finished, errors)."""
    from kd.train import _reseed
    for r in runs:
        r.begin()                                       # each loads its own resume state, if any
    if len(runs) == 1 or len({(r.state.get("stage"), r.state.get("epoch")) for r in runs}) > 1:
        if len(runs) > 1:
            log(f"group of {len(runs)}: members stopped at different epochs; each resumes on its own")
        out = [_alone(r) for r in runs]
        return [x for recs, _ in out for x in recs], [e for _, errs in out for e in errs]
    lead, ids = runs[0], [r.id for r in runs]
    for r in runs:
        r.group = {"size": len(runs), "members": ids}
    (si, _, epochs), = lead.plan
    start = [r.stage_epochs(si, None, epochs) for r in runs][0].start
    users = [r for r in runs if r.teacher is not None and r._phase[None][2]]      # members that read the teacher
    kinds = tuple(sorted({k for r in users for k in r._phase[None][1]}))
    alive, errors = list(runs), []
    data, bs = lead.data, lead.recipe.batch_size
    for epoch in range(start, epochs):
        gen = _reseed(lead.seed, si, epoch, lead.device)
        base = {"cpu": torch.get_rng_state()}
        if lead.device.type == "cuda":
            base["cuda"] = torch.cuda.get_rng_state(lead.device)
        rngs = {r.id: dict(base) for r in alive}       # every member starts the epoch where a lone run would
        for r in alive:
            r.set_epoch_lr(epoch)
            r.train_mode(None)
        epoch_t = torch.full((), float(epoch), device=lead.device)
        totals = {r.id: torch.zeros((), device=lead.device) for r in alive}
        t0 = time.perf_counter()
        for idx, x, y in data.train_batches(bs, gen):
            t_out = None
            if users:                                   # once for the group, as each member would run it
                t_out = users[0].teacher_forward(x, kinds)
            for r in alive:
                with _own_rng(rngs[r.id], r.device):
                    totals[r.id] += r.step(x, y, idx, epoch_t, t_out if r in users else None)
        seconds = time.perf_counter() - t0
        for r in list(alive):
            try:
                r.end_epoch(si, None, epoch, totals[r.id].item() / math.ceil(data.num_train / bs), seconds)
            except FloatingPointError as e:
                alive.remove(r)
                try:
                    r.fail(e)
                except KDError as err:
                    errors.append(str(err))
    return [r.finish() for r in alive], errors


def _alone(run) -> tuple[list[dict], list[str]]:
    """A begun run trained on its own: ([record], []) or ([], [its one-line error])."""
    try:
        return [run.train_begun()], []
    except KDError as e:
        return [], [str(e)]
