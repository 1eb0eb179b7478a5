"""The epoch loop, written once: a group of runs that share the data order and the teacher's
forward trains together; a lone run is a group of one.

Per epoch every RNG is reseeded from (seed, phase, epoch), so a run resumed from its per-epoch state
repeats the uninterrupted run (on the CPU; CUDA kernels may differ in the last bits). Per batch:
one draw of indices and augmentation, the teacher's forward once (the union of the feature kinds
its readers ask for, kd.engine.distiller.Distiller.teacher_forward), then each member's own step.

Nothing about a member changes because it ran in a group (tests/test_group.py: bit for bit):
- the teacher's outputs are those the member alone would compute (the same frozen module, input,
  kernels and precision);
- every draw a member's methods make from the global generator (CRD's negatives, dropout) comes
  from that member's own generator state, swapped in before its step and out after;
- each member keeps its optimizer, LR schedule, resume state, checkpoint and result line, and the line
  records the group (`group`: size and members). Its wall time is the group's.
- a member whose loss is not finite is recorded failed and leaves; the others go on.
- resume: members restart together when they all stopped at the same epoch, else each on its own.
Members run in turn, not fused (vmap, grouped convolutions) or on streams: in turn is exact and
needs nothing from a method; fusion changes float rounding. Both are left for a GPU measurement.
"""
from __future__ import annotations

import contextlib
import time

import torch

from kd.engine import dist
from kd.engine.execution import size_compiler


def reseed(seed: int, phase: int, epoch: int, device: torch.device) -> torch.Generator:
    """Seed the global RNGs from (seed, phase, epoch); the data order's generator, seeded alike."""
    s = (seed * 1_000_003 + phase * 10_007 + epoch) % (2**63)
    torch.manual_seed(s)
    g = torch.Generator(device=device)
    g.manual_seed(s)
    return g


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@contextlib.contextmanager
def own_rng(state: dict | None, device: torch.device):
    """A member's generator state in, the global one's back out (no-op for a group of one: None)."""
    if state is None:
        yield
        return
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    try:
        yield
    finally:
        state.update(rng_state(device))


def train(members: list, stop_after_epochs: int | None = None) -> tuple[list[dict], list[str]]:
    """Train a group (its members built, none begun); (records of those that finished, one-line errors)."""
    for m in members:
        m.begin()
    if len(members) > 1 and len({m.resume_point for m in members}) > 1:
        members[0].env.log(f"group of {len(members)}: members stopped at different epochs; each resumes on its own")
        out = [_train_begun([m], stop_after_epochs) for m in members]
        return [r for recs, _ in out for r in recs], [e for _, errs in out for e in errs]
    if len(members) > 1:
        ids = [m.id for m in members]
        for m in members:
            m.group = {"size": len(members), "members": ids}
    return _train_begun(members, stop_after_epochs)


def _train_begun(members: list, stop_after_epochs: int | None) -> tuple[list[dict], list[str]]:
    alive, errors, lead = list(members), [], members[0]
    if any(m.execution.compiled for m in members):
        size_compiler(len(members))                    # every member compiles its own frames
    for si, stage, epochs in lead.plan:               # a group's members share one plan: the main stage only
        start = [m.start_phase(si, stage, epochs) for m in alive][0].start if alive else epochs
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            _epoch(alive, si, stage, epoch)
            seconds = time.perf_counter() - t0
            for m in list(alive):
                try:
                    m.end_epoch(si, stage, epoch, seconds)
                except FloatingPointError as e:
                    alive.remove(m)
                    errors.append(m.fail(e))
            if stop_after_epochs is not None and alive and alive[0].done_epochs >= stop_after_epochs \
                    and (si, epoch + 1) != (lead.plan[-1][0], epochs):
                raise KeyboardInterrupt                  # tests: a run killed at an epoch's end
    return [m.finish() for m in alive], errors


def _epoch(members: list, si: int, stage, epoch: int):
    """One epoch of every member over the same batches: the teacher once per batch, then each step."""
    lead = members[0]
    gen = reseed(lead.seed, si, epoch, lead.device)
    base = rng_state(lead.device) if len(members) > 1 else None
    rngs = {m.id: (dict(base) if base else None) for m in members}   # each starts where a lone run would
    readers = [m for m in members if m.d.reads_teacher(stage) is not None]
    kinds = tuple(sorted({k for m in readers for k in m.d.reads_teacher(stage)}))
    for m in members:
        m.start_epoch(stage, epoch)
    epoch_t = torch.full((), float(epoch), device=lead.device)       # a tensor: no recompile per epoch
    shard = dist.shard if dist.world().size > 1 else None
    for idx, x, y in lead.data.train_batches(lead.spec.recipe.batch_size, gen, shard):
        t_out = readers[0].teacher_forward(x, kinds) if readers else None
        for m in members:
            with own_rng(rngs[m.id], m.device):
                m.loss_sum += m.step(x, y, idx, epoch_t, t_out if m in readers else None)
