"""The foundation: data, variants, cells, results, the training loop, teachers and the CLI."""
from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd.catalog.cells import Cell, find_cell, load_cells, load_recipe
from kd.data import DeviceData, apply_variant, imbalance_counts, load_dataset
from kd.errors import KDError
from kd.records.results import append_record, read_records
from kd.records.store import checkpoint_path, sha256_file
from kd.engine import run_cell

REPO = Path(__file__).resolve().parent.parent
KD = [sys.executable, "-m", "kd.cli"]
FAST = {"epochs": 2, "batch_size": 32}


def tiny_cell(label="baseline", teacher=None, terms=(), ce=1.0, dataset="cifar100"):
    return Cell(dataset, label, "tiny_s", teacher, "crd", ce_weight=ce, terms=terms)


# --- data ----------------------------------------------------------------------------------------

def test_cifar_reader_and_missing_dataset(data_root, tmp_path):
    ds = load_dataset("cifar100", data_root)
    assert ds.train_x.shape == (96, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.num_classes == 100 and ds.test_y.shape == (48,)
    with pytest.raises(KDError, match="cifar-100-python is missing.*cifar-100-python.tar.gz"):
        load_dataset("cifar100", tmp_path / "empty")
    with pytest.raises(KDError, match="unknown dataset 'cifar1000'; valid datasets: .*cifar100"):
        load_dataset("cifar1000", data_root)


def test_svhn_and_image_folder_readers(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE", str(tmp_path / "cache"))          # never the user's ~/.cache/kd
    import numpy as np
    from PIL import Image
    from scipy.io import savemat
    (tmp_path / "svhn").mkdir()
    for split, n in (("train", 6), ("test", 4)):
        savemat(tmp_path / "svhn" / f"{split}_32x32.mat",
                {"X": np.random.randint(0, 255, (32, 32, 3, n), dtype=np.uint8), "y": np.array([[10], [1], [2], [3], [4], [5]][:n])})
    ds = load_dataset("svhn", tmp_path)
    assert ds.train_x.shape == (6, 3, 32, 32) and ds.train_y[0] == 0 and not ds.flip  # label 10 is digit 0
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "folder" / split / c).mkdir(parents=True)
            Image.new("RGB", (40, 40), (255, 0, 0) if c == "cat" else (0, 0, 255)).save(tmp_path / "folder" / split / c / "0.jpg")
    from kd.data.readers import image_folder
    ds = image_folder(tmp_path / "folder", "folder", size=32)
    assert ds.info["classes"] == ["cat", "dog"] and ds.train_x.shape == (2, 3, 32, 32)
    assert ds.train_x[0, 0].float().mean() > 200 and ds.train_x[1, 2].float().mean() > 200


def test_building_an_image_folder_cache_says_so_once(tmp_path, monkeypatch, capsys):
    """The first read of an image folder decodes every image: one line says so (and where the cache
    goes); the next read comes from the cache, silently and identical."""
    from PIL import Image
    from kd.data.readers import image_folder
    monkeypatch.setenv("KD_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), colour).save(tmp_path / "f" / split / c / f"{i}.png")
    first = image_folder(tmp_path / "f", "f")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"kd: decoding the 12 files of {tmp_path / 'f'} (train, test) once, into the cache "
                           f"{tmp_path / 'cache'} "), line
    again = image_folder(tmp_path / "f", "f")
    assert capsys.readouterr().err == "" and torch.equal(first.train_x, again.train_x)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_augmentation_is_zero_padded_crop_and_flip(data_root):
    ds = load_dataset("cifar100", data_root)
    dd = DeviceData(ds, torch.device("cpu"))
    x = ds.train_x[:32]
    out = dd.augment(x, torch.Generator().manual_seed(0)) * dd.std + dd.mean          # back to [0, 1]
    padded = torch.nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    flips = 0
    for i in range(32):
        views = {(oy, ox, f) for oy in range(9) for ox in range(9) for f in (0, 1)
                 if torch.allclose((padded[i, :, oy:oy + 32, ox:ox + 32].flip(2) if f else padded[i, :, oy:oy + 32, ox:ox + 32]),
                                   out[i], atol=1e-5)}
        assert views, f"sample {i} is not a padded crop (or its flip)"
        flips += all(f for _, _, f in views)
    assert 4 <= flips <= 28                               # flips happen, per sample, about half the time
    ev = next(dd.test_batches())[0]
    assert torch.allclose(ev * dd.std + dd.mean, ds.test_x.float() / 255, atol=1e-5)   # evaluation: no augmentation


def test_variants_are_seeded_and_recorded(data_root):
    ds = load_dataset("cifar10", data_root)
    noisy = apply_variant(ds, "noisy0.4", seed=3)
    again = apply_variant(ds, "noisy0.4", seed=3)
    assert torch.equal(noisy.train_y, again.train_y) and torch.equal(noisy.test_y, ds.test_y)
    assert noisy.info["labels_changed"] == int((noisy.train_y != ds.train_y).sum()) > 0
    assert imbalance_counts(1000, 10, 1.0) == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    assert load_dataset("cifar10-sub40-test20", data_root).train_x.shape[0] == 40
    with pytest.raises(KDError, match="unknown dataset variant 'bogus1'"):
        load_dataset("cifar10-bogus1", data_root)


# --- cells and recipes ---------------------------------------------------------------------------

def test_repo_cells_load_and_resolve():
    cells = load_cells()
    assert "digits-sub400/kd/tiny_s_from_tiny_t/digits" in cells
    kd = cells["digits-sub400/kd/tiny_s_from_tiny_t/digits"]
    assert kd.ce_weight == 0.1 and kd.terms[0] == {"name": "kd", "weight": 0.9, "T": 4}
    assert "digits-sub400/baseline/tiny_t/digits" in cells                      # the teacher is a cell too
    r = load_recipe("crd")
    assert (r.epochs, r.batch_size, r.lr, r.milestones, r.weight_decay) == (240, 64, 0.05, (150, 180, 210), 5e-4)
    assert r.lr_for("ShuffleV2") == 0.01 and r.lr_for("resnet8x4") == 0.05
    short = r.with_overrides(epochs=24, subset=1000)
    assert short.milestones == (15, 18, 21) and short.id == "crd~epochs=24,subset=1000"


def test_bad_cell_files_fail_with_file_and_line(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text("epochs: 1\nbatch_size: 2\nlr: 0.1\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: cifar100\nrecipe: r\nmethods: {kd: [unclosed\n")
    with pytest.raises(KDError, match=r"bad.yaml:\d+: malformed YAML"):
        load_cells(tmp_path)
    bad.write_text("dataset: cifar100\nrecipe: r\nmodels: [resnet8]\nmethods: {baseline: {}}\ncolour: red\n")
    with pytest.raises(KDError, match="unknown key.*colour"):
        load_cells(tmp_path)
    bad.write_text("dataset: cifar100\nrecipe: r\nmodels: [resnet9]\nmethods: {baseline: {}}\n")
    with pytest.raises(KDError, match="unknown model 'resnet9'; valid models: .*resnet8"):
        load_cells(tmp_path)
    bad.write_text("dataset: cifar100\nrecipe: r\npairs: [[resnet20, resnet8]]\nmethods: {kd: {terms: [{name: kdd, weight: 1}]}}\n")
    with pytest.raises(KDError, match="unknown method 'kdd'; valid methods: .*kd"):
        load_cells(tmp_path)
    with pytest.raises(KDError, match="unknown recipe 'nope'"):
        load_recipe("nope", tmp_path)
    with pytest.raises(KDError, match="unknown cell.*did you mean"):
        find_cell("digits-sub400/kd/tiny_s_from_tiny_t/digit")


# --- results -------------------------------------------------------------------------------------

def _append_many(args):
    path, k = args
    for i in range(50):
        append_record({"schema": 1, "cell_id": f"d/l/m/w{k}", "seed": i, "status": "failed", "pad": "x" * 5000},
                      Path(path))


def test_concurrent_appends_never_lose_or_corrupt_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_append_many, [(str(path), k) for k in range(4)])
    lines = path.read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(l)["pad"] == "x" * 5000 for l in lines)
    assert len(read_records(tmp_path)) == 200


# --- the training loop ---------------------------------------------------------------------------

def test_kd_run_records_provenance_and_trains_teacher_first(data_root, isolated):
    cell = tiny_cell("kd", teacher="tiny_t", ce=0.1, terms=({"name": "kd", "weight": 0.9, "T": 4},))
    rec = run_cell(cell, seed=0, device="cpu", overrides=FAST, data_root=data_root, progress=False, log=lambda *a: None)
    recs = read_records(isolated / "results")
    assert [r["cell_id"] for r in recs] == ["cifar100/baseline/tiny_t/crd~batch_size=32,epochs=2",
                                            "cifar100/kd/tiny_s_from_tiny_t/crd~batch_size=32,epochs=2"]
    assert recs[1] == rec and rec["status"] == "ok" and len(rec["curve"]) == 2
    assert rec["top1_last"] == rec["curve"][-1]["top1"] and rec["top1_best"] == max(e["top1"] for e in rec["curve"])
    assert rec["teacher_checkpoint_sha256"] == recs[0]["checkpoint_sha256"]
    assert rec["config"]["recipe"]["epochs"] == 2 and rec["config"]["cell"]["terms"][0]["T"] == 4
    for k in ("git", "versions", "device", "wall_s", "started", "finished", "top5_last", "top5_best"):
        assert rec[k] is not None, k
    assert set(rec["git"]) == {"commit", "dirty"} and rec["versions"]["torch"] == torch.__version__


def test_same_seed_repeats_and_resume_matches_uninterrupted(data_root, isolated):
    cell = tiny_cell()
    ov = {"epochs": 3, "batch_size": 32}
    a = run_cell(cell, 0, device="cpu", overrides=ov, data_root=data_root, store=isolated / "a", progress=False)
    b = run_cell(cell, 0, device="cpu", overrides=ov, data_root=data_root, store=isolated / "b", progress=False)
    assert a["curve"] == b["curve"]
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, 0, device="cpu", overrides=ov, data_root=data_root, store=isolated / "c", progress=False,
                 stop_after_epochs=2)
    c = run_cell(cell, 0, device="cpu", overrides=ov, data_root=data_root, store=isolated / "c", progress=False,
                 log=lambda *x: None)
    assert c["curve"] == a["curve"]
    assert sha256_file(Path(c["checkpoint"])) == a["checkpoint_sha256"]          # identical final weights
    assert len(read_records(isolated / "results")) == 3                           # the interruption wrote no line


def test_nan_loss_records_a_failed_run(data_root, isolated):
    with pytest.raises(KDError, match="non-finite loss.*recorded a failed run"):
        run_cell(tiny_cell(), 0, device="cpu", overrides={"epochs": 1, "lr": 1e30}, data_root=data_root, progress=False)
    (rec,) = read_records(isolated / "results")
    assert rec["status"] == "failed" and "non-finite" in rec["error"] and "top1_last" not in rec


def test_teacher_checksum_is_enforced(data_root, isolated):
    cell = tiny_cell("kd", teacher="tiny_t", terms=({"name": "kd", "weight": 1.0},))
    run_cell(cell, 0, device="cpu", overrides=FAST, data_root=data_root, progress=False, log=lambda *a: None)
    teacher = checkpoint_path("cifar100/baseline/tiny_t/crd~batch_size=32,epochs=2", 0, isolated / "store")
    sd = torch.load(teacher, weights_only=True)
    sd["fc.bias"] += 1
    torch.save(sd, teacher)                                   # tampered with after it was recorded
    with pytest.raises(KDError, match="sha256 mismatch"):
        run_cell(cell, 1, device="cpu", overrides=FAST, data_root=data_root, progress=False)


# --- command line --------------------------------------------------------------------------------

def _kd(*args, env=None):
    return subprocess.run(KD + list(args), capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def _main(capsys, *args) -> tuple[int, str]:
    """The CLI in-process (same code path as the `kd` command, without a new interpreter)."""
    from kd.cli import main
    code = main(list(args))
    return code, capsys.readouterr().err


def test_cli_errors_are_one_line_and_change_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KD_RESULTS", str(tmp_path / "res"))
    monkeypatch.setenv("KD_STORE", str(tmp_path / "st"))
    p = _kd("run", "cifar100/kd/nope/crd")                    # once through a real process
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "unknown cell" in p.stderr
    code, err = _main(capsys, "run", "cifar10_jpeg-sub5000-test2000/baseline/resnet8/c10jpeg_short",
                      "--data-root", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "cifar10-jpeg is missing" in err
    bogus = tmp_path / "t.pt"
    bogus.write_bytes(b"not a checkpoint")
    code, err = _main(capsys, "import-teacher", "digits-sub400/baseline/tiny_t/digits", str(bogus), "--sha256", "00" * 32)
    assert code == 2 and "sha256 is" in err and err.count("\n") == 1
    code, err = _main(capsys, "import-teacher", "digits-sub400/baseline/tiny_t/digits", str(bogus), "--sha256", sha256_file(bogus))
    assert code == 2 and "kd: error:" in err and err.count("\n") == 1                # not a state_dict
    assert not (tmp_path / "res").exists() and not list((tmp_path).glob("st/**/*.pt"))


def test_import_teacher_then_student_uses_it(tmp_path, capsys, monkeypatch):
    from kd.engine.teacher import build_model
    monkeypatch.setenv("KD_RESULTS", str(tmp_path / "res"))
    monkeypatch.setenv("KD_STORE", str(tmp_path / "st"))
    torch.manual_seed(0)
    f = tmp_path / "teacher.pt"
    torch.save({"model": build_model("tiny_t", 10).state_dict()}, f)          # RepDistiller layout
    code, err = _main(capsys, "import-teacher", "digits-sub400/baseline/tiny_t/digits", str(f), "--sha256", sha256_file(f))
    assert code == 0, err
    code, err = _main(capsys, "run", "digits-sub400/kd/tiny_s_from_tiny_t/digits", "--epochs", "1", "--no-progress")
    assert code == 0, err
    imported, rec = read_records(tmp_path / "res")   # the imported full-recipe teacher is used: none trained
    assert imported["imported"]["sha256"] == sha256_file(f) and imported["cell_id"] == "digits-sub400/baseline/tiny_t/digits"
    assert rec["teacher_checkpoint_sha256"] == sha256_file(f)


def test_find_cell_resolves_only_the_cell_asked_for(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text("epochs: 1\nbatch_size: 2\nlr: 0.1\n")
    (tmp_path / "good.yaml").write_text("dataset: cifar100\nrecipe: r\nmodels: [resnet8]\nmethods: {baseline: {}}\n")
    (tmp_path / "bad.yaml").write_text("dataset: cifar100\nrecipe: r\nmodels: [resnet9]\nmethods: {baseline: {}}\n")
    assert find_cell("cifar100/baseline/resnet8/r", tmp_path).student == "resnet8"
    with pytest.raises(KDError, match="unknown model 'resnet9'"):
        find_cell("cifar100/baseline/resnet9/r", tmp_path)
