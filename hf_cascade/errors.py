"""Exception types of hf_cascade.

Every error the library raises on purpose (bad input, an unsupported combination, a file it cannot use) is a
`CascadeError`. The concrete classes also derive from the builtin a caller would expect (`ValueError`, `TypeError`),
so `except ValueError` keeps working, while `except hf_cascade.CascadeError` (what the CLI catches) separates the
library's own refusals from bugs, which keep their traceback.
"""

from __future__ import annotations

__all__ = ["CascadeError", "CascadeTypeError", "CascadeValueError"]


class CascadeError(Exception):
    """Base class of the errors hf_cascade raises on purpose; the message names the argument, the value and the fix."""


class CascadeValueError(CascadeError, ValueError):
    """An argument, setting or file has a value the cascade cannot use."""


class CascadeTypeError(CascadeError, TypeError):
    """An argument has a type the cascade cannot use."""
