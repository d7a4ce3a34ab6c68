"""The README's quickstart and the examples run as written (offline)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quickstart_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README.md must show a Python quickstart"
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})


def test_readme_has_exactly_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for marker, must_run in (("<!-- demo-command -->", "hf-cascade demo"), ("<!-- test-command -->", "pytest")):
        after = readme.split(marker, 1)[1]
        command = re.search(r"```bash\n(.*?)\n```", after, re.S).group(1)
        assert "\n" not in command and must_run in command


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(example):
    runpy.run_path(str(ROOT / "examples" / example), run_name="__main__")
