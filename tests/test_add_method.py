"""The README's "Add a method" section, followed as written in a copy of the repository: its method file
and cell file written verbatim, its commands run in order. The method is found by `kd list`, a run
trains it, its golden value is added and checked, and the diff is those three files and nothing else."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("\n## Add a method\n", 1)[1].split("\n## ", 1)[0]


def _blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w+)\n(.*?)^```$", section, re.S | re.M)


def _git(cwd: Path, *args: str) -> str:
    p = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _copy_of_the_repository(dest: Path) -> None:
    """The tracked files as they are in this working tree, committed in a fresh repository."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip("needs a git checkout (the test diffs a copy of it)")
    for rel in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "copy")


def _command(line: str) -> list[str]:
    """A README command as this environment runs it: `kd` is the copy's CLI, `python` this interpreter."""
    words = shlex.split(line.split("  #")[0])
    head = {"kd": [sys.executable, "-m", "kd.cli"], "python": [sys.executable],
            "pytest": [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]}[words[0]]
    return head + words[1:]


def test_the_readme_walk_through_adds_a_method_in_three_files(tmp_path):
    blocks = _blocks(_section())
    files = [(body.splitlines()[0].removeprefix("# "), body) for lang, body in blocks if lang in ("python", "yaml")]
    (commands,) = [body.splitlines() for lang, body in blocks if lang == "bash"]
    assert [f for f, _ in files] == ["kd/methods/logit_l2.py", "benchmarks/digits/logit_l2.yaml"]
    copy = tmp_path / "repo"
    _copy_of_the_repository(copy)
    for rel, body in files:
        assert not (copy / rel).exists(), f"{rel}: the example must be new"
        (copy / rel).write_text(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env.update(PYTHONPATH=str(copy), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    out = []
    for line in filter(str.strip, commands):
        p = subprocess.run(_command(line), cwd=copy, env=env, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, f"{line}\n{p.stdout}\n{p.stderr}"
        out.append(p.stdout + p.stderr)
    listed, ran, regen, golden = out
    assert "digits-sub400/logit_l2/tiny_s_from_tiny_t/digits" in listed and "\n1 cells;" in listed
    assert "digits-sub400/logit_l2/tiny_s_from_tiny_t/digits~epochs=2 seed 0: top-1 last" in ran
    assert "added 1 (logit_l2)" in regen and "changed 0" in regen and "removed 0" in regen
    assert re.search(r"\d+ passed", golden) and "failed" not in golden
    status = sorted(_git(copy, "status", "--porcelain").splitlines())
    assert status == [" M tests/golden/losses.json", "?? benchmarks/digits/logit_l2.yaml", "?? kd/methods/logit_l2.py"]
    diff = _git(copy, "diff", "-U0", "tests/golden/losses.json").splitlines()
    changed = [ln for ln in diff if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert changed and all(ln.startswith("+") for ln in changed), changed     # lines added, none rewritten
    assert '+ "logit_l2": {' in changed
