"""`--executor slurm` (kd.commands.slurm): a table through submitit's local executor gives the in-process
result lines; the sbatch scripts, dependencies and job tracking against a stand-in Slurm; bad input."""
from __future__ import annotations

import json
import os
import stat
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
    assert "skipping 3 runs: 3 queued" in capsys.readouterr().out
    state.write_text("RUNNING")
    assert {v["state"] for v in run_states(store, results).values()} == {"running"}
    state.write_text("TIMEOUT")                                      # after the last requeue: failed, resubmitted
    assert {v["shown"] for v in run_states(store, results).values()} == {"failed(TIMEOUT)"}
    assert len(submit_cells(cells, [0], OV, SlurmOptions(), **again)) == 3
    assert (bin_dir / "count").read_text().strip() == "1006"

    run = ["run", "digits-sub400/baseline/tiny_s/digits", "--epochs", "6", "--executor", "slurm", "--store", str(store),
           "--results", str(results)]
    assert main(run + ["--gpus-per-job", "2", "--sbatch", "exclusive"]) == 0   # one job, one task per GPU (kd.engine.dist)
    ddp = (bin_dir / "script_1007.sh").read_text()
    assert all(f"#SBATCH {f}\n" in ddp for f in ("--gpus-per-node=2", "--ntasks-per-node=2", "--exclusive", "--nodes=1"))
    assert "--kill-on-bad-exit=1 " in ddp.splitlines()[-1] and "kill-on-bad-exit" not in baseline   # a dead rank ends the step
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
    run = CellRun("digits-sub400/kd/tiny_s_from_tiny_t/digits", 3, {"epochs": 2}, None, "/s", "/r", "cpu", "compile",
                  False, True, "/tb")
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


# --- issue 17 (items 4-5) and issue 19: settings, states, script text, files ------------------------------

STUDENT = "digits-sub400/baseline/tiny_s/digits"


def _kd(args) -> int:
    return main([str(a) for a in args])


@pytest.fixture()
def slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    _fake_slurm(bin_dir, bin_dir / "state")
    (bin_dir / "state").write_text("PENDING")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def _submitted(store) -> dict:
    """job id -> the CellRun submitit pickled (the test reads its own job's pickle)."""
    import submitit
    return {p.name.split("_")[0]: submitit.core.utils.pickle_load(p).function
            for p in (store / "jobs" / "submitit").rglob("*_submitted.pkl")}


def test_every_run_setting_reaches_the_job(tmp_path, slurm, monkeypatch, capsys):
    """--mode, --no-channels-last, --force, --tensorboard, --precision, --device, the overrides and the
    folders travel in the pickled job, and the job calls run_cell with them."""
    import kd.engine
    import kd.records.log
    from kd.engine.execution import Execution
    store, results = tmp_path / "store", tmp_path / "results"
    assert _kd(["run", STUDENT, "--executor", "slurm", "--store", store, "--results", results, "--seed", "3",
                 "--epochs", "6", "--precision", "bf16", "--mode", "compile", "--no-channels-last", "--force",
                 "--tensorboard", tmp_path / "tb", "--device", "cpu", "--data-root", tmp_path / "data"]) == 0
    (job,) = _submitted(store).values()
    assert vars(job) == {"cell": STUDENT, "seed": 3, "overrides": {"epochs": 6, "precision": "bf16"},
                         "data_root": str(tmp_path / "data"), "store": str(store), "results_dir": str(results),
                         "device": "cpu", "mode": "compile", "channels_last": False, "force": True,
                         "tensorboard": str(tmp_path / "tb")}
    seen = {}
    monkeypatch.setattr(kd.engine, "run_cell", lambda cell, seed, **kw: seen.update(kw, cell=cell.id, seed=seed) or {})
    monkeypatch.setattr(kd.records.log, "configure", lambda tensorboard=None: seen.update(tensorboard=tensorboard))
    job()
    assert seen["execution"] == Execution("compile", channels_last=False) and seen["device"] == "cpu"
    assert seen["overrides"] == {"epochs": 6, "precision": "bf16"} and seen["tensorboard"] == str(tmp_path / "tb")
    assert (seen["cell"], seen["seed"], seen["store"], seen["results_dir"]) == (STUDENT, 3, str(store), str(results))
    capsys.readouterr()
    assert _kd(["table", TABLE, "--executor", "slurm", "--store", store, "--results", results, "--epochs", "6",
                 "--precision", "bf16"]) == 0                            # kd table takes --precision like kd run
    jobs = [json.loads(f.read_text()) for f in (store / "jobs").glob("*.json")]
    assert len(jobs) == 4 and {json.dumps(j["overrides"]) for j in jobs} == {'{"epochs": 6, "precision": "bf16"}'}


def test_a_job_whose_run_is_recorded_trains_nothing_unless_forced(tmp_path, monkeypatch, capsys):
    """A double submission costs nothing: the second job finds the ok line and writes nothing."""
    import kd.engine
    from kd.records.results import append_record
    results = tmp_path / "results"
    append_record({"schema": 1, "cell_id": f"{STUDENT}~epochs=1", "seed": 0, "status": "ok", "top1_last": 50.0,
                   "top5_last": 90.0, "top1_best": 50.0, "top5_best": 90.0, "best_epoch": 1}, results / "digits.jsonl")
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    job = CellRun(STUDENT, 0, {"epochs": 1}, None, str(tmp_path / "store"), str(results), "cpu")
    assert job() == {"cell_id": f"{STUDENT}~epochs=1", "seed": 0, "skipped": "already recorded"}
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before
    called = []
    monkeypatch.setattr(kd.engine, "run_cell", lambda *a, **k: called.append(1) or {})
    CellRun(STUDENT, 0, {"epochs": 1}, None, str(tmp_path / "store"), str(results), "cpu", force=True)()
    assert called == [1]


STATES = [  # sacct's State -> kd list --status; resubmitted?   (as submitit: PREEMPTED and REQUEUED unfinished)
    ("PENDING", "queued", False), ("REQUEUED", "queued(REQUEUED)", False), ("PREEMPTED", "queued(PREEMPTED)", False),
    ("RUNNING", "running", False), ("COMPLETING", "running(COMPLETING)", False),
    ("NODE_FAIL", "failed(NODE_FAIL)", True), ("OUT_OF_MEMORY", "failed(OUT_OF_MEMORY)", True),
    ("TIMEOUT", "failed(TIMEOUT)", True), ("CANCELLED by 1234", "failed(CANCELLED)", True), ("FAILED", "failed", True),
    ("COMPLETED", "failed(COMPLETED, no result line)", True), ("UNKNOWN", "unknown(UNKNOWN)", False),
]


@pytest.mark.parametrize("sacct, shown, again", STATES, ids=[s[0] for s in STATES])
def test_job_states_are_mapped_as_submitit_does_and_shown_raw(tmp_path, slurm, capsys, sacct, shown, again):
    from kd.commands.jobs import write_job
    store, results = tmp_path / "store", tmp_path / "results"
    write_job(store, STUDENT, 0, {"job_id": "1001", "cluster": "slurm", "cell_id": STUDENT, "cell": STUDENT, "seed": 0})
    (slurm / "state").write_text(sacct)
    assert _kd(["list", "--status", "--store", store, "--results", results, "--dataset", "digits-sub400"]) == 0
    out = capsys.readouterr()
    assert f"0:{shown}" in out.out and out.err == "", out
    submit_cells([find_cell(STUDENT)], [0], {}, SlurmOptions(), store=store, results_dir=results, log=print)
    assert (slurm / "count").exists() == again


def test_sacct_output_is_read_as_text_with_array_ranges_and_steps():
    from kd.commands.jobs import read_sacct
    text = ("JobID|State|NodeList\n1001_0|COMPLETED|n1\n1001_0.batch|COMPLETED|n1\n1001_0.extern|COMPLETED|n1\n"
            "1001_1|CANCELLED by 1234|n2\n1001_[2-4%2]|PENDING|None assigned\n1002|OUT_OF_MEMORY+|n3\n"
            "1003|;rm -rf|x\n|RUNNING|\nnot a line\n")
    assert read_sacct(text) == {"1001_0": "COMPLETED", "1001_1": "CANCELLED", "1001_2": "PENDING", "1001_3": "PENDING",
                                "1001_4": "PENDING", "1002": "OUT_OF_MEMORY"}
    with pytest.raises(ValueError):
        read_sacct("no header\n1001|RUNNING\n")


def test_job_state_is_read_without_unpickling_anything(tmp_path, slurm, capsys):
    """Planted pickles, where submitit keeps a job's result and in a folder a tracking file points to
    outside the store, are never loaded by `kd list --status` nor by a resubmission."""
    import pickle

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    from kd.commands.jobs import write_job
    store, results, outside = tmp_path / "store", tmp_path / "results", tmp_path / "outside"
    for folder in (store / "jobs" / "submitit" / "1001", outside / "1001"):
        folder.mkdir(parents=True)
        (folder / "1001_0_result.pkl").write_bytes(pickle.dumps(("success", Evil())))
    write_job(store, STUDENT, 0, {"job_id": "1001", "cluster": "slurm", "cell_id": STUDENT, "cell": STUDENT, "seed": 0,
                                  "folder": str(outside / "%j")})
    (slurm / "state").write_text("COMPLETED")
    assert _kd(["list", "--status", "--store", store, "--results", results, "--dataset", "digits-sub400"]) == 0
    assert "0:failed(COMPLETED, no result line)" in capsys.readouterr().out
    submit_cells([find_cell(STUDENT)], [0], {}, SlurmOptions(), store=store, results_dir=results, log=print)
    assert not (tmp_path / "pwned").exists()


# --- the job script: no option can add a line ---------------------------------------------------------------

def _script_lines(text: str) -> list[str]:
    return text.splitlines()


def test_no_option_can_add_a_line_to_the_job_script(tmp_path, slurm, capsys):
    """Values with spaces, quotes, $(...), backticks, ';' and '|' in every text option reach the script
    (written by submitit, kept by the stand-in sbatch) each as exactly one line that parses back to the
    one flag given; the same values with a newline or another control character are refused in one line."""
    import shlex
    store = tmp_path / "st ore'x"
    base = ["run", STUDENT, "--executor", "slurm", "--store", store, "--results", tmp_path / "res"]
    assert _kd(base) == 0
    plain = _script_lines((slurm / "script_1001.sh").read_text())
    tricky = {"partition": "gpu q", "account": "lab'x", "qos": 'a"b', "comment": "x y $(id) `id`; echo",
              "constraint": "a100|h100", "mail-type": "END,FAIL"}
    (tmp_path / "c.yaml").write_text(json.dumps({"setup": ["echo 'a b'; true"],
                                                 "sbatch": {"comment": tricky["comment"], "exclusive": True}}))
    assert _kd(base + ["--seed", "1", "--slurm-config", tmp_path / "c.yaml", "--partition", tricky["partition"],
                        "--account", tricky["account"], "--qos", tricky["qos"], "--sbatch", f"constraint={tricky['constraint']}",
                        "--sbatch", f"mail-type={tricky['mail-type']}"]) == 0
    lines = _script_lines((slurm / "script_1002.sh").read_text())
    added = [x for x in lines if x not in plain]
    assert len(lines) == len(plain) + 7 + 3                  # 7 flags, and "", "# setup" and the one setup line
    assert len(added) == 7 + 2 and added[-2:] == ["# setup", "echo 'a b'; true"]
    flags = {}
    for x in added:
        if x.startswith("#SBATCH "):
            (token,) = shlex.split(x[len("#SBATCH "):])          # one flag per line, nothing after it
            key, _, value = token[2:].partition("=")
            flags[key] = value or True
    assert flags == {**tricky, "exclusive": True}
    capsys.readouterr()
    for bad in (["--partition", "gpu\n#SBATCH --uid=0"], ["--sbatch", "comment=a\n#SBATCH --uid=0"],
                ["--sbatch", "mail-type=END\rFAIL"], ["--account", "a\x00b"], ["--qos", "q\u2029"],
                ["--store", tmp_path / "a\nb"]):
        assert _kd(base + ["--seed", "2"] + bad) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "control character" in err, err
    assert (slurm / "count").read_text().strip() == "1002"


def test_any_text_in_any_option_is_refused_or_stays_one_line_of_the_script(tmp_path_factory):
    """Property: for any text (control characters, separators, quotes, any Unicode) in partition, account,
    qos, a setup line or an sbatch value, slurm_options refuses it in one line, or the rendered script has
    exactly one line per option, each parsing back to the value given."""
    import shlex
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from kd.commands.slurm import _executor
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    folder = tmp_path_factory.mktemp("jobs") / "%j"

    def script(**kw):
        return _executor("slurm", folder, slurm_options(None, **kw), [])._executor._make_submission_file_text("cmd", "u")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        n_plain = len(_script_lines(script()))

        @settings(max_examples=150, deadline=None)
        @given(key=st.sampled_from(["partition", "account", "qos", "comment", "setup"]), value=st.text(max_size=12))
        def check(key, value):
            kw = {"sbatch": {key: value}} if key == "comment" else {"setup": [value]} if key == "setup" else {key: value}
            try:
                lines = _script_lines(script(**kw))
            except KDError as e:
                assert "\n" not in str(e)
                assert not value.isprintable() or value == "" and key != "setup"
                return
            assert value.isprintable() and (value or key == "setup")
            if key == "setup":
                assert len(lines) == n_plain + 3 and value in lines
            else:
                assert len(lines) == n_plain + 1
                (line,) = [x for x in lines if x.startswith(f"#SBATCH --{key}=")]
                assert shlex.split(line[len("#SBATCH "):]) == [f"--{key}={value}"]
        check()


def test_links_in_the_jobs_folder_are_refused_or_replaced_never_followed(tmp_path, slurm, capsys):
    from kd.commands.jobs import job_file
    store, outside = tmp_path / "store", tmp_path / "outside.txt"
    outside.write_text("x" * 48)
    base = ["run", STUDENT, "--executor", "slurm", "--store", store, "--results", tmp_path / "res"]
    (store / "jobs").mkdir(parents=True)
    (store / "jobs" / ".lock").symlink_to(outside)
    assert _kd(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err and not (slurm / "count").exists()
    (store / "jobs" / ".lock").unlink()
    job_file(store, STUDENT, 0).symlink_to(outside)                   # a planted tracking file: replaced, not written through
    assert _kd(base) == 0
    assert outside.read_text() == "x" * 48 and not job_file(store, STUDENT, 0).is_symlink()
    assert json.loads(job_file(store, STUDENT, 0).read_text())["job_id"] == "1001"


def test_a_shared_filesystem_without_flock_is_one_line_before_submitting(tmp_path, slurm, capsys, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert _kd(["run", STUDENT, "--executor", "slurm", "--store", tmp_path / "store", "--results", tmp_path / "r"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not support file locks" in err
    assert not (tmp_path / "store").exists() and not (slurm / "count").exists()


def test_a_grouped_column_is_one_job_that_trains_its_runs_together(tmp_path, slurm, monkeypatch, capsys):
    """--group-jobs: the runs that can share a teacher forward are one Slurm task (GroupRun), which calls
    kd.engine.run with group=True; a run already recorded is left out of it; each run is tracked."""
    import kd.engine
    from kd.commands.slurm import GroupRun
    from kd.engine.teacher import build_model
    from kd.records.results import append_record
    from kd.records.store import checkpoint_path, save_checkpoint
    store, results = tmp_path / "store", tmp_path / "results"
    save_checkpoint(build_model("tiny_t", 10), checkpoint_path("digits-sub400/baseline/tiny_t/digits", 0, store))
    assert _kd(["table", TABLE, "--executor", "slurm", "--group-jobs", "--epochs", "6", "--store", store,
                "--results", results]) == 0
    assert "3 runs in 1 grouped jobs, job 1001" in capsys.readouterr().out
    (job,) = _submitted(store).values()
    assert isinstance(job, GroupRun) and len(job.cells) == 3 and job.overrides == {"epochs": 6}
    assert {json.loads(f.read_text())["job_id"] for f in (store / "jobs").glob("*.json")} == {"1001"}
    append_record({"schema": 1, "cell_id": f"{STUDENT}~epochs=6", "seed": 0, "status": "ok", "top1_last": 50.0,
                   "top5_last": 90.0, "top1_best": 50.0, "top5_best": 90.0, "best_epoch": 1}, results / "digits.jsonl")
    seen = {}
    monkeypatch.setattr(kd.engine, "run", lambda specs, env, group: seen.update(ids=[s.id for s in specs], group=group,
                                                                                   env=env) or ([], []))
    out = job()
    assert seen["group"] is True and len(seen["ids"]) == 2 and f"{STUDENT}~epochs=6" not in seen["ids"]
    assert out["skipped"] == [STUDENT] and seen["env"].store == str(store)
    assert _kd(["run", STUDENT, "--group-jobs"]) == 2                  # a Slurm option without --executor slurm
