"""Grouped runs (kd/engine/grouping.py) give exactly the result lines of the same runs one by one: curves,
last and best accuracy, checkpoint sha256; a failing member is recorded failed and the others go
on; a group killed at an epoch's end resumes every member to the same lines."""
from __future__ import annotations

import pytest

from kd.catalog.cells import Cell
from kd.catalog.spec import RunSpec
from kd.engine import Env, run, run_cell
from kd.engine.grouping import partition
from kd.engine.member import Member
from kd.records.results import read_records


def run_grouped(cells_seeds, overrides, *, data_root, store, results_dir, device, progress, log):
    """Several (cell, seed) runs through the one entry, grouped; the records of those runs (not of the
    teacher trained first) and the errors."""
    specs = [RunSpec.of(c, s, overrides) for c, s in cells_seeds]
    recs, errors = run(specs, Env(data_root, store, results_dir, device, progress=progress, log=log))
    return [r for r in recs if (r["cell_id"], r["seed"]) in {s.key for s in specs}], errors

OV = {"epochs": 2, "batch_size": 32}
SAME = ("curve", "top1_last", "top1_best", "top5_last", "best_epoch", "checkpoint_sha256", "status")


def cells():
    """A column: baseline, KD, CRD and CRD+KD (two members drawing negatives from the global generator:
    interleaved draws would change both), AT (features)."""
    c = lambda label, terms, ce=1.0, teacher="tiny_t": Cell("cifar100", label, "tiny_s", teacher, "crd",  # noqa: E731
                                                          ce_weight=ce, terms=terms)
    return [c("baseline", (), teacher=None),
            c("kd", ({"name": "kd", "weight": 0.9, "T": 4},), ce=0.1),
            c("crd", ({"name": "crd", "weight": 0.8, "nce_k": 16},)),
            c("crd+kd", ({"name": "crd", "weight": 0.8, "nce_k": 16}, {"name": "kd", "weight": 1.0})),
            c("at", ({"name": "at", "weight": 1000.0},))]


def lines(root):
    return {(r["cell_id"], r["seed"]): r for r in read_records(root) if "tiny_s" in r["cell_id"]}


def quiet(log=None):
    return dict(device="cpu", progress=False, log=log or (lambda *a: None))


@pytest.fixture()
def one_by_one(data_root, tmp_path):
    for cell in cells():
        run_cell(cell, 0, overrides=OV, data_root=data_root, store=tmp_path / "s1", results_dir=tmp_path / "r1", **quiet())
    return lines(tmp_path / "r1")


def test_grouped_equals_one_by_one_bit_for_bit(data_root, tmp_path, one_by_one):
    said = []
    recs, errors = run_grouped([(c, 0) for c in cells()], OV, data_root=data_root, store=tmp_path / "s2",
                               results_dir=tmp_path / "r2", **quiet(said.append))
    assert errors == [] and len(recs) == len(cells())
    grouped = lines(tmp_path / "r2")
    assert grouped.keys() == one_by_one.keys()
    for k, rec in grouped.items():
        assert {f: rec[f] for f in SAME} == {f: one_by_one[k][f] for f in SAME}, k
        assert rec["group"]["size"] == len(cells()) and k[0] in rec["group"]["members"]
    assert any(f"training {len(cells())} runs together" in s for s in said)


def test_a_failing_member_is_recorded_and_the_others_go_on(data_root, tmp_path, one_by_one):
    bad = Cell("cifar100", "kd", "tiny_s", "tiny_t", "crd", ce_weight=1e38, terms=({"name": "kd", "weight": 1e38},))
    members = [(c, 0) for c in cells()[1:4]] + [(bad, 0)]
    import dataclasses
    members[-1] = (dataclasses.replace(bad, label="kd+kd"), 0)          # another id, same column
    recs, errors = run_grouped(members, OV, data_root=data_root, store=tmp_path / "s2", results_dir=tmp_path / "r2",
                               **quiet())
    assert len(recs) == 3 and len(errors) == 1 and "non-finite loss" in errors[0]
    got = lines(tmp_path / "r2")
    failed = [r for r in got.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["cell_id"].startswith("cifar100/kd+kd/")
    for k, rec in got.items():
        if rec["status"] == "ok":
            assert {f: rec[f] for f in SAME} == {f: one_by_one[k][f] for f in SAME}, k


@pytest.mark.parametrize("kill_after", [5, 7], ids=["all-members-saved", "members-at-different-epochs"])
def test_a_killed_group_resumes_every_member(data_root, tmp_path, one_by_one, monkeypatch, kill_after):
    """Killed after the 5th (last) member's first epoch (all saved epoch 1) or after the 2nd member's second
    epoch (members at different epochs: each resumes alone); the rerun's lines equal one by one."""
    calls = {"n": 0}
    real = Member.end_epoch

    def end_epoch(self, *a, **k):
        real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == kill_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(Member, "end_epoch", end_epoch)
    kw = dict(data_root=data_root, store=tmp_path / "s2", results_dir=tmp_path / "r2", **quiet())
    with pytest.raises(KeyboardInterrupt):
        run_grouped([(c, 0) for c in cells()], OV, **kw)
    monkeypatch.setattr(Member, "end_epoch", real)
    run_grouped([(c, 0) for c in cells()], OV, **kw)
    got = lines(tmp_path / "r2")
    assert got.keys() == one_by_one.keys()
    for k, rec in got.items():
        assert {f: rec[f] for f in SAME} == {f: one_by_one[k][f] for f in SAME}, k


def test_partition_keeps_stage_runs_alone_and_puts_the_baseline_in_its_column(data_root, tmp_path):
    import contextlib
    from kd.engine import build
    fitnet = Cell("cifar100", "fitnet", "tiny_s", "tiny_t", "crd", terms=({"name": "fitnet", "weight": 100.0,
                                                                          "hint_epochs": 1},))
    specs = [RunSpec.of(c, 0, OV) for c in cells() + [fitnet]]
    env = Env(data_root, tmp_path / "s", tmp_path / "r", "cpu", progress=False, log=lambda *a: None)
    run(build.missing_teachers(specs, env.resolved(__import__("torch").device("cpu"))), env)
    with contextlib.ExitStack() as locks:
        members = build.members(specs, env.resolved(__import__("torch").device("cpu")), locks)
    groups = sorted(partition(members), key=len)
    assert [len(g) for g in groups] == [1, len(cells())] and groups[0][0].spec.cell is fitnet


def test_kd_and_ofd_grouped_each_equal_alone_with_their_own_teacher_mode(data_root, tmp_path):
    """OFD runs its teacher's BatchNorm on batch statistics, KD on running statistics: grouped, each keeps
    its own mode (a teacher module per mode, frozen once) and its lines equal the run alone."""
    kd_cell = cells()[1]
    ofd = Cell("cifar100", "ofd", "tiny_s", "tiny_t", "crd", terms=({"name": "ofd", "weight": 1e-3},))
    kw = dict(data_root=data_root, **quiet())
    for c in (kd_cell, ofd):
        run_cell(c, 0, overrides=OV, store=tmp_path / "s1", results_dir=tmp_path / "r1", **kw)
    recs, errors = run_grouped([(kd_cell, 0), (ofd, 0)], OV, store=tmp_path / "s2", results_dir=tmp_path / "r2",
                               data_root=data_root, **quiet())
    assert not errors
    alone, grouped = lines(tmp_path / "r1"), lines(tmp_path / "r2")
    assert grouped.keys() == alone.keys() and len(grouped) == 2
    for k, rec in grouped.items():
        assert {f: rec[f] for f in SAME} == {f: alone[k][f] for f in SAME}, k
    assert {r["label"]: r["teacher_mode"] for r in grouped.values()} == {"kd": "eval", "ofd": "train"}


@pytest.mark.parametrize("flag", [[], ["--no-group"]], ids=["grouped", "no-group"])
def test_table_groups_by_default_and_no_group_turns_it_off(tmp_path, flag, capsys):
    from kd.cli import main
    assert main(["table", "recorded_digits", "--epochs", "1", "--device", "cpu", "--no-progress", *flag,
                 "--results", str(tmp_path / "r"), "--store", str(tmp_path / "s"), "--no-channels-last"]) == 0
    recs = {r["cell_id"]: r for r in read_records(tmp_path / "r")}
    student = [r for cid, r in recs.items() if "tiny_s" in cid]
    assert len(student) == 2 and all(r["status"] == "ok" for r in student)
    assert all((r["group"] or {}).get("size") == (None if flag else 2) for r in student)


def test_kd_run_with_several_cells_groups_them(tmp_path):
    from kd.cli import main
    cells = ["digits-sub400/kd/tiny_s_from_tiny_t/digits", "digits-sub400/baseline/tiny_s/digits"]
    assert main(["run", *cells, "--epochs", "1", "--device", "cpu", "--no-progress", "--results", str(tmp_path / "r"),
                 "--store", str(tmp_path / "s")]) == 0
    recs = [r for r in read_records(tmp_path / "r") if "tiny_s" in r["cell_id"]]
    assert len(recs) == 2 and all(r["group"]["size"] == 2 for r in recs)
