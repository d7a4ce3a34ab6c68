"""A neural model of the cascade running many rows at once, packed into ONE row of a transformers KV cache.

`BatchRunner` (`hf_cascade.batch_runner`) feeds every row padded to the widest row's chunk: a pass costs `rows x
widest chunk` tokens, and rows with nothing to feed (idle rows of a drafter pass) feed padding. `PackedRunner` keeps
the cache at batch size 1 and its slot dimension holds every row's states interleaved; per slot it knows which row
owns it (`owner`, `-1` for a hole). A forward pass concatenates only the real new tokens of the rows that asked into
`input_ids` of shape `(1, T)`, with explicit `position_ids` (each token's position in its own row) and a 4D attention
mask of shape `(1, 1, T, S + T)` in which a query of row `r` sees row `r`'s valid cached slots and row `r`'s new
tokens up to itself. transformers' `create_causal_mask` returns a 4D mask as it is, so every row's logits are what a
one-row run computes, and a pass costs the tokens it really feeds.

Rolling a row back (a rejected draft) turns its slots past the kept prefix into holes; trailing slots no row owns are
cropped off; when holes (and finished rows' slots, `drop`) make the cache wider than `compact_ratio` times the valid
slots (plus 8), the valid slots are gathered together, in order (`compact`).

The trade-off: linear layers and the MLP cost follow the real tokens, but attention with the packed mask spans the
slots of ALL rows (the mask hides the other rows' slots, the products are still computed): `O(rows x S)` per query
instead of `O(S)`. For the short contexts and small batches a CPU runs, the linear layers dominate (see
`docs/concepts.md`, "Batches"); per-row attention would need a custom attention function, which we leave out.

Exact only where the custom mask is all the model uses (`packs`): decoder-only models that take `position_ids`,
only full causal attention layers (a sliding window or chunked attention would be bypassed by the custom mask), no
ALiBi (its bias is built from the 2D mask), an attention implementation that honours a 4D mask (`sdpa`, `eager`), and
a modeling module that builds its masks with `create_causal_mask`. The others run padded (`BatchRunner`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.cache_utils import get_layer_types_and_kwargs

from .batch_runner import RowRequest, RowView, check_plain_layers, relative_positions
from .cost import ForwardCostModel
from .runner import (
    RunnerBase,
    accepts_position_ids,
    check_output_cache,
    new_cache,
    self_attention_layers,
    timed_forward,
)
from .stats import LevelStats

__all__ = ["PACKED_ATTENTION", "PackedRunner", "packed_mask", "packs"]

# Attention implementations that apply a 4D mask as given: sdpa takes a boolean mask (True: attend), eager adds a
# float mask to the scores. Flash kernels read only a 2D padding mask, flex attention needs a `BlockMask`.
PACKED_ATTENTION = ("sdpa", "eager")


def packs(model: torch.nn.Module) -> bool:
    """Whether `model` runs exactly with rows packed into one cache row (see the module docstring); the batched
    cascade runs the others padded (`BatchRunner`)."""
    config = model.config
    if config.is_encoder_decoder or relative_positions(model) or not accepts_position_ids(model):
        return False
    if getattr(config, "_attn_implementation", None) not in PACKED_ATTENTION:
        return False
    if getattr(config, "alibi", False) or getattr(config, "use_alibi", False):
        return False  # the bias is built from the 2D mask, which a 4D mask replaces
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return False
    try:
        layer_types = set(get_layer_types_and_kwargs(config.get_text_config(decoder=True))[0])
    except (AttributeError, KeyError, TypeError, ValueError):
        layer_types = set()
    if layer_types - {"full_attention"}:
        return False
    # The model must build its mask with `create_causal_mask`, which returns a 4D mask unchanged; a model whose own
    # code turns the mask into something else (or ignores it) would not see rows apart.
    return any(
        "create_causal_mask" in vars(sys.modules.get(cls.__module__, object()))
        for cls in type(model).__mro__
        if cls.__module__.startswith("transformers.models.")
    )


def packed_mask(owner: torch.Tensor, new_rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The attention mask of a packed forward pass: a query of row `r` sees the cached slots row `r` owns and row
    `r`'s new tokens up to itself (each row's new tokens are contiguous in the pass).

    Args:
        owner (`torch.LongTensor` of shape `(slots,)`): the row owning each cached slot, `-1` for a hole.
        new_rows (`torch.LongTensor` of shape `(tokens,)`): the row of each new token, in feeding order.
        dtype (`torch.dtype`, *optional*): `None` for a boolean mask (True: attend, as sdpa takes it); a float dtype
            for an additive mask (0 to attend, the dtype's minimum elsewhere, as eager attention adds it).

    Returns:
        `torch.Tensor` of shape `(1, 1, tokens, slots + tokens)`.
    """
    tokens = new_rows.shape[0]
    keys = torch.cat([owner, new_rows])
    allowed = keys[None, :] == new_rows[:, None]
    order = torch.arange(tokens, device=new_rows.device)
    allowed[:, owner.shape[0] :] &= order[None, :] <= order[:, None]
    if dtype is None:
        return allowed[None, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


class PackedRunner(RunnerBase):
    """Runs forward passes of one model for many rows, each over its own token sequence, packed into one cache row.

    The same interface as `BatchRunner` (`view`, `truncate_to`, `drop`, `logits`): rows are named by integers (their
    index in the call's batch); finished rows are `drop`ped and cost nothing more. `stats.forward_tokens` counts the
    tokens really fed. The cost model records a pass over `T` tokens for `n` rows as a pass of `T - n + 1` tokens:
    relative to a pass in which every row feeds one token, as the batch's draft cut prices it.

    Args:
        model (`PreTrainedModel`): a model `packs` accepts.
        stats (`LevelStats`): where the model's forward passes, tokens and time are counted (for the whole batch).
        rows (`Sequence[int]`): the rows.
        cost (`ForwardCostModel`, *optional*): records the time of every forward pass (see above).
    """

    compact_ratio = 2.0

    def __init__(
        self,
        model: torch.nn.Module,
        stats: LevelStats,
        rows: Sequence[int],
        cost: ForwardCostModel | None = None,
    ):
        super().__init__(model, stats, cost)
        self.cache = new_cache(model)
        self.rows = list(rows)
        self.cached = dict.fromkeys(self.rows, 0)  # positions of each row held by its valid slots
        self.cache_len = dict.fromkeys(self.rows, 0)  # of those, how many are still part of the row's sequence
        self.owner = torch.zeros(0, dtype=torch.long, device=self.device)  # row of each slot, -1: a hole
        implementation = getattr(model.config, "_attn_implementation", None)
        self._mask_dtype = None if implementation == "sdpa" else model.dtype
        self._row_stats: dict[int, LevelStats] = {}

    def view(self, row: int, stats: LevelStats) -> RowView:
        """The runner as one row sees it, with the row's own `stats` (see `BatchRunner.view`)."""
        self._row_stats[row] = stats
        return RowView(self, row, stats)

    # ------------------------------------------------------------------ per-row bookkeeping
    def cached_length(self, row: int) -> int:
        """How many tokens of row `row`'s sequence the cache holds."""
        return self.cache_len[row]

    def truncate_to(self, row: int, length: int) -> None:
        """Row `row`'s sequence was cut to `length` tokens: its cached states past it are stale."""
        self.cache_len[row] = min(self.cache_len[row], length)

    def drop(self, rows: Sequence[int]) -> None:
        """Remove finished `rows`: their slots become holes (cropped or compacted away at the next pass)."""
        gone = set(rows) & set(self.cached)
        if not gone:
            return
        gone_t = torch.tensor(sorted(gone), dtype=torch.long, device=self.device)
        self.owner = torch.where(torch.isin(self.owner, gone_t), -1, self.owner)
        self.rows = [row for row in self.rows if row not in gone]
        for row in gone:
            del self.cached[row], self.cache_len[row]

    def _layers(self) -> list[Any]:
        return [layer for layer in self_attention_layers(self.cache) if layer.is_initialized]

    def _roll_back(self) -> None:
        """Turn every row's slots past its `cache_len` into holes, then crop the trailing holes."""
        for row, length in self.cache_len.items():
            if self.cached[row] > length:
                slots = (self.owner == row).nonzero().flatten()
                self.owner[slots[length:]] = -1
                self.cached[row] = length
        used = (self.owner >= 0).nonzero()
        width = int(used[-1]) + 1 if used.numel() else 0
        remove = self.owner.shape[0] - width
        if remove > 0:
            for layer in self._layers():
                layer.crop(-remove)
            self.owner = self.owner[:width]

    def compact(self) -> None:
        """Gather the valid slots together, in order (every row's states stay in position order)."""
        keep = (self.owner >= 0).nonzero().flatten()
        if keep.shape[0] == self.owner.shape[0]:
            return
        for layer in self._layers():
            index = keep.to(layer.keys.device)
            layer.keys = layer.keys.index_select(2, index)
            layer.values = layer.values.index_select(2, index)
        self.owner = self.owner[keep]

    # ------------------------------------------------------------------ the forward pass
    @torch.no_grad()
    def logits(self, requests: Mapping[int, RowRequest]) -> dict[int, torch.Tensor]:
        """One packed forward pass of the new tokens of the rows in `requests`; the other rows feed nothing.
        Arguments and result as `BatchRunner.logits`."""
        chunks: list[tuple[int, list[int], int, int]] = []  # (row, new tokens, their first position, logits wanted)
        for row, (ids, first, end) in requests.items():
            start = min(self.cache_len[row], first)
            self.cache_len[row] = start
            chunks.append((row, list(ids[start:end]), start, end - first))
        self._roll_back()
        if self.owner.shape[0] > self.compact_ratio * sum(self.cached.values()) + 8:
            self.compact()
        tokens = [t for _, new, _, _ in chunks for t in new]
        positions = [p for _, new, start, _ in chunks for p in range(start, start + len(new))]
        rows = [row for row, new, _, _ in chunks for _ in new]
        total = len(tokens)
        new_rows = torch.tensor(rows, dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([tokens], dtype=torch.long, device=self.device),
            "position_ids": torch.tensor([positions], dtype=torch.long, device=self.device),
            "attention_mask": packed_mask(self.owner, new_rows, self._mask_dtype),
            "cache": self.cache,
            "use_cache": True,
        }
        # A row's logits are the last `m` tokens of its chunk: keep from the earliest such token of the pass.
        ends, offset = [], total
        for _, new, _, m in chunks:
            ends.append((ends[-1] if ends else 0) + len(new))
            offset = min(offset, ends[-1] - m)
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = total - offset
        else:
            offset = 0
        # Charged, as a one-row runner charges, for the tokens the rows asked about, not for the prompt or skipped
        # tokens a row catches up on (which no draft-length decision could have saved).
        asked = sum(m for _, _, _, m in chunks)
        out = timed_forward(
            self.model,
            kwargs,
            self.stats,
            self.cost,
            total,
            charged=asked - len(chunks) + 1,
            recorded=total - len(chunks) + 1,
        )
        if not self._checked_croppable:
            check_output_cache(out, self.model, self._label)
            check_plain_layers(out.cache, self.model, self._label)
            self._checked_croppable = True
        self.cache = out.cache
        self.owner = torch.cat([self.owner, new_rows])
        result = {}
        for (row, new, start, m), stop in zip(chunks, ends, strict=True):
            self.cached[row] = self.cache_len[row] = start + len(new)
            result[row] = out.logits[0, stop - m - offset : stop - offset]
            if row in self._row_stats:
                self._row_stats[row].forward_passes += 1
                self._row_stats[row].forward_tokens += len(new)
        return result
