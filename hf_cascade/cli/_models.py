"""Checking, loading and preparing the models of a subcommand (`generate`, `bench`): one place for both."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

from ..errors import CascadeError

__all__ = [
    "check_placement",
    "check_sources",
    "load_models",
    "log",
    "model_or_default",
    "pack_all",
    "placement_kwargs",
    "use_chat_template",
]


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
    args: argparse.Namespace | None = None,
) -> None:
    """Fail fast (argparse error naming `flags`) on a bad device, a model source that cannot exist,
    `--onednn-linear` off CPU, or (with `args`) inconsistent placement flags (`check_placement`)."""
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
    if args is not None:
        check_placement(parser, args)


def check_placement(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argparse errors for placement flags that cannot work together: `--offload-folder`/`--max-memory` without
    `--device-map`, a device map with disk modules but no `--offload-folder`, an offload folder that is a file."""
    device_map = getattr(args, "device_map", None)
    folder = getattr(args, "offload_folder", None)
    if device_map is None:
        given = [flag for flag, value in (("--offload-folder", folder), ("--max-memory", args.max_memory)) if value]
        if given:
            parser.error(
                f"{' and '.join(given)} place the target with accelerate and need --device-map (e.g. --device-map "
                "auto); add it or drop them"
            )
        return
    if isinstance(device_map, dict) and "disk" in device_map.values() and folder is None:
        parser.error("--device-map puts modules on disk; add --offload-folder DIR to say where they are kept")
    if folder is not None and os.path.isfile(folder):
        parser.error(f"--offload-folder {folder} is a file; give a folder (created if missing)")


def placement_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The target's `load_model_and_tokenizer` placement arguments from the placement flags (`{}` without
    `--device-map`: then the target goes to `--device` like the drafters)."""
    device_map = getattr(args, "device_map", None)
    if device_map is None:
        return {}
    return {"device_map": device_map, "offload_folder": args.offload_folder, "max_memory": args.max_memory}


def load_models(
    command: str, args: argparse.Namespace, target: str, gguf_file: str | None, drafters: dict[str, str]
) -> tuple[Any, Any, dict[str, Any]] | None:
    """Load the target (with its tokenizer) and the drafters in `args.dtype` on `args.device`; the target is placed
    by accelerate instead when `--device-map` is given (`placement_kwargs`), the drafters stay on `args.device`.

    Returns:
        `(target, tokenizer, {name: drafter})`, or `None` after printing `hf-cascade COMMAND: error: ...` when a
        model cannot be loaded.
    """
    from ..loading import load_model_and_tokenizer

    try:
        t0 = time.perf_counter()
        placement = placement_kwargs(args)
        where = f"device map {placement['device_map']}" if placement else args.device
        log(f"loading target {target} ({args.dtype}, {where}) ...")
        model, tokenizer = load_model_and_tokenizer(
            target,
            gguf_file=gguf_file,
            dtype=args.dtype,
            device="cpu" if placement else args.device,
            cache_dir=args.cache_dir,
            **placement,
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
    # A model accelerate placed keeps hooks that move its weights in at each forward: it is not packed.
    packable = [*([] if placement else [model]), *loaded.values()]
    if getattr(args, "onednn_linear", False) and not pack_all(command, packable):
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
