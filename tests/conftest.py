"""Shared fixtures: tiny random models built from configs. Nothing is downloaded (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.generation.streamers import BaseStreamer

import hf_cascade
from hf_cascade.cost import forget_forward_seconds

VOCAB = 96


# Shared by the Llama and Qwen2 test models.
DECODER_KWARGS = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=0,
    eos_token_id=1,
)


def llama_config(**overrides) -> LlamaConfig:
    return LlamaConfig(**{**DECODER_KWARGS, "pad_token_id": None, **overrides})


def build(model_cls, config, seed: int, dtype=torch.float64, logit_scale: float = 1.0):
    """A tiny random model in eval mode; `logit_scale` sharpens its next-token distributions."""
    torch.manual_seed(seed)
    model = model_cls(config).eval().to(dtype)
    if logit_scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(logit_scale)
    return model


class FakeLayer:
    """A cache layer holding only `keys`/`values` (what a runner's `compact` gathers), for tests on literal slots."""

    is_initialized = True

    def __init__(self, keys: torch.Tensor):
        self.keys, self.values = keys.clone(), keys.clone()


def perturbed(model, noise: float, seed: int):
    """A copy of `model` with Gaussian noise (relative to each tensor's std) on every weight: agrees partly."""
    clone = type(model)(model.config).eval().to(model.dtype)
    clone.load_state_dict(model.state_dict())
    if noise:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in clone.parameters():
                scale = p.detach().float().std() if p.numel() > 1 else torch.tensor(1.0)
                p.add_((torch.randn(p.shape, generator=gen) * noise * scale).to(p.dtype))
    return clone


class RolledLlama(LlamaForCausalLM):
    """A drafter whose argmax is always the target's argmax + 1 (mod vocab): every draft token is rejected."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits.roll(1, dims=-1)
        return out


def rolled_copy(model):
    clone = RolledLlama(model.config).eval().to(model.dtype)
    clone.load_state_dict(model.state_dict())
    return clone


class NonFiniteLlama(LlamaForCausalLM):
    """A broken drafter, as after an fp16 overflow: all logits NaN (`fill="nan"`) or token 2's logit `+inf`
    (`fill="inf"`)."""

    fill = "nan"

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if self.fill == "nan":
            out.logits = torch.full_like(out.logits, float("nan"))
        else:
            out.logits = out.logits.clone()
            out.logits[..., 2] = float("inf")
        return out


def nonfinite_copy(model, fill: str):
    """A `NonFiniteLlama` with `model`'s config and weights."""
    clone = NonFiniteLlama(model.config).eval().to(model.dtype)
    clone.load_state_dict(model.state_dict())
    clone.fill = fill
    return clone


def pytest_runtest_call(item):
    """Every test starts its models with no timings from earlier tests: the session's models are shared, and their
    timings outlive each call (`cost.FORWARD_SECONDS_ATTR`), which would make a test's drafts depend on test order."""
    for value in item.funcargs.values():
        for model in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(model, torch.nn.Module):
                forget_forward_seconds(model)


@pytest.fixture(scope="session")
def llama():
    return build(LlamaForCausalLM, llama_config(), seed=0)


@pytest.fixture(scope="session")
def llama_drafters(llama):
    """(exact copy, perturbed copy, always-rejecting copy) of the Llama target."""
    return perturbed(llama, 0.0, 1), perturbed(llama, 0.3, 2), rolled_copy(llama)


@pytest.fixture(scope="session")
def gpt2():
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=512, bos_token_id=0, eos_token_id=1
    )
    return build(GPT2LMHeadModel, config, seed=3)


@pytest.fixture(scope="session")
def qwen2():
    config = Qwen2Config(**DECODER_KWARGS)
    return build(Qwen2ForCausalLM, config, seed=4)


@pytest.fixture(scope="session")
def t5():
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        relative_attention_num_buckets=8,
    )
    return build(T5ForConditionalGeneration, config, seed=5)


@pytest.fixture
def prompt():
    """A prompt with a repeated phrase, so Max-Gram has something to copy."""
    torch.manual_seed(7)
    phrase = torch.randint(2, VOCAB, (6,))
    return torch.cat([torch.randint(2, VOCAB, (5,)), phrase, torch.randint(2, VOCAB, (4,)), phrase])[None]


def max_gram_generate(model, prompt, max_new_tokens: int = 40, k: int = 8, do_sample: bool = False, **max_gram):
    """Max-Gram-only cascade (greedy unless `do_sample`) with `k_matrix=[[k]]` and the given `MaxGramConfig` fields.

    Returns:
        `(sequences, cascade_stats)`.
    """
    config = hf_cascade.CascadeConfig(k_matrix=[[k]], max_gram=max_gram)
    out = model.generate(
        prompt,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        custom_generate=hf_cascade.generate,
        cascade_config=config,
        return_dict_in_generate=True,
    )
    return out.sequences, out.cascade_stats


def word_tokenizer(**special_tokens) -> PreTrainedTokenizerFast:
    """A tokenizer of the tiny vocabulary: word `w{i}` is token `i` (`w0` BOS, `w1` EOS, `w2` unknown)."""
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w2"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w2", eos_token="w1", bos_token="w0", **special_tokens
    )


class Recorder(BaseStreamer):
    """Records every `put` (as token lists) and whether `end` was called."""

    def __init__(self):
        self.puts: list[list[int]] = []
        self.ended = False

    def put(self, value):
        self.puts.append(value.flatten().tolist())

    def end(self):
        self.ended = True
