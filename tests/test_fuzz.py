"""Standing fuzz test (issue 10, item 9): bad CLI arguments, bad YAML values and bad result lines,
from tables of cases, plus hypothesis-generated result lines. For each bad input through `kd`
(in-process, kd.cli.main): exactly one line on stderr (`kd: error: ...`), exit status 2, and no
file changed under the results and store folders."""
from __future__ import annotations

import functools
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kd.catalog.cells
import kd.catalog.reftables
import kd.commands.table
from kd.cli import main
from kd.records.results import check_record, scan_records

STUDENT = "digits/baseline/tiny_s/r"
KD_CELL = "digits/kd/tiny_s_from_tiny_t/r"
CIFAR = "cifar10/baseline/tiny_s/r"
RECIPE = {"epochs": "epochs: 1", "batch_size": "batch_size: 64", "lr": "lr: 0.05", "milestones": "milestones: [1]"}
CELLS = """dataset: digits
recipe: r
models: [tiny_s]
pairs: [[tiny_t, tiny_s]]
methods:
  baseline: {}
  kd: {ce_weight: 0.1, terms: [{name: kd, weight: 0.9, T: 4}]}
"""
CIFAR_CELLS = "dataset: cifar10\nrecipe: r\nmodels: [tiny_s]\nmethods: {baseline: {}}\n"


def _record(**kw) -> dict:
    rec = {"schema": 1, "cell_id": "digits-sub400/kd/tiny_s_from_tiny_t/digits", "recipe": "digits", "seed": 0,
           "status": "ok", "top1_last": 95.0, "top5_last": 100.0, "top1_best": 95.5, "top5_best": 100.0,
           "best_epoch": 20}
    rec.update(kw)
    return rec


GOOD_LINE = json.dumps(_record()) + "\n"


_load_all = kd.catalog.reftables.load_all


@functools.lru_cache(maxsize=None)
def _tables(root: str):
    return _load_all(root)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """Benchmarks of our own (recipe r, digits and cifar10 cells), results holding one good line,
    a store holding one checkpoint, and the reference tables read once per session."""
    bench = tmp_path / "benchmarks"
    (bench / "recipes").mkdir(parents=True)
    (bench / "recipes" / "r.yaml").write_text("\n".join(RECIPE.values()) + "\n")
    (bench / "cells.yaml").write_text(CELLS)
    (bench / "cifar.yaml").write_text(CIFAR_CELLS)
    monkeypatch.setattr(kd.catalog.cells, "BENCHMARKS", bench)

    for module in (kd.catalog.reftables, kd.commands.table):               # the reference tables, read once per session
        monkeypatch.setattr(module, "load_all", lambda root="reference_tables": _tables(str(root)))
    res, store = tmp_path / "results", tmp_path / "store"
    res.mkdir()
    (res / "digits.jsonl").write_text(GOOD_LINE)
    (store / "x").mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, store / "x" / "seed0.pt")
    monkeypatch.setenv("KD_RESULTS", str(res))
    monkeypatch.setenv("KD_STORE", str(store))
    monkeypatch.setenv("KD_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path


def _files(root: Path) -> dict:
    """Every file and link under root (links not followed; a large file by size and time, not read)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = ("link", os.readlink(p))
        elif p.is_file():
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns, p.read_bytes() if st.st_size < 1 << 20 else None)
    return out


def refused(env, capsys, args, match=None):
    """Run `kd args`; assert one stderr line `kd: error: ...`, no traceback, exit 2, and nothing changed
    under the results and store folders (the jobs folder among them) nor beside them in env."""
    before = _files(env / "results"), _files(env / "store"), sorted(p.name for p in env.iterdir())
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 2, f"exit {code}: {out.err}{out.out[-500:]}"
    assert out.err.startswith("kd: error: ") and out.err.count("\n") == 1, out.err
    assert "Traceback" not in out.err + out.out
    if match:
        assert match in out.err, out.err
    assert (_files(env / "results"), _files(env / "store"), sorted(p.name for p in env.iterdir())) == before
    return out.err


def _fill(env, args) -> list[str]:
    """{file}: a regular file outside results and store; {ctl}: a name with a control character;
    {pt}: a real checkpoint (its sha256 is PT_SHA)."""
    import hashlib
    (env / "a_file").write_text("x")
    pt = env / "store" / "x" / "seed0.pt"
    return [str(a).replace("{file}", str(env / "a_file")).replace("{ctl}", str(env / "a\x01b"))
            .replace("{pt}", str(pt)).replace("{sha}", hashlib.sha256(pt.read_bytes()).hexdigest()) for a in args]


# --- CLI arguments -------------------------------------------------------------------------------

CLI_CASES = [
    ([], "required"), (["bogus-command"], "invalid choice"), (["run"], "required"),
    (["run", "nope/x/y/z"], "unknown cell"), (["run", ""], "unknown cell"),
    (["run", STUDENT + "~epochs=2"], "unknown cell"),
    (["run", STUDENT, "--seed", "-1"], "--seed -1"), (["run", STUDENT, "--seed", "4294967296"], "--seed"),
    (["run", STUDENT, "--seed", "99999999999999999999999"], "--seed"), (["run", STUDENT, "--seed", "abc"], "invalid int"),
    (["run", STUDENT, "--seed"], "expected at least one"), (["run", STUDENT, "--seed", "0", "1e3"], "invalid int"),
    (["run", STUDENT, "--device", "bogus"], "not a device"), (["run", STUDENT, "--device", ""], "not a device"),
    (["run", STUDENT, "--device", "tpu"], "tpu"), (["run", STUDENT, "--device", "cuda:99"], "--device cuda:99"),
    (["run", STUDENT, "--epochs", "0"], "epochs"), (["run", STUDENT, "--epochs", "-1"], "epochs"),
    (["run", STUDENT, "--epochs", "1.5"], "invalid int"), (["run", STUDENT, "--epochs", "nan"], "invalid int"),
    (["run", STUDENT, "--batch-size", "0"], "batch_size"), (["run", STUDENT, "--batch-size", "-64"], "batch_size"),
    (["run", STUDENT, "--subset", "0"], "subset"), (["run", STUDENT, "--lr", "-0.1"], "lr"),
    (["run", STUDENT, "--lr", "0"], "lr"), (["run", STUDENT, "--lr", "inf"], "lr"), (["run", STUDENT, "--lr", "-inf"], "lr"),
    (["run", STUDENT, "--lr", "nan"], "lr"), (["run", STUDENT, "--lr", "1e999"], "lr"),
    (["run", STUDENT, "--frobnicate"], "unrecognized"),
    (["table", "nope"], "unknown table"), (["table", "recorded_digits", "--epochs", "0"], "epochs"),
    (["table", "recorded_digits", "--seed", "-5"], "--seed"),
    (["compare", "--table", "nope"], "unknown table"), (["report", "--table", "nope"], "unknown table"),
    (["plan", "nope"], "unknown table"),
    (["doctor", "--budget-s", "0"], "--budget-s 0"), (["doctor", "--device", "bogus"], "not a device"),
    (["doctor", "--only", "nope"], "--only nope"), (["doctor", "--results", "{file}"], "speed file"),
    (["doctor", "--repdistiller", "{file}", "--only", "nope"], "--only nope"),
    (["doctor", "--data-root", "{file}", "--only", "nope"], "--only nope"),
    (["import-teachers", "/nonexistent-kd-dir"], "no such folder"),
    (["import-teachers", "/tmp", "--download", "nope"], "--download nope"),
    (["import-teachers", "/nonexistent-kd-dir", "--device", "bogus"], "not a device"),
    (["import-teachers", "/nonexistent-kd-dir", "--data-root", "{file}"], "no such folder"),
    (["import-teachers", "/nonexistent-kd-dir", "--store", "{file}"], "no such folder"),
    (["import-teachers", "/nonexistent-kd-dir", "--results", "{file}"], "no such folder"),
    (["import-teachers", "/nonexistent-kd-dir", "--tensorboard", "{ctl}"], "no such folder"),
    (["import-teachers", "/nonexistent-kd-dir", "--mode", "fast"], "invalid choice"), (["plan", "recorded_digits", "--results", "{file}"], "is not a folder"),
    (["list", "--status", "bogus"], "invalid choice"),
    (["demo", "--seeds", "0"], "--seeds 0"), (["demo", "--seeds", "-3"], "--seeds -3"), (["demo", "--seeds", "x"], "invalid int"),
    (["import-teacher", "digits/baseline/tiny_t/r", "/nonexistent.pt", "--sha256", "00"], "no such file"),
    (["import-teacher", KD_CELL, "/nonexistent.pt", "--sha256", "00"], "not a teacher cell"),
    (["import-teacher", "digits/baseline/tiny_t/r", "/nonexistent.pt"], "--sha256"),
]
TEACHER = "digits/baseline/tiny_t/r"
TABLE = "recorded_digits"
CTL = "control character"
CLI_CASES += [   # issue 19: every subcommand, every option that takes a value
    (["run", STUDENT, "--precision", "fp16"], "invalid choice"), (["run", STUDENT, "--mode", "bogus"], "invalid choice"),
    (["run", STUDENT, "--mode", "graph", "--device", "cpu"], "needs a CUDA device"),
    (["run", STUDENT, "--executor", "pbs"], "invalid choice"), (["run", STUDENT, "--data-root", "{ctl}"], CTL),
    (["run", STUDENT, "--tensorboard", "{ctl}"], CTL), (["run", STUDENT, "--store", "{file}"], "not a writable folder"),
    (["run", STUDENT, "--results", "{file}"], "not a writable folder"), (["run", STUDENT, "--store", ""], "not a folder"),
    (["table", TABLE, "--precision", "fp16"], "invalid choice"), (["table", TABLE, "--batch-size", "0"], "batch_size"),
    (["table", TABLE, "--lr", "nan"], "lr"), (["table", TABLE, "--subset", "0"], "subset"),
    (["table", TABLE, "--device", "bogus"], "not a device"), (["table", TABLE, "--mode", "bogus"], "invalid choice"),
    (["table", TABLE, "--data-root", "{ctl}"], CTL), (["table", TABLE, "--tensorboard", "{ctl}"], CTL),
    (["table", TABLE, "--store", "{file}"], "not a writable folder"),
    (["table", TABLE, "--results", "{file}"], "not a writable folder"),
    (["table", TABLE, "--executor", "pbs"], "invalid choice"),
    (["table", TABLE, "--auto-seeds", "x"], "invalid int"), (["table", TABLE, "--auto-seeds", "0"], "must be a whole number"),
    (["table", TABLE, "--seed", "0", "1", "--auto-seeds", "1"], "must be a whole number"),
    (["table", TABLE, "--auto-seeds", "3", "--executor", "slurm"], "not with --executor slurm"),
    (["bench", "nope/x/y/z"], "unknown cell"), (["bench", KD_CELL, "--steps", "0"], "--steps 0"),
    (["bench", KD_CELL, "--steps", "-1"], "--steps -1"), (["bench", KD_CELL, "--warmup", "-1"], "--warmup -1"),
    (["bench", KD_CELL, "--rounds", "0"], "--rounds 0"), (["bench", KD_CELL, "--threads", "-2"], "--threads -2"),
    (["bench", KD_CELL, "--threads", "0"], "--threads 0"), (["bench", KD_CELL, "--batch-size", "0"], "batch_size"),
    (["bench", KD_CELL, "--device", "bogus"], "not a device"), (["bench", KD_CELL, "--workers", "-1"], "--workers -1"),
    (["bench", KD_CELL, "--modes", "bogus"], "invalid choice"),
    (["bench", KD_CELL, "--modes", "graph", "--device", "cpu"], "needs a CUDA device"),
    (["bench", KD_CELL, "--repdistiller", "/nonexistent", "--steps", "1", "--warmup", "0", "--rounds", "1"],
     "not a RepDistiller checkout"),
    (["bench", KD_CELL, "--data-root", "{ctl}"], CTL), (["bench", KD_CELL, "--results", "{file}"], "not a writable folder"),
    (["bench-group", "nope"], "unknown table"), (["bench-group", TABLE, "--seed", str(2**64)], "--seed"),
    (["bench-group", TABLE, "--seed", "-1"], "--seed -1"), (["bench-group", TABLE, "--device", "bogus"], "not a device"),
    (["bench-group", TABLE, "--epochs", "0"], "epochs"), (["bench-group", TABLE, "--subset", "0"], "subset"),
    (["bench-group", TABLE, "--batch-size", "0"], "batch_size"), (["bench-group", TABLE, "--lr", "0"], "lr"),
    (["bench-group", TABLE, "--precision", "fp16"], "invalid choice"), (["bench-group", TABLE, "--threads", "0"], "--threads 0"),
    (["bench-group", TABLE, "--data-root", "{ctl}"], CTL), (["bench-group", TABLE, "--results", "{file}"], "not a writable"),
    (["list", "--table", "nope"], "unknown table"), (["list", "--dataset", "nope"], "no cell matches"),
    (["list", "--method", "nope"], "no cell matches"), (["list", "--results", "{file}"], "is not a folder"),
    (["list", "--status", "--store", "{file}"], "not a folder"),
    (["find"], "give a number"), (["find", "abc"], "is not a number"), (["find", "--table", "nope"], "unknown table"),
    (["find", "--method", "nope"], "no reference entry"), (["find", "--pair", "nope:nope"], "no reference entry"),
    (["find", "--dataset", "nope"], "no reference entry"),
    (["import-teacher", TEACHER, "{file}", "--sha256", "00"], "sha256 is"),
    (["import-teacher", TEACHER, "{file}", "--sha256", "00", "--device", "bogus"], "not a device"),
    (["import-teacher", TEACHER, "{file}", "--sha256", "00", "--mode", "eager"], "not used here"),
    (["import-teacher", TEACHER, "{file}", "--sha256", "00", "--tensorboard", "tb"], "not used here"),
    (["import-teacher", TEACHER, "{file}", "--sha256", "00", "--store", "{file}"], "not a writable folder"),
    (["import-teacher", TEACHER, "{file}", "--sha256", "00", "--results", "{file}"], "not a writable folder"),
    (["import-teacher", TEACHER, "{file}", "--sha256", "00", "--data-root", "{ctl}"], CTL),
    (["demo", "--seeds", "1001"], "--seeds 1001"), (["demo", "--device", "cpu"], "not used here"),
    (["demo", "--mode", "eager"], "not used here"), (["demo", "--data-root", "data"], "not used here"),
    (["demo", "--store", "{file}"], "not a writable folder"), (["demo", "--results", "{file}"], "not a writable folder"),
    (["demo", "--tensorboard", "{ctl}"], CTL),
    (["compare", "--results", "{file}"], "is not a folder"), (["report", "--results", "{file}"], "not a writable folder"),
    (["report", "--out", "{file}"], "not a writable folder"),
]
CLI_CASES += [(["table", TABLE, "--executor", "slurm", *extra], match) for extra, match in [   # options checked first
    (["--mem-gb", "-1"], "mem_gb"), (["--gpus-per-job", "0"], "gpus_per_job"), (["--cpus-per-task", "0"], "cpus_per_task"),
    (["--time-min", "0"], "time_min"), (["--sbatch", "comment=x\n#SBATCH --wrap=evil"], CTL),
    (["--partition", "gpu\n#SBATCH --uid=0"], CTL), (["--account", "a\tb"], CTL), (["--qos", ""], "empty"),
    (["--slurm-config", "/nonexistent.yaml"], "no such file")]]
if not torch.cuda.is_available():
    CLI_CASES += [(["run", STUDENT, "--device", "cuda"], "no CUDA GPU"),
                  (["bench-group", TABLE, "--device", "cuda"], "no CUDA GPU"),
                  (["bench", KD_CELL, "--device", "cuda"], "no CUDA GPU")]


@pytest.mark.parametrize("args, match", CLI_CASES, ids=lambda c: " ".join(c) if isinstance(c, list) else None)
def test_bad_cli_arguments(env, capsys, args, match):
    refused(env, capsys, _fill(env, args), match)


# --- Slurm options, config keys and the job script -------------------------------------------------

@pytest.fixture()
def slurm(env, monkeypatch):
    """A stand-in Slurm outside the results and store folders: sbatch keeps each script and answers with
    a job id (or what $FAKE_SBATCH says), sacct answers every job with the state in <bin>/state."""
    from tests.test_executor import _fake_slurm
    bin_dir = env.parent / f"{env.name}-bin"
    _fake_slurm(bin_dir, bin_dir / "state")
    (bin_dir / "state").write_text("PENDING")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


SLURM = ["run", STUDENT, "--executor", "slurm"]
SLURM_CASES = [
    (["--mem-gb", "-1"], "mem_gb"), (["--mem-gb", "nan"], "mem_gb"), (["--mem-gb", "inf"], "mem_gb"),
    (["--mem-gb", "0"], "mem_gb"), (["--gpus-per-job", "0"], "gpus_per_job"), (["--cpus-per-task", "0"], "cpus_per_task"),
    (["--gpus-per-job", "3"], "world size 3 does not divide the global batch 64"), (["--time-min", "0"], "time_min"),
    (["--time-min", "1"], "signal_delay_s 120 must be shorter"), (["--mem-gb", "x"], "invalid float"),
    (["--sbatch", "comment=x\n#SBATCH --wrap=evil"], CTL), (["--sbatch", "a\nb=c"], "not a flag name"),
    (["--sbatch", "=x"], "expected KEY=VALUE"), (["--sbatch", "output=/tmp/x"], "set by kd"),
    (["--sbatch", "dependency=afterok:1"], "set by kd"), (["--sbatch", "comment=\x1b[31m"], CTL),
    (["--sbatch", "comment="], "empty"), (["--sbatch", "comment=a\rb"], CTL), (["--sbatch", "comment=\u2028"], CTL),
    (["--partition", "gpu\n#SBATCH --uid=0"], CTL), (["--account", "a\tb"], CTL), (["--qos", ""], "empty"),
    (["--slurm-config", "{file}"], "mapping at the top"), (["--slurm-config", "/nonexistent.yaml"], "no such file"),
    (["--store", "{file}"], "not a writable folder"), (["--store", "{ctl}"], CTL), (["--results", "{file}"], "not a writable"),
    (["--tensorboard", "{ctl}"], CTL), (["--device", "meta"], "unsupported device type"),
    (["--data-root", "{ctl}"], CTL),
]
CONFIG_CASES = [
    ("max_requeue: -1", "max_requeue must be at least 0"), ("signal_delay_s: -5", "signal_delay_s must be at least 0"),
    ("mem_gb: .nan", "mem_gb"), ("mem_gb: .inf", "mem_gb"), ("mem_gb: -1", "mem_gb"), ("mem_gb: '8'", "mem_gb"),
    ('setup: ["module load x\\n#SBATCH --uid=0"]', "not one line"), ("setup: [5]", "not one line"),
    ("setup: module load x", "setup must be"), ('sbatch: {comment: "x\\n#SBATCH --wrap=y"}', CTL),
    ('sbatch: {"a b": 1}', "not a flag name"), ("sbatch: {comment: [1]}", "plain value"),
    ("sbatch: {output: /tmp/x}", "set by kd"), ("sbatch: {comment: .inf}", "plain value"),
    ("sbatch: {5: x}", "not a flag name"), ('partition: "gpu\\r"', CTL), ("gpus: 2", "unknown Slurm option"),
    ("- partition: gpu", "mapping at the top"), ("array_parallelism: 0", "array_parallelism"),
    ("time_min: 1h", "time_min must be int"), ("time_min: 2\nsignal_delay_s: 120", "shorter than the time limit"),
    ("partition: !!python/object/apply:os.system ['true']", "malformed YAML"),
]


@pytest.mark.parametrize("extra, match", SLURM_CASES, ids=[" ".join(map(repr, c[0])) for c in SLURM_CASES])
def test_bad_slurm_options(env, slurm, capsys, extra, match):
    refused(env, capsys, _fill(env, SLURM + extra), match)
    assert not (slurm / "count").exists()                              # sbatch never ran


@pytest.mark.parametrize("text, match", CONFIG_CASES, ids=[c[0][:40] for c in CONFIG_CASES])
def test_bad_slurm_config(env, slurm, capsys, text, match):
    (env / "cluster.yaml").write_text(text + "\n")
    refused(env, capsys, ["table", TABLE, "--executor", "slurm", "--slurm-config", env / "cluster.yaml"], match)
    assert not (slurm / "count").exists()


@pytest.mark.parametrize("output", ["garbage\n", "", "Submitted batch job\n"])
def test_sbatch_printing_garbage_leaves_nothing(env, slurm, capsys, output):
    """sbatch that runs but answers no job id: one line, no tracking file, no pickle, no script left."""
    (slurm / "sbatch").write_text(f"#!/bin/sh\nprintf '{output}'\n")
    refused(env, capsys, SLURM, "submission failed")
    assert not (env / "store" / "jobs").exists()


def test_bad_output_and_results_paths(env, capsys):
    (env / "a_file").write_text("x")
    refused(env, capsys, ["report", "--out", env / "a_file"], "not a writable folder")
    refused(env, capsys, ["list", "--results", env / "a_file"], "is not a folder")
    refused(env, capsys, ["run", STUDENT, "--results", env / "a_file" / "r"], "not a writable folder")
    refused(env, capsys, ["run", STUDENT, "--store", env / "a_file" / "s"], "not a writable folder")
    (env / "results" / "digits.jsonl").unlink()
    (env / "results" / "digits.jsonl").mkdir()                        # where the results file goes: a folder
    refused(env, capsys, ["run", STUDENT], "not a writable file")


@pytest.mark.parametrize("damage, match", [
    ("garbage", "not a readable CIFAR python batch"), ("empty", "not a readable CIFAR python batch"),
    ("evil", "refused global"), ("wrong shape", "not a CIFAR python batch"), ("folder", "is missing"),
    ("no folder", "is missing")])
def test_unreadable_or_corrupted_dataset_files(env, capsys, monkeypatch, damage, match):
    import kd.data.readers
    from tests.conftest import write_cifar
    monkeypatch.setattr(kd.data.readers, "_download", lambda *a: None)             # offline
    root = write_cifar(env / "data", "cifar10", n_train=20, n_test=10)
    f = root / "cifar-10-batches-py" / "data_batch_1"
    if damage == "garbage":
        f.write_bytes(b"\x80\x04garbage" * 10)
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage == "evil":
        f.write_bytes(b"cos\nsystem\n(S'touch /tmp/kd_fuzz_pwned'\ntR.")
    elif damage == "wrong shape":
        f.write_bytes(pickle.dumps({"data": [1, 2, 3], "labels": [1]}))
    elif damage == "folder":
        f.unlink()
        f.mkdir()
    else:
        import shutil
        shutil.rmtree(root / "cifar-10-batches-py")
    refused(env, capsys, ["run", CIFAR, "--no-progress"], match)
    assert not Path("/tmp/kd_fuzz_pwned").exists()


# --- YAML ------------------------------------------------------------------------------------------

def _recipe(field, line):
    return "recipes/r.yaml", "\n".join({**RECIPE, field: line}.values()) + "\n"


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
RECIPE_CASES = [
    (*_recipe("epochs", "epochs: '1'"), "epochs = '1'"), (*_recipe("epochs", "epochs: 0"), "epochs = 0"),
    (*_recipe("epochs", "epochs: -3"), "epochs"), (*_recipe("epochs", "epochs: 1.5"), "epochs"),
    (*_recipe("epochs", "epochs: true"), "epochs"), (*_recipe("epochs", "epochs: null"), "epochs"),
    (*_recipe("epochs", "epochs: [1]"), "epochs"), (*_recipe("batch_size", "batch_size: 0"), "batch_size"),
    (*_recipe("lr", "lr: four"), "lr = 'four'"), (*_recipe("lr", "lr: -0.1"), "lr"), (*_recipe("lr", "lr: .nan"), "lr"),
    (*_recipe("lr", "lr: .inf"), "lr"), (*_recipe("lr", "lr: '0.1'"), "lr"), (*_recipe("lr", "lr: {a: 1}"), "lr"),
    (*_recipe("milestones", "milestones: 5"), "milestones"), (*_recipe("milestones", "milestones: [0]"), "milestones"),
    (*_recipe("milestones", "milestones: [2]"), "milestones"), (*_recipe("milestones", "milestones: [a]"), "milestones"),
    (*_recipe("milestones", "gamma: 0"), "gamma"), (*_recipe("milestones", "momentum: -1"), "momentum"),
    (*_recipe("milestones", "optimizer: adam"), "optimizer"), (*_recipe("milestones", "schedule: 5"), "schedule"),
    (*_recipe("milestones", "nesterov: 'no'"), "nesterov"), (*_recipe("milestones", "amp: 1"), "amp"),
    (*_recipe("milestones", "weight_decay: -1"), "weight_decay"), (*_recipe("milestones", "data_seed: -1"), "data_seed"),
    (*_recipe("milestones", "teacher_seed: 1.0e+30"), "teacher_seed"),
    (*_recipe("milestones", "teacher_recipe: ../../x"), "teacher_recipe"),
    (*_recipe("milestones", "lr_by_student: {tiny_s: -1}"), "lr_by_student"),
    (*_recipe("milestones", "assumed: one string"), "assumed"), (*_recipe("milestones", "description: [1]"), "description"),
    (*_recipe("milestones", "name: crd"), "differs from the file name"),
    (*_recipe("milestones", "colour: red"), "unknown key"), (*_recipe("milestones", "overrides: {epochs: 0}"), "'overrides' is not a recipe key"),
    ("recipes/r.yaml", "epochs: 1\nbatch_size: 64\nlr: 0.05\nlr: 0.5\n", "duplicate key 'lr'"),
    ("recipes/r.yaml", "epochs: 1\nbatch_size: &b 64\nlr: 0.05\nmilestones: [*b]\n", "aliases are not allowed"),
    ("recipes/r.yaml", BOMB, "aliases are not allowed"),
    ("recipes/r.yaml", b"epochs: 1\nbatch_size: 64\nlr: 0.05\ndescription: caf\xe9\n", "not UTF-8"),
    ("recipes/r.yaml", "- epochs: 1\n", "mapping at the top"), ("recipes/r.yaml", "", "mapping at the top"),
    ("recipes/r.yaml", "epochs: [1\n", "malformed YAML"), ("recipes/r.yaml", "epochs: 1\n\tlr: 2\n", "malformed YAML"),
    ("recipes/r.yaml", "epochs: !!python/object/apply:os.system ['true']\n", "malformed YAML"),
]


def _cells(old, new):
    assert old in CELLS
    return "cells.yaml", CELLS.replace(old, new)


CELL_CASES = [
    (*_cells("pairs: [[tiny_t, tiny_s]]", "pairs: 5"), "pairs = 5"), (*_cells("models: [tiny_s]", "models: tiny_s"), "models"),
    (*_cells("models: [tiny_s]", "models: [1]"), "models"), (*_cells("pairs: [[tiny_t, tiny_s]]", "pairs: [[tiny_t]]"), "pairs"),
    (*_cells("pairs: [[tiny_t, tiny_s]]", "pairs: [tiny_t, tiny_s]"), "pairs"), (*_cells("T: 4", "T: four"), "T = 'four'"),
    (*_cells("T: 4", "T: [4]"), "T = [4]"), (*_cells("T: 4", "T: .nan"), "T = nan"), (*_cells("T: 4", "tau: 4"), "'tau'"),
    (*_cells("weight: 0.9", "weight: '0.9'"), "weight = '0.9'"), (*_cells("weight: 0.9", "weight: null"), "weight"),
    (*_cells("ce_weight: 0.1", "ce_weight: -1"), "ce_weight"), (*_cells("ce_weight: 0.1", "ce_weight: x"), "ce_weight"),
    (*_cells("{ce_weight: 0.1, terms: [{name: kd, weight: 0.9, T: 4}]}", "5"), "methods"),
    (*_cells("terms: [{name: kd, weight: 0.9, T: 4}]", "terms: {name: kd}"), "terms"),
    (*_cells("terms: [{name: kd, weight: 0.9, T: 4}]", "terms: [{name: 5, weight: 1}]"), "terms"),
    (*_cells("terms: [{name: kd, weight: 0.9, T: 4}]", "terms: [{name: kdd, weight: 1}]"), "unknown method 'kdd'"),
    (*_cells("baseline: {}", "baseline: {teacherless: maybe}"), "teacherless"),
    (*_cells("dataset: digits", "dataset: 5"), "dataset = 5"), (*_cells("recipe: r", "recipe: 5"), "recipe = 5"),
    (*_cells("recipe: r", "recipe: [r]"), "recipe"), (*_cells("recipe: r", "recipe: nope"), "unknown recipe"),
    (*_cells("methods:", "pair_params: 5\nmethods:"), "pair_params"), (*_cells("methods:", "assumed: text\nmethods:"), "assumed"),
    (*_cells("methods:", "source: [1]\nmethods:"), "source"), (*_cells("methods:", "colour: red\nmethods:"), "unknown key"),
    (*_cells("recipe: r", "recipe: r\nrecipe: r"), "duplicate key 'recipe'"),
    (*_cells("models: [tiny_s]", "models: &m [tiny_s]\nx: *m"), "aliases are not allowed"),
    ("cells.yaml", CELLS.encode() + b"source: \xff\xfe\n", "not UTF-8"),
    (*_cells("models: [tiny_s]", "models: [tiny_s\n"), "malformed YAML"),
]
VARIANT_CASES = [("digits-sub0", "whole number >= 1"), ("digits-sub1.5", "whole number"), ("digits-imb0", "gamma must be > 0"),
                 ("digits-noisy1.5", "noise rate"), ("digits-wat3", "unknown dataset variant"),
                 ("digits-sub99999", "subset of 99999"), ("digits-test0", "whole number >= 1")]


@pytest.mark.parametrize("path, text, match", RECIPE_CASES + CELL_CASES,
                         ids=[f"{p}:{t[-40:]!r}" for p, t, _ in RECIPE_CASES + CELL_CASES])
def test_bad_yaml(env, capsys, path, text, match):
    f = env / "benchmarks" / path
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(env, capsys, ["run", KD_CELL, "--no-progress"], match)


@pytest.mark.parametrize("dataset, match", VARIANT_CASES)
def test_bad_dataset_variants(env, capsys, dataset, match):
    (env / "benchmarks" / "cells.yaml").write_text(CELLS.replace("dataset: digits", f"dataset: {dataset}"))
    refused(env, capsys, ["run", f"{dataset}/baseline/tiny_s/r", "--no-progress"], match)


def test_the_valid_base_runs(env, capsys):
    """The control: the files every case above breaks are good, so each case fails for its reason."""
    assert main(["run", KD_CELL, "--no-progress", "--subset", "100"]) == 0, capsys.readouterr().err
    assert len(scan_records(env / "results")[0]) == 3                  # the good line, teacher, student


# --- result lines ----------------------------------------------------------------------------------

RESULT_CASES = [
    ("[1, 2]", "a JSON array"), ("5", "a JSON number"), ('"x"', "a JSON string"), ("null", "a JSON null"),
    ("{}", "schema"), (json.dumps(_record(schema=2)), "schema 2"), (json.dumps(_record(schema="1")), "schema '1'"),
    (json.dumps(_record(schema=True)), "schema True"),
    (json.dumps({k: v for k, v in _record().items() if k != "cell_id"}), "'cell_id' missing"),
    (json.dumps(_record(cell_id=5)), "'cell_id'"), (json.dumps(_record(cell_id="a/b")), "cell_id 'a/b'"),
    (json.dumps(_record(seed="0")), "'seed'"), (json.dumps(_record(seed=True)), "'seed'"), (json.dumps(_record(seed=1.0)), "'seed'"),
    (json.dumps(_record(status="done")), "status 'done'"), (json.dumps(_record(status=None)), "'status'"),
    (json.dumps(_record(top1_last="95.0")), 'top1_last\' is "95.0"'), (json.dumps(_record(top1_last=True)), "top1_last' is true"),
    (json.dumps(_record(top1_last=None)), "top1_last' is null"), (json.dumps(_record(top1_best=-1)), "top1_best"),
    (json.dumps(_record(top5_last=250)), "top5_last"), (json.dumps(_record(recipe=["digits"])), "'recipe'"),
    (json.dumps(_record()).replace("95.0", "NaN"), "NaN is not a number"),
    (json.dumps(_record()).replace("95.0", "Infinity"), "Infinity is not a number"),
    (json.dumps(_record()).replace("95.0", "-Infinity"), "-Infinity is not a number"),
    (json.dumps(_record()).replace("95.0", "1e999"), "top1_last"),
    (json.dumps(_record(ensemble_top1="x")), "ensemble_top1"),
    ('{"schema": 1, "cell_id": ', "not a JSON result line"), ("[" * 100000, "not a JSON result line"),
    (b"\xff\xfe{}".decode("latin-1"), "not a JSON result line"),
]
EPOCH = {"epoch": 1, "top1": 50.0, "top5": 90.0, "train_loss": 1.5, "lr": 0.05}
BAD_CURVES = [
    ("x", "'curve' is a str"), ([1, 2], "curve[0] is not an object"), ({"epoch": 1}, "'curve' is a dict"),
    ([{"epoch": 1}], "curve[0]: 'top1' is null"), ([{**EPOCH, "epoch": "1"}], "'epoch' is \"1\""),
    ([EPOCH, {**EPOCH, "epoch": 0}], "curve[1]: 'epoch' is 0"), ([{**EPOCH, "top1": 101}], "'top1' is 101"),
    ([{**EPOCH, "train_loss": "0.5"}], "'train_loss' is \"0.5\""), ([{**EPOCH, "lr": None}], "'lr' is null"),
    ([{**EPOCH, "top5": True}], "'top5' is true"), ([{**EPOCH, "top1": "x" * 500}], "..."),
]
RESULT_CASES += [(json.dumps(_record(curve=c)), m) for c, m in BAD_CURVES]


@pytest.mark.parametrize("line, match", RESULT_CASES, ids=[repr(c[0][:30]) for c in RESULT_CASES])
def test_bad_result_lines(env, capsys, line, match):
    """--check refuses (exit 2); list/compare skip the line and report it in one warning line."""
    f = env / "results" / "digits.jsonl"
    f.write_bytes(GOOD_LINE.encode("latin-1") + line.encode("latin-1") + b"\n")
    refused(env, capsys, ["compare", "--check", "--table", "recorded_digits"], match)
    assert main(["compare", "--table", "recorded_digits"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("kd: warning: skipped bad result line") and out.err.count("\n") == 1, out.err
    assert re.search(r"recorded_digits\s+KD\s+.*\s95\.00 ± [\d.]+\s+1\s", out.out), out.out   # the good line still counts


def test_report_skips_lines_with_malformed_curves_and_draws_the_good_ones(env, capsys):
    lines = [_record(curve=[EPOCH, {**EPOCH, "epoch": 2}])] + [_record(seed=i + 1, curve=c) for i, (c, _) in
                                                                 enumerate(BAD_CURVES)]
    (env / "results" / "digits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["report", "--table", TABLE, "--out", str(env / "rep")]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("kd: warning: skipped bad result line") and out.err.count("\n") == 1, out.err
    assert f"(and {len(BAD_CURVES) - 1} more)" in out.err and "Training curves" in (env / "rep" / f"{TABLE}.html").read_text()


@pytest.mark.parametrize("kind", ["torn", "folder", "dangling link"])
def test_bad_result_files(env, capsys, kind):
    if kind == "torn":
        (env / "results" / "digits.jsonl").write_text(GOOD_LINE + GOOD_LINE[:50])
    elif kind == "folder":
        (env / "results" / "more.jsonl").mkdir()
    else:
        (env / "results" / "more.jsonl").symlink_to(env / "nowhere")
    match = {"torn": "torn last line", "folder": "a folder named", "dangling link": "unreadable"}[kind]
    refused(env, capsys, ["compare", "--check", "--table", "recorded_digits"], match)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                    max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(["schema", "cell_id", "seed", "status", "recipe", "top1_last", "top5_best",
                              "ensemble_top1"]), value=JSON)
def test_any_value_of_a_record_field_is_accepted_only_when_well_typed(field, value):
    why = check_record(_record(**{field: value}))
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if field in ("top1_last", "top5_best"):
        assert (why is None) == (numeric and 0 <= value <= 100)          # never "95.0", never true, never NaN
    elif field == "ensemble_top1":
        assert (why is None) == (value is None or numeric and 0 <= value <= 100)
    elif field == "seed":
        assert (why is None) == (isinstance(value, int) and not isinstance(value, bool))
    elif field == "schema":
        assert (why is None) == (value == 1 and not isinstance(value, bool))


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.binary(max_size=60) | JSON.map(json.dumps), max_size=4), torn=st.booleans())
def test_any_bytes_in_a_results_file_are_skipped_or_read_never_a_crash(tmp_path_factory, lines, torn):
    root = tmp_path_factory.mktemp("r")
    data = GOOD_LINE.encode() + b"".join(
        (x if isinstance(x, bytes) else x.encode()).replace(b"\n", b" ") + b"\n" for x in lines)
    (root / "x.jsonl").write_bytes(data[:-1] if torn and lines else data)
    records, problems = scan_records(root)
    assert records[0] == _record() and all(check_record(r) is None for r in records)
    assert len(records) + len(problems) == 1 + sum(1 for x in lines if (x if isinstance(x, bytes) else x.encode()).strip())


# --- the environment ------------------------------------------------------------------------------

MASTER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29599"}
ENV_CASES = [
    ({"WORLD_SIZE": "2"}, ["run", STUDENT], "WORLD_SIZE=2 in the environment without RANK, MASTER_ADDR, MASTER_PORT"),
    ({"WORLD_SIZE": "abc"}, ["run", STUDENT], "WORLD_SIZE='abc'"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "x"}, ["run", STUDENT], "MASTER_PORT='x'"),
    ({"WORLD_SIZE": "2", "RANK": "5", **MASTER}, ["run", STUDENT], "RANK=5 in the environment is not below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1", **MASTER}, ["run", STUDENT], "LOCAL_RANK='-1'"),
    ({"WORLD_SIZE": "abc"}, ["table", TABLE], "WORLD_SIZE='abc'"),
    ({"WORLD_SIZE": "abc"}, ["bench-group", TABLE, "--epochs", "1"], "WORLD_SIZE='abc'"),
    ({"RANK": "1"}, ["run", "nope/x/y/z"], "unknown cell"),            # a stray rank never silences a lone process
    ({"SLURM_PROCID": "1"}, ["run", "nope/x/y/z"], "unknown cell"),
    ({"RANK": "1", "SLURM_PROCID": "1", "WORLD_SIZE": "2"}, ["run", STUDENT], "without MASTER_ADDR"),
    ({"SUBMITIT_EXECUTOR": "slurm", "SLURM_NTASKS": "2"}, ["run", STUDENT], "not a submitit job"),
    ({"KD_STORE": "/dev/null"}, ["run", STUDENT], "not a writable folder"),
    ({"KD_STORE": "/proc/self"}, ["run", STUDENT], "not a writable folder"),
    ({"KD_STORE": "/dev/null"}, ["import-teacher", TEACHER, "{pt}", "--sha256", "{sha}"], "not a writable folder"),
    ({"KD_STORE": "/proc/self"}, ["demo"], "not a writable folder"),
    ({"KD_RESULTS": "/dev/null"}, ["run", STUDENT], "not a writable folder"),
    ({"KD_RESULTS": "/dev/null"}, ["bench", KD_CELL], "not a writable"),
    ({"KD_RESULTS": "/proc/self"}, ["table", TABLE], "not a writable folder"),
    ({"KD_DATA_ROOT": "/dev/null"}, ["run", CIFAR, "--no-progress"], "is missing"),
]


@pytest.mark.parametrize("variables, args, match", ENV_CASES,
                         ids=[f"{v} {' '.join(a)}" for v, a, _ in ENV_CASES])
def test_bad_environment(env, capsys, monkeypatch, variables, args, match):
    import kd.data.readers
    monkeypatch.setattr(kd.data.readers, "_download", lambda *a: None)             # offline
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    refused(env, capsys, _fill(env, args), match)


def test_under_torchrun_the_line_comes_from_rank_0_and_goes_to_torchruns_error_file(env, capsys, monkeypatch):
    """Every rank fails alike before the process group exists: rank 0 prints the one line, and each
    rank hands it to torchrun's error file, which torchrun's failure report prints as the root cause."""
    err_file = env / "torchrun_error.json"
    for k, v in {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "TORCHELASTIC_ERROR_FILE": str(err_file), **MASTER}.items():
        monkeypatch.setenv(k, v)
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert main(["run", "nope/x/y/z"]) == 2
        err = capsys.readouterr().err
        assert (err == "") if rank == "1" else (err.startswith("kd: error: unknown cell") and err.count("\n") == 1)
        message = json.loads(err_file.read_text())["message"]
        assert message["message"].startswith("kd: error: unknown cell") and "\n" not in message["extraInfo"]["py_callstack"]


def test_an_empty_kd_store_is_the_default_not_the_working_directory(monkeypatch):
    from kd.data.core import data_root
    from kd.records.store import store_root
    for var in ("KD_STORE", "KD_DATA_ROOT"):
        monkeypatch.setenv(var, "")
    assert store_root() == Path("checkpoints") and data_root() == Path("data")


# --- closed pipes, a terminal that cannot print UTF-8 --------------------------------------------------

def _kd(env, args, stdout, **variables):
    """`kd args` in a process of its own, its memory capped at 4 GiB (a regression that reads an endless
    file fails there, not here)."""
    import resource
    import subprocess
    import sys
    environ = {**os.environ, "KD_RESULTS": str(env / "results"), "KD_STORE": str(env / "store"), **variables}
    cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # noqa: E731
    return subprocess.run([sys.executable, "-m", "kd.cli", *args], stdout=stdout, stderr=subprocess.PIPE, env=environ,
                          timeout=300, cwd=Path(__file__).resolve().parent.parent, preexec_fn=cap)


@pytest.mark.parametrize("args", [["list"], ["list", "--status"], ["find", "75.46"]])
def test_a_closed_pipe_ends_quietly(env, args):
    """`kd list | head -1`: the reader is gone before kd writes; no traceback, no error at exit."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = _kd(env, args, w)
    finally:
        os.close(w)
    assert p.stderr == b"" and p.returncode == 141, p.stderr.decode()[-2000:]


def test_a_terminal_that_cannot_encode_utf8_gets_question_marks(env):
    import subprocess
    (env / "results" / "digits.jsonl").write_text(GOOD_LINE + json.dumps(_record(seed=1, top1_last=90.0)) + "\n")
    p = _kd(env, ["list"], subprocess.PIPE, PYTHONIOENCODING="ascii")          # its footer has a '↳'
    assert p.returncode == 0 and p.stderr == b"" and b"; ? rows" in p.stdout, p.stderr.decode()[-2000:]


# --- Slurm tracking files and sacct ------------------------------------------------------------------

JOB = {"job_id": "1001", "cluster": "slurm", "cell_id": STUDENT, "cell": STUDENT, "seed": 0}


def _sparse(f, size):
    with open(f, "wb") as fh:
        fh.truncate(size)


JOB_FILE_CASES = [
    ("torn", lambda f: f.write_text(json.dumps(JOB)[:25])), ("a list", lambda f: f.write_text("[1, 2]")),
    ("empty", lambda f: f.write_text("")), ("bytes", lambda f: f.write_bytes(b"\xff\xfe\x00garbage")),
    ("no job id", lambda f: f.write_text(json.dumps({k: v for k, v in JOB.items() if k != "job_id"}))),
    ("job id shell", lambda f: f.write_text(json.dumps({**JOB, "job_id": "1; touch /tmp/x"}))),
    ("job id number", lambda f: f.write_text(json.dumps({**JOB, "job_id": 1001}))),
    ("cluster", lambda f: f.write_text(json.dumps({**JOB, "cluster": "pbs"}))),
    ("seed text", lambda f: f.write_text(json.dumps({**JOB, "seed": "0"}))),
    ("seed negative", lambda f: f.write_text(json.dumps({**JOB, "seed": -1}))),
    ("cell id", lambda f: f.write_text(json.dumps({**JOB, "cell_id": 5}))),
    ("nested", lambda f: f.write_text("[" * 100000)), ("folder", lambda f: f.mkdir()),
    ("fifo", lambda f: os.mkfifo(f)), ("link to /dev/zero", lambda f: f.symlink_to("/dev/zero")),
    ("huge", lambda f: _sparse(f, 8 << 20)), ("dangling link", lambda f: f.symlink_to(f.parent / "nowhere")),
]


@pytest.mark.parametrize("kind, plant", JOB_FILE_CASES, ids=[c[0] for c in JOB_FILE_CASES])
def test_a_bad_job_tracking_file_is_skipped_with_one_warning(env, slurm, capsys, kind, plant):
    """A tracking file is untrusted input: `kd list --status`, `kd table` and a resubmission skip it with
    one warning line, never crash, and leave it as it is; the good tracking file beside it still counts."""
    from kd.commands.jobs import write_job
    write_job(env / "store", STUDENT, 1, {**JOB, "seed": 1, "job_id": "1000"})          # a good one: queued
    bad = env / "store" / "jobs" / "bad.json"
    plant(bad)
    keep = _files(env / "store" / "jobs")
    unlocked = lambda: {k: v for k, v in _files(env / "store" / "jobs").items() if not k.endswith(".lock")}  # noqa: E731
    assert main(["list", "--status"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("kd: warning: skipped 1 job file(s)") and out.err.count("\n") == 1, out.err
    assert "1:queued" in out.out
    assert main(SLURM + ["--seed", "1"]) == 0                          # queued: not submitted again
    out = capsys.readouterr()
    assert "skipping 1 runs: 1 queued" in out.out and "Traceback" not in out.err and out.err.count("\n") <= 1
    assert unlocked() == keep and not (slurm / "count").exists()


SACCT_CASES = [
    ("garbage", "#!/bin/sh\necho 'this is not sacct'\n", "cannot read"),
    ("accounting off", "#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n", "status 1"),
    ("binary", "#!/bin/sh\nprintf '\\377\\376\\000|\\001'\n", "cannot read"),
    ("empty", "#!/bin/sh\nexit 0\n", "cannot read"),
    ("killed", "#!/bin/sh\nkill -9 $$\n", "status -9"),
]


@pytest.mark.parametrize("kind, script, why", SACCT_CASES, ids=[c[0] for c in SACCT_CASES])
def test_sacct_that_fails_or_prints_garbage_makes_states_unknown_in_one_line(env, slurm, capsys, kind, script, why):
    from kd.commands.jobs import write_job
    write_job(env / "store", STUDENT, 0, JOB)
    (slurm / "sacct").write_text(script)
    assert main(["list", "--status"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("kd: warning: sacct") and why in out.err and out.err.count("\n") == 1, out.err
    assert "0:unknown(sacct failed)" in out.out
    assert main(SLURM) == 0                                          # unknown: never submitted twice
    assert "skipping 1 runs: 1 unknown" in capsys.readouterr().out and not (slurm / "count").exists()


# --- results files that never end, or that are not files ---------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "link to /dev/urandom", "huge"])
def test_results_files_that_never_end_are_not_read(env, kind):
    """Each reading command says so in one warning line and finishes (a subprocess, so that a regression
    hangs or fills the memory of that process only)."""
    import subprocess
    f = env / "results" / "more.jsonl"
    if kind == "fifo":
        os.mkfifo(f)
    elif kind == "huge":
        _sparse(f, 300 << 20)
    else:
        f.symlink_to(kind.split()[-1])
    args = {"fifo": ["list"], "link to /dev/zero": ["compare", "--table", TABLE], "huge": ["list", "--status"],
            "link to /dev/urandom": ["list"]}[kind]
    p = _kd(env, args, subprocess.PIPE)
    err = p.stderr.decode()
    assert p.returncode == 0 and err.startswith("kd: warning: skipped bad result line") and err.count("\n") == 1, err
    assert ("not a regular file" if kind != "huge" else "not read") in err


# --- every subcommand and every option has rows --------------------------------------------------------

def _parser():
    import argparse
    import kd.cli
    box = {}

    def grab(self, *a, **k):
        box["parser"] = self
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kd.cli._Parser, "parse_args", grab)
        kd.cli.main(["list"])
    return next(a for a in box["parser"]._actions if isinstance(a, argparse._SubParsersAction))


def test_every_subcommand_and_every_option_taking_a_value_has_a_row():
    """The standing rule of this file: a new subcommand or option comes with its rows here."""
    rows = [a for a, _ in CLI_CASES] + [SLURM + e for e, _ in SLURM_CASES] + [a for _, a, _ in ENV_CASES] + \
        [["table", "--executor", "slurm", "--slurm-config"]]                   # test_bad_slurm_config: CONFIG_CASES
    missing = []
    for name, sub in _parser().choices.items():
        mine = [r for r in rows if r and r[0] == name]
        used = {t.split("=")[0] for r in mine for t in r if t.startswith("--")}
        missing += [] if mine else [name]
        missing += [f"{name} {act.option_strings[0]}" for act in sub._actions
                    if act.option_strings and act.nargs != 0 and not set(act.option_strings) & used]
    assert not missing, missing
