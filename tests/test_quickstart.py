"""The README's quick start is what CI runs, and it needs no `uv` on PATH."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _quick_start() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("\n## Quick start\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_quick_start_calls_uv_through_python_never_from_path():
    """pip may put the uv binary where PATH does not look (~/.local/bin for a user install): every uv call
    goes through `python3 -m uv`, which finds it wherever pip put it."""
    quick = _quick_start()
    assert len(quick) == 2 and quick[0].startswith("python3 -m pip install uv && ")
    for line in quick:
        command = line.split("  #")[0]
        for part in re.split(r"&&|\|\||;|\|", command):
            words = part.split()
            assert words[0] != "uv", f"a bare `uv` needs uv on PATH: {line}"
            assert words[:3] != ["python3", "-m", "uv"] or words[3:5] == ["run", "--locked"], line


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ci_runs_the_readme_quick_start_as_written_then_the_slow_tests():
    p = subprocess.run(["bash", str(REPO / ".ci" / "run"), "--dry-run"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    steps = p.stdout.splitlines()
    quick = _quick_start()
    assert steps[0] == quick[0] and steps[2] == quick[1]                 # the README's lines, verbatim
    assert "kd compare --check --table recorded_digits" in steps[1]
    assert steps[3] == "python3 -m uv run --locked pytest -q -m slow"      # what the default run leaves out
    pyproject = (REPO / "pyproject.toml").read_text()                  # (tomllib is 3.11+; the suite runs on 3.10)
    assert "\naddopts = \"-m 'not slow'\"\n" in pyproject and '\nmarkers = ["slow: ' in pyproject
