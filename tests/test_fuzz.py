"""Standing fuzz test (issue 10, item 9): bad CLI arguments, bad YAML values and bad result lines,
from tables of cases, plus hypothesis-generated result lines. For each bad input through `kd`
(in-process, kd.cli.main): exactly one line on stderr (`kd: error: ...`), exit status 2, and no
file changed under the results and store folders."""
from __future__ import annotations

import functools
import json
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
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(env, capsys, args, match=None):
    """Run `kd args`; assert one stderr line `kd: error: ...`, exit 2, results and store unchanged."""
    before = _files(env / "results"), _files(env / "store")
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 2, f"exit {code}: {out.err}{out.out[-500:]}"
    assert out.err.startswith("kd: error: ") and out.err.count("\n") == 1, out.err
    if match:
        assert match in out.err, out.err
    assert (_files(env / "results"), _files(env / "store")) == before
    return out.err


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
    (["list", "--status", "bogus"], "invalid choice"),
    (["demo", "--seeds", "0"], "--seeds 0"), (["demo", "--seeds", "-3"], "--seeds -3"), (["demo", "--seeds", "x"], "invalid int"),
    (["import-teacher", "digits/baseline/tiny_t/r", "/nonexistent.pt", "--sha256", "00"], "no such file"),
    (["import-teacher", KD_CELL, "/nonexistent.pt", "--sha256", "00"], "not a teacher cell"),
    (["import-teacher", "digits/baseline/tiny_t/r", "/nonexistent.pt"], "--sha256"),
]
if not torch.cuda.is_available():
    CLI_CASES.append((["run", STUDENT, "--device", "cuda"], "no CUDA GPU"))


@pytest.mark.parametrize("args, match", CLI_CASES, ids=lambda c: " ".join(c) if isinstance(c, list) else None)
def test_bad_cli_arguments(env, capsys, args, match):
    refused(env, capsys, args, match)


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


@pytest.mark.parametrize("line, match", RESULT_CASES, ids=[repr(c[0][:30]) for c in RESULT_CASES])
def test_bad_result_lines(env, capsys, line, match):
    """--check refuses (exit 2); list/compare skip the line and report it in one warning line."""
    f = env / "results" / "digits.jsonl"
    f.write_bytes(GOOD_LINE.encode("latin-1") + line.encode("latin-1") + b"\n")
    refused(env, capsys, ["compare", "--check", "--table", "recorded_digits"], match)
    assert main(["compare", "--table", "recorded_digits"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("kd: warning: skipped bad result line") and out.err.count("\n") == 1, out.err
    assert re.search(r"recorded_digits\s+KD\s+.*\s95\s+1\s", out.out), out.out        # the good line still counts


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
