"""Reviews: how a reviewer (the target, or a drafter reviewing a smaller drafter) accepts a draft.

Notation: `p` are the reviewer's probabilities (after logits processors), `q` the probabilities with which the draft
tokens were actually drawn. A review over a draft of `k` tokens returns `n_accepted` (the accepted draft prefix,
*not* counting the token the reviewer appends) and `next_token` (the correction after a rejection, or the bonus
token when all `k` were accepted), so every review yields `n_accepted + 1` tokens.

Exactness. With `lenience == 1` both reviews are the standard ones: greedy keeps draft tokens that equal the
reviewer's argmax; sampling is speculative sampling (Leviathan et al. 2023, Chen et al. 2023), whose output follows
`p` exactly for any `q`, provided `q` is the true distribution the draft token was drawn from. A lenient sampling
review therefore also returns, for every position it emits, the distribution that position's token was really drawn
from (`emitted_q`), so the next reviewer up can in turn verify exactly.
"""

from __future__ import annotations

import torch

from .errors import CascadeValueError

__all__ = ["greedy_review", "lenient_mixture", "review", "sampling_review", "valid_scores"]

_TINY = 1e-30


def valid_scores(scores: torch.Tensor) -> bool:
    """Whether every row of `scores` is a usable distribution: no NaN, no `+inf`, and at least one finite entry
    (`-inf` alone is fine: processors mask tokens with it).

    A drafter whose scores fail this (NaN/inf logits, e.g. an fp16 overflow) cannot review or draft: the cascade
    drops its review (`LevelStats.nonfinite_drafts`). The target's scores are never checked: plain `generate` would
    not either.

    Args:
        scores (`torch.FloatTensor` of shape `(m, vocab_size)`): processed scores.
    """
    bad = scores.isnan().any() | (scores == float("inf")).any() | ~torch.isfinite(scores).any(dim=-1).all()
    return not bool(bad)


def greedy_review(scores: torch.Tensor, draft: torch.Tensor, lenience: float = 1.0) -> tuple[int, int]:
    """Greedy review of a draft.

    Args:
        scores (`torch.FloatTensor` of shape `(k + 1, vocab_size)`): the reviewer's processed scores at the positions
            that predict the `k` draft tokens and the token after them.
        draft (`torch.LongTensor` of shape `(k,)`): the draft tokens, on `scores.device`.
        lenience (`float`): `1.0` accepts only the argmax; `l > 1` also accepts `x` with `l * p(x) >= max(p)`.

    Returns:
        `(n_accepted, next_token)`; `next_token` is the reviewer's argmax after the accepted prefix.
    """
    top = scores.argmax(dim=-1)
    k = draft.numel()
    ok = top[:k] == draft
    if lenience != 1.0 and k > 0:
        probs = torch.softmax(scores[:k], dim=-1)
        p_x = probs.gather(1, draft[:, None]).squeeze(1)
        ok |= lenience * p_x >= probs.max(dim=-1).values
    n = torch.cumprod(ok.to(torch.int64), dim=0).sum().view(1)
    # One transfer for both numbers: the acceptance count decides control flow, so one sync per review is inherent.
    n_and_top = torch.cat([n, top]).tolist()
    n_accepted = n_and_top[0]
    return n_accepted, n_and_top[1 + n_accepted]


def lenient_mixture(p: torch.Tensor, q: torch.Tensor, lenience: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual and emitted distribution of a (lenient) speculative-sampling review, row by row.

    A draft token `x ~ q` is kept with probability `min(1, l * p(x) / q(x))`; otherwise a token is drawn from the
    residual `r = normalize(max(0, p - min(q, l * p)))` (`p` itself when that is all zero). The emitted token then
    follows `m = min(q, l * p) + (1 - beta) * r` with `beta = sum(min(q, l * p))`; for `l = 1`, `m = p` exactly.

    Args:
        p (`torch.FloatTensor` of shape `(k, vocab_size)`): reviewer probabilities.
        q (`torch.FloatTensor` of shape `(k, vocab_size)`): draft probabilities.
        lenience (`float`): `l >= 1`.

    Returns:
        `(residual, emitted)`, both of shape `(k, vocab_size)` and normalised per row.
    """
    kept = torch.minimum(q, lenience * p)
    residual = (p - kept).clamp_min(0)
    mass = residual.sum(dim=-1, keepdim=True)
    residual = torch.where(mass > _TINY, residual / mass.clamp_min(_TINY), p)
    beta = kept.sum(dim=-1, keepdim=True)
    emitted = kept + (1.0 - beta).clamp_min(0) * residual
    return residual, emitted


def sampling_review(
    probs: torch.Tensor, draft: torch.Tensor, q: torch.Tensor, lenience: float = 1.0, need_emitted_q: bool = False
) -> tuple[int, int, torch.Tensor | None]:
    """Speculative-sampling review of a draft, exact for `lenience == 1`.

    Args:
        probs (`torch.FloatTensor` of shape `(k + 1, vocab_size)`): reviewer probabilities `p`.
        draft (`torch.LongTensor` of shape `(k,)`): draft tokens.
        q (`torch.FloatTensor` of shape `(k, vocab_size)`): the distributions the draft tokens were drawn from
            (one-hot rows for deterministic drafters such as Max-Gram).
        lenience (`float`): `l >= 1`; see `lenient_mixture`.
        need_emitted_q (`bool`): also return the distributions of the emitted tokens.

    Returns:
        `(n_accepted, next_token, emitted_q)`. `emitted_q` has shape `(n_accepted + 1, vocab_size)`: the
        distribution each emitted token (accepted prefix, then `next_token`) was drawn from, or `None` when not asked.
    """
    k = draft.numel()
    if k == 0:
        next_token = int(torch.multinomial(probs[0], 1))
        return 0, next_token, probs[:1] if need_emitted_q else None
    # A q row that is not a distribution (NaN/inf from a broken drafter) cannot be corrected for: reject its token
    # for certain and draw from p itself (a zero q row makes the residual p), which is exact whatever the draft was.
    bad_q = ~torch.isfinite(q).all(dim=-1)
    q = torch.where(bad_q[:, None], 0.0, q)
    p_x = probs[:k].gather(1, draft[:, None]).squeeze(1)
    q_x = q.gather(1, draft[:, None]).squeeze(1).clamp_min(_TINY)
    keep_prob = torch.where(bad_q, 0.0, (lenience * p_x / q_x).clamp(max=1.0))
    accepted = torch.rand_like(keep_prob) < keep_prob
    n_accepted = int(torch.cumprod(accepted.to(torch.int64), dim=0).sum())
    if n_accepted == k:
        next_token = int(torch.multinomial(probs[k], 1))
        emitted = None
        if need_emitted_q:
            emitted = torch.cat([lenient_mixture(probs[:k], q, lenience)[1], probs[k:]])
        return n_accepted, next_token, emitted
    rows = n_accepted + 1
    residual, emitted = lenient_mixture(probs[:rows], q[:rows], lenience)
    next_token = int(torch.multinomial(residual[n_accepted], 1))
    return n_accepted, next_token, emitted if need_emitted_q else None


def review(
    scores: torch.Tensor,
    draft: torch.Tensor,
    q: torch.Tensor | None,
    lenience: float,
    do_sample: bool,
    need_emitted_q: bool = False,
) -> tuple[int, int, torch.Tensor | None]:
    """Dispatch to `greedy_review` or `sampling_review`.

    Args:
        scores (`torch.FloatTensor` of shape `(k + 1, vocab_size)`): processed reviewer scores.
        draft (`torch.LongTensor` of shape `(k,)`): draft tokens.
        q (`torch.FloatTensor` of shape `(k, vocab_size)`, *optional*): draft distributions (sampling only).
        lenience (`float`): `1.0` for the target.
        do_sample (`bool`): sampling or greedy.
        need_emitted_q (`bool`): sampling only; see `sampling_review`.

    Returns:
        `(n_accepted, next_token, emitted_q)`; `emitted_q` is `None` for greedy reviews.
    """
    if not do_sample:
        n_accepted, next_token = greedy_review(scores, draft, lenience)
        return n_accepted, next_token, None
    if q is None:
        raise CascadeValueError("A sampling review needs the draft distributions q.")
    probs = torch.softmax(scores, dim=-1)
    return sampling_review(probs, draft, q, lenience, need_emitted_q)
