"""From run specs to members ready to train: checks first, then teachers, locks, data, models."""
from __future__ import annotations

import contextlib

from kd.catalog.cells import validate as validate_names
from kd.engine import dist
from kd.engine.distiller import Distiller
from kd.engine.member import Member
from kd.engine.teacher import Teachers, teacher_mode, teacher_run
from kd.records.files import check_inside, probe_locks
from kd.records.log import csv_path
from kd.records.results import results_file, results_root
from kd.records.store import check_writable, checkpoint_path, load_state, lock_path, run_lock, state_path


def validate(specs: list, env) -> None:
    """Everything that can be refused before a file is written: names, hyperparameters, teacher modes,
    the global batch over the ranks, the results file, per-epoch log and store (writable, no links, locks
    supported), a foreign resume state."""
    import kd.methods
    check_writable(env.store, "checkpoint store", folder=True)
    probe_locks(env.store)
    probe_locks(results_root(env.results))
    for spec in specs:
        validate_names(spec.cell)
        kd.methods.check_terms(spec.cell)
        teacher_mode(spec.cell)
        dist.check_batch(spec.recipe.batch_size, dist.world().size)
        check_writable(results_file(spec.cell.dataset, env.results), "results file", folder=False)
        for path, root, what in ((csv_path(spec.id, spec.seed, env.results), results_root(env.results), "per-epoch log"),
                                 (lock_path(env.store, spec.id, spec.seed), env.store, "lock file"),
                                 (checkpoint_path(spec.id, spec.seed, env.store), env.store, "checkpoint"),
                                 (state_path(spec.id, spec.seed, env.store), env.store, "resume state")):
            check_writable(path, what, folder=False)
            check_inside(path, root, what)
        load_state(state_path(spec.id, spec.seed, env.store), spec.digest)


def missing_teachers(specs: list, env) -> list:
    """The teacher runs that must train before `specs` (none stored), each once."""
    out = []
    for spec in specs:
        tspec, _, stored = teacher_run(spec, env.store)
        if tspec is not None and not stored and tspec not in out:
            env.log(f"no stored teacher for {tspec.id}: training it first (seed {tspec.seed})")
            out.append(tspec)
    return out


def members(specs: list, env, locks: contextlib.ExitStack) -> list[Member]:
    """Every run built, its lock held (rank 0): data loaded once per dataset, teachers once each."""
    from kd.data import load_dataset
    datasets, out = {}, []
    teachers = Teachers(env.store, env.device, env.execution.channels_last)
    for spec in specs:
        if spec.data_key not in datasets:
            ds = load_dataset(spec.data_name, env.data_root, seed=spec.recipe.data_seed)
            datasets[spec.data_key] = ds, ds.on_device(env.device)
        ds, data = datasets[spec.data_key]
        dist.check_batch(spec.recipe.batch_size, dist.world().size, ds.num_train)
        if dist.world().main:                       # several processes: rank 0 holds every lock
            locks.enter_context(run_lock(env.store, spec.id, spec.seed))
        out.append(member(spec, env, (ds, data), *teachers.get(spec, ds.num_classes)))
    return out


def member(spec, env, data=None, teacher=None, teacher_sha: str | None = None, teacher_id: str | None = None) -> Member:
    """One run built on `data` ((Dataset, DeviceData), loaded when None) with `teacher` (frozen, or None)."""
    if data is None:
        from kd.data import load_dataset
        ds = load_dataset(spec.data_name, env.data_root, seed=spec.recipe.data_seed)
        data = ds, ds.on_device(env.device)
    ds, dev_data = data
    d = Distiller.build(spec, teacher, dev_data, ds.num_classes, env.device, env.execution.channels_last)
    return Member(spec, env, ds, dev_data, d, teacher_sha, teacher_id)
