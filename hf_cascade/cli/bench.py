"""`hf-cascade bench`: greedy vs transformers' prompt lookup and assisted generation vs hf_cascade configurations.

Every method runs on every prompt, interleaved after a warm-up, `--repeats` times; the reports give medians, per
category geometric means of the speedup over greedy, forward passes and time per model, SWI and the exactness check.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

from ..benchmark import (
    BUILTIN_SETS,
    DATASETS,
    REPEATING_SETS,
    Method,
    busy_warning,
    describe_machine,
    fmt,
    load_builtin,
    load_dataset_file,
    load_jsonl,
    machine_info,
    parse_method,
    run_benchmark,
    sample,
    summarize,
    write_reports,
)
from ..benchmark.suffix import suffix_available
from ..errors import CascadeError
from ._args import add_loading_args, add_model_source_args, positive_int
from ._models import check_sources, load_models, log, model_or_default, use_chat_template

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register `bench` on the subparsers object of the `hf-cascade` parser."""
    p = sub.add_parser(
        "bench",
        help="benchmark hf_cascade against greedy, prompt lookup and assisted generation (interleaved, medians)",
        description=(
            "Time generation methods on prompt sets, interleaved (A B C A B C) after a warm-up, with medians over "
            "repeats; check that every output equals greedy's; write results.json, report.md and speedup.png. "
            "Methods: greedy (always run, the reference), prompt-lookup[:N], assisted:DRAFTER (transformers, one "
            "drafter), cascade[:DRAFTER,...][@CONFIG] (hf_cascade; Max-Gram only without drafters), "
            "cascade+memory[:DRAFTER,...][@CONFIG] (a MaxGramMemory kept across the prompts, in order), suffix[:local] "
            "(vLLM's SuffixDecoding, if arctic_inference is built; skipped otherwise); prefix LABEL= to name one. Default methods: greedy, prompt-lookup, then per drafter assisted:D, then cascade (Max-Gram "
            "only) and cascade over all drafters. Exits with status 1 when an output differs from greedy's."
        ),
    )
    add_model_source_args(p, "--target", "target model", embedded_default=True)
    p.add_argument(
        "--drafter",
        action="append",
        default=[],
        metavar="NAME=ID_OR_PATH",
        help="register a drafter model under NAME for the methods (repeatable; GGUF: give the .gguf file path)",
    )
    p.add_argument(
        "--method", action="append", default=[], metavar="SPEC", help="a method to run (repeatable; see above)"
    )
    src = p.add_argument_group("prompts (default: all built-in sets)")
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
        help='JSONL prompt file, one {"id", "category", "prompt"} object per line (repeatable)',
    )
    src.add_argument("--dataset", choices=DATASETS, help="a public dataset read from --data-file")
    src.add_argument("--data-file", metavar="PATH", help="local file (or MMLU CSV directory) of --dataset")
    src.add_argument("--sample", type=positive_int, metavar="N", help="use N prompts of each source, drawn at random")
    src.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --sample (default: 0)")
    run_group = p.add_argument_group("running")
    run_group.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N", help="default: 128")
    run_group.add_argument(
        "--repeats", type=positive_int, default=3, metavar="R", help="timed runs per method and prompt (default: 3)"
    )
    run_group.add_argument(
        "--warmup-tokens",
        type=int,
        default=16,
        metavar="N",
        help="untimed warm-up run of each method on the first prompt, N tokens (0: none; default: 16)",
    )
    run_group.add_argument(
        "--no-chat-template", action="store_true", help="feed prompts as raw text instead of chat messages"
    )
    add_loading_args(
        run_group, dtype_help="parameter dtype (default: float32; exactness checks need float32, see docs/lossless.md)"
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--out", default="bench-results", metavar="DIR", help="report directory (default: ./bench-results)"
    )
    out.add_argument("--no-plot", action="store_true", help="skip speedup.png (the plot needs matplotlib)")
    out.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.set_defaults(func=run)


def _parse_drafters(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
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


def _methods(args: argparse.Namespace, parser: argparse.ArgumentParser, drafters: dict[str, str]) -> list[Method]:
    specs = args.method or [
        "prompt-lookup",
        *(f"assisted:{name}" for name in drafters),
        "cascade",
        *([f"cascade:{','.join(drafters)}"] if drafters else []),
    ]
    methods = [Method("greedy", "greedy")]
    for spec in specs:
        try:
            method = parse_method(spec)
        except CascadeError as e:
            parser.error(f"--method: {e}")
        if method.kind == "greedy":
            continue  # greedy always runs first, as the reference
        unknown = [name for name in method.drafters if name not in drafters]
        if unknown:
            parser.error(
                f"--method {spec!r}: drafter(s) {unknown} not registered; add --drafter NAME=ID_OR_PATH "
                f"(registered: {sorted(drafters) or 'none'})"
            )
        if any(m.label == method.label for m in methods):
            parser.error(f"--method {spec!r}: the label {method.label!r} is used twice; name it with LABEL=SPEC")
        if method.kind == "suffix" and (missing := suffix_available()) is not None:
            log(f"skipping --method {spec!r}: {missing}")  # an optional anchor, never a dependency
            continue
        methods.append(method)
    return methods


def _prompts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list:
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


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..loading import encode_prompt, pad_token_id

    # Everything that can be checked without loading a model is checked first.
    drafter_paths = _parse_drafters(args, parser)
    methods = _methods(args, parser, drafter_paths)
    prompts = _prompts(args, parser)
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("the PNG plot needs matplotlib: pip install 'hf_cascade[bench]', or pass --no-plot")
    target_path, gguf = model_or_default(parser, args.target, args.gguf_file, "--target")
    check_sources(
        parser,
        args.device,
        target_path,
        gguf,
        list(drafter_paths.values()),
        "--target/--gguf-file/--drafter",
        onednn_linear=args.onednn_linear,
        args=args,
    )
    used = {name for m in methods for name in m.drafters}
    unused = sorted(set(drafter_paths) - used)
    if unused:
        parser.error(f"--drafter {unused}: registered but no --method uses it")

    machine = machine_info(args.device)
    log(f"machine: {describe_machine(machine)}")
    note = busy_warning()
    if note:
        log(note)
    models = load_models("bench", args, target_path, gguf, drafter_paths)
    if models is None:
        return 1
    target, tokenizer, drafters = models
    chat = use_chat_template(tokenizer, not args.no_chat_template)
    encoded = [(p, encode_prompt(tokenizer, p.text, chat, target.device)) for p in prompts]
    generation_kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    pad = pad_token_id(target, tokenizer)
    if pad is not None:
        generation_kwargs["pad_token_id"] = pad
    settings = {
        "target": os.path.join(target_path, gguf) if gguf else target_path,
        "drafters": drafter_paths,
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
    total = len(prompts) * len(methods) * args.repeats
    log(f"{len(prompts)} prompts x {len(methods)} methods x {args.repeats} repeats = {total} timed runs")
    bar = None

    def progress(n: int) -> None:
        # The bar starts with the timed runs: the cost measurement and the warm-up before them (minutes on a large
        # model) would otherwise count as time spent on 0 runs and make the ETA nonsense.
        nonlocal bar
        if bar is None:
            from tqdm.auto import tqdm

            log(f"timed runs: {total}")
            bar = tqdm(total=total, unit="run", file=sys.stderr)
        bar.update(n)

    try:
        result = run_benchmark(
            target,
            encoded,
            methods,
            drafters,
            generation_kwargs,
            repeats=args.repeats,
            warmup_tokens=args.warmup_tokens,
            settings=settings,
            machine=machine,
            progress=None if args.no_progress else progress,
            status=log,
        )
    finally:
        if bar is not None:
            bar.close()
    command = "hf-cascade " + " ".join(shlex.quote(a) for a in args.argv)
    paths = write_reports(result, args.out, command, plot=not args.no_plot)
    _print_summary(result)
    log("wrote " + ", ".join(paths))
    if result.mismatches:
        print("\nMISMATCH: outputs differ from greedy decoding:", file=sys.stderr)
        for m in result.mismatches:
            print(f"  {m}", file=sys.stderr)
        return 1
    return 0


def _print_summary(result: Any) -> None:
    print(f"{'category':<14}{'method':<28}{'tok/s':>8}{'speedup':>9}{'tok/fwd':>9}{'outside':>9}  identical")
    for r in summarize(result):
        print(
            f"{r.category:<14}{r.method:<28}{fmt(r.tokens_per_s, '.2f'):>8}{fmt(r.speedup, '.2f', 'x'):>9}"
            f"{fmt(r.tokens_per_target_forward, '.2f'):>9}{fmt(r.outside_forward_percent, '.1f', '%'):>9}  {'yes' if r.identical else 'NO'}"
        )
