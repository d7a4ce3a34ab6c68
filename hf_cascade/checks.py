"""Fail-fast validation of a cascade `generate` call: unsupported input never silently changes the output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from .config import CascadeConfig
from .errors import CascadeTypeError, CascadeValueError

__all__ = ["check_assistants", "check_cascade_config", "check_generation", "vocab_size"]


def vocab_size(model: PreTrainedModel) -> int:
    """Size of the model's logits (the text config's `vocab_size`)."""
    return model.config.get_text_config().vocab_size


def check_cascade_config(cascade_config: Any) -> CascadeConfig:
    """Accept a `CascadeConfig`, a dict (as in `cascade_config.json`) or `None` (defaults)."""
    if cascade_config is None:
        return CascadeConfig()
    if isinstance(cascade_config, dict):
        return CascadeConfig.from_dict(cascade_config)
    if not isinstance(cascade_config, CascadeConfig):
        raise CascadeTypeError(
            f"cascade_config must be a hf_cascade.CascadeConfig (or a dict of its fields), got "
            f"{type(cascade_config).__name__}."
        )
    cascade_config.validate()
    return cascade_config


def check_assistants(target: PreTrainedModel, assistant_models: Any) -> list[PreTrainedModel]:
    """Validate `assistant_models` against the target and return them as a list (largest first, as given)."""
    if assistant_models is None:
        return []
    if isinstance(assistant_models, torch.nn.Module) or not isinstance(assistant_models, Sequence):
        raise CascadeTypeError(
            f"assistant_models must be a list of models (largest first), got {type(assistant_models).__name__}; "
            "wrap a single model as assistant_models=[model]."
        )
    target_vocab = vocab_size(target)
    for i, model in enumerate(assistant_models):
        if not isinstance(model, PreTrainedModel) or not hasattr(model, "generate"):
            raise CascadeTypeError(
                f"assistant_models[{i}] must be a transformers PreTrainedModel with a language-modelling head, got "
                f"{type(model).__name__}. Load it with AutoModelForCausalLM / AutoModelForSeq2SeqLM."
            )
        if bool(model.config.is_encoder_decoder) != bool(target.config.is_encoder_decoder):
            kind = "encoder-decoder" if target.config.is_encoder_decoder else "decoder-only"
            raise CascadeValueError(
                f"assistant_models[{i}] ({type(model).__name__}) is "
                f"{'encoder-decoder' if model.config.is_encoder_decoder else 'decoder-only'} but the target is {kind}; "
                "all models of a cascade must be of the same kind."
            )
        if vocab_size(model) != target_vocab:
            raise CascadeValueError(
                f"assistant_models[{i}] has a vocabulary of {vocab_size(model)} tokens but the target has "
                f"{target_vocab}; CS Drafting compares token ids and probabilities directly, so every assistant must "
                "share the target's tokenizer and vocabulary."
            )
    return list(assistant_models)


def check_generation(
    input_ids: torch.Tensor, generation_config: GenerationConfig, model_kwargs: dict[str, Any], is_encoder_decoder: bool
) -> None:
    """Reject generation settings the cascade does not support (yet) instead of returning something else."""
    # Beams and return sequences first: generate() has already expanded input_ids to that many rows.
    if generation_config.num_beams is not None and generation_config.num_beams > 1:
        raise CascadeValueError(
            f"Beam search (num_beams={generation_config.num_beams}) is not supported by the cascade; use num_beams=1 "
            "(greedy, do_sample=False) or sampling (do_sample=True)."
        )
    if generation_config.num_return_sequences is not None and generation_config.num_return_sequences > 1:
        raise CascadeValueError(
            f"num_return_sequences={generation_config.num_return_sequences} is not supported by the cascade; "
            "call generate several times with num_return_sequences=1."
        )
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise CascadeValueError(
            f"hf_cascade generates one sequence at a time (batch size 1); got input_ids of shape "
            f"{tuple(input_ids.shape)}. Call generate once per prompt."
        )
    if input_ids.shape[1] == 0:
        raise CascadeValueError(
            "hf_cascade needs at least one input token; pass input_ids (inputs_embeds alone are not supported)."
        )
    if generation_config.prompt_lookup_num_tokens is not None:
        raise CascadeValueError(
            "prompt_lookup_num_tokens selects transformers' own prompt lookup, which conflicts with the cascade; "
            "remove it (Max-Gram, CascadeConfig.use_max_gram, plays that role)."
        )
    for flag in ("output_attentions", "output_hidden_states"):
        if getattr(generation_config, flag, False) and generation_config.return_dict_in_generate:
            raise CascadeValueError(
                f"{flag}=True is not supported by the cascade; output_scores and output_logits are."
            )
    mask = model_kwargs.get("attention_mask")
    if not is_encoder_decoder and mask is not None and not bool((mask == 1).all()):
        raise CascadeValueError(
            "attention_mask contains padding (zeros); the cascade generates one unpadded sequence. Remove the padding."
        )
