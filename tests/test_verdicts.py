"""Verdicts a researcher can trust: the equivalence rule against scipy's tests, one seed never
"reproduced", paired gains and their draws (seeded, against the t-interval), McNemar on stored
predictions, proxy tables, the seeds planner against the closed-form power calculation, and the
per-example predictions a run stores (read back, equal to its recorded top-1)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st
from synthetic import E, T

from kd.analysis import stats
from kd.analysis.compare import check, compare, rankings, verdict
from kd.analysis.plan import cell_seeds, hours, needs
from kd.cli import main
from kd.records.predictions import Predictions, read, write_run

REPO = Path(__file__).resolve().parent.parent
CID = "cifar100/{}/resnet8x4_from_resnet32x4/std".format
DIGITS_KD = "digits-sub400/kd/tiny_s_from_tiny_t/digits"



def rec(label, seed, top1, num_test=None):
    r = dict(cell_id=CID(label), seed=seed, status="ok", recipe="std", top1_last=top1, top1_best=top1,
             top5_last=90.0, top5_best=90.0)
    if num_test:
        r["config"] = {"num_test": num_test}
    return r


def main_out(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# --- the verdict rule, scipy as the oracle ---------------------------------------------------------

CASES = [  # ours per seed, published, published std, runs, tolerance, higher is better
    ([72.0, 72.4, 71.8, 72.2], 72.5, 0.3, 5, 1.0, True),      # close, tight: reproduced
    ([72.0, 74.0, 70.0], 72.5, None, None, 1.0, True),        # close, wide: inconclusive
    ([70.1, 70.3, 69.9, 70.2, 70.0], 72.5, 0.2, 5, 1.0, True),   # 2.4 lower, tight: below
    ([70.1, 70.3, 69.9], 72.5, 0.2, 5, 2.0, True),            # 2.4 lower, the interval crosses -2: inconclusive
    ([70.1, 70.3, 69.9, 70.2], 27.0, 0.3, 5, 1.0, False),     # error table: our error 29.9 > 27: below
    ([74.1, 74.3, 74.2], 28.0, 0.3, 5, 1.0, False),           # error 25.8 < 28 - 1: above
]


def oracle(values, published, pstd, runs, tol, hib) -> str:
    """TOST and the two minimum-effect tests, each one-sided at 5 %, with scipy's Welch t-test (or the
    one-sample t-test where the published value has no std)."""
    ours = np.asarray(values) if hib else 100 - np.asarray(values)
    m, s, n = ours.mean(), ours.std(ddof=1), len(ours)

    def p(shift, alternative):
        if pstd:
            return st.ttest_ind_from_stats(m - shift, s, n, published, pstd, runs, equal_var=False,
                                           alternative=alternative).pvalue
        return st.ttest_1samp(ours - shift, published, alternative=alternative).pvalue
    if p(-tol, "greater") < 0.05 and p(tol, "less") < 0.05:
        return "reproduced"
    if p(-tol, "less") < 0.05:
        return "below" if hib else "above"
    if p(tol, "greater") < 0.05:
        return "above" if hib else "below"
    return "inconclusive"


@pytest.mark.parametrize("values,published,pstd,runs,tol,hib", CASES)
def test_verdict_equals_scipys_tost_on_hand_computed_cases(values, published, pstd, runs, tol, hib):
    e = E("m", "A", published, CID("m"), std=pstd, runs=runs, tolerance=tol, higher_is_better=hib)
    (r,) = compare([T([e])], [rec("m", i, v) for i, v in enumerate(values)])
    assert r.verdict == oracle(values, published, pstd, runs, tol, hib)
    ours = np.mean(values) if hib else 100 - np.mean(values)
    s2, n = np.var(values, ddof=1) / len(values), len(values)          # Welch by hand
    p2 = pstd ** 2 / runs if pstd else 0.0
    df = (s2 + p2) ** 2 / (s2 ** 2 / (n - 1) + (p2 ** 2 / (runs - 1) if pstd else 0))
    half = st.t.ppf(0.95, df) * math.sqrt(s2 + p2)
    assert r.ci == pytest.approx((ours - published - half, ours - published + half))


def test_the_cases_cover_every_verdict():
    assert {oracle(*c) for c in CASES} == {"reproduced", "inconclusive", "below", "above"}


def test_one_seed_is_never_reproduced_and_uses_a_stated_spread():
    (r,) = compare([T([E("m", "A", 72.0, CID("m"), tolerance=5.0)])], [rec("m", 0, 72.0, num_test=10000)])
    assert r.verdict == "inconclusive" and "never 'reproduced'" in r.why and "binomial" in r.spread
    half = st.norm.ppf(0.95) * 100 * math.sqrt(0.72 * 0.28 / 10000)       # sqrt(p(1-p)/N) on the test set
    assert r.ci == pytest.approx((-half, half))
    (far,) = compare([T([E("m", "A", 80.0, CID("m"))])], [rec("m", 0, 72.0, num_test=10000)])
    assert far.verdict == "below"
    (pub,) = compare([T([E("m", "A", 72.0, CID("m"), std=0.3, runs=5)])], [rec("m", 0, 72.1)])
    assert pub.verdict == "inconclusive" and pub.spread.startswith("one seed: the published std")


def test_no_spread_at_all_is_inconclusive_never_a_crash(tmp_path):
    from kd.analysis.report import write_reports
    t = T([E("a", "A", 72.0, CID("a")), E("b", "A", 73.0, CID("b"))], baseline_row="a")
    rows = compare([t], [rec("a", 0, 72.0), rec("b", 0, 74.0)])       # one seed each, no std, no test size
    assert [r.verdict for r in rows] == ["inconclusive", "inconclusive"] and rows[0].ci is None
    assert rows[1].gain_sign == "inconclusive" and rows[1].gain_ci is None and rows[1].gain_verdict == "inconclusive"
    assert write_reports([t], rows, tmp_path) and "no interval" in (tmp_path / "t.md").read_text()


def test_seeds_to_settle_is_the_fewest_that_settle_it():
    recs = [rec("m", i, v) for i, v in enumerate([71.8, 72.3, 70.6])]
    r = compare([T([E("m", "A", 72.0, CID("m"), std=0.2, runs=5, tolerance=1.0)])], recs)[0]
    assert r.verdict == "inconclusive" and r.settle
    n, sd = r.n + r.settle, r.ours_std
    args = dict(ours_std=sd, runs=5)
    assert verdict(r.delta, r.tolerance, 0.2, n=n, **args) != "inconclusive"
    assert verdict(r.delta, r.tolerance, 0.2, n=n - 1, **args) == "inconclusive"
    tight = compare([T([E("m", "A", 72.0, CID("m"), std=0.2, runs=5, tolerance=0.5)])], recs)[0]
    assert tight.verdict == "inconclusive" and tight.settle is None   # the published mean's own error is too wide


# --- paired gains, draws, McNemar -----------------------------------------------------------------

def _gain_rows(correct=None):
    t = T([E("base", "A", 70.0, CID("base")), E("kd", "A", 72.0, CID("kd"))], baseline_row="base")
    base, kd = [70.0, 71.0, 69.5, 70.4], [71.9, 72.5, 71.0, 72.6]
    recs = [rec("base", i, v) for i, v in enumerate(base)] + [rec("kd", i, v) for i, v in enumerate(kd)]
    return compare([t], recs, correct or {}), np.subtract(kd, base)


def test_gain_interval_without_predictions_is_the_paired_t_interval():
    rows, g = _gain_rows()
    r = rows[1]
    lo, hi = st.t.interval(0.90, len(g) - 1, loc=g.mean(), scale=st.sem(g))
    assert r.gain_ci == pytest.approx((lo, hi), abs=0.01 * (hi - lo))            # 4,000 stratified draws
    assert r.gain_beats == pytest.approx(st.t.cdf(g.mean() / st.sem(g), len(g) - 1), abs=0.01)
    assert "seeds alone" in r.gain_note and r.gain_p is None and r.gain_sign == "agrees"


def test_draws_are_seeded_so_reports_repeat():
    first, second = _gain_rows()[0], _gain_rows()[0]
    assert first[1].gain_ci == second[1].gain_ci and first[1].gain_beats == second[1].gain_beats
    assert rankings(first) == rankings(second)


def _predictions(n=2000, seeds=4, seed=0):
    """Per-seed stored predictions of the two cells: kd right where base is, and on extra examples."""
    gen = np.random.default_rng(seed)
    labels = gen.integers(0, 10, n)
    out = {}
    for s in range(seeds):
        base_ok = gen.random(n) < 0.70
        kd_ok = base_ok | (gen.random(n) < 0.06)
        kd_ok &= gen.random(n) > 0.01
        wrong = (labels + 1) % 10
        out[(CID("base"), s)] = Predictions(labels, np.where(base_ok, labels, wrong), np.where(base_ok, labels, wrong))
        out[(CID("kd"), s)] = Predictions(labels, np.where(kd_ok, labels, wrong), np.where(kd_ok, labels, wrong))
    return out


def test_stored_predictions_add_the_test_set_level_and_mcnemar():
    preds = _predictions()
    with_p, g = _gain_rows(preds)
    without, _ = _gain_rows()
    r, r0 = with_p[1], without[1]
    assert r.gain_ci[0] < r0.gain_ci[0] and r.gain_ci[1] > r0.gain_ci[1] and not r.gain_note
    a = np.array([preds[(CID("kd"), s)].correct("last") for s in range(4)])
    b = np.array([preds[(CID("base"), s)].correct("last") for s in range(4)])
    d = (a - b).sum(axis=0)
    nb, nc = int((d > 0).sum()), int((d < 0).sum())
    assert r.gain_p == pytest.approx(st.binomtest(nb, nb + nc, 0.5).pvalue)


def test_mcnemar_on_one_seed_is_the_exact_test_and_majority_over_seeds():
    a = np.array([1, 1, 1, 0, 1, 0, 1, 1], float)
    b = np.array([0, 0, 1, 0, 1, 1, 0, 0], float)
    assert stats.mcnemar(a, b) == (4, 1, pytest.approx(st.binomtest(4, 5, 0.5).pvalue))
    # two seeds: an example counts for the model right on more of them (A 2-0, B 1-0, B 1-0; then A 2-1, B 2-0)
    assert stats.mcnemar(np.array([[1, 0, 1], [1, 1, 0]]), np.array([[0, 1, 1], [0, 1, 1]]))[:2] == (1, 2)
    assert stats.mcnemar(np.array([[1, 0], [1, 0]]), np.array([[0, 1], [1, 1]]))[:2] == (1, 1)


def test_spearman_interval_contains_rho_and_is_seeded():
    t = T([E(k, "A", 70.0 + i, CID(k), std=0.2, runs=5) for i, k in enumerate("abcd")])
    recs = [rec(k, s, 60.0 + i + 0.3 * s) for i, k in enumerate("abcd") for s in range(3)]
    (k,) = rankings(compare([t], recs))
    assert k.rho == pytest.approx(1.0) and k.rho_ci[0] <= k.rho <= k.rho_ci[1] and k.rho_ci[0] > 0
    assert rankings(compare([t], recs)) == [k]


# --- proxy tables ----------------------------------------------------------------------------------

def _proxy(values):
    t = T([E("base", "A", 87.6, CID("base"), std=0.25, runs=5), E("up", "A", 88.8, CID("up"), std=0.16, runs=5),
           E("down", "A", 86.1, CID("down"), std=0.3, runs=5)], baseline_row="base", proxy="other data")
    return compare([t], [rec(k, s, v + 0.2 * s) for k, v in values.items() for s in range(3)])


def test_a_proxy_table_is_shown_never_judged_and_fails_only_on_a_confident_opposite_sign():
    rows = _proxy({"base": 50.0, "up": 55.0, "down": 45.0})       # 35 points off, signs agree
    assert [r.verdict for r in rows] == ["proxy"] * 3 and [r.gain_verdict for r in rows] == [None] * 3
    assert [r.gain_sign for r in rows[1:]] == ["agrees", "agrees"]
    assert check(rows) == [] and check(rows, proxies=True) == []
    flipped = _proxy({"base": 50.0, "up": 45.0, "down": 55.0})
    assert check(flipped) == []
    assert [r.row for r in check(flipped, proxies=True)] == ["up", "down"]


def test_compare_check_passes_on_the_committed_results_and_proxies_flag_the_jpeg_column(capsys):
    code, out, err = main_out(capsys, "compare", "--check", "--results", str(REPO / "results"))
    assert code == 0 and "FAIL" not in err and "check passed" in out, err
    code, out, err = main_out(capsys, "compare", "--check", "--proxies", "--table", "sarfraz2020_table3_jpeg_resnet8",
                              "--results", str(REPO / "results"))
    assert code == 1 and err.count("FAIL") == 1 and "| AT |" in err and "opposite sign" in err


def test_jpeg_column_report_shows_gains_with_intervals_and_rho_with_its_interval(tmp_path, capsys):
    code, _, err = main_out(capsys, "report", "--table", "sarfraz2020_table3_jpeg_resnet8", "--results",
                            str(REPO / "results"), "--out", str(tmp_path))
    assert code == 0, err
    md = (tmp_path / "sarfraz2020_table3_jpeg_resnet8.md").read_text()
    assert "| Hinton | ResNet-8 | top1     | +1.16 [+0.87, +1.44] | +4.70      | [+2.41, +6.99]" in md
    assert "Spearman ρ 0.27, 90 % interval [" in md and "not judged (proxy table)" in md
    index = (tmp_path / "index.md").read_text()                   # the index is always every table
    assert index.count("| crd2020_table1 ") == 1 and "[sarfraz2020_table3_jpeg_resnet8](" in index


def test_unnamed_cell_count_does_not_depend_on_the_table_selection(capsys):
    _, every, _ = main_out(capsys, "compare", "--results", str(REPO / "results"))
    _, one, _ = main_out(capsys, "compare", "--table", "recorded_digits", "--results", str(REPO / "results"))
    line = [ln for ln in every.splitlines() if "named by no reference table" in ln]
    assert line and line == [ln for ln in one.splitlines() if "named by no reference table" in ln]


def test_quick_checks_are_shown_in_compare_as_not_judged(tmp_path, capsys):
    lines = [dict(rec("x", 0, 1.0), cell_id=f"{DIGITS_KD}~epochs=3", recipe="digits~epochs=3", top1_last=80.0 + s,
                  seed=s, schema=1) for s in (0, 1)]
    (tmp_path / "digits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    code, out, _ = main_out(capsys, "compare", "--table", "recorded_digits", "--results", str(tmp_path))
    assert code == 0 and "↳ KD" in out and "not judged (quick check digits~epochs=3)" in out


# --- seeds planning --------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma,gap,expected", [(0.18, 0.2, 13), (0.18, 0.3, 6), (0.18, 0.5, 3), (0.3, 0.3, 16),
                                                 (0.3, 0.5, 6)])
def test_seeds_for_power_is_the_closed_form(sigma, gap, expected):
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    assert stats.seeds_for_power(gap, sigma) == math.ceil(2 * z * z * sigma * sigma / gap / gap) == expected


def test_planner_uses_our_std_where_we_have_seeds_else_the_published_one():
    t = T([E("base", "A", 70.0, CID("base"), std=0.3, runs=5), E("kd", "A", 70.3, CID("kd"), std=0.3, runs=5),
           E("crd", "A", 70.5, CID("crd"), std=0.18, runs=5)], baseline_row="base")
    recs = [rec("base", s, v) for s, v in enumerate([70.0, 70.2, 69.8])]           # our base std 0.2
    plan = {n.row: n for n in needs(t, compare([t], recs))}
    assert plan["kd"].sigma == pytest.approx(math.sqrt((0.2 ** 2 + 0.3 ** 2) / 2)) and plan["kd"].source == "published + ours"
    assert plan["kd"].seeds == stats.seeds_for_power(0.3, plan["kd"].sigma)
    seeds = cell_seeds(list(plan.values()))
    assert seeds[CID("base")] == max(plan["kd"].seeds, plan["crd"].seeds)
    bench = {(CID("kd"), "gpu"): {"images_per_s": 1000.0, "num_train": 50000}}
    h = hours(seeds, {CID("base"): 3}, {CID("kd"): 240}, bench)["gpu"]
    per_run = 240 * 50000 / 1000 / 3600
    assert h == pytest.approx((seeds[CID("kd")] * per_run, seeds[CID("kd")] * per_run, 1))


def test_kd_plan_prints_seeds_per_gain(capsys):
    code, out, err = main_out(capsys, "plan", "sarfraz2020_table3_jpeg_resnet8", "--results", str(REPO / "results"))
    assert code == 0, err
    assert "seeds per method" in out and "resolve every planned gain" in out
    code, _, err = main_out(capsys, "plan", "lohit2022_svhn")
    assert code == 2 and err.startswith("kd: error: lohit2022_svhn: no published gain")


# --- stored predictions ----------------------------------------------------------------------------

def test_predictions_file_round_trip_and_refused_on_a_wrong_sha(tmp_path, capsys):
    from kd.records import predictions
    labels = np.array([3, 1, 4, 1, 5])
    field_ = write_run(tmp_path, "c", 0, np.array([3, 1, 0, 1, 5]), labels, labels)
    again = write_run(tmp_path / "b", "c", 0, np.array([3, 1, 0, 1, 5]), labels, labels)
    assert field_ == again                                           # byte-identical: same sha256
    p = read(tmp_path / field_["file"], field_["sha256"])
    assert p.correct("last").tolist() == [1, 1, 0, 1, 1] and p.correct("best").tolist() == [1] * 5
    lines = [{"cell_id": "a/b/c/d", "seed": 0, "predictions": field_}]
    assert list(predictions.load(lines, tmp_path)) == [("a/b/c/d", 0)]
    (tmp_path / field_["file"]).write_bytes((tmp_path / "b" / field_["file"]).read_bytes()[:-1] + b"x")
    capsys.readouterr()
    assert predictions.load(lines, tmp_path) == {}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kd: warning: predictions not used:") and "sha256" in err


def test_a_run_stores_its_predictions_and_its_top1_is_their_accuracy(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KD_RESULTS", str(tmp_path / "res"))
    monkeypatch.setenv("KD_STORE", str(tmp_path / "st"))
    code, _, err = main_out(capsys, "run", DIGITS_KD, "--epochs", "3", "--seed", "0", "1", "--no-progress")
    assert code == 0, err
    lines = [json.loads(ln) for ln in (tmp_path / "res" / "digits.jsonl").read_text().splitlines()]
    students = [r for r in lines if r["cell_id"].startswith("digits-sub400/kd/")]
    assert len(students) == 2 and all("predictions" in r for r in lines)
    for r in lines:
        p = read(tmp_path / "res" / r["predictions"]["file"], r["predictions"]["sha256"])
        assert round(100 * float(np.mean(p.last == p.labels)), 4) == r["top1_last"]
        assert round(100 * float(np.mean(p.best == p.labels)), 4) == r["top1_best"]
        assert len(p.labels) == r["config"]["num_test"] and p.last.max() < 10
    files = {r["teacher_predictions"]["file"] for r in students}
    assert len(files) == 1                                            # the teacher's, once
    t = read(tmp_path / "res" / files.pop())
    for r in students:
        p = read(tmp_path / "res" / r["predictions"]["file"])
        assert r["fidelity"]["agreement"] == round(100 * float(np.mean(p.last == t.pred)), 4)
        assert r["fidelity"]["kl"] >= 0 and r["fidelity"]["epoch"] == "last"
    code, out, _ = main_out(capsys, "compare", "--table", "recorded_digits", "--results", str(tmp_path / "res"))
    assert code == 0 and "not judged (quick check digits~epochs=3)" in out


def test_an_imported_teacher_gets_its_predictions_when_evaluated(tmp_path, capsys, monkeypatch):
    import torch

    from kd.engine.teacher import build_model
    from kd.records.store import sha256_file
    monkeypatch.setenv("KD_RESULTS", str(tmp_path / "res"))
    monkeypatch.setenv("KD_STORE", str(tmp_path / "st"))
    torch.manual_seed(0)
    f = tmp_path / "teacher.pt"
    torch.save(build_model("tiny_t", 10).state_dict(), f)
    code, _, err = main_out(capsys, "import-teacher", "digits-sub400/baseline/tiny_t/digits", str(f), "--sha256", sha256_file(f))
    assert code == 0, err
    (r,) = [json.loads(ln) for ln in (tmp_path / "res" / "digits.jsonl").read_text().splitlines()]
    p = read(tmp_path / "res" / r["predictions"]["file"], r["predictions"]["sha256"])
    assert round(100 * float(np.mean(p.last == p.labels)), 4) == r["top1_last"] and (p.last == p.best).all()
