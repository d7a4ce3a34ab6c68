"""Fail-fast validation of a cascade `generate` call: unsupported input never silently changes the output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.cache_utils import get_layer_types_and_kwargs

from .config import CascadeConfig
from .errors import CascadeTypeError, CascadeValueError

__all__ = [
    "check_assistants",
    "check_cascade_config",
    "check_generation",
    "check_rollback",
    "refuse_stateful",
    "vocab_size",
]

# transformers cache layer types holding a recurrent (Mamba / linear-attention) state: `crop` cannot roll it back.
_RECURRENT_LAYER_TYPES = frozenset({"linear_attention", "hybrid", "hybrid_sliding"})


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


def refuse_stateful(model: torch.nn.Module, name: str, what: str) -> CascadeValueError:
    """The error for a model whose state cannot be rolled back after a rejected draft.

    Args:
        model (`torch.nn.Module`): the model.
        name (`str`): how the call names it (`"the target"`, `"assistant_models[0]"`).
        what (`str`): what it has that cannot be rolled back.
    """
    return CascadeValueError(
        f"{name} ({type(model).__name__}) has {what}, so a rejected draft cannot be rolled back. CS Drafting "
        "needs models whose KV cache can be cropped (attention layers only, possibly sliding-window); state-space, "
        "linear-attention and other recurrent models cannot be a target or an assistant."
    )


def check_rollback(model: torch.nn.Module, name: str) -> None:
    """Refuse, before any forward pass, a model whose cache cannot drop rejected draft tokens.

    Models that build their own cache (MiniMax, RWKV, xLSTM, Reformer, XLNet) or whose layers keep a recurrent state
    (Mamba, Jamba, Falcon-H1, Qwen3-Next, RecurrentGemma, ...) are refused here; `ModelRunner` still checks the
    cache after the first forward pass for layers that only then know whether they can roll back.

    Args:
        model (`torch.nn.Module`): a target or assistant model.
        name (`str`): how the error names it (`"the target"`, `"assistant_models[0]"`).
    """
    supports_dynamic_cache = getattr(model, "_supports_default_dynamic_cache", None)
    if supports_dynamic_cache is not None and not supports_dynamic_cache():
        raise refuse_stateful(model, name, "its own cache type instead of a transformers DynamicCache")
    try:
        layer_types = get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))[0]
    except (AttributeError, KeyError, TypeError, ValueError):  # an unusual config: the check after prefill decides
        return
    recurrent = sorted(set(layer_types) & _RECURRENT_LAYER_TYPES)
    if recurrent:
        raise refuse_stateful(model, name, f"recurrent layers (layer types {', '.join(recurrent)})")
    if set(layer_types) <= {"conv", "dummy"}:
        raise refuse_stateful(model, name, "no attention layer (convolution layers only)")


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
        check_rollback(model, f"assistant_models[{i}]")
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
    if input_ids.dim() != 2:
        raise CascadeValueError(
            f"input_ids must have shape (batch_size, sequence_length); got shape {tuple(input_ids.shape)}."
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
