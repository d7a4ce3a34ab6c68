"""The SuffixDecoding benchmark anchor: skipped cleanly without the optional module, exact when present."""

from __future__ import annotations

import pytest
import torch

from hf_cascade.benchmark import suffix


def test_availability_message_names_the_build_script(monkeypatch):
    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(suffix.importlib, "import_module", missing)
    assert "build_suffix.sh" in suffix.suffix_available()


@pytest.mark.skipif(suffix.suffix_available() is not None, reason="arctic_inference.suffix_decoding is not built")
def test_suffix_drafts_in_transformers_assisted_loop_match_greedy(llama):
    prompt = torch.tensor([[0, 5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]])
    anchor = suffix.SuffixAnchor()
    expected = llama.generate(prompt, max_new_tokens=24, do_sample=False)
    for _ in range(2):  # the second call also drafts from the first call's response (global tree)
        generator = anchor.candidate_generator(prompt, max_length=prompt.shape[1] + 24)
        drafted = []

        def spy(ids, original=generator.get_candidates, drafted=drafted, **kwargs):
            candidates, _ = original(ids, **kwargs)
            drafted.append(candidates.shape[1] - ids.shape[1])
            return candidates, None

        generator.get_candidates = spy
        out = suffix.generate_with_suffix(llama, generator, {"input_ids": prompt}, max_new_tokens=24, do_sample=False)
        assert sum(drafted) > 0, "SuffixDecoding proposed nothing: the test would not exercise verification"
        assert out.tolist() == expected.tolist()
    assert len(anchor.cache.cached_requests) == 2 and not anchor.cache.active_requests


@pytest.mark.skipif(suffix.suffix_available() is not None, reason="arctic_inference.suffix_decoding is not built")
def test_a_warm_start_memory_fills_the_global_tree_only():
    from hf_cascade import MaxGramMemory
    from hf_cascade.benchmark import parse_method
    from hf_cascade.benchmark.methods import MethodState

    start = MaxGramMemory(vocab_size=100)
    start.add([5, 6, 7, 8, 9, 10])
    start.add([11, 12, 13])
    state = MethodState(parse_method("suffix"), 100, start)
    assert len(state.anchor.cache.cached_requests) == 2 and not state.anchor.cache.active_requests
    # The remembered response is drafted from: a new request whose context ends in "6 7" speculates "8 9 10".
    state.anchor.cache.start_request("r", [1, 2])
    draft = state.anchor.cache.speculate("r", [1, 6, 7], max_spec_tokens=3, max_spec_factor=2.0, min_token_prob=0.1)
    assert list(draft.token_ids) == [8, 9, 10]
    assert len(MethodState(parse_method("suffix:local"), 100, start).anchor.cache.cached_requests) == 0
