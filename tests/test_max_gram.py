"""Max-Gram: the n-gram index, the bigram table and the standalone candidate generator, on literal token lists."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.candidate_generator import CandidateGenerator
from transformers.generation.logits_process import (
    LogitsProcessorList,
    NoBadWordsLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

import hf_cascade
from hf_cascade import BigramTable, MaxGramCandidateGenerator, MaxGramIndex

from conftest import VOCAB


def index_of(tokens, max_ngram_size=8, min_ngram_size=1, corpus=()):
    index = MaxGramIndex(max_ngram_size, min_ngram_size, corpus)
    index.extend(tokens)
    return index


def continuation(index, context):
    """The token right after the matched occurrence, and the match length (or None)."""
    hit = index.lookup(context)
    if hit is None:
        return None
    doc, start, n = hit
    return doc[start], n


# ---------------------------------------------------------------------------------------------------- MaxGramIndex


def test_longest_suffix_wins_over_shorter():
    # [1, 2, 3] occurred first (then 9); the shorter [2, 3] occurred more recently (then 8).
    seq = [1, 2, 3, 9, 5, 2, 3, 8, 1, 2, 3]
    assert continuation(index_of(seq), seq) == (9, 3)


def test_most_recent_occurrence_wins_among_equal_length():
    seq = [1, 5, 9, 1, 6, 8, 1]  # [1] was followed by 5, then by 6
    assert continuation(index_of(seq), seq) == (6, 1)


def test_min_ngram_size_respected():
    seq = [1, 5, 9, 1]  # only a 1-gram matches
    assert continuation(index_of(seq, min_ngram_size=1), seq) == (5, 1)
    assert index_of(seq, min_ngram_size=2).lookup(seq) is None
    assert index_of(seq, min_ngram_size=2).propose_with_match(seq, 4) == ([], 0)


def test_min_ngram_size_two_matches_bigram():
    seq = [4, 1, 5, 9, 4, 1]
    assert continuation(index_of(seq, min_ngram_size=2), seq) == (5, 2)


def test_no_match_returns_none_and_empty_proposal():
    seq = [1, 2, 3, 4]
    index = index_of(seq)
    assert index.lookup(seq) is None
    assert index.propose_with_match(seq, 5) == ([], 0)


def test_empty_index_and_empty_context():
    index = MaxGramIndex(4)
    assert index.lookup([]) is None
    assert index.lookup([1, 2]) is None
    assert index.propose_with_match([], 3) == ([], 0)


def test_last_token_has_no_continuation():
    # The suffix itself ends the sequence: it is not indexed until something follows it.
    index = index_of([7])
    assert index.lookup([7]) is None
    index.extend([3])
    assert continuation(index, [7]) == (3, 1)


def test_proposal_copies_continuation():
    seq = [10, 11, 12, 13, 14, 20, 10, 11]
    tokens, match_length = index_of(seq).propose_with_match(seq, 3)
    assert tokens == [12, 13, 14]
    assert match_length == 2


def test_proposal_continues_repeating_pattern():
    seq = [1, 2, 3, 1, 2, 3, 1, 2]
    index = index_of(seq)
    assert index.propose_with_match(seq, 1) == ([3], 5)
    assert index.propose_with_match(seq, 7) == ([3, 1, 2, 3, 1, 2, 3], 5)
    assert index.propose_with_match(seq, 12)[0] == [3, 1, 2] * 4


def test_proposal_re_lookup_when_copy_runs_out():
    # [5, 6] matches at the start, its copy [7, 8] hits the end of the document; then [7, 8] is looked up again.
    seq = [5, 6, 7, 8, 7, 8, 9, 5, 6]
    tokens, _ = index_of(seq).propose_with_match(seq, 6)
    assert tokens == [7, 8, 7, 8, 9, 5]


def test_proposal_respects_num_tokens():
    seq = [1, 2, 3, 4, 5, 6, 7, 1]
    index = index_of(seq)
    for k in range(0, 6):
        tokens, match_length = index.propose_with_match(seq, k)
        assert tokens == [2, 3, 4, 5, 6, 7][:k]
        assert match_length == (1 if k else 0)


def test_proposal_does_not_modify_the_index():
    seq = [1, 2, 3, 1, 2]
    index = index_of(seq)
    table = dict(index._table)
    first = index.propose_with_match(seq, 10)
    assert index._table == table
    assert index.propose_with_match(seq, 10) == first


def test_only_last_max_ngram_size_tokens_matter():
    seq = [1, 2, 3, 9, 2, 3, 1, 2, 3]
    # A 3-gram sees [1, 2, 3] (then 9); a 2-gram only [2, 3], whose most recent continuation is 1.
    assert continuation(index_of(seq, max_ngram_size=3), seq) == (9, 3)
    assert continuation(index_of(seq, max_ngram_size=2), seq) == (1, 2)
    # Tokens before the last max_ngram_size ones change nothing.
    index = index_of(seq, max_ngram_size=2)
    assert continuation(index, [42, 43, 44, 2, 3]) == continuation(index, [2, 3]) == (1, 2)
    assert index.propose_with_match([42, 43, 44, 2, 3], 4) == index.propose_with_match([2, 3], 4)


def test_longer_matches_than_max_ngram_size_are_not_indexed():
    index = index_of([1, 2, 3, 4, 5, 1, 2, 3, 4], max_ngram_size=2)
    assert continuation(index, [1, 2, 3, 4]) == (5, 2)
    assert all(len(key) <= 2 for key in index._table)


def test_extend_is_incremental():
    whole = index_of([1, 2, 3, 1, 2, 4, 1, 2])
    parts = MaxGramIndex(8)
    for chunk in ([1, 2], [3], [1, 2, 4, 1], [2]):
        parts.extend(chunk)
    assert parts._table == whole._table
    assert continuation(parts, [1, 2, 3, 1, 2, 4, 1, 2]) == (4, 2)


def test_corpus_is_searched():
    index = index_of([1, 7, 8], max_ngram_size=3, corpus=[[7, 8, 9]])
    doc, start, n = index.lookup([1, 7, 8])
    assert (doc[start], n) == (9, 2)
    assert doc == [7, 8, 9]
    assert continuation(index, [1]) == (7, 1)  # the live document is indexed too
    assert index.propose_with_match([1, 7, 8], 1) == ([9], 2)


def test_live_occurrence_preferred_over_corpus():
    # [7, 8] occurs in the corpus (then 9) and in the live document (then 4): the live one is more recent.
    seq = [7, 8, 4, 2, 7, 8]
    assert continuation(index_of(seq, corpus=[[7, 8, 9]]), seq) == (4, 2)


def test_longer_corpus_match_still_beats_shorter_live_match():
    seq = [8, 5, 6, 3, 7, 8]  # live: [8] then 5; corpus: [7, 8] then 9
    assert continuation(index_of(seq, corpus=[[7, 8, 9]]), seq) == (9, 2)


def test_later_corpus_document_preferred_over_earlier():
    assert continuation(index_of([3, 5], corpus=[[5, 1], [5, 2]]), [3, 5]) == (2, 1)


def test_ngrams_do_not_cross_document_boundaries():
    # Were the corpus document [5, 6] chained to the live [7, 8], [6] would be followed by 7.
    index = index_of([7, 8], corpus=[[5, 6]])
    assert index.lookup([6]) is None
    assert index.lookup([5, 6]) is None
    assert continuation(index, [5]) == (6, 1)
    index = index_of([2], corpus=[[1], [9]])
    assert index.lookup([1]) is None and index.lookup([9]) is None  # nothing follows a document's last token


def test_bigram_fallback_only_without_ngram_match():
    table = torch.full((20,), -1)
    table[5] = 19
    table[6] = 18
    bigram = BigramTable(table)
    seq = [5, 6, 5]  # [5] matches (then 6): the bigram entry of 5 must not be used
    assert index_of(seq).propose_with_match(seq, 5, bigram) == ([6, 5, 6, 5, 6], 1)


def test_bigram_fallback_then_copy():
    table = torch.full((10,), -1)
    table[3] = 1
    bigram = BigramTable(table)
    seq = [1, 2, 3]  # no suffix of [1, 2, 3] occurred before: bigram 3 -> 1, then [1] matches (then 2, 3), ...
    # The proposal starts from the bigram table: match length 0.
    assert index_of(seq).propose_with_match(seq, 6, bigram) == ([1, 2, 3, 1, 2, 3], 0)
    assert index_of(seq).propose_with_match(seq, 6) == ([], 0)  # without the table: nothing


def test_bigram_fallback_chain_and_unknown_token_stops():
    table = torch.full((10,), -1)
    table[4], table[7] = 7, 8  # 8 has no entry: the chain stops there
    assert index_of([4]).propose_with_match([4], 5, BigramTable(table)) == ([7, 8], 0)


def test_bigram_fallback_on_empty_index():
    table = torch.tensor([1, 2, 0])
    assert MaxGramIndex(3).propose_with_match([0], 4, BigramTable(table)) == ([1, 2, 0, 1], 0)


# ---------------------------------------------------------------------------------------------------- BigramTable


def test_bigram_next_token():
    bigram = BigramTable(torch.tensor([2, -1, 0], dtype=torch.int32))
    assert bigram.vocab_size == 3
    assert bigram.table.dtype == torch.int64
    assert [bigram.next_token(t) for t in range(3)] == [2, None, 0]
    assert bigram.next_token(-1) is None and bigram.next_token(3) is None  # out of range: no proposal


def test_from_corpus_argmax_ties_and_unseen():
    sequences = [[0, 1], [0, 2], [0, 1], [3, 2], [3, 1], [4]]
    bigram = BigramTable.from_corpus(sequences, vocab_size=6)
    # 0 -> 1 (twice) beats 0 -> 2; 3 -> 1 and 3 -> 2 tie: the smaller id wins even though 3 -> 2 came first.
    assert bigram.table.tolist() == [1, -1, -1, 1, -1, -1]
    assert bigram.next_token(1) is None


def test_from_corpus_counts_within_sequences():
    bigram = BigramTable.from_corpus([[2, 5, 2, 4, 2, 4, 2, 5, 2, 4]], vocab_size=6)
    assert bigram.table.tolist() == [-1, -1, 4, -1, 2, 2]


def test_from_corpus_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    vocab = 7
    sequences = [
        torch.randint(0, vocab, (int(n),), generator=gen).tolist() for n in torch.randint(0, 30, (12,), generator=gen)
    ]
    counts: dict[int, dict[int, int]] = {}
    for seq in sequences:
        for a, b in zip(seq, seq[1:], strict=False):
            counts.setdefault(a, {}).setdefault(b, 0)
            counts[a][b] += 1
    expected = [-1] * vocab
    for a, succ in counts.items():
        expected[a] = min(succ, key=lambda b: (-succ[b], b))
    assert BigramTable.from_corpus(sequences, vocab).table.tolist() == expected


def test_from_corpus_empty():
    assert BigramTable.from_corpus([], vocab_size=4).table.tolist() == [-1] * 4
    assert BigramTable.from_corpus([[3], []], vocab_size=4).table.tolist() == [-1] * 4


def test_from_corpus_out_of_range_raises():
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 4\)"):
        BigramTable.from_corpus([[1, 4]], vocab_size=4)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 4\)"):
        BigramTable.from_corpus([[-1, 2]], vocab_size=4)


def test_bigram_save_load_round_trip(tmp_path):
    bigram = BigramTable(torch.tensor([3, -1, 0, 2]))
    path = tmp_path / "bigram.safetensors"
    bigram.save(path)
    loaded = BigramTable.load(path)
    assert torch.equal(loaded.table, bigram.table)
    assert [loaded.next_token(t) for t in range(4)] == [3, None, 0, 2]
    loaded = BigramTable.load(str(path))
    assert torch.equal(loaded.table, bigram.table)


def test_bigram_load_without_key_raises(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(3, dtype=torch.int64)}, str(path))
    with pytest.raises(ValueError, match="is not a hf_cascade bigram table"):
        BigramTable.load(path)


@pytest.mark.parametrize(
    "table",
    [
        torch.zeros(2, 3, dtype=torch.int64),  # 2-D
        torch.zeros(3),  # float
        torch.zeros(3, dtype=torch.bool),
        torch.tensor(1),  # 0-D
        [0, 1, 2],  # not a tensor
    ],
    ids=["2d", "float", "bool", "0d", "list"],
)
def test_bigram_rejects_bad_types(table):
    with pytest.raises(TypeError, match="1-D integer tensor"):
        BigramTable(table)


@pytest.mark.parametrize("values", [[0, 3, 1], [0, -2, 1], [5, 0, 0]])
def test_bigram_rejects_out_of_range(values):
    with pytest.raises(ValueError, match=r"must be -1 or token ids in \[0, 3\)"):
        BigramTable(torch.tensor(values))


def test_bigram_from_model_matches_forward(llama):
    bigram = BigramTable.from_model(llama, batch_size=40)  # 3 batches over the 96-token vocabulary
    assert bigram.vocab_size == VOCAB
    assert bigram.table.dtype == torch.int64
    bos = llama.config.bos_token_id
    tokens = [0, 1, 2, 17, 39, 40, 41, 80, VOCAB - 1]
    with torch.no_grad():
        for t in tokens:
            logits = llama(input_ids=torch.tensor([[bos, t]]), use_cache=False).logits[0, -1]
            assert bigram.next_token(t) == int(logits.argmax())


def test_bigram_from_model_without_bos(llama):
    bigram = BigramTable.from_model(llama, bos_token_id=5)
    with torch.no_grad():
        for t in (3, 60):
            logits = llama(input_ids=torch.tensor([[5, t]]), use_cache=False).logits[0, -1]
            assert bigram.next_token(t) == int(logits.argmax())


def test_bigram_from_model_accepts_numpy_batch_size(llama):
    import numpy as np

    assert torch.equal(
        BigramTable.from_model(llama, batch_size=np.int64(40)).table, BigramTable.from_model(llama).table
    )


def test_bigram_from_model_rejects_encoder_decoder(t5):
    with pytest.raises(ValueError, match="decoder-only"):
        BigramTable.from_model(t5)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_bigram_from_model_rejects_bad_batch_size(llama, batch_size):
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, got {batch_size!r}"):
        BigramTable.from_model(llama, batch_size=batch_size)


def test_bigram_load_rejects_other_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"garbage.safetensors is not a safetensors file .*hf-cascade bigram"):
        BigramTable.load(garbage)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(3)}, str(other))
    with pytest.raises(ValueError, match=r"is not a hf_cascade bigram table \(no 'next_token' tensor\)"):
        BigramTable.load(other)


# ---------------------------------------------------------------------------------------------------- MaxGramCandidateGenerator


def ids(tokens):
    return torch.tensor([tokens], dtype=torch.long)


def new_tokens(gen, tokens):
    candidates, logits = gen.get_candidates(ids(tokens))
    assert candidates[0, : len(tokens)].tolist() == tokens
    return candidates[0, len(tokens) :].tolist(), logits


def test_candidate_generator_is_a_transformers_candidate_generator():
    gen = MaxGramCandidateGenerator(ids([1, 2]))
    assert isinstance(gen, CandidateGenerator)
    assert gen.requires_model_outputs is False


def test_candidate_generator_proposes_continuation():
    prompt = [10, 11, 12, 10, 11, 12, 10, 11]
    gen = MaxGramCandidateGenerator(ids(prompt), num_output_tokens=5, max_length=100)
    tokens, logits = new_tokens(gen, prompt)
    assert tokens == [12, 10, 11, 12, 10]
    assert logits is None  # greedy: no candidate logits


def test_candidate_generator_follows_committed_tokens():
    prompt = [10, 11, 12, 13, 14, 15, 10, 11]
    gen = MaxGramCandidateGenerator(ids(prompt), num_output_tokens=3, max_length=100)
    assert new_tokens(gen, prompt)[0] == [12, 13, 14]
    # The verifier accepted 12 and then chose 15 itself: the next call reads the new committed sequence.
    committed = prompt + [12, 15]
    assert new_tokens(gen, committed)[0] == [10, 11, 12]


def test_candidate_generator_shorter_input_than_committed_raises():
    prompt = [1, 2, 3, 1, 2]
    gen = MaxGramCandidateGenerator(ids(prompt), max_length=50)
    gen.get_candidates(ids(prompt + [3]))
    with pytest.raises(ValueError, match="already committed"):
        gen.get_candidates(ids(prompt))


def test_candidate_generator_no_match_returns_input():
    prompt = [1, 2, 3, 4]
    gen = MaxGramCandidateGenerator(ids(prompt), max_length=50)
    candidates, logits = gen.get_candidates(ids(prompt))
    assert candidates.tolist() == [prompt] and logits is None


@pytest.mark.parametrize("eos", [1, [7, 1], torch.tensor([1])])
def test_candidate_generator_stops_at_eos(eos):
    prompt = [5, 6, 1, 7, 8, 9, 5, 6]  # [5, 6] was followed by EOS (1), then more text
    gen = MaxGramCandidateGenerator(ids(prompt), eos_token_id=eos, num_output_tokens=6, max_length=100)
    assert new_tokens(gen, prompt)[0] == [1]  # EOS kept, nothing after it


def test_candidate_generator_without_eos_copies_past_it():
    prompt = [5, 6, 1, 7, 8, 9, 5, 6]
    gen = MaxGramCandidateGenerator(ids(prompt), num_output_tokens=4, max_length=100)
    assert new_tokens(gen, prompt)[0] == [1, 7, 8, 9]


@pytest.mark.parametrize("max_length", [9, 10, 11, 12, 30])
def test_candidate_generator_stays_below_max_length(max_length):
    prompt = [1, 2, 3, 4, 5, 6, 1, 2]
    gen = MaxGramCandidateGenerator(ids(prompt), num_output_tokens=10, max_length=max_length)
    candidates, _ = gen.get_candidates(ids(prompt))
    assert candidates.shape[1] <= max_length - 1
    assert candidates[0].tolist() == (prompt + [3, 4, 5, 6, 1, 2, 3, 4, 5, 6])[: max(len(prompt), max_length - 1)]


def test_candidate_generator_suppress_tokens_cuts_before_forbidden():
    prompt = [10, 11, 12, 13, 14, 10, 11]
    processors = LogitsProcessorList([SuppressTokensLogitsProcessor([13])])
    gen = MaxGramCandidateGenerator(
        ids(prompt), num_output_tokens=5, max_length=100, logits_processor=processors, vocab_size=VOCAB
    )
    assert new_tokens(gen, prompt)[0] == [12]


def test_candidate_generator_forbidden_first_token_gives_no_candidates():
    prompt = [10, 11, 12, 13, 10, 11]
    processors = LogitsProcessorList([SuppressTokensLogitsProcessor([12])])
    gen = MaxGramCandidateGenerator(ids(prompt), max_length=100, logits_processor=processors, vocab_size=VOCAB)
    assert new_tokens(gen, prompt)[0] == []


def test_candidate_generator_bad_words_cut_before_forbidden_sequence():
    # Bad word [12, 13]: 13 is forbidden only right after 12, so the proposal is cut between them.
    prompt = [13, 30, 10, 11, 12, 13, 14, 10, 11]
    processors = LogitsProcessorList([NoBadWordsLogitsProcessor([[12, 13]], eos_token_id=1)])
    gen = MaxGramCandidateGenerator(
        ids(prompt), num_output_tokens=5, max_length=100, logits_processor=processors, vocab_size=VOCAB
    )
    assert new_tokens(gen, prompt)[0] == [12]
    # Without the constraint the full copy is proposed.
    plain = MaxGramCandidateGenerator(ids(prompt), num_output_tokens=5, max_length=100)
    assert new_tokens(plain, prompt)[0] == [12, 13, 14, 10, 11]


def test_candidate_generator_ignores_soft_processors():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    prompt = [10, 11, 12, 13, 10, 11]
    processors = LogitsProcessorList([TemperatureLogitsWarper(0.5), TopKLogitsWarper(2)])
    gen = MaxGramCandidateGenerator(
        ids(prompt), num_output_tokens=3, max_length=100, logits_processor=processors, vocab_size=VOCAB
    )
    assert new_tokens(gen, prompt)[0] == [12, 13, 10]


def test_candidate_generator_sampling_logits_are_log_one_hot():
    prompt = [10, 11, 12, 13, 14, 10, 11]
    gen = MaxGramCandidateGenerator(ids(prompt), num_output_tokens=4, max_length=100, do_sample=True, vocab_size=VOCAB)
    tokens, logits = new_tokens(gen, prompt)
    assert tokens == [12, 13, 14, 10]
    assert logits.shape == (1, 4, VOCAB)
    probs = logits.softmax(-1)[0]
    assert torch.equal(probs, torch.nn.functional.one_hot(torch.tensor(tokens), VOCAB).to(probs.dtype))
    assert torch.equal(logits[0].max(-1).values, torch.zeros(4))


def test_candidate_generator_bigram_fallback():
    table = torch.full((VOCAB,), -1)
    table[4] = 9
    gen = MaxGramCandidateGenerator(
        ids([2, 3, 4]), num_output_tokens=3, max_length=50, vocab_size=VOCAB, bigram_table=BigramTable(table)
    )
    assert new_tokens(gen, [2, 3, 4])[0] == [9]


def test_candidate_generator_bigram_table_path(tmp_path):
    table = torch.full((VOCAB,), -1)
    table[4] = 9
    BigramTable(table).save(tmp_path / "b.safetensors")
    gen = MaxGramCandidateGenerator(
        ids([2, 3, 4]), max_length=50, vocab_size=VOCAB, bigram_table=str(tmp_path / "b.safetensors")
    )
    assert new_tokens(gen, [2, 3, 4])[0] == [9]


def test_candidate_generator_bigram_vocab_mismatch_raises():
    with pytest.raises(ValueError, match="bigram table covers 5 tokens"):
        MaxGramCandidateGenerator(ids([1]), vocab_size=VOCAB, bigram_table=BigramTable(torch.full((5,), -1)))


def test_candidate_generator_searches_encoder_input():
    gen = MaxGramCandidateGenerator(
        ids([0, 20, 21]), num_output_tokens=3, max_length=50, encoder_input_ids=ids([20, 21, 22, 23, 24])
    )
    assert new_tokens(gen, [0, 20, 21])[0] == [22, 23, 24]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(do_sample=True),
        dict(logits_processor=LogitsProcessorList([SuppressTokensLogitsProcessor([3])])),
        dict(bigram_table=BigramTable(torch.full((VOCAB,), -1))),
    ],
    ids=["do_sample", "logits_processor", "bigram_table"],
)
def test_candidate_generator_needs_vocab_size(kwargs):
    with pytest.raises(ValueError, match="needs vocab_size"):
        MaxGramCandidateGenerator(ids([1, 2, 3]), **kwargs)


def test_candidate_generator_empty_processor_list_needs_no_vocab_size():
    gen = MaxGramCandidateGenerator(ids([1, 2, 1]), logits_processor=LogitsProcessorList(), max_length=50)
    assert new_tokens(gen, [1, 2, 1])[0][:2] == [2, 1]


# ---------------------------------------------------------------------------------------------------- contract


def test_candidate_generator_in_transformers_assisted_decoding(llama, prompt, monkeypatch):
    """transformers' own `_assisted_decoding` driven by MaxGramCandidateGenerator reproduces plain greedy decoding."""
    max_new = 30
    expected = llama.generate(prompt, max_new_tokens=max_new, do_sample=False)
    gen = MaxGramCandidateGenerator(
        prompt,
        eos_token_id=llama.generation_config.eos_token_id,
        num_output_tokens=10,
        max_length=prompt.shape[1] + max_new,
    )
    calls = []
    original_get_candidates = gen.get_candidates

    def spy(input_ids, **kwargs):
        out = original_get_candidates(input_ids, **kwargs)
        calls.append(out[0].shape[1] - input_ids.shape[1])
        return out

    monkeypatch.setattr(gen, "get_candidates", spy)
    # Prompt lookup mode routes generate() to `_assisted_decoding`, which asks `_get_candidate_generator` for one.
    # (monkeypatch would restore the class's bound method as an instance attribute, so delete it explicitly.)
    llama._get_candidate_generator = lambda **kw: gen
    try:
        out = llama.generate(prompt, prompt_lookup_num_tokens=10, max_new_tokens=max_new, do_sample=False)
    finally:
        del llama._get_candidate_generator
    assert calls, "the patched candidate generator was not used"
    assert sum(calls) > 0, "Max-Gram proposed nothing: the test would not exercise acceptance"
    assert out.tolist() == expected.tolist()
    # Some Max-Gram tokens were accepted, so both the acceptance and the rejection paths were exercised.
    assert 0 < gen.stats[-1].accepted < gen.stats[-1].drafted
    assert hf_cascade.MaxGramCandidateGenerator is MaxGramCandidateGenerator


def test_contract_patch_is_undone(llama):
    assert "_get_candidate_generator" not in vars(llama)


def test_earliest_occurrence_option():
    seq = [1, 2, 3, 9, 1, 2, 4, 1, 2]
    latest, earliest = MaxGramIndex(2), MaxGramIndex(2, occurrence="earliest")
    latest.extend(seq)
    earliest.extend(seq)
    assert latest.propose_with_match(seq, 1)[0] == [4] and earliest.propose_with_match(seq, 1)[0] == [3]
    with pytest.raises(ValueError, match="occurrence must be 'latest' or 'earliest'"):
        MaxGramIndex(2, occurrence="first")


def test_num_drafting_tokens_is_the_longest_draft(llama, prompt):
    """transformers >= 5.25 reads `num_drafting_tokens` before its assisted loop: the most tokens one call drafts."""
    from transformers import GenerationConfig

    assert MaxGramCandidateGenerator(prompt, num_output_tokens=7).num_drafting_tokens == 7
    generator = hf_cascade.CascadeCandidateGenerator(
        prompt,
        [llama],
        hf_cascade.CascadeConfig(k_matrix=[[3, 5], [0, 2]]),
        GenerationConfig(max_length=40),
        None,
        VOCAB,
    )
    assert generator.num_drafting_tokens == 8
