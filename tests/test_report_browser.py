"""The HTML report opens in a headless browser without errors and shows its plot (skipped where no
Chromium is installed: `apt-get install chromium`)."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest
from synthetic import E

from kd.analysis.compare import compare
from kd.analysis.report import write_reports

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@dataclass
class Table:
    id: str
    entries: list
    rows: list
    columns: list
    title: str = "synthetic"
    baseline_row: str = "Student"
    source: dict = field(default_factory=lambda: {"paper": "synthetic"})


def _report(tmp_path):
    cid = "cifar100/{}/resnet8x4_from_resnet32x4/crd"
    entries = [E("Student", "c", 72.5, cid.format("baseline")), E("KD", "c", 73.33, cid.format("kd")),
               E("CRD", "c", 75.51, cid.format("crd"))]
    table = Table("t1", entries, [{"label": r} for r in ("Student", "KD", "CRD")], [{"label": "c"}])
    recs = [dict(cell_id=cid.format(k), seed=s, status="ok", recipe="crd", top1_last=v + s * 0.1, top1_best=v,
                 top5_last=90.0, top5_best=90.0) for k, v in (("baseline", 72.0), ("kd", 73.9), ("crd", 74.0))
            for s in range(2)]
    write_reports([table], compare([table], recs), tmp_path)
    return tmp_path / "t1.html"


def test_plot_is_an_embedded_png(tmp_path):
    from PIL import Image
    html = _report(tmp_path).read_text()
    (data,) = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    assert img.size[0] > 200 and img.size[1] > 200 and "http" not in html.replace("http-equiv", "")


@pytest.mark.skipif(not BROWSER, reason="no Chromium installed")
def test_html_opens_in_headless_browser(tmp_path):
    from PIL import Image, ImageStat
    page = _report(tmp_path)
    shot = tmp_path / "shot.png"
    p = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
                        f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Uncaught" not in p.stderr and "CONSOLE" not in p.stderr
    stat = ImageStat.Stat(Image.open(shot).convert("L"))
    assert stat.stddev[0] > 10          # a rendered table and plot, not a blank page
