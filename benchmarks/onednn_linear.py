"""What packing the linear layers for oneDNN (`hf_cascade.use_onednn_linear`) does on this machine, by itself.

    python benchmarks/onednn_linear.py [--target PATH_OR_ID [--gguf-file F]] [--cache-dir DIR]
        [--builtin grounded,math,chat] [--sample 3] [--max-new-tokens 64] [--repeats 2] [--out FILE.md]

`hf-cascade bench --onednn-linear` runs every method on packed models, so its speedups leave out what packing alone
gains. This script loads the target twice, packs one copy, and times per prompt, interleaved after a warm-up: plain
greedy on the unpacked copy (what a user runs today), greedy on the packed copy, and the Max-Gram cascade (default
`CascadeConfig`) on each copy. It prints the k-token forward cost of both copies and whether packed greedy produced
the same tokens as unpacked greedy (packing changes float rounding, so a near-tie may flip).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_cascade.benchmark import describe_machine, load_builtin, machine_info, measure_cost, sample
from hf_cascade.benchmark.methods import Method, run_method
from hf_cascade.cpu import use_onednn_linear
from hf_cascade.loading import default_model_path, encode_prompt, load_model_and_tokenizer, pad_token_id

METHODS = [Method("greedy", "greedy"), Method("cascade", "cascade")]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", help="model id or path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--gguf-file")
    p.add_argument("--cache-dir")
    p.add_argument("--builtin", default="grounded,math,chat")
    p.add_argument("--sample", type=int, default=3, help="prompts per built-in set")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="also write the Markdown here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    target, gguf = (args.target, args.gguf_file) if args.target else default_model_path()
    load = dict(gguf_file=gguf, dtype=torch.float32, cache_dir=args.cache_dir)
    plain, tokenizer = load_model_and_tokenizer(target, **load)
    packed, _ = load_model_and_tokenizer(target, **load)
    t0 = time.perf_counter()
    layers = use_onednn_linear(packed)
    pack_s = time.perf_counter() - t0
    models = {"unpacked": plain, "packed": packed}
    prompts = [p for name in args.builtin.split(",") for p in sample(load_builtin(name), args.sample, seed=0)]
    encoded = [encode_prompt(tokenizer, p.text, True, plain.device) for p in prompts]
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad_token_id(plain, tokenizer))

    costs = {name: measure_cost(m, encoded[0]["input_ids"]) for name, m in models.items()}
    for model in models.values():  # warm-up
        for method in METHODS:
            run_method(method, model, {}, encoded[0], {**kwargs, "max_new_tokens": 8})
    seconds: dict[str, list[float]] = {f"{m.label} {n}": [] for m in METHODS for n in models}
    flips = 0
    for inputs in encoded:
        per_prompt: dict[str, list[float]] = {key: [] for key in seconds}
        ids = {}
        for _ in range(args.repeats):
            for name, model in models.items():
                for method in METHODS:
                    run = run_method(method, model, {}, inputs, kwargs)
                    per_prompt[f"{method.label} {name}"].append(run.seconds / max(run.new_tokens, 1))
                    ids[f"{method.label} {name}"] = run.ids
        assert ids["cascade unpacked"] == ids["greedy unpacked"] and ids["cascade packed"] == ids["greedy packed"]
        flips += ids["greedy packed"] != ids["greedy unpacked"]
        for key, values in per_prompt.items():
            seconds[key].append(statistics.median(values))

    base = seconds["greedy unpacked"]
    lines = [
        f"# oneDNN-packed linear layers: `{target}{'/' + gguf if gguf else ''}`",
        "",
        f"- machine: {describe_machine(machine_info())}",
        f"- {len(prompts)} prompts ({args.builtin}, {args.sample} each, seed 0), {args.max_new_tokens} new tokens, "
        f"fp32, greedy; {args.repeats} interleaved repeats per prompt after a warm-up, median per prompt",
        f"- packing: {layers} linear layers in {pack_s:.1f} s; packed greedy tokens differ from unpacked greedy "
        f"on {flips} of {len(prompts)} prompts (float rounding); each cascade matched its own model's greedy",
        "",
        "| method | model | s/token (mean of per-prompt medians) | speedup over unpacked greedy (geomean) |",
        "|---|---|---:|---:|",
    ]
    for key, values in seconds.items():
        ratio = statistics.geometric_mean([b / v for b, v in zip(base, values, strict=True)])
        method, name = key.split()
        lines.append(f"| {method} | {name} | {statistics.mean(values) * 1e3:.1f} ms | {ratio:.2f}x |")
    lines += ["", "| model | 1 token | 2 tokens | 4 tokens | 8 tokens |", "|---|---:|---:|---:|---:|"]
    for name, cost in costs.items():
        one = cost.forward_s[1]
        cells = [f"{s * 1e3:.1f} ms ({s / one:.2f}x)" for s in cost.forward_s.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
