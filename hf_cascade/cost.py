"""The measured cost of a reviewer's forward pass, as `MaxGramConfig.draft_cost` and `token_cost` use it.

How much more a forward over `n` tokens costs than a one-token forward depends on the model, the kernels and the
machine far more than any default can capture: on one of our 2-core CPUs a 2-token forward of SmolLM2-135M costs
1.65x a 1-token one with PyTorch's default fp32 linear kernels and 1.04x with the weights packed for oneDNN
(`hf_cascade.use_onednn_linear`); the best `draft_cost` differs accordingly (about 0.6 and 0). So the reviewer's own
forward passes are timed during `generate` and the two costs fitted to them, with the configured values as the prior.

The model: a forward over `1 + k` tokens (the reviewer's last token and `k` draft tokens) costs
`1 + draft_cost + token_cost * k` one-token forwards.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence

import torch

from .config import MaxGramConfig

__all__ = ["ForwardCostModel", "cost_model_for", "fit_draft_costs"]

# Bounds of the fitted costs: a draft token always costs something (a zero cost would make every draft "free"), and
# a forward is never modelled as cheaper than a one-token one.
_MIN_TOKEN_COST = 0.005
_MAX_TOKEN_COST = 0.95
# Chunk sizes past this are prompt prefills or catch-up passes, not reviews of a draft.
_MAX_CHUNK = 64


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


class ForwardCostModel:
    """Recent forward-pass times of one model, by chunk size, and the costs fitted to them.

    Lives for one `generate` call. `ModelRunner` records every forward pass; the cascade asks `costs()` before it
    cuts a Max-Gram proposal that this model will review. Refits at most every `refit_every` passes.

    Args:
        draft_cost (`float`): the prior `draft_cost` (`MaxGramConfig.draft_cost`).
        token_cost (`float`): the prior `token_cost` (`MaxGramConfig.token_cost`).
        window (`int`, *optional*, defaults to 32): passes kept per chunk size (the machine's speed drifts).
        refit_every (`int`, *optional*, defaults to 8): passes between refits.
    """

    def __init__(self, draft_cost: float, token_cost: float, window: int = 32, refit_every: int = 8):
        self.prior = (draft_cost, token_cost)
        self._seconds: dict[int, deque[float]] = {}
        self._window = window
        self._refit_every = refit_every
        self._since_fit = 0
        self._costs = self.prior
        self.fitted = False  # whether `costs()` comes from timings (else it is the prior)

    def record(self, num_tokens: int, seconds: float) -> None:
        """Record one forward pass over `num_tokens` tokens that took `seconds`."""
        if num_tokens > _MAX_CHUNK:
            return
        times = self._seconds.get(num_tokens)
        if times is None:
            times = self._seconds[num_tokens] = deque(maxlen=self._window)
        times.append(seconds)
        self._since_fit += 1

    def costs(self) -> tuple[float, float]:
        """`(draft_cost, token_cost)` fitted to the passes recorded so far (see `fit_draft_costs`)."""
        if self._since_fit >= self._refit_every:
            fit = fit_draft_costs(self._seconds, *self.prior)
            self.fitted = fit is not None
            self._costs = fit if fit is not None else self.prior
            self._since_fit = 0
        return self._costs


def cost_model_for(device: torch.device, max_gram: MaxGramConfig, do_sample: bool = False) -> ForwardCostModel | None:
    """A `ForwardCostModel` for a reviewer on `device`, or `None` where the configured costs apply: measuring is off
    (`max_gram.measure_cost`, `max_gram.adaptive_length`), the device is not a CPU (a CUDA forward returns before
    the GPU has finished, so its wall time says nothing about its cost), or the call samples (`do_sample`): the drafts
    decide how many random numbers a sampled call draws, so timing-dependent drafts would make the same seed give a
    different text from run to run. Greedy output does not depend on the drafts."""
    if not (max_gram.measure_cost and max_gram.adaptive_length) or do_sample or torch.device(device).type != "cpu":
        return None
    return ForwardCostModel(max_gram.draft_cost, max_gram.token_cost)
