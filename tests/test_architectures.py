"""Greedy cascade output equals plain greedy `generate` across transformers architectures, each built tiny from its
config class (nothing is downloaded); sliding-window models with a window far shorter than prompt + output; stateful
models refused before any forward pass.
"""

from __future__ import annotations

import pytest
import torch
from test_greedy import assert_same_cache
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

import hf_cascade
from hf_cascade.runner import ModelRunner
from hf_cascade.stats import LevelStats

from conftest import DECODER_KWARGS, VOCAB, perturbed

TINY = dict(
    DECODER_KWARGS,
    head_dim=8,
    pad_token_id=2,
    is_decoder=True,  # BERT-style encoders used as causal LMs
    # GPT-2 style names
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=256,
    # encoder-decoders
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    # mixtures of experts
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
)
WINDOW = 4  # real models: Gemma-3 1B 512, Mistral 4096; prompt + output here is 41 tokens

# Every layer or some layers attend to the last WINDOW tokens only.
SLIDING = [
    "mistral",
    "mixtral",
    "ministral",
    "ministral3",
    "gemma2",
    "gemma3_text",
    "starcoder2",
    "phi3",
    "phimoe",
    "olmo3",
    "exaone4",
    "cohere2",
    "gpt_oss",
    "vaultgemma",
    "granite_swa",
    "afmoe",
    "cwm",
    "modernbert-decoder",
]
# Full attention (and chunked: Llama 4): one quick identity check each.
OTHERS = [
    "llama",
    "qwen2",
    "qwen3",
    "gpt2",
    "gpt_bigcode",
    "gpt_neox",
    "gemma",
    "olmo",
    "olmo2",
    "phi",
    "granite",
    "stablelm",
    "persimmon",
    "cohere",
    "glm",
    "glm4",
    "helium",
    "smollm3",
    "arcee",
    "bloom",
    "opt",
    "biogpt",
    "ctrl",
    "mpt",
    "nemotron",
    "jetmoe",
    "roberta",
    "bert",
    "llama4_text",
    "seed_oss",
    "hunyuan_v1_dense",
    "ernie4_5",
    "internlm3",
    "apertus",
    "bitnet",
    "doge",
]
SEQ2SEQ = ["bart", "marian", "pegasus"]
FP32_ONLY = {"mixtral", "phimoe", "gpt_oss", "afmoe"}  # grouped expert matmuls take no fp64


def tiny(model_type: str, sliding: bool = False, seq2seq: bool = False) -> torch.nn.Module:
    """A 2-layer, 32-wide random model of `model_type` in fp64 (fp32 for `FP32_ONLY`), eval mode."""
    overrides = dict(TINY, sliding_window=WINDOW) if sliding else TINY
    config = CONFIG_MAPPING[model_type](**overrides)
    torch.manual_seed(0)
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    return auto.from_config(config).eval().to(torch.float32 if model_type in FP32_ONLY else torch.float64)


@pytest.fixture(scope="module")
def ids():
    """21 tokens with a repeated phrase (Max-Gram copies it), none of them BOS, EOS or padding."""
    gen = torch.Generator().manual_seed(7)
    phrase = torch.randint(3, VOCAB, (6,), generator=gen)
    parts = [torch.randint(3, VOCAB, (5,), generator=gen), phrase, torch.randint(3, VOCAB, (4,), generator=gen), phrase]
    return torch.cat(parts)[None]


GREEDY = dict(do_sample=False, max_new_tokens=20, min_new_tokens=20)


def cascade(target, ids, assistants, **kwargs):
    """Fixed Max-Gram costs: the same drafts every run. With a drafter, it reviews several short Max-Gram drafts per
    target draft, so it is rolled back twice in one step (its own review, then the target's)."""
    k_matrix = [[4, 2], [0, 2]] if assistants else [[4]]
    # Fixed lengths: the controller would skip drafters as large as the target, and no rollback would be tested.
    config = hf_cascade.CascadeConfig(k_matrix=k_matrix, max_gram={"measure_cost": False}, adaptive_drafters=False)
    return target.generate(
        ids, custom_generate=hf_cascade.generate, assistant_models=assistants, cascade_config=config, **kwargs
    )


@pytest.mark.parametrize("model_type", SLIDING)
def test_sliding_window_greedy_identical(model_type, ids):
    """Regression: a drafter reviewing Max-Gram drafts crashed once the sequence was longer than the window."""
    target = tiny(model_type, sliding=True)
    assert getattr(target.config.get_text_config(), "sliding_window", None) == WINDOW
    kwargs = dict(GREEDY, return_dict_in_generate=True)
    ref = target.generate(ids, **kwargs)
    for assistants in ([perturbed(target, 0.3, 2)], []):
        out = cascade(target, ids, assistants, **kwargs)
        assert torch.equal(out.sequences, ref.sequences), (model_type, len(assistants))
        # Gemma's norms compute in fp32 even in an fp64 model; a lost or stale state would differ by far more.
        assert_same_cache(out.cache, ref.cache, atol=1e-4 if target.dtype == torch.float32 else 1e-6)


@pytest.mark.parametrize("model_type", ["mistral", "gemma2", "gemma3_text"])
def test_runner_rolls_back_before_an_earlier_rollback(model_type):
    """The cascade's rollback pattern on one runner: logits equal a full uncached forward at every step."""
    model = tiny(model_type, sliding=True)
    gen = torch.Generator().manual_seed(3)
    seq = torch.randint(3, VOCAB, (3, 20), generator=gen).tolist()
    runner = ModelRunner(model, LevelStats("assistant_0", "assistant"))

    def check(ids, first, end):
        expected = model(torch.tensor([ids[:end]])).logits[0, first:end]
        # fp64 weights, but Gemma's norms compute in fp32: a lost state would change logits by far more.
        torch.testing.assert_close(runner.logits(ids, first, end), expected, rtol=1e-6, atol=1e-6)

    check(seq[0], 0, 10)  # prompt, longer than the window
    check(seq[0], 9, 15)  # a 5-token draft
    runner.truncate_to(12)  # the drafter keeps 2 of them ...
    ids = seq[0][:12] + seq[1][12:]
    check(ids, 11, 16)  # ... and reviews a new draft after them
    runner.truncate_to(10)  # then the target rejects before the drafter's rollback point
    ids = ids[:10] + seq[2][10:]
    check(ids, 9, 14)
    runner.commit(12)  # positions before 11 are final: sliding layers keep only the window before 11 onwards
    sliding = [layer for layer in runner.cache.layers if getattr(layer, "is_sliding", False)]
    assert sliding and all(layer.keys.shape[-2] == 14 - (11 - WINDOW + 1) for layer in sliding)
    check(ids, 13, 16)


@pytest.mark.parametrize("model_type", OTHERS)
def test_architecture_greedy_identical(model_type, ids):
    target = tiny(model_type)
    ref = target.generate(ids, **GREEDY)
    out = cascade(target, ids, [perturbed(target, 0.3, 2)], **GREEDY)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("model_type", SEQ2SEQ)
def test_encoder_decoder_greedy_identical(model_type, ids):
    target = tiny(model_type, seq2seq=True)
    kwargs = dict(GREEDY, decoder_start_token_id=0, return_dict_in_generate=True)
    ref = target.generate(ids, **kwargs)
    out = cascade(target, ids, [perturbed(target, 0.3, 2)], **kwargs)
    assert torch.equal(out.sequences, ref.sequences)
    assert_same_cache(out.cache, ref.cache)


# ---------------------------------------------------------------- models whose state cannot be rolled back
STATEFUL = {
    "mamba": (dict(state_size=4, expand=2, conv_kernel=4), r"recurrent layers \(layer types linear_attention\)"),
    "minimax": ({}, r"its own cache type"),
    "falcon_h1": ({}, r"recurrent layers \(layer types hybrid\)"),
}


def _forward_counter(model) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("model_type", list(STATEFUL))
def test_stateful_models_refused_before_any_forward(model_type, ids):
    """Regression: Mamba failed inside ModelRunner (get_seq_length), MiniMax inside its own forward."""
    overrides, why = STATEFUL[model_type]
    config = CONFIG_MAPPING[model_type](**{**TINY, **overrides})
    torch.manual_seed(0)
    stateful = AutoModelForCausalLM.from_config(config).eval()
    calls = _forward_counter(stateful)
    name = type(stateful).__name__
    with pytest.raises(hf_cascade.CascadeValueError, match=rf"the target \({name}\) has {why}.*cannot be rolled back"):
        cascade(stateful, ids, [], **GREEDY)
    target = tiny("llama")
    with pytest.raises(hf_cascade.CascadeValueError, match=rf"assistant_models\[0\] \({name}\) has {why}"):
        cascade(target, ids, [stateful], **GREEDY)
    assert calls == [0]


def test_model_without_a_kv_cache_refused(ids):
    target = tiny("openai-gpt")
    with pytest.raises(hf_cascade.CascadeValueError, match=r"the target \(OpenAIGPTLMHeadModel\) has no KV cache"):
        cascade(target, ids, [], **GREEDY)
