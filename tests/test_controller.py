"""The draft-length controller of the neural levels (`hf_cascade.controller`, `CascadeConfig.adaptive_drafters`).

Unit tests on synthetic cost curves and acceptance sequences, then whole calls: greedy output identical to plain
`generate` with the controller on, a seeded sampled call reproducible and following the target's distribution, the
timing of every device, the placement flags of the command line.
"""

from __future__ import annotations

import copy
import json
import time
import types

import pytest
import torch
from test_cli import PROMPT as CLI_PROMPT
from test_cli import greedy_reference, run_cli, save_tiny
from test_sampling import (
    NEW,
    PROMPT,
    SAMPLES,
    SAMPLING,
    V,
    chi_square_p_value,
    exact_distribution,
    outcome_index,
    tiny,  # noqa: F401  (the fixture)
)
from transformers import LlamaForCausalLM

import hf_cascade
from hf_cascade import cost
from hf_cascade.cli._args import device_map_arg, max_memory_arg
from hf_cascade.config import ADAPTIVE_NEURAL_TOKENS, default_k_matrix
from hf_cascade.controller import (
    ACCEPTANCE_PRIOR,
    CONFIDENCE_EDGES,
    PRIOR_STRENGTH,
    PROBE_EVERY,
    DraftController,
    confidence_bucket,
    expected_accepted,
    extension_pays,
    tail_length,
)
from hf_cascade.cost import ForwardCostModel, fit_seconds, forward_parameters, prior_unit_seconds, timing_kind
from hf_cascade.cpu import onednn_linear_available

from conftest import build, llama_config, perturbed


# ----------------------------------------------------------------------------------------------- unit: the rule
def curve(unit: float, draft_cost: float, token_cost: float) -> ForwardCostModel:
    """An untimed cost model whose forward over n tokens costs `unit * (1 + draft_cost + token_cost * (n - 1))`."""
    return ForwardCostModel(draft_cost, token_cost, timing=cost.TIMING_PRIOR, prior_unit_s=unit)


def level_length(ctl: DraftController, bound: int = 8, level: int = 0, drafter: int = 0) -> int:
    """How many one-token reviews the controller lets `drafter` make for `level`'s draft, up to `bound`."""
    owners: list[int] = []
    while len(owners) < bound and ctl.extend(level, drafter, owners, len(owners), bound - len(owners)):
        owners.append(drafter)
    return len(owners)


def test_expected_accepted():
    assert expected_accepted(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert expected_accepted(1.0, 4) == 4
    assert expected_accepted(0.0, 5) == 0


def test_drafts_long_when_verification_is_flat_and_short_when_steep():
    drafter = curve(0.05, 0.0, 0.005)
    flat = DraftController([curve(1.0, 0.0, 0.005), drafter], [False, False])
    steep = DraftController([curve(1.0, 0.3, 0.5), drafter], [False, False])
    assert level_length(flat) == 8  # eight tokens cost what one does: draft up to the bound
    assert 0 < level_length(steep) <= 3  # each token costs half a forward: only the surest first tokens pay


def test_skips_a_drafter_that_does_not_pay_and_probes_it_again():
    # The drafter costs 80% of its reviewer: with acceptance 0.8 nothing it drafts pays for its own forward.
    ctl = DraftController([curve(1.0, 0.3, 0.05), curve(0.8, 0.3, 0.05)], [False, False])
    decisions = [ctl.extend(0, 0, [], 0, 8) for _ in range(PROBE_EVERY)]
    assert decisions == [False] * (PROBE_EVERY - 1) + [True]  # every PROBE_EVERY-th skip is overruled once
    cheap = DraftController([curve(1.0, 0.3, 0.05), curve(0.05, 0.3, 0.05)], [False, False])
    assert cheap.extend(0, 0, [], 0, 8)


def test_recovers_when_acceptance_rises():
    ctl = DraftController([curve(1.0, 0.3, 0.05), curve(0.1, 0.0, 0.005)], [False, False])
    for _ in range(20):
        ctl.record_acceptance(0, [0, 0], accepted=0)  # the first token rejected every time
    assert ctl.acceptance.rate((0, 0)) < 0.2
    low = level_length(ctl)
    for _ in range(40):
        ctl.record_acceptance(0, [0] * 6, accepted=5)  # now 5 of 6 accepted in a row
    assert level_length(ctl) > max(low, 3)


def test_confidence_buckets():
    assert [confidence_bucket(p) for p in (0.0, 0.39, 0.4, 0.69, 0.7, 0.89, 0.9, 0.979, 0.98, 1.0)] == [
        0, 0, 1, 1, 2, 2, 3, 3, 4, 4,
    ]  # fmt: skip
    assert confidence_bucket(CONFIDENCE_EDGES[-1]) == len(CONFIDENCE_EDGES)


def test_confidence_buckets_start_at_the_drafter_rate_and_part_from_it():
    """A bucket's rate is its counts shrunk to the drafter's rate by PRIOR_STRENGTH tokens: unseen it is the drafter's
    rate; after sure tokens accepted and unsure ones rejected, sure > drafter > unsure."""
    ctl = DraftController([curve(1.0, 0.3, 0.05), curve(0.1, 0.0, 0.005)], [False, False])
    assert ctl.token_rate(0, 0, 0.99) == ctl.token_rate(0, 0, 0.1) == ctl.token_rate(0, 0) == ACCEPTANCE_PRIOR
    for _ in range(10):
        # Four sure tokens accepted, then an unsure one rejected; the token after it was never judged.
        ctl.record_acceptance(0, [0] * 6, accepted=4, confidences=[0.99] * 4 + [0.3, 0.99])
    sure, unsure, rate = ctl.token_rate(0, 0, 0.99), ctl.token_rate(0, 0, 0.3), ctl.token_rate(0, 0)
    assert sure > rate > unsure
    assert sure == pytest.approx((40 + PRIOR_STRENGTH * rate) / (40 + PRIOR_STRENGTH))  # 40 seen, none rejected
    assert unsure == pytest.approx(PRIOR_STRENGTH * rate / (10 + PRIOR_STRENGTH))  # 10 seen, all rejected
    assert ctl.survival(0, [0, 0], [0.99, 0.3]) == pytest.approx(sure * unsure)
    assert ctl.survival(0, [0, 0], [None, 0.99]) == pytest.approx(rate * sure)  # no confidence: the drafter's rate
    assert ctl.survival(0, [0, 0]) == pytest.approx(rate**2)
    other = DraftController([curve(1.0, 0.3, 0.05), curve(0.1, 0.0, 0.005)], [False, False])
    other.share(ctl)
    assert other.token_rate(0, 0, 0.99) == sure  # a batch's rows share the buckets too


def test_sure_tokens_keep_a_draft_going_and_unsure_ones_end_it():
    """The same drafter, the same draft length: after sure tokens the draft is worth extending, after unsure ones it
    is not (one average rate would decide both alike)."""
    ctl = DraftController([curve(1.0, 0.3, 0.1), curve(0.1, 0.0, 0.005)], [False, False])
    for _ in range(30):
        ctl.record_acceptance(0, [0] * 4, accepted=3, confidences=[0.99, 0.99, 0.99, 0.5])
    owners = [0] * 5
    assert ctl.extend(0, 0, owners, len(owners), 3, confidences=[0.99] * 5)
    assert not ctl.extend(0, 0, owners, len(owners), 3, confidences=[0.5] * 5)
    chances = [0.9**k for k in range(1, 9)]
    assert ctl.tail_length(0, owners, chances, [0.99] * 5) > ctl.tail_length(0, owners, chances, [0.5] * 5)


def test_a_call_prices_its_drafts_by_the_drafter_confidence(llama, llama_drafters, prompt):
    """In a call: every token a neural drafter kept carries its probability under the drafter, Max-Gram's none, and
    the target's review feeds the confidence buckets."""
    from transformers import GenerationConfig

    from hf_cascade.cascade import CascadeDrafter, DraftSettings

    exact = llama_drafters[0]
    config = hf_cascade.CascadeConfig(k_matrix=[[8, 8], [0, 8]], pack_drafters=False)
    generation = GenerationConfig(do_sample=False, eos_token_id=None)
    settings = DraftSettings.from_config(config, 1, generation, None, llama.config.vocab_size, prompt.device)
    drafter = CascadeDrafter.build(prompt, [exact], settings)
    assert drafter.controller is not None
    tokens, _ = drafter.draft(cap=prompt.shape[1] + 16)
    drafted = drafter.buffer.drafted(drafter.committed)
    assert tokens and len(drafted) == len(tokens)
    with torch.no_grad():
        logits = exact(torch.tensor([drafter.ids])).logits[0].float()
    probabilities = torch.softmax(logits, dim=-1)
    for i, position in enumerate(drafted):
        if position.owner == 0:
            expected = probabilities[prompt.shape[1] - 1 + i, tokens[i]].item()
            assert position.confidence == pytest.approx(expected, rel=1e-4, abs=1e-6)
        else:
            assert position.owner == 1 and position.confidence is None  # Max-Gram's tail
    assert any(position.owner == 0 for position in drafted)
    before = {b: drafter.controller.confident.counts((0, 0, b)) for b in range(len(CONFIDENCE_EDGES) + 1)}
    drafter.advance([(tokens[0] + 1) % llama.config.vocab_size])  # the target rejects the first token
    after = {b: drafter.controller.confident.counts((0, 0, b)) for b in before}
    assert after != before


def test_running_throughput_raises_the_bar():
    """A level whose reviews already produce many tokens per second asks more of one more review."""
    costs = [curve(1.0, 0.3, 0.05), curve(0.2, 0.3, 0.05)]
    fresh = DraftController(costs, [False, False])
    busy = DraftController(costs, [False, False])
    busy._reviews[0] = [10, 1.0, 100.0]  # 100 tokens per second so far vs a plain rate of 1 per second
    assert busy.throughput(0) == 100.0 and fresh.throughput(0) == 1.0
    assert level_length(fresh) > level_length(busy) == 0


def test_extension_pays_looks_past_the_fixed_cost_of_a_draft():
    """One review alone does not pay for the jump from a 1-token to a 2-token forward; four do."""
    verify = lambda n: 1.0 if n <= 1 else 2.0 + 0.01 * (n - 1)  # noqa: E731
    args = dict(alpha=0.95, survival=1.0, tokens_per_review=1, review_s=0.05, verify_s=verify, drafted=0)
    assert not extension_pays(**args, threshold=1.0, max_reviews=1)
    assert extension_pays(**args, threshold=1.0, max_reviews=4)


def test_tail_length_follows_the_reviewer_curve():
    """Max-Gram's tail under the controller: long where verification is flat, short where steep, and filling a dip
    where a wider forward costs less (oneDNN picks kernels by size)."""
    chances = [0.6**k for k in range(1, 9)]  # 0.6, 0.36, 0.216, ...
    flat = lambda n: 1.0  # noqa: E731
    steep = lambda n: 1.0 + 0.5 * (n - 1)  # noqa: E731
    args = dict(chances=chances, survival=1.0, drafted=0, threshold=1.0)
    assert tail_length(verify_s=flat, **args) == 8  # any chance pays for a free token
    assert tail_length(verify_s=steep, **args) == 1  # only 0.6 beats half a forward
    assert tail_length(verify_s=steep, **{**args, "threshold": 2.0}) == 0  # a fast call asks more of a token
    dip = {1: 1.0, 2: 1.25, 3: 1.2, 4: 0.8, 5: 0.8, 6: 0.8, 7: 1.15, 8: 1.25, 9: 1.35, 10: 1.45, 11: 1.55, 12: 1.65}
    assert tail_length(verify_s=lambda n: dip[int(n)], **args) == 5  # up to the 6-token forward, the cheapest
    # After three drafted tokens the dip is reached with fewer Max-Gram tokens; a draft unlikely to survive gains
    # little from a tail, but a tail into a cheaper forward still pays.
    assert tail_length(verify_s=lambda n: dip[int(n)], **{**args, "drafted": 3}) == 2
    assert tail_length(verify_s=steep, **{**args, "survival": 0.3}) == 0
    assert tail_length([0.5, 0.25], 1.0, lambda n: 1.0 + 0.5 * (n - 1), 0, 1.0) == 0  # a tie: the shorter draft
    assert tail_length([], 1.0, flat, 0, 1.0) == 0


def test_controller_tail_length_weighs_survival_and_throughput():
    ctl = DraftController([curve(1.0, 0.0, 0.05), curve(0.1, 0.0, 0.005)], [False, False])
    chances = [0.9**k for k in range(1, 9)]
    alone = ctl.tail_length(0, [], chances)
    for _ in range(20):
        ctl.record_acceptance(0, [0, 0], accepted=0)  # drafter 0's tokens are rejected at level 0
    assert ctl.tail_length(0, [0, 0], chances) < alone  # a tail after a draft that will not survive gains little
    ctl._reviews[0] = [10, 1.0, 100.0]  # the call already makes 100 tokens per second
    assert ctl.tail_length(0, [], chances) < alone


def test_a_row_ahead_of_its_batch_drafts_nothing_and_the_row_behind_drafts_more():
    """`DraftController.weight` (a batch row's `straggler_weights`): near 0 a row ahead of the others neither extends
    a draft nor takes a Max-Gram tail; above 1 the row the batch waits for drafts longer than it would alone."""
    costs = [curve(1.0, 0.3, 0.2), curve(0.1, 0.0, 0.005)]
    chances = [0.8**k for k in range(1, 9)]
    alone = DraftController(costs, [False, False])
    ahead = DraftController(costs, [False, False])
    behind = DraftController(costs, [False, False])
    ahead.weight, behind.weight = 1e-6, 4.0
    assert level_length(ahead) == 0 < level_length(alone) < level_length(behind)
    assert (
        ahead.tail_length(0, [], chances) == 0 < alone.tail_length(0, [], chances) < behind.tail_length(0, [], chances)
    )


def test_a_drafter_that_lags_pays_for_catching_up_first():
    """`catch_up`: a drafter skipped for some steps reads every token it missed at its next review, so using it then
    costs that pass too: worth it caught up, not 30 tokens behind on a steep curve, and still with a flat one."""
    target = curve(1.0, 0.05, 0.05)
    steep = DraftController([target, curve(0.2, 0.3, 0.3)], [False, False])
    flat = DraftController([target, curve(0.2, 0.0, 0.005)], [False, False])
    assert steep.pays(0, 0, [], 8) and not steep.pays(0, 0, [], 8, catch_up=30)
    assert flat.pays(0, 0, [], 8, catch_up=30)
    assert steep.extend(0, 0, [], 0, 8) and not steep.extend(0, 0, [], 1, 8, catch_up=30)


def test_rows_of_a_batch_share_acceptance_and_skips():
    """`DraftController.share`: what one row learns of a drafter's acceptance every row uses, and skips are counted
    for the batch (the batch's plan decides for the rows while more than one runs: `hf_cascade.batch_plan`)."""
    costs = [curve(1.0, 0.3, 0.05), curve(0.8, 0.3, 0.05)]  # the drafter never pays (see the skip test above)
    rows = [DraftController(costs, [False, False]) for _ in range(4)]
    for ctl in rows:
        ctl.share(rows[0])
    rows[1].record_acceptance(0, [0, 0], accepted=0)
    assert rows[3].acceptance.rate((0, 0)) == rows[1].acceptance.rate((0, 0)) < ACCEPTANCE_PRIOR
    decisions = [ctl.extend(0, 0, [], 0, 8) for _ in range(PROBE_EVERY // 4) for ctl in rows]
    assert decisions.count(True) == 1 and decisions[-1]  # one probe in PROBE_EVERY decisions of all rows


def test_fit_seconds_without_one_token_passes():
    # A target that always reviews a draft: only multi-token passes, flat in the number of tokens.
    seconds = {n: [0.65 + 0.001 * (n - 1)] * 4 for n in (3, 5, 9)}
    unit, base, token = fit_seconds(seconds, 0.3, 0.05, prior_unit_s=1.0)
    assert base == pytest.approx(0.65, rel=1e-3) and token == pytest.approx(0.001, rel=1e-2)
    assert unit == pytest.approx(0.65 / 1.3)
    assert fit_seconds({}, 0.3, 0.05, prior_unit_s=2.0) == (2.0, 2.6, 0.1)


def test_untimed_model_borrows_the_scale_of_a_timed_one():
    """One clock never mixes measured seconds with the prior's nominal ones: a timed drafter with no timing yet is
    its prior times the measured/prior ratio of the timed target."""
    target = ForwardCostModel(0.3, 0.05, prior_unit_s=1.0, refit_every=1)
    drafter = ForwardCostModel(0.3, 0.05, prior_unit_s=0.1, refit_every=1)
    for _ in range(3):
        target.record(1, 0.02)  # measured: 50x faster than the prior's nominal second
    ctl = DraftController([target, drafter], [False, False])
    assert target.has_timings and not drafter.has_timings
    assert ctl.seconds(0, 1) == pytest.approx(0.02) and ctl.seconds(1, 1) == pytest.approx(0.002)


def test_prior_cost_model_ignores_timings_and_charges_prior_seconds():
    model = curve(2.0, 0.5, 0.1)
    model.record(1, 99.0)
    assert not model.has_timings and model.costs() == (0.5, 0.1)
    model.charge(1)
    model.charge(3)
    assert model.elapsed == pytest.approx(2.0 + 2.0 * (1 + 0.5 + 0.1 * 2))


def test_an_untimed_drafter_is_tried_before_its_prior_can_skip_it():
    """With timing on, a drafter that has not reviewed yet is tried once even when its prior says it does not pay;
    once measured (a review, a timed forward) the cost decides."""
    target = ForwardCostModel(0.3, 0.05, prior_unit_s=1.0, refit_every=1)
    drafter = ForwardCostModel(0.3, 0.05, prior_unit_s=0.9, refit_every=1)  # its prior: 90% of the target
    for _ in range(3):
        target.record(1, 0.02)
    ctl = DraftController([target, drafter], [False, False])
    assert ctl.untried(0) and ctl.extend(0, 0, [], 0, 8)
    started = ctl.clock()
    for _ in range(3):
        drafter.record(1, 0.018)  # measured: as costly as its prior said
    drafter.charge(1)
    ctl.record_review(1, started, 1)
    assert not ctl.untried(0) and not ctl.extend(0, 0, [], 0, 8)
    # A drafter that never completes a review (non-finite logits) is forced twice at most, not every step.
    broken = DraftController([target, ForwardCostModel(0.3, 0.05, prior_unit_s=0.9)], [False, False])
    assert [broken.extend(0, 0, [], 0, 8) for _ in range(3)] == [True, True, False]
    # On the prior (sampling, measure_cost=False) nothing is measured, so nothing is tried: the prior decides.
    untimed = DraftController([curve(1.0, 0.3, 0.05), curve(0.9, 0.3, 0.05)], [False, False])
    assert not untimed.untried(0) and not untimed.extend(0, 0, [], 0, 8)


# ------------------------------------------------------------------------------------------------ the prior
def shared_layer_skip(target: LlamaForCausalLM, layers: int) -> LlamaForCausalLM:
    """A layer-skip drafter sharing every module with `target` (as transformers' early-exit assistant): its own
    config runs only the first `layers` decoder layers of the target's."""
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = layers
    drafter = LlamaForCausalLM(config).eval().to(target.dtype)
    drafter.model.embed_tokens, drafter.model.layers = target.model.embed_tokens, target.model.layers
    drafter.model.norm, drafter.lm_head = target.model.norm, target.lm_head
    return drafter


def truncated_layer_skip(target: LlamaForCausalLM, layers: int) -> LlamaForCausalLM:
    """A layer-skip drafter holding a copy of the target's first `layers` decoder layers (tests/test_real_model.py)."""
    drafter = copy.deepcopy(target)
    drafter.model.layers = drafter.model.layers[:layers]
    drafter.config.num_hidden_layers = layers
    return drafter


@pytest.mark.parametrize("make", [shared_layer_skip, truncated_layer_skip])
@pytest.mark.parametrize("tied", [False, True])
def test_prior_of_a_layer_skip_drafter_is_its_share_of_the_compute(make, tied):
    """The prior counts what a forward multiplies per token: the layers it runs and the output head, not embedding
    lookups nor the layers it holds but skips. A drafter running half the layers costs half the layers plus the
    head, relative to its target, however it was built."""
    target = build(LlamaForCausalLM, llama_config(num_hidden_layers=4, tie_word_embeddings=tied), seed=0)
    drafter = make(target, 2)
    layer = sum(p.numel() for p in target.model.layers[0].parameters())
    rest = target.lm_head.weight.numel() + target.model.norm.weight.numel()
    assert forward_parameters(target) == 4 * layer + rest
    assert forward_parameters(drafter) == 2 * layer + rest
    ratio = prior_unit_seconds(drafter) / prior_unit_seconds(target)
    assert ratio == pytest.approx((2 * layer + rest) / (4 * layer + rest))
    assert 0.5 < ratio < 0.6  # the layer fraction plus the head's share


@pytest.mark.skipif(not onednn_linear_available(), reason="needs oneDNN's packed linear ops")
def test_prior_of_a_packed_model_counts_its_packed_weights(llama):
    packed = perturbed(llama, 0.0, 0).to(torch.float32)
    hf_cascade.use_onednn_linear(packed)
    assert forward_parameters(packed) == forward_parameters(llama)


# ------------------------------------------------------------------------------------------------ timing kinds
def test_timing_kind_per_device():
    assert timing_kind(torch.device("cpu")) == cost.TIMING_CPU
    assert timing_kind(torch.device("meta")) == cost.TIMING_PRIOR
    assert timing_kind("mps") == cost.TIMING_PRIOR
    assert timing_kind(torch.device("cpu"), do_sample=True) == cost.TIMING_PRIOR
    assert timing_kind(torch.device("cpu"), measure=False) == cost.TIMING_PRIOR
    cuda = cost.TIMING_CUDA if torch.cuda.is_available() else cost.TIMING_PRIOR
    assert timing_kind(torch.device("cuda")) == cuda
    offloaded = types.SimpleNamespace(hf_device_map={"model.layers.0": 0, "model.layers.1": "disk"}, device="cuda:0")
    assert timing_kind(offloaded) == cost.TIMING_CPU  # the host waits for the weights: its wall time is the cost


# --------------------------------------------------------------------------------------------------- config
def test_adaptive_drafters_config():
    assert hf_cascade.CascadeConfig().adaptive_drafters is True
    config = hf_cascade.CascadeConfig(adaptive_drafters=False)
    assert hf_cascade.CascadeConfig.from_dict(config.to_dict()) == config
    assert hf_cascade.CascadeConfig.from_dict(json.loads(config.to_json_string())) == config
    assert config.resolved_k_matrix(1) == default_k_matrix(1, True) == [[4, 2], [0, 16]]
    assert hf_cascade.CascadeConfig().resolved_k_matrix(2) == [[16, 0, 16], [0, 16, 16], [0, 0, 16]]
    assert ADAPTIVE_NEURAL_TOKENS == 16


@pytest.mark.parametrize("value", [1, "yes", None])
def test_adaptive_drafters_must_be_a_bool(value):
    with pytest.raises(
        hf_cascade.CascadeTypeError, match=f"CascadeConfig.adaptive_drafters must be a bool, got {value!r}"
    ):
        hf_cascade.CascadeConfig(adaptive_drafters=value)


# ------------------------------------------------------------------------------------------------ whole calls
@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP threads of a multi-token forward otherwise spin-wait
    (a 4-token forward of the tiny models then takes 0.5 s, and the controller rightly stops drafting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cheap_drafters(monkeypatch, target):
    """Untimed costs (the prior) with the target ten times as costly as any drafter: deterministic drafts."""
    monkeypatch.setattr(cost, "prior_unit_seconds", lambda model: 1.0 if model is target else 0.1)
    return hf_cascade.CascadeConfig(max_gram={"measure_cost": False})


class SlowLlama(LlamaForCausalLM):
    """A target whose forward takes 20 ms longer, as a large target next to small drafters."""

    def forward(self, *args, **kwargs):
        time.sleep(0.02)
        return super().forward(*args, **kwargs)


def generate(target, ids, assistants, config=None, **kwargs):
    return target.generate(
        ids,
        custom_generate=hf_cascade.generate,
        assistant_models=assistants,
        cascade_config=config or hf_cascade.CascadeConfig(),
        return_dict_in_generate=True,
        **kwargs,
    )


@pytest.mark.parametrize("drafters", ["none", "exact", "exact+partial", "partial+reject"])
def test_greedy_identical_with_the_controller(llama, llama_drafters, prompt, monkeypatch, drafters):
    exact, partial, reject = llama_drafters
    by_name = {"none": [], "exact": [exact], "exact+partial": [exact, partial], "partial+reject": [partial, reject]}
    assistants = by_name[drafters]
    expected = llama.generate(prompt, max_new_tokens=24, do_sample=False)
    out = generate(llama, prompt, assistants, cheap_drafters(monkeypatch, llama), max_new_tokens=24, do_sample=False)
    assert torch.equal(out.sequences, expected)
    stats = out.cascade_stats
    assert stats.target.timing == "prior" and stats.target.forward_s is None
    if assistants:
        assert stats.levels[1].drafted > 0  # the cheap drafter drafts
        assert "mean draft length reviewed" in stats.summary() and "not timed" in stats.summary()
        assert stats.to_dict()["levels"][0]["mean_draft_length"] == stats.target.mean_draft_length
    if drafters == "exact":
        assert stats.target.mean_draft_length > 4  # always accepted: drafts grow past the fixed length of 4


def test_greedy_identical_with_measured_costs(llama, llama_drafters, prompt):
    slow = SlowLlama(llama.config).eval().to(llama.dtype)
    slow.load_state_dict(llama.state_dict())
    exact, partial, _ = llama_drafters
    expected = llama.generate(prompt, max_new_tokens=24, do_sample=False)
    out = generate(slow, prompt, [exact, partial], max_new_tokens=24, do_sample=False)
    assert torch.equal(out.sequences, expected)
    target = out.cascade_stats.target
    assert target.timing == "cpu-wall" and target.forward_s > 0 and target.extra_token_s > 0
    # Every pass sleeps 20 ms. (`forward_s` is the fitted 1-token cost: with the drafters tried, and cheaper than the
    # slow target, the target may run multi-token reviews only, and the 1-token cost is then extrapolated.)
    assert target.forward_time_s / target.forward_passes > 0.02
    assert out.cascade_stats.levels[1].drafted > 0  # the drafters, 20 ms cheaper per forward, draft
    assert "forward cost fitted per model: target" in out.cascade_stats.summary()


def test_an_unmeasured_cheap_drafter_drafts_on_the_first_step(prompt):
    """A layer-skip drafter sharing the target's modules, timed (the default config): it drafts before the target's
    second forward, and greedy output is the target's. Before, its prior (every parameter it holds: the target's)
    made it as costly as the target, and the controller skipped it without ever timing it."""
    target = build(LlamaForCausalLM, llama_config(num_hidden_layers=4), seed=0)
    drafter = shared_layer_skip(target, 2)
    expected = target.generate(prompt, max_new_tokens=8, do_sample=False)
    calls: list[str] = []
    handles = [
        model.register_forward_pre_hook(lambda *_, name=name: calls.append(name))
        for model, name in ((target, "target"), (drafter, "drafter"))
    ]
    try:
        out = generate(target, prompt, [drafter], max_new_tokens=8, do_sample=False)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(out.sequences, expected)
    assert out.cascade_stats.levels[1].timing == "cpu-wall"
    assert "drafter" in calls and calls.index("drafter") < [i for i, c in enumerate(calls) if c == "target"][1]
    assert out.cascade_stats.levels[1].drafted > 0


def test_controller_skips_a_drafter_as_costly_as_its_target(llama, llama_drafters, prompt):
    exact, _, _ = llama_drafters
    expected = llama.generate(prompt, max_new_tokens=24, do_sample=False)
    # Untimed (the prior): the two models have the same parameter count, so the same cost, deterministically.
    untimed = hf_cascade.CascadeConfig(max_gram={"measure_cost": False})
    adaptive = generate(llama, prompt, [exact], untimed, max_new_tokens=24, do_sample=False)
    fixed = generate(llama, prompt, [exact], hf_cascade.CascadeConfig(adaptive_drafters=False), max_new_tokens=24)
    assert torch.equal(adaptive.sequences, expected) and torch.equal(fixed.sequences, expected)
    assistant = adaptive.cascade_stats.levels[1]
    assert assistant.skipped > 0 and "skipped" in adaptive.cascade_stats.summary()
    assert assistant.forward_passes < fixed.cascade_stats.levels[1].forward_passes
    assert fixed.cascade_stats.levels[1].skipped == 0


def test_seeded_sampling_is_reproducible_with_the_controller(llama, llama_drafters, prompt):
    _, partial, _ = llama_drafters
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        out = generate(llama, prompt, [partial, partial], max_new_tokens=24, do_sample=True, top_k=10)
        runs.append(out.sequences)
        assert {level.timing for level in out.cascade_stats.levels[:3]} == {"prior"}  # no clock enters the drafts
    assert torch.equal(runs[0], runs[1])


def test_sampling_follows_the_target_distribution_with_the_controller(tiny, monkeypatch):  # noqa: F811
    """The chi-square test of test_sampling.py with the controller on: drafts whose lengths follow the acceptance
    drawn so far. The target looks 10x as costly as its drafters, so the controller drafts and cuts."""
    target, d1, d2 = tiny
    cheap_drafters(monkeypatch, target)
    p = exact_distribution(target)
    torch.manual_seed(0)
    counts = torch.zeros(V**NEW, dtype=torch.float64)
    drafted = 0
    for _ in range(SAMPLES):
        out = generate(target, PROMPT, [d1, d2], hf_cascade.CascadeConfig(lenience=3.0), max_new_tokens=NEW,
                       pad_token_id=0, **SAMPLING)  # fmt: skip
        counts[outcome_index(out.sequences[0, PROMPT.shape[1] :].tolist())] += 1
        drafted += out.cascade_stats.levels[1].drafted
    assert drafted > 0
    assert chi_square_p_value(counts, p) > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_greedy_identical_and_timed_with_events(llama, llama_drafters, prompt):
    exact, partial, _ = llama_drafters
    target = perturbed(llama, 0.0, 0).to("cuda")
    drafters = [exact.to("cuda"), partial.to("cuda")]
    ids = prompt.to("cuda")
    expected = target.generate(ids, max_new_tokens=24, do_sample=False)
    out = generate(target, ids, drafters, max_new_tokens=24, do_sample=False)
    assert torch.equal(out.sequences, expected)
    assert out.cascade_stats.target.timing == "cuda-events" and out.cascade_stats.target.forward_s is not None
    for model in drafters:
        model.to("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_drafter_on_another_device_than_the_target(llama, llama_drafters, prompt):
    """The target on the GPU, a drafter on the CPU: tokens go to each model's device, output unchanged."""
    target = perturbed(llama, 0.0, 0).to("cuda")
    drafter = perturbed(llama, 0.3, 2)
    ids = prompt.to("cuda")
    expected = target.generate(ids, max_new_tokens=24, do_sample=False)
    out = generate(target, ids, [drafter], max_new_tokens=24, do_sample=False)
    assert torch.equal(out.sequences, expected)
    assert out.cascade_stats.levels[1].timing == "cpu-wall"


# ------------------------------------------------------------------------------------------ placement flags
@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ('{"lm_head": [0]}', "maps module names to a GPU index"),
        ("everywhere", "expected auto, balanced"),
    ],
)
def test_device_map_flag_errors(text, message):
    with pytest.raises(Exception, match=message):
        device_map_arg(text)


def test_device_map_flag_values():
    assert device_map_arg("auto") == "auto" and device_map_arg("cuda:0") == "cuda:0"
    assert device_map_arg('{"model": "disk", "lm_head": 0}') == {"model": "disk", "lm_head": 0}


@pytest.mark.parametrize(
    "text, message",
    [("0:10GiB", "write DEVICE=SIZE pairs"), ("0=ten", "a size is a number"), ("0=1GB,0=2GB", "given twice")],
)
def test_max_memory_flag_errors(text, message):
    with pytest.raises(Exception, match=message):
        max_memory_arg(text)


def test_max_memory_flag_values():
    assert max_memory_arg("0=10GiB, cpu=30GiB") == {0: "10GiB", "cpu": "30GiB"}


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("tiny_control")))


OFFLOAD_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "disk",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--offload-folder", "x"], "--offload-folder place the target with accelerate and need --device-map"),
        (["--max-memory", "cpu=1GiB"], "--max-memory place the target with accelerate and need --device-map"),
        (["--device-map", json.dumps(OFFLOAD_MAP)], "puts modules on disk; add --offload-folder"),
        (["--device-map", "{x"], "argument --device-map: not valid JSON"),
        (["--max-memory", "0"], "argument --max-memory: write DEVICE=SIZE pairs"),
    ],
)
def test_placement_flag_errors(cli_dir, capsys, flags, message):
    status, _, err = run_cli(["generate", "--target", cli_dir, "--prompt", "w1"] + flags, capsys)
    assert status == 2 and message in err


@pytest.mark.parametrize("command", ["generate", "bench", "demo"])
def test_placement_flags_are_listed(capsys, command):
    _, out, _ = run_cli([command, "--help"], capsys)
    assert all(flag in out for flag in ("--device-map", "--offload-folder", "--max-memory"))


def test_generate_with_the_target_offloaded_to_disk(cli_dir, tmp_path, capsys):
    """`--device-map` with `--offload-folder`: the target's layers on disk, a drafter on --device, greedy output
    identical; the offloaded target is timed on the host."""
    stats_path = tmp_path / "stats.json"
    argv = ["generate", "--target", cli_dir, "--assistant", cli_dir, "--prompt", CLI_PROMPT, "--max-new-tokens", "12"]
    argv += ["--device-map", json.dumps(OFFLOAD_MAP), "--offload-folder", str(tmp_path / "offload")]
    status, _, err = run_cli(argv + ["--stats-json", str(stats_path)], capsys)
    assert status == 0, err
    payload = json.loads(stats_path.read_text())
    assert payload["generated_token_ids"] == greedy_reference(cli_dir, CLI_PROMPT, 12)
    assert payload["cascade_stats"]["levels"][0]["timing"] == "cpu-wall"
    assert "device map {'model.embed_tokens': 'cpu', 'model.layers.0': 'disk'" in err


def test_build_uses_the_controller_only_with_neural_drafters(llama, prompt):
    config = hf_cascade.CascadeConfig()
    target_only = build(LlamaForCausalLM, llama_config(), seed=0)
    out = generate(target_only, prompt, [], config, max_new_tokens=8, do_sample=False)
    assert out.cascade_stats.levels[-1].skipped == 0 and out.cascade_stats.target.drafts_reviewed > 0
