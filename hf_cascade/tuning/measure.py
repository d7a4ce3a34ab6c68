"""What `hf_cascade.tune` measures on the user's machine: forward-pass cost curves, per-pair acceptance of the
cascade's drafters, the time outside the models, and (CPU) what oneDNN packing would change.

Acceptance is read from `CascadeStats` of real cascade runs. A drafter's `LevelStats` pool every review of its tokens,
so each run is a *chain*: one drafter per level (`K` diagonal), where every drafter is reviewed by exactly one model
and its counts belong to that (reviewer, drafter) pair. The pairs a full cascade has but no single chain holds (the
target reviewing Max-Gram's tail, a drafter reviewing a drafter two sizes down) get chains of their own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..benchmark.methods import ForwardTimer
from ..benchmark.runner import ModelCost, measure_cost
from ..config import CascadeConfig
from ..cpu import OneDNNLinear, onednn_linear_available, use_onednn_linear
from .ewif import geometric_acceptance

__all__ = [
    "TUNE_KS",
    "AcceptanceCount",
    "RunTimings",
    "chains",
    "is_packed",
    "measure_acceptance",
    "measure_costs",
    "cost_ratio",
    "probe_onednn",
]

# Forward sizes timed per model: every size a draft review can feed, since the curve need not be smooth or even
# monotone (oneDNN-packed Qwen2.5-Coder-1.5B on a 2-core CPU: 4-6 tokens cost 0.75x one token, 2 tokens 1.25x).
TUNE_KS = tuple(range(1, 17))


@dataclass
class AcceptanceCount:
    """Counts of one (level, drafter column) pair over the measurement runs at one lenience.

    Args:
        level (`int`): 0 for the target's reviews, `r` for drafter `r - 1`'s.
        column (`int`): the drafter (assistants largest first, then Max-Gram).
        lenience (`float`): the `CascadeConfig.lenience` of the runs.
        accepted (`int`): tokens of this drafter the reviewer accepted.
        drafted (`int`): tokens of this drafter the reviewer reviewed.
        reviews (`int`): the reviewer's forward passes (one review each).
    """

    level: int
    column: int
    lenience: float
    accepted: int = 0
    drafted: int = 0
    reviews: int = 0

    @property
    def rate(self) -> float | None:
        """Per-token acceptance of the i.i.d. model (`ewif.geometric_acceptance`), `None` when nothing was drafted."""
        return geometric_acceptance(self.accepted, self.drafted, self.reviews)


@dataclass
class RunTimings:
    """Time the measurement runs spent outside forward passes.

    Args:
        overhead_s (`float`): seconds per forward pass outside any model (drafting logic, reviews, Python).
        max_gram_s (`float`): seconds per Max-Gram proposal.
    """

    overhead_s: float = 0.0
    max_gram_s: float = 0.0


def measure_costs(
    models: Mapping[str, torch.nn.Module],
    context: torch.Tensor,
    repeats: int = 5,
    status: Callable[[str], Any] | None = None,
) -> dict[str, ModelCost]:
    """`benchmark.measure_cost` of every model over `TUNE_KS` new tokens after `context` (CUDA: synchronised).

    Args:
        models (`Mapping[str, torch.nn.Module]`): name -> model (`"target"` first).
        context (`torch.LongTensor` of shape `(1, context_length)`): a real prompt, prefilled into the cache.
        repeats (`int`): timed passes per size (median).
        status (`Callable[[str], Any]`, *optional*): receives one line per model.
    """
    costs = {}
    for i, (name, model) in enumerate(models.items(), 1):
        if status:
            status(f"timing forwards {i}/{len(models)}: {name} ({TUNE_KS[0]}-{TUNE_KS[-1]} tokens)")
        costs[name] = measure_cost(model, context, ks=TUNE_KS, repeats=repeats)
    return costs


def is_packed(model: torch.nn.Module) -> bool:
    """Whether `use_onednn_linear` already packed the model's linear layers."""
    return any(isinstance(m, OneDNNLinear) for m in model.modules())


def probe_onednn(model: torch.nn.Module, context: torch.Tensor, repeats: int = 5) -> ModelCost | None:
    """The cost curve of a packed *copy* of `model` (`use_onednn_linear`); the model itself is left as it is.

    Returns:
        `ModelCost`, or `None` where packing does not apply: not on CPU, already packed, no oneDNN in this build.
    """
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"} or is_packed(model) or not onednn_linear_available():
        return None
    clone = copy.deepcopy(model)
    try:
        use_onednn_linear(clone)
        return measure_cost(clone, context, ks=TUNE_KS, repeats=repeats)
    finally:
        del clone


def _generate(target: torch.nn.Module, inputs: Mapping[str, torch.Tensor], **kwargs: Any) -> Any:
    return target.generate(**inputs, **kwargs)


def chains(num_assistants: int, use_max_gram: bool) -> list[tuple[int, ...]]:
    """The neural columns of each measurement run, so that every pair (reviewer, drafter below it) is a neighbour in
    one of them. Max-Gram, when on, ends every chain.

    Example: one assistant with Max-Gram gives `[(0,), ()]`: `target <- 0 <- Max-Gram` and `target <- Max-Gram`.
    """
    found: list[tuple[int, ...]] = []
    max_gram = num_assistants if use_max_gram else None
    for level in range(num_assistants + 1):
        for column in range(level, num_assistants + int(use_max_gram)):
            chain = tuple(sorted({*([level - 1] if level else []), *([] if column == max_gram else [column])}))
            if chain not in found:
                found.append(chain)
    return found


def _chain_pairs(chain: tuple[int, ...], max_gram_column: int | None) -> list[tuple[int, int]]:
    """`(level, column)` in the full cascade of each neighbour pair of a chain, from its top."""
    columns = [*chain, *([max_gram_column] if max_gram_column is not None else [])]
    return [(0 if j == 0 else columns[j - 1] + 1, column) for j, column in enumerate(columns)]


def measure_acceptance(
    target: torch.nn.Module,
    assistants: Sequence[torch.nn.Module],
    encoded: Sequence[Mapping[str, torch.Tensor]],
    generation_kwargs: Mapping[str, Any],
    base_config: CascadeConfig,
    lenience_values: Sequence[float] = (1.0,),
    neural_k: int = 8,
    max_gram_k: int = 16,
    status: Callable[[str], Any] | None = None,
) -> tuple[dict[float, dict[tuple[int, int], AcceptanceCount]], RunTimings]:
    """Run each chain (`chains`) on every prompt and count each pair's acceptance, once per lenience value (chains
    with a single drafter have no lenient review: measured once, shared).

    The runs use generous draft lengths (`neural_k` per neural level, `max_gram_k` for Max-Gram) and full-length
    Max-Gram proposals (`adaptive_length=False`), so acceptance is seen far into the drafts, as the model assumes.

    Args:
        target (`PreTrainedModel`): the target.
        assistants (`Sequence[PreTrainedModel]`): the neural drafters, largest first.
        encoded (`Sequence[Mapping[str, torch.Tensor]]`): the prompts' `input_ids`/`attention_mask`.
        generation_kwargs (`Mapping[str, Any]`): `generate` arguments (`max_new_tokens`, `do_sample`, ...).
        base_config (`CascadeConfig`): the user's settings (Max-Gram's index, bigram table, confidence threshold).
        lenience_values (`Sequence[float]`): lenience values to measure.
        neural_k (`int`): the chains' neural k-matrix entries.
        max_gram_k (`int`): the chains' Max-Gram entry.
        status (`Callable[[str], Any]`, *optional*): receives one line per run.

    Returns:
        `({lenience: {(level, column): AcceptanceCount}}, RunTimings)`
    """
    from .. import generation

    use_max_gram = base_config.use_max_gram
    max_gram_column = len(assistants) if use_max_gram else None
    max_gram = replace(base_config.max_gram, adaptive_length=False)
    counts: dict[float, dict[tuple[int, int], AcceptanceCount]] = {float(v): {} for v in lenience_values}
    outside = passes = propose_s = proposals = 0.0
    todo = chains(len(assistants), use_max_gram)
    # Untimed: the first call of a cascade allocates and picks kernels, which would count as time outside the models.
    _generate(target, encoded[0], custom_generate=generation.generate, assistant_models=[assistants[c] for c in todo[0]],
              cascade_config=replace(base_config, k_matrix=None), return_dict_in_generate=True,
              **{**generation_kwargs, "max_new_tokens": 4})  # fmt: skip
    for i, chain in enumerate(todo, 1):
        pairs = _chain_pairs(chain, max_gram_column)
        n = len(pairs)
        k_matrix = [[(max_gram_k if pairs[j][1] == max_gram_column else neural_k) if j == r else 0 for j in range(n)]
                    for r in range(n)]  # fmt: skip
        lenient = n > 1  # a drafter reviews a drafter
        for lenience in lenience_values if lenient else lenience_values[:1]:
            if status:
                names = [f"assistant_{c}" for c in chain] + (["max_gram"] if use_max_gram else [])
                status(f"acceptance run {i}/{len(todo)}: target <- {' <- '.join(names)} (lenience {lenience:g})")
            config = replace(base_config, k_matrix=k_matrix, lenience=float(lenience), max_gram=max_gram)
            models = {"target": target, **{f"assistant_{c}": assistants[c] for c in chain}}
            for inputs in encoded:
                # Forward hooks that synchronise on CUDA (`CascadeStats` times only the launch there).
                with ForwardTimer(models) as timer:
                    out = _generate(
                        target,
                        inputs,
                        custom_generate=generation.generate,
                        assistant_models=[assistants[c] for c in chain],
                        cascade_config=config,
                        return_dict_in_generate=True,
                        **generation_kwargs,
                    )
                stats = out.cascade_stats
                for j, pair in enumerate(pairs):
                    reviewer, drafter = stats.levels[j], stats.levels[j + 1]
                    for value in [float(lenience)] if lenient else list(counts):  # shared when none is lenient
                        count = counts[float(value)].setdefault(pair, AcceptanceCount(*pair, float(value)))
                        count.accepted += drafter.accepted
                        count.drafted += drafter.drafted
                        count.reviews += reviewer.forward_passes
                propose = stats.levels[-1].propose_time_s if use_max_gram else 0.0
                outside += max(stats.wall_time_s - sum(timer.seconds.values()) - propose, 0.0)
                passes += sum(timer.passes.values())
                propose_s += propose
                proposals += stats.levels[-1].propose_calls if use_max_gram else 0
    timings = RunTimings(outside / passes if passes else 0.0, propose_s / proposals if proposals else 0.0)
    return counts, timings


def cost_ratio(cost: ModelCost, tokens: int) -> float | None:
    """`forward_s[tokens] / forward_s[1]`, `None` when either was not timed."""
    one, many = cost.forward_s.get(1), cost.forward_s.get(tokens)
    return many / one if one and many is not None else None
