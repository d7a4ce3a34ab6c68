"""The measured cost of a reviewer's forward pass, as `MaxGramConfig.draft_cost` and `token_cost` use it.

How much more a forward over `n` tokens costs than a one-token forward depends on the model, the kernels and the
machine far more than any default can capture: on one of our 2-core CPUs a 2-token forward of SmolLM2-135M costs
1.65x a 1-token one with PyTorch's default fp32 linear kernels and 1.04x with the weights packed for oneDNN
(`hf_cascade.use_onednn_linear`); the best `draft_cost` differs accordingly (about 0.6 and 0). So the reviewer's own
forward passes are timed during `generate` and the two costs fitted to them, with the configured values as the prior.

The model: a forward over `1 + k` tokens (the reviewer's last token and `k` draft tokens) costs
`1 + draft_cost + token_cost * k` one-token forwards.

The draft-length controller (`hf_cascade.controller`) also needs every model's cost in absolute seconds, to weigh a
drafter's forward against its reviewer's: `ForwardCostModel.seconds(n)` is the median of the timed passes of size
`n` once there are a few (a curve need not be smooth), else the curve `absolute()`: `unit_s` for one token,
`base_s + token_s * (n - 1)` for `n >= 2`, fitted to the same timings. How forwards are timed depends on
where the model runs (`timing_kind`): host wall time on CPU and for models accelerate offloads to CPU or disk, CUDA
events on a GPU (read only once the review that follows the forward has synchronised), and not at all elsewhere or
when sampling (`"prior"`): then the configured relative costs and a prior proportional to the parameters a forward
multiplies per token (`forward_parameters`) apply.

Timings outlive the call. One call times a few dozen forwards spread over many sizes, too few to learn a curve that
is not smooth (the median of a size needs `MIN_SIZE_PASSES` passes), and the next call on the same model, kernels and
threads would start from the prior again. So each timed model keeps its recent passes per size in a plain dict on the
model object (`FORWARD_SECONDS_ATTR`, the way transformers keeps a static cache on the model), keyed by what changes
the cost (`_placement_key`: timing, rows and layout, device, dtype, torch threads, oneDNN packing, accelerate's
placement), and every later call starts from them. It holds only floats (deepcopy and pickling of the model are
unaffected); `forget_forward_seconds(model)` drops it. Sampled calls neither read nor write it.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .config import MaxGramConfig

__all__ = [
    "TIMING_CPU",
    "TIMING_CUDA",
    "MIN_SIZE_PASSES",
    "TIMING_PRIOR",
    "ForwardCostModel",
    "batch_prior",
    "cost_model_for",
    "fit_draft_costs",
    "fit_seconds",
    "forget_forward_seconds",
    "forward_cost_model",
    "forward_parameters",
    "prior_unit_seconds",
    "relative_pass_cost",
    "timing_kind",
]

TIMING_CPU = "cpu-wall"  # host wall time (CPU, or a model accelerate offloads to CPU/disk: the host waits anyway)
TIMING_CUDA = "cuda-events"  # CUDA events recorded around the forward, read after the review synchronised
TIMING_PRIOR = "prior"  # not timed: configured relative costs, absolute scale from `forward_parameters`
# The prior's nominal speed: a forward costs 2 FLOPs per parameter it multiplies and token at this rate. Only ratios
# between the models of one call matter (all of them are then on the prior), so the value itself is arbitrary.
_PRIOR_FLOPS = 1e11

# Bounds of the fitted costs: a draft token always costs something (a zero cost would make every draft "free"), and
# a forward is never modelled as cheaper than a one-token one.
_MIN_TOKEN_COST = 0.005
_MAX_TOKEN_COST = 0.95
# Chunk sizes past this are prompt prefills or catch-up passes, not reviews of a draft.
_MAX_CHUNK = 64
# Timed passes of one chunk size before their median replaces the fitted curve at that size (`seconds`).
MIN_SIZE_PASSES = 3
# The attribute of a model holding its timed passes across calls (see the module docstring).
FORWARD_SECONDS_ATTR = "_hf_cascade_forward_seconds"


def fit_draft_costs(
    seconds: Mapping[int, Sequence[float]],
    prior_draft_cost: float,
    prior_token_cost: float,
    prior_weight: float = 4.0,
    min_single: int = 3,
) -> tuple[float, float] | None:
    """Fit `(draft_cost, token_cost)` to timed forward passes.

    Each chunk size `n >= 2` gives one point `(n - 1, median_seconds(n) / median_seconds(1) - 1)`, weighted by its
    number of passes; two prior points on the line `draft_cost + token_cost * k` (at `k = 1` and `k = 16`, weight
    `prior_weight / 2` each) keep the fit near the configured values until the timings outweigh them. Medians make
    one slow pass (a page fault, a busy neighbour) irrelevant.

    Args:
        seconds (`Mapping[int, Sequence[float]]`): chunk size (tokens fed to one forward) -> wall times in seconds.
        prior_draft_cost (`float`): the configured `draft_cost`.
        prior_token_cost (`float`): the configured `token_cost`.
        prior_weight (`float`, *optional*, defaults to 4): how many forward passes the prior counts as.
        min_single (`int`, *optional*, defaults to 3): one-token passes needed before anything is measured
            (everything is relative to them).

    Returns:
        `(draft_cost, token_cost)` with `draft_cost >= 0` and `token_cost` in `[0.005, 0.95]`; `None` when fewer
        than `min_single` one-token passes were timed (a model that always reviews a neural draft never runs one: its
        relative costs cannot be measured, and the configured values apply).
    """
    singles = seconds.get(1, ())
    if len(singles) < min_single:
        return None
    unit = statistics.median(singles)
    half = prior_weight / 2
    points = [(1.0, prior_draft_cost + prior_token_cost, half), (16.0, prior_draft_cost + 16 * prior_token_cost, half)]
    for n, times in seconds.items():
        if 2 <= n <= _MAX_CHUNK and times:
            points.append((float(n - 1), statistics.median(times) / unit - 1.0, float(len(times))))
    total = sum(w for _, _, w in points)
    mean_x = sum(w * x for x, _, w in points) / total
    mean_y = sum(w * y for _, y, w in points) / total
    var_x = sum(w * (x - mean_x) ** 2 for x, _, w in points)
    cov = sum(w * (x - mean_x) * (y - mean_y) for x, y, w in points)
    token_cost = min(max(cov / var_x, _MIN_TOKEN_COST), _MAX_TOKEN_COST)
    draft_cost = max(mean_y - token_cost * mean_x, 0.0)
    return draft_cost, token_cost


def relative_pass_cost(num_tokens: float, draft_cost: float, token_cost: float) -> float:
    """A forward pass over `num_tokens` tokens in one-token forwards, on the line of `(draft_cost, token_cost)`: `1`
    for one token, `1 + draft_cost + token_cost * (num_tokens - 1)` for more (the relative cost everything here and
    the draft cuts, `adaptive.pass_cost`, price passes with)."""
    return 1.0 if num_tokens <= 1 else 1.0 + draft_cost + token_cost * (num_tokens - 1)


def fit_seconds(
    seconds: Mapping[int, Sequence[float]], draft_cost: float, token_cost: float, prior_unit_s: float
) -> tuple[float, float, float]:
    """Fit the absolute cost curve `(unit_s, base_s, token_s)`: `seconds(1) = unit_s` and `seconds(n) = base_s +
    token_s * (n - 1)` for `n >= 2`.

    - With three one-token passes or more, `unit_s` is their median and the rest follows the relative
      `(draft_cost, token_cost)` (fitted by `fit_draft_costs` from the same timings).
    - Without them (a target that always reviews a neural draft), the line is fitted by weighted least squares to
      the median time per chunk size `2..64` when there are two sizes or more (the slope is kept positive), scaled
      from the prior shape `1 + draft_cost + token_cost * (n - 1)` when there is one, and `unit_s = base_s / (1 +
      draft_cost)`.
    - Without timings at all: `unit_s = prior_unit_s` and the prior shape.

    Args:
        seconds (`Mapping[int, Sequence[float]]`): chunk size -> timed seconds.
        draft_cost (`float`), token_cost (`float`): the relative costs to use (fitted or configured).
        prior_unit_s (`float`): seconds of a one-token forward when nothing was timed.

    Returns:
        `(unit_s, base_s, token_s)`, all `> 0`.
    """
    singles = seconds.get(1, ())
    medians = {n: (statistics.median(t), len(t)) for n, t in seconds.items() if 2 <= n <= _MAX_CHUNK and t}
    if len(singles) >= 3:
        unit = statistics.median(singles)
    elif len(medians) >= 2:
        total = sum(w for _, w in medians.values())
        mean_x = sum(w * (n - 1) for n, (_, w) in medians.items()) / total
        mean_y = sum(w * y for y, w in medians.values()) / total
        var_x = sum(w * (n - 1 - mean_x) ** 2 for n, (_, w) in medians.items())
        cov = sum(w * (n - 1 - mean_x) * (y - mean_y) for n, (y, w) in medians.items())
        slope = max(cov / var_x, _MIN_TOKEN_COST * mean_y / (1 + mean_x))
        base = max(mean_y - slope * mean_x, slope)
        return base / (1 + draft_cost), base, slope
    elif medians:
        ((n, (y, _)),) = medians.items()
        unit = y / relative_pass_cost(n, draft_cost, token_cost)  # n >= 2
    else:
        unit = prior_unit_s
    return unit, unit * (1 + draft_cost), unit * token_cost


def _skipped_modules(model: torch.nn.Module) -> set[int]:
    """Ids of the modules of the decoder layers the forward does not run, `layers[config.num_hidden_layers:]` of the
    base model (a module also part of a layer that runs excepted).

    transformers' decoder models run `self.layers[: self.config.num_hidden_layers]`, so a layer-skip drafter can share
    every module with its target and lower `num_hidden_layers` in its own config (transformers' early-exit assistant
    does the same): it holds all the target's parameters but runs only its first layers.
    """
    base = getattr(model, "base_model", model)
    config = getattr(base, "config", None)
    if config is None:
        config = getattr(model, "config", None)
    run = getattr(config, "num_hidden_layers", None)
    for owner in (base, model):
        for name in ("layers", "h", "blocks"):
            layers = getattr(owner, name, None)
            if isinstance(layers, torch.nn.ModuleList) and isinstance(run, int) and 0 <= run < len(layers):
                kept = {id(m) for layer in layers[:run] for m in layer.modules()}
                return {id(m) for layer in layers[run:] for m in layer.modules()} - kept
    return set()


def forward_parameters(model: torch.nn.Module) -> int:
    """The parameters a forward of `model` multiplies per token: what its compute per token is proportional to.

    Counted: every parameter of the modules the forward runs, once (a weight shared by two modules, e.g. an output
    head tied to the input embeddings, counts once), and the weights that `OneDNNLinear` layers hold outside
    `parameters()`. Not counted: embedding tables other than the output head (a lookup costs next to nothing) and the
    decoder layers past `config.num_hidden_layers` that a layer-skip drafter holds but does not run
    (`_skipped_modules`). So a drafter that runs half of its target's layers costs about half of the target's layers
    plus the whole output head, whether it shares the target's modules or holds a truncated copy.

    Args:
        model (`torch.nn.Module`): the model (a `PreTrainedModel` or any module).

    Returns:
        `int`: the parameter count.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_params = {id(p) for p in head.parameters()} if isinstance(head, torch.nn.Module) else set()
    skipped = _skipped_modules(model)
    seen: set[int] = set()
    total = 0
    stack = [model]
    visited: set[int] = set()
    while stack:
        module = stack.pop()
        if id(module) in visited or id(module) in skipped:
            continue
        visited.add(id(module))
        stack.extend(module.children())
        # `hf_cascade.cpu.OneDNNLinear`, recognised by its `packed_numel` rather than imported: this module is
        # bundled into Hub exports, which carry only what generation imports (no CPU packing code).
        packed_numel = getattr(module, "packed_numel", None)
        if callable(packed_numel):
            total += packed_numel()
            continue
        lookup = isinstance(module, torch.nn.Embedding)
        for p in module.parameters(recurse=False):
            if id(p) in seen or (lookup and id(p) not in head_params):
                continue
            seen.add(id(p))
            total += p.numel()
    return total


def prior_unit_seconds(model: torch.nn.Module | None) -> float:
    """The prior seconds of a one-token forward of `model`: 2 FLOPs per parameter it multiplies
    (`forward_parameters`) at a nominal speed (`1.0` without a model). Only the ratios between the models of a call
    matter."""
    if model is None:
        return 1.0
    return max(2.0 * forward_parameters(model) / _PRIOR_FLOPS, 1e-9)


class ForwardCostModel:
    """Recent forward-pass times of one model, by chunk size, and the costs fitted to them.

    Lives for one `generate` call. `ModelRunner` records every forward pass; the cascade asks `costs()` before it
    cuts a Max-Gram proposal that this model will review, and the draft-length controller asks `seconds(n)` and
    `elapsed`. Refits at most every `refit_every` passes. With `timing="prior"` nothing measured is kept: `costs()`
    and `absolute()` are the prior (a sampled call's drafts then depend on its random stream only).

    Args:
        draft_cost (`float`): the prior `draft_cost` (`MaxGramConfig.draft_cost`).
        token_cost (`float`): the prior `token_cost` (`MaxGramConfig.token_cost`).
        window (`int`, *optional*, defaults to 32): passes kept per chunk size (the machine's speed drifts).
        refit_every (`int`, *optional*, defaults to 8): passes between refits.
        timing (`str`, *optional*, defaults to `"cpu-wall"`): how passes are timed (`timing_kind`).
        prior_unit_s (`float`, *optional*, defaults to 1.0): prior seconds of a one-token forward
            (`prior_unit_seconds`).
        history (`dict[int, tuple[float, ...]]`, *optional*): seconds of earlier passes per size (a model's record
            across calls, `forward_cost_model`): the model starts from them and keeps the record up to date (each
            size's entry is replaced, never mutated, so a concurrent call reading it sees a whole tuple).
    """

    def __init__(
        self,
        draft_cost: float,
        token_cost: float,
        window: int = 32,
        refit_every: int = 8,
        timing: str = TIMING_CPU,
        prior_unit_s: float = 1.0,
        history: dict[int, tuple[float, ...]] | None = None,
    ):
        self.prior = (draft_cost, token_cost)
        self.timing = timing
        self.prior_unit_s = prior_unit_s
        self._seconds: dict[int, deque[float]] = {}
        self._window = window
        self._refit_every = refit_every
        self._since_fit = 0
        self._costs = self.prior
        self._absolute: tuple[float, float, float] | None = None
        self._pending: list[tuple[int, Any, Any]] = []  # CUDA (tokens, start event, end event) not yet read
        self._elapsed = 0.0
        self._medians: dict[int, float] = {}  # per chunk size with MIN_SIZE_PASSES passes: their median (`seconds`)
        self.fitted = False  # whether `costs()` comes from timings (else it is the prior)
        self._history = history if self.measured else None
        if self._history:
            for size, times in self._history.copy().items():  # dict.copy: atomic against a concurrent call's writes
                self._seconds[size] = deque(times, maxlen=window)
            self._since_fit = refit_every  # fit on the first `costs()`

    @property
    def measured(self) -> bool:
        """Whether passes are timed (else everything is the prior)."""
        return self.timing != TIMING_PRIOR

    @property
    def has_timings(self) -> bool:
        """Whether any pass was timed yet (`absolute()` then rests on measurements, not on the prior scale)."""
        self._resolve()
        return bool(self._seconds)

    def record(self, num_tokens: int, seconds: float) -> None:
        """Record one forward pass over `num_tokens` tokens that took `seconds` (ignored with `timing="prior"`)."""
        if not self.measured or num_tokens > _MAX_CHUNK:
            return
        times = self._seconds.get(num_tokens)
        if times is None:
            times = self._seconds[num_tokens] = deque(maxlen=self._window)
        times.append(seconds)
        if self._history is not None:
            self._history[num_tokens] = tuple(times)
        self._since_fit += 1
        self._absolute = None
        self._medians.pop(num_tokens, None)

    def record_events(self, num_tokens: int, start: Any, end: Any) -> None:
        """Record a pass timed by two recorded `torch.cuda.Event`s; read later, once the GPU has passed `end`
        (never waiting for it: the review after each forward synchronises anyway)."""
        self._pending.append((num_tokens, start, end))

    def _resolve(self) -> None:
        while self._pending and self._pending[0][2].query():
            num_tokens, start, end = self._pending.pop(0)
            self.record(num_tokens, start.elapsed_time(end) / 1000.0)

    def charge(self, num_tokens: int) -> None:
        """Add a pass over `num_tokens` tokens to `elapsed` at its cost on the current curve (`seconds`)."""
        self._elapsed += self.seconds(num_tokens)

    @property
    def elapsed(self) -> float:
        """Seconds of the passes charged so far, each at its cost on the curve when it ran: a modelled clock that
        is steady (one slow pass hardly moves the curve) and counts a pass at the size it needed (a model that
        catches up on tokens it skipped, or reads the prompt, is charged for the tokens its caller asked for)."""
        return self._elapsed

    def costs(self) -> tuple[float, float]:
        """`(draft_cost, token_cost)` fitted to the passes recorded so far (see `fit_draft_costs`)."""
        self._resolve()
        if self._since_fit >= self._refit_every:
            fit = fit_draft_costs(self._seconds, *self.prior)
            self.fitted = fit is not None
            self._costs = fit if fit is not None else self.prior
            self._since_fit = 0
        return self._costs

    def prior_absolute(self) -> tuple[float, float, float]:
        """The absolute curve before any timing: `fit_seconds` of nothing."""
        return fit_seconds({}, *self.prior, self.prior_unit_s)

    def absolute(self) -> tuple[float, float, float]:
        """`(unit_s, base_s, token_s)` fitted to the passes so far (`fit_seconds`); the prior when not measured."""
        if not self.measured:
            return self.prior_absolute()
        costs = self.costs()
        if self._absolute is None:
            self._absolute = fit_seconds(self._seconds, *costs, self.prior_unit_s)
        return self._absolute

    def seconds(self, num_tokens: float) -> float:
        """Seconds of a forward over `num_tokens` tokens: for a size with `MIN_SIZE_PASSES` timed passes or more,
        their median; for any other size, the fitted curve (`absolute()`). A fractional size (a mean) interpolates
        between the two sizes around it.

        A curve need not be smooth, or even increasing: oneDNN picks its kernel by size, and with packed weights a
        4- to 6-token forward of Qwen2.5-Coder-1.5B cost 0.75-0.85x a 1-token one on our 2-core CPU (2 tokens:
        1.22x). The straight line of `absolute()` cannot show such a dip; the sizes the call actually ran can.
        """
        low = max(math.floor(num_tokens), 1)
        below = self._size_seconds(low)
        frac = num_tokens - low
        return below if frac <= 0 else below + frac * (self._size_seconds(low + 1) - below)

    def _size_seconds(self, num_tokens: int) -> float:
        median = self._medians.get(num_tokens)
        if median is None:
            self._resolve()
            times = self._seconds.get(num_tokens, ())
            if len(times) >= MIN_SIZE_PASSES:
                median = self._medians[num_tokens] = statistics.median(times)
            else:
                return self._curve(num_tokens, self.absolute())
        return median

    @staticmethod
    def _curve(num_tokens: float, curve: tuple[float, float, float]) -> float:
        unit, base, token = curve
        return unit if num_tokens <= 1 else base + token * (num_tokens - 1)


def timing_kind(model_or_device: Any, measure: bool = True, do_sample: bool = False) -> str:
    """How the forwards of a model are timed: `"cpu-wall"`, `"cuda-events"` or `"prior"` (not timed).

    `"prior"` when measuring is off (`measure`), when the call samples (`do_sample`: the drafts decide how many random
    numbers a sampled call draws, so timing-dependent drafts would make the same seed give a different text from run
    to run), and on devices that cannot be timed without a synchronisation (mps, xla, meta, ...). A model that
    accelerate offloads in part to CPU or disk (`hf_device_map`) is timed on the host: its forward waits for the
    weights to be moved in, so the host's wall time is its cost. Greedy output never depends on the timings.

    Args:
        model_or_device (`torch.nn.Module`, `torch.device` or `str`): the model (its `hf_device_map` and `device`
            are read) or just a device.
        measure (`bool`, *optional*, defaults to `True`): `MaxGramConfig.measure_cost`.
        do_sample (`bool`, *optional*, defaults to `False`): whether the call samples.
    """
    if do_sample or not measure:
        return TIMING_PRIOR
    device_map = getattr(model_or_device, "hf_device_map", None)
    if isinstance(device_map, dict) and any(str(v) in ("cpu", "disk") for v in device_map.values()):
        return TIMING_CPU
    device = getattr(model_or_device, "device", model_or_device)
    kind = torch.device(device).type
    if kind == "cpu":
        return TIMING_CPU
    if kind == "cuda" and torch.cuda.is_available():
        return TIMING_CUDA
    return TIMING_PRIOR


def batch_prior(draft_cost: float, token_cost: float, rows: int, packed: bool = False) -> tuple[float, float]:
    """The prior `(draft_cost, token_cost)` of a forward pass over `rows` rows, relative to a pass in which every row
    feeds one token, from the one-row prior.

    A pass over `n` tokens in all is priced as one row's pass over them: `c(n) = 1 + draft_cost + token_cost * (n -
    1)` one-token passes for `n >= 2`, `c(1) = 1`. Padded (`BatchRunner`), every row is fed as wide as the draft: `k`
    draft tokens cost `c(rows) + token_cost * rows * k`, so relative to `c(rows)` no fixed cost (a batch already
    feeds several tokens) and a token cost `rows` times larger, over `c(rows)`. Packed (`PackedRunner`), `K` draft
    tokens in all cost `c(rows) + token_cost * K`: a token cost `token_cost / c(rows)`. One row gives the prior back.

    Args:
        draft_cost (`float`): the one-row `draft_cost` (`MaxGramConfig.draft_cost`), `>= 0`.
        token_cost (`float`): the one-row `token_cost` (`MaxGramConfig.token_cost`), `> 0`.
        rows (`int`): rows fed together, `>= 1`.
        packed (`bool`, *optional*, defaults to `False`): whether the rows are packed (a draft token feeds one row).
    """
    if rows <= 1:
        return draft_cost, token_cost
    unit = relative_pass_cost(rows, draft_cost, token_cost)
    per_token = token_cost if packed else token_cost * rows
    return 0.0, min(max(per_token / unit, _MIN_TOKEN_COST), _MAX_TOKEN_COST)


def forward_cost_model(
    model: torch.nn.Module | None, max_gram: MaxGramConfig, do_sample: bool, rows: int = 1, packed: bool = False
) -> ForwardCostModel:
    """The `ForwardCostModel` of one model of a call: timed as `timing_kind` says, prior from `max_gram`'s
    `draft_cost`/`token_cost` (for passes over `rows` rows, padded or `packed`: `batch_prior`) and
    `forward_parameters` (`None`: a model run by someone else, e.g. the target of transformers' own assisted loop,
    never timed). A timed model starts from, and adds to, its passes of earlier calls in the same placement (see the
    module docstring)."""
    timing = timing_kind(model, max_gram.measure_cost, do_sample) if model is not None else TIMING_PRIOR
    history = None
    if model is not None and timing != TIMING_PRIOR:
        record = model.__dict__.setdefault(FORWARD_SECONDS_ATTR, {})
        history = record.setdefault(_placement_key(model, timing, rows, packed), {})
    return ForwardCostModel(
        *batch_prior(max_gram.draft_cost, max_gram.token_cost, rows, packed),
        timing=timing,
        prior_unit_s=prior_unit_seconds(model),
        history=history,
    )


def forget_forward_seconds(model: torch.nn.Module) -> None:
    """Drop the forward-pass timings `model` kept from earlier calls (`forward_cost_model`): the next call measures
    from the prior again. Call it after changing what the key does not see (another process loading the CPU, a
    different attention implementation)."""
    model.__dict__.pop(FORWARD_SECONDS_ATTR, None)


def _placement_key(model: torch.nn.Module, timing: str, rows: int, packed: bool) -> str:
    """What the cost of a forward of `model` depends on besides its size: how it is timed, the rows fed together and
    their layout, device and dtype, torch's CPU threads, oneDNN packing (`OneDNNLinear`, seen by its
    `packed_numel`) and accelerate's placement (`hf_device_map`)."""
    first = next(model.parameters(), None)
    where = f"{first.device}:{first.dtype}" if first is not None else "none"
    packed_layers = sum(callable(getattr(m, "packed_numel", None)) for m in model.modules())
    placement = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    layout = "packed" if packed else "padded"
    return f"{timing}|{rows}x{layout}|{where}|threads={torch.get_num_threads()}|onednn={packed_layers}|{placement}"


def cost_model_for(device: torch.device, max_gram: MaxGramConfig, do_sample: bool = False) -> ForwardCostModel | None:
    """Deprecated: use `forward_cost_model(model, max_gram, do_sample)`, which every model of a call gets (timed or
    on the prior; `ForwardCostModel.measured` says which). Emits a `FutureWarning`; to be removed in a later release.

    A measuring `ForwardCostModel` for a reviewer on `device`, or `None` where Max-Gram's configured costs apply:
    measuring is off (`max_gram.measure_cost`, `max_gram.adaptive_length`), the call samples, or the device cannot
    be timed (`timing_kind`). On CUDA the passes are timed with CUDA events."""
    warnings.warn(
        "hf_cascade.cost.cost_model_for is deprecated and will be removed; use "
        "hf_cascade.cost.forward_cost_model(model, max_gram, do_sample) (ForwardCostModel.measured says whether it "
        "times the forwards).",
        FutureWarning,
        stacklevel=2,
    )
    timing = timing_kind(device, max_gram.measure_cost, do_sample)
    if not max_gram.adaptive_length or timing == TIMING_PRIOR:
        return None
    return ForwardCostModel(max_gram.draft_cost, max_gram.token_cost, timing=timing)
