"""The cascade: vertical and horizontal CS Drafting over one shared token sequence.

`CascadeDrafter` holds the drafting side of one `generate` call: the sequence (committed prefix + current draft),
for each draft position the drafter that produced it and the distribution it was drawn from, the drafters' runners
and the Max-Gram index. `_draft_level` and `_review` are the paper's `step` (see `docs/concepts.md`):

    draft(level):                    # build the draft reviewed at `level`
        for c in level .. n-1:       # horizontal cascade: larger drafters fill earlier positions
            while len(draft) < K[level][level] + ... + K[level][c]:
                if c is Max-Gram: propose
                else: review(c)      # vertical cascade: drafter c reviews the sub-cascade below it
    review(c):
        draft(c + 1); drafter c reviews it with lenience; keep the accepted prefix + its own next token

The target's review (level 0, always exact) is done by the caller, which then calls `advance` with the tokens it
kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers.generation import logits_process
from transformers.generation.logits_process import LogitsProcessorList

from .adaptive import draft_length, match_bucket, max_gram_tracker
from .config import MaxGramConfig
from .cost import ForwardCostModel
from .max_gram import BigramTable, MaxGramIndex
from .runner import ModelRunner
from .stats import LevelStats
from .verification import review

__all__ = ["CascadeDrafter", "first_unsure", "hard_constraints"]

# Processors that forbid tokens outright (score -inf) whatever the logits are. Max-Gram consults only these: warpers
# such as top-p would also mask tokens of the all-equal dummy row it is scored on, which says nothing about the model.
_HARD_CONSTRAINTS = tuple(
    getattr(logits_process, name)
    for name in (
        "ForcedBOSTokenLogitsProcessor",
        "ForcedEOSTokenLogitsProcessor",
        "MinLengthLogitsProcessor",
        "MinNewTokensLengthLogitsProcessor",
        "NoBadWordsLogitsProcessor",
        "NoRepeatNGramLogitsProcessor",
        "PrefixConstrainedLogitsProcessor",
        "SuppressTokensAtBeginLogitsProcessor",
        "SuppressTokensLogitsProcessor",
    )
)


def hard_constraints(processors: LogitsProcessorList | None) -> LogitsProcessorList:
    """The processors of `processors` that forbid tokens outright (used to vet Max-Gram proposals)."""
    return LogitsProcessorList([p for p in processors or () if isinstance(p, _HARD_CONSTRAINTS)])


def first_unsure(scores: torch.Tensor, tokens: Sequence[int], threshold: float) -> int | None:
    """Index of the first token whose probability under `softmax(scores)` is below `threshold`, or `None`.

    Args:
        scores (`torch.FloatTensor` of shape `(m, vocab_size)`): processed logits, row `i` for `tokens[i]`.
        tokens (`Sequence[int]`): `m` tokens.
        threshold (`float`): the confidence threshold.
    """
    if not tokens:
        return None
    rows = torch.arange(len(tokens), device=scores.device)
    index = torch.tensor(tokens, dtype=torch.long, device=scores.device)
    p = torch.softmax(scores, dim=-1)[rows, index]
    unsure = torch.nonzero(p < threshold)
    return int(unsure[0, 0]) if unsure.numel() else None


class CascadeDrafter:
    """Drafting state of one cascade `generate` call.

    Args:
        prompt_ids (`Sequence[int]`): the starting sequence (decoder sequence for encoder-decoders).
        runners (`list[ModelRunner]`): the neural drafters, largest first.
        k_matrix (`list[list[int]]` of shape `(n, n)`): see `CascadeConfig.k_matrix`.
        lenience (`float`): leniency of reviews between drafters.
        do_sample (`bool`): sampling (track draft distributions) or greedy.
        logits_processor (`LogitsProcessorList`): the target's processors, applied to every reviewer's logits.
        eos_token_ids (`set[int]`): tokens that end generation.
        vocab_size (`int`): size of the target's logits.
        device (`torch.device`): where scores are processed and reviewed (the target's input device).
        max_gram (`MaxGramIndex`, *optional*): Max-Gram index, the last drafter when given.
        bigram (`BigramTable`, *optional*): Max-Gram's fallback table.
        stats (`list[LevelStats]`): one record per drafter (assistants, then Max-Gram).
        adaptive_max_gram (`bool`, *optional*): cut Max-Gram proposals by their tracked acceptance
            (`hf_cascade.adaptive`).
        token_cost (`float`, *optional*): verification cost of one more draft token, as a fraction of a forward.
        draft_cost (`float`, *optional*): fixed extra cost of verifying any draft, as a fraction of a forward.
        confidence_threshold (`float`, *optional*): a neural drafter's draft ends after a token it kept with
            probability below this (`CascadeConfig.confidence_threshold`).
        target_cost (`ForwardCostModel`, *optional*): the target's timed forward passes; with a drafter runner's
            own `cost`, replaces `draft_cost`/`token_cost` for the Max-Gram drafts that model reviews
            (`MaxGramConfig.measure_cost`).
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        runners: list[ModelRunner],
        k_matrix: list[list[int]],
        lenience: float,
        do_sample: bool,
        logits_processor: LogitsProcessorList,
        eos_token_ids: set[int],
        vocab_size: int,
        device: torch.device,
        max_gram: MaxGramIndex | None,
        bigram: BigramTable | None,
        stats: list[LevelStats],
        adaptive_max_gram: bool = False,
        token_cost: float = MaxGramConfig.token_cost,
        draft_cost: float = MaxGramConfig.draft_cost,
        confidence_threshold: float = 0.0,
        target_cost: ForwardCostModel | None = None,
    ):
        self.ids: list[int] = list(prompt_ids)
        self.committed = len(self.ids)
        self._q: list[torch.Tensor | None] = []  # per draft position: distribution it was drawn from (None: one-hot)
        self._owner: list[int] = []  # per draft position: index of the drafter that produced it
        self._tag: list[tuple[int, int] | None] = []  # per Max-Gram draft position: (level, match bucket)
        self.runners = runners
        self.k = k_matrix
        self.lenience = lenience
        self.do_sample = do_sample
        self.processors = logits_processor
        self.constraints = hard_constraints(logits_processor)
        self.eos = eos_token_ids
        self.vocab_size = vocab_size
        self.device = device
        self.index = max_gram
        self.bigram = bigram
        self.stats = stats
        self.num_drafters = len(runners) + (max_gram is not None)
        self.max_gram_column = len(runners) if max_gram is not None else -1
        self.tracker = max_gram_tracker() if (adaptive_max_gram and max_gram is not None) else None
        self.token_cost = token_cost
        self.draft_cost = draft_cost
        self.confidence_threshold = confidence_threshold
        # The model that reviews the draft built at level r: the target for r = 0, drafter r - 1 otherwise.
        self.reviewer_costs = [target_cost, *(runner.cost for runner in runners)]

    # ------------------------------------------------------------------ sequence bookkeeping
    def truncate(self, length: int) -> None:
        """Cut the draft to `length` tokens of sequence; cached states past it become stale."""
        del self.ids[length:]
        del self._q[max(length - self.committed, 0) :]
        del self._owner[max(length - self.committed, 0) :]
        del self._tag[max(length - self.committed, 0) :]
        for runner in self.runners:
            runner.truncate_to(length)

    def _append(
        self,
        tokens: Sequence[int],
        q_rows: Sequence[torch.Tensor | None],
        owner: int,
        tag: tuple[int, int] | None = None,
    ) -> None:
        self.ids.extend(tokens)
        self._q.extend(q_rows)
        self._owner.extend([owner] * len(tokens))
        self._tag.extend([tag] * len(tokens))

    def _draft_ended(self) -> bool:
        return len(self.ids) > self.committed and self.ids[-1] in self.eos

    def draft(self, cap: int) -> tuple[list[int], torch.Tensor | None]:
        """Build the draft the target reviews (level 0), keeping `len(sequence) <= cap`.

        Returns:
            `(tokens, q)`: the draft tokens and, when sampling, `torch.FloatTensor` of shape `(k, vocab_size)` with
            the distribution each token was drawn from.
        """
        start = len(self.ids)
        if self.num_drafters:
            self._draft_level(0, cap)
        tokens = self.ids[start:]
        return tokens, self.dense_q(start, len(self.ids)) if self.do_sample else None

    def advance(self, kept: Sequence[int]) -> int:
        """Commit the tokens the target kept after the current committed prefix and record level-0 statistics.

        Args:
            kept (`Sequence[int]`): the new committed tokens (accepted draft prefix, then the target's own token).

        Returns:
            The number of draft tokens the target accepted.
        """
        start = self.committed
        draft = self.ids[start:]
        n = 0
        while n < len(draft) and n < len(kept) and draft[n] == kept[n]:
            n += 1
        self._record(start, n)
        self.truncate(start + n)
        self.ids.extend(kept[n:])
        self.committed = len(self.ids)
        for runner in self.runners:
            runner.commit(self.committed)
        self._q.clear()
        self._owner.clear()
        self._tag.clear()
        if self.index is not None:
            self.index.extend(kept)
        return n

    def dense_q(self, start: int, end: int) -> torch.Tensor:
        """Draft distributions of positions `start .. end - 1` as a `(end - start, vocab_size)` tensor."""
        q = torch.zeros(end - start, self.vocab_size, device=self.device)
        one_hot_rows, one_hot_tokens = [], []
        for i in range(end - start):
            row = self._q[start - self.committed + i]
            if row is None:
                one_hot_rows.append(i)
                one_hot_tokens.append(self.ids[start + i])
            else:
                q[i] = row
        if one_hot_rows:
            q[one_hot_rows, one_hot_tokens] = 1.0
        return q

    def process(self, logits: torch.Tensor, first: int) -> torch.Tensor:
        """Apply the logits processors to logits at positions `first ..`, each with its own prefix.

        Args:
            logits (`torch.FloatTensor` of shape `(m, vocab_size)`): raw logits, row `i` at position `first + i`.
            first (`int`): position of the first row.

        Returns:
            `torch.FloatTensor` of shape `(m, vocab_size)` in float32 on `self.device`.
        """
        logits = logits.to(device=self.device, dtype=torch.float32)
        if not self.processors:
            return logits
        prefix = torch.tensor([self.ids[: first + logits.shape[0]]], dtype=torch.long, device=self.device)
        scores = logits.clone()
        for i in range(logits.shape[0]):
            scores[i] = self.processors(prefix[:, : first + 1 + i], logits[i : i + 1])[0]
        return scores

    # ------------------------------------------------------------------ the cascade (paper's `step`)
    def _draft_level(self, level: int, cap: int) -> None:
        """Extend the sequence with the draft reviewed at `level` (row `K[level]`), never past `cap` tokens."""
        start = len(self.ids)
        goal = 0
        for c in range(level, self.num_drafters):
            goal += self.k[level][c]
            while len(self.ids) - start < goal and len(self.ids) < cap and not self._draft_ended():
                before = len(self.ids)
                if c == self.max_gram_column:
                    # One proposal: Max-Gram already extends its own copy, and what it cut was cut on purpose.
                    self._propose_max_gram(min(goal - (before - start), cap - before), level)
                    break
                if not self._review(c, cap):
                    return  # drafter c is unsure of its last token: nothing drafted after it is likely to survive

    def _review(self, c: int, cap: int) -> bool:
        """Drafter `c` reviews the sub-cascade below it and keeps the accepted prefix plus one token of its own.

        Returns:
            `False` when drafter `c` kept a token it gives probability below `confidence_threshold` (the draft is cut
            after the first such token), `True` otherwise.
        """
        start = len(self.ids)
        self._draft_level(c + 1, cap - 1)  # leave room for the reviewer's own token
        end = len(self.ids)
        draft = self.ids[start:end]
        scores = self.process(self.runners[c].logits(self.ids, start - 1, end), start - 1)
        q = self.dense_q(start, end) if self.do_sample else None
        draft_t = torch.tensor(draft, dtype=torch.long, device=self.device)
        n, next_token, emitted = review(scores, draft_t, q, self.lenience, self.do_sample, need_emitted_q=True)
        self._record(start, n)
        self.truncate(start + n)  # drop the rejected tail
        # The kept tokens are now drafter c's contribution, drawn from the distributions the review emitted.
        rows: list[torch.Tensor | None] = list(emitted) if emitted is not None else [None] * (n + 1)
        offset = start - self.committed
        self._q[offset:] = rows[:n]
        self._owner[offset:] = [c] * n
        self._tag[offset:] = [None] * n
        if not (n == len(draft) and n > 0 and draft[-1] in self.eos):  # nothing follows an accepted EOS
            self._append([next_token], rows[n : n + 1], owner=c)
        if self.confidence_threshold <= 0:
            return True
        kept = self.ids[start:]
        unsure = first_unsure(scores[: len(kept)], kept, self.confidence_threshold)
        if unsure is None:
            return True
        self.truncate(start + unsure + 1)
        return False

    def _propose_max_gram(self, num_tokens: int, level: int) -> None:
        t0 = time.perf_counter()
        tokens, _, match_length = self.index.propose_with_match(self.ids, num_tokens, self.bigram)
        tag = (level, match_bucket(match_length))
        if self.tracker is not None:
            draft_cost, token_cost = self._costs(level)
            tokens = tokens[: draft_length(self.tracker.rate(tag), token_cost, len(tokens), draft_cost)]
        tokens = self._admissible_prefix(tokens)
        self._append(tokens, [None] * len(tokens), owner=self.max_gram_column, tag=tag)
        stats = self.stats[self.max_gram_column]
        stats.propose_calls += 1
        stats.propose_time_s += time.perf_counter() - t0

    def _costs(self, level: int) -> tuple[float, float]:
        """`(draft_cost, token_cost)` of the model reviewing `level`: measured when it is timed, else configured."""
        cost = self.reviewer_costs[level]
        return cost.costs() if cost is not None else (self.draft_cost, self.token_cost)

    def _admissible_prefix(self, tokens: list[int]) -> list[int]:
        """Cut a Max-Gram proposal after the first EOS and before the first token a hard constraint forbids."""
        out: list[int] = []
        for tok in tokens:
            if self.constraints:
                prefix = torch.tensor([self.ids + out], dtype=torch.long, device=self.device)
                dummy = torch.zeros(1, self.vocab_size, device=self.device)
                if self.constraints(prefix, dummy)[0, tok] == -float("inf"):
                    break
            out.append(tok)
            if tok in self.eos:
                break
        return out

    def _record(self, start: int, n_accepted: int) -> None:
        """Count draft positions `start ..` as drafted by their owners, the first `n_accepted` as accepted."""
        offset = start - self.committed
        for i, owner in enumerate(self._owner[offset:]):
            self.stats[owner].drafted += 1
            if i < n_accepted:
                self.stats[owner].accepted += 1
        if self.tracker is not None:
            # Max-Gram tokens reached by this review: accepted up to n_accepted, the one at n_accepted rejected.
            for i, tag in enumerate(self._tag[offset : offset + n_accepted + 1]):
                if tag is not None:
                    self.tracker.update(tag, accepted=int(i < n_accepted), rejected=i == n_accepted)
