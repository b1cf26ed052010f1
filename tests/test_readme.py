"""The README's promises that code can check: its metric example runs as printed, its two commands exist, and the
make targets and console commands it names are real."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> str:
    m = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", README, re.S)
    assert m, f"README.md has no python block after {marker!r}"
    return m.group(1)


def test_the_metric_example_runs_as_printed(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_block_after("<!-- example: metric -->"))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"pct = \d+\.\d %", proc.stdout), proc.stdout


def test_the_two_commands_and_the_ci_entry():
    assert "make reproduce" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_named_make_targets_exist():
    named = set(re.findall(r"make ((?:reproduce|test|bench|lint|data)[\w-]*)", README))
    out = subprocess.run(
        ["make", "-n", *sorted(t for t in named if "<" not in t)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PY": sys.executable},
    )
    assert "No rule to make target" not in out.stderr, out.stderr[-2000:]


def test_named_console_commands_are_declared():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name in set(re.findall(r"\b(equivrepro-[a-z]+)\b", README)):
        assert f"{name} =" in pyproject, name
