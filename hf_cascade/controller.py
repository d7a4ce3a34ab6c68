"""Draft lengths of the neural levels, chosen during the call from measured costs and tracked acceptance.

With fixed k-matrix entries a neural drafter drafts as much on a machine where verifying eight tokens costs what one
does (a GPU, a target streamed from disk by accelerate) as on one where each token costs a good part of a forward
(a CPU with PyTorch's default kernels), and it drafts even when its own forward costs too much relative to its
reviewer's for any draft to pay. `DraftController` (one per `generate` call, `CascadeConfig.adaptive_drafters`)
decides instead, before every review, whether one more review by drafter `c` should extend the draft built at
level `r`.

Notation. Model `m = 0` is the target and model `m >= 1` is drafter `m - 1`; the draft built at level `r` is reviewed
by model `r`. Drafter `c` adds tokens to level `r`'s draft (`r <= c`) one review at a time: it reviews a sub-draft
built at level `c + 1` and keeps the accepted prefix plus one token of its own.

- `S_m(n)`: seconds of a forward of model `m` over `n` tokens (`ForwardCostModel.seconds`: fitted to its timed
  forwards, or the prior: the configured relative costs scaled by the parameters the forward multiplies per token,
  `cost.forward_parameters`, the same count for the target and every drafter). A timed model with no
  timing yet takes its prior times the measured-over-prior ratio of a model that has some, so that one clock never
  mixes measured seconds with the prior's nominal ones.
- `a = a(r, c)`: the geometric acceptance rate of drafter `c`'s tokens by the reviewer of level `r`,
  `P(token accepted | all before it accepted)`, tracked per `(r, c)` with an `AcceptanceTracker` (prior
  `ACCEPTANCE_PRIOR` worth `PRIOR_STRENGTH` tokens) from the first rejection of every review: the chance of a token
  not drafted yet.
- `a(r, c, b)`: the same rate for a token drafter `c` already kept with its own probability in confidence bucket `b`
  (`confidence_bucket`): the bucket's counts shrunk towards `a(r, c)` by `PRIOR_STRENGTH` tokens, so a bucket starts
  at the drafter's rate and parts from it as the call shows how the drafter's confidence relates to its reviewer's
  verdicts (a drafter of the target's family is close to calibrated: on the 1.5B's greedy answers to six GSM8K
  problems, 232 of the 233 tokens Qwen2.5-Coder-0.5B gave >= 0.9 were the 1.5B's, 57 of the 88 it gave < 0.7,
  `benchmarks/drafter_calibration.py`; a drafter whose confidence means nothing keeps every bucket at its rate). A
  draft's survival is priced per token: a run of sure tokens keeps a long draft worth extending, an unsure one ends
  it, where one average rate would price both alike.
- `y`, `tau`: tokens one review by drafter `c` yields and the seconds it takes on average (its own forward and the
  forwards of the sub-draft it reviewed), tracked from the call's reviews (prior: one review of a one-token
  sub-draft when a drafter is below `c`, one plain forward otherwise).
- `T_m`: the throughput of model `m`'s reviews: the tokens they kept per second spent building and reviewing their
  drafts, and at least its plain decoding rate `1 / S_m(1)`. `T_0` is the call's throughput.
- `L` and `s`: the length of level `r`'s draft so far and the probability that all of it survives the review,
  `s = prod_i a(r, owner_i, b_i)` (`a(r, owner_i)` for a token without a confidence: Max-Gram's), times the row's
  `weight` in a batch (1 alone): a batch takes as many passes as its last row needs, so a row ahead of the others
  gains the batch nothing by drafting (`adaptive.straggler_weights`).

Rule. `j` more reviews by drafter `c` add `j y` tokens; the `i`-th new token is accepted with probability
`s a^i`, so their expected accepted tokens and their time are

    G_j = s (a + a^2 + ... + a^(j y)) = s a (1 - a^(j y)) / (1 - a)
    C_j = j tau + F + S_r(1 + L + j y) - S_r(1 + L)

(the reviewer's forward grows from `1 + L` to `1 + L + j y` tokens; `F = S_{c+1}(1 + lag) - S_{c+1}(1)` is what
catching drafter `c` up costs when its cache lags `lag` tokens behind the sequence: a drafter skipped for some steps
must read every token it missed at its next review, in that review's pass, so using it now pays for that too). Drafter `c` reviews once more when
`max_j G_j / C_j > T_r` over the reviews that fit in the k-matrix bound. A draft whose marginal rate beats the
average raises the average: if the level's reviews produce `N` tokens in `D` seconds and an extension adds `dN` in
`dD` with `dN / dD > N / D`, then `(N + dN) / (D + dD) > N / D`; the call's throughput is the target's. `j = 1`
alone is the marginal rule; looking at several reviews lets a draft pay for the fixed cost of verifying a
multi-token draft at all (`S_r(2) - S_r(1)`, large with default CPU kernels), which a single token may not.
So drafts grow long where verification is flat in the number of tokens and the drafter is accepted, and stay short
where each token is expensive to verify. When the rule refuses drafter `c`'s first review at level `r`, drafter
`c` is skipped there (`LevelStats.skipped`) and the next, smaller drafter of the row (Max-Gram last) drafts for the
level with the remaining budget; every `PROBE_EVERY`-th consecutive skip is overruled once, so a drafter whose
acceptance was unlucky early gets measured again. A drafter whose forwards are timed is never skipped before it has
reviewed once and has a timed forward (`DraftController.untried`, two forced reviews at most): until then its cost is
a prior (proportional to the parameters its forward multiplies, `cost.forward_parameters`), and a call must not drop
a drafter the prior misjudges (a layer-skip drafter, a drafter on a faster device) without measuring it.

Exactness: the decisions depend on the tokens drafted and reviewed so far, never on the tokens still to come, so
each draft length is a stopping time of the draft and the target's review stays exact, greedy or sampling. When
sampling (or with `MaxGramConfig.measure_cost=False`, or on a device that cannot be timed) no timing enters: every
model is on its prior curve and the controller's clock adds prior seconds, so a seeded sampled call gives the same
text on every run.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence

from .adaptive import AcceptanceTracker
from .cost import ForwardCostModel

__all__ = [
    "ACCEPTANCE_PRIOR",
    "CONFIDENCE_EDGES",
    "PRIOR_STRENGTH",
    "PROBE_EVERY",
    "DraftController",
    "confidence_bucket",
    "expected_accepted",
    "extension_pays",
    "tail_length",
]

# A neural drafter of the target's family is usually accepted often; an optimistic prior lets every drafter be
# tried, and four tokens of prior give way to its measured acceptance within a few reviews.
ACCEPTANCE_PRIOR = 0.8
PRIOR_STRENGTH = 4.0
# Buckets of a drafter's own probability of a token it kept (`confidence_bucket`): bucket `b` holds probabilities in
# `[CONFIDENCE_EDGES[b - 1], CONFIDENCE_EDGES[b])`. Few, so that each fills within a call; finest near 1, where most
# of a good drafter's tokens fall and where a long draft's survival is decided.
CONFIDENCE_EDGES = (0.4, 0.7, 0.9, 0.98)
# Every PROBE_EVERY-th consecutive skip of a drafter at a level is overruled once, to measure it again.
PROBE_EVERY = 16
# Reviews forced on a timed drafter its prior would skip, until one gave a timed forward: two cover a first forward too
# long to be kept (a prefill); the cap keeps a drafter that never completes a review (non-finite logits) from running
# every step.
_MAX_TRIES = 2


def confidence_bucket(probability: float) -> int:
    """The bucket of a drafter's probability of a token it kept: `b` with `CONFIDENCE_EDGES[b - 1] <= probability <
    CONFIDENCE_EDGES[b]` (0 below the first edge, `len(CONFIDENCE_EDGES)` from the last)."""
    return bisect.bisect_right(CONFIDENCE_EDGES, probability)


def expected_accepted(alpha: float, tokens: float) -> float:
    """`alpha + alpha^2 + ... + alpha^tokens`: expected accepted tokens of a `tokens`-token draft whose tokens are
    accepted in a row with geometric rate `alpha` (`tokens` may be fractional: a mean)."""
    if alpha >= 1.0 - 1e-12:
        return tokens
    return alpha * (1.0 - alpha**tokens) / (1.0 - alpha)


def extension_pays(
    alpha: float,
    survival: float,
    tokens_per_review: float,
    review_s: float,
    verify_s: Callable[[float], float],
    drafted: int,
    threshold: float,
    max_reviews: int,
    fixed_s: float = 0.0,
) -> bool:
    """Whether some number `j <= max_reviews` of further reviews gains accepted tokens faster than `threshold`.

    Args:
        alpha (`float`): the drafter's geometric acceptance rate by this level's reviewer.
        survival (`float`): probability that the draft so far is accepted whole.
        tokens_per_review (`float`): tokens one review adds (`y`, `>= 1`).
        review_s (`float`): seconds one review takes (`tau`).
        verify_s (`Callable[[float], float]`): seconds of the reviewer's forward over `n` tokens.
        drafted (`int`): tokens the level's draft holds (`L`).
        threshold (`float`): tokens per second to beat (`T_r`).
        max_reviews (`int`): reviews that fit in the bound (at least 1 is considered).
        fixed_s (`float`, *optional*, defaults to 0): seconds any number of reviews costs first (`F`: catching the
            drafter up on the tokens it missed).

    Returns:
        `bool`: `max_j G_j / C_j > threshold` (see the module docstring).
    """
    base = verify_s(1 + drafted)
    for j in range(1, max(max_reviews, 1) + 1):
        added = j * tokens_per_review
        gain = survival * expected_accepted(alpha, added)
        cost = j * review_s + fixed_s + verify_s(1 + drafted + added) - base
        if gain > threshold * max(cost, 1e-12):
            return True
    return False


def tail_length(
    chances: Sequence[float],
    survival: float,
    verify_s: Callable[[float], float],
    drafted: int,
    threshold: float,
) -> int:
    """How many tokens of a Max-Gram proposal to append to a level's draft: the `k` maximising
    `survival * (chances[0] + ... + chances[k - 1]) - threshold * (S(1 + L + k) - S(1 + L))`.

    Max-Gram's own review costs nothing, so its tokens cost only the reviewer's wider forward. Maximising gain less
    `threshold` times cost is the rule that keeps a throughput at `threshold` growing (the module docstring's rule
    for one decision). Unlike a per-token cut with a linear cost, it follows the reviewer's measured curve where it
    is not smooth: where a wider forward costs no more, or less (oneDNN's kernels by size), a draft fills it. Ties
    go to the shorter draft.

    Args:
        chances (`Sequence[float]`): `chances[k - 1]` the chance that the proposal's first `k` tokens are all accepted
            (`adaptive.acceptance_chances`), non-increasing.
        survival (`float`): probability that the level's draft so far is accepted whole.
        verify_s (`Callable[[float], float]`): seconds of the reviewer's forward over `n` tokens.
        drafted (`int`): tokens the level's draft holds before the proposal (`L`).
        threshold (`float`): tokens per second to beat (`T_r`).

    Returns:
        `int`: `0 <= k <= len(chances)`.
    """
    base = verify_s(1 + drafted)
    best, best_value, gain = 0, 0.0, 0.0
    for k, chance in enumerate(chances, start=1):
        gain += survival * chance
        value = gain - threshold * (verify_s(1 + drafted + k) - base)
        if value > best_value + 1e-12:
            best, best_value = k, value
    return best


class DraftController:
    """The draft-length decisions of one `generate` call (see the module docstring for the rule).

    Args:
        costs (`Sequence[ForwardCostModel]`): model `m`'s cost model, `m = 0` the target, `m >= 1` drafter `m - 1`.
        has_drafts_below (`Sequence[bool]`): per model, whether a drafter sits below the level it reviews (its
            reviews then usually keep more than one token; sets the prior of its review yield).
    """

    def __init__(self, costs: Sequence[ForwardCostModel], has_drafts_below: Sequence[bool]):
        self.costs = list(costs)
        # What a token of this row is worth, in tokens of the call: 1 alone; in a batch, the row's chance of being the
        # row the batch waits for last, times the rows (`adaptive.straggler_weights`, set before every step).
        self.weight = 1.0
        self.acceptance = AcceptanceTracker(ACCEPTANCE_PRIOR, PRIOR_STRENGTH)
        # Per `(level, drafter, confidence bucket)`: the counts alone, shrunk to the drafter's rate when read
        # (`token_rate`).
        self.confident = AcceptanceTracker(0.0, 0.0)
        self._prior_draft = [1.0 if below else 0.0 for below in has_drafts_below]
        self._reviews = [[0, 0.0, 0.0] for _ in self.costs]  # per model: reviews, seconds, tokens kept
        self._skips: dict[tuple[int, int], int] = {}
        self._tries: dict[int, int] = {}  # per drafter: reviews forced by `untried`

    def share(self, lead: DraftController) -> None:
        """Decide as one row of a batch whose controllers all share `lead`'s records.

        The rows' drafters are reviewed by the same models, so how often a drafter's tokens are accepted is the pair's,
        not the row's: shared, it is learnt as many times as fast, and the batch's plan (`hf_cascade.batch_plan`) and
        the last row left decide on it. Skips and forced tries are counted for the batch.

        Args:
            lead (`DraftController`): the controller whose records the rows share (itself included).
        """
        self.acceptance, self.confident = lead.acceptance, lead.confident
        self._skips, self._tries = lead._skips, lead._tries

    def seconds(self, model: int, num_tokens: float) -> float:
        """`S_m(n)`: seconds of a forward of `model` over `num_tokens` tokens (see the module docstring)."""
        cost = self.costs[model]
        if not cost.measured or cost.has_timings:
            return cost.seconds(num_tokens)
        timed = next((c for c in self.costs if c.measured and c.has_timings), None)
        scale = timed.absolute()[0] / timed.prior_unit_s if timed is not None else 1.0
        return scale * cost._curve(num_tokens, cost.prior_absolute())

    def clock(self) -> float:
        """Seconds of all forwards so far (measured, or prior seconds when not timed)."""
        return sum(cost.elapsed for cost in self.costs)

    def record_acceptance(
        self,
        level: int,
        owners: Sequence[int],
        accepted: int,
        confidences: Sequence[float | None] | None = None,
    ) -> None:
        """A review at `level` accepted the first `accepted` of draft tokens drafted by `owners` (in order), whose
        drafters gave them `confidences` (`None` where unknown): counted for each drafter and, where known, for its
        confidence bucket."""
        confidences = confidences if confidences is not None else [None] * len(owners)
        reached = accepted + 1  # the accepted tokens and the first rejected one; the rest were never judged
        for i, (owner, confidence) in enumerate(zip(owners[:reached], confidences[:reached], strict=True)):
            verdict = {"accepted": int(i < accepted), "rejected": i == accepted}
            self.acceptance.update((level, owner), **verdict)
            if confidence is not None:
                self.confident.update((level, owner, confidence_bucket(confidence)), **verdict)

    def record_review(self, model: int, started: float, tokens: int) -> None:
        """Model `model` finished a review that began at `clock() == started` (building its draft included) and
        kept `tokens` tokens."""
        record = self._reviews[model]
        record[0] += 1
        record[1] += self.clock() - started
        record[2] += tokens

    def review_rate(self, model: int) -> tuple[float, float]:
        """`(tokens, seconds)` of an average review by `model`, with one prior review (see the module docstring)."""
        count, seconds, tokens = self._reviews[model]
        prior_draft = self._prior_draft[model]
        prior_tokens = 1.0 + ACCEPTANCE_PRIOR * prior_draft
        prior_seconds = self.seconds(model, 1.0 + prior_draft)
        return (tokens + prior_tokens) / (count + 1), (seconds + prior_seconds) / (count + 1)

    def throughput(self, model: int) -> float:
        """`T_m`: tokens per second of `model`'s reviews so far, at least its plain rate `1 / S_m(1)`."""
        count, seconds, tokens = self._reviews[model]
        plain = 1.0 / self.seconds(model, 1)
        return max(tokens / seconds, plain) if count and seconds > 0 else plain

    def untried(self, drafter: int) -> bool:
        """Whether `drafter`'s forwards are timed (`ForwardCostModel.measured`) but it has not reviewed yet, or none
        of its forwards was timed yet (a prefill longer than a review is not kept): its cost is still the prior's.
        `False` after `_MAX_TRIES` forced reviews."""
        cost = self.costs[drafter + 1]
        if not cost.measured or self._tries.get(drafter, 0) >= _MAX_TRIES:
            return False
        return not self._reviews[drafter + 1][0] or not cost.has_timings

    def try_untried(self, drafter: int) -> bool:
        """`untried(drafter)`, counting a forced review when `True` (at most `_MAX_TRIES` are forced)."""
        if not self.untried(drafter):
            return False
        self._tries[drafter] = self._tries.get(drafter, 0) + 1
        return True

    def catch_up_seconds(self, drafter: int, tokens: float) -> float:
        """`F = S_{c+1}(1 + tokens) - S_{c+1}(1)`: what a pass of `drafter` costs more for reading `tokens` tokens its
        cache missed first (see the module docstring; 0 when none)."""
        if tokens <= 0:
            return 0.0
        return max(self.seconds(drafter + 1, 1 + tokens) - self.seconds(drafter + 1, 1), 0.0)

    def survival(self, level: int, owners: Sequence[int], confidences: Sequence[float | None] | None = None) -> float:
        """Probability that a draft at `level` by `owners` (one per token), who gave its tokens `confidences`
        (`None` where unknown, or for all), is accepted whole."""
        confidences = confidences if confidences is not None else [None] * len(owners)
        return math.prod(map(functools.partial(self.token_rate, level), owners, confidences))

    def token_rate(self, level: int, owner: int, confidence: float | None = None) -> float:
        """Chance that the reviewer of `level` accepts a token drafted by `owner` with probability `confidence` (its
        bucket's rate; the drafter's rate when `None`), given that the tokens before it were accepted."""
        rate = self.acceptance.rate((level, owner))
        if confidence is None:
            return rate
        accepted, rejected = self.confident.counts((level, owner, confidence_bucket(confidence)))
        return (accepted + PRIOR_STRENGTH * rate) / (accepted + rejected + PRIOR_STRENGTH)

    def tail_length(
        self,
        level: int,
        owners: Sequence[int],
        chances: Sequence[float],
        confidences: Sequence[float | None] | None = None,
    ) -> int:
        """How many tokens of a Max-Gram proposal with `chances` (`tail_length`) to append to the draft built at
        `level`, whose tokens so far were drafted by `owners` with `confidences` (see `survival`)."""
        return tail_length(
            chances,
            self.weight * self.survival(level, owners, confidences),
            lambda n: self.seconds(level, n),
            len(owners),
            self.throughput(level),
        )

    def pays(
        self,
        level: int,
        drafter: int,
        owners: Sequence[int],
        room: int,
        catch_up: int = 0,
        confidences: Sequence[float | None] | None = None,
    ) -> bool:
        """The rule alone (no bookkeeping): whether one more review by `drafter` pays for the draft at `level`.

        Args:
            level (`int`): the level (`r`).
            drafter (`int`): the neural drafter (`c >= r`).
            owners (`Sequence[int]`): the drafter of each token of the level's draft so far.
            room (`int`): tokens the k-matrix bound (and `max_length`) still allows.
            catch_up (`int`, *optional*, defaults to 0): tokens the drafter's cache lags behind the sequence, which its
                next review reads first (`F` in the module docstring).
            confidences (`Sequence[float | None]`, *optional*): each token's probability under its drafter (`None`
                where unknown; see `survival`).
        """
        tokens, seconds = self.review_rate(drafter + 1)
        return extension_pays(
            self.acceptance.rate((level, drafter)),
            self.weight * self.survival(level, owners, confidences),
            tokens,
            seconds,
            lambda n: self.seconds(level, n),
            len(owners),
            self.throughput(level),
            math.ceil(room / max(tokens, 1.0)),
            self.catch_up_seconds(drafter, catch_up),
        )

    def extend(
        self,
        level: int,
        drafter: int,
        owners: Sequence[int],
        own: int,
        room: int,
        catch_up: int = 0,
        confidences: Sequence[float | None] | None = None,
    ) -> bool:
        """Whether `drafter` should review once more to extend the draft built at `level`.

        Args:
            level (`int`): the level (`r`).
            drafter (`int`): the neural drafter (`c >= r`).
            owners (`Sequence[int]`): the drafter of each token of the level's draft so far.
            own (`int`): how many of them this drafter added at this level (0: the decision is whether to skip it).
            room (`int`): tokens the k-matrix bound (and `max_length`) still allows.
            catch_up (`int`, *optional*, defaults to 0): tokens the drafter's cache lags behind the sequence.
            confidences (`Sequence[float | None]`, *optional*): see `pays`.

        Returns:
            `bool`; `False` with `own == 0` means the drafter is skipped at this level.
        """
        pays = self.pays(level, drafter, owners, room, catch_up=catch_up, confidences=confidences)
        if own:
            return pays
        if not pays and self.try_untried(drafter):
            return True  # measure it first: its cost so far is a prior, and a prior alone must not skip it
        key = (level, drafter)
        skips = 0 if pays else self._skips.get(key, 0) + 1
        if skips >= PROBE_EVERY:
            skips, pays = 0, True
        self._skips[key] = skips
        return pays
