"""`hf_cascade.tune`: measure this machine and these models, then pick the cascade's k-matrix and lenience.

1. Time every model's forward pass over 1 to 16 new tokens on a real prompt with its KV cache
   (`measure.measure_costs`).
2. Run the cascade's chains on the prompts and read each (reviewer, drafter) pair's acceptance from `CascadeStats`
   (`measure.measure_acceptance`), per lenience value.
3. Search k-matrices with the expected-walltime model (`ewif`: the paper's EWIF with measured costs).
4. Confirm the best few by timing real interleaved runs against greedy (`benchmark.run_benchmark`), each run as the
   fixed policy the model predicted (`_config`), next to the base configuration; a candidate whose greedy output
   differs from plain greedy's is refused (that would be a bug, never a trade-off).
5. Keep the fastest confirmed configuration; `TuneResult.save` writes `cascade_config.json`, `tune_report.md` and
   `tune_result.json`.
6. Put it in perspective: the bound (`bound`), the best speedup any fixed k-matrix of a generous grid, and a per-step
   oracle, could reach with the measured costs and acceptance, next to the confirmed speedups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..benchmark import Method, ModelCost, Prompt, run_benchmark, summarize
from ..benchmark.runner import BenchmarkResult
from ..config import CascadeConfig
from ..drafter_packing import packed_drafters
from ..errors import CascadeTypeError, CascadeValueError
from .bound import BOUND_MAX_NEURAL, Bound, compute_bound
from .ewif import MAX_GRAM_GRID, CostCurve, Prediction, search_k_matrices
from .measure import (
    AcceptanceCount,
    RunTimings,
    is_packed,
    measure_acceptance,
    measure_costs,
    probe_onednn,
)

__all__ = ["DEFAULT_LABEL", "Bound", "Candidate", "TuneResult", "tune"]

DEFAULT_LABEL = "default"  # the base configuration, timed next to the candidates


@dataclass
class Candidate:
    """One configuration the tuner predicted, and what timing it showed.

    Args:
        label (`str`): its method label in the confirmation runs (`"tuned-1"`, ... or `DEFAULT_LABEL`, the base
            config as it is; `k_matrix` then shows the matrix it resolves to).
        k_matrix (`list[list[int]]`): per-drafter increments.
        lenience (`float`): the lenience.
        predicted_speedup (`float`, *optional*): the model's EWIF over greedy (`None` for the default config).
        predicted_tokens_per_target_forward (`float`, *optional*): the model's `1 + E[A_0]`.
        confirmed_speedup (`float`, *optional*): measured speedup over greedy (geometric mean over the prompts);
            `None` when not confirmed.
        identical (`bool`, *optional*): whether every confirmation run gave greedy's tokens (`None`: not checked).
    """

    label: str
    k_matrix: list[list[int]]
    lenience: float
    predicted_speedup: float | None = None
    predicted_tokens_per_target_forward: float | None = None
    confirmed_speedup: float | None = None
    identical: bool | None = None


@dataclass
class TuneResult:
    """What `tune` measured and chose.

    Args:
        config (`CascadeConfig`): the chosen configuration: the user's base config as it is, or with the chosen
            k-matrix and lenience as a fixed policy (`adaptive_drafters=False`, Max-Gram's `adaptive_length` off).
        chosen (`str`): the label of the chosen `Candidate`.
        drafters (`list[str]`): the drafter names, largest first (the k-matrix columns, then Max-Gram).
        costs (`dict[str, ModelCost]`): per model (`"target"`, then each drafter) the timed forward sizes.
        onednn_costs (`dict[str, ModelCost]`): the target's curve on a copy packed with `use_onednn_linear` (CPU
            only, when probed).
        acceptance (`dict[float, dict[tuple[int, int], AcceptanceCount]]`): per lenience, per (level, column).
        candidates (`list[Candidate]`): the confirmed (or best predicted) configurations, best prediction first.
        greedy_step_s (`float`): the baseline of the predicted speedups, plain greedy's seconds per token as the
            model sees it: the target's 1-token forward plus the time per forward pass outside the models (measured
            with the costs, so a busy spell of the machine between the phases does not skew the ratio).
        timings (`RunTimings`): seconds per forward outside the models and per Max-Gram proposal.
        notes (`list[str]`): placement notes, with the numbers measured.
        confirmation (`BenchmarkResult`, *optional*): the confirmation runs.
        settings (`dict`): how it was run (recorded in the report).
        sampled (`bool`): the runs sampled (`generation_kwargs={"do_sample": True, ...}`): speedups are against plain
            sampling, and outputs were not compared.
        bound (`Bound`, *optional*): the best predicted speedups of any fixed k-matrix of a generous grid and of a
            per-step oracle (`hf_cascade.tuning.bound`).
        drafter_packing (`dict[str, str]`): per drafter, `"packed"` when its costs were timed on the oneDNN-packed
            copies the cascade runs it on (`CascadeConfig.pack_drafters`), else why not (`LevelStats.packing`).
    """

    config: CascadeConfig
    chosen: str
    drafters: list[str]
    costs: dict[str, ModelCost]
    onednn_costs: dict[str, ModelCost]
    acceptance: dict[float, dict[tuple[int, int], AcceptanceCount]]
    candidates: list[Candidate]
    greedy_step_s: float
    timings: RunTimings
    notes: list[str] = field(default_factory=list)
    confirmation: BenchmarkResult | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    sampled: bool = False
    bound: Bound | None = None
    drafter_packing: dict[str, str] = field(default_factory=dict)

    def save(self, out_dir: str, command: str | None = None) -> list[str]:
        """Write `cascade_config.json`, `tune_report.md`, `tune_result.json` (the candidates and the bound) and
        (after confirmation) the confirmation runs' bench reports under `confirm/` into `out_dir`; returns the paths
        written."""
        from .report import save

        return save(self, out_dir, command)


def _encode(prompts: Sequence[Any], tokenizer: Any, chat_template: bool, device: torch.device) -> list[tuple]:
    from ..loading import encode_prompt

    if not prompts:
        raise CascadeValueError("tune: prompts is empty; give a few prompts like the ones the config is for.")
    if tokenizer is None:
        raise CascadeValueError("tune: tokenizer is None; pass the target's tokenizer to encode the prompts.")
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, Prompt):
            text, meta = prompt.text, prompt
        elif isinstance(prompt, str):
            text, meta = prompt, Prompt(f"prompt-{i}", "tune", prompt)
        else:
            raise CascadeTypeError(
                f"tune: prompts[{i}] is a {type(prompt).__name__}; give strings (user messages) or "
                "hf_cascade.benchmark.Prompt objects."
            )
        encoded.append((meta, encode_prompt(tokenizer, text, chat_template, device)))
    return encoded


def _used_columns(k_matrix: Sequence[Sequence[int]]) -> set[int]:
    """The drafter columns a k-matrix actually runs: those with tokens at level 0, or at a level whose reviewer runs."""
    used: set[int] = set()
    levels = [0]
    while levels:
        level = levels.pop()
        for c in range(level, len(k_matrix)):
            if k_matrix[level][c] and c not in used:
                used.add(c)
                if c + 1 < len(k_matrix):
                    levels.append(c + 1)
    return used


def _lenient(k_matrix: Sequence[Sequence[int]], num_assistants: int) -> bool:
    """Whether some drafter reviews another one under `k_matrix` (only then does lenience change anything)."""
    return any(c < num_assistants and c + 1 < len(k_matrix) for c in _used_columns(k_matrix))


def _pick(predictions: list[Prediction], count: int, num_assistants: int) -> list[Prediction]:
    picked, seen = [], set()
    for p in sorted(predictions, key=lambda p: -p.speedup):
        key = (str(p.k_matrix), p.lenience if _lenient(p.k_matrix, num_assistants) else 1.0)
        if key not in seen:
            seen.add(key)
            picked.append(replace(p, lenience=key[1]))
        if len(picked) == count:
            break
    return picked


def _config(candidate: Candidate, base: CascadeConfig) -> CascadeConfig:
    """The candidate's config: the base config as it is for the default (`k_matrix=None` keeps its own meaning);
    a searched candidate as the fixed policy the expected-walltime model predicted: its k-matrix entries are the
    draft lengths (`adaptive_drafters=False`) and Max-Gram proposes them in full (`MaxGramConfig.adaptive_length`
    off), so its confirmed speedup measures the prediction (and the bound) instead of the controller."""
    if candidate.label == DEFAULT_LABEL:
        return base
    return replace(
        base,
        k_matrix=candidate.k_matrix,
        lenience=candidate.lenience,
        adaptive_drafters=False,
        max_gram=replace(base.max_gram, adaptive_length=False),
    )


def _method(candidate: Candidate, base: CascadeConfig, drafters: tuple[str, ...]) -> Method:
    return Method(candidate.label, "cascade", drafters, _config(candidate, base))


def _choose(candidates: list[Candidate], confirmation: BenchmarkResult, sampled: bool) -> Candidate:
    """Record each candidate's measured speedup and identity with greedy; the fastest one whose output is greedy's.

    Sampled runs cannot be compared with greedy's output: their mismatches are dropped (`TuneResult.sampled` says so).
    """
    rows = {r.method: r for r in summarize(confirmation) if r.category == "all"}
    for c in candidates:
        c.confirmed_speedup = rows[c.label].speedup
        c.identical = None if sampled else rows[c.label].identical
    if sampled:
        confirmation.mismatches = []
    usable = [c for c in candidates if c.identical is not False and c.confirmed_speedup is not None]
    if not usable:
        raise CascadeValueError(
            "tune: every candidate's greedy output differed from plain greedy's, which is a bug of hf_cascade; "
            "nothing is recommended. Please report it with the prompts and models."
        )
    return max(usable, key=lambda c: c.confirmed_speedup)


def tune(
    target: torch.nn.Module,
    assistant_models: Sequence[torch.nn.Module] | Mapping[str, torch.nn.Module] = (),
    tokenizer: Any = None,
    prompts: Sequence[str | Prompt] = (),
    *,
    max_new_tokens: int = 64,
    base_config: CascadeConfig | None = None,
    lenience: Sequence[float] | None = None,
    confirm: int = 3,
    repeats: int = 2,
    warmup_tokens: int = 8,
    max_neural: int = 8,
    max_gram_grid: Sequence[int] = MAX_GRAM_GRID,
    compare_default: bool = True,
    chat_template: bool = True,
    generation_kwargs: Mapping[str, Any] | None = None,
    onednn_probe: bool = True,
    cost_repeats: int = 5,
    status: Callable[[str], Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> TuneResult:
    """Measure the models on this machine and choose the cascade's k-matrix and lenience for them.

    ```python
    result = hf_cascade.tune(target, [drafter], tokenizer, ["Summarise: ...", "Fix this code: ..."])
    result.save("tuned")          # tuned/cascade_config.json, tuned/tune_report.md
    target.generate(**inputs, custom_generate=hf_cascade.generate, assistant_models=[drafter],
                    cascade_config=result.config)
    ```

    The models are used as they are: nothing is moved or cast, and nothing is packed for good (the oneDNN probe
    packs a copy of the target; drafters are timed on the packed copies the cascade runs them on, as
    `CascadeConfig.pack_drafters` says).

    Args:
        target (`PreTrainedModel`): the target.
        assistant_models (`Sequence[PreTrainedModel]` or `Mapping[str, PreTrainedModel]`, *optional*): neural
            drafters, largest first (names `assistant_0`, ... unless given as a mapping).
        tokenizer (`PreTrainedTokenizerBase`): the target's tokenizer.
        prompts (`Sequence[str | Prompt]`): a handful of prompts like the ones the configuration is for (user
            messages, or `hf_cascade.benchmark.Prompt`).
        max_new_tokens (`int`, *optional*, defaults to 64): tokens per run.
        base_config (`CascadeConfig`, *optional*): settings kept (Max-Gram, bigram table, thresholds); only
            `k_matrix` and `lenience` are tuned. Defaults to `CascadeConfig()`.
        lenience (`Sequence[float]`, *optional*): lenience values to try; default `(1.0, 2.0)` where a drafter
            reviews another drafter, `(1.0,)` otherwise.
        confirm (`int`, *optional*, defaults to 3): best predicted configurations timed for real; 0 trusts the model.
        repeats (`int`, *optional*, defaults to 2): interleaved timed repeats per prompt in the confirmation.
        warmup_tokens (`int`, *optional*, defaults to 8): untimed warm-up of each confirmed method.
        max_neural (`int`, *optional*, defaults to 8): largest neural k-matrix entry searched.
        max_gram_grid (`Sequence[int]`, *optional*): Max-Gram entries searched (`ewif.MAX_GRAM_GRID`, up to 16).
        compare_default (`bool`, *optional*, defaults to `True`): also time `base_config` as it is; it is chosen
            when it measures faster than every candidate.
        chat_template (`bool`, *optional*, defaults to `True`): wrap prompts in the tokenizer's chat template.
        generation_kwargs (`Mapping[str, Any]`, *optional*): more `generate` arguments (e.g. sampling settings;
            greedy by default). Sampled outputs are not compared with greedy's.
        onednn_probe (`bool`, *optional*, defaults to `True`): on CPU, time a packed copy of the target
            (`use_onednn_linear`; needs memory for a second copy) for the placement notes.
        cost_repeats (`int`, *optional*, defaults to 5): timed forwards per size and model (median).
        status (`Callable[[str], Any]`, *optional*): receives a line per phase (e.g. `print`).
        settings (`Mapping[str, Any]`, *optional*): recorded in the report (the CLI passes its arguments).

    Returns:
        `TuneResult`
    """
    from ..loading import pad_token_id
    from .report import placement_notes

    say = status or (lambda line: None)
    drafters = dict(assistant_models) if isinstance(assistant_models, Mapping) else {
        f"assistant_{i}": m for i, m in enumerate(assistant_models)
    }  # fmt: skip
    config = base_config or CascadeConfig()
    num_assistants, use_max_gram = len(drafters), config.use_max_gram
    if not num_assistants and not use_max_gram:
        raise CascadeValueError("tune: no drafter to tune; pass assistant_models or keep base_config.use_max_gram.")
    if confirm < 0 or repeats < 1:
        raise CascadeValueError(
            f"tune: confirm must be >= 0 and repeats >= 1, got confirm={confirm}, repeats={repeats}."
        )
    if (num_assistants and max_neural < 1) or (use_max_gram and max(max_gram_grid, default=0) < 1):
        raise CascadeValueError(
            f"tune: max_neural ({max_neural}) and max(max_gram_grid) ({max(max_gram_grid, default=0)}) must be >= 1 for "
            "the drafters there are: they are also the draft lengths of the acceptance runs."
        )
    if lenience is None:
        lenience = (1.0, 2.0) if num_assistants + int(use_max_gram) > 1 else (1.0,)
    lenience = tuple(float(v) for v in lenience)
    if not lenience:
        raise CascadeValueError(
            "tune: lenience is empty; give at least one value, e.g. (1.0,), or None for the default."
        )
    for value in lenience:
        replace(config, lenience=value)  # validates: CascadeValueError naming CascadeConfig.lenience
    encoded = _encode(prompts, tokenizer, chat_template, target.device)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
    pad = pad_token_id(target, tokenizer)
    if pad is not None:
        kwargs["pad_token_id"] = pad
    kwargs.update(generation_kwargs or {})
    sampling = bool(kwargs.get("do_sample"))
    inputs = [e[1] for e in encoded]
    context = inputs[0]["input_ids"]

    with packed_drafters(list(drafters.values()), target, config.pack_drafters) as packing:  # as the calls run them
        costs = measure_costs({"target": target, **drafters}, context, repeats=cost_repeats, status=say)
    drafter_packing = {name: record.note for name, record in zip(drafters, packing, strict=True)}
    onednn = {}
    if onednn_probe:
        say("timing forwards of a copy of the target packed for oneDNN (use_onednn_linear)")
        probed = probe_onednn(target, context, repeats=cost_repeats)
        onednn = {"target": probed} if probed is not None else {}
    acceptance, timings = measure_acceptance(
        target, list(drafters.values()), inputs, kwargs, config, lenience, max_neural, max(max_gram_grid), status=say
    )

    max_gram_column = num_assistants if use_max_gram else None
    greedy_s = costs["target"].forward_s[1] + timings.overhead_s
    curves = [CostCurve.from_forward_s(costs[name].forward_s) for name in ["target", *drafters]]
    rates = {value: {pair: c.rate or 0.0 for pair, c in counts.items()} for value, counts in acceptance.items()}
    model = dict(
        num_columns=num_assistants + int(use_max_gram), max_gram_column=max_gram_column,
        max_gram_seconds=timings.max_gram_s, overhead=timings.overhead_s,
    )  # fmt: skip
    predictions: list[Prediction] = []
    for value, pairs in rates.items():
        predictions += search_k_matrices(
            pairs, curves, greedy_s, **model, lenience=value, max_neural=max_neural, max_gram_grid=max_gram_grid
        )
    say(f"searched {len(predictions)} k-matrix/lenience combinations with the expected-walltime model")
    bound = compute_bound(
        rates, curves, greedy_s, **model, max_neural=max(BOUND_MAX_NEURAL, max_neural),
        max_gram_max=max(max_gram_grid), searched=predictions, column_names=[*drafters, "max_gram"],
    )  # fmt: skip
    say(f"bound: {bound.fixed_speedup:.2f}x greedy for any fixed k-matrix, {bound.oracle_speedup:.2f}x per-step oracle")
    candidates = [
        Candidate(f"tuned-{i}", p.k_matrix, p.lenience, p.speedup, p.tokens_per_target_forward)
        for i, p in enumerate(_pick(predictions, max(confirm, 1), num_assistants), 1)
    ]
    confirmation = None
    if confirm:
        default = [Candidate(DEFAULT_LABEL, config.resolved_k_matrix(num_assistants), config.lenience)]
        candidates += default if compare_default else []
        say(f"confirming {len(candidates)} configuration(s) against greedy ({repeats} interleaved repeat(s))")
        confirmation = run_benchmark(
            target, encoded, [Method("greedy", "greedy"), *(_method(c, config, tuple(drafters)) for c in candidates)],
            drafters, kwargs, repeats=repeats, warmup_tokens=warmup_tokens, settings=settings, measure_costs=False,
            status=say,
        )  # fmt: skip
        confirmation.costs = costs
        chosen = _choose(candidates, confirmation, sampling)
    else:
        chosen = candidates[0]
    result = TuneResult(
        config=_config(chosen, config),
        chosen=chosen.label,
        drafters=list(drafters),
        costs=costs,
        onednn_costs=onednn,
        acceptance=acceptance,
        candidates=candidates,
        greedy_step_s=greedy_s,
        timings=timings,
        confirmation=confirmation,
        settings=dict(settings or {}),
        sampled=sampling,
        bound=bound,
        drafter_packing=drafter_packing,
    )
    result.notes = placement_notes(result, target, packed=is_packed(target), used=_used_columns(chosen.k_matrix))
    return result
