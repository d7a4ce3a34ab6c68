"""The `generate` entry point: a transformers `custom_generate` callable running the target's exact review."""

from __future__ import annotations

import copy
import functools
import inspect
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import (
    EosTokenCriteria,
    MaxLengthCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput, GenerationMixin

from .batch import check_batch, generate_batch, is_batch
from .cascade import CascadeDrafter, DraftSettings
from .checks import check_assistants, check_cascade_config, check_generation, vocab_size
from .config import CascadeConfig
from .cost import forward_cost_model
from .drafter_packing import DrafterPacking, packed_drafters
from .errors import CascadeTypeError, CascadeValueError
from .memory import MaxGramMemory, check_memory
from .runner import ModelRunner
from .stats import CascadeStats, LevelStats
from .step import target_step

__all__ = [
    "CascadeDecoderOnlyOutput",
    "CascadeEncoderDecoderOutput",
    "check_call_arguments",
    "disable",
    "enable",
    "generate",
    "run_cascade",
]


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
    max_gram_memory: MaxGramMemory | None = None,
    **model_kwargs: Any,
) -> torch.LongTensor | CascadeDecoderOnlyOutput | CascadeEncoderDecoderOutput:
    """Cascade Speculative Drafting, as a `custom_generate` callable for `model.generate`.

    ```python
    out = target.generate(**inputs, custom_generate=hf_cascade.generate, assistant_models=[d1, d2],
                          cascade_config=hf_cascade.CascadeConfig(lenience=2), max_new_tokens=64)
    ```

    The target reviews every draft exactly: greedy output equals `target.generate(..., do_sample=False)` token for
    token, and sampled output follows the target's distribution (with its logits processors).

    Prefer `hf_cascade.enable(model)` when you stream or use stop strings. transformers 5 calls a callable
    `custom_generate` only with the keyword arguments new in its signature and drops `tokenizer=`, `streamer=`,
    `assistant_model=` and `synced_gpus=` on the way (`GenerationMixin._extract_generation_mode_kwargs`):

    - `stop_strings=` cannot work on this path: transformers needs `tokenizer=` to build its `StopStringCriteria`,
      finds none and raises "could not locate a tokenizer" before the cascade runs. An enabled model builds the
      criterion itself; here, pass `stopping_criteria=[StopStringCriteria(tokenizer, stop_strings)]` instead.
    - `streamer=`, `assistant_model=` and `synced_gpus=` are recovered from the running `model.generate` call (see
      `_generate_call_arguments`): the streamer is used, the other two are refused. Should a future transformers
      change that call, `streamer=` would get only the prompt again; `cascade_streamer=` and `enable()` do not
      depend on it.

    Args:
        model (`PreTrainedModel`): the target (passed by `generate`).
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): prompts, left-padded (with
            `attention_mask`) when `batch_size > 1`, or decoder start ids for encoder-decoders (whose right-padded
            encoder input and mask `generate` passes on). More than one row, or a padded row, runs the batched cascade
            (`hf_cascade.batch`): each row drafts, is reviewed and stops on its own.
        logits_processor (`LogitsProcessorList`): prepared by `generate`; applied to every model's logits.
        stopping_criteria (`StoppingCriteriaList`): prepared by `generate`; checked after every new token.
        generation_config (`GenerationConfig`): prepared by `generate`. `stop_strings` needs a `StopStringCriteria`
            in `stopping_criteria` (as `enable()` provides), otherwise `CascadeValueError`.
        synced_gpus (`bool`): must be `False`.
        streamer (`BaseStreamer`, *optional*): for direct calls; `model.generate` never passes it to a callable.
        inputs_tensor (`torch.Tensor`, *optional*): encoder input (passed by `generate`).
        assistant_models (`list[PreTrainedModel]`, *optional*): neural drafters, largest first. Empty or `None` with
            Max-Gram on is target + Max-Gram.
        cascade_config (`CascadeConfig` or `dict`, *optional*): k-matrix, lenience and Max-Gram settings.
        cascade_streamer (`BaseStreamer`, *optional*): receives the prompt, then tokens as the target accepts them,
            then `end()`. `hf_cascade.enable(model)` maps `streamer=` to this argument for you; passing both refuses.
        max_gram_memory (`MaxGramMemory`, *optional*): earlier outputs and documents Max-Gram also copies from when
            the call's own text has no (longer) match. The call's new tokens are added to it when the call ends, so
            the next call can copy from them. Changes drafts, never the output.
        model_kwargs: the rest of `generate`'s model kwargs (`cache`, `attention_mask`, `encoder_outputs`, ...).

    Returns:
        `torch.LongTensor` of shape `(batch_size, total_length)` (rows that stopped early right-padded with
        `pad_token_id`, as plain batched `generate` pads them), or with `return_dict_in_generate=True` a
        `CascadeDecoderOnlyOutput` / `CascadeEncoderDecoderOutput` whose `cascade_stats` holds per-model statistics
        (and per-row records in `cascade_stats.rows` for a batch, whose output has no `cache`).
    """
    t0 = time.perf_counter()
    call = _generate_call_arguments()  # {} unless transformers' generate is running us as custom_generate
    streamer = check_call_arguments(
        call.get("assistant_model"),
        bool(synced_gpus or call.get("synced_gpus")),
        streamer if streamer is not None else call.get("streamer"),
        cascade_streamer,
    )
    # transformers has already put the prompt into a streamer it was given: only our own arguments need it.
    prompt_streamed = streamer is not None and streamer is call.get("streamer")
    config = check_cascade_config(cascade_config)
    assistants = check_assistants(model, assistant_models)
    is_encoder_decoder = bool(model.config.is_encoder_decoder)
    check_generation(input_ids, generation_config, model_kwargs, is_encoder_decoder)
    _check_stop_strings(generation_config, stopping_criteria)
    if not assistants and not config.use_max_gram:
        raise CascadeValueError(
            "The cascade has no drafter: pass assistant_models=[...] or keep CascadeConfig.use_max_gram=True."
        )

    with packed_drafters(assistants, model, config.pack_drafters) as packing:
        vocab = vocab_size(model)
        memory = check_memory(max_gram_memory, config.use_max_gram, vocab)
        settings = DraftSettings.from_config(
            config, len(assistants), generation_config, logits_processor, vocab, input_ids.device
        )
        other_criteria = StoppingCriteriaList(
            c for c in stopping_criteria if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))
        )
        return_dict = generation_config.return_dict_in_generate
        output_cls = CascadeEncoderDecoderOutput if is_encoder_decoder else CascadeDecoderOnlyOutput
        if is_batch(input_ids, model_kwargs, is_encoder_decoder):
            check_batch(
                model,
                assistants,
                generation_config,
                model_kwargs,
                streamer,
                input_ids.shape[0],
                settings,
                other_criteria,
            )
            sequences, stats = generate_batch(
                model,
                input_ids,
                assistants,
                settings,
                generation_config,
                other_criteria,
                model_kwargs,
                inputs_tensor=inputs_tensor if is_encoder_decoder else None,
                memory=memory,
            )
            _record_packing(stats, packing)
            return output_cls(sequences=sequences, cascade_stats=stats) if return_dict else sequences

        encoder_mask = model_kwargs.get("attention_mask") if is_encoder_decoder else None
        target_stats = LevelStats("target", "target")
        target = ModelRunner(
            model,
            target_stats,
            cache=model_kwargs.get("cache"),  # reused and returned like plain generate's (a new one when None)
            encoder_outputs=model_kwargs.get("encoder_outputs"),
            encoder_attention_mask=encoder_mask,
            cost=forward_cost_model(model, config.max_gram, bool(generation_config.do_sample)),
        )
        drafter = CascadeDrafter.build(
            input_ids,
            assistants,
            settings,
            inputs_tensor=inputs_tensor if is_encoder_decoder else None,
            encoder_attention_mask=encoder_mask,
            target_cost=target.cost,
            memory=memory,
        )
        stats = CascadeStats(levels=[target_stats, *drafter.stats])
        _record_packing(stats, packing)
        do_sample = bool(generation_config.do_sample)
        max_length = generation_config.max_length
        scores: list[torch.Tensor] | None = [] if return_dict and generation_config.output_scores else None
        raw_logits: list[torch.Tensor] | None = [] if return_dict and generation_config.output_logits else None
        if streamer is not None and not prompt_streamed:
            streamer.put(input_ids.cpu())

        prompt_length = input_ids.shape[1]
        finished = len(drafter.ids) >= max_length
        while not finished:
            start = len(drafter.ids)
            draft, q = drafter.draft(cap=max_length - 1)  # the target adds one token: stay within max_length
            logits = target.logits(drafter.ids, start - 1, start + len(draft))
            kept, step_scores, finished = target_step(
                drafter, target, logits, draft, q, do_sample, other_criteria, max_length
            )
            if scores is not None:
                scores.extend(step_scores[i : i + 1] for i in range(len(kept)))
            if raw_logits is not None:
                raw_logits.extend(logits[i : i + 1].float() for i in range(len(kept)))
            if streamer is not None:
                streamer.put(torch.tensor(kept))

        if streamer is not None:
            streamer.end()
        sequences = torch.tensor([drafter.ids], dtype=input_ids.dtype, device=input_ids.device)
        # The cache as plain generate leaves it (the caller's own when passed): every token but the last, none rejected.
        cache = target.release(sequences.shape[1] - 1)
        stats.new_tokens = sequences.shape[1] - prompt_length
        if memory is not None:
            memory.add(drafter.ids[prompt_length:])
        stats.wall_time_s = time.perf_counter() - t0
        if not return_dict:
            return sequences
        return output_cls(
            sequences=sequences,
            scores=tuple(scores) if scores is not None else None,
            logits=tuple(raw_logits) if raw_logits is not None else None,
            cache=cache,
            cascade_stats=stats,
        )


def _record_packing(stats: CascadeStats, packing: list[DrafterPacking]) -> None:
    """Copy what `packed_drafters` did into the assistants' `LevelStats` (`packed_layers`, `packing`, `packing_s`)."""
    for level, record in zip(stats.levels[1 : 1 + len(packing)], packing, strict=True):
        level.packed_layers, level.packing, level.packing_s = record.layers, record.note, record.seconds


def check_call_arguments(
    assistant_model: Any, synced_gpus: bool, streamer: BaseStreamer | None, cascade_streamer: BaseStreamer | None
) -> BaseStreamer | None:
    """Refuse the `generate` arguments the cascade cannot honour; return the one streamer to use.

    Shared by every entry point (`generate`, `enable()`d models, `hub.hub_generate`), so each refuses the same way.

    Args:
        assistant_model (`PreTrainedModel` or `None`): transformers' single drafter; must be `None`.
        synced_gpus (`bool`): must be `False`.
        streamer (`BaseStreamer`, *optional*): the caller's `streamer=`.
        cascade_streamer (`BaseStreamer`, *optional*): the caller's `cascade_streamer=`.

    Returns:
        `BaseStreamer` or `None`: whichever of the two streamers was given.
    """
    if assistant_model is not None:
        raise CascadeValueError(
            f"assistant_model ({type(assistant_model).__name__}, transformers' single-drafter assisted generation) "
            "cannot be combined with the cascade; put the model in assistant_models=[...] instead (largest first)."
        )
    if synced_gpus:
        raise CascadeValueError(
            "synced_gpus=True is not supported by the cascade, which generates on one process; remove it."
        )
    if streamer is not None and cascade_streamer is not None:
        raise CascadeValueError(
            "Got both streamer= and cascade_streamer=; pass the streamer once (either name), not both."
        )
    return streamer if streamer is not None else cascade_streamer


def _check_stop_strings(generation_config: GenerationConfig, stopping_criteria: StoppingCriteriaList) -> None:
    """Refuse `stop_strings` that have no `StopStringCriteria` to honour them, rather than ignore them."""
    if generation_config.stop_strings is None or any(isinstance(c, StopStringCriteria) for c in stopping_criteria):
        return
    raise CascadeValueError(
        f"stop_strings={generation_config.stop_strings!r} reached hf_cascade.generate without a tokenizer to turn "
        "them into a stopping criterion: transformers does not pass tokenizer= to a callable custom_generate. Call "
        "hf_cascade.enable(model) and pass stop_strings= and tokenizer= with the cascade arguments (the wrapper "
        "builds the criterion), or pass stopping_criteria=[StopStringCriteria(tokenizer, stop_strings)] yourself."
    )


# The code object of transformers' `GenerationMixin.generate`, under its decorators: identifies its frame.
_TRANSFORMERS_GENERATE_CODE = getattr(inspect.unwrap(GenerationMixin.generate), "__code__", None)
_DROPPED_ARGUMENTS = ("assistant_model", "streamer", "synced_gpus")


def _generate_call_arguments() -> dict[str, Any]:
    """`assistant_model`, `streamer` and `synced_gpus` of the `model.generate` call now running `generate`.

    transformers 5.x hands a callable `custom_generate` only the keyword arguments that are new in its signature
    (`GenerationMixin._extract_generation_mode_kwargs`), so these three never arrive although the caller passed
    them: a drafter would be silently unused, a streamer would get the prompt (transformers puts it) but never
    `end()`. They are still local variables of the calling `GenerationMixin.generate` frame, which is read here:
    only that frame (matched by its code object, a few frames up: `torch.no_grad` wraps `generate`), and only when
    its `custom_generate` is `generate` itself.

    Returns:
        `dict[str, Any]` with the three values, or `{}` when `generate` was called any other way (directly, or by a
        transformers whose `generate` looks different).
    """
    frame = sys._getframe(1)
    try:
        for _ in range(4):
            if frame is None:
                break
            if frame.f_code is _TRANSFORMERS_GENERATE_CODE:
                local = frame.f_locals
                if local.get("custom_generate") is generate:
                    return {name: local.get(name) for name in _DROPPED_ARGUMENTS}
                break
            frame = frame.f_back
        return {}
    finally:
        del frame  # a frame reference held in a local keeps the whole stack alive


def _stop_strings_as_criterion(model: PreTrainedModel, kwargs: dict[str, Any]) -> None:
    """Move `stop_strings` (with `tokenizer=`) into `kwargs["stopping_criteria"]` as a `StopStringCriteria`, in place.

    transformers builds that criterion in `generate` from `generation_config.stop_strings` and `tokenizer=`, but
    drops `tokenizer=` before a callable `custom_generate` and then raises "could not locate a tokenizer". Here the
    stop strings are resolved as `generate` would (the `stop_strings=` argument, else the `generation_config=`
    argument's, else the model's default), the criterion is built from them, and `generate` is told there are none
    (an explicit `stop_strings=None` overrides every source). Without a tokenizer nothing changes, so transformers
    raises its own "pass the tokenizer" error exactly as plain `generate` would.
    """
    tokenizer = kwargs.pop("tokenizer", None)
    config = kwargs.get("generation_config")
    if "stop_strings" in kwargs:
        stop_strings = kwargs["stop_strings"]
    elif config is not None and config.stop_strings is not None:
        stop_strings = config.stop_strings
    else:
        stop_strings = model.generation_config.stop_strings
    if stop_strings is None or tokenizer is None:
        return
    if config is not None and config.stop_strings is not None:
        kwargs["generation_config"] = config = copy.deepcopy(config)
        config.stop_strings = None
    if "stop_strings" in kwargs or model.generation_config.stop_strings is not None:
        kwargs["stop_strings"] = None  # not added needlessly: generate warns about kwargs beside generation_config
    criterion = StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings)
    kwargs["stopping_criteria"] = StoppingCriteriaList([*(kwargs.get("stopping_criteria") or ()), criterion])


def run_cascade(model: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
    """`model.generate(*args, **kwargs)` through the cascade, given every argument of the call.

    The entry points that see the whole call (`enable()`d models, `hub.hub_generate`) come here: it refuses
    `assistant_model=` and `synced_gpus=True`, maps `streamer=` to `cascade_streamer=`, turns `stop_strings=` with
    `tokenizer=` into a stopping criterion (transformers would drop the tokenizer), and calls the class's
    `generate` with `custom_generate=hf_cascade.generate`.

    Args:
        model (`PreTrainedModel`): the target.
        args: `generate`'s positional arguments (`inputs`, ...).
        kwargs: `generate`'s keyword arguments, the cascade's own (`assistant_models`, `cascade_config`,
            `cascade_streamer`) included.

    Returns:
        What `generate` returns (see `hf_cascade.generate`).
    """
    streamer = check_call_arguments(
        kwargs.pop("assistant_model", None),
        bool(kwargs.pop("synced_gpus", None)),
        kwargs.pop("streamer", None),
        kwargs.pop("cascade_streamer", None),
    )
    if streamer is not None:  # generate() would not hand streamer= to a callable custom_generate
        kwargs["cascade_streamer"] = streamer
    _stop_strings_as_criterion(model, kwargs)
    # The class's generate, not `model.generate`: an instance-level replacement (`enable`'s, or a custom_generate
    # repository's when the model was loaded from one) would otherwise recurse or refuse.
    return type(model).generate(model, *args, custom_generate=generate, **kwargs)


def _enabled_generate(
    model: PreTrainedModel,
    previous: Any,
    /,
    *args: Any,
    assistant_models: Any = None,
    cascade_config: Any = None,
    **kwargs: Any,
) -> Any:
    """`model.generate` of an `enable()`d model; `enable` binds `model` and `previous` with `functools.partial`.

    A module-level function over the model (not a closure over its bound `generate`), so that `copy.deepcopy`
    rebinds it to the copy and pickle stores it by name: copies generate with their own weights, enabled models
    pickle like any model.
    """
    plain = previous if previous is not None else functools.partial(type(model).generate, model)
    if assistant_models is None and cascade_config is None and kwargs.get("max_gram_memory") is None:
        return plain(*args, **kwargs)
    custom = kwargs.pop("custom_generate", None)
    if custom is not None and custom is not generate:  # the caller's own choice (e.g. a Hub repo): hand over as is
        return plain(
            *args, custom_generate=custom, assistant_models=assistant_models, cascade_config=cascade_config, **kwargs
        )
    return run_cascade(model, *args, assistant_models=assistant_models, cascade_config=cascade_config, **kwargs)


def _enabled_partial(model: PreTrainedModel) -> functools.partial | None:
    """`enable`'s `model.generate` if `model` is enabled, else `None`."""
    bound = vars(model).get("generate")
    return bound if isinstance(bound, functools.partial) and bound.func is _enabled_generate else None


def enable(model: PreTrainedModel) -> PreTrainedModel:
    """Let `model.generate` take `assistant_models=`, `cascade_config=` and `max_gram_memory=` directly.

    Calls that pass any of them run the cascade (`hf_cascade.generate`); all other calls go to the original
    `generate` unchanged. Because the wrapper sees every argument before transformers does, it supports what the
    bare `custom_generate=hf_cascade.generate` path cannot: `streamer=` (forwarded as `cascade_streamer`; passing
    both refuses) and `stop_strings=` with `tokenizer=`. `assistant_model=` (singular) and `synced_gpus=True` are
    refused.

    Only this model instance is affected (pipelines built on it included); `copy.deepcopy` of an enabled model is an
    enabled copy that generates with its own weights, and enabled models pickle (`torch.save`) like any model.
    Enabling twice is a no-op; `disable(model)` undoes it.

    Args:
        model (`PreTrainedModel`): the target model.

    Returns:
        The same model, for chaining.
    """
    if not isinstance(model, PreTrainedModel):
        raise CascadeTypeError(f"hf_cascade.enable expects a transformers PreTrainedModel, got {type(model).__name__}.")
    if _enabled_partial(model) is None:
        # An instance-level generate already there (transformers sets one for a model loaded from a custom_generate
        # repository) keeps serving the calls without cascade arguments.
        model.generate = functools.partial(_enabled_generate, model, vars(model).get("generate"))
    return model


def disable(model: PreTrainedModel) -> PreTrainedModel:
    """Undo `enable(model)`; a no-op on a model that was not enabled."""
    bound = _enabled_partial(model)
    if bound is not None:
        previous = bound.args[1]
        if previous is None:
            del model.generate
        else:
            model.generate = previous
    return model
