"""The best speedup over batched greedy that any draft-length policy could reach at batch size `R`, from the
batched forward-pass costs measured on this machine and the acceptance a benchmark measured.

    python benchmarks/batch_bound.py --target PATH_OR_ID [--gguf-file F] [--drafter PATH_OR_ID [--drafter-gguf-file F]]
        --results RESULTS.json --dataset gsm8k --data-file FILE [--batch-size 4] [--max-width 9] [--repeats 5]
        [--onednn-linear] [--cache-dir DIR] [--out FILE.md]

In a batch a draft token is cheap only while the pass stays memory-bound: with `R` rows every extra token per row
adds `R` tokens of compute. This script prefills `R` prompts of the set (left-padded, chat template), then times
passes of every row feeding `w = 1 .. max-width` tokens on a warm cache (each model's own, widths interleaved,
median of the repeats) for the target and the drafter. It then evaluates the per-step oracle of
`hf_cascade.tuning.bound` with the batched curves: every row, every step, drafts from one source at most the tokens
the target will accept, knowing how many that is, and the pass is priced as if every row fed that width. For a pass
fed as wide as its widest row (padded; packed rows drafting alike) the batch's throughput is at most `R` times the
best per-row rate, since a step costs at least the mean of what its rows' drafts would cost alone, so the oracle's
speedup is an upper bound for those policies; it also leaves out the drafter's prefill and catch-up passes and the
row the batch waits for last. The acceptance (`P(token accepted)` per source) is the highest a method of the
`--results` benchmark measured, again optimistic.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import torch

from hf_cascade.benchmark import describe_machine, machine_info, measure_cost, sample
from hf_cascade.benchmark.prompts import load_dataset_file
from hf_cascade.benchmark.runner import batch_inputs
from hf_cascade.cpu import use_onednn_linear
from hf_cascade.loading import encode_prompt, load_model_and_tokenizer, pad_token_id
from hf_cascade.tuning.bound import oracle_speedup


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--gguf-file")
    p.add_argument("--drafter", help="the neural drafter, named as in the benchmark (its label: --drafter-label)")
    p.add_argument("--drafter-gguf-file")
    p.add_argument("--drafter-label", default="q05", help="the drafter's name in the results' acceptance")
    p.add_argument("--results", required=True, help="results.json of an `hf-cascade bench` run on the same set")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-file", required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-width", type=int, default=9)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--onednn-linear", action="store_true")
    p.add_argument("--cache-dir")
    p.add_argument("--out", help="also write the Markdown here")
    return p.parse_args()


@torch.no_grad()
def batched_curve(model: torch.nn.Module, batch: dict[str, torch.Tensor], widths: range, repeats: int) -> list[float]:
    """Median seconds of a pass in which every row feeds `w` tokens after its prompt, for each `w` in `widths`
    (`hf_cascade.benchmark.measure_cost` over the left-padded batch).

    Args:
        model (`PreTrainedModel`): the model.
        batch (`dict`): `input_ids` and `attention_mask` of shape `(rows, length)`, left-padded.
        widths (`range`): tokens per row.
        repeats (`int`): timed passes per width (widths interleaved).
    """
    cost = measure_cost(model, batch["input_ids"], tuple(widths), repeats, attention_mask=batch["attention_mask"])
    return [cost.forward_s[w] for w in widths]


def best_acceptance(results: dict, name: str) -> float | None:
    """The highest `accepted / drafted` a method of the benchmark measured for the source `name` (all prompts)."""
    rates = [r["acceptance"].get(name) for r in results["summary"] if r["category"] == "all" and r.get("acceptance")]
    rates = [r for r in rates if r is not None]
    return max(rates, default=None)


def main() -> None:
    args = parse_args()
    load = dict(dtype=torch.float32, cache_dir=args.cache_dir)
    target, tokenizer = load_model_and_tokenizer(args.target, gguf_file=args.gguf_file, **load)
    models = {"target": target}
    if args.drafter:
        models[args.drafter_label], _ = load_model_and_tokenizer(args.drafter, gguf_file=args.drafter_gguf_file, **load)
    if args.onednn_linear:
        for model in models.values():
            use_onednn_linear(model)
    prompts = sample(load_dataset_file(args.dataset, args.data_file), args.batch_size, seed=0)
    rows = [encode_prompt(tokenizer, p.text, True, target.device) for p in prompts]
    batch = batch_inputs(rows, pad_token_id(target, tokenizer))
    widths = range(1, args.max_width + 1)
    curves = {name: batched_curve(model, batch, widths, args.repeats) for name, model in models.items()}
    with open(args.results) as f:
        results = json.load(f)

    target_s = curves["target"]
    target_cost = lambda n: target_s[min(max(int(round(n)), 1), args.max_width) - 1]  # noqa: E731
    sources = {"max_gram": (lambda n: 0.0)}  # Max-Gram's proposals cost next to nothing
    if args.drafter:
        drafter_s = curves[args.drafter_label]
        # Alone it decodes one token per pass; with Max-Gram below it, at best all its tokens in one pass.
        sources[f"{args.drafter_label} (one token per pass)"] = lambda n: n * drafter_s[0]
        sources[f"{args.drafter_label} (all tokens in one pass)"] = lambda n: drafter_s[min(n, args.max_width) - 1]
    lines = [
        f"# Batch-{args.batch_size} bound: {args.target}",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        "",
        f"- machine: {describe_machine(machine_info())}",
        f"- {len(prompts)} prompts of `{args.dataset}` (seed 0), prompt lengths "
        f"{[int(r['input_ids'].shape[1]) for r in rows]}; linear layers "
        f"{'packed for oneDNN' if args.onednn_linear else 'with PyTorch default kernels'}; fp32; "
        f"median of {args.repeats} passes per width",
        f"- acceptance from `{args.results}` (the highest any method measured)",
        "",
        f"## Cost of a pass in which each of the {args.batch_size} rows feeds w tokens (warm cache)",
        "",
        "| model | " + " | ".join(f"w={w}" for w in widths) + " |",
        "|---|" + "---:|" * len(widths),
    ]
    for name, curve in curves.items():
        cells = " | ".join(f"{1000 * s:.0f} ms ({s / curve[0]:.2f}x)" for s in curve)
        lines.append(f"| {name} | {cells} |")
    lines += [
        "",
        "## Oracle bound (speedup over batched greedy)",
        "",
        "| source | acceptance | bound |",
        "|---|---:|---:|",
    ]
    best = 0.0
    for name, draft_seconds in sources.items():
        alpha = best_acceptance(results, name.split(" ")[0])
        if alpha is None:
            lines.append(f"| {name} | - | not measured |")
            continue
        bound = oracle_speedup(alpha, draft_seconds, target_cost, target_s[0], max_tokens=args.max_width - 1)
        best = max(best, bound)
        lines.append(f"| {name} | {alpha:.2f} | {bound:.2f}x |")
    lines += ["", f"Best: **{best:.2f}x** batched greedy's throughput (see the module docstring for what it assumes)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
