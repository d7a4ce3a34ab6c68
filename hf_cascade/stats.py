"""Per-call statistics: one record per model of the cascade (target, each assistant, Max-Gram)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CascadeStats", "LevelStats", "format_fitted_cost"]


def format_fitted_cost(draft_cost: float, token_cost: float) -> str:
    """`"D.DD + T.TTTk"`: a fitted `draft_cost + token_cost * k`, as the summary and the bench report print it."""
    return f"{draft_cost:.2f} + {token_cost:.3f}k"


@dataclass
class LevelStats:
    """What one model of the cascade did during a `generate` call.

    Args:
        name (`str`): `"target"`, `"assistant_0"`, `"assistant_1"`, ... (largest first) or `"max_gram"`.
        kind (`str`): `"target"`, `"assistant"` or `"max_gram"`.
        drafted (`int`): draft tokens this drafter contributed to reviews (by whichever model reviewed them).
        accepted (`int`): of `drafted`, how many the reviewer accepted. Excludes the reviewer's own correction or
            bonus token, so `accepted <= drafted`.
        forward_passes (`int`): forward passes of this model (0 for Max-Gram).
        forward_tokens (`int`): tokens fed through those forward passes (prompt included).
        forward_time_s (`float`): wall time inside those forward passes. On CUDA this is launch time unless the
            caller synchronises; the acceptance check after each pass synchronises anyway.
        propose_calls (`int`): Max-Gram proposals made.
        propose_time_s (`float`): wall time spent making them.
        draft_cost (`float`, *optional*): for a model whose forward passes were timed (`MaxGramConfig.measure_cost`),
            the `draft_cost` fitted to them at the end of the call; `None` otherwise, and when the model ran fewer
            than three one-token passes (a target that always reviews a neural draft): then the configured value
            applied.
        token_cost (`float`, *optional*): likewise, the fitted `token_cost`.
        nonfinite_drafts (`int`): reviews by this drafter thrown away because its scores were not finite (NaN or
            `+inf` logits, or a row with no finite score, e.g. an fp16 overflow): nothing it drafted or reviewed
            there was kept or counted in `drafted`/`accepted`. A drafter that does this costs speed, never
            correctness; the target's own scores are never checked (as in plain `generate`).
        memory_drafted (`int`): for Max-Gram, how many of `drafted` were copied from a `MaxGramMemory` (earlier
            calls and added documents) rather than from the call's own text.
        memory_accepted (`int`): of `memory_drafted`, how many the reviewer accepted.
        timing (`str`, *optional*): how this model's forwards were timed for the draft-length decisions:
            `"cpu-wall"` (host wall time), `"cuda-events"`, or `"prior"` (not timed: sampling, `measure_cost=False`,
            or a device that cannot be timed; the configured costs applied); `None` for Max-Gram.
        forward_s (`float`, *optional*): the fitted seconds of a one-token forward of this model (`None` when not
            timed).
        extra_token_s (`float`, *optional*): the fitted seconds each further token adds to a multi-token forward.
        drafts_reviewed (`int`): drafts this model reviewed (the level it reviews; the target: one per step).
        draft_tokens_reviewed (`int`): their tokens; `mean_draft_length` is the draft length the controller chose
            on average.
        skipped (`int`): times the draft-length controller skipped this drafter at a level because even its first
            review there did not pay for its time (`CascadeConfig.adaptive_drafters`); smaller drafters drafted
            for that level instead. In a batch, per row, the drafts the batch's plan left it out of
            (`hf_cascade.batch_plan`; at a sub-level, one per review of the drafter above).
        packed_layers (`int`): for an assistant, the linear layers the call ran on oneDNN-packed copies
            (`CascadeConfig.pack_drafters`, `hf_cascade.drafter_packing`); 0 when not packed by the cascade.
        packing (`str`, *optional*): for an assistant, `"packed"` or why the cascade did not pack it (`"off"`,
            `"already packed"` by the user, not on CPU, placed by accelerate, ...); `None` for the target and
            Max-Gram.
        packing_s (`float`): seconds the call spent packing this assistant (0 when its copies were kept from an
            earlier call or `pack_drafter`).
    """

    name: str
    kind: str
    drafted: int = 0
    accepted: int = 0
    forward_passes: int = 0
    forward_tokens: int = 0
    forward_time_s: float = 0.0
    propose_calls: int = 0
    propose_time_s: float = 0.0
    draft_cost: float | None = None
    token_cost: float | None = None
    nonfinite_drafts: int = 0
    memory_drafted: int = 0
    memory_accepted: int = 0
    timing: str | None = None
    forward_s: float | None = None
    extra_token_s: float | None = None
    drafts_reviewed: int = 0
    draft_tokens_reviewed: int = 0
    skipped: int = 0
    packed_layers: int = 0
    packing: str | None = None
    packing_s: float = 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """`accepted / drafted`, or `None` when nothing was drafted."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def memory_acceptance_rate(self) -> float | None:
        """`memory_accepted / memory_drafted`, or `None` when nothing was copied from a memory."""
        return self.memory_accepted / self.memory_drafted if self.memory_drafted else None

    @property
    def mean_draft_length(self) -> float | None:
        """Mean length of the drafts this model reviewed, or `None` when it reviewed none."""
        return self.draft_tokens_reviewed / self.drafts_reviewed if self.drafts_reviewed else None


@dataclass
class CascadeStats:
    """Statistics of one cascade `generate` call, returned as `output.cascade_stats` with
    `return_dict_in_generate=True`.

    In a batched call (batch size > 1, or a padded prompt) the records are totals over the batch: forward passes,
    tokens and time of each model's batched forwards (shared by the rows), drafted/accepted summed over the rows,
    `new_tokens` the rows' new tokens together (padding excluded); `rows` then holds one `CascadeStats` per row, in
    batch order, whose records count what that row drafted and accepted and the batched forward passes it took part
    in (`forward_passes`, `forward_tokens`: its own tokens; no time, which the rows share).

    Args:
        levels (`list[LevelStats]`): the target first, then the assistants largest first, then Max-Gram.
        new_tokens (`int`): tokens generated (returned after the prompt).
        wall_time_s (`float`): wall time of the whole call.
        rows (`list[CascadeStats]`): per-row records of a batched call; empty in batch 1.
    """

    levels: list[LevelStats] = field(default_factory=list)
    new_tokens: int = 0
    wall_time_s: float = 0.0
    rows: list[CascadeStats] = field(default_factory=list)

    @property
    def target(self) -> LevelStats:
        return self.levels[0]

    @property
    def tokens_per_target_forward(self) -> float | None:
        """New tokens per target forward pass; counts the target's correction/bonus token (plain decoding: 1.0)."""
        passes = self.target.forward_passes
        return self.new_tokens / passes if passes else None

    @property
    def forward_time_s(self) -> float:
        """Wall time spent in forward passes of all models."""
        return sum(level.forward_time_s for level in self.levels)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_target_forward"] = self.tokens_per_target_forward
        for level_dict, level in zip(d["levels"], self.levels, strict=True):
            level_dict["acceptance_rate"] = level.acceptance_rate
            level_dict["memory_acceptance_rate"] = level.memory_acceptance_rate
            level_dict["mean_draft_length"] = level.mean_draft_length
        d["rows"] = [row.to_dict() for row in self.rows]
        return d

    def summary(self) -> str:
        """A plain-text table, one row per model."""
        rows = [
            f"{'model':<14}{'drafted':>9}{'accepted':>10}{'rate':>7}{'forwards':>10}{'fwd tokens':>12}{'time s':>9}"
        ]
        for s in self.levels:
            rate = f"{s.acceptance_rate:.2f}" if s.acceptance_rate is not None else "-"
            secs = s.forward_time_s + s.propose_time_s
            rows.append(
                f"{s.name:<14}{s.drafted:>9}{s.accepted:>10}{rate:>7}{s.forward_passes:>10}"
                f"{s.forward_tokens:>12}{secs:>9.3f}"
            )
        rows.extend(
            f"{s.name}: {s.memory_drafted} of the drafted tokens came from max_gram_memory, {s.memory_accepted} "
            f"accepted ({s.memory_acceptance_rate:.2f})"
            for s in self.levels
            if s.memory_drafted
        )
        fitted = [
            f"{s.name} {format_fitted_cost(s.draft_cost, s.token_cost)}"
            for s in self.levels
            if s.draft_cost is not None
        ]
        if fitted:
            rows.append(
                "fitted extra cost of reviewing a k-token Max-Gram draft, in one-token forwards: " + "; ".join(fitted)
            )
        rows.extend(_control_rows(self.levels))
        rows.extend(
            f"{s.name}: ran on oneDNN-packed copies of {s.packed_layers} linear layers (pack_drafters; "
            + (f"packed in {s.packing_s:.2f} s)" if s.packing_s else "kept from an earlier call)")
            for s in self.levels
            if s.packing == "packed"
        )
        rows.extend(
            f"{s.name}: {s.nonfinite_drafts} review(s) dropped for non-finite scores (NaN/inf logits)"
            for s in self.levels
            if s.nonfinite_drafts
        )
        for i, row in enumerate(self.rows):
            rates = ", ".join(f"{s.name} {s.acceptance_rate:.2f}" for s in row.levels if s.acceptance_rate is not None)
            rows.append(f"row {i}: {row.new_tokens} new tokens" + (f"; acceptance {rates}" if rates else ""))
        tpf = self.tokens_per_target_forward
        rows.append(
            f"{self.new_tokens} new tokens in {self.wall_time_s:.3f} s; {tpf:.2f} tokens per target forward"
            if tpf is not None
            else f"{self.new_tokens} new tokens"
        )
        return "\n".join(rows)


def _control_rows(levels: list[LevelStats]) -> list[str]:
    """Summary lines of the draft-length controller: the draft lengths chosen, skipped drafters, measured costs."""
    lengths = [f"{s.name} {s.mean_draft_length:.2f}" for s in levels if s.mean_draft_length is not None]
    rows = ["mean draft length reviewed: " + "; ".join(lengths)] if lengths else []
    rows.extend(
        f"{s.name}: skipped {s.skipped} time(s) at a level where its drafts did not pay for their time"
        for s in levels
        if s.skipped
    )
    timed = [
        f"{s.name} {1000 * s.forward_s:.2f} ms + {1000 * s.extra_token_s:.3f} ms/token ({s.timing})"
        for s in levels
        if s.forward_s is not None and s.extra_token_s is not None
    ]
    if timed:
        rows.append("forward cost fitted per model: " + "; ".join(timed))
    untimed = [s.name for s in levels if s.timing == "prior"]
    if untimed:
        rows.append(f"not timed (configured/prior costs used): {', '.join(untimed)}")
    return rows
