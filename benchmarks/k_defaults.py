"""How the default Max-Gram settings were chosen: target forwards and modelled cost on the embedded SmolLM2.

    python benchmarks/k_defaults.py [--new-tokens 64] [--out benchmarks/results/k_defaults.md]

For every prompt (the k_defaults prompts below plus the `hf-cascade demo` prompts) and every Max-Gram variant, the
script runs greedy generation (fp32), checks the output equals plain greedy, and records the target's forward passes
and the tokens they processed. It then measures on this machine the cost of a k-token forward relative to a
1-token forward (median of repeats), fits `cost(k) = 1 + c * (k - 1)`, and reports the modelled speedup
`new_tokens / sum(cost(k_i))` over the target's forwards (prefill excluded). Forward counts do not depend on machine
load, which makes variants comparable on a shared machine; `hf-cascade demo` measures wall time.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
import transformers

import hf_cascade
from hf_cascade.benchmark import measure_cost
from hf_cascade.cli.demo import DEMO_PROMPTS
from hf_cascade.loading import default_model_path, load_model_and_tokenizer

PASSAGE = (
    "The old lighthouse stood on the northern cliff for more than a century. Every night the keeper climbed the "
    "spiral stairs, lit the great lamp, and watched the ships pass safely through the narrow strait. When the storms "
    "came in winter, the keeper stayed awake until dawn, writing notes in a leather logbook."
)
PROMPTS = {
    "grounded": [
        f"Rewrite the following passage in the past perfect tense, keeping every detail:\n\n{PASSAGE}",
        f"Copy the passage below, replacing 'keeper' with 'guardian' everywhere:\n\n{PASSAGE}",
        *[text for title, text in DEMO_PROMPTS if title != "math word problem"],
    ],
    "math": [
        "Tom has 3 boxes with 12 apples in each. He gives away 9 apples and buys 5 more. How many apples does he "
        "have now? Think step by step.",
        "A train travels 60 km per hour for 2 hours and then 40 km per hour for 3 hours. How far does it travel in "
        "total? Explain each step.",
        *[text for title, text in DEMO_PROMPTS if title == "math word problem"],
    ],
    "open-ended": [
        "Write a short poem about autumn in a small village.",
        "Give me three tips for staying focused while studying.",
    ],
}


def variants() -> dict[str, hf_cascade.CascadeConfig]:
    def mag(k: int, adaptive: bool, cost: float = 0.05, occurrence: str = "latest") -> hf_cascade.CascadeConfig:
        max_gram = {"adaptive_length": adaptive, "token_cost": cost, "occurrence": occurrence}
        return hf_cascade.CascadeConfig(k_matrix=[[k]], max_gram=max_gram)

    return {
        "[[6]] fixed": mag(6, False),
        "[[10]] fixed": mag(10, False),
        "[[10]] fixed, earliest": mag(10, False, occurrence="earliest"),
        "[[10]] adaptive, cost 0.1": mag(10, True, 0.1),
        "[[16]] adaptive, cost 0.1": mag(16, True, 0.1),
        "[[16]] adaptive, cost 0.05 (default)": mag(16, True, 0.05),
        "[[16]] adaptive, cost 0.05, earliest": mag(16, True, 0.05, "earliest"),
    }


def per_token_cost(model, prompt_ids: torch.Tensor, k: int = 8, repeats: int = 15) -> float:
    """`c` in `cost(k) = 1 + c * (k - 1)`, from the library's median timings of 1-token and k-token forwards after a
    prefill (`hf_cascade.benchmark.measure_cost`, the numbers `hf-cascade bench` reports)."""
    forward_s = measure_cost(model, prompt_ids, ks=(1, k), repeats=repeats).forward_s
    return max(forward_s[k] / forward_s[1] - 1.0, 0.0) / (k - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--cache-dir", default=None, help="dequantised model cache (see hf-cascade demo --help)")
    parser.add_argument("--out", default="benchmarks/results/k_defaults.md")
    args = parser.parse_args()

    folder, gguf = default_model_path()
    model, tok = load_model_and_tokenizer(folder, gguf_file=gguf, dtype=torch.float32, cache_dir=args.cache_dir)
    encoded = {
        cat: [
            tok.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            for t in texts
        ]
        for cat, texts in PROMPTS.items()
    }
    c = per_token_cost(model, encoded["math"][0])
    print(f"measured per-token cost c = {c:.3f} of a 1-token forward", flush=True)

    def cost(passes: int, tokens: int) -> float:
        return passes + c * (tokens - passes)

    names = ["prompt lookup (10)", *variants()]
    speedups: dict[str, dict[str, list[float]]] = {n: {cat: [] for cat in PROMPTS} for n in names}
    tokens_per_forward: dict[str, list[float]] = {n: [] for n in names}
    common = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    for cat, prompts in encoded.items():
        for ids in prompts:
            ref = model.generate(ids, **common)
            new = ref.shape[1] - ids.shape[1]
            fed: list[int] = []
            hook = model.register_forward_hook(
                lambda m, a, kw, o, fed=fed: fed.append(kw["input_ids"].shape[1]), with_kwargs=True
            )
            try:
                out = model.generate(ids, prompt_lookup_num_tokens=10, **common)
            finally:
                hook.remove()
            if not torch.equal(out, ref):
                print(f"note: transformers prompt lookup differs from greedy on a {cat} prompt")
            speedups["prompt lookup (10)"][cat].append(new / cost(len(fed), sum(fed) - ids.shape[1]))
            tokens_per_forward["prompt lookup (10)"].append(new / len(fed))
            for name, config in variants().items():
                out = model.generate(
                    ids,
                    custom_generate=hf_cascade.generate,
                    cascade_config=config,
                    return_dict_in_generate=True,
                    **common,
                )
                if not torch.equal(out.sequences, ref):
                    raise SystemExit(f"MISMATCH: {name} differs from greedy on a {cat} prompt")
                target = out.cascade_stats.target
                speedups[name][cat].append(new / cost(target.forward_passes, target.forward_tokens - ids.shape[1]))
                tokens_per_forward[name].append(new / target.forward_passes)
            print(cat, {n: round(speedups[n][cat][-1], 2) for n in names}, flush=True)

    lines = [
        "# Max-Gram defaults: target forwards and modelled cost (SmolLM2-135M-Instruct, fp32, greedy)",
        "",
        f"Command: `python benchmarks/k_defaults.py --new-tokens {args.new_tokens}`. Machine: "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}, transformers {transformers.__version__}. Measured per-token cost of a forward on this "
        f"machine: c = {c:.3f} (cost(k) = 1 + c(k-1) relative to a 1-token forward). Modelled speedup = new tokens / "
        "sum of cost(k) over the target's forwards (prefill excluded), geometric mean per category. Every cascade "
        "output was identical to plain greedy. Prompts: "
        + ", ".join(f"{len(v)} {k}" for k, v in PROMPTS.items())
        + f", {args.new_tokens} new tokens each.",
        "",
        "| method | " + " | ".join(PROMPTS) + " | mean tokens / target forward |",
        "|---|" + "---|" * len(PROMPTS) + "---|",
    ]
    for name in names:
        cells = [f"{statistics.geometric_mean(speedups[name][cat]):.2f}x" for cat in PROMPTS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(tokens_per_forward[name]):.2f} |")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
