"""kd.analysis.compare on synthetic tables and records (the stand-ins of tests/synthetic.py, not the real reference tables)."""
from __future__ import annotations


import pytest

from synthetic import E, T  # noqa: E402

from kd.analysis.compare import aggregate, check, compare, extras, rankings, summary, verdict


def cid(label, recipe="std", dataset="cifar100"):
    return f"{dataset}/{label}/resnet8x4_from_resnet32x4/{recipe}"



def rec(cell, seed, top1, status="ok", **kw):
    r = dict(cell_id=cell, seed=seed, status=status, recipe=cell.split("/")[-1])
    if status == "ok":
        r.update(top1_last=top1, top1_best=top1 + 1, top5_last=top1 + 20, top5_best=top1 + 21)
    else:
        r["error"] = "boom"
    r.update(kw)
    return r


def seeds(cell, *top1s):
    return [rec(cell, i, v) for i, v in enumerate(top1s)]


def one(entry, records, runs=None, **tkw):
    if runs is not None:
        entry.runs = runs
    (row,) = compare([T([entry], **tkw)], records)
    return row


def test_aggregate_mean_std_n_and_failed_runs_excluded():
    cell = cid("kd")
    recs = seeds(cell, 70, 72, 74) + [rec(cell, 3, None, status="failed")] + [rec(cid("crd"), 0, 60)]
    a = aggregate(recs)
    k = a[cell]
    assert (k.n, k.n_failed, k.seeds) == (3, 1, (0, 1, 2))
    assert k.stats["top1_last"].mean == pytest.approx(72) and k.stats["top1_last"].std == pytest.approx(2)
    assert k.stats["top1_best"].mean == pytest.approx(73) and k.stats["top5_last"].mean == pytest.approx(92)
    assert a[cid("crd")].stats["top1_last"].std is None and a[cid("crd")].n == 1


def test_rerun_of_a_seed_supersedes_earlier_line():
    cell = cid("kd")
    a = aggregate([rec(cell, 0, 70), rec(cell, 0, 80)])[cell]
    assert a.n == 1 and a.stats["top1_last"].mean == 80
    assert one(E("kd", "A", 80, cell), [rec(cell, 0, 70), rec(cell, 0, 80)]).ours == 80


def test_reproduced_when_the_interval_lies_inside_the_tolerance():
    r = one(E("kd", "A", 72.3, cid("kd"), tolerance=0.5), seeds(cid("kd"), 72.0, 72.1, 71.9))
    assert r.verdict == "reproduced" and r.delta == pytest.approx(-0.3)
    assert (r.ours, r.n, r.published) == (pytest.approx(72), 3, 72.3) and r.ours_std == pytest.approx(0.1)
    wide = one(E("kd", "A", 72.3, cid("kd"), tolerance=0.5), seeds(cid("kd"), 70, 72, 74))
    assert wide.verdict == "inconclusive" and wide.settle and wide.ci[0] < -0.5   # same delta, wide spread


def test_published_std_widens_the_interval_it_is_never_a_band():
    recs = seeds(cid("kd"), 72.0, 72.1, 71.9)
    alone = one(E("kd", "A", 72.3, cid("kd"), tolerance=0.5), recs)
    with_std = one(E("kd", "A", 72.3, cid("kd"), tolerance=0.5, std=0.4), recs, runs=5)
    assert with_std.ci[0] < alone.ci[0] and with_std.ci[1] > alone.ci[1]
    far = one(E("kd", "A", 73.5, cid("kd"), tolerance=0.5, std=1.0), recs, runs=5)   # the old 2-std band
    assert far.verdict != "reproduced"


def test_below_and_above():
    recs = seeds(cid("kd"), 72, 72.2, 71.8)
    lo = one(E("kd", "A", 75, cid("kd")), recs)
    assert lo.verdict == "below" and lo.delta == pytest.approx(-3)
    hi = one(E("kd", "A", 70, cid("kd")), recs)
    assert hi.verdict == "above" and hi.delta == pytest.approx(2)


def test_missing_without_ok_result():
    assert one(E("kd", "A", 72, cid("kd")), []).verdict == "missing"
    r = one(E("kd", "A", 72, cid("kd")), [rec(cid("kd"), 0, None, status="failed")])
    assert (r.verdict, r.ours, r.n, r.n_failed) == ("missing", None, 0, 1)
    assert one(E("kd", "A", 72, None), seeds(cid("kd"), 72)).verdict == "missing"


def test_statistic_best_last_unknown():
    recs = seeds(cid("kd"), 72, 72.1, 71.9)
    assert one(E("kd", "A", 73, cid("kd"), statistic="best"), recs).verdict == "reproduced"
    last = one(E("kd", "A", 73, cid("kd"), statistic="last"), recs)
    assert last.verdict == "below" and not last.statistic_assumed
    unk = one(E("kd", "A", 72, cid("kd"), statistic="unknown"), recs)
    assert unk.verdict == "reproduced" and unk.statistic == "last" and unk.statistic_assumed
    top5 = one(E("kd", "A", 93, cid("kd"), metric="top5", statistic="best"), recs)
    assert top5.ours == pytest.approx(93) and top5.verdict == "reproduced"


def test_error_table_direction():
    recs = seeds(cid("kd"), 72, 72.1, 71.9)  # our error = 28
    worse = one(E("kd", "A", 27.0, cid("kd"), higher_is_better=False), recs)
    assert worse.ours == pytest.approx(28) and worse.delta == pytest.approx(1) and worse.verdict == "below"
    better = one(E("kd", "A", 29.0, cid("kd"), higher_is_better=False), recs)
    assert better.delta == pytest.approx(-1) and better.verdict == "above"
    assert one(E("kd", "A", 28.2, cid("kd"), higher_is_better=False), recs).verdict == "reproduced"
    assert one(E("kd", "A", 8.0, cid("kd"), metric="top5", higher_is_better=False), recs).verdict == "reproduced"


def test_per_seed_entry_uses_only_that_seed():
    r = one(E("kd", "A", 72, cid("kd"), seed=1, tolerance=0.1), seeds(cid("kd"), 70, 72, 74))
    assert (r.ours, r.n, r.ours_std, r.seeds) == (72, 1, None, (1,))
    assert r.verdict == "inconclusive"                     # one seed is never "reproduced"
    assert one(E("kd", "A", 72, cid("kd"), seed=7), seeds(cid("kd"), 70, 72)).verdict == "missing"


def test_ensemble_entry_needs_ensemble_field():
    e = E("ens", "A", 76, cid("ens"), aggregate="ensemble")
    assert one(e, seeds(cid("ens"), 76, 76)).verdict == "missing"
    r = one(e, [rec(cid("ens"), 0, 70, ensemble_top1=76.2), rec(cid("ens"), 1, 70, ensemble_top1=76.1)])
    assert (r.verdict, r.ours, r.statistic) == ("reproduced", pytest.approx(76.15), "ensemble")


def test_extras_are_unnamed_result_cells():
    t = T([E("kd", "A", 72, cid("kd"))])
    recs = seeds(cid("kd"), 72) + seeds(cid("dkd"), 75, 77) + [rec(cid("ofd"), 0, None, status="failed")]
    ex = {r.cell_id: r for r in extras([t], recs)}
    assert set(ex) == {cid("dkd"), cid("ofd")}
    assert ex[cid("dkd")].verdict == "extra" and ex[cid("dkd")].ours == 76 and ex[cid("dkd")].n == 2
    assert ex[cid("ofd")].n_failed == 1 and ex[cid("ofd")].ours is None


def test_recipe_guard_shortened_runs_never_judge_full_protocol():
    short = cid("kd", recipe="std~epochs=1")
    e = E("kd", "A", 72, cid("kd"))
    assert one(e, seeds(short, 72, 72)).verdict == "missing"
    assert [r.cell_id for r in extras([T([e])], seeds(short, 72))] == [short]
    mislabelled = [rec(cid("kd"), 0, 72, recipe="std~epochs=1")]  # right cell id, shortened recipe
    assert one(e, mislabelled).verdict == "missing"
    assert one(e, seeds(cid("kd"), 72, 72)).verdict == "reproduced"


def _gain_table(hib=True):
    f = (lambda v: v) if hib else (lambda v: 100 - v)
    return T([E("student", "A", f(70), cid("base"), higher_is_better=hib),
              E("kd", "A", f(72), cid("kd"), higher_is_better=hib),
              E("crd", "A", f(73), cid("crd"), higher_is_better=hib),
              E("bad", "A", f(71), cid("bad"), higher_is_better=hib)], baseline_row="student")


def test_gain_comparison_and_sign():
    recs = seeds(cid("base"), 69) + seeds(cid("kd"), 71.5) + seeds(cid("crd"), 70) + seeds(cid("bad"), 68)
    for hib in (True, False):
        rows = {r.row: r for r in compare([_gain_table(hib)], recs)}
        assert rows["student"].gain_published is None
        assert rows["kd"].gain_published == pytest.approx(2) and rows["kd"].gain_ours == pytest.approx(2.5)
        assert rows["kd"].gain_agrees is True
        assert rows["crd"].gain_ours == pytest.approx(1) and rows["crd"].gain_agrees is True
        assert rows["bad"].gain_ours == pytest.approx(-1) and rows["bad"].gain_agrees is False
    no_base = {r.row: r for r in compare([_gain_table()], recs[1:])}
    assert no_base["kd"].gain_published == pytest.approx(2) and no_base["kd"].gain_ours is None
    assert no_base["kd"].gain_agrees is None


def _rank_rows(ours, hib=True):
    labels = ["a", "b", "c", "d"][: len(ours)]
    f = (lambda v: v) if hib else (lambda v: 100 - v)
    t = T([E(lab, "A", f(70 + i), cid(lab), higher_is_better=hib) for i, lab in enumerate(labels)])
    recs = [rec(cid(lab), 0, v) for lab, v in zip(labels, ours)]
    return compare([t], recs)


def test_ranking_spearman_and_top():
    (k,) = rankings(_rank_rows([60, 61, 65, 66]))
    assert k.rho == pytest.approx(1.0) and k.top_published == k.top_ours == "d" and k.top_agrees
    (k,) = rankings(_rank_rows([66, 65, 61, 60]))
    assert k.rho == pytest.approx(-1.0) and (k.top_published, k.top_ours, k.top_agrees) == ("d", "a", False)
    (k,) = rankings(_rank_rows([60, 61]))
    assert k.rho is None and k.n == 2
    (k,) = rankings(_rank_rows([60, 61, 65, 66], hib=False))  # error table: lowest error is the top
    assert k.rho == pytest.approx(1.0) and k.top_published == k.top_ours == "d"
    (k,) = rankings(_rank_rows([60, 62, 61, 63]))
    assert k.rho == pytest.approx(0.8)


def test_check_fails_on_perturbed_result_only():
    t = T([E("kd", "A", 72, cid("kd")), E("crd", "A", 74, cid("crd")), E("dkd", "A", 76, cid("dkd"))])
    good = seeds(cid("kd"), 72.2, 72.1) + seeds(cid("crd"), 73.8, 73.9)
    assert check(compare([t], good)) == []  # dkd is missing: not a failure
    bad = seeds(cid("kd"), 72.2, 72.1) + seeds(cid("crd"), 78.8, 78.9)
    assert [(r.row, r.verdict) for r in check(compare([t], bad))] == [("crd", "above")]
    noisy = seeds(cid("kd"), 72.2, 60.0) + seeds(cid("crd"), 73.8, 73.9)     # a wide interval: inconclusive
    assert [r.verdict for r in compare([t], noisy)][:1] == ["inconclusive"] and check(compare([t], noisy)) == []
    low = seeds(cid("kd"), 60.2, 60.1) + seeds(cid("crd"), 73.8, 73.9)
    assert [r.verdict for r in check(compare([t], low))] == ["below"]
    flagged = T([E("crd", "A", 74, cid("crd"), erratum="misprinted")])  # errata are never targets
    rows = compare([flagged], bad)
    assert rows[0].verdict == "above" and check(rows) == []


def test_summary_counts():
    t = T([E("kd", "A", 72, cid("kd")), E("crd", "A", 74, cid("crd")), E("dkd", "A", 76, cid("dkd")),
           E("ofd", "A", 76, cid("ofd"))])
    recs = seeds(cid("kd"), 72, 72.1) + seeds(cid("crd"), 70, 70.1) + seeds(cid("ofd"), 76) + seeds(cid("x"), 1)
    s = summary(compare([t], recs) + extras([t], recs))
    assert s["t"] == {"reproduced": 1, "below": 1, "missing": 1, "inconclusive": 1} and s[None] == {"extra": 1}


def test_verdict_rule_directly():
    assert verdict(None, 1, None) == "missing"
    assert verdict(0.2, 0.5, None, ours_std=0.1, n=3) == "reproduced"
    assert verdict(-2.0, 0.5, None, ours_std=0.1, n=3) == "below"
    assert verdict(-2.0, 0.5, None, higher_is_better=False, ours_std=0.1, n=3) == "above"
    assert verdict(0.0, 0.5, None, n=1) == "inconclusive"                       # no spread at all
    assert verdict(0.0, 5.0, None, n=1, n_test=10000, ours=75.0) == "inconclusive"  # one seed: never reproduced
    assert verdict(-5.0, 0.5, None, n=1, n_test=10000, ours=75.0) == "below"
