"""Issue 10, defect by defect: nothing lost, nothing run, nothing mislabelled. Each test reproduces
one defect found by probing (it fails on the code before the fix)."""
from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

import kd.methods
import torch

import kd.catalog.cells
from kd.catalog.cells import Cell, find_cell, load_cells, load_recipe
from kd.cli import main
from kd.errors import KDError
from kd.records.results import append_record, read_records
from kd.records.store import checkpoint_path, run_lock, save_checkpoint, sha256_file, state_path
from kd.engine import run_cell
from kd.engine.teacher import build_model

QUIET = {"progress": False, "log": lambda *a: None}


def record(cell_id="digits-sub400/baseline/tiny_s/digits", seed=0, **kw) -> dict:
    """A minimal well-formed schema-1 result record."""
    rec = {"schema": 1, "cell_id": cell_id, "seed": seed, "status": "ok", "top1_last": 90.0, "top5_last": 99.0,
           "top1_best": 91.0, "top5_best": 99.5, "best_epoch": 3}
    rec.update(kw)
    return rec


def files(*roots) -> dict:
    """path -> bytes of every file under the roots (to assert that nothing changed)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            if p.is_file():
                out[str(p)] = p.read_bytes()
    return out


# --- 1. torn last lines ------------------------------------------------------------------------

def test_torn_tail_is_reported_and_the_next_record_starts_on_a_fresh_line(tmp_path, capsys):
    f = tmp_path / "digits.jsonl"
    good = json.dumps(record(seed=0)) + "\n"
    f.write_text(good + json.dumps(record(seed=1))[:40])          # a writer died mid-line (a full disk)
    assert [r["seed"] for r in read_records(tmp_path)] == [0]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kd: warning:") and "digits.jsonl:2: torn last line" in err
    append_record(record(seed=2), f)
    assert f.read_bytes().endswith(b"\n")
    assert [r["seed"] for r in read_records(tmp_path)] == [0, 2]   # the torn line alone is lost, not its successor
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "digits.jsonl:2: not a JSON result line" in err


@pytest.mark.parametrize("failure", ["short", "enospc"])
def test_a_short_or_failed_write_is_undone_and_fails_loudly(tmp_path, monkeypatch, failure):
    f = tmp_path / "digits.jsonl"
    append_record(record(seed=0), f)
    before = f.read_bytes()
    real = os.write

    def broken(fd, data):
        if failure == "enospc":
            real(fd, data[:7])
            raise OSError(28, "No space left on device")
        return real(fd, data[:7])                                   # the disk took 7 bytes

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(KDError, match="NOT recorded"):
        append_record(record(seed=1), f)
    monkeypatch.undo()
    assert f.read_bytes() == before                                 # no torn line left behind


# --- 2. no code from dataset files; checked downloads -------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_cifar_batch_cannot_run_code(tmp_path):
    from kd.data import load_dataset
    from tests.conftest import write_cifar
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(KDError, match=r"data_batch_1: not a readable CIFAR python batch .*refused global"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar_batches_in_the_published_python2_layout_load(tmp_path):
    """The real files are protocol-2 pickles naming numpy.core.multiarray._reconstruct."""
    from kd.data.readers import read_cifar_batch
    x = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    raw = pickle.dumps({"data": x, "labels": [3, 7], "batch_label": "training batch 1 of 5"}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "b").write_bytes(raw)
    imgs, labels = read_cifar_batch(tmp_path / "b", "labels")
    assert imgs.shape == (2, 3, 32, 32) and labels == [3, 7] and (imgs.reshape(2, -1) == x).all()


def test_a_download_failing_its_md5_is_refused_and_not_extracted(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu
    from kd.data.readers import cifar100

    def fake_download(url, root, *a, **kw):              # a tampered or truncated archive arrives
        (Path(root) / url.rsplit("/", 1)[-1]).write_bytes(b"not the archive")

    monkeypatch.setattr(tvu, "download_url", fake_download)
    with pytest.raises(KDError, match="fails its md5 check.*eb9058c3a382ffc7106e4002c42a8d85"):
        cifar100(tmp_path)
    assert list(tmp_path.iterdir()) == []                 # deleted, nothing extracted


# --- 3. a recipe's id is its file name -----------------------------------------------------------

def test_recipe_name_must_equal_its_file_name(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "quick.yaml").write_text("name: crd\nepochs: 1\nbatch_size: 8\nlr: 0.1\n")
    with pytest.raises(KDError, match="name 'crd' differs from the file name 'quick'"):
        load_recipe("quick", tmp_path)


# --- 4. resume checks the configuration ----------------------------------------------------------

@pytest.fixture()
def bench(tmp_path, monkeypatch):
    """A benchmarks folder of our own: recipe r, used through the default root as `kd` does."""
    root = tmp_path / "benchmarks"
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "r.yaml").write_text("epochs: 3\nbatch_size: 32\nlr: 0.05\nmilestones: [2]\n")
    monkeypatch.setattr(kd.catalog.cells, "BENCHMARKS", root)
    return root


def test_resume_refuses_a_changed_recipe_and_says_how_to_start_over(data_root, isolated, bench):
    cell = Cell("cifar100", "baseline", "tiny_s", None, "r")
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, 0, device="cpu", data_root=data_root, stop_after_epochs=1, **QUIET)
    (bench / "recipes" / "r.yaml").write_text("epochs: 3\nbatch_size: 32\nlr: 0.2\nmilestones: [2]\n")   # edited
    state = state_path("cifar100/baseline/tiny_s/r", 0, isolated / "store")
    files = lambda: {p: p.read_bytes() for p in (isolated / "results").rglob("*") if p.is_file()}  # noqa: E731
    before = files()                                     # the interrupted run's per-epoch CSV, no result line
    with pytest.raises(KDError, match=rf"another configuration.*to start over, delete it: rm '{state}'") as e:
        run_cell(cell, 0, device="cpu", data_root=data_root, **QUIET)
    assert "\n" not in str(e.value) and state.is_file() and files() == before
    assert not list((isolated / "results").glob("*.jsonl"))
    state.unlink()                                                  # as the message says
    rec = run_cell(cell, 0, device="cpu", data_root=data_root, **QUIET)
    assert rec["config"]["recipe"]["lr"] == 0.2 and len(rec["curve"]) == 3


def test_a_foreign_resume_state_is_refused_before_training(data_root, isolated):
    cell = Cell("cifar100", "baseline", "tiny_s", None, "crd")
    state = state_path("cifar100/baseline/tiny_s/crd~epochs=1", 0, isolated / "store")
    state.parent.mkdir(parents=True)
    torch.save({"stage": 0, "epoch": 0}, state)                     # another program's, or an old kd's
    before = files(isolated)
    with pytest.raises(KDError, match="not a resume state written by this kd"):
        run_cell(cell, 0, device="cpu", overrides={"epochs": 1}, data_root=data_root, **QUIET)
    assert files(isolated) == before


# --- 5. every recipe field and override is checked -----------------------------------------------

@pytest.mark.parametrize("ov", [{"epochs": 0}, {"epochs": -2}, {"batch_size": 0}, {"batch_size": -8},
                                {"subset": 0}, {"lr": -0.1}, {"lr": float("inf")}, {"lr": float("nan")},
                                {"epochs": True}, {"epochs": 1.5}])
def test_bad_overrides_are_refused_before_anything_is_written(data_root, isolated, ov):
    cell = Cell("cifar100", "baseline", "tiny_s", None, "crd")
    with pytest.raises(KDError, match=f"override {next(iter(ov))} = "):
        run_cell(cell, 0, device="cpu", overrides=ov, data_root=data_root, **QUIET)
    assert files(isolated) == {}


@pytest.mark.parametrize("line, field", [
    ("epochs: '1'", "epochs"), ("epochs: 0", "epochs"), ("batch_size: -4", "batch_size"), ("lr: four", "lr"),
    ("lr: .nan", "lr"), ("lr: -.inf", "lr"), ("milestones: 5", "milestones"), ("milestones: [0]", "milestones"),
    ("milestones: [9]", "milestones"), ("gamma: 0", "gamma"), ("momentum: 2", "momentum"),
    ("optimizer: adam", "optimizer"), ("schedule: step", "schedule"), ("nesterov: 'yes'", "nesterov"),
    ("weight_decay: -1", "weight_decay"), ("teacher_seed: -1", "teacher_seed"), ("amp: 1", "amp"),
    ("lr_by_student: [0.1]", "lr_by_student"), ("assumed: text", "assumed")])
def test_bad_recipe_fields_are_refused(tmp_path, line, field):
    (tmp_path / "recipes").mkdir()
    base = {"epochs": "epochs: 2", "batch_size": "batch_size: 8", "lr": "lr: 0.1", "milestones": "milestones: [1]"}
    base[field] = line
    (tmp_path / "recipes" / "r.yaml").write_text("\n".join(base.values()) + "\n")
    with pytest.raises(KDError, match=rf"r.yaml: {field} = .*: must be"):
        load_recipe("r", tmp_path)


@pytest.mark.parametrize("edit, match", [
    ({"pairs": 5}, "pairs = 5: must be"), ({"models": "tiny_s"}, "models = 'tiny_s': must be"),
    ({"pairs": [["tiny_t"]]}, "pairs .*must be"), ({"dataset": 5}, "dataset = 5"),
    ({"methods": {"kd": {"ce_weight": "x", "terms": [{"name": "kd", "weight": 0.9}]}}}, "ce_weight = 'x'"),
    ({"methods": {"kd": {"terms": [{"name": "kd", "weight": 0.9, "T": "four"}]}}}, "T = 'four': must be float"),
    ({"methods": {"kd": {"terms": [{"name": "kd", "weight": 0.9, "tau": 4}]}}}, "unknown hyperparameter 'tau'"),
    ({"methods": {"kd": {"terms": [{"name": "kd", "weight": "0.9"}]}}}, "weight = '0.9'"),
    ({"methods": {"kd": {"terms": {"name": "kd"}}}}, "terms must be a list")])
def test_bad_cell_fields_are_refused(tmp_path, edit, match):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text("epochs: 1\nbatch_size: 8\nlr: 0.1\n")
    d = {"dataset": "digits", "recipe": "r", "pairs": [["tiny_t", "tiny_s"]],
         "methods": {"kd": {"ce_weight": 0.1, "terms": [{"name": "kd", "weight": 0.9, "T": 4}]}}}
    (tmp_path / "c.yaml").write_text(json.dumps({**d, **edit}))     # JSON is YAML
    with pytest.raises(KDError, match=match):      # names at load (kd list); hyperparameter types
        load_cells(tmp_path)                         # when the cell is about to run (find_cell)
        kd.methods.check_terms(find_cell("digits/kd/tiny_s_from_tiny_t/r", tmp_path))


# --- 6. a check passes only on evidence ----------------------------------------------------------

def test_compare_check_fails_when_nothing_was_judged_or_every_run_failed(tmp_path, capsys):
    res = tmp_path / "res"
    res.mkdir()
    args = ["compare", "--check", "--table", "recorded_digits", "--results", str(res)]
    assert main(args) == 1 and "nothing was judged" in capsys.readouterr().err
    failed = {k: v for k, v in record(status="failed").items() if not k.startswith("top") and k != "best_epoch"}
    (res / "digits.jsonl").write_text(json.dumps({**failed, "error": "non-finite loss"}) + "\n")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "every run failed (1 failed, none ok)" in err and "nothing was judged" in err


# --- 7. one run of a (cell, seed) at a time; private temporary files ----------------------------

def test_a_second_run_of_the_same_cell_and_seed_is_refused(data_root, isolated):
    cell = Cell("cifar100", "baseline", "tiny_s", None, "crd")
    with run_lock(isolated / "store", "cifar100/baseline/tiny_s/crd~epochs=1", 0):     # another process trains it
        with pytest.raises(KDError, match="seed 0 is being trained by another process"):
            run_cell(cell, 0, device="cpu", overrides={"epochs": 1}, data_root=data_root, **QUIET)
        assert not (isolated / "results").exists()
    rec = run_cell(cell, 0, device="cpu", overrides={"epochs": 1}, data_root=data_root, **QUIET)   # free again
    assert rec["status"] == "ok" and not list((isolated / "store").rglob("*.lock"))


def test_concurrent_checkpoint_writes_share_no_temporary_file(tmp_path):
    path = tmp_path / "m" / "seed0.pt"
    model = build_model("tiny_s", 10)
    errors = []

    def writer():
        try:
            for _ in range(40):
                save_checkpoint(model, path)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sha256_file(path) == path.with_suffix(".sha256").read_text().split()[0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["seed0.pt", "seed0.sha256"]


# --- 8. store cases: checked before training, one line ---------------------------------------------

def test_an_empty_sha256_sidecar_is_one_line(data_root, isolated):
    teacher = checkpoint_path("cifar100/baseline/tiny_t/crd~epochs=1", 0, isolated / "store")
    save_checkpoint(build_model("tiny_t", 100), teacher)
    teacher.with_suffix(".sha256").write_text("")
    cell = Cell("cifar100", "kd", "tiny_s", "tiny_t", "crd", terms=({"name": "kd", "weight": 1.0},))
    with pytest.raises(KDError, match="not a sha256 sidecar"):
        run_cell(cell, 0, device="cpu", overrides={"epochs": 1}, data_root=data_root, **QUIET)


@pytest.mark.parametrize("which", ["store", "results"])
def test_an_unwritable_store_or_results_folder_is_refused_before_training(data_root, tmp_path, which, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    dirs = {"store": tmp_path / "st", "results": tmp_path / "res", which: blocker / "sub"}
    code = main(["run", "digits-sub400/baseline/tiny_s/digits", "--epochs", "1", "--no-progress",
                 "--store", str(dirs["store"]), "--results", str(dirs["results"])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not a writable folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m" / "seed0.pt"
    save_checkpoint(build_model("tiny_s", 10), path)
    before = files(tmp_path)

    def full(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(KDError, match="cannot write .*seed0.pt: No space left on device; it is as it was"):
        save_checkpoint(build_model("tiny_s", 10), path)
    assert files(tmp_path) == before                              # no temporary file left, the old one intact


# --- issue 19: writes never through a link; refusals before any write ---------------------------------

STUDENT = "digits-sub400/baseline/tiny_s/digits"
KD_STUDENT = "digits-sub400/kd/tiny_s_from_tiny_t/digits"
TEACHER = "digits-sub400/baseline/tiny_t/digits"
ONE_EPOCH = f"{STUDENT}~epochs=1"


def _kd(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def _one_line(code, err, match):
    assert code == 2 and err.startswith("kd: error: ") and err.count("\n") == 1 and match in err, err


@pytest.mark.parametrize("target", ["results file", "per-epoch log", "lock file"])
def test_a_symlink_where_a_run_writes_is_refused_and_its_target_never_grows(tmp_path, capsys, target):
    """Measured before: an outside file grew from 48 to 2,706 bytes through a planted link."""
    from kd.records.log import csv_path
    from kd.records.store import lock_path
    outside = tmp_path / "outside.txt"
    outside.write_text("x" * 48)
    store, res = tmp_path / "store", tmp_path / "res"
    link = {"results file": res / "digits.jsonl", "per-epoch log": csv_path(ONE_EPOCH, 0, res),
            "lock file": lock_path(store, ONE_EPOCH, 0)}[target]
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    before = files(store, res)
    code, _, err = _kd(capsys, "run", STUDENT, "--epochs", "1", "--no-progress", "--store", store, "--results", res)
    _one_line(code, err, "symbolic link")
    assert outside.read_text() == "x" * 48 and files(store, res) == before and link.is_symlink()


def test_the_writers_themselves_refuse_links(tmp_path):
    """The second line of defence (O_NOFOLLOW), should a check before the run ever be bypassed."""
    from kd.records.log import EpochLog
    outside = tmp_path / "outside.txt"
    outside.write_text("x" * 48)
    for name in ("r.jsonl", "log.csv"):
        (tmp_path / name).symlink_to(outside)
    with pytest.raises(KDError, match="symbolic link"):
        append_record(record(), tmp_path / "r.jsonl")
    with pytest.raises(KDError, match="symbolic link"):
        EpochLog("c", 0, 1, 0, False, tmp_path / "log.csv")
    (tmp_path / "runs" / "c").mkdir(parents=True)
    (tmp_path / "runs" / "c" / "seed0.lock").symlink_to(outside)
    with pytest.raises(KDError, match="symbolic link"):
        with run_lock(tmp_path, "c", 0):
            pass
    assert outside.read_text() == "x" * 48


def test_a_filesystem_without_flock_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    code, _, err = _kd(capsys, "run", STUDENT, "--epochs", "1", "--no-progress", "--store", tmp_path / "s",
                       "--results", tmp_path / "r")
    _one_line(code, err, "does not support file locks (flock: No locks available)")
    assert files(tmp_path) == {}


def test_a_stored_teacher_replaced_by_a_pickle_with_a_matching_sidecar_writes_nothing(tmp_path, capsys):
    import hashlib
    marker = tmp_path / "pwned"
    store, res = tmp_path / "store", tmp_path / "res"
    teacher = checkpoint_path(f"{TEACHER}~epochs=1", 0, store)
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(pickle.dumps(_Evil(marker)))
    teacher.with_suffix(".sha256").write_text(hashlib.sha256(teacher.read_bytes()).hexdigest() + "  planted\n")
    before = files(store, res)
    code, _, err = _kd(capsys, "run", KD_STUDENT, "--epochs", "1", "--no-progress", "--store", store, "--results", res)
    _one_line(code, err, "is not a plain state_dict")
    assert not marker.exists() and files(store, res) == before


# --- import-teacher: every refusal before the store is touched ------------------------------------------

@pytest.fixture()
def teacher_file(tmp_path):
    from kd.records.store import sha256_file
    f = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_model("tiny_t", 10).state_dict(), f)
    return f, sha256_file(f)


def test_import_teacher_with_an_empty_sidecar_on_the_stored_teacher_is_one_line(tmp_path, capsys, teacher_file):
    f, sha = teacher_file
    stored = checkpoint_path(TEACHER, 0, tmp_path / "store")
    save_checkpoint(build_model("tiny_t", 10), stored)
    stored.with_suffix(".sha256").write_text("")
    code, _, err = _kd(capsys, "import-teacher", TEACHER, f, "--sha256", sha, "--store", tmp_path / "store",
                       "--results", tmp_path / "res")
    _one_line(code, err, "already stored")
    assert "an empty sha256 sidecar" in err


@pytest.mark.parametrize("case", ["results file is a folder", "lock held", "results line fails"])
def test_import_teacher_refuses_before_it_installs(tmp_path, capsys, monkeypatch, teacher_file, case):
    """Measured before: a stored teacher without its line, and the retry refused as 'already stored'."""
    import kd.records.results
    f, sha = teacher_file
    store, res = tmp_path / "store", tmp_path / "res"
    args = ["import-teacher", TEACHER, f, "--sha256", sha, "--store", store, "--results", res, "--device", "cpu"]
    if case == "results file is a folder":
        (res / "digits.jsonl").mkdir(parents=True)
        code, _, err = _kd(capsys, *args)
        _one_line(code, err, "not a writable file")
    elif case == "lock held":
        with run_lock(store, TEACHER, 0):                                # a run trains this teacher right now
            code, _, err = _kd(capsys, *args)
        _one_line(code, err, "being trained by another process")
    else:
        def full(rec, path):
            raise KDError(f"result line NOT recorded in {path}: No space left on device; the file is as it was")
        monkeypatch.setattr(kd.records.results, "append_record", full)
        code, _, err = _kd(capsys, *args)
        _one_line(code, err, "NOT recorded")
    assert not checkpoint_path(TEACHER, 0, store).exists() and not list(store.rglob("*.sha256"))
    monkeypatch.undo()
    if case != "results file is a folder":
        assert _kd(capsys, *args)[0] == 0                               # the retry imports it


# --- runs asked for twice train once ---------------------------------------------------------------------

def test_a_student_and_its_teacher_and_a_repeated_seed_in_one_command_train_each_run_once(tmp_path, capsys):
    res = tmp_path / "res"
    code, out, err = _kd(capsys, "run", KD_STUDENT, TEACHER, "--seed", "0", "0", "--epochs", "1", "--no-progress",
                         "--store", tmp_path / "store", "--results", res)
    assert code == 0, err
    assert sorted(r["cell_id"] for r in read_records(res)) == [f"{TEACHER}~epochs=1", f"{KD_STUDENT}~epochs=1"]


def test_a_table_with_a_repeated_seed_trains_each_run_once_without_a_false_lock_error(tmp_path, capsys):
    res = tmp_path / "res"
    code, out, err = _kd(capsys, "table", "recorded_digits", "--seed", "0", "0", "--epochs", "1", "--no-progress",
                         "--store", tmp_path / "store", "--results", res)
    assert code == 0, err
    ids = [r["cell_id"] for r in read_records(res)]
    assert len(ids) == 3 == len(set(ids)) and "another process" not in err


# --- I/O errors during a run --------------------------------------------------------------------------------

def test_a_file_size_limit_while_saving_a_checkpoint_is_one_line_and_keeps_the_old_file(tmp_path):
    """`ulimit -f`: torch's writer reports EFBIG as a RuntimeError ('unexpected pos'), once a traceback."""
    import resource
    path = tmp_path / "m" / "seed0.pt"
    big = torch.nn.Linear(300, 300)
    save_checkpoint(build_model("tiny_s", 10), path)
    before = files(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(KDError, match=r"cannot write .*seed0.pt: torch.save could not write the file .*it is as it was"):
            save_checkpoint(big, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert files(tmp_path) == before


def test_a_per_epoch_log_that_cannot_be_written_mid_run_is_one_warning_and_the_run_is_recorded(
        tmp_path, capsys, monkeypatch):
    import errno
    import kd.records.files
    real = kd.records.files.open_write

    def full(path, flags=0, what="file"):
        if str(path).endswith(".csv") and flags & os.O_APPEND:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, flags, what)

    monkeypatch.setattr(kd.records.files, "open_write", full)
    rec = run_cell(find_cell(STUDENT), 0, device="cpu", overrides={"epochs": 2}, store=tmp_path / "s",
                   results_dir=tmp_path / "r", **QUIET)
    said = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(STUDENT)]   # not the epochs
    assert len(said) == 1 and said[0].startswith("kd: warning: cannot write the per-epoch log"), said
    assert rec["status"] == "ok" and len(read_records(tmp_path / "r")) == 1 and len(rec["curve"]) == 2


def test_a_damaged_image_cache_is_said_and_rebuilt(tmp_path, capsys, monkeypatch):
    from PIL import Image
    from kd.data.readers import image_folder
    monkeypatch.setenv("KD_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i * 90, 40, 200 if c == "a" else 10)).save(tmp_path / "imgs" / split / c / f"{i}.png")
    first = image_folder(tmp_path / "imgs", "x", size=8)
    assert capsys.readouterr().err.startswith("kd: decoding the 8 files")            # the first read says so
    caches = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(caches) == 2
    caches[0].write_bytes(caches[0].read_bytes()[:100])                     # torn (a full disk, a killed process)
    again = image_folder(tmp_path / "imgs", "x", size=8)
    err = capsys.readouterr().err
    assert err.startswith("kd: warning: damaged image cache") and err.count("\n") == 1, err
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
    assert np.load(caches[0])["x"].shape[0] == 4                              # rebuilt: read without a word
    image_folder(tmp_path / "imgs", "x", size=8)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("target", ["per-epoch log", "lock file", "checkpoint"])
def test_a_link_among_the_folders_kd_makes_is_refused_too(tmp_path, capsys, target):
    """curves/<run>/, runs/<run>/ and <store>/<cell>/ are made by kd: a link planted there would carry the
    file out (a checkpoint is written by os.replace, which follows a linked folder)."""
    from kd.records.store import safe_name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store, res = tmp_path / "store", tmp_path / "res"
    folder = {"per-epoch log": res / "curves", "lock file": store / "runs",
              "checkpoint": store / safe_name(f"{STUDENT}~epochs=1")}[target]          # <store>/<run id>/
    folder.parent.mkdir(parents=True)
    folder.symlink_to(elsewhere, target_is_directory=True)
    code, _, err = _kd(capsys, "run", STUDENT, "--epochs", "1", "--no-progress", "--store", store, "--results", res)
    _one_line(code, err, "leads out of it")
    assert list(elsewhere.iterdir()) == []
