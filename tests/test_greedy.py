"""Greedy output is identical, token for token, to the target's own greedy `generate`.

Drafters that always accept (exact copies), always reject (rolled copies) and agree partly (perturbed copies), with
0, 1 and 2 neural drafters, Max-Gram on and off, default and custom k-matrices and several lenience values.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StoppingCriteria, T5ForConditionalGeneration

import hf_cascade
from hf_cascade.cascade import DraftBuffer, DraftedPosition, first_below, token_probabilities

from conftest import nonfinite_copy, perturbed, rolled_copy

NEW = 40


def cascade(target, ids, assistants, **kwargs):
    kwargs.setdefault("cascade_config", fixed_config())
    return target.generate(
        ids, do_sample=False, custom_generate=hf_cascade.generate, assistant_models=assistants, **kwargs
    )


def fixed_config(**fields):
    """A `CascadeConfig` with fixed draft lengths: the drafters of these tests are as large as the target, so the
    draft-length controller would skip them and leave the paths under test unexercised (the controller's own greedy
    identity tests are in `test_controller.py`, and `test_llama_greedy_identical` runs with it too)."""
    return hf_cascade.CascadeConfig(**{"adaptive_drafters": False, **fields})


def plain(target, ids, **kwargs):
    return target.generate(ids, do_sample=False, **kwargs)


DRAFTER_SETS = {
    "none": [],
    "exact": ["exact"],
    "partial": ["partial"],
    "reject": ["reject"],
    "exact+partial": ["exact", "partial"],
    "partial+reject": ["partial", "reject"],
}


@pytest.mark.parametrize("drafters", list(DRAFTER_SETS))
@pytest.mark.parametrize("use_max_gram", [True, False])
@pytest.mark.parametrize("lenience", [1.0, 3.0])
@pytest.mark.parametrize("adaptive", [False, True])
def test_llama_greedy_identical(llama, llama_drafters, prompt, drafters, use_max_gram, lenience, adaptive):
    if not DRAFTER_SETS[drafters] and not use_max_gram:
        pytest.skip("no drafter at all is an error, tested in test_errors.py")
    by_name = dict(zip(["exact", "partial", "reject"], llama_drafters, strict=True))
    assistants = [by_name[name] for name in DRAFTER_SETS[drafters]]
    config = hf_cascade.CascadeConfig(use_max_gram=use_max_gram, lenience=lenience, adaptive_drafters=adaptive)
    out = cascade(llama, prompt, assistants, cascade_config=config, max_new_tokens=NEW)
    assert torch.equal(out, plain(llama, prompt, max_new_tokens=NEW))


@pytest.mark.parametrize("drafters", ["exact", "partial", "exact+partial", "partial+reject"])
@pytest.mark.parametrize("threshold", [0.3, 0.9])
def test_confidence_threshold_greedy_identical(llama, llama_drafters, prompt, drafters, threshold):
    by_name = dict(zip(["exact", "partial", "reject"], llama_drafters, strict=True))
    assistants = [by_name[name] for name in DRAFTER_SETS[drafters]]
    config = fixed_config(k_matrix=None, confidence_threshold=threshold)
    out = cascade(llama, prompt, assistants, cascade_config=config, max_new_tokens=NEW, return_dict_in_generate=True)
    assert torch.equal(out.sequences, plain(llama, prompt, max_new_tokens=NEW))


def test_confidence_threshold_stops_drafts_early(llama, llama_drafters, prompt):
    """A threshold no token reaches ends every neural segment after its first token: a 1-token draft per review."""
    _, partial, _ = llama_drafters
    fixed = dict(k_matrix=[[4, 0], [0, 3]], adaptive_drafters=False)
    always = hf_cascade.CascadeConfig(**fixed, confidence_threshold=0.0)
    unsure = hf_cascade.CascadeConfig(**fixed, confidence_threshold=0.999)
    kwargs = dict(max_new_tokens=NEW, return_dict_in_generate=True)
    full = cascade(llama, prompt, [partial], cascade_config=always, **kwargs)
    short = cascade(llama, prompt, [partial], cascade_config=unsure, **kwargs)
    assert torch.equal(full.sequences, short.sequences)
    drafted = short.cascade_stats.levels[1].drafted  # assistant_0's tokens reviewed by the target
    assert drafted == short.cascade_stats.target.forward_passes - 1  # one per target review (not the prefill)
    assert full.cascade_stats.levels[1].drafted > drafted


def test_token_probabilities_and_first_below():
    scores = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    assert token_probabilities(scores, [0, 2]) == pytest.approx([0.7, 0.8])
    assert token_probabilities(scores, [1, 0]) == pytest.approx([0.2, 0.1])
    assert token_probabilities(scores[:0], []) == []
    assert first_below([0.9, None, 0.3, 0.1], 0.5) == 2  # None (not computed) is never below
    assert first_below([0.9, None], 0.5) is None


def test_first_unsure():
    def first_unsure(scores, tokens, threshold):  # how the cascade cuts at `confidence_threshold`
        return first_below(token_probabilities(scores, tokens), threshold)

    scores = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    assert first_unsure(scores, [0, 0, 2], 0.4) is None
    assert first_unsure(scores, [0, 1, 2], 0.4) == 1
    assert first_unsure(scores, [2, 1, 2], 0.4) == 0
    assert first_unsure(scores, [0, 0, 2], 0.6) == 1
    assert first_unsure(scores[:0], [], 0.5) is None


def test_draft_buffer_keeps_one_record_per_draft_token():
    buffer = DraftBuffer.from_prompt([7, 8])
    q = torch.tensor([0.25, 0.75, 0.0])
    buffer.append([1, 2], [q, None], owner=1, tag=(1, 2))
    buffer.append([0], [None], owner=0)
    assert (buffer.ids, buffer.committed, len(buffer)) == ([7, 8, 1, 2, 0], 2, 5)
    assert buffer.drafted(3) == [DraftedPosition(None, 1, (1, 2)), DraftedPosition(None, 0)]
    assert buffer.ends_with(frozenset({0})) and not buffer.ends_with(frozenset({2}))
    dense = buffer.dense_q(2, 5, vocab_size=3, device=torch.device("cpu"))
    assert torch.equal(dense, torch.stack([q, torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])]))
    buffer.truncate(3)  # a review rejected the last two tokens
    assert buffer.ids == [7, 8, 1] and len(buffer.drafted(2)) == 1
    buffer.assign(2, [None], owner=0, confidences=[0.75])  # the reviewer kept token 1: now its own contribution
    assert buffer.drafted(2) == [DraftedPosition(None, 0, None, 0.75)]
    buffer.commit([5])
    assert (buffer.ids, buffer.committed, buffer.drafted(5)) == ([7, 8, 1, 5], 4, [])
    assert not buffer.ends_with(frozenset({5}))  # committed tokens are no draft
    with pytest.raises(ValueError, match="DraftBuffer.append got 2 tokens but 1 q rows"):
        buffer.append([1, 2], [None], owner=0)
    with pytest.raises(ValueError, match="DraftBuffer.assign got 2 q rows for 0 tokens"):
        buffer.assign(4, [None, None], owner=0)


@pytest.mark.parametrize(
    "k_matrix",
    [[[1, 1, 1], [0, 1, 1], [0, 0, 1]], [[5, 0, 10], [0, 3, 4], [0, 0, 9]], [[0, 2, 0], [0, 0, 3], [0, 0, 2]]],
    ids=["ones", "reference_like", "skip_levels"],
)
def test_custom_k_matrices(llama, llama_drafters, prompt, k_matrix):
    exact, partial, _ = llama_drafters
    config = fixed_config(k_matrix=k_matrix, lenience=2.0)
    out = cascade(llama, prompt, [partial, exact], cascade_config=config, max_new_tokens=NEW)
    assert torch.equal(out, plain(llama, prompt, max_new_tokens=NEW))


def test_stats_exact_drafter_accepts_everything(llama, llama_drafters, prompt):
    exact, _, _ = llama_drafters
    config = fixed_config(use_max_gram=False, k_matrix=[[5]])
    out = cascade(llama, prompt, [exact], cascade_config=config, max_new_tokens=NEW, return_dict_in_generate=True)
    stats = out.cascade_stats
    target, assistant = stats.levels
    assert (target.name, assistant.name) == ("target", "assistant_0")
    assert stats.new_tokens == out.sequences.shape[1] - prompt.shape[1] == NEW
    assert assistant.drafted > 0 and assistant.accepted == assistant.drafted
    # Five accepted draft tokens plus the bonus token per target forward (the last round may be cut by max length).
    assert target.forward_passes == -(-NEW // 6)
    assert stats.tokens_per_target_forward == pytest.approx(NEW / target.forward_passes)
    assert assistant.forward_passes == assistant.drafted  # it decodes alone: one pass per token, no Max-Gram


def test_stats_rejecting_drafter_accepts_nothing_at_target(llama, llama_drafters, prompt):
    _, _, reject = llama_drafters
    config = fixed_config(use_max_gram=False, k_matrix=[[3]])
    out = cascade(llama, prompt, [reject], cascade_config=config, max_new_tokens=20, return_dict_in_generate=True)
    target, assistant = out.cascade_stats.levels
    assert assistant.accepted == 0 and assistant.drafted > 0
    assert target.forward_passes == 20  # one token per target forward: the cascade degrades to plain decoding
    assert out.cascade_stats.to_dict()["levels"][1]["acceptance_rate"] == 0.0


# Drafter lists: "bad" is the broken drafter; the bool says whether Max-Gram is at the bottom.
NONFINITE_LAYOUTS = {
    "bad_alone": (["bad"], False),  # decodes token by token: every draft is dropped
    "bad_over_max_gram": (["bad"], True),  # reviews Max-Gram's drafts
    "partial_over_bad": (["partial", "bad"], True),  # a healthy drafter above the broken one
    "bad_over_partial": (["bad", "partial"], True),  # the broken drafter reviews a healthy one
}


@pytest.mark.parametrize("fill", ["nan", "inf"])
@pytest.mark.parametrize("layout", list(NONFINITE_LAYOUTS))
def test_nonfinite_drafter_greedy_identical(llama, llama_drafters, prompt, fill, layout):
    """A drafter with NaN/inf logits costs speed, never correctness: its reviews are dropped and counted."""
    names, use_max_gram = NONFINITE_LAYOUTS[layout]
    pool = {"bad": nonfinite_copy(llama, fill), "partial": llama_drafters[1]}
    config = fixed_config(use_max_gram=use_max_gram, lenience=3.0)
    out = cascade(
        llama, prompt, [pool[n] for n in names], cascade_config=config, max_new_tokens=20, return_dict_in_generate=True
    )
    assert torch.equal(out.sequences, plain(llama, prompt, max_new_tokens=20))
    stats = out.cascade_stats
    bad = stats.levels[1 + names.index("bad")]
    assert bad.nonfinite_drafts > 0 and bad.drafted == 0  # nothing it emitted reached a review
    assert stats.to_dict()["levels"][1 + names.index("bad")]["nonfinite_drafts"] == bad.nonfinite_drafts
    assert f"{bad.name}: {bad.nonfinite_drafts} review(s) dropped for non-finite scores" in stats.summary()
    assert all(level.nonfinite_drafts == 0 for level in stats.levels if level is not bad)


def test_max_gram_feeds_the_smallest_drafter(llama, llama_drafters, prompt):
    exact, _, _ = llama_drafters
    out = cascade(llama, prompt, [exact], max_new_tokens=NEW, return_dict_in_generate=True)
    target, assistant, max_gram = out.cascade_stats.levels
    assert max_gram.name == "max_gram" and max_gram.propose_calls > 0 and max_gram.drafted > 0
    # The assistant never decodes alone: it only reviews Max-Gram drafts, so it needs fewer passes than tokens.
    assert assistant.forward_passes < assistant.drafted + max_gram.accepted


@pytest.mark.parametrize("max_new_tokens", [1, 2, 7, 33])
def test_max_new_tokens_exact(llama, llama_drafters, prompt, max_new_tokens):
    _, partial, _ = llama_drafters
    out = cascade(llama, prompt, [partial], max_new_tokens=max_new_tokens)
    assert out.shape[1] == prompt.shape[1] + max_new_tokens
    assert torch.equal(out, plain(llama, prompt, max_new_tokens=max_new_tokens))


def test_max_length_exact(llama, prompt):
    out = cascade(llama, prompt, [], max_length=prompt.shape[1] + 9)
    assert torch.equal(out, plain(llama, prompt, max_length=prompt.shape[1] + 9))


def _eos_from_reference(llama, prompt):
    ref = plain(llama, prompt, max_new_tokens=NEW)[0, prompt.shape[1] :].tolist()
    # A token that first appears mid-way through the greedy output plays EOS.
    for i, tok in enumerate(ref[5:], start=5):
        if tok not in ref[:i]:
            return tok
    pytest.skip("the greedy continuation has no fresh token to use as EOS")


@pytest.mark.parametrize("drafters", [[], ["exact"], ["partial", "exact"]])
def test_stops_at_eos_and_nothing_after(llama, llama_drafters, prompt, drafters):
    eos = _eos_from_reference(llama, prompt)
    by_name = {"exact": llama_drafters[0], "partial": llama_drafters[1]}
    out = cascade(llama, prompt, [by_name[d] for d in drafters], max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
    ref = plain(llama, prompt, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out, ref)
    assert out[0, -1].item() == eos and (out[0, prompt.shape[1] :] == eos).sum() == 1


class StopAfterToken(StoppingCriteria):
    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def test_user_stopping_criteria_cut_mid_draft(llama, llama_drafters, prompt):
    ref_full = plain(llama, prompt, max_new_tokens=NEW)[0, prompt.shape[1] :].tolist()
    stop_token = ref_full[12]
    criteria = [StopAfterToken(stop_token)]
    out = cascade(llama, prompt, [llama_drafters[0]], max_new_tokens=NEW, stopping_criteria=criteria)
    ref = plain(llama, prompt, max_new_tokens=NEW, stopping_criteria=criteria)
    assert torch.equal(out, ref) and out.shape[1] < prompt.shape[1] + NEW


@pytest.mark.parametrize(
    "processing",
    [dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=2), dict(min_new_tokens=10, eos_token_id=5)],
    ids=["repetition_penalty", "no_repeat_ngram", "min_new_tokens"],
)
def test_logits_processors_honoured(llama, llama_drafters, prompt, processing):
    out = cascade(llama, prompt, [llama_drafters[1]], max_new_tokens=NEW, pad_token_id=0, **processing)
    assert torch.equal(out, plain(llama, prompt, max_new_tokens=NEW, pad_token_id=0, **processing))


def test_output_scores_and_logits_match_plain(llama, llama_drafters, prompt):
    kwargs = dict(max_new_tokens=12, return_dict_in_generate=True, output_scores=True, output_logits=True)
    out = cascade(llama, prompt, [llama_drafters[1]], **kwargs)
    ref = plain(llama, prompt, **kwargs)
    assert torch.equal(out.sequences, ref.sequences)
    assert len(out.scores) == len(ref.scores) == len(out.logits) == 12
    for mine, theirs in zip(out.scores + out.logits, ref.scores + ref.logits, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)


def test_drafter_in_another_dtype(llama, prompt):
    drafter = perturbed(llama, 0.3, 5).to(torch.float32)
    out = cascade(llama, prompt, [drafter], max_new_tokens=NEW)
    assert torch.equal(out, plain(llama, prompt, max_new_tokens=NEW))


def test_fp32_target(llama, prompt):
    target = perturbed(llama, 0.0, 0).to(torch.float32)
    with torch.no_grad():
        target.get_output_embeddings().weight.mul_(20)  # wide logit gaps: no near-ties for fp32 rounding to flip
    drafter = perturbed(target, 0.3, 9)
    out = cascade(target, prompt, [drafter], max_new_tokens=NEW)
    assert torch.equal(out, plain(target, prompt, max_new_tokens=NEW))


@pytest.mark.parametrize("model_name", ["gpt2", "qwen2"])
@pytest.mark.parametrize("drafters", [[], ["partial"], ["exact", "reject"]])
def test_other_decoder_architectures(request, prompt, model_name, drafters):
    target = request.getfixturevalue(model_name)
    pool = {"exact": perturbed(target, 0.0, 1), "partial": perturbed(target, 0.3, 2)}
    if "reject" in drafters:
        pool["reject"] = perturbed(target, 2.0, 3)  # a heavily perturbed copy: almost always wrong
    out = cascade(
        target,
        prompt,
        [pool[d] for d in drafters],
        max_new_tokens=NEW,
        cascade_config={"lenience": 2.0, "adaptive_drafters": False},
    )
    assert torch.equal(out, plain(target, prompt, max_new_tokens=NEW))


@pytest.mark.parametrize("drafters", [[], ["partial"], ["exact", "partial"]])
@pytest.mark.parametrize("use_max_gram", [True, False])
def test_encoder_decoder_t5(t5, prompt, drafters, use_max_gram):
    if not drafters and not use_max_gram:
        pytest.skip("no drafter")
    pool = {"exact": perturbed(t5, 0.0, 1), "partial": perturbed(t5, 0.3, 2)}
    config = fixed_config(use_max_gram=use_max_gram, lenience=2.0)
    out = t5.generate(
        prompt,
        do_sample=False,
        max_new_tokens=30,
        custom_generate=hf_cascade.generate,
        assistant_models=[pool[d] for d in drafters],
        cascade_config=config,
    )
    assert torch.equal(out, t5.generate(prompt, do_sample=False, max_new_tokens=30))


class CopyingT5(T5ForConditionalGeneration):
    """A T5 whose greedy choice after decoder token `t` is `SUCCESSOR[t]`: it copies the source below."""

    SUCCESSOR = {0: 5, **{t: t + 1 for t in range(5, 12)}, 12: 5}

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        inputs = kwargs["decoder_input_ids"]
        bonus = torch.zeros_like(out.logits)
        nxt = inputs.cpu().apply_(lambda t: self.SUCCESSOR.get(t, 1)).to(inputs.device)
        bonus.scatter_(-1, nxt[..., None], 100.0)
        out.logits = out.logits + bonus
        return out


def test_t5_max_gram_copies_from_the_encoder_input(t5):
    copier = CopyingT5(t5.config).eval().to(t5.dtype)
    copier.load_state_dict(t5.state_dict())
    source = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12] * 3])
    new = 8  # 5 .. 12: no token repeats in the output, so the output itself offers Max-Gram nothing to copy
    out = copier.generate(
        source, do_sample=False, max_new_tokens=new, custom_generate=hf_cascade.generate, return_dict_in_generate=True
    )
    expected = copier.generate(source, do_sample=False, max_new_tokens=new)
    assert torch.equal(out.sequences, expected)
    assert expected[0, 1:].tolist() == [5, 6, 7, 8, 9, 10, 11, 12]
    target, max_gram = out.cascade_stats.levels
    # Every token after 5 continues the encoder input's 5, 6, ...: accepted Max-Gram drafts can only come from there.
    assert max_gram.accepted >= new // 2 and max_gram.accepted == max_gram.drafted
    assert target.forward_passes < new


def test_reject_drafter_is_really_always_wrong(llama, prompt):
    rolled = rolled_copy(llama)
    ref = plain(llama, prompt, max_new_tokens=10)
    drafted = plain(rolled, prompt, max_new_tokens=1)
    assert drafted[0, -1] != ref[0, prompt.shape[1]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_greedy_identical_on_gpu(llama, llama_drafters, prompt):
    target = perturbed(llama, 0.0, 0).cuda()
    drafters = [perturbed(llama, 0.3, 2).cuda()]
    ids = prompt.cuda()
    out = cascade(target, ids, drafters, max_new_tokens=NEW, return_dict_in_generate=True)
    assert out.sequences.device.type == "cuda"
    assert torch.equal(out.sequences, plain(target, ids, max_new_tokens=NEW))
    assert out.cache.layers[0].keys.device.type == "cuda"


# ---------------------------------------------------------------- the returned cache (reused for a follow-up turn)
def assert_same_cache(mine, theirs, atol: float = 1e-9):
    """Same length and, layer by layer, the same keys/values (fp64, up to the noise of multi-token forwards)."""
    assert mine.get_seq_length() == theirs.get_seq_length()
    mine_layers = getattr(mine, "self_attention_cache", mine).layers
    their_layers = getattr(theirs, "self_attention_cache", theirs).layers
    for a, b in zip(mine_layers, their_layers, strict=True):
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            assert x.shape == y.shape
            torch.testing.assert_close(x.double(), y.double(), rtol=0, atol=atol)
        assert getattr(a, "record_past", False) == getattr(b, "record_past", False)


def _stop_kwargs(llama, prompt, stop: str) -> dict:
    """generate kwargs that end the sequence mid-draft at an EOS or by a user criterion, or at max_length.

    Fixed Max-Gram costs (not timed ones) keep the draft lengths, hence what the last draft leaves behind, the same
    from run to run; with them both EOS and the criterion stop inside a longer draft.
    """
    token = _eos_from_reference(llama, prompt)
    kwargs = dict(max_new_tokens=NEW, cascade_config=fixed_config(max_gram={"measure_cost": False}))
    if stop == "eos":
        return dict(kwargs, eos_token_id=token, pad_token_id=0)
    if stop == "max_length":  # the last draft always fits exactly: a guard against cutting too much
        return dict(kwargs, max_new_tokens=None, max_length=prompt.shape[1] + 13)
    return dict(kwargs, stopping_criteria=[StopAfterToken(token)])


def _plain_kwargs(kwargs: dict) -> dict:
    return {key: value for key, value in kwargs.items() if key != "cascade_config"}


@pytest.mark.parametrize("drafters", [[], ["partial"]], ids=["max_gram", "drafter+max_gram"])
@pytest.mark.parametrize("stop", ["eos", "max_length", "criterion"])
def test_returned_cache_equals_plain_generate(llama, llama_drafters, prompt, drafters, stop):
    """Regression: the cache came back holding the rejected tail of the last draft (28 states for 27 tokens)."""
    assistants = [llama_drafters[1] for _ in drafters]
    kwargs = dict(_stop_kwargs(llama, prompt, stop), return_dict_in_generate=True)
    out = cascade(llama, prompt, assistants, **kwargs)
    ref = plain(llama, prompt, **_plain_kwargs(kwargs))
    assert torch.equal(out.sequences, ref.sequences)
    assert out.cache.get_seq_length() == out.sequences.shape[1] - 1
    assert_same_cache(out.cache, ref.cache)


@pytest.mark.parametrize("drafters", [[], ["partial"]], ids=["max_gram", "drafter+max_gram"])
@pytest.mark.parametrize("stop", ["eos", "criterion"])
def test_follow_up_turn_reusing_the_returned_cache(llama, llama_drafters, prompt, drafters, stop):
    """A second turn fed the first turn's cache (`cache=`) continues exactly as without it."""
    assistants = [llama_drafters[1] for _ in drafters]
    kwargs = dict(_stop_kwargs(llama, prompt, stop), return_dict_in_generate=True)
    first = cascade(llama, prompt, assistants, **kwargs)
    first_plain = plain(llama, prompt, **_plain_kwargs(kwargs))
    follow_up = torch.cat([first.sequences, prompt[:, 3:9]], dim=1)  # the user's next message
    second = cascade(llama, follow_up, assistants, cache=first.cache, max_new_tokens=NEW)
    assert torch.equal(second, plain(llama, follow_up, max_new_tokens=NEW))
    assert torch.equal(second, plain(llama, follow_up, cache=first_plain.cache, max_new_tokens=NEW))


def test_caller_cache_left_as_plain_generate_leaves_it(llama, llama_drafters, prompt):
    """Without return_dict_in_generate the caller's own `cache=` object is what plain generate would leave too."""
    mine, theirs = DynamicCache(config=llama.config), DynamicCache(config=llama.config)
    kwargs = _stop_kwargs(llama, prompt, "criterion")
    out = cascade(llama, prompt, [llama_drafters[1]], cache=mine, **kwargs)
    assert torch.equal(out, plain(llama, prompt, cache=theirs, **_plain_kwargs(kwargs)))
    assert_same_cache(mine, theirs)
