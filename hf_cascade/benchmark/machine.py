"""What machine a benchmark ran on: recorded with every result, because timings mean nothing without it."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

__all__ = ["busy_warning", "describe_machine", "machine_info"]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on Windows
        return None


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """CPU, thread count, load, accelerator and library versions, as a JSON-ready dict."""
    import transformers

    from .. import __version__

    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(),
        "load_average_1min": _load_average(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_cascade": __version__,
    }
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for logs and reports."""
    load = f", load average {info['load_average_1min']:.2f}" if info.get("load_average_1min") is not None else ""
    gpu = f"; GPU {info['gpu']}" if info.get("gpu") else ""
    return (
        f"{info['cpu']} ({info['logical_cpus']} logical CPUs{load}), torch threads {info['torch_threads']}{gpu}; "
        f"python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"hf_cascade {info['hf_cascade']}"
    )


def busy_warning() -> str | None:
    """A note when other processes keep the CPU busy: timings are then noise, and OpenMP threads may stall."""
    load = _load_average()
    cpus = os.cpu_count() or 1
    if load is None or load < 0.5 * cpus:
        return None
    hint = " Try --threads 1." if torch.get_num_threads() > 1 else ""
    return (
        f"note: other processes are using the CPU (load average {load:.2f} on {cpus} CPUs); timings will be noisy, "
        f"and OpenMP threads can stall each other when a core is taken.{hint}"
    )
