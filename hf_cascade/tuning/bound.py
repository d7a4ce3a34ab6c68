"""The bound: the best speedup over greedy that a draft-length policy could reach with the measured costs and
acceptance, to put the speedup a tuned configuration achieves in perspective ("achieved 1.25x of a 1.31x bound").

Both bounds use the expected-walltime model of `hf_cascade.tuning.ewif`: the measured cost curves `cost_m(n)` of the
target (`m = 0`) and of each neural drafter, the measured seconds `o` per forward outside the models and `t_M` per
Max-Gram proposal, and the i.i.d. acceptance `a[r][c]` per (level, drafter column), per lenience.

**Fixed-policy bound.** The best predicted EWIF of any k-matrix in a generous grid: neural entries `0..16`, Max-Gram
entries `0..` its largest searched entry (every value, not only `ewif.MAX_GRAM_GRID`'s), every measured lenience,
and at least the best prediction of the tune's own search (the search prunes sub-cascades with a beam, so a larger
grid is not guaranteed to keep every config of a smaller one). No fixed k-matrix is predicted to do better.

**Per-step oracle bound.** An optimistic bound for policies that choose each step's draft length, the controller
(`CascadeConfig.adaptive_drafters`) included, even knowing the future: every step drafts from one source `c` (a
neural drafter or Max-Gram) *at most the tokens that the target will accept*, and knows how many that is. With `A`
the number of consecutive tokens of `c` the target would accept, `P(A = i) = a^i (1 - a)` for `i < M` and
`P(A = M) = a^M` (`a = a[0][c]`, the best over the measured lenience values; `M` the source's largest entry), a step
that drafts `l <= A` tokens yields `1 + l` tokens (the accepted ones and the target's own) and costs

    cost(0) = cost_0(1) + o
    cost(l) = d_c(l) + cost_0(1 + l) + o                     (l >= 1)

where `d_c(l) = cost_{c+1}(l) + o` for a neural drafter with a drafter below it (one forward over all `l` tokens: as
if every level below it drafted them perfectly and for free), `d_c(l) = l (cost_{c+1}(1) + o)` for the lowest
neural drafter without Max-Gram (it can only decode one token per forward), and `d_c(l) = t_M` for Max-Gram (one
proposal). The oracle picks `l(A)` to
maximise the long-run rate `E[1 + l(A)] / E[cost(l(A))]`; its optimum `lambda*` is the root of (Dinkelbach)

    f(lambda) = sum_i P(A = i) max_{0 <= l <= i} [(1 + l) - lambda cost(l)] = 0,

found by bisection (`f` decreases in `lambda`). The oracle bound is `lambda* t_greedy`, maximised over the sources,
and at least the fixed-policy bound (one source per step cannot mix drafters within a draft as a k-matrix does).

Both are predictions of the model: they ignore caps at `max_new_tokens`, early EOS and Max-Gram's adaptive length, as
the candidates' predictions do. The measured speedups of the confirmation runs are compared with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from ..errors import CascadeValueError
from .ewif import CostCurve, Prediction, search_k_matrices

__all__ = ["BOUND_MAX_NEURAL", "Bound", "compute_bound", "oracle_speedup", "verdict"]

BOUND_MAX_NEURAL = 16  # largest neural k-matrix entry of the fixed-policy bound's grid


@dataclass(frozen=True)
class Bound:
    """The bounds of one tune (see the module docstring).

    Args:
        fixed_speedup (`float`): the best predicted speedup over greedy of any k-matrix in the grid.
        fixed_k_matrix (`list[list[int]]`): the k-matrix reaching it.
        fixed_lenience (`float`): its lenience.
        oracle_speedup (`float`): the per-step oracle's predicted speedup (`>= fixed_speedup`).
        oracle_source (`str`): the drafter its best rate drafts from (`"fixed"` when the fixed bound is higher).
        max_neural (`int`): largest neural entry of the grid.
        max_gram_max (`int`, *optional*): largest Max-Gram entry of the grid (`None` without Max-Gram).
    """

    fixed_speedup: float
    fixed_k_matrix: list[list[int]]
    fixed_lenience: float
    oracle_speedup: float
    oracle_source: str
    max_neural: int
    max_gram_max: int | None

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def oracle_speedup(
    alpha: float,
    draft_seconds: Callable[[int], float],
    target_cost: CostCurve,
    greedy_seconds: float,
    *,
    overhead: float = 0.0,
    max_tokens: int = BOUND_MAX_NEURAL,
) -> float:
    """The per-step oracle's predicted speedup over greedy for one draft source (see the module docstring).

    Args:
        alpha (`float`): the target's per-token acceptance of the source's tokens, in `[0, 1]`.
        draft_seconds (`Callable[[int], float]`): `d(l)`, seconds to draft `l >= 1` tokens (the overhead of the
            drafter's own forward included).
        target_cost (`CostCurve`): the target's forward cost over `n` tokens.
        greedy_seconds (`float`): plain greedy's seconds per token (`t_greedy`).
        overhead (`float`): seconds per target forward outside the models (`o`).
        max_tokens (`int`): the most tokens one step drafts (`M`).

    Returns:
        `float`: `lambda* t_greedy`.
    """
    alpha = min(max(alpha, 0.0), 1.0)
    probs = [alpha**i * (1 - alpha) for i in range(max_tokens)] + [alpha**max_tokens]
    costs = [target_cost(1) + overhead] + [
        draft_seconds(n) + target_cost(1 + n) + overhead for n in range(1, max_tokens + 1)
    ]

    def f(rate: float) -> float:
        total, best = 0.0, -float("inf")
        for i, p in enumerate(probs):
            best = max(best, (1 + i) - rate * costs[i])  # the best l <= i: a running maximum over l
            total += p * best
        return total

    low, high = 0.0, (max_tokens + 1) / min(costs)
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if f(mid) > 0 else (low, mid)
    return (low + high) / 2 * greedy_seconds


def compute_bound(
    acceptance: Mapping[float, Mapping[tuple[int, int], float]],
    costs: Sequence[CostCurve],
    greedy_seconds: float,
    *,
    num_columns: int,
    max_gram_column: int | None,
    max_gram_seconds: float = 0.0,
    overhead: float = 0.0,
    max_neural: int = BOUND_MAX_NEURAL,
    max_gram_max: int = 16,
    searched: Sequence[Prediction] = (),
    column_names: Sequence[str] | None = None,
) -> Bound:
    """The fixed-policy and per-step oracle bounds from measured costs and acceptance (see the module docstring).

    Args:
        acceptance (`Mapping[float, Mapping[tuple[int, int], float]]`): per lenience, `(level, column) -> a`.
        costs (`Sequence[CostCurve]`): the target's curve, then each neural drafter's (largest first).
        greedy_seconds (`float`): plain greedy's seconds per token (the baseline of the speedups).
        num_columns (`int`): drafters, Max-Gram included.
        max_gram_column (`int`, *optional*): Max-Gram's column (the last), `None` without it.
        max_gram_seconds (`float`): seconds per Max-Gram proposal.
        overhead (`float`): seconds per forward pass outside the models.
        max_neural (`int`): largest neural entry of the grid (and of a neural source's oracle draft).
        max_gram_max (`int`): largest Max-Gram entry of the grid (and of its oracle draft).
        searched (`Sequence[Prediction]`): predictions of a search already made (the bound is at least their best).
        column_names (`Sequence[str]`, *optional*): a name per column for `Bound.oracle_source`.

    Returns:
        `Bound`
    """
    if not acceptance:
        raise CascadeValueError(
            "compute_bound: acceptance is empty; give the (level, column) -> rate mapping of at least one lenience."
        )
    grid = tuple(range(max_gram_max + 1))
    best: Prediction | None = max(searched, key=lambda p: p.speedup, default=None)
    for lenience, rates in acceptance.items():
        top = search_k_matrices(
            rates, costs, greedy_seconds, num_columns=num_columns, max_gram_column=max_gram_column,
            max_gram_seconds=max_gram_seconds, overhead=overhead, lenience=lenience, max_neural=max_neural,
            max_gram_grid=grid,
        )[0]  # fmt: skip
        if best is None or top.speedup > best.speedup:
            best = top
    names = list(column_names) if column_names is not None else [f"column {c}" for c in range(num_columns)]
    oracle, source = best.speedup, "fixed"
    for c in range(num_columns):
        alpha = max(rates.get((0, c), 0.0) for rates in acceptance.values())
        if c == max_gram_column:
            draft, most = (lambda n: max_gram_seconds), max_gram_max
        elif c + 1 < num_columns:  # a drafter below it: at best, all its tokens in one forward
            draft, most = (lambda n, curve=costs[c + 1]: curve(n) + overhead), max_neural
        else:  # the lowest drafter decodes one token per forward
            draft, most = (lambda n, curve=costs[c + 1]: n * (curve(1) + overhead)), max_neural
        value = oracle_speedup(alpha, draft, costs[0], greedy_seconds, overhead=overhead, max_tokens=most)
        if value > oracle:
            oracle, source = value, names[c]
    return Bound(
        best.speedup,
        [list(row) for row in best.k_matrix],
        best.lenience,
        oracle,
        source,
        max_neural,
        max_gram_max if max_gram_column is not None else None,
    )


def verdict(achieved: float | None, bound: Bound, predicted: float | None = None) -> str:
    """One line: the achieved (measured) speedup as a share of the fixed-policy bound and of the oracle's.

    Args:
        achieved (`float`, *optional*): the chosen configuration's confirmed speedup (`None`: not timed).
        bound (`Bound`): the bounds.
        predicted (`float`, *optional*): its predicted speedup, used when it was not timed.
    """
    value, how = (achieved, "achieved") if achieved is not None else (predicted, "predicted (not timed)")
    if value is None:
        return f"nothing timed or predicted; the bound is {bound.fixed_speedup:.2f}x"
    return (
        f"{how} {value:.2f}x of a {bound.fixed_speedup:.2f}x bound: {value / bound.fixed_speedup:.0%} "
        f"(per-step oracle {bound.oracle_speedup:.2f}x: {value / bound.oracle_speedup:.0%})"
    )
