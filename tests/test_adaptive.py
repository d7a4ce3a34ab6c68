"""Adaptive Max-Gram draft length: the rule, the tracker, and that it only changes drafts, never the output."""

from __future__ import annotations

import math

import pytest
import torch

from hf_cascade.adaptive import (
    MATCH_PRIOR,
    MEMORY,
    AcceptanceTracker,
    acceptance_chances,
    batch_draft_length,
    cut_length,
    draft_length,
    match_bucket,
    max_gram_tracker,
    packed_draft_lengths,
    pass_cost,
    proposal_gain,
    scored_proposal,
    straggler_weights,
)

from conftest import max_gram_generate


@pytest.mark.parametrize(
    "acceptance, cost, cap, expected",
    [
        (0.5, 0.1, 10, 3),  # 0.5**3 = 0.125 >= 0.1 > 0.5**4
        (0.9, 0.1, 50, 21),  # 0.9**21 = 0.109
        (0.9, 0.1, 6, 6),  # the k-matrix entry caps it
        (0.2, 0.1, 10, 1),
        (0.05, 0.1, 10, 0),  # not worth a single token
        (1.0, 0.1, 7, 7),
        (0.0, 0.1, 7, 0),
        (0.1, 0.1, 7, 1),  # exactly at the cost: 0.1**1 >= 0.1
    ],
)
def test_draft_length(acceptance, cost, cap, expected):
    assert draft_length(acceptance, cost, cap) == expected


@pytest.mark.parametrize(
    "acceptance, cost, cap, draft_cost, expected",
    [
        (0.5, 0.05, 16, 0.0, 4),  # no fixed cost: the marginal rule alone
        (0.5, 0.05, 16, 0.3, 4),  # expected 0.9375 accepted > 0.3 + 0.2
        (0.25, 0.05, 16, 0.3, 0),  # k = 2, expected 0.3125 accepted < 0.3 + 0.1: not worth a multi-token forward
        (0.25, 0.05, 16, 0.2, 2),  # 0.3125 > 0.2 + 0.1
        (0.8, 0.05, 16, 1.0, 13),  # a reliable bucket still pays for an expensive verification
        (0.5, 0.05, 16, 1.0, 0),  # ... an unsure one does not
        (1.0, 0.05, 5, 10.0, 5),  # certain acceptance always pays
    ],
)
def test_draft_length_with_fixed_draft_cost(acceptance, cost, cap, draft_cost, expected):
    assert draft_length(acceptance, cost, cap, draft_cost) == expected


def test_match_bucket():
    assert [match_bucket(n) for n in (0, 1, 2, 3, 4, 9)] == [0, 1, 2, 3, 4, 4]


def test_tracker_prior_and_updates():
    tracker = AcceptanceTracker()
    assert tracker.rate("k") == 0.5  # prior: one accepted, one rejected
    tracker.update("k", accepted=7, rejected=True)
    assert tracker.rate("k") == pytest.approx(8 / 10)
    tracker.update("other", accepted=0, rejected=True)
    assert tracker.rate("other") == pytest.approx(1 / 3) and tracker.rate("k") == pytest.approx(0.8)


def test_tracker_prior_by_key():
    tracker = max_gram_tracker()  # what the cascade uses
    assert [tracker.rate((0, b)) for b in range(5)] == pytest.approx(list(MATCH_PRIOR))
    assert list(MATCH_PRIOR) == sorted(MATCH_PRIOR)  # a longer match is never trusted less
    tracker.update((1, 4), accepted=6, rejected=True)  # prior 3.4 accepted, 0.6 rejected, worth 4 tokens
    assert tracker.rate((1, 4)) == pytest.approx(9.4 / 11)
    assert tracker.rate((0, 4)) == pytest.approx(0.85)  # keys are separate
    assert draft_length(tracker.rate((0, 1)), 0.05, 16) == 3 and draft_length(tracker.rate((0, 4)), 0.05, 16) == 16


def _stats(llama, prompt, adaptive):
    # measure_cost off: the drafts must follow the configured token_cost, not this machine's timings
    sequences, stats = max_gram_generate(llama, prompt, adaptive_length=adaptive, token_cost=0.2, measure_cost=False)
    return sequences, stats.levels[-1]


def test_adaptive_only_changes_the_drafts(llama, prompt):
    fixed_out, fixed = _stats(llama, prompt, adaptive=False)
    adaptive_out, adaptive = _stats(llama, prompt, adaptive=True)
    plain = llama.generate(prompt, max_new_tokens=40, do_sample=False)
    assert torch.equal(fixed_out, plain) and torch.equal(adaptive_out, plain)
    # Rejected tokens are what the adaptive length saves: it must draft fewer of them.
    assert adaptive.drafted - adaptive.accepted < fixed.drafted - fixed.accepted


# ------------------------------------------------------------------------------------------ memory proposals
def test_cut_length_follows_the_chances():
    assert cut_length([0.9, 0.5, 0.04, 0.01], token_cost=0.05) == 2
    assert cut_length([0.3, 0.1], token_cost=0.05, draft_cost=0.5) == 0  # 0.4 expected < 0.5 + 0.1
    assert cut_length([], token_cost=0.05) == 0
    assert acceptance_chances(0.5, [1.0, 0.5]) == [0.5, 0.125]
    assert proposal_gain([0.9, 0.8], 2, (0.5, 0.05)) == pytest.approx(1.7 - 0.6)
    assert proposal_gain([0.9], 0, (0.5, 0.05)) == 0.0


def test_tracker_max_weight_lets_old_reviews_fade():
    tracker = AcceptanceTracker(0.5, prior_strength=2.0, max_weight=10.0)
    tracker.update("k", accepted=100, rejected=False)
    assert tracker.rate("k") == pytest.approx(10 / 10.0 * (101 / 102), rel=0.02)
    tracker.update("k", accepted=0, rejected=True)
    tracker.update("k", accepted=0, rejected=True)
    # Ten tokens' worth of weight: two rejections move the rate by about 0.2 (without the cap, by 0.02).
    assert 0.75 < tracker.rate("k") < 0.85


def test_a_memory_proposal_is_drafted_only_while_its_followers_are_frequent_enough():
    from hf_cascade.max_gram import MaxGramIndex
    from hf_cascade.memory import MaxGramMemory

    index = MaxGramIndex(8, 1)
    index.extend([50, 51, 52])  # the call's own text: nothing to copy after 60 61
    memory = MaxGramMemory(min_ngram_size=1)
    for value in range(20):  # twenty records "60 61 62 <value> 63": the key always the same, the value never
        memory.add([60, 61, 62, 70 + value, 63])
    tracker = max_gram_tracker()
    tokens, key, _ = scored_proposal(index, [60, 61], 16, 0, tracker, (0.5, 0.035), memory=memory)
    assert key == (0, 2, MEMORY)
    assert tokens == [62]  # the value after 62 is a one-in-twenty guess: not worth verifying
    # Without the shares (one occurrence each), the whole remembered record would have been drafted.
    single = MaxGramMemory(min_ngram_size=1)
    single.add([60, 61, 62, 70, 63])
    tokens, _, _ = scored_proposal(index, [60, 61], 16, 0, tracker, (0.5, 0.035), memory=single)
    assert tokens == [62, 70, 63]


def test_the_calls_own_proposal_wins_when_it_is_worth_more():
    from hf_cascade.max_gram import MaxGramIndex
    from hf_cascade.memory import MaxGramMemory

    index = MaxGramIndex(8, 1)
    index.extend([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2, 3])  # a long match of its own
    memory = MaxGramMemory(min_ngram_size=1)
    memory.add([3, 40])
    memory.add([3, 41])
    tokens, key, _ = scored_proposal(index, [1, 2, 3], 6, 0, max_gram_tracker(), (0.5, 0.035), memory=memory)
    assert key == (0, 3) and tokens == [4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize(
    "chances, costs, expected",
    [
        # One confident row among four: alone it would draft all 4 tokens (0.66 >= 0.2), but for the batch only its
        # first token pays: (4 + 0.9) / 1.2 = 4.08 beats k = 2 (5.71 / 1.4 = 4.08, just less) and k = 4 (3.94).
        ([[0.9, 0.81, 0.73, 0.66], [], [], []], (0.0, 0.2), 1),
        ([[0.9, 0.81, 0.73, 0.66], [], [], []], (0.0, 0.05), 4),  # (4 + 3.1) / 1.2 = 5.92 > 4
        # Every row confident: the whole drafts pay even at 0.2 per token: (4 + 4 * 3.1) / 1.8 = 9.1.
        ([[0.9, 0.81, 0.73, 0.66]] * 4, (0.0, 0.2), 4),
        # Two confident rows of four: their first two tokens pay, the rest does not: (4 + 2 * 1.71) / 1.4 = 5.3.
        ([[0.9, 0.81, 0.3, 0.1], [0.9, 0.81, 0.3, 0.1], [], []], (0.0, 0.2), 2),
        # A fixed cost of widening at all: one row's 0.5 does not pay for it, four rows' do.
        ([[0.5], [], [], []], (0.3, 0.01), 0),
        ([[0.5], [0.5], [0.5], [0.5]], (0.3, 0.01), 1),
        ([[], []], (0.0, 0.05), 0),  # no drafts
        ([], (0.0, 0.05), 0),  # no rows
        ([[0.5, 0.25]], (0.0, 0.5), 0),  # ties go to the shorter draft: 1.5 / 1.5 = 1
    ],
)
def test_batch_draft_length_maximises_the_batch_throughput(chances, costs, expected):
    assert batch_draft_length(chances, costs) == expected


def test_batch_draft_length_follows_a_curve_that_is_not_smooth():
    """Priced on a timed curve (`ForwardCostModel.seconds`), a width that costs less than a narrower one is taken:
    on the line (`pass_cost` of the tuple) 3 draft tokens per row do not pay, where the 4-token pass dips they do."""
    chances = [[0.5, 0.25, 0.125]] * 4
    line = pass_cost((0.3, 0.3))
    assert [line(1), line(2), line(4)] == [1.0, pytest.approx(1.6), pytest.approx(2.2)]
    assert batch_draft_length(chances, line) == batch_draft_length(chances, (0.3, 0.3)) == 0
    dip = {1: 1.0, 2: 1.6, 3: 1.9, 4: 0.9}
    assert batch_draft_length(chances, lambda n: dip[n]) == 3
    assert packed_draft_lengths(chances, lambda n: 1.0 if n == 1 else 2.0) == [0, 0, 0, 0]
    assert packed_draft_lengths(chances, lambda n: 1.0) == [3, 3, 3, 3]  # free tokens: all of them


def test_straggler_weights_follow_the_remaining_budget():
    # Rows alike: weight 1 each, the plain sum over rows.
    assert straggler_weights([50, 50, 50, 50]) == pytest.approx([1.0] * 4)
    # One row 4 tokens behind the others (scale 4): e^1 against 1 each, over a total of e + 3, times 4 rows.
    e = math.e
    assert straggler_weights([60, 56, 56, 56]) == pytest.approx([4 * e / (e + 3)] + [4 / (e + 3)] * 3)
    weights = straggler_weights([100, 10, 3])
    assert sum(weights) == pytest.approx(3) and weights[0] == pytest.approx(3) and weights[1] < 1e-9
    assert straggler_weights([]) == []
    with pytest.raises(ValueError, match="scale must be a positive number of tokens, got 0"):
        straggler_weights([1, 2], scale=0)


def test_a_row_ahead_of_the_batch_does_not_widen_its_pass():
    """With every row weighted alike a confident row widens the padded pass (its 4 tokens pay: 5.92 > 4 tokens per
    unit); 40 tokens ahead of the others it ends the batch no sooner, and nothing is drafted. The row behind drafts
    for the whole batch: its first token, worth about 4 rows' (4 * 0.5 = 2), pays where the plain sum (0.5) did not."""
    confident_first = [[0.9, 0.81, 0.73, 0.66], [], [], []]
    assert batch_draft_length(confident_first, (0.0, 0.05)) == 4
    ahead = straggler_weights([10, 50, 50, 50])
    assert batch_draft_length(confident_first, (0.0, 0.05), ahead) == 0
    assert packed_draft_lengths(confident_first, (0.0, 0.05), ahead) == [0, 0, 0, 0]
    unsure_behind = [[0.5], [], [], []]
    behind = straggler_weights([90, 10, 10, 10])
    assert batch_draft_length(unsure_behind, (0.3, 0.01)) == 0
    assert batch_draft_length(unsure_behind, (0.3, 0.01), behind) == 1
    assert packed_draft_lengths(unsure_behind, (0.3, 0.01), behind) == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="weights has 2 entries for 4 rows"):
        batch_draft_length(confident_first, (0.0, 0.05), [1.0, 1.0])


def test_scored_proposal_uncut_keeps_the_whole_proposal_with_its_chances():
    from hf_cascade.max_gram import MaxGramIndex

    index = MaxGramIndex(8, 1)
    index.extend([1, 2, 3, 4, 5, 6, 7, 1, 2])
    tracker = max_gram_tracker()
    rate = tracker.rate((0, 2))  # the prior of a 2-token match
    tokens, key, chances = scored_proposal(index, [1, 2], 5, 0, tracker, (0.0, 0.0))
    assert tokens == [3, 4, 5, 6, 7] and key == (0, 2)
    assert chances == pytest.approx([rate**k for k in range(1, 6)])
    # Cut alone at a steep token cost, the same proposal keeps only the tokens that pay (rate ** k >= 0.3).
    cut, cut_key, cut_chances = scored_proposal(index, [1, 2], 5, 0, tracker, (0.0, 0.3))
    assert cut == tokens[: len(cut_chances)] and len(cut) == sum(rate**k >= 0.3 for k in range(1, 6)) < 5
    assert cut_key == key  # the same match, whatever the cut
    assert scored_proposal(index, [1, 2], 5, 0, None, (0.0, 0.3))[2] is None  # fixed length: no chances
