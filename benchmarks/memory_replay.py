"""Replay drafting with a memory of earlier answers (Max-Gram memory vs SuffixDecoding) on recorded greedy outputs.

As `max_gram_replay.py`: greedy output does not depend on the drafts, so the target forwards a drafting policy needs
on a prompt set run in order (each prompt's answer remembered before the next) follow from the recorded prompts and
answers alone; a cost table (`cost(n)`, an n-token forward relative to a 1-token one) turns them into a modelled
speedup over greedy. Policies are compared on two halves of each set: the odd-numbered prompts (where a rule may be
chosen) and the even-numbered ones (held out: report these); every prompt's answer joins the memory in order.

Usage:

    python benchmarks/max_gram_replay.py record --out /tmp/rep.jsonl --sets extraction,code-edits
    PYTHONPATH=.:/work/anchors python benchmarks/memory_replay.py /tmp/rep.jsonl \\
        --costs benchmarks/results/max_gram_replay/costs_default_kernels.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from hf_cascade.adaptive import max_gram_tracker, scored_proposal
from hf_cascade.max_gram import MaxGramIndex
from hf_cascade.memory import MaxGramMemory

sys.path.insert(0, str(Path(__file__).parent))
from max_gram_replay import MAX_NEW_TOKENS, replay  # noqa: E402

# The cost the cascade fits to SmolLM2's timed forwards with the default kernels (bench report, `fitted cost`).
COSTS = (0.5, 0.035)


class MemoryPolicy:
    """The cascade's Max-Gram (target reviews, one proposal per review), with a memory shared across prompts: as
    `CascadeDrafter`, the memory's own tracker (acceptance of earlier calls) cuts the proposals when there is one."""

    def __init__(self, prompt: list[int], memory: MaxGramMemory | None):
        self.index = MaxGramIndex(8, 1)
        self.index.extend(prompt)
        self.tracker = memory.tracker if memory is not None else max_gram_tracker()
        self.memory = memory
        self.key = (0, 0)

    def draft(self, context: list[int]) -> list[int]:
        tokens, self.key, _ = scored_proposal(self.index, context, 16, 0, self.tracker, COSTS, memory=self.memory)
        return tokens

    def feedback(self, draft: list[int], accepted: int, kept: list[int]) -> None:
        if draft:
            self.tracker.update(self.key, accepted=accepted, rejected=accepted < len(draft))
        self.index.extend(kept)

    def end(self, prompt: list[int], output: list[int]) -> None:
        if self.memory is not None:
            self.memory.add(output)


class SuffixPolicy:
    """SuffixDecoding with vLLM's defaults, as `hf_cascade.benchmark.suffix` runs it."""

    def __init__(self, prompt: list[int], cache, request_id: int):
        self.cache, self.request_id, self.prompt = cache, request_id, prompt
        cache.start_request(request_id, prompt)
        self.started = False

    def draft(self, context: list[int]) -> list[int]:
        room = len(self.prompt) + MAX_NEW_TOKENS - 1 - len(context)
        if room <= 0:
            return []
        draft = self.cache.speculate(
            self.request_id, context[-24:], max_spec_tokens=min(24, room), max_spec_factor=1.0, min_token_prob=0.1
        )
        return list(draft.token_ids)

    def feedback(self, draft: list[int], accepted: int, kept: list[int]) -> None:
        self.cache.add_active_response(self.request_id, kept)

    def end(self, prompt: list[int], output: list[int]) -> None:
        self.cache.stop_request(self.request_id)  # the response stays in the global tree


def run_set(records: list[dict], make: Callable[[], Callable[[list[int]], object]], costs: dict[int, float]):
    """Per prompt `(id, speedup, tokens per forward)` of one policy over one set, in order."""
    factory = make()  # one shared state (memory, global tree) for the whole set
    rows = []
    for r in records:
        holder = {}

        def build(prompt, holder=holder):
            holder["policy"] = factory(prompt)
            return holder["policy"]

        forwards, time, new = replay(r, build, costs)
        holder["policy"].end(r["prompt"], r["output"][:MAX_NEW_TOKENS])
        rows.append((r["id"], (new - 1) / time, new / (forwards + 1)))
    return rows


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def policies() -> dict[str, Callable[[], Callable[[list[int]], object]]]:
    out: dict[str, Callable[[], Callable[[list[int]], object]]] = {
        "cascade (no memory)": lambda: lambda p: MemoryPolicy(p, None),
        "cascade+memory": lambda: (lambda m: lambda p: MemoryPolicy(p, m))(MaxGramMemory()),
    }
    if importlib.util.find_spec("arctic_inference") is not None:
        from arctic_inference.suffix_decoding import SuffixDecodingCache

        def suffix():
            cache, ids = SuffixDecodingCache(24, -1), iter(range(10**6))
            return lambda p: SuffixPolicy(p, cache, next(ids))

        out["suffix (global tree)"] = suffix
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records")
    parser.add_argument("--costs", required=True, help="JSON {n: cost of an n-token forward relative to 1}")
    parser.add_argument("--per-prompt", action="store_true")
    args = parser.parse_args()
    with open(args.records) as f:
        records = [json.loads(line) for line in f]
    with open(args.costs) as f:
        costs = {int(k): float(v) for k, v in json.load(f).items()}
    categories = list(dict.fromkeys(r["category"] for r in records))
    print("modelled speedup over greedy (geometric mean; odd-numbered prompts / even-numbered held out / all),")
    print("tokens per target forward in brackets (all)\n")
    print("| policy | " + " | ".join(categories) + " |")
    print("|---|" + "---|" * len(categories))
    for name, make in policies().items():
        cells = []
        for category in categories:
            rows = run_set([r for r in records if r["category"] == category], make, costs)
            odd, even = rows[0::2], rows[1::2]
            cells.append(
                f"{geomean([x[1] for x in odd]):.3f} / {geomean([x[1] for x in even]):.3f} / "
                f"{geomean([x[1] for x in rows]):.3f} ({statistics.fmean(x[2] for x in rows):.2f})"
            )
            if args.per_prompt:
                print(name, category, [f"{x[1]:.2f}" for x in rows], file=sys.stderr)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
