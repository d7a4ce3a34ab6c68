"""`enable`/`disable`, streaming, and statistics on the output: how users call the cascade."""

from __future__ import annotations

import copy
import string
import threading

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast, TextIteratorStreamer

import hf_cascade

from conftest import VOCAB, Recorder, max_gram_generate, word_tokenizer

NEW = 24


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def test_enable_routes_only_cascade_calls(llama, llama_drafters, prompt):
    plain = llama.generate(prompt, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    model = hf_cascade.enable(llama)
    try:
        assert model is llama and hf_cascade.enable(llama) is llama  # idempotent
        untouched = llama.generate(prompt, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
        assert type(untouched) is type(plain) and not hasattr(untouched, "cascade_stats")
        assert torch.equal(untouched.sequences, plain.sequences)
        out = llama.generate(
            prompt,
            assistant_models=[llama_drafters[1]],
            max_new_tokens=NEW,
            do_sample=False,
            return_dict_in_generate=True,
        )
        assert isinstance(out, hf_cascade.CascadeDecoderOnlyOutput)
        assert torch.equal(out.sequences, plain.sequences)
        # cascade_config alone (no assistants) means target + Max-Gram.
        mag = llama.generate(prompt, cascade_config=hf_cascade.CascadeConfig(), max_new_tokens=NEW, do_sample=False)
        assert torch.equal(mag, plain.sequences)
    finally:
        hf_cascade.disable(llama)
    assert "generate" not in vars(llama)
    hf_cascade.disable(llama)  # a no-op the second time


@pytest.mark.parametrize("name", ["cascade_streamer", "streamer"])
def test_streamer_gets_prompt_then_accepted_tokens_then_end(llama, llama_drafters, prompt, name):
    """streamer=: transformers drops it before a callable custom_generate (after putting the prompt itself); the
    cascade recovers it from the call, must not put the prompt twice, and must call end()."""
    recorder = Recorder()
    out = llama.generate(
        prompt,
        max_new_tokens=NEW,
        do_sample=False,
        custom_generate=hf_cascade.generate,
        assistant_models=[llama_drafters[0]],
        **{name: recorder},
    )
    assert recorder.puts[0] == prompt[0].tolist()
    streamed = [t for chunk in recorder.puts[1:] for t in chunk]
    assert streamed == out[0, prompt.shape[1] :].tolist()
    assert len(recorder.puts) - 1 < NEW  # several tokens per put: streamed as the target accepts them
    assert recorder.ended


def test_text_iterator_streamer_through_enable(llama, llama_drafters, prompt, tokenizer):
    hf_cascade.enable(llama)
    try:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
        result = {}

        def run():
            result["out"] = llama.generate(
                prompt, assistant_models=[llama_drafters[1]], max_new_tokens=NEW, do_sample=False, streamer=streamer
            )

        thread = threading.Thread(target=run)
        thread.start()
        text = "".join(streamer)  # would block forever if end() were never called
        thread.join()
    finally:
        hf_cascade.disable(llama)
    expected = tokenizer.decode(result["out"][0, prompt.shape[1] :])
    assert text.split() == expected.split()


def test_cascade_stats_shape(llama, llama_drafters, prompt):
    out = llama.generate(
        prompt,
        max_new_tokens=NEW,
        do_sample=False,
        custom_generate=hf_cascade.generate,
        assistant_models=list(llama_drafters[:2]),
        return_dict_in_generate=True,
    )
    stats = out.cascade_stats
    assert [level.name for level in stats.levels] == ["target", "assistant_0", "assistant_1", "max_gram"]
    assert [level.kind for level in stats.levels] == ["target", "assistant", "assistant", "max_gram"]
    assert stats.new_tokens == NEW and stats.wall_time_s > 0
    assert all(level.accepted <= level.drafted for level in stats.levels)
    assert stats.levels[3].forward_passes == 0 and stats.levels[3].propose_calls > 0
    d = stats.to_dict()
    assert d["tokens_per_target_forward"] == pytest.approx(stats.tokens_per_target_forward)
    assert "assistant_1" in stats.summary()
    # The returned cache is the target's own transformers cache, covering all but the last token.
    assert out.cache.get_seq_length() == out.sequences.shape[1] - 1


def test_cascade_config_as_dict_and_from_saved_dir(llama, prompt, tmp_path):
    config = hf_cascade.CascadeConfig(k_matrix=[[3]], max_gram={"max_ngram_size": 4})
    config.save_pretrained(tmp_path)
    loaded = hf_cascade.CascadeConfig.from_pretrained(tmp_path)
    outs = [
        llama.generate(
            prompt, max_new_tokens=NEW, do_sample=False, custom_generate=hf_cascade.generate, cascade_config=c
        )
        for c in (loaded, loaded.to_dict())
    ]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], llama.generate(prompt, max_new_tokens=NEW, do_sample=False))


def test_bigram_table_fallback_used_and_lossless(llama, prompt, tmp_path):
    table = hf_cascade.BigramTable.from_model(llama, batch_size=64)
    path = tmp_path / "bigram.safetensors"
    table.save(path)
    # Fixed-length proposals: this test is about the fallback table, not about the adaptive length cutting it.
    sequences, stats = max_gram_generate(
        llama, prompt, NEW, k=4, bigram_table=str(path), min_ngram_size=3, adaptive_length=False
    )
    assert torch.equal(sequences, llama.generate(prompt, max_new_tokens=NEW, do_sample=False))
    max_gram = stats.levels[-1]
    # With a model-built table and a random-weight model, the fallback drafts the model's own first choice often.
    assert max_gram.drafted > 0 and max_gram.accepted > 0


def test_sampling_is_reproducible_with_a_seed(llama, llama_drafters, prompt):
    kwargs = dict(
        max_new_tokens=NEW,
        do_sample=True,
        top_p=0.9,
        custom_generate=hf_cascade.generate,
        assistant_models=[llama_drafters[1]],
        cascade_config={"lenience": 2.0},
    )
    torch.manual_seed(123)
    first = llama.generate(prompt, **kwargs)
    torch.manual_seed(123)
    second = llama.generate(prompt, **kwargs)
    assert torch.equal(first, second) and first.shape[1] == prompt.shape[1] + NEW


def test_enabled_model_accepts_cascade_streamer_too(llama, prompt):
    recorder = Recorder()
    hf_cascade.enable(llama)
    try:
        out = llama.generate(prompt, assistant_models=[], max_new_tokens=8, do_sample=False, cascade_streamer=recorder)
    finally:
        hf_cascade.disable(llama)
    assert recorder.ended and [t for chunk in recorder.puts[1:] for t in chunk] == out[0, prompt.shape[1] :].tolist()


def test_text_generation_pipeline_on_an_enabled_model(llama, llama_drafters, tokenizer):
    from transformers import pipeline

    pipe = pipeline("text-generation", model=llama, tokenizer=tokenizer)
    text = " ".join(f"w{i}" for i in (5, 9, 14, 5, 9, 14, 22, 5, 9))
    plain = pipe(text, max_new_tokens=16, do_sample=False)[0]["generated_text"]
    recorder = Recorder()  # proves the call went through the cascade, not plain generate
    hf_cascade.enable(llama)
    try:
        cascaded = pipe(
            text, max_new_tokens=16, do_sample=False, assistant_models=[llama_drafters[1]], cascade_streamer=recorder
        )
    finally:
        hf_cascade.disable(llama)
    assert cascaded[0]["generated_text"] == plain
    assert recorder.ended and len(recorder.puts) > 1


CHAT_TEMPLATE = (
    "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}{% if add_generation_prompt %}w5 {% endif %}"
)
MESSAGES = [{"role": "user", "content": "w5 w9 w14 w5 w9 w14 w22 w5 w9"}]


@pytest.fixture(scope="module")
def chat_pipe(llama, tokenizer):
    from transformers import pipeline

    tokenizer.chat_template = CHAT_TEMPLATE
    return pipeline("text-generation", model=llama, tokenizer=tokenizer)


def test_pipeline_with_chat_messages(chat_pipe, llama, llama_drafters):
    plain = chat_pipe(MESSAGES, max_new_tokens=16, do_sample=False)[0]["generated_text"]
    assert plain[-1]["role"] == "assistant" and plain[-1]["content"]
    config = hf_cascade.CascadeConfig(lenience=2.0)
    # Without enable(): custom_generate=hf_cascade.generate goes through the pipeline's generate kwargs.
    out = chat_pipe(
        MESSAGES,
        max_new_tokens=16,
        do_sample=False,
        custom_generate=hf_cascade.generate,
        assistant_models=[llama_drafters[1]],
        cascade_config=config,
    )
    assert out[0]["generated_text"] == plain
    hf_cascade.enable(llama)
    try:
        recorder = Recorder()  # proves the call went through the cascade
        out = chat_pipe(
            MESSAGES,
            max_new_tokens=16,
            do_sample=False,
            assistant_models=[llama_drafters[1], llama_drafters[2]],
            cascade_config=config,
            cascade_streamer=recorder,
        )
    finally:
        hf_cascade.disable(llama)
    assert out[0]["generated_text"] == plain and recorder.ended


@pytest.mark.parametrize("enabled", [True, False], ids=["enable-streamer", "custom_generate-cascade_streamer"])
def test_pipeline_streams_with_text_iterator_streamer(chat_pipe, llama, llama_drafters, tokenizer, enabled):
    plain = chat_pipe(MESSAGES, max_new_tokens=16, do_sample=False)[0]["generated_text"][-1]["content"]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    if enabled:
        kwargs = {"streamer": streamer}
        hf_cascade.enable(llama)
    else:  # transformers never hands streamer= to a callable custom_generate
        kwargs = {"custom_generate": hf_cascade.generate, "cascade_streamer": streamer}
    result = {}

    def run():
        result["out"] = chat_pipe(
            MESSAGES, max_new_tokens=16, do_sample=False, assistant_models=[llama_drafters[1]], **kwargs
        )

    try:
        thread = threading.Thread(target=run)
        thread.start()
        text = "".join(streamer)  # would block (then time out) if end() were never called
        thread.join()
    finally:
        hf_cascade.disable(llama)
    assert text.split() == plain.split()
    assert result["out"][0]["generated_text"][-1]["content"] == plain


# ---------------------------------------------------------------------------------- copies and pickles of enable()


def test_deepcopy_of_enabled_model_generates_with_its_own_weights(llama, prompt):
    model = copy.deepcopy(llama)  # a private model: its weights change below
    hf_cascade.enable(model)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.lm_head.weight.mul_(-1.0)  # the copy's greedy text now differs from the original's
    recorder = Recorder()  # proves the copy is still enabled: the call goes through the cascade
    out = clone.generate(prompt, assistant_models=[], max_new_tokens=NEW, do_sample=False, cascade_streamer=recorder)
    hf_cascade.disable(clone)
    own = clone.generate(prompt, max_new_tokens=NEW, do_sample=False)
    original = model.generate(prompt, max_new_tokens=NEW, do_sample=False)
    assert not torch.equal(own, original)  # else the test could not tell whose weights were used
    assert torch.equal(out, own) and recorder.ended
    assert "generate" not in vars(clone) and hf_cascade.enable(model) is model  # enabling twice is a no-op
    hf_cascade.disable(model)
    assert "generate" not in vars(model)


def test_enabled_model_round_trips_through_torch_save(llama, prompt, tmp_path):
    model = copy.deepcopy(llama)
    hf_cascade.enable(model)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    out = loaded.generate(
        prompt, assistant_models=[], max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True
    )
    assert out.cascade_stats is not None  # still enabled after loading
    assert torch.equal(out.sequences, llama.generate(prompt, max_new_tokens=NEW, do_sample=False))
    hf_cascade.disable(loaded)
    assert "generate" not in vars(loaded)


# ------------------------------------------------------------------------------- stop strings (need a tokenizer)


@pytest.fixture(scope="module")
def char_tokenizer():
    """One token per character (ids 2..95), BOS 0, EOS 1: transformers' StopStringCriteria needs a tokenizer whose
    tokens spell text (the word-level `tokenizer` above joins words with spaces, which it cannot map)."""
    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = {"<s>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    assert len(vocab) == VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


def _stop_string(llama, prompt, tokenizer) -> str:
    """Two characters plain greedy generates mid-way, so stopping on them shortens the output."""
    plain = llama.generate(prompt, max_new_tokens=NEW, do_sample=False)[0, prompt.shape[1] :].tolist()
    return tokenizer.decode(plain[NEW // 2 - 1 : NEW // 2 + 1])


@pytest.mark.parametrize(
    "entry, source",
    [
        ("enable", "argument"),
        ("enable", "generation_config"),
        ("enable", "model_default"),
        ("hub_generate", "argument"),
    ],
)
def test_stop_strings_with_tokenizer_equal_plain_generate(llama, llama_drafters, prompt, char_tokenizer, source, entry):
    from transformers import GenerationConfig

    from hf_cascade.hub import hub_generate

    word = _stop_string(llama, prompt, char_tokenizer)
    common = dict(max_new_tokens=NEW, do_sample=False, tokenizer=char_tokenizer)
    if source == "argument":
        common["stop_strings"] = [word]
    elif source == "generation_config":
        common["generation_config"] = GenerationConfig(stop_strings=[word], max_new_tokens=NEW, do_sample=False)
        del common["max_new_tokens"], common["do_sample"]
    saved = llama.generation_config.stop_strings
    if source == "model_default":
        llama.generation_config.stop_strings = [word]
    try:
        plain = llama.generate(prompt, **common)
        cascade = dict(assistant_models=[llama_drafters[0]], return_dict_in_generate=True, **common)
        if entry == "enable":
            hf_cascade.enable(llama)
            try:
                out = llama.generate(prompt, **cascade)
            finally:
                hf_cascade.disable(llama)
        else:
            out = hub_generate(llama, prompt, **cascade)
    finally:
        llama.generation_config.stop_strings = saved
    assert plain.shape[1] < prompt.shape[1] + NEW  # the stop string did stop plain generate early
    assert out.cascade_stats is not None and torch.equal(out.sequences, plain)


def test_pipeline_stop_sequence_on_an_enabled_model(llama, llama_drafters, prompt, char_tokenizer):
    """A pipeline's stop_sequence= becomes stop_strings= with tokenizer=: the wrapper must honour both."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=llama, tokenizer=char_tokenizer)
    text = char_tokenizer.decode(prompt[0])
    kwargs = dict(max_new_tokens=NEW, do_sample=False, stop_sequence=_stop_string(llama, prompt, char_tokenizer))
    plain = pipe(text, **kwargs)[0]["generated_text"]
    hf_cascade.enable(llama)
    try:
        recorder = Recorder()
        out = pipe(text, assistant_models=[llama_drafters[1]], cascade_streamer=recorder, **kwargs)
    finally:
        hf_cascade.disable(llama)
    assert out[0]["generated_text"] == plain and recorder.ended
    assert len(plain) < prompt.shape[1] + NEW  # one character per token: the stop string stopped it early


def test_a_pipeline_passes_the_memory_through(llama, tokenizer):
    from transformers import pipeline

    pipe = pipeline("text-generation", model=llama, tokenizer=tokenizer)
    texts = [" ".join(f"w{i}" for i in (5, 9, 14, 22)), " ".join(f"w{i}" for i in (7, 9, 14, 22))]
    memory = hf_cascade.MaxGramMemory(vocab_size=VOCAB)
    for text in texts:
        plain = pipe(text, max_new_tokens=12, do_sample=False)[0]["generated_text"]
        out = pipe(
            text, max_new_tokens=12, do_sample=False, custom_generate=hf_cascade.generate, max_gram_memory=memory
        )
        assert out[0]["generated_text"] == plain
    assert memory.num_documents == 2  # each pipeline call ran the cascade, which added its output
