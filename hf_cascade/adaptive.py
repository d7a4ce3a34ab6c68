"""Adaptive Max-Gram draft length: draft a token only while its chance of acceptance pays for its cost.

On CPUs a forward pass over `k` tokens costs more than over one, by an amount that depends on the machine and the
kernels (`hf_cascade.cost` measures it during the call), so a long Max-Gram draft that is rejected early costs real
time. Max-Gram's reliability depends mostly on how long the matched suffix was, so acceptance is tracked per
`(reviewing level, match-length bucket)` as a geometric rate `alpha = P(token accepted | all before it accepted)`,
starting from a prior that grows with the match length (`MATCH_PRIOR`), and a proposal is cut to the largest `k` with
`alpha ** k >= token_cost`: the k-th token is accepted with probability `alpha ** k`, and it costs `token_cost` of one
forward pass to verify; and no proposal is made when the whole draft's expected accepted tokens do not pay for
`draft_cost`, the fixed extra cost of a multi-token forward. The k-matrix entry stays the upper bound. Nothing here
changes the output, only the drafts.

A `MaxGramMemory` proposal carries more evidence: per token, the share of the matched suffix's occurrences in earlier
calls that it followed. Its k-th token is accepted with chance `alpha ** k * share_1 * ... * share_k` (a follower seen
after one occurrence in four is a one-in-four guess, however long the match), it is cut by the same rule
(`cut_length`), and it replaces the call's own proposal when its expected accepted tokens, less its verification
cost, are larger (`proposal_gain`). With a memory the tracker is the memory's (`MaxGramMemory.tracker`): how well
drafts did on the earlier calls of the same workload is the best prior for the next call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

from .cost import relative_pass_cost
from .max_gram import BigramTable, MaxGramIndex

if TYPE_CHECKING:  # memory.py builds its tracker here
    from .memory import MaxGramMemory

__all__ = [
    "MEMORY",
    "MATCH_PRIOR",
    "AcceptanceTracker",
    "batch_draft_length",
    "cut_length",
    "draft_length",
    "match_bucket",
    "match_prior",
    "max_gram_tracker",
    "packed_draft_lengths",
    "pass_cost",
    "proposal_gain",
    "scored_proposal",
    "straggler_weights",
]

# The third element of a tracker key whose proposal came from a `MaxGramMemory` (earlier calls), not the call itself.
MEMORY = "memory"

# Match lengths 1, 2, 3 and "4 or more"; 0 is the bigram fallback.
_LONGEST_BUCKET = 4

# Tokens of remaining budget over which a row's chance of being the batch's last to finish falls by a factor e
# (`straggler_weights`): about what one accepted draft moves a row, so rows a draft apart are about as likely to end
# last. A count of tokens, not a cost: it does not depend on the machine.
STRAGGLER_TOKENS = 4.0

# Prior geometric acceptance rate per match bucket (0 = bigram, 1, 2, 3, 4+): a longer match is a more reliable copy.
# On SmolLM2-135M's greedy answers to the built-in grounded prompts, uncut 16-token proposals had rates of about
# 0.49, 0.79, 0.87 and 0.96 for matches of 1, 2, 3 and 8 tokens; the priors are more cautious, and in replays of
# recorded greedy outputs they beat a flat 0.5 most on held-out GSM8K answers (`docs/benchmarks.md`).
MATCH_PRIOR = (0.3, 0.4, 0.6, 0.7, 0.85)


def match_bucket(match_length: int) -> int:
    """Bucket of a Max-Gram match length (0 = bigram fallback, 4 = four tokens or more)."""
    return min(match_length, _LONGEST_BUCKET)


def match_prior(key: tuple[int, ...]) -> float:
    """Prior acceptance rate of a `(level, match bucket)` tracker key: `MATCH_PRIOR[bucket]`."""
    return MATCH_PRIOR[key[1]]


def draft_length(acceptance: float, token_cost: float, max_tokens: int, draft_cost: float = 0.0) -> int:
    """Largest `k <= max_tokens` with `acceptance ** k >= token_cost`, or 0 when such a draft does not pay for
    itself: its expected accepted tokens `acceptance + ... + acceptance ** k` must exceed its extra verification cost
    `draft_cost + token_cost * k` (both in one-token forwards of the reviewer). `cut_length` with geometric chances.

    Args:
        acceptance (`float`): geometric acceptance rate in `[0, 1]`.
        token_cost (`float`): cost of verifying one more draft token, as a fraction of a forward pass, in `(0, 1)`.
        max_tokens (`int`): upper bound (the k-matrix entry, the room left before `max_length`).
        draft_cost (`float`, *optional*, defaults to 0): fixed extra cost of verifying any draft, `>= 0`.
    """
    if acceptance >= 1.0:
        return max_tokens
    if acceptance < token_cost:
        return 0
    k = min(max_tokens, int(math.floor(math.log(token_cost) / math.log(acceptance) + 1e-9)))
    return cut_length(acceptance_chances(acceptance, [1.0] * k), token_cost, draft_cost)


def acceptance_chances(acceptance: float, shares: Sequence[float]) -> list[float]:
    """`P_k = acceptance ** k * shares[0] * ... * shares[k - 1]`, for `k = 1 .. len(shares)`: the chance that the
    first `k` tokens of a proposal are all accepted.

    Args:
        acceptance (`float`): geometric acceptance rate of the proposal's tracker key, in `[0, 1]`.
        shares (`Sequence[float]`): per token, the share of its matched suffix's occurrences it followed (1.0 for
            the call's own text, which keeps no counts; `MaxGramMemory.propose_scored` for a memory).
    """
    chances, p = [], 1.0
    for share in shares:
        p *= acceptance * share
        chances.append(p)
    return chances


def cut_length(chances: Sequence[float], token_cost: float, draft_cost: float = 0.0) -> int:
    """How many tokens of a proposal to draft: the largest `k` with `chances[k - 1] >= token_cost` (the k-th token
    pays for its verification), or 0 when the expected accepted tokens `chances[0] + ... + chances[k - 1]` do not
    exceed `draft_cost + token_cost * k`.

    Args:
        chances (`Sequence[float]`): non-increasing; `chances[k - 1]` is the chance that the first `k` tokens are all
            accepted (`acceptance_chances`).
        token_cost (`float`): cost of verifying one more draft token, in one-token forwards, `> 0`.
        draft_cost (`float`, *optional*, defaults to 0): fixed extra cost of verifying any draft, `>= 0`.
    """
    k = 0
    while k < len(chances) and chances[k] >= token_cost:
        k += 1
    if k and draft_cost > 0 and sum(chances[:k]) <= draft_cost + token_cost * k:
        return 0
    return k


def proposal_gain(chances: Sequence[float], k: int, costs: tuple[float, float]) -> float:
    """Expected accepted tokens of a proposal's first `k` tokens less their extra verification cost `draft_cost +
    token_cost * k` (`costs`), in one-token forwards; 0 for no draft."""
    return sum(chances[:k]) - costs[0] - costs[1] * k if k else 0.0


class AcceptanceTracker:
    """Geometric acceptance rate per key, starting from a Beta-like prior worth `prior_strength` tokens.

    The prior makes an unseen key draft a few tokens, so every match-length bucket gets tried; observed tokens
    outweigh it quickly.

    Args:
        prior_rate (`float` or `Callable[[Hashable], float]`, *optional*, defaults to 0.5): prior rate, or a function
            of the key giving it (the cascade uses `match_prior`).
        prior_strength (`float`, *optional*, defaults to 2): how many tokens the prior counts as.
        max_weight (`float`, *optional*): when a key's counts (prior included) exceed this many tokens, they are
            scaled down to it, so older observations fade and the rate follows a workload that changes (a tracker
            kept across calls, `MaxGramMemory.tracker`). `None`: everything counts (one call).
    """

    def __init__(
        self,
        prior_rate: float | Callable[[Hashable], float] = 0.5,
        prior_strength: float = 2.0,
        max_weight: float | None = None,
    ):
        self._prior_rate = prior_rate
        self._strength = prior_strength
        self._max_weight = max_weight
        self._counts: dict[Hashable, list[float]] = {}

    def _prior(self, key: Hashable) -> list[float]:
        rate = self._prior_rate(key) if callable(self._prior_rate) else self._prior_rate
        return [self._strength * rate, self._strength * (1 - rate)]

    def counts(self, key: Hashable) -> tuple[float, float]:
        """`(accepted, rejected)` recorded for `key`, prior included (the prior alone for an unseen key)."""
        accepted, rejected = self._counts.get(key) or self._prior(key)
        return accepted, rejected

    def rate(self, key: Hashable) -> float:
        accepted, rejected = self.counts(key)
        return accepted / (accepted + rejected)

    def update(self, key: Hashable, accepted: int, rejected: bool) -> None:
        """Record `accepted` tokens accepted in a row, then (if `rejected`) one rejected token."""
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = self._prior(key)
        counts[0] += accepted
        counts[1] += int(rejected)
        total = counts[0] + counts[1]
        if self._max_weight is not None and total > self._max_weight:
            counts[0] *= self._max_weight / total
            counts[1] *= self._max_weight / total


def max_gram_tracker(max_weight: float | None = None) -> AcceptanceTracker:
    """The tracker the cascade cuts Max-Gram proposals with: `match_prior`, worth four tokens (`max_weight`: see
    `AcceptanceTracker`)."""
    return AcceptanceTracker(match_prior, prior_strength=4.0, max_weight=max_weight)


def scored_proposal(
    index: MaxGramIndex,
    context: Sequence[int],
    num_tokens: int,
    level: int,
    tracker: AcceptanceTracker | None,
    costs: tuple[float, float],
    bigram: BigramTable | None = None,
    memory: MaxGramMemory | None = None,
) -> tuple[list[int], tuple[int, ...], list[float] | None]:
    """One Max-Gram proposal, cut by its tracked acceptance, with the chance of each prefix of it being accepted:
    what the cascade drafts (and the replay benchmarks replay) for the model reviewing `level`.

    The batched cascade proposes uncut (`costs=(0.0, 0.0)`) and cuts every row's draft at once with these chances
    (`batch_draft_length`): in a batch one row's longer draft widens the forward pass of all rows.

    Args:
        index (`MaxGramIndex`): the row's index.
        context (`Sequence[int]`): the current sequence.
        num_tokens (`int`): the most tokens to propose (the k-matrix entry, the room left).
        level (`int`): the level whose reviewer will see the proposal (0: the target).
        tracker (`AcceptanceTracker`, *optional*): acceptance per `(level, match bucket)`; `None` keeps the whole
            proposal (a fixed length, as prompt lookup).
        costs (`tuple[float, float]`): `(draft_cost, token_cost)` of that reviewer, see `draft_length`.
        bigram (`BigramTable`, *optional*): Max-Gram's fallback table.
        memory (`MaxGramMemory`, *optional*): earlier calls' outputs and added documents. With a `tracker`, its
            proposal replaces the call's own when its expected accepted tokens less their cost (`proposal_gain`,
            with the memory's per-token shares, `acceptance_chances`) are larger; without, when it matched a longer
            suffix (the call's own text wins ties).

    Returns:
        `(tokens, key, chances)`: the proposal; its tracker key, to `update` with the review: `(level, match bucket)`
        for the call's own text, `(level, match bucket, MEMORY)` for a memory proposal, so that an unreliable memory
        is cut (and stops proposing) on its own record without making the call's own matches look worse; and
        `chances[k - 1]` the chance that the first `k` tokens are all accepted (`acceptance_chances`, one per
        token), `None` without a `tracker`.
    """
    tokens, match_length = index.propose_with_match(context, num_tokens, bigram)
    key: tuple[int | str, ...] = (level, match_bucket(match_length))
    remembered: list[int] = []
    if memory is not None:
        remembered, remembered_length, shares = memory.propose_scored(context, num_tokens)
        memory_key = (level, match_bucket(remembered_length), MEMORY)
    if tracker is None:  # fixed length, as prompt lookup: the longer match wins
        if remembered and remembered_length > match_length:
            return remembered, memory_key, None
        return tokens, key, None
    own = acceptance_chances(tracker.rate(key), [1.0] * len(tokens))
    k = cut_length(own, costs[1], costs[0])
    if remembered:
        chances = acceptance_chances(tracker.rate(memory_key), shares)
        m = cut_length(chances, costs[1], costs[0])
        if proposal_gain(chances, m, costs) > proposal_gain(own, k, costs):
            return remembered[:m], memory_key, chances[:m]
    return tokens[:k], key, own[:k]


def pass_cost(costs: tuple[float, float] | Callable[[int], float]) -> Callable[[int], float]:
    """A forward pass's cost as a function of the tokens it feeds per row (`n >= 1`): `costs` itself when it is one
    (e.g. `ForwardCostModel.seconds`, which follows a curve that is not smooth), else the line of `(draft_cost,
    token_cost)`: `1` for one token, `1 + draft_cost + token_cost * (n - 1)` one-token passes for more."""
    if callable(costs):
        return costs
    draft_cost, token_cost = costs
    return lambda n: relative_pass_cost(n, draft_cost, token_cost)


def straggler_weights(remaining: Sequence[int], scale: float = STRAGGLER_TOKENS) -> list[float]:
    """How much a token accepted in each row of a batch is worth to the batch, relative to a token of every row alike.

    A batch takes as many target passes as its last row needs: when every row runs to its budget of new tokens (no
    EOS), a token accepted in a row that is ahead of the others ends the batch no sooner, and a pass widened for it
    costs every row's time for nothing, while a token accepted in the row that is behind shortens the whole batch.
    The expected number of passes is that of the row that finishes last, and a token gained by row `r` lowers it by
    the chance `P_r` that row `r` is that row. That chance is modelled from each row's remaining budget `m_r`
    (tokens it may still generate; how far it really goes, EOS or not, is unknown): `P_r` proportional to
    `exp((m_r - max m) / scale)`. The weights are `rows * P_r` (they add up to the number of rows), so rows alike get
    weight 1 each and the batch's expected tokens per cost (`batch_draft_length`, `packed_draft_lengths`) is the plain
    sum over rows; a row far ahead weighs about 0, and the row behind up to `rows`.

    Args:
        remaining (`Sequence[int]`): per row, how many new tokens it may still generate (`max_length` minus its
            length).
        scale (`float`, *optional*, defaults to `STRAGGLER_TOKENS`): tokens of budget over which the chance falls by
            a factor `e`, `> 0`.

    Returns:
        `list[float]`: one weight per row, `>= 0`, summing to `len(remaining)`.
    """
    if not scale > 0:
        raise ValueError(f"scale must be a positive number of tokens, got {scale!r}.")
    if not remaining:
        return []
    top = max(remaining)
    chances = [math.exp((m - top) / scale) for m in remaining]
    total = sum(chances)
    return [len(remaining) * c / total for c in chances]


def batch_draft_length(
    chances: Sequence[Sequence[float]],
    costs: tuple[float, float] | Callable[[int], float],
    weights: Sequence[float] | None = None,
) -> int:
    """How many draft tokens the rows of a batch may give the target's next forward pass: the `k` maximising the
    batch's expected tokens per unit of cost, `(sum over rows of weights[r] * (1 + chances[r][0] + ... +
    chances[r][k - 1])) / cost(1 + k)`.

    Every row is fed as wide as the longest draft (padded), so a row's extra token costs the forward pass of all
    rows; cutting each row alone by its own chances (`cut_length`) lets one confident row widen the pass for rows
    whose drafts are short or unsure. Each row then drafts `min(len(chances[r]), k)` tokens. Ties go to the shorter
    draft.

    Args:
        chances (`Sequence[Sequence[float]]`): per row, `chances[r][k - 1]` the chance that its first `k` draft
            tokens are all accepted (non-increasing; `scored_proposal`); its length is the row's longest draft.
        costs (`tuple[float, float]` or `Callable[[int], float]`): the batched target pass's cost by the tokens it
            feeds per row (`ForwardCostModel.seconds` of the batch's target, timed per width), or its `(draft_cost,
            token_cost)` relative to a one-token pass of the same rows (`pass_cost`).
        weights (`Sequence[float]`, *optional*): per row, what its tokens are worth to the batch
            (`straggler_weights`, summing to the number of rows); all 1 by default.

    Returns:
        `int`: the draft length `k >= 0` (the forward pass then feeds `k + 1` tokens per row).
    """
    cost = pass_cost(costs)
    weights = _row_weights(weights, len(chances))
    expected = sum(weights)  # the target's own token of every row
    best, best_rate = 0, expected / cost(1)
    for k in range(1, max((len(row) for row in chances), default=0) + 1):
        expected += sum(w * row[k - 1] for w, row in zip(weights, chances, strict=True) if len(row) >= k)
        rate = expected / cost(1 + k)
        if rate > best_rate:
            best, best_rate = k, rate
    return best


def _row_weights(weights: Sequence[float] | None, rows: int) -> list[float]:
    if weights is None:
        return [1.0] * rows
    if len(weights) != rows:
        raise ValueError(f"weights has {len(weights)} entries for {rows} rows of chances; give one weight per row.")
    return list(weights)


def packed_draft_lengths(
    chances: Sequence[Sequence[float]],
    costs: tuple[float, float] | Callable[[int], float],
    weights: Sequence[float] | None = None,
) -> list[int]:
    """How many draft tokens each row of a packed batch gives the target's next forward pass (`PackedRunner`: a pass
    costs the tokens it really feeds, so rows draft different lengths).

    A pass of `rows` rows feeding `K` draft tokens in all costs `cost(1 + K)`, e.g. `1 + draft_cost + token_cost * K`
    passes in which every row feeds only its own token (`1` for `K = 0`). For a given `K` the most expected tokens
    come from the `K` draft tokens worth most (`weights[r] * chance`), and since each row's chances are non-increasing,
    taking tokens in descending order of worth keeps every row's draft a prefix. So the tokens are taken in that order
    and the `K` maximising `(sum of weights + sum of the worths taken) / cost(1 + K)` is kept; ties go to the shorter
    drafts. A confident row drafts long without making the other rows feed anything.

    Args:
        chances (`Sequence[Sequence[float]]`): per row, `chances[r][k - 1]` the chance that its first `k` draft
            tokens are all accepted (non-increasing; `scored_proposal`); its length is the row's longest draft.
        costs (`tuple[float, float]` or `Callable[[int], float]`): the packed target pass's cost by `1 + K`
            (`ForwardCostModel.seconds` of the packed target, which records a pass under that size), or its
            `(draft_cost, token_cost)` relative to a pass in which every row feeds one token (`cost.batch_prior`,
            `pass_cost`).
        weights (`Sequence[float]`, *optional*): per row, what its tokens are worth to the batch
            (`straggler_weights`, summing to the number of rows); all 1 by default.

    Returns:
        `list[int]`: per row, its draft length `0 <= k <= len(chances[r])`.
    """
    cost = pass_cost(costs)
    weights = _row_weights(weights, len(chances))
    order = sorted((-weights[r] * chance, r, k) for r, row in enumerate(chances) for k, chance in enumerate(row))
    expected = sum(weights)  # the target's own token of every row
    best, best_rate = 0, expected / cost(1)
    for taken, (minus_worth, _, _) in enumerate(order, start=1):
        expected -= minus_worth
        rate = expected / cost(1 + taken)
        if rate > best_rate:
            best, best_rate = taken, rate
    lengths = [0] * len(chances)
    for _, r, _ in order[:best]:
        lengths[r] += 1
    return lengths
