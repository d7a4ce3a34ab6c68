"""Run a benchmark: every method on every prompt, interleaved (A B C A B C ...) after a warm-up, several repeats.

Interleaving makes slow drifts of the machine (thermal state, other processes) hit every method alike; medians over
repeats drop single stalls. Every run's tokens are compared with greedy's: the benchmark is also an exactness test.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import CascadeConfig
from ..cpu import count_parameters
from ..drafter_packing import packed_drafters
from ..errors import CascadeValueError
from ..memory import MaxGramMemory
from ..runner import accepts_logits_to_keep, new_cache
from .methods import Method, MethodState, Run, run_method
from .prompts import Prompt

__all__ = [
    "BenchmarkResult",
    "ChatTurns",
    "Mismatch",
    "ModelCost",
    "PromptResult",
    "batch_groups",
    "batch_inputs",
    "cannot_batch",
    "first_difference",
    "measure_cost",
    "run_benchmark",
]


@dataclass(frozen=True)
class Mismatch:
    """A run whose new tokens differ from greedy's (an error, never a footnote).

    Args:
        prompt_id (`str`): the prompt's id.
        method (`str`): the label of the method that differed.
        kind (`str`): that method's kind (`"prompt-lookup"`, `"assisted"`, `"cascade"`, ...): `"cascade"` is
            hf_cascade's own, the others are transformers' methods.
        first_difference (`int`): index of the first new token that differs.
        repeat (`int`, *optional*): which timed repeat (1-based); `None` for a run outside the repeats.
    """

    prompt_id: str
    method: str
    kind: str
    first_difference: int
    repeat: int | None = None

    @property
    def is_cascade(self) -> bool:
        """Whether the run was hf_cascade's (a bug of ours) rather than one of transformers' methods."""
        return self.kind == "cascade"

    def __str__(self) -> str:  # the text results.json records (schema hf_cascade.bench/1)
        repeat = f" (repeat {self.repeat})" if self.repeat is not None else ""
        return (
            f"prompt {self.prompt_id}: {self.method}{repeat} differs from greedy from new token {self.first_difference}"
        )


@dataclass
class ModelCost:
    """What one forward pass of a model costs.

    Args:
        parameters (`int`): parameter count (the paper's SWI cost model).
        forward_s (`dict[int, float]`): k -> median seconds of a k-token forward pass with a warm KV cache of the
            benchmark's first prompt (the measured cost model; `forward_s[1]` is the decoding step).
    """

    parameters: int
    forward_s: dict[int, float] = field(default_factory=dict)


@dataclass
class PromptResult:
    """All runs of all methods on one prompt (on one turn of a multi-turn prompt).

    Args:
        prompt (`Prompt`): the prompt.
        prompt_tokens (`int`): its length in tokens (after the chat template; for a later turn, with the history).
        runs (`dict[str, list[Run]]`): method label -> timed runs, in order.
        turn (`int`, *optional*): which user turn (1-based) of a multi-turn prompt; `None` for a single-turn one.
        batch (`list[Prompt]`): with `run_benchmark(batch_size=B > 1)`, the prompts generated together in one call
            (`prompt` is the first; `prompt_tokens` the padded width); empty for one prompt per call.
    """

    prompt: Prompt
    prompt_tokens: int
    runs: dict[str, list[Run]] = field(default_factory=dict)
    turn: int | None = None
    batch: list[Prompt] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The prompt's id, with `/turnN` for a turn of a multi-turn prompt, or the batch's ids joined by `+` (how
        reports name the row)."""
        if self.batch:
            return "+".join(p.id for p in self.batch)
        return self.prompt.id if self.turn is None else f"{self.prompt.id}/turn{self.turn}"

    @property
    def prompt_count(self) -> int:
        """How many prompts the row covers (the batch's size, else 1)."""
        return len(self.batch) or 1

    def median_run(self, label: str) -> Run:
        """The run of `label` with the median wall time (the lower middle one for an even count), so that its
        forward passes, forward time and outside-forward time add up to its wall time."""
        runs = sorted(self.runs[label], key=lambda r: r.seconds)
        return runs[(len(runs) - 1) // 2]


@dataclass
class BenchmarkResult:
    """Everything a benchmark measured; `hf_cascade.benchmark.report` turns it into tables, JSON and a plot.

    Args:
        methods (`list[Method]`): the methods, greedy (the reference) first.
        prompts (`list[PromptResult]`): per prompt results.
        costs (`dict[str, ModelCost]`): `"target"` and each drafter name -> its cost.
        settings (`dict`): how the benchmark was run (models, dtype, device, max_new_tokens, repeats, ...).
        machine (`dict`): `machine_info()` of the machine it ran on.
        mismatches (`list[Mismatch]`): every run whose tokens differ from greedy's (an error, not a footnote).
        wall_time_s (`float`): total time of the benchmark, warm-up and cost measurement included.
        not_run (`dict[str, str]`): what was asked for but left out, and why (method label or `prompt ID` ->
            reason): with batches, `cannot_batch`; the `bench` CLI adds requested methods it cannot run here.
    """

    methods: list[Method]
    prompts: list[PromptResult]
    costs: dict[str, ModelCost]
    settings: dict[str, Any]
    machine: dict[str, Any]
    mismatches: list[Mismatch] = field(default_factory=list)
    wall_time_s: float = 0.0
    not_run: dict[str, str] = field(default_factory=dict)


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first position where `a` and `b` differ (the shorter length if one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


COST_KS = (1, 2, 4, 8)  # the chunk sizes whose forward pass the benchmark times


@torch.no_grad()
def measure_cost(
    model: torch.nn.Module,
    context: torch.Tensor,
    ks: tuple[int, ...] = COST_KS,
    repeats: int = 5,
    attention_mask: torch.Tensor | None = None,
) -> ModelCost:
    """Median wall time of a k-token forward pass after `context` is in the KV cache (every row feeding `k` tokens).

    Args:
        model (`PreTrainedModel`): a causal LM.
        context (`torch.LongTensor` of shape `(rows, context_length)`): tokens to prefill the cache with (one row,
            or several left-padded ones with their `attention_mask`).
        ks (`tuple[int, ...]`): the chunk sizes to time.
        repeats (`int`): timed passes per chunk size (after one untimed pass).
        attention_mask (`torch.LongTensor` of shape `(rows, context_length)`, *optional*): the left-padded rows'
            mask; each row's positions then count its own tokens.
    """
    parameters = count_parameters(model)
    context = context.to(model.device)
    cache = new_cache(model)
    rows, length = context.shape
    padded: dict[str, torch.Tensor] = {}
    if attention_mask is not None:
        mask = attention_mask.to(model.device)
        padded = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}
    model(input_ids=context, cache=cache, use_cache=True, **padded)
    last = padded["position_ids"][:, -1:] if padded else torch.full((rows, 1), length - 1, device=model.device)
    cuda = model.device.type == "cuda"
    keep = accepts_logits_to_keep(model)
    times: dict[int, list[float]] = {k: [] for k in ks}
    # Sizes take turns (1 2 4 8, 1 2 4 8, ...), so a busy spell of the machine slows every size alike instead of
    # making one size look expensive (or a larger one cheaper than a smaller one).
    for i in range(repeats + 1):
        for k in ks:
            chunk = context[:, -1:].repeat(1, k)
            positions = last + torch.arange(1, k + 1, device=model.device)
            extra = {"logits_to_keep": k} if keep else {}
            if padded:
                extra["attention_mask"] = torch.cat([padded["attention_mask"], torch.ones_like(chunk)], dim=1)
            if cuda:
                torch.cuda.synchronize(model.device)
            t0 = time.perf_counter()
            model(input_ids=chunk, cache=cache, position_ids=positions, use_cache=True, **extra)
            if cuda:
                torch.cuda.synchronize(model.device)
            if i:  # the first round is a warm-up
                times[k].append(time.perf_counter() - t0)
            cache.crop(-k)
    return ModelCost(parameters, {k: statistics.median(t) for k, t in times.items()})


@dataclass(frozen=True)
class ChatTurns:
    """How a benchmark builds the input of a later turn of a multi-turn prompt from the chat so far.

    Args:
        encode (`Callable[[list[dict[str, str]]], dict[str, torch.Tensor]]`): chat messages (`role`, `content`) ->
            `input_ids` and `attention_mask` of shape `(1, n)` ending with the assistant's turn (e.g.
            `hf_cascade.loading.encode_prompt` with the chat template).
        decode (`Callable[[list[int]], str]`): a method's new tokens -> the assistant message put in the history
            (e.g. `tokenizer.decode(ids, skip_special_tokens=True)`).
    """

    encode: Callable[[list[dict[str, str]]], dict[str, torch.Tensor]]
    decode: Callable[[list[int]], str]


_CANNOT_BATCH = {
    "prompt-lookup": "transformers' prompt lookup refuses batches of more than one prompt",
    "assisted": "transformers' assisted generation refuses batches of more than one prompt",
    "suffix": "SuffixDecoding (arctic_inference's suffix tree per request) is run one prompt at a time here",
}
_MULTI_TURN = "a later turn is built from each method's own earlier answer, so the methods' inputs differ"


def cannot_batch(methods: list[Method], prompts: list[Prompt], batch_size: int) -> dict[str, str]:
    """What a benchmark with `batch_size` leaves out, and why: method label or `prompt ID` -> reason.

    Nothing for `batch_size == 1`. Otherwise transformers' prompt lookup and assisted generation (both refuse
    batch > 1), `suffix` (batch 1 only here) and multi-turn prompts (each method's later turn holds its own answers,
    so the methods would not generate the same batch). `cascade+memory` batches: the memory serves every row of a
    batch and learns each row's answer after the batch.
    """
    if batch_size == 1:
        return {}
    out = {m.label: f"cannot batch ({_CANNOT_BATCH[m.kind]})" for m in methods if m.kind in _CANNOT_BATCH}
    out.update({f"prompt {p.id}": f"cannot batch ({_MULTI_TURN})" for p in prompts if p.followups})
    return out


def batch_inputs(rows: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One-row inputs left-padded into one batch, as a tokenizer with `padding_side="left"` pads them.

    Args:
        rows (`list[dict]`): `input_ids` and `attention_mask` of shape `(1, n_i)` each (unpadded).
        pad_token_id (`int`): the id padding positions hold (masked out).

    Returns:
        `dict` with `input_ids` and `attention_mask` of shape `(len(rows), max n_i)`.
    """
    width = max(r["input_ids"].shape[1] for r in rows)
    ids, masks = [], []
    for r in rows:
        pad = width - r["input_ids"].shape[1]
        ids.append(torch.nn.functional.pad(r["input_ids"], (pad, 0), value=pad_token_id))
        mask = r.get("attention_mask", torch.ones_like(r["input_ids"]))
        masks.append(torch.nn.functional.pad(mask, (pad, 0), value=0))
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}


def batch_groups(prompts: list[Prompt], batch_size: int) -> list[list[int]]:
    """Indices of `prompts` in batches: each category's prompts in order, `batch_size` at a time (a category's last
    batch may be smaller), categories in order of first appearance."""
    by_category: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_category.setdefault(prompt.category, []).append(i)
    return [items[i : i + batch_size] for items in by_category.values() for i in range(0, len(items), batch_size)]


def _packs_drafters(method: Method) -> bool:
    """Whether `method` is a cascade that runs its drafters packed for oneDNN (`CascadeConfig.pack_drafters`)."""
    return method.kind == "cascade" and (method.cascade_config or CascadeConfig()).pack_drafters


def run_benchmark(
    target: torch.nn.Module,
    encoded: list[tuple[Prompt, dict[str, torch.Tensor]]],
    methods: list[Method],
    drafters: dict[str, torch.nn.Module],
    generation_kwargs: dict[str, Any],
    *,
    repeats: int = 3,
    warmup_tokens: int = 16,
    settings: dict[str, Any] | None = None,
    machine: dict[str, Any] | None = None,
    measure_costs: bool = True,
    progress: Callable[[int], Any] | None = None,
    status: Callable[[str], Any] | None = None,
    chat_turns: ChatTurns | None = None,
    memory: MaxGramMemory | None = None,
    batch_size: int = 1,
) -> BenchmarkResult:
    """Benchmark `methods` on `encoded` prompts.

    Args:
        target (`PreTrainedModel`): the target model.
        encoded (`list[tuple[Prompt, dict]]`): prompts with their `input_ids`/`attention_mask` of shape `(1, n)`.
        methods (`list[Method]`): must start with the `greedy` reference.
        drafters (`dict[str, PreTrainedModel]`): drafter models by the names the methods use.
        generation_kwargs (`dict`): shared `generate` arguments (`max_new_tokens`, `do_sample=False`, `pad_token_id`).
        repeats (`int`): timed runs of each method per prompt; the report uses medians.
        warmup_tokens (`int`): each method first runs once untimed on the first prompt for this many tokens.
        settings (`dict`, *optional*): how the benchmark was run, recorded in the result as it is.
        machine (`dict`, *optional*): `machine_info()` of this machine, recorded in the result as it is.
        measure_costs (`bool`): time k-token forwards of each model (for the latency SWI and the report).
        progress (`Callable[[int], Any]`, *optional*): called with 0 when the timed runs start (after the cost
            measurement and the warm-up, which can take minutes: a progress bar started then gives a sound ETA), then
            with 1 after every timed run (e.g. `tqdm.update`).
        status (`Callable[[str], Any]`, *optional*): called with a one-line description before each untimed phase
            (each model's cost measurement, each method's warm-up), e.g. `print`.
        chat_turns (`ChatTurns`, *optional*): needed when a prompt has `followups`. Each turn is benchmarked like a
            prompt of its own (all repeats of all methods, then the exactness check, then the remembering methods
            learn its answer) before the next; a method's next turn gets the chat so far with that method's own
            answers in it (its first run's; identical to greedy's when exact). One `PromptResult` per turn.
        memory (`MaxGramMemory`, *optional*): a warm start: every `cascade+memory` method starts from a copy of it,
            and `suffix` (with its global tree) starts with its documents as earlier responses (`MethodState`).
            Never changed here.
        batch_size (`int`): prompts per `generate` call. Above 1, each category's prompts are generated in batches
            of this size in order (left-padded with `generation_kwargs["pad_token_id"]`; one `PromptResult` per
            batch, whose runs count the new tokens of all rows, each up to and including its EOS), every row is
            checked against greedy's batched row, and the methods and prompts `cannot_batch` names are left out
            (`BenchmarkResult.not_run`).

    Returns:
        `BenchmarkResult`
    """
    if not methods or methods[0].kind != "greedy":
        raise CascadeValueError("the first method must be greedy: it is the reference for speedups and exactness")
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise CascadeValueError(f"method labels must be unique, got {labels}")
    missing = sorted({name for m in methods for name in m.drafters} - set(drafters))
    if missing:
        raise CascadeValueError(
            f"methods use drafter(s) {missing} that are not registered; registered: {sorted(drafters)}"
        )
    if repeats < 1:
        raise CascadeValueError(f"repeats must be >= 1, got {repeats}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CascadeValueError(f"batch_size must be an integer >= 1, got {batch_size!r}; 1 runs one prompt per call")
    not_run = cannot_batch(methods, [p for p, _ in encoded], batch_size)
    if batch_size > 1:
        if generation_kwargs.get("pad_token_id") is None:
            raise CascadeValueError(
                f"batch_size={batch_size} needs generation_kwargs['pad_token_id'] to left-pad the prompts with"
            )
        methods = [m for m in methods if m.label not in not_run]
        labels = [m.label for m in methods]
        encoded = [(p, e) for p, e in encoded if f"prompt {p.id}" not in not_run]
    multi_turn = [prompt.id for prompt, _ in encoded if prompt.followups]
    if multi_turn and chat_turns is None:
        raise CascadeValueError(
            f"prompt(s) {multi_turn[:3]} have several turns: pass chat_turns=ChatTurns(encode, decode) so that later "
            "turns can be built from the chat so far"
        )
    vocab_size = target.config.get_text_config().vocab_size
    if memory is not None:
        memory.check_vocab_size(vocab_size)
    say = status or (lambda line: None)
    t_start = time.perf_counter()
    costs: dict[str, ModelCost] = {}
    if measure_costs and encoded:
        context = encoded[0][1]["input_ids"]
        models = {"target": target, **drafters}
        for i, (name, model) in enumerate(models.items(), 1):
            say(f"measuring forward-pass cost {i}/{len(models)}: {name} ({', '.join(map(str, COST_KS))} tokens)")
            costs[name] = measure_cost(model, context)
        for name, model in drafters.items():
            if any(name in m.drafters and _packs_drafters(m) for m in methods):
                # As the cascade runs it (`CascadeConfig.pack_drafters`); this also packs it before the timed runs.
                with packed_drafters([model], target) as (record,):
                    if record.layers:
                        say(f"measuring forward-pass cost: {name} packed for oneDNN, as the cascade runs it")
                        costs[f"{name} (packed)"] = measure_cost(model, context)

    batches = (
        [[encoded[i] for i in g] for g in batch_groups([p for p, _ in encoded], batch_size)] if batch_size > 1 else []
    )
    pad = generation_kwargs.get("pad_token_id")
    if encoded and warmup_tokens > 0:  # first calls allocate memory and pick kernels
        warm = {**generation_kwargs, "max_new_tokens": warmup_tokens}
        first = batch_inputs([e for _, e in batches[0]], pad) if batches else encoded[0][1]
        where = "the first batch" if batches else "the first prompt"
        for i, method in enumerate(methods, 1):
            say(f"warm-up {i}/{len(methods)}: {method.label} on {where} ({warmup_tokens} tokens, untimed)")
            run_method(method, target, drafters, first, warm)  # a fresh state: remembers nothing after

    states = {m.label: MethodState(m, vocab_size, memory) for m in methods if m.needs_state}
    results = []
    mismatches = []
    if progress is not None:
        progress(0)
    for batch in batches:
        inputs = batch_inputs([e for _, e in batch], pad)
        result = PromptResult(
            batch[0][0], inputs["input_ids"].shape[1], {m.label: [] for m in methods}, batch=[p for p, _ in batch]
        )
        _timed_runs(
            result,
            methods,
            target,
            drafters,
            dict.fromkeys(labels, inputs),
            generation_kwargs,
            states,
            repeats,
            progress,
        )
        reference = _row_ids(result.runs[labels[0]][0])
        for state in states.values():  # the memory serves every row of a batch and learns after the batch
            for answer in reference:
                state.end_prompt(answer)
        for method in methods:
            for i, run in enumerate(result.runs[method.label]):
                for (prompt, _), row, ref in zip(batch, _row_ids(run), reference, strict=True):
                    if row != ref:
                        mismatches.append(
                            Mismatch(prompt.id, method.label, method.kind, first_difference(row, ref), i + 1)
                        )
        results.append(result)
    for prompt, first_inputs in [] if batches else encoded:
        histories: dict[str, list[dict[str, str]]] = {label: [] for label in labels}  # each method's chat so far
        for turn, text in enumerate(prompt.turns):
            if turn == 0:
                inputs = dict.fromkeys(labels, first_inputs)
            else:
                inputs = {
                    label: chat_turns.encode([*histories[label], {"role": "user", "content": text}]) for label in labels
                }
            result = PromptResult(
                prompt,
                inputs[labels[0]]["input_ids"].shape[1],
                {label: [] for label in labels},
                turn + 1 if prompt.followups else None,
            )
            _timed_runs(result, methods, target, drafters, inputs, generation_kwargs, states, repeats, progress)
            reference = result.runs[labels[0]][0].ids
            for state in states.values():  # remembering methods learn each answer once, after all its runs
                state.end_prompt(reference)
            for method in methods:
                for i, run in enumerate(result.runs[method.label]):
                    if run.ids != reference:
                        mismatches.append(
                            Mismatch(result.id, method.label, method.kind, first_difference(run.ids, reference), i + 1)
                        )
                if turn + 1 < len(prompt.turns):
                    answer = chat_turns.decode(result.runs[method.label][0].ids)
                    histories[method.label] += [
                        {"role": "user", "content": text},
                        {"role": "assistant", "content": answer},
                    ]
            results.append(result)
    return BenchmarkResult(
        methods=list(methods),
        prompts=results,
        costs=costs,
        settings=dict(settings or {}),
        machine=dict(machine or {}),
        mismatches=mismatches,
        wall_time_s=time.perf_counter() - t_start,
        not_run=not_run,
    )


def _row_ids(run: Run) -> list[list[int]]:
    """Each row's new tokens of a batched run (a last batch of one prompt is a plain run, which stops at EOS)."""
    return run.rows or [run.ids]


def _timed_runs(
    result: PromptResult,
    methods: list[Method],
    target: torch.nn.Module,
    drafters: dict[str, torch.nn.Module],
    inputs: dict[str, dict[str, torch.Tensor]],
    generation_kwargs: dict[str, Any],
    states: dict[str, MethodState],
    repeats: int,
    progress: Callable[[int], Any] | None,
) -> None:
    """`repeats` timed runs of every method on one prompt or batch (`inputs`: per method label), interleaved
    (A B C A B C), appended to `result.runs`."""
    for _ in range(repeats):
        for method in methods:
            run = run_method(
                method, target, drafters, inputs[method.label], generation_kwargs, states.get(method.label)
            )
            result.runs[method.label].append(run)
            if progress is not None:
                progress(1)
