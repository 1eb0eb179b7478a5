"""Runs submitted to Slurm (kd.commands.slurm): their tracking files and their states, read without
unpickling anything and without following anything a tracking file names.

Tracking: <store>/jobs/<cell id, '/' -> '__'>__seed<N>.json, written atomically once sbatch has returned
a job id (job id, cluster, cell, seed, overrides, settings, dependencies). A tracking file is untrusted
input, like a result line: one that is not a regular file, not a JSON object, or lacks a well-formed
job_id, cluster, cell_id or seed is skipped, and the skipped files are reported in one warning line.
Its other fields (the Slurm log folder among them) are written for people and never read.

States, as submitit maps Slurm's (submitit.core.core.InfoWatcher.is_done counts READY, PENDING,
RUNNING, UNKNOWN, REQUEUED, COMPLETING and PREEMPTED as unfinished):
    done      the run's ok result line exists (whatever its job says)
    queued    PENDING, REQUEUED, PREEMPTED (Slurm requeues it), CONFIGURING, SUSPENDED, ...
    running   RUNNING, COMPLETING, STAGE_OUT, SIGNALING, STOPPED
    failed    FAILED, CANCELLED, TIMEOUT (after the last requeue), OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL,
              DEADLINE, ..., and COMPLETED without a result line
    unknown   sacct failed (accounting off, not installed, unreadable output; one warning line says
              so) or does not list the job
The raw Slurm state is kept and shown: `failed(OUT_OF_MEMORY)`, `queued(PREEMPTED)`. A queued, running
or unknown run is neither submitted again nor trained here; a failed one is.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED",
          "RESIZING", "SUBMITTED", "READY", "PREEMPTED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "STOPPED"}
ACTIVE = ("queued", "running", "unknown")           # never submitted twice, never trained here meanwhile
_PLAIN = {"PENDING": "queued", "RUNNING": "running", "FAILED": "failed"}
_JOB_ID = re.compile(r"^[0-9]{1,18}(_[0-9]{1,9})?$")
_SACCT_ID = re.compile(r"^([0-9]{1,18})(?:_([0-9]{1,9})|_\[([0-9,%\-]{1,200})\])?$")
_warned: set = set()


def jobs_dir(store) -> Path:
    from kd.records.store import store_root
    return store_root(store) / "jobs"


def job_file(store, cid: str, seed: int) -> Path:
    from kd.records.store import safe_name
    return jobs_dir(store) / f"{safe_name(cid)}__seed{seed}.json"


def write_job(store, cid: str, seed: int, rec: dict) -> None:
    """The tracking file of (cid, seed), replaced atomically (never written through a link)."""
    from kd.records.store import atomic_write
    text = json.dumps(rec, indent=1, sort_keys=True) + "\n"
    atomic_write(job_file(store, cid, seed), lambda t: t.write_text(text))


def check_job(job) -> str | None:
    """Why `job` is not a tracking record, or None."""
    if not isinstance(job, dict):
        return f"a JSON {type(job).__name__}, not an object"
    if job.get("cluster") not in ("slurm", "local"):
        return f"cluster {str(job.get('cluster'))[:20]!r} is neither slurm nor local"
    if not (isinstance(job.get("job_id"), str) and _JOB_ID.match(job["job_id"])):
        return f"job_id {str(job.get('job_id'))[:30]!r} is not a Slurm job id"
    if not (isinstance(job.get("cell_id"), str) and job["cell_id"].count("/") == 3):
        return "'cell_id' missing or not dataset/label/model/recipe"
    seed = job.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        return "'seed' missing or not a whole number"
    return None


def tracked_jobs(store) -> list[dict]:
    """The well-formed tracking records under <store>/jobs; the others reported in one warning line."""
    from kd.records.files import NotReadable, read_regular
    d = jobs_dir(store)
    if not d.is_dir():
        return []
    jobs, bad = [], []
    for f in sorted(d.glob("*.json")):
        try:
            job = json.loads(read_regular(f, limit=1 << 20).decode("utf-8"))
            why = check_job(job)
        except (NotReadable, OSError, ValueError, RecursionError) as e:
            why = str(getattr(e, "strerror", None) or e)[:100] or type(e).__name__
        if why:
            bad.append(f"{f.name}: {why}")
        else:
            jobs.append(job)
    _warn(bad and f"skipped {len(bad)} job file(s) under {d} that are not kd tracking records ({bad[0]})")
    return jobs


def _warn(message) -> None:
    if message and message not in _warned:
        _warned.add(message)
        print(f"kd: warning: {message}", file=sys.stderr)


def read_sacct(text: str) -> dict[str, str]:
    """{job id (`1001`, `1001_3`): raw state} from `sacct --parsable2` output with its header line;
    job steps are left out, array ranges (`1001_[2-5%4]`) expanded. ValueError when the output has no
    JobID|State header."""
    lines = text.splitlines()
    names = lines[0].split("|") if lines else []
    if "JobID" not in names or "State" not in names:
        raise ValueError("no JobID|State header")
    i_id, i_state = names.index("JobID"), names.index("State")
    out = {}
    for line in lines[1:]:
        fields = line.split("|")
        if len(fields) <= max(i_id, i_state):
            continue
        m = _SACCT_ID.match(fields[i_id].strip())
        words = fields[i_state].split()
        if not m or not words or not re.fullmatch(r"[A-Z_]{2,40}\+?", words[0]):
            continue                                     # a step (1001.batch), garbage
        state = words[0].rstrip("+")
        main, task, ranges = m.groups()
        if ranges is None:
            out[f"{main}_{task}" if task else main] = state
            continue
        for part in ranges.split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            if lo.isdigit() and (hi.isdigit() or not hi) and int(hi or lo) - int(lo) < 100_000:
                out.update({f"{main}_{k}": state for k in range(int(lo), int(hi or lo) + 1)})
    return out


def sacct_states(job_ids: list[str]) -> tuple[dict[str, str], str | None]:
    """({job id: raw state}, None) from one sacct call, or ({}, why) when sacct fails."""
    mains = sorted({j.split("_")[0] for j in job_ids})
    if not mains:
        return {}, None
    if not shutil.which("sacct"):
        return {}, "sacct not found"
    cmd = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"] + [a for m in mains for a in ("-j", m)]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {}, f"sacct: {type(e).__name__}"
    err = r.stderr.decode("utf-8", "replace").strip().splitlines()
    if r.returncode != 0:
        return {}, f"sacct exited with status {r.returncode}" + (f": {err[-1][:120]}" if err else "")
    try:
        return read_sacct(r.stdout.decode("utf-8", "replace")), None
    except ValueError as e:
        return {}, f"sacct printed what kd cannot read ({e})"


def slurm_state(raw: str | None) -> str:
    if raw is None or raw == "UNKNOWN":
        return "unknown"
    return "queued" if raw in QUEUED else "running" if raw in RUNNING else "failed"


def shown(state: str, raw: str | None) -> str:
    """`queued`, `failed(OUT_OF_MEMORY)`, `failed(COMPLETED, no result line)`, `unknown(sacct failed)`."""
    if raw is None or _PLAIN.get(raw) == state:
        return state
    return f"{state}({raw}, no result line)" if raw == "COMPLETED" else f"{state}({raw})"


def _lookup(raw: dict, job_id: str) -> str | None:
    return raw.get(job_id) or raw.get(job_id.split("_")[0])


def _local_state(job_id: str) -> tuple[str, str | None]:
    """A job of submitit's local executor (tests): its process id alive or not."""
    try:
        os.kill(int(job_id), 0)
        return "running", None
    except (OSError, ValueError, OverflowError):
        return "failed", "ended without a result line"


def run_states(store, results=None) -> dict[tuple[str, int], dict]:
    """(cell id, seed) -> {"state": done|queued|running|failed|unknown, "shown": with the raw Slurm state,
    "job_id"} for every recorded or tracked run. One sacct call for all Slurm jobs; nothing unpickled."""
    from kd.records.results import read_records
    out: dict[tuple[str, int], dict] = {}
    for r in read_records(results):
        key = (r["cell_id"], r["seed"])
        if r.get("status") == "ok":
            out[key] = {"state": "done", "shown": "done", "job_id": None}
        elif key not in out:
            out[key] = {"state": "failed", "shown": "failed", "job_id": None}
    jobs = [j for j in tracked_jobs(store) if out.get((j["cell_id"], j["seed"]), {}).get("state") != "done"]
    slurm = [j["job_id"] for j in jobs if j["cluster"] == "slurm"]
    raw, why = sacct_states(slurm)
    if why:                       # once per call: each command asks sacct once
        print(f"kd: warning: {why}; the state of {len(slurm)} submitted run(s) is unknown (shown as unknown; they "
              f"are neither resubmitted nor trained here until sacct answers)", file=sys.stderr)
    for j in jobs:
        if j["cluster"] == "local":
            state, r = _local_state(j["job_id"])
        else:
            r = "sacct failed" if why else _lookup(raw, j["job_id"]) or "not in sacct"
            state = "unknown" if why or r == "not in sacct" else slurm_state(r)
        out[(j["cell_id"], j["seed"])] = {"state": state, "shown": shown(state, r), "job_id": j["job_id"]}
    return out
