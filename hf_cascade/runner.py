"""A neural model of the cascade together with its transformers KV cache, for one `generate` call."""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

from .checks import check_rollback, refuse_stateful
from .cost import TIMING_CUDA, ForwardCostModel
from .stats import LevelStats

__all__ = [
    "ModelRunner",
    "RunnerBase",
    "accepts_logits_to_keep",
    "accepts_position_ids",
    "check_output_cache",
    "new_cache",
    "self_attention_layers",
    "timed_forward",
]


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether `model.forward` takes `logits_to_keep` (computing the output layer only where logits are read)."""
    return _accepts(model, "logits_to_keep")


def accepts_position_ids(model: torch.nn.Module) -> bool:
    """Whether `model.forward` takes `position_ids` (decoder-only models that place tokens where they are told)."""
    return _accepts(model, "position_ids")


def _accepts(model: torch.nn.Module, argument: str) -> bool:
    """Whether `model.forward` takes `argument`; a `forward(*args, **kwargs)` wrapper (a subclass that post-processes
    the output) takes what the next `forward` up its class hierarchy takes."""
    forwards = [model.forward, *(cls.__dict__["forward"] for cls in type(model).__mro__ if "forward" in cls.__dict__)]
    for forward in forwards:
        parameters = inspect.signature(forward).parameters
        if argument in parameters:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return False
    return False


def new_cache(model: torch.nn.Module) -> Cache:
    """A fresh croppable transformers cache for `model` (self-attention + cross-attention for encoder-decoders)."""
    config = model.config
    if config.is_encoder_decoder:
        cache: Cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    else:
        cache = DynamicCache(config=config)
    # Sliding-window layers must keep the states a rejected draft displaced, so they can be cropped back.
    cache.activate_past_recording()
    return cache


def self_attention_layers(cache: Cache) -> list[Any]:
    """The layers of `cache` holding the decoder's own keys/values (not an encoder-decoder's cross-attention)."""
    return getattr(cache, "self_attention_cache", cache).layers


def _is_sliding(layer: Any) -> bool:
    """A plain `DynamicSlidingWindowLayer` (subclasses may keep extra state: they roll back with their own `crop`)."""
    return type(layer) is DynamicSlidingWindowLayer and layer.is_initialized


class RunnerBase:
    """What every runner of a model knows: the model, its statistics and cost model, and which arguments its forward
    pass takes. Refuses, before any forward pass, a model whose cache cannot roll back.

    Args:
        model (`PreTrainedModel`): the model.
        stats (`LevelStats`): where forward passes, tokens and time are counted.
        cost (`ForwardCostModel`, *optional*): records the time of every forward pass by its number of tokens.
    """

    def __init__(self, model: torch.nn.Module, stats: LevelStats, cost: ForwardCostModel | None = None):
        self.model = model
        self.stats = stats
        self.device = model.device
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        # Before any forward pass and before touching the cache (a recurrent model's cache has no sequence length).
        self._label = "the target" if stats.kind == "target" else stats.name
        check_rollback(model, self._label)
        self.cost = cost
        if cost is not None:
            stats.timing = cost.timing
        self._logits_to_keep = accepts_logits_to_keep(model)
        # Plain `generate` passes 0-based positions to decoder-only models that take them; some (RoBERTa-style
        # embeddings) would otherwise count from their padding index and compute something else.
        self._position_ids = not self.is_encoder_decoder and accepts_position_ids(model)
        self._checked_croppable = False


class ModelRunner(RunnerBase):
    """Runs forward passes of one model over the shared token sequence, reusing its KV cache.

    The cache always holds the keys/values of a prefix `ids[:cache_len]` of the sequence. When a review rejects
    draft tokens, the owner lowers `cache_len` (`truncate_to`) and the cache is cropped lazily at the next forward, so
    each token is encoded once per model unless it was rejected. The owner calls `commit` when tokens become final,
    and `release` to hand the cache back exactly as plain `generate` would leave it.

    Sliding-window layers are rolled back here rather than with transformers' `crop`: `crop` also shrinks a layer
    to the `sliding_window - 1` states the *next* token needs, which is all transformers' assisted decoding ever asks
    of it (it crops once per step, never below the previous crop). A cascade can roll a drafter back twice in one
    step (a drafter's own review, then the target's), the second time to before the first: the states `crop` dropped
    are then missing and attention fails on mismatched shapes. So sliding layers keep every state a later rollback
    can need, back to `commit`'s point, and drop the rest only there.

    Args:
        model (`PreTrainedModel`): the model.
        stats (`LevelStats`): where forward passes, tokens and time are counted.
        cache (`Cache`, *optional*): a cache to reuse (the target's, prepared by `generate`); a new one otherwise.
        encoder_outputs (`ModelOutput`, *optional*): encoder outputs for encoder-decoder models.
        encoder_attention_mask (`torch.LongTensor` of shape `(1, source_length)`, *optional*): encoder mask.
        cost (`ForwardCostModel`, *optional*): records the time of every forward pass by its number of tokens
            (host wall time, or CUDA events as `cost.timing` says), for the drafts this model reviews and the
            draft-length controller.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        stats: LevelStats,
        cache: Cache | None = None,
        encoder_outputs: Any = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cost: ForwardCostModel | None = None,
    ):
        super().__init__(model, stats, cost)
        fresh = cache is None
        self.cache = new_cache(model) if fresh else cache
        # Layers keep what a rollback needs only while they record their past; `release` restores the caller's flags.
        self._recorded = [False if fresh else getattr(layer, "record_past", False) for layer in self._layers()]
        self.cache.activate_past_recording()
        self.cache_len = self.cache.get_seq_length()
        self._floor = 0  # no later forward starts before this position (see `commit`)
        self.encoder_outputs = encoder_outputs
        self.encoder_attention_mask = encoder_attention_mask

    def cached_length(self) -> int:
        """How many tokens of the sequence the cache holds (a forward from a later position first feeds the rest)."""
        return self.cache_len

    def truncate_to(self, length: int) -> None:
        """The sequence was cut to `length` tokens: cached states past it are stale."""
        if self.cache_len > length:
            self.cache_len = length

    def commit(self, length: int) -> None:
        """The first `length` tokens of the sequence are final: nothing before them will be truncated or re-read.

        Sliding-window layers then drop the states no later forward pass can attend to.

        Args:
            length (`int`): the committed sequence length; later calls ask for logits from position `length - 1`
                on and truncate to `length` or more.
        """
        self._floor = max(self._floor, min(length - 1, self.cache_len))
        self._trim()

    def release(self, length: int) -> Cache:
        """Crop the cache to the first `length` tokens and return it as plain `generate` leaves it.

        Sliding-window layers keep the last `sliding_window - 1` states and record their past again only if they did
        before this runner, so the cache can be reused for a follow-up turn by any `generate` call.

        Args:
            length (`int`): tokens the cache should hold (the sequence length minus one: the last token is never fed).

        Returns:
            The cache (`Cache`).
        """
        self._rewind(length)
        self.cache_len = min(self.cache_len, length)
        self._floor = max(self._floor, length)
        self._trim()
        for layer, recorded in zip(self._layers(), self._recorded, strict=False):
            if hasattr(layer, "record_past"):
                layer.record_past = recorded
        return self.cache

    def _layers(self) -> list[Any]:
        return self_attention_layers(self.cache)

    def _rewind(self, length: int) -> None:
        """Drop the cached states of positions `length ..` (rejected or stale draft tokens)."""
        remove = self.cache.get_seq_length() - length
        if remove <= 0:
            return
        for layer in self._layers():
            if _is_sliding(layer):
                # Not `layer.crop`: it would also drop the old states an earlier rollback point still needs.
                kept = layer.keys.shape[-2] - remove
                layer.keys = layer.keys[..., :kept, :]
                layer.values = layer.values[..., :kept, :]
                layer.cumulative_length -= remove
            else:
                layer.crop(-remove)

    def _trim(self) -> None:
        """Drop sliding-window states before `floor - sliding_window + 1`: outside every later query's window."""
        for layer in self._layers():
            if _is_sliding(layer):
                held_from = layer.cumulative_length - layer.keys.shape[-2]
                drop = self._floor - layer.sliding_window + 1 - held_from
                if drop > 0:
                    layer.keys = layer.keys[..., drop:, :]
                    layer.values = layer.values[..., drop:, :]

    @torch.no_grad()
    def logits(self, ids: Sequence[int], first: int, end: int) -> torch.Tensor:
        """Logits at positions `first .. end - 1` of `ids` (row `i` predicts token `first + i + 1`).

        Feeds only the tokens the cache does not hold yet, then records that the cache covers `ids[:end]`.

        Args:
            ids (`Sequence[int]`): the whole current sequence (decoder sequence for encoder-decoders).
            first (`int`): first position whose logits are needed (`>= 0`).
            end (`int`): one past the last position (`<= len(ids)`).

        Returns:
            `torch.FloatTensor` of shape `(end - first, vocab_size)` on the model's device, in the model's dtype.
        """
        start = min(self.cache_len, first)
        self._rewind(start)
        new = torch.tensor([list(ids[start:end])], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"cache": self.cache, "use_cache": True}
        if self.is_encoder_decoder:
            kwargs.update(
                decoder_input_ids=new,
                encoder_outputs=self.encoder_outputs,
                attention_mask=self.encoder_attention_mask,
            )
        else:
            kwargs["input_ids"] = new
            if self._position_ids:
                kwargs["position_ids"] = torch.arange(start, end, device=self.device)[None]
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = end - first
        out = timed_forward(self.model, kwargs, self.stats, self.cost, end - start, charged=end - first)
        if not self._checked_croppable:
            check_output_cache(out, self.model, self._label)
            self._checked_croppable = True
        self.cache = out.cache
        self.cache_len = end
        return out.logits[0, -(end - first) :]


def timed_forward(
    model: torch.nn.Module,
    kwargs: dict[str, Any],
    stats: LevelStats,
    cost: ForwardCostModel | None,
    num_tokens: int,
    charged: int | None = None,
    recorded: int | None = None,
) -> Any:
    """`model(**kwargs)`, its time and `num_tokens` (tokens fed) counted in `stats` and `cost`.

    Timed by host wall time, or with CUDA events read later (no synchronisation here) when `cost.timing` says so.

    Args:
        model (`torch.nn.Module`): the model.
        kwargs (`dict`): its forward arguments.
        stats (`LevelStats`): where the pass, its tokens and time are counted.
        cost (`ForwardCostModel`, *optional*): the model's cost curve, fitted to the timed passes.
        num_tokens (`int`): tokens fed (per row in a padded batch, in all in a packed pass).
        charged (`int`, *optional*): tokens the draft-length controller's clock charges the pass for (the rows
            whose logits are read); defaults to `recorded`.
        recorded (`int`, *optional*): the chunk size `cost` records the pass under; defaults to `num_tokens` (a
            packed pass of several rows records its tokens beyond one per row, plus one: `PackedRunner`).

    Returns:
        The model's output.
    """
    events = _cuda_events(cost, model.device)
    t0 = time.perf_counter()
    out = model(**kwargs)
    elapsed = time.perf_counter() - t0
    stats.forward_time_s += elapsed
    recorded = num_tokens if recorded is None else recorded
    if cost is not None:
        # The first pass reads the prompt and warms the kernels up: it says little about later passes.
        if events is not None and stats.forward_passes:
            events[1].record(torch.cuda.current_stream(model.device))
            cost.record_events(recorded, *events)
        elif stats.forward_passes:
            cost.record(recorded, elapsed)
        cost.charge(recorded if charged is None else charged)
        _report_costs(cost, stats)
    stats.forward_passes += 1
    stats.forward_tokens += num_tokens
    return out


def _cuda_events(cost: ForwardCostModel | None, device: torch.device) -> tuple[Any, Any] | None:
    """A recorded start event and an unrecorded end event when the model is timed with CUDA events."""
    if cost is None or cost.timing != TIMING_CUDA:
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(torch.cuda.current_stream(device))
    return start, end


def _report_costs(cost: ForwardCostModel, stats: LevelStats) -> None:
    """Copy the fitted relative and absolute costs into `stats` (when they come from timings)."""
    costs = cost.costs()
    if cost.fitted:
        stats.draft_cost, stats.token_cost = costs
    if cost.measured and cost.has_timings:
        unit, _, token = cost.absolute()
        stats.forward_s, stats.extra_token_s = unit, token


def check_output_cache(out: Any, model: torch.nn.Module, label: str) -> None:
    """Refuse a model whose first forward pass returned no cache, or one that cannot be cropped."""
    if getattr(out, "cache", None) is None:  # e.g. OpenAI GPT: every pass would have to re-read the sequence
        raise refuse_stateful(model, label, "no KV cache (its forward pass returns none)")
    # Linear-attention layers only know after their first update whether they can roll back.
    if not getattr(out.cache, "is_croppable", True):
        raise refuse_stateful(model, label, "a cache that cannot be cropped")
