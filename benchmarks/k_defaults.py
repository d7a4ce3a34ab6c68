"""Measure candidate default k-matrices on the embedded SmolLM2-135M-Instruct (fp32, greedy), interleaved.

    python benchmarks/k_defaults.py [--new-tokens 64] [--repeats 2] [--out benchmarks/results/k_defaults.md]

Methods per prompt run interleaved (A B C ... A B C ...) after one warm-up each; the report gives per-category
medians of tokens/s ratios against plain greedy decoding on the same prompt, target forwards, and checks that every
output equals greedy. The neural drafter is a self-speculative copy of the target with its first 10 of 30 layers
(same vocabulary), so the default for one assistant is measured with a real, if weak, drafter.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_cascade
from hf_cascade.loading import default_model_path

PASSAGE = (
    "The old lighthouse stood on the northern cliff for more than a century. Every night the keeper climbed the "
    "spiral stairs, lit the great lamp, and watched the ships pass safely through the narrow strait. When the storms "
    "came in winter, the keeper stayed awake until dawn, writing notes in a leather logbook."
)
PROMPTS = {
    "grounded": [
        f"Rewrite the following passage in the past perfect tense, keeping every detail:\n\n{PASSAGE}",
        f"Copy the passage below, replacing 'keeper' with 'guardian' everywhere:\n\n{PASSAGE}",
    ],
    "math": [
        "Tom has 3 boxes with 12 apples in each. He gives away 9 apples and buys 5 more. How many apples does he "
        "have now? Think step by step.",
        "A train travels 60 km per hour for 2 hours and then 40 km per hour for 3 hours. How far does it travel in "
        "total? Explain each step.",
    ],
    "open-ended": [
        "Write a short poem about autumn in a small village.",
        "Give me three tips for staying focused while studying.",
    ],
}


def truncated(model, layers: int):
    small = copy.deepcopy(model)
    small.model.layers = small.model.layers[:layers]
    small.config.num_hidden_layers = layers
    return small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/k_defaults.md")
    args = parser.parse_args()

    folder, gguf = default_model_path()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    drafter = truncated(model, 10)
    cfg = hf_cascade.CascadeConfig
    cascade = dict(custom_generate=hf_cascade.generate)

    def mag(k, adaptive, cost=0.1):
        return cfg(k_matrix=k, max_gram={"adaptive_length": adaptive, "token_cost": cost})

    methods = {
        "greedy": {},
        "prompt lookup (10)": dict(prompt_lookup_num_tokens=10),
        "MaG [[6]] fixed": dict(cascade, cascade_config=mag([[6]], False)),
        "MaG [[10]] fixed": dict(cascade, cascade_config=mag([[10]], False)),
        "MaG [[10]] adaptive cost 0.1": dict(cascade, cascade_config=mag([[10]], True, 0.1)),
        "MaG [[10]] adaptive cost 0.05": dict(cascade, cascade_config=mag([[10]], True, 0.05)),
        "MaG [[16]] adaptive cost 0.05": dict(cascade, cascade_config=mag([[16]], True, 0.05)),
        "L10 + MaG [[2,1],[0,4]]": dict(
            cascade, assistant_models=[drafter], cascade_config=mag([[2, 1], [0, 4]], True)
        ),
        "L10 + MaG [[4,2],[0,6]]": dict(
            cascade, assistant_models=[drafter], cascade_config=mag([[4, 2], [0, 6]], True)
        ),
    }
    ratios: dict[str, dict[str, list[float]]] = {m: {c: [] for c in PROMPTS} for m in methods}
    forwards: dict[str, dict[str, list[float]]] = {m: {c: [] for c in PROMPTS} for m in methods}
    for category, prompts in PROMPTS.items():
        for text in prompts:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            common = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
            for kw in methods.values():  # warm-up
                model.generate(ids, **{**common, "max_new_tokens": 8}, **kw)
            times: dict[str, list[float]] = {m: [] for m in methods}
            reference = None
            for _ in range(args.repeats):
                for name, kw in methods.items():
                    t0 = time.perf_counter()
                    out = model.generate(ids, **common, **kw, return_dict_in_generate=True)
                    times[name].append(time.perf_counter() - t0)
                    reference = out.sequences if reference is None else reference
                    if not torch.equal(out.sequences, reference):
                        raise SystemExit(f"MISMATCH: {name} differs from greedy on {category!r}")
                    stats = getattr(out, "cascade_stats", None)
                    n_new = out.sequences.shape[1] - ids.shape[1]
                    fwd = stats.target.forward_passes if stats else None
                    forwards[name][category].append(n_new / fwd if fwd else float("nan"))
            base = statistics.median(times["greedy"])
            for name in methods:
                ratios[name][category].append(base / statistics.median(times[name]))
            print(category, {m: round(ratios[m][category][-1], 2) for m in methods}, flush=True)

    lines = [
        "# Default k-matrix measurements (SmolLM2-135M-Instruct, fp32, greedy)",
        "",
        f"Command: `python benchmarks/k_defaults.py --new-tokens {args.new_tokens} --repeats {args.repeats}`. "
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}. Speedup = greedy seconds / method "
        "seconds on the same prompt (median of repeats), then the geometric mean over the prompts of a category. "
        "All outputs were identical to greedy.",
        "",
        "| method | " + " | ".join(PROMPTS) + " | tokens / target forward |",
        "|---|" + "---|" * len(PROMPTS) + "---|",
    ]
    for name in methods:
        cells = [f"{statistics.geometric_mean(ratios[name][c]):.2f}x" for c in PROMPTS]
        tpf = [v for c in PROMPTS for v in forwards[name][c] if v == v]  # NaN (plain methods) dropped
        tpf_cell = f"{statistics.mean(tpf):.2f}" if tpf else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {tpf_cell} |")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
