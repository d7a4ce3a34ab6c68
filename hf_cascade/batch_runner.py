"""A neural model of the cascade running many rows at once over ONE transformers KV cache (batch size > 1), padded.

The batched cascade runs a model this way when it cannot pack the rows into one cache row
(`hf_cascade.packed_runner`, which feeds no padding): encoder-decoders (T5's relative positions), flash or flex
attention, ALiBi, modeling code that does not take a 4D mask as given.

Rows accept different numbers of tokens every step, so their sequences grow apart. They share one `DynamicCache`
(one `EncoderDecoderCache` for encoder-decoders) whose slot dimension is common to all rows; a row's cached states
need not be contiguous in it. `BatchRunner` keeps, per row, a `slot_mask` over the cache slots (1: the slot holds a
state of the row's current sequence) and how many positions of the row's sequence are cached (`cached`): the row's
valid slots hold its positions `0 .. cached - 1`, in slot order.

A forward pass feeds every row that asked its new tokens at the end of the cache, right-padded to the longest row's
chunk; rows that did not ask feed padding. The attention mask is `slot_mask` followed by ones for the new slots
(pads come after a row's real tokens, so causality alone keeps them out of the row's attention, and a pad query always
sees itself: no fully masked row, no NaN written into the cache), and `position_ids` are each row's real positions:
every row's logits are what a one-row run would compute. Rolling a row back (a rejected draft) only clears its slots
past the kept prefix. Columns no row uses any more are cropped off the end; when the holes make the cache more than
twice as wide as the longest row, every row's valid slots are gathered into a left-padded layout (`compact`).

Models whose positions are slot indices rather than `position_ids` (T5's relative bias counts slots) are compacted
before every forward pass, which keeps each row's states contiguous and right-aligned: slot distances are then
position distances. See `docs/concepts.md`, "Batches", for the trade-off against re-aligning rows or per-row caches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutput

from .cost import ForwardCostModel
from .errors import CascadeValueError
from .runner import RunnerBase, check_output_cache, new_cache, self_attention_layers, timed_forward
from .stats import LevelStats

__all__ = ["BatchRunner", "RowRequest", "RowView", "check_plain_layers", "relative_positions"]

# A forward pass of one row: `(ids, first, end)`: logits at positions `first .. end - 1` of the row's sequence `ids`.
RowRequest = tuple[Sequence[int], int, int]


def relative_positions(model: torch.nn.Module) -> bool:
    """Whether `model`'s decoder places tokens by relative slot distance (T5 family): it then works batched only with
    each row's states contiguous and right-aligned (see the module docstring)."""
    return getattr(model.config, "relative_attention_num_buckets", None) is not None


def check_plain_layers(cache: Any, model: torch.nn.Module, label: str) -> None:
    """Refuse a cache whose self-attention layers keep other state than plain keys/values: they cannot be gathered
    or cropped per row."""
    odd = sorted({type(layer).__name__ for layer in self_attention_layers(cache)} - {"DynamicLayer"})
    if odd:
        raise CascadeValueError(
            f"{label} ({type(model).__name__}) caches with {', '.join(odd)} layers; the batched cascade needs plain "
            "DynamicCache layers. Batch size 1 works with it: call generate once per prompt."
        )


class BatchRunner(RunnerBase):
    """Runs forward passes of one model for many rows, each over its own token sequence, in one shared KV cache.

    Rows are named by integers (their index in the call's batch); finished rows are `drop`ped and cost nothing more.
    The cache is compacted when it is wider than `compact_ratio` times its longest row (plus 8 slots): attention
    then never spans more than about twice the slots a row needs, and the gather is rare.

    Args:
        model (`PreTrainedModel`): the model (its batch support is checked by `hf_cascade.batch.check_batchable`).
        stats (`LevelStats`): where the model's forward passes, tokens and time are counted (for the whole batch).
        rows (`Sequence[int]`): the rows, in the order of the batch dimension of `encoder_outputs`.
        encoder_outputs (`ModelOutput`, *optional*): encoder outputs for encoder-decoder models, one row per row.
        encoder_attention_mask (`torch.LongTensor` of shape `(batch_size, source_length)`, *optional*): their mask.
        cost (`ForwardCostModel`, *optional*): records the time of every forward pass by its chunk width.
        pad_token_id (`int`, *optional*, defaults to 0): the token fed where a row has nothing to feed (masked).
    """

    compact_ratio = 2.0

    def __init__(
        self,
        model: torch.nn.Module,
        stats: LevelStats,
        rows: Sequence[int],
        encoder_outputs: Any = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cost: ForwardCostModel | None = None,
        pad_token_id: int = 0,
    ):
        super().__init__(model, stats, cost)
        self.cache = new_cache(model)
        self.rows = list(rows)
        self._index = {row: i for i, row in enumerate(self.rows)}
        self.cached = [0] * len(self.rows)  # positions of each row held by its valid slots
        self.cache_len = [0] * len(self.rows)  # of those, how many are still part of the row's sequence
        self.slot_mask = torch.zeros(len(self.rows), 0, dtype=torch.long, device=self.device)
        self.encoder_hidden = encoder_outputs.last_hidden_state if encoder_outputs is not None else None
        self.encoder_attention_mask = encoder_attention_mask
        self.pad_token_id = pad_token_id
        self._contiguous = relative_positions(model)  # compact before every forward (see the module docstring)
        self._row_stats: dict[int, LevelStats] = {}

    def view(self, row: int, stats: LevelStats) -> RowView:
        """The runner as one row sees it (`truncate_to`/`commit` of that row), with the row's own `stats` (which
        also count the forward passes the row took part in and the tokens it fed)."""
        self._row_stats[row] = stats
        return RowView(self, row, stats)

    # ------------------------------------------------------------------ per-row bookkeeping
    def cached_length(self, row: int) -> int:
        """How many tokens of row `row`'s sequence the cache holds."""
        return self.cache_len[self._index[row]]

    def truncate_to(self, row: int, length: int) -> None:
        """Row `row`'s sequence was cut to `length` tokens: its cached states past it are stale."""
        i = self._index[row]
        self.cache_len[i] = min(self.cache_len[i], length)

    def drop(self, rows: Sequence[int]) -> None:
        """Remove finished `rows` from the cache (and the encoder outputs): later passes no longer compute them."""
        gone = set(rows) & set(self._index)
        if not gone:
            return
        keep = [i for i, row in enumerate(self.rows) if row not in gone]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.slot_mask = self.slot_mask[index]
        self.rows = [self.rows[i] for i in keep]
        self._index = {row: i for i, row in enumerate(self.rows)}
        self.cached = [self.cached[i] for i in keep]
        self.cache_len = [self.cache_len[i] for i in keep]
        if self.encoder_hidden is not None:
            self.encoder_hidden = self.encoder_hidden[index.to(self.encoder_hidden.device)]
        if self.encoder_attention_mask is not None:
            self.encoder_attention_mask = self.encoder_attention_mask[index.to(self.encoder_attention_mask.device)]

    def _layers(self) -> list[Any]:
        return [layer for layer in self_attention_layers(self.cache) if layer.is_initialized]

    def _roll_back(self) -> None:
        """Clear every row's slots past its `cache_len`, then crop the columns no row uses off the end."""
        for i, (cached, length) in enumerate(zip(self.cached, self.cache_len, strict=True)):
            if cached > length:
                self.slot_mask[i] *= (self.slot_mask[i].cumsum(0) <= length).long()
                self.cached[i] = length
        used = self.slot_mask.any(dim=0).nonzero()
        width = int(used[-1]) + 1 if used.numel() else 0
        remove = self.slot_mask.shape[1] - width
        if remove > 0:
            for layer in self._layers():
                layer.crop(-remove)
            self.slot_mask = self.slot_mask[:, :width]

    def compact(self) -> None:
        """Gather each row's valid slots into a left-padded layout (states right-aligned at the end of the cache)."""
        width = max(self.cached, default=0)
        cached = torch.tensor(self.cached, device=self.device)
        target = (torch.arange(width, device=self.device)[None] >= width - cached[:, None]).long()
        if self.slot_mask.shape == target.shape and torch.equal(self.slot_mask, target):
            return  # already contiguous and right-aligned
        # Source slot of each target slot: the row's valid slots in order, after `width - cached` padding slots
        # (which read slot 0, masked).
        order = torch.argsort(self.slot_mask, dim=1, descending=True, stable=True)  # valid slots first, in order
        shift = (torch.arange(width, device=self.device)[None] - (width - cached[:, None])).clamp_min(0)
        source = order.gather(1, shift.clamp_max(max(self.slot_mask.shape[1] - 1, 0))) * target
        for layer in self._layers():
            b, h, _, d = layer.keys.shape
            index = source.to(layer.keys.device)[:, None, :, None].expand(b, h, width, d)
            layer.keys = layer.keys.gather(2, index)
            layer.values = layer.values.gather(2, index)
        self.slot_mask = target

    # ------------------------------------------------------------------ the forward pass
    @torch.no_grad()
    def logits(self, requests: Mapping[int, RowRequest]) -> dict[int, torch.Tensor]:
        """One batched forward pass for the rows in `requests`; the other rows feed masked padding.

        Args:
            requests (`Mapping[int, tuple[Sequence[int], int, int]]`): row -> `(ids, first, end)`: logits at
                positions `first .. end - 1` of the row's sequence `ids` (row `i` predicts token `first + i + 1`).

        Returns:
            `dict[int, torch.FloatTensor]`: row -> logits of shape `(end - first, vocab_size)`, in the model's dtype.
        """
        chunks: dict[int, tuple[list[int], int, int]] = {}  # batch index -> (new tokens, their first position, m)
        for row, (ids, first, end) in requests.items():
            i = self._index[row]
            start = min(self.cache_len[i], first)
            self.cache_len[i] = start
            chunks[i] = (list(ids[start:end]), start, end - first)
        self._roll_back()
        if self._contiguous or self.slot_mask.shape[1] > self.compact_ratio * max(self.cached, default=0) + 8:
            self.compact()
        width = max(len(tokens) for tokens, _, _ in chunks.values())
        batch = len(self.rows)
        input_ids = [[self.pad_token_id] * width for _ in range(batch)]
        positions = [[0] * width for _ in range(batch)]
        fed = [[0] * width for _ in range(batch)]
        for i, (tokens, start, _) in chunks.items():
            input_ids[i][: len(tokens)] = tokens
            positions[i][: len(tokens)] = range(start, start + len(tokens))
            fed[i][: len(tokens)] = [1] * len(tokens)
        new = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        fed_t = torch.tensor(fed, dtype=torch.long, device=self.device)
        # Every new slot is visible (see the module docstring); `fed_t` marks which of them the rows keep.
        mask = torch.cat([self.slot_mask, torch.ones_like(fed_t)], dim=1)
        kwargs: dict[str, Any] = {"cache": self.cache, "use_cache": True}
        if self.is_encoder_decoder:
            kwargs.update(
                decoder_input_ids=new,
                decoder_attention_mask=mask,
                encoder_outputs=BaseModelOutput(last_hidden_state=self.encoder_hidden),
                attention_mask=self.encoder_attention_mask,
            )
        else:
            kwargs.update(input_ids=new, attention_mask=mask)
            if self._position_ids:
                kwargs["position_ids"] = torch.tensor(positions, dtype=torch.long, device=self.device)
        # Row i's logits are its last m chunk positions before its padding: keep from the earliest such position.
        offset = min(len(tokens) - m for tokens, _, m in chunks.values())
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = width - offset
        else:
            offset = 0
        # Charged, as a one-row runner charges, for the widest chunk the rows asked about, not for the prompt or
        # skipped tokens a row catches up on (which no draft-length decision could have saved).
        out = timed_forward(
            self.model, kwargs, self.stats, self.cost, width, charged=max(m for _, _, m in chunks.values())
        )
        if not self._checked_croppable:
            check_output_cache(out, self.model, self._label)
            check_plain_layers(out.cache, self.model, self._label)
            self._checked_croppable = True
        self.cache = out.cache
        self.slot_mask = torch.cat([self.slot_mask, fed_t], dim=1)
        result = {}
        for i, (tokens, start, m) in chunks.items():
            self.cached[i] = self.cache_len[i] = start + len(tokens)
            stop = len(tokens) - offset
            row = self.rows[i]
            result[row] = out.logits[i, stop - m : stop]
            if row in self._row_stats:
                self._row_stats[row].forward_passes += 1
                self._row_stats[row].forward_tokens += len(tokens)
        return result


class RowView:
    """One row's handle on a `BatchRunner` or `PackedRunner` (`hf_cascade.packed_runner`): what `CascadeDrafter` and
    the generation loop call on a runner (`truncate_to`, `commit`, `stats`, `cost`) for that row alone.

    Args:
        runner (`BatchRunner` or `PackedRunner`): the shared runner.
        row (`int`): the row.
        stats (`LevelStats`): the row's own record (drafted/accepted by this model for this row).
    """

    def __init__(self, runner: Any, row: int, stats: LevelStats):
        self.runner = runner
        self.row = row
        self.stats = stats
        self.cost = runner.cost

    def cached_length(self) -> int:
        """How many tokens of the row's sequence the shared cache holds."""
        return self.runner.cached_length(self.row)

    def truncate_to(self, length: int) -> None:
        """The row's sequence was cut to `length` tokens."""
        self.runner.truncate_to(self.row, length)

    def commit(self, length: int) -> None:
        """The row's first `length` tokens are final (nothing to trim: sliding-window models are not batched)."""
