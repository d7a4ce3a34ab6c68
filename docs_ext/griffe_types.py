"""A Griffe extension for the API reference (mkdocs.yml): types written HF-style in docstrings render without
literal backticks.

hf_cascade's docstrings follow transformers' style, `name (`torch.LongTensor` of shape `(1, n)`): ...`, and
`Returns:` / `Raises:` entries such as `` `dict`: the parsed results``. Griffe's Google parser keeps the text
between the parentheses (or before the colon) as the type, and mkdocstrings shows it inside `<code>`, so the
backticks appeared literally. This extension removes backticks from those type parts only (descriptions keep their
Markdown) before the docstring is parsed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["HFDocstringTypes"]

_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Returns|Raises|Yields|Attributes)\s*:\s*$")
_PARAM = re.compile(r"^(\s+)(\*{0,2}[\w.]+)\s+\((.*?)\):")  # name (type): description
_TYPED = re.compile(r"^(\s+)(`[^`]+`[^:]*?):(\s|$)")  # `type` ...: description (Returns, Raises)


def strip_type_backticks(text: str) -> str:
    """`text` with backticks removed from the type of each entry of Args/Returns/Raises/... sections."""
    lines, section_indent = text.split("\n"), None
    for i, line in enumerate(lines):
        header = _SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
            continue
        if section_indent is None:
            continue
        if line.strip() and len(line) - len(line.lstrip()) <= section_indent:
            section_indent = None  # the section ended
            continue
        param = _PARAM.match(line)
        if param:
            lines[i] = f"{param.group(1)}{param.group(2)} ({param.group(3).replace('`', '')}):" + line[param.end() :]
            continue
        typed = _TYPED.match(line)
        if typed:
            lines[i] = f"{typed.group(1)}{typed.group(2).replace('`', '')}:" + line[typed.end(2) + 1 :]
    return "\n".join(lines)


class HFDocstringTypes(griffe.Extension):
    """Strip backticks from docstring types (see the module docstring)."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = strip_type_backticks(obj.docstring.value)
