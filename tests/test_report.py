"""kd.analysis.report on synthetic rows: files written, paper layout, self-contained HTML, index counts."""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

from synthetic import E  # noqa: E402

from kd.analysis.compare import compare, extras
from kd.analysis.report import LEGEND, write_reports


def cid(label):
    return f"cifar100/{label}/resnet8x4_from_resnet32x4/std"


@dataclass
class T:
    id: str
    rows: list
    columns: list
    entries: list
    title: str = "Top-1 on CIFAR-100"
    baseline_row: str | None = "student"
    source: dict = field(default_factory=lambda: {"paper": "CRD (Tian et al. 2020)", "table": "Table 1"})
    errata: list = field(default_factory=list)


def rec(label, seed, top1):
    return dict(cell_id=cid(label), seed=seed, status="ok", recipe="std", top1_last=top1, top1_best=top1,
                top5_last=90.0, top5_best=90.0)


ROWS, COLS = ["student", "kd", "crd"], ["wrn_40_2", "resnet56"]


def build(tmp_path, errata=()):
    # entries deliberately listed in a different order from the paper's rows/columns
    entries = [E("crd", "resnet56", 71.16, cid("crd_r")), E("kd", "wrn_40_2", 74.92, cid("kd_w")),
               E("student", "resnet56", 69.06, cid("st_r")), E("crd", "wrn_40_2", 75.48, cid("crd_w")),
               E("kd", "resnet56", 70.66, cid("kd_r")), E("student", "wrn_40_2", 73.26, cid("st_w"))]
    t = T("crd_t1", [{"label": r} for r in ROWS], [{"label": c} for c in COLS], entries, errata=list(errata))
    t2 = T("other", [{"label": "kd"}], [{"label": "x"}], [E("kd", "x", 50.0, cid("none"))], baseline_row=None)
    recs = ([rec("kd_w", s, v) for s, v in enumerate([73.89, 74.10, 74.31])]
            + [rec("st_w", s, v) for s, v in enumerate([73.3, 73.2, 73.4])]
            + [rec("crd_w", s, v) for s, v in enumerate([78.0, 78.1])] + [rec("st_r", s, v) for s, v in enumerate([69.0, 69.1])]
            + [rec("kd_r", 0, 70.5)] + [rec("crd_r", s, v) for s, v in enumerate([68.0, 68.1])]
            + [rec("unnamed", 0, 10.0)])
    rows = compare([t, t2], recs) + extras([t, t2], recs)
    return [t, t2], rows, write_reports([t, t2], rows, tmp_path / "rep", n_results=len(recs))


def test_files_written(tmp_path):
    _, _, paths = build(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["crd_t1.html", "crd_t1.md", "crd_t1.png", "index.html", "index.md", "other.html", "other.md"]
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_markdown_layout_cells_and_sections(tmp_path):
    build(tmp_path, errata=["row 'crd' resnet56 misprinted as 71.61 in v1"])
    md = (tmp_path / "rep" / "crd_t1.md").read_text()
    main_table = md[md.index("\n|"): md.index("\n\n", md.index("\n|"))]
    lines = main_table.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["", *COLS]
    body = lines[2:]
    assert [ln.split("|")[1].strip() for ln in body] == ROWS
    kd_cells = [c.strip().split("<br>") for c in body[1].strip("|").split("|")]
    assert kd_cells[1][0] == "74.10 ± 0.35 (3) / 74.92 / −0.82 ?"              # ± the 90 % interval's half-width
    assert kd_cells[1][1] == "Δ interval [−1.17, −0.47] overlaps the edge of ±0.5 (t-interval over 3 seeds)"
    assert kd_cells[2][:2] == ["70.50 (1) / 70.66 / −0.16 ?", "no interval (one seed and no spread known)"]
    assert all(c[-1].startswith("`cifar100/") and c[-1].endswith("`") for c in kd_cells[1:])   # every cell: its id
    assert body[2].split("|")[2].strip().split("<br>")[0].endswith("▲")
    assert body[2].split("|")[3].strip().split("<br>")[0].endswith("▼")
    assert "generated from 14 result lines" in md
    summary = md[md.index("**Summary.**"): md.index(LEGEND[:20])]                    # the answer comes first
    assert "6 of 6 entries have results: 2 reproduced, 2 inconclusive, 1 below, 1 above; 0 missing." in summary
    assert md.index("**Summary.**") < md.index("\n|") < md.index("## Gains") < md.index("## Ranking") < md.index("## Source")
    gains = md[md.index("## Gains"): md.index("## Ranking")].splitlines()[4:8]
    assert [tuple(c.strip() for c in ln.split("|")[1:3]) for ln in gains] == [
        ("kd", "wrn_40_2"), ("crd", "wrn_40_2"), ("kd", "resnet56"), ("crd", "resnet56")]  # paper order
    for text in ("## Gains over the baseline row 'student'", "## Ranking", "CRD (Tian et al. 2020)",
                 "statistic: last (6 entries)", "tolerance: ±0.50 points", "erratum: row 'crd' resnet56"):
        assert text in md
    other = (tmp_path / "rep" / "other.md").read_text()
    assert "— / 50.00 ·" in other


def test_html_self_contained_with_plot_and_verdict_classes(tmp_path):
    build(tmp_path)
    page = (tmp_path / "rep" / "crd_t1.html").read_text()
    m = re.search(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m and base64.b64decode(m.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    for v in ("reproduced", "below", "above"):
        assert f'class="v-{v}"' in page
    assert "<style>" in page and not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page
    assert page.index("wrn_40_2") < page.index("resnet56")
    order = [page.index(x) for x in ("<b>Summary.</b>", "<table>", "<h2>Gains over", "<h2>Ranking", "<h2>Published vs ours",
                                     "<h2>Source")]
    assert order == sorted(order)                                            # the answer first
    other = (tmp_path / "rep" / "other.html").read_text()
    assert 'class="v-missing"' in other and "data:image/png" not in other


def test_index_counts_and_links(tmp_path):
    _, rows, _ = build(tmp_path)
    md = (tmp_path / "rep" / "index.md").read_text()
    counts = {}
    for ln in md.splitlines():
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if ln.startswith("| [") and len(cells) == 8:
            counts[re.match(r"\[(\w+)\]", cells[0]).group(1)] = [int(c) for c in cells[2:]]
    # crd_t1: reproduced st_w, st_r; inconclusive kd_w (wide), kd_r (one seed); below crd_r; above crd_w
    assert counts == {"crd_t1": [2, 2, 1, 1, 0, 0], "other": [0, 0, 0, 0, 0, 1]}
    assert "(crd_t1.md)" in md and cid("unnamed") in md and "1 result cells not named" in md
    page = (tmp_path / "rep" / "index.html").read_text()
    assert 'href="crd_t1.html"' in page and 'href="other.html"' in page and cid("unnamed") in page


def test_output_is_deterministic(tmp_path):
    tables, rows, first = build(tmp_path)
    second = write_reports(tables, rows, tmp_path / "again", n_results=14)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
