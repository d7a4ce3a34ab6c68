"""Argument types and small helpers shared by the `hf-cascade` subcommands."""

from __future__ import annotations

import argparse

__all__ = ["DTYPE_CHOICES", "ONEDNN_HELP", "THREADS_HELP", "finite_float", "positive_int"]

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
