"""One draft plan for all rows of a batch: how many reviews each neural drafter makes this step (lockstep).

In a batch a drafter's forward pass costs about the same however many rows feed it (weight reads dominate at decode
sizes), and the target's pass is as wide as its widest row (padded) or costs the draft tokens of all rows (packed).
Each row deciding alone (`DraftController`, batch 1's rule) prices a shared pass as if the row fed it alone: rows
ahead skip a drafter that the row behind then runs for itself, a drafter skipped by some rows must catch up on the
tokens it missed when another row asks for it, and Max-Gram sub-drafts of different lengths widen every drafter pass.
On the Qwen2.5-Coder 1.5B <- 0.5B pair at batch 4 that ran at 0.76x batched greedy, slower than both plain decoding
and a fixed plan (`benchmarks/results/qwen-coder-1.5b-0.5b-cpu-onednn-batch4-fixed`).

So before every step of a batch with neural drafters the batch chooses ONE plan that every row follows
(`BatchPlan`): drafter `c` reviews `level0[c]` times for the target's draft (the horizontal cascade: the larger
drafters' tokens first), and each of drafter `c`'s reviews reviews a sub-draft of `sub[c]` reviews by drafter
`c + 1` (the vertical cascade). Rows then ask for the same passes at the same time, so every pass serves every row.
Max-Gram, whose drafts differ per row, drafts only at the end of the target's draft, where its tokens cost only the
target's wider pass and the batch cuts them together (`hf_cascade.batch._cut_drafts`).

The plan maximises the expected tokens per second of the step (`plan_rate`), the batch's throughput: every row
alike (the rows share one acceptance record, `DraftController.share`), `1 + G` expected tokens per row for the
seconds of the drafters' passes plus the target's, all on the batch's timed cost curves. The plan with no drafter
(rate `1 / S_0(1)`) is always a candidate, so the batch decodes plainly (with Max-Gram) when no drafter pays; a
skipped drafter is probed once after `PROBE_EVERY` skipped steps, then after twice as many each time a probe does
not bring it back. A drafter whose cost is still a prior is tried first (`DraftController.untried`).

Exactness: the plan depends on the records of earlier steps only (acceptance, timings), never on the tokens of this
step's drafts, so each row's draft length is a stopping time of its draft, greedy or sampling; when sampling no
timing enters (the cost curves are priors) and a seeded call is reproducible.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .controller import PROBE_EVERY, DraftController, expected_accepted

__all__ = ["BatchPlan", "BatchPlanner", "best_plan", "force", "plan_rate"]


@dataclass(frozen=True)
class BatchPlan:
    """The reviews every row of a batch makes this step.

    Args:
        level0 (`tuple[int, ...]`): per neural drafter `c`, its reviews extending the target's draft, in order.
        sub (`tuple[int, ...]`): per neural drafter `c` but the last, the reviews by drafter `c + 1` building the
            sub-draft each review of drafter `c` reviews (`len(level0) - 1` entries).
    """

    level0: tuple[int, ...]
    sub: tuple[int, ...]

    def reviews(self, level: int, drafter: int) -> int:
        """How many reviews neural `drafter` makes for the draft built at `level` (reviewed by model `level`)."""
        if level == 0:
            return self.level0[drafter]
        if drafter == level and level - 1 < len(self.sub):
            return self.sub[level - 1]
        return 0

    def uses(self, drafter: int) -> bool:
        """Whether `drafter` reviews at all this step (for the target, or for a drafter that does)."""
        if self.level0[drafter]:
            return True
        return drafter > 0 and self.sub[drafter - 1] > 0 and self.uses(drafter - 1)


def _width(tokens: float, rows: int, packed: bool) -> float:
    """The size a pass in which every row feeds `tokens` tokens is priced at: the chunk (padded), or the tokens fed
    in all less one per row but one (packed, `PackedRunner`)."""
    return 1 + rows * (tokens - 1) if packed else tokens


def plan_rate(
    plan: BatchPlan,
    alpha: Callable[[int, int], float],
    seconds: Callable[[int, float], float],
    rows: int,
    packed: Sequence[bool],
    catch_up: Sequence[float] = (),
    goals: BatchPlan | None = None,
) -> float:
    """Expected tokens per row per second of a step that follows `plan`.

    Each review by drafter `c` keeps `y_c = 1 + G(alpha(c + 1, c + 1), m_c)` tokens in
    `tau_c = (m_c / y_{c + 1}) tau_{c + 1} + S_{c + 1}(1 + m_c)` seconds (bottom-up), its sub-draft holding
    `m_c = min(sub[c] y_{c + 1}, goals.sub[c])` tokens; drafter `c`'s segment of the target's draft holds
    `n_c = min(level0[c] y_c, goals.level0[c] - L_c)` tokens (`L_c`: the segments before it; the draft stops at the
    k-matrix's cumulative goal, as `CascadeDrafter._draft_level` does), of which
    `G = sum_c s_c G(alpha(0, c), n_c)` are expected accepted (`s_c`: the chance the segments before drafter `c`'s are
    accepted whole), and the step takes `sum_c (n_c / y_c) tau_c + F + S_0(1 + L)` seconds (`F`: catching up the
    drafters the plan uses; the reviews that fit in a goal are all that run). The rate is `(1 + G)` over that (`G(a, n) = a + ... + a^n`,
    `controller.expected_accepted`).

    Args:
        plan (`BatchPlan`): the plan.
        alpha (`Callable[[int, int], float]`): `(level, drafter) -> ` the geometric acceptance rate.
        seconds (`Callable[[int, float], float]`): `(model, size) -> ` seconds of a batched pass of that size
            (`DraftController.seconds`; model 0 the target, `c + 1` drafter `c`).
        rows (`int`): rows taking part.
        packed (`Sequence[bool]`): per model, whether it runs packed (a pass is priced by the tokens of all rows).
        catch_up (`Sequence[float]`, *optional*): per drafter, the seconds its first review costs more because its
            cache lags behind the sequence.
        goals (`BatchPlan`, *optional*): the most tokens (not reviews) the target's draft may hold once drafter `c`'s
            segment is done (`level0`, cumulative), and each sub-draft (`sub`); unbounded by default.
    """
    n = len(plan.level0)
    y, tau = [1.0] * n, [0.0] * n
    for c in reversed(range(n)):
        below = plan.sub[c] if c + 1 < n else 0
        sub_tokens = below * y[c + 1] if below else 0.0
        if goals is not None and below:
            sub_tokens = min(sub_tokens, goals.sub[c])
        if below:
            y[c] = 1.0 + expected_accepted(alpha(c + 1, c + 1), sub_tokens)
        # The reviews that fit in the goal are all that run (`sub_tokens / y` of them, on average).
        sub_s = sub_tokens / y[c + 1] * tau[c + 1] if below else 0.0
        tau[c] = sub_s + seconds(c + 1, _width(1 + sub_tokens, rows, packed[c + 1]))
    gain, survival, length, spent = 0.0, 1.0, 0.0, 0.0
    for c in range(n):
        tokens = plan.level0[c] * y[c]
        if goals is not None:
            tokens = max(min(tokens, goals.level0[c] - length), 0.0)
        a = alpha(0, c)
        gain += survival * expected_accepted(a, tokens)
        survival *= a**tokens
        length += tokens
        spent += tokens / y[c] * tau[c]
    spent += sum(catch_up[c] for c in range(min(n, len(catch_up))) if plan.uses(c))
    spent += seconds(0, _width(1 + length, rows, packed[0]))
    return (1.0 + gain) / max(spent, 1e-12)


# Plans searched exhaustively up to this many (one or two drafters with the default bounds), by coordinate ascent
# beyond it.
_EXHAUSTIVE = 4096


def best_plan(bounds: BatchPlan, rate: Callable[[BatchPlan], float], sweeps: int = 4) -> BatchPlan:
    """The plan within `bounds` with the highest `rate`: every plan when there are at most 4096, else coordinate
    ascent (each entry in turn set to its best value given the others, until none changes) from the plan without
    drafters and from the plan at the bounds, the better of the two. Ties go to fewer reviews.

    Args:
        bounds (`BatchPlan`): the most reviews of each entry.
        rate (`Callable[[BatchPlan], float]`): what to maximise (`plan_rate`).
        sweeps (`int`, *optional*, defaults to 4): at most this many rounds over the entries (coordinate ascent).
    """
    n = len(bounds.level0)
    limits = [*bounds.level0, *bounds.sub]

    def make(v: Sequence[int]) -> BatchPlan:
        return BatchPlan(tuple(v[:n]), tuple(v[n:]))

    def better(a: float, b: float, a_size: int, b_size: int) -> bool:
        return a > b * (1 + 1e-9) or (a >= b * (1 - 1e-9) and a_size < b_size)

    if math.prod(limit + 1 for limit in limits) <= _EXHAUSTIVE:
        best, best_rate = [0] * len(limits), -1.0
        for values in itertools.product(*(range(limit + 1) for limit in limits)):
            trial = rate(make(values))
            if better(trial, best_rate, sum(values), sum(best)):
                best, best_rate = list(values), trial
        return make(best)
    found = []
    for start in ([0] * len(limits), list(limits)):
        values, best_rate = start, rate(make(start))
        for _ in range(sweeps):
            changed = False
            for i, limit in enumerate(limits):
                for value in range(limit + 1):
                    trial = [*values[:i], value, *values[i + 1 :]]
                    if value != values[i] and better(trial_rate := rate(make(trial)), best_rate, value, values[i]):
                        values, best_rate, changed = trial, trial_rate, True
            if not changed:
                break
        found.append((best_rate, values))
    (rate_a, a), (rate_b, b) = found
    return make(a if not better(rate_b, rate_a, sum(b), sum(a)) else b)


def force(plan: BatchPlan, bounds: BatchPlan, drafters: Sequence[int]) -> BatchPlan:
    """`plan` with each of `drafters` reviewing at least once (a probe, a first measurement), where it measures what
    the plan would use it for: below the drafter above it when that one reviews (`sub`), else for the target
    (`level0`); a drafter its bounds never let review stays out.

    Args:
        plan (`BatchPlan`): the chosen plan.
        bounds (`BatchPlan`): the most reviews of each entry.
        drafters (`Sequence[int]`): the drafters to use.
    """
    level0, sub = list(plan.level0), list(plan.sub)
    for c in sorted(drafters):
        if BatchPlan(tuple(level0), tuple(sub)).uses(c):
            continue
        if c > 0 and bounds.sub[c - 1] and BatchPlan(tuple(level0), tuple(sub)).uses(c - 1):
            sub[c - 1] = 1
        elif bounds.level0[c]:
            level0[c] = 1
    return BatchPlan(tuple(level0), tuple(sub))


class BatchPlanner:
    """Chooses the `BatchPlan` of every step of one batched `generate` call (see the module docstring).

    Args:
        controller (`DraftController`): the rows' shared records (acceptance, timings; `DraftController.share`).
        k_matrix (`Sequence[Sequence[int]]`): the configured bounds; `k_matrix[0][c]` bounds drafter `c`'s reviews
            for the target, `k_matrix[c + 1][c + 1]` those building drafter `c`'s sub-drafts.
        packed (`Sequence[bool]`): per model (target first), whether it runs packed.
    """

    def __init__(self, controller: DraftController, k_matrix: Sequence[Sequence[int]], packed: Sequence[bool]):
        self.controller = controller
        n = len(controller.costs) - 1
        # The k-matrix's entries are token goals, cumulative along a level (`CascadeDrafter._draft_level`): drafter c
        # may fill what the drafters before it left of the level's goal, one token per review at least.
        self.goals = BatchPlan(
            tuple(sum(int(k) for k in k_matrix[0][: c + 1]) for c in range(n)),
            tuple(int(k_matrix[c + 1][c + 1]) for c in range(n - 1)),
        )
        self.packed = list(packed)
        self._skipped = [0] * n  # steps each drafter has not reviewed since it last did
        self._probe_after = [PROBE_EVERY] * n  # doubles after each probe that did not bring the drafter back
        self._probed = [False] * n

    def plan(self, rows: int, lags: Sequence[Sequence[int]]) -> BatchPlan:
        """The plan of the next step.

        Args:
            rows (`int`): the rows taking part (`>= 1`).
            lags (`Sequence[Sequence[int]]`): per drafter, the tokens each row's cache of it lags behind the row's
                sequence (read first by the drafter's next pass: as wide as the most of them padded, all of them
                packed).
        """
        ctl = self.controller
        untried = [c for c in range(len(self._skipped)) if ctl.untried(c)]
        probes = [c for c in range(len(self._skipped)) if self._skipped[c] >= self._probe_after[c]]
        catch_up = [
            ctl.catch_up_seconds(c, sum(row_lags) if self.packed[c + 1] else max(row_lags, default=0))
            for c, row_lags in enumerate(lags)
        ]
        # Fixed for the whole search (every plan asks for the same few rates and sizes).
        n = len(self._skipped)
        rates = {(level, c): ctl.acceptance.rate((level, c)) for level in range(n + 1) for c in range(n)}
        seconds = functools.cache(ctl.seconds)

        def rate(plan: BatchPlan) -> float:
            return plan_rate(plan, lambda level, c: rates[level, c], seconds, rows, self.packed, catch_up, self.goals)

        plan = force(best_plan(self.goals, rate), self.goals, sorted({*untried, *probes}))
        for c in range(len(self._skipped)):
            used = plan.uses(c)
            if c in untried and used:
                ctl.try_untried(c)  # counts the forced measurement
            if self._probed[c]:  # the step after a probe: did the drafter pay again?
                self._probe_after[c] = PROBE_EVERY if used else 2 * self._probe_after[c]
            self._probed[c] = used and c in probes and c not in untried
            self._skipped[c] = 0 if used else self._skipped[c] + 1
        return plan
