"""What a researcher meets in the first hour (issue: logs, lookups, installs, checks that mean
something): epoch logging, the demo's fixed threads and the gain check, quick checks visible in
`kd list` and reports, `kd find`, where results go, everyday commands that agree, listing without torch,
reports written for a reader who has only the repository."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kd.cli import main
from kd.errors import KDError
from kd.records.results import read_records

REPO = Path(__file__).resolve().parent.parent
KD_CELL = "digits-sub400/kd/tiny_s_from_tiny_t/digits"
BASE_CELL = "digits-sub400/baseline/tiny_s/digits"
TEACHER_CELL = "digits-sub400/baseline/tiny_t/digits"


def _main(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _line(cid, seed, top1=50.0, curve=None):
    p = cid.split("/")
    return {"schema": 1, "cell_id": cid, "recipe": p[3], "seed": seed, "status": "ok", "top1_last": top1,
            "top1_best": top1, "top5_last": 90.0, "top5_best": 90.0, "curve": curve or []}


def _write(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)


# --- 1. logging -----------------------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self):
        return True


def _feed(log, n=2):
    for i in range(n):
        log.epoch({"epoch": i + 1, "top1": 50.0 + i, "top5": 90.0, "train_loss": 1.5 - i / 10, "lr": 0.05},
                  None, 400 * (i + 1), 0.5 * (i + 1))
    log.close()


def test_plain_line_per_epoch_off_a_terminal_bar_on_one_and_tqdm_disable(tmp_path, monkeypatch):
    from kd.records.log import EpochLog
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    piped = io.StringIO()                                        # a file, nohup, a batch scheduler
    _feed(EpochLog("c/kd/s_from_t/r", 3, 2, 0, True, tmp_path / "a.csv", stream=piped))
    lines = piped.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in piped.getvalue()
    assert re.fullmatch(r"c/kd/s_from_t/r seed 3 epoch 2/2 loss 1\.4000 top1 51\.00 top5 90\.00 lr 0\.05 img/s 800",
                        lines[1]), lines[1]
    quiet = io.StringIO()                                        # --no-progress is not silent
    _feed(EpochLog("x", 0, 2, 0, False, None, stream=quiet))
    assert len(quiet.getvalue().splitlines()) == 2
    tty = _Tty()
    _feed(EpochLog("x", 0, 2, 0, True, None, stream=tty))
    assert "\r" in tty.getvalue() and "epoch 1/2" not in tty.getvalue()      # a redrawn bar
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tty = _Tty()
    _feed(EpochLog("x", 0, 2, 0, True, None, stream=tty))
    assert "\r" not in tty.getvalue() and len(tty.getvalue().splitlines()) == 2
    rows = (tmp_path / "a.csv").read_text().splitlines()
    assert rows[0] == "stage,epoch,train_loss,top1,top5,lr,images_per_s" and rows[2] == "main,2,1.4,51.0,90.0,0.05,800.0"
    log = EpochLog("x", 0, 1, 0, False, tmp_path / "b.csv", stream=io.StringIO())     # a decayed LR, as the float sum gives it
    log.epoch({"epoch": 1, "top1": 50.0, "top5": 90.0, "train_loss": 1.5, "lr": 0.05 * 0.1}, None, 400, 0.5)
    assert (tmp_path / "b.csv").read_text().splitlines()[1] == "main,1,1.5,50.0,90.0,0.005,800.0"


def test_a_run_logs_each_epoch_and_writes_its_csv_beside_the_result_line(isolated, capsys):
    from kd.catalog.cells import find_cell
    from kd.engine import run_cell
    run_cell(find_cell(TEACHER_CELL), 0, device="cpu", overrides={"epochs": 2, "subset": 100}, progress=False,
             log=lambda *a: None)
    err = capsys.readouterr().err
    assert [ln.split(" loss")[0] for ln in err.splitlines()] == [
        f"{TEACHER_CELL}~epochs=2,subset=100 seed 0 epoch {i}/2" for i in (1, 2)]
    (rec,) = read_records(isolated / "results")
    csv = isolated / "results" / "curves" / rec["cell_id"].replace("/", "__").replace("~", "@") / "seed0.csv"
    rows = csv.read_text().splitlines()[1:]
    assert [float(r.split(",")[3]) for r in rows] == [e["top1"] for e in rec["curve"]]


def test_tensorboard_missing_is_one_line_and_nothing_runs(isolated, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)          # the package is absent
    code, out, err = _main(capsys, "run", TEACHER_CELL, "--epochs", "1", "--tensorboard", isolated / "tb")
    assert code == 2 and err.count("\n") == 1 and "pip install 'kd-bench[tensorboard]'" in err
    assert not (isolated / "results").exists() and not (isolated / "tb").exists()


def test_tensorboard_event_files_when_installed(isolated, capsys):
    pytest.importorskip("tensorboard")
    from kd.records.log import EpochLog, configure
    configure(tensorboard=isolated / "tb")
    try:
        _feed(EpochLog("d/kd/s_from_t/r", 0, 2, 0, False, None, tensorboard=isolated / "tb", stream=io.StringIO()))
    finally:
        from kd.records.log import _CONFIG
        _CONFIG["tensorboard"] = None
    assert list((isolated / "tb" / "d__kd__s_from_t__r" / "seed0").glob("events.out.tfevents.*"))


_TERM_AFTER_FIRST_EPOCH = """
import os, signal, sys
import kd.engine.member as member
save_state = member.save_state
def save_then_terminate(*args, **kwargs):   # SIGTERM at a known point: the first epoch's state is saved
    save_state(*args, **kwargs)
    member.save_state = save_state
    os.kill(os.getpid(), signal.SIGTERM)
member.save_state = save_then_terminate
from kd.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_says_how_to_resume_and_the_same_command_resumes_exactly(tmp_path):
    """SIGTERM (`kill`, a scheduler's stop) ends `kd run` as Ctrl-C does: one line saying how to resume,
    exit status 143, no result line; the same command resumes after the saved epoch and ends with the
    checkpoint of a run never stopped. The signal comes at a known point, not raced against the run."""
    def kd(name, *code):
        args = ["run", TEACHER_CELL, "--epochs", "3", "--subset", "100", "--device", "cpu", "--no-progress",
                "--store", tmp_path / f"store_{name}", "--results", tmp_path / f"results_{name}"]
        return subprocess.run([sys.executable, *code, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                              timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    p = kd("stopped", "-c", _TERM_AFTER_FIRST_EPOCH)
    assert p.returncode == 143, p.stderr
    assert p.stderr.splitlines()[-1] == "kd: terminated (SIGTERM); run the same command again to resume"
    assert not read_records(tmp_path / "results_stopped")
    again = kd("stopped", "-m", "kd.cli")
    assert again.returncode == 0, again.stderr
    assert f"resuming {TEACHER_CELL}~epochs=3,subset=100 seed 0 after epoch 1 of 3" in again.stdout + again.stderr
    whole = kd("whole", "-m", "kd.cli")
    (resumed,), (never_stopped,) = read_records(tmp_path / "results_stopped"), read_records(tmp_path / "results_whole")
    assert whole.returncode == 0 and resumed["checkpoint_sha256"] == never_stopped["checkpoint_sha256"]
    assert resumed["curve"] == never_stopped["curve"]


# --- 2. the demo's numbers and the check that can see a regression --------------------------------

def test_demo_runs_with_its_fixed_thread_count_and_restores_it(monkeypatch, tmp_path):
    import torch
    import kd.commands.demo
    seen = []

    def fake_run(cell, seed, **kw):
        seen.append(torch.get_num_threads())
        return {"cell_id": cell.id, "top1_last": 90.0, "top1_best": 90.0, "wall_s": 0.1}

    monkeypatch.setattr(kd.commands.demo, "run_cell", fake_run)
    monkeypatch.setattr(kd.commands.demo, "_compare_and_report", lambda results: None)
    torch.set_num_threads(1)
    kd.commands.demo.demo(seeds=2, results=tmp_path, progress=False)
    assert seen == [kd.commands.demo.THREADS] * 5 and kd.commands.demo.THREADS == 2 and torch.get_num_threads() == 1
    committed = [json.loads(ln) for ln in (REPO / "results" / "digits.jsonl").read_text().splitlines()]
    newest = [r for r in committed if r["git"]["commit"] == committed[-1]["git"]["commit"]]
    assert len(newest) == 11 and {r["device"] for r in newest} == {PINNED}   # the recorded reference's threads and code


PINNED = "cpu (x86_64, 2 threads, AVX2; oneDNN AVX2, MKL AVX2)"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file() or " avx2" not in Path("/proc/cpuinfo").read_text(),
                    reason="needs an x86-64 CPU with AVX2 (Linux)")
def test_the_demo_pins_the_cpu_code_paths_and_lines_record_them(tmp_path):
    """The demo sets AVX2 code paths for PyTorch's kernels, oneDNN and MKL (kd.commands.demo.KERNELS)
    before torch computes: in a fresh process they take effect, silently, and a run's line records them."""
    code = ("import os, kd.commands.demo as demo; import torch; torch.set_num_threads(2); "
            "from kd.catalog.cells import find_cell; from kd.engine import run_cell\n"
            "with demo.pinned_kernels():\n"
            f"    r = run_cell(find_cell({TEACHER_CELL!r}), 0, device='cpu', overrides={{'epochs': 1, 'subset': 64}}, "
            f"store={str(tmp_path / 's')!r}, results_dir={str(tmp_path / 'r')!r}, progress=False, log=print)\n"
            "print(r['device']); print(os.environ.get('ATEN_CPU_CAPABILITY'))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-2] == PINNED and "not AVX2" not in p.stdout, p.stdout
    assert p.stdout.splitlines()[-1] == "None"             # restored after the demo: compile picks its own ISA


def _check(capsys, results, *tables):
    """`kd compare --check` in-process: (exit status, stdout, stderr)."""
    try:
        code = main(["compare", "--check", "--table", *tables, "--results", str(results)])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_fails_when_the_kd_gain_vanishes_inside_every_band(tmp_path, capsys):
    lines = [json.loads(ln) for ln in (REPO / "results" / "digits.jsonl").read_text().splitlines()]
    for cid, shift in ((BASE_CELL, 3.0), (KD_CELL, -3.0)):   # no value confidently off (3-point bands), KD's gain confidently gone
        for r in {r["seed"]: r for r in lines if r["cell_id"] == cid}.values():   # the lines compared (last per seed)
            r["top1_last"] += shift
    _write(tmp_path / "digits.jsonl", lines)
    code, out, err = _check(capsys, tmp_path, "recorded_digits")
    assert code == 1, out + err
    assert "below" not in out.split("\n\n")[0] and "above" not in out.split("\n\n")[0]   # the values alone pass
    import re
    fails = [ln for ln in err.splitlines() if ln.startswith("FAIL")]
    m = re.search(r"FAIL recorded_digits \| KD .*gain over the baseline row ours ([-+−]\d+\.\d\d) \[.*\] vs ([-+−]\d+\.\d\d)", err)
    assert len(fails) == 1 and m, err
    ours, published = (float(g.replace("−", "-")) for g in m.groups())
    assert ours == pytest.approx(published - 6.0, abs=0.02)


def test_recorded_tables_are_built_from_the_committed_lines_and_pass(capsys):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import record_reference as rr
    finally:
        sys.path.remove(str(REPO / "tools"))
    for name in ("digits", "cifar10_jpeg"):
        lines = [json.loads(ln) for ln in (REPO / "results" / f"{name}.jsonl").read_text().splitlines() if ln.strip()]
        assert rr.table_text(name, lines) == (REPO / "reference_tables" / f"recorded_{name}.yaml").read_text()
    code, out, err = _check(capsys, REPO / "results", "recorded_digits", "recorded_cifar10_jpeg")
    assert code == 0 and "6 judged entries (" in out and "and 4 gains" in out, out + err


def test_plot_never_draws_a_point_green_outside_its_band():
    from synthetic import E

    from kd.analysis.compare import compare
    from kd.analysis.report import COLOR, band, plot_png, plot_points
    cid = "cifar100/{}/resnet8x4_from_resnet32x4/std".format

    class T:
        id, title, baseline_row, rows, columns = "t", "t", None, [], []
        entries = [E("a", "c", 70.0, cid("a"), tolerance=0.3), E("b", "c", 70.0, cid("b"), tolerance=2.0),
                   E("s", "c", 70.0, cid("s"), tolerance=0.3, std=0.5)]
    recs = [_line(cid(k), s, v + 0.1 * s) for k, v in (("a", 71.0), ("b", 71.0), ("s", 70.9)) for s in (0, 1)]
    rows = compare([T], recs)
    assert [r.verdict for r in rows] == ["above", "reproduced", "above"]
    rows[0].verdict = "reproduced"                             # even a row that claims it
    for r, x, y, b, colour in plot_points(rows):
        assert b == band(r) and (colour == COLOR["reproduced"]) == (abs(y - x) <= b)
    png = base64.b64decode(plot_png(rows, "t"))
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 700 and height >= 700                       # larger than the old 500 x 500


# --- 3. quick checks visible ------------------------------------------------------------------------

def test_list_shows_runs_under_every_recipe_id(isolated, capsys):
    _write(isolated / "results" / "digits.jsonl",
           [_line(f"{KD_CELL}~epochs=1,subset=1000", 0), _line(f"{KD_CELL}~epochs=1,subset=1000", 1), _line(KD_CELL, 4)])
    code, out, _ = _main(capsys, "list", "--dataset", "digits")
    assert code == 0
    rows = [ln.replace("↳ ", "↳").split() for ln in out.splitlines()[2:-1]]
    i = [r[0] for r in rows].index(KD_CELL)
    assert rows[i] == [KD_CELL, "1", "4"] and rows[i + 1] == [f"↳{KD_CELL}~epochs=1,subset=1000", "2", "0,1"]


def test_report_of_a_quick_check_shows_its_numbers_not_as_the_protocol(isolated, capsys):
    _write(isolated / "results" / "digits.jsonl", [_line(f"{KD_CELL}~epochs=3", s, 80.0 + s) for s in (0, 1)])
    code, out, err = _main(capsys, "report", "--table", "recorded_digits")
    assert code == 0, err
    md = (isolated / "results" / "reports" / "recorded_digits.md").read_text()
    assert "quick check digits~epochs=3: 80.50 ± 0.71 (2), not the published protocol" in md
    assert f"`{KD_CELL}`" in md                                             # every row: its cell id


# --- 4. from a published number to its cell ---------------------------------------------------------

def test_find_maps_a_published_number_to_cell_and_command(capsys):
    code, out, _ = _main(capsys, "find", "75.46")
    assert code == 0
    row = next(ln for ln in out.splitlines() if "crd2020_table1" in ln)
    assert "CRD+KD" in row and "cifar100/crd+kd/resnet8x4_from_resnet32x4/crd" in row
    assert row.rstrip().endswith("kd run cifar100/crd+kd/resnet8x4_from_resnet32x4/crd")
    code, out, _ = _main(capsys, "find", "--table", "crd2020_table1", "--method", "crd+kd", "--pair", "resnet32x4:resnet8x4")
    assert code == 0 and out.count("crd2020_table1") == 1 and "1 entries" in out
    code, out, _ = _main(capsys, "find", "--method", "teacher", "--pair", "resnet32x4", "--table", "crd2020_table1")
    assert "cifar100/baseline/resnet32x4/crd" in out
    code, _, err = _main(capsys, "find", "--table", "nope")
    assert code == 2 and "valid tables: crd2020_table1" in err
    code, _, err = _main(capsys, "find", "12.345")
    assert code == 2 and "no reference entry matches" in err


def test_list_method_matches_combined_labels(capsys):
    code, out, _ = _main(capsys, "list", "--method", "crd+kd")
    cells = [ln.split()[0] for ln in out.splitlines()[2:-1]]
    assert code == 0 and cells and all(c.split("/")[1] in ("crd+kd", "ipot+crd+kd") for c in cells)
    assert "cifar100/crd+kd/resnet8x4_from_resnet32x4/crd" in cells


# --- 7. where results go --------------------------------------------------------------------------

def test_user_runs_go_to_an_ignored_folder_and_reading_sees_committed_first(tmp_path, monkeypatch):
    from kd.records.results import read_root, results_root
    monkeypatch.delenv("KD_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert results_root() == Path("results/local") and read_root() == Path("results")
    _write(tmp_path / "results" / "digits.jsonl", [_line(KD_CELL, 0, 1.0)])
    _write(tmp_path / "results" / "zoo.jsonl", [_line(BASE_CELL, 0, 2.0)])     # sorts after 'local'
    _write(tmp_path / "results" / "local" / "digits.jsonl", [_line(KD_CELL, 0, 3.0)])
    assert [r["top1_last"] for r in read_records()] == [1.0, 2.0, 3.0]          # a user's rerun wins
    if shutil.which("git") and (REPO / ".git").exists():
        p = subprocess.run(["git", "check-ignore", "-q", "results/local/digits.jsonl"], cwd=REPO)
        assert p.returncode == 0, "results/local/ must be git-ignored"


# --- 8. everyday commands ---------------------------------------------------------------------------

def test_list_filters_that_match_nothing_say_so(capsys):
    code, _, err = _main(capsys, "list", "--dataset", "cifar1000")
    assert code == 2 and "no cell matches --dataset cifar1000" in err and "cifar100," in err and err.count("\n") == 1
    code, _, err = _main(capsys, "list", "--method", "foo")
    assert code == 2 and "no cell matches --method foo" in err and "crd+kd" in err


def test_list_status_says_which_done_teachers_have_no_stored_checkpoint(tmp_path, capsys):
    """A teacher's result line without its checkpoint in the store: `kd run` of a student trains the teacher
    again, so `kd list --status` does not call it plainly done."""
    from kd.records.store import checkpoint_path
    _write(tmp_path / "r" / "digits.jsonl", [_line(TEACHER_CELL, 0), _line(BASE_CELL, 0)])
    args = ["list", "--status", "--table", "recorded_digits", "--results", tmp_path / "r", "--store", tmp_path / "s"]
    code, out, _ = _main(capsys, *args)
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("digits-")}
    assert code == 0 and rows[TEACHER_CELL].endswith(" 0:done,no-checkpoint") and rows[BASE_CELL].endswith(" 0:done")
    assert f"not in the store {tmp_path / 's'}/), so a student's `kd run` trains this teacher again" in out
    checkpoint_path(TEACHER_CELL, 0, tmp_path / "s").parent.mkdir(parents=True)
    checkpoint_path(TEACHER_CELL, 0, tmp_path / "s").write_bytes(b"stored")
    code, out, _ = _main(capsys, *args)
    assert code == 0 and "no-checkpoint" not in out and f"{TEACHER_CELL} " in out


def test_list_footer_speaks_of_committed_lines_only_where_there_are(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KD_RESULTS", raising=False)
    monkeypatch.chdir(REPO)                                       # a checkout: committed lines under results/
    assert "(committed, and yours in results/local/)" in _main(capsys, "list", "--dataset", "digits")[1]
    monkeypatch.chdir(tmp_path)                                   # elsewhere (an installed wheel): none
    code, out, _ = _main(capsys, "list", "--dataset", "digits")
    assert code == 0 and "runs counted from the result lines under results/;" in out and "committed" not in out


def test_find_and_compare_print_published_numbers_as_printed(tmp_path, capsys):
    """crd2020_table1 prints 72.50 (resnet8x4 baseline): shown as 72.50, not 72.5."""
    code, out, _ = _main(capsys, "find", "72.50", "--table", "crd2020_table1")
    assert code == 0 and any(ln.startswith("72.50 ") and "cifar100/baseline/resnet8x4/crd" in ln for ln in out.splitlines())
    _write(tmp_path / "cifar100.jsonl", [_line("cifar100/baseline/resnet8x4/crd", 0, 72.0)])
    code, out, _ = _main(capsys, "compare", "--table", "crd2020_table1", "--results", tmp_path)
    (row,) = [ln for ln in out.splitlines() if " Student " in ln and "resnet32x4 → resnet8x4" in ln]
    assert code == 0 and " 72.50 " in row and " 72.5 " not in row


def test_table_ends_with_its_verdict_counts(isolated, capsys):
    code, out, _ = _main(capsys, "table", "recorded_digits", "--epochs", "1", "--device", "cpu", "--no-progress")
    last = out.splitlines()[-1]
    assert code == 0 and last.startswith("recorded_digits: ") and "(`kd compare --table recorded_digits`" in last
    counts = [int(n) for n in re.findall(r"(\d+) [a-z]", last.split(" (")[0])]
    assert sum(counts) == 3, last                                   # the table's three entries, each counted once


def test_run_skips_a_recorded_seed_unless_forced(isolated, capsys, monkeypatch):
    import kd.engine
    calls = []
    monkeypatch.setattr(kd.engine, "run", lambda specs, env, **kw: ([calls.append(s.seed) or {
        "cell_id": s.id, "seed": s.seed, "top1_last": 1.0, "top1_best": 1.0, "best_epoch": 1, "images_per_s": 1,
        "device": "cpu"} for s in specs], []))
    _write(isolated / "results" / "digits.jsonl", [_line(f"{BASE_CELL}~epochs=1", 0)])
    code, out, _ = _main(capsys, "run", BASE_CELL, "--epochs", "1", "--seed", "0", "1")
    assert code == 0 and calls == [1] and "seed 0: already recorded" in out and "--force" in out
    code, out, _ = _main(capsys, "run", BASE_CELL, "--epochs", "1", "--seed", "0", "--force")
    assert code == 0 and calls == [1, 0]
    code, out, _ = _main(capsys, "run", BASE_CELL, "--seed", "0")          # the full recipe is another id
    assert calls == [1, 0, 0]


def test_import_teacher_evaluates_records_and_refuses_to_replace(isolated, capsys):
    import torch

    from kd.records.store import sha256_file
    from kd.engine.teacher import build_model
    torch.manual_seed(0)
    f = isolated / "teacher.pt"
    torch.save(build_model("tiny_t", 10).state_dict(), f)
    code, out, err = _main(capsys, "import-teacher", TEACHER_CELL, f, "--sha256", sha256_file(f))
    assert code == 0, err
    (rec,) = read_records(isolated / "results")
    assert rec["cell_id"] == TEACHER_CELL and rec["imported"]["sha256"] == sha256_file(f) and rec["status"] == "ok"
    assert 0 <= rec["top1_last"] <= 100 and rec["top1_last"] == rec["top1_best"] and f"{rec['top1_last']:.2f}" in out
    torch.save(build_model("tiny_t", 10).state_dict(), f)                     # another checkpoint
    code, _, err = _main(capsys, "import-teacher", TEACHER_CELL, f, "--sha256", sha256_file(f))
    assert code == 2 and "already stored" in err and "--force" in err and len(read_records(isolated / "results")) == 1
    code, _, err = _main(capsys, "import-teacher", TEACHER_CELL, f, "--sha256", sha256_file(f), "--force")
    assert code == 0 and len(read_records(isolated / "results")) == 2


# --- 9. listing without torch ----------------------------------------------------------------------

def test_list_imports_no_torch():
    """`kd list` reads names from the registrations' source (kd.catalog.names), never by importing torch:
    what keeps it quick. How quick is a benchmark's business, not a test's (no clock here)."""
    code = ("import sys; from kd.cli import main; main(['list']); "
            "assert 'torch' not in sys.modules, 'kd list imported torch'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr
    n = int(re.search(r"^(\d+) cells", p.stdout, re.M).group(1))
    assert n >= 600


def test_static_names_equal_the_registries():
    import kd.data  # noqa: F401
    import kd.methods  # noqa: F401
    import kd.models  # noqa: F401
    from kd.catalog import names
    from kd.registry import DATASETS, METHODS, MODELS
    assert names.METHODS == set(METHODS) and names.MODELS == set(MODELS) and names.DATASETS == set(DATASETS)
    with pytest.raises(KDError, match="unknown method 'nope'; valid methods: ab, at"):
        names.check("method", "nope")


# --- 10. reports for a reader who has only the repository -------------------------------------------

INTERNAL = re.compile(r"shared/|protocols\.md|seed_file|\b[Ss]eeds? \d{3}\b|\d{3}_[0-9a-f]{16}\.txt|/work/")


def test_reports_and_reference_readme_carry_no_development_tree_notes(tmp_path):
    from kd.analysis.compare import compare
    from kd.catalog.paths import REFERENCE_TABLES
    from kd.catalog.reftables import load_all
    from kd.analysis.report import write_reports
    tables = load_all(REFERENCE_TABLES)
    for p in write_reports(tables, compare(tables, []), tmp_path):
        if p.suffix in (".md", ".html"):
            assert not INTERNAL.search(p.read_text()), (p.name, INTERNAL.search(p.read_text()).group(0))
    readme = (REFERENCE_TABLES / "README.md").read_text()
    assert not INTERNAL.search(readme), INTERNAL.search(readme).group(0)


def test_report_draws_training_curves_per_cell(tmp_path):
    from kd.analysis.compare import compare
    from kd.catalog.paths import REFERENCE_TABLES
    from kd.catalog.reftables import load_all
    from kd.analysis.report import write_reports
    tables = [t for t in load_all(REFERENCE_TABLES) if t.id == "recorded_digits"]
    curve = [{"epoch": e, "top1": 50.0 + e, "top5": 90.0, "train_loss": 2.0 / e, "lr": 0.05} for e in (1, 2, 3)]
    recs = [_line(KD_CELL, s, 53.0, curve) for s in (0, 1)] + [_line(BASE_CELL, 0, 53.0, curve)]
    paths = write_reports(tables, compare(tables, recs), tmp_path, records=recs)
    pngs = sorted(p.name for p in paths if p.suffix == ".png")
    assert pngs == ["000.png", "001.png", "recorded_digits.png"]                 # curves, then the plot
    md = (tmp_path / "recorded_digits.md").read_text()
    assert f"### `{BASE_CELL}`" in md and "](curves/recorded_digits/000.png)" in md
    page = (tmp_path / "recorded_digits.html").read_text()
    assert page.count('alt="training curves of') == 2
