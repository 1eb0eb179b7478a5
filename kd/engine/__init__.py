"""The one entry every launcher goes through: `run(specs, env)` trains runs and returns their lines.

In this order: join the process group when there is one; drop duplicate runs; validate every
run (names, hyperparameters, teacher modes, batch over ranks, writable folders, resume states);
train the missing teachers first (each a run like any other); take every run's lock (rank 0 only);
load each dataset once and each frozen teacher once per (checkpoint, BatchNorm mode); build; group
(kd.engine.grouping); train each group with the one loop (kd.engine.loop).
"""
from __future__ import annotations

import contextlib

import torch

from kd.catalog.spec import RunSpec
from kd.engine import dist
from kd.engine.env import Env
from kd.errors import KDError

__all__ = ["Env", "RunSpec", "run", "run_cell"]


def run(specs: list[RunSpec], env: Env | None = None, *, group: bool = True,
        stop_after_epochs: int | None = None) -> tuple[list[dict], list[str]]:
    """Train `specs` (their teachers first where none is stored); (records, one-line errors of the
    runs that failed and were recorded failed). Bad input raises one KDError line before anything is written."""
    from kd.engine import build, grouping
    env = env or Env()
    specs = list(dict.fromkeys(specs))                       # a run asked for twice trains once
    if not specs:
        return [], []
    device = dist.setup(torch.device(env.device) if env.device else None, specs[0].recipe.batch_size)
    env = env.resolved(device)
    if not dist.world().main:
        env = env.quiet()
    build.validate(specs, env)
    teachers = build.missing_teachers(specs, env)
    records, errors = [], []
    if teachers:
        records, errors = run(teachers, env, group=False)
        if errors:
            raise KDError(f"a teacher failed, so its students cannot train: {'; '.join(errors)}")
        specs = [s for s in specs if s not in teachers]
    with contextlib.ExitStack() as locks:
        members = build.members(specs, env, locks)
        for g in (grouping.partition(members) if group else [[m] for m in members]):
            if len(g) > 1:
                env.log(f"training {len(g)} runs together (one teacher forward per batch): {', '.join(m.id for m in g)}")
            recs, errs = _train(g, stop_after_epochs)
            records, errors = records + recs, errors + errs
    return records, errors


def _train(group: list, stop_after_epochs: int | None) -> tuple[list[dict], list[str]]:
    """One group through the loop. A compiled group starts with an empty compiler cache and drops its frames
    when it ends (they are never called again; kept, they would fill the recompile limit over a table)."""
    from kd.engine import loop
    from kd.engine.execution import reset_compiler
    compiled = any(m.execution.compiled for m in group)
    if compiled:
        reset_compiler()
    try:
        return loop.train(group, stop_after_epochs)
    except Exception as e:
        if type(e).__name__ == "FailOnRecompileLimitHit":      # torch._dynamo.exc, torch >= 2.6
            raise KDError(f"{group[0].id}: the compiler's recompile limit was reached; this run did not finish "
                          f"compiled (rerun it; --mode eager avoids compiling): {e}".splitlines()[0]) from None
        raise
    finally:
        if compiled:
            reset_compiler()


def run_cell(cell, seed: int = 0, *, device=None, overrides: dict | None = None, data_root=None, store=None,
             results_dir=None, progress=True, log=print, stop_after_epochs=None, execution=None) -> dict:
    """Train one (cell, seed), its teacher first when none is stored; its record. A non-finite loss
    is recorded as a failed run and raised as one KDError line."""
    spec = RunSpec.of(cell, seed, overrides)
    env = Env(data_root, store, results_dir, device, execution, progress, log)
    records, errors = run([spec], env, stop_after_epochs=stop_after_epochs)
    if errors:
        raise KDError("; ".join(errors))
    return next(r for r in records if r["cell_id"] == spec.id and r["seed"] == seed)
