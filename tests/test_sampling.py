"""The sampled output follows the target's exact distribution, whatever the drafts and the lenience inside.

The target's distribution over the next 3 tokens is enumerated exactly (tiny vocabulary, with the same logits
processors), then compared with cascade samples by a chi-square test. The same test must reject samples drawn from a
drafter's distribution, so it has the power to catch a sampler that leaks drafter probabilities.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from transformers import LlamaForCausalLM

import hf_cascade
from hf_cascade import cpu
from hf_cascade.verification import sampling_review

from conftest import build, llama_config, nonfinite_copy, perturbed

V = 6
NEW = 3
SAMPLES = 1500
SAMPLING = dict(do_sample=True, temperature=0.9, top_k=5)


@pytest.fixture(scope="module")
def tiny():
    config = llama_config(vocab_size=V, eos_token_id=None, bos_token_id=None)
    target = build(LlamaForCausalLM, config, seed=11, logit_scale=20.0)
    return target, perturbed(target, 0.8, 12), perturbed(target, 1.5, 13)


PROMPT = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]])


def exact_distribution(model, prompt: torch.Tensor = PROMPT) -> torch.Tensor:
    """P(x1, x2, x3 | prompt) under `model` with the SAMPLING processors, as a flat tensor over V**NEW outcomes."""
    joint = torch.zeros(V**NEW, dtype=torch.float64)
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def next_probs(prefix: tuple[int, ...]) -> torch.Tensor:
        if prefix not in cache:
            ids = torch.cat([prompt, torch.tensor([prefix], dtype=torch.long).view(1, -1)], dim=1)
            out = model.generate(
                ids, max_new_tokens=1, output_scores=True, return_dict_in_generate=True, pad_token_id=0, **SAMPLING
            )
            cache[prefix] = torch.softmax(out.scores[0][0].double(), dim=-1)
        return cache[prefix]

    for i, outcome in enumerate(itertools.product(range(V), repeat=NEW)):
        p = 1.0
        for t in range(NEW):
            p *= float(next_probs(outcome[:t])[outcome[t]])
        joint[i] = p
    return joint


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit, merging outcomes with expected count < 5 into one cell."""
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    if bool((obs[exp == 0] > 0).any()):
        return 0.0
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), stat / 2.0))


def outcome_index(tokens: list[int]) -> int:
    index = 0
    for t in tokens:
        index = index * V + t
    return index


CASES = {
    # Target reviews Max-Gram's one-hot drafts directly.
    "target+max_gram": (0, 1.0, [[3]]),
    # A very lenient drafter over Max-Gram: what it emits is far from its own p, so handing p (instead of the
    # distribution it really emitted) to the target would bias the output. This case catches that bug.
    "assistant+max_gram+lenience10": (1, 10.0, [[2, 1], [0, 3]]),
    # Two neural levels and Max-Gram, horizontal and vertical cascade.
    "two_assistants+max_gram+lenience3": (2, 3.0, [[2, 0, 1], [0, 2, 1], [0, 0, 2]]),
    # Neural drafts cut at the first unsure token: a draft length that depends on the drafted tokens.
    "two_assistants+max_gram+confidence0.6": (2, 1.0, [[2, 0, 1], [0, 2, 1], [0, 0, 2]], 0.6),
}


def cascade_counts(target, drafters, config, samples: int = SAMPLES) -> torch.Tensor:
    """Outcome counts of `samples` sampled cascade calls (`NEW` tokens after `PROMPT`)."""
    counts = torch.zeros(V**NEW, dtype=torch.float64)
    for _ in range(samples):
        out = target.generate(
            PROMPT,
            max_new_tokens=NEW,
            custom_generate=hf_cascade.generate,
            assistant_models=drafters,
            cascade_config=config,
            pad_token_id=0,
            **SAMPLING,
        )
        counts[outcome_index(out[0, PROMPT.shape[1] :].tolist())] += 1
    return counts


@pytest.mark.parametrize("case", list(CASES))
def test_cascade_samples_follow_target_distribution(tiny, case):
    n_assistants, lenience, k_matrix, *threshold = CASES[case]
    target, d1, d2 = tiny
    p = exact_distribution(target)
    q1 = exact_distribution(d1)
    assert 0.5 * (p - q1).abs().sum() > 0.2, "the drafter must differ clearly from the target for this test to bite"

    torch.manual_seed(0)
    # Fixed lengths, so every drafter drafts (the controller would skip drafters as large as the target); the same
    # test with the controller on is in test_controller.py.
    config = hf_cascade.CascadeConfig(
        k_matrix=k_matrix, lenience=lenience, confidence_threshold=sum(threshold), adaptive_drafters=False
    )
    counts = cascade_counts(target, [d1, d2][:n_assistants], config)
    assert chi_square_p_value(counts, p) > 1e-3

    # Power: the same test rejects samples drawn from the largest drafter instead of the target.
    drafter_counts = torch.bincount(torch.multinomial(q1, SAMPLES, replacement=True), minlength=V**NEW).double()
    assert chi_square_p_value(drafter_counts, p) < 1e-6


@pytest.mark.skipif(not cpu.onednn_linear_available(), reason="this torch build lacks oneDNN linear ops")
def test_samples_follow_target_distribution_with_a_packed_drafter(tiny):
    """`pack_drafters` (the default) changes the drafter's q by rounding during the call: the target's distribution
    must come out unchanged. float32 copies, since oneDNN does not pack the float64 models above."""
    target, d1, _ = (copy.deepcopy(m).to(torch.float32) for m in tiny)
    p = exact_distribution(target)
    torch.manual_seed(0)
    config = hf_cascade.CascadeConfig(k_matrix=[[2, 1], [0, 3]], lenience=10.0, adaptive_drafters=False)
    out = target.generate(
        PROMPT,
        max_new_tokens=NEW,
        custom_generate=hf_cascade.generate,
        assistant_models=[d1],
        cascade_config=config,
        return_dict_in_generate=True,
        pad_token_id=0,
        **SAMPLING,
    )
    assert out.cascade_stats.levels[1].packing == "packed" and out.cascade_stats.levels[1].drafted > 0
    assert chi_square_p_value(cascade_counts(target, [d1], config), p) > 1e-3


@pytest.mark.parametrize("fill", ["nan", "inf"])
def test_nonfinite_drafter_samples_follow_target_distribution(tiny, fill):
    """A drafter with NaN/inf logits neither crashes sampling nor biases it: its reviews are dropped and counted."""
    target, d1, _ = tiny
    bad = nonfinite_copy(target, fill)
    kwargs = dict(max_new_tokens=NEW, custom_generate=hf_cascade.generate, pad_token_id=0, **SAMPLING)
    torch.manual_seed(0)
    # Alone over Max-Gram: every level-0 draft is dropped. Fixed lengths: the controller would skip these drafters,
    # as large as the target, and never reach the broken one.
    config = hf_cascade.CascadeConfig(k_matrix=[[2, 1], [0, 3]], lenience=3.0, adaptive_drafters=False)
    out = target.generate(PROMPT, assistant_models=[bad], cascade_config=config, return_dict_in_generate=True, **kwargs)
    assert out.cascade_stats.levels[1].nonfinite_drafts > 0 and out.cascade_stats.levels[1].drafted == 0
    # Below a healthy drafter, which then drafts (and is reviewed leniently) on its own: 150 runs against the target.
    config = hf_cascade.CascadeConfig(k_matrix=[[1, 1, 0], [0, 1, 1], [0, 0, 2]], lenience=3.0, adaptive_drafters=False)
    out = target.generate(
        PROMPT, assistant_models=[d1, bad], cascade_config=config, return_dict_in_generate=True, **kwargs
    )
    assert out.cascade_stats.levels[2].nonfinite_drafts > 0 and out.cascade_stats.levels[1].drafted > 0
    counts = torch.zeros(V**NEW, dtype=torch.float64)
    for _ in range(150):
        out = target.generate(PROMPT, assistant_models=[d1, bad], cascade_config=config, **kwargs)
        counts[outcome_index(out[0, PROMPT.shape[1] :].tolist())] += 1
    assert chi_square_p_value(counts, exact_distribution(target)) > 1e-3


def test_sampling_review_rejects_a_nonfinite_q_row():
    """A draft whose q row is not a distribution is rejected for certain and replaced by a draw from p (exact)."""
    p = torch.softmax(torch.randn(3, V, generator=torch.Generator().manual_seed(5)), dim=-1)
    draft = torch.tensor([int(p[0].argmax()), int(p[1].argmax())])
    q = torch.nn.functional.one_hot(draft, V).float()
    q[1, 0] = float("nan")
    torch.manual_seed(0)
    for _ in range(50):
        n, nxt, emitted = sampling_review(p, draft, q, lenience=2.0, need_emitted_q=True)
        assert n <= 1  # the second token is never accepted
        if n == 1:
            torch.testing.assert_close(emitted[1], p[1])  # and what replaces it is drawn from p itself
            assert bool(torch.isfinite(emitted).all())


@pytest.mark.parametrize("lenience", [1.0, 2.5, 10.0])
@pytest.mark.parametrize("one_hot", [False, True], ids=["neural_q", "max_gram_q"])
def test_lenient_review_emits_the_distribution_it_declares(lenience, one_hot):
    """Draw x ~ q, review it: the emitted token must follow the `emitted_q` the review hands to the next level."""
    gen = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(2, V, generator=gen) * 2, dim=-1)
    q = torch.zeros(1, V)
    if one_hot:
        q[0, int(torch.argmin(p[0]))] = 1.0  # a deterministic draft the reviewer dislikes
    else:
        q[0] = torch.softmax(torch.randn(V, generator=gen) * 2, dim=-1)
    torch.manual_seed(4)
    counts = torch.zeros(V, dtype=torch.float64)
    declared = None
    for _ in range(4000):
        x = torch.multinomial(q[0], 1)
        n, nxt, emitted = sampling_review(p, x, q, lenience, need_emitted_q=True)
        counts[int(x) if n == 1 else nxt] += 1
        declared = emitted[0].double() if declared is None else declared
        torch.testing.assert_close(emitted[0].double(), declared)  # the same for every draw: a marginal
    torch.testing.assert_close(declared.sum(), torch.tensor(1.0, dtype=torch.float64))
    if lenience == 1.0:
        torch.testing.assert_close(declared, p[0].double())  # an exact review emits exactly p
    assert chi_square_p_value(counts, declared) > 1e-3
    if lenience > 1.0:
        assert chi_square_p_value(counts, p[0].double()) < 1e-6  # and a lenient one measurably does not emit p
