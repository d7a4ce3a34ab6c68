"""`hf-cascade bench`: greedy vs transformers' prompt lookup and assisted generation vs hf_cascade configurations.

Every method runs on every prompt, interleaved after a warm-up, `--repeats` times; the reports give medians, per
category geometric means of the speedup over greedy, forward passes and time per model, SWI and the exactness check.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from ..benchmark import (
    ChatTurns,
    Method,
    batch_groups,
    busy_warning,
    cannot_batch,
    describe_machine,
    fmt,
    machine_info,
    parse_method,
    run_benchmark,
    summarize,
    write_reports,
)
from ..benchmark.report import THROUGHPUT, not_run_text
from ..benchmark.suffix import suffix_available
from ..checks import vocab_size
from ..config import CONFIG_NAME, CascadeConfig
from ..errors import CascadeError
from ..memory import MaxGramMemory
from ._args import add_loading_args, add_model_source_args, positive_int
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

__all__ = ["TUNED_LABEL", "add_parser", "run"]

TUNED_LABEL = "cascade-tuned"  # the method --tuned adds


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
            "only) and cascade over all drafters; --tuned CONFIG adds cascade-tuned. Exits with status 1 when an output differs from greedy's."
        ),
    )
    add_model_source_args(p, "--target", "target model", embedded_default=True)
    add_drafter_arg(p)
    p.add_argument(
        "--method", action="append", default=[], metavar="SPEC", help="a method to run (repeatable; see above)"
    )
    p.add_argument(
        "--memory",
        metavar="FILE",
        help=(
            "a saved Max-Gram memory (hf_cascade.MaxGramMemory.save) to warm-start with: every cascade+memory method "
            "starts from a copy of it, and suffix gets its documents in its global tree; the file is not changed"
        ),
    )
    p.add_argument(
        "--tuned",
        metavar="CONFIG",
        help=(
            f"a {CONFIG_NAME} (or its folder) written by `hf-cascade tune`: adds the method {TUNED_LABEL}, the "
            "cascade over every --drafter (in the order given) with that config"
        ),
    )
    add_prompt_args(p)
    run_group = p.add_argument_group("running")
    add_run_args(
        run_group, max_new_tokens=128, repeats=3, repeats_help="timed runs per method and prompt", warmup_tokens=16
    )
    run_group.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        metavar="B",
        help=(
            "prompts per generate call (default: 1). Above 1, each category's prompts run in left-padded batches of B "
            "and the report gives throughput (new tokens per second over the batch) against plain batched greedy; "
            "prompt-lookup, assisted, suffix and multi-turn prompts cannot batch and are listed as not run"
        ),
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


def _methods(
    args: argparse.Namespace, parser: argparse.ArgumentParser, drafters: dict[str, str]
) -> tuple[list[Method], dict[str, str]]:
    """The methods to run (greedy first), and the requested ones that cannot run here, with why (for the report)."""
    skipped: dict[str, str] = {}
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
            skipped[method.label] = f"the optional suffix module is missing ({missing})"
            continue
        methods.append(method)
    if args.tuned:
        methods.append(_tuned_method(args.tuned, parser, drafters, methods))
    return methods, skipped


def _tuned_method(
    path: str, parser: argparse.ArgumentParser, drafters: dict[str, str], methods: list[Method]
) -> Method:
    """`cascade-tuned`: the cascade over every registered drafter with the config `hf-cascade tune` wrote."""
    if any(m.label == TUNED_LABEL for m in methods):
        parser.error(f"--tuned: the label {TUNED_LABEL!r} is taken by a --method; name that method otherwise")
    try:
        config = CascadeConfig.from_pretrained(path)
    except (OSError, CascadeError) as e:
        parser.error(f"--tuned {path!r}: cannot read the config: {e}")
    try:
        return Method(TUNED_LABEL, "cascade", tuple(drafters), config)
    except CascadeError as e:
        parser.error(
            f"--tuned {path!r}: {e} The config was tuned for another set of drafters: register the drafters "
            f"hf-cascade tune was given, with --drafter, in the same order (registered: {list(drafters) or 'none'})."
        )


def _load_memory(args: argparse.Namespace, parser: argparse.ArgumentParser, methods: list[Method]) -> Any:
    """`--memory FILE`: the `MaxGramMemory` saved there (checked before any model loads), or `None`."""
    if args.memory is None:
        return None
    if not any(m.memory for m in methods):
        parser.error(
            "--memory warm-starts the methods that remember (cascade+memory, suffix), and none runs; add "
            "--method cascade+memory or drop --memory"
        )
    try:
        return MaxGramMemory.load(args.memory)
    except CascadeError as e:
        parser.error(f"--memory: {e}")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..loading import encode_prompt, pad_token_id

    # Everything that can be checked without loading a model is checked first.
    drafter_paths = parse_drafters(args, parser)
    methods, skipped = _methods(args, parser, drafter_paths)
    prompts = load_prompts(args, parser)
    memory = _load_memory(args, parser, methods)
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("the PNG plot needs matplotlib: pip install 'hf_cascade[bench]', or pass --no-plot")
    target_path, gguf = resolve_target(args, parser, drafter_paths)
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
    if memory is not None:
        try:
            memory.check_vocab_size(vocab_size(target))
        except CascadeError as e:
            parser.error(f"--memory {args.memory}: {e}")
    chat = use_chat_template(tokenizer, not args.no_chat_template)
    multi_turn = [p.id for p in prompts if p.followups]
    if multi_turn and not chat:
        parser.error(
            f"prompts {multi_turn[:3]} have several turns, which need the chat template: drop --no-chat-template or "
            "those prompts"
        )
    encoded = [(p, encode_prompt(tokenizer, p.text, chat, target.device)) for p in prompts]
    chat_turns = ChatTurns(
        encode=lambda messages: encode_prompt(tokenizer, messages, chat, target.device),
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
    )
    generation_kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    pad = pad_token_id(target, tokenizer)
    if pad is not None:
        generation_kwargs["pad_token_id"] = pad
    elif args.batch_size > 1:
        parser.error(f"--batch-size {args.batch_size}: the model and tokenizer have no pad or EOS token to pad with")
    settings = {
        **run_settings(args, target_path, gguf, drafter_paths, chat),
        "tuned": args.tuned,
        "memory": args.memory,
        # One prompt per call leaves results.json as it was; batches record their size.
        **({"batch_size": args.batch_size} if args.batch_size > 1 else {}),
    }
    not_run = cannot_batch(methods, prompts, args.batch_size)
    for name, why in not_run.items():
        log(f"{name}: {not_run_text(why)}")
    if args.batch_size > 1:
        methods_run = len([m for m in methods if m.label not in not_run])
        batches = len(batch_groups([p for p in prompts if f"prompt {p.id}" not in not_run], args.batch_size))
        total = batches * methods_run * args.repeats
        log(
            f"{batches} batches of up to {args.batch_size} x {methods_run} methods x {args.repeats} repeats = {total} timed runs"
        )
    else:
        turns = sum(len(p.turns) for p in prompts)
        total = turns * len(methods) * args.repeats
        log(
            f"{len(prompts)} prompts ({turns} turns) x {len(methods)} methods x {args.repeats} repeats = {total} timed runs"
            if turns > len(prompts)
            else f"{len(prompts)} prompts x {len(methods)} methods x {args.repeats} repeats = {total} timed runs"
        )
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
            chat_turns=chat_turns,
            memory=memory,
            batch_size=args.batch_size,
        )
    finally:
        if bar is not None:
            bar.close()
    result.not_run = {**skipped, **result.not_run}  # asked for, not run: the report says so
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
    if result.settings.get("batch_size", 1) > 1:
        print(f"batch size {result.settings['batch_size']}: tok/s is {THROUGHPUT}, speedup over plain batched greedy")
    for name, why in result.not_run.items():
        print(f"{name}: {not_run_text(why)}")
    print(f"{'category':<14}{'method':<28}{'tok/s':>8}{'speedup':>9}{'tok/fwd':>9}{'outside':>9}  identical")
    for r in summarize(result):
        print(
            f"{r.category:<14}{r.method:<28}{fmt(r.tokens_per_s, '.2f'):>8}{fmt(r.speedup, '.2f', 'x'):>9}"
            f"{fmt(r.tokens_per_target_forward, '.2f'):>9}{fmt(r.outside_forward_percent, '.1f', '%'):>9}  {'yes' if r.identical else 'NO'}"
        )
