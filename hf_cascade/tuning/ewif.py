"""The expected-walltime model of a cascade step and the k-matrix search built on it (pure functions, no models).

The CS Drafting paper's EWIF (expected walltime improvement factor) counts each forward pass at a fixed cost (the
parameter count) and assumes verifying `k` tokens costs what verifying one does. Here every model's cost is its own
measured curve `cost_m(n)`: seconds of one forward over `n` new tokens with a warm KV cache (piecewise linear
through the timed sizes, `tune` times 1 to 16, extended along the last segment), so a long draft costs what it
costs on this machine. Acceptance is the paper's i.i.d. model: a token drafted by drafter `c` and reviewed at level
`r` (reviewer: the target for `r = 0`, drafter `r - 1` otherwise) is accepted with probability `a[r][c]`, given every
earlier token of that draft was.

The draft reviewed at level `r` is built as `CascadeDrafter._draft_level` builds it, column by column (row `K[r]`,
per-drafter increments; `G_c = K[r][r] + ... + K[r][c]`):

- neural column `c`: while the draft is shorter than `G_c`, drafter `c` reviews the level `c + 1` draft below it and
  appends `Y_c = 1 + A_{c+1}` tokens (what it accepted plus its own token), at a cost of `T_{c+1}` seconds;
- Max-Gram column: one proposal filling the draft up to `G_c` tokens (at full length: `tune` confirms a searched
  k-matrix with `MaxGramConfig.adaptive_length` off and `CascadeConfig.adaptive_drafters` off, the policy modelled
  here), at the measured seconds per proposal `t_M`.

The draft length `L_r` evolves independently of the reviewer, so one pass over the lengths gives everything (exact
under the model): with `p(l)` the probability that the draft reaches length `l` at some point and `w(l)` the
probability that it does and its first `l` tokens would all be accepted, a chunk of `y` tokens of drafter `c`
appended at length `l` adds `w(l) P(Y_c = y) a[r][c]^i` to `S_r(l + i)`, `i = 1..y`, where
`S_r(i) = P(A_r >= i)` (the first `i` tokens accepted). Then

    E[A_r] = sum_i S_r(i)                       P(Y_{r-1} = 1 + i) = S_r(i) - S_r(i + 1)
    T_r    = sum_chunks p(l) T_chunk + E[cost_{R_r}(1 + L_r)] + o

where `T_chunk` is `T_{c+1}` for a review by drafter `c` and `t_M` for a Max-Gram proposal, `R_r` the reviewer and
`o` the measured time per forward pass outside the models (drafting logic, Python). One target step yields
`1 + E[A_0]` tokens in `T_0` seconds, so the predicted speedup over greedy is

    EWIF = (1 + E[A_0]) / T_0 * t_greedy

with `t_greedy` plain greedy's seconds per token (`tune` uses `cost_target(1) + o`, measured with the rest). With
flat costs and no overhead this is the paper's formula; drafts overshoot a goal exactly as the code does. Caps at
`max_length` and early EOS are ignored.

The search: every row `K[r]` from a bounded grid (neural entries `0..max_neural`, Max-Gram entries from
`max_gram_grid`), bottom-up. For each level `r >= 1` only the `beam` sub-cascades whose reviews yield the most tokens
per second are kept (a heuristic prune: the level above consumes exactly that rate); level 0 tries every row with
every kept sub-cascade and ranks by EWIF. A neural drafter whose drafts do not pay gets 0 everywhere (it is dropped).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import CascadeValueError

__all__ = [
    "MAX_GRAM_GRID",
    "CostCurve",
    "LevelOutcome",
    "Prediction",
    "evaluate_level",
    "geometric_acceptance",
    "predict",
    "search_k_matrices",
]

MAX_GRAM_GRID = (0, 1, 2, 3, 4, 6, 8, 10, 12, 16)


@dataclass(frozen=True)
class CostCurve:
    """Seconds of one forward pass over `n` new tokens: piecewise linear through measured points.

    Args:
        points (`tuple[tuple[int, float], ...]`): `(tokens, seconds)` sorted by tokens, at least one.
    """

    points: tuple[tuple[int, float], ...]

    @classmethod
    def from_forward_s(cls, forward_s: Mapping[int, float]) -> CostCurve:
        """A curve through `ModelCost.forward_s` (`{tokens: median seconds}`)."""
        if not forward_s:
            raise CascadeValueError("CostCurve needs at least one timed forward size, got none.")
        return cls(tuple(sorted((int(k), float(v)) for k, v in forward_s.items())))

    @classmethod
    def flat(cls, seconds: float) -> CostCurve:
        """Every forward costs `seconds`, whatever its size (the paper's assumption)."""
        return cls(((1, float(seconds)),))

    def __call__(self, tokens: float) -> float:
        xs = [x for x, _ in self.points]
        if len(xs) == 1 or tokens <= xs[0]:
            return self.points[0][1]
        i = min(max(bisect.bisect_left(xs, tokens), 1), len(xs) - 1)  # beyond the last point: the last segment
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        return max(y0 + (y1 - y0) * (tokens - x0) / (x1 - x0), 0.0)


@dataclass(frozen=True)
class LevelOutcome:
    """What one review of a level's draft gives and costs, in expectation.

    Args:
        yield_probs (`tuple[float, ...]`): `P(Y = y)` for `y = 0, 1, ...`, `Y = 1 + accepted` the tokens the review
            hands to the level above (`yield_probs[0] == 0`).
        expected_accepted (`float`): `E[A]`, draft tokens the reviewer accepts.
        expected_length (`float`): `E[L]`, the draft's length.
        seconds (`float`): building the draft plus the reviewer's forward pass and the per-pass overhead.
    """

    yield_probs: tuple[float, ...]
    expected_accepted: float
    expected_length: float
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return (1 + self.expected_accepted) / self.seconds if self.seconds > 0 else math.inf


# Outcome of a review by a drafter of an empty draft (the lowest neural drafter without Max-Gram): it decodes one.
def _empty_level(reviewer_cost: CostCurve, overhead: float) -> LevelOutcome:
    return LevelOutcome((0.0, 1.0), 0.0, 0.0, reviewer_cost(1) + overhead)


def evaluate_level(
    row: Sequence[int],
    level: int,
    reviews: Mapping[int, LevelOutcome],
    acceptance: Mapping[tuple[int, int], float],
    reviewer_cost: CostCurve,
    *,
    max_gram_column: int | None,
    max_gram_seconds: float = 0.0,
    overhead: float = 0.0,
) -> LevelOutcome:
    """Expected yield and time of one review at `level` (see the module docstring for the model).

    Args:
        row (`Sequence[int]`): `K[level]`, one increment per drafter column (entries before `level` are ignored).
        level (`int`): 0 for the target's review, `r` for drafter `r - 1`'s.
        reviews (`Mapping[int, LevelOutcome]`): for each neural column `c > level - 1` the row uses, the outcome of
            drafter `c` reviewing the level `c + 1` draft below it.
        acceptance (`Mapping[tuple[int, int], float]`): `(level, column) -> a`, per-token acceptance.
        reviewer_cost (`CostCurve`): the reviewer's forward cost.
        max_gram_column (`int`, *optional*): Max-Gram's column, `None` without Max-Gram.
        max_gram_seconds (`float`): seconds per Max-Gram proposal.
        overhead (`float`): seconds per forward pass outside the models.

    Returns:
        `LevelOutcome`
    """
    size = sum(row[level:]) + max((len(o.yield_probs) for o in reviews.values()), default=1) + 1
    p = [0.0] * size
    w = [0.0] * size
    survive = [0.0] * (size + 1)  # survive[i] = P(the first i draft tokens are accepted), i >= 1
    p[0] = w[0] = 1.0
    seconds = 0.0
    goal = 0
    for c in range(level, len(row)):
        if not row[c]:
            continue
        goal += row[c]
        a = acceptance[(level, c)]
        for length in range(goal):
            mass, alive = p[length], w[length]
            if not mass:
                continue
            p[length] = w[length] = 0.0
            if c == max_gram_column:
                chunks = [(goal - length, 1.0)]
                seconds += mass * max_gram_seconds
            else:
                outcome = reviews[c]
                chunks = [(y, q) for y, q in enumerate(outcome.yield_probs) if q > 0]
                seconds += mass * outcome.seconds
            for y, q in chunks:
                p[length + y] += mass * q
                w[length + y] += alive * q * a**y
                for i in range(1, y + 1):
                    survive[length + i] += alive * q * a**i
    expected_length = sum(length * mass for length, mass in enumerate(p))
    seconds += sum(mass * reviewer_cost(1 + length) for length, mass in enumerate(p) if mass) + overhead
    survive[0] = 1.0
    last = max((i for i, s in enumerate(survive) if s > 0), default=0)
    accepted_probs = [max(survive[i] - (survive[i + 1] if i + 1 <= last else 0.0), 0.0) for i in range(last + 1)]
    return LevelOutcome((0.0, *accepted_probs), sum(survive[1:]), expected_length, seconds)


@dataclass(frozen=True)
class Prediction:
    """The model's prediction for one k-matrix and lenience.

    Args:
        k_matrix (`list[list[int]]`): the matrix (per-drafter increments).
        lenience (`float`): the lenience its acceptance rates were measured with.
        speedup (`float`): predicted EWIF over greedy.
        tokens_per_target_forward (`float`): `1 + E[A_0]`.
        seconds_per_step (`float`): `T_0`.
    """

    k_matrix: list[list[int]]
    lenience: float
    speedup: float
    tokens_per_target_forward: float
    seconds_per_step: float


@dataclass
class _Tail:
    rows: tuple[tuple[int, ...], ...]
    reviews: dict[int, LevelOutcome] = field(default_factory=dict)


def _grid(columns: int, level: int, max_gram_column: int | None, max_neural: int, max_gram_grid: Sequence[int]):
    """Every row of level `level` (entries before it 0) whose sum is positive."""
    rows: list[tuple[int, ...]] = [()]
    for c in range(columns):
        values = (0,) if c < level else (max_gram_grid if c == max_gram_column else range(max_neural + 1))
        rows = [row + (v,) for row in rows for v in values]
    return [row for row in rows if sum(row)]


def _check_inputs(num_columns, acceptance, costs, max_gram_column):
    if num_columns < 1:
        raise CascadeValueError("search_k_matrices needs at least one drafter column, got 0.")
    if len(costs) != num_columns + 1 - (max_gram_column is not None):
        raise CascadeValueError(
            f"search_k_matrices: costs has {len(costs)} curve(s); give one for the target and one per neural drafter "
            f"({num_columns + 1 - (max_gram_column is not None)})."
        )
    missing = [(r, c) for r in range(num_columns) for c in range(r, num_columns) if (r, c) not in acceptance]
    if missing:
        raise CascadeValueError(
            f"search_k_matrices: acceptance lacks the (level, column) pair(s) {missing}; measure every reviewer with "
            "every drafter below it."
        )


def predict(
    k_matrix: Sequence[Sequence[int]],
    acceptance: Mapping[tuple[int, int], float],
    costs: Sequence[CostCurve],
    greedy_seconds: float,
    *,
    max_gram_column: int | None,
    max_gram_seconds: float = 0.0,
    overhead: float = 0.0,
    lenience: float = 1.0,
) -> Prediction:
    """The predicted EWIF of one k-matrix (see the module docstring).

    Args:
        k_matrix (`Sequence[Sequence[int]]` of shape `(n, n)`): per-drafter increments, upper-triangular.
        acceptance (`Mapping[tuple[int, int], float]`): `(level, column) -> a`.
        costs (`Sequence[CostCurve]`): the target's curve, then each neural drafter's (largest first).
        greedy_seconds (`float`): plain greedy's seconds per token (the baseline of the speedup).
        max_gram_column (`int`, *optional*): Max-Gram's column (the last), `None` without it.
        max_gram_seconds (`float`): seconds per Max-Gram proposal.
        overhead (`float`): seconds per forward pass outside the models.
        lenience (`float`): recorded in the prediction.
    """
    n = len(k_matrix)
    _check_inputs(n, acceptance, costs, max_gram_column)
    reviews: dict[int, LevelOutcome] = {}
    if max_gram_column is None:
        reviews[n - 1] = _empty_level(costs[n], overhead)
    for r in range(n - 1, -1, -1):
        outcome = evaluate_level(
            k_matrix[r], r, reviews, acceptance, costs[r], max_gram_column=max_gram_column,
            max_gram_seconds=max_gram_seconds, overhead=overhead,
        )  # fmt: skip
        if r:
            reviews[r - 1] = outcome
    tokens = 1 + outcome.expected_accepted
    return Prediction(
        [list(row) for row in k_matrix], lenience, tokens / outcome.seconds * greedy_seconds, tokens, outcome.seconds
    )


def search_k_matrices(
    acceptance: Mapping[tuple[int, int], float],
    costs: Sequence[CostCurve],
    greedy_seconds: float,
    *,
    num_columns: int,
    max_gram_column: int | None,
    max_gram_seconds: float = 0.0,
    overhead: float = 0.0,
    lenience: float = 1.0,
    max_neural: int = 8,
    max_gram_grid: Sequence[int] = MAX_GRAM_GRID,
    beam: int = 6,
) -> list[Prediction]:
    """Every k-matrix of the bounded grid, best predicted EWIF first (see the module docstring).

    Args:
        acceptance (`Mapping[tuple[int, int], float]`): `(level, column) -> a` for every `column >= level`.
        costs (`Sequence[CostCurve]`): the target's curve, then each neural drafter's (largest first).
        greedy_seconds (`float`): plain greedy's seconds per token (the baseline of the speedup).
        num_columns (`int`): drafters, Max-Gram included.
        max_gram_column (`int`, *optional*): Max-Gram's column (`num_columns - 1`), `None` without it.
        max_gram_seconds (`float`): seconds per Max-Gram proposal.
        overhead (`float`): seconds per forward pass outside the models.
        lenience (`float`): recorded in the predictions (the acceptance rates must be measured with it).
        max_neural (`int`): largest neural entry tried.
        max_gram_grid (`Sequence[int]`): Max-Gram entries tried.
        beam (`int`): sub-cascades kept per level below the target.

    Returns:
        `list[Prediction]`, sorted by predicted speedup, best first.
    """
    _check_inputs(num_columns, acceptance, costs, max_gram_column)
    n = num_columns
    kwargs = dict(max_gram_column=max_gram_column, max_gram_seconds=max_gram_seconds, overhead=overhead)
    bottom = {} if max_gram_column is not None else {n - 1: _empty_level(costs[n], overhead)}
    tails = [_Tail((), bottom)]
    for r in range(n - 1, 0, -1):  # levels reviewed by drafter r - 1, bottom-up
        scored = []
        for row in _grid(n, r, max_gram_column, max_neural, max_gram_grid):
            for tail in tails:
                outcome = evaluate_level(row, r, tail.reviews, acceptance, costs[r], **kwargs)
                scored.append((outcome.tokens_per_second, _Tail((row, *tail.rows), {**tail.reviews, r - 1: outcome})))
        scored.sort(key=lambda item: -item[0])
        tails = [tail for _, tail in scored[:beam]]
    predictions = []
    for row in _grid(n, 0, max_gram_column, max_neural, max_gram_grid):
        for tail in tails:
            outcome = evaluate_level(row, 0, tail.reviews, acceptance, costs[0], **kwargs)
            tokens = 1 + outcome.expected_accepted
            predictions.append(
                Prediction(
                    [list(row), *map(list, tail.rows)],
                    lenience,
                    tokens / outcome.seconds * greedy_seconds,
                    tokens,
                    outcome.seconds,
                )
            )
    predictions.sort(key=lambda p: -p.speedup)
    return predictions


def geometric_acceptance(accepted: int, drafted: int, reviews: int) -> float | None:
    """Per-token acceptance `a` of the i.i.d. model from counts of a run: the `a` whose expected accepted tokens per
    review, `a (1 - a^k) / (1 - a)` with `k = drafted / reviews` the mean draft length, equals `accepted / reviews`.

    `accepted / drafted` would count the tokens after a draft's first rejection, which no reviewer ever reaches, as
    rejected: it underestimates `a`, the more so the longer the drafts.

    Args:
        accepted (`int`): draft tokens the reviewer accepted.
        drafted (`int`): draft tokens it reviewed.
        reviews (`int`): reviews (the reviewer's forward passes).

    Returns:
        `float` in `[0, 0.999]`, or `None` when nothing was drafted.
    """
    if drafted <= 0 or reviews <= 0:
        return None
    k, mean = drafted / reviews, accepted / reviews

    def expected(a: float) -> float:
        return k if a >= 1 else a * (1 - a**k) / (1 - a)

    if mean >= expected(0.999):
        return 0.999
    low, high = 0.0, 0.999
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if expected(mid) < mean else (low, mid)
    return round((low + high) / 2, 6)
