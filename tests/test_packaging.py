"""Item: a wheel (built from the sdist, as pip does) installs a working `kd` in a fresh virtual
environment: cells, reference tables and `kd --version` come from the installed package, not from
the source tree. No download: the backend is called directly (setuptools of this environment), the
wheel is installed with --no-deps, and the test environment's packages (torch, ...) are made visible
through a .pth file. About 15 s; skipped only when setuptools or an installer (uv, pip) is missing."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_package_list_covers_every_kd_subpackage():
    tomllib = pytest.importorskip("tomllib")                       # Python >= 3.11
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    source = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "kd").rglob("__init__.py")}
    assert source | {"kd._benchmarks", "kd._reference_tables"} == set(cfg["packages"])
    assert cfg["package-dir"] == {"kd._benchmarks": "benchmarks", "kd._reference_tables": "reference_tables"}


def test_version_matches_pyproject(capsys):
    import re

    import kd
    from kd.cli import main
    assert kd.__version__ == re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"kd {kd.__version__}"


def _run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, f"{cmd}: {p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.mark.slow
def test_wheel_from_sdist_installs_a_working_kd(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("kd", "benchmarks", "reference_tables"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(REPO / name, src / name)
    dist = tmp_path / "dist"
    build = "from setuptools import build_meta as b; import sys; print(getattr(b, sys.argv[1])(sys.argv[2]))"
    sdist = dist / _run([sys.executable, "-c", build, "build_sdist", dist], cwd=src).split()[-1]
    with tarfile.open(sdist) as t:
        t.extractall(tmp_path / "x", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp_path / "x").iterdir()
    assert (unpacked / "benchmarks" / "digits" / "demo.yaml").is_file()
    wheel = dist / _run([sys.executable, "-c", build, "build_wheel", dist], cwd=unpacked).split()[-1]

    venv = tmp_path / "venv"
    uv = shutil.which("uv")
    if uv:
        _run([sys.executable, "-m", "venv", "--without-pip", venv])
        install = [uv, "pip", "install", "--python", venv / "bin" / "python", "--no-deps", "--offline", wheel]
    else:
        if subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True).returncode:
            pytest.skip("no installer: neither uv nor venv with pip (ensurepip) is available")
        install = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel]
    purelib = Path(_run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # torch & co. from this test environment (a .pth line adds a folder; .pth files in it are not
    # processed, so an editable install of the source tree there stays invisible)
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run(install)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_") and k != "PYTHONPATH"}
    env["KD_RESULTS"] = str(tmp_path / "res")
    kd = venv / "bin" / "kd"
    where = _run([venv / "bin" / "python", "-c", "import kd.catalog.paths as p; print(p.PKG, p.BENCHMARKS, p.REFERENCE_TABLES)"],
                 cwd=work, env=env).split()
    assert all(Path(w).is_relative_to(purelib) for w in where), where
    assert _run([kd, "--version"], cwd=work, env=env).strip() == "kd 0.1.0"
    out = _run([kd, "list", "--dataset", "digits"], cwd=work, env=env)
    assert "digits-sub400/kd/tiny_s_from_tiny_t/digits" in out and "3 cells" in out
    out = _run([kd, "compare", "--table", "recorded_digits", "recorded_cifar10_jpeg"], cwd=work, env=env)
    assert "recorded_digits" in out and "recorded_cifar10_jpeg" in out
    assert "cifar100/crd+kd/resnet8x4_from_resnet32x4/crd" in _run([kd, "find", "75.46"], cwd=work, env=env)
    assert not (tmp_path / "res").exists()       # reading commands write nothing
