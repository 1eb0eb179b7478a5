"""`kd table` under a smoke recipe: interrupted once, restarted, every cell recorded exactly once;
`kd compare --check` on the committed results and on a perturbed copy."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import kd.engine.loop
from kd.engine import Env
from kd.records.results import read_records
from kd.commands.table import plan, run_table, table_by_name

REPO = Path(__file__).resolve().parent.parent


def test_table_plan_trains_teachers_first():
    cells, unregistered = plan(table_by_name("recorded_digits"), {}, [0])
    assert [c.id for c in cells][0] == "digits-sub400/baseline/tiny_t/digits" and not unregistered
    cells, unregistered = plan(table_by_name("crd2020_table1"), {}, [0])
    first_student = next(i for i, c in enumerate(cells) if c.teacher)
    assert all(c.label == "baseline" for c in cells[:first_student]) and not unregistered


def test_table_interrupted_then_restarted_records_each_cell_once(isolated, monkeypatch):
    real = kd.engine.loop.train
    calls = []

    def interrupt_second(members, stop_after_epochs=None):      # Ctrl-C in the middle of the 2nd run
        calls.append([m.id for m in members])
        return real(members, stop_after_epochs=1 if len(calls) == 2 else None)

    monkeypatch.setattr(kd.engine.loop, "train", interrupt_second)
    env = Env(progress=False, log=lambda *a: None)
    with pytest.raises(KeyboardInterrupt):      # one by one (a killed group: tests/test_group.py)
        run_table("recorded_digits", [0], {"epochs": 2}, env, group=False)
    assert len(read_records(isolated / "results")) == 1
    monkeypatch.setattr(kd.engine.loop, "train", real)
    run_table("recorded_digits", [0], {"epochs": 2}, env)
    run_table("recorded_digits", [0], {"epochs": 2}, env)   # nothing left to do
    ids = [r["cell_id"] for r in read_records(isolated / "results")]
    assert sorted(ids) == sorted({"digits-sub400/baseline/tiny_t/digits~epochs=2", "digits-sub400/baseline/tiny_s/digits~epochs=2",
                                  "digits-sub400/kd/tiny_s_from_tiny_t/digits~epochs=2"})


def _check(results):
    return subprocess.run([sys.executable, "-m", "kd.cli", "compare", "--check", "--table", "recorded_digits",
                           "--results", str(results)], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_compare_check_passes_on_committed_results_and_fails_when_perturbed(tmp_path):
    committed = REPO / "results" / "digits.jsonl"
    assert committed.is_file(), "results/digits.jsonl (the recorded demo runs) is committed"
    ok = _check(REPO / "results")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = [json.loads(l) for l in committed.read_text().splitlines()]
    for r in lines:
        if r["cell_id"] == "digits-sub400/kd/tiny_s_from_tiny_t/digits":
            r["top1_last"] -= 10.0                             # beyond the 3-point tolerance
    (tmp_path / "digits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    bad = _check(tmp_path)
    assert bad.returncode == 1 and "FAIL recorded_digits | KD" in bad.stderr


def _rows(*open_entries):
    from types import SimpleNamespace
    return [SimpleNamespace(verdict=v, settle=s, n=n) for v, s, n in open_entries]


def test_auto_seeds_runs_what_the_unsettled_entries_ask_for_then_stops(monkeypatch):
    """Each pass reads the verdicts again; every cell gets seeds 0..k-1, k the most an inconclusive entry
    needs (n + settle) within the cap; it stops when no entry asks for a seed not yet run."""
    import kd.commands.table as table
    import kd.commands.verdicts as verdicts
    from types import SimpleNamespace
    passes = iter([_rows(("inconclusive", 2, 2), ("inconclusive", 1, 2), ("reproduced", None, 2)),
                   _rows(("inconclusive", 9, 4)),                      # wants 13: capped at 6
                   _rows(("inconclusive", 3, 6))])                     # wants 9, cap 6 reached: stop
    monkeypatch.setattr(verdicts, "load", lambda results, only: SimpleNamespace(rows=next(passes)))
    ran, said = [], []
    monkeypatch.setattr(table, "run_table", lambda name, seeds, ov, env, group: ran.append(list(seeds)) or [])
    assert table.run_table_auto("recorded_digits", [0, 1], 6, {}, SimpleNamespace(results=None), log=said.append) == []
    assert ran == [[0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    assert "running seed(s) 2, 3 of every cell" in said[0] and "no seed left to run within --auto-seeds 6" in said[-1]
    assert table.seeds_wanted(_rows(("inconclusive", 1, 3)), 10) == 4 and table.seeds_wanted([], 10) == 0
    ran.clear()                                  # without --auto-seeds: the one pass, no verdict read (passes spent)
    assert table.run_table_auto("recorded_digits", [0], None, {}, SimpleNamespace(results=None)) == [] and ran == [[0]]


@pytest.mark.slow
def test_auto_seeds_settles_a_real_table(isolated, capsys):
    """The digits table at its own recipe from one seed: the pass after it runs the seeds its inconclusive
    entries ask for (at most 3 here), and the table ends with the same seeds for every cell."""
    from kd.cli import main
    assert main(["table", "recorded_digits", "--seed", "0", "--auto-seeds", "3", "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "auto seeds: " in out
    seeds = {}
    for r in read_records(isolated / "results"):
        if r["status"] == "ok" and r["cell_id"] != "digits-sub400/baseline/tiny_t/digits":
            seeds.setdefault(r["cell_id"], set()).add(r["seed"])
    assert len(seeds) == 2 and len({frozenset(s) for s in seeds.values()}) == 1     # paired: the same seeds
    assert 1 < len(next(iter(seeds.values()))) <= 3
