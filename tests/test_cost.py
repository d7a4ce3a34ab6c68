"""Measured forward cost (`MaxGramConfig.measure_cost`): the fit, the recorder, and that it steers only the drafts."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from hf_cascade.config import MaxGramConfig
from hf_cascade.controller import extension_pays
from hf_cascade.cost import (
    FORWARD_SECONDS_ATTR,
    MIN_SIZE_PASSES,
    TIMING_PRIOR,
    ForwardCostModel,
    batch_prior,
    cost_model_for,
    fit_draft_costs,
    forget_forward_seconds,
    forward_cost_model,
    relative_pass_cost,
)

from conftest import max_gram_generate


def _timings(draft_cost: float, token_cost: float, unit: float = 0.01, passes: int = 20) -> dict[int, list[float]]:
    """Exact timings of the model `1 + draft_cost + token_cost * (n - 1)` one-token forwards for n = 1..17."""
    seconds = {1: [unit] * passes}
    for n in range(2, 18):
        seconds[n] = [unit * (1 + draft_cost + token_cost * (n - 1))] * passes
    return seconds


def test_fit_recovers_the_line_from_many_passes():
    draft_cost, token_cost = fit_draft_costs(_timings(0.6, 0.03), prior_draft_cost=0.3, prior_token_cost=0.05)
    # 320 timed passes against a prior worth 4: the fit lands within 1% of the truth.
    assert draft_cost == pytest.approx(0.6, abs=0.01) and token_cost == pytest.approx(0.03, abs=0.001)


def test_fit_is_the_prior_without_enough_one_token_passes():
    seconds = _timings(0.6, 0.03)
    seconds[1] = seconds[1][:2]
    assert fit_draft_costs(seconds, 0.3, 0.05) is None  # relative costs need one-token passes to relate to
    assert fit_draft_costs({}, 0.3, 0.05) is None
    model = ForwardCostModel(0.3, 0.05, refit_every=1)
    for n in (2, 5, 9):
        model.record(n, 0.01 * n)
    assert model.costs() == (0.3, 0.05) and not model.fitted


def test_fit_uses_medians_so_one_slow_pass_does_not_count():
    seconds = _timings(0.0, 0.05)
    seconds[2][0] = 10.0  # a page fault or a busy neighbour: 1000 one-token forwards
    draft_cost, token_cost = fit_draft_costs(seconds, 0.3, 0.05)
    assert draft_cost == pytest.approx(0.0, abs=0.02) and token_cost == pytest.approx(0.05, abs=0.002)


def test_fit_stays_in_bounds():
    # Multi-token forwards timed *faster* than one-token ones (noise): costs are clipped, never negative.
    seconds = {1: [1.0] * 200, 2: [0.5] * 200, 9: [0.4] * 200}
    draft_cost, token_cost = fit_draft_costs(seconds, 0.3, 0.05)
    assert draft_cost == 0.0 and token_cost == 0.005


def test_fit_ignores_prefill_sized_chunks():
    seconds = _timings(0.2, 0.05)
    with_prefill = {**seconds, 300: [50.0]}
    assert fit_draft_costs(with_prefill, 0.3, 0.05) == fit_draft_costs(seconds, 0.3, 0.05)


def test_cost_model_refits_every_few_passes():
    model = ForwardCostModel(draft_cost=0.3, token_cost=0.05, refit_every=4)
    for _ in range(3):
        model.record(1, 0.01)
    assert model.costs() == (0.3, 0.05) and not model.fitted  # 3 passes: no refit yet
    model.record(300, 9.0)  # a prefill: not recorded
    assert model.costs() == (0.3, 0.05)
    for _ in range(4):
        model.record(9, 0.01 * (1 + 0.8 * 8))  # 8 draft tokens cost 0.8 each
    draft_cost, token_cost = model.costs()
    assert model.fitted
    # The timings pulled the fit away from the prior: an 8-token draft now costs far more than 0.3 + 8 * 0.05.
    assert draft_cost + 8 * token_cost > 2.0


def test_cost_model_window_forgets_old_passes():
    model = ForwardCostModel(0.3, 0.05, window=4, refit_every=1)
    for t in (1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 0.01, 0.01):
        model.record(1, t)
    assert list(model._seconds[1]) == [0.01] * 4


def test_seconds_follows_the_sizes_timed_often_enough():
    # oneDNN-like curve: 2 tokens dearer than 1, 4 tokens cheaper than 1. A straight line cannot show the dip.
    model = ForwardCostModel(0.3, 0.05, refit_every=1)
    for _ in range(MIN_SIZE_PASSES):
        model.record(1, 1.0)
        model.record(2, 1.25)
        model.record(4, 0.75)
    model.record(8, 0.5)  # one pass: too few to stand for its size
    fitted = model.absolute()
    assert model.seconds(1) == 1.0 and model.seconds(2) == 1.25 and model.seconds(4) == 0.75
    assert model.seconds(8) == pytest.approx(fitted[1] + 7 * fitted[2])  # the fitted curve
    assert model.seconds(3) == pytest.approx(fitted[1] + 2 * fitted[2])
    assert model.seconds(3.5) == pytest.approx((model.seconds(3) + 0.75) / 2)  # a mean size interpolates
    assert model.seconds(0.5) == 1.0
    for _ in range(MIN_SIZE_PASSES + 1):  # newer passes of a size move its median
        model.record(4, 0.25)
    assert model.seconds(4) == 0.25
    # Not timed (sampling, `measure_cost=False`): nothing recorded, the prior curve everywhere.
    prior = ForwardCostModel(0.3, 0.05, timing=TIMING_PRIOR)
    for _ in range(MIN_SIZE_PASSES):
        prior.record(4, 0.75)
    assert prior.seconds(4) == pytest.approx(1 + 0.3 + 0.05 * 3)


def test_extension_pays_into_a_cheaper_forward():
    # Verifying 1 + 3 tokens costs less than verifying 1: a draft that fills the cheap size pays even when a
    # straight-line curve of the same end points would not.
    dip = {1: 1.0, 4: 0.8}
    line = {1: 1.0, 4: 1.5}
    args = dict(alpha=0.3, survival=1.0, tokens_per_review=3, review_s=0.1, drafted=0, threshold=1.0, max_reviews=1)
    assert extension_pays(verify_s=lambda n: dip[n], **args)
    assert not extension_pays(verify_s=lambda n: line[n], **args)


@pytest.mark.filterwarnings("ignore:hf_cascade.cost.cost_model_for is deprecated:FutureWarning")
def test_cost_model_for():
    cpu = torch.device("cpu")
    assert isinstance(cost_model_for(cpu, MaxGramConfig()), ForwardCostModel)
    assert cost_model_for(cpu, MaxGramConfig(measure_cost=False)) is None
    assert cost_model_for(cpu, MaxGramConfig(adaptive_length=False)) is None  # nothing to steer
    assert cost_model_for(cpu, MaxGramConfig(), do_sample=True) is None  # a seeded sampled run must be reproducible
    # CUDA: timed with CUDA events (host wall time of an async launch says nothing), where CUDA is there.
    assert (cost_model_for(torch.device("cuda"), MaxGramConfig()) is None) == (not torch.cuda.is_available())
    assert cost_model_for(torch.device("meta"), MaxGramConfig()) is None


def test_cost_model_for_is_deprecated():
    with pytest.warns(FutureWarning, match=r"cost_model_for is deprecated .* use hf_cascade.cost.forward_cost_model"):
        cost_model_for(torch.device("cpu"), MaxGramConfig())


def test_measured_costs_are_reported_and_output_unchanged(llama, prompt):
    plain = llama.generate(prompt, max_new_tokens=40, do_sample=False)
    measured, stats = max_gram_generate(llama, prompt)
    fixed, fixed_stats = max_gram_generate(llama, prompt, measure_cost=False)
    assert torch.equal(measured, plain) and torch.equal(fixed, plain)
    assert stats.target.draft_cost is not None and stats.target.draft_cost >= 0
    assert 0.005 <= stats.target.token_cost <= 0.95
    assert fixed_stats.target.draft_cost is None and fixed_stats.target.token_cost is None
    assert stats.to_dict()["levels"][0]["draft_cost"] == stats.target.draft_cost
    assert f"target {stats.target.draft_cost:.2f} + {stats.target.token_cost:.3f}k" in stats.summary()
    assert "fitted extra cost" not in fixed_stats.summary()


@pytest.mark.parametrize("costs, drafts", [((50.0, 0.9), False), ((0.0, 0.005), True)])
def test_measured_costs_steer_the_drafts(llama, prompt, monkeypatch, costs, drafts):
    """With measuring on, the fitted costs replace the configured ones: a prohibitive measured cost stops Max-Gram
    drafting although the configured costs (free drafts) would draft, and a negligible one drafts although the
    configured costs (prohibitive) would not."""
    monkeypatch.setattr(ForwardCostModel, "costs", lambda self: costs)
    configured = {"draft_cost": 0.0, "token_cost": 0.01} if not drafts else {"draft_cost": 50.0, "token_cost": 0.9}
    sequences, stats = max_gram_generate(llama, prompt, **configured)
    assert torch.equal(sequences, llama.generate(prompt, max_new_tokens=40, do_sample=False))
    max_gram = stats.levels[-1]
    assert (max_gram.drafted > 0) == drafts
    _, unmeasured = max_gram_generate(llama, prompt, measure_cost=False, **configured)
    assert (unmeasured.levels[-1].drafted > 0) != drafts


def test_sampling_keeps_the_configured_costs(llama, prompt, monkeypatch):
    """A sampled call does not time its forwards: timing-dependent drafts would change how many random numbers are
    drawn, so the same seed would give a different text from run to run. A measured cost that forbids drafting is
    ignored there, and the same seed gives the same tokens."""
    monkeypatch.setattr(ForwardCostModel, "costs", lambda self: (50.0, 0.9))
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        sequences, stats = max_gram_generate(llama, prompt, do_sample=True, draft_cost=0.0, token_cost=0.01)
        runs.append(sequences)
        assert stats.target.draft_cost is None and stats.levels[-1].drafted > 0
    assert torch.equal(runs[0], runs[1])


def test_batch_prior_prices_a_draft_token_for_every_row():
    assert batch_prior(0.3, 0.05, 1) == (0.3, 0.05)  # one row: the configured prior
    # Four rows: a (4, 1) pass is c(4) = 1.3 + 0.15 = 1.45 one-token passes; each draft token adds 4 * 0.05.
    assert batch_prior(0.3, 0.05, 4) == pytest.approx((0.0, 0.2 / 1.45))
    assert batch_prior(0.0, 0.9, 8) == (0.0, 0.95)  # capped as fitted costs are
    assert forward_cost_model(None, MaxGramConfig(), False, rows=4).prior == pytest.approx((0.0, 0.2 / 1.45))


# ------------------------------------------------------------------------------------- timings across calls
def test_timings_outlive_the_call_in_the_same_placement(llama):
    """A second call on the same model, threads and layout starts from the first call's passes; another layout, a
    sampled call, or `forget_forward_seconds` starts from the prior."""
    model = copy.deepcopy(llama)
    forget_forward_seconds(model)  # the session's model kept the passes of earlier tests
    config = MaxGramConfig()
    first = forward_cost_model(model, config, do_sample=False)
    for seconds in (0.010, 0.011, 0.012):
        first.record(4, seconds)
    second = forward_cost_model(model, config, do_sample=False)
    assert second.has_timings and second.seconds(4) == pytest.approx(0.011)
    second.record(4, 0.5)  # the record grows from every call, oldest first out of the window
    assert forward_cost_model(model, config, do_sample=False).seconds(4) == pytest.approx(0.0115)
    assert not forward_cost_model(model, config, do_sample=False, rows=2).has_timings  # a batch: other passes
    assert not forward_cost_model(model, config, do_sample=True).has_timings  # sampling is never timed
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert not forward_cost_model(model, config, do_sample=False).has_timings  # other threads, other costs
    finally:
        torch.set_num_threads(threads)
    # Plain data on the model: deepcopy and pickle as before.
    assert copy.deepcopy(model).__dict__[FORWARD_SECONDS_ATTR] == model.__dict__[FORWARD_SECONDS_ATTR]
    assert pickle.loads(pickle.dumps(model)).__dict__[FORWARD_SECONDS_ATTR] == model.__dict__[FORWARD_SECONDS_ATTR]
    forget_forward_seconds(model)
    assert not forward_cost_model(model, config, do_sample=False).has_timings


def test_a_second_call_drafts_from_the_first_calls_timings(llama, prompt):
    model = copy.deepcopy(llama)
    forget_forward_seconds(model)
    plain = model.generate(prompt, max_new_tokens=40, do_sample=False)
    first, _ = max_gram_generate(model, prompt)
    record = model.__dict__[FORWARD_SECONDS_ATTR]
    assert len(record) == 1 and sum(len(times) for times in next(iter(record.values())).values()) > 0
    second, stats = max_gram_generate(model, prompt)
    assert torch.equal(first, plain) and torch.equal(second, plain)
    assert stats.target.draft_cost is not None  # fitted from the start: the first call's passes count


def test_relative_pass_cost_is_the_line_the_cuts_price_with():
    from hf_cascade.adaptive import pass_cost

    assert relative_pass_cost(1, 0.3, 0.05) == 1.0  # one token: one forward, no fixed cost
    assert relative_pass_cost(2, 0.3, 0.05) == pytest.approx(1.35)
    assert relative_pass_cost(9, 0.3, 0.05) == pytest.approx(1.7)
    assert [pass_cost((0.3, 0.05))(n) for n in (1, 2, 9)] == [relative_pass_cost(n, 0.3, 0.05) for n in (1, 2, 9)]
    assert batch_prior(0.3, 0.05, rows=4) == (0.0, pytest.approx(0.05 * 4 / relative_pass_cost(4, 0.3, 0.05)))
