"""`--executor slurm` (kd.commands.slurm): a table through submitit's local executor gives the in-process
result lines; the sbatch scripts, dependencies and job tracking against a stand-in Slurm; bad input."""
from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from kd.catalog.cells import find_cell
from kd.cli import main
from kd.errors import KDError
from kd.commands.slurm import CellRun, SlurmOptions, run_states, slurm_options, submit_cells
from kd.records.results import read_records
from kd.commands.table import plan, run_table, table_by_name
from kd.engine import Env
from kd.engine import run_cell

TABLE, OV = "recorded_digits", {"epochs": 6}
KD_CELL = "digits-sub400/kd/tiny_s_from_tiny_t/digits"


def _by_cell(records):
    return {r["cell_id"]: r for r in records}


def _fake_slurm(bin_dir, state_file):
    """sbatch numbers jobs from 1001 and keeps each script; sacct answers every job with the state in
    state_file; srun only has to exist (submitit looks for it)."""
    bin_dir.mkdir()
    scripts = {
        "sbatch": f"""#!/bin/sh
n=$(cat {bin_dir}/count 2>/dev/null || echo 1000); n=$((n + 1)); echo $n > {bin_dir}/count
cp "$1" {bin_dir}/script_$n.sh; echo "Submitted batch job $n"
""",
        "sacct": f"""#!/bin/sh
echo "JobID|State|NodeList"
for a in "$@"; do case "$a" in [0-9]*) echo "${{a}}|$(cat {state_file})|";; esac; done
""",
        "srun": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)


def test_slurm_arrays_dependencies_and_tracking(tmp_path, monkeypatch, capsys):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    _fake_slurm(bin_dir, state)
    state.write_text("PENDING")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    store, results = tmp_path / "store", tmp_path / "results"
    (tmp_path / "cluster.yaml").write_text("partition: gpu\naccount: lab\ntime_min: 30\nsbatch: {constraint: a100}\n")
    args = ["table", TABLE, "--epochs", "6", "--executor", "slurm", "--slurm-config", str(tmp_path / "cluster.yaml"),
            "--qos", "high", "--store", str(store), "--results", str(results)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "teachers: 1 runs, job 1001" in out and "job 1003 (afterok:1001)" in out, out
    teacher, baseline, student = [(bin_dir / f"script_{n}.sh").read_text() for n in (1001, 1002, 1003)]
    for s in (teacher, baseline, student):
        for flag in ("--partition=gpu", "--account=lab", "--qos=high", "--time=30", "--constraint=a100",
                     "--gpus-per-node=1", "--signal=USR2@120"):
            assert f"#SBATCH {flag}\n" in s, (flag, s)
    assert "--dependency" not in teacher + baseline
    assert "#SBATCH --dependency=afterok:1001\n" in student and "#SBATCH --kill-on-invalid-dep=yes\n" in student
    jobs = sorted(json.loads(f.read_text())["job_id"] for f in (store / "jobs").glob("*.json"))
    assert jobs == ["1001", "1002", "1003"] and not results.exists()

    assert main(["list", "--table", TABLE, "--status", "--store", str(store), "--results", str(results)]) == 0
    assert capsys.readouterr().out.count("0:queued") == 3
    run_table(TABLE, [0], OV, Env(store=store, results=results, progress=False))   # `kd table` here: trains none of them
    assert capsys.readouterr().out.count("already queued on the cluster") == 3 and not results.exists()
    cells, again = plan(table_by_name(TABLE), OV, [0])[0], dict(store=store, results_dir=results, log=print)
    assert submit_cells(cells, [0], OV, SlurmOptions(), **again) == []          # queued: nothing submitted twice
    assert "skipping 3 runs: 0 done, 3 queued or running" in capsys.readouterr().out
    state.write_text("RUNNING")
    assert {v["state"] for v in run_states(store, results).values()} == {"running"}
    state.write_text("TIMEOUT")                                      # ended without a line: failed, resubmitted
    assert {v["state"] for v in run_states(store, results).values()} == {"failed"}
    assert len(submit_cells(cells, [0], OV, SlurmOptions(), **again)) == 3
    assert (bin_dir / "count").read_text().strip() == "1006"

    run = ["run", "digits-sub400/baseline/tiny_s/digits", "--epochs", "6", "--executor", "slurm", "--store", str(store),
           "--results", str(results)]
    assert main(run + ["--gpus-per-job", "2", "--sbatch", "exclusive"]) == 0   # one job, one task per GPU (kd.engine.dist)
    ddp = (bin_dir / "script_1007.sh").read_text()
    assert all(f"#SBATCH {f}\n" in ddp for f in ("--gpus-per-node=2", "--ntasks-per-node=2", "--exclusive", "--nodes=1"))
    capsys.readouterr()
    assert main(run + ["--gpus-per-job", "3"]) == 2                             # 64 images per step over 3 GPUs
    assert capsys.readouterr().err == "kd: error: world size 3 does not divide the global batch 64; " \
        "use a world size that divides it or --batch-size a multiple of 3\n"


def test_missing_sbatch_and_unknown_options_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))                           # no sbatch anywhere
    store = tmp_path / "store"
    assert main(["table", TABLE, "--executor", "slurm", "--store", str(store), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kd: error: sbatch not found") and not store.exists()
    assert main(["run", "digits-sub400/baseline/tiny_s/digits", "--partition", "gpu"]) == 2
    assert capsys.readouterr().err == "kd: error: --partition: Slurm options, used only with --executor slurm\n"
    (tmp_path / "c.yaml").write_text("partition: gpu\ngpus: 2\n")
    with pytest.raises(KDError, match=r"c.yaml: unknown Slurm option\(s\) gpus; valid: partition, account"):
        slurm_options(tmp_path / "c.yaml")
    with pytest.raises(KDError, match="time_min must be int"):
        slurm_options(None, time_min="1h")


def test_a_requeued_run_is_the_same_run():
    run = CellRun("digits-sub400/kd/tiny_s_from_tiny_t/digits", 3, {"epochs": 2}, None, "/s", "/r")
    again = run.checkpoint()
    assert isinstance(again.function, CellRun) and vars(again.function) == vars(run) and again.args == ()


@pytest.mark.slow
def test_runs_through_submitit_give_the_in_process_lines_also_after_preemption(tmp_path, monkeypatch):
    """A KD cell whose teacher is not stored, through submitit's local executor (pickled CellRun,
    subprocesses, submitit's result files): the teacher job first, then the student's. The student is
    preempted after its first saved epoch, as Slurm does it (tests/preempting.py: the signal at a known
    point, no race with the job's end); CellRun.checkpoint() resubmits the run, the job restarts and
    resumes from its per-epoch state. Both lines equal `kd run` in this process."""
    import kd.commands.slurm
    from preempting import PreemptedOnce
    monkeypatch.setenv("OMP_NUM_THREADS", "1")            # the jobs compute with one thread, as this process
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                   os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(kd.commands.slurm, "CellRun", PreemptedOnce)
    cell = find_cell(KD_CELL)
    kw = dict(cluster="local", store=tmp_path / "store", results_dir=tmp_path / "jobs", log=lambda *a: None)
    submitted = submit_cells([cell], [0], OV, SlurmOptions(), **kw)      # returns once the teacher is done
    assert [t.cid.split("/")[1] for t, _ in submitted] == ["baseline", "kd"]
    job = submitted[1][1]
    assert job.result() == {"cell_id": KD_CELL + "~epochs=6", "seed": 0, "world_size": 1,
                            "top1_last": read_records(tmp_path / "jobs")[-1]["top1_last"]}
    assert "Requeued job" in job.stdout() and "resuming" in job.stdout() and "preempted" in job.stderr()
    run_cell(cell, 0, device="cpu", overrides=OV, progress=False, log=lambda *a: None,
             store=tmp_path / "store_here", results_dir=tmp_path / "here")
    jobs, here = _by_cell(read_records(tmp_path / "jobs")), _by_cell(read_records(tmp_path / "here"))
    assert sorted(jobs) == sorted(here) and len(jobs) == 2
    for cid, r in here.items():
        assert jobs[cid]["curve"] == r["curve"] and jobs[cid]["checkpoint_sha256"] == r["checkpoint_sha256"], cid
        assert jobs[cid]["top1_last"] == r["top1_last"] and jobs[cid]["teacher_cell"] == r["teacher_cell"]
    assert {v["state"] for v in run_states(tmp_path / "store", tmp_path / "jobs").values()} == {"done"}
    assert submit_cells([cell], [0], OV, SlurmOptions(), **kw) == []                     # all done: nothing again
