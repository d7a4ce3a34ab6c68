"""MaxGramMemory on literal token lists: frequency ranking, eviction, save/load, threads, errors."""

from __future__ import annotations

import copy
import pickle
import re
import sys
import threading
from pathlib import Path

import pytest
import torch

import hf_cascade
from hf_cascade import CascadeTypeError, CascadeValueError, MaxGramMemory

from conftest import VOCAB


def counts(memory: MaxGramMemory) -> dict:
    """The memory's index as n-gram -> {next token: count}."""
    return {key: {tok: entry[0] for tok, entry in followers.items()} for key, followers in memory._table.items()}


def rebuilt(memory: MaxGramMemory) -> dict:
    """`counts` of a fresh memory holding the same documents: what eviction must leave behind."""
    fresh = MaxGramMemory(max_ngram_size=memory.max_ngram_size, min_ngram_size=memory.min_ngram_size)
    for doc in memory.documents():
        fresh.add(doc)
    return counts(fresh)


def test_proposes_the_continuation_of_the_longest_match():
    memory = MaxGramMemory(min_ngram_size=1)
    memory.add([1, 2, 3, 4, 5, 6])
    assert memory.propose([9, 9, 3, 4], 3) == ([5, 6], 2)  # matches "3 4" (2 tokens); the copy runs out after 6
    assert memory.propose([7, 8], 3) == ([], 0)


def test_the_most_frequent_continuation_wins_and_ties_go_to_the_latest():
    memory = MaxGramMemory()
    memory.add([1, 2, 3, 10])
    memory.add([1, 2, 3, 11])
    memory.add([1, 2, 3, 11])
    assert memory.propose([5, 2, 3], 1) == ([11], 2)
    memory.add([1, 2, 3, 10])
    assert memory.propose([5, 2, 3], 1) == ([10], 2)  # 2 vs 2: the latest occurrence wins the tie


def test_a_longer_match_beats_a_more_frequent_shorter_one():
    memory = MaxGramMemory()
    for _ in range(3):
        memory.add([8, 3, 4, 20])
    memory.add([7, 3, 4, 21])
    assert memory.propose([7, 3, 4], 1) == ([21], 3)
    assert memory.propose([6, 3, 4], 1) == ([20], 2)


def test_min_ngram_size_ignores_single_token_matches():
    memory = MaxGramMemory(min_ngram_size=2)
    memory.add([1, 2, 3])
    assert memory.propose([9, 2], 2) == ([], 0)
    assert memory.propose([1, 2], 2) == ([3], 2)


def test_the_proposal_walks_on_through_its_own_tokens():
    memory = MaxGramMemory(min_ngram_size=1)
    memory.add([1, 2, 1, 2, 1, 2])
    assert memory.propose([1], 5) == ([2, 1, 2, 1, 2], 1)


def test_eviction_drops_the_oldest_documents_and_their_counts():
    memory = MaxGramMemory(max_tokens=8)
    memory.add([1, 2, 3, 4])
    memory.add([5, 6, 7, 8])
    assert memory.num_tokens == 8 and memory.num_documents == 2
    memory.add([9, 10, 11])
    assert memory.documents() == [[5, 6, 7, 8], [9, 10, 11]]
    assert memory.propose([1, 2], 2) == ([], 0)  # evicted
    assert memory.propose([5, 6], 2) == ([7, 8], 2)
    assert counts(memory) == rebuilt(memory)


def test_a_document_longer_than_the_memory_keeps_its_tail():
    memory = MaxGramMemory(max_tokens=3)
    memory.add([1, 2, 3, 4, 5])
    assert memory.documents() == [[3, 4, 5]]


def test_tensors_are_accepted():
    memory = MaxGramMemory(vocab_size=16)
    memory.add(torch.tensor([[1, 2, 3]]))
    memory.add(torch.tensor([4, 5, 6]))
    assert memory.documents() == [[1, 2, 3], [4, 5, 6]]


def test_save_and_load_round_trip(tmp_path):
    memory = MaxGramMemory(vocab_size=32, max_tokens=100, max_ngram_size=5, min_ngram_size=1)
    memory.add([1, 2, 3, 10])
    memory.add([1, 2, 3, 11, 12])
    memory.add([1, 2, 3, 11])
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    loaded = MaxGramMemory.load(path)
    assert loaded.documents() == memory.documents()
    assert (loaded.vocab_size, loaded.max_tokens, loaded.max_ngram_size, loaded.min_ngram_size) == (32, 100, 5, 1)
    assert loaded.propose([2, 3], 2) == memory.propose([2, 3], 2) == ([11, 12], 2)
    assert counts(loaded) == counts(memory)


def test_copies_and_pickles_rebuild_the_index():
    memory = MaxGramMemory()
    memory.add([1, 2, 3, 4])
    for clone in (copy.deepcopy(memory), pickle.loads(pickle.dumps(memory))):
        assert clone.propose([1, 2], 2) == ([3, 4], 2)
        clone.add([1, 2, 9, 9])
        clone.add([1, 2, 9, 9])
    assert memory.propose([1, 2], 2) == ([3, 4], 2)  # the original is untouched


def test_concurrent_adds_and_proposals_do_not_corrupt_the_index():
    # Switch threads as often as possible, so that an unguarded dict update would interleave (without the lock this
    # test fails within a few runs: "dictionary changed size during iteration", counts that do not match).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        _hammer()
    finally:
        sys.setswitchinterval(interval)


def _hammer():
    memory = MaxGramMemory(max_tokens=2_000)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        try:
            for _ in range(150):
                memory.add(torch.randint(0, 50, (12,), generator=gen).tolist())
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def reader() -> None:
        try:
            for i in range(600):
                memory.propose([i % 50, (i * 7) % 50], 8)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert memory.num_tokens == sum(len(d) for d in memory.documents()) <= 2_000
    assert counts(memory) == rebuilt(memory)


def test_vocabulary_checks():
    memory = MaxGramMemory(vocab_size=10)
    with pytest.raises(CascadeValueError, match=r"token id 12, outside this memory's vocabulary of 10"):
        memory.add([1, 12])
    with pytest.raises(CascadeValueError, match=r"built for a vocabulary of 10 tokens but the target's has 96"):
        memory.check_vocab_size(96)
    memory.check_vocab_size(10)
    MaxGramMemory().check_vocab_size(96)  # no vocabulary recorded: nothing to check


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_tokens": 0}, CascadeValueError, r"max_tokens must be >= 1, got 0"),
        ({"max_tokens": 1.5}, CascadeTypeError, r"max_tokens must be an int, got 1.5"),
        ({"vocab_size": True}, CascadeTypeError, r"vocab_size must be an int"),
        ({"max_ngram_size": 65}, CascadeValueError, r"max_ngram_size must be <= 64"),
        ({"min_ngram_size": 4, "max_ngram_size": 3}, CascadeValueError, r"min_ngram_size \(4\) must not exceed"),
    ],
)
def test_invalid_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        MaxGramMemory(**kwargs)


def test_invalid_documents():
    memory = MaxGramMemory()
    with pytest.raises(CascadeTypeError, match=r"use add_texts\(texts, tokenizer\) for strings"):
        memory.add("hello")
    with pytest.raises(CascadeTypeError, match=r"integer token ids, got a tensor of dtype torch.float32"):
        memory.add(torch.ones(3))
    with pytest.raises(CascadeValueError, match=r"one sequence \(shape \(n,\) or \(1, n\)\), got shape \(2, 3\)"):
        memory.add(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(CascadeTypeError, match=r"wrap one text as \[text\]"):
        memory.add_texts("hello", tokenizer=None)


def test_load_errors(tmp_path):
    with pytest.raises(CascadeValueError, match=r"does not exist"):
        MaxGramMemory.load(tmp_path / "missing.safetensors")
    with pytest.raises(CascadeValueError, match=r"is a folder"):
        MaxGramMemory.load(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CascadeValueError, match=r"not a readable safetensors file"):
        MaxGramMemory.load(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"next_token": torch.zeros(3, dtype=torch.long)}, str(other))
    with pytest.raises(CascadeValueError, match=r"is not a Max-Gram memory"):
        MaxGramMemory.load(other)


# ---------------------------------------------------------------------------------------------- in generate


def _cascade(model, prompt, memory, assistants=(), max_new_tokens=30, **config):
    out = model.generate(
        prompt,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        custom_generate=hf_cascade.generate,
        assistant_models=list(assistants),
        cascade_config=hf_cascade.CascadeConfig(**config),
        max_gram_memory=memory,
        return_dict_in_generate=True,
    )
    return out.sequences, out.cascade_stats


def _fresh_prompt(seed: int, length: int = 12) -> torch.Tensor:
    """A prompt without repeats: the call's own text gives Max-Gram nothing to copy."""
    return torch.randperm(VOCAB - 2, generator=torch.Generator().manual_seed(seed))[:length][None] + 2


def test_memory_drafts_the_earlier_answer_and_the_output_stays_greedy(llama):
    prompt = _fresh_prompt(0)
    expected = llama.generate(prompt, max_new_tokens=30, do_sample=False)
    _, without = _cascade(llama, prompt, None)
    memory = MaxGramMemory(vocab_size=VOCAB)
    memory.add(expected[0].tolist())  # an earlier call that produced this very answer
    sequences, stats = _cascade(llama, prompt, memory)
    assert sequences.tolist() == expected.tolist()
    target, max_gram = stats.levels[0], stats.levels[-1]
    assert max_gram.accepted > without.levels[-1].accepted
    assert target.forward_passes < without.levels[0].forward_passes
    # The call's new tokens were added as a document of their own.
    assert memory.documents()[-1] == expected[0, prompt.shape[1] :].tolist()


def test_memory_with_a_neural_drafter_keeps_greedy_output(llama, llama_drafters):
    drafter = llama_drafters[1]
    memory = MaxGramMemory(vocab_size=VOCAB)
    prompt = _fresh_prompt(1)
    expected = llama.generate(prompt, max_new_tokens=16, do_sample=False)
    for _ in range(2):  # the second call drafts from the first call's output
        sequences, stats = _cascade(llama, prompt, memory, assistants=[drafter], max_new_tokens=16)
        assert sequences.tolist() == expected.tolist()
    assert memory.num_documents == 2 and stats.levels[-1].accepted > 0


def test_concurrent_generate_calls_share_one_memory(llama):
    memory = MaxGramMemory(vocab_size=VOCAB)
    prompts = [_fresh_prompt(seed) for seed in range(6)]
    expected = [llama.generate(p, max_new_tokens=16, do_sample=False).tolist() for p in prompts]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(2):
                results[i] = _cascade(llama, prompts[i], memory, max_new_tokens=16)[0].tolist()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[i] for i in range(6)] == expected
    assert memory.num_documents == 12
    assert counts(memory) == rebuilt(memory)


def test_generate_refuses_a_bad_memory(llama):
    prompt = _fresh_prompt(0)
    with pytest.raises(CascadeTypeError, match=r"max_gram_memory must be a hf_cascade.MaxGramMemory, got list"):
        _cascade(llama, prompt, [1, 2, 3])
    with pytest.raises(CascadeValueError, match=r"built for a vocabulary of 50 tokens but the target's has 96"):
        _cascade(llama, prompt, MaxGramMemory(vocab_size=50))
    with pytest.raises(CascadeValueError, match=r"CascadeConfig.use_max_gram is False"):
        _cascade(llama, prompt, MaxGramMemory(), assistants=[llama], use_max_gram=False)


def test_docs_memory_page_runs_as_written(tmp_path, monkeypatch):
    page = (Path(__file__).resolve().parents[1] / "docs" / "memory.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0].replace("/tmp/memory.safetensors", "memory.safetensors"), "docs/memory.md", "exec"), {})
    assert MaxGramMemory.load(tmp_path / "memory.safetensors").num_documents == 3


def test_an_enabled_model_runs_the_cascade_when_only_a_memory_is_passed(llama):
    prompt = _fresh_prompt(2)
    memory = MaxGramMemory(vocab_size=VOCAB)
    hf_cascade.enable(llama)
    try:
        out = llama.generate(prompt, max_new_tokens=8, do_sample=False, max_gram_memory=memory)
    finally:
        hf_cascade.disable(llama)
    assert out.tolist() == llama.generate(prompt, max_new_tokens=8, do_sample=False).tolist()
    assert memory.num_documents == 1  # the cascade ran and added its output


# ------------------------------------------------------------------------------------------ scores, stats, tracker
def test_proposals_carry_the_share_of_each_follower():
    memory = MaxGramMemory(min_ngram_size=1)
    for doc in ([1, 2, 3, 7], [1, 2, 3, 7], [1, 2, 4, 8]):
        memory.add(doc)
    # "1 2" was followed by 3 twice and by 4 once; "1 2 3" always by 7.
    assert memory.propose_scored([1, 2], 2) == ([3, 7], 2, [pytest.approx(2 / 3), 1.0])
    assert memory.propose([1, 2], 2) == ([3, 7], 2)
    assert memory.propose_scored([9, 9], 3) == ([], 0, [])


def test_memory_drafts_are_counted_apart_from_the_calls_own(llama):
    prompt = _fresh_prompt(3)
    expected = llama.generate(prompt, max_new_tokens=30, do_sample=False)
    _, without = _cascade(llama, prompt, None)
    assert without.levels[-1].memory_drafted == 0 and without.levels[-1].memory_acceptance_rate is None
    memory = MaxGramMemory(vocab_size=VOCAB)
    memory.add(expected[0, prompt.shape[1] :].tolist())
    _, stats = _cascade(llama, prompt, memory)
    max_gram = stats.levels[-1]
    assert 0 < max_gram.memory_accepted <= max_gram.memory_drafted <= max_gram.drafted
    assert max_gram.memory_accepted <= max_gram.accepted
    level = stats.to_dict()["levels"][-1]
    assert level["memory_drafted"] == max_gram.memory_drafted
    assert level["memory_acceptance_rate"] == pytest.approx(max_gram.memory_accepted / max_gram.memory_drafted)
    assert f"{max_gram.memory_drafted} of the drafted tokens came from max_gram_memory" in stats.summary()


def test_the_acceptance_record_carries_over_to_the_next_call(llama):
    # Configured costs, not timed ones: whether the second call drafts at all must not depend on how fast this
    # machine ran the session model's earlier passes (timings outlive calls, `cost.FORWARD_SECONDS_ATTR`).
    fixed_costs = {"max_gram": {"measure_cost": False}}
    memory = MaxGramMemory(vocab_size=VOCAB)
    assert memory.tracker._counts == {}
    _cascade(llama, _fresh_prompt(4), memory, max_new_tokens=16, **fixed_costs)
    record = {key: list(value) for key, value in memory.tracker._counts.items()}
    assert record  # the call's reviews were recorded in the memory's tracker, not in a throwaway one
    twin = copy.deepcopy(memory)
    assert twin.tracker is not memory.tracker and twin.tracker._counts == memory.tracker._counts
    assert pickle.loads(pickle.dumps(memory)).tracker._counts == memory.tracker._counts
    _cascade(llama, _fresh_prompt(5), memory, max_new_tokens=16, **fixed_costs)
    assert memory.tracker._counts != record  # the second call went on from the first call's record
    memory.clear()
    assert memory.tracker._counts == {}
