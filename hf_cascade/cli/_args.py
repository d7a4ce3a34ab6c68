"""Argument types and small helpers shared by the `hf-cascade` subcommands."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import torch

__all__ = [
    "DTYPE_CHOICES",
    "ONEDNN_HELP",
    "THREADS_HELP",
    "add_loading_args",
    "add_model_source_args",
    "add_placement_args",
    "device_map_arg",
    "finite_float",
    "max_memory_arg",
    "positive_int",
]

DTYPE_CHOICES = ("float32", "bfloat16", "float16")
THREADS_HELP = (
    "torch intra-op threads (torch.set_num_threads; default: torch's choice). On a machine shared with other busy "
    "processes, --threads 1 avoids OpenMP threads stalling on each other"
)
ONEDNN_HELP = (
    "CPU only: pack every linear layer's weight for oneDNN (hf_cascade.cpu.use_onednn_linear) after loading, so a "
    "multi-token forward costs little more than a one-token one; changes float rounding slightly, so every method "
    "runs on the packed models (docs/benchmarks.md)"
)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_MEMORY_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B|B)?$", re.IGNORECASE)


def device_map_arg(text: str) -> str | dict[str, Any]:
    """`--device-map`: `auto`, `balanced`, `balanced_low_0`, `sequential`, one device (`cuda:0`, `cpu`) for the
    whole model, or a JSON object mapping module names to a GPU index, `"cpu"` or `"disk"`."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}): {text!r}") from None
        if not value or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in value.items()):
            raise argparse.ArgumentTypeError(
                f'a JSON device map maps module names to a GPU index, "cpu" or "disk", e.g. '
                f'\'{{"model.embed_tokens": 0, "model.layers": "disk", "lm_head": 0}}\', got {text!r}'
            )
        return value
    if text in _DEVICE_MAP_STRATEGIES:
        return text
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(_DEVICE_MAP_STRATEGIES)}, a device such as cuda:0, or a JSON object of module -> "
            f"device, got {text!r}"
        ) from None
    return text


def max_memory_arg(text: str) -> dict[int | str, str]:
    """`--max-memory 0=10GiB,cpu=30GiB`: accelerate's `max_memory` dict (GPU indices as ints, `cpu`, `disk`, or a
    device name; sizes such as `10GiB`, `500MB` or a number of bytes)."""
    limits: dict[int | str, str] = {}
    for item in text.split(","):
        key, sep, size = (part.strip() for part in item.partition("="))
        if not sep or not key or not size:
            raise argparse.ArgumentTypeError(
                f"write DEVICE=SIZE pairs separated by commas, e.g. 0=10GiB,cpu=30GiB; got {item.strip()!r}"
            )
        if not _MEMORY_SIZE.match(size):
            raise argparse.ArgumentTypeError(
                f"{key}={size}: a size is a number of bytes or a number with a unit (KB, MB, GB, KiB, MiB, GiB, ...)"
            )
        device: int | str = int(key) if key.isdigit() else key
        if device in limits:
            raise argparse.ArgumentTypeError(f"device {key!r} is given twice in {text!r}")
        limits[device] = size
    return limits


def add_placement_args(parser: Any) -> None:
    """`--device-map`, `--offload-folder` and `--max-memory`: accelerate's big-model placement of the target
    (`_models.check_placement` checks them, `_models.placement_kwargs` turns them into `load_model_and_tokenizer`
    arguments)."""
    parser.add_argument(
        "--device-map",
        type=device_map_arg,
        metavar="MAP",
        help="place the target with accelerate: auto, balanced, sequential, one device, or a JSON object of module "
        "-> GPU index/cpu/disk (docs/big-models.md). The drafters still go to --device",
    )
    parser.add_argument(
        "--offload-folder", metavar="DIR", help="where --device-map keeps the target's modules placed on disk"
    )
    parser.add_argument(
        "--max-memory",
        type=max_memory_arg,
        metavar="LIMITS",
        help="memory limits for --device-map auto, e.g. 0=10GiB,cpu=30GiB (GPU 0 and the CPU)",
    )


def add_loading_args(
    parser: Any, dtype_help: str = "parameter dtype (default: float32)", placement: bool = True
) -> None:
    """`--device`, `--dtype`, `--cache-dir`, `--threads`, `--onednn-linear` and (with `placement`) the placement
    flags: how the models of `generate`, `bench` and `bigram` are loaded (`_models.load_models` reads them)."""
    parser.add_argument("--device", default="cpu", help="torch device for all models (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32", help=dtype_help)
    parser.add_argument("--cache-dir", metavar="DIR", help="keep dequantised copies of GGUF models here")
    parser.add_argument("--threads", type=positive_int, metavar="N", help=THREADS_HELP)
    parser.add_argument("--onednn-linear", action="store_true", help=ONEDNN_HELP)
    if placement:
        add_placement_args(parser)


def add_model_source_args(parser: Any, flag: str, what: str, embedded_default: bool) -> None:
    """`flag` (a Hub id, directory or .gguf file) and `--gguf-file`: where the main model of a subcommand comes from.

    Args:
        parser: the (sub)parser or argument group.
        flag (`str`): `"--target"` or `"--model"`.
        what (`str`): the model's role, for the help text.
        embedded_default (`bool`): the flag may be left out for the embedded SmolLM2-135M-Instruct GGUF
            (`_models.model_or_default`); otherwise it is required.
    """
    default = " (default: the embedded SmolLM2-135M-Instruct GGUF)" if embedded_default else ""
    parser.add_argument(
        flag,
        required=not embedded_default,
        metavar="ID_OR_PATH",
        help=f"{what}: Hub id, model directory or .gguf file{default}",
    )
    parser.add_argument("--gguf-file", metavar="F", help=f"GGUF file name inside the {flag} directory or Hub repo")
