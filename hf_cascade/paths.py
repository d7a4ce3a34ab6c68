"""Telling local paths from Hub repository ids, so that a mistyped path fails at once instead of going to the Hub.

Used by model loading (`hf_cascade.loading`) and by `CascadeConfig.from_pretrained`; kept apart from `loading` so
that the generation code (which an exported Hub repository bundles) does not pull in the model loaders.
"""

from __future__ import annotations

import os

from .errors import CascadeValueError

__all__ = ["is_local_path", "missing_path_error"]


def is_local_path(name_or_path: str | os.PathLike) -> bool:
    """Whether a model or config reference means a local path rather than a Hub repository id.

    The rule (so a mistyped path fails at once with "path does not exist" instead of a Hub error, or a long wait
    offline): a reference is a local path when

    - it exists on disk, or
    - it is absolute, or starts with `~`, `.` or `..` followed by a separator (`./m`, `../m`, `~/m`), or is `.`/`..`,
      or
    - it is not a valid Hub id (`huggingface_hub.utils.validate_repo_id`: `name` or `owner/name` of letters, digits,
      `-`, `_` and `.`, so `a/b/c` is a path), or
    - it has the `owner/name` form but `owner` is an existing local folder (`configs/x` run where `configs/` exists).

    Anything else (`gpt2`, `HuggingFaceTB/SmolLM2-135M-Instruct`) is a Hub id, as in transformers.

    Args:
        name_or_path (`str` or `os.PathLike`): the reference as the user gave it.

    Returns:
        `bool`: `True` for a local path.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = os.fspath(name_or_path)
    path = os.path.expanduser(text)
    if os.path.exists(path) or os.path.isabs(path) or text.startswith("~"):
        return True
    separators = tuple(s for s in (os.sep, os.altsep, "/") if s)
    if text in (".", "..") or text.startswith(tuple(p + s for p in (".", "..") for s in separators)):
        return True
    try:
        validate_repo_id(text)
    except HFValidationError:
        return True
    owner = text.split("/", 1)[0] if "/" in text else None
    return owner is not None and os.path.isdir(owner)


def missing_path_error(name_or_path: str | os.PathLike, expected: str) -> CascadeValueError:
    """The error for a local-looking reference (`is_local_path`) that does not exist.

    Args:
        name_or_path (`str` or `os.PathLike`): the reference as the user gave it.
        expected (`str`): what to pass instead, e.g. `"an existing model directory, a .gguf file"`.

    Returns:
        `CascadeValueError`: "<reference>: path does not exist; pass ...", saying why an `owner/name` form was not
        taken for a Hub id when its `owner` is a local folder.
    """
    text = os.fspath(name_or_path)
    owner = text.split("/", 1)[0]
    why = ""
    if "/" in text and os.path.isdir(owner) and not os.path.isabs(text):
        why = f" (./{owner} is a local folder, so this is read as a path; for the Hub id run from another folder)"
    return CascadeValueError(f"{text}: path does not exist{why}; pass {expected}, or a Hub repository id (owner/name).")
