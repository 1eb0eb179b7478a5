"""`kd doctor --quick`: the acceptance run's CPU form, as CI runs it; what it cannot run is one line each."""
from __future__ import annotations

import json

import pytest

from kd.cli import main
from kd.records.results import read_records


def _summary(tmp_path) -> dict:
    lines = (tmp_path / "speed" / "doctor.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def _items(line, check):
    return [i for i in line["items"] if i["check"] == check]


def test_doctor_quick_runs_every_cpu_check(tmp_path, capsys):
    """Every check of the CPU form runs and passes: compiled == eager (KD, AT, CRD+KD), a speed line,
    grouped == one by one, bf16 vs fp32, a real digits training inside its committed band; torchrun is
    skipped with its reason. Speed lines and the summary go under <results>/speed/, never a result line."""
    assert main(["doctor", "--quick", "--device", "cpu", "--budget-s", "3600", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "verdict" in out and "kd doctor: ok" in out
    line = _summary(tmp_path)
    assert line["kind"] == "doctor" and line["verdict"] == "ok" and line["quick"] is True
    status = {(i["check"], i["item"]): i["status"] for i in line["items"]}
    assert [status[("equivalence", f"{m}: eager vs compile")] for m in ("kd", "at", "crd+kd")] == ["ok"] * 3
    assert status[("speed", "digits-sub400/kd/tiny_s_from_tiny_t/digits")] == "ok"
    (g,) = [i for i in _items(line, "grouped") if i["status"] != "skipped"]
    assert g["status"] == "ok" and g["figures"]["identical_result_lines"] is True
    (b,) = _items(line, "bf16")
    assert b["status"] == "ok" and b["figures"]["first_loss_rel_diff"] <= 0.10 and b["figures"]["loss_bf16"] > 0
    (lr,) = _items(line, "learn")
    lo, hi = lr["figures"]["band"]
    assert lr["status"] == "ok" and lo <= lr["figures"]["top1_last"] <= hi and len(lr["figures"]["committed"]) >= 5
    (t,) = _items(line, "torchrun")
    assert t["status"] == "skipped" and "no CUDA device" in t["note"]
    assert (tmp_path / "speed" / "bench.jsonl").is_file() and (tmp_path / "speed" / "group.jsonl").is_file()
    assert read_records(tmp_path) == []


def test_a_budget_too_small_and_a_missing_checkout_are_one_line_each(tmp_path, capsys):
    assert main(["doctor", "--quick", "--device", "cpu", "--budget-s", "0.001", "--repdistiller", str(tmp_path / "no"),
                 "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = _summary(tmp_path)
    assert line["verdict"] == "ok" and line["skipped"] == len(line["items"]) >= 6
    assert sum("budget:" in i["note"] for i in line["items"]) >= 5
    assert "not a RepDistiller checkout" in out and out.count("skipped (budget:") >= 5


def test_a_failing_check_fails_the_command(tmp_path, capsys, monkeypatch):
    import kd.commands.doctor as doctor
    monkeypatch.setattr(doctor, "BF16_LOSS_RTOL", -1.0)             # no loss difference can pass
    assert main(["doctor", "--quick", "--device", "cpu", "--only", "bf16", "--results", str(tmp_path)]) == 1
    line = _summary(tmp_path)
    assert line["verdict"] == "FAIL" and [i["status"] for i in line["items"]] == ["FAIL"]
    assert "kd doctor: FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("args,msg", [
    (["--budget-s", "-5"], "--budget-s -5: must be"),
    (["--only", "speedy"], "--only speedy: valid checks are"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, msg):
    assert main(["doctor", "--quick", "--device", "cpu", "--results", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kd: error:") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "speed").exists()
