"""Runs on a Slurm cluster through submitit: `kd table NAME --executor slurm`, `kd run CELL --executor slurm`.

Each (cell, seed) run is one task of a Slurm job array (submitit's `executor.batch()`), calling the
same `kd.engine.run_cell` as the in-process path, so a job appends exactly the result line the
in-process run would (the results folder takes concurrent writers, kd.records.results.append_record).

Order: the teacher runs that students need (and that are not stored yet) go first, as one array;
the students that need them follow in arrays submitted with `--dependency=afterok:<teacher tasks>`
(one array per set of teachers, so a failed teacher holds back only its own students;
`--kill-on-invalid-dep=yes` cancels them instead of leaving them pending forever). A teacher
already queued or running from an earlier submission is depended on the same way, never submitted
twice.

Time limit and preemption: every task is a submitit Checkpointable (CellRun). Slurm signals it
`signal_delay_s` before the limit; submitit calls CellRun.checkpoint(), which resubmits the same run,
and requeues the job (at most `max_requeue` times). The run resumes from its per-epoch state
(kd.engine.member), so at most one epoch is repeated.

Tracking: every submitted run writes <store>/jobs/<cell>__seed<N>.json (job id, cell, seed, ...).
A run is *done* when its result line exists, *queued*/*running* from Slurm's accounting (sacct,
through submitit's SlurmInfoWatcher; a job sacct does not know yet counts as queued), *failed*
otherwise (the job ended without a result line). `kd table` again skips done, queued and running
runs and resubmits failed ones; `kd list --status` shows the states.

Slurm options (flags, or a YAML file read with safe_load; unknown keys are errors) are SlurmOptions
below. `gpus_per_job` > 1 makes each run one job of that many tasks, one per GPU, trained
data-parallel by kd.engine.dist (as DeiT's run_with_submitit.py: tasks_per_node = GPUs per node).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

import submitit

from kd.errors import KDError

QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED",
          "RESIZING", "UNKNOWN", "SUBMITTED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "STOPPED"}


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


def slurm_options(config: str | os.PathLike | None = None, **flags) -> SlurmOptions:
    """Options from a YAML file, then flags (a flag given wins). Unknown or mistyped keys: one-line error."""
    data: dict = {}
    if config:
        from kd.catalog.cells import read_yaml
        data = read_yaml(Path(config))
    data.update({k: v for k, v in flags.items() if v is not None and v != {}})
    where = str(config) if config else "slurm options"
    valid = [f.name for f in fields(SlurmOptions)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise KDError(f"{where}: unknown Slurm option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    for k, v in data.items():
        t = _TYPES[k]
        if v is not None and (not isinstance(v, t) or isinstance(v, bool) and t is not dict):
            raise KDError(f"{where}: {k} must be {getattr(t, '__name__', 'a number or list')}, got {v!r}")
    for k in ("gpus_per_job", "cpus_per_task", "time_min", "array_parallelism"):
        if k in data and data[k] < 1:
            raise KDError(f"{where}: {k} must be at least 1, got {data[k]}")
    for k, v in (data.get("sbatch") or {}).items():
        if not isinstance(k, str) or not k.replace("-", "").replace("_", "").isalnum():
            raise KDError(f"{where}: sbatch flag {k!r} is not a flag name (e.g. constraint, exclude, mail-type)")
        if not isinstance(v, (str, int, float, bool)):
            raise KDError(f"{where}: sbatch flag {k} needs a plain value, got {v!r}")
    if "setup" in data:
        data["setup"] = tuple(str(x) for x in data["setup"])
    return SlurmOptions(**data)


def parse_sbatch_flags(items: list[str] | None) -> dict:
    """--sbatch KEY=VALUE (repeatable; a bare KEY is a switch, e.g. --sbatch exclusive)."""
    out: dict = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        out[key.strip().lstrip("-")] = value if eq else True
    return out


class CellRun(submitit.helpers.Checkpointable):
    """One (cell, seed) run as a Slurm task: `kd.engine.run_cell`, as `kd run` calls it."""

    def __init__(self, cell: str, seed: int, overrides: dict, data_root: str | None, store: str,
                 results_dir: str, device: str | None = None):
        self.cell, self.seed, self.overrides = cell, seed, dict(overrides)
        self.data_root, self.store, self.results_dir, self.device = data_root, store, results_dir, device

    def __call__(self) -> dict | None:
        from kd.catalog.cells import find_cell
        from kd.engine import run_cell
        rec = run_cell(find_cell(self.cell), self.seed, device=self.device, overrides=self.overrides,
                       data_root=self.data_root, store=self.store, results_dir=self.results_dir, progress=False)
        return None if rec is None else {k: rec.get(k) for k in ("cell_id", "seed", "top1_last", "world_size")}

    def checkpoint(self, *args, **kwargs):
        """Time limit or preemption: resubmit the same run. Nothing needs pickling: the run resumes
        from the per-epoch state it wrote under the store."""
        return submitit.helpers.DelayedSubmission(CellRun(**vars(self)))


# --- tracking ---------------------------------------------------------------------------------

def jobs_dir(store) -> Path:
    from kd.records.store import store_root
    return store_root(store) / "jobs"


def _job_file(store, cid: str, seed: int) -> Path:
    from kd.records.store import safe_name as _safe
    return jobs_dir(store) / f"{_safe(cid)}__seed{seed}.json"


def tracked_jobs(store) -> list[dict]:
    d = jobs_dir(store)
    return [json.loads(f.read_text()) for f in sorted(d.glob("*.json"))] if d.is_dir() else []


def _job_state(job: dict, watcher) -> str:
    """queued | running | failed for a job without a result line."""
    paths = submitit.core.utils.JobPaths(job["folder"], job_id=job["job_id"], task_id=0)
    if paths.result_pickle.exists():           # the task ended: submitit's ("success"|"error", ...)
        try:                                   # a success wrote its result line first (read meanwhile)
            return "done" if submitit.core.utils.pickle_load(paths.result_pickle)[0] == "success" else "failed"
        except Exception:                      # being written
            return "running"
    if job["cluster"] == "local":
        try:
            os.kill(int(job["job_id"]), 0)
            return "running"
        except (OSError, ValueError):
            return "failed"
    state = watcher.get_state(job["job_id"], mode="cache").split()[0].rstrip("+")
    if state in QUEUED:
        return "queued"
    if state in RUNNING:
        return "running"
    return "failed"                            # FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, COMPLETED without a line


def run_states(store, results=None) -> dict[tuple[str, int], dict]:
    """(cell id, seed) -> {"state": done|queued|running|failed, "job_id": ...} for every tracked or
    recorded run. One sacct call for all Slurm jobs."""
    from kd.records.results import read_records
    out: dict[tuple[str, int], dict] = {}
    for r in read_records(results):
        key = (r["cell_id"], r["seed"])
        if r.get("status") == "ok":
            out[key] = {"state": "done", "job_id": None}
        elif key not in out:
            out[key] = {"state": "failed", "job_id": None}
    jobs = [j for j in tracked_jobs(store) if out.get((j["cell_id"], j["seed"]), {}).get("state") != "done"]
    watcher = submitit.slurm.slurm.SlurmInfoWatcher(delay_s=0)
    slurm = [j for j in jobs if j["cluster"] == "slurm"]
    if slurm and shutil.which("sacct"):
        for j in slurm:
            watcher.register_job(j["job_id"])
        watcher.update()
    for j in jobs:
        out[(j["cell_id"], j["seed"])] = {"state": _job_state(j, watcher), "job_id": j["job_id"]}
    return out


# --- planning and submission ------------------------------------------------------------------

@dataclass
class Task:
    cell: object                 # kd.catalog.cells.Cell (its registered id runs, with the overrides)
    cid: str                     # the id its result line carries
    seed: int
    needs: tuple = ()            # (teacher cid, teacher seed) it must wait for, if not stored


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
        rest += [Task(cell, spec.id, s, needs) for s in seeds]
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
            params.update(slurm_partition=opts.partition, slurm_account=opts.account, slurm_qos=opts.qos,
                          slurm_array_parallelism=opts.array_parallelism, slurm_signal_delay_s=opts.signal_delay_s,
                          slurm_setup=list(opts.setup) or None, slurm_additional_parameters=extra or None)
        ex.update_parameters(**params)
    except (ValueError, NameError, AssertionError, RuntimeError) as e:
        raise KDError(f"submitit rejected the Slurm options: {str(e).splitlines()[0]}") from None
    return ex


def _submit_array(ex, runs: list[CellRun]) -> list:
    try:
        with ex.batch():
            jobs = [ex.submit(r) for r in runs]
    except submitit.core.utils.FailedJobError as e:
        raise KDError(f"sbatch failed: {str(e).strip().splitlines()[-1]}") from None
    except (OSError, RuntimeError, submitit.core.utils.FailedSubmissionError) as e:
        msg = getattr(e, "stderr", None) or str(e)
        msg = msg.decode() if isinstance(msg, bytes) else msg
        raise KDError(f"submission failed: {(msg.strip().splitlines() or ['?'])[-1]}") from None
    return jobs


def _prepare_submission(tasks: list[Task], overrides: dict, opts: SlurmOptions, cluster: str, store,
                        results_dir) -> tuple[Path, Path, Path]:
    """Checks that the tasks can be submitted; returns the resolved store and results folders and the
    (created) jobs folder."""
    from kd.engine.dist import check_batch
    from kd.records.results import results_root
    from kd.records.store import store_root
    if cluster == "slurm" and not shutil.which("sbatch"):
        raise KDError("sbatch not found: --executor slurm submits with Slurm's sbatch; run it on a Slurm "
                      "login node, or drop --executor to run here")
    store_p, results_p = store_root(store).resolve(), results_root(results_dir).resolve()
    jdir = jobs_dir(store_p)
    jdir.mkdir(parents=True, exist_ok=True)
    if opts.gpus_per_job > 1:
        from kd.catalog.cells import load_recipe
        for t in tasks:
            check_batch(load_recipe(t.cell.recipe).with_overrides(**overrides).batch_size, opts.gpus_per_job)
    return store_p, results_p, jdir


def _order_tasks(tasks: list[Task], states: dict, log) -> tuple[list[Task], dict[tuple, list[Task]]]:
    """The tasks to submit, neither done, queued nor running: the teachers others need, and the rest
    grouped by the teachers they need."""
    todo = [t for t in tasks if states.get((t.cid, t.seed), {}).get("state") not in ("done", "queued", "running")]
    skipped = len(tasks) - len(todo)
    if skipped:
        n_done = sum(states.get((t.cid, t.seed), {}).get("state") == "done" for t in tasks)
        log(f"skipping {skipped} runs: {n_done} done, {skipped - n_done} queued or running")
    teacher_keys = {n for t in tasks for n in t.needs}
    first = [t for t in todo if (t.cid, t.seed) in teacher_keys]
    groups: dict[tuple, list[Task]] = {}
    for t in todo:
        if (t.cid, t.seed) not in teacher_keys:
            groups.setdefault(t.needs, []).append(t)
    return first, groups


def _write_job_record(store_p: Path, t: Task, rec: dict) -> None:
    tmp = _job_file(store_p, t.cid, t.seed).with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, _job_file(store_p, t.cid, t.seed))


def submit(tasks: list[Task], overrides: dict, opts: SlurmOptions, *, cluster: str = "slurm", data_root=None,
           store=None, results_dir=None, device=None, log=print) -> list[tuple[Task, "submitit.Job"]]:
    """Submit every task not done, queued or running; returns [(task, submitit job)]. Teachers first, and
    their students depend on them (Slurm), or wait for them here (cluster 'local', for tests)."""
    store_p, results_p, jdir = _prepare_submission(tasks, overrides, opts, cluster, store, results_dir)
    folder = jdir / "submitit" / "%j"
    with open(jdir / ".lock", "w") as lock:              # two `kd table` at once never submit a run twice
        fcntl.flock(lock, fcntl.LOCK_EX)
        states = run_states(store_p, results_p)
        job_of = {k: v["job_id"] for k, v in states.items() if v["state"] in ("queued", "running")}
        first, groups = _order_tasks(tasks, states, log)
        submitted: list[tuple[Task, submitit.Job]] = []

        def send(batch: list[Task], dependency: list[str]):
            ex = _executor(cluster, folder, opts, dependency)
            runs = [CellRun(t.cell.id, t.seed, overrides, str(Path(data_root).resolve()) if data_root else None,
                            str(store_p), str(results_p), device) for t in batch]
            jobs = _submit_array(ex, runs)
            for t, j in zip(batch, jobs):
                _write_job_record(store_p, t, {
                    "job_id": j.job_id, "cluster": cluster, "cell_id": t.cid, "cell": t.cell.id, "seed": t.seed,
                    "overrides": overrides, "folder": str(folder), "depends_on": dependency,
                    "gpus": opts.gpus_per_job, "submitted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
                job_of[(t.cid, t.seed)] = j.job_id
                submitted.append((t, j))
            return jobs

        if first:
            jobs = send(first, [])
            log(f"teachers: {len(first)} runs, job {_array_id(jobs)}")
            if cluster != "slurm":                   # no dependencies outside Slurm: wait for them
                for t, j in zip(first, jobs):
                    if j.exception() is not None:
                        raise KDError(f"teacher run {t.cid} seed {t.seed} failed (job {j.job_id}); see {j.paths.stderr}")
        for needs, batch in groups.items():
            dependency = [job_of[n] for n in needs if n in job_of]
            jobs = send(batch, dependency if cluster == "slurm" else [])
            log(f"{len(batch)} runs, job {_array_id(jobs)}"
                + (f" (afterok:{':'.join(dependency)})" if dependency and cluster == "slurm" else ""))
        if not submitted:
            log("nothing to submit")
    return submitted


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
