"""The target's exact review of one row's draft: shared by the batch-1 loop (`hf_cascade.generate`) and the batched
one (`hf_cascade.batch`), so both accept, stop and commit a row exactly alike."""

from __future__ import annotations

from typing import Any

import torch
from transformers.generation.stopping_criteria import StoppingCriteriaList

from .cascade import CascadeDrafter
from .verification import review

__all__ = ["stop_within", "target_step"]


def target_step(
    drafter: CascadeDrafter,
    target: Any,
    logits: torch.Tensor,
    draft: list[int],
    q: torch.Tensor | None,
    do_sample: bool,
    criteria: StoppingCriteriaList,
    max_length: int,
) -> tuple[list[int], torch.Tensor, bool]:
    """Review `draft` with the target's `logits`, commit what it keeps, and say whether the row is finished.

    Args:
        drafter (`CascadeDrafter`): the row; its sequence ends with `draft`, not yet committed.
        target (`ModelRunner` or `RowView`): the target's runner for this row (`truncate_to`, `commit`).
        logits (`torch.FloatTensor` of shape `(len(draft) + 1, vocab_size)`): the target's raw logits at positions
            `committed - 1 ..`.
        draft (`list[int]`): the draft tokens.
        q (`torch.FloatTensor` of shape `(len(draft), vocab_size)`, *optional*): their distributions (sampling).
        do_sample (`bool`): sampling or greedy.
        criteria (`StoppingCriteriaList`): the user's stopping criteria (not max length or EOS).
        max_length (`int`): the row's length limit, in tokens of its own (unpadded) sequence.

    Returns:
        `(kept, step_scores, finished)`: the committed tokens, the target's processed scores (row `i` for
        `kept[i]`), and whether the row stopped (EOS, a criterion, or `max_length`).
    """
    start = drafter.committed
    target.stats.drafts_reviewed += 1
    target.stats.draft_tokens_reviewed += len(draft)
    step_scores = drafter.process(logits, start - 1)
    draft_t = torch.tensor(draft, dtype=torch.long, device=drafter.device)
    n, next_token, _ = review(step_scores, draft_t, q, lenience=1.0, do_sample=do_sample)  # exact, always
    target.truncate_to(start + n)
    kept, finished = stop_within(draft[:n] + [next_token], drafter, criteria, step_scores)
    drafter.advance(kept)
    target.commit(len(drafter.ids))
    return kept, step_scores, finished or len(drafter.ids) >= max_length


def stop_within(
    kept: list[int], drafter: CascadeDrafter, criteria: StoppingCriteriaList, step_scores: torch.Tensor
) -> tuple[list[int], bool]:
    """Cut `kept` at the first token after which generation stops (EOS or a user criterion), as plain decoding would.

    Args:
        kept (`list[int]`): the tokens the target's review yields after the committed prefix.
        drafter (`CascadeDrafter`): gives the committed prefix (after the row's padding, which criteria see as plain
            batched `generate` shows it), the EOS tokens and the device.
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
                prefix = drafter.padding + drafter.ids[: drafter.committed] + kept
                sequence = torch.tensor([prefix], dtype=torch.long, device=drafter.device)
            length = len(drafter.padding) + drafter.committed + i + 1
            if bool(criteria(sequence[:, :length], step_scores[i : i + 1]).any()):
                return kept[: i + 1], True
    return kept, False
