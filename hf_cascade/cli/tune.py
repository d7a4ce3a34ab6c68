"""`hf-cascade tune`: measure the models on this machine and write the cascade config that runs fastest here.

Times every model's forward pass, reads each drafter's acceptance from cascade runs on the prompts, searches
k-matrices and lenience with the expected-walltime model (`hf_cascade.tuning.ewif`), confirms the best few by
interleaved timed runs against greedy, and writes `cascade_config.json`, `tune_report.md` and `tune_result.json`
(`hf_cascade.tune`); prints the chosen configuration and how close it came to the bound (`hf_cascade.tuning.bound`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from ..config import CONFIG_NAME, CascadeConfig
from ..errors import CascadeError
from ._args import add_loading_args, add_model_source_args, finite_float, positive_int
from ._inputs import (
    add_drafter_arg,
    add_prompt_args,
    add_run_args,
    load_prompts,
    parse_drafters,
    resolve_target,
    run_settings,
)
from ._models import load_models, log, use_chat_template

__all__ = ["add_parser", "run"]


def _lenience_list(text: str) -> tuple[float, ...]:
    values = tuple(finite_float(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 1, e.g. 1,2; got {text!r}")
    return values


def add_parser(sub: Any) -> None:
    """Register `tune` on the subparsers object of the `hf-cascade` parser."""
    p = sub.add_parser(
        "tune",
        help="measure this machine and write the cascade config (k-matrix, lenience) that runs fastest here",
        description=(
            "Time each model's forward pass over 1-16 new tokens, read each drafter's acceptance from cascade runs "
            "on the prompts, search k-matrices and lenience with an expected-walltime model, confirm the best by "
            f"timed runs interleaved with greedy (identical output required), and write {CONFIG_NAME}, "
            "tune_report.md and tune_result.json (with the bound: the best speedup any draft-length policy could "
            "reach here) into --out. Use the config with `hf-cascade bench --tuned` and the same --drafter list."
        ),
    )
    add_model_source_args(p, "--target", "target model", embedded_default=True)
    add_drafter_arg(p)
    add_prompt_args(p, default_sample=2)
    run_group = p.add_argument_group("tuning")
    add_run_args(
        run_group,
        max_new_tokens=64,
        repeats=2,
        repeats_help="timed repeats per prompt when confirming",
        warmup_tokens=8,
    )
    run_group.add_argument(
        "--confirm", type=int, default=3, metavar="N", help="best predicted configs timed for real (default: 3)"
    )
    run_group.add_argument(
        "--lenience",
        type=_lenience_list,
        metavar="L1,L2",
        help="lenience values to try (default: 1,2 where a drafter reviews a drafter, else 1)",
    )
    run_group.add_argument(
        "--max-neural-k", type=positive_int, default=8, metavar="K", help="largest neural k-matrix entry (default: 8)"
    )
    run_group.add_argument(
        "--config", metavar="CONFIG", help=f"base {CONFIG_NAME} whose other settings (Max-Gram, ...) are kept"
    )
    run_group.add_argument(
        "--no-onednn-probe",
        action="store_true",
        help="CPU: skip timing a oneDNN-packed copy of the target (the probe needs memory for a second copy)",
    )
    add_loading_args(run_group)
    p.add_argument(
        "--out",
        default="tune-results",
        metavar="DIR",
        help=f"where {CONFIG_NAME}, tune_report.md and tune_result.json go (default: ./tune-results)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..tuning import tune
    from ..tuning.bound import verdict
    from ..tuning.report import describe_chosen

    drafter_paths = parse_drafters(args, parser)
    prompts = load_prompts(args, parser)
    if args.confirm < 0:
        parser.error(f"--confirm must be >= 0 (0 trusts the model), got {args.confirm}")
    base = None
    if args.config:
        try:
            base = CascadeConfig.from_pretrained(args.config)
        except (OSError, CascadeError) as e:
            parser.error(f"--config {args.config!r}: {e}")
    if not drafter_paths and base is not None and not base.use_max_gram:
        parser.error(f"--config {args.config!r} turns Max-Gram off and no --drafter is given: nothing to tune")
    for value in args.lenience or ():
        try:
            CascadeConfig(lenience=value)
        except CascadeError as e:
            parser.error(f"--lenience: {e}")
    target_path, gguf = resolve_target(args, parser, drafter_paths)
    models = load_models("tune", args, target_path, gguf, drafter_paths)
    if models is None:
        return 1
    target, tokenizer, drafters = models
    chat = use_chat_template(tokenizer, not args.no_chat_template)
    settings = run_settings(args, target_path, gguf, drafter_paths, chat)
    try:
        result = tune(
            target,
            drafters,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            base_config=base,
            lenience=args.lenience,
            confirm=args.confirm,
            repeats=args.repeats,
            warmup_tokens=args.warmup_tokens,
            max_neural=args.max_neural_k,
            chat_template=chat,
            onednn_probe=not args.no_onednn_probe,
            status=log,
            settings=settings,
        )
    except CascadeError as e:
        print(f"hf-cascade tune: error: {e}", file=sys.stderr)
        return 1
    command = "hf-cascade " + " ".join(shlex.quote(a) for a in args.argv)
    paths = result.save(args.out, command)
    chosen = next(c for c in result.candidates if c.label == result.chosen)
    speedup = f"{chosen.confirmed_speedup:.2f}x greedy measured" if chosen.confirmed_speedup else "not confirmed"
    print(f"{describe_chosen(chosen)}: {speedup}")
    if result.bound is not None:
        print(f"bound: {verdict(chosen.confirmed_speedup, result.bound, chosen.predicted_speedup)}")
    for note in result.notes:
        print(f"- {note}")
    log("wrote " + ", ".join(paths))
    return 0
