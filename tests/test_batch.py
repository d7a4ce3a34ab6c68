"""Batches (issue 13): every row of a batched cascade call is what plain batched `generate` returns for it."""

from __future__ import annotations

import pytest
import torch
from test_sampling import NEW as SAMPLED
from test_sampling import (
    PROMPT,
    SAMPLING,
    chi_square_p_value,
    exact_distribution,
    outcome_index,
    tiny,  # noqa: F401  (the fixture)
)
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    LlamaForCausalLM,
    MptConfig,
    MptForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    TextStreamer,
)
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

import hf_cascade
from hf_cascade.batch_runner import BatchRunner
from hf_cascade.packed_runner import PackedRunner
from hf_cascade.stats import LevelStats

from conftest import DECODER_KWARGS, VOCAB, FakeLayer, build, llama_config, perturbed, word_tokenizer

NEW = 12
PAD = 0
LENGTHS = (3, 17, 9, 25, 1)


def rows_of(lengths, seed: int = 7) -> list[list[int]]:
    """Prompts of the given lengths, each ending with a repeated phrase where room allows (Max-Gram copies it)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        phrase = torch.randint(2, VOCAB, (max(n // 4, 1),), generator=gen).tolist()
        body = torch.randint(2, VOCAB, (n,), generator=gen).tolist()
        rows.append((body[: n - 2 * len(phrase)] + phrase + phrase)[-n:] if n >= 4 else body)
    return rows


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of `rows`, left-padded with `PAD` as a tokenizer with padding_side="left" does."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def early_eos(model, ids, mask, **kwargs) -> int:
    """A token plain greedy emits early in the first row (and so later or never in others): rows stop apart."""
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, **kwargs)
    return int(out[0, ids.shape[1] + 2])


def cascade(model, ids, mask, drafters, **kwargs):
    """The batched cascade on `ids` (greedy unless `do_sample=True` is passed), as a dict output."""
    kwargs = {"do_sample": False, "pad_token_id": PAD, "return_dict_in_generate": True, **kwargs}
    return model.generate(
        ids, attention_mask=mask, custom_generate=hf_cascade.generate, assistant_models=drafters, **kwargs
    )


@pytest.fixture(scope="module")
def qwen2_drafter(qwen2):
    return perturbed(qwen2, 0.3, 8)


# --------------------------------------------------------------------------------------------- greedy exactness
LLAMA_CASES = {
    # name: (number of rows, drafters (indices into llama_drafters), use_max_gram, with memory)
    "5rows-max_gram": (5, (), True, False),
    "4rows-1drafter+max_gram": (4, (1,), True, False),
    "3rows-2drafters": (3, (0, 1), False, False),
    "2rows-2drafters+max_gram+memory": (2, (0, 1), True, True),
    "1row-1drafter": (1, (1,), False, False),
}


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_llama_batch_equals_plain_batched_greedy(llama, llama_drafters, case, layout, monkeypatch):
    num_rows, which, use_max_gram, with_memory = LLAMA_CASES[case]
    ids, mask = left_pad(rows_of(LENGTHS[:num_rows]))
    eos = early_eos(llama, ids, mask)
    plain = llama.generate(
        ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, eos_token_id=eos
    )
    memory = hf_cascade.MaxGramMemory() if with_memory else None
    if memory is not None:
        memory.add(rows_of([12], seed=3)[0])
    config = hf_cascade.CascadeConfig(use_max_gram=use_max_gram, batch_layout=layout)
    out = cascade(
        llama,
        ids,
        mask,
        [llama_drafters[i] for i in which],
        max_new_tokens=NEW,
        eos_token_id=eos,
        cascade_config=config,
        max_gram_memory=memory,
    )
    assert torch.equal(out.sequences, plain)
    stats = out.cascade_stats
    if num_rows == 1:  # no padding: the batch-1 path, which returns the cache and no per-row records
        assert out.cache is not None and stats.rows == []
        return
    assert out.cache is None  # batched calls return no cache
    assert len(stats.rows) == num_rows
    assert stats.new_tokens == sum(row.new_tokens for row in stats.rows)
    for i, level in enumerate(stats.levels[1:], start=1):  # totals are the rows' sums
        assert level.drafted == sum(row.levels[i].drafted for row in stats.rows)
        assert level.accepted == sum(row.levels[i].accepted for row in stats.rows)
    assert bool((out.sequences[:, ids.shape[1] :] == PAD).any())  # rows stopped apart: some are padded
    if memory is not None:
        # each row's new tokens were remembered (a document needs two tokens to hold an n-gram)
        assert memory.num_documents == 1 + sum(row.new_tokens >= 2 for row in stats.rows)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_fixed_k_matrix_batch_equals_plain_batched_greedy(llama, llama_drafters, layout):
    """Without the controller (`adaptive_drafters=False`) every drafter drafts its k-matrix entries in every row, so
    rows accept very different numbers of tokens (an exact drafter, then a perturbed one, then Max-Gram)."""
    ids, mask = left_pad(rows_of(LENGTHS[:4]))
    eos = early_eos(llama, ids, mask)
    plain = llama.generate(
        ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, eos_token_id=eos
    )
    config = hf_cascade.CascadeConfig(adaptive_drafters=False, batch_layout=layout)
    out = cascade(
        llama, ids, mask, list(llama_drafters[:2]), max_new_tokens=NEW, eos_token_id=eos, cascade_config=config
    )
    assert torch.equal(out.sequences, plain)
    levels = out.cascade_stats.levels
    assert levels[1].accepted > 0 and levels[2].drafted > 0 and levels[3].drafted > 0
    assert all(level.skipped == 0 for level in levels)


@pytest.mark.parametrize("model_name", ["qwen2", "gpt2"])
def test_other_decoders_batch_equal_plain_batched_greedy(request, model_name):
    model = request.getfixturevalue(model_name)
    ids, mask = left_pad(rows_of(LENGTHS[:4]))
    eos = early_eos(model, ids, mask)
    plain = model.generate(
        ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, eos_token_id=eos
    )
    out = cascade(model, ids, mask, [perturbed(model, 0.3, 8)], max_new_tokens=NEW, eos_token_id=eos)
    assert torch.equal(out.sequences, plain)


@pytest.mark.parametrize("use_max_gram", [True, False])
def test_t5_batch_equals_plain_batched_greedy(t5, use_max_gram):
    ids, mask = left_pad(rows_of((6, 14, 3)))
    # Encoder inputs are right-padded, as a T5 tokenizer pads them.
    right = torch.full_like(ids, PAD)
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        right[i, :n] = ids[i, ids.shape[1] - n :]
    mask = (torch.arange(ids.shape[1])[None] < mask.sum(1, keepdim=True)).long()
    plain = t5.generate(right, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    config = hf_cascade.CascadeConfig(use_max_gram=use_max_gram)
    out = t5.generate(
        right,
        attention_mask=mask,
        max_new_tokens=NEW,
        do_sample=False,
        custom_generate=hf_cascade.generate,
        assistant_models=[perturbed(t5, 0.3, 9)],
        cascade_config=config,
    )
    assert torch.equal(out, plain)


def test_fp64_each_row_equals_the_row_alone(llama, llama_drafters):
    rows = rows_of(LENGTHS[:4], seed=11)
    ids, mask = left_pad(rows)
    out = cascade(llama, ids, mask, [llama_drafters[1], llama_drafters[0]], max_new_tokens=NEW).sequences
    for i, row in enumerate(rows):
        alone = llama.generate(torch.tensor([row]), max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
        assert out[i, ids.shape[1] :].tolist() == alone[0, len(row) :].tolist()


@pytest.mark.parametrize("runner", [BatchRunner, PackedRunner])
def test_compaction_keeps_rows_exact(llama, llama_drafters, monkeypatch, runner):
    """Rows accepting different numbers of tokens leave holes in the caches; compacted (here at every hole), the rows
    stay exact, padded or packed."""
    ids, mask = left_pad(rows_of((4, 11, 7)))
    plain = llama.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=PAD)
    shrunk = []
    compact = runner.compact

    def width(self) -> int:
        return self.slot_mask.shape[1] if runner is BatchRunner else self.owner.shape[0]

    def spy(self):
        before = width(self)
        compact(self)
        shrunk.append(width(self) < before)

    monkeypatch.setattr(runner, "compact", spy)
    monkeypatch.setattr(runner, "compact_ratio", 0.5)  # compact at nearly every pass: holes are gathered early
    layout = "padded" if runner is BatchRunner else "packed"
    config = hf_cascade.CascadeConfig(k_matrix=[[6]], use_max_gram=False, adaptive_drafters=False, batch_layout=layout)
    out = cascade(llama, ids, mask, [llama_drafters[1]], max_new_tokens=20, cascade_config=config)
    assert torch.equal(out.sequences, plain)
    assert any(shrunk)  # the holes were gathered away at least once


def test_batch_runner_compact_gathers_each_rows_states():
    """`compact` moves each row's valid slots, in order, to the end of the cache, padding on the left."""
    runner = BatchRunner.__new__(BatchRunner)
    runner.device = torch.device("cpu")
    runner.slot_mask = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 1, 0, 0]])
    runner.cached = [3, 2]
    keys = torch.arange(10.0).view(2, 1, 5, 1)
    layer = FakeLayer(keys)
    runner._layers = lambda: [layer]
    runner.compact()
    assert runner.slot_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert layer.keys.flatten().tolist()[:3] == [0.0, 2.0, 4.0]
    assert layer.keys.flatten().tolist()[4:] == [6.0, 7.0]


@pytest.mark.parametrize("runner_class", [BatchRunner, PackedRunner])
def test_a_batched_pass_is_charged_for_the_tokens_asked_not_the_prompt(llama, runner_class):
    """As a one-row runner does, a batched pass that reads the prompts is charged to the draft-length controller's
    clock for the logits the rows asked for: a drafter's first review must not carry the prompt's cost (it would look
    too slow to ever pay, and be skipped for the rest of the call)."""
    from hf_cascade.cost import TIMING_PRIOR, ForwardCostModel

    cost = ForwardCostModel(0.0, 0.5, timing=TIMING_PRIOR, prior_unit_s=1.0)  # n tokens cost 1 + 0.5 (n - 1)
    runner = runner_class(llama, LevelStats("drafter", "assistant"), range(2), cost=cost)
    rows = rows_of((17, 25))
    runner.logits({0: (rows[0], 16, 17), 1: (rows[1], 24, 25)})  # the prompts read, one logit asked per row
    assert cost.elapsed == pytest.approx(cost.seconds(1))
    rows = [rows[0] + [5, 6], rows[1] + [7]]
    runner.logits({0: (rows[0], 16, 19), 1: (rows[1], 24, 26)})  # 3 and 2 positions asked
    padded = cost.seconds(3)  # as wide as the widest chunk
    packed = cost.seconds(3 + 2 - 2 + 1)  # the draft tokens in all, beyond one per row
    assert cost.elapsed == pytest.approx(cost.seconds(1) + (padded if runner_class is BatchRunner else packed))


def test_padded_single_row_runs_batched(llama, prompt):
    """A one-row prompt with left padding (refused before) goes through the batched path and equals plain."""
    ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(prompt)], dim=1)
    plain = llama.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    out = cascade(llama, ids, mask, [], max_new_tokens=NEW)
    assert torch.equal(out.sequences, plain) and len(out.cascade_stats.rows) == 1


# --------------------------------------------------------------------------------------------- sampling
def test_sampled_batch_is_reproducible_with_a_seed(llama, llama_drafters):
    ids, mask = left_pad(rows_of(LENGTHS[:3]))
    config = hf_cascade.CascadeConfig(lenience=2.0)

    def sample(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        kwargs = dict(do_sample=True, temperature=1.2, max_new_tokens=NEW, cascade_config=config)
        return cascade(llama, ids, mask, [llama_drafters[1]], **kwargs).sequences

    first = sample(5)
    assert torch.equal(first, sample(5))
    assert not torch.equal(first, sample(6))


@pytest.mark.parametrize("two", [False, True], ids=["one-drafter", "two-drafters"])
def test_each_sampled_row_follows_the_target_distribution(tiny, two, monkeypatch):  # noqa: F811
    """Per-row chi-square: two prompts of different lengths, 100 rows each per call (rows are independent draws),
    through a lenient drafter over Max-Gram (or two drafters, the smaller one building the larger one's sub-drafts);
    each prompt's outcomes follow the target's exact distribution. The drafters are priced ten times cheaper than
    the target and verification nearly free, so the batch's plan (`hf_cascade.batch_plan`) drafts on 200 rows, with
    every drafter. (An earlier design let the batch refuse reviews too few rows took part in; which rows share a pass
    depended on the tokens of a row's sub-draft, and it biased the first token, p = 4e-13.)"""
    from hf_cascade import cost

    target, d1, d2 = tiny
    monkeypatch.setattr(cost, "prior_unit_seconds", lambda model: 1.0 if model is target else 0.1)
    drafters, k_matrix = [d1], [[2, 1], [0, 3]]
    if two:
        drafters, k_matrix = [d1, d2], [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    short = torch.tensor([[3, 1, 2]])
    copies = 100
    rows = [PROMPT[0].tolist()] * copies + [short[0].tolist()] * copies
    ids, mask = left_pad(rows)
    config = hf_cascade.CascadeConfig(
        k_matrix=k_matrix,
        lenience=3.0,
        max_gram=hf_cascade.MaxGramConfig(measure_cost=False, draft_cost=0.0, token_cost=0.001),
    )
    counts = torch.zeros(2, len(exact_distribution(target)), dtype=torch.float64)
    drafted = [0] * len(drafters)
    torch.manual_seed(0)
    for _ in range(10):  # 1000 draws per prompt
        out = target.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=SAMPLED,
            custom_generate=hf_cascade.generate,
            assistant_models=drafters,
            cascade_config=config,
            pad_token_id=0,
            return_dict_in_generate=True,
            **SAMPLING,
        )
        for r in range(len(rows)):
            counts[r // copies, outcome_index(out.sequences[r, ids.shape[1] :].tolist())] += 1
        for i in range(len(drafters)):
            drafted[i] += out.cascade_stats.levels[1 + i].drafted
    assert all(drafted)  # every drafter's drafts were reviewed
    p_long, p_short = exact_distribution(target), exact_distribution(target, short)
    assert chi_square_p_value(counts[0], p_long) > 1e-3
    assert chi_square_p_value(counts[1], p_short) > 1e-3
    # Power: each prompt's samples are not the other prompt's distribution (rows did not leak into each other):
    # rejected with a p-value at least ten times below the 1e-3 the exactness checks accept.
    assert chi_square_p_value(counts[1], p_long) < 1e-4


def test_logits_processors_see_the_padded_row(llama, llama_drafters):
    """repetition_penalty and min_new_tokens act on each row as plain batched generate shows it: padding included."""
    ids, mask = left_pad(rows_of(LENGTHS[:3]))
    kwargs = dict(
        max_new_tokens=NEW, repetition_penalty=1.5, min_new_tokens=4, eos_token_id=early_eos(llama, ids, mask)
    )
    plain = llama.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, **kwargs)
    out = cascade(llama, ids, mask, [llama_drafters[1]], **kwargs)
    assert torch.equal(out.sequences, plain)


@pytest.mark.parametrize("route", ["enabled", "custom_generate"])
def test_text_generation_pipeline_batches_through_the_cascade(llama, llama_drafters, route, monkeypatch):
    from transformers import pipeline

    tokenizer = word_tokenizer(pad_token="w0")  # a pipeline batches only with a pad token; it pads on the left
    tokenizer.chat_template = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}w5 "
    pipe = pipeline("text-generation", model=llama, tokenizer=tokenizer)
    texts = [" ".join(f"w{i}" for i in row) for row in rows_of((3, 12, 7))]
    chats = [[{"role": "user", "content": text}] for text in texts[:2]]
    settings = dict(max_new_tokens=8, do_sample=False, batch_size=3)
    plain = [pipe(texts, **settings), pipe(chats, **settings)]
    calls = []
    original = hf_cascade.generation.generate_batch

    def spy(*args, **kwargs):  # proves the pipeline's batch went through the batched cascade
        calls.append(args[1].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(hf_cascade.generation, "generate_batch", spy)
    if route == "enabled":
        hf_cascade.enable(llama)
        extra = {}
    else:
        extra = {"custom_generate": hf_cascade.generate}
    try:
        out = [pipe(inputs, assistant_models=[llama_drafters[1]], **settings, **extra) for inputs in (texts, chats)]
    finally:
        hf_cascade.disable(llama)
    assert out == plain and calls == [3, 2]


# --------------------------------------------------------------------------------------------- errors
def test_right_padding_refused_with_the_fix(llama):
    ids, mask = left_pad(rows_of((3, 6)))
    with pytest.raises(ValueError, match=r'attention_mask row 0 ends with padding.*padding_side = "left"'):
        cascade(llama, ids.flip(1), mask.flip(1), [], max_new_tokens=2)


def test_all_padding_row_refused(llama):
    ids, mask = left_pad(rows_of((3, 6)))
    mask[0] = 0
    with pytest.raises(ValueError, match=r"attention_mask row 0 is all zeros: every prompt needs at least one token"):
        cascade(llama, ids, mask, [], max_new_tokens=2)


def test_stopping_criteria_without_eos_refused_for_a_batch():
    model = build(LlamaForCausalLM, llama_config(eos_token_id=None), seed=0)

    class Never(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    ids, mask = left_pad(rows_of((3, 6)))
    with pytest.raises(ValueError, match=r"stopping_criteria \(Never\) with no eos_token_id in a batch of 2 rows"):
        cascade(model, ids, mask, [], max_new_tokens=2, stopping_criteria=StoppingCriteriaList([Never()]))


def test_padding_between_tokens_refused(llama):
    ids, mask = left_pad(rows_of((3, 6)))
    mask[1, 2] = 0
    with pytest.raises(ValueError, match=r"row 1 has zeros between tokens; only left padding"):
        cascade(llama, ids, mask, [], max_new_tokens=2)


def test_streamer_refused_for_a_batch(llama):
    ids, mask = left_pad(rows_of((3, 6)))
    streamer = TextStreamer(tokenizer=None)
    with pytest.raises(ValueError, match=r"TextStreamer only supports batch size 1 .* got 2 rows"):
        cascade(llama, ids, mask, [], max_new_tokens=2, cascade_streamer=streamer)


def test_cache_reuse_refused_for_a_batch(llama, prompt):
    first = llama.generate(prompt, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    ids, mask = left_pad(rows_of((3, 6)))
    cache = first.cache
    cache.batch_repeat_interleave(2)
    with pytest.raises(ValueError, match=r"cache= holds \d+ tokens: reusing a cache is batch-1 only"):
        cascade(llama, ids, mask, [], max_new_tokens=2, cache=cache)


def test_output_scores_refused_for_a_batch(llama):
    ids, mask = left_pad(rows_of((3, 6)))
    with pytest.raises(ValueError, match=r"output_scores/output_logits are batch-1 only in the cascade \(got 2 rows\)"):
        cascade(llama, ids, mask, [], max_new_tokens=2, output_scores=True)


def test_sliding_window_model_refused_for_a_batch():
    config = Qwen2Config(**DECODER_KWARGS, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    model = build(Qwen2ForCausalLM, config, seed=4)
    ids, mask = left_pad(rows_of((3, 6)))
    with pytest.raises(ValueError, match=r"the target \(Qwen2ForCausalLM\) has sliding_attention layers.*Batch size 1"):
        cascade(model, ids, mask, [], max_new_tokens=2)


def test_model_without_position_ids_refused_for_a_batch(llama):
    mpt = build(MptForCausalLM, MptConfig(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=1), seed=1)
    ids, mask = left_pad(rows_of((3, 6)))
    with pytest.raises(ValueError, match=r"assistant_models\[0\] \(MptForCausalLM\) takes no position_ids"):
        cascade(llama, ids, mask, [mpt], max_new_tokens=2)


def test_absolute_position_encoder_decoder_refused_for_a_batch():
    config = BartConfig(
        vocab_size=VOCAB,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        max_position_embeddings=64,
    )
    bart = build(BartForConditionalGeneration, config, seed=2)
    ids = torch.tensor(rows_of((4, 4)))
    with pytest.raises(ValueError, match=r"the target \(BartForConditionalGeneration\) is an encoder-decoder whose"):
        bart.generate(ids, max_new_tokens=2, custom_generate=hf_cascade.generate)


def test_level_stats_of_a_row_count_its_forwards(llama, llama_drafters):
    ids, mask = left_pad(rows_of((3, 9)))
    out = cascade(llama, ids, mask, [llama_drafters[1]], max_new_tokens=NEW)
    target = out.cascade_stats.levels[0]
    for row in out.cascade_stats.rows:
        assert isinstance(row.levels[0], LevelStats) and 0 < row.levels[0].forward_passes <= target.forward_passes
    assert "row 1:" in out.cascade_stats.summary()


# Row 0 ends with a repeated 6-token phrase (Max-Gram copies it with confidence); rows 1-3 repeat no token.
CONFIDENT_ROW = [2, 3, 4, 5, 40, 41, 42, 43, 44, 45, 6, 7, 40, 41, 42, 43, 44, 45]
UNSURE_ROWS = [list(range(10, 22)), list(range(50, 60)), list(range(70, 84))]


def test_a_confident_row_does_not_widen_the_forward_pass_of_the_batch(llama, monkeypatch):
    # The default, padded layout: packed rows draft apart (`test_batch_packed.py`).
    # Row 0 ends with a repeated 6-token phrase: Max-Gram copies 16 tokens at the 4+-token match prior 0.85, and alone
    # it would draft the 7 tokens with 0.85 ** k >= 0.3 (a 30% cost per token). Rows 1-3 hold no repeated token, so
    # they have nothing to draft: widening the pass for row 0's first token gains (4 + 0.85) / 1.3 = 3.7 tokens per
    # unit of cost, less than the 4 of a one-token pass, so the batch drafts nothing in its first step.
    monkeypatch.setattr(hf_cascade.cost.ForwardCostModel, "costs", lambda self: (0.0, 0.3))
    rows = [CONFIDENT_ROW, *UNSURE_ROWS]
    ids, mask = left_pad(rows)
    widths = []
    logits = BatchRunner.logits

    def spy(self, requests):
        widths.append(max(end - first for _, first, end in requests.values()))
        return logits(self, requests)

    monkeypatch.setattr(BatchRunner, "logits", spy)
    out = cascade(llama, ids, mask, [], max_new_tokens=NEW)
    monkeypatch.undo()
    plain = llama.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    assert torch.equal(out.sequences, plain)
    assert widths[0] == 1  # the first review: each row's last prompt token, no draft


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_batch_timings_are_kept_apart_from_batch_1_calls(llama, llama_drafters, layout):
    """Every model of a batched call times its passes under the batch's own key (rows and layout): a pass over several
    rows must not become what a later one-row call expects a forward to cost (timings outlive calls)."""
    from hf_cascade.cost import FORWARD_SECONDS_ATTR, forget_forward_seconds

    drafter = llama_drafters[1]
    for model in (llama, drafter):
        forget_forward_seconds(model)
    ids, mask = left_pad(rows_of((3, 17, 9)))
    # Fixed drafts (no controller), so the drafter runs every step and the target is not re-priced as rows finish.
    config = hf_cascade.CascadeConfig(batch_layout=layout, adaptive_drafters=False)
    out = cascade(llama, ids, mask, [drafter], max_new_tokens=NEW, cascade_config=config)
    plain = llama.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    assert torch.equal(out.sequences, plain)
    for model in (llama, drafter):
        keys = [key for key, times in model.__dict__[FORWARD_SECONDS_ATTR].items() if times]
        assert keys and all(f"|3x{layout}|" in key for key in keys), keys


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_rows_follow_the_batch_plan_and_the_output_stays_greedy(llama, llama_drafters, layout, monkeypatch):
    """Every row makes the reviews the batch's plan says, whatever it says: plans that skip both drafters, use only
    the larger one, or have the smaller one build its sub-drafts, step after step while rows part (a draft that
    reached EOS stops, a row finishes); the output stays plain batched greedy's, and the drafters' passes serve the
    rows together (fewer passes than the rows took part in)."""
    from hf_cascade.batch_plan import BatchPlan, BatchPlanner

    plans = [BatchPlan((0, 0), (0,)), BatchPlan((2, 0), (0,)), BatchPlan((1, 0), (2,)), BatchPlan((1, 1), (1,))]
    chosen = []

    def plan(self, rows, lags):
        chosen.append(plans[len(chosen) % len(plans)])
        return chosen[-1]

    monkeypatch.setattr(BatchPlanner, "plan", plan)
    ids, mask = left_pad(rows_of(LENGTHS[:4]))
    eos = early_eos(llama, ids, mask)
    plain = llama.generate(
        ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, eos_token_id=eos
    )
    config = hf_cascade.CascadeConfig(batch_layout=layout)
    drafters = list(llama_drafters[:2])
    out = cascade(llama, ids, mask, drafters, max_new_tokens=NEW, eos_token_id=eos, cascade_config=config)
    assert torch.equal(out.sequences, plain)
    assert len(chosen) >= len(plans)
    levels, rows = out.cascade_stats.levels, out.cascade_stats.rows
    assert levels[1].drafted > 0 and levels[2].drafted > 0 and levels[1].skipped > 0 and levels[2].skipped > 0
    for i in (1, 2):
        assert levels[i].forward_passes < sum(row.levels[i].forward_passes for row in rows)
