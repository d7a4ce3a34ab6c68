"""How a drafter's confidence in its own token relates to the target's verdict, on the target's greedy text.

    python benchmarks/drafter_calibration.py --target PATH_OR_ID --drafter PATH_OR_ID [--gguf-file F]
        [--drafter-gguf-file F] [--cache-dir DIR] [--dataset gsm8k --data-file FILE | --builtin math]
        [--sample 6] [--max-new-tokens 64] [--out FILE.md]

The draft-length controller prices each drafted token by the drafter's probability of it
(`hf_cascade.controller.CONFIDENCE_EDGES`, one acceptance record per bucket, learnt during the call). This script
shows what it learns from: for each prompt, the target's greedy answer, then one drafter forward over prompt and
answer (teacher forcing); per confidence bucket of the drafter's greedy token at each answer position, how many
positions fell there and the share where it is the target's token (what an exact greedy review accepts, given the
tokens before it were). float32, chat template on.
"""

from __future__ import annotations

import argparse
import pathlib

import torch

from hf_cascade.benchmark import describe_machine, load_builtin, load_dataset_file, machine_info, sample
from hf_cascade.controller import CONFIDENCE_EDGES, confidence_bucket
from hf_cascade.loading import encode_prompt, load_model_and_tokenizer, pad_token_id


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="target model id or path (a .gguf path too)")
    p.add_argument("--drafter", required=True, help="drafter model id or path (same tokenizer as the target)")
    p.add_argument("--gguf-file")
    p.add_argument("--drafter-gguf-file")
    p.add_argument("--cache-dir")
    p.add_argument("--dataset", help="a public dataset name (with --data-file)")
    p.add_argument("--data-file")
    p.add_argument("--builtin", default="math", help="a built-in prompt set, when no --dataset")
    p.add_argument("--sample", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", help="also write the Markdown here")
    return p.parse_args()


def bucket_names() -> list[str]:
    edges = ["0", *(f"{e:g}" for e in CONFIDENCE_EDGES), "1"]
    return [f"[{lo}, {hi}{']' if hi == '1' else ')'}" for lo, hi in zip(edges, edges[1:], strict=False)]


@torch.no_grad()
def main() -> None:
    args = parse_args()
    target, tokenizer = load_model_and_tokenizer(args.target, gguf_file=args.gguf_file, cache_dir=args.cache_dir)
    drafter, _ = load_model_and_tokenizer(args.drafter, gguf_file=args.drafter_gguf_file, cache_dir=args.cache_dir)
    if args.dataset:
        prompts = sample(load_dataset_file(args.dataset, args.data_file), args.sample, seed=0)
    else:
        prompts = sample(load_builtin(args.builtin), args.sample, seed=0)
    counts = [[0, 0] for _ in range(len(CONFIDENCE_EDGES) + 1)]  # per bucket: positions, target's token
    for prompt in prompts:
        encoded = encode_prompt(tokenizer, prompt.text, True, target.device)
        n = encoded["input_ids"].shape[1]
        out = target.generate(
            **encoded,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            pad_token_id=pad_token_id(target, tokenizer),
        )
        probabilities = torch.softmax(drafter(out).logits[0, n - 1 : -1].float(), dim=-1)
        confidence, token = probabilities.max(dim=-1)
        for p, same in zip(confidence.tolist(), (token == out[0, n:]).tolist(), strict=True):
            counts[confidence_bucket(p)][0] += 1
            counts[confidence_bucket(p)][1] += same
    lines = [
        "# Drafter confidence vs the target's greedy token",
        "",
        f"- target: `{args.target}`; drafter: `{args.drafter}`",
        f"- prompts: {len(prompts)} from {args.dataset or args.builtin}, up to {args.max_new_tokens} new tokens, "
        "float32, greedy, chat template on",
        f"- machine: {describe_machine(machine_info())}",
        "",
        "| drafter's probability of its greedy token | positions | the target's token | share |",
        "|---|---:|---:|---:|",
    ]
    for name, (positions, same) in zip(bucket_names(), counts, strict=True):
        share = f"{same / positions:.2f}" if positions else "-"
        lines.append(f"| {name} | {positions} | {same} | {share} |")
    print(*lines, sep="\n")
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
