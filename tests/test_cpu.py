"""oneDNN-packed linear layers (`hf_cascade.cpu`): same function, counted parameters, greedy identity, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

import hf_cascade
from hf_cascade import cpu
from hf_cascade.cpu import OneDNNLinear, PackedWeightInfo, count_parameters, use_onednn_linear

from conftest import build, llama_config

pytestmark = pytest.mark.skipif(not cpu.onednn_linear_available(), reason="this torch build lacks oneDNN linear ops")


def tiny(seed: int = 0, **overrides):
    """A float32 tiny Llama (oneDNN packs float32 on every x86 CPU; the float64 test models would be refused)."""
    return build(LlamaForCausalLM, llama_config(**overrides), seed=seed, dtype=torch.float32, logit_scale=8.0)


def count_linear(model) -> int:
    return sum(type(m) is torch.nn.Linear for m in model.modules())


@pytest.mark.parametrize("tied", [False, True])
def test_packed_model_computes_the_same_function(tied, prompt):
    model = tiny(tie_word_embeddings=tied)
    n_linear, n_params = count_linear(model), count_parameters(model)
    with torch.no_grad():
        before = model(prompt).logits
        assert use_onednn_linear(model) == n_linear
        after = model(prompt).logits
    assert count_linear(model) == 0
    assert sum(isinstance(m, OneDNNLinear) for m in model.modules()) == n_linear
    # Same parameters counted (a tied lm_head once), same function up to float rounding.
    assert count_parameters(model) == n_params
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    if tied:  # the tied weight stays referenced (it is the embeddings', no extra memory)
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_packed_t5_reads_the_weight_dtype(prompt):
    """T5's feed-forward reads `wo.weight.dtype`: a packed layer answers it from a `PackedWeightInfo` (no second copy
    of the weight), and code computing with it fails loudly (a meta tensor would be multiplied as garbage)."""
    config = T5Config(
        vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = build(T5ForConditionalGeneration, config, seed=0, dtype=torch.float32)
    decoder_ids = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        before = model(input_ids=prompt, decoder_input_ids=decoder_ids).logits
        use_onednn_linear(model)
        after = model(input_ids=prompt, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    wo = model.decoder.block[0].layer[2].DenseReluDense.wo
    assert isinstance(wo, OneDNNLinear) and isinstance(wo.weight, PackedWeightInfo)
    assert (wo.weight.dtype, tuple(wo.weight.shape), wo.weight.device) == (torch.float32, (32, 64), torch.device("cpu"))
    assert "weight" not in dict(wo.named_parameters())
    with pytest.raises(TypeError, match="weight"):
        torch.nn.functional.linear(torch.ones(1, 64), wo.weight)


def test_leaves_other_layer_types(prompt):
    """GPT-2 uses transformers' Conv1D, not nn.Linear: nothing to pack, nothing changes."""
    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    model = build(GPT2LMHeadModel, config, seed=3, dtype=torch.float32)
    packed = use_onednn_linear(model)
    assert packed == 1  # lm_head only
    assert sum(isinstance(m, OneDNNLinear) for m in model.modules()) == 1


def test_greedy_identical_on_packed_models(prompt):
    """The cascade on packed models gives the packed target's own greedy output (drafters agree partly)."""
    target, drafter = tiny(seed=0), tiny(seed=0)
    with torch.no_grad():
        for p in drafter.parameters():
            p.add_(torch.randn_like(p) * 0.2 * p.std())
    use_onednn_linear(target)
    use_onednn_linear(drafter)
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    reference = target.generate(prompt, **kwargs)
    out = target.generate(
        prompt,
        custom_generate=hf_cascade.generate,
        assistant_models=[drafter],
        return_dict_in_generate=True,
        **kwargs,
    )
    assert out.sequences.tolist() == reference.tolist()
    assert out.cascade_stats.target.forward_passes < 24  # drafts were accepted, so the test exercises verification


def test_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        use_onednn_linear("model")


def test_model_not_on_cpu():
    model = tiny().to("meta")
    with pytest.raises(ValueError, match=r"parameters on \['meta'\]; oneDNN packing is for models on CPU only"):
        use_onednn_linear(model)


def test_mixed_dtypes():
    model = tiny()
    model.lm_head.to(torch.float64)
    with pytest.raises(ValueError, match=r"mixed dtypes \['torch.float32', 'torch.float64'\]"):
        use_onednn_linear(model)


def test_unsupported_dtype_leaves_the_model_unchanged(monkeypatch):
    def refuse(weight):
        raise RuntimeError("bf16 path needs the cpu support avx512bw")

    monkeypatch.setattr(cpu, "_reorder", refuse)
    model = tiny().to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"dtype torch.bfloat16 is not supported by oneDNN on this CPU .*float32"):
        use_onednn_linear(model)
    assert count_linear(model) > 0


def test_torch_without_onednn(monkeypatch):
    monkeypatch.setattr(cpu, "onednn_linear_available", lambda: False)
    with pytest.raises(ValueError, match="lacks oneDNN or its packed-linear ops; use the model as it is"):
        use_onednn_linear(tiny())
