"""A neural model of the cascade together with its transformers KV cache, for one `generate` call."""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import Cache

from .cost import ForwardCostModel
from .errors import CascadeValueError
from .stats import LevelStats

__all__ = ["ModelRunner", "accepts_logits_to_keep", "new_cache"]


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether `model.forward` takes `logits_to_keep` (computing the output layer only where logits are read)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


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


class ModelRunner:
    """Runs forward passes of one model over the shared token sequence, reusing its KV cache.

    The cache always holds the keys/values of a prefix `ids[:cache_len]` of the sequence. When a review rejects
    draft tokens, the owner lowers `cache_len` (`truncate_to`) and the cache is cropped lazily at the next forward, so
    each token is encoded once per model unless it was rejected.

    Args:
        model (`PreTrainedModel`): the model.
        stats (`LevelStats`): where forward passes, tokens and time are counted.
        cache (`Cache`, *optional*): a cache to reuse (the target's, prepared by `generate`); a new one otherwise.
        encoder_outputs (`ModelOutput`, *optional*): encoder outputs for encoder-decoder models.
        encoder_attention_mask (`torch.LongTensor` of shape `(1, source_length)`, *optional*): encoder mask.
        cost (`ForwardCostModel`, *optional*): records the time of every forward pass by its number of tokens, for
            the Max-Gram drafts this model reviews.
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
        self.model = model
        self.stats = stats
        self.device = model.device
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        self.cache = cache if cache is not None else new_cache(model)
        self.cache_len = self.cache.get_seq_length()
        self.encoder_outputs = encoder_outputs
        self.encoder_attention_mask = encoder_attention_mask
        self.cost = cost
        self._logits_to_keep = accepts_logits_to_keep(model)
        self._checked_croppable = False

    def truncate_to(self, length: int) -> None:
        """The sequence was cut to `length` tokens: cached states past it are stale."""
        if self.cache_len > length:
            self.cache_len = length

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
        cached = self.cache.get_seq_length()
        if cached > start:
            self.cache.crop(start - cached)
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
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = end - first
        t0 = time.perf_counter()
        out = self.model(**kwargs)
        elapsed = time.perf_counter() - t0
        self.stats.forward_time_s += elapsed
        if self.cost is not None:
            self.cost.record(end - start, elapsed)
            costs = self.cost.costs()
            if self.cost.fitted:
                self.stats.draft_cost, self.stats.token_cost = costs
        self.stats.forward_passes += 1
        self.stats.forward_tokens += end - start
        self.cache = out.cache if getattr(out, "cache", None) is not None else self.cache
        if not self._checked_croppable:
            # Linear-attention layers only know after their first update whether they can roll back.
            if not getattr(self.cache, "is_croppable", True):
                raise CascadeValueError(
                    f"{type(self.model).__name__} uses a cache that cannot be cropped after a rejected draft "
                    "(linear attention or a fixed-size state); CS Drafting needs a croppable KV cache."
                )
            self._checked_croppable = True
        self.cache_len = end
        return out.logits[0, -(end - first) :]
