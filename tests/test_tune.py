"""`hf_cascade.tune` and `hf-cascade tune`: the expected-walltime model on synthetic costs and acceptance, the
acceptance measurement, the search, the confirmation (identical greedy output required), the report, and
`hf-cascade bench --tuned`, on tiny random models saved to disk (nothing downloaded)."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import replace

import pytest
import test_bench
import torch
from test_cli import WORDS, run_cli

import hf_cascade
from hf_cascade import CascadeConfig, CascadeTypeError, CascadeValueError
from hf_cascade.cpu import onednn_linear_available
from hf_cascade.tuning import TuneResult, tune
from hf_cascade.tuning.bound import compute_bound, oracle_speedup, verdict
from hf_cascade.tuning.ewif import CostCurve, geometric_acceptance, predict, search_k_matrices
from hf_cascade.tuning.measure import TUNE_KS, _chain_pairs, chains

PROMPTS = ["w1 w2 w3 w4 w5 w9 w1 w2 w3 w4 w5 w7 w1 w2 w3", "w7 w8 w9 w7 w8 w9 w7 w8"]
FLAT = CostCurve.flat(1.0)
STEEP = CostCurve.from_forward_s({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0})  # every token costs a forward


# ------------------------------------------------------------------------------------------------ the model
def test_cost_curve_interpolates_and_extends_the_last_segment():
    curve = CostCurve.from_forward_s({1: 1.0, 2: 1.5, 4: 2.0})
    assert curve(1) == 1.0 and curve(3) == pytest.approx(1.75) and curve(8) == pytest.approx(3.0)
    assert curve(0.5) == 1.0 and CostCurve.flat(2.0)(17) == 2.0
    with pytest.raises(CascadeValueError, match="CostCurve needs at least one timed forward size"):
        CostCurve.from_forward_s({})


def test_single_level_matches_speculative_decoding_formula():
    # Max-Gram alone, flat costs: the paper's (1 - a^(k+1)) / (1 - a) tokens per target forward.
    a, k = 0.7, 5
    p = predict([[k]], {(0, 0): a}, [FLAT], greedy_seconds=1.0, max_gram_column=0)
    assert p.tokens_per_target_forward == pytest.approx((1 - a ** (k + 1)) / (1 - a))
    assert p.speedup == pytest.approx(p.tokens_per_target_forward)
    # Measured costs enter as they are: 1 + k tokens on the steep curve cost 1 + k forwards.
    assert predict([[k]], {(0, 0): a}, [STEEP], 1.0, max_gram_column=0).seconds_per_step == pytest.approx(1 + k)


def test_vertical_cascade_yield_of_an_exact_drafter():
    # A free drafter that reviews Max-Gram drafts of 4 and is always right (a = 1 below and above): each of its
    # reviews yields 5 tokens, so reaching 4 takes one review, and the target accepts all 5.
    acceptance = {(0, 0): 0.999999, (0, 1): 0.0, (1, 1): 0.999999}
    costs = [FLAT, CostCurve.flat(0.0)]
    p = predict([[4, 0], [0, 4]], acceptance, costs, 1.0, max_gram_column=1)
    assert p.tokens_per_target_forward == pytest.approx(6.0, rel=1e-4)
    assert p.seconds_per_step == pytest.approx(1.0)


def test_search_drafts_long_when_verification_is_flat_and_short_when_steep():
    acceptance = {(0, 0): 0.8}
    flat = search_k_matrices(acceptance, [FLAT], 1.0, num_columns=1, max_gram_column=0)
    steep = search_k_matrices(acceptance, [STEEP], 1.0, num_columns=1, max_gram_column=0)
    assert flat[0].k_matrix == [[16]] and flat[0].speedup > 4
    assert steep[0].k_matrix == [[1]] and steep[0].speedup < 1  # nothing pays; the least harmful first
    assert [p.speedup for p in flat] == sorted((p.speedup for p in flat), reverse=True)


@pytest.mark.parametrize("drafter_cost, dropped", [(0.9, True), (0.02, False)])
def test_search_drops_a_drafter_whose_drafts_do_not_pay(drafter_cost, dropped):
    acceptance = {(0, 0): 0.8, (0, 1): 0.3, (1, 1): 0.3}
    verify = CostCurve.from_forward_s({1: 1.0, 2: 1.05, 4: 1.1, 8: 1.2, 16: 1.4})
    best = search_k_matrices(acceptance, [verify, CostCurve.flat(drafter_cost)], 1.0, num_columns=2, max_gram_column=1)[
        0
    ]
    assert (best.k_matrix[0][0] == 0) is dropped
    if dropped:  # Max-Gram alone reaches the target
        assert best.k_matrix[0][1] > 0


def test_search_without_max_gram_and_with_two_assistants():
    acceptance = {(0, 0): 0.9, (0, 1): 0.6, (1, 1): 0.8}
    costs = [FLAT, CostCurve.flat(0.05), CostCurve.flat(0.01)]
    best = search_k_matrices(acceptance, costs, 1.0, num_columns=2, max_gram_column=None, max_neural=4)[0]
    assert best.k_matrix[0][0] > 0 and best.speedup > 1
    CascadeConfig(k_matrix=best.k_matrix, use_max_gram=False)  # a valid matrix


def test_search_errors():
    with pytest.raises(CascadeValueError, match=r"acceptance lacks the \(level, column\) pair\(s\) \[\(1, 1\)\]"):
        search_k_matrices({(0, 0): 0.5, (0, 1): 0.5}, [FLAT, FLAT], 1.0, num_columns=2, max_gram_column=1)
    with pytest.raises(CascadeValueError, match=r"costs has 1 curve\(s\); give one for the target and one per neural"):
        search_k_matrices({(0, 0): 0.5}, [FLAT], 1.0, num_columns=1, max_gram_column=None)
    with pytest.raises(CascadeValueError, match="needs at least one drafter column, got 0"):
        search_k_matrices({}, [FLAT], 1.0, num_columns=0, max_gram_column=None)


# ------------------------------------------------------------------------------------------------ the bound
TARGET = CostCurve.from_forward_s({1: 0.05, 2: 0.08, 4: 0.10, 8: 0.15, 16: 0.25})
DRAFTER = CostCurve.from_forward_s({1: 0.02, 2: 0.03, 4: 0.035, 8: 0.05, 16: 0.08})
RATES = {1.0: {(0, 0): 0.8, (0, 1): 0.5, (1, 1): 0.55}, 2.0: {(0, 0): 0.8, (0, 1): 0.5, (1, 1): 0.65}}
MODEL = dict(num_columns=2, max_gram_column=1, max_gram_seconds=0.001, overhead=0.002)


def test_bound_is_at_least_every_searched_prediction():
    searched = [
        p for value, rates in RATES.items()
        for p in search_k_matrices(rates, [TARGET, DRAFTER], 0.052, **MODEL, lenience=value)
    ]  # fmt: skip
    bound = compute_bound(RATES, [TARGET, DRAFTER], 0.052, **MODEL, column_names=["small", "max_gram"])
    assert bound.fixed_speedup >= max(p.speedup for p in searched) - 1e-12
    assert bound.oracle_speedup >= bound.fixed_speedup
    assert bound.max_neural == 16 and bound.max_gram_max == 16 and bound.oracle_source in ("fixed", "small", "max_gram")
    again = predict(bound.fixed_k_matrix, RATES[bound.fixed_lenience], [TARGET, DRAFTER], 0.052,
                    max_gram_column=1, max_gram_seconds=0.001, overhead=0.002)  # fmt: skip
    assert again.speedup == pytest.approx(bound.fixed_speedup)  # the bound is a config's prediction
    # A search made elsewhere that found more (here: a made-up prediction) raises the bound to it.
    better = searched[0].__class__([[1, 1], [0, 1]], 1.0, 9.0, 2.0, 0.1)
    assert compute_bound(RATES, [TARGET, DRAFTER], 0.052, **MODEL, searched=[better]).fixed_speedup == 9.0
    with pytest.raises(CascadeValueError, match="compute_bound: acceptance is empty"):
        compute_bound({}, [TARGET, DRAFTER], 0.052, **MODEL)


def test_flat_verification_gives_a_higher_bound_than_steep():
    rates = {1.0: {(0, 0): 0.8}}
    flat = compute_bound(rates, [FLAT], 1.0, num_columns=1, max_gram_column=0)
    steep = compute_bound(rates, [STEEP], 1.0, num_columns=1, max_gram_column=0)
    assert flat.fixed_speedup > steep.fixed_speedup and flat.oracle_speedup > steep.oracle_speedup
    assert flat.fixed_k_matrix == [[16]] and steep.fixed_speedup < 1.0  # every token costs a forward: none pays
    assert steep.oracle_speedup == pytest.approx(1.0)  # the oracle then drafts nothing: greedy


def test_bound_of_a_two_level_cascade_by_hand():
    """Target (1 s per forward, any size) and one drafter (0.1 s per forward), a = 0.5, no Max-Gram, no overhead.

    Fixed `[[k]]`: the drafter decodes k tokens (0.1 s each) and the target accepts `1 - 2^-k` of them on average,
    so the speedup is `(2 - 2^-k) / (1 + 0.1 k)`: 1.364 (k = 1), 35/24 = 1.458 (k = 2), 1.442 (k = 3): k = 2 is best.
    Oracle: drafting one more token that will be accepted gains 1 token for 0.1 s, always worth it below 10 tokens
    per second, so each step drafts exactly the `A` tokens accepted (at most 16): `E[1 + A] = 2 - 2^-16` tokens in
    `1 + 0.1 E[A] = 1.1 - 0.1 * 2^-16` seconds.
    """
    bound = compute_bound(
        {1.0: {(0, 0): 0.5}}, [FLAT, CostCurve.flat(0.1)], 1.0, num_columns=1, max_gram_column=None,
        column_names=["small"],
    )  # fmt: skip
    assert bound.fixed_k_matrix == [[2]] and bound.fixed_speedup == pytest.approx(35 / 24)
    assert bound.oracle_speedup == pytest.approx((2 - 2**-16) / (1.1 - 0.1 * 2**-16), rel=1e-9)
    assert bound.oracle_source == "small" and bound.max_gram_max is None
    # With Max-Gram below it, the drafter could at best draft all its tokens in one 0.1 s forward.
    assert oracle_speedup(0.5, lambda n: 0.1, FLAT, 1.0) == pytest.approx((2 - 2**-16) / 1.05, rel=1e-9)
    assert verdict(1.25, bound) == "achieved 1.25x of a 1.46x bound: 86% (per-step oracle 1.82x: 69%)"
    assert verdict(None, bound, predicted=1.4).startswith("predicted (not timed) 1.40x of a 1.46x bound: 96%")


def test_geometric_acceptance_inverts_the_expected_accepted_tokens():
    a, k, reviews = 0.7, 6, 1000
    accepted = round(reviews * a * (1 - a**k) / (1 - a))
    assert geometric_acceptance(accepted, k * reviews, reviews) == pytest.approx(a, abs=2e-3)
    assert geometric_acceptance(accepted, k * reviews, reviews) > accepted / (k * reviews)  # not accepted/drafted
    assert geometric_acceptance(10, 10, 2) == 0.999 and geometric_acceptance(0, 10, 2) == 0.0
    assert geometric_acceptance(0, 0, 3) is None


@pytest.mark.parametrize("assistants, max_gram", [(0, True), (1, True), (1, False), (2, True), (2, False)])
def test_chains_cover_every_reviewer_drafter_pair(assistants, max_gram):
    n = assistants + int(max_gram)
    covered = {
        pair for chain in chains(assistants, max_gram) for pair in _chain_pairs(chain, n - 1 if max_gram else None)
    }
    assert covered == {(r, c) for r in range(n) for c in range(r, n)}


def test_placement_notes_say_what_the_numbers_mean(tiny):
    from hf_cascade.benchmark import ModelCost
    from hf_cascade.tuning import Candidate
    from hf_cascade.tuning.measure import AcceptanceCount, RunTimings
    from hf_cascade.tuning.report import placement_notes, to_markdown

    steep = ModelCost(1000, {1: 0.1, 2: 0.2, 8: 0.8, 16: 1.6})
    packed = ModelCost(1000, {1: 0.08, 2: 0.09, 8: 0.12, 16: 0.2})
    k_matrix = [[0, 2], [0, 16]]
    result = TuneResult(
        config=CascadeConfig(k_matrix=k_matrix),
        chosen="tuned-1",
        drafters=["small"],
        costs={"target": steep, "small": ModelCost(500, {1: 0.09, 2: 0.1, 8: 0.2, 16: 0.3})},
        onednn_costs={"target": packed},
        acceptance={1.0: {(0, 0): AcceptanceCount(0, 0, 1.0, accepted=5, drafted=40, reviews=10)}},
        candidates=[
            Candidate("tuned-1", k_matrix, 1.0, 1.2, 1.3, 1.1, True),
            Candidate("tuned-2", [[1, 0], [0, 1]], 1.0, identical=False),
        ],
        greedy_step_s=0.1,
        timings=RunTimings(overhead_s=0.002),
    )
    notes = placement_notes(result, tiny[0], packed=False, used={1})
    text = "\n".join(notes)
    assert "`target`: a 1-token forward takes 100.0 ms; 2 tokens 2.00x, 8 tokens 8.00x, 16 tokens 16.00x" in text
    assert "A 2-token forward of the target costs 2.00x a 1-token one with these kernels" in text
    assert "`use_onednn_linear`, measured on a copy of the target: a 2-token forward costs 1.12x" in text
    assert "Pack the models" in text
    assert "its 1-token forward costs 0.90x the target's. The chosen k-matrix gives it no tokens" in text
    assert "2.00 ms per forward pass, 2% of a 1-token target forward" in text
    assert notes[-1].startswith("REFUSED tuned-2 (k_matrix [[1, 0], [0, 1]], lenience 1)")
    assert "costs less than no draft" not in text  # every size costs more than one token here
    # A size cheaper than one token (oneDNN picks its kernel by size) is said, with its ratio.
    dip = replace(result, costs={**result.costs, "target": ModelCost(1000, {1: 0.1, 2: 0.12, 4: 0.075, 8: 0.1})})
    assert "A 4-token forward of the target costs 0.75x a 1-token one here" in "\n".join(
        placement_notes(dip, tiny[0], packed=True, used={1})
    )
    result.notes = notes
    report = to_markdown(result)
    assert (
        "| target (oneDNN copy) | 1000 | 80.0 ms (1.00x) |" in report
        and "| 1 | target | small | 10 | 40 | 5 |" in report
    )
    assert "| tuned-2 | `[[1, 0], [0, 1]]` | 1 | - | - | - | **NO** |  |" in report
    assert "## Bound" not in report  # no bound computed: no section

    # The bound section: both bounds, the chosen and default configurations next to them, the verdict.
    from hf_cascade.tuning import Bound
    from hf_cascade.tuning.report import to_dict

    result.candidates.append(Candidate("default", [[8, 2], [0, 16]], 1.0, confirmed_speedup=1.0, identical=True))
    result.bound = Bound(1.25, [[4, 2], [0, 16]], 2.0, 1.6, "small", 16, 16)
    report = to_markdown(result)
    assert "## Bound" in report
    assert (
        "| any fixed k-matrix (neural entries 0..16, Max-Gram 0..16) | 1.25x | `[[4, 2], [0, 16]]`, lenience 2 |"
        in report
    )
    assert (
        "| per-step oracle (each step drafts only tokens that will be accepted) | 1.60x | drafts from `small` |"
        in report
    )
    assert (
        "| tuned-1 (chosen) | 1.20x | 1.10x | 88% | 69% |" in report and "| default | - | 1.00x | 80% | 62% |" in report
    )
    assert "Verdict: achieved 1.10x of a 1.25x bound: 88% (per-step oracle 1.60x: 69%)." in report
    data = json.loads(json.dumps(to_dict(result)))
    assert data["bound"]["fixed_speedup"] == 1.25 and data["bound"]["oracle_speedup"] == 1.6
    assert data["achieved_speedup"] == 1.1 and data["achieved_of_bound"] == pytest.approx(0.88)
    assert data["verdict"].startswith("achieved 1.10x of a 1.25x bound") and data["chosen"] == "tuned-1"


# ------------------------------------------------------------------------------------------------ tiny models
tiny = test_bench.tiny_pair  # the fixture: a tiny target and a noisy drafter, saved to disk

FAST = dict(
    max_new_tokens=6, confirm=1, repeats=1, warmup_tokens=2, lenience=(1.0,), onednn_probe=False, cost_repeats=2
)


def test_measure_cost_takes_the_sizes_in_turns(tiny):
    # A busy spell of the machine must slow every size alike, not make one size look expensive.
    from hf_cascade.benchmark import measure_cost

    target, *_ = tiny
    sizes = []
    handle = target.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        cost = measure_cost(target, torch.tensor([[3, 4, 5, 6]]), ks=(1, 2, 4), repeats=2)
    finally:
        handle.remove()
    assert sizes == [4, 1, 2, 4, 1, 2, 4, 1, 2, 4]  # the prefill, then three rounds (the first untimed)
    assert set(cost.forward_s) == {1, 2, 4}


def test_tune_python_confirms_and_round_trips_its_config(tiny, tmp_path):
    target, drafter, tokenizer, *_ = tiny
    result = tune(target, {"d": drafter}, tokenizer, PROMPTS, **{**FAST, "onednn_probe": True})
    assert isinstance(result, TuneResult) and result.drafters == ["d"]
    assert set(result.costs) == {"target", "d"} and set(result.costs["target"].forward_s) == set(TUNE_KS)
    assert set(result.acceptance[1.0]) == {(0, 0), (0, 1), (1, 1)}
    assert result.timings.overhead_s > 0 and result.timings.max_gram_s > 0
    assert result.greedy_step_s == pytest.approx(result.costs["target"].forward_s[1] + result.timings.overhead_s)
    labels = [c.label for c in result.candidates]
    assert labels == ["tuned-1", "default"] and all(c.identical for c in result.candidates)
    assert result.chosen in labels and result.candidates[0].predicted_speedup > 0
    assert set(result.onednn_costs) == ({"target"} if onednn_linear_available() else set())
    assert not any(type(m).__name__ == "OneDNNLinear" for m in target.modules())
    paths = result.save(str(tmp_path))
    assert CascadeConfig.from_pretrained(str(tmp_path)) == result.config
    chosen = next(c for c in result.candidates if c.label == result.chosen)
    assert result.config.resolved_k_matrix(1) == chosen.k_matrix  # k_matrix None when the base config won
    # A searched candidate is confirmed as the fixed policy the model predicted; the base config runs as it is.
    methods = {m.label: m.cascade_config for m in result.confirmation.methods if m.kind == "cascade"}
    fixed = methods["tuned-1"]
    assert fixed.k_matrix == result.candidates[0].k_matrix
    assert not fixed.adaptive_drafters and not fixed.max_gram.adaptive_length
    assert methods["default"] == CascadeConfig()
    assert (result.config == CascadeConfig()) == (result.chosen == "default")
    report = (tmp_path / "tune_report.md").read_text()
    for heading in ("## Chosen configuration", "## Placement", "## Cost of a forward pass", "## Acceptance"):
        assert heading in report
    assert "`use_onednn_linear`, measured on a copy of the target" in report
    assert re.search(r"\| tuned-1 \| `\[\[\d+, \d+\], \[0, \d+\]\]` \| 1 \| \d+\.\d\dx \|", report), report
    assert str(tmp_path / "confirm" / "results.json") in paths
    # The bound: at least every prediction, written into the report and tune_result.json.
    bound = result.bound
    assert bound.oracle_speedup >= bound.fixed_speedup >= max(c.predicted_speedup or 0 for c in result.candidates)
    assert "## Bound" in report and "Verdict: achieved " in report
    data = json.loads((tmp_path / "tune_result.json").read_text())
    assert data["bound"] == bound.to_dict() and data["chosen"] == result.chosen
    assert data["achieved_of_bound"] == pytest.approx(chosen.confirmed_speedup / bound.fixed_speedup)
    # The greedy output of the chosen config is plain greedy's.
    inputs = tokenizer(PROMPTS[0], return_tensors="pt")
    plain = target.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)
    tuned = target.generate(
        **inputs, max_new_tokens=6, do_sample=False, pad_token_id=0, custom_generate=hf_cascade.generate,
        assistant_models=[drafter], cascade_config=result.config,
    )  # fmt: skip
    assert torch.equal(plain, tuned)


def test_tune_refuses_a_config_whose_greedy_output_differs(tiny, monkeypatch):
    import hf_cascade.generation as generation

    target, _, tokenizer, *_ = tiny
    original = generation.generate

    @functools.wraps(original)  # generate() reads the callable's signature to route its extra kwargs
    def corrupted(*args, cascade_config=None, **kwargs):
        out = original(*args, cascade_config=cascade_config, **kwargs)
        if corrupt_all or cascade_config.k_matrix is not None:  # every tuned candidate; not the base config
            out.sequences[0, -1] = (out.sequences[0, -1] + 1) % len(WORDS)
        return out

    monkeypatch.setattr(generation, "generate", corrupted)
    corrupt_all = False
    result = tune(target, [], tokenizer, PROMPTS[:1], **FAST)
    refused = next(c for c in result.candidates if c.label == "tuned-1")
    assert refused.identical is False and result.chosen == "default"
    assert result.config == CascadeConfig()  # the base config as it is: k_matrix=None keeps its own meaning
    assert any(note.startswith("REFUSED tuned-1") for note in result.notes)
    corrupt_all = True
    with pytest.raises(CascadeValueError, match="every candidate's greedy output differed from plain greedy's"):
        tune(target, [], tokenizer, PROMPTS[:1], **FAST)


def test_tune_with_sampling_compares_speed_not_outputs(tiny, tmp_path):
    target, _, tokenizer, *_ = tiny
    torch.manual_seed(0)
    result = tune(target, [], tokenizer, PROMPTS[:1], generation_kwargs={"do_sample": True, "top_k": 0}, **FAST)
    assert result.sampled and all(c.identical is None for c in result.candidates)
    assert result.confirmation.mismatches == [] and result.chosen in {c.label for c in result.candidates}
    result.save(str(tmp_path))
    assert "The runs sampled (`do_sample=True`)" in (tmp_path / "tune_report.md").read_text()
    assert not (tmp_path / "confirm").exists()


def test_tune_without_confirmation_trusts_the_model(tiny, tmp_path):
    target, drafter, tokenizer, *_ = tiny
    result = tune(target, {"d": drafter}, tokenizer, PROMPTS[:1], **{**FAST, "confirm": 0})
    assert result.confirmation is None and [c.label for c in result.candidates] == ["tuned-1"]
    assert result.chosen == "tuned-1" and result.candidates[0].confirmed_speedup is None
    assert result.config.k_matrix == result.candidates[0].k_matrix
    result.save(str(tmp_path))
    report = (tmp_path / "tune_report.md").read_text()
    assert ": not timed (confirm=0), " in report and "## Confirmation runs" not in report
    assert "hf-cascade bench --drafter d=PATH --tuned DIR/cascade_config.json" in report


def test_tune_errors(tiny):
    target, _, tokenizer, *_ = tiny
    with pytest.raises(CascadeValueError, match="tune: prompts is empty"):
        tune(target, [], tokenizer, [], **FAST)
    with pytest.raises(CascadeTypeError, match=r"tune: prompts\[0\] is a int; give strings"):
        tune(target, [], tokenizer, [3], **FAST)
    with pytest.raises(CascadeValueError, match="tune: tokenizer is None"):
        tune(target, [], None, PROMPTS, **FAST)
    with pytest.raises(CascadeValueError, match="tune: no drafter to tune"):
        tune(target, [], tokenizer, PROMPTS, base_config=CascadeConfig(use_max_gram=False), **FAST)
    with pytest.raises(CascadeValueError, match="tune: confirm must be >= 0 and repeats >= 1, got confirm=-1"):
        tune(target, [], tokenizer, PROMPTS, **{**FAST, "confirm": -1})
    with pytest.raises(CascadeValueError, match=r"tune: max_neural \(0\) and max\(max_gram_grid\) \(16\) must be >= 1"):
        tune(target, [target], tokenizer, PROMPTS, **{**FAST, "max_neural": 0})
    with pytest.raises(CascadeValueError, match=r"tune: lenience is empty; give at least one value"):
        tune(target, [], tokenizer, PROMPTS, **{**FAST, "lenience": ()})
    with pytest.raises(CascadeValueError, match=r"CascadeConfig.lenience must be a finite number >= 1"):
        tune(target, [], tokenizer, PROMPTS, **{**FAST, "lenience": (0.5,)})


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune_prompts") / "p.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "category": "c", "prompt": t}) + "\n" for i, t in enumerate(PROMPTS))
    )
    return str(path)


def test_cli_tune_then_bench_tuned(tiny, prompt_file, tmp_path, capsys):
    *_, target_dir, drafter_dir = tiny
    out = tmp_path / "tuned"
    argv = ["tune", "--target", target_dir, "--drafter", f"d={drafter_dir}", "--prompts", prompt_file]
    argv += ["--max-new-tokens", "6", "--confirm", "1", "--repeats", "1", "--lenience", "1,2", "--out", str(out)]
    status, stdout, err = run_cli([*argv, "--no-onednn-probe"], capsys)
    assert status == 0, err
    config = CascadeConfig.from_pretrained(str(out))
    assert re.match(
        r"(tuned-1|default \(the base config as it is\)): k_matrix \[\[\d+, \d+\], \[0, \d+\]\], lenience [12]: "
        r"\d+\.\d\dx greedy measured",
        stdout,
    ), stdout
    assert re.search(r"\nbound: achieved \d+\.\d\dx of a \d+\.\d\dx bound: \d+% \(per-step oracle", stdout), stdout
    assert json.loads((out / "tune_result.json").read_text())["command"].startswith("hf-cascade tune --target")
    report = (out / "tune_report.md").read_text()
    assert "hf-cascade tune --target" in report and "| 2 | d | max_gram |" in report  # both lenience values measured
    assert "timing forwards 1/2: target (1-16 tokens)" in err
    assert f"hf-cascade bench --target {target_dir} --drafter d={drafter_dir} --tuned DIR/cascade_config.json" in report
    bench_out = tmp_path / "bench"
    argv = ["bench", "--target", target_dir, "--drafter", f"d={drafter_dir}", "--prompts", prompt_file]
    argv += ["--method", "cascade", "--tuned", str(out / "cascade_config.json"), "--max-new-tokens", "6"]
    status, _, err = run_cli([*argv, "--repeats", "1", "--out", str(bench_out), "--no-plot", "--no-progress"], capsys)
    assert status == 0, err
    data = json.loads((bench_out / "results.json").read_text())
    assert [m["label"] for m in data["methods"]] == ["greedy", "cascade", "cascade-tuned"]
    assert (
        data["methods"][2]["drafters"] == ["d"] and data["methods"][2]["cascade_config"]["k_matrix"] == config.k_matrix
    )
    assert data["mismatches"] == [] and data["settings"]["tuned"] == str(out / "cascade_config.json")


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--tuned", "/nope/cascade_config.json"], r"--tuned '/nope/cascade_config.json': cannot read the config"),
        (["--method", "cascade-tuned=cascade", "--tuned", "CFG"], r"--tuned: the label 'cascade-tuned' is taken"),
        (
            ["--tuned", "CFG2"],
            r"--tuned '.*': CascadeConfig.k_matrix is 2x2 but the cascade has 1 drafter\(s\) .* The config was tuned "
            r"for another set of drafters: register the drafters hf-cascade tune was given",
        ),
    ],
)
def test_cli_bench_tuned_errors(tiny, tmp_path, extra, match, capsys):
    *_, target_dir, _ = tiny
    CascadeConfig(k_matrix=[[8]]).save_pretrained(tmp_path / "one")
    CascadeConfig(k_matrix=[[4, 2], [0, 8]]).save_pretrained(tmp_path / "two")
    extra = [str(tmp_path / "one") if e == "CFG" else str(tmp_path / "two") if e == "CFG2" else e for e in extra]
    status, _, err = run_cli(["bench", "--target", target_dir, "--no-plot", *extra], capsys)
    assert status == 2
    assert re.search(match, err), err


def test_cli_tune_reports_a_refusal_of_the_library(tiny, capsys, monkeypatch):
    import hf_cascade.tuning

    def refuse(*args, **kwargs):
        raise CascadeValueError("tune: something the library refuses")

    *_, target_dir, _ = tiny
    monkeypatch.setattr(hf_cascade.tuning, "tune", refuse)
    status, _, err = run_cli(["tune", "--target", target_dir, "--no-onednn-probe"], capsys)
    assert status == 1 and "hf-cascade tune: error: tune: something the library refuses" in err


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--confirm", "-1"], r"--confirm must be >= 0 \(0 trusts the model\), got -1"),
        (["--lenience", "0.5"], r"--lenience: CascadeConfig.lenience must be a finite number >= 1"),
        (["--lenience", "x"], r"argument --lenience: expected a number, got 'x'"),
        (["--lenience", ","], r"argument --lenience: expected comma-separated numbers >= 1, e.g. 1,2; got ','"),
        (["--config", "/nope/cascade_config.json"], r"--config '/nope/cascade_config.json': "),
        (["--drafter", "d"], r"--drafter 'd': write NAME=ID_OR_PATH"),
        (["--config", "NO_MAX_GRAM"], r"--config '.*' turns Max-Gram off and no --drafter is given: nothing to tune"),
    ],
)
def test_cli_tune_errors(tiny, tmp_path, extra, match, capsys):
    *_, target_dir, _ = tiny
    CascadeConfig(use_max_gram=False).save_pretrained(tmp_path)
    extra = [str(tmp_path) if e == "NO_MAX_GRAM" else e for e in extra]
    status, _, err = run_cli(["tune", "--target", target_dir, *extra], capsys)
    assert status == 2
    assert re.search(match, err), err
