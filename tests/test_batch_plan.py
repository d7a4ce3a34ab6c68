"""One plan for every row of a batch (`hf_cascade.batch_plan`): the rate model, the search, probes; and that the rows
of a real batch follow it."""

from __future__ import annotations

import itertools

import pytest

from hf_cascade import cost
from hf_cascade.batch_plan import BatchPlan, BatchPlanner, best_plan, force, plan_rate
from hf_cascade.controller import PROBE_EVERY, DraftController, expected_accepted
from hf_cascade.cost import ForwardCostModel


def linear(unit: float, per_token: float):
    """`S(n) = unit * (1 + per_token * (n - 1))`."""
    return lambda n: unit * (1 + per_token * (n - 1))


def seconds_of(*curves):
    """`(model, size) -> seconds` from one curve per model (target first)."""
    return lambda model, size: curves[model](size)


def one_drafter_best(alpha: float, target, drafter, bound: int = 8, rows: int = 4, packed=(False, False)) -> int:
    plan = best_plan(
        BatchPlan((bound,), ()),
        lambda p: plan_rate(p, lambda level, c: alpha, seconds_of(target, drafter), rows, packed),
    )
    return plan.level0[0]


def test_plan_rate_of_one_drafter_is_tokens_over_seconds():
    """`k` lockstep reviews of a drafter without sub-draft: `(1 + a + ... + a^k) / (k S_1(1) + S_0(1 + k))`."""
    target, drafter = linear(1.0, 0.1), linear(0.2, 0.1)
    for k in range(5):
        rate = plan_rate(BatchPlan((k,), ()), lambda level, c: 0.8, seconds_of(target, drafter), 4, (False, False))
        assert rate == pytest.approx((1 + expected_accepted(0.8, k)) / (k * 0.2 + target(1 + k)))
    # No drafter: plain decoding's rate.
    assert plan_rate(BatchPlan((0,), ()), lambda *_: 0.8, seconds_of(target, drafter), 4, (False, False)) == 1.0


def test_catch_up_is_paid_only_by_plans_using_the_drafter():
    target, drafter = linear(1.0, 0.1), linear(0.2, 0.1)
    seconds = seconds_of(target, drafter)
    plain = plan_rate(BatchPlan((0,), ()), lambda *_: 0.8, seconds, 4, (False, False), catch_up=[5.0])
    assert plain == 1.0
    with_drafter = plan_rate(BatchPlan((2,), ()), lambda *_: 0.8, seconds, 4, (False, False), catch_up=[5.0])
    assert with_drafter == pytest.approx((1 + expected_accepted(0.8, 2)) / (5.0 + 0.4 + target(3)))


def test_drafts_long_when_verification_is_flat_short_when_steep_none_when_the_drafter_costs_too_much():
    cheap = linear(0.05, 0.0)
    flat = one_drafter_best(0.9, linear(1.0, 0.0), cheap)
    steep = one_drafter_best(0.9, linear(1.0, 0.5), cheap)
    assert flat == 8 and 1 <= steep < flat
    assert one_drafter_best(0.9, linear(1.0, 0.1), linear(0.9, 0.0)) == 0  # as slow as the target: never pays
    assert one_drafter_best(0.05, linear(1.0, 0.0), cheap) == 0  # never accepted


def test_a_packed_target_is_priced_by_the_tokens_of_every_row():
    """Packed, a pass where each of 4 rows feeds `1 + k` tokens costs `S(1 + 4k)`: drafts are shorter than padded."""
    target, drafter = linear(1.0, 0.08), linear(0.1, 0.0)
    padded = one_drafter_best(0.85, target, drafter, packed=(False, False))
    packed = one_drafter_best(0.85, target, drafter, packed=(True, False))
    assert packed < padded
    rate = plan_rate(BatchPlan((2,), ()), lambda *_: 0.85, seconds_of(target, drafter), 4, (True, False))
    assert rate == pytest.approx((1 + expected_accepted(0.85, 2)) / (0.2 + target(1 + 4 * 2)))


def test_two_drafters_the_smaller_one_sub_drafts_when_it_is_cheap_and_accepted():
    target, middle, small = linear(1.0, 0.02), linear(0.3, 0.02), linear(0.01, 0.0)

    def best(alpha_small: float) -> BatchPlan:
        def alpha(level, c):
            return alpha_small if c == 1 else 0.9

        return best_plan(
            BatchPlan((8, 0), (8,)),
            lambda p: plan_rate(p, alpha, seconds_of(target, middle, small), 4, (False,) * 3),
        )

    assert best(0.9).sub[0] > 0 and best(0.9).level0[0] > 0
    assert best(0.0).sub[0] == 0


def test_best_plan_matches_brute_force_on_small_grids():
    target, middle, small = linear(1.0, 0.15), linear(0.25, 0.1), linear(0.03, 0.05)
    seconds = seconds_of(target, middle, small)
    for a0, a1 in [(0.9, 0.7), (0.6, 0.9), (0.8, 0.3)]:

        def rate(p, a0=a0, a1=a1):
            return plan_rate(p, lambda level, c: a1 if c == 1 else a0, seconds, 3, (False,) * 3)

        bounds = BatchPlan((4, 3), (4,))
        found = rate(best_plan(bounds, rate))
        brute = max(rate(BatchPlan((i, j), (s,))) for i, j, s in itertools.product(range(5), range(4), range(5)))
        assert found == pytest.approx(brute, rel=0.02)


def test_forced_drafters_review_once_and_ties_go_to_fewer_reviews():
    target, drafter = linear(1.0, 0.1), linear(0.9, 0.0)

    def rate(p):
        return plan_rate(p, lambda *_: 0.9, seconds_of(target, drafter), 4, (False, False))

    bounds = BatchPlan((8,), ())
    assert best_plan(bounds, rate).level0 == (0,)
    assert force(best_plan(bounds, rate), bounds, [0]).level0 == (1,)
    assert best_plan(bounds, lambda p: 1.0).level0 == (0,)


def test_a_forced_drafter_is_used_where_the_plan_would_use_it():
    """Below the drafter above it when that one reviews (its sub-drafts), for the target otherwise; never past its
    bounds."""
    bounds = BatchPlan((8, 8), (8,))
    assert force(BatchPlan((3, 0), (0,)), bounds, [1]) == BatchPlan((3, 0), (1,))
    assert force(BatchPlan((0, 0), (0,)), bounds, [1]) == BatchPlan((0, 1), (0,))
    assert force(BatchPlan((0, 0), (0,)), bounds, [0, 1]) == BatchPlan((1, 0), (1,))
    assert force(BatchPlan((0, 0), (0,)), BatchPlan((0, 0), (0,)), [0, 1]) == BatchPlan((0, 0), (0,))


def test_a_drafter_that_pays_only_with_sub_drafts_is_found():
    """A middle drafter as slow as the target pays only when a cheap smaller drafter, accepted by the middle one but
    seldom by the target, builds its sub-drafts: no single entry changed from the empty plan shows it (a coordinate
    search from there misses it)."""
    target, middle, small = linear(1.0, 0.0), linear(0.9, 0.0), linear(0.01, 0.0)
    seconds = seconds_of(target, middle, small)

    def rate(p):
        return plan_rate(p, lambda level, c: 0.2 if (level, c) == (0, 1) else 0.9, seconds, 4, (False,) * 3)

    plan = best_plan(BatchPlan((8, 8), (8,)), rate)
    assert plan.level0[0] >= 1 and plan.sub[0] >= 4
    assert rate(plan) > 2 * rate(BatchPlan((0, 0), (0,)))


def test_the_k_matrix_goals_cap_the_tokens_a_plan_is_credited_with():
    """The draft stops at the k-matrix's (cumulative) goal, so reviews that keep several tokens each are credited only
    up to it; the planner's goals are cumulative along level 0."""
    target, middle, small = linear(1.0, 0.1), linear(0.2, 0.0), linear(0.01, 0.0)
    seconds = seconds_of(target, middle, small)
    plan = BatchPlan((4, 0), (4,))
    capped = plan_rate(plan, lambda *_: 0.9, seconds, 4, (False,) * 3, goals=BatchPlan((2, 2), (1,)))
    y = 1 + 0.9  # a review keeps its one sub-draft token (0.9 accepted) and one of its own
    reviews = 2 / y  # the reviews that fit in the level's goal of 2 tokens
    assert capped == pytest.approx((1 + expected_accepted(0.9, 2)) / (reviews * (0.01 + 0.2) + target(3)))
    assert plan_rate(plan, lambda *_: 0.9, seconds, 4, (False,) * 3) > capped
    ctl = DraftController([untimed(1.0, 0.3, 0.1), untimed(0.5, 0.0, 0.0), untimed(0.1, 0.0, 0.0)], [True, True, False])
    planner = BatchPlanner(ctl, [[8, 0, 2], [0, 8, 2], [0, 0, 16]], [False] * 3)
    assert planner.goals == BatchPlan((8, 8), (8,))


def test_plan_reviews_and_uses():
    plan = BatchPlan((3, 0), (2,))
    assert [plan.reviews(0, 0), plan.reviews(0, 1), plan.reviews(1, 1), plan.reviews(1, 0)] == [3, 0, 2, 0]
    assert plan.uses(0) and plan.uses(1)
    assert not BatchPlan((0, 0), (2,)).uses(1)  # its sub-drafts serve a drafter that does not review
    assert BatchPlan((0, 1), (0,)).uses(1)


def untimed(unit: float, draft_cost: float, token_cost: float) -> ForwardCostModel:
    return ForwardCostModel(draft_cost, token_cost, timing=cost.TIMING_PRIOR, prior_unit_s=unit)


def test_a_skipped_drafter_is_probed_after_probe_every_steps_then_ever_less_often():
    """A drafter that does not pay is skipped; probed once after `PROBE_EVERY` skipped steps, and after twice as many
    each time the probe did not bring it back."""
    ctl = DraftController([untimed(1.0, 0.3, 0.1), untimed(0.95, 0.0, 0.0)], [False, False])
    planner = BatchPlanner(ctl, [[8]], [False, False])
    used = [i for i in range(8 * PROBE_EVERY) if planner.plan(4, [[0] * 4]).uses(0)]
    assert used == [PROBE_EVERY, 3 * PROBE_EVERY + 1, 7 * PROBE_EVERY + 2]


def test_a_drafter_that_pays_is_planned_every_step():
    ctl = DraftController([untimed(1.0, 0.0, 0.02), untimed(0.05, 0.0, 0.0)], [False, False])
    planner = BatchPlanner(ctl, [[8]], [False, False])
    plans = [planner.plan(4, [[0] * 4]) for _ in range(3)]
    assert all(plan.level0[0] >= 3 for plan in plans)


def test_a_lagging_drafter_pays_its_catch_up_as_wide_as_the_rows_feed_it():
    """Padded, the catch-up pass is as wide as the most any row lags; packed, it feeds every row's lag."""
    ctl = DraftController([untimed(1.0, 0.0, 0.02), untimed(0.05, 0.0, 0.5)], [False, False])
    padded = BatchPlanner(ctl, [[8]], [False, False])
    packed = BatchPlanner(ctl, [[8]], [False, True])
    assert padded.plan(4, [[0] * 4]).level0[0] > 0
    assert padded.plan(4, [[60, 0, 0, 0]]).level0[0] > 0  # a 61-token pass
    assert packed.plan(4, [[60] * 4]).level0[0] == 0  # 240 tokens to read: more than the step gains
