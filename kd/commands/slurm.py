"""Runs on a Slurm cluster through submitit: `kd table NAME --executor slurm`, `kd run CELL --executor slurm`.

Each (cell, seed) run is one task of a Slurm job array (submitit's `executor.batch()`), calling the
same `kd.engine.run_cell` as the in-process path with every setting the command was given (overrides
and --precision, --device, --mode, --no-channels-last, --force, --tensorboard: CellRun), so a job
appends exactly the result line the in-process run would (the results folder takes concurrent
writers, kd.records.results.append_record). A job whose (cell, seed) already has an ok line trains
nothing (a double submission writes nothing), unless --force. With group_jobs (`--group-jobs`), the
runs that can train together (one teacher, dataset, recipe and seed) are one task instead (GroupRun:
kd.engine.run with group=True, one teacher forward per batch).

Order: the teacher runs that students need (and that are not stored yet) go first, as one array;
the students that need them follow in arrays submitted with `--dependency=afterok:<teacher tasks>`
(one array per set of teachers, so a failed teacher holds back only its own students;
`--kill-on-invalid-dep=yes` cancels them instead of leaving them pending forever). A teacher
already queued or running from an earlier submission is depended on the same way, never submitted
twice. A job of several tasks (gpus_per_job > 1) runs its tasks with `srun --kill-on-bad-exit=1`, so
a rank that dies ends the step instead of leaving the others waiting in a collective.

Time limit and preemption: every task is a submitit Checkpointable (CellRun). Slurm signals it
`signal_delay_s` before the limit; submitit calls CellRun.checkpoint(), which resubmits the same run,
and requeues the job (at most `max_requeue` times). The run resumes from its per-epoch state
(kd.engine.member), so at most one epoch is repeated.

Tracking and states: kd.commands.jobs (a tracking file per submitted run, written once sbatch returned
a job id; states from the result lines and sacct, nothing unpickled). `kd table` again skips done,
queued, running and unknown runs and resubmits failed ones; `kd list --status` shows the states.

Slurm options (flags, or a YAML file read with safe_load; unknown keys are errors) are SlurmOptions
below. Every text that reaches the job script (partition, account, qos, setup lines, sbatch flags and
values, folder names) is one printable line, refused in one line otherwise, so no option can add a
line to the script; sbatch flag names follow one pattern and never replace a flag kd writes.
`gpus_per_job` > 1 makes each run one job of that many tasks, one per GPU, trained data-parallel by
kd.engine.dist (as DeiT's run_with_submitit.py: tasks_per_node = GPUs per node).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import math
import os
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

import submitit

from kd.commands.jobs import ACTIVE, jobs_dir, run_states, write_job
from kd.errors import KDError

__all__ = ["CellRun", "SlurmOptions", "run_states", "slurm_options", "submit", "submit_cells"]


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_job: int = 1            # > 1: one data-parallel job (kd.engine.dist), one task per GPU, one node
    cpus_per_task: int = 8           # per task, i.e. per GPU
    mem_gb: float | None = None      # per node; None: the partition's default
    time_min: int = 1440             # per job; a longer run is requeued and resumes
    max_requeue: int = 10            # time-outs/preemptions a run may be requeued after
    array_parallelism: int = 256     # tasks of one array running at once
    signal_delay_s: int = 120        # warning before the time limit (DeiT's value)
    setup: tuple = ()                # shell lines run before each job (module load ..., source .venv/bin/activate)
    sbatch: dict = field(default_factory=dict)   # extra sbatch flags, e.g. {constraint: a100, exclude: "n[1-2]"}


_TYPES = {"partition": str, "account": str, "qos": str, "gpus_per_job": int, "cpus_per_task": int,
          "mem_gb": (int, float), "time_min": int, "max_requeue": int, "array_parallelism": int,
          "signal_delay_s": int, "setup": (list, tuple), "sbatch": dict}
_TYPE_NAMES = {(int, float): "a number", (list, tuple): "a list of lines", dict: "a mapping (flag: value)"}
_FLAG = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# sbatch flags kd or submitit write themselves (or that have an option of their own above): never from --sbatch
RESERVED = {"output", "error", "open-mode", "array", "dependency", "kill-on-invalid-dep", "signal", "job-name",
            "wrap", "wckey", "partition", "account", "qos", "time", "nodes", "ntasks-per-node", "gpus-per-node",
            "cpus-per-task", "mem", "requeue", "no-requeue", "parsable", "test-only", "batch"}


def _printable(v) -> bool:
    """No newline, carriage return, tab or other control or separator character (str.isprintable): one
    value can never become two lines of a job script."""
    return str(v).isprintable()


def slurm_options(config: str | os.PathLike | None = None, **flags) -> SlurmOptions:
    """Options from a YAML file, then flags (a flag given wins; --sbatch flags add to the file's). Unknown,
    mistyped or out-of-range
    keys, and any value that could add a line to the job script: one-line error."""
    data: dict = {}
    if config:
        from kd.catalog.cells import read_yaml
        if not Path(config).is_file():
            raise KDError(f"--slurm-config {config}: no such file (or not a regular file)")
        data = read_yaml(Path(config))
    flags = {k: v for k, v in flags.items() if v is not None and v != {}}
    if isinstance(data.get("sbatch"), dict) and isinstance(flags.get("sbatch"), dict):
        flags["sbatch"] = {**data["sbatch"], **flags["sbatch"]}      # --sbatch adds to the file's flags
    data.update(flags)
    where = str(config) if config else "slurm options"
    valid = [f.name for f in fields(SlurmOptions)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise KDError(f"{where}: unknown Slurm option(s) {', '.join(map(str, unknown))[:200]}; valid: {', '.join(valid)}")
    for k, v in data.items():
        t = _TYPES[k]
        if v is not None and (not isinstance(v, t) or isinstance(v, bool) and t is not dict):
            raise KDError(f"{where}: {k} must be {_TYPE_NAMES.get(t, getattr(t, '__name__', t))}, got {str(v)[:60]!r}")
    _check_ranges(data, where)
    _check_text(data, where)
    if "setup" in data:
        data["setup"] = tuple(data["setup"])
    return SlurmOptions(**data)


def _check_ranges(data: dict, where: str) -> None:
    for k in ("gpus_per_job", "cpus_per_task", "time_min", "array_parallelism"):
        if data.get(k) is not None and data[k] < 1:
            raise KDError(f"{where}: {k} must be at least 1, got {data[k]}")
    for k in ("max_requeue", "signal_delay_s"):
        if data.get(k) is not None and data[k] < 0:
            raise KDError(f"{where}: {k} must be at least 0, got {data[k]}")
    mem = data.get("mem_gb")
    if mem is not None and not (math.isfinite(mem) and 0 < mem <= 2**20):
        raise KDError(f"{where}: mem_gb must be a number of GB > 0, got {mem}")
    time_s = 60 * (data.get("time_min") or SlurmOptions.time_min)
    delay = SlurmOptions.signal_delay_s if data.get("signal_delay_s") is None else data["signal_delay_s"]
    if delay >= time_s:
        raise KDError(f"{where}: signal_delay_s {delay} must be shorter than the time limit ({time_s} s)")


def _check_text(data: dict, where: str) -> None:
    """Every text that reaches the job script: one printable line; sbatch flag names of the usual form."""
    for k in ("partition", "account", "qos"):
        if data.get(k) is not None and not (data[k] and _printable(data[k])):
            raise KDError(f"{where}: {k} {data[k]!r}: empty, or a control character (a newline would add a line "
                          f"to the job script)")
    for line in data.get("setup") or ():
        if not (isinstance(line, str) and _printable(line)):
            raise KDError(f"{where}: setup: {str(line)[:60]!r} is not one line of text (each setup entry is one "
                          f"shell line, without newlines or control characters)")
    for k, v in (data.get("sbatch") or {}).items():
        if not (isinstance(k, str) and _FLAG.match(k)):
            raise KDError(f"{where}: sbatch flag {str(k)[:40]!r} is not a flag name (letters, digits, '-', '_'; "
                          f"e.g. constraint, exclude, mail-type)")
        if k.replace("_", "-").lower() in RESERVED:
            raise KDError(f"{where}: sbatch flag {k} is set by kd (or by an option of its own); not from --sbatch")
        if not isinstance(v, (str, int, float, bool)) or isinstance(v, float) and not math.isfinite(v):
            raise KDError(f"{where}: sbatch flag {k} needs a plain value, got {str(v)[:60]!r}")
        if not _printable(v) or v == "":
            raise KDError(f"{where}: sbatch flag {k}: value {str(v)[:60]!r} is empty or holds a control character "
                          f"(a newline would add a line to the job script)")


def parse_sbatch_flags(items: list[str] | None) -> dict:
    """--sbatch KEY=VALUE (repeatable; a bare KEY is a switch, e.g. --sbatch exclusive)."""
    out: dict = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise KDError(f"--sbatch {item!r}: expected KEY=VALUE or KEY (e.g. --sbatch constraint=a100)")
        out[key] = value if eq else True
    return out


class _Job(submitit.helpers.Checkpointable):
    """What CellRun and GroupRun share: the settings, the execution, TensorBoard, the skip of recorded runs."""

    def _settings(self, seed: int, overrides: dict, data_root, store, results_dir, device, mode, channels_last,
                  force: bool, tensorboard) -> None:
        self.seed, self.overrides = seed, dict(overrides)
        self.data_root, self.store, self.results_dir, self.device = data_root, store, results_dir, device
        self.mode, self.channels_last, self.force, self.tensorboard = mode, channels_last, force, tensorboard

    def _todo(self, cells: list[str]) -> list:
        """The runs of `cells` (RunSpecs) to train: those without an ok line (all with force), said."""
        from kd.catalog.cells import find_cell
        from kd.catalog.spec import RunSpec
        from kd.records.results import recorded_seeds
        specs = [RunSpec.of(find_cell(c), self.seed, self.overrides) for c in cells]
        todo = [s for s in specs if self.force or s.seed not in recorded_seeds(s.id, self.results_dir)]
        for s in specs:
            if s not in todo:
                print(f"{s.id} seed {s.seed}: already recorded under {self.results_dir}; not trained again")
        if todo and self.tensorboard:
            from kd.records.log import configure
            configure(tensorboard=self.tensorboard)
        return todo

    def _execution(self):
        """--mode / --no-channels-last on the job's device (None: that device's default)."""
        if self.mode is None and self.channels_last is None:
            return None
        from kd.engine.execution import resolve
        return resolve(self.device, self.mode, self.channels_last)

    def checkpoint(self, *args, **kwargs):
        """Time limit or preemption: resubmit the same job. Nothing needs pickling: each run resumes
        from the per-epoch state it wrote under the store."""
        return submitit.helpers.DelayedSubmission(type(self)(**vars(self)))


class CellRun(_Job):
    """One (cell, seed) run as a Slurm task: `kd.engine.run_cell` with every setting `kd run` was given
    (overrides, precision among them, device, --mode, --no-channels-last, --force, --tensorboard). A run
    that already has an ok result line is not trained again (a double submission writes nothing)
    unless force."""

    def __init__(self, cell: str, seed: int, overrides: dict, data_root: str | None, store: str,
                 results_dir: str, device: str | None = None, mode: str | None = None,
                 channels_last: bool | None = None, force: bool = False, tensorboard: str | None = None):
        self.cell = cell
        self._settings(seed, overrides, data_root, store, results_dir, device, mode, channels_last, force, tensorboard)

    def __call__(self) -> dict | None:
        from kd.engine import run_cell
        todo = self._todo([self.cell])
        if not todo:
            from kd.catalog.cells import find_cell
            from kd.catalog.spec import RunSpec
            return {"cell_id": RunSpec.of(find_cell(self.cell), 0, self.overrides).id, "seed": self.seed,
                    "skipped": "already recorded"}
        rec = run_cell(todo[0].cell, self.seed, device=self.device, overrides=self.overrides, data_root=self.data_root,
                       store=self.store, results_dir=self.results_dir, progress=False, execution=self._execution())
        return None if rec is None else {k: rec.get(k) for k in ("cell_id", "seed", "top1_last", "world_size")}


class GroupRun(_Job):
    """Runs of one seed that share a teacher (and dataset and recipe), as one Slurm task: kd.engine.run
    with group=True trains them together, the teacher's forward once per batch for all of them (the
    speed-up of `kd table` on one machine, kd.engine.grouping), each with its own result line exactly as
    alone. Runs already recorded are left out (unless force)."""

    def __init__(self, cells: list[str], seed: int, overrides: dict, data_root: str | None, store: str,
                 results_dir: str, device: str | None = None, mode: str | None = None,
                 channels_last: bool | None = None, force: bool = False, tensorboard: str | None = None):
        self.cells = list(cells)
        self._settings(seed, overrides, data_root, store, results_dir, device, mode, channels_last, force, tensorboard)

    def __call__(self) -> dict:
        from kd.engine import Env, run
        todo = self._todo(self.cells)
        env = Env(self.data_root, self.store, self.results_dir, self.device, self._execution(), progress=False)
        records, errors = run(todo, env, group=True) if todo else ([], [])
        if errors:
            raise KDError("; ".join(errors))
        return {"seed": self.seed, "trained": [r["cell_id"] for r in records],
                "skipped": [s for s in self.cells if s not in {t.cell.id for t in todo}]}


# --- planning and submission ------------------------------------------------------------------

@dataclass
class Task:
    cell: object                 # kd.catalog.cells.Cell (its registered id runs, with the overrides)
    cid: str                     # the id its result line carries
    seed: int
    needs: tuple = ()            # (teacher cid, teacher seed) it must wait for, if not stored
    share: tuple = ()            # (dataset, recipe id, teacher cid or None): runs that can train together


def plan_tasks(cells, seeds: list[int], overrides: dict, store) -> list[Task]:
    """Every (cell, seed) plus the teacher runs they need that are not stored, teachers first."""
    from kd.catalog.spec import RunSpec
    from kd.engine.teacher import teacher_run
    from kd.records.store import store_root
    store = store_root(store)
    teachers: dict[tuple[str, int], Task] = {}
    rest: list[Task] = []
    for cell in cells:
        spec = RunSpec.of(cell, 0, overrides)
        needs = ()
        tspec, _, stored = teacher_run(spec, store)
        if tspec is not None and not stored:
            needs = (tspec.key,)
            teachers.setdefault(needs[0], Task(tspec.cell, tspec.id, tspec.seed))     # a registered cell (load_cells)
        share = (cell.dataset, spec.recipe.id, tspec.id if tspec is not None else None)
        rest += [Task(cell, spec.id, s, needs, share) for s in dict.fromkeys(seeds)]
    rest = [t for t in rest if (t.cid, t.seed) not in teachers]
    return list(teachers.values()) + rest


def _executor(cluster: str, folder: Path, opts: SlurmOptions, dependency: list[str]):
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=opts.max_requeue,
                                   **({"local_max_num_timeout": opts.max_requeue} if cluster == "local" else {}))
        tasks = opts.gpus_per_job if opts.gpus_per_job > 1 else 1
        params = dict(name="kd", timeout_min=opts.time_min, cpus_per_task=opts.cpus_per_task, nodes=1,
                      gpus_per_node=opts.gpus_per_job, tasks_per_node=tasks, mem_gb=opts.mem_gb)
        if cluster == "slurm":
            extra = {k.replace("_", "-"): v for k, v in opts.sbatch.items()}
            if dependency:
                params["slurm_dependency"] = "afterok:" + ":".join(dependency)
                extra["kill-on-invalid-dep"] = "yes"
            if tasks > 1:                     # a dead rank ends the step: the others never wait in a collective
                params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
            params.update(slurm_partition=opts.partition, slurm_account=opts.account, slurm_qos=opts.qos,
                          slurm_array_parallelism=opts.array_parallelism, slurm_signal_delay_s=opts.signal_delay_s,
                          slurm_setup=list(opts.setup) or None, slurm_additional_parameters=extra or None)
        ex.update_parameters(**params)
    except (ValueError, NameError, AssertionError, RuntimeError, OverflowError) as e:
        raise KDError(f"submitit rejected the Slurm options: {str(e).splitlines()[0]}") from None
    return ex


def _submit_array(ex, runs: list[CellRun]) -> list:
    try:
        with ex.batch():
            jobs = [ex.submit(r) for r in runs]
    except submitit.core.utils.FailedJobError as e:
        raise KDError(f"sbatch failed: {(str(e).strip().splitlines() or ['?'])[-1][:200]}") from None
    except (OSError, RuntimeError, submitit.core.utils.FailedSubmissionError) as e:
        msg = getattr(e, "stderr", None) or str(e)
        msg = msg.decode(errors="replace") if isinstance(msg, bytes) else msg
        lines = [x for x in msg.strip().splitlines() if x.strip()] or ["?"]
        raise KDError(f"submission failed: {(lines[0] if 'make sense' in lines[0] else lines[-1])[:200]}") from None
    return jobs


def _undo(jdir: Path, before: set, created: bool) -> None:
    """After a failed submission: remove submitit's temporary files of it (pickles and scripts at the top
    of <jobs>/submitit/), and the jobs folder itself when this submission created it."""
    sub = jdir / "submitit"
    for p in (sub.iterdir() if sub.is_dir() else []):
        if p not in before and p.is_file() and (p.suffix == ".pkl" or p.name.startswith(".submission_file_")):
            p.unlink(missing_ok=True)
    if created:
        (jdir / ".lock").unlink(missing_ok=True)
        for d in (sub, jdir):
            try:
                d.rmdir()
            except OSError:
                pass


def _prepare_submission(tasks: list[Task], overrides: dict, opts: SlurmOptions, cluster: str, store,
                        results_dir, paths: dict) -> tuple[Path, Path, Path]:
    """Checks that the tasks can be submitted, before anything is written; returns the resolved store and
    results folders and the jobs folder (not created here)."""
    from kd.engine.dist import check_batch
    from kd.records.files import probe_locks
    from kd.records.results import results_root
    from kd.records.store import check_writable, store_root
    if cluster == "slurm" and not shutil.which("sbatch"):
        raise KDError("sbatch not found: --executor slurm submits with Slurm's sbatch; run it on a Slurm "
                      "login node, or drop --executor to run here")
    store_p, results_p = store_root(store).absolute(), results_root(results_dir).absolute()
    for what, p in {"checkpoint store": store_p, "results folder": results_p, **paths}.items():
        if p is not None and not _printable(p):
            raise KDError(f"the {what} {str(p)!r} holds a control character; its name would reach the job script")
    check_writable(store_p, "checkpoint store", folder=True)
    check_writable(results_p, "results folder", folder=True)
    probe_locks(store_p)
    probe_locks(results_p)
    if opts.gpus_per_job > 1:
        from kd.catalog.cells import load_recipe
        for t in tasks:
            check_batch(load_recipe(t.cell.recipe).with_overrides(**overrides).batch_size, opts.gpus_per_job)
    return store_p.resolve(), results_p.resolve(), jobs_dir(store_p.resolve())


def _order_tasks(tasks: list[Task], states: dict, log, force: bool = False) -> tuple[list[Task], dict]:
    """The tasks to submit: neither queued, running nor of unknown state, nor done (unless force); the
    teachers others need, and the rest grouped by the teachers they need."""
    skip = ACTIVE if force else ACTIVE + ("done",)
    todo = [t for t in tasks if states.get((t.cid, t.seed), {}).get("state") not in skip]
    if len(todo) < len(tasks):
        n = {s: sum(states.get((t.cid, t.seed), {}).get("state") == s for t in tasks) for s in ("done",) + ACTIVE}
        log(f"skipping {len(tasks) - len(todo)} runs: " + ", ".join(f"{v} {k}" for k, v in n.items() if v and k in skip))
    teacher_keys = {n for t in tasks for n in t.needs}
    first = [t for t in todo if (t.cid, t.seed) in teacher_keys]
    groups: dict[tuple, list[Task]] = {}
    for t in todo:
        if (t.cid, t.seed) not in teacher_keys:
            groups.setdefault(t.needs, []).append(t)
    return first, groups


def submit(tasks: list[Task], overrides: dict, opts: SlurmOptions, *, cluster: str = "slurm", data_root=None,
           store=None, results_dir=None, device=None, settings: dict | None = None, group_jobs: bool = False,
           log=print) -> list[tuple[Task, "submitit.Job"]]:
    """Submit every task not done, queued, running or of unknown state; returns [(task, submitit job)].
    Teachers first, and their students depend on them (Slurm), or wait for them here (cluster 'local',
    for tests). `settings`: CellRun's mode, channels_last, force, tensorboard. group_jobs: the runs that
    can train together go in one job each (GroupRun), else one job per run. Refusals come before
    anything is written; a failed sbatch leaves no file behind."""
    settings = dict(settings or {})
    tb = settings.get("tensorboard")
    paths = {"data root": Path(data_root).absolute() if data_root else None,
             "TensorBoard folder": Path(tb).absolute() if tb else None}
    store_p, results_p, jdir = _prepare_submission(tasks, overrides, opts, cluster, store, results_dir, paths)
    if tb:
        settings["tensorboard"] = str(paths["TensorBoard folder"])
    created = not jdir.exists()
    jdir.mkdir(parents=True, exist_ok=True)
    folder = jdir / "submitit" / "%j"
    submitted: list[tuple[Task, submitit.Job]] = []
    try:
        with _jobs_lock(jdir):                          # two submissions at once never submit a run twice
            states = run_states(store_p, results_p)
            job_of = {k: v["job_id"] for k, v in states.items() if v["state"] in ACTIVE and v["job_id"]}
            first, groups = _order_tasks(tasks, states, log, settings.get("force", False))

            def send(batch: list[Task], dependency: list[str], grouped: bool = False):
                ex = _executor(cluster, folder, opts, dependency)
                units = _units(batch, grouped)
                common = (overrides, str(paths["data root"]) if data_root else None, str(store_p), str(results_p),
                          device)
                runs = [CellRun(u[0].cell.id, u[0].seed, *common, **settings) if len(u) == 1 else
                        GroupRun([t.cell.id for t in u], u[0].seed, *common, **settings) for u in units]
                before = set((jdir / "submitit").iterdir()) if (jdir / "submitit").is_dir() else set()
                try:
                    jobs = _submit_array(ex, runs)
                except KDError:
                    _undo(jdir, before, created and not submitted)
                    raise
                for unit, j in zip(units, jobs):        # tracked only once sbatch gave a job id
                    for t in unit:
                        write_job(store_p, t.cid, t.seed, {
                            "job_id": j.job_id, "cluster": cluster, "cell_id": t.cid, "cell": t.cell.id, "seed": t.seed,
                            "overrides": overrides, "settings": {"device": device, **settings},
                            "depends_on": dependency, "group": [x.cid for x in unit] if len(unit) > 1 else None,
                            "log_folder": str(folder), "gpus": opts.gpus_per_job,
                            "submitted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
                        job_of[(t.cid, t.seed)] = j.job_id
                        submitted.append((t, j))
                return jobs

            _send_all(first, groups, send, job_of, cluster, log, group_jobs)
    except KDError:
        if created and not submitted:
            _undo(jdir, set(), True)
        raise
    return submitted


def _units(batch: list[Task], grouped: bool) -> list[list[Task]]:
    """The jobs a batch becomes: one per task, or (grouped) one per set of runs that can train together
    (kd.engine.grouping decides in the job): the same dataset, recipe and seed and the same teacher; a run
    without a teacher joins such a set of its dataset, recipe and seed."""
    if not grouped:
        return [[t] for t in batch]
    units: dict[tuple, list[Task]] = {}
    for t in sorted(batch, key=lambda t: t.share[2] is None):       # runs with a teacher first
        key = (*t.share, t.seed)
        if t.share[2] is None:
            key = next((k for k in units if k[:2] == t.share[:2] and k[3] == t.seed), key)
        units.setdefault(key, []).append(t)
    return list(units.values())


def _send_all(first: list[Task], groups: dict, send, job_of: dict, cluster: str, log, group_jobs: bool) -> None:
    sent = 0
    if first:
        jobs = send(first, [])
        sent += len(jobs)
        log(f"teachers: {len(first)} runs, job {_array_id(jobs)}")
        if cluster != "slurm":                   # no dependencies outside Slurm: wait for them
            for t, j in zip(first, jobs):
                if j.exception() is not None:
                    raise KDError(f"teacher run {t.cid} seed {t.seed} failed (job {j.job_id}); see {j.paths.stderr}")
    for needs, batch in groups.items():
        dependency = [job_of[n] for n in needs if n in job_of]
        jobs = send(batch, dependency if cluster == "slurm" else [], group_jobs)
        sent += len(jobs)
        log(f"{len(batch)} runs" + (f" in {len(jobs)} grouped jobs" if len(jobs) < len(batch) else "")
            + f", job {_array_id(jobs)}"
            + (f" (afterok:{':'.join(dependency)})" if dependency and cluster == "slurm" else ""))
    if not sent:
        log("nothing to submit")


class _jobs_lock:
    """An exclusive flock on <jobs>/.lock (never through a link; an unsupported flock is one line)."""

    def __init__(self, jdir: Path):
        self.path = jdir / ".lock"

    def __enter__(self):
        from kd.records.files import flock, open_write
        self.fd = open_write(self.path, os.O_WRONLY | os.O_CREAT, "lock file")
        try:
            flock(self.fd, self.path, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _array_id(jobs) -> str:
    ids = [j.job_id for j in jobs]
    main = {i.split("_")[0] for i in ids}
    return f"{main.pop()}_[0-{len(ids) - 1}]" if len(main) == 1 and "_" in ids[0] else ", ".join(ids)


def submit_cells(cells, seeds: list[int], overrides: dict, opts: SlurmOptions, **kw) -> list[tuple[Task, submitit.Job]]:
    """`kd table/run --executor slurm`: plan, submit, print one line per array and return."""
    tasks = plan_tasks(cells, seeds, overrides, kw.get("store"))
    return submit(tasks, overrides, opts, **kw)


def options_from_args(a) -> SlurmOptions:
    """SlurmOptions from the CLI flags (kd.cli) over --slurm-config."""
    return slurm_options(a.slurm_config, partition=a.partition, account=a.account, qos=a.qos,
                         gpus_per_job=a.gpus_per_job, cpus_per_task=a.cpus_per_task, mem_gb=a.mem_gb,
                         time_min=a.time_min, sbatch=parse_sbatch_flags(a.sbatch) or None)
