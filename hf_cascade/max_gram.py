"""Max-Gram (MaG): the statistical drafter at the bottom of the cascade.

Max-Gram proposes the continuation of the longest earlier occurrence of the current suffix. The index is
incremental: every n-gram (n in `[min_ngram_size, max_ngram_size]`) that has a following token is stored once, in a
dict from the n-gram to its most recent occurrence. Adding a token costs `O(max_ngram_size)` dict writes and a lookup
costs at most `max_ngram_size` dict reads, independent of the sequence length (the reference code rescans the whole
sequence on every call).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Sequence

import torch

from .errors import CascadeTypeError, CascadeValueError

__all__ = ["BigramTable", "MaxGramIndex"]


class MaxGramIndex:
    """Incremental n-gram index over a read-only corpus plus the live sequence.

    Documents are token lists. The live document (the sequence being generated) is the last one and grows with
    `extend`; earlier documents (for example the encoder input of an encoder-decoder model) are fixed. A later
    occurrence of an n-gram replaces an earlier one, so lookups return the most recent occurrence, which in
    generated text is usually the most useful one.

    Args:
        max_ngram_size (`int`): longest suffix matched.
        min_ngram_size (`int`, *optional*, defaults to 1): shortest suffix that counts as a match.
        corpus (`Iterable[Sequence[int]]`, *optional*): fixed documents indexed before the live one.
        occurrence (`str`, *optional*, defaults to `"latest"`): which occurrence of an n-gram a lookup returns,
            the most recent (`"latest"`) or the first (`"earliest"`, as transformers' prompt lookup and the reference
            code do).
    """

    def __init__(
        self,
        max_ngram_size: int,
        min_ngram_size: int = 1,
        corpus: Iterable[Sequence[int]] = (),
        occurrence: str = "latest",
    ):
        if occurrence not in ("latest", "earliest"):
            raise CascadeValueError(f"occurrence must be 'latest' or 'earliest', got {occurrence!r}.")
        self.max_ngram_size = max_ngram_size
        self.min_ngram_size = min_ngram_size
        self._keep_latest = occurrence == "latest"
        self._docs: list[list[int]] = []
        # n-gram -> (document index, position of the token that followed it)
        self._table: dict[tuple[int, ...], tuple[int, int]] = {}
        for doc in corpus:
            self._docs.append([])
            self._index_tail(list(doc))
        self._docs.append([])

    def extend(self, tokens: Sequence[int]) -> None:
        """Append `tokens` to the live document and index the n-grams that now have a continuation."""
        self._index_tail(tokens)

    def _index_tail(self, tokens: Sequence[int]) -> None:
        doc_id = len(self._docs) - 1
        doc = self._docs[doc_id]
        lo, hi = self.min_ngram_size, self.max_ngram_size
        for tok in tokens:
            j = len(doc)  # `tok` will sit at position j: every n-gram ending at j - 1 now has a continuation
            for n in range(lo, min(hi, j) + 1):
                key = tuple(doc[j - n : j])
                if self._keep_latest or key not in self._table:
                    self._table[key] = (doc_id, j)
            doc.append(tok)

    def lookup(self, context: Sequence[int]) -> tuple[list[int], int, int] | None:
        """Find the longest suffix of `context` seen before.

        Args:
            context (`Sequence[int]`): the current sequence (only its last `max_ngram_size` tokens are read).

        Returns:
            `(document, start, n)`: the continuation is `document[start:]` and the match was `n` tokens long; or
            `None` when no suffix of at least `min_ngram_size` tokens occurred before.
        """
        tail = tuple(context[-self.max_ngram_size :])
        for n in range(len(tail), self.min_ngram_size - 1, -1):
            hit = self._table.get(tail[len(tail) - n :])
            if hit is not None:
                return self._docs[hit[0]], hit[1], n
        return None

    def propose_with_match(
        self, context: Sequence[int], num_tokens: int, bigram: BigramTable | None = None
    ) -> tuple[list[int], int]:
        """Propose up to `num_tokens` continuation tokens for `context`.

        Copies the continuation of the longest match; when the copy runs out, looks up again with the proposal
        appended (so repeating patterns extend); when nothing matches, uses the bigram table if given.

        Args:
            context (`Sequence[int]`): the current sequence (only its last `max_ngram_size` tokens are read).
            num_tokens (`int`): the most tokens to propose.
            bigram (`BigramTable`, *optional*): fallback next-token table.

        Returns:
            `(tokens, match_length)`: the proposal and the length of its first match, 0 when it starts from the
            bigram table or is empty (longer matches are more reliable, which the adaptive draft length uses).
        """
        out: list[int] = []
        first_match = None
        tail = list(context[-self.max_ngram_size :])
        while len(out) < num_tokens:
            hit = self.lookup(tail)
            if hit is not None:
                doc, start, n = hit
                piece = doc[start : start + num_tokens - len(out)]
            else:
                nxt = bigram.next_token(tail[-1]) if (bigram is not None and tail) else None
                if nxt is None:
                    break
                n, piece = 0, [nxt]
            if not piece:
                break
            first_match = n if first_match is None else first_match
            out.extend(piece)
            tail = (tail + piece)[-self.max_ngram_size :]
        return out, first_match or 0


class BigramTable:
    """A next-token table: `next_token(t)` is the most likely token after `t`, or `None` when unknown.

    Build it from a model's own greedy choice after each single token (`from_model`) or from token counts in a
    corpus (`from_corpus`); store it with `save`/`load` as safetensors.

    Args:
        table (`torch.LongTensor` of shape `(vocab_size,)`): next token per token id, `-1` for "no proposal".
    """

    def __init__(self, table: torch.Tensor):
        if not isinstance(table, torch.Tensor) or table.dim() != 1 or table.dtype not in (torch.int32, torch.int64):
            raise CascadeTypeError(
                "BigramTable expects a 1-D integer tensor of shape (vocab_size,) with -1 for 'no proposal'."
            )
        vocab = table.numel()
        if bool(((table < -1) | (table >= vocab)).any()):
            raise CascadeValueError(
                f"BigramTable entries must be -1 or token ids in [0, {vocab}); got out-of-range values."
            )
        self.table = table.to(torch.int64).cpu()
        self._list = self.table.tolist()  # Python list: O(1) scalar reads without tensor overhead

    @property
    def vocab_size(self) -> int:
        return len(self._list)

    def next_token(self, token: int) -> int | None:
        if 0 <= token < len(self._list):
            nxt = self._list[token]
            return nxt if nxt >= 0 else None
        return None

    @classmethod
    def from_corpus(cls, sequences: Iterable[Sequence[int]], vocab_size: int) -> BigramTable:
        """Most frequent successor of each token in `sequences` (ties: the smallest token id).

        Args:
            sequences (`Iterable[Sequence[int]]`): token id lists.
            vocab_size (`int`): size of the table.
        """
        firsts, seconds = [], []
        for seq in sequences:
            seq = list(seq)
            firsts.extend(seq[:-1])
            seconds.extend(seq[1:])
        table = torch.full((vocab_size,), -1, dtype=torch.int64)
        if not firsts:
            return cls(table)
        a, b = torch.tensor(firsts, dtype=torch.int64), torch.tensor(seconds, dtype=torch.int64)
        if bool(((a < 0) | (a >= vocab_size) | (b < 0) | (b >= vocab_size)).any()):
            raise CascadeValueError(f"BigramTable.from_corpus: token ids must lie in [0, {vocab_size}).")
        pairs, counts = torch.unique(a * vocab_size + b, return_counts=True)  # sorted by (first, second)
        first, second = pairs // vocab_size, pairs % vocab_size
        # Stable sort by count (descending), then by first token: the first row of each group is its argmax,
        # with ties going to the smaller second token because `torch.unique` sorted it first.
        order = torch.sort(-counts, stable=True).indices
        order = order[torch.sort(first[order], stable=True).indices]
        first, second = first[order], second[order]
        is_head = torch.ones_like(first, dtype=torch.bool)
        is_head[1:] = first[1:] != first[:-1]
        table[first[is_head]] = second[is_head]
        return cls(table)

    @classmethod
    @torch.no_grad()
    def from_model(
        cls,
        model: torch.nn.Module,
        batch_size: int = 256,
        bos_token_id: int | None = None,
        progress: bool = False,
    ) -> BigramTable:
        """Greedy next token of `model` after each single token (prefixed by `bos_token_id` when given).

        Costs `vocab_size / batch_size` forward passes over 1-2 tokens each, dominated by the output layer
        (`vocab_size ** 2 * hidden_size` multiply-adds: about 4 minutes for SmolLM2-135M on 2 CPU cores): run it
        once and `save` the result (`hf-cascade bigram` does both).

        Args:
            model (`PreTrainedModel`): a decoder-only language model.
            batch_size (`int`, *optional*, defaults to 256): tokens per forward pass.
            bos_token_id (`int`, *optional*): prefix token; defaults to `model.config.bos_token_id`.
            progress (`bool`, *optional*, defaults to `False`): show a tqdm progress bar.
        """
        from .runner import accepts_logits_to_keep

        if getattr(model.config, "is_encoder_decoder", False):
            raise CascadeValueError(
                "BigramTable.from_model needs a decoder-only model; use from_corpus for encoder-decoders."
            )
        try:
            size = 0 if isinstance(batch_size, bool) else operator.index(batch_size)  # numpy and torch integers too
        except TypeError:
            size = 0
        if size < 1:
            raise CascadeValueError(
                f"BigramTable.from_model: batch_size must be a positive integer, got {batch_size!r}."
            )
        batch_size = size
        vocab = model.config.get_text_config().vocab_size
        bos = model.config.bos_token_id if bos_token_id is None else bos_token_id
        device = next(model.parameters()).device
        # Only the last position's logits are needed; the output layer dominates the cost.
        extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        starts = range(0, vocab, batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="bigram table", unit="batch")
        rows = []
        for lo in starts:
            toks = torch.arange(lo, min(lo + batch_size, vocab), device=device)[:, None]
            if bos is not None:
                toks = torch.cat([torch.full_like(toks, bos), toks], dim=1)
            logits = model(input_ids=toks, use_cache=False, **extra).logits[:, -1, :vocab]
            rows.append(logits.argmax(-1).cpu())
        return cls(torch.cat(rows))

    def save(self, path: str | os.PathLike) -> None:
        """Save as safetensors (key `next_token`)."""
        from safetensors.torch import save_file

        save_file({"next_token": self.table}, os.fspath(path), metadata={"format": "hf_cascade.bigram_table"})

    @classmethod
    def load(cls, path: str | os.PathLike) -> BigramTable:
        """Load a table written by `save`.

        Args:
            path (`str` or `os.PathLike`): the safetensors file.

        Raises:
            `CascadeValueError`: naming the file, when it is a folder, is not safetensors, or holds no 1-D integer
                `next_token` tensor with valid token ids. `FileNotFoundError` when it does not exist.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        hint = "build a bigram table with BigramTable.save or `hf-cascade bigram`."
        path = os.fspath(path)
        if os.path.isdir(path):
            raise CascadeValueError(f"Bigram table {path} is a folder; give the table file itself ({hint})")
        try:
            tensors = load_file(path)
        except SafetensorError as e:
            raise CascadeValueError(f"{path} is not a safetensors file ({e}); {hint}") from None
        if "next_token" not in tensors:
            raise CascadeValueError(f"{path} is not a hf_cascade bigram table (no 'next_token' tensor); {hint}")
        table = tensors["next_token"]
        if table.dim() != 1 or table.dtype not in (torch.int32, torch.int64):
            raise CascadeValueError(
                f"{path}: 'next_token' is a {table.dim()}-D {str(table.dtype).removeprefix('torch.')} tensor of shape "
                f"{tuple(table.shape)}; a bigram table is a 1-D integer tensor of shape (vocab_size,); {hint}"
            )
        try:
            return cls(table)
        except CascadeValueError as e:
            raise CascadeValueError(f"{path}: {e}") from None
