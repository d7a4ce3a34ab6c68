"""oneDNN-packed linear layers (`hf_cascade.cpu`): same function, counted parameters, greedy identity, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

import hf_cascade
from hf_cascade import cpu
from hf_cascade.cpu import OneDNNLinear, count_parameters, use_onednn_linear

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
