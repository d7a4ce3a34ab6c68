"""`hf-cascade generate`: stream a cascade generation on any causal LM, then print the per-level statistics."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

from ..checks import vocab_size
from ..config import CascadeConfig
from ..errors import CascadeError
from ..memory import MaxGramMemory
from ._args import add_loading_args, add_model_source_args, finite_float, positive_int
from ._inputs import resolve_target
from ._models import load_models, log, use_chat_template

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Register `generate` on the subparsers object of the `hf-cascade` parser."""
    gen = sub.add_parser(
        "generate",
        help="stream a cascade generation on any causal LM, then print the cascade statistics",
        description=(
            "Generate with Cascade Speculative Drafting: the target reviews drafts of the assistant models (largest "
            "first) and the Max-Gram drafter; the output equals the target's own greedy output (or follows its "
            "sampling distribution with --sample)."
        ),
    )
    add_model_source_args(gen, "--target", "the model whose output you get", embedded_default=True)
    gen.add_argument(
        "--assistant",
        action="append",
        default=[],
        metavar="ID_OR_PATH",
        help="assistant (draft) model sharing the target's vocabulary; repeat for several, largest first. "
        "GGUF assistants: give the .gguf file path",
    )
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt (a user message unless --no-chat-template)")
    prompt.add_argument("--prompt-file", metavar="F", help="read the prompt from a UTF-8 file ('-' for stdin)")
    gen.add_argument(
        "--no-chat-template",
        action="store_true",
        help="feed the prompt as raw text instead of wrapping it in the tokenizer's chat template",
    )
    gen.add_argument(
        "--k-matrix",
        metavar="JSON",
        help='k-matrix as JSON, one row and column per drafter (assistants, then Max-Gram), e.g. "[[4, 2], [0, 6]]"',
    )
    gen.add_argument(
        "--lenience", type=finite_float, metavar="L", help="lenience (>= 1) of reviews between drafters (default: 1)"
    )
    gen.add_argument(
        "--max-gram",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the Max-Gram statistical drafter at the bottom of the cascade (default: on)",
    )
    gen.add_argument(
        "--adaptive-drafters",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the neural levels' draft lengths follow measured costs and acceptance, k-matrix entries as upper "
        "bounds (default: on); --no-adaptive-drafters drafts exactly the k-matrix entries",
    )
    gen.add_argument(
        "--bigram-table",
        metavar="FILE",
        help="Max-Gram's fallback table for when nothing matches (built by `hf-cascade bigram`); overrides "
        "--cascade-config",
    )
    gen.add_argument(
        "--memory",
        metavar="FILE",
        help="a Max-Gram memory (safetensors, hf_cascade.MaxGramMemory): drafts also copy from earlier outputs kept "
        "there; created if missing, and this call's output is added and saved back",
    )
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=finite_float, metavar="T", help="sampling temperature (needs --sample)")
    gen.add_argument("--top-p", type=finite_float, metavar="P", help="nucleus sampling mass in (0, 1] (needs --sample)")
    gen.add_argument("--seed", type=int, metavar="S", help="random seed for --sample")
    gen.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N", help="default: 128")
    gen.add_argument(
        "--cascade-config",
        metavar="DIR_OR_FILE",
        help="cascade_config.json, or a directory holding one; --k-matrix, --lenience, --max-gram, "
        "--adaptive-drafters and --bigram-table override it",
    )
    gen.add_argument(
        "--stats-json",
        metavar="PATH",
        help='write {"cascade_stats": ..., "cascade_config": ..., "generated_text": ...} as JSON to PATH',
    )
    add_loading_args(gen)
    gen.set_defaults(func=run)


def _cascade_config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> CascadeConfig:
    """`--cascade-config` with `--k-matrix`, `--lenience`, `--max-gram` and `--bigram-table` applied on top; errors
    name the flag."""
    base = CascadeConfig()
    if args.cascade_config is not None:
        if not os.path.exists(args.cascade_config):
            parser.error(f"--cascade-config: {args.cascade_config} does not exist (give a JSON file or a directory)")
        try:
            base = CascadeConfig.from_pretrained(args.cascade_config)
        except (OSError, CascadeError) as e:  # malformed JSON is a CascadeValueError naming the file
            parser.error(f"--cascade-config {args.cascade_config}: {e}")
    fields = base.to_dict()
    if args.k_matrix is not None:
        try:
            k_matrix = json.loads(args.k_matrix)
        except json.JSONDecodeError as e:
            parser.error(f"--k-matrix is not valid JSON ({e}); example: --k-matrix '[[4, 2], [0, 6]]'")
        try:
            CascadeConfig(k_matrix=k_matrix)
        except CascadeError as e:
            parser.error(f"--k-matrix: {e}")
        fields["k_matrix"] = k_matrix
    if args.lenience is not None:
        try:
            CascadeConfig(lenience=args.lenience)
        except CascadeError as e:
            parser.error(f"--lenience: {e}")
        fields["lenience"] = args.lenience
    if args.max_gram is not None:
        fields["use_max_gram"] = args.max_gram
    if args.adaptive_drafters is not None:
        fields["adaptive_drafters"] = args.adaptive_drafters
    if args.bigram_table is not None:
        _check_bigram_table(args.bigram_table, parser)
        fields["max_gram"] = {**fields["max_gram"], "bigram_table": args.bigram_table}
    config = CascadeConfig.from_dict(fields)
    n_assistants = len(args.assistant)
    # Max-Gram is off either by --no-max-gram or by the --cascade-config file: name whichever the user gave.
    no_max_gram = "--no-max-gram" if args.max_gram is False else f"--cascade-config {args.cascade_config}"
    if n_assistants == 0 and not config.use_max_gram:
        parser.error(
            f"{no_max_gram} leaves the cascade without a drafter (use_max_gram is false); add --assistant MODEL "
            "or turn Max-Gram on (--max-gram)"
        )
    if args.bigram_table is not None and not config.use_max_gram:
        parser.error(
            f"--bigram-table is Max-Gram's fallback table, but {no_max_gram} turns Max-Gram off; add --max-gram "
            "or drop --bigram-table"
        )
    try:
        config.resolved_k_matrix(n_assistants)
    except CascadeError as e:
        source = "--k-matrix" if args.k_matrix is not None else "--cascade-config"
        parser.error(f"{source}: {e}")
    return config


def _load_memory(path: str, config: CascadeConfig, parser: argparse.ArgumentParser) -> MaxGramMemory | None:
    """`--memory FILE`: the memory saved there, or `None` when the file is new (the caller creates one for the
    target's vocabulary and saves it there after the call); checked before any model loads."""
    if not config.use_max_gram:
        parser.error(
            "--memory is read by Max-Gram, which this configuration turns off; drop --memory or add --max-gram"
        )
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            parser.error(f"--memory: cannot create {path}: {parent} is not a writable folder")
        return None
    try:
        return MaxGramMemory.load(path)
    except CascadeError as e:
        parser.error(f"--memory: {e}")


def _check_bigram_table(path: str, parser: argparse.ArgumentParser) -> None:
    """Load the table once before any model, so a wrong path or file fails in a second, naming the flag."""
    from ..max_gram import BigramTable

    if not os.path.isfile(path):
        parser.error(f"--bigram-table: {path} is not a file; build one with `hf-cascade bigram --model ... --out FILE`")
    try:
        BigramTable.load(path)
    except (OSError, CascadeError) as e:
        parser.error(f"--bigram-table: {e}")


def _read_prompt(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.prompt is not None:
        text = args.prompt
    elif args.prompt_file == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            parser.error(f"--prompt-file {args.prompt_file}: {e}")
    if not text.strip():
        parser.error("the prompt is empty (--prompt / --prompt-file)")
    return text


def _check_sampling_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not args.sample:
        for flag, value in (("--temperature", args.temperature), ("--top-p", args.top_p), ("--seed", args.seed)):
            if value is not None:
                parser.error(f"{flag} only applies to sampling; add --sample")
        return
    if args.temperature is not None and args.temperature <= 0:
        parser.error(f"--temperature must be > 0, got {args.temperature} (for greedy decoding drop --sample)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from transformers import TextStreamer

    import hf_cascade

    from ..loading import encode_prompt, pad_token_id

    # Everything that can be checked without loading a model is checked first.
    _check_sampling_args(args, parser)
    config = _cascade_config_from_args(args, parser)
    text = _read_prompt(args, parser)
    memory = _load_memory(args.memory, config, parser) if args.memory else None
    drafter_paths = {f"assistant_{i}": path for i, path in enumerate(args.assistant)}
    target_path, gguf = resolve_target(args, parser, drafter_paths, "--target/--gguf-file/--assistant")
    models = load_models("generate", args, target_path, gguf, drafter_paths)
    if models is None:
        return 1
    model, tokenizer, drafters = models
    assistants = list(drafters.values())
    if args.memory and memory is None:
        memory = MaxGramMemory(vocab_size=vocab_size(model))
    use_template = use_chat_template(tokenizer, not args.no_chat_template)
    inputs = encode_prompt(tokenizer, text, use_template, model.device)
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample)
    if args.sample:
        if args.temperature is not None:
            gen_kwargs["temperature"] = args.temperature
        if args.top_p is not None:
            gen_kwargs["top_p"] = args.top_p
        if args.seed is not None:
            torch.manual_seed(args.seed)
    pad = pad_token_id(model, tokenizer)
    if pad is not None:
        gen_kwargs["pad_token_id"] = pad

    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    try:
        out = model.generate(
            **inputs,
            custom_generate=hf_cascade.generate,
            assistant_models=assistants,
            cascade_config=config,
            cascade_streamer=streamer,
            max_gram_memory=memory,
            return_dict_in_generate=True,
            **gen_kwargs,
        )
    except CascadeError as e:  # the library's own refusal; anything else is a bug and keeps its traceback
        print(f"\nhf-cascade generate: error: {e}", file=sys.stderr)
        return 1
    stats = out.cascade_stats
    print()
    print(stats.summary())
    if memory is not None:
        memory.save(args.memory)
        log(f"memory: {memory.num_documents} documents, {memory.num_tokens} tokens, saved to {args.memory}")
    if args.stats_json:
        new_ids = out.sequences[0, inputs["input_ids"].shape[1] :]
        payload = {
            "cascade_stats": stats.to_dict(),
            "cascade_config": config.to_dict(),
            "generated_text": tokenizer.decode(new_ids, skip_special_tokens=True),
            "generated_token_ids": new_ids.tolist(),
        }
        parent = os.path.dirname(os.path.abspath(args.stats_json))
        os.makedirs(parent, exist_ok=True)
        with open(args.stats_json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        log(f"statistics written to {args.stats_json}")
    return 0
