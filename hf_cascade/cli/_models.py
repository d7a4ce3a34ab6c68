"""Checking, loading and preparing the models of a subcommand (`generate`, `bench`): one place for both."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from ..errors import CascadeError

__all__ = ["check_sources", "load_models", "log", "model_or_default", "pack_all", "use_chat_template"]


def log(message: str) -> None:
    """Progress and notes go to stderr, so stdout keeps only the generated text or the results."""
    print(message, file=sys.stderr, flush=True)


def model_or_default(
    parser: argparse.ArgumentParser, path: str | None, gguf_file: str | None, flag: str
) -> tuple[str, str | None]:
    """`(path, gguf_file)` as given, or the embedded SmolLM2-135M-Instruct GGUF when `path` is `None` (an argparse
    error naming `flag` when its package is not installed)."""
    if path is not None:
        return path, gguf_file
    from .. import loading

    try:
        return loading.default_model_path()
    except FileNotFoundError as e:
        parser.error(f"{flag} not given and {e}")


def check_sources(
    parser: argparse.ArgumentParser,
    device: str,
    target: str,
    gguf_file: str | None,
    drafters: list[str],
    flags: str,
    onednn_linear: bool = False,
) -> None:
    """Fail fast (argparse error naming `flags`) on a bad device, a model source that cannot exist, or
    `--onednn-linear` off CPU."""
    from ..loading import resolve_source

    try:
        torch.device(device)
    except (RuntimeError, ValueError) as e:
        parser.error(f"--device {device!r}: {e}")
    try:
        resolve_source(target, gguf_file)
        for path in drafters:
            resolve_source(path)
    except (OSError, CascadeError) as e:
        parser.error(f"{flags}: {e}")
    if onednn_linear and torch.device(device).type != "cpu":
        parser.error(f"--onednn-linear packs weights for CPU kernels; drop it or use --device cpu, not {device!r}")


def load_models(
    command: str, args: argparse.Namespace, target: str, gguf_file: str | None, drafters: dict[str, str]
) -> tuple[Any, Any, dict[str, Any]] | None:
    """Load the target (with its tokenizer) and the drafters in `args.dtype` on `args.device`.

    Returns:
        `(target, tokenizer, {name: drafter})`, or `None` after printing `hf-cascade COMMAND: error: ...` when a
        model cannot be loaded.
    """
    from ..loading import load_model_and_tokenizer

    try:
        t0 = time.perf_counter()
        log(f"loading target {target} ({args.dtype}, {args.device}) ...")
        model, tokenizer = load_model_and_tokenizer(
            target, gguf_file=gguf_file, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir
        )
        loaded = {}
        for name, path in drafters.items():
            log(f"loading {name} = {path} ...")
            loaded[name], _ = load_model_and_tokenizer(
                path, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir
            )
        log(f"loaded in {time.perf_counter() - t0:.1f} s")
    except (OSError, ImportError, CascadeError) as e:  # missing files/repos, the gguf package, our own checks
        print(f"hf-cascade {command}: error: could not load a model: {e}", file=sys.stderr)
        return None
    if getattr(args, "onednn_linear", False) and not pack_all(command, [model, *loaded.values()]):
        return None
    return model, tokenizer, loaded


def pack_all(command: str, models: list[Any]) -> bool:
    """`use_onednn_linear` on each model (`--onednn-linear`), logging the time it took.

    Returns:
        `True`, or `False` after printing `hf-cascade COMMAND: error: --onednn-linear: ...` when a model cannot be
        packed (no oneDNN in this torch build, an unsupported dtype).
    """
    from ..cpu import use_onednn_linear

    t0 = time.perf_counter()
    try:
        layers = sum(use_onednn_linear(m) for m in models)
    except CascadeError as e:
        print(f"hf-cascade {command}: error: --onednn-linear: {e}", file=sys.stderr)
        return False
    log(f"packed {layers} linear layers for oneDNN in {time.perf_counter() - t0:.1f} s")
    return True


def use_chat_template(tokenizer: Any, requested: bool) -> bool:
    """`requested`, unless the tokenizer has no chat template (then prompts go in as raw text, with a note)."""
    if requested and not getattr(tokenizer, "chat_template", None):
        log("note: the tokenizer has no chat template; feeding prompts as raw text (--no-chat-template)")
        return False
    return requested
