"""The `generate` entry point: a transformers `custom_generate` callable running the target's exact review."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput

from .cascade import CascadeDrafter, DraftSettings
from .checks import check_assistants, check_cascade_config, check_generation, vocab_size
from .config import CascadeConfig
from .cost import cost_model_for
from .errors import CascadeTypeError, CascadeValueError
from .runner import ModelRunner, new_cache
from .stats import CascadeStats, LevelStats
from .verification import review

__all__ = ["CascadeDecoderOnlyOutput", "CascadeEncoderDecoderOutput", "disable", "enable", "generate"]


@dataclass
class CascadeDecoderOnlyOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus `cascade_stats` (`CascadeStats`)."""

    cascade_stats: CascadeStats | None = None


@dataclass
class CascadeEncoderDecoderOutput(GenerateEncoderDecoderOutput):
    """`GenerateEncoderDecoderOutput` plus `cascade_stats` (`CascadeStats`)."""

    cascade_stats: CascadeStats | None = None


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer: BaseStreamer | None = None,
    inputs_tensor: torch.Tensor | None = None,
    assistant_models: list[PreTrainedModel] | None = None,
    cascade_config: CascadeConfig | dict | None = None,
    cascade_streamer: BaseStreamer | None = None,
    **model_kwargs: Any,
) -> torch.LongTensor | CascadeDecoderOnlyOutput | CascadeEncoderDecoderOutput:
    """Cascade Speculative Drafting, as a `custom_generate` callable for `model.generate`.

    ```python
    out = target.generate(**inputs, custom_generate=hf_cascade.generate, assistant_models=[d1, d2],
                          cascade_config=hf_cascade.CascadeConfig(lenience=2), max_new_tokens=64)
    ```

    The target reviews every draft exactly: greedy output equals `target.generate(..., do_sample=False)` token for
    token, and sampled output follows the target's distribution (with its logits processors).

    Args:
        model (`PreTrainedModel`): the target (passed by `generate`).
        input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): prompt, or decoder start for encoder-decoders.
        logits_processor (`LogitsProcessorList`): prepared by `generate`; applied to every model's logits.
        stopping_criteria (`StoppingCriteriaList`): prepared by `generate`; checked after every new token.
        generation_config (`GenerationConfig`): prepared by `generate`.
        synced_gpus (`bool`): must be `False`.
        streamer (`BaseStreamer`): never passed by `generate` to a callable; use `cascade_streamer`.
        inputs_tensor (`torch.Tensor`, *optional*): encoder input (passed by `generate`).
        assistant_models (`list[PreTrainedModel]`, *optional*): neural drafters, largest first. Empty or `None` with
            Max-Gram on is target + Max-Gram.
        cascade_config (`CascadeConfig` or `dict`, *optional*): k-matrix, lenience and Max-Gram settings.
        cascade_streamer (`BaseStreamer`, *optional*): receives the prompt, then tokens as the target accepts them.
            `generate` does not hand `streamer=` to a callable `custom_generate`; `hf_cascade.enable(model)` maps
            `streamer=` to this argument for you.
        model_kwargs: the rest of `generate`'s model kwargs (`cache`, `attention_mask`, `encoder_outputs`, ...).

    Returns:
        `torch.LongTensor` of shape `(1, total_length)`, or with `return_dict_in_generate=True` a
        `CascadeDecoderOnlyOutput` / `CascadeEncoderDecoderOutput` whose `cascade_stats` holds per-model statistics.
    """
    t0 = time.perf_counter()
    config = check_cascade_config(cascade_config)
    assistants = check_assistants(model, assistant_models)
    is_encoder_decoder = bool(model.config.is_encoder_decoder)
    check_generation(input_ids, generation_config, model_kwargs, is_encoder_decoder)
    if synced_gpus:
        raise CascadeValueError("synced_gpus=True is not supported by the cascade.")
    if not assistants and not config.use_max_gram:
        raise CascadeValueError(
            "The cascade has no drafter: pass assistant_models=[...] or keep CascadeConfig.use_max_gram=True."
        )

    encoder_mask = model_kwargs.get("attention_mask") if is_encoder_decoder else None
    target_stats = LevelStats("target", "target")
    cache = model_kwargs.get("cache")
    if cache is None:
        cache = new_cache(model)
    else:
        cache.activate_past_recording()
    target = ModelRunner(
        model,
        target_stats,
        cache=cache,
        encoder_outputs=model_kwargs.get("encoder_outputs"),
        encoder_attention_mask=encoder_mask,
        cost=cost_model_for(model.device, config.max_gram, bool(generation_config.do_sample)),
    )
    settings = DraftSettings.from_config(
        config, len(assistants), generation_config, logits_processor, vocab_size(model), input_ids.device
    )
    drafter = CascadeDrafter.build(
        input_ids,
        assistants,
        settings,
        inputs_tensor=inputs_tensor if is_encoder_decoder else None,
        encoder_attention_mask=encoder_mask,
        target_cost=target.cost,
    )
    stats = CascadeStats(levels=[target_stats, *drafter.stats])
    do_sample = bool(generation_config.do_sample)
    max_length = generation_config.max_length
    other_criteria = StoppingCriteriaList(
        c for c in stopping_criteria if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))
    )
    return_dict = generation_config.return_dict_in_generate
    scores: list[torch.Tensor] | None = [] if return_dict and generation_config.output_scores else None
    raw_logits: list[torch.Tensor] | None = [] if return_dict and generation_config.output_logits else None
    streamer = cascade_streamer
    if streamer is not None:
        streamer.put(input_ids.cpu())

    prompt_length = input_ids.shape[1]
    finished = len(drafter.ids) >= max_length
    while not finished:
        start = len(drafter.ids)
        draft, q = drafter.draft(cap=max_length - 1)  # the target adds one token: stay within max_length
        logits = target.logits(drafter.ids, start - 1, start + len(draft))
        step_scores = drafter.process(logits, start - 1)
        draft_t = torch.tensor(draft, dtype=torch.long, device=drafter.device)
        n, next_token, _ = review(step_scores, draft_t, q, lenience=1.0, do_sample=do_sample)  # exact, always
        target.truncate_to(start + n)
        kept, finished = _stop_within(draft[:n] + [next_token], drafter, other_criteria, step_scores)
        drafter.advance(kept)
        finished = finished or len(drafter.ids) >= max_length
        if scores is not None:
            scores.extend(step_scores[i : i + 1] for i in range(len(kept)))
        if raw_logits is not None:
            raw_logits.extend(logits[i : i + 1].float() for i in range(len(kept)))
        if streamer is not None:
            streamer.put(torch.tensor(kept))

    if streamer is not None:
        streamer.end()
    sequences = torch.tensor([drafter.ids], dtype=input_ids.dtype, device=input_ids.device)
    stats.new_tokens = sequences.shape[1] - prompt_length
    stats.wall_time_s = time.perf_counter() - t0
    if not return_dict:
        return sequences
    output_cls = CascadeEncoderDecoderOutput if is_encoder_decoder else CascadeDecoderOnlyOutput
    return output_cls(
        sequences=sequences,
        scores=tuple(scores) if scores is not None else None,
        logits=tuple(raw_logits) if raw_logits is not None else None,
        cache=target.cache,
        cascade_stats=stats,
    )


def _stop_within(
    kept: list[int], drafter: CascadeDrafter, criteria: StoppingCriteriaList, step_scores: torch.Tensor
) -> tuple[list[int], bool]:
    """Cut `kept` at the first token after which generation stops (EOS or a user criterion), as plain decoding would.

    Args:
        kept (`list[int]`): the tokens the target's review yields after the committed prefix.
        drafter (`CascadeDrafter`): gives the committed prefix, the EOS tokens and the device.
        criteria (`StoppingCriteriaList`): the user's criteria (max length and EOS are handled here and by the loop).
        step_scores (`torch.FloatTensor` of shape `(len(kept), vocab_size)` or more rows): the target's scores, row
            `i` for `kept[i]`.

    Returns:
        `(kept, finished)`.
    """
    eos = drafter.eos
    sequence = None
    for i, token in enumerate(kept):
        if token in eos:
            return kept[: i + 1], True
        if criteria:
            if sequence is None:
                prefix = drafter.ids[: drafter.committed] + kept
                sequence = torch.tensor([prefix], dtype=torch.long, device=drafter.device)
            length = drafter.committed + i + 1
            if bool(criteria(sequence[:, :length], step_scores[i : i + 1]).any()):
                return kept[: i + 1], True
    return kept, False


def enable(model: PreTrainedModel) -> PreTrainedModel:
    """Let `model.generate` take `assistant_models=` and `cascade_config=` directly.

    Calls that pass either argument run `hf_cascade.generate` (with `streamer=` forwarded as `cascade_streamer`);
    all other calls go to the original `generate` unchanged. Only this model instance is affected (pipelines built
    on it included); `disable(model)` undoes it.

    Args:
        model (`PreTrainedModel`): the target model.

    Returns:
        The same model, for chaining.
    """
    if not isinstance(model, PreTrainedModel):
        raise CascadeTypeError(f"hf_cascade.enable expects a transformers PreTrainedModel, got {type(model).__name__}.")
    if "_hf_cascade_generate" in vars(model):
        return model
    original = model.generate

    @functools.wraps(original)
    def generate_with_cascade(*args: Any, assistant_models: Any = None, cascade_config: Any = None, **kwargs: Any):
        if assistant_models is None and cascade_config is None:
            return original(*args, **kwargs)
        custom = kwargs.pop("custom_generate", None)
        if custom is not None and custom is not generate:  # the caller's own choice (e.g. a Hub repo): hand over as is
            return original(
                *args,
                custom_generate=custom,
                assistant_models=assistant_models,
                cascade_config=cascade_config,
                **kwargs,
            )
        if kwargs.get("assistant_model") is not None:
            raise CascadeValueError(
                "assistant_model (transformers' single-drafter assisted generation) cannot be combined with the "
                "cascade; put the model in assistant_models=[...] instead."
            )
        if "streamer" in kwargs:  # generate() would not hand it to a callable custom_generate
            kwargs["cascade_streamer"] = kwargs.pop("streamer")
        return original(
            *args, custom_generate=generate, assistant_models=assistant_models, cascade_config=cascade_config, **kwargs
        )

    model.generate = generate_with_cascade
    model._hf_cascade_generate = original
    return model


def disable(model: PreTrainedModel) -> PreTrainedModel:
    """Undo `enable(model)`; a no-op on a model that was not enabled."""
    if "_hf_cascade_generate" in vars(model):
        del model.generate
        del model._hf_cascade_generate
    return model
