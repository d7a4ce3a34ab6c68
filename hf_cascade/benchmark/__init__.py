"""Benchmarks of hf_cascade against plain greedy decoding and transformers' own speculative methods.

The `hf-cascade bench` command is a thin layer over this package: `prompts` (shipped sets and public-dataset
readers), `methods` (what runs, and one timed run), `runner` (interleaved repeats, exactness check, cost of a forward
pass), `report` (summaries, JSON, Markdown, PNG) and `machine` (what it ran on).
"""

from .machine import busy_warning, describe_machine, machine_info
from .methods import Method, Run, parse_method, run_method
from .prompts import BUILTIN_SETS, DATASETS, REPEATING_SETS, Prompt, load_builtin, load_dataset_file, load_jsonl, sample
from .report import SummaryRow, fmt, summarize, to_json_dict, to_markdown, write_plot, write_reports
from .runner import (
    BenchmarkResult,
    ChatTurns,
    Mismatch,
    ModelCost,
    PromptResult,
    batch_groups,
    cannot_batch,
    measure_cost,
    run_benchmark,
)

__all__ = [
    "BUILTIN_SETS",
    "REPEATING_SETS",
    "DATASETS",
    "BenchmarkResult",
    "ChatTurns",
    "Method",
    "Mismatch",
    "ModelCost",
    "Prompt",
    "PromptResult",
    "Run",
    "SummaryRow",
    "batch_groups",
    "busy_warning",
    "cannot_batch",
    "describe_machine",
    "fmt",
    "load_builtin",
    "load_dataset_file",
    "load_jsonl",
    "machine_info",
    "measure_cost",
    "parse_method",
    "run_benchmark",
    "run_method",
    "sample",
    "summarize",
    "to_json_dict",
    "to_markdown",
    "write_plot",
    "write_reports",
]
