"""Max-Gram memory: earlier token sequences that Max-Gram copies from after the current call's own text.

Real workloads repeat themselves across calls (the same JSON schema filled for every document, the same code scaffold,
an agent's tool-call format), so a continuation that followed a suffix in earlier outputs is a good draft when the
current call has no match of its own. `MaxGramMemory` keeps such documents and, per n-gram, how often each next token
followed it, so the most frequent continuation wins (as in SuffixDecoding's frequency-ranked suffix tree, arXiv
2411.04975, here with the incremental n-gram index Max-Gram already uses), and how often it won is the evidence the
cascade sizes the draft with (`hf_cascade.adaptive`).

Properties:
- incremental: adding a document of `m` tokens costs `O(m * max_ngram_size)` dict updates, never a rescan;
- bounded: at most `max_tokens` tokens are kept; the oldest documents are evicted first (and their counts removed);
- shareable: one memory may serve concurrent `generate` calls from several threads (a lock guards every read and
  write of the documents, and a proposal is computed under the lock in one go; the acceptance record, `tracker`, is
  updated without it: concurrent calls may lose one another's update, which only changes draft lengths);
- persistent: `save`/`load` use safetensors (token ids and settings only, never pickle); the index is rebuilt on load.

Nothing here can change what `generate` returns: memory drafts are reviewed like every other draft.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .adaptive import max_gram_tracker
from .config import MAX_NGRAM_SIZE_LIMIT, _check_int  # MaxGramConfig's bound and check, for the same reasons
from .errors import CascadeTypeError, CascadeValueError

__all__ = ["TRACKER_WEIGHT", "MaxGramMemory", "check_memory"]

# How many tokens' worth of reviews each key of a memory's acceptance tracker keeps (older ones fade): about the
# drafts of a few calls, so the record follows the workload without one call's luck deciding the next.
TRACKER_WEIGHT = 100.0

_FORMAT = "hf_cascade.MaxGramMemory/1"


def _as_token_list(token_ids: Any, vocab_size: int | None) -> list[int]:
    """`token_ids` (a list of ints or a 1-D / `(1, n)` integer tensor) as a list, checked against `vocab_size`."""
    if isinstance(token_ids, torch.Tensor):
        if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
            raise CascadeTypeError(
                f"MaxGramMemory.add needs integer token ids, got a tensor of dtype {token_ids.dtype}."
            )
        if token_ids.dim() == 2 and token_ids.shape[0] == 1:
            token_ids = token_ids[0]
        if token_ids.dim() != 1:
            raise CascadeValueError(
                f"MaxGramMemory.add takes one sequence (shape (n,) or (1, n)), got shape {tuple(token_ids.shape)}; "
                "add the rows of a batch one by one."
            )
        tokens = token_ids.tolist()
    elif isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Iterable):
        raise CascadeTypeError(
            f"MaxGramMemory.add needs a sequence of token ids, got {type(token_ids).__name__}; "
            "use add_texts(texts, tokenizer) for strings."
        )
    else:
        tokens = list(token_ids)
        for tok in tokens:
            if isinstance(tok, bool) or not isinstance(tok, int):
                raise CascadeTypeError(f"MaxGramMemory.add needs integer token ids, got {tok!r}.")
    if tokens and (min(tokens) < 0 or (vocab_size is not None and max(tokens) >= vocab_size)):
        bad = min(tokens) if min(tokens) < 0 else max(tokens)
        raise CascadeValueError(
            f"MaxGramMemory.add got token id {bad}, outside this memory's vocabulary of {vocab_size} tokens; "
            "a memory serves one tokenizer: build a new MaxGramMemory(vocab_size=...) for another vocabulary."
        )
    return tokens


class MaxGramMemory:
    """A bounded, thread-safe index of earlier token sequences for Max-Gram.

    ```python
    memory = hf_cascade.MaxGramMemory(vocab_size=model.config.vocab_size)
    memory.add_texts(["{\\"name\\": \\"...\\", \\"date\\": \\"...\\"}"], tokenizer)  # documents to copy from (optional)
    for doc in documents:  # each call's output is added to the memory automatically
        model.generate(**inputs(doc), custom_generate=hf_cascade.generate, max_gram_memory=memory)
    memory.save("memory.safetensors")
    ```

    Args:
        vocab_size (`int`, *optional*): size of the vocabulary the token ids come from. `generate` refuses a memory
            whose `vocab_size` differs from the target's (it was built for another tokenizer). `None` skips the check.
        max_tokens (`int`, *optional*, defaults to 1_000_000): the most tokens kept; adding past it evicts the oldest
            documents first. A single document longer than this keeps only its last `max_tokens` tokens.
        max_ngram_size (`int`, *optional*, defaults to 8): longest suffix matched against the memory.
        min_ngram_size (`int`, *optional*, defaults to 1): shortest suffix that counts as a match. A short match is
            not trusted blindly: each proposed token comes with the share of its suffix's occurrences it followed
            (`propose_scored`), and the cascade drafts it only while the chance of acceptance pays.

    Attributes:
        tracker (`AcceptanceTracker`): the acceptance record of Max-Gram's drafts (the call's own matches and the
            memory's) in the calls that used this memory; the next call starts from it instead of the priors, so a
            workload where copies fail stops drafting them early. Recent tokens weigh most (each key keeps at most
            `TRACKER_WEIGHT` tokens' worth). Not saved by `save` (a loaded memory starts from the priors).
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        max_tokens: int = 1_000_000,
        max_ngram_size: int = 8,
        min_ngram_size: int = 1,
    ):
        if vocab_size is not None:
            _check_int("MaxGramMemory vocab_size", vocab_size, 1)
        _check_int("MaxGramMemory max_tokens", max_tokens, 1)
        _check_int(
            "MaxGramMemory max_ngram_size",
            max_ngram_size,
            1,
            MAX_NGRAM_SIZE_LIMIT,
            " (each token adds that many index keys)",
        )
        _check_int("MaxGramMemory min_ngram_size", min_ngram_size, 1)
        if min_ngram_size > max_ngram_size:
            raise CascadeValueError(
                f"MaxGramMemory min_ngram_size ({min_ngram_size}) must not exceed max_ngram_size ({max_ngram_size})."
            )
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        self.max_ngram_size = max_ngram_size
        self.min_ngram_size = min_ngram_size
        self._lock = threading.Lock()
        self._docs: deque[list[int]] = deque()
        self._num_tokens = 0
        self._serial = 0  # increases with every indexed token: ties between equal counts go to the most recent
        # n-gram -> {next token: [count, serial of its latest occurrence]}
        self._table: dict[tuple[int, ...], dict[int, list[int]]] = {}
        self.tracker = max_gram_tracker(TRACKER_WEIGHT)

    # ------------------------------------------------------------------ size
    @property
    def num_tokens(self) -> int:
        """Tokens currently kept."""
        return self._num_tokens

    @property
    def num_documents(self) -> int:
        """Documents currently kept."""
        return len(self._docs)

    def __len__(self) -> int:
        return self._num_tokens

    def documents(self) -> list[list[int]]:
        """A copy of the kept documents, oldest first."""
        with self._lock:
            return [list(doc) for doc in self._docs]

    def __repr__(self) -> str:
        return (
            f"MaxGramMemory(vocab_size={self.vocab_size}, max_tokens={self.max_tokens}, "
            f"max_ngram_size={self.max_ngram_size}, min_ngram_size={self.min_ngram_size}, "
            f"documents={self.num_documents}, tokens={self.num_tokens})"
        )

    # ------------------------------------------------------------------ adding and evicting
    def add(self, token_ids: Sequence[int] | torch.Tensor) -> None:
        """Add one document (a token sequence); evict the oldest documents while more than `max_tokens` are kept.

        Args:
            token_ids (`Sequence[int]` or `torch.LongTensor` of shape `(n,)` or `(1, n)`): the document.
        """
        tokens = _as_token_list(token_ids, self.vocab_size)[-self.max_tokens :]
        if len(tokens) < 2:  # no n-gram has a continuation
            return
        with self._lock:
            self._docs.append(tokens)
            self._num_tokens += len(tokens)
            self._count(tokens, +1)
            while self._num_tokens > self.max_tokens:
                old = self._docs.popleft()
                self._num_tokens -= len(old)
                self._count(old, -1)

    def add_texts(self, texts: Iterable[str], tokenizer: Any) -> None:
        """Tokenize each text with `tokenizer` (without special tokens) and `add` it.

        Args:
            texts (`Iterable[str]`): documents as text.
            tokenizer (`PreTrainedTokenizerBase`): the target's tokenizer.
        """
        if isinstance(texts, str):
            raise CascadeTypeError("MaxGramMemory.add_texts takes a list of texts; wrap one text as [text].")
        for text in texts:
            self.add(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _count(self, doc: list[int], delta: int) -> None:
        """Add (`delta=+1`) or remove (`-1`) the continuation counts of every n-gram of `doc`."""
        lo, hi = self.min_ngram_size, self.max_ngram_size
        for j in range(1, len(doc)):
            nxt = doc[j]
            if delta > 0:
                self._serial += 1
            for n in range(lo, min(hi, j) + 1):
                key = tuple(doc[j - n : j])
                followers = self._table.get(key)
                if delta > 0:
                    if followers is None:
                        followers = self._table[key] = {}
                    entry = followers.setdefault(nxt, [0, 0])
                    entry[0] += 1
                    entry[1] = self._serial
                else:
                    entry = followers[nxt]
                    entry[0] -= 1
                    if entry[0] == 0:
                        del followers[nxt]
                        if not followers:
                            del self._table[key]

    def clear(self) -> None:
        """Forget every document and the acceptance record (`tracker`)."""
        with self._lock:
            self._docs.clear()
            self._table.clear()
            self._num_tokens = 0
            self.tracker = max_gram_tracker(TRACKER_WEIGHT)

    # ------------------------------------------------------------------ proposing
    def _next(self, tail: Sequence[int]) -> tuple[int, int, float] | None:
        """`(token, match_length, share)`: the most frequent follower of the longest suffix of `tail` that the memory
        holds, and the fraction of that suffix's occurrences it followed."""
        tail = tuple(tail[-self.max_ngram_size :])
        for n in range(len(tail), self.min_ngram_size - 1, -1):
            followers = self._table.get(tail[len(tail) - n :])
            if followers:
                token, (count, _) = max(followers.items(), key=lambda item: (item[1][0], item[1][1]))
                return token, n, count / sum(entry[0] for entry in followers.values())
        return None

    def propose_scored(self, context: Sequence[int], num_tokens: int) -> tuple[list[int], int, list[float]]:
        """Up to `num_tokens` tokens continuing `context`, each the most frequent follower of the longest suffix
        (of `context` plus the tokens proposed so far) that occurred in the memory, with how often it followed.

        Args:
            context (`Sequence[int]`): the current sequence (only its last `max_ngram_size` tokens are read).
            num_tokens (`int`): the most tokens to propose.

        Returns:
            `(tokens, match_length, shares)`: the proposal, the length of the first match (0 when nothing matched)
            and, per token, the fraction of its matched suffix's occurrences in the memory that it followed (1.0:
            the suffix was always followed by it; 0.25: by it once in four).
        """
        out: list[int] = []
        shares: list[float] = []
        tail = list(context[-self.max_ngram_size :])
        first_match = 0
        with self._lock:
            while len(out) < num_tokens:
                hit = self._next(tail)
                if hit is None:
                    break
                token, n, share = hit
                first_match = first_match or n
                out.append(token)
                shares.append(share)
                tail = (tail + [token])[-self.max_ngram_size :]
        return out, first_match, shares

    def propose(self, context: Sequence[int], num_tokens: int) -> tuple[list[int], int]:
        """`propose_scored` without the shares: `(tokens, match_length)`."""
        tokens, match_length, _ = self.propose_scored(context, num_tokens)
        return tokens, match_length

    # ------------------------------------------------------------------ copies and files
    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            state = dict(self.__dict__)
            state["_docs"] = [list(doc) for doc in self._docs]
        del state["_lock"], state["_table"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        docs = state.pop("_docs")
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._docs = deque()
        self._table = {}
        self._num_tokens = 0
        self._serial = 0
        for doc in docs:
            self._docs.append(doc)
            self._num_tokens += len(doc)
            self._count(doc, +1)

    def save(self, path: str | os.PathLike) -> None:
        """Write the documents and settings to a safetensors file (the index is rebuilt by `load`)."""
        from safetensors.torch import save_file

        docs = self.documents()
        flat = [tok for doc in docs for tok in doc]
        tensors = {
            "tokens": torch.tensor(flat, dtype=torch.int64),
            "lengths": torch.tensor([len(doc) for doc in docs], dtype=torch.int64),
        }
        metadata = {
            "format": _FORMAT,
            "vocab_size": "" if self.vocab_size is None else str(self.vocab_size),
            "max_tokens": str(self.max_tokens),
            "max_ngram_size": str(self.max_ngram_size),
            "min_ngram_size": str(self.min_ngram_size),
        }
        save_file(tensors, os.fspath(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MaxGramMemory:
        """Read a memory written by `save`.

        Raises:
            `CascadeValueError`: the file is missing, a folder, not safetensors, or not a Max-Gram memory.
        """
        from safetensors import safe_open

        path = os.fspath(path)
        if os.path.isdir(path):
            raise CascadeValueError(f"MaxGramMemory.load: {path} is a folder; pass the file written by memory.save().")
        if not os.path.isfile(path):
            raise CascadeValueError(f"MaxGramMemory.load: {path} does not exist; write one with memory.save(path).")
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") != _FORMAT:
                    raise CascadeValueError(
                        f"MaxGramMemory.load: {path} is not a Max-Gram memory (format {metadata.get('format')!r}, "
                        f"expected {_FORMAT!r}); write one with MaxGramMemory.save."
                    )
                tokens, lengths = f.get_tensor("tokens").tolist(), f.get_tensor("lengths").tolist()
        except CascadeValueError:
            raise
        except Exception as e:  # safetensors raises its own error types for a file that is not safetensors
            raise CascadeValueError(
                f"MaxGramMemory.load: {path} is not a readable safetensors file ({e}); write one with memory.save()."
            ) from e
        vocab = metadata.get("vocab_size", "")
        memory = cls(
            vocab_size=int(vocab) if vocab else None,
            max_tokens=int(metadata["max_tokens"]),
            max_ngram_size=int(metadata["max_ngram_size"]),
            min_ngram_size=int(metadata["min_ngram_size"]),
        )
        if sum(lengths) != len(tokens):
            raise CascadeValueError(f"MaxGramMemory.load: {path} is damaged (lengths do not add up to the tokens).")
        offset = 0
        for length in lengths:
            memory.add(tokens[offset : offset + length])
            offset += length
        return memory

    def check_vocab_size(self, vocab_size: int) -> None:
        """Refuse a memory built for another vocabulary than the target's (`vocab_size` tokens)."""
        if self.vocab_size is not None and self.vocab_size != vocab_size:
            raise CascadeValueError(
                f"max_gram_memory was built for a vocabulary of {self.vocab_size} tokens but the target's has "
                f"{vocab_size}; a memory serves one tokenizer: build a new MaxGramMemory(vocab_size={vocab_size})."
            )


def check_memory(memory: Any, use_max_gram: bool, vocab_size: int) -> MaxGramMemory | None:
    """Validate `generate`'s `max_gram_memory` argument against the call.

    Args:
        memory: the argument (`MaxGramMemory` or `None`).
        use_max_gram (`bool`): whether the cascade runs Max-Gram (`CascadeConfig.use_max_gram`).
        vocab_size (`int`): the target's vocabulary size.
    """
    if memory is None:
        return None
    if not isinstance(memory, MaxGramMemory):
        raise CascadeTypeError(
            f"max_gram_memory must be a hf_cascade.MaxGramMemory, got {type(memory).__name__}; "
            "create one with hf_cascade.MaxGramMemory(vocab_size=...) or MaxGramMemory.load(path)."
        )
    if not use_max_gram:
        raise CascadeValueError(
            "max_gram_memory was given but CascadeConfig.use_max_gram is False: the memory is read by Max-Gram; "
            "turn Max-Gram on or drop max_gram_memory."
        )
    memory.check_vocab_size(vocab_size)
    return memory
