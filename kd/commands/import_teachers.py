"""`kd import-teachers DIR`: the published CIFAR-100 teachers of RepDistiller and mdistiller in one command.

Layouts read under DIR (each `<model>_vanilla` folder is one teacher, `<model>` a model name):
    save/models/<model>_vanilla/ckpt_epoch_240.pth                   RepDistiller (scripts/fetch_pretrained_teachers.sh)
    download_ckpts/cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth  mdistiller (cifar_teachers.tar untarred in download_ckpts)
    <model>_vanilla/ckpt_epoch_240.pth                               either folder given itself as DIR
Each file maps to the teacher cell `cifar100/baseline/<model>/crd`, the Teacher row of CRD Tables 1-2
and of DKD's CIFAR-100 tables (which quote CRD's teachers). Only models with such a Teacher row are
imported; other `*_vanilla` folders are listed as skipped. The same model found twice with different
files is an error (point DIR at one layout).

Order, and nothing is written until every teacher has passed: every file is checked (a teacher cell,
no teacher stored yet unless --force), loaded strictly (weights_only=True) and evaluated on the
CIFAR-100 test set; its top-1 is compared with the Teacher value of each of those tables. A teacher
further from a published value than that table's tolerance (absolute points, the table's own
`tolerance`) is refused, with one line saying by how much, unless --force; then all are copied into
the store and one result line each is appended (kd.commands.import_teacher.install), its `imported`
field holding the layout, the published values with our delta, whether --force let it through, and,
for a downloaded file, the URL and the sha256 of what was downloaded.

Download (`--download SOURCE`, only when asked): SOURCE is `repdistiller` (the per-model addresses of
RepDistiller's scripts/fetch_pretrained_teachers.sh), `mdistiller` (the `cifar_teachers.tar` asset of
mdistiller's `checkpoints` release, which its README links), or a URL: one ending in
`<model>_vanilla/ckpt_epoch_240.pth` is saved in the RepDistiller layout, a `.tar`/`.tar.gz`/`.tgz`
archive is unpacked into DIR/download_ckpts (tarfile's "data" filter: no absolute paths, links out or
devices), and a URL with `{model}` is fetched once per published teacher model. http and https only.
No hash is pinned here: nobody on this project has seen the files, so the sha256 of what arrived is
printed and recorded, for the user to compare with a source they trust.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kd.errors import KDError

CKPT = "ckpt_epoch_240.pth"
LAYOUTS = {"repdistiller": Path("save/models"), "mdistiller": Path("download_ckpts/cifar_teachers"), "folder": Path(".")}
TABLES = ("crd2020_table1", "crd2020_table2", "dkd2022_same_arch", "dkd2022_diff_arch")
TEACHER_CELL = "cifar100/baseline/{model}/crd"
SOURCES = {
    "repdistiller": "http://shape2prog.csail.mit.edu/repo/{model}_vanilla/ckpt_epoch_240.pth",
    "mdistiller": "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar",
}
ARCHIVES = (".tar", ".tar.gz", ".tgz")


@dataclass
class Found:
    model: str
    path: Path
    layout: str
    downloaded: dict | None = None
    published: list = field(default_factory=list)


def published_teachers(tables=TABLES) -> dict[str, list[dict]]:
    """{model: [{"table", "value", "tolerance", "statistic"}]} from the Teacher rows of `tables`."""
    from kd.catalog.paths import REFERENCE_TABLES
    from kd.catalog.reftables import load_all
    out: dict[str, list[dict]] = {}
    for t in load_all(REFERENCE_TABLES):
        if t.id not in tables:
            continue
        for e in t.entries:
            if e.method == "teacher" and e.metric == "top1" and not e.erratum:
                entry = {"table": t.id, "value": e.accuracy, "tolerance": e.tolerance, "statistic": e.statistic}
                model = e.cell_id.split("/")[2]                     # <dataset>/baseline/<model>/<recipe>
                if entry not in out.setdefault(model, []):
                    out[model].append(entry)
    return out


def discover(root: Path, models) -> tuple[list[Found], list[str]]:
    """The checkpoints under `root` in the known layouts, and the `*_vanilla` folders skipped."""
    from kd.records.store import sha256_file
    found: dict[str, Found] = {}
    skipped = []
    for layout, sub in LAYOUTS.items():
        base = root / sub
        if not base.is_dir():
            continue
        for d in sorted(base.glob("*_vanilla")):
            f, model = d / CKPT, d.name[: -len("_vanilla")]
            if not f.is_file():
                continue
            if model not in models:
                skipped.append(f"{d.relative_to(root)} (no published teacher accuracy for '{model}')")
            elif model not in found:
                found[model] = Found(model, f, layout)
            elif sha256_file(found[model].path) != sha256_file(f):          # the same file twice: the first
                raise KDError(f"two different checkpoints for {model}: {found[model].path} and {f}; "
                              f"point DIR at one layout's folder")
    return list(found.values()), skipped


def _fetch(url: str, dst: Path, log) -> dict:
    """`url` saved atomically as `dst`; {"url", "sha256", "bytes"} of what arrived."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise KDError(f"--download {url}: only http and https URLs are fetched")
    dst.parent.mkdir(parents=True, exist_ok=True)
    h, n = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=dst.parent)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
        os.replace(tmp, dst)
    except (urllib.error.URLError, OSError, ValueError) as e:
        Path(tmp).unlink(missing_ok=True)
        why = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
        raise KDError(f"--download {url}: {why}") from None
    log(f"downloaded {url}: {n} bytes, sha256 {h.hexdigest()} -> {dst}")
    return {"url": url, "sha256": h.hexdigest(), "bytes": n}


def download(source: str, root: Path, models, log=print) -> dict[Path, dict]:
    """Fetch `source` into `root` in a known layout; {checkpoint path: what was downloaded}."""
    url = SOURCES.get(source, source)
    if "{model}" in url:
        return {k: v for m in sorted(models) for k, v in download(url.format(model=m), root, models, log).items()}
    path = urllib.parse.urlsplit(url).path
    if path.endswith(ARCHIVES):
        with tempfile.TemporaryDirectory(prefix="kd-download-") as tmp:
            info = _fetch(url, Path(tmp) / "archive", log)
            dest = root / "download_ckpts"
            try:
                with tarfile.open(Path(tmp) / "archive") as tar:
                    names = [m.name for m in tar.getmembers() if m.isfile()]
                    tar.extractall(dest, filter="data")
            except (tarfile.TarError, OSError) as e:
                raise KDError(f"--download {url}: not a readable tar archive ({e})") from None
        return {(dest / n).resolve(): info for n in names if n.endswith(CKPT)}
    parts = path.rstrip("/").split("/")
    if len(parts) < 2 or parts[-1] != CKPT or not parts[-2].endswith("_vanilla"):
        raise KDError(f"--download {url}: expected repdistiller, mdistiller, a .tar/.tar.gz/.tgz archive or a URL "
                      f"ending in <model>_vanilla/{CKPT}")
    dst = root / LAYOUTS["repdistiller"] / parts[-2] / CKPT
    return {dst.resolve(): _fetch(url, dst, log)}


def _verdict(f: Found, top1: float) -> tuple[str | None, list[dict]]:
    """(why refused or None, the published values with our delta)."""
    rows, worst = [], None
    for p in f.published:
        d = round(top1 - p["value"], 2)
        rows.append({**p, "delta": d})
        if abs(d) > p["tolerance"] and (worst is None or abs(d) > abs(worst[0])):
            worst = (d, p)
    if worst is None:
        return None, rows
    d, p = worst
    return (f"{f.model}: top-1 {top1:.2f} is {abs(d):.2f} points {'below' if d < 0 else 'above'} the published "
            f"{p['value']:.2f} ({p['table']}, tolerance {p['tolerance']:g})"), rows


def import_teachers(root, *, downloads=(), data_root=None, store=None, results_dir=None, device=None,
                    force=False, log=print) -> list[dict]:
    """Download (when asked), find, check, evaluate, compare and import; the result lines written."""
    from kd.catalog.cells import find_cell, load_recipe
    from kd.commands.import_teacher import check_file, check_targets, evaluate, install
    from kd.data import load_dataset
    from kd.engine.execution import pick_device
    from kd.records.store import store_root
    root, store, pub = Path(root), store_root(store), published_teachers()
    if not downloads and not root.is_dir():
        raise KDError(f"{root}: no such folder")
    fetched = {}
    for s in downloads:
        fetched.update(download(s, root, pub, log))
    found, skipped = discover(root, pub)
    if not found:
        raise KDError(f"no teacher checkpoints under {root} (expected save/models/<model>_vanilla/{CKPT} or "
                      f"download_ckpts/cifar_teachers/<model>_vanilla/{CKPT}; models: {', '.join(sorted(pub))})")
    for s in skipped:
        log(f"skipped {s}")
    checked = [check_file(find_cell(TEACHER_CELL.format(model=f.model)), f.path, store, force) for f in found]
    for c in checked:
        check_targets(c, store, results_dir)               # every write target, before any evaluation
    ds = load_dataset("cifar100", data_root, seed=load_recipe(checked[0].cell.recipe).data_seed)
    dev, refused, compared = pick_device(device), [], []
    for f, c in zip(found, checked):
        f.downloaded, f.published = fetched.get(f.path.resolve()), pub[f.model]
        evaluate(c, ds, dev)
        why, rows = _verdict(f, c.top1)
        compared.append(rows)
        if why:
            refused.append(why)
    _table(found, checked, compared, refused, force, log)
    if refused and not force:
        raise KDError("; ".join(refused) + "; nothing imported (--force imports anyway)")
    return [install(c, store, results_dir, {"layout": f.layout, "published": rows, "forced": bool(refused) and force,
                                             "downloaded": f.downloaded})
            for f, c, rows in zip(found, checked, compared)]


def _table(found, checked, compared, refused, force, log):
    from tabulate import tabulate
    bad = {r.split(":")[0] for r in refused}
    log(tabulate([[f.model, f.layout, c.digest[:12], f"{c.top1:.2f}",
                   ", ".join(f"{r['value']:.2f} ({r['table']})" for r in rows[:1]),
                   f"{rows[0]['delta']:+.2f}" if rows else "-",
                   ("forced" if force else "refused") if f.model in bad else "ok"]
                  for f, c, rows in zip(found, checked, compared)],
                 headers=["teacher", "layout", "sha256", "top-1", "published", "delta", "verdict"]))
