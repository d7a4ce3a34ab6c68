"""Packed batches (issue 13): rows packed into one cache row feed only their real tokens, and stay exact."""

from __future__ import annotations

import pytest
import torch
from test_batch import CONFIDENT_ROW, NEW, PAD, UNSURE_ROWS, cascade, left_pad, rows_of
from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import hf_cascade
from hf_cascade.adaptive import packed_draft_lengths
from hf_cascade.batch_runner import BatchRunner
from hf_cascade.cost import batch_prior
from hf_cascade.packed_runner import PackedRunner, packed_mask, packs
from hf_cascade.runner import ModelRunner
from hf_cascade.stats import LevelStats

from conftest import DECODER_KWARGS, FakeLayer, build, llama_config, perturbed

PACKED = hf_cascade.CascadeConfig(batch_layout="packed")


def runners_used(monkeypatch) -> list[str]:
    """Record the class of every runner the batched cascade builds."""
    built = []
    for cls in (BatchRunner, PackedRunner):
        init = cls.__init__

        def spy(self, *args, _init=init, **kwargs):
            built.append(type(self).__name__)
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", spy)
    return built


# --------------------------------------------------------------------------------------------- the joint cut
def test_packed_draft_lengths_take_the_likeliest_tokens_while_they_pay():
    # A one-token pass of 2 rows yields 2 tokens per unit of cost. At 0.1 per draft token, row 0's chances 0.9,
    # 0.8, 0.7 (rate (2 + 0.9 + 0.8 + 0.7) / 1.3 = 3.38) and row 1's 0.6 (3.0 / ... ) all pay; 0.2 does not:
    # (2 + 3.0 + 0.2) / 1.5 = 3.47 < (2 + 3.0) / 1.4 = 3.57.
    chances = [[0.9, 0.8, 0.7], [0.6, 0.2]]
    assert packed_draft_lengths(chances, (0.0, 0.1)) == [3, 1]
    # Steep tokens (0.6 each): only the likeliest pays, (2 + 0.9) / 1.6 = 1.81 < 2: nothing.
    assert packed_draft_lengths(chances, (0.0, 0.6)) == [0, 0]
    # At 0.3: 2.9 / 1.3 = 2.23, 3.7 / 1.6 = 2.31, 4.4 / 1.9 = 2.32, then 5.0 / 2.2 = 2.27: row 0's three tokens.
    assert packed_draft_lengths(chances, (0.0, 0.3)) == [3, 0]
    # Cheap tokens: everything.
    assert packed_draft_lengths(chances, (0.0, 0.01)) == [3, 2]


def test_a_confident_row_drafts_without_making_the_others_feed():
    # One row copies at 0.85 per token, three rows have nothing: the confident row drafts alone (a padded batch
    # would have made all four rows pay for its width, `batch_draft_length`).
    confident = [0.85**k for k in range(1, 17)]
    lengths = packed_draft_lengths([confident, [], [], []], (0.0, 0.05))
    assert lengths[1:] == [0, 0, 0] and lengths[0] > 4


def test_packed_draft_lengths_pay_the_fixed_cost_once():
    # A fixed draft cost of 1.0 makes one 0.9 token lose ((1 + 0.9) / 2.1 < 1) but four of them win (4.6 / 2.4).
    assert packed_draft_lengths([[0.9]], (1.0, 0.1)) == [0]
    assert packed_draft_lengths([[0.9, 0.9, 0.9, 0.9]], (1.0, 0.1)) == [4]
    assert packed_draft_lengths([], (0.0, 0.1)) == []


def test_packed_prior_prices_one_token_not_a_row_each():
    assert batch_prior(0.6, 0.05, 1, packed=True) == (0.6, 0.05)
    draft_cost, token_cost = batch_prior(0.6, 0.05, 4, packed=True)
    assert draft_cost == 0.0 and token_cost == pytest.approx(0.05 / (1 + 0.6 + 0.05 * 3))
    assert batch_prior(0.6, 0.05, 4)[1] == pytest.approx(4 * token_cost)  # padded: a token for every row


# --------------------------------------------------------------------------------------------- the mask
def test_packed_mask_sees_the_rows_own_slots_and_earlier_new_tokens():
    owner = torch.tensor([0, 1, -1, 0])
    new_rows = torch.tensor([1, 0, 0])
    mask = packed_mask(owner, new_rows)
    assert mask.shape == (1, 1, 3, 7)
    assert mask[0, 0].int().tolist() == [
        [0, 1, 0, 0, 1, 0, 0],
        [1, 0, 0, 1, 0, 1, 0],
        [1, 0, 0, 1, 0, 1, 1],
    ]
    additive = packed_mask(owner, new_rows, torch.float32)
    assert torch.equal(additive == 0, mask)
    assert float(additive.min()) == torch.finfo(torch.float32).min


# --------------------------------------------------------------------------------------------- the runner
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_packed_runner_logits_equal_each_row_alone(implementation):
    """Ragged rows, idle rows, rejected drafts (holes), a dropped row and a compaction: every row's logits are a
    one-row run's, and every pass feeds only the tokens of the rows that asked."""
    model = build(LlamaForCausalLM, llama_config(attn_implementation=implementation), seed=0)
    assert packs(model)
    # Eager attention takes its softmax in fp32 whatever the model's dtype: the other rows' masked slots (exact
    # zeros) change its summation's rounding. sdpa stays in fp64.
    atol = 1e-10 if implementation == "sdpa" else 1e-6
    seqs = rows_of((5, 12, 8), seed=2)
    extra = rows_of((6, 6, 6), seed=9)
    packed = PackedRunner(model, LevelStats("target", "target"), range(3))
    alone = [ModelRunner(model, LevelStats("target", "target")) for _ in seqs]

    def step(requests, fed):
        before = packed.stats.forward_tokens
        out = packed.logits({r: (seqs[r], first, end) for r, (first, end) in requests.items()})
        assert packed.stats.forward_tokens - before == fed
        for r, (first, end) in requests.items():
            torch.testing.assert_close(out[r], alone[r].logits(seqs[r], first, end), rtol=0, atol=atol)

    step({0: (4, 5), 1: (11, 12), 2: (7, 8)}, 5 + 12 + 8)  # the prompts
    for r in (0, 2):  # drafts of 4 tokens for rows 0 and 2; row 1 is idle
        seqs[r] = seqs[r] + extra[r][:4]
    step({0: (4, 9), 2: (7, 12)}, 10)
    # Row 0 keeps one draft token (+ a new one), row 2 none: their rejected slots become holes.
    seqs[0], seqs[2] = seqs[0][:6] + [extra[0][5]], seqs[2][:8] + [extra[2][5]]
    for r, length in ((0, 6), (2, 8)):
        packed.truncate_to(r, length)
        alone[r].truncate_to(length)
    seqs[1] = seqs[1] + extra[1][:2]
    step({0: (6, 7), 1: (12, 14), 2: (8, 9)}, 1 + 2 + 1)
    assert int((packed.owner == -1).sum()) > 0  # holes in the middle of the cache
    packed.drop([2])
    assert 2 not in packed.cached and int((packed.owner == 2).sum()) == 0
    packed.compact_ratio = 0.5  # compact at the next pass
    seqs[0] = seqs[0] + [extra[0][0]]
    step({0: (7, 8)}, 1)
    assert int((packed.owner == -1).sum()) == 0 and packed.owner.shape[0] == len(seqs[0]) + 14
    step({1: (13, 14)}, 1)  # row 1 feeds its last token again (its slot becomes a hole)
    assert model.config._attn_implementation == implementation


def test_packed_runner_compact_keeps_slot_order():
    runner = PackedRunner.__new__(PackedRunner)
    runner.owner = torch.tensor([0, -1, 1, 0, -1, 1])
    keys = torch.arange(6.0).view(1, 1, 6, 1)
    layer = FakeLayer(keys)
    runner._layers = lambda: [layer]
    runner.compact()
    assert runner.owner.tolist() == [0, 1, 0, 1]
    assert layer.keys.flatten().tolist() == [0.0, 2.0, 3.0, 5.0]


# --------------------------------------------------------------------------------------------- which models pack
def test_models_that_do_not_pack(t5, llama, monkeypatch):
    assert not packs(t5)  # relative positions, encoder-decoder
    sliding = Qwen2Config(**DECODER_KWARGS, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert not packs(build(Qwen2ForCausalLM, sliding, seed=4))
    for implementation in ("flash_attention_2", "flex_attention"):
        monkeypatch.setattr(llama.config, "_attn_implementation_internal", implementation)
        assert not packs(llama)
    monkeypatch.undo()
    assert packs(llama)


def test_t5_runs_padded(t5, monkeypatch):
    built = runners_used(monkeypatch)
    ids = torch.tensor(rows_of((6, 6)))
    plain = t5.generate(ids, max_new_tokens=4, do_sample=False)
    out = t5.generate(
        ids, max_new_tokens=4, do_sample=False, custom_generate=hf_cascade.generate, cascade_config=PACKED
    )
    assert torch.equal(out, plain) and built == ["BatchRunner"]


def test_non_packing_attention_runs_padded_and_exact(llama, monkeypatch):
    """A model whose attention would not honour the packed mask (here: said to be flash attention) runs padded."""
    ids, mask = left_pad(rows_of((3, 9, 5)))
    plain = llama.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    built = runners_used(monkeypatch)
    monkeypatch.setattr(hf_cascade.batch, "packs", lambda model: model is not llama and packs(model))
    drafter = perturbed(llama, 0.3, 8)
    out = cascade(llama, ids, mask, [drafter], max_new_tokens=NEW, cascade_config=PACKED)
    assert torch.equal(out.sequences, plain) and built == ["BatchRunner", "PackedRunner"]


# --------------------------------------------------------------------------------------------- the cascade, packed
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_packed_cascade_equals_plain_batched_greedy(implementation, monkeypatch):
    """Greedy rows equal plain batched greedy (sdpa) and each row's own greedy run (both implementations: with eager
    attention, whose softmax runs in fp32, plain batched greedy itself departs from the rows run alone on this tiny
    random model, padded cascade included)."""
    model = build(LlamaForCausalLM, llama_config(attn_implementation=implementation), seed=0)
    rows = rows_of((3, 17, 9, 25))
    ids, mask = left_pad(rows)
    first = model.generate(torch.tensor([rows[0]]), max_new_tokens=3, do_sample=False, pad_token_id=PAD)
    eos = int(first[0, -1])  # row 0 stops after 3 tokens, the others later or never
    plain = model.generate(
        ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, eos_token_id=eos
    )
    built = runners_used(monkeypatch)
    out = cascade(
        model, ids, mask, [perturbed(model, 0.3, 2)], max_new_tokens=NEW, eos_token_id=eos, cascade_config=PACKED
    )
    if implementation == "sdpa":
        assert torch.equal(out.sequences, plain)
    for i, row in enumerate(rows):
        alone = model.generate(
            torch.tensor([row]), max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, eos_token_id=eos
        )
        new = out.sequences[i, ids.shape[1] :].tolist()
        assert new[: alone.shape[1] - len(row)] == alone[0, len(row) :].tolist()
        assert all(t == PAD for t in new[alone.shape[1] - len(row) :])
    assert built == ["PackedRunner", "PackedRunner"]
    assert bool((out.sequences[:, ids.shape[1] :] == PAD).any())  # rows finished apart and were dropped
    assert out.cache is None  # batched calls return no cache, packed or not


def test_idle_rows_feed_nothing(llama, llama_drafters):
    """Every token a packed model is fed is a row's own: the model's tokens are the sum of the rows' (padded, the
    model also counts the padding of idle and shorter rows)."""
    ids, mask = left_pad(rows_of((3, 17, 9, 25)))
    out = cascade(llama, ids, mask, [llama_drafters[1]], max_new_tokens=NEW, cascade_config=PACKED)
    stats = out.cascade_stats
    for level in range(2):
        assert stats.levels[level].forward_tokens == sum(row.levels[level].forward_tokens for row in stats.rows)
        assert stats.levels[level].forward_tokens > 0


def test_a_confident_row_drafts_alone(llama, monkeypatch):
    """Packed, a confident row's Max-Gram draft no longer waits for the batch: it drafts, and the other rows feed
    only their own token (compare `test_a_confident_row_does_not_widen_the_forward_pass_of_the_batch`)."""
    monkeypatch.setattr(hf_cascade.cost.ForwardCostModel, "costs", lambda self: (0.0, 0.05))
    rows = [CONFIDENT_ROW, *UNSURE_ROWS]
    ids, mask = left_pad(rows)
    passes = []
    logits = PackedRunner.logits

    def spy(self, requests):
        before = self.stats.forward_tokens
        out = logits(self, requests)
        passes.append(({r: end - first for r, (_, first, end) in requests.items()}, self.stats.forward_tokens - before))
        return out

    monkeypatch.setattr(PackedRunner, "logits", spy)
    out = cascade(llama, ids, mask, [], max_new_tokens=NEW, cascade_config=PACKED)
    monkeypatch.undo()
    plain = llama.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    assert torch.equal(out.sequences, plain)
    widths, fed = passes[0]
    assert widths[0] > 1 and [widths[r] for r in (1, 2, 3)] == [1, 1, 1]
    assert fed == sum(len(r) for r in rows) + widths[0] - 1  # the prompts and row 0's draft, no padding


def test_each_sampled_row_is_reproducible_packed(llama, llama_drafters):
    ids, mask = left_pad(rows_of((3, 17, 9)))

    def sample(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return cascade(
            llama, ids, mask, [llama_drafters[1]], do_sample=True, max_new_tokens=NEW, cascade_config=PACKED
        ).sequences

    assert torch.equal(sample(3), sample(3))
