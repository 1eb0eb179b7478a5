"""`kd bench`: speed lines with provenance, never an accuracy; bad input is one line."""
from __future__ import annotations

import json

import pytest

from kd.cli import main
from kd.records.results import read_records

CELL = "digits-sub400/kd/tiny_s_from_tiny_t/digits"


def test_bench_writes_speed_lines_and_no_result(tmp_path, capsys):
    assert main(["bench", CELL, "--device", "cpu", "--steps", "2", "--warmup", "1", "--rounds", "2",
                 "--threads", "1", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ms/step" in out and "kd (eager, channels_last)" in out
    (line,) = [json.loads(x) for x in (tmp_path / "speed" / "bench.jsonl").read_text().splitlines()]
    assert line["kind"] == "speed" and line["cell_id"] == CELL and line["execution"]["mode"] == "eager"
    assert line["images_per_s"] > 0 and len(line["images_per_s_rounds"]) == 2 and line["threads"] == 1
    assert line["data"] == "digits-sub400" and line["num_train"] == 400 and line["versions"]["torch"] and "commit" in line["git"]
    assert read_records(tmp_path) == []                  # a timing is never taken for a result


@pytest.mark.parametrize("args,msg", [
    (["--repdistiller", "/nonexistent"], "is not a RepDistiller checkout"),
    (["--modes", "graph", "--device", "cpu"], "needs a CUDA device"),
])
def test_bench_bad_input_is_one_line(tmp_path, capsys, args, msg):
    assert main(["bench", CELL, "--steps", "1", "--warmup", "0", "--rounds", "1", "--results", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kd: error:") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "speed").exists()


def test_bench_group_times_both_ways_and_checks_identical_lines(tmp_path, capsys):
    assert main(["bench-group", "recorded_digits", "--epochs", "1", "--device", "cpu", "--threads", "1",
                 "--results", str(tmp_path)]) == 0
    (line,) = [json.loads(x) for x in (tmp_path / "speed" / "group.jsonl").read_text().splitlines()]
    assert line["kind"] == "group-speed" and len(line["cells"]) == 2 and line["identical_result_lines"] is True
    assert line["wall_s_one_by_one"] > 0 and line["wall_s_grouped"] > 0 and line["failed"] == []
    assert read_records(tmp_path) == []                  # the runs went to a temporary folder


def test_the_ratio_to_repdistiller_is_paired_by_round_with_a_t_interval():
    """Rounds interleave the contenders, so each round gives one ratio; the line carries them, their
    geometric mean and its 90 % t-interval (here against scipy's own t-interval on the log ratios)."""
    import math

    import numpy as np
    from scipy import stats

    from kd.commands.bench import _paired_ratio
    base, ours = [1.20, 1.31, 1.18, 1.25, 1.40], [1.00, 1.05, 1.01, 1.02, 1.20]
    got = _paired_ratio(base, ours)
    logs = np.log(np.array(base) / np.array(ours))
    lo, hi = stats.t.interval(0.90, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
    assert got["ratio_rounds"] == [round(b / o, 3) for b, o in zip(base, ours)]
    assert got["ratio_paired"] == round(math.exp(logs.mean()), 3)
    assert got["ratio_interval_90"] == pytest.approx([math.exp(lo), math.exp(hi)], abs=1e-3)
    assert _paired_ratio(None, ours) == {} and _paired_ratio(base[:1], ours[:1]) == {}     # nothing to pair
