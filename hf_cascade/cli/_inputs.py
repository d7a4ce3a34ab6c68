"""The drafter and prompt-source flags `bench` and `tune` share, and reading them."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..benchmark import (
    BUILTIN_SETS,
    DATASETS,
    REPEATING_SETS,
    Prompt,
    load_builtin,
    load_dataset_file,
    load_jsonl,
    sample,
)
from ..errors import CascadeError
from ._args import positive_int
from ._models import check_sources, model_or_default

__all__ = [
    "add_drafter_arg",
    "add_prompt_args",
    "add_run_args",
    "load_prompts",
    "parse_drafters",
    "resolve_target",
    "run_settings",
]


def add_drafter_arg(parser: Any) -> None:
    """`--drafter NAME=ID_OR_PATH` (repeatable), read by `parse_drafters`."""
    parser.add_argument(
        "--drafter",
        action="append",
        default=[],
        metavar="NAME=ID_OR_PATH",
        help="register a drafter model under NAME (repeatable, largest first; GGUF: give the .gguf file path)",
    )


def add_prompt_args(parser: Any, default_sample: int | None = None) -> None:
    """`--builtin`, `--prompts`, `--dataset`, `--data-file`, `--sample`, `--seed` in a group "prompts", read by
    `load_prompts` (no source: every built-in set)."""
    src = parser.add_argument_group("prompts (default: all built-in sets)")
    src.add_argument(
        "--builtin",
        metavar="SETS",
        help=(
            f"comma-separated built-in prompt sets: {', '.join(BUILTIN_SETS)} (18 prompts each; the default), and "
            f"sets that repeat across calls, run in order: {', '.join(REPEATING_SETS)}"
        ),
    )
    src.add_argument(
        "--prompts",
        action="append",
        default=[],
        metavar="FILE",
        help=(
            'JSONL prompt file, one {"id", "category", "prompt"} object per line (repeatable); "prompt" may be a list '
            "of user turns (a conversation: each later turn is sent with the method's own earlier answers)"
        ),
    )
    src.add_argument("--dataset", choices=DATASETS, help="a public dataset read from --data-file")
    src.add_argument("--data-file", metavar="PATH", help="local file (or MMLU CSV directory) of --dataset")
    every = f"default: {default_sample}" if default_sample else "default: all"
    src.add_argument(
        "--sample",
        type=positive_int,
        default=default_sample,
        metavar="N",
        help=f"use N prompts of each source, drawn at random ({every})",
    )
    src.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --sample (default: 0)")


def parse_drafters(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
    """`{name: id_or_path}` from the `--drafter` flags, in order (argparse errors for a malformed or repeated one)."""
    drafters: dict[str, str] = {}
    for item in args.drafter:
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            parser.error(f"--drafter {item!r}: write NAME=ID_OR_PATH, e.g. --drafter small=Qwen/Qwen2.5-0.5B-Instruct")
        if name == "target" or name in drafters:
            parser.error(f"--drafter {item!r}: the name {name!r} is {'reserved' if name == 'target' else 'taken'}")
        drafters[name] = path
    return drafters


def load_prompts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Prompt]:
    """The prompts the `add_prompt_args` flags select (argparse errors for unknown sets, unreadable files, ids that
    repeat across sources)."""
    if (args.dataset is None) != (args.data_file is None):
        parser.error("--dataset and --data-file go together, e.g. --dataset gsm8k --data-file test.jsonl")
    sources = []
    try:
        if args.builtin:
            names = [n.strip() for n in args.builtin.split(",") if n.strip()]
            unknown = [n for n in names if n not in BUILTIN_SETS + REPEATING_SETS]
            if unknown:
                parser.error(
                    f"--builtin: unknown set(s) {unknown}; choose from {', '.join(BUILTIN_SETS + REPEATING_SETS)}"
                )
            sources += [load_builtin(n) for n in names]
        sources += [load_jsonl(path) for path in args.prompts]
        if args.dataset:
            sources.append(load_dataset_file(args.dataset, args.data_file))
        if not sources:
            sources = [load_builtin(n) for n in BUILTIN_SETS]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, CascadeError) as e:  # unreadable or malformed files
        parser.error(f"prompts: {e}")
    prompts = [p for source in sources for p in sample(source, args.sample, args.seed)]
    ids = [p.id for p in prompts]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        parser.error(f"prompts: duplicate ids across sources: {duplicates[:5]}")
    return prompts


def add_run_args(group: Any, *, max_new_tokens: int, repeats: int, repeats_help: str, warmup_tokens: int) -> None:
    """`--max-new-tokens`, `--repeats`, `--warmup-tokens` and `--no-chat-template`: how each timed run goes."""
    group.add_argument(
        "--max-new-tokens", type=positive_int, default=max_new_tokens, metavar="N", help=f"default: {max_new_tokens}"
    )
    group.add_argument(
        "--repeats", type=positive_int, default=repeats, metavar="R", help=f"{repeats_help} (default: {repeats})"
    )
    group.add_argument(
        "--warmup-tokens",
        type=int,
        default=warmup_tokens,
        metavar="N",
        help=f"untimed warm-up run of each method on the first prompt, N tokens (0: none; default: {warmup_tokens})",
    )
    group.add_argument(
        "--no-chat-template", action="store_true", help="feed prompts as raw text instead of chat messages"
    )


def resolve_target(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    drafters: dict[str, str],
    flags: str = "--target/--gguf-file/--drafter",
) -> tuple[str, str | None]:
    """`(target path, gguf file)` from `--target`/`--gguf-file` (the embedded SmolLM2 by default), after checking the
    device and that every model source can exist (argparse errors naming `flags` otherwise)."""
    target_path, gguf = model_or_default(parser, args.target, args.gguf_file, "--target")
    check_sources(
        parser,
        args.device,
        target_path,
        gguf,
        list(drafters.values()),
        flags,
        onednn_linear=args.onednn_linear,
        args=args,
    )
    return target_path, gguf


def run_settings(
    args: argparse.Namespace, target: str, gguf: str | None, drafters: dict[str, str], chat: bool
) -> dict[str, Any]:
    """How a `bench` or `tune` run was made, as its reports record it (models, dtype, device, lengths, prompts)."""
    return {
        "target": os.path.join(target, gguf) if gguf else target,
        "drafters": drafters,
        "dtype": args.dtype,
        "device": args.device,
        "onednn_linear": args.onednn_linear,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "warmup_tokens": args.warmup_tokens,
        "chat_template": chat,
        "prompt_sources": {
            "builtin": args.builtin,
            "prompts": args.prompts,
            "dataset": args.dataset,
            "data_file": args.data_file,
            "sample": args.sample,
            "seed": args.seed,
        },
    }
