"""`kd import-teachers DIR`: RepDistiller's and mdistiller's teacher layouts, strict load, evaluation,
comparison with the published teacher accuracy, and the download path against a loopback HTTP server."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import pytest
import torch

from conftest import write_cifar
from kd.cli import main
from kd.commands.import_teachers import download, published_teachers
from kd.records.results import read_records

RD = "save/models/{}_vanilla/ckpt_epoch_240.pth"
MD = "download_ckpts/cifar_teachers/{}_vanilla/ckpt_epoch_240.pth"


def _ckpt(path, model: str, seed: int = 0, legacy: bool = False):
    """A checkpoint as the peers save it: {'model': state_dict, 'epoch', 'accuracy', 'optimizer'}."""
    from kd.engine.teacher import build_model
    torch.manual_seed(seed)
    net = build_model(model, 100)
    path.parent.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    torch.save({"model": net.state_dict(), "epoch": 240, "accuracy": torch.tensor(72.0),
                "optimizer": opt.state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    return net


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(capsys, *args):
    code = main(["import-teachers", *map(str, args), "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def test_published_teachers_come_from_the_crd_and_dkd_tables():
    pub = published_teachers()
    assert {p["value"] for p in pub["resnet32x4"]} == {79.42}
    assert {p["table"] for p in pub["resnet32x4"]} == {"crd2020_table1", "crd2020_table2", "dkd2022_same_arch",
                                                       "dkd2022_diff_arch"}
    assert set(pub) == {"wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"}


def test_both_layouts_are_mapped_refused_beyond_tolerance_then_forced(tmp_path, data_root, isolated, capsys):
    """Random weights score ~1 % against a published 72-76 %: refused with the distance, nothing written;
    --force imports both, each line with its layout, sha256 and published deltas."""
    _ckpt(tmp_path / "peers" / RD.format("resnet56"), "resnet56", legacy=True)      # an old-format file too
    _ckpt(tmp_path / "peers" / MD.format("wrn_40_2"), "wrn_40_2")
    (tmp_path / "peers" / "save/models/resnet8x4_vanilla").mkdir(parents=True)       # no checkpoint: ignored
    code, out, err = _run(capsys, tmp_path / "peers", "--data-root", data_root)
    assert code == 2 and err.count("\n") == 1 and "nothing imported" in err and "--force" in err
    assert "resnet56: top-1" in err and "below the published 72.34 (crd2020_table1, tolerance 1)" in err
    assert "wrn_40_2: top-1" in err and "75.61" in err
    assert read_records(isolated / "results") == [] and not (isolated / "store").exists()
    code, out, err = _run(capsys, tmp_path / "peers", "--data-root", data_root, "--force")
    assert code == 0, err
    recs = {r["cell_id"]: r for r in read_records(isolated / "results")}
    assert set(recs) == {"cifar100/baseline/resnet56/crd", "cifar100/baseline/wrn_40_2/crd"}
    r = recs["cifar100/baseline/resnet56/crd"]
    assert r["imported"]["layout"] == "repdistiller" and r["imported"]["forced"] is True
    assert r["checkpoint_sha256"] == _sha(tmp_path / "peers" / RD.format("resnet56"))
    assert {p["table"] for p in r["imported"]["published"]} >= {"crd2020_table1", "dkd2022_same_arch"}
    assert all(p["delta"] == round(r["top1_last"] - 72.34, 2) for p in r["imported"]["published"])
    assert recs["cifar100/baseline/wrn_40_2/crd"]["imported"]["layout"] == "mdistiller"
    assert r["imported"]["downloaded"] is None and "forced past the published accuracy" in out


def test_a_teacher_within_tolerance_is_imported_and_used_by_runs(tmp_path, isolated, capsys):
    """Test labels made so that the checkpoint scores 36/50 = 72.00 % against the published 72.34."""
    from kd.data import load_dataset
    from kd.records.store import checkpoint_path, verified_checkpoint
    root = write_cifar(tmp_path / "data", "cifar100", n_train=8, n_test=50)
    net = _ckpt(tmp_path / "peers" / RD.format("resnet56"), "resnet56").eval()
    with torch.no_grad():
        x, _ = next(load_dataset("cifar100", root).on_device(torch.device("cpu")).test_batches(256))
        pred = net(x).argmax(1).tolist()
    f = root / "cifar-100-python" / "test"
    d = pickle.loads(f.read_bytes())
    d["fine_labels"] = [p if i < 36 else (p + 1) % 100 for i, p in enumerate(pred)]
    f.write_bytes(pickle.dumps(d))
    code, out, err = _run(capsys, tmp_path / "peers" / "save" / "models", "--data-root", root)   # the folder itself
    assert code == 0, err
    (r,) = read_records(isolated / "results")
    assert r["top1_last"] == 72.0 and r["imported"]["forced"] is False and r["imported"]["layout"] == "folder"
    assert verified_checkpoint(checkpoint_path(r["cell_id"], r["seed"], isolated / "store")) == r["checkpoint_sha256"]
    code, _, err = _run(capsys, tmp_path / "peers", "--data-root", root)
    assert code == 2 and "already stored" in err                     # never replaced silently


@pytest.mark.parametrize("case,msg", [
    ("empty", "no teacher checkpoints under"),
    ("wrong-model", "unexpected"),
    ("two-different", "two different checkpoints for resnet56"),
    ("missing", "no such folder"),
])
def test_bad_folders_are_one_line_and_write_nothing(tmp_path, data_root, isolated, capsys, case, msg):
    peers = tmp_path / "peers"
    peers.mkdir()
    if case == "wrong-model":
        _ckpt(peers / RD.format("wrn_40_2"), "resnet56")           # strict load: resnet56 keys in a wrn_40_2 folder
    elif case == "two-different":
        _ckpt(peers / RD.format("resnet56"), "resnet56", seed=0)
        _ckpt(peers / MD.format("resnet56"), "resnet56", seed=1)
    elif case == "missing":
        peers = tmp_path / "nowhere"
    code, out, err = _run(capsys, peers, "--data-root", data_root, "--force")
    assert code == 2 and err.startswith("kd: error:") and msg in err and err.count("\n") == 1, err
    assert read_records(isolated / "results") == [] and not (isolated / "store").exists()


@pytest.fixture()
def server(tmp_path):
    """A static HTTP server on the loopback address, serving tmp_path/www; stopped after the test."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass
    handler = functools.partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_from_loopback_records_the_sha256_of_what_arrived(tmp_path, data_root, isolated, capsys, server):
    """A RepDistiller-style file URL and an mdistiller-style archive, fetched from 127.0.0.1 into DIR's
    layouts; each result line records the URL and the sha256 of the downloaded bytes."""
    www, base = server
    _ckpt(www / "repo" / "resnet56_vanilla" / "ckpt_epoch_240.pth", "resnet56")
    _ckpt(tmp_path / "src" / "cifar_teachers" / "wrn_40_2_vanilla" / "ckpt_epoch_240.pth", "wrn_40_2")
    with tarfile.open(www / "cifar_teachers.tar", "w") as tar:
        tar.add(tmp_path / "src" / "cifar_teachers", arcname="cifar_teachers")
    peers = tmp_path / "peers"
    code, out, err = _run(capsys, peers, "--data-root", data_root, "--force",
                          "--download", f"{base}/repo/resnet56_vanilla/ckpt_epoch_240.pth",
                          "--download", f"{base}/cifar_teachers.tar")
    assert code == 0, err
    assert (peers / RD.format("resnet56")).is_file() and (peers / MD.format("wrn_40_2")).is_file()
    recs = {r["student"]: r for r in read_records(isolated / "results")}
    d = recs["resnet56"]["imported"]["downloaded"]
    assert d["url"].startswith(base) and d["sha256"] == _sha(www / "repo/resnet56_vanilla/ckpt_epoch_240.pth")
    assert d["sha256"] == recs["resnet56"]["checkpoint_sha256"]
    d = recs["wrn_40_2"]["imported"]["downloaded"]
    assert d["url"] == f"{base}/cifar_teachers.tar" and d["sha256"] == _sha(www / "cifar_teachers.tar")
    assert f"sha256 {_sha(www / 'cifar_teachers.tar')}" in out


def test_download_template_and_failures(tmp_path, server, capsys):
    from kd.errors import KDError
    www, base = server
    for m in ("resnet56", "vgg13"):
        (www / f"{m}_vanilla").mkdir()
        (www / f"{m}_vanilla" / "ckpt_epoch_240.pth").write_bytes(m.encode())
    got = download(base + "/{model}_vanilla/ckpt_epoch_240.pth", tmp_path / "d", ["vgg13", "resnet56"], log=lambda *a: None)
    assert {p.parent.name: v["sha256"] for p, v in got.items()} == {
        f"{m}_vanilla": hashlib.sha256(m.encode()).hexdigest() for m in ("resnet56", "vgg13")}
    assert (tmp_path / "d" / RD.format("vgg13")).read_bytes() == b"vgg13"
    with pytest.raises(KDError, match="404"):
        download(f"{base}/wrn_40_2_vanilla/ckpt_epoch_240.pth", tmp_path / "d", [], log=lambda *a: None)
    assert not (tmp_path / "d" / RD.format("wrn_40_2")).exists()     # no partial file left
    with pytest.raises(KDError, match="only http and https"):
        download("file:///etc/passwd.tar", tmp_path / "d", [])
    (www / "bad.tar").write_bytes(b"not a tar")
    with pytest.raises(KDError, match="not a readable tar archive"):
        download(f"{base}/bad.tar", tmp_path / "d", [], log=lambda *a: None)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:                  # a member escaping the folder
        info = tarfile.TarInfo("../escape.pth")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (www / "evil.tar").write_bytes(buf.getvalue())
    with pytest.raises(KDError, match="not a readable tar archive"):
        download(f"{base}/evil.tar", tmp_path / "d", [], log=lambda *a: None)
    assert not (tmp_path / "d" / "escape.pth").exists()
