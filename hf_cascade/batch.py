"""The cascade over a batch of rows (batch size > 1): per-row logic, batched forwards, ragged acceptance.

Each row is a `CascadeDrafter` of its own (its unpadded prompt, its Max-Gram index, its draft), stepped exactly as in
batch 1. Its drafting is a generator of `ForwardRequest`s; `draft_rows` advances every row's generator until it
waits for a forward pass, runs ONE batched forward per model for all rows that wait on it, hands each row its logits,
and repeats until every row's draft is built. A model whose mask is all that places tokens (`packed_runner.packs`)
keeps every row in one cache row and is fed only the real tokens of the rows that asked (`PackedRunner`); the others
are fed every row padded to the widest chunk (`BatchRunner`). With Max-Gram alone drafting for the target, every
row's draft is cut at once by the target pass's cost (`_cut_drafts`: per row when packed, one length when padded),
counting each row's tokens by its chance of being the row the batch waits for last (`adaptive.straggler_weights`).
With neural drafters every row makes the drafter reviews of one plan per step (`hf_cascade.batch_plan`). One
batched target forward then scores every unfinished row, and each row is reviewed, cut and committed alone
(`hf_cascade.step.target_step`). Finished rows leave every cache. The output is what plain batched `generate`
returns: the left-padded prompts, each row's new tokens, rows that stopped early right-padded with `pad_token_id`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.cache_utils import get_layer_types_and_kwargs
from transformers.generation.logits_process import (
    EncoderNoRepeatNGramLogitsProcessor,
    EncoderRepetitionPenaltyLogitsProcessor,
    LogitsProcessorList,
    PrefixConstrainedLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)
from transformers.generation.stopping_criteria import StoppingCriteriaList

from .adaptive import batch_draft_length, max_gram_tracker, packed_draft_lengths, straggler_weights
from .batch_plan import BatchPlanner
from .batch_runner import BatchRunner, relative_positions
from .cascade import CascadeDrafter, Drafting, DraftSettings, ForwardRequest, catch_up_tokens, encode, load_bigram
from .cost import forward_cost_model
from .errors import CascadeValueError
from .memory import MaxGramMemory
from .packed_runner import PackedRunner, packs
from .runner import accepts_position_ids
from .stats import CascadeStats, LevelStats
from .step import target_step

__all__ = ["check_batch", "draft_rows", "generate_batch", "is_batch", "left_padding", "row_processors"]

_BATCH_ONE = "Batch size 1 works with it: call generate once per prompt."


def is_batch(input_ids: torch.Tensor, model_kwargs: Mapping[str, Any], is_encoder_decoder: bool) -> bool:
    """Whether a call takes the batched path: more than one row, or a decoder-only prompt with padding."""
    mask = model_kwargs.get("attention_mask")
    padded = not is_encoder_decoder and mask is not None and not bool((mask == 1).all())
    return input_ids.shape[0] > 1 or padded


def left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
    """The number of left-padding tokens of each row of a decoder-only batch; refuses any other padding.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): the prompts.
        attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): their mask.
    """
    rows, length = input_ids.shape
    if attention_mask is None:
        return [0] * rows
    padding = []
    for r, row in enumerate(attention_mask.tolist()):
        pad = next((i for i, m in enumerate(row) if m), length)
        if pad == length:
            raise CascadeValueError(f"attention_mask row {r} is all zeros: every prompt needs at least one token.")
        if row[-1] == 0:
            raise CascadeValueError(
                f"attention_mask row {r} ends with padding (right padding); decoder-only models generate after the "
                'last token, so pad on the left: tokenizer.padding_side = "left".'
            )
        if not all(row[pad:]):
            raise CascadeValueError(
                f"attention_mask row {r} has zeros between tokens; only left padding (zeros, then ones) is supported."
            )
        padding.append(pad)
    return padding


def row_processors(processors: LogitsProcessorList, row: int) -> LogitsProcessorList:
    """`processors` as row `row` of the batch needs them alone (the cascade processes each row on its own).

    transformers builds some processors with one entry per row of the batch: the repetition penalty's
    `prompt_ignore_length` (each row's padding), the encoder repetition penalties' encoder ids, the
    `prefix_allowed_tokens_fn`'s `batch_id`. Those are narrowed to the row (shallow copies); the others are shared.

    Args:
        processors (`LogitsProcessorList`): the call's processors, prepared by `generate` for the whole batch.
        row (`int`): the row.
    """
    narrowed = []
    for processor in processors:
        if isinstance(processor, RepetitionPenaltyLogitsProcessor) and isinstance(
            processor.prompt_ignore_length, torch.Tensor
        ):
            processor = copy.copy(processor)
            processor.prompt_ignore_length = processor.prompt_ignore_length[row : row + 1]
        elif isinstance(processor, EncoderRepetitionPenaltyLogitsProcessor):
            processor = copy.copy(processor)
            processor.encoder_input_ids = processor.encoder_input_ids[row : row + 1]
        elif isinstance(processor, EncoderNoRepeatNGramLogitsProcessor):
            processor = copy.copy(processor)
            processor.generated_ngrams = [processor.generated_ngrams[row]]
            processor.batch_size = 1
        elif isinstance(processor, PrefixConstrainedLogitsProcessor):
            processor = copy.copy(processor)
            allowed = processor._prefix_allowed_tokens_fn
            processor._prefix_allowed_tokens_fn = lambda _, tokens, allowed=allowed: allowed(row, tokens)
        narrowed.append(processor)
    return LogitsProcessorList(narrowed)


def _check_batchable(model: PreTrainedModel, name: str) -> None:
    """Refuse a model the shared cache with holes cannot run exactly (see `hf_cascade.batch_runner`)."""
    kind = f"{name} ({type(model).__name__})"
    if model.config.is_encoder_decoder:
        if not relative_positions(model):
            raise CascadeValueError(
                f"{kind} is an encoder-decoder whose decoder positions come from its cache length; the batched "
                f"cascade supports encoder-decoders with relative positions (T5 family) only. {_BATCH_ONE}"
            )
        return
    if not accepts_position_ids(model):
        raise CascadeValueError(
            f"{kind} takes no position_ids, so rows of different lengths cannot share its cache exactly. {_BATCH_ONE}"
        )
    try:
        layer_types = set(get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))[0])
    except (AttributeError, KeyError, TypeError, ValueError):
        layer_types = set()
    windowed = sorted(layer_types & {"sliding_attention", "chunked_attention"})
    if windowed:
        raise CascadeValueError(
            f"{kind} has {', '.join(windowed)} layers, whose window counts cache slots: rows of different lengths "
            f"(holes in the shared cache) would attend to the wrong window. {_BATCH_ONE}"
        )


def check_batch(
    model: PreTrainedModel,
    assistants: Sequence[PreTrainedModel],
    generation_config: GenerationConfig,
    model_kwargs: Mapping[str, Any],
    streamer: Any,
    batch_size: int,
    settings: DraftSettings,
    criteria: StoppingCriteriaList,
) -> None:
    """Refuse, before any forward pass, what the batched cascade does not support.

    Args:
        model (`PreTrainedModel`): the target.
        assistants (`Sequence[PreTrainedModel]`): the neural drafters.
        generation_config (`GenerationConfig`): the prepared generation config.
        model_kwargs (`Mapping[str, Any]`): `generate`'s model kwargs (`cache`, ...).
        streamer (`BaseStreamer`, *optional*): the streamer, if any.
        batch_size (`int`): rows of the call.
        settings (`DraftSettings`): the call's settings (its EOS tokens).
        criteria (`StoppingCriteriaList`): the user's stopping criteria (not max length or EOS).
    """
    if criteria and not settings.eos_token_ids:
        # Plain generate pads the rows a criterion stopped only when an EOS criterion exists; without one it keeps
        # appending the model's tokens to them until every row stops, which the cascade (dropping such rows) does not.
        raise CascadeValueError(
            f"stopping_criteria ({', '.join(type(c).__name__ for c in criteria)}) with no eos_token_id in a batch of "
            f"{batch_size} rows: plain generate keeps extending the rows a criterion stopped, the cascade pads them. "
            "Pass eos_token_id= (and pad_token_id=), or generate one prompt at a time."
        )
    if streamer is not None:
        raise CascadeValueError(
            f"{type(streamer).__name__} only supports batch size 1 (as transformers' streamers), got {batch_size} "
            "rows; stream one prompt at a time, or drop the streamer."
        )
    cache = model_kwargs.get("cache")
    if cache is not None and cache.get_seq_length() > 0:
        raise CascadeValueError(
            f"cache= holds {cache.get_seq_length()} tokens: reusing a cache is batch-1 only (a batched call starts "
            "and returns no cache). Drop cache= for a batch, or generate one prompt at a time."
        )
    if generation_config.return_dict_in_generate and (
        generation_config.output_scores or generation_config.output_logits
    ):
        raise CascadeValueError(
            f"output_scores/output_logits are batch-1 only in the cascade (got {batch_size} rows): plain generate "
            "also scores rows that already finished, which the cascade no longer runs. Drop them, or generate one "
            "prompt at a time."
        )
    _check_batchable(model, "the target")
    for i, assistant in enumerate(assistants):
        _check_batchable(assistant, f"assistant_models[{i}]")


def draft_rows(
    steps: Mapping[int, Drafting[Any]],
    runners: Sequence[BatchRunner | PackedRunner],
    drafters: Mapping[int, CascadeDrafter],
) -> dict[int, Any]:
    """Run every row's drafting to completion, batching the forward passes the rows wait for.

    Advances each row's generator until it yields a `ForwardRequest`, then repeatedly runs one batched forward on
    the drafter most rows wait for (ties to the smallest model: its forwards are cheapest and feed the larger ones)
    and sends each of those rows its logits. Rows following one plan (`hf_cascade.batch_plan`) ask for the same
    passes at the same time; a row whose draft ended early (an EOS, an unsure token, its budget) no longer asks.

    Args:
        steps (`Mapping[int, Drafting]`): row -> its drafting generator (`CascadeDrafter.drafting`).
        runners (`Sequence[BatchRunner | PackedRunner]`): the neural drafters' batched runners, largest first.
        drafters (`Mapping[int, CascadeDrafter]`): row -> its drafter (whose `ids` the forwards read).

    Returns:
        `dict[int, Any]`: row -> what its generator returned.
    """
    results: dict[int, Any] = {}
    waiting: dict[int, ForwardRequest] = {}

    def advance(row: int, logits: torch.Tensor | None) -> None:
        try:
            waiting[row] = steps[row].send(logits)
        except StopIteration as stop:
            results[row] = stop.value
            waiting.pop(row, None)

    for row in steps:
        advance(row, None)
    while waiting:
        counts: dict[int, int] = {}
        for request in waiting.values():
            counts[request.runner] = counts.get(request.runner, 0) + 1
        runner = max(counts, key=lambda c: (counts[c], c))
        asked = {row: request for row, request in waiting.items() if request.runner == runner}
        logits = runners[runner].logits(
            {row: (drafters[row].ids, request.first, request.end) for row, request in asked.items()}
        )
        for row in asked:
            advance(row, logits[row])
    return results


def _lags(
    drafters: Mapping[int, CascadeDrafter], runners: Sequence[BatchRunner | PackedRunner], active: Sequence[int]
) -> list[list[int]]:
    """Per neural drafter, the tokens each row's cache of it lags behind the row's committed sequence (read by the
    drafter's next pass, after skipped steps; `cascade.catch_up_tokens`)."""
    return [[catch_up_tokens(drafters[r].committed, runner.cached_length(r)) for r in active] for runner in runners]


def _cut_drafts(
    drafts: Mapping[int, tuple[list[int], torch.Tensor | None]],
    drafters: Mapping[int, CascadeDrafter],
    costs: tuple[float, float] | Callable[[int], float],
    weights: Mapping[int, float],
    packed: bool = False,
) -> dict[int, tuple[list[int], torch.Tensor | None]]:
    """Cut every row's draft so that the batch's expected tokens per cost of the target forward pass are largest,
    by each token's chance of acceptance (`CascadeDrafter.draft_chances`: an uncut Max-Gram draft's own, or the
    draft-length controller's tracked acceptance of the drafters, whose draft lengths the batch's plan set without
    looking at this step's tokens): padded (`BatchRunner`), all rows are fed as wide as the longest draft and share one length
    (`batch_draft_length`); `packed` (`PackedRunner`), the pass costs the draft tokens in all and each row gets its own
    length (`packed_draft_lengths`). A row's tokens count by its chance of being the row the batch waits for last
    (`straggler_weights`): a pass is not widened for a row that is ahead of the others.

    Args:
        drafts (`Mapping[int, tuple[list[int], torch.FloatTensor | None]]`): row -> `(tokens, q)` as `draft_rows`
            returns them (`q` of shape `(len(tokens), vocab_size)` when sampling).
        drafters (`Mapping[int, CascadeDrafter]`): row -> its drafter, whose draft is truncated in place (a row
            without chances, `None`, drafts nothing: callers cut only when every row has them).
        costs (`tuple[float, float]` or `Callable[[int], float]`): the batched target forward pass's cost by size
            (`ForwardCostModel.seconds`), or its `(draft_cost, token_cost)` (`adaptive.pass_cost`).
        weights (`Mapping[int, float]`): row -> what its tokens are worth to the batch (`straggler_weights`).
        packed (`bool`, *optional*, defaults to `False`): whether the target runs packed.

    Returns:
        `dict[int, tuple[list[int], torch.FloatTensor | None]]`: the cut drafts.
    """
    chances = [drafters[r].draft_chances() or [] for r in drafts]
    row_weights = [weights[r] for r in drafts]
    if packed:
        lengths = dict(zip(drafts, packed_draft_lengths(chances, costs, row_weights), strict=True))
    else:
        lengths = dict.fromkeys(drafts, batch_draft_length(chances, costs, row_weights))
    cut = {}
    for r, (tokens, q) in drafts.items():
        k = lengths[r]
        if len(tokens) > k:
            drafters[r].truncate(drafters[r].committed + k)
            tokens, q = tokens[:k], q[:k] if q is not None else None
        cut[r] = (tokens, q)
    return cut


def _total(name: str, kind: str, rows: Sequence[LevelStats], shared: LevelStats | None = None) -> LevelStats:
    """The batch's record of one model: its shared forward passes plus what the rows drafted and accepted."""
    total = shared if shared is not None else LevelStats(name, kind)
    for row in rows:
        total.drafted += row.drafted
        total.accepted += row.accepted
        total.nonfinite_drafts += row.nonfinite_drafts
        total.memory_drafted += row.memory_drafted
        total.memory_accepted += row.memory_accepted
        total.drafts_reviewed += row.drafts_reviewed
        total.draft_tokens_reviewed += row.draft_tokens_reviewed
        total.skipped += row.skipped
        total.propose_calls += row.propose_calls
        total.propose_time_s += row.propose_time_s
    return total


@torch.no_grad()
def generate_batch(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    assistants: Sequence[PreTrainedModel],
    settings: DraftSettings,
    generation_config: GenerationConfig,
    criteria: StoppingCriteriaList,
    model_kwargs: Mapping[str, Any],
    inputs_tensor: torch.Tensor | None = None,
    memory: MaxGramMemory | None = None,
) -> tuple[torch.LongTensor, CascadeStats]:
    """The batched cascade `generate` loop (see the module docstring).

    Args:
        model (`PreTrainedModel`): the target.
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): left-padded prompts (decoder start
            ids for encoder-decoders).
        assistants (`Sequence[PreTrainedModel]`): neural drafters, largest first (checked).
        settings (`DraftSettings`): the call's drafting settings.
        generation_config (`GenerationConfig`): prepared by `generate`.
        criteria (`StoppingCriteriaList`): the user's stopping criteria (not max length or EOS).
        model_kwargs (`Mapping[str, Any]`): `attention_mask` (the prompts' mask; the encoder's for
            encoder-decoders) and `encoder_outputs`.
        inputs_tensor (`torch.LongTensor` of shape `(batch_size, source_length)`, *optional*): encoder input.
        memory (`MaxGramMemory`, *optional*): earlier sequences Max-Gram also copies from; each row's new tokens are
            added at the end, in row order.

    Returns:
        `(sequences, stats)`: `torch.LongTensor` of shape `(batch_size, sequence_length + new)` and the call's
        `CascadeStats` with one record per row in `stats.rows`.
    """
    t0 = time.perf_counter()
    is_encoder_decoder = bool(model.config.is_encoder_decoder)
    mask = model_kwargs.get("attention_mask")
    batch, length = input_ids.shape
    padding = [0] * batch if is_encoder_decoder else left_padding(input_ids, mask)
    pad_token = generation_config._pad_token_tensor
    pad_token_id = int(pad_token) if pad_token is not None else 0  # also fed where a row has nothing to feed
    rows = range(batch)
    encoder_mask = mask if is_encoder_decoder else None
    do_sample = settings.do_sample

    # Max-Gram alone drafts for the target: its drafts are proposed uncut and the rows' drafts are cut together, by
    # the batch's throughput (`_cut_drafts`). With neural drafters the rows make the reviews of the batch's plan
    # (`BatchPlanner`; the last row left, those of its own controller), Max-Gram's tail is cut by each row's controller
    # (with the row's weight), and the batch then cuts the drafts together too, by the tracked acceptance.
    uncut = settings.use_max_gram and settings.max_gram.adaptive_length and not assistants
    # With `batch_layout="packed"`, rows packed into one cache row feed only their real tokens (`PackedRunner`), where
    # that is exact (`packs`); the other models, and every model by default, run padded (`BatchRunner`).
    packed = settings.batch_layout == "packed"
    target_packed = packed and packs(model)
    target_stats = LevelStats("target", "target")
    # Every model's passes are priced and timed as passes of the whole batch, in its layout (`batch_prior`): a padded
    # draft token costs every row's forward, which the one-row prior underrates, and a packed pass is priced by its
    # draft tokens in all. The timings are kept apart from batch-1 calls' (`forward_cost_model`'s key), which a pass
    # over several rows would otherwise skew for later calls.
    target_cost = forward_cost_model(model, settings.max_gram, do_sample, rows=batch, packed=target_packed)
    if target_packed:
        target: BatchRunner | PackedRunner = PackedRunner(model, target_stats, rows, cost=target_cost)
    else:
        target = BatchRunner(
            model,
            target_stats,
            rows,
            encoder_outputs=model_kwargs.get("encoder_outputs"),
            encoder_attention_mask=encoder_mask,
            cost=target_cost,
            pad_token_id=pad_token_id,
        )
    runners: list[BatchRunner | PackedRunner] = []
    for i, assistant in enumerate(assistants):
        level_stats = LevelStats(f"assistant_{i}", "assistant")
        assistant_packed = packed and packs(assistant)
        cost = forward_cost_model(assistant, settings.max_gram, do_sample, rows=batch, packed=assistant_packed)
        if assistant_packed:  # idle rows feed nothing
            runners.append(PackedRunner(assistant, level_stats, rows, cost=cost))
            continue
        encoded, assistant_mask = encode(assistant, inputs_tensor, encoder_mask) if is_encoder_decoder else (None, None)
        runners.append(
            BatchRunner(
                assistant,
                level_stats,
                rows,
                encoder_outputs=encoded,
                encoder_attention_mask=assistant_mask,
                cost=cost,
                pad_token_id=pad_token_id,
            )
        )
    bigram = load_bigram(settings.max_gram.bigram_table, settings.vocab_size) if settings.use_max_gram else None
    # The rows share one acceptance record (as they share a memory's): the same model reviews all of them, and four
    # rows learn how far their copies hold four times as fast as one (a prior too hopeful for the workload costs
    # every row's forward pass while it lasts).
    tracker = memory.tracker if memory is not None else max_gram_tracker()
    drafters: dict[int, CascadeDrafter] = {}
    targets = {}
    for r in rows:
        corpus = []
        if is_encoder_decoder and inputs_tensor is not None:
            source = inputs_tensor[r] if encoder_mask is None else inputs_tensor[r][encoder_mask[r].bool()]
            corpus = [source.tolist()]
        drafters[r] = CascadeDrafter(
            input_ids[r, padding[r] :].tolist(),
            [runner.view(r, LevelStats(runner.stats.name, "assistant")) for runner in runners],
            settings,
            corpus=corpus,
            bigram=bigram,
            target_cost=target.cost,
            memory=memory,
            padding=input_ids[r, : padding[r]].tolist(),
            logits_processor=row_processors(settings.logits_processor, r),
            uncut_target_drafts=uncut,
            tracker=tracker,
        )
        targets[r] = target.view(r, LevelStats("target", "target"))
    controllers = [drafters[r].controller for r in rows if drafters[r].controller is not None]
    # With neural drafters every row follows one plan per step (`hf_cascade.batch_plan`): a pass serves every row.
    for controller in controllers:
        controller.share(controllers[0])  # one acceptance record for all rows
    planner = None
    if assistants and len(controllers) == batch:
        layouts = [target_packed, *(isinstance(runner, PackedRunner) for runner in runners)]
        planner = BatchPlanner(controllers[0], settings.k_matrix, layouts)
    # Neural drafts are cut together only when greedy: a sampled neural draft's tokens are random and how many there
    # are depends on them, so a cut that looks at later tokens' chances (a fixed cost makes the best length jump)
    # would not be a stopping time of the draft. Max-Gram's proposals depend only on the committed text.
    cut_together = uncut or (bool(assistants) and len(controllers) == batch and not do_sample)
    prompt_lengths = {r: len(drafters[r].ids) for r in rows}
    # Every row gets plain generate's budget of new tokens: max_length counts the padded prompt.
    max_lengths = {r: generation_config.max_length - padding[r] for r in rows}

    active = [r for r in rows if prompt_lengths[r] < max_lengths[r]]
    costs_by_rows = {batch: target.cost}
    while active:
        # A row's tokens are worth its chance of being the row the batch waits for last (`straggler_weights`): cut
        # together for Max-Gram's drafts, and by each row's draft-length controller for the neural levels'.
        weights: dict[int, float] = {}
        if cut_together or controllers:  # what the weights are for
            remaining = [max_lengths[r] - drafters[r].committed for r in active]
            weights = dict(zip(active, straggler_weights(remaining), strict=True))
            for r in active:
                if drafters[r].controller is not None:
                    drafters[r].controller.weight = weights[r]
        if planner is not None:
            # The last row left drafts as in batch 1 (its own controller's rule).
            plan = planner.plan(len(active), _lags(drafters, runners, active)) if len(active) > 1 else None
            for r in active:
                drafters[r].plan = plan
        # The target adds one token: drafts stay within max_length - 1.
        drafts = draft_rows({r: drafters[r].drafting(max_lengths[r] - 1) for r in active}, runners, drafters)
        if cut_together:
            # A pass of fewer rows shares its weight reads among fewer tokens: a draft token costs relatively less,
            # so each number of rows has its own timings (and prior). The last rows left draft as in batch 1.
            # With neural drafters the batch's curve stays: the rows' controllers keep it for their clock.
            if uncut:
                if len(active) not in costs_by_rows:
                    costs_by_rows[len(active)] = forward_cost_model(
                        model, settings.max_gram, do_sample, rows=len(active), packed=target_packed
                    )
                target.cost = costs_by_rows[len(active)]
            # Priced on the timed curve: a width timed often enough at its own median (a curve need not be smooth).
            drafts = _cut_drafts(drafts, drafters, target.cost.seconds, weights, packed=target_packed)
        logits = target.logits(
            {r: (drafters[r].ids, drafters[r].committed - 1, drafters[r].committed + len(drafts[r][0])) for r in active}
        )
        finished = []
        for r in active:
            draft, q = drafts[r]
            _, _, done = target_step(drafters[r], targets[r], logits[r], draft, q, do_sample, criteria, max_lengths[r])
            if done:
                finished.append(r)
        if finished:
            for runner in (target, *runners):
                runner.drop(finished)
            active = [r for r in active if r not in finished]

    new = {r: drafters[r].ids[prompt_lengths[r] :] for r in rows}
    width = max(len(tokens) for tokens in new.values())
    # Rows end apart only by EOS or a criterion, which `check_batch` allows only with an EOS token, so plain generate
    # has a pad token (it falls back on the EOS token).
    sequences = torch.full((batch, length + width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    sequences[:, :length] = input_ids
    for r, tokens in new.items():
        sequences[r, length : length + len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
    if memory is not None:
        for r in rows:
            memory.add(new[r])

    row_stats = [CascadeStats(levels=[targets[r].stats, *drafters[r].stats], new_tokens=len(new[r])) for r in rows]
    levels = [_total("target", "target", [], target.stats)]
    levels += [
        _total(runner.stats.name, "assistant", [drafters[r].stats[i] for r in rows], runner.stats)
        for i, runner in enumerate(runners)
    ]
    if settings.use_max_gram:
        levels.append(_total("max_gram", "max_gram", [drafters[r].stats[-1] for r in rows]))
    stats = CascadeStats(
        levels=levels,
        new_tokens=sum(len(tokens) for tokens in new.values()),
        wall_time_s=time.perf_counter() - t0,
        rows=row_stats,
    )
    return sequences, stats
