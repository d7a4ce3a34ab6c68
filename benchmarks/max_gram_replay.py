"""Replay Max-Gram drafting policies on recorded greedy outputs: forward passes and modelled time, no model run.

Greedy output does not depend on the drafts, so how many target forwards a drafting policy needs, and over how many
tokens each, can be computed exactly from the prompt and the greedy answer alone. With a measured cost table
(`cost(n)` = seconds of an n-token forward relative to a 1-token one) that gives a modelled speedup over greedy for
many policies in seconds, which a wall-clock benchmark (noise of a few percent per run) cannot resolve. It ignores
Python overhead (about 1% of wall time in `hf-cascade bench`), so compare policies with it, then confirm the chosen
one with `hf-cascade bench`.

The replay uses hf_cascade's own `MaxGramIndex`, `AcceptanceTracker` and `scored_proposal`, the same calls the
cascade makes for a Max-Gram-only configuration (reviewer = target, one proposal per review), and transformers'
prompt lookup algorithm (`prompt_lookup_num_tokens=10`, n-grams of 2 then 1, first match) for reference.

Usage:

    # 1. record greedy answers (prompt and output token ids) of the default SmolLM2 model, packed for oneDNN
    python benchmarks/max_gram_replay.py record --out /tmp/smol_greedy.jsonl --onednn-linear \\
        --cache-dir /tmp/hfc_cache [--gsm8k /tmp/assets/data/gsm8k_test.jsonl --gsm8k-count 20]
    # 2. replay policies with a cost table measured now on this machine (or --costs JSON of {n: relative cost})
    python benchmarks/max_gram_replay.py replay /tmp/smol_greedy.jsonl --onednn-linear --cache-dir /tmp/hfc_cache
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable

from hf_cascade.adaptive import AcceptanceTracker, max_gram_tracker, scored_proposal
from hf_cascade.max_gram import MaxGramIndex

MAX_NEW_TOKENS = 96
COST_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 17)


def lookup_draft(context: list[int], max_ngram: int = 2, num_tokens: int = 10) -> list[int]:
    """transformers' `PromptLookupCandidateGenerator`: first earlier match of the last 2, then 1 tokens."""
    length = len(context)
    for n in range(min(max_ngram, length - 1), 0, -1):
        pattern = context[-n:]
        for i in range(length - n + 1):
            if context[i : i + n] == pattern:
                start, end = i + n, min(i + n + num_tokens, length)
                if start < end:
                    return context[start:end]
    return []


class MaxGramPolicy:
    """Max-Gram as the cascade runs it for a target-only review: one proposal per review, cut adaptively."""

    def __init__(self, prompt: list[int], draft_cost: float, token_cost: float, prior: str, num_tokens: int = 16):
        self.index = MaxGramIndex(8, 1)
        self.index.extend(prompt)
        self.tracker = max_gram_tracker() if prior == "match" else AcceptanceTracker()
        self.draft_cost, self.token_cost, self.num_tokens = draft_cost, token_cost, num_tokens
        self.key = (0, 0)

    def draft(self, context: list[int]) -> list[int]:
        costs = (self.draft_cost, self.token_cost)
        tokens, self.key, _ = scored_proposal(self.index, context, self.num_tokens, 0, self.tracker, costs)
        return tokens

    def feedback(self, draft: list[int], accepted: int, kept: list[int]) -> None:
        if draft:
            self.tracker.update(self.key, accepted=accepted, rejected=accepted < len(draft))
        self.index.extend(kept)


class LookupPolicy:
    def __init__(self, prompt: list[int]):
        pass

    def draft(self, context: list[int]) -> list[int]:
        return lookup_draft(context)

    def feedback(self, draft: list[int], accepted: int, kept: list[int]) -> None:
        pass


def relative_cost(n: int, costs: dict[int, float]) -> float:
    """Cost of an n-token forward, interpolated (or extrapolated from the last two sizes) in the table."""
    sizes = sorted(costs)
    if n in costs:
        return costs[n]
    if n > sizes[-1]:
        a, b = sizes[-2], sizes[-1]
        return costs[b] + (costs[b] - costs[a]) / (b - a) * (n - b)
    hi = next(s for s in sizes if s > n)
    lo = max(s for s in sizes if s < n)
    return costs[lo] + (costs[hi] - costs[lo]) * (n - lo) / (hi - lo)


def replay(record: dict, make: Callable[[list[int]], object], costs: dict[int, float]) -> tuple[int, float, int]:
    """`(target forwards after the prefill, modelled time in 1-token forwards, new tokens)` of one answer."""
    prompt, output = record["prompt"], record["output"][:MAX_NEW_TOKENS]
    policy = make(prompt)
    policy.feedback([], 0, output[:1])  # the prefill produced the first token
    done, forwards, time = 1, 0, 0.0
    while done < len(output):
        draft = policy.draft(prompt + output[:done])
        accepted = 0
        while accepted < len(draft) and done + accepted < len(output) and draft[accepted] == output[done + accepted]:
            accepted += 1
        policy.feedback(draft, accepted, output[done : done + accepted + 1])
        forwards += 1
        time += relative_cost(1 + len(draft), costs)
        done += accepted + 1
    return forwards, time, len(output)


def _load_model(args: argparse.Namespace):
    import torch

    from hf_cascade import load_model_and_tokenizer, use_onednn_linear
    from hf_cascade.loading import default_model_path

    folder, gguf = default_model_path()
    model, tokenizer = load_model_and_tokenizer(folder, gguf_file=gguf, dtype=torch.float32, cache_dir=args.cache_dir)
    if args.onednn_linear:
        use_onednn_linear(model)
    return model, tokenizer


def record(args: argparse.Namespace) -> None:
    from hf_cascade.benchmark.prompts import BUILTIN_SETS, load_builtin, load_dataset_file
    from hf_cascade.loading import encode_prompt, pad_token_id

    model, tokenizer = _load_model(args)
    sets = args.sets.split(",") if args.sets else BUILTIN_SETS
    prompts = [p for name in sets for p in load_builtin(name)]
    if args.gsm8k:
        prompts += load_dataset_file("gsm8k", args.gsm8k)[: args.gsm8k_count]
    with open(args.out, "w") as f:
        for p in prompts:
            enc = encode_prompt(tokenizer, p.text, True, model.device)
            ids = model.generate(
                **enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=pad_token_id(model, tokenizer)
            )
            n = enc["input_ids"].shape[1]
            row = {"id": p.id, "category": p.category, "prompt": ids[0, :n].tolist(), "output": ids[0, n:].tolist()}
            f.write(json.dumps(row) + "\n")
            print(p.id, flush=True)


def measured_costs(args: argparse.Namespace) -> dict[int, float]:
    import torch

    from hf_cascade.benchmark import measure_cost

    model, _ = _load_model(args)
    context = torch.randint(100, 20000, (1, 150))
    seconds = measure_cost(model, context, ks=COST_SIZES, repeats=15).forward_s
    return {n: seconds[n] / seconds[1] for n in COST_SIZES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record greedy answers of the default SmolLM2 model")
    rec.add_argument("--out", required=True)
    rec.add_argument("--gsm8k", help="GSM8K test JSONL (../shared/models/fetch.sh) to add held-out prompts from")
    rec.add_argument("--gsm8k-count", type=int, default=20)
    rec.add_argument("--sets", help="comma-separated built-in sets to record (default: the default benchmark's)")
    rep = sub.add_parser("replay", help="replay policies on recorded answers")
    rep.add_argument("records")
    rep.add_argument("--costs", help="JSON file {n: cost of an n-token forward relative to 1}; measured if absent")
    for p in (rec, rep):
        p.add_argument("--onednn-linear", action="store_true")
        p.add_argument("--cache-dir")
    args = parser.parse_args()
    if args.command == "record":
        record(args)
        return
    with open(args.records) as f:
        records = [json.loads(line) for line in f]
    if args.costs:
        with open(args.costs) as f:
            costs = {int(k): float(v) for k, v in json.load(f).items()}
    else:
        costs = measured_costs(args)
    print("cost table (n tokens: relative cost):", ", ".join(f"{n}: {c:.2f}" for n, c in sorted(costs.items())))
    policies: dict[str, Callable[[list[int]], object]] = {"prompt lookup": LookupPolicy}
    for draft_cost, token_cost in ((0.0, 0.05), (0.3, 0.05), (0.6, 0.035)):
        for prior in ("flat", "match"):
            name = f"max-gram dc={draft_cost} tc={token_cost} prior={prior}"
            policies[name] = lambda p, d=draft_cost, t=token_cost, pr=prior: MaxGramPolicy(p, d, t, pr)
    categories = list(dict.fromkeys(r["category"] for r in records))
    print("\nmodelled speedup over greedy (geometric mean over prompts):\n")
    print("| policy | " + " | ".join(categories) + " |")
    print("|---|" + "---:|" * len(categories))
    for name, make in policies.items():
        cells = []
        for category in categories:
            ratios = []
            for r in (r for r in records if r["category"] == category):
                _, time, new = replay(r, make, costs)
                ratios.append((new - 1) / time)  # greedy: one 1-token forward per token after the prefill
            cells.append(f"{math.exp(statistics.fmean(math.log(x) for x in ratios)):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
