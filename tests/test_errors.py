"""Every user-facing error: its type, and a message that names the problem."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import GenerationConfig, LlamaForCausalLM, LlamaModel
from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteriaList

import hf_cascade
from hf_cascade import CascadeConfig, CascadeValueError, MaxGramConfig
from hf_cascade.checks import check_generation

from conftest import Recorder, build, llama_config

CASCADE = dict(custom_generate=hf_cascade.generate, max_new_tokens=3)


@pytest.fixture(scope="module")
def other_vocab_llama():
    return build(LlamaForCausalLM, llama_config(vocab_size=64), seed=21)


@pytest.fixture
def enabled(llama):
    hf_cascade.enable(llama)
    try:
        yield llama
    finally:
        hf_cascade.disable(llama)


# ---------------------------------------------------------------------------------------------------- CascadeConfig


@pytest.mark.parametrize(
    "k_matrix, match",
    [
        ([[1, 2], [3]], r"must be square: it has 2 rows but row 1 has 1 entries"),
        ([[1, 2, 3], [0, 1, 1]], r"must be square: it has 2 rows but row 0 has 3 entries"),
        ([[1]] * 2, r"must be square: it has 2 rows but row 0 has 1 entries"),
    ],
)
def test_k_matrix_not_square(k_matrix, match):
    with pytest.raises(ValueError, match=match):
        CascadeConfig(k_matrix=k_matrix)


def test_k_matrix_not_upper_triangular():
    with pytest.raises(ValueError, match=re.escape("must be upper-triangular: entry [1][0] is 2")):
        CascadeConfig(k_matrix=[[1, 0], [2, 1]])


def test_k_matrix_negative():
    with pytest.raises(ValueError, match=re.escape("k_matrix[0][1] is -1; token counts must be >= 0")):
        CascadeConfig(k_matrix=[[1, -1], [0, 1]])


@pytest.mark.parametrize("value", [1.0, 2.5, "3", None, True])
def test_k_matrix_non_int(value):
    with pytest.raises(TypeError, match=re.escape(f"k_matrix[0][1] must be an int, got {value!r}")):
        CascadeConfig(k_matrix=[[1, value], [0, 1]])


@pytest.mark.parametrize("k_matrix", [[], ()])
def test_k_matrix_empty(k_matrix):
    with pytest.raises(ValueError, match="k_matrix is empty"):
        CascadeConfig(k_matrix=k_matrix)


def test_k_matrix_all_zero_row():
    with pytest.raises(ValueError, match="k_matrix row 1 is all zeros"):
        CascadeConfig(k_matrix=[[1, 1], [0, 0]])
    with pytest.raises(ValueError, match="k_matrix row 0 is all zeros"):
        CascadeConfig(k_matrix=[[0]])


@pytest.mark.parametrize("k_matrix", [3, "[[3]]", [3], [[3], 4], {0: [3]}, torch.tensor([[3]])])
def test_k_matrix_wrong_type(k_matrix):
    with pytest.raises(TypeError, match="k_matrix must be a list of lists of ints"):
        CascadeConfig(k_matrix=k_matrix)


@pytest.mark.parametrize("lenience", [0.5, 0, -1.0, float("inf"), float("-inf")])
def test_lenience_below_one_or_infinite(lenience):
    with pytest.raises(ValueError, match="lenience must be a finite number >= 1"):
        CascadeConfig(lenience=lenience)


def test_lenience_nan():
    with pytest.raises(ValueError, match="lenience must be a finite number >= 1.*nan"):
        CascadeConfig(lenience=float("nan"))


@pytest.mark.parametrize("threshold", [1.0, 1.5, -0.1, float("nan"), float("inf")])
def test_confidence_threshold_out_of_range(threshold):
    with pytest.raises(ValueError, match=r"confidence_threshold must lie in \[0, 1\) \(a probability; 0 never stops"):
        CascadeConfig(confidence_threshold=threshold)


@pytest.mark.parametrize("threshold", ["0.4", None, True, torch.tensor(0.4)])
def test_confidence_threshold_not_a_number(threshold):
    with pytest.raises(TypeError, match=r"confidence_threshold must be a float in \[0, 1\), got"):
        CascadeConfig(confidence_threshold=threshold)


@pytest.mark.parametrize("lenience", ["2", None, True, [2.0], torch.tensor(2.0)])
def test_lenience_not_a_number(lenience):
    with pytest.raises(TypeError, match="lenience must be a float >= 1"):
        CascadeConfig(lenience=lenience)


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_use_max_gram_not_bool(value):
    with pytest.raises(TypeError, match=re.escape(f"use_max_gram must be a bool, got {value!r}")):
        CascadeConfig(use_max_gram=value)


@pytest.mark.parametrize("value", [8, "max_gram", CascadeConfig()])
def test_max_gram_wrong_type(value):
    with pytest.raises(TypeError, match="max_gram must be a MaxGramConfig or a dict, got"):
        CascadeConfig(max_gram=value)


def test_max_gram_dict_with_bad_value():
    with pytest.raises(ValueError, match=r"MaxGramConfig.max_ngram_size must be >= 1, got 0"):
        CascadeConfig(max_gram={"max_ngram_size": 0})


def test_validate_catches_later_mutation():
    config = CascadeConfig()
    config.lenience = 0.1
    with pytest.raises(ValueError, match="lenience"):
        config.validate()


# ---------------------------------------------------------------------------------------------------- MaxGramConfig


@pytest.mark.parametrize("field", ["max_ngram_size", "min_ngram_size", "num_pred_tokens"])
@pytest.mark.parametrize("value", [0, -3])
def test_max_gram_config_too_small(field, value):
    kwargs = {field: value}
    if field == "min_ngram_size":
        kwargs["max_ngram_size"] = 8
    with pytest.raises(ValueError, match=rf"MaxGramConfig\.{field} must be >= 1, got {value}"):
        MaxGramConfig(**kwargs)


@pytest.mark.parametrize("field", ["max_ngram_size", "min_ngram_size", "num_pred_tokens"])
@pytest.mark.parametrize("value", [2.0, "2", None, True])
def test_max_gram_config_not_int(field, value):
    with pytest.raises(TypeError, match=rf"MaxGramConfig\.{field} must be an int, got {re.escape(repr(value))}"):
        MaxGramConfig(**{field: value})


def test_max_gram_config_min_exceeds_max():
    with pytest.raises(ValueError, match=re.escape("min_ngram_size (4) must not exceed max_ngram_size (3)")):
        MaxGramConfig(max_ngram_size=3, min_ngram_size=4)


@pytest.mark.parametrize("value", [5, b"table.safetensors", ["t.safetensors"]])
def test_max_gram_config_bigram_table_wrong_type(value):
    with pytest.raises(TypeError, match="bigram_table must be a path to a safetensors file"):
        MaxGramConfig(bigram_table=value)


# ---------------------------------------------------------------------------------------------------- from_dict


def test_from_dict_unknown_key():
    with pytest.raises(ValueError, match=re.escape("Unknown CascadeConfig field(s) ['kmatrix', 'lenince']")):
        CascadeConfig.from_dict({"kmatrix": [[3]], "lenince": 2.0, "use_max_gram": True})


def test_from_dict_not_a_dict():
    with pytest.raises(TypeError, match="from_dict expects a dict, got list"):
        CascadeConfig.from_dict([("lenience", 2.0)])


def test_from_dict_unknown_nested_max_gram_key():
    with pytest.raises(ValueError, match=r"Unknown CascadeConfig.max_gram field\(s\) \['max_ngram'\]"):
        CascadeConfig.from_dict({"max_gram": {"max_ngram": 3}})


# ---------------------------------------------------------------------------------------------------- generate()


def test_generate_k_matrix_does_not_fit_drafters(llama, llama_drafters, prompt):
    config = CascadeConfig(k_matrix=[[4, 2], [0, 6]])  # one assistant + Max-Gram
    with pytest.raises(ValueError, match=re.escape("k_matrix is 2x2 but the cascade has 3 drafter(s) (2 assistant")):
        llama.generate(prompt, assistant_models=list(llama_drafters[:2]), cascade_config=config, **CASCADE)
    with pytest.raises(ValueError, match=re.escape("k_matrix is 2x2 but the cascade has 1 drafter(s) (0 assistant")):
        llama.generate(prompt, assistant_models=[], cascade_config=config, **CASCADE)
    no_mag = CascadeConfig(k_matrix=[[4, 2], [0, 6]], use_max_gram=False)
    with pytest.raises(ValueError, match=re.escape("k_matrix is 2x2 but the cascade has 1 drafter(s) (1 assistant")):
        llama.generate(prompt, assistant_models=[llama_drafters[0]], cascade_config=no_mag, **CASCADE)


def test_generate_assistant_models_single_model(llama, llama_drafters, prompt):
    with pytest.raises(TypeError, match=r"assistant_models must be a list of models.*assistant_models=\[model\]"):
        llama.generate(prompt, assistant_models=llama_drafters[0], **CASCADE)


def test_generate_assistant_models_not_a_sequence(llama, llama_drafters, prompt):
    with pytest.raises(TypeError, match="assistant_models must be a list of models .*got generator"):
        llama.generate(prompt, assistant_models=(m for m in llama_drafters[:1]), **CASCADE)


@pytest.mark.parametrize(
    "bad, name",
    [("my-org/my-drafter", "str"), (torch.nn.Linear(2, 2), "Linear"), (None, "NoneType")],
    ids=["str", "linear", "none"],
)
def test_generate_assistant_models_contains_non_model(llama, llama_drafters, prompt, bad, name):
    with pytest.raises(
        TypeError, match=rf"assistant_models\[1\] must be a transformers PreTrainedModel .*got {name}\."
    ):
        llama.generate(prompt, assistant_models=[llama_drafters[0], bad], **CASCADE)


def test_generate_assistant_without_lm_head(llama, prompt):
    base = LlamaModel(llama.config).eval().to(llama.dtype)
    with pytest.raises(TypeError, match=r"assistant_models\[0\] must be .*language-modelling head, got LlamaModel"):
        llama.generate(prompt, assistant_models=[base], **CASCADE)


def test_generate_assistant_different_vocabulary(llama, other_vocab_llama, prompt):
    with pytest.raises(ValueError, match=r"assistant_models\[0\] has a vocabulary of 64 tokens but the target has 96"):
        llama.generate(prompt, assistant_models=[other_vocab_llama], **CASCADE)


def test_generate_encoder_decoder_assistant_for_decoder_only_target(llama, t5, prompt):
    with pytest.raises(
        ValueError,
        match=r"assistant_models\[0\] \(T5ForConditionalGeneration\) is encoder-decoder but the target is decoder-only",
    ):
        llama.generate(prompt, assistant_models=[t5], **CASCADE)


def test_generate_decoder_only_assistant_for_encoder_decoder_target(llama, t5, prompt):
    with pytest.raises(
        ValueError,
        match=r"assistant_models\[0\] \(LlamaForCausalLM\) is decoder-only but the target is encoder-decoder",
    ):
        t5.generate(prompt, assistant_models=[llama], **CASCADE)


def test_generate_input_ids_must_be_2d(prompt):
    with pytest.raises(
        ValueError, match=r"input_ids must have shape \(batch_size, sequence_length\); got shape \(21,\)"
    ):
        check_generation(prompt[0], GenerationConfig(), {}, is_encoder_decoder=False)


def test_generate_beam_search_message_names_num_beams(llama, prompt):
    with pytest.raises(ValueError, match=r"Beam search \(num_beams=2\) is not supported"):
        llama.generate(prompt, assistant_models=[], num_beams=2, **CASCADE)


def test_generate_num_return_sequences_message(llama, prompt):
    with pytest.raises(ValueError, match=r"num_return_sequences=2 is not supported"):
        llama.generate(prompt, assistant_models=[], num_return_sequences=2, do_sample=True, **CASCADE)


def test_check_generation_beam_and_num_return_sequences_messages(prompt):
    """The dedicated messages exist (reached when the input was not expanded)."""
    config = GenerationConfig(num_beams=2)
    with pytest.raises(ValueError, match=r"Beam search \(num_beams=2\) is not supported by the cascade"):
        check_generation(prompt, config, {}, is_encoder_decoder=False)
    config = GenerationConfig(num_return_sequences=3, do_sample=True)
    with pytest.raises(ValueError, match="num_return_sequences=3 is not supported by the cascade"):
        check_generation(prompt, config, {}, is_encoder_decoder=False)


def test_generate_prompt_lookup_num_tokens(llama, prompt):
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens selects transformers' own prompt lookup"):
        llama.generate(prompt, assistant_models=[], prompt_lookup_num_tokens=3, **CASCADE)


@pytest.mark.parametrize("flag", ["output_attentions", "output_hidden_states"])
def test_generate_output_attentions_or_hidden_states(llama, prompt, flag):
    with pytest.raises(ValueError, match=f"{flag}=True is not supported by the cascade"):
        llama.generate(prompt, assistant_models=[], return_dict_in_generate=True, **{flag: True}, **CASCADE)


def test_generate_attention_mask_with_right_padding(llama, prompt):
    mask = torch.ones_like(prompt)
    mask[0, -1] = 0
    with pytest.raises(ValueError, match=r'ends with padding \(right padding\).*tokenizer.padding_side = "left"'):
        llama.generate(prompt, attention_mask=mask, assistant_models=[], **CASCADE)


def test_generate_inputs_embeds_only(llama, prompt):
    embeds = llama.get_input_embeddings()(prompt)
    with pytest.raises(ValueError, match="needs at least one input token"):
        llama.generate(inputs_embeds=embeds, **CASCADE)


@pytest.mark.parametrize("assistant_models", [[], None], ids=["empty", "none"])
def test_generate_no_drafter(llama, prompt, assistant_models):
    config = CascadeConfig(use_max_gram=False)
    with pytest.raises(ValueError, match="The cascade has no drafter"):
        llama.generate(prompt, assistant_models=assistant_models, cascade_config=config, **CASCADE)


@pytest.mark.parametrize("config, name", [("cfg", "str"), (MaxGramConfig(), "MaxGramConfig"), (3, "int")])
def test_generate_cascade_config_wrong_type(llama, prompt, config, name):
    with pytest.raises(TypeError, match=rf"cascade_config must be a hf_cascade.CascadeConfig .*got {name}\."):
        llama.generate(prompt, assistant_models=[], cascade_config=config, **CASCADE)


def test_generate_cascade_config_dict_with_unknown_key(llama, prompt):
    with pytest.raises(ValueError, match=re.escape("Unknown CascadeConfig field(s) ['lenince']")):
        llama.generate(prompt, assistant_models=[], cascade_config={"lenince": 2.0}, **CASCADE)


def test_generate_revalidates_mutated_config(llama, prompt):
    config = CascadeConfig()
    config.k_matrix = [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="upper-triangular"):
        llama.generate(prompt, assistant_models=[], cascade_config=config, **CASCADE)


def test_generate_missing_bigram_table_file(llama, prompt, tmp_path):
    config = CascadeConfig(max_gram={"bigram_table": str(tmp_path / "missing.safetensors")})
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        llama.generate(prompt, assistant_models=[], cascade_config=config, **CASCADE)


def test_generate_bigram_table_wrong_vocabulary(llama, prompt, tmp_path):
    path = tmp_path / "small.safetensors"
    hf_cascade.BigramTable(torch.full((10,), -1)).save(path)
    config = CascadeConfig(max_gram={"bigram_table": str(path)})
    with pytest.raises(ValueError, match="bigram table covers 10 tokens but the target's vocabulary has 96"):
        llama.generate(prompt, assistant_models=[], cascade_config=config, **CASCADE)


# ---------------------------------------------------------------------------------------------------- enable()


@pytest.mark.parametrize("obj, name", [(torch.nn.Linear(2, 2), "Linear"), ("gpt2", "str"), (None, "NoneType")])
def test_enable_non_model(obj, name):
    with pytest.raises(TypeError, match=f"hf_cascade.enable expects a transformers PreTrainedModel, got {name}"):
        hf_cascade.enable(obj)


def test_enabled_model_rejects_assistant_model(enabled, llama_drafters, prompt):
    with pytest.raises(
        ValueError, match=r"assistant_model .* cannot be combined with the cascade.*assistant_models=\[\.\.\.\]"
    ):
        enabled.generate(
            prompt, assistant_model=llama_drafters[0], assistant_models=[llama_drafters[1]], max_new_tokens=3
        )


def test_enabled_model_rejects_assistant_model_with_cascade_config(enabled, llama_drafters, prompt):
    with pytest.raises(ValueError, match="assistant_model .* cannot be combined with the cascade"):
        enabled.generate(prompt, assistant_model=llama_drafters[0], cascade_config=CascadeConfig(), max_new_tokens=3)


def test_enabled_model_passes_explicit_custom_generate_through(enabled, prompt):
    """An explicit custom_generate wins over enable(): ours runs as usual, another one gets the arguments as given."""
    kwargs = dict(assistant_models=[], max_new_tokens=3, do_sample=False)
    ours = enabled.generate(prompt, custom_generate=hf_cascade.generate, **kwargs)
    assert torch.equal(ours, enabled.generate(prompt, **kwargs))
    seen = {}

    def other(model, input_ids, *args, assistant_models=None, cascade_config=None, **_):
        seen.update(assistant_models=assistant_models, cascade_config=cascade_config)
        return "other"

    assert enabled.generate(prompt, custom_generate=other, **kwargs) == "other"
    assert seen == {"assistant_models": [], "cascade_config": None}


def test_enabled_model_validates_like_generate(enabled, prompt):
    with pytest.raises(TypeError, match="assistant_models must be a list of models"):
        enabled.generate(prompt, assistant_models=enabled, max_new_tokens=3)


def test_enable_fixture_cleans_up(llama):
    assert "generate" not in vars(llama)


def test_enabled_model_refuses_streamer_and_cascade_streamer(enabled, prompt):
    with pytest.raises(CascadeValueError, match=r"Got both streamer= and cascade_streamer=; pass the streamer once"):
        enabled.generate(
            prompt, assistant_models=[], max_new_tokens=3, streamer=Recorder(), cascade_streamer=Recorder()
        )


def test_enabled_model_refuses_synced_gpus(enabled, prompt):
    with pytest.raises(CascadeValueError, match="synced_gpus=True is not supported by the cascade"):
        enabled.generate(prompt, assistant_models=[], max_new_tokens=3, synced_gpus=True)


def test_enable_keeps_an_instance_generate_for_plain_calls(llama, prompt):
    """A model loaded from a custom_generate repository has an instance-level generate: enable() must not lose it."""
    calls = []

    def repo_generate(*args, **kwargs):
        calls.append(kwargs)
        return type(llama).generate(llama, *args, **kwargs)

    llama.generate = repo_generate
    try:
        hf_cascade.enable(llama)
        llama.generate(prompt, max_new_tokens=3, do_sample=False)
        assert len(calls) == 1
        hf_cascade.disable(llama)
        assert llama.generate is repo_generate
    finally:
        del llama.generate


# ------------------------------------------------------------ the bare custom_generate=hf_cascade.generate path
# transformers drops assistant_model=, streamer= and synced_gpus= before calling a callable custom_generate; the
# cascade recovers them from the running generate call (generation._generate_call_arguments) to refuse or use them.


def test_bare_custom_generate_refuses_assistant_model(llama, llama_drafters, prompt):
    with pytest.raises(
        CascadeValueError,
        match=r"assistant_model \(LlamaForCausalLM, .*cannot be combined.*assistant_models=\[\.\.\.\]",
    ):
        llama.generate(prompt, assistant_model=llama_drafters[0], assistant_models=[llama_drafters[1]], **CASCADE)


def test_bare_custom_generate_refuses_synced_gpus(llama, prompt):
    with pytest.raises(CascadeValueError, match="synced_gpus=True is not supported by the cascade"):
        llama.generate(prompt, assistant_models=[], synced_gpus=True, **CASCADE)


def test_bare_custom_generate_refuses_streamer_and_cascade_streamer(llama, prompt):
    with pytest.raises(CascadeValueError, match="Got both streamer= and cascade_streamer="):
        llama.generate(prompt, assistant_models=[], streamer=Recorder(), cascade_streamer=Recorder(), **CASCADE)


def test_generate_stop_strings_without_a_criterion(llama, prompt):
    """Only a direct call gets this far (through model.generate transformers refuses first): never ignore them."""
    config = GenerationConfig(stop_strings=["ab"], max_new_tokens=3, do_sample=False, eos_token_id=1)
    with pytest.raises(
        CascadeValueError,
        match=r"stop_strings=\['ab'\] reached hf_cascade.generate without a tokenizer.*hf_cascade.enable\(model\)",
    ):
        hf_cascade.generate(llama, prompt, LogitsProcessorList(), StoppingCriteriaList(), config, assistant_models=[])


def test_max_gram_occurrence_and_token_cost_errors():
    with pytest.raises(ValueError, match="MaxGramConfig.occurrence must be 'latest' or 'earliest', got 'first'"):
        MaxGramConfig(occurrence="first")
    with pytest.raises(ValueError, match=r"MaxGramConfig.token_cost must lie in \(0, 1\)"):
        MaxGramConfig(token_cost=1.5)
    with pytest.raises(TypeError, match="MaxGramConfig.adaptive_length must be a bool"):
        MaxGramConfig(adaptive_length="yes")
    with pytest.raises(ValueError, match=r"MaxGramConfig.draft_cost must be a finite number >= 0 .*got -0.5"):
        MaxGramConfig(draft_cost=-0.5)
    with pytest.raises(ValueError, match=r"MaxGramConfig.draft_cost must be a finite number >= 0 .*got inf"):
        MaxGramConfig(draft_cost=float("inf"))
    with pytest.raises(TypeError, match=r"MaxGramConfig.draft_cost must be a float >= 0, got '1'"):
        MaxGramConfig(draft_cost="1")
    with pytest.raises(TypeError, match=r"MaxGramConfig.measure_cost must be a bool, got 'yes'"):
        MaxGramConfig(measure_cost="yes")


@pytest.mark.parametrize(
    "tensor, message",
    [
        (
            torch.zeros(4, 4, dtype=torch.int64),
            r"'next_token' is a 2-D int64 tensor of shape \(4, 4\); a bigram table is",
        ),
        (torch.zeros(4), r"'next_token' is a 1-D float32 tensor of shape \(4,\); a bigram table is a 1-D integer"),
        (torch.tensor([1, 9, -1]), r"BigramTable entries must be -1 or token ids in \[0, 3\)"),
    ],
)
def test_bigram_table_load_names_the_file_and_the_problem(tensor, message, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "table.safetensors"
    save_file({"next_token": tensor}, str(path))
    with pytest.raises(hf_cascade.CascadeValueError, match=f"^{re.escape(str(path))}: {message}"):
        hf_cascade.BigramTable.load(path)


def test_bigram_table_load_of_a_folder(tmp_path):
    with pytest.raises(hf_cascade.CascadeValueError, match=f"Bigram table {re.escape(str(tmp_path))} is a folder"):
        hf_cascade.BigramTable.load(tmp_path)
