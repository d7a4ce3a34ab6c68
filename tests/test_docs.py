"""Every Python block of README.md and docs/*.md, and every example, runs as written (offline).

The blocks of one file run in order in one namespace, so a block may continue from an earlier one of the same file
(the text says so where it does). A block that cannot run offline (it needs the Hub, real checkpoints or your own
models, or it shows a signature) is marked by this HTML comment, invisible on GitHub and in the docs site, on the
line right before its fence; the reason after the colon is for the reader:

    <!-- docs-test: skip: needs the Hub -->
    ```python
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARKER = "<!-- docs-test: skip"
DOC_FILES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """`(line number of the code's first line, code, skipped)` for each ```python block of a Markdown text."""
    blocks = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        previous = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        blocks.append((line + 1, match.group(1), previous.startswith(SKIP_MARKER)))
    return blocks


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine the tiny models' OpenMP threads otherwise spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("doc", DOC_FILES)
def test_doc_python_blocks_run(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files
    namespace = {"__name__": "docs"}
    for line, code, skipped in python_blocks((ROOT / doc).read_text(encoding="utf-8")):
        if not skipped:
            # Padded so that a traceback names the line in the Markdown file.
            exec(compile("\n" * (line - 1) + code, str(ROOT / doc), "exec"), namespace)


def test_readme_leads_with_a_runnable_quickstart():
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks and not blocks[0][2], "README.md must open with a Python quickstart that is run"


def test_skip_markers_sit_right_before_a_python_block():
    """A marker that drifted away from its block would silently stop skipping it, or skip nothing."""
    for doc in DOC_FILES:
        text = (ROOT / doc).read_text(encoding="utf-8")
        marked = sum(skipped for _, _, skipped in python_blocks(text))
        assert text.count(SKIP_MARKER) == marked, f"{doc}: a {SKIP_MARKER} comment is not right before a ```python"


def test_python_blocks_parse():
    assert python_blocks("a\n<!-- docs-test: skip: x -->\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n") == [
        (4, "x = 1\n", True),
        (8, "y = 2\n", False),
    ]


def test_readme_has_exactly_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for marker, must_run in (("<!-- demo-command -->", "hf-cascade demo"), ("<!-- test-command -->", "pytest")):
        after = readme.split(marker, 1)[1]
        command = re.search(r"```bash\n(.*?)\n```", after, re.S).group(1)
        assert "\n" not in command and must_run in command


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(example):
    runpy.run_path(str(ROOT / "examples" / example), run_name="__main__")
