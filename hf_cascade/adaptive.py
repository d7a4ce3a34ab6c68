"""Adaptive Max-Gram draft length: draft a token only while its chance of acceptance pays for its cost.

On CPUs a forward pass over `k` tokens costs clearly more than over one (SmolLM2-135M on one of our 2-core
machines: about `1 + 0.17 (k - 1)` one-token forwards, `benchmarks/k_defaults.py`), so a long Max-Gram draft that is
rejected early costs real time. Max-Gram's reliability depends mostly on how long the matched
suffix was, so acceptance is tracked per `(reviewing level, match-length bucket)` as a geometric rate
`alpha = P(token accepted | all before it accepted)`, and a proposal is cut to the largest `k` with
`alpha ** k >= token_cost`: the k-th token is accepted with probability `alpha ** k`, and it costs `token_cost` of one
forward pass to verify; and no proposal is made when the whole draft's expected accepted tokens do not pay for
`draft_cost`, the fixed extra cost of a multi-token forward. The k-matrix entry stays the upper bound. Nothing here changes the output, only the drafts.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

__all__ = ["AcceptanceTracker", "draft_length", "match_bucket"]

# Match lengths 1, 2, 3 and "4 or more"; 0 is the bigram fallback.
_LONGEST_BUCKET = 4


def match_bucket(match_length: int) -> int:
    """Bucket of a Max-Gram match length (0 = bigram fallback, 4 = four tokens or more)."""
    return min(match_length, _LONGEST_BUCKET)


def draft_length(acceptance: float, token_cost: float, max_tokens: int, draft_cost: float = 0.0) -> int:
    """Largest `k <= max_tokens` with `acceptance ** k >= token_cost`, or 0 when such a draft does not pay for
    itself: its expected accepted tokens `acceptance + ... + acceptance ** k` must exceed its extra verification cost
    `draft_cost + token_cost * k` (both in one-token forwards of the reviewer).

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
    if draft_cost > 0 and k > 0:
        expected = acceptance * (1 - acceptance**k) / (1 - acceptance)
        if expected <= draft_cost + token_cost * k:
            return 0
    return k


class AcceptanceTracker:
    """Geometric acceptance rate per key, with a Beta-like prior of one accepted and one rejected token.

    The prior (rate 0.5) makes an unseen key draft a few tokens, so every match-length bucket gets tried.
    """

    def __init__(self, prior_accepted: float = 1.0, prior_rejected: float = 1.0):
        self._prior = (prior_accepted, prior_rejected)
        self._counts: dict[Hashable, list[float]] = {}

    def rate(self, key: Hashable) -> float:
        accepted, rejected = self._counts.get(key, self._prior)
        return accepted / (accepted + rejected)

    def update(self, key: Hashable, accepted: int, rejected: bool) -> None:
        """Record `accepted` tokens accepted in a row, then (if `rejected`) one rejected token."""
        counts = self._counts.setdefault(key, list(self._prior))
        counts[0] += accepted
        counts[1] += int(rejected)
