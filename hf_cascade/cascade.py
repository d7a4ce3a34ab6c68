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
kept. `draft`, `_draft_level` and `_review` are generators: each drafter forward pass is a `ForwardRequest` they
`yield`, and the logits come back as the value of the `yield`. One row's logic stays the pseudocode above; the
caller decides how the forwards run (`drive`: one by one, batch 1; `hf_cascade.batch`: batched over rows). One
row's sequence and per-position draft records live in a `DraftBuffer`; the settings shared by every row of a call in
a `DraftSettings`; `CascadeDrafter.build` builds the whole drafting side of a `generate` call from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation import logits_process
from transformers.generation.logits_process import LogitsProcessorList

from .adaptive import MEMORY, AcceptanceTracker, max_gram_tracker, scored_proposal
from .batch_plan import BatchPlan
from .config import CascadeConfig, MaxGramConfig
from .controller import DraftController
from .cost import TIMING_PRIOR, ForwardCostModel, forward_cost_model
from .errors import CascadeValueError
from .max_gram import BigramTable, MaxGramIndex
from .memory import MaxGramMemory
from .runner import ModelRunner
from .stats import LevelStats
from .verification import review, valid_scores

__all__ = [
    "CascadeDrafter",
    "DraftBuffer",
    "DraftSettings",
    "DraftedPosition",
    "Drafting",
    "ForwardRequest",
    "catch_up_tokens",
    "drive",
    "encode",
    "eos_token_ids",
    "first_below",
    "hard_constraints",
    "load_bigram",
    "token_probabilities",
]

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


def token_probabilities(scores: torch.Tensor, tokens: Sequence[int]) -> list[float]:
    """Probability of each token under `softmax` of its row of `scores` (a drafter's confidence in what it kept).

    Args:
        scores (`torch.FloatTensor` of shape `(m, vocab_size)`): processed logits, row `i` for `tokens[i]`.
        tokens (`Sequence[int]`): `m` tokens.

    Returns:
        `list[float]` of length `m`.
    """
    if not tokens:
        return []
    rows = torch.arange(len(tokens), device=scores.device)
    index = torch.tensor(tokens, dtype=torch.long, device=scores.device)
    return torch.softmax(scores, dim=-1)[rows, index].tolist()


def first_below(probabilities: Sequence[float | None], threshold: float) -> int | None:
    """Index of the first probability below `threshold` (`None` entries never are), or `None`."""
    return next((i for i, p in enumerate(probabilities) if p is not None and p < threshold), None)


def eos_token_ids(generation_config: GenerationConfig) -> frozenset[int]:
    """The EOS token ids of a (prepared) generation config."""
    eos = getattr(generation_config, "_eos_token_tensor", None)
    if eos is None:
        eos = generation_config.eos_token_id
    if eos is None:
        return frozenset()
    if isinstance(eos, torch.Tensor):
        return frozenset(eos.flatten().tolist())
    return frozenset({eos} if isinstance(eos, int) else eos)


def load_bigram(table: BigramTable | str | None, vocab_size: int | None) -> BigramTable | None:
    """`table`, loaded when it is a path, checked against the target's `vocab_size` (when known)."""
    bigram = table if table is None or isinstance(table, BigramTable) else BigramTable.load(table)
    if bigram is not None and vocab_size is not None and bigram.vocab_size != vocab_size:
        raise CascadeValueError(
            f"The Max-Gram bigram table covers {bigram.vocab_size} tokens but the target's vocabulary has "
            f"{vocab_size}; build the table for this vocabulary (BigramTable.from_model or from_corpus)."
        )
    return bigram


def catch_up_tokens(length: int, cached: int) -> int:
    """Tokens a drafter whose cache holds `cached` tokens reads first in a pass at the end of a `length`-token
    sequence, after skipped steps; 0 for a cache never filled: any use of the drafter reads the prompt once, and
    pricing it would keep a drafter that pays from ever starting."""
    return max(length - 1 - cached, 0) if cached else 0


class ForwardRequest(NamedTuple):
    """A forward pass a row's drafting waits for: the logits of drafter `runner` at positions `first .. end - 1` of
    the row's sequence (its `DraftBuffer.ids`; row `i` of the answer predicts token `first + i + 1`).

    The cascade's steps are generators that `yield` these and receive the logits back (`logits = yield request`),
    so one row's control flow stays plain Python while whoever drives it decides how forwards run: `drive` runs them
    one by one on the row's own runners (batch 1); `hf_cascade.batch.draft_rows` runs one batched forward per model
    for every row that asked (batch > 1).

    Args:
        runner (`int`): index of the neural drafter (`CascadeDrafter.runners`), largest first.
        first (`int`): first position whose logits are needed.
        end (`int`): one past the last position (`<= len(ids)`).
    """

    runner: int
    first: int
    end: int


_Result = TypeVar("_Result")
# A cascade step in flight: yields `ForwardRequest`s, is sent the logits (`torch.FloatTensor` of shape
# `(end - first, vocab_size)`), returns its result.
Drafting = Generator[ForwardRequest, torch.Tensor, _Result]


def drive(steps: Drafting[_Result], execute: Callable[[ForwardRequest], torch.Tensor]) -> _Result:
    """Run `steps` to completion, answering each `ForwardRequest` with `execute(request)`; return its result."""
    try:
        request = next(steps)
        while True:
            request = steps.send(execute(request))
    except StopIteration as stop:
        return stop.value


class DraftedPosition(NamedTuple):
    """What a draft position records besides its token.

    Args:
        q (`torch.FloatTensor` of shape `(vocab_size,)`, *optional*): the distribution the token was drawn from;
            `None` for a deterministic (one-hot) draft such as Max-Gram's, or when greedy.
        owner (`int`): index of the drafter that produced it (its `LevelStats` in `CascadeDrafter.stats`).
        tag (`tuple`, *optional*): for a Max-Gram token, the `(level, match bucket[, MEMORY])` key its acceptance is
            tracked under (`hf_cascade.adaptive`).
        confidence (`float`, *optional*): for a neural drafter's token, the probability the drafter gave it (its
            processed scores), which the draft-length controller prices its acceptance by
            (`hf_cascade.controller.confidence_bucket`); `None` when not computed (no controller) or for Max-Gram.
    """

    q: torch.Tensor | None
    owner: int
    tag: tuple[int, ...] | None = None
    confidence: float | None = None


@dataclass
class DraftBuffer:
    """One row's token sequence: a committed prefix followed by the current draft, one `DraftedPosition` per draft
    token.

    Every change of the draft goes through these methods, which keep `len(positions) == len(ids) - committed`.

    Args:
        ids (`list[int]`): the whole sequence, committed prefix and draft.
        committed (`int`): length of the committed prefix (what the target accepted).
        positions (`list[DraftedPosition]`): one record per draft token `ids[committed:]`.
    """

    ids: list[int]
    committed: int
    positions: list[DraftedPosition] = field(default_factory=list)

    @classmethod
    def from_prompt(cls, prompt_ids: Iterable[int]) -> DraftBuffer:
        ids = list(prompt_ids)
        return cls(ids, len(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def drafted(self, start: int, end: int | None = None) -> list[DraftedPosition]:
        """The records of sequence positions `start .. end - 1` (all draft positions, `start >= committed`)."""
        end = len(self.ids) if end is None else end
        return self.positions[start - self.committed : end - self.committed]

    def append(
        self,
        tokens: Sequence[int],
        q_rows: Sequence[torch.Tensor | None],
        owner: int,
        tag: tuple[int, ...] | None = None,
        confidences: Sequence[float | None] | None = None,
    ) -> None:
        """Append draft `tokens`, token `i` drawn from `q_rows[i]` by drafter `owner`, which gave it probability
        `confidences[i]` (all `None` when not given)."""
        if len(q_rows) != len(tokens):
            raise CascadeValueError(
                f"DraftBuffer.append got {len(tokens)} tokens but {len(q_rows)} q rows; pass one q row (None for a "
                "one-hot draft) per token."
            )
        confidences = confidences if confidences is not None else [None] * len(tokens)
        self.ids.extend(tokens)
        self.positions.extend(DraftedPosition(q, owner, tag, p) for q, p in zip(q_rows, confidences, strict=True))

    def assign(
        self,
        start: int,
        q_rows: Sequence[torch.Tensor | None],
        owner: int,
        confidences: Sequence[float | None] | None = None,
    ) -> None:
        """Re-attribute the draft from `start` on to drafter `owner`, which emitted its tokens from `q_rows` and gave
        them probabilities `confidences` (the tokens a reviewing drafter kept are its own contribution to the level
        above)."""
        if len(q_rows) != len(self.ids) - start:
            raise CascadeValueError(
                f"DraftBuffer.assign got {len(q_rows)} q rows for {len(self.ids) - start} tokens from position {start}; "
                "truncate the draft to what the reviewer kept first."
            )
        confidences = confidences if confidences is not None else [None] * len(q_rows)
        self.positions[start - self.committed :] = [
            DraftedPosition(q, owner, None, p) for q, p in zip(q_rows, confidences, strict=True)
        ]

    def truncate(self, length: int) -> None:
        """Cut the draft to `length` tokens of sequence (`length >= committed`)."""
        del self.ids[length:]
        del self.positions[max(length - self.committed, 0) :]

    def commit(self, tokens: Sequence[int]) -> None:
        """Append `tokens` as committed and drop the draft records: everything in `ids` is now committed."""
        self.ids.extend(tokens)
        self.committed = len(self.ids)
        self.positions.clear()

    def ends_with(self, tokens: frozenset[int]) -> bool:
        """Whether the draft is non-empty and its last token is one of `tokens` (an EOS: nothing may follow)."""
        return len(self.ids) > self.committed and self.ids[-1] in tokens

    def dense_q(self, start: int, end: int, vocab_size: int, device: torch.device) -> torch.Tensor:
        """Draft distributions of positions `start .. end - 1` as a `(end - start, vocab_size)` tensor (one-hot rows
        for deterministic drafts)."""
        q = torch.zeros(end - start, vocab_size, device=device)
        one_hot_rows, one_hot_tokens = [], []
        for i, position in enumerate(self.drafted(start, end)):
            if position.q is None:
                one_hot_rows.append(i)
                one_hot_tokens.append(self.ids[start + i])
            else:
                q[i] = position.q
        if one_hot_rows:
            q[one_hot_rows, one_hot_tokens] = 1.0
        return q


@dataclass(frozen=True)
class DraftSettings:
    """What drafting needs to know about a `generate` call, the same for every row.

    Args:
        k_matrix (`list[list[int]]` of shape `(n, n)`): see `CascadeConfig.k_matrix` (resolved for the drafters).
        lenience (`float`): leniency of reviews between drafters.
        confidence_threshold (`float`): see `CascadeConfig.confidence_threshold`.
        use_max_gram (`bool`): whether Max-Gram is the last drafter.
        max_gram (`MaxGramConfig`): Max-Gram's settings (its costs also apply to timing the neural reviewers).
        do_sample (`bool`): sampling (track draft distributions) or greedy.
        logits_processor (`LogitsProcessorList`): the target's processors, applied to every reviewer's logits.
        eos_token_ids (`frozenset[int]`): tokens that end generation.
        vocab_size (`int`): size of the target's logits.
        device (`torch.device`): where scores are processed and reviewed (the target's input device).
        adaptive_drafters (`bool`, *optional*, defaults to `False`): see `CascadeConfig.adaptive_drafters`.
        batch_layout (`str`, *optional*, defaults to `"padded"`): see `CascadeConfig.batch_layout`.
    """

    k_matrix: list[list[int]]
    lenience: float
    confidence_threshold: float
    use_max_gram: bool
    max_gram: MaxGramConfig
    do_sample: bool
    logits_processor: LogitsProcessorList
    eos_token_ids: frozenset[int]
    vocab_size: int
    device: torch.device
    adaptive_drafters: bool = False
    batch_layout: str = "padded"

    @classmethod
    def from_config(
        cls,
        config: CascadeConfig,
        num_assistants: int,
        generation_config: GenerationConfig,
        logits_processor: LogitsProcessorList | None,
        vocab_size: int,
        device: torch.device,
    ) -> DraftSettings:
        """Settings of a cascade with `num_assistants` neural drafters under `config` and `generation_config`."""
        return cls(
            k_matrix=config.resolved_k_matrix(num_assistants),
            lenience=config.lenience,
            confidence_threshold=config.confidence_threshold,
            use_max_gram=config.use_max_gram,
            max_gram=config.max_gram,
            do_sample=bool(generation_config.do_sample),
            logits_processor=logits_processor if logits_processor is not None else LogitsProcessorList(),
            eos_token_ids=eos_token_ids(generation_config),
            vocab_size=vocab_size,
            device=device,
            adaptive_drafters=config.adaptive_drafters,
            batch_layout=config.batch_layout,
        )


@torch.no_grad()
def _assistant_runner(
    model: PreTrainedModel,
    name: str,
    inputs_tensor: torch.Tensor | None,
    encoder_attention_mask: torch.Tensor | None,
    cost: ForwardCostModel | None,
) -> ModelRunner:
    stats = LevelStats(name, "assistant")
    if not model.config.is_encoder_decoder:
        return ModelRunner(model, stats, cost=cost)
    encoder_outputs, mask = encode(model, inputs_tensor, encoder_attention_mask)
    return ModelRunner(model, stats, encoder_outputs=encoder_outputs, encoder_attention_mask=mask, cost=cost)


@torch.no_grad()
def encode(
    model: PreTrainedModel, inputs_tensor: torch.Tensor, encoder_attention_mask: torch.Tensor | None
) -> tuple[Any, torch.Tensor | None]:
    """An encoder-decoder drafter's own encoding of the source (each drafter encodes it once, with its encoder).

    Args:
        model (`PreTrainedModel`): the encoder-decoder drafter.
        inputs_tensor (`torch.LongTensor` of shape `(batch_size, source_length)`): the source.
        encoder_attention_mask (`torch.LongTensor` of shape `(batch_size, source_length)`, *optional*): its mask.

    Returns:
        `(encoder_outputs, mask)`: the encoder's output and the mask, both on the model's device.
    """
    mask = encoder_attention_mask.to(model.device) if encoder_attention_mask is not None else None
    encoder_outputs = model.get_encoder()(
        input_ids=inputs_tensor.to(model.device), attention_mask=mask, return_dict=True
    )
    return encoder_outputs, mask


class CascadeDrafter:
    """Drafting state of one cascade `generate` call (one row).

    Build it with `CascadeDrafter.build`.

    Args:
        prompt_ids (`Sequence[int]`): the starting sequence (decoder sequence for encoder-decoders).
        runners (`list[ModelRunner]`): the neural drafters, largest first; their `stats` are the first records of
            `self.stats`.
        settings (`DraftSettings`): the call's settings.
        corpus (`Iterable[Sequence[int]]`, *optional*): fixed documents Max-Gram searches besides the sequence (the
            encoder input of encoder-decoders).
        bigram (`BigramTable`, *optional*): Max-Gram's fallback table.
        target_cost (`ForwardCostModel`, *optional*): the target's timed forward passes; with a drafter runner's
            own `cost`, replaces the configured `draft_cost`/`token_cost` for the Max-Gram drafts that model reviews
            (`MaxGramConfig.measure_cost`) and gives the draft-length controller its costs
            (`CascadeConfig.adaptive_drafters`). Without it (the target runs elsewhere, e.g. in transformers'
            assisted loop) the target is put on a prior four times the largest drafter's cost.
        memory (`MaxGramMemory`, *optional*): earlier sequences Max-Gram also copies from (`scored_proposal`).
        padding (`Sequence[int]`, *optional*): the row's left padding in a batched call. Logits processors and
            stopping criteria see it before the sequence, as plain batched `generate` shows them the padded row;
            Max-Gram never does.
        logits_processor (`LogitsProcessorList`, *optional*): this row's processors, when they differ from
            `settings.logits_processor` (a batched call's processors keep per-row state: `hf_cascade.batch`).
        uncut_target_drafts (`bool`, *optional*, defaults to `False`): propose Max-Gram drafts for the target uncut
            and keep their chances in `target_chances`: the batched cascade cuts all rows' drafts at once
            (`hf_cascade.adaptive.batch_draft_length`), as a row's draft widens the forward pass of every row.
        tracker (`AcceptanceTracker`, *optional*): the Max-Gram acceptance record to use (and update), shared with
            the other rows of a batch; by default the memory's (`MaxGramMemory.tracker`), else a new one.

    Attributes:
        buffer (`DraftBuffer`): the sequence and the current draft.
        stats (`list[LevelStats]`): one record per drafter (assistants, then Max-Gram).
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        runners: list[ModelRunner],
        settings: DraftSettings,
        corpus: Iterable[Sequence[int]] = (),
        bigram: BigramTable | None = None,
        target_cost: ForwardCostModel | None = None,
        memory: MaxGramMemory | None = None,
        padding: Sequence[int] = (),
        logits_processor: LogitsProcessorList | None = None,
        uncut_target_drafts: bool = False,
        tracker: AcceptanceTracker | None = None,
    ):
        self.buffer = DraftBuffer.from_prompt(prompt_ids)
        self.uncut_target_drafts = uncut_target_drafts
        # With `uncut_target_drafts`: the chances of the current draft (one per token) for the batch to cut it.
        self.target_chances: list[float] | None = None
        self.padding = list(padding)
        self.runners = runners
        self.settings = settings
        self.k = settings.k_matrix
        self.do_sample = settings.do_sample
        self.processors = logits_processor if logits_processor is not None else settings.logits_processor
        self.constraints = hard_constraints(self.processors)
        self.eos = settings.eos_token_ids
        self.vocab_size = settings.vocab_size
        self.device = settings.device
        self.stats = [runner.stats for runner in runners]
        self.index: MaxGramIndex | None = None
        self.bigram = bigram
        self.memory = memory if settings.use_max_gram else None
        self.tracker = None
        self.max_gram_column = -1
        if settings.use_max_gram:
            max_gram = settings.max_gram
            self.index = MaxGramIndex(max_gram.max_ngram_size, max_gram.min_ngram_size, corpus, max_gram.occurrence)
            self.index.extend(self.buffer.ids)
            if max_gram.adaptive_length:  # a memory carries the acceptance record of earlier calls (its tracker)
                if tracker is None:
                    tracker = self.memory.tracker if self.memory is not None else max_gram_tracker()
                self.tracker = tracker
            self.max_gram_column = len(runners)
            self.stats.append(LevelStats("max_gram", "max_gram"))
        self.num_drafters = len(self.stats)
        # The model that reviews the draft built at level r: the target for r = 0, drafter r - 1 otherwise.
        self._target_runs_elsewhere = target_cost is None
        if target_cost is None:
            largest = max((runner.cost.prior_unit_s for runner in runners if runner.cost is not None), default=0.25)
            max_gram = settings.max_gram
            target_cost = ForwardCostModel(
                max_gram.draft_cost, max_gram.token_cost, timing=TIMING_PRIOR, prior_unit_s=4 * largest
            )
        self.reviewer_costs = [target_cost, *(runner.cost for runner in runners)]
        self.controller: DraftController | None = None
        # In a batch, the reviews every row makes this step (`hf_cascade.batch_plan`), set before each step.
        self.plan: BatchPlan | None = None
        if settings.adaptive_drafters and runners and all(cost is not None for cost in self.reviewer_costs):
            below = [m < self.num_drafters for m in range(1, len(self.reviewer_costs) + 1)]
            self.controller = DraftController(self.reviewer_costs, below)
        self._step_started = 0.0

    @classmethod
    def build(
        cls,
        input_ids: torch.LongTensor,
        assistant_models: Sequence[PreTrainedModel],
        settings: DraftSettings,
        *,
        inputs_tensor: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        bigram_table: BigramTable | str | None = None,
        target_cost: ForwardCostModel | None = None,
        memory: MaxGramMemory | None = None,
    ) -> CascadeDrafter:
        """The drafting side of a cascade `generate` call: the assistants' runners, Max-Gram and its bigram table.

        ```python
        settings = DraftSettings.from_config(config, len(assistants), generation_config, processors, vocab, device)
        drafter = CascadeDrafter.build(input_ids, assistants, settings)
        ```

        Args:
            input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the prompt (decoder ids for
                encoder-decoders).
            assistant_models (`Sequence[PreTrainedModel]`): neural drafters, largest first.
            settings (`DraftSettings`): the call's settings (`DraftSettings.from_config`).
            inputs_tensor (`torch.LongTensor` of shape `(1, source_length)`, *optional*): encoder input of
                encoder-decoders; encoded by each drafter and searched by Max-Gram.
            encoder_attention_mask (`torch.LongTensor` of shape `(1, source_length)`, *optional*): its mask.
            bigram_table (`BigramTable` or `str`, *optional*): overrides `settings.max_gram.bigram_table`.
            target_cost (`ForwardCostModel`, *optional*): the target's timed forward passes, when the caller runs
                them (`hf_cascade.generate`); without it the target's Max-Gram drafts use the configured costs
                and the controller a prior (see `CascadeDrafter`).
            memory (`MaxGramMemory`, *optional*): earlier sequences Max-Gram also copies from (read only here).
        """
        runners = [
            _assistant_runner(
                model,
                f"assistant_{i}",
                inputs_tensor,
                encoder_attention_mask,
                forward_cost_model(model, settings.max_gram, settings.do_sample),
            )
            for i, model in enumerate(assistant_models)
        ]
        bigram = None
        if settings.use_max_gram:
            table = bigram_table if bigram_table is not None else settings.max_gram.bigram_table
            bigram = load_bigram(table, settings.vocab_size)
        corpus = [inputs_tensor[0].tolist()] if inputs_tensor is not None else []
        return cls(
            input_ids[0].tolist(),
            runners,
            settings,
            corpus=corpus,
            bigram=bigram,
            target_cost=target_cost,
            memory=memory,
        )

    # ------------------------------------------------------------------ sequence bookkeeping
    @property
    def ids(self) -> list[int]:
        """The whole sequence: committed prefix, then the current draft (`buffer.ids`)."""
        return self.buffer.ids

    @property
    def committed(self) -> int:
        """Length of the committed prefix."""
        return self.buffer.committed

    def draft_chances(self) -> list[float] | None:
        """The chance that the first `k` tokens of the current draft are all accepted by the target, per `k`, for the
        batch to cut every row's draft at once (`hf_cascade.batch`): Max-Gram's own chances for a draft proposed
        uncut (`uncut_target_drafts`), else the draft-length controller's tracked acceptance of each token's drafter
        at level 0; `None` without either (a fixed k-matrix is kept as configured)."""
        if self.target_chances is not None:
            return self.target_chances
        if self.controller is None:
            return None
        chances, p = [], 1.0
        for position in self.buffer.drafted(self.committed):
            p *= self.controller.token_rate(0, position.owner, position.confidence)
            chances.append(p)
        return chances

    def truncate(self, length: int) -> None:
        """Cut the draft to `length` tokens of sequence; cached states past it become stale."""
        self.buffer.truncate(length)
        for runner in self.runners:
            runner.truncate_to(length)

    def draft(self, cap: int) -> tuple[list[int], torch.Tensor | None]:
        """Build the draft the target reviews (level 0), keeping `len(sequence) <= cap`, running each forward pass on
        this row's own runners as it is asked for.

        Returns:
            `(tokens, q)`: the draft tokens and, when sampling, `torch.FloatTensor` of shape `(k, vocab_size)` with
            the distribution each token was drawn from.
        """
        return drive(self.drafting(cap), self.run_forward)

    def drafting(self, cap: int) -> Drafting[tuple[list[int], torch.Tensor | None]]:
        """`draft(cap)` as a generator of the forward passes it needs (see `ForwardRequest`); returns what `draft`
        returns."""
        start = len(self.buffer)
        self.target_chances = [] if self.uncut_target_drafts else None
        if self.controller is not None:
            self._step_started = self.controller.clock()
        if self.num_drafters:
            yield from self._draft_level(0, cap)
        tokens = self.ids[start:]
        return tokens, self.dense_q(start, len(self.buffer)) if self.do_sample else None

    def run_forward(self, request: ForwardRequest) -> torch.Tensor:
        """Answer `request` with this row's own runner (the batch-1 forward pass)."""
        return self.runners[request.runner].logits(self.ids, request.first, request.end)

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
        self._record(start, n, level=0)
        if self.controller is not None:
            if self._target_runs_elsewhere:  # never timed here: count its review at its prior cost
                self.reviewer_costs[0].charge(len(draft) + 1)
            self.controller.record_review(0, self._step_started, len(kept))
        self.truncate(start + n)
        self.buffer.commit(kept[n:])
        for runner in self.runners:
            runner.commit(self.committed)
        if self.index is not None:
            self.index.extend(kept)
        return n

    def dense_q(self, start: int, end: int) -> torch.Tensor:
        """Draft distributions of positions `start .. end - 1` as a `(end - start, vocab_size)` tensor."""
        return self.buffer.dense_q(start, end, self.vocab_size, self.device)

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
        prefix = torch.tensor(
            [self.padding + self.ids[: first + logits.shape[0]]], dtype=torch.long, device=self.device
        )
        first += len(self.padding)
        scores = logits.clone()
        for i in range(logits.shape[0]):
            scores[i] = self.processors(prefix[:, : first + 1 + i], logits[i : i + 1])[0]
        return scores

    # ------------------------------------------------------------------ the cascade (paper's `step`)
    def _draft_level(self, level: int, cap: int) -> Drafting[None]:
        """Extend the sequence with the draft reviewed at `level` (row `K[level]`), never past `cap` tokens."""
        start = len(self.buffer)
        goal = 0
        for c in range(level, self.num_drafters):
            goal += self.k[level][c]
            column_start, reviews = len(self.buffer), 0
            while len(self.buffer) - start < goal and len(self.buffer) < cap and not self.buffer.ends_with(self.eos):
                before = len(self.buffer)
                if c == self.max_gram_column:
                    if level and self.plan is not None:
                        break  # a batch's plan: Max-Gram drafts for the target only (`hf_cascade.batch_plan`)
                    # One proposal: Max-Gram already extends its own copy, and what it cut was cut on purpose.
                    self._propose_max_gram(min(goal - (before - start), cap - before), level, start)
                    break
                if not self._pays(level, c, start, column_start, min(goal, cap - start), reviews):
                    break  # the controller (or the batch's plan) cut drafter c's segment: the next drafter goes on
                reviews += 1
                if not (yield from self._review(c, cap)):
                    return  # drafter c is unsure of its last token: end the level

    def _pays(self, level: int, c: int, start: int, column_start: int, bound: int, reviews: int) -> bool:
        """Whether neural drafter `c` reviews once more for the draft at `level` begun at `start`: as the batch's plan
        says (`plan`), else as the draft-length controller's rule says (always without either); counts a skip when
        `c` makes no review there.

        Args:
            level (`int`): the level being drafted.
            c (`int`): the neural drafter.
            start (`int`): where the level's draft begins in the sequence.
            column_start (`int`): where drafter `c`'s segment begins.
            bound (`int`): the most tokens the level's draft may hold after `c`'s segment.
            reviews (`int`): the reviews `c` made for this draft so far.
        """
        if self.plan is not None:  # the batch decided for every row (`hf_cascade.batch_plan`)
            pays = reviews < self.plan.reviews(level, c)
        elif self.controller is not None:
            owners, confidences = self._owners(start)
            own, room = len(self.buffer) - column_start, bound - len(owners)
            # The review's pass starts at the token before its sub-draft; a drafter skipped for some steps reads the
            # tokens it missed first.
            lag = catch_up_tokens(len(self.buffer), self.runners[c].cached_length())
            # The rule, or a forced review.
            pays = self.controller.extend(level, c, owners, own, room, catch_up=lag, confidences=confidences)
        else:
            return True
        if not pays and not reviews:
            self.stats[c].skipped += 1
        return pays

    def _review(self, c: int, cap: int) -> Drafting[bool]:
        """Drafter `c` reviews the sub-cascade below it and keeps the accepted prefix plus one token of its own.

        Args:
            c (`int`): the neural drafter.
            cap (`int`): the sequence may not grow past `cap` tokens.

        Returns:
            `False` when drafter `c` kept a token it gives probability below `confidence_threshold` (the draft is cut
            after the first such token) or when its scores were not finite (nothing is kept); `True` otherwise.
        """
        start = len(self.buffer)
        started = self.controller.clock() if self.controller is not None else 0.0
        yield from self._draft_level(c + 1, cap - 1)  # leave room for the reviewer's own token
        end = len(self.buffer)
        draft = self.ids[start:end]
        logits = yield ForwardRequest(c, start - 1, end)
        scores = self.process(logits, start - 1)
        if not valid_scores(scores):
            # A broken drafter (NaN/inf logits, e.g. an fp16 overflow) can judge nothing and emit nothing: drop the
            # sub-draft it was to review, unrecorded (its drafters did nothing wrong), and end this level's draft.
            self.stats[c].nonfinite_drafts += 1
            self.truncate(start)
            return False
        q = self.dense_q(start, end) if self.do_sample else None
        draft_t = torch.tensor(draft, dtype=torch.long, device=self.device)
        n, next_token, emitted = review(scores, draft_t, q, self.settings.lenience, self.do_sample, need_emitted_q=True)
        self.stats[c].drafts_reviewed += 1
        self.stats[c].draft_tokens_reviewed += len(draft)
        self._record(start, n, level=c + 1)
        self.truncate(start + n)  # drop the rejected tail
        # The kept tokens are now drafter c's contribution, drawn from the distributions the review emitted.
        rows: list[torch.Tensor | None] = list(emitted) if emitted is not None else [None] * (n + 1)
        confidences = self._confidences(scores, [*draft[:n], next_token])
        self.buffer.assign(start, rows[:n], owner=c, confidences=confidences[:n])
        if not (n == len(draft) and n > 0 and draft[-1] in self.eos):  # nothing follows an accepted EOS
            self.buffer.append([next_token], rows[n : n + 1], owner=c, confidences=confidences[n:])
        sure = self._cut_unsure(confidences, start)
        if self.controller is not None:
            self.controller.record_review(c + 1, started, len(self.buffer) - start)
        return sure

    def _confidences(self, scores: torch.Tensor, kept: list[int]) -> list[float | None]:
        """The reviewing drafter's probability of each token it kept (`scores`: its processed logits, row `i` for
        `kept[i]`), when the controller or `confidence_threshold` uses them; `None`s otherwise (no softmax)."""
        if self.controller is None and self.settings.confidence_threshold <= 0:
            return [None] * len(kept)
        return token_probabilities(scores[: len(kept)], kept)

    def _cut_unsure(self, confidences: Sequence[float | None], start: int) -> bool:
        """Cut the tokens a review kept from `start` on after the first one the reviewing drafter gave probability
        below `confidence_threshold` (`confidences`, one per kept token); `False` when it cut."""
        threshold = self.settings.confidence_threshold
        if threshold <= 0:
            return True
        unsure = first_below(confidences[: len(self.ids) - start], threshold)
        if unsure is None:
            return True
        self.truncate(start + unsure + 1)
        return False

    def _owners(self, start: int) -> tuple[list[int], list[float | None]]:
        """The drafter of each draft token from `start` on, and the probability it gave the token (see
        `DraftedPosition`)."""
        drafted = self.buffer.drafted(start)
        return [position.owner for position in drafted], [position.confidence for position in drafted]

    def _propose_max_gram(self, num_tokens: int, level: int, start: int) -> None:
        """Append a Max-Gram proposal of at most `num_tokens` tokens to the draft at `level` begun at `start`.

        Cut by Max-Gram's own rule (`scored_proposal`: per token, with the reviewer's linear costs), or, with the
        draft-length controller, by the reviewer's per-size cost and the throughput its reviews reach
        (`DraftController.tail_length`), the same clock the neural drafters are weighed on; proposed uncut when the
        batch cuts every row's target draft at once.
        """
        t0 = time.perf_counter()
        uncut = self.uncut_target_drafts and level == 0
        controlled = self.controller is not None and self.tracker is not None and not uncut
        costs = (0.0, 0.0) if uncut or controlled else self._costs(level)
        tokens, tag, chances = scored_proposal(
            self.index, self.ids, num_tokens, level, self.tracker, costs, self.bigram, self.memory
        )
        if controlled:  # with a tracker, scored_proposal always returns the chances
            owners, confidences = self._owners(start)
            tokens = tokens[: self.controller.tail_length(level, owners, chances, confidences)]
        tokens = self._admissible_prefix(tokens)
        if uncut:
            self.target_chances = chances[: len(tokens)] if chances is not None else None
        self.buffer.append(tokens, [None] * len(tokens), owner=self.max_gram_column, tag=tag)
        stats = self.stats[self.max_gram_column]
        stats.propose_calls += 1
        stats.propose_time_s += time.perf_counter() - t0

    def _costs(self, level: int) -> tuple[float, float]:
        """`(draft_cost, token_cost)` of the model reviewing `level`: measured when it is timed, else configured."""
        cost = self.reviewer_costs[level]
        if cost is not None and cost.measured:
            return cost.costs()
        return self.settings.max_gram.draft_cost, self.settings.max_gram.token_cost

    def _admissible_prefix(self, tokens: list[int]) -> list[int]:
        """Cut a Max-Gram proposal after the first EOS and before the first token a hard constraint forbids."""
        out: list[int] = []
        for tok in tokens:
            if self.constraints:
                prefix = torch.tensor([self.padding + self.ids + out], dtype=torch.long, device=self.device)
                dummy = torch.zeros(1, self.vocab_size, device=self.device)
                if self.constraints(prefix, dummy)[0, tok] == -float("inf"):
                    break
            out.append(tok)
            if tok in self.eos:
                break
        return out

    def _record(self, start: int, n_accepted: int, level: int) -> None:
        """Count draft positions `start ..` as drafted by their owners, the first `n_accepted` as accepted by the
        reviewer of `level`."""
        reviewed = self.buffer.drafted(start)
        if self.controller is not None:
            owners, confidences = self._owners(start)
            self.controller.record_acceptance(level, owners, n_accepted, confidences)
        for i, position in enumerate(reviewed):
            stats = self.stats[position.owner]
            remembered = position.tag is not None and position.tag[-1] == MEMORY
            stats.drafted += 1
            stats.memory_drafted += remembered
            if i < n_accepted:
                stats.accepted += 1
                stats.memory_accepted += remembered
        if self.tracker is not None:
            # Max-Gram tokens reached by this review: accepted up to n_accepted, the one at n_accepted rejected.
            for i, position in enumerate(reviewed[: n_accepted + 1]):
                if position.tag is not None:
                    self.tracker.update(position.tag, accepted=int(i < n_accepted), rejected=i == n_accepted)
