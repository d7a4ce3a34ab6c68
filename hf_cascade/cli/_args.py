"""Argument types and small helpers shared by the `hf-cascade` subcommands."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = [
    "DTYPE_CHOICES",
    "ONEDNN_HELP",
    "THREADS_HELP",
    "add_loading_args",
    "add_model_source_args",
    "finite_float",
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


def add_loading_args(parser: Any, dtype_help: str = "parameter dtype (default: float32)") -> None:
    """`--device`, `--dtype`, `--cache-dir`, `--threads` and `--onednn-linear`: how the models of `generate`, `bench`
    and `bigram` are loaded (`_models.load_models` reads them)."""
    parser.add_argument("--device", default="cpu", help="torch device for all models (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32", help=dtype_help)
    parser.add_argument("--cache-dir", metavar="DIR", help="keep dequantised copies of GGUF models here")
    parser.add_argument("--threads", type=positive_int, metavar="N", help=THREADS_HELP)
    parser.add_argument("--onednn-linear", action="store_true", help=ONEDNN_HELP)


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
