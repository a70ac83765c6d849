"""The README's Lightning recipe (section "Scaling out") runs as written: two DDP processes on
CPU, RELAX's control variate moves, by the same amount on both."""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("lightning")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recipe():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("\n## Scaling out", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_lightning_recipe_trains_relax_on_two_ddp_processes(tmp_path):
    script = tmp_path / "recipe.py"
    script.write_text(_recipe())
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    moved = dict(re.findall(r"process (\d): the control variate moved by ([0-9.e+-]+\d)",
                            result.stdout))  # the two processes may interleave their lines
    assert sorted(moved) == ["0", "1"], result.stdout
    assert moved["0"] == moved["1"] and float(moved["0"]) > 0
